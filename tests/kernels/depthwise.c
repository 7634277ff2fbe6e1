/* Kernel tester of the depthwise kernels (kernels/depthwise_*.c) through the engine's choice of
   kernel and its task loop (bp_depthwise_image, both planes of a two-channel image: the 3x3 strips
   kernel at stride 1 and 2 and its two-plane form, the padded-plane kernel at stride 1 and 2, the
   general kernel and its per-pixel paths): for every vector tier this CPU runs, called directly (no
   filter, no plan but the geometry's), shape classes x 24 trials of random sizes
   (widths that are no multiple of the vector width), kernels, strides, dilations, paddings, image
   strides and activations (the fused clamps and one the engine applies afterwards), against a plain
   C loop. out[oy][ox] = f(bias + sum over (ky, kx) of w[ky][kx] * x(oy*sy + ky*dy - pt, ox*sx + kx*dx - pl)).
   And the 3x3 stride-2 input gradient kernel (bp_dw3x3_s2_input_gradient) on one plane.

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include "kernel_test.h"

#include "depthwise_kernels.h" /* bp_dw_epilogue */

typedef void image_fn(const bp_geom *g, const bp_image *img, const float *x, const float *w, const float *bias,
                      const BNNSActivation *act, float *y, float *scratch);
typedef void input_gradient_fn(const bp_geom *g, const float *dy, const float *wk, const bp_dw_epilogue *e,
                               float *dx);

typedef struct {
    image_fn *image;
    geom_plan_fn *plan;
    input_gradient_fn *s2_input_gradient;
} tier;
#define DECLARE(t)                                                                                             \
    image_fn KT_CAT(bp_depthwise_image, t);                                                                    \
    geom_plan_fn KT_CAT(bp_geom_plan, t);                                                                      \
    input_gradient_fn KT_CAT(bp_dw3x3_s2_input_gradient, t);
#define NAME(t) KT_STR(t),
#define KERNELS(t) {KT_CAT(bp_depthwise_image, t), KT_CAT(bp_geom_plan, t), KT_CAT(bp_dw3x3_s2_input_gradient, t)},
KT_TIERS(DECLARE)
static const char *const tier_names[] = {KT_TIERS(NAME)};
static const tier tiers[] = {KT_TIERS(KERNELS)};

enum { TRIALS = 24, GUARD = 16 };
static const char *const classes[] = {
    "3x3 stride 1 pad 1, rows of 1-16", "3x3 stride 1-2, pads 0-2", "KxK stride 1-2, dilation 1-2",
    "stride 3-4 (general kernel)",      "17x17 (taps past the padded-plane kernel's table)",
    "65+ rows, over 256 taps (per-pixel kernel)", "3x3 stride 2 pad 1, rows of 1-130",
    "3x3 stride 2 input gradient, pads 0-1",
};
enum { INPUT_GRADIENT_CLASS = 7 };
enum { CLASSES = sizeof classes / sizeof classes[0] };

/* A random geometry of class c: depthwise (2 groups of one channel), returned with its image. */
static void shape(int c, bp_geom *g, bp_image *img) {
    size_t kh = 3, kw = 3, s = 1, d = 1, h, w, pt, pl, pb, pr;
    do {
        h = kt_range(1, 24), w = kt_range(1, 70);
        pt = pl = pb = pr = 1;
        switch (c) {
        case 0: w = kt_range(1, 16); break;
        case 1:
            s = kt_range(1, 2), pt = kt_range(0, 2), pl = kt_range(0, 2), pb = kt_range(0, 2), pr = kt_range(0, 2);
            break;
        case 2:
        case 3:
            kh = kt_range(1, c == 2 ? 7 : 5), kw = kt_range(1, c == 2 ? 7 : 5), d = kt_range(1, c == 2 ? 2 : 3);
            s = c == 2 ? kt_range(1, 2) : kt_range(3, 4);
            pt = kt_range(0, kh - 1), pl = kt_range(0, kw - 1), pb = kt_range(0, kh - 1), pr = kt_range(0, kw - 1);
            break;
        case 6: s = 2, h = kt_range(1, 40), w = kt_range(1, 130); break;
        case 4:
            kh = kw = 17, h = kt_range(17, 30), w = kt_range(17, 40), s = kt_range(1, 2);
            pt = kt_range(0, 8), pl = kt_range(0, 8), pb = kt_range(0, 8), pr = kt_range(0, 8);
            break;
        case 5:
            kh = kt_range(65, 70), kw = kt_range(4, 5), h = kt_range(60, 80), w = kt_range(1, 20); /* > 256 taps */
            s = kt_range(1, 2), pt = kt_range(0, 5), pl = kt_range(0, 2), pb = kt_range(0, 5), pr = kt_range(0, 2);
        }
    } while (!kt_geom(g, 2, 1, 1, h, w, kh, kw, c == 0 || c == 6 || kt_next() % 2 ? s : kt_range(1, 3), s, d, d, pt,
                      pl, pb, pr));
    bool strided = c != 0 && kt_next() % 3 == 0;
    *img = kt_image(2, h, w, strided ? kt_range(1, 3) : 1, strided ? kt_range(0, 5) : 0);
}

