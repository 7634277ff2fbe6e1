/* Depthwise 3x3, stride 1 or 2, padding 0 or 1 at the top and left (MobileNet's layers): straight
   from the input plane, with no padded copy, one strip of a vector of output columns at a time, top
   to bottom. Each input row of the strip is loaded once (the lanes past the image are zero: the
   right border) as the three vectors of its taps: at stride 1 the middle tap's vector and its
   one-lane shifts either way, at stride 2 a vector pair split into even and odd columns in
   registers and the odd ones shifted by a lane (the left border, or the column before the strip,
   comes in). The tap rows stay in registers while they serve every output row that needs them;
   each output vector sums its 9 products in three chains. */
#include "depthwise_kernels.h"
#include "vmath.h"

/* Lane c of the concatenation (a, b) for c in [first, first + BP_VL), and every other lane. */
#if BP_VL == 16
#define LANES_FROM(first)                                                                                      \
    first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6, first + 7, first + 8, first + 9,  \
        first + 10, first + 11, first + 12, first + 13, first + 14, first + 15
#define EVERY_OTHER(first)                                                                                     \
    first, first + 2, first + 4, first + 6, first + 8, first + 10, first + 12, first + 14, first + 16,         \
        first + 18, first + 20, first + 22, first + 24, first + 26, first + 28, first + 30
#elif BP_VL == 8
#define LANES_FROM(first) first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6, first + 7
#define EVERY_OTHER(first) first, first + 2, first + 4, first + 6, first + 8, first + 10, first + 12, first + 14
#else
#define LANES_FROM(first) first, first + 1, first + 2, first + 3
#define EVERY_OTHER(first) first, first + 2, first + 4, first + 6
#endif

typedef struct {
    bp_vec left, mid, right; /* the input of kernel columns 0, 1 and 2 in the lane of each output column */
} taps3;

/* row[i], 0 past the row (i wraps around below 0) */
static inline float value_at(const float *row, size_t i, size_t n) { return i < n ? row[i] : 0.0f; }
/* n (any) values from src, the lanes past them zero */
static inline bp_vec load_upto(const float *src, size_t n) { return n == 0 ? bp_vzero() : bp_vload_part(src, n); }

/* Input row iy (wrapping below 0: none, zeros) for the strip of output columns from ox0. c: the
   input column of the middle tap of lane 0. */
static inline __attribute__((always_inline)) taps3 tap_row(const bp_geom *g, const bp_image *img, const float *x,
                                                           size_t iy, size_t ox0, const int S) {
    taps3 v;
    bp_vec zero = bp_vzero();
    if (iy >= g->in_h) {
        v.left = v.mid = v.right = zero;
        return v;
    }
    const float *row = x + iy * img->sy;
    size_t w = g->in_w, c = S * ox0 + 1 - g->pl, n = c < w ? w - c : 0;
    if (S == 1) {
        v.mid = load_upto(row + c, n);
        v.left = __builtin_shufflevector(bp_vset1(value_at(row, c - 1, w)), v.mid, LANES_FROM(BP_VL - 1));
        v.right = __builtin_shufflevector(v.mid, bp_vset1(value_at(row, c + BP_VL, w)), LANES_FROM(1));
    } else {
        bp_vec a = load_upto(row + c, n), b = load_upto(row + c + BP_VL, n > BP_VL ? n - BP_VL : 0);
        v.mid = __builtin_shufflevector(a, b, EVERY_OTHER(0));
        v.right = __builtin_shufflevector(a, b, EVERY_OTHER(1));
        v.left = __builtin_shufflevector(bp_vset1(value_at(row, c - 1, w)), v.right, LANES_FROM(BP_VL - 1));
    }
    return v;
}

bool bp_dw3x3_strips_fit(const bp_geom *g, const bp_image *img) {
    return g->kh == 3 && g->kw == 3 && (g->sx == 1 || g->sx == 2) && g->sy == g->sx && g->dx == 1 && g->dy == 1 &&
           g->pl <= 1 && g->pt <= 1 && img->sx == 1;
}

