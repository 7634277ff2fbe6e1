/* The direct engine's strided stores, AVX-512 (the other tiers: direct_store_generic.c). */
#include "direct_plan.h"

#if defined(__AVX512F__)
void bp_direct_store_every_other(float *p, const float *v, size_t n, float bias) {
    size_t i = 0;
    __m512 b = _mm512_set1_ps(bias);
    for (; i + 8 <= n; i += 8) { /* 8 values spread over the even lanes of 16, stored under a mask */
        __m512 x = _mm512_maskz_expand_ps(0x5555, _mm512_castps256_ps512(_mm256_loadu_ps(v + i)));
        _mm512_mask_storeu_ps(p + 2 * i, 0x5555, _mm512_add_ps(x, b));
    }
    for (; i < n; i++) p[2 * i] = v[i] + bias;
}
#endif
