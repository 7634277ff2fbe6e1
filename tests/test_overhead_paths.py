"""The low-overhead paths: ``UnaryLayer.apply``'s repeated-call fast path, ``apply_backward``'s
remembered gradient descriptors, the ``conv2d`` filter cache and zero-copy strided views in the
functional API. Each must give the same results and raise the same errors as the fully checked
paths."""
import gc
import threading

import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction, ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType,
                     LayerClosedError, NDArrayDescriptor, Shape, reference)

from conftest import assert_close_to_reference, client_layer, random_array


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
        # a different batch size or other arrays take the checked path and still work; one item
        # goes through the three-argument BNNSFilterApply, fast path included
        for _ in range(2):
            x[0] = random_array(rng, x.shape[1:])
            out[:] = np.nan
            layer.apply(1, x[:1], out[:1])
            assert_close_to_reference(out[:1], reference.conv2d(x[:1], weights, bias, padding=1), 72)
            assert np.isnan(out[1]).all()
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


def training_layer(rng, channels=8, size=8):
    weights = random_array(rng, (channels, channels, 3, 3))
    bias = random_array(rng, (channels,))
    layer, _ = client_layer(ConvolutionType.standard, channels, channels, size, size, (3, 3), (1, 1), (1, 1, 1, 1),
                            (1, 1), 1, weights, bias, ActivationFunction.identity, 1)
    return layer, weights, bias


def test_repeated_apply_backward_follows_new_data_and_still_checks(rng, no_filter_leaks):
    """apply_backward remembers the descriptors it made for numpy gradient arrays; given the same
    arrays again it must read their new values and re-check their memory."""
    layer, weights, bias = training_layer(rng)
    with layer:
        x = random_array(rng, (2, 8, 8, 8))
        y = np.empty_like(x)
        dy, dx, dw, db = np.empty_like(x), np.empty_like(x), np.empty_like(weights), np.empty_like(bias)
        for _ in range(3):
            x[:] = random_array(rng, x.shape)
            dy[:] = random_array(rng, x.shape)
            dx[:], dw[:], db[:] = np.nan, np.nan, np.nan
            layer.apply(2, x, y)
            layer.apply_backward(2, x, y, dy, dx, dw, db)
            dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weights, dy, padding=1)
            np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-3)
        # one image: the remembered batch-2 descriptors do not apply; the first image's gradients
        dx[:] = np.nan
        layer.apply_backward(1, x[:1], y[:1], dy[:1], dx[:1])
        np.testing.assert_allclose(dx[:1], reference.conv2d_backward(x[:1], weights, dy[:1], padding=1)[0],
                                   rtol=1e-4, atol=1e-4)
        assert np.isnan(dx[1]).all()
        dx.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            layer.apply_backward(1, x[:1], y[:1], dy[:1], dx[:1])
        dx.flags.writeable = True
        view = dw.view()
        layer.apply_backward(2, x, y, dy, None, view)
        view.dtype = np.int32
        with pytest.raises(TypeError, match="dtype"):
            layer.apply_backward(2, x, y, dy, None, view)
        with pytest.raises(ValueError, match="holds 512 values, needs at least 1024"):
            layer.apply_backward(2, x, y, dy, dx[:1])


def test_close_forgets_the_remembered_gradients(rng, no_filter_leaks):
    import weakref
    layer, *_ = training_layer(rng)
    x = random_array(rng, (1, 8, 8, 8))
    y, dy, dx = np.empty_like(x), random_array(rng, x.shape), np.empty_like(x)
    layer.apply(1, x, y)
    layer.apply_backward(1, x, y, dy, dx)
    probe = weakref.ref(dx)
    del dx
    assert probe() is not None
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


# ---- conv2d filter cache -----------------------------------------------------------------------


def _counts():
    gc.collect()
    return bnns_py.filter_counts()


