/* Activation functions fused after a convolution, and their derivatives from the output.

   The vector kernels are in act_*.c (piecewise-linear functions, functions built on exp / log /
   erf, derivatives, softmax); this file holds the support tables, Gumbel's generator and the
   scalar formulas, which the kernels leave only rare cases to (CELU with alpha < 0, the Softplus
   derivative with alpha <= 0, the TanhShrink derivative's Newton iteration).

   Most functions act on every value alone. Softmax and LogSoftmax act on the channel
   vector of every output pixel (bnns-py's decision: BNNS does not say which axis a fused softmax
   uses; a convolution or fully-connected output's channel axis is the natural one, and what
   reference.apply_activation(..., axis=1) computes). Gumbel draws random values. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "act_kernels.h"
#include "internal.h"

#define SELU_LAMBDA 1.0507009873554804934193349852946f
#define SELU_ALPHA 1.6732632423543772848170429916717f

static float sigmoid(float x) {
    if (x >= 0) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

/* log(1 + exp(x)) without overflow */
static float softplus1(float x) { return x > 0 ? x + log1pf(expf(-x)) : log1pf(expf(x)); }

const char *bp_activation_unsupported_reason(const BNNSActivation *act) {
    if (act->function > BNNSActivationFunctionGELUApproximationSigmoid) return "unknown activation function";
    switch (act->function) { /* the values up to the last, but these */
    case BNNSActivationFunctionIntegerLinearSaturate:
    case BNNSActivationFunctionIntegerLinearSaturatePerChannel:
        return "IntegerLinearSaturate produces integer outputs and the portable backend computes Float32 "
               "outputs only";
    case BNNSActivationFunctionGumbelMax:
        return "GumbelMax is not supported by the portable backend: what it writes for a fused layer output "
               "(the axis of the max, and whether each value gets the max or a sample) is not documented";
    default:
        return NULL;
    }
}

bool bp_activation_supported(const BNNSActivation *act) { return bp_activation_unsupported_reason(act) == NULL; }

bool bp_activation_is_channelwise(const BNNSActivation *act) { return act->function == BNNSActivationFunctionSoftmax || act->function == BNNSActivationFunctionLogSoftmax; }

static float activate(uint32_t f, float a, float b, float x) {
    switch (f) {
    case BNNSActivationFunctionRectifiedLinear: return x < 0 ? 0.0f : x;
    case BNNSActivationFunctionLeakyRectifiedLinear: return x < 0 ? a * x : x;
    case BNNSActivationFunctionSigmoid: return sigmoid(x);
    case BNNSActivationFunctionTanh: return tanhf(x);
    case BNNSActivationFunctionScaledTanh: return a * tanhf(b * x);
    case BNNSActivationFunctionAbs: return fabsf(x);
    case BNNSActivationFunctionLinear: return a * x;
    case BNNSActivationFunctionClamp: return fminf(fmaxf(x, a), b);
    case BNNSActivationFunctionGELUApproximation: return 0.5f * x * (1.0f + tanhf(a * (x + b * x * x * x)));
    case BNNSActivationFunctionHardSigmoid: return fmaxf(0.0f, fminf(1.0f, a * x + b));
    case BNNSActivationFunctionSoftplus: return a * softplus1(b * x);
    case BNNSActivationFunctionSoftsign: return x / (1.0f + fabsf(x));
    case BNNSActivationFunctionELU: return x < 0 ? a * expm1f(x) : x;
    case BNNSActivationFunctionClampedLeakyRectifiedLinear: return x < 0 ? fminf(a * x, b) : fminf(x, b);
    case BNNSActivationFunctionLinearWithBias: return a * x + b;
    case BNNSActivationFunctionLogSigmoid: return -softplus1(-x);
    case BNNSActivationFunctionSELU: return x < 0 ? SELU_LAMBDA * SELU_ALPHA * expm1f(x) : SELU_LAMBDA * x;
    case BNNSActivationFunctionCELU: return x < 0 ? a * expm1f(x / a) : x;
    case BNNSActivationFunctionHardShrink: return fabsf(x) < fabsf(a) ? 0.0f : x;
    case BNNSActivationFunctionSoftShrink: return fabsf(x) < fabsf(a) ? 0.0f : x - copysignf(a, x);
    case BNNSActivationFunctionTanhShrink: return x - tanhf(x);
    case BNNSActivationFunctionThreshold: return x <= a ? b : x;
    case BNNSActivationFunctionPReLUPerChannel: return x < 0 ? a * x : x;  /* every per-channel alpha_c starts at (and here stays) alpha */
    case BNNSActivationFunctionHardSwish: return x * fminf(fmaxf(x + 3.0f, 0.0f), 6.0f) / 6.0f;
    case BNNSActivationFunctionSiLU: return x * sigmoid(x);
    case BNNSActivationFunctionReLU6: return fminf(fmaxf(x, 0.0f), 6.0f);
    case BNNSActivationFunctionErf: return erff(x);
    case BNNSActivationFunctionGELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case BNNSActivationFunctionGELUApproximationSigmoid: return x * sigmoid(1.702f * x);
    default: return x;
    }
}

