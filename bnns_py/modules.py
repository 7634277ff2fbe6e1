"""``Conv2d`` and ``ConvTranspose2d``: numpy-first layers that keep their BNNS filters and return
all three gradients, with PyTorch's argument conventions.

The weight and bias arrays are used in place (BNNS's client-pointer mode), so an optimizer step
such as ``conv.weight -= lr * grads.weight`` changes the next forward pass, as in training with
Swift's ``ConvolutionLayer.applyBackward``. One filter is kept per input height and width.
"""
from typing import NamedTuple, Optional

import numpy as np

from . import _repr
from .activation import ActivationFunction
from .fully_connected import (as_float32, check_linear_operands, linear_output_buffer, make_linear_layer,
                              prepare_linear_input)
from .functional import (ConvSpec, _as_float32, _output_buffer, _prepare_input,
                         transposed_weight_from_bnns, transposed_weight_to_bnns)


class Gradients(NamedTuple):
    """dL/dx, dL/dW (in the module's weight layout) and dL/db (None without bias)."""

    input: np.ndarray
    weight: np.ndarray
    bias: Optional[np.ndarray]


class _ConvModule:
    _transposed = False

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
                 backend=None, output_padding=0):
        weight = _as_float32("weight", weight, (4,))
        if not weight.flags.c_contiguous or not weight.flags.writeable:
            raise ValueError("weight must be a writable C-contiguous array (it is used in place)")
        if bias is not None:
            bias = _as_float32("bias", bias, (1,))
            if not bias.flags.writeable:
                raise ValueError("bias must be writable (it is used in place)")
        self.spec = ConvSpec.from_arguments(self._transposed, weight, bias, stride, padding, dilation,
                                            groups, activation, output_padding)
        self.weight = weight
        self.bias = bias
        self.backend = backend
        self._layers = {}
        # A transposed layer reads its PyTorch-layout weight in place through descriptor strides
        # where the backend honours them, else a copy in BNNS's layout refreshed at each step.
        self._weight_strides = self.spec.torch_weight_strides(backend)
        copy = self._transposed and self._weight_strides is None
        self._bnns_weight = transposed_weight_to_bnns(weight, self.spec.groups) if copy else weight

    def _layer(self, height, width):
        layer = self._layers.get((height, width))
        if layer is None:
            layer = self.spec.make_layer(height, width, self._bnns_weight, self.bias, self.backend,
                                         weight_strides=self._weight_strides)
            self._layers[(height, width)] = layer
        return layer

    def _sync_weight(self):
        """Refresh the BNNS-layout copy of a transposed module's PyTorch-layout weight, if it has one
        (groups > 1, or a backend that reads weight descriptors without strides)."""
        if self._bnns_weight is not self.weight:
            transposed_weight_to_bnns(self.weight, self.spec.groups, out=self._bnns_weight)

    def forward(self, x, out=None):
        """y = act(conv(x, weight) + bias) for ``x`` of shape (N, C, H, W) or (C, H, W)."""
        x, single = _prepare_input(x, self.spec)
        batch, _, height, width = x.shape
        layer = self._layer(height, width)
        result = _output_buffer(out, (batch, self.spec.out_channels) + self.spec.output_hw(height, width), single, x)
        self._sync_weight()
        layer.apply(batch, x, result)
        if out is not None:
            return out
        return result[0] if single else result

    __call__ = forward

    def backward(self, x, y, grad_output, need_input_gradient=True):
        """All gradients of the loss, given the forward input ``x``, output ``y`` and dL/dy.

        Returns ``Gradients(input, weight, bias)``; ``weight`` is in the same layout as
        ``self.weight``, ``bias`` is None when the module has no bias and ``input`` is None when
        ``need_input_gradient`` is False (e.g. for a first layer). The current ``self.weight``
        is differentiated, as BNNS reads client-pointer weights at every call.
        """
        x, single = _prepare_input(x, self.spec)
        batch, _, height, width = x.shape
        layer = self._layer(height, width)
        out_shape = (batch, self.spec.out_channels) + self.spec.output_hw(height, width)
        y = _as_float32("y", y, (3, 4)).reshape(out_shape) if y is not None else None
        grad_output = _as_float32("grad_output", grad_output, (3, 4))
        if grad_output.shape not in (out_shape, out_shape[1:] if single else out_shape):
            raise ValueError(f"grad_output has shape {grad_output.shape}, expected {out_shape}")
        grad_output = grad_output.reshape(out_shape)
        grad_input = np.empty_like(x) if need_input_gradient else None
        grad_weight = np.empty_like(self._bnns_weight)  # in the layout BNNS reads (and writes)
        grad_bias = None if self.bias is None else np.empty_like(self.bias)
        self._sync_weight()
        layer.apply_backward(batch, x, y, grad_output, grad_input, grad_weight, grad_bias)
        if self._bnns_weight is not self.weight:
            grad_weight = transposed_weight_from_bnns(grad_weight, self.spec.groups)
        if grad_input is not None and single:
            grad_input = grad_input[0]
        return Gradients(grad_input, grad_weight, grad_bias)

    def close(self):
        """Destroy every filter this module created. Safe to call twice."""
        layers, self._layers = self._layers, {}
        for layer in layers.values():
            layer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        s = self.spec
        output_padding = f", output_padding={s.output_padding}" if s.transposed else ""
        backend = f", backend={_repr.backend_text(self.backend)!r}" if self.backend is not None else ""
        return (f"{type(self).__name__}({s.in_channels}, {s.out_channels}, kernel={s.kernel}, "
                f"stride={s.stride}, padding={s.padding}, dilation={s.dilation}, groups={s.groups}"
                f"{output_padding}, activation={s.activation!r}, bias={self.bias is not None}{backend})")

    def _repr_html_(self):
        return _repr.key_value_html(type(self).__name__, _repr.conv_module_rows(self))

    # ---- PyTorch interop (bnns_py.interop) ------------------------------------------------------
    @classmethod
    def from_torch(cls, module, backend=None, *, activation=None):
        """The module computing what ``torch.nn.Conv2d`` (for ``Conv2d``) or
        ``torch.nn.ConvTranspose2d`` (for ``ConvTranspose2d``) computes, with copies of its weight
        and bias; ``module`` may also be an ``nn.Sequential`` of an optional ``nn.ZeroPad2d``, the
        convolution and an activation module (fused). See ``ConvolutionLayer.from_torch``."""
        from . import interop
        return interop.conv_module_from_torch(cls, module, backend, activation)

    def to_torch(self):
        """The equivalent torch module with copies of the current weight and bias (an
        ``nn.Sequential`` when padding is asymmetric or there is an activation)."""
        from . import interop
        return interop.conv_module_to_torch(self)


