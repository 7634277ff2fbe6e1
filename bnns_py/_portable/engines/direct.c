/* The direct convolution engine (see direct.h).

   Both passes it runs are correlations of a source image (S's input forward, S's output gradient
   backward) with a set of taps:

       out(m, oy, ox) = sum over c, t of  w(m, c, t) * src(c, oy*ss + ay[t], ox*ss + ax[t])

   summed over the source channels c of a group, zero outside the source. Forward there is one
   output grid and ss is S's stride. Backward-data splits dx into stride_y x stride_x phases (dx
   rows a, a + sy, ...); each phase is such a correlation of dy with ss = 1, using the kernel taps
   that land on it, and its outputs go to every sy-th row and sx-th column of dx.

   The source is copied into phase planes: for each channel and each of the ss x ss source phases,
   a zero-bordered plane of wq columns in which the reads of tap t for output pixel (oy, ox) are at
   flat position (oy*wq + ox) + off(t). With ss = 1 a left border is not stored: a read left of
   column 0 lands on the zero tail of the row above (wq is chosen so that it is zero). Then:

   - the "rows" kernel computes MR output channels x NV vectors of consecutive flat positions,
     loading source vectors straight from the planes (lanes = pixels); the wq - ow positions past
     each row are computed and dropped;
   - the "pixels" kernel computes NC consecutive pixels x MV vectors of output channels (lanes =
     channels), broadcasting each source value straight from the planes, for layers whose rows
     are too short for the rows kernel to waste little. Its tiles split each output row, or
     (flat plans, when that wastes less) run over the flat positions as the rows kernel's do.

   Weights are packed per block of output channels so that each step of the reduction reads them
   contiguously. Every task (image, or group of images, x group x band of output rows x block of
   output channels) fills its own planes, so the workers never wait on each other. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "direct_plan.h"
#include "parallel.h"

/* Tile menus: NV per MR (rows kernel), NC per MV (pixels kernel; several, so that rows of any width
   split with little waste). */
#if BP_VREGS >= 32
static int rows_nv(size_t mr) { return mr == 8 ? 3 : mr == 4 ? 6 : mr == 2 ? 8 : 12; }
static const size_t pixel_columns[3][5] = {{24, 16, 12, 8, 0}, {14, 12, 10, 8, 7}, {7, 6, 5, 4, 0}};
#else
static int rows_nv(size_t mr) { return mr == 4 ? 3 : mr == 2 ? 4 : 8; }
static const size_t pixel_columns[2][5] = {{12, 8, 7, 6, 0}, {6, 5, 4, 0, 0}};
#endif
static const size_t *pixel_menu(size_t mv) { return pixel_columns[mv == 1 ? 0 : mv == 2 ? 1 : 2]; }

static ptrdiff_t floor_mod(ptrdiff_t v, ptrdiff_t s) { return ((v % s) + s) % s; }
static ptrdiff_t floor_div(ptrdiff_t v, ptrdiff_t s) { return (v - floor_mod(v, s)) / s; }

const char *bnns_portable_simd(void) { return BP_SIMD_NAME; }

size_t bp_direct_scratch_floats(const bp_direct *d) { return d->scratch; }
size_t bp_direct_view_scratch_floats(const bp_direct *d) { return d->group_scratch; }
size_t bp_direct_weight_floats(const bp_direct *d) { return d->packed_group * d->groups; }
bool bp_direct_runs_weight_gradient(const bp_direct *d) { return !d->pointwise || d->sphases > 1; }
bool bp_direct_pointwise(const bp_direct *d) { return d->pointwise; }
const char *bp_direct_kind(const bp_direct *d, size_t batch) {
    if (d->pointwise) return "direct pointwise";
    if (d->panel && batch <= d->panel_batch) return "direct panel";
    if (d->kind == KIND_ROWS) return d->vectors ? "direct row vectors" : "direct rows";
    return d->flat ? "direct flat pixels" : "direct pixels";
}

/* ---- planning -------------------------------------------------------------------------------- */

/* Forward plans: the rows kernel's speed against the pixels kernel's, before what each wastes and
   what its tiles cost besides their multiply-adds (VECTORS_TILE_STEPS, ROWS_TILE_STEPS): the same
   on AVX-512 and AVX2, lower on 4 lanes without FMA; less with one or two channels per tile. */
static double forward_rows_kernel(size_t mr) { return (BP_VL >= 8 ? 1.0 : 0.78) * (mr >= 4 ? 1.0 : 0.88); }

/* Row-vector tiles of strided layers (source phases) against the rest of the model: with 32
   registers as fast (AVX-512, 1 thread: the stem 1.07-1.10x and MobileNetV2's first layer
   1.07-1.14x the pixels kernel); with 16, AVX2 against the model's forecast (vectors / the best
   other kernel), 1 thread: the stem (7x7/2, 147 steps) 1.00-1.03x of 1.05 forecast, MobileNetV2's
   first layer (3x3/2, 27 steps) 0.94x (batch 1) / 0.99-1.02x (batch 8) of 1.04, 64 -> 64 3x3/2 at
   16x16 (576 steps) 0.86x / 0.95x of 1.03; stride-1 layers 0.95-1.11x of their forecast. */
#define VECTORS_PHASES (BP_VREGS >= 32 ? 1.0 : 0.957)

/* Fraction of the computed values that are kept, for each kernel, over whole images. */
static double rows_efficiency(const bp_direct *d, size_t mr) {
    size_t np = (size_t)rows_nv(mr) * BP_VL, computed = 0, useful = 0;
    for (size_t p = 0; p < d->nphases; p++) {
        const phase_t *ph = &d->ph[p];
        for (size_t r0 = 0; r0 < ph->oh; r0 += d->band_rows)
            computed += bp_round_up(bp_min(d->band_rows, ph->oh - r0) * d->wq, np);
        useful += ph->oh * ph->ow;
    }
    double e = computed ? (double)useful / (double)computed : 0.0;
    e *= (double)d->m / (double)bp_round_up(d->m, mr);
    /* forward: each tile's results copied into the output a run at a time cost about
       ROWS_TILE_STEPS steps of its reduction (AVX-512, 1 thread: ResNet-50's stem 0.88x the
       pixels kernel, MobileNetV2's first layer 0.77x the row-vector tiles, 64 -> 8 and 64 -> 3
       3x3 layers at 56x56 1.03-1.06x the row-vector tiles, which waste 8 columns of 64) */
    if (!d->backward) return forward_rows_kernel(mr) * e * (double)d->kmax / (double)(d->kmax + ROWS_TILE_STEPS);
    /* backward, the kernel itself (measured on AVX-512, 2 threads): 80-90% of the FMA peak with 8
       channels (a transposed 4x4/2 layer: 0.67 against the pixels kernel's 0.81), less with one
       or two channels per tile (more loads per multiply-add) */
    return (mr >= 4 ? 0.85 : 0.75) * e;
}

/* Vectors plans (forward): the rows kernel's tiles over whole vectors of the output rows, taken
   across the rows of a band, each tile's setup and stores costing about VECTORS_TILE_STEPS steps
   of its reduction. Against the kernel the model chose before them (1 thread): ResNet-50's stem
   (147 steps, pixels) 1.07-1.10x on AVX-512 and AVX2, 0.82x on 4 lanes (not taken there);
   3 -> 16/32/64 3x3 layers (27 steps) 1.07-1.62x on AVX-512. With 16 registers (4 x 3 tiles) the
   tiles of strided layers, whose steps read from the source's phase planes, run at VECTORS_PHASES
   of the rate (below). */
static double vectors_efficiency(const bp_direct *d, size_t mr) {
    size_t nv = (size_t)rows_nv(mr), computed = 0, useful = 0;
    for (size_t p = 0; p < d->nphases; p++) {
        const phase_t *ph = &d->ph[p];
        for (size_t r0 = 0; r0 < ph->oh; r0 += d->band_rows)
            computed += bp_round_up(bp_min(d->band_rows, ph->oh - r0) * bp_ceil_div(ph->ow, BP_VL), nv) * BP_VL;
        useful += ph->oh * ph->ow;
    }
    double e = computed ? (double)useful / (double)computed : 0.0;
    e *= (double)d->m / (double)bp_round_up(d->m, mr);
    double phases = d->sphases > 1 ? VECTORS_PHASES : 1.0;
    return forward_rows_kernel(mr) * phases * e * (double)d->kmax / (double)(d->kmax + VECTORS_TILE_STEPS);
}

/* The pixels kernel's tiles of one vector of channels (at most 4 on 4 lanes) broadcast a source
   value for each vector multiply-add; SSE has no broadcast from memory (a load and a shuffle
   each): forward, 1 thread, a 64 -> 3 3x3 layer at 56x56 ran 1.10-1.17x faster in row vectors
   (and 1.04-1.20x in flat rows) than in flat pixels, which the model rated 1.22x faster. The
   backward pass is not measured: rated as before. */
#if BP_VL == 4 && !defined(__aarch64__)
#define PIXELS_ONE_VECTOR 0.8
#else
#define PIXELS_ONE_VECTOR 1.0
#endif

/* Pixels kernel: the kept fraction with nc pixels per tile, the tiles splitting each row of ow
   pixels or (flat) running over the band's flat positions, wq per row. */