/* ---- Gumbel: a splitmix64 stream per call, seeded from a process-wide atomic counter, so
   concurrent calls (on one filter or many) never share or race on generator state ---- */
static _Atomic uint64_t gumbel_calls;

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static void gumbel_fill(float a, float b, float *data, size_t n) {
    uint64_t seed = atomic_fetch_add(&gumbel_calls, 1) + 1;
    uint64_t state = splitmix64(&seed);  /* decorrelate consecutive calls' streams */
    double alpha = a, beta = b;
    for (size_t i = 0; i < n; i++) {
        double u = ((double)(splitmix64(&state) >> 11) + 0.5) * 0x1p-53;  /* uniform in (0, 1) */
        data[i] = (float)-log(-log(alpha * u + beta) + beta);
    }
}

void bp_activation_apply(const BNNSActivation *act, float *data, size_t n) {
    uint32_t f = act->function;
    float a = act->alpha, b = act->beta;
    if (f == BNNSActivationFunctionIdentity) return;
    if (f == BNNSActivationFunctionGumbel) { /* ignores x */
        gumbel_fill(a, b, data, n);
        return;
    }
    if (bp_act_piecewise_forward(f, a, b, data, n) || bp_act_smooth_forward(f, a, b, data, n)) return;
    for (size_t i = 0; i < n; i++) data[i] = activate(f, a, b, data[i]);
}

void bp_activation_apply_image(const BNNSActivation *act, float *data, size_t channels, size_t pixels,
                               size_t channel_stride) {
    if (act->function == BNNSActivationFunctionIdentity) return;
    if (bp_activation_is_channelwise(act)) {
        bp_act_softmax(act->function == BNNSActivationFunctionLogSoftmax, data, channels, pixels, channel_stride);
    } else if (channel_stride == pixels) {
        bp_activation_apply(act, data, channels * pixels);
    } else {
        for (size_t c = 0; c < channels; c++) bp_activation_apply(act, data + c * channel_stride, pixels);
    }
}

const char *bp_activation_backward_unsupported_reason(const BNNSActivation *act) {
    switch (act->function) {
    case BNNSActivationFunctionIdentity:
    case BNNSActivationFunctionRectifiedLinear:
    case BNNSActivationFunctionSigmoid:
    case BNNSActivationFunctionTanh:
    case BNNSActivationFunctionLinear:
    case BNNSActivationFunctionClamp:
    case BNNSActivationFunctionSoftmax:
    case BNNSActivationFunctionHardSigmoid:
    case BNNSActivationFunctionSoftplus:
    case BNNSActivationFunctionSoftsign:
    case BNNSActivationFunctionELU:
    case BNNSActivationFunctionLinearWithBias:
    case BNNSActivationFunctionLogSoftmax:
    case BNNSActivationFunctionLogSigmoid:
    case BNNSActivationFunctionSELU:
    case BNNSActivationFunctionCELU:
    case BNNSActivationFunctionHardShrink:
    case BNNSActivationFunctionSoftShrink:
    case BNNSActivationFunctionTanhShrink:
    case BNNSActivationFunctionThreshold:
        return NULL;
    case BNNSActivationFunctionLeakyRectifiedLinear:
    case BNNSActivationFunctionClampedLeakyRectifiedLinear:
    case BNNSActivationFunctionPReLUPerChannel:
        return act->alpha > 0 ? NULL : "it can be differentiated from the output only when alpha > 0";
    case BNNSActivationFunctionGumbel:
    case BNNSActivationFunctionGumbelMax:
        return "Gumbel and GumbelMax are random and have no derivative";
    case BNNSActivationFunctionAbs:
    case BNNSActivationFunctionGELUApproximation:
    case BNNSActivationFunctionHardSwish:
    case BNNSActivationFunctionSiLU:
        return "its derivative needs the forward input x, so BNNS cannot fuse it in training";
    case BNNSActivationFunctionGELUApproximationSigmoid:
        return "x*sigmoid(1.702x) is not monotonic, so the output y does not determine x or the derivative";
    default:
        return "BNNS does not differentiate it from the layer output";
    }
}

bool bp_activation_backward_supported(const BNNSActivation *act) {
    return bp_activation_backward_unsupported_reason(act) == NULL;
}

