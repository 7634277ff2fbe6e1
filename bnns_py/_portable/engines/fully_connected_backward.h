/* bnns-py portable backend: the backward pass of fully-connected layers (fully_connected_backward.c),
   with the batch as the GEMMs' shared dimension. */
#ifndef BNNS_PORTABLE_FULLY_CONNECTED_BACKWARD_H
#define BNNS_PORTABLE_FULLY_CONNECTED_BACKWARD_H

#include "internal.h"

/* The operands of one backward call: dz (batch rows of `out` values, ldz apart) is the gradient
   before the activation, w the weights (out rows of `in` values, ldw apart), x the forward input
   (batch rows of `in` values, ldx apart). dw (out rows of `in`, lddw apart) = dz^T x + dw_beta dw
   and dx (batch rows of `in`, lddx apart) = dz w + dx_beta dx; either may be NULL (not wanted). */
typedef struct {
    size_t batch, in, out;
    const float *dz, *w, *x;
    size_t ldz, ldw, ldx;
    float *dw, *dx;
    size_t lddw, lddx;
    float dw_beta, dx_beta;
} bp_fc_gradients;

/* Both products, split over up to ctx->threads workers into blocks whose bounds depend on the
   sizes alone: each value is computed by the same GEMM call whatever the thread count. */
void bp_fc_backward(const bp_fc_gradients *g, const bp_gemm_ctx *ctx);

#endif
