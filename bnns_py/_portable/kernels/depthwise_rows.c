/* Depthwise 3x3, stride 1, padding 1 on every side, rows that fit one vector (14x14 planes on
   AVX-512, 7x7 on AVX2): straight from the input plane, with no padded copy. Each input row is
   loaded once (the lanes past the row are zero, the right border) and shifted by one lane either
   way (the left border comes in as a zero), and the three variants of three rows stay in registers
   while they serve three output rows; each output row sums its 9 products in three chains. */
#include "depthwise_kernels.h"
#include "vmath.h"

/* Lane c of the concatenation (a, b) for c in [first, first + BP_VL). */
#if BP_VL == 16
#define LANES_FROM(first)                                                                                      \
    first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6, first + 7, first + 8, first + 9,  \
        first + 10, first + 11, first + 12, first + 13, first + 14, first + 15
#elif BP_VL == 8
#define LANES_FROM(first) first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6, first + 7
#else
#define LANES_FROM(first) first, first + 1, first + 2, first + 3
#endif

typedef struct {
    bp_vec left, mid, right; /* x[c - 1], x[c], x[c + 1] in lane c */
} row3;

static inline row3 load_row(const bp_image *img, const float *x, size_t r) {
    row3 v;
    bp_vec zero = bp_vzero();
    v.mid = r < img->h ? bp_vload_part(x + r * img->sy, img->w) : zero;
    v.left = __builtin_shufflevector(zero, v.mid, LANES_FROM(BP_VL - 1));
    v.right = __builtin_shufflevector(v.mid, zero, LANES_FROM(1));
    return v;
}

bool bp_dw3x3_rows_in_a_vector(const bp_geom *g, const bp_image *img) {
    return g->kh == 3 && g->kw == 3 && g->sx == 1 && g->sy == 1 && g->dx == 1 && g->dy == 1 && g->pl == 1 &&
           g->pt == 1 && g->out_w == g->in_w && g->out_h == g->in_h && g->in_w <= BP_VL && img->sx == 1 &&
           img->w == g->in_w && img->h == g->in_h;
}

void bp_dw3x3_vector_rows(const bp_geom *g, const bp_image *img, const float *x, const float *wk,
                          const bp_dw_epilogue *e, float *out) {
    size_t w = g->in_w, h = g->in_h;
    bp_vec k[9], zero = bp_vzero(), b = bp_vset1(e->bias), lo = bp_vset1(e->lo), hi = bp_vset1(e->hi);
    for (int t = 0; t < 9; t++) k[t] = bp_vset1(wk[t]);
    row3 above = {zero, zero, zero}, at = load_row(img, x, 0);
    for (size_t y = 0; y < h; y++) {
        row3 below = load_row(img, x, y + 1);
        bp_vec s0 = bp_vfma(k[0], above.left, b), s1 = bp_vmul(k[3], at.left), s2 = bp_vmul(k[6], below.left);
        s0 = bp_vfma(k[1], above.mid, s0);
        s1 = bp_vfma(k[4], at.mid, s1);
        s2 = bp_vfma(k[7], below.mid, s2);
        s0 = bp_vfma(k[2], above.right, s0);
        s1 = bp_vfma(k[5], at.right, s1);
        s2 = bp_vfma(k[8], below.right, s2);
        bp_vec sum = bp_vadd(bp_vadd(s0, s1), s2);
        bp_vstore_part(out + y * w, bp_vmin(hi, bp_vmax(lo, sum)), w);
        above = at;
        at = below;
    }
}

void bp_dw3x3_vector_rows_weights(const bp_geom *g, const bp_image *img, const float *x0, size_t x_bs,
                                  const float *dy0, size_t dy_bs, size_t batch, float sums[9]) {
    size_t w = g->in_w, h = g->in_h;
    bp_vec k[9], zero = bp_vzero();
    for (int t = 0; t < 9; t++) k[t] = zero;
    for (size_t n = 0; n < batch; n++) {
        const float *x = x0 + n * x_bs, *dy = dy0 + n * dy_bs;
        row3 above = {zero, zero, zero}, at = load_row(img, x, 0);
        for (size_t y = 0; y < h; y++) {
            row3 below = load_row(img, x, y + 1);
            bp_vec d = bp_vload_part(dy + y * w, w);
            k[0] = bp_vfma(d, above.left, k[0]);
            k[1] = bp_vfma(d, above.mid, k[1]);
            k[2] = bp_vfma(d, above.right, k[2]);
            k[3] = bp_vfma(d, at.left, k[3]);
            k[4] = bp_vfma(d, at.mid, k[4]);
            k[5] = bp_vfma(d, at.right, k[5]);
            k[6] = bp_vfma(d, below.left, k[6]);
            k[7] = bp_vfma(d, below.mid, k[7]);
            k[8] = bp_vfma(d, below.right, k[8]);
            above = at;
            at = below;
        }
    }
    for (int t = 0; t < 9; t++) sums[t] += bp_vsum(k[t]);
}
