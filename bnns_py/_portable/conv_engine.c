/* The convolution engine: im2col + GEMM forward, GEMM + col2im backward-data, GEMM weight
   gradient, and direct kernels for depthwise convolution (one input channel per group). All work
   on the geometry of a standard convolution S (see bp_geom in internal.h); the loops that are not
   GEMMs are split over channels (or column rows) with bp_parallel_for. */
#include <string.h>

#include "internal.h"
#include "parallel.h"

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

/* ---- epilogue: bias, activation, scatter of one finished output plane --------------------- */

void bp_epilogue_channel(const bp_epilogue *e, size_t c, float *plane, size_t h, size_t w) {
    size_t n = h * w;
    if (e->bias != NULL) {
        float b = e->bias[c * e->bias_stride];
        for (size_t i = 0; i < n; i++) plane[i] += b;
    }
    if (e->act != NULL) bp_activation_apply(e->act, plane, n);
    if (e->dst != NULL) {
        const bp_image *d = e->dst_img;
        float *out = e->dst + c * d->sc;
        for (size_t y = 0; y < h; y++) {
            float *row = out + y * d->sy;
            const float *src = plane + y * w;
            if (d->sx == 1) memcpy(row, src, w * sizeof(float));
            else
                for (size_t x = 0; x < w; x++) row[x * d->sx] = src[x];
        }
    }
}

typedef struct {
    const bp_epilogue *e;
    float *planes;
    size_t h, w;
} epilogue_args;

static void epilogue_range(void *p, size_t c0, size_t c1) {
    const epilogue_args *a = p;
    for (size_t c = c0; c < c1; c++) bp_epilogue_channel(a->e, c, a->planes + c * a->h * a->w, a->h, a->w);
}

void bp_epilogue_planes(const bp_epilogue *e, float *planes, size_t channels, size_t h, size_t w, int threads) {
    if (e == NULL || (e->bias == NULL && e->act == NULL && e->dst == NULL)) return;
    epilogue_args a = {e, planes, h, w};
    bp_parallel_for(threads, channels, channels * h * w * (e->act != NULL ? 8 : 2), epilogue_range, &a);
}

/* ---- im2col -------------------------------------------------------------------------------- */

/* Output rows [oy0, oy1) of the image, the column block that im2col / col2im work on: column
   (oy - oy0)*out_w + ox of a block matrix with (oy1 - oy0)*out_w columns. Blocks keep the column
   matrix small enough to stay in cache between im2col and the GEMM reading it. */
typedef struct {
    size_t oy0, oy1;
} row_block;

static size_t block_pixels(const bp_geom *g, row_block b) { return (b.oy1 - b.oy0) * g->out_w; }

typedef struct {
    const bp_geom *g;
    const bp_image *img;
    const float *x;
    size_t c0;
    float *col;
    row_block b;
} im2col_args;

/* col[(ci, ky, kx)][(oy - oy0)*out_w + ox] = x(c0 + ci, oy*sy + ky*dy - pt, ox*sx + kx*dx - pl), 0
   outside; rows r in [r0, r1) with r = (ci*kh + ky)*kw + kx. */
static void im2col_rows(void *p, size_t r0, size_t r1) {
    const im2col_args *a = p;
    const bp_geom *g = a->g;
    const bp_image *img = a->img;
    size_t nb = block_pixels(g, a->b), ow = g->out_w;
    for (size_t r = r0; r < r1; r++) {
        size_t kx = r % g->kw, ky = r / g->kw % g->kh, ci = r / (g->kw * g->kh);
        const float *plane = a->x + (a->c0 + ci) * img->sc;
        float *dst = a->col + r * nb; /* row oy of the block at (oy - oy0)*ow */
        size_t oy_lo, oy_hi, ox_lo, ox_hi;
        valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
        valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
        if (oy_lo < a->b.oy0) oy_lo = a->b.oy0;
        if (oy_hi > a->b.oy1) oy_hi = a->b.oy1;
        if (oy_lo >= oy_hi || ox_lo >= ox_hi) {
            memset(a->col + r * nb, 0, nb * sizeof(float));
            continue;
        }
        memset(a->col + r * nb, 0, (oy_lo - a->b.oy0) * ow * sizeof(float));
        size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl;
        size_t step = g->sx * img->sx; /* input values between neighbouring output pixels */
        for (size_t oy = oy_lo; oy < oy_hi; oy++) {
            float *row = dst + (oy - a->b.oy0) * ow;
            /* the first valid value: never form a pointer outside the image (strides may be huge
               when only one tap fits) */
            const float *src = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
            memset(row, 0, ox_lo * sizeof(float));
            size_t n = ox_hi - ox_lo;
            if (step == 1) memcpy(row + ox_lo, src, n * sizeof(float));
            else if (step == 2) /* a constant stride vectorizes (even lanes of pairs of vectors) */
                for (size_t i = 0; i < n; i++) row[ox_lo + i] = src[2 * i];
            else
                for (size_t i = 0; i < n; i++) row[ox_lo + i] = src[i * step];
            memset(row + ox_hi, 0, (ow - ox_hi) * sizeof(float));
        }
        memset(dst + (oy_hi - a->b.oy0) * ow, 0, (a->b.oy1 - oy_hi) * ow * sizeof(float));
    }
}

