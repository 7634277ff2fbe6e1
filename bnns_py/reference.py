"""Pure-numpy float64 reference implementation of BNNS convolution semantics.

This module defines what the convolution, transposed convolution, fully
connected and activation filters compute, so that tests and users can check
the C backends (Apple's Accelerate/BNNS on macOS and the portable BNNS
implementation elsewhere) against it. It is written separately from the C code
and shares no code with it:

* It imports only numpy and the standard library. Nothing from the rest of
  ``bnns_py`` is used.
* Convolutions loop over kernel taps ``(ky, kx)`` and accumulate one
  ``np.einsum`` of a strided window with one weight slice per tap. The
  transposed convolution is a direct scatter over kernel taps, not a
  convolution of a zero-dilated input. The C backends compute differently
  (the portable one with Winograd transforms, register-tiled direct kernels
  over zero-bordered planes, and GEMMs for 1x1 and fully-connected layers;
  Accelerate in an undocumented way), so the two share neither code nor
  summation order.
* Gradients are written out directly as loops over taps. No autograd is used.
* Every input is converted to float64 and every sum is accumulated in float64.
  Every result is a float64 array. Against float32 BNNS output, compare with a
  float32-sized tolerance, for example ``rtol=1e-4`` plus an ``atol`` scaled by
  ``sqrt(fan_in) * max|x| * max|w|``.

Conventions follow PyTorch (NCHW):

* ``x`` has shape ``(N, C, H, W)``.
* ``conv2d`` weights have shape ``(Cout, Cin/groups, kH, kW)`` and compute a
  cross-correlation (the kernel is not flipped). This is BNNS
  ``ConvolutionWeightsOIHW`` with ``size = {kW, kH, Cin/groups, Cout}``.
* ``conv_transpose2d`` weights have shape ``(Cin, Cout/groups, kH, kW)``, as in
  PyTorch, also with no flip.
* ``padding`` is always ``(left, right, top, bottom)``, the order of BNNS
  ``pad[4]``. Use ``normalize_padding`` to convert an int or a PyTorch-order
  ``(pad_h, pad_w)`` pair.
* ``stride`` and ``dilation`` are an int or an ``(sh, sw)`` pair. Both must be
  >= 1. BNNS silently treats a stride of 0 as 1 and a dilation <= 1 as none;
  the caller must do that mapping before calling this module.
* ``activation`` is ``None`` (identity), a plain ``BNNSActivationFunction``
  number, or any object with the attributes ``function``, ``alpha`` and
  ``beta``. An optional ``axis`` attribute selects the Softmax/LogSoftmax axis.
  The default axis is the channel axis 1 for convolutions and the last axis
  for ``linear``. BNNS's axis choice for a fused softmax is not documented.
  ``alpha`` and ``beta`` are used as float64. BNNS stores them as float32, so
  round them with ``np.float32`` first if you need the two to agree exactly.

Example: checking a backend

>>> import numpy as np
>>> import bnns_py
>>> from bnns_py import reference
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
>>> w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
>>> want = reference.conv2d(x, w, stride=2, padding=1, groups=2)
>>> got = bnns_py.conv2d(x, w, stride=2, padding=1, groups=2)
>>> bnns_py.compare(got, want, rtol=1e-5).ok
True

Semantics this module fixes where Apple's headers are silent:

* ``conv2d`` accepts any output size up to the maximum, as allowed by the
  relaxed size rule ``in + pads >= stride*(out-1) + dilation*(k-1) + 1``. A
  smaller output is the top-left part of the full output, and the unused input
  on the bottom and right is ignored.
* ``conv_transpose2d`` computes
  ``out[n, o, y*sh + ky*dh - top, x*sw + kx*dw - left] += in[n, i, y, x] * w[i, o', ky, kx]``.
  Positions that fall outside the output are dropped. The output size is
  ``(in-1)*stride - pad_before - pad_after + dilation*(k-1) + 1 + output_padding``,
  and the extra ``output_padding`` rows and columns go on the bottom and right.
  An explicit ``output_size`` may be any size that is at least the size with
  ``output_padding=0``. Rows or columns that no input reaches hold only the bias.
  Grouped transposed convolution, and its gradient, are defined here although
  BNNS may reject them.
* A NULL bias is the same as a zero bias (``bias=None``).
* Backward through a non-identity activation uses the forward output ``y``, as
  BNNS does for fused layers. See ``activation_derivative_from_output`` for
  which functions allow this.
"""
import math
import numbers
from typing import Any, Optional, Sequence, Tuple, Union, cast

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
IntPair = Union[int, Sequence[int]]
Pair = Tuple[int, int]
Pads = Tuple[int, int, int, int]
Gradients3 = Tuple[F64, F64, Optional[F64]]

__all__ = [
    "ACTIVATION_NAMES",
    "ELEMENTWISE_FUNCTIONS",
    "FROM_OUTPUT_FUNCTIONS",
    "SELU_ALPHA",
    "SELU_LAMBDA",
    "activation_backward",
    "activation_backward_from_output",
    "activation_derivative",
    "activation_derivative_from_output",
    "apply_activation",
    "conv2d",
    "conv2d_backward",
    "conv2d_output_size",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "conv_transpose2d_output_size",
    "linear",
    "linear_backward",
    "normalize_padding",
    "pair",
]

# ---------------------------------------------------------------------------
# Activation functions
# ---------------------------------------------------------------------------

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

#: Names of the ``BNNSActivationFunction`` values (30 also goes by HardSwish).
ACTIVATION_NAMES = {
    0: "Identity", 1: "RectifiedLinear", 2: "LeakyRectifiedLinear", 3: "Sigmoid",
    4: "Tanh", 5: "ScaledTanh", 6: "Abs", 7: "Linear", 8: "Clamp",
    9: "IntegerLinearSaturate", 10: "IntegerLinearSaturatePerChannel", 11: "Softmax",
    12: "GELUApproximation", 13: "Gumbel", 14: "GumbelMax", 15: "HardSigmoid",
    16: "Softplus", 17: "Softsign", 18: "ELU", 19: "ClampedLeakyRectifiedLinear",
    20: "LinearWithBias", 21: "LogSoftmax", 22: "LogSigmoid", 23: "SELU", 24: "CELU",
    25: "HardShrink", 26: "SoftShrink", 27: "TanhShrink", 28: "Threshold",
    29: "PReLUPerChannel", 30: "GELUApproximation2", 31: "SiLU", 32: "ReLU6",
    33: "Erf", 34: "GELU", 35: "GELUApproximationSigmoid",
}

