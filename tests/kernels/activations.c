/* Kernel tester of the fused activations (kernels/activation.c, act_*.c): for every vector tier
   this CPU runs, bp_activation_apply on runs of 1 to 70 values (every remainder of every vector
   width; guard values on both sides must stay untouched) against the functions in double, and the
   Softmax / LogSoftmax backward (bp_activation_backward_channels) on random channel and pixel
   counts, with packed and strided outputs, against its formula in double.

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include "kernel_test.h"

typedef void apply_fn(const BNNSActivation *act, float *data, size_t n);
typedef void backward_channels_fn(const BNNSActivation *act, const float *y, size_t y_sc, size_t y_sx, float *dz,
                                  size_t dz_sc, size_t channels, size_t pixels);
typedef struct {
    apply_fn *apply;
    backward_channels_fn *backward_channels;
} tier;
#define DECLARE(t) apply_fn KT_CAT(bp_activation_apply, t); backward_channels_fn KT_CAT(bp_activation_backward_channels, t);
#define NAME(t) KT_STR(t),
#define KERNELS(t) {KT_CAT(bp_activation_apply, t), KT_CAT(bp_activation_backward_channels, t)},
KT_TIERS(DECLARE)
static const char *const tier_names[] = {KT_TIERS(NAME)};
static const tier tiers[] = {KT_TIERS(KERNELS)};

enum { TRIALS = 8, GUARD = 16, MAX_RUN = 70 };
static const char *const classes[] = {"elementwise runs", "softmax backward, packed", "softmax backward, strided y"};
enum { CLASSES = sizeof classes / sizeof classes[0] };

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* (function, alpha, beta) and f(x) in double */
typedef struct {
    uint32_t function;
    float alpha, beta;
} activation;
static const activation elementwise[] = {
    {BNNSActivationFunctionRectifiedLinear, 0, 0}, {BNNSActivationFunctionLeakyRectifiedLinear, 0.25f, 0},
    {BNNSActivationFunctionSigmoid, 0, 0},         {BNNSActivationFunctionTanh, 0, 0},
    {BNNSActivationFunctionELU, 1.0f, 0},          {BNNSActivationFunctionSoftplus, 1.0f, 1.0f},
    {BNNSActivationFunctionLogSigmoid, 0, 0},      {BNNSActivationFunctionHardSwish, 0, 0},
    {BNNSActivationFunctionSiLU, 0, 0},            {BNNSActivationFunctionReLU6, 0, 0},
    {BNNSActivationFunctionErf, 0, 0},             {BNNSActivationFunctionGELU, 0, 0},
};

static double exact(const activation *a, double x) {
    switch (a->function) {
    case BNNSActivationFunctionRectifiedLinear: return x > 0 ? x : 0;
    case BNNSActivationFunctionLeakyRectifiedLinear: return x > 0 ? x : a->alpha * x;
    case BNNSActivationFunctionSigmoid: return sigmoid(x);
    case BNNSActivationFunctionTanh: return tanh(x);
    case BNNSActivationFunctionELU: return x > 0 ? x : a->alpha * expm1(x);
    case BNNSActivationFunctionSoftplus: return a->alpha * log1p(exp(a->beta * x));
    case BNNSActivationFunctionLogSigmoid: return -log1p(exp(-x));
    case BNNSActivationFunctionHardSwish: return x * fmin(fmax(x + 3, 0), 6) / 6;
    case BNNSActivationFunctionSiLU: return x * sigmoid(x);
    case BNNSActivationFunctionReLU6: return fmin(fmax(x, 0), 6);
    case BNNSActivationFunctionErf: return erf(x);
    default: return 0.5 * x * erfc(-x / sqrt(2.0)); /* GELU */
    }
}

