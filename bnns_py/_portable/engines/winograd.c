/* bnns-py portable backend: Winograd F(2x2, 3x3) and F(4x4, 3x3) forward pass (see winograd.h).

   With d a 4x4 input tile, g a 3x3 kernel and y the tile's 2x2 outputs:
     V = Bt d B,  U = G g Gt,  y = At (U .* V) A,  summed over input channels before At..A, with
     Bt = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
     At = [1 1 1 0; 0 1 -1 -1].
   F(4x4, 3x3), on 6x6 tiles (interpolation points 0, -1, 1, -2, 2 and infinity):
     Bt = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
     G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1],
     At = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
   A task takes whole tile rows (possibly of several images and output phases) and a chunk of
   output channel blocks: the input transform of its tiles (V, P x in_c x tiles, P = (m + 2)^2
   transform positions), then per block the P products with U on the pixels kernel into M
   (P x tiles x block channels) and the output transform straight into the output rows. When one
   block of tile rows is shared out by chunks of channel blocks, the workers make its V together
   instead, a part of the input channels at a time, and each chunk's products read all of it. */
#include "winograd.h"

#include <stdatomic.h>
#include <string.h>

#include "direct_plan.h"
#include "parallel.h"

enum {
    WINO_SCRATCH_TARGET = 1 << 19, /* floats of V and M a task holds (2 MiB): within the L3 */
    WINO_MIN_TILES = 32,           /* a task's tiles, at least and at most */
    WINO_MAX_TILES = 256,
    WINO_MIN_CHANNELS = 16, /* in and out: fewer, and the transforms outweigh the saving */
    WINO_MAX_WEIGHTS = 1 << 21, /* floats of U (8 MiB): more, and each block reads it from memory */
    WINO_MAX_DILATION = 64,
    WINO_MAX_SCRATCH = 1 << 24, /* floats per worker (64 MiB): very wide rows stay on the direct engine */
    /* F(4x4): for the layers whose F(2x2) weights exceed WINO_MAX_WEIGHTS; their U (up to 4x
       F(2x2)'s) comes from memory at every call, which calls of few tiles do not repay */
    WINO4_MAX_WEIGHTS = 1 << 24, /* floats of U (64 MiB) */
    WINO4_MIN_TILES = 32,        /* a call's tiles, at least (measured: c5 at batch 8) */
    WINO4_TASK_TILES = 128       /* a task's, at least: up to 32 images of 7x7 in one task per
                                    worker, each making the U it reads (not all of U first, to memory) */
};
/* The products run on the direct engine's pixels kernel: NC tiles x MV vectors of output channels. */
#define WINO_MV PIX_MV_MAX
#if BP_VREGS >= 32
#define WINO_NC 7
#else
#define WINO_NC 6
#endif
#define WINO_BW (WINO_MV * BP_VL)

static size_t mblocks(const bp_geom *g) { return bp_ceil_div(g->out_c, WINO_BW); }
/* Transform positions of a tile: (m + 2)^2. */
static size_t positions(const bp_winograd *p) { return (p->m + 2) * (p->m + 2); }
enum { WEIGHT_CHANNELS = 8 }; /* input channels a worker transposes at a time (72 kernel rows) */
enum { INPUT_CHANNELS = 8 };  /* input channels of a part of a V that the workers make together */

/* Floats between U's planes: 5 cache lines more than a plane, so that the stores of a kernel's
   transform, one per plane, fall in different cache sets (planes of a power-of-two size would all
   map to the same ones). */
static size_t u_plane(const bp_geom *g) { return mblocks(g) * g->in_c * WINO_BW + 80; }

static size_t weight_floats(size_t m, const bp_geom *g) { return (m + 2) * (m + 2) * u_plane(g); }
size_t bp_winograd_weight_floats(const bp_winograd *plan, const bp_geom *g) { return weight_floats(plan->m, g); }

/* Floats between the deinterleaved input rows: tw + 1 columns, whole vectors of 16 and one
   more vector that the transform may read. */
static size_t row_ld(size_t tw) { return (tw + 1 + 15) / 16 * 16 + BP_VL; }

/* F(4x4)'s tiles are taken in groups of WINO4_GT, a group's tiles in the lanes of two vectors,
   against WINO4_NC output channels of a sub-block of U of WINO4_SB (see run_task4): pairs of the
   pixels kernel's menu, whole vectors per sub-block. */
#define WINO4_GT (2 * BP_VL)
#if BP_VREGS >= 32
#define WINO4_NC 8
#define WINO4_SB (BP_VL < 8 ? 8 : BP_VL)
#else
#define WINO4_NC 4
#define WINO4_SB BP_VL
#endif

/* Offset in U's plane of input channel c, output channel o (a whole vector's first, in F(4x4)'s
   sub-blocks). */
static size_t u_offset(size_t m, size_t in_c, size_t c, size_t o) {
    size_t sb = m == 4 ? WINO4_SB : WINO_BW;
    return o / sb * in_c * sb + c * sb + o % sb;
}

/* Where an F(4x4) tile reads and writes: its first input row and column (before the padding),
   image offsets, its first output row and column. */
typedef struct {
    ptrdiff_t iy, ix;
    size_t x_at, y_at, oy, ox;
} tile_at;

/* Floats of a task's scratch, in order: V, M, step offsets, output rows (F(4x4): a group's
   gathered tiles), input rows (F(4x4): a tile vector's outputs), transposed kernels, F(4x4)'s
   tile table, a channel block's own U. */
typedef struct {
    size_t v, m, off, rows, in, wt, tiles, ublock;
} scratch_layout;

/* Floats between the planes of a block's own U (made from client weights by the task that reads it). */
static size_t ublock_plane(const bp_geom *g) { return g->in_c * WINO_BW + 80; }

static scratch_layout layout_for(const bp_geom *g, const bp_winograd *p) {
    size_t cap = p->rows * p->tw;
    scratch_layout l;
    l.off = g->in_c + 16;
    l.wt = WEIGHT_CHANNELS * 9 * mblocks(g) * WINO_BW; /* the weight transform's transposed kernels */
    if (p->m == 4) {
        size_t tiles = bp_round_up(cap, WINO4_GT); /* whole groups */
        l.v = 36 * g->in_c * tiles;
        l.m = 36 * WINO_BW * tiles;
        l.rows = 36 * WINO4_GT;
        l.in = 16 * BP_VL;
        l.tiles = tiles * sizeof(tile_at) / sizeof(float);
        l.ublock = p->client ? 36 * ublock_plane(g) : 0;
        return l;
    }
    l.v = 16 * g->in_c * cap + WINO_NC + 16;    /* the last tile of a row reads on into the next */
    l.m = 16 * (cap + WINO_NC) * WINO_BW;
    l.rows = 2 * 2 * p->tw * WINO_BW;           /* two output rows, channels innermost */
    l.in = 8 * row_ld(p->tw);                   /* deinterleaved input rows */
    l.tiles = 0;
    l.ublock = p->client ? 16 * ublock_plane(g) : 0;
    return l;
}

