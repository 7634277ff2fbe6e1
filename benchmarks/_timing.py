"""Timing helpers shared by the benchmarks of this folder (not part of the package)."""
import math
import os
import time


def calls_per_loop(fn, min_seconds, clock=time.perf_counter):
    """How many calls of ``fn`` take at least ``min_seconds`` of ``clock`` (after one warm-up call)."""
    fn()
    n = 1
    while True:
        t = clock()
        for _ in range(n):
            fn()
        if clock() - t >= min_seconds:
            return n
        n *= 2


def best_times(fns, min_seconds=0.004, loops=15, clock=time.perf_counter):
    """Seconds per call of each function: the fastest of ``loops`` timed loops, the functions'
    loops interleaved (the machine is shared: the least disturbed loop is the best estimate of the
    cost, and interleaving exposes every function to the same disturbances). ``clock`` may be
    time.thread_time for single-threaded code: the CPU time of the calling thread, which does not
    count the time other processes hold the cores."""
    counts = [calls_per_loop(fn, min_seconds, clock) for fn in fns]
    best = [math.inf] * len(fns)
    for _ in range(loops):
        for k, (fn, n) in enumerate(zip(fns, counts)):
            t = clock()
            for _ in range(n):
                fn()
            best[k] = min(best[k], (clock() - t) / n)
    return best


def wait_until_idle(window=0.02, busy_fraction=0.05, max_wait=2.0, cpu_clock=time.process_time,
                    wall_clock=time.perf_counter, sleep=time.sleep):
    """Sleep until this process's threads are idle; return ``(settled, seconds waited)``.

    Idle: over a ``window`` of wall time, the CPU time of all the process's threads
    (``time.process_time``) advances by less than ``busy_fraction`` of one core. The worker
    threads of PyTorch's OpenMP pool and of ONNX Runtime spin for a while after a call (ONNX
    Runtime ~50 ms by default); a library timed while another's threads spin measures the
    contention. Gives up after ``max_wait`` seconds with ``settled`` False.
    """
    start = wall_clock()
    while True:
        cpu_before, wall_before = cpu_clock(), wall_clock()
        sleep(window)
        cpu, wall = cpu_clock() - cpu_before, wall_clock() - wall_before
        if cpu < busy_fraction * wall:
            return True, wall_clock() - start
        if wall_clock() - start >= max_wait:
            return False, wall_clock() - start


class IdleWaits:
    """``wait_until_idle`` before each timed burst, counting the waits that never settled."""

    def __init__(self, **options):
        self.options = options
        self.calls = self.unsettled = 0
        self.seconds = 0.0

    def __call__(self):
        settled, seconds = wait_until_idle(**self.options)
        self.calls += 1
        self.unsettled += not settled
        self.seconds += seconds
        return settled

    def report(self):
        text = f"idle waits: {self.calls}, {self.seconds:.1f} s in all"
        if self.unsettled:
            text += (f"; WARNING: {self.unsettled} never settled (threads still busy after "
                     f"{self.options.get('max_wait', 2.0):g} s): those bursts may measure contention")
        return text


def machine_cpu_seconds(path="/proc/stat"):
    """CPU seconds every process of the machine has used since boot (Linux: the busy ticks of
    /proc/stat's first line, guest time included in user), or None where that file is missing."""
    try:
        with open(path) as handle:
            ticks = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Contention:
    """How much CPU other processes took while a burst ran. A burst is ``contended`` when the rest
    of the machine used more than ``threshold`` of a core over it, beyond ``slack`` seconds (the
    machine's CPU counters count in ticks of 10 ms: short bursts are judged only on heavy use).
    On 2 cores, a 2-thread call whose second thread is taken by another process runs at the
    1-thread speed (work taken one task at a time: the caller does it all), so such a burst
    measures the machine, not the library."""

    def __init__(self, threshold=0.25, slack=0.03, machine_clock=machine_cpu_seconds, cpu_clock=time.process_time,
                 wall_clock=time.perf_counter):
        self.threshold, self.slack = threshold, slack
        self.machine_clock, self.cpu_clock, self.wall_clock = machine_clock, cpu_clock, wall_clock
        self.bursts = self.contended_bursts = 0

    def measure(self, fn):
        """``(fn(), CPU seconds other processes used meanwhile (None: unknown), wall seconds)``."""
        machine, cpu, wall = self.machine_clock(), self.cpu_clock(), self.wall_clock()
        result = fn()
        machine_after, cpu_after, wall_after = self.machine_clock(), self.cpu_clock(), self.wall_clock()
        if machine is None or machine_after is None:
            return result, None, wall_after - wall
        return result, max(0.0, (machine_after - machine) - (cpu_after - cpu)), wall_after - wall

    def contended(self, others, seconds):
        return others is not None and others > self.threshold * seconds + self.slack

    def best_of(self, fn, retries):
        """The least of up to ``1 + retries`` results of ``fn`` (a burst returning seconds per
        call), stopping at the first burst other processes left alone; counts the bursts and the
        contended ones."""
        best = math.inf
        for _ in range(1 + retries):
            result, others, seconds = self.measure(fn)
            best = min(best, result)
            self.bursts += 1
            if not self.contended(others, seconds):
                break
            self.contended_bursts += 1
        return best

    def report(self):
        return (f"timed bursts: {self.bursts}, {self.contended_bursts} with other processes using more than "
                f"{self.threshold:g} of a core (re-measured)")
