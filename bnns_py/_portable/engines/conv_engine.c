/* The convolution engine: im2col + GEMM forward, GEMM + col2im backward-data, GEMM weight
   gradient, and direct kernels for depthwise convolution (one input channel per group), all on
   the geometry of a standard convolution S (see bp_geom in internal.h).

   Threading: each entry point cuts its whole batch into independent tasks (image x group x
   column block x output-channel chunk, or x input-channel chunk) and hands contiguous runs of
   tasks to the workers of the pool (parallel.c). A worker does its im2col, its single-threaded
   GEMM and its epilogue on its own cache-sized scratch, so nothing waits between the steps. */
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "direct.h"
#include "internal.h"
#include "parallel.h"
#include "simd.h"

/* Index range [lo, hi) of output positions o whose tap position o*stride + tap - pad lies in [0, n). */
static void valid_range(size_t n_out, size_t n_in, size_t stride, size_t tap, size_t pad, size_t *lo, size_t *hi) {
    /* need o*stride + tap >= pad and o*stride + tap - pad < n_in */
    size_t first = 0;
    if (tap < pad) first = (pad - tap) / stride + ((pad - tap) % stride != 0); /* ceiling, overflow-free */
    size_t last = 0;                                                           /* exclusive */
    if (n_in + pad > tap) {
        last = (n_in + pad - tap - 1) / stride + 1;
        if (last > n_out) last = n_out;
    }
    *lo = first < last ? first : last;
    *hi = last;
}


static size_t out_pixels(const bp_geom *g) { return g->out_h * g->out_w; }

/* Short runs are the common case (rows of small images): copy and clear them inline rather than
   through libc calls. GCC would turn the tail loops back into memcpy / memset calls. */
#if defined(__GNUC__) && !defined(__clang__)
#define BP_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define BP_NO_LIBCALLS
#endif

static inline BP_NO_LIBCALLS void copy_run(float *dst, const float *src, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) memcpy(dst + i, src + i, 8 * sizeof(float));
    for (; i < n; i++) dst[i] = src[i];
}

static inline BP_NO_LIBCALLS void zero_run(float *dst, size_t n) {
    static const float zeros[8];
    size_t i = 0;
    for (; i + 8 <= n; i += 8) memcpy(dst + i, zeros, 8 * sizeof(float));
    for (; i < n; i++) dst[i] = 0.0f;
}

/* ---- plan: column blocks and scratch --------------------------------------------------------- */

enum {
    COL_TARGET_FLOATS = 1 << 17, /* a column block of about 512 KiB stays in a core's L2 / near L3 */
    MIN_BLOCK_PIXELS = 256,      /* but keep GEMMs wide enough to amortize packing the weights */
    MIN_SPLIT_PIXELS = 48,       /* smallest block worth giving its own thread */
    MIN_CHUNK_CHANNELS = 8       /* smallest output-channel chunk worth giving its own thread */
};

static bool one_input_channel_per_group(const bp_geom *g) { return g->groups > 1 && g->in_cg == 1; }
static bool depthwise_adjoint(const bp_geom *g, bp_geom *a);

/* Padded-plane depthwise kernels: stride 1 or 2 and at most MAX_FAST_TAPS taps (their per-tap
   tables live on the stack). */
enum { MAX_FAST_TAPS = 256 };
static bool depthwise_fast(const bp_geom *g) {
    return one_input_channel_per_group(g) && (g->sx == 1 || g->sx == 2) && g->kh * g->kw <= MAX_FAST_TAPS;
}

/* Columns of the padded plane (per sub-plane when stride 2 splits it into even / odd columns):
   whole vectors of output are computed, of BP_VL floats forward and of 8 for the weight gradient
   (so at least 8, whatever BP_VL is). */
static size_t dw_plane_cols(const bp_geom *g) {
    size_t vl = BP_VL > 8 ? BP_VL : 8, owv = bp_ceil_div(g->out_w, vl) * vl;
    size_t need = (owv - 1) * g->sx + (g->kw - 1) * g->dx + 1;
    return g->sx == 2 ? bp_ceil_div(need, 2) + 1 : need;
}
static size_t dw_plane_rows(const bp_geom *g) { return (g->out_h - 1) * g->sy + (g->kh - 1) * g->dy + 1; }

bool bp_geom_plan(bp_geom *g, size_t *scratch_floats) {
    size_t rows = g->out_h;
    size_t want = COL_TARGET_FLOATS / (g->k ? g->k : 1);
    if (want < MIN_BLOCK_PIXELS) want = MIN_BLOCK_PIXELS;
    size_t r = want / g->out_w;
    if (r < 1) r = 1;
    if (r < rows) rows = bp_ceil_div(g->out_h, bp_ceil_div(g->out_h, r)); /* equal blocks */
    g->block_rows = rows;
    size_t col, t;
    if (!bp_mul(g->k, rows, &t) || !bp_mul(t, g->out_w, &col)) return false;
    if (one_input_channel_per_group(g) && g->out_cg == 1) col = 0; /* the depthwise kernels need no columns */
    bp_geom adjoint;
    const bp_geom *planes[2] = {depthwise_fast(g) ? g : NULL, depthwise_adjoint(g, &adjoint) ? &adjoint : NULL};
    for (int i = 0; i < 2; i++) {
        size_t plane;
        if (planes[i] == NULL) continue;
        if (!bp_mul(dw_plane_rows(planes[i]), dw_plane_cols(planes[i]), &t) ||
            !bp_mul(t, planes[i]->sx == 2 ? 2 : 1, &plane))
            return false;
        if (plane > col) col = plane;
    }
    g->padded_floats = 0;
    g->padded_offset = bp_ceil_div(col, 16) * 16;
    if (!one_input_channel_per_group(g) && g->sx == 1 && g->sy == 1 && rows == g->out_h && g->kh * g->kw > 1) {
        size_t padded = g->in_cg * (g->out_h + (g->kh - 1) * g->dy) * (g->out_w + (g->kw - 1) * g->dx);
        if (padded <= COL_TARGET_FLOATS) g->padded_floats = padded; /* small: no overflow */
    }
    if (!bp_add(g->padded_offset + g->padded_floats, 64, scratch_floats)) return false;
    *scratch_floats = bp_ceil_div(*scratch_floats, 16) * 16;
    return true;
}

/* Small stride-1 images go through zero-padded copies of their planes (ph x pw each), so that
   nothing downstream has bounds to work out. */
