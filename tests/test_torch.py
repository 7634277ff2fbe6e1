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