/* Tile rows and columns of an image's largest output phase, tiles of m x m outputs. */
static void set_tiles(const bp_geom *g, size_t m, bp_winograd *plan) {
    plan->m = m;
    plan->th = bp_ceil_div(bp_ceil_div(g->out_h, plan->d), m);
    plan->tw = bp_ceil_div(bp_ceil_div(g->out_w, plan->d), m);
}

/* The weight gradient runs on F(2x2)'s tiles whichever the forward pass has. */
static bp_winograd gradient_plan(const bp_geom *g, const bp_winograd *forward) {
    bp_winograd p = *forward;
    set_tiles(g, 2, &p);
    return p;
}

/* m by the shape: F(2x2) where its U fits WINO_MAX_WEIGHTS, F(4x4) for wider layers; 0: neither. */
static size_t tile_for(const bp_geom *g) {
    if (weight_floats(2, g) <= WINO_MAX_WEIGHTS) return 2;
    return weight_floats(4, g) <= WINO4_MAX_WEIGHTS ? 4 : 0;
}

bool bp_winograd_plan(const bp_geom *g, bool forced, size_t tile, bool client, bp_winograd *plan) {
    if (g->kh != 3 || g->kw != 3 || g->sx != 1 || g->sy != 1 || g->dx != g->dy || g->dx == 0 ||
        g->dx > WINO_MAX_DILATION || g->groups != 1 || g->out_h == 0 || g->out_w == 0 || g->in_c > INT32_MAX / 36)
        return false;
    size_t d = g->dx, m = tile == 2 || tile == 4 ? tile : forced ? 2 : tile_for(g);
    if (m == 0) return false;
    plan->d = d;
    plan->client = client;
    set_tiles(g, m, plan);
    if (!forced && (g->in_c < WINO_MIN_CHANNELS || g->out_c < WINO_MIN_CHANNELS || bp_ceil_div(g->out_w, d) < 4 ||
                    bp_ceil_div(g->out_h, d) < 4 || weight_floats(m, g) > (m == 2 ? WINO_MAX_WEIGHTS : WINO4_MAX_WEIGHTS)))
        return false;
    size_t np = positions(plan), image_tiles = d * d * plan->th * plan->tw;
    plan->min_batch = m == 4 && !forced ? bp_max(1, bp_ceil_div(WINO4_MIN_TILES, image_tiles)) : 1;
    size_t tiles = WINO_SCRATCH_TARGET / (np * (g->in_c + WINO_BW));
    if (tiles < WINO_MIN_TILES) tiles = WINO_MIN_TILES;
    if (tiles > WINO_MAX_TILES) tiles = WINO_MAX_TILES;
    if (m == 4 && tiles < WINO4_TASK_TILES) tiles = WINO4_TASK_TILES;
    plan->rows = tiles / plan->tw > 0 ? tiles / plan->tw : 1;
    if (plan->rows > plan->th && m == 2) plan->rows = plan->th; /* F(4x4): blocks of several images, U read once */
    if (plan->rows * plan->tw * g->in_c > INT32_MAX / np) return false; /* step offsets in int32 */
    scratch_layout l = layout_for(g, plan);
    size_t parts[] = {l.v, l.m, l.off, l.rows, l.in, l.wt, l.tiles, l.ublock}, total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (!bp_add(total, bp_round_up(parts[i], 16), &total)) return false;
    plan->scratch_floats = bp_max(total, 8 * row_ld(gradient_plan(g, plan).tw)); /* its input rows */
    return total <= WINO_MAX_SCRATCH; /* a task takes at least one whole tile row */
}

size_t bp_winograd_product_channels(void) { return WINO_MV * BP_VL; }

bool bp_winograd_adjoint(const bp_geom *g, bp_geom *a) {
    if (g->sx != 1 || g->sy != 1 || g->groups != 1 || g->pl > (g->kw - 1) * g->dx || g->pt > (g->kh - 1) * g->dy)
        return false;
    *a = (bp_geom){.in_c = g->out_c, .in_h = g->out_h, .in_w = g->out_w, .out_c = g->in_c, .out_h = g->in_h,
                   .out_w = g->in_w, .kh = g->kh, .kw = g->kw, .sx = 1, .sy = 1, .dx = g->dx, .dy = g->dy,
                   .pl = (g->kw - 1) * g->dx - g->pl, .pt = (g->kh - 1) * g->dy - g->pt, .groups = 1};
    a->in_cg = a->in_c;
    a->out_cg = a->out_c;
    a->k = a->in_c * a->kh * a->kw;
    return true;
}

/* ---- weights: U = G g Gt, packed for the pixels kernel: [p][block][c][channel of block] ---- */

typedef struct {
    size_t m;
    const bp_geom *g;
    const float *w;
    float *u;
    const bp_scratch *s;
    bool adjoint;
    size_t plane, o_base; /* u's planes, and the output channel at its start (a block's own U) */
} weights_job;

/* Kernel values w[o][c * 9 + t] for c in [c0, c0 + nc) and o in [o0, o1) as rows t' = (c - c0) * 9 + t
   of values ld apart, o at column o - o0 (channels past out_c zero). */
static void transpose_kernels(const bp_geom *g, const float *w, size_t c0, size_t nc, size_t o0, size_t o1, float *t,
                              size_t ld, bool adjoint) {
    if (adjoint) { /* w is [in_c][out_c * 9]: row c holds, for each output channel, its kernel flipped */
        for (size_t c = 0; c < nc; c++) {
            const float *row = w + (c0 + c) * g->out_c * 9;
            for (size_t tap = 0; tap < 9; tap++) {
                float *dst = t + (c * 9 + tap) * ld;
                for (size_t o = o0; o < o1; o++) dst[o - o0] = o < g->out_c ? row[o * 9 + 8 - tap] : 0.0f;
            }
        }
        return;
    }
    size_t k = g->in_c * 9, rows = nc * 9, r8 = rows / 8 * 8, real = bp_min(o1, g->out_c);
    size_t o8 = real > o0 ? o0 + (real - o0) / 8 * 8 : o0;
    const float *src = w + c0 * 9;
    for (size_t o = o0; o < o8; o += 8)
        for (size_t r = 0; r < r8; r += 8) bp_transpose8x8(src + o * k + r, k, t + r * ld + o - o0, ld);
    for (size_t r = 0; r < rows; r++)
        for (size_t o = r < r8 ? o8 : o0; o < o1; o++) t[r * ld + o - o0] = o < g->out_c ? src[o * k + r] : 0.0f;
}

/* G (a, b, c) of F(m x m, 3x3): m + 2 values. */
BP_INLINE void kernel_column(size_t m, bp_vec a, bp_vec b, bp_vec c, bp_vec *out) {
    if (m == 2) { /* (a, (a + b + c) / 2, (a - b + c) / 2, c) */
        const bp_vec half = bp_vset1(0.5f);
        out[0] = a;
        out[1] = half * (a + b + c);
        out[2] = half * (a - b + c);
        out[3] = c;
        return;
    }
    const bp_vec sixth = bp_vset1(1.0f / 6.0f), quarter = bp_vset1(0.25f), half = bp_vset1(0.5f);
    bp_vec ac = a + c, ac4 = quarter * a + c, bh = half * b; /* rows 3 and 4: (a / 4 +- b / 2 + c) / 6 */
    out[0] = quarter * a;
    out[1] = -sixth * (ac + b);
    out[2] = -sixth * (ac - b);
    out[3] = sixth * (ac4 + bh);
    out[4] = sixth * (ac4 - bh);
    out[5] = c;
}

