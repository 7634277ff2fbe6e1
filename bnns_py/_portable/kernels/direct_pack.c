/* The direct engine's weight packing kernel: a block of weight rows (output channels, their
   reduction steps consecutive) transposed into the pixels kernel's layout, a row of channels per
   step. AVX-512 transposes 16 x 16 blocks in registers (each step's 16 values a whole cache line
   of the packed block, 0.4 instructions a value against 0.6 for 8 x 8 blocks: the packing is
   ~15 % of a call of ResNet's 512-channel 7x7 layer at batch 1, whose weights come from the
   caller); the other tiers 8 x 8 blocks (simd.h). */
#include "direct_plan.h"

#if defined(__AVX512F__)
/* r[i] lane j = r[j] lane i (the standard unpack / shuffle / 128-bit-lane network). */
static inline void transpose16x16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
}
#endif

void bp_direct_transpose_rows(const float *src, size_t lds, size_t rows, size_t n, float *dst, size_t ldd) {
    size_t r0 = 0, n8 = n / 8 * 8;
#if defined(__AVX512F__)
    size_t n16 = n / 16 * 16;
    for (; r0 + 16 <= rows; r0 += 16) {
        const float *s = src + r0 * lds;
        for (size_t k = 0; k < n16; k += 16) {
            __m512 v[16];
            for (size_t r = 0; r < 16; r++) { /* 4 lines ahead: the hardware's prefetch lags 16 streams */
                __builtin_prefetch(s + r * lds + k + 64, 0, 3);
                v[r] = _mm512_loadu_ps(s + r * lds + k);
            }
            transpose16x16(v);
            for (size_t i = 0; i < 16; i++) _mm512_storeu_ps(dst + (k + i) * ldd + r0, v[i]);
        }
        for (size_t k = n16; k < n; k++)
            for (size_t r = 0; r < 16; r++) dst[k * ldd + r0 + r] = s[r * lds + k];
    }
#endif
    /* 16 rows read front to back at a time where there are (streams the prefetcher follows) */
    for (size_t nr; r0 + 8 <= rows; r0 += nr) {
        nr = r0 + 16 <= rows ? 16 : 8;
        for (size_t k = 0; k < n8; k += 8) {
            if ((k & 15) == 0)
                for (size_t r = r0; r < r0 + nr; r++) __builtin_prefetch(src + r * lds + k + 64, 0, 3);
            for (size_t r = r0; r < r0 + nr; r += 8) bp_transpose8x8(src + r * lds + k, lds, dst + k * ldd + r, ldd);
        }
        for (size_t k = n8; k < n; k++)
            for (size_t r = r0; r < r0 + nr; r++) dst[k * ldd + r] = src[r * lds + k];
    }
    for (; r0 < rows; r0++)
        for (size_t k = 0; k < n; k++) dst[k * ldd + r0] = src[r0 * lds + k];
}
