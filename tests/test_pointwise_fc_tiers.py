"""The fully-connected kernel at small batches (engines/fully_connected.c, kernels/fc_tiles.c) and
the pointwise kernel on strided 1x1 layers and small images (engines/direct_pointwise.c) on every
vector tier this CPU runs (BNNS_PY_ISA, in a fresh process), against the float64 reference:

- fully connected: batches 1 to 17 (one block of batch rows up to the tier's most, then blocks of
  equal size), output counts below, at and past a tile and not a multiple of any vector width,
  input counts with every remainder of the vector widths, weights copied (packed into panels at
  creation, the filter's only copy: its gradients too) and client pointers (read in place: weights
  changed between two calls are seen), input rows further apart than their length, 1 and 2
  threads, and each class of fused activation: clamps in the kernel (ReLU, Clamp), elementwise
  after it (sigmoid), channelwise over each row (softmax); and batches past the tiles' (client
  weights: Y^T = W X^T on the AVX-512 tier, OpenBLAS on the others) the same;
- strided 1x1 layers (stride 2 and 3, unequal strides, odd sizes, source images with row and
  pixel strides) and stride-1 layers on 7x7 and 14x14 images, ReLU / Clamp fused or GELU after,
  reported as run by the pointwise kernel, with client-pointer and copied (packed) weights (the
  pixels past the last whole vector: dot products against the weights' rows in both)."""
import json
import os
import subprocess
import sys

import pytest

import bnns_py

pytestmark = pytest.mark.skipif(bnns_py.backend_info()["backend"] != "portable",
                                reason="vector tiers are the portable library's")