def test_conv2d_reuses_one_filter_and_reads_the_weights_in_place(rng, fresh_cache, no_filter_leaks):
    x = random_array(rng, (2, 8, 8, 8))
    weight, bias = random_array(rng, (8, 8, 3, 3)), random_array(rng, (8,))
    created, _ = _counts()
    first = bnns_py.conv2d(x, weight, bias, padding=1)
    again = bnns_py.conv2d(x, weight, bias, padding=1)
    assert bnns_py.filter_counts()[0] - created == 1
    assert bnns_py.cached_filter_count() == 1
    np.testing.assert_array_equal(first, again)
    assert again is not first
    assert_close_to_reference(first, reference.conv2d(x, weight, bias, padding=1), 72)
    weight *= 2  # the cached filter reads the caller's weights at every call
    bias *= 2
    x[0, 0, 0, 0] += 1
    assert_close_to_reference(bnns_py.conv2d(x, weight, bias, padding=1),
                              reference.conv2d(x, weight, bias, padding=1), 72)
    # equivalent spellings of the arguments and another view of the same weight memory share it
    bnns_py.conv2d(x, weight, bias, padding=(1, 1), stride=(1, 1))
    bnns_py.conv2d(x, weight.view(), bias, padding=[1, 1, 1, 1])
    assert bnns_py.filter_counts()[0] - created == 1
    # another geometry or other weights: another filter
    bnns_py.conv2d(x[:1], weight, bias, padding=1)
    bnns_py.conv2d(x, weight.copy(), bias, padding=1)
    bnns_py.conv2d(x, weight, None, padding=1)
    assert bnns_py.cached_filter_count() == 4
    bnns_py.clear_cache()
    assert bnns_py.cached_filter_count() == 0
    created2, destroyed2 = _counts()
    assert created2 - created == 4


def test_conv2d_cache_evicts_least_recently_used(rng, fresh_cache, no_filter_leaks, backend):
    bnns_py.set_cache_size(3)
    x = random_array(rng, (1, 4, 6, 6))
    weights = [random_array(rng, (4, 4, 3, 3)) for _ in range(5)]
    created, destroyed = _counts()
    for w in weights[:3]:
        bnns_py.conv2d(x, w)
    bnns_py.conv2d(x, weights[0])  # most recent now
    bnns_py.conv2d(x, weights[3])  # evicts weights[1]'s filter
    assert bnns_py.cached_filter_count() == 3
    created2, destroyed2 = _counts()
    assert (created2 - created, destroyed2 - destroyed) == (4, 1)
    bnns_py.conv2d(x, weights[0])
    bnns_py.conv2d(x, weights[2])
    assert bnns_py.filter_counts()[0] - created == 4  # both still cached
    bnns_py.set_cache_size(0)  # off: every filter goes, and new calls keep none
    assert bnns_py.cached_filter_count() == 0
    out = bnns_py.conv2d(x, weights[4])
    assert bnns_py.cached_filter_count() == 0
    assert_close_to_reference(out, reference.conv2d(x, weights[4]), 36)
    created3, destroyed3 = _counts()
    assert created3 - created == destroyed3 - destroyed == 5


def test_conv2d_cache_keeps_weights_alive_until_cleared(rng, fresh_cache, no_filter_leaks):
    import weakref
    x = random_array(rng, (1, 4, 6, 6))
    weight = random_array(rng, (4, 4, 3, 3))
    bnns_py.conv2d(x, weight)
    probe = weakref.ref(weight)
    del weight
    gc.collect()
    assert probe() is not None
    bnns_py.clear_cache()
    gc.collect()
    assert probe() is None


