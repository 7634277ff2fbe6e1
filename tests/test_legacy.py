"""The legacy (macOS 10.12, deprecated in 11) creation API: LegacyConvolutionLayer and
LegacyFullyConnectedLayer against the reference, image-stack strides, the equality size rule,
copy vs client pointer, and invalid parameters in Python and straight through the C API."""
import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction as AF, ConvolutionLayer, ConvolutionType, DataType, FilterParameters, Flags,
                     ImageStackDescriptor, LegacyConvolutionLayer, LegacyFullyConnectedLayer, NDArrayDescriptor,
                     Shape, VectorDescriptor, ffi, reference)

from conftest import assert_close_to_reference, random_array

FLOAT32 = 0x10020
FLOAT16 = 0x10010
INT8 = 0x20008
ACTIVATIONS = [None, AF.rectified_linear, AF.sigmoid, AF.tanh, AF.leaky_rectified_linear(0.1), AF.clamp((-1, 1))]


@pytest.fixture
def live_check(backend):
    """Leak check without garbage collection: every layer here is closed by ``with``."""
    created, destroyed = bnns_py.filter_counts()
    before = backend.live_filter_count() if backend.is_portable else None
    yield
    created2, destroyed2 = bnns_py.filter_counts()
    assert created2 - created == destroyed2 - destroyed, "filters created in this test were not destroyed"
    if before is not None:
        assert backend.live_filter_count() == before


def _conv_cases():
    rng = np.random.default_rng(1012)
    cases = []
    for index in range(24):
        k_w, k_h = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        s_x, s_y = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        p_x, p_y = int(rng.integers(0, min(k_w, 2))), int(rng.integers(0, min(k_h, 2)))
        out_w, out_h = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        # the legacy equality: in + 2*pad = stride*(out-1) + k
        in_w, in_h = s_x * (out_w - 1) + k_w - 2 * p_x, s_y * (out_h - 1) + k_h - 2 * p_y
        if in_w < 1 or in_h < 1:
            p_x = p_y = 0
            in_w, in_h = s_x * (out_w - 1) + k_w, s_y * (out_h - 1) + k_h
        in_c, out_c = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        gaps = index % 3  # 0: packed, 1: padded rows, 2: padded rows and images
        cases.append(dict(
            n=int(rng.integers(1, 4)), in_whc=(in_w, in_h, in_c), out_whc=(out_w, out_h, out_c), k=(k_h, k_w),
            stride=(s_x, s_y), padding=(p_x, p_y), bias=index % 4 != 1,
            activation=ACTIVATIONS[index % len(ACTIVATIONS)],
            row_extra=(0, 3, 2)[gaps], image_extra=(0, 0, 5)[gaps],
            flags=(Flags.none, Flags.use_client_pointer)[index % 2]))
    return cases


def _stack(whc, row_extra, image_extra):
    w, h, c = whc
    row = w + row_extra
    return ImageStackDescriptor(w, h, c, row_stride=row, image_stride=row * h + image_extra)


@pytest.mark.parametrize("case", _conv_cases(),
                         ids=lambda c: "in{in_whc}_out{out_whc}_k{k}_s{stride}_p{padding}".format(**c).replace(" ", ""))
def test_legacy_convolution_matches_reference(case, rng, live_check):
    in_stack = _stack(case["in_whc"], case["row_extra"], case["image_extra"])
    out_stack = _stack(case["out_whc"], case["row_extra"] + 1 if case["row_extra"] else 0, case["image_extra"])
    (_, _, in_c), (_, _, out_c) = case["in_whc"], case["out_whc"]
    weights = random_array(rng, (out_c, in_c) + case["k"])
    bias = random_array(rng, (out_c,)) if case["bias"] else None
    images = random_array(rng, (case["n"], in_c, in_stack.height, in_stack.width))
    with LegacyConvolutionLayer(in_stack, out_stack, weights, bias, *case["stride"], *case["padding"],
                                activation=case["activation"],
                                filter_parameters=FilterParameters(flags=case["flags"])) as layer:
        buffer = in_stack.to_buffer(images)
        out = np.full(out_stack.buffer_shape(case["n"]), -9.0, np.float32)
        layer.apply(case["n"], buffer, out)
    p_x, p_y = case["padding"]
    expected = reference.conv2d(images, weights, bias, stride=case["stride"][::-1], padding=(p_x, p_x, p_y, p_y),
                                activation=case["activation"])
    assert_close_to_reference(out_stack.from_buffer(out, case["n"]), expected, weights[0].size, "legacy conv")
    # only the pixels are written: the gaps between rows and images keep their values
    written = np.zeros(out.size, bool)
    out_stack._view(written, case["n"])[...] = True
    assert (out.reshape(-1)[~written] == -9.0).all()