static BP_NO_LIBCALLS void fill_padded_planes(const bp_geom *g, const bp_image *img, const float *x, size_t c0,
                                              float *pad) {
    size_t ph = g->out_h + (g->kh - 1) * g->dy, pw = g->out_w + (g->kw - 1) * g->dx;
    size_t x0 = bp_min(g->pl, pw), x1 = bp_min(g->pl + g->in_w, pw), n = x1 > x0 ? x1 - x0 : 0;
#if defined(__AVX512F__)
    if (img->sx == 1 && pw <= 16) { /* each padded row in one store: its values in place, zeros around */
        __mmask16 row_mask = (__mmask16)((1u << pw) - 1u), data = (__mmask16)(((1u << n) - 1u) << x0);
        for (size_t ci = 0; ci < g->in_cg; ci++)
            for (size_t py = 0; py < ph; py++) {
                __m512 v = _mm512_setzero_ps();
                if (n > 0 && py >= g->pt && py - g->pt < g->in_h)
                    v = _mm512_maskz_expandloadu_ps(data, x + (c0 + ci) * img->sc + (py - g->pt) * img->sy);
                _mm512_mask_storeu_ps(pad + (ci * ph + py) * pw, row_mask, v);
            }
        return;
    }
#endif
    if (img->sx == 1) { /* all zeros in whole vectors, then each image row in whole vectors */
        size_t all = g->in_cg * ph * pw, y1 = bp_min(g->pt + g->in_h, ph);
        for (size_t i = 0; i < all; i += BP_VL) bp_vstore_part(pad + i, bp_vzero(), all - i);
        for (size_t ci = 0; ci < g->in_cg && n > 0; ci++)
            for (size_t py = g->pt; py < y1; py++) {
                const float *src = x + (c0 + ci) * img->sc + (py - g->pt) * img->sy;
                float *row = pad + (ci * ph + py) * pw + x0;
                for (size_t i = 0; i < n; i += BP_VL) bp_vstore_part(row + i, bp_vload_part(src + i, n - i), n - i);
            }
        return;
    }
    for (size_t ci = 0; ci < g->in_cg; ci++) {
        const float *plane = x + (c0 + ci) * img->sc;
        float *p = pad + ci * ph * pw;
        for (size_t py = 0; py < ph; py++) {
            float *row = p + py * pw;
            if (py < g->pt || py - g->pt >= g->in_h || n == 0) {
                zero_run(row, pw);
                continue;
            }
            const float *src = plane + (py - g->pt) * img->sy;
            zero_run(row, x0);
            if (img->sx == 1) copy_run(row + x0, src, n);
            else
                for (size_t i = 0; i < n; i++) row[x0 + i] = src[i * img->sx];
            zero_run(row + x0 + n, pw - x0 - n);
        }
    }
}

/* im2col of the whole image from its padded planes: plain copies of out_w values. */
static BP_NO_LIBCALLS void columns_from_padded(const bp_geom *g, const float *pad, float *col) {
    size_t ow = g->out_w, oh = g->out_h, nb = oh * ow;
    size_t ph = oh + (g->kh - 1) * g->dy, pw = ow + (g->kw - 1) * g->dx;
    float *dst = col;
    for (size_t ci = 0; ci < g->in_cg; ci++)
        for (size_t ky = 0; ky < g->kh; ky++)
            for (size_t kx = 0; kx < g->kw; kx++) {
                const float *src = pad + ci * ph * pw + ky * g->dy * pw + kx * g->dx;
                for (size_t oy = 0; oy < oh; oy++) copy_run(dst + oy * ow, src + oy * pw, ow);
                dst += nb;
            }
}

/* ---- epilogue ------------------------------------------------------------------------------ */

void bp_epilogue_run(const bp_epilogue *e, size_t c, float *v, size_t n) {
    if (e == NULL) return;
    if (e->bias != NULL) {
        float b = e->bias[c * e->bias_stride];
        for (size_t i = 0; i < n; i++) v[i] += b;
    }
    if (e->act != NULL) bp_activation_apply(e->act, v, n);
}

/* ---- im2col / col2im over a block of output rows -------------------------------------------- */

/* col[r - r0][(oy - oy0)*out_w + ox] = x(c0 + ci, oy*sy + ky*dy - pt, ox*sx + kx*dx - pl), 0
   outside the image, for column rows r = (ci*kh + ky)*kw + kx in [r0, r1). */
BP_NO_LIBCALLS void bp_im2col_block(const bp_geom *g, const bp_image *img, const float *x, size_t c0, size_t r0,
                                    size_t r1, size_t oy0, size_t oy1, float *col) {
    size_t ow = g->out_w, nb = (oy1 - oy0) * ow;
    size_t kx = r0 % g->kw, ky = r0 / g->kw % g->kh, ci = r0 / (g->kw * g->kh);
    size_t oy_lo = 0, oy_hi = 0, step = g->sx * img->sx;
    valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
    for (size_t r = r0; r < r1; r++) {
        const float *plane = x + (c0 + ci) * img->sc;
        float *dst = col + (r - r0) * nb;
        size_t lo = oy_lo < oy0 ? oy0 : oy_lo, hi = oy_hi > oy1 ? oy1 : oy_hi, ox_lo, ox_hi;
        valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
        if (lo >= hi || ox_lo >= ox_hi) {
            zero_run(dst, nb);
        } else {
            zero_run(dst, (lo - oy0) * ow);
            size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl, n = ox_hi - ox_lo;
            for (size_t oy = lo; oy < hi; oy++) {
                float *row = dst + (oy - oy0) * ow;
                /* the first valid value: never form a pointer outside the image */
                const float *src = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
                zero_run(row, ox_lo);
                if (step == 1) copy_run(row + ox_lo, src, n);
                else if (step == 2)
                    for (size_t i = 0; i < n; i++) row[ox_lo + i] = src[2 * i];
                else
                    for (size_t i = 0; i < n; i++) row[ox_lo + i] = src[i * step];
                zero_run(row + ox_hi, ow - ox_hi);
            }
            zero_run(dst + (hi - oy0) * ow, (oy1 - hi) * ow);
        }
        if (++kx == g->kw) { /* next (ci, ky, kx) */
            kx = 0;
            if (++ky == g->kh) {
                ky = 0;
                ci++;
            }
            valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
        }
    }
}

static void zero_plane(const bp_image *img, float *plane) {
    for (size_t y = 0; y < img->h; y++) {
        float *row = plane + y * img->sy;
        if (img->sx == 1) memset(row, 0, img->w * sizeof(float));
        else
            for (size_t x = 0; x < img->w; x++) row[x * img->sx] = 0.0f;
    }
}

/* dx(c0 + ci) += the adjoint of im2col over output rows [oy0, oy1), for ci in [ci0, ci1): column
   row (ci, ky, kx) is at col + ((ci - ci0)*kh*kw + ky*kw + kx)*nb. Depthwise (dw_w != NULL): the
   column row is dw_w(c0 + ci, ky, kx) * col[(ci - ci0)*nb + ...] (col is dy itself). */
void bp_col2im_block(const bp_geom *g, const bp_image *img, float *dx, size_t c0, size_t ci0, size_t ci1,
                     const float *col, size_t oy0, size_t oy1, const float *dw_w) {
    size_t nb = (oy1 - oy0) * g->out_w;
    for (size_t ci = ci0; ci < ci1; ci++) {
        float *plane = dx + (c0 + ci) * img->sc;
        for (size_t ky = 0; ky < g->kh; ky++) {
            size_t oy_lo, oy_hi;
            valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
            if (oy_lo < oy0) oy_lo = oy0;
            if (oy_hi > oy1) oy_hi = oy1;
            for (size_t kx = 0; kx < g->kw; kx++) {
                size_t ox_lo, ox_hi;
                valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
                if (ox_lo >= ox_hi) continue;
                size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl;
                size_t step = g->sx * img->sx, n = ox_hi - ox_lo;
                const float *src;
                float wv = 1.0f;
                if (dw_w != NULL) {
                    src = col + (ci - ci0) * nb;
                    wv = dw_w[((c0 + ci) * g->kh + ky) * g->kw + kx];
                } else {
                    src = col + (((ci - ci0) * g->kh + ky) * g->kw + kx) * nb;
                }
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    float *dst = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
                    const float *s = src + (oy - oy0) * g->out_w + ox_lo;
                    if (step == 1)
                        for (size_t i = 0; i < n; i++) dst[i] += wv * s[i];
                    else if (step == 2)
                        for (size_t i = 0; i < n; i++) dst[2 * i] += wv * s[i];
                    else
                        for (size_t i = 0; i < n; i++) dst[i * step] += wv * s[i];
                }
            }
        }
    }
}

