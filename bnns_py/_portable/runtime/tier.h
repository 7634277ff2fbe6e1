/* bnns-py portable backend: the names of the code compiled once per vector tier.

   The engines and kernels (engines/, kernels/) are compiled several times into one library, once
   per instruction-set tier (x86-64: baseline = x86-64-v2, avx2 = AVX2 + FMA, avx512 = AVX-512
   F/BW/DQ/VL; aarch64: neon), each time with that tier's compiler flags and BP_TIER set to its
   name. Every function they define outside their own file is renamed here with the tier as a
   suffix (bp_conv_forward -> bp_conv_forward_avx2), so the copies do not collide. The code
   compiled once (api/, runtime/) calls the tier that runtime/dispatch.c selected at load through
   wrappers of the original names (runtime/tier_ops.h lists them).

   A function added to a per-tier file and called from another file needs a line here (the link
   fails with a duplicate symbol otherwise), and one in tier_ops.h when the once-compiled code
   calls it. */
#ifndef BNNS_PORTABLE_TIER_H
#define BNNS_PORTABLE_TIER_H

#define BP_TIER_CAT2(name, tier) name##_##tier
#define BP_TIER_CAT(name, tier) BP_TIER_CAT2(name, tier)

#ifdef BP_TIER
#define BP_TIER_SYMBOL(name) BP_TIER_CAT(name, BP_TIER)

