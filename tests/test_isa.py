"""The portable library's vector tiers (runtime/dispatch.c): each tier this CPU runs, forced with
BNNS_PY_ISA in a fresh process, computes every engine's passes against the numpy reference; a
tier the CPU or the build lacks is refused with a clear error, before any computation."""
import json
import os
import subprocess
import sys

import pytest

import bnns_py

pytestmark = pytest.mark.skipif(bnns_py.backend_info()["backend"] != "portable",
                                reason="vector tiers are the portable library's")

# Runs in a child process (the tier is chosen once per process, when the library loads).
CHILD = r"""
import json, os, sys
import numpy as np
import bnns_py
from bnns_py import reference
sys.path.insert(0, sys.argv[1])
from conftest import assert_close_to_reference

rng = np.random.default_rng(7)
def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)

# (name, batch, in_c, out_c, size, kernel, stride, padding, dilation, groups): layers that the
# automatic choice gives to each engine (winograd, direct, depthwise, direct pointwise for 1x1,
# tiny), with odd sizes so that vector remainders run
CASES = [
    ("winograd", 1, 32, 64, 56, 3, 1, 1, 1, 1),
    ("direct", 1, 16, 37, 30, 3, 2, 1, 1, 1),
    ("direct_dilated", 1, 9, 40, 17, 5, 1, 3, 2, 1),
    ("depthwise", 2, 18, 18, 19, 3, 1, 1, 1, 18),
    ("pointwise", 2, 33, 29, 11, 1, 1, 0, 1, 1),
    ("tiny", 3, 5, 6, 4, 3, 1, 1, 1, 1),
    ("grouped", 1, 12, 15, 10, 3, 2, 2, 1, 3),
]
engines = {}
for name, n, cin, cout, size, k, stride, pad, dil, groups in CASES:
    x = rand(n, cin, size, size)
    w = rand(cout, cin // groups, k, k) * 0.5
    b = rand(cout)
    kw = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    act = bnns_py.ActivationFunction.rectified_linear
    with bnns_py.Conv2d(w, b, activation=act, **kw) as conv:
        y = conv.forward(x)
        dy = rand(*y.shape)
        grads = conv.backward(x, y, dy)
        layer = next(iter(conv._layers.values()))
        engines[name] = bnns_py.get_backend().filter_engine(layer.bnns_filter)
        engines[name + " weights"] = bnns_py.get_backend().filter_engine(layer.bnns_filter, "weights_gradient")
    ref = reference.conv2d_backward(x, w, dy, output=y, bias=True, activation=act, **dict(kw, padding=(pad,) * 4))
    expected = reference.conv2d(x, w, b, activation=act, **dict(kw, padding=(pad,) * 4))
    assert_close_to_reference(y, expected, w[0].size, name + " forward")
    terms = y.shape[0] * y.shape[2] * y.shape[3]
    assert_close_to_reference(grads.input, ref[0], w[0].size * cout, name + " input gradient")
    assert_close_to_reference(grads.weight, ref[1], terms, name + " weight gradient")
    assert_close_to_reference(grads.bias, ref[2], terms, name + " bias gradient")
    t = bnns_py.conv_transpose2d(x, rand(cin, cout // groups, k, k), stride=stride, padding=pad,
                                 dilation=dil, groups=groups)
    assert np.isfinite(t).all()
print(json.dumps(dict(bnns_py.backend_info(), engines=engines)))
"""


TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _run(isa, *extra):
    env = dict(os.environ, BNNS_PY_ISA=isa)
    env.pop("BNNS_PY_PORTABLE_ENGINE", None)
    # from the tests folder: `python -c` puts the working directory first on sys.path, and a source
    # checkout's bnns_py there has no compiled library
    return subprocess.run([sys.executable, "-c", *extra], env=env, capture_output=True, text=True, timeout=300,
                          cwd=TESTS_DIR)


AVAILABLE = bnns_py.backend_info().get("isa_available", "").split()


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_each_tier_computes_every_engine_against_the_reference(isa):
    if isa not in AVAILABLE:
        pytest.skip(f"this CPU / build does not run the {isa} tier (it runs: {' '.join(AVAILABLE)})")
    child = _run(isa, CHILD, TESTS_DIR)
    assert child.returncode == 0, child.stderr[-3000:]
    info = json.loads(child.stdout.strip().splitlines()[-1])
    assert info["isa"] == isa
    assert info["isa_available"] == " ".join(AVAILABLE)
    assert "isa_error" not in info
    assert info["engines"]["winograd"] == "winograd"
    assert info["engines"]["winograd weights"] == "winograd"
    assert info["engines"]["direct"].startswith("direct")
    assert info["engines"]["pointwise"] == "direct pointwise"
    assert info["simd"] == {"baseline": "4-lane", "avx2": "AVX2", "avx512": "AVX-512", "neon": "4-lane"}[isa]


def test_widest_tier_is_chosen_by_default():
    child = subprocess.run([sys.executable, "-c", "import bnns_py; print(bnns_py.backend_info()['isa'])"],
                           env={k: v for k, v in os.environ.items() if k != "BNNS_PY_ISA"},
                           capture_output=True, text=True, timeout=120, cwd=TESTS_DIR)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [AVAILABLE[-1]]


REFUSED = r"""
import json, numpy as np, bnns_py
info = bnns_py.backend_info()
try:
    bnns_py.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 1, 1), np.float32))
except bnns_py.BNNSError as error:
    info["raised"] = str(error)
print(json.dumps(info))
"""


@pytest.mark.parametrize("isa", ["avx1024", "avx512", "neon"])
def test_a_tier_the_cpu_or_build_lacks_is_refused_before_any_computation(isa):
    if isa in AVAILABLE:
        pytest.skip(f"this CPU runs {isa}")
    child = _run(isa, REFUSED)
    assert child.returncode == 0, child.stderr[-3000:]
    info = json.loads(child.stdout.strip().splitlines()[-1])
    assert info["isa"] == "none"
    assert info["isa_error"].startswith(f"BNNS_PY_ISA={isa} ")
    assert f"BNNS_PY_ISA={isa}" in info["raised"]
