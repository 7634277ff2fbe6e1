"""Quick start: a BNNS convolution on the default backend, checked against the numpy reference.

Run:  python examples/quickstart.py
On macOS this runs Apple's BNNS (Accelerate); elsewhere bnns-py's portable implementation.
"""
import numpy as np

import bnns_py
from bnns_py import (ActivationFunction, ConvolutionLayer, ConvolutionPadding, ConvolutionType,
                     DataType, NDArrayDescriptor, Shape, reference)

info = bnns_py.backend_info()
print(f"bnns-py {bnns_py.__version__} on the {info['backend']} backend ({info['library']})")

rng = np.random.default_rng(0)
x = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)          # N, C, H, W
weight = (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)  # out, in, kH, kW
bias = rng.standard_normal(32).astype(np.float32)

# 1. numpy-first, PyTorch conventions
y = bnns_py.conv2d(x, weight, bias, stride=1, padding=1, activation="relu")
expected = reference.conv2d(x, weight, bias, padding=1, activation=ActivationFunction.rectified_linear)
print(f"conv2d: {x.shape} -> {y.shape}, max |bnns - reference| = {np.abs(y - expected).max():.2e}")

# 2. The Swift-style layer object, reused across calls (sizes are in BNNS order: width first)
layer = ConvolutionLayer(
    type=ConvolutionType.standard,
    input=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(32, 32, 16)),
    weights=NDArrayDescriptor(weight, Shape.convolution_weights_oihw(3, 3, 16, 32)),
    output=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(16, 16, 32)),
    bias=NDArrayDescriptor(bias, Shape.vector(32)),
    padding=ConvolutionPadding.symmetric(x=1, y=1),
    activation=ActivationFunction.leaky_rectified_linear(alpha=0.1),
    stride=(2, 2),
)
with layer:
    out = np.empty((8, 32, 16, 16), np.float32)
    layer.apply(8, x, out)
expected = reference.conv2d(x, weight, bias, stride=2, padding=1,
                            activation=ActivationFunction.leaky_rectified_linear(alpha=0.1))
error = np.abs(out - expected).max()
print(f"ConvolutionLayer (stride 2, leaky ReLU): {out.shape}, max |bnns - reference| = {error:.2e}")
assert error < 1e-3, "BNNS output disagrees with the reference"
print("OK")
