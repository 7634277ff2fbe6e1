/* The forward pass of fully-connected layers: Y (batch x n) = X (batch x k) W^T.

   Client weights, at small batches: W (n x k) read where it is, on the fully-connected kernel
   (kernels/fc_tiles.c). A tile holds a block of outputs for up to FC_NB_MAX batch rows, so every
   row of W is read from memory once per call (a general GEMM at M = batch streams it once per few
   rows of X instead); larger batches are cut into blocks of equal size, and a block of outputs
   stays in cache while the batch blocks read it.

   Client weights, at batches of a vector and more (16-lane vectors and 32 registers): Y^T = W X^T.
   The batch rows' inputs are packed per call into panels of X^T (up to POINTWISE_NV_MAX vectors
   of batch items x k inputs; batch x k floats in all), and the pointwise kernel broadcasts W's
   values, its rows read in place, against a panel's vectors: tiles of POINTWISE_MR_MAX outputs x
   up to 3 vectors of batch items, so each row of W is read once per panel of up to 48 batch rows
   and no sum runs across a vector's lanes; each tile of Y^T is transposed into Y's rows. The rows
   past the last whole vector run on the tiles above, or in a last vector of zero-padded lanes.
   Workers take ranges of outputs of every batch row: no sum is split between them, so the results
   do not depend on the thread count.

   Weights a filter owns, at any batch (no slower than OpenBLAS's SGEMM at large ones): packed at
   creation into panels of the pointwise kernel's tile width of outputs (W^T, each panel's k rows
   consecutive), the filter's only copy of them. The pointwise kernel's tiles broadcast the batch
   rows' inputs against whole vectors of outputs, so no sum runs across a vector's lanes, and the
   panels are read in one sequential stream. */
#include <math.h>
#include <stdint.h>

#include "direct_plan.h"
#include "fc_kernels.h"
#include "internal.h"
#include "parallel.h"

#define PANEL (POINTWISE_NV_MAX * BP_VL) /* outputs per panel of packed weights */
#define BATCH_PANEL (POINTWISE_NV_MAX * BP_VL) /* the most batch items per panel of packed inputs */
#define OUTPUT_UNIT FC_MR_MAX /* outputs per unit of work with client weights (a multiple of POINTWISE_MR_MAX) */

enum { TASKS_PER_WORKER = 4 };

typedef struct fc_job fc_job;
struct fc_job {
    const float *w;
    size_t ldw;
    const float *panels; /* the packed weights, or NULL */
    size_t n, k, batch;
    const float *x;
    size_t ldx;
    float *y;
    size_t ldy;
    const bp_epilogue *e;
    float lo, hi;
    size_t blocks, nb, mr; /* batch blocks of nb or nb - 1 rows; outputs per tile */
    size_t tasks;
    _Atomic size_t next;
    const float *xt; /* the first `packed` batch rows packed into panels of X^T, or NULL */
    size_t packed;
    const fc_job *rest; /* the other rows, on the tiles, or NULL */
};

/* The tile of outputs [o, o + mr) for every batch block. */
static void run_tile(const fc_job *j, size_t o, size_t mr) {
    const bp_epilogue *e = j->e;
    float bias[FC_MR_MAX];
    for (size_t r = 0; r < mr; r++) bias[r] = e->bias != NULL ? e->bias[(o + r) * e->bias_stride] : 0.0f;
    size_t big = j->batch % j->blocks == 0 ? j->blocks : j->batch % j->blocks; /* blocks of nb rows */
    for (size_t blk = 0, b = 0; blk < j->blocks; blk++) {
        size_t nb = blk < big ? j->nb : j->nb - 1;
        bp_fc_tile(mr, nb, j->w + o * j->ldw, j->ldw, j->x + b * j->ldx, j->ldx, j->k, bias, j->lo, j->hi,
                   j->y + b * j->ldy + o, j->ldy);
        b += nb;
    }
}

/* Outputs [o0, o1): full tiles, the last one overlapping its predecessor (it writes the same
   values again) rather than a narrower tile; single rows when the range is narrower than a tile. */
static void run_outputs(const fc_job *j, size_t o0, size_t o1) {
    if (o1 - o0 < j->mr) {
        for (size_t o = o0; o < o1; o++) run_tile(j, o, 1);
        return;
    }
    for (size_t o = o0; o < o1; o += j->mr) run_tile(j, bp_min(o, o1 - j->mr), j->mr);
}

/* Outputs [o0, o0 + PANEL) (fewer in the last panel) of every batch row from the packed panel,
   then the bias and the clamp: blocks of up to POINTWISE_MR_MAX rows, a power of two each. */