def test_legacy_convolution_with_row_and_image_gaps_matches_modern_layer(rng, live_check):
    in_stack = ImageStackDescriptor(6, 5, 2, row_stride=9, image_stride=9 * 5 + 4)
    out_stack = ImageStackDescriptor(4, 3, 3, row_stride=7, image_stride=30)
    weights = random_array(rng, (3, 2, 3, 3))
    bias = random_array(rng, (3,))
    images = random_array(rng, (3, 2, 5, 6))
    with LegacyConvolutionLayer(in_stack, out_stack, weights, bias) as legacy, ConvolutionLayer(
            ConvolutionType.standard, NDArrayDescriptor(data_type=DataType.float32, shape=in_stack.shape),
            NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 2, 3)),
            NDArrayDescriptor(data_type=DataType.float32, shape=out_stack.shape),
            NDArrayDescriptor(bias, Shape.vector(3))) as modern:
        buffer = in_stack.to_buffer(images)
        a = np.zeros(3 * out_stack.item_stride, np.float32)
        b = np.zeros_like(a)
        legacy.apply(3, buffer, a)
        modern.apply(3, buffer, b)
    np.testing.assert_array_equal(a, b)
    assert_close_to_reference(out_stack.from_buffer(a, 3), reference.conv2d(images, weights, bias), 18)


def test_copied_weights_ignore_later_changes_but_client_pointer_sees_them(rng, live_check):
    stack_in, stack_out = ImageStackDescriptor(5, 5, 2), ImageStackDescriptor(3, 3, 2)
    images = random_array(rng, (1, 2, 5, 5))
    for flags, follows in ((Flags.none, False), (Flags.use_client_pointer, True)):
        weights = random_array(rng, (2, 2, 3, 3))
        bias = random_array(rng, (2,))
        with LegacyConvolutionLayer(stack_in, stack_out, weights, bias,
                                    filter_parameters=FilterParameters(flags=flags)) as layer:
            before = np.empty((1, 2, 3, 3), np.float32)
            layer.apply(1, stack_in.to_buffer(images), before)
            weights *= 2.0
            bias *= 2.0
            after = np.empty_like(before)
            layer.apply(1, stack_in.to_buffer(images), after)
        if follows:
            np.testing.assert_allclose(after, 2 * before, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("n, in_size, out_size, bias, activation, flags", [
    (1, 1, 1, False, None, Flags.none),
    (4, 17, 9, True, AF.rectified_linear, Flags.none),
    (3, 32, 5, True, AF.sigmoid, Flags.use_client_pointer),
    (6, 7, 12, False, AF.tanh, Flags.use_client_pointer),
])
def test_legacy_fully_connected_matches_reference(n, in_size, out_size, bias, activation, flags, rng, live_check):
    weights = random_array(rng, (out_size, in_size))
    b = random_array(rng, (out_size,)) if bias else None
    x = random_array(rng, (n, in_size))
    with LegacyFullyConnectedLayer(VectorDescriptor(in_size), VectorDescriptor(out_size), weights, b, activation,
                                   FilterParameters(flags=flags)) as layer:
        out = np.empty((n, out_size), np.float32)
        layer.apply(n, x, out)
        if flags:
            weights *= -1.0
            flipped = np.empty_like(out)
            layer.apply(n, x, flipped)
            assert_close_to_reference(flipped, reference.linear(x, weights, b, activation=activation), in_size)
        weights_before = -weights if flags else weights
    assert_close_to_reference(out, reference.linear(x, weights_before, b, activation=activation), in_size)


def test_equality_size_rule_refuses_what_the_relaxed_rule_accepts(rng, backend, live_check):
    # input 8, kernel 3, stride 2: the macOS 11 API accepts an output of 3 (last input column
    # unused); the legacy API needs 8 + 2*0 == 2*(3-1) + 3 = 7 exactly, and refuses.
    weights = random_array(rng, (2, 1, 3, 3))
    in_stack, out_stack = ImageStackDescriptor(8, 8, 1), ImageStackDescriptor(3, 3, 2)
    with pytest.raises(ValueError, match="legacy API needs equality"):
        LegacyConvolutionLayer(in_stack, out_stack, weights, x_stride=2, y_stride=2)
    modern = ConvolutionLayer(ConvolutionType.standard, NDArrayDescriptor(data_type=DataType.float32, shape=in_stack.shape),
                              NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 1, 2)),
                              NDArrayDescriptor(data_type=DataType.float32, shape=out_stack.shape), stride=(2, 2))
    modern.close()
    # the C API refuses it too
    params = legacy_conv_params(weights, 2)
    assert backend.lib.BNNSFilterCreateConvolutionLayer(in_stack.c_descriptor, out_stack.c_descriptor, params,
                                                        ffi.NULL) == ffi.NULL
    if backend.is_portable:
        assert "needs equality" in backend.last_error()
    # and accepts the equal case: input 7
    handle = backend.lib.BNNSFilterCreateConvolutionLayer(ImageStackDescriptor(7, 7, 1).c_descriptor,
                                                          out_stack.c_descriptor, params, ffi.NULL)
    assert handle != ffi.NULL
    backend.lib.BNNSFilterDestroy(handle)


