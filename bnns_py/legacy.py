"""The legacy BNNS layer API (macOS 10.12), for code written against it.

**Apple deprecated this API in macOS 11** in favour of the ``BNNSLayerParameters*`` structs
(``ConvolutionLayer``, ``FullyConnectedLayer``); new code should use those. The legacy calls,
``BNNSFilterCreateConvolutionLayer`` and ``BNNSFilterCreateFullyConnectedLayer``, are wrapped here
thinly:

- ``ImageStackDescriptor``: ``channels`` images of ``width x height``, pixel (c, x, y) at
  ``x + row_stride*y + image_stride*c`` (``row_stride >= width``,
  ``image_stride >= row_stride*height``). It has no data: arrays are passed to ``apply``.
- ``VectorDescriptor``: ``size`` values, component i at ``i``.
- ``LegacyConvolutionLayer``: weights ``(out, in, kH, kW)``, optional bias ``(out,)``, strides
  and symmetric padding; the sizes must satisfy the legacy **equality**
  ``in + 2*padding == stride*(out - 1) + k`` on both axes (the macOS 11 API's relaxed rule does
  not apply here).
- ``LegacyFullyConnectedLayer``: weights ``(out, in)``, ``W(o, i)`` at ``i + o*in``.

``apply(batch_size, input, output)`` takes C-contiguous numpy arrays holding ``batch_size``
items: ``(N, C, H, W)`` images (``(C, H, W)`` for one) for a packed stack, ``(N, size)`` vectors
(``(size,)`` for one); a stack with row or image gaps takes its storage, one item every
``image_stride * channels`` values, flat or with ``N`` as the leading dimension.
``ImageStackDescriptor.to_buffer`` and ``from_buffer`` convert between that layout and
``(N, C, H, W)`` arrays. Only the forward pass is
offered: Apple documents ``BNNSFilterApplyBackwardBatch`` for the macOS 11 layer API.
"""
from typing import Any, Iterable, List, NoReturn, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._checks import is_int
from ._ffi import ffi
from .activation import ActivationFunction, check_fusable
from .backend import Backend, get_backend
from .descriptor import NDArrayDescriptor, check_array_memory
from .enums import DataType
from .filter_parameters import FilterParameters
from .layer import UnaryLayer, create_filter
from .shape import Shape


def _size(name: str, value: Any, minimum: int = 1) -> int:
    if not is_int(value) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _data_type(data_type: Union[DataType, int]) -> DataType:
    data_type = DataType(data_type)
    if data_type.numpy_dtype is None:
        raise TypeError(f"data type {data_type.name} has no numpy equivalent; the legacy wrappers pass numpy arrays")
    return data_type


