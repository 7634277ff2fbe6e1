/* Fused activations built on exp, log and erf (vfunc.h), on whole vectors. */
#include "act_kernels.h"
#include "bnns.h"
#include "vfunc.h"

#define SELU_LAMBDA 1.0507009873554804934193349852946f
#define SELU_ALPHA 1.6732632423543772848170429916717f

bool bp_act_smooth_forward(uint32_t function, float alpha, float beta, float *data, size_t n) {
    const bp_vec a = bp_vset1(alpha), b = bp_vset1(beta), zero = bp_vzero();
    switch (function) {
    case BNNSActivationFunctionSigmoid:
        BP_VMAP(data, n, x, bp_vsigmoid(x));
        return true;
    case BNNSActivationFunctionTanh:
        BP_VMAP(data, n, x, bp_vtanh(x));
        return true;
    case BNNSActivationFunctionScaledTanh:
        BP_VMAP(data, n, x, bp_vmul(a, bp_vtanh(bp_vmul(b, x))));
        return true;
    case BNNSActivationFunctionGELUApproximation: { /* (1 + tanh z) / 2 = sigmoid(2z), without cancellation */
        const bp_vec two_a = bp_vset1(2.0f * alpha);
        BP_VMAP(data, n, x, bp_vmul(x, bp_vsigmoid(bp_vmul(two_a, bp_vfma(bp_vmul(b, x), bp_vmul(x, x), x)))));
        return true;
    }
    case BNNSActivationFunctionSoftplus:
        BP_VMAP(data, n, x, bp_vmul(a, bp_vsoftplus(bp_vmul(b, x))));
        return true;
    case BNNSActivationFunctionELU:
        BP_VMAP(data, n, x, bp_vselect(bp_vlt(x, zero), bp_vmul(a, bp_vexpm1_neg(x)), x));
        return true;
    case BNNSActivationFunctionLogSigmoid: /* -softplus(-x) = min(x, 0) - log1p(e^-|x|) */
        BP_VMAP(data, n, x, bp_vsub(bp_vmin(zero, x), bp_vlog1p_unit(bp_vexp(bp_vneg(bp_vabs(x))))));
        return true;
    case BNNSActivationFunctionSELU: {
        const bp_vec lambda = bp_vset1(SELU_LAMBDA), lambda_alpha = bp_vset1(SELU_LAMBDA * SELU_ALPHA);
        BP_VMAP(data, n, x, bp_vselect(bp_vlt(x, zero), bp_vmul(lambda_alpha, bp_vexpm1_neg(x)), bp_vmul(lambda, x)));
        return true;
    }
    case BNNSActivationFunctionCELU: {
        if (!(alpha > 0)) return false; /* x / alpha > 0 for x < 0: outside expm1_neg's domain */
        const bp_vec inv_a = bp_vset1(1.0f / alpha);
        BP_VMAP(data, n, x, bp_vselect(bp_vlt(x, zero), bp_vmul(a, bp_vexpm1_neg(bp_vmul(x, inv_a))), x));
        return true;
    }
    case BNNSActivationFunctionTanhShrink:
        BP_VMAP(data, n, x, bp_vtanhshrink(x));
        return true;
    case BNNSActivationFunctionSiLU:
        BP_VMAP(data, n, x, bp_vmul(x, bp_vsigmoid(x)));
        return true;
    case BNNSActivationFunctionErf:
        BP_VMAP(data, n, x, bp_verf(x));
        return true;
    case BNNSActivationFunctionGELU:
        BP_VMAP(data, n, x, bp_vgelu(x));
        return true;
    case BNNSActivationFunctionGELUApproximationSigmoid: {
        const bp_vec k = bp_vset1(1.702f);
        BP_VMAP(data, n, x, bp_vmul(x, bp_vsigmoid(bp_vmul(k, x))));
        return true;
    }
    default:
        return false;
    }
}