def test_image_stack_buffer_round_trip():
    stack = ImageStackDescriptor(3, 2, 2, row_stride=5, image_stride=13)
    images = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)
    buffer = stack.to_buffer(images)
    assert buffer.size == 2 * 26 and stack.item_stride == 26
    assert buffer[5] == images[0, 0, 1, 0] and buffer[13] == images[0, 1, 0, 0] and buffer[26] == images[1, 0, 0, 0]
    np.testing.assert_array_equal(stack.from_buffer(buffer, 2), images)
    assert stack.shape == Shape.image_chw(3, 2, 2, stride=(1, 5, 13))
    assert "row_stride=5" in repr(stack)
    c = stack.c_descriptor
    assert (c.width, c.height, c.channels, c.row_stride, c.image_stride, c.data_type) == (3, 2, 2, 5, 13, FLOAT32)
    assert ImageStackDescriptor(4, 3, 2).image_stride == 12
    vector = VectorDescriptor(7)
    assert vector.c_descriptor.size == 7 and vector.shape == Shape.vector(7)


# ---- invalid parameters: Python ------------------------------------------------------------------

def _python_invalid_cases():
    w = np.zeros((2, 1, 3, 3), np.float32)
    return [
        ("input type", lambda: LegacyConvolutionLayer(Shape.image_chw(5, 5, 1), ImageStackDescriptor(3, 3, 2), w),
         TypeError, "input must be an ImageStackDescriptor"),
        ("weights list", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2),
                                                        w.tolist()), ValueError, "4-D numpy array"),
        ("weights channels", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 2), ImageStackDescriptor(3, 3, 2),
                                                            w), ValueError, r"\(output channels, input channels, kH, kW\) = \(2, 2, 3, 3\)"),
        ("weights dtype", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2),
                                                         w.astype(np.float64)), TypeError, "float64"),
        ("weights not contiguous", lambda: LegacyConvolutionLayer(
            ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2), np.zeros((2, 1, 3, 6), np.float32)[..., ::2]),
         ValueError, "C-contiguous"),
        ("bias shape", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2), w,
                                                      np.zeros(3, np.float32)), ValueError, r"bias must have shape \(2,\)"),
        ("stride 0", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2), w,
                                                    x_stride=0), ValueError, "x_stride must be an integer >= 1"),
        ("negative padding", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2),
                                                            w, y_padding=-1), ValueError, "y_padding"),
        ("size rule x", lambda: LegacyConvolutionLayer(ImageStackDescriptor(6, 5, 1), ImageStackDescriptor(3, 3, 2), w),
         ValueError, "along x .width.: input 6"),
        ("size rule y padding", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2),
                                                               w, y_padding=1), ValueError, "along y .height."),
        ("filter parameters", lambda: LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2),
                                                             w, filter_parameters="x"), TypeError, "filter_parameters"),
        ("row stride", lambda: ImageStackDescriptor(5, 4, 1, row_stride=4), ValueError, "row_stride 4 must be >= width 5"),
        ("image stride", lambda: ImageStackDescriptor(5, 4, 1, row_stride=6, image_stride=23), ValueError,
         "image_stride 23 must be >= row_stride \\* height = 24"),
        ("zero width", lambda: ImageStackDescriptor(0, 4, 1), ValueError, "width must be an integer >= 1"),
        ("bad data type", lambda: ImageStackDescriptor(2, 2, 1, data_type=DataType.indexed8), TypeError, "numpy"),
        ("vector size", lambda: VectorDescriptor(0), ValueError, "size must be an integer >= 1"),
        ("fc input type", lambda: LegacyFullyConnectedLayer(4, VectorDescriptor(2), np.zeros((2, 4), np.float32)),
         TypeError, "input must be a VectorDescriptor"),
        ("fc weights shape", lambda: LegacyFullyConnectedLayer(VectorDescriptor(4), VectorDescriptor(2),
                                                               np.zeros((4, 2), np.float32)),
         ValueError, r"weights must have shape \(output size, input size\) = \(2, 4\)"),
        ("fc bias", lambda: LegacyFullyConnectedLayer(VectorDescriptor(4), VectorDescriptor(2),
                                                      np.zeros((2, 4), np.float32), np.zeros((2, 1), np.float32)),
         ValueError, r"bias must have shape \(2,\)"),
    ]