class ImageStackDescriptor:
    """Python mirror of ``BNNSImageStackDescriptor`` (legacy API, deprecated in macOS 11).

    Parameters
    ----------
    width, height, channels : int
        The image size, each >= 1.
    row_stride : int, optional
        Values from one row to the next; default ``width`` (packed), at least ``width``.
    image_stride : int, optional
        Values from one channel to the next; default ``row_stride * height``, at least that.
    data_type : DataType or int, optional
        The element type (one with a numpy equivalent); float32 by default.
    data_scale, data_bias : float, optional
        Convert integer data only (BNNS ignores them for floats).

    Raises
    ------
    ValueError
        Sizes below 1, or strides smaller than the packed ones.
    TypeError
        A data type without a numpy equivalent.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import ImageStackDescriptor
    >>> stack = ImageStackDescriptor(4, 2, 3, row_stride=5)
    >>> stack.buffer_shape(2), stack.item_stride
    ((60,), 30)
    >>> images = np.arange(24, dtype=np.float32).reshape(1, 3, 2, 4)
    >>> np.array_equal(stack.from_buffer(stack.to_buffer(images)), images)
    True
    """

    __slots__ = ("width", "height", "channels", "row_stride", "image_stride", "data_type", "data_scale",
                 "data_bias", "_c")

    def __init__(self, width: int, height: int, channels: int, row_stride: Optional[int] = None,
                 image_stride: Optional[int] = None, data_type: Union[DataType, int] = DataType.float32,
                 data_scale: float = 1.0, data_bias: float = 0.0) -> None:
        self.width = _size("width", width)
        self.height = _size("height", height)
        self.channels = _size("channels", channels)
        self.row_stride = self.width if row_stride is None else _size("row_stride", row_stride)
        if self.row_stride < self.width:
            raise ValueError(f"row_stride {self.row_stride} must be >= width {self.width}")
        minimum = self.row_stride * self.height
        self.image_stride = minimum if image_stride is None else _size("image_stride", image_stride)
        if self.image_stride < minimum:
            raise ValueError(f"image_stride {self.image_stride} must be >= row_stride * height = {minimum}")
        self.data_type = _data_type(data_type)
        self.data_scale = float(data_scale)
        self.data_bias = float(data_bias)
        c = ffi.new("BNNSImageStackDescriptor *")
        c.width, c.height, c.channels = self.width, self.height, self.channels
        c.row_stride, c.image_stride = self.row_stride, self.image_stride
        c.data_type = int(self.data_type)
        c.data_scale, c.data_bias = self.data_scale, self.data_bias
        self._c = c

    @property
    def c_descriptor(self) -> Any:
        """The C struct, as a cffi ``BNNSImageStackDescriptor *`` (valid while ``self`` lives)."""
        return self._c

    @property
    def shape(self) -> Shape:
        """The same memory as an ``image_chw`` ``Shape`` with strides ``(1, row_stride, image_stride)``."""
        return Shape.image_chw(self.width, self.height, self.channels, stride=(1, self.row_stride, self.image_stride))

    @property
    def item_stride(self) -> int:
        """Values from one batch item to the next: ``image_stride * channels``."""
        return self.image_stride * self.channels

    def to_buffer(self, images: "npt.ArrayLike") -> "npt.NDArray[Any]":
        """Copy ``(N, C, H, W)`` or ``(C, H, W)`` images into a new array with this layout, as
        ``apply`` takes it: ``(N, C, H, W)`` for a packed stack, else flat with the gaps zero."""
        images = np.asarray(images, dtype=self.data_type.numpy_dtype)
        if images.ndim == 3:
            images = images[np.newaxis]
        expected = (self.channels, self.height, self.width)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, expected))}) or {expected}, "
                             f"got {images.shape}")
        if self.shape.is_packed:
            return np.array(images, order="C")
        buffer = np.zeros(self.buffer_shape(images.shape[0]), self.data_type.numpy_dtype)
        self._view(buffer, images.shape[0])[...] = images
        return buffer

    def buffer_shape(self, batch_size: int = 1) -> Tuple[int, ...]:
        """The shape of the arrays ``apply`` takes for ``batch_size`` items of this stack:
        ``(batch_size, C, H, W)`` when packed, else ``(batch_size * item_stride,)``."""
        if self.shape.is_packed:
            return (batch_size, self.channels, self.height, self.width)
        return (batch_size * self.item_stride,)

    def from_buffer(self, buffer: "npt.NDArray[Any]", batch_size: int = 1) -> "npt.NDArray[Any]":
        """The ``(batch_size, C, H, W)`` images stored in ``buffer`` with this layout, as a copy."""
        check_array_memory("buffer", buffer, self.data_type.numpy_dtype,
                           (batch_size - 1) * self.item_stride + self.shape.extent)
        return self._view(buffer.reshape(-1), batch_size).copy()

    def _view(self, buffer: "npt.NDArray[Any]", batch_size: int) -> "npt.NDArray[Any]":
        item = buffer.itemsize
        return np.lib.stride_tricks.as_strided(
            buffer, (batch_size, self.channels, self.height, self.width),
            (self.item_stride * item, self.image_stride * item, self.row_stride * item, item))

    def __repr__(self) -> str:
        return (f"ImageStackDescriptor(width={self.width}, height={self.height}, channels={self.channels}, "
                f"row_stride={self.row_stride}, image_stride={self.image_stride}, {self.data_type.name})")


