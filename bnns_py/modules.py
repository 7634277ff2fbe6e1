"""``Conv2d``, ``ConvTranspose2d`` and ``Linear``: numpy-first layers that keep their BNNS filters
and return all three gradients, with the arguments of the functions of the same names
(``bnns_py.conv2d``, ``conv_transpose2d``, ``linear``, in the same positional order).

The weight and bias arrays are used in place (BNNS's client-pointer mode), so an optimizer step
such as ``conv.weight -= lr * grads.weight`` changes the next forward pass, as in training with
Swift's ``ConvolutionLayer.applyBackward``. With ``copy_weights=True`` the filters copy them at
creation instead (BNNS's default), for inference: a filter then packs or transforms its weights
once rather than at every call, and the module's parameters are read-only copies. Operands may be
numpy arrays, CPU torch tensors or other array objects (read in place when float32); results and
gradients are numpy arrays. One filter is kept per input height and width (and per strided-view
layout read in place).

``close()`` (or leaving a ``with`` block) destroys the filters once no call of another thread is
running on them; later calls raise ``LayerClosedError``.
"""
import threading
from typing import Any, Dict, Iterable, List, Literal, NamedTuple, Optional, Tuple, Type, TypeVar

import numpy as np
import numpy.typing as npt

from . import _repr
from ._checks import fixed_attribute
from ._arrays import (FLOAT32, Array, float32_array, frozen_parameter, image_input, image_output, vector_input, vector_output,
                      writable_parameter, written)
from .activation import ActivationFunction
from .convolution import ConvolutionLayer
from .fully_connected import FullyConnectedLayer
from .layer import BackwardRunner
from .backend import get_backend
from .errors import LayerClosedError
from .filter_parameters import checked_thread_count
from .functional import (ActivationLike, BackendLike, ConvSpec, IntPair, Padding, ConvFilter, linear_operands, make_linear_layer, pointer, run_filter, transposed_weight_from_bnns,
                         transposed_weight_to_bnns)


_Self = TypeVar("_Self", bound="_Lifecycle")
_ConvModuleType = TypeVar("_ConvModuleType", bound="_ConvModule")


class Gradients(NamedTuple):
    """The gradients ``backward`` returns: dL/dx, dL/dW and dL/db, as float32 numpy arrays.

    Attributes
    ----------
    input : numpy.ndarray or None
        dL/dx, the shape of the forward input; None when ``need_input_gradient`` was False.
    weight : numpy.ndarray
        dL/dW in the module's weight layout (``module.weight``'s shape), summed over the batch.
    bias : numpy.ndarray or None
        dL/db, shape ``(C_out,)`` or ``(out_features,)``, summed over the batch; None without bias.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> lin = bnns_py.Linear(np.ones((2, 3), dtype=np.float32), np.zeros(2, dtype=np.float32))
    >>> x = np.ones((4, 3), dtype=np.float32)
    >>> grads = lin.backward(x, lin(x), np.ones((4, 2), dtype=np.float32))
    >>> grads.input.shape, grads.weight.tolist(), grads.bias.tolist()
    ((4, 3), [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]], [4.0, 4.0])
    >>> lin.close()
    """

    input: Optional["npt.NDArray[np.float32]"]
    weight: "npt.NDArray[np.float32]"
    bias: Optional["npt.NDArray[np.float32]"]


class _Lifecycle:
    """Calls in flight are counted, so ``close()`` from one thread never destroys a filter another
    thread is running: the filters are closed when the last call returns."""

    def _init_lifecycle(self) -> None:
        self._state_lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self._retired: List[Any] = []  # layers of replaced parameters, closed once no call runs

    def _enter(self) -> None:
        with self._state_lock:
            if self._closed:
                raise LayerClosedError(type(self).__name__)
            self._in_flight += 1

    def _exit(self) -> None:
        with self._state_lock:
            self._in_flight -= 1
            idle = self._in_flight == 0
            release = self._closed and idle
            retired = self._take_retired() if idle and self._retired else []
        _close_all(retired)
        if release:
            self._release()

    def _retire(self, layers: Iterable[Any]) -> None:
        """Close ``layers`` (read no more by new calls) once the calls running now return."""
        with self._state_lock:
            self._retired.extend(layers)
            retired = self._take_retired() if self._in_flight == 0 else []
        _close_all(retired)

    def _take_retired(self) -> List[Any]:
        retired, self._retired = self._retired, []
        return retired

    def close(self) -> None:
        """Destroy the module's filters, once calls running on other threads return.

        Safe to call more than once; later ``forward``/``backward`` calls raise
        :class:`LayerClosedError`. Leaving a ``with`` block calls it.
        """
        with self._state_lock:
            self._closed = True
            release = self._in_flight == 0
        if release:
            self._release()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False


def _close_all(layers: Iterable[Any]) -> None:
    for layer in layers:
        layer.close()


def _output_like(value: Array, expected: Tuple[int, ...], single: bool) -> Array:
    """``value`` (1-D or N-D) as the ``expected`` batched shape, or a ValueError."""
    if value.shape not in (expected, expected[1:] if single else expected):
        raise ValueError(f"has shape {value.shape}, expected {expected[1:] if single else expected}")
    return np.ascontiguousarray(value.reshape(expected))


