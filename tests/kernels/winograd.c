/* Kernel tester of the Winograd F(2x2, 3x3) transforms (engines/winograd.c, kernels/winograd_rows.c;
   F(4x4, 3x3)'s are static there, checked through the library by tests/test_winograd.py):
   for every vector tier this CPU runs, each transform called directly on random sizes, 24 trials
   per shape class, against plain C loops with the transform matrices written out:
     input   the input rows of a tile row of output phase (a, b) split into even and odd columns
             (bp_winograd_tile_row_inputs; dilations, paddings, image strides), then
             V = Bt D B of each 4x4 tile D (bp_winograd_tile_row_transform), for row widths of any
             number of tiles;
     output  Y = At M A of each tile's 16 products, per channel (bp_winograd_tile_row_outputs);
     weights U = G k Gt of each 3x3 kernel, laid out in blocks of output channels, channels past
             out_c zero (bp_winograd_weights, also of an adjoint: kernels transposed and flipped);
     gradient W = A dY At of each 2x2 tile dY of output gradients, from the two rows of a tile
             row split into even and odd columns (bp_winograd_tile_row_gradient_transform);
     kernel gradient  dw = Gt M G of each kernel's 16 sums, set or added
             (bp_winograd_gradient_outputs).
   Values past what a call may write are checked untouched.

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include "kernel_test.h"
#include "winograd.h"

typedef void inputs_fn(const bp_geom *g, size_t tw, size_t ld, const bp_image *img, const float *plane, size_t ty,
                       size_t a, size_t b, float *e, float *o);
typedef void transform_fn(size_t tw, size_t ld, const float *e, const float *o, float *v, size_t vp);
typedef void outputs_fn(size_t tw, const float *m, size_t mp, size_t vectors, float *rows);
typedef void weights_fn(const bp_winograd *plan, const bp_geom *g, const float *w, float *u, const bp_scratch *s,
                        int threads, bool adjoint);
typedef bool plan_fn(const bp_geom *g, bool forced, size_t tile, bool client, bp_winograd *plan);
typedef size_t weight_floats_fn(const bp_winograd *plan, const bp_geom *g);
typedef const char *simd_fn(void);
typedef void gradient_transform_fn(size_t tw, size_t ld, const float *e, const float *o, float *v, size_t vp);
typedef void gradient_outputs_fn(const float *m, size_t mp, size_t n, float *dw, float beta);
typedef struct {
    inputs_fn *inputs;
    transform_fn *transform;
    outputs_fn *outputs;
    weights_fn *weights;
    plan_fn *plan;
    weight_floats_fn *weight_floats;
    simd_fn *simd;
    gradient_transform_fn *gradient_transform;
    gradient_outputs_fn *gradient_outputs;
} tier;
#define DECLARE(t)                                                                                                     \
    inputs_fn KT_CAT(bp_winograd_tile_row_inputs, t);                                                                 \
    transform_fn KT_CAT(bp_winograd_tile_row_transform, t);                                                           \
    outputs_fn KT_CAT(bp_winograd_tile_row_outputs, t);                                                               \
    weights_fn KT_CAT(bp_winograd_weights, t);                                                                        \
    plan_fn KT_CAT(bp_winograd_plan, t);                                                                              \
    weight_floats_fn KT_CAT(bp_winograd_weight_floats, t);                                                            \
    simd_fn KT_CAT(bnns_portable_simd, t);                                                                           \
    gradient_transform_fn KT_CAT(bp_winograd_tile_row_gradient_transform, t);                                         \
    gradient_outputs_fn KT_CAT(bp_winograd_gradient_outputs, t);
#define NAME(t) KT_STR(t),
#define KERNELS(t)                                                                                                     \
    {KT_CAT(bp_winograd_tile_row_inputs, t), KT_CAT(bp_winograd_tile_row_transform, t),                              \
     KT_CAT(bp_winograd_tile_row_outputs, t),   KT_CAT(bp_winograd_weights, t),                                       \
     KT_CAT(bp_winograd_plan, t),               KT_CAT(bp_winograd_weight_floats, t),                                 \
     KT_CAT(bnns_portable_simd, t),             KT_CAT(bp_winograd_tile_row_gradient_transform, t),                  \
     KT_CAT(bp_winograd_gradient_outputs, t)},
KT_TIERS(DECLARE)
static const char *const tier_names[] = {KT_TIERS(NAME)};
static const tier tiers[] = {KT_TIERS(KERNELS)};

enum { TRIALS = 24, GUARD = 16 };
static const char *const classes[] = {"input, packed image", "input, dilation 1-3 and strided image", "output",
                                      "weights", "weights of an adjoint", "gradient", "kernel gradient set",
                                      "kernel gradient added"};
enum { CLASSES = sizeof classes / sizeof classes[0] };
static const float UNTOUCHED = 1e30f;

/* The transform matrices of F(2x2, 3x3). */
static const double BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
static const double AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};

