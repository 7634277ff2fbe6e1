/* The legacy (macOS 10.12) creation API, deprecated in macOS 11: BNNSFilterCreateConvolutionLayer
   and BNNSFilterCreateFullyConnectedLayer. Each validates the legacy structs, rewrites them into
   the macOS 11 parameters and builds the filter through the same paths as the new API. */
#include <string.h>

#include "filter.h"

/* Legacy layer data (weights or bias): Float32 only in the portable backend. */
static bool layer_data_ok(const BNNSLayerData *d, const char *name, bool required) {
    if (d->data == NULL) {
        if (required) bp_set_error("%s.data is NULL", name);
        return !required;
    }
    if (d->data_type != BNNSDataTypeFloat32) {
        bp_set_error("%s data type 0x%x not supported by the portable backend yet (Float32 only)", name, d->data_type);
        return false;
    }
    return true;
}

static bool image_stack_ok(const BNNSImageStackDescriptor *d, const char *name) {
    if (d->width == 0 || d->height == 0 || d->channels == 0) {
        bp_set_error("%s has a zero size (width %zu, height %zu, channels %zu)", name, d->width, d->height, d->channels);
        return false;
    }
    if (d->row_stride < d->width) {
        bp_set_error("%s row_stride %zu must be >= width %zu", name, d->row_stride, d->width);
        return false;
    }
    size_t min_image;
    if (!bp_mul(d->row_stride, d->height, &min_image)) {
        bp_set_error("%s size overflow", name);
        return false;
    }
    if (d->image_stride < min_image) {
        bp_set_error("%s image_stride %zu must be >= row_stride * height = %zu", name, d->image_stride, min_image);
        return false;
    }
    if (d->data_type != BNNSDataTypeFloat32) {
        bp_set_error("%s data type 0x%x not supported by the portable backend yet (Float32 only)", name, d->data_type);
        return false;
    }
    return true;
}

static void image_desc(BNNSNDArrayDescriptor *d, const BNNSImageStackDescriptor *s) {
    memset(d, 0, sizeof *d);
    d->layout = BNNSDataLayoutImageCHW;
    d->size[0] = s->width;
    d->size[1] = s->height;
    d->size[2] = s->channels;
    d->stride[0] = 1;
    d->stride[1] = s->row_stride;
    d->stride[2] = s->image_stride;
    d->data_type = s->data_type;
    d->data_scale = s->data_scale;
    d->data_bias = s->data_bias;
}

static void vector_desc(BNNSNDArrayDescriptor *d, size_t n, const void *data, BNNSDataType type) {
    memset(d, 0, sizeof *d);
    d->layout = BNNSDataLayoutVector;
    d->size[0] = n;
    d->data = (void *)data;  /* never written through: the filter only reads weights and bias */
    d->data_type = type;
    d->data_scale = 1.0f;
}

/* The legacy size rule is an equality: in + 2*padding = stride*(out - 1) + k. */
static bool legacy_size_rule(const char *axis, size_t in, size_t out, size_t k, size_t stride, size_t pad) {
    size_t lhs, rhs, t;
    if (!bp_mul(pad, 2, &t) || !bp_add(in, t, &lhs) || !bp_mul(stride, out - 1, &rhs) || !bp_add(rhs, k, &rhs)) {
        bp_set_error("size overflow along %s", axis);
        return false;
    }
    if (lhs != rhs) {
        bp_set_error("legacy convolution sizes do not match along %s: input %zu + 2 * padding %zu = %zu, but stride "
                     "%zu * (output %zu - 1) + kernel %zu = %zu (the legacy API needs equality)", axis, in, pad, lhs,
                     stride, out, k, rhs);
        return false;
    }
    return true;
}

