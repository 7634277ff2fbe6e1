/* Fused activations made of comparisons, min / max and selects, on whole vectors. NaN inputs give
   NaN outputs, as in bnns_py.reference (numpy's minimum / maximum propagate NaN). */
#include "act_kernels.h"
#include "bnns.h"
#include "vmath.h"

bool bp_act_piecewise_forward(uint32_t function, float alpha, float beta, float *data, size_t n) {
    const bp_vec a = bp_vset1(alpha), b = bp_vset1(beta), zero = bp_vzero(), one = bp_vset1(1.0f);
    const bp_vec abs_a = bp_vabs(a), six = bp_vset1(6.0f);
    switch (function) {
    case BNNSActivationFunctionRectifiedLinear:
        BP_VMAP(data, n, x, bp_vmax(zero, x));
        return true;
    case BNNSActivationFunctionLeakyRectifiedLinear:
    case BNNSActivationFunctionPReLUPerChannel: /* every per-channel alpha_c starts at (and here stays) alpha */
        BP_VMAP(data, n, x, bp_vselect(bp_vlt(x, zero), bp_vmul(a, x), x));
        return true;
    case BNNSActivationFunctionAbs:
        BP_VMAP(data, n, x, bp_vabs(x));
        return true;
    case BNNSActivationFunctionLinear:
        BP_VMAP(data, n, x, bp_vmul(a, x));
        return true;
    case BNNSActivationFunctionClamp:
        BP_VMAP(data, n, x, bp_vmin(b, bp_vmax(a, x)));
        return true;
    case BNNSActivationFunctionHardSigmoid:
        BP_VMAP(data, n, x, bp_vmax(zero, bp_vmin(one, bp_vfma(a, x, b))));
        return true;
    case BNNSActivationFunctionSoftsign:
        BP_VMAP(data, n, x, bp_vdiv(x, bp_vadd(one, bp_vabs(x))));
        return true;
    case BNNSActivationFunctionClampedLeakyRectifiedLinear:
        BP_VMAP(data, n, x, bp_vmin(b, bp_vselect(bp_vlt(x, zero), bp_vmul(a, x), x)));
        return true;
    case BNNSActivationFunctionLinearWithBias:
        BP_VMAP(data, n, x, bp_vfma(a, x, b));
        return true;
    case BNNSActivationFunctionHardShrink:
        BP_VMAP(data, n, x, bp_vselect(bp_vlt(bp_vabs(x), abs_a), zero, x));
        return true;
    case BNNSActivationFunctionSoftShrink:
        BP_VMAP(data, n, x, bp_vselect(bp_vlt(bp_vabs(x), abs_a), zero, bp_vsub(x, bp_vwith_sign(abs_a, x))));
        return true;
    case BNNSActivationFunctionThreshold:
        BP_VMAP(data, n, x, bp_vselect(bp_vle(x, a), b, x));
        return true;
    case BNNSActivationFunctionHardSwish: {
        /* x (min(max(x + 3, 0), 6) / 6): the ramp scaled first, so that large x do not overflow */
        const bp_vec three = bp_vset1(3.0f), sixth = bp_vset1(1.0f / 6.0f);
        BP_VMAP(data, n, x, bp_vmul(x, bp_vmul(bp_vmin(six, bp_vmax(zero, bp_vadd(x, three))), sixth)));
        return true;
    }
    case BNNSActivationFunctionReLU6:
        BP_VMAP(data, n, x, bp_vmin(six, bp_vmax(zero, x)));
        return true;
    default:
        return false;
    }
}