/* W = A dY At with A = At transposed (the weight gradient's F(3x3, 2x2) on the same tiles). */
static double a_of(size_t i, size_t r) { return AT[r][i]; }

static size_t lanes_of(const tier *t) {
    const char *simd = t->simd();
    return strcmp(simd, "AVX-512") == 0 ? 16 : strcmp(simd, "AVX2") == 0 ? 8 : 4;
}

/* WINO_BW of the tier: the output channels of a block of U (16 planes of BW + 80 floats for one
   input and one output channel). */
static size_t block_width(const tier *t) {
    bp_geom g;
    bp_winograd plan;
    kt_geom(&g, 1, 1, 1, 4, 4, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0);
    t->plan(&g, true, 2, true, &plan);
    return t->weight_floats(&plan, &g) / 16 - 80;
}

static double worst_of(double worst, double got, double want, double size) {
    double error = fabs(got - want) / (size + 1.0);
    return isnan(error) ? INFINITY : fmax(worst, error);
}

static int check_input(const tier *t, const char *name, int c) {
    size_t d = c == 0 ? 1 : kt_range(1, 3);
    bp_geom g;
    while (!kt_geom(&g, 1, 1, 1, kt_range(1, 24), kt_range(1, 60), 3, 3, 1, 1, d, d, kt_range(0, 2 * d),
                    kt_range(0, 2 * d), kt_range(0, 2 * d), kt_range(0, 2 * d))) {
    }
    bool strided = c == 1 && kt_next() % 2;
    bp_image img = kt_image(1, g.in_h, g.in_w, strided ? kt_range(1, 3) : 1, strided ? kt_range(0, 4) : 0);
    size_t tw = bp_ceil_div(bp_ceil_div(g.out_w, d), 2), th = bp_ceil_div(bp_ceil_div(g.out_h, d), 2);
    size_t ty = kt_next() % th, a = kt_next() % d, b = kt_next() % d;
    size_t ld = bp_round_up(tw + 1, 16) + 16 + kt_range(0, 3), vp = tw + GUARD;
    float *x = malloc(img.extent * sizeof(float)), *e = malloc(8 * ld * sizeof(float)), *o = e + 4 * ld;
    float *v = malloc(16 * vp * sizeof(float));
    kt_fill(x, img.extent);
    for (size_t i = 0; i < 8 * ld; i++) e[i] = NAN; /* read past tw + 1, never used */
    for (size_t i = 0; i < 16 * vp; i++) v[i] = UNTOUCHED;
    t->inputs(&g, tw, ld, &img, x, ty, a, b, e, o);
    t->transform(tw, ld, e, o, v, vp);
    double worst = 0.0;
    for (size_t r = 0; r < 4; r++) /* the split rows: exact copies */
        for (size_t i = 0; i <= tw; i++) {
            size_t iy = d * (2 * ty + r) + a, ix = d * 2 * i + b;
            worst = worst_of(worst, e[r * ld + i], kt_pixel(&img, x, 0, iy, ix, g.pt, g.pl), 0.0);
            worst = worst_of(worst, o[r * ld + i], kt_pixel(&img, x, 0, iy, ix + d, g.pt, g.pl), 0.0);
        }
    for (size_t tx = 0; tx < vp; tx++) {
        double tile[4][4];
        for (size_t r = 0; r < 4; r++)
            for (size_t q = 0; q < 4; q++)
                tile[r][q] = kt_pixel(&img, x, 0, d * (2 * ty + r) + a, d * (2 * tx + q) + b, g.pt, g.pl);
        for (size_t i = 0; i < 4; i++)
            for (size_t j = 0; j < 4; j++) {
                double want = 0.0, size = 0.0;
                for (size_t r = 0; r < 4; r++)
                    for (size_t q = 0; q < 4; q++) want += BT[i][r] * tile[r][q] * BT[j][q], size += fabs(tile[r][q]);
                float got = v[(4 * i + j) * vp + tx];
                if (tx < tw) worst = worst_of(worst, got, want, size);
                else if (got != UNTOUCHED) worst = INFINITY;
            }
    }
    free(x), free(e), free(v);
    if (worst <= 1e-6) return 0;
    printf("FAIL %s winograd [%s] %zux%zu image (pixel stride %zu, row stride %zu) dilation %zu pad top %zu left %zu, "
           "tile row %zu of %zu tiles, phase (%zu, %zu): relative error %.3g\n",
           name, classes[c], g.in_h, g.in_w, img.sx, img.sy, d, g.pt, g.pl, ty, tw, a, b, worst);
    return 1;
}

