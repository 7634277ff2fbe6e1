"""Array handling shared by the numpy-first functions (``bnns_py.functional``) and modules.

Operands may be numpy arrays, CPU torch tensors or any object exposing ``__array_interface__``,
``__dlpack__`` or the buffer protocol. Each is viewed as a numpy array over the same memory (no
copy); torch is never imported here (a tensor is recognised by its type's module). Results are
numpy arrays.

Images are ``(N, C, H, W)`` (or ``(C, H, W)``): a view BNNS can describe with descriptor strides
is passed in place (``image_layout``), other layouts are copied (inputs) or refused (outputs).
"""
import sys
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from ._ffi import ffi

FLOAT32 = np.dtype(np.float32)
_TOO_HARD = getattr(np, "exceptions", np).TooHardError  # numpy < 1.25 has it at the top level
_from_dlpack = getattr(np, "from_dlpack", None) or getattr(np, "_from_dlpack", None)
Array = npt.NDArray[Any]
_ACCEPTED = ("a numpy array, a CPU torch tensor or an object with __dlpack__, __array_interface__ "
             "or the buffer protocol")


def _is_torch_tensor(value: object) -> bool:
    module = type(value).__module__
    return (module == "torch" or module.startswith("torch.")) and hasattr(value, "detach")


def _torch_view(name: str, tensor: Any, writable: bool) -> Array:
    """A numpy array over a CPU tensor's memory."""
    if tensor.device.type != "cpu":
        raise TypeError(f"{name} is a torch tensor on {tensor.device}; BNNS runs on the CPU: pass {name}.cpu()")
    if writable and tensor.requires_grad:
        raise ValueError(f"{name} is a torch tensor that requires grad; bnns_py writes it outside autograd, "
                         f"which would make its gradients wrong: pass {name}.detach() (same memory) or a "
                         "tensor made under torch.no_grad()")
    if str(tensor.dtype) != "torch.float32":
        raise TypeError(f"{name} has dtype {tensor.dtype}; BNNS computes here in float32: pass {name}.float()")
    tensor = tensor.detach()
    if tensor.is_neg() or tensor.is_conj():
        if writable:
            raise ValueError(f"{name} is a lazily negated torch view; pass a tensor that owns its values")
        tensor = tensor.resolve_neg().resolve_conj()
    try:
        return tensor.numpy()
    except (RuntimeError, TypeError) as error:  # sparse, quantized, ... tensors
        raise TypeError(f"{name}: this torch tensor has no numpy view ({error})") from None


def written(value: Any) -> Any:
    """Tell autograd that a torch tensor ``out`` was written in place (its version counter goes up,
    as after PyTorch's own ``out=``), so a graph that saved it refuses to use stale values."""
    if not isinstance(value, np.ndarray) and _is_torch_tensor(value):
        increment_version = getattr(sys.modules["torch"].autograd.graph, "increment_version", None)
        if increment_version is not None:
            increment_version(value)
    return value


def as_numpy(name: str, value: Any, writable: bool = False) -> Array:
    """``value`` as a numpy array over the same memory (never a copy).

    ``writable``: the caller writes into it (a torch tensor that requires grad is refused).
    Raises TypeError for anything that is not an array object.
    """
    if isinstance(value, np.ndarray):
        return value
    if _is_torch_tensor(value):
        return _torch_view(name, value, writable)
    if hasattr(value, "__array_interface__") or hasattr(value, "__array_struct__"):
        array = np.asarray(value)
        if isinstance(array, np.ndarray) and array.dtype != np.dtype(object):
            return array
    if hasattr(value, "__dlpack__") and _from_dlpack is not None:
        try:
            return _from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError) as error:
            raise TypeError(f"{name} exposes __dlpack__ but numpy cannot read it ({error}); BNNS needs CPU "
                            "memory") from None
    if not isinstance(value, (str, bytes)):  # bytes would be read as raw bytes, not float32
        try:
            view = memoryview(value)
        except TypeError:
            pass
        else:
            return np.asarray(view)
    raise TypeError(f"{name} must be {_ACCEPTED}, not {type(value).__name__}")


