"""The Swift-mirroring layer API: descriptors, shapes, padding, weights ownership, lifecycle."""
import gc
import re
import threading
import weakref

import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction, ConvolutionLayer, ConvolutionPadding, ConvolutionType,
                     DataType, FilterParameters, Flags, LayerClosedError, NDArrayDescriptor, Shape,
                     reference)

from conftest import assert_close_to_reference, random_array


def make_layer(rng, padding=ConvolutionPadding.zero, flags=Flags.none, in_shape=None, **kwargs):
    in_c, out_c, h, w = 3, 4, 8, 7
    weights = random_array(rng, (out_c, in_c, 3, 3))
    bias = random_array(rng, (out_c,))
    left, right, up, down = padding.sides
    out_w, out_h = w + left + right - 2, h + up + down - 2
    layer = ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=in_shape or Shape.image_chw(w, h, in_c)),
        NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, in_c, out_c)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(out_w, out_h, out_c)),
        NDArrayDescriptor(bias, Shape.vector(out_c)), padding,
        filter_parameters=FilterParameters(flags=flags), **kwargs)
    return layer, weights, bias


def test_swift_style_layer_matches_reference(rng, no_filter_leaks):
    padding = ConvolutionPadding.asymmetric(left=1, right=0, up=2, down=1)
    layer, weights, bias = make_layer(rng, padding, activation=ActivationFunction.rectified_linear)
    with layer:
        x = random_array(rng, (5, 3, 8, 7))
        out = np.empty((5,) + layer.output_descriptor.numpy_shape, np.float32)
        layer.apply(5, x, out)
        expected = reference.conv2d(x, weights, bias, padding=(1, 0, 2, 1),
                                    activation=ActivationFunction.rectified_linear)
        assert_close_to_reference(out, expected, weights[0].size)
        # descriptors work as apply arguments too (Swift passes descriptors)
        out2 = np.empty_like(out)
        layer.apply(5, NDArrayDescriptor(x), NDArrayDescriptor(out2))
        np.testing.assert_array_equal(out, out2)


def test_symmetric_padding(rng, no_filter_leaks):
    layer, weights, bias = make_layer(rng, ConvolutionPadding.symmetric(x=2, y=1))
    with layer:
        x = random_array(rng, (2, 3, 8, 7))
        out = np.empty((2,) + layer.output_descriptor.numpy_shape, np.float32)
        layer.apply(2, x, out)
    assert out.shape == (2, 4, 8, 9)
    assert_close_to_reference(out, reference.conv2d(x, weights, bias, padding=(2, 2, 1, 1)), 27)


