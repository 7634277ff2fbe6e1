"""The activation kernels on every tier this CPU runs (BNNS_PY_ISA, in a fresh process), against
float64:

- the vector Softmax / LogSoftmax backward (kernels/act_softmax.c): channel and pixel counts that are
  not multiples of any vector width, the pixels-side-by-side path (images) and the channel-vector
  path (a single pixel with contiguous channels: 1x1 images, fully-connected outputs);
- the forward map of the elementwise activations on runs of every length around the vector widths
  (BP_VMAP computes the last part-vector of a run as the run's last whole vector, from inputs loaded
  before anything is stored), through the engines' epilogues (im2col, depthwise, dense 3x3)."""
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

# forward: functions that are not idempotent, so a value activated twice would show
FORWARD = [AF.sigmoid, AF.gelu, AF.softplus(1.0, 1.0), AF.elu(1.0), AF.linear(0.5), AF.hard_sigmoid(0.25, 0.5)]
for activation in FORWARD:
    for width in (1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 56, 57):
        x = (3 * rng.standard_normal((1, 3, 5, width))).astype(np.float32)
        y = bnns_py.conv2d(x, np.eye(3, dtype=np.float32)[:, :, None, None], activation=activation)
        expected = reference.apply_activation(x.astype(np.float64), activation.function, activation.alpha,
                                              activation.beta)
        error = float((np.abs(y - expected) / np.maximum(1.0, np.abs(expected))).max())
        worst[f"{activation!r} 1x1 width {width}"] = error
        assert error <= 2e-6, (activation, width, error)
    for name, cin, cout, groups, size in (("depthwise", 8, 8, 8, 13), ("dense", 16, 16, 1, 21)):
        x = rng.standard_normal((2, cin, size, size + 2)).astype(np.float32)
        w = (rng.standard_normal((cout, cin // groups, 3, 3)) / 3).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        y = bnns_py.conv2d(x, w, b, padding=1, groups=groups, activation=activation)
        expected = reference.conv2d(x, w, b, padding=1, groups=groups, activation=activation)
        error = float((np.abs(y - expected) / np.maximum(1.0, np.abs(expected))).max())
        worst[f"{activation!r} {name}"] = error
        assert error <= 1e-5 * np.sqrt(9 * cin / groups), (activation, name, error)
print(json.dumps(dict(isa=bnns_py.backend_info()["isa"], worst=worst)))
"""

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
AVAILABLE = bnns_py.backend_info().get("isa_available", "").split()


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_activation_kernels_on_each_tier_against_float64(isa):
    if isa not in AVAILABLE:
        pytest.skip(f"this CPU / build does not run the {isa} tier (it runs: {' '.join(AVAILABLE)})")
    env = dict(os.environ, BNNS_PY_ISA=isa)
    child = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300,
                           cwd=TESTS_DIR)
    assert child.returncode == 0, child.stderr[-3000:]
    info = json.loads(child.stdout.strip().splitlines()[-1])
    assert info["isa"] == isa
    assert len(info["worst"]) == 2 * 2 * (10 + 4) + 6 * (16 + 2)
