/* The direct engine's passes of 1x1, unpadded layers (pointwise plans, see direct_plan.h): per
   image and group Y = W X, a GEMM whose matrices are the images themselves (rows: channels,
   columns: pixels); in a backward-data pass (an input gradient, a transposed layer's forward
   pass) X is the output gradient and W is S's weights read transposed. A strided layer's X is
   every s-th pixel of every s-th row, which a task gathers, a block of pixels at a time, into its
   scratch. The pointwise kernel reads X and writes Y in place and takes the weights where they
   are (the caller's array, or the blocks packed at filter creation), so a call packs nothing; the
   bias and a clamping activation (ReLU, ReLU6, Clamp) are applied to the tile in registers, any
   other activation to each finished block of rows. On large sources of many channels the first
   tiles of each block of pixels prefetch the next block, each channel's lines (see prefetches). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "direct_plan.h"
#include "parallel.h"

enum { PANEL_FLOATS = 1 << 14 }; /* source floats of a block of pixels (64 KiB): it stays in cache
                                    while every block of output channels reads it */
enum { PREFETCH_ROWS_MIN = 128, PREFETCH_RUN_FLOATS_MIN = 1 << 17, /* see prefetches */
       PREFETCH_CALL_FLOATS_MIN = 1 << 19 };

typedef struct {
    const bp_direct *d;
    const bp_direct_pass *pass;
    bp_image src_img; /* the pixels the layer reads: the source's, strides times the layer's */
    const float *src;
    size_t src_bs;
    const bp_image *dst_img;
    float *dst;
    size_t dst_bs;
    const bp_epilogue *e;
    float lo, hi;      /* the clamp applied in the kernel */
    bool activate;     /* another activation, applied after the kernel */
    const bp_scratch *s;
    size_t runs, run_pixels; /* per image: runs of consecutive outputs (the whole image, or its rows) */
    size_t row;              /* outputs per row */
    bool copy;               /* the source's pixels are not consecutive: a task gathers its share first */
    size_t chunks, parts, tasks, mblocks; /* a task: one of `chunks` shares of the channel blocks and
                                             of `parts` shares of a run's tiles of pixels */
    _Atomic size_t next;
    bool prefetch; /* the tiles prefetch the next block of the source's pixels (see prefetches) */
} pointwise_job;

bool bp_clamp_bounds(const BNNSActivation *act, float *lo, float *hi) {
    *lo = -INFINITY;
    *hi = INFINITY;
    if (act == NULL) return true;
    switch (act->function) {
    case BNNSActivationFunctionIdentity: return true;
    case BNNSActivationFunctionRectifiedLinear: *lo = 0.0f; return true;
    case BNNSActivationFunctionReLU6: *lo = 0.0f; *hi = 6.0f; return true;
    case BNNSActivationFunctionClamp: *lo = act->alpha; *hi = act->beta; return true;
    default: return false;
    }
}

/* W(r, i) of output channel m (a block's first channel plus r) of group grp: *wr and *wi apart. */
static const float *weights_at(const pointwise_job *j, size_t grp, size_t m, size_t *wr, size_t *wi) {
    const bp_direct *d = j->d;
    if (j->pass->packed != NULL) { /* blocks of bw channels, each step's bw weights together */
        *wr = 1;
        *wi = d->bw;
        return j->pass->packed + grp * d->packed_group + (m / d->bw) * d->bw * d->c + m % d->bw;
    }
    const bp_weights_view *v = &j->pass->weights;
    if (d->backward) { /* the adjoint's W(r, i) is S's W(i, r) */
        *wr = v->in;
        *wi = v->out;
        return v->base + grp * v->group + m * v->in;
    }
    *wr = v->out;
    *wi = v->in;
    return v->base + grp * v->group + m * v->out;
}

/* bias[r] = the bias of output channel m + r of group grp, r < n. */
static void gather_bias(const pointwise_job *j, size_t grp, size_t m, size_t n, float *bias) {
    const bp_epilogue *e = j->e;
    for (size_t r = 0; r < n; r++)
        bias[r] = e != NULL && e->bias != NULL ? e->bias[(grp * j->d->m + m + r) * e->bias_stride] : 0.0f;
}

/* The cache lines of the next block of pixels that the tiles of the current block prefetch:
   `lines` lines of every row from `first` on (row 0's), per_tile lines of every row a tile,
   `done` of them issued. */
