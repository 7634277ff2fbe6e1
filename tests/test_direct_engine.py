"""The portable library's direct convolution engine: both of its kernels ("rows": lanes over
pixels, "pixels": lanes over channels, with tiles within rows or, "flat-pixels", over flat
positions) and the im2col engine, each forced with
BNNS_PY_PORTABLE_ENGINE, on the same geometries, against the float64 reference: forward and
backward (input gradient set and accumulated, weight and bias gradients), standard and transposed,
at 1 and 2 threads. The geometries reach the engine's edges: strides 1-3 (source phases forward,
output phases backward, phases without taps), dilation, asymmetric and over-sized padding, groups,
channel counts that leave partial blocks, row widths that leave partial tiles, several bands of
rows, strided gradients. The filter reports which kernels ran, so a test cannot pass on the wrong
path."""
import fnmatch

import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction as AF, ConvolutionType, Flags, NDArrayDescriptor, NDArrayFlags, Shape,
                     reference)
from bnns_py.functional import transposed_weight_to_bnns

from conftest import (backward_into_nan, client_layer, input_batch, random_array, run_child_on_tier,
                      standard_case_layer, transposed_case_layer)

pytestmark = pytest.mark.requires_portable_internals

# BNNS_PY_PORTABLE_ENGINE value -> what the filter reports for its forward / input-gradient pass
# and for its weight gradient
ENGINES = {
    "rows": ("direct rows", "direct"),
    "pixels": ("direct pixels", "direct"),
    "flat-pixels": ("direct flat pixels", "direct"),
    "im2col": ("im2col", "im2col"),
}

# (batch, cin, cout, h, w, k (h, w), stride, pad (l, r, t, b), dilation, groups)
GEOMETRIES = [
    (2, 13, 37, 11, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # partial channel blocks and tiles
    (1, 8, 70, 9, 50, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),      # 70 channels: blocks of 64 + 6
    (3, 6, 9, 14, 15, (3, 2), (2, 1), (0, 2, 1, 0), (1, 2), 1),      # stride 2 rows only, dilation 2 columns
    (1, 3, 16, 30, 31, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),     # stem-like: four source phases
    (2, 10, 12, 13, 12, (3, 3), (3, 3), (2, 0, 0, 1), (2, 1), 2),    # stride 3, groups 2
    (1, 16, 8, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),       # small image: several rows per tile
    (2, 5, 7, 10, 9, (5, 5), (1, 1), (4, 3, 0, 4), (1, 1), 1),       # padding near the kernel size
    (1, 9, 11, 8, 33, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),      # 1x1 with stride: not a plain GEMM
    (1, 4, 3, 6, 1, (3, 1), (1, 1), (0, 0, 1, 1), (1, 1), 1),        # one column wide
    (2, 24, 20, 40, 34, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1),    # dilated 'same': bands of rows
    (11, 96, 260, 5, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # weights >> planes: image groups 6 + 5
    (1, 300, 20, 9, 9, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),     # 1200 planes of 5 rows: one band, 3 chunks
    (1, 3, 16, 12, 75, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),     # stride 2: rows of 37 column pairs split
    (2, 5, 8, 9, 80, (1, 5), (1, 2), (2, 1, 0, 0), (1, 1), 1),       # the same, asymmetric padding
]


def _ids(cases):
    return ["x".join(map(str, (c[0], c[1], c[2], c[3], c[4]))) + f"_k{c[5][0]}{c[5][1]}_s{c[6][0]}{c[6][1]}"
            for c in cases]


@pytest.fixture
def engine(request, monkeypatch):
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", request.param)
    return request.param


def _check_engine(backend, layer, engine, passes=("forward",)):
    for pass_ in passes:
        reported = backend.filter_engine(layer.bnns_filter, pass_)
        expected = {ENGINES[engine][pass_ == "weights_gradient"]}
        if engine == "im2col" and pass_ == "forward":
            expected.add("tiny")  # the im2col engine's kernel for tiny layers
        if engine == "rows" and pass_ != "weights_gradient":  # its tiles over whole vectors of the output
            expected.add("direct row vectors")  # rows (a transposed layer's input gradient is a forward pass)
        assert reported in expected, f"asked for {engine}, the filter's {pass_} runs {reported}"


def _tolerance(reduction):
    return 1e-4 * np.sqrt(reduction)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("case", GEOMETRIES, ids=_ids(GEOMETRIES))
@pytest.mark.parametrize("engine", list(ENGINES), indirect=True)
def test_standard_forward_and_backward(case, engine, n_threads, backend, rng, no_filter_leaks):
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x, weight, bias, layer, (oh, ow) = standard_case_layer(rng, case, AF.identity, n_threads)
    with layer:
        _check_engine(backend, layer, engine, ("forward", "input_gradient", "weights_gradient"))
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = backward_into_nan(layer, n, x, y, dy, weight.shape, bias.shape)
    depth = cin // groups * k[0] * k[1]
    expected = reference.conv2d(x, weight, bias, stride=stride, padding=pad, dilation=dil, groups=groups)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(depth))
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, stride=stride, padding=pad, dilation=dil,
                                                       groups=groups)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=_tolerance(cout * k[0] * k[1]))
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=_tolerance(n * oh * ow))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=_tolerance(n * oh * ow))


@pytest.mark.parametrize("case", [GEOMETRIES[0], GEOMETRIES[2], GEOMETRIES[3]], ids=_ids([GEOMETRIES[0], GEOMETRIES[2],
                                                                                       GEOMETRIES[3]]))
@pytest.mark.parametrize("engine", list(ENGINES), indirect=True)
def test_strided_input_and_accumulated_gradient(case, engine, backend, rng, no_filter_leaks):
    """x read from, and dx added into, every other column of wider images."""
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    weight = random_array(rng, (cout, cin // groups) + k, 0.3)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, k, stride, pad, dil, groups, weight,
                                   None, AF.identity, 2, input_strides=(2, 2 * w, 2 * w * h))
    wide_x, wide_dx = random_array(rng, (n, cin, h, 2 * w)), random_array(rng, (n, cin, h, 2 * w))
    start = wide_dx.copy()
    x = wide_x[..., ::2]
    with layer:
        _check_engine(backend, layer, engine, ("input_gradient",))
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, input_batch(layer, wide_x, n), y)
        dy = random_array(rng, y.shape)
        dx = input_batch(layer, wide_dx, n, flags=NDArrayFlags.backprop_accumulate)
        layer.apply_backward(n, input_batch(layer, wide_x, n), y, dy, dx)
    np.testing.assert_allclose(y, reference.conv2d(x, weight, stride=stride, padding=pad, dilation=dil, groups=groups),
                               rtol=1e-4, atol=_tolerance(cin * k[0] * k[1]))
    dx_ref = reference.conv2d_backward(x, weight, dy, stride=stride, padding=pad, dilation=dil, groups=groups)[0]
    np.testing.assert_allclose(wide_dx[..., ::2], start[..., ::2] + dx_ref, rtol=1e-4,
                               atol=_tolerance(cout * k[0] * k[1]))
    np.testing.assert_array_equal(wide_dx[..., 1::2], start[..., 1::2])


