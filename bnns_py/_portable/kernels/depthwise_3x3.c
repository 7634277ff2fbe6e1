/* Depthwise 3x3, stride 1 or 2, padding 0 or 1 at the top and left (MobileNet's layers): straight
   from the input plane, with no padded copy, one strip of a vector of output columns at a time, top
   to bottom. Each input row of the strip is loaded once (the lanes past the image are zero: the
   right border) as the three vectors of its taps: at stride 1 the middle tap's vector and its
   neighbours (unaligned loads; past the row's ends a one-lane shift), at stride 2 a vector pair
   split into even and odd columns in registers and the odd ones shifted by a lane (the left
   border, or the column before the strip, comes in). The tap rows stay in registers while they
   serve every output row that needs them; each output vector sums its 9 products in three
   chains. */
#include "depthwise_kernels.h"
#include "vmath.h"

/* Lane c of the concatenation (a, b) for c in [first, first + BP_VL) (every other lane: simd.h). */
#if BP_VL == 16
#define LANES_FROM(first)                                                                                      \
    first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6, first + 7, first + 8, first + 9,  \
        first + 10, first + 11, first + 12, first + 13, first + 14, first + 15
#define HALVES 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define INTERLEAVE(first)                                                                                      \
    first, first + 16, first + 1, first + 17, first + 2, first + 18, first + 3, first + 19, first + 4,         \
        first + 20, first + 5, first + 21, first + 6, first + 22, first + 7, first + 23
#elif BP_VL == 8
#define LANES_FROM(first) first, first + 1, first + 2, first + 3, first + 4, first + 5, first + 6, first + 7
#define HALVES 0, 1, 2, 3, 8, 9, 10, 11
#define INTERLEAVE(first) first, first + 8, first + 1, first + 9, first + 2, first + 10, first + 3, first + 11
#else
#define LANES_FROM(first) first, first + 1, first + 2, first + 3
#define HALVES 0, 1, 4, 5
#define INTERLEAVE(first) first, first + 4, first + 1, first + 5
#endif
/* HALVES: the low half of a, then the low half of b; INTERLEAVE: lanes first, first + 1, ... of a
   and b alternately */

typedef struct {
    bp_vec left, mid, right; /* the input of kernel columns 0, 1 and 2 in the lane of each output column */
} taps3;

/* What the loops read of the geometry, in locals: a masked store may alias anything, so fields
   read through the geometry's pointer would be loaded again after every row's store. */
typedef struct {
    size_t w, h, sy, pl, pt;
} plane_geom;

static inline plane_geom plane_geom_of(const bp_geom *g, const bp_image *img) {
    return (plane_geom){g->in_w, g->in_h, img->sy, g->pl, g->pt};
}

/* row[i], 0 past the row (i wraps around below 0) */
static inline float value_at(const float *row, size_t i, size_t n) { return i < n ? row[i] : 0.0f; }
/* n (any) values from src, the lanes past them zero */
static inline bp_vec load_upto(const float *src, size_t n) { return n == 0 ? bp_vzero() : bp_vload_part(src, n); }

/* Input row iy (wrapping below 0: none, zeros) for the strip of output columns from ox0. c: the
   input column of the middle tap of lane 0. whole_row (stride 1, padding 1 on the left, a row and
   its output in one vector: the only strip): the row is the middle taps, its shifts the others. */
static inline __attribute__((always_inline)) taps3 tap_row(const plane_geom *p, const float *x, size_t iy,
                                                           size_t ox0, const int S, const bool whole_row) {
    taps3 v;
    bp_vec zero = bp_vzero();
    if (iy >= p->h) {
        v.left = v.mid = v.right = zero;
        return v;
    }
    const float *row = x + iy * p->sy;
    size_t w = p->w, c = S * ox0 + 1 - p->pl, n = c < w ? w - c : 0;
    if (whole_row) {
        v.mid = bp_vload_part(row, w);
        v.right = __builtin_shufflevector(v.mid, zero, LANES_FROM(1));
        v.left = __builtin_shufflevector(zero, v.mid, LANES_FROM(BP_VL - 1));
    } else if (S == 1) { /* neighbours inside the row by unaligned loads, zeros past it by a one-lane shift */
        v.mid = load_upto(row + c, n);
        if (c + BP_VL < w) v.right = bp_vload(row + c + 1);
        else v.right = __builtin_shufflevector(v.mid, zero, LANES_FROM(1));
        if (c > 0) v.left = load_upto(row + c - 1, c - 1 < w ? w - (c - 1) : 0);
        else v.left = __builtin_shufflevector(zero, v.mid, LANES_FROM(BP_VL - 1));
    } else {
        bp_vec a = load_upto(row + c, n), b = load_upto(row + c + BP_VL, n > BP_VL ? n - BP_VL : 0);
        v.mid = __builtin_shufflevector(a, b, BP_EVERY_OTHER(0));
        v.right = __builtin_shufflevector(a, b, BP_EVERY_OTHER(1));
        v.left = __builtin_shufflevector(bp_vset1(value_at(row, c - 1, w)), v.right, LANES_FROM(BP_VL - 1));
    }
    return v;
}

