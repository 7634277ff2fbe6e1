/* bnns-py portable backend: the vector tier, chosen once per process, and the calls into it.

   The library holds the engines and kernels once per tier the build compiled (tier.h). At load,
   the CPU's features pick the widest tier it runs; BNNS_PY_ISA=<tier> picks a lower one instead.
   A tier the CPU lacks, or a name the build does not know, is refused: the library then creates
   no filter (bnns_portable_last_error and bnns_portable_isa_error say why) and bnns_portable_isa
   returns "none". Everything else calls the engines through the wrappers at the end of this file. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tier_ops.h"

#if defined(BP_SINGLE_TIER)
/* One tier (a -march=native build, aarch64's NEON, or any other CPU's plain C). */
extern const bp_tier_ops BP_TIER_CAT(bp_tier_ops, BP_SINGLE_TIER);
static const bp_tier_ops *const tiers[] = {&BP_TIER_CAT(bp_tier_ops, BP_SINGLE_TIER)};
static bool tier_runs(size_t tier) {
    (void)tier;
    return true;
}
#elif defined(__x86_64__) || defined(__i386__)
extern const bp_tier_ops bp_tier_ops_baseline, bp_tier_ops_avx2, bp_tier_ops_avx512;
static const bp_tier_ops *const tiers[] = {&bp_tier_ops_baseline, &bp_tier_ops_avx2, &bp_tier_ops_avx512};
/* The features each tier's compiler flags allow (see meson.build); __builtin_cpu_supports also
   checks that the OS saves the vector registers they use. */
static bool tier_runs(size_t tier) {
    __builtin_cpu_init();
    bool v2 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("popcnt");
    bool v3 = v2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return tier == 0 ? v2 : tier == 1 ? v3 : v4;
}
#else
#error "a multi-tier build is for x86-64; other CPUs build one tier (BP_SINGLE_TIER)"
#endif

enum { TIERS = sizeof tiers / sizeof tiers[0] };

static const bp_tier_ops *selected;
static char refusal[256];
static char available[64];
static pthread_once_t selection_once = PTHREAD_ONCE_INIT;

static void select_tier(void) {
    size_t best = TIERS;
    for (size_t i = 0; i < TIERS; i++) {
        if (!tier_runs(i)) continue;
        best = i;
        if (available[0]) strncat(available, " ", sizeof available - strlen(available) - 1);
        strncat(available, tiers[i]->name, sizeof available - strlen(available) - 1);
    }
    if (best == TIERS) { /* not even the baseline: nothing is safe to run */
        snprintf(refusal, sizeof refusal, "this CPU lacks the instructions of the library's lowest vector tier (%s)",
                 tiers[0]->name);
        selected = tiers[0];
        return;
    }
    selected = tiers[best];
    const char *forced = getenv("BNNS_PY_ISA");
    if (forced == NULL || forced[0] == '\0') return;
    for (size_t i = 0; i < TIERS; i++) {
        if (strcmp(forced, tiers[i]->name) != 0) continue;
        if (i <= best) {
            selected = tiers[i];
        } else {
            snprintf(refusal, sizeof refusal, "BNNS_PY_ISA=%s names a vector tier this CPU lacks (it runs: %s)", forced,
                     available);
        }
        return;
    }
    char known[64] = "";
    for (size_t i = 0; i < TIERS; i++) {
        if (known[0]) strncat(known, ", ", sizeof known - strlen(known) - 1);
        strncat(known, tiers[i]->name, sizeof known - strlen(known) - 1);
    }
    snprintf(refusal, sizeof refusal, "BNNS_PY_ISA=%s is not a vector tier of this build (it has: %s)", forced, known);
}

__attribute__((constructor)) static void select_tier_at_load(void) { pthread_once(&selection_once, select_tier); }

/* The selected tier; after a refusal, the lowest one (creation refuses, so nothing runs on it). */
static inline const bp_tier_ops *tier(void) {
    if (__builtin_expect(selected == NULL, 0)) pthread_once(&selection_once, select_tier);
    return selected;
}

const char *bp_tier_refusal(void) { return tier() && refusal[0] ? refusal : NULL; }

