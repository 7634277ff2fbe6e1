/* The convolution engine: im2col + GEMM forward, col2im backward-data, GEMM weight gradient,
   and a direct kernel for depthwise convolution. All work on the geometry of a standard
   convolution S (see bp_geom in internal.h). */
#include <string.h>

#include "internal.h"

/* Index range [lo, hi) of output positions o whose tap position o*stride + tap - pad lies in [0, n). */
static void valid_range(size_t n_out, size_t n_in, size_t stride, size_t tap, size_t pad, size_t *lo, size_t *hi) {
    /* need o*stride + tap >= pad and o*stride + tap - pad < n_in */
    size_t first = 0;
    if (tap < pad) first = (pad - tap) / stride + ((pad - tap) % stride != 0);  /* ceiling, overflow-free */
    size_t last = 0;  /* exclusive */
    if (n_in + pad > tap) {
        last = (n_in + pad - tap - 1) / stride + 1;
        if (last > n_out) last = n_out;
    }
    *lo = first < last ? first : last;
    *hi = last;
}

/* col[(ci, ky, kx)][oy*out_w + ox] = x(c0 + ci, oy*sy + ky*dy - pt, ox*sx + kx*dx - pl), 0 outside. */
static void im2col(const bp_geom *g, const bp_image *img, const float *x, size_t c0, float *col) {
    size_t ohw = g->out_h * g->out_w;
    for (size_t ci = 0; ci < g->in_cg; ci++) {
        const float *plane = x + (c0 + ci) * img->sc;
        for (size_t ky = 0; ky < g->kh; ky++) {
            size_t oy_lo, oy_hi;
            valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
            for (size_t kx = 0; kx < g->kw; kx++) {
                float *dst = col + ((ci * g->kh + ky) * g->kw + kx) * ohw;
                size_t ox_lo, ox_hi;
                valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
                if (oy_lo >= oy_hi || ox_lo >= ox_hi) {
                    memset(dst, 0, ohw * sizeof(float));
                    continue;
                }
                memset(dst, 0, oy_lo * g->out_w * sizeof(float));
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    float *row = dst + oy * g->out_w;
                    const float *src = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy;
                    size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl;
                    memset(row, 0, ox_lo * sizeof(float));
                    if (g->sx == 1 && img->sx == 1) {
                        memcpy(row + ox_lo, src + ix0, (ox_hi - ox_lo) * sizeof(float));
                    } else {  /* indices, not a moving pointer: strides may be huge when one tap fits */
                        for (size_t ox = ox_lo; ox < ox_hi; ox++) row[ox] = src[(ix0 + (ox - ox_lo) * g->sx) * img->sx];
                    }
                    memset(row + ox_hi, 0, (g->out_w - ox_hi) * sizeof(float));
                }
                memset(dst + oy_hi * g->out_w, 0, (g->out_h - oy_hi) * g->out_w * sizeof(float));
            }
        }
    }
}

/* dx(c0 + ci, ...) += col[(ci, ky, kx)][...]: the adjoint of im2col. */
static void col2im(const bp_geom *g, const float *col, const bp_image *img, float *dx, size_t c0) {
    size_t ohw = g->out_h * g->out_w;
    for (size_t ci = 0; ci < g->in_cg; ci++) {
        float *plane = dx + (c0 + ci) * img->sc;
        for (size_t ky = 0; ky < g->kh; ky++) {
            size_t oy_lo, oy_hi;
            valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
            for (size_t kx = 0; kx < g->kw; kx++) {
                const float *src = col + ((ci * g->kh + ky) * g->kw + kx) * ohw;
                size_t ox_lo, ox_hi;
                valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
                if (ox_lo >= ox_hi) continue;  /* this tap never lands inside the image */
                size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl;
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    float *dst = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy;
                    const float *s = src + oy * g->out_w;
                    for (size_t ox = ox_lo; ox < ox_hi; ox++) dst[(ix0 + (ox - ox_lo) * g->sx) * img->sx] += s[ox];
                }
            }
        }
    }
}

static bool is_depthwise(const bp_geom *g) { return g->groups > 1 && g->in_cg == 1 && g->out_cg == 1; }

