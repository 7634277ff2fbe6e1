"""Linear backward on repeated calls: after a first, fully checked call, C-contiguous float32 numpy
operands of the same shapes and strides take the module's kept gradient descriptors (one C call).
Every call is compared with the float64 reference: fresh arrays each step, a single row, no input
gradient, no y, no bias, a changed batch size, views and misaligned arrays (which take the checked
path), float64 operands and bad shapes (which it refuses), weights changed in place between steps,
and two threads differentiating one module at once."""
import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF, reference

from conftest import assert_close_to_reference, backward_mismatches_in_two_threads, misaligned_copy, random_array

IN, OUT = 24, 10


def _module(rng, activation=None, bias=True):
    weight = random_array(rng, (OUT, IN), 0.4)
    return bnns_py.Linear(weight, random_array(rng, (OUT,)) if bias else None, activation=activation)


def _check(module, x, y, dy, grads, need_input_gradient=True):
    dx, dw, db = reference.linear_backward(x, module.weight, dy, output=y, bias=module.bias is not None,
                                           activation=module.activation)
    if need_input_gradient:
        assert grads.input.shape == np.shape(x)
        assert_close_to_reference(grads.input, dx, OUT, "input gradient")
    else:
        assert grads.input is None
    assert grads.weight.shape == module.weight.shape and grads.weight.dtype == np.float32
    terms = max(1, int(np.prod(np.shape(dy))) // OUT)
    assert_close_to_reference(grads.weight, dw, terms, "weight gradient")
    if module.bias is None:
        assert grads.bias is None
    else:
        assert_close_to_reference(grads.bias, db, terms, "bias gradient")


def _step(module, rng, shape):
    x = random_array(rng, shape)
    y = module.forward(x)
    dy = random_array(rng, y.shape)
    return x, y, dy


@pytest.mark.parametrize("activation", [None, AF.tanh, AF.rectified_linear], ids=["identity", "tanh", "relu"])
@pytest.mark.parametrize("shape", [(5, IN), (IN,)], ids=["batch", "single"])
def test_repeated_steps_on_fresh_arrays_match_reference(activation, shape, rng, no_filter_leaks):
    with _module(rng, activation) as module:
        for _ in range(4):
            x, y, dy = _step(module, rng, shape)
            grads = module.backward(x, y, dy)
            _check(module, x, y, dy, grads)
            assert len(module._backward_runners) == 1  # the first call's descriptors, kept
            module.weight -= 0.1 * grads.weight  # an optimizer step, in place: the next step reads it


def test_kept_calls_without_input_gradient_y_or_bias(rng, no_filter_leaks):
    with _module(rng, bias=False) as module:
        for _ in range(3):
            x, y, dy = _step(module, rng, (3, IN))
            _check(module, x, y, dy, module.backward(x, None, dy, need_input_gradient=False), False)
            _check(module, x, y, dy, module.backward(x, None, dy))
        assert len(module._backward_runners) == 2


def test_batch_size_change_keeps_a_runner_per_shape(rng, no_filter_leaks):
    with _module(rng, AF.tanh) as module:
        for n in (4, 7, 4, 1, 7):
            x, y, dy = _step(module, rng, (n, IN))
            _check(module, x, y, dy, module.backward(x, y, dy))
        assert len(module._backward_runners) == 3


def test_views_misaligned_and_other_dtypes_take_the_checked_path(rng, no_filter_leaks):
    with _module(rng, AF.sigmoid) as module:
        x, y, dy = _step(module, rng, (6, IN))
        _check(module, x, y, dy, module.backward(x, y, dy))
        for _ in range(2):  # a strided view is never read as packed memory, the second time either
            strided = np.zeros((6, 2 * IN), np.float32)
            strided[:, ::2] = x
            _check(module, x, y, dy, module.backward(strided[:, ::2], y, dy))
            column_major = np.asfortranarray(dy)
            _check(module, x, y, dy, module.backward(x, y, column_major))
        x_off = misaligned_copy(x)
        for _ in range(2):
            _check(module, x, y, dy, module.backward(x_off, y, dy))
        assert len(module._backward_runners) == 1
        with pytest.raises(ValueError, match="grad_output"):
            module.backward(x, y, dy[:, :3])
        with pytest.raises(TypeError, match="float32"):  # another dtype: the checked path refuses it
            module.backward(x.astype(np.float64), y, dy)


def test_closed_module_refuses_kept_calls(rng, no_filter_leaks):
    module = _module(rng)
    x, y, dy = _step(module, rng, (2, IN))
    module.backward(x, y, dy)
    module.close()
    assert module._backward_runners == {}
    with pytest.raises(bnns_py.LayerClosedError):
        module.backward(x, y, dy)


def test_two_threads_differentiate_one_module_at_once(rng, no_filter_leaks):
    """Each thread's gradients are its own operands', whatever the other thread runs meanwhile."""
    with _module(rng, AF.tanh) as module:
        jobs = [_step(module, rng, (8, IN)) for _ in range(2)]
        expected = [reference.linear_backward(x, module.weight, dy, output=y, activation=module.activation)
                    for x, y, dy in jobs]
        module.backward(*jobs[0])  # the kept path from here on
        assert backward_mismatches_in_two_threads([module.backward] * 2, jobs, expected, 50, 1e-4) == []
