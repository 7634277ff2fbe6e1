"""``FilterParameters``: the Python mirror of ``BNNSFilterParameters``."""
from typing import Any, Callable, Optional, Union

from ._ffi import ffi
from .enums import Flags

#: A memory callback: a Python callable (wrapped with ``ffi.callback``) or a cffi function pointer.
Callback = Union[Callable[..., Any], Any]


def checked_thread_count(n_threads: Any) -> int:
    """``n_threads`` as an int, checked: an integer >= 0, 0 meaning as many threads as the backend
    chooses.

    Raises
    ------
    ValueError
        A negative number, a bool, or not an integer.
    """
    if isinstance(n_threads, bool) or not hasattr(n_threads, "__index__") or int(n_threads) < 0:
        raise ValueError(f"n_threads must be an integer >= 0 (0 = automatic), got {n_threads!r}")
    return int(n_threads)


class FilterParameters:
    """Runtime options of a filter: flags, thread count and memory callbacks.

    Mirrors C's ``BNNSFilterParameters`` and both Swift spellings: ``FilterParameters(flags=...,
    n_threads=..., alloc_memory=..., free_memory=...)`` and ``FilterParameters(options=...,
    thread_count=..., allocator=..., deallocator=...)``.

    Parameters
    ----------
    flags : Flags or int, optional
        ``Flags.none`` (default: BNNS copies weights at creation) or ``Flags.use_client_pointer``
        (BNNS reads the caller's weight and bias arrays at every call; needed for
        ``apply_backward``). Bits BNNS does not define are refused.
    n_threads : int, optional
        Threads one call may use; 0 (default) lets the backend decide (the portable backend
        uses the CPUs in the process's affinity mask).
    alloc_memory, free_memory : callable or cffi function pointer, optional
        ``alloc_memory(memptr, alignment, size) -> int`` and ``free_memory(ptr)``, used by BNNS
        for the filter's memory. Python callables are wrapped with ``ffi.callback``. Give both
        or neither.
    options, thread_count, allocator, deallocator : optional, keyword-only
        Swift's macOS 12 names for the four parameters above; they take precedence when given.

    Attributes
    ----------
    flags : Flags
        The flags.
    n_threads : int
        The thread count (0 = automatic).

    Raises
    ------
    ValueError
        ``n_threads`` is negative or not an integer, ``flags`` has undefined bits, or only one
        of the two callbacks is given.
    TypeError
        A callback is neither callable nor a cffi function pointer.

    Examples
    --------
    >>> from bnns_py import FilterParameters, Flags
    >>> parameters = FilterParameters(flags=Flags.use_client_pointer, n_threads=2)
    >>> parameters.use_client_pointer, parameters.thread_count
    (True, 2)
    >>> parameters.c_parameters.n_threads
    2
    >>> FilterParameters(flags=8)
    Traceback (most recent call last):
    ...
    ValueError: flags 8 has bits BNNS does not define; valid: [<Flags.use_client_pointer: 1>]
    """

    __slots__ = ("flags", "n_threads", "_alloc", "_free", "_c")

    def __init__(self, flags: Union[Flags, int] = Flags.none, n_threads: int = 0,
                 alloc_memory: Optional[Callback] = None, free_memory: Optional[Callback] = None, *,
                 options: Union[Flags, int, None] = None, thread_count: Optional[int] = None,
                 allocator: Optional[Callback] = None, deallocator: Optional[Callback] = None) -> None:
        flags = flags if options is None else options
        n_threads = n_threads if thread_count is None else thread_count
        alloc_memory = alloc_memory if allocator is None else allocator
        free_memory = free_memory if deallocator is None else deallocator
        n_threads = checked_thread_count(n_threads)
        if isinstance(flags, bool) or not hasattr(flags, "__index__") or int(flags) & ~int(Flags.use_client_pointer):
            raise ValueError(f"flags {flags!r} has bits BNNS does not define; valid: {list(Flags)}")
        flags = Flags(int(flags))
        if (alloc_memory is None) != (free_memory is None):
            raise ValueError("alloc_memory and free_memory must be given together")
        self.flags = flags
        self.n_threads = n_threads
        self._alloc = _callback("BNNSAlloc", alloc_memory)
        self._free = _callback("BNNSFree", free_memory)
        self._c = ffi.new("BNNSFilterParameters *")
        self._c.flags = int(flags)
        self._c.n_threads = self.n_threads
        self._c.alloc_memory = self._alloc
        self._c.free_memory = self._free

    @property
    def use_client_pointer(self) -> bool:
        """Whether ``flags`` has ``Flags.use_client_pointer``."""
        return bool(self.flags & Flags.use_client_pointer)

    @property
    def options(self) -> Flags:
        """``flags``, by Swift's macOS 12 name."""
        return self.flags

    @property
    def thread_count(self) -> int:
        """``n_threads``, by Swift's macOS 12 name."""
        return self.n_threads

    @property
    def c_parameters(self) -> Any:
        """The C struct, as a cffi ``BNNSFilterParameters *`` (valid while ``self`` lives)."""
        return self._c

    def __repr__(self) -> str:
        extra = ", custom allocator" if self._alloc != ffi.NULL else ""
        return f"FilterParameters(flags={self.flags!r}, n_threads={self.n_threads}{extra})"


def _callback(ctype: str, function: Optional[Callback]) -> Any:
    if function is None:
        return ffi.NULL
    if isinstance(function, ffi.CData):
        return function
    if not callable(function):
        raise TypeError(f"{ctype} callback must be callable, not {type(function).__name__}")
    return ffi.callback(ctype, function)
