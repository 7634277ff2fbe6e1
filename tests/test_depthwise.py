"""Depthwise layers forward over batches, odd channel counts, depth multipliers and thread counts (the
engine's task walk, each kernel), and 3x3 layers at stride 2 (MobileNet's downsampling layers: the strip kernel that splits
input rows into even and odd columns in registers) against the float64 reference: forward with a
fused clamp (ReLU6, Clamp) or an activation applied afterwards (sigmoid), the input and weight
gradients (but through ReLU6, which BNNS does not differentiate), odd and even sizes, paddings 0 and 1 on either side, packed inputs and inputs whose
rows lie further apart than their width, batch 2; and the same on every vector tier in a child
process."""
import numpy as np
import pytest

from bnns_py import ActivationFunction as AF, ConvolutionType, reference

from conftest import (assert_close_to_reference, client_layer, input_batch, random_array, row_gap_strides,
                      run_child_on_tier)

SIZES = [(1, 1), (2, 5), (7, 9), (14, 14), (15, 13), (28, 28), (33, 50)]
PADS = [(1, 1, 1, 1), (0, 1, 0, 1), (1, 0, 1, 0), (0, 0, 0, 0)]  # (left, right, top, bottom)
ACTIVATIONS = [AF.relu6, AF.clamp((-0.25, 0.5)), AF.sigmoid]


def stride2_case(rng, h, w, pad, row_gap, activation, n=2, c=5, n_threads=1):
    """Forward, dx and dW of a 3x3 / stride 2 depthwise layer against the reference."""
    weight, bias = random_array(rng, (c, 1, 3, 3), 0.5), random_array(rng, (c,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, c, c, h, w, (3, 3), (2, 2), pad, (1, 1), c, weight, bias,
                                   activation, n_threads, input_strides=row_gap_strides(h, w, row_gap))
    wide_x = random_array(rng, (n, c, h, w + row_gap)) * 3
    wide_dx = np.full(wide_x.shape, np.nan, np.float32)
    x = wide_x[..., :w]
    with layer:
        y = np.full((n, c, oh, ow), np.nan, np.float32)
        layer.apply(n, input_batch(layer, wide_x, n), y)
        kw = dict(stride=2, padding=pad, groups=c)
        assert_close_to_reference(y, reference.conv2d(x, weight, bias, activation=activation, **kw), 9, "forward")
        if activation == AF.relu6:
            return
        dy = random_array(rng, y.shape)
        dw = np.full(weight.shape, np.nan, np.float32)
        layer.apply_backward(n, input_batch(layer, wide_x, n), y, dy, input_batch(layer, wide_dx, n), dw)
    dx_ref, dw_ref, _ = reference.conv2d_backward(x, weight, dy, output=y, bias=True, activation=activation, **kw)
    assert_close_to_reference(wide_dx[..., :w], dx_ref, 9, "input gradient")
    assert_close_to_reference(dw, dw_ref, n * oh * ow, "weight gradient")
    assert np.isnan(wide_dx[..., w:]).all(), "wrote into the gaps between rows"


def fits(size, pad):
    """At least one output pixel."""
    return size[0] + pad[2] + pad[3] >= 3 and size[1] + pad[0] + pad[1] >= 3


@pytest.mark.parametrize("row_gap", [0, 3])
@pytest.mark.parametrize("size,pad", [(s, p) for s in SIZES for p in PADS if fits(s, p)])
def test_stride2_3x3_matches_reference(size, pad, row_gap, rng, no_filter_leaks):
    activation = ACTIVATIONS[(SIZES.index(size) + PADS.index(pad)) % len(ACTIVATIONS)]
    stride2_case(rng, size[0], size[1], pad, row_gap, activation)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_stride2_3x3_mobilenet_layer_over_threads(n_threads, rng, no_filter_leaks):
    stride2_case(rng, 56, 56, (1, 1, 1, 1), 0, AF.relu6, n=3, c=24, n_threads=n_threads)


CHILD = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import test_depthwise
rng = np.random.default_rng(11)
for size in [(7, 9), (14, 14), (15, 13), (28, 28), (33, 50)]:
    for pad in test_depthwise.PADS:
        for row_gap in (0, 3):
            for activation in test_depthwise.ACTIVATIONS:
                test_depthwise.stride2_case(rng, size[0], size[1], pad, row_gap, activation)
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_stride2_3x3_on_each_tier(isa):
    run_child_on_tier(isa, CHILD)


def forward_case(rng, n, c, multiplier, h, w, k, stride, pad, activation, n_threads):
    """Forward of a depthwise layer (c groups, `multiplier` output channels each) against the reference."""
    cout = c * multiplier
    weight, bias = random_array(rng, (cout, 1, k, k), 0.5), random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, c, cout, h, w, (k, k), (stride, stride), pad, (1, 1), c,
                                   weight, bias, activation, n_threads)
    x = random_array(rng, (n, c, h, w)) * 3
    y = np.full((n, cout, oh, ow), np.nan, np.float32)
    with layer:
        layer.apply(n, x, y)
    expected = reference.conv2d(x, weight, bias, stride=stride, padding=pad, groups=c, activation=activation)
    assert_close_to_reference(y, expected, k * k, "forward")


