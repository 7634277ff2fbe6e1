#!/usr/bin/env bash
# Accelerate mode on Linux: run the whole test suite against a build of the portable library
# that exports only Apple's symbols (BNNS*, none of bnns_portable_*), loaded as the `accelerate`
# backend. bnns_py.backend then treats it exactly as Accelerate.framework (is_portable is decided
# by the bnns_portable_version export), so every Accelerate-only Python branch runs: the per-layer
# call lock, weight copies instead of weight strides, packed copies of strided image views, no
# failure reason, the probes reporting instead of asserting. Tests that need portable internals
# skip with a reason (tests/conftest.py: requires_portable_internals); a call to a portable-only
# symbol anywhere else fails its test.
# Usage: .ci/accelerate_mode.sh PYTHON [pytest args...]   (a Python with bnns-py and its test deps)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/accelerate_mode.sh PYTHON [pytest args...]}"
shift
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"

# Builds the Apple-symbols-only variant of the portable library at $1.
build_apple_only_library() {
  # meson's -Dexport=apple: the release build (every vector tier, OpenBLAS) exporting only BNNS*
  local out="$1" bin build
  bin="$(dirname "$python")"
  "$python" -c "import mesonbuild, ninja" 2>/dev/null || "$python" -m pip install --quiet meson ninja
  build=$(mktemp -d)
  PATH="$bin:$PATH" "$python" -m mesonbuild.mesonmain setup "$build" . -Dexport=apple > "$build/setup.log" 2>&1 \
    || { cat "$build/setup.log"; return 1; }
  PATH="$bin:$PATH" ninja -C "$build" > "$build/build.log" 2>&1 || { cat "$build/build.log"; return 1; }
  cp "$build"/bnns_py/_portable/_bnns_portable*.so "$out"
  rm -rf "$build"
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
library="$out/libbnns_apple_only.so"
build_apple_only_library "$library"
# The variant must export Apple's entry points and nothing of the portable extension API.
if nm -D --defined-only "$library" | awk '{print $3}' | grep -q '^bnns_portable_'; then
  echo "accelerate mode: $library exports bnns_portable_* symbols" >&2
  exit 1
fi
export BNNS_PY_BACKEND=accelerate BNNS_PY_LIBRARY="$library"
cd "$out"  # the installed package, not the source tree
"$python" - <<'PY'
import bnns_py
backend = bnns_py.get_backend()
assert backend.name == "accelerate" and not backend.is_portable, backend
print("accelerate mode:", backend.library_path)
PY
# What a Mac runs: the verify report, and the comparison with the portable library in one process.
"$python" -m bnns_py verify --against portable --report "$out/verify-report.md" > "$out/verify.log" \
  || { cat "$out/verify.log"; exit 1; }
tail -1 "$out/verify.log"
"$python" -m pytest -q -p no:cacheprovider "$OLDPWD/tests" "$@"