def float32_array(name: str, value: Any, ndims: Sequence[int], writable: bool = False) -> Array:
    """``value`` as a non-empty float32 numpy array of one of the dimension counts ``ndims``
    (over the caller's memory, any layout)."""
    array = as_numpy(name, value, writable)
    if array.dtype != FLOAT32:
        raise TypeError(f"{name} has dtype {array.dtype}; BNNS computes here in float32: "
                        f"pass {name}.astype(np.float32)")
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {array.shape}")
    if min(array.shape, default=1) == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    return array


def contiguous_float32(name: str, value: Any, ndims: Sequence[int]) -> Tuple[Array, bool]:
    """(C-contiguous float32 array, True when it is the caller's memory rather than a copy)."""
    array = float32_array(name, value, ndims)
    contiguous = np.ascontiguousarray(array)
    return contiguous, contiguous is array


def writable_parameter(name: str, value: Any, ndims: Sequence[int]) -> Array:
    """A module's trainable parameter: a writable C-contiguous float32 array over the caller's
    memory (a module updates it in place)."""
    array = float32_array(name, value, ndims)
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError(f"{name} must be a writable C-contiguous array (it is used in place)")
    return array


def frozen_parameter(name: str, value: Any, ndims: Sequence[int]) -> Array:
    """A module's parameter copied at creation: a read-only C-contiguous float32 copy of ``value``
    (any float32 array object, any layout), so that no later write can differ from what the
    module's filters copied."""
    array = np.array(float32_array(name, value, ndims), order="C", copy=True)
    array.setflags(write=False)
    return array


class ImageLayout(NamedTuple):
    """How BNNS reads or writes an ``(N, C, H, W)`` array in place."""

    strides: Tuple[int, int, int]  # BNNS element strides (x, row, channel); zeros: packed
    batch_stride: int              # elements between images


def image_layout(array: Array) -> Optional[ImageLayout]:
    """The layout of an ``(N, C, H, W)`` float32 array BNNS can use in place, or None.

    In place means: every stride a positive multiple of the item size, rows contiguous (x stride
    1), channels and rows ordered as NCHW without overlap, batch items not overlapping. Strides of
    axes of size 1 do not matter. Packed images get ``(0, 0, 0)``, BNNS's "packed" strides.
    """
    flags = array.flags
    batch, channels, height, width = array.shape
    if flags.c_contiguous and flags.aligned:
        return ImageLayout((0, 0, 0), channels * height * width)
    if not flags.aligned:
        return None
    item = array.itemsize
    elements: list = []
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
    return ImageLayout(strides, s_n)


class ImageInput(NamedTuple):
    array: Array           # (N, C, H, W): the caller's view, or a packed copy
    single: bool           # the caller passed (C, H, W)
    layout: ImageLayout
    copied: bool           # ``array`` is a copy (the caller's layout is not one BNNS reads)


def image_input(name: str, value: Any, channels: int, honour_strides: bool = True) -> "ImageInput":
    """An image batch ready for BNNS: the caller's memory when it can be read in place (a packed
    array, or with ``honour_strides`` a view ``image_layout`` describes), else a packed copy."""
    array = float32_array(name, value, (3, 4))
    single = array.ndim == 3
    array4 = array[np.newaxis] if single else array
    if array4.shape[1] != channels:
        raise ValueError(f"{name} has {array4.shape[1]} channels, the weights expect {channels}")
    layout = image_layout(array4)
    copied = layout is None or (layout.strides != (0, 0, 0) and not honour_strides)
    if copied:
        array4 = np.array(array4, dtype=FLOAT32, order="C")
        layout = image_layout(array4)
    return ImageInput(array4, single, layout, copied)  # type: ignore[arg-type]  # a packed copy has one


def _batched_out(value: Any, expected: Tuple[int, ...], single: bool) -> Array:
    """``out`` as a numpy array of the ``expected`` batched shape (``single``: the caller passes
    it without the batch axis)."""
    out = float32_array("out", value, (len(expected) - 1, len(expected)), writable=True)
    wanted = expected[1:] if single else expected
    if out.shape != wanted:
        raise ValueError(f"out has shape {out.shape}, expected {wanted}")
    return out[np.newaxis] if single else out


