/*
 * bnns-py: declarations of the BNNS convolution-family C API.
 *
 * Written for bnns-py from the ABI facts (sizes, offsets, enum values, prototypes) of the macOS
 * SDK; no SDK text is reproduced. One file serves two readers:
 *   - cffi parses it (ABI mode) to call Accelerate on macOS or the portable library elsewhere;
 *   - the portable C library includes it, after <stddef.h>, <stdint.h> and <stdbool.h>.
 * So it must stay plain C that cffi accepts: no preprocessor lines, explicit enum values.
 *
 * Enumerations are 4-byte unsigned integers in the SDK's C mode: each is declared here as a
 * uint32_t typedef plus an anonymous enum of its constants.
 */

/* ---- handles and callbacks ------------------------------------------------------------- */

typedef void *BNNSFilter;
typedef int (*BNNSAlloc)(void **memptr, size_t alignment, size_t size);
typedef void (*BNNSFree)(void *ptr);

/* ---- enumerations ---------------------------------------------------------------------- */

typedef uint32_t BNNSDataType;
enum {
    BNNSDataTypeFloatBit = 0x10000,
    BNNSDataTypeFloat16 = 0x10010,
    BNNSDataTypeFloat32 = 0x10020,
    BNNSDataTypeBFloat16 = 0x18010,
    BNNSDataTypeIntBit = 0x20000,
    BNNSDataTypeInt1 = 0x20001,
    BNNSDataTypeInt2 = 0x20002,
    BNNSDataTypeInt4 = 0x20004,
    BNNSDataTypeInt8 = 0x20008,
    BNNSDataTypeInt16 = 0x20010,
    BNNSDataTypeInt32 = 0x20020,
    BNNSDataTypeInt64 = 0x20040,
    BNNSDataTypeUIntBit = 0x40000,
    BNNSDataTypeUInt1 = 0x40001,
    BNNSDataTypeUInt2 = 0x40002,
    BNNSDataTypeUInt4 = 0x40004,
    BNNSDataTypeUInt8 = 0x40008,
    BNNSDataTypeUInt16 = 0x40010,
    BNNSDataTypeUInt32 = 0x40020,
    BNNSDataTypeUInt64 = 0x40040,
    BNNSDataTypeIndexedBit = 0x80000,
    BNNSDataTypeIndexed1 = 0x80001,
    BNNSDataTypeIndexed2 = 0x80002,
    BNNSDataTypeIndexed4 = 0x80004,
    BNNSDataTypeIndexed8 = 0x80008,
    BNNSDataTypeMiscellaneousBit = 0x100000,
    BNNSDataTypeBoolean = 0x100008
};

typedef uint32_t BNNSDataLayout;
enum {
    BNNSDataLayoutVector = 0x10000,
    BNNSDataLayout1DLastMajor = 0x18000,
    BNNSDataLayout1DFirstMajor = 0x18001,
    BNNSDataLayoutRowMajorMatrix = 0x20000,
    BNNSDataLayoutColumnMajorMatrix = 0x20001,
    BNNSDataLayoutFullyConnectedSparse = 0x21001,
    BNNSDataLayout2DLastMajor = 0x28000,
    BNNSDataLayout2DFirstMajor = 0x28001,
    BNNSDataLayoutImageCHW = 0x30000,
    BNNSDataLayoutSNE = 0x30001,
    BNNSDataLayoutNSE = 0x30002,
    BNNSDataLayoutMHA_DHK = 0x30003,
    BNNSDataLayout3DLastMajor = 0x38000,
    BNNSDataLayout3DFirstMajor = 0x38001,
    BNNSDataLayoutConvolutionWeightsOIHW = 0x40000,
    BNNSDataLayoutConvolutionWeightsOIHrWr = 0x40001,
    BNNSDataLayoutConvolutionWeightsIOHrWr = 0x40002,
    BNNSDataLayoutConvolutionWeightsOIHW_Pack32 = 0x40010,
    BNNSDataLayout4DLastMajor = 0x48000,
    BNNSDataLayout4DFirstMajor = 0x48001,
    BNNSDataLayout5DLastMajor = 0x58000,
    BNNSDataLayout5DFirstMajor = 0x58001,
    BNNSDataLayout6DLastMajor = 0x68000,
    BNNSDataLayout6DFirstMajor = 0x68001,
    BNNSDataLayout7DLastMajor = 0x78000,
    BNNSDataLayout7DFirstMajor = 0x78001,
    BNNSDataLayout8DLastMajor = 0x88000,
    BNNSDataLayout8DFirstMajor = 0x88001
};

