/* bnns-py portable backend: the vector type of the direct convolution kernels (direct.c).

   One register-width vector of floats and the handful of operations the kernels need, for the
   widest instruction set the library is compiled for: AVX-512 (16 lanes, 32 registers), AVX2 +
   FMA (8 lanes, 16 registers), or GCC/Clang vector extensions (4 lanes: SSE2, NEON, or scalars).
   The library is built for the installing machine (-march=native), so the choice is made by the
   compiler's predefined macros. Every helper is static inline: vectors never cross a call
   boundary, whose ABI would depend on the instruction set. */
#ifndef BNNS_PORTABLE_SIMD_H
#define BNNS_PORTABLE_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define BP_VL 16
#define BP_VREGS 32
#define BP_SIMD_NAME "AVX-512"
typedef __m512 bp_vec;
static inline bp_vec bp_vload(const float *p) { return _mm512_loadu_ps(p); }
static inline void bp_vstore(float *p, bp_vec v) { _mm512_storeu_ps(p, v); }
static inline bp_vec bp_vset1(float s) { return _mm512_set1_ps(s); }
static inline bp_vec bp_vzero(void) { return _mm512_setzero_ps(); }
static inline bp_vec bp_vfma(bp_vec a, bp_vec b, bp_vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline bp_vec bp_vadd(bp_vec a, bp_vec b) { return _mm512_add_ps(a, b); }
/* min(hi, max(lo, x)), x as the second operand: a NaN stays NaN */
static inline bp_vec bp_vclamp(bp_vec x, bp_vec lo, bp_vec hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, x)); }
static inline float bp_vsum(bp_vec v) { return _mm512_reduce_add_ps(v); }
static inline void bp_vstream(float *p, bp_vec v) { _mm512_stream_ps(p, v); } /* p: 64-byte aligned */
static inline void bp_stream_fence(void) { _mm_sfence(); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define BP_VL 8
#define BP_VREGS 16
#define BP_SIMD_NAME "AVX2"
typedef __m256 bp_vec;
static inline bp_vec bp_vload(const float *p) { return _mm256_loadu_ps(p); }
static inline void bp_vstore(float *p, bp_vec v) { _mm256_storeu_ps(p, v); }
static inline bp_vec bp_vset1(float s) { return _mm256_set1_ps(s); }
static inline bp_vec bp_vzero(void) { return _mm256_setzero_ps(); }
static inline bp_vec bp_vfma(bp_vec a, bp_vec b, bp_vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline bp_vec bp_vadd(bp_vec a, bp_vec b) { return _mm256_add_ps(a, b); }
static inline bp_vec bp_vclamp(bp_vec x, bp_vec lo, bp_vec hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, x)); }
static inline void bp_vstream(float *p, bp_vec v) { _mm256_stream_ps(p, v); } /* p: 32-byte aligned */
static inline void bp_stream_fence(void) { _mm_sfence(); }
static inline float bp_vsum(bp_vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#else
#define BP_VL 4
#define BP_VREGS 16
#define BP_SIMD_NAME "4-lane"
typedef float bp_vec __attribute__((vector_size(16)));
static inline bp_vec bp_vload(const float *p) {
    bp_vec v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void bp_vstore(float *p, bp_vec v) { memcpy(p, &v, sizeof v); }
static inline bp_vec bp_vset1(float s) { return (bp_vec){s, s, s, s}; }
static inline bp_vec bp_vzero(void) { return (bp_vec){0.0f, 0.0f, 0.0f, 0.0f}; }
static inline bp_vec bp_vfma(bp_vec a, bp_vec b, bp_vec c) { return a * b + c; }
static inline bp_vec bp_vadd(bp_vec a, bp_vec b) { return a + b; }
static inline bp_vec bp_vclamp(bp_vec x, bp_vec lo, bp_vec hi) {
    for (int i = 0; i < 4; i++) {
        x[i] = x[i] < lo[i] ? lo[i] : x[i];
        x[i] = x[i] > hi[i] ? hi[i] : x[i];
    }
    return x;
}
static inline float bp_vsum(bp_vec v) { return (v[0] + v[1]) + (v[2] + v[3]); }
static inline void bp_vstream(float *p, bp_vec v) { bp_vstore(p, v); }
static inline void bp_stream_fence(void) {}
#endif

/* The sum of n floats (in vector lanes: not the order of a plain loop). */
static inline float bp_sum(const float *v, size_t n) {
    bp_vec a0 = bp_vzero(), a1 = bp_vzero(), a2 = bp_vzero(), a3 = bp_vzero();
    size_t i = 0;
    for (; i + 4 * BP_VL <= n; i += 4 * BP_VL) {
        a0 = bp_vadd(a0, bp_vload(v + i));
        a1 = bp_vadd(a1, bp_vload(v + i + BP_VL));
        a2 = bp_vadd(a2, bp_vload(v + i + 2 * BP_VL));
        a3 = bp_vadd(a3, bp_vload(v + i + 3 * BP_VL));
    }
    for (; i + BP_VL <= n; i += BP_VL) a0 = bp_vadd(a0, bp_vload(v + i));
    float s = bp_vsum(bp_vadd(bp_vadd(a0, a1), bp_vadd(a2, a3)));
    for (; i < n; i++) s += v[i];
    return s;
}

/* Lane i of the result = the sum of v[i]'s lanes, for BP_VL vectors: their horizontal sums
   together, as a tree of shuffles and adds that halves the partial sums' width at each level. */
static inline bp_vec bp_vsum_lanes(const bp_vec v[BP_VL]) {
#if defined(__AVX512F__)
    __m512 s[8], t[4], u[2];
    for (int i = 0; i < 8; i++) /* 256-bit halves: v[i], v[i + 8] */
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
    for (int i = 0; i < 4; i++) /* 128-bit quarters: v[i], v[i + 8], v[i + 4], v[i + 12] */
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[i], s[i + 4], 0x88), _mm512_shuffle_f32x4(s[i], s[i + 4], 0xDD));
    for (int i = 0; i < 2; i++) /* lane pairs in each quarter */
        u[i] = _mm512_add_ps(_mm512_unpacklo_ps(t[i], t[i + 2]), _mm512_unpackhi_ps(t[i], t[i + 2]));
    __m512 r = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
    return _mm512_shuffle_f32x4(r, r, 0xD8); /* quarters held v[0..3], v[8..11], v[4..7], v[12..15] */
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 s[4], u[2];
    for (int i = 0; i < 4; i++) /* 128-bit halves: v[i], v[i + 4] */
        s[i] = _mm256_add_ps(_mm256_permute2f128_ps(v[i], v[i + 4], 0x20), _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
    for (int i = 0; i < 2; i++) /* lane pairs in each half */
        u[i] = _mm256_add_ps(_mm256_unpacklo_ps(s[i], s[i + 2]), _mm256_unpackhi_ps(s[i], s[i + 2]));
    return _mm256_add_ps(_mm256_unpacklo_ps(u[0], u[1]), _mm256_unpackhi_ps(u[0], u[1]));
#else
    bp_vec u0 = __builtin_shufflevector(v[0], v[2], 0, 4, 1, 5) + __builtin_shufflevector(v[0], v[2], 2, 6, 3, 7);
    bp_vec u1 = __builtin_shufflevector(v[1], v[3], 0, 4, 1, 5) + __builtin_shufflevector(v[1], v[3], 2, 6, 3, 7);
    return __builtin_shufflevector(u0, u1, 0, 4, 1, 5) + __builtin_shufflevector(u0, u1, 2, 6, 3, 7);
#endif
}

/* The first n (< BP_VL allowed) values at src, the other lanes zero; memory past them is not read. */
static inline bp_vec bp_vload_part(const float *src, size_t n) {
    if (n >= BP_VL) return bp_vload(src);
#if defined(__AVX512F__)
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), src);
#elif defined(__AVX2__) && defined(__FMA__)
    static const int32_t ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_loadu_si256((const __m256i *)ramp));
    return _mm256_maskload_ps(src, mask);
