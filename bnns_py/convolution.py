"""``ConvolutionLayer``, ``ConvolutionType`` and ``ConvolutionPadding`` (Swift's ``BNNS`` mirror)."""
import enum
from typing import Any, ClassVar, Iterable, Optional, Tuple, Union

from . import _repr
from ._checks import int_pair, is_int
from ._ffi import ffi
from .activation import ActivationFunction, check_fusable
from .backend import Backend, get_backend
from .descriptor import NDArrayDescriptor
from .enums import DataLayout, DataType
from .filter_parameters import FilterParameters
from .geometry import effective_kernel, standard_size_ok, transposed_size_ok
from .layer import Operand, WeightedLayer, create_filter


class ConvolutionType(enum.Enum):
    """Swift's ``BNNS.ConvolutionType``."""

    standard = "standard"
    transposed = "transposed"


class ConvolutionPadding:
    """Swift's ``BNNS.ConvolutionPadding``: ``zero``, ``symmetric(x, y)`` or
    ``asymmetric(left, right, up, down)``.

    Make one with the class attribute ``zero`` or the class methods; values are zeros added on
    each side, integers >= 0 (else ValueError). Equal paddings compare equal by :attr:`sides`.

    Examples
    --------
    >>> from bnns_py import ConvolutionPadding
    >>> ConvolutionPadding.symmetric(1, 2).sides
    (1, 1, 2, 2)
    >>> ConvolutionPadding.asymmetric(1, 1, 2, 2) == ConvolutionPadding.symmetric(1, 2)
    True
    """

    __slots__ = ("kind", "values")
    zero: "ClassVar[ConvolutionPadding]"  # set below the class: no padding on any side

    def __init__(self, kind: str, values: Iterable[int]) -> None:
        if kind not in ("symmetric", "asymmetric"):
            raise ValueError(f"padding kind must be 'symmetric' or 'asymmetric', not {kind!r}")
        values = tuple(values)
        for value in values:
            if not is_int(value) or int(value) < 0:
                raise ValueError(f"padding values must be integers >= 0, got {values}")
        self.kind = kind
        self.values = tuple(int(v) for v in values)

    @classmethod
    def symmetric(cls, x: int, y: int) -> "ConvolutionPadding":
        """``x`` zeros left and right, ``y`` zeros above and below."""
        return cls("symmetric", (x, y))

    @classmethod
    def asymmetric(cls, left: int, right: int, up: int, down: int) -> "ConvolutionPadding":
        """Each side separately; ``left`` and ``up`` are next to pixel (0, 0)."""
        return cls("asymmetric", (left, right, up, down))

    @property
    def sides(self) -> Tuple[int, ...]:
        """(left, right, up, down) as BNNS will apply them."""
        if self.kind == "symmetric":
            x, y = self.values
            return (x, x, y, y)
        return self.values

    def fill(self, params: Any) -> None:
        """Write into a C ``BNNSLayerParametersConvolution`` as the Swift overlay does."""
        if self.kind == "symmetric":
            params.x_padding, params.y_padding = self.values
            params.pad = [0, 0, 0, 0]
        else:
            params.x_padding = params.y_padding = 0
            params.pad = list(self.values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConvolutionPadding) and self.sides == other.sides

    def __hash__(self) -> int:
        return hash(self.sides)

    def __repr__(self) -> str:
        if self.kind == "symmetric":
            return "ConvolutionPadding.symmetric(x={}, y={})".format(*self.values)
        return "ConvolutionPadding.asymmetric(left={}, right={}, up={}, down={})".format(*self.values)


ConvolutionPadding.zero = ConvolutionPadding.symmetric(0, 0)

WEIGHT_LAYOUTS = (DataLayout.convolution_weights_oihw, DataLayout.convolution_weights_oihrwr,
                  DataLayout.convolution_weights_iohrwr, DataLayout.convolution_weights_oihw_pack32)
