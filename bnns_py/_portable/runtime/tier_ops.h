/* bnns-py portable backend: the table of one vector tier's entry points (see tier.h).

   Each tier's copy of tier_table.c fills one bp_tier_ops with its own functions; dispatch.c picks
   one table at load and forwards the once-compiled code's calls to it. The members' types are
   those of the declarations in internal.h, direct.h, fully_connected_backward.h and winograd.h, so a signature change there
   cannot go unnoticed here. */
#ifndef BNNS_PORTABLE_TIER_OPS_H
#define BNNS_PORTABLE_TIER_OPS_H

#include "direct.h"
#include "fully_connected_backward.h"
#include "internal.h"
#include "winograd.h"

/* X(member, function) for every per-tier function the once-compiled code calls. */
#define BP_TIER_FUNCTIONS(X)                                                \
    X(geom_plan, bp_geom_plan)                                              \
    X(conv_small, bp_conv_small)                                            \
    X(conv_engine, bp_conv_engine)                                          \
    X(conv_forward, bp_conv_forward)                                        \
    X(conv_backward_data, bp_conv_backward_data)                            \
    X(conv_backward_weights, bp_conv_backward_weights)                      \
    X(fc_forward, bp_fc_forward)                                            \
    X(fc_client_batch_max, bp_fc_client_batch_max)                          \
    X(fc_inputs_floats, bp_fc_inputs_floats)                                \
    X(fc_packed_floats, bp_fc_packed_floats)                                \
    X(fc_pack, bp_fc_pack)                                                  \
    X(fc_unpack, bp_fc_unpack)                                              \
    X(fc_backward, bp_fc_backward)                                          \
    X(simd, bnns_portable_simd)                                             \
    X(direct_scratch_floats, bp_direct_scratch_floats)                      \
    X(direct_view_scratch_floats, bp_direct_view_scratch_floats)            \
    X(direct_weight_floats, bp_direct_weight_floats)                        \
    X(direct_kind, bp_direct_kind)                                          \
    X(direct_runs_weight_gradient, bp_direct_runs_weight_gradient)          \
    X(direct_pointwise, bp_direct_pointwise)                                \
    X(direct_plan, bp_direct_plan)                                          \
    X(direct_destroy, bp_direct_destroy)                                    \
    X(direct_pack, bp_direct_pack)                                          \
    X(direct_weights_scratch_floats, bp_direct_weights_scratch_floats)      \
    X(transposed_weight_gradient, bp_transposed_weight_gradient)            \
    X(transposed_weights_scratch_floats, bp_transposed_weights_scratch_floats) \
    X(winograd_weight_floats, bp_winograd_weight_floats)                    \
    X(winograd_plan, bp_winograd_plan)                                      \
    X(winograd_adjoint, bp_winograd_adjoint)                                \
    X(winograd_weights, bp_winograd_weights)                                \
    X(winograd_forward, bp_winograd_forward)                                \
    X(winograd_gradient_floats, bp_winograd_gradient_floats)                \
    X(winograd_gradient_pays, bp_winograd_gradient_pays)                    \
    X(winograd_product_channels, bp_winograd_product_channels)              \
    X(winograd_weight_gradient, bp_winograd_weight_gradient)                \
    X(activation_unsupported_reason, bp_activation_unsupported_reason)      \
    X(activation_backward_unsupported_reason, bp_activation_backward_unsupported_reason) \
    X(activation_supported, bp_activation_supported)                        \
    X(activation_backward_supported, bp_activation_backward_supported)      \
    X(activation_is_channelwise, bp_activation_is_channelwise)              \
    X(activation_apply, bp_activation_apply)                                \
    X(activation_apply_image, bp_activation_apply_image)                    \
    X(activation_backward, bp_activation_backward)                          \
    X(activation_backward_channels, bp_activation_backward_channels)

#define BP_TIER_MEMBER(member, function) __typeof__(function) *member;
typedef struct {
    const char *name; /* "baseline", "avx2", "avx512", "neon", "native", "generic" */
    BP_TIER_FUNCTIONS(BP_TIER_MEMBER)
} bp_tier_ops;
#undef BP_TIER_MEMBER

#endif
