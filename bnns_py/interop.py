"""PyTorch interop: build bnns-py layers and modules from ``torch.nn`` modules, and back.

The entry points are methods on the classes, which call this module:

- ``ConvolutionLayer.from_torch(module, input_shape, backend=None)`` for ``nn.Conv2d`` (a standard
  layer) and ``nn.ConvTranspose2d`` (a transposed layer); ``FullyConnectedLayer.from_torch(module)``
  for ``nn.Linear`` (``ConvolutionLayer.from_torch`` also accepts one and returns a
  ``FullyConnectedLayer``);
- ``Conv2d.from_torch``, ``ConvTranspose2d.from_torch``, ``Linear.from_torch`` for the numpy modules;
- ``layer.to_torch()`` / ``module.to_torch()``: the equivalent ``torch.nn`` module.

``from_torch`` also accepts an ``nn.Sequential`` of an optional leading ``nn.ZeroPad2d`` (or
``nn.ConstantPad2d`` with value 0, before a ``Conv2d``), the convolution or linear module, and an
optional activation module, which becomes the fused activation; ``to_torch`` produces exactly these
forms when the layer needs them (asymmetric padding, a fused activation), so the two round-trip.

Weights and bias are copied into new float32 numpy arrays owned by the layer or module (the torch
module is not referenced afterwards). Layers are created with ``Flags.use_client_pointer`` unless
``filter_parameters`` says otherwise, so ``apply_backward`` works on them.

torch is imported inside the functions, never when bnns_py is imported. The examples below need
PyTorch.
"""
import math
from types import ModuleType
from typing import Any, Optional, Protocol, Sequence, Tuple, Type, TypeVar, Union, cast

import numpy as np

from ._arrays import Array
from ._checks import is_int
from .activation import ActivationFunction
from .convolution import ConvolutionLayer, ConvolutionPadding, ConvolutionType
from .descriptor import NDArrayDescriptor
from .enums import DataLayout, DataType, Flags
from .filter_parameters import FilterParameters
from .fully_connected import FullyConnectedLayer
from .functional import (ActivationLike, BackendLike, ConvSpec, Sides, transposed_weight_from_bnns,
                         transposed_weight_to_bnns)
from .geometry import effective_kernel, transposed_output_size
from .modules import Conv2d, ConvTranspose2d, Linear
from .shape import Shape

# A torch.nn.Module or torch.Tensor: torch is optional and imported at run time, so its classes
# are not known to the type checker (and its attributes are read as PyTorch documents them).
TorchObject = Any


class ConvModuleLike(Protocol):
    """What the conversions read of a ``Conv2d`` or ``ConvTranspose2d``."""

    @property
    def spec(self) -> ConvSpec: ...

    @property
    def weight(self) -> Array: ...

    @property
    def bias(self) -> Optional[Array]: ...


_ConvModuleT = TypeVar("_ConvModuleT", bound=ConvModuleLike)
_LinearT = TypeVar("_LinearT", bound="Linear")

_GELU_TANH = (math.sqrt(2.0 / math.pi), 0.044715)  # torch GELU(approximate="tanh") constants