/* ---- depthwise helpers ---- */

/* Eight floats as one value (GCC and Clang vector extension; lowered to whatever SIMD the target
   has, or to scalars), so the depthwise block kernels keep their accumulators in registers. */
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


/* ---- depthwise forward (one input channel per group) ------------------------------------------ */

/* Padded-plane kernel. The input plane is copied into a zero-bordered scratch plane wide enough
   for whole 8-float vectors of output; with stride 2 its even and odd columns become two
   sub-planes, so every tap of every output vector is one contiguous load. The border is the same
   for every channel: the plane is zeroed once per run of channels and only its interior is
   rewritten for each. */
static size_t dw_plane_floats(const bp_geom *g) { return dw_plane_rows(g) * dw_plane_cols(g) * (g->sx == 2 ? 2 : 1); }

static void dw_fill_plane(const bp_geom *g, const bp_image *img, const float *src, float *p) {
    size_t cols = dw_plane_cols(g), rows = dw_plane_rows(g), sub = rows * cols;
    size_t full = g->sx == 2 ? 2 * cols : cols; /* padded-input columns held */
    size_t y1 = bp_min(g->pt + g->in_h, rows), x1 = bp_min(g->pl + g->in_w, full);
    if (g->pl >= x1) return;
    size_t n = x1 - g->pl;
    for (size_t py = g->pt; py < y1; py++) {
        const float *srow = src + (py - g->pt) * img->sy;
        float *even = p + py * cols;
        if (g->sx == 1) {
            float *dst = even + g->pl;
            if (img->sx == 1) /* whole vectors (short rows are the common case), no libc call */
                for (size_t i = 0; i < n; i += BP_VL) bp_vstore_part(dst + i, bp_vload_part(srow + i, n - i), n - i);
            else
                for (size_t i = 0; i < n; i++) dst[i] = srow[i * img->sx];
        } else {
            float *odd = even + sub;
            for (size_t i = 0; i < n; i++) {
                size_t px = g->pl + i;
                float v = srow[i * img->sx];
                if (px & 1) odd[px >> 1] = v;
                else even[px >> 1] = v;
            }
        }
    }
}

/* The first n of 8 values to dst (the tiny-layer kernel's rows of at most 8 outputs). */
static inline void store_part(float *dst, const bp_v8 *v, size_t n) {
    if (n >= 8) {
        memcpy(dst, v, sizeof *v);
        return;
    }
#if defined(__AVX2__)
    static const int32_t ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    __m256i lanes = _mm256_loadu_si256((const __m256i *)ramp);
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lanes);
    __m256 value;
    memcpy(&value, v, sizeof value);
    _mm256_maskstore_ps(dst, mask, value);
#else
    for (size_t i = 0; i < n; i++) dst[i] = (*v)[i];
#endif
}

/* An R x V tile of output vectors (R rows, V vectors of BP_VL columns from column ox): R*V
   independent accumulators hide the FMA latency; R and V are constants once inlined, so they stay
   in registers. */
static inline __attribute__((always_inline)) void dw_tile(const float *base, size_t row_step, const size_t *off,
                                                          const float *wo, size_t taps, float bias, float *out,
                                                          size_t ow, size_t ox, const int R, const int V) {
    bp_vec acc[4][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) acc[r][v] = bp_vset1(bias);
    for (size_t t = 0; t < taps; t++) {
        const float *s = base + off[t] + ox;
        bp_vec wv = bp_vset1(wo[t]);
        for (int r = 0; r < R; r++)
            for (int v = 0; v < V; v++)
                acc[r][v] = bp_vfma(wv, bp_vload(s + r * row_step + (size_t)v * BP_VL), acc[r][v]);
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            size_t at = ox + (size_t)v * BP_VL;
            if (at < ow) bp_vstore_part(out + r * ow + at, acc[r][v], ow - at);
        }
}

/* 3x3, stride 1, padding 1 on every side, rows that fit one vector (e.g. 14x14 planes): straight
   from the input plane, with no padded copy. Each input row is loaded once (masked: the lanes past
   the row are zero, the right border) and shifted by one lane either way (the left border comes
   in as a zero), and the three variants of three rows stay in registers while they serve three
   output rows; each output row sums its 9 products in three chains. */
static bool dw3x3_rows_in_a_vector(const bp_geom *g, const bp_image *img) {
#if defined(__AVX512F__)
    return g->kh == 3 && g->kw == 3 && g->sx == 1 && g->sy == 1 && g->dx == 1 && g->dy == 1 && g->pl == 1 &&
           g->pt == 1 && g->out_w == g->in_w && g->out_h == g->in_h && g->in_w <= BP_VL && img->sx == 1;
#else
    (void)g;
    (void)img;
    return false;
#endif
}

