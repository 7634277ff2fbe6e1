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
