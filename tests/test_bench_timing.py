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


class FakeMachine:
    """A burst of ``seconds`` during which this process uses ``own`` cores and the rest of the
    machine ``others`` (CPU clocks in seconds, the machine's in whole 10 ms ticks)."""

    def __init__(self, seconds, own, others):
        self.seconds, self.own, self.others = seconds, own, others
        self.wall = self.cpu = self.machine = 0.0

    def burst(self):
        self.wall += self.seconds
        self.cpu += self.own * self.seconds
        self.machine += (self.own + self.others) * self.seconds
        return self.seconds

    def contention(self, **extra):
        return timing.Contention(machine_clock=lambda: int(self.machine * 100 + 1e-9) / 100,
                                 cpu_clock=lambda: self.cpu, wall_clock=lambda: self.wall, **extra)


@pytest.mark.parametrize("others, contended", [(0.0, False), (0.2, False), (1.0, True), (0.5, True)])
def test_a_burst_is_contended_when_other_processes_take_a_quarter_core(others, contended):
    machine = FakeMachine(0.2, 2.0, others)
    watch = machine.contention()
    result, used, seconds = watch.measure(machine.burst)
    assert (result, seconds) == (0.2, 0.2)
    assert used == pytest.approx(others * 0.2, abs=0.011)  # one tick of rounding
    assert watch.contended(used, seconds) is contended


def test_short_bursts_are_judged_on_heavy_use_only():
    """0.6 of a core over 50 ms is 30 ms of others' time: within the slack (three ticks)."""
    machine = FakeMachine(0.05, 2.0, 0.6)
    watch = machine.contention()
    assert not watch.contended(*watch.measure(machine.burst)[1:])


def test_contended_bursts_are_measured_again_and_the_fastest_kept():
    times = iter([0.3, 0.2, 0.25, 0.1])
    machine = FakeMachine(0.2, 2.0, 1.0)  # always contended: every retry is used
    watch = machine.contention()
    assert watch.best_of(lambda: machine.burst() and next(times), retries=2) == 0.2
    assert (watch.bursts, watch.contended_bursts) == (3, 3)
    machine.others = 0.0  # a quiet burst ends the retries at once
    assert watch.best_of(lambda: machine.burst() and next(times), retries=2) == 0.1
    assert (watch.bursts, watch.contended_bursts) == (4, 3)
    assert "3 with other processes" in watch.report()


def test_without_machine_counters_nothing_is_contended():
    watch = timing.Contention(machine_clock=lambda: None)
    assert watch.measure(lambda: 1.5)[:2] == (1.5, None)
    assert not watch.contended(None, 1.0)
    assert timing.machine_cpu_seconds("/nonexistent/stat") is None
