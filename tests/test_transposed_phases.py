"""Strided transposed layers with enough channels for the direct engine's phase plans (each output
phase a dense convolution of the input with the kernel taps landing on it; at stride 2 along x
the two column phases of a row written together, interleaved) against the float64 reference and
PyTorch: strides 2 and 3 (and 2 along one axis only), kernels 2 to 6 (multiples of the stride and
not), padding, output padding (odd widths, whose column phases differ in size), dilation, groups,
channel counts that fill whole 8-channel blocks and that leave some over, fused activations,
batch 1 and 3, 1 and 2 threads; forward, input / weight / bias gradients (groups: forward only),
set and accumulate; each forced engine, and each vector tier in a child process."""
import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF, ConvolutionType, NDArrayDescriptor, NDArrayFlags, reference

from conftest import assert_close_to_reference, client_layer, random_array, run_child_on_tier

# (cin, cout, h, w, k, stride, padding, output_padding, dilation, groups)
CASES = [
    (24, 40, 5, 6, (4, 4), (2, 2), 1, 0, 1, 1),     # 4x4 / 2: 4 phases of 2x2 taps, whole blocks
    (16, 70, 4, 7, (4, 4), (2, 2), 1, 1, 1, 1),     # odd output width: column phases of 8 and 7
    (20, 13, 6, 5, (2, 2), (2, 2), 0, 0, 1, 1),     # 2x2 / 2: one tap a phase; 13 = 8 + 5 channels
    (12, 36, 5, 5, (3, 3), (2, 2), 1, 1, 1, 1),     # kernel not a multiple of the stride
    (10, 24, 6, 4, (5, 5), (2, 2), 2, 1, 1, 1),     # 5x5 / 2: phases of 3x3, 3x2, 2x3, 2x2 taps
    (18, 32, 4, 5, (3, 6), (3, 3), (2, 1), 0, 1, 1),  # stride 3: 9 phases
    (9, 20, 5, 4, (3, 3), (3, 3), 0, 2, 1, 1),      # stride 3, kernel not a multiple
    (16, 40, 5, 9, (3, 4), (1, 2), 1, 0, 1, 1),     # stride 2 along x only
    (16, 40, 9, 5, (4, 3), (2, 1), 1, 0, 1, 1),     # stride 2 along y only
    (12, 48, 4, 6, (3, 3), (2, 2), 1, 1, 2, 1),     # dilation 2
    (24, 48, 5, 6, (4, 4), (2, 2), 1, 0, 1, 2),     # 2 groups
]
ACTIVATIONS = [None, AF.rectified_linear, AF.tanh, AF.leaky_rectified_linear(0.2)]


def case_id(case):
    cin, cout, h, w, k, s, p, op, d, g = case
    return f"i{cin}o{cout}_{h}x{w}_k{k[0]}x{k[1]}_s{s[0]}x{s[1]}_p{p}_op{op}_d{d}_g{g}"