#else
    float lanes[BP_VL] = {0.0f};
    memcpy(lanes, src, n * sizeof(float));
    return bp_vload(lanes);
#endif
}

/* The first n (< BP_VL allowed) lanes of v to dst; memory past them is not touched. */
static inline void bp_vstore_part(float *dst, bp_vec v, size_t n) {
    if (n >= BP_VL) {
        bp_vstore(dst, v);
        return;
    }
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(dst, (__mmask16)((1u << n) - 1u), v);
#elif defined(__AVX2__) && defined(__FMA__)
    static const int32_t ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_loadu_si256((const __m256i *)ramp));
    _mm256_maskstore_ps(dst, mask, v);
#else
    float lanes[BP_VL];
    memcpy(lanes, &v, sizeof lanes);
    memcpy(dst, lanes, n * sizeof(float));
#endif
}

#if defined(__AVX__)
/* out[c] = lane c of rows[0..7] + at: an 8 x 8 block transposed in registers. */
static inline void bp_transpose8x8_regs(const float *const rows[8], size_t at, __m256 out[8]) {
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(rows[i] + at);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        out[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        out[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}
#endif

/* dst[c * dst_stride + r] = rows[r][at + c] for r, c < 8: an 8 x 8 block transposed. */
static inline void bp_transpose8x8_rows(const float *const rows[8], size_t at, float *dst, size_t dst_stride) {
#if defined(__AVX__)
    __m256 out[8];
    bp_transpose8x8_regs(rows, at, out);
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (size_t)i * dst_stride, out[i]);
#else
    for (size_t c = 0; c < 8; c++)
        for (size_t r = 0; r < 8; r++) dst[c * dst_stride + r] = rows[r][at + c];
#endif
}

/* dst[c * dst_stride + r] = src[r * src_stride + c] + bias[c] for r < n <= 8, c < 8: an 8 x 8
   block transposed and a value added to each of its output rows, each row stopping after n. */
static inline void bp_transpose8x8_add(const float *src, size_t src_stride, const float bias[8], float *dst,
                                       size_t dst_stride, size_t n) {
#if defined(__AVX__)
    const float *rows[8];
    for (size_t i = 0; i < 8; i++) rows[i] = src + i * src_stride;
    __m256 out[8];
    bp_transpose8x8_regs(rows, 0, out);
    for (int i = 0; i < 8; i++) out[i] = _mm256_add_ps(out[i], _mm256_set1_ps(bias[i]));
    if (n >= 8) {
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (size_t)i * dst_stride, out[i]);
        return;
    }
#if defined(__AVX512VL__)
    __mmask8 keep = (__mmask8)((1u << n) - 1u);
    for (int i = 0; i < 8; i++) _mm256_mask_storeu_ps(dst + (size_t)i * dst_stride, keep, out[i]);
#else
    __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int i = 0; i < 8; i++) _mm256_maskstore_ps(dst + (size_t)i * dst_stride, keep, out[i]);