# (batch, cin, cout, h, w, k, stride, pad, output_padding-free sizes come from pad), dilation, groups
TRANSPOSED = [
    (2, 40, 24, 9, 8, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1),      # the benchmark's 4x4 / 2 shape, smaller
    (1, 12, 70, 5, 7, (3, 3), (2, 2), (1, 0, 0, 1), (1, 1), 1),      # odd output sizes per phase
    (2, 7, 9, 6, 5, (2, 2), (3, 3), (0, 0, 0, 0), (1, 1), 1),        # stride 3 > kernel: phases without taps
    (1, 8, 12, 6, 6, (3, 3), (2, 1), (2, 0, 1, 2), (2, 1), 2),       # dilation, groups (forward only)
    (3, 16, 16, 10, 11, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # stride 1: one phase
    (1, 37, 70, 6, 5, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1),      # blocks of 64 + 6 channels; the input
    (2, 37, 70, 6, 5, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1),      # gradient's 1120 steps in two chunks
]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("case", TRANSPOSED, ids=_ids(TRANSPOSED))
@pytest.mark.parametrize("engine", list(ENGINES), indirect=True)
def test_transposed_forward_and_backward(case, engine, n_threads, backend, rng, no_filter_leaks):
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x, torch_weight, bias, layer, (oh, ow) = transposed_case_layer(rng, case, AF.tanh, n_threads)
    with layer:
        _check_engine(backend, layer, engine)
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
        if groups == 1:  # BNNS does not differentiate grouped transposed layers
            _check_engine(backend, layer, engine, ("input_gradient", "weights_gradient"))
            dy = random_array(rng, y.shape)
            dx, dw, db = backward_into_nan(layer, n, x, y, dy, (cout, cin) + k, bias.shape)  # dw: BNNS OIHW
    expected = reference.conv_transpose2d(x, torch_weight, bias, stride=stride, padding=pad, dilation=dil,
                                          groups=groups, activation=AF.tanh)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(cin // groups * k[0] * k[1]))
    if groups == 1:
        dz = dy * (1 - expected.astype(np.float64) ** 2)  # through tanh, from its output
        dx_ref, dw_ref, db_ref = reference.conv_transpose2d_backward(x, torch_weight, dz, stride=stride, padding=pad,
                                                                     dilation=dil)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=_tolerance(cout * k[0] * k[1]))
        np.testing.assert_allclose(dw, transposed_weight_to_bnns(dw_ref, 1), rtol=1e-4, atol=_tolerance(n * h * w))
        np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=_tolerance(n * oh * ow))


@pytest.mark.parametrize("activation", ["identity", "relu6", "sigmoid"])
@pytest.mark.parametrize("engine", ["rows", "pixels"], indirect=True)
def test_outputs_over_16_mib_are_streamed_right(engine, activation, backend, rng, no_filter_leaks):
    """A call whose output exceeds 16 MiB stores it with non-temporal stores (rows of 182 values:
    unaligned heads and tails around the streamed vectors), with the bias added, a clamping
    activation applied before the values are streamed, another one after they are stored."""
    n, cin, cout, h, w = 2, 2, 64, 182, 182
    act = ACTIVATIONS[activation]
    x = random_array(rng, (n, cin, h, w), 3.0)
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    bias = random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                   1, weight, bias, act, 2)
    with layer:
        _check_engine(backend, layer, engine)
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        assert y.nbytes > 16 << 20
        layer.apply(n, x, y)
    expected = reference.conv2d(x, weight, bias, padding=1, activation=act)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=3 * _tolerance(cin * 9))


# Clamping activations (ReLU, ReLU6, Clamp) are applied as the results are stored, others after
ACTIVATIONS = {"identity": AF.identity, "relu": AF.rectified_linear, "relu6": AF.relu6,
               "clamp": AF.clamp((-0.3, 0.4)), "sigmoid": AF.sigmoid}

# (batch, cin, cout, h, w, k, stride, pad): the stem's shape scaled down (7x7 stride 2; 70
# channels: a block of 64 transposed 8 x 8 at a time, 6 more one by one; rows of 15, not a
# multiple of 8), a 7x7 image of 3x3 taps (one tile per row), and a stride-2 3x3 layer
FUSED = [
    (2, 3, 70, 30, 29, (7, 7), (2, 2), (3, 3, 3, 3)),
    (1, 40, 24, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1)),
    (2, 19, 33, 17, 16, (3, 3), (2, 2), (1, 1, 1, 1)),
]


def _forward_on_engine(case, act, engine, n_threads, backend, rng):
    """x, weight, bias and the output of a (batch, cin, cout, h, w, k, stride, pad) case's layer with
    activation act, run on the engine asked for."""
    n, cin, cout, h, w, k, stride, pad = case
    x = random_array(rng, (n, cin, h, w), 3.0)
    weight = random_array(rng, (cout, cin) + k, 0.3)
    bias = random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, k, stride, pad, (1, 1), 1, weight,
                                   bias, act, n_threads)
    with layer:
        _check_engine(backend, layer, engine)
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
    return x, weight, bias, y


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("case", FUSED, ids=["stem-like", "7x7-image", "3x3-stride-2"])
@pytest.mark.parametrize("engine", ["rows", "pixels", "flat-pixels"], indirect=True)
def test_fused_activations(engine, case, activation, backend, rng, no_filter_leaks):
    """The bias and the activation on every kernel's outputs, inputs wide enough that every clamp
    bound is reached."""
    n, cin, cout, h, w, k, stride, pad = case
    act = ACTIVATIONS[activation]
    x, weight, bias, y = _forward_on_engine(case, act, engine, 2, backend, rng)
    expected = reference.conv2d(x, weight, bias, stride=stride, padding=pad, activation=act)
    raw = reference.conv2d(x, weight, bias, stride=stride, padding=pad)
    bounds = {"relu": (0.0, None), "relu6": (0.0, 6.0), "clamp": (-0.3, 0.4)}.get(activation, (None, None))
    assert bounds[0] is None or (raw < bounds[0]).any()
    assert bounds[1] is None or (raw > bounds[1]).any()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=3 * _tolerance(cin * k[0] * k[1]))


