"""The build's platform decisions (meson.build), checked with `meson setup` for hosts this machine
is not: macOS with and without a C compiler (cross files declare the host), next to this Linux.

What is asserted comes from `meson introspect`: which targets exist, how the portable library
links (Accelerate's CBLAS on macOS, scipy-openblas32 with an $ORIGIN rpath on Linux) and which
files are installed (the Python sources always, into platlib so a wheel is platform-tagged; the
cdef headers; never a C source). Skipped when meson is not installed."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.skipif(not (ROOT / "meson.build").is_file(), reason="needs the source checkout"),
    # meson from this interpreter, so that the build's Python (and its scipy-openblas32) is this one
    pytest.mark.skipif(importlib.util.find_spec("mesonbuild") is None, reason="meson is not installed"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to stand in for a macOS compiler"),
]

DARWIN_HOST = """
[host_machine]
system = 'darwin'
cpu_family = 'aarch64'
cpu = 'arm64'
endian = 'little'
"""


MESON = [sys.executable, "-m", "mesonbuild.mesonmain"]


def _setup(tmp_path, cross=None, *options):
    build = tmp_path / "build"
    command = [*MESON, "setup", str(build), str(ROOT), *options]
    if cross is not None:
        (tmp_path / "cross.ini").write_text(cross)
        command += ["--cross-file", str(tmp_path / "cross.ini")]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def introspect(what):
        return json.loads(subprocess.run([*MESON, "introspect", f"--{what}", str(build)], capture_output=True,
                                         text=True, check=True, env=env).stdout)
    return introspect, result.stdout


def _library(targets):
    libraries = [t for t in targets if t["name"].startswith("_bnns_portable")]
    assert len(libraries) == 1, [t["name"] for t in targets]
    link = [s["parameters"] for s in libraries[0]["target_sources"] if "linker" in s]
    return libraries[0], [arg for args in link for arg in args]


def _installed(introspect):
    return {Path(dst).relative_to(Path(dst).parents[1]).as_posix() if "cdefs" in dst else Path(dst).name
            for dst in introspect("installed").values()}


def test_macos_without_a_compiler_installs_the_python_package_only(tmp_path):
    introspect, log = _setup(tmp_path, DARWIN_HOST)
    assert introspect("targets") == []
    installed = _installed(introspect)
    assert {"__init__.py", "backend.py", "py.typed", "cdefs/bnns.h", "cdefs/bnns_portable.h"} <= installed
    assert not any(name.endswith((".c", ".so")) for name in installed)
    assert "no C compiler" in log


def test_macos_with_a_compiler_builds_the_portable_library_on_accelerate(tmp_path):
    introspect, _ = _setup(tmp_path, DARWIN_HOST + "[binaries]\nc = 'gcc'\n")
    library, link = _library(introspect("targets"))
    assert library["installed"]
    assert link[link.index("-framework") + 1] == "Accelerate"
    assert not any("openblas" in arg for arg in link)
    assert any(arg.startswith("-Wl,-exported_symbols_list,") for arg in link)
    assert not any("$ORIGIN" in arg for arg in link)
    tiers = sorted(t["name"] for t in introspect("targets") if t["name"].startswith("bnns_tier_"))
    assert tiers == ["bnns_tier_neon"]
    options = {o["name"]: o["value"] for o in introspect("buildoptions")}
    assert options["blas"] == "auto"


def test_linux_builds_every_x86_tier_on_scipy_openblas(tmp_path):
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("checks this x86-64 Linux host's own build")
    pytest.importorskip("scipy_openblas32")
    introspect, _ = _setup(tmp_path)
    library, link = _library(introspect("targets"))
    assert any(arg.startswith("-lscipy_openblas") for arg in link)
    assert any(arg.startswith("-Wl,--version-script=") and arg.endswith("exports.map") for arg in link)
    tiers = sorted(t["name"] for t in introspect("targets") if t["name"].startswith("bnns_tier_"))
    assert tiers == ["bnns_tier_avx2", "bnns_tier_avx512", "bnns_tier_baseline"]
    installed = _installed(introspect)
    assert library["install_filename"][0].endswith(tuple(n for n in installed if n.startswith("_bnns_portable")))
    assert not any(name.endswith(".c") for name in installed)


def test_apple_export_variant_exports_bnns_symbols_only(tmp_path):
    if sys.platform != "linux":
        pytest.skip("the version script is GNU ld's")
    introspect, _ = _setup(tmp_path, None, "-Dexport=apple", "-Dblas=builtin")
    library, link = _library(introspect("targets"))
    assert any(arg.endswith("apple_symbols.map") for arg in link)
    assert not library["installed"]