class VectorDescriptor:
    """Python mirror of ``BNNSVectorDescriptor`` (legacy API, deprecated in macOS 11).

    Parameters
    ----------
    size : int
        The number of values, >= 1.
    data_type : DataType or int, optional
        The element type (one with a numpy equivalent); float32 by default.
    data_scale, data_bias : float, optional
        Convert integer data only.

    Examples
    --------
    >>> from bnns_py import VectorDescriptor
    >>> VectorDescriptor(8)
    VectorDescriptor(size=8, float32)
    """

    __slots__ = ("size", "data_type", "data_scale", "data_bias", "_c")

    def __init__(self, size: int, data_type: Union[DataType, int] = DataType.float32, data_scale: float = 1.0,
                 data_bias: float = 0.0) -> None:
        self.size = _size("size", size)
        self.data_type = _data_type(data_type)
        self.data_scale = float(data_scale)
        self.data_bias = float(data_bias)
        c = ffi.new("BNNSVectorDescriptor *")
        c.size = self.size
        c.data_type = int(self.data_type)
        c.data_scale, c.data_bias = self.data_scale, self.data_bias
        self._c = c

    @property
    def c_descriptor(self) -> Any:
        """The C struct, as a cffi ``BNNSVectorDescriptor *`` (valid while ``self`` lives)."""
        return self._c

    @property
    def shape(self) -> Shape:
        """``Shape.vector(size)``."""
        return Shape.vector(self.size)

    def __repr__(self) -> str:
        return f"VectorDescriptor(size={self.size}, {self.data_type.name})"


def _layer_data(c_data: Any, name: str, array: "npt.NDArray[Any]", keep: List[Any]) -> None:
    """Point a C ``BNNSLayerData`` at a numpy array (its data type from the dtype)."""
    c_data.data = buffer = ffi.from_buffer(array)
    c_data.data_type = int(DataType.from_numpy(array.dtype))
    c_data.data_scale = 1.0
    c_data.data_bias = 0.0
    keep.append(buffer)


def _check_array(name: str, array: Any, shape: Tuple[int, ...], backend: Backend, meaning: str = "") -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(array).__name__}")
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {meaning}{shape}, got {array.shape}")
    DataType.from_numpy(array.dtype)  # raises TypeError for dtypes BNNS has no type for
    if backend.is_portable and array.dtype != np.float32:
        raise TypeError(f"{name} has dtype {array.dtype}; the portable backend supports float32 legacy "
                        "layer data only")
    check_array_memory(name, array, array.dtype, array.size)


def _check_common(backend: Backend, activation: ActivationFunction, filter_parameters: Optional[FilterParameters],
                  descriptors: Iterable[Tuple[str, Any]]) -> None:
    if filter_parameters is not None and not isinstance(filter_parameters, FilterParameters):
        raise TypeError(f"filter_parameters must be FilterParameters or None, not {filter_parameters!r}")
    if backend.is_portable:
        for name, descriptor in descriptors:
            if descriptor.data_type != DataType.float32:
                raise TypeError(f"{name} data type {descriptor.data_type.name} is not supported by the portable "
                                "backend yet (float32 only)")
    check_fusable(backend, activation)


