"""``Layer`` and ``UnaryLayer``: Python objects that own one ``BNNSFilter``.

The filter is destroyed exactly once: by ``close()``, by leaving a ``with`` block, or when the
object is garbage collected (``ffi.gc``), whichever comes first. A layer closed while other
threads are inside one of its calls (``apply``, ``apply_backward``) keeps its filter until the
last of those calls returns; calls started after ``close()`` raise ``LayerClosedError``.
``filter_counts()`` reports how many filters this process created and destroyed through bnns-py,
on any backend.

Numpy arrays given to ``apply``/``apply_backward`` must have the shape the layer's descriptor
implies, in numpy order (``check_array_shape``).
"""
import functools
import threading
from typing import Any, Callable, Dict, Iterable, List, Literal, NoReturn, Optional, Tuple, TypeVar, Union

import numpy as np
import numpy.typing as npt

from . import _repr
from ._ffi import ffi
from ._checks import FixedAttributes
from .activation import ActivationFunction, check_differentiable
from .backend import get_backend
from .descriptor import NDArrayDescriptor, batch_extent, check_array_memory
from .enums import BFLOAT16_BITS, ActivationFunctionKind, DataType
from .errors import BNNSError, LayerClosedError
from .filter_parameters import FilterParameters
from .shape import Shape

Operand = Union["npt.NDArray[Any]", NDArrayDescriptor]  # what apply and apply_backward take
_Self = TypeVar("_Self", bound="Layer")


class _Counts:
    # RLock: a destructor may run from a garbage collection triggered while the lock is held.
    lock = threading.RLock()
    created = 0
    destroyed = 0


def filter_counts() -> Tuple[int, int]:
    """How many BNNS filters bnns-py created and destroyed in this process, over every backend.

    Returns
    -------
    (int, int)
        ``(created, destroyed)``; equal when no filter is alive.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> created, destroyed = bnns_py.filter_counts()
    >>> with bnns_py.Linear(np.ones((2, 3), dtype=np.float32)) as lin:
    ...     _ = lin(np.ones(3, dtype=np.float32))
    >>> now_created, now_destroyed = bnns_py.filter_counts()
    >>> now_created - created, now_destroyed - destroyed
    (1, 1)
    """
    with _Counts.lock:
        return _Counts.created, _Counts.destroyed


def check_array_shape(name: str, array: "npt.NDArray[Any]", shape: Shape, batch_size: int, batched: bool = True,
                      alternative: Optional[Tuple[int, ...]] = None) -> None:
    """Raise ``ValueError`` unless numpy ``array`` has the shape that ``batch_size`` items of
    ``shape`` (a ``Shape``) take in numpy order.

    A packed shape's items are arrays of ``shape.numpy_shape``: ``array`` must be
    ``(batch_size, *numpy_shape)``, or ``numpy_shape`` when ``batch_size`` is 1 (e.g.
    ``(N, C, H, W)`` / ``(C, H, W)`` for ``image_chw``, ``(N, n)`` / ``(n,)`` for a vector).
    A shape with gaps between its values or items (explicit strides) describes the storage, not an array
    shape: ``array`` holds that storage flat, or with ``batch_size`` as its leading dimension, and
    spans at least the ``batch_size`` items (at most ``batch_size * shape.batch_stride`` values,
    where that is larger). ``batched=False`` (weights, bias): one item, never a batch of one.
    ``alternative``: another shape accepted (the shape of the array a layer reads its weights from).
    """
    given = array.shape
    if given == alternative:
        return
    # packed items, also packed one after the other (an axis of size 1 may carry any stride)
    if shape.is_packed and (batch_size == 1 or shape.batch_stride == shape.element_count):
        item = shape.numpy_shape
        if given == item if not batched else given == (batch_size,) + item or (batch_size == 1 and given == item):
            return
        if not batched:
            wanted = f"{item}" + (f" (or {alternative}, the layer's array)" if alternative not in (None, item) else "")
            raise ValueError(f"{name} must have shape {wanted} ({shape!r} in numpy order), got {given}")
        wanted = f"{(batch_size,) + item}" + (f" or {item}" if batch_size == 1 else "")
        raise ValueError(f"{name} must have shape {wanted} for batch_size={batch_size} ({shape!r} in numpy "
                         f"order), got {given}")
    needed = batch_extent(shape, batch_size)
    room = max(needed, batch_size * shape.batch_stride)
    if array.ndim > 1 and batch_size > 1 and array.shape[0] != batch_size:
        raise ValueError(f"{name} has shape {array.shape}: its leading dimension must be batch_size={batch_size} "
                         f"(or pass the {shape!r} storage flat)")
    if not needed <= array.size <= room:
        limit = f"{needed}" if needed == room else f"{needed} to {room}"
        raise ValueError(f"{name} holds {array.size} values (shape {array.shape}); {batch_size} item(s) of "
                         f"{shape!r} with its strides take {limit}")