@pytest.mark.parametrize("name, make, error, match", _python_invalid_cases(),
                         ids=[c[0] for c in _python_invalid_cases()])
def test_python_refuses_invalid_parameters(name, make, error, match, live_check):
    with pytest.raises(error, match=match):
        make()


def test_portable_data_type_limits(backend, live_check):
    if not backend.is_portable:
        pytest.skip("portable-only limitation")
    w = np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(TypeError, match="float32 only"):
        LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1, data_type=DataType.float16), ImageStackDescriptor(3, 3, 2), w)
    with pytest.raises(TypeError, match="float32 legacy layer data only"):
        LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2), w.astype(np.float16))
    with pytest.raises(TypeError, match="float32 legacy layer data only"):
        LegacyFullyConnectedLayer(VectorDescriptor(4), VectorDescriptor(2), np.zeros((2, 4), np.int8))
    with pytest.raises(NotImplementedError, match="portable backend"):
        LegacyFullyConnectedLayer(VectorDescriptor(4), VectorDescriptor(2), np.zeros((2, 4), np.float32),
                                  activation=AF.gumbel_max(1.0, 0.0))


def test_legacy_layers_offer_no_backward(rng, live_check):
    with LegacyFullyConnectedLayer(VectorDescriptor(3), VectorDescriptor(2), random_array(rng, (2, 3)),
                                   filter_parameters=FilterParameters(flags=Flags.use_client_pointer)) as layer:
        x, y = random_array(rng, (1, 3)), np.zeros((1, 2), np.float32)
        with pytest.raises(NotImplementedError, match="macOS 11 layer API"):
            layer.apply_backward(1, x, y, y, np.empty_like(x))
        with pytest.raises(ValueError, match="holds 3 values, needs at least 6"):
            layer.apply(2, x, np.zeros(4, np.float32))


def test_layers_are_closed_and_keep_their_arrays(rng, no_filter_leaks):
    import gc
    import weakref
    weights = random_array(rng, (2, 1, 3, 3))
    probe = weakref.ref(weights)
    layer = LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 2), weights,
                                   filter_parameters=FilterParameters(flags=Flags.use_client_pointer))
    del weights
    gc.collect()
    assert probe() is not None, "a client-pointer legacy layer must keep its weights alive"
    assert "LegacyConvolutionLayer" in repr(layer)
    del layer  # destroyed by garbage collection (no_filter_leaks checks it)


# ---- the C API directly ---------------------------------------------------------------------------

def legacy_conv_params(weights, stride=1, padding=0, bias=None):
    out_c, in_c, k_h, k_w = weights.shape
    params = ffi.new("BNNSConvolutionLayerParameters *")
    params.x_stride = params.y_stride = stride
    params.x_padding = params.y_padding = padding
    params.k_width, params.k_height = k_w, k_h
    params.in_channels, params.out_channels = in_c, out_c
    params.weights.data = ffi.from_buffer(weights)
    params.weights.data_type = FLOAT32
    if bias is not None:
        params.bias.data = ffi.from_buffer(bias)
        params.bias.data_type = FLOAT32
    return params


def _stack_struct(w, h, c, row=None, image=None, data_type=FLOAT32):
    s = ffi.new("BNNSImageStackDescriptor *")
    s.width, s.height, s.channels = w, h, c
    s.row_stride = w if row is None else row
    s.image_stride = s.row_stride * h if image is None else image
    s.data_type = data_type
    return s