def test_copied_weights_ignore_later_changes_but_client_pointer_sees_them(rng, no_filter_leaks):
    x = random_array(rng, (1, 3, 8, 7))
    for flags, follows in ((Flags.none, False), (Flags.use_client_pointer, True)):
        layer, weights, bias = make_layer(rng, flags=flags)
        with layer:
            before = np.empty((1, 4, 6, 5), np.float32)
            layer.apply(1, x, before)
            weights *= 2.0
            bias *= 2.0
            after = np.empty_like(before)
            layer.apply(1, x, after)
        if follows:
            np.testing.assert_allclose(after, 2 * before, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(after, before)


def test_client_pointer_layer_keeps_its_weights_alive(rng, no_filter_leaks):
    layer, weights, bias = make_layer(rng, flags=Flags.use_client_pointer)
    expected_weights = weights.copy()
    probe = weakref.ref(weights)
    del weights
    gc.collect()
    assert probe() is not None, "the layer must keep client-pointer weights alive"
    np.testing.assert_array_equal(layer.weights.data.reshape(expected_weights.shape), expected_weights)
    layer.close()


def test_input_descriptor_with_row_padding(rng, no_filter_leaks):
    # An input whose rows are 10 values apart although the image is 7 wide (e.g. a cropped view).
    h, w, c = 8, 7, 3
    shape = Shape.image_chw(w, h, c, stride=(1, 10, 10 * h))
    layer, weights, bias = make_layer(rng, in_shape=shape)
    with layer:
        storage = random_array(rng, (2, c, h, 10))
        out = np.empty((2, 4, 6, 5), np.float32)
        layer.apply(2, NDArrayDescriptor(storage.reshape(-1), shape, batch_size=2), out)
    expected = reference.conv2d(storage[..., :w], weights, bias)
    assert_close_to_reference(out, expected, weights[0].size)


def test_lifecycle_close_twice_context_manager_and_use_after_close(rng, no_filter_leaks):
    layer, *_ = make_layer(rng)
    assert not layer.closed
    with layer as entered:
        assert entered is layer
    assert layer.closed
    layer.close()  # idempotent
    with pytest.raises(LayerClosedError):
        layer.apply(1, np.zeros((1, 3, 8, 7), np.float32), np.zeros((1, 4, 6, 5), np.float32))
    with pytest.raises(LayerClosedError):
        layer.bnns_filter
    with pytest.raises(LayerClosedError):
        with layer:
            pass


def test_filters_created_equal_filters_destroyed(rng, backend):
    gc.collect()
    created, destroyed = bnns_py.filter_counts()
    live = backend.live_filter_count() if backend.is_portable else None
    layers = [make_layer(rng)[0] for _ in range(12)]
    assert bnns_py.filter_counts()[0] - created == 12
    if live is not None:
        assert backend.live_filter_count() == live + 12
    for layer in layers[:4]:
        layer.close()
    for layer in layers[4:8]:
        with layer:
            pass
    probe = weakref.ref(layers[8])
    del layer, layers  # the rest go with garbage collection
    gc.collect()
    assert probe() is None
    created2, destroyed2 = bnns_py.filter_counts()
    assert (created2 - created, destroyed2 - destroyed) == (12, 12)
    if live is not None:
        assert backend.live_filter_count() == live


def test_exception_inside_with_block_still_destroys(rng, no_filter_leaks):
    with pytest.raises(ZeroDivisionError):
        with make_layer(rng)[0]:
            1 / 0


def test_layers_apply_in_parallel_threads(rng, no_filter_leaks):
    layers = [make_layer(rng)[0] for _ in range(2)]
    x = random_array(rng, (4, 3, 8, 7))
    expected = []
    for layer in layers:
        out = np.empty((4, 4, 6, 5), np.float32)
        layer.apply(4, x, out)
        expected.append(out)
    errors = []

    def work(index):
        try:
            out = np.empty((4, 4, 6, 5), np.float32)
            for _ in range(50):
                layers[index].apply(4, x, out)
                np.testing.assert_array_equal(out, expected[index])
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for layer in layers:
        layer.close()
    assert not errors, errors


def test_shape_cases_and_batch_stride():
    image = Shape.image_chw(5, 4, 3)
    assert image.size == (5, 4, 3, 0, 0, 0, 0, 0)
    assert image.numpy_shape == (3, 4, 5)
    assert image.resolved_strides == (1, 5, 20)
    assert image.batch_stride == 60
    padded = Shape.image_chw(5, 4, 3, stride=(1, 8, 40))
    assert padded.extent == 1 + 4 * 1 + 3 * 8 + 2 * 40
    assert padded.batch_stride == 120
    assert not padded.is_packed
    weights = Shape.convolution_weights_oihw(3, 2, 4, 6)
    assert weights.numpy_shape == (6, 4, 2, 3)
    assert weights.layout == bnns_py.DataLayout.convolution_weights_oihw
    assert Shape([2, 3]).layout == bnns_py.DataLayout.matrix_first_major
    assert Shape([2, 3, 4, 5]).layout == bnns_py.DataLayout.tensor_4d_first_major
    assert Shape.vector(7).batch_stride == 7
    assert Shape.tensor_5d_last_major(1, 2, 3, 4, 5).rank == 5
    with pytest.raises(ValueError):
        Shape([1] * 9)
    with pytest.raises(ValueError):
        Shape([1, 2], bnns_py.DataLayout.image_chw)


def test_descriptor_from_array_and_allocation_helpers():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    descriptor = NDArrayDescriptor(array)
    assert descriptor.shape == Shape.image_chw(4, 3, 2)
    assert descriptor.data_type is DataType.float32
    assert list(descriptor.c_descriptor.size[0:3]) == [4, 3, 2]
    assert descriptor.c_descriptor.layout == bnns_py.DataLayout.image_chw
    assert bnns_py.ffi.cast("float *", descriptor.c_descriptor.data)[5] == 5.0
    np.testing.assert_array_equal(descriptor.make_array(), array)
    zeros = NDArrayDescriptor.allocate_repeating(0.5, Shape.vector(3), batch_size=2)
    np.testing.assert_array_equal(zeros.make_array(), np.full((2, 3), 0.5, np.float32))
    rand = NDArrayDescriptor.allocate_random((-1, 1), Shape.image_chw(2, 2, 2), rng=1)
    assert rand.data.min() >= -1 and rand.data.max() <= 1
    copied = NDArrayDescriptor.allocate(range(6), Shape.vector(6), scalar_type=DataType.float32)
    np.testing.assert_array_equal(copied.make_array(), np.arange(6, dtype=np.float32))
    copied.deallocate()
    assert copied.data is None and copied.c_descriptor.data == bnns_py.ffi.NULL
    assert DataType.from_numpy(np.int8) is DataType.int8
    assert DataType.float is DataType.float32


def test_activation_function_mirror():
    AF = ActivationFunction
    assert AF.rectified_linear.function == 1
    assert AF.clamp(bounds=(-1, 2)).bnns_activation.alpha == -1
    assert AF.clamp(bounds=(-1, 2)).bnns_activation.beta == 2
    assert AF.hard_swish().function == AF.gelu_approximation2(0, 0).function == 30
    assert AF.coerce("relu") is AF.rectified_linear
    assert AF.coerce(None) is AF.identity
    with pytest.raises(ValueError, match="parameters"):
        AF.coerce("leaky_relu")
    with pytest.raises(ValueError, match="unknown activation"):
        AF.coerce("nope")
    with pytest.raises(ValueError):
        AF.clamp((2, 1))


def test_padding_mirror():
    assert ConvolutionPadding.zero.sides == (0, 0, 0, 0)
    assert ConvolutionPadding.symmetric(x=1, y=2).sides == (1, 1, 2, 2)
    assert ConvolutionPadding.asymmetric(1, 2, 3, 4).sides == (1, 2, 3, 4)
    assert ConvolutionPadding.symmetric(1, 1) == ConvolutionPadding.asymmetric(1, 1, 1, 1)
    with pytest.raises(ValueError):
        ConvolutionPadding.symmetric(-1, 0)


def test_python_allocator_callbacks_serve_the_filter(rng, no_filter_leaks):
    blocks = {}

    def alloc(memptr, alignment, size):
        block = bnns_py.ffi.new("char[]", size + alignment)
        address = (int(bnns_py.ffi.cast("uintptr_t", block)) + alignment - 1) // alignment * alignment
        memptr[0] = bnns_py.ffi.cast("void *", address)
        blocks[address] = block
        return 0

    def free(pointer):
        del blocks[int(bnns_py.ffi.cast("uintptr_t", pointer))]

    weights, bias = random_array(rng, (4, 3, 3, 3)), random_array(rng, (4,))
    params = FilterParameters(alloc_memory=alloc, free_memory=free, n_threads=1)
    layer = ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(7, 8, 3)),
        NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 3, 4)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(5, 6, 4)),
        NDArrayDescriptor(bias, Shape.vector(4)), filter_parameters=params)
    del params  # the layer keeps the callbacks alive until the filter is destroyed
    if layer.backend.is_portable:
        assert blocks, "the portable backend allocates filter memory through the callbacks"
    x = random_array(rng, (2, 3, 8, 7))
    out = np.empty((2, 4, 6, 5), np.float32)
    layer.apply(2, x, out)
    del layer  # destroyed by garbage collection: the free callback must still be callable
    gc.collect()
    assert blocks == {}
    assert_close_to_reference(out, reference.conv2d(x, weights, bias), 27)