/* G g Gt of BP_VL kernels (tap t of kernel i at k[t * ld + i]) into U's planes (u, `plane` floats
   apart); m a constant, so that the loops unroll. */
BP_INLINE void transform_kernels(const float *k, size_t ld, float *u, size_t plane, const size_t m) {
    const size_t n = m + 2;
    bp_vec r[6][3], across[6];
    for (size_t x = 0; x < 3; x++) { /* G g, down each column */
        bp_vec col[6];
        kernel_column(m, bp_vload(k + x * ld), bp_vload(k + (3 + x) * ld), bp_vload(k + (6 + x) * ld), col);
        for (size_t y = 0; y < n; y++) r[y][x] = col[y];
    }
    for (size_t y = 0; y < n; y++) { /* then the same across */
        kernel_column(m, r[y][0], r[y][1], r[y][2], across);
        for (size_t x = 0; x < n; x++) bp_vstore(u + (n * y + x) * plane, across[x]);
    }
}

/* U for input channels [c0, c1) and output channels [o0, o1) (whole blocks); t: scratch for 72
   transposed kernel rows of o1 - o0 values. */
static void weight_share(const weights_job *j, size_t c0, size_t c1, size_t o0, size_t o1, float *t) {
    const bp_geom *g = j->g;
    size_t in_c = g->in_c, ld = o1 - o0;
    for (size_t cb = c0; cb < c1; cb += WEIGHT_CHANNELS) {
        size_t nc = bp_min(WEIGHT_CHANNELS, c1 - cb);
        transpose_kernels(g, j->w, cb, nc, o0, o1, t, ld, j->adjoint);
        for (size_t c = cb; c < cb + nc; c++)
            for (size_t o = o0; o < o1; o += BP_VL) {
                const float *k = t + (c - cb) * 9 * ld + o - o0;
                if (j->m == 4)
                    transform_kernels(k, ld, j->u + u_offset(4, in_c, c, o - j->o_base), j->plane, 4);
                else
                    transform_kernels(k, ld, j->u + u_offset(2, in_c, c, o - j->o_base), j->plane, 2);
            }
    }
}

/* A worker's share of all of U: its input channels, every output channel. */
static void weight_share_of(const weights_job *j, int worker, int workers, float *t) {
    size_t c0, c1;
    bp_split(j->g->in_c, worker, workers, &c0, &c1);
    weight_share(j, c0, c1, 0, mblocks(j->g) * WINO_BW, t);
}

static void weight_tasks(void *arg, int worker, int workers) {
    const weights_job *j = arg;
    weight_share_of(j, worker, workers, j->s->base + (size_t)worker * j->s->stride);
}

void bp_winograd_weights(const bp_winograd *plan, const bp_geom *g, const float *w, float *u, const bp_scratch *s,
                         int threads, bool adjoint) {
    weights_job j = {plan->m, g, w, u, s, adjoint, u_plane(g), 0};
    bp_parallel_run(bp_workers_for(threads, 4 * positions(plan) * g->out_c * g->in_c), weight_tasks, &j);
}

/* ---- input transform ---------------------------------------------------------------------- */

/* V[p][c][col + tx] for one channel c and tile row: Bt d B of each tile tx, BP_VL tiles at a
   time. e, o: the rows' even and odd columns (rows ld apart, readable a vector past tw); v points
   at V[0][c][col], planes `vp` floats apart. */
void bp_winograd_tile_row_transform(size_t tw, size_t ld, const float *e, const float *o, float *v, size_t vp) {
    for (size_t i = 0; i < tw; i += BP_VL) {
        bp_vec h[4][4]; /* [row][column]: across, (d0 - d2, d1 + d2, d2 - d1, d1 - d3) */
        for (size_t r = 0; r < 4; r++) {
            bp_vec e0 = bp_vload(e + r * ld + i), e1 = bp_vload(e + r * ld + i + 1);
            bp_vec o0 = bp_vload(o + r * ld + i), o1 = bp_vload(o + r * ld + i + 1);
            h[r][0] = e0 - e1;
            h[r][1] = o0 + e1;
            h[r][2] = e1 - o0;
            h[r][3] = o0 - o1;
        }
        size_t n = tw - i < BP_VL ? tw - i : BP_VL;
        for (size_t j = 0; j < 4; j++) { /* down, the same on the rows */
            bp_vstore_part(v + j * vp + i, h[0][j] - h[2][j], n);
            bp_vstore_part(v + (4 + j) * vp + i, h[1][j] + h[2][j], n);
            bp_vstore_part(v + (8 + j) * vp + i, h[2][j] - h[1][j], n);
            bp_vstore_part(v + (12 + j) * vp + i, h[1][j] - h[3][j], n);
        }
    }
}

/* F(4x4): Bt d of 6 values. */
static void input_column(const bp_vec *d, bp_vec *t) {
    const bp_vec two = bp_vset1(2.0f), four = bp_vset1(4.0f), five = bp_vset1(5.0f);
    bp_vec d42 = d[4] - d[2], d31 = two * (d[3] - d[1]);
    t[0] = four * d[0] - five * d[2] + d[4];
    t[1] = (d[3] + d[4]) - four * (d[1] + d[2]);
    t[2] = (d[4] - d[3]) + four * (d[1] - d[2]);
    t[3] = d42 + d31;
    t[4] = d42 - d31;
    t[5] = four * d[1] - five * d[3] + d[5];
}

/* ---- output transform --------------------------------------------------------------------- */

/* At m A of each tile of a tile row, channels in lanes: m holds the row's tiles' products
   (M[p] planes mp floats apart, a tile's WINO_BW channels contiguous); the two output rows go to
   rows (2 tw pixels each, WINO_BW channels per pixel). `vectors`: channel vectors in use. */
void bp_winograd_tile_row_outputs(size_t tw, const float *m, size_t mp, size_t vectors, float *rows) {
    float *row0 = rows, *row1 = rows + 2 * tw * WINO_BW;
    for (size_t tx = 0; tx < tw; tx++)
        for (size_t v = 0; v < vectors; v++) {
            const float *t = m + tx * WINO_BW + v * BP_VL;
            bp_vec s0[4], s1[4];
            for (size_t j = 0; j < 4; j++) { /* down: (m0 + m1 + m2, m1 - m2 - m3) */
                bp_vec m0 = bp_vload(t + j * mp), m1 = bp_vload(t + (4 + j) * mp), m2 = bp_vload(t + (8 + j) * mp),
                       m3 = bp_vload(t + (12 + j) * mp);
                s0[j] = m0 + m1 + m2;
                s1[j] = m1 - m2 - m3;
            }
            float *p0 = row0 + 2 * tx * WINO_BW + v * BP_VL, *p1 = row1 + 2 * tx * WINO_BW + v * BP_VL;
            bp_vstore(p0, s0[0] + s0[1] + s0[2]);
            bp_vstore(p1, s1[0] + s1[1] + s1[2]);
            bp_vstore(p0 + WINO_BW, s0[1] - s0[2] - s0[3]);
            bp_vstore(p1 + WINO_BW, s1[1] - s1[2] - s1[3]);
        }
}

