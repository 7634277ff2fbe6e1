"""The benchmark's timing helpers (bnns_py/bench.py): what they return, that they free their
filters and threads, and that a failure in a helper thread reaches the caller instead of hanging."""
import threading

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
