/* Kernel tester of the direct engine's pixels tiles (bp_direct_pixels_tile): for every vector tier
   this CPU runs, called directly (no filter, no plan), every (vectors, pixels) pair of the tier's
   menu with random reduction lengths, source offsets and row pitches, overwrite and accumulate,
   against a plain C loop. tb[p][j] (+)= sum over i of src[off[i] + p] * w[i][j], j < mv * lanes.

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

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define STR2(x) #x
#define STR(x) STR2(x)
#define TIER(name) {STR(name), CAT(bp_direct_pixels_tile, name), CAT(bnns_portable_simd, name)}

#if defined(BP_SINGLE_TIER)
tile_fn CAT(bp_direct_pixels_tile, BP_SINGLE_TIER);
simd_fn CAT(bnns_portable_simd, BP_SINGLE_TIER);
static const struct { const char *name; tile_fn *tile; simd_fn *simd; } tiers[] = {TIER(BP_SINGLE_TIER)};
#else
tile_fn bp_direct_pixels_tile_baseline, bp_direct_pixels_tile_avx2, bp_direct_pixels_tile_avx512;
simd_fn bnns_portable_simd_baseline, bnns_portable_simd_avx2, bnns_portable_simd_avx512;
static const struct { const char *name; tile_fn *tile; simd_fn *simd; } tiers[] = {
    TIER(baseline), TIER(avx2), TIER(avx512)};
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
        printf("%s (%s, %zu lanes): %zu tile shapes x 20 trials\n", tiers[t].name, simd, lanes, count);
        tested++;
    }
    printf("%d tiers tested, %d failures\n", tested, failures);
    return failures ? 1 : 0;
}
