"""Fully-connected backward with the batch as the GEMMs' shared dimension (the portable backend's
engines/fully_connected_backward.c): every gradient against the float64 reference at batch sizes
around the blocks' and vectors' edges and odd layer sizes, with and without bias, ReLU and tanh,
accumulating descriptors, strided batch operands, a padded (non-canonical) weight-gradient layout,
filters that copied their weights, 1 and 2 threads, and the same bits on 1 and 2 threads."""
import numpy as np
import pytest

from bnns_py import (ActivationFunction as AF, DataType, FilterParameters, Flags, FullyConnectedLayer,
                     NDArrayDescriptor, NDArrayFlags, Shape, ffi, reference)

from conftest import assert_close_to_reference, random_array

FLOAT32 = 0x10020
VECTOR = 0x10000
ROW_MAJOR = 0x20000
FIRST_MAJOR_2D = 0x28001

BATCHES = [1, 2, 15, 16, 17, 33, 64]
SIZES = [(1, 1), (15, 17), (17, 100), (100, 15)]  # (in, out)
ACTIVATIONS = [None, AF.rectified_linear, AF.tanh]


def _layer(weight, bias, activation, flags, n_threads, backend, padded_row=0):
    """A fully-connected layer over packed vectors; weights row-major {in, out}, each output's row
    ``padded_row`` values apart when > 0. Returns the layer and the array it reads."""
    out_size, in_size = weight.shape
    data, stride = weight, (0, 0)
    if padded_row:
        data = np.zeros((out_size, padded_row), np.float32)
        data[:, :in_size] = weight
        stride = (1, padded_row)
    layer = FullyConnectedLayer(
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(in_size)),
        NDArrayDescriptor(data_type=DataType.float32, shape=Shape.vector(out_size)),
        NDArrayDescriptor(data.reshape(-1), Shape.matrix_row_major(in_size, out_size, stride=stride)),
        None if bias is None else NDArrayDescriptor(bias, Shape.vector(out_size)), AF.coerce(activation),
        FilterParameters(flags=flags, n_threads=n_threads), backend=backend)
    return layer, data


def _vector(array, n, accumulate):
    d = ffi.new("BNNSNDArrayDescriptor *")
    d.layout, d.data_type, d.data, d.size[0] = VECTOR, FLOAT32, ffi.from_buffer(array), n
    d.flags = int(NDArrayFlags.backprop_accumulate) if accumulate else 0
    return d


def _matrix(array, in_size, out_size, row, accumulate):
    d = ffi.new("BNNSNDArrayDescriptor *")
    d.layout, d.data_type, d.data = ROW_MAJOR, FLOAT32, ffi.from_buffer(array)
    d.size[0:2] = [in_size, out_size]
    d.stride[0:2] = [1, row]
    d.flags = int(NDArrayFlags.backprop_accumulate) if accumulate else 0
    return d


class Operands:
    """x, y, dy and the gradients' buffers of one call, each batch item `pad` values past the
    item's own (a batch stride longer than the vector when pad > 0); dW rows `dw_pad` values apart
    past `in`."""

    def __init__(self, rng, weight, bias, activation, batch, pad=0, dw_pad=0, start=None):
        out_size, in_size = weight.shape
        self.batch, self.in_size, self.out_size, self.pad, self.dw_pad = batch, in_size, out_size, pad, dw_pad
        self.x = random_array(rng, (batch, in_size + pad))
        y64 = reference.linear(self.x[:, :in_size], weight, bias, activation=AF.coerce(activation))
        self.y = np.zeros((batch, out_size + pad), np.float32)
        self.y[:, :out_size] = y64
        self.dy = random_array(rng, (batch, out_size + pad))
        fill = rng.standard_normal if start == "random" else (lambda shape: np.full(shape, 7.0))
        self.dx = fill((batch, in_size + pad)).astype(np.float32)
        self.dw = fill((out_size, in_size + dw_pad)).astype(np.float32)
        self.db = fill((out_size,)).astype(np.float32)
        self.start = [a.copy() for a in (self.dx, self.dw, self.db)]

    def run(self, layer, accumulate=False, dx=True, dw=True, db=True):
        lib = layer.backend.lib
        i, o, p = self.in_size, self.out_size, self.pad
        status = lib.BNNSFilterApplyBackwardBatch(
            layer.bnns_filter, self.batch, ffi.from_buffer(self.x), i + p,
            _vector(self.dx, i, accumulate) if dx else ffi.NULL, i + p, ffi.from_buffer(self.y), o + p,
            _vector(self.dy, o, False), o + p, _matrix(self.dw, i, o, i + self.dw_pad, accumulate) if dw else ffi.NULL,
            _vector(self.db, o, accumulate) if db else ffi.NULL)
        assert status == 0, layer.backend.last_error()

    def check(self, weight, bias, activation, accumulate=False, dx=True, dw=True, db=True):
        i, o = self.in_size, self.out_size
        rx, rw, rb = reference.linear_backward(self.x[:, :i], weight, self.dy[:, :o], output=self.y[:, :o],
                                               bias=True, activation=AF.coerce(activation))
        base = [s.astype(np.float64) if accumulate else 0.0 for s in self.start]
        if dx:
            assert_close_to_reference(self.dx[:, :i], base[0][:, :i] + rx if accumulate else rx, o, "dx")
        if dw:
            assert_close_to_reference(self.dw[:, :i], base[1][:, :i] + rw if accumulate else rw, self.batch, "dw")
        if db and bias is not None:
            assert_close_to_reference(self.db, base[2] + rb if accumulate else rb, self.batch, "db")
        # what lies between the items and past the rows is left alone
        if self.pad:
            assert (self.dx[:, i:] == self.start[0][:, i:]).all(), "dx padding changed"
        if self.dw_pad:
            assert (self.dw[:, i:] == self.start[1][:, i:]).all(), "dw padding changed"
        if not dx:
            assert (self.dx == self.start[0]).all()
        if not dw:
            assert (self.dw == self.start[1]).all()


