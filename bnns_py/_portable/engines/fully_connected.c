/* The forward pass of fully-connected layers at small batches: Y (batch x n) = X (batch x k) W^T
   with W (n x k) read where it is, on the fully-connected kernel (kernels/fc_tiles.c). A tile
   holds a block of outputs for up to FC_NB_MAX batch rows, so every row of W is read from memory
   once per call (a general GEMM at M = batch streams it once per few rows of X instead); larger
   batches are cut into blocks of equal size, and a block of outputs stays in cache while the
   batch blocks read it. Workers take ranges of outputs. */
#include "fc_kernels.h"
#include "internal.h"
#include "parallel.h"

enum { TASKS_PER_WORKER = 4 };

typedef struct {
    const float *w;
    size_t ldw, n, k, batch;
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

static void run_tasks(void *arg, int worker, int workers) {
    fc_job *j = arg;
    (void)worker;
    (void)workers;
    size_t units = bp_ceil_div(j->n, j->mr);
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->tasks;) {
        size_t u0, u1;
        bp_split(units, (int)t, (int)j->tasks, &u0, &u1);
        run_outputs(j, u0 * j->mr, bp_min(u1 * j->mr, j->n));
    }
}

void bp_fc_forward(const float *w, size_t ldw, size_t n, size_t k, size_t batch, const float *x, size_t ldx, float *y,
                   size_t ldy, const bp_epilogue *e, int threads) {
    if (batch == 0 || n == 0) return;
    fc_job j = {w, ldw, n, k, batch, x, ldx, y, ldy, e, 0.0f, 0.0f, bp_ceil_div(batch, FC_NB_MAX), 0, 0, 0, 0};
    j.nb = bp_ceil_div(batch, j.blocks);
    j.mr = bp_fc_tile_rows(j.nb);
    bool clamp = bp_clamp_bounds(e->act, &j.lo, &j.hi);
    int workers = bp_workers_for(threads, 2 * batch * n * k);
    j.tasks = bp_min(bp_ceil_div(n, j.mr), TASKS_PER_WORKER * (size_t)workers);
    if ((size_t)workers > j.tasks) workers = (int)j.tasks;
    bp_parallel_run(workers, run_tasks, &j);
    if (!clamp)
        for (size_t b = 0; b < batch; b++) bp_activation_apply_image(e->act, y + b * ldy, n, 1, 1);
}
