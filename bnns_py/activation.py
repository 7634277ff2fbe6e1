"""``ActivationFunction``: the Python mirror of Swift's ``BNNS.ActivationFunction``.

Cases without parameters are class attributes (``ActivationFunction.rectified_linear``); cases with
parameters are class methods (``ActivationFunction.leaky_rectified_linear(alpha=0.1)``), as in
Swift. ``bnns_activation`` builds the C ``BNNSActivation`` struct. Activations that C offers but
the Swift enum does not (``relu6``, ``erf``, ``gelu``, ...) are included under their C names.
"""
from typing import Any, ClassVar, Dict, NoReturn, Optional, Tuple, Union

from ._ffi import ffi
from .enums import ActivationFunctionKind as Kind


class ActivationFunction:
    """One BNNS activation: the C function value plus its ``alpha``/``beta`` parameters.

    Instances are immutable. The cases without parameters are class attributes
    (``ActivationFunction.rectified_linear``, ``.sigmoid``, ``.gelu``, ...), the cases with
    parameters class methods (``ActivationFunction.leaky_rectified_linear(alpha=0.1)``), as in
    Swift's ``BNNS.ActivationFunction``. Wherever bnns-py takes an activation, a name such as
    ``"relu"`` also works (see :meth:`coerce`).

    Parameters
    ----------
    function : int
        The C ``BNNSActivationFunction`` value (see ``bnns_py.enums.ActivationFunctionKind``).
    alpha, beta : float, optional
        The function's parameters (their meaning depends on the function).
    name : str, optional
        The name shown by ``repr``; by default the function's case name.

    Attributes
    ----------
    name : str
        The case name, e.g. ``"rectified_linear"``.
    function : int
        The C function value.
    alpha, beta : float
        The parameters.

    Raises
    ------
    ValueError
        ``function`` is not a BNNS activation function value.

    Examples
    --------
    >>> from bnns_py import ActivationFunction
    >>> ActivationFunction.leaky_rectified_linear(0.1)
    ActivationFunction.leaky_rectified_linear(alpha=0.1)
    >>> ActivationFunction.coerce("relu") == ActivationFunction.rectified_linear
    True
    >>> ActivationFunction.clamp((-1.0, 1.0)).beta
    1.0
    """

    __slots__ = ("name", "function", "alpha", "beta")
    name: str
    function: int
    alpha: float
    beta: float

    # The cases without parameters (set after the class, from _CONSTANT_CASES):
    identity: ClassVar["ActivationFunction"]
    rectified_linear: ClassVar["ActivationFunction"]
    sigmoid: ClassVar["ActivationFunction"]
    tanh: ClassVar["ActivationFunction"]
    abs: ClassVar["ActivationFunction"]
    softmax: ClassVar["ActivationFunction"]
    softsign: ClassVar["ActivationFunction"]
    log_softmax: ClassVar["ActivationFunction"]
    log_sigmoid: ClassVar["ActivationFunction"]
    selu: ClassVar["ActivationFunction"]
    tanh_shrink: ClassVar["ActivationFunction"]
    silu: ClassVar["ActivationFunction"]
    relu6: ClassVar["ActivationFunction"]
    erf: ClassVar["ActivationFunction"]
    gelu: ClassVar["ActivationFunction"]
    gelu_approximation_sigmoid: ClassVar["ActivationFunction"]

    def __init__(self, function: int, alpha: float = 0.0, beta: float = 0.0, name: Optional[str] = None) -> None:
        function = int(function)
        if not 0 <= function <= MAX_FUNCTION:
            raise ValueError(f"BNNSActivationFunction value must be 0..{MAX_FUNCTION}, got {function}")
        object.__setattr__(self, "function", function)
        object.__setattr__(self, "alpha", float(alpha))
        object.__setattr__(self, "beta", float(beta))
        object.__setattr__(self, "name", name or _NAMES.get(function, f"function_{function}"))

    def __setattr__(self, key: str, value: object) -> NoReturn:
        raise AttributeError("ActivationFunction is immutable")

    @property
    def bnns_activation(self) -> Any:
        """A new C ``BNNSActivation`` (as a cffi ``BNNSActivation *``) for this function."""
        activation = ffi.new("BNNSActivation *")
        self.fill(activation)
        return activation

    def fill(self, c_activation: Any) -> None:
        """Write this activation into an existing C ``BNNSActivation``."""
        c_activation.function = self.function
        c_activation.alpha = self.alpha
        c_activation.beta = self.beta

    @property
    def is_identity(self) -> bool:
        """True for the identity function (whatever ``alpha`` and ``beta`` are)."""
        return self.function == Kind.identity

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActivationFunction):
            return NotImplemented
        return (self.function, self.alpha, self.beta) == (other.function, other.alpha, other.beta)

    def __hash__(self) -> int:
        return hash((self.function, self.alpha, self.beta))

    def __repr__(self) -> str:
        params = _PARAMETERS.get(self.name, ())
        if not params:
            return f"ActivationFunction.{self.name}"
        values = {"alpha": self.alpha, "beta": self.beta}
        shown = ", ".join(f"{p}={values[p]:g}" for p in params)
        return f"ActivationFunction.{self.name}({shown})"

    @classmethod
    def coerce(cls, value: Union["ActivationFunction", str, None]) -> "ActivationFunction":
        """The activation an argument names: None, a case name or an instance.

        Parameters
        ----------
        value : ActivationFunction, str or None
            None (the identity), a case name such as ``"rectified_linear"`` or ``"sigmoid"``
            (case-insensitive; PyTorch-style aliases such as ``"relu"``, ``"swish"`` and
            ``"leaky_relu"`` too; ``-`` may stand for ``_``), or an instance (returned as is).

        Returns
        -------
        ActivationFunction

        Raises
        ------
        ValueError
            An unknown name, or the name of a case that takes parameters.
        TypeError
            Any other kind of value.

        Examples
        --------
        >>> from bnns_py import ActivationFunction
        >>> ActivationFunction.coerce(None)
        ActivationFunction.identity
        >>> ActivationFunction.coerce("Swish")
        ActivationFunction.silu
        """
        if value is None:
            return cls.identity
        if isinstance(value, ActivationFunction):
            return value
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            key = _ALIASES.get(key, key)
            case = getattr(cls, key, None)
            if isinstance(case, ActivationFunction):
                return case
            if key in _PARAMETERS:
                raise ValueError(f"activation {value!r} takes parameters {_PARAMETERS[key]}: "
                                 f"pass ActivationFunction.{key}(...)")
            raise ValueError(f"unknown activation {value!r}; known names: {', '.join(sorted(_CONSTANT_CASES))}")
        raise TypeError(f"activation must be None, a name or an ActivationFunction, not {type(value).__name__}")

    # ---- Swift cases with parameters -------------------------------------------------------
    @classmethod
    def leaky_rectified_linear(cls, alpha: float) -> "ActivationFunction":
        return cls(Kind.leaky_rectified_linear, alpha)

    @classmethod
    def scaled_tanh(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.scaled_tanh, alpha, beta)

    @classmethod
    def linear(cls, alpha: float) -> "ActivationFunction":
        return cls(Kind.linear, alpha)

    @classmethod
    def clamp(cls, bounds: Tuple[float, float]) -> "ActivationFunction":
        """``min(max(x, lower), upper)`` for ``bounds=(lower, upper)``; raises ValueError unless
        ``lower <= upper``."""
        lower, upper = bounds
        if not float(lower) <= float(upper):
            raise ValueError(f"clamp bounds must satisfy lower <= upper, got {bounds}")
        return cls(Kind.clamp, lower, upper)

    @classmethod
    def gelu_approximation(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.gelu_approximation, alpha, beta)

    @classmethod
    def gelu_approximation2(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.gelu_approximation2, alpha, beta, name="gelu_approximation2")

    @classmethod
    def gumbel(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.gumbel, alpha, beta)

    @classmethod
    def gumbel_max(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.gumbel_max, alpha, beta)

    @classmethod
    def hard_sigmoid(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.hard_sigmoid, alpha, beta)

    @classmethod
    def softplus(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.softplus, alpha, beta)

    @classmethod
    def elu(cls, alpha: float) -> "ActivationFunction":
        return cls(Kind.elu, alpha)

    @classmethod
    def celu(cls, alpha: float) -> "ActivationFunction":
        return cls(Kind.celu, alpha)

    @classmethod
    def clamped_leaky_rectified_linear(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.clamped_leaky_rectified_linear, alpha, beta)

    @classmethod
    def linear_with_bias(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.linear_with_bias, alpha, beta)

    @classmethod
    def hard_shrink(cls, alpha: float) -> "ActivationFunction":
        return cls(Kind.hard_shrink, alpha)

    @classmethod
    def soft_shrink(cls, alpha: float) -> "ActivationFunction":
        return cls(Kind.soft_shrink, alpha)

    @classmethod
    def threshold(cls, alpha: float, beta: float) -> "ActivationFunction":
        return cls(Kind.threshold, alpha, beta)

    @classmethod
    def hard_swish(cls, alpha: float = 0.0, beta: float = 0.0) -> "ActivationFunction":
        return cls(Kind.hard_swish, alpha, beta)

    # C-only cases
    @classmethod
    def prelu_per_channel(cls, alpha: float) -> "ActivationFunction":
        return cls(Kind.prelu_per_channel, alpha)


