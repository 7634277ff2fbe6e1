"""bnns_py.conv2d against torch.nn.functional.conv2d (skipped when torch is not installed)."""
import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_ACTIVATIONS = [
    (None, lambda t: t),
    (AF.rectified_linear, F.relu),
    (AF.leaky_rectified_linear(0.2), lambda t: F.leaky_relu(t, 0.2)),
    (AF.sigmoid, torch.sigmoid),
    (AF.tanh, torch.tanh),
    (AF.clamp((-0.3, 0.4)), lambda t: torch.clamp(t, -0.3, 0.4)),
    (AF.linear(-1.5), lambda t: -1.5 * t),
    (AF.elu(0.7), lambda t: F.elu(t, 0.7)),
    (AF.silu, F.silu),
    (AF.gelu, F.gelu),
    (AF.relu6, F.relu6),
    (AF.hard_swish(), F.hardswish),
    (AF.softsign, F.softsign),
    (AF.selu, F.selu),
    (AF.log_sigmoid, F.logsigmoid),
]


def _cases():
    rng = np.random.default_rng(2026)
    cases = []
    for index in range(60):
        groups = int(rng.choice([1, 2, 4]))
        depthwise = index % 6 == 0
        in_c = groups * (1 if depthwise else int(rng.integers(1, 4)))
        out_c = groups * int(rng.integers(1, 4))
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        padding = tuple(int(v) for v in rng.integers(0, 3, size=4))  # left, right, top, bottom
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        h = int(rng.integers(dilation[0] * (k[0] - 1) + 1, 16))
        w = int(rng.integers(dilation[1] * (k[1] - 1) + 1, 16))
        cases.append(dict(n=int(rng.integers(1, 4)), in_c=in_c, out_c=out_c, h=h, w=w, k=k,
                          stride=(int(rng.integers(1, 4)), int(rng.integers(1, 4))), dilation=dilation,
                          padding=padding, groups=groups, bias=index % 3 != 0,
                          activation=index % len(TORCH_ACTIVATIONS)))
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: "n{n}c{in_c}o{out_c}k{k}g{groups}".format(**c))
def test_conv2d_matches_torch(case):
    rng = np.random.default_rng(case["h"] * 1000 + case["w"])
    x = rng.standard_normal((case["n"], case["in_c"], case["h"], case["w"])).astype(np.float32)
    weight = (rng.standard_normal((case["out_c"], case["in_c"] // case["groups"]) + case["k"]) * 0.5).astype(np.float32)
    bias = rng.standard_normal(case["out_c"]).astype(np.float32) if case["bias"] else None
    activation, torch_activation = TORCH_ACTIVATIONS[case["activation"]]
    actual = bnns_py.conv2d(x, weight, bias, stride=case["stride"], padding=case["padding"],
                            dilation=case["dilation"], groups=case["groups"], activation=activation)
    padded = F.pad(torch.from_numpy(x).double(), case["padding"])  # (left, right, top, bottom)
    expected = torch_activation(F.conv2d(
        padded, torch.from_numpy(weight).double(),
        None if bias is None else torch.from_numpy(bias).double(),
        stride=case["stride"], dilation=case["dilation"], groups=case["groups"])).numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.sqrt(weight[0].size))


def test_resnet_like_layer_matches_torch_float32():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 64, 28, 28)).astype(np.float32)
    weight = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    actual = bnns_py.conv2d(x, weight, bias, padding=1, activation="relu")
    expected = F.relu(F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), padding=1)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=2e-5 * 24)


# ---- the same calls as torch.nn.functional, positional and by keyword --------------------------------


def _conv_operands(rng, transposed, groups=1):
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    shape = (4, 6 // groups, 3, 2) if transposed else (6, 4 // groups, 3, 2)
    weight = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    return x, weight, bias


def _torch(*arrays):
    return [None if a is None else torch.from_numpy(a) for a in arrays]


@pytest.mark.parametrize("arguments", [(), (2,), (1, 1), (2, (1, 0), 2), (1, 2, 1, 2), ((2, 1), 0, (1, 2), 2)])
def test_conv2d_positional_and_keyword_calls_match_torch(arguments):
    rng = np.random.default_rng(len(arguments))
    x, weight, bias = _conv_operands(rng, False, groups=arguments[3] if len(arguments) > 3 else 1)
    names = ("stride", "padding", "dilation", "groups")
    keywords = dict(zip(names, arguments))
    expected = F.conv2d(*_torch(x, weight, bias), *arguments).numpy()
    np.testing.assert_allclose(bnns_py.conv2d(x, weight, bias, *arguments), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bnns_py.conv2d(input=x, weight=weight, bias=bias, **keywords),
                               F.conv2d(*_torch(x, weight, bias), **keywords).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arguments", [(), (2,), (2, 1), (2, 1, 1), (2, 0, 0, 2), (1, 0, 0, 1, 2), (2, 1, 1, 2, 2),
                                       ((2, 1), (1, 0), (1, 0), 1, (2, 1))])