static double pixels_efficiency(const bp_direct *d, size_t mv, size_t nc, bool flat) {
    size_t computed = 0, useful = 0;
    for (size_t p = 0; p < d->nphases; p++) {
        const phase_t *ph = &d->ph[p];
        if (flat)
            for (size_t r0 = 0; r0 < ph->oh; r0 += d->band_rows)
                computed += bp_round_up(bp_min(d->band_rows, ph->oh - r0) * d->wq, nc);
        else
            computed += ph->oh * bp_round_up(ph->ow, nc);
        useful += ph->oh * ph->ow;
    }
    double e = computed ? (double)useful / (double)computed : 0.0;
    e *= (double)d->m / (double)bp_round_up(d->m, mv * BP_VL);
    /* the kernel itself: 93-96% of the FMA peak with its largest tiles, less with fewer
       accumulators; with 32 registers, tiles of every vector and at least 4 pixels run as fast
       (AVX-512: a transposed 4x4/2 layer's 16-pixel phase rows took 6-8 % less time in tiles of 4
       than flat in tiles of 7, which compute 17 positions a row) */
    size_t full = PIX_MV_MAX * (BP_VREGS >= 32 && mv == PIX_MV_MAX ? 4 : pixel_menu(PIX_MV_MAX)[0]);
    /* backward with 32 registers, tiles of one vector of channels run as fast from a vector of
       pixels on (AVX-512, 1 thread, input gradients onto 16 channels, against flat tiles of 24:
       rows of 32 and 16 split in tiles of 16 1.2-1.4x, 5x5 1.3x, stride-2 phase rows 1.1x) */
    if (d->backward && BP_VREGS >= 32 && mv == 1) full = BP_VL;
    double acc = (double)(mv * nc) / (double)full;
    /* forward, each output's 8 x 8 transposes and stores into the output cost about as much as
       PIXELS_STORE_STEPS steps of its reduction (ResNet-50's stem, 147 steps: 10 % of the time) */
    double store = d->backward ? 1.0 : (double)d->kmax / (double)(d->kmax + PIXELS_STORE_STEPS);
    double broadcasts = mv == 1 && !d->backward ? PIXELS_ONE_VECTOR : 1.0;
    return 0.97 * sqrt(acc < 1.0 ? acc : 1.0) * store * broadcasts * e;
}

/* Whether a pixels plan emits each output row as soon as its tiles are computed: forward plans
   whose steps fit one chunk, so a tile's results are final after one pass over the steps. Its
   results then wait in tb a row at a time (read back from L1), not a band's. */
static bool emits_row_by_row(const bp_direct *d) { return !d->backward && !d->flat && d->kmax <= d->chunk; }

/* Backward plans on AVX-512 that the model gives tiles of 4 pixels x 4 vectors, over rows that
   split in 8s, take tiles of 8 pixels x 2 vectors instead (as many accumulators, half the weights
   loaded per multiply-add), their weights in chunks of NARROW_TILE_CHUNK steps (16 KiB, which stay
   in L1 while every tile of the band runs over them, instead of 128 KiB read from L2 by each tile).
   A transposed 4x4/2 layer (256 -> 128, 16-pixel phase rows), AVX-512, old and new plans
   alternating in one process: batch 8 1.05 - 1.07x (1 thread) and 1.05 - 1.14x (2 threads), batch
   1 1.01 - 1.05x; the tiles alone 1.05x at batch 8, chunks of 64 or 256 steps 0.93x / 0.97x those
   of 128. */
static bool takes_narrow_tiles(const bp_direct *d, size_t mv, size_t nc, bool flat) {
    if (!d->backward || d->pointwise || BP_VREGS < 32 || BP_VL < 16 || mv != PIX_MV_MAX || nc != 4 || flat)
        return false;
    for (size_t p = 0; p < d->nphases; p++)
        if (d->ph[p].ow % 8 != 0) return false;
    return true;
}

/* Output rows per band: phase planes of about PLANE_TARGET floats with the plan's slack (at least
   MIN_BAND_ROWS rows), in bands of equal height. */
static size_t band_rows(const bp_direct *d) {
    size_t per_row = d->c * d->sphases * d->wq;
    size_t fixed = d->c * d->sphases * (d->prefix + d->slack + d->qy_max * d->wq);
    size_t rows = PLANE_TARGET > fixed ? (PLANE_TARGET - fixed) / per_row : 0;
    rows = bp_min(rows < MIN_BAND_ROWS ? MIN_BAND_ROWS : rows, d->oh_max);
    return bp_ceil_div(d->oh_max, bp_ceil_div(d->oh_max, rows));
}

enum {
    POINTWISE_DX_STEPS_MAX = 256, /* see pointwise_backward_pays */
    POINTWISE_DX_PIXELS_MIN = 768
};

/* Whether a 1x1, stride-1, unpadded layer's backward-data pass (its input gradient, or a
   transposed layer's forward pass) is quicker on the pointwise kernel, reading W transposed,
   than on the im2col engine (a GEMM into columns, then added into the zeroed planes): with
   AVX-512's 32 registers, reductions of up to 256 steps (S's output channels) over images of
   768 pixels or more. Measured on the Emerald Rapids Xeon, 1 thread, against the im2col engine:
   256 -> 64 at 56x56 1.2 - 1.35x, 64 -> 64 at 56x56 1.4x, 64 -> 256 at 56x56 1.1x, 512 -> 128
   at 28x28 1.2x, 256 -> 128 at 56x56 1.0 - 1.07x; 128 -> 512 at 28x28 0.96x, 1024 -> 256 at 14x14
   0.9x, 512 -> 2048 at 7x7 0.6x (the weights streamed per image, the tails in whole vectors); on
   AVX2 (4 x 3 tiles) 256 -> 64 at 56x56 0.73x. */
static bool pointwise_backward_pays(const bp_geom *g) {
    return BP_VREGS >= 32 && BP_VL >= 16 && g->out_cg <= POINTWISE_DX_STEPS_MAX &&
           g->out_h * g->out_w >= POINTWISE_DX_PIXELS_MIN;
}

static bool dims_ok(const bp_geom *g) {
    size_t v[] = {g->in_c, g->in_h, g->in_w, g->out_c, g->out_h, g->out_w, g->kh, g->kw,
                  g->sx, g->sy, g->dx, g->dy, g->pl, g->pt};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (v[i] > MAX_DIM) return false;
    return g->kh * g->kw <= MAX_TAPS && g->in_cg * g->kh * g->kw <= (1u << 24) && g->out_cg <= (1u << 24);
}

/* The taps of each phase as source offsets (ay, ax), phase by phase; false if the pass has too
   many phases. */
static bool list_taps(bp_direct *d, const bp_geom *g, ptrdiff_t *ay, ptrdiff_t *ax, int32_t *tap) {
    size_t n = 0;
    if (!d->backward) {
        d->nphases = 1;
        d->ph[0] = (phase_t){.taps = g->kh * g->kw, .oh = g->out_h, .ow = g->out_w};
        for (size_t ky = 0; ky < g->kh; ky++)
            for (size_t kx = 0; kx < g->kw; kx++, n++) {
                ay[n] = (ptrdiff_t)(ky * g->dy) - (ptrdiff_t)g->pt;
                ax[n] = (ptrdiff_t)(kx * g->dx) - (ptrdiff_t)g->pl;
                tap[n] = (int32_t)(ky * g->kw + kx);
            }
        return true;
    }
    if (g->sy * g->sx > MAX_PHASES) return false;
    d->nphases = g->sy * g->sx;
    ptrdiff_t sy = (ptrdiff_t)g->sy, sx = (ptrdiff_t)g->sx;
    for (size_t a = 0; a < g->sy; a++)
        for (size_t b = 0; b < g->sx; b++) {
            /* dx row sy*u + a gets dy row u + (a + pt - ky*dy) / sy from every ky making that exact */
            phase_t *ph = &d->ph[a * g->sx + b];
            *ph = (phase_t){.oh = a < g->in_h ? bp_ceil_div(g->in_h - a, g->sy) : 0,
                            .ow = b < g->in_w ? bp_ceil_div(g->in_w - b, g->sx) : 0, .y0 = a, .x0 = b};
            for (size_t ky = 0; ky < g->kh; ky++) {
                ptrdiff_t ry = (ptrdiff_t)(a + g->pt) - (ptrdiff_t)(ky * g->dy);
                if (floor_mod(ry, sy) != 0) continue;
                for (size_t kx = 0; kx < g->kw; kx++) {
                    ptrdiff_t rx = (ptrdiff_t)(b + g->pl) - (ptrdiff_t)(kx * g->dx);
                    if (floor_mod(rx, sx) != 0) continue;
                    ay[n] = ry / sy;
                    ax[n] = rx / sx;
                    tap[n] = (int32_t)(ky * g->kw + kx);
                    n++;
                    ph->taps++;
                }
            }
        }
    return true;
}

