"""benchmarks/bench_networks.py's bnns-py layers: every layer, the FC layers included, runs with
the thread count being measured (counted by the worker pool), and computes the layer it names."""
import importlib.util
import os
import sys

import numpy as np
import pytest

from bnns_py import reference

from conftest import assert_close_to_reference

_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if not os.path.exists(os.path.join(_DIR, "bench_networks.py")):  # an installed package without the source tree
    pytest.skip("benchmarks/ is not next to tests/", allow_module_level=True)

pytestmark = pytest.mark.requires_portable_internals


@pytest.fixture(scope="module")
def bench(monkeypatch_module):
    # the script reads its arguments when imported, and re-executes itself unless these are set
    monkeypatch_module.setattr(sys, "argv", ["bench_networks.py", "--no-torch", "--no-onnx"])
    monkeypatch_module.setenv("MALLOC_MMAP_THRESHOLD_", os.environ.get("MALLOC_MMAP_THRESHOLD_", "33554432"))
    monkeypatch_module.syspath_prepend(_DIR)
    spec = importlib.util.spec_from_file_location("bench_networks_under_test", os.path.join(_DIR, "bench_networks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def layer_named(bench, network, name):
    return next(layer for layer in bench.NETWORKS[network] if layer[0] == name)


def expected_output(layer, x, w, b):
    name, kind, cin, cout, size, k, stride, groups, act = layer
    y = x @ w.T + b if kind == "fc" else reference.conv2d(x, w, b, stride=stride, padding=k // 2, groups=groups)
    return {None: y, "relu": np.maximum(y, 0), "relu6": np.clip(y, 0, 6)}[act]


@pytest.mark.parametrize("network, name", [("resnet18", "fc"), ("mobilenet_v2", "classifier"),
                                           ("resnet18", "layer4.0.downsample"), ("mobilenet_v2", "features.18")])
@pytest.mark.parametrize("threads", [1, 2])
def test_layers_run_with_the_measured_thread_count(bench, backend, network, name, threads, no_filter_leaks):
    layer = layer_named(bench, network, name)
    x, w, b, out = bench.layer_arrays(layer, 8, np.random.default_rng(0))
    module, call = bench.bnns_layer(layer, x, w, b, out, threads)
    try:
        before = backend.pool_counters()
        call()
        after = backend.pool_counters()
    finally:
        module.close()
    fan_in = layer[2] // layer[7] * layer[5] ** 2
    assert_close_to_reference(out, expected_output(layer, x, w, b), fan_in, name)
    runs, used = (after[k] - before[k] for k in ("parallel_runs", "threads_used"))
    if threads == 1:
        assert runs == 0, f"{name}: a 1-thread layer woke the pool"
    else:
        assert runs >= 1 and used == 2 * runs, f"{name}: {runs} runs on {used} threads"


@pytest.mark.parametrize("weights", ["client", "copied"])
@pytest.mark.parametrize("network, name", [("resnet18", "fc"), ("resnet18", "layer4.1.conv2"),
                                           ("mobilenet_v2", "features.2.dw")])
def test_weights_option_chooses_how_the_modules_hold_their_weights(bench, monkeypatch, network, name, weights,
                                                                   no_filter_leaks):
    monkeypatch.setattr(bench.ARGS, "weights", weights)
    layer = layer_named(bench, network, name)
    x, w, b, out = bench.layer_arrays(layer, 1, np.random.default_rng(1))
    module, call = bench.bnns_layer(layer, x, w, b, out, 1)
    with module:
        call()
        assert module.copy_weights == (weights == "copied")
        assert (module.weight is w) == (weights == "client")
    fan_in = layer[2] // layer[7] * layer[5] ** 2
    assert_close_to_reference(out, expected_output(layer, x, w, b), fan_in, name)