/* F(4x4): At m of 6 values. */
static void output_column(const bp_vec *m, bp_vec *y) {
    bp_vec a = m[1] + m[2], b = m[1] - m[2], c = m[3] + m[4], e = m[3] - m[4];
    y[0] = m[0] + a + c;
    y[1] = b + bp_vset1(2.0f) * e;
    y[2] = a + bp_vset1(4.0f) * c;
    y[3] = b + bp_vset1(8.0f) * e + m[5];
}

/* The first `count` pixels of output rows (2 tw pixels x WINO_BW channels each, row after row)
   into n channel planes (ohw apart) with the bias added: row r at out + r * row_step, pixel i at
   i * step. Then the activation, with unit steps (dilated plans have none). */
static void emit_rows(const float *rows, size_t tw, size_t nrows, size_t count, size_t n, const float *bias,
                      float *out, size_t ohw, size_t row_step, size_t step, const bp_epilogue *e) {
    size_t n8 = n / 8 * 8;
    for (size_t r = 0; r < nrows; r++) {
        const float *src = rows + r * 2 * tw * WINO_BW;
        float *dst = out + r * row_step;
        for (size_t c0 = 0; c0 < n8; c0 += 8)
            for (size_t i = 0; i < count; i += 8) {
                size_t k = bp_min(8, count - i);
                if (step == 1) {
                    bp_transpose8x8_add(src + i * WINO_BW + c0, WINO_BW, bias + c0, dst + c0 * ohw + i, ohw, k);
                    continue;
                }
                float block[8][8];
                bp_transpose8x8_add(src + i * WINO_BW + c0, WINO_BW, bias + c0, &block[0][0], 8, 8);
                for (size_t c = 0; c < 8; c++)
                    for (size_t q = 0; q < k; q++) dst[(c0 + c) * ohw + (i + q) * step] = block[c][q];
            }
        for (size_t c = n8; c < n; c++)
            for (size_t i = 0; i < count; i++) dst[c * ohw + i * step] = src[i * WINO_BW + c] + bias[c];
    }
    if (e == NULL || e->act == NULL) return;
    /* a channel's rows that touch in memory go through the activation as one run: runs of a row's
       width (56 values) cost up to 1.8x per value what longer runs do */
    bool rows_touch = step == 1 && row_step == count;
    size_t run = rows_touch ? nrows * count : count, runs = rows_touch ? 1 : nrows;
    for (size_t c = 0; c < n; c++)
        for (size_t r = 0; r < runs; r++) bp_activation_apply(e->act, out + c * ohw + r * row_step, run);
}

/* ---- tasks -------------------------------------------------------------------------------- */

typedef struct {
    const bp_winograd *plan;
    const bp_geom *g;
    const float *u;
    const bp_image *x_img;
    const float *x;
    size_t x_bs;
    float *y;
    size_t y_bs;
    const bp_epilogue *e;
    const bp_scratch *s;
    size_t blocks; /* tasks along the tile rows of the batch, their sizes one row apart at most */
    size_t chunks; /* chunks of channel blocks per tile-row block */
    size_t total_rows;
    weights_job weights; /* weights.w != NULL: U is made first, from these, by all the workers */
    int weight_units;    /* parts of U, WEIGHT_CHANNELS input channels each: claimed, made */
    _Atomic int weight_units_claimed;
    bp_progress weight_units_made;
    int input_units;     /* parts of the V all the workers read, INPUT_CHANNELS each (0: none): claimed, made */
    _Atomic int input_units_claimed;
    bp_progress input_units_made;
    _Atomic size_t next;
} forward_job;

/* A task's scratch (see scratch_layout). */
typedef struct {
    float *v, *m, *rows, *e, *o, *wt, *ublock;
    int32_t *off;
    tile_at *tiles;
} scratch_parts;

static scratch_parts parts_of(const bp_geom *g, const bp_winograd *p, float *scratch) {
    scratch_layout l = layout_for(g, p);
    scratch_parts s;
    s.v = scratch;
    s.m = s.v + bp_round_up(l.v, 16);
    s.off = (int32_t *)(s.m + bp_round_up(l.m, 16));
    s.rows = (float *)s.off + bp_round_up(l.off, 16);
    s.e = s.rows + bp_round_up(l.rows, 16);
    s.o = s.e + 4 * row_ld(p->tw);
    s.wt = s.e + bp_round_up(l.in, 16);
    s.tiles = (tile_at *)(s.wt + bp_round_up(l.wt, 16));
    s.ublock = (float *)s.tiles + bp_round_up(l.tiles, 16);
    return s;
}

/* V of input channels [c0, c1) of the tile rows [r0, r1) into v. */
static void input_transform(const forward_job *j, size_t r0, size_t r1, size_t c0, size_t c1, float *v,
                            const scratch_parts *s) {
    const bp_winograd *p = j->plan;
    const bp_geom *g = j->g;
    size_t tw = p->tw, th = p->th, d = p->d, per_image = d * d * th, ld = row_ld(tw), nt = (r1 - r0) * tw;
    memset(s->e, 0, 8 * ld * sizeof(float)); /* the columns past tw + 1 are read, not used */
    for (size_t r = r0; r < r1; r++) { /* tile row r: image, output phase (a, b), row within */
        size_t b = r / per_image, ph = r % per_image / th, ty = r % th, col = (r - r0) * tw;
        const float *img = j->x + b * j->x_bs;
        for (size_t c = c0; c < c1; c++) {
            bp_winograd_tile_row_inputs(g, tw, ld, j->x_img, img + c * j->x_img->sc, ty, ph / d, ph % d, s->e, s->o);
            bp_winograd_tile_row_transform(tw, ld, s->e, s->o, v + c * nt + col, g->in_c * nt);
        }
    }
}

/* Claims and makes parts of U until none is left (a worker that starts late finds none). */
static void make_weight_units(forward_job *j, float *t) {
    const bp_geom *g = j->g;
    for (int unit; (unit = atomic_fetch_add_explicit(&j->weight_units_claimed, 1, memory_order_relaxed)) <
                   j->weight_units;) {
        size_t c0 = (size_t)unit * WEIGHT_CHANNELS;
        weight_share(&j->weights, c0, bp_min(c0 + WEIGHT_CHANNELS, g->in_c), 0, mblocks(g) * WINO_BW, t);
        bp_progress_add(&j->weight_units_made, 1);
    }
}

/* The V that all the workers read when they share out one block of tile rows by channel blocks:
   in the first worker's scratch. */
static float *shared_v(const forward_job *j) { return parts_of(j->g, j->plan, j->s->base).v; }

/* Claims and makes parts of the shared V (the one block's tile rows, INPUT_CHANNELS input channels
   each) until none is left, then waits until all are made: only for parts that running threads
   have claimed, so a worker that starts late holds up no one. */