/* The tap rows of output row y sit in window[(y*S + i) % 3], i = 0, 1, 2 (kernel rows). */
static inline __attribute__((always_inline)) void strip(const bp_geom *g, const bp_image *img, const float *x,
                                                        const bp_vec k[9], const bp_dw_epilogue *e, size_t ox0,
                                                        float *out, const int S) {
    size_t ow = g->out_w, n = bp_min(ow - ox0, BP_VL);
    bp_vec b = bp_vset1(e->bias), lo = bp_vset1(e->lo), hi = bp_vset1(e->hi);
    taps3 r0 = tap_row(g, img, x, 0 - g->pt, ox0, S), r1 = tap_row(g, img, x, 1 - g->pt, ox0, S), r2;
    for (size_t y = 0; y < g->out_h; y++) {
        r2 = tap_row(g, img, x, S * y + 2 - g->pt, ox0, S);
        bp_vec s0 = bp_vfma(k[0], r0.left, b), s1 = bp_vmul(k[3], r1.left), s2 = bp_vmul(k[6], r2.left);
        s0 = bp_vfma(k[1], r0.mid, s0);
        s1 = bp_vfma(k[4], r1.mid, s1);
        s2 = bp_vfma(k[7], r2.mid, s2);
        s0 = bp_vfma(k[2], r0.right, s0);
        s1 = bp_vfma(k[5], r1.right, s1);
        s2 = bp_vfma(k[8], r2.right, s2);
        bp_vstore_part(out + y * ow + ox0, bp_vmin(hi, bp_vmax(lo, bp_vadd(bp_vadd(s0, s1), s2))), n);
        if (S == 1) {
            r0 = r1;
            r1 = r2;
        } else { /* the next output row starts at this one's last input row */
            r0 = r2;
            r1 = tap_row(g, img, x, S * y + 3 - g->pt, ox0, S);
        }
    }
}

void bp_dw3x3_strips(const bp_geom *g, const bp_image *img, const float *x, const float *wk,
                     const bp_dw_epilogue *e, float *out) {
    bp_vec k[9];
    for (int t = 0; t < 9; t++) k[t] = bp_vset1(wk[t]);
    for (size_t ox0 = 0; ox0 < g->out_w; ox0 += BP_VL) {
        if (g->sx == 1) strip(g, img, x, k, e, ox0, out, 1);
        else strip(g, img, x, k, e, ox0, out, 2);
    }
}

/* acc[t] += dy * the tap's input over one image's strip from ox0. */
static inline __attribute__((always_inline)) void strip_weights(const bp_geom *g, const bp_image *img,
                                                                const float *x, const float *dy, size_t ox0,
                                                                bp_vec acc[9], const int S) {
    size_t ow = g->out_w, n = bp_min(ow - ox0, BP_VL);
    taps3 r0 = tap_row(g, img, x, 0 - g->pt, ox0, S), r1 = tap_row(g, img, x, 1 - g->pt, ox0, S), r2;
    for (size_t y = 0; y < g->out_h; y++) {
        r2 = tap_row(g, img, x, S * y + 2 - g->pt, ox0, S);
        bp_vec d = bp_vload_part(dy + y * ow + ox0, n);
        acc[0] = bp_vfma(d, r0.left, acc[0]);
        acc[1] = bp_vfma(d, r0.mid, acc[1]);
        acc[2] = bp_vfma(d, r0.right, acc[2]);
        acc[3] = bp_vfma(d, r1.left, acc[3]);
        acc[4] = bp_vfma(d, r1.mid, acc[4]);
        acc[5] = bp_vfma(d, r1.right, acc[5]);
        acc[6] = bp_vfma(d, r2.left, acc[6]);
        acc[7] = bp_vfma(d, r2.mid, acc[7]);
        acc[8] = bp_vfma(d, r2.right, acc[8]);
        if (S == 1) {
            r0 = r1;
            r1 = r2;
        } else {
            r0 = r2;
            r1 = tap_row(g, img, x, S * y + 3 - g->pt, ox0, S);
        }
    }
}

void bp_dw3x3_strips_weights(const bp_geom *g, const bp_image *img, const float *x0, size_t x_bs,
                             const float *dy0, size_t dy_bs, size_t batch, float sums[9]) {
    bp_vec acc[9];
    for (int t = 0; t < 9; t++) acc[t] = bp_vzero();
    for (size_t n = 0; n < batch; n++)
        for (size_t ox0 = 0; ox0 < g->out_w; ox0 += BP_VL) {
            if (g->sx == 1) strip_weights(g, img, x0 + n * x_bs, dy0 + n * dy_bs, ox0, acc, 1);
            else strip_weights(g, img, x0 + n * x_bs, dy0 + n * dy_bs, ox0, acc, 2);
        }
    for (int t = 0; t < 9; t++) sums[t] += bp_vsum(acc[t]);
}
