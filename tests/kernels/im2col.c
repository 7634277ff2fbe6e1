/* Kernel tester of im2col and col2im (bp_im2col_block, bp_col2im_block in engines/conv_engine.c):
   for every vector tier this CPU runs, called directly on random geometries (channels, kernels,
   strides, dilations, paddings, image pixel and row strides, widths that are no multiple of the
   vector width) and random blocks of column rows and output rows, 24 trials per shape class,
   against plain C loops:
     im2col  col[r - r0][(oy - oy0)*out_w + ox] = x(c0 + ci, oy*sy + ky*dy - pt, ox*sx + kx*dx - pl)
             (0 outside the image) for r = (ci*kh + ky)*kw + kx in [r0, r1);
     col2im  dx(c0 + ci) += its adjoint for ci in [ci0, ci1), and the depthwise form whose column
             row (ci, ky, kx) is w(c0 + ci, ky, kx) * dy(ci).
   Every value outside what a call may write (the gaps of a strided dx, other channels) is checked
   unchanged.

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include "kernel_test.h"

typedef void im2col_fn(const bp_geom *g, const bp_image *img, const float *x, size_t c0, size_t r0, size_t r1,
                       size_t oy0, size_t oy1, float *col);
typedef void col2im_fn(const bp_geom *g, const bp_image *img, float *dx, size_t c0, size_t ci0, size_t ci1,
                       const float *col, size_t oy0, size_t oy1, const float *dw_w);

typedef struct {
    im2col_fn *im2col;
    col2im_fn *col2im;
} tier;
#define DECLARE(t) im2col_fn KT_CAT(bp_im2col_block, t); col2im_fn KT_CAT(bp_col2im_block, t);
#define NAME(t) KT_STR(t),
#define KERNELS(t) {KT_CAT(bp_im2col_block, t), KT_CAT(bp_col2im_block, t)},
KT_TIERS(DECLARE)
static const char *const tier_names[] = {KT_TIERS(NAME)};
static const tier tiers[] = {KT_TIERS(KERNELS)};

enum { TRIALS = 24, GUARD = 16 };
static const char *const classes[] = {"stride 1, packed", "stride 1-3, dilation 1-2, packed",
                                      "stride 1-3, strided image", "depthwise col2im, stride 1-3"};
enum { CLASSES = sizeof classes / sizeof classes[0], DEPTHWISE = 3 };

static void shape(int c, bp_geom *g, bp_image *img) {
    size_t groups = c == DEPTHWISE ? kt_range(2, 4) : kt_range(1, 2), in_cg = c == DEPTHWISE ? 1 : kt_range(1, 3);
    size_t kh, kw, sy, sx, d, h, w;
    do {
        kh = kt_range(1, 5), kw = kt_range(1, 5), h = kt_range(1, 20), w = kt_range(1, 45);
        sy = c == 0 ? 1 : kt_range(1, 3), sx = c == 0 ? 1 : kt_range(1, 3), d = c == 1 ? kt_range(1, 2) : 1;
    } while (!kt_geom(g, groups, in_cg, 1, h, w, kh, kw, sy, sx, d, d, kt_range(0, kh), kt_range(0, kw),
                      kt_range(0, kh), kt_range(0, kw)));
    bool strided = c >= 2;
    *img = kt_image(g->in_c, h, w, strided ? kt_range(1, 3) : 1, strided ? kt_range(0, 4) : 0);
}

static double relative(double got, double want, double size) { return fabs(got - want) / (size + 1.0); }

static int check_im2col(const tier *t, const char *name, const bp_geom *g, const bp_image *img, const float *x,
                        const char *cls) {
    size_t c0 = kt_next() % g->groups * g->in_cg, r0 = kt_next() % g->k, r1 = kt_range(r0 + 1, g->k);
    size_t oy0 = kt_next() % g->out_h, oy1 = kt_range(oy0 + 1, g->out_h), nb = (oy1 - oy0) * g->out_w;
    size_t n = (r1 - r0) * nb;
    float *col = malloc((n + GUARD) * sizeof(float));
    for (size_t i = 0; i < n + GUARD; i++) col[i] = NAN; /* every value is written */
    t->im2col(g, img, x, c0, r0, r1, oy0, oy1, col);
    size_t bad = SIZE_MAX;
    for (size_t r = r0; r < r1 && bad == SIZE_MAX; r++) {
        size_t kx = r % g->kw, ky = r / g->kw % g->kh, ci = r / (g->kw * g->kh);
        for (size_t oy = oy0; oy < oy1; oy++)
            for (size_t ox = 0; ox < g->out_w; ox++) {
                size_t at = (r - r0) * nb + (oy - oy0) * g->out_w + ox;
                double want = kt_pixel(img, x, c0 + ci, oy * g->sy + ky * g->dy, ox * g->sx + kx * g->dx, g->pt, g->pl);
                if (col[at] != (float)want) bad = at; /* a copy: exact */
            }
    }
    for (size_t i = n; i < n + GUARD; i++)
        if (!isnan(col[i])) bad = i;
    free(col);
    if (bad == SIZE_MAX) return 0;
    printf("FAIL %s im2col [%s] %zux%zux%zu image (pixel stride %zu, row stride %zu), kernel %zux%zu stride %zux%zu "
           "dilation %zu pad top %zu left %zu, rows [%zu, %zu) output rows [%zu, %zu): wrong value %zu\n",
           name, cls, g->in_c, g->in_h, g->in_w, img->sx, img->sy, g->kh, g->kw, g->sy, g->sx, g->dy, g->pt, g->pl,
           r0, r1, oy0, oy1, bad);
    return 1;
}

