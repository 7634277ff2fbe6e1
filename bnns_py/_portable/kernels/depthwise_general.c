/* Depthwise kernels for any geometry (strides past 2, kernels past the padded-plane kernels' tap
   table), straight from the input plane: interior vector blocks, borders per pixel. */
#include <string.h>

#include "depthwise_kernels.h"

/* Eight floats as one value (GCC and Clang vector extension; lowered to whatever SIMD the target
   has, or to scalars), so the block kernels keep their accumulators in registers. */
typedef float bp_v8 __attribute__((vector_size(32)));

/* Load 8 input values `step` apart (contiguous when step is 1). Through a pointer, not returned
   by value: a returned 32-byte vector has a different ABI with and without AVX. */
static inline void load8(bp_v8 *v, const float *s, size_t step) {
    if (step == 1) {
        memcpy(v, s, sizeof *v);
    } else if (step == 2) {
        for (int j = 0; j < 8; j++) (*v)[j] = s[2 * j];
    } else {
        for (int j = 0; j < 8; j++) (*v)[j] = s[j * step];
    }
}

/* One output row of a depthwise channel: the input rows of its valid kernel rows and their weights. */
typedef struct {
    size_t n;               /* valid kernel rows */
    const float *rows[64];  /* input row of each (kh <= 64 takes the fast path) */
    const float *wrows[64]; /* its kw weights */
} dw_taps;

/* Interior output pixels [ox, ox + 16) of a row: every tap inside the image. */
static void dw_block16(const bp_geom *g, const bp_image *img, const dw_taps *t, size_t ox, float *row) {
    size_t step = g->sx * img->sx;
    bp_v8 acc0 = {0}, acc1 = {0};
    for (size_t r = 0; r < t->n; r++)
        for (size_t kx = 0; kx < g->kw; kx++) {
            float wv = t->wrows[r][kx];
            const float *s = t->rows[r] + (ox * g->sx + kx * g->dx - g->pl) * img->sx;
            bp_v8 x0, x1;
            load8(&x0, s, step);
            load8(&x1, s + 8 * step, step);
            acc0 += wv * x0;
            acc1 += wv * x1;
        }
    memcpy(row + ox, &acc0, sizeof acc0);
    memcpy(row + ox + 8, &acc1, sizeof acc1);
}

static void dw_block8(const bp_geom *g, const bp_image *img, const dw_taps *t, size_t ox, float *row) {
    size_t step = g->sx * img->sx;
    bp_v8 acc = {0};
    for (size_t r = 0; r < t->n; r++)
        for (size_t kx = 0; kx < g->kw; kx++) {
            bp_v8 x;
            load8(&x, t->rows[r] + (ox * g->sx + kx * g->dx - g->pl) * img->sx, step);
            acc += t->wrows[r][kx] * x;
        }
    memcpy(row + ox, &acc, sizeof acc);
}

/* A pixel whose kernel columns may fall outside the image (rows already checked). */
static float dw_pixel_checked(const bp_geom *g, const bp_image *img, const dw_taps *t, size_t ox) {
    float s = 0.0f;
    for (size_t r = 0; r < t->n; r++)
        for (size_t kx = 0; kx < g->kw; kx++) {
            size_t ix = ox * g->sx + kx * g->dx;
            if (ix >= g->pl && ix - g->pl < g->in_w) s += t->wrows[r][kx] * t->rows[r][(ix - g->pl) * img->sx];
        }
    return s;
}

/* A pixel checked in both directions (kernels taller than the fast path handles). */
static float dw_pixel_slow(const bp_geom *g, const bp_image *img, const float *plane, const float *w, size_t oy,
                           size_t ox) {
    float s = 0.0f;
    for (size_t ky = 0; ky < g->kh; ky++) {
        size_t iy = oy * g->sy + ky * g->dy;
        if (iy < g->pt || iy - g->pt >= g->in_h) continue;
        const float *src = plane + (iy - g->pt) * img->sy;
        for (size_t kx = 0; kx < g->kw; kx++) {
            size_t ix = ox * g->sx + kx * g->dx;
            if (ix >= g->pl && ix - g->pl < g->in_w) s += w[ky * g->kw + kx] * src[(ix - g->pl) * img->sx];
        }
    }
    return s;
}