static void im2col(const bp_geom *g, const bp_image *img, const float *x, size_t c0, float *col, row_block b,
                   int threads) {
    im2col_args a = {g, img, x, c0, col, b};
    bp_parallel_for(threads, g->k, g->k * block_pixels(g, b), im2col_rows, &a);
}

/* ---- col2im -------------------------------------------------------------------------------- */

typedef struct {
    const bp_geom *g;
    const float *col;
    const bp_image *img;
    float *dx;
    size_t c0;
    row_block b;
    bool overwrite;       /* zero each plane before adding */
    const bp_epilogue *e; /* with img packed: finish each plane once it is complete */
    const float *dw_w;    /* depthwise (one input and one output channel per group): col is dy
                             itself (one block), and row (c, ky, kx) of the column matrix is
                             w(c, ky, kx) * dy(c) */
} col2im_args;

static void zero_plane(const bp_image *img, float *plane) {
    for (size_t y = 0; y < img->h; y++) {
        float *row = plane + y * img->sy;
        if (img->sx == 1) memset(row, 0, img->w * sizeof(float));
        else
            for (size_t x = 0; x < img->w; x++) row[x * img->sx] = 0.0f;
    }
}

/* dx(c0 + ci, ...) += col[(ci, ky, kx)][...] (the adjoint of im2col) over the block's output
   rows, for ci in [ci0, ci1). */
static void col2im_channels(void *p, size_t ci0, size_t ci1) {
    const col2im_args *a = p;
    const bp_geom *g = a->g;
    const bp_image *img = a->img;
    size_t nb = block_pixels(g, a->b);
    for (size_t ci = ci0; ci < ci1; ci++) {
        float *plane = a->dx + (a->c0 + ci) * img->sc;
        if (a->overwrite) zero_plane(img, plane);
        for (size_t ky = 0; ky < g->kh; ky++) {
            size_t oy_lo, oy_hi;
            valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
            if (oy_lo < a->b.oy0) oy_lo = a->b.oy0;
            if (oy_hi > a->b.oy1) oy_hi = a->b.oy1;
            for (size_t kx = 0; kx < g->kw; kx++) {
                size_t ox_lo, ox_hi;
                valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
                if (ox_lo >= ox_hi) continue; /* this tap never lands inside the image */
                size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl;
                size_t step = g->sx * img->sx, n = ox_hi - ox_lo;
                const float *src;
                float wv = 1.0f;
                if (a->dw_w != NULL) {
                    src = a->col + (a->c0 + ci) * nb;
                    wv = a->dw_w[((a->c0 + ci) * g->kh + ky) * g->kw + kx];
                } else {
                    src = a->col + ((ci * g->kh + ky) * g->kw + kx) * nb;
                }
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    float *dst = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
                    const float *s = src + (oy - a->b.oy0) * g->out_w + ox_lo;
                    if (step == 1)
                        for (size_t i = 0; i < n; i++) dst[i] += wv * s[i];
                    else if (step == 2)
                        for (size_t i = 0; i < n; i++) dst[2 * i] += wv * s[i];
                    else
                        for (size_t i = 0; i < n; i++) dst[i * step] += wv * s[i];
                }
            }
        }
        if (a->e != NULL) bp_epilogue_channel(a->e, a->c0 + ci, plane, img->h, img->w);
    }
}

/* overwrite: zero the planes first (the first block); e: finish them (the last block) */
static void col2im(const bp_geom *g, const float *col, const bp_image *img, float *dx, size_t c0, row_block b,
                   bool overwrite, const bp_epilogue *e, int threads) {
    col2im_args a = {g, col, img, dx, c0, b, overwrite, e, NULL};
    size_t cost = g->k * block_pixels(g, b) + (overwrite ? g->in_cg * img->h * img->w : 0);
    bp_parallel_for(threads, g->in_cg, cost, col2im_channels, &a);
}