_DATA_TYPES = {  # (backend, type) -> data types accepted for the i/w/o descriptors (and bias)
    ("accelerate", ConvolutionType.standard): {DataType.float32, DataType.float16, DataType.int8, DataType.uint8},
    ("accelerate", ConvolutionType.transposed): {DataType.float32},
    # the portable backend converts other types to float32 around its float32 engine and
    # accumulates in float32; int8/uint8 values are read as data_scale * x + data_bias
    ("portable", ConvolutionType.standard): {DataType.float32, DataType.float16, DataType.bfloat16,
                                             DataType.int8, DataType.uint8},
    ("portable", ConvolutionType.transposed): {DataType.float32},
}
# Output types the portable backend writes: how BNNS would quantize an integer output is not
# documented, so integer outputs are refused there.
PORTABLE_OUTPUT_TYPES = frozenset({DataType.float32, DataType.float16, DataType.bfloat16})


MAX_VALUES = 2 ** 60  # no descriptor may span more values than a 64-bit address space holds as floats


def _check_strides(name: str, descriptor: NDArrayDescriptor) -> None:
    shape = descriptor.shape
    if shape.extent >= MAX_VALUES:
        raise ValueError(f"{name} {shape!r} spans {shape.extent} values, more than memory can hold")
    sizes = shape.fastest_first_sizes
    strides = shape.resolved_strides
    # no two elements may share memory: from the smallest stride up (axes in any order, e.g. a
    # transposed array), each axis must step over everything the smaller ones span
    spanned = 0
    for k in sorted(range(len(sizes)), key=lambda k: strides[k]):
        if sizes[k] == 1:
            continue
        if strides[k] <= spanned:
            raise ValueError(f"{name} strides {strides} overlap: stride[{k}] = {strides[k]} must exceed "
                             f"{spanned}, the last offset of the axes with smaller strides")
        spanned += (sizes[k] - 1) * strides[k]


