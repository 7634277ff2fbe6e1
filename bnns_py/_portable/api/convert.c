/* Float16 / BFloat16 / Int8 / UInt8 <-> Float32 conversions (see convert.h). */
#include <string.h>

#include "convert.h"

static inline uint32_t float_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return x;
}

static inline float bits_float(uint32_t x) {
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* ---- IEEE binary16 ------------------------------------------------------------------------ */

float bp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13)); /* inf, NaN (payload kept) */
    if (e == 0) {
        /* zero or subnormal: m * 2^-24, exact in float32 */
        float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_float(sign | ((e + 112u) << 23) | (m << 13)); /* rebias 15 -> 127 */
}

uint16_t bp_f32_to_f16(float f) {
    uint32_t x = float_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) {
        if (ax == 0x7f800000u) return sign | 0x7c00u;
        return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu); /* quiet NaN, top payload bits */
    }
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 (halfway above 65504) rounds to inf */
    if (ax < 0x38800000u) {                        /* below 2^-14: a binary16 subnormal or zero */
        if (ax <= 0x33000000u) return sign;        /* <= 2^-25: the tie at 2^-25 goes to even 0 */
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* value * 2^24 = m * 2^(e - 126), e in [102, 112] */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return sign | (uint16_t)q; /* q may reach 0x400, the smallest normal: still right */
    }
    uint32_t r = ax - 0x38000000u; /* rebias 127 -> 15 */
    uint32_t q = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++; /* a carry moves into the exponent */
    return sign | (uint16_t)q;
}

/* ---- bfloat16: the upper half of a float32 --------------------------------------------------- */

float bp_bf16_to_f32(uint16_t h) { return bits_float((uint32_t)h << 16); }

uint16_t bp_f32_to_bf16(float f) {
    uint32_t x = float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u); /* round to nearest even; overflow reaches inf */
    return (uint16_t)(x >> 16);
}

float bnns_portable_f16_to_f32(uint16_t h) { return bp_f16_to_f32(h); }
uint16_t bnns_portable_f32_to_f16(float f) { return bp_f32_to_f16(f); }
float bnns_portable_bf16_to_f32(uint16_t h) { return bp_bf16_to_f32(h); }
uint16_t bnns_portable_f32_to_bf16(float f) { return bp_f32_to_bf16(f); }

/* ---- arrays ---------------------------------------------------------------------------------- */

size_t bp_dtype_size(BNNSDataType t) {
    switch (t) {
    case BNNSDataTypeFloat32: return 4;
    case BNNSDataTypeFloat16:
    case BNNSDataTypeBFloat16: return 2;
    case BNNSDataTypeInt8:
    case BNNSDataTypeUInt8: return 1;
    default: return 0;
    }
}

void bp_load_f32(const void *src, size_t first, size_t stride, BNNSDataType t, float scale, float bias, float *dst,
                 size_t n) {
    if (scale == 0.0f) scale = 1.0f;
    switch (t) {
    case BNNSDataTypeFloat32: {
        const float *s = (const float *)src + first;
        for (size_t i = 0; i < n; i++) dst[i] = s[i * stride];
        break;
    }
    case BNNSDataTypeFloat16: {
        const uint16_t *s = (const uint16_t *)src + first;
        for (size_t i = 0; i < n; i++) dst[i] = bp_f16_to_f32(s[i * stride]);
        break;
    }
    case BNNSDataTypeBFloat16: {
        const uint16_t *s = (const uint16_t *)src + first;
        for (size_t i = 0; i < n; i++) dst[i] = bp_bf16_to_f32(s[i * stride]);
        break;
    }
    case BNNSDataTypeInt8: {
        const int8_t *s = (const int8_t *)src + first;
        for (size_t i = 0; i < n; i++) dst[i] = scale * (float)s[i * stride] + bias;
        break;
    }
    case BNNSDataTypeUInt8: {
        const uint8_t *s = (const uint8_t *)src + first;
        for (size_t i = 0; i < n; i++) dst[i] = scale * (float)s[i * stride] + bias;
        break;
    }
    default:
        break; /* callers only pass types bp_dtype_size knows */
    }
}

void bp_store_f32(const float *src, void *dst, size_t first, size_t stride, BNNSDataType t, size_t n) {
    switch (t) {
    case BNNSDataTypeFloat32: {
        float *d = (float *)dst + first;
        for (size_t i = 0; i < n; i++) d[i * stride] = src[i];
        break;
    }
    case BNNSDataTypeFloat16: {
        uint16_t *d = (uint16_t *)dst + first;
        for (size_t i = 0; i < n; i++) d[i * stride] = bp_f32_to_f16(src[i]);
        break;
    }
    case BNNSDataTypeBFloat16: {
        uint16_t *d = (uint16_t *)dst + first;
        for (size_t i = 0; i < n; i++) d[i * stride] = bp_f32_to_bf16(src[i]);
        break;
    }
    default:
        break;
    }
}