#: The elementwise functions this module implements.
ELEMENTWISE_FUNCTIONS = frozenset(
    list(range(0, 9)) + [12] + list(range(15, 21)) + list(range(22, 29)) + list(range(30, 36)))
_AXIS_FUNCTIONS = frozenset([11, 21])  # Softmax, LogSoftmax
_UNSUPPORTED = frozenset([9, 10, 13, 14, 29])  # integer, random and per-channel functions

#: Functions whose derivative ``activation_derivative_from_output`` can recover
#: from the output y. Some of them only accept certain parameters, listed in
#: that function's docstring.
FROM_OUTPUT_FUNCTIONS = frozenset(
    [0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 28, 32])
_NEEDS_INPUT = {
    6: "Abs is not invertible from y (y = |x| loses the sign of x)",
    12: "GELUApproximation is not monotonic, so x cannot be recovered from y",
    27: "TanhShrink has no closed-form inverse",
    30: "GELUApproximation2/HardSwish is not monotonic, so x cannot be recovered from y",
    31: "SiLU is not monotonic, so x cannot be recovered from y",
    33: "Erf has no closed-form inverse in numpy (erfinv)",
    34: "GELU is not monotonic, so x cannot be recovered from y",
    35: "GELUApproximationSigmoid is not monotonic, so x cannot be recovered from y",
}

_erf_vectorized = np.vectorize(math.erf, otypes=[np.float64])


def _erf(x: F64) -> F64:
    values: F64 = _erf_vectorized(x)
    return values


def _check_function(function: Any) -> int:
    if isinstance(function, bool) or not isinstance(function, numbers.Integral):
        raise ValueError(f"activation function must be an int, got {function!r}")
    f = int(function)
    if f in _UNSUPPORTED:
        raise NotImplementedError(
            f"activation {f} ({ACTIVATION_NAMES[f]}) is not implemented by the reference "
            "(integer, random or per-channel function)")
    if f not in ELEMENTWISE_FUNCTIONS and f not in _AXIS_FUNCTIONS:
        raise ValueError(f"unknown BNNS activation function {function!r}")
    return f


