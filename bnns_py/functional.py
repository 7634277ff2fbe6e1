"""numpy-first ``conv2d``, ``conv_transpose2d`` and ``linear`` with PyTorch's signatures.

The three functions take the arguments of their ``torch.nn.functional`` namesakes, by the same
names and in the same positional order; the BNNS extras (``activation``, ``backend``, ``out``)
are keyword-only. Operands may be numpy arrays, CPU torch tensors, or any object exposing
``__dlpack__``, ``__array_interface__`` or the buffer protocol: float32 ones are read in place
(zero-copy), and the result is always a numpy array (or ``out``, when given, written in place;
``out`` may be a torch tensor that does not require grad). ``Conv2d``, ``ConvTranspose2d`` and
``Linear`` (``bnns_py.modules``) keep their filters and also return gradients.

Filter cache: creating a BNNS filter costs far more than running a small one, so the functional
API keeps the ``cache_size()`` (default 16) most recently used filters of the three functions,
keyed by the complete geometry (input/output shapes and strides, stride, padding, dilation,
groups, activation, transposed or not, backend) and by the address of the weight and bias memory.
Cached filters read the weights and bias from the caller's memory at every call
(``Flags.use_client_pointer``), so changing those arrays in place is seen by the next call, and
each cache entry keeps its weight and bias arrays alive: the cache holds at most ``cache_size()``
recent weight arrays. Only weights and biases read in place are cached (C-contiguous float32;
anything that needs a copy gets a filter of its own, destroyed after the call). ``clear_cache()``
destroys every cached filter (also done at interpreter exit) and ``set_cache_size(0)`` disables
the cache. Each cached convolution filter also remembers the last input (and ``out``) numpy
arrays it ran on, with their C pointers, so a repeated call skips those look-ups; that keeps
those arrays alive until the next call with other arrays or ``clear_cache()``. With
``backend=None`` the default backend is resolved when a filter is created. Thread-safe: a filter
evicted or cleared while another thread runs it is destroyed when that call returns.

Strided views: ``input`` (and ``out``) may be views such as ``big[:, 2:10]`` (a channel slice) or
``padded[:, :, 1:-1, 1:-1]`` (an interior window). When every stride is a positive multiple of 4
bytes, rows are contiguous (width stride of one element) and channels, rows and batch items are
ordered as in NCHW without overlapping, BNNS reads and writes the view in place through
descriptor strides (no copy) on backends that honour image strides (the portable one; on
Accelerate the view is copied to a packed array and a strided ``out`` filled from one). Other
layouts of the input are copied to a C-contiguous array first; other layouts of ``out`` are
refused. ``linear`` reads and writes batches whose rows are contiguous in place (any row stride).
"""
import atexit
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import numpy.typing as npt

from ._arrays import (FLOAT32, Array, ImageInput, ImageOutput, RowsLayout, address, contiguous_float32, data_address, image_input, image_output, overlap,
                      vector_input, vector_output, written)
from ._checks import int_pair, is_int
from ._ffi import ffi
from .activation import ActivationFunction
from .backend import Backend, get_backend
from .convolution import ConvolutionLayer, ConvolutionPadding, ConvolutionType
from .descriptor import NDArrayDescriptor
from .errors import LayerClosedError
from .enums import DataType, Flags
from .filter_parameters import FilterParameters
from .fully_connected import FullyConnectedLayer
from .geometry import max_output_size, transposed_output_size
from .shape import Shape

_FLOAT32_TYPE = DataType.float32
IntPair = Union[int, Tuple[int, int]]  # one value for both axes, or (height, width)
Padding = Union[int, Sequence[int], str]  # int, (pad_h, pad_w), (left, right, top, bottom), "same", "valid"
ActivationLike = Union[ActivationFunction, str, None]
BackendLike = Union[str, Backend, None]
Sides = Tuple[int, int, int, int]  # (left, right, top, bottom)
_PADDING_FORMS = "an int, (pad_h, pad_w), (left, right, top, bottom), 'same' or 'valid'"


def normalize_padding(padding: Union[int, Sequence[int]]) -> Sides:
    """PyTorch-style padding (int, (pad_h, pad_w) or (left, right, top, bottom)) -> 4-tuple."""
    if is_int(padding):
        padding = (padding,)  # type: ignore[assignment]  # read as a 1-tuple below
    values = tuple(padding) if isinstance(padding, (tuple, list)) else None
    if values is None or len(values) not in (1, 2, 4):
        raise TypeError(f"padding must be {_PADDING_FORMS}; got {padding!r}")
    for v in values:
        if not is_int(v) or v < 0:
            raise ValueError(f"padding values must be integers >= 0, got {padding!r}")
    if len(values) == 1:
        return (int(values[0]),) * 4
    if len(values) == 2:
        pad_h, pad_w = values
        return (int(pad_w), int(pad_w), int(pad_h), int(pad_h))
    left, right, top, bottom = values
    return (int(left), int(right), int(top), int(bottom))


def same_padding(kernel: Tuple[int, int], dilation: Tuple[int, int]) -> Sides:
    """(left, right, top, bottom) that keep a stride-1 convolution's output the input's size, as
    PyTorch's ``padding="same"`` pads: ``dilation * (k - 1)`` in all, the odd one at the end."""
    (k_h, k_w), (d_h, d_w) = kernel, dilation
    total_h, total_w = d_h * (k_h - 1), d_w * (k_w - 1)
    return (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2)