def _gradient_operand(name: str, value: Any, expected: Tuple[int, ...], single: bool,
                      ndims: Tuple[int, ...]) -> Array:
    array = float32_array(name, value, ndims)
    try:
        return _output_like(array, expected, single)
    except ValueError as error:
        raise ValueError(f"{name} {error}") from None


_RUNNERS_PER_MODULE = 8  # input/output layouts a module keeps ready (more are rare: forgotten all at once)


def _runner_key(x: Any, out: Any) -> Any:
    """What fixes a forward call's filter and checks, for float32 numpy operands (else None)."""
    if type(x) is not np.ndarray or x.dtype is not FLOAT32:
        return None
    if out is None:
        return x.shape, x.strides
    if type(out) is not np.ndarray or out.dtype is not FLOAT32:
        return None
    return x.shape, x.strides, out.shape, out.strides


def _backward_key(x: Any, y: Any, grad_output: Any, need_input_gradient: bool) -> Any:
    """What fixes a backward call's filter, gradient shapes and checks, for float32 numpy operands
    (else None)."""
    if type(x) is not np.ndarray or x.dtype is not FLOAT32 or type(grad_output) is not np.ndarray or \
            grad_output.dtype is not FLOAT32:
        return None
    if y is None:
        return x.shape, x.strides, None, grad_output.shape, grad_output.strides, bool(need_input_gradient)
    if type(y) is not np.ndarray or y.dtype is not FLOAT32:
        return None
    return x.shape, x.strides, y.shape, y.strides, grad_output.shape, grad_output.strides, bool(need_input_gradient)


def _keep(runners: Dict[Any, Any], lock: Any, key: Any, runner: Any) -> None:
    """Keep a call's runner, forgetting all kept ones first when there are too many."""
    with lock:
        if len(runners) >= _RUNNERS_PER_MODULE:
            runners.clear()
        runners[key] = runner


def _aligned(*arrays: Optional[Array]) -> bool:
    return all(a is None or a.flags.aligned for a in arrays)


class _Module(_Lifecycle):
    """A module's parameters: arrays over the caller's memory that another array may replace, or
    read-only copies (``copy_weights``)."""

    _weight: Array
    _bias: Optional[Array]
    n_threads: int = fixed_attribute("n_threads", "The threads each call may use (``FilterParameters.n_threads``; "
                                                  "0: as many as the backend chooses).")
    copy_weights: bool = fixed_attribute("copy_weights", "Whether the filters copy the weight and bias at creation "
                                                         "(read-only parameters) rather than read them at every call.")

    def _set_copy_weights(self, copy_weights: Any) -> None:
        if not isinstance(copy_weights, bool):
            raise TypeError(f"copy_weights must be True or False, got {copy_weights!r}")
        self._copy_weights = copy_weights

    def _parameter(self, name: str, value: Any, ndims: Tuple[int, ...]) -> Array:
        """A weight or bias as this module keeps it: the caller's writable C-contiguous array, used
        in place, or with ``copy_weights`` a read-only copy."""
        if self._copy_weights:
            return frozen_parameter(name, value, ndims)
        return writable_parameter(name, value, ndims)

    def _replacement(self, name: str, value: Any, shape: Tuple[int, ...]) -> Array:
        """A parameter assigned to the module, checked as the constructor checks it, with the shape
        of the one it replaces."""
        array = self._parameter(name, value, (len(shape),))
        if array.shape != shape:
            raise ValueError(f"{name} must keep the shape {shape} the module was made with, got {array.shape}")
        return array

    @property
    def weight(self) -> Array:
        """The weight, over the caller's memory (with ``copy_weights``: a read-only copy).

        Assigning another float32 array of the same shape makes the module read that one from the
        next call (its filters are made anew; writable and C-contiguous unless ``copy_weights``,
        which copies it); augmented assignments such as ``module.weight -= step`` update the array
        in place (with ``copy_weights`` they raise, the copy being read-only).
        """
        return self._weight

    @weight.setter
    def weight(self, value: Any) -> None:
        if value is not self._weight:
            self._replace_parameters(self._replacement("weight", value, self._weight.shape), self._bias)

    @property
    def bias(self) -> Optional[Array]:
        """The bias, over the caller's memory (or a read-only copy), or None; assignable as
        ``weight`` is (None removes it)."""
        return self._bias

    @bias.setter
    def bias(self, value: Any) -> None:
        if value is not self._bias:
            bias = None if value is None else self._replacement("bias", value, (self._bias_length(),))
            self._replace_parameters(self._weight, bias)

    def _bias_length(self) -> int:
        raise NotImplementedError

    def _replace_parameters(self, weight: Array, bias: Optional[Array]) -> None:
        raise NotImplementedError


