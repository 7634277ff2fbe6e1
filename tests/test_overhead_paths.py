"""The low-overhead paths: ``UnaryLayer.apply``'s repeated-call fast path, the ``conv2d`` filter
cache and zero-copy strided views in the functional API. Each must give the same results and
raise the same errors as the fully checked paths."""
import gc
import threading

import numpy as np
import pytest

import bnns_py
from bnns_py import (ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType, LayerClosedError,
                     NDArrayDescriptor, Shape, reference)

from conftest import assert_close_to_reference, random_array


def tiny_layer(rng, channels=8, size=8):
    weights = random_array(rng, (channels, channels, 3, 3))
    bias = random_array(rng, (channels,))
    layer = ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(size, size, channels)),
        NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, channels, channels)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(size, size, channels)),
        NDArrayDescriptor(bias, Shape.vector(channels)), ConvolutionPadding.symmetric(1, 1))
    return layer, weights, bias


# ---- UnaryLayer.apply fast path ----------------------------------------------------------------


def test_repeated_apply_matches_reference_and_follows_new_data(rng, no_filter_leaks):
    layer, weights, bias = tiny_layer(rng)
    with layer:
        x = random_array(rng, (2, 8, 8, 8))
        out = np.empty_like(x)
        for _ in range(3):
            x[:] = random_array(rng, x.shape)  # same arrays, new values: the fast path reads them
            layer.apply(2, x, out)
            assert_close_to_reference(out, reference.conv2d(x, weights, bias, padding=1), 72)
        # a different batch size or other arrays take the checked path and still work
        layer.apply(1, x, out)
        x2, out2 = x.copy(), np.empty_like(out)
        layer.apply(2, x2, out2)
        assert_close_to_reference(out2, reference.conv2d(x2, weights, bias, padding=1), 72)


def test_fast_path_still_refuses_bad_arguments(rng, no_filter_leaks):
    layer, *_ = tiny_layer(rng)
    with layer:
        x = random_array(rng, (1, 8, 8, 8))
        out = np.empty_like(x)
        layer.apply(1, x, out)  # remembered
        for bad in (True, 0, -1, 1.0):
            with pytest.raises((TypeError, ValueError)):
                layer.apply(bad, x, out)
        with pytest.raises(ValueError, match="holds 512 values, needs at least 1024"):
            layer.apply(2, x, out)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            layer.apply(1, x, out)
        out.flags.writeable = True
        layer.apply(1, x, out)
        with pytest.raises(ValueError, match="share memory"):
            layer.apply(1, out, out)
        with pytest.raises(TypeError, match="dtype"):
            layer.apply(1, x.astype(np.float64), out)
        with pytest.raises(ValueError, match="C-contiguous"):
            layer.apply(1, np.asfortranarray(x[0])[np.newaxis], out)
        layer.apply(1, x, out)
    with pytest.raises(LayerClosedError):
        layer.apply(1, x, out)


def test_fast_path_sees_in_place_dtype_change(rng, no_filter_leaks):
    layer, *_ = tiny_layer(rng)
    with layer:
        x = random_array(rng, (1, 8, 8, 8))
        out = np.empty_like(x)
        layer.apply(1, x, out)
        view = x.view()
        layer.apply(1, view, out)
        view.dtype = np.int32  # same memory, another dtype: must be refused again
        with pytest.raises(TypeError, match="dtype"):
            layer.apply(1, view, out)


def test_close_forgets_the_remembered_arrays(rng, no_filter_leaks):
    import weakref
    layer, *_ = tiny_layer(rng)
    x = random_array(rng, (1, 8, 8, 8))
    out = np.empty_like(x)
    layer.apply(1, x, out)
    probe = weakref.ref(x)
    del x
    assert probe() is not None  # the layer remembers it for the next call
    layer.close()
    gc.collect()
    assert probe() is None


def test_apply_from_many_threads(rng, no_filter_leaks):
    layer, weights, bias = tiny_layer(rng)
    inputs = [random_array(rng, (1, 8, 8, 8)) for _ in range(4)]
    expected = [reference.conv2d(x, weights, bias, padding=1) for x in inputs]
    errors = []

    def work(k):
        out = np.empty_like(inputs[k])
        for i in range(200):
            x = inputs[(k + i) % 4]
            layer.apply(1, x, out)
            if np.abs(out - expected[(k + i) % 4]).max() > 1e-3:
                errors.append(k)

    with layer:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
