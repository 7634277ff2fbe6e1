"""The portable library's worker pool, through its counters (``Backend.pool_counters``): a filter
made for 2 threads hands each call of a large layer to 2 threads, on every engine that can run it
and inside a sequence of layers of other shapes, as in a network; a 1-thread filter never wakes
the pool. Every result is checked against the float64 reference."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF, ConvolutionType, reference

from conftest import assert_close_to_reference, client_layer, random_array

pytestmark = pytest.mark.requires_portable_internals

# ResNet-18's layer4 3x3 convolution (512 -> 512 channels on 7x7 images) at batch 8: in a network
# run it once took as long with 2 threads as with 1
C5 = dict(cin=512, cout=512, size=7, batch=8)


def make_layer(rng, cin, cout, size, k, stride, n_threads, batch):
    weight = (random_array(rng, (cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    bias = random_array(rng, (cout,))
    pad = k // 2
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, size, size, (k, k), (stride, stride),
                                   (pad,) * 4, (1, 1), 1, weight, bias, AF.rectified_linear, n_threads)
    x = random_array(rng, (batch, cin, size, size))
    out = np.empty((batch, cout, oh, ow), np.float32)
    expected = np.maximum(reference.conv2d(x, weight, bias, stride=stride, padding=pad), 0)
    return layer, x, out, expected, cin * k * k


def counted(backend, call):
    """``call()`` and the change of the pool's counters over it."""
    before = backend.pool_counters()
    call()
    after = backend.pool_counters()
    return {name: after[name] - before[name] for name in after}


@pytest.mark.parametrize("engine", ["auto", "winograd", "pixels", "rows", "im2col"])
def test_large_layer_runs_on_two_threads_on_every_engine(engine, backend, rng, monkeypatch, no_filter_leaks):
    if engine != "auto":  # read when a filter is made
        monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", engine)
    layer, x, out, expected, terms = make_layer(rng, C5["cin"], C5["cout"], C5["size"], 3, 1, 2, C5["batch"])
    with layer:
        if engine != "auto":  # forced rows may tile whole vectors of the rows ("direct row vectors")
            assert engine in backend.filter_engine(layer.bnns_filter).replace("row vectors", "rows")
        for call in range(2):
            out[:] = np.nan
            change = counted(backend, lambda: layer.apply(C5["batch"], x, out))
            assert_close_to_reference(out, expected, terms, f"{engine}, call {call}")
            assert change["parallel_runs"] >= 1, f"{engine}: call {call} ran on one thread"
            assert change["threads_used"] == 2 * change["parallel_runs"]
            assert change["busy_runs"] == 0


def test_one_thread_filter_leaves_the_pool_alone(backend, rng, no_filter_leaks):
    layer, x, out, expected, terms = make_layer(rng, C5["cin"], C5["cout"], C5["size"], 3, 1, 1, C5["batch"])
    with layer:
        change = counted(backend, lambda: layer.apply(C5["batch"], x, out))
        assert_close_to_reference(out, expected, terms)
        del change["polling_yields"]  # workers of earlier tests may still be polling
        assert change == {"parallel_runs": 0, "threads_used": 0, "busy_runs": 0, "taken_over": 0}


def test_every_layer_of_a_sequence_runs_on_two_threads(backend, rng, no_filter_leaks):
    # ResNet-18's last stage at batch 8, in network order: the 3x3 that changes the image size and
    # the channel count, the layer that once ran alone, its 1x1 downsampling, the next 3x3
    shapes = [(256, 512, 14, 3, 2), (512, 512, 7, 3, 1), (256, 512, 14, 1, 2), (512, 512, 7, 3, 1)]
    layers = [make_layer(rng, cin, cout, size, k, stride, 2, C5["batch"]) for cin, cout, size, k, stride in shapes]
    try:
        for sweep in range(2):
            for i, (layer, x, out, expected, terms) in enumerate(layers):
                change = counted(backend, lambda: layer.apply(C5["batch"], x, out))
                assert_close_to_reference(out, expected, terms, f"sweep {sweep}, layer {i}")
                assert change["parallel_runs"] >= 1, f"sweep {sweep}: layer {i} ran on one thread"
                assert change["threads_used"] == 2 * change["parallel_runs"]
                assert change["busy_runs"] == 0
    finally:
        for layer, *_ in layers:
            layer.close()


def test_a_polling_worker_gives_its_core_away(backend, rng, no_filter_leaks):
    # after a run a worker polls for the next one (about 2^14 rounds) before it sleeps, yielding
    # its core every 2^8 rounds: were the caller's core the one the system gave it, the caller runs
    layer, x, out, expected, terms = make_layer(rng, C5["cin"], C5["cout"], C5["size"], 3, 1, 2, 2)
    with layer:
        def call_then_wait():
            layer.apply(2, x, out)
            time.sleep(0.05)  # the worker polls, then sleeps
        change = counted(backend, call_then_wait)
    assert_close_to_reference(out, expected, terms)
    assert change["parallel_runs"] >= 1, change
    assert change["polling_yields"] >= 1, change


def module_and_operands(rng, kind, n_threads):
    """A module of ``kind`` made for ``n_threads`` threads, large enough to be spread, and its
    forward operand with the reference output."""
    if kind == "Linear":
        weight, x = random_array(rng, (1000, 512), 0.05), random_array(rng, (64, 512))
        return bnns_py.Linear(weight, n_threads=n_threads), x, x @ weight.T, 512
    cls = bnns_py.ConvTranspose2d if kind == "ConvTranspose2d" else bnns_py.Conv2d
    weight, x = random_array(rng, (256, 256, 3, 3), 0.02), random_array(rng, (2, 256, 14, 14))
    conv = reference.conv_transpose2d if cls is bnns_py.ConvTranspose2d else reference.conv2d
    return cls(weight, padding=1, n_threads=n_threads), x, conv(x, weight, padding=1), 256 * 9


