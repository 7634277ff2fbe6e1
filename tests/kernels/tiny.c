/* Kernel tester of the tiny-layer kernel (kernels/tiny_planes.c), through engines/conv_engine.c's
   bp_tiny_planes (the padded copy of a group's input planes, then one output plane or a pair from
   it, up to 8 rows at a time and one vector per row): for every vector tier this CPU runs, called directly on random stride-1
   geometries whose rows have 1 to 8 outputs (kernels, dilations, paddings, channels, image
   strides), 24 trials per shape class, against a plain C loop.
   out[m][oy][ox] = bias[m] + sum over (ci, ky, kx) of w[m][ci][ky][kx] * x(ci, oy + ky*dy - pt, ox + kx*dx - pl).

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include "kernel_test.h"

typedef void tiny_fn(const bp_geom *g, const bp_image *img, const float *x, float *pad, const float *wo,
                     const float *bias, float *out, bool pairs);
typedef struct {
    tiny_fn *planes;
    geom_plan_fn *plan;
} tier;
#define DECLARE(t) tiny_fn KT_CAT(bp_tiny_planes, t); geom_plan_fn KT_CAT(bp_geom_plan, t);
#define NAME(t) KT_STR(t),
#define KERNELS(t) {KT_CAT(bp_tiny_planes, t), KT_CAT(bp_geom_plan, t)},
KT_TIERS(DECLARE)
static const char *const tier_names[] = {KT_TIERS(NAME)};
static const tier tiers[] = {KT_TIERS(KERNELS)};

enum { TRIALS = 24, GUARD = 16 };
static const char *const classes[] = {"one output plane, packed", "a pair of output planes, packed",
                                      "one or two planes, strided image", "one or two planes, dilation 2"};
enum { CLASSES = sizeof classes / sizeof classes[0] };

/* A random tiny geometry of class c (planned by the tier: it has padded planes), with its image. */
static void shape(int c, geom_plan_fn *plan, bp_geom *g, bp_image *img, size_t *scratch_floats) {
    size_t out_cg = c == 0 ? 1 : c == 1 ? 2 : kt_range(1, 2), d = c == 3 ? 2 : 1;
    for (;;) {
        size_t kh = kt_range(1, 5), kw = kt_range(1, 5), ow = kt_range(1, 8), oh = kt_range(1, 20);
        size_t pt = kt_range(0, kh - 1), pl = kt_range(0, kw - 1), pb = kt_range(0, kh - 1), pr = kt_range(0, kw - 1);
        size_t span_h = (kh - 1) * d + 1, span_w = (kw - 1) * d + 1;
        if (kh * kw == 1 || oh + span_h - 1 <= pt + pb || ow + span_w - 1 <= pl + pr) continue;
        size_t h = oh + span_h - 1 - pt - pb, w = ow + span_w - 1 - pl - pr;
        if (!kt_geom(g, kt_range(1, 2), kt_range(1, 4), out_cg, h, w, kh, kw, 1, 1, d, d, pt, pl, pb, pr)) continue;
        if (plan(g, scratch_floats) && g->padded_floats != 0) break;
    }
    bool strided = c == 2;
    *img = kt_image(g->in_c, g->in_h, g->in_w, strided ? kt_range(1, 3) : 1, strided ? kt_range(0, 4) : 0);
}

static int check(size_t tier_index, int c) {
    const tier *t = &tiers[tier_index];
    int failures = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        bp_geom g;
        bp_image img;
        size_t scratch_floats;
        shape(c, t->plan, &g, &img, &scratch_floats);
        size_t ohw = g.out_h * g.out_w, planes = g.out_cg, n = planes * ohw;
        float *x = malloc(img.extent * sizeof(float)), *w = malloc(planes * g.k * sizeof(float)), bias[2];
        float *out = malloc((n + GUARD) * sizeof(float)), *scratch = malloc(scratch_floats * sizeof(float));
        kt_fill(x, img.extent);
        kt_fill(w, planes * g.k);
        kt_fill(bias, 2);
        for (size_t i = 0; i < scratch_floats; i++) scratch[i] = NAN; /* the kernel writes what it reads */
        for (size_t i = 0; i < n + GUARD; i++) out[i] = 1e30f;
        t->planes(&g, &img, x, scratch + g.padded_offset, w, bias, out, planes == 2);
        double worst = 0.0;
        for (size_t m = 0; m < planes; m++)
            for (size_t oy = 0; oy < g.out_h; oy++)
                for (size_t ox = 0; ox < g.out_w; ox++) {
                    double want = bias[m], size = fabs(bias[m]);
                    for (size_t ci = 0; ci < g.in_cg; ci++)
                        for (size_t ky = 0; ky < g.kh; ky++)
                            for (size_t kx = 0; kx < g.kw; kx++) {
                                double term = w[m * g.k + (ci * g.kh + ky) * g.kw + kx] *
                                              kt_pixel(&img, x, ci, oy + ky * g.dy, ox + kx * g.dx, g.pt, g.pl);
                                want += term, size += fabs(term);
                            }
                    double error = fabs(out[m * ohw + oy * g.out_w + ox] - want) / (size + 1.0);
                    worst = isnan(error) ? INFINITY : fmax(worst, error);
                }
        for (size_t i = n; i < n + GUARD; i++)
            if (out[i] != 1e30f) worst = INFINITY; /* written past the planes */
        if (!(worst <= 1e-5)) {
            printf("FAIL %s tiny [%s] %zux%zux%zu image (pixel stride %zu, row stride %zu), %zu planes, kernel "
                   "%zux%zu dilation %zu pad top %zu left %zu -> %zux%zu: relative error %.3g\n",
                   tier_names[tier_index], classes[c], g.in_cg, g.in_h, g.in_w, img.sx, img.sy, planes, g.kh, g.kw,
                   g.dy, g.pt, g.pl, g.out_h, g.out_w, worst);
            failures++;
        }
        free(x), free(w), free(out), free(scratch);
    }
    return failures;
}

int main(void) { return kt_main("tiny", tier_names, sizeof tiers / sizeof tiers[0], CLASSES, TRIALS, check); }