BNNSFilter BNNSFilterCreateConvolutionLayer(const BNNSImageStackDescriptor *in_desc,
                                            const BNNSImageStackDescriptor *out_desc,
                                            const BNNSConvolutionLayerParameters *layer_params,
                                            const BNNSFilterParameters *filter_params) {
    bp_clear_error();
    const BNNSConvolutionLayerParameters *lp = layer_params;
    if (in_desc == NULL || out_desc == NULL || lp == NULL) {
        bp_set_error("in_desc, out_desc and layer_params must not be NULL");
        return NULL;
    }
    if (!image_stack_ok(in_desc, "in_desc") || !image_stack_ok(out_desc, "out_desc")) return NULL;
    if (lp->in_channels != in_desc->channels || lp->out_channels != out_desc->channels) {
        bp_set_error("layer has in_channels %zu and out_channels %zu; the image stacks have %zu and %zu channels",
                     lp->in_channels, lp->out_channels, in_desc->channels, out_desc->channels);
        return NULL;
    }
    if (lp->k_width == 0 || lp->k_height == 0) {
        bp_set_error("kernel size %zu x %zu has a zero side", lp->k_width, lp->k_height);
        return NULL;
    }
    /* a stride of 0 is read as 1, as the macOS 11 API does */
    size_t sx = lp->x_stride ? lp->x_stride : 1, sy = lp->y_stride ? lp->y_stride : 1;
    if (!legacy_size_rule("x (width)", in_desc->width, out_desc->width, lp->k_width, sx, lp->x_padding) ||
        !legacy_size_rule("y (height)", in_desc->height, out_desc->height, lp->k_height, sy, lp->y_padding))
        return NULL;
    if (!layer_data_ok(&lp->weights, "weights", true) || !layer_data_ok(&lp->bias, "bias", false)) return NULL;

    BNNSLayerParametersConvolution p;
    memset(&p, 0, sizeof p);
    image_desc(&p.i_desc, in_desc);
    image_desc(&p.o_desc, out_desc);
    /* weights: kx + k_width*(ky + k_height*(i + in_channels*o)), i.e. packed OIHW */
    p.w_desc.layout = BNNSDataLayoutConvolutionWeightsOIHW;
    p.w_desc.size[0] = lp->k_width;
    p.w_desc.size[1] = lp->k_height;
    p.w_desc.size[2] = lp->in_channels;
    p.w_desc.size[3] = lp->out_channels;
    p.w_desc.data = (void *)lp->weights.data;
    p.w_desc.data_type = lp->weights.data_type;
    p.w_desc.data_scale = 1.0f;
    if (lp->bias.data != NULL) vector_desc(&p.bias, lp->out_channels, lp->bias.data, lp->bias.data_type);
    p.activation = lp->activation;
    p.x_stride = sx;
    p.y_stride = sy;
    p.x_padding = lp->x_padding;
    p.y_padding = lp->y_padding;
    p.groups = 1;
    return bp_create_convolution(&p, filter_params, false);
}

BNNSFilter BNNSFilterCreateFullyConnectedLayer(const BNNSVectorDescriptor *in_desc,
                                               const BNNSVectorDescriptor *out_desc,
                                               const BNNSFullyConnectedLayerParameters *layer_params,
                                               const BNNSFilterParameters *filter_params) {
    bp_clear_error();
    const BNNSFullyConnectedLayerParameters *lp = layer_params;
    if (in_desc == NULL || out_desc == NULL || lp == NULL) {
        bp_set_error("in_desc, out_desc and layer_params must not be NULL");
        return NULL;
    }
    if (in_desc->size == 0 || out_desc->size == 0) {
        bp_set_error("vector sizes must be > 0 (in %zu, out %zu)", in_desc->size, out_desc->size);
        return NULL;
    }
    if (lp->in_size != in_desc->size || lp->out_size != out_desc->size) {
        bp_set_error("layer has in_size %zu and out_size %zu; the vectors have %zu and %zu values", lp->in_size,
                     lp->out_size, in_desc->size, out_desc->size);
        return NULL;
    }
    if (in_desc->data_type != BNNSDataTypeFloat32 || out_desc->data_type != BNNSDataTypeFloat32) {
        bp_set_error("vector data types 0x%x, 0x%x not supported by the portable backend yet (Float32 only)",
                     in_desc->data_type, out_desc->data_type);
        return NULL;
    }
    if (!layer_data_ok(&lp->weights, "weights", true) || !layer_data_ok(&lp->bias, "bias", false)) return NULL;

    BNNSLayerParametersFullyConnected p;
    memset(&p, 0, sizeof p);
    vector_desc(&p.i_desc, lp->in_size, NULL, BNNSDataTypeFloat32);
    vector_desc(&p.o_desc, lp->out_size, NULL, BNNSDataTypeFloat32);
    /* weights: W(o, i) at i + o*in_size, a packed RowMajorMatrix {in, out} */
    vector_desc(&p.w_desc, 0, lp->weights.data, lp->weights.data_type);
    p.w_desc.layout = BNNSDataLayoutRowMajorMatrix;
    p.w_desc.size[0] = lp->in_size;
    p.w_desc.size[1] = lp->out_size;
    if (lp->bias.data != NULL) vector_desc(&p.bias, lp->out_size, lp->bias.data, lp->bias.data_type);
    p.activation = lp->activation;
    return BNNSFilterCreateLayerFullyConnected(&p, filter_params);
}