def _destroy_filter(destroy: Callable[[Any], None], keepalive: Tuple[Any, ...], handle: Any) -> None:
    # keepalive holds what the filter may still touch while being destroyed (client weights,
    # allocator callbacks): referenced here so it outlives the handle.
    destroy(handle)
    with _Counts.lock:
        _Counts.destroyed += 1


def create_filter(backend: Any, function_name: str, *args: Any, keepalive: Iterable[Any] = ()) -> Any:
    """Call ``backend.lib.<function_name>(*args)`` and wrap the result so it is destroyed once.

    Raises ``BNNSError`` (``kind="unable_to_create_layer"``) with the backend's reason on NULL.
    """
    handle = getattr(backend.lib, function_name)(*args)
    if handle == ffi.NULL:
        reason = backend.last_error()
        detail = f": {reason}" if reason else " (BNNS logs the reason to the system log)"
        raise BNNSError(f"{function_name} returned NULL on the {backend.name} backend{detail}",
                        kind="unable_to_create_layer", function=function_name, reason=reason)
    with _Counts.lock:
        _Counts.created += 1
    return ffi.gc(handle, lambda h, d=backend.destroy, k=tuple(keepalive): _destroy_filter(d, k, h))


# UnaryLayer.apply's memory of its last numpy operands: (input, output, batch size, input
# dtype, output dtype, the C call with the filter and pointers bound, the C function's name).
# Nothing matches this one.
_NO_LAST_APPLY = (object(), object()) + (None,) * 5