# (batch, cin, cout, h, w, k, stride, pad): forward pixels plans whose steps fit one chunk emit each
# output row as soon as its tiles are computed, so their bands are as tall as the planes allow:
# the stem's shape with 60 and 56 output rows in one band (two on 2 threads; 70 channels: a block
# of 64 and one of 6), a ResNet-18 stride-2 3x3 layer scaled down, and a layer of more steps than
# a chunk (the band's results kept between chunks)
TALL_BANDS = [
    (1, 3, 70, 120, 29, (7, 7), (2, 2), (3, 3, 3, 3)),
    (2, 3, 64, 113, 37, (7, 7), (2, 2), (3, 2, 3, 2)),
    (3, 16, 72, 59, 31, (3, 3), (2, 2), (1, 1, 1, 1)),
    (1, 130, 64, 41, 23, (3, 3), (2, 2), (1, 1, 1, 1)),
]


@pytest.mark.parametrize("activation", ["identity", "relu", "sigmoid"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("case", TALL_BANDS, ids=["stem-60-rows", "stem-56-rows-batch-2", "3x3-stride-2",
                                                  "1170-steps"])
@pytest.mark.parametrize("engine", ["pixels", "flat-pixels"], indirect=True)
def test_tall_bands_emitted_row_by_row(engine, case, n_threads, activation, backend, rng, no_filter_leaks):
    n, cin, cout, h, w, k, stride, pad = case
    act = ACTIVATIONS[activation]
    x, weight, bias, y = _forward_on_engine(case, act, engine, n_threads, backend, rng)
    expected = reference.conv2d(x, weight, bias, stride=stride, padding=pad, activation=act)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=3 * _tolerance(cin * k[0] * k[1]))


@pytest.mark.parametrize("engine", ["rows", "pixels", "flat-pixels"], indirect=True)
@pytest.mark.parametrize("client", [True, False])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("n,cin,cout,h,w", [(1, 32, 48, 7, 7), (4, 64, 200, 5, 5), (1, 131, 80, 7, 6),
                                            (3, 120, 136, 5, 5)],
                         ids=["one-image", "image-group", "one-image-chunks", "image-group-chunks"])
def test_weights_are_read_at_each_call_or_copied(engine, client, n_threads, n, cin, cout, h, w, backend, rng,
                                                 no_filter_leaks):
    """Client-pointer filters pack the caller's weights at every call (changes are seen), chunk by
    chunk for one image or a group of images (weights that outweigh their planes) or else up front;
    copied filters packed them at creation (later changes are not). Over 1024 reduction steps
    (131 or 120 channels x 9 taps) a block packs several chunks, the next one's weights fetched
    while the current one computes; 80 and 136 channels leave a partial block."""
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    original = weight.copy()
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                   1, weight, None, AF.identity, n_threads, flags=None if client else Flags.none)
    with layer:
        _check_engine(backend, layer, engine)
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        np.testing.assert_allclose(y, reference.conv2d(x, original, padding=1), rtol=1e-4, atol=1e-3)
        weight[: cout // 2] *= -2.0  # the first block's channels, and in the last chunk only the last input channel
        weight[-1, -1] += 1.0
        layer.apply(n, x, y)
    now = weight if client else original
    np.testing.assert_allclose(y, reference.conv2d(x, now, padding=1), rtol=1e-4, atol=2e-3)


# (n, cin, cout, groups, activation, engine): the 512-channel 7x7 layer of ResNet's last stage at
# batch 1 (one image: each block's chunks packed as its kernel needs them) and 2 (an image group),
# the kernel the engine picks; odd channel counts whose blocks end in partial 16- and 8-row groups
# of the packing's transposes; groups; fused activations.
IN_PLACE = [  # the 512-channel layer: the pixels kernel runs it below batch 8 (from 8, Winograd F(4x4))
    (1, 512, 512, 1, AF.identity, "pixels"),
    (2, 512, 512, 1, AF.rectified_linear, "pixels"),
    (1, 67, 101, 1, AF.relu6, "pixels"),
    (3, 90, 46, 2, AF.clamp((-0.3, 0.4)), "flat-pixels"),
]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("n,cin,cout,groups,activation,engine", IN_PLACE,
                         ids=["c5-b1", "c5-b2", "odd-channels", "groups"])
def test_client_weights_changed_in_place_give_the_new_results(n, cin, cout, groups, activation, engine, n_threads,
                                                              backend, rng, monkeypatch, no_filter_leaks):
    """Client-pointer weights are packed at every call, block by block from the caller's array:
    changed in place between calls, each call gives the results of the weights it saw, which a
    stale packed copy would not."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", engine)
    x = random_array(rng, (n, cin, 7, 7))
    weight = random_array(rng, (cout, cin // groups, 3, 3), 0.3)
    bias = random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                   groups, weight, bias, activation, n_threads)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) in {"direct pixels", "direct flat pixels"}
        outputs = []
        for change in range(3):
            if change == 1:
                weight[: cout // 3] *= -2.0  # the first blocks' channels
                weight[-1, -1] += 1.0        # the last channel's last input channel: the last step of the last chunk
            elif change == 2:
                weight[:] = random_array(rng, weight.shape, 0.3)
            y = np.full((n, cout, oh, ow), np.nan, np.float32)
            layer.apply(n, x, y)
            outputs.append(y)
            expected = reference.conv2d(x, weight, bias, padding=1, groups=groups, activation=activation)
            np.testing.assert_allclose(y, expected, rtol=1e-4, atol=3 * _tolerance(cin // groups * 9))
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])


# Which kernels run by themselves: the im2col engine keeps what is tiny; the direct engine takes
# the rest (1x1 layers: its pointwise kernel, on every instruction set), and on AVX-512 its choice
# for the benchmark's ResNet-50 shapes (batch 1) is pinned (other instruction sets have other
# tiles, hence other choices).
AUTO = [
    ((64, 64, 56, 3, 1, 1, 1), "winograd"),          # dense 3x3, stride 1: Winograd F(2x2, 3x3)
    ((32, 64, 56, 3, 1, 1, 1), "winograd"),          # the fewest channels its products take
    ((64, 32, 16, 3, 1, 1, 1), "direct row vectors"),  # 32 output channels: Winograd's products too
    ((64, 16, 56, 3, 1, 1, 1), "direct rows"),         # narrow on AVX-512 (other tiers: Winograd)
    ((16, 64, 56, 3, 1, 1, 1), "direct pixels"),     # 16 input channels: too few for Winograd
    ((64, 8, 56, 3, 1, 1, 1), "direct rows"),        # 8 output channels: too few
    ((512, 512, 7, 3, 1, 1, 1), "direct panel"),     # batch 1: the panel path (F(4x4) Winograd from batch 8)
    ((32, 32, 3, 3, 1, 1, 1), "tiny"),               # 3x3 outputs: too small for Winograd (tiny path)
    ((256, 256, 28, 3, 1, 2, 2), "winograd"),        # dilated: 4 output phases of 14 x 14
    ((256, 256, 12, 3, 1, 4, 4), "direct pixels"),   # dilation 4: phases of 3 x 3, too small
    ((16, 64, 16, 3, 1, 1, 1), "direct pixels"),     # rows of 16 in tiles of 4, not 18 (padding) flat
    ((16, 64, 22, 3, 1, 1, 1), "direct flat pixels"),  # rows of 22 (24 with padding) in flat tiles of 7
    ((64, 64, 16, 3, 2, 1, 1), "direct pixels"),     # stride 2 (no Winograd): rows of 8 in tiles of 4
    ((256, 512, 14, 3, 2, 1, 1), "direct panel"),    # stride 2 to 7 x 7, 2304 steps: the panel path
    ((3, 64, 224, 7, 2, 1, 3), "direct row vectors"),  # the stem: rows of 7 vectors, stored in place
    ((3, 32, 224, 3, 2, 1, 1), "direct row vectors"),  # MobileNetV2's first: 27 steps, no copy or transposes
    ((64, 3, 56, 3, 1, 1, 1), "direct rows"),        # 3 output channels: lanes over pixels instead
    ((256, 64, 56, 1, 1, 1, 0), "direct pointwise"), # 1x1: the image already is the GEMM's matrix
    ((64, 128, 56, 1, 2, 1, 0), "direct pointwise"), # strided 1x1: the kernel on gathered pixels
    ((256, 64, 1, 1, 1, 1, 0), "fully connected"),   # 1x1 on 1x1 images: one matrix product
    ((8, 8, 8, 3, 1, 1, 1), "tiny"),                 # tiny: straight from padded planes
]


@pytest.mark.parametrize("shape,expected", AUTO)
def test_automatic_kernel_choice(shape, expected, backend, monkeypatch, no_filter_leaks):
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    cin, cout, size, k, stride, dil, pad = shape
    weight = np.zeros((cout, cin, k, k), np.float32)
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, size, size, (k, k), (stride, stride),
                            (pad,) * 4, (dil, dil), 1, weight, None, AF.identity, 1)
    with layer:
        chosen = backend.filter_engine(layer.bnns_filter)
    avx512 = bnns_py.backend_info()["simd"] == "AVX-512"
    if expected in ("direct pointwise", "direct panel", "im2col", "tiny", "winograd", "fully connected") or avx512:
        assert chosen == expected
    elif k == 3 and stride == 1 and dil == 1 and cin >= 32 and cout >= 16:
        assert chosen == "winograd"  # the other tiers' product blocks are 16 channels wide
    else:
        assert chosen.startswith("direct")


# The input gradient onto 16 channels (one vector of them on AVX-512): tiles of whole row
# vectors of pixels (rows of 32 and 16: tiles of 16), not flat tiles of 24, which ran 1.2-1.7x
# slower there (1 thread, batch 8 and 32); rows of 28 still split with less waste flat; 3 channels
# (the stem's input gradient) on the rows kernel. Odd sizes and a 5x5, a stride-2 and a 1-image
# case check the results against the float64 reference.
AUTO_INPUT_GRADIENT = [
    ((2, 16, 16, 32, 32, (3, 3), (1, 1), (1, 1, 1, 1)), "direct pixels"),
    ((2, 16, 24, 16, 16, (3, 3), (1, 1), (1, 1, 1, 1)), "direct pixels"),
    ((1, 16, 16, 32, 32, (5, 5), (1, 1), (2, 2, 2, 2)), "direct pixels"),
    ((2, 16, 32, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1)), "direct pixels"),
    ((2, 16, 16, 28, 28, (3, 3), (1, 1), (1, 1, 1, 1)), "direct flat pixels"),
    ((2, 15, 17, 31, 33, (3, 3), (1, 1), (1, 1, 1, 1)), None),
    ((2, 3, 16, 32, 32, (3, 3), (1, 1), (1, 1, 1, 1)), "direct rows"),
]


@pytest.mark.parametrize("case,expected", AUTO_INPUT_GRADIENT, ids=lambda v: str(v))
def test_input_gradient_onto_few_channels(case, expected, backend, rng, monkeypatch, no_filter_leaks):
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    n, cin, cout, h, w, k, stride, pad = case
    weight = random_array(rng, (cout, cin) + k, 0.3)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, k, stride, pad, (1, 1), 1, weight,
                                   None, AF.identity, 2)
    x = random_array(rng, (n, cin, h, w))
    with layer:
        chosen = backend.filter_engine(layer.bnns_filter, "input_gradient")
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx = np.full(x.shape, np.nan, np.float32)
        layer.apply_backward(n, x, y, dy, dx)
    if expected is not None and bnns_py.backend_info()["simd"] == "AVX-512":
        assert chosen == expected
    else:
        assert chosen.startswith("direct")
    dx_ref = reference.conv2d_backward(x, weight, dy, stride=stride, padding=pad)[0]
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=_tolerance(cout * k[0] * k[1]))


# The AVX2 tier's choice (16 registers: row-vector tiles of 4 channels x 3 vectors of 8) for the
# layers whose kernel the row-vector tiles moved there, each the faster one measured (1 thread,
# batch 1, kernels alternating in one process: row vectors 1.05-1.18x flat pixels on stride-1
# layers and the stem; flat pixels 1.05x and 1.15x the row vectors on MobileNetV2's first layer
# and the 64 -> 64 3x3/2 layer at 16x16, strided layers whose tiles read the source's phases).
AVX2_AUTO = [
    ((3, 64, 224, 7, 2, 3), "direct row vectors"),   # the stem
    ((3, 32, 224, 3, 2, 1), "direct flat pixels"),   # MobileNetV2's first layer
    ((64, 64, 16, 3, 2, 1), "direct flat pixels"),   # rows of one vector, stride 2
    ((3, 64, 224, 3, 1, 1), "direct row vectors"),
    ((3, 16, 64, 3, 1, 1), "direct row vectors"),
    ((4, 16, 224, 3, 1, 1), "direct row vectors"),
    ((8, 8, 112, 3, 1, 1), "direct row vectors"),
    ((64, 8, 56, 3, 1, 1), "direct row vectors"),
    ((16, 8, 64, 5, 1, 2), "direct row vectors"),
]

# Runs in a child process on a tier: each (shape, kernel) of CHOICES created and its choice checked.
TIER_CHOICE_CHILD = r"""
import sys
import numpy as np
import bnns_py
from bnns_py import ActivationFunction as AF, ConvolutionType
sys.path.insert(0, sys.argv[1])
from conftest import client_layer

wrong = []
for (cin, cout, size, k, stride, pad), expected in CHOICES:
    weight = np.zeros((cout, cin, k, k), np.float32)
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, size, size, (k, k), (stride, stride),
                            (pad,) * 4, (1, 1), 1, weight, None, AF.identity, 1)
    with layer:
        chosen = bnns_py.get_backend().filter_engine(layer.bnns_filter)
    if chosen != expected:
        wrong.append(f"{(cin, cout, size, k, stride, pad)}: {chosen}, not {expected}")
