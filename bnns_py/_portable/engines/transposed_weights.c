/* The weight gradient of a transposed layer T whose kernel rows are 4 to 7 undilated taps (e.g.
   4x4 / 2), in S's terms (S: input T's output gradient dz, output T's input x):

       dW(m, c, ky, kx) = sum over images and S output pixels p = (y, x) of
                          x(m, p) * dz(c, y*sy + ky*dy - pt, x*sx + kx - pl)

   The kw taps of a kernel row read kw consecutive values of a zero-bordered copy of a dz
   channel, so the direct engine's pixels kernel broadcasts them where they are (its NC "pixels"
   are the row's taps) against vectors of m from x transposed to [p][m], summing over the pixels
   (but those whose kernel row lies in the border's rows of zeros).
   The direct engine's weight gradient instead copies kh*kw source values per dz value into
   [pixel][step] blocks (a 4x4/2 layer: 8 times the copies of x made here).

   dW transposed ([c, ky, kx][m]) is kept in the scratch slots, a share of the dz channels c per
   planned worker (slot q holds share q). The run's threads claim the channels 8 at a time (so that
   a thread the system slows down takes fewer): a chunk sums every image of the window, and after
   the last window writes its columns of dW. x is transposed once per image for all the workers:
   images go in windows of one per slot (image i of a window in slot i), one run each; the run's
   threads claim the window's transposes 8 channels at a time, and before summing an image a
   thread claims what is left of that image's (so each is claimed by a running thread) and waits
   for those the others make (bp_progress). */
#include <stdatomic.h>
#include <string.h>

#include "direct_plan.h"
#include "parallel.h"

enum {
    CHANNEL_CHUNK = 8,      /* dz channels bordered at a time */
    TRANSPOSE_ROWS = 8,     /* channels of x per shared transpose */
    ACC_LIMIT = 1 << 21     /* floats of a worker's dW transposed (8 MiB): beyond, the direct engine */
};

#define TAP_ROW_MAX (BP_VREGS >= 32 ? 7 : 6) /* the pixels kernel's NC with PIX_MV_MAX vectors */
#define TAP_ROW_MIN 4

typedef struct {
    size_t hp, wp;    /* zero-bordered dz plane */
    size_t m_pad;     /* m rounded up to the kernel's vectors */
    size_t npix;      /* S output pixels per image */
    size_t c_share;   /* channels of a slot's share of dW (a multiple of CHANNEL_CHUNK) */
    size_t chunks;    /* CHANNEL_CHUNK channels each (the last may have fewer) */
    size_t slots;     /* planned workers: scratch slots, images per window */
} layout;

static size_t block_width(void) { return PIX_MV_MAX * BP_VL; }

static void layout_for(const bp_geom *g, int workers, layout *l) {
    l->hp = (g->out_h - 1) * g->sy + (g->kh - 1) * g->dy + 1;
    l->wp = (g->out_w - 1) * g->sx + g->kw;
    l->m_pad = bp_round_up(g->out_c, block_width());
    l->npix = g->out_h * g->out_w;
    l->slots = (size_t)(workers < 1 ? 1 : workers);
    l->c_share = bp_round_up(bp_ceil_div(g->in_c, l->slots), CHANNEL_CHUNK);
    l->chunks = bp_ceil_div(g->in_c, CHANNEL_CHUNK);
}

static size_t acc_floats(const bp_geom *g, const layout *l) { return l->c_share * g->kh * g->kw * l->m_pad; }

/* Per slot: a share of dW transposed, an image's x transposed, a worker's bordered planes and
   pixels' offsets. */
static size_t worker_floats(const bp_geom *g, const layout *l) {
    return acc_floats(g, l) + l->npix * l->m_pad + CHANNEL_CHUNK * l->hp * l->wp + l->npix + 64;
}

static bool takes(const bp_geom *g, const layout *l) {
    return g->groups == 1 && g->dx == 1 && g->kw >= TAP_ROW_MIN && g->kw <= TAP_ROW_MAX && g->out_c * 4 >= l->m_pad * 3 &&
           acc_floats(g, l) <= ACC_LIMIT;
}

size_t bp_transposed_weights_scratch_floats(const bp_geom *g, int workers) {
    layout l;
    layout_for(g, workers, &l);
    return takes(g, &l) ? worker_floats(g, &l) : 0;
}

