/* bnns-py portable backend: which engine runs each pass of a filter (planning, compiled once).

   A filter's passes are S's forward pass and its backward-data pass (internal.h). Each gets a
   direct-engine plan where the direct engine takes it, the forward pass of a standard filter the
   Winograd pass where that takes the geometry, and the rest runs on the im2col engine with its
   depthwise and tiny-layer kernels. The environment variable BNNS_PY_PORTABLE_ENGINE, read when a
   filter is made, forces a choice (direct.h lists its values). The plans themselves are made by
   the engines of the selected vector tier. */
#include <stdlib.h>
#include <string.h>

#include "direct.h"
#include "filter.h"
#include "plan.h"
#include "winograd.h"

int bp_engine_override(void) {
    const char *text = getenv("BNNS_PY_PORTABLE_ENGINE");
    if (text == NULL) return BP_ENGINE_AUTO;
    if (strcmp(text, "rows") == 0) return BP_ENGINE_ROWS;
    if (strcmp(text, "pixels") == 0) return BP_ENGINE_PIXELS;
    if (strcmp(text, "flat-pixels") == 0) return BP_ENGINE_FLAT_PIXELS;
    if (strcmp(text, "im2col") == 0) return BP_ENGINE_IM2COL;
    if (strcmp(text, "winograd") == 0) return BP_ENGINE_WINOGRAD;
    if (strcmp(text, "pointwise") == 0) return BP_ENGINE_POINTWISE;
    if (strcmp(text, "panel") == 0) return BP_ENGINE_PANEL;
    return BP_ENGINE_AUTO;
}

/* The Winograd tile BNNS_PY_WINOGRAD_TILE asks for (m of F(m x m, 3x3): 2 or 4), 0 when it asks
   for none. */
static size_t winograd_tile_override(void) {
    const char *text = getenv("BNNS_PY_WINOGRAD_TILE");
    return text == NULL ? 0 : strcmp(text, "2") == 0 ? 2 : strcmp(text, "4") == 0 ? 4 : 0;
}

enum {
    /* on AVX-512, a weight gradient's output planes, at least this square, for layers whose other
       passes stay on the direct engine (down to the 16 channels the Winograd plan takes): there
       16 -> 16 at 32x32 ran 1.6x and 32 -> 32 1.2x the direct engine's; 32 -> 32 and 32 -> 64 at
       16x16 0.9x. On AVX2 16 -> 16 and 16 -> 32 at 32x32 ran 0.93x: the other tiers keep the
       forward pass's rule. */
    WINO_DW_MIN_SIDE = 32
};

/* Whether a planned forward (or adjoint) pass of g is quicker on the Winograd pass than on the
   direct engine: at least a whole block of the products' output channels (64 on AVX-512, 16 on
   the other tiers) and 32 input channels. With fewer, the products run in narrow channel blocks
   slower than the direct engine's kernels (AVX-512, 1 thread, against the direct engine: forward
   64 -> 16 at 56x56 0.46x, 32 -> 32 at 32x32 0.61x, 64 -> 32 at 16x16 0.74x; input gradients of
   16 -> 32 at 32x32 0.67x, 32 -> 64 at 16x16 0.66x; where it takes them, 32 -> 64 forward 1.25x,
   64 -> 32 input gradient 1.20x). On AVX2, whose blocks are 16 channels, 32 -> 32's input
   gradient ran 1.23x faster there. */
static bool winograd_products_pay(const bp_geom *g) {
    return g->in_c >= 32 && g->out_c >= bp_max(16, bp_winograd_product_channels());
}

/* The same for g's weight gradient (before the per-call tile count, bp_winograd_gradient_pays). */
static bool winograd_gradient_pays(const bp_geom *g) {
    bool wide_blocks = bp_winograd_product_channels() >= 64;
    return winograd_products_pay(g) || (wide_blocks && g->out_w >= WINO_DW_MIN_SIDE && g->out_h >= WINO_DW_MIN_SIDE);
}

/* The Winograd pass for the forward pass of a standard filter, where it takes the geometry, its
   channels pay and no other engine is asked for; its calls are whole batches (packed outputs,
   elementwise activation). The input gradient (the adjoint convolution, of the same shape for
   'same' layers) picks its tile by its own shape and channels too; the weight gradient runs on
   the forward pass's tiles, planned for it alone where its rule takes a layer the forward pass's
   does not (fewer channels over larger planes). */
