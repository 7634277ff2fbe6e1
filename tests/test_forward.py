"""Forward convolution on the default backend against the independent numpy reference."""
import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF
from bnns_py import reference

from conftest import assert_close_to_reference, random_array

# Activations every backend fuses into a convolution today.
ACTIVATIONS = [
    None, AF.rectified_linear, AF.leaky_rectified_linear(0.1), AF.sigmoid, AF.tanh,
    AF.linear(0.5), AF.clamp((-0.5, 0.75)), AF.scaled_tanh(1.5, 0.5), AF.abs, AF.elu(1.0),
    AF.softsign, AF.hard_sigmoid(0.2, 0.5), AF.softplus(1.0, 1.0), AF.linear_with_bias(2.0, -1.0),
    AF.threshold(0.1, -2.0), AF.silu, AF.gelu, AF.relu6, AF.selu, AF.log_sigmoid,
]


def _random_case(rng):
    groups = int(rng.choice([1, 1, 2, 3]))
    in_per_group = int(rng.integers(1, 4))
    out_per_group = int(rng.integers(1, 4))
    if rng.random() < 0.2:  # depthwise
        groups, in_per_group, out_per_group = int(rng.integers(2, 6)), 1, int(rng.choice([1, 2]))
    k_h, k_w = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    s_h, s_w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    d_h, d_w = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kind = rng.integers(0, 3)
    if kind == 0:
        padding = int(rng.integers(0, 3))
    elif kind == 1:
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    else:
        padding = tuple(int(v) for v in rng.integers(0, 4, size=4))
    left, right, top, bottom = bnns_py.functional.normalize_padding(padding)
    height = max(int(rng.integers(1, 13)), d_h * (k_h - 1) + 1 - top - bottom)
    width = max(int(rng.integers(1, 13)), d_w * (k_w - 1) + 1 - left - right)
    return dict(
        batch=int(rng.integers(1, 4)), in_channels=groups * in_per_group,
        out_channels=groups * out_per_group, height=height, width=width, kernel=(k_h, k_w),
        stride=(s_h, s_w), dilation=(d_h, d_w), padding=padding, groups=groups,
        bias=bool(rng.random() < 0.7), activation=ACTIVATIONS[int(rng.integers(len(ACTIVATIONS)))])


CASES = [_random_case(np.random.default_rng(seed)) for seed in range(120)]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_conv2d_matches_reference(case, rng):
    x = random_array(rng, (case["batch"], case["in_channels"], case["height"], case["width"]))
    weight = random_array(rng, (case["out_channels"], case["in_channels"] // case["groups"]) + case["kernel"], 0.5)
    bias = random_array(rng, (case["out_channels"],)) if case["bias"] else None
    kwargs = dict(stride=case["stride"], dilation=case["dilation"], groups=case["groups"],
                  activation=case["activation"])
    actual = bnns_py.conv2d(x, weight, bias, padding=case["padding"], **kwargs)
    expected = reference.conv2d(x, weight, bias,
                                padding=bnns_py.functional.normalize_padding(case["padding"]), **kwargs)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    reduction = weight[0].size
    assert_close_to_reference(actual, expected, reduction, str(case))


def test_single_image_chw_and_out_argument(rng):
    x = random_array(rng, (3, 9, 7))
    weight = random_array(rng, (4, 3, 3, 2))
    bias = random_array(rng, (4,))
    expected = reference.conv2d(x[None], weight, bias, padding=(1, 1, 1, 1))[0]
    result = bnns_py.conv2d(x, weight, bias, padding=1)
    assert result.shape == (4, 9, 8)
    assert_close_to_reference(result, expected, weight[0].size)
    out = np.full((4, 9, 8), np.nan, np.float32)
    returned = bnns_py.conv2d(x, weight, bias, padding=1, out=out)
    assert returned is out
    np.testing.assert_array_equal(out, result)


def test_documented_example_averages_to_21_5():
    # Apple's documented example: a 2x2x3 input, OIHW weights of 1/12, no bias -> [21.5].
    x = np.arange(1, 13, dtype=np.float32).reshape(3, 2, 2) * 3.0 + 2.0
    weight = np.full((1, 3, 2, 2), 1 / 12, np.float32)
    result = bnns_py.conv2d(x, weight)
    assert result.shape == (1, 1, 1)
    np.testing.assert_allclose(result.ravel(), [x.mean()], rtol=1e-6)
    assert x.mean() == pytest.approx(21.5)


def test_non_contiguous_input_is_copied_by_the_functional_api(rng):
    x = random_array(rng, (2, 4, 10, 12))[:, ::2, :, ::2]
    weight = random_array(rng, (3, 2, 3, 3))
    expected = reference.conv2d(x, weight)
    assert_close_to_reference(bnns_py.conv2d(x, weight), expected, weight[0].size)
