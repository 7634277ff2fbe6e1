#!/usr/bin/env python3
"""Print where scipy-openblas32 keeps its header and library, for meson.build (one per line:
include dir, library dir, library name for -l). Exits 1 when the package is not importable."""
import sys

try:
    import scipy_openblas32 as openblas
except ImportError:
    sys.exit(1)
print(openblas.get_include_dir())
print(openblas.get_lib_dir())
print(openblas.get_library())
