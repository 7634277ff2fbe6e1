/* What the kernel testers share: the per-tier names of the kernels (each tester lists the tiers of
   the build with TIER_NAMES and calls a tier's copy of a kernel directly), which tiers this CPU
   runs, seeded random numbers and a convolution geometry planned by the tier under test. */
#ifndef BNNS_KERNEL_TEST_H
#define BNNS_KERNEL_TEST_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h" /* bnns.h (no include guard), bnns_portable.h, bp_geom, bp_image */

#define KT_CAT2(a, b) a##_##b
#define KT_CAT(a, b) KT_CAT2(a, b)
#define KT_STR2(x) #x
#define KT_STR(x) KT_STR2(x)

typedef bool geom_plan_fn(bp_geom *g, size_t *scratch_floats);

/* KT_TIERS(X) is X(tier) for every tier of the build, e.g. to declare a tier's copy of a kernel,
   KT_CAT(bp_im2col_block, tier), and to list them. */
#if defined(BP_SINGLE_TIER)
#define KT_TIERS(X) X(BP_SINGLE_TIER)
#else
#define KT_TIERS(X) X(baseline) X(avx2) X(avx512)
#endif

/* True when this CPU runs the tier (bnns_portable_isa_available() names it). */
static inline bool tier_runs(const char *tier) {
    char available[64], key[32];
    snprintf(available, sizeof available, " %s ", bnns_portable_isa_available());
    snprintf(key, sizeof key, " %s ", tier);
    return strstr(available, key) != NULL;
}

/* A tester's main: check(i, c), the failures of shape class c on tiers[i], for every class and
   every tier this CPU runs (the others skipped); the exit status. */
static inline int kt_main(const char *tester, const char *const *tiers, size_t count, int classes, int trials,
                          int (*check)(size_t i, int c)) {
    int failures = 0, tested = 0;
    for (size_t i = 0; i < count; i++) {
        if (!tier_runs(tiers[i])) {
            printf("%s: not run by this CPU, skipped\n", tiers[i]);
            continue;
        }
        for (int c = 0; c < classes; c++) failures += check(i, c);
        printf("%s: %d %s shape classes x %d trials\n", tiers[i], classes, tester, trials);
        tested++;
    }
    printf("%s: %d tiers tested, %d failures\n", tester, tested, failures);
    return failures ? 1 : 0;
}

static unsigned long long kt_state = 0x9E3779B97F4A7C15ull;
static inline unsigned kt_next(void) {
    kt_state ^= kt_state << 13, kt_state ^= kt_state >> 7, kt_state ^= kt_state << 17;
    return (unsigned)(kt_state >> 33);
}
/* uniform in [lo, hi] */
static inline size_t kt_range(size_t lo, size_t hi) { return lo + kt_next() % (hi - lo + 1); }
static inline float kt_uniform(void) { return (float)kt_next() / 2147483648.0f - 1.0f; }
static inline void kt_fill(float *v, size_t n) {
    for (size_t i = 0; i < n; i++) v[i] = kt_uniform();
}

/* A geometry of groups x (in_cg -> out_cg) channels with the given kernel, strides, dilations and
   paddings (left/top, right/bottom) on an in_h x in_w image; false when no output pixel fits. */
static inline bool kt_geom(bp_geom *g, size_t groups, size_t in_cg, size_t out_cg, size_t in_h, size_t in_w,
                           size_t kh, size_t kw, size_t sy, size_t sx, size_t dy, size_t dx, size_t pt, size_t pl,
                           size_t pb, size_t pr) {
    size_t span_h = (kh - 1) * dy + 1, span_w = (kw - 1) * dx + 1;
    if (in_h + pt + pb < span_h || in_w + pl + pr < span_w) return false;
    memset(g, 0, sizeof *g);
    g->in_c = groups * in_cg, g->in_h = in_h, g->in_w = in_w;
    g->out_c = groups * out_cg;
    g->out_h = (in_h + pt + pb - span_h) / sy + 1, g->out_w = (in_w + pl + pr - span_w) / sx + 1;
    g->kh = kh, g->kw = kw, g->sx = sx, g->sy = sy, g->dx = dx, g->dy = dy, g->pl = pl, g->pt = pt;
    g->groups = groups, g->in_cg = in_cg, g->out_cg = out_cg, g->k = in_cg * kh * kw;
    return true;
}

/* An image of g's input channels with pixel stride sx (>= 1) and `row_pad` extra values per row. */
static inline bp_image kt_image(size_t c, size_t h, size_t w, size_t sx, size_t row_pad) {
    bp_image img = {.w = w, .h = h, .c = c, .sx = sx, .sy = w * sx + row_pad};
    img.sc = img.sy * h;
    img.extent = img.sc * c;
    img.item = img.extent;
    img.packed = sx == 1 && row_pad == 0;
    return img;
}

/* x at (c, y, x) of an image, 0 outside it (iy, ix: padded coordinates, pt / pl before 0). */
static inline double kt_pixel(const bp_image *img, const float *x, size_t c, size_t iy, size_t ix, size_t pt,
                              size_t pl) {
    if (iy < pt || iy - pt >= img->h || ix < pl || ix - pl >= img->w) return 0.0;
    return x[c * img->sc + (iy - pt) * img->sy + (ix - pl) * img->sx];
}

#endif