def require_torch() -> ModuleType:
    """Import and return ``torch``.

    Returns
    -------
    module
        The ``torch`` package.

    Raises
    ------
    ImportError
        PyTorch is not installed; the message says how to install it.

    Examples
    --------
    >>> from bnns_py.interop import require_torch
    >>> torch = require_torch()
    >>> torch.nn.Conv2d.__name__
    'Conv2d'
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError("bnns_py's PyTorch interop (from_torch / to_torch) needs PyTorch, which bnns-py "
                          "does not install: pip install torch") from error
    return torch


# ---- activations --------------------------------------------------------------------------------

def _close(value: float, target: float) -> bool:
    return math.isclose(value, target, rel_tol=1e-6, abs_tol=1e-7)


def activation_to_torch(activation: ActivationFunction, channel_dim: int) -> Optional[TorchObject]:
    """The ``torch.nn`` module computing ``activation``.

    Parameters
    ----------
    activation : ActivationFunction
        A fused BNNS activation, with its ``alpha`` and ``beta``.
    channel_dim : int
        The axis Softmax / LogSoftmax normalize over: -3 for images, -1 for vectors.

    Returns
    -------
    torch.nn.Module or None
        A new module (``nn.ReLU()``, ``nn.LeakyReLU(alpha)``, ``nn.Hardtanh(alpha, beta)``, ...),
        or None for the identity.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        ``torch.nn`` has no module computing this activation (with these parameters).

    Examples
    --------
    >>> from bnns_py import ActivationFunction
    >>> from bnns_py.interop import activation_to_torch
    >>> activation_to_torch(ActivationFunction.leaky_rectified_linear(0.25), -3)
    LeakyReLU(negative_slope=0.25)
    >>> activation_to_torch(ActivationFunction.softmax, -1)
    Softmax(dim=-1)
    >>> activation_to_torch(ActivationFunction.identity, -3) is None
    True
    """
    torch = require_torch()
    nn = torch.nn
    a, b = activation.alpha, activation.beta
    kind = ActivationFunction(activation.function).name  # the case's name for its C enum value
    simple = {"rectified_linear": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softsign": nn.Softsign,
              "log_sigmoid": nn.LogSigmoid, "selu": nn.SELU, "tanh_shrink": nn.Tanhshrink,
              "hard_swish": nn.Hardswish, "silu": nn.SiLU, "relu6": nn.ReLU6, "gelu": nn.GELU}
    with_alpha = {"leaky_rectified_linear": nn.LeakyReLU, "elu": nn.ELU, "celu": nn.CELU}
    if kind == "identity":
        return None
    if kind in simple:
        return simple[kind]()
    if kind in with_alpha:
        return with_alpha[kind](a)
    if kind == "clamp":
        return nn.Hardtanh(a, b)
    if kind == "softmax":
        return nn.Softmax(dim=channel_dim)
    if kind == "log_softmax":
        return nn.LogSoftmax(dim=channel_dim)
    if kind == "gelu_approximation" and _close(a, _GELU_TANH[0]) and _close(b, _GELU_TANH[1]):
        return nn.GELU(approximate="tanh")
    if kind == "hard_sigmoid" and _close(a, 1 / 6) and _close(b, 0.5):
        return nn.Hardsigmoid()
    if kind == "softplus" and b > 0 and _close(a * b, 1.0):
        return nn.Softplus(beta=b)
    if kind == "hard_shrink":
        return nn.Hardshrink(abs(a))
    if kind == "soft_shrink":
        return nn.Softshrink(abs(a))
    if kind == "threshold":
        return nn.Threshold(a, b)
    if kind == "prelu_per_channel":
        return nn.PReLU(1, init=a, dtype=torch.float32)
    raise ValueError(f"torch.nn has no module computing {activation!r}, so the layer cannot be expressed as "
                     "torch modules; create it with the identity activation and apply the activation "
                     "separately")


def activation_from_torch(module: TorchObject, channel_dims: Tuple[int, ...]) -> ActivationFunction:
    """The fused BNNS activation a ``torch.nn`` activation module computes.

    Parameters
    ----------
    module : torch.nn.Module
        An activation module: ``nn.Identity``, ``nn.ReLU``, ``nn.ReLU6``, ``nn.LeakyReLU``,
        ``nn.Hardtanh``, ``nn.Sigmoid``, ``nn.Tanh``, ``nn.GELU``, ``nn.SiLU``, ``nn.Softmax``,
        ``nn.PReLU`` with one slope, ...
    channel_dims : tuple of int
        The ``dim`` values of ``nn.Softmax`` / ``nn.LogSoftmax`` that mean the channel axis (BNNS
        normalizes over channels): ``(1, -3)`` for images, ``(1, -1)`` for vectors.

    Returns
    -------
    ActivationFunction

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        A module with no BNNS equivalent, a Softmax over another axis, or a PReLU with a slope
        per channel.

    Examples
    --------
    >>> import torch
    >>> from bnns_py.interop import activation_from_torch
    >>> activation_from_torch(torch.nn.Hardtanh(-1.0, 2.0), (1, -3))
    ActivationFunction.clamp(alpha=-1, beta=2)
    >>> activation_from_torch(torch.nn.Softmax(dim=1), (1, -3)).name
    'softmax'
    """
    torch = require_torch()
    nn = torch.nn
    AF = ActivationFunction
    simple = [(nn.Identity, AF.identity), (nn.ReLU, AF.rectified_linear), (nn.ReLU6, AF.relu6),
              (nn.Sigmoid, AF.sigmoid), (nn.Tanh, AF.tanh), (nn.Softsign, AF.softsign),
              (nn.LogSigmoid, AF.log_sigmoid), (nn.SELU, AF.selu), (nn.Tanhshrink, AF.tanh_shrink),
              (nn.Hardswish, AF.hard_swish()), (nn.SiLU, AF.silu)]
    for kind, activation in simple:  # ReLU6 before Hardtanh, of which it is a subclass
        if isinstance(module, kind):
            return activation
    if isinstance(module, nn.Hardtanh):
        return AF.clamp((module.min_val, module.max_val))
    if isinstance(module, nn.LeakyReLU):
        return AF.leaky_rectified_linear(module.negative_slope)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        if module.dim not in channel_dims:
            raise ValueError(f"{module} normalizes over dim={module.dim}; the fused BNNS activation normalizes "
                             f"over the channel axis (dim in {channel_dims})")
        return AF.softmax if isinstance(module, nn.Softmax) else AF.log_softmax
    if isinstance(module, nn.GELU):
        return AF.gelu if module.approximate == "none" else AF.gelu_approximation(*_GELU_TANH)
    if isinstance(module, nn.Hardsigmoid):
        return AF.hard_sigmoid(1 / 6, 0.5)
    if isinstance(module, nn.Softplus):
        return AF.softplus(1 / module.beta, module.beta)
    if isinstance(module, nn.ELU):
        return AF.elu(module.alpha)
    if isinstance(module, nn.CELU):
        return AF.celu(module.alpha)
    if isinstance(module, nn.Hardshrink):
        return AF.hard_shrink(module.lambd)
    if isinstance(module, nn.Softshrink):
        return AF.soft_shrink(module.lambd)
    if isinstance(module, nn.Threshold):
        return AF.threshold(module.threshold, module.value)
    if isinstance(module, nn.PReLU):
        values = module.weight.detach().cpu().double().numpy()
        if values.size == 0 or not np.all(values == values[0]):
            raise ValueError("a PReLU with different slopes per channel cannot be fused into a BNNS layer "
                             "(bnns-py sets one alpha)")
        return AF.leaky_rectified_linear(float(values[0]))
    raise ValueError(f"{type(module).__name__} has no fused BNNS activation equivalent")


# ---- reading torch modules ------------------------------------------------------------------------

def _array(tensor: TorchObject, torch: ModuleType, what: str) -> Array:
    """A new, owned, C-contiguous float32 numpy copy of a parameter."""
    if isinstance(tensor, torch.nn.parameter.UninitializedParameter):
        raise ValueError(f"{what} is not initialized yet (a lazy module): run one forward pass first")
    if tensor.is_meta:
        raise ValueError(f"{what} is on the meta device and has no values")
    if tensor.is_complex():
        raise TypeError(f"{what} is complex ({tensor.dtype}); BNNS computes real float32 values")
    values = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    return np.array(values, dtype=np.float32, order="C", copy=True)


def _unpack(module: TorchObject, kinds: Tuple[type, ...], torch: ModuleType,
            what: str) -> Tuple[Optional[TorchObject], TorchObject, Optional[TorchObject]]:
    """(padding module or None, core module, activation module or None)."""
    nn = torch.nn
    if isinstance(module, kinds):
        return None, module, None
    if isinstance(module, nn.Sequential):
        parts = list(module)
        pad = parts.pop(0) if parts and isinstance(parts[0], nn.ConstantPad2d) else None
        core = parts.pop(0) if parts and isinstance(parts[0], kinds) else None
        if core is not None and len(parts) <= 1:
            if pad is not None and not isinstance(core, nn.Conv2d):
                raise TypeError(f"a padding module can only precede an nn.Conv2d, not {type(core).__name__}")
            return pad, core, parts[0] if parts else None
    names = " or ".join(f"nn.{kind.__name__}" for kind in kinds)
    raise TypeError(f"{what} needs {names}, or an nn.Sequential of [optional nn.ZeroPad2d,] that module "
                    f"[, an activation module]; got {type(module).__name__}")


def _fused_activation(act_module: Optional[TorchObject], activation: ActivationLike,
                      channel_dims: Tuple[int, ...]) -> ActivationFunction:
    if act_module is not None:
        from_module = activation_from_torch(act_module, channel_dims)
        if activation is not None and not ActivationFunction.coerce(activation).is_identity:
            raise ValueError(f"both an activation module ({act_module}) and activation={activation!r} were given")
        return from_module
    return ActivationFunction.coerce(activation)


def _conv_arguments(module: TorchObject, activation: ActivationLike, torch: ModuleType,
                    what: str) -> Tuple[Array, Optional[Array], ConvSpec]:
    """The weight and bias (copies, PyTorch's layouts) and the ConvSpec of a conv module or Sequential."""
    nn = torch.nn
    pad_module, conv, act_module = _unpack(module, (nn.Conv2d, nn.ConvTranspose2d), torch, what)
    transposed = isinstance(conv, nn.ConvTranspose2d)
    k_h, k_w = conv.kernel_size
    d_h, d_w = conv.dilation
    pads: Sides
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            pads = (0, 0, 0, 0)
        elif conv.padding == "same":  # PyTorch puts the odd extra zero after (right, bottom)
            total_h, total_w = d_h * (k_h - 1), d_w * (k_w - 1)
            pads = (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)
        else:
            raise ValueError(f"unknown padding {conv.padding!r}")
    else:
        p_h, p_w = conv.padding
        pads = (p_w, p_w, p_h, p_h)
    if conv.padding_mode != "zeros" and any(pads):
        raise ValueError(f"padding_mode={conv.padding_mode!r} cannot be expressed: BNNS pads with zeros only. "
                         f"Pad the input yourself (np.pad(x, ..., mode=...)) and use a module with padding=0")
    if pad_module is not None:
        left, right, top, bottom = (int(v) for v in pad_module.padding)
        if pad_module.value != 0:
            raise ValueError(f"{pad_module} pads with {pad_module.value}; BNNS pads with zeros only")
        if min(left, right, top, bottom) < 0:
            raise ValueError(f"{pad_module} crops (negative padding), which a BNNS layer cannot express")
        pads = (pads[0] + left, pads[1] + right, pads[2] + top, pads[3] + bottom)
    name = type(conv).__name__
    weight = _array(conv.weight, torch, f"{name}.weight")
    bias = None if conv.bias is None else _array(conv.bias, torch, f"{name}.bias")
    s_h, s_w = conv.stride
    output_padding = tuple(conv.output_padding) if transposed else (0, 0)
    spec = ConvSpec.from_arguments(transposed, weight, bias, (s_h, s_w), pads, (d_h, d_w), int(conv.groups),
                                   _fused_activation(act_module, activation, (1, -3)),
                                   (output_padding[0], output_padding[1]))
    return weight, bias, spec


def _linear_arguments(module: TorchObject, activation: ActivationLike, torch: ModuleType,
                      what: str) -> Tuple[Array, Optional[Array], ActivationFunction]:
    nn = torch.nn
    _, linear, act_module = _unpack(module, (nn.Linear,), torch, what)
    weight = _array(linear.weight, torch, "Linear.weight")
    bias = None if linear.bias is None else _array(linear.bias, torch, "Linear.bias")
    return weight, bias, _fused_activation(act_module, activation, (1, -1))


def _image_size(input_shape: Optional[Sequence[int]], channels: int) -> Tuple[int, int]:
    """(height, width) from ``input_shape`` = (C, H, W) or (N, C, H, W)."""
    if input_shape is None:
        raise TypeError("input_shape=(C, H, W) is required: a BNNS layer is created for one input size")
    shape = tuple(input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or not all(is_int(v) and v >= 1 for v in shape):
        raise ValueError(f"input_shape must be (C, H, W) (or (N, C, H, W)) of positive integers, got {input_shape!r}")
    c, h, w = (int(v) for v in shape)
    if c != channels:
        raise ValueError(f"input_shape has {c} channels, the module expects {channels}")
    return h, w


def _padding(sides: Sides) -> ConvolutionPadding:
    """ConvolutionPadding for (left, right, top, bottom): symmetric when it is."""
    left, right, top, bottom = sides
    if left == right and top == bottom:
        return ConvolutionPadding.symmetric(left, top)
    return ConvolutionPadding.asymmetric(left, right, top, bottom)


def _client_parameters(filter_parameters: Optional[FilterParameters]) -> FilterParameters:
    if filter_parameters is None:
        return FilterParameters(flags=Flags.use_client_pointer)
    if not isinstance(filter_parameters, FilterParameters):
        raise TypeError(f"filter_parameters must be FilterParameters or None, not {type(filter_parameters).__name__}")
    return filter_parameters


# ---- from torch ---------------------------------------------------------------------------------

def convolution_layer_from_torch(module: TorchObject, input_shape: Optional[Sequence[int]] = None,
                                 backend: BackendLike = None, activation: ActivationLike = None,
                                 filter_parameters: Optional[FilterParameters] = None
                                 ) -> Union[ConvolutionLayer, FullyConnectedLayer]:
    """The layer computing what a torch convolution (or linear) module computes:
    ``ConvolutionLayer.from_torch``.

    Parameters
    ----------
    module : torch.nn.Module
        ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.Linear``, or an ``nn.Sequential`` of an
        optional leading ``nn.ZeroPad2d`` (before a ``Conv2d``), one of those and an optional
        activation module (fused).
    input_shape : sequence of int, optional
        ``(C, H, W)`` or ``(N, C, H, W)``: a BNNS layer is made for one input size. Not needed for
        ``nn.Linear``.
    backend : str, Backend or None, optional
        ``"accelerate"``, ``"portable"`` or None for the default backend.
    activation : ActivationFunction, str or None, optional
        An activation to fuse, when ``module`` has none.
    filter_parameters : FilterParameters, optional
        The layer's filter parameters; by default ``Flags.use_client_pointer`` (the layer reads
        its own copies of the weights in place, and ``apply_backward`` works).

    Returns
    -------
    ConvolutionLayer or FullyConnectedLayer
        A layer owning float32 copies of the module's weight and bias.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    TypeError
        A module of another kind, or no ``input_shape`` for a convolution.
    ValueError
        What BNNS cannot express: padding modes other than zeros, a Softmax over another axis,
        an ``input_shape`` that does not fit the module.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from bnns_py.interop import convolution_layer_from_torch
    >>> conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    >>> layer = convolution_layer_from_torch(conv, (3, 8, 8))
    >>> x = torch.randn(2, 3, 8, 8)
    >>> y = np.empty((2, 4, 8, 8), np.float32)
    >>> with layer:
    ...     layer.apply(2, x.numpy(), y)
    >>> bool(np.allclose(y, conv(x).detach().numpy(), atol=1e-5))
    True
    """
    torch = require_torch()
    nn = torch.nn
    core = module
    if isinstance(module, nn.Sequential):
        parts = [m for m in module if not isinstance(m, nn.ConstantPad2d)]
        core = parts[0] if parts else module
    if isinstance(core, nn.Linear):
        return fully_connected_from_torch(module, input_shape, backend, activation, filter_parameters)
    weight, bias, spec = _conv_arguments(module, activation, torch, "ConvolutionLayer.from_torch")
    height, width = _image_size(input_shape, spec.in_channels)
    out_h, out_w = spec.output_hw(height, width)
    bnns_weight = transposed_weight_to_bnns(weight, spec.groups) if spec.transposed else weight
    (s_h, s_w), (d_h, d_w) = spec.stride, spec.dilation
    return ConvolutionLayer(
        ConvolutionType.transposed if spec.transposed else ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(width, height, spec.in_channels)),
        NDArrayDescriptor(bnns_weight, spec.bnns_weight_shape()),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(out_w, out_h, spec.out_channels)),
        None if bias is None else NDArrayDescriptor(bias, Shape.vector(spec.out_channels)),
        _padding(spec.padding), spec.activation, spec.groups, (s_w, s_h), (d_w, d_h),
        _client_parameters(filter_parameters), backend=backend)