def test_conv_transpose2d_positional_and_keyword_calls_match_torch(arguments):
    rng = np.random.default_rng(len(arguments) + 10)
    x, weight, bias = _conv_operands(rng, True, groups=arguments[3] if len(arguments) > 3 else 1)
    names = ("stride", "padding", "output_padding", "groups", "dilation")
    keywords = dict(zip(names, arguments))
    expected = F.conv_transpose2d(*_torch(x, weight, bias), *arguments).numpy()
    actual = bnns_py.conv_transpose2d(x, weight, bias, *arguments)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bnns_py.conv_transpose2d(input=x, weight=weight, bias=bias, **keywords),
                               F.conv_transpose2d(*_torch(x, weight, bias), **keywords).numpy(), rtol=1e-5, atol=1e-5)


def test_issue_call_conv_transpose2d_groups_2_is_torchs():
    rng = np.random.default_rng(3)
    x, weight, _ = _conv_operands(rng, True, groups=2)
    expected = F.conv_transpose2d(*_torch(x, weight), None, 1, 0, 0, 2).numpy()
    np.testing.assert_allclose(bnns_py.conv_transpose2d(x, weight, None, 1, 0, 0, 2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_positional_and_keyword_calls_match_torch(with_bias):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 9)).astype(np.float32)
    weight = rng.standard_normal((4, 9)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32) if with_bias else None
    expected = F.linear(*_torch(x, weight, bias)).numpy()
    np.testing.assert_allclose(bnns_py.linear(x, weight, bias), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bnns_py.linear(input=x, weight=weight, bias=bias),
                               F.linear(input=torch.from_numpy(x), weight=torch.from_numpy(weight),
                                        bias=None if bias is None else torch.from_numpy(bias)).numpy(),
                               rtol=1e-5, atol=1e-5)


# ---- padding="same" / "valid" --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on its own copy
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("k_h", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("k_w, d_h, d_w", [(1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 3, 2), (6, 2, 3)])
def test_string_padding_matches_torch(padding, k_h, k_w, d_h, d_w):
    rng = np.random.default_rng(k_h * 100 + k_w * 10 + d_h + d_w)
    x = rng.standard_normal((1, 3, 17, 19)).astype(np.float32)
    weight = rng.standard_normal((2, 3, k_h, k_w)).astype(np.float32)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), None, 1, padding, (d_h, d_w)).numpy()
    actual = bnns_py.conv2d(x, weight, None, 1, padding, (d_h, d_w))
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_same_padding_with_stride_is_refused_like_torch():
    x, weight = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 3, 3)
    with pytest.raises(RuntimeError, match="strided"):
        F.conv2d(x, weight, stride=2, padding="same")
    with pytest.raises(ValueError, match="strided"):
        bnns_py.conv2d(x, weight, stride=2, padding="same")


# ---- tensors in, numpy out; out= tensors written in place --------------------------------------------


