"""BNNS enumerations as Python enums, with the numpy dtype map.

Member names are the C constant names without their prefix, in snake case
(``BNNSDataTypeFloat32`` -> ``DataType.float32``; Swift's ``BNNSDataType.float`` is
``DataType.float32``, also reachable as ``DataType.float``).
"""
import enum
from typing import Dict, Tuple

import numpy as np
import numpy.typing as npt

from ._ffi import ffi


class DataType(enum.IntEnum):
    """``BNNSDataType``: the element type of an array.

    A value is a family flag (float, signed, unsigned, indexed, boolean) OR'ed with the width in
    bits. ``DataType.float`` is Swift's name for ``float32`` (the same member).

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py import DataType
    >>> DataType.float32.bits, DataType.float32.numpy_dtype
    (32, dtype('float32'))
    >>> DataType.from_numpy(np.float16)
    <DataType.float16: 65552>
    >>> DataType.float is DataType.float32
    True
    """

    float16 = 0x10010
    float32 = 0x10020
    bfloat16 = 0x18010
    int1 = 0x20001
    int2 = 0x20002
    int4 = 0x20004
    int8 = 0x20008
    int16 = 0x20010
    int32 = 0x20020
    int64 = 0x20040
    uint1 = 0x40001
    uint2 = 0x40002
    uint4 = 0x40004
    uint8 = 0x40008
    uint16 = 0x40010
    uint32 = 0x40020
    uint64 = 0x40040
    indexed1 = 0x80001
    indexed2 = 0x80002
    indexed4 = 0x80004
    indexed8 = 0x80008
    boolean = 0x100008
    float = 0x10020  # Swift's name for Float32 (an alias of float32)

    @property
    def bits(self) -> int:
        """Width of one element in bits."""
        return self.value & 0xFF

    @property
    def numpy_dtype(self) -> "np.dtype[np.generic] | None":
        """The numpy dtype of one element, or None for bfloat16 and the packed sub-byte and
        indexed types (numpy has no such dtype)."""
        return _TO_NUMPY.get(self)

    @property
    def storage_dtypes(self) -> "Tuple[np.dtype[np.generic], ...]":
        """The numpy dtypes an array holding values of this type may have.

        ``(numpy_dtype,)``; for ``bfloat16`` (numpy has none) ``uint16``, whose values are the
        bfloat16 bit patterns, plus ``ml_dtypes.bfloat16`` when that package is installed. Empty
        when there is none.

        Examples
        --------
        >>> from bnns_py import DataType
        >>> DataType.bfloat16.storage_dtypes[0]
        dtype('uint16')
        >>> DataType.int4.storage_dtypes
        ()
        """
        if self is DataType.bfloat16:
            return _BFLOAT16_STORAGE
        dtype = _TO_NUMPY.get(self)
        return () if dtype is None else (dtype,)

    @classmethod
    def from_numpy(cls, dtype: npt.DTypeLike) -> "DataType":
        """The BNNS data type of a numpy dtype.

        Parameters
        ----------
        dtype : numpy dtype or anything ``np.dtype`` accepts
            ``ml_dtypes.bfloat16`` maps to ``bfloat16`` when ml_dtypes is installed; ``uint16``
            maps to ``uint16`` (tell a descriptor ``data_type=DataType.bfloat16`` to read it as
            bfloat16 bit patterns).

        Returns
        -------
        DataType

        Raises
        ------
        TypeError
            BNNS has no type for ``dtype`` (e.g. float64).

        Examples
        --------
        >>> from bnns_py import DataType
        >>> DataType.from_numpy("int8")
        <DataType.int8: 131080>
        """
        dtype = np.dtype(dtype)
        try:
            return _FROM_NUMPY[dtype]
        except KeyError:
            supported = ", ".join(sorted(str(d) for d in _FROM_NUMPY))
            raise TypeError(f"numpy dtype {dtype} has no BNNS data type; supported: {supported}") from None


_TO_NUMPY: "Dict[DataType, np.dtype[np.generic]]" = {
    DataType.float16: np.dtype(np.float16), DataType.float32: np.dtype(np.float32),
    DataType.int8: np.dtype(np.int8), DataType.int16: np.dtype(np.int16),
    DataType.int32: np.dtype(np.int32), DataType.int64: np.dtype(np.int64),
    DataType.uint8: np.dtype(np.uint8), DataType.uint16: np.dtype(np.uint16),
    DataType.uint32: np.dtype(np.uint32), DataType.uint64: np.dtype(np.uint64),
    DataType.boolean: np.dtype(np.bool_),
}
_FROM_NUMPY: "Dict[np.dtype[np.generic], DataType]" = {dtype: data_type for data_type, dtype in _TO_NUMPY.items()}

