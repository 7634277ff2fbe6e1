/* Kernel tester of the depthwise kernels (kernels/depthwise_*.c) through the engine's choice of
   kernel and its task loop (bp_depthwise_image, both planes of a two-channel image: the 3x3 strips
   kernel at stride 1 and 2 and its two-plane form, the padded-plane kernel at stride 1 and 2, the
   general kernel and its per-pixel paths): for every vector tier this CPU runs, called directly (no
   filter, no plan but the geometry's), shape classes x 24 trials of random sizes
   (widths that are no multiple of the vector width), kernels, strides, dilations, paddings, image
   strides and activations (the fused clamps and one the engine applies afterwards), against a plain
   C loop. out[oy][ox] = f(bias + sum over (ky, kx) of w[ky][kx] * x(oy*sy + ky*dy - pt, ox*sx + kx*dx - pl)).

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include "kernel_test.h"

typedef void image_fn(const bp_geom *g, const bp_image *img, const float *x, const float *w, const float *bias,
                      const BNNSActivation *act, float *y, float *scratch);

typedef struct {
    image_fn *image;
    geom_plan_fn *plan;
} tier;
#define DECLARE(t) image_fn KT_CAT(bp_depthwise_image, t); geom_plan_fn KT_CAT(bp_geom_plan, t);
#define NAME(t) KT_STR(t),
#define KERNELS(t) {KT_CAT(bp_depthwise_image, t), KT_CAT(bp_geom_plan, t)},
KT_TIERS(DECLARE)
static const char *const tier_names[] = {KT_TIERS(NAME)};
static const tier tiers[] = {KT_TIERS(KERNELS)};

enum { TRIALS = 24, GUARD = 16 };
static const char *const classes[] = {
    "3x3 stride 1 pad 1, rows of 1-16", "3x3 stride 1-2, pads 0-2", "KxK stride 1-2, dilation 1-2",
    "stride 3-4 (general kernel)",      "17x17 (taps past the padded-plane kernel's table)",
    "65+ rows, over 256 taps (per-pixel kernel)", "3x3 stride 2 pad 1, rows of 1-130",
};
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

static int check(size_t tier_index, int c) {
    const tier *t = &tiers[tier_index];
    const char *name = tier_names[tier_index];
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
