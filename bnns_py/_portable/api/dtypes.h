/* Hooks that let a Float32 convolution filter take other data types (dtypes.c, convert.h).
   filter.c calls each one in a single, marked place: creation, ApplyBatch, backward, destroy. */
#ifndef BNNS_PORTABLE_DTYPES_H
#define BNNS_PORTABLE_DTYPES_H

#include "filter.h"

/* True when a descriptor of p that the convolution reads is not Float32. */
bool bp_dtype_needed(const BNNSLayerParametersConvolution *p);
/* Check the types, convert weights/bias to Float32 and build the Float32 filter around them;
   NULL with bp_set_error if a type or combination is not supported. */
bp_filter *bp_dtype_create_convolution(const BNNSLayerParametersConvolution *p, const BNNSFilterParameters *fp,
                                       bool transposed);
/* Forward through a filter with f->dtype set: convert, call apply_f32 (the Float32 path, with the
   same argument meaning), convert back. */
typedef int (*bp_apply_f32_fn)(bp_filter *f, size_t batch, const float *in, size_t in_stride, float *out,
                               size_t out_stride);
int bp_dtype_apply_batch(bp_filter *f, size_t batch, const void *in, size_t in_stride, void *out, size_t out_stride,
                         bp_apply_f32_fn apply_f32);
/* Backward is Float32 only (as in BNNS): false with a reason for a filter with f->dtype set. */
bool bp_dtype_backward_ok(const bp_filter *f);
void bp_dtype_destroy(bp_filter *f);

#endif