MAX_FUNCTION = max(Kind)

# Swift cases without parameters, plus C-only ones, by their snake-case names.
_CONSTANT_CASES = {kind.name: kind for kind in (
    Kind.identity, Kind.rectified_linear, Kind.sigmoid, Kind.tanh, Kind.abs, Kind.softmax, Kind.softsign,
    Kind.log_softmax, Kind.log_sigmoid, Kind.selu, Kind.tanh_shrink, Kind.silu, Kind.relu6, Kind.erf, Kind.gelu,
    Kind.gelu_approximation_sigmoid)}
_PARAMETERS = {
    "leaky_rectified_linear": ("alpha",), "scaled_tanh": ("alpha", "beta"), "linear": ("alpha",),
    "clamp": ("alpha", "beta"), "gelu_approximation": ("alpha", "beta"),
    "gelu_approximation2": ("alpha", "beta"), "gumbel": ("alpha", "beta"),
    "gumbel_max": ("alpha", "beta"), "hard_sigmoid": ("alpha", "beta"),
    "softplus": ("alpha", "beta"), "elu": ("alpha",), "celu": ("alpha",),
    "clamped_leaky_rectified_linear": ("alpha", "beta"), "linear_with_bias": ("alpha", "beta"),
    "hard_shrink": ("alpha",), "soft_shrink": ("alpha",), "threshold": ("alpha", "beta"),
    "hard_swish": ("alpha", "beta"), "prelu_per_channel": ("alpha",),
}
# value -> name; hard_swish names the value it shares with gelu_approximation2
_NAMES = {kind.value: kind.name for kind in Kind}
_NAMES[Kind.hard_swish] = "hard_swish"
_ALIASES = {"none": "identity", "relu": "rectified_linear", "logsigmoid": "log_sigmoid",
            "logsoftmax": "log_softmax", "swish": "silu", "hardswish": "hard_swish",
            "leaky_relu": "leaky_rectified_linear", "hardsigmoid": "hard_sigmoid",
            "tanhshrink": "tanh_shrink", "softshrink": "soft_shrink", "hardshrink": "hard_shrink"}

