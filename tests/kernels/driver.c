/* C-level driver of the portable library: create / apply / apply_backward of standard
   convolutions against a naive C reference (double sums), on every engine the environment
   variable BNNS_PY_PORTABLE_ENGINE can force, for the vector tier BNNS_PY_ISA selects (or the
   widest the CPU runs). Needs no Python, so it runs under qemu-aarch64 as well as natively.

   Exit status: 0 all passed, 1 a mismatch or failure (printed), 77 (meson's "skipped") when the
   tier BNNS_PY_ISA names is not one this CPU runs. Build: meson -Dkernel_tests=true; run: meson test. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnns.h"
#include "bnns_portable.h"

typedef struct {
    size_t batch, in_c, out_c, in_h, in_w, k_h, k_w, s_y, s_x, d_y, d_x, pad_l, pad_r, pad_t, pad_b, groups;
} conv_case;

static size_t out_size(size_t in, size_t k, size_t s, size_t d, size_t before, size_t after) {
    return (in + before + after - d * (k - 1) - 1) / s + 1;
}

static unsigned long long rng_state = 88172645463325252ull;
static float uniform(void) { /* xorshift64 in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

static float *random_floats(size_t n) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = uniform();
    return p;
}

/* x value at (b, c, y, x) of the padded input, 0 outside */
static double at(const conv_case *c, const float *x, size_t b, size_t ch, ptrdiff_t y, ptrdiff_t xx) {
    if (y < 0 || xx < 0 || y >= (ptrdiff_t)c->in_h || xx >= (ptrdiff_t)c->in_w) return 0.0;
    return x[((b * c->in_c + ch) * c->in_h + (size_t)y) * c->in_w + (size_t)xx];
}

/* forward y, and the gradients dx, dw, db of sum(y * dy), in double */
static void reference(const conv_case *c, size_t oh, size_t ow, const float *x, const float *w, const float *bias,
                      const float *dy, double *y, double *dx, double *dw, double *db) {
    size_t icg = c->in_c / c->groups, ocg = c->out_c / c->groups;
    memset(dx, 0, c->batch * c->in_c * c->in_h * c->in_w * sizeof(double));
    memset(dw, 0, c->out_c * icg * c->k_h * c->k_w * sizeof(double));
    memset(db, 0, c->out_c * sizeof(double));
    for (size_t b = 0; b < c->batch; b++)
        for (size_t o = 0; o < c->out_c; o++)
            for (size_t i = 0; i < oh; i++)
                for (size_t j = 0; j < ow; j++) {
                    size_t g = o / ocg, yi = ((b * c->out_c + o) * oh + i) * ow + j;
                    double sum = bias[o], grad = dy[yi];
                    for (size_t ci = 0; ci < icg; ci++)
                        for (size_t ky = 0; ky < c->k_h; ky++)
                            for (size_t kx = 0; kx < c->k_w; kx++) {
                                ptrdiff_t sy = (ptrdiff_t)(i * c->s_y + ky * c->d_y) - (ptrdiff_t)c->pad_t;
                                ptrdiff_t sx = (ptrdiff_t)(j * c->s_x + kx * c->d_x) - (ptrdiff_t)c->pad_l;
                                size_t wi = ((o * icg + ci) * c->k_h + ky) * c->k_w + kx, ch = g * icg + ci;
                                double xv = at(c, x, b, ch, sy, sx);
                                sum += w[wi] * xv;
                                dw[wi] += grad * xv;
                                if (sy >= 0 && sx >= 0 && sy < (ptrdiff_t)c->in_h && sx < (ptrdiff_t)c->in_w)
                                    dx[((b * c->in_c + ch) * c->in_h + (size_t)sy) * c->in_w + (size_t)sx] += grad * w[wi];
                            }
                    y[yi] = sum;
                    db[o] += grad;
                }
}

