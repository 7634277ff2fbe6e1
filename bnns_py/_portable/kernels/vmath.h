/* bnns-py portable backend: vector primitives beyond simd.h, for the activation kernels.

   Same instruction-set switch as simd.h (AVX-512, AVX2 + FMA, else 4-lane GCC/Clang vector
   extensions, which compile to SSE or NEON). Everything that depends on the instruction set is in
   this file; the approximations built on it (vfunc.h) are written once for every width.

   Conventions:
   - bp_vmask is a lane mask from a comparison; comparisons are false in NaN lanes, except bp_vne
     (true there, like C's !=).
   - bp_vmin(a, b) / bp_vmax(a, b) return b in lanes where either operand is NaN (the x86 rule,
     reproduced on the other widths), so bp_vmax(lo, x) keeps a NaN x.
   - Integer lanes (bp_vint) are 32-bit, one per float lane. */
#ifndef BNNS_PORTABLE_VMATH_H
#define BNNS_PORTABLE_VMATH_H

#include "simd.h"

#if defined(__AVX512F__)
typedef __mmask16 bp_vmask;
typedef __m512i bp_vint;
static inline bp_vec bp_vsub(bp_vec a, bp_vec b) { return _mm512_sub_ps(a, b); }
static inline bp_vec bp_vmul(bp_vec a, bp_vec b) { return _mm512_mul_ps(a, b); }
static inline bp_vec bp_vdiv(bp_vec a, bp_vec b) { return _mm512_div_ps(a, b); }
static inline bp_vec bp_vfnma(bp_vec a, bp_vec b, bp_vec c) { return _mm512_fnmadd_ps(a, b, c); } /* c - a*b */
static inline bp_vec bp_vmin(bp_vec a, bp_vec b) { return _mm512_min_ps(a, b); }
static inline bp_vec bp_vmax(bp_vec a, bp_vec b) { return _mm512_max_ps(a, b); }
static inline bp_vec bp_vand(bp_vec a, bp_vec b) { return _mm512_and_ps(a, b); }
static inline bp_vec bp_vor(bp_vec a, bp_vec b) { return _mm512_or_ps(a, b); }
static inline bp_vec bp_vxor(bp_vec a, bp_vec b) { return _mm512_xor_ps(a, b); }
static inline bp_vmask bp_vlt(bp_vec a, bp_vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline bp_vmask bp_vle(bp_vec a, bp_vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
static inline bp_vmask bp_vgt(bp_vec a, bp_vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline bp_vmask bp_vge(bp_vec a, bp_vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline bp_vmask bp_vne(bp_vec a, bp_vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
static inline bp_vmask bp_vmask_and(bp_vmask a, bp_vmask b) { return (bp_vmask)(a & b); }
static inline bp_vmask bp_vmask_or(bp_vmask a, bp_vmask b) { return (bp_vmask)(a | b); }
/* m ? a : b, lane by lane */
static inline bp_vec bp_vselect(bp_vmask m, bp_vec a, bp_vec b) { return _mm512_mask_blend_ps(m, b, a); }
/* nearest integer value, ties to even */
static inline bp_vec bp_vround(bp_vec x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline bp_vint bp_vcvt_int(bp_vec x) { return _mm512_cvtps_epi32(x); } /* x: integral values */
static inline bp_vint bp_vint_add(bp_vint a, bp_vint b) { return _mm512_add_epi32(a, b); }
static inline bp_vint bp_vint_sub(bp_vint a, bp_vint b) { return _mm512_sub_epi32(a, b); }
static inline bp_vint bp_vint_set1(int32_t s) { return _mm512_set1_epi32(s); }
static inline bp_vint bp_vint_sra1(bp_vint a) { return _mm512_srai_epi32(a, 1); }
static inline bp_vint bp_vint_shl23(bp_vint a) { return _mm512_slli_epi32(a, 23); }
static inline bp_vint bp_vint_srl23(bp_vint a) { return _mm512_srli_epi32(a, 23); }
static inline bp_vint bp_vas_int(bp_vec a) { return _mm512_castps_si512(a); }
static inline bp_vec bp_vas_float(bp_vint a) { return _mm512_castsi512_ps(a); }
static inline bp_vec bp_vint_to_float(bp_vint a) { return _mm512_cvtepi32_ps(a); }
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 bp_vmask; /* all-ones / all-zeros lanes */
typedef __m256i bp_vint;
static inline bp_vec bp_vsub(bp_vec a, bp_vec b) { return _mm256_sub_ps(a, b); }
static inline bp_vec bp_vmul(bp_vec a, bp_vec b) { return _mm256_mul_ps(a, b); }
static inline bp_vec bp_vdiv(bp_vec a, bp_vec b) { return _mm256_div_ps(a, b); }
static inline bp_vec bp_vfnma(bp_vec a, bp_vec b, bp_vec c) { return _mm256_fnmadd_ps(a, b, c); }
static inline bp_vec bp_vmin(bp_vec a, bp_vec b) { return _mm256_min_ps(a, b); }
static inline bp_vec bp_vmax(bp_vec a, bp_vec b) { return _mm256_max_ps(a, b); }
static inline bp_vec bp_vand(bp_vec a, bp_vec b) { return _mm256_and_ps(a, b); }
static inline bp_vec bp_vor(bp_vec a, bp_vec b) { return _mm256_or_ps(a, b); }
static inline bp_vec bp_vxor(bp_vec a, bp_vec b) { return _mm256_xor_ps(a, b); }
static inline bp_vmask bp_vlt(bp_vec a, bp_vec b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline bp_vmask bp_vle(bp_vec a, bp_vec b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
static inline bp_vmask bp_vgt(bp_vec a, bp_vec b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline bp_vmask bp_vge(bp_vec a, bp_vec b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
static inline bp_vmask bp_vne(bp_vec a, bp_vec b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
static inline bp_vmask bp_vmask_and(bp_vmask a, bp_vmask b) { return _mm256_and_ps(a, b); }
static inline bp_vmask bp_vmask_or(bp_vmask a, bp_vmask b) { return _mm256_or_ps(a, b); }
static inline bp_vec bp_vselect(bp_vmask m, bp_vec a, bp_vec b) { return _mm256_blendv_ps(b, a, m); }
static inline bp_vec bp_vround(bp_vec x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline bp_vint bp_vcvt_int(bp_vec x) { return _mm256_cvtps_epi32(x); }
static inline bp_vint bp_vint_add(bp_vint a, bp_vint b) { return _mm256_add_epi32(a, b); }
static inline bp_vint bp_vint_sub(bp_vint a, bp_vint b) { return _mm256_sub_epi32(a, b); }
static inline bp_vint bp_vint_set1(int32_t s) { return _mm256_set1_epi32(s); }
static inline bp_vint bp_vint_sra1(bp_vint a) { return _mm256_srai_epi32(a, 1); }
static inline bp_vint bp_vint_shl23(bp_vint a) { return _mm256_slli_epi32(a, 23); }
static inline bp_vint bp_vint_srl23(bp_vint a) { return _mm256_srli_epi32(a, 23); }
static inline bp_vint bp_vas_int(bp_vec a) { return _mm256_castps_si256(a); }
static inline bp_vec bp_vas_float(bp_vint a) { return _mm256_castsi256_ps(a); }
static inline bp_vec bp_vint_to_float(bp_vint a) { return _mm256_cvtepi32_ps(a); }
#else
typedef int32_t bp_vint __attribute__((vector_size(16)));
typedef bp_vint bp_vmask; /* -1 / 0 lanes */
static inline bp_vint bp_vint_set1(int32_t s) { return (bp_vint){s, s, s, s}; }
static inline bp_vec bp_vsub(bp_vec a, bp_vec b) { return a - b; }
static inline bp_vec bp_vmul(bp_vec a, bp_vec b) { return a * b; }
static inline bp_vec bp_vdiv(bp_vec a, bp_vec b) { return a / b; }
static inline bp_vec bp_vfnma(bp_vec a, bp_vec b, bp_vec c) { return c - a * b; }
static inline bp_vint bp_vas_int(bp_vec a) { return (bp_vint)a; }
static inline bp_vec bp_vas_float(bp_vint a) { return (bp_vec)a; }
static inline bp_vec bp_vselect(bp_vmask m, bp_vec a, bp_vec b) {
    return (bp_vec)((m & (bp_vint)a) | (~m & (bp_vint)b));
}
static inline bp_vmask bp_vlt(bp_vec a, bp_vec b) { return (bp_vmask)(a < b); }
static inline bp_vmask bp_vle(bp_vec a, bp_vec b) { return (bp_vmask)(a <= b); }
static inline bp_vmask bp_vgt(bp_vec a, bp_vec b) { return (bp_vmask)(a > b); }
static inline bp_vmask bp_vge(bp_vec a, bp_vec b) { return (bp_vmask)(a >= b); }
static inline bp_vmask bp_vne(bp_vec a, bp_vec b) { return (bp_vmask)(a != b); }
static inline bp_vmask bp_vmask_and(bp_vmask a, bp_vmask b) { return a & b; }
static inline bp_vmask bp_vmask_or(bp_vmask a, bp_vmask b) { return a | b; }
static inline bp_vec bp_vmin(bp_vec a, bp_vec b) { return bp_vselect(bp_vlt(a, b), a, b); }
static inline bp_vec bp_vmax(bp_vec a, bp_vec b) { return bp_vselect(bp_vgt(a, b), a, b); }
static inline bp_vec bp_vand(bp_vec a, bp_vec b) { return (bp_vec)((bp_vint)a & (bp_vint)b); }
static inline bp_vec bp_vor(bp_vec a, bp_vec b) { return (bp_vec)((bp_vint)a | (bp_vint)b); }
static inline bp_vec bp_vxor(bp_vec a, bp_vec b) { return (bp_vec)((bp_vint)a ^ (bp_vint)b); }
/* adding and subtracting 1.5 * 2^23 rounds |x| < 2^22 to an integer, ties to even; larger |x| are integers */
static inline bp_vec bp_vround(bp_vec x) {
    bp_vec magic = bp_vset1(0x1.8p23f);
    bp_vec r = (x + magic) - magic;
    bp_vec ax = bp_vas_float(bp_vas_int(x) & bp_vint_set1(0x7fffffff));
    return bp_vselect(bp_vlt(ax, bp_vset1(0x1p22f)), r, x);
}
static inline bp_vint bp_vcvt_int(bp_vec x) { return __builtin_convertvector(x, bp_vint); }
static inline bp_vint bp_vint_add(bp_vint a, bp_vint b) { return a + b; }
static inline bp_vint bp_vint_sub(bp_vint a, bp_vint b) { return a - b; }
static inline bp_vint bp_vint_sra1(bp_vint a) { return a >> 1; }
static inline bp_vint bp_vint_shl23(bp_vint a) { return a << 23; }
static inline bp_vint bp_vint_srl23(bp_vint a) { return (bp_vint)((uint32_t __attribute__((vector_size(16))))a >> 23); }
static inline bp_vec bp_vint_to_float(bp_vint a) { return __builtin_convertvector(a, bp_vec); }
#endif

/* ---- width-independent helpers ---- */

static inline bp_vec bp_vabs(bp_vec x) { return bp_vand(x, bp_vas_float(bp_vint_set1(0x7fffffff))); }
/* the sign bit of x alone: -0.0f or +0.0f */
static inline bp_vec bp_vsignbit(bp_vec x) { return bp_vand(x, bp_vset1(-0.0f)); }
/* |m| with the sign of s (m's own sign bit must be clear) */
static inline bp_vec bp_vwith_sign(bp_vec m, bp_vec s) { return bp_vor(m, bp_vsignbit(s)); }
static inline bp_vec bp_vneg(bp_vec x) { return bp_vxor(x, bp_vset1(-0.0f)); }

/* c[0] x^(n-1) + c[1] x^(n-2) + ... + c[n-1], by Horner's rule in FMAs (n is a constant at every
   call, so the loop unrolls) */
static inline bp_vec bp_vpoly(bp_vec x, const float *c, int n) {
    bp_vec p = bp_vset1(c[0]);
    for (int i = 1; i < n; i++) p = bp_vfma(p, x, bp_vset1(c[i]));
    return p;
}

/* a * b - p exactly, where p is a * b rounded: one FMA, or Dekker's product of Veltkamp halves where
   the target has no FMA (x86-64-v2). The 4-lane build reaches NEON's FMA through contraction of
   a * b + c (-ffp-contract=fast). Lanes where a * 4097 or b * 4097 overflow give inf or NaN. */
static inline bp_vec bp_vmul_error(bp_vec a, bp_vec b, bp_vec p) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    return bp_vfma(a, b, bp_vneg(p));
#else
    bp_vec split = bp_vset1(4097.0f);
    bp_vec ta = bp_vmul(a, split), tb = bp_vmul(b, split);
    bp_vec a_hi = bp_vsub(ta, bp_vsub(ta, a)), b_hi = bp_vsub(tb, bp_vsub(tb, b));
    bp_vec a_lo = bp_vsub(a, a_hi), b_lo = bp_vsub(b, b_hi);
    bp_vec e = bp_vsub(bp_vmul(a_hi, b_hi), p);
    e = bp_vadd(e, bp_vmul(a_hi, b_lo));
    e = bp_vadd(e, bp_vmul(a_lo, b_hi));
    return bp_vadd(e, bp_vmul(a_lo, b_lo));
#endif
}

/* Replaces each of the n floats at data by EXPR, an expression of the bp_vec named x: whole
   vectors, then the last n % BP_VL values as part of the last whole vector, data[n - BP_VL .. n),
   loaded before anything is stored (its first values are computed twice, from the same inputs,
   and stored twice, the same results: cheaper than a masked load and store, which short runs, one
   output row, pay on every call). Fewer than BP_VL values go through a masked load and store. */
#define BP_VMAP(data, n, x, EXPR)                                                                  \
    do {                                                                                           \
        float *bp_map_p = (data);                                                                  \
        size_t bp_map_n = (n), bp_map_i = 0;                                                       \
        if (bp_map_n < BP_VL) {                                                                    \
            if (bp_map_n == 0) break;                                                              \
            bp_vec x = bp_vload_part(bp_map_p, bp_map_n);                                          \
            bp_vstore_part(bp_map_p, (EXPR), bp_map_n);                                            \
            break;                                                                                 \
        }                                                                                          \
        const bp_vec bp_map_last = bp_vload(bp_map_p + bp_map_n - BP_VL);                          \
        for (; bp_map_i + BP_VL <= bp_map_n; bp_map_i += BP_VL) {                                  \
            bp_vec x = bp_vload(bp_map_p + bp_map_i);                                              \
            bp_vstore(bp_map_p + bp_map_i, (EXPR));                                                \
        }                                                                                          \
        if (bp_map_i < bp_map_n) {                                                                 \
            bp_vec x = bp_map_last;                                                                \
            bp_vstore(bp_map_p + bp_map_n - BP_VL, (EXPR));                                        \
        }                                                                                          \
    } while (0)

#endif
