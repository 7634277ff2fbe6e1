/* bnns-py portable backend: the vector kernels of the fused activations (act_*.c), called by
   activation.c, which owns the support tables and the cases these kernels leave to it.

   Every function returns false, touching nothing, when it has no vector kernel for the function
   (or for its alpha / beta), and the caller then takes its scalar path. */
#ifndef BNNS_PORTABLE_ACT_KERNELS_H
#define BNNS_PORTABLE_ACT_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tier.h" /* renames these per-tier functions */

/* data[i] = f(data[i]) for the piecewise-linear functions (min / max / select) */
bool bp_act_piecewise_forward(uint32_t function, float alpha, float beta, float *data, size_t n);

/* data[i] = f(data[i]) for the functions built on exp / log / erf */
bool bp_act_smooth_forward(uint32_t function, float alpha, float beta, float *data, size_t n);

/* dz[i] = dy[i] f'(x_i), the derivative written as a function of the output y[i] */
bool bp_act_backward_vector(uint32_t function, float alpha, float beta, const float *y, const float *dy, float *dz,
                            size_t n);

/* Softmax (log_softmax false) or LogSoftmax over channels: value c of pixel i at
   data[c * channel_stride + i] */
void bp_act_softmax(bool log_softmax, float *data, size_t channels, size_t pixels, size_t channel_stride);

/* Their backward from the output y: dz holds dy on entry and receives the input gradient; value c of
   pixel i at y[c * y_sc + i * y_sx] and dz[c * dz_sc + i] */
void bp_act_softmax_backward(bool log_softmax, const float *y, size_t y_sc, size_t y_sx, float *dz, size_t dz_sc,
                             size_t channels, size_t pixels);

#endif
