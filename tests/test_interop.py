"""PyTorch interop: from_torch / to_torch on layers and numpy modules (torch tests skip without torch)."""
import subprocess
import sys

import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction as AF, Conv2d, ConvolutionLayer, ConvolutionPadding, ConvolutionType,
                     ConvTranspose2d, DataType, FilterParameters, FullyConnectedLayer, Linear,
                     NDArrayDescriptor, Shape, assert_close)
from bnns_py import interop

RTOL = 1e-5  # float32 against float32: assert_close scales atol to the outputs' magnitude


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def run_layer(layer, x):
    """Apply a layer to a numpy batch (N, C, H, W) or (N, in)."""
    y = np.empty((x.shape[0],) + layer.output_descriptor.numpy_shape, np.float32)
    layer.apply(x.shape[0], np.ascontiguousarray(x), y)
    return y


def torch_out(torch, module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# ---- without torch ------------------------------------------------------------------------------

def test_missing_torch_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match="pip install torch"):
        interop.require_torch()
    module = Conv2d(np.ones((2, 1, 1, 1), np.float32))
    with pytest.raises(ImportError, match="needs PyTorch"):
        module.to_torch()
    with pytest.raises(ImportError, match="needs PyTorch"):
        ConvolutionLayer.from_torch(object(), (1, 2, 2))


def test_import_bnns_py_imports_neither_torch_nor_matplotlib():
    code = ("import sys, numpy as np, bnns_py\n"
            "bnns_py.compare(np.ones(3), np.ones(3))._repr_html_()\n"
            "x = np.ones((1, 1, 3, 3), np.float32)\n"
            "repr(bnns_py.Conv2d(np.ones((1, 1, 2, 2), np.float32)))\n"
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('torch', 'matplotlib'))][:5]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


# ---- nn.Conv2d ------------------------------------------------------------------------------------

CONV_CASES = [
    dict(in_c=3, out_c=5, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, hw=(9, 11)),
    dict(in_c=4, out_c=6, k=3, stride=2, padding=1, dilation=1, groups=2, bias=False, hw=(10, 9)),
    dict(in_c=4, out_c=4, k=3, stride=1, padding=2, dilation=2, groups=4, bias=True, hw=(8, 8)),   # depthwise
    dict(in_c=2, out_c=3, k=(2, 3), stride=(2, 1), padding=(0, 1), dilation=(1, 2), groups=1, bias=True, hw=(7, 9)),
    dict(in_c=3, out_c=4, k=(3, 5), stride=1, padding="same", dilation=(1, 2), groups=1, bias=True, hw=(6, 7)),
    dict(in_c=3, out_c=4, k=3, stride=3, padding="valid", dilation=1, groups=1, bias=False, hw=(11, 8)),
    dict(in_c=6, out_c=3, k=1, stride=1, padding=0, dilation=1, groups=3, bias=True, hw=(5, 4)),
]


def _conv_id(case):
    return "c{in_c}o{out_c}k{k}s{stride}p{padding}d{dilation}g{groups}b{bias}".format(**case).replace(" ", "")


def make_torch_conv(torch, case):
    return torch.nn.Conv2d(case["in_c"], case["out_c"], case["k"], stride=case["stride"], padding=case["padding"],
                           dilation=case["dilation"], groups=case["groups"], bias=case["bias"])


@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
def test_conv2d_layer_round_trip(torch, case, rng, no_filter_leaks):
    module = make_torch_conv(torch, case)
    x = rng.standard_normal((2, case["in_c"]) + case["hw"]).astype(np.float32)
    expected = torch_out(torch, module, x)
    with ConvolutionLayer.from_torch(module, x.shape[1:]) as layer:
        assert layer.type is ConvolutionType.standard
        assert layer.group_count == case["groups"]
        assert_close(run_layer(layer, x), expected, RTOL, msg="torch -> bnns")
        back = layer.to_torch()
    assert isinstance(back, torch.nn.Conv2d)  # symmetric padding: a plain Conv2d
    assert_close(torch_out(torch, back, x), expected, RTOL, msg="bnns -> torch")
    assert back.weight.dtype == torch.float32 and (back.bias is None) == (not case["bias"])


