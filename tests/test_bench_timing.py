"""benchmarks/_timing.py's wait for idle threads, on a fake clock: the arithmetic of "idle", the
cap, and the counts reported (no test depends on how busy the machine is)."""
import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "_timing.py")
if not os.path.exists(_PATH):  # an installed package without the source tree
    pytest.skip("benchmarks/ is not next to tests/", allow_module_level=True)
_spec = importlib.util.spec_from_file_location("bench_timing", _PATH)
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)


class FakeProcess:
    """Wall and CPU clocks moved only by ``sleep``: during the k-th sleep the process's threads
    use ``busy[k]`` cores (the last value repeats)."""

    def __init__(self, busy):
        self.wall = self.cpu = 0.0
        self.busy = list(busy)
        self.sleeps = 0

    def sleep(self, seconds):
        cores = self.busy[min(self.sleeps, len(self.busy) - 1)]
        self.sleeps += 1
        self.wall += seconds
        self.cpu += cores * seconds

    def options(self, **extra):
        return dict(window=0.25, busy_fraction=0.05, cpu_clock=lambda: self.cpu, wall_clock=lambda: self.wall,
                    sleep=self.sleep, **extra)


def test_an_idle_process_settles_after_one_window():
    process = FakeProcess([0.0])
    assert timing.wait_until_idle(**process.options()) == (True, 0.25)


def test_it_waits_while_threads_spin_and_returns_at_the_first_quiet_window():
    process = FakeProcess([2.0, 1.0, 0.5, 0.0])  # two spinning threads winding down
    assert timing.wait_until_idle(**process.options()) == (True, 1.0)
    assert process.sleeps == 4


@pytest.mark.parametrize("cores, settled", [(0.0625, False), (0.03125, True)])
def test_idle_means_less_than_busy_fraction_of_one_core(cores, settled):
    """5 % of one core is the line: 6.25 % is busy (the wait hits its cap), 3.125 % idle."""
    process = FakeProcess([cores])
    assert timing.wait_until_idle(**process.options(max_wait=1.0))[0] is settled


def test_the_wait_is_capped_and_reports_it_never_settled():
    process = FakeProcess([1.0])
    assert timing.wait_until_idle(**process.options(max_wait=1.0)) == (False, 1.0)
    assert process.sleeps == 4


def test_idle_waits_count_the_unsettled_ones():
    process = FakeProcess([0.0, 1.0, 0.0, 1.0])
    waits = timing.IdleWaits(**process.options(max_wait=0.5))
    assert [waits(), waits(), waits()] == [True, True, False]  # 1 window; 2 windows; capped after 2
    assert (waits.calls, waits.unsettled, waits.seconds) == (3, 1, 1.25)
    assert "1 never settled" in waits.report()
