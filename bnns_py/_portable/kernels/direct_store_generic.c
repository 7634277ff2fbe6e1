/* The direct engine's strided and transposed stores, tiers without AVX-512 (which has
   direct_store_avx512.c). */
#include "direct_plan.h"

#if !defined(__AVX512F__)
void bp_direct_store_every_other(float *p, const float *v, size_t n, float bias) {
    for (size_t i = 0; i < n; i++) p[2 * i] = v[i] + bias;
}

void bp_direct_store_block8(const float *src, size_t src_stride, const float bias[8], float lo, float hi, float *dst,
                            size_t dst_stride, size_t n) {
#if defined(__AVX2__)
    const float *rows[8];
    for (size_t i = 0; i < 8; i++) rows[i] = src + i * src_stride;
    __m256 out[8], l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
    bp_transpose8x8_regs(rows, 0, out);
    __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)),
                                      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int i = 0; i < 8; i++) { /* the value as the second operand: a NaN stays NaN */
        __m256 v = _mm256_min_ps(h, _mm256_max_ps(l, _mm256_add_ps(out[i], _mm256_set1_ps(bias[i]))));
        _mm256_maskstore_ps(dst + (size_t)i * dst_stride, keep, v);
    }
#else
    for (size_t c = 0; c < 8; c++)
        for (size_t r = 0; r < n && r < 8; r++) {
            float v = src[r * src_stride + c] + bias[c];
            v = v < lo ? lo : v;
            dst[c * dst_stride + r] = v > hi ? hi : v;
        }
#endif
}
#endif