class ConvolutionLayer(WeightedLayer):
    """A BNNS convolution filter (Swift's ``BNNS.ConvolutionLayer``).

    The arguments mirror Swift's initializer. ``apply`` runs the filter on numpy arrays or
    descriptors, ``apply_backward`` computes gradients; ``close()`` (or leaving a ``with`` block)
    destroys the filter.

    Transposed convolution weights use layout OIHW with ``size = (kW, kH, in/groups, out)`` where
    ``in`` is the input's channel count: memory ``[out][in/groups][kH][kW]``, not flipped (see the
    README's macOS-conformance table).

    Data types (portable backend, standard convolution): input, weights and bias may be float32,
    float16, bfloat16, int8 or uint8, the output float32, float16 or bfloat16, in any combination;
    the products are accumulated in float32 and the result is rounded once to the output type.
    int8/uint8 values are read as ``data_scale * x + data_bias`` (a ``data_scale`` of 0 counts as
    1), using the descriptor's scale and bias given here. bfloat16 arrays are ``uint16`` arrays of
    bfloat16 bit patterns (``bnns_py.enums.float32_to_bfloat16_bits`` /
    ``bfloat16_bits_to_float32``), or ``ml_dtypes.bfloat16`` arrays when ml_dtypes is installed.
    Transposed convolution and ``apply_backward`` take float32 only, as in BNNS.

    Parameters
    ----------
    type : ConvolutionType or str
        ``ConvolutionType.standard`` or ``.transposed``.
    input, output : NDArrayDescriptor
        ``Shape.image_chw`` descriptors of one input and one output image (their data is not
        used); ``output``'s size must be the one the geometry gives.
    weights : NDArrayDescriptor
        A descriptor with data, in an OIHW-family layout (``Shape.convolution_weights_oihw``).
    bias : NDArrayDescriptor, optional
        A vector of ``C_out`` values, with data.
    padding : ConvolutionPadding, optional
        Zero padding (default none).
    activation : ActivationFunction, str or None, optional
        Fused after the bias (default identity).
    group_count : int, optional
        Channel groups.
    stride, dilation_stride : (int, int), optional
        ``(x, y)``, as in Swift (0 is read as 1).
    filter_parameters : FilterParameters, optional
        Flags (e.g. ``Flags.use_client_pointer``: the filter reads the weights in place at
        every call), thread count and allocator.
    backend : str, Backend or None, keyword-only
        ``"accelerate"``, ``"portable"`` or None for ``default_backend_name()``.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, checked in Python before any C call.
    NotImplementedError
        An activation or data type the backend cannot compute.
    BNNSError
        BNNS still refuses to create the filter.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import (ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType,
    ...                      NDArrayDescriptor, Shape, compare, reference)
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    >>> layer = ConvolutionLayer(
    ...     ConvolutionType.standard,
    ...     NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 3)),
    ...     NDArrayDescriptor(w, Shape.convolution_weights_oihw(3, 3, 3, 4)),
    ...     NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 4)),
    ...     padding=ConvolutionPadding.symmetric(1, 1))
    >>> x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    >>> y = np.empty((2, 4, 8, 8), dtype=np.float32)
    >>> layer.apply(2, x, y)
    >>> compare(y, reference.conv2d(x, w, padding=1)).ok
    True
    >>> layer.close()
    """

    def __init__(self, type: Union[ConvolutionType, str], input: NDArrayDescriptor, weights: NDArrayDescriptor,
                 output: NDArrayDescriptor, bias: Optional[NDArrayDescriptor] = None,
                 padding: ConvolutionPadding = ConvolutionPadding.zero,
                 activation: Union[ActivationFunction, str, None] = ActivationFunction.identity,
                 group_count: int = 1, stride: Tuple[int, int] = (1, 1), dilation_stride: Tuple[int, int] = (1, 1),
                 filter_parameters: Optional[FilterParameters] = None, *,
                 backend: Union[str, Backend, None] = None) -> None:
        backend = get_backend(backend)
        type = ConvolutionType(type)
        activation = ActivationFunction.coerce(activation)
        if not isinstance(padding, ConvolutionPadding):
            raise TypeError(f"padding must be a ConvolutionPadding, not {padding!r}")
        if filter_parameters is not None and not isinstance(filter_parameters, FilterParameters):
            raise TypeError(f"filter_parameters must be FilterParameters or None, not {filter_parameters!r}")
        stride = int_pair("stride", stride, 0)
        dilation_stride = int_pair("dilation_stride", dilation_stride, 0)
        if not is_int(group_count) or group_count < 0:
            raise ValueError(f"group_count must be an integer >= 0, got {group_count!r}")
        groups = max(int(group_count), 1)
        self._check(backend, type, input, weights, output, bias, padding, activation, groups,
                    stride, dilation_stride)

        params = ffi.new("BNNSLayerParametersConvolution *")
        params.i_desc = input.c_descriptor[0]
        params.w_desc = weights.c_descriptor[0]
        params.o_desc = output.c_descriptor[0]
        if bias is not None:
            params.bias = bias.c_descriptor[0]
        activation.fill(params.activation)
        params.x_stride, params.y_stride = stride
        params.x_dilation_stride, params.y_dilation_stride = dilation_stride
        padding.fill(params)
        params.groups = groups
        c_filter_parameters = ffi.NULL if filter_parameters is None else filter_parameters.c_parameters
        function = ("BNNSFilterCreateLayerConvolution" if type is ConvolutionType.standard
                    else "BNNSFilterCreateLayerTransposedConvolution")
        handle = create_filter(backend, function, params, c_filter_parameters,
                               keepalive=(weights, bias, filter_parameters))
        super().__init__(handle, backend, input, output, weights, bias, activation, filter_parameters)
        self.type = type
        self.padding = padding
        self.group_count = groups
        self.stride = stride
        self.dilation_stride = dilation_stride

    # ---- PyTorch interop and notebook display (bnns_py.interop, bnns_py._repr) ---------------------
    @classmethod
    def from_torch(cls, module: Any, input_shape: Optional[Tuple[int, ...]] = None, backend: Union[str, Backend, None] = None, *,
                   activation: Union[ActivationFunction, str, None] = None, filter_parameters: Optional[FilterParameters] = None) -> Any:
        """The layer computing what a ``torch.nn`` module computes, for inputs of ``input_shape``.

        Weights and bias are copied to float32 arrays the layer owns; the layer reads them in
        place (``Flags.use_client_pointer``) unless ``filter_parameters`` is given. String padding
        ``'same'``/``'valid'``, groups, dilation and stride carry over. Needs PyTorch (imported
        here, not by ``import bnns_py``).

        Parameters
        ----------
        module : torch.nn.Module
            ``nn.Conv2d`` (a standard layer), ``nn.ConvTranspose2d`` (a transposed layer;
            ``output_padding`` becomes a larger output), ``nn.Linear`` (a
            ``FullyConnectedLayer``), or an ``nn.Sequential`` of an optional leading
            ``nn.ZeroPad2d``, one of those and an optional activation module (fused).
        input_shape : tuple of int, optional
            ``(C, H, W)`` or ``(N, C, H, W)``; not needed for ``nn.Linear``.
        backend : str, Backend or None, optional
            ``"accelerate"``, ``"portable"`` or None for ``default_backend_name()``.
        activation : ActivationFunction, str or None, keyword-only
            An activation to fuse, when ``module`` has none.
        filter_parameters : FilterParameters, keyword-only
            Passed to the layer (the weights are then not read in place unless its flags say so).

        Returns
        -------
        ConvolutionLayer or FullyConnectedLayer

        Raises
        ------
        ImportError
            PyTorch is not installed.
        TypeError, ValueError
            A module of another kind, a missing ``input_shape``, or settings BNNS cannot express
            (a ``padding_mode`` other than ``'zeros'`` with non-zero padding).
        """
        from . import interop
        return interop.convolution_layer_from_torch(module, input_shape, backend, activation, filter_parameters)

    def to_torch(self) -> Any:
        """The equivalent torch module (float32, CPU), with copies of the current weights and bias.

        Works on a closed layer too (it reads the descriptors, not the filter). Needs PyTorch.

        Returns
        -------
        torch.nn.Module
            ``nn.Conv2d`` / ``nn.ConvTranspose2d``, or an ``nn.Sequential`` when the layer needs
            more: ``nn.ZeroPad2d`` first for asymmetric padding, and the activation module for a
            fused activation other than identity.

        Raises
        ------
        ValueError
            A fused activation ``torch.nn`` has no module for.
        ImportError
            PyTorch is not installed.
        """
        from . import interop
        return interop.convolution_layer_to_torch(self)

    def __repr__(self) -> str:
        return _repr.safe(self, _repr.layer_text, _repr.convolution_layer_parts)

    def _repr_html_(self) -> str:
        return _repr.safe(self, _repr.layer_html, _repr.convolution_layer_parts)

    def _check_backward_preconditions(self, input: Optional[Operand], output: Optional[Operand],
                                      weights_gradient: Optional[Operand]) -> None:
        super()._check_backward_preconditions(input, output, weights_gradient)
        if self.type is ConvolutionType.transposed and self.group_count > 1:
            raise ValueError("BNNS does not compute gradients of a grouped transposed convolution")

    @staticmethod
    def _check(backend: Backend, type: ConvolutionType, input: NDArrayDescriptor, weights: NDArrayDescriptor,
               output: NDArrayDescriptor, bias: Optional[NDArrayDescriptor], padding: ConvolutionPadding,
               activation: ActivationFunction, groups: int, stride: Tuple[int, int],
               dilation: Tuple[int, int]) -> None:
        for name, descriptor in (("input", input), ("weights", weights), ("output", output)):
            if not isinstance(descriptor, NDArrayDescriptor):
                raise TypeError(f"{name} must be an NDArrayDescriptor, not {type_name(descriptor)}")
        for name, descriptor in (("input", input), ("output", output)):
            if descriptor.layout != DataLayout.image_chw:
                raise ValueError(f"{name} layout must be image_chw, not {descriptor.layout.name}")
        if weights.layout not in WEIGHT_LAYOUTS:
            raise ValueError(f"weights layout must be one of {[l.name for l in WEIGHT_LAYOUTS]}, "
                             f"not {weights.layout.name}")
        if weights.data is None:
            raise ValueError("weights descriptor has no data")
        allowed = _DATA_TYPES[(backend.name, type)]
        for name, descriptor in (("input", input), ("weights", weights), ("output", output)):
            if descriptor.data_type not in allowed:
                raise TypeError(f"{name} data type {descriptor.data_type.name} is not supported for "
                                f"{type.value} convolution on the {backend.name} backend; "
                                f"supported: {sorted(t.name for t in allowed)}")
            _check_strides(name, descriptor)
        if backend.is_portable and output.data_type not in PORTABLE_OUTPUT_TYPES:
            raise TypeError(f"output data type {output.data_type.name} is not supported on the portable backend: "
                            f"it writes {sorted(t.name for t in PORTABLE_OUTPUT_TYPES)} outputs (how BNNS "
                            "quantizes a convolution output to integers is not documented)")
        in_w, in_h, in_c = input.shape.sizes
        out_w, out_h, out_c = output.shape.sizes
        k_w, k_h, w_in, w_out = weights.shape.sizes
        if weights.layout == DataLayout.convolution_weights_iohrwr:
            if groups > 1:
                raise ValueError("grouped convolution needs OIHW or OIHrWr weights, not IOHrWr")
            w_in, w_out = w_out, w_in
        if groups > 1 and (in_c % groups or out_c % groups):
            raise ValueError(f"group_count {groups} must divide input channels {in_c} "
                             f"and output channels {out_c}")
        if (w_in, w_out) != (in_c // groups, out_c):
            raise ValueError(f"weights describe {w_in} input channels per group and {w_out} output "
                             f"channels; the layer needs {in_c // groups} (= {in_c} / {groups} groups) "
                             f"and {out_c}")
        left, right, up, down = padding.sides
        rule = standard_size_ok if type is ConvolutionType.standard else transposed_size_ok
        for axis, i, o, k, s, d, pb, pa in (("x (width)", in_w, out_w, k_w, stride[0], dilation[0], left, right),
                                             ("y (height)", in_h, out_h, k_h, stride[1], dilation[1], up, down)):
            if not rule(i, o, k, s, d, pb, pa):
                k_eff = effective_kernel(k, d)
                if type is ConvolutionType.standard:
                    need = (f"input {i} + padding {pb}+{pa} >= stride {max(s, 1)} * (output {o} - 1) "
                            f"+ dilated kernel {k_eff}")
                else:
                    need = (f"output {o} + padding {pb}+{pa} >= stride {max(s, 1)} * (input {i} - 1) "
                            f"+ dilated kernel {k_eff}")
                raise ValueError(f"{type.value} convolution sizes do not fit along {axis}: BNNS needs {need}")
        if bias is not None:
            if not isinstance(bias, NDArrayDescriptor):
                raise TypeError(f"bias must be an NDArrayDescriptor or None, not {type_name(bias)}")
            if bias.layout != DataLayout.vector or bias.shape.sizes != (out_c,):
                raise ValueError(f"bias must be a vector of {out_c} values, got {bias.shape!r}")
            if bias.data is None:
                raise ValueError("bias descriptor has no data (pass bias=None for no bias)")
            if backend.is_portable and bias.data_type not in allowed:
                raise TypeError(f"bias data type {bias.data_type.name} is not supported for {type.value} "
                                f"convolution on the portable backend; supported: {sorted(t.name for t in allowed)}")
        check_fusable(backend, activation)


def type_name(value: object) -> str:
    return type(value).__name__
