"""The C API itself, called through bnns_py.ffi: the behaviour BNNS documents and the portable
library reproduces (NULL on invalid parameters, -1 on failed apply, padding precedence, strides)."""
import numpy as np
import pytest

from bnns_py import ffi, reference

from conftest import CountingAllocator, assert_close_to_reference, random_array

FLOAT32 = 0x10020
IMAGE_CHW = 0x30000
OIHW = 0x40000
VECTOR = 0x10000


def conv_params(in_whc, out_whc, weights, bias=None, **fields):
    params = ffi.new("BNNSLayerParametersConvolution *")
    for desc, (w, h, c) in ((params.i_desc, in_whc), (params.o_desc, out_whc)):
        desc.layout = IMAGE_CHW
        desc.size[0:3] = [w, h, c]
        desc.data_type = FLOAT32
    out_c, in_c, k_h, k_w = weights.shape
    params.w_desc.layout = OIHW
    params.w_desc.size[0:4] = [k_w, k_h, in_c, out_c]
    params.w_desc.data_type = FLOAT32
    params.w_desc.data = ffi.from_buffer(weights)
    if bias is not None:
        params.bias.layout = VECTOR
        params.bias.size[0] = bias.size
        params.bias.data_type = FLOAT32
        params.bias.data = ffi.from_buffer(bias)
    for name, value in fields.items():
        setattr(params, name, value)
    return params


@pytest.fixture
def lib(backend):
    return backend.lib


@pytest.fixture
def live_check(backend):
    before = backend.live_filter_count() if backend.is_portable else None
    yield
    if before is not None:
        assert backend.live_filter_count() == before


def create(lib, params, filter_params=ffi.NULL):
    return lib.BNNSFilterCreateLayerConvolution(params, filter_params)


def test_symmetric_padding_wins_over_pad_array(lib, rng, live_check):
    weights = random_array(rng, (2, 1, 3, 3))
    x = random_array(rng, (1, 1, 5, 5))
    # x_padding=1 with pad[] also set: BNNS ignores pad[] whenever x/y_padding is nonzero.
    params = conv_params((5, 5, 1), (5, 5, 2), weights, x_padding=1, y_padding=1, pad=[3, 0, 0, 2])
    handle = create(lib, params)
    assert handle != ffi.NULL
    out = np.empty((1, 2, 5, 5), np.float32)
    assert lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(out)) == 0
    lib.BNNSFilterDestroy(handle)
    assert_close_to_reference(out, reference.conv2d(x, weights, padding=1), 9)


def test_pad_array_is_left_right_up_down(lib, rng, live_check):
    weights = random_array(rng, (1, 1, 2, 2))
    x = random_array(rng, (1, 1, 4, 4))
    params = conv_params((4, 4, 1), (6, 4, 1), weights, pad=[2, 1, 0, 1])
    handle = create(lib, params)
    out = np.empty((1, 1, 4, 6), np.float32)
    assert lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(out)) == 0
    lib.BNNSFilterDestroy(handle)
    assert_close_to_reference(out, reference.conv2d(x, weights, padding=(2, 1, 0, 1)), 4)


def test_zero_stride_and_dilation_mean_one(lib, rng, live_check):
    weights = random_array(rng, (1, 2, 3, 3))
    x = random_array(rng, (1, 2, 6, 6))
    params = conv_params((6, 6, 2), (4, 4, 1), weights, x_stride=0, y_stride=0,
                         x_dilation_stride=0, y_dilation_stride=1, groups=0)
    handle = create(lib, params)
    assert handle != ffi.NULL
    out = np.empty((1, 1, 4, 4), np.float32)
    assert lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(out)) == 0
    lib.BNNSFilterDestroy(handle)
    assert_close_to_reference(out, reference.conv2d(x, weights), 18)


def test_output_smaller_than_maximum_is_accepted(lib, rng, live_check):
    # The macOS 14 SDK rule is an inequality: the output may use less than all of the input.
    weights = random_array(rng, (1, 1, 3, 3))
    x = random_array(rng, (1, 1, 7, 7))
    handle = create(lib, conv_params((7, 7, 1), (3, 4, 1), weights))
    assert handle != ffi.NULL
    out = np.empty((1, 1, 4, 3), np.float32)
    assert lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(out)) == 0
    lib.BNNSFilterDestroy(handle)
    assert_close_to_reference(out, reference.conv2d(x, weights)[:, :, :4, :3], 9)


def test_apply_batch_with_padded_batch_strides(lib, rng, live_check):
    weights = random_array(rng, (3, 2, 3, 3))
    bias = random_array(rng, (3,))
    x = random_array(rng, (4, 2, 5, 5))
    handle = create(lib, conv_params((5, 5, 2), (3, 3, 3), weights, bias))
    in_stride, out_stride = 2 * 25 + 7, 27 + 5
    x_storage = np.full((4, in_stride), np.nan, np.float32)
    x_storage[:, :50] = x.reshape(4, 50)
    out_storage = np.full((4, out_stride), -7.0, np.float32)
    status = lib.BNNSFilterApplyBatch(handle, 4, ffi.from_buffer(x_storage), in_stride,
                                      ffi.from_buffer(out_storage), out_stride)
    lib.BNNSFilterDestroy(handle)
    assert status == 0
    assert np.all(out_storage[:, 27:] == -7.0), "wrote past an item"
    assert_close_to_reference(out_storage[:, :27].reshape(4, 3, 3, 3),
                              reference.conv2d(x, weights, bias), 18)


