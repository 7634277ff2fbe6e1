"""Data types other than float32: the portable library's Float16 / BFloat16 conversions, and
convolutions whose input, weights, bias or output are Float16, BFloat16, Int8 or UInt8 (computed
in float32, see bnns_py/_portable/convert.h), against the float64 reference."""
import numpy as np
import pytest

import bnns_py
from bnns_py import (ConvolutionLayer, ConvolutionPadding, ConvolutionType, DataType, FilterParameters,
                     NDArrayDescriptor, Shape, ffi, reference)
from bnns_py.enums import Flags, bfloat16_bits_to_float32, float32_to_bfloat16_bits

# Tests of the portable backend's own decisions (exact rounding, refusals, its C checks) skip on
# Accelerate; the others also run through bnns-py's Accelerate branches (.ci/accelerate_mode.sh).
portable_decision = pytest.mark.skipif(not bnns_py.get_backend().is_portable,
                                       reason="conversions and data-type decisions of the portable backend")
accelerate_refuses_bfloat16 = pytest.mark.skipif(not bnns_py.get_backend().is_portable,
                                                 reason="bnns-py refuses BFloat16 descriptors on Accelerate")

F16, F32, BF16, I8, U8 = (DataType.float16, DataType.float32, DataType.bfloat16, DataType.int8, DataType.uint8)


@pytest.fixture(scope="module")
def lib():
    if not bnns_py.get_backend().is_portable:
        pytest.skip("the portable library's own C functions and checks")
    return bnns_py.get_backend("portable").lib


def _c_f32_to_f16(lib, values):
    return np.array([lib.bnns_portable_f32_to_f16(float(v)) for v in np.asarray(values, np.float32)], np.uint16)


def _c_f32_to_bf16(lib, values):
    return np.array([lib.bnns_portable_f32_to_bf16(float(v)) for v in np.asarray(values, np.float32)], np.uint16)


# ---- scalar conversions ------------------------------------------------------------------------

def test_f16_to_f32_exhaustive_matches_numpy(lib):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    actual = np.array([lib.bnns_portable_f16_to_f32(int(b)) for b in bits], np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(actual), nan)
    assert np.array_equal(np.signbit(actual), np.signbit(expected))
    np.testing.assert_array_equal(actual[~nan].view(np.uint32), expected[~nan].view(np.uint32))


SPECIAL = [
    0.0, -0.0, 1.0, -1.0, 65504.0, 65519.996, 65520.0, -65520.0, 1e6, 2.0 ** -14, 2.0 ** -24,
    2.0 ** -25, np.nextafter(np.float32(2.0 ** -25), np.float32(1)), 1.5 * 2.0 ** -24, 2.5 * 2.0 ** -24,
    2.0 ** -26, 1e-30, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 2048 + 1, 2048 + 3, 0.1, 1 / 3,
    (2.0 ** -14) - 2.0 ** -25, np.inf, -np.inf, 3.0e-5, -6.1e-5,
]


