"""Fully-connected forward passes at batches of 16 and more (engines/fully_connected.c): with client
weights, whole vectors of batch rows run as Y^T = W X^T (the inputs packed per call into panels of
X^T, the pointwise kernel broadcasting W's values read in place), the rest of the rows on the
dot-product tiles or in a zero-padded last vector; with copied weights, on their packed panels.
Against the float64 reference: batches 16, 17, 31, 32, 33, 48, 64, 100 and 256 (one vector, one
and a remainder, a padded last vector, panels of 1 to 3 vectors), input and output counts 1, 15,
17 and 100, with and without bias, no activation, ReLU and Clamp (in the kernel), sigmoid and
GELU (after it), batch rows further apart than their length in the input and the output (the
gaps left alone), and 1 and 2 threads with identical results; the same on every vector tier this
CPU runs (BNNS_PY_ISA, in a fresh process)."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF
from bnns_py import ffi, reference
from bnns_py.functional import make_linear_layer, pointer
from conftest import CountingAllocator, run_child_on_tier

BATCHES = [16, 17, 31, 32, 33, 48, 64, 100, 256]
SIZES = [(1, 15), (15, 17), (17, 100), (100, 1), (100, 100), (17, 15)]  # (in, out)
ACTIVATIONS = [None, AF.rectified_linear, AF.clamp((-0.3, 0.4)), AF.sigmoid, AF.gelu]


def forward(weight, bias, activation, client, threads, x, in_stride, out_stride):
    """A layer's output rows (out_stride apart, NaN between them) for x's rows (in_stride apart)."""
    batch, k = x.shape[0], weight.shape[1]
    layer = make_linear_layer(weight, bias, activation, None, client_pointer=client, n_threads=threads)
    with layer:
        out = np.full((batch, out_stride), np.nan, np.float32)
        status = layer.backend.lib.BNNSFilterApplyBatch(layer.bnns_filter, batch, pointer(x), in_stride,
                                                        pointer(out), out_stride)
        assert status == 0
    assert np.isnan(out[:, weight.shape[0]:]).all()  # nothing written between the rows
    assert x.shape[1] == k
    return out[:, :weight.shape[0]]


def run_batch(batch, seed):
    """Every size and flag combination at one batch; the worst relative errors by case."""
    rng = np.random.default_rng(seed)
    worst = {}
    for index, (k, n) in enumerate(SIZES):
        activation = ACTIVATIONS[(index + batch) % len(ACTIVATIONS)]
        weight = rng.standard_normal((n, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if (index + batch) % 3 else None
        gap = 3 * (index % 2)  # rows further apart than their length, in and out
        rows = rng.standard_normal((batch, k + gap)).astype(np.float32)
        x = rows[:, :k]
        expected = reference.linear(x, weight, bias, activation=activation)
        for client in (True, False):
            outs = [forward(weight, bias, activation, client, threads, x, k + gap, n + gap) for threads in (1, 2)]
            name = f"batch {batch} {k}->{n} bias {bias is not None} {activation!r} client {client}"
            assert np.array_equal(outs[0], outs[1]), name  # no reductions across threads
            error = float(np.abs(outs[0] - expected).max()) / max(1.0, float(np.abs(expected).max()))
            assert error <= 1e-5 * np.sqrt(k), (name, error)
            worst[name] = error
    return worst


@pytest.mark.parametrize("batch", BATCHES)
def test_large_batches_against_float64(batch, no_filter_leaks):
    run_batch(batch, batch)


def test_client_weights_are_read_at_each_call(rng, no_filter_leaks):
    weight = rng.standard_normal((100, 100)).astype(np.float32)
    x = rng.standard_normal((64, 100)).astype(np.float32)
    layer = make_linear_layer(weight, None, None, None, client_pointer=True, n_threads=2)
    with layer:
        for scale in (1.0, -0.5):
            weight[::3] *= scale
            out = np.empty((64, 100), np.float32)
            layer.apply(64, x, out)
            np.testing.assert_allclose(out, reference.linear(x, weight), rtol=1e-5, atol=1e-4)


CHILD = r"""
import os
import bnns_py
from test_fc_large_batches import BATCHES, SIZES, run_batch
assert bnns_py.backend_info()["isa"] == os.environ["BNNS_PY_ISA"]
cases = sum(len(run_batch(batch, batch)) for batch in BATCHES)
assert cases == len(BATCHES) * len(SIZES) * 2, cases
print("ok")
"""


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_large_batches_on_each_tier(isa):
    run_child_on_tier(isa, CHILD)


def _client_filter(backend, weight, allocator):
    from test_fully_connected import fc_params
    n, k = weight.shape
    handle = backend.lib.BNNSFilterCreateLayerFullyConnected(
        fc_params(k, n, weight),
        ffi.new("BNNSFilterParameters *", {"flags": 1, "alloc_memory": allocator.alloc,  # client pointer
                                           "free_memory": allocator.free}))
    assert handle != ffi.NULL
    return handle


@pytest.mark.requires_portable_internals
def test_packed_inputs_buffer_is_kept_by_the_filter(backend, rng, no_filter_leaks):
    """The inputs are packed into a buffer from the filter's allocator (BNNSFilterParameters) that
    the filter keeps: the first call allocates it (counted in the filter's reserved bytes), calls
    of as many rows or fewer allocate nothing, a larger batch grows it (the old one freed), and the
    filter frees it. The AVX-512 tier's path (the other tiers run OpenBLAS at these batches)."""
    if bnns_py.backend_info()["isa"] != "avx512":
        pytest.skip("client weights run as Y^T = W X^T on the AVX-512 tier only")
    allocator = CountingAllocator()
    k, n = 40, 24
    weight = rng.standard_normal((n, k)).astype(np.float32)
    handle = _client_filter(backend, weight, allocator)
    try:
        made = backend.lib.bnns_portable_filter_reserved_bytes(handle)
        for batch, allocations, packed_rows in ((48, 1, 48), (48, 0, 48), (32, 0, 48), (17, 0, 48), (64, 1, 64),
                                                (48, 0, 64)):
            x = rng.standard_normal((batch, k)).astype(np.float32)
            out = np.full((batch, n), np.nan, np.float32)
            before = dict(allocator.calls)
            assert backend.lib.BNNSFilterApplyBatch(handle, batch, ffi.from_buffer(x), k, ffi.from_buffer(out),
                                                    n) == 0
            np.testing.assert_allclose(out, reference.linear(x, weight), rtol=1e-5, atol=1e-5)
            assert allocator.calls["alloc"] - before["alloc"] == allocations, batch
            assert allocator.calls["free"] - before["free"] == (allocations if packed_rows > 48 else 0), batch
            assert backend.lib.bnns_portable_filter_reserved_bytes(handle) == made + packed_rows * k * 4, batch
    finally:
        backend.lib.BNNSFilterDestroy(handle)
    assert allocator.balanced()


@pytest.mark.requires_portable_internals
def test_packed_inputs_without_memory(backend, rng, no_filter_leaks):
    """When the allocator has no memory for the packed inputs the call fails with a reason and
    writes nothing; the next call with memory computes."""
    if bnns_py.backend_info()["isa"] != "avx512":
        pytest.skip("client weights run as Y^T = W X^T on the AVX-512 tier only")
    allocator = CountingAllocator()
    k, n, batch = 40, 24, 48
    weight = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    handle = _client_filter(backend, weight, allocator)
    try:
        out = np.full((batch, n), np.nan, np.float32)
        allocator.fail = True
        assert backend.lib.BNNSFilterApplyBatch(handle, batch, ffi.from_buffer(x), k, ffi.from_buffer(out), n) == -1
        assert "allocating" in backend.last_error()
        assert np.isnan(out).all()
        allocator.fail = False
        assert backend.lib.BNNSFilterApplyBatch(handle, batch, ffi.from_buffer(x), k, ffi.from_buffer(out), n) == 0
        np.testing.assert_allclose(out, reference.linear(x, weight), rtol=1e-5, atol=1e-5)
    finally:
        backend.lib.BNNSFilterDestroy(handle)
    assert allocator.balanced()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_concurrent_calls_on_one_layer(n_threads, rng, no_filter_leaks):
    """Threads applying one layer at once at different batches: the call holding the filter's
    workspace packs its inputs into the filter's buffer, the others into their own; every result
    right."""
    k, n = 300, 200
    weight = rng.standard_normal((n, k)).astype(np.float32) / 20
    bias = rng.standard_normal(n).astype(np.float32)
    inputs = [rng.standard_normal((batch, k)).astype(np.float32) for batch in (16, 33, 64, 100, 256, 48)]
    expected = [reference.linear(x, weight, bias) for x in inputs]
    layer = make_linear_layer(weight, bias, None, None, n_threads=n_threads)

    def work(index):
        for round_ in range(12):
            i = (index + round_) % len(inputs)
            out = np.full((inputs[i].shape[0], n), np.nan, np.float32)
            layer.apply(inputs[i].shape[0], inputs[i], out)
            np.testing.assert_allclose(out, expected[i], rtol=1e-4, atol=1e-4)

    with layer, ThreadPoolExecutor(3) as pool:
        for done in [pool.submit(work, index) for index in range(3)]:
            done.result()  # a failed assertion is raised here
