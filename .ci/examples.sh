#!/usr/bin/env bash
# Run every example script (the gallery of the docs) with the given Python, from the checkout's
# examples/ folder: the installed bnns-py is imported, not the source tree. The PyTorch and Dask
# examples are skipped, with a line saying so, when their optional packages are missing.
# Usage: .ci/examples.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/examples.sh PYTHON}"

has() { "$python" -c "import $1" >/dev/null 2>&1; }
run() {
  echo "== examples/$1"
  "$python" "examples/$1" "${@:2}"
}

run quickstart.py
run train_tiny_cnn.py | tail -1
run strided_views.py
run data_types.py
run c_level_access.py
if has torch; then
  run verify_against_pytorch.py
else
  echo "== examples/verify_against_pytorch.py skipped: torch is not installed"
fi
if has dask.array && has distributed; then
  run dask_batches.py
else
  echo "== examples/dask_batches.py skipped: dask[array] and distributed are not installed (the 'dask' extra)"
fi
echo "examples: all ran"
