"""Accuracy of the fused activations' vector approximations, measured against float64.

Every activation runs, fused after a 1x1 convolution whose only weight is 1 (so its input is
exactly x), over a sweep of float32 inputs: every 4099th bit pattern of each sign (from the
denormals to the largest finite float, log-uniform), a dense linear grid over [-12, 12] where the
functions bend, and +-0, +-inf, NaN, the smallest denormal and the smallest normal. The errors are:

- ULP: |y - f(x)| in units in the last place of f(x) rounded to float32, over the outputs that are
  normal floats (denormal outputs have fewer significant bits: their error is counted absolutely);
- scaled absolute: |y - f(x)| / max(1, |f(x)|) over every finite output (absolute where |f| <= 1,
  relative above: the form of the reference tests' tolerance).

NaN outputs must be exactly where the float64 formula gives NaN, infinite outputs equal to it.
``python tests/test_activation_accuracy.py`` prints the table of docs/activations.md.
"""
import math

import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF
from bnns_py import reference

SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754944e-38, -1.1754944e-38], np.float32)


def sweep():
    patterns = np.arange(0, 0x7F800000, 4099, dtype=np.int64).astype(np.uint32).view(np.float32)
    grid = np.linspace(-12.0, 12.0, 240_001, dtype=np.float32)
    return np.concatenate([patterns, -patterns, grid, SPECIALS])