# Every plane of every image, in tasks that the workers split anywhere (mid-image, between the two
# planes of a pair): odd channel counts, no multiple of 16, depth multipliers 1 and 2, each kernel.
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("c,multiplier", [(5, 1), (17, 1), (3, 2)])
@pytest.mark.parametrize("h,w,k,stride", [
    (7, 7, 3, 1),     # 3x3 pairs (AVX-512), strips elsewhere
    (14, 14, 3, 2),   # 3x3 pairs at stride 2 (AVX-512)
    (14, 14, 3, 1),   # 3x3 strips
    (9, 37, 3, 1),    # rows of several vectors: strips or the padded plane
    (11, 13, 5, 2),   # padded plane (prefetching the next channel's plane)
])
def test_forward_over_batch_channels_and_threads(n_threads, c, multiplier, h, w, k, stride, rng, no_filter_leaks):
    activation = ACTIVATIONS[(c + h + n_threads) % len(ACTIVATIONS)]
    forward_case(rng, 3, c, multiplier, h, w, k, stride, (k // 2,) * 4, activation, n_threads)


# Inputs over the engine's 8 MB threshold: the 3x3 strips prefetch the next plane as they go.
@pytest.mark.parametrize("stride", [1, 2])
def test_forward_of_an_input_larger_than_the_caches(stride, rng, no_filter_leaks):
    forward_case(rng, 9, 19, 1, 113, 113, 3, stride, (1, 1, 1, 1), AF.relu6, 2)


@pytest.mark.parametrize("n_threads", [2, 3])
def test_stride2_3x3_gradients_over_threads(n_threads, rng, no_filter_leaks):
    stride2_case(rng, 15, 29, (1, 1, 1, 1), 0, AF.clamp((-0.25, 0.5)), n=3, c=17, n_threads=n_threads)


# The input gradient of 3x3 stride-2 layers runs on the depthwise kernels (dx rows from their even
# and odd columns), other stride-2 kernels on col2im.
@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("k,expected", [(3, "depthwise"), (5, "im2col")])
def test_stride2_input_gradient_engine(k, expected, backend, monkeypatch, no_filter_leaks):
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    weight = np.zeros((8, 1, k, k), np.float32)
    layer, _ = client_layer(ConvolutionType.standard, 8, 8, 20, 20, (k, k), (2, 2), (1, 1, 1, 1), (1, 1), 8,
                            weight, None, AF.identity, 1)
    with layer:
        assert backend.filter_engine(layer.bnns_filter, "input_gradient") == expected
