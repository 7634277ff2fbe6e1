"""Closes layers while another thread is inside a call on them; run by test_reliability.py in a
separate process, so that a filter destroyed under a running call (a crash) fails the test
instead of killing pytest.

Each repetition starts one call on a worker thread on a layer large enough (256 channels, 56x56,
batch 8: tens of milliseconds or more) that it is still running when the main thread closes the
layer 10 ms later, then checks:
  * the call in flight returns the right numbers (spot-checked against a direct sum), or raises
    LayerClosedError if the close came before it began;
  * a call after the close raises LayerClosedError;
  * every filter is destroyed exactly once (bnns_py.filter_counts() and, on the portable backend,
    the C library's live count).
Prints one line of counts (JSON) on success, e.g. how many closes found a call in flight.

Run:  python tests/close_worker.py MODE REPETITIONS
MODE: close (layer.close()), with (leaving a ``with`` block), cache (bnns_py.conv2d on the worker,
bnns_py.clear_cache() / set_cache_size(0) on the main thread), race (a tiny layer's fast path on
three threads, closed 2 ms after they start).
"""
import json
import os
import sys
import threading
import time

import numpy as np

import bnns_py
from bnns_py import (ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType, FilterParameters, Flags,
                     LayerClosedError, NDArrayDescriptor, Shape)

CHANNELS, SIZE, BATCH = 256, 56, 8
if "asan" in os.environ.get("BNNS_PY_LIBRARY", ""):  # .ci/sanitize.sh: every call is ~30x slower there
    CHANNELS, SIZE, BATCH = 64, 28, 4
OPERATIONS = ("apply", "fast_apply", "apply_backward")


def spot_check(x, weight, bias, y, rng, points=6):
    """y (N, C_out, H, W) against a direct sum at a few points (3x3, padding 1, stride 1)."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for _ in range(points):
        n, o, i, j = (int(rng.integers(s)) for s in y.shape)
        expected = float(np.sum(padded[n, :, i:i + 3, j:j + 3].astype(np.float64) * weight[o]))
        expected += 0.0 if bias is None else float(bias[o])
        if abs(float(y[n, o, i, j]) - expected) > 1e-3 * (1 + abs(expected)):
            raise AssertionError(f"y[{n}, {o}, {i}, {j}] = {y[n, o, i, j]}, expected {expected}")


def make_layer(weight, bias):
    return ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(SIZE, SIZE, CHANNELS)),
        NDArrayDescriptor(weight, Shape.convolution_weights_oihw(3, 3, CHANNELS, CHANNELS)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(SIZE, SIZE, CHANNELS)),
        NDArrayDescriptor(bias, Shape.vector(CHANNELS)), ConvolutionPadding.symmetric(1, 1),
        filter_parameters=FilterParameters(flags=Flags.use_client_pointer))


def run_layers(mode, repetitions, rng, x, weight, bias, counts):
    y = np.empty_like(x)
    for repetition in range(repetitions):
        operation = OPERATIONS[repetition % len(OPERATIONS)]
        layer = make_layer(weight, bias)
        dy = dx = None
        if operation == "fast_apply":
            layer.apply(BATCH, x, y)  # remembered: the worker's call takes the fast path
        if operation == "apply_backward":
            dy = (rng.standard_normal(x.shape) * 0.01).astype(np.float32)
            dx = np.full_like(x, np.nan)
        started, outcome = threading.Event(), []
        y[...] = np.nan

        def work():
            started.set()
            try:
                if operation == "apply_backward":
                    layer.apply_backward(BATCH, x, None, dy, dx)
                else:
                    layer.apply(BATCH, x, y)
                outcome.append("returned")
            except LayerClosedError:
                outcome.append("closed")
            except BaseException as error:  # reported by the main thread
                outcome.append(error)

        worker = threading.Thread(target=work)
        if mode == "with":
            with layer:
                worker.start()
                started.wait()
                time.sleep(0.01)
                in_flight = len(getattr(layer, "_calls", ()))
        else:
            worker.start()
            started.wait()
            time.sleep(0.01)
            in_flight = len(getattr(layer, "_calls", ()))
            layer.close()
        worker.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        counts["closed_in_flight"] += bool(in_flight)
        counts[outcome[0]] += 1
        if outcome[0] == "returned":
            if operation == "apply_backward":
                # dL/dx of a convolution is the convolution of dy with the flipped, transposed weights
                spot_check(dy, np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]), None, dx, rng)
            else:
                spot_check(x, weight, bias, y, rng)
        try:
            layer.apply(BATCH, x, y)
        except LayerClosedError:
            pass
        else:
            raise AssertionError("a call after close() ran")


def run_cache(repetitions, rng, x, weight, bias, counts):
    for repetition in range(repetitions):
        bnns_py.set_cache_size(16)
        started, outcome = threading.Event(), []

        def work():
            started.set()
            try:
                outcome.append(bnns_py.conv2d(x, weight, bias, padding=1))
            except BaseException as error:
                outcome.append(error)

        worker = threading.Thread(target=work)
        worker.start()
        started.wait()
        time.sleep(0.01)
        if repetition % 2:
            bnns_py.clear_cache()
        else:
            bnns_py.set_cache_size(0)
        worker.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        counts["returned"] += 1
        spot_check(x, weight, bias, outcome[0], rng)
        bnns_py.clear_cache()


def run_race(repetitions, rng, counts):
    """Many short calls (the fast path of a tiny layer) on three threads while the main thread
    closes the layer: the close lands anywhere in a call's protocol, not only inside C."""
    weight = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    for _ in range(repetitions):
        layer = ConvolutionLayer(
            ConvolutionType.standard, NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 8)),
            NDArrayDescriptor(weight, Shape.convolution_weights_oihw(3, 3, 8, 8)),
            NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 8)), None,
            ConvolutionPadding.symmetric(1, 1))
        started, failures = threading.Barrier(4), []

        def work():
            x = rng.standard_normal((1, 8, 8, 8)).astype(np.float32)
            y = np.empty_like(x)
            started.wait()
            try:
                while True:
                    layer.apply(1, x, y)
            except LayerClosedError:
                pass
            except BaseException as error:
                failures.append(error)

        workers = [threading.Thread(target=work) for _ in range(3)]
        for worker in workers:
            worker.start()
        started.wait()
        time.sleep(0.002)
        layer.close()
        for worker in workers:
            worker.join()
        if failures:
            raise failures[0]
        counts["closed"] += 1


def main():
    mode, repetitions = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(17)
    x = rng.standard_normal((BATCH, CHANNELS, SIZE, SIZE)).astype(np.float32)
    weight = (rng.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(CHANNELS).astype(np.float32)
    backend = bnns_py.get_backend()
    live = backend.live_filter_count() if backend.is_portable else None
    before = bnns_py.filter_counts()
    counts = {"closed_in_flight": 0, "returned": 0, "closed": 0}
    if mode == "cache":
        run_cache(repetitions, rng, x, weight, bias, counts)
    elif mode == "race":
        run_race(repetitions, rng, counts)
    else:
        run_layers(mode, repetitions, rng, x, weight, bias, counts)
    created, destroyed = (a - b for a, b in zip(bnns_py.filter_counts(), before))
    if created != destroyed:
        raise AssertionError(f"{created} filters created, {destroyed} destroyed")
    if live is not None and backend.live_filter_count() != live:
        raise AssertionError(f"the C library still holds {backend.live_filter_count() - live} filters")
    counts["created"] = created
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