for _name, _value in _CONSTANT_CASES.items():
    setattr(ActivationFunction, _name, ActivationFunction(_value, name=_name))
del _name, _value


# ---- what the backends can do with a fused activation ------------------------------------------

# Activation functions the portable backend cannot fuse into a layer, and why (for the error
# message): the IntegerLinearSaturate pair produces integer outputs (the portable backend computes
# Float32 only); GumbelMax has no documented meaning for a fused layer output.
PORTABLE_UNSUPPORTED_REASONS: Dict[int, str] = {
    Kind.integer_linear_saturate: "IntegerLinearSaturate produces integer outputs and the portable backend "
                                  "computes float32 outputs only",
    Kind.integer_linear_saturate_per_channel: "IntegerLinearSaturatePerChannel produces integer outputs and the "
                                              "portable backend computes float32 outputs only",
    Kind.gumbel_max: "what GumbelMax writes for a fused layer output (the axis of the max, and whether each value "
                     "gets the max or a sample) is not documented, so the portable backend does not guess",
}
PORTABLE_UNSUPPORTED_ACTIVATIONS = frozenset(PORTABLE_UNSUPPORTED_REASONS)
# Fused activations BNNS differentiates from the forward output y (bnns.h's training list), plus
# PReLUPerChannel: bnns-py's decision, as every alpha_c equals alpha (bnns-py cannot reach
# BNNSGetPointer) it is leaky ReLU, differentiable from y when alpha > 0.
BACKWARD_FROM_OUTPUT = frozenset({
    Kind.identity, Kind.rectified_linear, Kind.leaky_rectified_linear, Kind.sigmoid, Kind.tanh, Kind.linear,
    Kind.clamp, Kind.softmax, Kind.hard_sigmoid, Kind.softplus, Kind.softsign, Kind.elu,
    Kind.clamped_leaky_rectified_linear, Kind.linear_with_bias, Kind.log_softmax, Kind.log_sigmoid, Kind.selu,
    Kind.celu, Kind.hard_shrink, Kind.soft_shrink, Kind.tanh_shrink, Kind.threshold, Kind.prelu_per_channel,
    Kind.gelu_approximation_sigmoid})
# ... of which these are differentiable from y only with a positive slope alpha for x < 0
BACKWARD_NEEDS_POSITIVE_ALPHA = frozenset({Kind.leaky_rectified_linear, Kind.clamped_leaky_rectified_linear,
                                           Kind.prelu_per_channel})
# ... and of which the portable backend cannot invert these from y.
PORTABLE_BACKWARD_UNSUPPORTED = frozenset({Kind.gelu_approximation_sigmoid})


def check_fusable(backend: Any, activation: ActivationFunction) -> None:
    """Raise ``NotImplementedError`` when ``backend`` cannot fuse ``activation`` into a layer."""
    if backend.is_portable and activation.function in PORTABLE_UNSUPPORTED_ACTIVATIONS:
        raise NotImplementedError(f"activation {activation!r} is not supported by the portable backend: "
                                  f"{PORTABLE_UNSUPPORTED_REASONS[activation.function]}")


def check_differentiable(backend: Any, activation: ActivationFunction) -> None:
    """Raise unless ``backend`` can back-propagate through ``activation`` fused into a layer, from
    the layer's output (``ValueError``; ``NotImplementedError`` for what only the portable backend lacks)."""
    function = activation.function
    if function not in BACKWARD_FROM_OUTPUT or (function in BACKWARD_NEEDS_POSITIVE_ALPHA and activation.alpha <= 0):
        raise ValueError(f"BNNS cannot differentiate the fused activation {activation!r} from the "
                         "layer output; use identity here and a separate activation step")
    if backend.is_portable and function in PORTABLE_BACKWARD_UNSUPPORTED:
        raise NotImplementedError(f"the portable backend cannot differentiate {activation!r} yet")