@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
def test_conv2d_module_round_trip(torch, case, rng, no_filter_leaks):
    module = make_torch_conv(torch, case)
    x = rng.standard_normal((3, case["in_c"]) + case["hw"]).astype(np.float32)
    expected = torch_out(torch, module, x)
    with Conv2d.from_torch(module) as conv:
        assert_close(conv(x), expected, RTOL, msg="torch -> bnns_py.Conv2d")
        back = conv.to_torch()
    assert_close(torch_out(torch, back, x), expected, RTOL, msg="bnns_py.Conv2d -> torch")


def test_layer_input_shape_accepts_batched_shape_and_checks_channels(torch, no_filter_leaks):
    module = torch.nn.Conv2d(3, 2, 3)
    with ConvolutionLayer.from_torch(module, (8, 3, 10, 12)) as layer:
        assert layer.input_descriptor.numpy_shape == (3, 10, 12)
        assert layer.output_descriptor.numpy_shape == (2, 8, 10)
    with pytest.raises(ValueError, match="input_shape has 4 channels, the module expects 3"):
        ConvolutionLayer.from_torch(module, (4, 10, 12))
    with pytest.raises(TypeError, match="input_shape"):
        ConvolutionLayer.from_torch(module)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ConvolutionLayer.from_torch(module, (3, 2, 2))


def test_weights_are_copied_and_owned(torch, rng, no_filter_leaks):
    module = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    with ConvolutionLayer.from_torch(module, (2, 5, 5)) as layer:
        before = run_layer(layer, x)
        assert layer.filter_parameters.use_client_pointer  # so apply_backward works
        weights = layer.weights.data
        assert weights.dtype == np.float32 and weights.flags.c_contiguous and weights.flags.owndata
        assert not np.shares_memory(weights, module.weight.detach().numpy())
        with torch.no_grad():
            module.weight.mul_(2.0)
            module.bias.add_(1.0)
        np.testing.assert_array_equal(run_layer(layer, x), before)  # the layer does not see torch's change


def test_float64_module_and_filter_parameters(torch, rng, no_filter_leaks):
    module = torch.nn.Conv2d(2, 3, 3, dtype=torch.float64)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    expected = module(torch.from_numpy(x).double()).detach().numpy()
    with ConvolutionLayer.from_torch(module, (2, 6, 6), filter_parameters=FilterParameters()) as layer:
        assert layer.weights.data.dtype == np.float32
        assert not layer.filter_parameters.use_client_pointer
        assert_close(run_layer(layer, x), expected, 1e-5)


def test_padding_modes(torch, rng, no_filter_leaks):
    with pytest.raises(ValueError, match="padding_mode='reflect'.*zeros only"):
        ConvolutionLayer.from_torch(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (2, 6, 6))
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        Conv2d.from_torch(torch.nn.Conv2d(2, 2, 3, padding="same", padding_mode="circular"))
    # without padding the mode does not matter
    module = torch.nn.Conv2d(2, 2, 3, padding=0, padding_mode="replicate")
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    with ConvolutionLayer.from_torch(module, (2, 6, 6)) as layer:
        assert_close(run_layer(layer, x), torch_out(torch, module, x), RTOL)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_with_even_kernel_is_asymmetric(torch, rng, no_filter_leaks):
    module = torch.nn.Conv2d(2, 3, (2, 4), padding="same")
    x = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    expected = torch_out(torch, module, x)
    assert expected.shape == (2, 3, 7, 8)
    with ConvolutionLayer.from_torch(module, (2, 7, 8)) as layer:
        assert layer.padding.sides == (1, 2, 0, 1)  # PyTorch puts the odd zero after
        assert_close(run_layer(layer, x), expected, RTOL)
        back = layer.to_torch()
    assert isinstance(back, torch.nn.Sequential) and isinstance(back[0], torch.nn.ZeroPad2d)
    assert_close(torch_out(torch, back, x), expected, RTOL)


