/* BNNSFilterCreateLayerFullyConnected: a fully-connected layer expressed as a 1x1 convolution.

   Out(o) = act(bias(o) + sum_i W(o,i) In(i)) is the convolution of a 1x1 image with `in` channels
   by a 1x1 kernel into a 1x1 image with `out` channels: the vectors become ImageCHW {1, 1, n}
   (channel stride = the vector's stride) and the weight matrix OIHW {1, 1, in, out} (input-channel
   stride = the matrix's stride along i, output-channel stride = its stride along o). The filter is
   then built by bp_create_convolution, so forward, backward, copy / client-pointer weights and the
   allocators are the convolution's. Backward accepts the gradients in the FC shapes and translates
   them here (bp_fc_translate_gradients). */
#include <string.h>

#include "filter.h"

static bool is_vector_layout(BNNSDataLayout layout) {
    return layout == BNNSDataLayoutVector || layout == BNNSDataLayout1DLastMajor ||
           layout == BNNSDataLayout1DFirstMajor;
}

/* A Float32 vector descriptor: its length and resolved stride (0 means packed: 1). */
static bool vector_desc(const BNNSNDArrayDescriptor *d, const char *name, size_t *n, size_t *stride) {
    if (!is_vector_layout(d->layout)) {
        bp_set_error("%s layout 0x%x is not a vector (Vector 0x%x, 1DLastMajor or 1DFirstMajor)", name, d->layout,
                     BNNSDataLayoutVector);
        return false;
    }
    if (d->data_type != BNNSDataTypeFloat32) {
        bp_set_error("%s data type 0x%x not supported by the portable backend yet (Float32 only)", name, d->data_type);
        return false;
    }
    size_t s[8], extent;
    if (!bp_resolve_strides(d, 1, name, s, &extent)) return false;
    *n = d->size[0];
    *stride = s[0];
    return true;
}

/* Strides of a weight matrix W(o, i), in values: along i (s_in) and along o (s_out). Rows of the
   matrix (one per output) must not overlap: s_out >= in * s_in. */
static bool matrix_strides(const BNNSNDArrayDescriptor *d, const char *name, size_t in, size_t out, size_t *s_in,
                           size_t *s_out) {
    if (d->layout == BNNSDataLayoutRowMajorMatrix) {
        /* size = {columns, rows} = {in, out}; (row o, column i) at i*stride[0] + o*stride[1] */
        if (d->size[0] != in || d->size[1] != out) {
            bp_set_error("%s is a RowMajorMatrix of size {%zu, %zu}; the layer needs {in, out} = {%zu, %zu}", name,
                         d->size[0], d->size[1], in, out);
            return false;
        }
    } else if (d->layout == BNNSDataLayout2DFirstMajor) {
        /* size = {out, in}; (o, i) at i*stride[0] + o*stride[1]: strides still run fastest first */
        if (d->size[0] != out || d->size[1] != in) {
            bp_set_error("%s is a 2DFirstMajor matrix of size {%zu, %zu}; the layer needs {out, in} = {%zu, %zu}",
                         name, d->size[0], d->size[1], out, in);
            return false;
        }
    } else {
        bp_set_error("%s layout 0x%x not supported for a fully-connected layer (RowMajorMatrix {in, out} or "
                     "2DFirstMajor {out, in})", name, d->layout);
        return false;
    }
    size_t si = d->stride[0] ? d->stride[0] : 1, min_so, so;
    if (!bp_mul(in, si, &min_so)) {
        bp_set_error("%s size overflow", name);
        return false;
    }
    so = d->stride[1] ? d->stride[1] : min_so;
    if (so < min_so) {
        bp_set_error("%s stride[1]=%zu overlaps: must be >= %zu (in %zu * stride along in %zu)", name, so, min_so,
                     in, si);
        return false;
    }
    size_t span, t;
    if (!bp_mul(out - 1, so, &span) || !bp_mul(in - 1, si, &t) || !bp_add(span, t, &span) ||
        !bp_mul(span, sizeof(float) * 2, &t) || t > (size_t)INT64_MAX) {
        bp_set_error("%s size overflow", name);
        return false;
    }
    *s_in = si;
    *s_out = so;
    return true;
}

static void image_for_vector(BNNSNDArrayDescriptor *img, const BNNSNDArrayDescriptor *vec, size_t n, size_t stride) {
    *img = *vec;
    img->layout = BNNSDataLayoutImageCHW;
    memset(img->size, 0, sizeof img->size);
    memset(img->stride, 0, sizeof img->stride);
    img->size[0] = img->size[1] = 1;
    img->size[2] = n;
    img->stride[0] = img->stride[1] = 1;
    img->stride[2] = stride;
}

static void oihw_for_matrix(BNNSNDArrayDescriptor *w, const BNNSNDArrayDescriptor *m, size_t in, size_t out,
                            size_t s_in, size_t s_out) {
    *w = *m;
    w->layout = BNNSDataLayoutConvolutionWeightsOIHW;
    memset(w->size, 0, sizeof w->size);
    memset(w->stride, 0, sizeof w->stride);
    w->size[0] = w->size[1] = 1;
    w->size[2] = in;
    w->size[3] = out;
    /* kx and ky only take index 0; their strides just have to keep the strides non-decreasing */
    w->stride[0] = w->stride[1] = w->stride[2] = s_in;
    w->stride[3] = s_out;
}

