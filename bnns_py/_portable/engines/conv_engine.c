/* The convolution engine: im2col + GEMM forward, GEMM + col2im backward-data and GEMM weight
   gradient, and tiny layers (kernels/tiny_planes.c), all on the geometry of a standard convolution S (see
   bp_geom in internal.h); layers with one input channel per group go to the depthwise engine
   (depthwise.c).

   Threading: each entry point cuts its whole batch into independent tasks (image x group x
   column block x output-channel chunk, or x input-channel chunk) and hands contiguous runs of
   tasks to the workers of the pool (parallel.c). A worker does its im2col, its single-threaded
   GEMM and its epilogue on its own cache-sized scratch, so nothing waits between the steps. */
#include <string.h>

#include "conv_kernels.h"
#include "depthwise.h"
#include "direct.h"
#include "internal.h"
#include "parallel.h"
#include "simd.h"

static size_t out_pixels(const bp_geom *g) { return g->out_h * g->out_w; }

/* Short runs are the common case (rows of small images): copy and clear them inline rather than
   through libc calls. GCC would turn the tail loops back into memcpy / memset calls. */
#if defined(__GNUC__) && !defined(__clang__)
#define BP_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define BP_NO_LIBCALLS
#endif

static inline BP_NO_LIBCALLS void copy_run(float *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) memcpy(dst + i, src + i, 8 * sizeof(float));
    for (; i < n; i++) dst[i] = src[i];
}

static inline BP_NO_LIBCALLS void zero_run(float *dst, size_t n) {
    static const float zeros[8];
    size_t i = 0;
    for (; i + 8 <= n; i += 8) memcpy(dst + i, zeros, 8 * sizeof(float));
    for (; i < n; i++) dst[i] = 0.0f;
}

/* ---- plan: column blocks and scratch --------------------------------------------------------- */

enum {
    COL_TARGET_FLOATS = 1 << 17, /* a column block of about 512 KiB stays in a core's L2 / near L3 */
    MIN_BLOCK_PIXELS = 256,      /* but keep GEMMs wide enough to amortize packing the weights */
    MIN_SPLIT_PIXELS = 48,       /* smallest block worth giving its own thread */
    MIN_CHUNK_CHANNELS = 8       /* smallest output-channel chunk worth giving its own thread */
};

bool bp_geom_plan(bp_geom *g, size_t *scratch_floats) {
    size_t rows = g->out_h;
    size_t want = COL_TARGET_FLOATS / (g->k ? g->k : 1);
    if (want < MIN_BLOCK_PIXELS) want = MIN_BLOCK_PIXELS;
    size_t r = want / g->out_w;
    if (r < 1) r = 1;
    if (r < rows) rows = bp_ceil_div(g->out_h, bp_ceil_div(g->out_h, r)); /* equal blocks */
    g->block_rows = rows;
    size_t col, t;
    if (!bp_mul(g->k, rows, &t) || !bp_mul(t, g->out_w, &col)) return false;
    if (bp_depthwise(g)) {
        if (g->out_cg == 1) col = 0; /* the depthwise kernels need no columns */
        size_t plane = bp_depthwise_scratch_floats(g);
        if (plane > col) col = plane;
    }
    g->padded_floats = 0;
    g->padded_offset = bp_ceil_div(col, 16) * 16;
    if (!bp_depthwise(g) && g->sx == 1 && g->sy == 1 && rows == g->out_h && g->kh * g->kw > 1) {
        size_t padded = g->in_cg * (g->out_h + (g->kh - 1) * g->dy) * (g->out_w + (g->kw - 1) * g->dx);
        if (padded <= COL_TARGET_FLOATS) g->padded_floats = padded; /* small: no overflow */
    }
    if (!bp_add(g->padded_offset + g->padded_floats, 64, scratch_floats)) return false;
    *scratch_floats = bp_ceil_div(*scratch_floats, 16) * 16;
    return true;
}

