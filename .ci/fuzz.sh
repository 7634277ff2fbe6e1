#!/usr/bin/env bash
# Coverage-guided fuzzing of the portable library (libFuzzer + ASan + UBSan), for a bounded time:
# half of it on a build for this machine's vector instructions (-march=native: the AVX-512 / AVX2
# kernels), half on a baseline build (the 4-lane kernels), since the direct engine's tiles differ.
# Creation may request any allocation (a huge but valid layer): ASan returns NULL for the
# impossible ones and the library must fail cleanly, so only RSS is limited, not malloc sizes.
# Usage: .ci/fuzz.sh [seconds]   (needs clang with libFuzzer: Debian's clang-14 + libclang-rt-14-dev)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
cc=$(command -v clang-14 || command -v clang || true)
if [ -z "$cc" ]; then echo "fuzz: no clang found" >&2; exit 1; fi
out=$(mktemp -d)
failed=0
for arch in native baseline; do
  flags=""
  [ "$arch" = native ] && flags="-march=native"
  "$cc" -std=c11 -g -O1 $flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DBNNS_PORTABLE_BLAS_BUILTIN -Icdefs bnns_py/_portable/*.c tests/fuzz/fuzz_portable.c -lm -lpthread \
    -o "$out/fuzz_$arch"
  mkdir -p "$out/corpus_$arch"
  status=0
  ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
    "$out/fuzz_$arch" -max_total_time="$(( (seconds + 1) / 2 ))" -rss_limit_mb=2048 -malloc_limit_mb=1000000 \
    -print_final_stats=1 -artifact_prefix="$out/${arch}_" "$out/corpus_$arch" > "$out/log_$arch" 2>&1 || status=$?
  echo "== fuzz ($arch build)"
  tail -12 "$out/log_$arch"
  [ "$status" != 0 ] && failed=1
done
if [ "$failed" != 0 ]; then
  echo "fuzz: FAILED; reproducer(s):"; ls "$out"/*crash-* "$out"/*leak-* "$out"/*oom-* "$out"/*timeout-* 2>/dev/null || true
  for f in "$out"/*crash-* "$out"/*leak-* "$out"/*oom-* "$out"/*timeout-*; do [ -f "$f" ] && base64 -w0 "$f" && echo; done
  exit 1
fi
