/* The direct engine's pointwise (1x1) kernel: a register tile of output channels x pixels of
   Y = W X + bias, where X's rows (input channels) and Y's rows (output channels) are runs of
   consecutive pixels and W(r, i) is at w[r*wr + i*wi] (the caller's weights in place, or the
   plan's packed blocks): each step of the reduction loads NV vectors of X's row and broadcasts
   MR weights of a column of W.
   Vector code through simd.h only, so every tier (and aarch64) compiles the same source. */
#include "direct_plan.h"
#include "vmath.h"

/* acc(r, v) += W(r, i) x(i, v) for MR rows of W and NV vectors of x's row i (x, rows xs apart). */
BP_INLINE void tile_step(bp_vec acc[POINTWISE_MR_MAX][POINTWISE_NV_MAX], const float *x, size_t xs, const float *w,
                         size_t wr, size_t wi, size_t i, const int MR, const int NV) {
    const float *row = x + i * xs;
    bp_vec xv[POINTWISE_NV_MAX];
    for (int v = 0; v < NV; v++) xv[v] = bp_vload(row + v * BP_VL);
    for (int r = 0; r < MR; r++) {
        bp_vec b = bp_vset1(w[(size_t)r * wr + i * wi]);
        for (int v = 0; v < NV; v++) acc[r][v] = bp_vfma(b, xv[v], acc[r][v]);
    }
}

/* y (rows ys apart) = min(hi, max(lo, acc + bias)) (NaN kept, as the activations' own clamps
   do), `last` lanes of the last vector. */
BP_INLINE void tile_store(bp_vec acc[POINTWISE_MR_MAX][POINTWISE_NV_MAX], const float *bias, float lo, float hi,
                          float *y, size_t ys, size_t last, const int MR, const int NV) {
    bp_vec low = bp_vset1(lo), high = bp_vset1(hi);
    for (int r = 0; r < MR; r++) {
        bp_vec b = bp_vset1(bias[r]);
        float *out = y + (size_t)r * ys;
        for (int v = 0; v < NV - 1; v++) bp_vstore(out + v * BP_VL, bp_vmin(high, bp_vmax(low, bp_vadd(acc[r][v], b))));
        bp_vstore_part(out + (NV - 1) * BP_VL, bp_vmin(high, bp_vmax(low, bp_vadd(acc[r][NV - 1], b))), last);
    }
}

/* acc(r, v) over MR rows of W and NV whole vectors of pixels of X (x, rows xs apart); y = the
   clamp of acc + bias (tile_store). Each step i also prefetches `lines` cache lines (into L2)
   from ahead + i*xs: that row's pixels that come next. */
BP_INLINE void pointwise_kernel(const float *x, size_t xs, size_t k, const float *w, size_t wr, size_t wi,
                                const float *bias, float lo, float hi, float *y, size_t ys, size_t last,
                                const float *ahead, size_t lines, const int MR, const int NV) {
    bp_vec acc[POINTWISE_MR_MAX][POINTWISE_NV_MAX];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = bp_vzero();
    for (size_t i = 0; i < k; i++) {
        for (size_t l = 0; l < lines; l++) __builtin_prefetch((const char *)(ahead + i * xs) + 64 * l, 0, 2);
        tile_step(acc, x, xs, w, wr, wi, i, MR, NV);
    }
    tile_store(acc, bias, lo, hi, y, ys, last, MR, NV);
}

/* CASE(MR, NV) for each tile shape: MR output channels (8 only with 32 vector registers) x NV
   vectors of pixels. */
#if BP_VREGS >= 32
#define POINTWISE_WIDE_TILES(CASE) CASE(8, 3) CASE(8, 2) CASE(8, 1)
#else
#define POINTWISE_WIDE_TILES(CASE)
#endif
#define POINTWISE_TILE_SHAPES(CASE)                                                                     \
    POINTWISE_WIDE_TILES(CASE)                                                                          \
    CASE(4, 3) CASE(4, 2) CASE(4, 1) CASE(2, 3) CASE(2, 2) CASE(2, 1) CASE(1, 3) CASE(1, 2) CASE(1, 1)