bp_direct *bp_direct_plan(const bp_geom *g, bool backward, const bp_allocator *a) {
    if (g->groups > 1 && g->in_cg == 1) return NULL; /* depthwise: its own kernels */
    if (!dims_ok(g)) return NULL;
    size_t s_taps = g->kh * g->kw;
    /* per tap: source offsets, plane offsets, source phase, S's tap */
    ptrdiff_t *ay = bp_alloc(a, 6 * s_taps * sizeof(ptrdiff_t));
    if (ay == NULL) return NULL;
    ptrdiff_t *ax = ay + s_taps, *qy = ax + s_taps, *qx = qy + s_taps, *sp = qx + s_taps;
    int32_t *tap = (int32_t *)(sp + s_taps);
    bp_direct *out = NULL;
    bp_direct d = {.backward = backward, .groups = g->groups, .s_k = g->k, .s_taps = s_taps};
    if (!list_taps(&d, g, ay, ax, tap)) goto done;
    if (!backward) {
        d.c = g->in_cg;
        d.m = g->out_cg;
        d.ss_y = g->sy;
        d.ss_x = g->sx;
        d.src_h = g->in_h;
        d.src_w = g->in_w;
        d.ystep = d.xstep = 1;
    } else {
        d.c = g->out_cg;
        d.m = g->in_cg;
        d.ss_y = d.ss_x = 1;
        d.src_h = g->out_h;
        d.src_w = g->out_w;
        d.ystep = g->sy;
        d.xstep = g->sx;
    }
    d.sphases = d.ss_y * d.ss_x;
    if (d.sphases > MAX_PHASES || d.c == 0 || d.m == 0) goto done;

    /* where each tap reads: source phase and (qy, qx) plane offsets */
    ptrdiff_t ay_min = 0, ax_min = 0;
    size_t total = 0;
    for (size_t p = 0; p < d.nphases; p++) total += d.ph[p].taps;
    for (size_t i = 0; i < total; i++) {
        if (i == 0 || ay[i] < ay_min) ay_min = ay[i];
        if (i == 0 || ax[i] < ax_min) ax_min = ax[i];
    }
    bool wrap = d.ss_x == 1 && ax_min < 0;
    d.ay_min = ay_min;
    d.c0 = wrap ? 0 : ax_min;
    ptrdiff_t qy_max = 0, qx_min = 0, qx_max = 0;
    for (size_t i = 0; i < total; i++) {
        ptrdiff_t ry = ay[i] - ay_min, rx = ax[i] - d.c0;
        qy[i] = floor_div(ry, (ptrdiff_t)d.ss_y);
        qx[i] = floor_div(rx, (ptrdiff_t)d.ss_x);
        sp[i] = floor_mod(ry, (ptrdiff_t)d.ss_y) * (ptrdiff_t)d.ss_x + floor_mod(rx, (ptrdiff_t)d.ss_x);
        if (i == 0 || qy[i] > qy_max) qy_max = qy[i];
        if (i == 0 || qx[i] < qx_min) qx_min = qx[i];
        if (i == 0 || qx[i] > qx_max) qx_max = qx[i];
    }
    size_t ow_max = 0;
    d.oh_max = 0;
    for (size_t p = 0; p < d.nphases; p++) {
        if (d.ph[p].ow > ow_max) ow_max = d.ph[p].ow;
        if (d.ph[p].oh > d.oh_max) d.oh_max = d.ph[p].oh;
    }
    if (d.oh_max == 0 || ow_max == 0) goto done;
    d.qy_max = (size_t)qy_max;
    d.wq = ow_max + (size_t)(qx_max > 0 ? qx_max : 0);
    if (qx_min < 0 && d.wq < d.src_w + (size_t)-qx_min) d.wq = d.src_w + (size_t)-qx_min;
    d.prefix = bp_round_up((size_t)(qx_min < 0 ? -qx_min : 0), 16);

    /* reduction steps */
    size_t steps = 0;
    for (size_t p = 0; p < d.nphases; p++) {
        d.ph[p].k = d.c * d.ph[p].taps;
        steps += d.ph[p].k;
        if (d.ph[p].k > d.kmax) d.kmax = d.ph[p].k;
    }

    /* bands of output rows whose planes fit the per-worker target; a rows tile reads up to a
       tile and a row past the band's last row (the slack), a pixels tile less */
    d.slack = bp_round_up((size_t)rows_nv(1) * BP_VL + d.wq + 2 * BP_VL, 16);
    d.band_rows = band_rows(&d);

    /* kernel: the one that keeps more of what it computes */
    size_t mr = ROWS_MR_MAX;
    while (mr > 1 && d.m * 4 < mr * 3) mr /= 2; /* e.g. 3 channels: MR 4 */
    size_t mv = bp_min(PIX_MV_MAX, bp_ceil_div(d.m, BP_VL)), nc = 0;
    if (mv == 3) mv = 4;
    int force = bp_engine_override();
    /* 1x1, stride 1, no padding: the image already is the GEMM's matrix, which the pointwise
       kernel reads in place unless another kernel is asked for (the backward-data pass, with W
       read transposed, where that pays); images of less than a vector (e.g. fully-connected
       layers) are better off in the im2col engine's GEMM */
    bool kernel_forced = force == BP_ENGINE_ROWS || force == BP_ENGINE_PIXELS || force == BP_ENGINE_FLAT_PIXELS;
    bool plain_1x1 = s_taps == 1 && g->sx == 1 && g->sy == 1 && g->pl == 0 && g->pt == 0 &&
                     g->in_h == g->out_h && g->in_w == g->out_w && !kernel_forced;
    /* strided 1x1 layers whose every output reads a source pixel: the kernel on gathered pixels */
    bool strided_1x1 = !backward && s_taps == 1 && (g->sx > 1 || g->sy > 1) && g->pl == 0 && g->pt == 0 &&
                       (g->out_h - 1) * g->sy < g->in_h && (g->out_w - 1) * g->sx < g->in_w && !kernel_forced;
    d.pointwise = (plain_1x1 || strided_1x1) && force != BP_ENGINE_IM2COL && g->out_h * g->out_w >= BP_VL &&
                  (!backward || force == BP_ENGINE_POINTWISE || pointwise_backward_pays(g));
    if (plain_1x1 && !d.pointwise) goto done;
    double rows_e = rows_efficiency(&d, mr), pixels_e = 0.0, vectors_e = backward ? 0.0 : vectors_efficiency(&d, mr);
    bool flat = false, vectors = vectors_e >= rows_e;
    rows_e = vectors ? vectors_e : rows_e;
    for (int f = force == BP_ENGINE_FLAT_PIXELS; f < (force == BP_ENGINE_PIXELS ? 1 : 2); f++)
        for (const size_t *menu = pixel_menu(mv); *menu && menu < pixel_menu(mv) + 5; menu++) {
            double e = pixels_efficiency(&d, mv, *menu, f == 1);
            if (e > pixels_e + 1e-9) {
                pixels_e = e;
                nc = *menu;
                flat = f == 1;
            }
        }
    /* small images, long reductions: the panel path for calls whose weights are a dense view */
    d.panel = !backward && !d.pointwise && (force == BP_ENGINE_AUTO || force == BP_ENGINE_PANEL) &&
              bp_direct_panel_takes(g, force == BP_ENGINE_PANEL);
    if (force == BP_ENGINE_IM2COL) goto done;
    if (force == BP_ENGINE_ROWS) rows_e = 2.0;
    else if (force == BP_ENGINE_PIXELS || force == BP_ENGINE_FLAT_PIXELS) pixels_e = 2.0;
    else if (rows_e < 0.5 && pixels_e < 0.5 && !d.pointwise && !d.panel)
        goto done; /* e.g. 1x1 images: a GEMM over the batch is better */
    size_t tb;
    d.chunk = K_CHUNK;
    if (pixels_e > rows_e) {
        if (takes_narrow_tiles(&d, mv, nc, flat)) {
            mv = 2;
            nc = 8;
            d.chunk = NARROW_TILE_CHUNK;
        }
        d.kind = KIND_PIXELS;
        d.bw = mv * BP_VL;
        d.tile = nc;
        d.flat = flat;
        /* its tiles read less than a tile and a row past the band's last row (wq >= ow + qx_max) */
        d.slack = bp_round_up(nc + d.wq, 16);
        d.band_rows = band_rows(&d); /* e.g. ResNet's 256 -> 512 3x3 stride 2: one band of 7 rows, not 2 */
        /* the band's tile results stay in cache between chunks of steps; emitted row by row, they
           hold a row and the band is as tall as its planes allow (fewer plane rows filled twice) */
        d.tb_row = flat ? d.wq : bp_round_up(ow_max, nc);
        bool by_row = emits_row_by_row(&d);
        if (!by_row) {
            size_t most = (TILE_RESULTS / d.bw - nc) / d.tb_row;
            d.band_rows = bp_min(d.band_rows, most < 1 ? 1 : most);
        }
        d.band_rows = bp_ceil_div(d.oh_max, bp_ceil_div(d.oh_max, d.band_rows));
        tb = ((by_row ? 1 : d.band_rows) * d.tb_row + bp_max(nc, 8)) * d.bw; /* slack: a tile, and 8 pixels for pixels_emit */
    } else {
        d.kind = KIND_ROWS;
        d.vectors = vectors;
        d.bw = mr;
        d.tile = (size_t)rows_nv(mr) * BP_VL;
        tb = d.bw * d.tile;
    }
    d.plane = bp_round_up(d.prefix + (d.band_rows + d.qy_max) * d.wq + d.slack, 16);
    d.planes = d.c * d.sphases * d.plane;
    if (d.planes > PLANE_LIMIT) goto done;

    /* packed weights: per group, phase by phase, blocks of bw output channels */
    size_t mblocks = bp_ceil_div(d.m, d.bw);
    for (size_t p = 0; p < d.nphases; p++) {
        d.ph[p].wofs = d.packed_group;
        d.packed_group += mblocks * d.bw * d.ph[p].k;
    }

    /* scratch: planes, tile results, (pixels) a chunk of packed weights, one run of outputs */
    d.tb_offset = bp_round_up(d.planes, 16);
    d.chunk_offset = d.tb_offset + bp_round_up(tb, 16);
    d.run_offset = d.chunk_offset + (d.kind == KIND_PIXELS ? bp_round_up(d.chunk * d.bw, 16) : 0);
    size_t run = d.kind == KIND_PIXELS ? d.bw * bp_round_up(ow_max, 8) : ow_max + d.tile;
    d.scratch = d.run_offset + bp_round_up(run + BP_VL, 16);
    if (backward && d.kind == KIND_PIXELS && d.xstep == 2) {
        d.pair_offset = d.scratch;
        d.scratch += bp_round_up(tb, 16);
    }
    /* Weights the run packs itself (client pointers), several images: when the weights outweigh
       the planes of a group of images, a task takes the group, so that each chunk is packed once
       into cache for all of them rather than up front, to be read back from memory per image.
       The group's planes and results follow the scratch (group_scratch: what such filters
       reserve). */
    d.image_group = 1;
    d.group_stride = bp_round_up(d.planes, 16) + bp_round_up(tb, 16);
    if (d.kind == KIND_PIXELS && !backward)
        d.image_group = bp_max(bp_min(IMAGE_GROUP_TARGET / d.group_stride, IMAGE_GROUP_MAX), 1);
    d.group_offset = d.scratch;
    d.group_scratch = d.scratch + (d.image_group - 1) * d.group_stride;
    if (d.pointwise) { /* pixels gathered when they are not consecutive, then the tail vectors */
        d.scratch = bp_max(d.scratch, bp_direct_pointwise_scratch_floats(d.c, ow_max));
        d.group_scratch = bp_max(d.group_scratch, d.scratch);
    }
    if (d.panel) {
        d.geom = *g;
        /* more images: for stride 1 the pixels kernel packs each chunk of weights once for a group of
           them and keeps them; strided layers' pixels tiles (a row of 7 outputs of ResNet's 256 -> 512
           3x3/2 layer) run slower than the panel's, which keeps them at any batch */
        d.panel_batch = force == BP_ENGINE_PANEL || g->sx > 1 || g->sy > 1 ? SIZE_MAX : 1;
        d.scratch = bp_max(d.scratch, bp_direct_panel_scratch_floats(g));
        d.group_scratch = bp_max(d.group_scratch, d.scratch);
    }

    out = bp_alloc(a, sizeof *out + (steps + 3 * total) * sizeof(int32_t));
    if (out == NULL) goto done;
    *out = d;
    int32_t *tables = (int32_t *)(out + 1);
    out->tap_phase = tables;
    out->tap_index = tables + total;
    tables += 2 * total;
    size_t first = 0;
    for (size_t p = 0; p < d.nphases; p++) {
        phase_t *ph = &out->ph[p];
        ph->off = tables;
        ph->tap = tables + ph->k;
        tables += ph->k + ph->taps;
        for (size_t t = 0; t < ph->taps; t++) {
            ph->tap[t] = tap[first + t];
            out->tap_phase[tap[first + t]] = (int32_t)p;
            out->tap_index[tap[first + t]] = (int32_t)t;
        }
        for (size_t c = 0; c < d.c; c++)
            for (size_t t = 0; t < ph->taps; t++) {
                size_t i = first + t;
                ptrdiff_t o = (ptrdiff_t)((c * d.sphases + (size_t)sp[i]) * d.plane) + qy[i] * (ptrdiff_t)d.wq + qx[i];
                ph->off[c * ph->taps + t] = (int32_t)o;
            }
        first += ph->taps;
    }
done:
    bp_free(a, ay);
    return out;
}

