#!/usr/bin/env bash
# Build a wheel and an sdist, install the sdist into a fresh venv and run the tests from the
# unpacked sdist alone (no checkout files), as a user of the released package would.
# Usage: .ci/sdist.sh PYTHON   (a Python that has the 'build' package)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/sdist.sh PYTHON}"
out=$(mktemp -d)
"$python" -m build --outdir "$out/dist" . > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
ls "$out/dist"
python3 -m venv "$out/venv"
sdist=$(ls "$out"/dist/*.tar.gz)
"$out/venv/bin/pip" install --quiet "$sdist[test]"
tar xzf "$sdist" -C "$out"
cd "$out"/bnns_py-*/
"$out/venv/bin/pytest" -q -p no:cacheprovider