def _string_padding(padding: str, kernel: Tuple[int, int], stride: Tuple[int, int], dilation: Tuple[int, int],
                    transposed: bool) -> Sides:
    """(left, right, top, bottom) for ``"same"`` / ``"valid"``, refused where PyTorch refuses them."""
    if transposed:
        raise ValueError(f"padding={padding!r}: a transposed convolution takes numeric padding only "
                         "(as torch.nn.functional.conv_transpose2d)")
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' is not supported for strided convolutions (stride {stride}), "
                             "as in PyTorch: pass numeric padding")
        return same_padding(kernel, dilation)
    raise ValueError(f"padding must be {_PADDING_FORMS}; got {padding!r}")


def _check_groups(groups: int, channels: int, what: str) -> int:
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
    kernel: Tuple[int, int]          # (kH, kW)
    stride: Tuple[int, int]          # (sh, sw)
    padding: Sides                   # (left, right, top, bottom)
    dilation: Tuple[int, int]        # (dh, dw)
    groups: int
    output_padding: Tuple[int, int]  # (oph, opw), transposed only
    activation: ActivationFunction

    @classmethod
    def from_arguments(cls, transposed: bool, weight: Array, bias: Optional[Array], stride: IntPair,
                       padding: Padding, dilation: IntPair, groups: int, activation: ActivationLike,
                       output_padding: IntPair = 0) -> "ConvSpec":
        """Validate PyTorch-style arguments (weight and bias already float32 arrays)."""
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
        if isinstance(padding, str):
            sides = _string_padding(padding, (k_h, k_w), stride, dilation, transposed)
        else:
            sides = normalize_padding(padding)
        out_pad = (0, 0)
        if transposed:
            out_pad = int_pair("output_padding", output_padding, 0)
            for op, s, d, axis in zip(out_pad, stride, dilation, ("height", "width")):
                if op >= max(s, d):
                    raise ValueError(f"output_padding {op} along {axis} must be smaller than stride {s} "
                                     f"or dilation {d} (PyTorch's rule)")
        return cls(transposed, in_channels, out_channels, (k_h, k_w), stride, sides,
                   dilation, groups, out_pad, ActivationFunction.coerce(activation))

    def output_hw(self, height: int, width: int) -> Tuple[int, int]:
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

    def bnns_weight_shape(self, strides: Optional[Tuple[int, int, int, int]] = None) -> Shape:
        k_h, k_w = self.kernel
        return Shape.convolution_weights_oihw(k_w, k_h, self.in_channels // self.groups, self.out_channels,
                                              (0, 0, 0, 0) if strides is None else strides)

    def torch_weight_strides(self, backend: BackendLike = None) -> Optional[Tuple[int, int, int, int]]:
        """BNNS OIHW strides ``(kW, kH, in/groups, out)`` that describe a transposed layer's
        PyTorch-layout weight ``(in, out, kH, kW)`` in place, when ``backend`` honours weight strides
        and the layer has one group; else None (the weight is copied into BNNS's layout)."""
        if not self.transposed or self.groups != 1 or not get_backend(backend).honours_weight_strides:
            return None
        k_h, k_w = self.kernel
        return (1, k_w, self.out_channels * k_h * k_w, k_h * k_w)

    def make_layer(self, height: int, width: int, bnns_weight: Array, bias: Optional[Array], backend: BackendLike,
                   client_pointer: bool = True, input_strides: Tuple[int, int, int] = (0, 0, 0),
                   output_strides: Tuple[int, int, int] = (0, 0, 0), n_threads: int = 0,
                   weight_strides: Optional[Tuple[int, int, int, int]] = None) -> ConvolutionLayer:
        """A ConvolutionLayer for inputs of (height, width), reading ``bnns_weight`` (BNNS OIHW, or
        with ``weight_strides`` (from ``torch_weight_strides``) a transposed layer's PyTorch-layout weight).

        ``input_strides``/``output_strides``: the images' BNNS element strides (x, row,
        channel); zeros for packed images. ``n_threads``: ``FilterParameters.n_threads``."""
        out_h, out_w = self.output_hw(height, width)
        (s_h, s_w), (d_h, d_w) = self.stride, self.dilation
        parameters = FilterParameters(flags=Flags.use_client_pointer if client_pointer else Flags.none,
                                      n_threads=n_threads)
        return ConvolutionLayer(
            ConvolutionType.transposed if self.transposed else ConvolutionType.standard,
            NDArrayDescriptor(data_type=_FLOAT32_TYPE,
                              shape=Shape.image_chw(width, height, self.in_channels, input_strides)),
            NDArrayDescriptor(bnns_weight, self.bnns_weight_shape(weight_strides)),
            NDArrayDescriptor(data_type=_FLOAT32_TYPE,
                              shape=Shape.image_chw(out_w, out_h, self.out_channels, output_strides)),
            None if bias is None else NDArrayDescriptor(bias, Shape.vector(self.out_channels)),
            ConvolutionPadding.asymmetric(*self.padding), self.activation, self.groups,
            (s_w, s_h), (d_w, d_h), parameters, backend=backend)


