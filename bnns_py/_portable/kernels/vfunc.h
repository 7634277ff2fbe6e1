/* bnns-py portable backend: exp, expm1, log1p, erfc, sigmoid and tanh on whole vectors.

   Written once on vmath.h's primitives, so every instruction-set build gets the same formulas.
   The method is the usual one for vector libraries (Cody-Waite range reduction, a short
   polynomial, the exponent put together with integer arithmetic; no table lookups, no branches).
   The polynomials are weighted least-squares fits (Lawson iterations towards minimax) made for
   this file in float64; docs/activations.md gives each function's measured error against float64.
   Inputs may be any float, including +-0, denormals, +-inf and NaN (a NaN stays NaN). */
#ifndef BNNS_PORTABLE_VFUNC_H
#define BNNS_PORTABLE_VFUNC_H

#include "vmath.h"

#define BP_LOG2E 1.44269504088896341f
/* ln 2 = BP_LN2_HI + BP_LN2_LO, the first with 9 significant bits, so that n * BP_LN2_HI is exact
   for |n| < 2^15 with or without FMA (Cody and Waite) */
#define BP_LN2_HI 0.693359375f
#define BP_LN2_LO -2.12194440054690583e-4f

/* e^r - 1 for |r| <= ln(2)/2, as r + r^2 q(r): relative error of q below 3.1e-9 */
static inline bp_vec bp_vexpm1_reduced(bp_vec r) {
    static const float q_coefficients[] = {
        0.001381461275741458f, 0.008368710055947304f, 0.04166838899254799f,
        0.1666652113199234f, 0.4999999403953552f};
    bp_vec q = bp_vpoly(r, q_coefficients, 5);
    return bp_vfma(bp_vmul(r, r), q, r);
}

/* e^r - 1 for x = n ln 2 + r, |r| <= ln(2)/2 (n integral: the nearest to x / ln 2) */
static inline bp_vec bp_vexpm1_split(bp_vec x, bp_vec *n) {
    *n = bp_vround(bp_vmul(x, bp_vset1(BP_LOG2E)));
    bp_vec r = bp_vfma(*n, bp_vset1(-BP_LN2_HI), x);
    return bp_vexpm1_reduced(bp_vfma(*n, bp_vset1(-BP_LN2_LO), r));
}

/* 2^n for integral n in [-126, 127] */
static inline bp_vec bp_vpow2i(bp_vint n) { return bp_vas_float(bp_vint_shl23(bp_vint_add(n, bp_vint_set1(127)))); }

/* e^x. Results below 2^-126 are the correctly scaled denormals (the power of two is applied as two
   normal factors); x >= 89 gives +inf, x <= -104 gives +0. */
static inline bp_vec bp_vexp(bp_vec x) {
    x = bp_vmin(bp_vset1(89.0f), bp_vmax(bp_vset1(-104.0f), x));
    bp_vec n, p = bp_vexpm1_split(x, &n);
    bp_vint ni = bp_vcvt_int(n);
    bp_vint half = bp_vint_sra1(ni);
    bp_vec s1 = bp_vpow2i(half), s2 = bp_vpow2i(bp_vint_sub(ni, half));
    return bp_vmul(bp_vfma(p, s1, s1), s2);
}

/* e^x - 1 for x <= 0 (positive x are taken as 0), accurate near 0 where e^x - 1 cancels:
   2^n (e^r - 1) + (2^n - 1). x <= -30 gives -1. */
static inline bp_vec bp_vexpm1_neg(bp_vec x) {
    x = bp_vmax(bp_vset1(-30.0f), bp_vmin(bp_vzero(), x));
    bp_vec n, p = bp_vexpm1_split(x, &n);
    bp_vec s = bp_vpow2i(bp_vcvt_int(n));
    return bp_vfma(p, s, bp_vsub(s, bp_vset1(1.0f)));
}

/* log(1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1], as f - f^2/2 + f^3 q(f) */
static inline bp_vec bp_vlog1p_reduced(bp_vec f) {
    static const float q_coefficients[] = {
        0.0674663856625557f, -0.11675651371479034f, 0.11888162791728973f,
        -0.1240558922290802f, 0.14219552278518677f, -0.1666799634695053f,
        0.2000211924314499f, -0.25000008940696716f, 0.3333331346511841f};
    bp_vec q = bp_vpoly(f, q_coefficients, 9);
    bp_vec f2 = bp_vmul(f, f);
    return bp_vfma(bp_vmul(f2, f), q, bp_vfnma(bp_vset1(0.5f), f2, f));
}