static void run_panel(const fc_job *j, size_t o0) {
    static const float zeros[POINTWISE_MR_MAX];
    size_t n = bp_min(PANEL, j->n - o0), nv = bp_ceil_div(n, BP_VL), last = n - (nv - 1) * BP_VL;
    const float *panel = j->panels + o0 * j->k;
    for (size_t b = 0, mr; b < j->batch; b += mr) {
        mr = POINTWISE_MR_MAX;
        while (mr > j->batch - b) mr /= 2;
        bp_direct_pointwise_tile(mr, nv, panel, PANEL, j->k, j->x + b * j->ldx, j->ldx, 1, zeros, -INFINITY, INFINITY,
                                 j->y + b * j->ldy + o0, j->ldy, last);
    }
    const bp_epilogue *e = j->e;
    for (size_t b = 0; b < j->batch; b++) {
        float *y = j->y + b * j->ldy + o0;
        for (size_t o = 0; o < n; o++) {
            float v = y[o] + (e->bias != NULL ? e->bias[(o0 + o) * e->bias_stride] : 0.0f);
            v = v < j->lo ? j->lo : v; /* NaN kept */
            y[o] = v > j->hi ? j->hi : v;
        }
    }
}

/* dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols: 8 x 8 blocks in registers, the
   edges one value at a time. */