def fully_connected_from_torch(module: TorchObject, input_shape: Union[int, Sequence[int], None] = None,
                               backend: BackendLike = None, activation: ActivationLike = None,
                               filter_parameters: Optional[FilterParameters] = None) -> FullyConnectedLayer:
    """The layer computing what a torch linear module computes: ``FullyConnectedLayer.from_torch``.

    Parameters
    ----------
    module : torch.nn.Module
        ``nn.Linear``, or ``nn.Sequential(Linear, activation module)`` (the activation is fused).
    input_shape : int or sequence of int, optional
        Checked only: its last value must be the module's ``in_features``.
    backend, activation, filter_parameters : optional
        As for :func:`convolution_layer_from_torch`.

    Returns
    -------
    FullyConnectedLayer
        A layer owning float32 copies of the module's weight and bias.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    TypeError
        A module of another kind.
    ValueError
        An ``input_shape`` that does not end with ``in_features``, or an activation BNNS cannot
        fuse.

    Examples
    --------
    >>> import torch
    >>> from bnns_py.interop import fully_connected_from_torch
    >>> layer = fully_connected_from_torch(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU()))
    >>> layer.input_size, layer.output_size, layer.activation.name
    (5, 3, 'rectified_linear')
    >>> layer.close()
    """
    torch = require_torch()
    weight, bias, activation = _linear_arguments(module, activation, torch, "FullyConnectedLayer.from_torch")
    out_features, in_features = weight.shape
    if input_shape is not None:
        shape = (input_shape,) if is_int(input_shape) else tuple(cast(Sequence[int], input_shape))
        if not shape or shape[-1] != in_features:
            raise ValueError(f"input_shape {input_shape!r} does not end with the module's {in_features} in_features")
    return FullyConnectedLayer(
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(in_features)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(out_features)),
        NDArrayDescriptor(weight, Shape.matrix_row_major(in_features, out_features)),
        None if bias is None else NDArrayDescriptor(bias, Shape.vector(out_features)),
        activation, _client_parameters(filter_parameters), backend=backend)


