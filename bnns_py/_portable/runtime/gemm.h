/* bnns-py portable backend: the one place that knows which BLAS computes the GEMMs.

   Build macros (pick at most one):
     BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS  OpenBLAS from the scipy-openblas32 wheel (scipy_ prefixed symbols)
     BNNS_PORTABLE_BLAS_CBLAS           any plain CBLAS (cblas_sgemm), e.g. Accelerate or a system OpenBLAS
     (neither)                          the built-in cache-blocked C kernel in gemm.c */
#ifndef BNNS_PORTABLE_GEMM_H
#define BNNS_PORTABLE_GEMM_H

#include <stdbool.h>
#include <stddef.h>

#if !defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS) && !defined(BNNS_PORTABLE_BLAS_CBLAS)
#define BP_GEMM_BUILTIN 1 /* bp_sgemm is the built-in kernel: the engines' own kernels outrun it */
#endif

/* How a filter runs its GEMMs: the thread count it asked for and, when the BLAS has one, the
   per-calling-thread thread-count setter (looked up once per filter, never cached globally). */
typedef struct {
    int threads;
    int (*set_threads_local)(int); /* returns the previous value; NULL if the BLAS has none */
} bp_gemm_ctx;

/* n_threads as BNNSFilterParameters gives it (0: the number of online CPUs). */
void bp_gemm_ctx_init(bp_gemm_ctx *ctx, size_t n_threads);

/* Row-major C (m x n) = alpha * op(A) * op(B) + beta * C, op(A) m x k, op(B) k x n.
   beta == 0 overwrites C (C may hold NaN or garbage). Runs on the calling thread. Dimensions must fit in int (checked at
   filter creation). */
void bp_sgemm(const bp_gemm_ctx *ctx, bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
              const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc);

/* The same GEMM split over the worker pool (ctx->threads workers at most). */
void bp_sgemm_parallel(const bp_gemm_ctx *ctx, bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                       const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc);

/* Human-readable name of the BLAS in use (bnns_portable_blas()). */
const char *bp_blas_name(void);

#endif
