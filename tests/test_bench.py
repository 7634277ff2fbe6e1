"""The benchmark's timing helpers (bnns_py/bench.py): what they return, that they free their
filters and threads, and that a failure in a helper thread reaches the caller instead of hanging."""
import threading

import numpy as np

import pytest

from bnns_py import bench
from bnns_py.layer import UnaryLayer

SMALL_DENSE = bench.case("small_3x3_16-16_12", 2, 16, 16, 12, 12, 3, pad=1)
TIMING = dict(samples=3, target=0.002, max_total=0.5)


class _FakeClock:
    """``time.perf_counter`` for bench.py that only ``layer.apply`` moves forward, by ``cost`` per
    call on any thread: the helpers' arithmetic is checked exactly, and no test depends on how
    fast the machine is at the moment (timings belong to benchmarks/)."""

    def __init__(self, monkeypatch, cost):
        self.now, self.cost, self.calls = 0.0, cost, 0
        self.lock = threading.Lock()
        real_apply = UnaryLayer.apply

        def apply(layer, *args):
            real_apply(layer, *args)
            with self.lock:
                self.now += self.cost
                self.calls += 1

        monkeypatch.setattr(UnaryLayer, "apply", apply)
        monkeypatch.setattr(bench.time, "perf_counter", self.read)

    def read(self):
        with self.lock:
            return self.now


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_scaling_reports_seconds_per_call(threads, monkeypatch, no_filter_leaks):
    """"one" and "many" are seconds per call, "concurrent" the time of ``threads`` simultaneous
    calls (here the fake clock adds them up: threads * cost), never a burst's or sample's total."""
    cost = 2.0 ** -10  # exact in binary: sums of it are exact
    clock = _FakeClock(monkeypatch, cost)
    threads_before = threading.active_count()
    r = bench.bench_bnns_thread_scaling(SMALL_DENSE, threads, **TIMING)
    assert r == {"one": cost, "many": cost, "concurrent": threads * cost}
    assert clock.calls > 3 * (threads + 2)  # warm-up, estimate, then bursts of several calls per sample
    assert threading.active_count() == threads_before


def test_time_call_reports_the_median_seconds_per_call(monkeypatch, no_filter_leaks):
    cost = 2.0 ** -9
    _FakeClock(monkeypatch, cost)
    assert bench.bench_bnns_forward(SMALL_DENSE, None, 1, **TIMING) == cost


def test_a_failing_concurrent_call_is_raised_not_left_waiting(monkeypatch, no_filter_leaks):
    main = threading.main_thread()
    real_apply = UnaryLayer.apply

    def apply(self, *args):
        if threading.current_thread() is not main:
            raise RuntimeError("helper failed")
        return real_apply(self, *args)

    monkeypatch.setattr(UnaryLayer, "apply", apply)
    threads_before = threading.active_count()
    with pytest.raises(RuntimeError, match="helper failed"):
        bench.bench_bnns_thread_scaling(SMALL_DENSE, 2, **TIMING)
    assert threading.active_count() == threads_before


def test_dense_cases_are_the_groups_1_cases_of_at_least_0_1_gflop():
    names = {c["name"] for c in bench.full_cases() if bench.dense(c)}
    assert "r50_c3_3x3_128-128_28" in names
    assert not any(n.startswith(("dw_", "tiny")) for n in names)


def test_every_case_has_one_category_and_each_category_has_cases():
    by_category = {}
    for c in bench.full_cases():
        by_category.setdefault(bench.category(c), []).append(c["name"])
    assert set(by_category) == set(bench.CATEGORIES)
    assert "dilated_3x3d2_256-256_28" in by_category["dilated"]
    assert set(by_category["depthwise"]) == {"dw_3x3_32_112", "dw_3x3_512_14"}
    assert by_category["tiny"] == ["tiny_3x3_8-8_8"]
    assert "r50_stem_7x7s2_3-64_224" in by_category["dense"]


def test_ratio_summary_geometric_means_per_category_and_cases_below_one():
    dense_a = bench.case("a", 1, 8, 8, 8, 8, 3, pad=1)
    dense_b = bench.case("b", 8, 8, 8, 8, 8, 3, pad=1)
    depthwise = bench.case("dw", 1, 8, 8, 8, 8, 3, pad=1, groups=8)
    transposed = bench.case("t", 1, 8, 8, 8, 8, 4, stride=2, transposed=True)
    r = bench.ratio_summary([dense_a, dense_b, depthwise, transposed], [0.5, 2.0 ** 1.5, 4.0, None])
    assert r["geomean"] == pytest.approx({"dense": 2.0 ** 0.25, "depthwise": 4.0, "all": 2.0 ** (2.5 / 3)})
    assert r["below_1"] == ["a/1"]
    assert r["cases"] == 3
    assert r["worst"] == ("a/1", 0.5)
    assert bench.ratio_summary([dense_a], [None]) == {"geomean": {}, "below_1": [], "cases": 0, "worst": None}


@pytest.mark.parametrize("name", ["dilated_3x3d2_256-256_28", "dw_3x3_32_112", "convT_4x4s2_256-128_16to32"])
def test_the_onnx_runtime_peer_computes_the_case(name):
    """The peer column times the same convolution: its session's output is the float64 reference's."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from bnns_py import reference
    full = next(c for c in bench.full_cases() if c["name"] == name and c["N"] == 1)
    c = dict(full, H=min(full["H"], 12), W=min(full["W"], 10), Cin=min(full["Cin"], 16), Cout=min(full["Cout"], 16))
    if c["groups"] > 1:
        c["groups"] = c["Cin"]
    call, out = bench.onnx_forward(c, 1)
    call()
    x, w, b = bench.arrays(c)
    op = reference.conv_transpose2d if c["transposed"] else reference.conv2d
    expected = op(x, w, b, stride=c["stride"], padding=c["pad"], dilation=c["dil"], groups=c["groups"])
    assert out.shape == expected.shape == (c["N"], c["Cout"]) + bench.out_hw(c)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_without_onnx_runtime_the_peer_is_left_out(monkeypatch):
    monkeypatch.setattr(bench, "_onnx_modules", lambda: None)
    assert bench.onnx_forward(SMALL_DENSE, 1) is None
    assert bench.bench_onnx_forward(SMALL_DENSE, 1, **TIMING) is None


@pytest.mark.parametrize("n_threads", [None, 1])
def test_linear_module_runs_on_the_layer_it_returns(n_threads, no_filter_leaks):
    """bench_fc's module and layer: the module's calls run on the returned layer, made with the
    asked thread count (the default otherwise), and both compute the reference."""
    from bnns_py import reference
    rng = np.random.default_rng(4)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    x = rng.standard_normal((20, 40)).astype(np.float32)
    module, layer = bench.bnns_linear_module(w, b, n_threads=n_threads)
    with module:
        assert layer.filter_parameters.n_threads == (n_threads or 0)
        y = module(x)
        direct = np.empty_like(y)
        layer.apply(20, x, direct)
        assert module._layer() is layer
    assert layer.closed
    np.testing.assert_allclose(y, reference.linear(x, w, b), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(direct, y)