typedef struct {
    const bp_geom *g;
    layout l;
    size_t batch;
    const bp_image *dz_img;
    const float *dz, *x;
    size_t dz_bs, x_bs;
    float *dw;
    bool add;
    const bp_scratch *s;
    size_t b0, nb;                  /* the window: images [b0, b0 + nb) */
    size_t units;                   /* transposes per image (of m_pad channels) */
    _Atomic size_t claimed;         /* the window's transposes claimed */
    _Atomic size_t next_chunk;      /* the window's channel chunks claimed */
    bp_progress made[BP_MAX_WORKERS]; /* per image of the window: its transposes made */
} job_t;

static float *slot(const job_t *j, size_t q) { return j->s->base + q * j->s->stride; }
static float *slot_xt(const job_t *j, size_t q) { return slot(j, q) + acc_floats(j->g, &j->l); }

/* Where dz channel c's rows of dW transposed are kept. */
static float *acc_of(const job_t *j, size_t c) {
    return slot(j, c / j->l.c_share) + c % j->l.c_share * j->g->kh * j->g->kw * j->l.m_pad;
}

/* Channels [m0, m0 + 8) of one image x into xt[t][p][i] = x(t*bw + i, p) (packed, npix apart),
   zero past the last channel. */
static void transpose_channels(const job_t *j, const float *x, size_t m0, float *xt) {
    size_t bw = block_width(), npix = j->l.npix, m = j->g->out_c, p8 = npix / 8 * 8;
    float *to = xt + (m0 / bw) * npix * bw + m0 % bw;
    if (m0 + 8 <= m)
        for (size_t p0 = 0; p0 < p8; p0 += 8) bp_transpose8x8(x + m0 * npix + p0, npix, to + p0 * bw, bw);
    for (size_t p = m0 + 8 <= m ? p8 : 0; p < npix; p++)
        for (size_t i = 0; i < 8; i++) to[p * bw + i] = m0 + i < m ? x[(m0 + i) * npix + p] : 0.0f;
}

/* Claims and makes the window's transposes until the first `end` are claimed. */
static void make_transposes_through(job_t *j, size_t end) {
    size_t total = j->nb * j->units;
    while (atomic_load_explicit(&j->claimed, memory_order_relaxed) < end) {
        size_t u = atomic_fetch_add_explicit(&j->claimed, 1, memory_order_relaxed);
        if (u >= total) return;
        size_t i = u / j->units;
        transpose_channels(j, j->x + (j->b0 + i) * j->x_bs, u % j->units * TRANSPOSE_ROWS, slot_xt(j, i));
        bp_progress_add(&j->made[i], 1);
    }
}

/* The zero-bordered planes of dz channels [c0, c0 + n) of one image. */
static void border_planes(const job_t *j, const float *dz, size_t c0, size_t n, float *planes) {
    const bp_geom *g = j->g;
    const bp_image *img = j->dz_img;
    size_t hp = j->l.hp, wp = j->l.wp;
    memset(planes, 0, n * hp * wp * sizeof(float));
    /* plane column q holds dz column q - pl, row r dz row r - pt */
    size_t q0 = g->pl, q1 = bp_min(wp, g->in_w + g->pl), r0 = g->pt, r1 = bp_min(hp, g->in_h + g->pt);
    for (size_t c = 0; c < n; c++)
        for (size_t r = r0; r < r1; r++) {
            const float *from = dz + (c0 + c) * img->sc + (r - g->pt) * img->sy;
            float *row = planes + (c * hp + r) * wp;
            if (img->sx == 1) memcpy(row + q0, from, (q1 > q0 ? q1 - q0 : 0) * sizeof(float));
            else
                for (size_t q = q0; q < q1; q++) row[q] = from[(q - g->pl) * img->sx];
        }
}

/* dW's columns of channels [c0, c1) (beta 0 or 1: add) from acc ([c - c0, ky, kx][m_pad]). */
static void store_columns(const job_t *j, const float *acc, size_t c0, size_t c1) {
    const bp_geom *g = j->g;
    size_t taps = g->kh * g->kw, nk = (c1 - c0) * taps, m = g->out_c, ld = j->l.m_pad, k8 = nk / 8 * 8, m8 = m / 8 * 8;
    float *dw = j->dw + c0 * taps;
    float t[64];
    for (size_t m0 = 0; m0 < m8; m0 += 8)
        for (size_t k0 = 0; k0 < k8; k0 += 8) {
            float *to = dw + m0 * g->k + k0;
            if (!j->add) {
                bp_transpose8x8(acc + k0 * ld + m0, ld, to, g->k);
                continue;
            }
            bp_transpose8x8(acc + k0 * ld + m0, ld, t, 8);
            for (size_t r = 0; r < 8; r++)
                for (size_t i = 0; i < 8; i++) to[r * g->k + i] += t[r * 8 + i];
        }
    for (size_t r = 0; r < m; r++)
        for (size_t k = r < m8 ? k8 : 0; k < nk; k++) {
            float v = acc[k * ld + r];
            dw[r * g->k + k] = j->add ? dw[r * g->k + k] + v : v;
        }
}