/* Direct depthwise kernel: out(c) = sum_taps w(c, ky, kx) * x(c, ...). */
static void depthwise_forward(const bp_geom *g, const float *w, const bp_image *img, const float *x, float *out) {
    size_t ohw = g->out_h * g->out_w;
    for (size_t c = 0; c < g->out_c; c++) {
        float *o = out + c * ohw;
        const float *plane = x + c * img->sc;
        memset(o, 0, ohw * sizeof(float));
        for (size_t ky = 0; ky < g->kh; ky++) {
            size_t oy_lo, oy_hi;
            valid_range(g->out_h, g->in_h, g->sy, ky * g->dy, g->pt, &oy_lo, &oy_hi);
            for (size_t kx = 0; kx < g->kw; kx++) {
                float wv = w[(c * g->kh + ky) * g->kw + kx];
                size_t ox_lo, ox_hi;
                valid_range(g->out_w, g->in_w, g->sx, kx * g->dx, g->pl, &ox_lo, &ox_hi);
                if (ox_lo >= ox_hi) continue;
                size_t ix0 = ox_lo * g->sx + kx * g->dx - g->pl;
                for (size_t oy = oy_lo; oy < oy_hi; oy++) {
                    const float *src = plane + (oy * g->sy + ky * g->dy - g->pt) * img->sy;
                    float *row = o + oy * g->out_w;
                    if (g->sx == 1 && img->sx == 1) {
                        const float *s = src + ix0;
                        for (size_t ox = ox_lo; ox < ox_hi; ox++) row[ox] += wv * s[ox - ox_lo];
                    } else {
                        for (size_t ox = ox_lo; ox < ox_hi; ox++) row[ox] += wv * src[(ix0 + (ox - ox_lo) * g->sx) * img->sx];
                    }
                }
            }
        }
    }
}

static bool direct_columns(const bp_geom *g, const bp_image *img) {
    /* 1x1, stride 1, no padding, packed input: the input already is the column matrix */
    return g->kh == 1 && g->kw == 1 && g->sx == 1 && g->sy == 1 && g->pl == 0 && g->pt == 0 &&
           img->packed && g->out_h == g->in_h && g->out_w == g->in_w;
}

void bp_conv_forward(const bp_geom *g, const float *w, const bp_image *x_img, const float *x,
                     float *out, float *col, int threads) {
    if (is_depthwise(g)) {
        depthwise_forward(g, w, x_img, x, out);
        return;
    }
    size_t ohw = g->out_h * g->out_w;
    bool direct = direct_columns(g, x_img);
    for (size_t grp = 0; grp < g->groups; grp++) {
        const float *columns = col;
        if (direct) columns = x + grp * g->in_cg * x_img->sc;
        else im2col(g, x_img, x, grp * g->in_cg, col);
        bp_sgemm(false, false, g->out_cg, ohw, g->k, 1.0f, w + grp * g->out_cg * g->k, g->k,
                 columns, ohw, 0.0f, out + grp * g->out_cg * ohw, ohw, threads);
    }
}

void bp_conv_backward_data(const bp_geom *g, const float *w, const float *dy, const bp_image *dx_img,
                           float *dx, float *col, int threads) {
    size_t ohw = g->out_h * g->out_w;
    for (size_t grp = 0; grp < g->groups; grp++) {
        bp_sgemm(true, false, g->k, ohw, g->out_cg, 1.0f, w + grp * g->out_cg * g->k, g->k,
                 dy + grp * g->out_cg * ohw, ohw, 0.0f, col, ohw, threads);
        col2im(g, col, dx_img, dx, grp * g->in_cg);
    }
}

void bp_conv_backward_weights(const bp_geom *g, const float *x, const bp_image *x_img, const float *dy,
                              float *dw, float beta, float *col, int threads) {
    size_t ohw = g->out_h * g->out_w;
    bool direct = direct_columns(g, x_img);
    for (size_t grp = 0; grp < g->groups; grp++) {
        const float *columns = col;
        if (direct) columns = x + grp * g->in_cg * x_img->sc;
        else im2col(g, x_img, x, grp * g->in_cg, col);
        bp_sgemm(false, true, g->out_cg, g->k, ohw, 1.0f, dy + grp * g->out_cg * ohw, ohw,
                 columns, ohw, beta, dw + grp * g->out_cg * g->k, g->k, threads);
    }
}
