/* The weight gradient on the direct engine's phase planes (the forward plan's, see direct.c):

       dW(m, k) = sum over images and output pixels p of  dy(m, p) * source value of step k at p

   as a matrix product whose inner dimension is the pixels: for each block of 64 steps (k) the
   source values are transposed out of the planes into [p][k] rows, dy into [p][m] rows of 7
   channels, and the forward pass's pixels kernel (7 channels broadcast x 4 vectors of steps, on
   AVX-512) accumulates dW itself, a chunk of pixels at a time so that the transposed block stays
   in cache for every channel tile.

   Workers own disjoint ranges of steps (columns of dW), so nothing is reduced between them; each
   fills the planes of the channels its steps read. */
#include <string.h>

#include "direct_plan.h"
#include "parallel.h"

enum {
    STEP_BLOCK = PIX_MV_MAX * BP_VL,   /* steps per transposed block: the pixels kernel's vectors */
    STEP_NC = PIX_MV_MAX == 4 ? 7 : 6, /* channels per tile (the pixels kernel's NC with MV_MAX) */
    DY_SLOTS = 8,                      /* dy packed 8 channels a pixel (the transposes' width) */
    PIXEL_CHUNK = 512,                 /* pixels taken at a time */
    GROUP_TARGET = 1 << 19             /* floats of units a worker groups (2 MiB) */
};

/* The kernel tile for a block of `cols` steps: fewer vectors for a short last block, with a
   channel count of the pixel menu (whatever it computes past STEP_NC channels is dropped). */
static size_t block_vectors(size_t cols) { return cols > 2 * BP_VL ? PIX_MV_MAX : cols > BP_VL && PIX_MV_MAX > 1 ? 2 : 1; }
static size_t block_channels(size_t mv) { return mv == PIX_MV_MAX ? STEP_NC : mv == 2 ? 7 : 8; }

static size_t unit_pixels(const bp_direct *d) { return d->band_rows * d->ph[0].ow; }

/* Floats one (image, band) unit takes: its planes, its dy tiles, its rows of a transposed block. */
static size_t unit_floats(const bp_direct *d) {
    return d->planes + (bp_ceil_div(d->m, STEP_NC) * DY_SLOTS + STEP_BLOCK) * unit_pixels(d);
}

/* Units whose pixels one pass sums together (so dW is read and written once per group, not per
   image): as many as fit the target, at least one. */
static size_t group_units(const bp_direct *d) {
    size_t unit = unit_floats(d);
    return bp_min(unit < GROUP_TARGET ? GROUP_TARGET / unit : 1, 64);
}

size_t bp_direct_weights_scratch_floats(const bp_direct *d) {
    return group_units(d) * (unit_floats(d) + unit_pixels(d)) + PIXEL_CHUNK + d->ph[0].k + 64;
}

typedef struct {
    const bp_direct *d;
    size_t bands;
    bp_weight_gradient_operands op; /* beta: 0 or 1 */
    const bp_scratch *s;
    size_t blocks; /* of STEP_BLOCK steps: the work split between workers */
} weights_job;

/* dy of band rows [r0, r0 + n) of image b, group grp: tile t (channels 7t .. 7t + 6) as
   [p][DY_SLOTS] at out + t*ld*DY_SLOTS, p over the band's pixels; slots past the tile's channels
   are zero (zeros: a row of them). */
static void pack_dy(const weights_job *j, size_t b, size_t grp, size_t r0, size_t n, const float *zeros, float *out,
                    size_t ld) {
    const bp_direct *d = j->d;
    const phase_t *ph = &d->ph[0];
    size_t plane = ph->oh * ph->ow, np = n * ph->ow, p8 = np / 8 * 8;
    const float *dy = j->op.dy + b * j->op.dy_bs + grp * d->m * plane + r0 * ph->ow;
    for (size_t m0 = 0, t = 0; m0 < d->m; m0 += STEP_NC, t++) {
        float *tile = out + t * ld * DY_SLOTS;
        const float *rows[DY_SLOTS];
        for (size_t i = 0; i < DY_SLOTS; i++) rows[i] = i < STEP_NC && m0 + i < d->m ? dy + (m0 + i) * plane : zeros;
        for (size_t p0 = 0; p0 < p8; p0 += 8) bp_transpose8x8_rows(rows, p0, tile + p0 * DY_SLOTS, DY_SLOTS);
        for (size_t p = p8; p < np; p++)
            for (size_t i = 0; i < DY_SLOTS; i++) tile[p * DY_SLOTS + i] = i < STEP_NC && m0 + i < d->m ? rows[i][p] : 0.0f;
    }
}

/* xt[p][t] (rows ld floats apart) = source value of step k0 + t at the band's pixel p, t < cols;
   the rest of each row zero. origin: the planes of the worker's first channel; off: steps'
   offsets from it. */
static void transpose_steps(const bp_direct *d, const float *origin, const int32_t *off, size_t k0, size_t cols,
                            size_t n, float *xt, size_t ld) {
    size_t ow = d->ph[0].ow, c8 = cols / 8 * 8, w8 = ow / 8 * 8;
    if (cols < ld)
        for (size_t p = 0; p < n * ow; p++) memset(xt + p * ld + cols, 0, (ld - cols) * sizeof(float));
    for (size_t y = 0; y < n; y++) {
        float *line = xt + y * ow * ld;
        for (size_t t0 = 0; t0 < cols; t0 += 8) {
            const float *rows[8];
            size_t nt = t0 < c8 ? 8 : cols - t0;
            for (size_t i = 0; i < nt; i++) rows[i] = origin + off[k0 + t0 + i] + y * d->wq;
            if (nt == 8)
                for (size_t x0 = 0; x0 < w8; x0 += 8) bp_transpose8x8_rows(rows, x0, line + x0 * ld + t0, ld);
            for (size_t x = nt == 8 ? w8 : 0; x < ow; x++)
                for (size_t i = 0; i < nt; i++) line[x * ld + t0 + i] = rows[i][x];
        }
    }
}