static void make_input_units(forward_job *j, const scratch_parts *sp) {
    float *v = shared_v(j);
    size_t in_c = j->g->in_c;
    for (int unit; (unit = atomic_fetch_add_explicit(&j->input_units_claimed, 1, memory_order_relaxed)) <
                   j->input_units;) {
        size_t c0 = (size_t)unit * INPUT_CHANNELS;
        input_transform(j, 0, j->total_rows, c0, bp_min(c0 + INPUT_CHANNELS, in_c), v, sp);
        bp_progress_add(&j->input_units_made, 1);
    }
    bp_progress_wait(&j->input_units_made, j->input_units);
}

/* The U of channel block mb alone, from the client weights, into the task's scratch. */
static void make_block_weights(const forward_job *j, size_t mb, const scratch_parts *sp) {
    weights_job own = j->weights;
    own.u = sp->ublock;
    own.plane = ublock_plane(j->g);
    own.o_base = mb * WINO_BW;
    weight_share(&own, 0, j->g->in_c, mb * WINO_BW, (mb + 1) * WINO_BW, sp->wt);
}

/* A block of tile rows and a chunk of channel blocks (F(2x2)). wait_for_weights: the workers make U
   together; the products wait until it is whole, the input transform does not. make_weights: the
   task makes each channel block's U just before its products read it, into its own scratch (1 MiB
   at 256 input channels: it stays in the L2 cache, where all of U, written first, would not).
   shared_input: the workers make V together (make_input_units), each task's products read it all. */
static void run_task(forward_job *j, size_t block, size_t chunk, bool wait_for_weights, bool make_weights,
                     bool shared_input, float *scratch) {
    const bp_winograd *p = j->plan;
    const bp_geom *g = j->g;
    size_t tw = p->tw, th = p->th, in_c = g->in_c, ow = g->out_w, ohw = g->out_h * ow, nb = mblocks(g);
    size_t r0, r1, mb0, mb1;
    bp_split(j->total_rows, (int)block, (int)j->blocks, &r0, &r1);
    size_t nt = (r1 - r0) * tw;
    bp_split(nb, (int)chunk, (int)j->chunks, &mb0, &mb1);
    scratch_parts sp = parts_of(g, p, scratch);
    float *m = sp.m, *rows = sp.rows;
    int32_t *off = sp.off;
    const float *v = sp.v;
    if (shared_input) {
        make_input_units(j, &sp);
        v = shared_v(j);
    } else {
        input_transform(j, r0, r1, 0, in_c, sp.v, &sp);
    }
    if (wait_for_weights) bp_progress_wait(&j->weight_units_made, j->weight_units);
    size_t ldv = in_c * nt, mp = (p->rows * tw + WINO_NC) * WINO_BW;
    size_t d = p->d, per_image = d * d * th;
    for (size_t c = 0; c < in_c; c++) off[c] = (int32_t)(c * nt);
    for (size_t mb = mb0; mb < mb1; mb++) {
        if (make_weights) make_block_weights(j, mb, &sp);
        for (size_t q = 0; q < 16; q++) {
            const float *uq = make_weights ? sp.ublock + q * ublock_plane(g)
                                           : j->u + q * u_plane(g) + mb * in_c * WINO_BW;
            for (size_t k0 = 0; k0 < in_c; k0 += K_CHUNK) {
                size_t kn = bp_min(K_CHUNK, in_c - k0);
                for (size_t t = 0; t < nt; t += WINO_NC)
                    bp_direct_pixels_tile(WINO_MV, WINO_NC, v + q * ldv + t, off + k0, kn, uq + k0 * WINO_BW,
                                          m + q * mp + t * WINO_BW, WINO_BW, k0 > 0);
            }
        }
        size_t n = bp_min(WINO_BW, g->out_c - mb * WINO_BW), vectors = bp_ceil_div(n, BP_VL);
        float bias[WINO_BW] = {0};
        if (j->e != NULL && j->e->bias != NULL)
            for (size_t c = 0; c < n; c++) bias[c] = j->e->bias[(mb * WINO_BW + c) * j->e->bias_stride];
        for (size_t r = r0; r < r1; r++) {
            size_t b = r / per_image, ph = r % per_image / th, ty = r % th, col = (r - r0) * tw;
            size_t a = ph / d, bx = ph % d, oy = d * 2 * ty + a; /* the tile row's first output row */
            if (oy >= g->out_h || bx >= ow) continue;      /* a phase smaller than the largest */
            size_t count = bp_ceil_div(ow - bx, d), nrows = oy + d < g->out_h ? 2 : 1;
            bp_winograd_tile_row_outputs(tw, m + col * WINO_BW, mp, vectors, rows);
            emit_rows(rows, tw, nrows, count, n, bias, j->y + b * j->y_bs + mb * WINO_BW * ohw + oy * ow + bx, ohw,
                      d * ow, d, j->e);
        }
    }
}

/* ---- F(4x4): tiles in vector lanes --------------------------------------------------------
   F(2x2)'s products broadcast each tile's values against vectors of U's output channels, so U
   passes through the kernel once per WINO_NC tiles: fine while U stays in the cache, but
   F(4x4)'s U (38 MB at 512 channels) comes from memory, and a call of few tiles (ResNet-50's
   7x7 layers: 4 tiles an image) would wait on it. Here the roles swap: V holds groups of
   WINO4_GT tiles in the lanes of two vectors (V[p][group][c][tile]), U's values are broadcast,
   WINO4_NC channels at a time, each read once per group (once per call when the task's tiles fit
   one group), and M is [p][channel][tile]. U's blocks are split into sub-blocks of WINO4_SB
   channels ([p][block][sub-block][c][channel of sub-block]), so that the kernel reads it in order
   (memory's prefetcher keeps up with a stream, not with a 64-channel stride). */

/* The tile table of tile rows [r0, r1). */
static void tile_table(const forward_job *j, size_t r0, size_t r1, tile_at *tiles) {
    const bp_winograd *p = j->plan;
    const bp_geom *g = j->g;
    size_t d = p->d, per_image = d * d * p->th;
    for (size_t r = r0; r < r1; r++) {
        size_t b = r / per_image, ph = r % per_image / p->th, ty = r % p->th, a = ph / d, bx = ph % d;
        for (size_t tx = 0; tx < p->tw; tx++) {
            tile_at *t = tiles + (r - r0) * p->tw + tx;
            t->oy = d * 4 * ty + a;
            t->ox = d * 4 * tx + bx;
            t->iy = (ptrdiff_t)t->oy - (ptrdiff_t)g->pt;
            t->ix = (ptrdiff_t)t->ox - (ptrdiff_t)g->pl;
            t->x_at = b * j->x_bs;
            t->y_at = b * j->y_bs;
        }
    }
}

/* The 6x6 inputs of channel c of tiles [t0, t0 + WINO4_GT) (zeros past nt and outside the image)
   into dt[(6 row + column) * WINO4_GT + tile]. */
