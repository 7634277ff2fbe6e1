"""Backward of a standard convolution with an activation takes the whole batch at once: dy * f'(y)
for every image first, then one weight-gradient and one input-gradient pass (client weights
packed once per call, not once per image). Gradients vs the float64 reference for activations
whose derivative reads y, batch 1 and > 1, set and accumulate, 1 and 2 threads, every tier; and
the pool's counters show one call no longer runs image by image."""
import threading

import numpy as np
import pytest

from bnns_py import (ActivationFunction as AF, ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType,
                     FilterParameters, Flags, NDArrayDescriptor, NDArrayFlags, Shape, ffi, reference)

from conftest import assert_close_to_reference, client_layer, random_array, run_child_on_tier
from test_pool import C5, counted

# ReLU6 as BNNS differentiates it: a clamp to [0, 6]
ACTIVATIONS = [AF.rectified_linear, AF.clamp((0.0, 6.0)), AF.clamp((-0.5, 0.5)), AF.sigmoid, AF.softmax]


def gradients_against_reference(rng, activation, batch, n_threads, flag, cin=6, cout=10, size=7):
    """apply_backward of a 3x3 client-pointer layer vs reference.conv2d_backward; with
    ``NDArrayFlags.backprop_accumulate`` the gradients add to random starting values."""
    weight = random_array(rng, (cout, cin, 3, 3), 0.3)
    bias = random_array(rng, (cout,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, size, size, (3, 3), (1, 1), (1,) * 4, (1, 1),
                                   1, weight, bias, activation, n_threads)
    with layer:
        x = random_array(rng, (batch, cin, size, size))
        y = np.empty((batch, cout, oh, ow), np.float32)
        layer.apply(batch, x, y)
        dy = random_array(rng, y.shape)
        offset = 1.0 if flag == NDArrayFlags.backprop_accumulate else 0.0
        start = {"dx": random_array(rng, x.shape), "dw": random_array(rng, weight.shape),
                 "db": random_array(rng, (cout,))}
        dx = NDArrayDescriptor(start["dx"].copy().reshape(-1), layer.input_descriptor.shape, batch_size=batch,
                               flags=flag)
        dw = NDArrayDescriptor(start["dw"].copy().reshape(-1), layer.weights.shape, flags=flag)
        db = NDArrayDescriptor(start["db"].copy(), layer.bias.shape, flags=flag)
        layer.apply_backward(batch, x, y, dy, dx, dw, db)
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, output=y, padding=1, activation=activation)
    assert_close_to_reference(dx.data.reshape(x.shape), dx_ref + offset * start["dx"], cout * 9, "input gradient")
    assert_close_to_reference(dw.data.reshape(weight.shape), dw_ref + offset * start["dw"], batch * oh * ow,
                              "weight gradient")
    assert_close_to_reference(db.data, db_ref + offset * start["db"], batch * oh * ow, "bias gradient")


@pytest.mark.parametrize("flag", [NDArrayFlags.backprop_set, NDArrayFlags.backprop_accumulate],
                         ids=["set", "accumulate"])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=repr)
def test_batch_gradients_with_an_activation_match_reference(activation, batch, n_threads, flag, rng,
                                                            no_filter_leaks):
    gradients_against_reference(rng, activation, batch, n_threads, flag)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_batch_gradients_with_an_activation_on_each_tier(isa):
    run_child_on_tier(isa, """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from bnns_py import ActivationFunction as AF, NDArrayFlags
from test_backward_batch import gradients_against_reference
rng = np.random.default_rng(7)
for activation in (AF.rectified_linear, AF.sigmoid):
    for flag in (NDArrayFlags.backprop_set, NDArrayFlags.backprop_accumulate):
        gradients_against_reference(rng, activation, 3, 2, flag, cin=24, cout=40, size=9)
print("ok")
""")


