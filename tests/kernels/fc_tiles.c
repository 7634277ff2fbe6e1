/* Kernel tester of the fully-connected tiles (bp_fc_tile, kernels/fc_tiles.c): for every vector
   tier this CPU runs, called directly, every (mr, nb) pair the engine uses (bp_fc_tile_rows(nb),
   bp_fc_tile_rows(nb + 1) and 1 output rows for each nb up to the tier's most batch rows), with
   random input lengths (every remainder of the vector widths), row pitches of W, X and Y, and
   no clamp, ReLU's and a Clamp's bounds, against a loop in double precision:
   y(b, r) = clamp(bias[r] + sum over i of W(r, i) X(b, i)). Guard values around and between the
   written outputs must stay untouched.

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include "kernel_test.h"

typedef void tile_fn(size_t mr, size_t nb, const float *w, size_t ldw, const float *x, size_t ldx, size_t k,
                     const float *bias, float lo, float hi, float *y, size_t ldy);
typedef size_t rows_fn(size_t nb);
typedef const char *simd_fn(void);
typedef struct {
    tile_fn *tile;
    rows_fn *rows;
    simd_fn *simd;
} tier;
#define DECLARE(t) tile_fn KT_CAT(bp_fc_tile, t); rows_fn KT_CAT(bp_fc_tile_rows, t); simd_fn KT_CAT(bnns_portable_simd, t);
#define NAME(t) KT_STR(t),
#define KERNELS(t) {KT_CAT(bp_fc_tile, t), KT_CAT(bp_fc_tile_rows, t), KT_CAT(bnns_portable_simd, t)},
KT_TIERS(DECLARE)
static const char *const tier_names[] = {KT_TIERS(NAME)};
static const tier tiers[] = {KT_TIERS(KERNELS)};

enum { TRIALS = 12, GUARD = 5 };
static const float GUARD_VALUE = 12345.0f;
static const char *const classes[] = {"no clamp", "ReLU", "Clamp"};
enum { CLASSES = sizeof classes / sizeof classes[0] };

/* fc_kernels.h: 6 batch rows with 32 vector registers (AVX-512), 4 with 16 */
static size_t batch_rows_max(const tier *t) { return strcmp(t->simd(), "AVX-512") == 0 ? 6 : 4; }

static int check_tile(const char *name, const tier *t, size_t mr, size_t nb, int c) {
    float lo = c == 0 ? -INFINITY : c == 1 ? 0.0f : -0.3f, hi = c == 2 ? 0.4f : INFINITY;
    size_t k = kt_range(1, 70), ldw = k + kt_range(0, 3), ldx = k + kt_range(0, 3), ldy = mr + GUARD + kt_range(0, 3);
    float *w = malloc(mr * ldw * sizeof(float)), *x = malloc(nb * ldx * sizeof(float));
    float *y = malloc((nb * ldy + GUARD) * sizeof(float)), bias[8];
    kt_fill(w, mr * ldw);
    kt_fill(x, nb * ldx);
    kt_fill(bias, mr);
    for (size_t i = 0; i < nb * ldy + GUARD; i++) y[i] = GUARD_VALUE;
    t->tile(mr, nb, w, ldw, x, ldx, k, bias, lo, hi, y + GUARD, ldy);
    int failures = 0;
    for (size_t i = 0; i < nb * ldy + GUARD; i++) {
        size_t at = i < GUARD ? SIZE_MAX : i - GUARD, b = at / ldy, r = at % ldy;
        double expected = GUARD_VALUE;
        if (at != SIZE_MAX && r < mr) {
            expected = bias[r];
            for (size_t j = 0; j < k; j++) expected += (double)w[r * ldw + j] * x[b * ldx + j];
            expected = fmin(fmax(expected, lo), hi);
        }
        if (fabs(y[i] - expected) > 1e-5 * sqrt((double)k) * fmax(1.0, fabs(expected))) {
            if (failures++ < 3)
                printf("%s fc tile %zux%zu k=%zu %s: y[%zu] = %g, expected %g\n", name, mr, nb, k, classes[c], i,
                       y[i], expected);
        }
    }
    free(w);
    free(x);
    free(y);
    return failures ? 1 : 0;
}

static int check(size_t tier_index, int c) {
    const tier *t = &tiers[tier_index];
    size_t most = batch_rows_max(t);
    int failures = 0;
    for (int trial = 0; trial < TRIALS; trial++)
        for (size_t nb = 1; nb <= most; nb++) {
            failures += check_tile(tier_names[tier_index], t, t->rows(nb), nb, c);
            if (nb < most) failures += check_tile(tier_names[tier_index], t, t->rows(nb + 1), nb, c);
            failures += check_tile(tier_names[tier_index], t, 1, nb, c);
        }
    return failures;
}

int main(void) {
    return kt_main("fc tile", tier_names, sizeof tiers / sizeof tiers[0], CLASSES, TRIALS, check);
}