static void gather_tiles(const forward_job *j, const tile_at *tiles, size_t t0, size_t nt, size_t c, float *dt) {
    const bp_geom *g = j->g;
    const bp_image *img = j->x_img;
    ptrdiff_t d = (ptrdiff_t)g->dx, h = (ptrdiff_t)g->in_h, w = (ptrdiff_t)g->in_w;
    for (size_t l = 0; l < WINO4_GT; l++) {
        const tile_at *t = tiles + t0 + l;
        const float *plane = t0 + l < nt ? j->x + t->x_at + c * img->sc : NULL;
        for (ptrdiff_t i = 0; i < 6; i++) {
            ptrdiff_t y = plane != NULL ? t->iy + d * i : -1;
            const float *row = y >= 0 && y < h ? plane + (size_t)y * img->sy : NULL;
            for (ptrdiff_t k = 0; k < 6; k++) {
                ptrdiff_t x = row != NULL ? t->ix + d * k : -1;
                dt[(size_t)(6 * i + k) * WINO4_GT + l] = x >= 0 && x < w ? row[(size_t)x * img->sx] : 0.0f;
            }
        }
    }
}

/* Bt d B of a group's gathered tiles into V (v at V[0][group][c], planes vp apart). */
static void transform_tiles(const float *dt, float *v, size_t vp) {
    for (size_t i = 0; i < WINO4_GT; i += BP_VL) {
        bp_vec h[6][6], d[6], t[6]; /* h[row][column]: across */
        for (size_t r = 0; r < 6; r++) {
            for (size_t k = 0; k < 6; k++) d[k] = bp_vload(dt + (6 * r + k) * WINO4_GT + i);
            input_column(d, h[r]);
        }
        for (size_t k = 0; k < 6; k++) { /* down */
            for (size_t r = 0; r < 6; r++) d[r] = h[r][k];
            input_column(d, t);
            for (size_t r = 0; r < 6; r++) bp_vstore(v + (6 * r + k) * vp + i, t[r]);
        }
    }
}

/* At m A of channel ch's tiles [t0, t0 + BP_VL) (M's planes mp apart, a channel's tiles ld apart),
   the bias added and the activation applied, into their 4x4 outputs of output channel oc. */
static void output_tiles(const forward_job *j, const tile_at *tiles, size_t t0, size_t nt, const float *m, size_t mp,
                         float bias, size_t oc, float *out) {
    const bp_geom *g = j->g;
    bp_vec s[4][6], c[6], y[4], b = bp_vset1(bias);
    for (size_t k = 0; k < 6; k++) { /* down */
        for (size_t r = 0; r < 6; r++) c[r] = bp_vload(m + (6 * r + k) * mp + t0);
        output_column(c, y);
        for (size_t r = 0; r < 4; r++) s[r][k] = y[r];
    }
    for (size_t r = 0; r < 4; r++) { /* across */
        output_column(s[r], y);
        for (size_t x = 0; x < 4; x++) bp_vstore(out + (4 * r + x) * BP_VL, y[x] + b);
    }
    if (j->e != NULL && j->e->act != NULL) bp_activation_apply(j->e->act, out, 16 * BP_VL);
    size_t d = j->plan->d, ow = g->out_w, ohw = g->out_h * ow;
    for (size_t l = 0; l < BP_VL && t0 + l < nt; l++) {
        const tile_at *t = tiles + t0 + l;
        float *plane = j->y + t->y_at + oc * ohw;
        for (size_t r = 0; r < 4 && t->oy + d * r < g->out_h; r++)
            for (size_t x = 0; x < 4 && t->ox + d * x < ow; x++)
                plane[(t->oy + d * r) * ow + t->ox + d * x] = out[(4 * r + x) * BP_VL + l];
    }
}

/* F(4x4)'s run_task. make_weights: the task makes each channel block's U just before its
   products read it, into its own scratch (compact, still in the cache; no other task reads it). */
static void run_task4(forward_job *j, size_t block, size_t chunk, bool wait_for_weights, bool make_weights,
                      float *scratch) {
    const bp_winograd *p = j->plan;
    const bp_geom *g = j->g;
    size_t in_c = g->in_c, r0, r1, mb0, mb1;
    bp_split(j->total_rows, (int)block, (int)j->blocks, &r0, &r1);
    bp_split(mblocks(g), (int)chunk, (int)j->chunks, &mb0, &mb1);
    size_t nt = (r1 - r0) * p->tw, ntp = bp_round_up(nt, WINO4_GT), vp = in_c * ntp, mp = WINO_BW * ntp;
    scratch_parts sp = parts_of(g, p, scratch);
    tile_table(j, r0, r1, sp.tiles);
    for (size_t c = 0; c < in_c; c++)
        for (size_t t0 = 0; t0 < nt; t0 += WINO4_GT) {
            gather_tiles(j, sp.tiles, t0, nt, c, sp.rows);
            transform_tiles(sp.rows, sp.v + t0 * in_c + c * WINO4_GT, vp);
        }
    if (wait_for_weights) bp_progress_wait(&j->weight_units_made, j->weight_units);
    for (size_t c = 0; c < in_c; c++) sp.off[c] = (int32_t)(c * WINO4_SB);
    for (size_t mb = mb0; mb < mb1; mb++) {
        size_t n = bp_min(WINO_BW, g->out_c - mb * WINO_BW);
        if (make_weights) make_block_weights(j, mb, &sp);
        for (size_t q = 0; q < 36; q++) {
            const float *uq = make_weights ? sp.ublock + q * ublock_plane(g)
                                           : j->u + q * u_plane(g) + mb * in_c * WINO_BW;
            for (size_t cs = 0; cs < n; cs += WINO4_NC)
                for (size_t k0 = 0; k0 < in_c; k0 += K_CHUNK)
                    for (size_t t0 = 0; t0 < nt; t0 += WINO4_GT)
                        bp_direct_pixels_tile(2, WINO4_NC, uq + u_offset(4, in_c, 0, cs), sp.off + k0,
                                              bp_min(K_CHUNK, in_c - k0), sp.v + q * vp + t0 * in_c + k0 * WINO4_GT,
                                              sp.m + q * mp + cs * ntp + t0, ntp, k0 > 0);
        }
        for (size_t ch = 0; ch < n; ch++) {
            size_t oc = mb * WINO_BW + ch;
            float bias = j->e != NULL && j->e->bias != NULL ? j->e->bias[oc * j->e->bias_stride] : 0.0f;
            for (size_t t0 = 0; t0 < nt; t0 += BP_VL)
                output_tiles(j, sp.tiles, t0, nt, sp.m + ch * ntp, mp, bias, oc, sp.e);
        }
    }
}

static void forward_tasks(void *arg, int worker, int workers) {
    forward_job *j = arg;
    float *scratch = j->s->base + (size_t)worker * j->s->stride;
    scratch_parts sp = parts_of(j->g, j->plan, scratch);
    if (j->plan->m == 4) {
        bool own_weights = j->weights.w != NULL && j->plan->client && j->blocks == 1 && j->chunks == (size_t)workers;
        bool shared_weights = j->weights.w != NULL && !own_weights;
        if (shared_weights) make_weight_units(j, sp.wt);
        for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->blocks * j->chunks;)
            run_task4(j, t / j->chunks, t % j->chunks, shared_weights, own_weights, scratch);
        return;
    }
    if (j->blocks == 1 && j->chunks == (size_t)workers) {
        /* one tile block in a chunk of channel blocks per worker: each makes the U of its chunk's
           blocks, block by block, reading no other worker's U; V, which every chunk needs whole,
           the workers make together (F(2x2): each transform done once, not once per worker) */
        run_task(j, 0, (size_t)worker, false, j->weights.w != NULL && j->plan->client, j->input_units > 0, scratch);
        return;
    }
    bool shared_weights = j->weights.w != NULL; /* made first, together: one run, not two */
    if (shared_weights) make_weight_units(j, sp.wt);
    size_t tasks = j->blocks * j->chunks;
    for (size_t t; (t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < tasks;)
        run_task(j, t / j->chunks, t % j->chunks, shared_weights, false, false, scratch);
}

