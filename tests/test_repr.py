"""Console and notebook (HTML) representations of layers, descriptors and modules."""
import numpy as np
import pytest

import bnns_py
from bnns_py import (ActivationFunction as AF, Conv2d, ConvolutionLayer, ConvolutionPadding, ConvolutionType,
                     ConvTranspose2d, DataType, FilterParameters, Flags, FullyConnectedLayer, Linear,
                     NDArrayDescriptor, NDArrayFlags, Shape, _repr)
from bnns_py.legacy import ImageStackDescriptor, LegacyConvolutionLayer


def make_standard(rng, backend, **kwargs):
    """A grouped, strided, padded layer: input (4, 8, 9) -> output (6, 4, 9)."""
    weight = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    return ConvolutionLayer(
        ConvolutionType.standard,
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(9, 8, 4)),
        NDArrayDescriptor(weight, Shape.convolution_weights_oihw(3, 3, 2, 6)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(9, 4, 6)),
        NDArrayDescriptor(bias, Shape.vector(6)),
        ConvolutionPadding.symmetric(1, 1), AF.leaky_rectified_linear(0.1), 2, (1, 2), (1, 1),
        backend=backend.name, **kwargs)


def test_convolution_layer_repr_has_the_facts(rng, backend, no_filter_leaks):
    layer = make_standard(rng, backend, filter_parameters=FilterParameters(flags=Flags.use_client_pointer,
                                                                           n_threads=2))
    with layer:
        text = repr(layer)
        assert text.splitlines()[0] == f"ConvolutionLayer(standard, {backend.name} backend, open)"
        for fact in ("image_chw(W=9, H=8, C=4)", "(4, 8, 9)",                 # input: BNNS order, numpy order
                     "image_chw(W=9, H=4, C=6)", "(6, 4, 9)",                 # output
                     "convolution_weights_oihw(kW=3, kH=3, I=2, O=6)", "(6, 2, 3, 3)",
                     "vector(n=6)", "float32",
                     "(6, 2, 3, 3) (out, in/groups, kH, kW)",                # PyTorch weight
                     "ActivationFunction.leaky_rectified_linear(alpha=0.1)",
                     "ConvolutionPadding.symmetric(x=1, y=1): left=1, right=1, up=1, down=1",
                     "stride           x=1, y=2", "dilation         x=1, y=1", "groups           2",
                     "(use_client_pointer), n_threads=2", f"backend          {backend.name}", "state            open"):
            assert fact in text, (fact, text)
        page = layer._repr_html_()
        for fact in ("<table", "ConvolutionLayer(standard", "image_chw(W=9, H=8, C=4)", "(4, 8, 9)",
                     "leaky_rectified_linear(alpha=0.1)", "x=1, y=2", "open", backend.name):
            assert fact in page, fact
    assert repr(layer).splitlines()[0].endswith(", closed)")
    assert "state            closed" in repr(layer)
    assert "closed" in layer._repr_html_() and ", open" not in layer._repr_html_()


def test_transposed_layer_repr(rng, no_filter_leaks):
    with ConvTranspose2d(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), stride=2, groups=1) as conv:
        conv(np.zeros((1, 4, 3, 5), np.float32))
        (layer,) = conv._layers.values()
        text = repr(layer)
    assert "ConvolutionLayer(transposed" in text
    assert "(4, 3, 2, 2) (in, out/groups, kH, kW)" in text       # PyTorch layout of the same weights
    assert "convolution_weights_oihw(kW=2, kH=2, I=4, O=3" in text  # BNNS's transposed OIHW (strides: in place)
    assert "image_chw(W=10, H=6, C=3)" in text and "(3, 6, 10)" in text
    assert "copied by BNNS" not in text and "read in place" in text


def test_asymmetric_padding_and_copied_weights(rng, backend, no_filter_leaks):
    weight = rng.standard_normal((2, 1, 1, 1)).astype(np.float32)
    layer = ConvolutionLayer(ConvolutionType.standard,
                             NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(3, 3, 1)),
                             NDArrayDescriptor(weight, Shape.convolution_weights_oihw(1, 1, 1, 2)),
                             NDArrayDescriptor(data_type=DataType.float32, shape=Shape.image_chw(4, 3, 2)),
                             padding=ConvolutionPadding.asymmetric(1, 0, 0, 0))
    with layer:
        text = repr(layer)
    assert "ConvolutionPadding.asymmetric(left=1, right=0, up=0, down=0)" in text
    assert "copied by BNNS at creation" in text
    assert "bias     none" in text
    assert "ActivationFunction.identity" in text


def test_fully_connected_repr_and_html(rng, no_filter_leaks):
    weight = rng.standard_normal((3, 5)).astype(np.float32)
    layer = FullyConnectedLayer(NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(5)),
                                NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(3)),
                                NDArrayDescriptor(weight, Shape.matrix_row_major(5, 3)),
                                activation=AF.tanh)
    with layer:
        text = repr(layer)
        page = layer._repr_html_()
    assert text.splitlines()[0].startswith("FullyConnectedLayer(5 -> 3, ")
    for fact in ("matrix_row_major(columns=5, rows=3)", "(3, 5)", "(3, 5) (out, in)", "ActivationFunction.tanh",
                 "bias     none", "state            open"):
        assert fact in text, fact
    assert "5 -&gt; 3" in page and "5 -> 3" not in page  # escaped
    assert "closed" in repr(layer) and "closed" in layer._repr_html_()


