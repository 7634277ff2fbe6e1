#!/usr/bin/env bash
# Coverage-guided fuzzing of the portable library (libFuzzer + ASan + UBSan), for a bounded time.
# Creation may request any allocation (a huge but valid layer): ASan returns NULL for the
# impossible ones and the library must fail cleanly, so only RSS is limited, not malloc sizes.
# Usage: .ci/fuzz.sh [seconds]   (needs clang with libFuzzer: Debian's clang-14 + libclang-rt-14-dev)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
cc=$(command -v clang-14 || command -v clang || true)
if [ -z "$cc" ]; then echo "fuzz: no clang found" >&2; exit 1; fi
out=$(mktemp -d)
"$cc" -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -DBNNS_PORTABLE_BLAS_BUILTIN -Icdefs bnns_py/_portable/*.c tests/fuzz/fuzz_portable.c -lm -lpthread \
  -o "$out/fuzz_portable"
mkdir -p "$out/corpus"
ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
  "$out/fuzz_portable" -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1000000 \
  -print_final_stats=1 -artifact_prefix="$out/" "$out/corpus" > "$out/log" 2>&1 || status=$?
tail -25 "$out/log"
if [ "${status:-0}" != 0 ]; then
  echo "fuzz: FAILED; reproducer(s):"; ls "$out"/crash-* "$out"/leak-* "$out"/oom-* "$out"/timeout-* 2>/dev/null
  for f in "$out"/crash-* "$out"/leak-* "$out"/oom-* "$out"/timeout-*; do [ -f "$f" ] && base64 -w0 "$f" && echo; done
  exit 1
fi