/* log(x) for normal positive x (the channel sums of a softmax): exponent and mantissa split with
   integer arithmetic, the mantissa taken to [sqrt(1/2), sqrt(2)). */
static inline bp_vec bp_vlog(bp_vec x) {
    bp_vint bits = bp_vas_int(x);
    bp_vec e = bp_vint_to_float(bp_vint_sub(bp_vint_srl23(bits), bp_vint_set1(127)));
    bp_vec m = bp_vor(bp_vand(x, bp_vas_float(bp_vint_set1(0x007fffff))), bp_vset1(1.0f));
    bp_vmask big = bp_vgt(m, bp_vset1(1.41421356f));
    m = bp_vselect(big, bp_vmul(m, bp_vset1(0.5f)), m);
    e = bp_vselect(big, bp_vadd(e, bp_vset1(1.0f)), e);
    bp_vec l = bp_vlog1p_reduced(bp_vsub(m, bp_vset1(1.0f)));
    return bp_vfma(e, bp_vset1(BP_LN2_HI), bp_vfma(e, bp_vset1(BP_LN2_LO), l));
}

/* log(1 + t) for t in [0, 1] (NaN stays NaN): u = 1 + t is rounded, and the rounding error
   t - (u - 1), divided by u, is added back, so tiny t give t. */
static inline bp_vec bp_vlog1p_unit(bp_vec t) {
    bp_vec one = bp_vset1(1.0f);
    bp_vec u = bp_vadd(one, t);
    bp_vec correction = bp_vdiv(bp_vsub(t, bp_vsub(u, one)), u);
    bp_vmask big = bp_vgt(u, bp_vset1(1.41421356f));
    bp_vec f = bp_vselect(big, bp_vfma(u, bp_vset1(0.5f), bp_vset1(-1.0f)), bp_vsub(u, one)); /* exact */
    bp_vec l = bp_vadd(bp_vlog1p_reduced(f), correction);
    return bp_vadd(l, bp_vselect(big, bp_vset1(0.693147180559945309f), bp_vzero()));
}

/* log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|) */
static inline bp_vec bp_vsoftplus(bp_vec x) {
    return bp_vadd(bp_vmax(bp_vzero(), x), bp_vlog1p_unit(bp_vexp(bp_vneg(bp_vabs(x)))));
}

/* 1 / (1 + e^-x), from e = e^-|x| <= 1 so nothing overflows: e / (1 + e), or 1 minus that. */
static inline bp_vec bp_vsigmoid(bp_vec x) {
    bp_vec e = bp_vexp(bp_vneg(bp_vabs(x)));
    bp_vec f = bp_vdiv(e, bp_vadd(bp_vset1(1.0f), e));
    return bp_vselect(bp_vgt(x, bp_vzero()), bp_vsub(bp_vset1(1.0f), f), f);
}

/* tanh(|x|) = -m / (m + 2) with m = e^(-2|x|) - 1, which keeps the relative accuracy of expm1
   near 0 and gives 1 for large |x|; the sign of x restored. */
static inline bp_vec bp_vtanh(bp_vec x) {
    bp_vec m = bp_vexpm1_neg(bp_vmul(bp_vset1(-2.0f), bp_vabs(x)));
    bp_vec t = bp_vdiv(m, bp_vadd(m, bp_vset1(2.0f)));
    return bp_vwith_sign(bp_vabs(t), x);
}

/* x - tanh(x), which cancels near 0: x^3 p(x^2) for |x| < 1 (relative error of the fit 5.3e-9) */
static inline bp_vec bp_vtanhshrink(bp_vec x) {
    bp_vec x2 = bp_vmul(x, x);
    static const float p_coefficients[] = {
        -0.0001428238902008161f, 0.0009236090118065476f, -0.0032069534063339233f,
        0.008697951212525368f, -0.02182958461344242f, 0.053963422775268555f,
        -0.13333310186862946f, 0.3333333432674408f};
    bp_vec p = bp_vpoly(x2, p_coefficients, 8);
    bp_vec small = bp_vmul(bp_vmul(x, x2), p);
    return bp_vselect(bp_vlt(bp_vabs(x), bp_vset1(1.0f)), small, bp_vsub(x, bp_vtanh(x)));
}