def test_conv2d_cached_call_still_refuses_bad_arguments(rng, fresh_cache, no_filter_leaks):
    x = random_array(rng, (1, 4, 6, 6))
    weight = random_array(rng, (4, 4, 3, 3))
    out = np.empty((1, 4, 6, 6), np.float32)
    bnns_py.conv2d(x, weight, padding=1, out=out)
    bnns_py.conv2d(x, weight, padding=1, stride=1)
    for bad in (dict(padding=True), dict(stride=1.0), dict(padding=1, groups=True),
                dict(padding=1, stride=(1, True))):
        with pytest.raises((TypeError, ValueError)):
            bnns_py.conv2d(x, weight, **bad)
    with pytest.raises(ValueError, match="shares memory"):
        bnns_py.conv2d(out, weight, padding=1, out=out)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        bnns_py.conv2d(x, weight, padding=1, out=out)
    with pytest.raises(TypeError, match="dtype"):
        bnns_py.conv2d(x.astype(np.float64), weight, padding=1)
    with pytest.raises(TypeError, match="dtype"):
        bnns_py.conv2d(x, weight, padding=1, out=out.astype(np.float64))
    same = x.view()
    bnns_py.conv2d(same, weight, padding=1)
    same.shape = (1, 2, 12, 6)  # same object, other channels: the checked path refuses it
    with pytest.raises(ValueError, match="2 channels"):
        bnns_py.conv2d(same, weight, padding=1)
    weight.shape = (4, 36, 1, 1)  # same object, another geometry: not the cached filter
    with pytest.raises(ValueError, match="channels"):
        bnns_py.conv2d(x, weight, padding=1)


def test_conv2d_uncacheable_weights_get_a_one_off_filter(rng, fresh_cache, no_filter_leaks):
    x = random_array(rng, (1, 4, 6, 6))
    weight = random_array(rng, (4, 4, 3, 3)).astype(np.float64)
    with pytest.raises(TypeError, match="float32"):
        bnns_py.conv2d(x, weight)
    strided = random_array(rng, (4, 8, 3, 3))[:, ::2]  # converted to a contiguous copy: not cached
    out = bnns_py.conv2d(x, strided)
    assert bnns_py.cached_filter_count() == 0
    assert_close_to_reference(out, reference.conv2d(x, strided), 36)


def test_conv_transpose2d_cache_follows_weight_changes(rng, fresh_cache, no_filter_leaks):
    x = random_array(rng, (2, 6, 5, 5))
    weight = random_array(rng, (6, 2, 3, 3))
    bias = random_array(rng, (4,))
    for step in range(3):
        actual = bnns_py.conv_transpose2d(x, weight, bias, stride=2, padding=1, groups=2)
        expected = reference.conv_transpose2d(x, weight, bias, stride=2, padding=1, groups=2)
        assert_close_to_reference(actual, expected, 27)
        weight += 0.5
    assert bnns_py.cached_filter_count() == 1


def test_conv2d_cache_from_many_threads(rng, fresh_cache, no_filter_leaks):
    bnns_py.set_cache_size(2)
    x = random_array(rng, (1, 4, 6, 6))
    weights = [random_array(rng, (4, 4, 3, 3)) for _ in range(4)]
    expected = [reference.conv2d(x, w, padding=1) for w in weights]
    errors = []

    def work(k):
        try:
            for i in range(60):
                j = (k + i) % 4
                if np.abs(bnns_py.conv2d(x, weights[j], padding=1) - expected[j]).max() > 1e-3:
                    errors.append((k, i))
                if i % 25 == 0:
                    bnns_py.clear_cache()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert bnns_py.cached_filter_count() <= 2


# ---- strided views in the functional API -------------------------------------------------------


def _descriptor_strides(entry):
    layer = entry.layer
    return layer.input_descriptor.shape.strides, layer.output_descriptor.shape.strides


def _only_entry():
    from bnns_py.functional import _Cache
    (entry,) = _Cache.entries.values()
    return entry