/* bias + v clamped to [lo, hi] (a NaN stays NaN) */
static void finish_row(const bp_dw_epilogue *e, float *row, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = row[i] + e->bias;
        if (v < e->lo) v = e->lo;
        if (v > e->hi) v = e->hi;
        row[i] = v;
    }
}

void bp_dw_general_plane(const bp_geom *g, const bp_image *img, const float *plane, const float *wo,
                         const bp_dw_epilogue *e, float *out) {
    size_t kh = g->kh, kw = g->kw, ow = g->out_w;
    size_t in_lo = g->pl / g->sx + (g->pl % g->sx != 0), in_hi = 0;
    if (g->in_w + g->pl > (kw - 1) * g->dx) {
        in_hi = (g->in_w + g->pl - (kw - 1) * g->dx - 1) / g->sx + 1;
        if (in_hi > ow) in_hi = ow;
    }
    if (in_lo > in_hi) in_lo = in_hi;
    bool fast = kh <= 64;
    dw_taps t;
    for (size_t oy = 0; oy < g->out_h; oy++) {
        float *row = out + oy * ow;
        if (!fast) {
            for (size_t ox = 0; ox < ow; ox++) row[ox] = dw_pixel_slow(g, img, plane, wo, oy, ox);
            finish_row(e, row, ow);
            continue;
        }
        t.n = 0;
        for (size_t ky = 0; ky < kh; ky++) {
            size_t iy = oy * g->sy + ky * g->dy;
            if (iy < g->pt || iy - g->pt >= g->in_h) continue;
            t.rows[t.n] = plane + (iy - g->pt) * img->sy;
            t.wrows[t.n++] = wo + ky * kw;
        }
        size_t ox = 0;
        for (; ox < in_lo; ox++) row[ox] = dw_pixel_checked(g, img, &t, ox);
        while (ox < in_hi) {
            size_t left = in_hi - ox;
            if (left >= 16) {
                dw_block16(g, img, &t, ox, row);
                ox += 16;
            } else if (in_hi - in_lo >= 8) {
                size_t start = left >= 8 ? ox : in_hi - 8;
                dw_block8(g, img, &t, start, row);
                ox = start + 8;
            } else {
                row[ox] = dw_pixel_checked(g, img, &t, ox);
                ox++;
            }
        }
        for (; ox < ow; ox++) row[ox] = dw_pixel_checked(g, img, &t, ox);
        finish_row(e, row, ow);
    }
}

/* sum of a[i] * b[i], in eight lanes (a float sum the compiler may not reorder itself) */
static float dot_run(const float *a, const float *b, size_t n) {
    bp_v8 s0 = {0}, s1 = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        bp_v8 a0, a1, b0, b1;
        memcpy(&a0, a + i, sizeof a0);
        memcpy(&a1, a + i + 8, sizeof a1);
        memcpy(&b0, b + i, sizeof b0);
        memcpy(&b1, b + i + 8, sizeof b1);
        s0 += a0 * b0;
        s1 += a1 * b1;
    }
    s0 += s1;
    float s = 0.0f;
    for (int j = 0; j < 8; j++) s += s0[j];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

void bp_dw_general_weights(const bp_geom *g, const bp_image *img, const float *x, size_t x_bs, const float *dy,
                           size_t dy_bs, size_t batch, float beta, float *dw) {
    for (size_t ky = 0; ky < g->kh; ky++) {
        size_t oy_lo, oy_hi;
        bp_valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
        for (size_t kx = 0; kx < g->kw; kx++) {
            size_t ox_lo, ox_hi;
            bp_valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
            float s = 0.0f;
            if (ox_lo < ox_hi) {
                size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl, step = g->sx * img->sx, n = ox_hi - ox_lo;
                for (size_t b = 0; b < batch; b++) {
                    const float *plane = x + b * x_bs, *d = dy + b * dy_bs;
                    for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                        const float *src = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
                        const float *dr = d + oy * g->out_w + ox_lo;
                        float acc = 0.0f;
                        if (step == 1)
                            acc = dot_run(dr, src, n);
                        else
                            for (size_t i = 0; i < n; i++) acc += dr[i] * src[i * step];
                        s += acc;
                    }
                }
            }
            float *dst = dw + ky * g->kw + kx;
            *dst = beta == 0.0f ? s : beta * *dst + s;
        }
    }
}