@pytest.mark.parametrize("transposed", [False, True], ids=["standard", "transposed"])
def test_weights_with_strides_in_any_axis_order(transposed, backend, rng, no_filter_leaks):
    """Weight descriptors whose channel strides are not in axis order (a PyTorch-layout transposed
    weight (in, out, kH, kW) described as BNNS's OIHW {kW, kH, in, out}) are read through them."""
    if not backend.honours_weight_strides:
        pytest.skip("the backend reads weight descriptors without strides")
    cin, cout, k = 3, 5, 3
    kind = ConvolutionType.transposed if transposed else ConvolutionType.standard
    # memory [in][out][kH][kW]: element (kx, ky, i, o) at kx + 3 ky + 9 o + 45 i
    torch_layout = random_array(rng, (cin, cout, k, k), 0.5)
    shape = Shape.convolution_weights_oihw(k, k, cin, cout, stride=(1, k, cout * k * k, k * k))
    h, w = 6, 7
    oh, ow = (h + k - 1, w + k - 1) if transposed else (h - k + 1, w - k + 1)
    layer = ConvolutionLayer(
        kind, NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(w, h, cin)),
        NDArrayDescriptor(torch_layout.reshape(-1), shape),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(ow, oh, cout)),
        None, ConvolutionPadding.zero, ActivationFunction.identity,
        filter_parameters=FilterParameters(flags=Flags.use_client_pointer))
    x = random_array(rng, (2, cin, h, w))
    with layer:
        y = np.full((2, cout, oh, ow), np.nan, np.float32)
        layer.apply(2, x, y)
    if transposed:  # PyTorch's transposed weight is (in, out, kH, kW): exactly this memory
        expected = reference.conv_transpose2d(x, torch_layout)
    else:  # W(o, i) of a standard layer lives at [i][o] here
        expected = reference.conv2d(x, np.ascontiguousarray(torch_layout.transpose(1, 0, 2, 3)))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