#if defined(__AVX512F__)
static void dw3x3_vector_rows(const bp_geom *g, const bp_image *img, const float *x, const float *wk, float bias,
                              float *out) {
    size_t w = g->in_w, h = g->in_h;
    __mmask16 lanes = (__mmask16)((1u << w) - 1u);
    const __m512i left = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
    const __m512i right = _mm512_set_epi32(15, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
    __m512 k[9], zero = _mm512_setzero_ps(), b = _mm512_set1_ps(bias);
    for (int t = 0; t < 9; t++) k[t] = _mm512_set1_ps(wk[t]);
    /* row r as (x[c-1], x[c], x[c+1]) for every output column c */
#define DW_ROW(r, v0, v1, v2)                                                                                 \
    do {                                                                                                       \
        v1 = (r) < h ? _mm512_maskz_loadu_ps(lanes, x + (r) * img->sy) : zero;                                 \
        v0 = _mm512_maskz_permutexvar_ps((__mmask16)0xFFFE, left, v1);                                         \
        v2 = _mm512_maskz_permutexvar_ps((__mmask16)0x7FFF, right, v1);                                        \
    } while (0)
    __m512 a0 = zero, a1 = zero, a2 = zero, c0, c1, c2, d0, d1, d2; /* rows y-1, y, y+1 */
    DW_ROW(0, c0, c1, c2);
    for (size_t y = 0; y < h; y++) {
        DW_ROW(y + 1, d0, d1, d2);
        __m512 s0 = _mm512_fmadd_ps(k[0], a0, b), s1 = _mm512_mul_ps(k[3], c0), s2 = _mm512_mul_ps(k[6], d0);
        s0 = _mm512_fmadd_ps(k[1], a1, s0);
        s1 = _mm512_fmadd_ps(k[4], c1, s1);
        s2 = _mm512_fmadd_ps(k[7], d1, s2);
        s0 = _mm512_fmadd_ps(k[2], a2, s0);
        s1 = _mm512_fmadd_ps(k[5], c2, s1);
        s2 = _mm512_fmadd_ps(k[8], d2, s2);
        _mm512_mask_storeu_ps(out + y * w, lanes, _mm512_add_ps(_mm512_add_ps(s0, s1), s2));
        a0 = c0, a1 = c1, a2 = c2;
        c0 = d0, c1 = d1, c2 = d2;
    }
}

/* The weight gradient of such a layer for one channel: acc[t] += dy row * the tap's shifted input
   row, over every row of every image, then one horizontal sum per tap. */
static void dw3x3_vector_rows_weights(const bp_geom *g, const bp_image *img, const float *x0, size_t x_bs,
                                      const float *dy0, size_t dy_bs, size_t batch, float acc_out[9]) {
    size_t w = g->in_w, h = g->in_h;
    __mmask16 lanes = (__mmask16)((1u << w) - 1u);
    const __m512i left = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
    const __m512i right = _mm512_set_epi32(15, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
    __m512 k[9], zero = _mm512_setzero_ps();
    for (int t = 0; t < 9; t++) k[t] = zero;
    for (size_t n = 0; n < batch; n++) {
        const float *x = x0 + n * x_bs, *dy = dy0 + n * dy_bs;
        __m512 a0 = zero, a1 = zero, a2 = zero, c0, c1, c2, d0, d1, d2;
        DW_ROW(0, c0, c1, c2);
        for (size_t y = 0; y < h; y++) {
            DW_ROW(y + 1, d0, d1, d2);
            __m512 e = _mm512_maskz_loadu_ps(lanes, dy + y * w);
            k[0] = _mm512_fmadd_ps(e, a0, k[0]);
            k[1] = _mm512_fmadd_ps(e, a1, k[1]);
            k[2] = _mm512_fmadd_ps(e, a2, k[2]);
            k[3] = _mm512_fmadd_ps(e, c0, k[3]);
            k[4] = _mm512_fmadd_ps(e, c1, k[4]);
            k[5] = _mm512_fmadd_ps(e, c2, k[5]);
            k[6] = _mm512_fmadd_ps(e, d0, k[6]);
            k[7] = _mm512_fmadd_ps(e, d1, k[7]);
            k[8] = _mm512_fmadd_ps(e, d2, k[8]);
            a0 = c0, a1 = c1, a2 = c2;
            c0 = d0, c1 = d1, c2 = d2;
        }
    }
    for (int t = 0; t < 9; t++) acc_out[t] = _mm512_reduce_add_ps(k[t]);
}
#undef DW_ROW
#endif

/* Offsets of each tap into the padded plane from the first input of output (0, 0). */
static void dw_offsets(const bp_geom *g, size_t off[MAX_FAST_TAPS]) {
    size_t cols = dw_plane_cols(g), sub = dw_plane_rows(g) * cols;
    for (size_t ky = 0; ky < g->kh; ky++)
        for (size_t kx = 0; kx < g->kw; kx++) {
            size_t t = kx * g->dx, row = ky * g->dy * cols;
            off[ky * g->kw + kx] = g->sx == 2 ? row + (t & 1) * sub + (t >> 1) : row + t;
        }
}

/* Of the n floats from `next`, the cache lines of the share [part0, part1) of `parts`. */
static void prefetch_share(const float *next, size_t n, size_t part0, size_t part1, size_t parts) {
    if (next == NULL) return;
    const char *bytes = (const char *)next;
    size_t b0 = n * sizeof(float) * part0 / parts, b1 = n * sizeof(float) * part1 / parts;
    for (size_t b = b0 / 64 * 64; b < b1; b += 64) __builtin_prefetch(bytes + b, 0, 3);
}

/* One output plane from the padded plane p (tap offsets `off`), every value starting at the bias.
   The next plane's source (next_n floats from next; NULL: none) is prefetched meanwhile, so that
   the memory is busy while this plane is computed, not only while the next one is copied. */
static void dw_fast_plane(const bp_geom *g, const float *p, const size_t *off, const float *wo, float bias,
                          float *out, const float *next, size_t next_n) {
    size_t cols = dw_plane_cols(g), ow = g->out_w, oh = g->out_h;
    size_t owv = bp_ceil_div(ow, BP_VL) * BP_VL, taps = g->kh * g->kw;
    size_t row_step = g->sy * cols, oy = 0, two = 2 * BP_VL, four = 4 * BP_VL;
    for (; oy + 4 <= oh; oy += 4) {
        prefetch_share(next, next_n, oy, oy + 4, oh);
        const float *base = p + oy * row_step;
        float *orow = out + oy * ow;
        size_t ox = 0;
        for (; ox + two <= owv; ox += two) dw_tile(base, row_step, off, wo, taps, bias, orow, ow, ox, 4, 2);
        if (ox < owv) dw_tile(base, row_step, off, wo, taps, bias, orow, ow, ox, 4, 1);
    }
    if (oy + 2 <= oh) {
        prefetch_share(next, next_n, oy, oy + 2, oh);
        const float *base = p + oy * row_step;
        float *orow = out + oy * ow;
        size_t ox = 0;
        for (; ox + two <= owv; ox += two) dw_tile(base, row_step, off, wo, taps, bias, orow, ow, ox, 2, 2);
        if (ox < owv) dw_tile(base, row_step, off, wo, taps, bias, orow, ow, ox, 2, 1);
        oy += 2;
    }
    for (; oy < oh; oy++) {
        prefetch_share(next, next_n, oy, oy + 1, oh);
        const float *base = p + oy * row_step;
        float *orow = out + oy * ow;
        size_t ox = 0;
        for (; ox + four <= owv; ox += four) dw_tile(base, row_step, off, wo, taps, bias, orow, ow, ox, 1, 4);
        for (; ox < owv; ox += BP_VL) dw_tile(base, row_step, off, wo, taps, bias, orow, ow, ox, 1, 1);
    }
}

/* General kernel (any stride, huge kernels): interior vector blocks, borders per pixel. */
static void dw_general_plane(const bp_geom *g, const bp_image *img, const float *plane, const float *wo, float *out) {
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
    }
}

/* ---- tasks -------------------------------------------------------------------------------- */

/* How many workers a job gets, and how fine its column blocks and channel chunks are cut so
   that every worker has a task even for a single image. */
typedef struct {
    int workers;
    size_t rows;    /* output rows per column block */
    size_t blocks;  /* column blocks per image */
    size_t chunks;  /* channel chunks per block */
    size_t tasks;
} task_plan;

static task_plan plan_tasks(const bp_geom *g, const bp_gemm_ctx *ctx, size_t batch, size_t flops, size_t channels,
                            bool split_rows) {
    task_plan p = {bp_workers_for(ctx->threads, flops), g->block_rows, 0, 1, 0};
    size_t outer = batch * g->groups;
    p.blocks = bp_ceil_div(g->out_h, p.rows);
    if (split_rows && outer * p.blocks < (size_t)p.workers) {
        size_t want = bp_ceil_div((size_t)p.workers, outer);
        size_t rows = bp_ceil_div(g->out_h, want);
        if (rows * g->out_w >= MIN_SPLIT_PIXELS && rows < p.rows) {
            p.rows = rows;
            p.blocks = bp_ceil_div(g->out_h, rows);
        }
    }
    /* a few blocks that do not split evenly over the workers (7 over 2: at most 1.75x): cut
       finer so that they do, when the blocks stay equal and wide enough */
    size_t w = (size_t)p.workers;
    if (split_rows && w > 1 && (outer * p.blocks) % w != 0 && outer * p.blocks < 8 * w)
        for (size_t b = p.blocks + 1; b <= 2 * p.blocks; b++) {
            size_t rows = bp_ceil_div(g->out_h, b);
            if (rows * g->out_w < MIN_SPLIT_PIXELS) break;
            if (bp_ceil_div(g->out_h, rows) == b && (outer * b) % w == 0) {
                p.rows = rows;
                p.blocks = b;
                break;
            }
        }
    size_t units = outer * (split_rows ? p.blocks : 1);
    if (units < (size_t)p.workers) {
        size_t most = channels / MIN_CHUNK_CHANNELS;
        p.chunks = bp_min(bp_ceil_div((size_t)p.workers, units), most < 1 ? 1 : most);
    }
    p.tasks = units * p.chunks;
    if ((size_t)p.workers > p.tasks) p.workers = (int)p.tasks;
    return p;
}

static bool direct_columns(const bp_geom *g, const bp_image *img) {
    /* 1x1, stride 1, no padding, packed input: the input already is the column matrix */
    return g->kh == 1 && g->kw == 1 && g->sx == 1 && g->sy == 1 && g->pl == 0 && g->pt == 0 && img->packed &&
           g->out_h == g->in_h && g->out_w == g->in_w;
}

/* ---- forward ------------------------------------------------------------------------------ */

typedef struct {
    const bp_geom *g;
    const float *w;
    size_t batch;
    const bp_image *x_img;
    const float *x;
    size_t x_bs;
    float *y;
    size_t y_bs;
    const bp_epilogue *e;
    const bp_scratch *s;
    const bp_gemm_ctx *ctx;
    task_plan p;
    bool direct;
    bool small; /* small_plane straight from the padded planes */
} forward_job;

/* Tiny layers (rows of at most 8 outputs, little work in all): straight from the padded planes,
   one vector per output row and up to 8 rows at a time, with no column matrix and no GEMM call, whose
   fixed costs would dominate. Lanes past out_w read padding or the scratch's slack and are not
   stored. */
enum { SMALL_DIRECT_FLOPS = 1 << 21 };
/* Output channels are done in pairs, which halves the loads per multiply-add, where there are
   registers for it; rows 8 at a time with 32 vector registers, 4 with 16. */
#if defined(__AVX512VL__)
enum { SMALL_PAIRS = 1, SMALL_ACCUMULATORS = 16 };
#elif defined(__AVX__)
enum { SMALL_PAIRS = 1, SMALL_ACCUMULATORS = 8 };
#else
enum { SMALL_PAIRS = 0, SMALL_ACCUMULATORS = 8 };
#endif

/* M output channels of R rows at once: each input vector loaded feeds M accumulators. */
static inline __attribute__((always_inline)) void small_rows(const bp_geom *g, const float *pad, const float *wo,
                                                             const float *bias, size_t y0, float *out, const int M,
                                                             const int R) {
    size_t ow = g->out_w, ohw = out_pixels(g), ph = g->out_h + (g->kh - 1) * g->dy, pw = ow + (g->kw - 1) * g->dx;
    bp_v8 acc[2][8];
    for (int m = 0; m < M; m++) {
        bp_v8 start = {bias[m], bias[m], bias[m], bias[m], bias[m], bias[m], bias[m], bias[m]};
        for (int r = 0; r < R; r++) acc[m][r] = start;
    }
    size_t k = g->k, t = 0;
    for (size_t ci = 0; ci < g->in_cg; ci++)
        for (size_t ky = 0; ky < g->kh; ky++) {
            const float *row = pad + ci * ph * pw + (y0 + ky * g->dy) * pw;
            for (size_t kx = 0; kx < g->kw; kx++, t++) {
                const float *src = row + kx * g->dx;
                for (int r = 0; r < R; r++) {
                    bp_v8 v;
                    memcpy(&v, src + (size_t)r * pw, sizeof v);
#if defined(__AVX__)
                    if (M > 1) __asm__("" : "+x"(v)); /* one load for all M, not one folded into each FMA */
#endif
                    for (int m = 0; m < M; m++) acc[m][r] += wo[(size_t)m * k + t] * v;
                }
            }
        }
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) store_part(out + (size_t)m * ohw + (y0 + (size_t)r) * ow, &acc[m][r], ow);
}

