#!/usr/bin/env bash
# Build the portable library with AddressSanitizer + UndefinedBehaviorSanitizer (meson's
# b_sanitize, every vector tier compiled in as in a release build), run the C-level tests
# (tests/kernels, every tier, with leak checking), then the C-facing part of the test suite against
# it (BNNS_PY_LIBRARY), once per vector tier (BNNS_PY_ISA), the tiers side by side. Any sanitizer
# report aborts the process, which fails the run.
# Usage: .ci/sanitize.sh PYTHON [TIER...]
#   PYTHON: a Python with bnns-py and its test dependencies installed (meson and ninja are added
#           to its environment when missing); TIERS: default every tier this CPU runs.
#   BNNS_PY_SANITIZE_SETUP_ARGS: extra `meson setup` arguments (e.g. -Dnative=true).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/sanitize.sh PYTHON [TIER...]}"
shift
# absolute, but not resolved: a venv's python is a symlink whose target is outside the venv
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
"$python" -c "import mesonbuild, ninja" 2>/dev/null || "$python" -m pip install --quiet meson ninja
bin="$(dirname "$python")"
out=$(mktemp -d)
# -O1 -g keeps stack traces readable; -Werror: the sanitized build also checks the warnings.
PATH="$bin:$PATH" "$python" -m mesonbuild.mesonmain setup "$out/build" . --buildtype=plain -Dwerror=true \
  -Dc_args="-O1 -g -fno-omit-frame-pointer -fno-sanitize-recover=undefined" -Db_sanitize=address,undefined \
  -Dkernel_tests=true ${BNNS_PY_SANITIZE_SETUP_ARGS:-} > "$out/setup.log" 2>&1 || { cat "$out/setup.log"; exit 1; }
PATH="$bin:$PATH" ninja -C "$out/build" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
# The C-level tests first (every tier; leak checking works there: no interpreter).
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:malloc_fill_byte=255 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  PATH="$bin:$PATH" "$python" -m mesonbuild.mesonmain test -C "$out/build" --print-errorlogs
library=$(ls "$out"/build/bnns_py/_portable/_bnns_portable*.so)
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
tests="$PWD/tests"
# Python itself is not built with ASan: leak checking would report the interpreter's own
# allocations, so leaks are checked through the library's live-filter counter instead.
cd "$out"
# malloc_fill_byte=255 makes every fresh allocation all-ones bits, a NaN as float: a kernel that
# lets uninitialized workspace reach a result then fails its test every time instead of rarely.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:malloc_fill_byte=255:max_malloc_fill_size=2147483647 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LD_PRELOAD="$preload" BNNS_PY_LIBRARY="$library"
if [ $# = 0 ]; then
  read -r -a tiers <<<"$("$python" -c "import bnns_py; print(bnns_py.backend_info()['isa_available'])")"
else
  tiers=("$@")
fi
pids=()
for tier in "${tiers[@]}"; do
  (
    export BNNS_PY_ISA="$tier"
    "$python" -c "import bnns_py; i = bnns_py.backend_info(); assert i['library'] == '$library' and i['isa'] == '$tier', i; print('sanitized library:', i['library'], 'tier:', i['isa'])"
    "$python" -m pytest -q -p no:cacheprovider "$tests" -k "not torch" --ignore="$tests/test_reference.py"
  ) > "$out/tier_$tier.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!tiers[@]}"; do
  status=0
  wait "${pids[$i]}" || status=$?
  echo "== sanitizers, tier ${tiers[$i]}"
  cat "$out/tier_${tiers[$i]}.log"
  [ "$status" = 0 ] || failed=1
done
[ "$failed" = 0 ] || { echo "sanitize: a tier's suite failed (above)"; exit 1; }