def test_f32_to_f16_special_values_match_numpy(lib):
    values = np.array(SPECIAL, np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    actual = _c_f32_to_f16(lib, values)
    for v, e, a in zip(values, expected, actual):
        assert e == a, f"{v!r}: C gives {a:#06x}, numpy {e:#06x}"
    # named cases, so the table above cannot silently agree with a wrong numpy
    assert actual[values.tolist().index(65504.0)] == 0x7BFF
    assert actual[values.tolist().index(65520.0)] == 0x7C00  # halfway to 65536: ties to even = inf
    assert actual[values.tolist().index(np.float32(2.0 ** -24))] == 0x0001  # smallest subnormal
    assert actual[values.tolist().index(np.float32(2.0 ** -25))] == 0x0000  # tie -> even (0)
    assert actual[values.tolist().index(np.float32(1.5 * 2.0 ** -24))] == 0x0002  # tie -> even
    assert actual[values.tolist().index(np.float32(2.5 * 2.0 ** -24))] == 0x0002  # tie -> even
    assert actual[values.tolist().index(np.float32(1 + 2.0 ** -11))] == 0x3C00  # tie -> 1.0
    assert actual[values.tolist().index(np.float32(1 + 3 * 2.0 ** -11))] == 0x3C02


def test_f32_to_f16_nan_stays_nan(lib):
    for bits in (0x7FC00000, 0x7F800001, 0xFFC00000, 0x7FFFFFFF, 0x7F802000):
        value = np.array([bits], np.uint32).view(np.float32)[0]
        half = int(_c_f32_to_f16(lib, [value])[0])
        assert half & 0x7C00 == 0x7C00 and half & 0x3FF != 0, hex(bits)
        assert (half >> 15) == (bits >> 31)


def test_f32_to_f16_every_tie_and_neighbour_matches_numpy(lib):
    # every midpoint between adjacent finite float16 values (the ties), and a float32 step either side
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)
    values = np.concatenate([mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(np.inf))])
    values = np.concatenate([values, -values])
    expected = values.astype(np.float16).view(np.uint16)
    actual = _c_f32_to_f16(lib, values)
    wrong = np.flatnonzero(actual != expected)
    assert wrong.size == 0, f"{wrong.size} mismatches, first at {values[wrong[0]]!r}"


def test_f32_to_f16_random_values_match_numpy(lib):
    rng = np.random.default_rng(7)
    values = (rng.choice([-1, 1], 50000) * np.exp2(rng.uniform(-27, 17, 50000))).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_c_f32_to_f16(lib, values), expected)


def test_bf16_conversions(lib):
    cases = [(1.0, 0x3F80), (-2.0, 0xC000), (1 + 2.0 ** -8, 0x3F80), (1 + 3 * 2.0 ** -8, 0x3F82),
             (1 + 2.0 ** -8 + 2.0 ** -20, 0x3F81), (3.3895314e38, 0x7F7F), (3.3961776e38, 0x7F80),
             (np.inf, 0x7F80), (-np.inf, 0xFF80), (1e-45, 0x0000), (0.0, 0x0000), (-0.0, 0x8000)]
    values = np.array([v for v, _ in cases], np.float32)
    actual = _c_f32_to_bf16(lib, values)
    np.testing.assert_array_equal(actual, np.array([b for _, b in cases], np.uint16))
    np.testing.assert_array_equal(float32_to_bfloat16_bits(values), actual)  # the Python helper agrees
    nan = int(_c_f32_to_bf16(lib, [np.nan])[0])
    assert nan & 0x7F80 == 0x7F80 and nan & 0x7F
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    # (NaNs compared as NaNs: a signalling NaN returned through a Python float comes back quiet)
    back = np.array([lib.bnns_portable_bf16_to_f32(int(b)) for b in bits], np.float32)
    expected = (bits.astype(np.uint32) << 16).view(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(back), nan)
    np.testing.assert_array_equal(back[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    np.testing.assert_array_equal(bfloat16_bits_to_float32(bits).view(np.uint32), expected.view(np.uint32))


def test_bf16_rounding_matches_torch(lib):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    with np.errstate(over="ignore"):
        values = (rng.standard_normal(20000) * np.exp2(rng.integers(-130, 128, 20000))).astype(np.float32)
    values[:3] = [np.inf, -np.inf, 0.0]
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(_c_f32_to_bf16(lib, values), expected)
    np.testing.assert_array_equal(float32_to_bfloat16_bits(values), expected)


# ---- convolutions -----------------------------------------------------------------------------

def _typed(values, data_type, scale=1.0, bias=0.0):
    """(array holding `values` in data_type, the float64 values BNNS reads from it)."""
    values = np.asarray(values, np.float64)
    if data_type == F32:
        array = values.astype(np.float32)
        return array, array.astype(np.float64)
    if data_type == F16:
        array = values.astype(np.float16)
        return array, array.astype(np.float64)
    if data_type == BF16:
        array = float32_to_bfloat16_bits(values.astype(np.float32))
        return array, bfloat16_bits_to_float32(array).astype(np.float64)
    info = np.iinfo(data_type.numpy_dtype)
    array = np.clip(np.rint((values - bias) / scale), info.min, info.max).astype(data_type.numpy_dtype)
    return array, (scale or 1.0) * array.astype(np.float64) + bias


def _as_float64(array, data_type):
    if data_type == BF16:
        return bfloat16_bits_to_float32(array).astype(np.float64)
    return array.astype(np.float64)


def _layer(in_type, w_type, out_type, bias_type, x_chw, w_oihw, b, *, padding=(1, 1), stride=(1, 1),
           client=False, in_scale=1.0, in_bias=0.0, w_scale=1.0, w_bias=0.0, in_stride=(0, 0, 0),
           out_stride=(0, 0, 0)):
    """A standard convolution of these types; returns (layer, float64 weights, float64 bias, out (C,H,W))."""
    c, h, w = x_chw
    o, _, kh, kw = w_oihw.shape
    out_h = (h + 2 * padding[1] - kh) // stride[1] + 1
    out_w = (w + 2 * padding[0] - kw) // stride[0] + 1
    w_array, w64 = _typed(w_oihw, w_type, w_scale, w_bias)
    weights = NDArrayDescriptor(w_array.reshape(-1), Shape.convolution_weights_oihw(kw, kh, w_oihw.shape[1], o),
                                w_type, data_scale=w_scale, data_bias=w_bias)
    bias = b64 = None
    if b is not None:
        b_array, b64 = _typed(b, bias_type)
        bias = NDArrayDescriptor(b_array, Shape.vector(o), bias_type)
    layer = ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=in_type, shape=Shape.image_chw(w, h, c, stride=in_stride),
                          data_scale=in_scale, data_bias=in_bias),
        weights,
        NDArrayDescriptor(data_type=out_type, shape=Shape.image_chw(out_w, out_h, o, stride=out_stride)),
        bias, ConvolutionPadding.symmetric(*padding), stride=stride,
        filter_parameters=FilterParameters(flags=Flags.use_client_pointer) if client else None)
    return layer, w_array, w64, b64, (o, out_h, out_w)