# ---- numpy arrays must have the shape the descriptors imply (issue 17, finding 1) ----------------

def _finding_one_layer(rng, flags=Flags.use_client_pointer):
    """The layer of the report: image_chw(8, 8, 4) -> image_chw(6, 6, 6), 3x3 weights."""
    weights = random_array(rng, (6, 4, 3, 3))
    bias = random_array(rng, (6,))
    layer = ConvolutionLayer(
        ConvolutionType.standard, NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 4)),
        NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 4, 6)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(6, 6, 6)),
        NDArrayDescriptor(bias, Shape.vector(6)), filter_parameters=FilterParameters(flags=flags))
    return layer, weights, bias


@pytest.mark.parametrize("input_shape, output_shape, argument, given", [
    ((2, 4, 9, 9), (2, 6, 6, 6), "input", (2, 4, 9, 9)),      # a larger image: enough memory, wrong pixels
    ((2, 8, 8, 4), (2, 6, 6, 6), "input", (2, 8, 8, 4)),      # NHWC
    ((512,), (2, 6, 6, 6), "input", (512,)),                  # flat, of the right size
    ((2, 4, 8, 8), (2, 6, 7, 7), "output", (2, 6, 7, 7)),     # a larger output
    ((2, 4, 8, 8), (432,), "output", (432,)),
    ((3, 4, 8, 8), (3, 6, 6, 6), "input", (3, 4, 8, 8)),      # batch_size is not the leading dimension
])
def test_apply_refuses_arrays_of_the_wrong_shape(input_shape, output_shape, argument, given, rng, no_filter_leaks):
    layer, *_ = _finding_one_layer(rng)
    with layer:
        x = random_array(rng, input_shape)
        y = np.full(output_shape, -5.0, np.float32)
        expected = (2, 4, 8, 8) if argument == "input" else (2, 6, 6, 6)
        with pytest.raises(ValueError) as error:
            layer.apply(2, x, y)
        message = str(error.value)
        assert message.startswith(f"{argument} must have shape {expected}")
        assert f"got {given}" in message
        assert (y == -5.0).all(), "nothing may be computed on misread data"


def test_apply_takes_exactly_the_implied_shapes(rng, no_filter_leaks):
    layer, weights, bias = _finding_one_layer(rng)
    with layer:
        x = random_array(rng, (2, 4, 8, 8))
        y = np.empty((2, 6, 6, 6), np.float32)
        layer.apply(2, x, y)
        assert_close_to_reference(y, reference.conv2d(x, weights, bias), 36)
        # one item: (C, H, W) or (1, C, H, W), in any combination
        single = np.empty((6, 6, 6), np.float32)
        layer.apply(1, x[1], single)
        assert_close_to_reference(single, reference.conv2d(x[1:], weights, bias)[0], 36)
        layer.apply(1, x[:1], single)
        assert_close_to_reference(single, reference.conv2d(x[:1], weights, bias)[0], 36)
        # batch_size 1 with a 2-item array is refused, although its memory is large enough
        with pytest.raises(ValueError, match=r"input must have shape \(1, 4, 8, 8\) or \(4, 8, 8\) for "
                                             r"batch_size=1 .*got \(2, 4, 8, 8\)"):
            layer.apply(1, x, single)
        # the fast path (the remembered pair) checks every other array
        layer.apply(2, x, y)
        layer.apply(2, x, y)
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        with pytest.raises(ValueError, match=r"input must have shape \(2, 4, 8, 8\).*got \(2, 8, 8, 4\)"):
            layer.apply(2, nhwc, y)
        with pytest.raises(ValueError, match=r"output must have shape \(2, 6, 6, 6\).*got \(432,\)"):
            layer.apply(2, x, y.reshape(-1))
        layer.apply(2, x, y)
        assert_close_to_reference(y, reference.conv2d(x, weights, bias), 36)