void bp_direct_destroy(bp_direct *d, const bp_allocator *a) { bp_free(a, d); }

/* ---- weights --------------------------------------------------------------------------------- */

/* Forward plans: packed steps [k0, k0 + n) of channel block mb of phase p, group grp:
   dst[k][r] = w(mb*bw + r, k0 + k), zero for rows past the last channel. */
static void pack_block(const bp_direct *d, const bp_weights_view *v, size_t grp, size_t p, size_t mb, size_t k0,
                       size_t n, float *dst) {
    const phase_t *ph = &d->ph[p];
    size_t bw = d->bw, rows = bp_min(bw, d->m - mb * bw), taps = d->s_taps;
    if (rows < bw) memset(dst, 0, n * bw * sizeof(float));
    /* w(m, c, t) = S's W(m, c, t), step k = c*taps + t: the block's rows transposed along each run
       of steps that is contiguous (a row of the canonical matrix, or one channel's taps) */
    const float *block = v->base + grp * v->group + mb * bw * v->out;
    size_t run = v->in == taps ? ph->k : taps;
    for (size_t c0 = k0 / run * run; c0 < k0 + n; c0 += run) {
        size_t lo = c0 > k0 ? c0 : k0, hi = bp_min(c0 + run, k0 + n);
        const float *src = block + (c0 / taps) * v->in + (c0 % taps); /* step c0 of row 0 */
        bp_direct_transpose_rows(src + (lo - c0), v->out, rows, hi - lo, dst + (lo - k0) * bw, bw);
    }
}

static float *packed_at(const bp_direct *d, float *packed, size_t grp, size_t p, size_t mb) {
    return packed + grp * d->packed_group + d->ph[p].wofs + mb * d->ph[p].k * d->bw;
}

typedef struct {
    const bp_direct *d;
    const bp_weights_view *w;
    float *packed;
    size_t mblocks;
} pack_job;

/* Backward plans, every phase of channel block mb at once: each kernel (o, m) is read once, its
   taps contiguous, and each tap goes to the phase it lands on. */
static void pack_backward_block(const bp_direct *d, const bp_weights_view *v, size_t grp, size_t mb, float *packed) {
    size_t bw = d->bw, rows = bp_min(bw, d->m - mb * bw);
    const float *block = v->base + grp * v->group + mb * bw * v->in;
    float *phase_block[MAX_PHASES];
    size_t per_o[MAX_PHASES]; /* floats of a phase's block per channel o */
    for (size_t p = 0; p < d->nphases; p++) {
        const phase_t *ph = &d->ph[p];
        phase_block[p] = packed_at(d, packed, grp, p, mb);
        per_o[p] = ph->taps * bw;
        if (rows < bw) memset(phase_block[p], 0, ph->k * bw * sizeof(float));
    }
    /* one channel o at a time, its block of kernels read front to back, 8 channels x 8 taps
       transposed at a time straight into the phases the taps land on; each (o, tap) of each phase
       is a whole row of bw */
    size_t taps = d->s_taps;
    for (size_t o = 0; o < d->c; o++)
        for (size_t t0 = 0; t0 < taps; t0 += 8) {
            size_t nt = bp_min(8, taps - t0), r8 = nt == 8 ? rows / 8 * 8 : 0;
            const float *kernels = block + o * v->out + t0; /* channel r's taps from t0 at kernels + r * v->in */
            float *to[8];                                   /* where tap t0 + i of channel r goes: to[i] + r */
            for (size_t i = 0; i < nt; i++) {
                size_t p = (size_t)d->tap_phase[t0 + i];
                to[i] = phase_block[p] + o * per_o[p] + (size_t)d->tap_index[t0 + i] * bw;
            }
            for (size_t r = 0; r < r8; r += 8) {
                float *at[8];
                for (size_t i = 0; i < 8; i++) at[i] = to[i] + r;
                bp_transpose8x8_to(kernels + r * v->in, v->in, at);
            }
            for (size_t r = r8; r < rows; r++)
                for (size_t i = 0; i < nt; i++) to[i][r] = kernels[r * v->in + i];
        }
}

/* Units: (group, phase, channel block); backward plans: (group, channel block), every phase. */
static void pack_units(void *arg, size_t u0, size_t u1) {
    const pack_job *j = arg;
    const bp_direct *d = j->d;
    size_t phases = d->backward ? 1 : d->nphases;
    for (size_t u = u0; u < u1; u++) {
        size_t mb = u % j->mblocks, gp = u / j->mblocks, p = gp % phases, grp = gp / phases;
        if (d->backward) pack_backward_block(d, j->w, grp, mb, j->packed);
        else pack_block(d, j->w, grp, p, mb, 0, d->ph[p].k, packed_at(d, j->packed, grp, p, mb));
    }
}

void bp_direct_pack(const bp_direct *d, const bp_weights_view *w, float *packed, int threads) {
    pack_job j = {d, w, packed, bp_ceil_div(d->m, d->bw)};
    size_t units = d->groups * (d->backward ? 1 : d->nphases) * j.mblocks;
    bp_parallel_for(threads, units, bp_direct_weight_floats(d), pack_units, &j);
}

/* ---- phase planes ---------------------------------------------------------------------------- */

/* Plane columns [j0, j1) of source phase px that hold source columns inside the image. */
static void phase_columns(const bp_direct *d, size_t px, ptrdiff_t *j0, ptrdiff_t *j1) {
    ptrdiff_t first = (ptrdiff_t)px + d->c0, ss = (ptrdiff_t)d->ss_x;
    *j0 = first >= 0 ? 0 : (-first + ss - 1) / ss;
    *j1 = (ptrdiff_t)d->src_w > first ? ((ptrdiff_t)d->src_w - first + ss - 1) / ss : 0;
    if (*j1 > (ptrdiff_t)d->wq) *j1 = (ptrdiff_t)d->wq;
    if (*j0 > *j1) *j0 = *j1;
}

/* row[j] = 0 for j in [from, wq) as whole vectors, up to a vector past the row: into the next row,
   which is written next, or the plane's slack, which is zero. */
static void zero_tail(const bp_direct *d, float *row, size_t from) {
    for (; from < d->wq; from += BP_VL) bp_vstore(row + from, bp_vzero());
}

/* A plane row of source phase px (plane columns [j0, j1) inside the image) from source row src. */
static void fill_row(const bp_direct *d, const bp_image *img, const float *src, size_t px, ptrdiff_t j0, ptrdiff_t j1,
                     float *row) {
    for (ptrdiff_t j = 0; j < j0; j++) row[j] = 0.0f;
    size_t step = d->ss_x * img->sx, at = (size_t)(j0 * (ptrdiff_t)d->ss_x + (ptrdiff_t)px + d->c0) * img->sx;
    const float *from = src + at;
    size_t n = (size_t)(j1 - j0), zero = (size_t)j1;
    if (step == 1) { /* whole vectors, no library calls (rows are short) */
        size_t i = 0;
        for (; i + BP_VL <= n; i += BP_VL) bp_vstore(row + j0 + i, bp_vload(from + i));
        bp_vstore(row + j0 + i, bp_vload_part(from + i, n - i));
        zero = (size_t)j0 + i + BP_VL;
    } else {
        for (size_t j = 0; j < n; j++) row[j0 + (ptrdiff_t)j] = from[j * step];
    }
    zero_tail(d, row, zero);
}

/* Stride 2 along rows of consecutive values: the rows of both source phases (px 0 and 1, plane
   columns [j0[px], j1[px]) inside the image) in one pass over source row src, its pairs split.
   Source column s is column (s - c0) / 2 of phase (s - c0) % 2. */
static void fill_row_pair(const bp_direct *d, const float *src, const ptrdiff_t j0[2], const ptrdiff_t j1[2],
                          float *even, float *odd) {
    float *row[2] = {even, odd};
    for (size_t px = 0; px < 2; px++)
        for (ptrdiff_t j = 0; j < j0[px]; j++) row[px][j] = 0.0f;
    ptrdiff_t s0 = d->c0 > 0 ? d->c0 : 0, s1 = d->c0 + 2 * (ptrdiff_t)d->wq;
    if (s1 > (ptrdiff_t)d->src_w) s1 = (ptrdiff_t)d->src_w;
    if (s0 < s1) {
        size_t first = (size_t)(s0 - d->c0);
        bp_direct_split_pairs(src + s0, (size_t)(s1 - s0), row[first % 2] + first / 2, row[1 - first % 2] + (first + 1) / 2);
    }
    zero_tail(d, even, (size_t)j1[0]);
    zero_tail(d, odd, (size_t)j1[1]);
}

void bp_direct_fill_planes(const bp_direct *d, const bp_image *img, const float *x, size_t c0, size_t c1, size_t r0,
                           size_t n, float *planes) {
    size_t rows = n + d->qy_max, used = rows * d->wq;
    ptrdiff_t j0[MAX_PHASES], j1[MAX_PHASES];
    for (size_t px = 0; px < d->ss_x; px++) phase_columns(d, px, &j0[px], &j1[px]);
    bool pair = d->ss_x == 2 && img->sx == 1;
    for (size_t c = c0; c < c1; c++)
        for (size_t py = 0; py < d->ss_y; py++) {
            float *origin = planes + ((c - c0) * d->sphases + py * d->ss_x) * d->plane + d->prefix; /* px 0 */
            for (size_t px = 0; px < d->ss_x; px++) {
                memset(origin + px * d->plane - d->prefix, 0, d->prefix * sizeof(float));
                memset(origin + px * d->plane + used, 0, d->slack * sizeof(float));
            }
            for (size_t i = 0; i < rows; i++) {
                float *row = origin + i * d->wq;
                ptrdiff_t sr = (ptrdiff_t)((r0 + i) * d->ss_y + py) + d->ay_min;
                bool inside = sr >= 0 && sr < (ptrdiff_t)d->src_h;
                const float *src = inside ? x + c * img->sc + (size_t)sr * img->sy : NULL;
                if (inside && pair) {
                    fill_row_pair(d, src, j0, j1, row, row + d->plane);
                    continue;
                }
                for (size_t px = 0; px < d->ss_x; px++) {
                    if (!inside || j0[px] == j1[px]) memset(row + px * d->plane, 0, d->wq * sizeof(float));
                    else fill_row(d, img, src, px, j0[px], j1[px], row + px * d->plane);
                }
            }
        }
}