def test_sequential_with_padding_and_activation(torch, rng, no_filter_leaks):
    module = torch.nn.Sequential(torch.nn.ZeroPad2d((2, 0, 1, 0)), torch.nn.Conv2d(3, 4, 3, padding=1),
                                 torch.nn.LeakyReLU(0.1))
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    expected = torch_out(torch, module, x)
    with ConvolutionLayer.from_torch(module, (3, 6, 5)) as layer:
        assert layer.padding.sides == (3, 1, 2, 1)
        assert layer.activation == AF.leaky_rectified_linear(0.1)
        assert_close(run_layer(layer, x), expected, RTOL)
        back = layer.to_torch()
    assert [type(m).__name__ for m in back] == ["ZeroPad2d", "Conv2d", "LeakyReLU"]
    assert_close(torch_out(torch, back, x), expected, RTOL)
    with Conv2d.from_torch(module) as conv:
        assert conv.spec.padding == (3, 1, 2, 1)
        assert_close(conv(x), expected, RTOL)
    # activation= as an argument instead of a module
    with ConvolutionLayer.from_torch(module[1], (3, 6, 5), activation="relu") as layer:
        assert layer.activation == AF.rectified_linear
    with pytest.raises(ValueError, match="both an activation module"):
        ConvolutionLayer.from_torch(module, (3, 6, 5), activation="relu")


def test_refused_modules(torch):
    nn = torch.nn
    with pytest.raises(TypeError, match="nn.Conv2d or nn.ConvTranspose2d"):
        ConvolutionLayer.from_torch(nn.Conv1d(2, 2, 3), (2, 5, 5))
    with pytest.raises(TypeError, match="needs nn.ConvTranspose2d"):
        ConvTranspose2d.from_torch(nn.Conv2d(2, 2, 3))
    with pytest.raises(TypeError, match="needs nn.Conv2d"):
        Conv2d.from_torch(nn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(TypeError, match="nn.Linear"):
        FullyConnectedLayer.from_torch(nn.Conv2d(2, 2, 3))
    with pytest.raises(TypeError, match="nn.Linear"):
        Linear.from_torch(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.ReLU()))
    with pytest.raises(ValueError, match="not initialized yet"):
        Conv2d.from_torch(nn.LazyConv2d(3, 3))
    with pytest.raises(ValueError, match="meta device"):
        Conv2d.from_torch(nn.Conv2d(2, 2, 3, device="meta"))
    with pytest.raises(ValueError, match="Mish has no fused BNNS activation"):
        Conv2d.from_torch(nn.Sequential(nn.Conv2d(2, 2, 3), nn.Mish()))
    with pytest.raises(ValueError, match="pads with 1.0"):
        Conv2d.from_torch(nn.Sequential(nn.ConstantPad2d(1, 1.0), nn.Conv2d(2, 2, 3)))
    with pytest.raises(ValueError, match="crops"):
        Conv2d.from_torch(nn.Sequential(nn.ZeroPad2d(-1), nn.Conv2d(2, 2, 3)))
    with pytest.raises(TypeError, match="can only precede an nn.Conv2d"):
        ConvTranspose2d.from_torch(nn.Sequential(nn.ZeroPad2d(1), nn.ConvTranspose2d(2, 2, 3)))
    with pytest.raises(ValueError, match="over dim=-1"):
        Conv2d.from_torch(nn.Sequential(nn.Conv2d(2, 2, 3), nn.Softmax(dim=-1)))
    prelu = nn.PReLU(2)
    with torch.no_grad():
        prelu.weight[1] = 0.5
    with pytest.raises(ValueError, match="different slopes"):
        Conv2d.from_torch(nn.Sequential(nn.Conv2d(2, 2, 3), prelu))


# ---- nn.ConvTranspose2d ---------------------------------------------------------------------------