typedef uint32_t BNNSActivationFunction;
enum {
    BNNSActivationFunctionIdentity = 0,
    BNNSActivationFunctionRectifiedLinear = 1,
    BNNSActivationFunctionLeakyRectifiedLinear = 2,
    BNNSActivationFunctionSigmoid = 3,
    BNNSActivationFunctionTanh = 4,
    BNNSActivationFunctionScaledTanh = 5,
    BNNSActivationFunctionAbs = 6,
    BNNSActivationFunctionLinear = 7,
    BNNSActivationFunctionClamp = 8,
    BNNSActivationFunctionIntegerLinearSaturate = 9,
    BNNSActivationFunctionIntegerLinearSaturatePerChannel = 10,
    BNNSActivationFunctionSoftmax = 11,
    BNNSActivationFunctionGELUApproximation = 12,
    BNNSActivationFunctionGumbel = 13,
    BNNSActivationFunctionGumbelMax = 14,
    BNNSActivationFunctionHardSigmoid = 15,
    BNNSActivationFunctionSoftplus = 16,
    BNNSActivationFunctionSoftsign = 17,
    BNNSActivationFunctionELU = 18,
    BNNSActivationFunctionClampedLeakyRectifiedLinear = 19,
    BNNSActivationFunctionLinearWithBias = 20,
    BNNSActivationFunctionLogSoftmax = 21,
    BNNSActivationFunctionLogSigmoid = 22,
    BNNSActivationFunctionSELU = 23,
    BNNSActivationFunctionCELU = 24,
    BNNSActivationFunctionHardShrink = 25,
    BNNSActivationFunctionSoftShrink = 26,
    BNNSActivationFunctionTanhShrink = 27,
    BNNSActivationFunctionThreshold = 28,
    BNNSActivationFunctionPReLUPerChannel = 29,
    BNNSActivationFunctionGELUApproximation2 = 30,
    BNNSActivationFunctionHardSwish = 30,
    BNNSActivationFunctionSiLU = 31,
    BNNSActivationFunctionReLU6 = 32,
    BNNSActivationFunctionErf = 33,
    BNNSActivationFunctionGELU = 34,
    BNNSActivationFunctionGELUApproximationSigmoid = 35
};

typedef uint32_t BNNSFlags;
enum {
    BNNSFlagsUseClientPtr = 0x1
};

typedef uint32_t BNNSNDArrayFlags;
enum {
    BNNSNDArrayFlagBackpropSet = 0,
    BNNSNDArrayFlagBackpropAccumulate = 1
};

typedef uint32_t BNNSFilterType;
enum {
    BNNSConvolution = 0,
    BNNSFullyConnected = 1,
    BNNSBatchNorm = 2,
    BNNSInstanceNorm = 3,
    BNNSLayerNorm = 4,
    BNNSGroupNorm = 5,
    BNNSTransposedConvolution = 6,
    BNNSQuantization = 7,
    BNNSArithmetic = 8
};

/* ---- descriptors and layer parameters (macOS 11 API) ---------------------------------- */

/* size[] and stride[] run innermost axis first; strides count values; a stride of 0 means
   "packed along this axis". Only the first rank(layout) entries are read. */
typedef struct {
    BNNSNDArrayFlags flags;
    BNNSDataLayout layout;
    size_t size[8];
    size_t stride[8];
    void *data;
    BNNSDataType data_type;
    void *table_data;
    BNNSDataType table_data_type;
    float data_scale;
    float data_bias;
} BNNSNDArrayDescriptor;

typedef struct {
    BNNSActivationFunction function;
    float alpha;
    float beta;
    int32_t iscale;
    int32_t ioffset;
    int32_t ishift;
    const int32_t *iscale_per_channel;
    const int32_t *ioffset_per_channel;
    const int32_t *ishift_per_channel;
} BNNSActivation;