def fused(activation, x):
    """activation(x) computed by the library's fused epilogue."""
    width = 1024
    height = -(-x.size // width)
    image = np.zeros(height * width, np.float32)
    image[:x.size] = x
    y = bnns_py.conv2d(image.reshape(1, 1, height, width), np.ones((1, 1, 1, 1), np.float32), activation=activation)
    return y.reshape(-1)[:x.size]


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def exact(activation, x):
    """f(x) in float64, from formulas that do not cancel where reference.apply_activation's do."""
    f, a, b = activation.function, activation.alpha, activation.beta
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if f == 12:  # 0.5 x (1 + tanh z) = x sigmoid(2z)
            return x * reference.apply_activation(2.0 * a * (x + b * x ** 3), 3)
        if f == 27:  # x - tanh x cancels in float64 too below ~1e-4: its series there
            series = x ** 3 / 3 - 2 * x ** 5 / 15
            return np.where(np.abs(x) < 1e-4, series, x - np.tanh(x))
        if f == 29:  # PReLUPerChannel: every alpha_c is alpha
            return reference.apply_activation(x, 2, a)
        if f == 34:  # 0.5 x erfc(-x / sqrt 2)
            return np.where(np.isinf(x) & (x < 0), np.nan, 0.5 * x * _erfc(-x / math.sqrt(2.0)))
    return reference.apply_activation(x, f, a, b)


def errors(activation, x):
    """(max ULP error, max scaled absolute error, NaN / inf mismatches) of the fused activation on x."""
    y = fused(activation, x).astype(np.float64)
    want = exact(activation, x)
    mismatched = int(np.count_nonzero(np.isnan(y) != np.isnan(want)))
    finite = np.isfinite(want) & np.isfinite(y)
    infinite = np.isinf(want) | np.isinf(y)
    mismatched += int(np.count_nonzero(infinite & ~np.isnan(want) & ~np.isnan(y) & (y != want)
                                       & (np.abs(want) <= np.finfo(np.float32).max)))
    y, want = y[finite], want[finite]
    absolute = np.abs(y - want) / np.maximum(1.0, np.abs(want))
    with np.errstate(over="ignore"):
        want32 = np.abs(want.astype(np.float32))
    normal = (want32 >= np.finfo(np.float32).tiny) & np.isfinite(want32)
    ulp = np.spacing(want32[normal]).astype(np.float64)
    ulps = np.abs(y - want)[normal] / ulp
    return float(ulps.max(initial=0.0)), float(absolute.max(initial=0.0)), mismatched


# (activation, max ULP, max scaled absolute error): the bounds the measurement must stay within, a little
# above what it gives on AVX-512, AVX2 and 4-lane builds (docs/activations.md has the numbers)
CASES = [
    (AF.rectified_linear, 0, 0.0),
    (AF.leaky_rectified_linear(0.25), 0, 1e-45),
    (AF.abs, 0, 0.0),
    (AF.linear(0.5), 0, 1e-45),
    (AF.clamp((-1.5, 2.0)), 0, 0.0),
    (AF.hard_sigmoid(0.25, 0.5), 1, 1e-7),
    (AF.softsign, 2, 1e-7),
    (AF.clamped_leaky_rectified_linear(0.25, 3.0), 0, 1e-45),
    (AF.linear_with_bias(0.5, 0.25), 1, 1e-7),
    (AF.hard_shrink(0.5), 0, 0.0),
    (AF.soft_shrink(0.5), 1, 1e-7),
    (AF.threshold(0.5, -2.0), 0, 0.0),
    (AF.prelu_per_channel(0.25), 0, 1e-45),
    (AF.hard_swish(), 3, 5e-7),
    (AF.relu6, 0, 0.0),
    (AF.sigmoid, 3, 1e-7),
    (AF.tanh, 3, 2e-7),
    (AF.scaled_tanh(1.5, 0.5), 4, 3e-7),
    (AF.gelu_approximation(0.7978845608028654, 0.044715), 200, 2e-7),  # z rounded: see docs,
    (AF.softplus(1.0, 1.0), 3, 2e-7),
    (AF.softplus(2.0, 0.5), 3, 2e-7),
    (AF.elu(1.0), 2, 1e-7),
    (AF.log_sigmoid, 3, 2e-7),
    (AF.selu, 3, 3e-7),
    (AF.celu(1.5), 3, 2e-7),
    (AF.tanh_shrink, 9, 3e-7),
    (AF.silu, 50, 2e-7),  # denormal sigmoid below x = -87,
    (AF.erf, 3, 2e-7),
    (AF.gelu, math.inf, 1e-6),  # 1 + erf cancels in the negative tail: absolute error there, see below
    (AF.gelu_approximation_sigmoid, 100, 2e-7),  # 1.702 x rounded: see docs,
]


@pytest.fixture(scope="module")
def inputs():
    return sweep()


@pytest.mark.parametrize("activation, max_ulp, max_abs", CASES, ids=[c[0].name for c in CASES])
def test_fused_activation_error_against_float64(activation, max_ulp, max_abs, inputs):
    ulps, absolute, mismatched = errors(activation, inputs)
    assert mismatched == 0, f"{activation}: {mismatched} NaN / inf outputs differ from float64"
    assert ulps <= max_ulp, f"{activation}: {ulps:.3g} ULP > {max_ulp}"
    assert absolute <= max_abs, f"{activation}: absolute error {absolute:.3g} > {max_abs}"


# GELU's ULP error grows as 1 + erf(x / sqrt 2) cancels for x < 0 (its error there is absolute): bounds
# over x >= lower, a little above what AVX-512, AVX2 and 4-lane builds give
GELU_ULP_ABOVE = [(-1.0, 5), (-2.0, 60), (-3.0, 800)]


@pytest.mark.parametrize("lower, max_ulp", GELU_ULP_ABOVE)
def test_gelu_ulp_error_outside_the_negative_tail(lower, max_ulp, inputs):
    x = inputs[~(inputs < lower)]
    ulps, _, _ = errors(AF.gelu, x)
    assert ulps <= max_ulp, f"GELU over x >= {lower}: {ulps:.3g} ULP > {max_ulp}"


def test_sweep_reaches_the_regions_that_matter(inputs):
    finite = inputs[np.isfinite(inputs)]
    assert np.count_nonzero((finite != 0) & (np.abs(finite) < np.finfo(np.float32).tiny)) > 1000  # denormals
    assert np.abs(finite).max() > 3e38 and np.count_nonzero(np.abs(finite) > 90) > 100_000  # saturation
    assert np.count_nonzero(np.abs(finite) < 12) > 500_000
    assert np.isnan(inputs).any() and np.isinf(inputs).sum() == 2


# every activation BNNS differentiates from the output (bp_activation_backward_unsupported_reason)
DIFFERENTIABLE = [
    AF.rectified_linear, AF.leaky_rectified_linear(0.25), AF.sigmoid, AF.tanh, AF.linear(0.5),
    AF.clamp((-1.5, 2.0)), AF.hard_sigmoid(0.25, 0.5), AF.softplus(1.0, 1.0), AF.softplus(2.0, 0.5),
    AF.softsign, AF.elu(1.0), AF.clamped_leaky_rectified_linear(0.25, 3.0), AF.linear_with_bias(0.5, 0.25),
    AF.log_sigmoid, AF.selu, AF.celu(1.5), AF.hard_shrink(0.5), AF.soft_shrink(0.5), AF.tanh_shrink,
    AF.threshold(0.5, -2.0), AF.prelu_per_channel(0.25),
]


@pytest.mark.parametrize("activation", DIFFERENTIABLE, ids=[a.name for a in DIFFERENTIABLE])
def test_fused_activation_derivative_against_float64(activation, no_filter_leaks):
    """The input gradient of a 1x1 convolution whose only weight is 1 is dy f'(x): the vector
    derivative kernels (from the output y), over random x in [-9, 9] (no value falls on a kink)."""
    rng = np.random.default_rng(activation.function)
    x = rng.uniform(-9.0, 9.0, (1, 1, 40, 509)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    with bnns_py.Conv2d(np.ones((1, 1, 1, 1), np.float32), activation=activation) as module:
        y = module(x)
        dx = module.backward(x, y, dy).input
    f = 2 if activation.function == 29 else activation.function  # PReLUPerChannel: every alpha_c is alpha
    expected = reference.activation_backward(x, dy, f, activation.alpha, activation.beta)
    error = np.abs(dx - expected) / np.maximum(1.0, np.abs(expected))
    assert error.max() <= 2e-6, f"{activation}: max error {error.max():.3g} at x = {x.ravel()[error.argmax()]}"


def main():
    x = sweep()
    print("| activation | max error (ULP, normal outputs) | max absolute error (relative above 1) |")
    print("|---|---|---|")
    for activation, _, _ in CASES:
        ulps, absolute, mismatched = errors(activation, x)
        note = "" if mismatched == 0 else f" ({mismatched} NaN/inf mismatches)"
        print(f"| `{activation!r}` | {ulps:.2f} | {absolute:.2g}{note} |")
    for lower, _ in GELU_ULP_ABOVE:
        print(f"| GELU over x >= {lower} | {errors(AF.gelu, x[~(x < lower)])[0]:.2f} | |")


if __name__ == "__main__":
    main()