BP_NO_LIBCALLS void bp_fill_padded_planes(const bp_geom *g, const bp_image *img, const float *x, size_t c0,
                                              float *pad) {
    if (bp_fill_short_padded_rows(g, img, x, c0, pad)) return;
    size_t ph = g->out_h + (g->kh - 1) * g->dy, pw = g->out_w + (g->kw - 1) * g->dx;
    size_t x0 = bp_min(g->pl, pw), x1 = bp_min(g->pl + g->in_w, pw), n = x1 > x0 ? x1 - x0 : 0;
    if (img->sx == 1) { /* all zeros in whole vectors, then each image row in whole vectors */
        size_t all = g->in_cg * ph * pw, y1 = bp_min(g->pt + g->in_h, ph);
        for (size_t i = 0; i < all; i += BP_VL) bp_vstore_part(pad + i, bp_vzero(), all - i);
        for (size_t ci = 0; ci < g->in_cg && n > 0; ci++)
            for (size_t py = g->pt; py < y1; py++) {
                const float *src = x + (c0 + ci) * img->sc + (py - g->pt) * img->sy;
                float *row = pad + (ci * ph + py) * pw + x0;
                for (size_t i = 0; i < n; i += BP_VL) bp_vstore_part(row + i, bp_vload_part(src + i, n - i), n - i);
            }
        return;
    }
    for (size_t ci = 0; ci < g->in_cg; ci++) {
        const float *plane = x + (c0 + ci) * img->sc;
        float *p = pad + ci * ph * pw;
        for (size_t py = 0; py < ph; py++) {
            float *row = p + py * pw;
            if (py < g->pt || py - g->pt >= g->in_h || n == 0) {
                zero_run(row, pw);
                continue;
            }
            const float *src = plane + (py - g->pt) * img->sy;
            zero_run(row, x0);
            if (img->sx == 1) copy_run(row + x0, src, n);
            else
                for (size_t i = 0; i < n; i++) row[x0 + i] = src[i * img->sx];
            zero_run(row + x0 + n, pw - x0 - n);
        }
    }
}

BP_NO_LIBCALLS void bp_columns_from_padded(const bp_geom *g, const float *pad, float *col, size_t ld) {
    bp_padded_shape p = bp_padded_shape_of(g);
    size_t ow = g->out_w, oh = g->out_h, row = g->sx * p.pq, down = g->sy * row; /* down: an output row on */
    size_t dq = g->dx / g->sx, dp = g->dx % g->sx; /* the next tap: dq columns and dp phases on */
    float *dst = col;
    for (size_t ci = 0; ci < g->in_cg; ci++)
        for (size_t ky = 0; ky < g->kh; ky++)
            for (size_t kx = 0, px = 0, q = 0; kx < g->kw; kx++, dst += ld) {
                const float *src = pad + (ci * p.ph + ky * g->dy) * row + px * p.pq + q;
                if (ow <= BP_VL && BP_VL >= 8) /* one masked vector a row */
                    for (size_t oy = 0; oy < oh; oy++)
                        bp_vstore_part(dst + oy * ow, bp_vload_part(src + oy * down, ow), ow);
                else
                    for (size_t oy = 0; oy < oh; oy++) copy_run(dst + oy * ow, src + oy * down, ow);
                px += dp, q += dq;
                if (px >= g->sx) px -= g->sx, q++;
            }
}

/* ---- epilogue ------------------------------------------------------------------------------ */

void bp_epilogue_run(const bp_epilogue *e, size_t c, float *v, size_t n) {
    if (e == NULL) return;
    if (e->bias != NULL) {
        float b = e->bias[c * e->bias_stride];
        for (size_t i = 0; i < n; i++) v[i] += b;
    }
    if (e->act != NULL) bp_activation_apply(e->act, v, n);
}

/* ---- im2col / col2im over a block of output rows -------------------------------------------- */

/* col[r - r0][(oy - oy0)*out_w + ox] = x(c0 + ci, oy*sy + ky*dy - pt, ox*sx + kx*dx - pl), 0
   outside the image, for column rows r = (ci*kh + ky)*kw + kx in [r0, r1). */
