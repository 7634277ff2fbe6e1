"""``NDArrayDescriptor``: a C ``BNNSNDArrayDescriptor`` bound to the numpy array holding its data.

The descriptor points into the array's memory (zero-copy, through ``ffi.from_buffer``) and keeps
the array alive for as long as the descriptor lives, so a layer that keeps a descriptor keeps its
data valid too.
"""
from typing import Any, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _repr
from ._ffi import ffi
from .enums import DataLayout, DataType, NDArrayFlags
from .shape import Shape

ScalarType = Union[DataType, "npt.DTypeLike"]  # a DataType or anything np.dtype() accepts


def _infer_shape(array: "npt.NDArray[Any]") -> Tuple[Shape, int]:
    """Shape and batch size for a numpy array when none is given: 1-D vector, (C,H,W) image,
    (N,C,H,W) batch of images."""
    if array.ndim == 1:
        return Shape.vector(array.shape[0]), 1
    if array.ndim == 3:
        channels, height, width = array.shape
        return Shape.image_chw(width, height, channels), 1
    if array.ndim == 4:
        batch, channels, height, width = array.shape
        return Shape.image_chw(width, height, channels), batch
    raise ValueError(f"cannot infer a BNNS shape for a {array.ndim}-D array of shape {array.shape}: "
                     "pass shape=Shape....(...) (1-D, (C,H,W) and (N,C,H,W) arrays are inferred)")


