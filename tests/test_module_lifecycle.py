"""Closing a module (or clearing the functional cache) while another thread runs its filter: the
filter is destroyed when that call returns, never under it. Run in a subprocess, as a use after
free would kill the interpreter."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import gc, threading
    import numpy as np
    import bnns_py

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((256, 256, 3, 3)) / 48).astype(np.float32)
    x = rng.standard_normal((2, 256, 56, 56)).astype(np.float32)
    with bnns_py.Conv2d(weight, padding=1) as module:
        expected = module(x)
    lin_weight = rng.standard_normal((4096, 4096)).astype(np.float32)
    lin_x = rng.standard_normal((64, 4096)).astype(np.float32)

    def close_under_running_calls(make, call, use_with):
        module = make()
        first_done, errors, results = threading.Event(), [], []

        def work():
            try:
                while True:
                    results.append(call(module))
                    first_done.set()
            except bnns_py.LayerClosedError:
                pass
            except BaseException as error:
                errors.append(error)
            finally:
                first_done.set()

        thread = threading.Thread(target=work)
        thread.start()
        first_done.wait()
        if use_with:
            with module:
                pass
        else:
            module.close()
        in_flight = module._in_flight > 0
        thread.join()
        assert not errors, errors
        assert module._in_flight == 0 and module.closed
        return in_flight, results

    gc.collect()
    created, destroyed = bnns_py.filter_counts()
    deferred = 0
    for rep in range(2):
        for use_with in (False, True):
            in_flight, results = close_under_running_calls(lambda: bnns_py.Conv2d(weight, padding=1),
                                                           lambda m: m(x), use_with)
            deferred += in_flight
            for y in results:
                np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
            in_flight, _ = close_under_running_calls(lambda: bnns_py.Linear(lin_weight), lambda m: m(lin_x), use_with)
            deferred += in_flight
    # every module's filters destroyed exactly once, with no garbage collection needed
    created2, destroyed2 = bnns_py.filter_counts()
    assert created2 - created == destroyed2 - destroyed == 8, (created2 - created, destroyed2 - destroyed)

    # the functional cache cleared or shrunk while another thread runs a cached filter
    stop, errors = threading.Event(), []
    def run_functional():
        try:
            while not stop.is_set():
                y = bnns_py.conv2d(x, weight, padding=1)
                np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
        except BaseException as error:
            errors.append(error)
    thread = threading.Thread(target=run_functional)
    thread.start()
    for rep in range(6):
        bnns_py.clear_cache() if rep % 2 else bnns_py.set_cache_size(0)
        bnns_py.set_cache_size(16)
    stop.set()
    thread.join()
    assert not errors, errors
    bnns_py.clear_cache()
    gc.collect()
    created3, destroyed3 = bnns_py.filter_counts()
    assert created3 - created2 == destroyed3 - destroyed2
    print("deferred", deferred)
""")


def test_close_waits_for_calls_in_flight_in_a_subprocess():
    # started in the tests folder: from the checkout's root, "python -c" would import the source
    # tree's bnns_py, which holds no built library
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stderr[-3000:]
    deferred = int(result.stdout.split("deferred")[-1])
    assert deferred >= 1, "close() never landed while a call was running: the test proved nothing"