BP_NO_LIBCALLS void bp_im2col_block(const bp_geom *g, const bp_image *img, const float *x, size_t c0, size_t r0,
                                    size_t r1, size_t oy0, size_t oy1, float *col) {
    size_t ow = g->out_w, nb = (oy1 - oy0) * ow;
    size_t kx = r0 % g->kw, ky = r0 / g->kw % g->kh, ci = r0 / (g->kw * g->kh);
    size_t oy_lo = 0, oy_hi = 0, step = g->sx * img->sx;
    bp_valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
    for (size_t r = r0; r < r1; r++) {
        const float *plane = x + (c0 + ci) * img->sc;
        float *dst = col + (r - r0) * nb;
        size_t lo = oy_lo < oy0 ? oy0 : oy_lo, hi = oy_hi > oy1 ? oy1 : oy_hi, ox_lo, ox_hi;
        bp_valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
        if (lo >= hi || ox_lo >= ox_hi) {
            zero_run(dst, nb);
        } else {
            zero_run(dst, (lo - oy0) * ow);
            size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl, n = ox_hi - ox_lo;
            for (size_t oy = lo; oy < hi; oy++) {
                float *row = dst + (oy - oy0) * ow;
                /* the first valid value: never form a pointer outside the image */
                const float *src = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
                zero_run(row, ox_lo);
                if (step == 1) copy_run(row + ox_lo, src, n);
                else if (step == 2)
                    for (size_t i = 0; i < n; i++) row[ox_lo + i] = src[2 * i];
                else
                    for (size_t i = 0; i < n; i++) row[ox_lo + i] = src[i * step];
                zero_run(row + ox_hi, ow - ox_hi);
            }
            zero_run(dst + (hi - oy0) * ow, (oy1 - hi) * ow);
        }
        if (++kx == g->kw) { /* next (ci, ky, kx) */
            kx = 0;
            if (++ky == g->kh) {
                ky = 0;
                ci++;
            }
            bp_valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
        }
    }
}

static void zero_plane(const bp_image *img, float *plane) {
    for (size_t y = 0; y < img->h; y++) {
        float *row = plane + y * img->sy;
        if (img->sx == 1) memset(row, 0, img->w * sizeof(float));
        else
            for (size_t x = 0; x < img->w; x++) row[x * img->sx] = 0.0f;
    }
}

/* dx(c0 + ci) += the adjoint of im2col over output rows [oy0, oy1), for ci in [ci0, ci1): column
   row (ci, ky, kx) is at col + ((ci - ci0)*kh*kw + ky*kw + kx)*nb. Depthwise (dw_w != NULL): the
   column row is dw_w(c0 + ci, ky, kx) * col[(ci - ci0)*nb + ...] (col is dy itself). */
void bp_col2im_block(const bp_geom *g, const bp_image *img, float *dx, size_t c0, size_t ci0, size_t ci1,
                     const float *col, size_t oy0, size_t oy1, const float *dw_w) {
    size_t nb = (oy1 - oy0) * g->out_w;
    for (size_t ci = ci0; ci < ci1; ci++) {
        float *plane = dx + (c0 + ci) * img->sc;
        for (size_t ky = 0; ky < g->kh; ky++) {
            size_t oy_lo, oy_hi;
            bp_valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
            if (oy_lo < oy0) oy_lo = oy0;
            if (oy_hi > oy1) oy_hi = oy1;
            for (size_t kx = 0; kx < g->kw; kx++) {
                size_t ox_lo, ox_hi;
                bp_valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
                if (ox_lo >= ox_hi) continue;
                size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl;
                size_t step = g->sx * img->sx, n = ox_hi - ox_lo;
                const float *src;
                float wv = 1.0f;
                if (dw_w != NULL) {
                    src = col + (ci - ci0) * nb;
                    wv = dw_w[((c0 + ci) * g->kh + ky) * g->kw + kx];
                } else {
                    src = col + (((ci - ci0) * g->kh + ky) * g->kw + kx) * nb;
                }
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    float *dst = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
                    const float *s = src + (oy - oy0) * g->out_w + ox_lo;
                    if (step == 1)
                        for (size_t i = 0; i < n; i++) dst[i] += wv * s[i];
                    else if (step == 2)
                        for (size_t i = 0; i < n; i++) dst[2 * i] += wv * s[i];
                    else
                        for (size_t i = 0; i < n; i++) dst[i * step] += wv * s[i];
                }
            }
        }
    }
}

/* ---- tasks -------------------------------------------------------------------------------- */

/* How many workers a job gets, and how fine its column blocks and channel chunks are cut so
   that every worker has a task even for a single image. */
typedef struct {
    int workers;
    size_t rows;    /* output rows per column block */
    size_t blocks;  /* column blocks per image */
    size_t chunks;  /* channel chunks per block */
    size_t tasks;
} task_plan;

