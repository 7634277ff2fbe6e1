/* bnns-py portable backend: the depthwise convolution kernels (one input channel per group), which
   engines/depthwise.c runs; each computes one output plane of one channel from its input plane.

   - 3x3 strips (depthwise_3x3.c): 3x3, stride 1 or 2, padding at most 1 at the top and left,
     straight from the input plane, a vector of output columns at a time, or two narrow planes at
     once.
   - padded plane (depthwise_padded.c): stride 1 or 2, at most BP_DW_MAX_TAPS taps, from a
     zero-bordered copy of the input plane (stride 2: its even and odd columns in two sub-planes).
   - general (depthwise_general.c): any geometry, straight from the input plane.

   Outputs start at the bias and end clamped to [lo, hi] in registers (the fused ReLU, ReLU6 and
   Clamp; -inf, +inf for none). */
#ifndef BNNS_PORTABLE_DEPTHWISE_KERNELS_H
#define BNNS_PORTABLE_DEPTHWISE_KERNELS_H

#include "internal.h"

enum { BP_DW_MAX_TAPS = 256 }; /* the padded-plane kernels keep per-tap tables on the stack */

typedef struct {
    float bias, lo, hi;
} bp_dw_epilogue;

/* ---- 3x3 strips ---- */
bool bp_dw3x3_strips_fit(const bp_geom *g, const bp_image *img);
/* next: the next plane's source (next_n floats; NULL: none), prefetched meanwhile. */
void bp_dw3x3_strips(const bp_geom *g, const bp_image *img, const float *x, const float *wk,
                     const bp_dw_epilogue *e, float *out, const float *next, size_t next_n);
/* The weight gradient of such a layer for one channel: sums[t] += the tap's products, over the batch. */
void bp_dw3x3_strips_weights(const bp_geom *g, const bp_image *img, const float *x0, size_t x_bs,
                                  const float *dy0, size_t dy_bs, size_t batch, float sums[9]);

/* Two planes of a layer the strips take, with padding 1 on the left and rows narrow enough that
   a half vector holds one (7x7 at stride 1, 14x14 at stride 2 on AVX-512): one in each half of
   the vectors. The two share the clamp (e[0]'s lo and hi). */
bool bp_dw3x3_pairs_fit(const bp_geom *g, const bp_image *img);
void bp_dw3x3_pair(const bp_geom *g, const bp_image *img, const float *const x[2], const float *const wk[2],
                   const bp_dw_epilogue *const e[2], float *const out[2]);

/* The input gradient of a 3x3 stride-2 layer (padding at most 1 at the top and left) for one
   channel: the dx plane (packed) from the dy plane (packed), starting at the bias and clamped. */
bool bp_dw3x3_s2_input_gradient_fits(const bp_geom *g);
void bp_dw3x3_s2_input_gradient(const bp_geom *g, const float *dy, const float *wk, const bp_dw_epilogue *e,
                                float *dx);

/* ---- padded plane ---- */
bool bp_dw_padded(const bp_geom *g);
size_t bp_dw_plane_floats(const bp_geom *g);
/* Offsets of each tap into the padded plane from the first input of output (0, 0). */
void bp_dw_plane_offsets(const bp_geom *g, size_t off[BP_DW_MAX_TAPS]);
/* The interior of the padded plane p from the input plane src (its border: zeroed once by the
   caller, the same for every channel). */
void bp_dw_fill_plane(const bp_geom *g, const bp_image *img, const float *src, float *p);
/* One output plane from the padded plane p. The next plane's source (next_n floats from next; NULL:
   none) is prefetched meanwhile, so that the memory is busy while this plane is computed. */
void bp_dw_padded_plane(const bp_geom *g, const float *p, const size_t *off, const float *wo,
                        const bp_dw_epilogue *e, float *out, const float *next, size_t next_n);
/* sums[t] += sum over the output of dy * the tap's input, from the padded plane p of one image. */
void bp_dw_padded_weights(const bp_geom *g, const float *p, const size_t *off, const float *dy, float *sums);

/* ---- general ---- */
void bp_dw_general_plane(const bp_geom *g, const bp_image *img, const float *plane, const float *wo,
                         const bp_dw_epilogue *e, float *out);
/* dw[t] = beta*dw[t] + sum over the batch of dy * the tap's input (bounds checked per row). */
void bp_dw_general_weights(const bp_geom *g, const bp_image *img, const float *x, size_t x_bs, const float *dy,
                           size_t dy_bs, size_t batch, float beta, float *dw);

#endif
