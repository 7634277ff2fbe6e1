"""The cdefs reproduce the macOS SDK's ABI: every size, alignment, offset and enum value.

The expected numbers below were taken from the macOS 11 and iOS 16-18 generation SDK headers
(identical across arm64/x86_64 macOS targets) and are written out here so the repo stands alone.
"""
import pytest

import bnns_py
from bnns_py import ffi
from bnns_py._ffi import cdefs_dir

# struct: (size, alignment, [(field, offset, field size, C type)])
STRUCTS = {
    "BNNSActivation": (48, 8, [
        ("function", 0, 4, "BNNSActivationFunction"),
        ("alpha", 4, 4, "float"),
        ("beta", 8, 4, "float"),
        ("iscale", 12, 4, "int32_t"),
        ("ioffset", 16, 4, "int32_t"),
        ("ishift", 20, 4, "int32_t"),
        ("iscale_per_channel", 24, 8, "const int32_t *"),
        ("ioffset_per_channel", 32, 8, "const int32_t *"),
        ("ishift_per_channel", 40, 8, "const int32_t *"),
    ]),
    "BNNSNDArrayDescriptor": (176, 8, [
        ("flags", 0, 4, "BNNSNDArrayFlags"),
        ("layout", 4, 4, "BNNSDataLayout"),
        ("size", 8, 64, "size_t[8]"),
        ("stride", 72, 64, "size_t[8]"),
        ("data", 136, 8, "void *"),
        ("data_type", 144, 4, "BNNSDataType"),
        ("table_data", 152, 8, "void *"),
        ("table_data_type", 160, 4, "BNNSDataType"),
        ("data_scale", 164, 4, "float"),
        ("data_bias", 168, 4, "float"),
    ]),
    "BNNSLayerParametersConvolution": (840, 8, [
        ("i_desc", 0, 176, "BNNSNDArrayDescriptor"),
        ("w_desc", 176, 176, "BNNSNDArrayDescriptor"),
        ("o_desc", 352, 176, "BNNSNDArrayDescriptor"),
        ("bias", 528, 176, "BNNSNDArrayDescriptor"),
        ("activation", 704, 48, "BNNSActivation"),
        ("x_stride", 752, 8, "size_t"),
        ("y_stride", 760, 8, "size_t"),
        ("x_dilation_stride", 768, 8, "size_t"),
        ("y_dilation_stride", 776, 8, "size_t"),
        ("x_padding", 784, 8, "size_t"),
        ("y_padding", 792, 8, "size_t"),
        ("groups", 800, 8, "size_t"),
        ("pad", 808, 32, "size_t[4]"),
    ]),
    "BNNSLayerParametersFullyConnected": (752, 8, [
        ("i_desc", 0, 176, "BNNSNDArrayDescriptor"),
        ("w_desc", 176, 176, "BNNSNDArrayDescriptor"),
        ("o_desc", 352, 176, "BNNSNDArrayDescriptor"),
        ("bias", 528, 176, "BNNSNDArrayDescriptor"),
        ("activation", 704, 48, "BNNSActivation"),
    ]),
    "BNNSFilterParameters": (32, 8, [
        ("flags", 0, 4, "uint32_t"),
        ("n_threads", 8, 8, "size_t"),
        ("alloc_memory", 16, 8, "BNNSAlloc"),
        ("free_memory", 24, 8, "BNNSFree"),
    ]),
    "BNNSImageStackDescriptor": (56, 8, [
        ("width", 0, 8, "size_t"),
        ("height", 8, 8, "size_t"),
        ("channels", 16, 8, "size_t"),
        ("row_stride", 24, 8, "size_t"),
        ("image_stride", 32, 8, "size_t"),
        ("data_type", 40, 4, "BNNSDataType"),
        ("data_scale", 44, 4, "float"),
        ("data_bias", 48, 4, "float"),
    ]),
    "BNNSLayerData": (32, 8, [
        ("data", 0, 8, "const void *"),
        ("data_type", 8, 4, "BNNSDataType"),
        ("data_scale", 12, 4, "float"),
        ("data_bias", 16, 4, "float"),
        ("data_table", 24, 8, "const float *"),
    ]),
    "BNNSConvolutionLayerParameters": (176, 8, [
        ("x_stride", 0, 8, "size_t"),
        ("y_stride", 8, 8, "size_t"),
        ("x_padding", 16, 8, "size_t"),
        ("y_padding", 24, 8, "size_t"),
        ("k_width", 32, 8, "size_t"),
        ("k_height", 40, 8, "size_t"),
        ("in_channels", 48, 8, "size_t"),
        ("out_channels", 56, 8, "size_t"),
        ("weights", 64, 32, "BNNSLayerData"),
        ("bias", 96, 32, "BNNSLayerData"),
        ("activation", 128, 48, "BNNSActivation"),
    ]),
    "BNNSVectorDescriptor": (24, 8, [
        ("size", 0, 8, "size_t"),
        ("data_type", 8, 4, "BNNSDataType"),
        ("data_scale", 12, 4, "float"),
        ("data_bias", 16, 4, "float"),
    ]),
    "BNNSFullyConnectedLayerParameters": (128, 8, [
        ("in_size", 0, 8, "size_t"),
        ("out_size", 8, 8, "size_t"),
        ("weights", 16, 32, "BNNSLayerData"),
        ("bias", 48, 32, "BNNSLayerData"),
        ("activation", 80, 48, "BNNSActivation"),
    ]),
}