def _cases():
    return [dict(batch=batch, sizes=sizes, activation=ACTIVATIONS[(b + s) % 3], bias=(b + s) % 2 == 0)
            for b, batch in enumerate(BATCHES) for s, sizes in enumerate(SIZES)]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("case", _cases(), ids=lambda c: "n{batch}_{sizes[0]}x{sizes[1]}".format(**c))
def test_gradients_match_reference(case, n_threads, backend, rng, no_filter_leaks):
    (in_size, out_size), activation = case["sizes"], case["activation"]
    weight = random_array(rng, (out_size, in_size), 0.5)
    bias = random_array(rng, (out_size,)) if case["bias"] else None
    ops = Operands(rng, weight, bias, activation, case["batch"])
    layer, _ = _layer(weight, bias, activation, Flags.use_client_pointer, n_threads, backend)
    with layer:
        ops.run(layer)
    ops.check(weight, bias, activation)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 17, 64])
@pytest.mark.parametrize("activation", [None, AF.tanh], ids=["identity", "tanh"])
def test_accumulating_strided_operands_and_padded_weight_gradient(activation, batch, n_threads, backend, rng,
                                                                  no_filter_leaks):
    """Batch strides past each vector, accumulating descriptors for every gradient, and dW rows
    padded past `in` (the weight gradient then goes through the workspace)."""
    weight, bias = random_array(rng, (33, 17), 0.5), random_array(rng, (33,))
    for dw_pad in (0, 3):
        ops = Operands(rng, weight, bias, activation, batch, pad=5, dw_pad=dw_pad, start="random")
        layer, _ = _layer(weight, bias, activation, Flags.use_client_pointer, n_threads, backend)
        with layer:
            ops.run(layer, accumulate=True)
        ops.check(weight, bias, activation, accumulate=True)


@pytest.mark.parametrize("wanted", [dict(dx=False), dict(dw=False), dict(db=False), dict(dx=False, db=False),
                                    dict(dx=False, dw=False)], ids=["no_dx", "no_dw", "no_db", "dw_only", "db_only"])
def test_optional_gradients(wanted, backend, rng, no_filter_leaks):
    weight, bias = random_array(rng, (40, 70), 0.5), random_array(rng, (40,))
    ops = Operands(rng, weight, bias, AF.rectified_linear, 33)
    layer, _ = _layer(weight, bias, AF.rectified_linear, Flags.use_client_pointer, 2, backend)
    with layer:
        ops.run(layer, **wanted)
    ops.check(weight, bias, AF.rectified_linear, **wanted)


@pytest.mark.parametrize("padded_row", [0, 9])
def test_copied_weights(padded_row, backend, rng, no_filter_leaks):
    """A filter without client pointers runs backward on its twin (the weights it copied, the
    caller's array overwritten since), weights in the caller's array rows padded or not."""
    weight, bias = random_array(rng, (100, 17), 0.5), random_array(rng, (100,))
    ops = Operands(rng, weight, bias, AF.tanh, 64, pad=2, dw_pad=padded_row)
    layer, storage = _layer(weight.copy(), bias, AF.tanh, Flags.none, 2, backend,
                            17 + padded_row if padded_row else 0)
    storage[...] = 99.0  # copied at creation: the layer no longer reads it
    with layer:
        ops.run(layer)
    ops.check(weight, bias, AF.tanh)


@pytest.mark.requires_portable_internals
@pytest.mark.parametrize("activation", [None, AF.rectified_linear], ids=["identity", "relu"])
def test_same_bits_on_one_and_two_threads(activation, backend, rng, no_filter_leaks):
    """The blocks of the two GEMMs do not depend on the thread count: each gradient's bits neither."""
    weight, bias = random_array(rng, (300, 260), 0.2), random_array(rng, (300,))
    results = []
    for n_threads in (1, 2):
        ops = Operands(np.random.default_rng(5), weight, bias, activation, 64)
        layer, _ = _layer(weight, bias, activation, Flags.use_client_pointer, n_threads, backend)
        with layer:
            ops.run(layer)
        ops.check(weight, bias, activation)
        results.append((ops.dx, ops.dw, ops.db))
    for one, two in zip(*results):
        assert np.array_equal(one, two)
