"""The numpy-first functions' signatures, padding='same'/'valid', array objects in place, linear's
filter cache and the image-stride gate (without PyTorch; test_torch.py compares with PyTorch)."""
import array
import gc
import inspect

import numpy as np
import pytest

import bnns_py
from bnns_py import reference
from bnns_py._arrays import as_numpy
from bnns_py.functional import _Cache, same_padding

from conftest import assert_close_to_reference, random_array


def _parameters(function):
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(function).parameters.values()]


P, K, E = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY", inspect.Parameter.empty


def test_signatures_are_pytorchs_with_keyword_only_extras():
    extras = [("activation", K, None), ("backend", K, None), ("out", K, None)]
    assert _parameters(bnns_py.conv2d) == [
        ("input", P, E), ("weight", P, E), ("bias", P, None), ("stride", P, 1), ("padding", P, 0),
        ("dilation", P, 1), ("groups", P, 1)] + extras
    assert _parameters(bnns_py.conv_transpose2d) == [
        ("input", P, E), ("weight", P, E), ("bias", P, None), ("stride", P, 1), ("padding", P, 0),
        ("output_padding", P, 0), ("groups", P, 1), ("dilation", P, 1)] + extras
    assert _parameters(bnns_py.linear) == [("input", P, E), ("weight", P, E), ("bias", P, None)] + extras
    module_extras = [("activation", K, None), ("backend", K, None), ("n_threads", K, 0), ("copy_weights", K, False)]
    assert _parameters(bnns_py.Conv2d)[6:] == _parameters(bnns_py.ConvTranspose2d)[7:] == module_extras
    assert [p[0] for p in _parameters(bnns_py.Conv2d)] == [
        "weight", "bias", "stride", "padding", "dilation", "groups", "activation", "backend", "n_threads", "copy_weights"]
    assert [p[0] for p in _parameters(bnns_py.ConvTranspose2d)] == [
        "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation", "activation", "backend",
        "n_threads", "copy_weights"]
    assert _parameters(bnns_py.Linear)[2:] == module_extras


def test_conv_transpose2d_positional_groups_come_before_dilation(rng, no_filter_leaks):
    x = random_array(rng, (1, 4, 5, 5))
    weight = random_array(rng, (4, 3, 3, 3))  # groups=2: 6 output channels
    actual = bnns_py.conv_transpose2d(x, weight, None, 1, 0, 0, 2)  # PyTorch: groups=2
    assert actual.shape == (1, 6, 7, 7)
    assert_close_to_reference(actual, reference.conv_transpose2d(x, weight, groups=2), 18)
    dilated = bnns_py.conv_transpose2d(x, weight, None, 1, 0, 0, 1, 2)  # groups=1, dilation=2
    assert dilated.shape == (1, 3, 9, 9)
    assert_close_to_reference(dilated, reference.conv_transpose2d(x, weight, dilation=2), 36)


def test_keyword_names_and_keyword_only_extras(rng, no_filter_leaks):
    x, weight, bias = random_array(rng, (2, 3, 6, 6)), random_array(rng, (4, 3, 3, 3)), random_array(rng, (4,))
    expected = bnns_py.conv2d(x, weight, bias, 2, 1, 1, 1)
    np.testing.assert_array_equal(
        bnns_py.conv2d(input=x, weight=weight, bias=bias, stride=2, padding=1, dilation=1, groups=1), expected)
    with pytest.raises(TypeError):
        bnns_py.conv2d(x, weight, bias, 1, 0, 1, 1, "relu")  # activation is keyword-only
    with pytest.raises(TypeError):
        bnns_py.conv2d(x=x, weight=weight)  # the old name of the input
    with pytest.raises(TypeError):
        bnns_py.linear(x[0, 0], weight[0, 0], None, "relu")
    lin_x, lin_w = random_array(rng, (3, 5)), random_array(rng, (2, 5))
    np.testing.assert_array_equal(bnns_py.linear(input=lin_x, weight=lin_w), bnns_py.linear(lin_x, lin_w))


# ---- padding="same" / "valid" ---------------------------------------------------------------------


@pytest.mark.parametrize("kernel, dilation", [((1, 1), (1, 1)), ((3, 3), (1, 1)), ((2, 2), (1, 1)),
                                              ((4, 3), (1, 1)), ((3, 5), (2, 1)), ((2, 4), (3, 2)),
                                              ((5, 2), (1, 3)), ((6, 6), (2, 2))])