#define POINTWISE_CASE(MR, NV)                                                                          \
    case (MR)*8 + (NV): pointwise_kernel(x, xs, k, w, wr, wi, bias, lo, hi, y, ys, last, ahead, lines, MR, NV); break;

/* The tile for (mr, nv); the exported entry without prefetching passes lines 0, which the
   compiler folds away, so its loops are those of a kernel without the prefetch. */
BP_INLINE void pointwise_tiles(size_t mr, size_t nv, const float *x, size_t xs, size_t k, const float *w, size_t wr,
                               size_t wi, const float *bias, float lo, float hi, float *y, size_t ys, size_t last,
                               const float *ahead, size_t lines) {
    switch (mr * 8 + nv) {
        POINTWISE_TILE_SHAPES(POINTWISE_CASE)
    default: break; /* not reached: mr <= POINTWISE_MR_MAX, a power of two; nv <= POINTWISE_NV_MAX */
    }
}

void bp_direct_pointwise_tile(size_t mr, size_t nv, const float *x, size_t xs, size_t k, const float *w, size_t wr,
                              size_t wi, const float *bias, float lo, float hi, float *y, size_t ys, size_t last) {
    pointwise_tiles(mr, nv, x, xs, k, w, wr, wi, bias, lo, hi, y, ys, last, NULL, 0);
}

void bp_direct_pointwise_tile_ahead(size_t mr, size_t nv, const float *x, size_t xs, size_t k, const float *w,
                                    size_t wr, size_t wi, const float *bias, float lo, float hi, float *y, size_t ys,
                                    size_t last, const float *ahead, size_t lines) {
    pointwise_tiles(mr, nv, x, xs, k, w, wr, wi, bias, lo, hi, y, ys, last, ahead, lines);
}

/* min(hi, max(lo, the sum of acc's lanes + bias)) (NaN kept, as in the tiles). */
BP_INLINE float dot_result(bp_vec acc, float bias, float lo, float hi) {
    float v = bp_vsum(acc) + bias;
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* y(r, p) = min(hi, max(lo, bias[r] + sum_i W(r, i) xt(p, i))) for MR rows of W (w, rows wr
   apart, steps consecutive) and NP pixels (xt: k floats each, ldx apart): dot products along the
   reduction, for the few pixels past a run's last whole vector, which a tile of the kernel above
   would compute in a whole vector each. */
BP_INLINE void pointwise_dots_kernel(const float *xt, size_t ldx, size_t k, const float *w, size_t wr,
                                     const float *bias, float lo, float hi, float *y, size_t ys, const int MR,
                                     const int NP) {
    bp_vec acc[POINTWISE_DOTS_MR_MAX][POINTWISE_DOTS_MAX];
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) acc[r][p] = bp_vzero();
    size_t i = 0;
    for (; i + BP_VL <= k; i += BP_VL) {
        bp_vec xv[POINTWISE_DOTS_MAX];
        for (int p = 0; p < NP; p++) xv[p] = bp_vload(xt + (size_t)p * ldx + i);
        for (int r = 0; r < MR; r++) {
            bp_vec wv = bp_vload(w + (size_t)r * wr + i);
            for (int p = 0; p < NP; p++) acc[r][p] = bp_vfma(wv, xv[p], acc[r][p]);
        }
    }
    if (i < k)
        for (int r = 0; r < MR; r++) {
            bp_vec wv = bp_vload_part(w + (size_t)r * wr + i, k - i);
            for (int p = 0; p < NP; p++) acc[r][p] = bp_vfma(wv, bp_vload_part(xt + (size_t)p * ldx + i, k - i), acc[r][p]);
        }
    for (int r = 0; r < MR; r++)
        for (int p = 0; p < NP; p++) y[(size_t)r * ys + p] = dot_result(acc[r][p], bias[r], lo, hi);
}

#define POINTWISE_DOTS_CASE(MR, NP)                                                                     \
    case (MR)*8 + (NP): pointwise_dots_kernel(xt, ldx, k, w, wr, bias, lo, hi, y, ys, MR, NP); break;

