/* bnns-py portable backend: the direct engine's plan, shared by its C files (direct.c: planning,
   weight packing, forward and backward-data passes; direct_weights.c: the weight gradient). */
#ifndef BNNS_PORTABLE_DIRECT_PLAN_H
#define BNNS_PORTABLE_DIRECT_PLAN_H

#include <stdint.h>

#include "direct.h"
#include "simd.h"

enum { KIND_ROWS, KIND_PIXELS };
enum {
    MAX_PHASES = 16,          /* stride_y * stride_x of the passes taken */
    MAX_TAPS = 4096,          /* kernel taps (kh * kw) of the passes taken */
    MAX_DIM = 1 << 20,        /* sizes, strides, pads, dilations taken (keeps offsets in range) */
    PLANE_TARGET = 1 << 18,   /* floats of phase planes per worker: about 1 MiB, a core's L2 */
    PLANE_LIMIT = 1 << 24,    /* beyond this the im2col engine's smaller blocks are better */
    MIN_BAND_ROWS = 4,
    K_CHUNK = 1024,           /* reduction steps of packed weights the pixels kernel takes at a time */
    NARROW_TILE_CHUNK = 128,  /* the same for backward plans' tiles of 8 pixels x 2 vectors (see direct.c) */
    TILE_RESULTS = 1 << 15,   /* floats of a band's pixels-kernel results (128 KiB) */
    IMAGE_GROUP_TARGET = 1 << 19, /* floats of planes and results an image group holds (2 MiB) */
    IMAGE_GROUP_MAX = 8,
    GROUP_WEIGHTS_FACTOR = 4, /* image groups when the weights exceed this many times their planes */
    STREAM_FLOATS = 1 << 22,  /* outputs of a call from which they are streamed past the caches (16 MiB) */
    PIXELS_STORE_STEPS = 16,  /* the pixels kernel's transposed store of an output, in its reduction steps */
    VECTORS_TILE_STEPS = BP_VREGS >= 32 ? 8 : 16, /* a row-vector tile's setup and stores, likewise */
    ROWS_TILE_STEPS = 39      /* a forward rows tile's copy into the output, likewise */
};

/* Register tiles (direct.c, direct_pointwise.c). Rows and pointwise kernels: MR channels x NV
   vectors; pixels kernel: NC pixels x MV vectors. The accumulators fill most of the register
   file, leaving room for the source / weight vectors. */
#if BP_VREGS >= 32
#define POINTWISE_MR_MAX 8
#define POINTWISE_DOTS_MR_MAX 4
#define ROWS_MR_MAX 8
#define PIX_MV_MAX 4
#define PIX_NC_MAX 24
#else
#define POINTWISE_MR_MAX 4
#define POINTWISE_DOTS_MR_MAX 2
#define ROWS_MR_MAX 4
#define PIX_MV_MAX 2
#define PIX_NC_MAX 12
#endif
/* Pointwise kernel: MR channels x NV vectors of pixels (the most of each); its dot products: MR
   channels x up to POINTWISE_DOTS_MAX pixels. */
#define POINTWISE_NV_MAX 3
#define POINTWISE_DOTS_MAX 4
/* the most output channels a block holds (bw) */
#define BP_DIRECT_BW_MAX (PIX_MV_MAX * BP_VL > ROWS_MR_MAX ? PIX_MV_MAX * BP_VL : ROWS_MR_MAX)

typedef struct {
    size_t taps;        /* taps landing on this phase */
    size_t oh, ow;      /* its output grid */
    size_t y0, x0;      /* destination row / column of its output (0, 0) */
    size_t k;           /* reduction length: channels x taps */
    size_t wofs;        /* its packed weights within a group's */
    int32_t *off;       /* source offset of each reduction step k = c*taps + t */
    int32_t *tap;       /* S's tap (ky*kw + kx) of each t */
} phase_t;