def test_same_padding_keeps_the_size_with_the_odd_zero_at_the_end(kernel, dilation, rng, no_filter_leaks):
    x = random_array(rng, (2, 3, 9, 11))
    weight = random_array(rng, (4, 3) + kernel)
    actual = bnns_py.conv2d(x, weight, None, 1, "same", dilation)
    assert actual.shape == (2, 4, 9, 11)
    total_h, total_w = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
    sides = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
    assert same_padding(kernel, dilation) == sides
    expected = reference.conv2d(x, weight, padding=sides, dilation=dilation)
    assert_close_to_reference(actual, expected, weight[0].size)
    with bnns_py.Conv2d(weight, padding="same", dilation=dilation) as module:
        assert module.spec.padding == sides
        np.testing.assert_allclose(module(x), actual, rtol=1e-6, atol=1e-6)


def test_even_kernel_same_padding_is_one_more_at_the_end():
    assert same_padding((4, 2), (1, 1)) == (0, 1, 1, 2)


def test_valid_padding_is_no_padding(rng, no_filter_leaks):
    x, weight = random_array(rng, (1, 2, 7, 6)), random_array(rng, (3, 2, 3, 2))
    np.testing.assert_array_equal(bnns_py.conv2d(x, weight, padding="valid", stride=2),
                                  bnns_py.conv2d(x, weight, padding=0, stride=2))


def test_string_padding_refusals(rng, no_filter_leaks):
    x, weight = random_array(rng, (1, 2, 7, 7)), random_array(rng, (3, 2, 3, 3))
    with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
        bnns_py.conv2d(x, weight, stride=(1, 2), padding="same")
    with pytest.raises(ValueError, match="numeric padding only"):
        bnns_py.conv_transpose2d(x, random_array(rng, (2, 3, 3, 3)), padding="same")
    with pytest.raises(ValueError, match="'same' or 'valid'"):
        bnns_py.conv2d(x, weight, padding="full")
    with pytest.raises(ValueError, match="strided"):
        bnns_py.Conv2d(weight, stride=2, padding="same")


# ---- array objects read and written in place --------------------------------------------------------


class _DLPackOnly:
    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class _InterfaceOnly:
    def __init__(self, array):
        self._array = array
        self.__array_interface__ = array.__array_interface__


def _only_entry():
    (entry,) = _Cache.entries.values()
    return entry


@pytest.mark.parametrize("wrap", [_DLPackOnly, _InterfaceOnly, lambda a: memoryview(a)],
                         ids=["dlpack", "array_interface", "buffer"])
def test_array_objects_are_read_and_written_in_place(wrap, rng, fresh_cache, no_filter_leaks):
    x, weight, bias = random_array(rng, (2, 3, 6, 6)), random_array(rng, (4, 3, 3, 3)), random_array(rng, (4,))
    view = as_numpy("input", wrap(x))
    assert view.shape == x.shape and np.shares_memory(view, x)
    expected = bnns_py.conv2d(x, weight, bias, padding=1)
    bnns_py.clear_cache()
    actual = bnns_py.conv2d(wrap(x), wrap(weight), wrap(bias), padding=1)
    assert type(actual) is np.ndarray
    np.testing.assert_array_equal(actual, expected)
    entry = _only_entry()  # cached: the filter reads the caller's weight memory
    assert np.shares_memory(entry.weight, weight) and np.shares_memory(entry.bias, bias)
    assert np.shares_memory(entry.last[0], x) and not entry.copy_x
    weight *= 2
    np.testing.assert_allclose(bnns_py.conv2d(wrap(x), wrap(weight), wrap(bias), padding=1),
                               bnns_py.conv2d(x, weight, bias, padding=1), rtol=1e-6)
    out = np.zeros((2, 4, 6, 6), np.float32)
    returned_out = wrap(out)
    assert bnns_py.conv2d(wrap(x), weight, bias, padding=1, out=returned_out) is returned_out
    np.testing.assert_allclose(out, bnns_py.conv2d(x, weight, bias, padding=1), rtol=1e-6)


