"""The portable library's Winograd F(2x2, 3x3) and F(4x4, 3x3) forward passes (dense 3x3 layers,
stride 1, dilated ones as d x d output phases), forced with BNNS_PY_PORTABLE_ENGINE=winograd (and
BNNS_PY_WINOGRAD_TILE=2 or 4: every test that forces the pass runs on both tiles) on geometries that
reach its edges and checked against the float64 reference: odd output sizes (tiles cut by the last row and
column), output phases of different sizes,
padding of 0 to 3 on each side, images narrower than a tile row's vector, strided inputs, batches
whose tile-row blocks span images, channel counts that leave partial channel blocks and partial
8-channel transposes, bias and activation, 1 and 2 threads, weights owned by the filter and read
from the caller at each call; one image's input transformed by the workers together (the same
bits on 1 to 3 threads). The weight gradient (F(3x3, 2x2) on the same tiles, dilated layers'
output phases summed) on the same geometries, set and accumulated, through the activation, from
strided inputs and against PyTorch's autograd. F(4x4) picked by itself for a layer too wide for
F(2x2), from batch 8. The filter reports which pass runs, so no test passes on the direct
engine by mistake."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction as AF, ConvolutionType, Flags, NDArrayDescriptor, NDArrayFlags, Shape,
                     reference)

from conftest import assert_close_to_reference, client_layer, random_array

pytestmark = pytest.mark.requires_portable_internals

# (batch, cin, cout, h, w, pad (l, r, t, b), dilation)
GEOMETRIES = [
    (1, 32, 32, 14, 14, (1, 1, 1, 1), 1),     # 'same', even sizes
    (2, 13, 37, 11, 17, (1, 1, 1, 1), 1),     # odd outputs: half tiles on the last row and column
    (3, 16, 20, 9, 8, (0, 0, 0, 0), 1),       # 'valid'
    (1, 16, 70, 7, 7, (2, 0, 1, 2), 1),       # asymmetric padding; 70 channels: a block of 64 and 6
    (2, 24, 17, 5, 6, (1, 1, 1, 1), 1),
    (1, 8, 8, 3, 3, (3, 3, 3, 3), 1),         # padding past the kernel: tiles of padding only
    (4, 20, 33, 12, 13, (0, 2, 2, 0), 1),
    (1, 9, 130, 40, 37, (1, 1, 1, 1), 1),     # rows of more than one 32-column load, 3 channel blocks
    (9, 40, 24, 6, 6, (1, 1, 1, 1), 1),       # small images: task blocks span several images
    (1, 40, 130, 14, 14, (1, 1, 1, 1), 1),    # 7 tile rows, 2 threads: one block, channel blocks split
    (1, 5, 3, 1, 1, (1, 1, 1, 1), 1),         # one output pixel
    (2, 24, 20, 16, 16, (2, 2, 2, 2), 2),     # dilated 'same': 4 output phases of 8 x 8
    (1, 12, 19, 13, 11, (2, 1, 0, 3), 2),     # odd sizes: phases of different sizes
    (2, 10, 9, 17, 14, (3, 3, 3, 3), 3),      # dilation 3: 9 phases
    (1, 8, 8, 5, 4, (2, 2, 2, 2), 2),         # phases of 1 or 2 pixels
]


def _ids(cases):
    return ["x".join(map(str, c[:5])) + "_p" + "".join(map(str, c[5])) + f"_d{c[6]}" for c in cases]


@pytest.fixture(params=["2", "4"], ids=["F2", "F4"])
def winograd(request, monkeypatch):
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "winograd")
    monkeypatch.setenv("BNNS_PY_WINOGRAD_TILE", request.param)


def _tolerance(cin):
    return 2e-4 * np.sqrt(cin * 9)


def _same_layer(rng, n, cin, cout, h, w, activation=AF.identity):
    """Random x, weights and bias, and a 2-thread client-pointer 'same' 3x3 layer of them."""
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    bias = random_array(rng, (cout,))
    layer, out_hw = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                 weight, bias, activation, 2)
    return x, weight, bias, layer, out_hw


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("client", [True, False], ids=["client", "copied"])
@pytest.mark.parametrize("case", GEOMETRIES, ids=_ids(GEOMETRIES))
def test_forward_matches_the_reference(case, client, n_threads, winograd, backend, rng, no_filter_leaks):
    n, cin, cout, h, w, pad, dil = case
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    bias = random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), pad, (dil, dil), 1,
                                   weight, bias, AF.identity, n_threads, flags=None if client else Flags.none)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) == "winograd"
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
    expected = reference.conv2d(x, weight, bias, padding=pad, dilation=dil)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(cin))


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("case", GEOMETRIES, ids=_ids(GEOMETRIES))
def test_input_gradient_matches_the_reference(case, n_threads, winograd, backend, rng, no_filter_leaks):
    """dx as the adjoint convolution of dy (kernels flipped, channels swapped, padded 2d - pad before),
    where the leading padding allows it; the weight and bias gradients still come out right."""
    n, cin, cout, h, w, pad, dil = case
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), pad, (dil, dil), 1,
                                   weight, None, AF.identity, n_threads)
    with layer:
        adjoint = pad[0] <= 2 * dil and pad[2] <= 2 * dil
        assert (backend.filter_engine(layer.bnns_filter, "input_gradient") == "winograd") == adjoint
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx, dw = np.full(x.shape, np.nan, np.float32), np.full(weight.shape, np.nan, np.float32)
        layer.apply_backward(n, x, y, dy, dx, dw)
    dx_ref, dw_ref, _ = reference.conv2d_backward(x, weight, dy, padding=pad, dilation=dil)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=_tolerance(cout))
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * np.sqrt(n * oh * ow))


@pytest.mark.parametrize("activation", [AF.rectified_linear, AF.sigmoid], ids=lambda a: a.name)
def test_activation_follows_the_bias(activation, winograd, backend, rng, no_filter_leaks):
    n, cin, cout, h, w = 2, 24, 40, 10, 9
    x, weight, bias, layer, (oh, ow) = _same_layer(rng, n, cin, cout, h, w, activation)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) == "winograd"
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
    z = reference.conv2d(x, weight, bias, padding=(1, 1, 1, 1))
    expected = np.maximum(z, 0) if activation is AF.rectified_linear else 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(cin))


# (batch, cin, cout, h, w): batches whose tile rows are cut into a multiple of 2 or 3 blocks of
# sizes one row apart that span images (75 and 105 rows of 15 tiles, 21 rows of 7 tiles), or
# blocks of small images; input channels that leave a part of U of
# fewer than 8 channels, output channels that leave a partial channel block, half tiles.
BLOCK_CASES = [(5, 61, 40, 30, 30), (7, 64, 70, 30, 29), (3, 192, 160, 14, 14), (2, 40, 24, 6, 6)]


def _relu_layer_and_references(rng, case, n_threads, flags=None):
    """A 'same' ReLU layer of random weights, x and dy, the reference y (float64) and the reference
    dx (float64) of an output y: through the ReLU as y has it (where y_ref is near 0, a rounding
    of y may land on the other side)."""
    n, cin, cout, h, w = case
    x, dy = random_array(rng, (n, cin, h, w)), random_array(rng, (n, cout, h, w))
    weight, bias = random_array(rng, (cout, cin, 3, 3), 0.3), random_array(rng, (cout,))
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                            weight, bias, AF.rectified_linear, n_threads, flags=flags)
    y_ref = np.maximum(reference.conv2d(x, weight, bias, padding=(1, 1, 1, 1)), 0)

    def dx_ref(y):
        return reference.conv2d_backward(x, weight, dy, output=y, padding=(1, 1, 1, 1),
                                         activation=AF.rectified_linear)[0]
    return x, dy, layer, y_ref, dx_ref


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("client", [True, False], ids=["client", "copied"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=["x".join(map(str, c)) for c in BLOCK_CASES])
def test_batch_blocks_over_threads(case, client, n_threads, winograd, backend, rng, no_filter_leaks):
    """Blocks of unequal sizes shared out over 1 to 3 workers, U made from client weights at each
    call in parts that any worker takes (the products wait until it is whole), ReLU fused; then
    the input gradient (of a client-pointer filter: the adjoint pass, which makes its U the same
    way); repeated calls agree."""
    n, cin, cout, h, w = case
    x, dy, layer, y_ref, dx_ref = _relu_layer_and_references(rng, case, n_threads,
                                                             None if client else Flags.none)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) == "winograd"
        if client:  # a filter owning its weights computes dx on another engine
            assert backend.filter_engine(layer.bnns_filter, "input_gradient") == "winograd"
        for _ in range(3):
            y, dx = np.full(y_ref.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
            layer.apply(n, x, y)
            layer.apply_backward(n, x, y, dy, dx)
            np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=_tolerance(cin))
            np.testing.assert_allclose(dx, dx_ref(y), rtol=1e-4, atol=_tolerance(cout))


# one image whose tile rows do not split evenly over the workers: each worker takes a share of the
# output channel blocks over all the tiles, and the workers transform the input together, each a
# share of the input channels (the last share a partial one of 8), into one V.
SHARED_INPUT_CASES = [
    (40, 130, 14, 14, False),  # 7 tile rows, 3 channel blocks (AVX-512: 64 channels each)
    (13, 70, 9, 11, False),    # odd sizes: 5 tile rows of 6 tiles, half tiles on the last row and column
    (9, 200, 5, 5, True),      # 3 tile rows, 9 input channels; x read from every other column
    (1, 96, 1, 3, False),      # one tile row of one input channel
]


@pytest.mark.parametrize("client", [True, False], ids=["client", "copied"])
@pytest.mark.parametrize("case", SHARED_INPUT_CASES, ids=["x".join(map(str, c[:4])) + ("_strided" if c[4] else "")
                                                          for c in SHARED_INPUT_CASES])
def test_input_transformed_together_matches_one_thread(case, client, winograd, backend, rng, no_filter_leaks):
    """Batch 1 on 1, 2 and 3 threads: the same bits on each (V is the same whoever transforms which
    channels), ReLU fused, against the reference; repeated calls agree."""
    cin, cout, h, w, strided = case
    weight, bias = random_array(rng, (cout, cin, 3, 3), 0.3), random_array(rng, (cout,))
    x = random_array(rng, (1, cin, h, 2 * w if strided else w))
    strides = (2, 2 * w, 2 * w * h) if strided else (0, 0, 0)
    expected = np.maximum(reference.conv2d(x[..., ::2] if strided else x, weight, bias, padding=(1, 1, 1, 1)), 0)
    outputs = []
    for n_threads in (1, 2, 3):
        layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                       1, weight, bias, AF.rectified_linear, n_threads,
                                       flags=None if client else Flags.none, input_strides=strides)
        with layer:
            assert backend.filter_engine(layer.bnns_filter) == "winograd"
            source = NDArrayDescriptor(x.reshape(-1), layer.input_descriptor.shape, batch_size=1) if strided else x
            for _ in range(2):
                y = np.full((1, cout, oh, ow), np.nan, np.float32)
                layer.apply(1, source, y)
                outputs.append(y)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(cin))
    for y in outputs[1:]:
        np.testing.assert_array_equal(y, outputs[0])


def test_strided_input(winograd, backend, rng, no_filter_leaks):
    """x read from every other column of wider images (the masked vector loads need unit steps)."""
    n, cin, cout, h, w = 2, 20, 18, 9, 11
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                   1, weight, None, AF.identity, 2, input_strides=(2, 2 * w, 2 * w * h))
    wide = random_array(rng, (n, cin, h, 2 * w))
    with layer:
        assert backend.filter_engine(layer.bnns_filter) == "winograd"
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, NDArrayDescriptor(wide.reshape(-1), layer.input_descriptor.shape, batch_size=n), y)
    np.testing.assert_allclose(y, reference.conv2d(wide[..., ::2], weight, padding=(1, 1, 1, 1)), rtol=1e-4,
                               atol=_tolerance(cin))


def test_client_weights_are_read_at_each_call_and_copied_ones_are_not(winograd, backend, rng, no_filter_leaks):
    n, cin, cout, h, w = 1, 32, 32, 8, 8
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    kept = weight.copy()
    client, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1),
                                    (1, 1), 1, weight, None, AF.identity, 2)
    copied, _ = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                             weight, None, AF.identity, 2, flags=Flags.none)
    with client, copied:
        y = np.empty((n, cout, oh, ow), np.float32)
        weight *= -2.0
        client.apply(n, x, y)
        np.testing.assert_allclose(y, reference.conv2d(x, weight, padding=(1, 1, 1, 1)), rtol=1e-4,
                                   atol=_tolerance(cin))
        copied.apply(n, x, y)
        np.testing.assert_allclose(y, reference.conv2d(x, kept, padding=(1, 1, 1, 1)), rtol=1e-4,
                                   atol=_tolerance(cin))


# Calls of one tile block (one image whose tile rows fit one task): each worker makes the U of its
# chunk of output-channel blocks block by block, just before that block's products. 130 output
# channels: blocks of 64, 64 and 2 (split 2 + 1 over two workers); 61 input channels: a last part
# of 5 of the 8 the transform takes at a time; odd sizes: half tiles.
ONE_BLOCK_CASES = [(61, 130, 13, 13), (256, 256, 14, 14), (16, 17, 7, 9)]


@pytest.mark.parametrize("case", ONE_BLOCK_CASES, ids=["x".join(map(str, c)) for c in ONE_BLOCK_CASES])
def test_client_weights_made_block_by_block(case, backend, rng, monkeypatch, no_filter_leaks):
    """F(2x2) at batch 1 with client weights, bias and ReLU: right, the same bits on 1 and 2 threads
    and as a filter that transformed copied weights at creation, and weights changed between two
    calls change the result."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "winograd")
    monkeypatch.setenv("BNNS_PY_WINOGRAD_TILE", "2")
    cin, cout, h, w = case
    x = random_array(rng, (1, cin, h, w))
    weight, bias = random_array(rng, (cout, cin, 3, 3), 0.3), random_array(rng, (cout,))
    layers = [client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                           weight, bias, AF.rectified_linear, threads, flags=flags)[0]
              for threads, flags in ((1, None), (2, None), (2, Flags.none))]
    with layers[0], layers[1], layers[2]:
        for scale in (1.0, -0.5):
            weight *= scale
            ys = []
            for layer in layers:
                assert backend.filter_engine(layer.bnns_filter) == "winograd"
                ys.append(np.full((1, cout, h, w), np.nan, np.float32))
                layer.apply(1, x, ys[-1])
            expected = np.maximum(reference.conv2d(x, weight, bias, padding=(1, 1, 1, 1)), 0)
            np.testing.assert_allclose(ys[0], expected, rtol=1e-4, atol=_tolerance(cin))
            np.testing.assert_array_equal(ys[0], ys[1])
            if scale == 1.0:  # the copied filter keeps the weights it was made with
                np.testing.assert_array_equal(ys[0], ys[2])