/* ---- kernels --------------------------------------------------------------------------------- */

/* MR output channels x NV vectors of consecutive flat positions from src. */
BP_INLINE void rows_kernel(const float *src, const int32_t *off, size_t k, const float *w, float *tb, const int MR,
                           const int NV) {
    bp_vec acc[ROWS_MR_MAX][12];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = bp_vzero();
    for (size_t i = 0; i < k; i++) {
        const float *s = src + off[i];
        const float *wi = w + i * (size_t)MR;
        if (MR == 1) {
            bp_vec b = bp_vset1(wi[0]);
            for (int v = 0; v < NV; v++) acc[0][v] = bp_vfma(b, bp_vload(s + v * BP_VL), acc[0][v]);
            continue;
        }
        bp_vec x[12];
        for (int v = 0; v < NV; v++) x[v] = bp_vload(s + v * BP_VL);
        for (int r = 0; r < MR; r++) {
            bp_vec b = bp_vset1(wi[r]);
            for (int v = 0; v < NV; v++) acc[r][v] = bp_vfma(b, x[v], acc[r][v]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) bp_vstore(tb + (size_t)r * NV * BP_VL + v * BP_VL, acc[r][v]);
}

static void rows_tile(size_t mr, const float *src, const int32_t *off, size_t k, const float *w, float *tb) {
    switch (mr) {
#if BP_VREGS >= 32
    case 8: rows_kernel(src, off, k, w, tb, 8, 3); break;
    case 4: rows_kernel(src, off, k, w, tb, 4, 6); break;
    case 2: rows_kernel(src, off, k, w, tb, 2, 8); break;
    default: rows_kernel(src, off, k, w, tb, 1, 12); break;
#else
    case 4: rows_kernel(src, off, k, w, tb, 4, 3); break;
    case 2: rows_kernel(src, off, k, w, tb, 2, 4); break;
    default: rows_kernel(src, off, k, w, tb, 1, 8); break;
#endif
    }
}

/* Vectors plans: MR output channels x NV vectors of output pixels, vector v reading src[v] + off[i]
   at step i; the results plus bias[r], clamped to [lo, hi], stored at dst[v] + r*ldd for channels
   r < rows, the first n[v] lanes of vector v (none for n[v] = 0). */
BP_INLINE void vectors_kernel(const float *const src[], const int32_t *off, size_t k, const float *w, const float *bias,
                              float lo, float hi, float *const dst[], const size_t n[], size_t ldd, size_t rows,
                              const int MR, const int NV) {
    bp_vec acc[ROWS_MR_MAX][12];
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = bp_vzero();
    for (size_t i = 0; i < k; i++) {
        bp_vec x[12];
        for (int v = 0; v < NV; v++) x[v] = bp_vload(src[v] + off[i]);
        const float *wi = w + i * (size_t)MR;
        for (int r = 0; r < MR; r++) {
            bp_vec b = bp_vset1(wi[r]);
            for (int v = 0; v < NV; v++) acc[r][v] = bp_vfma(b, x[v], acc[r][v]);
        }
    }
    bp_vec l = bp_vset1(lo), h = bp_vset1(hi);
    for (int r = 0; r < MR && (size_t)r < rows; r++) {
        bp_vec b = bp_vset1(bias[r]);
        for (int v = 0; v < NV; v++) bp_vstore_part(dst[v] + (size_t)r * ldd, bp_vclamp(bp_vadd(acc[r][v], b), l, h), n[v]);
    }
}

static void vectors_tile(size_t mr, const float *const src[], const int32_t *off, size_t k, const float *w,
                         const float *bias, float lo, float hi, float *const dst[], const size_t n[], size_t ldd,
                         size_t rows) {
    switch (mr) {
#if BP_VREGS >= 32
    case 8: vectors_kernel(src, off, k, w, bias, lo, hi, dst, n, ldd, rows, 8, 3); break;
    case 4: vectors_kernel(src, off, k, w, bias, lo, hi, dst, n, ldd, rows, 4, 6); break;
    case 2: vectors_kernel(src, off, k, w, bias, lo, hi, dst, n, ldd, rows, 2, 8); break;
    default: vectors_kernel(src, off, k, w, bias, lo, hi, dst, n, ldd, rows, 1, 12); break;
#else
    case 4: vectors_kernel(src, off, k, w, bias, lo, hi, dst, n, ldd, rows, 4, 3); break;
    case 2: vectors_kernel(src, off, k, w, bias, lo, hi, dst, n, ldd, rows, 2, 4); break;
    default: vectors_kernel(src, off, k, w, bias, lo, hi, dst, n, ldd, rows, 1, 8); break;
#endif
    }
}

/* Rows of weights fetched into the caches, a line every few steps of the pixels kernel, while it
   computes: the view's weights of the chunk a task packs next (packed as they are needed, they
   would otherwise come from memory at the pack's pace, the FMA units idle: 22 % of ResNet-50's
   512-channel 7x7 layer at batch 1). */
typedef struct {
    const float *first;  /* row 0's first value */
    size_t stride, n;    /* floats from one row to the next, values per row */
    size_t rows, r, at;  /* rows, and the next line's row and float within it */
    size_t every, wait;  /* steps from one line to the next, and to the next line */
} weight_prefetch;

BP_INLINE void prefetch_step(weight_prefetch *f) {
    if (--f->wait > 0 || f->r >= f->rows) return;
    f->wait = f->every;
    __builtin_prefetch(f->first + f->r * f->stride + bp_min(f->at, f->n - 1), 0, 2);
    f->at += 16; /* a 64-byte line; a row that starts mid-line ends one line later */
    if (f->at >= f->n + 15) {
        f->at = 0;
        f->r++;
    }
}

/* NC consecutive pixels of one output row (their source values for step i at src + off[i]) x MV
   vectors of output channels (w: MV vectors per step); tb (rows ldt apart) = or, with add, +=
   the products, taking f's steps (f may be NULL). */
BP_INLINE void pixels_kernel(const float *src, const int32_t *off, size_t k, const float *w, float *tb, size_t ldt,
                             bool add, weight_prefetch *f, const int NC, const int MV) {
    bp_vec acc[PIX_NC_MAX][PIX_MV_MAX];
    for (int p = 0; p < NC; p++)
        for (int v = 0; v < MV; v++) acc[p][v] = add ? bp_vload(tb + (size_t)p * ldt + (size_t)v * BP_VL) : bp_vzero();
    for (size_t i = 0; i < k; i++) {
        if (f != NULL) prefetch_step(f);
        bp_vec wv[PIX_MV_MAX];
        for (int v = 0; v < MV; v++) wv[v] = bp_vload(w + (i * (size_t)MV + (size_t)v) * BP_VL);
        const float *x = src + off[i];
        for (int p = 0; p < NC; p++) {
            bp_vec b = bp_vset1(x[p]);
            for (int v = 0; v < MV; v++) acc[p][v] = bp_vfma(b, wv[v], acc[p][v]);
        }
    }
    for (int p = 0; p < NC; p++)
        for (int v = 0; v < MV; v++) bp_vstore(tb + (size_t)p * ldt + (size_t)v * BP_VL, acc[p][v]);
}

#define PIXELS_CASE(MV, NC, F)                                                                          \
    case (MV)*32 + (NC): pixels_kernel(src, off, k, w, tb, ldt, add, F, NC, MV); break;
#if BP_VREGS >= 32
#define PIXELS_CASES(F)                                                                                 \
    PIXELS_CASE(1, 24, F) PIXELS_CASE(1, 16, F) PIXELS_CASE(1, 12, F) PIXELS_CASE(1, 8, F)              \
    PIXELS_CASE(2, 14, F) PIXELS_CASE(2, 12, F) PIXELS_CASE(2, 10, F) PIXELS_CASE(2, 8, F)              \
    PIXELS_CASE(2, 7, F) PIXELS_CASE(4, 7, F) PIXELS_CASE(4, 6, F) PIXELS_CASE(4, 5, F) PIXELS_CASE(4, 4, F)
#else
#define PIXELS_CASES(F)                                                                                 \
    PIXELS_CASE(1, 12, F) PIXELS_CASE(1, 8, F) PIXELS_CASE(1, 7, F) PIXELS_CASE(1, 6, F)                \
    PIXELS_CASE(2, 6, F) PIXELS_CASE(2, 5, F) PIXELS_CASE(2, 4, F)
#endif

void bp_direct_pixels_tile(size_t mv, size_t nc, const float *src, const int32_t *off, size_t k, const float *w,
                           float *tb, size_t ldt, bool add) {
    switch (mv * 32 + nc) {
        PIXELS_CASES(NULL)
    default: break; /* not reached: plans pick from pixel_columns */
    }
}

/* bp_direct_pixels_tile taking f's steps (f not NULL), else it. */
static void pixels_tile_prefetching(size_t mv, size_t nc, const float *src, const int32_t *off, size_t k,
                                    const float *w, float *tb, size_t ldt, bool add, weight_prefetch *f) {
    if (f == NULL) {
        bp_direct_pixels_tile(mv, nc, src, off, k, w, tb, ldt, add);
        return;
    }
    switch (mv * 32 + nc) {
        PIXELS_CASES(f)
    default: break;
    }
}

/* ---- output ---------------------------------------------------------------------------------- */

typedef struct {
    float *base;              /* this image, channel 0 of the group */
    size_t sc, sy, sx;        /* its strides */
    size_t ystep, xstep, y0, x0;
    size_t channel0;          /* layer channel of the group's channel 0 (bias) */
    bool accumulate;
    const bp_epilogue *e;
    bool stream;              /* non-temporal stores (the call's output is far larger than the caches) */
    bool clamp;               /* e's activation clamps to [lo, hi] (ReLU, ReLU6, Clamp): applied as values are stored */
    float lo, hi;
} dest_t;

/* p[i] = min(hi, max(lo, v[i] + bias)) for i < n (a NaN stays NaN); p may be v. */
static void clamp_run(float *p, const float *v, size_t n, float bias, float lo, float hi) {
    for (size_t i = 0; i < n; i++) {
        float x = v[i] + bias;
        x = x < lo ? lo : x;
        p[i] = x > hi ? hi : x;
    }
}

/* n finished values v (modified) of channel m for output pixels (oy, ox .. ox + n - 1). */
static void emit_run(const dest_t *d, size_t m, size_t oy, size_t ox, float *v, size_t n) {
    float *p = d->base + m * d->sc + (oy * d->ystep + d->y0) * d->sy + (ox * d->xstep + d->x0) * d->sx;
    size_t step = d->xstep * d->sx;
    const bp_epilogue *e = d->e;
    float bias = e != NULL && e->bias != NULL ? e->bias[(d->channel0 + m) * e->bias_stride] : 0.0f;
    const BNNSActivation *act = e != NULL ? e->act : NULL;
    if (step == 1 && !d->accumulate && (act == NULL || !d->stream || d->clamp)) { /* the common case, in one pass */
        size_t i = 0;
        if (d->stream) { /* whole aligned vectors stream past the caches: no read for ownership */
            if (act != NULL) { /* a clamp: on the values first, in L1 */
                clamp_run(v, v, n, bias, d->lo, d->hi);
                bias = 0.0f;
                act = NULL;
            }
            bp_vec b = bp_vset1(bias);
            for (; i < n && (uintptr_t)(p + i) % sizeof(bp_vec) != 0; i++) p[i] = v[i] + bias;
            for (; i + BP_VL <= n; i += BP_VL) bp_vstream(p + i, bp_vadd(bp_vload(v + i), b));
        }
        if (act != NULL && d->clamp) { /* the bias and the clamp in one pass */
            clamp_run(p + i, v + i, n - i, bias, d->lo, d->hi);
            return;
        }
        for (; i < n; i++) p[i] = v[i] + bias;
        if (act != NULL) bp_activation_apply(act, p, n); /* on the run just written, still in L1 */
        return;
    }
    if (step == 2 && !d->accumulate && act == NULL) { /* a phase of a 2-strided output: every other value */
        bp_direct_store_every_other(p, v, n, bias);
        return;
    }
    if (d->accumulate)
        for (size_t i = 0; i < n; i++) v[i] += p[i * step];
    for (size_t i = 0; i < n; i++) v[i] += bias;
    if (act != NULL) bp_activation_apply(act, v, n);
    for (size_t i = 0; i < n; i++) p[i * step] = v[i];
}

/* ---- tasks ----------------------------------------------------------------------------------- */

typedef struct {
    const bp_direct *d;
    const float *packed;      /* NULL: pack chunks from the view as they are needed */
    const bp_weights_view *weights;
    const bp_image *src_img;
    const float *src;
    size_t src_bs;
    const bp_image *dst_img;
    float *dst;
    size_t dst_bs;
    bool accumulate;
    const bp_epilogue *e;
    const bp_scratch *s;
    size_t batch, bands, chunks, tasks, mblocks;
    size_t images;       /* images a task takes (an image group, see the plan's image_group) */
    bool stream;         /* the output is stored with non-temporal stores */
    bool clamp;          /* e's activation is a clamp to [lo, hi] (dest_t) */
    float lo, hi;
    _Atomic size_t next; /* the next task to take */
    /* backward plans' weights packed as the run goes (NULL: packed before it): the state of each
       (group, channel block) of packed, see ready_weights */
    _Atomic int *block_state;
} run_job;

enum { BLOCK_IDLE, BLOCK_PACKING, BLOCK_READY, RUN_PACKED_BLOCKS_MAX = 1024 };

/* The packed weights of channel block mb of phase p, group grp. A run that packs backward weights
   as it goes packs every phase of a block when a thread first needs it (the threads share the
   packing, none waits for a worker that wakes late); a thread needing a block another one is
   packing waits for it. */
static const float *ready_weights(const run_job *j, size_t grp, size_t p, size_t mb) {
    _Atomic int *state = j->block_state == NULL ? NULL : &j->block_state[grp * j->mblocks + mb];
    if (state != NULL && atomic_load_explicit(state, memory_order_acquire) != BLOCK_READY) {
        int idle = BLOCK_IDLE;
        if (atomic_compare_exchange_strong_explicit(state, &idle, BLOCK_PACKING, memory_order_acquire,
                                                    memory_order_acquire)) {
            pack_backward_block(j->d, j->weights, grp, mb, (float *)j->packed);
            atomic_store_explicit(state, BLOCK_READY, memory_order_release);
        } else {
            bp_wait_until_at_least(state, BLOCK_READY); /* the last state */
        }
    }
    return packed_at(j->d, (float *)j->packed, grp, p, mb);
}

/* Rows kernel over the band's flat positions [0, nb*wq), channel blocks [mb0, mb1), a tile of
   flat positions at a time against every block (its source vectors stay in cache). */
static void run_rows(const run_job *j, size_t p, const float *planes, size_t grp, size_t r0, size_t nb, size_t mb0,
                     size_t mb1, const dest_t *dst, float *tb) {
    const bp_direct *d = j->d;
    const phase_t *ph = &d->ph[p];
    size_t np = d->tile, flat = nb * d->wq;
    const float *origin = planes + d->prefix;
    for (size_t q0 = 0; q0 < flat; q0 += np) {
        for (size_t mb = mb0; mb < mb1; mb++) {
            rows_tile(d->bw, origin + q0, ph->off, ph->k, ready_weights(j, grp, p, mb), tb);
            size_t rows = bp_min(d->bw, d->m - mb * d->bw);
            for (size_t q = q0, end = bp_min(q0 + np, flat); q < end;) {
                size_t oy = q / d->wq, ox = q % d->wq, stop = bp_min(end, (oy + 1) * d->wq);
                if (ox < ph->ow) {
                    size_t n = bp_min(ph->ow, ox + (stop - q)) - ox;
                    for (size_t r = 0; r < rows; r++)
                        emit_run(dst, mb * d->bw + r, r0 + oy, ox, tb + r * np + (q - q0), n);
                }
                q = stop;
            }
        }
    }
}

/* Where vector q of a band (nb rows of per_row vectors each) starts: its output row and column. */
static void band_vector(size_t q, size_t per_row, size_t *oy, size_t *ox) {
    *oy = q / per_row;
    *ox = q % per_row * BP_VL;
}

/* Vectors plans: the rows kernel over the band's output rows as whole vectors (a row's last one
   part-filled), channel block after channel block (its weights stay in L1), NV vectors a tile
   taken in order across the rows. Each tile's results go straight into the output (bias added,
   clamped), the next tile's output lines fetched for writing meanwhile (batch 8 of ResNet-50's
   stem: 1.09x against 1.03x without); through tb and emit_run when the output is strided or
   accumulated or the activation is no clamp. Streamed outputs are stored as any other: whole
   vectors of a row need not be aligned, and the lines fetched ahead hide the writes. */
static void run_vectors(const run_job *j, size_t p, const float *planes, size_t grp, size_t r0, size_t nb, size_t mb0,
                        size_t mb1, const dest_t *dst, float *tb) {
    const bp_direct *d = j->d;
    const phase_t *ph = &d->ph[p];
    const bp_epilogue *e = dst->e;
    size_t nv = d->tile / BP_VL, bw = d->bw, per_row = bp_ceil_div(ph->ow, BP_VL), total = nb * per_row;
    bool in_place = dst->xstep * dst->sx == 1 && !dst->accumulate && (e == NULL || e->act == NULL || dst->clamp);
    float lo = in_place && dst->clamp ? dst->lo : -INFINITY, hi = in_place && dst->clamp ? dst->hi : INFINITY;
    const float *origin = planes + d->prefix;
    for (size_t mb = mb0; mb < mb1; mb++) {
        size_t rows = bp_min(bw, d->m - mb * bw);
        const float *w = ready_weights(j, grp, p, mb);
        float bias[BP_DIRECT_BW_MAX] = {0};
        if (in_place && e != NULL && e->bias != NULL)
            for (size_t r = 0; r < rows; r++) bias[r] = e->bias[(dst->channel0 + mb * bw + r) * e->bias_stride];
        /* channel mb*bw's output row r0 (sx = 1 when in place) */
        float *block = dst->base + mb * bw * dst->sc + (r0 * dst->ystep + dst->y0) * dst->sy + dst->x0;
        for (size_t q0 = 0; q0 < total; q0 += nv) {
            const float *src[12];
            float *to[12];
            size_t n[12], oy[12], ox[12];
            for (size_t v = 0; v < nv; v++) { /* vectors past the band's last: computed, not stored */
                band_vector(bp_min(q0 + v, total - 1), per_row, &oy[v], &ox[v]);
                src[v] = origin + oy[v] * d->wq + ox[v];
                n[v] = q0 + v < total ? bp_min(BP_VL, ph->ow - ox[v]) : 0;
                to[v] = in_place ? block + oy[v] * dst->ystep * dst->sy + ox[v] : tb + v * BP_VL;
            }
            if (!in_place) {
                vectors_tile(bw, src, ph->off, ph->k, w, bias, lo, hi, to, n, nv * BP_VL, rows);
                for (size_t r = 0; r < rows; r++)
                    for (size_t v = 0; v < nv && n[v] > 0; v++)
                        emit_run(dst, mb * bw + r, r0 + oy[v], ox[v], tb + r * nv * BP_VL + v * BP_VL, n[v]);
                continue;
            }
            for (size_t q = q0 + nv; q < bp_min(q0 + 2 * nv, total); q++) {
                size_t y, x;
                band_vector(q, per_row, &y, &x);
                for (size_t r = 0; r < rows; r++) __builtin_prefetch(block + r * dst->sc + y * dst->ystep * dst->sy + x, 1, 3);
            }
            vectors_tile(bw, src, ph->off, ph->k, w, bias, lo, hi, to, n, dst->sc, rows);
        }
    }
}

/* Pixels kernel, one chunk of steps [k0, k0 + n) of channel block mb (packed weights w) against
   every tile of a band of nb rows: tb (=, or += after the first chunk) the tiles' results, pixel
   after pixel (a row's first tb_row pixels apart), bw channels each. Flat plans run the tiles over
   the band's flat positions, computing and dropping the wq - ow past each row as the rows kernel
   does, so that a tile never stops short at the end of a row. f (may be NULL): prefetches to
   spread over the tiles. */
static void pixels_chunk(const bp_direct *d, const phase_t *ph, const float *planes, size_t nb, const float *w,
                         size_t k0, size_t n, float *tb, weight_prefetch *f) {
    size_t nc = d->tile, bw = d->bw, mv = bw / BP_VL;
    const float *origin = planes + d->prefix;
    if (d->flat) {
        for (size_t q = 0, flat = nb * d->wq; q < flat; q += nc)
            pixels_tile_prefetching(mv, nc, origin + q, ph->off + k0, n, w, tb + q * bw, bw, k0 > 0, f);
        return;
    }
    for (size_t y = 0; y < nb; y++)
        for (size_t c = 0, per_row = bp_ceil_div(ph->ow, nc); c < per_row; c++)
            pixels_tile_prefetching(mv, nc, origin + y * d->wq + c * nc, ph->off + k0, n, w,
                                    tb + (y * d->tb_row + c * nc) * bw, bw, k0 > 0, f);
}

/* The band's results of channel block mb out of tb: transposed (8 x 8 blocks) into whole rows of
   each channel (run: scratch for them). */
static void pixels_emit(const bp_direct *d, const phase_t *ph, const float *tb, size_t r0, size_t nb, size_t mb,
                        const dest_t *dst, float *run) {
    size_t bw = d->bw, rows = bp_min(bw, d->m - mb * bw);
    size_t ow = ph->ow, ld = bp_round_up(ow, 8), r8 = rows / 8 * 8;
    const bp_epilogue *e = dst->e;
    if (dst->xstep * dst->sx == 1 && !dst->accumulate && !dst->stream) {
        /* the common case: 8 x 8 blocks transposed straight into the output, the bias added and a
           clamping activation applied on the way, or another activation on each channel's row
           while it is in cache */
        float bias[PIX_MV_MAX * BP_VL] = {0};
        float lo = dst->clamp ? dst->lo : -INFINITY, hi = dst->clamp ? dst->hi : INFINITY;
        if (e != NULL && e->bias != NULL)
            for (size_t r = 0; r < r8; r++) bias[r] = e->bias[(dst->channel0 + mb * bw + r) * e->bias_stride];
        for (size_t y = 0; y < nb; y++) {
            const float *res = tb + y * d->tb_row * bw;
            float *out = dst->base + mb * bw * dst->sc + ((r0 + y) * dst->ystep + dst->y0) * dst->sy + dst->x0 * dst->sx;
            bp_direct_store_transposed(res, bw, r8, ow, bias, lo, hi, out, dst->sc);
            if (e != NULL && e->act != NULL && !dst->clamp)
                for (size_t c = 0; c < r8; c++) bp_activation_apply(e->act, out + c * dst->sc, ow);
        }
        for (size_t y = 0; y < nb && r8 < rows; y++) {
            const float *res = tb + y * d->tb_row * bw;
            for (size_t r = r8; r < rows; r++) {
                for (size_t i = 0; i < ow; i++) run[i] = res[i * bw + r];
                emit_run(dst, mb * bw + r, r0 + y, 0, run, ow);
            }
        }
        return;
    }
    for (size_t y = 0; y < nb; y++) {
        const float *res = tb + y * d->tb_row * bw;
        /* whole 8 x 8 blocks, the last reading up to 7 pixels past the row (tb's slack) */
        for (size_t c0 = 0; c0 < r8; c0 += 8)
            for (size_t i = 0; i < ow; i += 8) bp_transpose8x8(res + i * bw + c0, bw, run + c0 * ld + i, ld);
        for (size_t r = r8; r < rows; r++)
            for (size_t i = 0; i < ow; i++) run[r * ld + i] = res[i * bw + r];
        for (size_t r = 0; r < rows; r++) emit_run(dst, mb * bw + r, r0 + y, 0, run + r * ld, ow);
    }
}

/* Two column phases of a 2-strided output (even: x0 = 0, odd: x0 = 1, the same grid) at once:
   their results of channel block mb interleaved into whole output rows, written once each rather
   than every other value by each phase. */
static void pixels_emit_pair(const bp_direct *d, const phase_t *ph, const float *even, const float *odd, size_t r0,
                             size_t nb, size_t mb, const dest_t *dst) {
    size_t bw = d->bw, rows = bp_min(bw, d->m - mb * bw), ow = ph->ow, r8 = rows / 8 * 8;
    const bp_epilogue *e = dst->e;
    float bias[BP_DIRECT_BW_MAX] = {0};
    if (e != NULL && e->bias != NULL)
        for (size_t r = 0; r < rows; r++) bias[r] = e->bias[(dst->channel0 + mb * bw + r) * e->bias_stride];
    for (size_t y = 0; y < nb; y++) {
        const float *res0 = even + y * d->tb_row * bw, *res1 = odd + y * d->tb_row * bw;
        float *out = dst->base + mb * bw * dst->sc + ((r0 + y) * dst->ystep + dst->y0) * dst->sy;
        for (size_t c0 = 0; c0 < r8; c0 += 8)
            for (size_t i = 0; i < ow; i += 8)
                bp_transpose8x8_interleave_add(res0 + i * bw + c0, res1 + i * bw + c0, bw, bias + c0,
                                               out + c0 * dst->sc + 2 * i, dst->sc, bp_min(8, ow - i));
        for (size_t r = r8; r < rows; r++)
            for (size_t i = 0; i < ow; i++) {
                out[r * dst->sc + 2 * i] = res0[i * bw + r] + bias[r];
                out[r * dst->sc + 2 * i + 1] = res1[i * bw + r] + bias[r];
            }
        if (e != NULL && e->act != NULL)
            for (size_t r = 0; r < rows; r++) bp_activation_apply(e->act, out + r * dst->sc, 2 * ow);
    }
}

/* The weights of chunk [k0, k0 + n) of block mb: from the packed weights, or packed now. */
static const float *chunk_weights(const run_job *j, size_t grp, size_t p, size_t mb, size_t k0, size_t n,
                                  float *chunk) {
    if (j->packed != NULL) return ready_weights(j, grp, p, mb) + k0 * j->d->bw;
    pack_block(j->d, j->weights, grp, p, mb, k0, n, chunk);
    return chunk;
}

/* The prefetches of chunk [k0, ...) of block mb, spread over `steps` steps of the kernel: false when
   there is none (past the task's blocks) or the view's steps are not contiguous along its rows. */
static bool next_chunk_prefetch(const run_job *j, size_t grp, size_t p, size_t mb, size_t k0, size_t mb1,
                                size_t steps, weight_prefetch *f) {
    const bp_direct *d = j->d;
    const bp_weights_view *v = j->weights;
    size_t k = d->ph[p].k;
    if (k0 >= k) {
        mb++;
        k0 = 0;
    }
    if (mb >= mb1 || v->in != d->s_taps || k == 0) return false;
    size_t n = bp_min(d->chunk, k - k0), rows = bp_min(d->bw, d->m - mb * d->bw);
    size_t every = bp_max(steps / (rows * bp_ceil_div(n + 15, 16)), 1);
    *f = (weight_prefetch){v->base + grp * v->group + mb * d->bw * v->out + k0, v->out, n, rows, 0, 0, every, 1};
    return true;
}

/* Pixels kernel over the band's rows of n images (planes and tile results of each), NC columns
   at a time, for channel block mb of phase p (a task's blocks end at mb1): each chunk of steps'
   packed weights against every tile of the band of each image (each weight is read once per band;
   the tiles' results wait in tb between chunks). Chunks packed here: the next one's weights are
   fetched during each. */
static void pixels_results(const run_job *j, size_t p, size_t n_img, float *const planes[], float *const tb[],
                           size_t grp, size_t nb, size_t mb, size_t mb1, float *scratch) {
    const bp_direct *d = j->d;
    const phase_t *ph = &d->ph[p];
    size_t tiles = d->flat ? bp_ceil_div(nb * d->wq, d->tile) : nb * bp_ceil_div(ph->ow, d->tile);
    for (size_t k0 = 0; k0 < ph->k || k0 == 0; k0 += d->chunk) {
        size_t n = bp_min(d->chunk, ph->k - k0);
        const float *w = chunk_weights(j, grp, p, mb, k0, n, scratch + d->chunk_offset);
        weight_prefetch fetch, *f = NULL;
        if (j->packed == NULL && next_chunk_prefetch(j, grp, p, mb, k0 + d->chunk, mb1, n_img * tiles * n, &fetch))
            f = &fetch;
        for (size_t i = 0; i < n_img; i++) pixels_chunk(d, ph, planes[i], nb, w, k0, n, tb[i], f);
        if (ph->k == 0) break;
    }
}

/* Channel block mb of phase p over the band's rows of n images (a task's blocks end at mb1), one
   row at a time: its tiles, then its results emitted to the image's destination. */
static void pixels_row_by_row(const run_job *j, size_t p, size_t n_img, float *const planes[], float *const tb[],
                              const dest_t dst[], size_t grp, size_t r0, size_t nb, size_t mb, size_t mb1,
                              float *scratch) {
    const bp_direct *d = j->d;
    const phase_t *ph = &d->ph[p];
    size_t tiles = nb * bp_ceil_div(ph->ow, d->tile);
    const float *w = chunk_weights(j, grp, p, mb, 0, ph->k, scratch + d->chunk_offset);
    weight_prefetch fetch, *f = NULL;
    if (j->packed == NULL && next_chunk_prefetch(j, grp, p, mb, d->chunk, mb1, n_img * tiles * ph->k, &fetch))
        f = &fetch;
    for (size_t i = 0; i < n_img; i++)
        for (size_t y = 0; y < nb; y++) {
            pixels_chunk(d, ph, planes[i] + y * d->wq, 1, w, 0, ph->k, tb[i], f);
            pixels_emit(d, ph, tb[i], r0 + y, 1, mb, &dst[i], scratch + d->run_offset);
        }
}

/* The same for channel blocks [mb0, mb1), each block's results emitted to each image's destination. */
static void run_pixels(const run_job *j, size_t p, size_t n_img, float *const planes[], float *const tb[],
                       const dest_t dst[], size_t grp, size_t r0, size_t nb, size_t mb0, size_t mb1, float *scratch) {
    const bp_direct *d = j->d;
    for (size_t mb = mb0; mb < mb1; mb++) {
        if (emits_row_by_row(d)) {
            pixels_row_by_row(j, p, n_img, planes, tb, dst, grp, r0, nb, mb, mb1, scratch);
            continue;
        }
        pixels_results(j, p, n_img, planes, tb, grp, nb, mb, mb1, scratch);
        for (size_t i = 0; i < n_img; i++)
            pixels_emit(d, &d->ph[p], tb[i], r0, nb, mb, &dst[i], scratch + d->run_offset);
    }
}

/* Whether phases p (even columns) and p + 1 (odd) of a backward plan are emitted together. */
static bool emits_pair(const run_job *j, size_t p, size_t n_img) {
    const bp_direct *d = j->d;
    return d->pair_offset != 0 && p % 2 == 0 && n_img == 1 && j->dst_img->sx == 1 && !j->accumulate && !j->stream &&
           d->ph[p].ow == d->ph[p + 1].ow && d->ph[p].oh == d->ph[p + 1].oh;
}

/* Output channel blocks [mb0, mb1) of one (images [b, b + j->images), group, band), their planes
   filled first unless they already are. */
static void run_unit(const run_job *j, size_t b, size_t grp, size_t band, size_t mb0, size_t mb1, bool fill,
                     float *scratch) {
    const bp_direct *d = j->d;
    size_t r0 = band * d->band_rows, r1 = bp_min(r0 + d->band_rows, d->oh_max);
    size_t n_img = bp_min(j->images, j->batch - b);
    float *planes[IMAGE_GROUP_MAX], *tb[IMAGE_GROUP_MAX];
    for (size_t i = 0; i < n_img; i++) {
        planes[i] = i == 0 ? scratch : scratch + d->group_offset + (i - 1) * d->group_stride;
        tb[i] = i == 0 ? scratch + d->tb_offset : planes[i] + bp_round_up(d->planes, 16);
        if (fill)
            bp_direct_fill_planes(d, j->src_img, j->src + (b + i) * j->src_bs + grp * d->c * j->src_img->sc, 0, d->c,
                                  r0, r1 - r0, planes[i]);
    }
    /* pixels, several output phases: a channel block's phases one after the other, so that the
       values they interleave in the output are written while its lines are still in cache */
    size_t step = d->kind == KIND_PIXELS && d->nphases > 1 ? 1 : mb1 - mb0;
    for (size_t m = mb0; m < mb1; m += step)
        for (size_t p = 0; p < d->nphases; p++) {
            const phase_t *ph = &d->ph[p];
            size_t end = bp_min(r1, ph->oh), m1 = bp_min(m + step, mb1);
            if (r0 >= end || ph->ow == 0) continue;
            dest_t dst[IMAGE_GROUP_MAX];
            for (size_t i = 0; i < n_img; i++)
                dst[i] = (dest_t){j->dst + (b + i) * j->dst_bs + grp * d->m * j->dst_img->sc, j->dst_img->sc,
                                  j->dst_img->sy, j->dst_img->sx, d->ystep, d->xstep, ph->y0, ph->x0, grp * d->m,
                                  j->accumulate, j->e, j->stream, j->clamp, j->lo, j->hi};
            if (d->kind == KIND_ROWS && d->vectors) {
                run_vectors(j, p, scratch, grp, r0, end - r0, m, m1, &dst[0], tb[0]);
            } else if (d->kind == KIND_ROWS) {
                run_rows(j, p, scratch, grp, r0, end - r0, m, m1, &dst[0], tb[0]);
            } else if (emits_pair(j, p, n_img)) { /* a channel block at a time (step 1) */
                float *odd = scratch + d->pair_offset;
                pixels_results(j, p, 1, planes, tb, grp, end - r0, m, m + 1, scratch);
                pixels_results(j, p + 1, 1, planes, &odd, grp, end - r0, m, m + 1, scratch);
                pixels_emit_pair(d, ph, tb[0], odd, r0, end - r0, m, &dst[0]);
                p++;
            } else {
                run_pixels(j, p, n_img, planes, tb, dst, grp, r0, end - r0, m, m1, scratch);
            }
        }
}

/* Tasks: (image or image group, group, band, channel chunk), channel chunks fastest. */
static void run_tasks(void *arg, int worker, int workers) {
    run_job *j = arg;
    (void)workers;
    float *scratch = j->s->base + (size_t)worker * j->s->stride;
    size_t have = SIZE_MAX;
    /* tasks taken one at a time, so that a worker the system slows down takes fewer */
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->tasks;) {
        size_t q = t % j->chunks, u = t / j->chunks, band = u % j->bands, ig = u / j->bands, mb0, mb1;
        bp_split(j->mblocks, (int)q, (int)j->chunks, &mb0, &mb1);
        run_unit(j, ig / j->d->groups * j->images, ig % j->d->groups, band, mb0, mb1, have != u, scratch);
        have = u;
    }
    if (j->stream) bp_stream_fence(); /* the streamed stores are visible before the run returns */
}

static size_t gcd(size_t a, size_t b) {
    while (b) {
        size_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

void bp_direct_run(const bp_direct_pass *pass, size_t batch, const bp_image *src_img, const float *src,
                   size_t src_bs, const bp_image *dst_img, float *dst, size_t dst_bs, bool accumulate,
                   const bp_epilogue *e, const bp_scratch *s, int threads) {
    const bp_direct *d = pass->plan;
    if (d->pointwise && !accumulate && dst_img->sx == 1) {
        bp_direct_pointwise_run(pass, batch, src_img, src, src_bs, dst_img, dst, dst_bs, e, s, threads);
        return;
    }
    if (!accumulate && bp_direct_panel_runs(pass, batch, dst_img)) {
        bp_direct_panel_run(pass, batch, src_img, src, src_bs, dst_img, dst, dst_bs, e, s, threads);
        return;
    }
    size_t flops = 0;
    for (size_t p = 0; p < d->nphases; p++) flops += 2 * d->ph[p].oh * d->ph[p].ow * d->ph[p].k * d->m;
    flops *= batch * d->groups;
    run_job j = {d, pass->packed, &pass->weights, src_img, src, src_bs, dst_img, dst, dst_bs, accumulate, e, s,
                 batch, bp_ceil_div(d->oh_max, d->band_rows), 1, 0, bp_ceil_div(d->m, d->bw), 1, false, false,
                 0.0f, 0.0f, 0, NULL};
    j.clamp = e != NULL && e->act != NULL && bp_clamp_bounds(e->act, &j.lo, &j.hi);
    int workers = bp_workers_for(threads, flops);
    size_t out_floats = 0;
    for (size_t p = 0; p < d->nphases; p++) out_floats += d->ph[p].oh * d->ph[p].ow;
    j.stream = !accumulate && out_floats * d->m * d->groups * batch >= STREAM_FLOATS;
    /* Weights from a view that outweigh the planes of a group of images: tasks of a group and one
       channel block, each chunk packed once per group (groups of equal size) */
    size_t images = bp_ceil_div(batch, bp_ceil_div(batch, d->image_group));
    if (j.packed == NULL && images > 1 && d->packed_group >= GROUP_WEIGHTS_FACTOR * images * d->planes &&
        j.mblocks >= (size_t)workers && s->stride >= d->group_scratch) {
        j.images = images;
        j.chunks = j.mblocks;
        j.tasks = bp_ceil_div(batch, j.images) * d->groups * j.bands * j.chunks;
        if ((size_t)workers > j.tasks) workers = (int)j.tasks;
        bp_parallel_run(workers, run_tasks, &j);
        return;
    }
    /* Equal shares: when the (image, group, band) units do not split evenly over the workers,
       cut each into f parts, by rows when they split evenly, else by channel blocks. */
    size_t units = batch * d->groups * j.bands, f = (size_t)workers / gcd(units, (size_t)workers);
    if (f > 1 && units < 8 * (size_t)workers) {
        size_t bands = j.bands * f;
        bool by_rows = d->oh_max >= MIN_BAND_ROWS * bands && (d->oh_max % bands == 0 || d->oh_max >= 8 * bands);
        if (by_rows && !(d->kind == KIND_PIXELS && units == 1 && j.mblocks >= f))
            j.bands = bands; /* narrower bands: the same planes, fewer rows filled */
        else
            j.chunks = bp_min(f, j.mblocks);
    }
    bp_direct plan_view; /* a plan whose band_rows follows the task cut */
    if (j.bands != bp_ceil_div(d->oh_max, d->band_rows)) {
        plan_view = *d;
        plan_view.band_rows = bp_ceil_div(d->oh_max, j.bands);
        j.bands = bp_ceil_div(d->oh_max, plan_view.band_rows);
        j.d = &plan_view;
    }
    j.tasks = batch * d->groups * j.bands * j.chunks;
    /* Weights the filter does not hold packed: a forward plan's pixels kernel packs each chunk
       as it goes when each block of channels is used by one task only (one image and band per
       group); otherwise they are packed once (backward plans: every phase of a block from one
       read of each kernel, which per-phase chunks would read once per phase), by the run's
       threads as they first need each block (backward plans with few enough blocks) or up front. */
    _Atomic int block_state[RUN_PACKED_BLOCKS_MAX];
    if (j.packed == NULL && d->backward && d->groups * j.mblocks <= RUN_PACKED_BLOCKS_MAX) {
        for (size_t b = 0; b < d->groups * j.mblocks; b++) atomic_init(&block_state[b], BLOCK_IDLE);
        j.block_state = block_state;
        j.packed = pass->pack_buffer;
    } else if (j.packed == NULL && (d->backward || !(d->kind == KIND_PIXELS && batch * j.bands == 1))) {
        bp_direct_pack(d, &pass->weights, pass->pack_buffer, threads);
        j.packed = pass->pack_buffer;
    }
    if ((size_t)workers > j.tasks) workers = (int)j.tasks;
    bp_parallel_run(workers, run_tasks, &j);
}