def _output_array(out_type, shape):
    if out_type == BF16:
        return np.full(shape, 0xFFFF, np.uint16)
    return np.full(shape, np.nan, out_type.numpy_dtype)


UNIT = {F32: 2.0 ** -24, F16: 2.0 ** -11, BF16: 2.0 ** -8}  # half an ulp, relative


def _check(actual64, expected, out_type, reduction, what):
    """|actual - expected| <= float32 accumulation error + rounding to out_type (half an ulp)."""
    scale = max(1.0, float(np.abs(expected).max()))
    accumulation = 1e-5 * np.sqrt(reduction) * scale
    bound = UNIT[out_type] * np.abs(expected) * (1 + 1e-3) + accumulation
    error = np.abs(actual64 - expected)
    assert np.all(error <= bound), f"{what}: max error {error.max():.3g}, worst excess {(error - bound).max():.3g}"
    return float((error / np.maximum(np.abs(expected), 1e-3)).max())


COMBINATIONS = [
    # (input, weights, output, bias)
    (F16, F16, F16, F16),
    (BF16, BF16, BF16, BF16),
    (F16, F32, F16, F32),
    (BF16, F32, BF16, F32),
    (F32, F16, F32, F16),
    (F16, F16, F32, F32),
    (F32, F32, F16, F32),
    (BF16, BF16, F32, BF16),
    (F16, BF16, BF16, F16),
]


