/* The direct engine's transposed stores and stride-2 row splits (every tier), and its strided
   stores on tiers without AVX-512 (which has direct_store_avx512.c). */
#include "direct_plan.h"

#if !defined(__AVX512F__)
void bp_direct_store_every_other(float *p, const float *v, size_t n, float bias) {
    for (size_t i = 0; i < n; i++) p[2 * i] = v[i] + bias;
}
#endif

void bp_direct_split_pairs(const float *src, size_t n, float *even, float *odd) { bp_deinterleave(src, n, even, odd); }

void bp_direct_store_transposed(const float *res, size_t ld, size_t channels, size_t n, const float *bias, float lo,
                                float hi, float *dst, size_t dst_stride) {
#if defined(__AVX__)
    __m256 l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
    for (size_t c0 = 0; c0 < channels; c0 += 8)
        for (size_t i = 0; i < n; i += 8) { /* an 8 x 8 block, the last reading up to 7 pixels past n */
            const float *rows[8];
            for (size_t r = 0; r < 8; r++) rows[r] = res + (i + r) * ld + c0;
            __m256 out[8];
            bp_transpose8x8_regs(rows, 0, out);
            float *to = dst + c0 * dst_stride + i;
            for (int c = 0; c < 8; c++) /* the value as the second operand: a NaN stays NaN */
                out[c] = _mm256_min_ps(h, _mm256_max_ps(l, _mm256_add_ps(out[c], _mm256_set1_ps(bias[c0 + c]))));
            if (n - i >= 8) {
                for (int c = 0; c < 8; c++) _mm256_storeu_ps(to + c * dst_stride, out[c]);
                continue;
            }
#if defined(__AVX512VL__)
            __mmask8 keep = (__mmask8)((1u << (n - i)) - 1u);
            for (int c = 0; c < 8; c++) _mm256_mask_storeu_ps(to + c * dst_stride, keep, out[c]);
#else
            __m256i keep =
                _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            for (int c = 0; c < 8; c++) _mm256_maskstore_ps(to + c * dst_stride, keep, out[c]);
#endif
        }
#else
    for (size_t c = 0; c < channels; c++)
        for (size_t i = 0; i < n; i++) {
            float v = res[i * ld + c] + bias[c];
            v = v < lo ? lo : v;
            dst[c * dst_stride + i] = v > hi ? hi : v;
        }
#endif
}
