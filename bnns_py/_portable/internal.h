/* bnns-py portable backend: internal declarations shared by its C files. */
#ifndef BNNS_PORTABLE_INTERNAL_H
#define BNNS_PORTABLE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bnns.h"
#include "bnns_portable.h"
#include "gemm.h"

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

/* Resolve the first `rank` strides of d (0 = packed after the previous axis), check sizes are
   nonzero, axes do not overlap and nothing overflows; `name` prefixes the error reason. */
bool bp_resolve_strides(const BNNSNDArrayDescriptor *d, size_t rank, const char *name, size_t stride_out[8],
                        size_t *extent);
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


/* ---- geometry of a standard convolution S (conv_engine.c) ----
   A standard layer is its own S; a transposed layer T is the adjoint of the S whose input is
   T's output and whose output is T's input. */
typedef struct {
    size_t in_c, in_h, in_w;      /* S input (image) */
    size_t out_c, out_h, out_w;   /* S output */
    size_t kh, kw, sx, sy, dx, dy, pl, pt;
    size_t groups, in_cg, out_cg; /* channels per group */
    size_t k;                     /* in_cg*kh*kw: GEMM depth */
    size_t block_rows;            /* output rows per column block (im2col / col2im), >= 1 */
} bp_geom;

/* Column blocks: at most about this many floats of column matrix at a time (1 MiB, so that it is
   still cached when the GEMM reads it; also bounds the workspace). */
#ifndef BNNS_PORTABLE_COL_BLOCK_FLOATS
#define BNNS_PORTABLE_COL_BLOCK_FLOATS (1u << 18)
#endif

/* What happens to each finished output plane (packed, h x w values) of channel c: add the bias,
   apply an elementwise activation, then copy it into a strided image. Any part may be absent. */
typedef struct {
    const float *bias;         /* NULL: no bias */
    size_t bias_stride;
    const BNNSActivation *act; /* NULL: none (channelwise activations are the caller's job) */
    const bp_image *dst_img;   /* with dst: where the plane goes */
    float *dst;                /* NULL: the plane stays where it is */
} bp_epilogue;

void bp_epilogue_channel(const bp_epilogue *e, size_t c, float *plane, size_t h, size_t w);
/* Every plane of a packed (channels x h*w) block, over threads; e may be NULL. */
void bp_epilogue_planes(const bp_epilogue *e, float *planes, size_t channels, size_t h, size_t w, int threads);

/* out_g = W_g * im2col(x_g) for every group, then the epilogue on every channel (e may be NULL);
   out packed (out_c x out_h*out_w). */
void bp_conv_forward(const bp_geom *g, const float *w, const bp_image *x_img, const float *x, float *out,
                     float *col, const bp_gemm_ctx *gemm, const bp_epilogue *e);
/* dx (strided) = or += col2im(W_g^T * dy_g) (overwrite: the planes are zeroed first); dy packed.
   With dx_img packed, the epilogue (may be NULL) runs on every finished plane. */
void bp_conv_backward_data(const bp_geom *g, const float *w, const float *dy, const bp_image *dx_img, float *dx,
                           bool overwrite, float *col, const bp_gemm_ctx *gemm, const bp_epilogue *e);
/* dW_g = beta*dW_g + dy_g * im2col(x_g)^T; dy packed, dW packed [out_c][k]. */
void bp_conv_backward_weights(const bp_geom *g, const float *x, const bp_image *x_img, const float *dy, float *dw,
                              float beta, float *col, const bp_gemm_ctx *gemm);

#endif