ENUMS = {
    "BNNSDataType": {
        "BNNSDataTypeFloatBit": 0x10000,
        "BNNSDataTypeFloat16": 0x10010,
        "BNNSDataTypeFloat32": 0x10020,
        "BNNSDataTypeBFloat16": 0x18010,
        "BNNSDataTypeIntBit": 0x20000,
        "BNNSDataTypeInt1": 0x20001,
        "BNNSDataTypeInt2": 0x20002,
        "BNNSDataTypeInt4": 0x20004,
        "BNNSDataTypeInt8": 0x20008,
        "BNNSDataTypeInt16": 0x20010,
        "BNNSDataTypeInt32": 0x20020,
        "BNNSDataTypeInt64": 0x20040,
        "BNNSDataTypeUIntBit": 0x40000,
        "BNNSDataTypeUInt1": 0x40001,
        "BNNSDataTypeUInt2": 0x40002,
        "BNNSDataTypeUInt4": 0x40004,
        "BNNSDataTypeUInt8": 0x40008,
        "BNNSDataTypeUInt16": 0x40010,
        "BNNSDataTypeUInt32": 0x40020,
        "BNNSDataTypeUInt64": 0x40040,
        "BNNSDataTypeIndexedBit": 0x80000,
        "BNNSDataTypeIndexed1": 0x80001,
        "BNNSDataTypeIndexed2": 0x80002,
        "BNNSDataTypeIndexed4": 0x80004,
        "BNNSDataTypeIndexed8": 0x80008,
        "BNNSDataTypeMiscellaneousBit": 0x100000,
        "BNNSDataTypeBoolean": 0x100008,
    },
    "BNNSDataLayout": {
        "BNNSDataLayoutVector": 0x10000,
        "BNNSDataLayout1DLastMajor": 0x18000,
        "BNNSDataLayout1DFirstMajor": 0x18001,
        "BNNSDataLayoutRowMajorMatrix": 0x20000,
        "BNNSDataLayoutColumnMajorMatrix": 0x20001,
        "BNNSDataLayout2DLastMajor": 0x28000,
        "BNNSDataLayout2DFirstMajor": 0x28001,
        "BNNSDataLayoutFullyConnectedSparse": 0x21001,
        "BNNSDataLayoutImageCHW": 0x30000,
        "BNNSDataLayoutSNE": 0x30001,
        "BNNSDataLayoutNSE": 0x30002,
        "BNNSDataLayoutMHA_DHK": 0x30003,
        "BNNSDataLayout3DLastMajor": 0x38000,
        "BNNSDataLayout3DFirstMajor": 0x38001,
        "BNNSDataLayoutConvolutionWeightsOIHW": 0x40000,
        "BNNSDataLayoutConvolutionWeightsOIHrWr": 0x40001,
        "BNNSDataLayoutConvolutionWeightsIOHrWr": 0x40002,
        "BNNSDataLayoutConvolutionWeightsOIHW_Pack32": 0x40010,
        "BNNSDataLayout4DLastMajor": 0x48000,
        "BNNSDataLayout4DFirstMajor": 0x48001,
        "BNNSDataLayout5DLastMajor": 0x58000,
        "BNNSDataLayout5DFirstMajor": 0x58001,
        "BNNSDataLayout6DLastMajor": 0x68000,
        "BNNSDataLayout6DFirstMajor": 0x68001,
        "BNNSDataLayout7DLastMajor": 0x78000,
        "BNNSDataLayout7DFirstMajor": 0x78001,
        "BNNSDataLayout8DLastMajor": 0x88000,
        "BNNSDataLayout8DFirstMajor": 0x88001,
    },
    "BNNSActivationFunction": {
        "BNNSActivationFunctionIdentity": 0x0,
        "BNNSActivationFunctionRectifiedLinear": 0x1,
        "BNNSActivationFunctionLeakyRectifiedLinear": 0x2,
        "BNNSActivationFunctionSigmoid": 0x3,
        "BNNSActivationFunctionTanh": 0x4,
        "BNNSActivationFunctionScaledTanh": 0x5,
        "BNNSActivationFunctionAbs": 0x6,
        "BNNSActivationFunctionLinear": 0x7,
        "BNNSActivationFunctionClamp": 0x8,
        "BNNSActivationFunctionIntegerLinearSaturate": 0x9,
        "BNNSActivationFunctionIntegerLinearSaturatePerChannel": 0xa,
        "BNNSActivationFunctionSoftmax": 0xb,
        "BNNSActivationFunctionGELUApproximation": 0xc,
        "BNNSActivationFunctionGumbel": 0xd,
        "BNNSActivationFunctionGumbelMax": 0xe,
        "BNNSActivationFunctionHardSigmoid": 0xf,
        "BNNSActivationFunctionSoftplus": 0x10,
        "BNNSActivationFunctionSoftsign": 0x11,
        "BNNSActivationFunctionELU": 0x12,
        "BNNSActivationFunctionClampedLeakyRectifiedLinear": 0x13,
        "BNNSActivationFunctionLinearWithBias": 0x14,
        "BNNSActivationFunctionLogSoftmax": 0x15,
        "BNNSActivationFunctionLogSigmoid": 0x16,
        "BNNSActivationFunctionSELU": 0x17,
        "BNNSActivationFunctionCELU": 0x18,
        "BNNSActivationFunctionHardShrink": 0x19,
        "BNNSActivationFunctionSoftShrink": 0x1a,
        "BNNSActivationFunctionTanhShrink": 0x1b,
        "BNNSActivationFunctionThreshold": 0x1c,
        "BNNSActivationFunctionPReLUPerChannel": 0x1d,
        "BNNSActivationFunctionGELUApproximation2": 0x1e,
        "BNNSActivationFunctionHardSwish": 0x1e,
        "BNNSActivationFunctionSiLU": 0x1f,
        "BNNSActivationFunctionReLU6": 0x20,
        "BNNSActivationFunctionErf": 0x21,
        "BNNSActivationFunctionGELU": 0x22,
        "BNNSActivationFunctionGELUApproximationSigmoid": 0x23,
    },
    "BNNSFlags": {
        "BNNSFlagsUseClientPtr": 0x1,
    },
    "BNNSNDArrayFlags": {
        "BNNSNDArrayFlagBackpropSet": 0x0,
        "BNNSNDArrayFlagBackpropAccumulate": 0x1,
    },
    "BNNSFilterType": {
        "BNNSConvolution": 0x0,
        "BNNSFullyConnected": 0x1,
        "BNNSBatchNorm": 0x2,
        "BNNSInstanceNorm": 0x3,
        "BNNSLayerNorm": 0x4,
        "BNNSGroupNorm": 0x5,
        "BNNSTransposedConvolution": 0x6,
        "BNNSQuantization": 0x7,
        "BNNSArithmetic": 0x8,
    },
}

