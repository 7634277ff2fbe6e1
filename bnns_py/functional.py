"""numpy-first convolution with PyTorch's argument conventions, for scripts and notebooks.

``conv2d`` and ``conv_transpose2d`` take NCHW (or CHW) float32 arrays and weights in PyTorch's
layouts and run them through a BNNS filter on the chosen backend. Padding is an int,
``(pad_h, pad_w)`` or ``(left, right, top, bottom)``. ``Conv2d``/``ConvTranspose2d`` keep the
filter and also return gradients.

Filter cache: creating a BNNS filter costs far more than running a small one, so the functional
API keeps the ``cache_size()`` (default 16) most recently used filters, keyed by the complete
geometry (input/output shapes and strides, stride, padding, dilation, groups, activation,
transposed or not, backend) and by the address of the weight and bias memory. Cached filters
read the weights and bias from the caller's arrays at every call (``Flags.use_client_pointer``),
so changing those arrays in place is seen by the next call, and each cache entry keeps its weight
and bias arrays alive: the cache holds at most ``cache_size()`` recent weight arrays. Only weight
and bias arrays used in place are cached (C-contiguous float32 numpy arrays; anything that needs
a conversion gets a filter of its own, destroyed after the call). ``clear_cache()`` destroys
every cached filter (also done at interpreter exit) and ``set_cache_size(0)`` disables the cache.
Each cached filter also remembers the last input (and ``out``) it ran on, with their C pointers,
so a repeated call skips those look-ups; that keeps those arrays alive until the next call with
other arrays or ``clear_cache()``. With ``backend=None`` the default backend is resolved when a
filter is created. Thread-safe: a filter evicted or cleared while another thread runs it is
destroyed when that call returns.

Strided views: ``x`` (and ``out``) may be numpy views such as ``big[:, 2:10]`` (a channel slice)
or ``padded[:, :, 1:-1, 1:-1]`` (an interior window). When every stride is a positive multiple
of 4 bytes, rows are contiguous (width stride of one element) and channels, rows and batch items
are ordered as in NCHW without overlapping, BNNS reads and writes the view in place through
descriptor strides (no copy). Other layouts of ``x`` are copied to a C-contiguous array first;
other layouts of ``out`` are refused.
"""
import atexit
import itertools
import threading
from dataclasses import dataclass

import numpy as np

from ._checks import int_pair, is_int
from ._ffi import ffi
from .activation import ActivationFunction
from .backend import get_backend
from .convolution import ConvolutionLayer, ConvolutionPadding, ConvolutionType
from .descriptor import NDArrayDescriptor, check_array_memory
from .enums import DataType, Flags
from .filter_parameters import FilterParameters
from .geometry import max_output_size, transposed_output_size
from .shape import Shape

_FLOAT32 = np.dtype(np.float32)
_TOO_HARD = getattr(np, "exceptions", np).TooHardError  # numpy < 1.25 has it at the top level
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

    def bnns_weight_shape(self, strides=None):
        k_h, k_w = self.kernel
        return Shape.convolution_weights_oihw(k_w, k_h, self.in_channels // self.groups, self.out_channels,
                                              (0, 0, 0, 0) if strides is None else strides)

    def torch_weight_strides(self, backend=None):
        """BNNS OIHW strides ``(kW, kH, in/groups, out)`` that describe a transposed layer's
        PyTorch-layout weight ``(in, out, kH, kW)`` in place, when ``backend`` honours weight strides
        and the layer has one group; else None (the weight is copied into BNNS's layout)."""
        if not self.transposed or self.groups != 1 or not get_backend(backend).honours_weight_strides:
            return None
        k_h, k_w = self.kernel
        return (1, k_w, self.out_channels * k_h * k_w, k_h * k_w)

    def make_layer(self, height, width, bnns_weight, bias, backend, client_pointer=True,
                   input_strides=(0, 0, 0), output_strides=(0, 0, 0), n_threads=0, weight_strides=None):
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