def check_array_memory(name: str, array: Any, dtype: Any, min_elements: int, writable: bool = False) -> None:
    """Raise a precise error unless ``array`` is a C-contiguous numpy array of ``dtype`` holding at
    least ``min_elements`` values (and writable if asked)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(array).__name__}")
    if array.dtype != dtype:
        raise TypeError(f"{name} has dtype {array.dtype}, expected {dtype}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous (strides {array.strides}); "
                         "pass np.ascontiguousarray(...) or describe the layout with Shape strides")
    if not array.flags.aligned:
        raise ValueError(f"{name} is not aligned to its element size")
    if writable and not array.flags.writeable:
        raise ValueError(f"{name} is read-only but BNNS writes into it")
    if array.size < min_elements:
        raise ValueError(f"{name} holds {array.size} values, needs at least {min_elements}")


def batch_extent(shape: Shape, batch_size: int) -> int:
    """Values that ``batch_size`` items of ``shape``, one ``batch_stride`` apart, span."""
    return (batch_size - 1) * shape.batch_stride + shape.extent


class NDArrayDescriptor:
    """A ``BNNSNDArrayDescriptor`` plus the numpy array it describes.

    ``NDArrayDescriptor(data=array, shape=Shape....)`` wraps an existing C-contiguous array
    without copying (Swift's ``init(data:shape:)``); the array may hold ``batch_size`` items, one
    ``shape.batch_stride`` apart. ``NDArrayDescriptor(data_type=..., shape=...)`` describes an
    array without data (Swift's ``init(dataType:shape:)``). The ``allocate*`` class methods create
    a new numpy array.

    Parameters
    ----------
    data : numpy.ndarray, optional
        C-contiguous and aligned, of a dtype that stores ``data_type``, holding at least
        ``(batch_size - 1) * shape.batch_stride + shape.extent`` values; used in place.
    shape : Shape, optional
        The layout; inferred from ``data`` when omitted for 1-D (vector), 3-D ``(C, H, W)`` and
        4-D ``(N, C, H, W)`` arrays. Required without ``data``.
    data_type : DataType or int, optional
        The element type; inferred from ``data``'s dtype when omitted. Required without ``data``.
    batch_size : int, keyword-only
        Items in ``data`` (default 1, or ``N`` of an inferred 4-D shape).
    data_scale, data_bias : float, keyword-only
        The C descriptor's quantization scale and bias.
    flags : NDArrayFlags or int, keyword-only
        The C descriptor's flags.

    Attributes
    ----------
    shape : Shape
        The layout of one item.
    data_type : DataType
        The element type.
    batch_size : int
        The number of items ``data`` holds.

    Raises
    ------
    TypeError
        ``data`` is not a numpy array or its dtype does not store ``data_type``; ``shape`` is
        not a ``Shape``.
    ValueError
        A missing shape or data type, a zero size, a bad ``batch_size``, or ``data`` that is
        not C-contiguous, not aligned or too small.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import DataType, NDArrayDescriptor, Shape
    >>> image = np.zeros((3, 4, 5), dtype=np.float32)
    >>> d = NDArrayDescriptor(image)
    >>> d.shape == Shape.image_chw(5, 4, 3), d.data_type.name, d.data is image
    (True, 'float32', True)
    >>> NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(8)).data is None
    True
    """

    __slots__ = ("shape", "data_type", "batch_size", "_array", "_buffer", "_c", "__weakref__")

    def __init__(self, data: Optional["npt.NDArray[Any]"] = None, shape: Optional[Shape] = None,
                 data_type: Union[DataType, int, None] = None, *, batch_size: Optional[int] = None,
                 data_scale: float = 1.0, data_bias: float = 0.0,
                 flags: Union[NDArrayFlags, int] = NDArrayFlags.backprop_set) -> None:
        if data is None:
            if shape is None or data_type is None:
                raise ValueError("a descriptor without data needs both shape and data_type")
            data_type = DataType(data_type)
            batch_size = 1 if batch_size is None else batch_size
        else:
            if not isinstance(data, np.ndarray):
                raise TypeError(f"data must be a numpy array, not {type(data).__name__}")
            data_type = DataType.from_numpy(data.dtype) if data_type is None else DataType(data_type)
            if data.dtype not in data_type.storage_dtypes:
                hint = (" (bfloat16 data is a uint16 array of bfloat16 bit patterns, see "
                        "bnns_py.enums.float32_to_bfloat16_bits)" if data_type == DataType.bfloat16 else "")
                raise TypeError(f"data has dtype {data.dtype} but data_type is {data_type.name}{hint}")
            if shape is None:
                shape, inferred_batch = _infer_shape(data)
                batch_size = inferred_batch if batch_size is None else batch_size
            batch_size = 1 if batch_size is None else batch_size
        if not isinstance(shape, Shape):
            raise TypeError(f"shape must be a bnns_py.Shape, not {type(shape).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if any(size == 0 for size in shape.sizes):
            raise ValueError(f"{shape} has a zero size")
        self.shape = shape
        self.data_type = data_type
        self.batch_size = int(batch_size)
        self._c = ffi.new("BNNSNDArrayDescriptor *")
        c = self._c
        c.flags = int(NDArrayFlags(flags))
        c.layout = int(shape.layout)
        c.size = list(shape.size)
        c.stride = list(shape.stride)
        c.data_type = int(data_type)
        c.data_scale = float(data_scale)
        c.data_bias = float(data_bias)
        self._array = None
        self._buffer = ffi.NULL
        if data is not None:
            check_array_memory("data", data, data.dtype, batch_extent(shape, self.batch_size))
            self._array = data
            self._buffer = ffi.from_buffer(data)
            c.data = self._buffer

    # ---- Swift's allocation helpers ----------------------------------------------------------
    @classmethod
    def allocate_uninitialized(cls, scalar_type: ScalarType, shape: Shape, batch_size: int = 1) -> "NDArrayDescriptor":
        """A descriptor over new, uninitialized storage for ``batch_size`` items of ``shape``.

        ``scalar_type`` is a ``DataType`` with a numpy equivalent, or anything ``numpy.dtype``
        accepts (Swift's ``allocateUninitialized``).
        """
        dtype = _numpy_dtype(scalar_type)
        return cls(np.empty(batch_size * shape.batch_stride, dtype), shape, batch_size=batch_size)

    @classmethod
    def allocate(cls, initializing_from: "npt.ArrayLike", shape: Shape, batch_size: int = 1,
                 scalar_type: Optional[ScalarType] = None) -> "NDArrayDescriptor":
        """A descriptor over new storage holding a copy of ``initializing_from``.

        ``initializing_from`` is any array-like, flattened; it must hold exactly
        ``batch_size * shape.batch_stride`` values (else ValueError). Its dtype is kept unless
        ``scalar_type`` is given.

        Examples
        --------
        >>> from bnns_py import NDArrayDescriptor, Shape
        >>> d = NDArrayDescriptor.allocate([1.0, 2.0, 3.0], Shape.vector(3), scalar_type="float32")
        >>> d.make_array().tolist()
        [1.0, 2.0, 3.0]
        """
        values = np.asarray(initializing_from)
        dtype = _numpy_dtype(scalar_type) if scalar_type is not None else values.dtype
        flat = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
        if flat.size != batch_size * shape.batch_stride:
            raise ValueError(f"initializing_from has {flat.size} values; shape {shape} x batch "
                             f"{batch_size} needs {batch_size * shape.batch_stride}")
        return cls(flat.copy(), shape, batch_size=batch_size)

    @classmethod
    def allocate_repeating(cls, repeating: float, shape: Shape, batch_size: int = 1,
                           scalar_type: ScalarType = DataType.float32) -> "NDArrayDescriptor":
        """A descriptor over new storage with every value set to ``repeating`` (float32 unless
        ``scalar_type`` says otherwise)."""
        dtype = _numpy_dtype(scalar_type)
        return cls(np.full(batch_size * shape.batch_stride, repeating, dtype), shape, batch_size=batch_size)

    @classmethod
    def allocate_random(cls, random_in: Tuple[float, float], shape: Shape, batch_size: int = 1,
                        scalar_type: ScalarType = DataType.float32, rng: Any = None) -> "NDArrayDescriptor":
        """A descriptor over new storage filled uniformly from the closed range
        ``random_in=(low, high)``; ``rng`` seeds ``numpy.random.default_rng``."""
        low, high = random_in
        rng = np.random.default_rng(rng)
        dtype = _numpy_dtype(scalar_type)
        count = batch_size * shape.batch_stride
        if np.issubdtype(dtype, np.integer):
            values = rng.integers(low, high, size=count, endpoint=True).astype(dtype)
        else:
            values = rng.uniform(low, high, size=count).astype(dtype)
        return cls(values, shape, batch_size=batch_size)

    def deallocate(self) -> None:
        """Drop the reference to the data (the memory is freed once nothing else uses it)."""
        self._array = None
        self._buffer = ffi.NULL
        self._c.data = ffi.NULL

    # ---- views --------------------------------------------------------------------------------
    @property
    def data(self) -> Optional["npt.NDArray[Any]"]:
        """The numpy array behind this descriptor, or None."""
        return self._array

    @property
    def c_descriptor(self) -> Any:
        """The C descriptor, as a cffi ``BNNSNDArrayDescriptor *`` (valid while ``self`` lives)."""
        return self._c

    @property
    def layout(self) -> DataLayout:
        """The shape's ``DataLayout``."""
        return self.shape.layout

    @property
    def numpy_shape(self) -> Tuple[int, ...]:
        """numpy shape of one item, outermost axis first (e.g. (C, H, W) for image_chw)."""
        return self.shape.numpy_shape

    def make_array(self, batch_size: Optional[int] = None) -> "npt.NDArray[Any]":
        """A copy of the data as a numpy array (Swift's ``makeArray(of:batchSize:)``).

        Parameters
        ----------
        batch_size : int, optional
            Items to copy (default: the descriptor's ``batch_size``).

        Returns
        -------
        numpy.ndarray
            Shape ``(batch_size, *numpy_shape)``, or ``numpy_shape`` when ``batch_size`` is 1.

        Raises
        ------
        ValueError
            No data, a shape with gaps (only packed shapes can be copied out) or too few values.
        """
        if self._array is None:
            raise ValueError("descriptor has no data")
        batch_size = self.batch_size if batch_size is None else batch_size
        if not self.shape.is_packed:
            raise ValueError(f"make_array needs a packed shape, {self.shape} has gaps")
        count = batch_size * self.shape.batch_stride
        flat = self._array.reshape(-1)
        if flat.size < count:
            raise ValueError(f"descriptor holds {flat.size} values, batch {batch_size} needs {count}")
        items = flat[:count].reshape((batch_size,) + self.numpy_shape)
        return (items[0] if batch_size == 1 else items).copy()

    def __repr__(self) -> str:
        data = "no data" if self._array is None else f"data {self._array.dtype}[{self._array.size}]"
        batch = f", batch_size={self.batch_size}" if self.batch_size != 1 else ""
        c = self._c
        scale = (f", data_scale={c.data_scale:g}, data_bias={c.data_bias:g}"
                 if c.data_scale != 1.0 or c.data_bias != 0.0 else "")
        flags = f", flags={_repr.flags_name(c.flags)}" if c.flags else ""
        return (f"NDArrayDescriptor({self.shape!r}, {self.data_type.name}, {data}{batch}, "
                f"numpy shape {self.numpy_shape}{scale}{flags})")

    def _repr_html_(self) -> str:
        return _repr.key_value_html("NDArrayDescriptor", _repr.descriptor_rows(self))


def _numpy_dtype(scalar_type: ScalarType) -> "np.dtype[Any]":
    if isinstance(scalar_type, DataType):
        dtype = scalar_type.numpy_dtype
        if dtype is None:
            raise TypeError(f"{scalar_type.name} has no numpy equivalent")
        return dtype
    return np.dtype(scalar_type)


__all__ = ["NDArrayDescriptor", "DataLayout"]