static task_plan plan_tasks(const bp_geom *g, const bp_gemm_ctx *ctx, size_t batch, size_t flops, size_t channels,
                            bool split_rows) {
    task_plan p = {bp_workers_for(ctx->threads, flops), g->block_rows, 0, 1, 0};
    size_t outer = batch * g->groups;
    p.blocks = bp_ceil_div(g->out_h, p.rows);
    if (split_rows && outer * p.blocks < (size_t)p.workers) {
        size_t want = bp_ceil_div((size_t)p.workers, outer);
        size_t rows = bp_ceil_div(g->out_h, want);
        if (rows * g->out_w >= MIN_SPLIT_PIXELS && rows < p.rows) {
            p.rows = rows;
            p.blocks = bp_ceil_div(g->out_h, rows);
        }
    }
    /* a few blocks that do not split evenly over the workers (7 over 2: at most 1.75x): cut
       finer so that they do, when the blocks stay equal and wide enough */
    size_t w = (size_t)p.workers;
    if (split_rows && w > 1 && (outer * p.blocks) % w != 0 && outer * p.blocks < 8 * w)
        for (size_t b = p.blocks + 1; b <= 2 * p.blocks; b++) {
            size_t rows = bp_ceil_div(g->out_h, b);
            if (rows * g->out_w < MIN_SPLIT_PIXELS) break;
            if (bp_ceil_div(g->out_h, rows) == b && (outer * b) % w == 0) {
                p.rows = rows;
                p.blocks = b;
                break;
            }
        }
    size_t units = outer * (split_rows ? p.blocks : 1);
    if (units < (size_t)p.workers) {
        size_t most = channels / MIN_CHUNK_CHANNELS;
        p.chunks = bp_min(bp_ceil_div((size_t)p.workers, units), most < 1 ? 1 : most);
    }
    p.tasks = units * p.chunks;
    if ((size_t)p.workers > p.tasks) p.workers = (int)p.tasks;
    return p;
}

static bool direct_columns(const bp_geom *g, const bp_image *img) {
    /* 1x1, stride 1, no padding, packed input: the input already is the column matrix */
    return g->kh == 1 && g->kw == 1 && g->sx == 1 && g->sy == 1 && g->pl == 0 && g->pt == 0 && img->packed &&
           g->out_h == g->in_h && g->out_w == g->in_w;
}

/* ---- forward ------------------------------------------------------------------------------ */

typedef struct {
    const bp_geom *g;
    const float *w;
    size_t batch;
    const bp_image *x_img;
    const float *x;
    size_t x_bs;
    float *y;
    size_t y_bs;
    const bp_epilogue *e;
    const bp_scratch *s;
    const bp_gemm_ctx *ctx;
    task_plan p;
    bool direct;
    bool small; /* the tiny-layer kernel straight from the padded planes */
} forward_job;

/* Tiny layers (rows of at most 8 outputs, little work in all) take the tiny-layer kernel
   (kernels/tiny_planes.c), with no column matrix and no GEMM call, whose fixed costs would
   dominate. */
enum { SMALL_DIRECT_FLOPS = 1 << 21 };

