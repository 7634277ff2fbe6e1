"""Activations fused after a convolution / fully-connected layer that need more than an elementwise
formula: Softmax and LogSoftmax (over each pixel's channel vector), PReLUPerChannel (every alpha_c
is alpha), Gumbel (random), and the refusals (IntegerLinearSaturate*, GumbelMax)."""
import math

import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF
from bnns_py import ffi, reference
from bnns_py.errors import BNNSError

from conftest import assert_close_to_reference, random_array

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

FLOAT32 = 0x10020
IMAGE_CHW = 0x30000
OIHW = 0x40000
VECTOR = 0x10000
ROW_MAJOR = 0x20000  # BNNSDataLayoutRowMajorMatrix

SOFTMAXES = [AF.softmax, AF.log_softmax]
CONV_CASES = [  # (batch, in_c, out_c, h, w, kernel, padding, groups, bias)
    (2, 3, 5, 7, 6, 3, 1, 1, True),
    (1, 4, 4, 5, 9, 1, 0, 2, False),
    (3, 2, 1, 4, 4, 2, 0, 1, True),       # one channel: softmax is 1, log-softmax 0
    (1, 3, 7, 23, 19, 3, 1, 1, True),     # more pixels than one block of 256
]


def _conv_case(rng, case, scale=2.0):
    batch, in_c, out_c, h, w, k, pad, groups, has_bias = case
    x = random_array(rng, (batch, in_c, h, w), scale)
    weight = random_array(rng, (out_c, in_c // groups, k, k))
    bias = random_array(rng, (out_c,)) if has_bias else None
    return x, weight, bias, dict(padding=pad, groups=groups)


# ---- Softmax / LogSoftmax ---------------------------------------------------------------------

@pytest.mark.parametrize("activation", SOFTMAXES, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_conv2d_softmax_over_channels(activation, case, rng, no_filter_leaks):
    x, weight, bias, kw = _conv_case(rng, case)
    actual = bnns_py.conv2d(x, weight, bias, activation=activation, **kw)
    expected = reference.conv2d(x, weight, bias, activation=activation, **kw)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert_close_to_reference(actual, expected, weight[0].size, "conv2d + " + activation.name)
    if activation.function == 11:
        np.testing.assert_allclose(actual.sum(axis=1), 1.0, rtol=1e-5)
    if torch is not None:
        z = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                                       None if bias is None else torch.from_numpy(bias).double(),
                                       padding=kw["padding"], groups=kw["groups"])
        t = torch.softmax(z, dim=1) if activation.function == 11 else torch.log_softmax(z, dim=1)
        assert_close_to_reference(actual, t.numpy(), weight[0].size, "vs torch")


@pytest.mark.parametrize("activation", SOFTMAXES, ids=["softmax", "log_softmax"])
def test_conv2d_softmax_is_numerically_stable(activation, no_filter_leaks):
    # pre-activations near 1e4: exp overflows unless the max is subtracted
    x = np.full((1, 1, 3, 3), 100.0, np.float32)
    weight = np.array([1.0, 1.0 + 1e-3, 1.0 - 1e-3], np.float32).reshape(3, 1, 1, 1) * 100.0
    actual = bnns_py.conv2d(x, weight, activation=activation)
    expected = reference.conv2d(x, weight, activation=activation)
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", SOFTMAXES, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("batch", [1, 5])
def test_linear_softmax(activation, batch, rng, no_filter_leaks):
    x = random_array(rng, (batch, 6), 2.0)
    weight = random_array(rng, (9, 6))
    bias = random_array(rng, (9,))
    actual = bnns_py.linear(x, weight, bias, activation=activation)
    expected = reference.linear(x, weight, bias, activation=activation)
    assert_close_to_reference(actual, expected, 6, "linear + " + activation.name)
    if torch is not None:
        z = torch.from_numpy(x).double() @ torch.from_numpy(weight).double().T + torch.from_numpy(bias).double()
        t = torch.softmax(z, dim=1) if activation.function == 11 else torch.log_softmax(z, dim=1)
        assert_close_to_reference(actual, t.numpy(), 6, "vs torch")


def _check_conv_gradients(activation, reference_activation, case, rng):
    x, weight, bias, kw = _conv_case(rng, case, scale=1.0)
    with bnns_py.Conv2d(weight, bias, activation=activation, **kw) as module:
        y = module(x)
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    g_in, g_w, g_b = reference.conv2d_backward(x, weight, dy, output=y, bias=bias is not None,
                                               activation=reference_activation, **kw)
    terms = y.shape[1] * y.shape[2] * y.shape[3]
    assert_close_to_reference(grads.input, g_in, terms, "grad input")
    assert_close_to_reference(grads.weight, g_w, terms * x.shape[0], "grad weight")
    if bias is not None:
        assert_close_to_reference(grads.bias, g_b, terms * x.shape[0], "grad bias")
    return y, dy, grads


@pytest.mark.parametrize("activation", SOFTMAXES, ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"case{i}" for i in range(len(CONV_CASES))])
def test_conv2d_softmax_backward(activation, case, rng, no_filter_leaks):
    _check_conv_gradients(activation, activation, case, rng)


@pytest.mark.skipif(torch is None, reason="needs torch")
@pytest.mark.parametrize("activation", SOFTMAXES, ids=["softmax", "log_softmax"])
def test_conv2d_softmax_backward_matches_torch_autograd(activation, rng, no_filter_leaks):
    case = CONV_CASES[0]
    x, weight, bias, kw = _conv_case(rng, case, scale=1.0)
    with bnns_py.Conv2d(weight, bias, activation=activation, **kw) as module:
        y = module(x)
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    tx = torch.from_numpy(x).double().requires_grad_()
    tw = torch.from_numpy(weight).double().requires_grad_()
    tb = torch.from_numpy(bias).double().requires_grad_()
    z = torch.nn.functional.conv2d(tx, tw, tb, padding=kw["padding"], groups=kw["groups"])
    t = torch.softmax(z, dim=1) if activation.function == 11 else torch.log_softmax(z, dim=1)
    t.backward(torch.from_numpy(dy).double())
    terms = y.shape[1] * y.shape[2] * y.shape[3]
    assert_close_to_reference(grads.input, tx.grad.numpy(), terms, "grad input vs torch")
    assert_close_to_reference(grads.weight, tw.grad.numpy(), terms * x.shape[0], "grad weight vs torch")
    assert_close_to_reference(grads.bias, tb.grad.numpy(), terms * x.shape[0], "grad bias vs torch")


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_conv2d_tanh_shrink_backward_inverts_the_output(rng, no_filter_leaks):
    """TanhShrink is strictly increasing, so the portable backend recovers x from y (Newton) for its
    derivative tanh(x)^2; PyTorch's autograd differentiates from the real pre-activation."""
    case = CONV_CASES[0]
    x, weight, bias, kw = _conv_case(rng, case, scale=1.0)
    with bnns_py.Conv2d(weight, bias, activation=AF.tanh_shrink, **kw) as module:
        y = module(x)
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    tx = torch.from_numpy(x).double().requires_grad_()
    tw = torch.from_numpy(weight).double().requires_grad_()
    tb = torch.from_numpy(bias).double().requires_grad_()
    z = torch.nn.functional.conv2d(tx, tw, tb, padding=kw["padding"], groups=kw["groups"])
    torch.nn.functional.tanhshrink(z).backward(torch.from_numpy(dy).double())
    terms = y.shape[1] * y.shape[2] * y.shape[3]
    # y = x - tanh(x) is flat near 0 (y ~ x^3/3): float32 y pins x down to ~1e-3 there, and the
    # derivative tanh(x)^2 ~ x^2 to ~1e-6, well inside these tolerances
    assert_close_to_reference(grads.input, tx.grad.numpy(), terms, "grad input vs torch")
    assert_close_to_reference(grads.weight, tw.grad.numpy(), terms * x.shape[0], "grad weight vs torch")
    assert_close_to_reference(grads.bias, tb.grad.numpy(), terms * x.shape[0], "grad bias vs torch")


@pytest.mark.parametrize("activation", SOFTMAXES, ids=["softmax", "log_softmax"])
def test_conv_transpose2d_softmax_forward_and_backward(activation, rng, no_filter_leaks):
    x = random_array(rng, (2, 3, 4, 5))
    weight = random_array(rng, (3, 4, 3, 3))
    bias = random_array(rng, (4,))
    kw = dict(stride=2, padding=1)
    with bnns_py.ConvTranspose2d(weight, bias, activation=activation, **kw) as module:
        y = module(x)
        assert_close_to_reference(y, reference.conv_transpose2d(x, weight, bias, activation=activation, **kw),
                                  27, "forward")
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    g_in, g_w, g_b = reference.conv_transpose2d_backward(x, weight, dy, output=y, activation=activation, **kw)
    terms = y.shape[1] * y.shape[2] * y.shape[3]
    assert_close_to_reference(grads.input, g_in, terms, "grad input")
    assert_close_to_reference(grads.weight, g_w, terms * 2, "grad weight")
    assert_close_to_reference(grads.bias, g_b, terms * 2, "grad bias")


@pytest.mark.parametrize("activation", SOFTMAXES, ids=["softmax", "log_softmax"])
def test_linear_softmax_backward(activation, rng, no_filter_leaks):
    x = random_array(rng, (4, 6))
    weight = random_array(rng, (5, 6))
    bias = random_array(rng, (5,))
    with bnns_py.Linear(weight, bias, activation=activation) as module:
        y = module(x)
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    # the same layer as a 1x1 convolution over 1x1 images: softmax over the channel axis 1
    g_in, g_w, g_b = reference.conv2d_backward(x[:, :, None, None], weight[:, :, None, None],
                                               dy[:, :, None, None], output=y[:, :, None, None],
                                               activation=activation)
    assert_close_to_reference(grads.input, g_in[:, :, 0, 0], 5, "grad input")
    assert_close_to_reference(grads.weight, g_w[:, :, 0, 0], 20, "grad weight")
    assert_close_to_reference(grads.bias, g_b, 20, "grad bias")


# ---- PReLUPerChannel -------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.25, -0.5, 0.0])
def test_conv2d_prelu_per_channel_is_leaky_relu_with_every_alpha(alpha, rng, no_filter_leaks):
    x, weight, bias, kw = _conv_case(rng, CONV_CASES[0])
    actual = bnns_py.conv2d(x, weight, bias, activation=AF.prelu_per_channel(alpha), **kw)
    expected = reference.conv2d(x, weight, bias, activation=AF.leaky_rectified_linear(alpha), **kw)
    assert_close_to_reference(actual, expected, weight[0].size, "prelu")


@pytest.mark.parametrize("case", CONV_CASES[:3], ids=["case0", "case1", "case2"])
def test_conv2d_prelu_per_channel_backward(case, rng, no_filter_leaks):
    _check_conv_gradients(AF.prelu_per_channel(0.2), AF.leaky_rectified_linear(0.2), case, rng)


@pytest.mark.parametrize("alpha", [0.0, -0.3])
def test_prelu_backward_needs_positive_alpha(alpha, rng, no_filter_leaks):
    x, weight, bias, kw = _conv_case(rng, CONV_CASES[0])
    with bnns_py.Conv2d(weight, bias, activation=AF.prelu_per_channel(alpha), **kw) as module:
        y = module(x)
        with pytest.raises(ValueError, match="cannot differentiate"):
            module.backward(x, y, np.ones_like(y))


# ---- Gumbel ----------------------------------------------------------------------------------

EULER_GAMMA = 0.5772156649015329


def test_gumbel_distribution(rng, no_filter_leaks):
    # 1x1 identity conv over 2 x 4 x 125 x 100 = 1e5 values; Gumbel ignores them
    x = random_array(rng, (2, 4, 125, 100))
    weight = np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1)
    y = bnns_py.conv2d(x, weight, activation=AF.gumbel(1.0, 0.0)).astype(np.float64).ravel()
    n = y.size
    assert np.all(np.isfinite(y))
    variance = math.pi ** 2 / 6
    # standard Gumbel: mean gamma, variance pi^2/6, excess kurtosis 12/5 -> var(s^2) = var^2 (2 + 2.4)/n
    assert abs(y.mean() - EULER_GAMMA) < 5 * math.sqrt(variance / n)
    assert abs(y.var() - variance) < 5 * variance * math.sqrt(4.4 / n)
    # the CDF exp(-exp(-t)) at a few points
    for t in (-1.0, 0.0, 0.5, 2.0):
        p = math.exp(-math.exp(-t))
        assert abs(np.mean(y <= t) - p) < 5 * math.sqrt(p * (1 - p) / n)
    # values are independent of x and of each other, not a repeated pattern
    assert abs(np.corrcoef(y, x.ravel())[0, 1]) < 5 / math.sqrt(n)
    assert abs(np.corrcoef(y[:-1], y[1:])[0, 1]) < 5 / math.sqrt(n)
    assert len(np.unique(y)) > 0.99 * n