void bp_winograd_forward(const bp_winograd *plan, const bp_geom *g, float *u, const float *w, bool adjoint,
                         size_t batch, const bp_image *x_img, const float *x, size_t x_bs, float *y, size_t y_bs,
                         const bp_epilogue *e, const bp_scratch *s, int threads) {
    size_t total_rows = batch * plan->d * plan->d * plan->th, tiles = total_rows * plan->tw;
    int workers = bp_workers_for(threads, 2 * positions(plan) * tiles * g->in_c * g->out_c);
    forward_job j = {.plan = plan, .g = g, .u = u, .x_img = x_img, .x = x, .x_bs = x_bs, .y = y, .y_bs = y_bs,
                     .e = e, .s = s, .chunks = 1, .total_rows = total_rows, .weights = {plan->m, g, w, u, s, adjoint, u_plane(g), 0},
                     .weight_units = (int)bp_ceil_div(g->in_c, WEIGHT_CHANNELS)};
    size_t nw = (size_t)workers;
    j.blocks = bp_ceil_div(total_rows, plan->rows);
    /* equal shares: blocks that do not split evenly over the workers are cut into a multiple of
       them (sizes one row apart at most), but fewer blocks than workers whose rows do not split
       evenly are split by channel blocks */
    if (plan->m == 4 && mblocks(g) >= nw) {
        j.chunks = nw; /* U, too large for the cache, read once per block: a share of it per worker */
    } else if (j.blocks % nw != 0) {
        size_t more = bp_ceil_div(j.blocks, nw) * nw;
        if (j.blocks < nw && total_rows % more != 0 && mblocks(g) >= nw)
            j.chunks = nw;
        else if (total_rows >= more)
            j.blocks = more;
    }
    size_t tasks = j.blocks * j.chunks;
    if ((size_t)workers > tasks) workers = (int)tasks;
    if (plan->m == 2 && j.blocks == 1 && j.chunks > 1) j.input_units = (int)bp_ceil_div(g->in_c, INPUT_CHANNELS);
    bp_parallel_run(workers, forward_tasks, &j);
}

/* ---- weight gradient ---------------------------------------------------------------------- */

/* The forward identity y = At (U .* V) A, read backwards for the kernel: with dy a tile's 2x2
   output gradients, the tile adds Gt (W .* V) G to dw (3x3), W = A dy At the transformed
   gradient (F(3x3, 2x2) on the forward pass's own V; a dilated layer's d x d output phases are
   undilated convolutions with the same kernel, their tiles summed like any other). Summed over
   tiles and images, per transform position p: M[p] (out_c x in_c) = W[p] (out_c x tiles) *
   V[p]^T, a GEMM with the tiles as its inner dimension; then dw = Gt M G per kernel. Each
   worker takes a share of the
   tile rows of the batch and sums them, chunk by chunk, into its own M; a second run adds the
   workers' M and transforms them, each worker a share of the kernels. No worker waits for another
   within a run (on a busy machine each wait can cost a time slice). */

enum {
    DW_CHUNK_TARGET = 1 << 19, /* floats of a chunk's V and W (2 MiB) */
    DW_MIN_TILES = 128,        /* a chunk's tiles, at least */
    DW_WORKER_TILES = 64       /* fewer per worker: GEMMs too short for the transforms to pay */
};

static size_t dw_chunk_rows(const bp_geom *g, const bp_winograd *p) {
    size_t tiles = DW_CHUNK_TARGET / (16 * (g->in_c + g->out_c));
    if (tiles < DW_MIN_TILES) tiles = DW_MIN_TILES;
    return bp_max(tiles / p->tw, 1);
}

/* Floats of a worker's M, V and W. */
static size_t dw_worker_floats(const bp_geom *g, const bp_winograd *p) {
    return bp_round_up(16 * g->out_c * g->in_c, 16) + 16 * (g->in_c + g->out_c) * dw_chunk_rows(g, p) * p->tw;
}

size_t bp_winograd_gradient_floats(const bp_geom *g, const bp_winograd *forward, int workers) {
    bp_winograd p = gradient_plan(g, forward);
    return (size_t)workers * bp_round_up(dw_worker_floats(g, &p), 16);
}

/* W[p][o][col + tx] for one channel's tile row: A dy At of each tile tx from its two rows of
   output gradients split into even (e) and odd (o) columns (rows ld apart, readable a vector past
   tw); v points at W[0][o][col], planes vp floats apart. */
void bp_winograd_tile_row_gradient_transform(size_t tw, size_t ld, const float *e, const float *o, float *v,
                                             size_t vp) {
    for (size_t i = 0; i < tw; i += BP_VL) {
        bp_vec h[2][4]; /* [row][column]: across, (a, a + b, a - b, -b) */
        for (size_t r = 0; r < 2; r++) {
            bp_vec a = bp_vload(e + r * ld + i), b = bp_vload(o + r * ld + i);
            h[r][0] = a;
            h[r][1] = a + b;
            h[r][2] = a - b;
            h[r][3] = -b;
        }
        size_t n = tw - i < BP_VL ? tw - i : BP_VL;
        for (size_t j = 0; j < 4; j++) { /* down, the same on the rows */
            bp_vstore_part(v + j * vp + i, h[0][j], n);
            bp_vstore_part(v + (4 + j) * vp + i, h[0][j] + h[1][j], n);
            bp_vstore_part(v + (8 + j) * vp + i, h[0][j] - h[1][j], n);
            bp_vstore_part(v + (12 + j) * vp + i, -h[1][j], n);
        }
    }
}

/* Gt m G of n kernels: m holds M[p][k] at m[p * mp + k], dw kernel k (9 taps) at dw + k * 9,
   set (beta 0) or beta * dw added. */
void bp_winograd_gradient_outputs(const float *m, size_t mp, size_t n, float *dw, float beta) {
    for (size_t k = 0; k < n; k++) {
        float r[4][3];
        for (size_t y = 0; y < 4; y++) { /* across: (m0 + (m1 + m2) / 2, (m1 - m2) / 2, (m1 + m2) / 2 + m3) */
            const float *t = m + 4 * y * mp + k;
            float m0 = t[0], m1 = t[mp], m2 = t[2 * mp], m3 = t[3 * mp], s = 0.5f * (m1 + m2);
            r[y][0] = m0 + s;
            r[y][1] = 0.5f * (m1 - m2);
            r[y][2] = s + m3;
        }
        float *d = dw + k * 9;
        for (size_t x = 0; x < 3; x++) { /* then the same down */
            float s = 0.5f * (r[1][x] + r[2][x]), taps[3] = {r[0][x] + s, 0.5f * (r[1][x] - r[2][x]), s + r[3][x]};
            for (size_t y = 0; y < 3; y++) d[3 * y + x] = beta == 0.0f ? taps[y] : beta * d[3 * y + x] + taps[y];
        }
    }
}