@pytest.mark.parametrize("argument, position, bad_shape, expected", [
    ("output_gradient", 3, (2, 6, 7, 7), (2, 6, 6, 6)),
    ("output_gradient", 3, (2, 6, 6, 6, 1), (2, 6, 6, 6)),
    ("input_gradient", 4, (2, 8, 8, 4), (2, 4, 8, 8)),
    ("input_gradient", 4, (512,), (2, 4, 8, 8)),
    ("weights_gradient", 5, (6, 3, 3, 4), (6, 4, 3, 3)),
    ("bias_gradient", 6, (1, 6), (6,)),
    ("input", 1, (2, 8, 8, 4), (2, 4, 8, 8)),
    ("output", 2, (432,), (2, 6, 6, 6)),
])
def test_apply_backward_refuses_arrays_of_the_wrong_shape(argument, position, bad_shape, expected, rng,
                                                          no_filter_leaks):
    layer, weights, bias = _finding_one_layer(rng)
    with layer:
        x = random_array(rng, (2, 4, 8, 8))
        y = np.empty((2, 6, 6, 6), np.float32)
        layer.apply(2, x, y)
        dy = random_array(rng, y.shape)
        args = [x, y, dy, np.full(x.shape, 7.0, np.float32), np.full(weights.shape, 7.0, np.float32),
                np.full(bias.shape, 7.0, np.float32)]
        good = [a.copy() for a in args]
        args[position - 1] = np.full(bad_shape, 7.0, np.float32)
        with pytest.raises(ValueError, match=rf"{argument} must have shape {re.escape(str(expected))}.*"
                                             rf"got {re.escape(str(bad_shape))}"):
            layer.apply_backward(2, *args)
        for array in args[3:]:
            assert (array == 7.0).all(), "no gradient may be written when an argument is refused"
        # the right shapes give the reference's gradients
        layer.apply_backward(2, *good)
        dx, dw, db = reference.conv2d_backward(x, weights, dy, bias=True)
        assert_close_to_reference(good[3], dx, 54)
        assert_close_to_reference(good[4], dw, 72)
        assert_close_to_reference(good[5], db, 72)


def test_activation_kinds_are_the_c_enum():
    """Every BNNSActivationFunction constant of cdefs/bnns.h is an ActivationFunctionKind member of
    the same value, and the backend support sets are named by kind."""
    from bnns_py import activation, ffi
    from bnns_py.enums import ActivationFunctionKind as Kind
    constants = ffi.dlopen(None)
    prefix = "BNNSActivationFunction"
    c_values = {name[len(prefix):]: getattr(constants, name) for name in dir(constants) if name.startswith(prefix)}
    assert len(c_values) == 37 and set(c_values.values()) == {k.value for k in Kind}
    assert c_values["GumbelMax"] == Kind.gumbel_max == 14 and c_values["PReLUPerChannel"] == Kind.prelu_per_channel
    assert c_values["HardSwish"] == Kind.hard_swish == Kind.gelu_approximation2
    assert activation.PORTABLE_UNSUPPORTED_ACTIVATIONS == {Kind.integer_linear_saturate,
                                                           Kind.integer_linear_saturate_per_channel, Kind.gumbel_max}
    assert ActivationFunction.hard_swish().name == "hard_swish"
    assert ActivationFunction.gelu_approximation2(1, 2).name == "gelu_approximation2"
    assert ActivationFunction(Kind.celu, 1.0) == ActivationFunction.celu(1.0)


def test_a_channel_axis_of_one_with_a_batch_stride_takes_storage(rng, no_filter_leaks):
    """image_chw(w, h, 1) with a channel stride beyond the image: each item is packed but items are
    that stride apart, so a batch is storage (flat or N-leading), never a packed (N, 1, H, W)."""
    weights = random_array(rng, (2, 1, 3, 3))
    in_shape = Shape.image_chw(5, 4, 1, stride=(1, 5, 32))
    layer = ConvolutionLayer(
        ConvolutionType.standard, NDArrayDescriptor(data_type=DataType.float32, shape=in_shape),
        NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 1, 2)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(3, 2, 2)), None)
    with layer:
        images = random_array(rng, (2, 1, 4, 5))
        storage = np.zeros((2, 32), np.float32)
        storage[:, :20] = images.reshape(2, 20)
        out = np.empty((2, 2, 2, 3), np.float32)
        with pytest.raises(ValueError, match=r"input holds 40 values, needs at least 52"):
            layer.apply(2, images, out)  # would be misread: the second image starts at value 32, not 20
        layer.apply(2, storage, out)
        assert_close_to_reference(out, reference.conv2d(images, weights), 9)
        layer.apply(1, images[0], out[0])  # one item is packed: (C, H, W) as usual
        assert_close_to_reference(out[0], reference.conv2d(images[:1], weights)[0], 9)
