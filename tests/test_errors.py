"""Every bad input raises a clear Python exception before any C call, and nothing leaks."""
import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction, BNNSError, ConvolutionLayer, ConvolutionType, DataType,
                     FilterParameters, NDArrayDescriptor, Shape)

X = np.zeros((2, 3, 8, 8), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(x=X.astype(np.float64)), TypeError, "dtype float64"),
    (dict(weight=W.astype(np.float16)), TypeError, "dtype float16"),
    (dict(x=X[0, 0]), ValueError, "3 or 4 dimensions"),
    (dict(weight=W[0]), ValueError, "4 dimensions"),
    (dict(weight=np.zeros((4, 2, 3, 3), np.float32)), ValueError, "input has 3 channels, the weights expect 2"),
    (dict(groups=2), ValueError, "input has 3 channels, the weights expect 6"),
    (dict(groups=3), ValueError, "groups=3 must divide the 4 output channels"),
    (dict(groups=0), ValueError, "groups"),
    (dict(bias=np.zeros(3, np.float32)), ValueError, r"bias must have shape \(4,\)"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(1, 2, 3)), TypeError, "stride"),
    (dict(dilation=-1), ValueError, "dilation"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding=(1, 2, 3)), TypeError, "padding"),
    (dict(weight=np.zeros((4, 3, 9, 3), np.float32)), ValueError, "larger than the padded input"),
    (dict(activation="leaky_relu"), ValueError, "takes parameters"),
    (dict(activation=42), TypeError, "activation"),
    (dict(x=[[1.0]]), TypeError, "numpy array"),
    (dict(out=np.zeros((2, 4, 6, 6), np.float64)), TypeError, "out has dtype float64"),
    (dict(out=np.zeros((2, 4, 6, 7), np.float32)), ValueError, "out has shape"),
    (dict(out=np.zeros((2, 4, 6, 12), np.float32)[..., ::2]), ValueError, "not C-contiguous"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
])
def test_conv2d_rejects_bad_arguments(kwargs, error, message, no_filter_leaks):
    args = dict(x=X, weight=W)
    args.update(kwargs)
    x, weight = args.pop("x"), args.pop("weight")
    with pytest.raises(error, match=message):
        bnns_py.conv2d(x, weight, **args)


def test_conv2d_rejects_out_aliasing_input(no_filter_leaks):
    buffer = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        bnns_py.conv2d(buffer, np.zeros((4, 4, 1, 1), np.float32), out=buffer)


def test_unsupported_activation_on_portable_is_refused_before_c(backend, no_filter_leaks):
    if not backend.is_portable:
        pytest.skip("Accelerate implements every activation")
    with pytest.raises(NotImplementedError, match="portable backend"):
        bnns_py.conv2d(X, W, activation=ActivationFunction.gumbel_max(1.0, 0.0))


def _layer_args():
    return dict(
        type=ConvolutionType.standard,
        input=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 3)),
        weights=NDArrayDescriptor(W.copy(), Shape.convolution_weights_oihw(3, 3, 3, 4)),
        output=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(6, 6, 4)),
    )


@pytest.mark.parametrize("change, error, message", [
    (dict(output=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(7, 6, 4))),
     ValueError, "do not fit along x"),
    (dict(output=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(144))),
     ValueError, "output layout must be image_chw"),
    (dict(weights=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.convolution_weights_oihw(3, 3, 3, 4))),
     ValueError, "weights descriptor has no data"),
    (dict(weights=NDArrayDescriptor(np.zeros(108, np.float32), Shape.vector(108))),
     ValueError, "weights layout"),
    (dict(weights=NDArrayDescriptor(np.zeros(90, np.float32), Shape.convolution_weights_oihw(3, 3, 2, 5))),
     ValueError, "weights describe 2 input channels"),
    (dict(bias=NDArrayDescriptor(np.zeros(3, np.float32))), ValueError, "bias must be a vector of 4"),
    (dict(group_count=2), ValueError, "group_count 2 must divide"),
    (dict(group_count=-1), ValueError, "group_count"),
    (dict(stride=(1, -1)), ValueError, "stride"),
    (dict(padding=(1, 1)), TypeError, "ConvolutionPadding"),
    (dict(stride=(3, 1)), ValueError, r"do not fit along x.*stride 3"),
    (dict(input=np.zeros((3, 8, 8), np.float32)), TypeError, "input must be an NDArrayDescriptor"),
    (dict(filter_parameters={"n_threads": 2}), TypeError, "FilterParameters"),
    (dict(type="sideways"), ValueError, "sideways"),
    (dict(input=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 3, stride=(1, 4, 0)))),
     ValueError, "overlap"),
    (dict(input=NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(2 ** 31, 2 ** 31, 3))),
     ValueError, "more than memory can hold"),
])
def test_layer_rejects_bad_arguments(change, error, message, no_filter_leaks):
    args = _layer_args()
    args.update(change)
    with pytest.raises(error, match=message):
        ConvolutionLayer(**args)