/* No activation, the three the kernels fuse (ReLU, ReLU6, Clamp), or one applied afterwards (leaky ReLU). */
static BNNSActivation activation(void) {
    BNNSActivation a = {.function = BNNSActivationFunctionIdentity};
    switch (kt_next() % 5) {
    case 1: a.function = BNNSActivationFunctionRectifiedLinear; break;
    case 2: a.function = BNNSActivationFunctionReLU6; break;
    case 3:
        a.function = BNNSActivationFunctionClamp, a.alpha = -0.5f * (float)kt_range(0, 2), a.beta = 0.25f;
        break;
    case 4: a.function = BNNSActivationFunctionLeakyRectifiedLinear, a.alpha = 0.125f; break;
    }
    return a;
}

static double activate(const BNNSActivation *a, double v) {
    switch (a->function) {
    case BNNSActivationFunctionRectifiedLinear: return fmax(v, 0.0);
    case BNNSActivationFunctionReLU6: return fmin(fmax(v, 0.0), 6.0);
    case BNNSActivationFunctionClamp: return fmin(fmax(v, a->alpha), a->beta);
    case BNNSActivationFunctionLeakyRectifiedLinear: return v < 0.0 ? a->alpha * v : v;
    default: return v;
    }
}

/* The stride-2 input gradient of one channel (bp_dw3x3_s2_input_gradient): dx (packed, every pixel
   written) = clamp(bias + sum of w[ky][kx] * dy[oy][ox] over 2*oy + ky - pt = iy, 2*ox + kx - pl = ix). */
static int check_s2_input_gradient(const tier *t, const char *name) {
    int failures = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        bp_geom g;
        size_t h, w, pt = kt_range(0, 1), pl = kt_range(0, 1);
        do h = kt_range(1, 40), w = kt_range(1, 130);
        while (!kt_geom(&g, 1, 1, 1, h, w, 3, 3, 2, 2, 1, 1, pt, pl, kt_range(0, 2), kt_range(0, 2)));
        size_t ohw = g.out_h * g.out_w, ihw = h * w;
        float *dy = malloc(ohw * sizeof(float)), *dx = malloc((ihw + GUARD) * sizeof(float)), wk[9];
        kt_fill(dy, ohw);
        kt_fill(wk, 9);
        for (size_t i = 0; i < ihw + GUARD; i++) dx[i] = 1e30f;
        bp_dw_epilogue e = {kt_uniform(), -INFINITY, INFINITY};
        if (trial % 2) e.lo = -0.25f, e.hi = 0.5f;
        t->s2_input_gradient(&g, dy, wk, &e, dx);
        double worst = 0.0;
        for (size_t iy = 0; iy < h; iy++)
            for (size_t ix = 0; ix < w; ix++) {
                double want = e.bias, size = fabs(e.bias);
                for (size_t ky = 0; ky < 3; ky++)
                    for (size_t kx = 0; kx < 3; kx++) {
                        size_t ry = iy + pt - ky, rx = ix + pl - kx; /* 2*oy, 2*ox (wrapping below 0) */
                        if (ry % 2 || rx % 2 || ry / 2 >= g.out_h || rx / 2 >= g.out_w) continue;
                        double term = (double)wk[ky * 3 + kx] * dy[ry / 2 * g.out_w + rx / 2];
                        want += term, size += fabs(term);
                    }
                double error = fabs(dx[iy * w + ix] - fmin(fmax(want, e.lo), e.hi)) / (size + 1.0);
                worst = isnan(error) ? INFINITY : fmax(worst, error);
            }
        for (size_t i = ihw; i < ihw + GUARD; i++)
            if (dx[i] != 1e30f) worst = INFINITY; /* written past the plane */
        if (!(worst <= 1e-5)) {
            printf("FAIL %s depthwise [%s] %zux%zu input, pad top %zu left %zu, dy %zux%zu: relative error %.3g\n",
                   name, classes[INPUT_GRADIENT_CLASS], h, w, pt, pl, g.out_h, g.out_w, worst);
            failures++;
        }
        free(dy), free(dx);
    }
    return failures;
}

