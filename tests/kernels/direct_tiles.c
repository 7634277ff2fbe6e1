/* Kernel tester of the direct engine's pixels tiles (bp_direct_pixels_tile) and pointwise tiles
   and dot products (bp_direct_pointwise_tile, bp_direct_pointwise_dots): for every vector tier
   this CPU runs, called directly (no filter, no plan), every tile shape of the tier with random
   reduction lengths, source offsets, row pitches and weight layouts, against a loop in double
   precision (the pointwise tiles with dot products beside them, bp_direct_pointwise_tile_dots:
   against the tile and the dot products called apart, bit for bit). Pixels tiles: tb[p][j] (+)= sum over i of src[off[i] + p] * w[i][j], j < mv * lanes,
   overwrite and accumulate. Pointwise tiles and dots: y[r][p] = clamp(bias[r] + sum over i of
   W(r, i) x(i, p)), with no clamp, ReLU's and a Clamp's bounds; what they must not write (past
   `last` lanes, past the tile) is checked untouched. The stores of finished results and the
   stride-2 split of phase-plane rows (bp_direct_store_transposed, bp_direct_split_pairs) and the
   weight packing's transposes (bp_direct_transpose_rows, row and step counts around the 8 x 8 and
   16 x 16 blocks): exact, the values around what they write untouched.

   Exit status: 0 all passed, 1 a mismatch (printed). Build: meson -Dkernel_tests=true. */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnns.h"
#include "bnns_portable.h"

typedef void tile_fn(size_t mv, size_t nc, const float *src, const int32_t *off, size_t k, const float *w, float *tb,
                     size_t ldt, bool add);
typedef const char *simd_fn(void);
typedef void store_fn(const float *res, size_t ld, size_t channels, size_t n, const float *bias, float lo, float hi,
                      float *dst, size_t dst_stride);
typedef void split_fn(const float *src, size_t n, float *even, float *odd);
typedef void transpose_fn(const float *src, size_t lds, size_t rows, size_t n, float *dst, size_t ldd);
typedef void pointwise_tile_fn(size_t mr, size_t nv, const float *x, size_t xs, size_t k, const float *w, size_t wr,
                               size_t wi, const float *bias, float lo, float hi, float *y, size_t ys, size_t last);
typedef void pointwise_dots_fn(size_t mr, size_t np, const float *xt, size_t ldx, size_t k, const float *w, size_t wr,
                               const float *bias, float lo, float hi, float *y, size_t ys);
typedef void pointwise_tile_dots_fn(size_t mr, size_t nv, size_t np, const float *x, size_t xs, size_t k,
                                    const float *w, size_t wr, const float *xt, size_t ldx, const float *bias,
                                    float lo, float hi, float *y, size_t ys);

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define STR2(x) #x
#define STR(x) STR2(x)
#define TIER(name)                                                                                    \
    {STR(name), CAT(bp_direct_pixels_tile, name), CAT(bp_direct_pointwise_tile, name),                \
     CAT(bp_direct_pointwise_dots, name), CAT(bnns_portable_simd, name), CAT(bp_direct_store_transposed, name),    \
     CAT(bp_direct_split_pairs, name), CAT(bp_direct_transpose_rows, name), CAT(bp_direct_pointwise_tile_dots, name)}

