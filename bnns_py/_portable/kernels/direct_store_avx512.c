/* The direct engine's strided and transposed stores, AVX-512 (the other tiers:
   direct_store_generic.c). */
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

void bp_direct_store_block8(const float *src, size_t src_stride, const float bias[8], float lo, float hi, float *dst,
                            size_t dst_stride, size_t n) {
    const float *rows[8];
    for (size_t i = 0; i < 8; i++) rows[i] = src + i * src_stride;
    __m256 out[8], l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
    bp_transpose8x8_regs(rows, 0, out);
    __mmask8 keep = (__mmask8)(n >= 8 ? 0xff : (1u << n) - 1u);
    for (int i = 0; i < 8; i++) { /* the value as the second operand: a NaN stays NaN */
        __m256 v = _mm256_min_ps(h, _mm256_max_ps(l, _mm256_add_ps(out[i], _mm256_set1_ps(bias[i]))));
        _mm256_mask_storeu_ps(dst + (size_t)i * dst_stride, keep, v);
    }
}
#endif
