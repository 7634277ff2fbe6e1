"""numpy-first convolution with PyTorch's argument conventions, for scripts and notebooks.

``conv2d(x, weight, ...)`` takes NCHW (or CHW) float32 arrays and weights ``(out, in/groups, kH,
kW)`` like ``torch.nn.functional.conv2d``, builds a BNNS convolution filter on the chosen backend,
runs it and destroys it. Padding is an int, ``(pad_h, pad_w)`` or ``(left, right, top, bottom)``.
"""
import numpy as np

from .activation import ActivationFunction
from .convolution import ConvolutionLayer, ConvolutionPadding, ConvolutionType
from .descriptor import NDArrayDescriptor, check_array_memory
from .enums import DataType, Flags
from .filter_parameters import FilterParameters
from .geometry import max_output_size
from .shape import Shape

_FLOAT32 = np.dtype(np.float32)
_FLOAT32_TYPE = DataType.float32


def _int_pair(name, value):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        first, second = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    for v in (first, second):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} values must be integers >= 1, got {value!r}")
    return int(first), int(second)


def normalize_padding(padding):
    """PyTorch-style padding (int, (pad_h, pad_w) or (left, right, top, bottom)) -> 4-tuple."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (padding,)
    values = tuple(padding) if isinstance(padding, (tuple, list)) else None
    if values is None or len(values) not in (1, 2, 4):
        raise TypeError(f"padding must be an int, (pad_h, pad_w) or (left, right, top, bottom); got {padding!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"padding values must be integers >= 0, got {padding!r}")
    if len(values) == 1:
        return (int(values[0]),) * 4
    if len(values) == 2:
        pad_h, pad_w = values
        return (int(pad_w), int(pad_w), int(pad_h), int(pad_h))
    return tuple(int(v) for v in values)


def _as_float32(name, array, ndim):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(array).__name__}")
    if array.dtype != _FLOAT32:
        raise TypeError(f"{name} has dtype {array.dtype}; BNNS convolution here computes in float32: "
                        f"pass {name}.astype(np.float32)")
    if array.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {array.shape}")
    return np.ascontiguousarray(array)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           backend=None, out=None):
    """2-D convolution (cross-correlation) of ``x`` with ``weight``, computed by BNNS.

    Args:
        x: float32 array ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        weight: float32 array ``(C_out, C_in / groups, kH, kW)``.
        bias: optional float32 array ``(C_out,)``.
        stride, dilation: int or ``(sh, sw)``.
        padding: int, ``(pad_h, pad_w)`` or ``(left, right, top, bottom)``.
        groups: number of groups (``C_in`` for depthwise).
        activation: None, a name (``"relu"``, ``"sigmoid"``, ...) or an ``ActivationFunction``,
            fused after the bias.
        backend: ``"accelerate"``, ``"portable"`` or None (default backend).
        out: optional float32 C-contiguous array of the output shape to write into.

    Returns:
        The output array ``(N, C_out, H_out, W_out)`` (or ``(C_out, H_out, W_out)`` for 3-D ``x``).
    """
    x = _as_float32("x", x, (3, 4))
    single = x.ndim == 3
    if single:
        x = x[np.newaxis]
    weight = _as_float32("weight", weight, (4,))
    batch, in_channels, height, width = x.shape
    out_channels, in_per_group, k_h, k_w = weight.shape
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide input channels {in_channels} and "
                         f"output channels {out_channels}")
    if in_per_group != in_channels // groups:
        raise ValueError(f"weight shape {weight.shape} expects {in_per_group * groups} input channels "
                         f"with groups={groups}, x has {in_channels}")
    if min(x.shape) == 0 or min(weight.shape) == 0:
        raise ValueError(f"empty arrays: x {x.shape}, weight {weight.shape}")
    if bias is not None:
        bias = _as_float32("bias", bias, (1,))
        if bias.shape != (out_channels,):
            raise ValueError(f"bias must have shape ({out_channels},), got {bias.shape}")
    s_h, s_w = _int_pair("stride", stride)
    d_h, d_w = _int_pair("dilation", dilation)
    left, right, top, bottom = normalize_padding(padding)
    out_h = max_output_size(height, k_h, s_h, d_h, top, bottom)
    out_w = max_output_size(width, k_w, s_w, d_w, left, right)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"the (dilated) kernel {k_h}x{k_w} (dilation {d_h}x{d_w}) is larger than the "
                         f"padded input {height + top + bottom}x{width + left + right}")
    expected = (batch, out_channels, out_h, out_w)
    if out is None:
        result = np.empty(expected, np.float32)
    else:
        check_array_memory("out", out, _FLOAT32, 0, writable=True)
        if out.shape not in (expected, expected[1:] if single else expected):
            raise ValueError(f"out has shape {out.shape}, expected {expected[1:] if single else expected}")
        if np.may_share_memory(out, x):
            raise ValueError("out shares memory with x")
        result = out.reshape(expected)

    input_desc = NDArrayDescriptor(data_type=_FLOAT32_TYPE, shape=Shape.image_chw(width, height, in_channels))
    output_desc = NDArrayDescriptor(data_type=_FLOAT32_TYPE, shape=Shape.image_chw(out_w, out_h, out_channels))
    weights_desc = NDArrayDescriptor(weight, Shape.convolution_weights_oihw(k_w, k_h, in_per_group, out_channels))
    bias_desc = None if bias is None else NDArrayDescriptor(bias, Shape.vector(out_channels))
    # The arrays outlive the layer, so BNNS can read them in place instead of copying.
    parameters = FilterParameters(flags=Flags.use_client_pointer)
    with ConvolutionLayer(ConvolutionType.standard, input_desc, weights_desc, output_desc, bias_desc,
                          ConvolutionPadding.asymmetric(left, right, top, bottom),
                          ActivationFunction.coerce(activation), groups, (s_w, s_h), (d_w, d_h),
                          parameters, backend=backend) as layer:
        layer.apply(batch, x, result)
    if out is not None:
        return out
    return result[0] if single else result