typedef struct {
    const char *name;
    tile_fn *tile;
    pointwise_tile_fn *pointwise;
    pointwise_dots_fn *dots;
    simd_fn *simd;
    store_fn *store;
    split_fn *split;
    transpose_fn *transpose;
    pointwise_tile_dots_fn *tile_dots;
} tier_t;
#if defined(BP_SINGLE_TIER)
tile_fn CAT(bp_direct_pixels_tile, BP_SINGLE_TIER);
pointwise_tile_fn CAT(bp_direct_pointwise_tile, BP_SINGLE_TIER);
pointwise_dots_fn CAT(bp_direct_pointwise_dots, BP_SINGLE_TIER);
simd_fn CAT(bnns_portable_simd, BP_SINGLE_TIER);
store_fn CAT(bp_direct_store_transposed, BP_SINGLE_TIER);
split_fn CAT(bp_direct_split_pairs, BP_SINGLE_TIER);
transpose_fn CAT(bp_direct_transpose_rows, BP_SINGLE_TIER);
pointwise_tile_dots_fn CAT(bp_direct_pointwise_tile_dots, BP_SINGLE_TIER);
static const tier_t tiers[] = {TIER(BP_SINGLE_TIER)};
#else
tile_fn bp_direct_pixels_tile_baseline, bp_direct_pixels_tile_avx2, bp_direct_pixels_tile_avx512;
pointwise_tile_fn bp_direct_pointwise_tile_baseline, bp_direct_pointwise_tile_avx2, bp_direct_pointwise_tile_avx512;
pointwise_dots_fn bp_direct_pointwise_dots_baseline, bp_direct_pointwise_dots_avx2, bp_direct_pointwise_dots_avx512;
simd_fn bnns_portable_simd_baseline, bnns_portable_simd_avx2, bnns_portable_simd_avx512;
store_fn bp_direct_store_transposed_baseline, bp_direct_store_transposed_avx2, bp_direct_store_transposed_avx512;
split_fn bp_direct_split_pairs_baseline, bp_direct_split_pairs_avx2, bp_direct_split_pairs_avx512;
transpose_fn bp_direct_transpose_rows_baseline, bp_direct_transpose_rows_avx2, bp_direct_transpose_rows_avx512;
pointwise_tile_dots_fn bp_direct_pointwise_tile_dots_baseline, bp_direct_pointwise_tile_dots_avx2,
    bp_direct_pointwise_tile_dots_avx512;
static const tier_t tiers[] = {TIER(baseline), TIER(avx2), TIER(avx512)};
#endif

/* the (mv, nc) pairs of engines/direct.c's menu for 32 and for 16 vector registers */
static const size_t menu32[][2] = {{1, 24}, {1, 16}, {1, 12}, {1, 8}, {2, 14}, {2, 12}, {2, 10},
                                   {2, 8},  {2, 7},  {4, 7},  {4, 6}, {4, 5}, {4, 4}};
static const size_t menu16[][2] = {{1, 12}, {1, 8}, {1, 7}, {1, 6}, {2, 6}, {2, 5}, {2, 4}};

static unsigned long long state = 0x9E3779B97F4A7C15ull;
static unsigned next(void) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    return (unsigned)(state >> 33);
}
static float uniform(void) { return (float)next() / 2147483648.0f - 1.0f; }

static int check(const char *tier, tile_fn *tile, size_t lanes, size_t mv, size_t nc) {
    int failures = 0;
    for (int trial = 0; trial < 20; trial++) {
        size_t k = 1 + next() % 70, width = mv * lanes, ldt = width + (next() % 3) * lanes;
        size_t src_n = 300 + nc;
        float *src = malloc(src_n * sizeof(float)), *w = malloc(k * width * sizeof(float));
        float *tb = malloc(nc * ldt * sizeof(float)), *start = malloc(nc * ldt * sizeof(float));
        int32_t *off = malloc(k * sizeof(int32_t));
        for (size_t i = 0; i < src_n; i++) src[i] = uniform();
        for (size_t i = 0; i < k * width; i++) w[i] = uniform();
        for (size_t i = 0; i < k; i++) off[i] = (int32_t)(next() % 300);
        for (size_t i = 0; i < nc * ldt; i++) start[i] = uniform();
        bool add = trial % 2;
        memcpy(tb, start, nc * ldt * sizeof(float));
        tile(mv, nc, src, off, k, w, tb, ldt, add);
        double worst = 0.0;
        for (size_t p = 0; p < nc; p++)
            for (size_t j = 0; j < ldt; j++) {
                double want = start[p * ldt + j];
                if (j < width) {
                    double sum = add ? want : 0.0;
                    for (size_t i = 0; i < k; i++) sum += (double)src[off[i] + p] * w[i * width + j];
                    want = sum;
                } /* past the tile's vectors: untouched */
                worst = fmax(worst, fabs(tb[p * ldt + j] - want));
            }
        if (!(worst <= 1e-5 * sqrt((double)k) * 4.0)) {
            printf("FAIL %s pixels tile mv %zu nc %zu k %zu ldt %zu add %d: max error %.3g\n", tier, mv, nc, k, ldt,
                   (int)add, worst);
            failures++;
        }
        free(src), free(w), free(tb), free(start), free(off);
    }
    return failures;
}

static const float bounds[3][2] = {{-INFINITY, INFINITY}, {0.0f, INFINITY}, {-0.5f, 0.7f}};

static double clamped(double v, int trial) {
    const float *b = bounds[trial % 3];
    return v < b[0] ? b[0] : v > b[1] ? b[1] : v;
}