TRANSPOSED_CASES = [
    dict(in_c=3, out_c=4, k=3, stride=1, padding=1, output_padding=0, dilation=1, groups=1, bias=True, hw=(5, 6)),
    dict(in_c=4, out_c=2, k=4, stride=2, padding=1, output_padding=0, dilation=1, groups=1, bias=False, hw=(4, 5)),
    dict(in_c=4, out_c=6, k=3, stride=2, padding=1, output_padding=1, dilation=1, groups=2, bias=True, hw=(5, 4)),
    dict(in_c=2, out_c=3, k=(3, 2), stride=(3, 2), padding=(1, 0), output_padding=(2, 1), dilation=1, groups=1,
         bias=True, hw=(4, 3)),
    dict(in_c=3, out_c=3, k=3, stride=2, padding=2, output_padding=1, dilation=2, groups=3, bias=False, hw=(6, 6)),
    dict(in_c=2, out_c=4, k=2, stride=1, padding=0, output_padding=(1, 0), dilation=(2, 3), groups=2, bias=True,
         hw=(3, 4)),
]


def _transposed_id(case):
    return "c{in_c}o{out_c}k{k}s{stride}p{padding}op{output_padding}d{dilation}g{groups}b{bias}".format(
        **case).replace(" ", "")


def make_torch_transposed(torch, case):
    return torch.nn.ConvTranspose2d(case["in_c"], case["out_c"], case["k"], stride=case["stride"],
                                    padding=case["padding"], output_padding=case["output_padding"],
                                    dilation=case["dilation"], groups=case["groups"], bias=case["bias"])


@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=_transposed_id)
def test_conv_transpose2d_layer_round_trip(torch, case, rng, no_filter_leaks):
    module = make_torch_transposed(torch, case)
    x = rng.standard_normal((2, case["in_c"]) + case["hw"]).astype(np.float32)
    expected = torch_out(torch, module, x)
    with ConvolutionLayer.from_torch(module, x.shape) as layer:
        assert layer.type is ConvolutionType.transposed
        assert layer.output_descriptor.numpy_shape == expected.shape[1:]  # output_padding: a larger output
        assert_close(run_layer(layer, x), expected, RTOL, msg="torch -> bnns")
        back = layer.to_torch()
    assert isinstance(back, torch.nn.ConvTranspose2d)
    assert tuple(back.output_padding) == tuple(module.output_padding)
    assert_close(torch_out(torch, back, x), expected, RTOL, msg="bnns -> torch")
    np.testing.assert_array_equal(back.weight.detach().numpy(), module.weight.detach().numpy())


@pytest.mark.parametrize("case", TRANSPOSED_CASES, ids=_transposed_id)
def test_conv_transpose2d_module_round_trip(torch, case, rng, no_filter_leaks):
    module = make_torch_transposed(torch, case)
    x = rng.standard_normal((2, case["in_c"]) + case["hw"]).astype(np.float32)
    expected = torch_out(torch, module, x)
    with ConvTranspose2d.from_torch(module) as conv:
        assert conv.spec.output_padding == tuple(module.output_padding)
        assert_close(conv(x), expected, RTOL, msg="torch -> bnns_py.ConvTranspose2d")
        back = conv.to_torch()
    assert_close(torch_out(torch, back, x), expected, RTOL, msg="bnns_py.ConvTranspose2d -> torch")


def test_transposed_asymmetric_padding_to_torch(torch, rng, no_filter_leaks):
    # pads (left 2, right 1, top 1, bottom 1) with stride 2: PyTorch padding (1, 2) + output_padding (0, 1)
    weight = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(2).astype(np.float32)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    with ConvTranspose2d(weight, bias, stride=2, padding=(2, 1, 1, 1)) as conv:
        expected = conv(x)
        back = conv.to_torch()
    assert tuple(back.padding) == (1, 2) and tuple(back.output_padding) == (0, 1)
    assert_close(torch_out(torch, back, x), expected, RTOL)
    with ConvTranspose2d(weight, bias, stride=1, padding=(0, 1, 0, 0)) as conv:
        with pytest.raises(ValueError, match="cannot be an nn.ConvTranspose2d: along width it would need "
                                             "output_padding=-1"):
            conv.to_torch()