# 384 -> 384 channels: F(2x2)'s transformed weights (16 x 384 x 384 floats) exceed its limit;
# F(4x4) takes the layer by itself for calls of 32 tiles or more (8 images of 7 x 7, 4 tiles each;
# 9 leave a group of tiles mostly empty), fewer images run on the direct engine.
@pytest.mark.parametrize("client", [True, False], ids=["client", "copied"])
def test_a_wide_layer_takes_f4_by_itself(client, backend, rng, monkeypatch, no_filter_leaks):
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    monkeypatch.delenv("BNNS_PY_WINOGRAD_TILE", raising=False)
    channels, size = 384, 7
    weight = random_array(rng, (channels, channels, 3, 3), 0.1)
    bias = random_array(rng, (channels,))
    layer, _ = client_layer(ConvolutionType.standard, channels, channels, size, size, (3, 3), (1, 1), (1, 1, 1, 1),
                            (1, 1), 1, weight, bias, AF.rectified_linear, 2, flags=None if client else Flags.none)
    kept = weight.copy()
    with layer:
        assert backend.filter_engine(layer.bnns_filter, batch=8) == "winograd"
        assert backend.filter_engine(layer.bnns_filter, batch=1).startswith("direct")
        for n, scale in ((8, 1.0), (1, 1.0), (9, 1.0), (8, -0.5)):
            weight *= scale  # read at each call with client pointers, copied at creation otherwise
            x = random_array(rng, (n, channels, size, size))
            y = np.full((n, channels, size, size), np.nan, np.float32)
            layer.apply(n, x, y)
            expected = np.maximum(reference.conv2d(x, weight if client else kept, bias, padding=(1, 1, 1, 1)), 0)
            np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(channels))