static void forward_tasks(void *arg, int worker, int workers) {
    const forward_job *j = arg;
    const bp_geom *g = j->g;
    size_t ohw = out_pixels(g), ow = g->out_w, t0, t1;
    bp_split(j->p.tasks, worker, workers, &t0, &t1);
    float *col = j->s->base + (size_t)worker * j->s->stride;
    size_t have = SIZE_MAX; /* the (image, group, block) whose columns are in col */
    for (size_t t = t0; t < t1; t++) {
        size_t q = t % j->p.chunks, u = t / j->p.chunks;
        size_t blk = u % j->p.blocks, ig = u / j->p.blocks, grp = ig % g->groups, b = ig / g->groups;
        size_t oy0 = blk * j->p.rows, oy1 = bp_min(oy0 + j->p.rows, g->out_h), nb = (oy1 - oy0) * ow;
        size_t m0, m1;
        bp_split(g->out_cg, (int)q, (int)j->p.chunks, &m0, &m1);
        const float *x = j->x + b * j->x_bs;
        if (j->small) {
            float *pad = col + g->padded_offset;
            if (have != u) {
                bp_fill_padded_planes(g, j->x_img, x, grp * g->in_cg, pad);
                have = u;
            }
            for (size_t m = m0; m < m1;) {
                size_t o = grp * g->out_cg + m, n = BP_TINY_PAIRS && m1 - m >= 2 ? 2 : 1;
                float *plane = j->y + b * j->y_bs + o * ohw, bias[2];
                for (size_t i = 0; i < n; i++)
                    bias[i] = j->e != NULL && j->e->bias != NULL ? j->e->bias[(o + i) * j->e->bias_stride] : 0.0f;
                if (n == 2)
                    bp_tiny_plane_pair(g, pad, j->w + o * g->k, bias, plane);
                else
                    bp_tiny_plane(g, pad, j->w + o * g->k, bias, plane);
                if (j->e != NULL && j->e->act != NULL) bp_activation_apply(j->e->act, plane, n * ohw);
                m += n;
            }
            continue;
        }
        const float *cols;
        size_t ldb;
        if (j->direct) {
            cols = x + grp * g->in_cg * j->x_img->sc + oy0 * ow;
            ldb = ohw;
        } else {
            if (have != u) {
                if (g->padded_floats != 0 && j->p.blocks == 1) {
                    bp_fill_padded_planes(g, j->x_img, x, grp * g->in_cg, col + g->padded_offset);
                    bp_columns_from_padded(g, col + g->padded_offset, col, g->out_h * g->out_w);
                } else
                    bp_im2col_block(g, j->x_img, x, grp * g->in_cg, 0, g->k, oy0, oy1, col);
                have = u;
            }
            cols = col;
            ldb = nb;
        }
        float *out = j->y + b * j->y_bs + (grp * g->out_cg + m0) * ohw + oy0 * ow;
        bp_sgemm(j->ctx, false, false, m1 - m0, nb, g->k, 1.0f, j->w + (grp * g->out_cg + m0) * g->k, g->k, cols, ldb,
                 0.0f, out, ohw);
        for (size_t m = m0; m < m1; m++) bp_epilogue_run(j->e, grp * g->out_cg + m, out + (m - m0) * ohw, nb);
    }
}

/* The tiny-layer kernel on group 0 of one image: its padded planes from x (in pad, at
   g->padded_offset of bp_geom_plan's scratch), then `pairs` ? two output planes : one, from the
   weights wo (k each) and their biases (the kernel tester's entry). */
void bp_tiny_planes(const bp_geom *g, const bp_image *img, const float *x, float *pad, const float *wo,
                    const float *bias, float *out, bool pairs) {
    bp_fill_padded_planes(g, img, x, 0, pad);
    if (pairs) bp_tiny_plane_pair(g, pad, wo, bias, out);
    else bp_tiny_plane(g, pad, wo, bias, out);
}

bool bp_conv_small(const bp_geom *g) {
    return g->padded_floats != 0 && g->block_rows == g->out_h && g->out_w <= 8 &&
           2 * g->out_c * out_pixels(g) * g->k <= SMALL_DIRECT_FLOPS;
}

const char *bp_conv_engine(const bp_geom *g, bool backward_data) {
    bp_geom adjoint;
    if (bp_depthwise(g) &&
        (!backward_data || bp_depthwise_adjoint(g, &adjoint) || bp_depthwise_strided_input_gradient(g)))
        return "depthwise";
    if (!backward_data && bp_conv_small(g)) return "tiny";
    return "im2col";
}

void bp_conv_forward(const bp_geom *g, const float *w, size_t batch, const bp_image *x_img, const float *x,
                     size_t x_bs, float *y, size_t y_bs, const bp_epilogue *e, const bp_scratch *s,
                     const bp_gemm_ctx *ctx, const bp_direct_pass *direct) {
    if (direct != NULL) {
        bp_image y_img = {.w = g->out_w, .h = g->out_h, .c = g->out_c, .sx = 1, .sy = g->out_w, .sc = out_pixels(g)};
        bp_direct_run(direct, batch, x_img, x, x_bs, &y_img, y, y_bs, false, e, s, ctx->threads);
        return;
    }
    size_t flops = 2 * batch * g->out_c * out_pixels(g) * g->k;
    forward_job j = {g, w, batch, x_img, x, x_bs, y, y_bs, e, s, ctx, {0}, direct_columns(g, x_img), false};
    if (bp_depthwise(g)) {
        bp_depthwise_forward(g, w, batch, x_img, x, x_bs, y, y_bs, e, s, ctx->threads);
        return;
    }
    j.p = plan_tasks(g, ctx, batch, flops, g->out_cg, true);
    j.small = g->padded_floats != 0 && j.p.blocks == 1 && g->out_w <= 8 && flops / batch <= SMALL_DIRECT_FLOPS;
    bp_parallel_run(j.p.workers, forward_tasks, &j);
}

