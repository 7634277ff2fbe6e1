"""The direct engine's panel path: the forward pass of small images as the pointwise kernel on each
image's im2col panel, the weights read in place (client pointers) or from the filter's canonical
copy. Forced with BNNS_PY_PORTABLE_ENGINE=panel on edge sizes (pixels per image around vector
multiples, the tail as dot products or a partial vector, partial channel tiles, groups, strides 2
and 3 with odd inputs), and chosen by itself for small images with long reductions, against the
float64 reference; 1 and 2 threads give the same bits."""
import numpy as np
import pytest

import bnns_py
from bnns_py import ActivationFunction as AF, ConvolutionType, Flags, reference

from conftest import CountingAllocator, client_layer, input_batch, random_array, run_child_on_tier

pytestmark = pytest.mark.requires_portable_internals

# (batch, cin, cout, h, w, k, pad, dilation, groups): pixels per image 1, 15, 16, 17, 18, 47, 48,
# 49, 51, 63, 64, 65 (and 7 x 7); channels 1, 7, 9, 10, 17
CASES = [
    (1, 3, 9, 1, 1, 3, 1, 1, 1),     # 1 pixel
    (2, 7, 17, 3, 5, 3, 1, 1, 1),    # 15
    (1, 9, 7, 4, 4, 3, 1, 1, 1),     # 16
    (1, 17, 9, 1, 17, 3, 1, 1, 1),   # 17: a vector and one dot product (AVX-512)
    (1, 5, 1, 1, 47, 3, 1, 1, 1),    # 47
    (1, 6, 9, 6, 8, 3, 1, 1, 1),     # 48
    (2, 16, 17, 7, 7, 3, 1, 1, 1),   # 49: the ResNet c5 shape, small
    (1, 4, 12, 7, 9, 3, 1, 1, 2),    # 63, two groups
    (1, 7, 9, 8, 8, 3, 1, 1, 1),     # 64
    (1, 9, 7, 5, 13, 3, 1, 1, 1),    # 65
    (1, 5, 9, 2, 9, 3, 1, 1, 1),     # 18: two dot products, a reduction of 45 steps
    (1, 10, 10, 3, 17, 3, 1, 1, 1),  # 51: three dot products beside 8 + 2 channels' tiles
    (1, 3, 8, 6, 7, 5, 2, 1, 1),     # 5 x 5 taps
    (1, 2, 9, 9, 9, 3, 2, 2, 1),     # dilation 2
    (1, 1, 9, 7, 7, 3, 0, 1, 1),     # 1 channel, no padding (25 pixels)
]

# Strided: (batch, cin, cout, h, w, k, pad, dilation, groups, (stride_y, stride_x)); the planes' rows
# split into column phases
STRIDED_CASES = [
    (1, 16, 9, 14, 14, 3, 1, 1, 1, (2, 2)),   # 7 x 7 = 49: ResNet's layer4.0.conv1, small
    (2, 7, 17, 15, 15, 3, 1, 1, 1, (2, 2)),   # odd input: 8 x 8 = 64
    (1, 9, 7, 13, 9, 3, 1, 1, 1, (2, 2)),     # odd input: 7 x 5 = 35 (a partial vector)
    (2, 8, 12, 9, 9, 3, 1, 1, 2, (2, 2)),     # two groups, 5 x 5 = 25, batch 2
    (1, 5, 9, 11, 11, 5, 2, 1, 1, (3, 3)),    # stride 3, 5 x 5 taps: 16
    (1, 4, 9, 11, 11, 3, 0, 1, 1, (2, 2)),    # no padding: 5 x 5
    (1, 3, 9, 12, 12, 3, 2, 2, 1, (2, 2)),    # dilation 2: 6 x 6
    (1, 6, 9, 4, 34, 3, 1, 1, 1, (2, 2)),     # rows of 17 outputs (more than a vector): 34
    (3, 6, 5, 3, 3, 3, 1, 1, 1, (2, 2)),      # 2 x 2 outputs, batch 3
    (1, 5, 9, 9, 16, 3, 1, 1, 1, (2, 1)),     # stride 2 down, 1 across: 5 x 16
    (1, 5, 9, 16, 9, 3, 1, 1, 1, (1, 2)),     # 1 down, 2 across: 16 x 5
]

ACTIVATIONS = {
    "identity": AF.identity,
    "relu": AF.rectified_linear,
    "clamp": AF.clamp((-0.5, 0.7)),
    "sigmoid": AF.sigmoid,
}