@pytest.mark.requires_portable_internals
def test_only_client_filters_reserve_a_block_of_weights_per_worker(backend, monkeypatch, no_filter_leaks):
    """Each worker's scratch has room for one channel block's transformed weights only where calls
    make them from the caller's weights: a filter that copied (and transformed) its weights at
    creation reserves less per worker than a client-pointer one; on AVX-512 (blocks of 64 output
    channels) exactly F(4x4)'s 36 planes of 64 x 512 values (+ 80 floats each) less."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    monkeypatch.delenv("BNNS_PY_WINOGRAD_TILE", raising=False)
    channels, size = 512, 7
    weight = np.zeros((channels, channels, 3, 3), np.float32)
    reserved = {}
    for client in (True, False):
        for n_threads in (1, 2):
            layer, _ = client_layer(ConvolutionType.standard, channels, channels, size, size, (3, 3), (1, 1),
                                    (1, 1, 1, 1), (1, 1), 1, weight, None, AF.identity, n_threads,
                                    flags=None if client else Flags.none)
            with layer:
                assert backend.filter_engine(layer.bnns_filter, batch=8) == "winograd"
                reserved[client, n_threads] = backend.lib.bnns_portable_filter_reserved_bytes(layer.bnns_filter)
    per_worker = {client: reserved[client, 2] - reserved[client, 1] for client in (True, False)}
    assert per_worker[False] < per_worker[True]
    if bnns_py.backend_info()["simd"] == "AVX-512":
        assert per_worker[True] - per_worker[False] == 36 * (channels * 64 + 80) * 4


def test_a_wide_layer_takes_f4_for_its_input_gradient(backend, rng, monkeypatch, no_filter_leaks):
    """The adjoint of a wide 'same' layer has its shape: F(4x4) for calls of 8 images of 7 x 7 or
    more, the direct engine for fewer; dx, dw and db right either way."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    monkeypatch.delenv("BNNS_PY_WINOGRAD_TILE", raising=False)
    channels, size = 384, 7
    weight = random_array(rng, (channels, channels, 3, 3), 0.1)
    layer, _ = client_layer(ConvolutionType.standard, channels, channels, size, size, (3, 3), (1, 1), (1, 1, 1, 1),
                            (1, 1), 1, weight, None, AF.identity, 2)
    with layer:
        assert backend.filter_engine(layer.bnns_filter, "input_gradient", batch=8) == "winograd"
        assert backend.filter_engine(layer.bnns_filter, "input_gradient", batch=1).startswith("direct")
        for n in (8, 1):
            x = random_array(rng, (n, channels, size, size))
            y = np.empty((n, channels, size, size), np.float32)
            layer.apply(n, x, y)
            dy = random_array(rng, y.shape)
            dx, dw = np.full(x.shape, np.nan, np.float32), np.full(weight.shape, np.nan, np.float32)
            layer.apply_backward(n, x, y, dy, dx, dw)
            dx_ref, dw_ref, _ = reference.conv2d_backward(x, weight, dy, padding=(1, 1, 1, 1))
            np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=_tolerance(channels))
            np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * np.sqrt(n * size * size))