/* engines/conv_engine.c */
#define bp_geom_plan BP_TIER_SYMBOL(bp_geom_plan)
#define bp_epilogue_run BP_TIER_SYMBOL(bp_epilogue_run)
#define bp_conv_small BP_TIER_SYMBOL(bp_conv_small)
#define bp_conv_engine BP_TIER_SYMBOL(bp_conv_engine)
#define bp_conv_forward BP_TIER_SYMBOL(bp_conv_forward)
#define bp_fill_padded_planes BP_TIER_SYMBOL(bp_fill_padded_planes)
#define bp_columns_from_padded BP_TIER_SYMBOL(bp_columns_from_padded)
#define bp_conv_backward_data BP_TIER_SYMBOL(bp_conv_backward_data)
#define bp_conv_backward_weights BP_TIER_SYMBOL(bp_conv_backward_weights)
#define bp_im2col_block BP_TIER_SYMBOL(bp_im2col_block)
#define bp_col2im_block BP_TIER_SYMBOL(bp_col2im_block)
#define bp_tiny_planes BP_TIER_SYMBOL(bp_tiny_planes)
#define bp_tiny_plane BP_TIER_SYMBOL(bp_tiny_plane)
#define bp_tiny_plane_pair BP_TIER_SYMBOL(bp_tiny_plane_pair)
#define bp_fill_short_padded_rows BP_TIER_SYMBOL(bp_fill_short_padded_rows)
/* engines/depthwise.c */
#define bp_depthwise BP_TIER_SYMBOL(bp_depthwise)
#define bp_depthwise_adjoint BP_TIER_SYMBOL(bp_depthwise_adjoint)
#define bp_depthwise_scratch_floats BP_TIER_SYMBOL(bp_depthwise_scratch_floats)
#define bp_depthwise_forward BP_TIER_SYMBOL(bp_depthwise_forward)
#define bp_depthwise_backward_data BP_TIER_SYMBOL(bp_depthwise_backward_data)
#define bp_depthwise_strided_input_gradient BP_TIER_SYMBOL(bp_depthwise_strided_input_gradient)
#define bp_depthwise_backward_data_strided BP_TIER_SYMBOL(bp_depthwise_backward_data_strided)
#define bp_depthwise_weight_gradient BP_TIER_SYMBOL(bp_depthwise_weight_gradient)
#define bp_depthwise_image BP_TIER_SYMBOL(bp_depthwise_image)
/* kernels/depthwise_*.c */
#define bp_dw3x3_strips_fit BP_TIER_SYMBOL(bp_dw3x3_strips_fit)
#define bp_dw3x3_strips BP_TIER_SYMBOL(bp_dw3x3_strips)
#define bp_dw3x3_strips_weights BP_TIER_SYMBOL(bp_dw3x3_strips_weights)
#define bp_dw3x3_pairs_fit BP_TIER_SYMBOL(bp_dw3x3_pairs_fit)
#define bp_dw3x3_pair BP_TIER_SYMBOL(bp_dw3x3_pair)
#define bp_dw3x3_s2_input_gradient_fits BP_TIER_SYMBOL(bp_dw3x3_s2_input_gradient_fits)
#define bp_dw3x3_s2_input_gradient BP_TIER_SYMBOL(bp_dw3x3_s2_input_gradient)
#define bp_dw_padded BP_TIER_SYMBOL(bp_dw_padded)
#define bp_dw_plane_floats BP_TIER_SYMBOL(bp_dw_plane_floats)
#define bp_dw_plane_offsets BP_TIER_SYMBOL(bp_dw_plane_offsets)
#define bp_dw_fill_plane BP_TIER_SYMBOL(bp_dw_fill_plane)
#define bp_dw_padded_plane BP_TIER_SYMBOL(bp_dw_padded_plane)
#define bp_dw_padded_weights BP_TIER_SYMBOL(bp_dw_padded_weights)
#define bp_dw_general_plane BP_TIER_SYMBOL(bp_dw_general_plane)
#define bp_dw_general_weights BP_TIER_SYMBOL(bp_dw_general_weights)
/* engines/direct.c, engines/direct_weights.c */
#define bnns_portable_simd BP_TIER_SYMBOL(bnns_portable_simd)
#define bp_direct_scratch_floats BP_TIER_SYMBOL(bp_direct_scratch_floats)
#define bp_direct_view_scratch_floats BP_TIER_SYMBOL(bp_direct_view_scratch_floats)
#define bp_direct_weight_floats BP_TIER_SYMBOL(bp_direct_weight_floats)
#define bp_direct_kind BP_TIER_SYMBOL(bp_direct_kind)
#define bp_direct_runs_weight_gradient BP_TIER_SYMBOL(bp_direct_runs_weight_gradient)
#define bp_direct_pointwise BP_TIER_SYMBOL(bp_direct_pointwise)
#define bp_direct_plan BP_TIER_SYMBOL(bp_direct_plan)
#define bp_direct_destroy BP_TIER_SYMBOL(bp_direct_destroy)
#define bp_direct_pack BP_TIER_SYMBOL(bp_direct_pack)
#define bp_direct_fill_planes BP_TIER_SYMBOL(bp_direct_fill_planes)
#define bp_direct_pixels_tile BP_TIER_SYMBOL(bp_direct_pixels_tile)
#define bp_direct_transpose_rows BP_TIER_SYMBOL(bp_direct_transpose_rows)
#define bp_direct_run BP_TIER_SYMBOL(bp_direct_run)
#define bp_direct_weights_scratch_floats BP_TIER_SYMBOL(bp_direct_weights_scratch_floats)
#define bp_direct_weight_gradient BP_TIER_SYMBOL(bp_direct_weight_gradient)
/* engines/transposed_weights.c */
#define bp_transposed_weight_gradient BP_TIER_SYMBOL(bp_transposed_weight_gradient)
#define bp_transposed_weights_scratch_floats BP_TIER_SYMBOL(bp_transposed_weights_scratch_floats)
/* engines/direct_pointwise.c, kernels/direct_pointwise.c */
#define bp_direct_pointwise_run BP_TIER_SYMBOL(bp_direct_pointwise_run)
#define bp_direct_pointwise_scratch_floats BP_TIER_SYMBOL(bp_direct_pointwise_scratch_floats)
#define bp_direct_pointwise_tile BP_TIER_SYMBOL(bp_direct_pointwise_tile)
#define bp_direct_pointwise_tile_ahead BP_TIER_SYMBOL(bp_direct_pointwise_tile_ahead)
#define bp_direct_pointwise_dots BP_TIER_SYMBOL(bp_direct_pointwise_dots)
#define bp_direct_pointwise_tile_dots BP_TIER_SYMBOL(bp_direct_pointwise_tile_dots)
/* engines/direct_panel.c */
#define bp_direct_panel_takes BP_TIER_SYMBOL(bp_direct_panel_takes)
#define bp_direct_panel_scratch_floats BP_TIER_SYMBOL(bp_direct_panel_scratch_floats)
#define bp_direct_panel_runs BP_TIER_SYMBOL(bp_direct_panel_runs)
#define bp_direct_panel_run BP_TIER_SYMBOL(bp_direct_panel_run)
#define bp_clamp_bounds BP_TIER_SYMBOL(bp_clamp_bounds)
/* engines/fully_connected.c, kernels/fc_tiles.c */
#define bp_fc_forward BP_TIER_SYMBOL(bp_fc_forward)
#define bp_fc_client_batch_max BP_TIER_SYMBOL(bp_fc_client_batch_max)
#define bp_fc_inputs_floats BP_TIER_SYMBOL(bp_fc_inputs_floats)
#define bp_fc_packed_floats BP_TIER_SYMBOL(bp_fc_packed_floats)
#define bp_fc_pack BP_TIER_SYMBOL(bp_fc_pack)
#define bp_fc_unpack BP_TIER_SYMBOL(bp_fc_unpack)
#define bp_fc_tile BP_TIER_SYMBOL(bp_fc_tile)
#define bp_fc_tile_rows BP_TIER_SYMBOL(bp_fc_tile_rows)
/* engines/fully_connected_backward.c */
#define bp_fc_backward BP_TIER_SYMBOL(bp_fc_backward)
/* kernels/direct_store_*.c */
#define bp_direct_store_every_other BP_TIER_SYMBOL(bp_direct_store_every_other)
#define bp_direct_split_pairs BP_TIER_SYMBOL(bp_direct_split_pairs)
#define bp_direct_store_transposed BP_TIER_SYMBOL(bp_direct_store_transposed)
/* engines/winograd.c */
#define bp_winograd_weight_floats BP_TIER_SYMBOL(bp_winograd_weight_floats)
#define bp_winograd_plan BP_TIER_SYMBOL(bp_winograd_plan)
#define bp_winograd_adjoint BP_TIER_SYMBOL(bp_winograd_adjoint)
#define bp_winograd_weights BP_TIER_SYMBOL(bp_winograd_weights)
#define bp_winograd_forward BP_TIER_SYMBOL(bp_winograd_forward)
#define bp_winograd_gradient_floats BP_TIER_SYMBOL(bp_winograd_gradient_floats)
#define bp_winograd_gradient_pays BP_TIER_SYMBOL(bp_winograd_gradient_pays)
#define bp_winograd_product_channels BP_TIER_SYMBOL(bp_winograd_product_channels)
#define bp_winograd_weight_gradient BP_TIER_SYMBOL(bp_winograd_weight_gradient)
#define bp_winograd_tile_row_gradient_transform BP_TIER_SYMBOL(bp_winograd_tile_row_gradient_transform)
#define bp_winograd_gradient_outputs BP_TIER_SYMBOL(bp_winograd_gradient_outputs)
#define bp_winograd_tile_row_inputs BP_TIER_SYMBOL(bp_winograd_tile_row_inputs)
#define bp_winograd_tile_row_transform BP_TIER_SYMBOL(bp_winograd_tile_row_transform)
#define bp_winograd_tile_row_outputs BP_TIER_SYMBOL(bp_winograd_tile_row_outputs)
/* kernels/activation.c */
#define bp_activation_unsupported_reason BP_TIER_SYMBOL(bp_activation_unsupported_reason)
#define bp_activation_backward_unsupported_reason BP_TIER_SYMBOL(bp_activation_backward_unsupported_reason)
#define bp_activation_supported BP_TIER_SYMBOL(bp_activation_supported)
#define bp_activation_backward_supported BP_TIER_SYMBOL(bp_activation_backward_supported)
#define bp_activation_is_channelwise BP_TIER_SYMBOL(bp_activation_is_channelwise)
#define bp_activation_apply BP_TIER_SYMBOL(bp_activation_apply)
#define bp_activation_apply_image BP_TIER_SYMBOL(bp_activation_apply_image)
#define bp_activation_backward BP_TIER_SYMBOL(bp_activation_backward)
#define bp_activation_backward_channels BP_TIER_SYMBOL(bp_activation_backward_channels)
/* kernels/act_*.c */
#define bp_act_piecewise_forward BP_TIER_SYMBOL(bp_act_piecewise_forward)
#define bp_act_smooth_forward BP_TIER_SYMBOL(bp_act_smooth_forward)
#define bp_act_backward_vector BP_TIER_SYMBOL(bp_act_backward_vector)
#define bp_act_softmax BP_TIER_SYMBOL(bp_act_softmax)
#define bp_act_softmax_backward BP_TIER_SYMBOL(bp_act_softmax_backward)
#endif

#endif