/* The S output rows [y0, y1) whose kernel row ky reads dz rows (the others read the border's zeros). */
static void rows_reading_dz(const bp_geom *g, size_t ky, size_t *y0, size_t *y1) {
    size_t top = ky * g->dy, first = g->pt, end = g->pt + g->in_h; /* plane rows holding dz: [first, end) */
    *y0 = top >= first ? 0 : bp_ceil_div(first - top, g->sy);
    *y1 = top >= end ? 0 : bp_min(g->out_h, bp_ceil_div(end - top, g->sy));
    if (*y1 < *y0) *y1 = *y0;
}

/* The sums of dz channels [c0, c0 + n) (a chunk) over image i of the window (its transposes made);
   planes and off: the worker's. */
static void sum_image(const job_t *j, size_t c0, size_t n, size_t i, float *planes, const int32_t *off) {
    const bp_geom *g = j->g;
    const layout *l = &j->l;
    size_t b = j->b0 + i, bw = block_width(), blocks = l->m_pad / bw;
    const float *xt = slot_xt(j, i);
    float *acc = acc_of(j, c0);
    border_planes(j, j->dz + b * j->dz_bs, c0, n, planes);
    for (size_t ky = 0; ky < g->kh; ky++) {
        size_t y0, y1;
        rows_reading_dz(g, ky, &y0, &y1);
        size_t p0 = y0 * g->out_w, k = (y1 - y0) * g->out_w;
        for (size_t c = 0; c < n; c++) {
            const float *row = planes + (c * l->hp + ky * g->dy) * l->wp;
            float *at = acc + (c * g->kh + ky) * g->kw * l->m_pad;
            for (size_t t = 0; t < blocks; t++)
                bp_direct_pixels_tile(PIX_MV_MAX, g->kw, row, off + p0, k, xt + (t * l->npix + p0) * bw, at + t * bw,
                                      l->m_pad, b > 0);
        }
    }
}

static void worker(void *arg, int w, int workers) {
    (void)workers;
    job_t *j = arg;
    const bp_geom *g = j->g;
    const layout *l = &j->l;
    float *planes = slot_xt(j, (size_t)w) + l->npix * l->m_pad;
    int32_t *off = (int32_t *)(planes + CHANNEL_CHUNK * l->hp * l->wp);
    for (size_t y = 0, p = 0; y < g->out_h; y++)
        for (size_t x = 0; x < g->out_w; x++, p++) off[p] = (int32_t)(y * g->sy * l->wp + x * g->sx);
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next_chunk, 1, memory_order_relaxed)) < l->chunks;) {
        size_t c0 = t * CHANNEL_CHUNK, n = bp_min(CHANNEL_CHUNK, g->in_c - c0);
        for (size_t i = 0; i < j->nb; i++) {
            make_transposes_through(j, (i + 1) * j->units);
            bp_progress_wait(&j->made[i], (int)j->units);
            sum_image(j, c0, n, i, planes, off);
        }
        if (j->b0 + j->nb == j->batch) store_columns(j, acc_of(j, c0), c0, c0 + n);
    }
}

bool bp_transposed_weight_gradient(const bp_geom *g, size_t batch, const bp_image *dz_img, const float *dz,
                                   size_t dz_bs, const float *x, size_t x_bs, float *dw, bool add, const bp_scratch *s,
                                   int threads) {
    size_t flops = 2 * batch * g->out_c * g->out_h * g->out_w * g->k;
    int workers = bp_workers_for(threads, flops);
    if ((size_t)workers > g->in_c) workers = (int)g->in_c;
    job_t j = {.g = g, .batch = batch, .dz_img = dz_img, .dz = dz, .x = x, .dz_bs = dz_bs, .x_bs = x_bs, .dw = dw,
               .add = add, .s = s};
    layout_for(g, workers, &j.l);
    j.units = j.l.m_pad / TRANSPOSE_ROWS;
    if (batch == 0 || !takes(g, &j.l) || worker_floats(g, &j.l) > s->stride) return false;
    for (j.b0 = 0; j.b0 < batch; j.b0 += j.nb) {
        j.nb = bp_min(j.l.slots, batch - j.b0);
        atomic_store_explicit(&j.claimed, 0, memory_order_relaxed);
        atomic_store_explicit(&j.next_chunk, 0, memory_order_relaxed);
        memset(j.made, 0, sizeof j.made);
        bp_parallel_run(workers, worker, &j);
    }
    return true;
}