@pytest.mark.requires_portable_internals
def test_relu_backward_of_a_batch_is_not_run_image_by_image(backend, rng, no_filter_leaks):
    """ResNet's 512-channel 7x7 layer with a ReLU at batch 8 on 2 threads: one weight-gradient
    run, one packing of the weights and one input-gradient run (image by image it was 3 per image)."""
    cin, cout, size, batch = C5["cin"], C5["cout"], C5["size"], C5["batch"]
    weight = (random_array(rng, (cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
    bias = random_array(rng, (cout,))
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, size, size, (3, 3), (1, 1), (1,) * 4, (1, 1), 1,
                            weight, bias, AF.rectified_linear, 2)
    with layer:
        x = random_array(rng, (batch, cin, size, size))
        y = np.empty((batch, cout, size, size), np.float32)
        layer.apply(batch, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = np.empty_like(x), np.empty_like(weight), np.empty_like(bias)
        runs = counted(backend, lambda: layer.apply_backward(batch, x, y, dy, dx, dw, db))
    assert runs["parallel_runs"] + runs["busy_runs"] <= 4, runs
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, output=y, padding=1,
                                                       activation=AF.rectified_linear)
    assert_close_to_reference(dx, dx_ref, cout * 9, "input gradient")
    assert_close_to_reference(dw, dw_ref, batch * size * size, "weight gradient")
    assert_close_to_reference(db, db_ref, batch * size * size, "bias gradient")


class _CountingAllocator:
    """FilterParameters memory callbacks that keep the blocks a filter holds and count allocations."""

    def __init__(self):
        self.blocks, self.allocations = {}, 0

    def alloc(self, memptr, alignment, size):
        block = ffi.new("char[]", size + alignment)
        address = (int(ffi.cast("uintptr_t", block)) + alignment - 1) // alignment * alignment
        memptr[0] = ffi.cast("void *", address)
        self.blocks[address] = block
        self.allocations += 1
        return 0

    def free(self, pointer):
        del self.blocks[int(ffi.cast("uintptr_t", pointer))]


def _relu_layer(weight, bias, size, n_threads, allocator=None):
    cout, cin = weight.shape[:2]
    memory = {} if allocator is None else dict(alloc_memory=allocator.alloc, free_memory=allocator.free)
    parameters = FilterParameters(flags=Flags.use_client_pointer, n_threads=n_threads, **memory)
    return ConvolutionLayer(
        ConvolutionType.standard, NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(size, size, cin)),
        NDArrayDescriptor(weight, Shape.convolution_weights_oihw(3, 3, cin, cout)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(size, size, cout)),
        NDArrayDescriptor(bias, Shape.vector(cout)), ConvolutionPadding.symmetric(1, 1), AF.rectified_linear,
        filter_parameters=parameters)


def _relu_backward_checked(layer, weight, rng, batch, size):
    """One apply + apply_backward of a batch, its gradients checked against the reference."""
    x = random_array(rng, (batch, weight.shape[1], size, size))
    y = np.empty((batch, weight.shape[0], size, size), np.float32)
    layer.apply(batch, x, y)
    dy = random_array(rng, y.shape)
    dx, dw, db = np.empty_like(x), np.empty_like(weight), np.empty(weight.shape[0], np.float32)
    layer.apply_backward(batch, x, y, dy, dx, dw, db)
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, output=y, padding=1,
                                                       activation=AF.rectified_linear)
    assert_close_to_reference(dx, dx_ref, weight[0].size * weight.shape[0], "input gradient")
    assert_close_to_reference(dw, dw_ref, batch * size * size, "weight gradient")
    assert_close_to_reference(db, db_ref, batch * size * size, "bias gradient")


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("n_threads", [1, 2])
def test_activation_backward_keeps_its_dz_buffer(n_threads, backend, rng, no_filter_leaks):
    """dy * f'(y) of a whole batch goes into a buffer the filter keeps: allocated by the first call,
    grown (the old one freed) by a larger batch only, counted in the filter's reserved bytes and
    freed with the filter."""
    cin, cout, size = 6, 10, 7
    item = cout * size * size * 4
    weight, bias = random_array(rng, (cout, cin, 3, 3), 0.3), random_array(rng, (cout,))
    allocator = _CountingAllocator()
    layer = _relu_layer(weight, bias, size, n_threads, allocator)
    with layer:
        def reserved():
            return backend.lib.bnns_portable_filter_reserved_bytes(layer.bnns_filter)

        made = reserved()
        _relu_backward_checked(layer, weight, rng, 3, size)
        first = reserved()
        assert first >= made + 3 * item
        held = len(allocator.blocks)
        for batch in (3, 2, 1):
            calls_before = allocator.allocations
            _relu_backward_checked(layer, weight, rng, batch, size)
            assert allocator.allocations == calls_before, f"batch {batch} allocated"
            assert reserved() == first and len(allocator.blocks) == held
        calls_before = allocator.allocations
        _relu_backward_checked(layer, weight, rng, 5, size)
        assert allocator.allocations == calls_before + 1
        assert reserved() == first + 2 * item and len(allocator.blocks) == held
    assert allocator.blocks == {}