class _LegacyLayer(UnaryLayer):
    def apply_backward(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(f"{type(self).__name__} is a legacy (macOS 10.12) filter: Apple documents "
                                  "BNNSFilterApplyBackwardBatch for the macOS 11 layer API; use ConvolutionLayer / "
                                  "FullyConnectedLayer (or bnns_py.Conv2d / bnns_py.Linear) for training")


class LegacyConvolutionLayer(_LegacyLayer):
    """A filter from the legacy ``BNNSFilterCreateConvolutionLayer`` (deprecated in macOS 11).

    ``input_descriptor``/``output_descriptor`` are the equivalent ``NDArrayDescriptor``s
    (image_chw with the stack's strides) that ``apply`` checks arrays against. There is no
    ``apply_backward`` (NotImplementedError): use ``ConvolutionLayer`` for training.

    Parameters
    ----------
    input, output : ImageStackDescriptor
        The image stacks. Sizes must satisfy ``in + 2 * padding == stride * (out - 1) + k``
        exactly on each axis.
    weights : numpy.ndarray, shape (out_channels, in_channels, kH, kW)
        C-contiguous (packed ``[out][in][kH][kW]``, PyTorch's conv weight); float32 on the
        portable backend.
    bias : numpy.ndarray, shape (out_channels,), optional
        C-contiguous, of the same kind.
    x_stride, y_stride : int, optional
        Strides, >= 1.
    x_padding, y_padding : int, optional
        Symmetric zero padding: ``x_padding`` zeros left and right, ``y_padding`` above and below.
    activation : ActivationFunction, str or None, optional
        Fused after the bias.
    filter_parameters : FilterParameters, optional
        As for ``ConvolutionLayer``.
    backend : str, Backend or None, keyword-only
        ``"accelerate"``, ``"portable"`` or None for ``default_backend_name()``.

    Raises
    ------
    TypeError, ValueError
        Invalid arguments, checked before any C call.
    BNNSError
        BNNS refuses to create the filter.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import ImageStackDescriptor, LegacyConvolutionLayer, compare, reference
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    >>> x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    >>> y = np.empty((1, 2, 6, 6), dtype=np.float32)
    >>> with LegacyConvolutionLayer(ImageStackDescriptor(6, 6, 3), ImageStackDescriptor(6, 6, 2), w,
    ...                             x_padding=1, y_padding=1) as layer:
    ...     layer.apply(1, x, y)
    >>> compare(y, reference.conv2d(x, w, padding=1)).ok
    True
    """

    def __init__(self, input: ImageStackDescriptor, output: ImageStackDescriptor, weights: "npt.NDArray[Any]",
                 bias: Optional["npt.NDArray[Any]"] = None, x_stride: int = 1, y_stride: int = 1, x_padding: int = 0,
                 y_padding: int = 0, activation: Union[ActivationFunction, str, None] = ActivationFunction.identity,
                 filter_parameters: Optional[FilterParameters] = None, *, backend: Union[str, Backend, None] = None) -> None:
        backend = get_backend(backend)
        activation = ActivationFunction.coerce(activation)
        for name, descriptor in (("input", input), ("output", output)):
            if not isinstance(descriptor, ImageStackDescriptor):
                raise TypeError(f"{name} must be an ImageStackDescriptor, not {type(descriptor).__name__}")
        if not isinstance(weights, np.ndarray) or weights.ndim != 4:
            raise ValueError("weights must be a 4-D numpy array (out_channels, in_channels, kH, kW), got "
                             f"{getattr(weights, 'shape', type(weights).__name__)}")
        _, _, k_h, k_w = weights.shape
        _check_array("weights", weights, (output.channels, input.channels, k_h, k_w), backend,
                     "(output channels, input channels, kH, kW) = ")
        if min(weights.shape) == 0:
            raise ValueError(f"weights are empty: shape {weights.shape}")
        if bias is not None:
            _check_array("bias", bias, (output.channels,), backend)
        x_stride, y_stride = _size("x_stride", x_stride), _size("y_stride", y_stride)
        x_padding, y_padding = _size("x_padding", x_padding, 0), _size("y_padding", y_padding, 0)
        for axis, i, o, k, s, p in (("x (width)", input.width, output.width, k_w, x_stride, x_padding),
                                    ("y (height)", input.height, output.height, k_h, y_stride, y_padding)):
            if i + 2 * p != s * (o - 1) + k:
                raise ValueError(f"legacy convolution sizes do not match along {axis}: input {i} + 2 * padding {p} "
                                 f"= {i + 2 * p}, but stride {s} * (output {o} - 1) + kernel {k} = {s * (o - 1) + k}; "
                                 "the legacy API needs equality (use ConvolutionLayer for smaller outputs)")
        _check_common(backend, activation, filter_parameters, (("input", input), ("output", output)))

        params = ffi.new("BNNSConvolutionLayerParameters *")
        params.x_stride, params.y_stride = x_stride, y_stride
        params.x_padding, params.y_padding = x_padding, y_padding
        params.k_width, params.k_height = k_w, k_h
        params.in_channels, params.out_channels = input.channels, output.channels
        keep = [weights, bias, filter_parameters, input, output]
        _layer_data(params.weights, "weights", weights, keep)
        if bias is not None:
            _layer_data(params.bias, "bias", bias, keep)
        activation.fill(params.activation)
        c_filter_parameters = ffi.NULL if filter_parameters is None else filter_parameters.c_parameters
        handle = create_filter(backend, "BNNSFilterCreateConvolutionLayer", input.c_descriptor, output.c_descriptor,
                               params, c_filter_parameters, keepalive=keep)
        super().__init__(handle, backend, NDArrayDescriptor(data_type=input.data_type, shape=input.shape),
                         NDArrayDescriptor(data_type=output.data_type, shape=output.shape), keep)
        self.input = input
        self.output = output
        self.weights = weights
        self.bias = bias
        self.stride = (x_stride, y_stride)
        self.padding = (x_padding, y_padding)
        self.activation = activation
        self.filter_parameters = filter_parameters

    def __repr__(self) -> str:
        return (f"LegacyConvolutionLayer({self.input!r} -> {self.output!r}, kernel {self.weights.shape[2:]}, "
                f"stride={self.stride}, padding={self.padding}, {self.activation!r})")


class LegacyFullyConnectedLayer(_LegacyLayer):
    """A filter from the legacy ``BNNSFilterCreateFullyConnectedLayer`` (deprecated in macOS 11).

    There is no ``apply_backward`` (NotImplementedError): use ``FullyConnectedLayer`` for
    training.

    Parameters
    ----------
    input, output : VectorDescriptor
        The vector sizes ``in`` and ``out``.
    weights : numpy.ndarray, shape (out, in)
        C-contiguous (``W(o, i)`` at ``i + o * in``, PyTorch's ``Linear.weight``).
    bias : numpy.ndarray, shape (out,), optional
        C-contiguous, of the same kind.
    activation, filter_parameters, backend : optional
        As for ``LegacyConvolutionLayer``.

    Raises
    ------
    TypeError, ValueError, BNNSError
        As for ``LegacyConvolutionLayer``.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import LegacyFullyConnectedLayer, VectorDescriptor
    >>> w = np.array([[1.0, 1.0], [1.0, -1.0], [0.0, 2.0]], dtype=np.float32)
    >>> y = np.empty((1, 3), dtype=np.float32)
    >>> with LegacyFullyConnectedLayer(VectorDescriptor(2), VectorDescriptor(3), w) as layer:
    ...     layer.apply(1, np.array([[3.0, 1.0]], dtype=np.float32), y)
    >>> y.tolist()
    [[4.0, 2.0, 2.0]]
    """

    def __init__(self, input: VectorDescriptor, output: VectorDescriptor, weights: "npt.NDArray[Any]", bias: Optional["npt.NDArray[Any]"] = None,
                 activation: Union[ActivationFunction, str, None] = ActivationFunction.identity,
                 filter_parameters: Optional[FilterParameters] = None, *, backend: Union[str, Backend, None] = None) -> None:
        backend = get_backend(backend)
        activation = ActivationFunction.coerce(activation)
        for name, descriptor in (("input", input), ("output", output)):
            if not isinstance(descriptor, VectorDescriptor):
                raise TypeError(f"{name} must be a VectorDescriptor, not {type(descriptor).__name__}")
        _check_array("weights", weights, (output.size, input.size), backend, "(output size, input size) = ")
        if bias is not None:
            _check_array("bias", bias, (output.size,), backend)
        _check_common(backend, activation, filter_parameters, (("input", input), ("output", output)))

        params = ffi.new("BNNSFullyConnectedLayerParameters *")
        params.in_size, params.out_size = input.size, output.size
        keep = [weights, bias, filter_parameters, input, output]
        _layer_data(params.weights, "weights", weights, keep)
        if bias is not None:
            _layer_data(params.bias, "bias", bias, keep)
        activation.fill(params.activation)
        c_filter_parameters = ffi.NULL if filter_parameters is None else filter_parameters.c_parameters
        handle = create_filter(backend, "BNNSFilterCreateFullyConnectedLayer", input.c_descriptor,
                               output.c_descriptor, params, c_filter_parameters, keepalive=keep)
        super().__init__(handle, backend, NDArrayDescriptor(data_type=input.data_type, shape=input.shape),
                         NDArrayDescriptor(data_type=output.data_type, shape=output.shape), keep)
        self.input = input
        self.output = output
        self.weights = weights
        self.bias = bias
        self.activation = activation
        self.filter_parameters = filter_parameters

    def __repr__(self) -> str:
        return f"LegacyFullyConnectedLayer({self.input.size} -> {self.output.size}, {self.activation!r})"


__all__ = ["ImageStackDescriptor", "LegacyConvolutionLayer", "LegacyFullyConnectedLayer", "VectorDescriptor"]