CHILD = r"""
import json
import numpy as np
import bnns_py
from bnns_py import (ActivationFunction as AF, ConvolutionType, DataType, FilterParameters, Flags,
                     FullyConnectedLayer, NDArrayDescriptor, Shape, reference)
from conftest import client_layer

rng = np.random.default_rng(5)
backend = bnns_py.get_backend()
worst = {}

def check(name, actual, expected, reduction):
    expected = np.asarray(expected, np.float64)
    error = float(np.abs(actual - expected).max()) / max(1.0, float(np.abs(expected).max()))
    worst[name] = error
    assert error <= 1e-5 * np.sqrt(reduction), (name, error)

ACTIVATIONS = [None, AF.rectified_linear, AF.clamp((-0.3, 0.4)), AF.sigmoid, AF.softmax]
# (batch, in, out): batches 1-17, outputs 1-3 (narrower than a tile), 37, 130; past the tiles'
# batches (client weights: Y^T = W X^T or OpenBLAS) 40 and 258, copied weights on their panels at any batch
FC = [(1, 45, 37), (2, 16, 130), (3, 1, 7), (4, 33, 1), (5, 70, 37), (6, 17, 3), (7, 8, 130), (8, 45, 37),
      (9, 64, 2), (10, 31, 37), (11, 5, 130), (12, 45, 37), (13, 100, 9), (14, 16, 37), (15, 45, 130),
      (16, 47, 37), (17, 45, 37), (40, 45, 37), (41, 45, 37), (257, 20, 50), (258, 20, 50)]
for index, (n, k, m) in enumerate(FC):
    activation = ACTIVATIONS[index % len(ACTIVATIONS)]
    flags = (Flags.none, Flags.use_client_pointer)[index % 2]
    weight = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    rows = rng.standard_normal((n, k + 3 * (index % 3))).astype(np.float32)
    x = rows[:, :k]  # rows further apart than their length for index % 3 != 0
    expected = reference.linear(x, weight, bias, activation=activation)
    for threads in (1, 2):
        layer = FullyConnectedLayer(
            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(k)),
            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(m)),
            NDArrayDescriptor(weight.reshape(-1), Shape.matrix_row_major(k, m)),
            NDArrayDescriptor(bias, Shape.vector(m)), AF.coerce(activation),
            FilterParameters(flags=flags, n_threads=threads))
        with layer:
            out = np.full((n, m), np.nan, np.float32)
            layer.apply(n, np.ascontiguousarray(x), out)
            check(f"fc {n}x{k}->{m} {activation!r} t{threads}", out, expected, k)
            if flags == Flags.use_client_pointer:  # read in place at every call: changes are seen
                weight[::2] *= -0.5
                changed = reference.linear(x, weight, bias, activation=activation)
                layer.apply(n, np.ascontiguousarray(x), out)
                check(f"fc {n}x{k}->{m} {activation!r} t{threads} weights changed", out, changed, k)
                weight[::2] *= -2.0
        check(f"linear {n}x{k}->{m} {activation!r} t{threads} rows {rows.shape[1]}",
              bnns_py.linear(x, weight, bias, activation=activation), expected, k)

# copied weights are held as panels only: the gradients come from the panels unpacked
weight = rng.standard_normal((130, 45)).astype(np.float32)
x, dy = rng.standard_normal((3, 45)).astype(np.float32), rng.standard_normal((3, 130)).astype(np.float32)
layer = FullyConnectedLayer(NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(45)),
                            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(130)),
                            NDArrayDescriptor(weight.copy().reshape(-1), Shape.matrix_row_major(45, 130)))
with layer:
    y, dx, dw = np.empty((3, 130), np.float32), np.empty_like(x), np.empty_like(weight)
    layer.apply(3, x, y)
    layer.apply_backward(3, x, y, dy, dx, dw)
dx_ref, dw_ref, _ = reference.linear_backward(x, weight, dy)
check("fc copied 3x45->130 dx", dx, dx_ref, 130)
check("fc copied 3x45->130 dw", dw, dw_ref, 3)

# (batch, cin, cout, h, w, stride (h, w), input strides (x, row, channel; 0: packed))
POINTWISE = [(2, 64, 40, 28, 28, (2, 2), (0, 0, 0)), (3, 9, 11, 8, 33, (2, 2), (0, 0, 0)),
             (1, 17, 30, 15, 15, (3, 3), (0, 0, 0)), (2, 5, 7, 13, 40, (1, 2), (0, 0, 0)),
             (2, 5, 7, 13, 40, (2, 1), (0, 0, 0)), (2, 6, 19, 12, 11, (2, 2), (2, 25, 12 * 25)), (2, 7, 9, 10, 20, (2, 2), (1, 23, 10 * 23)),
             (8, 40, 33, 14, 14, (2, 2), (0, 0, 0)), (8, 24, 36, 7, 7, (1, 1), (0, 0, 0)),
             (3, 24, 70, 14, 14, (1, 1), (0, 0, 0)), (1, 300, 20, 14, 14, (2, 2), (0, 0, 0))]
CONV_ACTIVATIONS = [AF.rectified_linear, AF.clamp((-0.2, 0.3)), AF.gelu, None]
for index, (n, cin, cout, h, w, stride, strides) in enumerate(POINTWISE):
    activation = CONV_ACTIVATIONS[index % len(CONV_ACTIVATIONS)]
    weight = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    sx, sy, sc = strides
    wide_x = rng.standard_normal((n, cin, h, sy or w)).astype(np.float32)
    x = wide_x[..., :(sx or 1) * w:sx or 1]  # pixels sx apart in rows of sy values
    expected = reference.conv2d(x, weight, bias, stride=stride, activation=activation)
    for threads in (1, 2):
        layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (1, 1), stride, (0, 0, 0, 0),
                                       (1, 1), 1, weight, bias, AF.coerce(activation), threads,
                                       flags=(None, Flags.none)[(index + threads) % 2], input_strides=strides)
        with layer:
            engine = backend.filter_engine(layer.bnns_filter)
            assert engine == "direct pointwise", (n, cin, cout, h, w, stride, engine)
            out = np.full((n, cout, oh, ow), np.nan, np.float32)
            layer.apply(n, NDArrayDescriptor(wide_x.reshape(-1), layer.input_descriptor.shape, batch_size=n), out)
        check(f"1x1 {n}x{cin}->{cout} {h}x{w} s{stride} {strides} {activation!r} t{threads}", out, expected, cin)
print(json.dumps(dict(isa=bnns_py.backend_info()["isa"], worst=worst)))
"""

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = bnns_py.backend_info().get("isa_available", "").split()


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_fc_and_pointwise_kernels_on_each_tier_against_float64(isa):
    if isa not in AVAILABLE:
        pytest.skip(f"this CPU / build does not run the {isa} tier (it runs: {' '.join(AVAILABLE)})")
    env = dict(os.environ, BNNS_PY_ISA=isa)
    env.pop("BNNS_PY_PORTABLE_ENGINE", None)
    child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600,
                           cwd=TESTS_DIR)
    assert child.returncode == 0, child.stderr[-3000:]
    info = json.loads(child.stdout.strip().splitlines()[-1])
    assert info["isa"] == isa
    assert len(info["worst"]) == 21 * 2 * 2 + 10 * 2 + 2 + 11 * 2
