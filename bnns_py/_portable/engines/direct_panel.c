/* The direct engine's forward pass of layers whose images have few pixels and whose weights are
   a dense view (the caller's OIHW array, or the filter's canonical copy): per image and group,
   the im2col panel of the image (a row of its pixels per reduction step c*taps + t, the steps in
   W's own order) and Y = W panel on the pointwise kernel, with W read in place, its values
   broadcast. The pixels kernel would pack W into channel-vector blocks at every call instead,
   which for ResNet's 512-channel 7x7 layer (9.4 MB of weights, 49 pixels) costs as much as a
   third of the call. Pixels past the last whole vector are dot products of the rows of W with their
   columns of the panel when they are few, computed in the pass of the last tile of vectors over
   W (a pass of their own would read W's rows again from L2: a tenth of the 7x7 layer's call),
   else a partial vector. The bias and a clamping activation are applied in registers, any other
   activation to each finished row. Workers share out the (image, output channel tile) pairs in
   equal runs, each building the panels of the images it works on (calls of several images: a
   worker takes whole images where it can, each panel built once), so the results do not depend
   on the thread count.
   Strided layers build the panel from padded planes whose rows are split into their column phases
   (bp_padded_shape), so that each panel row's values for an output row are consecutive there. */
#include <string.h>

#include "direct_plan.h"
#include "parallel.h"

enum {
    PANEL_PIXELS_MAX = 64, /* pixels per image the automatic choice takes */
    PANEL_MIN_K = 1024,    /* reduction steps it takes at least */
    PANEL_LIMIT = 1 << 22  /* scratch floats a forced panel may use */
};

typedef struct {
    size_t pixels, ld;  /* output pixels per image; floats between rows of the panel */
    size_t whole, tail; /* pixels in whole vectors; pixels after them */
    bool dots;          /* the tail as dot products (else a partial vector) */
    bp_padded_shape p;  /* the padded planes of the source */
} panel_shape;

static panel_shape shape_of(const bp_geom *g) {
    panel_shape s;
    s.pixels = g->out_h * g->out_w;
    s.whole = s.pixels / BP_VL * BP_VL;
    s.tail = s.pixels - s.whole;
    s.dots = s.tail > 0 && s.tail <= POINTWISE_DOTS_MAX && s.whole > 0;
    s.ld = bp_round_up(s.pixels, BP_VL);
    s.p = bp_padded_shape_of(g);
    return s;
}

static size_t padded_floats(const bp_geom *g, const panel_shape *s) {
    return bp_round_up(g->in_cg * s->p.ph * g->sx * s->p.pq, 16);
}

size_t bp_direct_panel_scratch_floats(const bp_geom *g) {
    panel_shape s = shape_of(g);
    return padded_floats(g, &s) + g->k * s.ld + g->k * POINTWISE_DOTS_MAX;
}

bool bp_direct_panel_takes(const bp_geom *g, bool forced) {
    if (g->kh * g->kw == 1) return false; /* 1x1: the pointwise plans */
    if (bp_direct_panel_scratch_floats(g) > PANEL_LIMIT) return false;
    if (forced) return true;
    size_t pixels = g->out_h * g->out_w;
    return pixels >= BP_VL && pixels <= PANEL_PIXELS_MAX && g->k >= PANEL_MIN_K;
}

bool bp_direct_panel_runs(const bp_direct_pass *pass, size_t batch, const bp_image *dst_img) {
    const bp_direct *d = pass->plan;
    return d->panel && batch <= d->panel_batch && pass->weights.base != NULL && pass->weights.in == d->s_taps &&
           dst_img->sx == 1 && dst_img->sy == d->geom.out_w;
}

typedef struct {
    const bp_direct_pass *pass;
    const bp_geom *g;
    panel_shape s;
    struct { const bp_image *img; const float *at; size_t bs; } x; /* source images, bs apart */
    struct { const bp_image *img; float *at; size_t bs; } y;       /* packed outputs, likewise */
    const bp_epilogue *e;
    float lo, hi;  /* the clamp applied in the kernel */
    bool activate; /* another activation, applied to each finished row */
    const bp_scratch *scratch;
    size_t batch, tiles; /* tiles: of POINTWISE_MR_MAX output channels, per image and group */
} panel_job;

