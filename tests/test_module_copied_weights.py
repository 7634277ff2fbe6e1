"""Modules made with ``copy_weights=True``: read-only copies of the parameters that each filter
copies at creation (BNNS's default flags), the same results and gradients as modules that read
the caller's arrays in place, later writes to the caller's arrays not seen, and assignments that
make new filters."""
import re

import numpy as np
import pytest

import bnns_py
from bnns_py import reference
from bnns_py.enums import Flags

TOL = dict(rtol=1e-4, atol=1e-4)


def _random(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# (class, weight shape, keyword arguments, input shape): a Winograd-eligible 3x3 layer at batch 1
# (the filter transforms copied weights once), a strided one, transposed ones with one and two
# groups (two: the module keeps a BNNS-layout weight), and fully-connected ones below and above
# the batch where client weights take another path
CASES = {
    "conv2d_3x3": (bnns_py.Conv2d, (64, 64, 3, 3), dict(padding=1, activation="relu"), (1, 64, 14, 14)),
    "conv2d_strided_grouped": (bnns_py.Conv2d, (8, 3, 3, 3), dict(stride=2, padding=(1, 0), groups=2), (3, 6, 9, 8)),
    "conv_transpose2d": (bnns_py.ConvTranspose2d, (16, 8, 4, 4), dict(stride=2, padding=1), (2, 16, 6, 6)),
    "conv_transpose2d_grouped": (bnns_py.ConvTranspose2d, (4, 3, 3, 3), dict(stride=2, padding=1, groups=2),
                                 (2, 4, 5, 5)),
    "linear_batch_3": (bnns_py.Linear, (10, 33), dict(activation="relu"), (3, 33)),
    "linear_batch_40": (bnns_py.Linear, (24, 70), {}, (40, 70)),
}


def _out_channels(module_class, weight_shape, kwargs):
    if module_class is bnns_py.ConvTranspose2d:
        return weight_shape[1] * kwargs.get("groups", 1)
    return weight_shape[0]


def _reference(module_class, x, weight, bias, kwargs):
    if module_class is bnns_py.Linear:
        y = x.astype(np.float64) @ weight.T.astype(np.float64) + (0.0 if bias is None else bias)
        return np.maximum(y, 0) if kwargs.get("activation") == "relu" else y
    conv = reference.conv_transpose2d if module_class is bnns_py.ConvTranspose2d else reference.conv2d
    geometry = {k: v for k, v in kwargs.items() if k != "activation"}
    y = conv(x, weight, bias, **geometry)
    return np.maximum(y, 0) if kwargs.get("activation") == "relu" else y


@pytest.mark.parametrize("case", CASES)
def test_copied_weights_give_the_in_place_modules_results_and_ignore_later_writes(case, rng, no_filter_leaks):
    module_class, weight_shape, kwargs, x_shape = CASES[case]
    weight = _random(rng, *weight_shape, scale=0.1)
    bias = _random(rng, _out_channels(module_class, weight_shape, kwargs))
    x = _random(rng, *x_shape)
    expected = _reference(module_class, x, weight, bias, kwargs)
    original = weight.copy()
    with module_class(weight, bias, copy_weights=True, **kwargs) as copied, \
            module_class(original, bias.copy(), **kwargs) as in_place:
        assert copied.copy_weights and not in_place.copy_weights
        assert copied.weight is not weight and not copied.weight.flags.writeable
        y = copied(x)
        np.testing.assert_allclose(y, expected, **TOL)
        weight[...] = 0  # the caller's array: the module holds its own copy
        bias[...] = 0
        np.testing.assert_array_equal(copied(x), y)
        # the filters hold theirs too: writing into the module's copy (made writable on purpose)
        # changes nothing either, which a filter reading it in place would see
        copied.weight.setflags(write=True)
        copied.weight[...] = 0
        np.testing.assert_array_equal(copied(x), y)
        copied.weight[...] = original
        copied.weight.setflags(write=False)
        if module_class is bnns_py.ConvTranspose2d and kwargs.get("groups", 1) > 1:
            return  # BNNS has no backward pass for grouped transposed convolutions
        dy = _random(rng, *y.shape)
        want = in_place.backward(x, in_place(x), dy)
        got = copied.backward(x, y, dy)
    for name, g, w in zip(("input", "weight", "bias"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("case", ["conv2d_3x3", "conv_transpose2d_grouped", "linear_batch_40"])
def test_copied_parameters_are_read_only_and_assignments_make_new_filters(case, rng, no_filter_leaks):
    module_class, weight_shape, kwargs, x_shape = CASES[case]
    weight = _random(rng, *weight_shape, scale=0.1)
    x = _random(rng, *x_shape)
    with module_class(weight, copy_weights=True, **kwargs) as module:
        module(x)
        with pytest.raises(ValueError, match="read-only"):
            module.weight -= 1
        # any float32 layout is accepted and copied: here a read-only, non-contiguous view
        replacement = np.asfortranarray(_random(rng, *weight_shape, scale=0.1))
        replacement.setflags(write=False)
        created, destroyed = bnns_py.filter_counts()
        module.weight = replacement
        y = module(x)
        assert module.weight is not replacement and module.weight.flags.c_contiguous
        assert not module.weight.flags.writeable
        assert bnns_py.filter_counts()[0] == created + 1  # the new weight's filter
        assert bnns_py.filter_counts()[1] >= destroyed + 1  # the old one's, retired
        np.testing.assert_allclose(y, _reference(module_class, x, replacement, None, kwargs), **TOL)
        bias = _random(rng, _out_channels(module_class, weight_shape, kwargs))
        module.bias = bias
        assert module.bias is not bias and not module.bias.flags.writeable
        np.testing.assert_allclose(module(x), _reference(module_class, x, replacement, bias, kwargs), **TOL)


@pytest.mark.parametrize("make", [lambda rng: bnns_py.Conv2d(_random(rng, 4, 2, 3, 3), copy_weights=True),
                                  lambda rng: bnns_py.Linear(_random(rng, 3, 4), copy_weights=True)],
                         ids=["Conv2d", "Linear"])
def test_copied_weight_filters_are_made_without_client_pointers(make, rng, no_filter_leaks):
    with make(rng) as module, make(rng) as _:
        layer = module._layer(6, 6) if isinstance(module, bnns_py.Conv2d) else module._layer()
        assert layer.filter_parameters.flags == Flags.none
    with bnns_py.Conv2d(_random(rng, 4, 2, 3, 3)) as in_place:
        assert in_place._layer(6, 6).filter_parameters.flags == Flags.use_client_pointer


@pytest.mark.parametrize("value", [1, 0, None, "yes", np.bool_(True)])
@pytest.mark.parametrize("cls", [bnns_py.Conv2d, bnns_py.ConvTranspose2d, bnns_py.Linear])
def test_copy_weights_must_be_a_bool(cls, value, rng):
    created, _ = bnns_py.filter_counts()
    weight = _random(rng, 3, 4) if cls is bnns_py.Linear else _random(rng, 2, 2, 3, 3)
    with pytest.raises(TypeError, match=r"copy_weights must be True or False"):
        cls(weight, copy_weights=value)
    assert bnns_py.filter_counts()[0] == created


def test_copy_weights_is_shown_and_fixed(rng):
    with bnns_py.Conv2d(_random(rng, 2, 2, 3, 3), copy_weights=True) as conv, \
            bnns_py.Linear(_random(rng, 3, 4)) as lin:
        assert repr(conv).endswith(", copy_weights=True)") and "copy_weights" not in repr(lin)
        assert re.search(r"weights storage</th><td[^>]*>copied by BNNS at creation", conv._repr_html_())
        assert re.search(r"weights storage</th><td[^>]*>read in place at every call \(use_client_pointer\)",
                         lin._repr_html_())
        with pytest.raises(AttributeError, match="Conv2d.copy_weights is fixed"):
            conv.copy_weights = False


@pytest.mark.parametrize("kind", ["Conv2d", "ConvTranspose2d", "Linear"])
def test_from_torch_passes_copy_weights_on(kind, rng):
    torch = pytest.importorskip("torch")
    torch_module = {"Conv2d": lambda: torch.nn.Conv2d(4, 6, 3, padding=1),
                    "ConvTranspose2d": lambda: torch.nn.ConvTranspose2d(4, 6, 3, stride=2),
                    "Linear": lambda: torch.nn.Linear(5, 3)}[kind]()
    cls = getattr(bnns_py, kind)
    x = torch.from_numpy(_random(rng, 2, 5) if kind == "Linear" else _random(rng, 2, 4, 7, 7))
    with cls.from_torch(torch_module, copy_weights=True) as module:
        assert module.copy_weights and not module.weight.flags.writeable
        with torch.no_grad():
            expected = torch_module(x).numpy()
        np.testing.assert_allclose(module(x.numpy()), expected, **TOL)
