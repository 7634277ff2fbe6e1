/* The direct engine's strided stores and loads, AVX-512 (the other tiers: direct_store_generic.c). */
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

void bp_direct_split_pairs(const float *src, size_t n, float *even, float *odd) {
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    size_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 a = _mm512_loadu_ps(src + 2 * j), b = _mm512_loadu_ps(src + 2 * j + 16);
        _mm512_storeu_ps(even + j, _mm512_permutex2var_ps(a, evens, b));
        _mm512_storeu_ps(odd + j, _mm512_permutex2var_ps(a, odds, b));
    }
    for (; j < n; j++) {
        even[j] = src[2 * j];
        odd[j] = src[2 * j + 1];
    }
}
#endif
