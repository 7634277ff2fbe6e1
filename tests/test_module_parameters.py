"""Assigning a module's ``weight`` or ``bias``: the next calls read the new array (forward and
backward, remembered calls included), the old array is left as it was, the old filters are
destroyed, and bad arrays are refused before anything changes."""
import gc
import re
import threading
import time

import numpy as np
import pytest

import bnns_py
from bnns_py import reference

RNG = np.random.default_rng(7)
TOL = dict(rtol=1e-4, atol=1e-4)


def _random(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


CONV_CASES = {
    "conv2d": (bnns_py.Conv2d, (6, 2, 3, 3), dict(padding=1, groups=2)),
    "conv_transpose2d": (bnns_py.ConvTranspose2d, (4, 3, 3, 3), dict(stride=2, padding=1)),
    # groups > 1: the module keeps a BNNS-layout copy of its weight (BNNS has no backward here)
    "conv_transpose2d_grouped": (bnns_py.ConvTranspose2d, (4, 3, 3, 3), dict(stride=2, padding=1, groups=2)),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_an_assigned_conv_weight_and_bias_are_read_from_the_next_call(case):
    module_class, weight_shape, kwargs = CONV_CASES[case]
    transposed = module_class is bnns_py.ConvTranspose2d
    conv = reference.conv_transpose2d if transposed else reference.conv2d
    first_weight = _random(*weight_shape)
    first_weight_values = first_weight.copy()
    x = _random(2, 4, 5, 5)
    with module_class(first_weight, None, **kwargs) as module:
        np.testing.assert_allclose(module(x), conv(x, first_weight, None, **kwargs), **TOL)
        module(x)  # a remembered call, kept for these operands
        new_weight, new_bias = _random(*weight_shape), _random(module.spec.out_channels)
        module.weight = new_weight
        module.bias = new_bias
        assert module.weight is new_weight and module.bias is new_bias
        y = module(x)
        np.testing.assert_allclose(y, conv(x, new_weight, new_bias, **kwargs), **TOL)
        np.testing.assert_array_equal(first_weight, first_weight_values)
        if kwargs.get("groups", 1) == 1 or not transposed:
            dy = _random(*y.shape)
            grads = module.backward(x, y, dy)
            backward = reference.conv_transpose2d_backward if transposed else reference.conv2d_backward
            expected = backward(x, new_weight, dy, y, True, **kwargs)
            for got, want in zip(grads, expected):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        module.bias = None
        np.testing.assert_allclose(module(x), conv(x, new_weight, None, **kwargs), **TOL)


def test_an_assigned_linear_weight_and_bias_are_read_from_the_next_call():
    first_weight = _random(5, 7)
    first_weight_values = first_weight.copy()
    x = _random(3, 7)
    with bnns_py.Linear(first_weight) as lin:
        lin(x)
        np.testing.assert_allclose(lin(x), reference.linear(x, first_weight), **TOL)  # the remembered call
        new_weight, new_bias = _random(5, 7), _random(5)
        lin.weight, lin.bias = new_weight, new_bias
        y = lin(x)
        np.testing.assert_allclose(y, reference.linear(x, new_weight, new_bias), **TOL)
        np.testing.assert_allclose(lin(x), y)
        np.testing.assert_array_equal(first_weight, first_weight_values)
        dy = _random(3, 5)
        lin.backward(x, y, dy)
        lin.weight = first_weight
        grads = lin.backward(x, y, dy)  # a remembered backward call before the assignment
        for got, want in zip(grads, reference.linear_backward(x, first_weight, dy, y, True)):
            np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("make", [lambda w: bnns_py.Conv2d(w, padding=1), bnns_py.Linear], ids=["conv2d", "linear"])
def test_assigning_destroys_the_old_filter_and_augmented_assignment_keeps_it(make):
    weight = _random(4, 4, 3, 3) if make is not bnns_py.Linear else _random(4, 6)
    x = _random(1, 4, 6, 6) if weight.ndim == 4 else _random(2, 6)
    gc.collect()
    created, destroyed = bnns_py.filter_counts()
    module = make(weight)
    module(x)
    module.weight -= 1.0  # in place: the same array, the same filter
    assert module.weight is weight
    assert bnns_py.filter_counts() == (created + 1, destroyed)
    module.weight = weight.copy()
    assert bnns_py.filter_counts() == (created + 1, destroyed + 1)
    module(x)
    module.close()
    assert bnns_py.filter_counts() == (created + 2, destroyed + 2)


@pytest.mark.parametrize("make", [lambda w, b: bnns_py.Conv2d(w, b), bnns_py.Linear], ids=["conv2d", "linear"])
def test_a_bad_assignment_is_refused_and_changes_nothing(make):
    weight = _random(4, 2, 3, 3) if make is not bnns_py.Linear else _random(4, 6)
    bias = _random(4)
    module = make(weight, bias)
    with pytest.raises(ValueError, match="keep the shape"):
        module.weight = _random(5, *weight.shape[1:])
    with pytest.raises(ValueError, match="keep the shape"):
        module.bias = _random(3)
    with pytest.raises(TypeError):
        module.weight = weight.astype(np.float64)
    read_only = weight.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writable C-contiguous"):
        module.weight = read_only
    with pytest.raises(ValueError, match="writable C-contiguous"):
        module.weight = np.asfortranarray(weight) if weight.ndim == 2 else weight[:, :, ::-1, :]
    assert module.weight is weight and module.bias is bias
    module.close()


@pytest.mark.parametrize("kind", ["conv2d", "linear"])
def test_assigning_while_another_thread_runs_the_module_gives_old_or_new_results_only(kind):
    if kind == "conv2d":
        weights, x = [_random(8, 8, 3, 3), _random(8, 8, 3, 3)], _random(1, 8, 16, 16)
        expected = [reference.conv2d(x, w, padding=1) for w in weights]
        module = bnns_py.Conv2d(weights[0], padding=1)
    else:  # the remembered call of Linear is counted in flight by its filter alone
        weights, x = [_random(64, 256), _random(64, 256)], _random(4, 256)
        expected = [reference.linear(x, w) for w in weights]
        module = bnns_py.Linear(weights[0])
    gc.collect()
    created, destroyed = bnns_py.filter_counts()
    stop, errors, mismatches, calls = threading.Event(), [], [], [0]

    def run():
        try:
            while not stop.is_set():
                y = module(x)
                calls[0] += 1
                if not any(np.allclose(y, e, rtol=1e-4, atol=1e-4) for e in expected):
                    mismatches.append(y)
        except BaseException as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)

    module(x)
    thread = threading.Thread(target=run)
    thread.start()
    try:
        for step in range(20):
            module.weight = weights[(step + 1) % 2]
            seen = calls[0]
            while calls[0] < seen + 2 and thread.is_alive():
                time.sleep(0.0005)
    finally:
        stop.set()
        thread.join()
    module.close()
    assert not errors and not mismatches
    created_now, destroyed_now = bnns_py.filter_counts()
    assert created_now - created == destroyed_now - destroyed == 21


def test_what_a_filter_is_made_from_cannot_be_assigned_afterwards():
    lin = bnns_py.Linear(_random(3, 4))
    conv = bnns_py.Conv2d(_random(2, 2, 1, 1))
    layer = conv._layer(4, 4)
    for target, name, value in [(lin, "activation", "relu"), (lin, "backend", "portable"), (lin, "n_threads", 2),
                                (conv, "spec", None), (conv, "backend", "portable"), (conv, "n_threads", 2),
                                (layer, "activation", "relu"), (layer, "stride", (2, 2)), (layer, "weights", None)]:
        before = getattr(target, name)
        with pytest.raises(AttributeError, match=f"{type(target).__name__}.{name} is fixed"):
            setattr(target, name, value)
        assert getattr(target, name) is before
    lin.close()
    conv.close()


@pytest.mark.parametrize("n_threads", [-1, True, 1.5, "2", None])
@pytest.mark.parametrize("make", [lambda n: bnns_py.Conv2d(_random(2, 2, 3, 3), n_threads=n),
                                  lambda n: bnns_py.ConvTranspose2d(_random(2, 2, 3, 3), n_threads=n),
                                  lambda n: bnns_py.Linear(_random(3, 4), n_threads=n)],
                         ids=["Conv2d", "ConvTranspose2d", "Linear"])
def test_a_bad_thread_count_is_refused_before_any_filter_exists(make, n_threads):
    created, _ = bnns_py.filter_counts()
    with pytest.raises(ValueError, match=r"n_threads must be an integer >= 0"):
        make(n_threads)
    assert bnns_py.filter_counts()[0] == created


def test_the_thread_count_is_shown_and_kept():
    with bnns_py.Conv2d(_random(2, 2, 3, 3), n_threads=3) as conv, bnns_py.Linear(_random(3, 4)) as lin:
        assert (conv.n_threads, lin.n_threads) == (3, 0)
        assert repr(conv).endswith(", n_threads=3)") and "n_threads" not in repr(lin)
        assert re.search(r"threads per call</th><td[^>]*>3</td>", conv._repr_html_())
        assert re.search(r"threads per call</th><td[^>]*>0 \(the backend chooses\)</td>", lin._repr_html_())