/* ---- direct depthwise kernels (one input channel per group) --------------------------------- */

static bool one_input_channel_per_group(const bp_geom *g) { return g->groups > 1 && g->in_cg == 1; }

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

typedef struct {
    const bp_geom *g;
    const float *w;
    const bp_image *img;
    const float *x;
    float *out;
    const bp_epilogue *e;
} depthwise_args;

/* out(o) = sum_taps w(o, ky, kx) * x(o / out_cg, ...) for output channels o in [o0, o1): the
   interior of each row (every tap inside the image) in vector blocks, the borders per pixel. */
static void depthwise_forward_channels(void *p, size_t o0, size_t o1) {
    const depthwise_args *a = p;
    const bp_geom *g = a->g;
    const bp_image *img = a->img;
    size_t kh = g->kh, kw = g->kw, ow = g->out_w;
    /* columns where every kx is inside: ox*sx >= pl and ox*sx + (kw-1)*dx - pl < in_w */
    size_t in_lo = g->pl / g->sx + (g->pl % g->sx != 0), in_hi = 0;
    if (g->in_w + g->pl > (kw - 1) * g->dx) {
        in_hi = (g->in_w + g->pl - (kw - 1) * g->dx - 1) / g->sx + 1;
        if (in_hi > ow) in_hi = ow;
    }
    if (in_lo > in_hi) in_lo = in_hi;
    bool fast = kh <= 64;
    dw_taps t;
    for (size_t o = o0; o < o1; o++) {
        const float *plane = a->x + (o / g->out_cg) * img->sc;
        const float *wo = a->w + o * kh * kw;
        float *out = a->out + o * out_pixels(g);
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
            /* interior: blocks of 16, then 8 pixels; the last block moves back to end at in_hi
               (recomputing a few pixels) when the interior is at least 8 wide */
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
        if (a->e != NULL) bp_epilogue_channel(a->e, o, out, g->out_h, ow);
    }
}

typedef struct {
    const bp_geom *g;
    const bp_image *img;
    const float *x, *dy;
    float *dw;
    float beta;
} depthwise_dw_args;

/* dW(o, ky, kx) = beta*dW + sum_pixels dy(o, oy, ox) * x(o / out_cg, oy*sy + ky*dy - pt, ...) */
static void depthwise_weights_channels(void *p, size_t o0, size_t o1) {
    const depthwise_dw_args *a = p;
    const bp_geom *g = a->g;
    const bp_image *img = a->img;
    for (size_t o = o0; o < o1; o++) {
        const float *plane = a->x + (o / g->out_cg) * img->sc;
        const float *d = a->dy + o * out_pixels(g);
        for (size_t ky = 0; ky < g->kh; ky++) {
            size_t oy_lo, oy_hi;
            valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
            for (size_t kx = 0; kx < g->kw; kx++) {
                size_t ox_lo, ox_hi;
                valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
                float s = 0.0f;
                if (ox_lo < ox_hi) {
                    size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl, step = g->sx * img->sx, n = ox_hi - ox_lo;
                    for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                        const float *src = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy + ix0 * img->sx;
                        const float *dr = d + oy * g->out_w + ox_lo;
                        if (step == 1)
                            for (size_t i = 0; i < n; i++) s += dr[i] * src[i];
                        else
                            for (size_t i = 0; i < n; i++) s += dr[i] * src[i * step];
                    }
                }
                float *dst = a->dw + (o * g->kh + ky) * g->kw + kx;
                *dst = a->beta == 0.0f ? s : a->beta * *dst + s;
            }
        }
    }
}

/* ---- public entry points ---------------------------------------------------------------------- */

static bool direct_columns(const bp_geom *g, const bp_image *img) {
    /* 1x1, stride 1, no padding, packed input: the input already is the column matrix */
    return g->kh == 1 && g->kw == 1 && g->sx == 1 && g->sy == 1 && g->pl == 0 && g->pt == 0 && img->packed &&
           g->out_h == g->in_h && g->out_w == g->in_w;
}

static row_block next_block(const bp_geom *g, size_t oy0) {
    size_t rows = g->block_rows ? g->block_rows : g->out_h;
    row_block b = {oy0, oy0 + rows < g->out_h ? oy0 + rows : g->out_h};
    return b;
}