static int check_output(const tier *t, const char *name, int c) {
    size_t bw = block_width(t), lanes = lanes_of(t), tw = kt_range(1, 20), vectors = kt_range(1, bw / lanes);
    size_t mp = tw * bw + kt_range(0, 2) * lanes, row = 2 * tw * bw;
    float *m = malloc(16 * mp * sizeof(float)), *rows = malloc((2 * row + GUARD) * sizeof(float));
    kt_fill(m, 16 * mp);
    for (size_t i = 0; i < 2 * row + GUARD; i++) rows[i] = UNTOUCHED;
    t->outputs(tw, m, mp, vectors, rows);
    double worst = 0.0;
    for (size_t i = 0; i < 2; i++)
        for (size_t px = 0; px < 2 * tw; px++)
            for (size_t ch = 0; ch < bw; ch++) {
                size_t tx = px / 2, j = px % 2;
                double want = 0.0, size = 0.0;
                for (size_t r = 0; r < 4; r++)
                    for (size_t q = 0; q < 4; q++) {
                        double product = m[(4 * r + q) * mp + tx * bw + ch];
                        want += AT[i][r] * product * AT[j][q], size += fabs(product);
                    }
                float got = rows[i * row + px * bw + ch];
                if (ch < vectors * lanes) worst = worst_of(worst, got, want, size);
                else if (got != UNTOUCHED) worst = INFINITY; /* channel vectors not in use */
            }
    for (size_t i = 2 * row; i < 2 * row + GUARD; i++)
        if (rows[i] != UNTOUCHED) worst = INFINITY;
    free(m), free(rows);
    if (worst <= 1e-6) return 0;
    printf("FAIL %s winograd [%s] %zu tiles, %zu of %zu channel vectors, planes %zu apart: relative error %.3g\n",
           name, classes[c], tw, vectors, bw / lanes, mp, worst);
    return 1;
}

static int check_weights(const tier *t, const char *name, int c) {
    size_t bw = block_width(t), in_c = kt_range(1, 20), out_c = kt_range(1, 2 * bw + 5);
    bool adjoint = c == 4;
    bp_geom g;
    bp_winograd plan;
    kt_geom(&g, 1, in_c, out_c, kt_range(3, 8), kt_range(3, 8), 3, 3, 1, 1, 1, 1, 1, 1, 1, 1);
    if (!t->plan(&g, true, 2, true, &plan)) {
        printf("FAIL %s winograd: no forced plan for %zu -> %zu channels\n", name, in_c, out_c);
        return 1;
    }
    size_t floats = t->weight_floats(&plan, &g), plane = floats / 16, blocks = bp_ceil_div(out_c, bw);
    float *w = malloc(out_c * in_c * 9 * sizeof(float)), *u = malloc(floats * sizeof(float));
    float *scratch = malloc(plan.scratch_floats * sizeof(float));
    kt_fill(w, out_c * in_c * 9);
    for (size_t i = 0; i < floats; i++) u[i] = UNTOUCHED;
    bp_scratch s = {scratch, plan.scratch_floats};
    t->weights(&plan, &g, w, u, &s, 1, adjoint);
    double worst = 0.0;
    for (size_t o = 0; o < blocks * bw; o++)
        for (size_t ci = 0; ci < in_c; ci++) {
            double k[3][3];
            for (size_t tap = 0; tap < 9; tap++) {
                size_t at = adjoint ? (ci * out_c + o) * 9 + 8 - tap : (o * in_c + ci) * 9 + tap;
                k[tap / 3][tap % 3] = o < out_c ? w[at] : 0.0;
            }
            for (size_t i = 0; i < 4; i++)
                for (size_t j = 0; j < 4; j++) {
                    double want = 0.0, size = 0.0;
                    for (size_t r = 0; r < 3; r++)
                        for (size_t q = 0; q < 3; q++) want += G[i][r] * k[r][q] * G[j][q], size += fabs(k[r][q]);
                    worst = worst_of(worst, u[(4 * i + j) * plane + (o / bw) * in_c * bw + ci * bw + o % bw], want,
                                     size);
                }
        }
    free(w), free(u), free(scratch);
    if (worst <= 1e-6) return 0;
    printf("FAIL %s winograd [%s] %zu -> %zu channels (blocks of %zu): relative error %.3g\n", name, classes[c], in_c,
           out_c, bw, worst);
    return 1;
}