class _ConvModule(_Module):
    _transposed = False
    spec: ConvSpec = fixed_attribute("spec", "The convolution's arguments, fixed when the module is made.")
    backend: BackendLike = fixed_attribute("backend", "The backend asked for (None: resolved at the first call).")

    def _setup(self, weight: Any, bias: Any, stride: IntPair, padding: Padding, dilation: IntPair, groups: int,
               activation: ActivationLike, backend: BackendLike, output_padding: IntPair, n_threads: int,
               copy_weights: bool) -> None:
        self._n_threads = checked_thread_count(n_threads)
        self._set_copy_weights(copy_weights)
        weight = self._parameter("weight", weight, (4,))
        if bias is not None:
            bias = self._parameter("bias", bias, (1,))
        self._spec = ConvSpec.from_arguments(self._transposed, weight, bias, stride, padding, dilation,
                                            groups, activation, output_padding)
        self._weight: Array = weight
        self._bias: Optional[Array] = bias
        self._backend: BackendLike = backend
        self._layers: Dict[Any, ConvolutionLayer] = {}       # (height, width) -> layer for packed images (forward and backward)
        self._view_layers: Dict[Any, ConvolutionLayer] = {}  # (height, width, input strides, output strides) -> layer for views
        self._layers_lock = threading.Lock()
        # numpy calls seen before -> the filter bound to their layer, its checks and C pointers
        # prepared: the same shapes and strides again skip the layout work of ``forward``
        self._runners: Dict[Any, ConvFilter] = {}
        # backward calls seen before (C-contiguous numpy operands) -> their layer's gradient
        # descriptors, made once
        self._backward_runners: Dict[Any, BackwardRunner] = {}
        self._honours_image_strides: Optional[bool] = None  # the backend's, once resolved (backend=None: at first use)
        self._init_lifecycle()
        # A transposed layer reads its PyTorch-layout weight in place through descriptor strides
        # where the backend honours them, else a copy in BNNS's layout refreshed at each step.
        self._weight_strides = self.spec.torch_weight_strides(backend)
        self._copies_weight = self._transposed and self._weight_strides is None
        self._bnns_weight = self._weight_for_bnns(weight)

    def _weight_for_bnns(self, weight: Array) -> Array:
        return transposed_weight_to_bnns(weight, self.spec.groups) if self._copies_weight else weight

    def _bias_length(self) -> int:
        return self.spec.out_channels

    def _replace_parameters(self, weight: Array, bias: Optional[Array]) -> None:
        """Read ``weight`` and ``bias`` from now on: the filters made for the old ones are dropped and
        closed once the calls running on them return."""
        with self._layers_lock:
            self._weight, self._bias, self._bnns_weight = weight, bias, self._weight_for_bnns(weight)
            layers = list(self._layers.values()) + list(self._view_layers.values())
            self._layers, self._view_layers, self._runners, self._backward_runners = {}, {}, {}, {}
        self._retire(layers)

    def _layer(self, height: int, width: int, input_strides: Tuple[int, int, int] = (0, 0, 0),
               output_strides: Tuple[int, int, int] = (0, 0, 0)) -> ConvolutionLayer:
        packed = input_strides == output_strides == (0, 0, 0)
        key = (height, width) if packed else (height, width, input_strides, output_strides)
        layer = (self._layers if packed else self._view_layers).get(key)
        if layer is None:
            with self._layers_lock:
                table = self._layers if packed else self._view_layers  # (replaced by a parameter assignment)
                layer = table.get(key)
                if layer is None:
                    layer = table[key] = self.spec.make_layer(
                        height, width, self._bnns_weight, self._bias, self.backend,
                        client_pointer=not self._copy_weights, input_strides=input_strides,
                        output_strides=output_strides, n_threads=self.n_threads,
                        weight_strides=self._weight_strides)
        return layer

    def _keep_runner(self, key: Any, layer: ConvolutionLayer, prepared: Any, output: Any) -> None:
        bnns_weight = self._bnns_weight if self._copies_weight else None
        runner = ConvFilter(self.spec, prepared, output, self._weight, self._bias, None, layer, bnns_weight)
        _keep(self._runners, self._layers_lock, key, runner)

    def _sync_weight(self) -> None:
        """Refresh the BNNS-layout copy of a transposed module's PyTorch-layout weight, if it has one
        (groups > 1, or a backend that reads weight descriptors without strides) and the weight may
        have changed since (not with ``copy_weights``)."""
        if self._copies_weight and not self._copy_weights:
            transposed_weight_to_bnns(self._weight, self.spec.groups, out=self._bnns_weight)

    def forward(self, x: Any, out: Any = None) -> Any:
        """The forward pass ``y = act(conv(x, weight) + bias)``; also the module's ``__call__``.

        Parameters
        ----------
        x : array_like, float32, shape (N, C_in, H, W) or (C_in, H, W)
            Read in place (strided views too, where the backend honours image strides).
        out : array_like, float32, optional
            A numpy array or CPU torch tensor of the output's shape, written in place.

        Returns
        -------
        numpy.ndarray of float32, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
            A new array, or ``out`` when given.

        Raises
        ------
        TypeError, ValueError
            As for :func:`bnns_py.conv2d`.
        LayerClosedError
            The module was closed.
        """
        key = _runner_key(x, out)
        self._enter()
        try:
            runner = self._runners.get(key) if key is not None else None
            if runner is not None and runner.weight is self._weight and runner.bias is self._bias:
                return runner.run(x, out)
            honour = self._honours_image_strides
            if honour is None:
                honour = self._honours_image_strides = get_backend(self.backend).honours_image_strides
            prepared = image_input("x", x, self.spec.in_channels, honour)
            x4 = prepared.array
            batch, _, height, width = x4.shape
            expected = (batch, self.spec.out_channels) + self.spec.output_hw(height, width)
            output = image_output(out, expected, prepared.single, x4, honour)
            layer = self._layer(height, width, prepared.layout.strides, output.layout.strides)
            target = np.empty(expected, np.float32) if output.array is None or output.copied else output.array
            self._sync_weight()
            run_filter(layer, batch, x4, prepared.layout.batch_stride, target, output.layout.batch_stride)
            if output.copied:
                np.copyto(output.array, target)  # type: ignore[arg-type]  # copied: out was given
            if key is not None:
                self._keep_runner(key, layer, prepared, output)
        finally:
            self._exit()
        if out is not None:
            return written(out)
        return target[0] if prepared.single else target

    __call__ = forward

    def backward(self, x: Any, y: Any, grad_output: Any, need_input_gradient: bool = True) -> Gradients:
        """All gradients of the loss through BNNS's backward pass, given the forward pass.

        The current ``self.weight`` is differentiated, as BNNS reads client-pointer weights at
        every call (with ``copy_weights``, the copy the filters hold, which ``self.weight`` equals).

        Parameters
        ----------
        x : array_like, float32, shape (N, C_in, H, W) or (C_in, H, W)
            The forward pass's input.
        y : array_like, float32, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out), or None
            The forward pass's output (needed by activations whose derivative reads it; may be
            None with the identity activation).
        grad_output : array_like, float32, the shape of ``y``
            dL/dy.
        need_input_gradient : bool, optional
            False skips dL/dx (e.g. for a first layer).

        Returns
        -------
        Gradients
            ``(input, weight, bias)``: dL/dx (None when not needed), dL/dW in ``self.weight``'s
            layout and dL/db (None without bias), as float32 numpy arrays.

        Raises
        ------
        TypeError, ValueError
            Operands that are not float32 arrays of the shapes above.
        LayerClosedError
            The module was closed.
        """
        key = _backward_key(x, y, grad_output, need_input_gradient)
        self._enter()
        try:
            runner = self._backward_runners.get(key) if key is not None else None
            if runner is not None and _aligned(x, y, grad_output):
                self._sync_weight()
                return self._gradients(*runner.run(x, y, grad_output))
            prepared = image_input("x", x, self.spec.in_channels, honour_strides=False)  # packed
            x4, single = prepared.array, prepared.single
            batch, _, height, width = x4.shape
            layer = self._layer(height, width)
            out_shape = (batch, self.spec.out_channels) + self.spec.output_hw(height, width)
            y_array = None if y is None else _gradient_operand("y", y, out_shape, single, (3, 4))
            dy = _gradient_operand("grad_output", grad_output, out_shape, single, (3, 4))
            grad_input = np.empty_like(x4) if need_input_gradient else None
            grad_weight = np.empty_like(self._bnns_weight)  # in the layout BNNS reads (and writes)
            grad_bias = None if self._bias is None else np.empty_like(self._bias)
            self._sync_weight()
            layer.apply_backward(batch, x4, y_array, dy, grad_input, grad_weight, grad_bias)
            if key is not None and not prepared.copied and (y is None or y.flags.c_contiguous) and \
                    grad_output.flags.c_contiguous:  # all read in place, as the same shapes and strides will be
                self._keep_backward_runner(key, layer, batch, x.shape if need_input_gradient else None)
        finally:
            self._exit()
        if grad_input is not None and single:
            grad_input = grad_input[0]
        return self._gradients(grad_input, grad_weight, grad_bias)

    def _keep_backward_runner(self, key: Any, layer: ConvolutionLayer, batch: int,
                              input_shape: Optional[Tuple[int, ...]]) -> None:
        bias_shape = None if self._bias is None else self._bias.shape
        runner = BackwardRunner(layer, batch, input_shape, self._bnns_weight.shape, bias_shape)
        _keep(self._backward_runners, self._layers_lock, key, runner)

    def _gradients(self, grad_input: Optional[Array], grad_weight: Array, grad_bias: Optional[Array]) -> Gradients:
        if self._copies_weight:
            grad_weight = transposed_weight_from_bnns(grad_weight, self.spec.groups)
        return Gradients(grad_input, grad_weight, grad_bias)

    def _release(self) -> None:
        with self._layers_lock:
            layers = list(self._layers.values()) + list(self._view_layers.values())
            self._layers, self._view_layers, self._runners, self._backward_runners = {}, {}, {}, {}
        for layer in layers:
            layer.close()

    def __repr__(self) -> str:
        s = self.spec
        output_padding = f", output_padding={s.output_padding}" if s.transposed else ""
        backend = f", backend={_repr.backend_text(self.backend)!r}" if self.backend is not None else ""
        threads = f", n_threads={self.n_threads}" if self.n_threads else ""
        threads += ", copy_weights=True" if self.copy_weights else ""
        return (f"{type(self).__name__}({s.in_channels}, {s.out_channels}, kernel={s.kernel}, "
                f"stride={s.stride}, padding={s.padding}, dilation={s.dilation}, groups={s.groups}"
                f"{output_padding}, activation={s.activation!r}, bias={self.bias is not None}{backend}{threads})")

    def _repr_html_(self) -> str:
        return _repr.key_value_html(type(self).__name__, _repr.conv_module_rows(self))

    # ---- PyTorch interop (bnns_py.interop) ------------------------------------------------------
    @classmethod
    def from_torch(cls: Type[_ConvModuleType], module: Any, backend: BackendLike = None, *,
                   activation: ActivationLike = None, n_threads: int = 0,
                   copy_weights: bool = False) -> _ConvModuleType:
        """The module computing what a torch convolution module computes (needs PyTorch).

        Parameters
        ----------
        module : torch.nn.Module
            ``torch.nn.Conv2d`` (for ``Conv2d``) or ``torch.nn.ConvTranspose2d`` (for
            ``ConvTranspose2d``), or an ``nn.Sequential`` of an optional ``nn.ZeroPad2d``, the
            convolution and an activation module (fused); see ``ConvolutionLayer.from_torch``.
        backend : str, Backend or None, optional
            As for :func:`bnns_py.conv2d`.
        activation : ActivationFunction, str or None, keyword-only
            An activation to fuse, when ``module`` has none.
        n_threads, copy_weights : keyword-only
            As for :class:`Conv2d`.

        Returns
        -------
        Conv2d or ConvTranspose2d
            A module with copies of the torch module's weight and bias.

        Raises
        ------
        ImportError
            PyTorch is not installed.
        TypeError
            A module of another kind.
        ValueError
            Settings BNNS cannot express (e.g. a padding mode other than zeros).
        """
        from . import interop
        converted: _ConvModuleType = interop.conv_module_from_torch(cls, module, backend, activation, n_threads,
                                                                    copy_weights)
        return converted

    def to_torch(self) -> Any:
        """The equivalent torch module (needs PyTorch).

        Returns
        -------
        torch.nn.Module
            ``nn.Conv2d``/``nn.ConvTranspose2d`` with copies of the current weight and bias; an
            ``nn.Sequential`` when the padding is asymmetric or there is an activation.
        """
        from . import interop
        return interop.conv_module_to_torch(self)