static inline __attribute__((always_inline)) void small_planes(const bp_geom *g, const float *pad, const float *wo,
                                                               const float *bias, float *out, const int M) {
    size_t y = 0;
    if (M * 8 <= SMALL_ACCUMULATORS)
        for (; y + 8 <= g->out_h; y += 8) small_rows(g, pad, wo, bias, y, out, M, 8);
    for (; y + 4 <= g->out_h; y += 4) small_rows(g, pad, wo, bias, y, out, M, 4);
    for (; y < g->out_h; y++) small_rows(g, pad, wo, bias, y, out, M, 1);
}

static void small_plane_pair(const bp_geom *g, const float *pad, const float *wo, const float *bias, float *out) {
    small_planes(g, pad, wo, bias, out, 2);
}

static void small_plane(const bp_geom *g, const float *pad, const float *wo, const float *bias, float *out) {
    small_planes(g, pad, wo, bias, out, 1);
}

static void forward_tasks(void *arg, int worker, int workers) {
    const forward_job *j = arg;
    const bp_geom *g = j->g;
    size_t ohw = out_pixels(g), ow = g->out_w, t0, t1;
    bp_split(j->p.tasks, worker, workers, &t0, &t1);
    float *col = j->s->base + (size_t)worker * j->s->stride;
    size_t have = SIZE_MAX; /* the (image, group, block) whose columns are in col */
    for (size_t t = t0; t < t1; t++) {
        size_t q = t % j->p.chunks, u = t / j->p.chunks;
        size_t blk = u % j->p.blocks, ig = u / j->p.blocks, grp = ig % g->groups, b = ig / g->groups;
        size_t oy0 = blk * j->p.rows, oy1 = bp_min(oy0 + j->p.rows, g->out_h), nb = (oy1 - oy0) * ow;
        size_t m0, m1;
        bp_split(g->out_cg, (int)q, (int)j->p.chunks, &m0, &m1);
        const float *x = j->x + b * j->x_bs;
        if (j->small) {
            float *pad = col + g->padded_offset;
            if (have != u) {
                fill_padded_planes(g, j->x_img, x, grp * g->in_cg, pad);
                have = u;
            }
            for (size_t m = m0; m < m1;) {
                size_t o = grp * g->out_cg + m, n = SMALL_PAIRS && m1 - m >= 2 ? 2 : 1;
                float *plane = j->y + b * j->y_bs + o * ohw, bias[2];
                for (size_t i = 0; i < n; i++)
                    bias[i] = j->e != NULL && j->e->bias != NULL ? j->e->bias[(o + i) * j->e->bias_stride] : 0.0f;
                if (n == 2)
                    small_plane_pair(g, pad, j->w + o * g->k, bias, plane);
                else
                    small_plane(g, pad, j->w + o * g->k, bias, plane);
                if (j->e != NULL && j->e->act != NULL) bp_activation_apply(j->e->act, plane, n * ohw);
                m += n;
            }
            continue;
        }
        const float *cols;
        size_t ldb;
        if (j->direct) {
            cols = x + grp * g->in_cg * j->x_img->sc + oy0 * ow;
            ldb = ohw;
        } else {
            if (have != u) {
                if (g->padded_floats != 0 && j->p.blocks == 1) {
                    fill_padded_planes(g, j->x_img, x, grp * g->in_cg, col + g->padded_offset);
                    columns_from_padded(g, col + g->padded_offset, col);
                } else
                    bp_im2col_block(g, j->x_img, x, grp * g->in_cg, 0, g->k, oy0, oy1, col);
                have = u;
            }
            cols = col;
            ldb = nb;
        }
        float *out = j->y + b * j->y_bs + (grp * g->out_cg + m0) * ohw + oy0 * ow;
        bp_sgemm(j->ctx, false, false, m1 - m0, nb, g->k, 1.0f, j->w + (grp * g->out_cg + m0) * g->k, g->k, cols, ldb,
                 0.0f, out, ohw);
        for (size_t m = m0; m < m1; m++) bp_epilogue_run(j->e, grp * g->out_cg + m, out + (m - m0) * ohw, nb);
    }
}

