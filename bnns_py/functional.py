"""numpy-first convolution with PyTorch's argument conventions, for scripts and notebooks.

``conv2d`` and ``conv_transpose2d`` take NCHW (or CHW) float32 arrays and weights in PyTorch's
layouts, build a BNNS filter on the chosen backend, run it and destroy it. Padding is an int,
``(pad_h, pad_w)`` or ``(left, right, top, bottom)``. ``Conv2d``/``ConvTranspose2d`` keep the
filter and also return gradients.
"""
from dataclasses import dataclass

import numpy as np

from ._checks import int_pair, is_int
from .activation import ActivationFunction
from .convolution import ConvolutionLayer, ConvolutionPadding, ConvolutionType
from .descriptor import NDArrayDescriptor, check_array_memory
from .enums import DataType, Flags
from .filter_parameters import FilterParameters
from .geometry import max_output_size, transposed_output_size
from .shape import Shape

_FLOAT32 = np.dtype(np.float32)
_FLOAT32_TYPE = DataType.float32


def normalize_padding(padding):
    """PyTorch-style padding (int, (pad_h, pad_w) or (left, right, top, bottom)) -> 4-tuple."""
    if is_int(padding):
        padding = (padding,)
    values = tuple(padding) if isinstance(padding, (tuple, list)) else None
    if values is None or len(values) not in (1, 2, 4):
        raise TypeError(f"padding must be an int, (pad_h, pad_w) or (left, right, top, bottom); got {padding!r}")
    for v in values:
        if not is_int(v) or v < 0:
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


def _check_groups(groups, channels, what):
    if not is_int(groups) or groups < 1:
        raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
    if channels % groups:
        raise ValueError(f"groups={groups} must divide the {channels} {what} channels")
    return int(groups)


