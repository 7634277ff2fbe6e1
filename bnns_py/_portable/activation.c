/* Activation functions fused after a convolution, and their derivatives from the output. */
#include <math.h>

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

bool bp_activation_supported(const BNNSActivation *act) {
    switch (act->function) {
    case 0: case 1: case 2: case 3: case 4: case 5: case 6: case 7: case 8: case 12: case 15:
    case 16: case 17: case 18: case 19: case 20: case 22: case 23: case 24: case 25: case 26:
    case 27: case 28: case 30: case 31: case 32: case 33: case 34: case 35:
        return true;
    default:
        return false;
    }
}

static float activate(uint32_t f, float a, float b, float x) {
    switch (f) {
    case 1: return x < 0 ? 0.0f : x;
    case 2: return x < 0 ? a * x : x;
    case 3: return sigmoid(x);
    case 4: return tanhf(x);
    case 5: return a * tanhf(b * x);
    case 6: return fabsf(x);
    case 7: return a * x;
    case 8: return fminf(fmaxf(x, a), b);
    case 12: return 0.5f * x * (1.0f + tanhf(a * (x + b * x * x * x)));
    case 15: return fmaxf(0.0f, fminf(1.0f, a * x + b));
    case 16: return a * softplus1(b * x);
    case 17: return x / (1.0f + fabsf(x));
    case 18: return x < 0 ? a * expm1f(x) : x;
    case 19: return x < 0 ? fminf(a * x, b) : fminf(x, b);
    case 20: return a * x + b;
    case 22: return -softplus1(-x);
    case 23: return x < 0 ? SELU_LAMBDA * SELU_ALPHA * expm1f(x) : SELU_LAMBDA * x;
    case 24: return x < 0 ? a * expm1f(x / a) : x;
    case 25: return fabsf(x) < fabsf(a) ? 0.0f : x;
    case 26: return fabsf(x) < fabsf(a) ? 0.0f : x - copysignf(a, x);
    case 27: return x - tanhf(x);
    case 28: return x <= a ? b : x;
    case 30: return x * fminf(fmaxf(x + 3.0f, 0.0f), 6.0f) / 6.0f;
    case 31: return x * sigmoid(x);
    case 32: return fminf(fmaxf(x, 0.0f), 6.0f);
    case 33: return erff(x);
    case 34: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 35: return x * sigmoid(1.702f * x);
    default: return x;
    }
}

void bp_activation_apply(const BNNSActivation *act, float *data, size_t n) {
    uint32_t f = act->function;
    float a = act->alpha, b = act->beta;
    if (f == 0) return;
    if (f == 1) {  /* the common case, kept branch-free for vectorization */
        for (size_t i = 0; i < n; i++) data[i] = data[i] < 0 ? 0.0f : data[i];
        return;
    }
    for (size_t i = 0; i < n; i++) data[i] = activate(f, a, b, data[i]);
}

bool bp_activation_backward_supported(const BNNSActivation *act) {
    switch (act->function) {
    case 0: case 1: case 3: case 4: case 7: case 8: case 15: case 16: case 17: case 18: case 20:
    case 22: case 23: case 24: case 25: case 26: case 28:
        return true;
    case 2: case 19:
        return act->alpha > 0;
    default:
        return false;
    }
}

/* The derivative as a function of the output y (BNNS differentiates fused activations from y).
   At kinks the subgradient matches PyTorch's choice (e.g. ReLU'(0) = 0). */
static float derivative(uint32_t f, float a, float b, float y) {
    switch (f) {
    case 1: return y > 0 ? 1.0f : 0.0f;
    case 2: return y > 0 ? 1.0f : a;                       /* alpha > 0: sign(y) = sign(x) */
    case 3: return y * (1.0f - y);
    case 4: return 1.0f - y * y;
    case 7: return a;
    case 8: return (y > a && y < b) ? 1.0f : 0.0f;
    case 15: return (y > 0 && y < 1) ? a : 0.0f;
    case 16: return a != 0 ? a * b * -expm1f(-y / a) : 0.0f; /* sigmoid(b x) = 1 - exp(-y/a) */
    case 17: { float t = 1.0f - fabsf(y); return t * t; }   /* 1/(1+|x|)^2 with |x| = |y|/(1-|y|) */
    case 18: return y > 0 ? 1.0f : y + a;                  /* x<=0: a e^x = y + a */
    case 19: return (y >= b) ? 0.0f : (y > 0 ? 1.0f : a);
    case 20: return a;
    case 22: return -expm1f(y);                            /* 1 - sigmoid(x) = 1 - e^y */
    case 23: return y > 0 ? SELU_LAMBDA : y + SELU_LAMBDA * SELU_ALPHA;
    case 24: return y > 0 ? 1.0f : y / a + 1.0f;           /* e^(x/a) = y/a + 1 */
    case 25: return y != 0 ? 1.0f : 0.0f;
    case 26: return y != 0 ? 1.0f : 0.0f;
    case 28: return (y > a && y != b) ? 1.0f : 0.0f;       /* outputs <= alpha (or == beta) came from the threshold */
    default: return 1.0f;
    }
}

void bp_activation_backward(const BNNSActivation *act, const float *y, const float *dy, float *dz, size_t n) {
    uint32_t f = act->function;
    float a = act->alpha, b = act->beta;
    if (f == 0) {
        for (size_t i = 0; i < n; i++) dz[i] = dy[i];
        return;
    }
    for (size_t i = 0; i < n; i++) dz[i] = dy[i] * derivative(f, a, b, y[i]);
}