typedef struct {
    const forward_job *f;
    size_t tasks; /* batch * out_c planes */
} depthwise_job;

static void depthwise_tasks(void *arg, int worker, int workers) {
    const depthwise_job *d = arg;
    const forward_job *j = d->f;
    const bp_geom *g = j->g;
    size_t ohw = out_pixels(g), t0, t1;
    bp_split(d->tasks, worker, workers, &t0, &t1);
    float *plane = j->s->base + (size_t)worker * j->s->stride;
    bool fast = depthwise_fast(g), vector_rows = dw3x3_rows_in_a_vector(g, j->x_img);
    (void)vector_rows;
    size_t have = SIZE_MAX; /* image * in_c + channel of the padded plane */
    size_t off[MAX_FAST_TAPS];
    if (fast && t0 < t1) {
        memset(plane, 0, dw_plane_floats(g) * sizeof(float));
        dw_offsets(g, off);
    }
    for (size_t t = t0; t < t1; t++) {
        size_t o = t % g->out_c, b = t / g->out_c, ci = o / g->out_cg;
        const float *src = j->x + b * j->x_bs + ci * j->x_img->sc;
        const float *wo = j->w + o * g->kh * g->kw;
        float *out = j->y + b * j->y_bs + o * ohw;
        if (fast) {
            float bias = 0.0f;
            if (j->e != NULL && j->e->bias != NULL) bias = j->e->bias[o * j->e->bias_stride];
#if defined(__AVX512F__)
            if (vector_rows) {
                dw3x3_vector_rows(g, j->x_img, src, wo, bias, out);
                if (j->e != NULL && j->e->act != NULL) bp_activation_apply(j->e->act, out, ohw);
                continue;
            }
#endif
            if (have != b * g->in_c + ci) {
                dw_fill_plane(g, j->x_img, src, plane);
                have = b * g->in_c + ci;
            }
            /* the next task's plane, when it is another one and packed (one block of memory) */
            const float *next = NULL;
            size_t next_o = (t + 1) % g->out_c, next_b = (t + 1) / g->out_c;
            if (t + 1 < t1 && j->x_img->packed && next_o / g->out_cg != ci)
                next = j->x + next_b * j->x_bs + (next_o / g->out_cg) * j->x_img->sc;
            dw_fast_plane(g, plane, off, wo, bias, out, next, g->in_h * g->in_w);
            if (j->e != NULL && j->e->act != NULL) bp_activation_apply(j->e->act, out, ohw);
        } else {
            dw_general_plane(g, j->x_img, src, wo, out);
            bp_epilogue_run(j->e, o, out, ohw);
        }
    }
}

/* One depthwise output plane from its input plane, through the kernel depthwise_tasks picks for g, with
   the bias and no activation (the kernel tester's entry; plane: bp_geom_plan's scratch). */
void bp_depthwise_plane(const bp_geom *g, const bp_image *img, const float *src, const float *wo, float bias,
                        float *out, float *plane) {
    size_t ohw = out_pixels(g);
    if (!depthwise_fast(g)) {
        dw_general_plane(g, img, src, wo, out);
        for (size_t i = 0; i < ohw; i++) out[i] += bias;
        return;
    }
#if defined(__AVX512F__)
    if (dw3x3_rows_in_a_vector(g, img)) {
        dw3x3_vector_rows(g, img, src, wo, bias, out);
        return;
    }
#endif
    size_t off[MAX_FAST_TAPS];
    memset(plane, 0, dw_plane_floats(g) * sizeof(float));
    dw_offsets(g, off);
    dw_fill_plane(g, img, src, plane);
    dw_fast_plane(g, plane, off, wo, bias, out, NULL, 0);
}

/* The tiny-layer kernel on group 0 of one image: its padded planes from x (in pad, at
   g->padded_offset of bp_geom_plan's scratch), then `pairs` ? two output planes : one, from the
   weights wo (k each) and their biases (the kernel tester's entry). */
void bp_tiny_planes(const bp_geom *g, const bp_image *img, const float *x, float *pad, const float *wo,
                    const float *bias, float *out, bool pairs) {
    fill_padded_planes(g, img, x, 0, pad);
    if (pairs) small_plane_pair(g, pad, wo, bias, out);
    else small_plane(g, pad, wo, bias, out);
}

bool bp_conv_small(const bp_geom *g) {
    return g->padded_floats != 0 && g->block_rows == g->out_h && g->out_w <= 8 &&
           2 * g->out_c * out_pixels(g) * g->k <= SMALL_DIRECT_FLOPS;
}

const char *bp_conv_engine(const bp_geom *g, bool backward_data) {
    bp_geom adjoint;
    if (one_input_channel_per_group(g) && (!backward_data || depthwise_adjoint(g, &adjoint))) return "depthwise";
    if (!backward_data && bp_conv_small(g)) return "tiny";
    return "im2col";
}

void bp_conv_forward(const bp_geom *g, const float *w, size_t batch, const bp_image *x_img, const float *x,
                     size_t x_bs, float *y, size_t y_bs, const bp_epilogue *e, const bp_scratch *s,
                     const bp_gemm_ctx *ctx, const bp_direct_pass *direct) {
    if (direct != NULL) {
        bp_image y_img = {.w = g->out_w, .h = g->out_h, .c = g->out_c, .sx = 1, .sy = g->out_w, .sc = out_pixels(g)};
        bp_direct_run(direct, batch, x_img, x, x_bs, &y_img, y, y_bs, false, e, s, ctx->threads);
        return;
    }
    size_t flops = 2 * batch * g->out_c * out_pixels(g) * g->k;
    forward_job j = {g, w, batch, x_img, x, x_bs, y, y_bs, e, s, ctx, {0}, direct_columns(g, x_img), false};
    if (one_input_channel_per_group(g)) {
        depthwise_job d = {&j, batch * g->out_c};
        int workers = bp_workers_for(ctx->threads, flops);
        bp_parallel_run(workers, depthwise_tasks, &d);
        return;
    }
    j.p = plan_tasks(g, ctx, batch, flops, g->out_cg, true);
    j.small = g->padded_floats != 0 && j.p.blocks == 1 && g->out_w <= 8 && flops / batch <= SMALL_DIRECT_FLOPS;
    bp_parallel_run(j.p.workers, forward_tasks, &j);
}

/* ---- backward data: dx = col2im(W^T dy) (also the forward pass of a transposed filter) -------- */