static int compare(const char *what, const char *engine, const conv_case *c, const float *got, const double *want,
                   size_t n, size_t terms) {
    double scale = 1.0, worst = 0.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
    double tolerance = 2e-5 * sqrt((double)terms) * scale;
    if (!(worst <= tolerance)) {
        printf("FAIL %s (engine %s, isa %s): case in %zux%zux%zu out_c %zu k %zux%zu s %zu,%zu d %zu,%zu groups %zu: "
               "max error %.3g > %.3g\n",
               what, engine, bnns_portable_isa(), c->in_c, c->in_h, c->in_w, c->out_c, c->k_h, c->k_w, c->s_y, c->s_x,
               c->d_y, c->d_x, c->groups, worst, tolerance);
        return 1;
    }
    return 0;
}

static BNNSNDArrayDescriptor descriptor(BNNSDataLayout layout, size_t s0, size_t s1, size_t s2, size_t s3, void *data) {
    BNNSNDArrayDescriptor d;
    memset(&d, 0, sizeof d);
    d.layout = layout;
    d.size[0] = s0;
    d.size[1] = s1;
    d.size[2] = s2;
    d.size[3] = s3;
    d.data = data;
    d.data_type = BNNSDataTypeFloat32;
    return d;
}

/* One case on the engine currently forced; returns the number of failures. */
static int run_case(const conv_case *c, const char *engine, size_t *engines_seen, char seen[][32]) {
    size_t icg = c->in_c / c->groups;
    size_t oh = out_size(c->in_h, c->k_h, c->s_y, c->d_y, c->pad_t, c->pad_b);
    size_t ow = out_size(c->in_w, c->k_w, c->s_x, c->d_x, c->pad_l, c->pad_r);
    size_t nx = c->batch * c->in_c * c->in_h * c->in_w, ny = c->batch * c->out_c * oh * ow;
    size_t nw = c->out_c * icg * c->k_h * c->k_w;
    float *x = random_floats(nx), *w = random_floats(nw), *bias = random_floats(c->out_c), *dy = random_floats(ny);
    float *y = calloc(ny, sizeof(float)), *dx = calloc(nx, sizeof(float)), *dw = calloc(nw, sizeof(float));
    float *db = calloc(c->out_c, sizeof(float));
    double *ry = malloc(ny * sizeof(double)), *rdx = malloc(nx * sizeof(double)), *rdw = malloc(nw * sizeof(double));
    double *rdb = malloc(c->out_c * sizeof(double));
    reference(c, oh, ow, x, w, bias, dy, ry, rdx, rdw, rdb);

    BNNSLayerParametersConvolution p;
    memset(&p, 0, sizeof p);
    p.i_desc = descriptor(BNNSDataLayoutImageCHW, c->in_w, c->in_h, c->in_c, 0, NULL);
    p.o_desc = descriptor(BNNSDataLayoutImageCHW, ow, oh, c->out_c, 0, NULL);
    p.w_desc = descriptor(BNNSDataLayoutConvolutionWeightsOIHW, c->k_w, c->k_h, icg, c->out_c, w);
    p.bias = descriptor(BNNSDataLayoutVector, c->out_c, 0, 0, 0, bias);
    p.activation.function = BNNSActivationFunctionIdentity;
    p.x_stride = c->s_x;
    p.y_stride = c->s_y;
    p.x_dilation_stride = c->d_x;
    p.y_dilation_stride = c->d_y;
    p.groups = c->groups;
    p.pad[0] = c->pad_l;
    p.pad[1] = c->pad_r;
    p.pad[2] = c->pad_t;
    p.pad[3] = c->pad_b;
    BNNSFilterParameters fp = {.flags = BNNSFlagsUseClientPtr, .n_threads = 2};
    int failures = 0;
    BNNSFilter f = BNNSFilterCreateLayerConvolution(&p, &fp);
    if (f == NULL) {
        printf("FAIL create (engine %s): %s\n", engine, bnns_portable_last_error());
        failures = 1;
    } else {
        const char *chosen = bnns_portable_filter_engine(f, 0, c->batch);
        size_t k;
        for (k = 0; k < *engines_seen && strcmp(seen[k], chosen) != 0; k++) {}
        if (k == *engines_seen && k < 16) snprintf(seen[(*engines_seen)++], 32, "%s", chosen);
        size_t in_item = c->in_c * c->in_h * c->in_w, out_item = c->out_c * oh * ow;
        if (BNNSFilterApplyBatch(f, c->batch, x, in_item, y, out_item) != 0) {
            printf("FAIL apply (engine %s): %s\n", engine, bnns_portable_last_error());
            failures++;
        } else {
            failures += compare("forward", chosen, c, y, ry, ny, icg * c->k_h * c->k_w);
        }
        BNNSNDArrayDescriptor in_delta = descriptor(BNNSDataLayoutImageCHW, c->in_w, c->in_h, c->in_c, 0, dx);
        BNNSNDArrayDescriptor out_delta = descriptor(BNNSDataLayoutImageCHW, ow, oh, c->out_c, 0, dy);
        BNNSNDArrayDescriptor w_delta = descriptor(BNNSDataLayoutConvolutionWeightsOIHW, c->k_w, c->k_h, icg, c->out_c, dw);
        BNNSNDArrayDescriptor b_delta = descriptor(BNNSDataLayoutVector, c->out_c, 0, 0, 0, db);
        if (BNNSFilterApplyBackwardBatch(f, c->batch, x, in_item, &in_delta, in_item, y, out_item, &out_delta, out_item,
                                         &w_delta, &b_delta) != 0) {
            printf("FAIL apply_backward (engine %s): %s\n", engine, bnns_portable_last_error());
            failures++;
        } else {
            failures += compare("input gradient", bnns_portable_filter_engine(f, 1, c->batch), c, dx, rdx, nx,
                                (c->out_c / c->groups) * c->k_h * c->k_w);
            failures += compare("weight gradient", bnns_portable_filter_engine(f, 2, c->batch), c, dw, rdw, nw,
                                c->batch * oh * ow);
            failures += compare("bias gradient", chosen, c, db, rdb, c->out_c, c->batch * oh * ow);
        }
        BNNSFilterDestroy(f);
    }
    free(x), free(w), free(bias), free(dy), free(y), free(dx), free(dw), free(db);
    free(ry), free(rdx), free(rdw), free(rdb);
    return failures;
}