def _check_writable_apart(out: Array, input_array: Array) -> None:
    if not out.flags.writeable:
        raise ValueError("out is read-only but BNNS writes into it")
    if overlap(out, input_array):
        raise ValueError("out shares memory with the input")


class ImageOutput(NamedTuple):
    array: Optional[Array]       # (N, C, H, W) view of the caller's ``out``; None without ``out``
    layout: ImageLayout
    copied: bool                 # BNNS writes a packed buffer that is then copied into ``array``


def image_output(value: Any, expected: Tuple[int, ...], single: bool, input_array: Array,
                 honour_strides: bool = True) -> "ImageOutput":
    """``out`` checked against the ``expected`` (N, C, H, W) result: a layout BNNS writes in place
    (packed, or with ``honour_strides`` a view ``image_layout`` describes; other views are then
    written through a packed buffer), not sharing memory with the input."""
    packed = ImageLayout((0, 0, 0), expected[1] * expected[2] * expected[3])
    if value is None:
        return ImageOutput(None, packed, False)
    out4 = _batched_out(value, expected, single)
    layout = image_layout(out4)
    if layout is None:
        raise ValueError(f"out is not C-contiguous (strides {(out4[0] if single else out4).strides}) and BNNS cannot write that layout "
                         "in place: pass a C-contiguous array, or a view with contiguous rows whose strides are "
                         "positive multiples of 4 bytes in NCHW order")
    _check_writable_apart(out4, input_array)
    if layout.strides != (0, 0, 0) and not honour_strides:
        return ImageOutput(out4, packed, True)
    return ImageOutput(out4, layout, False)


class RowsLayout(NamedTuple):
    """A batch of vectors ``(N, n)`` with contiguous rows, ``stride`` elements apart."""

    array: Array
    single: bool
    stride: int
    copied: bool


def _row_stride(array: Array) -> Optional[int]:
    """Elements between the rows of an (N, n) float32 array BNNS can use in place, or None."""
    rows, columns = array.shape
    if not array.flags.aligned or (columns > 1 and array.strides[1] != array.itemsize):
        return None
    if rows == 1:
        return columns
    stride = array.strides[0]
    if stride <= 0 or stride % array.itemsize or stride // array.itemsize < columns:
        return None
    return stride // array.itemsize


def vector_input(name: str, value: Any, features: int) -> "RowsLayout":
    """A batch of ``features``-vectors ``(N, features)`` (or one ``(features,)``): the caller's rows
    in place when they are contiguous, else a packed copy."""
    array = float32_array(name, value, (1, 2))
    single = array.ndim == 1
    array2 = array[np.newaxis] if single else array
    if array2.shape[1] != features:
        shape = array.shape
        raise ValueError(f"{name} has {array2.shape[1]} features (last axis), the weight expects {features}: "
                         f"{name} must be (N, {features}) or ({features},), got {shape}")
    stride = _row_stride(array2)
    copied = stride is None
    if copied:
        array2 = np.array(array2, dtype=FLOAT32, order="C")
        stride = features
    return RowsLayout(array2, single, stride, copied)  # type: ignore[arg-type]  # set when copied


def vector_output(value: Any, expected: Tuple[int, ...], single: bool,
                  input_array: Array) -> Optional["RowsLayout"]:
    """``out`` checked against the ``expected`` (N, n) result; None without ``out``."""
    if value is None:
        return None
    out2 = _batched_out(value, expected, single)
    stride = _row_stride(out2)
    if stride is None:
        raise ValueError(f"out's rows are not contiguous (strides {out2.strides}): pass a C-contiguous array")
    _check_writable_apart(out2, input_array)
    return RowsLayout(out2, single, stride, False)


def overlap(a: Array, b: Array) -> bool:
    """True when ``a`` and ``b`` may share memory (exactly, unless that is too costly to decide)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))  # type: ignore[arg-type]  # the stubs list only -1 and 0
    except _TOO_HARD:
        return True


def address(array: Array) -> Any:
    """A ``void *`` to the first element of a (possibly strided) array; ``array`` must outlive it."""
    return ffi.cast("void *", array.__array_interface__["data"][0])


def data_address(array: Array) -> int:
    """The integer address of an array's first element (a cache key part)."""
    return array.__array_interface__["data"][0]
