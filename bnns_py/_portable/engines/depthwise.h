/* bnns-py portable backend: the depthwise engine (depthwise.c), for layers with one input channel
   per group: the forward pass, the backward-data pass at stride 1 (itself a depthwise
   convolution: the adjoint geometry) and the weight gradient, one plane of one channel at a time
   through the kernels of kernels/depthwise_kernels.h. conv_engine.c sends these layers here. */
#ifndef BNNS_PORTABLE_DEPTHWISE_H
#define BNNS_PORTABLE_DEPTHWISE_H

#include "internal.h"

bool bp_depthwise(const bp_geom *g); /* one input channel per group */

/* The stride-1 backward-data pass of g as a depthwise convolution a (dy correlated with the flipped
   kernel), when the depthwise kernels take it. */
bool bp_depthwise_adjoint(const bp_geom *g, bp_geom *a);

/* Scratch floats one worker needs for g's passes. */
size_t bp_depthwise_scratch_floats(const bp_geom *g);

/* y = conv(x), as bp_conv_forward. */
void bp_depthwise_forward(const bp_geom *g, const float *w, size_t batch, const bp_image *x_img, const float *x,
                          size_t x_bs, float *y, size_t y_bs, const bp_epilogue *e, const bp_scratch *s, int threads);

/* dx (packed) = the backward-data pass through the adjoint a of g (bp_depthwise_adjoint), then e. */
void bp_depthwise_backward_data(const bp_geom *g, const bp_geom *a, const float *w, size_t batch, const float *dy,
                                size_t dy_bs, float *dx, size_t dx_bs, const bp_epilogue *e, const bp_scratch *s,
                                int threads);

/* The backward-data pass of g at stride 2 runs on the depthwise kernels (3x3, depth multiplier 1). */
bool bp_depthwise_strided_input_gradient(const bp_geom *g);

/* dx (packed) = the backward-data pass of such a layer, then e. */
void bp_depthwise_backward_data_strided(const bp_geom *g, const float *w, size_t batch, const float *dy,
                                        size_t dy_bs, float *dx, size_t dx_bs, const bp_epilogue *e, int threads);

/* dW = beta*dW + the weight gradient, as bp_conv_backward_weights. */
void bp_depthwise_weight_gradient(const bp_geom *g, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                                  const float *dy, size_t dy_bs, float *dw, float beta, const bp_scratch *s,
                                  int threads);

#endif
