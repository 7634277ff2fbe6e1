"""Training: apply_backward and Conv2d/ConvTranspose2d gradients vs reference, PyTorch and finite
differences; set vs accumulate; BNNS's preconditions."""
import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction as AF, ConvolutionLayer, ConvolutionPadding, ConvolutionType,
                     DataType, FilterParameters, Flags, NDArrayDescriptor, NDArrayFlags, Shape, reference)

from conftest import assert_close_to_reference, random_array

TRAINABLE = [None, AF.rectified_linear, AF.leaky_rectified_linear(0.2), AF.sigmoid, AF.tanh,
             AF.linear(0.5), AF.clamp((-0.5, 0.5)), AF.elu(1.0), AF.softsign, AF.log_sigmoid,
             AF.hard_sigmoid(0.2, 0.5), AF.softplus(1.0, 1.0), AF.selu, AF.linear_with_bias(2.0, 1.0)]


def _cases(transposed):
    rng = np.random.default_rng(101 if transposed else 100)
    cases = []
    for index in range(40):
        groups = 1 if transposed else int(rng.choice([1, 2, 3]))
        k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        cases.append(dict(
            n=int(rng.integers(1, 4)), in_c=groups * int(rng.integers(1, 4)), out_c=groups * int(rng.integers(1, 4)),
            h=int(rng.integers(4, 9)), w=int(rng.integers(4, 9)), k=k, stride=stride, dilation=dilation,
            padding=tuple(int(v) for v in rng.integers(0, 2, size=4)), groups=groups,
            bias=index % 4 != 0, activation=TRAINABLE[index % len(TRAINABLE)]))
    return cases