def transposed_weight_to_bnns(weight: Array, groups: int, out: Optional[Array] = None) -> Array:
    """PyTorch ``(in, out/groups, kH, kW)`` -> BNNS transposed OIHW memory ``[out][in/groups][kH][kW]``
    (written into ``out``, a C-contiguous array of that shape, when given: one pass, no temporary)."""
    in_channels, out_per_group, k_h, k_w = weight.shape
    grouped = weight.reshape(groups, in_channels // groups, out_per_group, k_h, k_w)
    if out is not None:
        np.copyto(out.reshape(groups, out_per_group, in_channels // groups, k_h, k_w), grouped.transpose(0, 2, 1, 3, 4))
        return out
    return np.ascontiguousarray(grouped.transpose(0, 2, 1, 3, 4)).reshape(
        groups * out_per_group, in_channels // groups, k_h, k_w)


def transposed_weight_from_bnns(bnns_weight: Array, groups: int) -> Array:
    """Inverse of ``transposed_weight_to_bnns``."""
    out_channels, in_per_group, k_h, k_w = bnns_weight.shape
    grouped = bnns_weight.reshape(groups, out_channels // groups, in_per_group, k_h, k_w)
    return np.ascontiguousarray(grouped.transpose(0, 2, 1, 3, 4)).reshape(
        groups * in_per_group, out_channels // groups, k_h, k_w)


def make_linear_layer(weight: Array, bias: Optional[Array], activation: ActivationLike, backend: BackendLike,
                      client_pointer: bool = True, n_threads: int = 0) -> FullyConnectedLayer:
    """A FullyConnectedLayer reading PyTorch's ``(out, in)`` weight (and bias) arrays.
    ``n_threads``: ``FilterParameters.n_threads``."""
    out_features, in_features = weight.shape
    parameters = FilterParameters(flags=Flags.use_client_pointer if client_pointer else Flags.none,
                                  n_threads=n_threads)
    return FullyConnectedLayer(
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(in_features)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(out_features)),
        NDArrayDescriptor(weight, Shape.matrix_row_major(in_features, out_features)),
        None if bias is None else NDArrayDescriptor(bias, Shape.vector(out_features)),
        ActivationFunction.coerce(activation), parameters, backend=backend)


def linear_operands(weight: Any, bias: Any) -> Tuple[Array, Optional[Array], bool]:
    """PyTorch-style ``(out, in)`` weight and ``(out,)`` bias as C-contiguous float32 arrays, and
    whether both are the caller's memory (not copies)."""
    weight, weight_in_place = contiguous_float32("weight", weight, (2,))
    bias_in_place = True
    if bias is not None:
        bias, bias_in_place = contiguous_float32("bias", bias, (1,))
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) for a weight of shape {weight.shape}, "
                             f"got {bias.shape}")
    return weight, bias, weight_in_place and bias_in_place


def pointer(array: Array) -> Any:
    """A C pointer to an array's first element: ``ffi.from_buffer`` for C-contiguous arrays, the
    raw address for strided views (``array`` must outlive the call)."""
    return ffi.from_buffer(array) if array.flags.c_contiguous else address(array)


def run_filter(layer: Any, batch: int, x: Array, in_stride: int, out: Array, out_stride: int) -> None:
    """``BNNSFilterApplyBatch`` on ``layer``'s filter, reading ``x`` and writing ``out`` (checked
    by the caller: their layouts are the ones the filter was made for), counted in flight."""
    status = layer._call(layer.backend.lib.BNNSFilterApplyBatch, batch, pointer(x), in_stride, pointer(out),
                         out_stride)
    if status != 0:
        layer._fail("BNNSFilterApplyBatch")


_NOTHING = object()  # matches no argument


class ConvFilter:
    """A filter for one geometry, ready to run on arrays of that geometry (cached or one-off).

    Holds the layer, the weight and bias arrays it reads (client pointer) and what each call
    needs: output shape, batch size and strides, whether the input must be copied, whether ``out``
    is a view, and whether ``out`` is filled from a packed result (a backend that does not honour
    image strides).
    """

    __slots__ = ("layer", "function", "weight", "bias", "bnns_weight", "groups", "out_shape", "batch",
                 "in_stride", "out_stride", "copy_x", "x_view", "out_view", "copy_out", "calls", "lock", "last",
                 "tick", "fast_keys", "__weakref__")

    def __init__(self, spec: ConvSpec, prepared: ImageInput, output: ImageOutput, weight: Array,
                 bias: Optional[Array], backend: Optional[Backend], layer: Optional[ConvolutionLayer] = None,
                 bnns_weight: Optional[Array] = None) -> None:
        """A new filter for ``backend``; or, given ``layer`` (a module's, for this geometry), that
        filter, reading ``bnns_weight`` (refreshed from ``weight`` at each call) when not None."""
        x4 = prepared.array
        batch, _, height, width = x4.shape
        if layer is None:
            strides = spec.torch_weight_strides(backend)  # a transposed weight read in place, if it can be
            bnns_weight = transposed_weight_to_bnns(weight, spec.groups) if spec.transposed and not strides else None
            layer = spec.make_layer(height, width, weight if bnns_weight is None else bnns_weight,
                                    bias, backend, input_strides=prepared.layout.strides,
                                    output_strides=output.layout.strides, weight_strides=strides)
        self.bnns_weight, self.layer = bnns_weight, layer
        self.function = self.layer.backend.lib.BNNSFilterApplyBatch
        self.weight, self.bias, self.groups = weight, bias, spec.groups
        expected = (batch, spec.out_channels) + spec.output_hw(height, width)
        self.out_shape = expected[1:] if prepared.single else expected
        self.batch, self.in_stride, self.out_stride = batch, prepared.layout.batch_stride, output.layout.batch_stride
        self.copy_x = prepared.copied
        self.x_view = not x4.flags.c_contiguous  # a strided view: no buffer export, pass its address
        self.out_view = output.array is not None and not output.copied and not output.array.flags.c_contiguous
        self.copy_out = output.copied
        self.calls, self.lock = self.layer._calls, self.layer._call_lock
        self.last = (_NOTHING, _NOTHING, None, None)
        self.tick = 0
        self.fast_keys: List[Any] = []

    def run(self, x: Array, out: Optional[Array], x_is_copy: bool = False) -> Array:
        """Run on ``x`` (and ``out``), numpy arrays of this filter's geometry; ``out`` is checked here.

        ``x_is_copy``: ``x`` is already the packed copy of an input this filter copies. The last
        (x, out) pair read in place and their C pointers are remembered (strong references, until
        another pair is used): the same arrays again skip the pointer lookups and the overlap check.
        """
        # Counted in flight from here, as Layer._call counts (inline: this path is the hot one): a
        # filter evicted and closed from now on is destroyed when this call returns; one closed
        # since the caller found it raises LayerClosedError, and nothing has run.
        layer = self.layer
        calls = self.calls
        calls.append(None)
        try:
            handle = layer._handle
            if handle is None:
                raise LayerClosedError(type(layer).__name__)
            self.tick = _next_tick()
            last = self.last
            target: Any = out
            if out is None:
                if x is last[0] and last[1] is None:
                    x_ptr = last[2]
                else:
                    x, x_ptr, _ = self._pointers(x, None, x_is_copy)
                target = np.empty(self.out_shape, FLOAT32)
                out_ptr = _from_buffer(target)
            elif self.copy_out:  # the backend writes packed images only: fill ``out`` afterwards
                if not out.flags.writeable:
                    raise ValueError("out is read-only but BNNS writes into it")
                x, x_ptr, _ = self._pointers(x, out, x_is_copy)
                target = np.empty(self.out_shape, FLOAT32)
                out_ptr = _from_buffer(target)
            else:
                if not out.flags.writeable:
                    raise ValueError("out is read-only but BNNS writes into it")
                if x is last[0] and out is last[1]:
                    x_ptr, out_ptr = last[2], last[3]
                else:
                    x, x_ptr, out_ptr = self._pointers(x, out, x_is_copy)
            if self.bnns_weight is not None:  # transposed: BNNS reads its own layout, refreshed from weight
                transposed_weight_to_bnns(self.weight, self.groups, out=self.bnns_weight)
            lock = self.lock
            if lock is None:
                status = self.function(handle, self.batch, x_ptr, self.in_stride, out_ptr, self.out_stride)
            else:
                with lock:
                    status = self.function(handle, self.batch, x_ptr, self.in_stride, out_ptr, self.out_stride)
        finally:
            calls.pop()
            if layer._handle is None:
                layer._destroy_when_idle()
        if status != 0:
            self.layer._fail("BNNSFilterApplyBatch")
        if out is not None and target is not out:
            np.copyto(out, target)
            return out
        return target  # type: ignore[no-any-return]  # a new array here

    def _pointers(self, x: Array, out: Optional[Array], x_is_copy: bool) -> Tuple[Array, Any, Any]:
        """(x as passed to C, its pointer, out's pointer or None) after the checks; remembered for
        the next call unless ``x`` had to be copied or ``out`` is filled afterwards."""
        if out is not None and not out.flags.aligned:
            raise ValueError("out is not aligned to its element size")
        copied = (self.copy_x and not x_is_copy) or not x.flags.aligned
        if copied:
            x = np.array(x, dtype=FLOAT32, order="C")
            x_ptr = ffi.from_buffer(x)
        else:
            if out is not None and overlap(out, x):
                raise ValueError("out shares memory with the input")
            x_ptr = address(x) if self.x_view else ffi.from_buffer(x)
        if out is None or self.copy_out:
            out_ptr = None
        else:
            out_ptr = address(out) if self.out_view else ffi.from_buffer(out)
        if not copied and not self.copy_x and not self.copy_out:
            self.last = (x, out, x_ptr, out_ptr)
        return x, x_ptr, out_ptr


class _LinearFilter:
    """A cached fully-connected filter reading the caller's weight (and bias) memory; it runs on
    any batch size."""

    __slots__ = ("layer", "weight", "bias", "out_features", "tick", "fast_keys", "__weakref__")

    def __init__(self, weight: Array, bias: Optional[Array], activation: ActivationFunction,
                 backend: Backend) -> None:
        self.layer = make_linear_layer(weight, bias, activation, backend)
        self.weight, self.bias = weight, bias
        self.out_features = weight.shape[0]
        self.tick = 0
        self.fast_keys: List[Any] = []

    def run(self, rows: RowsLayout, output: Optional[RowsLayout]) -> Array:
        """Run on ``rows`` (a ``RowsLayout`` of the input) into ``output`` (one of ``out``, or None)."""
        self.tick = _next_tick()
        x = rows.array
        result = np.empty((x.shape[0], self.out_features), FLOAT32) if output is None else output.array
        run_filter(self.layer, x.shape[0], x, rows.stride, result,
                   self.out_features if output is None else output.stride)
        return result


class _Cache:
    """The functional API's filters: ``entries`` by geometry and weight/bias address, ``fast`` by
    the raw call arguments (weight and bias by identity) for the common repeated call."""

    lock = threading.Lock()
    size = 16
    entries: Dict[Any, Union[ConvFilter, _LinearFilter]] = {}  # geometry + memory key -> ConvFilter or _LinearFilter
    fast: Dict[Any, ConvFilter] = {}     # argument key -> ConvFilter (only while that filter is in ``entries``)
    ticks = itertools.count(1)  # least recently used = smallest tick (see _next_tick)
    FAST_KEYS_PER_FILTER = 8


_Filter = TypeVar("_Filter", ConvFilter, _LinearFilter)
_next_tick = _Cache.ticks.__next__
_fast_get = _Cache.fast.get  # the dict is only ever cleared in place
_from_buffer = ffi.from_buffer


def cache_size() -> int:
    """How many filters :func:`conv2d`, :func:`conv_transpose2d` and :func:`linear` keep.

    Returns
    -------
    int
        The cache's capacity (16 unless changed); 0 means the cache is off.

    Examples
    --------
    >>> import bnns_py
    >>> bnns_py.cache_size()
    16
    """
    return _Cache.size


def set_cache_size(size: int) -> None:
    """Keep at most ``size`` filters (and their weight/bias arrays) for :func:`conv2d`,
    :func:`conv_transpose2d` and :func:`linear`.

    Filters beyond the new size (least recently used first) are destroyed.

    Parameters
    ----------
    size : int
        The new capacity, >= 0; 0 turns the cache off.

    Raises
    ------
    ValueError
        ``size`` is not an integer >= 0.

    Examples
    --------
    >>> import bnns_py
    >>> bnns_py.set_cache_size(4)
    >>> bnns_py.cache_size()
    4
    >>> bnns_py.set_cache_size(16)
    """
    if not is_int(size) or size < 0:
        raise ValueError(f"cache size must be an integer >= 0, got {size!r}")
    with _Cache.lock:
        _Cache.size = int(size)
        dropped = _evict_locked()
    _close(dropped)


def clear_cache() -> None:
    """Destroy every filter cached by :func:`conv2d`, :func:`conv_transpose2d` and :func:`linear`.

    Their weight and bias arrays are released. A call running on another thread finishes first:
    its filter is destroyed when that call returns. Also done at interpreter exit.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> w = np.ones((2, 3), dtype=np.float32)
    >>> bnns_py.linear(np.ones(3, dtype=np.float32), w).tolist()
    [3.0, 3.0]
    >>> bnns_py.cached_filter_count() >= 1
    True
    >>> bnns_py.clear_cache()
    >>> bnns_py.cached_filter_count()
    0
    """
    with _Cache.lock:
        dropped = list(_Cache.entries.values())
        _Cache.entries.clear()
        _Cache.fast.clear()
    _close(dropped)


def cached_filter_count() -> int:
    """The number of filters the functional API's cache holds now.

    Returns
    -------
    int
        Between 0 and :func:`cache_size`.

    Examples
    --------
    >>> import bnns_py
    >>> bnns_py.clear_cache()
    >>> bnns_py.cached_filter_count()
    0
    """
    return len(_Cache.entries)


atexit.register(clear_cache)


def _close(entries: Sequence[Union[ConvFilter, _LinearFilter]]) -> None:
    """Close the filters of entries removed from the cache (outside its lock): each is destroyed
    now, or by the call running it on another thread when that call returns."""
    for entry in entries:
        entry.layer.close()


def _evict_locked() -> List[Any]:
    """Remove least recently used entries beyond ``_Cache.size``; returns them (to close unlocked)."""
    dropped = []
    entries = _Cache.entries
    while len(entries) > _Cache.size:
        key = min(entries, key=lambda k: entries[k].tick)
        entry = entries.pop(key)
        for fast_key in entry.fast_keys:
            if _Cache.fast.get(fast_key) is entry:
                del _Cache.fast[fast_key]
        dropped.append(entry)
    return dropped


def _cached(key: Any, fast_key: Any, make: Callable[[], Union[ConvFilter, _LinearFilter]]) -> Any:
    """The cached filter for ``key`` (made by ``make()`` on a miss), reachable by ``fast_key`` too."""
    entry = _Cache.entries.get(key)
    dropped: Sequence[Any] = ()
    if entry is None:
        made = make()
        with _Cache.lock:
            entry = _Cache.entries.get(key)
            if entry is None:
                entry = made
                entry.tick = _next_tick()
                _Cache.entries[key] = entry
                # one evicted as soon as made (a cache of size 0 now) is left to the caller to close
                dropped = [evicted for evicted in _evict_locked() if evicted is not entry]
            else:  # another thread made one first: ours is dropped
                dropped = [made]
    if fast_key is not None and entry.weight is fast_key[1][0] and entry.bias is fast_key[1][1]:
        with _Cache.lock:
            if _Cache.entries.get(key) is entry:
                entry.fast_keys.append(fast_key[0])
                _Cache.fast[fast_key[0]] = entry  # type: ignore[assignment]  # only convolutions have fast keys
                if len(entry.fast_keys) > _Cache.FAST_KEYS_PER_FILTER:
                    old = entry.fast_keys.pop(0)
                    if _Cache.fast.get(old) is entry:
                        del _Cache.fast[old]
    _close(dropped)
    return entry


def _run_cached(key: Any, fast_key: Any, make: Callable[[], _Filter], run: Callable[[_Filter], Array]) -> Array:
    """``run(filter)`` on the cached filter for ``key`` (see ``_cached``), closed afterwards if it
    is no longer cached. Another thread may evict and close that filter before ``run`` starts: it
    then runs on a new one (on a filter of its own once the cache is turned off)."""
    while _Cache.size:
        entry = _cached(key, fast_key, make)
        try:
            return run(entry)
        except LayerClosedError:  # closed before this call began: nothing ran
            continue
        finally:
            if _Cache.entries.get(key) is not entry:  # evicted meanwhile, or as soon as it was made
                entry.layer.close()
    return _run_once(make, run)


def _run_once(make: Callable[[], _Filter], run: Callable[[_Filter], Array]) -> Array:
    """``run(filter)`` on a new filter, destroyed afterwards."""
    entry = make()
    try:
        return run(entry)
    finally:
        entry.layer.close()


def _plain_arguments(*values: object) -> bool:
    """True when each value is an int, a string or a tuple of ints (exactly: no bool, float or
    numpy int, which compare equal to other values)."""
    return all(type(v) is int or type(v) is str or (type(v) is tuple and all(type(e) is int for e in v))
               for v in values)


def _run(transposed: bool, x: Any, weight: Any, bias: Any, stride: IntPair, padding: Padding, dilation: IntPair,
         groups: int, activation: ActivationLike, backend: BackendLike, out: Any, output_padding: IntPair = 0) -> Any:
    # Fast path: the same call as one before (same weight and bias objects, same argument values,
    # same input/output layouts) reuses that filter. Only numpy arrays take it.
    if not ((type(stride) is int and type(padding) is int and type(dilation) is int and type(groups) is int
             and type(output_padding) is int) or _plain_arguments(stride, padding, dilation, groups, output_padding)):
        # True == 1 and 1.0 == 1: only exact ints may be compared with the cached arguments
        return _run_checked(transposed, x, weight, bias, stride, padding, dilation, groups, activation,
                            backend, out, output_padding, None)
    fast_key: Any
    # Only float32 arrays are cached, so dtypes are compared here rather than hashed into the key;
    # a 1-D bias's strides also fix its shape (an array's size never changes).
    try:
        if (x.dtype is FLOAT32 and weight.dtype is FLOAT32 and (bias is None or bias.dtype is FLOAT32)
                and (out is None or out.dtype is FLOAT32)):
            fast_key = (transposed, x.shape, x.strides, id(weight), weight.shape, weight.strides, id(bias),
                        None if bias is None else bias.strides, stride, padding, dilation, groups, activation,
                        backend, output_padding, None if out is None else out.shape,
                        None if out is None else out.strides)
            entry = _fast_get(fast_key)
        else:
            fast_key = entry = None
    except (AttributeError, TypeError):  # not numpy arrays, or unhashable arguments: the checked path
        fast_key = entry = None
    if (entry is not None and entry.weight is weight and entry.bias is bias and type(x) is np.ndarray
            and (out is None or type(out) is np.ndarray)):
        try:
            return entry.run(x, out)
        except LayerClosedError:  # evicted and closed by another thread since the look-up
            pass
    return _run_checked(transposed, x, weight, bias, stride, padding, dilation, groups, activation,
                        backend, out, output_padding, fast_key)


def _run_checked(transposed: bool, x: Any, weight: Any, bias: Any, stride: IntPair, padding: Padding,
                 dilation: IntPair, groups: int, activation: ActivationLike, backend: BackendLike, out: Any,
                 output_padding: IntPair, fast_key: Any) -> Any:
    given_weight, given_bias = weight, bias
    weight, weight_in_place = contiguous_float32("weight", weight, (4,))
    bias_in_place = True
    if bias is not None:
        bias, bias_in_place = contiguous_float32("bias", bias, (1,))
    spec = ConvSpec.from_arguments(transposed, weight, bias, stride, padding, dilation, groups,
                                   activation, output_padding)
    backend = get_backend(backend)
    honour = backend.honours_image_strides
    prepared = image_input("input", x, spec.in_channels, honour)
    batch, _, height, width = prepared.array.shape
    expected = (batch, spec.out_channels) + spec.output_hw(height, width)
    output = image_output(out, expected, prepared.single, prepared.array, honour)

    x4, out4 = prepared.array, output.array
    x_run = x4[0] if prepared.single else x4
    result_out = None if out4 is None else (out4[0] if prepared.single else out4)

    def make() -> ConvFilter:
        return ConvFilter(spec, prepared, output, weight, bias, backend)

    def run(entry: ConvFilter) -> Array:
        return entry.run(x_run, result_out, prepared.copied)

    # Cache only filters reading the caller's own memory (no converted copy that could go stale).
    if weight_in_place and bias_in_place:
        key = ("conv", spec, backend.name, x4.shape, prepared.layout, prepared.copied, not x4.flags.c_contiguous,
               output.layout, output.copied, out4 is not None and not out4.flags.c_contiguous, prepared.single,
               data_address(weight), weight.shape, weight.strides,
               None if bias is None else (data_address(bias), bias.strides))
        if fast_key is not None and weight is given_weight and bias is given_bias:
            fast_key = (fast_key, (given_weight, given_bias))
        else:
            fast_key = None
        result = _run_cached(key, fast_key, make, run)
    else:
        result = _run_once(make, run)
    return result if out is None else written(out)


def conv2d(input: Any, weight: Any, bias: Any = None, stride: IntPair = 1, padding: Padding = 0,
           dilation: IntPair = 1, groups: int = 1, *, activation: ActivationLike = None,
           backend: BackendLike = None, out: Any = None) -> Any:
    """2-D convolution (cross-correlation) computed by BNNS, with ``torch.nn.functional.conv2d``'s
    arguments in the same order.

    The BNNS filter is cached: a repeated call with the same weight/bias memory and geometry only
    runs it (see the module docstring, :func:`clear_cache` and :func:`set_cache_size`).

    Parameters
    ----------
    input : array_like, float32, shape (N, C_in, H, W) or (C_in, H, W)
        A numpy array, a CPU torch tensor or any object exposing ``__dlpack__``,
        ``__array_interface__`` or the buffer protocol, read in place. Strided views are read in
        place when BNNS can describe them; other layouts are copied (see the module docstring).
    weight : array_like, float32, shape (C_out, C_in / groups, kH, kW)
        The filters, in PyTorch's layout (same kinds of objects as ``input``).
    bias : array_like, float32, shape (C_out,), optional
        Added before the activation; None for no bias.
    stride, dilation : int or (int, int), optional
        ``(sh, sw)`` and ``(dh, dw)``, each >= 1; an int is used for both axes.
    padding : int, (int, int), (int, int, int, int) or str, optional
        Zero padding: an int for every side, ``(pad_h, pad_w)``, ``(left, right, top, bottom)``
        (a BNNS extra: PyTorch has no asymmetric padding), ``"valid"`` (none) or ``"same"`` (the
        output keeps the input's size: ``dilation * (k - 1)`` zeros per axis, the odd one at the
        end, as PyTorch pads; stride 1 only).
    groups : int, optional
        Channel groups; ``C_in`` and ``C_out`` must be multiples of it (``C_in`` for depthwise).
    activation : ActivationFunction, str or None, keyword-only
        Applied after the bias: None (identity), a name such as ``"relu"`` or ``"sigmoid"``, or
        an :class:`ActivationFunction`.
    backend : str, Backend or None, keyword-only
        ``"accelerate"``, ``"portable"`` or None for :func:`default_backend_name`.
    out : array_like, float32, keyword-only
        Written in place and returned: a numpy array or a CPU torch tensor that does not require
        grad, of the output's shape; C-contiguous, or a strided view with contiguous rows.

    Returns
    -------
    numpy.ndarray of float32, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        A new array (3-D for 3-D input), or ``out`` when given. Per axis, the size is PyTorch's
        ``(H + top + bottom - dH * (kH - 1) - 1) // sH + 1``.

    Raises
    ------
    TypeError
        An operand that is not an array object or not float32, a tensor on another device, or
        padding of the wrong form.
    ValueError
        Shapes that do not fit together (channels, groups, bias), bad stride, dilation or
        padding values, an empty output, or an ``out`` of the wrong shape, read-only, sharing
        memory with ``input`` or in a layout BNNS cannot write.
    BNNSError
        The backend refuses the layer (e.g. an activation it cannot fuse).

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> from bnns_py import reference
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    >>> w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    >>> relu = bnns_py.ActivationFunction.rectified_linear
    >>> y = bnns_py.conv2d(x, w, stride=2, padding=1, activation=relu)
    >>> y.shape, y.dtype
    ((2, 4, 4, 4), dtype('float32'))
    >>> bnns_py.compare(y, reference.conv2d(x, w, stride=2, padding=1, activation=relu)).ok
    True
    """
    return _run(False, input, weight, bias, stride, padding, dilation, groups, activation, backend, out)


def conv_transpose2d(input: Any, weight: Any, bias: Any = None, stride: IntPair = 1,
                     padding: Union[int, Sequence[int]] = 0, output_padding: IntPair = 0, groups: int = 1,
                     dilation: IntPair = 1, *, activation: ActivationLike = None, backend: BackendLike = None,
                     out: Any = None) -> Any:
    """2-D transposed convolution computed by BNNS, with ``torch.nn.functional.conv_transpose2d``'s
    arguments in the same order (``groups`` before ``dilation``).

    ``weight`` is read in place where the backend honours weight strides and ``groups`` is 1,
    else rearranged into BNNS's transposed OIHW layout at each call. The filter is cached as
    :func:`conv2d`'s is.

    Parameters
    ----------
    input : array_like, float32, shape (N, C_in, H, W) or (C_in, H, W)
        Read in place, as for :func:`conv2d`.
    weight : array_like, float32, shape (C_in, C_out / groups, kH, kW)
        PyTorch's layout for transposed convolutions.
    bias : array_like, float32, shape (C_out,), optional
        Added before the activation; None for no bias.
    stride, dilation : int or (int, int), optional
        ``(sh, sw)`` and ``(dh, dw)``, each >= 1.
    padding : int, (int, int) or (int, int, int, int), optional
        An int, ``(pad_h, pad_w)`` or ``(left, right, top, bottom)``, removed from the full
        output; no ``"same"``/``"valid"``, as in PyTorch.
    output_padding : int or (int, int), optional
        Extra rows/columns at the bottom/right, each smaller than the stride or the dilation.
    groups : int, optional
        Channel groups; ``C_in`` must be a multiple of it.
    activation, backend, out : keyword-only
        As for :func:`conv2d`.

    Returns
    -------
    numpy.ndarray of float32, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        A new array, or ``out`` when given. Per axis, the size is
        ``(in - 1) * stride - pad_before - pad_after + dilation * (k - 1) + 1 + output_padding``.

    Raises
    ------
    TypeError
        As for :func:`conv2d`.
    ValueError
        As for :func:`conv2d`, string padding, or an ``output_padding`` not smaller than the
        stride or the dilation.
    BNNSError
        The backend refuses the layer.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> from bnns_py import reference
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    >>> w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    >>> y = bnns_py.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    >>> y.shape
    (1, 2, 10, 10)
    >>> bnns_py.compare(y, reference.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)).ok
    True
    """
    return _run(True, input, weight, bias, stride, padding, dilation, groups, activation, backend, out,
                output_padding)


def linear(input: Any, weight: Any, bias: Any = None, *, activation: ActivationLike = None,
           backend: BackendLike = None, out: Any = None) -> Any:
    """Fully-connected layer ``y = act(input @ weight.T + bias)`` computed by BNNS, with
    ``torch.nn.functional.linear``'s arguments.

    The filter is cached as :func:`conv2d`'s is, by weight/bias memory and activation (any batch
    size runs on it): in-place changes to the weight and bias are seen by the next call.

    Parameters
    ----------
    input : array_like, float32, shape (N, in_features) or (in_features,)
        A numpy array, CPU torch tensor or array object (as for :func:`conv2d`); rows with
        contiguous values are read in place at any row stride, other layouts are copied.
    weight : array_like, float32, shape (out_features, in_features)
        As ``torch.nn.functional.linear``'s.
    bias : array_like, float32, shape (out_features,), optional
        Added before the activation; None for no bias.
    activation : ActivationFunction, str or None, keyword-only
        None (identity), a name such as ``"relu"``, or an :class:`ActivationFunction`.
    backend : str, Backend or None, keyword-only
        ``"accelerate"``, ``"portable"`` or None for :func:`default_backend_name`.
    out : array_like, float32, shape (N, out_features) or (out_features,), keyword-only
        Written in place and returned: a numpy array or a CPU torch tensor that does not require
        grad, with contiguous rows.

    Returns
    -------
    numpy.ndarray of float32, shape (N, out_features) or (out_features,)
        A new array (1-D for 1-D input), or ``out`` when given.

    Raises
    ------
    TypeError
        An operand that is not an array object or not float32.
    ValueError
        Shapes that do not fit together, or an ``out`` of the wrong shape, read-only, sharing
        memory with ``input`` or without contiguous rows.
    BNNSError
        The backend refuses the layer.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    >>> w = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]], dtype=np.float32)
    >>> bnns_py.linear(x, w, np.array([0.0, 1.0], dtype=np.float32)).tolist()
    [[-2.0, 4.0]]
    >>> bnns_py.linear(x[0], w, activation="relu").tolist()
    [0.0, 3.0]
    """
    weight, bias, in_place = linear_operands(weight, bias)
    activation = ActivationFunction.coerce(activation)
    rows = vector_input("input", input, weight.shape[1])
    output = vector_output(out, (rows.array.shape[0], weight.shape[0]), rows.single, rows.array)
    backend = get_backend(backend)

    def make() -> _LinearFilter:
        return _LinearFilter(weight, bias, activation, backend)

    def run(entry: _LinearFilter) -> Array:
        return entry.run(rows, output)

    if in_place:
        key = ("linear", backend.name, activation, data_address(weight), weight.shape,
               None if bias is None else data_address(bias))
        result = _run_cached(key, None, make, run)
    else:
        result = _run_once(make, run)
    if out is not None:
        return written(out)
    return result[0] if rows.single else result


__all__ = ["ConvSpec", "cache_size", "cached_filter_count", "clear_cache", "conv2d", "conv_transpose2d",
           "linear", "normalize_padding", "same_padding", "set_cache_size", "transposed_weight_from_bnns",
           "transposed_weight_to_bnns"]