static int check(size_t tier_index, int c) {
    const tier *t = &tiers[tier_index];
    const char *name = tier_names[tier_index];
    if (c == INPUT_GRADIENT_CLASS) return check_s2_input_gradient(t, name);
    int failures = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        bp_geom g;
        bp_image img;
        shape(c, &g, &img);
        size_t scratch_floats, ohw = g.out_h * g.out_w, taps = g.kh * g.kw, planes = g.out_c;
        if (!t->plan(&g, &scratch_floats)) {
            printf("FAIL %s: bp_geom_plan refused a depthwise geometry\n", name);
            return failures + 1;
        }
        float *x = malloc(img.extent * sizeof(float)), *w = malloc(planes * taps * sizeof(float)), bias[2];
        float *out = malloc((planes * ohw + GUARD) * sizeof(float)), *scratch = malloc(scratch_floats * sizeof(float));
        kt_fill(x, img.extent);
        kt_fill(w, planes * taps);
        kt_fill(bias, planes);
        for (size_t i = 0; i < scratch_floats; i++) scratch[i] = NAN; /* the kernel clears what it reads */
        for (size_t i = 0; i < planes * ohw + GUARD; i++) out[i] = 1e30f;
        BNNSActivation act = activation();
        t->image(&g, &img, x, w, bias, act.function ? &act : NULL, out, scratch);
        double worst = 0.0;
        for (size_t o = 0; o < planes; o++)
            for (size_t oy = 0; oy < g.out_h; oy++)
                for (size_t ox = 0; ox < g.out_w; ox++) {
                    double want = bias[o], size = fabs(bias[o]);
                    for (size_t ky = 0; ky < g.kh; ky++)
                        for (size_t kx = 0; kx < g.kw; kx++) {
                            double in = kt_pixel(&img, x, o, oy * g.sy + ky * g.dy, ox * g.sx + kx * g.dx, g.pt, g.pl);
                            double term = w[(o * g.kh + ky) * g.kw + kx] * in;
                            want += term, size += fabs(term);
                        }
                    double got = out[(o * g.out_h + oy) * g.out_w + ox];
                    double error = fabs(got - activate(&act, want)) / (size + 1.0);
                    worst = isnan(error) ? INFINITY : fmax(worst, error);
                }
        for (size_t i = planes * ohw; i < planes * ohw + GUARD; i++)
            if (out[i] != 1e30f) worst = INFINITY; /* written past the plane */
        if (!(worst <= 1e-5)) {
            printf("FAIL %s depthwise [%s] %zux%zu image (pixel stride %zu, row stride %zu), kernel %zux%zu stride "
                   "%zux%zu dilation %zux%zu pad top %zu left %zu -> %zux%zu, activation %d: relative error %.3g\n",
                   name, classes[c], g.in_h, g.in_w, img.sx, img.sy, g.kh, g.kw, g.sy, g.sx, g.dy, g.dx, g.pt,
                   g.pl, g.out_h, g.out_w, (int)act.function, worst);
            failures++;
        }
        free(x), free(w), free(out), free(scratch);
    }
    return failures;
}

int main(void) { return kt_main("depthwise", tier_names, sizeof tiers / sizeof tiers[0], CLASSES, TRIALS, check); }
