/*
 * bnns-py: functions the portable BNNS library exports beyond Apple's API.
 *
 * Parsed by cffi only when the portable backend is loaded; included by the portable C sources
 * after bnns.h. Plain C, no preprocessor lines (see bnns.h).
 */

/* Number of filters created and not yet destroyed, over the whole process. */
long bnns_portable_live_filter_count(void);

/* Number of filters created since the library was loaded. */
long bnns_portable_created_filter_count(void);

/* Why the last create or apply call on this thread failed ("" if it did not). BNNS itself only
   logs the reason; the portable library keeps it for callers that want it. */
const char *bnns_portable_last_error(void);

/* Version string of the portable library, and the BLAS it computes GEMMs with. */
const char *bnns_portable_version(void);
const char *bnns_portable_blas(void);

/* The scalar conversions the portable library uses for Float16 and BFloat16 data (round to
   nearest, ties to even; subnormals, infinities and NaNs kept). */
float bnns_portable_f16_to_f32(uint16_t h);
uint16_t bnns_portable_f32_to_f16(float f);
float bnns_portable_bf16_to_f32(uint16_t h);
uint16_t bnns_portable_f32_to_bf16(float f);