def transposed_weight_to_bnns(weight, groups, out=None):
    """PyTorch ``(in, out/groups, kH, kW)`` -> BNNS transposed OIHW memory ``[out][in/groups][kH][kW]``
    (written into ``out``, a C-contiguous array of that shape, when given: one pass, no temporary)."""
    in_channels, out_per_group, k_h, k_w = weight.shape
    grouped = weight.reshape(groups, in_channels // groups, out_per_group, k_h, k_w)
    if out is not None:
        np.copyto(out.reshape(groups, out_per_group, in_channels // groups, k_h, k_w), grouped.transpose(0, 2, 1, 3, 4))
        return out
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


def _image_strides(array):
    """BNNS element strides ``(x, row, channel)`` and the batch stride of an ``(N, C, H, W)``
    float32 array that BNNS can read or write in place, or None.

    In place means: every stride a positive multiple of the item size, rows contiguous (x stride
    1), channels and rows ordered as NCHW without overlap, batch items not overlapping. Strides of
    axes of size 1 do not matter. Packed images get ``(0, 0, 0)``, BNNS's "packed" strides.
    """
    if not array.flags.aligned:
        return None
    item = array.itemsize
    batch, channels, height, width = array.shape
    elements = []
    for size, stride in zip(array.shape, array.strides):
        if size == 1:
            elements.append(None)
        elif stride <= 0 or stride % item:
            return None
        else:
            elements.append(stride // item)
    s_n, s_c, s_h, s_w = elements
    if s_w not in (None, 1):
        return None
    s_h = width if s_h is None else s_h
    s_c = height * s_h if s_c is None else s_c
    if s_h < width or s_c < height * s_h:
        return None
    extent = width + (height - 1) * s_h + (channels - 1) * s_c
    if s_n is None:
        s_n = channels * s_c
    elif s_n < extent:
        return None
    strides = (0, 0, 0) if (s_h, s_c) == (width, height * width) else (1, s_h, s_c)
    return strides, s_n


def _address(array):
    """A ``void *`` to the first element of a (possibly strided) array; ``array`` must outlive it."""
    return ffi.cast("void *", array.__array_interface__["data"][0])


def _overlap(a, b):
    """True when ``a`` and ``b`` may share memory (exactly, unless that is too costly to decide)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))
    except _TOO_HARD:
        return True


def _prepare_strided_input(x, spec):
    """(x as (N, C, H, W), single, BNNS input strides, batch stride, copied): a view BNNS reads in
    place, or a C-contiguous copy when it cannot."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, not {type(x).__name__}")
    if x.dtype != _FLOAT32:
        raise TypeError(f"x has dtype {x.dtype}; BNNS convolution here computes in float32: "
                        f"pass x.astype(np.float32)")
    if x.ndim not in (3, 4):
        raise ValueError(f"x must have 3 or 4 dimensions, got shape {x.shape}")
    single = x.ndim == 3
    x4 = x[np.newaxis] if single else x
    if x4.shape[1] != spec.in_channels:
        raise ValueError(f"x has {x4.shape[1]} channels, the weights expect {spec.in_channels}")
    if min(x4.shape) == 0:
        raise ValueError(f"x is empty: shape {x4.shape}")
    layout = _image_strides(x4)
    copied = layout is None
    if copied:
        x4 = np.array(x4, dtype=_FLOAT32, order="C")
        layout = _image_strides(x4)
    return x4, single, layout[0], layout[1], copied


def _strided_output(out, expected, single, x4):
    """(out as (N, C, H, W), BNNS output strides, batch stride) after checking ``out``."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, not {type(out).__name__}")
    if out.dtype != _FLOAT32:
        raise TypeError(f"out has dtype {out.dtype}, expected {_FLOAT32}")
    wanted = expected[1:] if single else expected
    if out.shape != wanted:
        raise ValueError(f"out has shape {out.shape}, expected {wanted}")
    out4 = out[np.newaxis] if single else out
    layout = _image_strides(out4)
    if layout is None:
        raise ValueError(f"out is not C-contiguous (strides {out.strides}) and BNNS cannot write that layout in "
                         "place: pass a C-contiguous array, or a view with contiguous rows whose strides are "
                         "positive multiples of 4 bytes in NCHW order")
    if not out.flags.writeable:
        raise ValueError("out is read-only but BNNS writes into it")
    if _overlap(out4, x4):
        raise ValueError("out shares memory with x")
    return out4, layout[0], layout[1]


_NOTHING = object()  # matches no argument


class _ConvFilter:
    """A filter for one geometry, ready to run on arrays of that geometry (cached or one-off).

    Holds the layer, the weight and bias arrays it reads (client pointer) and what each call
    needs: output shape, batch size and strides, whether ``x`` must be copied or ``out`` is a view.
    """

    __slots__ = ("layer", "handle", "function", "weight", "bias", "bnns_weight", "groups", "out_shape",
                 "batch", "in_stride", "out_stride", "copy_x", "x_view", "out_view", "lock", "last",
                 "tick", "fast_keys", "__weakref__")

    def __init__(self, spec, x4, single, in_strides, in_stride, copy_x, out4, out_strides, out_stride,
                 weight, bias, backend):
        batch, _, height, width = x4.shape
        strides = spec.torch_weight_strides(backend)  # a transposed weight read in place, if it can be
        self.bnns_weight = transposed_weight_to_bnns(weight, spec.groups) if spec.transposed and not strides else None
        self.layer = spec.make_layer(height, width, weight if self.bnns_weight is None else self.bnns_weight,
                                     bias, backend, input_strides=in_strides, output_strides=out_strides,
                                     weight_strides=strides)
        self.handle = self.layer.bnns_filter
        self.function = self.layer.backend.lib.BNNSFilterApplyBatch
        self.weight, self.bias, self.groups = weight, bias, spec.groups
        expected = (batch, spec.out_channels) + spec.output_hw(height, width)
        self.out_shape = expected[1:] if single else expected
        self.batch, self.in_stride, self.out_stride = batch, in_stride, out_stride
        self.copy_x = copy_x
        self.x_view = not x4.flags.c_contiguous  # a strided view: no buffer export, pass its address
        self.out_view = out4 is not None and not out4.flags.c_contiguous
        self.lock = self.layer._call_lock
        self.last = (_NOTHING, _NOTHING, None, None)
        self.tick = 0
        self.fast_keys = []

    def run(self, x, out):
        """Run on ``x`` (and ``out``) of this filter's geometry; ``out`` is checked here.

        The last (x, out) pair read in place and their C pointers are remembered (strong
        references, until another pair is used): the same arrays again skip the pointer lookups
        and the overlap check."""
        self.tick = _next_tick()
        last = self.last
        if out is None:
            if x is last[0] and last[1] is None:
                x_ptr = last[2]
            else:
                x, x_ptr, _ = self._pointers(x, None)
            result = np.empty(self.out_shape, _FLOAT32)
            out_ptr = _from_buffer(result)
        else:
            if not out.flags.writeable:
                raise ValueError("out is read-only but BNNS writes into it")
            if x is last[0] and out is last[1]:
                x_ptr, out_ptr = last[2], last[3]
            else:
                x, x_ptr, out_ptr = self._pointers(x, out)
            result = out
        if self.bnns_weight is not None:  # transposed: BNNS reads its own layout, refreshed from weight
            np.copyto(self.bnns_weight, transposed_weight_to_bnns(self.weight, self.groups))
        lock = self.lock
        if lock is None:
            status = self.function(self.handle, self.batch, x_ptr, self.in_stride, out_ptr, self.out_stride)
        else:
            with lock:
                status = self.function(self.handle, self.batch, x_ptr, self.in_stride, out_ptr, self.out_stride)
        if status != 0:
            self.layer._fail("BNNSFilterApplyBatch")
        return result

    def _pointers(self, x, out):
        """(x as passed to C, its pointer, out's pointer or None) after the checks; remembered for
        the next call unless ``x`` had to be copied."""
        if out is not None and not out.flags.aligned:
            raise ValueError("out is not aligned to its element size")
        copied = self.copy_x or not x.flags.aligned
        if copied:
            x = np.array(x, dtype=_FLOAT32, order="C")
            x_ptr = ffi.from_buffer(x)
        else:
            if out is not None and _overlap(out, x):
                raise ValueError("out shares memory with x")
            x_ptr = _address(x) if self.x_view else ffi.from_buffer(x)
        out_ptr = None if out is None else (_address(out) if self.out_view else ffi.from_buffer(out))
        if not copied:
            self.last = (x, out, x_ptr, out_ptr)
        return x, x_ptr, out_ptr


class _Cache:
    """The functional API's filters: ``entries`` by geometry and weight/bias address, ``fast`` by
    the raw call arguments (weight and bias by identity) for the common repeated call."""

    lock = threading.Lock()
    size = 16
    entries: dict = {}  # geometry + memory key -> _ConvFilter
    fast: dict = {}     # argument key -> _ConvFilter (only while that filter is in ``entries``)
    ticks = itertools.count(1)  # least recently used = smallest tick (see _next_tick)
    FAST_KEYS_PER_FILTER = 8


_next_tick = _Cache.ticks.__next__
_fast_get = _Cache.fast.get  # the dict is only ever cleared in place
_from_buffer = ffi.from_buffer


def cache_size():
    """How many filters ``conv2d``/``conv_transpose2d`` keep (0: the cache is off)."""
    return _Cache.size


def set_cache_size(size):
    """Keep at most ``size`` filters (and their weight/bias arrays) for ``conv2d`` and
    ``conv_transpose2d``; 0 turns the cache off. Filters beyond the new size are destroyed."""
    if not is_int(size) or size < 0:
        raise ValueError(f"cache size must be an integer >= 0, got {size!r}")
    with _Cache.lock:
        _Cache.size = int(size)
        dropped = _evict_locked()
    del dropped  # destroyed here, outside the lock


def clear_cache():
    """Destroy every filter cached by ``conv2d``/``conv_transpose2d`` and release their weight
    and bias arrays. A call running on another thread finishes first: its filter is destroyed
    when that call returns."""
    with _Cache.lock:
        dropped = list(_Cache.entries.values())
        _Cache.entries.clear()
        _Cache.fast.clear()
    del dropped


def cached_filter_count():
    """Filters currently held by the functional API's cache."""
    return len(_Cache.entries)


atexit.register(clear_cache)


def _evict_locked():
    """Remove least recently used entries beyond ``_Cache.size``; returns them (to drop unlocked)."""
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


def _cached(key, fast_key, make):
    """The cached filter for ``key`` (made by ``make()`` on a miss), reachable by ``fast_key`` too."""
    entry = _Cache.entries.get(key)
    dropped = ()
    if entry is None:
        made = make()
        with _Cache.lock:
            entry = _Cache.entries.get(key)
            if entry is None:  # else another thread made one first: ours is dropped
                entry = made
                entry.tick = _next_tick()
                _Cache.entries[key] = entry
                dropped = _evict_locked()
    if fast_key is not None and entry.weight is fast_key[1][0] and entry.bias is fast_key[1][1]:
        with _Cache.lock:
            if _Cache.entries.get(key) is entry:
                entry.fast_keys.append(fast_key[0])
                _Cache.fast[fast_key[0]] = entry
                if len(entry.fast_keys) > _Cache.FAST_KEYS_PER_FILTER:
                    old = entry.fast_keys.pop(0)
                    if _Cache.fast.get(old) is entry:
                        del _Cache.fast[old]
    del dropped
    return entry


def _plain_ints(*values):
    """True when each value is an int or a tuple of ints (exactly: no bool, float or numpy int)."""
    return all(type(v) is int or (type(v) is tuple and all(type(e) is int for e in v)) for v in values)


def _run(transposed, x, weight, bias, stride, padding, dilation, groups, activation, backend, out,
         output_padding=0):
    # Fast path: the same call as one before (same weight and bias objects, same argument values,
    # same input/output layouts) reuses that filter.
    if not (type(stride) is int and type(padding) is int and type(dilation) is int and type(groups) is int
            and type(output_padding) is int) and not _plain_ints(stride, padding, dilation, groups, output_padding):
        # True == 1 and 1.0 == 1: only exact ints may be compared with the cached arguments
        return _run_checked(transposed, x, weight, bias, stride, padding, dilation, groups, activation,
                            backend, out, output_padding, None)
    # Only float32 arrays are cached, so dtypes are compared here rather than hashed into the key;
    # a 1-D bias's strides also fix its shape (an array's size never changes).
    try:
        if (x.dtype is _FLOAT32 and weight.dtype is _FLOAT32 and (bias is None or bias.dtype is _FLOAT32)
                and (out is None or out.dtype is _FLOAT32)):
            fast_key = (transposed, x.shape, x.strides, id(weight), weight.shape, weight.strides, id(bias),
                        None if bias is None else bias.strides, stride, padding, dilation, groups, activation,
                        backend, output_padding, None if out is None else out.shape,
                        None if out is None else out.strides)
            entry = _fast_get(fast_key)
        else:
            fast_key = entry = None
    except (AttributeError, TypeError):  # not arrays, or unhashable arguments: the checked path
        fast_key = entry = None
    if entry is not None and entry.weight is weight and entry.bias is bias:
        return entry.run(x, out)
    return _run_checked(transposed, x, weight, bias, stride, padding, dilation, groups, activation,
                        backend, out, output_padding, fast_key)


def _run_checked(transposed, x, weight, bias, stride, padding, dilation, groups, activation, backend, out,
                 output_padding, fast_key):
    given_weight, given_bias = weight, bias
    weight = _as_float32("weight", weight, (4,))
    bias = None if bias is None else _as_float32("bias", bias, (1,))
    spec = ConvSpec.from_arguments(transposed, weight, bias, stride, padding, dilation, groups,
                                   activation, output_padding)
    x4, single, in_strides, in_stride, copied = _prepare_strided_input(x, spec)
    batch, _, height, width = x4.shape
    expected = (batch, spec.out_channels) + spec.output_hw(height, width)
    out4, out_strides, out_stride = (None, (0, 0, 0), spec.out_channels * expected[2] * expected[3])
    if out is not None:
        out4, out_strides, out_stride = _strided_output(out, expected, single, x4)
    backend = get_backend(backend)

    def make():
        return _ConvFilter(spec, x4, single, in_strides, in_stride, copied, out4, out_strides, out_stride,
                           weight, bias, backend)

    # Cache only filters reading the caller's own arrays (no converted copy that could go stale).
    if _Cache.size and weight is given_weight and bias is given_bias:
        key = (spec, backend.name, x4.shape, in_strides, in_stride, copied, not x4.flags.c_contiguous,
               out_strides, out_stride, out4 is not None and not out4.flags.c_contiguous, single,
               weight.__array_interface__["data"][0], weight.shape, weight.strides,
               None if bias is None else (bias.__array_interface__["data"][0], bias.strides))
        if fast_key is not None:
            fast_key = (fast_key, (given_weight, given_bias))
        return _cached(key, fast_key, make).run(x, out)
    entry = make()
    try:
        return entry.run(x, out)
    finally:
        entry.layer.close()


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           backend=None, out=None):
    """2-D convolution (cross-correlation) of ``x`` with ``weight``, computed by BNNS.

    Args:
        x: float32 array ``(N, C_in, H, W)`` or ``(C_in, H, W)``; strided views are read in
            place when BNNS can describe them, other layouts are copied (see the module docstring).
        weight: float32 array ``(C_out, C_in / groups, kH, kW)``.
        bias: optional float32 array ``(C_out,)``.
        stride, dilation: int or ``(sh, sw)``.
        padding: int, ``(pad_h, pad_w)`` or ``(left, right, top, bottom)``.
        groups: number of groups (``C_in`` for depthwise).
        activation: None, a name (``"relu"``, ``"sigmoid"``, ...) or an ``ActivationFunction``,
            applied after the bias.
        backend: ``"accelerate"``, ``"portable"`` or None (default backend).
        out: optional writable float32 array of the output shape to write into: C-contiguous,
            or a strided view with contiguous rows (written in place; see the module docstring).

    Returns:
        ``(N, C_out, H_out, W_out)`` (or ``(C_out, H_out, W_out)`` for 3-D ``x``), with PyTorch's
        output size ``(H + top + bottom - dH*(kH-1) - 1) // sH + 1``.

    The BNNS filter is cached: a repeated call with the same weight/bias arrays and geometry only
    runs it (see the module docstring, ``clear_cache`` and ``set_cache_size``).
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