/* erfc(z) for z >= 0 (larger z are taken as 10.5, where erfc is 0 in float32):
   t exp(-z^2 + s(t)) with t = 1 / (1 + z/2), s a degree-9 polynomial (absolute error of the fit
   4.5e-8, i.e. relative error of erfc); z^2 carried exactly as the rounded product z2 plus its
   rounding error z2_low. */
static inline bp_vec bp_verfc_pos(bp_vec z) {
    z = bp_vmin(bp_vset1(10.5f), z);
    bp_vec z2 = bp_vmul(z, z), z2_low = bp_vmul_error(z, z, z2);
    bp_vec t = bp_vdiv(bp_vset1(1.0f), bp_vfma(z, bp_vset1(0.5f), bp_vset1(1.0f)));
    static const float s_coefficients[] = {
        0.14219388365745544f, -0.6660610437393188f, 1.1223959922790527f,
        -0.6512417197227478f, -0.1167932003736496f, 0.02019904926419258f,
        0.028356052935123444f, 0.3878999352455139f, 0.9984924793243408f,
        -1.2654414176940918f};
    bp_vec s = bp_vpoly(t, s_coefficients, 10);
    /* -z^2 + s as hi + lo (two-sum): exp(hi + lo) = exp(hi) (1 + lo); hi rounded alone would cost
       up to |hi| 2^-24 of relative error */
    bp_vec hi = bp_vsub(s, z2);
    bp_vec s_part = bp_vadd(hi, z2), z2_part = bp_vsub(s_part, hi); /* the parts of s and z^2 in hi */
    bp_vec lo = bp_vsub(bp_vsub(bp_vsub(s, s_part), bp_vsub(z2, z2_part)), z2_low);
    bp_vec e = bp_vexp(hi);
    return bp_vmul(t, bp_vfma(e, lo, e));
}

/* erf(x): x p(x^2) for |x| < 1 (relative error of the fit 4e-8), else sign(x) (1 - erfc(|x|)). */
static inline bp_vec bp_verf(bp_vec x) {
    bp_vec x2 = bp_vmul(x, x);
    static const float p_coefficients[] = {
        -0.0005631421809084713f, 0.004917551297694445f, -0.02671131119132042f,
        0.11280179768800735f, -0.37612324953079224f, 1.1283791065216064f};
    bp_vec p = bp_vpoly(x2, p_coefficients, 6);
    bp_vec ax = bp_vabs(x);
    bp_vec tail = bp_vwith_sign(bp_vsub(bp_vset1(1.0f), bp_verfc_pos(ax)), x);
    return bp_vselect(bp_vlt(ax, bp_vset1(1.0f)), bp_vmul(x, p), tail);
}

/* GELU x (1 + erf(x / sqrt 2)) / 2, with erf(x / sqrt 2) as one rational function x P(x^2) / Q(x^2)
   on |x| <= 5.6, where it reaches 1 in float32 (degrees 6 and 5 in x^2, a weighted fit: float64
   error 3.3e-9; the float32 evaluation, 3.5e-7 at most, dominates). No exp, one division. The
   negative tail cancels in 1 + erf: its error is absolute, |x| 2e-7 at most, as in PyTorch's
   0.5 x (1 + erf(x / sqrt 2)); below x = -5.6, where GELU is above -6e-8, the result is -0. */
static inline bp_vec bp_vgelu(bp_vec x) {
    static const float p_coefficients[] = {
        -1.5813513e-10f, 1.08586917e-07f, 1.71031206e-05f, 0.000338114653f,
        0.00960851926f, 0.0650601387f, 0.797884583f};
    static const float q_coefficients[] = {
        2.03949639e-06f, 8.20232672e-05f, 0.00193015451f, 0.0284100361f, 0.248207659f, 1.0f};
    const bp_vec limit = bp_vset1(5.6f);
    bp_vec xc = bp_vmin(limit, bp_vmax(bp_vneg(limit), x)); /* NaN stays NaN */
    bp_vec s = bp_vmul(xc, xc);
    bp_vec erf_u = bp_vdiv(bp_vmul(xc, bp_vpoly(s, p_coefficients, 7)), bp_vpoly(s, q_coefficients, 6));
    bp_vec twice_phi = bp_vselect(bp_vlt(x, bp_vneg(limit)), bp_vzero(), bp_vadd(bp_vset1(1.0f), erf_u));
    return bp_vmul(bp_vmul(x, bp_vset1(0.5f)), twice_phi);
}

#endif
