"""The cffi FFI object, built from the declarations in ``cdefs/`` (ABI mode, no compiler).

The same header files are compiled into the portable library, so the Python side and the C side
cannot disagree about a struct layout. No library is opened here: see ``bnns_py.backend``.
"""
from pathlib import Path

import cffi

HEADERS = ("bnns.h", "bnns_portable.h")


def cdefs_dir() -> Path:
    """Folder holding the cdef headers: inside the installed package, or the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "cdefs", here.parent / "cdefs"):
        if all((candidate / name).is_file() for name in HEADERS):
            return candidate
    raise FileNotFoundError(f"bnns-py cdef headers {HEADERS} not found next to {here}")


def _build():
    new_ffi = cffi.FFI()
    folder = cdefs_dir()
    for name in HEADERS:
        new_ffi.cdef((folder / name).read_text())
    return new_ffi


ffi = _build()