struct bp_direct {
    bool backward;
    int kind;
    size_t groups, c, m;          /* per group: channels summed over, output channels */
    size_t s_k, s_taps;           /* S's GEMM depth and taps (weight packing) */
    size_t bw;                    /* output channels per block: MR (rows) or MV*VL (pixels) */
    size_t tile;                  /* rows: NV*VL flat positions; pixels: NC pixels */
    size_t chunk;                 /* pixels: reduction steps of packed weights taken at a time */
    bool flat;                    /* pixels: tiles over flat positions, not within rows */
    bool vectors;                 /* rows, forward: tiles of whole vectors of output rows (none across
                                     a row's end), stored straight into the output */
    bool pointwise;               /* 1x1 pass run by the pointwise kernel on the source itself (a
                                     backward plan's reading W transposed; the planes and kernel
                                     serve the weight gradient and accumulating calls) */
    size_t tb_row;                /* pixels: tile results between a band's rows (pixels) */
    size_t ystep, xstep;          /* destination step between output pixels */
    size_t ss_y, ss_x, sphases;   /* source step per output pixel, source phases */
    ptrdiff_t ay_min, c0;         /* source row of plane row 0 (band 0, phase 0) and column of column 0 */
    size_t src_h, src_w;
    size_t wq, qy_max, band_rows, oh_max;
    size_t prefix, slack;         /* zeros before a plane's origin and after its rows */
    size_t plane;                 /* floats per (channel, source phase) */
    size_t planes;                /* floats of one task's planes */
    size_t kmax;
    size_t nphases;
    phase_t ph[MAX_PHASES];
    int32_t *tap_phase, *tap_index; /* each S tap's phase and position there (every tap is in one) */
    size_t packed_group;          /* packed weight floats per group */
    size_t tb_offset, chunk_offset, run_offset, scratch; /* worker scratch layout */
    size_t pair_offset;           /* backward pixels plans with sx = 2: the odd column phase's tile
                                     results, emitted with the even one's (0: none) */
    size_t image_group;           /* pixels, weights from a view: images a task takes (1: one) */
    size_t group_offset, group_stride, group_scratch; /* their planes and results, images 1 .. */
    bool panel;                   /* forward: the panel path runs calls of up to panel_batch images
                                     whose weights are a dense view */
    size_t panel_batch;
    bp_geom geom;                 /* the layer (the panel path's im2col) */
};

#define BP_INLINE static inline __attribute__((always_inline))

/* Phase planes of output rows [r0, r0 + n), source channels [c0, c1) of the group whose channel
   0 is x (channel c0 at planes' first plane): plane row i of source phase (py, px) holds source
   row (r0 + i)*ss_y + py + ay_min, its column j source column j*ss_x + px + c0 of the plan. */
void bp_direct_fill_planes(const bp_direct *d, const bp_image *img, const float *x, size_t c0, size_t c1, size_t r0,
                           size_t n, float *planes);

/* The pixels kernel: NC consecutive source values (for step i at src + off[i]) broadcast against
   MV vectors of w per step; tb (NC rows ldt floats apart, MV vectors each) = or, with add, +=
   the products. (mv, nc) must be a pair of the pixel menu. */
void bp_direct_pixels_tile(size_t mv, size_t nc, const float *src, const int32_t *off, size_t k, const float *w,
                           float *tb, size_t ldt, bool add);

/* dst[k*ldd + r] = src[r*lds + k] for r < rows, k < n: weight rows (output channels, their steps
   consecutive) transposed into packed steps (kernels/direct_pack.c). */
void bp_direct_transpose_rows(const float *src, size_t lds, size_t rows, size_t n, float *dst, size_t ldd);

/* The pointwise kernel: y (mr rows ys apart) = min(hi, max(lo, W x + bias)) for mr output
   channels (W(r, i) at w[r*wr + i*wi], bias[r]) and nv whole vectors of pixels of x (k rows xs
   apart), of which `last` <= BP_VL lanes of the last vector are stored. mr a power of two
   <= POINTWISE_MR_MAX, nv <= POINTWISE_NV_MAX. */
void bp_direct_pointwise_tile(size_t mr, size_t nv, const float *x, size_t xs, size_t k, const float *w, size_t wr,
                              size_t wi, const float *bias, float lo, float hi, float *y, size_t ys, size_t last);