/* y (rows ys apart) against the double loop for rows < mr and pixels < n; the rest of each row
   must still hold its starting value. W(r, i) = w[r * wr + i * wi]; x(i, p) = x[i * xs + p]
   (tiles) or x[p * xs + i] (dots). */
static int compare(const char *what, const char *tier, const float *y, const float *start, size_t ys, size_t mr,
                   size_t n, const float *x, size_t xs, bool by_pixel, size_t k, const float *w, size_t wr, size_t wi,
                   const float *bias, int trial) {
    double worst = 0.0;
    for (size_t r = 0; r < mr; r++)
        for (size_t p = 0; p < ys; p++) {
            double want = start[r * ys + p];
            if (p < n) {
                double sum = bias[r];
                for (size_t i = 0; i < k; i++) sum += (double)w[r * wr + i * wi] * x[by_pixel ? p * xs + i : i * xs + p];
                want = clamped(sum, trial);
            }
            worst = fmax(worst, fabs(y[r * ys + p] - want));
        }
    if (worst <= 1e-5 * sqrt((double)k) * 4.0) return 0;
    printf("FAIL %s %s mr %zu pixels %zu k %zu trial %d: max error %.3g\n", tier, what, mr, n, k, trial, worst);
    return 1;
}

/* Pointwise tiles: mr channels x nv vectors, the last holding `last` lanes; the weights with
   consecutive steps (the caller's rows) or consecutive channels (packed blocks). */
static int check_pointwise(const tier_t *t, size_t lanes, size_t mr, size_t nv) {
    int failures = 0;
    for (int trial = 0; trial < 12; trial++) {
        size_t k = 1 + next() % 70, last = 1 + next() % lanes, xs = nv * lanes + next() % 9, ys = nv * lanes + 3;
        bool rows = trial % 2 == 0;
        size_t wr = rows ? k + next() % 5 : 1, wi = rows ? 1 : mr + next() % 5;
        size_t w_n = rows ? mr * wr : k * wi;
        float *x = malloc(k * xs * sizeof(float)), *w = malloc(w_n * sizeof(float)), bias[8];
        float *y = malloc(mr * ys * sizeof(float)), *start = malloc(mr * ys * sizeof(float));
        for (size_t i = 0; i < k * xs; i++) x[i] = uniform();
        for (size_t i = 0; i < w_n; i++) w[i] = uniform();
        for (size_t r = 0; r < mr; r++) bias[r] = uniform();
        for (size_t i = 0; i < mr * ys; i++) start[i] = y[i] = uniform();
        const float *b = bounds[trial % 3];
        t->pointwise(mr, nv, x, xs, k, w, wr, wi, bias, b[0], b[1], y, ys, last);
        failures += compare("pointwise tile", t->name, y, start, ys, mr, (nv - 1) * lanes + last, x, xs, false, k, w,
                            wr, wi, bias, trial);
        free(x), free(w), free(y), free(start);
    }
    return failures;
}

/* Pointwise dot products: mr channels x np pixels, each pixel's k values consecutive. */
static int check_dots(const tier_t *t, size_t mr, size_t np) {
    int failures = 0;
    for (int trial = 0; trial < 12; trial++) {
        size_t k = 1 + next() % 90, ldx = k + next() % 5, wr = k + next() % 5, ys = np + 3;
        float *x = malloc(np * ldx * sizeof(float)), *w = malloc(mr * wr * sizeof(float)), bias[8];
        float *y = malloc(mr * ys * sizeof(float)), *start = malloc(mr * ys * sizeof(float));
        for (size_t i = 0; i < np * ldx; i++) x[i] = uniform();
        for (size_t i = 0; i < mr * wr; i++) w[i] = uniform();
        for (size_t r = 0; r < mr; r++) bias[r] = uniform();
        for (size_t i = 0; i < mr * ys; i++) start[i] = y[i] = uniform();
        const float *b = bounds[trial % 3];
        t->dots(mr, np, x, ldx, k, w, wr, bias, b[0], b[1], y, ys);
        failures += compare("pointwise dots", t->name, y, start, ys, mr, np, x, ldx, true, k, w, wr, 1, bias, trial);
        free(x), free(w), free(y), free(start);
    }
    return failures;
}

/* A pointwise tile of mr channels x nv whole vectors with np dot products beside it: the bits of
   the tile and the dot products (in rows of dots_mr) called apart, nothing past them written. */
