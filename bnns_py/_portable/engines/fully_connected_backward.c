/* The backward pass of fully-connected layers, the batch as the GEMMs' shared dimension:
   dW (out x in) = dZ^T (out x batch) X (batch x in) and dX (batch x in) = dZ (batch x out) W (out x in).

   Each product is cut into blocks of whole rows of dW (a range of outputs) or whole columns of dX
   (a range of inputs), so no two blocks write the same value and nothing is summed across workers;
   the block bounds follow from the sizes alone, so the results do not depend on the thread count.
   Workers take blocks in turn from one list holding both products' blocks. Every block is one
   single-threaded GEMM (runtime/gemm.h) on the worker that takes it. */
#include "fully_connected_backward.h"
#include "parallel.h"

enum {
    BLOCKS_PER_PRODUCT = 8, /* enough for a few workers to balance, few enough to keep each GEMM large */
    BLOCK_ALIGN = 16,       /* block widths: whole 64-byte lines of dX rows / of W's rows */
    BLOCK_MIN = 64,
};

typedef struct {
    const bp_fc_gradients *g;
    const bp_gemm_ctx *ctx;
    size_t dw_width, dw_blocks; /* outputs per block of dW, blocks */
    size_t dx_width, dx_blocks; /* inputs per block of dX, blocks */
    _Atomic size_t next;
} fc_backward_job;

/* The width of a product's blocks over n rows or columns. */
static size_t block_width(size_t n) {
    size_t width = bp_round_up(bp_ceil_div(n, BLOCKS_PER_PRODUCT), BLOCK_ALIGN);
    return width < BLOCK_MIN ? BLOCK_MIN : width;
}

/* dW rows [o0, o0 + n) = dZ[:, o0:o0+n]^T X. */
static void weight_block(const fc_backward_job *j, size_t o0, size_t n) {
    const bp_fc_gradients *g = j->g;
    bp_sgemm(j->ctx, true, false, n, g->in, g->batch, 1.0f, g->dz + o0, g->ldz, g->x, g->ldx, g->dw_beta,
             g->dw + o0 * g->lddw, g->lddw);
}

/* dX columns [i0, i0 + n) = dZ W[:, i0:i0+n]. */
static void input_block(const fc_backward_job *j, size_t i0, size_t n) {
    const bp_fc_gradients *g = j->g;
    bp_sgemm(j->ctx, false, false, g->batch, n, g->out, 1.0f, g->dz, g->ldz, g->w + i0, g->ldw, g->dx_beta,
             g->dx + i0, g->lddx);
}

static void run_blocks(void *arg, int worker, int workers) {
    fc_backward_job *j = arg;
    (void)worker;
    (void)workers;
    size_t total = j->dw_blocks + j->dx_blocks;
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < total;) {
        if (t < j->dw_blocks) {
            size_t o0 = t * j->dw_width;
            weight_block(j, o0, bp_min(j->dw_width, j->g->out - o0));
        } else {
            size_t i0 = (t - j->dw_blocks) * j->dx_width;
            input_block(j, i0, bp_min(j->dx_width, j->g->in - i0));
        }
    }
}

void bp_fc_backward(const bp_fc_gradients *g, const bp_gemm_ctx *ctx) {
    if (g->batch == 0 || g->in == 0 || g->out == 0) return;
    fc_backward_job j = {g, ctx, block_width(g->out), 0, block_width(g->in), 0, 0};
    if (g->dw != NULL) j.dw_blocks = bp_ceil_div(g->out, j.dw_width);
    if (g->dx != NULL) j.dx_blocks = bp_ceil_div(g->in, j.dx_width);
    size_t products = (g->dw != NULL) + (g->dx != NULL);
    int workers = bp_workers_for(ctx->threads, 2 * products * g->batch * g->in * g->out);
    size_t blocks = j.dw_blocks + j.dx_blocks;
    if ((size_t)workers > blocks) workers = (int)blocks;
    bp_parallel_run(workers, run_blocks, &j);
}
