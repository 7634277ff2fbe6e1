/* The backward pass of fully-connected layers, the batch as the GEMMs' shared dimension:
   dW (out x in) = dZ^T (out x batch) X (batch x in) and dX (batch x in) = dZ (batch x out) W (out x in).

   Each product is cut into blocks of whole rows of dW (a range of outputs) or whole columns of dX
   (a range of inputs), so no two blocks write the same value and nothing is summed across workers;
   the block bounds follow from the sizes alone, so the results do not depend on the thread count.
   Workers take blocks in turn from one list holding both products' blocks, each on its own thread:
   a single-threaded GEMM (runtime/gemm.h), or the direct engine's pointwise kernel with operands
   read in place where that is quicker (measured on an Intel Xeon, Emerald Rapids): dX = dZ W with W's rows as the
   vectors and dZ's values broadcast, at batches up to 16 whose W columns of a tile stay in L2; and,
   when bp_sgemm is the built-in C kernel, dW = dZ^T X too, X's rows the vectors and dZ^T's values
   broadcast. The kernel computes whole vectors and overwrites; the columns past the last whole
   vector and accumulating calls go to the GEMM. */
#include <math.h>

#include "direct_plan.h"
#include "fully_connected_backward.h"
#include "parallel.h"

#define PANEL (POINTWISE_NV_MAX * BP_VL) /* columns of one tile of the pointwise kernel */

#if defined(BP_GEMM_BUILTIN)
#define BLAS_BUILTIN true
#else
#define BLAS_BUILTIN false
#endif

enum {
    BLOCKS_PER_PRODUCT = 8, /* enough for a few workers to balance, few enough to keep each GEMM large */
    BLOCK_ALIGN = 48,       /* block widths: whole tiles of the pointwise kernel on every tier */
    BLOCK_MIN = 48,
    KERNEL_DX_BATCH_MAX = 16,             /* beyond, OpenBLAS's packed GEMM is quicker */
    KERNEL_DX_PANEL_BYTES = 256 * 1024,   /* W's columns of a tile, re-read per 8 batch rows, stay in L2 */
};

typedef struct {
    const bp_fc_gradients *g;
    const bp_gemm_ctx *ctx;
    size_t dw_width, dw_blocks; /* outputs per block of dW, blocks */
    size_t dx_width, dx_blocks; /* inputs per block of dX, blocks */
    bool dx_kernel;             /* dX's whole vectors on the pointwise kernel */
    _Atomic size_t next;
} fc_backward_job;

/* The width of a product's blocks over n rows or columns. */
static size_t block_width(size_t n) {
    size_t width = bp_round_up(bp_ceil_div(n, BLOCKS_PER_PRODUCT), BLOCK_ALIGN);
    return width < BLOCK_MIN ? BLOCK_MIN : width;
}

/* y (rows x cols, rows ys apart; cols whole vectors) = A x on the pointwise kernel: x's k rows (xs
   apart) are its vectors, A(r, i) at a[r*ar + i*ai] its broadcast values. */
static void kernel_product(size_t rows, size_t cols, const float *a, size_t ar, size_t ai, const float *x, size_t xs,
                           size_t k, float *y, size_t ys) {
    static const float zeros[POINTWISE_MR_MAX];
    for (size_t c = 0; c < cols; c += PANEL) {
        size_t nv = bp_min(POINTWISE_NV_MAX, (cols - c) / BP_VL);
        for (size_t r = 0, mr; r < rows; r += mr) {
            mr = POINTWISE_MR_MAX;
            while (mr > rows - r) mr /= 2;
            bp_direct_pointwise_tile(mr, nv, x + c, xs, k, a + r * ar, ar, ai, zeros, -INFINITY, INFINITY,
                                     y + r * ys + c, ys, BP_VL);
        }
    }
}

/* dW rows [o0, o0 + n) = dZ[:, o0:o0+n]^T X. */
static void weight_block(const fc_backward_job *j, size_t o0, size_t n) {
    const bp_fc_gradients *g = j->g;
    if (g->dw_beta == 0.0f && BLAS_BUILTIN) {
        size_t whole = g->in / BP_VL * BP_VL;
        kernel_product(n, whole, g->dz + o0, 1, g->ldz, g->x, g->ldx, g->batch, g->dw + o0 * g->lddw, g->lddw);
        if (whole == g->in) return;
        bp_sgemm(j->ctx, true, false, n, g->in - whole, g->batch, 1.0f, g->dz + o0, g->ldz, g->x + whole, g->ldx,
                 0.0f, g->dw + o0 * g->lddw + whole, g->lddw);
        return;
    }
    bp_sgemm(j->ctx, true, false, n, g->in, g->batch, 1.0f, g->dz + o0, g->ldz, g->x, g->ldx, g->dw_beta,
             g->dw + o0 * g->lddw, g->lddw);
}

/* dX columns [i0, i0 + n) = dZ W[:, i0:i0+n]. */
static void input_block(const fc_backward_job *j, size_t i0, size_t n) {
    const bp_fc_gradients *g = j->g;
    if (g->dx_beta == 0.0f && j->dx_kernel) {
        size_t whole = n / BP_VL * BP_VL;
        kernel_product(g->batch, whole, g->dz, g->ldz, 1, g->w + i0, g->ldw, g->out, g->dx + i0, g->lddx);
        i0 += whole;
        n -= whole;
        if (n == 0) return;
    }
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
    fc_backward_job j = {g, ctx, block_width(g->out), 0, block_width(g->in), 0, false, 0};
    j.dx_kernel = BLAS_BUILTIN || (g->batch <= KERNEL_DX_BATCH_MAX &&
                                   g->out * PANEL * sizeof(float) <= KERNEL_DX_PANEL_BYTES);
    if (g->dw != NULL) j.dw_blocks = bp_ceil_div(g->out, j.dw_width);
    if (g->dx != NULL) j.dx_blocks = bp_ceil_div(g->in, j.dx_width);
    size_t products = (g->dw != NULL) + (g->dx != NULL), blocks = j.dw_blocks + j.dx_blocks;
    if (blocks == 0) return;
    int workers = bp_workers_for(ctx->threads, 2 * products * g->batch * g->in * g->out);
    if ((size_t)workers > blocks) workers = (int)blocks;
    bp_parallel_run(workers, run_blocks, &j);
}