def test_buffer_protocol_vectors_and_unsupported_objects(rng, fresh_cache, no_filter_leaks):
    x = array.array("f", rng.standard_normal(5).astype(np.float32).tobytes())
    weight = random_array(rng, (3, 5))
    assert_close_to_reference(bnns_py.linear(x, weight), reference.linear(np.asarray(x), weight), 5)
    with pytest.raises(TypeError, match="a numpy array, a CPU torch tensor or an object with __dlpack__"):
        bnns_py.linear([[1.0] * 5], weight)
    with pytest.raises(TypeError, match="has dtype float64"):
        bnns_py.linear(array.array("d", [1.0] * 5), weight)
    with pytest.raises(TypeError, match="not bytes"):
        bnns_py.linear(b"\0" * 20, weight)
    with pytest.raises(ValueError, match="read-only"):
        bnns_py.linear(np.ones(5, np.float32), weight, out=memoryview(np.zeros(3, np.float32).tobytes()).cast("f"))


# ---- linear's filter cache -------------------------------------------------------------------------


def test_linear_reuses_one_filter_for_every_batch_and_sees_weight_updates(rng, fresh_cache, no_filter_leaks):
    weight, bias = random_array(rng, (7, 12)), random_array(rng, (7,))
    gc.collect()
    created, _ = bnns_py.filter_counts()
    for batch in (1, 3, 8, 3):
        x = random_array(rng, (batch, 12))
        assert_close_to_reference(bnns_py.linear(x, weight, bias, activation="relu"),
                                  reference.linear(x, weight, bias, activation=bnns_py.ActivationFunction.coerce("relu")),
                                  12)
    single = random_array(rng, (12,))
    assert bnns_py.linear(single, weight, bias, activation="relu").shape == (7,)
    assert bnns_py.filter_counts()[0] - created == 1
    assert bnns_py.cached_filter_count() == 1
    weight *= -1.5  # read in place at every call
    bias += 1
    x = random_array(rng, (4, 12))
    assert_close_to_reference(bnns_py.linear(x, weight, bias, activation="relu"),
                              reference.linear(x, weight, bias, activation=bnns_py.ActivationFunction.coerce("relu")),
                              12)
    assert bnns_py.filter_counts()[0] - created == 1
    bnns_py.linear(x, weight, bias)  # another activation, other weights: other filters
    bnns_py.linear(x, weight.copy(), bias)
    assert bnns_py.cached_filter_count() == 3
    bnns_py.set_cache_size(1)
    assert bnns_py.cached_filter_count() == 1
    bnns_py.clear_cache()
    gc.collect()
    created2, destroyed2 = bnns_py.filter_counts()
    assert created2 - created == 3


def test_linear_copies_are_not_cached_and_views_are_read_in_place(rng, fresh_cache, no_filter_leaks):
    weight = random_array(rng, (3, 8))
    strided_weight = random_array(rng, (3, 16))[:, ::2]  # a copy is made: not cached
    x = random_array(rng, (5, 8))
    assert_close_to_reference(bnns_py.linear(x, strided_weight), reference.linear(x, strided_weight), 8)
    assert bnns_py.cached_filter_count() == 0
    bnns_py.set_cache_size(0)
    assert_close_to_reference(bnns_py.linear(x, weight), reference.linear(x, weight), 8)
    assert bnns_py.cached_filter_count() == 0
    bnns_py.set_cache_size(4)
    wide = random_array(rng, (5, 20))
    rows = wide[:, 4:12]  # contiguous rows 20 apart: read in place
    canvas = np.full((5, 10), 9.0, np.float32)
    returned = bnns_py.linear(rows, weight, out=canvas[:, 2:5])
    assert returned.base is canvas
    assert_close_to_reference(canvas[:, 2:5], reference.linear(rows, weight), 8)
    assert (canvas[:, :2] == 9).all() and (canvas[:, 5:] == 9).all()
    columns = random_array(rng, (8, 5)).T  # every other layout is copied
    assert_close_to_reference(bnns_py.linear(columns, weight), reference.linear(columns, weight), 8)
    with pytest.raises(ValueError, match="rows are not contiguous"):
        bnns_py.linear(x, weight, out=np.empty((3, 5), np.float32).T)
    with pytest.raises(ValueError, match="shares memory"):
        bnns_py.linear(wide[:, :8], weight, out=wide[:, 6:9])


# ---- the image-stride gate (backends that do not honour image strides) --------------------------


def _descriptor_strides(entry):
    layer = entry.layer
    return layer.input_descriptor.shape.strides, layer.output_descriptor.shape.strides