typedef struct {
    const bp_geom *g;
    const float *w;
    size_t batch;
    const float *dy;
    size_t dy_bs;
    const bp_image *dx_img;
    float *dx;
    size_t dx_bs;
    bool overwrite;
    const bp_epilogue *e;
    const bp_scratch *s;
    const bp_gemm_ctx *ctx;
    task_plan p;
    bool adjoint; /* depthwise through the adjoint geometry a (packed dx only) */
    bp_geom a;
} backward_data_job;

/* Depthwise backward-data at stride 1 is itself a depthwise convolution: dy correlated with the
   flipped kernel, padded by (k - 1)*dilation - pad. Its geometry, when the padding is not larger
   than the dilated kernel (always so for "same" and "valid" layers). */
static bool depthwise_adjoint(const bp_geom *g, bp_geom *a) {
    if (!(one_input_channel_per_group(g) && g->out_cg == 1 && g->sx == 1 && g->sy == 1 &&
          g->pt <= (g->kh - 1) * g->dy && g->pl <= (g->kw - 1) * g->dx))
        return false;
    *a = *g;
    a->in_h = g->out_h;
    a->in_w = g->out_w;
    a->out_h = g->in_h;
    a->out_w = g->in_w;
    a->pt = (g->kh - 1) * g->dy - g->pt;
    a->pl = (g->kw - 1) * g->dx - g->pl;
    return depthwise_fast(a);
}

static void backward_data_tasks(void *arg, int worker, int workers) {
    const backward_data_job *j = arg;
    const bp_geom *g = j->g;
    const bp_image *img = j->dx_img;
    size_t ohw = out_pixels(g), t0, t1, khw = g->kh * g->kw;
    bp_split(j->p.tasks, worker, workers, &t0, &t1);
    float *col = j->s->base + (size_t)worker * j->s->stride;
    bool depthwise = one_input_channel_per_group(g) && g->out_cg == 1;
    bp_image dy_img = {.w = g->out_w, .h = g->out_h, .c = g->out_c, .sx = 1, .sy = g->out_w, .sc = ohw};
    bool vector_rows = false;
    size_t off[MAX_FAST_TAPS];
    if (depthwise && j->adjoint && j->overwrite && t0 < t1) {
        vector_rows = dw3x3_rows_in_a_vector(&j->a, &dy_img);
        if (!vector_rows) {
            memset(col, 0, dw_plane_floats(&j->a) * sizeof(float)); /* the padded plane's border stays zero */
            dw_offsets(&j->a, off);
        }
    }
    for (size_t t = t0; t < t1; t++) {
        size_t q = t % j->p.chunks, ig = t / j->p.chunks, grp = ig % g->groups, b = ig / g->groups;
        size_t c0, c1;
        bp_split(g->in_cg, (int)q, (int)j->p.chunks, &c0, &c1);
        float *dx = j->dx + b * j->dx_bs;
        const float *dy = j->dy + b * j->dy_bs + grp * g->out_cg * ohw;
        size_t cbase = grp * g->in_cg;
        if (depthwise && j->adjoint && j->overwrite) {
            float flipped[MAX_FAST_TAPS];
            for (size_t c = c0; c < c1; c++) {
                const float *wc = j->w + (cbase + c) * khw;
                for (size_t i = 0; i < khw; i++) flipped[i] = wc[khw - 1 - i];
                float bias = 0.0f;
                if (j->e != NULL && j->e->bias != NULL) bias = j->e->bias[(cbase + c) * j->e->bias_stride];
                float *plane = dx + (cbase + c) * img->sc;
#if defined(__AVX512F__)
                if (vector_rows) {
                    dw3x3_vector_rows(&j->a, &dy_img, dy + c * ohw, flipped, bias, plane);
                } else
#endif
                {
                    dw_fill_plane(&j->a, &dy_img, dy + c * ohw, col);
                    const float *next = c + 1 < c1 ? dy + (c + 1) * ohw : NULL;
                    dw_fast_plane(&j->a, col, off, flipped, bias, plane, next, ohw);
                }
                if (j->e != NULL && j->e->act != NULL) bp_activation_apply(j->e->act, plane, img->h * img->w);
            }
            continue;
        }
        if (j->overwrite)
            for (size_t c = c0; c < c1; c++) zero_plane(img, dx + (cbase + c) * img->sc);
        if (depthwise) {
            bp_col2im_block(g, img, dx, cbase, c0, c1, dy, 0, g->out_h, j->w);
        } else {
            const float *wg = j->w + grp * g->out_cg * g->k;
            for (size_t oy0 = 0; oy0 < g->out_h; oy0 += g->block_rows) {
                size_t oy1 = bp_min(oy0 + g->block_rows, g->out_h), nb = (oy1 - oy0) * g->out_w;
                bp_sgemm(j->ctx, true, false, (c1 - c0) * khw, nb, g->out_cg, 1.0f, wg + c0 * khw, g->k,
                         dy + oy0 * g->out_w, ohw, 0.0f, col, nb);
                bp_col2im_block(g, img, dx, cbase, c0, c1, col, oy0, oy1, NULL);
            }
        }
        if (j->e != NULL)
            for (size_t c = c0; c < c1; c++)
                bp_epilogue_run(j->e, cbase + c, dx + (cbase + c) * img->sc, img->h * img->w);
    }
}

void bp_conv_backward_data(const bp_geom *g, const float *w, size_t batch, const float *dy, size_t dy_bs,
                           const bp_image *dx_img, float *dx, size_t dx_bs, bool overwrite, const bp_epilogue *e,
                           const bp_scratch *s, const bp_gemm_ctx *ctx, const bp_direct_pass *direct) {
    if (direct != NULL) {
        bp_image dy_img = {.w = g->out_w, .h = g->out_h, .c = g->out_c, .sx = 1, .sy = g->out_w, .sc = out_pixels(g)};
        bp_direct_run(direct, batch, &dy_img, dy, dy_bs, dx_img, dx, dx_bs, !overwrite, e, s, ctx->threads);
        return;
    }
    size_t flops = 2 * batch * g->out_c * out_pixels(g) * g->k;
    backward_data_job j = {g, w, batch, dy, dy_bs, dx_img, dx, dx_bs, overwrite, dx_img->packed ? e : NULL, s, ctx, {0},
                           false, {0}};
    j.adjoint = dx_img->packed && depthwise_adjoint(g, &j.a);
    j.p = plan_tasks(g, ctx, batch, flops, g->in_cg, false);
    j.p.blocks = 1;
    j.p.tasks = batch * g->groups * j.p.chunks;
    if ((size_t)j.p.workers > j.p.tasks) j.p.workers = (int)j.p.tasks;
    bp_parallel_run(j.p.workers, backward_data_tasks, &j);
}

/* ---- weight gradient: dW_g (+)= dy_g * im2col(x_g)^T, summed over the batch ---------------- */

typedef struct {
    const bp_geom *g;
    size_t batch;
    const bp_image *x_img;
    const float *x;
    size_t x_bs;
    const float *dy;
    size_t dy_bs;
    float *dw;
    float beta;
    const bp_scratch *s;
    const bp_gemm_ctx *ctx;
    size_t chunks, tasks;
    bool direct;
} weights_job;

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