class Conv2d(_ConvModule):
    """A convolution with trainable float32 numpy parameters, BNNS forward and backward passes.

    The arguments are :func:`bnns_py.conv2d`'s, in the same order. ``weight`` and ``bias`` are
    used in place (BNNS's client-pointer mode): an optimizer step such as
    ``conv.weight -= lr * grads.weight`` changes the next forward pass; with ``copy_weights=True``
    the filters copy them instead (for inference). One BNNS filter is kept per input height and
    width.

    Parameters
    ----------
    weight : array_like, float32, shape (C_out, C_in / groups, kH, kW)
        Writable and C-contiguous (it is used in place), e.g. a numpy array or a CPU tensor's
        ``.detach()``.
    bias : array_like, float32, shape (C_out,), optional
        Writable and C-contiguous; None for no bias.
    stride, padding, dilation, groups : optional
        As for :func:`bnns_py.conv2d` (``padding`` may be ``"same"`` or ``"valid"``).
    activation : ActivationFunction, str or None, keyword-only
        Fused after the bias.
    backend : str, Backend or None, keyword-only
        ``"accelerate"``, ``"portable"`` or None (resolved at the first call).
    n_threads : int, keyword-only
        The threads each call may use, ``FilterParameters.n_threads`` of the module's filters
        (default 0: as many as the backend chooses).
    copy_weights : bool, keyword-only
        False (default): the filters read ``weight`` and ``bias`` in place at every call
        (``Flags.use_client_pointer``). True: the module keeps read-only copies (any layout is
        accepted) and each filter copies them at creation, as BNNS does by default, so that it packs
        or transforms them once rather than at every call: quicker inference, e.g. Winograd layers
        at batch 1. ``backward`` still returns gradients.

    Attributes
    ----------
    weight : numpy.ndarray
        The weight, over the caller's memory (a read-only copy with ``copy_weights``); another
        array of its shape may be assigned.
    bias : numpy.ndarray or None
        The bias, as ``weight``; another array of its shape, or None, may be assigned.
    spec : ConvSpec
        The geometry: channels, kernel, stride, padding ``(left, right, top, bottom)``, ...
    n_threads, copy_weights
        As given (fixed).

    Raises
    ------
    TypeError
        A weight or bias that is not a float32 array object, a ``copy_weights`` that is not a bool.
    ValueError
        A read-only or non-contiguous weight or bias (without ``copy_weights``), shapes that do not
        fit, bad geometry, or an ``n_threads`` that is not an integer >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> from bnns_py import reference
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    >>> x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    >>> with bnns_py.Conv2d(w, padding="same") as conv:
    ...     y = conv(x)
    ...     grads = conv.backward(x, y, np.ones_like(y))
    >>> y.shape, grads.input.shape, grads.weight.shape, grads.bias is None
    ((2, 4, 6, 6), (2, 3, 6, 6), (4, 3, 3, 3), True)
    >>> bnns_py.compare(y, reference.conv2d(x, w, padding=1)).ok
    True
    """

    def __init__(self, weight: Any, bias: Any = None, stride: IntPair = 1, padding: Padding = 0,
                 dilation: IntPair = 1, groups: int = 1, *, activation: ActivationLike = None,
                 backend: BackendLike = None, n_threads: int = 0, copy_weights: bool = False) -> None:
        self._setup(weight, bias, stride, padding, dilation, groups, activation, backend, 0, n_threads, copy_weights)