static void transpose(const float *src, size_t lds, size_t rows, size_t cols, float *dst, size_t ldd) {
    size_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
    for (size_t r = 0; r < r8; r += 8)
        for (size_t c = 0; c < c8; c += 8) bp_transpose8x8(src + r * lds + c, lds, dst + c * ldd + r, ldd);
    for (size_t r = 0; r < rows; r++)
        for (size_t c = r < r8 ? c8 : 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

/* The packed rows' panels: as few as hold up to POINTWISE_NV_MAX vectors each, with as even a
   share of vectors as may be (64 rows: two of 2 vectors, not 3 and 1). Panel `at` holds rows
   [*b0, *b1), its k rows of round_up(*b1 - *b0, BP_VL) values at xt + *b0 * k. */
static size_t panel_count(size_t packed) { return bp_ceil_div(bp_ceil_div(packed, BP_VL), POINTWISE_NV_MAX); }

static void panel_rows(size_t packed, size_t at, size_t *b0, size_t *b1) {
    size_t v0, v1;
    bp_split(bp_ceil_div(packed, BP_VL), (int)at, (int)panel_count(packed), &v0, &v1);
    *b0 = v0 * BP_VL;
    *b1 = bp_min(v1 * BP_VL, packed);
}

/* Outputs [o, o + mr) of the batch rows [b0, b0 + rows) as Y^T = W X^T: the pointwise kernel
   broadcasts W's values (rows read in place) against vectors of the packed panel of X^T, and the
   tile of Y^T, its bias and clamp applied, is copied into Y's rows. */
static void run_transposed_tile(const fc_job *j, const float *panel, size_t b0, size_t rows, size_t o, size_t mr) {
    size_t nv = bp_ceil_div(rows, BP_VL);
    const bp_epilogue *e = j->e;
    float bias[POINTWISE_MR_MAX], yt[POINTWISE_MR_MAX * BATCH_PANEL];
    for (size_t r = 0; r < mr; r++) bias[r] = e->bias != NULL ? e->bias[(o + r) * e->bias_stride] : 0.0f;
    bp_direct_pointwise_tile(mr, nv, panel, nv * BP_VL, j->k, j->w + o * j->ldw, j->ldw, 1, bias, j->lo, j->hi, yt,
                             BATCH_PANEL, rows - (nv - 1) * BP_VL);
    transpose(yt, BATCH_PANEL, mr, rows, j->y + b0 * j->ldy + o, j->ldy);
}

/* Outputs [o0, o1) of every batch row: the packed rows a panel at a time, each against the
   outputs' rows of W, in tiles of up to POINTWISE_MR_MAX outputs (powers of two); the rest of
   the rows on the tiles. */
static void run_transposed(const fc_job *j, size_t o0, size_t o1) {
    for (size_t at = 0, b0, b1; at < panel_count(j->packed); at++) {
        panel_rows(j->packed, at, &b0, &b1);
        for (size_t o = o0, mr; o < o1; o += mr) {
            mr = POINTWISE_MR_MAX;
            while (mr > o1 - o) mr /= 2;
            run_transposed_tile(j, j->xt + b0 * j->k, b0, b1 - b0, o, mr);
        }
    }
    if (j->rest != NULL) run_outputs(j->rest, o0, o1);
}

static size_t task_unit(const fc_job *j) {
    return j->panels != NULL ? PANEL : j->xt != NULL ? OUTPUT_UNIT : j->mr;
}

static void run_tasks(void *arg, int worker, int workers) {
    fc_job *j = arg;
    (void)worker;
    (void)workers;
    size_t unit = task_unit(j), units = bp_ceil_div(j->n, unit);
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->tasks;) {
        size_t u0, u1;
        bp_split(units, (int)t, (int)j->tasks, &u0, &u1);
        if (j->panels != NULL)
            for (size_t u = u0; u < u1; u++) run_panel(j, u * unit);
        else if (j->xt != NULL)
            run_transposed(j, u0 * unit, bp_min(u1 * unit, j->n));
        else
            run_outputs(j, u0 * unit, bp_min(u1 * unit, j->n));
    }
}

/* Packing X^T into panels (panel_rows), a range of panels per worker. */
typedef struct {
    const float *x;
    size_t ldx, k, packed;
    float *xt;
} pack_job;

static void pack_panels(void *arg, int worker, int workers) {
    const pack_job *p = arg;
    size_t p0, p1;
    bp_split(panel_count(p->packed), worker, workers, &p0, &p1);
    for (size_t at = p0, b0, b1; at < p1; at++) {
        panel_rows(p->packed, at, &b0, &b1);
        size_t rows = b1 - b0, width = bp_round_up(rows, BP_VL);
        float *panel = p->xt + b0 * p->k;
        transpose(p->x + b0 * p->ldx, p->ldx, rows, p->k, panel, width);
        for (size_t i = 0; i < p->k; i++) /* the last vector's other lanes, read but not stored */
            for (size_t b = rows; b < width; b++) panel[i * width + b] = 0.0f;
    }
}

size_t bp_fc_packed_floats(size_t n, size_t k) { return bp_round_up(n, PANEL) * k; }

void bp_fc_pack(const float *w, size_t ldw, size_t n, size_t k, float *panels) {
    for (size_t o0 = 0; o0 < n; o0 += PANEL)
        for (size_t i = 0; i < k; i++) {
            float *row = panels + o0 * k + i * PANEL;
            for (size_t o = 0; o < PANEL; o++) row[o] = o0 + o < n ? w[(o0 + o) * ldw + i] : 0.0f;
        }
}

void bp_fc_unpack(const float *panels, size_t n, size_t k, float *w) {
    for (size_t o = 0; o < n; o++)
        for (size_t i = 0; i < k; i++) w[o * k + i] = panels[(o - o % PANEL) * k + i * PANEL + o % PANEL];
}

/* Client weights: the batch rows that run as Y^T = W X^T, from batch BP_VL: whole vectors of
   them, and the rest (batch mod BP_VL rows) on the tiles, or in a last vector of zero-padded
   lanes when there are at least REST_PADDED_MIN of them (at 512 and 1280 inputs, the tiles took
   0.75-0.9 times as long at 1-8 rows, the padded vector 0.75-0.95 times at 15 and 12).
   With 16-lane vectors and 32 registers only: on the AVX2 tier, the kernel's 4 x 3 tiles ran at
   0.86-0.90 times the speed of OpenBLAS's SGEMM at batch 32 and 0.6-0.8 times the tiles' at
   batches 8-15 (Intel Xeon, Emerald Rapids, 2026-12). */
#define TRANSPOSED (BP_VREGS >= 32 && BP_VL >= 16)
#define REST_PADDED_MIN 12

static size_t transposed_rows(size_t batch) {
    size_t rest = batch % BP_VL;
    if (!TRANSPOSED || batch < BP_VL) return 0;
    return rest < REST_PADDED_MIN ? batch - rest : batch;
}

size_t bp_fc_client_batch_max(void) { return TRANSPOSED ? SIZE_MAX : 16; }

size_t bp_fc_inputs_floats(size_t batch, size_t k) { return bp_round_up(transposed_rows(batch), BP_VL) * k; }

/* A job of the tiles over batch rows [0, batch) of x. */
static fc_job tiles_job(const float *w, size_t ldw, size_t n, size_t k, size_t batch, const float *x, size_t ldx,
                        float *y, size_t ldy, const bp_epilogue *e, float lo, float hi) {
    fc_job j = {w, ldw, NULL, n, k, batch, x, ldx, y, ldy, e, lo, hi, bp_ceil_div(batch, FC_NB_MAX), 0, 0, 0, 0, NULL, 0,
                NULL};
    j.nb = bp_ceil_div(batch, j.blocks);
    j.mr = bp_fc_tile_rows(j.nb);
    return j;
}

void bp_fc_forward(const float *w, size_t ldw, const float *panels, float *inputs, size_t n, size_t k, size_t batch,
                   const float *x, size_t ldx, float *y, size_t ldy, const bp_epilogue *e, int threads) {
    if (batch == 0 || n == 0) return;
    float lo, hi;
    bool clamp = bp_clamp_bounds(e->act, &lo, &hi);
    int workers = bp_workers_for(threads, 2 * batch * n * k);
    size_t packed = panels != NULL || inputs == NULL ? 0 : transposed_rows(batch);
    fc_job j = tiles_job(w, ldw, n, k, batch, x, ldx, y, ldy, e, lo, hi), rest;
    j.panels = panels;
    if (packed > 0) {
        pack_job p = {x, ldx, k, packed, inputs};
        bp_parallel_run((int)bp_min((size_t)workers, panel_count(packed)), pack_panels, &p);
        j.xt = inputs;
        j.packed = packed;
        if (packed < batch) {
            rest = tiles_job(w, ldw, n, k, batch - packed, x + packed * ldx, ldx, y + packed * ldy, ldy, e, lo, hi);
            j.rest = &rest;
        }
    }
    j.tasks = bp_min(bp_ceil_div(n, task_unit(&j)), TASKS_PER_WORKER * (size_t)workers);
    if ((size_t)workers > j.tasks) workers = (int)j.tasks;
    bp_parallel_run(workers, run_tasks, &j);
    if (!clamp)
        for (size_t b = 0; b < batch; b++) bp_activation_apply_image(e->act, y + b * ldy, n, 1, 1);
}