/* Cache lines of the next plane's input still to prefetch, per_row at each output row, so that
   memory is busy while this plane is computed (from L3 or memory, a strip's column walk leaves the
   hardware prefetchers little to go on). */
typedef struct {
    const char *at, *end;
    size_t per_row;
} prefetch_lines;

static inline __attribute__((always_inline)) void prefetch_some(prefetch_lines *pf) {
    for (size_t i = 0; i < pf->per_row && pf->at < pf->end; i++, pf->at += 64) __builtin_prefetch(pf->at, 0, 1);
}

/* At stride 1 the padded-plane kernel is faster on rows of many narrow vectors (measured: 112 wide
   on AVX2, every width on the 4-lane tier). */
bool bp_dw3x3_strips_fit(const bp_geom *g, const bp_image *img) {
    bool wide_vectors = g->sx == 2 || BP_VL >= 16 || (BP_VL >= 8 && g->in_w <= 4 * BP_VL);
    return g->kh == 3 && g->kw == 3 && (g->sx == 1 || g->sx == 2) && g->sy == g->sx && g->dx == 1 && g->dy == 1 &&
           g->pl <= 1 && g->pt <= 1 && img->sx == 1 && wide_vectors;
}

/* bias + the 9 products of the kernel rows' taps r0, r1, r2, clamped: in three chains */
static inline bp_vec taps_sum(const bp_vec k[9], const taps3 *r0, const taps3 *r1, const taps3 *r2, bp_vec bias,
                              bp_vec lo, bp_vec hi) {
    bp_vec s0 = bp_vfma(k[0], r0->left, bias), s1 = bp_vmul(k[3], r1->left), s2 = bp_vmul(k[6], r2->left);
    s0 = bp_vfma(k[1], r0->mid, s0);
    s1 = bp_vfma(k[4], r1->mid, s1);
    s2 = bp_vfma(k[7], r2->mid, s2);
    s0 = bp_vfma(k[2], r0->right, s0);
    s1 = bp_vfma(k[5], r1->right, s1);
    s2 = bp_vfma(k[8], r2->right, s2);
    return bp_vmin(hi, bp_vmax(lo, bp_vadd(bp_vadd(s0, s1), s2)));
}

static inline __attribute__((always_inline)) void strip(const bp_geom *g, const bp_image *img, const float *x,
                                                        const bp_vec k[9], const bp_dw_epilogue *e, size_t ox0,
                                                        float *out, const int S, const bool whole_row,
                                                        prefetch_lines pf, const bool prefetch) {
    size_t ow = g->out_w, oh = g->out_h, n = bp_min(ow - ox0, BP_VL);
    plane_geom p = plane_geom_of(g, img);
    bp_vec b = bp_vset1(e->bias), lo = bp_vset1(e->lo), hi = bp_vset1(e->hi);
    taps3 r0 = tap_row(&p, x, 0 - p.pt, ox0, S, whole_row), r1 = tap_row(&p, x, 1 - p.pt, ox0, S, whole_row), r2;
    for (size_t y = 0; y < oh; y++) {
        if (prefetch) prefetch_some(&pf);
        r2 = tap_row(&p, x, S * y + 2 - p.pt, ox0, S, whole_row);
        bp_vstore_part(out + y * ow + ox0, taps_sum(k, &r0, &r1, &r2, b, lo, hi), n);
        if (S == 1) {
            r0 = r1;
            r1 = r2;
        } else { /* the next output row starts at this one's last input row */
            r0 = r2;
            r1 = tap_row(&p, x, S * y + 3 - p.pt, ox0, S, whole_row);
        }
    }
}

/* The strips of a plane; with `prefetch` (a constant: no prefetching code in the loops without
   it), pf's lines spread over the rows of every strip. */
static inline __attribute__((always_inline)) void strips(const bp_geom *g, const bp_image *img, const float *x,
                                                         const bp_vec k[9], const bp_dw_epilogue *e, float *out,
                                                         prefetch_lines pf, const bool prefetch) {
    if (g->sx == 1 && g->pl == 1 && g->in_w <= BP_VL && g->out_w <= BP_VL) {
        strip(g, img, x, k, e, 0, out, 1, true, pf, prefetch);
        return;
    }
    for (size_t ox0 = 0; ox0 < g->out_w; ox0 += BP_VL) {
        if (g->sx == 1) strip(g, img, x, k, e, ox0, out, 1, false, pf, prefetch);
        else strip(g, img, x, k, e, ox0, out, 2, false, pf, prefetch);
        if (prefetch) pf.at += pf.per_row * g->out_h * 64;
    }
}