/* ---- backward data: dx = col2im(W^T dy) (also the forward pass of a transposed filter) -------- */

typedef struct {
    const bp_geom *g;
    const float *w;
    size_t batch;
    const float *dy;
    size_t dy_bs;
    const bp_image *dx_img;
    float *dx;
    size_t dx_bs;
    bool overwrite;
    const bp_epilogue *e;
    const bp_scratch *s;
    const bp_gemm_ctx *ctx;
    task_plan p;
} backward_data_job;

static void backward_data_tasks(void *arg, int worker, int workers) {
    const backward_data_job *j = arg;
    const bp_geom *g = j->g;
    const bp_image *img = j->dx_img;
    size_t ohw = out_pixels(g), t0, t1, khw = g->kh * g->kw;
    bp_split(j->p.tasks, worker, workers, &t0, &t1);
    float *col = j->s->base + (size_t)worker * j->s->stride;
    bool depthwise = bp_depthwise(g) && g->out_cg == 1;
    for (size_t t = t0; t < t1; t++) {
        size_t q = t % j->p.chunks, ig = t / j->p.chunks, grp = ig % g->groups, b = ig / g->groups;
        size_t c0, c1;
        bp_split(g->in_cg, (int)q, (int)j->p.chunks, &c0, &c1);
        float *dx = j->dx + b * j->dx_bs;
        const float *dy = j->dy + b * j->dy_bs + grp * g->out_cg * ohw;
        size_t cbase = grp * g->in_cg;
        if (j->overwrite)
            for (size_t c = c0; c < c1; c++) zero_plane(img, dx + (cbase + c) * img->sc);
        if (depthwise) {
            bp_col2im_block(g, img, dx, cbase, c0, c1, dy, 0, g->out_h, j->w);
        } else {
            const float *wg = j->w + grp * g->out_cg * g->k;
            for (size_t oy0 = 0; oy0 < g->out_h; oy0 += g->block_rows) {
                size_t oy1 = bp_min(oy0 + g->block_rows, g->out_h), nb = (oy1 - oy0) * g->out_w;
                bp_sgemm(j->ctx, true, false, (c1 - c0) * khw, nb, g->out_cg, 1.0f, wg + c0 * khw, g->k,
                         dy + oy0 * g->out_w, ohw, 0.0f, col, nb);
                bp_col2im_block(g, img, dx, cbase, c0, c1, col, oy0, oy1, NULL);
            }
        }
        if (j->e != NULL)
            for (size_t c = c0; c < c1; c++)
                bp_epilogue_run(j->e, cbase + c, dx + (cbase + c) * img->sc, img->h * img->w);
    }
}

void bp_conv_backward_data(const bp_geom *g, const float *w, size_t batch, const float *dy, size_t dy_bs,
                           const bp_image *dx_img, float *dx, size_t dx_bs, bool overwrite, const bp_epilogue *e,
                           const bp_scratch *s, const bp_gemm_ctx *ctx, const bp_direct_pass *direct) {
    if (direct != NULL) {
        bp_image dy_img = {.w = g->out_w, .h = g->out_h, .c = g->out_c, .sx = 1, .sy = g->out_w, .sc = out_pixels(g)};
        bp_direct_run(direct, batch, &dy_img, dy, dy_bs, dx_img, dx, dx_bs, !overwrite, e, s, ctx->threads);
        return;
    }
    bp_geom adjoint;
    if (overwrite && dx_img->packed && bp_depthwise_adjoint(g, &adjoint)) {
        bp_depthwise_backward_data(g, &adjoint, w, batch, dy, dy_bs, dx, dx_bs, e, s, ctx->threads);
        return;
    }
    if (overwrite && dx_img->packed && bp_depthwise_strided_input_gradient(g)) {
        bp_depthwise_backward_data_strided(g, w, batch, dy, dy_bs, dx, dx_bs, e, ctx->threads);
        return;
    }
    size_t flops = 2 * batch * g->out_c * out_pixels(g) * g->k;
    backward_data_job j = {g, w, batch, dy, dy_bs, dx_img, dx, dx_bs, overwrite, dx_img->packed ? e : NULL,
                           s, ctx, {0}};
    j.p = plan_tasks(g, ctx, batch, flops, g->in_cg, false);
    j.p.blocks = 1;
    j.p.tasks = batch * g->groups * j.p.chunks;
    if ((size_t)j.p.workers > j.p.tasks) j.p.workers = (int)j.p.tasks;
    bp_parallel_run(j.p.workers, backward_data_tasks, &j);
}

