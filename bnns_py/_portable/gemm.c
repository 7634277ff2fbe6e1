/* Single-precision GEMM for the portable backend: OpenBLAS from scipy-openblas32, a plain CBLAS,
   or a built-in cache-blocked kernel (see gemm.h for the build macros). */
#define _GNU_SOURCE /* dladdr, RTLD_NOLOAD (glibc); harmless elsewhere */
#include <string.h>
#include <unistd.h>

#include "gemm.h"

#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS) || defined(BNNS_PORTABLE_BLAS_CBLAS)
#include <cblas.h>
#include <dlfcn.h>

#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS)
#define SGEMM scipy_cblas_sgemm
#define LOCAL_SETTER_NAME "scipy_openblas_set_num_threads_local"
const char *bp_blas_name(void) { return "OpenBLAS (scipy-openblas32)"; }
#else
#define SGEMM cblas_sgemm
#define LOCAL_SETTER_NAME "openblas_set_num_threads_local"
const char *bp_blas_name(void) { return "system CBLAS"; }
#endif

/* The per-thread setter exists only in some OpenBLAS builds (the OpenMP ones; the pthreads build
   in scipy-openblas32 declares it in cblas.h but does not export it). Look it up in the library
   that provides SGEMM, without assuming it was loaded into the global symbol scope. */
static int (*find_local_setter(void))(int) {
    void (*sgemm_fn)(void) = (void (*)(void))SGEMM;
    void *sgemm_addr;
    memcpy(&sgemm_addr, &sgemm_fn, sizeof sgemm_addr);
    Dl_info info;
    if (dladdr(sgemm_addr, &info) == 0 || info.dli_fname == NULL) return NULL;
    void *handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL) return NULL;
    void *symbol = dlsym(handle, LOCAL_SETTER_NAME);
    dlclose(handle); /* the library stays loaded: this library links against it */
    int (*fn)(int) = NULL;
    if (symbol != NULL) memcpy(&fn, &symbol, sizeof fn);
    return fn;
}
#else
const char *bp_blas_name(void) { return "built-in blocked GEMM"; }
static int (*find_local_setter(void))(int) { return NULL; }
#endif

void bp_gemm_ctx_init(bp_gemm_ctx *ctx, size_t n_threads) {
    if (n_threads == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cpus > 0 ? (size_t)cpus : 1;
    }
    ctx->threads = n_threads > 4096 ? 4096 : (int)n_threads;
    ctx->set_threads_local = find_local_setter();
}

const char *bnns_portable_blas(void) { return bp_blas_name(); }

#if defined(SGEMM)

void bp_sgemm(const bp_gemm_ctx *ctx, bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
              const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    if (m == 0 || n == 0) return;
    int previous = 0;
    if (ctx->set_threads_local != NULL) {
        previous = ctx->set_threads_local(ctx->threads);
    } else {
#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS)
        /* No per-thread setter: the count is process-wide. Change it only when this filter asks
           for another one than is in force (filters with the default n_threads never change it).
           Two filters with different n_threads used at once may run with each other's count;
           results are unaffected. Only bnns-py uses this OpenBLAS copy (its symbols are prefixed). */
        if (scipy_openblas_get_num_threads() != ctx->threads) scipy_openblas_set_num_threads(ctx->threads);
#endif
    }
    SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n,
          (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
    if (ctx->set_threads_local != NULL) ctx->set_threads_local(previous);
}

#else /* built-in kernel */

/* Blocking: a KC x NC tile of op(B) is packed row-major on the stack (32 KiB, L1/L2 resident),
   MR rows of op(A) are packed per KC slice (scaled by alpha), and an MR x NR block of C is
   accumulated in registers (fixed trip counts, so the compiler vectorizes the inner loops). */
enum { KC = 128, NC = 64, MR = 4, NR = 16 };

static void kernel_full(size_t kb, const float *ap, const float *bp, size_t bstride, float *c, size_t ldc) {
    float acc[MR][NR];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) acc[r][j] = 0.0f;
    for (size_t p = 0; p < kb; p++) {
        const float *brow = bp + p * bstride;
        for (int r = 0; r < MR; r++) {
            float av = ap[r * KC + p];
            for (int j = 0; j < NR; j++) acc[r][j] += av * brow[j];
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) c[r * ldc + j] += acc[r][j];
}

static void kernel_edge(size_t mr, size_t nr, size_t kb, const float *ap, const float *bp, size_t bstride, float *c,
                        size_t ldc) {
    for (size_t r = 0; r < mr; r++)
        for (size_t j = 0; j < nr; j++) {
            float s = 0.0f;
            for (size_t p = 0; p < kb; p++) s += ap[r * KC + p] * bp[p * bstride + j];
            c[r * ldc + j] += s;
        }
}

void bp_sgemm(const bp_gemm_ctx *ctx, bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
              const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    (void)ctx; /* single-threaded */
    for (size_t i = 0; i < m; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f) memset(row, 0, n * sizeof(float));
        else if (beta != 1.0f)
            for (size_t j = 0; j < n; j++) row[j] *= beta;
    }
    if (k == 0 || alpha == 0.0f) return;
    float btile[KC * NC];
    float apanel[MR * KC];
    for (size_t n0 = 0; n0 < n; n0 += NC) {
        size_t nb = n - n0 < NC ? n - n0 : NC;
        for (size_t k0 = 0; k0 < k; k0 += KC) {
            size_t kb = k - k0 < KC ? k - k0 : KC;
            for (size_t p = 0; p < kb; p++) {
                float *dst = btile + p * nb;
                if (trans_b)
                    for (size_t j = 0; j < nb; j++) dst[j] = b[(n0 + j) * ldb + k0 + p];
                else
                    memcpy(dst, b + (k0 + p) * ldb + n0, nb * sizeof(float));
            }
            for (size_t i0 = 0; i0 < m; i0 += MR) {
                size_t mr = m - i0 < MR ? m - i0 : MR;
                for (size_t r = 0; r < mr; r++)
                    for (size_t p = 0; p < kb; p++)
                        apanel[r * KC + p] =
                            alpha * (trans_a ? a[(k0 + p) * lda + i0 + r] : a[(i0 + r) * lda + k0 + p]);
                float *cblock = c + i0 * ldc + n0;
                size_t j0 = 0;
                if (mr == MR)
                    for (; j0 + NR <= nb; j0 += NR) kernel_full(kb, apanel, btile + j0, nb, cblock + j0, ldc);
                if (j0 < nb) kernel_edge(mr, nb - j0, kb, apanel, btile + j0, nb, cblock + j0, ldc);
            }
        }
    }
}

#endif