class Conv2d(_ConvModule):
    """A convolution with trainable numpy parameters (weight ``(out, in/groups, kH, kW)``).

    ``forward(x)`` runs BNNS forward; ``backward(x, y, dy)`` returns ``Gradients(input, weight,
    bias)`` through ``BNNSFilterApplyBackwardBatch``. Arguments as ``bnns_py.conv2d``.
    """


class ConvTranspose2d(_ConvModule):
    """A transposed convolution with trainable numpy parameters (weight ``(in, out/groups, kH, kW)``).

    Arguments as ``bnns_py.conv_transpose2d``; see ``Conv2d`` for ``forward``/``backward``.
    """

    _transposed = True




# ---- fully connected ------------------------------------------------------------------------------


class Linear:
    """A fully-connected layer with trainable numpy parameters, as ``torch.nn.Linear``: weight
    ``(out, in)``, optional bias ``(out,)``, then an optional fused activation.

    ``forward(x)`` (``x`` of shape ``(N, in)`` or ``(in,)``) runs BNNS forward;
    ``backward(x, y, dy)`` returns ``Gradients(input, weight, bias)`` through
    ``BNNSFilterApplyBackwardBatch``. The arrays are used in place (client-pointer mode), so
    ``lin.weight -= lr * grads.weight`` changes the next forward pass. Arguments as
    ``bnns_py.linear``.
    """

    def __init__(self, weight, bias=None, activation=None, backend=None):
        weight, bias = check_linear_operands(weight, bias)
        if not weight.flags.writeable:
            raise ValueError("weight must be writable (it is used in place)")
        if bias is not None and not bias.flags.writeable:
            raise ValueError("bias must be writable (it is used in place)")
        self.weight = weight
        self.bias = bias
        self.activation = ActivationFunction.coerce(activation)
        self.backend = backend
        self._fc_layer = None

    @property
    def in_features(self):
        return self.weight.shape[1]

    @property
    def out_features(self):
        return self.weight.shape[0]

    def _layer(self):
        if self._fc_layer is None:
            self._fc_layer = make_linear_layer(self.weight, self.bias, self.activation, self.backend)
        return self._fc_layer

    def forward(self, x, out=None):
        """y = act(x @ weight.T + bias) for ``x`` of shape (N, in) or (in,)."""
        x, single = prepare_linear_input(x, self.in_features)
        layer = self._layer()
        result = linear_output_buffer(out, (x.shape[0], self.out_features), single, x)
        layer.apply(x.shape[0], x, result)
        if out is not None:
            return out
        return result[0] if single else result

    __call__ = forward

    def backward(self, x, y, grad_output, need_input_gradient=True):
        """All gradients of the loss, given the forward input ``x``, output ``y`` and dL/dy.

        Returns ``Gradients(input, weight, bias)``: ``weight`` is ``(out, in)`` and ``bias``
        ``(out,)``, both summed over the batch; ``bias`` is None without a bias and ``input`` is
        None when ``need_input_gradient`` is False. ``y`` may be None with the identity activation.
        """
        x, single = prepare_linear_input(x, self.in_features)
        batch = x.shape[0]
        out_shape = (batch, self.out_features)
        layer = self._layer()
        if y is not None:
            y = as_float32("y", y, (1, 2))
            if y.shape not in (out_shape, out_shape[1:] if single else out_shape):
                raise ValueError(f"y has shape {y.shape}, expected {out_shape[1:] if single else out_shape}")
            y = y.reshape(out_shape)
        grad_output = as_float32("grad_output", grad_output, (1, 2))
        if grad_output.shape not in (out_shape, out_shape[1:] if single else out_shape):
            raise ValueError(f"grad_output has shape {grad_output.shape}, "
                             f"expected {out_shape[1:] if single else out_shape}")
        grad_output = grad_output.reshape(out_shape)
        grad_input = np.empty_like(x) if need_input_gradient else None
        grad_weight = np.empty_like(self.weight)
        grad_bias = None if self.bias is None else np.empty_like(self.bias)
        layer.apply_backward(batch, x, y, grad_output, grad_input, grad_weight, grad_bias)
        if grad_input is not None and single:
            grad_input = grad_input[0]
        return Gradients(grad_input, grad_weight, grad_bias)

    def close(self):
        """Destroy the module's filter. Safe to call twice."""
        layer, self._fc_layer = self._fc_layer, None
        if layer is not None:
            layer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return (f"Linear({self.in_features}, {self.out_features}, activation={self.activation!r}, "
                f"bias={self.bias is not None})")

    def _repr_html_(self):
        return _repr.key_value_html("Linear", _repr.linear_module_rows(self))

    # ---- PyTorch interop (bnns_py.interop) ------------------------------------------------------
    @classmethod
    def from_torch(cls, module, backend=None, *, activation=None):
        """The module computing what ``torch.nn.Linear`` (or ``nn.Sequential(Linear, activation)``)
        computes, with copies of its weight and bias."""
        from . import interop
        return interop.linear_module_from_torch(cls, module, backend, activation)

    def to_torch(self):
        """The equivalent ``nn.Linear`` (``nn.Sequential(Linear, activation)`` with an activation)."""
        from . import interop
        return interop.linear_module_to_torch(self)


__all__ = ["Conv2d", "ConvTranspose2d", "Gradients", "Linear"]
