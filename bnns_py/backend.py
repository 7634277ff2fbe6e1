"""Choosing and loading the BNNS library: Accelerate on macOS, the bundled portable one elsewhere.

Nothing is loaded at import time. The first call that needs BNNS loads the backend; if no
library can be opened, ``LibraryNotFoundError`` lists every path that was tried and why.

Environment:
    BNNS_PY_BACKEND=accelerate|portable   which backend is the default (else: accelerate on
                                          macOS, portable elsewhere)
    BNNS_PY_LIBRARY=/path/to/library      open this file for the default backend instead of the
                                          usual locations

A library is treated as the portable one when it exports ``bnns_portable_version``; a build of
the portable library that exports only Apple's symbols, loaded as ``accelerate``, therefore runs
every Accelerate code path on Linux (``.ci/accelerate_mode.sh``).
"""
import ctypes
import importlib.machinery
import importlib.util
import os
import platform
import re
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ._ffi import cdefs_dir, ffi
from .errors import LibraryNotFoundError

BACKENDS = ("accelerate", "portable")

# The framework image re-exports libBNNS (which only allows vecLib as a direct client).
ACCELERATE_PATHS = (
    "/System/Library/Frameworks/Accelerate.framework/Accelerate",
    "/System/Library/Frameworks/Accelerate.framework/Versions/A/Accelerate",
    "/System/Library/Frameworks/Accelerate.framework/Versions/Current/Accelerate",
)
PORTABLE_STEM = "_bnns_portable"