/* A filter owning its weights, over contiguous vectors (so that every call runs bp_fc_forward):
   the packed panels replace its canonical copy, which only a backward call's client twin needs
   again (bp_client_twin unpacks them). Without memory for the panels the canonical copy stays,
   and the kernel reads it in place. */
static void keep_panels_only(bp_filter *f) {
    size_t in = f->in.c, out = f->out.c;
    f->fc_panels = bp_alloc(&f->allocator, bp_fc_packed_floats(out, in) * sizeof(float));
    if (f->fc_panels == NULL) {
        bp_clear_error(); /* not an error */
        return;
    }
    bp_fc_pack(f->w_owned, in, out, in, f->fc_panels);
    bp_free(&f->allocator, f->w_owned);
    f->w_owned = NULL;
}

BNNSFilter BNNSFilterCreateLayerFullyConnected(const BNNSLayerParametersFullyConnected *layer_params,
                                               const BNNSFilterParameters *filter_params) {
    bp_clear_error();
    const BNNSLayerParametersFullyConnected *p = layer_params;
    if (p == NULL) {
        bp_set_error("layer_params is NULL");
        return NULL;
    }
    size_t in, out, s_i, s_o, w_in, w_out;
    if (!vector_desc(&p->i_desc, "i_desc", &in, &s_i) || !vector_desc(&p->o_desc, "o_desc", &out, &s_o))
        return NULL;
    const BNNSNDArrayDescriptor *wd = &p->w_desc;
    if (wd->data_type != BNNSDataTypeFloat32) {
        bp_set_error("w_desc data type 0x%x not supported by the portable backend yet (Float32 only)", wd->data_type);
        return NULL;
    }
    if (wd->data == NULL) {
        bp_set_error("w_desc.data is NULL");
        return NULL;
    }
    if (!matrix_strides(wd, "w_desc", in, out, &w_in, &w_out)) return NULL;
    const BNNSNDArrayDescriptor *bd = &p->bias;
    if (bd->data != NULL) {
        if (!is_vector_layout(bd->layout) || bd->size[0] != out) {
            bp_set_error("bias must be a vector of %zu values (the output size), got layout 0x%x size %zu", out,
                         bd->layout, bd->size[0]);
            return NULL;
        }
        /* the convolution path would convert other types (dtypes.c); fully connected stays Float32 */
        if (bd->data_type != BNNSDataTypeFloat32) {
            bp_set_error("bias data type 0x%x not supported by the portable backend yet (Float32 only)", bd->data_type);
            return NULL;
        }
    }

    BNNSLayerParametersConvolution conv;
    memset(&conv, 0, sizeof conv);
    image_for_vector(&conv.i_desc, &p->i_desc, in, s_i);
    image_for_vector(&conv.o_desc, &p->o_desc, out, s_o);
    oihw_for_matrix(&conv.w_desc, wd, in, out, w_in, w_out);
    conv.bias = *bd;
    conv.activation = p->activation;
    conv.x_stride = conv.y_stride = 1;
    conv.groups = 1;
    bp_filter *f = bp_create_convolution(&conv, filter_params, false);
    if (f == NULL) return NULL;
    f->fully_connected = true;
    if (!f->client && f->in.sc == 1 && f->out.sc == 1) keep_panels_only(f);
    f->fc_w_layout = wd->layout;
    f->fc_w_size[0] = wd->size[0];
    f->fc_w_size[1] = wd->size[1];
    return f;
}

/* ---- backward: FC-shaped gradients -> the convolution's --------------------------------------- */

static bool vector_gradient(const BNNSNDArrayDescriptor *d, const char *name, size_t n, BNNSNDArrayDescriptor *img) {
    size_t len, stride;
    if (!vector_desc(d, name, &len, &stride)) return false;
    if (len != n) {
        bp_set_error("%s has %zu values; the fully-connected layer's %s has %zu", name, len,
                     name[0] == 'i' ? "input" : "output", n);
        return false;
    }
    image_for_vector(img, d, n, stride);
    return true;
}

bool bp_fc_translate_gradients(const bp_filter *f, BNNSNDArrayDescriptor **in_delta, BNNSNDArrayDescriptor *in_buf,
                               const BNNSNDArrayDescriptor **out_delta, BNNSNDArrayDescriptor *out_buf,
                               BNNSNDArrayDescriptor **weights_delta, BNNSNDArrayDescriptor *weights_buf) {
    size_t in = f->in.c, out = f->out.c;
    if (*in_delta) {
        if (!vector_gradient(*in_delta, "in_delta", in, in_buf)) return false;
        *in_delta = in_buf;
    }
    if (*out_delta) {
        if (!vector_gradient(*out_delta, "out_delta", out, out_buf)) return false;
        *out_delta = out_buf;
    }
    if (*weights_delta) {
        const BNNSNDArrayDescriptor *d = *weights_delta;
        if (d->layout != f->fc_w_layout || d->size[0] != f->fc_w_size[0] || d->size[1] != f->fc_w_size[1]) {
            bp_set_error("weights_delta must have the weights' layout 0x%x and sizes {%zu, %zu}, got layout 0x%x "
                         "sizes {%zu, %zu}", f->fc_w_layout, f->fc_w_size[0], f->fc_w_size[1], d->layout, d->size[0],
                         d->size[1]);
            return false;
        }
        size_t s_in, s_out;
        if (!matrix_strides(d, "weights_delta", in, out, &s_in, &s_out)) return false;
        oihw_for_matrix(weights_buf, d, in, out, s_in, s_out);
        *weights_delta = weights_buf;
    }
    return true;
}