def test_descriptor_repr_keeps_its_information():
    data = np.arange(24, dtype=np.float32)
    d = NDArrayDescriptor(data, Shape.image_chw(4, 3, 2))
    assert repr(d) == "NDArrayDescriptor(Shape.image_chw(4, 3, 2), float32, data float32[24], numpy shape (2, 3, 4))"
    batch = NDArrayDescriptor(np.zeros(48, np.float32), Shape.image_chw(4, 3, 2), batch_size=2)
    assert "batch_size=2" in repr(batch)
    empty = NDArrayDescriptor(data_type=DataType.float16, shape=Shape.vector(7))
    assert repr(empty) == "NDArrayDescriptor(Shape.vector(7,), float16, no data, numpy shape (7,))"
    extra = NDArrayDescriptor(data, Shape.vector(24), data_scale=0.5, data_bias=2.0,
                              flags=NDArrayFlags.backprop_accumulate)
    assert repr(extra).endswith("numpy shape (24,), data_scale=0.5, data_bias=2, flags=backprop_accumulate)")
    page = d._repr_html_()
    for fact in ("NDArrayDescriptor", "Shape.image_chw(4, 3, 2)", "image_chw(W=4, H=3, C=2)", "(2, 3, 4)",
                 "float32[24]", "backprop_set"):
        assert fact in page, fact
    assert "data scale, bias" in extra._repr_html_() and "0.5, 2" in extra._repr_html_()
    strided = NDArrayDescriptor(np.zeros(40, np.float32), Shape.image_chw(4, 3, 2, stride=(1, 5, 20)))
    assert "image_chw(W=4, H=3, C=2, stride=(1, 5, 20))" in strided._repr_html_()


def test_numpy_module_reprs(rng, backend, no_filter_leaks):
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    with Conv2d(weight, np.zeros(4, np.float32), stride=2, padding=(1, 0), groups=1, activation="relu") as conv:
        assert repr(conv) == ("Conv2d(2, 4, kernel=(3, 3), stride=(2, 2), padding=(0, 0, 1, 1), dilation=(1, 1), "
                              "groups=1, activation=ActivationFunction.rectified_linear, bias=True)")
        conv(np.zeros((1, 2, 7, 7), np.float32))
        page = conv._repr_html_()
    for fact in ("Conv2d", "2 -&gt; 4", "(4, 2, 3, 3) (out, in/groups, kH, kW)", "left=0, right=0, top=1, bottom=1",
                 "rectified_linear", "7x7", "default"):
        assert fact in page, fact
    # a named backend shows in the repr (the one under test: a Mac may have no portable library)
    with ConvTranspose2d(weight, stride=2, output_padding=1, backend=backend.name) as tconv:
        text = repr(tconv)
        page = tconv._repr_html_()
    assert "output_padding=(1, 1)" in text and f"backend='{backend.name}'" in text
    assert "(4, 2, 3, 3) (in, out/groups, kH, kW)" in page and "output padding" in page and "none" in page
    with Linear(rng.standard_normal((3, 8)).astype(np.float32), activation="tanh") as lin:
        assert repr(lin) == "Linear(8, 3, activation=ActivationFunction.tanh, bias=False)"
        assert "none yet" in lin._repr_html_()
        lin(np.zeros(8, np.float32))
        assert "open" in lin._repr_html_() and "8 -&gt; 3" in lin._repr_html_()


def test_legacy_layer_html_uses_its_repr(rng, no_filter_leaks):
    layer = LegacyConvolutionLayer(ImageStackDescriptor(5, 5, 1), ImageStackDescriptor(3, 3, 1),
                                   rng.standard_normal((1, 1, 3, 3)).astype(np.float32))
    with layer:
        page = layer._repr_html_()
        assert "LegacyConvolutionLayer(" in page and "open" in page
    assert "closed" in layer._repr_html_()


def test_incomplete_objects_do_not_break_repr():
    layer = ConvolutionLayer.__new__(ConvolutionLayer)
    assert repr(layer) == "<ConvolutionLayer (incompletely initialized)>"
    assert "incompletely" in layer._repr_html_()
    base = bnns_py.Layer.__new__(bnns_py.Layer)
    assert repr(base) == "Layer(? backend, closed)"


def test_html_helpers_escape_everything():
    page = _repr.key_value_html("<b>title</b>", [("<script>", "a & b"), ("x", "<i>")])
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page
    assert "&lt;b&gt;title&lt;/b&gt;" in page and "&lt;i&gt;" in page
    page = _repr.grid_html("t", ["<h>"], [["<c>"]], ['color:red"><script>'])
    assert "<script>" not in page and "&lt;h&gt;" in page and "&lt;c&gt;" in page


@pytest.mark.parametrize("layout,sizes,expected", [
    ("convolution_weights_iohrwr", (3, 3, 4, 2), "convolution_weights_iohrwr(kW=3, kH=3, O=4, I=2)"),
    ("matrix_first_major", (3, 5), "matrix_first_major(3, 5)"),
    ("tensor_4d_first_major", (1, 2, 3, 4), "tensor_4d_first_major(1, 2, 3, 4)"),
])
def test_bnns_sizes_labels(layout, sizes, expected):
    assert _repr.bnns_sizes(Shape(sizes, bnns_py.DataLayout[layout])) == expected
