/* Single-precision GEMM for the portable backend: OpenBLAS from scipy-openblas32, a plain CBLAS,
   or a built-in cache-blocked kernel (see gemm.h for the build macros). */
#define _GNU_SOURCE /* dladdr, RTLD_NOLOAD (glibc); harmless elsewhere */
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "gemm.h"
#include "parallel.h"

#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS) || defined(BNNS_PORTABLE_BLAS_CBLAS)
#if defined(__APPLE__) && defined(BNNS_PORTABLE_BLAS_CBLAS)
#include <Accelerate/Accelerate.h> /* its CBLAS: macOS has no cblas.h on the default include path */
#else
#include <cblas.h>
#endif
#include <dlfcn.h>

#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS)
#define SGEMM scipy_cblas_sgemm
#define LOCAL_SETTER_NAME "scipy_openblas_set_num_threads_local"
const char *bp_blas_name(void) { return "OpenBLAS (scipy-openblas32)"; }
#else
#define SGEMM cblas_sgemm
#define LOCAL_SETTER_NAME "openblas_set_num_threads_local"
#if defined(__APPLE__)
const char *bp_blas_name(void) { return "Accelerate (CBLAS)"; }
#else
const char *bp_blas_name(void) { return "system CBLAS"; }
#endif
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

/* CPUs this process may run on: its affinity mask where the system has one (taskset, cgroups
   cpusets), else the online CPUs. */
static size_t bp_available_cpus(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return (size_t)n;
    }
#endif
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus > 0 ? (size_t)cpus : 1;
}

void bp_gemm_ctx_init(bp_gemm_ctx *ctx, size_t n_threads) {
    if (n_threads == 0) n_threads = bp_available_cpus();
    ctx->threads = n_threads > 4096 ? 4096 : (int)n_threads;
    ctx->set_threads_local = find_local_setter();
#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS)
    /* once here, at filter creation, rather than racing from the first workers (see bp_sgemm) */
    if (ctx->set_threads_local == NULL && scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
#endif
}

const char *bnns_portable_blas(void) { return bp_blas_name(); }

#if defined(SGEMM)

/* Every GEMM runs on the calling thread: the filters split their work over bnns-py's own worker
   pool (parallel.c), and a multithreaded BLAS inside each worker would only oversubscribe the cores. */
void bp_sgemm(const bp_gemm_ctx *ctx, bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
              const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    if (m == 0 || n == 0) return;
    int previous = 0;
    if (ctx->set_threads_local != NULL) {
        previous = ctx->set_threads_local(1);
    } else {
#if defined(BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS)
        /* No per-thread setter: the count is process-wide. Only bnns-py uses this OpenBLAS copy
           (its symbols are prefixed), so it can stay at one thread for good. */
        if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
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
    (void)ctx;
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

/* ---- one GEMM over the worker pool: C split into column (or row) panels ---- */

typedef struct {
    const bp_gemm_ctx *ctx;
    bool trans_a, trans_b, by_rows;
    size_t m, n, k;
    float alpha, beta;
    const float *a, *b;
    size_t lda, ldb, ldc;
    float *c;
} gemm_job;

static void gemm_part(void *p, int worker, int workers) {
    const gemm_job *j = p;
    size_t total = j->by_rows ? j->m : j->n, unit = j->by_rows ? 8 : 16;
    size_t units = (total + unit - 1) / unit, u0, u1;
    bp_split(units, worker, workers, &u0, &u1);
    size_t lo = u0 * unit, hi = u1 * unit < total ? u1 * unit : total;
    if (lo >= hi) return;
    if (j->by_rows) {
        const float *a = j->a + (j->trans_a ? lo : lo * j->lda);
        bp_sgemm(j->ctx, j->trans_a, j->trans_b, hi - lo, j->n, j->k, j->alpha, a, j->lda, j->b, j->ldb, j->beta,
                 j->c + lo * j->ldc, j->ldc);
    } else {
        const float *b = j->b + (j->trans_b ? lo * j->ldb : lo);
        bp_sgemm(j->ctx, j->trans_a, j->trans_b, j->m, hi - lo, j->k, j->alpha, j->a, j->lda, b, j->ldb, j->beta,
                 j->c + lo, j->ldc);
    }
}

void bp_sgemm_parallel(const bp_gemm_ctx *ctx, bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                       const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c, size_t ldc) {
    if (m == 0 || n == 0) return;
    int workers = bp_workers_for(ctx->threads, m * n * (k + 1) / 4);
    if (workers <= 1) {
        bp_sgemm(ctx, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    gemm_job j = {ctx, trans_a, trans_b, m >= n, m, n, k, alpha, beta, a, b, lda, ldb, ldc, c};
    bp_parallel_run(workers, gemm_part, &j);
}