/* Depthwise: one sum per tap, over every pixel of every image. */
static void depthwise_weights(const weights_job *j, size_t o) {
    const bp_geom *g = j->g;
    const bp_image *img = j->x_img;
    for (size_t ky = 0; ky < g->kh; ky++) {
        size_t oy_lo, oy_hi;
        valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
        for (size_t kx = 0; kx < g->kw; kx++) {
            size_t ox_lo, ox_hi;
            valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
            float s = 0.0f;
            if (ox_lo < ox_hi) {
                size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl, step = g->sx * img->sx, n = ox_hi - ox_lo;
                for (size_t b = 0; b < j->batch; b++) {
                    const float *plane = j->x + b * j->x_bs + (o / g->out_cg) * img->sc;
                    const float *d = j->dy + b * j->dy_bs + o * out_pixels(g);
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
            float *dst = j->dw + (o * g->kh + ky) * g->kw + kx;
            *dst = j->beta == 0.0f ? s : j->beta * *dst + s;
        }
    }
}

/* Depthwise at stride 1 or 2: every tap of a channel at once, from the padded input plane the
   forward kernel uses (so no bounds), one vector of dy against each tap's shifted input vector. */
static void depthwise_weights_fast(const weights_job *j, size_t o, float *plane) {
    const bp_geom *g = j->g;
    size_t cols = dw_plane_cols(g), sub = dw_plane_rows(g) * cols, ow = g->out_w, ow8 = bp_ceil_div(ow, 8) * 8;
    size_t taps = g->kh * g->kw, row_step = g->sy * cols;
    size_t off[MAX_FAST_TAPS];
    bp_v8 acc[MAX_FAST_TAPS], zero = {0};
    float dy_row[8 * 64];
    for (size_t ky = 0; ky < g->kh; ky++)
        for (size_t kx = 0; kx < g->kw; kx++) {
            size_t t = kx * g->dx, row = ky * g->dy * cols;
            off[ky * g->kw + kx] = g->sx == 2 ? row + (t & 1) * sub + (t >> 1) : row + t;
        }
    for (size_t t = 0; t < taps; t++) acc[t] = zero;
    for (size_t b = 0; b < j->batch; b++) {
        dw_fill_plane(g, j->x_img, j->x + b * j->x_bs + (o / g->out_cg) * j->x_img->sc, plane);
        const float *d = j->dy + b * j->dy_bs + o * out_pixels(g);
        for (size_t oy = 0; oy < g->out_h; oy++) {
            const float *base = plane + oy * row_step;
            for (size_t ox = 0; ox < ow8; ox += 8 * 64) {
                size_t n = bp_min(ow - ox, 8 * 64), nv = bp_ceil_div(n, 8);
                copy_run(dy_row, d + oy * ow + ox, n);
                zero_run(dy_row + n, nv * 8 - n); /* lanes past the row add nothing */
                for (size_t v = 0; v < nv; v++) {
                    bp_v8 dv;
                    memcpy(&dv, dy_row + 8 * v, sizeof dv);
                    const float *s = base + ox + 8 * v;
                    for (size_t t = 0; t < taps; t++) {
                        bp_v8 x;
                        memcpy(&x, s + off[t], sizeof x);
                        acc[t] += dv * x;
                    }
                }
            }
        }
    }
    for (size_t t = 0; t < taps; t++) {
        float sum = 0.0f;
        for (int l = 0; l < 8; l++) sum += acc[t][l];
        float *dst = j->dw + o * taps + t;
        *dst = j->beta == 0.0f ? sum : j->beta * *dst + sum;
    }
}

static void weights_tasks(void *arg, int worker, int workers) {
    const weights_job *j = arg;
    const bp_geom *g = j->g;
    size_t ohw = out_pixels(g), t0, t1;
    bp_split(j->tasks, worker, workers, &t0, &t1);
    if (one_input_channel_per_group(g)) {
        float *plane = j->s->base + (size_t)worker * j->s->stride;
        bool fast = depthwise_fast(g);
        if (fast && t0 < t1) memset(plane, 0, dw_plane_floats(g) * sizeof(float)); /* borders stay zero */
        bool vector_rows = dw3x3_rows_in_a_vector(g, j->x_img);
        (void)vector_rows;
        for (size_t o = t0; o < t1; o++) {
#if defined(__AVX512F__)
            if (vector_rows) {
                float sum[9];
                dw3x3_vector_rows_weights(g, j->x_img, j->x + (o / g->out_cg) * j->x_img->sc, j->x_bs,
                                          j->dy + o * ohw, j->dy_bs, j->batch, sum);
                for (int t = 0; t < 9; t++) {
                    float *dst = j->dw + o * 9 + t;
                    *dst = j->beta == 0.0f ? sum[t] : j->beta * *dst + sum[t];
                }
                continue;
            }
#endif
            if (fast) depthwise_weights_fast(j, o, plane);
            else depthwise_weights(j, o);
        }
        return;
    }
    float *col = j->s->base + (size_t)worker * j->s->stride;
    for (size_t t = t0; t < t1; t++) {
        size_t q = t % j->chunks, grp = t / j->chunks, r0, r1;
        bp_split(g->k, (int)q, (int)j->chunks, &r0, &r1);
        if (r0 >= r1) continue;
        float *dwg = j->dw + grp * g->out_cg * g->k + r0;
        bool first = true;
        for (size_t b = 0; b < j->batch; b++) {
            const float *x = j->x + b * j->x_bs;
            const float *dyg = j->dy + b * j->dy_bs + grp * g->out_cg * ohw;
            size_t rows = j->direct ? g->out_h : g->block_rows;
            for (size_t oy0 = 0; oy0 < g->out_h; oy0 += rows) {
                size_t oy1 = bp_min(oy0 + rows, g->out_h), nb = (oy1 - oy0) * g->out_w;
                const float *cols = col;
                size_t ldb = nb;
                if (j->direct) {
                    cols = x + (grp * g->in_cg + r0) * j->x_img->sc;
                    ldb = ohw;
                } else {
                    bp_im2col_block(g, j->x_img, x, grp * g->in_cg, r0, r1, oy0, oy1, col);
                }
                bp_sgemm(j->ctx, false, true, g->out_cg, r1 - r0, nb, 1.0f, dyg + oy0 * g->out_w, ohw, cols, ldb,
                         first ? j->beta : 1.0f, dwg, g->k);
                first = false;
            }
        }
    }
}

void bp_conv_backward_weights(const bp_geom *g, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                              const float *dy, size_t dy_bs, float *dw, float beta, const bp_scratch *s,
                              const bp_gemm_ctx *ctx, const bp_direct *direct) {
    if (direct != NULL) {
        bp_direct_weight_gradient(direct, batch, x_img, x, x_bs, dy, dy_bs, dw, beta != 0.0f, s, ctx->threads);
        return;
    }
    size_t flops = 2 * batch * g->out_c * out_pixels(g) * g->k;
    weights_job j = {g, batch, x_img, x, x_bs, dy, dy_bs, dw, beta, s, ctx, 1, 0, direct_columns(g, x_img)};
    int workers = bp_workers_for(ctx->threads, flops);
    if (one_input_channel_per_group(g)) {
        j.tasks = g->out_c;
    } else {
        if (g->groups < (size_t)workers) j.chunks = bp_min(bp_ceil_div((size_t)workers, g->groups), g->k);
        j.tasks = g->groups * j.chunks;
    }
    if ((size_t)workers > j.tasks) workers = (int)j.tasks;
    bp_parallel_run(workers, weights_tasks, &j);
}