@pytest.mark.parametrize("input_arg, output_arg, batch, error, message", [
    (np.zeros((2, 3, 8, 8), np.float32), np.zeros((2, 4, 6, 6), np.float32), 3, ValueError, "needs at least"),
    (np.zeros((1, 3, 8, 8), np.float64), np.zeros((1, 4, 6, 6), np.float32), 1, TypeError, "dtype float64"),
    (np.zeros((1, 3, 8, 16), np.float32)[..., ::2], np.zeros((1, 4, 6, 6), np.float32), 1, ValueError, "C-contiguous"),
    (np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 4, 6, 6), np.float32), 0, ValueError, "batch_size must be >= 1"),
    (np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 4, 6, 6), np.float32), 1.0, TypeError, "batch_size"),
    (np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 4, 6, 6), np.float32)[:0], 1, ValueError, "needs at least"),
    (NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(8, 8, 3)),
     np.zeros((1, 4, 6, 6), np.float32), 1, BNNSError, "no data"),
    (NDArrayDescriptor(np.zeros((3, 8, 7), np.float32)), np.zeros((1, 4, 6, 6), np.float32), 1,
     ValueError, "does not match"),
])
def test_apply_rejects_bad_buffers(input_arg, output_arg, batch, error, message, no_filter_leaks):
    with ConvolutionLayer(**_layer_args()) as layer:
        with pytest.raises(error, match=message):
            layer.apply(batch, input_arg, output_arg)


def test_apply_rejects_read_only_output_and_aliasing(no_filter_leaks):
    with ConvolutionLayer(**_layer_args()) as layer:
        out = np.zeros((1, 4, 6, 6), np.float32)
        out.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            layer.apply(1, np.zeros((1, 3, 8, 8), np.float32), out)
        shared = np.zeros(3 * 64, np.float32)
        with pytest.raises(ValueError, match="share memory"):
            layer.apply(1, shared.reshape(3, 8, 8), shared[:144].reshape(4, 6, 6))


def test_filter_parameters_validation():
    with pytest.raises(ValueError, match="n_threads"):
        FilterParameters(n_threads=-1)
    with pytest.raises(ValueError, match="bits"):
        FilterParameters(flags=4)
    with pytest.raises(ValueError, match="together"):
        FilterParameters(alloc_memory=lambda *a: 0)
    params = FilterParameters(options=bnns_py.Flags.use_client_pointer, thread_count=2)
    assert params.use_client_pointer and params.c_parameters.n_threads == 2


def test_descriptor_validation():
    with pytest.raises(TypeError, match="dtype complex64"):
        NDArrayDescriptor(np.zeros(4, np.complex64))
    with pytest.raises(ValueError, match="infer"):
        NDArrayDescriptor(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="needs at least 12"):
        NDArrayDescriptor(np.zeros(11, np.float32), Shape.image_chw(2, 2, 3))
    with pytest.raises(TypeError, match="data_type is int8"):
        NDArrayDescriptor(np.zeros(4, np.float32), Shape.vector(4), DataType.int8)
    with pytest.raises(ValueError, match="zero size"):
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(0, 2, 2))
    with pytest.raises(ValueError, match="shape and data_type"):
        NDArrayDescriptor()
    with pytest.raises(ValueError, match=r"\[0, 2\*\*62\)"):
        Shape.image_chw(2 ** 64, 1, 1)


def test_old_scipy_openblas32_is_named_with_its_fix(monkeypatch):
    """scipy-openblas32 before 0.3.27.63.0 has get_library() without fullname: the raw TypeError
    becomes a LibraryNotFoundError naming the installed version and the pip command."""
    import sys
    import types

    from bnns_py import backend as backend_module
    old = types.ModuleType("scipy_openblas32")
    old.get_lib_dir = lambda: "/nonexistent"
    old.get_library = lambda: "scipy_openblas"  # the old signature
    monkeypatch.setitem(sys.modules, "scipy_openblas32", old)
    monkeypatch.setattr(backend_module, "_distribution_version", lambda name: "0.3.27.44.6")
    with pytest.raises(bnns_py.LibraryNotFoundError) as error:
        backend_module._preload_openblas()
    message = str(error.value)
    assert "scipy-openblas32 0.3.27.44.6 is too old for bnns-py (it needs 0.3.27.63.0 or later)" in message
    assert "pip install -U scipy-openblas32" in message
