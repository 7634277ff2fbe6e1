"""Fully-connected layers: FullyConnectedLayer, bnns_py.linear and bnns_py.Linear against the
reference (and PyTorch when installed), both weight layouts, strides, copy vs client pointer,
backward, and every invalid parameter (in Python and straight through the C API)."""
import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction as AF, BNNSError, ConvolutionLayer, DataLayout, DataType,
                     FilterParameters, Flags, FullyConnectedLayer, NDArrayDescriptor, NDArrayFlags, Shape, ffi,
                     reference)

from bnns_py.layer import WeightedLayer

from conftest import CountingAllocator, assert_close_to_reference, random_array

FLOAT32 = 0x10020
VECTOR = 0x10000
ROW_MAJOR = 0x20000
COLUMN_MAJOR = 0x20001
FIRST_MAJOR_2D = 0x28001
IMAGE_CHW = 0x30000

FORWARD_ACTIVATIONS = [None, AF.rectified_linear, AF.leaky_rectified_linear(0.1), AF.sigmoid, AF.tanh,
                       AF.clamp((-0.5, 0.7)), AF.elu(1.0), AF.gelu, AF.silu, AF.softplus(1.0, 1.0)]
TRAINABLE = [None, AF.rectified_linear, AF.leaky_rectified_linear(0.2), AF.sigmoid, AF.tanh,
             AF.linear(0.5), AF.clamp((-0.5, 0.5)), AF.elu(1.0), AF.softsign, AF.selu]


@pytest.fixture
def live_check(backend):
    """A cheap leak check for the parametrized tests (every layer there is closed by ``with``, so
    no garbage collection is needed): Python's and, if portable, C's filter counts balance."""
    created, destroyed = bnns_py.filter_counts()
    before = backend.live_filter_count() if backend.is_portable else None
    yield
    created2, destroyed2 = bnns_py.filter_counts()
    assert created2 - created == destroyed2 - destroyed, "filters created in this test were not destroyed"
    if before is not None:
        assert backend.live_filter_count() == before


def weights_descriptor(weight, layout, padded_row=0):
    """A descriptor for a PyTorch (out, in) weight in either FC layout; ``padded_row`` > 0 stores
    each output's row ``padded_row`` values apart (a matrix stride larger than ``in``)."""
    out_size, in_size = weight.shape
    stride = (0, 0)
    data = weight
    if padded_row:
        data = np.zeros((out_size, padded_row), np.float32)
        data[:, :in_size] = weight
        stride = (1, padded_row)
    if layout == "row_major":
        shape = Shape.matrix_row_major(in_size, out_size, stride=stride)
    else:
        shape = Shape.matrix_first_major(out_size, in_size, stride=stride)
    return NDArrayDescriptor(data.reshape(-1), shape), data


def make_fc(weight, bias=None, activation=None, layout="row_major", flags=Flags.none, padded_row=0,
            backend=None):
    out_size, in_size = weight.shape
    w_desc, storage = weights_descriptor(weight, layout, padded_row)
    layer = FullyConnectedLayer(
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(in_size)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(out_size)),
        w_desc, None if bias is None else NDArrayDescriptor(bias, Shape.vector(out_size)),
        AF.coerce(activation), FilterParameters(flags=flags), backend=backend)
    return layer, storage


