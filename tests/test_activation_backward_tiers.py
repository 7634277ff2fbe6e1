"""The vector Softmax / LogSoftmax backward (kernels/act_softmax.c) on every tier this CPU runs
(BNNS_PY_ISA, in a fresh process), against float64: channel and pixel counts that are not multiples
of any vector width, the pixels-side-by-side path (images) and the channel-vector path (a single
pixel with contiguous channels: 1x1 images, fully-connected outputs)."""
import json
import os
import subprocess
import sys

import pytest

import bnns_py

pytestmark = pytest.mark.skipif(bnns_py.backend_info()["backend"] != "portable",
                                reason="vector tiers are the portable library's")

# Runs in a child process (the tier is chosen once per process, when the library loads). The layer
# is a 1x1 convolution (or fully-connected layer) whose weights are the identity, so its input
# gradient is exactly the activation's backward of dy.
CHILD = r"""
import json
import numpy as np
import bnns_py
from bnns_py import ActivationFunction as AF
from bnns_py import reference

rng = np.random.default_rng(11)
worst = {}
def check(name, function, x, y, dy, dx):
    from_output = reference.activation_backward_from_output(y, dy, function)
    from_input = reference.activation_backward(x, dy, function)
    channels = y.shape[1]
    for what, expected, tolerance in (("y", from_output, 2e-6), ("x", from_input, 1e-5)):
        error = float((np.abs(dx - expected) / np.maximum(1.0, np.abs(expected))).max())
        worst[f"{name} vs float64 from {what}"] = error
        assert error <= tolerance * np.sqrt(channels), (name, what, error)

for function in (11, 21):  # Softmax, LogSoftmax
    activation = AF.softmax if function == 11 else AF.log_softmax
    for channels, h, w in [(1, 3, 5), (3, 1, 1), (5, 7, 3), (9, 2, 11), (16, 4, 4), (17, 3, 7), (33, 1, 1),
                           (33, 5, 5), (100, 1, 1), (7, 9, 37)]:
        x = (3 * rng.standard_normal((2, channels, h, w))).astype(np.float32)
        with bnns_py.Conv2d(np.eye(channels, dtype=np.float32)[:, :, None, None], activation=activation) as conv:
            y = conv(x)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            dx = conv.backward(x, y, dy).input
        check(f"conv f{function} {channels}x{h}x{w}", function, x, y, dy, dx)
    for channels in (1, 6, 19, 64):
        x = (3 * rng.standard_normal((3, channels))).astype(np.float32)
        with bnns_py.Linear(np.eye(channels, dtype=np.float32), activation=activation) as fc:
            y = fc(x)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            dx = fc.backward(x, y, dy).input
        check(f"linear f{function} {channels}", function, x, y, dy, dx)
print(json.dumps(dict(isa=bnns_py.backend_info()["isa"], worst=worst)))
"""

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = bnns_py.backend_info().get("isa_available", "").split()


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_softmax_backward_on_each_tier_against_float64(isa):
    if isa not in AVAILABLE:
        pytest.skip(f"this CPU / build does not run the {isa} tier (it runs: {' '.join(AVAILABLE)})")
    env = dict(os.environ, BNNS_PY_ISA=isa)
    child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300,
                           cwd=TESTS_DIR)
    assert child.returncode == 0, child.stderr[-3000:]
    info = json.loads(child.stdout.strip().splitlines()[-1])
    assert info["isa"] == isa
    assert len(info["worst"]) == 2 * 2 * (10 + 4)