static int check_tile_dots(const tier_t *t, size_t lanes, size_t mr, size_t nv, size_t np, size_t dots_mr) {
    int failures = 0;
    for (int trial = 0; trial < 12; trial++) {
        size_t k = 1 + next() % 90, xs = nv * lanes + next() % 9, ldx = k + next() % 5, wr = k + next() % 5;
        size_t ys = nv * lanes + np + 3;
        float *x = malloc(k * xs * sizeof(float)), *xt = malloc(np * ldx * sizeof(float)), bias[8];
        float *w = malloc(mr * wr * sizeof(float)), *y = malloc(mr * ys * sizeof(float));
        float *apart = malloc(mr * ys * sizeof(float));
        for (size_t i = 0; i < k * xs; i++) x[i] = uniform();
        for (size_t i = 0; i < np * ldx; i++) xt[i] = uniform();
        for (size_t i = 0; i < mr * wr; i++) w[i] = uniform();
        for (size_t r = 0; r < mr; r++) bias[r] = uniform();
        for (size_t i = 0; i < mr * ys; i++) y[i] = apart[i] = uniform();
        const float *b = bounds[trial % 3];
        t->tile_dots(mr, nv, np, x, xs, k, w, wr, xt, ldx, bias, b[0], b[1], y, ys);
        t->pointwise(mr, nv, x, xs, k, w, wr, 1, bias, b[0], b[1], apart, ys, lanes);
        for (size_t r0 = 0; r0 < mr; r0 += dots_mr)
            t->dots(dots_mr, np, xt, ldx, k, w + r0 * wr, wr, bias + r0, b[0], b[1], apart + r0 * ys + nv * lanes, ys);
        if (memcmp(y, apart, mr * ys * sizeof(float)) != 0) {
            printf("FAIL %s pointwise tile + dots mr %zu nv %zu np %zu k %zu trial %d: not the bits of the calls "
                   "apart\n", t->name, mr, nv, np, k, trial);
            failures++;
        }
        free(x), free(xt), free(w), free(y), free(apart);
    }
    return failures;
}

/* Transposed stores: dst[c][i] = clamp(res[i][c] + bias[c]) for c < channels (a multiple of 8),
   i < n, with each trial's bounds; the rest of dst (past n, the row after the last channel) keeps
   its starting values. */
static int check_store(const tier_t *t) {
    int failures = 0;
    for (int trial = 0; trial < 12; trial++) {
        size_t channels = 8 * (1 + next() % 4), n = 1 + next() % 40, ld = channels + next() % 9;
        size_t ds = n + 1 + next() % 5, dst_n = (channels + 1) * ds, res_n = (n + 8) * ld; /* reads up to 7 past n */
        float *res = malloc(res_n * sizeof(float)), *dst = malloc(dst_n * sizeof(float));
        float *start = malloc(dst_n * sizeof(float)), bias[32];
        for (size_t i = 0; i < res_n; i++) res[i] = uniform();
        for (size_t c = 0; c < channels; c++) bias[c] = uniform();
        for (size_t i = 0; i < dst_n; i++) start[i] = dst[i] = uniform();
        const float *b = bounds[trial % 3];
        t->store(res, ld, channels, n, bias, b[0], b[1], dst, ds);
        size_t wrong = 0;
        for (size_t c = 0; c <= channels; c++)
            for (size_t i = 0; i < ds; i++) {
                float want = start[c * ds + i];
                if (c < channels && i < n) {
                    want = res[i * ld + c] + bias[c];
                    want = want < b[0] ? b[0] : want > b[1] ? b[1] : want;
                }
                wrong += dst[c * ds + i] != want;
            }
        if (wrong) {
            printf("FAIL %s transposed store channels %zu n %zu trial %d: %zu values wrong\n", t->name, channels, n,
                   trial, wrong);
            failures++;
        }
        free(res), free(dst), free(start);
    }
    return failures;
}

/* Stride-2 split of n values (odd or even): even[j] = src[2j], odd[j] = src[2j + 1], the values after
   them untouched. */
