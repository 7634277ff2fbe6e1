"""Build the portable BNNS library that ships inside bnns_py.

The library is compiled as a setuptools Extension only to reuse the platform's compiler
settings: it has no Python entry point. bnns_py dlopens it with cffi (ABI mode), exactly as it
dlopens Accelerate on macOS. Its GEMMs run on OpenBLAS from the scipy-openblas32 wheel when that
is importable at build time, else on a built-in blocked GEMM.

Environment knobs:
  BNNS_PY_BLAS=builtin   build without OpenBLAS (plain-C GEMM)
  BNNS_PY_NATIVE=0       do not pass -march=native (for binaries moved to other machines)
  BNNS_PY_CFLAGS="..."   extra compiler flags (e.g. sanitizers)
"""
import glob
import os
import platform
import shlex
import sys

from setuptools import Extension, setup


def _blas_settings():
    if os.environ.get("BNNS_PY_BLAS", "").lower() == "builtin":
        return {}
    try:
        import scipy_openblas32 as openblas
    except ImportError:
        print("bnns-py: scipy-openblas32 not importable at build time; using the built-in GEMM",
              file=sys.stderr)
        return {}
    lib_dir = openblas.get_lib_dir()
    return {
        "define_macros": [("BNNS_PORTABLE_BLAS_SCIPY_OPENBLAS", "1")],
        "include_dirs": [openblas.get_include_dir()],
        "library_dirs": [lib_dir],
        "libraries": [openblas.get_library()],
        # Installed side by side in site-packages; bnns_py also preloads it before dlopen.
        "extra_link_args": ["-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"],
    }


def _compile_args():
    # -std=c11 alone turns off multiply-add contraction: allow it, so the kernels' a += w * x become FMAs
    args = ["-std=c11", "-O3", "-ffp-contract=fast", "-fvisibility=default"]
    machine = platform.machine().lower()
    if os.environ.get("BNNS_PY_NATIVE", "1") != "0" and machine in ("x86_64", "amd64", "aarch64", "arm64"):
        args.append("-march=native" if machine in ("x86_64", "amd64") else "-mcpu=native")
    args += shlex.split(os.environ.get("BNNS_PY_CFLAGS", ""))
    return args


blas = _blas_settings()
portable = Extension(
    "bnns_py._bnns_portable",
    sources=sorted(glob.glob("bnns_py/_portable/*.c")),
    depends=sorted(glob.glob("bnns_py/_portable/*.h") + glob.glob("cdefs/*.h")),
    include_dirs=["cdefs"] + blas.get("include_dirs", []),
    define_macros=blas.get("define_macros", []),
    library_dirs=blas.get("library_dirs", []),
    libraries=blas.get("libraries", []) + ["m", "pthread"],
    extra_compile_args=_compile_args(),
    extra_link_args=blas.get("extra_link_args", []) + shlex.split(os.environ.get("BNNS_PY_CFLAGS", "")),
)

setup(
    packages=["bnns_py", "bnns_py.cdefs"],
    package_dir={"bnns_py.cdefs": "cdefs"},
    package_data={"bnns_py.cdefs": ["*.h"], "bnns_py": ["py.typed"]},
    ext_modules=[portable],
)