int main(void) {
    if (bnns_portable_isa_error()[0]) {
        printf("SKIP: %s\n", bnns_portable_isa_error());
        return 77;
    }
    /* batch, in_c, out_c, in_h, in_w, k_h, k_w, s_y, s_x, d_y, d_x, pad l r t b, groups: sizes with
       vector remainders, for every engine (Winograd: dense 3x3 stride 1; depthwise; 1x1; tiny) */
    static const conv_case cases[] = {
        {2, 19, 21, 13, 11, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
        {1, 32, 24, 18, 18, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
        {1, 16, 37, 17, 15, 3, 3, 2, 2, 1, 1, 1, 0, 1, 0, 1},
        {1, 9, 40, 17, 17, 5, 3, 1, 1, 2, 1, 3, 1, 4, 2, 1},
        {2, 18, 18, 19, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 18},
        {1, 12, 24, 9, 9, 3, 3, 2, 1, 1, 1, 0, 2, 1, 1, 12},
        {2, 33, 29, 7, 11, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},
        {1, 20, 70, 7, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2}, /* 1x1 on 49 pixels: whole vectors and a tail */
        {3, 5, 6, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
        {1, 12, 15, 10, 10, 3, 2, 2, 2, 1, 1, 2, 2, 2, 2, 3},
        {1, 3, 17, 23, 21, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1},
    };
    static const char *engines[] = {"auto", "rows", "pixels", "flat-pixels", "im2col", "winograd", "pointwise"};
    char seen[16][32];
    size_t engines_seen = 0;
    int failures = 0, runs = 0;
    for (size_t e = 0; e < sizeof engines / sizeof engines[0]; e++) {
        setenv("BNNS_PY_PORTABLE_ENGINE", engines[e], 1);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++, runs++) failures += run_case(&cases[i], engines[e], &engines_seen, seen);
    }
    printf("isa %s (available: %s): %d case runs, %d failures; engines used:", bnns_portable_isa(),
           bnns_portable_isa_available(), runs, failures);
    for (size_t k = 0; k < engines_seen; k++) printf(" [%s]", seen[k]);
    printf("\n");
    return failures ? 1 : 0;
}
