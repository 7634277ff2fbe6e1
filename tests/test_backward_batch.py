"""Backward of a standard convolution with an activation takes the whole batch at once: dy * f'(y)
for every image first, then one weight-gradient and one input-gradient pass (client weights
packed once per call, not once per image). Gradients vs the float64 reference for activations
whose derivative reads y, batch 1 and > 1, set and accumulate, 1 and 2 threads, every tier; and
the pool's counters show one call no longer runs image by image."""
import numpy as np
import pytest

from bnns_py import ActivationFunction as AF, ConvolutionType, NDArrayDescriptor, NDArrayFlags, reference

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
