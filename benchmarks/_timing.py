"""Timing helpers shared by the benchmarks of this folder (not part of the package)."""
import math
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