static void zero_floats(float *dst, size_t n) {
    for (size_t i = 0; i < n; i += BP_VL) bp_vstore_part(dst + i, bp_vzero(), n - i);
}

typedef struct {
    size_t runs, at[MAX_PHASES + 1], n[MAX_PHASES + 1]; /* runs of zeros (the plans take sx <= MAX_PHASES) */
    size_t first[MAX_PHASES];                           /* where each phase's image values start */
} row_border;

/* Where a padded row holding n image values (padded columns pl ..) has them and its zeros: phase
   px's values at columns [px*pq + ceil((pl - px) / sx), px*pq + ceil((pl + n - px) / sx)), the
   zeros in the runs between them and at the row's ends. */
static row_border border_of(const bp_geom *g, const bp_padded_shape *p, size_t n) {
    row_border b = {.runs = 0};
    size_t from = 0; /* where the run of zeros before phase px's values starts */
    for (size_t px = 0; px <= g->sx; px++) {
        size_t to = px < g->sx ? px * p->pq + (g->pl + g->sx - 1 - px) / g->sx : g->sx * p->pq;
        if (to > from) b.at[b.runs] = from, b.n[b.runs++] = to - from;
        if (px == g->sx) break;
        b.first[px] = to;
        from = px * p->pq + (g->pl + n + g->sx - 1 - px) / g->sx;
    }
    return b;
}

/* Strided layers: the padded planes of the group's channels (x's channels c0 ..), each value
   written once: the image's values (source column i at padded column pl + i), zeros around them. */
static void fill_phase_planes(const bp_geom *g, const panel_shape *s, const bp_image *img, const float *x, size_t c0,
                              float *pad) {
    const bp_padded_shape *p = &s->p;
    size_t row = g->sx * p->pq, plane = p->ph * row;
    size_t n = p->pw > g->pl ? bp_min(g->in_w, p->pw - g->pl) : 0;
    size_t y0 = n > 0 ? bp_min(g->pt, p->ph) : p->ph, y1 = bp_max(y0, bp_min(g->pt + g->in_h, p->ph));
    row_border b = border_of(g, p, n); /* of the rows [y0, y1) */
    for (size_t ci = 0; ci < g->in_cg; ci++) {
        float *at = pad + ci * plane;
        zero_floats(at, y0 * row);
        for (size_t py = y0; py < y1; py++) {
            const float *src = x + (c0 + ci) * img->sc + (py - g->pt) * img->sy;
            float *dst = at + py * row;
            for (size_t r = 0; r < b.runs; r++) zero_floats(dst + b.at[r], b.n[r]);
            if (g->sx == 2 && img->sx == 1) { /* source column 0 in phase pl % 2 */
                size_t p0 = g->pl % 2;
                bp_direct_split_pairs(src, n, dst + b.first[p0], dst + b.first[1 - p0]);
                continue;
            }
            for (size_t i = 0; i < n; i++) {
                size_t col = g->pl + i;
                dst[col % g->sx * p->pq + col / g->sx] = src[i * img->sx];
            }
        }
        zero_floats(at + y1 * row, (p->ph - y1) * row);
    }
}

/* The panel of the group whose channel 0 is x's channel c0, and the tail's columns (pixel after
   pixel, their steps each) for dot products, else zeros past the pixels for a partial vector. */
static void fill_panel(const panel_job *j, const float *x, size_t c0, float *pad, float *panel, float *tail) {
    const bp_geom *g = j->g;
    const panel_shape *s = &j->s;
    if (g->sx == 1 && g->sy == 1) bp_fill_padded_planes(g, j->x.img, x, c0, pad);
    else fill_phase_planes(g, s, j->x.img, x, c0, pad);
    bp_columns_from_padded(g, pad, panel, s->ld);
    if (s->dots)
        for (size_t k = 0; k < g->k; k++)
            for (size_t p = 0; p < s->tail; p++) tail[p * g->k + k] = panel[k * s->ld + s->whole + p];
    else if (s->ld > s->pixels)
        for (size_t k = 0; k < g->k; k++) memset(panel + k * s->ld + s->pixels, 0, (s->ld - s->pixels) * sizeof(float));
}

