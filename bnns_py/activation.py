"""``ActivationFunction``: the Python mirror of Swift's ``BNNS.ActivationFunction``.

Cases without parameters are class attributes (``ActivationFunction.rectified_linear``); cases with
parameters are class methods (``ActivationFunction.leaky_rectified_linear(alpha=0.1)``), as in
Swift. ``bnns_activation`` builds the C ``BNNSActivation`` struct. Activations that C offers but
the Swift enum does not (``relu6``, ``erf``, ``gelu``, ...) are included under their C names.
"""
from ._ffi import ffi


class ActivationFunction:
    """One BNNS activation: the C function value plus its ``alpha``/``beta`` parameters."""

    __slots__ = ("name", "function", "alpha", "beta")

    def __init__(self, function, alpha=0.0, beta=0.0, name=None):
        function = int(function)
        if not 0 <= function <= MAX_FUNCTION:
            raise ValueError(f"BNNSActivationFunction value must be 0..{MAX_FUNCTION}, got {function}")
        object.__setattr__(self, "function", function)
        object.__setattr__(self, "alpha", float(alpha))
        object.__setattr__(self, "beta", float(beta))
        object.__setattr__(self, "name", name or _NAMES.get(function, f"function_{function}"))

    def __setattr__(self, key, value):
        raise AttributeError("ActivationFunction is immutable")

    @property
    def bnns_activation(self):
        """A new C ``BNNSActivation`` (as a cffi ``BNNSActivation *``) for this function."""
        activation = ffi.new("BNNSActivation *")
        self.fill(activation)
        return activation

    def fill(self, c_activation):
        """Write this activation into an existing C ``BNNSActivation``."""
        c_activation.function = self.function
        c_activation.alpha = self.alpha
        c_activation.beta = self.beta

    @property
    def is_identity(self):
        return self.function == 0

    def __eq__(self, other):
        if not isinstance(other, ActivationFunction):
            return NotImplemented
        return (self.function, self.alpha, self.beta) == (other.function, other.alpha, other.beta)

    def __hash__(self):
        return hash((self.function, self.alpha, self.beta))

    def __repr__(self):
        params = _PARAMETERS.get(self.name, ())
        if not params:
            return f"ActivationFunction.{self.name}"
        values = {"alpha": self.alpha, "beta": self.beta}
        shown = ", ".join(f"{p}={values[p]:g}" for p in params)
        return f"ActivationFunction.{self.name}({shown})"

    @classmethod
    def coerce(cls, value):
        """Accept None (identity), a case name such as ``"relu"`` or ``"sigmoid"``, or an instance."""
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
    def leaky_rectified_linear(cls, alpha):
        return cls(2, alpha, name="leaky_rectified_linear")

    @classmethod
    def scaled_tanh(cls, alpha, beta):
        return cls(5, alpha, beta, name="scaled_tanh")

    @classmethod
    def linear(cls, alpha):
        return cls(7, alpha, name="linear")

    @classmethod
    def clamp(cls, bounds):
        """``clamp(bounds=(lower, upper))``: min(max(x, lower), upper)."""
        lower, upper = bounds
        if not float(lower) <= float(upper):
            raise ValueError(f"clamp bounds must satisfy lower <= upper, got {bounds}")
        return cls(8, lower, upper, name="clamp")

    @classmethod
    def gelu_approximation(cls, alpha, beta):
        return cls(12, alpha, beta, name="gelu_approximation")

    @classmethod
    def gelu_approximation2(cls, alpha, beta):
        return cls(30, alpha, beta, name="gelu_approximation2")

    @classmethod
    def gumbel(cls, alpha, beta):
        return cls(13, alpha, beta, name="gumbel")

    @classmethod
    def gumbel_max(cls, alpha, beta):
        return cls(14, alpha, beta, name="gumbel_max")

    @classmethod
    def hard_sigmoid(cls, alpha, beta):
        return cls(15, alpha, beta, name="hard_sigmoid")

    @classmethod
    def softplus(cls, alpha, beta):
        return cls(16, alpha, beta, name="softplus")

    @classmethod
    def elu(cls, alpha):
        return cls(18, alpha, name="elu")

    @classmethod
    def celu(cls, alpha):
        return cls(24, alpha, name="celu")

    @classmethod
    def clamped_leaky_rectified_linear(cls, alpha, beta):
        return cls(19, alpha, beta, name="clamped_leaky_rectified_linear")

    @classmethod
    def linear_with_bias(cls, alpha, beta):
        return cls(20, alpha, beta, name="linear_with_bias")

    @classmethod
    def hard_shrink(cls, alpha):
        return cls(25, alpha, name="hard_shrink")

    @classmethod
    def soft_shrink(cls, alpha):
        return cls(26, alpha, name="soft_shrink")

    @classmethod
    def threshold(cls, alpha, beta):
        return cls(28, alpha, beta, name="threshold")

    @classmethod
    def hard_swish(cls, alpha=0.0, beta=0.0):
        return cls(30, alpha, beta, name="hard_swish")

    # C-only cases
    @classmethod
    def prelu_per_channel(cls, alpha):
        return cls(29, alpha, name="prelu_per_channel")


MAX_FUNCTION = 35

# Swift cases without parameters, plus C-only ones, by their snake-case names.
_CONSTANT_CASES = {
    "identity": 0, "rectified_linear": 1, "sigmoid": 3, "tanh": 4, "abs": 6, "softmax": 11,
    "softsign": 17, "log_softmax": 21, "log_sigmoid": 22, "selu": 23, "tanh_shrink": 27,
    "silu": 31, "relu6": 32, "erf": 33, "gelu": 34, "gelu_approximation_sigmoid": 35,
}
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
_NAMES = {value: name for name, value in _CONSTANT_CASES.items()}
_NAMES.update({2: "leaky_rectified_linear", 5: "scaled_tanh", 7: "linear", 8: "clamp",
               9: "integer_linear_saturate", 10: "integer_linear_saturate_per_channel",
               12: "gelu_approximation", 13: "gumbel", 14: "gumbel_max", 15: "hard_sigmoid",
               16: "softplus", 18: "elu", 19: "clamped_leaky_rectified_linear",
               20: "linear_with_bias", 24: "celu", 25: "hard_shrink", 26: "soft_shrink",
               28: "threshold", 29: "prelu_per_channel", 30: "hard_swish"})
_ALIASES = {"none": "identity", "relu": "rectified_linear", "logsigmoid": "log_sigmoid",
            "logsoftmax": "log_softmax", "swish": "silu", "hardswish": "hard_swish",
            "leaky_relu": "leaky_rectified_linear", "hardsigmoid": "hard_sigmoid",
            "tanhshrink": "tanh_shrink", "softshrink": "soft_shrink", "hardshrink": "hard_shrink"}

for _name, _value in _CONSTANT_CASES.items():
    setattr(ActivationFunction, _name, ActivationFunction(_value, name=_name))
del _name, _value
