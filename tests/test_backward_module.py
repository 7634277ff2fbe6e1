"""Conv2d / ConvTranspose2d backward on repeated calls: after a first, fully checked call, operands
of the same shapes and strides take the module's kept gradient descriptors (one C call). Every call
is compared with the float64 reference: fresh arrays each step, single images, no input gradient,
no y, no bias, views and misaligned arrays (which take the checked path), weights changed in place
between steps, and two threads differentiating one module at once."""
import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF, reference

from conftest import assert_close_to_reference, backward_mismatches_in_two_threads, misaligned_copy, random_array


def _module(rng, transposed, activation, bias=True, cin=3, cout=5):
    weight = random_array(rng, (cin, cout, 3, 3) if transposed else (cout, cin, 3, 3), 0.4)
    b = random_array(rng, (cout,)) if bias else None
    cls = bnns_py.ConvTranspose2d if transposed else bnns_py.Conv2d
    return cls(weight, b, stride=2 if transposed else 1, padding=1, activation=activation), weight, b


def _expected(module, x, y, dy):
    """(dx, dW, db) in float64, dx in x's shape (a single image too)."""
    backward = reference.conv_transpose2d_backward if module.spec.transposed else reference.conv2d_backward
    batched = [a if a is None or a.ndim == 4 else a[np.newaxis] for a in (x, y, dy)]
    dx, dw, db = backward(batched[0], module.weight, batched[2], output=batched[1], bias=module.bias is not None,
                          stride=(2, 2) if module.spec.transposed else (1, 1), padding=(1, 1, 1, 1),
                          activation=module.spec.activation)
    return dx.reshape(x.shape), dw, db


def _check(module, x, y, dy, grads, need_input_gradient=True):
    dx, dw, db = _expected(module, x, y, dy)
    terms = int(np.prod(dy.shape)) // dy.shape[-3]
    if need_input_gradient:
        assert grads.input.shape == x.shape
        assert_close_to_reference(grads.input, dx, module.weight.size, "input gradient")
    else:
        assert grads.input is None
    assert grads.weight.shape == module.weight.shape
    assert_close_to_reference(grads.weight, dw, terms, "weight gradient")
    if module.bias is None:
        assert grads.bias is None
    else:
        assert_close_to_reference(grads.bias, db, terms, "bias gradient")


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("activation", [None, AF.tanh, AF.rectified_linear], ids=["identity", "tanh", "relu"])
@pytest.mark.parametrize("shape", [(3, 3, 6, 7), (3, 6, 7)], ids=["batch", "single"])
def test_repeated_steps_on_fresh_arrays_match_reference(transposed, activation, shape, rng, no_filter_leaks):
    module, _, _ = _module(rng, transposed, activation)
    with module:
        for step in range(4):
            x = random_array(rng, shape)
            y = module.forward(x)
            dy = random_array(rng, y.shape)
            grads = module.backward(x, y, dy)
            _check(module, x, y, dy, grads)
            assert len(module._backward_runners) == 1  # the first call's descriptors, kept
            module.weight -= 0.1 * grads.weight  # an optimizer step, in place: the next step reads it


def test_transposed_module_with_a_weight_copy_on_kept_calls(backend, rng, monkeypatch, no_filter_leaks):
    """A backend that reads weight descriptors without strides gets a BNNS-layout copy of a
    ConvTranspose2d weight, refreshed at each step; its gradient comes back in PyTorch's layout."""
    monkeypatch.setattr(backend, "honours_weight_strides", False)
    module, _, _ = _module(rng, True, AF.tanh)
    with module:
        assert module._bnns_weight is not module.weight
        for _ in range(3):
            x = random_array(rng, (2, 3, 4, 5))
            y = module.forward(x)
            dy = random_array(rng, y.shape)
            grads = module.backward(x, y, dy)
            _check(module, x, y, dy, grads)
            module.weight -= 0.1 * grads.weight


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_kept_calls_without_input_gradient_y_or_bias(transposed, rng, no_filter_leaks):
    module, _, _ = _module(rng, transposed, None, bias=False)
    with module:
        for _ in range(3):
            x = random_array(rng, (2, 3, 5, 6))
            y = module.forward(x)
            dy = random_array(rng, y.shape)
            _check(module, x, y, dy, module.backward(x, None, dy, need_input_gradient=False), False)
            _check(module, x, y, dy, module.backward(x, None, dy))
        assert len(module._backward_runners) == 2


def test_views_and_misaligned_operands_take_the_checked_path(rng, no_filter_leaks):
    module, _, _ = _module(rng, False, AF.sigmoid)
    with module:
        x = random_array(rng, (2, 3, 6, 6))
        y = module.forward(x)
        dy = random_array(rng, y.shape)
        _check(module, x, y, dy, module.backward(x, y, dy))
        # the same shapes, other memory: a transposed view of dy, an x one byte off alignment
        def view(a):
            return np.ascontiguousarray(a.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)

        for _ in range(2):  # a view is never read as packed memory, the second time either
            _check(module, x, y, dy, module.backward(x, view(y), dy))
            _check(module, x, y, dy, module.backward(x, y, view(dy)))
        x_off = misaligned_copy(x)
        for _ in range(2):
            _check(module, x, y, dy, module.backward(x_off, y, dy))
        with pytest.raises(ValueError, match="grad_output"):
            module.backward(x, y, dy[:, :2])


def test_two_threads_differentiate_one_module_at_once(rng, no_filter_leaks):
    """Each thread's gradients are its own operands', whatever the other thread runs meanwhile."""
    module, _, _ = _module(rng, False, AF.tanh, cin=8, cout=16)
    with module:
        jobs = []
        for _ in range(2):
            x = random_array(rng, (2, 8, 9, 9))
            y = module.forward(x)
            jobs.append((x, y, random_array(rng, y.shape)))
        expected = [_expected(module, *job) for job in jobs]
        module.backward(*jobs[0])  # the kept path from here on
        assert backward_mismatches_in_two_threads([module.backward] * 2, jobs, expected, 30, 1e-3) == []


def test_two_threads_differentiate_their_own_2_thread_layers(rng, no_filter_leaks):
    """Two threads differentiate their own 2-thread layers at once (a dense 3x3 on the direct engine's
    passes, a 4x4 / 2 transposed one on its in-place weight gradient): a call that finds the worker
    pool busy runs alone, and each still gets its own operands' gradients."""
    modules, jobs, expected = [], [], []
    for transposed in (False, True):
        cin, cout = (64, 32) if transposed else (40, 48)
        weight = random_array(rng, (cin, cout, 4, 4) if transposed else (cout, cin, 3, 3), 0.3)
        cls = bnns_py.ConvTranspose2d if transposed else bnns_py.Conv2d
        module = cls(weight, None, stride=2 if transposed else 1, padding=1, n_threads=2)
        x = random_array(rng, (3, cin, 10, 10))
        y = module.forward(x)
        dy = random_array(rng, y.shape)
        backward = reference.conv_transpose2d_backward if transposed else reference.conv2d_backward
        dx, dw, _ = backward(x, weight, dy, stride=2 if transposed else 1, padding=1)
        modules.append(module)
        jobs.append((x, None, dy))
        expected.append((dx, dw, None))

    try:
        failures = backward_mismatches_in_two_threads([m.backward for m in modules], jobs, expected, 20, 1e-4)
    finally:
        for module in modules:
            module.close()
    assert failures == []
