/* Data types other than Float32 (convert.c).

   The convolution engine computes in Float32 only. A convolution whose descriptors use another
   data type is wrapped: at creation its weights and bias are converted to Float32 and the Float32
   filter is built from them; each forward call converts its input to a Float32 temporary, runs the
   Float32 path and converts the result to the output type. Products and sums are accumulated in
   Float32 whatever the storage type.

   Supported (standard convolution, forward only):
     input   Float32, Float16, BFloat16, Int8, UInt8
     weights Float32, Float16, BFloat16, Int8, UInt8
     bias    Float32, Float16, BFloat16, Int8, UInt8
     output  Float32, Float16, BFloat16
   Int8/UInt8 values are read as data_scale * x + data_bias (a data_scale of 0 counts as 1), with
   the scale and bias of the descriptor given at creation. Every other type, Int/UInt outputs, a
   transposed convolution with a non-Float32 descriptor and backward through such a filter are
   refused with a reason. */
#ifndef BNNS_PORTABLE_CONVERT_H
#define BNNS_PORTABLE_CONVERT_H

#include "internal.h"

/* ---- scalar conversions (round to nearest, ties to even; subnormals, infinities and NaNs kept) */
float bp_f16_to_f32(uint16_t h);
uint16_t bp_f32_to_f16(float f);
float bp_bf16_to_f32(uint16_t h);
uint16_t bp_f32_to_bf16(float f);

/* Bytes per value of a type the conversions handle, 0 for any other. */
size_t bp_dtype_size(BNNSDataType t);
/* Read n values src[i*stride] of type t as float (Int/UInt: scale*x + bias, scale 0 -> 1). */
void bp_load_f32(const void *src, size_t first, size_t stride, BNNSDataType t, float scale, float bias, float *dst,
                 size_t n);
/* Write n floats to dst[first + i*stride] as type t (a Float type). */
void bp_store_f32(const float *src, void *dst, size_t first, size_t stride, BNNSDataType t, size_t n);

/* Portable entry points (bnns_portable.h has no prototypes for them; used by the tests). */
float bnns_portable_f16_to_f32(uint16_t h);
uint16_t bnns_portable_f32_to_f16(float f);
float bnns_portable_bf16_to_f32(uint16_t h);
uint16_t bnns_portable_f32_to_bf16(float f);

#endif
