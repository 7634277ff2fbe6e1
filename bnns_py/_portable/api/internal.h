/* bnns-py portable backend: internal declarations shared by its C files. */
#ifndef BNNS_PORTABLE_INTERNAL_H
#define BNNS_PORTABLE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tier.h" /* first: renames the per-tier functions declared below */

#include "bnns.h"
#include "bnns_portable.h"
#include "gemm.h"

#define BNNS_PORTABLE_VERSION "0.1.0"
#define BNNS_PORTABLE_ALIGNMENT 64

/* ---- errors (error.c) ---- */
void bp_set_error(const char *format, ...);
void bp_clear_error(void);

/* ---- the vector tier (runtime/dispatch.c) ---- */
/* Why no filter can be created in this process (BNNS_PY_ISA names a tier the CPU or the build
   lacks), or NULL when the selected tier runs. */
const char *bp_tier_refusal(void);

/* ---- checked size arithmetic ---- */
static inline bool bp_mul(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool bp_add(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }

/* ---- small size helpers ---- */
static inline size_t bp_ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }
static inline size_t bp_round_up(size_t a, size_t b) { return bp_ceil_div(a, b) * b; }
static inline size_t bp_min(size_t a, size_t b) { return a < b ? a : b; }
static inline size_t bp_max(size_t a, size_t b) { return a > b ? a : b; }

/* Index range [lo, hi) of output positions o whose tap position o*stride + tap - pad lies in [0, n). */
static inline void bp_valid_range(size_t n_out, size_t n_in, size_t stride, size_t tap, size_t pad, size_t *lo,
                                  size_t *hi) {
    /* need o*stride + tap >= pad and o*stride + tap - pad < n_in */
    size_t first = 0;
    if (tap < pad) first = (pad - tap) / stride + ((pad - tap) % stride != 0); /* ceiling, overflow-free */
    size_t last = 0;                                                           /* exclusive */
    if (n_in + pad > tap) {
        last = (n_in + pad - tap - 1) / stride + 1;
        if (last > n_out) last = n_out;
    }
    *lo = first < last ? first : last;
    *hi = last;
}

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

/* The operands of a weight gradient over a batch (the engines' weight-gradient jobs): image b of x,
   laid out as *x_img, at x + b * x_bs, its output gradient (packed) at dy + b * dy_bs, and
   dw = beta * dw + the sum over the batch. */
typedef struct {
    size_t batch;
    const bp_image *x_img;
    const float *x;
    size_t x_bs;
    const float *dy;
    size_t dy_bs;
    float *dw;
    float beta;
} bp_weight_gradient_operands;

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
    size_t padded_floats;         /* small stride-1 images: zero-padded input planes for im2col (0: none) */
    size_t padded_offset;         /* where they sit in a worker's scratch */
} bp_geom;

/* Plan a geometry's column blocks (block_rows) and the scratch floats each worker needs. */
bool bp_geom_plan(bp_geom *g, size_t *scratch_floats);

/* Per-worker scratch: worker i uses base + i*stride floats. */
typedef struct {
    float *base;
    size_t stride;
} bp_scratch;

/* What happens to each finished run of output values of one channel: add the bias, then apply
   an elementwise activation. Either may be absent (NULL). */
typedef struct {
    const float *bias;
    size_t bias_stride;
    const BNNSActivation *act;
} bp_epilogue;

void bp_epilogue_run(const bp_epilogue *e, size_t c, float *v, size_t n);

/* The bounds of a clamping activation (ReLU, ReLU6, Clamp; none or Identity: the whole line),
   which kernels apply in registers; false (and the whole line) for other activations. */
bool bp_clamp_bounds(const BNNSActivation *act, float *lo, float *hi);

/* Fully-connected layers (engines/fully_connected.c): y (batch rows ldy apart) = x (batch rows of
   k values, ldx apart) W^T plus e's bias, then e's activation (any, channelwise too) on each row;
   W is `panels`, its packed form, when not NULL (filters that own their weights, any batch), else
   n rows of k values, ldw apart, read in place (client weights, batches up to
   bp_fc_client_batch_max(): every batch with 16-lane vectors and 32 registers, 16 on the other
   tiers, where a BLAS GEMM is quicker beyond), with `inputs`, bp_fc_inputs_floats(batch, k)
   floats, for the inputs packed (NULL: the in-place tiles take every row). */
void bp_fc_forward(const float *w, size_t ldw, const float *panels, float *inputs, size_t n, size_t k, size_t batch,
                   const float *x, size_t ldx, float *y, size_t ldy, const bp_epilogue *e, int threads);
size_t bp_fc_client_batch_max(void);
size_t bp_fc_inputs_floats(size_t batch, size_t k);
/* The packed form of W for bp_fc_forward (filters that own their weights): its floats, W (n rows
   of k values, ldw apart) packed into `panels`, and `panels` unpacked into W (n x k, packed). */
size_t bp_fc_packed_floats(size_t n, size_t k);
void bp_fc_pack(const float *w, size_t ldw, size_t n, size_t k, float *panels);
void bp_fc_unpack(const float *panels, size_t n, size_t k, float *w);