typedef struct {
    const bp_winograd *plan;
    const bp_geom *g;
    bp_geom dy_geom; /* dy as an unpadded image, for the tile rows' gathers */
    bp_image dy_img;
    const bp_image *x_img;
    const float *x, *dy;
    size_t x_bs, dy_bs;
    float *dw, beta;
    float *work;      /* per worker: M, then a chunk's V and W */
    size_t per_worker;
    const bp_gemm_ctx *ctx;
    const bp_scratch *s;
    size_t chunk_rows, total_rows;
    int *summing;     /* workers the first run had, whose M the second adds: fewer than asked for
                         when the pool is busy with another call (then one worker sums every row) */
} gradient_job;

static int gradient_workers(const bp_geom *g, const bp_winograd *plan, size_t total_rows, int threads) {
    int workers = bp_workers_for(threads, 2 * 16 * total_rows * plan->tw * g->out_c * g->in_c);
    if (workers > BP_MAX_WORKERS) workers = BP_MAX_WORKERS; /* as many M as the filter's scratch areas */
    if ((size_t)workers > total_rows) workers = (int)total_rows; /* each sums at least one tile row */
    return workers;
}

/* Tile rows of a batch: per image, those of each of the d x d output phases. */
static size_t gradient_rows(const bp_winograd *plan, size_t batch) { return batch * plan->d * plan->d * plan->th; }

bool bp_winograd_gradient_pays(const bp_geom *g, const bp_winograd *forward, size_t batch, int threads) {
    bp_winograd p = gradient_plan(g, forward);
    size_t total_rows = gradient_rows(&p, batch);
    return total_rows * p.tw >= DW_WORKER_TILES * (size_t)gradient_workers(g, &p, total_rows, threads);
}

/* V (input) or W of one channel's tile rows [r0, r1) into planes `planes` floats apart; tile row r:
   image, output phase (a, b), row within, as on the forward pass. */
static void gradient_transform(const gradient_job *j, bool input, size_t channel, size_t r0, size_t r1, float *dst,
                               size_t planes, float *e, float *o) {
    size_t tw = j->plan->tw, th = j->plan->th, d = j->plan->d, per_image = d * d * th, ld = row_ld(tw);
    for (size_t r = r0; r < r1; r++) {
        size_t b = r / per_image, ph = r % per_image / th, ty = r % th, col = (r - r0) * tw;
        if (input) {
            bp_winograd_tile_row_inputs(j->g, tw, ld, j->x_img, j->x + b * j->x_bs + channel * j->x_img->sc, ty,
                                        ph / d, ph % d, e, o);
            bp_winograd_tile_row_transform(tw, ld, e, o, dst + col, planes);
        } else {
            bp_winograd_tile_row_inputs(&j->dy_geom, tw, ld, &j->dy_img, j->dy + b * j->dy_bs + channel * j->dy_img.sc,
                                        ty, ph / d, ph % d, e, o);
            bp_winograd_tile_row_gradient_transform(tw, ld, e, o, dst + col, planes);
        }
    }
}

/* The first run: a worker's tile rows into its M. */
static void gradient_sums(void *arg, int worker, int workers) {
    const gradient_job *j = arg;
    if (worker == 0) *j->summing = workers;
    const bp_geom *g = j->g;
    size_t in_c = g->in_c, out_c = g->out_c, tw = j->plan->tw, ld = row_ld(tw), mp = out_c * in_c, r0, r1;
    bp_split(j->total_rows, worker, workers, &r0, &r1);
    float *e = j->s->base + (size_t)worker * j->s->stride, *o = e + 4 * ld;
    float *m = j->work + (size_t)worker * j->per_worker, *v = m + bp_round_up(16 * mp, 16);
    float *w = v + 16 * in_c * j->chunk_rows * tw;
    memset(e, 0, 8 * ld * sizeof(float)); /* the columns past tw + 1 are read, not used */
    for (size_t c0 = r0; c0 < r1; c0 += j->chunk_rows) {
        size_t c1 = bp_min(c0 + j->chunk_rows, r1), nt = (c1 - c0) * tw;
        for (size_t c = 0; c < in_c; c++) gradient_transform(j, true, c, c0, c1, v + c * nt, in_c * nt, e, o);
        for (size_t c = 0; c < out_c; c++) gradient_transform(j, false, c, c0, c1, w + c * nt, out_c * nt, e, o);
        for (size_t p = 0; p < 16; p++)
            bp_sgemm(j->ctx, false, true, out_c, in_c, nt, 1.0f, w + p * out_c * nt, nt, v + p * in_c * nt, nt,
                     c0 == r0 ? 0.0f : 1.0f, m + p * mp, in_c);
    }
}

/* The second run: a share of the kernels, the workers' M added into the first's, into dw. */
static void gradient_kernels(void *arg, int worker, int workers) {
    const gradient_job *j = arg;
    size_t mp = j->g->out_c * j->g->in_c, k0, k1;
    bp_split(mp, worker, workers, &k0, &k1);
    float *m = j->work;
    for (int other = 1; other < *j->summing; other++) {
        const float *add = j->work + (size_t)other * j->per_worker;
        for (size_t p = 0; p < 16; p++)
            for (size_t k = k0; k < k1; k++) m[p * mp + k] += add[p * mp + k];
    }
    bp_winograd_gradient_outputs(m + k0, mp, k1 - k0, j->dw + k0 * 9, j->beta);
}

void bp_winograd_weight_gradient(const bp_winograd *forward, const bp_geom *g, size_t batch, const bp_image *x_img,
                                 const float *x, size_t x_bs, const float *dy, size_t dy_bs, float *dw, float beta,
                                 float *work, const bp_scratch *s, const bp_gemm_ctx *ctx) {
    bp_winograd f2 = gradient_plan(g, forward);
    const bp_winograd *plan = &f2; /* the job keeps it: both runs end here */
    size_t total_rows = gradient_rows(plan, batch), ohw = g->out_h * g->out_w, mp = g->out_c * g->in_c;
    int summing = 1;
    gradient_job j = {plan, g, *g, {0}, x_img, x, dy, x_bs, dy_bs, dw, beta, work,
                      bp_round_up(dw_worker_floats(g, plan), 16), ctx, s, dw_chunk_rows(g, plan), total_rows,
                      &summing};
    j.dy_geom.in_c = g->out_c;
    j.dy_geom.in_h = g->out_h;
    j.dy_geom.in_w = g->out_w;
    j.dy_geom.pl = j.dy_geom.pt = 0;
    j.dy_img = (bp_image){.w = g->out_w, .h = g->out_h, .c = g->out_c, .sx = 1, .sy = g->out_w, .sc = ohw,
                          .item = g->out_c * ohw, .packed = true};
    bp_parallel_run(gradient_workers(g, plan, total_rows, ctx->threads), gradient_sums, &j);
    bp_parallel_run(bp_workers_for(ctx->threads, 16 * (size_t)summing * mp), gradient_kernels, &j);
}
