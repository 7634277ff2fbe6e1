/* Derivatives of the fused activations, from the layer output y, on whole vectors:
   dz = dy * f'(x) with f'(x) written in terms of y (bp_activation_backward in activation.c says
   which functions BNNS differentiates, and the kinks' subgradients). */
#include "act_kernels.h"
#include "bnns.h"
#include "vfunc.h"

#define SELU_LAMBDA 1.0507009873554804934193349852946f
#define SELU_ALPHA 1.6732632423543772848170429916717f

/* dz[i] = EXPR, an expression of the bp_vec y and dy at i */
#define BP_VMAP2(y_ptr, dy_ptr, dz_ptr, n, y, dy, EXPR)                                            \
    do {                                                                                           \
        size_t bp_i = 0;                                                                           \
        for (; bp_i + BP_VL <= (n); bp_i += BP_VL) {                                               \
            bp_vec y = bp_vload((y_ptr) + bp_i), dy = bp_vload((dy_ptr) + bp_i);                   \
            bp_vstore((dz_ptr) + bp_i, (EXPR));                                                    \
        }                                                                                          \
        if (bp_i < (n)) {                                                                          \
            size_t bp_rest = (n) - bp_i;                                                           \
            bp_vec y = bp_vload_part((y_ptr) + bp_i, bp_rest), dy = bp_vload_part((dy_ptr) + bp_i, bp_rest); \
            bp_vstore_part((dz_ptr) + bp_i, (EXPR), bp_rest);                                      \
        }                                                                                          \
    } while (0)

bool bp_act_backward_vector(uint32_t function, float alpha, float beta, const float *y_, const float *dy_,
                            float *dz, size_t n) {
    const bp_vec a = bp_vset1(alpha), b = bp_vset1(beta), zero = bp_vzero(), one = bp_vset1(1.0f);
    switch (function) {
    case BNNSActivationFunctionRectifiedLinear:
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vselect(bp_vgt(y, zero), dy, zero));
        return true;
    case BNNSActivationFunctionLeakyRectifiedLinear: /* alpha > 0: sign(y) = sign(x) */
    case BNNSActivationFunctionPReLUPerChannel:
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vselect(bp_vgt(y, zero), dy, bp_vmul(a, dy)));
        return true;
    case BNNSActivationFunctionSigmoid:
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vmul(dy, bp_vmul(y, bp_vsub(one, y))));
        return true;
    case BNNSActivationFunctionTanh:
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vmul(dy, bp_vfnma(y, y, one)));
        return true;
    case BNNSActivationFunctionLinear:
    case BNNSActivationFunctionLinearWithBias:
        BP_VMAP2(y_, dy_, dz, n, y, dy, ((void)y, bp_vmul(dy, a)));
        return true;
    case BNNSActivationFunctionClamp:
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vselect(bp_vmask_and(bp_vgt(y, a), bp_vlt(y, b)), dy, zero));
        return true;
    case BNNSActivationFunctionHardSigmoid:
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vselect(bp_vmask_and(bp_vgt(y, zero), bp_vlt(y, one)), bp_vmul(a, dy), zero));
        return true;
    case BNNSActivationFunctionSoftplus: { /* sigmoid(b x) = 1 - exp(-y / a) */
        if (!(alpha > 0)) return false;
        const bp_vec minus_inv_a = bp_vset1(-1.0f / alpha), ab = bp_vset1(alpha * beta);
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vmul(dy, bp_vmul(ab, bp_vneg(bp_vexpm1_neg(bp_vmul(y, minus_inv_a))))));
        return true;
    }
    case BNNSActivationFunctionSoftsign: { /* 1 / (1 + |x|)^2 with |x| = |y| / (1 - |y|) */
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vmul(dy, bp_vmul(bp_vsub(one, bp_vabs(y)), bp_vsub(one, bp_vabs(y)))));
        return true;
    }
    case BNNSActivationFunctionELU: /* x <= 0: a e^x = y + a */
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vselect(bp_vgt(y, zero), dy, bp_vmul(dy, bp_vadd(y, a))));
        return true;
    case BNNSActivationFunctionClampedLeakyRectifiedLinear:
        BP_VMAP2(y_, dy_, dz, n, y, dy,
                 bp_vselect(bp_vge(y, b), zero, bp_vselect(bp_vgt(y, zero), dy, bp_vmul(a, dy))));
        return true;
    case BNNSActivationFunctionLogSigmoid: /* 1 - sigmoid(x) = 1 - e^y, y <= 0 */
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vmul(dy, bp_vneg(bp_vexpm1_neg(y))));
        return true;
    case BNNSActivationFunctionSELU: {
        const bp_vec lambda = bp_vset1(SELU_LAMBDA), lambda_alpha = bp_vset1(SELU_LAMBDA * SELU_ALPHA);
        BP_VMAP2(y_, dy_, dz, n, y, dy,
                 bp_vmul(dy, bp_vselect(bp_vgt(y, zero), lambda, bp_vadd(y, lambda_alpha))));
        return true;
    }
    case BNNSActivationFunctionCELU: { /* e^(x/a) = y/a + 1 */
        const bp_vec inv_a = bp_vset1(1.0f / alpha);
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vselect(bp_vgt(y, zero), dy, bp_vmul(dy, bp_vfma(y, inv_a, one))));
        return true;
    }
    case BNNSActivationFunctionHardShrink:
    case BNNSActivationFunctionSoftShrink:
        BP_VMAP2(y_, dy_, dz, n, y, dy, bp_vselect(bp_vne(y, zero), dy, zero));
        return true;
    case BNNSActivationFunctionThreshold: /* outputs <= alpha (or == beta) came from the threshold */
        BP_VMAP2(y_, dy_, dz, n, y, dy,
                 bp_vselect(bp_vmask_and(bp_vgt(y, a), bp_vne(y, b)), dy, zero));
        return true;
    default:
        return false;
    }
}
