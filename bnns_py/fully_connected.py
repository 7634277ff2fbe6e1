"""``FullyConnectedLayer``: Swift's ``BNNS.FullyConnectedLayer``.

A fully-connected layer computes ``y[o] = act(bias[o] + sum_i W(o, i) * x[i])``. Its weights are
an ``out x in`` row-major matrix, PyTorch's ``nn.Linear.weight`` memory, described either as
``Shape.matrix_row_major(in, out)`` (``size = {columns, rows}``) or as
``Shape.matrix_first_major(out, in)``; both mean ``W(o, i)`` at ``i*stride[0] + o*stride[1]``.
"""
from typing import Any, Optional, Tuple, Union

from . import _repr
from ._ffi import ffi
from .activation import ActivationFunction, check_fusable
from .backend import Backend, get_backend
from .descriptor import NDArrayDescriptor
from .enums import DataLayout, DataType
from .filter_parameters import FilterParameters
from .layer import WeightedLayer, create_filter

VECTOR_LAYOUTS = (DataLayout.vector, DataLayout.one_d_last_major, DataLayout.one_d_first_major)
MATRIX_LAYOUTS = (DataLayout.matrix_row_major, DataLayout.matrix_first_major)
# Data types the Swift documentation gives for a fully-connected forward pass (input and weights
# of one type, floating-point output); the portable backend computes in Float32 only.
_ACCELERATE_IN_TYPES = {DataType.float32, DataType.float16, DataType.int8, DataType.int16}
_ACCELERATE_OUT_TYPES = {DataType.float32, DataType.float16}


def weight_matrix_sizes(weights: NDArrayDescriptor) -> Tuple[int, ...]:
    """(in, out) of a fully-connected weight descriptor (matrix_row_major or matrix_first_major)."""
    if weights.layout == DataLayout.matrix_row_major:
        return weights.shape.sizes          # {columns, rows} = {in, out}
    out_size, in_size = weights.shape.sizes  # first major: {out, in}
    return in_size, out_size