def _conv_null_cases():
    def stacks(**kw):
        def change(in_s, out_s, p):
            for key, value in kw.items():
                target, field = key.split("__")
                setattr({"in": in_s, "out": out_s, "p": p}[target], field, value)
        return change

    def weights(field, value):
        def change(in_s, out_s, p):
            setattr(p.weights, field, value)
        return change

    def bias_type(in_s, out_s, p):
        p.bias.data = p.weights.data
        p.bias.data_type = INT8

    return [
        ("row stride < width", stacks(in__row_stride=4), "row_stride 4 must be >= width 5"),
        ("image stride < row*height", stacks(out__image_stride=8), "image_stride 8 must be >= row_stride * height = 9"),
        ("zero channels", stacks(in__channels=0), "zero size"),
        ("in_channels mismatch", stacks(p__in_channels=2), "in_channels 2"),
        ("out_channels mismatch", stacks(p__out_channels=3), "out_channels 3"),
        ("zero kernel", stacks(p__k_width=0), "zero side"),
        ("size rule", stacks(p__x_padding=1), "needs equality"),
        ("size rule stride", stacks(p__y_stride=2), "needs equality"),
        ("weights NULL", weights("data", ffi.NULL), "weights.data is NULL"),
        ("weights float16", weights("data_type", FLOAT16), "weights data type 0x10010"),
        ("weights int8", weights("data_type", INT8), "weights data type 0x20008"),
        ("bias int8", bias_type, "bias data type 0x20008"),
        ("input float16", stacks(in__data_type=FLOAT16), "in_desc data type"),
        ("gumbel_max", stacks(), "activation 14"),
        ("overflow", stacks(in__row_stride=2 ** 62, in__image_stride=2 ** 63), "overflow"),
    ]


@pytest.mark.parametrize("name, change, reason", _conv_null_cases(), ids=[c[0] for c in _conv_null_cases()])
def test_c_api_legacy_convolution_invalid_returns_null(name, change, reason, backend, rng, live_check):
    if not backend.is_portable and name in ("weights float16", "weights int8", "bias int8", "input float16",
                                            "gumbel_max", "overflow"):
        pytest.skip("a portable-backend limitation or decision, not documented BNNS behaviour")
    weights = random_array(rng, (2, 1, 3, 3))
    in_s, out_s = _stack_struct(5, 5, 1), _stack_struct(3, 3, 2)
    params = legacy_conv_params(weights)
    if name == "gumbel_max":
        params.activation.function = 14
    change(in_s, out_s, params)
    assert backend.lib.BNNSFilterCreateConvolutionLayer(in_s, out_s, params, ffi.NULL) == ffi.NULL
    if backend.is_portable:
        assert reason in backend.last_error(), backend.last_error()


def test_c_api_legacy_null_pointers_and_zero_stride(backend, rng, live_check):
    lib = backend.lib
    weights = random_array(rng, (2, 1, 3, 3))
    in_s, out_s = _stack_struct(5, 5, 1), _stack_struct(3, 3, 2)
    params = legacy_conv_params(weights)
    assert lib.BNNSFilterCreateConvolutionLayer(ffi.NULL, out_s, params, ffi.NULL) == ffi.NULL
    assert lib.BNNSFilterCreateConvolutionLayer(in_s, ffi.NULL, params, ffi.NULL) == ffi.NULL
    assert lib.BNNSFilterCreateConvolutionLayer(in_s, out_s, ffi.NULL, ffi.NULL) == ffi.NULL
    vec = ffi.new("BNNSVectorDescriptor *", {"size": 3, "data_type": FLOAT32})
    assert lib.BNNSFilterCreateFullyConnectedLayer(vec, vec, ffi.NULL, ffi.NULL) == ffi.NULL
    if backend.is_portable:
        # decision: a zero stride is read as 1, as in the macOS 11 API
        params.x_stride = params.y_stride = 0
        handle = lib.BNNSFilterCreateConvolutionLayer(in_s, out_s, params, ffi.NULL)
        assert handle != ffi.NULL
        x = random_array(rng, (1, 1, 5, 5))
        out = np.empty((1, 2, 3, 3), np.float32)
        assert lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(out)) == 0
        lib.BNNSFilterDestroy(handle)
        assert_close_to_reference(out, reference.conv2d(x, weights), 9)