# function: (return type, parameter types)
FUNCTIONS = {
    "BNNSFilterCreateLayerConvolution": ("BNNSFilter", ('const BNNSLayerParametersConvolution *', 'const BNNSFilterParameters *')),
    "BNNSFilterCreateLayerTransposedConvolution": ("BNNSFilter", ('const BNNSLayerParametersConvolution *', 'const BNNSFilterParameters *')),
    "BNNSFilterCreateLayerFullyConnected": ("BNNSFilter", ('const BNNSLayerParametersFullyConnected *', 'const BNNSFilterParameters *')),
    "BNNSFilterCreateConvolutionLayer": ("BNNSFilter", ('const BNNSImageStackDescriptor *', 'const BNNSImageStackDescriptor *', 'const BNNSConvolutionLayerParameters *', 'const BNNSFilterParameters *')),
    "BNNSFilterCreateFullyConnectedLayer": ("BNNSFilter", ('const BNNSVectorDescriptor *', 'const BNNSVectorDescriptor *', 'const BNNSFullyConnectedLayerParameters *', 'const BNNSFilterParameters *')),
    "BNNSFilterApply": ("int", ('BNNSFilter', 'const void *', 'void *')),
    "BNNSFilterApplyBatch": ("int", ('BNNSFilter', 'size_t', 'const void *', 'size_t', 'void *', 'size_t')),
    "BNNSFilterApplyBackwardBatch": ("int", ('BNNSFilter', 'size_t', 'const void *', 'size_t', 'BNNSNDArrayDescriptor *', 'size_t', 'const void *', 'size_t', 'const BNNSNDArrayDescriptor *', 'size_t', 'BNNSNDArrayDescriptor *', 'BNNSNDArrayDescriptor *')),
    "BNNSFilterDestroy": ("void", ('BNNSFilter',)),
}


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_size_and_alignment(name):
    size, align, _ = STRUCTS[name]
    assert ffi.sizeof(name) == size
    assert ffi.alignof(name) == align


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_field_offsets_and_sizes(name):
    _, _, fields = STRUCTS[name]
    ctype = ffi.typeof(name)
    declared = [field_name for field_name, _ in ctype.fields]
    assert declared == [f[0] for f in fields], "field order differs from the SDK"
    for (field, offset, size, c_type), (_, cfield) in zip(fields, ctype.fields):
        assert ffi.offsetof(name, field) == offset, field
        assert ffi.sizeof(cfield.type) == size, field


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_field_types(name):
    # Enum typedefs resolve to uint32_t, as in the SDK's C mode, so comparing cffi types checks them too.
    _, _, fields = STRUCTS[name]
    for (field, _, _, c_type), (_, cfield) in zip(fields, ffi.typeof(name).fields):
        assert cfield.type == ffi.typeof(c_type), (field, cfield.type.cname, c_type)


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_enum_typedefs_are_four_byte_unsigned(name):
    assert ffi.sizeof(name) == 4
    assert ffi.cast(name, -1) == 0xFFFFFFFF


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_enum_values(name):
    constants = ffi.dlopen(None)  # enum constants come from the cdefs, not from a library
    for constant, value in ENUMS[name].items():
        assert getattr(constants, constant) == value, constant