/* Kernels of the engine that the kernel testers (tests/kernels) call directly (conv_engine.c
   describes each). im2col of column rows [r0, r1) and output rows [oy0, oy1): */
void bp_im2col_block(const bp_geom *g, const bp_image *img, const float *x, size_t c0, size_t r0, size_t r1,
                     size_t oy0, size_t oy1, float *col);
/* its adjoint, added into dx for channels [ci0, ci1) (dw_w != NULL: depthwise, col is dy): */
void bp_col2im_block(const bp_geom *g, const bp_image *img, float *dx, size_t c0, size_t ci0, size_t ci1,
                     const float *col, size_t oy0, size_t oy1, const float *dw_w);
/* every depthwise output plane of an image (y packed) plus its bias, then act (may be NULL;
   scratch of bp_geom_plan's size; depthwise.c): */
void bp_depthwise_image(const bp_geom *g, const bp_image *img, const float *x, const float *w, const float *bias,
                        const BNNSActivation *act, float *y, float *scratch);
/* the tiny-layer kernel on group 0 of an image, one output plane or two (pairs): */
void bp_tiny_planes(const bp_geom *g, const bp_image *img, const float *x, float *pad, const float *wo,
                    const float *bias, float *out, bool pairs);

/* Tiny layers (rows of at most 8 outputs, little work): the forward pass runs straight from
   zero-padded planes on the calling thread, not on the direct engine. */
bool bp_conv_small(const bp_geom *g);

/* Which kernels of this engine run S's forward pass (backward_data = false) or its backward-data
   pass when the direct engine does not: "depthwise" (one input channel per group, and for backward
   data a stride the depthwise kernels take), "tiny" (forward of a tiny layer) or "im2col". */
const char *bp_conv_engine(const bp_geom *g, bool backward_data);

/* Small images go through zero-padded copies of their planes (channels c0 .. of x), so that nothing
   downstream has bounds to work out: ph rows of pw columns (the rows and columns the taps reach),
   each row split into its sx column phases of pq columns, padded column q*sx + px of row py of
   channel ci at ((ci*ph + py)*sx + px)*pq + q, so that the values a tap reads for an output row are
   consecutive. Stride 1 has one phase: plain rows of pw values. */
typedef struct {
    size_t ph, pw, pq;
} bp_padded_shape;

static inline bp_padded_shape bp_padded_shape_of(const bp_geom *g) {
    bp_padded_shape p;
    p.ph = (g->out_h - 1) * g->sy + (g->kh - 1) * g->dy + 1;
    p.pw = (g->out_w - 1) * g->sx + (g->kw - 1) * g->dx + 1;
    p.pq = bp_ceil_div(p.pw, g->sx);
    return p;
}

/* The padded planes of a stride-1 layer; im2col of the whole image from padded planes of any
   stride: plain copies of out_w values, the column of each reduction step (channel, tap) a row of
   out_h*out_w values, rows ld apart. */
void bp_fill_padded_planes(const bp_geom *g, const bp_image *img, const float *x, size_t c0, float *pad);
void bp_columns_from_padded(const bp_geom *g, const float *pad, float *col, size_t ld);

struct bp_direct;      /* direct.h: a plan of the direct engine */
struct bp_direct_pass; /* direct.h: a planned pass of the direct engine with its packed weights */

/* y = conv(x) for a batch: y packed (out_c x out_h*out_w per image, images y_bs apart), x through
   x_img's strides (images x_bs apart); e may be NULL. With `direct` (may be NULL) the direct
   engine runs the pass, else im2col + GEMM and the depthwise kernels; w is the canonical form. */
void bp_conv_forward(const bp_geom *g, const float *w, size_t batch, const bp_image *x_img, const float *x,
                     size_t x_bs, float *y, size_t y_bs, const bp_epilogue *e, const bp_scratch *s,
                     const bp_gemm_ctx *ctx, const struct bp_direct_pass *direct);
/* dx (strided) = or += col2im(W^T dy) for a batch; dy packed. The epilogue (may be NULL) runs on
   each finished plane when dx_img is packed. `direct` as for bp_conv_forward. */
void bp_conv_backward_data(const bp_geom *g, const float *w, size_t batch, const float *dy, size_t dy_bs,
                           const bp_image *dx_img, float *dx, size_t dx_bs, bool overwrite, const bp_epilogue *e,
                           const bp_scratch *s, const bp_gemm_ctx *ctx, const struct bp_direct_pass *direct);
/* dW = beta*dW + sum over the batch of dy * im2col(x)^T; dy packed, dW packed [out_c][k]; beta 0
   or 1. With `direct` (S's forward plan, may be NULL) on the direct engine's planes. */
void bp_conv_backward_weights(const bp_geom *g, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                              const float *dy, size_t dy_bs, float *dw, float beta, const bp_scratch *s,
                              const bp_gemm_ctx *ctx, const struct bp_direct *direct);

#endif
