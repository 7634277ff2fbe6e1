"""The benchmark's timing helpers (bnns_py/bench.py): what they return, that they free their
filters and threads, and that a failure in a helper thread reaches the caller instead of hanging."""
import threading

import pytest

from bnns_py import bench
from bnns_py.layer import UnaryLayer

SMALL_DENSE = bench.case("small_3x3_16-16_12", 2, 16, 16, 12, 12, 3, pad=1)
TIMING = dict(samples=3, target=0.002, max_total=0.5)


def test_thread_scaling_times_one_many_and_concurrent_calls(no_filter_leaks):
    threads_before = threading.active_count()
    r = bench.bench_bnns_thread_scaling(SMALL_DENSE, 2, **TIMING)
    assert sorted(r) == ["concurrent", "many", "one"]
    one_call = bench.bench_bnns_forward(SMALL_DENSE, None, 1, **TIMING)
    for key, seconds in r.items():
        # each is seconds per call (per pair of calls for "concurrent"): within a wide band of
        # one plain 1-thread call, never a per-burst or per-sample total
        assert one_call / 5 < seconds < one_call * 5, (key, seconds, one_call)
    assert threading.active_count() == threads_before


def test_thread_scaling_with_three_threads(no_filter_leaks):
    r = bench.bench_bnns_thread_scaling(SMALL_DENSE, 3, **TIMING)
    assert all(v > 0 for v in r.values())


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
