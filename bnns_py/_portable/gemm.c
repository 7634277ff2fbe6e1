/* Single-precision GEMM: OpenBLAS from scipy-openblas32, a system CBLAS, or a built-in kernel. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS)
#include <cblas.h>
#define SGEMM scipy_cblas_sgemm
const char *bp_blas_name(void) { return "OpenBLAS (scipy-openblas32)"; }
/* OpenBLAS's thread count is process-wide (the _local variant is not exported by this build):
   set it only when a filter asks for a different count than is in force. Filters with different
   n_threads used at the same time may therefore run with each other's count (never wrong results). */
static void use_threads(int n) {
    if (scipy_openblas_get_num_threads() != n) scipy_openblas_set_num_threads(n);
}
#elif defined(BNNS_PORTABLE_BLAS_CBLAS)
#include <cblas.h>
#define SGEMM cblas_sgemm
const char *bp_blas_name(void) { return "system CBLAS"; }
static void use_threads(int n) { (void)n; }  /* the system BLAS manages its own threads */
#endif

#if defined(SGEMM)
void bp_sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
              const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc,
              int threads) {
    if (m == 0 || n == 0) return;
    use_threads(threads);
    SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
          (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}
#else
const char *bp_blas_name(void) { return "built-in blocked GEMM"; }

/* Blocked plain-C GEMM: packs op(A) and op(B) panels so the inner loop is unit-stride. */
void bp_sgemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
              const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc,
              int threads) {
    (void)threads;
    for (size_t i = 0; i < m; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f) memset(row, 0, n * sizeof(float));
        else if (beta != 1.0f) for (size_t j = 0; j < n; j++) row[j] *= beta;
    }
    enum { KB = 128, NB = 512 };
    float bpanel[KB * NB];
    for (size_t k0 = 0; k0 < k; k0 += KB) {
        size_t kb = k - k0 < KB ? k - k0 : KB;
        for (size_t n0 = 0; n0 < n; n0 += NB) {
            size_t nb = n - n0 < NB ? n - n0 : NB;
            for (size_t p = 0; p < kb; p++)
                for (size_t j = 0; j < nb; j++)
                    bpanel[p * nb + j] = trans_b ? b[(n0 + j) * ldb + k0 + p] : b[(k0 + p) * ldb + n0 + j];
            for (size_t i = 0; i < m; i++) {
                float *row = c + i * ldc + n0;
                for (size_t p = 0; p < kb; p++) {
                    float av = alpha * (trans_a ? a[(k0 + p) * lda + i] : a[i * lda + k0 + p]);
                    const float *bp = bpanel + p * nb;
                    for (size_t j = 0; j < nb; j++) row[j] += av * bp[j];
                }
            }
        }
    }
}
#endif

const char *bnns_portable_blas(void) { return bp_blas_name(); }