# bfloat16 has no numpy dtype: arrays of its bit patterns are uint16 (or ml_dtypes.bfloat16, an
# optional package bnns-py does not depend on).
BFLOAT16_BITS = np.dtype(np.uint16)
_BFLOAT16_STORAGE: "Tuple[np.dtype[np.generic], ...]" = (BFLOAT16_BITS,)
try:
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:  # pragma: no cover
    _BFLOAT16_STORAGE = (BFLOAT16_BITS, np.dtype(_ml_dtypes.bfloat16))
    _FROM_NUMPY[np.dtype(_ml_dtypes.bfloat16)] = DataType.bfloat16


def float32_to_bfloat16_bits(values: npt.ArrayLike) -> "npt.NDArray[np.uint16]":
    """Round float32 values to bfloat16 and return their bit patterns.

    Rounds to nearest, ties to even, as the portable backend does; NaN stays NaN and values
    beyond bfloat16's range become infinities.

    Parameters
    ----------
    values : array_like
        Values, converted to float32 first. Any shape.

    Returns
    -------
    numpy.ndarray of uint16
        The bfloat16 bit patterns, of the shape of ``values``.

    Examples
    --------
    >>> import numpy as np
    >>> from bnns_py.enums import float32_to_bfloat16_bits
    >>> [hex(v) for v in float32_to_bfloat16_bits([1.0, -2.0, 1.00390625])]
    ['0x3f80', '0xc000', '0x3f80']
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded)


def bfloat16_bits_to_float32(bits: npt.ArrayLike) -> "npt.NDArray[np.float32]":
    """The float32 values of bfloat16 bit patterns (exact: every bfloat16 is a float32).

    Parameters
    ----------
    bits : array_like of uint16, or an ``ml_dtypes.bfloat16`` array
        bfloat16 bit patterns. Any shape.

    Returns
    -------
    numpy.ndarray of float32
        The values, of the shape of ``bits``.

    Examples
    --------
    >>> from bnns_py.enums import bfloat16_bits_to_float32, float32_to_bfloat16_bits
    >>> bfloat16_bits_to_float32(float32_to_bfloat16_bits([3.14159, 0.1])).tolist()
    [3.140625, 0.10009765625]
    """
    bits = np.asarray(bits)
    if bits.dtype != BFLOAT16_BITS:
        bits = bits.view(BFLOAT16_BITS) if bits.dtype.itemsize == 2 else bits.astype(BFLOAT16_BITS)
    return (bits.astype(np.uint32) << 16).view(np.float32)


class DataLayout(enum.IntEnum):
    """``BNNSDataLayout``: how a descriptor's ``size[]`` and ``stride[]`` map to indices.

    For most layouts ``size[0]`` is the fastest-varying axis; the ``*_first_major`` layouts list
    their sizes outermost first. The rank is encoded in the value (see ``rank``). ``Shape``
    builds descriptors' shapes from these.

    Examples
    --------
    >>> from bnns_py import DataLayout
    >>> DataLayout.image_chw.rank, DataLayout.convolution_weights_oihw.rank
    (3, 4)
    """

    vector = 0x10000
    one_d_last_major = 0x18000
    one_d_first_major = 0x18001
    matrix_row_major = 0x20000
    matrix_column_major = 0x20001
    fully_connected_sparse = 0x21001
    matrix_last_major = 0x28000
    matrix_first_major = 0x28001
    image_chw = 0x30000
    tensor_3d_sne = 0x30001
    tensor_3d_nse = 0x30002
    mha_dhk = 0x30003
    tensor_3d_last_major = 0x38000
    tensor_3d_first_major = 0x38001
    convolution_weights_oihw = 0x40000
    convolution_weights_oihrwr = 0x40001
    convolution_weights_iohrwr = 0x40002
    convolution_weights_oihw_pack32 = 0x40010
    tensor_4d_last_major = 0x48000
    tensor_4d_first_major = 0x48001
    tensor_5d_last_major = 0x58000
    tensor_5d_first_major = 0x58001
    tensor_6d_last_major = 0x68000
    tensor_6d_first_major = 0x68001
    tensor_7d_last_major = 0x78000
    tensor_7d_first_major = 0x78001
    tensor_8d_last_major = 0x88000
    tensor_8d_first_major = 0x88001

    @property
    def rank(self) -> int:
        """Number of dimensions: BNNS encodes it in bits 16-19 of the layout value."""
        return (self.value >> 16) & 0xF


# The cdefs' enum constants, without opening a BNNS library (cffi serves them from any library).
_C = ffi.dlopen(None)


class ActivationFunctionKind(enum.IntEnum):
    """``BNNSActivationFunction``: which function a ``BNNSActivation`` applies (the values come from
    ``cdefs/bnns.h``). ``hard_swish`` and ``gelu_approximation2`` share a value, as in C;
    ``ActivationFunction`` (``bnns_py.activation``) pairs one with its parameters."""

    identity = _C.BNNSActivationFunctionIdentity
    rectified_linear = _C.BNNSActivationFunctionRectifiedLinear
    leaky_rectified_linear = _C.BNNSActivationFunctionLeakyRectifiedLinear
    sigmoid = _C.BNNSActivationFunctionSigmoid
    tanh = _C.BNNSActivationFunctionTanh
    scaled_tanh = _C.BNNSActivationFunctionScaledTanh
    abs = _C.BNNSActivationFunctionAbs
    linear = _C.BNNSActivationFunctionLinear
    clamp = _C.BNNSActivationFunctionClamp
    integer_linear_saturate = _C.BNNSActivationFunctionIntegerLinearSaturate
    integer_linear_saturate_per_channel = _C.BNNSActivationFunctionIntegerLinearSaturatePerChannel
    softmax = _C.BNNSActivationFunctionSoftmax
    gelu_approximation = _C.BNNSActivationFunctionGELUApproximation
    gumbel = _C.BNNSActivationFunctionGumbel
    gumbel_max = _C.BNNSActivationFunctionGumbelMax
    hard_sigmoid = _C.BNNSActivationFunctionHardSigmoid
    softplus = _C.BNNSActivationFunctionSoftplus
    softsign = _C.BNNSActivationFunctionSoftsign
    elu = _C.BNNSActivationFunctionELU
    clamped_leaky_rectified_linear = _C.BNNSActivationFunctionClampedLeakyRectifiedLinear
    linear_with_bias = _C.BNNSActivationFunctionLinearWithBias
    log_softmax = _C.BNNSActivationFunctionLogSoftmax
    log_sigmoid = _C.BNNSActivationFunctionLogSigmoid
    selu = _C.BNNSActivationFunctionSELU
    celu = _C.BNNSActivationFunctionCELU
    hard_shrink = _C.BNNSActivationFunctionHardShrink
    soft_shrink = _C.BNNSActivationFunctionSoftShrink
    tanh_shrink = _C.BNNSActivationFunctionTanhShrink
    threshold = _C.BNNSActivationFunctionThreshold
    prelu_per_channel = _C.BNNSActivationFunctionPReLUPerChannel
    gelu_approximation2 = _C.BNNSActivationFunctionGELUApproximation2
    hard_swish = _C.BNNSActivationFunctionHardSwish
    silu = _C.BNNSActivationFunctionSiLU
    relu6 = _C.BNNSActivationFunctionReLU6
    erf = _C.BNNSActivationFunctionErf
    gelu = _C.BNNSActivationFunctionGELU
    gelu_approximation_sigmoid = _C.BNNSActivationFunctionGELUApproximationSigmoid


class Flags(enum.IntFlag):
    """``BNNSFlags`` for ``FilterParameters.flags``.

    ``use_client_pointer``: BNNS reads the weights and bias from the caller's arrays at every
    call instead of copying them at creation (needed for ``apply_backward``).
    """

    none = 0
    use_client_pointer = 0x1


class NDArrayFlags(enum.IntEnum):
    """``BNNSNDArrayFlags``: whether ``apply_backward`` overwrites or accumulates into a gradient.

    Set on a gradient descriptor's ``flags``: ``backprop_set`` (default) overwrites,
    ``backprop_accumulate`` adds to what the array holds.
    """

    backprop_set = 0
    backprop_accumulate = 1


class FilterType(enum.IntEnum):
    """``BNNSFilterType``: the kind of a BNNS filter, as the C enum numbers them."""

    convolution = 0
    fully_connected = 1
    batch_norm = 2
    instance_norm = 3
    layer_norm = 4
    group_norm = 5
    transposed_convolution = 6
    quantization = 7
    arithmetic = 8