typedef struct {
    const char *first;
    size_t lines, per_tile, done;
} ahead_lines;

/* The tile of nv vectors of pixels from p (of which `last` lanes of the last are kept) for
   output channels [m, m + mr) of group grp. */
static void run_tile(const pointwise_job *j, size_t grp, size_t m, size_t mr, size_t nv, const float *x, size_t xs,
                     float *y, size_t ys, size_t last, ahead_lines *ahead) {
    size_t wr, wi;
    const float *w = weights_at(j, grp, m, &wr, &wi);
    float bias[POINTWISE_MR_MAX];
    gather_bias(j, grp, m, mr, bias);
    size_t lines = ahead != NULL ? bp_min(ahead->per_tile, ahead->lines - ahead->done) : 0;
    if (lines == 0) {
        bp_direct_pointwise_tile(mr, nv, x, xs, j->d->c, w, wr, wi, bias, j->lo, j->hi, y + m * ys, ys, last);
        return;
    }
    bp_direct_pointwise_tile_ahead(mr, nv, x, xs, j->d->c, w, wr, wi, bias, j->lo, j->hi, y + m * ys, ys, last,
                                   (const float *)(ahead->first + 64 * ahead->done), lines);
    ahead->done += lines;
}

/* The tail's pixels [whole, n) of output channels [m, m + mr): dot products along the reduction
   (tail: each pixel's k values) where a view of the weights has their steps consecutive (the
   caller's or the canonical copy, also beside packed blocks) and the tail is short,
   else a tile of one vector (tail: a zero-padded vector per input channel). */
static void run_tail(const pointwise_job *j, size_t grp, size_t m, size_t mr, const float *tail, bool dots, float *y,
                     size_t ys, size_t np) {
    const bp_direct *d = j->d;
    if (!dots) {
        run_tile(j, grp, m, mr, 1, tail, BP_VL, y, ys, np, NULL);
        return;
    }
    for (size_t r0 = 0, dr; r0 < mr; r0 += dr) {
        dr = POINTWISE_DOTS_MR_MAX;
        while (dr > mr - r0) dr /= 2;
        const bp_weights_view *v = &j->pass->weights; /* the view even beside packed blocks: steps in order */
        const float *w = v->base + grp * v->group + (m + r0) * v->out;
        float bias[POINTWISE_DOTS_MR_MAX];
        gather_bias(j, grp, m + r0, dr, bias);
        bp_direct_pointwise_dots(dr, np, tail, d->c, d->c, w, v->out, bias, j->lo, j->hi, y + (m + r0) * ys, ys);
    }
}

/* The tiles of output channels of blocks [mb0, mb1) (run_blocks' split of each block's rows). */
static size_t channel_tiles(const bp_direct *d, size_t mb0, size_t mb1) {
    size_t tiles = 0;
    for (size_t mb = mb0; mb < mb1; mb++) {
        size_t rows = bp_min(d->bw, d->m - mb * d->bw);
        tiles += rows / POINTWISE_MR_MAX + (size_t)__builtin_popcountll(rows % POINTWISE_MR_MAX);
    }
    return tiles;
}

/* The lines of the n pixels from `next` in each row (rows xs apart), spread over `tiles` tiles.
   A row whose start is not on a line boundary can span one line more than row 0. */
static ahead_lines next_block_lines(const float *next, size_t n, size_t xs, size_t tiles) {
    uintptr_t a = (uintptr_t)next / 64 * 64, b = (uintptr_t)(next + n);
    size_t lines = (b - a + 63) / 64 + (xs * sizeof(float) % 64 != 0);
    return (ahead_lines){(const char *)a, lines, bp_ceil_div(lines, bp_max(tiles, 1)), 0};
}

/* The tiles of pixels of a block of about PANEL_FLOATS source floats (at least one tile). */
static size_t panel_tiles(size_t c) { return bp_max(1, PANEL_FLOATS / c / (POINTWISE_NV_MAX * BP_VL)); }

/* Output channel blocks [mb0, mb1) of pixels [0, n) of one run: x (rows xs apart) in, y (rows
   ys apart, channel 0 of the group) out, a block of pixels at a time. The pixels past the last
   whole vector are copied to `tail` first, so that the tiles load whole vectors only and never
   past a row. */