class FullyConnectedLayer(WeightedLayer):
    """A BNNS fully-connected filter (Swift's ``BNNS.FullyConnectedLayer``; Swift derives it from
    ``ConvolutionLayer``, here both derive from ``WeightedLayer``, which holds what they share).

    ``apply``/``apply_backward``: inputs are ``(N, in)`` arrays (or ``(in,)`` for one), outputs
    ``(N, out)``, and ``weights_gradient`` comes out in the weights' layout.

    Parameters
    ----------
    input, output : NDArrayDescriptor
        Vector descriptors, ``Shape.vector(in)`` and ``Shape.vector(out)`` (their data is not
        used).
    weights : NDArrayDescriptor
        A descriptor with data: ``Shape.matrix_row_major(in, out)`` or
        ``Shape.matrix_first_major(out, in)`` over a row-major ``(out, in)`` array (PyTorch's
        ``nn.Linear.weight``).
    bias : NDArrayDescriptor, optional
        A vector of ``out`` values, with data.
    activation : ActivationFunction, str or None, optional
        Fused after the bias (default identity).
    filter_parameters, backend : optional
        As for ``ConvolutionLayer`` (``backend`` keyword-only).

    Raises
    ------
    TypeError, ValueError, NotImplementedError, BNNSError
        As for ``ConvolutionLayer``: invalid arguments (checked before any C call), what the
        backend cannot compute, or a filter BNNS refuses to create.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import DataType, FullyConnectedLayer, NDArrayDescriptor, Shape
    >>> w = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.0]], dtype=np.float32)   # (out, in)
    >>> with FullyConnectedLayer(
    ...         NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(3)),
    ...         NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(2)),
    ...         NDArrayDescriptor(w, Shape.matrix_row_major(3, 2))) as layer:
    ...     y = np.empty((1, 2), dtype=np.float32)
    ...     layer.apply(1, np.ones((1, 3), dtype=np.float32), y)
    >>> y.tolist()
    [[6.0, -1.0]]
    """

    def __init__(self, input: NDArrayDescriptor, output: NDArrayDescriptor, weights: NDArrayDescriptor,
                 bias: Optional[NDArrayDescriptor] = None,
                 activation: Union[ActivationFunction, str, None] = ActivationFunction.identity,
                 filter_parameters: Optional[FilterParameters] = None, *,
                 backend: Union[str, Backend, None] = None) -> None:
        backend = get_backend(backend)
        activation = ActivationFunction.coerce(activation)
        if filter_parameters is not None and not isinstance(filter_parameters, FilterParameters):
            raise TypeError(f"filter_parameters must be FilterParameters or None, not {filter_parameters!r}")
        self._check_fully_connected(backend, input, output, weights, bias, activation)

        params = ffi.new("BNNSLayerParametersFullyConnected *")
        params.i_desc = input.c_descriptor[0]
        params.w_desc = weights.c_descriptor[0]
        params.o_desc = output.c_descriptor[0]
        if bias is not None:
            params.bias = bias.c_descriptor[0]
        activation.fill(params.activation)
        c_filter_parameters = ffi.NULL if filter_parameters is None else filter_parameters.c_parameters
        handle = create_filter(backend, "BNNSFilterCreateLayerFullyConnected", params, c_filter_parameters,
                               keepalive=(weights, bias, filter_parameters))
        super().__init__(handle, backend, input, output, weights, bias, activation, filter_parameters)

    @property
    def input_size(self) -> int:
        return self.input_descriptor.shape.sizes[0]

    @property
    def output_size(self) -> int:
        return self.output_descriptor.shape.sizes[0]

    @staticmethod
    def _check_fully_connected(backend: Backend, input: NDArrayDescriptor, output: NDArrayDescriptor,
                               weights: NDArrayDescriptor, bias: Optional[NDArrayDescriptor],
                               activation: ActivationFunction) -> None:
        for name, descriptor in (("input", input), ("weights", weights), ("output", output)):
            if not isinstance(descriptor, NDArrayDescriptor):
                raise TypeError(f"{name} must be an NDArrayDescriptor, not {type(descriptor).__name__}")
        for name, descriptor in (("input", input), ("output", output)):
            if descriptor.layout not in VECTOR_LAYOUTS:
                raise ValueError(f"{name} must be a vector descriptor (Shape.vector(n)), not "
                                 f"{descriptor.shape!r}")
        if weights.layout not in MATRIX_LAYOUTS:
            raise ValueError(f"weights layout must be matrix_row_major (in, out) or matrix_first_major "
                             f"(out, in), not {weights.layout.name}")
        if weights.data is None:
            raise ValueError("weights descriptor has no data")
        in_size, out_size = input.shape.sizes[0], output.shape.sizes[0]
        w_in, w_out = weight_matrix_sizes(weights)
        if (w_in, w_out) != (in_size, out_size):
            wanted = ((in_size, out_size) if weights.layout == DataLayout.matrix_row_major
                      else (out_size, in_size))
            raise ValueError(f"weights {weights.shape!r} describe {w_in} inputs and {w_out} outputs; the "
                             f"layer maps {in_size} inputs to {out_size} outputs, so its {weights.layout.name} "
                             f"sizes must be {wanted}")
        if backend.is_portable:
            for name, descriptor in (("input", input), ("weights", weights), ("output", output)):
                if descriptor.data_type != DataType.float32:
                    raise TypeError(f"{name} data type {descriptor.data_type.name} is not supported by the "
                                    "portable backend yet (float32 only)")
        else:
            for name, descriptor in (("input", input), ("weights", weights)):
                if descriptor.data_type not in _ACCELERATE_IN_TYPES:
                    raise TypeError(f"{name} data type {descriptor.data_type.name} is not supported for a "
                                    f"fully-connected layer; supported: "
                                    f"{sorted(t.name for t in _ACCELERATE_IN_TYPES)}")
            if input.data_type != weights.data_type:
                raise TypeError(f"input ({input.data_type.name}) and weights ({weights.data_type.name}) "
                                "must have the same data type")
            if output.data_type not in _ACCELERATE_OUT_TYPES:
                raise TypeError(f"output data type {output.data_type.name} must be floating point")
        # (convolution's _check_strides reads sizes in descriptor order, which is wrong for first-major
        # layouts; a matrix's rows only need to be at least a row apart)
        s_in, s_out = weights.shape.resolved_strides
        if s_out < s_in * in_size:
            raise ValueError(f"weights strides {weights.shape.strides} overlap: the stride between outputs "
                             f"({s_out}) must be >= {in_size} inputs * the stride between inputs ({s_in}) = "
                             f"{s_in * in_size}")
        if bias is not None:
            if not isinstance(bias, NDArrayDescriptor):
                raise TypeError(f"bias must be an NDArrayDescriptor or None, not {type(bias).__name__}")
            if bias.layout not in VECTOR_LAYOUTS or bias.shape.sizes != (out_size,):
                raise ValueError(f"bias must be a vector of {out_size} values (the output size), got {bias.shape!r}")
            if bias.data is None:
                raise ValueError("bias descriptor has no data (pass bias=None for no bias)")
            if bias.data_type != DataType.float32 and backend.is_portable:
                raise TypeError(f"bias data type must be float32 on the portable backend, not {bias.data_type.name}")
        check_fusable(backend, activation)

    # ---- PyTorch interop and notebook display (bnns_py.interop, bnns_py._repr) ---------------------
    @classmethod
    def from_torch(cls, module: Any, input_shape: Optional[Tuple[int, ...]] = None, backend: Union[str, Backend, None] = None, *,
                   activation: Union[ActivationFunction, str, None] = None, filter_parameters: Optional[FilterParameters] = None) -> Any:
        """The layer computing what ``torch.nn.Linear`` (or ``nn.Sequential(Linear, activation)``)
        computes (needs PyTorch).

        Weights and bias are copied to float32 arrays the layer owns and reads in place
        (``Flags.use_client_pointer``) unless ``filter_parameters`` is given.

        Parameters
        ----------
        module : torch.nn.Module
            ``nn.Linear`` or ``nn.Sequential(Linear, activation)`` (fused).
        input_shape : tuple of int, optional
            If given, must end with ``in_features``.
        backend, activation, filter_parameters : optional
            As for ``ConvolutionLayer.from_torch``.

        Returns
        -------
        FullyConnectedLayer

        Raises
        ------
        ImportError
            PyTorch is not installed.
        TypeError, ValueError
            A module of another kind, or an ``input_shape`` that does not fit.
        """
        from . import interop
        return interop.fully_connected_from_torch(module, input_shape, backend, activation, filter_parameters)

    def to_torch(self) -> Any:
        """The equivalent torch module (float32, CPU), with copies of the current weights and bias.

        Returns
        -------
        torch.nn.Module
            ``nn.Linear``, or ``nn.Sequential(Linear, activation)`` for a fused activation other
            than identity.

        Raises
        ------
        ValueError, ImportError
            As for ``ConvolutionLayer.to_torch``.
        """
        from . import interop
        return interop.fully_connected_to_torch(self)

    def __repr__(self) -> str:
        return _repr.safe(self, _repr.layer_text, _repr.fully_connected_parts)

    def _repr_html_(self) -> str:
        return _repr.safe(self, _repr.layer_html, _repr.fully_connected_parts)


__all__ = ["FullyConnectedLayer"]