def conv_module_from_torch(cls: Type[_ConvModuleT], module: TorchObject, backend: BackendLike = None,
                           activation: ActivationLike = None, n_threads: int = 0,
                           copy_weights: bool = False) -> _ConvModuleT:
    """The numpy module computing what a torch convolution module computes:
    ``Conv2d.from_torch`` and ``ConvTranspose2d.from_torch``.

    Parameters
    ----------
    cls : type
        ``bnns_py.Conv2d`` or ``bnns_py.ConvTranspose2d``.
    module : torch.nn.Module
        ``nn.Conv2d`` (for ``Conv2d``) or ``nn.ConvTranspose2d`` (for ``ConvTranspose2d``), or an
        ``nn.Sequential`` of an optional ``nn.ZeroPad2d``, that module and an activation module.
    backend, activation : optional
        As for :func:`convolution_layer_from_torch`.
    n_threads : int, optional
        The module's ``n_threads`` (default 0: as many as the backend chooses).
    copy_weights : bool, optional
        The module's ``copy_weights`` (default False: its filters read the weights in place).

    Returns
    -------
    Conv2d or ConvTranspose2d
        An instance of ``cls`` with float32 copies of the module's weight and bias.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    TypeError
        A module of another kind than ``cls`` needs.
    ValueError
        What BNNS cannot express (as for :func:`convolution_layer_from_torch`).

    Examples
    --------
    >>> import torch
    >>> from bnns_py import Conv2d
    >>> from bnns_py.interop import conv_module_from_torch
    >>> module = conv_module_from_torch(Conv2d, torch.nn.Conv2d(2, 4, 3, stride=2, padding=1))
    >>> module.weight.shape, module.spec.stride, module.spec.padding
    ((4, 2, 3, 3), (2, 2), (1, 1, 1, 1))
    """
    torch = require_torch()
    weight, bias, spec = _conv_arguments(module, activation, torch, f"{cls.__name__}.from_torch")
    if issubclass(cls, ConvTranspose2d) and spec.transposed:
        return cls(weight, bias, stride=spec.stride, padding=spec.padding, output_padding=spec.output_padding,
                   groups=spec.groups, dilation=spec.dilation, activation=spec.activation, backend=backend,
                   n_threads=n_threads, copy_weights=copy_weights)
    if issubclass(cls, Conv2d) and not spec.transposed:
        return cls(weight, bias, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                   groups=spec.groups, activation=spec.activation, backend=backend, n_threads=n_threads,
                   copy_weights=copy_weights)
    wanted = "nn.ConvTranspose2d" if issubclass(cls, ConvTranspose2d) else "nn.Conv2d"
    raise TypeError(f"{cls.__name__}.from_torch needs {wanted}, got {type(module).__name__}")


