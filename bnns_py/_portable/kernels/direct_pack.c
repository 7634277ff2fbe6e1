/* The direct engine's weight packing kernel: a block of weight rows (output channels, their
   reduction steps consecutive) transposed into the pixels kernel's layout, a row of channels per
   step. AVX-512 transposes 16 rows x 8 steps at a time in registers (each step's 16 values a whole
   cache line of the packed block, 24 shuffles per 128 values against 32 for two 8 x 8 blocks: the
   packing is ~15 % of a call of ResNet's 512-channel 7x7 layer at batch 1, whose weights come from
   the caller); the other tiers 8 x 8 blocks (simd.h). */
#include "direct_plan.h"

#if defined(__AVX512F__)
/* Rows 0..15 of a block, steps 0..7 of each (rows lds apart): out[j] = step j of the 16 rows. Each
   register holds two rows' 8 steps (rows r and r + 4, or r + 8 and r + 12), so that the 8 x 8
   network (unpack, shuffle within 128-bit lanes) leaves each step's 4-row quarters where one
   128-bit-lane shuffle of two registers gathers them: 16 registers live, none spilled. */
static inline void transpose16x8(const float *src, size_t lds, __m512 out[8]) {
    __m512 z[8], t[8];
    for (size_t r = 0; r < 4; r++)
        for (size_t h = 0; h < 2; h++) {
            const float *a = src + (r + 8 * h) * lds, *b = a + 4 * lds;
            z[r + 4 * h] = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(a))),
                                                               _mm256_castps_pd(_mm256_loadu_ps(b)), 1));
        }
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_ps(z[i], z[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(z[i], z[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        z[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        z[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        z[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        z[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) { /* z[j]: rows 0-3 and 8-11, z[j + 4]: rows 4-7 and 12-15, steps j and j + 4 */
        out[j] = _mm512_shuffle_f32x4(z[j], z[j + 4], 0x88);
        out[j + 4] = _mm512_shuffle_f32x4(z[j], z[j + 4], 0xDD);
    }
}
#endif

void bp_direct_transpose_rows(const float *src, size_t lds, size_t rows, size_t n, float *dst, size_t ldd) {
    size_t r0 = 0, n8 = n / 8 * 8;
#if defined(__AVX512F__)
    for (; r0 + 16 <= rows; r0 += 16) {
        const float *s = src + r0 * lds;
        for (size_t k = 0; k < n8; k += 8) {
            if ((k & 15) == 0) /* 4 lines ahead: the hardware's prefetch lags 16 streams */
                for (size_t r = 0; r < 16; r++) __builtin_prefetch(s + r * lds + k + 64, 0, 3);
            __m512 v[8];
            transpose16x8(s + k, lds, v);
            for (size_t j = 0; j < 8; j++) _mm512_storeu_ps(dst + (k + j) * ldd + r0, v[j]);
        }
        for (size_t k = n8; k < n; k++)
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