static void plan_winograd(bp_filter *f) {
    int engine = bp_engine_override();
    if (f->transposed || !bp_filter_batch_at_once(f) || (engine != BP_ENGINE_AUTO && engine != BP_ENGINE_WINOGRAD)) return;
    /* a dilated plan writes every d-th output: the forward activation runs on contiguous runs only
       (an input gradient has none) */
    bool dilated_activation = f->g.dx > 1 && f->activation.function != BNNSActivationFunctionIdentity;
    bool forced = engine == BP_ENGINE_WINOGRAD;
    size_t tile = winograd_tile_override();
    if (f->client && bp_winograd_adjoint(&f->g, &f->dx_geom) &&
        bp_winograd_plan(&f->dx_geom, forced, tile, true, &f->wino_dx_plan) &&
        (forced || winograd_products_pay(&f->dx_geom))) {
        f->wino_dx = true;
        if (f->wino_dx_plan.scratch_floats > f->scratch_floats) f->scratch_floats = f->wino_dx_plan.scratch_floats;
    }
    if (dilated_activation || !bp_winograd_plan(&f->g, forced, tile, f->client, &f->wino)) return;
    f->winograd = forced || winograd_products_pay(&f->g);
    /* F(4x4)'s wide layers: not measured there */
    f->wino_dw = f->client && (forced || (f->wino.m == 2 && winograd_gradient_pays(&f->g)));
    f->wino_dw_forced = forced;
    if ((f->winograd || f->wino_dw) && f->wino.scratch_floats > f->scratch_floats)
        f->scratch_floats = f->wino.scratch_floats;
}

/* Direct-engine plans for the passes the filter can run: its own forward pass, and with client
   pointers (which backward needs) the other one too. The plans' scratch joins the workers'. */
static void plan_direct(bp_filter *f) {
    const bp_geom *g = &f->g;
    bool need[2] = {!f->transposed || f->client, f->transposed || f->client};
    int kernel = bp_engine_override(); /* a forced kernel runs wherever it can */
    bool forced = kernel == BP_ENGINE_ROWS || kernel == BP_ENGINE_PIXELS || kernel == BP_ENGINE_FLAT_PIXELS;
    if (bp_conv_small(g) && !forced && kernel != BP_ENGINE_POINTWISE && kernel != BP_ENGINE_PANEL)
        need[BP_DIRECT_FORWARD] = false; /* the tiny-layer kernel is quicker */
    for (int i = 0; i < 2; i++) {
        if (!need[i]) continue;
        f->direct[i] = bp_direct_plan(g, i == BP_DIRECT_BACKWARD_DATA, &f->allocator);
        if (f->direct[i] == NULL) continue; /* the im2col engine runs this pass */
        size_t scratch = bp_direct_scratch_floats(f->direct[i]), weights = bp_direct_weight_floats(f->direct[i]);
        if (f->client) { /* the run packs the weights; the forward plan also computes weight gradients */
            size_t view = bp_direct_view_scratch_floats(f->direct[i]);
            size_t dw = i == BP_DIRECT_FORWARD ? bp_direct_weights_scratch_floats(f->direct[i]) : 0;
            if (view > scratch) scratch = view;
            if (dw > scratch) scratch = dw;
        }
        if (f->transposed && f->client && i == BP_DIRECT_FORWARD) /* its weight gradient may read the images in place */
            scratch = bp_max(scratch, bp_transposed_weights_scratch_floats(g, f->workers));
        if (scratch > f->scratch_floats) f->scratch_floats = scratch;
        if (f->client && weights > f->direct_w_floats) f->direct_w_floats = weights;
    }
    bp_clear_error(); /* a plan that could not be made is not an error */
}

void bp_plan_engines(bp_filter *f) {
    plan_direct(f);
    bp_direct *forward = f->direct[BP_DIRECT_FORWARD];
    f->weight_gradient_plan = forward != NULL && bp_direct_runs_weight_gradient(forward) ? forward : NULL;
    plan_winograd(f);
    /* every worker's scratch starts on a cache line: engines keep vectors and structs there */
    f->scratch_floats = bp_round_up(f->scratch_floats, 16);
}