def linear_module_from_torch(cls: Type[_LinearT], module: TorchObject, backend: BackendLike = None,
                             activation: ActivationLike = None, n_threads: int = 0,
                             copy_weights: bool = False) -> _LinearT:
    """The numpy module computing what a torch linear module computes: ``Linear.from_torch``.

    Parameters
    ----------
    cls : type
        ``bnns_py.Linear`` (or a subclass).
    module : torch.nn.Module
        ``nn.Linear``, or ``nn.Sequential(Linear, activation module)`` (the activation is fused).
    backend, activation : optional
        As for :func:`convolution_layer_from_torch`.
    n_threads : int, optional
        The module's ``n_threads`` (default 0: as many as the backend chooses).
    copy_weights : bool, optional
        The module's ``copy_weights`` (default False: its filter reads the weights in place).

    Returns
    -------
    Linear
        An instance of ``cls`` with float32 copies of the module's weight and bias.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    TypeError
        A module of another kind.

    Examples
    --------
    >>> import torch
    >>> from bnns_py import Linear
    >>> from bnns_py.interop import linear_module_from_torch
    >>> module = linear_module_from_torch(Linear, torch.nn.Linear(4, 2, bias=False))
    >>> module.weight.shape, module.bias is None
    ((2, 4), True)
    """
    torch = require_torch()
    weight, bias, activation = _linear_arguments(module, activation, torch, f"{cls.__name__}.from_torch")
    return cls(weight, bias, activation=activation, backend=backend, n_threads=n_threads, copy_weights=copy_weights)