def test_backward_of_a_winograd_filter(backend, rng, monkeypatch, no_filter_leaks):
    """The automatic choice takes Winograd for the forward pass and the input gradient."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    n, cin, cout, h, w = 2, 64, 64, 12, 12
    x, weight, bias, layer, (oh, ow) = _same_layer(rng, n, cin, cout, h, w)
    with layer:
        assert backend.filter_engine(layer.bnns_filter, "forward") == "winograd"
        assert backend.filter_engine(layer.bnns_filter, "input_gradient") == "winograd"
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = np.empty_like(x), np.empty_like(weight), np.empty_like(bias)
        layer.apply_backward(n, x, y, dy, dx, dw, db)
    np.testing.assert_allclose(y, reference.conv2d(x, weight, bias, padding=(1, 1, 1, 1)), rtol=1e-4,
                               atol=_tolerance(cin))
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, padding=(1, 1, 1, 1))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=_tolerance(cout))
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4 * np.sqrt(n * oh * ow))
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-4 * np.sqrt(n * oh * ow))


# (kernel, stride, dilation, groups, activation)
OTHERS = [((3, 3), (2, 2), (1, 1), 1, AF.identity), ((3, 3), (1, 2), (1, 1), 1, AF.identity),
          ((3, 3), (1, 1), (1, 2), 1, AF.identity), ((3, 3), (1, 1), (2, 2), 1, AF.rectified_linear),
          ((5, 5), (1, 1), (1, 1), 1, AF.identity), ((3, 1), (1, 1), (1, 1), 1, AF.identity),
          ((3, 3), (1, 1), (1, 1), 2, AF.identity)]


@pytest.mark.parametrize("k,stride,dil,groups,activation", OTHERS,
                         ids=["stride 2", "stride 1x2", "dilation 1x2", "dilation with activation", "5x5", "3x1",
                              "groups 2"])
def test_other_geometries_never_take_it(k, stride, dil, groups, activation, winograd, backend, rng,
                                        no_filter_leaks):
    weight = random_array(rng, (16, 16 // groups) + k)
    layer, _ = client_layer(ConvolutionType.standard, 16, 16, 12, 12, k, stride, (1, 1, 1, 1), dil, groups, weight,
                            None, activation, 1)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) != "winograd"


def test_concurrent_calls_agree(winograd, backend, rng, no_filter_leaks):
    """Two Python threads applying two client-pointer Winograd layers at once: one call has the worker
    pool, the other runs alone on its thread, each making its transformed weights first."""
    import threading

    n, cin, cout, h, w = 2, 32, 48, 12, 12
    cases = [_same_layer(rng, n, cin, cout, h, w) for _ in range(2)]
    expected = [reference.conv2d(x, weight, bias, padding=(1, 1, 1, 1)) for x, weight, bias, _, _ in cases]
    errors = []

    def run(i):
        x, _, _, layer, (oh, ow) = cases[i]
        y = np.empty((n, cout, oh, ow), np.float32)
        for _ in range(200):
            layer.apply(n, x, y)
            if not np.allclose(y, expected[i], rtol=1e-4, atol=_tolerance(cin)):
                errors.append(i)
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _, _, _, layer, _ in cases:
        layer.close()
    assert errors == []


def test_very_wide_rows_stay_on_the_direct_engine(winograd, backend, rng, no_filter_leaks):
    """A task holds at least one whole tile row: rows so wide that its scratch would pass 64 MiB per
    worker leave the layer to the direct engine, even when Winograd is asked for."""
    n, cin, cout, h, w = 1, 1024, 16, 1, 2100  # one tile row: 16 x 1024 x 1050 floats of V
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin, 3, 3), 0.05)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1),
                                   1, weight, None, AF.identity, 2)
    with layer:
        assert backend.filter_engine(layer.bnns_filter) != "winograd"
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
    np.testing.assert_allclose(y, reference.conv2d(x, weight, padding=(1, 1, 1, 1)), rtol=1e-4,
                               atol=_tolerance(cin))


GRADIENT_GEOMETRIES = GEOMETRIES + [
    (3, 70, 45, 15, 9, (1, 1, 1, 1), 1),  # channel counts no multiple of 16, an odd batch
    (2, 64, 64, 58, 58, (0, 0, 0, 0), 1),  # ResNet-50's first 3x3 layer's sizes, unpadded: chunks of tile rows
    (3, 33, 35, 30, 29, (2, 2, 2, 2), 2),  # dilated, odd channels and batch: chunks across phases and images
]


def _gradient_layer(rng, case, n_threads, activation=AF.identity, input_strides=(0, 0, 0)):
    n, cin, cout, h, w, pad, dil = case
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    bias = random_array(rng, (cout,))
    layer, out_hw = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), pad, (dil, dil), 1, weight,
                                 bias, activation, n_threads, input_strides=input_strides)
    return weight, bias, layer, out_hw


def _forward_and_dy(backend, rng, layer, x, out_shape):
    """Within `with layer`: y of a layer whose weight gradient runs on Winograd, and a random dy."""
    assert backend.filter_engine(layer.bnns_filter, "weights_gradient", batch=out_shape[0]) == "winograd"
    y = np.empty(out_shape, np.float32)
    layer.apply(out_shape[0], x, y)
    return y, random_array(rng, y.shape)


def _weight_and_bias_gradients(backend, rng, layer, x, weight, bias, out_shape):
    """Forward, then dW and db of a random dy, on a layer whose weight gradient runs on Winograd."""
    n = out_shape[0]
    with layer:
        y, dy = _forward_and_dy(backend, rng, layer, x, out_shape)
        dw, db = np.full(weight.shape, np.nan, np.float32), np.full(bias.shape, np.nan, np.float32)
        layer.apply_backward(n, x, y, dy, None, dw, db)
    return y, dy, dw, db


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "accumulate"])
@pytest.mark.parametrize("case", GRADIENT_GEOMETRIES, ids=_ids(GRADIENT_GEOMETRIES))
def test_weight_gradient_matches_the_reference(case, accumulate, n_threads, winograd, backend, rng, no_filter_leaks):
    """dW and db set, or added to what the arrays held (BackpropAccumulate), without an activation:
    the whole batch in one Winograd pass."""
    n, cin, cout, h, w, pad, dil = case
    weight, bias, layer, (oh, ow) = _gradient_layer(rng, case, n_threads)
    x = random_array(rng, (n, cin, h, w))
    start_w, start_b = random_array(rng, weight.shape), random_array(rng, bias.shape)
    flag = NDArrayFlags.backprop_accumulate if accumulate else NDArrayFlags.backprop_set
    with layer:
        y, dy = _forward_and_dy(backend, rng, layer, x, (n, cout, oh, ow))
        dw = NDArrayDescriptor(start_w.copy().reshape(-1), layer.weights.shape, flags=flag)
        db = NDArrayDescriptor(start_b.copy(), layer.bias.shape, flags=flag)
        layer.apply_backward(n, x, y, dy, None, dw, db)
    _, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, bias=True, padding=pad, dilation=dil)
    offset = 1.0 if accumulate else 0.0
    assert_close_to_reference(dw.data.reshape(weight.shape), dw_ref + offset * start_w, n * oh * ow, "weight gradient")
    assert_close_to_reference(db.data, db_ref + offset * start_b, n * oh * ow, "bias gradient")


@pytest.mark.parametrize("activation", [AF.rectified_linear, AF.tanh], ids=lambda a: a.name)
def test_weight_gradient_through_an_activation(activation, winograd, backend, rng, no_filter_leaks):
    """With an activation dz = dy * f'(y) is made image by image: one pass per image, the first
    setting dW, the others adding to it."""
    case = (3, 20, 33, 12, 13, (0, 2, 2, 0), 1)
    n, cin, cout, h, w, pad, _ = case
    weight, bias, layer, (oh, ow) = _gradient_layer(rng, case, 2, activation)
    x = random_array(rng, (n, cin, h, w))
    y, dy, dw, db = _weight_and_bias_gradients(backend, rng, layer, x, weight, bias, (n, cout, oh, ow))
    _, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, output=y, bias=True, padding=pad,
                                                  activation=activation)
    assert_close_to_reference(dw, dw_ref, n * oh * ow, "weight gradient")
    assert_close_to_reference(db, db_ref, n * oh * ow, "bias gradient")


def test_weight_gradient_of_a_strided_input(winograd, backend, rng, no_filter_leaks):
    """x read from every other column of wider images, as the forward pass reads it."""
    n, cin, cout, h, w = 2, 20, 18, 9, 11
    weight, bias, layer, (oh, ow) = _gradient_layer(rng, (n, cin, cout, h, w, (1, 1, 1, 1), 1), 2,
                                                    input_strides=(2, 2 * w, 2 * w * h))
    wide = random_array(rng, (n, cin, h, 2 * w))
    x = NDArrayDescriptor(wide.reshape(-1), layer.input_descriptor.shape, batch_size=n)
    _, dy, dw, _ = _weight_and_bias_gradients(backend, rng, layer, x, weight, bias, (n, cout, oh, ow))
    dw_ref = reference.conv2d_backward(wide[..., ::2], weight, dy, padding=(1, 1, 1, 1))[1]
    assert_close_to_reference(dw, dw_ref, n * oh * ow, "weight gradient")


@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "accumulate"])
@pytest.mark.parametrize("case", [(2, 40, 68, 17, 15, (1, 1, 1, 1), 1), (3, 40, 67, 20, 20, (2, 2, 2, 2), 2)],
                         ids=["same", "dilated"])
def test_weight_gradient_matches_torch_autograd(case, accumulate, backend, rng, monkeypatch, no_filter_leaks):
    """The automatic choice (Winograd for these layers; the dilated one has 4 output phases of
    10 x 10, as the benchmark's dilated layer at a smaller size) against PyTorch's autograd: dW
    (also added to what its array held), db and dx."""
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    n, cin, cout, h, w, pad, dil = case
    weight, bias, layer, (oh, ow) = _gradient_layer(rng, case, 2)
    x = random_array(rng, (n, cin, h, w))
    start_w = random_array(rng, weight.shape)
    flag = NDArrayFlags.backprop_accumulate if accumulate else NDArrayFlags.backprop_set
    with layer:
        y, dy = _forward_and_dy(backend, rng, layer, x, (n, cout, oh, ow))
        dx, db = np.full(x.shape, np.nan, np.float32), np.full(bias.shape, np.nan, np.float32)
        dw = NDArrayDescriptor(start_w.copy().reshape(-1), layer.weights.shape, flags=flag)
        layer.apply_backward(n, x, y, dy, dx, dw, db)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    torch.nn.functional.conv2d(tx, tw, tb, padding=pad[0], dilation=dil).backward(torch.tensor(dy))
    offset = 1.0 if accumulate else 0.0
    assert_close_to_reference(dw.data.reshape(weight.shape), tw.grad.numpy() + offset * start_w, n * oh * ow,
                              "weight gradient")
    assert_close_to_reference(db, tb.grad.numpy(), n * oh * ow, "bias gradient")
    assert_close_to_reference(dx, tx.grad.numpy(), cout * 9, "input gradient")


def _sums_bytes(cin, cout, workers):
    """The least the Winograd weight gradient's sums take: one M (16 x cout x cin floats) per worker."""
    return workers * 16 * cout * cin * 4


@pytest.mark.parametrize("client", [True, False], ids=["client", "copied"])
def test_weight_gradient_sums_are_reserved_at_the_first_backward_call(client, winograd, backend, rng,
                                                                       no_filter_leaks):
    """A filter reserves the weight gradient's sums at the first backward call that computes dW on
    Winograd, not when it is made nor for forward or input-gradient calls, and keeps them for the
    next calls (a filter owning its weights: its client-pointer twin, made at its first backward
    call, holds them)."""
    n, cin, cout, h, w, workers = 2, 96, 80, 12, 12, 2
    weight, bias = random_array(rng, (cout, cin, 3, 3), 0.3), random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                   weight, bias, AF.identity, workers, flags=None if client else Flags.none)
    x = random_array(rng, (n, cin, h, w))
    with layer:
        def reserved():
            return backend.lib.bnns_portable_filter_reserved_bytes(layer.bnns_filter)

        made = reserved()
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        assert reserved() == made, "a forward call reserves nothing"
        dy = random_array(rng, y.shape)
        dx = np.empty_like(x)
        layer.apply_backward(n, x, y, dy, dx)
        without_dw = reserved()
        assert without_dw == made if client else without_dw > made, "dx alone reserves no sums (a twin at most)"
        after = []
        for _ in range(2):
            dw = np.full(weight.shape, np.nan, np.float32)
            layer.apply_backward(n, x, y, dy, dx, dw)
            _, dw_ref, _ = reference.conv2d_backward(x, weight, dy, padding=(1, 1, 1, 1))
            assert_close_to_reference(dw, dw_ref, n * oh * ow, "weight gradient")
            after.append(reserved())
    assert after[0] >= without_dw + _sums_bytes(cin, cout, workers), "the first dW call reserves the sums"
    assert after[1] == after[0], "and the next ones reuse them"


