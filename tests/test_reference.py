"""Tests of bnns_py.reference, the float64 numpy reference for BNNS convolution semantics.

Tests that compare with PyTorch (float64) skip when torch is not importable. The
rest (hand-computed values, finite differences, adjoint identities, argument
checks) use only numpy.
"""
import collections
import enum
import math

import numpy as np
import pytest

from bnns_py import reference as ref

Act = collections.namedtuple("Act", "function alpha beta")

# Forward/derivative agreement with torch in float64. Both sides are exact formulas, so the
# only differences are rounding.
RTOL = 1e-12
ATOL = 1e-13
# Convolutions: different summation orders over up to a few hundred float64 terms.
CONV_RTOL = 1e-11
CONV_ATOL = 1e-12


def _torch():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


def _t(torch, a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


# ---------------------------------------------------------------------------
# Helpers and size formulas
# ---------------------------------------------------------------------------

def test_normalize_padding_forms():
    assert ref.normalize_padding(2) == (2, 2, 2, 2)
    # (pad_h, pad_w) in PyTorch order -> (left, right, top, bottom)
    assert ref.normalize_padding((1, 3)) == (3, 3, 1, 1)
    assert ref.normalize_padding((1, 2, 3, 4)) == (1, 2, 3, 4)
    assert ref.normalize_padding(np.int64(1)) == (1, 1, 1, 1)
    for bad in [(1, 2, 3), -1, (0, -1), (1.5, 2), "ab"]:
        with pytest.raises(ValueError):
            ref.normalize_padding(bad)


def test_pair():
    assert ref.pair(3) == (3, 3)
    assert ref.pair((2, 5)) == (2, 5)
    for bad in [(1, 2, 3), 1.0, (1.0, 2)]:
        with pytest.raises(ValueError):
            ref.pair(bad)


def test_output_size_formulas():
    # floor((in + pb + pa - d*(k-1) - 1)/s) + 1
    assert ref.conv2d_output_size(7, 3, 2, 1, 1, 1) == 4
    assert ref.conv2d_output_size(8, 3, 2, 0, 0, 1) == 3
    assert ref.conv2d_output_size(10, 3, 1, 0, 1, 2) == 7
    assert ref.conv2d_output_size(5, 3, 3, 0, 0, 1) == 1
    # (in-1)*s - pb - pa + d*(k-1) + 1 + op
    assert ref.conv_transpose2d_output_size(2, 3, 1, 0, 0, 1) == 4
    assert ref.conv_transpose2d_output_size(3, 3, 2, 1, 1, 1) == 5
    assert ref.conv_transpose2d_output_size(3, 3, 2, 1, 1, 1, output_padding=1) == 6
    assert ref.conv_transpose2d_output_size(4, 2, 3, 0, 2, 2) == 9 + 2 + 1 - 2


# ---------------------------------------------------------------------------
# Activations: torch equivalents
# ---------------------------------------------------------------------------

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# (id, function, alpha, beta, torch implementation)
TORCH_ACTIVATIONS = [
    ("identity", 0, 0.0, 0.0, lambda t, T, F: t),
    ("relu", 1, 0.0, 0.0, lambda t, T, F: F.relu(t)),
    ("leaky_relu", 2, 0.1, 0.0, lambda t, T, F: F.leaky_relu(t, 0.1)),
    ("leaky_relu_neg_alpha", 2, -0.3, 0.0, lambda t, T, F: F.leaky_relu(t, -0.3)),
    ("sigmoid", 3, 0.0, 0.0, lambda t, T, F: T.sigmoid(t)),
    ("tanh", 4, 0.0, 0.0, lambda t, T, F: T.tanh(t)),
    ("scaled_tanh", 5, 1.7, 0.6, lambda t, T, F: 1.7 * T.tanh(0.6 * t)),
    ("abs", 6, 0.0, 0.0, lambda t, T, F: T.abs(t)),
    ("linear", 7, -2.5, 0.0, lambda t, T, F: -2.5 * t),
    ("clamp", 8, -0.5, 0.7, lambda t, T, F: F.hardtanh(t, -0.5, 0.7)),
    ("gelu_tanh", 12, SQRT_2_OVER_PI, 0.044715, lambda t, T, F: F.gelu(t, approximate="tanh")),
    ("hardsigmoid", 15, 1.0 / 6.0, 0.5, lambda t, T, F: F.hardsigmoid(t)),
    # torch softplus(beta=b) = (1/b) log(1 + exp(b x)); a huge threshold disables its linear cut-off
    ("softplus", 16, 1.0, 1.0, lambda t, T, F: F.softplus(t, beta=1.0, threshold=1e4)),
    ("softplus_beta", 16, 1.0 / 1.5, 1.5, lambda t, T, F: F.softplus(t, beta=1.5, threshold=1e4)),
    ("softsign", 17, 0.0, 0.0, lambda t, T, F: F.softsign(t)),
    ("elu", 18, 0.8, 0.0, lambda t, T, F: F.elu(t, 0.8)),
    ("clamped_leaky_relu", 19, 0.2, 0.9,
     lambda t, T, F: T.clamp(F.leaky_relu(t, 0.2), max=0.9)),
    ("clamped_leaky_relu_neg_beta", 19, 0.2, -0.3,
     lambda t, T, F: T.clamp(F.leaky_relu(t, 0.2), max=-0.3)),
    ("linear_with_bias", 20, 1.3, -0.4, lambda t, T, F: 1.3 * t - 0.4),
    ("logsigmoid", 22, 0.0, 0.0, lambda t, T, F: F.logsigmoid(t)),
    ("selu", 23, 0.0, 0.0, lambda t, T, F: F.selu(t)),
    ("celu", 24, 1.4, 0.0, lambda t, T, F: F.celu(t, 1.4)),
    ("hardshrink", 25, 0.5, 0.0, lambda t, T, F: F.hardshrink(t, 0.5)),
    ("hardshrink_neg_alpha", 25, -0.5, 0.0, lambda t, T, F: F.hardshrink(t, 0.5)),
    ("softshrink", 26, 0.5, 0.0, lambda t, T, F: F.softshrink(t, 0.5)),
    ("softshrink_neg_alpha", 26, -0.3, 0.0, lambda t, T, F: F.softshrink(t, 0.3)),
    ("tanhshrink", 27, 0.0, 0.0, lambda t, T, F: F.tanhshrink(t)),
    # torch threshold: x > th ? x : value  ==  BNNS x <= alpha ? beta : x
    ("threshold", 28, 0.2, -1.5, lambda t, T, F: F.threshold(t, 0.2, -1.5)),
    ("hardswish", 30, 0.0, 0.0, lambda t, T, F: F.hardswish(t)),
    ("silu", 31, 0.0, 0.0, lambda t, T, F: F.silu(t)),
    ("relu6", 32, 0.0, 0.0, lambda t, T, F: F.relu6(t)),
    ("erf", 33, 0.0, 0.0, lambda t, T, F: T.erf(t)),
    ("gelu", 34, 0.0, 0.0, lambda t, T, F: F.gelu(t)),
    ("gelu_sigmoid", 35, 0.0, 0.0, lambda t, T, F: t * T.sigmoid(1.702 * t)),
]
_ACT_IDS = [a[0] for a in TORCH_ACTIVATIONS]
_ACT_BY_NAME = {a[0]: a for a in TORCH_ACTIVATIONS}

# torch's own backward for these uses float32 constants (1/6, 1/alpha), which is accurate only to
# ~3e-8 relative; for the tight float64 gradient checks use an exact float64 composition instead.
TORCH_EXACT_GRAD = {
    "hardsigmoid": lambda t, T, F: T.clamp(t / 6.0 + 0.5, 0.0, 1.0),
    "celu": lambda t, T, F: T.where(t > 0, t, 1.4 * T.expm1(T.clamp(t, max=0.0) / 1.4)),
}


def _act_points(seed, extremes=True):
    """408 random points, shape (2, 3, 4, 17); ``extremes`` swaps six of them for |x| >= 12.5."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0.0, 2.5, 308), rng.uniform(-8, 8, 100)])
    if extremes:
        x[-6:] = [-60.0, -35.0, -12.5, 12.5, 35.0, 60.0]
    return x.reshape(2, 3, 4, -1)


def test_every_elementwise_function_is_checked_against_torch():
    assert {a[1] for a in TORCH_ACTIVATIONS} == set(ref.ELEMENTWISE_FUNCTIONS)


@pytest.mark.parametrize("name,function,alpha,beta,tfn", TORCH_ACTIVATIONS, ids=_ACT_IDS)
def test_activation_matches_torch(name, function, alpha, beta, tfn):
    torch, F = _torch()
    x = _act_points(1)
    got = ref.apply_activation(x, function, alpha, beta)
    want = tfn(_t(torch, x), torch, F).numpy()
    assert got.dtype == np.float64 and got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name,function,alpha,beta,tfn", TORCH_ACTIVATIONS, ids=_ACT_IDS)
def test_activation_derivative_matches_torch_autograd(name, function, alpha, beta, tfn):
    torch, F = _torch()
    x = _act_points(2)
    got = ref.activation_derivative(x, function, alpha, beta)
    t = _t(torch, x, grad=True)
    tfn(t, torch, F).sum().backward()
    if name in TORCH_EXACT_GRAD:
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-6, atol=1e-13)
        t = _t(torch, x, grad=True)
        TORCH_EXACT_GRAD[name](t, torch, F).sum().backward()
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-11, atol=1e-13)


# Points where the derivative has a kink or jump; torch's subgradient convention there.
BOUNDARY_POINTS = [
    ("relu", [0.0]),
    ("leaky_relu", [0.0]),
    ("clamp", [-0.5, 0.7]),
    ("relu6", [0.0, 6.0]),
    ("hardsigmoid", [-3.0, 3.0]),
    ("elu", [0.0]),
    ("selu", [0.0]),
    ("celu", [0.0]),
    ("threshold", [0.2]),
    ("softshrink", [-0.5, 0.5]),
    ("hardswish", [-3.0, 3.0]),
    ("abs", [0.0]),
]


@pytest.mark.parametrize("name,points", BOUNDARY_POINTS, ids=[b[0] for b in BOUNDARY_POINTS])
def test_boundary_subgradients_follow_torch(name, points):
    torch, F = _torch()
    _, function, alpha, beta, tfn = _ACT_BY_NAME[name]
    t = _t(torch, points, grad=True)
    tfn(t, torch, F).sum().backward()
    got = ref.activation_derivative(np.array(points), function, alpha, beta)
    # torch's CELU gradient at 0 is computed with a float32 constant (1.00000002 for alpha 1.4)
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-7, atol=0)
    if function in ref.FROM_OUTPUT_FUNCTIONS:
        y = ref.apply_activation(np.array(points), function, alpha, beta)
        np.testing.assert_array_equal(
            ref.activation_derivative_from_output(y, function, alpha, beta), got)


@pytest.mark.parametrize("function,torch_fn", [(11, "softmax"), (21, "log_softmax")])
def test_softmax_forward_and_backward_match_torch(function, torch_fn):
    torch, F = _torch()
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (2, 5, 3, 4))
    x[0, :, 0, 0] += 800.0  # must not overflow
    dy = rng.normal(size=x.shape)
    for axis in (1, 3):
        t = _t(torch, x, grad=True)
        out = getattr(F, torch_fn)(t, dim=axis)
        out.backward(_t(torch, dy))
        y = ref.apply_activation(x, function, axis=axis)
        np.testing.assert_allclose(y, out.detach().numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(
            ref.activation_backward_from_output(y, dy, function, axis=axis),
            t.grad.numpy(), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(ref.activation_backward(x, dy, function, axis=axis),
                                   t.grad.numpy(), rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------------------
# Activations without torch
# ---------------------------------------------------------------------------

def test_activation_hand_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    act = ref.apply_activation
    np.testing.assert_array_equal(act(x, 0), x)
    np.testing.assert_array_equal(act(x, 1), [0, 0, 0, 0.5, 2])
    np.testing.assert_array_equal(act(x, 2, 0.25), [-0.5, -0.125, 0, 0.5, 2])
    np.testing.assert_array_equal(act(x, 6), [2, 0.5, 0, 0.5, 2])
    np.testing.assert_array_equal(act(x, 7, 3.0), 3 * x)
    np.testing.assert_array_equal(act(x, 8, -1.0, 1.0), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_array_equal(act(x, 15, 0.25, 0.5), [0, 0.375, 0.5, 0.625, 1])
    np.testing.assert_array_equal(act(x, 19, 0.5, 1.0), [-1, -0.25, 0, 0.5, 1])
    np.testing.assert_array_equal(act(x, 20, 2.0, 1.0), [-3, 0, 1, 2, 5])
    # Threshold: x <= alpha -> beta (equality included)
    np.testing.assert_array_equal(act(x, 28, 0.5, 9.0), [9, 9, 9, 9, 2])
    # HardShrink keeps x at |x| == |alpha| (BNNS's "abs(x) < abs(alpha) ? 0 : x")
    np.testing.assert_array_equal(act(x, 25, 0.5), [-2, -0.5, 0, 0.5, 2])
    np.testing.assert_array_equal(act(x, 25, -0.6), [-2, 0, 0, 0, 2])
    # SoftShrink with negative alpha uses |alpha|
    np.testing.assert_array_equal(act(x, 26, -0.5), [-1.5, 0, 0, 0, 1.5])
    np.testing.assert_array_equal(act(x, 32), [0, 0, 0, 0.5, 2])
    np.testing.assert_allclose(act(x, 30), x * np.clip(x + 3, 0, 6) / 6, rtol=1e-15)
    np.testing.assert_allclose(act(x, 23)[3:], 1.0507009873554804934 * x[3:], rtol=1e-15)
    np.testing.assert_allclose(act(np.array([-1.0]), 23),
                               [1.0507009873554805 * 1.6732632423543772 * (math.exp(-1) - 1)],
                               rtol=1e-15)
    np.testing.assert_allclose(act(x, 33), [math.erf(v) for v in x], rtol=1e-15)
    np.testing.assert_allclose(act(x, 5, 2.0, 0.5), 2 * np.tanh(0.5 * x), rtol=1e-15)


def test_activation_numerical_stability():
    big = np.array([-1000.0, -40.0, 40.0, 1000.0])
    sig = ref.apply_activation(big, 3)
    sp = ref.apply_activation(big, 16, 0.5, 2.0)
    ls = ref.apply_activation(big, 22)
    elu = ref.apply_activation(big, 18, 1.0)
    np.testing.assert_allclose(sig, [0.0, math.exp(-40) / (1 + math.exp(-40)),
                                     1 / (1 + math.exp(-40)), 1.0], rtol=1e-15)
    np.testing.assert_allclose(sp, [0.0, 0.5 * math.log1p(math.exp(-80)),
                                    40.0 + 0.5 * math.log1p(math.exp(-80)), 1000.0], rtol=1e-15)
    np.testing.assert_allclose(ls, [-1000.0, -40.0 - math.log1p(math.exp(-40)),
                                    -math.log1p(math.exp(-40)), 0.0], rtol=1e-15)
    np.testing.assert_allclose(elu, [-1.0, math.expm1(-40), 40.0, 1000.0], rtol=1e-15)


def test_activation_returns_float64_for_other_dtypes():
    x32 = np.linspace(-3, 3, 13, dtype=np.float32)
    got = ref.apply_activation(x32, 3)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ref.apply_activation(x32.astype(np.float64), 3))


@pytest.mark.parametrize("function", [9, 10, 13, 14, 29])
def test_unsupported_functions_raise_not_implemented(function):
    x = np.zeros(3)
    with pytest.raises(NotImplementedError):
        ref.apply_activation(x, function)
    with pytest.raises(NotImplementedError):
        ref.activation_derivative(x, function)
    with pytest.raises(NotImplementedError):
        ref.activation_derivative_from_output(x, function)


@pytest.mark.parametrize("function", [-1, 36, 1.0, True])
def test_unknown_function_raises_value_error(function):
    with pytest.raises(ValueError):
        ref.apply_activation(np.zeros(3), function)


def test_celu_alpha_zero_rejected():
    with pytest.raises(ValueError):
        ref.apply_activation(np.zeros(2), 24, 0.0)


# (function, alpha, beta) cases that activation_derivative_from_output must handle exactly
FROM_Y_CASES = [
    (0, 0, 0), (1, 0, 0), (2, 0.1, 0), (2, 0.0, 0), (3, 0, 0), (4, 0, 0), (5, 1.7, 0.6),
    (5, -0.8, 1.3), (5, 0.0, 2.0), (7, -2.5, 0), (8, -0.5, 0.7), (8, 1.0, -1.0),
    (15, 1 / 6, 0.5), (15, -0.3, 0.2), (16, 1.0, 1.0), (16, 1 / 1.5, 1.5), (16, -0.7, 0.9),
    (17, 0, 0), (18, 0.8, 0), (18, 0.0, 0), (19, 0.2, 0.9), (19, 0.2, -0.3), (19, 0.0, 0.5),
    (20, 1.3, -0.4), (22, 0, 0), (23, 0, 0), (24, 1.4, 0), (24, -0.7, 0), (25, 0.5, 0),
    (25, 0.0, 0), (26, -0.3, 0), (26, 0.0, 0), (28, 0.2, -1.5), (28, -0.2, 1.5), (32, 0, 0),
]


@pytest.mark.parametrize("function,alpha,beta", FROM_Y_CASES)
def test_derivative_from_output_equals_derivative_from_input(function, alpha, beta):
    x = _act_points(4, extremes=False)  # moderate values: tanh/sigmoid not saturated
    y = ref.apply_activation(x, function, alpha, beta)
    from_y = ref.activation_derivative_from_output(y, function, alpha, beta)
    from_x = ref.activation_derivative(x, function, alpha, beta)
    np.testing.assert_allclose(from_y, from_x, rtol=1e-9, atol=1e-12)
    # the random points must cover both sides of any kink for the check to mean something
    degenerate = (function == 8 and alpha >= beta) or (function in (25, 26) and alpha == 0)
    if degenerate:  # constant derivative: 0 for an empty clamp range, 1 for a zero shrink
        assert len(np.unique(from_x)) == 1
    elif function not in (0, 3, 4, 5, 7, 16, 17, 20, 22):
        assert len(np.unique(np.round(from_x, 12))) > 1


def test_derivative_from_output_at_boundaries():
    d = ref.activation_derivative_from_output
    np.testing.assert_array_equal(d(np.array([0.0, 1e-300, 3.0]), 1), [0, 1, 1])  # ReLU'(0) = 0
    np.testing.assert_array_equal(d(np.array([0.0, 2.0]), 2, 0.25), [0.25, 1])
    np.testing.assert_array_equal(d(np.array([-0.5, 0.0, 0.7]), 8, -0.5, 0.7), [0, 1, 0])
    np.testing.assert_array_equal(d(np.array([0.0, 6.0, 3.0]), 32), [0, 0, 1])
    np.testing.assert_array_equal(d(np.array([0.0, 0.5, 1.0]), 15, 0.25, 0.5), [0, 0.25, 0])
    # Threshold y == beta is the dead branch even when beta > alpha (documented choice)
    np.testing.assert_array_equal(d(np.array([1.5, 1.6, 0.5]), 28, 0.2, 1.5), [0, 1, 1])
    np.testing.assert_array_equal(d(np.array([0.0, 0.9, 0.5, -0.1]), 19, 0.2, 0.9),
                                  [0.2, 0, 1, 0.2])


@pytest.mark.parametrize("function,alpha,beta", [
    (6, 0, 0), (12, SQRT_2_OVER_PI, 0.044715), (27, 0, 0), (30, 0, 0), (31, 0, 0), (33, 0, 0),
    (34, 0, 0), (35, 0, 0), (2, -0.1, 0), (18, -0.5, 0), (19, -0.2, 1.0), (11, 0, 0), (21, 0, 0)])
def test_derivative_from_output_rejects_non_invertible(function, alpha, beta):
    with pytest.raises(ValueError, match="pre-activation|not elementwise"):
        ref.activation_derivative_from_output(np.zeros(3), function, alpha, beta)


# ---------------------------------------------------------------------------
# conv2d / conv_transpose2d forward: hand values and identities (no torch)
# ---------------------------------------------------------------------------

def test_conv2d_hand_value_no_flip():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])  # out = x[i, j] - x[i+1, j+1]
    np.testing.assert_array_equal(ref.conv2d(x, w), np.full((1, 1, 2, 2), -4.0))
    w2 = np.array([[[[0.0, 1.0], [0.0, 0.0]]]])  # picks x[i, j+1]: a flip would pick x[i+1, j]
    np.testing.assert_array_equal(ref.conv2d(x, w2)[0, 0], [[1, 2], [4, 5]])
    # stride 2, dilation 2, padding (left=1, right=0, top=0, bottom=1), bias 10
    x5 = np.arange(25.0).reshape(1, 1, 5, 5)
    out = ref.conv2d(x5, np.ones((1, 1, 2, 2)), bias=[10.0], stride=2, dilation=2,
                     padding=(1, 0, 0, 1))
    # padded column -1 is zero; taps at (r, c-1), (r, c+1), (r+2, c-1), (r+2, c+1)
    xp = np.pad(x5[0, 0], ((0, 1), (1, 0)))
    want = [[10 + xp[r, c] + xp[r, c + 2] + xp[r + 2, c] + xp[r + 2, c + 2]
             for c in (0, 2)] for r in (0, 2)]
    np.testing.assert_array_equal(out[0, 0], want)


def test_conv_transpose2d_apple_example():
    # 2x2 input of ones, 3x3 kernel of ones, stride 1, no padding -> 4x4
    out = ref.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)))
    np.testing.assert_array_equal(out[0, 0], [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2],
                                              [1, 2, 2, 1]])


def test_conv_transpose2d_hand_value_no_flip():
    x = np.array([[[[1.0, 2.0]]]])
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    out = ref.conv_transpose2d(x, w, stride=2)
    np.testing.assert_array_equal(out[0, 0], [[1, 2, 2, 4], [3, 4, 6, 8]])
    # padding (left=1, right=0, top=0, bottom=1) crops the first column and the last row
    out = ref.conv_transpose2d(x, w, stride=2, padding=(1, 0, 0, 1))
    np.testing.assert_array_equal(out[0, 0], [[2, 2, 4]])
    # output_padding adds a bottom row and right column that get only the bias
    out = ref.conv_transpose2d(x, w, bias=[0.5], stride=2, output_padding=1)
    np.testing.assert_array_equal(out[0, 0], [[1.5, 2.5, 2.5, 4.5, 0.5], [3.5, 4.5, 6.5, 8.5, 0.5],
                                              [0.5] * 5])


def test_conv2d_output_size_smaller_is_top_left_crop():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 11, 9))
    w = rng.normal(size=(6, 2, 3, 2))
    kw = dict(bias=rng.normal(size=6), stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2),
              groups=2, activation=Act(3, 0.0, 0.0))
    full = ref.conv2d(x, w, **kw)
    # H: (11 + 0 + 1 - 3)//2 + 1 = 5; W: (9 + 1 + 2 - 2*1 - 1)//1 + 1 = 10
    assert full.shape == (2, 6, 5, 10)
    small = ref.conv2d(x, w, output_size=(3, 4), **kw)
    np.testing.assert_array_equal(small, full[:, :, :3, :4])
    np.testing.assert_array_equal(ref.conv2d(x, w, output_size=(5, 10), **kw), full)
    for too_big in [(6, 10), (5, 11)]:
        with pytest.raises(ValueError):
            ref.conv2d(x, w, output_size=too_big, **kw)


def _random_conv_case(rng):
    """Random conv2d arguments (dict) with x and weight, covering groups, depthwise, dilation."""
    kind = rng.integers(0, 3)
    if kind == 0:
        g = 1
    elif kind == 1:
        g = int(rng.integers(2, 4))
    else:
        g = 0  # depthwise
    cin_g = 1 if g == 0 else int(rng.integers(1, 4))
    if g == 0:
        g = int(rng.integers(2, 5))
    cout_g = int(rng.integers(1, 3))
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 4, 2))
    pads = tuple(int(v) for v in rng.integers(0, 4, 4))
    l, r, t, b = pads
    kh_eff, kw_eff = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = max(1, kh_eff - t - b) + int(rng.integers(0, 7))
    w = max(1, kw_eff - l - r) + int(rng.integers(0, 7))
    n = int(rng.integers(1, 4))
    return dict(
        x=rng.normal(size=(n, g * cin_g, h, w)),
        weight=rng.normal(size=(g * cout_g, cin_g, kh, kw)),
        bias=rng.normal(size=g * cout_g) if rng.random() < 0.7 else None,
        stride=(sh, sw), padding=pads, dilation=(dh, dw), groups=g)


def test_conv2d_and_transpose_are_adjoint():
    # <conv2d(x, W), u> == <x, conv_transpose2d(u, W)> with the same weight array
    rng = np.random.default_rng(6)
    for _ in range(20):
        c = _random_conv_case(rng)
        c.pop("bias")
        x, w = c.pop("x"), c.pop("weight")
        y = ref.conv2d(x, w, **c)
        u = rng.normal(size=y.shape)
        xt = ref.conv_transpose2d(u, w, output_size=x.shape[2:], **c)
        assert xt.shape == x.shape
        np.testing.assert_allclose(np.vdot(y, u), np.vdot(x, xt), rtol=1e-11, atol=1e-11)


def test_backward_identities_between_conv_and_transpose():
    # conv2d's input gradient is conv_transpose2d of dy; the transposed layer's input gradient is
    # conv2d of its dy, and both weight gradients are the same tap correlation.
    rng = np.random.default_rng(7)
    for _ in range(12):
        c = _random_conv_case(rng)
        c.pop("bias")
        x, w = c.pop("x"), c.pop("weight")
        y = ref.conv2d(x, w, **c)
        dy = rng.normal(size=y.shape)
        gx, gw, gb = ref.conv2d_backward(x, w, dy, bias=False, **c)
        assert gb is None
        np.testing.assert_allclose(gx, ref.conv_transpose2d(dy, w, output_size=x.shape[2:], **c),
                                   rtol=CONV_RTOL, atol=CONV_ATOL)
        tx, tw, tb = ref.conv_transpose2d_backward(dy, w, x, output_size=x.shape[2:], **c)
        np.testing.assert_allclose(tx, y, rtol=CONV_RTOL, atol=CONV_ATOL)
        np.testing.assert_allclose(tw, gw, rtol=CONV_RTOL, atol=CONV_ATOL)
        np.testing.assert_allclose(tb, x.sum(axis=(0, 2, 3)), rtol=CONV_RTOL, atol=CONV_ATOL)


def test_conv_accepts_float32_and_returns_float64():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    got = ref.conv2d(x, w, padding=1)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ref.conv2d(x.astype(np.float64), w.astype(np.float64),
                                                  padding=1))
    wt = rng.normal(size=(2, 3, 3, 3)).astype(np.float16)
    assert ref.conv_transpose2d(x, wt).dtype == np.float64


def test_conv_argument_errors():
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 3, 3, 3)))  # Cin/groups mismatch
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((3, 2, 3, 3)), groups=2)  # Cout not divisible
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 3, 3)), groups=3)  # Cin not divisible
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 3, 3)), bias=np.zeros(3))
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 7, 3)))  # kernel larger than input
    with pytest.raises(ValueError):
        ref.conv2d(x, np.zeros((2, 4, 3, 3)), stride=0)
    with pytest.raises(ValueError):
        ref.conv2d(x[0], np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError):
        ref.conv_transpose2d(x, np.zeros((3, 2, 3, 3)))  # weight must be (Cin, Cout/g, ...)
    with pytest.raises(ValueError):
        ref.conv_transpose2d(x, np.zeros((4, 2, 3, 3)), padding=1, output_size=(4, 4))  # < 5
    with pytest.raises(ValueError):
        ref.conv_transpose2d(x, np.zeros((4, 2, 3, 3)), output_padding=1, output_size=(9, 9))
    with pytest.raises(ValueError):
        ref.conv2d(x.astype(complex), np.zeros((2, 4, 3, 3)))
    w = np.zeros((2, 4, 3, 3))
    with pytest.raises(ValueError, match="output"):
        ref.conv2d_backward(x, w, np.zeros((1, 2, 3, 3)), activation=Act(1, 0, 0))
    with pytest.raises(ValueError):
        ref.conv2d_backward(x, w, np.zeros((1, 2, 4, 3)))  # larger than the max output
    with pytest.raises(ValueError):
        ref.conv_transpose2d_backward(x, np.zeros((4, 2, 3, 3)), np.zeros((1, 2, 6, 7)))


def test_activation_argument_forms():
    class Fn(enum.IntEnum):
        sigmoid = 3

    class WithAxis:
        function = 11
        alpha = 0.0
        beta = 0.0
        axis = 3

    x = np.random.default_rng(9).normal(size=(1, 2, 4, 4))
    w = np.random.default_rng(10).normal(size=(3, 2, 1, 1))
    z = ref.conv2d(x, w)
    np.testing.assert_array_equal(ref.conv2d(x, w, activation=Act(Fn.sigmoid, 0, 0)),
                                  ref.apply_activation(z, 3))
    np.testing.assert_array_equal(ref.conv2d(x, w, activation=3), ref.apply_activation(z, 3))
    np.testing.assert_allclose(ref.conv2d(x, w, activation=Act(11, 0, 0)).sum(axis=1), 1.0,
                               rtol=1e-14)
    np.testing.assert_allclose(ref.conv2d(x, w, activation=WithAxis()).sum(axis=3), 1.0,
                               rtol=1e-14)
    with pytest.raises(ValueError):
        ref.conv2d(x, w, activation="relu")


# ---------------------------------------------------------------------------
# Finite differences (no torch)
# ---------------------------------------------------------------------------

def _numeric_grad(f, a, eps=1e-6):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("activation", [None, Act(3, 0, 0), Act(16, 0.7, 1.3), Act(11, 0, 0)],
                         ids=["identity", "sigmoid", "softplus", "softmax"])
def test_conv2d_backward_finite_differences(activation):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 4, 5, 6))
    w = rng.normal(size=(4, 2, 2, 3)) * 0.5
    b = rng.normal(size=4)
    kw = dict(stride=(2, 1), padding=(1, 0, 2, 1), dilation=(2, 1), groups=2,
              activation=activation)
    y = ref.conv2d(x, w, b, **kw)
    dy = rng.normal(size=y.shape)

    def loss():
        return float(np.vdot(ref.conv2d(x, w, b, **kw), dy))

    gx, gw, gb = ref.conv2d_backward(x, w, dy, output=y, bias=True, **kw)
    np.testing.assert_allclose(gx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, _numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, _numeric_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("activation", [None, Act(4, 0, 0), Act(24, 1.2, 0)],
                         ids=["identity", "tanh", "celu"])
def test_conv_transpose2d_backward_finite_differences(activation):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 4, 3, 4))
    w = rng.normal(size=(4, 3, 3, 2)) * 0.5
    b = rng.normal(size=6)
    kw = dict(stride=(2, 3), padding=(0, 1, 1, 2), output_padding=(1, 0), dilation=(1, 2),
              groups=2, activation=activation)
    y = ref.conv_transpose2d(x, w, b, **kw)
    dy = rng.normal(size=y.shape)

    def loss():
        return float(np.vdot(ref.conv_transpose2d(x, w, b, **kw), dy))

    gx, gw, gb = ref.conv_transpose2d_backward(x, w, dy, output=y, bias=True, **kw)
    np.testing.assert_allclose(gx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, _numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, _numeric_grad(loss, b), rtol=1e-6, atol=1e-7)


def test_linear_hand_values_and_finite_differences():
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]])
    w = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(ref.linear(x, w, [1.0, -1.0]), [[-1.0, 2.0], [-0.5, -1.25]])
    np.testing.assert_array_equal(ref.linear(x[0], w), [-2.0, 3.0])
    np.testing.assert_array_equal(ref.linear(x, w, activation=Act(1, 0, 0)), [[0, 3], [0, 0]])
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 2, 5))
    w = rng.normal(size=(4, 5))
    b = rng.normal(size=4)
    act = Act(18, 0.9, 0)
    y = ref.linear(x, w, b, act)
    dy = rng.normal(size=y.shape)

    def loss():
        return float(np.vdot(ref.linear(x, w, b, act), dy))

    gx, gw, gb = ref.linear_backward(x, w, dy, output=y, activation=act)
    np.testing.assert_allclose(gx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, _numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, _numeric_grad(loss, b), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        ref.linear(x, w.T)


# ---------------------------------------------------------------------------
# Against torch: randomized forward grids and autograd
# ---------------------------------------------------------------------------

def test_conv2d_matches_torch_random_grid():
    torch, F = _torch()
    rng = np.random.default_rng(20)
    seen_groups = set()
    for _ in range(60):
        c = _random_conv_case(rng)
        got = ref.conv2d(**c)
        l, r, t, b = c["padding"]
        xt = F.pad(_t(torch, c["x"]), (l, r, t, b))
        bt = None if c["bias"] is None else _t(torch, c["bias"])
        want = F.conv2d(xt, _t(torch, c["weight"]), bt, stride=c["stride"],
                        dilation=c["dilation"], groups=c["groups"]).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=CONV_RTOL, atol=CONV_ATOL)
        seen_groups.add((c["groups"] > 1, c["weight"].shape[1] == 1))
    assert len(seen_groups) >= 3


def test_conv2d_symmetric_padding_matches_torch_padding_argument():
    torch, F = _torch()
    rng = np.random.default_rng(21)
    x = rng.normal(size=(2, 3, 7, 8))
    w = rng.normal(size=(4, 3, 3, 2))
    got = ref.conv2d(x, w, padding=ref.normalize_padding((2, 1)), stride=(1, 2))
    want = F.conv2d(_t(torch, x), _t(torch, w), padding=(2, 1), stride=(1, 2)).numpy()
    np.testing.assert_allclose(got, want, rtol=CONV_RTOL, atol=CONV_ATOL)


def _random_tconv_case(rng, symmetric):
    c = _random_conv_case(rng)
    x, w = c.pop("x"), c.pop("weight")
    g = c["groups"]
    # for the transposed layer the conv2d weight (Cout, Cin/g, ...) is read as (Cin_T, Cout_T/g, ...)
    n, h, wd = x.shape[0], int(rng.integers(1, 5)), int(rng.integers(1, 5))
    xt = rng.normal(size=(n, w.shape[0], h, wd))
    if c["bias"] is not None:
        c["bias"] = rng.normal(size=w.shape[1] * g)
    kh, kw = w.shape[2:]
    (sh, sw), (dh, dw) = c["stride"], c["dilation"]
    full_h, full_w = (h - 1) * sh + dh * (kh - 1) + 1, (wd - 1) * sw + dw * (kw - 1) + 1
    if symmetric:
        ph = int(rng.integers(0, (full_h - 1) // 2 + 1))
        pw = int(rng.integers(0, (full_w - 1) // 2 + 1))
        c["padding"] = (pw, pw, ph, ph)
        c["output_padding"] = (int(rng.integers(0, max(sh, dh))), int(rng.integers(0, max(sw, dw))))
    else:
        t = int(rng.integers(0, full_h))
        b = int(rng.integers(0, full_h - t))
        l = int(rng.integers(0, full_w))
        r = int(rng.integers(0, full_w - l))
        c["padding"] = (l, r, t, b)
        c["output_padding"] = (int(rng.integers(0, b + 1)), int(rng.integers(0, r + 1)))
    return xt, w, c


def test_conv_transpose2d_matches_torch_symmetric_padding_and_output_padding():
    torch, F = _torch()
    rng = np.random.default_rng(22)
    for _ in range(40):
        x, w, c = _random_tconv_case(rng, symmetric=True)
        got = ref.conv_transpose2d(x, w, **c)
        l, _, t, _ = c["padding"]
        bt = None if c["bias"] is None else _t(torch, c["bias"])
        want = F.conv_transpose2d(_t(torch, x), _t(torch, w), bt, stride=c["stride"],
                                  padding=(t, l), output_padding=c["output_padding"],
                                  groups=c["groups"], dilation=c["dilation"]).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=CONV_RTOL, atol=CONV_ATOL)


def test_conv_transpose2d_matches_torch_asymmetric_padding_by_crop():
    torch, F = _torch()
    rng = np.random.default_rng(23)
    for _ in range(40):
        x, w, c = _random_tconv_case(rng, symmetric=False)
        got = ref.conv_transpose2d(x, w, **c)
        full = F.conv_transpose2d(_t(torch, x), _t(torch, w), None, stride=c["stride"],
                                  groups=c["groups"], dilation=c["dilation"]).numpy()
        l, r, t, b = c["padding"]
        oph, opw = c["output_padding"]
        # output_padding <= bottom/right padding: the crop stays inside the full output
        want = full[:, :, t:full.shape[2] - b + oph, l:full.shape[3] - r + opw]
        if c["bias"] is not None:
            want = want + c["bias"][None, :, None, None]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=CONV_RTOL, atol=CONV_ATOL)


BACKWARD_ACTIVATIONS = ["identity", "relu", "sigmoid", "tanh", "elu", "leaky_relu", "softplus_beta",
                        "selu", "celu", "hardsigmoid", "clamp", "softsign", "logsigmoid",
                        "clamped_leaky_relu", "threshold", "softshrink", "relu6", "softmax"]


def _torch_act(name, torch, F):
    if name == "softmax":
        return Act(11, 0.0, 0.0), (lambda t: F.softmax(t, dim=1))
    _, function, alpha, beta, tfn = _ACT_BY_NAME[name]
    tfn = TORCH_EXACT_GRAD.get(name, tfn)
    return Act(function, alpha, beta), (lambda t: tfn(t, torch, F))


@pytest.mark.parametrize("act_name", BACKWARD_ACTIVATIONS)
def test_conv2d_backward_matches_torch_autograd(act_name):
    torch, F = _torch()
    act, tact = _torch_act(act_name, torch, F)
    rng = np.random.default_rng(30 + BACKWARD_ACTIVATIONS.index(act_name))
    for trial in range(3):
        c = _random_conv_case(rng)
        if c["bias"] is None and trial == 0:
            c["bias"] = rng.normal(size=c["weight"].shape[0])
        x, w, b = c.pop("x"), c.pop("weight"), c.pop("bias")
        y_full = ref.conv2d(x, w, b, activation=act, **c)
        # on the last trial ask for a smaller output than the maximum
        shrink = trial == 2 and y_full.shape[2] > 1
        osz = (y_full.shape[2] - 1, y_full.shape[3]) if shrink else None
        y = ref.conv2d(x, w, b, activation=act, output_size=osz, **c)
        dy = rng.normal(size=y.shape)
        gx, gw, gb = ref.conv2d_backward(x, w, dy, output=y, bias=b is not None, activation=act,
                                         **c)
        xt, wt = _t(torch, x, True), _t(torch, w, True)
        bt = None if b is None else _t(torch, b, True)
        l, r, t, bb = c["padding"]
        z = F.conv2d(F.pad(xt, (l, r, t, bb)), wt, bt, stride=c["stride"],
                     dilation=c["dilation"], groups=c["groups"])
        z = z[:, :, :y.shape[2], :y.shape[3]]
        yt = tact(z)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=CONV_RTOL, atol=CONV_ATOL)
        yt.backward(_t(torch, dy))
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
        if b is None:
            assert gb is None
        else:
            np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act_name", ["identity", "relu", "sigmoid", "tanh", "elu", "selu",
                                      "softplus", "hardsigmoid", "softmax"])
def test_conv_transpose2d_backward_matches_torch_autograd(act_name):
    torch, F = _torch()
    act, tact = _torch_act(act_name, torch, F)
    rng = np.random.default_rng(60 + len(act_name))
    for _ in range(3):
        x, w, c = _random_tconv_case(rng, symmetric=True)
        b = c.pop("bias")
        y = ref.conv_transpose2d(x, w, b, activation=act, **c)
        dy = rng.normal(size=y.shape)
        gx, gw, gb = ref.conv_transpose2d_backward(x, w, dy, output=y, bias=b is not None,
                                                   activation=act, **c)
        xt, wt = _t(torch, x, True), _t(torch, w, True)
        bt = None if b is None else _t(torch, b, True)
        l, _, t, _ = c["padding"]
        yt = tact(F.conv_transpose2d(xt, wt, bt, stride=c["stride"], padding=(t, l),
                                     output_padding=c["output_padding"], groups=c["groups"],
                                     dilation=c["dilation"]))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=CONV_RTOL, atol=CONV_ATOL)
        yt.backward(_t(torch, dy))
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gw, wt.grad.numpy(), rtol=1e-10, atol=1e-10)
        if b is None:
            assert gb is None
        else:
            np.testing.assert_allclose(gb, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("act_name", ["identity", "tanh", "softmax"])
def test_linear_matches_torch(act_name):
    torch, F = _torch()
    act, tact = _torch_act(act_name, torch, F)
    if act_name == "softmax":
        tact = lambda t: F.softmax(t, dim=-1)  # noqa: E731  linear's default axis is the last
    rng = np.random.default_rng(70)
    x = rng.normal(size=(4, 7))
    w = rng.normal(size=(5, 7))
    b = rng.normal(size=5)
    y = ref.linear(x, w, b, act)
    dy = rng.normal(size=y.shape)
    gx, gw, gb = ref.linear_backward(x, w, dy, output=y, activation=act)
    xt, wt, bt = _t(torch, x, True), _t(torch, w, True), _t(torch, b, True)
    yt = tact(F.linear(xt, wt, bt))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    yt.backward(_t(torch, dy))
    for got, want in ((gx, xt.grad), (gw, wt.grad), (gb, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-11)
