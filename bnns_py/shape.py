"""``Shape``: the Python mirror of Swift's ``BNNS.Shape`` (sizes, strides and a layout).

Sizes and strides are given in BNNS order, as Swift does: for most layouts ``size[0]`` is the
fastest-varying axis, so ``Shape.image_chw(width, height, channels)`` describes a numpy array of
shape ``(channels, height, width)``. The ``*_first_major`` layouts are the exception: their sizes
run outermost first while their strides still run fastest first.

A stride of 0 means "packed along this axis" (BNNS's rule); ``resolved_strides`` applies it.
"""
from typing import Iterable, Optional, Sequence, Tuple, Union

from .enums import DataLayout

Sizes = Tuple[int, ...]

MAX_RANK = 8
_SIZE_LIMIT = 2 ** 62  # sizes and strides are size_t in C; keep products of a few of them checkable

_DEFAULT_LAYOUT = {
    1: DataLayout.vector,
    2: DataLayout.matrix_first_major,
    3: DataLayout.tensor_3d_first_major,
    4: DataLayout.tensor_4d_first_major,
    5: DataLayout.tensor_5d_first_major,
    6: DataLayout.tensor_6d_first_major,
    7: DataLayout.tensor_7d_first_major,
    8: DataLayout.tensor_8d_first_major,
}
_FIRST_MAJOR = {DataLayout.one_d_first_major, DataLayout.matrix_first_major} | {
    layout for layout in DataLayout if layout.name.endswith("d_first_major")}


def _ints(name: str, values: Iterable[int], count: int) -> Sizes:
    values = tuple(values)
    if len(values) != count:
        raise ValueError(f"{name} needs {count} entries, got {len(values)}: {values}")
    out = []
    for value in values:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"{name} entries must be integers, got {value!r}")
        value = int(value)
        if not 0 <= value < _SIZE_LIMIT:
            raise ValueError(f"{name} entries must be in [0, 2**62), got {values}")
        out.append(value)
    return tuple(out)