@pytest.mark.parametrize("client", [False, True], ids=["copied", "client"])
@pytest.mark.parametrize("types", COMBINATIONS, ids=lambda t: "-".join(x.name for x in t))
def test_convolution_types_match_reference(types, client, rng, no_filter_leaks):
    in_type, w_type, out_type, bias_type = types
    if BF16 in types and not bnns_py.get_backend().is_portable:
        pytest.skip("bnns-py refuses BFloat16 descriptors on Accelerate")
    batch, c, h, w = 3, 4, 9, 8
    x = rng.standard_normal((batch, c, h, w)) * 2
    weight = rng.standard_normal((5, c, 3, 3)) * 0.5
    bias = rng.standard_normal(5)
    layer, _, w64, b64, out_chw = _layer(in_type, w_type, out_type, bias_type, (c, h, w), weight, bias,
                                         client=client)
    with layer:
        x_array, x64 = _typed(x, in_type)
        out = _output_array(out_type, (batch,) + out_chw)
        layer.apply(batch, x_array, out)
    expected = reference.conv2d(x64, w64, b64, padding=(1, 1, 1, 1))
    assert out.shape == expected.shape
    actual = _as_float64(out, out_type)
    assert np.all(np.isfinite(actual))
    _check(actual, expected, out_type, c * 9, str(types))


@accelerate_refuses_bfloat16
def test_layer_attributes_and_repr_with_other_types(no_filter_leaks):
    layer, *_ = _layer(BF16, F16, BF16, I8, (2, 5, 5), np.ones((3, 2, 3, 3)), np.ones(3), stride=(2, 1))
    with layer:
        assert layer.stride == (2, 1)
        assert layer.input_descriptor.data_type == BF16 and layer.weights.data_type == F16
        text = repr(layer)
        assert "incompletely" not in text and "bfloat16" in text and "int8" in text


@portable_decision
def test_float16_output_is_the_float32_result_rounded(rng, no_filter_leaks):
    # the same filter in float32 and with a Float16 output: the half results are exactly the
    # float32 results rounded to nearest even (float32 accumulation, one final rounding)
    x = (rng.standard_normal((2, 3, 7, 6)) * 3).astype(np.float16)
    weight = (rng.standard_normal((4, 3, 3, 3))).astype(np.float16)
    bias = rng.standard_normal(4).astype(np.float16)
    layer16, *_ = _layer(F16, F16, F16, F16, (3, 7, 6), weight.astype(np.float64), bias.astype(np.float64))
    layer32, *_ = _layer(F32, F32, F32, F32, (3, 7, 6), weight.astype(np.float64), bias.astype(np.float64))
    with layer16, layer32:
        out16 = np.empty((2, 4, 7, 6), np.float16)
        out32 = np.empty((2, 4, 7, 6), np.float32)
        layer16.apply(2, x, out16)
        layer32.apply(2, x.astype(np.float32), out32)
    np.testing.assert_array_equal(out16.view(np.uint16), out32.astype(np.float16).view(np.uint16))
    bf_layer, *_ = _layer(F32, F32, BF16, F32, (3, 7, 6), weight.astype(np.float64), bias.astype(np.float64))
    with bf_layer:
        out_bf = np.empty((2, 4, 7, 6), np.uint16)
        bf_layer.apply(2, x.astype(np.float32), out_bf)
    np.testing.assert_array_equal(out_bf, float32_to_bfloat16_bits(out32))


@pytest.mark.parametrize("in_type,scale,offset", [(I8, 0.05, 0.25), (U8, 0.02, -2.5), (I8, 0.0, 0.0),
                                                  (U8, 1.0, 0.0)],
                         ids=["int8", "uint8", "int8-scale0", "uint8-plain"])
def test_integer_input_is_dequantized(in_type, scale, offset, rng, no_filter_leaks):
    info = np.iinfo(in_type.numpy_dtype)
    q = rng.integers(info.min, info.max, size=(2, 3, 6, 7), endpoint=True).astype(in_type.numpy_dtype)
    x64 = (scale or 1.0) * q.astype(np.float64) + offset  # a data_scale of 0 counts as 1
    weight = rng.standard_normal((4, 3, 3, 3)) * 0.5
    bias = rng.standard_normal(4)
    layer, _, w64, b64, out_chw = _layer(in_type, F32, F32, F32, (3, 6, 7), weight, bias, in_scale=scale,
                                         in_bias=offset)
    with layer:
        out = np.empty((2,) + out_chw, np.float32)
        layer.apply(2, q, out)
    expected = reference.conv2d(x64, w64, b64, padding=(1, 1, 1, 1))
    _check(out.astype(np.float64), expected, F32, 27, in_type.name)
    # the scale really is applied: without it the result would be far off
    if scale not in (0.0, 1.0):
        wrong = reference.conv2d(q.astype(np.float64), w64, b64, padding=(1, 1, 1, 1))
        assert np.abs(out - wrong).max() > 1.0


