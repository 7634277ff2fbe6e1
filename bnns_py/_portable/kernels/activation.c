/* Activation functions fused after a convolution, and their derivatives from the output.

   Most functions act on every value alone. Softmax (11) and LogSoftmax (21) act on the channel
   vector of every output pixel (bnns-py's decision: BNNS does not say which axis a fused softmax
   uses; a convolution or fully-connected output's channel axis is the natural one, and what
   reference.apply_activation(..., axis=1) computes). Gumbel (13) draws random values. */
#include <math.h>
#include <stdatomic.h>

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
    switch (act->function) {
    case 0: case 1: case 2: case 3: case 4: case 5: case 6: case 7: case 8: case 11: case 12: case 13:
    case 15: case 16: case 17: case 18: case 19: case 20: case 21: case 22: case 23: case 24: case 25:
    case 26: case 27: case 28: case 29: case 30: case 31: case 32: case 33: case 34: case 35:
        return NULL;
    case 9: case 10:
        return "IntegerLinearSaturate produces integer outputs and the portable backend computes Float32 "
               "outputs only";
    case 14:
        return "GumbelMax is not supported by the portable backend: what it writes for a fused layer output "
               "(the axis of the max, and whether each value gets the max or a sample) is not documented";
    default:
        return "unknown activation function";
    }
}

bool bp_activation_supported(const BNNSActivation *act) { return bp_activation_unsupported_reason(act) == NULL; }

bool bp_activation_is_channelwise(const BNNSActivation *act) { return act->function == 11 || act->function == 21; }

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
    case 29: return x < 0 ? a * x : x;  /* every per-channel alpha_c starts at (and here stays) alpha */
    case 30: return x * fminf(fmaxf(x + 3.0f, 0.0f), 6.0f) / 6.0f;
    case 31: return x * sigmoid(x);
    case 32: return fminf(fmaxf(x, 0.0f), 6.0f);
    case 33: return erff(x);
    case 34: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 35: return x * sigmoid(1.702f * x);
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
    if (f == 0) return;
    if (f == 13) {  /* ignores x */
        gumbel_fill(a, b, data, n);
        return;
    }
    if (f == 1) {  /* the common case, kept branch-free for vectorization */
        for (size_t i = 0; i < n; i++) data[i] = data[i] < 0 ? 0.0f : data[i];
        return;
    }
    for (size_t i = 0; i < n; i++) data[i] = activate(f, a, b, data[i]);
}

/* Softmax / LogSoftmax over each pixel's channel vector, pixels in blocks so that planes are
   read contiguously. */
#define PIXEL_BLOCK 256

static void channelwise_apply(uint32_t f, float *data, size_t channels, size_t pixels, size_t channel_stride) {
    float max[PIXEL_BLOCK], sum[PIXEL_BLOCK];
    for (size_t p0 = 0; p0 < pixels; p0 += PIXEL_BLOCK) {
        size_t m = pixels - p0 < PIXEL_BLOCK ? pixels - p0 : PIXEL_BLOCK;
        float *base = data + p0;
        for (size_t i = 0; i < m; i++) {
            max[i] = -INFINITY;
            sum[i] = 0.0f;
        }
        for (size_t c = 0; c < channels; c++)
            for (size_t i = 0; i < m; i++) max[i] = fmaxf(max[i], base[c * channel_stride + i]);
        for (size_t c = 0; c < channels; c++) {
            float *v = base + c * channel_stride;
            for (size_t i = 0; i < m; i++) {
                float e = expf(v[i] - max[i]);
                sum[i] += e;
                if (f == 11) v[i] = e;
            }
        }
        for (size_t c = 0; c < channels; c++) {
            float *v = base + c * channel_stride;
            if (f == 11)
                for (size_t i = 0; i < m; i++) v[i] /= sum[i];
            else
                for (size_t i = 0; i < m; i++) v[i] = (v[i] - max[i]) - logf(sum[i]);
        }
    }
}

void bp_activation_apply_image(const BNNSActivation *act, float *data, size_t channels, size_t pixels,
                               size_t channel_stride) {
    if (act->function == 0) return;
    if (bp_activation_is_channelwise(act)) {
        channelwise_apply(act->function, data, channels, pixels, channel_stride);
    } else if (channel_stride == pixels) {
        bp_activation_apply(act, data, channels * pixels);
    } else {
        for (size_t c = 0; c < channels; c++) bp_activation_apply(act, data + c * channel_stride, pixels);
    }
}

const char *bp_activation_backward_unsupported_reason(const BNNSActivation *act) {
    switch (act->function) {
    case 0: case 1: case 3: case 4: case 7: case 8: case 11: case 15: case 16: case 17: case 18: case 20:
    case 21: case 22: case 23: case 24: case 25: case 26: case 27: case 28:
        return NULL;
    case 2: case 19: case 29:
        return act->alpha > 0 ? NULL : "it can be differentiated from the output only when alpha > 0";
    case 13: case 14:
        return "Gumbel and GumbelMax are random and have no derivative";
    case 6: case 12: case 30: case 31:
        return "its derivative needs the forward input x, so BNNS cannot fuse it in training";
    case 35:
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
    case 1: return y > 0 ? 1.0f : 0.0f;
    case 2: case 29: return y > 0 ? 1.0f : a;              /* alpha > 0: sign(y) = sign(x) */
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
    case 27: return tanhshrink_derivative(y);
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

void bp_activation_backward_channels(const BNNSActivation *act, const float *y, size_t y_sc, size_t y_sx, float *dz,
                                     size_t dz_sc, size_t channels, size_t pixels) {
    float s[PIXEL_BLOCK];
    bool softmax = act->function == 11;
    for (size_t p0 = 0; p0 < pixels; p0 += PIXEL_BLOCK) {
        size_t m = pixels - p0 < PIXEL_BLOCK ? pixels - p0 : PIXEL_BLOCK;
        const float *yb = y + p0 * y_sx;
        float *db = dz + p0;
        for (size_t i = 0; i < m; i++) s[i] = 0.0f;
        for (size_t c = 0; c < channels; c++) {
            const float *yc = yb + c * y_sc;
            const float *dc = db + c * dz_sc;
            if (softmax)
                for (size_t i = 0; i < m; i++) s[i] += dc[i] * yc[i * y_sx];
            else
                for (size_t i = 0; i < m; i++) s[i] += dc[i];
        }
        for (size_t c = 0; c < channels; c++) {
            const float *yc = yb + c * y_sc;
            float *dc = db + c * dz_sc;
            if (softmax)
                for (size_t i = 0; i < m; i++) dc[i] = yc[i * y_sx] * (dc[i] - s[i]);
            else
                for (size_t i = 0; i < m; i++) dc[i] -= expf(yc[i * y_sx]) * s[i];
        }
    }
}