# Strided, padded unevenly (left, right, top, bottom), the filter's memory starting as NaNs: every
# padded column and row of each phase that a tap reads must be written as zero
UNEVEN_CASES = [
    (1, 6, 9, 14, 14, 3, (0, 1, 0, 1), 1, 1, (2, 2)),  # TensorFlow's "same" padding of stride 2: 7 x 7
    (2, 5, 9, 13, 11, 3, (2, 0, 1, 2), 1, 1, (2, 2)),  # odd input, 2 columns on the left only, batch 2: 7 x 6
    (1, 4, 9, 14, 14, 3, 0, 1, 1, (2, 2)),             # the last column and row read by no tap: 6 x 6
    (1, 3, 9, 4, 4, 3, (3, 3, 3, 3), 1, 1, (2, 2)),    # padding wider than the image: 4 x 4
    (1, 3, 9, 5, 1, 3, (5, 0, 1, 1), 1, 1, (2, 2)),    # the image's one column read by no tap: 3 x 2
    (1, 3, 8, 12, 13, 3, (1, 2, 3, 0), 2, 1, (2, 2)),  # dilation 2: 6 x 6
    (1, 3, 7, 10, 12, 3, (2, 1, 0, 2), 1, 1, (3, 3)),  # stride 3: 4 x 5
    (2, 4, 10, 9, 13, 3, (1, 0, 0, 1), 1, 2, (2, 3)),  # strides 2 down, 3 across, two groups: 4 x 4
    (1, 5, 9, 9, 16, 3, (0, 2, 1, 0), 1, 1, (2, 1)),   # 2 down, 1 across: 4 x 16
]


def _ids(cases):
    def pad(p):
        return "_p" + "".join(map(str, p)) if isinstance(p, tuple) else ""
    return ["x".join(map(str, c[:5])) + f"_k{c[5]}{pad(c[6])}_d{c[7]}_g{c[8]}" +
            ("_s{}{}".format(*c[9]) if len(c) > 9 else "") for c in cases]


def _run(case, rng, activation, n_threads, with_bias=True, flags=None, scale=1.0, column_step=1, allocator=None):
    """column_step 2: x read from every other column of wider images; the case's pad one number or
    (left, right, top, bottom)."""
    n, cin, cout, h, w, k, pad, dil, groups = case[:9]
    stride = case[9] if len(case) > 9 else (1, 1)
    pads = pad if isinstance(pad, tuple) else (pad,) * 4
    wide = random_array(rng, (n, cin, h, w * column_step), scale)
    x = wide[..., ::column_step]
    weight = random_array(rng, (cout, cin // groups, k, k))
    bias = random_array(rng, (cout,)) if with_bias else None
    strides = (0, 0, 0) if column_step == 1 else (column_step, column_step * w, column_step * w * h)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, (k, k), stride, pads,
                                   (dil, dil), groups, weight, bias, activation, n_threads, flags=flags,
                                   input_strides=strides, allocator=allocator)
    with layer:
        engine = bnns_py.get_backend().filter_engine(layer.bnns_filter, batch=n)
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x if column_step == 1 else input_batch(layer, wide, n), y)
    expected = reference.conv2d(x, weight, bias, stride=stride, padding=pads, dilation=dil, groups=groups,
                                activation=activation)
    return engine, y, expected