def test_gumbel_alpha_beta_and_fresh_samples_per_call(rng, no_filter_leaks):
    x = random_array(rng, (1, 2, 100, 100))
    weight = np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
    # alpha*U + beta = U/2 + 1/4 is uniform on (1/4, 3/4): -log(-log(u) + 1/4) is bounded
    y = bnns_py.conv2d(x, weight, activation=AF.gumbel(0.5, 0.25))
    lo = -math.log(-math.log(0.25) + 0.25)
    hi = -math.log(-math.log(0.75) + 0.25)
    assert y.min() >= lo - 1e-5 and y.max() <= hi + 1e-5
    u = np.linspace(0.25, 0.75, 200001)[1:-1]
    assert abs(y.mean() - np.mean(-np.log(-np.log(u) + 0.25))) < 0.01
    y2 = bnns_py.conv2d(x, weight, activation=AF.gumbel(0.5, 0.25))
    assert not np.array_equal(y, y2)


def test_gumbel_is_not_differentiable(rng, no_filter_leaks):
    x, weight, bias, kw = _conv_case(rng, CONV_CASES[0])
    with bnns_py.Conv2d(weight, bias, activation=AF.gumbel(1.0, 0.0), **kw) as module:
        y = module(x)
        with pytest.raises(ValueError, match="cannot differentiate"):
            module.backward(x, y, np.ones_like(y))


