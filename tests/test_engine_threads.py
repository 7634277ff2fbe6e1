"""The portable engine's parallel paths (per-worker tasks over images, column blocks, output-channel
and input-channel chunks, the padded-plane depthwise kernel) against the float64 reference, at
1, 2 and 3 worker threads. Shapes are large enough that the work is really split."""
import numpy as np
import pytest

from bnns_py import (ActivationFunction as AF, ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType,
                     NDArrayDescriptor, Shape, reference)
from bnns_py.functional import transposed_weight_to_bnns

from conftest import (backward_into_nan, client_layer, input_batch, random_array, row_gap_strides, standard_case_layer,
                      transposed_case_layer)

THREADS = [1, 2, 3]


# (batch, cin, cout, h, w, k, stride, pad (l, r, t, b), dilation, groups)
STANDARD = [
    (1, 32, 48, 40, 36, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # row blocks split over workers
    (1, 256, 200, 5, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),    # output-channel chunks
    (3, 16, 24, 33, 29, (3, 2), (2, 1), (0, 2, 1, 0), (1, 2), 2),    # images over workers, groups
    (2, 64, 32, 40, 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),    # 1x1: the input is the column matrix
    (1, 3, 32, 120, 100, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),   # stem-like, many blocks
]
DEPTHWISE = [
    (1, 40, 40, 37, 45, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (2, 24, 24, 30, 31, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (1, 16, 32, 29, 35, (5, 3), (1, 2), (2, 0, 1, 3), (2, 1)),       # channel multiplier 2, dilation
    (3, 48, 48, 14, 14, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (1, 8, 8, 9, 70, (3, 5), (3, 3), (0, 4, 2, 2), (1, 2)),          # stride 3: the general kernel
    (1, 32, 32, 5, 3, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    (1, 4, 4, 20, 20, (17, 17), (1, 1), (8, 8, 8, 8), (1, 1)),       # too many taps for the fast kernels
]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("case", STANDARD + [c + (c[1],) for c in DEPTHWISE])
def test_forward_matches_reference(case, n_threads, rng, no_filter_leaks):
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x, weight, bias, layer, (oh, ow) = standard_case_layer(rng, case, AF.rectified_linear, n_threads)
    with layer:
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
    expected = reference.conv2d(x, weight, bias, stride=stride, padding=pad, dilation=dil, groups=groups,
                                activation=AF.rectified_linear)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.sqrt(k[0] * k[1] * cin // groups))


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("case", [
    (1, 64, 32, 16, 16, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    (3, 16, 24, 9, 11, (3, 3), (1, 2), (0, 1, 1, 0), (1, 1), 1),
    (2, 32, 32, 12, 13, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32),   # depthwise: the flipped-kernel path
    (1, 16, 16, 10, 10, (5, 3), (1, 1), (0, 2, 4, 1), (1, 2), 16),
])
def test_transposed_forward_matches_reference(case, n_threads, rng, no_filter_leaks):
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x, torch_weight, bias, layer, (oh, ow) = transposed_case_layer(rng, case, AF.tanh, n_threads)
    with layer:
        y = np.full((n, cout, oh, ow), np.nan, np.float32)
        layer.apply(n, x, y)
    expected = reference.conv_transpose2d(x, torch_weight, bias, stride=stride, padding=pad, dilation=dil,
                                          groups=groups, activation=AF.tanh)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("case", [STANDARD[0], STANDARD[1], STANDARD[2], STANDARD[3],
                                  DEPTHWISE[0] + (DEPTHWISE[0][1],), DEPTHWISE[1] + (DEPTHWISE[1][1],),
                                  DEPTHWISE[2] + (DEPTHWISE[2][1],),
                                  # stride-1 depthwise: dx through the flipped-kernel depthwise kernel
                                  (2, 12, 12, 20, 23, (3, 5), (1, 1), (2, 1, 0, 3), (2, 1), 12),
                                  (1, 6, 6, 9, 9, (3, 3), (1, 1), (3, 0, 0, 0), (1, 1), 6),
                                  DEPTHWISE[6] + (DEPTHWISE[6][1],)])
def test_backward_matches_reference(case, n_threads, rng, no_filter_leaks):
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x, weight, bias, layer, (oh, ow) = standard_case_layer(rng, case, AF.identity, n_threads)
    with layer:
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = backward_into_nan(layer, n, x, y, dy, weight.shape, bias.shape)
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(x, weight, dy, stride=stride, padding=pad, dilation=dil,
                                                       groups=groups)
    depth = np.sqrt(n * oh * ow)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4 * np.sqrt(cout))
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=2e-5 * depth * 10)
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=2e-5 * depth * 10)


@pytest.mark.parametrize("n_threads", THREADS)
def test_transposed_backward_matches_reference(n_threads, rng, no_filter_leaks):
    case = n, cin, cout, h, w, k, stride, pad, _, _ = 2, 48, 24, 12, 10, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), 1
    x, torch_weight, bias, layer, (oh, ow) = transposed_case_layer(rng, case, AF.identity, n_threads)
    with layer:
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)
        dy = random_array(rng, y.shape)
        dx, dw, db = backward_into_nan(layer, n, x, y, dy, (cout, cin) + k, bias.shape)
    dx_ref, dw_ref, db_ref = reference.conv_transpose2d_backward(x, torch_weight, dy, stride=stride, padding=pad)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dw, transposed_weight_to_bnns(dw_ref, 1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_worker_pool_works_in_a_forked_child(rng, no_filter_leaks):
    """The child of a fork has none of the parent's pool threads: its first parallel call must
    start new ones rather than wait for ghosts."""
    import os
    case = STANDARD[0]
    n, cin, cout, h, w, k, stride, pad, dil, groups = case
    x = random_array(rng, (n, cin, h, w))
    weight = random_array(rng, (cout, cin) + k, 0.3)
    layer, (oh, ow) = client_layer(ConvolutionType.standard, cin, cout, h, w, k, stride, pad, dil, groups, weight, None,
                             AF.identity, 2)
    with layer:
        y = np.empty((n, cout, oh, ow), np.float32)
        layer.apply(n, x, y)  # the parent's pool is running now
        pid = os.fork()
        if pid == 0:  # child: exit status 0 only if the parallel call finishes with the same result
            try:
                y2 = np.empty_like(y)
                layer.apply(n, x, y2)
                os._exit(0 if np.array_equal(y, y2) else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("out_channels", [8, 40])
def test_oihw_pack32_weights(out_channels, rng, no_filter_leaks):
    """OIHW_Pack32: output channels in blocks of 32 (the last one zero-padded), the position in the
    block fastest, then kx, ky, input channel; sizes given as for plain OIHW."""
    from bnns_py import DataLayout
    cin, kh, kw = 5, 3, 2
    weight = random_array(rng, (out_channels, cin, kh, kw), 0.3)
    blocks = -(-out_channels // 32)
    packed = np.zeros((blocks * 32, cin, kh, kw), np.float32)
    packed[:out_channels] = weight
    packed = np.ascontiguousarray(packed.reshape(blocks, 32, cin, kh, kw).transpose(0, 2, 3, 4, 1)).reshape(-1)
    x = random_array(rng, (2, cin, 9, 7))
    layer = ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(7, 9, cin)),
        NDArrayDescriptor(packed, Shape((kw, kh, cin, out_channels), DataLayout.convolution_weights_oihw_pack32)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(6, 7, out_channels)),
        None, ConvolutionPadding.zero, AF.identity)
    with layer:
        y = np.full((2, out_channels, 7, 6), np.nan, np.float32)
        layer.apply(2, x, y)
    np.testing.assert_allclose(y, reference.conv2d(x, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height,width", [(1, 1), (3, 8), (8, 8), (12, 5), (13, 7), (9, 2)])
@pytest.mark.parametrize("dilation,pad", [((1, 1), (1, 1, 1, 1)), ((2, 3), (0, 3, 2, 1))])
def test_tiny_layers_computed_from_padded_planes(height, width, dilation, pad, rng, no_filter_leaks):
    """Rows of at most 8 outputs and little work: the direct small-layer kernel (8, 4 and 1-row tiles)."""
    cin, cout, k = 3, 5, (3, 2)
    x = random_array(rng, (2, cin, height + 4, width + 2))
    weight = random_array(rng, (cout, cin) + k, 0.5)
    bias = random_array(rng, (cout,))
    oh = height + 4 + pad[2] + pad[3] - dilation[0] * (k[0] - 1)
    ow = width + 2 + pad[0] + pad[1] - dilation[1] * (k[1] - 1)
    layer, shape = client_layer(ConvolutionType.standard, cin, cout, height + 4, width + 2, k, (1, 1), pad, dilation, 1,
                          weight, bias, AF.sigmoid, 1)
    assert shape == (oh, ow)
    with layer:
        y = np.full((2, cout, oh, ow), np.nan, np.float32)
        layer.apply(2, x, y)
    expected = reference.conv2d(x, weight, bias, padding=pad, dilation=dilation, activation=AF.sigmoid)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("row_gap", [0, 3])
@pytest.mark.parametrize("height,width", [(1, 1), (2, 5), (7, 15), (14, 14), (5, 16), (3, 17)])
def test_depthwise_3x3_rows_that_fit_a_vector(height, width, row_gap, n_threads, rng, no_filter_leaks):
    """3x3 / stride 1 / padding 1 depthwise on planes at most 16 wide (the AVX-512 kernel that keeps
    rows in registers; 17 wide is past it), with packed input rows or rows further apart than their
    width: forward with bias and ReLU, the input gradient (for a packed input, the same kind of
    layer) and the weight gradient."""
    n, c, h, w = 3, 6, height, width
    weight, bias = random_array(rng, (c, 1, 3, 3), 0.5), random_array(rng, (c,))
    layer, (oh, ow) = client_layer(ConvolutionType.standard, c, c, h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), c,
                                   weight, bias, AF.rectified_linear, n_threads,
                                   input_strides=row_gap_strides(h, w, row_gap))
    assert (oh, ow) == (h, w)
    wide_x = random_array(rng, (n, c, h, w + row_gap))
    wide_dx = np.full(wide_x.shape, np.nan, np.float32)
    x = wide_x[..., :w]
    with layer:
        y = np.full((n, c, oh, ow), np.nan, np.float32)
        layer.apply(n, input_batch(layer, wide_x, n), y)
        dy = random_array(rng, y.shape) * (y > 0)
        dw = np.full(weight.shape, np.nan, np.float32)
        layer.apply_backward(n, input_batch(layer, wide_x, n), y, dy, input_batch(layer, wide_dx, n), dw)
    np.testing.assert_allclose(y, reference.conv2d(x, weight, bias, padding=1, groups=c, activation=AF.rectified_linear),
                               rtol=1e-5, atol=1e-5)
    dx_ref, dw_ref, _ = reference.conv2d_backward(x, weight, dy, padding=1, groups=c)
    np.testing.assert_allclose(wide_dx[..., :w], dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5 * np.sqrt(n * h * w))