def run_module_case(rng, case, activation, n, n_threads=None):
    """Forward and all gradients of a ConvTranspose2d against the reference (forward only with groups:
    BNNS has no gradients of grouped transposed layers)."""
    cin, cout, h, w, k, stride, padding, output_padding, dilation, groups = case
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cin, cout // groups) + k, 0.5)
    bias = random_array(rng, (cout,))
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    with bnns_py.ConvTranspose2d(weight, bias, activation=activation, n_threads=n_threads or 0, **kw) as module:
        y = module.forward(x)
        expected = reference.conv_transpose2d(x, weight, bias, activation=activation, **kw)
        taps = cin // groups * k[0] * k[1]
        assert_close_to_reference(y, expected, taps, "forward")
        if groups > 1:
            return y
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    dx, dw, db = reference.conv_transpose2d_backward(x, weight, dy, output=y, bias=True, activation=activation, **kw)
    assert_close_to_reference(grads.input, dx, cout // groups * k[0] * k[1], "input gradient")
    assert_close_to_reference(grads.weight, dw, n * h * w, "weight gradient")
    assert_close_to_reference(grads.bias, db, n * y.shape[2] * y.shape[3], "bias gradient")
    return y


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_strided_transposed_layer_matches_reference(case, rng, no_filter_leaks):
    activation = ACTIVATIONS[CASES.index(case) % len(ACTIVATIONS)]
    run_module_case(rng, case, activation, n=3 if CASES.index(case) % 2 else 1)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("activation", ACTIVATIONS[:3], ids=["identity", "relu", "tanh"])
def test_4x4_stride2_upsampling_over_threads(activation, n_threads, rng, no_filter_leaks):
    run_module_case(rng, (64, 32, 8, 8, (4, 4), (2, 2), 1, 0, 1, 1), activation, n=2, n_threads=n_threads)


@pytest.mark.requires_portable_internals
def test_4x4_stride2_runs_on_the_direct_phase_plan(rng, backend, no_filter_leaks):
    """The benchmark's upsampling geometry (fewer channels) forward on the direct engine's pixels
    kernel, whose stride-2 plans write the two column phases of each row together."""
    weight = random_array(rng, (64, 32, 4, 4), 0.5)
    with bnns_py.ConvTranspose2d(weight, stride=2, padding=1) as module:
        engine = backend.filter_engine(module._layer(8, 8).bnns_filter)
    assert engine in ("direct pixels", "direct flat pixels")


def test_matches_torch(rng, no_filter_leaks):
    torch = pytest.importorskip("torch")
    for case in CASES:
        cin, cout, h, w, k, stride, padding, output_padding, dilation, groups = case
        x = random_array(rng, (2, cin, h, w))
        weight = random_array(rng, (cin, cout // groups) + k, 0.5)
        bias = random_array(rng, (cout,))
        kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
        actual = bnns_py.conv_transpose2d(x, weight, bias, **kw)
        expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                                                        torch.from_numpy(bias).double(), **kw).numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4, err_msg=case_id(case))


@pytest.mark.parametrize("cin", [24, 64], ids=["direct-engine-dw", "in-place-dw"])  # 64: transposed_weights.c
@pytest.mark.parametrize("activation", [AF.identity, AF.tanh], ids=["identity", "tanh"])
def test_gradients_set_and_accumulate(activation, cin, rng, no_filter_leaks):
    cout, h, w, n = 40, 5, 6, 2
    weight = random_array(rng, (cin, cout, 4, 4), 0.5)  # PyTorch's layout
    bias = random_array(rng, (cout,))
    bnns_weight = np.ascontiguousarray(weight.transpose(1, 0, 2, 3))  # BNNS's OIHW: [out][in][kH][kW]
    layer, (oh, ow) = client_layer(ConvolutionType.transposed, cin, cout, h, w, (4, 4), (2, 2), (1, 1, 1, 1),
                                   (1, 1), 1, bnns_weight, bias, activation, 1)
    x = random_array(rng, (n, cin, h, w))
    with layer:
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx_ref, dw_ref, db_ref = reference.conv_transpose2d_backward(x, weight, dy, output=y, bias=True,
                                                                     activation=activation, stride=2, padding=1)
        dw_ref = dw_ref.transpose(1, 0, 2, 3)
        start = {"dx": random_array(rng, x.shape), "dw": random_array(rng, bnns_weight.shape),
                 "db": random_array(rng, (cout,))}
        for flag, offset in ((NDArrayFlags.backprop_accumulate, 1.0), (NDArrayFlags.backprop_set, 0.0)):
            dx = NDArrayDescriptor(start["dx"].copy().reshape(-1), layer.input_descriptor.shape, batch_size=n,
                                   flags=flag)
            dw = NDArrayDescriptor(start["dw"].copy().reshape(-1), layer.weights.shape, flags=flag)
            db = NDArrayDescriptor(start["db"].copy(), layer.bias.shape, flags=flag)
            layer.apply_backward(n, x, y, dy, dx, dw, db)
            assert_close_to_reference(dx.data.reshape(x.shape), dx_ref + offset * start["dx"], cout * 16)
            assert_close_to_reference(dw.data.reshape(bnns_weight.shape), dw_ref + offset * start["dw"], n * h * w)
            assert_close_to_reference(db.data, db_ref + offset * start["db"], n * oh * ow)


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("engine", ["rows", "pixels", "flat-pixels", "im2col", "pointwise", "winograd"])
def test_each_forced_engine(engine, rng, monkeypatch, no_filter_leaks):
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", engine)
    for index in (0, 1, 4, 5):
        run_module_case(rng, CASES[index], ACTIVATIONS[index % len(ACTIVATIONS)], n=2)


# Forward passes on the phase plans' tiles of 8 pixels x 2 vectors, their weights in chunks of 128
# steps (AVX-512): phase rows that split in 8s, more than 32 output channels per group
# (cin, cout, h, w, k, stride, padding, output_padding, dilation, groups)
NARROW_CASES = [
    (256, 128, 3, 16, (4, 4), (2, 2), 1, 0, 1, 1),  # the benchmark's layer, 3 rows: phases of 8 chunks
    (40, 120, 5, 8, (4, 4), (2, 2), 1, 0, 1, 1),    # 3 x 32 + 24 channels; 160 steps: a chunk and 32
    (33, 104, 3, 16, (4, 4), (2, 2), 1, 0, 1, 1),   # 3 x 32 + 8 channels; 132 = 128 + 4 steps
    (36, 33, 3, 8, (3, 4), (1, 2), 1, 0, 1, 1),     # stride 2 along x only: 2 phases; 32 + 1 channels
    (48, 80, 4, 8, (4, 4), (2, 2), 1, 0, 1, 2),     # 2 groups of 40 channels (forward only)
]


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("case", NARROW_CASES, ids=case_id)
def test_narrow_tiles_match_reference(case, n, rng, no_filter_leaks):
    run_module_case(rng, case, ACTIVATIONS[(NARROW_CASES.index(case) + n) % len(ACTIVATIONS)], n)


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("case", NARROW_CASES, ids=case_id)
def test_narrow_tiles_identical_over_threads(case, n, rng, no_filter_leaks):
    cin, cout, h, w, k, stride, padding, output_padding, dilation, groups = case
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cin, cout // groups) + k, 0.5)
    bias = random_array(rng, (cout,))
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    results = []
    for n_threads in (1, 2):
        with bnns_py.ConvTranspose2d(weight, bias, n_threads=n_threads, **kw) as module:
            results.append(module.forward(x))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("n_threads", [1, 2])
def test_narrow_tiles_in_a_strided_layers_input_gradient(n_threads, rng, no_filter_leaks):
    """A standard stride-2 layer's input gradient (a phase plan onto its 40 input channels, rows
    of 8), set and against the reference."""
    x = random_array(rng, (3, 40, 16, 16))
    weight = random_array(rng, (24, 40, 3, 3), 0.5)
    with bnns_py.Conv2d(weight, stride=2, padding=1, n_threads=n_threads) as module:
        y = module.forward(x)
        dy = random_array(rng, y.shape)
        grads = module.backward(x, y, dy)
    dx, _, _ = reference.conv2d_backward(x, weight, dy, output=y, bias=False, stride=2, padding=1)
    assert_close_to_reference(grads.input, dx, 24 * 9, "input gradient")


def cases_child(module):
    """Python source that runs every case of test module ``module`` (its CASES and ACTIVATIONS)
    through run_module_case at batch 2, for run_child_on_tier."""
    return f"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import {module} as t
from test_transposed_phases import run_module_case
rng = np.random.default_rng(21)
for index, case in enumerate(t.CASES):
    run_module_case(rng, case, t.ACTIVATIONS[index % len(t.ACTIVATIONS)], n=2)
print("ok")
"""


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512", "neon"])
def test_each_tier(isa):
    run_child_on_tier(isa, cases_child("test_transposed_phases"))
