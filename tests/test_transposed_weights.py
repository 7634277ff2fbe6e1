"""The weight gradient of transposed layers whose kernel rows are 4 to 7 undilated taps and that
have enough input channels for whole vectors (engines/transposed_weights.c reads the output
gradient's rows in place, each row's taps broadcast as consecutive values) against the float64
reference: kernel rows of 4, 5, 6 and 7 taps (7: AVX-512 and NEON; the 16-register tiers run it
on the direct engine), strides 1 to 3, padding, output padding (odd sizes), dilation along y
(along x: the direct engine), input channels that fill whole vectors and that leave some over,
fused activations (the image-by-image path), batch 1 to 5, 1 to 3 threads, and each vector tier
in a child process (set and accumulate: test_transposed_phases)."""
import threading

import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF, reference

from conftest import random_array, run_child_on_tier
from test_transposed_phases import case_id, cases_child, run_module_case

# (cin, cout, h, w, k, stride, padding, output_padding, dilation, groups)
CASES = [
    (64, 32, 8, 8, (4, 4), (2, 2), 1, 0, 1, 1),           # the benchmark's 4x4 / 2, fewer channels
    (50, 24, 5, 7, (3, 5), (2, 2), (1, 2), 1, 1, 1),      # rows of 5 taps; 50 = 3 vectors + 2 (AVX-512)
    (56, 20, 4, 6, (2, 6), (3, 3), (0, 2), (2, 1), 1, 1),  # rows of 6, stride 3, output padding
    (48, 16, 5, 5, (4, 7), (1, 2), (1, 3), 0, (2, 1), 1),  # rows of 7, dilation 2 along y
    (64, 24, 6, 5, (4, 4), (1, 1), 1, 0, 1, 1),           # stride 1
    (64, 24, 5, 5, (4, 4), (2, 2), 1, 0, (1, 2), 1),      # dilation along x: the direct engine
]
ACTIVATIONS = [None, AF.rectified_linear, AF.tanh]


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_weight_gradient_matches_reference(case, n_threads, rng, no_filter_leaks):
    index = CASES.index(case)
    run_module_case(rng, case, ACTIVATIONS[index % len(ACTIVATIONS)], n=1 + index % 3, n_threads=n_threads)


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("cout", [4, 12, 40])
def test_channel_chunks_over_image_windows(cout, n_threads, rng, no_filter_leaks):
    """5 images: windows of one image per thread, the threads claiming the output channels 8 at a
    time in each (4: one chunk, the other threads idle; 12 and 40: a last chunk of 4 and shares
    that end inside a slot)."""
    run_module_case(rng, (48, cout, 5, 6, (4, 4), (2, 2), 1, 0, 1, 1), None, n=5, n_threads=n_threads)


def benchmark_like_operands(rng):
    """x (3 images), a 4x4 / 2 layer's weight (64 -> 32 channels) and its output gradient dy."""
    x = random_array(rng, (3, 64, 8, 8))
    weight = random_array(rng, (64, 32, 4, 4), 0.5)
    return x, weight, random_array(rng, (3, 32, 16, 16))


def test_weight_gradient_matches_torch(rng, no_filter_leaks):
    torch = pytest.importorskip("torch")
    x, weight, dy = benchmark_like_operands(rng)
    with bnns_py.ConvTranspose2d(weight, None, stride=2, padding=1) as module:
        grads = module.backward(x, None, dy)
    tw = torch.from_numpy(weight).double().requires_grad_(True)
    torch.nn.functional.conv_transpose2d(torch.from_numpy(x).double(), tw, stride=2, padding=1).backward(
        torch.from_numpy(dy).double())
    np.testing.assert_allclose(grads.weight, tw.grad.numpy(), rtol=1e-4, atol=1e-4 * np.abs(tw.grad.numpy()).max())


def test_concurrent_backward_calls_on_one_module(rng, no_filter_leaks):
    """Two threads call backward on one module at once: one call holds the filter's workspace,
    the other its own, and one of them finds the worker pool busy and runs its parts alone (the
    one-worker run sums every part of the channels, each in its own slot)."""
    x, weight, dy = benchmark_like_operands(rng)
    with bnns_py.ConvTranspose2d(weight, None, stride=2, padding=1) as module:
        expected = reference.conv_transpose2d_backward(x, weight, dy, stride=2, padding=1)[1]
        errors = []

        def train_steps():
            for _ in range(60):
                got = module.backward(x, None, dy).weight
                errors.append(float(np.abs(got - expected).max()))

        threads = [threading.Thread(target=train_steps) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(errors) == 120
    assert max(errors) <= 1e-4 * np.abs(expected).max()


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_each_tier(isa):
    run_child_on_tier(isa, cases_child("test_transposed_weights"))