static int check_runs(const tier *t) {
    int failures = 0;
    float buffer[MAX_RUN + 2 * GUARD];
    for (size_t k = 0; k < sizeof elementwise / sizeof elementwise[0]; k++) {
        BNNSActivation act = {0};
        act.function = elementwise[k].function, act.alpha = elementwise[k].alpha, act.beta = elementwise[k].beta;
        for (size_t n = 1; n <= MAX_RUN; n++)
            for (int trial = 0; trial < TRIALS; trial++) {
                float *v = buffer + GUARD, x[MAX_RUN];
                for (size_t i = 0; i < MAX_RUN + 2 * GUARD; i++) buffer[i] = 1e30f;
                for (size_t i = 0; i < n; i++) v[i] = x[i] = 12.0f * kt_uniform();
                t->apply(&act, v, n);
                for (size_t i = 0; i < GUARD; i++)
                    if (buffer[i] != 1e30f || v[n + i] != 1e30f) {
                        printf("  function %u, run %zu: a guard value changed\n", act.function, n);
                        return failures + 1;
                    }
                for (size_t i = 0; i < n; i++) {
                    double want = exact(&elementwise[k], x[i]);
                    if (fabs(v[i] - want) > 2e-6 * fmax(1.0, fabs(want))) {
                        printf("  function %u, run %zu, value %zu: f(%.9g) = %.9g, want %.9g\n", act.function, n, i,
                               x[i], v[i], want);
                        failures++;
                        break;
                    }
                }
            }
    }
    return failures;
}

/* dz = y (dy - sum_c dy y) (Softmax) or dy - e^y sum_c dy (LogSoftmax), per pixel; y every y_sx-th
   value of its row (the others NaN, never read) */
static int check_softmax_backward(const tier *t, size_t y_sx) {
    int failures = 0;
    for (int trial = 0; trial < TRIALS * 4; trial++) {
        bool log_softmax = trial % 2;
        size_t channels = kt_range(1, 40), pixels = kt_range(1, 45), y_sc = pixels * y_sx + kt_range(0, 3);
        float *y = malloc(channels * y_sc * sizeof(float)), *dz = malloc(channels * pixels * sizeof(float));
        double *dy = malloc(channels * pixels * sizeof(double));
        for (size_t i = 0; i < channels * y_sc; i++) y[i] = NAN;
        for (size_t p = 0; p < pixels; p++) {
            double sum = 0, x[40];
            for (size_t c = 0; c < channels; c++) sum += exp(x[c] = 3.0 * kt_uniform());
            for (size_t c = 0; c < channels; c++) {
                double s = exp(x[c]) / sum;
                y[c * y_sc + p * y_sx] = (float)(log_softmax ? log(s) : s);
                dz[c * pixels + p] = kt_uniform();
                dy[c * pixels + p] = dz[c * pixels + p];
            }
        }
        BNNSActivation act = {0};
        act.function = log_softmax ? BNNSActivationFunctionLogSoftmax : BNNSActivationFunctionSoftmax;
        t->backward_channels(&act, y, y_sc, y_sx, dz, pixels, channels, pixels);
        for (size_t p = 0; p < pixels; p++) {
            double sum = 0;
            for (size_t c = 0; c < channels; c++)
                sum += dy[c * pixels + p] * (log_softmax ? 1.0 : (double)y[c * y_sc + p * y_sx]);
            for (size_t c = 0; c < channels; c++) {
                double yc = y[c * y_sc + p * y_sx], d = dy[c * pixels + p];
                double want = log_softmax ? d - exp(yc) * sum : yc * (d - sum);
                if (fabs(dz[c * pixels + p] - want) > 1e-5 * fmax(1.0, fabs(want))) {
                    printf("  %s backward, %zu channels x %zu pixels (y_sx %zu): channel %zu pixel %zu: %.9g, want %.9g\n",
                           log_softmax ? "LogSoftmax" : "Softmax", channels, pixels, y_sx, c, p, dz[c * pixels + p],
                           want);
                    failures++;
                    c = channels, p = pixels;
                }
            }
        }
        free(y), free(dz), free(dy);
    }
    return failures;
}

static int check(size_t tier_index, int c) {
    const tier *t = &tiers[tier_index];
    int failures = c == 0 ? check_runs(t) : check_softmax_backward(t, c == 1 ? 1 : 2);
    if (failures) printf("%s, %s: %d failures\n", tier_names[tier_index], classes[c], failures);
    return failures;
}

int main(void) {
    return kt_main("activation", tier_names, sizeof tiers / sizeof tiers[0], CLASSES, TRIALS, check);
}