def test_concurrent_weight_gradients_on_one_layer(winograd, backend, rng, no_filter_leaks):
    """Threads computing dW on one layer at once, while another thread keeps the worker pool busy
    with a larger layer: the call holding the filter's workspace uses its sums, the others their
    own, and a call that finds the pool busy sums every tile row alone (adding no other worker's
    sums, left from an earlier call); every result is the reference's."""
    import threading

    n, cin, cout, h, w = 2, 40, 36, 10, 10
    weight, bias = random_array(rng, (cout, cin, 3, 3), 0.3), random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                   weight, bias, AF.identity, 2)
    big_weight = random_array(rng, (64, 64, 3, 3), 0.3)
    big, _ = client_layer(ConvolutionType.standard, 64, 64, 40, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                          big_weight, None, AF.identity, 2)
    inputs = [(random_array(rng, (n, cin, h, w)), random_array(rng, (n, cout, oh, ow))) for _ in range(3)]
    expected = [reference.conv2d_backward(x, weight, dy, padding=(1, 1, 1, 1))[1] for x, dy in inputs]
    failures, done = [], threading.Event()

    def work(i):
        x, dy = inputs[i]
        dw = np.empty_like(weight)
        for _ in range(60):
            layer.apply_backward(n, x, None, dy, None, dw)
            if np.abs(dw - expected[i]).max() > 1e-5 * np.sqrt(n * oh * ow) * max(1.0, np.abs(expected[i]).max()):
                failures.append(i)
                return

    def keep_the_pool_busy():
        x, y = random_array(rng, (4, 64, 40, 40)), np.empty((4, 64, 40, 40), np.float32)
        while not done.wait(0.002):  # busy, then free: calls of both kinds
            big.apply(4, x, y)

    with layer, big:
        hog = threading.Thread(target=keep_the_pool_busy)
        hog.start()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        hog.join()
    assert failures == []