@dataclass(frozen=True)
class ConvSpec:
    """A convolution in PyTorch terms, independent of the input's spatial size."""

    transposed: bool
    in_channels: int
    out_channels: int
    kernel: tuple          # (kH, kW)
    stride: tuple          # (sh, sw)
    padding: tuple         # (left, right, top, bottom)
    dilation: tuple        # (dh, dw)
    groups: int
    output_padding: tuple  # (oph, opw), transposed only
    activation: ActivationFunction

    @classmethod
    def from_arguments(cls, transposed, weight, bias, stride, padding, dilation, groups, activation,
                       output_padding=0):
        """Validate PyTorch-style arguments (weight already a float32 array)."""
        if transposed:  # weight (in, out/groups, kH, kW)
            in_channels, out_per_group, k_h, k_w = weight.shape
            groups = _check_groups(groups, in_channels, "input")
            out_channels = out_per_group * groups
        else:  # weight (out, in/groups, kH, kW)
            out_channels, in_per_group, k_h, k_w = weight.shape
            groups = _check_groups(groups, out_channels, "output")
            in_channels = in_per_group * groups
        if min(weight.shape) == 0:
            raise ValueError(f"weight is empty: shape {weight.shape}")
        if bias is not None and bias.shape != (out_channels,):
            raise ValueError(f"bias must have shape ({out_channels},), got {bias.shape}")
        stride = int_pair("stride", stride, 1)
        dilation = int_pair("dilation", dilation, 1)
        out_pad = (0, 0)
        if transposed:
            out_pad = int_pair("output_padding", output_padding, 0)
            for op, s, d, axis in zip(out_pad, stride, dilation, ("height", "width")):
                if op >= max(s, d):
                    raise ValueError(f"output_padding {op} along {axis} must be smaller than stride {s} "
                                     f"or dilation {d} (PyTorch's rule)")
        return cls(transposed, in_channels, out_channels, (k_h, k_w), stride, normalize_padding(padding),
                   dilation, groups, out_pad, ActivationFunction.coerce(activation))

    def output_hw(self, height, width):
        """Output (height, width) for an input of (height, width); raises if it would be empty."""
        left, right, top, bottom = self.padding
        (k_h, k_w), (s_h, s_w), (d_h, d_w) = self.kernel, self.stride, self.dilation
        if self.transposed:
            out_h = transposed_output_size(height, k_h, s_h, d_h, top, bottom, self.output_padding[0])
            out_w = transposed_output_size(width, k_w, s_w, d_w, left, right, self.output_padding[1])
            if out_h < 1 or out_w < 1:
                raise ValueError(f"padding {self.padding} removes the whole {out_h}x{out_w} output")
        else:
            out_h = max_output_size(height, k_h, s_h, d_h, top, bottom)
            out_w = max_output_size(width, k_w, s_w, d_w, left, right)
            if out_h < 1 or out_w < 1:
                raise ValueError(f"the (dilated) kernel {k_h}x{k_w} (dilation {d_h}x{d_w}) is larger than the "
                                 f"padded input {height + top + bottom}x{width + left + right}")
        return out_h, out_w

    def bnns_weight_shape(self):
        k_h, k_w = self.kernel
        return Shape.convolution_weights_oihw(k_w, k_h, self.in_channels // self.groups, self.out_channels)

    def make_layer(self, height, width, bnns_weight, bias, backend, client_pointer=True):
        """A ConvolutionLayer for inputs of (height, width), reading ``bnns_weight`` (BNNS OIHW)."""
        out_h, out_w = self.output_hw(height, width)
        (s_h, s_w), (d_h, d_w) = self.stride, self.dilation
        parameters = FilterParameters(flags=Flags.use_client_pointer if client_pointer else Flags.none)
        return ConvolutionLayer(
            ConvolutionType.transposed if self.transposed else ConvolutionType.standard,
            NDArrayDescriptor(data_type=_FLOAT32_TYPE, shape=Shape.image_chw(width, height, self.in_channels)),
            NDArrayDescriptor(bnns_weight, self.bnns_weight_shape()),
            NDArrayDescriptor(data_type=_FLOAT32_TYPE, shape=Shape.image_chw(out_w, out_h, self.out_channels)),
            None if bias is None else NDArrayDescriptor(bias, Shape.vector(self.out_channels)),
            ConvolutionPadding.asymmetric(*self.padding), self.activation, self.groups,
            (s_w, s_h), (d_w, d_h), parameters, backend=backend)


def transposed_weight_to_bnns(weight, groups):
    """PyTorch ``(in, out/groups, kH, kW)`` -> BNNS transposed OIHW memory ``[out][in/groups][kH][kW]``."""
    in_channels, out_per_group, k_h, k_w = weight.shape
    grouped = weight.reshape(groups, in_channels // groups, out_per_group, k_h, k_w)
    return np.ascontiguousarray(grouped.transpose(0, 2, 1, 3, 4)).reshape(
        groups * out_per_group, in_channels // groups, k_h, k_w)


def transposed_weight_from_bnns(bnns_weight, groups):
    """Inverse of ``transposed_weight_to_bnns``."""
    out_channels, in_per_group, k_h, k_w = bnns_weight.shape
    grouped = bnns_weight.reshape(groups, out_channels // groups, in_per_group, k_h, k_w)
    return np.ascontiguousarray(grouped.transpose(0, 2, 1, 3, 4)).reshape(
        groups * in_per_group, out_channels // groups, k_h, k_w)


def _prepare_input(x, spec):
    x = _as_float32("x", x, (3, 4))
    single = x.ndim == 3
    if single:
        x = x[np.newaxis]
    if x.shape[1] != spec.in_channels:
        raise ValueError(f"x has {x.shape[1]} channels, the weights expect {spec.in_channels}")
    if min(x.shape) == 0:
        raise ValueError(f"x is empty: shape {x.shape}")
    return x, single


def _output_buffer(out, expected, single, x):
    if out is None:
        return np.empty(expected, np.float32)
    check_array_memory("out", out, _FLOAT32, 0, writable=True)
    wanted = expected[1:] if single else expected
    if out.shape != wanted:
        raise ValueError(f"out has shape {out.shape}, expected {wanted}")
    if np.may_share_memory(out, x):
        raise ValueError("out shares memory with x")
    return out.reshape(expected)


def _run(transposed, x, weight, bias, stride, padding, dilation, groups, activation, backend, out,
         output_padding=0):
    weight = _as_float32("weight", weight, (4,))
    bias = None if bias is None else _as_float32("bias", bias, (1,))
    spec = ConvSpec.from_arguments(transposed, weight, bias, stride, padding, dilation, groups,
                                   activation, output_padding)
    x, single = _prepare_input(x, spec)
    batch, _, height, width = x.shape
    expected = (batch, spec.out_channels) + spec.output_hw(height, width)
    result = _output_buffer(out, expected, single, x)
    bnns_weight = transposed_weight_to_bnns(weight, spec.groups) if transposed else weight
    # The arrays outlive the layer, so BNNS reads them in place instead of copying.
    with spec.make_layer(height, width, bnns_weight, bias, backend) as layer:
        layer.apply(batch, x, result)
    if out is not None:
        return out
    return result[0] if single else result


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           backend=None, out=None):
    """2-D convolution (cross-correlation) of ``x`` with ``weight``, computed by BNNS.

    Args:
        x: float32 array ``(N, C_in, H, W)`` or ``(C_in, H, W)`` (non-contiguous input is copied).
        weight: float32 array ``(C_out, C_in / groups, kH, kW)``.
        bias: optional float32 array ``(C_out,)``.
        stride, dilation: int or ``(sh, sw)``.
        padding: int, ``(pad_h, pad_w)`` or ``(left, right, top, bottom)``.
        groups: number of groups (``C_in`` for depthwise).
        activation: None, a name (``"relu"``, ``"sigmoid"``, ...) or an ``ActivationFunction``,
            applied after the bias.
        backend: ``"accelerate"``, ``"portable"`` or None (default backend).
        out: optional float32 C-contiguous array of the output shape to write into.

    Returns:
        ``(N, C_out, H_out, W_out)`` (or ``(C_out, H_out, W_out)`` for 3-D ``x``), with PyTorch's
        output size ``(H + top + bottom - dH*(kH-1) - 1) // sH + 1``.
    """
    return _run(False, x, weight, bias, stride, padding, dilation, groups, activation, backend, out)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, activation=None, backend=None, out=None):
    """2-D transposed convolution with PyTorch's conventions, computed by BNNS.

    ``weight`` is ``(C_in, C_out / groups, kH, kW)`` as in ``torch.nn.functional.conv_transpose2d``;
    it is rearranged into BNNS's transposed OIHW layout. Output size per axis:
    ``(in - 1)*stride - pad_before - pad_after + dilation*(k - 1) + 1 + output_padding``.
    Other arguments as in ``conv2d``.
    """
    return _run(True, x, weight, bias, stride, padding, dilation, groups, activation, backend, out,
                output_padding)