static void run_blocks(const pointwise_job *j, size_t grp, const float *x, size_t xs, size_t n, float *y, size_t ys,
                       size_t mb0, size_t mb1, float *tail) {
    const bp_direct *d = j->d;
    size_t tile = POINTWISE_NV_MAX * BP_VL, whole = n / BP_VL * BP_VL, np = n - whole;
    size_t block = panel_tiles(d->c) * tile;
    bool dots = np <= POINTWISE_DOTS_MAX && !d->backward && j->pass->weights.base != NULL && j->pass->weights.in == 1;
    for (size_t c = 0; np > 0 && c < d->c; c++) {
        if (dots) { /* pixel after pixel, their k values each */
            for (size_t p = 0; p < np; p++) tail[p * d->c + c] = x[c * xs + whole + p];
            continue;
        }
        memset(tail + c * BP_VL, 0, BP_VL * sizeof(float));
        memcpy(tail + c * BP_VL, x + c * xs + whole, np * sizeof(float));
    }
    size_t mtiles = channel_tiles(d, mb0, mb1);
    for (size_t p0 = 0; p0 < n; p0 += block) {
        size_t p1 = bp_min(p0 + block, n), end = bp_min(p1, whole);
        ahead_lines ahead = {0};
        if (j->prefetch && p1 < whole) ahead = next_block_lines(x + p1, bp_min(block, whole - p1), xs,
                                                                mtiles * bp_ceil_div(end - p0, tile));
        for (size_t mb = mb0; mb < mb1; mb++) {
            size_t rows = bp_min(d->bw, d->m - mb * d->bw);
            for (size_t r0 = 0, mr; r0 < rows; r0 += mr) {
                mr = POINTWISE_MR_MAX;
                while (mr > rows - r0) mr /= 2;
                size_t m = mb * d->bw + r0;
                for (size_t p = p0, nv; p < end; p += nv * BP_VL) {
                    nv = bp_min(POINTWISE_NV_MAX, (end - p) / BP_VL);
                    run_tile(j, grp, m, mr, nv, x + p, xs, y + p, ys, BP_VL, &ahead);
                }
                if (p1 > whole) run_tail(j, grp, m, mr, tail, dots, y + whole, ys, np);
                if (j->activate)
                    for (size_t r = 0; r < mr; r++) bp_activation_apply(j->e->act, y + (m + r) * ys + p0, p1 - p0);
            }
        }
    }
}

size_t bp_direct_pointwise_scratch_floats(size_t c, size_t ow) {
    size_t tile = POINTWISE_NV_MAX * BP_VL, gathered = bp_max(ow, (panel_tiles(c) + 1) * tile);
    return c * (bp_round_up(gathered, 16) + BP_VL);
}

/* Pixels [p0, p1) of a run from x (the run's first pixel) to rows of ld floats, one per channel. */
static void gather(const pointwise_job *j, const float *x, size_t p0, size_t p1, float *dst, size_t ld) {
    const bp_image *xi = &j->src_img;
    for (size_t c = 0; c < j->d->c; c++)
        for (size_t p = p0, n; p < p1; p += n) {
            size_t oy = p / j->row, ox = p % j->row;
            n = bp_min(j->row - ox, p1 - p);
            const float *src = x + c * xi->sc + oy * xi->sy + ox * xi->sx;
            float *out = dst + c * ld + (p - p0);
            if (xi->sx == 2) /* stride 2 (ResNet's downsample layers): a constant step, vectorized */
                for (size_t i = 0; i < n; i++) out[i] = src[2 * i];
            else
                for (size_t i = 0; i < n; i++) out[i] = src[i * xi->sx];
        }
}