class ConvTranspose2d(_ConvModule):
    """A transposed convolution with trainable float32 numpy parameters.

    The arguments are :func:`bnns_py.conv_transpose2d`'s, in the same order (``output_padding``,
    ``groups``, then ``dilation``); ``forward``, ``backward`` and the in-place parameters work as
    in :class:`Conv2d`.

    Parameters
    ----------
    weight : array_like, float32, shape (C_in, C_out / groups, kH, kW)
        PyTorch's layout; writable and C-contiguous (it is used in place).
    bias : array_like, float32, shape (C_out,), optional
        Writable and C-contiguous; None for no bias.
    stride, padding, output_padding, groups, dilation : optional
        As for :func:`bnns_py.conv_transpose2d`.
    activation : ActivationFunction, str or None, keyword-only
        Fused after the bias.
    backend : str, Backend or None, keyword-only
        ``"accelerate"``, ``"portable"`` or None (resolved at the first call).
    n_threads, copy_weights : keyword-only
        As for :class:`Conv2d`.

    Raises
    ------
    TypeError, ValueError
        As for :class:`Conv2d`.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> from bnns_py import reference
    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((4, 2, 2, 2)).astype(np.float32)
    >>> x = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    >>> with bnns_py.ConvTranspose2d(w, stride=2) as up:
    ...     y = up(x)
    >>> y.shape, bnns_py.compare(y, reference.conv_transpose2d(x, w, stride=2)).ok
    ((1, 2, 6, 6), True)
    """

    _transposed = True

    def __init__(self, weight: Any, bias: Any = None, stride: IntPair = 1, padding: Padding = 0,
                 output_padding: IntPair = 0, groups: int = 1, dilation: IntPair = 1, *,
                 activation: ActivationLike = None, backend: BackendLike = None, n_threads: int = 0,
                 copy_weights: bool = False) -> None:
        self._setup(weight, bias, stride, padding, dilation, groups, activation, backend, output_padding, n_threads,
                    copy_weights)