static int check_col2im(const tier *t, const char *name, const bp_geom *g, const bp_image *img, bool depthwise,
                        const char *cls) {
    size_t c0 = depthwise ? 0 : kt_next() % g->groups * g->in_cg;
    size_t span = depthwise ? g->in_c : g->in_cg, ci0 = kt_next() % span, ci1 = kt_range(ci0 + 1, span);
    size_t oy0 = depthwise ? 0 : kt_next() % g->out_h, oy1 = depthwise ? g->out_h : kt_range(oy0 + 1, g->out_h);
    size_t nb = (oy1 - oy0) * g->out_w, taps = g->kh * g->kw;
    size_t col_n = (ci1 - ci0) * (depthwise ? 1 : taps) * nb;
    float *dx = malloc(img->extent * sizeof(float)), *start = malloc(img->extent * sizeof(float));
    float *col = malloc(col_n * sizeof(float)), *w = depthwise ? malloc(g->in_c * taps * sizeof(float)) : NULL;
    kt_fill(start, img->extent);
    kt_fill(col, col_n);
    if (depthwise) kt_fill(w, g->in_c * taps);
    memcpy(dx, start, img->extent * sizeof(float));
    t->col2im(g, img, dx, c0, ci0, ci1, col, oy0, oy1, w);
    /* the reference: start + every column value scattered to its pixel, in double */
    double *want = malloc(img->extent * sizeof(double)), *size = malloc(img->extent * sizeof(double));
    for (size_t i = 0; i < img->extent; i++) want[i] = start[i], size[i] = fabs(start[i]);
    for (size_t ci = ci0; ci < ci1; ci++)
        for (size_t ky = 0; ky < g->kh; ky++)
            for (size_t kx = 0; kx < g->kw; kx++)
                for (size_t oy = oy0; oy < oy1; oy++)
                    for (size_t ox = 0; ox < g->out_w; ox++) {
                        size_t iy = oy * g->sy + ky * g->dy, ix = ox * g->sx + kx * g->dx;
                        if (iy < g->pt || iy - g->pt >= img->h || ix < g->pl || ix - g->pl >= img->w) continue;
                        size_t at = (c0 + ci) * img->sc + (iy - g->pt) * img->sy + (ix - g->pl) * img->sx;
                        size_t pixel = (oy - oy0) * g->out_w + ox;
                        double term = depthwise ? (double)w[((c0 + ci) * g->kh + ky) * g->kw + kx] *
                                                      col[(ci - ci0) * nb + pixel]
                                                : col[(((ci - ci0) * g->kh + ky) * g->kw + kx) * nb + pixel];
                        want[at] += term, size[at] += fabs(term);
                    }
    double worst = 0.0;
    for (size_t i = 0; i < img->extent; i++) { /* the gaps and other channels stay exactly as they were */
        double error = relative(dx[i], want[i], size[i]);
        worst = isnan(error) ? INFINITY : fmax(worst, error);
    }
    free(dx), free(start), free(col), free(w), free(want), free(size);
    if (worst <= 1e-6) return 0;
    printf("FAIL %s col2im%s [%s] %zux%zux%zu image (pixel stride %zu, row stride %zu), kernel %zux%zu stride "
           "%zux%zu dilation %zu pad top %zu left %zu, channels [%zu, %zu) output rows [%zu, %zu): relative error "
           "%.3g\n",
           name, depthwise ? " (depthwise)" : "", cls, g->in_c, g->in_h, g->in_w, img->sx, img->sy, g->kh, g->kw,
           g->sy, g->sx, g->dy, g->pt, g->pl, ci0, ci1, oy0, oy1, worst);
    return 1;
}

static int check(size_t tier_index, int c) {
    const tier *t = &tiers[tier_index];
    const char *name = tier_names[tier_index];
    int failures = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        bp_geom g;
        bp_image img;
        shape(c, &g, &img);
        float *x = malloc(img.extent * sizeof(float));
        kt_fill(x, img.extent);
        if (c != DEPTHWISE) failures += check_im2col(t, name, &g, &img, x, classes[c]);
        failures += check_col2im(t, name, &g, &img, c == DEPTHWISE, classes[c]);
        free(x);
    }
    return failures;
}

int main(void) {
    return kt_main("im2col / col2im", tier_names, sizeof tiers / sizeof tiers[0], CLASSES, TRIALS, check);
}