# ---- to torch -----------------------------------------------------------------------------------

def _assemble(torch: ModuleType, pad: Optional[TorchObject], core: TorchObject, activation: ActivationFunction,
              channel_dim: int) -> TorchObject:
    act = activation_to_torch(activation, channel_dim)
    parts = [m for m in (pad, core, act) if m is not None]
    return parts[0] if len(parts) == 1 else torch.nn.Sequential(*parts)


def _set_parameters(torch: ModuleType, module: TorchObject, weight: Array, bias: Optional[Array]) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)))
        if bias is not None:
            module.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)))


def build_torch_conv(transposed: bool, in_channels: int, out_channels: int, kernel: Tuple[int, int],
                     stride: Tuple[int, int], padding: Sides, dilation: Tuple[int, int], groups: int, weight: Array,
                     bias: Optional[Array], activation: ActivationFunction,
                     output_padding: Tuple[int, int] = (0, 0)) -> TorchObject:
    """The torch module(s) computing a convolution given in PyTorch's terms.

    Parameters
    ----------
    transposed : bool
        ``nn.ConvTranspose2d`` rather than ``nn.Conv2d``.
    in_channels, out_channels : int
        Channels of the input and of the output.
    kernel, stride, dilation : (int, int)
        ``(kH, kW)``, ``(sh, sw)``, ``(dh, dw)``.
    padding : (int, int, int, int)
        ``(left, right, top, bottom)``, possibly asymmetric: a standard convolution then gets an
        ``nn.ZeroPad2d`` in front (negative values crop); a transposed one is expressed with
        PyTorch's ``padding=(top, left)`` and an ``output_padding`` absorbing the difference.
    groups : int
        Channel groups.
    weight : numpy.ndarray
        PyTorch's layout: ``(out, in / groups, kH, kW)``, transposed ``(in, out / groups, kH, kW)``.
    bias : numpy.ndarray or None
        ``(out_channels,)``, or None for no bias.
    activation : ActivationFunction
        Appended as an activation module unless it is the identity.
    output_padding : (int, int), optional
        Transposed only: rows and columns added to the output size that ``padding`` gives.

    Returns
    -------
    torch.nn.Module
        The convolution module, or an ``nn.Sequential`` of ``[nn.ZeroPad2d,]`` it ``[,
        activation]``, holding float32 copies of ``weight`` and ``bias``.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        A transposed convolution whose padding would need an ``output_padding`` outside
        ``[0, max(stride, dilation))``, which PyTorch refuses, or an activation ``torch.nn`` has
        no module for.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import ActivationFunction
    >>> from bnns_py.interop import build_torch_conv
    >>> weight = np.ones((2, 1, 3, 3), np.float32)
    >>> build_torch_conv(False, 1, 2, (3, 3), (1, 1), (1, 0, 1, 0), (1, 1), 1, weight, None,
    ...                  ActivationFunction.rectified_linear)
    Sequential(
      (0): ZeroPad2d((1, 0, 1, 0))
      (1): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1), bias=False)
      (2): ReLU()
    )
    """
    torch = require_torch()
    nn = torch.nn
    left, right, top, bottom = padding
    common = dict(kernel_size=tuple(kernel), stride=tuple(stride), dilation=tuple(dilation), groups=groups,
                  bias=bias is not None, dtype=torch.float32)
    pad = None
    if transposed:
        op = (output_padding[0] + top - bottom, output_padding[1] + left - right)
        for value, s, d, axis in zip(op, stride, dilation, ("height", "width")):
            if not 0 <= value < max(s, d):
                raise ValueError(f"this transposed convolution cannot be an nn.ConvTranspose2d: along {axis} it "
                                 f"would need output_padding={value}, and PyTorch needs 0 <= output_padding < "
                                 f"max(stride {s}, dilation {d}) (padding (left, right, top, bottom) = {padding})")
        core = nn.ConvTranspose2d(in_channels, out_channels, padding=(top, left), output_padding=op, **common)
    elif left == right and top == bottom:
        core = nn.Conv2d(in_channels, out_channels, padding=(top, left), **common)
    else:
        pad = nn.ZeroPad2d((left, right, top, bottom))
        core = nn.Conv2d(in_channels, out_channels, padding=0, **common)
    _set_parameters(torch, core, weight, bias)
    return _assemble(torch, pad, core, activation, -3)


def build_torch_linear(weight: Array, bias: Optional[Array], activation: ActivationFunction) -> TorchObject:
    """The torch module(s) computing ``activation(x @ weight.T + bias)``.

    Parameters
    ----------
    weight : numpy.ndarray, shape (out_features, in_features)
    bias : numpy.ndarray, shape (out_features,), or None
    activation : ActivationFunction
        Appended as an activation module unless it is the identity.

    Returns
    -------
    torch.nn.Module
        ``nn.Linear``, or ``nn.Sequential(Linear, activation)``, holding float32 copies of
        ``weight`` and ``bias``.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        An activation ``torch.nn`` has no module for.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import ActivationFunction
    >>> from bnns_py.interop import build_torch_linear
    >>> build_torch_linear(np.ones((2, 3), np.float32), None, ActivationFunction.identity)
    Linear(in_features=3, out_features=2, bias=False)
    """
    torch = require_torch()
    out_features, in_features = weight.shape
    core = torch.nn.Linear(in_features, out_features, bias=bias is not None, dtype=torch.float32)
    _set_parameters(torch, core, weight, bias)
    return _assemble(torch, None, core, activation, -1)