typedef struct {
    BNNSNDArrayDescriptor i_desc;
    BNNSNDArrayDescriptor w_desc;
    BNNSNDArrayDescriptor o_desc;
    BNNSNDArrayDescriptor bias;
    BNNSActivation activation;
    size_t x_stride;
    size_t y_stride;
    size_t x_dilation_stride;
    size_t y_dilation_stride;
    size_t x_padding;
    size_t y_padding;
    size_t groups;
    size_t pad[4];            /* left, right, up, down */
} BNNSLayerParametersConvolution;

typedef struct {
    BNNSNDArrayDescriptor i_desc;
    BNNSNDArrayDescriptor w_desc;
    BNNSNDArrayDescriptor o_desc;
    BNNSNDArrayDescriptor bias;
    BNNSActivation activation;
} BNNSLayerParametersFullyConnected;

typedef struct {
    uint32_t flags;           /* OR of BNNSFlags */
    size_t n_threads;         /* 0: let the library choose */
    BNNSAlloc alloc_memory;   /* NULL: posix_memalign */
    BNNSFree free_memory;     /* NULL: free */
} BNNSFilterParameters;

/* ---- legacy descriptors and parameters (macOS 10.12 API, deprecated in 11) -------------- */

typedef struct {
    size_t width;
    size_t height;
    size_t channels;
    size_t row_stride;
    size_t image_stride;
    BNNSDataType data_type;
    float data_scale;
    float data_bias;
} BNNSImageStackDescriptor;

typedef struct {
    size_t size;
    BNNSDataType data_type;
    float data_scale;
    float data_bias;
} BNNSVectorDescriptor;

typedef struct {
    const void *data;
    BNNSDataType data_type;
    float data_scale;
    float data_bias;
    const float *data_table;
} BNNSLayerData;

typedef struct {
    size_t x_stride;
    size_t y_stride;
    size_t x_padding;
    size_t y_padding;
    size_t k_width;
    size_t k_height;
    size_t in_channels;
    size_t out_channels;
    BNNSLayerData weights;
    BNNSLayerData bias;
    BNNSActivation activation;
} BNNSConvolutionLayerParameters;

typedef struct {
    size_t in_size;
    size_t out_size;
    BNNSLayerData weights;
    BNNSLayerData bias;
    BNNSActivation activation;
} BNNSFullyConnectedLayerParameters;

/* ---- functions ------------------------------------------------------------------------- */

BNNSFilter BNNSFilterCreateLayerConvolution(const BNNSLayerParametersConvolution *layer_params,
                                            const BNNSFilterParameters *filter_params);
BNNSFilter BNNSFilterCreateLayerTransposedConvolution(const BNNSLayerParametersConvolution *layer_params,
                                                      const BNNSFilterParameters *filter_params);
BNNSFilter BNNSFilterCreateLayerFullyConnected(const BNNSLayerParametersFullyConnected *layer_params,
                                               const BNNSFilterParameters *filter_params);
BNNSFilter BNNSFilterCreateConvolutionLayer(const BNNSImageStackDescriptor *in_desc,
                                            const BNNSImageStackDescriptor *out_desc,
                                            const BNNSConvolutionLayerParameters *layer_params,
                                            const BNNSFilterParameters *filter_params);
BNNSFilter BNNSFilterCreateFullyConnectedLayer(const BNNSVectorDescriptor *in_desc,
                                               const BNNSVectorDescriptor *out_desc,
                                               const BNNSFullyConnectedLayerParameters *layer_params,
                                               const BNNSFilterParameters *filter_params);

int BNNSFilterApply(BNNSFilter filter, const void *in, void *out);
int BNNSFilterApplyBatch(BNNSFilter filter, size_t batch_size,
                         const void *in, size_t in_stride,
                         void *out, size_t out_stride);
int BNNSFilterApplyBackwardBatch(BNNSFilter filter, size_t batch_size,
                                 const void *in, size_t in_stride,
                                 BNNSNDArrayDescriptor *in_delta, size_t in_delta_stride,
                                 const void *out, size_t out_stride,
                                 const BNNSNDArrayDescriptor *out_delta, size_t out_delta_stride,
                                 BNNSNDArrayDescriptor *weights_delta,
                                 BNNSNDArrayDescriptor *bias_delta);
void BNNSFilterDestroy(BNNSFilter filter);
