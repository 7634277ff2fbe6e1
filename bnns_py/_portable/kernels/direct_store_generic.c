/* The direct engine's strided stores, tiers without AVX-512 (which has direct_store_avx512.c). */
#include "direct_plan.h"

#if !defined(__AVX512F__)
void bp_direct_store_every_other(float *p, const float *v, size_t n, float bias) {
    for (size_t i = 0; i < n; i++) p[2 * i] = v[i] + bias;
}
#endif