@pytest.mark.parametrize("client", [False, True], ids=["copied", "client"])
def test_integer_weights_are_dequantized(client, rng, no_filter_leaks):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    scale, offset = 0.03, 0.1
    # weights inside the range the int8 grid covers (offset + scale * [-128, 127]), so that
    # quantizing them only rounds (an error of at most scale / 2) and never clips
    weight = rng.uniform(offset - 128 * scale, offset + 127 * scale, (3, 2, 3, 3))
    layer, _, w64, _, out_chw = _layer(F32, I8, F16, F32, (2, 5, 5), weight, None, client=client,
                                       w_scale=scale, w_bias=offset)
    with layer:
        out = np.empty((1,) + out_chw, np.float16)
        layer.apply(1, x, out)
    expected = reference.conv2d(x.astype(np.float64), w64, None, padding=(1, 1, 1, 1))
    assert np.abs(w64 - weight).max() <= scale / 2 * (1 + 1e-9)  # the int8 weights are the originals rounded
    _check(out.astype(np.float64), expected, F16, 18, "int8 weights")


def test_client_float16_weights_are_read_at_every_call(rng, no_filter_leaks):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float16)
    weight = rng.standard_normal((3, 2, 3, 3))
    bias = rng.standard_normal(3)
    layer, w_array, _, _, out_chw = _layer(F16, F16, F16, F16, (2, 6, 6), weight, bias, client=True)
    with layer:
        first = np.empty((1,) + out_chw, np.float16)
        layer.apply(1, x, first)
        w_array[:] = (2 * w_array.astype(np.float32)).astype(np.float16)  # the caller changes its weights
        layer.bias.data[:] = 0
        second = np.empty_like(first)
        layer.apply(1, x, second)
    expected = reference.conv2d(x.astype(np.float64), w_array.reshape(weight.shape).astype(np.float64), None,
                                padding=(1, 1, 1, 1))
    _check(second.astype(np.float64), expected, F16, 18, "changed client weights")
    assert not np.array_equal(first, second)


def test_strided_float16_input_and_output(rng, no_filter_leaks):
    # gaps in both images: the values in the gaps are neither read (NaN there) nor written
    c, h, w = 2, 5, 6
    in_stride, out_stride = (1, 8, 48), (2, 16, 96)
    x = rng.standard_normal((c, h, w))
    weight = rng.standard_normal((3, c, 3, 3))
    layer, *_ = _layer(F16, F16, F16, F32, (c, h, w), weight, np.zeros(3), in_stride=in_stride,
                       out_stride=out_stride)
    with layer:
        x_buffer = np.full(layer.input_descriptor.shape.batch_stride, np.nan, np.float16)
        for ci in range(c):
            for yi in range(h):
                x_buffer[ci * 48 + yi * 8: ci * 48 + yi * 8 + w] = x[ci, yi]
        out_buffer = np.full(layer.output_descriptor.shape.batch_stride, -7, np.float16)
        layer.apply(1, x_buffer, out_buffer)
    grid = out_buffer.reshape(3, 6, 16)
    actual = grid[:, :5, 0:12:2].astype(np.float64)
    expected = reference.conv2d(x.astype(np.float16).astype(np.float64)[None],
                                weight.astype(np.float16).astype(np.float64), None, padding=(1, 1, 1, 1))[0]
    _check(actual, expected, F16, 2 * 9, "strided")
    untouched = np.ones(grid.shape, bool)
    untouched[:, :5, 0:12:2] = False
    assert np.all(grid[untouched] == -7)


# ---- what is refused, and where ------------------------------------------------------------------