class Shape:
    """Sizes, strides and a ``DataLayout``: the shape part of a BNNS array descriptor.

    Mirrors Swift's ``BNNS.Shape``: ``Shape(size, data_layout=None, stride=None)`` is
    ``Shape(_:dataLayout:stride:)``, and the class methods are the Swift cases
    (``Shape.image_chw(width, height, channels)``, ``Shape.convolution_weights_oihw(...)``, ...).
    Sizes are in BNNS order, fastest axis first, except for the ``*_first_major`` layouts, whose
    sizes run outermost first. A ``Shape`` never changes after creation.

    Parameters
    ----------
    size : sequence of int
        1 to 8 sizes, each in ``[0, 2**62)``.
    data_layout : DataLayout or int, optional
        The layout; its rank must be ``len(size)``. Default: by rank (1: ``vector``, 2:
        ``matrix_first_major``, 3 to 8: ``tensor_<n>d_first_major``).
    stride : sequence of int, optional
        Strides in elements, fastest axis first; 0 means packed along that axis (BNNS's rule,
        see ``resolved_strides``). Default: all 0 (a packed array).

    Attributes
    ----------
    layout : DataLayout
        The layout.
    sizes : tuple of int
        The sizes, as given.
    strides : tuple of int
        The strides, as given (0 = packed).

    Raises
    ------
    ValueError
        No sizes or more than 8, a rank that differs from the layout's, a wrong number of strides,
        or a negative or too large value.
    TypeError
        A size or stride is not an integer.

    Examples
    --------
    >>> from bnns_py import Shape
    >>> image = Shape.image_chw(32, 24, 3)          # width, height, channels
    >>> image.numpy_shape                            # the numpy array it describes
    (3, 24, 32)
    >>> image.resolved_strides, image.batch_stride
    ((1, 32, 768), 2304)
    >>> rows_padded = Shape.image_chw(32, 24, 3, stride=(1, 40, 0))   # rows 40 floats apart
    >>> rows_padded.resolved_strides, rows_padded.is_packed
    ((1, 40, 960), False)
    """

    __slots__ = ("layout", "sizes", "strides", "_resolved")

    def __init__(self, size: Sequence[int], data_layout: Union[DataLayout, int, None] = None,
                 stride: Optional[Sequence[int]] = None) -> None:
        size = tuple(size)
        if not 1 <= len(size) <= MAX_RANK:
            raise ValueError(f"a BNNS shape has 1 to {MAX_RANK} dimensions, got {len(size)}")
        layout = _DEFAULT_LAYOUT[len(size)] if data_layout is None else DataLayout(data_layout)
        if layout.rank != len(size):
            raise ValueError(f"layout {layout.name} has rank {layout.rank} but {len(size)} sizes were given")
        self.layout = layout
        self.sizes = _ints("size", size, len(size))
        self.strides = _ints("stride", (0,) * len(size) if stride is None else stride, len(size))
        self._resolved: Optional[Sizes] = None  # resolved strides, computed on first use (a Shape never changes)

    # ---- the Swift cases ---------------------------------------------------------------------
    @classmethod
    def vector(cls, size: int, stride: int = 0) -> "Shape":
        """A vector of ``size`` values, ``stride`` apart (0 = packed). Swift's ``.vector``.

        >>> Shape.vector(10).numpy_shape
        (10,)
        """
        return cls((size,), DataLayout.vector, (stride,))

    @classmethod
    def matrix_row_major(cls, columns: int, rows: int, stride: Sequence[int] = (0, 0)) -> "Shape":
        """A row-major matrix: ``columns`` values per row (contiguous), then ``rows`` rows.

        >>> Shape.matrix_row_major(4, 3).numpy_shape
        (3, 4)
        """
        return cls((columns, rows), DataLayout.matrix_row_major, stride)

    @classmethod
    def matrix_column_major(cls, rows: int, columns: int, stride: Sequence[int] = (0, 0)) -> "Shape":
        """A column-major matrix: ``rows`` values per column (contiguous), then ``columns``."""
        return cls((rows, columns), DataLayout.matrix_column_major, stride)

    @classmethod
    def matrix_first_major(cls, size0: int, size1: int, stride: Sequence[int] = (0, 0)) -> "Shape":
        """A 2-D array with sizes outermost first: ``size0`` rows of ``size1`` contiguous values.

        >>> Shape.matrix_first_major(3, 4).numpy_shape
        (3, 4)
        """
        return cls((size0, size1), DataLayout.matrix_first_major, stride)

    @classmethod
    def matrix_last_major(cls, size0: int, size1: int, stride: Sequence[int] = (0, 0)) -> "Shape":
        """A 2-D array with sizes fastest first: ``size0`` contiguous values, ``size1`` times."""
        return cls((size0, size1), DataLayout.matrix_last_major, stride)

    @classmethod
    def image_chw(cls, width: int, height: int, channels: int,
                  stride: Sequence[int] = (0, 0, 0)) -> "Shape":
        """An image of ``channels`` planes of ``height`` rows of ``width`` values: numpy
        ``(channels, height, width)``. Swift's ``.imageCHW``.

        >>> Shape.image_chw(32, 24, 3).numpy_shape
        (3, 24, 32)
        """
        return cls((width, height, channels), DataLayout.image_chw, stride)

    @classmethod
    def convolution_weights_oihw(cls, width: int, height: int, input_channels: int, output_channels: int,
                                 stride: Sequence[int] = (0, 0, 0, 0)) -> "Shape":
        """Convolution weights, numpy ``(output_channels, input_channels, height, width)``:
        PyTorch's ``Conv2d`` weight layout. Swift's ``.convolutionWeightsOIHW``.

        >>> Shape.convolution_weights_oihw(3, 3, 16, 32).numpy_shape
        (32, 16, 3, 3)
        """
        return cls((width, height, input_channels, output_channels),
                   DataLayout.convolution_weights_oihw, stride)

    @classmethod
    def tensor_3d_first_major(cls, *size: int, stride: Optional[Sequence[int]] = None) -> "Shape":
        """A 3-D array with sizes outermost first (numpy order)."""
        return cls(size, DataLayout.tensor_3d_first_major, stride)

    @classmethod
    def tensor_3d_last_major(cls, *size: int, stride: Optional[Sequence[int]] = None) -> "Shape":
        """A 3-D array with sizes fastest first."""
        return cls(size, DataLayout.tensor_3d_last_major, stride)

    @classmethod
    def tensor_3d_nse(cls, *size: int, stride: Optional[Sequence[int]] = None) -> "Shape":
        """BNNS's 3-D NSE layout (sizes fastest first)."""
        return cls(size, DataLayout.tensor_3d_nse, stride)

    @classmethod
    def tensor_3d_sne(cls, *size: int, stride: Optional[Sequence[int]] = None) -> "Shape":
        """BNNS's 3-D SNE layout (sizes fastest first)."""
        return cls(size, DataLayout.tensor_3d_sne, stride)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Number of dimensions (1 to 8)."""
        return len(self.sizes)

    @property
    def size(self) -> Sizes:
        """Sizes padded with zeros to 8 entries, as in the C descriptor."""
        return self.sizes + (0,) * (MAX_RANK - self.rank)

    @property
    def stride(self) -> Sizes:
        """Strides (0 = packed) padded with zeros to 8 entries, as in the C descriptor."""
        return self.strides + (0,) * (MAX_RANK - self.rank)

    @property
    def fastest_first_sizes(self) -> Sizes:
        """Sizes in the order the strides run (fastest axis first); differs from ``sizes`` only
        for the first-major layouts."""
        return self.sizes[::-1] if self.layout in _FIRST_MAJOR else self.sizes

    @property
    def resolved_strides(self) -> Sizes:
        """Strides with BNNS's packed rule applied (stride[k] = size[k-1] * stride[k-1])."""
        if self._resolved is None:
            self._resolved = self._resolve()
        return self._resolved

    def _resolve(self) -> Sizes:
        out = []
        previous_size, previous_stride = 1, 1
        for k, (size, stride) in enumerate(zip(self.fastest_first_sizes, self.strides)):
            if stride == 0:
                stride = 1 if k == 0 else previous_size * previous_stride
            out.append(stride)
            previous_size, previous_stride = size, stride
        return tuple(out)

    @property
    def element_count(self) -> int:
        """Number of values described: the product of the sizes."""
        count = 1
        for size in self.sizes:
            count *= size
        return count

    @property
    def extent(self) -> int:
        """Elements from the first value of one item to one past its last value."""
        if self.element_count == 0:
            return 0
        return 1 + sum((size - 1) * stride for size, stride in
                       zip(self.fastest_first_sizes, self.resolved_strides))

    @property
    def batch_stride(self) -> int:
        """Elements from the start of one batch item to the next: the outermost stride times the
        outermost size, i.e. where the layout's own pattern would continue."""
        return self.resolved_strides[-1] * self.fastest_first_sizes[-1]

    @property
    def is_packed(self) -> bool:
        """True when the resolved strides describe a dense, gap-free array."""
        expected = 1
        for size, stride in zip(self.fastest_first_sizes, self.resolved_strides):
            if size > 1 and stride != expected:
                return False
            expected *= size
        return True

    @property
    def numpy_shape(self) -> Sizes:
        """The C-order numpy shape of one item (outermost axis first)."""
        return tuple(reversed(self.fastest_first_sizes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Shape):
            return NotImplemented
        return (self.layout, self.sizes, self.resolved_strides) == (
            other.layout, other.sizes, other.resolved_strides)

    def __hash__(self) -> int:
        return hash((self.layout, self.sizes, self.resolved_strides))

    def __repr__(self) -> str:
        stride = "" if not any(self.strides) else f", stride={self.strides}"
        return f"Shape.{self.layout.name}{self.sizes}{stride}"


def _add_tensor_cases() -> None:
    for rank in range(4, MAX_RANK + 1):
        for major in ("first", "last"):
            layout = DataLayout[f"tensor_{rank}d_{major}_major"]

            def case(cls: "type[Shape]", *size: int, stride: Optional[Sequence[int]] = None,
                     _layout: DataLayout = layout) -> Shape:
                return cls(size, _layout, stride)

            case.__name__ = case.__qualname__ = f"tensor_{rank}d_{major}_major"
            order = "outermost first (numpy order)" if major == "first" else "fastest first"
            case.__doc__ = f"A {rank}-D array, sizes {order}; ``stride`` keyword-only (0 = packed)."
            setattr(Shape, case.__name__, classmethod(case))


_add_tensor_cases()