def _make(case, rng, transposed):
    cls = bnns_py.ConvTranspose2d if transposed else bnns_py.Conv2d
    wshape = ((case["in_c"], case["out_c"] // case["groups"]) if transposed
              else (case["out_c"], case["in_c"] // case["groups"])) + case["k"]
    weight = random_array(rng, wshape, 0.5)
    bias = random_array(rng, (case["out_c"],)) if case["bias"] else None
    module = cls(weight, bias, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                 groups=case["groups"], activation=case["activation"])
    x = random_array(rng, (case["n"], case["in_c"], case["h"], case["w"]))
    return module, x, weight, bias


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("index", range(40))
def test_gradients_match_reference(transposed, index, rng, no_filter_leaks):
    case = _cases(transposed)[index]
    module, x, weight, bias = _make(case, rng, transposed)
    with module:
        y = module.forward(x)
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    backward = reference.conv_transpose2d_backward if transposed else reference.conv2d_backward
    dx, dw, db = backward(x, weight, dy, output=y, bias=bias is not None, stride=case["stride"],
                          padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
                          activation=case["activation"])
    terms = int(np.prod(y.shape)) // max(case["out_c"], 1)
    assert_close_to_reference(grads.input, dx, weight[0].size * case["out_c"], "input gradient")
    assert_close_to_reference(grads.weight, dw, terms, "weight gradient")
    if bias is not None:
        assert_close_to_reference(grads.bias, db, terms, "bias gradient")
    else:
        assert grads.bias is None


# one-pixel images under a 1x1 kernel: with no padding before the pixel a batch is one matrix
# product; with a left or top padding of 1 and stride 2 the one output pixel reads the padding
ONE_PIXEL_PADDINGS = [(0, 0, 0, 0), (0, 1, 0, 1), (1, 0, 0, 0), (0, 0, 1, 0), (1, 0, 1, 0)]


@pytest.mark.parametrize("padding", ONE_PIXEL_PADDINGS, ids=lambda p: "pad" + "".join(map(str, p)))
@pytest.mark.parametrize("activation", [None, AF.tanh], ids=["identity", "tanh"])
def test_gradients_of_one_pixel_images(padding, activation, backend, rng, no_filter_leaks):
    weight, bias = random_array(rng, (5, 7, 1, 1), 0.5), random_array(rng, (5,))
    x = random_array(rng, (3, 7, 1, 1))
    with bnns_py.Conv2d(weight, bias, stride=2, padding=padding, activation=activation) as module:
        y = module.forward(x)
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
        if backend.is_portable:
            product = padding[0] == padding[2] == 0
            engine = backend.filter_engine(module._layer(1, 1).bnns_filter, "weights_gradient", 3)
            assert (engine == "fully connected") == product, engine
    assert y.shape == (3, 5, 1, 1)
    np.testing.assert_allclose(y, reference.conv2d(x, weight, bias, stride=2, padding=padding, activation=activation),
                               rtol=1e-5, atol=1e-5)
    dx, dw, db = reference.conv2d_backward(x, weight, dy, output=y, bias=True, stride=2, padding=padding,
                                           activation=activation)
    assert_close_to_reference(grads.input, dx, 5, "input gradient")
    assert_close_to_reference(grads.weight, dw, 3, "weight gradient")
    assert_close_to_reference(grads.bias, db, 3, "bias gradient")


@pytest.mark.parametrize("in_place", [True, False], ids=["strided-weight", "copied-weight"])
def test_transposed_module_reads_its_current_weight(in_place, backend, rng, monkeypatch, no_filter_leaks):
    """ConvTranspose2d's PyTorch-layout weight is read in place through descriptor strides where
    the backend honours them (portable, one group), else copied into BNNS's layout at each call:
    either way forward and backward see the weight as it is now, gradients come back in its
    layout, and changing it between forward and backward is seen (like Conv2d)."""
    if in_place and not backend.honours_weight_strides:
        pytest.skip("the backend reads weight descriptors without strides")
    monkeypatch.setattr(backend, "honours_weight_strides", in_place)
    case = dict(n=2, in_c=3, out_c=4, h=5, w=6, k=(3, 3), stride=(2, 2), dilation=(1, 1), padding=(1, 1, 1, 1),
                groups=1, bias=True, activation=None)
    module, x, weight, bias = _make(case, rng, transposed=True)
    with module:
        assert (module._bnns_weight is module.weight) == in_place
        y = module.forward(x)
        assert_close_to_reference(y, reference.conv_transpose2d(x, weight, bias, stride=2, padding=1), 36, "forward")
        dy = random_array(rng, y.shape)
        weight *= -3.0  # in place, between forward and backward
        grads = module.backward(x, y, dy)
    dx, dw, db = reference.conv_transpose2d_backward(x, weight, dy, stride=(2, 2), padding=(1, 1, 1, 1), bias=True)
    assert grads.weight.shape == weight.shape
    assert_close_to_reference(grads.input, dx, 36, "input gradient")
    assert_close_to_reference(grads.weight, dw, 60, "weight gradient")
    assert_close_to_reference(grads.bias, db, 60, "bias gradient")


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_gradients_match_torch_autograd(transposed, rng, no_filter_leaks):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    torch_act = {None: lambda t: t, 1: F.relu, 3: torch.sigmoid, 4: torch.tanh, 18: F.elu}
    for case in _cases(transposed)[:20]:
        function = None if case["activation"] is None else case["activation"].function
        if function not in torch_act or case["padding"][0] != case["padding"][1] or case["padding"][2] != case["padding"][3]:
            continue
        module, x, weight, bias = _make(case, rng, transposed)
        with module:
            y = module.forward(x)
            dy = random_array(rng, y.shape)
            grads = module.backward(x, y, dy)
        tx = torch.from_numpy(x).double().requires_grad_()
        tw = torch.from_numpy(weight).double().requires_grad_()
        tb = None if bias is None else torch.from_numpy(bias).double().requires_grad_()
        pad = (case["padding"][2], case["padding"][0])
        op = F.conv_transpose2d if transposed else F.conv2d
        ty = torch_act[function](op(tx, tw, tb, stride=case["stride"], padding=pad,
                                    dilation=case["dilation"], groups=case["groups"]))
        ty.backward(torch.from_numpy(dy).double())
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grads.input, tx.grad.numpy(), rtol=1e-4, atol=2e-4)
        np.testing.assert_allclose(grads.weight, tw.grad.numpy(), rtol=1e-4, atol=1e-3)
        if tb is not None:
            np.testing.assert_allclose(grads.bias, tb.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_finite_differences_small_case(rng, no_filter_leaks):
    weight = random_array(rng, (2, 2, 2, 3), 0.5)
    bias = random_array(rng, (2,))
    x = random_array(rng, (1, 2, 4, 5))
    with bnns_py.Conv2d(weight, bias, stride=(1, 2), padding=(1, 0, 0, 1), activation="tanh") as conv:
        y = conv.forward(x)
        dy = random_array(rng, y.shape)
        grads = conv.backward(x, y, dy)

        def loss():
            return float((conv.forward(x).astype(np.float64) * dy).sum())

        eps = 1e-2
        for array, grad in ((weight, grads.weight), (bias, grads.bias), (x, grads.input)):
            flat, gflat = array.reshape(-1), grad.reshape(-1)
            for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
                keep = flat[i]
                flat[i] = keep + eps
                up = loss()
                flat[i] = keep - eps
                down = loss()
                flat[i] = keep
                assert (up - down) / (2 * eps) == pytest.approx(gflat[i], rel=2e-2, abs=2e-3)


def _client_layer(rng, activation=AF.identity, flags=Flags.use_client_pointer):
    weights = random_array(rng, (3, 2, 3, 3))
    bias = random_array(rng, (3,))
    layer = ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(6, 5, 2)),
        NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 2, 3)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(6, 5, 3)),
        NDArrayDescriptor(bias, Shape.vector(3)), ConvolutionPadding.symmetric(1, 1), activation,
        filter_parameters=FilterParameters(flags=flags))
    return layer, weights, bias