void bp_conv_forward(const bp_geom *g, const float *w, const bp_image *x_img, const float *x, float *out,
                     float *col, const bp_gemm_ctx *gemm, const bp_epilogue *e) {
    size_t ohw = out_pixels(g);
    if (one_input_channel_per_group(g)) {
        depthwise_args a = {g, w, x_img, x, out, e};
        bp_parallel_for(gemm->threads, g->out_c, g->out_c * ohw * g->kh * g->kw * 2, depthwise_forward_channels, &a);
        return;
    }
    bool direct = direct_columns(g, x_img);
    for (size_t grp = 0; grp < g->groups; grp++) {
        const float *wg = w + grp * g->out_cg * g->k;
        float *og = out + grp * g->out_cg * ohw;
        if (direct) {
            bp_sgemm(gemm, false, false, g->out_cg, ohw, g->k, 1.0f, wg, g->k, x + grp * g->in_cg * x_img->sc, ohw,
                     0.0f, og, ohw);
            continue;
        }
        for (row_block b = next_block(g, 0); b.oy0 < g->out_h; b = next_block(g, b.oy1)) {
            size_t nb = block_pixels(g, b);
            im2col(g, x_img, x, grp * g->in_cg, col, b, gemm->threads);
            bp_sgemm(gemm, false, false, g->out_cg, nb, g->k, 1.0f, wg, g->k, col, nb, 0.0f, og + b.oy0 * g->out_w,
                     ohw);
        }
    }
    bp_epilogue_planes(e, out, g->out_c, g->out_h, g->out_w, gemm->threads);
}

void bp_conv_backward_data(const bp_geom *g, const float *w, const float *dy, const bp_image *dx_img, float *dx,
                           bool overwrite, float *col, const bp_gemm_ctx *gemm, const bp_epilogue *e) {
    size_t ohw = out_pixels(g);
    if (one_input_channel_per_group(g) && g->out_cg == 1) {
        /* depthwise: scatter w * dy straight from dy, every channel being its own group */
        row_block all = {0, g->out_h};
        col2im_args a = {g, dy, dx_img, dx, 0, all, overwrite, e, w};
        bp_parallel_for(gemm->threads, g->in_c, g->in_c * ohw * g->kh * g->kw * 2, col2im_channels, &a);
        return;
    }
    for (size_t grp = 0; grp < g->groups; grp++) {
        const float *wg = w + grp * g->out_cg * g->k, *dyg = dy + grp * g->out_cg * ohw;
        for (row_block b = next_block(g, 0); b.oy0 < g->out_h; b = next_block(g, b.oy1)) {
            size_t nb = block_pixels(g, b);
            bp_sgemm(gemm, true, false, g->k, nb, g->out_cg, 1.0f, wg, g->k, dyg + b.oy0 * g->out_w, ohw, 0.0f, col,
                     nb);
            col2im(g, col, dx_img, dx, grp * g->in_cg, b, overwrite && b.oy0 == 0, b.oy1 == g->out_h ? e : NULL,
                   gemm->threads);
        }
    }
}

void bp_conv_backward_weights(const bp_geom *g, const float *x, const bp_image *x_img, const float *dy, float *dw,
                              float beta, float *col, const bp_gemm_ctx *gemm) {
    size_t ohw = out_pixels(g);
    if (one_input_channel_per_group(g)) {
        depthwise_dw_args a = {g, x_img, x, dy, dw, beta};
        bp_parallel_for(gemm->threads, g->out_c, g->out_c * ohw * g->kh * g->kw * 2, depthwise_weights_channels, &a);
        return;
    }
    bool direct = direct_columns(g, x_img);
    for (size_t grp = 0; grp < g->groups; grp++) {
        const float *dyg = dy + grp * g->out_cg * ohw;
        float *dwg = dw + grp * g->out_cg * g->k;
        if (direct) {
            bp_sgemm(gemm, false, true, g->out_cg, g->k, ohw, 1.0f, dyg, ohw, x + grp * g->in_cg * x_img->sc, ohw, beta,
                     dwg, g->k);
            continue;
        }
        for (row_block b = next_block(g, 0); b.oy0 < g->out_h; b = next_block(g, b.oy1)) {
            size_t nb = block_pixels(g, b);
            im2col(g, x_img, x, grp * g->in_cg, col, b, gemm->threads);
            bp_sgemm(gemm, false, true, g->out_cg, g->k, nb, 1.0f, dyg + b.oy0 * g->out_w, ohw, col, nb,
                     b.oy0 == 0 ? beta : 1.0f, dwg, g->k);
        }
    }
}