class Backend:
    """An opened BNNS library.

    Attributes:
        name: ``"accelerate"`` or ``"portable"``.
        library_path: the file that was opened.
        lib: the cffi library object (``lib.BNNSFilterCreateLayerConvolution`` etc.).
    """

    def __init__(self, name: str, library_path: str, lib: Any) -> None:
        self.name = name
        self.library_path = library_path
        self.lib = lib
        # A library named by BNNS_PY_LIBRARY may be either kind; the extra symbol tells.
        self.is_portable = _exports(lib, "bnns_portable_version")
        # Whether convolution weight descriptors may carry strides (a transposed layer then reads
        # a PyTorch-layout array in place). The portable library honours them; for Accelerate it
        # is unverified (conformance probe "transposed_weight_strides"), so bnns-py copies there.
        self.honours_weight_strides = self.is_portable
        # Whether image descriptors may carry row and channel strides (the functional API then reads
        # and writes strided numpy views in place). The portable library honours them; for Accelerate
        # it is unverified (conformance probe "image_strides"), so bnns-py copies to packed arrays there.
        self.honours_image_strides = self.is_portable
        # Bound once: BNNSFilterDestroy must stay reachable while any filter lives, even at
        # interpreter shutdown, so layers keep a reference to this object (cairocffi's _keepref).
        self.destroy = lib.BNNSFilterDestroy

    def symbol_status(self) -> Dict[str, bool]:
        """``{name: resolves}`` for every BNNS function bnns-py declares (``bnns_symbols()``).
        Symbols are resolved lazily, so a missing one fails only the calls that need it; this
        tells in advance which those are (e.g. on a macOS that dropped the layer API)."""
        return {name: _exports(self.lib, name) for name in bnns_symbols()}

    def last_error(self) -> Optional[str]:
        """The portable library's reason for the last failure on this thread, else None."""
        if not self.is_portable:
            return None
        text = ffi.string(self.lib.bnns_portable_last_error()).decode("utf-8", "replace")
        return text or None

    def live_filter_count(self) -> int:
        """Filters created and not destroyed in this process (portable backend only)."""
        if not self.is_portable:
            raise NotImplementedError("only the portable backend counts its filters")
        return int(self.lib.bnns_portable_live_filter_count())

    def pool_counters(self) -> Dict[str, int]:
        """The portable library's worker pool, counted since it loaded: ``parallel_runs`` (runs
        handed to more than one thread), ``threads_used`` (their threads in all, callers
        included), ``busy_runs`` (runs that wanted several threads but ran on the caller alone:
        another caller held the pool) and ``taken_over`` (workers' shares the caller ran itself:
        their worker had not started them when the caller finished its own) and
        ``polling_yields`` (times a worker polling for its next run gave its core to another
        thread). Portable backend only."""
        if not self.is_portable:
            raise NotImplementedError("only the portable backend has a worker pool")
        lib = self.lib
        return {"parallel_runs": int(lib.bnns_portable_pool_parallel_runs()),
                "threads_used": int(lib.bnns_portable_pool_threads_used()),
                "busy_runs": int(lib.bnns_portable_pool_busy_runs()),
                "taken_over": int(lib.bnns_portable_pool_taken_over()),
                "polling_yields": int(lib.bnns_portable_pool_polling_yields())}

    FILTER_PASSES = ("forward", "input_gradient", "weights_gradient")

    def filter_engine(self, bnns_filter: Any, pass_: str = "forward", batch: int = 1) -> str:
        """Which kernels compute a portable filter's ``pass_`` (``"forward"``, ``"input_gradient"``
        or ``"weights_gradient"``) in a call of ``batch`` images (in the layer's own layouts; some
        choices depend on the batch: Winograd F(4x4)'s smallest batch, the panel path's batch of
        1 for stride 1, the weight gradient's Winograd rule): ``"winograd"`` (Winograd: dense 3x3 stride-1
        layers' forward pass and, with client pointers, their input and undilated weight
        gradients), ``"direct rows"`` / ``"direct row vectors"`` / ``"direct pixels"`` /
        ``"direct flat pixels"`` (the direct convolution engine; ``"direct"`` for weight
        gradients), ``"direct pointwise"``
        (its kernel for forward passes of 1x1, stride-1, unpadded layers, and on AVX-512 for the
        input gradient of such layers with at most 256 output channels per group over images of
        768 pixels or more; a call whose input gradient accumulates into its array or has gaps
        between its values runs im2col + GEMM there instead: the report does not see a call's
        arrays), ``"direct panel"`` (that
        kernel on each image's im2col panel, the weights in place: the forward pass of layers
        of 16 - 64 output pixels and at least 1024 reduction steps, at batch 1 for stride 1 (the
        direct engine's pixels kernel for more images) and at any batch for strided layers),
        ``"depthwise"`` (one input channel per group), ``"tiny"`` (the tiny-layer forward kernel),
        ``"fully connected"`` (fully-connected filters, and convolutions whose 1x1 kernel reads a
        one-pixel image with no padding before it: a batch is one matrix product) or ``"im2col"``
        (im2col + GEMM). ``bnns_filter`` is
        ``layer.bnns_filter``. ``BNNS_PY_PORTABLE_ENGINE`` (``winograd``, ``rows``, ``pixels``,
        ``flat-pixels``, ``im2col``, ``pointwise``, ``panel``), set before a layer is created, forces a choice."""
        if not self.is_portable:
            raise NotImplementedError("only the portable backend reports its kernels")
        if bnns_filter is None or bnns_filter == ffi.NULL:
            raise ValueError("filter_engine needs an open layer's bnns_filter")
        if pass_ not in self.FILTER_PASSES:
            raise ValueError(f"pass_ must be one of {self.FILTER_PASSES}, not {pass_!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, not {batch!r}")
        engine = self.lib.bnns_portable_filter_engine(bnns_filter, self.FILTER_PASSES.index(pass_), batch)
        name: str = ffi.string(engine).decode()
        return name

    def __repr__(self) -> str:
        return f"<bnns_py Backend {self.name} from {self.library_path}>"


_loaded: "dict[str, Backend]" = {}
_load_lock = threading.Lock()