@pytest.mark.parametrize("transposed", [False, True])
def test_strided_views_are_copied_where_image_strides_are_not_honoured(transposed, rng, fresh_cache,
                                                                        no_filter_leaks, backend, monkeypatch):
    big = random_array(rng, (2, 12, 9, 11))
    view = big[:, 2:10, 1:-1, 1:-1]
    weight = random_array(rng, (8, 4, 3, 3) if transposed else (4, 8, 3, 3))
    function = bnns_py.conv_transpose2d if transposed else bnns_py.conv2d
    packed = function(np.ascontiguousarray(view), weight, padding=1)
    out_h, out_w = packed.shape[2:]
    canvas = np.full((2, 10, out_h + 2, out_w + 3), 5.0, np.float32)
    window = canvas[:, 3:7, 1:1 + out_h, 2:2 + out_w]
    monkeypatch.setattr(backend, "honours_image_strides", False)
    bnns_py.clear_cache()
    for _ in range(2):  # made, then cached
        assert function(view, weight, padding=1, out=window) is window
        entry = _only_entry()
        assert entry.copy_x and entry.copy_out
        assert _descriptor_strides(entry) == ((0, 0, 0), (0, 0, 0))  # no strided descriptor reaches C
        np.testing.assert_array_equal(window, packed)
        untouched = canvas.copy()
        untouched[:, 3:7, 1:1 + out_h, 2:2 + out_w] = 5.0
        assert (untouched == 5.0).all()
        window[...] = 0
    np.testing.assert_array_equal(function(view, weight, padding=1), packed)
    module_class = bnns_py.ConvTranspose2d if transposed else bnns_py.Conv2d
    with module_class(weight, padding=1) as module:
        assert module(view, out=window) is window
        np.testing.assert_array_equal(window, packed)
        assert not module._view_layers  # one packed layer
    monkeypatch.undo()
    bnns_py.clear_cache()
    if backend.honours_image_strides:
        function(view, weight, padding=1, out=window)
        assert _descriptor_strides(_only_entry())[0] == (1, 11, 99)  # honoured: read in place


@pytest.mark.requires_image_strides
def test_conv2d_module_reads_strided_views_in_place(rng, no_filter_leaks):
    big = random_array(rng, (2, 12, 9, 11))
    view = big[:, 2:10, 1:-1, 1:-1]
    weight = random_array(rng, (4, 8, 3, 3))
    with bnns_py.Conv2d(weight, padding=1) as module:
        actual = module(view)
        ((key, layer),) = module._view_layers.items()
        assert key[2] == layer.input_descriptor.shape.strides == (1, 11, 99)
        np.testing.assert_allclose(actual, module(np.ascontiguousarray(view)), rtol=1e-6, atol=1e-6)
        assert_close_to_reference(actual, reference.conv2d(view, weight, padding=1), 72)


def test_module_close_refuses_later_calls(rng, no_filter_leaks):
    weight = random_array(rng, (2, 3, 1, 1))
    module = bnns_py.Conv2d(weight)
    module(random_array(rng, (3, 4, 4)))
    module.close()
    module.close()
    assert module.closed
    with pytest.raises(bnns_py.LayerClosedError):
        module(random_array(rng, (3, 4, 4)))
    linear = bnns_py.Linear(random_array(rng, (2, 3)))
    with linear:
        linear(random_array(rng, (3,)))
    with pytest.raises(bnns_py.LayerClosedError):
        linear.backward(random_array(rng, (3,)), None, random_array(rng, (2,)))


def test_single_image_views_without_image_strides(rng, fresh_cache, no_filter_leaks, backend, monkeypatch):
    big = random_array(rng, (6, 10, 12))
    weight = random_array(rng, (3, 4, 3, 3))
    view = big[1:5, 1:-1, 2:-1]  # (4, 8, 9): rows 12 apart
    expected = bnns_py.conv2d(np.ascontiguousarray(view), weight, padding=1)
    canvas = np.zeros((5, 8, 11), np.float32)
    monkeypatch.setattr(backend, "honours_image_strides", False)
    bnns_py.clear_cache()
    out = canvas[1:4, :, 1:10]
    assert bnns_py.conv2d(view, weight, None, 1, 1, out=out) is out
    np.testing.assert_array_equal(out, expected)
    outside = canvas.copy()
    outside[1:4, :, 1:10] = 0
    assert not outside.any()  # nothing written outside the window
    assert _descriptor_strides(_only_entry()) == ((0, 0, 0), (0, 0, 0))