@pytest.mark.requires_image_strides
@pytest.mark.parametrize("transposed", [False, True])
def test_channel_slice_and_padded_window_are_read_in_place(rng, fresh_cache, no_filter_leaks, transposed):
    big = random_array(rng, (3, 16, 9, 11))
    padded = random_array(rng, (3, 8, 11, 13))
    weight = random_array(rng, (8, 4, 3, 3) if transposed else (4, 8, 3, 3))
    function = bnns_py.conv_transpose2d if transposed else bnns_py.conv2d
    ref = reference.conv_transpose2d if transposed else reference.conv2d
    for view, row_stride, channel_stride in ((big[:, 2:10], 0, 0), (padded[:, :, 1:-1, 1:-1], 13, 11 * 13)):
        bnns_py.clear_cache()
        actual = function(view, weight, padding=1)
        entry = _only_entry()
        expected_array = function(np.ascontiguousarray(view), weight, padding=1)
        np.testing.assert_array_equal(actual, expected_array)
        assert_close_to_reference(actual, ref(view, weight, padding=1), 72)
        assert not entry.copy_x  # no copy: the descriptor carries the view's strides
        in_strides, _ = _descriptor_strides(entry)
        assert in_strides == ((0, 0, 0) if row_stride == 0 else (1, row_stride, channel_stride))
        assert entry.in_stride == view.strides[0] // 4
        # a single (C, H, W) image view too (to rounding: one image may be cut into other GEMM
        # blocks than a batch, so that it splits evenly over the threads)
        np.testing.assert_allclose(function(view[1], weight, padding=1), expected_array[1], rtol=1e-5, atol=1e-5)


@pytest.mark.requires_image_strides
def test_output_view_is_written_in_place(rng, fresh_cache, no_filter_leaks):
    x = random_array(rng, (2, 4, 6, 6))
    weight, bias = random_array(rng, (4, 4, 3, 3)), random_array(rng, (4,))
    canvas = np.full((2, 12, 8, 8), 7.0, np.float32)
    window = canvas[:, 3:7, 1:-1, 1:-1]
    returned = bnns_py.conv2d(x, weight, bias, padding=1, out=window)
    assert returned is window
    strides = _descriptor_strides(_only_entry())[1]
    np.testing.assert_array_equal(window, bnns_py.conv2d(x, weight, bias, padding=1))
    untouched = canvas.copy()
    untouched[:, 3:7, 1:-1, 1:-1] = 7.0
    assert (untouched == 7.0).all()  # nothing outside the window was written
    assert strides == (1, 8, 64)
    # again (cached), into other channels
    bnns_py.conv2d(x, weight, bias, padding=1, out=canvas[:, 8:12, 1:-1, 1:-1])
    np.testing.assert_array_equal(canvas[:, 8:12, 1:-1, 1:-1], window)


def test_input_and_output_views_of_one_buffer_that_do_not_overlap(rng, fresh_cache, no_filter_leaks):
    buffer = random_array(rng, (1, 8, 6, 6))
    x, out = buffer[:, :4], buffer[:, 4:]
    expected = bnns_py.conv2d(x.copy(), np.ones((4, 4, 1, 1), np.float32))
    bnns_py.conv2d(x, np.ones((4, 4, 1, 1), np.float32), out=out)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="shares memory"):
        bnns_py.conv2d(buffer[:, :4], np.ones((4, 4, 1, 1), np.float32), out=buffer[:, 2:6])


def test_layouts_bnns_cannot_describe_are_copied_or_refused(rng, fresh_cache, no_filter_leaks):
    weight = random_array(rng, (4, 4, 3, 3))
    base = random_array(rng, (2, 6, 6, 4))
    for x in (base.transpose(0, 3, 1, 2),                          # channels last: x stride 4
              random_array(rng, (2, 4, 6, 12))[..., ::2],           # every other column
              random_array(rng, (2, 4, 6, 6))[:, ::-1],             # negative channel stride
              np.broadcast_to(random_array(rng, (1, 4, 6, 6)), (2, 4, 6, 6))):  # batch stride 0
        bnns_py.clear_cache()
        actual = bnns_py.conv2d(x, weight)
        assert _only_entry().copy_x
        assert bnns_py.conv2d(x, weight) is not actual  # the cached filter copies again
        np.testing.assert_array_equal(actual, bnns_py.conv2d(np.ascontiguousarray(x), weight))
    for out in (np.empty((2, 4, 4, 8), np.float32)[..., ::2],              # every other column
                np.empty((2, 4, 4, 4), np.float32).transpose(0, 3, 2, 1)):   # x stride 16
        with pytest.raises(ValueError, match="not C-contiguous"):
            bnns_py.conv2d(base.transpose(0, 3, 1, 2), weight, out=out)