def _fc_c(backend, in_size=4, out_size=2, weights=None, **changes):
    weights = np.zeros((out_size, in_size), np.float32) if weights is None else weights
    in_v = ffi.new("BNNSVectorDescriptor *", {"size": in_size, "data_type": FLOAT32})
    out_v = ffi.new("BNNSVectorDescriptor *", {"size": out_size, "data_type": FLOAT32})
    params = ffi.new("BNNSFullyConnectedLayerParameters *")
    params.in_size, params.out_size = in_size, out_size
    params.weights.data = ffi.from_buffer(weights)
    params.weights.data_type = FLOAT32
    for key, value in changes.items():
        target, field = key.split("__")
        setattr({"in": in_v, "out": out_v, "p": params, "w": params.weights, "b": params.bias}[target], field, value)
    return backend.lib.BNNSFilterCreateFullyConnectedLayer(in_v, out_v, params, ffi.NULL)


@pytest.mark.parametrize("changes, reason, documented", [
    (dict(p__in_size=5), "in_size 5", True),
    (dict(p__out_size=3), "out_size 3", True),
    (dict(in__size=0, p__in_size=0), "sizes must be > 0", True),
    (dict(w__data=ffi.NULL), "weights.data is NULL", True),
    (dict(w__data_type=INT8), "weights data type 0x20008", False),
    (dict(w__data_type=FLOAT16), "weights data type 0x10010", False),
    (dict(in__data_type=FLOAT16), "vector data types", False),
    (dict(b__data_type=INT8), "bias data type", False),
])
def test_c_api_legacy_fully_connected_invalid_returns_null(changes, reason, documented, backend, live_check):
    if not backend.is_portable and not documented:
        pytest.skip("a portable-backend limitation, not documented BNNS behaviour")
    if "b__data_type" in changes:
        changes["b__data"] = ffi.cast("void *", 1)  # any non-NULL pointer: refused before it is read
    assert _fc_c(backend, **changes) == ffi.NULL
    if backend.is_portable:
        assert reason in backend.last_error(), backend.last_error()


def test_c_api_legacy_fully_connected_forward(backend, rng, live_check):
    weights = random_array(rng, (3, 5))
    handle = _fc_c(backend, 5, 3, weights)
    assert handle != ffi.NULL
    x = random_array(rng, (2, 5))
    out = np.empty((2, 3), np.float32)
    assert backend.lib.BNNSFilterApplyBatch(handle, 2, ffi.from_buffer(x), 5, ffi.from_buffer(out), 3) == 0
    backend.lib.BNNSFilterDestroy(handle)
    assert_close_to_reference(out, reference.linear(x, weights), 5)


def test_legacy_apply_refuses_arrays_of_the_wrong_shape(rng, live_check):
    """Packed stacks take (N, C, H, W) images and vectors (N, size); stacks with gaps take their
    storage, flat or with N leading, of the size the strides give."""
    weights = random_array(rng, (3, 2, 3, 3))
    packed = ImageStackDescriptor(6, 5, 2)
    padded = ImageStackDescriptor(6, 5, 2, row_stride=8, image_stride=41)
    images = random_array(rng, (2, 2, 5, 6))
    expected = reference.conv2d(images, weights, None)
    for stack in (packed, padded):
        with LegacyConvolutionLayer(stack, ImageStackDescriptor(4, 3, 3), weights) as layer:
            out = np.full((2, 3, 3, 4), -5.0, np.float32)
            if stack is packed:
                bad = ((np.ascontiguousarray(images.transpose(0, 2, 3, 1)), r"\(2, 2, 5, 6\).*got \(2, 5, 6, 2\)"),
                       (images.reshape(-1), r"\(2, 2, 5, 6\).*got \(120,\)"))
            else:
                storage = stack.to_buffer(images)
                bad = ((np.zeros((2, 83), np.float32), r"holds 166 values .* take 161 to 164"),
                       (storage.reshape(4, -1), r"leading dimension must be batch_size=2"))
            for array, message in bad:
                with pytest.raises(ValueError, match=message):
                    layer.apply(2, array, out)
            assert (out == -5.0).all()
            layer.apply(2, stack.to_buffer(images), out)
            assert_close_to_reference(out, expected, weights[0].size)
    with LegacyFullyConnectedLayer(VectorDescriptor(3), VectorDescriptor(2), random_array(rng, (2, 3))) as layer:
        with pytest.raises(ValueError, match=r"input must have shape \(2, 3\).*got \(6,\)"):
            layer.apply(2, random_array(rng, (6,)), np.zeros((2, 2), np.float32))
