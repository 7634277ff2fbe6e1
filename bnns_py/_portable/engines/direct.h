/* bnns-py portable backend: the direct convolution engine (direct.c).

   It runs the forward pass of a standard convolution S and S's backward-data pass (which is also
   the forward pass of a transposed layer) without an im2col matrix or a BLAS call: the input is
   copied once into zero-bordered "phase planes" and register-tiled kernels read it in place. A
   plan is made once per filter and pass; the im2col engine (conv_engine.c) keeps the passes a
   plan refuses (depthwise and one-channel groups, tiny layers, very large geometries). */
#ifndef BNNS_PORTABLE_DIRECT_H
#define BNNS_PORTABLE_DIRECT_H

#include "internal.h"

typedef struct bp_direct bp_direct;

/* Where S's weights W(o, i, t) are: base + group*g + o*out + i*in + t for S's output channel o
   and input channel i within group g, and tap t = ky*kw + kx (taps contiguous, not flipped). S's
   canonical matrix [out_c][in_cg*taps] is one such view; a caller's OIHW array is another, for
   standard and transposed layers alike. */
typedef struct {
    const float *base;
    size_t group, out, in;
} bp_weights_view;

/* A planned pass and its weights: packed once by bp_direct_pack (a filter that owns its weights;
   the view is then its canonical copy, base NULL where there is none, for kernels that read the
   steps in order), or else a view, which the run packs itself, into `pack_buffer`
   (bp_direct_weight_floats) or chunk by chunk as the kernels need them. */
typedef struct bp_direct_pass {
    const bp_direct *plan;
    const float *packed;
    bp_weights_view weights;
    float *pack_buffer;
} bp_direct_pass;

/* What the environment variable BNNS_PY_PORTABLE_ENGINE asks for (plan/plan.c; read when a filter is made):
   "auto", "rows" / "pixels" / "flat-pixels" (the direct engine's kernel for forward and
   backward-data passes, "pixels" with tiles within rows, "flat-pixels" over flat positions; it
   then also takes the layers it leaves to im2col by default: tiny ones and 1x1) or "im2col" (no
   direct engine) or "winograd" (the Winograd forward pass wherever it can run, the other passes
   as in "auto") or "pointwise" (as "auto", but its own kernel also runs the backward-data pass of
   every 1x1, stride-1, unpadded layer, not only of those where it pays; the forward pass of those
   layers it runs also under "auto") or "panel" (the panel path for the forward pass of every
   layer but 1x1 whose panel fits, any batch; else as "auto"); any other than "auto",
   "winograd" and "pointwise" turns the Winograd pass off, "rows" / "pixels" / "flat-pixels" /
   "im2col" the pointwise kernel, and any but "auto" and "panel" the panel path. */
enum {
    BP_ENGINE_AUTO,
    BP_ENGINE_ROWS,
    BP_ENGINE_PIXELS,
    BP_ENGINE_FLAT_PIXELS,
    BP_ENGINE_IM2COL,
    BP_ENGINE_WINOGRAD,
    BP_ENGINE_POINTWISE,
    BP_ENGINE_PANEL
};
int bp_engine_override(void);

/* Plan S's forward pass (backward = false) or its backward-data pass (backward = true); NULL when
   the direct engine does not take it or memory runs out. */
bp_direct *bp_direct_plan(const bp_geom *g, bool backward, const bp_allocator *a);
void bp_direct_destroy(bp_direct *d, const bp_allocator *a);

/* Scratch floats one worker needs, and floats of the packed weights (every group). */
size_t bp_direct_scratch_floats(const bp_direct *d);
/* Scratch floats one worker needs when the run packs the weights itself (a view). */
size_t bp_direct_view_scratch_floats(const bp_direct *d);
size_t bp_direct_weight_floats(const bp_direct *d);
/* Which kernel the plan runs for calls of `batch` images ("direct rows", "direct row vectors",
   "direct pixels", "direct flat pixels", "direct pointwise" or "direct panel"), for tests and
   benchmarks. */
const char *bp_direct_kind(const bp_direct *d, size_t batch);
/* Whether S's weight gradient runs on the plan's planes and kernel: not for a pointwise plan, whose
   1x1 images the im2col engine's GEMM reads in place (10-20 % faster for ResNet's and MobileNet's
   1x1 layers, forward + gradients, 1 thread). */
bool bp_direct_runs_weight_gradient(const bp_direct *d);
/* Whether the plan runs its pass on the pointwise kernel, which only stores rows of consecutive
   values: calls that add to their output, or write it with gaps between a row's values, run on
   the plan's planes and kernel instead. */
bool bp_direct_pointwise(const bp_direct *d);

/* Pack S's weights for the plan's kernels. */
void bp_direct_pack(const bp_direct *d, const bp_weights_view *w, float *packed, int threads);

/* Forward: dst (packed S output images, dst_bs apart) = S(src). Backward data: dst (S input images
   through dst_img's strides) = or, with accumulate, += S^T(src), src being packed S output
   gradients. e (may be NULL) adds the bias and applies an elementwise activation to each finished
   value (after the accumulation). */
void bp_direct_run(const bp_direct_pass *pass, size_t batch, const bp_image *src_img, const float *src,
                   size_t src_bs, const bp_image *dst_img, float *dst, size_t dst_bs, bool accumulate,
                   const bp_epilogue *e, const bp_scratch *s, int threads);

/* The weight gradient on the forward plan `d`'s planes: dW (S's canonical [out_c][k], every
   group) = or, with add, += the sum over a batch of dy x patches of x, where x are S input images
   (x_img strides, x_bs apart) and dy packed S output gradients (dy_bs apart). */
void bp_direct_weight_gradient(const bp_direct *d, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                               const float *dy, size_t dy_bs, float *dw, bool add, const bp_scratch *s, int threads);
/* Scratch floats one worker needs for it. */
size_t bp_direct_weights_scratch_floats(const bp_direct *d);

/* The weight gradient of a transposed layer (engines/transposed_weights.c) whose S has kernel rows
   of 4 to 7 undilated taps and one group, read from the images in place: dW (S's canonical) = or,
   with add, += the sum over a batch of x x patches of dz, dz S input images (dz_img strides, dz_bs
   apart: T's output gradient) and x packed S output gradients (x_bs apart: T's input). False
   (nothing done) for other layers or when a worker's scratch is short of
   bp_transposed_weights_scratch_floats(g, workers) (0: not taken). */
bool bp_transposed_weight_gradient(const bp_geom *g, size_t batch, const bp_image *dz_img, const float *dz,
                                   size_t dz_bs, const float *x, size_t x_bs, float *dw, bool add, const bp_scratch *s,
                                   int threads);
size_t bp_transposed_weights_scratch_floats(const bp_geom *g, int workers);

#endif