#endif
#else
    for (size_t c = 0; c < 8; c++)
        for (size_t r = 0; r < n; r++) dst[c * dst_stride + r] = src[r * src_stride + c] + bias[c];
#endif
}

/* dst[c * dst_stride + 2r] = even[r * src_stride + c] + bias[c] and dst[c * dst_stride + 2r + 1]
   = odd[r * src_stride + c] + bias[c] for r < n <= 8, c < 8: two 8 x 8 blocks transposed and
   interleaved, each output row 2n consecutive values (the two column phases of a 2-strided row). */
static inline void bp_transpose8x8_interleave_add(const float *even, const float *odd, size_t src_stride,
                                                  const float bias[8], float *dst, size_t dst_stride, size_t n) {
#if defined(__AVX__)
    if (n == 8) {
        const float *rows[8];
        __m256 e[8], o[8];
        for (size_t i = 0; i < 8; i++) rows[i] = even + i * src_stride;
        bp_transpose8x8_regs(rows, 0, e);
        for (size_t i = 0; i < 8; i++) rows[i] = odd + i * src_stride;
        bp_transpose8x8_regs(rows, 0, o);
        for (int c = 0; c < 8; c++) {
            __m256 b = _mm256_set1_ps(bias[c]);
            __m256 lo = _mm256_unpacklo_ps(e[c], o[c]), hi = _mm256_unpackhi_ps(e[c], o[c]);
            float *row = dst + (size_t)c * dst_stride;
            _mm256_storeu_ps(row, _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), b));
            _mm256_storeu_ps(row + 8, _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x31), b));
        }
        return;
    }