/* The same, each step i of the reduction also prefetching (into L2) `lines` cache lines from
   ahead + i*xs: the rows of pixels the caller reads next, whose far-apart rows the hardware's
   prefetchers do not follow. */
void bp_direct_pointwise_tile_ahead(size_t mr, size_t nv, const float *x, size_t xs, size_t k, const float *w,
                                    size_t wr, size_t wi, const float *bias, float lo, float hi, float *y, size_t ys,
                                    size_t last, const float *ahead, size_t lines);

/* Its dot products: y(r, p) (rows ys apart) = min(hi, max(lo, bias[r] + sum_i W(r, i) xt(p, i)))
   for mr channels (W's rows wr apart, steps consecutive) and np pixels (xt: k values each, ldx
   apart). mr a power of two <= POINTWISE_DOTS_MR_MAX, np <= POINTWISE_DOTS_MAX. */
void bp_direct_pointwise_dots(size_t mr, size_t np, const float *xt, size_t ldx, size_t k, const float *w, size_t wr,
                              const float *bias, float lo, float hi, float *y, size_t ys);

/* bp_direct_pointwise_tile over nv whole vectors (W's steps consecutive) and, in the same pass over
   W, bp_direct_pointwise_dots for the np <= POINTWISE_DOTS_MAX pixels after them (xt, ldx),
   written at y + nv*BP_VL: the same sums as the two calls. */
void bp_direct_pointwise_tile_dots(size_t mr, size_t nv, size_t np, const float *x, size_t xs, size_t k,
                                   const float *w, size_t wr, const float *xt, size_t ldx, const float *bias, float lo,
                                   float hi, float *y, size_t ys);

/* p[2i] = v[i] + bias for i < n: a phase of an output with stride 2 (kernels/direct_store_*.c). */
void bp_direct_store_every_other(float *p, const float *v, size_t n, float bias);
/* even[i] = src[2i] and odd[i] = src[2i + 1] for the n values of src (n odd or even), nothing past
   them read or written: a row's two column phases of stride 2 (kernels/direct_store_generic.c). */
void bp_direct_split_pairs(const float *src, size_t n, float *even, float *odd);
/* dst[c * dst_stride + i] = min(hi, max(lo, res[i * ld + c] + bias[c])) for c < channels (a multiple
   of 8), i < n: results of n pixels transposed into rows of the output, biased and clamped, 8 x 8 at
   a time (reading up to 7 pixels past n); kernels/direct_store_generic.c. */
void bp_direct_store_transposed(const float *res, size_t ld, size_t channels, size_t n, const float *bias, float lo,
                                float hi, float *dst, size_t dst_stride);

/* The floats of a worker's scratch a pointwise plan of c channels and rows of ow outputs needs. */
size_t bp_direct_pointwise_scratch_floats(size_t c, size_t ow);

/* A forward pointwise plan's run (direct_pointwise.c): bp_direct_run's arguments, no accumulation. */
void bp_direct_pointwise_run(const bp_direct_pass *pass, size_t batch, const bp_image *src_img, const float *src,
                             size_t src_bs, const bp_image *dst_img, float *dst, size_t dst_bs, const bp_epilogue *e,
                             const bp_scratch *s, int threads);

/* The panel path (direct_panel.c): the forward pass of small images as the pointwise kernel on
   each image's im2col panel, W read in place. Whether a forward plan of S takes it (forced: any
   layer but 1x1 whose scratch is not too large; else few pixels and a long reduction), the
   scratch floats a worker needs for it, whether a call can run on it (weights a dense view,
   output rows packed, few enough images), and the run (bp_direct_run's arguments, no accumulation). */
bool bp_direct_panel_takes(const bp_geom *g, bool forced);
size_t bp_direct_panel_scratch_floats(const bp_geom *g);
bool bp_direct_panel_runs(const bp_direct_pass *pass, size_t batch, const bp_image *dst_img);
void bp_direct_panel_run(const bp_direct_pass *pass, size_t batch, const bp_image *src_img, const float *src,
                         size_t src_bs, const bp_image *dst_img, float *dst, size_t dst_bs, const bp_epilogue *e,
                         const bp_scratch *s, int threads);

#endif