@pytest.mark.parametrize("kind", ["Conv2d", "ConvTranspose2d", "Linear"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_module_runs_its_calls_on_its_thread_count(kind, n_threads, backend, rng, no_filter_leaks):
    module, x, expected, terms = module_and_operands(rng, kind, n_threads)
    with module:
        y = module(x)  # the first call also makes the filter
        change = counted(backend, lambda: module(x, out=y))
        assert_close_to_reference(y, expected, terms, kind)
        backward = counted(backend, lambda: module.backward(x, y, np.ones_like(y)))
    for name, counts in (("forward", change), ("backward", backward)):
        if n_threads == 1:
            assert counts["parallel_runs"] == 0, f"{kind} {name}: a 1-thread module woke the pool"
        else:
            assert counts["parallel_runs"] >= 1, f"{kind} {name} ran on one thread"
            assert counts["threads_used"] == 2 * counts["parallel_runs"], counts


# MobileNetV2's 1x1 expansion at 28x28 (about 100 us on one thread): small enough that the pool
# times it alone and spread now and then (bp_parallel_run_measured: 4 calls each way of every 256)
SMALL_POINTWISE = dict(cin=32, cout=192, size=28, k=1, stride=1, batch=1)
PROBE_PERIOD, PROBES = 256, 4


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
def test_small_layer_is_the_same_on_any_thread_count_and_either_way_of_running(n_threads, backend, rng,
                                                                              no_filter_leaks):
    one = make_layer(np.random.default_rng(5), **{**SMALL_POINTWISE, "n_threads": 1})
    layer, x, out, expected, terms = make_layer(np.random.default_rng(5), **{**SMALL_POINTWISE, "n_threads": n_threads})
    with one[0], layer:
        measured = "pointwise" in backend.filter_engine(layer.bnns_filter)  # not with another engine forced
        one[0].apply(1, one[1], one[2])
        assert_close_to_reference(one[2], expected, terms)
        before = backend.pool_counters()
        for call in range(PROBE_PERIOD):  # every call of a period: probes of both ways, then the faster
            out[:] = np.nan
            layer.apply(1, x, out)
            np.testing.assert_array_equal(out, one[2], f"{n_threads} threads, call {call}")
        after = backend.pool_counters()
    spread = after["parallel_runs"] - before["parallel_runs"]
    if n_threads == 1:
        assert spread == 0
    elif measured:  # the probes of a period: PROBES calls on the caller alone, PROBES spread
        assert PROBES <= spread <= PROBE_PERIOD - PROBES, spread


def test_concurrent_callers_share_the_pool_and_stay_right(backend, rng, no_filter_leaks):
    # one caller holds the pool at a time; another runs its work alone, and both results are right
    made = [make_layer(rng, 64, 64, 28, 3, 1, 2, 2) for _ in range(2)]
    errors = []

    def work(layer, x, out, expected, terms):
        try:
            for _ in range(20):
                out[:] = np.nan
                layer.apply(2, x, out)
                assert_close_to_reference(out, expected, terms)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    before = backend.pool_counters()
    try:
        threads = [threading.Thread(target=work, args=m) for m in made]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for layer, *_ in made:
            layer.close()
    after = backend.pool_counters()
    assert not errors, errors
    runs = after["parallel_runs"] - before["parallel_runs"] + after["busy_runs"] - before["busy_runs"]
    assert runs >= 40  # every call ran: on the pool or, while the other caller held it, alone


UNLOAD_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import bnns_py
    from bnns_py import ActivationFunction as AF, ConvolutionType, reference
    from bnns_py._ffi import ffi
    from bnns_py.backend import get_backend
    from conftest import assert_close_to_reference, client_layer

    # a stem-like layer (7x7, stride 2, 3 -> 16 channels on an odd-sized image) on 2 threads
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((16, 3, 7, 7)) / 12).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal((1, 3, 61, 61)).astype(np.float32)
    outs, layers = [], []
    for n_threads in (2, 1):
        layer, (oh, ow) = client_layer(ConvolutionType.standard, 3, 16, 61, 61, (7, 7), (2, 2), (3,) * 4, (1, 1), 1,
                                       weight, bias, AF.identity, n_threads)
        out = np.full((1, 16, oh, ow), np.nan, np.float32)
        for _ in range(20):
            layer.apply(1, x, out)
        outs.append(out)
        layers.append(layer)
    layers[1].close()
    assert_close_to_reference(outs[0], reference.conv2d(x, weight, bias, stride=2, padding=3), 147)
    assert np.array_equal(outs[0], outs[1])
    backend = get_backend("portable")
    counters = backend.pool_counters()
    assert counters["parallel_runs"] >= 1, counters
    layers[0].apply(1, x, outs[0])  # on 2 threads: the worker polls for the next run
    ffi.dlclose(backend.lib)
    time.sleep(0.05)  # the worker would now poll in unmapped code
    print("ok")
""")


def test_library_stays_loaded_under_polling_workers(backend):
    # Python's exit closes the library while a worker that has just run a share still polls for the
    # next run: closed right after a 2-thread call, the library must stay mapped under it
    # (from the tests directory: `python -c` imports from its working directory first, and the
    # repository root holds the unbuilt source tree, not the installed package)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", UNLOAD_CHILD, tests_dir], capture_output=True, text=True,
                          timeout=300, cwd=tests_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