def test_accumulate_adds_and_set_overwrites(rng, no_filter_leaks):
    layer, weights, bias = _client_layer(rng)
    with layer:
        x = random_array(rng, (2, 2, 5, 6))
        y = np.empty((2, 3, 5, 6), np.float32)
        layer.apply(2, x, y)
        dy = random_array(rng, y.shape)
        dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weights, dy, padding=1)
        start = {"dx": random_array(rng, x.shape), "dw": random_array(rng, weights.shape), "db": random_array(rng, (3,))}
        for flag, offset in ((NDArrayFlags.backprop_accumulate, 1.0), (NDArrayFlags.backprop_set, 0.0)):
            dx = NDArrayDescriptor(start["dx"].copy().reshape(-1), layer.input_descriptor.shape, batch_size=2, flags=flag)
            dw = NDArrayDescriptor(start["dw"].copy().reshape(-1), layer.weights.shape, flags=flag)
            db = NDArrayDescriptor(start["db"].copy(), layer.bias.shape, flags=flag)
            layer.apply_backward(2, x, y, dy, dx, dw, db)
            assert_close_to_reference(dx.data.reshape(x.shape), dx_ref + offset * start["dx"], 27)
            assert_close_to_reference(dw.data.reshape(weights.shape), dw_ref + offset * start["dw"], 60)
            assert_close_to_reference(db.data, db_ref + offset * start["db"], 60)


def test_skipping_gradients_with_none(rng, no_filter_leaks):
    layer, weights, _ = _client_layer(rng)
    with layer:
        x = random_array(rng, (1, 2, 5, 6))
        y = np.empty((1, 3, 5, 6), np.float32)
        layer.apply(1, x, y)
        dy = random_array(rng, y.shape)
        dw = np.full(weights.shape, np.nan, np.float32)
        layer.apply_backward(1, x, y, dy, None, dw, None)
        assert_close_to_reference(dw, reference.conv2d_backward(x, weights, dy, padding=1)[1], 30)


def test_backward_preconditions_are_checked_in_python(rng, no_filter_leaks):
    x = np.zeros((1, 2, 5, 6), np.float32)
    y = np.zeros((1, 3, 5, 6), np.float32)
    dx = np.zeros_like(x)
    layer, *_ = _client_layer(rng, activation=AF.abs)
    with layer, pytest.raises(ValueError, match="cannot differentiate"):
        layer.apply_backward(1, x, y, y, dx)
    layer, *_ = _client_layer(rng, activation=AF.leaky_rectified_linear(-0.1))
    with layer, pytest.raises(ValueError, match="cannot differentiate"):
        layer.apply_backward(1, x, y, y, dx)
    layer, *_ = _client_layer(rng, activation=AF.rectified_linear)
    with layer:
        with pytest.raises(ValueError, match="output .* is required"):
            layer.apply_backward(1, x, None, y, dx)
        with pytest.raises(ValueError, match="input .* is required for weights_gradient"):
            layer.apply_backward(1, None, y, y, dx, np.zeros((3, 2, 3, 3), np.float32))
        with pytest.raises(ValueError, match="output_gradient is required"):
            layer.apply_backward(1, x, y, None, dx)
        with pytest.raises(ValueError, match="needs at least"):
            layer.apply_backward(1, x, y, y, dx, np.zeros(5, np.float32))