def default_backend_name() -> str:
    """The backend used when none is named.

    Returns
    -------
    str
        ``BNNS_PY_BACKEND`` when set (``"accelerate"`` or ``"portable"``), else
        ``"accelerate"`` on macOS and ``"portable"`` elsewhere.

    Raises
    ------
    ValueError
        ``BNNS_PY_BACKEND`` names no backend.

    Examples
    --------
    >>> import bnns_py
    >>> bnns_py.default_backend_name() in ("accelerate", "portable")
    True
    """
    name = os.environ.get("BNNS_PY_BACKEND", "").strip().lower()
    if name:
        if name not in BACKENDS:
            raise ValueError(f"BNNS_PY_BACKEND={name!r}: expected one of {BACKENDS}")
        return name
    return "accelerate" if sys.platform == "darwin" else "portable"


def get_backend(name: Union[str, "Backend", None] = None) -> "Backend":
    """The loaded backend called ``name``, loading its library on first use.

    Parameters
    ----------
    name : str, Backend or None, optional
        ``"accelerate"`` or ``"portable"`` (case-insensitive), a ``Backend`` (returned as is),
        or None for :func:`default_backend_name`.

    Returns
    -------
    Backend
        The opened library: ``name``, ``library_path``, the cffi ``lib`` and what it honours.

    Raises
    ------
    ValueError
        An unknown name.
    LibraryNotFoundError
        The library cannot be opened (the message lists every path tried and why).

    Examples
    --------
    >>> import bnns_py
    >>> backend = bnns_py.get_backend()
    >>> backend.name == bnns_py.default_backend_name(), backend is bnns_py.get_backend(backend.name)
    (True, True)
    """
    if isinstance(name, Backend):
        return name
    name = default_backend_name() if name is None else str(name).lower()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, not {name!r}")
    backend = _loaded.get(name)
    if backend is None:
        with _load_lock:
            backend = _loaded.get(name)
            if backend is None:
                backend = _loaded[name] = _load(name)
    return backend


def available_backends() -> List[str]:
    """The backends that can be loaded on this machine (each is loaded to find out).

    Returns
    -------
    list of str
        A subset of ``["accelerate", "portable"]``, in that order.

    Examples
    --------
    >>> import bnns_py
    >>> bnns_py.default_backend_name() in bnns_py.available_backends()
    True
    """
    names = []
    for name in BACKENDS:
        try:
            get_backend(name)
        except (LibraryNotFoundError, ValueError):
            continue
        names.append(name)
    return names


def _exports(lib: Any, symbol: str) -> bool:
    try:
        getattr(lib, symbol)
    except AttributeError:
        return False
    return True