# Runs in a child process per tier (chosen once per process, when the library loads): the Winograd
# weight gradient, set and accumulated, of an undilated and a dilated layer with odd channel counts
# and batches, the sums split over 2 workers, against the float64 reference.
TIER_CHILD = r"""
import json, sys
import numpy as np
import bnns_py
from bnns_py import ActivationFunction as AF, ConvolutionType, NDArrayDescriptor, NDArrayFlags, reference
from conftest import client_layer

rng = np.random.default_rng(5)
errors = {}
for n, cin, cout, h, w, pad, dil in [(3, 33, 19, 13, 11, (1, 1, 1, 1), 1), (3, 35, 21, 18, 17, (2, 2, 2, 2), 2)]:
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = (0.3 * rng.standard_normal((cout, cin, 3, 3))).astype(np.float32)
    start = rng.standard_normal(weight.shape).astype(np.float32)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (3, 3), (1, 1), pad, (dil, dil), 1,
                                   weight, None, AF.identity, 2)
    with layer:
        assert bnns_py.get_backend().filter_engine(layer.bnns_filter, "weights_gradient") == "winograd"
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        for accumulate in (False, True):
            flag = NDArrayFlags.backprop_accumulate if accumulate else NDArrayFlags.backprop_set
            dw = NDArrayDescriptor(start.copy().reshape(-1), layer.weights.shape, flags=flag)
            layer.apply_backward(n, x, y, dy, None, dw)
            expected = reference.conv2d_backward(x, weight, dy, padding=pad, dilation=dil)[1] + accumulate * start
            scale = np.sqrt(n * oh * ow) * max(1.0, np.abs(expected).max())
            errors[f"d{dil} accumulate={accumulate}"] = float(np.abs(dw.data.reshape(weight.shape) - expected).max()
                                                             / scale)
print(json.dumps(dict(isa=bnns_py.backend_info()["isa"], errors=errors)))
"""


