/* The depthwise engine (depthwise.h): tasks of one output plane each (image x channel), handed in
   contiguous runs to the workers of the pool; each worker keeps the padded plane of the last input
   plane it copied in its own scratch, so the output channels of one input channel (a depth
   multiplier) copy it once. */
#include "depthwise.h"

#include <math.h>
#include <string.h>

#include "depthwise_kernels.h"
#include "parallel.h"

bool bp_depthwise(const bp_geom *g) { return g->groups > 1 && g->in_cg == 1; }

/* Padding not larger than the dilated kernel: always so for "same" and "valid" layers. */
bool bp_depthwise_adjoint(const bp_geom *g, bp_geom *a) {
    if (!(bp_depthwise(g) && g->out_cg == 1 && g->sx == 1 && g->sy == 1 && g->pt <= (g->kh - 1) * g->dy &&
          g->pl <= (g->kw - 1) * g->dx))
        return false;
    *a = *g;
    a->in_h = g->out_h;
    a->in_w = g->out_w;
    a->out_h = g->in_h;
    a->out_w = g->in_w;
    a->pt = (g->kh - 1) * g->dy - g->pt;
    a->pl = (g->kw - 1) * g->dx - g->pl;
    return bp_dw_padded(a);
}

size_t bp_depthwise_scratch_floats(const bp_geom *g) {
    bp_geom a;
    size_t forward = bp_dw_padded(g) ? bp_dw_plane_floats(g) : 0;
    size_t backward = bp_depthwise_adjoint(g, &a) ? bp_dw_plane_floats(&a) : 0;
    return forward > backward ? forward : backward;
}

/* ---- one plane ------------------------------------------------------------------------------ */

/* DW_3X3_PAIRS: two planes at once where there are two, else one through the strips */
typedef enum { DW_3X3_PAIRS, DW_3X3_STRIPS, DW_PADDED, DW_GENERAL } dw_kernel;

static dw_kernel kernel_for(const bp_geom *g, const bp_image *img) {
    if (bp_dw3x3_pairs_fit(g, img)) return DW_3X3_PAIRS;
    if (bp_dw3x3_strips_fit(g, img)) return DW_3X3_STRIPS;
    return bp_dw_padded(g) ? DW_PADDED : DW_GENERAL;
}

/* Inputs of a call larger than this come from memory rather than the caches (the machine's L3 is
   shared); the 3x3 strips prefetch the next plane then (measured on 32ch 112x112, 1 thread: 1.2-2.5x
   at batch 8, 12.8 MB; 0.77-0.88x at batch 1, 1.6 MB, where the lines are in L3 already). */
enum { DW_STRIPS_PREFETCH_BYTES = 8u << 20 };

/* A worker's kernel for a run of planes of one geometry, its padded plane, and whether the kernel
   prefetches the next plane's input. */
typedef struct {
    dw_kernel kernel;
    bool prefetch;
    float *plane;
    const float *filled; /* the input plane copied into `plane` (NULL: none) */
    size_t off[BP_DW_MAX_TAPS];
} dw_worker;

/* input_bytes: the call's input planes */
static void worker_start(dw_worker *k, const bp_geom *g, const bp_image *img, float *plane, size_t input_bytes) {
    k->kernel = kernel_for(g, img);
    k->prefetch = k->kernel == DW_PADDED || input_bytes > DW_STRIPS_PREFETCH_BYTES;
    k->plane = plane;
    k->filled = NULL;
    if (k->kernel != DW_PADDED) return;
    memset(plane, 0, bp_dw_plane_floats(g) * sizeof(float)); /* the border stays zero */
    bp_dw_plane_offsets(g, k->off);
}