static void run_tasks(void *arg, int worker, int workers) {
    pointwise_job *j = arg;
    (void)workers;
    const bp_direct *d = j->d;
    const bp_image *xi = &j->src_img, *yi = j->dst_img;
    float *scratch = j->s->base + (size_t)worker * j->s->stride;
    size_t tile = POINTWISE_NV_MAX * BP_VL, tiles = j->run_pixels / tile;
    size_t have = SIZE_MAX; /* the (unit, part) whose pixels the scratch holds */
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->tasks;) {
        size_t q = t % j->chunks, part = t / j->chunks % j->parts, u = t / j->chunks / j->parts;
        size_t run = u % j->runs, ig = u / j->runs, grp = ig % d->groups, b = ig / d->groups, mb0, mb1, t0, t1;
        bp_split(j->mblocks, (int)q, (int)j->chunks, &mb0, &mb1);
        bp_split(tiles, (int)part, (int)j->parts, &t0, &t1);
        size_t p0 = t0 * tile, p1 = part + 1 == j->parts ? j->run_pixels : t1 * tile; /* the last part: the rest */
        const float *x = j->src + b * j->src_bs + grp * d->c * xi->sc + run * xi->sy;
        float *y = j->dst + b * j->dst_bs + grp * d->m * yi->sc + run * yi->sy + p0;
        if (!j->copy) {
            run_blocks(j, grp, x + p0, xi->sc, p1 - p0, y, yi->sc, mb0, mb1, scratch);
            continue;
        }
        size_t ld = bp_round_up(p1 - p0, 16);
        if (have != t / j->chunks) gather(j, x, p0, p1, scratch, ld);
        have = t / j->chunks;
        run_blocks(j, grp, scratch, ld, p1 - p0, y, yi->sc, mb0, mb1, scratch + d->c * ld);
    }
}

/* Whether the tiles prefetch the next block of pixels: where the source is read in place, has
   PREFETCH_ROWS_MIN rows (input channels) or more, each row's next lines in another page (more
   streams than the hardware prefetchers follow: a demand miss to L3 or memory per line), a run
   of at least 512 KiB (enough blocks to prefetch), and the call's source exceeds a 2 MiB L2.
   Measured on the Emerald Rapids Xeon, 1 thread: 256 -> 64 channels of 56x56 1.05 - 1.2x;
   sources within L2 (96 -> 24 at 56x56, batch 1: 0.92 - 0.94x) and 64 - 96 channels (ties and
   losses within the noise) run without it. */
static bool prefetches(const bp_direct *d, const pointwise_job *j, size_t batch) {
    size_t run = d->c * j->run_pixels;
    return !j->copy && d->c >= PREFETCH_ROWS_MIN && run >= PREFETCH_RUN_FLOATS_MIN &&
           batch * d->groups * j->runs * run >= PREFETCH_CALL_FLOATS_MIN;
}

void bp_direct_pointwise_run(const bp_direct_pass *pass, size_t batch, const bp_image *src_img, const float *src,
                             size_t src_bs, const bp_image *dst_img, float *dst, size_t dst_bs, const bp_epilogue *e,
                             const bp_scratch *s, int threads) {
    const bp_direct *d = pass->plan;
    size_t h = d->oh_max, w = d->ph[0].ow;
    bp_image view = *src_img;
    view.sx *= d->ss_x;
    view.sy *= d->ss_y;
    pointwise_job j = {d, pass, view, src, src_bs, dst_img, dst, dst_bs, e, 0.0f, 0.0f, false, s,
                       h, w, w, view.sx != 1, 1, 1, 0, bp_ceil_div(d->m, d->bw), 0, false};
    j.activate = !bp_clamp_bounds(e != NULL ? e->act : NULL, &j.lo, &j.hi);
    if ((j.copy || view.sy == w) && dst_img->sy == w) { /* whole images are runs (gathered: any source) */
        j.runs = 1;
        j.run_pixels = h * w;
    }
    j.prefetch = prefetches(d, &j, batch);
    size_t cost = 2 * batch * d->groups * h * w * d->c * d->m;
    int workers = bp_workers_for(threads, cost);
    /* a few tasks per worker: shares of the channel blocks, then of the pixels where those are few */
    size_t units = batch * d->groups * j.runs, want = 4 * (size_t)workers;
    if (units < want) j.chunks = bp_min(j.mblocks, bp_ceil_div(want, units));
    size_t tiles = j.run_pixels / (POINTWISE_NV_MAX * BP_VL);
    if (units * j.chunks < want) j.parts = bp_max(1, bp_min(tiles, bp_ceil_div(want, units * j.chunks)));
    if (j.copy) j.parts = bp_max(j.parts, bp_ceil_div(tiles, panel_tiles(d->c))); /* what the scratch holds */
    j.tasks = units * j.chunks * j.parts;
    if ((size_t)workers > j.tasks) workers = (int)j.tasks;
    bp_parallel_run_measured(workers, cost, run_tasks, &j);
}