# The forward pass and input gradient of test_batch_blocks_over_threads's first case on 2 and 3
# workers: the largest error relative to the test's tolerance (above 1: a failure).
FORWARD_TIER_CHILD = r"""
import json
import numpy as np
import bnns_py
from test_winograd import BLOCK_CASES, _relu_layer_and_references, _tolerance

rng = np.random.default_rng(7)
case = BLOCK_CASES[0]
n, cin, cout = case[:3]
errors = {}
for threads in (2, 3):
    x, dy, layer, y_ref, dx_ref = _relu_layer_and_references(rng, case, threads)
    with layer:
        assert bnns_py.get_backend().filter_engine(layer.bnns_filter) == "winograd"
        y, dx = np.full(y_ref.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
        layer.apply(n, x, y)
        layer.apply_backward(n, x, y, dy, dx)
    for name, got, ref, channels in (("y", y, y_ref, cin), ("dx", dx, dx_ref(y), cout)):
        excess = np.abs(got - ref) / (1e-4 * np.abs(ref) + _tolerance(channels))
        errors[f"{name} {threads} threads"] = float(np.nan_to_num(excess, nan=np.inf).max())
print(json.dumps(dict(isa=bnns_py.backend_info()["isa"], errors=errors)))
"""


def _run_on_tier(isa, script, tile="2"):
    """The JSON line a child process prints after running `script` on tier `isa` (skipped when this
    CPU / build does not run it) with the Winograd pass forced on tiles of `tile`, with its "isa"
    checked."""
    available = bnns_py.backend_info().get("isa_available", "").split()
    if isa not in available:
        pytest.skip(f"this CPU / build does not run the {isa} tier (it runs: {' '.join(available)})")
    env = dict(os.environ, BNNS_PY_ISA=isa, BNNS_PY_PORTABLE_ENGINE="winograd", BNNS_PY_WINOGRAD_TILE=tile)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                           cwd=tests_dir)
    assert child.returncode == 0, child.stderr[-3000:]
    info = json.loads(child.stdout.strip().splitlines()[-1])
    assert info["isa"] == isa
    return info


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_weight_gradient_on_each_tier(isa):
    info = _run_on_tier(isa, TIER_CHILD)
    assert len(info["errors"]) == 4
    assert max(info["errors"].values()) <= 1e-5, info["errors"]