/* One output plane from the input plane src; next / next_n: the next plane's source, prefetched. */
static void run_plane(dw_worker *k, const bp_geom *g, const bp_image *img, const float *src, const float *wo,
                      const bp_dw_epilogue *e, float *out, const float *next, size_t next_n) {
    switch (k->kernel) {
    case DW_3X3_PAIRS:
    case DW_3X3_STRIPS: bp_dw3x3_strips(g, img, src, wo, e, out, next, next_n); break;
    case DW_PADDED:
        if (k->filled != src) {
            bp_dw_fill_plane(g, img, src, k->plane);
            k->filled = src;
        }
        bp_dw_padded_plane(g, k->plane, k->off, wo, e, out, next, next_n);
        break;
    case DW_GENERAL: bp_dw_general_plane(g, img, src, wo, e, out); break;
    }
}

/* The kernels' epilogue for channel c: the bias, and the activation when it is a clamp (true);
   otherwise (false) the caller applies the activation afterwards. */
static bool fused_epilogue(const bp_epilogue *e, size_t c, bp_dw_epilogue *out) {
    *out = (bp_dw_epilogue){0.0f, -INFINITY, INFINITY};
    if (e == NULL) return true;
    if (e->bias != NULL) out->bias = e->bias[c * e->bias_stride];
    if (e->act == NULL) return true;
    switch (e->act->function) {
    case BNNSActivationFunctionIdentity: return true;
    case BNNSActivationFunctionRectifiedLinear: out->lo = 0.0f; return true;
    case BNNSActivationFunctionReLU6:
        out->lo = 0.0f;
        out->hi = 6.0f;
        return true;
    case BNNSActivationFunctionClamp:
        out->lo = e->act->alpha;
        out->hi = e->act->beta;
        return true;
    default: return false;
    }
}

/* ---- forward and backward data: one task per output plane ------------------------------------ */

typedef struct {
    const bp_geom *g;   /* the convolution the kernels run (the adjoint for backward data) */
    const bp_image *img; /* its input planes, images x_bs apart */
    const float *x;
    size_t x_bs;
    const float *w;
    bool flipped;       /* the kernels run the weights rotated by 180 degrees */
    float *y;           /* packed output planes, images y_bs apart */
    size_t y_bs;
    const bp_epilogue *e;
    const bp_scratch *s;
    size_t tasks;       /* images x output channels */
} planes_job;

/* Task t's plane: its source, weights (flipped into `flipped` when the job says so), output and
   epilogue (fused: all of it in the kernel). */
typedef struct {
    size_t channel;
    const float *src, *w;
    float *out;
    bp_dw_epilogue e;
    bool fused;
} plane_task;

/* The position of a task: image b, output channel o (tasks run in image-major order). */
typedef struct {
    size_t b, o;
} plane_at;

static inline void next_plane(const bp_geom *g, plane_at *at) {
    if (++at->o == g->out_c) {
        at->o = 0;
        at->b++;
    }
}

/* The input channel of output channel o: no division at a depth multiplier of 1 (divisions per
   plane are a measurable share of a 7x7 plane's time). */
static inline size_t input_channel(const bp_geom *g, size_t o) { return g->out_cg == 1 ? o : o / g->out_cg; }

static inline plane_task task_plane(const planes_job *j, plane_at at, float *flipped) {
    const bp_geom *g = j->g;
    size_t taps = g->kh * g->kw, c = input_channel(g, at.o);
    plane_task p = {c, j->x + at.b * j->x_bs + c * j->img->sc, j->w + at.o * taps,
                    j->y + at.b * j->y_bs + at.o * g->out_h * g->out_w, {0.0f, 0.0f, 0.0f}, false};
    if (j->flipped) {
        for (size_t i = 0; i < taps; i++) flipped[i] = p.w[taps - 1 - i];
        p.w = flipped;
    }
    p.fused = fused_epilogue(j->e, at.o, &p.e);
    return p;
}

static void finish_plane(const planes_job *j, const plane_task *p) {
    if (!p->fused) bp_activation_apply(j->e->act, p->out, j->g->out_h * j->g->out_w);
}

/* The input plane of the task after `at` for the kernels to prefetch: NULL when there is
   none in this run, it is the same input channel (already copied) or the image is not packed. */
static const float *prefetch_source(const planes_job *j, plane_at at, size_t channel, size_t left) {
    const bp_geom *g = j->g;
    if (left == 0 || !j->img->packed) return NULL;
    next_plane(g, &at);
    size_t c = input_channel(g, at.o);
    return c == channel ? NULL : j->x + at.b * j->x_bs + c * j->img->sc;
}