const char *bnns_portable_isa(void) { return bp_tier_refusal() ? "none" : tier()->name; }
const char *bnns_portable_isa_available(void) {
    tier();
    return available;
}
const char *bnns_portable_isa_error(void) {
    const char *reason = bp_tier_refusal();
    return reason ? reason : "";
}

/* ---- the once-compiled code's calls into the selected tier ---- */

const char *bnns_portable_simd(void) { return tier()->simd(); }

bool bp_geom_plan(bp_geom *g, size_t *scratch_floats) { return tier()->geom_plan(g, scratch_floats); }
bool bp_conv_small(const bp_geom *g) { return tier()->conv_small(g); }
const char *bp_conv_engine(const bp_geom *g, bool backward_data) { return tier()->conv_engine(g, backward_data); }
void bp_conv_forward(const bp_geom *g, const float *w, size_t batch, const bp_image *x_img, const float *x,
                     size_t x_bs, float *y, size_t y_bs, const bp_epilogue *e, const bp_scratch *s,
                     const bp_gemm_ctx *ctx, const struct bp_direct_pass *direct) {
    tier()->conv_forward(g, w, batch, x_img, x, x_bs, y, y_bs, e, s, ctx, direct);
}
void bp_conv_backward_data(const bp_geom *g, const float *w, size_t batch, const float *dy, size_t dy_bs,
                           const bp_image *dx_img, float *dx, size_t dx_bs, bool overwrite, const bp_epilogue *e,
                           const bp_scratch *s, const bp_gemm_ctx *ctx, const struct bp_direct_pass *direct) {
    tier()->conv_backward_data(g, w, batch, dy, dy_bs, dx_img, dx, dx_bs, overwrite, e, s, ctx, direct);
}
void bp_conv_backward_weights(const bp_geom *g, size_t batch, const bp_image *x_img, const float *x, size_t x_bs,
                              const float *dy, size_t dy_bs, float *dw, float beta, const bp_scratch *s,
                              const bp_gemm_ctx *ctx, const struct bp_direct *direct) {
    tier()->conv_backward_weights(g, batch, x_img, x, x_bs, dy, dy_bs, dw, beta, s, ctx, direct);
}

void bp_fc_forward(const float *w, size_t ldw, const float *panels, float *inputs, size_t n, size_t k, size_t batch,
                   const float *x, size_t ldx, float *y, size_t ldy, const bp_epilogue *e, int threads) {
    tier()->fc_forward(w, ldw, panels, inputs, n, k, batch, x, ldx, y, ldy, e, threads);
}
size_t bp_fc_client_batch_max(void) { return tier()->fc_client_batch_max(); }
size_t bp_fc_inputs_floats(size_t batch, size_t k) { return tier()->fc_inputs_floats(batch, k); }
size_t bp_fc_packed_floats(size_t n, size_t k) { return tier()->fc_packed_floats(n, k); }
void bp_fc_pack(const float *w, size_t ldw, size_t n, size_t k, float *panels) {
    tier()->fc_pack(w, ldw, n, k, panels);
}
void bp_fc_unpack(const float *panels, size_t n, size_t k, float *w) { tier()->fc_unpack(panels, n, k, w); }
void bp_fc_backward(const bp_fc_gradients *g, const bp_gemm_ctx *ctx) { tier()->fc_backward(g, ctx); }

size_t bp_direct_scratch_floats(const bp_direct *d) { return tier()->direct_scratch_floats(d); }
size_t bp_direct_view_scratch_floats(const bp_direct *d) { return tier()->direct_view_scratch_floats(d); }
size_t bp_direct_weight_floats(const bp_direct *d) { return tier()->direct_weight_floats(d); }
size_t bp_direct_weights_scratch_floats(const bp_direct *d) { return tier()->direct_weights_scratch_floats(d); }
bool bp_transposed_weight_gradient(const bp_geom *g, size_t batch, const bp_image *dz_img, const float *dz,
                                   size_t dz_bs, const float *x, size_t x_bs, float *dw, bool add, const bp_scratch *s,
                                   int threads) {
    return tier()->transposed_weight_gradient(g, batch, dz_img, dz, dz_bs, x, x_bs, dw, add, s, threads);
}
size_t bp_transposed_weights_scratch_floats(const bp_geom *g, int workers) {
    return tier()->transposed_weights_scratch_floats(g, workers);
}
const char *bp_direct_kind(const bp_direct *d, size_t batch) { return tier()->direct_kind(d, batch); }
bool bp_direct_runs_weight_gradient(const bp_direct *d) { return tier()->direct_runs_weight_gradient(d); }
bool bp_direct_pointwise(const bp_direct *d) { return tier()->direct_pointwise(d); }
bp_direct *bp_direct_plan(const bp_geom *g, bool backward, const bp_allocator *a) {
    return tier()->direct_plan(g, backward, a);
}
void bp_direct_destroy(bp_direct *d, const bp_allocator *a) { tier()->direct_destroy(d, a); }
void bp_direct_pack(const bp_direct *d, const bp_weights_view *w, float *packed, int threads) {
    tier()->direct_pack(d, w, packed, threads);
}

