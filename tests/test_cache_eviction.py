"""The functional API's filter cache evicting (clear_cache, set_cache_size, least recently used)
while other threads are inside cached calls: eviction closes the filter, which is destroyed when
the call in flight returns, never under it; a call that finds its filter closed before it starts
runs on a new one. Run in a subprocess, as a use after free would kill the interpreter."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import bnns_py
    from bnns_py import functional, reference

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 96, 48, 48)).astype(np.float32)
    weight = (rng.standard_normal((96, 96, 3, 3)) / 30).astype(np.float32)
    expected = reference.conv2d(x, weight, padding=1)
    other = rng.standard_normal((4, 96, 3, 3)).astype(np.float32)

    def evict(how):
        if how == "clear":
            bnns_py.clear_cache()
        elif how == "size 0":
            bnns_py.set_cache_size(0)
        else:  # least recently used: a one-filter cache, and another geometry's call
            bnns_py.set_cache_size(1)
            bnns_py.conv2d(x[:, :, :8, :8], other, padding=1)

    # One long cached call on a worker; the main thread evicts its filter while it runs.
    in_flight = 0
    for repetition in range(6):
        how = ("clear", "size 0", "least recently used")[repetition % 3]
        bnns_py.set_cache_size(16)
        bnns_py.clear_cache()
        created, destroyed = bnns_py.filter_counts()
        results = []
        worker = threading.Thread(target=lambda: results.append(bnns_py.conv2d(x, weight, padding=1)))
        worker.start()
        while not functional._Cache.entries and worker.is_alive():
            time.sleep(0.0002)
        entry = next(iter(functional._Cache.entries.values()), None)
        while entry is not None and not entry.layer._calls and worker.is_alive():
            time.sleep(0.0002)  # until the worker is inside the C call
        evict(how)
        if entry is not None:
            assert entry.layer.closed, f"{how}: the evicted filter was not closed"
            in_flight += bool(entry.layer._calls)
        worker.join()
        np.testing.assert_allclose(results[0], expected, rtol=1e-4, atol=1e-4, err_msg=how)
        bnns_py.set_cache_size(16)
        bnns_py.clear_cache()
        # one filter made for the worker's call (and one for the other geometry), each destroyed
        # exactly once, without a garbage collection
        created2, destroyed2 = bnns_py.filter_counts()
        made = 2 if how == "least recently used" else 1
        assert created2 - created == destroyed2 - destroyed == made, (how, created2 - created, destroyed2 - destroyed)

    # Short calls (the fast path and the checked path) on three threads while the main thread
    # evicts: an eviction lands anywhere in a call, and no caller sees LayerClosedError.
    small_x = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    small_w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    small_expected = reference.conv2d(small_x, small_w, padding=1)
    rows, lin_w = rng.standard_normal((3, 40)).astype(np.float32), rng.standard_normal((20, 40)).astype(np.float32)
    lin_expected = reference.linear(rows, lin_w)
    stop, errors, calls = threading.Event(), [], [0]
    sys.setswitchinterval(1e-6)  # threads switch inside the Python part of a call too, not only at C calls

    def hammer():
        try:
            while not stop.is_set():
                y = bnns_py.conv2d(small_x, small_w, padding=1)
                np.testing.assert_allclose(y, small_expected, rtol=1e-4, atol=1e-4)
                np.testing.assert_allclose(bnns_py.linear(rows, lin_w), lin_expected, rtol=1e-4, atol=1e-4)
                calls[0] += 1
        except BaseException as error:
            errors.append(error)

    created, destroyed = bnns_py.filter_counts()
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(300):
        bnns_py.clear_cache() if i % 2 else bnns_py.set_cache_size(i % 3)
        bnns_py.set_cache_size(16)
        time.sleep(0.0005)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors
    bnns_py.clear_cache()
    created2, destroyed2 = bnns_py.filter_counts()
    assert created2 - created == destroyed2 - destroyed, (created2 - created, destroyed2 - destroyed)
    print("in_flight", in_flight, "calls", calls[0])
""")


def test_evicting_cached_filters_under_running_calls_in_a_subprocess():
    # started in the tests folder: from the checkout's root, "python -c" would import the source
    # tree's bnns_py, which holds no built library
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stderr[-3000:]
    counts = result.stdout.split()
    in_flight, calls = int(counts[counts.index("in_flight") + 1]), int(counts[counts.index("calls") + 1])
    assert in_flight >= 1, "no eviction landed while a call was running: the test proved nothing"
    assert calls >= 1, "the threads made no call while the cache was evicted"