def _candidates(name: str) -> List[str]:
    custom = os.environ.get("BNNS_PY_LIBRARY")
    if custom and name == default_backend_name():
        return [custom]
    if name == "accelerate":
        return list(ACCELERATE_PATHS)
    package_dir = Path(__file__).resolve().parent
    paths = [str(package_dir / (PORTABLE_STEM + suffix))
             for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    # An editable install (pip install -e .) keeps the library in its meson build folder, where
    # the import system's finder for the package knows it.
    try:
        spec = importlib.util.find_spec(f"{__package__}.{PORTABLE_STEM}")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and spec.origin not in paths:
        paths.append(spec.origin)
    return paths


MIN_OPENBLAS_VERSION = "0.3.27.63.0"  # the first scipy-openblas32 whose get_library() takes fullname


def _distribution_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # metadata missing or unreadable: the message still names the fix
        return "(version unknown)"


def _preload_openblas() -> None:
    """Load the OpenBLAS the portable library links to, so it resolves from any install layout."""
    try:
        import scipy_openblas32 as openblas
    except ImportError:
        return
    try:
        file_name = openblas.get_library(fullname=True)
    except TypeError:  # get_library() takes no fullname before 0.3.27.63.0
        raise LibraryNotFoundError("scipy-openblas32", [(
            "scipy_openblas32", f"the installed scipy-openblas32 {_distribution_version('scipy-openblas32')} is too old "
            f"for bnns-py (it needs {MIN_OPENBLAS_VERSION} or later): pip install -U scipy-openblas32")]) from None
    path = os.path.join(openblas.get_lib_dir(), file_name)
    try:
        ctypes.CDLL(path)
    except OSError:
        pass  # the portable library's own rpath may still find it; dlopen reports otherwise


def _load(name: str) -> Backend:
    attempts = []
    for path in _candidates(name):
        if not path.startswith("/System/") and not os.path.exists(path):
            attempts.append((path, "no such file"))
            continue
        try:
            if name == "portable":
                _preload_openblas()
            lib = ffi.dlopen(path)
            # a BNNS library must export these (Backend binds BNNSFilterDestroy for every filter)
            lib.BNNSFilterCreateLayerConvolution
            lib.BNNSFilterDestroy
            if name == "portable":
                lib.bnns_portable_version
        except LibraryNotFoundError:  # a dependency that no other path can fix
            raise
        except (OSError, AttributeError) as error:
            attempts.append((path, str(error).strip() or type(error).__name__))
            continue
        return Backend(name, path, lib)
    raise LibraryNotFoundError(name, attempts)


def bnns_symbols() -> Tuple[str, ...]:
    """Names of the BNNS functions bnns-py can call: every prototype in ``cdefs/bnns.h``."""
    text = (cdefs_dir() / "bnns.h").read_text()
    return tuple(dict.fromkeys(re.findall(r"^\w[\w \t*]*?\b(BNNS\w+)\s*\(", text, re.MULTILINE)))


def layer_api_notice(macos_version: Optional[str]) -> Optional[str]:
    """What a user on ``macos_version`` (``"15.7"``; None or "" off macOS) should know about the
    BNNS layer API's deprecation, or None when there is nothing to say."""
    if not macos_version:
        return None
    try:
        major = int(str(macos_version).split(".")[0])
    except ValueError:
        return None
    if major < 11:
        return (f"macOS {macos_version} predates the BNNS layer API (macOS 11): use the portable backend "
                "(BNNS_PY_BACKEND=portable)")
    if major < 15:
        return None
    return (f"Apple deprecated the BNNS layer API (BNNSFilterCreateLayer*, BNNSFilterApply*, BNNSFilterDestroy) "
            f"in macOS 15; this macOS {macos_version} still exports it (see the symbols) and bnns-py uses it. "
            "If a future macOS drops these symbols, use the portable backend: BNNS_PY_BACKEND=portable "
            "(built at install when a C compiler is present).")


def backend_info(name: Union[str, "Backend", None] = None) -> Dict[str, Optional[str]]:
    """Which backend and library file are in use, plus platform facts (``bnns-py info`` prints it).

    Parameters
    ----------
    name : str, Backend or None, optional
        As for :func:`get_backend`.

    Returns
    -------
    dict of str to str or None
        ``backend``, ``library``, ``platform``, ``machine`` and ``macos_version`` (None off
        macOS); for the portable library also ``portable_version``, ``blas``, ``simd``, ``isa``
        (the vector tier in use), ``isa_available`` (the tiers this CPU runs) and, when a
        requested tier was refused, ``isa_error``.

    Raises
    ------
    ValueError, LibraryNotFoundError
        As for :func:`get_backend`.

    Examples
    --------
    >>> import bnns_py
    >>> info = bnns_py.backend_info()
    >>> info["backend"] == bnns_py.get_backend().name
    True
    """
    backend = get_backend(name)
    info = {
        "backend": backend.name,
        "library": backend.library_path,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "macos_version": platform.mac_ver()[0] or None,
    }
    if backend.is_portable:
        info["portable_version"] = ffi.string(backend.lib.bnns_portable_version()).decode()
        info["blas"] = ffi.string(backend.lib.bnns_portable_blas()).decode()
        info["simd"] = ffi.string(backend.lib.bnns_portable_simd()).decode()
        info["isa"] = ffi.string(backend.lib.bnns_portable_isa()).decode()
        info["isa_available"] = ffi.string(backend.lib.bnns_portable_isa_available()).decode()
        isa_error = ffi.string(backend.lib.bnns_portable_isa_error()).decode()
        if isa_error:
            info["isa_error"] = isa_error
    return info