size_t bp_winograd_weight_floats(const bp_winograd *plan, const bp_geom *g) {
    return tier()->winograd_weight_floats(plan, g);
}
bool bp_winograd_plan(const bp_geom *g, bool forced, size_t tile, bool client, bp_winograd *plan) {
    return tier()->winograd_plan(g, forced, tile, client, plan);
}
bool bp_winograd_adjoint(const bp_geom *g, bp_geom *a) { return tier()->winograd_adjoint(g, a); }
void bp_winograd_weights(const bp_winograd *plan, const bp_geom *g, const float *w, float *u, const bp_scratch *s,
                         int threads, bool adjoint) {
    tier()->winograd_weights(plan, g, w, u, s, threads, adjoint);
}
void bp_winograd_forward(const bp_winograd *plan, const bp_geom *g, float *u, const float *w, bool adjoint,
                         size_t batch, const bp_image *x_img, const float *x, size_t x_bs, float *y, size_t y_bs,
                         const bp_epilogue *e, const bp_scratch *s, int threads) {
    tier()->winograd_forward(plan, g, u, w, adjoint, batch, x_img, x, x_bs, y, y_bs, e, s, threads);
}
size_t bp_winograd_gradient_floats(const bp_geom *g, const bp_winograd *plan, int workers) {
    return tier()->winograd_gradient_floats(g, plan, workers);
}
size_t bp_winograd_product_channels(void) { return tier()->winograd_product_channels(); }
bool bp_winograd_gradient_pays(const bp_geom *g, const bp_winograd *plan, size_t batch, int threads) {
    return tier()->winograd_gradient_pays(g, plan, batch, threads);
}
void bp_winograd_weight_gradient(const bp_winograd *plan, const bp_geom *g, size_t batch, const bp_image *x_img,
                                 const float *x, size_t x_bs, const float *dy, size_t dy_bs, float *dw, float beta,
                                 float *work, const bp_scratch *s, const bp_gemm_ctx *ctx) {
    tier()->winograd_weight_gradient(plan, g, batch, x_img, x, x_bs, dy, dy_bs, dw, beta, work, s, ctx);
}

const char *bp_activation_unsupported_reason(const BNNSActivation *act) {
    return tier()->activation_unsupported_reason(act);
}
const char *bp_activation_backward_unsupported_reason(const BNNSActivation *act) {
    return tier()->activation_backward_unsupported_reason(act);
}
bool bp_activation_supported(const BNNSActivation *act) { return tier()->activation_supported(act); }
bool bp_activation_backward_supported(const BNNSActivation *act) { return tier()->activation_backward_supported(act); }
bool bp_activation_is_channelwise(const BNNSActivation *act) { return tier()->activation_is_channelwise(act); }
void bp_activation_apply(const BNNSActivation *act, float *data, size_t n) { tier()->activation_apply(act, data, n); }
void bp_activation_apply_image(const BNNSActivation *act, float *data, size_t channels, size_t pixels,
                               size_t channel_stride) {
    tier()->activation_apply_image(act, data, channels, pixels, channel_stride);
}
void bp_activation_backward(const BNNSActivation *act, const float *y, const float *dy, float *dz, size_t n) {
    tier()->activation_backward(act, y, dy, dz, n);
}
void bp_activation_backward_channels(const BNNSActivation *act, const float *y, size_t y_sc, size_t y_sx, float *dz,
                                     size_t dz_sc, size_t channels, size_t pixels) {
    tier()->activation_backward_channels(act, y, y_sc, y_sx, dz, dz_sc, channels, pixels);
}
