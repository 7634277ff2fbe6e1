/* bnns-py portable backend: Winograd F(2x2, 3x3) and F(4x4, 3x3) for the forward pass of dense 3x3
   layers (and F(3x3, 2x2) on 4x4 tiles for their weight gradient)
   (stride 1, one group; a dilation d splits the output into d x d phases, every d-th row and
   column, each an undilated convolution of every d-th input row and column).

   Each 4x4 tile of the input (2x2 outputs) and each 3x3 kernel are transformed so that the sum over
   input channels becomes 16 independent matrix products, one per position of the transformed
   4x4 tile: M[p] (out_c x tiles) = U[p] (out_c x in_c) * V[p] (in_c x tiles), 2.25 times fewer
   multiply-adds than the direct sum, on the direct engine's pixels kernel; the output transform
   turns each tile's 16 values back into its 2x2 outputs. F(4x4, 3x3) does the same on 6x6 tiles
   (4x4 outputs, 36 products: 4 times fewer), for wide layers with enough tiles per call. */
#ifndef BNNS_PORTABLE_WINOGRAD_H
#define BNNS_PORTABLE_WINOGRAD_H

#include "gemm.h"
#include "internal.h"

typedef struct {
    size_t m;              /* outputs per tile side: F(m x m, 3x3), m 2 or 4 */
    size_t d;              /* dilation: d x d output phases, each an undilated convolution */
    size_t th, tw;         /* tile rows and columns of an image's (largest) output phase */
    size_t rows;           /* tile rows a task takes at most (rows * tw tiles) */
    size_t scratch_floats; /* per worker */
    size_t min_batch;      /* calls of fewer images run on the direct engine instead */
    bool client;           /* the weights are the caller's: tasks may make their channel blocks' U,
                              for which each worker's scratch has room */
} bp_winograd;

/* Whether the Winograd pass takes this geometry (forced: whenever it can) and its plan. tile: m
   (2 or 4) as asked for (BNNS_PY_WINOGRAD_TILE), 0 to pick it by the shape. client: the weights are
   read from the caller at every call (else transformed once, into a U the filter keeps). Unforced,
   it takes layers of at least 16 channels in and out; the planning (plan.c) decides which passes
   run there. */
bool bp_winograd_plan(const bp_geom *g, bool forced, size_t tile, bool client, bp_winograd *plan);

/* Output channels of one block of the products' tiles (WINO_MV vectors: 64 on AVX-512). */
size_t bp_winograd_product_channels(void);

/* Floats of the transformed weights U ((m + 2)^2 x out_c x in_c, out_c rounded up to whole blocks). */
size_t bp_winograd_weight_floats(const bp_winograd *plan, const bp_geom *g);

/* U from the canonical weights w ([out_c][in_c * 9]), with the workers' scratch. adjoint: g is the
   adjoint of a layer S (the input gradient of S as a convolution of its output gradient) and w is
   S's canonical weights ([in_c][out_c * 9] of g), each kernel read transposed and flipped. */
void bp_winograd_weights(const bp_winograd *plan, const bp_geom *g, const float *w, float *u, const bp_scratch *s,
                         int threads, bool adjoint);

/* The adjoint of a standard layer S of unit stride: dx = conv(dy) with S's kernels flipped and
   their channels swapped, padded (k - 1) * d - pad before. False when S's leading padding exceeds
   that (the adjoint would need a negative one). */
bool bp_winograd_adjoint(const bp_geom *g, bp_geom *a);

/* y = conv(x) for a batch, as bp_conv_forward: y packed, x through x_img's strides. With w (not
   NULL) u is first made from w as bp_winograd_weights does (adjoint alike), in the same run. */
void bp_winograd_forward(const bp_winograd *plan, const bp_geom *g, float *u, const float *w, bool adjoint,
                         size_t batch, const bp_image *x_img, const float *x, size_t x_bs, float *y, size_t y_bs,
                         const bp_epilogue *e, const bp_scratch *s, int threads);

/* The weight gradient of a layer whose forward pass plan is `plan`, on the same tiles:
   dw (canonical, [out_c][in_c * 9]) set (beta 0) or beta * dw added, from x through x_img's strides
   and a packed dy. work: bp_winograd_gradient_floats floats for up to `workers` workers (as many
   as the filter's scratch areas). */
size_t bp_winograd_gradient_floats(const bp_geom *g, const bp_winograd *plan, int workers);
/* Whether a call of `batch` images on `threads` threads is quicker there than on the direct
   engine (measured: enough tiles per worker). */
bool bp_winograd_gradient_pays(const bp_geom *g, const bp_winograd *plan, size_t batch, int threads);
void bp_winograd_weight_gradient(const bp_winograd *plan, const bp_geom *g, size_t batch, const bp_image *x_img,
                                 const float *x, size_t x_bs, const float *dy, size_t dy_bs, float *dw, float beta,
                                 float *work, const bp_scratch *s, const bp_gemm_ctx *ctx);

/* The transforms of one tile row, which the kernel tester (tests/kernels/winograd.c) also calls
   (winograd.c and kernels/winograd_rows.c describe them): the input rows under tile row ty of output phase (a, b) split into
   even (e) and odd (o) columns, rows ld floats apart; their transforms into V (planes vp apart);
   the output transform of M (planes mp apart, WINO_BW channels per tile) into two output rows. */
void bp_winograd_tile_row_inputs(const bp_geom *g, size_t tw, size_t ld, const bp_image *img, const float *plane,
                                 size_t ty, size_t a, size_t b, float *e, float *o);
void bp_winograd_tile_row_transform(size_t tw, size_t ld, const float *e, const float *o, float *v, size_t vp);
void bp_winograd_tile_row_outputs(size_t tw, const float *m, size_t mp, size_t vectors, float *rows);
/* And the weight gradient's: a tile row's output gradients (two rows, split as the inputs are)
   into W, and M's sums (planes mp apart) into n kernels of dw. */
void bp_winograd_tile_row_gradient_transform(size_t tw, size_t ld, const float *e, const float *o, float *v,
                                             size_t vp);
void bp_winograd_gradient_outputs(const float *m, size_t mp, size_t n, float *dw, float beta);

#endif