static int check_split(const tier_t *t) {
    int failures = 0;
    for (int trial = 0; trial < 40; trial++) {
        size_t n = next() % 140, ne = (n + 1) / 2, no = n / 2;
        float *src = malloc((n + 1) * sizeof(float)), *even = malloc((ne + 1) * sizeof(float));
        float *odd = malloc((no + 1) * sizeof(float));
        for (size_t i = 0; i < n + 1; i++) src[i] = uniform();
        even[ne] = odd[no] = 7.0f;
        t->split(src, n, even, odd);
        size_t wrong = (even[ne] != 7.0f) + (odd[no] != 7.0f);
        for (size_t j = 0; j < ne; j++) wrong += even[j] != src[2 * j];
        for (size_t j = 0; j < no; j++) wrong += odd[j] != src[2 * j + 1];
        if (wrong) {
            printf("FAIL %s split pairs n %zu: %zu values wrong\n", t->name, n, wrong);
            failures++;
        }
        free(src), free(even), free(odd);
    }
    return failures;
}

/* Weight packing: dst[k][r] (rows ldd apart) = src[r][k] (rows lds apart) for r < rows, k < n; the
   columns of dst past rows and the row after the last step untouched. */
static int check_transpose(const tier_t *t) {
    static const size_t row_counts[] = {1, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 64};
    int failures = 0;
    for (size_t c = 0; c < sizeof row_counts / sizeof row_counts[0]; c++)
        for (int trial = 0; trial < 4; trial++) {
            size_t rows = row_counts[c], n = next() % 70, lds = n + next() % 20, ldd = rows + next() % 5;
            float *src = malloc((rows * lds + 1) * sizeof(float)), *dst = malloc((n + 1) * ldd * sizeof(float));
            for (size_t i = 0; i < rows * lds; i++) src[i] = uniform();
            for (size_t i = 0; i < (n + 1) * ldd; i++) dst[i] = 7.0f;
            t->transpose(src, lds, rows, n, dst, ldd);
            size_t wrong = 0;
            for (size_t k = 0; k <= n; k++)
                for (size_t r = 0; r < ldd; r++)
                    wrong += dst[k * ldd + r] != (k < n && r < rows ? src[r * lds + k] : 7.0f);
            if (wrong) {
                printf("FAIL %s transpose rows %zu n %zu lds %zu ldd %zu: %zu values wrong\n", t->name, rows, n, lds,
                       ldd, wrong);
                failures++;
            }
            free(src), free(dst);
        }
    return failures;
}

int main(void) {
    char available[64];
    snprintf(available, sizeof available, " %s ", bnns_portable_isa_available());
    int failures = 0, tested = 0;
    for (size_t t = 0; t < sizeof tiers / sizeof tiers[0]; t++) {
        char key[32];
        snprintf(key, sizeof key, " %s ", tiers[t].name);
        if (strstr(available, key) == NULL) {
            printf("%s: not run by this CPU, skipped\n", tiers[t].name);
            continue;
        }
        const char *simd = tiers[t].simd();
        size_t lanes = strcmp(simd, "AVX-512") == 0 ? 16 : strcmp(simd, "AVX2") == 0 ? 8 : 4;
        bool wide = lanes == 16; /* 32 vector registers */
        size_t count = wide ? sizeof menu32 / sizeof menu32[0] : sizeof menu16 / sizeof menu16[0];
        for (size_t m = 0; m < count; m++) {
            const size_t *pair = wide ? menu32[m] : menu16[m];
            failures += check(tiers[t].name, tiers[t].tile, lanes, pair[0], pair[1]);
        }
        size_t shapes = 0;
        for (size_t mr = wide ? 8 : 4; mr >= 1; mr /= 2)
            for (size_t nv = 1; nv <= 3; nv++, shapes++) failures += check_pointwise(&tiers[t], lanes, mr, nv);
        for (size_t mr = wide ? 4 : 2; mr >= 1; mr /= 2)
            for (size_t np = 1; np <= 4; np++, shapes++) failures += check_dots(&tiers[t], mr, np);
        for (size_t mr = wide ? 8 : 4; mr >= 1; mr /= 2)
            for (size_t nv = 1; nv <= 3; nv++)
                for (size_t np = 1; np <= 4; np++, shapes++)
                    failures += check_tile_dots(&tiers[t], lanes, mr, nv, np, mr < (wide ? 4u : 2u) ? mr : (wide ? 4u : 2u));
        failures += check_store(&tiers[t]) + check_split(&tiers[t]) + check_transpose(&tiers[t]);
        printf("%s (%s, %zu lanes): %zu pixels tile shapes x 20 trials, %zu pointwise shapes x 12, stores x 12, "
               "splits x 40, weight transposes x 48\n", tiers[t].name, simd, lanes, count, shapes);
        tested++;
    }
    printf("%d tiers tested, %d failures\n", tested, failures);
    return failures ? 1 : 0;
}