def _forward_cases():
    rng = np.random.default_rng(2024)
    cases = []
    for index in range(30):
        cases.append(dict(n=int(rng.integers(1, 6)), in_size=int(rng.integers(1, 40)),
                          out_size=int(rng.integers(1, 24)), bias=index % 3 != 0,
                          activation=FORWARD_ACTIVATIONS[index % len(FORWARD_ACTIVATIONS)],
                          layout=("row_major", "first_major")[index % 2],
                          flags=(Flags.none, Flags.use_client_pointer)[(index // 2) % 2],
                          padded_row=(0, 0, 3)[index % 3]))
    return cases


@pytest.mark.parametrize("case", _forward_cases(), ids=lambda c: "n{n}_{in_size}x{out_size}_{layout}".format(**c))
def test_forward_matches_reference(case, rng, live_check):
    weight = random_array(rng, (case["out_size"], case["in_size"]))
    bias = random_array(rng, (case["out_size"],)) if case["bias"] else None
    padded = case["in_size"] + case["padded_row"] if case["padded_row"] else 0
    x = random_array(rng, (case["n"], case["in_size"]))
    layer, _ = make_fc(weight, bias, case["activation"], case["layout"], case["flags"], padded)
    with layer:
        out = np.empty((case["n"], case["out_size"]), np.float32)
        layer.apply(case["n"], x, out)
    expected = reference.linear(x, weight, bias, activation=case["activation"])
    assert_close_to_reference(out, expected, case["in_size"], "fc forward")


def test_fully_connected_and_convolution_layers_share_a_base(rng, no_filter_leaks):
    layer, _ = make_fc(random_array(rng, (3, 5)))
    with layer:
        assert isinstance(layer, WeightedLayer) and issubclass(ConvolutionLayer, WeightedLayer)
        assert not hasattr(layer, "group_count"), "no stand-in convolution attributes"
        assert (layer.input_size, layer.output_size) == (5, 3)
        assert "5 -> 3" in repr(layer)


def test_functional_linear_shapes_and_out(rng, no_filter_leaks):
    weight = random_array(rng, (6, 9))
    bias = random_array(rng, (6,))
    x = random_array(rng, (4, 9))
    y = bnns_py.linear(x, weight, bias, activation="relu")
    assert y.shape == (4, 6)
    assert_close_to_reference(y, reference.linear(x, weight, bias, activation=AF.rectified_linear), 9)
    single = bnns_py.linear(x[1], weight, bias, activation="relu")
    assert single.shape == (6,)
    np.testing.assert_allclose(single, y[1], rtol=1e-6, atol=1e-6)
    # non-contiguous x is copied
    wide = random_array(rng, (4, 18))
    assert_close_to_reference(bnns_py.linear(wide[:, ::2], weight), reference.linear(wide[:, ::2], weight), 9)
    out = np.empty((4, 6), np.float32)
    assert bnns_py.linear(x, weight, out=out) is out
    assert_close_to_reference(out, reference.linear(x, weight), 9)
    out1 = np.empty(6, np.float32)
    assert bnns_py.linear(x[0], weight, out=out1) is out1


def test_input_and_output_vector_strides(rng, no_filter_leaks):
    # Vectors whose values are 2 (input) and 3 (output) apart: batch items follow the layout.
    weight = random_array(rng, (4, 5))
    x = random_array(rng, (3, 5, 2))
    layer = FullyConnectedLayer(
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(5, stride=2)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(4, stride=3)),
        NDArrayDescriptor(weight, Shape.matrix_row_major(5, 4)), backend=None)
    with layer:
        out = np.full((3, 4, 3), -7.0, np.float32)
        layer.apply(3, x.reshape(-1), out.reshape(-1))
    assert_close_to_reference(out[:, :, 0], reference.linear(x[:, :, 0], weight), 5)
    assert (out[:, :, 1:] == -7.0).all(), "values between the strided outputs must be left alone"


def test_copied_weights_ignore_later_changes_but_client_pointer_sees_them(rng, no_filter_leaks):
    x = random_array(rng, (2, 7))
    for layout in ("row_major", "first_major"):
        for flags, follows in ((Flags.none, False), (Flags.use_client_pointer, True)):
            weight = random_array(rng, (3, 7))
            bias = random_array(rng, (3,))
            layer, storage = make_fc(weight, bias, layout=layout, flags=flags)
            with layer:
                before = np.empty((2, 3), np.float32)
                layer.apply(2, x, before)
                storage *= 2.0
                bias *= 2.0
                after = np.empty_like(before)
                layer.apply(2, x, after)
            if follows:
                np.testing.assert_allclose(after, 2 * before, rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_array_equal(after, before)


def _backward_cases():
    rng = np.random.default_rng(77)
    return [dict(n=int(rng.integers(1, 6)), in_size=int(rng.integers(1, 30)), out_size=int(rng.integers(1, 20)),
                 bias=index % 3 != 2, activation=TRAINABLE[index % len(TRAINABLE)],
                 layout=("row_major", "first_major")[index % 2], padded_row=(0, 2)[(index // 2) % 2])
            for index in range(20)]


@pytest.mark.parametrize("case", _backward_cases(), ids=lambda c: "n{n}_{in_size}x{out_size}_{layout}".format(**c))
def test_backward_matches_reference(case, rng, live_check):
    n, in_size, out_size = case["n"], case["in_size"], case["out_size"]
    weight = random_array(rng, (out_size, in_size))
    bias = random_array(rng, (out_size,)) if case["bias"] else None
    padded = in_size + case["padded_row"] if case["padded_row"] else 0
    x = random_array(rng, (n, in_size))
    dy = random_array(rng, (n, out_size))
    layer, storage = make_fc(weight, bias, case["activation"], case["layout"], Flags.use_client_pointer, padded)
    with layer:
        y = np.empty((n, out_size), np.float32)
        layer.apply(n, x, y)
        dx = np.empty_like(x)
        dw = np.full_like(storage, 123.0)  # same layout (and row padding) as the weights
        db = np.empty(out_size, np.float32) if bias is not None else None
        layer.apply_backward(n, x, y, dy, dx, NDArrayDescriptor(dw.reshape(-1), layer.weights.shape), db)
    rx, rw, rb = reference.linear_backward(x, weight, dy, output=y, bias=bias is not None,
                                           activation=case["activation"])
    assert_close_to_reference(dx, rx, out_size, "dx")
    assert_close_to_reference(dw[:, :in_size], rw, n, "dw")
    if padded:
        assert (dw[:, in_size:] == 123.0).all(), "weights_delta padding must be left alone"
    if bias is not None:
        assert_close_to_reference(db, rb, n, "db")


def test_backward_accumulate_flags(rng, no_filter_leaks):
    weight = random_array(rng, (4, 6))
    bias = random_array(rng, (4,))
    x = random_array(rng, (3, 6))
    dy = random_array(rng, (3, 4))
    layer, _ = make_fc(weight, bias, flags=Flags.use_client_pointer)
    with layer:
        start = [random_array(rng, s) for s in ((3, 6), (4, 6), (4,))]
        grads = [a.copy() for a in start]
        descriptors = [NDArrayDescriptor(grads[0].reshape(-1), Shape.vector(6), batch_size=3,
                                         flags=NDArrayFlags.backprop_accumulate),
                       NDArrayDescriptor(grads[1].reshape(-1), layer.weights.shape, flags=NDArrayFlags.backprop_accumulate),
                       NDArrayDescriptor(grads[2], Shape.vector(4), flags=NDArrayFlags.backprop_accumulate)]
        layer.apply_backward(3, x, None, dy, *descriptors)
    rx, rw, rb = reference.linear_backward(x, weight, dy, bias=True)
    for got, old, want in zip(grads, start, (rx, rw, rb)):
        assert_close_to_reference(got, old + want, 6)


def test_linear_module_trains_in_place(rng, no_filter_leaks):
    weight = random_array(rng, (3, 8), 0.5)
    bias = random_array(rng, (3,))
    x = random_array(rng, (16, 8))
    target = random_array(rng, (16, 3))
    with bnns_py.Linear(weight, bias, activation="tanh") as lin:
        assert repr(lin) == "Linear(8, 3, activation=ActivationFunction.tanh, bias=True)"
        losses = []
        for _ in range(30):
            y = lin(x)
            losses.append(float(((y - target) ** 2).mean()))
            grads = lin.backward(x, y, (2 * (y - target) / y.size).astype(np.float32))
            lin.weight -= 0.5 * grads.weight
            lin.bias -= 0.5 * grads.bias
        assert losses[-1] < 0.8 * losses[0]
        # a single sample, and no input gradient
        g = lin.backward(x[0], lin(x[0]), target[0], need_input_gradient=False)
        assert g.input is None and g.weight.shape == (3, 8) and g.bias.shape == (3,)
        g1 = lin.backward(x[0], lin(x[0]), target[0])
        assert g1.input.shape == (8,)
        with pytest.raises(ValueError, match="grad_output has shape"):
            lin.backward(x, lin(x), target[:, :2])


def test_linear_module_repeated_calls_see_every_change(rng, no_filter_leaks):
    """The same operands again take the module's remembered call: what may change between calls
    (input values, weights and bias in place, the operands' shapes and strides in place, out's
    writability, other operands) still reaches the result or the checks."""
    weight, bias = random_array(rng, (37, 45)), random_array(rng, (37,))
    x, out = random_array(rng, (3, 45)), np.full((3, 37), np.nan, np.float32)
    rows = random_array(rng, (3, 50))  # rows further apart than their length, read in place
    with bnns_py.Linear(weight, bias, activation="relu") as lin:
        for _ in range(2):
            for operand, target in ((x, out), (x, None), (rows[:, :45], None)):
                operand[...] = random_array(rng, operand.shape)
                weight += random_array(rng, weight.shape, 0.1)
                bias -= random_array(rng, bias.shape, 0.1)
                result = lin(operand, out=target)
                assert result is target or target is None
                assert_close_to_reference(result, reference.linear(operand, weight, bias, activation=AF.rectified_linear), 45)
        for _ in range(3):  # a new input of the same shape at each call, without out
            fresh = random_array(rng, (3, 45))
            fresh.flags.writeable = False
            assert_close_to_reference(lin(fresh), reference.linear(fresh, weight, bias,
                                                                   activation=AF.rectified_linear), 45)
        view = rows[:, :45]
        for _ in range(2):  # the same view object twice
            view[...] = random_array(rng, view.shape)
            assert_close_to_reference(lin(view), reference.linear(view, weight, bias, activation=AF.rectified_linear), 45)
        single, single_out = x[0].copy(), np.empty(37, np.float32)
        for _ in range(2):
            single += 1.0
            assert lin(single).shape == (37,) and lin(single, out=single_out) is single_out
            assert_close_to_reference(single_out, reference.linear(single, weight, bias, activation=AF.rectified_linear), 45)
        assert lin(single).shape == (37,)
        single.shape = (1, 45)  # the same object, now a batch of one
        batch_of_one = lin(single)
        assert batch_of_one.shape == (1, 37)
        assert_close_to_reference(batch_of_one, reference.linear(single, weight, bias, activation=AF.rectified_linear),
                                  45)
        lin(x, out=out)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            lin(x, out=out)
        out.flags.writeable = True
        lin(x, out=out)
        out.shape = (37, 3)
        with pytest.raises(ValueError):
            lin(x, out=out)
        lin.close()
        with pytest.raises(bnns_py.LayerClosedError):
            lin(x)


def test_backward_matches_torch_autograd(rng, no_filter_leaks):
    torch = pytest.importorskip("torch")
    weight = random_array(rng, (5, 11))
    bias = random_array(rng, (5,))
    x = random_array(rng, (7, 11))
    dy = random_array(rng, (7, 5))
    with bnns_py.Linear(weight.copy(), bias.copy(), activation="sigmoid") as lin:
        y = lin(x)
        grads = lin.backward(x, y, dy)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    ty = torch.sigmoid(torch.nn.functional.linear(tx, tw, tb))
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close_to_reference(y, ty.detach().numpy(), 11, "y")
    assert_close_to_reference(grads.input, tx.grad.numpy(), 5, "dx")
    assert_close_to_reference(grads.weight, tw.grad.numpy(), 7, "dw")
    assert_close_to_reference(grads.bias, tb.grad.numpy(), 7, "db")


def test_backward_preconditions(rng, no_filter_leaks):
    weight = random_array(rng, (3, 4))
    x = random_array(rng, (2, 4))
    dy = random_array(rng, (2, 3))
    layer, _ = make_fc(weight, activation="relu", flags=Flags.use_client_pointer)
    with layer:
        with pytest.raises(ValueError, match="output .* is required"):
            layer.apply_backward(2, x, None, dy, np.empty_like(x))
        with pytest.raises(ValueError, match="no bias"):
            layer.apply_backward(2, x, dy, dy, None, None, np.empty(3, np.float32))
        with pytest.raises(ValueError, match="does not match"):
            wrong = NDArrayDescriptor(np.empty(12, np.float32), Shape.matrix_first_major(3, 4))
            layer.apply_backward(2, x, dy, dy, None, wrong)


# ---- invalid parameters: Python ------------------------------------------------------------------

def _vec(n, data_type=DataType.float32, **kwargs):
    return NDArrayDescriptor(data_type=data_type, shape=Shape.vector(n, **kwargs))


def _invalid_cases():
    w = np.zeros((3, 4), np.float32)
    image = NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(1, 1, 4))
    return [
        ("input not a vector", dict(input=image), ValueError, "input must be a vector"),
        ("output not a vector", dict(output=NDArrayDescriptor(data_type=DataType.float32,
                                                              shape=Shape.image_chw(1, 1, 3))),
         ValueError, "output must be a vector"),
        ("input not a descriptor", dict(input=np.zeros(4, np.float32)), TypeError, "input must be an NDArrayDescriptor"),
        ("weights OIHW", dict(weights=NDArrayDescriptor(w.reshape(-1), Shape.convolution_weights_oihw(1, 1, 4, 3))),
         ValueError, "weights layout must be matrix_row_major"),
        ("weights column major", dict(weights=NDArrayDescriptor(w.reshape(-1), Shape.matrix_column_major(3, 4))),
         ValueError, "weights layout must be matrix_row_major"),
        ("weights without data", dict(weights=NDArrayDescriptor(data_type=DataType.float32,
                                                                shape=Shape.matrix_row_major(4, 3))),
         ValueError, "weights descriptor has no data"),
        ("row major sizes swapped", dict(weights=NDArrayDescriptor(w.reshape(-1), Shape.matrix_row_major(3, 4))),
         ValueError, r"sizes must be \(4, 3\)"),
        ("first major sizes swapped", dict(weights=NDArrayDescriptor(w.reshape(-1), Shape.matrix_first_major(4, 3))),
         ValueError, r"sizes must be \(3, 4\)"),
        ("input size", dict(input=_vec(5)), ValueError, "describe 4 inputs and 3 outputs"),
        ("output size", dict(output=_vec(2)), ValueError, "describe 4 inputs and 3 outputs"),
        ("overlapping weight rows", dict(weights=NDArrayDescriptor(np.zeros(16, np.float32),
                                                                   Shape.matrix_row_major(4, 3, stride=(1, 3)))),
         ValueError, "overlap"),
        ("bias size", dict(bias=NDArrayDescriptor(np.zeros(4, np.float32))), ValueError, "vector of 3 values"),
        ("bias without data", dict(bias=_vec(3)), ValueError, "bias descriptor has no data"),
        ("bias not a descriptor", dict(bias=np.zeros(3, np.float32)), TypeError, "bias must be an NDArrayDescriptor"),
        ("filter parameters", dict(filter_parameters=1), TypeError, "filter_parameters"),
        ("activation", dict(activation="nope"), ValueError, "unknown activation"),
    ] + [("weights dtype", dict(weights=NDArrayDescriptor(w.astype(np.float16).reshape(-1),
                                                          Shape.matrix_row_major(4, 3))),
          TypeError, "data type float16"),
         ("input dtype", dict(input=_vec(4, DataType.int8)), TypeError, "data type int8")]


@pytest.mark.parametrize("name, change, error, match", _invalid_cases(), ids=[c[0] for c in _invalid_cases()])
def test_invalid_layer_parameters_raise_clear_errors(name, change, error, match, backend, live_check):
    if not backend.is_portable and "dtype" in name:
        pytest.skip("Accelerate accepts other data types")
    w = np.zeros((3, 4), np.float32)
    arguments = dict(input=_vec(4), output=_vec(3), weights=NDArrayDescriptor(w.reshape(-1), Shape.matrix_row_major(4, 3)),
                     bias=None, activation=AF.identity, filter_parameters=None)
    arguments.update(change)
    with pytest.raises(error, match=match):
        FullyConnectedLayer(**arguments)


def test_portable_refuses_unsupported_activation_first(backend, no_filter_leaks):
    if not backend.is_portable:
        pytest.skip("portable-only limitation")
    w = np.zeros((3, 4), np.float32)
    with pytest.raises(NotImplementedError, match="not supported by the portable backend"):
        FullyConnectedLayer(_vec(4), _vec(3), NDArrayDescriptor(w.reshape(-1), Shape.matrix_row_major(4, 3)),
                            activation=AF.gumbel_max(1.0, 0.0))


@pytest.mark.parametrize("call, error, match", [
    (lambda w, b, x: bnns_py.linear(x, w[None]), ValueError, "weight must have 2 dimensions"),
    (lambda w, b, x: bnns_py.linear(x, w.astype(np.float64)), TypeError, "float32"),
    (lambda w, b, x: bnns_py.linear(x, list(w)), TypeError, "numpy array"),
    (lambda w, b, x: bnns_py.linear(x[:, :3], w), ValueError, "input has 3 features"),
    (lambda w, b, x: bnns_py.linear(x[None], w), ValueError, "input must have 1 or 2 dimensions"),
    (lambda w, b, x: bnns_py.linear(x, w, b[:2]), ValueError, r"bias must have shape \(3,\)"),
    (lambda w, b, x: bnns_py.linear(x, w, out=np.empty((2, 4), np.float32)), ValueError, "out has shape"),
    (lambda w, b, x: bnns_py.linear(x, w, out=np.empty((2, 3), np.float64)), TypeError, "out has dtype"),
    (lambda w, b, x: bnns_py.linear(x, w, activation=3.5), TypeError, "activation"),
    (lambda w, b, x: bnns_py.linear(np.empty((0, 4), np.float32), w), ValueError, "empty"),
    (lambda w, b, x: bnns_py.Linear(w, b[:1]), ValueError, "bias must have shape"),
    (lambda w, b, x: bnns_py.Linear(w, b)(x[:, :2]), ValueError, "features"),
])
def test_functional_invalid_arguments(call, error, match, rng, live_check):
    weight = random_array(rng, (3, 4))
    bias = random_array(rng, (3,))
    x = random_array(rng, (2, 4))
    with pytest.raises(error, match=match):
        call(weight, bias, x)


def test_linear_out_sharing_memory_with_x_is_refused(rng, no_filter_leaks):
    x = random_array(rng, (3, 3))
    with pytest.raises(ValueError, match="shares memory"):
        bnns_py.linear(x, random_array(rng, (3, 3)), out=x)


# ---- the C API directly ---------------------------------------------------------------------------

def fc_params(in_size, out_size, weights, layout=ROW_MAJOR, bias=None, w_size=None, w_stride=(0, 0)):
    params = ffi.new("BNNSLayerParametersFullyConnected *")
    for desc, n in ((params.i_desc, in_size), (params.o_desc, out_size)):
        desc.layout = VECTOR
        desc.size[0] = n
        desc.data_type = FLOAT32
    params.w_desc.layout = layout
    params.w_desc.size[0:2] = w_size or ([in_size, out_size] if layout == ROW_MAJOR else [out_size, in_size])
    params.w_desc.stride[0:2] = list(w_stride)
    params.w_desc.data_type = FLOAT32
    params.w_desc.data = ffi.from_buffer(weights)
    if bias is not None:
        params.bias.layout = VECTOR
        params.bias.size[0] = bias.size
        params.bias.data_type = FLOAT32
        params.bias.data = ffi.from_buffer(bias)
    return params


@pytest.mark.parametrize("layout", [ROW_MAJOR, FIRST_MAJOR_2D])
def test_c_api_forward_both_layouts(layout, backend, rng, live_check):
    lib = backend.lib
    weight = random_array(rng, (5, 6))
    bias = random_array(rng, (5,))
    x = random_array(rng, (3, 6))
    handle = lib.BNNSFilterCreateLayerFullyConnected(fc_params(6, 5, weight, layout, bias), ffi.NULL)
    assert handle != ffi.NULL
    out = np.empty((3, 5), np.float32)
    assert lib.BNNSFilterApplyBatch(handle, 3, ffi.from_buffer(x), 6, ffi.from_buffer(out), 5) == 0
    lib.BNNSFilterDestroy(handle)
    assert_close_to_reference(out, reference.linear(x, weight, bias), 6)


def _null_cases():
    def set_(path, value):
        def change(p):
            target = p
            *parts, last = path.split(".")
            for part in parts:
                target = getattr(target, part)
            if "[" in last:
                field, index = last.rstrip("]").split("[")
                getattr(target, field)[int(index)] = value
            else:
                setattr(target, last, value)
        return change
    return [
        ("i_desc layout image", set_("i_desc.layout", IMAGE_CHW), "i_desc layout"),
        ("o_desc data type", set_("o_desc.data_type", 0x10010), "o_desc data type"),
        ("i_desc size 0", set_("i_desc.size[0]", 0), "size[0] is 0"),
        ("w_desc column major", set_("w_desc.layout", COLUMN_MAJOR), "w_desc layout"),
        ("w_desc no data", set_("w_desc.data", ffi.NULL), "w_desc.data is NULL"),
        ("w_desc float16", set_("w_desc.data_type", 0x10010), "w_desc data type"),
        ("w_desc sizes", set_("w_desc.size[0]", 3), "RowMajorMatrix of size"),
        ("w_desc overlapping rows", set_("w_desc.stride[1]", 3), "overlaps"),
        ("input size mismatch", set_("i_desc.size[0]", 7), "RowMajorMatrix of size"),
        ("output size mismatch", set_("o_desc.size[0]", 4), "RowMajorMatrix of size"),
        ("bias size", set_("bias.size[0]", 4), "bias must be a vector of 5"),
        ("bias layout", set_("bias.layout", IMAGE_CHW), "bias must be a vector"),
        ("bias float16", set_("bias.data_type", 0x10010), "bias data type"),
        ("gumbel_max", set_("activation.function", 14), "activation 14"),
        ("huge sizes", set_("w_desc.stride[1]", 2 ** 62), "overflow"),
    ]


@pytest.mark.parametrize("name, change, reason", _null_cases(), ids=[c[0] for c in _null_cases()])
def test_c_api_invalid_parameters_return_null(name, change, reason, backend, rng, live_check):
    if not backend.is_portable and name in ("gumbel_max", "bias float16", "w_desc float16", "o_desc data type",
                                            "w_desc column major", "huge sizes"):
        pytest.skip("a portable-backend limitation or decision, not documented BNNS behaviour")
    weight = random_array(rng, (5, 6))
    bias = random_array(rng, (5,))
    params = fc_params(6, 5, weight, ROW_MAJOR, bias)
    change(params)
    assert backend.lib.BNNSFilterCreateLayerFullyConnected(params, ffi.NULL) == ffi.NULL
    if backend.is_portable:
        assert reason in backend.last_error()
    with pytest.raises(BNNSError) as info:
        bnns_py.layer.create_filter(backend, "BNNSFilterCreateLayerFullyConnected", params, ffi.NULL)
    assert info.value.kind == "unable_to_create_layer"


def test_c_api_null_layer_params(backend, live_check):
    assert backend.lib.BNNSFilterCreateLayerFullyConnected(ffi.NULL, ffi.NULL) == ffi.NULL


def test_c_api_backward_translation_and_refusals(backend, rng, live_check):
    """weights_delta in the creation layout and vector in/out deltas; anything else is -1."""
    lib = backend.lib
    weight = random_array(rng, (3, 4))
    x = random_array(rng, (2, 4))
    dy = random_array(rng, (2, 3))
    params = fc_params(4, 3, weight, FIRST_MAJOR_2D)
    handle = lib.BNNSFilterCreateLayerFullyConnected(params, FilterParameters(flags=Flags.use_client_pointer).c_parameters)
    assert handle != ffi.NULL

    def vector(array, n):
        d = ffi.new("BNNSNDArrayDescriptor *")
        d.layout, d.data_type, d.data = VECTOR, FLOAT32, ffi.from_buffer(array)
        d.size[0] = n
        return d

    def matrix(array, layout, sizes):
        d = ffi.new("BNNSNDArrayDescriptor *")
        d.layout, d.data_type, d.data = layout, FLOAT32, ffi.from_buffer(array)
        d.size[0:2] = sizes
        return d

    dx = np.empty((2, 4), np.float32)
    dw = np.empty((3, 4), np.float32)
    xb, dyb = ffi.from_buffer(x), vector(dy, 3)

    def backward(dx_desc, dy_desc, dw_desc):
        return lib.BNNSFilterApplyBackwardBatch(handle, 2, xb, 4, dx_desc, 4, ffi.NULL, 0, dy_desc, 3, dw_desc,
                                                ffi.NULL)

    assert backward(vector(dx, 4), dyb, matrix(dw, FIRST_MAJOR_2D, [3, 4])) == 0
    rx, rw, _ = reference.linear_backward(x, weight, dy, bias=False)
    assert_close_to_reference(dx, rx, 3)
    assert_close_to_reference(dw, rw, 2)
    if backend.is_portable:
        for args, reason in (((vector(dx, 5), dyb, ffi.NULL), "in_delta has 5 values"),
                             ((ffi.NULL, vector(dy, 2), ffi.NULL), "out_delta has 2 values"),
                             ((ffi.NULL, dyb, matrix(dw, ROW_MAJOR, [4, 3])), "weights_delta must have"),
                             ((ffi.NULL, dyb, matrix(dw, FIRST_MAJOR_2D, [4, 3])), "weights_delta must have")):
            assert backward(*args) == -1
            assert reason in backend.last_error()
        image = vector(dx, 4)
        image.layout = IMAGE_CHW
        assert backward(image, dyb, ffi.NULL) == -1
        assert "in_delta layout" in backend.last_error()
    lib.BNNSFilterDestroy(handle)


def test_c_api_custom_allocator_is_used(backend, rng, live_check):
    if not backend.is_portable:
        pytest.skip("allocator accounting is checked on the portable backend")
    allocator = CountingAllocator()
    weight = random_array(rng, (2, 3))
    handle = backend.lib.BNNSFilterCreateLayerFullyConnected(
        fc_params(3, 2, weight),
        ffi.new("BNNSFilterParameters *", {"alloc_memory": allocator.alloc, "free_memory": allocator.free}))
    assert handle != ffi.NULL and allocator.calls["alloc"] >= 1
    backend.lib.BNNSFilterDestroy(handle)
    assert allocator.balanced()


def test_weights_layout_helpers():
    assert DataLayout.matrix_row_major.rank == 2
    assert Shape.matrix_first_major(3, 4).numpy_shape == (3, 4)
    assert Shape.matrix_row_major(4, 3).numpy_shape == (3, 4)


@pytest.mark.parametrize("layout", [DataLayout.one_d_last_major, DataLayout.one_d_first_major])
def test_one_d_layouts_work_as_vectors(layout, rng, live_check):
    weight = random_array(rng, (3, 4))
    bias = random_array(rng, (3,))
    x = random_array(rng, (2, 4))
    with FullyConnectedLayer(NDArrayDescriptor(data_type=DataType.float32, shape=Shape((4,), layout)),
                             NDArrayDescriptor(data_type=DataType.float32, shape=Shape((3,), layout)),
                             NDArrayDescriptor(weight, Shape.matrix_first_major(3, 4)),
                             NDArrayDescriptor(bias, Shape((3,), layout))) as layer:
        out = np.empty((2, 3), np.float32)
        layer.apply(2, x, out)
    assert_close_to_reference(out, reference.linear(x, weight, bias), 4)


def test_apply_and_backward_refuse_arrays_of_the_wrong_shape(rng, no_filter_leaks):
    """(N, in) / (in,) vectors only: a transposed or flat batch is refused before C is called."""
    weight, bias = random_array(rng, (4, 6)), random_array(rng, (4,))
    layer, _ = make_fc(weight, bias, flags=Flags.use_client_pointer)
    with layer:
        x, y = random_array(rng, (3, 6)), np.full((3, 4), -5.0, np.float32)
        for bad_x, bad_y, message in ((x.reshape(6, 3), y, r"input must have shape \(3, 6\).*got \(6, 3\)"),
                                      (x.reshape(-1), y, r"input must have shape \(3, 6\).*got \(18,\)"),
                                      (x, y.reshape(1, 12), r"output must have shape \(3, 4\).*got \(1, 12\)"),
                                      (x[:, :, None], y, r"input must have shape \(3, 6\).*got \(3, 6, 1\)")):
            with pytest.raises(ValueError, match=message):
                layer.apply(3, bad_x, bad_y)
        assert (y == -5.0).all()
        with pytest.raises(ValueError, match=r"input must have shape \(1, 6\) or \(6,\) for batch_size=1"):
            layer.apply(1, x, y[0])
        layer.apply(1, x[0], y[0])
        assert_close_to_reference(y[0], reference.linear(x[:1], weight, bias)[0], 6)
        layer.apply(3, x, y)
        assert_close_to_reference(y, reference.linear(x, weight, bias), 6)
        dy = random_array(rng, y.shape)
        dx, dw, db = np.empty_like(x), np.empty_like(weight), np.empty_like(bias)
        for args, message in (((dy.reshape(4, 3), dx, dw, db), r"output_gradient must have shape \(3, 4\).*got \(4, 3\)"),
                              ((dy, dx.reshape(-1), dw, db), r"input_gradient must have shape \(3, 6\).*got \(18,\)"),
                              ((dy, dx, dw.reshape(6, 4), db), r"weights_gradient must have shape \(4, 6\).*got \(6, 4\)"),
                              ((dy, dx, dw, db[None]), r"bias_gradient must have shape \(4,\).*got \(1, 4\)")):
            with pytest.raises(ValueError, match=message):
                layer.apply_backward(3, x, y, *args)
        layer.apply_backward(3, x, y, dy, dx, dw, db)
        dx_ref, dw_ref, db_ref = reference.linear_backward(x, weight, dy, bias=True)
        assert_close_to_reference(dx, dx_ref, 4)
        assert_close_to_reference(dw, dw_ref, 3)
        assert_close_to_reference(db, db_ref, 3)


@pytest.mark.parametrize("layout, padded_row", [("row_major", 0), ("first_major", 0), ("row_major", 7)])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_backward_of_copied_weights_uses_the_copy(layout, padded_row, activation, rng, no_filter_leaks):
    """A layer created without Flags.use_client_pointer is differentiated from the weights it
    copied at creation (native BNNS on macOS 15 returns the right gradient there too; bnns.h asks
    for client pointers): input, weight and bias gradients against the reference, in the weights'
    layout, although the caller's array has changed since."""
    weight, bias = random_array(rng, (3, 5)), random_array(rng, (3,))
    layer, storage = make_fc(weight, bias, activation, layout, Flags.none, padded_row)
    weight = weight.copy()
    storage[...] = 99.0  # copied at creation: the layer no longer reads this (storage may be weight itself)
    x = random_array(rng, (4, 5))
    with layer:
        y = np.empty((4, 3), np.float32)
        layer.apply(4, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = np.empty_like(x), np.full(storage.shape, -3.0, np.float32), np.empty_like(bias)
        layer.apply_backward(4, x, y, dy, dx, dw, db)
    act = AF.coerce(activation)
    dx_ref, dw_ref, db_ref = reference.linear_backward(x, weight, dy, output=y, bias=True, activation=act)
    assert_close_to_reference(y, reference.linear(x, weight, bias, activation=act), 5)
    assert_close_to_reference(dx, dx_ref, 3)
    assert_close_to_reference(dw[:, :5], dw_ref, 4)
    assert_close_to_reference(db, db_ref, 4)


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("vector_stride", [1, 2], ids=["packed", "strided"])
def test_copied_weights_are_held_once(vector_stride, backend, rng, no_filter_leaks):
    """A layer that copies its weights holds one copy of them: the kernel's packed panels (padded
    to whole panels: at most one vector tier's widest panel, 48 outputs, more) over contiguous
    vectors, the weights as given over strided ones; with its bias and a small workspace. Its
    first backward call makes the client-pointer twin that computes the gradients, from the
    panels unpacked: right results, and the twin's copy counted too."""
    out_size, in_size, n = 200, 96, 5
    weight, bias = random_array(rng, (out_size, in_size)), random_array(rng, (out_size,))
    layer = FullyConnectedLayer(
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(in_size, stride=vector_stride)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(out_size, stride=vector_stride)),
        NDArrayDescriptor(weight.copy().reshape(-1), Shape.matrix_row_major(in_size, out_size)),
        NDArrayDescriptor(bias, Shape.vector(out_size)), backend=backend)
    x = random_array(rng, (n, in_size, vector_stride))

    def batch(a):  # the layer's view of a batch of vectors
        return a[..., 0] if vector_stride == 1 else a.reshape(-1)

    with layer:
        made = backend.lib.bnns_portable_filter_reserved_bytes(layer.bnns_filter)
        assert weight.nbytes + bias.nbytes <= made <= (out_size + 48) * in_size * 4 + bias.nbytes + 16384
        y = np.zeros((n, out_size, vector_stride), np.float32)
        layer.apply(n, batch(x), batch(y))
        dy = random_array(rng, y.shape)
        dx = np.zeros_like(x)
        dw = np.empty_like(weight)
        layer.apply_backward(n, batch(x), batch(y), batch(dy), batch(dx), dw)
        trained = backend.lib.bnns_portable_filter_reserved_bytes(layer.bnns_filter)
    assert_close_to_reference(y[..., 0], reference.linear(x[..., 0], weight, bias), in_size)
    dx_ref, dw_ref, _ = reference.linear_backward(x[..., 0], weight, dy[..., 0])
    assert_close_to_reference(dx[..., 0], dx_ref, out_size)
    assert_close_to_reference(dw, dw_ref, n)
    assert trained >= made + weight.nbytes + bias.nbytes, "the twin's copy of the weights and bias"
