#!/usr/bin/env bash
# Build the documentation with warnings as errors (broken links and anchors too), check the
# README's links, then run the doctests: the Markdown pages' and the numpydoc examples in the
# modules listed below. The examples run against the installed bnns-py (from a temporary folder,
# so the source tree is not imported instead).
# Usage: .ci/docs.sh PYTHON   (a Python with bnns-py installed; the 'docs' extra's packages are
#                              installed into it when missing: sphinx, myst-parser)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/docs.sh PYTHON}"
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
repo="$(pwd)"

if ! "$python" -c "import sphinx, myst_parser" >/dev/null 2>&1; then
  # the 'docs' extra of pyproject.toml, without rebuilding bnns-py itself
  "$python" -m pip install --quiet "sphinx>=7" "myst-parser>=2"
fi

out="${BNNS_PY_DOCS_OUT:-$(mktemp -d)/html}"
"$python" -m sphinx -W --keep-going -q -b html docs "$out"
echo "docs: built without warnings into $out"
# Sphinx checks the pages' links and anchors; README.md is not one of its pages
"$python" .ci/check_links.py README.md

# Modules whose docstrings carry runnable numpydoc examples.
modules=(bnns_py.shape bnns_py.enums bnns_py.filter_parameters bnns_py.compare bnns_py.reference
         bnns_py.errors bnns_py.geometry bnns_py.functional bnns_py.modules
         bnns_py.activation bnns_py.descriptor bnns_py.layer bnns_py.convolution bnns_py.fully_connected
         bnns_py.legacy bnns_py.backend bnns_py.cli)
# bnns_py.interop's examples convert torch modules: they run where PyTorch is installed.
if "$python" -c "import torch" >/dev/null 2>&1; then
  modules+=(bnns_py.interop)
else
  echo "docs: PyTorch is not installed, so bnns_py.interop's examples do not run"
fi
# Pages whose examples are written as doctests (>>> prompts).
pages=("$repo"/docs/tutorial.md "$repo"/docs/guides/*.md)
scratch=$(mktemp -d)
(cd "$scratch" && "$python" -m pytest -q -p no:cacheprovider --rootdir "$scratch" \
   --doctest-modules --doctest-glob='*.md' --pyargs "${modules[@]}" "${pages[@]}")
rm -rf "$scratch"