void bp_dw3x3_strips(const bp_geom *g, const bp_image *img, const float *x, const float *wk,
                     const bp_dw_epilogue *e, float *out, const float *next, size_t next_n) {
    bp_vec k[9];
    for (int t = 0; t < 9; t++) k[t] = bp_vset1(wk[t]);
    if (next == NULL) {
        strips(g, img, x, k, e, out, (prefetch_lines){NULL, NULL, 0}, false);
        return;
    }
    size_t lines = bp_ceil_div(next_n * sizeof(float), 64), rows = bp_ceil_div(g->out_w, BP_VL) * g->out_h;
    strips(g, img, x, k, e, out, (prefetch_lines){(const char *)next, (const char *)next + lines * 64,
                                                  bp_ceil_div(lines, rows)}, true);
}

/* acc[t] += dy * the tap's input over one image's strip from ox0. */
static inline __attribute__((always_inline)) void strip_weights(const bp_geom *g, const bp_image *img,
                                                                const float *x, const float *dy, size_t ox0,
                                                                bp_vec acc[9], const int S) {
    size_t ow = g->out_w, oh = g->out_h, n = bp_min(ow - ox0, BP_VL);
    plane_geom p = plane_geom_of(g, img);
    taps3 r0 = tap_row(&p, x, 0 - p.pt, ox0, S, false), r1 = tap_row(&p, x, 1 - p.pt, ox0, S, false), r2;
    for (size_t y = 0; y < oh; y++) {
        r2 = tap_row(&p, x, S * y + 2 - p.pt, ox0, S, false);
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
            r1 = tap_row(&p, x, S * y + 3 - p.pt, ox0, S, false);
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

/* ---- two channels at once, one in each half of the vectors ----
   For planes whose rows fit half a vector (7x7 at stride 1, 14x14 at stride 2 on AVX-512), where a
   strip would leave most lanes idle. Padding 1 on the left: each half's first lane takes a zero
   through the shift, as the image is narrower than the half (stride 1) or than the vector (stride
   2: the odd column before the second half's is past the first row). */
bool bp_dw3x3_pairs_fit(const bp_geom *g, const bp_image *img) {
    size_t half = BP_VL / 2;
    bool narrow = g->sx == 1 ? g->in_w < half && g->out_w < half : g->in_w < BP_VL && g->out_w <= half;
    return bp_dw3x3_strips_fit(g, img) && g->pl == 1 && narrow;
}

static inline __attribute__((always_inline)) taps3 pair_row(const plane_geom *p, const float *xa, const float *xb,
                                                            size_t iy, const int S) {
    taps3 v;
    bp_vec zero = bp_vzero();
    if (iy >= p->h) {
        v.left = v.mid = v.right = zero;
        return v;
    }
    bp_vec a = bp_vload_part(xa + iy * p->sy, p->w), b = bp_vload_part(xb + iy * p->sy, p->w);
    if (S == 1) {
        v.mid = __builtin_shufflevector(a, b, HALVES);
        v.right = __builtin_shufflevector(v.mid, zero, LANES_FROM(1));
        v.left = __builtin_shufflevector(zero, v.mid, LANES_FROM(BP_VL - 1));
    } else {
        v.mid = __builtin_shufflevector(a, b, BP_EVERY_OTHER(0));
        v.right = __builtin_shufflevector(a, b, BP_EVERY_OTHER(1));
        v.left = __builtin_shufflevector(zero, v.right, LANES_FROM(BP_VL - 1));
    }
    return v;
}

static inline __attribute__((always_inline)) void pair(const bp_geom *g, const bp_image *img, const float *const x[2],
                                                       const bp_vec k[9], bp_vec b, bp_vec lo, bp_vec hi,
                                                       float *const out[2], const int S) {
    size_t ow = g->out_w, oh = g->out_h;
    plane_geom p = plane_geom_of(g, img);
    const float *xa = x[0], *xb = x[1];
    float *outa = out[0], *outb = out[1];
    taps3 r0 = pair_row(&p, xa, xb, 0 - p.pt, S), r1 = pair_row(&p, xa, xb, 1 - p.pt, S), r2;
    for (size_t y = 0; y < oh; y++) {
        r2 = pair_row(&p, xa, xb, S * y + 2 - p.pt, S);
        bp_vec v = taps_sum(k, &r0, &r1, &r2, b, lo, hi);
        bp_vstore_part(outa + y * ow, v, ow);
        bp_vstore_part(outb + y * ow, __builtin_shufflevector(v, v, LANES_FROM(BP_VL / 2)), ow);
        if (S == 1) {
            r0 = r1;
            r1 = r2;
        } else {
            r0 = r2;
            r1 = pair_row(&p, xa, xb, S * y + 3 - p.pt, S);
        }
    }
}

void bp_dw3x3_pair(const bp_geom *g, const bp_image *img, const float *const x[2], const float *const wk[2],
                   const bp_dw_epilogue *const e[2], float *const out[2]) {
    bp_vec k[9];
    for (int t = 0; t < 9; t++) k[t] = __builtin_shufflevector(bp_vset1(wk[0][t]), bp_vset1(wk[1][t]), HALVES);
    bp_vec b = __builtin_shufflevector(bp_vset1(e[0]->bias), bp_vset1(e[1]->bias), HALVES);
    bp_vec lo = bp_vset1(e[0]->lo), hi = bp_vset1(e[0]->hi);
    if (g->sx == 1) pair(g, img, x, k, b, lo, hi, out, 1);
    else pair(g, img, x, k, b, lo, hi, out, 2);
}

/* ---- the input gradient at stride 2 ----
   dx[iy][ix] sums w[ky][kx] * dy[oy][ox] over 2*oy + ky - pt = iy and 2*ox + kx - pl = ix. With
   u = ix + pl, an even u takes kx = 0 at ox = u/2 and kx = 2 at ox = u/2 - 1, an odd u kx = 1 at
   ox = (u - 1)/2; rows likewise. A vector of dy columns j from j0, loaded as its own, previous and
   next values (the strips' tap rows), gives the dx columns 2j and 2j + 1: two vectors, interleaved
   into the dx row. */
bool bp_dw3x3_s2_input_gradient_fits(const bp_geom *g) {
    return g->kh == 3 && g->kw == 3 && g->sx == 2 && g->sy == 2 && g->dx == 1 && g->dy == 1 && g->pl <= 1 &&
           g->pt <= 1;
}

/* dy row oy (wrapping below 0 or past the plane: none) through the kernel row kr into the dx
   columns 2j (even) and 2j + 1 (odd) for j from j0. */
static inline __attribute__((always_inline)) void add_dy_row(const plane_geom *p, const float *dy, size_t oy,
                                                             size_t j0, const bp_vec kr[3], size_t pl, bp_vec *even,
                                                             bp_vec *odd) {
    taps3 r = tap_row(p, dy, oy, j0, 1, false); /* r[j - 1], r[j], r[j + 1] */
    if (pl == 0) {
        *even = bp_vfma(kr[0], r.mid, bp_vfma(kr[2], r.left, *even));
        *odd = bp_vfma(kr[1], r.mid, *odd);
    } else {
        *even = bp_vfma(kr[1], r.mid, *even);
        *odd = bp_vfma(kr[0], r.right, bp_vfma(kr[2], r.mid, *odd));
    }
}

void bp_dw3x3_s2_input_gradient(const bp_geom *g, const float *dy, const float *wk, const bp_dw_epilogue *e,
                                float *dx) {
    plane_geom p = {g->out_w, g->out_h, g->out_w, 1, 0}; /* dy rows, lane 0's middle tap at column j0 */
    size_t w = g->in_w, pl = g->pl;
    bp_vec k[9], b = bp_vset1(e->bias), lo = bp_vset1(e->lo), hi = bp_vset1(e->hi);
    for (int t = 0; t < 9; t++) k[t] = bp_vset1(wk[t]);
    for (size_t iy = 0; iy < g->in_h; iy++) {
        size_t s = iy + g->pt;
        float *row = dx + iy * w;
        for (size_t j0 = 0; 2 * j0 < w; j0 += BP_VL) {
            bp_vec even = b, odd = b;
            if (s % 2 == 0) {
                add_dy_row(&p, dy, s / 2, j0, k, pl, &even, &odd);
                add_dy_row(&p, dy, s / 2 - 1, j0, k + 6, pl, &even, &odd);
            } else {
                add_dy_row(&p, dy, s / 2, j0, k + 3, pl, &even, &odd);
            }
            even = bp_vmin(hi, bp_vmax(lo, even));
            odd = bp_vmin(hi, bp_vmax(lo, odd));
            size_t at = 2 * j0;
            bp_vstore_part(row + at, __builtin_shufflevector(even, odd, INTERLEAVE(0)), w - at);
            if (at + BP_VL < w)
                bp_vstore_part(row + at + BP_VL, __builtin_shufflevector(even, odd, INTERLEAVE(BP_VL / 2)),
                               w - at - BP_VL);
        }
    }
}