def _float_values(descriptor: NDArrayDescriptor, what: str) -> Array:
    """The descriptor's data as a flat float32 array."""
    if descriptor.data is None:
        raise ValueError(f"the layer's {what} descriptor has no data (deallocated?)")
    if descriptor.data_type not in (DataType.float32, DataType.float16):
        raise TypeError(f"{what} of data type {descriptor.data_type.name} cannot be converted to PyTorch "
                        "float32 parameters")
    return descriptor.data.reshape(-1).astype(np.float32)


def _strided(flat: Array, shape: Sequence[int], strides: Sequence[int]) -> Array:
    """An (owned) array of ``shape`` reading ``flat`` at element ``strides``."""
    view = np.lib.stride_tricks.as_strided(flat, shape=shape, strides=[s * flat.itemsize for s in strides],
                                           writeable=False)
    return np.array(view, dtype=np.float32, copy=True)


def layer_weight_oihw(layer: ConvolutionLayer) -> Array:
    """A convolution layer's weights in the BNNS OIHW meaning, whatever their descriptor's layout.

    Parameters
    ----------
    layer : ConvolutionLayer
        A standard or transposed layer whose weights descriptor has data, in the layout
        ``convolution_weights_oihw``, ``convolution_weights_oihrwr`` or
        ``convolution_weights_iohrwr`` (kernels stored rotated by 180 degrees), with any strides.

    Returns
    -------
    numpy.ndarray of float32, shape (size3, size2, kH, kW)
        ``W[o, i, ky, kx]`` (``i`` within its group): a new array.

    Raises
    ------
    ValueError
        Weights without data, or in another layout.
    TypeError
        Weights of a data type other than float32 or float16.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import (ConvolutionLayer, ConvolutionType, DataType, NDArrayDescriptor,
    ...                      Shape)
    >>> from bnns_py.interop import layer_weight_oihw
    >>> w = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    >>> layer = ConvolutionLayer(
    ...     ConvolutionType.standard,
    ...     NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(4, 4, 1)),
    ...     NDArrayDescriptor(w, Shape.convolution_weights_oihw(2, 2, 1, 2)),
    ...     NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(3, 3, 2)))
    >>> bool(np.array_equal(layer_weight_oihw(layer), w))
    True
    >>> layer.close()
    """
    weights = layer.weights
    flat = _float_values(weights, "weights")
    k_w, k_h, size2, size3 = weights.shape.sizes
    s0, s1, s2, s3 = weights.shape.resolved_strides
    layout = weights.layout
    if layout == DataLayout.convolution_weights_oihw:
        return _strided(flat, (size3, size2, k_h, k_w), (s3, s2, s1, s0))
    if layout == DataLayout.convolution_weights_oihrwr:  # kernel stored rotated by 180 degrees
        return np.ascontiguousarray(_strided(flat, (size3, size2, k_h, k_w), (s3, s2, s1, s0))[:, :, ::-1, ::-1])
    if layout == DataLayout.convolution_weights_iohrwr:  # [in][out][kH][kW], rotated
        rotated = _strided(flat, (size3, size2, k_h, k_w), (s3, s2, s1, s0))
        return np.ascontiguousarray(rotated.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    raise ValueError(f"weights layout {layout.name} cannot be converted to PyTorch")


def _bias_values(layer: Union[ConvolutionLayer, FullyConnectedLayer]) -> Optional[Array]:
    if layer.bias is None:
        return None
    flat = _float_values(layer.bias, "bias")
    return _strided(flat, layer.bias.shape.sizes, layer.bias.shape.resolved_strides)


def convolution_layer_to_torch(layer: ConvolutionLayer) -> TorchObject:
    """The torch module computing what a convolution layer computes on its input size:
    ``ConvolutionLayer.to_torch``.

    Parameters
    ----------
    layer : ConvolutionLayer
        A standard or transposed layer with float32 or float16 weights.

    Returns
    -------
    torch.nn.Module
        ``nn.Conv2d`` or ``nn.ConvTranspose2d`` with float32 copies of the weights and bias, in an
        ``nn.Sequential`` with an ``nn.ZeroPad2d`` (asymmetric padding, or the unused end of the
        input cropped when BNNS makes fewer outputs than PyTorch's size formula) and an activation
        module when needed.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        What ``torch.nn`` cannot express: an activation without a module, a transposed padding
        PyTorch refuses, weights without data or in another layout.
    TypeError
        Weights or bias of an integer data type.

    Examples
    --------
    >>> import torch
    >>> from bnns_py.interop import convolution_layer_from_torch, convolution_layer_to_torch
    >>> layer = convolution_layer_from_torch(torch.nn.Conv2d(3, 4, 3, padding=1), (3, 8, 8))
    >>> convolution_layer_to_torch(layer)
    Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    >>> layer.close()
    """
    in_w, in_h, in_c = layer.input_descriptor.shape.sizes
    out_w, out_h, out_c = layer.output_descriptor.shape.sizes
    oihw = layer_weight_oihw(layer)
    k_h, k_w = oihw.shape[2:]
    groups = max(layer.group_count, 1)
    s_w, s_h = (max(v, 1) for v in layer.stride)
    d_w, d_h = (max(v, 1) for v in layer.dilation_stride)
    left, right, up, down = layer.padding.sides
    bias = _bias_values(layer)
    if layer.type is ConvolutionType.standard:
        # BNNS may produce fewer outputs than PyTorch's floor formula gives (the relaxed size rule):
        # the unused end of the input is cropped away (negative padding) so the sizes agree.
        right = right - _unused(in_w, out_w, k_w, s_w, d_w, left, right)
        down = down - _unused(in_h, out_h, k_h, s_h, d_h, up, down)
        return build_torch_conv(False, in_c, out_c, (k_h, k_w), (s_h, s_w), (left, right, up, down), (d_h, d_w),
                                groups, oihw, bias, layer.activation)
    extra = (out_h - transposed_output_size(in_h, k_h, s_h, d_h, up, down),
             out_w - transposed_output_size(in_w, k_w, s_w, d_w, left, right))
    return build_torch_conv(True, in_c, out_c, (k_h, k_w), (s_h, s_w), (left, right, up, down), (d_h, d_w),
                            groups, transposed_weight_from_bnns(oihw, groups), bias, layer.activation, extra)


def _unused(in_size: int, out_size: int, kernel: int, stride: int, dilation: int, before: int, after: int) -> int:
    """Padded input elements past the last window, in whole strides (0 when PyTorch's size matches)."""
    excess = in_size + before + after - (stride * (out_size - 1) + effective_kernel(kernel, dilation))
    return (excess // stride) * stride


def fully_connected_to_torch(layer: FullyConnectedLayer) -> TorchObject:
    """The torch module computing what a fully-connected layer computes:
    ``FullyConnectedLayer.to_torch``.

    Parameters
    ----------
    layer : FullyConnectedLayer
        A layer with float32 or float16 weights.

    Returns
    -------
    torch.nn.Module
        ``nn.Linear`` with float32 copies of the weights and bias, or
        ``nn.Sequential(Linear, activation)`` when the layer has an activation.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        An activation ``torch.nn`` has no module for, or weights without data.
    TypeError
        Weights or bias of an integer data type.

    Examples
    --------
    >>> import torch
    >>> from bnns_py.interop import fully_connected_from_torch, fully_connected_to_torch
    >>> layer = fully_connected_from_torch(torch.nn.Linear(5, 3))
    >>> fully_connected_to_torch(layer)
    Linear(in_features=5, out_features=3, bias=True)
    >>> layer.close()
    """
    weights = layer.weights
    flat = _float_values(weights, "weights")
    s_in, s_out = weights.shape.resolved_strides
    weight = _strided(flat, (layer.output_size, layer.input_size), (s_out, s_in))
    return build_torch_linear(weight, _bias_values(layer), layer.activation)


def conv_module_to_torch(module: ConvModuleLike) -> TorchObject:
    """The torch module computing what a numpy convolution module computes:
    ``Conv2d.to_torch`` and ``ConvTranspose2d.to_torch``.

    Parameters
    ----------
    module : Conv2d or ConvTranspose2d

    Returns
    -------
    torch.nn.Module
        ``nn.Conv2d`` or ``nn.ConvTranspose2d`` with float32 copies of the current weight and
        bias, in an ``nn.Sequential`` with an ``nn.ZeroPad2d`` and an activation module when
        needed (as :func:`build_torch_conv` makes).

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        As for :func:`build_torch_conv`.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import Conv2d
    >>> from bnns_py.interop import conv_module_to_torch
    >>> conv_module_to_torch(Conv2d(np.ones((4, 2, 3, 3), np.float32), stride=2, padding=1))
    Conv2d(2, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)
    """
    spec = module.spec
    return build_torch_conv(spec.transposed, spec.in_channels, spec.out_channels, spec.kernel, spec.stride,
                            spec.padding, spec.dilation, spec.groups, module.weight, module.bias, spec.activation,
                            spec.output_padding)


def linear_module_to_torch(module: Linear) -> TorchObject:
    """The torch module computing what a numpy linear module computes: ``Linear.to_torch``.

    Parameters
    ----------
    module : Linear

    Returns
    -------
    torch.nn.Module
        ``nn.Linear`` with float32 copies of the current weight and bias, or
        ``nn.Sequential(Linear, activation)``.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    ValueError
        An activation ``torch.nn`` has no module for.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import Linear
    >>> from bnns_py.interop import linear_module_to_torch
    >>> linear_module_to_torch(Linear(np.ones((2, 3), np.float32), activation="sigmoid"))
    Sequential(
      (0): Linear(in_features=3, out_features=2, bias=False)
      (1): Sigmoid()
    )
    """
    return build_torch_linear(module.weight, module.bias, module.activation)


__all__ = ["activation_from_torch", "activation_to_torch", "build_torch_conv", "build_torch_linear",
           "conv_module_from_torch", "conv_module_to_torch", "convolution_layer_from_torch",
           "convolution_layer_to_torch", "fully_connected_from_torch", "fully_connected_to_torch",
           "layer_weight_oihw", "linear_module_from_torch", "linear_module_to_torch", "require_torch"]