INVALID = {
    "input layout not ImageCHW": lambda p: setattr(p.i_desc, "layout", VECTOR),
    "output channels differ from weights": lambda p: p.o_desc.size.__setitem__(2, 5),
    "input channels differ from weights": lambda p: p.i_desc.size.__setitem__(2, 3),
    "output too large for input": lambda p: p.o_desc.size.__setitem__(0, 7),
    "weights without data": lambda p: setattr(p.w_desc, "data", ffi.NULL),
    "weights layout unknown": lambda p: setattr(p.w_desc, "layout", 0x12345),
    "zero-sized input": lambda p: p.i_desc.size.__setitem__(1, 0),
    "groups not dividing channels": lambda p: setattr(p, "groups", 3),
    "bias of wrong length": lambda p: p.bias.size.__setitem__(0, 3),
    "input data type unknown": lambda p: setattr(p.i_desc, "data_type", 0xDEAD),
    "overlapping input strides": lambda p: p.i_desc.stride.__setitem__(1, 2),
    # channels 9 apart are fine in any order, but with rows 1 apart a 3-wide kernel row overlaps them
    "overlapping permuted weight strides": lambda p: p.w_desc.stride.__setitem__(slice(0, 4), [2, 1, 9, 18]),
    "huge sizes that overflow": lambda p: (p.i_desc.size.__setitem__(0, 2 ** 62),
                                           p.o_desc.size.__setitem__(0, 2 ** 62 - 2)),
    "more output pixels than 32-bit BLAS dimensions": lambda p: (
        p.i_desc.size.__setitem__(0, 50_000), p.i_desc.size.__setitem__(1, 50_000),
        p.o_desc.size.__setitem__(0, 49_998), p.o_desc.size.__setitem__(1, 49_998)),
}


@pytest.mark.parametrize("what", sorted(INVALID))
def test_invalid_parameters_give_null(lib, backend, what, rng, live_check):
    weights = random_array(rng, (4, 2, 3, 3))
    bias = random_array(rng, (4,))
    params = conv_params((8, 8, 2), (6, 6, 4), weights, bias)
    INVALID[what](params)
    assert create(lib, params) == ffi.NULL
    if backend.is_portable:
        assert backend.last_error(), "the portable library records why"


def test_null_arguments(lib, rng, live_check):
    assert create(lib, ffi.NULL) == ffi.NULL
    lib.BNNSFilterDestroy(ffi.NULL)  # no-op
    weights = random_array(rng, (1, 1, 1, 1))
    handle = create(lib, conv_params((2, 2, 1), (2, 2, 1), weights))
    buffer = np.zeros(4, np.float32)
    assert lib.BNNSFilterApply(ffi.NULL, ffi.from_buffer(buffer), ffi.from_buffer(buffer)) == -1
    assert lib.BNNSFilterApply(handle, ffi.NULL, ffi.from_buffer(buffer)) == -1
    assert lib.BNNSFilterApply(handle, ffi.from_buffer(buffer), ffi.NULL) == -1
    # a batch stride smaller than one item would make items overlap
    big = np.zeros(16, np.float32)
    assert lib.BNNSFilterApplyBatch(handle, 2, ffi.from_buffer(big), 2, ffi.from_buffer(big), 4) == -1
    lib.BNNSFilterDestroy(handle)


def test_filter_parameters_threads_and_allocator(lib, backend, rng, live_check):
    if not backend.is_portable:
        pytest.skip("custom allocator accounting is checked on the portable backend")
    allocator = CountingAllocator()
    filter_params = ffi.new("BNNSFilterParameters *", {"n_threads": 2, "alloc_memory": allocator.alloc,
                                                       "free_memory": allocator.free})
    weights = random_array(rng, (2, 2, 3, 3))
    x = random_array(rng, (1, 2, 6, 6))
    handle = create(lib, conv_params((6, 6, 2), (4, 4, 2), weights), filter_params)
    assert handle != ffi.NULL
    assert allocator.calls["alloc"] >= 1
    out = np.empty((1, 2, 4, 4), np.float32)
    assert lib.BNNSFilterApply(handle, ffi.from_buffer(x), ffi.from_buffer(out)) == 0
    lib.BNNSFilterDestroy(handle)
    assert allocator.balanced()
    assert_close_to_reference(out, reference.conv2d(x, weights), 18)

    allocator.fail = True
    refusing = ffi.new("BNNSFilterParameters *", {"alloc_memory": allocator.alloc, "free_memory": allocator.free})
    assert create(lib, conv_params((6, 6, 2), (4, 4, 2), weights), refusing) == ffi.NULL


def test_padded_1x1_image_is_not_a_plain_matrix_product(lib, rng, live_check):
    # A 1x1 kernel over a 1x1 image is a matrix product only without padding: with left/top
    # padding the single output pixel reads the zero border, so it is bias + activation only.
    weights, bias = random_array(rng, (3, 2, 1, 1)), random_array(rng, (3,))
    x = random_array(rng, (4, 2, 1, 1))
    for pad in ([1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]):
        handle = create(lib, conv_params((1, 1, 2), (1, 1, 3), weights, bias, pad=pad))
        out = np.empty((4, 3, 1, 1), np.float32)
        assert lib.BNNSFilterApplyBatch(handle, 4, ffi.from_buffer(x), 2, ffi.from_buffer(out), 3) == 0
        lib.BNNSFilterDestroy(handle)
        expected = reference.conv2d(x, weights, bias, padding=tuple(pad))[:, :, :1, :1]
        assert_close_to_reference(out, expected, 2, str(pad))
