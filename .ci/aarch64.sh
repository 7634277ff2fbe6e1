#!/usr/bin/env bash
# aarch64: cross-compile the portable library (NEON tier, built-in GEMM) and its C tests with
# Debian's gcc-aarch64-linux-gnu, then run them under qemu-aarch64: the C-level driver (create /
# apply / apply_backward against a naive C reference, every engine BNNS_PY_PORTABLE_ENGINE forces)
# and the kernel testers (direct tiles, depthwise, im2col / col2im, tiny, Winograd transforms).
# Usage: .ci/aarch64.sh   (installs gcc-aarch64-linux-gnu and qemu-user when missing, as root;
#        needs meson + ninja on PATH or importable by python3)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) >/dev/null
fi
if command -v meson >/dev/null; then meson=(meson); else meson=(python3 -m mesonbuild.mesonmain); fi
out=$(mktemp -d)
"${meson[@]}" setup "$out/build" . --cross-file tools/cross/aarch64-linux-gnu.ini -Dblas=builtin -Dkernel_tests=true \
  > "$out/setup.log" 2>&1 || { cat "$out/setup.log"; exit 1; }
ninja -C "$out/build" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
file "$out"/build/bnns_py/_portable/_bnns_portable*.so
"${meson[@]}" test -C "$out/build" --print-errorlogs
grep -h "^isa" "$out/build/meson-logs/testlog.txt"