static void planes_tasks(void *arg, int worker, int workers) {
    const planes_job *j = arg;
    const bp_geom *g = j->g;
    size_t t0, t1;
    bp_split(j->tasks, worker, workers, &t0, &t1);
    if (t0 >= t1) return;
    dw_worker k;
    size_t input_bytes = j->tasks / g->out_cg * g->in_h * g->in_w * sizeof(float);
    worker_start(&k, g, j->img, j->s->base + (size_t)worker * j->s->stride, input_bytes);
    float flipped[2][BP_DW_MAX_TAPS];
    plane_at at = {t0 / g->out_c, t0 % g->out_c};
    for (size_t t = t0; t < t1; t++, next_plane(g, &at)) {
        plane_task p[2] = {task_plane(j, at, flipped[0])};
        if (k.kernel == DW_3X3_PAIRS && t + 1 < t1) {
            next_plane(g, &at);
            p[1] = task_plane(j, at, flipped[1]);
            const float *x[2] = {p[0].src, p[1].src}, *w[2] = {p[0].w, p[1].w};
            const bp_dw_epilogue *e[2] = {&p[0].e, &p[1].e};
            float *out[2] = {p[0].out, p[1].out};
            bp_dw3x3_pair(g, j->img, x, w, e, out);
            finish_plane(j, &p[0]);
            finish_plane(j, &p[1]);
            t++;
            continue;
        }
        const float *next = k.prefetch ? prefetch_source(j, at, p[0].channel, t1 - 1 - t) : NULL;
        run_plane(&k, g, j->img, p[0].src, p[0].w, &p[0].e, p[0].out, next, g->in_h * g->in_w);
        finish_plane(j, &p[0]);
    }
}

void bp_depthwise_forward(const bp_geom *g, const float *w, size_t batch, const bp_image *x_img, const float *x,
                          size_t x_bs, float *y, size_t y_bs, const bp_epilogue *e, const bp_scratch *s, int threads) {
    planes_job j = {g, x_img, x, x_bs, w, false, y, y_bs, e, s, batch * g->out_c};
    bp_parallel_run(bp_workers_for(threads, 2 * batch * g->out_c * g->out_h * g->out_w * g->k), planes_tasks, &j);
}

void bp_depthwise_backward_data(const bp_geom *g, const bp_geom *a, const float *w, size_t batch, const float *dy,
                                size_t dy_bs, float *dx, size_t dx_bs, const bp_epilogue *e, const bp_scratch *s,
                                int threads) {
    bp_image dy_img = {.w = g->out_w, .h = g->out_h, .c = g->out_c, .sx = 1, .sy = g->out_w,
                       .sc = g->out_h * g->out_w, .packed = true};
    planes_job j = {a, &dy_img, dy, dy_bs, w, true, dx, dx_bs, e, s, batch * a->out_c};
    bp_parallel_run(bp_workers_for(threads, 2 * batch * g->out_c * g->out_h * g->out_w * g->k), planes_tasks, &j);
}

/* ---- backward data at stride 2: one task per dx plane ------------------------------------- */

bool bp_depthwise_strided_input_gradient(const bp_geom *g) {
    return bp_depthwise(g) && g->out_cg == 1 && bp_dw3x3_s2_input_gradient_fits(g);
}

typedef struct {
    const bp_geom *g;
    const float *w, *dy;
    size_t dy_bs;
    float *dx;
    size_t dx_bs;
    const bp_epilogue *e;
    size_t tasks; /* images x channels */
} strided_job;