def _tolerance(reduction):
    return 1e-4 * np.sqrt(reduction)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_forced_panel(case, with_bias, backend, rng, monkeypatch, no_filter_leaks):
    """Every edge size, 1 and 2 threads giving the same bits."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "panel")
    results = []
    for n_threads in (1, 2):
        engine, y, expected = _run(case, np.random.default_rng(7), AF.rectified_linear, n_threads, with_bias)
        assert engine == "direct panel"
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(case[1] * case[5] ** 2))
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("column_step", [1, 2], ids=["packed", "every-other-column"])
@pytest.mark.parametrize("case", STRIDED_CASES, ids=_ids(STRIDED_CASES))
def test_forced_panel_strided(case, column_step, backend, rng, monkeypatch, no_filter_leaks):
    """Strided layers, from packed images and from every other column of wider ones (the planes'
    other fill); 1 and 2 threads giving the same bits."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "panel")
    results = []
    for n_threads in (1, 2):
        engine, y, expected = _run(case, np.random.default_rng(9), AF.rectified_linear, n_threads,
                                   column_step=column_step)
        assert engine == "direct panel"
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(case[1] * case[5] ** 2))
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("column_step", [1, 2], ids=["packed", "every-other-column"])
@pytest.mark.parametrize("case", UNEVEN_CASES, ids=_ids(UNEVEN_CASES))
def test_forced_panel_uneven_padding(case, column_step, backend, rng, monkeypatch, no_filter_leaks):
    """The planes' borders of each column phase, whatever the filter's memory held before: results
    against the reference (no NaN), 1 and 2 threads giving the same bits."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "panel")
    results = []
    for n_threads in (1, 2):
        allocator = CountingAllocator(fill=0xFF)
        engine, y, expected = _run(case, np.random.default_rng(11), AF.identity, n_threads,
                                   column_step=column_step, allocator=allocator)
        assert engine == "direct panel"
        assert allocator.balanced()
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(case[1] * case[5] ** 2))
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("case", [CASES[3], CASES[6], CASES[9]], ids=_ids([CASES[3], CASES[6], CASES[9]]))
def test_forced_panel_activations(case, activation, backend, rng, monkeypatch, no_filter_leaks):
    """Clamping activations in the kernel's registers (on the tiles and the dot products), others
    on each finished row."""
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "panel")
    engine, y, expected = _run(case, rng, ACTIVATIONS[activation], 2, scale=3.0)
    assert engine == "direct panel"
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=3 * _tolerance(case[1] * case[5] ** 2))


# Chosen by itself: few pixels, a long reduction (5 x 5 taps: no Winograd pass to report instead)
AUTO_CASES = [
    (1, 48, 40, 7, 7, 5, 2, 1, 1),   # 49 pixels, 1200 steps
    (2, 64, 48, 4, 4, 5, 2, 1, 1),   # 16 pixels, 1600 steps; batch 2: the pixels kernel runs it instead
    (1, 48, 24, 8, 8, 5, 2, 1, 1),   # 64 pixels
    (2, 128, 40, 14, 14, 3, 1, 1, 1, (2, 2)),  # stride 2: 49 pixels, 1152 steps; at any batch
]


def _chosen(case):
    """Whether the automatic choice runs the case on the panel path: one image, or strided."""
    return case[0] == 1 or len(case) > 9


@pytest.mark.parametrize("client", [True, False], ids=["client", "copied"])
@pytest.mark.parametrize("case", AUTO_CASES, ids=_ids(AUTO_CASES))
def test_chosen_panel(case, client, backend, rng, monkeypatch, no_filter_leaks):
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    results = []
    for n_threads in (1, 2):
        engine, y, expected = _run(case, np.random.default_rng(3), AF.clamp((-1.0, 1.5)), n_threads,
                                   flags=None if client else Flags.none)
        assert engine == ("direct panel" if _chosen(case) else "direct pixels")
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(case[1] * case[5] ** 2))
        results.append(y)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("shape,expected", [
    ((48, 40, 10, 5, 2, 1), "direct rows"),     # 100 pixels: more than the panel path takes
    ((16, 512, 7, 5, 2, 1), "direct pixels"),   # 400 steps: too short a reduction
    ((128, 256, 28, 3, 1, 2), "direct pixels"),  # stride 2, 14 x 14 outputs: too many pixels
])
def test_panel_not_chosen(shape, expected, backend, monkeypatch, no_filter_leaks):
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    cin, cout, size, k, pad, stride = shape
    weight = np.zeros((cout, cin, k, k), np.float32)
    layer, _ = client_layer(ConvolutionType.standard, cin, cout, size, size, (k, k), (stride, stride), (pad,) * 4,
                            (1, 1), 1, weight, None, AF.identity, 1)
    with layer:
        engine = backend.filter_engine(layer.bnns_filter)
    if bnns_py.backend_info()["simd"] == "AVX-512":  # the other tiers' tiles make other choices
        assert engine == expected
    else:
        assert engine.startswith("direct") and engine != "direct panel"


def test_c5_batch1_panel_against_reference(backend, rng, monkeypatch, no_filter_leaks):
    """ResNet's 512-channel 7x7 layer at batch 1 (Winograd F(4x4) takes its batches of 8): the
    panel path's 48 + 1 pixels against the reference, and the same bits as the forced path."""
    monkeypatch.delenv("BNNS_PY_PORTABLE_ENGINE", raising=False)
    case = (1, 512, 512, 7, 7, 3, 1, 1, 1)
    engine, y, expected = _run(case, np.random.default_rng(5), AF.rectified_linear, 2)
    assert engine == "direct panel"
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=_tolerance(512 * 9))
    monkeypatch.setenv("BNNS_PY_PORTABLE_ENGINE", "panel")
    engine, forced, _ = _run(case, np.random.default_rng(5), AF.rectified_linear, 1)
    assert engine == "direct panel"
    np.testing.assert_array_equal(y, forced)


CHILD = """
import os, sys
import numpy as np, bnns_py
sys.path.insert(0, '.')
import test_direct_panel as t
for forced, cases in ((True, t.CASES + t.STRIDED_CASES + t.UNEVEN_CASES), (False, t.AUTO_CASES)):
    if forced:
        os.environ["BNNS_PY_PORTABLE_ENGINE"] = "panel"
    else:
        os.environ.pop("BNNS_PY_PORTABLE_ENGINE", None)
    for case in cases:
        results = []
        for n_threads in (1, 2):
            engine, y, expected = t._run(case, np.random.default_rng(1), bnns_py.ActivationFunction.clamp((-1.0, 1.5)),
                                         n_threads)
            assert (engine == "direct panel") == (forced or t._chosen(case)), (case, engine)
            np.testing.assert_allclose(y, expected, rtol=1e-4, atol=t._tolerance(case[1] * case[5] ** 2))
            results.append(y)
        np.testing.assert_array_equal(results[0], results[1])
print("ok")
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_panel_on_other_tiers(isa):
    """The same source on the 16-register tiers (tiles of 4 channels; 8-lane vectors on AVX2), strided
    layers included."""
    run_child_on_tier(isa, CHILD)
