/* bnns-py portable backend: the fully-connected kernel at small batches (kernels/fc_tiles.c),
   driven by engines/fully_connected.c and the kernel tester tests/kernels/fc_tiles.c. */
#ifndef BNNS_PORTABLE_FC_KERNELS_H
#define BNNS_PORTABLE_FC_KERNELS_H

#include <stddef.h>

#include "simd.h"
#include "tier.h" /* renames the functions declared below */

/* Tiles: up to FC_MR_MAX outputs x FC_NB_MAX batch rows, the accumulators filling most of the
   register file (bp_fc_tile_rows). With 32 registers, 6 batch rows at most: 3 x 8 tiles (11 loads
   per 24 FMAs, and 8 rows of X that leave the level-1 cache at 1280 inputs) run at 0.6-0.8 times
   the speed of 6 x 4 and 4 x 6 ones. With 16, 12 accumulators (6 x 2, 4 x 3, 3 x 4 tiles: 7 or 8
   loads per 12 FMAs) with the weights' and one input vector in the other registers: 8 (2 x 4)
   ran at 0.55-0.6 times their speed at 8-16 batch rows (AMD EPYC, 2026-12). */
#define FC_MR_MAX 8
#if BP_VREGS >= 32
#define FC_NB_MAX 6
#else
#define FC_NB_MAX 4
#endif

/* The outputs a full tile of nb (1 <= nb <= FC_NB_MAX) batch rows takes. */
size_t bp_fc_tile_rows(size_t nb);

/* y(b, r) (rows ldy apart) = min(hi, max(lo, bias[r] + sum_i W(r, i) X(b, i))) for mr outputs
   (W: k values per row, rows ldw apart) and nb batch rows of X (ldx apart). mr is
   bp_fc_tile_rows(nb), bp_fc_tile_rows(nb + 1) (nb < FC_NB_MAX) or 1. */
void bp_fc_tile(size_t mr, size_t nb, const float *w, size_t ldw, const float *x, size_t ldx, size_t k,
                const float *bias, float lo, float hi, float *y, size_t ldy);

#endif