# ---- layers built with bnns-py, converted to torch ------------------------------------------------

def test_layer_with_smaller_output_than_pytorch_gives_and_rotated_weights(torch, rng, no_filter_leaks):
    # BNNS accepts an output smaller than the floor formula (the top-left part); OIHrWr stores the
    # kernel rotated by 180 degrees. to_torch must reproduce both.
    weight = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)  # (out, in, kH, kW)
    rotated = np.ascontiguousarray(weight[:, :, ::-1, ::-1])
    bias = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    full = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                                      stride=2, padding=1).numpy()
    assert full.shape[2:] == (5, 5)
    layer = ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 9, 3)),
        NDArrayDescriptor(rotated, Shape((2, 3, 3, 4), bnns_py.DataLayout.convolution_weights_oihrwr)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(3, 4, 4)),   # 4x3 < 5x5
        NDArrayDescriptor(bias, Shape.vector(4)), ConvolutionPadding.symmetric(1, 1),
        AF.sigmoid, 1, (2, 2))
    with layer:
        y = run_layer(layer, x)
        back = layer.to_torch()
    assert_close(y, 1 / (1 + np.exp(-full[:, :, :4, :3])), RTOL)
    assert [type(m).__name__ for m in back] == ["ZeroPad2d", "Conv2d", "Sigmoid"]
    assert_close(torch_out(torch, back, x), y, RTOL)
    np.testing.assert_array_equal(back[1].weight.detach().numpy(), weight)


def test_to_torch_reads_strided_weights(torch, rng, no_filter_leaks):
    weight = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    padded = np.zeros((2, 3, 2, 3), np.float32)  # rows of 3 with 2 used: stride[1] = 3
    padded[..., :2] = weight
    shape = Shape.convolution_weights_oihw(2, 2, 3, 2, stride=(1, 3, 6, 18))
    layer = ConvolutionLayer(ConvolutionType.standard,
                             NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(4, 4, 3)),
                             NDArrayDescriptor(padded.reshape(-1), shape),
                             NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(3, 3, 2)))
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    with layer:
        y = run_layer(layer, x)
        back = layer.to_torch()
    np.testing.assert_array_equal(back.weight.detach().numpy(), weight)
    assert back.bias is None
    assert_close(torch_out(torch, back, x), y, RTOL)


def test_to_torch_on_a_closed_layer(torch, no_filter_leaks):
    layer = ConvolutionLayer.from_torch(torch.nn.Conv2d(1, 1, 1), (1, 2, 2))
    layer.close()
    assert isinstance(layer.to_torch(), torch.nn.Conv2d)


# ---- activations ------------------------------------------------------------------------------------