class Layer(FixedAttributes):
    """Base class: owns a ``BNNSFilter`` and destroys it exactly once.

    The filter is destroyed by :meth:`close`, by leaving a ``with`` block, or when the object is
    garbage collected, whichever comes first; calls in flight on other threads finish first.
    Layers are made by their subclasses (``ConvolutionLayer``, ``FullyConnectedLayer``, ...).

    Attributes
    ----------
    bnns_filter
        The C ``BNNSFilter`` handle (``LayerClosedError`` after ``close()``).
    backend : Backend
        The library the filter belongs to.
    closed : bool
        True after ``close()``.
    """

    def __init__(self, handle: Any, backend: Any, keepalive: Iterable[Any] = ()) -> None:
        self._handle = handle
        self._backend = backend
        self._keepalive = tuple(keepalive)
        self._last_apply: Tuple[Any, ...] = _NO_LAST_APPLY
        # apply_backward's descriptors for the numpy gradient arrays it was last given, by argument
        # name: (array, batch size, numpy dtype, extent, NDArrayDescriptor, its C struct, batch stride)
        self._gradient_views: Dict[str, Tuple[Any, ...]] = {}
        # Accelerate's filters are reported not to be thread-safe: calls on one layer are
        # serialized there. The portable backend is safe (a busy filter uses a private workspace).
        self._call_lock = None if backend.is_portable else threading.Lock()
        # Calls in flight and close(). A call appends to _calls, then reads _handle; it pops after C
        # returns, then reads _handle again. close() clears _handle, then destroys the filter if
        # _calls is empty, else leaves it in _doomed for the last call out. list.append and
        # list.pop are atomic, and each side writes before it reads, so either close() sees the
        # call or the call sees the close (and raises): no lock on the fast path.
        self._calls: List[None] = []
        self._doomed = None
        self._state_lock = threading.Lock()  # close(), destruction and the fast path's memory

    def _enter(self) -> Any:
        """Count a call in and return the filter (``LayerClosedError`` once closed)."""
        self._calls.append(None)
        handle = self._handle
        if handle is None:
            self._leave()
            raise LayerClosedError(type(self).__name__)
        return handle

    def _leave(self) -> None:
        """Count a call out; the last one out of a closed layer destroys its filter."""
        self._calls.pop()
        if self._handle is None:
            self._destroy_when_idle()

    def _destroy_when_idle(self) -> None:
        """Destroy the filter close() left, unless calls are still in flight (the last one does)."""
        with self._state_lock:
            doomed = self._doomed
            if doomed is None or self._calls:
                return
            self._doomed = None
        ffi.release(doomed)

    def _call(self, function: Callable[..., int], *args: Any) -> int:
        """``function(filter, *args)``: a C call on this layer's filter, counted in flight (so
        ``close()`` cannot destroy the filter under it), one thread at a time where BNNS needs it."""
        handle = self._enter()
        try:
            if self._call_lock is None:
                return function(handle, *args)
            with self._call_lock:
                return function(handle, *args)
        finally:
            self._leave()

    @property
    def bnns_filter(self) -> Any:
        """The C ``BNNSFilter`` handle (raises ``LayerClosedError`` after ``close()``)."""
        handle = self._handle
        if handle is None:
            raise LayerClosedError(type(self).__name__)
        return handle

    @property
    def backend(self) -> Any:
        return self._backend

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Destroy the filter: now, or when the last call in flight on another thread returns.
        Later calls raise ``LayerClosedError``. Safe to call more than once, from any thread."""
        with self._state_lock:
            handle, self._handle = self._handle, None
            self._last_apply = _NO_LAST_APPLY  # drop the remembered arrays and their pointers
            self._gradient_views = {}
            if handle is None:
                return
            self._doomed = handle
        self._destroy_when_idle()

    def __enter__(self: _Self) -> _Self:
        self.bnns_filter  # entering a closed layer is an error
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        backend = getattr(getattr(self, "_backend", None), "name", "?")
        state = "closed" if getattr(self, "_handle", None) is None else "open"
        return f"{type(self).__name__}({backend} backend, {state})"

    def _repr_html_(self) -> str:
        # subclasses with their own __repr__ (legacy layers) show it as the title
        state = "closed" if getattr(self, "_handle", None) is None else "open"
        backend = getattr(getattr(self, "_backend", None), "name", "?")
        return _repr.key_value_html(repr(self), [("backend", backend), ("state", state)])

    def _fail(self, function_name: str) -> NoReturn:
        reason = self._backend.last_error()
        detail = f": {reason}" if reason else ""
        raise BNNSError(f"{function_name} returned -1 on the {self._backend.name} backend{detail}",
                        kind="layer_apply_fail", function=function_name, reason=reason)


class UnaryLayer(Layer):
    """A layer with one input and one output, applied to a batch (Swift's ``UnaryLayer``).

    :meth:`apply` runs it forward, :meth:`apply_backward` computes gradients.

    Attributes
    ----------
    input_descriptor, output_descriptor : NDArrayDescriptor
        Describe one input and one output item; ``apply`` checks its operands against them.
    """

    def __init__(self, handle: Any, backend: Any, input_descriptor: NDArrayDescriptor,
                 output_descriptor: NDArrayDescriptor, keepalive: Iterable[Any] = ()) -> None:
        super().__init__(handle, backend, keepalive)
        self.input_descriptor = input_descriptor
        self.output_descriptor = output_descriptor
        # per-call facts about each operand, computed once: (dtype, batch stride, extent of one item)
        self._operands = {name: (d.data_type.numpy_dtype, d.shape.batch_stride, d.shape.extent)
                          for name, d in (("input", input_descriptor), ("output", output_descriptor))}
        self._last_apply = _NO_LAST_APPLY

    def apply(self, batch_size: int, input: Operand, output: Operand) -> None:
        """Run the filter on ``batch_size`` items (Swift's ``apply(batchSize:input:output:)``).

        Parameters
        ----------
        batch_size : int
            Items to compute, >= 1.
        input : NDArrayDescriptor or numpy.ndarray
            A descriptor with data (as in Swift), or a C-contiguous numpy array of exactly the
            shape the layer's input descriptor implies for ``batch_size`` items, in numpy order:
            ``(batch_size, C, H, W)`` images, or ``(C, H, W)`` when ``batch_size`` is 1;
            ``(batch_size, n)`` or ``(n,)`` vectors. Descriptors with gaps (explicit strides)
            take their storage instead, flat or with ``batch_size`` leading (see
            ``check_array_shape``). The dtype is the descriptor's data type's.
        output : NDArrayDescriptor or numpy.ndarray
            The same for the output; written in place.

        Raises
        ------
        ValueError
            Any other shape (even with enough values: a transposed, NHWC or flat array would be
            misread), non-contiguous or read-only arrays, a bad ``batch_size``.
        TypeError
            Operands of another kind or dtype.
        LayerClosedError
            The layer was closed.
        BNNSError
            The C call failed.

        Notes
        -----
        The batch strides are the descriptors' ``shape.batch_stride``. Calling again with the same two numpy arrays and batch size is the fast path: the layer
        remembers the last pair (and keeps a reference to both until another pair is used or the
        layer is closed), so the repeated call only re-checks their dtype, contiguity and
        writability before calling C. The GIL is released during the C call.
        """
        last = self._last_apply
        if input is last[0] and output is last[1] and batch_size == last[2] and type(batch_size) is int:
            out_flags = output.flags
            if (input.dtype is last[3] and output.dtype is last[4] and out_flags.writeable
                    and out_flags.c_contiguous and input.flags.c_contiguous):
                # counted in flight as _enter / _leave do (inline: this path is the hot one); a
                # close() since _last_apply was read makes the call raise
                calls = self._calls
                calls.append(None)
                try:
                    if self._handle is None:
                        raise LayerClosedError(type(self).__name__)
                    status = last[5]()  # the C call with its filter and arguments bound
                finally:
                    calls.pop()
                    if self._handle is None:
                        self._destroy_when_idle()
                if status != 0:
                    self._fail(last[6])
                return
        self._apply_checked(batch_size, input, output)

    def _apply_checked(self, batch_size: int, input: Operand, output: Operand) -> None:
        """``apply`` with every check; remembers a numpy pair for the fast path."""
        self.bnns_filter  # a closed layer is reported before its arguments
        batch_size = _check_batch_size(batch_size)
        in_ptr, in_stride, in_array = self._pointer("input", input, self.input_descriptor, batch_size, False)
        out_ptr, out_stride, out_array = self._pointer("output", output, self.output_descriptor, batch_size, True)
        if np.may_share_memory(in_array, out_array):
            raise ValueError("input and output share memory; BNNS needs separate buffers")
        args: Tuple[Any, ...]
        if batch_size == 1:  # one item: the three-argument call, which costs cffi less
            name, args = "BNNSFilterApply", (in_ptr, out_ptr)
        else:
            name, args = "BNNSFilterApplyBatch", (batch_size, in_ptr, in_stride, out_ptr, out_stride)
        function = getattr(self._backend.lib, name)
        handle = self._enter()
        try:
            if input is in_array and output is out_array:  # numpy arrays, not descriptors
                call = functools.partial(function, handle, *args)
                if self._call_lock is not None:
                    call = functools.partial(_locked, self._call_lock, call)
                self._remember(input, output, batch_size, call, name)
            if self._call_lock is None:
                status = function(handle, *args)
            else:
                with self._call_lock:
                    status = function(handle, *args)
        finally:
            self._leave()
        if status != 0:
            self._fail(name)

    def _remember(self, input: Any, output: Any, batch_size: int, call: Callable[[], int], name: str) -> None:
        """Remember the arrays of a checked call for the fast path, unless the layer was closed
        meanwhile (close() forgets them, and a closed layer must not keep its filter bound)."""
        with self._state_lock:
            if self._handle is not None:
                self._last_apply = (input, output, batch_size, input.dtype, output.dtype, call, name)

    def _pointer(self, name: str, value: Any, expected: NDArrayDescriptor, batch_size: int,
                 writable: bool) -> Tuple[Any, int, Any]:
        """(data pointer, batch stride, numpy array) for an apply argument, after checking it."""
        dtype, stride, extent = self._operands[name]
        if isinstance(value, NDArrayDescriptor):
            if value.shape != expected.shape or value.data_type != expected.data_type:
                raise ValueError(f"{name} descriptor {value.shape!r} {value.data_type.name} does not "
                                 f"match the layer's {expected.shape!r} {expected.data_type.name}")
            array = value.data
            if array is None:
                raise BNNSError(f"{name} descriptor has no data", kind="array_descriptor_invalid_data")
            check_array_memory(name, array, dtype, (batch_size - 1) * stride + extent, writable)
            return value._buffer, stride, array
        check_array_memory(name, value, dtype, (batch_size - 1) * stride + extent, writable)
        check_array_shape(name, value, expected.shape, batch_size)
        return ffi.from_buffer(value), stride, value

    def apply_backward(self, batch_size: int, input: Optional[Operand], output: Optional[Operand],
                       output_gradient: Optional[Operand], input_gradient: Optional[Operand],
                       weights_gradient: Optional[Operand] = None, bias_gradient: Optional[Operand] = None) -> None:
        """Back-propagate ``output_gradient`` (dL/dy) through the layer (Swift's ``applyBackward``).

        Numpy arrays have the shapes :meth:`apply` takes (x and dL/dx the input's, y and dL/dy
        the output's); ``weights_gradient`` and ``bias_gradient`` those of the weights and bias
        (their descriptor's numpy shape, or the array the layer reads). Gradients given as
        ``NDArrayDescriptor`` honour its ``flags`` (``NDArrayFlags.backprop_accumulate`` adds to
        the buffer); numpy arrays are overwritten.

        Parameters
        ----------
        batch_size : int
            Items in the batch, >= 1.
        input, output : numpy.ndarray or NDArrayDescriptor
            The forward pass's x and y (``output`` may be None where the fused activation's
            derivative does not need it).
        output_gradient : numpy.ndarray or NDArrayDescriptor
            dL/dy.
        input_gradient : numpy.ndarray, NDArrayDescriptor or None
            Receives dL/dx; None skips it.
        weights_gradient, bias_gradient : numpy.ndarray, NDArrayDescriptor or None, optional
            Receive dL/dW (summed over the batch, in the weights' creation layout) and dL/db.

        Raises
        ------
        ValueError
            Wrong shapes, a missing ``output`` (needed by a fused activation other than
            identity) or ``input`` (needed for ``weights_gradient``), or an activation BNNS
            cannot differentiate from the output.
        TypeError
            Descriptors of the layer that are not float32.
        NotImplementedError
            What only the portable backend cannot differentiate.
        LayerClosedError
            The layer was closed.
        BNNSError
            The C call failed.
        """
        self.bnns_filter  # a closed layer is reported before its arguments
        batch_size = _check_batch_size(batch_size)
        self._check_backward_preconditions(input, output, weights_gradient)
        in_ptr, in_stride, _ = self._optional_pointer("input", input, self.input_descriptor, batch_size, False)
        out_ptr, out_stride, _ = self._optional_pointer("output", output, self.output_descriptor, batch_size, False)
        keep: List[Any] = []
        if output_gradient is None:
            raise ValueError("output_gradient is required")
        dy, dy_stride = self._gradient("output_gradient", output_gradient, lambda: self.output_descriptor, batch_size, keep)
        dx, dx_stride = self._gradient("input_gradient", input_gradient, lambda: self.input_descriptor, batch_size, keep)
        dw, _ = self._gradient("weights_gradient", weights_gradient, self._weights_shape_descriptor, 1, keep, False)
        db, _ = self._gradient("bias_gradient", bias_gradient, self._bias_shape_descriptor, 1, keep, False)
        status = self._call(self._backend.lib.BNNSFilterApplyBackwardBatch, batch_size, in_ptr, in_stride,
                            dx, dx_stride, out_ptr, out_stride, dy, dy_stride, dw, db)
        if status != 0:
            self._fail("BNNSFilterApplyBackwardBatch")

    def _check_backward_preconditions(self, input: Optional[Operand], output: Optional[Operand],
                                      weights_gradient: Optional[Operand]) -> None:
        """Subclasses refuse what BNNS cannot differentiate, before the C call."""

    def _weights_shape_descriptor(self) -> NDArrayDescriptor:
        raise ValueError(f"{type(self).__name__} has no weights")

    def _bias_shape_descriptor(self) -> NDArrayDescriptor:
        raise ValueError(f"{type(self).__name__} has no bias")

    def _optional_pointer(self, name: str, value: Optional[Operand], expected: NDArrayDescriptor, batch_size: int,
                          writable: bool) -> Tuple[Any, int, Any]:
        if value is None:
            return ffi.NULL, expected.shape.batch_stride, None
        return self._pointer(name, value, expected, batch_size, writable)

    def _gradient(self, name: str, value: Optional[Operand], expected_descriptor: Callable[[], NDArrayDescriptor],
                  batch_size: int, keep: List[Any], batched: bool = True) -> Tuple[Any, int]:
        """(descriptor pointer, batch stride) for a gradient argument; NULL for None."""
        if value is None:
            return ffi.NULL, 0
        seen = self._gradient_views.get(name)
        if seen is not None and seen[0] is value and seen[1] == batch_size:
            # the same numpy array again: its descriptor stands, once its memory is checked again
            check_array_memory(name, value, seen[2], seen[3], True)
            keep.append(seen[4])
            return seen[5], seen[6]
        expected = expected_descriptor()
        if not isinstance(value, NDArrayDescriptor):
            dtype, extent = expected.data_type.numpy_dtype, batch_extent(expected.shape, batch_size)
            check_array_memory(name, value, dtype, extent, True)
            # a weight or bias gradient may also take the shape of the array the layer reads them from
            check_array_shape(name, value, expected.shape, batch_size, batched,
                              None if expected.data is None else expected.data.shape)
            array = value
            value = NDArrayDescriptor(value.reshape(-1), expected.shape, batch_size=batch_size)
            self._gradient_views[name] = (array, batch_size, dtype, extent, value, value.c_descriptor,
                                          value.shape.batch_stride)
        elif value.shape != expected.shape or value.data_type != expected.data_type:
            raise ValueError(f"{name} descriptor {value.shape!r} {value.data_type.name} does not match "
                             f"the layer's {expected.shape!r} {expected.data_type.name}")
        elif value.data is None:
            raise BNNSError(f"{name} descriptor has no data", kind="array_descriptor_invalid_data")
        else:
            check_array_memory(name, value.data, expected.data_type.numpy_dtype,
                               batch_extent(expected.shape, batch_size), True)
        keep.append(value)
        return value.c_descriptor, value.shape.batch_stride


class WeightedLayer(UnaryLayer):
    """The common base of ``ConvolutionLayer`` and ``FullyConnectedLayer``: a unary layer with
    ``weights`` and an optional ``bias`` (``NDArrayDescriptor``s with data), a fused
    ``activation`` and the ``filter_parameters`` it was created with; ``apply_backward`` also
    returns weight and bias gradients, in the layout of the layer's own descriptors."""

    def __init__(self, handle: Any, backend: Any, input_descriptor: NDArrayDescriptor,
                 output_descriptor: NDArrayDescriptor, weights: NDArrayDescriptor, bias: Optional[NDArrayDescriptor],
                 activation: ActivationFunction, filter_parameters: Optional[FilterParameters]) -> None:
        super().__init__(handle, backend, input_descriptor, output_descriptor, (weights, bias, filter_parameters))
        for name, descriptor in (("input", input_descriptor), ("output", output_descriptor)):
            if descriptor.data_type == DataType.bfloat16:  # numpy has no bfloat16: its bits, as uint16
                _, batch_stride, extent = self._operands[name]
                self._operands[name] = (BFLOAT16_BITS, batch_stride, extent)
        self.weights = weights
        self.bias = bias
        self.activation = activation
        self.filter_parameters = filter_parameters

    def _pointer(self, name: str, value: Any, expected: NDArrayDescriptor, batch_size: int,
                 writable: bool) -> Tuple[Any, int, Any]:
        # A clear message for a numpy array of the wrong dtype, before the C call; bfloat16
        # operands are uint16 arrays of bit patterns (ml_dtypes.bfloat16 arrays are viewed so).
        if isinstance(value, np.ndarray):
            data_type = expected.data_type
            if value.dtype not in data_type.storage_dtypes:
                hint = (": pass a uint16 array of bfloat16 bit patterns (bnns_py.enums.float32_to_bfloat16_bits)"
                        if data_type == DataType.bfloat16 else f": pass {name}.astype(np.{data_type.numpy_dtype})")
                raise TypeError(f"{name} has dtype {value.dtype} but the layer's {name} data type is "
                                f"{data_type.name}{hint}")
            if value.dtype != BFLOAT16_BITS and data_type == DataType.bfloat16:
                value = value.view(BFLOAT16_BITS)
        return super()._pointer(name, value, expected, batch_size, writable)

    def _weights_shape_descriptor(self) -> NDArrayDescriptor:
        return self.weights

    def _bias_shape_descriptor(self) -> NDArrayDescriptor:
        if self.bias is None:
            raise ValueError("bias_gradient given but the layer has no bias")
        return self.bias

    def _check_backward_preconditions(self, input: Optional[Operand], output: Optional[Operand],
                                      weights_gradient: Optional[Operand]) -> None:
        # A layer that copied its weights at creation (no Flags.use_client_pointer) is differentiated
        # too: bnns.h asks for client pointers, but BNNS on macOS 15 ran such a backward and returned
        # the right gradient (conformance evidence), and the portable backend follows it.
        for name, descriptor in (("input", self.input_descriptor), ("weights", self.weights),
                                 ("output", self.output_descriptor), ("bias", self.bias)):
            if descriptor is not None and descriptor.data_type != DataType.float32:
                raise TypeError(f"apply_backward needs float32 descriptors; {name} is {descriptor.data_type.name}")
        check_differentiable(self._backend, self.activation)
        if self.activation.function != ActivationFunctionKind.identity and output is None:
            raise ValueError(f"output (the forward result) is required to back-propagate through {self.activation!r}")
        if weights_gradient is not None and input is None:
            raise ValueError("input (the forward input) is required for weights_gradient")


class BackwardRunner:
    """``apply_backward`` of a weighted layer for one batch of packed float32 numpy operands (the
    shapes of a call already checked by ``apply_backward``): the gradient arrays are allocated and
    their descriptors copied from templates made once, then one C call. Each call has its own
    descriptors, so calls from several threads may run at once."""

    __slots__ = ("layer", "function", "batch", "in_stride", "out_stride", "in_delta", "out_delta", "weights_delta",
                 "bias_delta", "in_delta_stride", "out_delta_stride", "input_shape", "weights_shape", "bias_shape")

    def __init__(self, layer: "WeightedLayer", batch_size: int, input_shape: Optional[Tuple[int, ...]],
                 weights_shape: Tuple[int, ...], bias_shape: Optional[Tuple[int, ...]]) -> None:
        """``input_shape``: of the input gradient (None: not computed); ``weights_shape`` and
        ``bias_shape`` (None: the layer has no bias): of the arrays the weight and bias gradients
        are returned in, of the layer's weights' and bias's memory."""
        def template(descriptor: NDArrayDescriptor) -> NDArrayDescriptor:
            return NDArrayDescriptor(shape=descriptor.shape, data_type=DataType.float32)

        self.layer = layer
        self.function = layer._backend.lib.BNNSFilterApplyBackwardBatch
        self.batch = batch_size
        self.in_stride, self.out_stride = layer._operands["input"][1], layer._operands["output"][1]
        self.in_delta = None if input_shape is None else template(layer.input_descriptor)
        self.out_delta = template(layer.output_descriptor)
        self.weights_delta = template(layer.weights)
        self.bias_delta = None if layer.bias is None or bias_shape is None else template(layer.bias)
        self.in_delta_stride = layer.input_descriptor.shape.batch_stride if input_shape is not None else 0
        self.out_delta_stride = layer.output_descriptor.shape.batch_stride
        self.input_shape, self.weights_shape, self.bias_shape = input_shape, weights_shape, bias_shape

    def run(self, input: "npt.NDArray[Any]", output: Optional["npt.NDArray[Any]"],
            output_gradient: "npt.NDArray[Any]") -> Tuple[Optional["npt.NDArray[Any]"], "npt.NDArray[Any]",
                                                          Optional["npt.NDArray[Any]"]]:
        """(dL/dx or None, dL/dW, dL/db or None), new arrays, for operands of the checked shapes
        (C-contiguous float32, aligned: not checked here)."""
        new, from_buffer = ffi.new, ffi.from_buffer
        dx = None if self.input_shape is None else np.empty(self.input_shape, np.float32)
        dw = np.empty(self.weights_shape, np.float32)
        db = None if self.bias_shape is None else np.empty(self.bias_shape, np.float32)
        dx_c = db_c = ffi.NULL
        if dx is not None:
            dx_c = new(_DESCRIPTOR, self.in_delta.c_descriptor[0])  # type: ignore[union-attr]
            dx_c.data = from_buffer(dx)
        dy_c = new(_DESCRIPTOR, self.out_delta.c_descriptor[0])
        dy_c.data = from_buffer(output_gradient)
        dw_c = new(_DESCRIPTOR, self.weights_delta.c_descriptor[0])
        dw_c.data = from_buffer(dw)
        if db is not None:
            db_c = new(_DESCRIPTOR, self.bias_delta.c_descriptor[0])  # type: ignore[union-attr]
            db_c.data = from_buffer(db)
        status = self.layer._call(self.function, self.batch, from_buffer(input), self.in_stride, dx_c,
                                  self.in_delta_stride, ffi.NULL if output is None else from_buffer(output),
                                  self.out_stride, dy_c, self.out_delta_stride, dw_c, db_c)
        if status != 0:
            self.layer._fail("BNNSFilterApplyBackwardBatch")
        return dx, dw, db


_DESCRIPTOR = ffi.typeof("BNNSNDArrayDescriptor *")


def _locked(lock: Any, call: Callable[[], int]) -> int:
    with lock:
        return call()


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an integer, not {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


__all__ = ["BackwardRunner", "Layer", "UnaryLayer", "WeightedLayer", "check_array_shape", "filter_counts", "create_filter", "get_backend"]