/* ---- weight gradient: dW_g (+)= dy_g * im2col(x_g)^T, summed over the batch ---------------- */

typedef struct {
    const bp_geom *g;
    bp_weight_gradient_operands op;
    const bp_scratch *s;
    const bp_gemm_ctx *ctx;
    size_t chunks, tasks;
    bool direct;
} weights_job;

static void weights_tasks(void *arg, int worker, int workers) {
    const weights_job *j = arg;
    const bp_weight_gradient_operands *op = &j->op;
    const bp_geom *g = j->g;
    size_t ohw = out_pixels(g), t0, t1;
    bp_split(j->tasks, worker, workers, &t0, &t1);
    float *col = j->s->base + (size_t)worker * j->s->stride;
    for (size_t t = t0; t < t1; t++) {
        size_t q = t % j->chunks, grp = t / j->chunks, r0, r1;
        bp_split(g->k, (int)q, (int)j->chunks, &r0, &r1);
        if (r0 >= r1) continue;
        float *dwg = op->dw + grp * g->out_cg * g->k + r0;
        bool first = true;
        for (size_t b = 0; b < op->batch; b++) {
            const float *x = op->x + b * op->x_bs;
            const float *dyg = op->dy + b * op->dy_bs + grp * g->out_cg * ohw;
            size_t rows = j->direct ? g->out_h : g->block_rows;
            for (size_t oy0 = 0; oy0 < g->out_h; oy0 += rows) {
                size_t oy1 = bp_min(oy0 + rows, g->out_h), nb = (oy1 - oy0) * g->out_w;
                const float *cols = col;
                size_t ldb = nb;
                if (j->direct) {
                    cols = x + (grp * g->in_cg + r0) * op->x_img->sc;
                    ldb = ohw;
                } else {
                    bp_im2col_block(g, op->x_img, x, grp * g->in_cg, r0, r1, oy0, oy1, col);
                }
                bp_sgemm(j->ctx, false, true, g->out_cg, r1 - r0, nb, 1.0f, dyg + oy0 * g->out_w, ohw, cols, ldb,
                         first ? op->beta : 1.0f, dwg, g->k);
                first = false;
            }
        }
    }
}

void bp_conv_backward_weights(const bp_geom *g, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                              const float *dy, size_t dy_bs, float *dw, float beta, const bp_scratch *s,
                              const bp_gemm_ctx *ctx, const bp_direct *direct) {
    if (direct != NULL) {
        bp_direct_weight_gradient(direct, batch, x_img, x, x_bs, dy, dy_bs, dw, beta != 0.0f, s, ctx->threads);
        return;
    }
    size_t flops = 2 * batch * g->out_c * out_pixels(g) * g->k;
    if (bp_depthwise(g)) {
        bp_depthwise_weight_gradient(g, batch, x_img, x, x_bs, dy, dy_bs, dw, beta, s, ctx->threads);
        return;
    }
    weights_job j = {g, {batch, x_img, x, x_bs, dy, dy_bs, dw, beta}, s, ctx, 1, 0, direct_columns(g, x_img)};
    int workers = bp_workers_for(ctx->threads, flops);
    if (g->groups < (size_t)workers) j.chunks = bp_min(bp_ceil_div((size_t)workers, g->groups), g->k);
    j.tasks = g->groups * j.chunks;
    if ((size_t)workers > j.tasks) workers = (int)j.tasks;
    bp_parallel_run(workers, weights_tasks, &j);
}
