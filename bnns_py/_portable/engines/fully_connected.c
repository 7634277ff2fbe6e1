/* The forward pass of fully-connected layers: Y (batch x n) = X (batch x k) W^T.

   Client weights, at small batches: W (n x k) read where it is, on the fully-connected kernel
   (kernels/fc_tiles.c). A tile holds a block of outputs for up to FC_NB_MAX batch rows, so every
   row of W is read from memory once per call (a general GEMM at M = batch streams it once per few
   rows of X instead); larger batches are cut into blocks of equal size, and a block of outputs
   stays in cache while the batch blocks read it. Workers take ranges of outputs.

   Weights a filter owns, at any batch (no slower than OpenBLAS's SGEMM at large ones): packed at
   creation into panels of the pointwise kernel's tile width of outputs (W^T, each panel's k rows
   consecutive), the filter's only copy of them. The pointwise kernel's tiles broadcast the batch
   rows' inputs against whole vectors of outputs, so no sum runs across a vector's lanes, and the
   panels are read in one sequential stream. */
#include <math.h>

#include "direct_plan.h"
#include "fc_kernels.h"
#include "internal.h"
#include "parallel.h"

#define PANEL (POINTWISE_NV_MAX * BP_VL) /* outputs per panel of packed weights */

enum { TASKS_PER_WORKER = 4 };

typedef struct {
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
} fc_job;

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

static void run_tasks(void *arg, int worker, int workers) {
    fc_job *j = arg;
    (void)worker;
    (void)workers;
    size_t unit = j->panels != NULL ? PANEL : j->mr, units = bp_ceil_div(j->n, unit);
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->tasks;) {
        size_t u0, u1;
        bp_split(units, (int)t, (int)j->tasks, &u0, &u1);
        if (j->panels == NULL) {
            run_outputs(j, u0 * unit, bp_min(u1 * unit, j->n));
            continue;
        }
        for (size_t u = u0; u < u1; u++) run_panel(j, u * unit);
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

void bp_fc_forward(const float *w, size_t ldw, const float *panels, size_t n, size_t k, size_t batch, const float *x,
                   size_t ldx, float *y, size_t ldy, const bp_epilogue *e, int threads) {
    if (batch == 0 || n == 0) return;
    fc_job j = {w, ldw, panels, n, k, batch, x, ldx, y, ldy, e, 0.0f, 0.0f, bp_ceil_div(batch, FC_NB_MAX), 0, 0, 0, 0};
    j.nb = bp_ceil_div(batch, j.blocks);
    j.mr = bp_fc_tile_rows(j.nb);
    bool clamp = bp_clamp_bounds(e->act, &j.lo, &j.hi);
    int workers = bp_workers_for(threads, 2 * batch * n * k);
    j.tasks = bp_min(bp_ceil_div(n, panels != NULL ? PANEL : j.mr), TASKS_PER_WORKER * (size_t)workers);
    if ((size_t)workers > j.tasks) workers = (int)j.tasks;
    bp_parallel_run(workers, run_tasks, &j);
    if (!clamp)
        for (size_t b = 0; b < batch; b++) bp_activation_apply_image(e->act, y + b * ldy, n, 1, 1);
}