def test_c_backward_of_copied_weights(backend, rng, no_filter_leaks):
    """The C call itself (for callers of bnns_py.lib) on a filter created without UseClientPtr:
    status 0 and the reference's input gradient, as native BNNS gives (conformance evidence)."""
    if not backend.is_portable:
        pytest.skip("what Accelerate does for a convolution is the backward_without_client_ptr probe's to say")
    layer, weights, _ = _client_layer(rng, flags=Flags.none)
    with layer:
        ffi = bnns_py.ffi
        dy_values = random_array(rng, (3, 5, 6))
        dy = NDArrayDescriptor(dy_values.reshape(-1), layer.output_descriptor.shape)
        dx = NDArrayDescriptor(np.full(60, np.nan, np.float32), layer.input_descriptor.shape)
        x = np.zeros(60, np.float32)
        live = backend.live_filter_count()
        status = backend.lib.BNNSFilterApplyBackwardBatch(
            layer.bnns_filter, 1, ffi.from_buffer(x), 60, dx.c_descriptor, 60, ffi.NULL, 90,
            dy.c_descriptor, 90, ffi.NULL, ffi.NULL)
        assert status == 0, backend.last_error()
        assert backend.live_filter_count() == live, "the twin the backward ran on is not counted as a filter"
    expected = reference.conv2d_backward(x.reshape(1, 2, 5, 6), weights, dy_values[None], padding=1)[0]
    assert_close_to_reference(dx.data.reshape(expected.shape), expected, 27)


def test_copied_weights_twin_is_made_once_and_destroyed_with_the_filter(backend, rng):
    """Backward on a filter that owns its weights runs on one client-pointer twin, made at the first
    call and kept over the next ones (each gives the reference's gradients), then destroyed with
    the filter; the filter counts never see it."""
    if not backend.is_portable:
        pytest.skip("the twin is the portable library's")
    lib = backend.lib
    live_twins, created_twins = lib.bnns_portable_live_twin_count(), lib.bnns_portable_created_twin_count()
    live_filters = backend.live_filter_count()
    layer, weights, _ = _client_layer(rng, flags=Flags.none)
    with layer:
        assert lib.bnns_portable_created_twin_count() == created_twins, "no twin before backward"
        for _ in range(5):
            x = random_array(rng, (2, 2, 5, 6))
            y = np.empty((2, 3, 5, 6), np.float32)
            layer.apply(2, x, y)
            dy = random_array(rng, y.shape)
            dx, dw = np.empty_like(x), np.empty_like(weights)
            layer.apply_backward(2, x, y, dy, dx, dw)
            dx_ref, dw_ref, _ = reference.conv2d_backward(x, weights, dy, padding=1)
            assert_close_to_reference(dx, dx_ref, 27, "input gradient")
            assert_close_to_reference(dw, dw_ref, 60, "weight gradient")
        assert lib.bnns_portable_created_twin_count() == created_twins + 1
        assert lib.bnns_portable_live_twin_count() == live_twins + 1
        assert backend.live_filter_count() == live_filters + 1
    assert lib.bnns_portable_live_twin_count() == live_twins
    assert backend.live_filter_count() == live_filters


COPIED_WEIGHT_CASES = [  # (transposed, groups, stride, dilation, padding, activation)
    (False, 1, (1, 1), (1, 1), (1, 1, 1, 1), AF.identity),
    (False, 2, (2, 1), (1, 2), (0, 1, 1, 0), AF.tanh),
    (False, 1, (1, 1), (1, 1), (1, 1, 1, 1), AF.rectified_linear),  # 3x3 stride 1: Winograd-eligible sizes
    (True, 1, (2, 2), (1, 1), (1, 1, 1, 1), AF.identity),
    (True, 1, (1, 2), (2, 1), (0, 0, 1, 1), AF.sigmoid),
]