print("; ".join(wrong) or "ok")
"""


# The 4-lane x86 tier's (SSE: a broadcast is a load and a shuffle): layers of 3 output channels,
# whose pixels tiles broadcast a source value per vector multiply-add, in row vectors (1.16-1.19x
# flat pixels, batch 1); the stem and MobileNetV2's first layer keep the pixels kernel.
BASELINE_AUTO = [
    ((64, 3, 56, 3, 1, 1), "direct row vectors"),
    ((32, 3, 112, 3, 1, 1), "direct row vectors"),
    ((3, 64, 224, 7, 2, 3), "direct pixels"),
    ((3, 32, 224, 3, 2, 1), "direct flat pixels"),
]


@pytest.mark.parametrize("isa,choices", [("avx2", AVX2_AUTO), ("baseline", BASELINE_AUTO)])
def test_kernel_choice_on_16_register_tiers(isa, choices):
    run_child_on_tier(isa, TIER_CHOICE_CHILD.replace("CHOICES", repr(choices)))


def test_depthwise_keeps_its_own_kernels(backend, monkeypatch, no_filter_leaks):
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "rows")
    weight = np.zeros((16, 1, 3, 3), np.float32)
    layer, _ = client_layer(ConvolutionType.standard, 16, 16, 20, 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16,
                            weight, None, AF.identity, 1)
    with layer:
        for pass_ in backend.FILTER_PASSES:
            expected = "im2col" if pass_ == "weights_gradient" else "depthwise"
            assert backend.filter_engine(layer.bnns_filter, pass_) == expected


# Engines chosen per call by the batch: ResNet's 512-channel 7x7 layer (the panel path for one
# image, the direct engine's pixels kernel for a few, F(4x4) Winograd from 8 images, forward and
# input gradient alike), on every tier: each call's engine, not the plan's largest.
@pytest.mark.parametrize("pass_,by_batch", [
    ("forward", {1: "direct panel", 2: "direct *pixels", 7: "direct *pixels", 8: "winograd", 64: "winograd"}),
    ("input_gradient", {1: "direct *pixels", 7: "direct *pixels", 8: "winograd"}),
])
def test_filter_engine_follows_the_batch(pass_, by_batch, backend, monkeypatch, no_filter_leaks):
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    monkeypatch.delenv("BNNS_PY_WINOGRAD_TILE", raising=False)
    weight = np.zeros((512, 512, 3, 3), np.float32)
    layer, _ = client_layer(ConvolutionType.standard, 512, 512, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                            weight, None, AF.identity, 1)
    with layer:
        reported = {n: backend.filter_engine(layer.bnns_filter, pass_, batch=n) for n in by_batch}
    for n, pattern in by_batch.items():
        assert fnmatch.fnmatch(reported[n], pattern), (n, reported[n])


def test_filter_engine_refuses_a_closed_layer_and_unknown_passes(backend, no_filter_leaks):
    weight = np.zeros((4, 4, 3, 3), np.float32)
    layer, _ = client_layer(ConvolutionType.standard, 4, 4, 9, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, weight,
                            None, AF.identity, 1)
    with layer:
        with pytest.raises(ValueError, match="pass_"):
            backend.filter_engine(layer.bnns_filter, "backward")
        for batch in (0, -1, 1.0, True, None):
            with pytest.raises(ValueError, match="batch"):
                backend.filter_engine(layer.bnns_filter, batch=batch)
    with pytest.raises(ValueError, match="closed"):
        backend.filter_engine(layer.bnns_filter)
    with pytest.raises(ValueError, match="open layer"):
        backend.filter_engine(bnns_py.ffi.NULL)


# (batch, cin, cout, h, w, groups): 1x1, stride-1, unpadded layers, which the direct engine's
# pointwise kernel runs on the images in place: channel counts that leave partial channel tiles,
# pixel counts that are not whole vectors (a tail of up to 4 pixels: dot products; more: a vector)
POINTWISE = [
    (1, 33, 29, 11, 11, 1),    # 121 pixels, a tail of 9 (AVX-512); channel tiles 8 + 8 + 8 + 4 + 1
    (3, 16, 96, 7, 7, 1),      # MobileNetV2's 7 x 7: 48 pixels in whole vectors, one in the tail
    (2, 12, 10, 4, 5, 2),      # groups; 20 pixels: a tail of 4 after one vector (AVX-512)
    (1, 5, 70, 14, 14, 1),     # 70 channels: blocks of 64 + 6
    (2, 300, 24, 9, 9, 1),     # a reduction longer than a panel of pixels holds
    (1, 24, 16, 40, 37, 1),    # one block of channels, 1480 pixels: 2 threads split the pixels
    # 128+ channels, 512 KiB+ per image and group, 2 MiB+ per call: the tiles prefetch the next block of pixels
    (2, 128, 24, 48, 48, 1),   # rows on line boundaries, 2304 pixels: whole vectors only
    (1, 260, 18, 45, 47, 2),   # groups of 130 channels, rows of 2115 pixels (off line boundaries), a tail of 3
    (1, 260, 18, 45, 46, 2),   # the same, a tail of 6 (a vector)
]
POINTWISE_ACTIVATIONS = {"identity": AF.identity, "relu": AF.rectified_linear, "relu6": AF.relu6,
                         "clamp": AF.clamp((-0.3, 0.4)), "sigmoid": AF.sigmoid}


def _pointwise_ids(cases):
    return ["x".join(map(str, c[:5])) + f"_g{c[5]}" for c in cases]


def _pointwise_layer(case, rng, activation, n_threads, flags=None, input_strides=(0, 0, 0)):
    n, cin, cout, h, w, groups = case
    weight = random_array(rng, (cout, cin // groups, 1, 1), 0.3)
    bias = random_array(rng, (cout,))
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, h, w, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), groups,
                            weight, bias, activation, n_threads, flags=flags, input_strides=input_strides)
    return layer, weight, bias


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("client", [True, False], ids=["client", "packed"])
@pytest.mark.parametrize("case", POINTWISE, ids=_pointwise_ids(POINTWISE))
def test_pointwise_forward(case, client, n_threads, backend, rng, monkeypatch, no_filter_leaks):
    """The caller's weights read in place (client pointers) or the blocks packed at creation, the
    bias and ReLU6 applied in the kernel's registers."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    n, cin, cout, h, w, groups = case
    x = random_array(rng, (n, cin, h, w))
    layer, weight, bias = _pointwise_layer(case, rng, AF.relu6, n_threads, flags=None if client else Flags.none)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) == "direct pointwise"
        y = np.full((n, cout, h, w), np.nan, np.float32)
        layer.apply(n, x, y)
    expected = reference.conv2d(x, weight, bias, groups=groups, activation=AF.relu6)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(cin // groups))


@pytest.mark.parametrize("activation", list(POINTWISE_ACTIVATIONS))
@pytest.mark.parametrize("case", [POINTWISE[0], POINTWISE[2]], ids=_pointwise_ids([POINTWISE[0], POINTWISE[2]]))
def test_pointwise_fused_activations(case, activation, backend, rng, monkeypatch, no_filter_leaks):
    """Clamping activations in the kernel (ReLU, ReLU6, Clamp), others after it (sigmoid)."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    n, cin, cout, h, w, groups = case
    act = POINTWISE_ACTIVATIONS[activation]
    x = random_array(rng, (n, cin, h, w), 3.0)  # wide enough that every clamp bound is reached
    layer, weight, bias = _pointwise_layer(case, rng, act, 1)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) == "direct pointwise"
        y = np.full((n, cout, h, w), np.nan, np.float32)
        layer.apply(n, x, y)
    expected = reference.conv2d(x, weight, bias, groups=groups, activation=act)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=3 * _tolerance(cin // groups))


@pytest.mark.parametrize("layout", ["every-other-column", "padded-rows"])
@pytest.mark.parametrize("case", [POINTWISE[0], POINTWISE[1]], ids=_pointwise_ids([POINTWISE[0], POINTWISE[1]]))
def test_pointwise_strided_input(case, layout, backend, rng, monkeypatch, no_filter_leaks):
    """Pixels that are not consecutive (copied a row at a time) and rows that are not (a run per row)."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    n, cin, cout, h, w, groups = case
    wide = 2 * w if layout == "every-other-column" else w + 5
    strides = (2, wide, wide * h) if layout == "every-other-column" else (1, wide, wide * h)
    wide_x = random_array(rng, (n, cin, h, wide))
    x = wide_x[..., ::2] if layout == "every-other-column" else wide_x[..., :w]
    layer, weight, bias = _pointwise_layer(case, rng, AF.rectified_linear, 2, input_strides=strides)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) == "direct pointwise"
        y = np.full((n, cout, h, w), np.nan, np.float32)
        layer.apply(n, input_batch(layer, wide_x, n), y)
    expected = reference.conv2d(x, weight, bias, groups=groups, activation=AF.rectified_linear)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(cin // groups))


def _pointwise_input_gradient(case, rng, n_threads, flag=None, layout="packed"):
    """dx of a 1x1 layer over `case` (dy random; dx starting random with `flag`, laid out as the
    input: packed, rows 5 floats apart beyond their width, or every other column), its reference,
    and the engine the filter reports for it."""
    n, cin, cout, h, w, groups = case
    weight = random_array(rng, (cout, cin // groups, 1, 1), 0.3)
    wide = {"packed": w, "row-gaps": w + 5, "every-other-column": 2 * w}[layout]
    strides = (0, 0, 0) if layout == "packed" else (2 if wide == 2 * w else 1, wide, wide * h)
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, h, w, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), groups,
                            weight, None, AF.identity, n_threads, input_strides=strides)
    dy = random_array(rng, (n, cout, h, w))
    start = random_array(rng, (n, cin, h, wide))
    view = (lambda a: a[..., ::2]) if strides[0] == 2 else (lambda a: a[..., :w])
    expected = reference.conv2d_backward(view(start), weight, dy, groups=groups)[0]  # x does not matter
    if flag == NDArrayFlags.backprop_accumulate:
        expected = expected + view(start)
    with layer:
        engine = bnns_py.get_backend().filter_engine(layer.bnns_filter, "input_gradient", batch=n)
        dx = NDArrayDescriptor(start.copy().reshape(-1), layer.input_descriptor.shape, batch_size=n,
                               **({} if flag is None else {"flags": flag}))
        layer.apply_backward(n, None, None, dy, dx)
    return view(dx.data.reshape(start.shape)), expected, engine


@pytest.mark.parametrize("case", POINTWISE, ids=_pointwise_ids(POINTWISE))
def test_pointwise_input_gradient(case, backend, rng, monkeypatch, no_filter_leaks):
    """The input gradient on the pointwise kernel (asked for: every size; W read transposed, the
    pixels past the last whole vector as a zero-padded vector): the reference's values, the same
    bits on 1 and 2 threads."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "pointwise")
    dxs = []
    for n_threads in (1, 2):
        dx, expected, engine = _pointwise_input_gradient(case, np.random.default_rng(7), n_threads)
        assert engine == "direct pointwise"
        np.testing.assert_allclose(dx, expected, rtol=1e-4, atol=_tolerance(case[2] // case[5]))
        dxs.append(dx)
    np.testing.assert_array_equal(dxs[0], dxs[1])


@pytest.mark.parametrize("flag", [None, NDArrayFlags.backprop_accumulate], ids=["set", "accumulate"])
@pytest.mark.parametrize("layout", ["packed", "row-gaps", "every-other-column"])
@pytest.mark.parametrize("case", [POINTWISE[0], POINTWISE[2]], ids=_pointwise_ids([POINTWISE[0], POINTWISE[2]]))
def test_pointwise_input_gradient_strided_and_accumulating(case, layout, flag, backend, rng, monkeypatch,
                                                           no_filter_leaks):
    """dx rows a gap apart (the kernel a row at a time); accumulating calls and dx columns apart
    (the im2col engine's GEMM, which adds and steps)."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "pointwise")
    dx, expected, engine = _pointwise_input_gradient(case, rng, 2, flag, layout)
    assert engine == "direct pointwise"
    np.testing.assert_allclose(dx, expected, rtol=1e-4, atol=_tolerance(case[2] // case[5]))


# (case, whether the pointwise kernel runs the input gradient without being asked, on AVX-512): a
# reduction of up to 256 steps (the layer's output channels) over images of 768 pixels or more
POINTWISE_INPUT_GRADIENT_AUTO = [
    ((2, 200, 64, 28, 28, 1), True),     # 784 pixels, a tail of 4 (a vector)
    ((1, 48, 256, 25, 31, 1), True),     # 256 steps; 775 pixels, a tail of 7
    ((1, 64, 64, 27, 28, 1), False),     # 756 pixels
    ((1, 64, 260, 28, 28, 1), False),    # 260 steps
    ((2, 64, 512, 28, 28, 2), True),     # groups of 256 output channels
]


@pytest.mark.parametrize("case,chosen", POINTWISE_INPUT_GRADIENT_AUTO,
                         ids=_pointwise_ids([c for c, _ in POINTWISE_INPUT_GRADIENT_AUTO]))
def test_pointwise_input_gradient_automatic(case, chosen, backend, rng, monkeypatch, no_filter_leaks):
    """Where the pointwise kernel pays for the input gradient (AVX-512; the other tiers, whose tiles
    are 4 x 3 vectors, keep the im2col engine's GEMM), and its results there."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    dx, expected, engine = _pointwise_input_gradient(case, rng, 2)
    avx512 = bnns_py.backend_info()["simd"] == "AVX-512"
    assert engine == ("direct pointwise" if chosen and avx512 else "im2col")
    np.testing.assert_allclose(dx, expected, rtol=1e-4, atol=_tolerance(case[2] // case[5]))


@pytest.mark.parametrize("activation", ["relu6", "sigmoid"])
@pytest.mark.parametrize("client", [True, False], ids=["client", "packed"])
@pytest.mark.parametrize("case,forced", [(POINTWISE[0], True), (POINTWISE[2], True), ((2, 64, 40, 28, 28, 1), False)],
                         ids=["1x33x29x11x11_g1", "2x12x10x4x5_g2", "2x64x40x28x28_g1-auto"])
def test_pointwise_transposed_forward(case, forced, client, activation, backend, rng, monkeypatch, no_filter_leaks):
    """A transposed 1x1 layer's forward pass is S's backward-data pass: on the pointwise kernel, W
    read transposed (the caller's array) or the blocks packed at creation, bias and ReLU6 in the
    kernel, sigmoid after it."""
    if forced:
        monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "pointwise")
    else:
        monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    n, cin, cout, h, w, groups = case
    act = POINTWISE_ACTIVATIONS[activation]
    x = random_array(rng, (n, cin, h, w), 3.0)
    torch_weight = random_array(rng, (cin, cout // groups, 1, 1), 0.3)
    bias = random_array(rng, (cout,))
    layer, _ = client_layer(ConvolutionType.transposed, cin, cout, h, w, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), groups,
                            transposed_weight_to_bnns(torch_weight, groups), bias, act, 2,
                            flags=None if client else Flags.none)
    with layer:
        avx512 = bnns_py.backend_info()["simd"] == "AVX-512"
        assert backend.filter_engine(layer.bnns_filter) == ("direct pointwise" if forced or avx512 else "im2col")
        y = np.full((n, cout, h, w), np.nan, np.float32)
        layer.apply(n, x, y)
    expected = reference.conv_transpose2d(x, torch_weight, bias, groups=groups, activation=act)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=3 * _tolerance(cin // groups))


@pytest.mark.parametrize("engine", ["pointwise", "im2col", "rows"])
def test_pointwise_layer_backward_and_forced_engines(engine, backend, rng, monkeypatch, no_filter_leaks):
    """Asked for, the pointwise kernel runs the forward pass and the input gradient (here too small
    for it under "auto"), the weight gradient stays on the im2col engine's GEMM; "im2col" and the
    direct engine's other kernels, when asked for, take the forward pass back (rows: every pass)."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", engine)
    case = POINTWISE[0]
    n, cin, cout, h, w, groups = case
    x = random_array(rng, (n, cin, h, w))
    layer, weight, bias = _pointwise_layer(case, rng, AF.identity, 2)
    forward = {"pointwise": ("direct pointwise",), "im2col": ("im2col",),
               "rows": ("direct rows", "direct row vectors")}[engine]
    with layer:
        assert backend.filter_engine(layer.bnns_filter) in forward
        assert backend.filter_engine(layer.bnns_filter, "input_gradient") == {
            "pointwise": "direct pointwise", "im2col": "im2col", "rows": "direct rows"}[engine]
        assert backend.filter_engine(layer.bnns_filter, "weights_gradient") == ("direct" if engine == "rows"
                                                                                else "im2col")
        y = np.full((n, cout, h, w), np.nan, np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx = np.full(x.shape, np.nan, np.float32)
        dw = np.full(weight.shape, np.nan, np.float32)
        db = np.full(bias.shape, np.nan, np.float32)
        layer.apply_backward(n, x, y, dy, dx, dw, db)
    np.testing.assert_allclose(y, reference.conv2d(x, weight, bias), rtol=1e-4, atol=_tolerance(cin))
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=_tolerance(cout))
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=_tolerance(n * h * w))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=_tolerance(n * h * w))


# Runs in a child process per vector tier (chosen once per process, when the library loads): the
# fused activations' stores and the weights fetched and packed per chunk have a kernel per tier.
TIER_CHILD = r"""
import json, sys
import numpy as np
import bnns_py
from bnns_py import ActivationFunction as AF, reference
sys.path.insert(0, sys.argv[1])
from conftest import assert_close_to_reference

rng = np.random.default_rng(11)
kinds = {}
for name, n, cin, cout, size, k, stride, pad, act in [
        ("stem-like", 2, 3, 70, 29, 7, 2, 3, AF.rectified_linear),
        ("relu6", 1, 21, 37, 15, 3, 2, 1, AF.relu6),
        ("chunks", 1, 131, 80, 7, 3, 1, 1, AF.clamp((-0.3, 0.4))),
        ("odd-channels", 2, 67, 101, 7, 3, 1, 1, AF.rectified_linear)]:
    x = 3 * rng.standard_normal((n, cin, size, size)).astype(np.float32)
    w = 0.3 * rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    with bnns_py.Conv2d(w, b, stride=stride, padding=pad, activation=act) as conv:
        y = conv.forward(x)
        layer = next(iter(conv._layers.values()))
        kinds[name] = bnns_py.get_backend().filter_engine(layer.bnns_filter)
        w *= -1.5  # the module's weights are the filter's client pointers: the next call sees the change
        y2 = conv.forward(x)
    for out, weights in ((y, -w / 1.5), (y2, w)):
        expected = reference.conv2d(x, weights, b, stride=stride, padding=(pad,) * 4, activation=act)
        assert_close_to_reference(out, expected, cin * k * k, name)
print(json.dumps(dict(kinds=kinds, isa=bnns_py.backend_info()["isa"])))
"""


@pytest.mark.parametrize("engine", ["pixels", "rows"])
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_each_tier_fuses_activations_and_sees_weight_changes(isa, engine, backend):
    import json
    import os
    import subprocess
    import sys

    available = bnns_py.backend_info().get("isa_available", "").split()
    if isa not in available:
        pytest.skip(f"this CPU / build does not run the {isa} tier (it runs: {' '.join(available)})")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, BNNS_PY_ISA=isa, BNNS_PY_PORTABLE_ENGINE=engine)
    child = subprocess.run([sys.executable, "-c", TIER_CHILD, tests_dir], env=env, capture_output=True, text=True,
                           timeout=300, cwd=tests_dir)
    assert child.returncode == 0, child.stderr[-3000:]
    info = json.loads(child.stdout.strip().splitlines()[-1])
    assert info["isa"] == isa
    kinds = set(info["kinds"].values())
    assert kinds == {ENGINES[engine][0]} or engine == "rows" and kinds <= {"direct rows", "direct row vectors"}


# Runs in a child process per vector tier: stride-2 layers of 1-4 input channels (the stem's and
# MobileNet's first layers, scaled down) with odd sizes, symmetric and asymmetric padding and
# batches of 1-3, on every kernel (the planner's choice and each one forced when the filter is
# made), copied and client-pointer weights, 1 and 2 threads, every fused activation in turn: the
# phase planes filled two column phases at a time, and every store of the bias and activation.
# Forced "rows" also on geometries whose output rows are whole vectors but for a lane or a few
# ("direct row vectors": tiles across the rows' ends and past a band's last vector, results stored
# from the registers with a clamp, through scratch with other activations).
STRIDE2_CHILD = r"""
import os, sys
import numpy as np
import bnns_py
from bnns_py import ConvolutionType, Flags, reference
sys.path.insert(0, sys.argv[1])
from conftest import assert_close_to_reference, client_layer, random_array
from test_forward import ACTIVATIONS

# (batch, cin, cout, h, w, k, stride, pad (l, r, t, b))
GEOMETRIES = [
    (3, 1, 20, 17, 23, (3, 3), (2, 2), (1, 1, 1, 1)),
    (1, 2, 9, 15, 13, (5, 5), (2, 2), (2, 1, 0, 2)),
    (2, 3, 37, 21, 19, (7, 7), (2, 2), (3, 3, 3, 3)),
    (1, 4, 70, 11, 29, (3, 3), (2, 2), (0, 1, 1, 0)),
    (2, 3, 32, 25, 9, (3, 3), (2, 1), (1, 1, 1, 1)),
    (1, 3, 70, 125, 23, (7, 7), (2, 2), (3, 2, 3, 3)),
]
lanes = {"AVX-512": 16, "AVX2": 8}.get(bnns_py.backend_info()["simd"], 4)
# output rows of 4, 8 - 1/lanes, 6 - 3/lanes and 4 vectors
ROW_VECTOR_GEOMETRIES = [
    (2, 3, 70, 21, 8 * lanes, (7, 7), (2, 2), (3, 3, 3, 3)),
    (1, 1, 13, 9, 16 * lanes - 2, (3, 3), (2, 2), (1, 1, 2, 0)),
    (3, 4, 16, 12, 12 * lanes - 6, (5, 5), (2, 2), (2, 1, 1, 2)),
    (1, 2, 33, 17, 8 * lanes, (3, 3), (2, 2), (0, 1, 0, 1)),
]
RUNS = [(None, ("direct pixels", "direct flat pixels", "direct rows", "direct row vectors", "im2col"), GEOMETRIES),
        ("pixels", ("direct pixels",), GEOMETRIES), ("flat-pixels", ("direct flat pixels",), GEOMETRIES),
        ("rows", ("direct rows", "direct row vectors"), GEOMETRIES),
        ("rows", ("direct row vectors",), ROW_VECTOR_GEOMETRIES)]
rng = np.random.default_rng(5)
backend = bnns_py.get_backend()
for engine, kinds, geometries in RUNS:
    for i, act in enumerate(ACTIVATIONS):
        n, cin, cout, h, w, k, stride, pad = geometries[i % len(geometries)]
        x = random_array(rng, (n, cin, h, w), 3.0)
        weight = random_array(rng, (cout, cin) + k, 0.3)
        bias = random_array(rng, (cout,))
        os.environ.pop("BNNS_PY_PORTABLE_ENGINE", None)
        if engine is not None:
            os.environ["BNNS_PY_PORTABLE_ENGINE"] = engine
        layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, k, stride, pad, (1, 1), 1, weight,
                                       bias, act, 1 + i % 2, flags=None if i % 3 else Flags.none)
        with layer:
            ran = backend.filter_engine(layer.bnns_filter)
            assert ran in kinds, f"{engine}: {ran} for {geometries[i % len(geometries)]}"
            y = np.full((n, cout, oh, ow), np.nan, np.float32)
            layer.apply(n, x, y)
        expected = reference.conv2d(x, weight, bias, stride=stride, padding=pad, activation=act)
        assert_close_to_reference(y, expected, cin * k[0] * k[1], f"{engine} {act} {geometries[i % len(geometries)]}")
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_stride2_few_input_channels_every_activation_on_each_tier(isa):
    run_child_on_tier(isa, STRIDE2_CHILD)