def test_python_enums_match_c_constants():
    pairs = [(bnns_py.DataType, "BNNSDataType"), (bnns_py.DataLayout, "BNNSDataLayout"),
             (bnns_py.FilterType, "BNNSFilterType")]
    for py_enum, _ in pairs:
        assert len(set(m.value for m in py_enum)) == len(set(m.value for m in py_enum.__members__.values()))
    data_types = set(ENUMS["BNNSDataType"].values()) - {0x10000, 0x20000, 0x40000, 0x80000, 0x100000}
    assert {m.value for m in bnns_py.DataType} == data_types
    assert {m.value for m in bnns_py.DataLayout} == set(ENUMS["BNNSDataLayout"].values())
    assert {m.value for m in bnns_py.FilterType} == set(ENUMS["BNNSFilterType"].values())
    assert bnns_py.Flags.use_client_pointer == ENUMS["BNNSFlags"]["BNNSFlagsUseClientPtr"]
    assert bnns_py.NDArrayFlags.backprop_accumulate == ENUMS["BNNSNDArrayFlags"]["BNNSNDArrayFlagBackpropAccumulate"]
    for layout in bnns_py.DataLayout:
        assert layout.rank == (layout.value & 0xF0000) >> 16


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_prototypes(name):
    result, params = FUNCTIONS[name]
    function = getattr(bnns_py.get_backend().lib, name)
    ftype = ffi.typeof(function)
    assert ftype.result.cname == ffi.typeof(result).cname
    expected = [ffi.typeof(p.replace("const ", "").strip()).cname for p in params]
    assert [a.cname for a in ftype.args] == expected


def test_cdefs_have_no_preprocessor_lines():
    for header in ("bnns.h", "bnns_portable.h"):
        for line in (cdefs_dir() / header).read_text().splitlines():
            assert not line.lstrip().startswith("#"), f"{header}: {line}"

