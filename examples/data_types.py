"""Data types: Float16, BFloat16 and Int8 convolution layers, checked against the float64 reference.

Run:  python examples/data_types.py
The numpy-first functions compute in float32; other BNNS data types go through ConvolutionLayer
descriptors. BFloat16 values live in uint16 arrays of bit patterns (numpy has no bfloat16 dtype);
Int8 values are read as data_scale * x + data_bias with the descriptor's scale and bias.
"""
import numpy as np

from bnns_py import (ConvolutionLayer, ConvolutionType, DataType, NDArrayDescriptor, Shape, compare,
                     reference)
from bnns_py.enums import bfloat16_bits_to_float32, float32_to_bfloat16_bits

rng = np.random.default_rng(0)
N, C_IN, C_OUT, SIZE = 2, 16, 8, 12
x32 = rng.standard_normal((N, C_IN, SIZE, SIZE)).astype(np.float32)
w32 = (0.1 * rng.standard_normal((C_OUT, C_IN, 3, 3))).astype(np.float32)


def run_layer(x, weights, input_type, weight_type, output_type, output_dtype, **descriptor_options):
    """One 3x3 convolution (padding 0) with the given BNNS types; returns the output array."""
    layer = ConvolutionLayer(
        type=ConvolutionType.standard,
        input=NDArrayDescriptor(data_type=input_type, shape=Shape.image_chw(SIZE, SIZE, C_IN),
                                **descriptor_options),
        weights=NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, C_IN, C_OUT),
                                  data_type=weight_type),
        output=NDArrayDescriptor(data_type=output_type, shape=Shape.image_chw(SIZE - 2, SIZE - 2, C_OUT)),
    )
    out = np.empty((N, C_OUT, SIZE - 2, SIZE - 2), output_dtype)
    with layer:
        layer.apply(N, x, out)
    return out


def report(name, actual, expected, rtol):
    comparison = compare(actual, expected, rtol=rtol)
    relative = comparison.max_abs_error / float(np.abs(expected).max())
    print(f"{name:30s} max |error| / max |expected| = {relative:.1e} (rtol {rtol:g}): "
          f"{'ok' if comparison.ok else 'FAIL'}")
    assert comparison.ok, comparison


# Float16 in, weights and out: the reference sees the same rounded float16 inputs; the result is
# accumulated in float32 and rounded once to float16, so it is within about 1e-3 of the reference.
x16, w16 = x32.astype(np.float16), w32.astype(np.float16)
y16 = run_layer(x16, w16, DataType.float16, DataType.float16, DataType.float16, np.float16)
report("float16 -> float16", y16, reference.conv2d(x16, w16), rtol=1e-3)

# Float16 in, float32 out: only the inputs are rounded.
y = run_layer(x16, w16, DataType.float16, DataType.float16, DataType.float32, np.float32)
report("float16 -> float32", y, reference.conv2d(x16, w16), rtol=1e-5)

# BFloat16: uint16 bit patterns in and out.
xb, wb = float32_to_bfloat16_bits(x32), float32_to_bfloat16_bits(w32)
yb = run_layer(xb, wb, DataType.bfloat16, DataType.bfloat16, DataType.bfloat16, np.uint16)
expected = reference.conv2d(bfloat16_bits_to_float32(xb), bfloat16_bits_to_float32(wb))
report("bfloat16 -> bfloat16", bfloat16_bits_to_float32(yb), expected, rtol=8e-3)

# Int8 input with a scale: value = 0.05 * q. Weights float32, output float32.
q = np.clip(np.round(x32 / 0.05), -127, 127).astype(np.int8)
yq = run_layer(q, w32, DataType.int8, DataType.float32, DataType.float32, np.float32, data_scale=0.05)
report("int8 (scale 0.05) -> float32", yq, reference.conv2d(0.05 * q.astype(np.float64), w32), rtol=1e-5)
print("OK")
