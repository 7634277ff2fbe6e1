"""Hypothesis properties of the Python API, run by test_properties.py in a separate process so
that a crash of the native library fails the test instead of killing pytest.

Properties:
  * valid conv2d / conv_transpose2d arguments give the reference result;
  * arbitrary (often invalid) arguments either give the reference result or raise ValueError,
    TypeError or NotImplementedError, never anything else, and never leak a filter;
  * gradients of valid training configurations match the reference.
Run:  python tests/property_worker.py [--examples N]
"""
import argparse
import functools
import gc
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bnns_py
from bnns_py import reference

ALLOWED_ERRORS = (ValueError, TypeError, NotImplementedError)
ACTIVATIONS = [None, "relu", "sigmoid", "tanh", "silu", "gelu", bnns_py.ActivationFunction.leaky_rectified_linear(0.1),
               bnns_py.ActivationFunction.clamp((-0.5, 0.5)), bnns_py.ActivationFunction.softmax, "abs"]
COUNTS = {}


def count(name):
    COUNTS[name] = COUNTS.get(name, 0) + 1


def tolerance(expected, terms):
    return 1e-5 * np.sqrt(max(terms, 1)) * max(1.0, float(np.abs(expected).max(initial=0)))


INVALID_VALUES = {
    "in_c": [0, -1], "out_c": [0], "h": [0], "w": [0], "kh": [0, 12], "kw": [0, 12], "groups": [0, -1, 4, 5],
    "stride": [(0, 1), (1, -1), (1, 2, 3)], "dilation": [(0, 1), (-2, 1), 1.5], "padding": [(-1, 0, 0, 0), (1, 2, 3), 9],
    "activation": [ACTIVATIONS[-2], ACTIVATIONS[-1], "leaky_relu", "nope", 3], "dtype": [np.float64, np.int32, np.float16],
}


@st.composite
def conv_case(draw, trainable=False):
    """A valid convolution (small shapes; transposed or not)."""
    groups = draw(st.sampled_from([1, 2, 3]))
    transposed = draw(st.booleans())
    if trainable and transposed:
        groups = 1  # BNNS computes no gradients for grouped transposed convolution
    activations = [None, "relu", "sigmoid", "tanh"] if trainable else ACTIVATIONS[:8]
    return dict(
        n=draw(st.integers(1, 3)), in_c=groups * draw(st.integers(1, 4)), out_c=groups * draw(st.integers(1, 4)),
        h=draw(st.integers(1, 9)), w=draw(st.integers(1, 9)), kh=draw(st.integers(1, 4)), kw=draw(st.integers(1, 4)),
        groups=groups, stride=draw(st.tuples(st.integers(1, 3), st.integers(1, 3))),
        dilation=draw(st.tuples(st.integers(1, 3), st.integers(1, 3))),
        padding=draw(st.tuples(*[st.integers(0, 3)] * 4)), bias=draw(st.booleans()),
        activation=draw(st.sampled_from(activations)), dtype=np.float32, transposed=transposed,
        seed=draw(st.integers(0, 2 ** 16)))


@st.composite
def arbitrary_case(draw):
    """A valid case with zero to two fields replaced by invalid values."""
    case = draw(conv_case())
    for field in draw(st.lists(st.sampled_from(sorted(INVALID_VALUES)), max_size=2, unique=True)):
        case[field] = draw(st.sampled_from(INVALID_VALUES[field]))
    return case


def arrays(case):
    rng = np.random.default_rng(case["seed"])
    g = max(case["groups"], 1)
    wshape = ((case["in_c"], case["out_c"] // g) if case["transposed"] else (case["out_c"], case["in_c"] // g)) + (case["kh"], case["kw"])
    wshape = tuple(max(d, 0) for d in wshape)
    x = rng.standard_normal((case["n"], max(case["in_c"], 0), case["h"], case["w"])).astype(case["dtype"])
    weight = rng.standard_normal(wshape).astype(case["dtype"])
    bias = rng.standard_normal(case["out_c"]).astype(case["dtype"]) if case["bias"] else None
    return x, weight, bias


def run(case):
    x, weight, bias = arrays(case)
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
                  activation=case["activation"])
    function = bnns_py.conv_transpose2d if case["transposed"] else bnns_py.conv2d
    expected_function = reference.conv_transpose2d if case["transposed"] else reference.conv2d
    try:
        actual = function(x, weight, bias, **kwargs)
    except ALLOWED_ERRORS:
        return None
    kwargs["activation"] = bnns_py.ActivationFunction.coerce(case["activation"])
    expected = expected_function(x, weight, bias, **kwargs)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    terms = weight[0].size * (weight.shape[1] if case["transposed"] else 1)
    error = np.abs(actual - expected).max(initial=0)
    assert error <= tolerance(expected, terms), (case, error)
    return actual


def no_leak(function):
    @functools.wraps(function)
    def wrapper(case):
        bnns_py.clear_cache()  # cached conv2d filters outlive their call by design
        before = bnns_py.filter_counts()
        function(case)
        bnns_py.clear_cache()
        gc.collect()
        created, destroyed = bnns_py.filter_counts()
        assert created - before[0] == destroyed - before[1], "filter leaked"
    return wrapper


def properties(examples):
    common = settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

    @common
    @given(conv_case())
    @no_leak
    def valid_arguments_match_reference(case):
        out_ok = run(case)
        count("valid: computed" if out_ok is not None else "valid: refused (sizes)")

    @common
    @given(arbitrary_case())
    @no_leak
    def arbitrary_arguments_compute_or_raise_cleanly(case):
        count("arbitrary: computed" if run(case) is not None else "arbitrary: refused with a clear error")

    @common
    @given(conv_case(trainable=True))
    @no_leak
    def gradients_match_reference(case):
        x, weight, bias = arrays(case)
        cls = bnns_py.ConvTranspose2d if case["transposed"] else bnns_py.Conv2d
        kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
                      activation=case["activation"])
        try:
            module = cls(weight, bias, **kwargs)
            with module:
                y = module(x)
                dy = np.random.default_rng(case["seed"] + 1).standard_normal(y.shape).astype(np.float32)
                grads = module.backward(x, y, dy)
        except ALLOWED_ERRORS:
            count("gradients: refused (sizes)")
            return
        backward = reference.conv_transpose2d_backward if case["transposed"] else reference.conv2d_backward
        kwargs["activation"] = bnns_py.ActivationFunction.coerce(case["activation"])
        dx, dw, db = backward(x, weight, dy, output=y, bias=bias is not None, **kwargs)
        for actual, expected, terms in ((grads.input, dx, weight.size), (grads.weight, dw, dy.size), (grads.bias, db, dy.size)):
            if expected is not None:
                assert np.abs(actual - expected).max(initial=0) <= tolerance(expected, terms)
        count("gradients: checked")

    return [valid_arguments_match_reference, arbitrary_arguments_compute_or_raise_cleanly, gradients_match_reference]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    for prop in properties(args.examples):
        prop()
        print(f"{prop.__name__}: ok", flush=True)
    for name, value in sorted(COUNTS.items()):
        print(f"  {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
