"""Reliability: a create/apply/destroy soak, the GIL released during C calls, one layer shared by
threads, and filters destroyed at interpreter exit."""
import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import bnns_py
from bnns_py import (ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType, FilterParameters, Flags,
                     NDArrayDescriptor, Shape, reference)

from conftest import assert_close_to_reference, random_array


def _rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _tiny_layer(weights, bias, flags=Flags.use_client_pointer):
    return ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 8)),
        NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 8, 8)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 8)),
        NDArrayDescriptor(bias, Shape.vector(8)), ConvolutionPadding.symmetric(1, 1),
        filter_parameters=FilterParameters(flags=flags, n_threads=1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
def test_soak_100k_create_apply_destroy(backend, rng):
    weights, bias = random_array(rng, (8, 8, 3, 3)), random_array(rng, (8,))
    x = random_array(rng, (1, 8, 8, 8))
    out = np.empty_like(x)
    expected = reference.conv2d(x, weights, bias, padding=1)
    gc.collect()
    created0, destroyed0 = bnns_py.filter_counts()
    live0 = backend.live_filter_count() if backend.is_portable else None

    def cycles(count):
        for i in range(count):
            layer = _tiny_layer(weights, bias, Flags.use_client_pointer if i % 2 else Flags.none)
            layer.apply(1, x, out)
            if i % 3 == 0:
                layer.close()
            elif i % 3 == 1:
                with layer:
                    pass
            # else: dropped, destroyed by reference counting

    cycles(5_000)  # warm-up: allocator pools, cffi caches
    gc.collect()
    rss_before = _rss_bytes()
    cycles(95_000)
    gc.collect()
    growth = _rss_bytes() - rss_before
    created, destroyed = bnns_py.filter_counts()
    assert created - created0 == destroyed - destroyed0 == 100_000
    if live0 is not None:
        assert backend.live_filter_count() == live0
    assert_close_to_reference(out, expected, 72)
    print(f"soak: 100000 cycles, RSS growth after warm-up {growth / 2 ** 20:.2f} MiB")
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        return  # AddressSanitizer's quarantine holds freed memory: RSS says nothing there
    assert growth < 16 * 2 ** 20, f"RSS grew by {growth / 2 ** 20:.1f} MiB over 95k cycles"


def test_gil_is_released_during_c_calls(rng, no_filter_leaks):
    """While one thread is inside a long BNNS call, another thread keeps running Python code.

    The switch interval is raised to 1 s for the test, so a thread waiting for the GIL gets it only
    when the holder releases it: the counter advances between the two reads around the call only
    if the C call releases the GIL (a held GIL would keep it still, the call being shorter)."""
    import sys
    x = random_array(rng, (8, 64, 56, 56))
    weights, bias = random_array(rng, (64, 64, 3, 3)), random_array(rng, (64,))
    y = np.empty_like(x)
    with ConvolutionLayer(
            ConvolutionType.standard,
            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(56, 56, 64)),
            NDArrayDescriptor(weights, Shape.convolution_weights_oihw(3, 3, 64, 64)),
            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(56, 56, 64)),
            NDArrayDescriptor(bias, Shape.vector(64)), ConvolutionPadding.symmetric(1, 1),
            filter_parameters=FilterParameters(n_threads=1)) as layer:
        layer.apply(8, x, y)  # warm: the call below runs the C code only
        running, finished = threading.Event(), threading.Event()
        ticks = [0]

        def counter():
            running.set()
            while not finished.is_set():
                ticks[0] += 1

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1.0)
        thread = threading.Thread(target=counter)
        try:
            thread.start()
            running.wait()
            before = ticks[0]
            layer.apply(8, x, y)  # ~1.8 GFLOP: tens of milliseconds in C
            during = ticks[0] - before
        finally:
            finished.set()
            thread.join()
            sys.setswitchinterval(interval)
    assert during > 1000, f"the other thread counted {during} during the call: the GIL was held"


@pytest.mark.parametrize("serialized", [False, True], ids=["concurrent", "serialized"])
def test_one_layer_shared_by_threads_gives_exact_results(serialized, rng, no_filter_leaks):
    # concurrent: the portable backend's own safety; serialized: the per-layer lock used on Accelerate
    weights, bias = random_array(rng, (8, 8, 3, 3)), random_array(rng, (8,))
    inputs = [random_array(rng, (2, 8, 8, 8)) for _ in range(6)]
    with _tiny_layer(weights, bias) as layer:
        assert (layer._call_lock is None) == layer.backend.is_portable
        if serialized:
            layer._call_lock = threading.Lock()
        expected = []
        for x in inputs:
            y = np.empty_like(x)
            layer.apply(2, x, y)
            expected.append(y)
        failures = []

        def work(index):
            out = np.empty_like(inputs[0])
            for _ in range(300):
                layer.apply(2, inputs[index], out)
                if not np.array_equal(out, expected[index]):
                    failures.append(index)
                    return

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


def test_filters_left_open_at_exit_do_not_crash(tmp_path):
    script = (
        "import numpy as np, bnns_py\n"
        "layers = [bnns_py.Conv2d(np.ones((2, 1, 3, 3), np.float32)) for _ in range(3)]\n"
        "kept = [m(np.ones((1, 1, 5, 5), np.float32)) for m in layers]\n"
        "GLOBAL = bnns_py.Conv2d(np.ones((1, 1, 1, 1), np.float32))\n"
        "GLOBAL(np.ones((1, 1, 2, 2), np.float32))\n"
        "print('done')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
    assert done.stderr == ""


CLOSE_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "close_worker.py")


@pytest.mark.parametrize("mode, repetitions", [("close", 6), ("with", 6), ("cache", 3), ("race", 100)])
def test_closing_a_layer_under_a_running_call_waits_for_it(mode, repetitions):
    """close(), leaving a ``with`` block, and the functional cache's eviction while another thread
    is inside apply / the fast path / apply_backward (tests/close_worker.py, in a process of its
    own: before the fix the process died with SIGSEGV). The call returns the right numbers, later
    calls raise LayerClosedError, and every filter is destroyed exactly once."""
    import json
    done = subprocess.run([sys.executable, CLOSE_WORKER, mode, str(repetitions)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    counts = json.loads(done.stdout)
    assert counts["created"] == repetitions
    assert counts["returned"] + counts["closed"] == repetitions
    if mode in ("close", "with"):
        # the layer is big enough that the close comes while the call runs (at least once, even on a busy machine)
        assert counts["closed_in_flight"] >= 1, counts