static void strided_tasks(void *arg, int worker, int workers) {
    const strided_job *j = arg;
    const bp_geom *g = j->g;
    size_t t0, t1, in_plane = g->in_h * g->in_w;
    bp_split(j->tasks, worker, workers, &t0, &t1);
    if (t0 >= t1) return;
    plane_at at = {t0 / g->out_c, t0 % g->out_c};
    for (size_t t = t0; t < t1; t++, next_plane(g, &at)) {
        float *dx = j->dx + at.b * j->dx_bs + at.o * in_plane;
        bp_dw_epilogue e;
        bool fused = fused_epilogue(j->e, at.o, &e);
        bp_dw3x3_s2_input_gradient(g, j->dy + at.b * j->dy_bs + at.o * g->out_h * g->out_w, j->w + at.o * 9, &e, dx);
        if (!fused) bp_activation_apply(j->e->act, dx, in_plane);
    }
}

void bp_depthwise_backward_data_strided(const bp_geom *g, const float *w, size_t batch, const float *dy,
                                        size_t dy_bs, float *dx, size_t dx_bs, const bp_epilogue *e, int threads) {
    strided_job j = {g, w, dy, dy_bs, dx, dx_bs, e, batch * g->out_c};
    bp_parallel_run(bp_workers_for(threads, 2 * batch * g->out_c * g->out_h * g->out_w * g->k), strided_tasks, &j);
}

/* ---- weight gradient: one task per channel, over the whole batch ----------------------------- */

typedef struct {
    const bp_geom *g;
    bp_weight_gradient_operands op;
    const bp_scratch *s;
} weights_job;

static void weights_tasks(void *arg, int worker, int workers) {
    const weights_job *j = arg;
    const bp_weight_gradient_operands *op = &j->op;
    const bp_geom *g = j->g;
    size_t ohw = g->out_h * g->out_w, taps = g->kh * g->kw, o0, o1;
    bp_split(g->out_c, worker, workers, &o0, &o1);
    if (o0 >= o1) return;
    dw_worker k;
    worker_start(&k, g, op->x_img, j->s->base + (size_t)worker * j->s->stride, 0);
    for (size_t o = o0; o < o1; o++) {
        const float *x = op->x + (o / g->out_cg) * op->x_img->sc, *dy = op->dy + o * ohw;
        float *dst = op->dw + o * taps, sums[BP_DW_MAX_TAPS] = {0};
        if (k.kernel == DW_GENERAL) { /* any number of taps: the sums go straight to dW */
            bp_dw_general_weights(g, op->x_img, x, op->x_bs, dy, op->dy_bs, op->batch, op->beta, dst);
            continue;
        }
        if (k.kernel == DW_3X3_PAIRS || k.kernel == DW_3X3_STRIPS)
            bp_dw3x3_strips_weights(g, op->x_img, x, op->x_bs, dy, op->dy_bs, op->batch, sums);
        else
            for (size_t b = 0; b < op->batch; b++) {
                bp_dw_fill_plane(g, op->x_img, x + b * op->x_bs, k.plane);
                bp_dw_padded_weights(g, k.plane, k.off, dy + b * op->dy_bs, sums);
            }
        for (size_t t = 0; t < taps; t++) dst[t] = op->beta == 0.0f ? sums[t] : op->beta * dst[t] + sums[t];
    }
}

void bp_depthwise_weight_gradient(const bp_geom *g, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                                  const float *dy, size_t dy_bs, float *dw, float beta, const bp_scratch *s,
                                  int threads) {
    weights_job j = {g, {batch, x_img, x, x_bs, dy, dy_bs, dw, beta}, s};
    int workers = bp_workers_for(threads, 2 * batch * g->out_c * g->out_h * g->out_w * g->k);
    if ((size_t)workers > g->out_c) workers = (int)g->out_c;
    bp_parallel_run(workers, weights_tasks, &j);
}

/* The kernel tester's entry: every output plane of one image (y packed) through the engine's
   tasks on the calling thread, with the biases and the activation (NULL: none); scratch:
   bp_geom_plan's. */
void bp_depthwise_image(const bp_geom *g, const bp_image *img, const float *x, const float *w, const float *bias,
                        const BNNSActivation *act, float *y, float *scratch) {
    bp_epilogue e = {bias, 1, act};
    bp_scratch s = {scratch, 0};
    planes_job j = {g, img, x, 0, w, false, y, 0, &e, &s, g->out_c};
    planes_tasks(&j, 0, 1);
}
