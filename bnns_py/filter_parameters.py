"""``FilterParameters``: the Python mirror of ``BNNSFilterParameters``."""
from ._ffi import ffi
from .enums import Flags


class FilterParameters:
    """Runtime options of a filter: flags, thread count and memory callbacks.

    Both Swift spellings work: ``FilterParameters(flags=..., n_threads=..., alloc_memory=...,
    free_memory=...)`` and ``FilterParameters(options=..., thread_count=..., allocator=...,
    deallocator=...)``. ``alloc_memory(memptr, alignment, size) -> int`` and ``free_memory(ptr)``
    may be Python callables (wrapped with ``ffi.callback``) or cffi function pointers; they must
    be given together.
    """

    __slots__ = ("flags", "n_threads", "_alloc", "_free", "_c")

    def __init__(self, flags=Flags.none, n_threads=0, alloc_memory=None, free_memory=None, *,
                 options=None, thread_count=None, allocator=None, deallocator=None):
        flags = flags if options is None else options
        n_threads = n_threads if thread_count is None else thread_count
        alloc_memory = alloc_memory if allocator is None else allocator
        free_memory = free_memory if deallocator is None else deallocator
        if isinstance(n_threads, bool) or not hasattr(n_threads, "__index__") or int(n_threads) < 0:
            raise ValueError(f"n_threads must be an integer >= 0 (0 = automatic), got {n_threads!r}")
        if isinstance(flags, bool) or not hasattr(flags, "__index__") or int(flags) & ~int(Flags.use_client_pointer):
            raise ValueError(f"flags {flags!r} has bits BNNS does not define; valid: {list(Flags)}")
        flags = Flags(int(flags))
        if (alloc_memory is None) != (free_memory is None):
            raise ValueError("alloc_memory and free_memory must be given together")
        self.flags = flags
        self.n_threads = int(n_threads)
        self._alloc = _callback("BNNSAlloc", alloc_memory)
        self._free = _callback("BNNSFree", free_memory)
        self._c = ffi.new("BNNSFilterParameters *")
        self._c.flags = int(flags)
        self._c.n_threads = self.n_threads
        self._c.alloc_memory = self._alloc
        self._c.free_memory = self._free

    @property
    def use_client_pointer(self):
        return bool(self.flags & Flags.use_client_pointer)

    # Swift's macOS 12 aliases
    options = property(lambda self: self.flags)
    thread_count = property(lambda self: self.n_threads)

    @property
    def c_parameters(self):
        """The C struct, as a cffi ``BNNSFilterParameters *`` (valid while ``self`` lives)."""
        return self._c

    def __repr__(self):
        extra = ", custom allocator" if self._alloc != ffi.NULL else ""
        return f"FilterParameters(flags={self.flags!r}, n_threads={self.n_threads}{extra})"


def _callback(ctype, function):
    if function is None:
        return ffi.NULL
    if isinstance(function, ffi.CData):
        return function
    if not callable(function):
        raise TypeError(f"{ctype} callback must be callable, not {type(function).__name__}")
    return ffi.callback(ctype, function)