@pytest.mark.parametrize("n_threads", [1, 2])
def test_concurrent_activation_backward_on_one_layer(n_threads, rng, no_filter_leaks):
    """Threads differentiating one layer through its ReLU at once, at different batch sizes: the
    call holding the filter's workspace uses the filter's dz buffer, the others their own."""
    cin, cout, size = 32, 32, 14  # calls long enough to overlap
    weight, bias = random_array(rng, (cout, cin, 3, 3), 0.1), random_array(rng, (cout,))
    with _relu_layer(weight, bias, size, n_threads) as layer:
        jobs = []
        for batch in (2, 3, 4):
            x = random_array(rng, (batch, cin, size, size))
            y = np.empty((batch, cout, size, size), np.float32)
            layer.apply(batch, x, y)
            dy = random_array(rng, y.shape)
            jobs.append((x, y, dy, reference.conv2d_backward(x, weight, dy, output=y, padding=1,
                                                             activation=AF.rectified_linear)))
        failures = []
        start = threading.Barrier(len(jobs))

        def work(job):
            x, y, dy, expected = job
            dx, dw, db = np.empty_like(x), np.empty_like(weight), np.empty_like(bias)
            start.wait()
            for _ in range(30):
                layer.apply_backward(x.shape[0], x, y, dy, dx, dw, db)
                for got, want in zip((dx, dw, db), expected):
                    if np.abs(got - want).max() > 1e-3 * max(1.0, np.abs(want).max()):
                        failures.append(x.shape[0])
                        return

        threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


@pytest.mark.parametrize("engine", ["pixels", "rows"])
@pytest.mark.parametrize("groups", [1, 4])
def test_input_gradient_of_client_weights_changed_between_calls(groups, engine, rng, monkeypatch, no_filter_leaks):
    """The direct engine's input gradient packs the client weights at every call (the run's two
    threads each pack a block of input channels when they first need it, or wait for the other
    to finish packing it): weights changed in place between calls are the ones differentiated, for
    every group and block."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", engine)  # read when a filter is made
    cin, cout, size, batch = 512, 128, 7, 4
    weight = random_array(rng, (cout, cin // groups, 3, 3), 0.05)
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, size, size, (3, 3), (1, 1), (1,) * 4, (1, 1), groups,
                            weight, None, AF.identity, 2)
    with layer:
        x = random_array(rng, (batch, cin, size, size))
        dx = np.empty_like(x)
        for call in range(3):
            weight[...] = random_array(rng, weight.shape, 0.05)
            dy = random_array(rng, (batch, cout, size, size))
            layer.apply_backward(batch, x, None, dy, dx)
            dx_ref, _, _ = reference.conv2d_backward(x, weight, dy, padding=1, groups=groups)
            assert_close_to_reference(dx, dx_ref, cout // groups * 9, f"input gradient, call {call}")