@pytest.mark.parametrize("tile", ["2", "4"], ids=["F2", "F4"])
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_batch_blocks_on_each_tier(isa, tile):
    info = _run_on_tier(isa, FORWARD_TIER_CHILD, tile)
    assert len(info["errors"]) == 4
    assert max(info["errors"].values()) <= 1.0, info["errors"]


# Which passes of small-channel layers (CIFAR-style, batch 32) the automatic choice gives to
# Winograd on AVX-512: its products take at least 64 output and 32 input channels (forward, and the
# input gradient as the adjoint convolution with in and out swapped); the weight gradient also
# takes layers of 16 or more channels over output planes of at least 32x32. The rest runs on the
# direct engine, which was measured faster there (plan/plan.c). Other tiers (product blocks of 16
# channels) keep 16 output channels: their choices are not pinned here, their results are checked.
SMALL_CHANNEL_CHOICES = [
    # cin, cout, size: forward, input gradient, weight gradient on Winograd
    ((3, 16, 32), (False, False, False)),
    ((16, 16, 32), (False, False, True)),
    ((16, 32, 32), (False, False, True)),
    ((32, 32, 32), (False, False, True)),
    ((32, 32, 16), (False, False, False)),
    ((32, 64, 16), (True, False, True)),
    ((64, 32, 16), (False, True, False)),
    ((64, 64, 16), (True, True, True)),
]


@pytest.mark.parametrize("shape,on_winograd", SMALL_CHANNEL_CHOICES, ids=lambda v: "-".join(map(str, v)))
def test_small_channel_passes_choice_and_gradients(shape, on_winograd, backend, rng, monkeypatch, no_filter_leaks):
    """Each pass on the engine the rule gives it, and its results against the float64 reference."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    cin, cout, size = shape
    n = 2
    x, weight, bias, layer, (oh, ow) = _same_layer(rng, n, cin, cout, size, size)
    with layer:
        chosen = [backend.filter_engine(layer.bnns_filter, p, batch=n) == "winograd"
                  for p in ("forward", "input_gradient", "weights_gradient")]
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = np.empty_like(x), np.empty_like(weight), np.empty_like(bias)
        layer.apply_backward(n, x, y, dy, dx, dw, db)
    if bnns_py.backend_info()["simd"] == "AVX-512":
        assert chosen == list(on_winograd)
    np.testing.assert_allclose(y, reference.conv2d(x, weight, bias, padding=(1, 1, 1, 1)), rtol=1e-4,
                               atol=_tolerance(cin))
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, padding=(1, 1, 1, 1))
    assert_close_to_reference(dx, dx_ref, cout * 9, "input gradient")
    assert_close_to_reference(dw, dw_ref, n * oh * ow, "weight gradient")
    assert_close_to_reference(db, db_ref, n * oh * ow, "bias gradient")
