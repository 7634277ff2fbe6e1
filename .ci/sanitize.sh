#!/usr/bin/env bash
# Build the portable library with AddressSanitizer + UndefinedBehaviorSanitizer and run the
# C-facing part of the test suite against it (BNNS_PY_LIBRARY). Any sanitizer report aborts the
# process, which fails the run.
# Usage: .ci/sanitize.sh PYTHON   (a Python with bnns-py and its test dependencies installed)
#        BNNS_PY_SANITIZE_CFLAGS: extra compiler flags (e.g. -march=native for the AVX-512/AVX2 kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/sanitize.sh PYTHON}"
# absolute, but not resolved: a venv's python is a symlink whose target is outside the venv
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
out=$(mktemp -d)
blas=$("$python" -c "import scipy_openblas32 as o; print(o.get_include_dir(), o.get_lib_dir(), o.get_library())")
read -r inc lib name <<<"$blas"
gcc -std=c11 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -fPIC -shared -Wall -Wextra -Werror ${BNNS_PY_SANITIZE_CFLAGS:-} -Icdefs -I"$inc" -DBNNS_PORTABLE_BLAS_SCIPY_OPENBLAS \
  bnns_py/_portable/*.c -L"$lib" -l"$name" -Wl,-rpath,"$lib" -lm -lpthread -o "$out/libbnns_portable_asan.so"
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# Python itself is not built with ASan: leak checking would report the interpreter's own
# allocations, so leaks are checked through the library's live-filter counter instead.
cd "$out"
# malloc_fill_byte=255 makes every fresh allocation all-ones bits, a NaN as float: a kernel that
# lets uninitialized workspace reach a result then fails its test every time instead of rarely.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:malloc_fill_byte=255:max_malloc_fill_size=2147483647 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LD_PRELOAD="$preload" BNNS_PY_LIBRARY="$out/libbnns_portable_asan.so"
"$python" -c "import bnns_py; lib = bnns_py.backend_info()['library']; assert lib.endswith('_asan.so'), lib; print('sanitized library:', lib)"
"$python" -m pytest -q -p no:cacheprovider "$OLDPWD/tests" -k "not torch" --ignore="$OLDPWD/tests/test_reference.py"