def _sigmoid(x: F64) -> F64:
    """1/(1+exp(-x)) without overflow, with full relative precision for x << 0."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softmax(x: F64, axis: int) -> F64:
    m: F64 = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    total: F64 = np.sum(e, axis=axis, keepdims=True)
    return e / total


def _log_softmax(x: F64, axis: int) -> F64:
    m: F64 = np.max(x, axis=axis, keepdims=True)
    s = x - m
    total: F64 = np.sum(np.exp(s), axis=axis, keepdims=True)
    return s - np.log(total)


def _celu_alpha(alpha: float) -> float:
    if alpha == 0.0:
        raise ValueError("CELU needs alpha != 0 (it divides by alpha)")
    return alpha


def apply_activation(y: npt.ArrayLike, function: int, alpha: float = 0.0, beta: float = 0.0,
                     axis: int = 1) -> F64:
    """Apply BNNS activation ``function`` to ``y``, elementwise or along ``axis``.

    The formulas are those of the ``BNNSActivationFunction`` table in Apple's
    BNNS headers, with ``alpha`` and ``beta`` as the parameters it names.

    Parameters
    ----------
    y : array_like
        The pre-activation values (real numbers, any shape).
    function : int
        A ``BNNSActivationFunction`` value (``ActivationFunction.function``;
        ``ACTIVATION_NAMES`` lists them).
    alpha, beta : float, optional
        The function's parameters.
    axis : int, optional
        The axis of 11 (Softmax) and 21 (LogSoftmax); unused by the others.

    Returns
    -------
    numpy.ndarray of float64
        A new array of the shape of ``y``.

    Raises
    ------
    NotImplementedError
        For 9 and 10 (integer outputs), 13 and 14 (random) and 29 (per-channel).
    ValueError
        An unknown function value, or parameters the function cannot take.

    Examples
    --------
    >>> from bnns_py.reference import apply_activation
    >>> apply_activation([-2.0, 0.5, 9.0], 8, alpha=-1.0, beta=1.0).tolist()   # 8: Clamp
    [-1.0, 0.5, 1.0]
    """
    f = _check_function(function)
    x = _as_f64(y, "y")
    a = float(alpha)
    b = float(beta)
    with np.errstate(over="ignore", invalid="ignore"):
        if f == 0:
            return x.copy()
        if f == 1:
            return np.where(x < 0, 0.0, x)
        if f == 2:
            return np.where(x < 0, a * x, x)
        if f == 3:
            return _sigmoid(x)
        if f == 4:
            return np.tanh(x)
        if f == 5:
            return a * np.tanh(b * x)
        if f == 6:
            return np.abs(x)
        if f == 7:
            return a * x
        if f == 8:
            return np.minimum(np.maximum(x, a), b)
        if f == 11:
            return _softmax(x, axis)
        if f == 12:
            return 0.5 * x * (1.0 + np.tanh(a * (x + b * x ** 3)))
        if f == 15:
            return np.maximum(0.0, np.minimum(1.0, a * x + b))
        if f == 16:
            return a * np.logaddexp(0.0, b * x)
        if f == 17:
            return x / (1.0 + np.abs(x))
        if f == 18:
            return np.where(x < 0, a * np.expm1(np.minimum(x, 0.0)), x)
        if f == 19:
            return np.where(x < 0, np.minimum(a * x, b), np.minimum(x, b))
        if f == 20:
            return a * x + b
        if f == 21:
            return _log_softmax(x, axis)
        if f == 22:
            return -np.logaddexp(0.0, -x)
        if f == 23:
            return np.where(x < 0, SELU_LAMBDA * SELU_ALPHA * np.expm1(np.minimum(x, 0.0)),
                            SELU_LAMBDA * x)
        if f == 24:
            a = _celu_alpha(a)
            neg = np.where(x < 0, x, 0.0) / a
            return np.where(x < 0, a * np.expm1(neg), x)
        if f == 25:
            return np.where(np.abs(x) < abs(a), 0.0, x)
        if f == 26:
            return np.where(np.abs(x) < abs(a), 0.0, x - np.copysign(a, x))
        if f == 27:
            return x - np.tanh(x)
        if f == 28:
            return np.where(x <= a, b, x)
        if f == 30:
            return x * np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0
        if f == 31:
            return x * _sigmoid(x)
        if f == 32:
            return np.minimum(np.maximum(x, 0.0), 6.0)
        if f == 33:
            return _erf(x)
        if f == 34:
            return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
        if f == 35:
            return x * _sigmoid(1.702 * x)
    raise AssertionError(f)  # pragma: no cover


def activation_derivative(x: npt.ArrayLike, function: int, alpha: float = 0.0, beta: float = 0.0) -> F64:
    """d f(x) / dx for an elementwise BNNS activation, from the input x.

    Where the function has a kink or a jump, this uses the subgradient
    PyTorch's backward uses:

    * ReLU, ReLU6 and Clamp (like ``hardtanh``): the slope is 1 only strictly
      inside the linear region, so ReLU'(0) = 0, ReLU6'(6) = 0 and Clamp' is 0
      at ``alpha`` and at ``beta``.
    * LeakyReLU, ELU, SELU and CELU use the negative branch at 0. That gives
      ``alpha``, ``alpha``, ``lambda*alpha`` and ``1`` respectively.
    * HardSigmoid: the slope is ``alpha`` only strictly inside 0 < alpha*x+beta < 1.
    * HardSwish: 0 for x <= -3, x/3 + 1/2 for -3 < x < 3, and 1 for x >= 3.
    * Abs: sign(x), which is 0 at 0.
    * Threshold: 0 for x <= alpha.
    * SoftShrink: 0 for ``|x| <= |alpha|`` when alpha != 0.
    * ClampedLeakyReLU: for x > 0 the slope is 1 if x < beta, else 0. For
      x <= 0 it is alpha if alpha*x < beta, else 0.
    * HardShrink: 0 for ``|x| < |alpha|`` and 1 otherwise. This follows BNNS's
      forward, which keeps x at ``|x| = |alpha|``. PyTorch's hardshrink instead
      returns 0 there, in both forward and backward.

    Softmax and LogSoftmax are not elementwise (see ``activation_backward``).
    """
    f = _check_function(function)
    if f in _AXIS_FUNCTIONS:
        raise ValueError(f"activation {f} ({ACTIVATION_NAMES[f]}) is not elementwise; "
                         "use activation_backward")
    x = _as_f64(x, "x")
    a = float(alpha)
    b = float(beta)
    one = np.ones_like(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if f == 0:
            return one
        if f == 1:
            return np.where(x > 0, 1.0, 0.0)
        if f == 2:
            return np.where(x > 0, 1.0, a)
        if f == 3:
            s = _sigmoid(x)
            return s * (1.0 - s)
        if f == 4:
            return 1.0 - np.tanh(x) ** 2
        if f == 5:
            return a * b * (1.0 - np.tanh(b * x) ** 2)
        if f == 6:
            return np.sign(x)
        if f == 7:
            return a * one
        if f == 8:
            return np.where((x > a) & (x < b), 1.0, 0.0)
        if f == 12:
            t = np.tanh(a * (x + b * x ** 3))
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * a * (1.0 + 3.0 * b * x * x)
        if f == 15:
            u = a * x + b
            return np.where((u > 0) & (u < 1), a, 0.0)
        if f == 16:
            return a * b * _sigmoid(b * x)
        if f == 17:
            return 1.0 / (1.0 + np.abs(x)) ** 2
        if f == 18:
            return np.where(x > 0, 1.0, a * np.exp(np.minimum(x, 0.0)))
        if f == 19:
            return np.where(x > 0, np.where(x < b, 1.0, 0.0), np.where(a * x < b, a, 0.0))
        if f == 20:
            return a * one
        if f == 22:
            return _sigmoid(-x)
        if f == 23:
            return np.where(x > 0, SELU_LAMBDA, SELU_LAMBDA * SELU_ALPHA * np.exp(np.minimum(x, 0.0)))
        if f == 24:
            a = _celu_alpha(a)
            return np.where(x > 0, 1.0, np.exp(np.where(x > 0, 0.0, x) / a))
        if f == 25:
            return np.where(np.abs(x) < abs(a), 0.0, 1.0)
        if f == 26:
            if a == 0.0:
                return one
            return np.where(np.abs(x) <= abs(a), 0.0, 1.0)
        if f == 27:
            return np.tanh(x) ** 2
        if f == 28:
            return np.where(x <= a, 0.0, 1.0)
        if f == 30:
            return np.where(x <= -3.0, 0.0, np.where(x < 3.0, x / 3.0 + 0.5, 1.0))
        if f == 31:
            s = _sigmoid(x)
            return s * (1.0 + x * (1.0 - s))
        if f == 32:
            return np.where((x > 0) & (x < 6), 1.0, 0.0)
        if f == 33:
            return 2.0 / math.sqrt(math.pi) * np.exp(-x * x)
        if f == 34:
            cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
            pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
            return cdf + x * pdf
        if f == 35:
            s = _sigmoid(1.702 * x)
            return s + 1.702 * x * s * (1.0 - s)
    raise AssertionError(f)  # pragma: no cover


def activation_derivative_from_output(y: npt.ArrayLike, function: int, alpha: float = 0.0,
                                      beta: float = 0.0) -> F64:
    """d f / d(pre-activation), computed from the activation output y = f(x).

    This is the rule BNNS uses in the backward pass of a compute layer fused
    with an activation. The result equals ``activation_derivative(x, ...)``,
    with the same boundary conventions, for every x with f(x) = y. Supported
    functions and conditions:

    * 0 Identity, 1 ReLU, 3 Sigmoid, 4 Tanh, 7 Linear, 8 Clamp, 15 HardSigmoid,
      16 Softplus, 17 Softsign, 20 LinearWithBias, 22 LogSigmoid, 23 SELU,
      25 HardShrink, 26 SoftShrink, 28 Threshold, 32 ReLU6, and 5 ScaledTanh
      (BNNS does not list ScaledTanh, but it is exactly invertible).
    * 2 LeakyReLU and 19 ClampedLeakyReLU need ``alpha >= 0``. BNNS's fused
      list says ``alpha > 0``. ``alpha = 0`` is still exact and is accepted here.
    * 18 ELU needs ``alpha >= 0``. 24 CELU needs ``alpha != 0``.
    * 28 Threshold: when beta > alpha, y == beta could come from either branch.
      It is treated as the dead branch, with derivative 0.

    Raises ValueError for functions that need the pre-activation input (6 Abs,
    12, 27, 30, 31, 33, 34, 35) and for parameters that make f non-invertible.
    The message says so. 11 Softmax and 21 LogSoftmax are not elementwise:
    use ``activation_backward_from_output``.
    """
    f = _check_function(function)
    if f in _AXIS_FUNCTIONS:
        raise ValueError(f"activation {f} ({ACTIVATION_NAMES[f]}) is not elementwise; "
                         "use activation_backward_from_output")
    if f in _NEEDS_INPUT:
        raise ValueError(f"activation {f} ({ACTIVATION_NAMES[f]}) needs the pre-activation "
                         f"input x, not the output y: {_NEEDS_INPUT[f]}")
    y = _as_f64(y, "y")
    a = float(alpha)
    b = float(beta)
    one = np.ones_like(y)

    def not_invertible(cond: str) -> None:
        raise ValueError(f"activation {f} ({ACTIVATION_NAMES[f]}) needs the pre-activation "
                         f"input x when {cond}: it is not invertible from the output y")

    with np.errstate(over="ignore", invalid="ignore"):
        if f == 0:
            return one
        if f == 1:
            return np.where(y > 0, 1.0, 0.0)
        if f == 2:
            if a < 0:
                not_invertible("alpha < 0")
            return np.where(y > 0, 1.0, a)
        if f == 3:
            return y * (1.0 - y)
        if f == 4:
            return 1.0 - y * y
        if f == 5:
            if a == 0.0:
                return np.zeros_like(y)
            return a * b * (1.0 - (y / a) ** 2)
        if f == 7 or f == 20:
            return a * one
        if f == 8:
            return np.where((y > a) & (y < b), 1.0, 0.0)
        if f == 15:
            return np.where((y > 0) & (y < 1), a, 0.0)
        if f == 16:
            if a == 0.0:
                return np.zeros_like(y)
            # sigmoid(beta*x) = 1 - exp(-y/alpha)
            return a * b * -np.expm1(-y / a)
        if f == 17:
            return (1.0 - np.abs(y)) ** 2
        if f == 18:
            if a < 0:
                not_invertible("alpha < 0")
            return np.where(y > 0, 1.0, y + a)
        if f == 19:
            if a < 0:
                not_invertible("alpha < 0")
            return np.where(y == b, 0.0, np.where(y > 0, 1.0, a))
        if f == 22:
            return -np.expm1(y)
        if f == 23:
            return np.where(y > 0, SELU_LAMBDA, y + SELU_LAMBDA * SELU_ALPHA)
        if f == 24:
            a = _celu_alpha(a)
            return np.where(y > 0, 1.0, y / a + 1.0)
        if f == 25 or f == 26:
            if a == 0.0:
                return one
            return np.where(y == 0, 0.0, 1.0)
        if f == 28:
            return np.where((y > a) & (y != b), 1.0, 0.0)
        if f == 32:
            return np.where((y > 0) & (y < 6), 1.0, 0.0)
    raise AssertionError(f)  # pragma: no cover


def activation_backward(x: npt.ArrayLike, grad_output: npt.ArrayLike, function: int, alpha: float = 0.0,
                        beta: float = 0.0, axis: int = 1) -> F64:
    """dL/dx for y = f(x) from the input x and dL/dy. Handles Softmax and LogSoftmax along ``axis``."""
    f = _check_function(function)
    x = _as_f64(x, "x")
    dy = _as_f64(grad_output, "grad_output")
    _same_shape(x, dy, "x", "grad_output")
    if f in _AXIS_FUNCTIONS:
        return activation_backward_from_output(apply_activation(x, f, alpha, beta, axis=axis),
                                               dy, f, alpha, beta, axis=axis)
    return dy * activation_derivative(x, f, alpha, beta)


def activation_backward_from_output(y: npt.ArrayLike, grad_output: npt.ArrayLike, function: int,
                                    alpha: float = 0.0, beta: float = 0.0, axis: int = 1) -> F64:
    """dL/dx for y = f(x) from the output y and dL/dy (the BNNS fused-backward rule).

    Elementwise functions give ``dy * activation_derivative_from_output(y)``.
    Softmax along ``axis`` gives ``y * (dy - sum(dy*y))``. LogSoftmax gives
    ``dy - exp(y) * sum(dy)``.
    """
    f = _check_function(function)
    y = _as_f64(y, "y")
    dy = _as_f64(grad_output, "grad_output")
    _same_shape(y, dy, "output", "grad_output")
    if f == 11:
        weighted: F64 = np.sum(dy * y, axis=axis, keepdims=True)
        return y * (dy - weighted)
    if f == 21:
        total: F64 = np.sum(dy, axis=axis, keepdims=True)
        return dy - np.exp(y) * total
    return dy * activation_derivative_from_output(y, f, alpha, beta)


def _resolve_activation(activation: Any, default_axis: int) -> Tuple[int, float, float, int]:
    """(function, alpha, beta, axis) for None, an int, or an object with function/alpha/beta."""
    if activation is None:
        return 0, 0.0, 0.0, default_axis
    if isinstance(activation, numbers.Integral) and not isinstance(activation, bool):
        return _check_function(activation), 0.0, 0.0, default_axis
    try:
        function = activation.function
    except AttributeError:
        raise ValueError("activation must be None, an int, or an object with attributes "
                         f"function, alpha and beta; got {activation!r}") from None
    f = _check_function(function)
    alpha = float(getattr(activation, "alpha", 0.0))
    beta = float(getattr(activation, "beta", 0.0))
    axis = getattr(activation, "axis", None)
    return f, alpha, beta, default_axis if axis is None else int(axis)


def _activate(z: F64, activation: Any, default_axis: int) -> F64:
    f, a, b, axis = _resolve_activation(activation, default_axis)
    if f == 0:
        return z
    return apply_activation(z, f, a, b, axis=axis)


def _pre_activation_grad(grad_output: F64, output: Optional[npt.ArrayLike], activation: Any,
                         default_axis: int) -> F64:
    """dL/dz for z = pre-activation, from dL/dy and the forward output y."""
    f, a, b, axis = _resolve_activation(activation, default_axis)
    if f == 0:
        return grad_output
    if output is None:
        raise ValueError(f"output (the forward result y) is required for the backward pass "
                         f"through activation {f} ({ACTIVATION_NAMES[f]}); BNNS differentiates "
                         "fused activations from y")
    y = _as_f64(output, "output")
    _same_shape(y, grad_output, "output", "grad_output")
    return activation_backward_from_output(y, grad_output, f, a, b, axis=axis)


# ---------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------

def _as_f64(a: npt.ArrayLike, name: str) -> F64:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64)


def _same_shape(a: F64, b: F64, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} has shape {a.shape} but {nb} has shape {b.shape}")


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {v!r}")
    return int(v)


def pair(v: IntPair, name: str = "value") -> Pair:
    """``v`` as an ``(h, w)`` tuple of ints.

    Parameters
    ----------
    v : int or pair of int
        An int gives ``(v, v)``; a 2-sequence is kept as is.
    name : str, optional
        The argument's name, for error messages.

    Returns
    -------
    tuple of (int, int)

    Raises
    ------
    ValueError
        ``v`` is neither an int nor a pair of ints.

    Examples
    --------
    >>> from bnns_py.reference import pair
    >>> pair(3), pair((1, 2))
    ((3, 3), (1, 2))
    """
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return (int(v), int(v))
    try:
        items = tuple(cast(Sequence[int], v))
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (_int(items[0], name), _int(items[1], name))


def _positive_pair(v: IntPair, name: str) -> Pair:
    p = pair(v, name)
    if p[0] < 1 or p[1] < 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return p


def normalize_padding(p: IntPair) -> Pads:
    """Padding as ``(left, right, top, bottom)``, the order of BNNS's ``pad[4]``.

    Parameters
    ----------
    p : int, (pad_h, pad_w) or (left, right, top, bottom)
        An int pads all four sides; a PyTorch-order pair ``(pad_h, pad_w)``
        becomes ``(pad_w, pad_w, pad_h, pad_h)``; a 4-tuple is kept.

    Returns
    -------
    tuple of 4 int

    Raises
    ------
    ValueError
        Another form, a non-integer or a negative value.

    Examples
    --------
    >>> from bnns_py.reference import normalize_padding
    >>> normalize_padding(1), normalize_padding((2, 1))
    ((1, 1, 1, 1), (1, 1, 2, 2))
    """
    if isinstance(p, numbers.Integral) and not isinstance(p, bool):
        out = (int(p),) * 4
    else:
        try:
            items = tuple(cast(Sequence[int], p))
        except TypeError:
            raise ValueError(f"padding must be an int, (pad_h, pad_w) or "
                             f"(left, right, top, bottom), got {p!r}") from None
        if len(items) == 2:
            ph, pw = (_int(v, "padding") for v in items)
            out = (pw, pw, ph, ph)
        elif len(items) == 4:
            left, right, top, bottom = (_int(v, "padding") for v in items)
            out = (left, right, top, bottom)
        else:
            raise ValueError(f"padding must be an int, (pad_h, pad_w) or "
                             f"(left, right, top, bottom), got {p!r}")
    if min(out) < 0:
        raise ValueError(f"padding must be non-negative, got {p!r}")
    return out


def conv2d_output_size(in_size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                       dilation: int) -> int:
    """Largest convolution output along one axis.

    ``(in + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1``:
    the formula only. It is <= 0 when the dilated kernel does not fit in the
    padded input, a case ``conv2d`` rejects.

    Examples
    --------
    >>> from bnns_py.reference import conv2d_output_size
    >>> conv2d_output_size(32, 3, 2, 1, 1, 1)
    16
    """
    return (in_size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose2d_output_size(in_size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                                 dilation: int, output_padding: int = 0) -> int:
    """Transposed-convolution output along one axis.

    ``(in - 1) * stride - pad_before - pad_after + dilation * (kernel - 1) + 1 + output_padding``.

    Examples
    --------
    >>> from bnns_py.reference import conv_transpose2d_output_size
    >>> conv_transpose2d_output_size(8, 4, 2, 1, 1, 1)
    16
    """
    return (in_size - 1) * stride - pad_before - pad_after + dilation * (kernel - 1) + 1 \
        + output_padding


def _check_conv_operands(x: F64, weight: F64, groups: int,
                         transposed: bool) -> Tuple[int, int, int, int, int, int, int, int]:
    """(N, Cin, H, W, Cout, kH, kW, groups) after checking the shapes."""
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D, got shape {weight.shape}")
    g = _int(groups, "groups")
    if g < 1:
        raise ValueError(f"groups must be >= 1, got {groups!r}")
    n, cin, h, w = x.shape
    if cin % g:
        raise ValueError(f"input channels {cin} are not divisible by groups={g}")
    if transposed:
        if weight.shape[0] != cin:
            raise ValueError(f"transposed weight must have shape (Cin={cin}, Cout/groups, kH, kW), "
                             f"got {weight.shape}")
        cout = weight.shape[1] * g
    else:
        cout = weight.shape[0]
        if cout % g:
            raise ValueError(f"output channels {cout} are not divisible by groups={g}")
        if weight.shape[1] != cin // g:
            raise ValueError(f"weight must have shape (Cout, Cin/groups={cin // g}, kH, kW), "
                             f"got {weight.shape}")
    kh, kw = weight.shape[2], weight.shape[3]
    if min(n, cin, h, w, cout, kh, kw) < 1:
        raise ValueError(f"empty dimension in x {x.shape} or weight {weight.shape}")
    return n, cin, h, w, cout, kh, kw, g


def _bias_vector(bias: Optional[npt.ArrayLike], cout: int) -> Optional[F64]:
    if bias is None:
        return None
    b = _as_f64(bias, "bias")
    if b.shape != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {b.shape}")
    return b


def _conv_out_hw(h: int, w: int, kh: int, kw: int, stride: Pair, pads: Pads, dilation: Pair,
                 output_size: Optional[IntPair]) -> Pair:
    left, right, top, bottom = pads
    max_h = conv2d_output_size(h, kh, stride[0], top, bottom, dilation[0])
    max_w = conv2d_output_size(w, kw, stride[1], left, right, dilation[1])
    if max_h < 1 or max_w < 1:
        raise ValueError(f"dilated kernel ({kh}, {kw}) with dilation {dilation} does not fit in "
                         f"the padded input ({h + top + bottom}, {w + left + right})")
    if output_size is None:
        return max_h, max_w
    oh, ow = _positive_pair(output_size, "output_size")
    if oh > max_h or ow > max_w:
        raise ValueError(f"output_size {(oh, ow)} exceeds the largest output {(max_h, max_w)} "
                         "(need in + pads >= stride*(out-1) + dilation*(k-1) + 1)")
    return oh, ow


def _tconv_out_hw(h: int, w: int, kh: int, kw: int, stride: Pair, pads: Pads, dilation: Pair,
                  output_padding: IntPair, output_size: Optional[IntPair]) -> Pair:
    left, right, top, bottom = pads
    oph, opw = pair(output_padding, "output_padding")
    if oph < 0 or opw < 0:
        raise ValueError(f"output_padding must be non-negative, got {output_padding!r}")
    base_h = conv_transpose2d_output_size(h, kh, stride[0], top, bottom, dilation[0])
    base_w = conv_transpose2d_output_size(w, kw, stride[1], left, right, dilation[1])
    if output_size is None:
        oh, ow = base_h + oph, base_w + opw
    else:
        oh, ow = _positive_pair(output_size, "output_size")
        if oh < base_h or ow < base_w:
            raise ValueError(f"output_size {(oh, ow)} is smaller than the transposed-convolution "
                             f"size {(base_h, base_w)} with output_padding 0")
        if (oph, opw) != (0, 0) and (oh - base_h, ow - base_w) != (oph, opw):
            raise ValueError(f"output_size {(oh, ow)} disagrees with output_padding "
                             f"{(oph, opw)}")
    if oh < 1 or ow < 1:
        raise ValueError(f"transposed-convolution output would be {(oh, ow)}: "
                         "padding larger than the output")
    return oh, ow


# ---------------------------------------------------------------------------
# Tap loops. Arrays are split by groups: (N, G, C/G, H, W), weights (G, A, B, kH, kW).
# ---------------------------------------------------------------------------

def _window(a: F64, ky: int, kx: int, out_h: int, out_w: int, stride: Pair, dilation: Pair) -> F64:
    """a[..., ky*dh + sh*i, kx*dw + sw*j] for i < out_h, j < out_w."""
    y0 = ky * dilation[0]
    x0 = kx * dilation[1]
    win = a[..., y0:y0 + stride[0] * (out_h - 1) + 1:stride[0],
            x0:x0 + stride[1] * (out_w - 1) + 1:stride[1]]
    assert win.shape[-2:] == (out_h, out_w), (win.shape, out_h, out_w)
    return win


def _gather(src: F64, weight: F64, out_h: int, out_w: int, stride: Pair, dilation: Pair) -> F64:
    """out[n,g,o,i,j] = sum_{c,ky,kx} src[n,g,c, i*sh+ky*dh, j*sw+kx*dw] * weight[g,o,c,ky,kx]."""
    n, groups = src.shape[:2]
    out = np.zeros((n, groups, weight.shape[1], out_h, out_w))
    for ky in range(weight.shape[3]):
        for kx in range(weight.shape[4]):
            win = _window(src, ky, kx, out_h, out_w, stride, dilation)
            out += np.einsum("ngchw,goc->ngohw", win, weight[:, :, :, ky, kx])
    return out


def _scatter(src: F64, weight: F64, buf: F64, stride: Pair, dilation: Pair) -> F64:
    """buf[n,g,d, i*sh+ky*dh, j*sw+kx*dw] += src[n,g,c,i,j] * weight[g,c,d,ky,kx] (in place)."""
    h, w = src.shape[3:]
    for ky in range(weight.shape[3]):
        for kx in range(weight.shape[4]):
            win = _window(buf, ky, kx, h, w, stride, dilation)
            win += np.einsum("ngchw,gcd->ngdhw", src, weight[:, :, :, ky, kx])
    return buf


def _tap_products(small: F64, big: F64, kh: int, kw: int, stride: Pair, dilation: Pair) -> F64:
    """out[g,a,b,ky,kx] = sum_{n,i,j} small[n,g,a,i,j] * big[n,g,b, i*sh+ky*dh, j*sw+kx*dw]."""
    h, w = small.shape[3:]
    out = np.zeros((small.shape[1], small.shape[2], big.shape[2], kh, kw))
    for ky in range(kh):
        for kx in range(kw):
            win = _window(big, ky, kx, h, w, stride, dilation)
            out[:, :, :, ky, kx] = np.einsum("ngahw,ngbhw->gab", small, win)
    return out


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

def conv2d(x: npt.ArrayLike, weight: npt.ArrayLike, bias: Optional[npt.ArrayLike] = None,
           stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
           activation: Any = None, output_size: Optional[IntPair] = None) -> F64:
    """BNNS convolution: a cross-correlation (no kernel flip), in float64.

    ``out[n, o, i, j] = act(bias[o] + sum_{c, ky, kx} w[o, c, ky, kx] *
    xpad[n, g*Cin_g + c, i*sh + ky*dh, j*sw + kx*dw])``, where ``g`` is the
    group of output channel ``o`` and ``Cin_g = Cin / groups``.

    Parameters
    ----------
    x : array_like, shape (N, Cin, H, W)
        The input; any real dtype, converted to float64.
    weight : array_like, shape (Cout, Cin / groups, kH, kW)
        PyTorch's ``Conv2d`` layout, BNNS's OIHW.
    bias : array_like, shape (Cout,), optional
        Added before the activation; None for no bias.
    stride, dilation : int or (int, int), optional
        ``(sh, sw)`` and ``(dh, dw)``, each >= 1.
    padding : int, (pad_h, pad_w) or (left, right, top, bottom), optional
        Zero padding, see :func:`normalize_padding`.
    groups : int, optional
        Channel groups; ``Cin`` and ``Cout`` must be multiples of it.
    activation : None, int or object, optional
        See the module docstring; None is the identity.
    output_size : (int, int), optional
        ``(oH, oW)`` up to the largest size (the default); a smaller output
        is the top-left part of the largest one.

    Returns
    -------
    numpy.ndarray of float64, shape (N, Cout, oH, oW)

    Raises
    ------
    ValueError
        Shapes that do not fit together, bad stride/dilation/padding values
        or an output size above the largest.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import reference
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2))
    >>> reference.conv2d(x, w, stride=2)[0, 0].tolist()
    [[10.0, 18.0], [42.0, 50.0]]
    """
    x = _as_f64(x, "x")
    w = _as_f64(weight, "weight")
    n, cin, h, wd, cout, kh, kw, g = _check_conv_operands(x, w, groups, transposed=False)
    b = _bias_vector(bias, cout)
    st = _positive_pair(stride, "stride")
    dl = _positive_pair(dilation, "dilation")
    pads = normalize_padding(padding)
    left, right, top, bottom = pads
    oh, ow = _conv_out_hw(h, wd, kh, kw, st, pads, dl, output_size)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    xg = xp.reshape(n, g, cin // g, xp.shape[2], xp.shape[3])
    wg = w.reshape(g, cout // g, cin // g, kh, kw)
    out = _gather(xg, wg, oh, ow, st, dl).reshape(n, cout, oh, ow)
    if b is not None:
        out += b[None, :, None, None]
    return _activate(out, activation, 1)


def conv_transpose2d(x: npt.ArrayLike, weight: npt.ArrayLike, bias: Optional[npt.ArrayLike] = None,
                     stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                     dilation: IntPair = 1, groups: int = 1, activation: Any = None,
                     output_size: Optional[IntPair] = None) -> F64:
    """Transposed convolution with PyTorch's weight layout (no kernel flip), in float64.

    ``out[n, o, i*sh + ky*dh - top, j*sw + kx*dw - left] += x[n, c, i, j] * w[c, o - g*Cout_g, ky, kx]``
    for ``o`` in the group ``g`` of ``c``; positions outside the output are
    dropped; then bias and activation. Computed by scattering each kernel tap
    into a zeroed full-size buffer and cropping.

    Parameters
    ----------
    x : array_like, shape (N, Cin, H, W)
        The input.
    weight : array_like, shape (Cin, Cout / groups, kH, kW)
        PyTorch's ``ConvTranspose2d`` layout.
    bias, stride, padding, dilation, groups, activation
        As for :func:`conv2d`; ``padding`` is removed from the output.
    output_padding : int or (int, int), optional
        Extra rows and columns on the bottom and right (PyTorch's
        ``output_padding``); they hold only the bias where no input reaches.
    output_size : (int, int), optional
        An explicit ``(oH, oW)``, at least the size with ``output_padding=0``.

    Returns
    -------
    numpy.ndarray of float64, shape (N, Cout, oH, oW)
        ``oH = (H - 1)*sh - top - bottom + dh*(kH - 1) + 1 + output_padding``
        (likewise ``oW``), or ``output_size``.

    Raises
    ------
    ValueError
        As for :func:`conv2d`.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import reference
    >>> x = np.array([[[[1.0, 2.0]]]])                 # (1, 1, 1, 2)
    >>> w = np.ones((1, 1, 1, 2))
    >>> reference.conv_transpose2d(x, w, stride=2)[0, 0].tolist()
    [[1.0, 1.0, 2.0, 2.0]]
    """
    x = _as_f64(x, "x")
    w = _as_f64(weight, "weight")
    n, cin, h, wd, cout, kh, kw, g = _check_conv_operands(x, w, groups, transposed=True)
    b = _bias_vector(bias, cout)
    st = _positive_pair(stride, "stride")
    dl = _positive_pair(dilation, "dilation")
    pads = normalize_padding(padding)
    left, right, top, bottom = pads
    oh, ow = _tconv_out_hw(h, wd, kh, kw, st, pads, dl, output_padding, output_size)
    full_h = (h - 1) * st[0] + dl[0] * (kh - 1) + 1
    full_w = (wd - 1) * st[1] + dl[1] * (kw - 1) + 1
    buf = np.zeros((n, g, cout // g, max(full_h, top + oh), max(full_w, left + ow)))
    xg = x.reshape(n, g, cin // g, h, wd)
    wg = w.reshape(g, cin // g, cout // g, kh, kw)
    _scatter(xg, wg, buf, st, dl)
    out = buf[:, :, :, top:top + oh, left:left + ow].reshape(n, cout, oh, ow)
    if b is not None:
        out = out + b[None, :, None, None]
    return _activate(np.ascontiguousarray(out), activation, 1)


def _want_bias(bias: Any) -> bool:
    return bias is not None and bias is not False


def conv2d_backward(x: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    output: Optional[npt.ArrayLike] = None, bias: Any = True, stride: IntPair = 1,
                    padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                    activation: Any = None) -> Gradients3:
    """Gradients of :func:`conv2d`: ``(grad_input, grad_weight, grad_bias)``.

    Parameters
    ----------
    x, weight
        The forward pass's input and weight.
    grad_output : array_like, shape (N, Cout, oH, oW)
        dL/dy. ``oH``, ``oW`` may be smaller than the largest output, as in
        ``conv2d(output_size=...)``.
    output : array_like, optional
        The forward result y, needed when ``activation`` is not the
        identity: dL/dy is first turned into dL/d(pre-activation) from y, as
        BNNS does (see :func:`activation_derivative_from_output`).
    bias : bool or None, optional
        Whether to return ``grad_bias`` (False or None: it is None).
    stride, padding, dilation, groups, activation
        As in the forward pass.

    Returns
    -------
    grad_input : numpy.ndarray of float64, shape (N, Cin, H, W)
    grad_weight : numpy.ndarray of float64, shape of ``weight``
        Summed over the batch.
    grad_bias : numpy.ndarray of float64, shape (Cout,), or None

    Raises
    ------
    ValueError
        Mismatched shapes, or a missing ``output`` for a non-identity
        activation, or one that cannot be differentiated from y.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import reference
    >>> x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    >>> dx, dw, db = reference.conv2d_backward(x, w, np.ones((1, 1, 2, 2)))
    >>> dx[0, 0].tolist(), dw[0, 0].tolist(), db.tolist()
    ([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], [[4.0, 4.0], [4.0, 4.0]], [4.0])
    """
    x = _as_f64(x, "x")
    w = _as_f64(weight, "weight")
    n, cin, h, wd, cout, kh, kw, g = _check_conv_operands(x, w, groups, transposed=False)
    dy = _as_f64(grad_output, "grad_output")
    if dy.ndim != 4 or dy.shape[:2] != (n, cout):
        raise ValueError(f"grad_output must have shape ({n}, {cout}, oH, oW), got {dy.shape}")
    st = _positive_pair(stride, "stride")
    dl = _positive_pair(dilation, "dilation")
    pads = normalize_padding(padding)
    left, right, top, bottom = pads
    oh, ow = _conv_out_hw(h, wd, kh, kw, st, pads, dl, dy.shape[2:])
    dz = _pre_activation_grad(dy, output, activation, 1)
    grad_bias = dz.sum(axis=(0, 2, 3)) if _want_bias(bias) else None
    dzg = dz.reshape(n, g, cout // g, oh, ow)
    wg = w.reshape(g, cout // g, cin // g, kh, kw)
    hp, wp = h + top + bottom, wd + left + right
    gbuf = np.zeros((n, g, cin // g, hp, wp))
    _scatter(dzg, wg, gbuf, st, dl)
    grad_input = np.ascontiguousarray(
        gbuf[:, :, :, top:top + h, left:left + wd].reshape(n, cin, h, wd))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))).reshape(n, g, cin // g, hp, wp)
    grad_weight = _tap_products(dzg, xp, kh, kw, st, dl).reshape(cout, cin // g, kh, kw)
    return grad_input, grad_weight, grad_bias


def conv_transpose2d_backward(x: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                              output: Optional[npt.ArrayLike] = None, bias: Any = True,
                              stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                              dilation: IntPair = 1, groups: int = 1, activation: Any = None,
                              output_size: Optional[IntPair] = None) -> Gradients3:
    """Gradients of :func:`conv_transpose2d`: ``(grad_input, grad_weight, grad_bias)``.

    The weight and ``grad_weight`` are in PyTorch's transposed layout
    ``(Cin, Cout / groups, kH, kW)``. ``grad_output`` must have the forward
    output's shape, given by ``output_padding`` or ``output_size``. The other
    parameters and the results are as for :func:`conv2d_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import reference
    >>> x, w = np.array([[[[1.0, 2.0]]]]), np.ones((1, 1, 1, 2))
    >>> dx, dw, db = reference.conv_transpose2d_backward(x, w, np.ones((1, 1, 1, 4)), stride=2)
    >>> dx.tolist(), dw.tolist(), db.tolist()
    ([[[[2.0, 2.0]]]], [[[[3.0, 3.0]]]], [4.0])
    """
    x = _as_f64(x, "x")
    w = _as_f64(weight, "weight")
    n, cin, h, wd, cout, kh, kw, g = _check_conv_operands(x, w, groups, transposed=True)
    dy = _as_f64(grad_output, "grad_output")
    st = _positive_pair(stride, "stride")
    dl = _positive_pair(dilation, "dilation")
    pads = normalize_padding(padding)
    left, right, top, bottom = pads
    oh, ow = _tconv_out_hw(h, wd, kh, kw, st, pads, dl, output_padding, output_size)
    if dy.shape != (n, cout, oh, ow):
        raise ValueError(f"grad_output must have shape {(n, cout, oh, ow)}, got {dy.shape}")
    dz = _pre_activation_grad(dy, output, activation, 1)
    grad_bias = dz.sum(axis=(0, 2, 3)) if _want_bias(bias) else None
    full_h = (h - 1) * st[0] + dl[0] * (kh - 1) + 1
    full_w = (wd - 1) * st[1] + dl[1] * (kw - 1) + 1
    dbuf = np.zeros((n, g, cout // g, max(full_h, top + oh), max(full_w, left + ow)))
    dbuf[:, :, :, top:top + oh, left:left + ow] = dz.reshape(n, g, cout // g, oh, ow)
    wg = w.reshape(g, cin // g, cout // g, kh, kw)
    grad_input = _gather(dbuf, wg, h, wd, st, dl).reshape(n, cin, h, wd)
    xg = x.reshape(n, g, cin // g, h, wd)
    grad_weight = _tap_products(xg, dbuf, kh, kw, st, dl).reshape(cin, cout // g, kh, kw)
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------------------
# Fully connected
# ---------------------------------------------------------------------------

def _check_linear(x: F64, w: F64) -> None:
    if w.ndim != 2:
        raise ValueError(f"weight must have shape (out, in), got {w.shape}")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x must have shape (..., {w.shape[1]}), got {x.shape}")


def linear(x: npt.ArrayLike, weight: npt.ArrayLike, bias: Optional[npt.ArrayLike] = None,
           activation: Any = None) -> F64:
    """Fully-connected layer ``y[..., o] = act(bias[o] + sum_i w[o, i] * x[..., i])``.

    Parameters
    ----------
    x : array_like, shape (..., in)
        Any number of leading (batch) axes.
    weight : array_like, shape (out, in)
        ``torch.nn.Linear``'s layout: BNNS's row-major ``W(o, i)`` at ``i + o*in``.
    bias : array_like, shape (out,), optional
    activation : None, int or object, optional
        As for :func:`conv2d`; Softmax and LogSoftmax act on the last axis
        unless the activation has an ``axis`` attribute.

    Returns
    -------
    numpy.ndarray of float64, shape (..., out)

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import reference
    >>> reference.linear(np.array([1.0, 2.0]), np.array([[1.0, 1.0], [0.0, -1.0]]), [0.5, 0.0]).tolist()
    [3.5, -2.0]
    """
    x = _as_f64(x, "x")
    w = _as_f64(weight, "weight")
    _check_linear(x, w)
    b = _bias_vector(bias, w.shape[0])
    y = np.einsum("...i,oi->...o", x, w)
    if b is not None:
        y = y + b
    return _activate(y, activation, -1)


def linear_backward(x: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    output: Optional[npt.ArrayLike] = None, bias: Any = True,
                    activation: Any = None) -> Gradients3:
    """Gradients of :func:`linear`: ``(grad_input, grad_weight, grad_bias)``.

    ``grad_weight`` ``(out, in)`` and ``grad_bias`` ``(out,)`` are summed over
    all leading (batch) axes; ``grad_bias`` is None when ``bias`` is False or
    None. A non-identity activation needs ``output``, as in
    :func:`conv2d_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import reference
    >>> dx, dw, db = reference.linear_backward(np.array([[1.0, 2.0]]), np.eye(2), np.array([[1.0, 0.0]]))
    >>> dx.tolist(), dw.tolist(), db.tolist()
    ([[1.0, 0.0]], [[1.0, 2.0], [0.0, 0.0]], [1.0, 0.0])
    """
    x = _as_f64(x, "x")
    w = _as_f64(weight, "weight")
    _check_linear(x, w)
    dy = _as_f64(grad_output, "grad_output")
    if dy.shape != x.shape[:-1] + (w.shape[0],):
        raise ValueError(f"grad_output must have shape {x.shape[:-1] + (w.shape[0],)}, "
                         f"got {dy.shape}")
    dz = _pre_activation_grad(dy, output, activation, -1)
    grad_input = np.einsum("...o,oi->...i", dz, w)
    dz2 = dz.reshape(-1, w.shape[0])
    grad_weight = np.einsum("bo,bi->oi", dz2, x.reshape(-1, w.shape[1]))
    grad_bias = dz2.sum(axis=0) if _want_bias(bias) else None
    return grad_input, grad_weight, grad_bias
