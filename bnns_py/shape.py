"""``Shape``: the Python mirror of Swift's ``BNNS.Shape`` (sizes, strides and a layout).

Sizes and strides are given in BNNS order, as Swift does: for most layouts ``size[0]`` is the
fastest-varying axis, so ``Shape.image_chw(width, height, channels)`` describes a numpy array of
shape ``(channels, height, width)``. The ``*_first_major`` layouts are the exception: their sizes
run outermost first while their strides still run fastest first.

A stride of 0 means "packed along this axis" (BNNS's rule); ``resolved_strides`` applies it.
"""
from .enums import DataLayout

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


def _ints(name, values, count):
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
    """Sizes, strides (in elements, 0 = packed) and a ``DataLayout``.

    ``Shape(size, data_layout=None, stride=None)`` mirrors Swift's ``Shape(_:dataLayout:stride:)``;
    without a layout the rank decides (1: vector, 2: matrix first major, 3-8: tensor first major).
    The class methods mirror the Swift cases, e.g. ``Shape.image_chw(w, h, c)``.
    """

    __slots__ = ("layout", "sizes", "strides", "_resolved")

    def __init__(self, size, data_layout=None, stride=None):
        size = tuple(size)
        if not 1 <= len(size) <= MAX_RANK:
            raise ValueError(f"a BNNS shape has 1 to {MAX_RANK} dimensions, got {len(size)}")
        layout = _DEFAULT_LAYOUT[len(size)] if data_layout is None else DataLayout(data_layout)
        if layout.rank != len(size):
            raise ValueError(f"layout {layout.name} has rank {layout.rank} but {len(size)} sizes were given")
        self.layout = layout
        self.sizes = _ints("size", size, len(size))
        self.strides = _ints("stride", (0,) * len(size) if stride is None else stride, len(size))
        self._resolved = None  # resolved strides, computed on first use (a Shape never changes)

    # ---- the Swift cases ---------------------------------------------------------------------
    @classmethod
    def vector(cls, size, stride=0):
        return cls((size,), DataLayout.vector, (stride,))

    @classmethod
    def matrix_row_major(cls, columns, rows, stride=(0, 0)):
        return cls((columns, rows), DataLayout.matrix_row_major, stride)

    @classmethod
    def matrix_column_major(cls, rows, columns, stride=(0, 0)):
        return cls((rows, columns), DataLayout.matrix_column_major, stride)

    @classmethod
    def matrix_first_major(cls, size0, size1, stride=(0, 0)):
        return cls((size0, size1), DataLayout.matrix_first_major, stride)

    @classmethod
    def matrix_last_major(cls, size0, size1, stride=(0, 0)):
        return cls((size0, size1), DataLayout.matrix_last_major, stride)

    @classmethod
    def image_chw(cls, width, height, channels, stride=(0, 0, 0)):
        return cls((width, height, channels), DataLayout.image_chw, stride)

    @classmethod
    def convolution_weights_oihw(cls, width, height, input_channels, output_channels, stride=(0, 0, 0, 0)):
        return cls((width, height, input_channels, output_channels),
                   DataLayout.convolution_weights_oihw, stride)

    @classmethod
    def tensor_3d_first_major(cls, *size, stride=None):
        return cls(size, DataLayout.tensor_3d_first_major, stride)

    @classmethod
    def tensor_3d_last_major(cls, *size, stride=None):
        return cls(size, DataLayout.tensor_3d_last_major, stride)

    @classmethod
    def tensor_3d_nse(cls, *size, stride=None):
        return cls(size, DataLayout.tensor_3d_nse, stride)

    @classmethod
    def tensor_3d_sne(cls, *size, stride=None):
        return cls(size, DataLayout.tensor_3d_sne, stride)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def rank(self):
        return len(self.sizes)

    @property
    def size(self):
        """Sizes padded with zeros to 8 entries, as in the C descriptor."""
        return self.sizes + (0,) * (MAX_RANK - self.rank)

    @property
    def stride(self):
        """Strides (0 = packed) padded with zeros to 8 entries, as in the C descriptor."""
        return self.strides + (0,) * (MAX_RANK - self.rank)

    @property
    def fastest_first_sizes(self):
        """Sizes in the order the strides run (fastest axis first); differs from ``sizes`` only
        for the first-major layouts."""
        return self.sizes[::-1] if self.layout in _FIRST_MAJOR else self.sizes

    @property
    def resolved_strides(self):
        """Strides with BNNS's packed rule applied (stride[k] = size[k-1] * stride[k-1])."""
        if self._resolved is None:
            self._resolved = self._resolve()
        return self._resolved

    def _resolve(self):
        out = []
        previous_size, previous_stride = 1, 1
        for k, (size, stride) in enumerate(zip(self.fastest_first_sizes, self.strides)):
            if stride == 0:
                stride = 1 if k == 0 else previous_size * previous_stride
            out.append(stride)
            previous_size, previous_stride = size, stride
        return tuple(out)

    @property
    def element_count(self):
        count = 1
        for size in self.sizes:
            count *= size
        return count

    @property
    def extent(self):
        """Elements from the first value of one item to one past its last value."""
        if self.element_count == 0:
            return 0
        return 1 + sum((size - 1) * stride for size, stride in
                       zip(self.fastest_first_sizes, self.resolved_strides))

    @property
    def batch_stride(self):
        """Elements from the start of one batch item to the next: the outermost stride times the
        outermost size, i.e. where the layout's own pattern would continue."""
        return self.resolved_strides[-1] * self.fastest_first_sizes[-1]

    @property
    def is_packed(self):
        """True when the resolved strides describe a dense, gap-free array."""
        expected = 1
        for size, stride in zip(self.fastest_first_sizes, self.resolved_strides):
            if size > 1 and stride != expected:
                return False
            expected *= size
        return True

    @property
    def numpy_shape(self):
        """The C-order numpy shape of one item (outermost axis first)."""
        return tuple(reversed(self.fastest_first_sizes))

    def __eq__(self, other):
        if not isinstance(other, Shape):
            return NotImplemented
        return (self.layout, self.sizes, self.resolved_strides) == (
            other.layout, other.sizes, other.resolved_strides)

    def __hash__(self):
        return hash((self.layout, self.sizes, self.resolved_strides))

    def __repr__(self):
        stride = "" if not any(self.strides) else f", stride={self.strides}"
        return f"Shape.{self.layout.name}{self.sizes}{stride}"


def _add_tensor_cases():
    for rank in range(4, MAX_RANK + 1):
        for major in ("first", "last"):
            layout = DataLayout[f"tensor_{rank}d_{major}_major"]

            def case(cls, *size, stride=None, _layout=layout):
                return cls(size, _layout, stride)

            case.__name__ = f"tensor_{rank}d_{major}_major"
            setattr(Shape, case.__name__, classmethod(case))


_add_tensor_cases()