# ---- refusals --------------------------------------------------------------------------------

REFUSED = [(AF(9), "integer outputs"), (AF(10), "integer outputs"), (AF.gumbel_max(1.0, 0.0), "GumbelMax")]


@pytest.mark.parametrize("activation, reason", REFUSED, ids=["int_sat", "int_sat_per_channel", "gumbel_max"])
def test_python_refuses_with_reason(activation, reason, backend, rng, no_filter_leaks):
    if not backend.is_portable:
        pytest.skip("portable-backend limitation")
    x, weight, bias, kw = _conv_case(rng, CONV_CASES[0])
    with pytest.raises(NotImplementedError, match=reason):
        bnns_py.conv2d(x, weight, bias, activation=activation, **kw)


def _conv_params(weights, activation_function, alpha=0.0, beta=0.0):
    params = ffi.new("BNNSLayerParametersConvolution *")
    out_c, in_c, k_h, k_w = weights.shape
    for desc, (w, h, c) in ((params.i_desc, (5, 5, in_c)), (params.o_desc, (5 - k_w + 1, 5 - k_h + 1, out_c))):
        desc.layout = IMAGE_CHW
        desc.size[0:3] = [w, h, c]
        desc.data_type = FLOAT32
    params.w_desc.layout = OIHW
    params.w_desc.size[0:4] = [k_w, k_h, in_c, out_c]
    params.w_desc.data_type = FLOAT32
    params.w_desc.data = ffi.from_buffer(weights)
    params.activation.function = activation_function
    params.activation.alpha = alpha
    params.activation.beta = beta
    return params


