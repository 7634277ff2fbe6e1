/*
 * bnns-py: functions the portable BNNS library exports beyond Apple's API.
 *
 * Parsed by cffi together with bnns.h when bnns_py is imported (bnns_py/_ffi.py), whichever backend
 * is used; included by the portable C sources after bnns.h. Plain C, no preprocessor lines (see
 * bnns.h).
 */

/* Number of filters created and not yet destroyed, over the whole process. */
long bnns_portable_live_filter_count(void);

/* Number of filters created since the library was loaded. */
long bnns_portable_created_filter_count(void);

/* The same for the client-pointer twins that backward on a filter owning its weights runs on: one
   per such filter, made at its first backward call and destroyed with it. */
long bnns_portable_live_twin_count(void);
long bnns_portable_created_twin_count(void);

/* The worker pool, counted since the library loaded: runs handed to more than one thread, the
   threads those runs used in all (the caller included), runs that wanted several threads but ran
   on the caller alone because another caller held the pool, and workers' shares the caller ran
   itself because the worker had not started them when the caller finished its own (a worker
   still waking up, or descheduled by another process); and the times a worker polling for its
   next run gave its core to another thread. */
long bnns_portable_pool_parallel_runs(void);
long bnns_portable_pool_threads_used(void);
long bnns_portable_pool_busy_runs(void);
long bnns_portable_pool_taken_over(void);
long bnns_portable_pool_polling_yields(void);

/* Why the last create or apply call on this thread failed ("" if it did not). BNNS itself only
   logs the reason; the portable library keeps it for callers that want it. */
const char *bnns_portable_last_error(void);

/* Version string of the portable library, the BLAS it computes GEMMs with, and the vector width
   of the selected tier's kernels ("AVX-512", "AVX2", "4-lane"). */
const char *bnns_portable_version(void);
const char *bnns_portable_blas(void);
const char *bnns_portable_simd(void);

/* The vector tier the engines run on in this process: the widest the CPU runs ("baseline",
   "avx2", "avx512" on x86-64; "neon" on aarch64; "native" for a -Dnative=true build; "generic"
   elsewhere), or the one the environment variable BNNS_PY_ISA names, read once when the library
   loads. "none" when BNNS_PY_ISA names a tier the CPU or the build lacks: every filter creation
   then fails, and bnns_portable_isa_error says why ("" otherwise). isa_available lists the tiers
   this CPU runs, lowest first, separated by spaces. */
const char *bnns_portable_isa(void);
const char *bnns_portable_isa_available(void);
const char *bnns_portable_isa_error(void);

/* The scalar conversions the portable library uses for Float16 and BFloat16 data (round to
   nearest, ties to even; subnormals, infinities and NaNs kept). */
float bnns_portable_f16_to_f32(uint16_t h);
uint16_t bnns_portable_f32_to_f16(float f);
float bnns_portable_bf16_to_f32(uint16_t h);
uint16_t bnns_portable_f32_to_bf16(float f);

/* Which kernels compute a portable filter's pass in a call of `batch` images (in the filter's own
   layouts): pass 0 is the layer's forward pass (BNNSFilterApply*), 1 its input gradient and 2 its
   weight gradient (BNNSFilterApplyBackward*). "direct rows" / "direct row vectors" /
   "direct pixels" / "direct flat pixels" are the direct convolution engine's kernels for passes
   0 and 1, "direct pointwise" its 1x1 kernel, "direct panel" that kernel on each image's im2col
   panel, "direct" its weight gradient; "winograd" the Winograd pass (forward, and the input and
   weight gradients of client-pointer filters, each from a batch that pays); "depthwise" the
   depthwise kernels (one input channel per group), "tiny" the tiny-layer forward kernel,
   "im2col" the im2col + GEMM path; "" for a NULL filter, another pass or a batch of 0. The
   environment variable BNNS_PY_PORTABLE_ENGINE (auto, rows, pixels, flat-pixels, im2col,
   winograd, pointwise, panel), read when a filter is created, overrides the choice. */
const char *bnns_portable_filter_engine(BNNSFilter filter, int pass, size_t batch);

/* Bytes a portable filter holds for its calls: its workspace, the weight-gradient sums the first
   backward call on the Winograd pass reserves, and the same of the client-pointer twin that
   backward on a filter owning its weights runs on (0 for a NULL filter). */
size_t bnns_portable_filter_reserved_bytes(BNNSFilter filter);