#endif
    for (size_t c = 0; c < 8; c++)
        for (size_t r = 0; r < n; r++) {
            dst[c * dst_stride + 2 * r] = even[r * src_stride + c] + bias[c];
            dst[c * dst_stride + 2 * r + 1] = odd[r * src_stride + c] + bias[c];
        }
}

/* dst[c][r] = src[r * src_stride + c] for r, c < 8: an 8 x 8 block transposed, each output row
   to its own place. */
static inline void bp_transpose8x8_to(const float *src, size_t src_stride, float *const dst[8]) {
#if defined(__AVX__)
    const float *rows[8];
    __m256 out[8];
    for (size_t i = 0; i < 8; i++) rows[i] = src + i * src_stride;
    bp_transpose8x8_regs(rows, 0, out);
    for (int c = 0; c < 8; c++) _mm256_storeu_ps(dst[c], out[c]);
#else
    for (size_t c = 0; c < 8; c++)
        for (size_t r = 0; r < 8; r++) dst[c][r] = src[r * src_stride + c];
#endif
}

/* dst[c * dst_stride + r] = src[r * src_stride + c] for r, c < 8. */
static inline void bp_transpose8x8(const float *src, size_t src_stride, float *dst, size_t dst_stride) {
    const float *rows[8];
    for (size_t i = 0; i < 8; i++) rows[i] = src + i * src_stride;
    bp_transpose8x8_rows(rows, 0, dst, dst_stride);
}

/* Lanes 0, 2, 4, ... (first 0) or 1, 3, 5, ... (first 1) of the concatenation (a, b). */
#if BP_VL == 16
#define BP_EVERY_OTHER(first)                                                                                  \
    first, first + 2, first + 4, first + 6, first + 8, first + 10, first + 12, first + 14, first + 16,         \
        first + 18, first + 20, first + 22, first + 24, first + 26, first + 28, first + 30
#elif BP_VL == 8
#define BP_EVERY_OTHER(first) first, first + 2, first + 4, first + 6, first + 8, first + 10, first + 12, first + 14
#else
#define BP_EVERY_OTHER(first) first, first + 2, first + 4, first + 6
#endif

/* even[i] = src[2i] and odd[i] = src[2i + 1] for the n values of src (a row's two column phases
   of stride 2), a vector pair at a time split in registers; nothing past them read or written. */
static inline void bp_deinterleave(const float *src, size_t n, float *even, float *odd) {
    bp_vec zero = bp_vzero();
    for (size_t i = 0; i < n; i += 2 * BP_VL) {
        size_t left = n - i;
        bp_vec a = bp_vload_part(src + i, left), b = left > BP_VL ? bp_vload_part(src + i + BP_VL, left - BP_VL) : zero;
        bp_vstore_part(even + i / 2, __builtin_shufflevector(a, b, BP_EVERY_OTHER(0)), (left + 1) / 2);
        bp_vstore_part(odd + i / 2, __builtin_shufflevector(a, b, BP_EVERY_OTHER(1)), left / 2);
    }
}

#endif
