#!/usr/bin/env bash
# Coverage-guided fuzzing of the portable library (libFuzzer + ASan + UBSan), for a bounded time
# split evenly over the vector tiers this CPU runs (BNNS_PY_ISA), since the engines' tiles and
# kernels differ between them. One build (meson -Dfuzz=true) holds every tier.
# Creation may request any allocation (a huge but valid layer): ASan returns NULL for the
# impossible ones and the library must fail cleanly, so only RSS is limited, not malloc sizes.
# tests/fuzz/regressions holds inputs that once crashed: every run replays them first.
# Usage: .ci/fuzz.sh [seconds]   (needs clang with libFuzzer: Debian's clang-14 + libclang-rt-14-dev,
#        and meson + ninja on PATH or importable by python3)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
cc=$(command -v clang-14 || command -v clang || true)
if [ -z "$cc" ]; then echo "fuzz: no clang found" >&2; exit 1; fi
if command -v meson >/dev/null; then meson=(meson); else meson=(python3 -m mesonbuild.mesonmain); fi
out=$(mktemp -d)
# The library's own code is instrumented for coverage (fuzzer-no-link); the target links libFuzzer.
CC="$cc" "${meson[@]}" setup "$out/build" . --buildtype=plain -Dfuzz=true -Dblas=builtin \
  -Dc_args="-g -O1 -fsanitize=fuzzer-no-link -fno-sanitize-recover=undefined" -Db_sanitize=address,undefined \
  -Db_lundef=false > "$out/setup.log" 2>&1 || { cat "$out/setup.log"; exit 1; }
ninja -C "$out/build" fuzz_portable > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
fuzzer="$out/build/fuzz_portable"
read -r -a tiers <<<"$(BNNS_PY_FUZZ_LIST_TIERS=1 "$fuzzer")"
share=$(( (seconds + ${#tiers[@]} - 1) / ${#tiers[@]} ))
failed=0
for tier in "${tiers[@]}"; do
  mkdir -p "$out/corpus_$tier"
  status=0
  BNNS_PY_ISA="$tier" ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
    "$fuzzer" -max_total_time="$share" -rss_limit_mb=2048 -malloc_limit_mb=1000000 \
    -print_final_stats=1 -artifact_prefix="$out/${tier}_" "$out/corpus_$tier" tests/fuzz/regressions \
    > "$out/log_$tier" 2>&1 || status=$?
  echo "== fuzz (tier $tier)"
  tail -12 "$out/log_$tier"
  [ "$status" != 0 ] && failed=1
done
if [ "$failed" != 0 ]; then
  echo "fuzz: FAILED; reproducer(s) (run them with BNNS_PY_ISA set to the tier in their name):"
  ls "$out"/*crash-* "$out"/*leak-* "$out"/*oom-* "$out"/*timeout-* 2>/dev/null || true
  for f in "$out"/*crash-* "$out"/*leak-* "$out"/*oom-* "$out"/*timeout-*; do [ -f "$f" ] && base64 -w0 "$f" && echo; done
  exit 1
fi