@accelerate_refuses_bfloat16
def test_python_refuses_wrong_array_dtypes(rng, no_filter_leaks):
    weight = rng.standard_normal((2, 1, 3, 3))
    layer, *_ = _layer(F16, F16, F16, None, (1, 4, 4), weight, None)
    with layer:
        with pytest.raises(TypeError, match="input has dtype float32 but the layer's input data type is float16"):
            layer.apply(1, np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.float16))
        with pytest.raises(TypeError, match="output has dtype float32"):
            layer.apply(1, np.zeros((1, 1, 4, 4), np.float16), np.zeros((1, 2, 4, 4), np.float32))
    bf_layer, *_ = _layer(BF16, F32, BF16, None, (1, 4, 4), weight, None)
    with bf_layer:
        with pytest.raises(TypeError, match="uint16 array of bfloat16 bit patterns"):
            bf_layer.apply(1, np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.uint16))
        with pytest.raises(TypeError, match="data_type is bfloat16"):
            NDArrayDescriptor(np.zeros(4, np.float32), Shape.vector(4), BF16)


def _descriptors(in_type, w_type, out_type):
    return dict(input=NDArrayDescriptor(data_type=in_type, shape=Shape.image_chw(4, 4, 1)),
                weights=NDArrayDescriptor(_typed(np.ones(18), w_type)[0], Shape.convolution_weights_oihw(3, 3, 1, 2),
                                          w_type),
                output=NDArrayDescriptor(data_type=out_type, shape=Shape.image_chw(2, 2, 2)))


@pytest.mark.parametrize("in_type,w_type,out_type,conv_type,match", [
    (F16, F32, F32, ConvolutionType.transposed, "input data type float16 is not supported for transposed"),
    (F32, F32, I8, ConvolutionType.standard, "output data type int8 is not supported on the portable"),
    (DataType.int16, F32, F32, ConvolutionType.standard, "input data type int16 is not supported"),
    (F32, DataType.int32, F32, ConvolutionType.standard, "weights data type int32 is not supported"),
], ids=["transposed-f16", "int8-output", "int16-input", "int32-weights"])
def test_python_refuses_unsupported_types_before_c(in_type, w_type, out_type, conv_type, match, no_filter_leaks):
    if "portable" in match and not bnns_py.get_backend().is_portable:
        pytest.skip("a refusal of the portable backend")
    d = _descriptors(in_type, w_type, out_type)
    if conv_type == ConvolutionType.transposed:
        d["input"], d["output"] = (NDArrayDescriptor(data_type=in_type, shape=Shape.image_chw(2, 2, 1)),
                                   NDArrayDescriptor(data_type=out_type, shape=Shape.image_chw(4, 4, 2)))
    with pytest.raises(TypeError, match=match):
        ConvolutionLayer(conv_type, d["input"], d["weights"], d["output"])


def _c_params(in_type, w_type, out_type, bias_type=None, transposed=False):
    d = _descriptors(in_type, w_type, out_type)
    params = ffi.new("BNNSLayerParametersConvolution *")
    params.i_desc = d["input"].c_descriptor[0]
    params.o_desc = d["output"].c_descriptor[0]
    params.w_desc = d["weights"].c_descriptor[0]
    if transposed:  # 2x2x2 -> 4x4x1
        params.i_desc.size[0:3] = [2, 2, 2]
        params.o_desc.size[0:3] = [4, 4, 1]
        params.w_desc.size[2], params.w_desc.size[3] = 2, 1
    keep = [d]
    if bias_type is not None:
        b = _typed(np.ones(2), bias_type)[0]
        params.bias = NDArrayDescriptor(b, Shape.vector(2), bias_type).c_descriptor[0]
        keep.append(b)
    return params, keep