@pytest.mark.parametrize("case", COPIED_WEIGHT_CASES, ids=lambda c: f"{'T' if c[0] else 'S'}-g{c[1]}-{c[5].name}")
def test_backward_of_copied_weights_matches_reference(case, rng, no_filter_leaks):
    """ConvolutionLayer without Flags.use_client_pointer (issue 19): apply_backward runs and its
    input, weight and bias gradients are the reference's for the weights copied at creation (the
    caller's array is overwritten after creation and must not matter)."""
    transposed, groups, stride, dilation, padding, activation = case
    in_c, out_c, k, n, h, w = (4, 6, 3, 2, 7, 8) if groups == 1 else (4, 6, 3, 2, 9, 8)
    from conftest import client_layer
    kind = ConvolutionType.transposed if transposed else ConvolutionType.standard
    wshape = (in_c, out_c // groups, k, k) if transposed else (out_c, in_c // groups, k, k)
    torch_weight = random_array(rng, wshape, 0.3)
    from bnns_py.functional import transposed_weight_to_bnns
    bnns_weight = transposed_weight_to_bnns(torch_weight, groups) if transposed else torch_weight.copy()
    bias = random_array(rng, (out_c,))
    layer, (oh, ow) = client_layer(kind, in_c, out_c, h, w, (k, k), stride, padding, dilation, groups, bnns_weight,
                                   bias, activation, 0, flags=Flags.none)
    bnns_weight_at_creation = bnns_weight.copy()
    bnns_weight[...] = 7.0
    x = random_array(rng, (n, in_c, h, w))
    with layer:
        y = np.empty((n, out_c, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = np.empty_like(x), np.empty_like(bnns_weight), np.empty_like(bias)
        layer.apply_backward(n, x, y, dy, dx, dw, db)
    backward = reference.conv_transpose2d_backward if transposed else reference.conv2d_backward
    dx_ref, dw_ref, db_ref = backward(x, torch_weight, dy, output=y, bias=True, stride=stride, padding=padding,
                                      dilation=dilation, groups=groups, activation=activation)
    if transposed:
        dw_ref = transposed_weight_to_bnns(dw_ref.astype(np.float32), groups)
    assert_close_to_reference(dx, dx_ref, out_c * k * k, "input gradient")
    assert_close_to_reference(dw, dw_ref, n * oh * ow, "weight gradient")
    assert_close_to_reference(db, db_ref, n * oh * ow, "bias gradient")
    np.testing.assert_array_equal(bnns_weight_at_creation.shape, dw.shape)


def test_training_converges_on_a_tiny_task(rng, no_filter_leaks):
    # Learn a fixed 3x3 filter from examples: the loss must fall by 100x.
    target = random_array(rng, (1, 1, 3, 3))
    weight = np.zeros((1, 1, 3, 3), np.float32)
    bias = np.zeros(1, np.float32)
    x = random_array(rng, (16, 1, 8, 8))
    wanted = reference.conv2d(x, target, padding=1).astype(np.float32)
    losses = []
    with bnns_py.Conv2d(weight, bias, padding=1) as conv:
        for _ in range(40):
            y = conv.forward(x)
            residual = y - wanted
            losses.append(float((residual ** 2).mean()))
            grads = conv.backward(x, y, 2 * residual / residual.size, need_input_gradient=False)
            weight -= 0.3 * grads.weight
            bias -= 0.3 * grads.bias
    assert losses[-1] < losses[0] / 100, losses[::10]


@pytest.mark.parametrize("activation", [AF.identity, AF.tanh], ids=["identity", "tanh"])
def test_transposed_weight_gradient_in_pytorch_layout_is_set_or_added(activation, backend, rng, no_filter_leaks):
    """A one-group transposed layer whose weight and weight gradient are PyTorch's (in, out, kH, kW)
    memory, described as OIHW with strides: the portable library writes dW straight into that
    array, with either flag (without an activation the whole batch at once, with one image by
    image)."""
    if not backend.honours_weight_strides:
        pytest.skip("the backend reads weight descriptors without strides")
    cin, cout, k, h, w, n = 6, 5, 4, 5, 6, 3
    torch_weight = random_array(rng, (cin, cout, k, k), 0.3)
    shape = Shape.convolution_weights_oihw(k, k, cin, cout, stride=(1, k, cout * k * k, k * k))
    oh, ow = (h - 1) * 2 - 2 + k, (w - 1) * 2 - 2 + k
    layer = ConvolutionLayer(
        ConvolutionType.transposed, NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(w, h, cin)),
        NDArrayDescriptor(torch_weight.reshape(-1), shape),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(ow, oh, cout)),
        None, ConvolutionPadding.symmetric(1, 1), activation, stride=(2, 2),
        filter_parameters=FilterParameters(flags=Flags.use_client_pointer))
    x = random_array(rng, (n, cin, h, w))
    with layer:
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dz = dy * (1 - y.astype(np.float64) ** 2) if activation is AF.tanh else dy
        dw_ref = reference.conv_transpose2d_backward(x, torch_weight, dz, stride=2, padding=1)[1]
        start = random_array(rng, torch_weight.shape)
        for flag, offset in ((NDArrayFlags.backprop_accumulate, 1.0), (NDArrayFlags.backprop_set, 0.0)):
            dw = NDArrayDescriptor(start.copy().reshape(-1), shape, flags=flag)
            layer.apply_backward(n, x, y, dy, None, dw)
            assert_close_to_reference(dw.data.reshape(torch_weight.shape), dw_ref + offset * start, n * h * w)