def test_tensors_are_read_in_place():
    bnns_py.clear_cache()
    rng = np.random.default_rng(11)
    x = torch.from_numpy(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    weight = torch.nn.Parameter(torch.from_numpy(rng.standard_normal((4, 3, 3, 3)).astype(np.float32)))
    bias = torch.from_numpy(rng.standard_normal(4).astype(np.float32))
    actual = bnns_py.conv2d(x, weight, bias, padding=1)
    assert type(actual) is np.ndarray
    expected = F.conv2d(x, weight, bias, padding=1).detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    from bnns_py.functional import _Cache
    (entry,) = _Cache.entries.values()
    assert entry.weight.ctypes.data == weight.data_ptr() and entry.bias.ctypes.data == bias.data_ptr()
    assert entry.last[0].ctypes.data == x.data_ptr() and not entry.copy_x
    with torch.no_grad():
        weight.mul_(-2)  # an optimizer step: the cached filter reads it
    np.testing.assert_allclose(bnns_py.conv2d(x, weight, bias, padding=1),
                               F.conv2d(x, weight, bias, padding=1).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert len(_Cache.entries) == 1
    channels_last = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # not NCHW memory: copied
    np.testing.assert_allclose(bnns_py.conv2d(channels_last, weight, bias, padding=1),
                               F.conv2d(x, weight, bias, padding=1).detach().numpy(), rtol=1e-5, atol=1e-5)
    window = torch.from_numpy(rng.standard_normal((2, 5, 10, 10)).astype(np.float32))[:, 1:4, 1:-1, 1:-1]
    bnns_py.clear_cache()
    np.testing.assert_allclose(bnns_py.conv2d(window, weight, bias, padding=1),
                               F.conv2d(window, weight, bias, padding=1).detach().numpy(), rtol=1e-5, atol=1e-5)
    (entry,) = _Cache.entries.values()
    if bnns_py.get_backend().honours_image_strides:  # else strided views are copied (Accelerate)
        assert not entry.copy_x and entry.layer.input_descriptor.shape.strides == (1, 10, 100)
    bnns_py.clear_cache()


def test_out_tensor_is_written_in_place_and_checked():
    rng = np.random.default_rng(12)
    x = torch.from_numpy(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    weight = torch.from_numpy(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    out = torch.full((2, 4, 6, 6), 7.0)
    pointer, version = out.data_ptr(), out._version
    assert bnns_py.conv2d(x, weight, padding=1, out=out) is out
    assert out.data_ptr() == pointer
    assert out._version > version  # autograd is told, as after torch's own out=
    np.testing.assert_allclose(out.numpy(), F.conv2d(x, weight, padding=1).numpy(), rtol=1e-5, atol=1e-5)
    canvas = torch.zeros(2, 8, 6, 6)
    assert bnns_py.conv2d(x, weight, padding=1, out=canvas[:, 2:6]) is not None
    np.testing.assert_array_equal(canvas[:, 2:6].numpy(), out.numpy())
    assert (canvas[:, :2] == 0).all() and (canvas[:, 6:] == 0).all()
    transposed_out = torch.zeros(2, 4, 13, 13)
    wt = torch.from_numpy(rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    bnns_py.conv_transpose2d(x, wt, None, 2, 0, 0, 1, 1, out=transposed_out)
    np.testing.assert_allclose(transposed_out.numpy(), F.conv_transpose2d(x, wt, None, 2).numpy(), rtol=1e-5, atol=1e-5)
    lin_out = torch.empty(5, 2)
    lin_x, lin_w = torch.randn(5, 7), torch.randn(2, 7)
    version = lin_out._version
    assert bnns_py.linear(lin_x, lin_w, out=lin_out) is lin_out
    assert lin_out._version > version
    scale = torch.ones(5, 2, requires_grad=True)
    loss = (scale * lin_out).sum()  # autograd saves lin_out for the gradient of scale
    bnns_py.linear(lin_x, lin_w, out=lin_out)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    np.testing.assert_allclose(lin_out.numpy(), F.linear(lin_x, lin_w).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="requires grad"):
        bnns_py.conv2d(x, weight, padding=1, out=torch.zeros(2, 4, 6, 6, requires_grad=True))
    with pytest.raises(TypeError, match="torch.float64"):
        bnns_py.conv2d(x, weight, padding=1, out=torch.zeros(2, 4, 6, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.float64"):
        bnns_py.conv2d(x.double(), weight, padding=1)
    with pytest.raises(ValueError, match="out has shape"):
        bnns_py.conv2d(x, weight, padding=1, out=torch.zeros(2, 4, 6, 5))
    with pytest.raises(ValueError, match="not C-contiguous"):
        bnns_py.conv2d(x, weight, padding=1, out=torch.zeros(2, 6, 6, 4).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="shares memory"):
        bnns_py.conv2d(canvas[:, :3], torch.ones(4, 3, 1, 1), out=canvas[:, 2:6])


def test_modules_take_tensors_and_return_numpy():
    rng = np.random.default_rng(13)
    torch_conv = torch.nn.Conv2d(3, 4, 3, padding="same")
    x = torch.from_numpy(rng.standard_normal((2, 3, 7, 7)).astype(np.float32)).requires_grad_()
    with bnns_py.Conv2d(torch_conv.weight, torch_conv.bias, padding="same") as conv:
        assert conv.weight.ctypes.data == torch_conv.weight.data_ptr()  # trains the tensor in place
        y = conv(x)
        assert type(y) is np.ndarray
        torch_y = torch_conv(x)
        np.testing.assert_allclose(y, torch_y.detach().numpy(), rtol=1e-5, atol=1e-5)
        dy = torch.from_numpy(rng.standard_normal(y.shape).astype(np.float32))
        grads = conv.backward(x, y, dy)
        torch_y.backward(dy)
        np.testing.assert_allclose(grads.input, x.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(grads.weight, torch_conv.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
        out = torch.empty(2, 4, 7, 7)
        assert conv(x, out=out) is out
        assert out._version == 1
        np.testing.assert_allclose(out.numpy(), y, rtol=1e-6)
    torch_linear = torch.nn.Linear(6, 3)
    with bnns_py.Linear(torch_linear.weight, torch_linear.bias, activation="relu") as linear:
        xs = torch.randn(4, 6)
        np.testing.assert_allclose(linear(xs), F.relu(torch_linear(xs)).detach().numpy(), rtol=1e-5, atol=1e-5)
        assert linear.backward(xs, linear(xs), torch.ones(4, 3)).weight.shape == (3, 6)
