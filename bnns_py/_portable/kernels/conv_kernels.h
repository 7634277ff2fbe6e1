/* bnns-py portable backend: the kernels of the convolution engine (engines/conv_engine.c).

   - padded rows (padded_rows.c): the zero-padded copy of short image rows, one vector store per
     row, on tiers with masked expanding loads (AVX-512).
   - tiny planes (tiny_planes.c): the tiny-layer kernel, output planes straight from the padded
     planes, one vector per output row. */
#ifndef BNNS_PORTABLE_CONV_KERNELS_H
#define BNNS_PORTABLE_CONV_KERNELS_H

#include "internal.h"

/* The padded planes of input channels [c0, c0 + in_cg) of x when its rows are contiguous and a
   padded row fits one vector (AVX-512 only); false (nothing written) otherwise. Each plane is
   ph x pw, as conv_engine.c's fill_padded_planes. */
bool bp_fill_short_padded_rows(const bp_geom *g, const bp_image *img, const float *x, size_t c0, float *pad);

/* Output channels are done in pairs, which halves the loads per multiply-add, where there are
   registers for it. */
#if defined(__AVX__)
enum { BP_TINY_PAIRS = 1 };
#else
enum { BP_TINY_PAIRS = 0 };
#endif

/* One output plane (bp_tiny_plane) or two consecutive ones (bp_tiny_plane_pair, weights k apart)
   from the padded planes, weights wo (k each) and their biases. */
void bp_tiny_plane(const bp_geom *g, const float *pad, const float *wo, const float *bias, float *out);
void bp_tiny_plane_pair(const bp_geom *g, const float *pad, const float *wo, const float *bias, float *out);

#endif