def _torch_activations(torch):
    nn = torch.nn
    return [  # (torch module, the fused activation it becomes, type to_torch gives back)
        (nn.ReLU(), AF.rectified_linear, nn.ReLU),
        (nn.LeakyReLU(0.2), AF.leaky_rectified_linear(0.2), nn.LeakyReLU),
        (nn.Sigmoid(), AF.sigmoid, nn.Sigmoid),
        (nn.Tanh(), AF.tanh, nn.Tanh),
        (nn.Hardtanh(-0.3, 0.4), AF.clamp((-0.3, 0.4)), nn.Hardtanh),
        (nn.ReLU6(), AF.relu6, nn.ReLU6),
        (nn.ELU(0.7), AF.elu(0.7), nn.ELU),
        (nn.CELU(1.3), AF.celu(1.3), nn.CELU),
        (nn.SELU(), AF.selu, nn.SELU),
        (nn.SiLU(), AF.silu, nn.SiLU),
        (nn.GELU(), AF.gelu, nn.GELU),
        (nn.GELU(approximate="tanh"), AF.gelu_approximation(0.7978845608028654, 0.044715), nn.GELU),
        (nn.Hardswish(), AF.hard_swish(), nn.Hardswish),
        (nn.Hardsigmoid(), AF.hard_sigmoid(1 / 6, 0.5), nn.Hardsigmoid),
        (nn.Softplus(beta=2.0), AF.softplus(0.5, 2.0), nn.Softplus),
        (nn.Softsign(), AF.softsign, nn.Softsign),
        (nn.LogSigmoid(), AF.log_sigmoid, nn.LogSigmoid),
        (nn.Hardshrink(0.3), AF.hard_shrink(0.3), nn.Hardshrink),
        (nn.Softshrink(0.3), AF.soft_shrink(0.3), nn.Softshrink),
        (nn.Tanhshrink(), AF.tanh_shrink, nn.Tanhshrink),
        (nn.Threshold(0.1, -2.0), AF.threshold(0.1, -2.0), nn.Threshold),
        (nn.Softmax(dim=1), AF.softmax, nn.Softmax),
        (nn.LogSoftmax(dim=-3), AF.log_softmax, nn.LogSoftmax),
        (nn.PReLU(init=0.3), AF.leaky_rectified_linear(0.3), nn.LeakyReLU),
        (nn.Identity(), AF.identity, nn.Conv2d),
    ]


def test_fused_activations_round_trip(torch, rng, no_filter_leaks):
    nn = torch.nn
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    for act_module, activation, back_type in _torch_activations(torch):
        conv = nn.Conv2d(3, 4, 3, padding=1)
        module = nn.Sequential(conv, act_module)
        expected = torch_out(torch, module, x)
        with ConvolutionLayer.from_torch(module, (3, 6, 5)) as layer:
            got = layer.activation  # (PReLU's slope is a float32 parameter: compare approximately)
            assert got.function == activation.function, act_module
            assert np.allclose((got.alpha, got.beta), (activation.alpha, activation.beta), rtol=1e-7), act_module
            assert_close(run_layer(layer, x), expected, 1e-5, msg=str(act_module))
            back = layer.to_torch()
        last = back[-1] if isinstance(back, nn.Sequential) else back
        assert isinstance(last, back_type), (act_module, back)
        assert_close(torch_out(torch, back, x), expected, 1e-5, msg=f"{act_module} back")


@pytest.mark.parametrize("activation", [AF.abs, AF.linear(2.0), AF.scaled_tanh(1.0, 2.0), AF.erf,
                                        AF.hard_sigmoid(0.2, 0.5), AF.gelu_approximation_sigmoid])
def test_activation_without_a_torch_module_is_refused(torch, activation, no_filter_leaks):
    with Conv2d(np.ones((1, 1, 1, 1), np.float32), activation=activation) as conv:
        with pytest.raises(ValueError, match="torch.nn has no module computing"):
            conv.to_torch()


def test_prelu_per_channel_to_torch(torch, rng, no_filter_leaks):
    weight = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    with Conv2d(weight, activation=AF.prelu_per_channel(0.25)) as conv:
        expected = conv(x)
        back = conv.to_torch()
    assert isinstance(back[1], torch.nn.PReLU)
    assert_close(torch_out(torch, back, x), expected, RTOL)


# ---- nn.Linear ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_linear_round_trip(torch, rng, bias, activation, no_filter_leaks):
    nn = torch.nn
    linear = nn.Linear(13, 6, bias=bias)
    module = linear if activation is None else nn.Sequential(linear, nn.Tanh())
    x = rng.standard_normal((5, 13)).astype(np.float32)
    expected = torch_out(torch, module, x)
    with FullyConnectedLayer.from_torch(module) as layer:
        assert (layer.input_size, layer.output_size) == (13, 6)
        assert (layer.bias is None) == (not bias)
        assert_close(run_layer(layer, x), expected, RTOL, msg="torch -> FullyConnectedLayer")
        back = layer.to_torch()
    assert isinstance(back, nn.Linear if activation is None else nn.Sequential)
    assert_close(torch_out(torch, back, x), expected, RTOL, msg="FullyConnectedLayer -> torch")
    with ConvolutionLayer.from_torch(module) as layer:  # the general entry point dispatches
        assert isinstance(layer, FullyConnectedLayer)
    with Linear.from_torch(module) as lin:
        assert_close(lin(x), expected, RTOL, msg="torch -> bnns_py.Linear")
        assert_close(lin(x[0]), expected[0], RTOL)
        back = lin.to_torch()
    assert_close(torch_out(torch, back, x), expected, RTOL, msg="bnns_py.Linear -> torch")