static int check_gradient(const tier *t, const char *name, int c) {
    size_t tw = kt_range(1, 40), ld = bp_round_up(tw + 1, 16) + 16 + kt_range(0, 3), vp = tw + GUARD;
    float *e = malloc(8 * ld * sizeof(float)), *o = e + 4 * ld, *v = malloc(16 * vp * sizeof(float));
    for (size_t i = 0; i < 8 * ld; i++) e[i] = NAN; /* past tw, and rows 2 and 3: never used */
    for (size_t r = 0; r < 2; r++) {
        kt_fill(e + r * ld, tw);
        kt_fill(o + r * ld, tw);
    }
    for (size_t i = 0; i < 16 * vp; i++) v[i] = UNTOUCHED;
    t->gradient_transform(tw, ld, e, o, v, vp);
    double worst = 0.0;
    for (size_t tx = 0; tx < vp; tx++)
        for (size_t i = 0; i < 4; i++)
            for (size_t j = 0; j < 4; j++) {
                float got = v[(4 * i + j) * vp + tx];
                if (tx >= tw) {
                    if (got != UNTOUCHED) worst = INFINITY;
                    continue;
                }
                double want = 0.0, size = 0.0;
                for (size_t r = 0; r < 2; r++)
                    for (size_t q = 0; q < 2; q++) {
                        double dy = (q == 0 ? e : o)[r * ld + tx];
                        want += a_of(i, r) * dy * a_of(j, q), size += fabs(dy);
                    }
                worst = worst_of(worst, got, want, size);
            }
    free(e), free(v);
    if (worst <= 1e-6) return 0;
    printf("FAIL %s winograd [%s] %zu tiles: relative error %.3g\n", name, classes[c], tw, worst);
    return 1;
}

static int check_kernel_gradient(const tier *t, const char *name, int c) {
    size_t n = kt_range(1, 50), mp = n + kt_range(0, 3);
    float beta = c == 7 ? 1.0f : 0.0f;
    float *m = malloc(16 * mp * sizeof(float)), *dw = malloc((9 * n + GUARD) * sizeof(float));
    float *before = malloc(9 * n * sizeof(float));
    kt_fill(m, 16 * mp);
    kt_fill(before, 9 * n);
    for (size_t i = 0; i < 9 * n + GUARD; i++) dw[i] = i < 9 * n && beta != 0.0f ? before[i] : UNTOUCHED;
    t->gradient_outputs(m, mp, n, dw, beta);
    double worst = 0.0;
    for (size_t k = 0; k < n; k++)
        for (size_t y = 0; y < 3; y++)
            for (size_t x = 0; x < 3; x++) {
                double want = beta * before[k * 9 + 3 * y + x], size = fabs(want);
                for (size_t i = 0; i < 4; i++)
                    for (size_t j = 0; j < 4; j++) {
                        double sum = m[(4 * i + j) * mp + k];
                        want += G[i][y] * sum * G[j][x], size += fabs(sum);
                    }
                worst = worst_of(worst, dw[k * 9 + 3 * y + x], want, size);
            }
    for (size_t i = 9 * n; i < 9 * n + GUARD; i++)
        if (dw[i] != UNTOUCHED) worst = INFINITY;
    free(m), free(dw), free(before);
    if (worst <= 1e-6) return 0;
    printf("FAIL %s winograd [%s] %zu kernels, planes %zu apart: relative error %.3g\n", name, classes[c], n, mp,
           worst);
    return 1;
}

static int check(size_t tier_index, int c) {
    const tier *t = &tiers[tier_index];
    int failures = 0;
    for (int trial = 0; trial < TRIALS; trial++)
        failures += c < 2   ? check_input(t, tier_names[tier_index], c)
                    : c == 2 ? check_output(t, tier_names[tier_index], c)
                    : c < 5  ? check_weights(t, tier_names[tier_index], c)
                    : c == 5 ? check_gradient(t, tier_names[tier_index], c)
                             : check_kernel_gradient(t, tier_names[tier_index], c);
    return failures;
}

int main(void) { return kt_main("winograd", tier_names, sizeof tiers / sizeof tiers[0], CLASSES, TRIALS, check); }
