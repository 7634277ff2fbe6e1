/* Depthwise padded-plane kernels, stride 1 or 2. The input plane is copied into a zero-bordered
   scratch plane wide enough for whole vectors of output; with stride 2 its even and odd columns
   become two sub-planes (deinterleaved in registers, a vector pair at a time), so every tap of every
   output vector is one contiguous load. The border is the same for every channel: the plane is
   zeroed once per run of channels and only its interior is rewritten for each. */
#include "depthwise_kernels.h"
#include "vmath.h"

bool bp_dw_padded(const bp_geom *g) {
    return g->groups > 1 && g->in_cg == 1 && (g->sx == 1 || g->sx == 2) && g->kh * g->kw <= BP_DW_MAX_TAPS;
}

/* Columns of the padded plane (per sub-plane at stride 2): whole vectors of output are computed. */
static size_t plane_cols(const bp_geom *g) {
    size_t owv = bp_ceil_div(g->out_w, BP_VL) * BP_VL;
    size_t need = (owv - 1) * g->sx + (g->kw - 1) * g->dx + 1;
    return g->sx == 2 ? bp_ceil_div(need, 2) + 1 : need;
}
static size_t plane_rows(const bp_geom *g) { return (g->out_h - 1) * g->sy + (g->kh - 1) * g->dy + 1; }

size_t bp_dw_plane_floats(const bp_geom *g) { return plane_rows(g) * plane_cols(g) * (g->sx == 2 ? 2 : 1); }

void bp_dw_plane_offsets(const bp_geom *g, size_t off[BP_DW_MAX_TAPS]) {
    size_t cols = plane_cols(g), sub = plane_rows(g) * cols;
    for (size_t ky = 0; ky < g->kh; ky++)
        for (size_t kx = 0; kx < g->kw; kx++) {
            size_t t = kx * g->dx, row = ky * g->dy * cols;
            off[ky * g->kw + kx] = g->sx == 2 ? row + (t & 1) * sub + (t >> 1) : row + t;
        }
}

void bp_dw_fill_plane(const bp_geom *g, const bp_image *img, const float *src, float *p) {
    size_t cols = plane_cols(g), rows = plane_rows(g), sub = rows * cols;
    size_t full = g->sx == 2 ? 2 * cols : cols; /* padded-input columns held */
    size_t y1 = bp_min(g->pt + g->in_h, rows), x1 = bp_min(g->pl + g->in_w, full);
    if (g->pl >= x1) return;
    size_t n = x1 - g->pl;
    for (size_t py = g->pt; py < y1; py++) {
        const float *srow = src + (py - g->pt) * img->sy;
        float *even = p + py * cols, *odd = even + sub;
        if (g->sx == 1) {
            float *dst = even + g->pl;
            if (img->sx == 1)
                for (size_t i = 0; i < n; i += BP_VL) bp_vstore_part(dst + i, bp_vload_part(srow + i, n - i), n - i);
            else
                for (size_t i = 0; i < n; i++) dst[i] = srow[i * img->sx];
        } else if (img->sx == 1) {
            /* input column i is padded column pl + i: with an odd pl, the even inputs are odd columns */
            if (g->pl % 2 == 0) bp_deinterleave(srow, n, even + g->pl / 2, odd + g->pl / 2);
            else bp_deinterleave(srow, n, odd + g->pl / 2, even + g->pl / 2 + 1);
        } else {
            for (size_t i = 0; i < n; i++) {
                size_t px = g->pl + i;
                (px & 1 ? odd : even)[px >> 1] = srow[i * img->sx];
            }
        }
    }
}

/* An R x V tile of output vectors (R rows, V vectors of BP_VL columns from column ox): R*V
   independent accumulators hide the FMA latency; R and V are constants once inlined, so they stay
   in registers. */
static inline __attribute__((always_inline)) void tile(const float *base, size_t row_step, const size_t *off,
                                                       const float *wo, size_t taps, const bp_dw_epilogue *e,
                                                       float *out, size_t ow, size_t ox, const int R, const int V) {
    bp_vec acc[4][4], lo = bp_vset1(e->lo), hi = bp_vset1(e->hi);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) acc[r][v] = bp_vset1(e->bias);
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
            if (at < ow) bp_vstore_part(out + r * ow + at, bp_vmin(hi, bp_vmax(lo, acc[r][v])), ow - at);
        }
}

/* Of the n floats from `next`, the cache lines of the share [part0, part1) of `parts`. */
static void prefetch_share(const float *next, size_t n, size_t part0, size_t part1, size_t parts) {
    if (next == NULL) return;
    const char *bytes = (const char *)next;
    size_t b0 = n * sizeof(float) * part0 / parts, b1 = n * sizeof(float) * part1 / parts;
    for (size_t b = b0 / 64 * 64; b < b1; b += 64) __builtin_prefetch(bytes + b, 0, 3);
}

/* Output rows [oy, oy + R): tiles of R rows x V vectors (V = 4 for single rows, else 2), then
   of single vectors. */
static inline __attribute__((always_inline)) void band(const bp_geom *g, const float *p, const size_t *off,
                                                       const float *wo, const bp_dw_epilogue *e, float *out,
                                                       size_t oy, const int R) {
    const int V = R == 1 ? 4 : 2;
    size_t ow = g->out_w, owv = bp_ceil_div(ow, BP_VL) * BP_VL, taps = g->kh * g->kw;
    size_t row_step = g->sy * plane_cols(g), ox = 0, step = (size_t)V * BP_VL;
    const float *base = p + oy * row_step;
    float *orow = out + oy * ow;
    for (; ox + step <= owv; ox += step) tile(base, row_step, off, wo, taps, e, orow, ow, ox, R, V);
    for (; ox < owv; ox += BP_VL) tile(base, row_step, off, wo, taps, e, orow, ow, ox, R, 1);
}

void bp_dw_padded_plane(const bp_geom *g, const float *p, const size_t *off, const float *wo,
                        const bp_dw_epilogue *e, float *out, const float *next, size_t next_n) {
    size_t oh = g->out_h, oy = 0;
    for (; oy + 4 <= oh; oy += 4) {
        prefetch_share(next, next_n, oy, oy + 4, oh);
        band(g, p, off, wo, e, out, oy, 4);
    }
    if (oy + 2 <= oh) {
        prefetch_share(next, next_n, oy, oy + 2, oh);
        band(g, p, off, wo, e, out, oy, 2);
        oy += 2;
    }
    for (; oy < oh; oy++) {
        prefetch_share(next, next_n, oy, oy + 1, oh);
        band(g, p, off, wo, e, out, oy, 1);
    }
}

/* Every tap of a channel at once: one vector of dy (zero past the row) against each tap's shifted
   input vector. */
void bp_dw_padded_weights(const bp_geom *g, const float *p, const size_t *off, const float *dy, float *sums) {
    size_t ow = g->out_w, taps = g->kh * g->kw, row_step = g->sy * plane_cols(g);
    bp_vec acc[BP_DW_MAX_TAPS];
    for (size_t t = 0; t < taps; t++) acc[t] = bp_vzero();
    for (size_t oy = 0; oy < g->out_h; oy++) {
        const float *base = p + oy * row_step, *drow = dy + oy * ow;
        for (size_t ox = 0; ox < ow; ox += BP_VL) {
            bp_vec d = bp_vload_part(drow + ox, ow - ox);
            for (size_t t = 0; t < taps; t++) acc[t] = bp_vfma(d, bp_vload(base + off[t] + ox), acc[t]);
        }
    }
    for (size_t t = 0; t < taps; t++) sums[t] += bp_vsum(acc[t]);
}