@pytest.mark.parametrize("function, reason", [(9, "integer outputs"), (10, "integer outputs"),
                                              (14, "GumbelMax"), (36, "unknown activation")])
def test_c_create_returns_null_with_reason(function, reason, backend, rng):
    if not backend.is_portable:
        pytest.skip("portable-backend reasons")
    weights = random_array(rng, (2, 1, 3, 3))
    before = backend.live_filter_count()
    handle = backend.lib.BNNSFilterCreateLayerConvolution(_conv_params(weights, function), ffi.NULL)
    assert handle == ffi.NULL
    assert reason in backend.last_error(), backend.last_error()
    assert f"activation {function}" in backend.last_error()
    assert backend.live_filter_count() == before


@pytest.mark.parametrize("function", [11, 13, 21, 29])
def test_c_create_accepts_new_activations(function, backend, rng):
    weights = random_array(rng, (2, 1, 3, 3))
    handle = backend.lib.BNNSFilterCreateLayerConvolution(_conv_params(weights, function, 1.0), ffi.NULL)
    assert handle != ffi.NULL
    backend.lib.BNNSFilterDestroy(handle)


@pytest.mark.parametrize("function, alpha, reason", [(13, 1.0, "random"), (29, 0.0, "alpha > 0"),
                                                     (6, 0.0, "forward input x")])
def test_c_backward_refuses_with_reason(function, alpha, reason, backend, rng):
    if not backend.is_portable:
        pytest.skip("portable-backend reasons")
    lib = backend.lib
    weights = random_array(rng, (2, 1, 3, 3))
    filter_params = ffi.new("BNNSFilterParameters *")
    filter_params.flags = 1  # BNNSFlagsUseClientPtr
    handle = lib.BNNSFilterCreateLayerConvolution(_conv_params(weights, function, alpha), filter_params)
    assert handle != ffi.NULL
    try:
        x = random_array(rng, (1, 5, 5))
        y = np.zeros((2, 3, 3), np.float32)
        assert lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(y)) == 0
        dy = np.ones_like(y)
        dy_desc = ffi.new("BNNSNDArrayDescriptor *")
        dy_desc.layout = IMAGE_CHW
        dy_desc.size[0:3] = [3, 3, 2]
        dy_desc.data_type = FLOAT32
        dy_desc.data = ffi.from_buffer(dy)
        status = lib.BNNSFilterApplyBackwardBatch(handle, 1, ffi.from_buffer(x), 0, ffi.NULL, 0,
                                                  ffi.from_buffer(y), 0, dy_desc, 0, ffi.NULL, ffi.NULL)
        assert status == -1
        assert "cannot be differentiated" in backend.last_error() and reason in backend.last_error()
    finally:
        lib.BNNSFilterDestroy(handle)
