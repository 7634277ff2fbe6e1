/* bnns-py portable backend: internal declarations shared by its C files. */
#ifndef BNNS_PORTABLE_INTERNAL_H
#define BNNS_PORTABLE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bnns.h"
#include "bnns_portable.h"

#define BNNS_PORTABLE_VERSION "0.1.0"
#define BNNS_PORTABLE_ALIGNMENT 64

/* ---- errors (error.c) ---- */
void bp_set_error(const char *format, ...);
void bp_clear_error(void);

/* ---- checked size arithmetic ---- */
static inline bool bp_mul(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool bp_add(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }

/* True when `count` items `stride` values apart, each `extent` values long, fit in memory. */
static inline bool bp_batch_span_ok(size_t count, size_t stride, size_t extent) {
    size_t span;
    return count == 0 || (bp_mul(count - 1, stride, &span) && bp_add(span, extent, &span) &&
                          span <= (size_t)INT64_MAX / sizeof(float));
}

/* ---- an ImageCHW descriptor with its strides resolved (descriptor.c) ---- */
typedef struct {
    size_t w, h, c;          /* sizes */
    size_t sx, sy, sc;       /* strides in values */
    size_t extent;           /* values from the first element to one past the last */
    size_t item;             /* default batch stride: sc * c, where the layout's pattern continues */
    bool packed;             /* sx == 1, sy == w, sc == w*h */
} bp_image;

bool bp_resolve_strides(const BNNSNDArrayDescriptor *d, size_t rank, size_t stride_out[8], size_t *extent);
bool bp_image_from_desc(const BNNSNDArrayDescriptor *d, const char *name, bp_image *img);
/* The same image, densely packed (sx = 1, sy = w, sc = w*h). */
bp_image bp_packed_like(const bp_image *img);
/* Copy (or add) every value of an image into another of the same sizes, each with its strides. */
void bp_copy_image(const bp_image *from, const float *src, const bp_image *to, float *dst, bool accumulate);

/* ---- memory through the filter's allocator (filter.c) ---- */
typedef struct {
    BNNSAlloc alloc;
    BNNSFree release;
} bp_allocator;

void *bp_alloc(const bp_allocator *a, size_t bytes);
void bp_free(const bp_allocator *a, void *p);

/* ---- activation (activation.c) ---- */
/* Why the portable backend cannot fuse / differentiate (from y) this activation, or NULL if it can. */
const char *bp_activation_unsupported_reason(const BNNSActivation *act);
const char *bp_activation_backward_unsupported_reason(const BNNSActivation *act);
bool bp_activation_supported(const BNNSActivation *act);
bool bp_activation_backward_supported(const BNNSActivation *act);
/* Softmax and LogSoftmax: they act on each pixel's channel vector, not on each value. */
bool bp_activation_is_channelwise(const BNNSActivation *act);
/* Elementwise activations only (a channelwise one is not applied here). */
void bp_activation_apply(const BNNSActivation *act, float *data, size_t n);
/* Any supported activation, in place, on `channels` planes `channel_stride` values apart, each of
   `pixels` contiguous values (a packed CHW output: stride = pixels; one FC row: pixels = 1). */
void bp_activation_apply_image(const BNNSActivation *act, float *data, size_t channels, size_t pixels,
                               size_t channel_stride);
/* dz = dy * f'(pre-activation), computed from the activation's output y (elementwise functions). */
void bp_activation_backward(const BNNSActivation *act, const float *y, const float *dy, float *dz, size_t n);
/* Channelwise functions: dz holds dy on entry and the gradient before the activation on return;
   y has channel stride y_sc and pixel stride y_sx, dz channel stride dz_sc and pixel stride 1. */
void bp_activation_backward_channels(const BNNSActivation *act, const float *y, size_t y_sc, size_t y_sx, float *dz,
                                     size_t dz_sc, size_t channels, size_t pixels);

/* ---- GEMM (gemm.c): row-major C = alpha*op(A)*op(B) + beta*C ---- */
void bp_sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
              const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc,
              int threads);
const char *bp_blas_name(void);

/* ---- geometry of a standard convolution S (conv_engine.c) ----
   A standard layer is its own S; a transposed layer T is the adjoint of the S whose input is
   T's output and whose output is T's input. */
typedef struct {
    size_t in_c, in_h, in_w;      /* S input (image) */
    size_t out_c, out_h, out_w;   /* S output */
    size_t kh, kw, sx, sy, dx, dy, pl, pt;
    size_t groups, in_cg, out_cg; /* channels per group */
    size_t k;                     /* in_cg*kh*kw: GEMM depth */
} bp_geom;

/* out_g = W_g * im2col(x_g) for every group; out packed (out_c x out_h*out_w). */
void bp_conv_forward(const bp_geom *g, const float *w, const bp_image *x_img, const float *x,
                     float *out, float *col, int threads);
/* dx (strided, accumulated into) += col2im(W_g^T * dy_g); dy packed. */
void bp_conv_backward_data(const bp_geom *g, const float *w, const float *dy, const bp_image *dx_img,
                           float *dx, float *col, int threads);
/* dW_g = beta*dW_g + dy_g * im2col(x_g)^T; dy packed, dW packed [out_c][k]. */
void bp_conv_backward_weights(const bp_geom *g, const float *x, const bp_image *x_img, const float *dy,
                              float *dw, float beta, float *col, int threads);

#endif