# ---- fully connected ------------------------------------------------------------------------------


class _LinearCall(NamedTuple):
    """A forward call on numpy operands read in place, remembered by ``Linear`` for the same
    operands again: the checks and C pointers it needed hold while ``x`` and ``out`` are the same
    objects with the same shapes and strides (``key``) and the module's filter is the same."""

    key: Any
    x: Array
    out: Optional[Array]
    layer: FullyConnectedLayer
    function: Any  # the layer's BNNSFilterApplyBatch
    batch: int
    x_ptr: Any
    in_stride: int
    out_ptr: Any  # None without ``out``: a new result each call
    out_stride: int
    single: bool


class Linear(_Module):
    """A fully-connected layer with trainable float32 numpy parameters, as ``torch.nn.Linear``.

    Computes ``act(x @ weight.T + bias)``. The arguments are :func:`bnns_py.linear`'s. ``weight``
    and ``bias`` are used in place (client-pointer mode), so ``lin.weight -= lr * grads.weight``
    changes the next forward pass; with ``copy_weights=True`` the filter copies them instead (for
    inference). Its filter is its own (not the functional cache's).

    Parameters
    ----------
    weight : array_like, float32, shape (out_features, in_features)
        Writable and C-contiguous (it is used in place).
    bias : array_like, float32, shape (out_features,), optional
        Writable and C-contiguous; None for no bias.
    activation : ActivationFunction, str or None, keyword-only
        Fused after the bias.
    backend : str, Backend or None, keyword-only
        ``"accelerate"``, ``"portable"`` or None (resolved at the first call).
    n_threads : int, keyword-only
        The threads each call may use, ``FilterParameters.n_threads`` of the module's filter
        (default 0: as many as the backend chooses).
    copy_weights : bool, keyword-only
        As for :class:`Conv2d`: True keeps read-only copies that the filter copies at creation
        (BNNS's default) instead of reading ``weight`` and ``bias`` in place at every call.

    Attributes
    ----------
    weight : numpy.ndarray
        The weight, over the caller's memory (a read-only copy with ``copy_weights``); another
        array of its shape may be assigned.
    bias : numpy.ndarray or None
        The bias, as ``weight``; another array of its shape, or None, may be assigned.
    activation : ActivationFunction
        The fused activation.
    n_threads, copy_weights
        As given (fixed).

    Raises
    ------
    TypeError
        A weight or bias that is not a float32 array object, a ``copy_weights`` that is not a bool.
    ValueError
        A read-only or non-contiguous weight or bias (without ``copy_weights``), a bias of the wrong
        shape, or an ``n_threads`` that is not an integer >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> import bnns_py
    >>> w = np.array([[1.0, -1.0], [2.0, 0.0]], dtype=np.float32)
    >>> with bnns_py.Linear(w, activation="relu") as lin:
    ...     y = lin(np.array([[3.0, 1.0], [1.0, 3.0]], dtype=np.float32))
    >>> y.tolist()
    [[2.0, 6.0], [0.0, 2.0]]
    """

    activation: ActivationFunction = fixed_attribute("activation", "The fused activation.")
    backend: BackendLike = fixed_attribute("backend", "The backend asked for (None: resolved at the first call).")

    def __init__(self, weight: Any, bias: Any = None, *, activation: ActivationLike = None,
                 backend: BackendLike = None, n_threads: int = 0, copy_weights: bool = False) -> None:
        self._n_threads = checked_thread_count(n_threads)
        self._set_copy_weights(copy_weights)
        weight = self._parameter("weight", weight, (2,))
        if bias is not None:
            bias = self._parameter("bias", bias, (1,))
        self._weight, self._bias, _ = linear_operands(weight, bias)
        self._activation = ActivationFunction.coerce(activation)
        self._backend: BackendLike = backend
        self._fc_layer: Optional[FullyConnectedLayer] = None
        self._layer_lock = threading.Lock()
        # backward calls seen before (C-contiguous numpy operands) -> their gradient descriptors
        self._backward_runners: Dict[Any, BackwardRunner] = {}
        self._last_call: Optional[_LinearCall] = None
        self._init_lifecycle()

    def _replace_parameters(self, weight: Array, bias: Optional[Array]) -> None:
        """Read ``weight`` and ``bias`` from now on: the filter made for the old ones is dropped and
        closed once the calls running on it return."""
        with self._layer_lock:
            self._weight, self._bias = weight, bias
            layer, self._fc_layer, self._backward_runners, self._last_call = self._fc_layer, None, {}, None
        if layer is not None:
            self._retire([layer])

    def _bias_length(self) -> int:
        return self.out_features

    @property
    def in_features(self) -> int:
        """The input size, ``weight.shape[1]``."""
        return self._weight.shape[1]  # type: ignore[no-any-return]  # numpy types sizes as Any

    @property
    def out_features(self) -> int:
        """The output size, ``weight.shape[0]``."""
        return self._weight.shape[0]  # type: ignore[no-any-return]

    def _layer(self) -> FullyConnectedLayer:
        with self._layer_lock:
            if self._fc_layer is None:
                self._fc_layer = make_linear_layer(self._weight, self._bias, self.activation, self.backend,
                                                   client_pointer=not self._copy_weights, n_threads=self.n_threads)
            return self._fc_layer

    def forward(self, x: Any, out: Any = None) -> Any:
        """The forward pass ``y = act(x @ weight.T + bias)``; also the module's ``__call__``.

        Parameters
        ----------
        x : array_like, float32, shape (N, in_features) or (in_features,)
            Rows with contiguous values are read in place.
        out : array_like, float32, optional
            A numpy array or CPU torch tensor of the output's shape, written in place.

        Returns
        -------
        numpy.ndarray of float32, shape (N, out_features) or (out_features,)
            A new array, or ``out`` when given.

        Raises
        ------
        TypeError, ValueError
            As for :func:`bnns_py.linear`.
        LayerClosedError
            The module was closed.

        Notes
        -----
        A call on numpy operands read in place is remembered, with references to ``x`` and
        ``out``, until other operands are used or the module is closed: the same two arrays again
        (same shapes and strides), or without ``out`` any aligned float32 ``x`` of the same shape
        and strides, skip the argument checks but ``out``'s writability.
        """
        last = self._last_call
        if last is not None and out is last.out and last.layer is self._fc_layer and (
                x is last.x or (out is None and type(x) is np.ndarray and x.flags.aligned)):
            key = _runner_key(x, out)
            if key == last.key:
                try:
                    return self._forward_again(last, x)
                except LayerClosedError:
                    if self._closed:
                        raise
                    # an assignment to weight or bias replaced the filter: the full call below
        self._enter()
        try:
            rows = vector_input("x", x, self.in_features)
            batch = rows.array.shape[0]
            output = vector_output(out, (batch, self.out_features), rows.single, rows.array)
            result = np.empty((batch, self.out_features), np.float32) if output is None else output.array
            out_stride = self.out_features if output is None else output.stride
            layer = self._layer()
            run_filter(layer, batch, rows.array, rows.stride, result, out_stride)
            key = _runner_key(x, out)
            if key is not None and not rows.copied:
                self._last_call = _LinearCall(key, x, out, layer, layer.backend.lib.BNNSFilterApplyBatch, batch,
                                              pointer(rows.array), rows.stride,
                                              None if out is None else pointer(result), out_stride, rows.single)
        finally:
            self._exit()
        if out is not None:
            return written(out)
        return result[0] if rows.single else result

    __call__ = forward

    def _forward_again(self, last: _LinearCall, x: Array) -> Array:
        """``forward`` on the operands of ``last``, or without ``out`` on an aligned ``x`` of the
        same shape and strides (numpy arrays: ``written`` has nothing to do). The call is counted
        in flight by the filter's layer alone (``_call``): a ``close()`` from now on releases the
        layer, which destroys its filter once the call returns."""
        x_ptr = last.x_ptr if x is last.x else pointer(x)
        if last.out is None:
            result = np.empty((last.batch, self.out_features), FLOAT32)
            out_ptr = pointer(result)
        else:
            if not last.out.flags.writeable:
                raise ValueError("out is read-only but BNNS writes into it")
            result, out_ptr = last.out, last.out_ptr
        layer = last.layer
        if layer._call(last.function, last.batch, x_ptr, last.in_stride, out_ptr, last.out_stride) != 0:
            layer._fail("BNNSFilterApplyBatch")
        if last.out is not None or not last.single:
            return result
        row: Array = result[0]
        return row

    def backward(self, x: Any, y: Any, grad_output: Any, need_input_gradient: bool = True) -> Gradients:
        """All gradients of the loss through BNNS's backward pass, given the forward pass.

        Parameters
        ----------
        x : array_like, float32, shape (N, in_features) or (in_features,)
            The forward pass's input.
        y : array_like, float32, shape (N, out_features) or (out_features,), or None
            The forward pass's output; may be None with the identity activation.
        grad_output : array_like, float32, the shape of ``y``
            dL/dy.
        need_input_gradient : bool, optional
            False skips dL/dx.

        Returns
        -------
        Gradients
            dL/dx (None when not needed), dL/dW ``(out_features, in_features)`` and dL/db
            ``(out_features,)`` (None without bias), summed over the batch.

        Raises
        ------
        TypeError, ValueError
            Operands that are not float32 arrays of the shapes above.
        LayerClosedError
            The module was closed.
        """
        key = _backward_key(x, y, grad_output, need_input_gradient)
        self._enter()
        try:
            runner = self._backward_runners.get(key) if key is not None else None
            if runner is not None and _aligned(x, y, grad_output):
                return Gradients(*runner.run(x, y, grad_output))
            rows = vector_input("x", x, self.in_features)
            x2, single = np.ascontiguousarray(rows.array), rows.single
            batch = x2.shape[0]
            out_shape = (batch, self.out_features)
            y_array = None if y is None else _gradient_operand("y", y, out_shape, single, (1, 2))
            dy = _gradient_operand("grad_output", grad_output, out_shape, single, (1, 2))
            grad_input = np.empty_like(x2) if need_input_gradient else None
            grad_weight = np.empty_like(self._weight)
            grad_bias = None if self._bias is None else np.empty_like(self._bias)
            layer = self._layer()
            layer.apply_backward(batch, x2, y_array, dy, grad_input, grad_weight, grad_bias)
            if key is not None and x.flags.c_contiguous and (y is None or y.flags.c_contiguous) and \
                    grad_output.flags.c_contiguous:  # all read in place, as the same shapes and strides will be
                self._keep_backward_runner(key, layer, batch, x.shape if need_input_gradient else None)
        finally:
            self._exit()
        if grad_input is not None and single:
            grad_input = grad_input[0]
        return Gradients(grad_input, grad_weight, grad_bias)

    def _keep_backward_runner(self, key: Any, layer: FullyConnectedLayer, batch: int,
                              input_shape: Optional[Tuple[int, ...]]) -> None:
        bias_shape = None if self._bias is None else self._bias.shape
        runner = BackwardRunner(layer, batch, input_shape, self._weight.shape, bias_shape)
        _keep(self._backward_runners, self._layer_lock, key, runner)

    def _release(self) -> None:
        with self._layer_lock:
            layer, self._fc_layer, self._backward_runners = self._fc_layer, None, {}
            self._last_call = None
        if layer is not None:
            layer.close()

    def __repr__(self) -> str:
        threads = f", n_threads={self.n_threads}" if self.n_threads else ""
        threads += ", copy_weights=True" if self.copy_weights else ""
        return (f"Linear({self.in_features}, {self.out_features}, activation={self.activation!r}, "
                f"bias={self.bias is not None}{threads})")

    def _repr_html_(self) -> str:
        return _repr.key_value_html("Linear", _repr.linear_module_rows(self))

    # ---- PyTorch interop (bnns_py.interop) ------------------------------------------------------
    @classmethod
    def from_torch(cls, module: Any, backend: BackendLike = None, *, activation: ActivationLike = None,
                   n_threads: int = 0, copy_weights: bool = False) -> "Linear":
        """The module computing what a torch linear module computes (needs PyTorch).

        Parameters
        ----------
        module : torch.nn.Module
            ``torch.nn.Linear``, or ``nn.Sequential(Linear, activation)`` (fused).
        backend : str, Backend or None, optional
            As for :func:`bnns_py.linear`.
        activation : ActivationFunction, str or None, keyword-only
            An activation to fuse, when ``module`` has none.
        n_threads, copy_weights : keyword-only
            As for :class:`Linear`.

        Returns
        -------
        Linear
            A module with copies of the torch module's weight and bias.

        Raises
        ------
        ImportError
            PyTorch is not installed.
        TypeError
            A module of another kind.
        """
        from . import interop
        converted: Linear = interop.linear_module_from_torch(cls, module, backend, activation, n_threads,
                                                             copy_weights)
        return converted

    def to_torch(self) -> Any:
        """The equivalent torch module (needs PyTorch).

        Returns
        -------
        torch.nn.Module
            ``nn.Linear`` with copies of the current weight and bias, or
            ``nn.Sequential(Linear, activation)`` with an activation.
        """
        from . import interop
        return interop.linear_module_to_torch(self)


__all__ = ["Conv2d", "ConvTranspose2d", "Gradients", "Linear"]