static void weights_worker(void *arg, int worker, int workers) {
    const weights_job *j = arg;
    const bp_weight_gradient_operands *op = &j->op;
    const bp_direct *d = j->d;
    const phase_t *ph = &d->ph[0];
    size_t b0, b1;
    bp_split(j->blocks, worker, workers, &b0, &b1);
    size_t k0 = bp_min(b0 * STEP_BLOCK, ph->k), k1 = bp_min(b1 * STEP_BLOCK, ph->k);
    if (k0 >= k1) return;
    size_t c0 = k0 / ph->taps, c1 = bp_ceil_div(k1, ph->taps), cs = d->sphases * d->plane;
    size_t tiles = bp_ceil_div(d->m, STEP_NC), up = unit_pixels(d), units = op->batch * j->bands;
    size_t group = bp_min(group_units(d), units), gp = group * up; /* pixels a group holds at most */
    /* scratch: the group's planes, dy tiles ([tile][group pixel][8]), transposed block, a row of
       zeros, pixel offsets, step offsets */
    float *planes = j->s->base + (size_t)worker * j->s->stride, *dyp = planes + group * d->planes;
    float *xt = dyp + tiles * gp * DY_SLOTS, *zeros = xt + gp * STEP_BLOCK;
    int32_t *offp = (int32_t *)(zeros + up), *off = offp + PIXEL_CHUNK;
    memset(zeros, 0, up * sizeof(float));
    for (size_t p = 0; p < PIXEL_CHUNK; p++) offp[p] = (int32_t)(p * DY_SLOTS);
    for (size_t k = k0; k < k1; k++) off[k] = ph->off[k] - (int32_t)(c0 * cs); /* from the worker's first channel */
    float tmp[8 * STEP_BLOCK];
    size_t first[64 + 1], rows_of[64]; /* each unit's first pixel in the group, its band rows */
    for (size_t grp = 0; grp < d->groups; grp++) {
        float *dw = op->dw + grp * d->m * ph->k;
        for (size_t u0 = 0; u0 < units; u0 += group) {
            size_t nu = bp_min(group, units - u0);
            first[0] = 0;
            for (size_t g = 0; g < nu; g++) {
                size_t band = (u0 + g) % j->bands, b = (u0 + g) / j->bands, r0 = band * d->band_rows;
                rows_of[g] = bp_min(d->band_rows, d->oh_max - r0);
                first[g + 1] = first[g] + rows_of[g] * ph->ow;
                bp_direct_fill_planes(d, op->x_img, op->x + b * op->x_bs + grp * d->c * op->x_img->sc, c0, c1, r0,
                                      rows_of[g], planes + g * d->planes);
                pack_dy(j, b, grp, r0, rows_of[g], zeros, dyp + first[g] * DY_SLOTS, gp);
            }
            size_t np = first[nu];
            for (size_t kb = k0; kb < k1; kb += STEP_BLOCK) {
                size_t cols = bp_min(STEP_BLOCK, k1 - kb), mv = block_vectors(cols), nc = block_channels(mv);
                size_t ld = mv * BP_VL;
                for (size_t g = 0; g < nu; g++)
                    transpose_steps(d, planes + g * d->planes + d->prefix, off, kb, cols, rows_of[g],
                                    xt + first[g] * ld, ld);
                /* a chunk of the group's pixels (its transposed rows stay in cache) against every tile */
                for (size_t p0 = 0; p0 < np; p0 += PIXEL_CHUNK) {
                    size_t pn = bp_min(PIXEL_CHUNK, np - p0);
                    bool add = op->beta != 0.0f || u0 > 0 || p0 > 0;
                    for (size_t m0 = 0, t = 0; m0 < d->m; m0 += STEP_NC, t++) {
                        float *at = dw + m0 * ph->k + kb;
                        const float *src = dyp + (t * gp + p0) * DY_SLOTS, *w = xt + p0 * ld;
                        if (m0 + nc <= d->m && cols == ld && nc == STEP_NC) { /* a whole tile: into dW */
                            bp_direct_pixels_tile(mv, nc, src, offp, pn, w, at, ph->k, add);
                            continue;
                        }
                        size_t rows = bp_min(STEP_NC, d->m - m0);
                        for (size_t i = 0; i < rows && add; i++) memcpy(tmp + i * ld, at + i * ph->k, cols * sizeof(float));
                        bp_direct_pixels_tile(mv, nc, src, offp, pn, w, tmp, ld, add);
                        for (size_t i = 0; i < rows; i++) memcpy(at + i * ph->k, tmp + i * ld, cols * sizeof(float));
                    }
                }
            }
        }
    }
}

void bp_direct_weight_gradient(const bp_direct *d, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                               const float *dy, size_t dy_bs, float *dw, bool add, const bp_scratch *s, int threads) {
    const phase_t *ph = &d->ph[0];
    weights_job j = {d, bp_ceil_div(d->oh_max, d->band_rows), {batch, x_img, x, x_bs, dy, dy_bs, dw, add ? 1.0f : 0.0f},
                     s, bp_ceil_div(ph->k, STEP_BLOCK)};
    size_t flops = 2 * batch * d->groups * d->m * ph->k * ph->oh * ph->ow;
    int workers = bp_workers_for(threads, flops);
    if ((size_t)workers > j.blocks) workers = (int)j.blocks;
    bp_parallel_run(workers, weights_worker, &j);
}
