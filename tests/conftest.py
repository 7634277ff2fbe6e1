"""Shared fixtures: the backend under test, seeded random data, optional PyTorch."""
import gc
import os
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest

import bnns_py


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "requires_portable_internals: the test reads the portable library's own API (bnns_portable_*, "
        "filter_engine, live filter counts, engine overrides); it skips on Accelerate, including the Linux "
        "Accelerate-mode stage (.ci/accelerate_mode.sh)")
    config.addinivalue_line(
        "markers", "requires_image_strides: the test checks that strided image views reach BNNS in place; it skips "
        "where the backend's image strides are unverified (Accelerate: strided views are copied there)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_portable_internals") and not bnns_py.get_backend().is_portable:
        pytest.skip(f"needs the portable library's internals; the {bnns_py.get_backend().name} backend has only "
                    "Apple's symbols")
    if item.get_closest_marker("requires_image_strides") and not bnns_py.get_backend().honours_image_strides:
        pytest.skip(f"the {bnns_py.get_backend().name} backend's image strides are unverified: strided views are "
                    "copied to packed arrays")


@pytest.fixture(scope="session")
def backend():
    """The default backend (portable on Linux, Accelerate on macOS)."""
    return bnns_py.get_backend()


@pytest.fixture
def rng(request):
    # A different stream per test, the same in every process (str hashes are salted per process).
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def no_filter_leaks(backend):
    """Fails the test if it leaves filters alive (counted by Python and, if portable, by C).
    The functional API's filter cache is emptied before and after: its filters are meant to outlive
    the call that made them. A full garbage collection (slow with PyTorch loaded) runs only when
    the counts do not balance without one; filters of earlier tests that were still waiting for
    the collector may then be destroyed too, hence "at least as many destroyed"."""
    bnns_py.clear_cache()
    created, destroyed = bnns_py.filter_counts()
    live_c = backend.live_filter_count() if backend.is_portable else None

    def balanced():
        created2, destroyed2 = bnns_py.filter_counts()
        c_ok = live_c is None or backend.live_filter_count() <= live_c
        return created2 - created <= destroyed2 - destroyed and c_ok

    yield
    bnns_py.clear_cache()
    if not balanced():
        gc.collect()
        assert balanced(), "filters created in this test were not destroyed"


@pytest.fixture
def fresh_cache():
    """The functional API's filter cache emptied before and after the test, its size restored."""
    bnns_py.clear_cache()
    size = bnns_py.cache_size()
    yield
    bnns_py.set_cache_size(size)
    bnns_py.clear_cache()


