/* The fully-connected kernel at small batches: a register tile of MR outputs x NB batch rows of
   Y = X W^T + bias, as dot products along the inputs, with W's rows (one per output) and X's rows
   (one per batch item) read in place. Each step loads a vector of each of the MR rows of W and of
   the NB rows of X, so W is read once per block of batch rows: at batches up to FC_NB_MAX, once.
   The tile's accumulators start from the bias (in lane 0) and are reduced BP_VL at a time by one
   shuffle-and-add tree (bp_vsum_lanes) rather than one horizontal sum each, then clamped in the
   same vector, so the results are only copied out: at 512 inputs a scalar bias, clamp and store
   per result took about a tenth of the tile's time.
   Vector code through simd.h only, so every tier (and aarch64) compiles the same source. */
#include "fc_kernels.h"
#include "vmath.h"

#define FC_INLINE static inline __attribute__((always_inline))

/* y(b, r) (rows ldy apart) = min(hi, max(lo, bias[r] + sum_i W(r, i) X(b, i))) for MR rows of W
   (k values each, ldw apart) and NB rows of X (ldx apart); NaN kept, as the activations' clamps. */
FC_INLINE void fc_kernel(const float *w, size_t ldw, const float *x, size_t ldx, size_t k, const float *bias, float lo,
                         float hi, float *y, size_t ldy, const int MR, const int NB) {
    bp_vec acc[FC_MR_MAX][FC_NB_MAX]; /* the bias in lane 0: summed with the products */
    for (int r = 0; r < MR; r++) {
        bp_vec start = bp_vload_part(bias + r, 1);
        for (int b = 0; b < NB; b++) acc[r][b] = start;
    }
    size_t i = 0;
    for (; i + BP_VL <= k; i += BP_VL) {
        bp_vec wv[FC_MR_MAX];
        for (int r = 0; r < MR; r++) wv[r] = bp_vload(w + (size_t)r * ldw + i);
        for (int b = 0; b < NB; b++) {
            bp_vec xv = bp_vload(x + (size_t)b * ldx + i);
            for (int r = 0; r < MR; r++) acc[r][b] = bp_vfma(wv[r], xv, acc[r][b]);
        }
    }
    if (i < k) {
        bp_vec wv[FC_MR_MAX];
        for (int r = 0; r < MR; r++) wv[r] = bp_vload_part(w + (size_t)r * ldw + i, k - i);
        for (int b = 0; b < NB; b++) {
            bp_vec xv = bp_vload_part(x + (size_t)b * ldx + i, k - i);
            for (int r = 0; r < MR; r++) acc[r][b] = bp_vfma(wv[r], xv, acc[r][b]);
        }
    }
    float sums[FC_MR_MAX * FC_NB_MAX + BP_VL]; /* sums[b * MR + r]: accumulator (r, b) reduced, clamped */
    if (MR * NB < 4)
        for (int a = 0; a < MR * NB; a++) {
            float v = bp_vsum(acc[a % MR][a / MR]);
            v = v < lo ? lo : v; /* NaN kept, as bp_vmax(lo, v) below */
            sums[a] = v > hi ? hi : v;
        }
    else
        for (int a0 = 0; a0 < MR * NB; a0 += BP_VL) {
            bp_vec group[BP_VL];
            for (int l = 0, a = a0; l < BP_VL; l++, a++) group[l] = a < MR * NB ? acc[a % MR][a / MR] : bp_vzero();
            bp_vstore(sums + a0, bp_vmin(bp_vset1(hi), bp_vmax(bp_vset1(lo), bp_vsum_lanes(group))));
        }
    for (int b = 0; b < NB; b++) memcpy(y + (size_t)b * ldy, sums + b * MR, (size_t)MR * sizeof(float));
}

size_t bp_fc_tile_rows(size_t nb) {
#if BP_VREGS >= 32
    static const unsigned char rows[FC_NB_MAX + 1] = {0, 8, 8, 8, 6, 4, 4};
#else
    static const unsigned char rows[FC_NB_MAX + 1] = {0, 8, 6, 4, 3};
#endif
    return rows[nb];
}

#define FC_CASE(MR, NB)                                                                                 \
    case (MR)*16 + (NB): fc_kernel(w, ldw, x, ldx, k, bias, lo, hi, y, ldy, MR, NB); return;

void bp_fc_tile(size_t mr, size_t nb, const float *w, size_t ldw, const float *x, size_t ldx, size_t k,
                const float *bias, float lo, float hi, float *y, size_t ldy) {
    switch (mr * 16 + nb) {
        /* (bp_fc_tile_rows(nb), nb), (bp_fc_tile_rows(nb + 1), nb) and (1, nb) for every nb */
#if BP_VREGS >= 32
        FC_CASE(8, 1) FC_CASE(8, 2) FC_CASE(8, 3) FC_CASE(6, 3) FC_CASE(6, 4) FC_CASE(4, 4) FC_CASE(4, 5)
        FC_CASE(4, 6) FC_CASE(1, 5) FC_CASE(1, 6)
#else
        FC_CASE(8, 1) FC_CASE(6, 1) FC_CASE(6, 2) FC_CASE(4, 2) FC_CASE(4, 3) FC_CASE(3, 3) FC_CASE(3, 4)
#endif
        FC_CASE(1, 1) FC_CASE(1, 2) FC_CASE(1, 3) FC_CASE(1, 4)
    default: break; /* not reached: see fc_kernels.h */
    }
}