void bp_direct_pointwise_dots(size_t mr, size_t np, const float *xt, size_t ldx, size_t k, const float *w, size_t wr,
                              const float *bias, float lo, float hi, float *y, size_t ys) {
    switch (mr * 8 + np) {
#if BP_VREGS >= 32
        POINTWISE_DOTS_CASE(4, 4) POINTWISE_DOTS_CASE(4, 3) POINTWISE_DOTS_CASE(4, 2) POINTWISE_DOTS_CASE(4, 1)
#endif
        POINTWISE_DOTS_CASE(2, 4) POINTWISE_DOTS_CASE(2, 3) POINTWISE_DOTS_CASE(2, 2) POINTWISE_DOTS_CASE(2, 1)
        POINTWISE_DOTS_CASE(1, 4) POINTWISE_DOTS_CASE(1, 3) POINTWISE_DOTS_CASE(1, 2) POINTWISE_DOTS_CASE(1, 1)
    default: break; /* not reached: mr <= POINTWISE_DOTS_MR_MAX, a power of two; np <= POINTWISE_DOTS_MAX */
    }
}

/* The tile of pointwise_kernel (W's steps consecutive, every lane of its NV vectors stored) and
   the dot products of bp_direct_pointwise_dots for np more pixels (xt, ldx; written after the
   tile's pixels), in one pass over W: each BP_VL steps of the tile, the dot products take the
   vector of W's row the broadcasts have just brought into L1, where a pass of their own would
   read W's rows again from L2. Their sums live in memory (volatile), one load and store a
   vector each BP_VL steps, so the tile keeps its registers. The sums are those of
   bp_direct_pointwise_dots, term for term. */
BP_INLINE void pointwise_tile_dots_kernel(const float *x, size_t xs, size_t k, const float *w, size_t wr, size_t np,
                                          const float *xt, size_t ldx, const float *bias, float lo, float hi,
                                          float *y, size_t ys, const int MR, const int NV) {
    bp_vec acc[POINTWISE_MR_MAX][POINTWISE_NV_MAX];
    volatile bp_vec dots[POINTWISE_MR_MAX][POINTWISE_DOTS_MAX];
    for (int r = 0; r < MR; r++) {
        for (int v = 0; v < NV; v++) acc[r][v] = bp_vzero();
        for (size_t p = 0; p < np; p++) dots[r][p] = bp_vzero();
    }
    size_t i = 0;
    for (; i + BP_VL <= k; i += BP_VL) {
#pragma GCC unroll 16
        for (size_t s = 0; s < BP_VL; s++) tile_step(acc, x, xs, w, wr, 1, i + s, MR, NV);
        for (int r = 0; r < MR; r++) {
            bp_vec wv = bp_vload(w + (size_t)r * wr + i);
            for (size_t p = 0; p < np; p++) dots[r][p] = bp_vfma(wv, bp_vload(xt + p * ldx + i), dots[r][p]);
        }
    }
    if (i < k) {
        for (size_t s = i; s < k; s++) tile_step(acc, x, xs, w, wr, 1, s, MR, NV);
        for (int r = 0; r < MR; r++) {
            bp_vec wv = bp_vload_part(w + (size_t)r * wr + i, k - i);
            for (size_t p = 0; p < np; p++)
                dots[r][p] = bp_vfma(wv, bp_vload_part(xt + p * ldx + i, k - i), dots[r][p]);
        }
    }
    tile_store(acc, bias, lo, hi, y, ys, BP_VL, MR, NV);
    for (int r = 0; r < MR; r++)
        for (size_t p = 0; p < np; p++) y[(size_t)r * ys + NV * BP_VL + p] = dot_result(dots[r][p], bias[r], lo, hi);
}

#define POINTWISE_TILE_DOTS_CASE(MR, NV)                                                                \
    case (MR)*8 + (NV): pointwise_tile_dots_kernel(x, xs, k, w, wr, np, xt, ldx, bias, lo, hi, y, ys, MR, NV); break;

void bp_direct_pointwise_tile_dots(size_t mr, size_t nv, size_t np, const float *x, size_t xs, size_t k,
                                   const float *w, size_t wr, const float *xt, size_t ldx, const float *bias, float lo,
                                   float hi, float *y, size_t ys) {
    switch (mr * 8 + nv) {
        POINTWISE_TILE_SHAPES(POINTWISE_TILE_DOTS_CASE)
    default: break; /* not reached: mr <= POINTWISE_MR_MAX, a power of two; nv <= POINTWISE_NV_MAX */
    }
}