/* TanhShrink y = x - tanh(x) is strictly increasing (dy/dx = tanh(x)^2 > 0 for x != 0) and odd, so
   x is a function of y: Newton's method in double precision, from cbrt(3|y|) (a lower bound of |x|,
   from y = x^3/3 - 2x^5/15 + ...) or |y| + 1 (an upper bound). For x > 0 the function is convex,
   so after the first step the iterates decrease monotonically to the root. Returns tanh(x)^2. */
static float tanhshrink_derivative(float y) {
    double t = fabs((double)y);
    if (t == 0.0) return 0.0f;
    double x = t < 1.0 ? cbrt(3.0 * t) : t + 1.0;
    if (x < 1e-4) return (float)(x * x); /* tanh(x)^2 = x^2 (1 + O(x^2)) */
    for (int it = 0; it < 60; it++) {
        double th = tanh(x);
        double step = (x - th - t) / (th * th);
        x -= step;
        if (fabs(step) <= 1e-12 * x) break;
    }
    double th = tanh(x);
    return (float)(th * th);
}

/* The derivative as a function of the output y (BNNS differentiates fused activations from y).
   At kinks the subgradient matches PyTorch's choice (e.g. ReLU'(0) = 0). */
static float derivative(uint32_t f, float a, float b, float y) {
    switch (f) {
    case BNNSActivationFunctionRectifiedLinear: return y > 0 ? 1.0f : 0.0f;
    case BNNSActivationFunctionLeakyRectifiedLinear:
    case BNNSActivationFunctionPReLUPerChannel: return y > 0 ? 1.0f : a;              /* alpha > 0: sign(y) = sign(x) */
    case BNNSActivationFunctionSigmoid: return y * (1.0f - y);
    case BNNSActivationFunctionTanh: return 1.0f - y * y;
    case BNNSActivationFunctionLinear: return a;
    case BNNSActivationFunctionClamp: return (y > a && y < b) ? 1.0f : 0.0f;
    case BNNSActivationFunctionHardSigmoid: return (y > 0 && y < 1) ? a : 0.0f;
    case BNNSActivationFunctionSoftplus: return a != 0 ? a * b * -expm1f(-y / a) : 0.0f; /* sigmoid(b x) = 1 - exp(-y/a) */
    case BNNSActivationFunctionSoftsign: { float t = 1.0f - fabsf(y); return t * t; }   /* 1/(1+|x|)^2 with |x| = |y|/(1-|y|) */
    case BNNSActivationFunctionELU: return y > 0 ? 1.0f : y + a;                  /* x<=0: a e^x = y + a */
    case BNNSActivationFunctionClampedLeakyRectifiedLinear: return (y >= b) ? 0.0f : (y > 0 ? 1.0f : a);
    case BNNSActivationFunctionLinearWithBias: return a;
    case BNNSActivationFunctionLogSigmoid: return -expm1f(y);                            /* 1 - sigmoid(x) = 1 - e^y */
    case BNNSActivationFunctionSELU: return y > 0 ? SELU_LAMBDA : y + SELU_LAMBDA * SELU_ALPHA;
    case BNNSActivationFunctionCELU: return y > 0 ? 1.0f : y / a + 1.0f;           /* e^(x/a) = y/a + 1 */
    case BNNSActivationFunctionHardShrink: return y != 0 ? 1.0f : 0.0f;
    case BNNSActivationFunctionSoftShrink: return y != 0 ? 1.0f : 0.0f;
    case BNNSActivationFunctionTanhShrink: return tanhshrink_derivative(y);
    case BNNSActivationFunctionThreshold: return (y > a && y != b) ? 1.0f : 0.0f;       /* outputs <= alpha (or == beta) came from the threshold */
    default: return 1.0f;
    }
}

void bp_activation_backward(const BNNSActivation *act, const float *y, const float *dy, float *dz, size_t n) {
    uint32_t f = act->function;
    float a = act->alpha, b = act->beta;
    if (f == BNNSActivationFunctionIdentity) {
        memcpy(dz, dy, n * sizeof *dz);
        return;
    }
    if (bp_act_backward_vector(f, a, b, y, dy, dz, n)) return;
    for (size_t i = 0; i < n; i++) dz[i] = dy[i] * derivative(f, a, b, y[i]);
}

void bp_activation_backward_channels(const BNNSActivation *act, const float *y, size_t y_sc, size_t y_sx, float *dz,
                                     size_t dz_sc, size_t channels, size_t pixels) {
    bp_act_softmax_backward(act->function == BNNSActivationFunctionLogSoftmax, y, y_sc, y_sx, dz, dz_sc, channels,
                            pixels);
}
