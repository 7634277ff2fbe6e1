/* The direct engine's pointwise (1x1) kernel: a register tile of output channels x pixels of
   Y = W X + bias, where X's rows (input channels) and Y's rows (output channels) are runs of
   consecutive pixels and W(r, i) is at w[r*wr + i*wi] (the caller's weights in place, or the
   plan's packed blocks): each step of the reduction loads NV vectors of X's row and broadcasts
   MR weights of a column of W.
   Vector code through simd.h only, so every tier (and aarch64) compiles the same source. */
#include "direct_plan.h"
#include "vmath.h"

/* acc(r, v) over MR rows of W and NV whole vectors of pixels of X (x, rows xs apart); y (rows ys
   apart) = min(hi, max(lo, acc + bias)) (NaN kept, as the activations' own clamps do), `last`
   lanes of the last vector. */
BP_INLINE void pointwise_kernel(const float *x, size_t xs, size_t k, const float *w, size_t wr, size_t wi,
                                const float *bias, float lo, float hi, float *y, size_t ys, size_t last, const int MR,
                                const int NV) {
    bp_vec acc[POINTWISE_MR_MAX][POINTWISE_NV_MAX];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = bp_vzero();
    for (size_t i = 0; i < k; i++) {
        const float *row = x + i * xs;
        bp_vec xv[POINTWISE_NV_MAX];
        for (int v = 0; v < NV; v++) xv[v] = bp_vload(row + v * BP_VL);
        for (int r = 0; r < MR; r++) {
            bp_vec b = bp_vset1(w[(size_t)r * wr + i * wi]);
            for (int v = 0; v < NV; v++) acc[r][v] = bp_vfma(b, xv[v], acc[r][v]);
        }
    }
    bp_vec low = bp_vset1(lo), high = bp_vset1(hi);
    for (int r = 0; r < MR; r++) {
        bp_vec b = bp_vset1(bias[r]);
        float *out = y + (size_t)r * ys;
        for (int v = 0; v < NV - 1; v++) bp_vstore(out + v * BP_VL, bp_vmin(high, bp_vmax(low, bp_vadd(acc[r][v], b))));
        bp_vstore_part(out + (NV - 1) * BP_VL, bp_vmin(high, bp_vmax(low, bp_vadd(acc[r][NV - 1], b))), last);
    }
}

#define POINTWISE_CASE(MR, NV)                                                                          \
    case (MR)*8 + (NV): pointwise_kernel(x, xs, k, w, wr, wi, bias, lo, hi, y, ys, last, MR, NV); break;

void bp_direct_pointwise_tile(size_t mr, size_t nv, const float *x, size_t xs, size_t k, const float *w, size_t wr,
                              size_t wi, const float *bias, float lo, float hi, float *y, size_t ys, size_t last) {
    switch (mr * 8 + nv) {
#if BP_VREGS >= 32
        POINTWISE_CASE(8, 3) POINTWISE_CASE(8, 2) POINTWISE_CASE(8, 1)
#endif
        POINTWISE_CASE(4, 3) POINTWISE_CASE(4, 2) POINTWISE_CASE(4, 1)
        POINTWISE_CASE(2, 3) POINTWISE_CASE(2, 2) POINTWISE_CASE(2, 1)
        POINTWISE_CASE(1, 3) POINTWISE_CASE(1, 2) POINTWISE_CASE(1, 1)
    default: break; /* not reached: mr <= POINTWISE_MR_MAX, a power of two; nv <= POINTWISE_NV_MAX */
    }
}