@pytest.mark.parametrize("types,transposed,reason", [
    ((F16, F32, F32), True, "transposed convolution takes Float32 descriptors only"),
    ((F32, F16, F32), True, "w_desc is Float16"),
    ((F32, F32, I8), False, "o_desc data type Int8 not supported"),
    ((F32, F32, U8), False, "o_desc data type UInt8 not supported"),
    ((DataType.int16, F32, F32), False, "i_desc data type Int16 not supported"),
    ((F32, DataType.uint32, F32), False, "w_desc data type UInt32 not supported"),
    ((DataType.int4, F32, F32), False, "i_desc data type 0x20004 not supported"),
    ((F32, F32, F32, DataType.int32), False, "bias data type Int32 not supported"),
], ids=["transposed-f16-input", "transposed-f16-weights", "int8-output", "uint8-output", "int16-input",
        "uint32-weights", "int4-input", "int32-bias"])
def test_c_refuses_unsupported_types_with_a_reason(lib, types, transposed, reason):
    backend = bnns_py.get_backend("portable")
    before = backend.live_filter_count()
    params, keep = _c_params(*types, transposed=transposed)
    create = lib.BNNSFilterCreateLayerTransposedConvolution if transposed else lib.BNNSFilterCreateLayerConvolution
    assert create(params, ffi.NULL) == ffi.NULL
    assert reason in backend.last_error()
    assert backend.live_filter_count() == before


def test_c_float16_filter_still_checks_the_layer(lib):
    # the data-type wrapper hands every other check to the Float32 path
    params, keep = _c_params(F16, F16, F16)
    params.o_desc.size[2] = 3  # weights have 2 output channels
    assert lib.BNNSFilterCreateLayerConvolution(params, ffi.NULL) == ffi.NULL
    assert "output channels" in bnns_py.get_backend("portable").last_error()


def test_backward_is_refused_for_other_types(rng, lib, no_filter_leaks):
    weight = rng.standard_normal((2, 1, 3, 3))
    layer, *_ = _layer(F16, F16, F16, F32, (1, 4, 4), weight, np.zeros(2), client=True)
    with layer:
        dy = np.ones((1, 2, 4, 4), np.float16)
        with pytest.raises(TypeError, match="apply_backward needs float32 descriptors"):
            layer.apply_backward(1, np.zeros((1, 1, 4, 4), np.float16), None, dy, None,
                                 bias_gradient=np.zeros(2, np.float32))
        # and the C library refuses it too, with its reason
        db = NDArrayDescriptor(np.zeros(2, np.float32), Shape.vector(2))
        dy_desc = NDArrayDescriptor(np.ones(32, np.float32), Shape.image_chw(4, 4, 2))
        status = lib.BNNSFilterApplyBackwardBatch(layer.bnns_filter, 1, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, 0,
                                                  dy_desc.c_descriptor, 0, ffi.NULL, db.c_descriptor)
        assert status == -1
        assert "backward needs a filter whose descriptors are all Float32" in layer.backend.last_error()


def test_create_with_float16_fails_cleanly_without_leaks(lib, no_filter_leaks):
    params, keep = _c_params(F16, F16, F16)
    params.w_desc.data = ffi.NULL
    assert lib.BNNSFilterCreateLayerConvolution(params, ffi.NULL) == ffi.NULL
    assert "w_desc.data is NULL" in bnns_py.get_backend("portable").last_error()


@accelerate_refuses_bfloat16
def test_concurrent_calls_on_a_client_float16_layer(rng, no_filter_leaks):
    # per-call conversions of client weights use a workspace of their own: threads do not mix
    from concurrent.futures import ThreadPoolExecutor
    weight = rng.standard_normal((4, 3, 3, 3))
    layer, *_ = _layer(F16, F16, BF16, F16, (3, 12, 12), weight, rng.standard_normal(4), client=True)
    inputs = [rng.standard_normal((2, 3, 12, 12)).astype(np.float16) for _ in range(8)]
    with layer:
        expected = []
        for x in inputs:
            out = np.empty((2, 4, 12, 12), np.uint16)
            layer.apply(2, x, out)
            expected.append(out)

        def run(k):
            out = np.empty((2, 4, 12, 12), np.uint16)
            for _ in range(5):
                layer.apply(2, inputs[k], out)
            return out

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, range(len(inputs))))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