def random_array(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


class CountingAllocator:
    """BNNSFilterParameters' alloc_memory / free_memory as cffi callbacks over Python-owned blocks:
    calls counted in ``calls``, live blocks in ``blocks``, the alignment checked; allocations fail
    (ENOMEM) while ``fail`` is set. Blocks start zeroed, or with every byte ``fill`` (0xFF: float
    NaNs, so that a read of memory the library did not write shows in its results)."""

    def __init__(self, fill=None):
        from bnns_py import ffi
        self.calls, self.blocks, self.fail = {"alloc": 0, "free": 0}, {}, False

        @ffi.callback("int(void **, size_t, size_t)")
        def alloc(memptr, alignment, size):
            if self.fail:
                return 12
            self.calls["alloc"] += 1
            assert alignment & (alignment - 1) == 0 and alignment >= ffi.sizeof("void *")
            block = ffi.new("char[]", size + alignment)
            if fill is not None:
                ffi.memmove(block, bytes([fill]) * (size + alignment), size + alignment)
            address = (int(ffi.cast("uintptr_t", block)) + alignment - 1) // alignment * alignment
            memptr[0] = ffi.cast("void *", address)
            self.blocks[address] = block
            return 0

        @ffi.callback("void(void *)")
        def free(ptr):
            self.calls["free"] += 1
            del self.blocks[int(ffi.cast("uintptr_t", ptr))]

        self.alloc, self.free = alloc, free

    def balanced(self):
        return self.calls["alloc"] == self.calls["free"] and not self.blocks


def run_child_on_tier(isa, child):
    """Run the Python source ``child`` in a fresh process on vector tier ``isa`` (BNNS_PY_ISA; the tier
    is chosen once per process, when the library loads), no engine forced, the tests directory its
    working directory and sys.argv[1]; skip when this CPU / build does not run the tier. Asserts
    that it succeeds and prints "ok"."""
    if isa not in bnns_py.backend_info().get("isa_available", "").split():
        pytest.skip(f"this CPU / build does not run the {isa} tier")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, BNNS_PY_ISA=isa)
    env.pop("BNNS_PY_PORTABLE_ENGINE", None)
    done = subprocess.run([sys.executable, "-c", child, tests_dir], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tests_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def assert_close_to_reference(actual, expected, reduction_size, what=""):
    """float32 result vs float64 reference: error bound grows with the summed terms."""
    expected = np.asarray(expected, dtype=np.float64)
    tolerance = 1e-5 * np.sqrt(max(reduction_size, 1)) * max(1.0, float(np.abs(expected).max(initial=0)))
    error = np.abs(actual.astype(np.float64) - expected).max(initial=0)
    assert error <= tolerance, f"{what}: max abs error {error:.3g} > tolerance {tolerance:.3g}"


def client_layer(kind, cin, cout, h, w, k, stride, pad, dil, groups, weight, bias, activation, n_threads,
                 flags=None, input_strides=(0, 0, 0), allocator=None):
    """A client-pointer (or ``flags``) layer and its output (height, width); weight in BNNS OIHW
    memory order, k / stride / dil as (h, w), pad as (left, right, top, bottom), input_strides
    the input image's BNNS strides (x, row, channel; zeros: packed), allocator a CountingAllocator
    for the filter's memory (None: the library's own)."""
    from bnns_py import (ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType, FilterParameters, Flags,
                         NDArrayDescriptor, Shape)
    kh, kw = k
    (pl, pr, pt, pb) = pad
    if kind is ConvolutionType.standard:
        oh = (h + pt + pb - dil[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + pl + pr - dil[1] * (kw - 1) - 1) // stride[1] + 1
    else:
        oh = (h - 1) * stride[0] - pt - pb + dil[0] * (kh - 1) + 1
        ow = (w - 1) * stride[1] - pl - pr + dil[1] * (kw - 1) + 1
    memory = {} if allocator is None else dict(alloc_memory=allocator.alloc, free_memory=allocator.free)
    parameters = FilterParameters(flags=Flags.use_client_pointer if flags is None else flags, n_threads=n_threads,
                                  **memory)
    layer = ConvolutionLayer(
        kind,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(w, h, cin, input_strides)),
        NDArrayDescriptor(weight, Shape.convolution_weights_oihw(kw, kh, cin // groups, cout)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(ow, oh, cout)),
        None if bias is None else NDArrayDescriptor(bias, Shape.vector(cout)),
        ConvolutionPadding.asymmetric(pl, pr, pt, pb), activation, groups, (stride[1], stride[0]),
        (dil[1], dil[0]), parameters)
    return layer, (oh, ow)


def row_gap_strides(h, w, row_gap):
    """The BNNS input strides (x, row, channel) of h x w images whose rows lie row_gap floats further
    apart than their width (0: packed)."""
    row = w + row_gap
    return (1, row, row * h) if row_gap else (0, 0, 0)


def input_batch(layer, array, n, **kwargs):
    """``array`` (n images laid out by the layer's input strides) as the layer's input descriptor."""
    from bnns_py import NDArrayDescriptor
    return NDArrayDescriptor(array.reshape(-1), layer.input_descriptor.shape, batch_size=n, **kwargs)


def standard_case_layer(rng, case, activation, n_threads):
    """For ``case`` (batch, cin, cout, h, w, k, stride, pad, dilation, groups): a random input, OIHW
    weights and bias, and the client-pointer standard layer over them. Returns x, weight, bias,
    layer, (oh, ow)."""
    from bnns_py import ConvolutionType
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin // groups) + k, 0.3)
    bias = random_array(rng, (cout,))
    layer, out_hw = client_layer(ConvolutionType.standard, cin, cout, h, w, k, stride, pad, dil, groups, weight, bias,
                                 activation, n_threads)
    return x, weight, bias, layer, out_hw


def transposed_case_layer(rng, case, activation, n_threads):
    """As standard_case_layer for a transposed layer; the weights returned are PyTorch's
    (cin, cout / groups, kh, kw), the layer's their BNNS layout."""
    from bnns_py import ConvolutionType
    from bnns_py.functional import transposed_weight_to_bnns
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x = random_array(rng, (n, cin, h, w))
    torch_weight = random_array(rng, (cin, cout // groups) + k, 0.3)
    bias = random_array(rng, (cout,))
    layer, out_hw = client_layer(ConvolutionType.transposed, cin, cout, h, w, k, stride, pad, dil, groups,
                                 transposed_weight_to_bnns(torch_weight, groups), bias, activation, n_threads)
    return x, torch_weight, bias, layer, out_hw


def backward_into_nan(layer, n, x, y, dy, dw_shape, db_shape):
    """The layer's apply_backward into NaN-filled dx, dw and db (so that a value not written shows).
    Returns dx, dw, db."""
    dx = np.full(x.shape, np.nan, np.float32)
    dw = np.full(dw_shape, np.nan, np.float32)
    db = np.full(db_shape, np.nan, np.float32)
    layer.apply_backward(n, x, y, dy, dx, dw, db)
    return dx, dw, db


def backward_mismatches_in_two_threads(backwards, jobs, expected, calls, rtol):
    """Threads 0 and 1 call ``backwards[i](*jobs[i])`` ``calls`` times each, at once; the threads
    whose gradients differ from ``expected[i]`` (None where none is computed) by more than ``rtol``
    of the largest value (of 1 at least)."""
    failures = []
    start = threading.Barrier(2)

    def work(i):
        start.wait()
        for _ in range(calls):
            for got, want in zip(backwards[i](*jobs[i]), expected[i]):
                if (got is None) != (want is None) or (
                        want is not None and np.abs(got - want).max() > rtol * max(1.0, np.abs(want).max())):
                    failures.append(i)
                    return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def misaligned_copy(a):
    """A copy of float32 ``a`` one byte off float alignment, with ``a``'s strides."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    copy = raw[1:].view(np.float32).reshape(a.shape)
    copy[...] = a
    assert not copy.flags.aligned and copy.strides == a.strides
    return copy
