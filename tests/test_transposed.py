"""Transposed convolution: the Swift-style layer, the functional API, reference and PyTorch."""
import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction, ConvolutionLayer, ConvolutionType, DataType, NDArrayDescriptor,
                     Shape, reference)

from conftest import assert_close_to_reference, random_array


def test_apples_documented_2x2_to_4x4_example(no_filter_leaks):
    layer = ConvolutionLayer(
        ConvolutionType.transposed,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(2, 2, 1)),
        NDArrayDescriptor(np.ones(9, np.float32), Shape.convolution_weights_oihw(3, 3, 1, 1)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(4, 4, 1)))
    with layer:
        out = np.empty((1, 4, 4), np.float32)
        layer.apply(1, np.ones((1, 2, 2), np.float32), out)
    np.testing.assert_array_equal(out[0], [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])


def test_weight_layout_is_out_in_unflipped(no_filter_leaks):
    # One input pixel of value 1 scatters the kernel of each output channel, unflipped:
    # out[o, ky, kx] = W[o][i][ky][kx] in BNNS memory order [out][in/groups][kH][kW].
    weight = np.arange(2 * 3 * 2 * 3, dtype=np.float32).reshape(2, 3, 2, 3)  # out=2, in=3, kH=2, kW=3
    layer = ConvolutionLayer(
        ConvolutionType.transposed,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(1, 1, 3)),
        NDArrayDescriptor(weight, Shape.convolution_weights_oihw(3, 2, 3, 2)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(3, 2, 2)))
    x = np.array([0, 1, 0], np.float32).reshape(3, 1, 1)  # input channel 1 only
    with layer:
        out = np.empty((2, 2, 3), np.float32)
        layer.apply(1, x, out)
    np.testing.assert_array_equal(out, weight[:, 1])


def _cases():
    rng = np.random.default_rng(33)
    cases = []
    for index in range(50):
        groups = int(rng.choice([1, 1, 2, 3]))
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
        padding = tuple(int(v) for v in rng.integers(0, 2, size=4))
        cases.append(dict(n=int(rng.integers(1, 4)), in_c=groups * int(rng.integers(1, 4)),
                          out_c=groups * int(rng.integers(1, 4)), h=int(rng.integers(1, 8)),
                          w=int(rng.integers(1, 8)), k=k, stride=stride, dilation=dilation,
                          padding=padding, output_padding=output_padding, groups=groups,
                          bias=index % 3 != 0,
                          activation=[None, ActivationFunction.rectified_linear, ActivationFunction.tanh,
                                      ActivationFunction.leaky_rectified_linear(0.3)][index % 4]))
    return cases


def _run_case(case, rng):
    x = random_array(rng, (case["n"], case["in_c"], case["h"], case["w"]))
    weight = random_array(rng, (case["in_c"], case["out_c"] // case["groups"]) + case["k"], 0.5)
    bias = random_array(rng, (case["out_c"],)) if case["bias"] else None
    kwargs = dict(stride=case["stride"], padding=case["padding"], output_padding=case["output_padding"],
                  dilation=case["dilation"], groups=case["groups"], activation=case["activation"])
    return x, weight, bias, kwargs


@pytest.mark.parametrize("case", _cases(), ids=lambda c: "n{n}i{in_c}o{out_c}k{k}s{stride}g{groups}".format(**c))
def test_conv_transpose2d_matches_reference(case, rng):
    x, weight, bias, kwargs = _run_case(case, rng)
    left, right, top, bottom = kwargs["padding"]
    out_h = (case["h"] - 1) * case["stride"][0] - top - bottom + case["dilation"][0] * (case["k"][0] - 1) + 1 + case["output_padding"][0]
    out_w = (case["w"] - 1) * case["stride"][1] - left - right + case["dilation"][1] * (case["k"][1] - 1) + 1 + case["output_padding"][1]
    if out_h < 1 or out_w < 1:
        with pytest.raises(ValueError, match="removes the whole"):
            bnns_py.conv_transpose2d(x, weight, bias, **kwargs)
        return
    actual = bnns_py.conv_transpose2d(x, weight, bias, **kwargs)
    expected = reference.conv_transpose2d(x, weight, bias, **kwargs)
    assert actual.shape == expected.shape == (case["n"], case["out_c"], out_h, out_w)
    assert_close_to_reference(actual, expected, case["in_c"] * case["k"][0] * case["k"][1], str(case))


def test_conv_transpose2d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for case in _cases()[:25]:
        x, weight, bias, kwargs = _run_case(case, rng)
        if kwargs["padding"][0] != kwargs["padding"][1] or kwargs["padding"][2] != kwargs["padding"][3]:
            continue  # torch's transposed padding is symmetric
        activation = kwargs.pop("activation")
        kwargs["padding"] = (kwargs["padding"][2], kwargs["padding"][0])
        try:
            expected = torch.nn.functional.conv_transpose2d(
                torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                None if bias is None else torch.from_numpy(bias).double(), **kwargs).numpy()
        except RuntimeError:
            continue  # torch refuses (empty output)
        actual = bnns_py.conv_transpose2d(x, weight, bias, activation=activation, **kwargs)
        expected = reference.apply_activation(expected, activation.function, activation.alpha,
                                              activation.beta) if activation else expected
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_output_padding_rule_and_transposed_dtype(no_filter_leaks):
    x = np.zeros((1, 2, 3, 3), np.float32)
    w = np.zeros((2, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="output_padding 2 along height must be smaller"):
        bnns_py.conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="input has 2 channels, the weights expect 4"):
        bnns_py.conv_transpose2d(np.zeros((1, 2, 3, 3), np.float32), np.zeros((4, 2, 3, 3), np.float32))


def test_transposed_layer_size_rule_is_checked(no_filter_leaks):
    with pytest.raises(ValueError, match="transposed convolution sizes do not fit along y"):
        ConvolutionLayer(
            ConvolutionType.transposed,
            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(2, 3, 1)),
            NDArrayDescriptor(np.ones(9, np.float32), Shape.convolution_weights_oihw(3, 3, 1, 1)),
            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(4, 4, 1)))
