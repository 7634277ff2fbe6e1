#!/usr/bin/env bash
# The C-level tests (tests/kernels, meson -Dkernel_tests=true) on this machine, once per vector
# tier of the build; a tier this CPU lacks is reported as skipped.
# Usage: .ci/kernel_tests.sh   (needs meson + ninja on PATH or importable by python3)
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v meson >/dev/null; then meson=(meson); else meson=(python3 -m mesonbuild.mesonmain); fi
out=$(mktemp -d)
"${meson[@]}" setup "$out/build" . -Dkernel_tests=true > "$out/setup.log" 2>&1 || { cat "$out/setup.log"; exit 1; }
ninja -C "$out/build" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
"${meson[@]}" test -C "$out/build" --print-errorlogs
grep -h "^isa\|^SKIP" "$out/build/meson-logs/testlog.txt"