def test_linear_input_shape_and_first_major_weights(torch, rng, no_filter_leaks):
    with pytest.raises(ValueError, match="in_features"):
        FullyConnectedLayer.from_torch(torch.nn.Linear(4, 2), (5,))
    with FullyConnectedLayer.from_torch(torch.nn.Linear(4, 2), (7, 4)):
        pass
    weight = rng.standard_normal((3, 4)).astype(np.float32)
    layer = FullyConnectedLayer(NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(4)),
                                NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(3)),
                                NDArrayDescriptor(weight, Shape.matrix_first_major(3, 4)))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    with layer:
        y = run_layer(layer, x)
        back = layer.to_torch()
    np.testing.assert_array_equal(back.weight.detach().numpy(), weight)
    assert_close(torch_out(torch, back, x), y, RTOL)


# ---- gradients ------------------------------------------------------------------------------------

def test_layer_gradients_match_autograd(torch, rng, no_filter_leaks):
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), torch.nn.ReLU())
    x = rng.standard_normal((2, 4, 7, 8)).astype(np.float32)
    dy = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = module(xt)
    yt.backward(torch.from_numpy(dy))
    with ConvolutionLayer.from_torch(module, x.shape) as layer:
        y = run_layer(layer, x)
        dx, dw, db = np.empty_like(x), np.empty_like(layer.weights.data), np.empty(6, np.float32)
        layer.apply_backward(2, x, y, dy, dx, dw, db)
    conv = module[0]
    assert_close(y, yt, RTOL)
    assert_close(dx, xt.grad, RTOL, msg="input gradient")
    assert_close(dw, conv.weight.grad, RTOL, msg="weight gradient")
    assert_close(db, conv.bias.grad, RTOL, msg="bias gradient")


def test_module_gradients_match_autograd(torch, rng, no_filter_leaks):
    module = torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1, output_padding=1)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = module(xt)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    with ConvTranspose2d.from_torch(module) as conv:
        y = conv(x)
        grads = conv.backward(x, y, dy)
    assert_close(y, yt, RTOL)
    assert_close(grads.input, xt.grad, RTOL, msg="input gradient")
    assert_close(grads.weight, module.weight.grad, RTOL, msg="weight gradient")
    assert_close(grads.bias, module.bias.grad, RTOL, msg="bias gradient")


def test_to_torch_sees_trained_weights(torch, rng, no_filter_leaks):
    with Conv2d.from_torch(torch.nn.Conv2d(2, 2, 3)) as conv:
        conv.weight -= 0.5  # in place, as an optimizer step does
        back = conv.to_torch()
        np.testing.assert_array_equal(back.weight.detach().numpy(), conv.weight)


def test_from_torch_passes_the_thread_count_on(torch, no_filter_leaks):
    nn = torch.nn
    modules = [Conv2d.from_torch(nn.Conv2d(2, 3, 3), n_threads=2),
               ConvTranspose2d.from_torch(nn.ConvTranspose2d(2, 3, 3), n_threads=1),
               Linear.from_torch(nn.Linear(4, 2)), Linear.from_torch(nn.Linear(4, 2), n_threads=3)]
    try:
        assert [m.n_threads for m in modules] == [2, 1, 0, 3]
    finally:
        for m in modules:
            m.close()
    with pytest.raises(ValueError, match="n_threads"):
        Conv2d.from_torch(nn.Conv2d(2, 3, 3), n_threads=-2)