# ---- modules: calls with the layouts of an earlier call ------------------------------------------


def test_module_repeated_calls_follow_new_data_weights_and_layouts(rng, no_filter_leaks):
    weight, bias = random_array(rng, (6, 4, 3, 3)), random_array(rng, (6,))
    with bnns_py.Conv2d(weight, bias, padding=1, activation=ActivationFunction.rectified_linear) as conv:
        x = random_array(rng, (2, 4, 7, 7))
        out = np.empty((2, 6, 7, 7), np.float32)
        for step in range(3):  # the same arrays, new values in x and in the weights read in place
            x[:] = random_array(rng, x.shape)
            out[:] = np.nan
            assert conv(x, out=out) is out
            expected = np.maximum(reference.conv2d(x, weight, bias, padding=1), 0)
            assert_close_to_reference(out, expected, 36, f"step {step}")
            weight += 0.25
        assert len(conv._runners) == 1
        # other arrays of the same layout, a new result, one image, another size: each right
        for x2, out2 in ((x.copy(), np.empty_like(out)), (x.copy(), None), (x[1], None),
                         (random_array(rng, (1, 4, 5, 9)), None)):
            for _ in range(2):
                y = conv(x2, out=out2)
                expected = np.maximum(reference.conv2d(x2 if x2.ndim == 4 else x2[None], weight, bias, padding=1), 0)
                assert y.shape == (expected.shape if x2.ndim == 4 else expected.shape[1:])
                assert_close_to_reference(y.reshape(expected.shape), expected, 36)


def test_module_repeated_call_still_refuses_bad_arguments(rng, no_filter_leaks):
    with bnns_py.Conv2d(random_array(rng, (4, 4, 3, 3)), padding=1) as conv:
        x = random_array(rng, (1, 4, 6, 6))
        out = np.empty((1, 4, 6, 6), np.float32)
        conv(x, out=out)
        conv(out, out=x)  # this layout with other arrays: remembered too
        with pytest.raises(ValueError, match="shares memory"):
            conv(out, out=out)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            conv(x, out=out)
        view = x.view()
        conv(view)
        view.dtype = np.int32  # same object and layout, another dtype: refused again
        with pytest.raises(TypeError, match="dtype"):
            conv(view)


def test_transposed_module_repeated_calls_follow_weight_changes(rng, no_filter_leaks):
    weight, bias = random_array(rng, (6, 2, 3, 3)), random_array(rng, (4,))
    with bnns_py.ConvTranspose2d(weight, bias, stride=2, padding=1, groups=2) as up:
        x = random_array(rng, (2, 6, 5, 5))
        out = np.empty((2, 4, 9, 9), np.float32)
        for step in range(3):
            up(x, out=out)
            expected = reference.conv_transpose2d(x, weight, bias, stride=2, padding=1, groups=2)
            assert_close_to_reference(out, expected, 27, f"step {step}")
            weight += 0.5


def test_module_close_forgets_the_remembered_arrays(rng, no_filter_leaks):
    import weakref
    conv = bnns_py.Conv2d(random_array(rng, (4, 4, 3, 3)), padding=1)
    x = random_array(rng, (1, 4, 6, 6))
    conv(x)
    conv(x)
    probe = weakref.ref(x)
    del x
    assert probe() is not None  # remembered for the next call
    conv.close()
    gc.collect()
    assert probe() is None
    with pytest.raises(LayerClosedError):
        conv(random_array(rng, (1, 4, 6, 6)))