/* bias[r] = the bias of output channel m + r of group grp, r < n. */
static void gather_bias(const panel_job *j, size_t grp, size_t m, size_t n, float *bias) {
    const bp_epilogue *e = j->e;
    for (size_t r = 0; r < n; r++)
        bias[r] = e != NULL && e->bias != NULL ? e->bias[(grp * j->g->out_cg + m + r) * e->bias_stride] : 0.0f;
}

/* Output channels [m, m + mr) of group grp (w: W's row of channel m, y: its output row). */
static void run_tile(const panel_job *j, size_t grp, size_t m, size_t mr, const float *w, const float *panel,
                     const float *tail, float *y) {
    const panel_shape *s = &j->s;
    size_t k = j->g->k, wr = j->pass->weights.out, ys = j->y.img->sc;
    float bias[POINTWISE_MR_MAX];
    gather_bias(j, grp, m, mr, bias);
    size_t vectors = s->dots ? s->whole / BP_VL : s->ld / BP_VL;
    for (size_t v = 0, nv; v < vectors; v += nv) {
        nv = bp_min(POINTWISE_NV_MAX, vectors - v);
        if (s->dots && v + nv == vectors) {
            bp_direct_pointwise_tile_dots(mr, nv, s->tail, panel + v * BP_VL, s->ld, k, w, wr, tail, k, bias, j->lo,
                                          j->hi, y + v * BP_VL, ys);
            continue;
        }
        size_t last = v + nv == vectors && !s->dots && s->tail > 0 ? s->tail : BP_VL;
        bp_direct_pointwise_tile(mr, nv, panel + v * BP_VL, s->ld, k, w, wr, 1, bias, j->lo, j->hi, y + v * BP_VL, ys,
                                 last);
    }
    if (j->activate)
        for (size_t r = 0; r < mr; r++) bp_activation_apply(j->e->act, y + r * ys, s->pixels);
}

static void run_tasks(void *arg, int worker, int workers) {
    const panel_job *j = arg;
    const bp_geom *g = j->g;
    const bp_weights_view *v = &j->pass->weights;
    float *pad = j->scratch->base + (size_t)worker * j->scratch->stride;
    float *panel = pad + padded_floats(g, &j->s), *tail = panel + g->k * j->s.ld;
    size_t per_image = g->groups * j->tiles, u0, u1;
    bp_split(j->batch * per_image, worker, workers, &u0, &u1);
    size_t filled = SIZE_MAX; /* the (image, group) whose panel the scratch holds */
    for (size_t u = u0; u < u1; u++) {
        size_t b = u / per_image, grp = u % per_image / j->tiles, m = u % j->tiles * POINTWISE_MR_MAX;
        if (u / j->tiles != filled)
            fill_panel(j, j->x.at + b * j->x.bs, grp * g->in_cg, pad, panel, tail);
        filled = u / j->tiles;
        float *y = j->y.at + b * j->y.bs + (grp * g->out_cg + m) * j->y.img->sc;
        const float *w = v->base + grp * v->group + m * v->out;
        size_t rows = bp_min(POINTWISE_MR_MAX, g->out_cg - m);
        for (size_t r0 = 0, mr; r0 < rows; r0 += mr) {
            mr = POINTWISE_MR_MAX;
            while (mr > rows - r0) mr /= 2;
            run_tile(j, grp, m + r0, mr, w + r0 * v->out, panel, tail, y + r0 * j->y.img->sc);
        }
    }
}

void bp_direct_panel_run(const bp_direct_pass *pass, size_t batch, const bp_image *src_img, const float *src,
                         size_t src_bs, const bp_image *dst_img, float *dst, size_t dst_bs, const bp_epilogue *e,
                         const bp_scratch *s, int threads) {
    const bp_geom *g = &pass->plan->geom;
    panel_job j = {pass, g, shape_of(g), {src_img, src, src_bs}, {dst_img, dst, dst_bs}, e, 0.0f, 0.0f, false, s,
                   batch, bp_ceil_div(g->out_cg, POINTWISE_MR_MAX)};
    j.activate = !bp_clamp_bounds(e != NULL ? e->act : NULL, &j.lo, &j.hi);
    size_t cost = 2 * batch * g->out_c * j.s.pixels * g->k;
    int workers = bp_workers_for(threads, cost);
    if ((size_t)workers > batch * g->groups * j.tiles) workers = (int)(batch * g->groups * j.tiles);
    bp_parallel_run_measured(workers, cost, run_tasks, &j);
}
