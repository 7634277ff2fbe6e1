/* Convolutions with Float16, BFloat16, Int8 or UInt8 descriptors, wrapped around the Float32
   filter (see convert.h for what is supported and dtypes.h for the hooks). */
#include <stdio.h>
#include <string.h>

#include "convert.h"
#include "dtypes.h"

struct bp_dtype_ext {
    BNNSDataType in_type, out_type, w_type, bias_type;
    float in_scale, in_bias;
    /* UseClientPtr filters read the caller's weights and bias at every call: when either is not
       Float32 it is converted per call (the descriptors below keep the caller's pointers) */
    bool convert_weights, convert_bias;
    BNNSNDArrayDescriptor w_desc, bias_desc;
    size_t w_extent, bias_count, bias_stride;
};

static const char *type_name(BNNSDataType t) {
    switch (t) {
    case BNNSDataTypeFloat32: return "Float32";
    case BNNSDataTypeFloat16: return "Float16";
    case BNNSDataTypeBFloat16: return "BFloat16";
    case BNNSDataTypeInt8: return "Int8";
    case BNNSDataTypeUInt8: return "UInt8";
    case BNNSDataTypeInt16: return "Int16";
    case BNNSDataTypeInt32: return "Int32";
    case BNNSDataTypeUInt16: return "UInt16";
    case BNNSDataTypeUInt32: return "UInt32";
    default: return NULL;
    }
}

static bool is_float_type(BNNSDataType t) {
    return t == BNNSDataTypeFloat32 || t == BNNSDataTypeFloat16 || t == BNNSDataTypeBFloat16;
}

static bool check_type(const char *name, BNNSDataType t, bool output) {
    if (bp_dtype_size(t) != 0 && (!output || is_float_type(t))) return true;
    const char *known = type_name(t);
    char label[32];
    if (known == NULL) {
        snprintf(label, sizeof label, "0x%x", (unsigned)t);
        known = label;
    }
    if (output)
        bp_set_error("%s data type %s not supported by the portable backend: outputs are Float32, Float16 or "
                     "BFloat16 (how BNNS quantizes a convolution output to integers is not documented)", name, known);
    else
        bp_set_error("%s data type %s not supported by the portable backend (Float32, Float16, BFloat16, Int8, "
                     "UInt8)", name, known);
    return false;
}

bool bp_dtype_needed(const BNNSLayerParametersConvolution *p) {
    return p->i_desc.data_type != BNNSDataTypeFloat32 || p->o_desc.data_type != BNNSDataTypeFloat32 ||
           p->w_desc.data_type != BNNSDataTypeFloat32 ||
           (p->bias.data != NULL && p->bias.data_type != BNNSDataTypeFloat32);
}

/* Values the weights occupy: the strided extent, or the padded blocks of OIHW_Pack32. */
static bool weight_extent(const BNNSNDArrayDescriptor *wd, size_t *extent) {
    size_t strides[8];
    if (!bp_resolve_strides(wd, 4, "w_desc", strides, extent)) return false;
    if (wd->layout == BNNSDataLayoutConvolutionWeightsOIHW_Pack32) {
        size_t blocks = wd->size[3] / 32 + (wd->size[3] % 32 != 0), n;
        if (!bp_mul(blocks * 32, wd->size[0], &n) || !bp_mul(n, wd->size[1], &n) || !bp_mul(n, wd->size[2], &n) ||
            n > (size_t)INT64_MAX / sizeof(float)) {
            bp_set_error("w_desc size overflow");
            return false;
        }
        if (n > *extent) *extent = n;
    }
    return true;
}

static float *convert_weights(const bp_allocator *a, const BNNSNDArrayDescriptor *wd, size_t extent) {
    float *w = bp_alloc(a, extent * sizeof(float));
    if (w != NULL) bp_load_f32(wd->data, 0, 1, wd->data_type, wd->data_scale, wd->data_bias, w, extent);
    return w;
}

static float *convert_bias(const bp_allocator *a, const BNNSNDArrayDescriptor *bd, size_t count, size_t stride) {
    float *b = bp_alloc(a, count * sizeof(float));
    if (b != NULL) bp_load_f32(bd->data, 0, stride, bd->data_type, bd->data_scale, bd->data_bias, b, count);
    return b;
}

bp_filter *bp_dtype_create_convolution(const BNNSLayerParametersConvolution *p, const BNNSFilterParameters *fp,
                                       bool transposed) {
    bool has_bias = p->bias.data != NULL;
    if (!check_type("i_desc", p->i_desc.data_type, false) || !check_type("o_desc", p->o_desc.data_type, true) ||
        !check_type("w_desc", p->w_desc.data_type, false) || (has_bias && !check_type("bias", p->bias.data_type, false)))
        return NULL;
    if (transposed) {
        const BNNSNDArrayDescriptor *d[] = {&p->i_desc, &p->o_desc, &p->w_desc, &p->bias};
        const char *names[] = {"i_desc", "o_desc", "w_desc", "bias"};
        for (size_t k = 0; k < 4; k++)
            if (d[k]->data_type != BNNSDataTypeFloat32 && (k < 3 || has_bias)) {
                bp_set_error("transposed convolution takes Float32 descriptors only (as BNNS documents); %s is %s",
                             names[k], type_name(d[k]->data_type));
                return NULL;
            }
    }
    bp_allocator a = {fp ? fp->alloc_memory : NULL, fp ? fp->free_memory : NULL};
    if ((a.alloc == NULL) != (a.release == NULL)) {
        bp_set_error("alloc_memory and free_memory must be given together");
        return NULL;
    }
    bool client = fp != NULL && (fp->flags & BNNSFlagsUseClientPtr) != 0;
    BNNSLayerParametersConvolution q = *p;
    q.i_desc.data_type = q.o_desc.data_type = BNNSDataTypeFloat32;
    float *w_tmp = NULL, *b_tmp = NULL;
    size_t w_extent = 0, b_count = 0, b_stride = 1;
    bool convert_w = p->w_desc.data_type != BNNSDataTypeFloat32 && p->w_desc.data != NULL;
    bool convert_b = has_bias && p->bias.data_type != BNNSDataTypeFloat32;
    if (convert_w && !weight_extent(&p->w_desc, &w_extent)) return NULL;
    if (convert_b) {
        size_t strides[8], extent;
        if (!bp_resolve_strides(&p->bias, 1, "bias", strides, &extent)) return NULL;
        b_count = p->bias.size[0];
        b_stride = strides[0];
    }
    q.w_desc.data_type = BNNSDataTypeFloat32;
    q.bias.data_type = BNNSDataTypeFloat32;
    if (!client) {
        /* the Float32 filter copies what it is given: convert into temporaries */
        if (convert_w) {
            if ((w_tmp = convert_weights(&a, &p->w_desc, w_extent)) == NULL) return NULL;
            q.w_desc.data = w_tmp;
        }
        if (convert_b) {
            if ((b_tmp = convert_bias(&a, &p->bias, b_count, b_stride)) == NULL) {
                bp_free(&a, w_tmp);
                return NULL;
            }
            q.bias.data = b_tmp;
            memset(q.bias.stride, 0, sizeof q.bias.stride);
        }
    }
    bp_filter *f = bp_create_convolution(&q, fp, transposed);
    bp_free(&a, w_tmp);
    bp_free(&a, b_tmp);
    if (f == NULL) return NULL;
    struct bp_dtype_ext *x = bp_alloc(&f->allocator, sizeof *x);
    if (x == NULL) {
        BNNSFilterDestroy(f);
        return NULL;
    }
    memset(x, 0, sizeof *x);
    x->in_type = p->i_desc.data_type;
    x->out_type = p->o_desc.data_type;
    x->w_type = p->w_desc.data_type;
    x->bias_type = has_bias ? p->bias.data_type : BNNSDataTypeFloat32;
    x->in_scale = p->i_desc.data_scale;
    x->in_bias = p->i_desc.data_bias;
    x->convert_weights = client && convert_w;
    x->convert_bias = client && convert_b;
    x->w_desc = p->w_desc;
    x->bias_desc = p->bias;
    x->w_extent = w_extent;
    x->bias_count = b_count;
    x->bias_stride = b_stride;
    f->dtype = x;
    return f;
}

/* Convert every value of `batch` images (strides of img, items `stride` apart) between a buffer of
   type t and a Float32 buffer with the same offsets; values in gaps are not touched. */
static void convert_images(const bp_image *img, size_t batch, size_t stride, BNNSDataType t, float scale, float bias,
                           const void *typed_in, void *typed_out, float *f32, bool to_f32) {
    for (size_t b = 0; b < batch; b++)
        for (size_t c = 0; c < img->c; c++)
            for (size_t y = 0; y < img->h; y++) {
                size_t row = b * stride + c * img->sc + y * img->sy;
                if (img->sx == 1) {
                    if (to_f32) bp_load_f32(typed_in, row, 1, t, scale, bias, f32 + row, img->w);
                    else bp_store_f32(f32 + row, typed_out, row, 1, t, img->w);
                } else {
                    for (size_t i = 0, at = row; i < img->w; i++, at += img->sx) {
                        if (to_f32) bp_load_f32(typed_in, at, 1, t, scale, bias, f32 + at, 1);
                        else bp_store_f32(f32 + at, typed_out, at, 1, t, 1);
                    }
                }
            }
}

int bp_dtype_apply_batch(bp_filter *f, size_t batch, const void *in, size_t in_stride, void *out, size_t out_stride,
                         bp_apply_f32_fn apply_f32) {
    const struct bp_dtype_ext *x = f->dtype;
    if (batch == 0) return 0;
    if (in_stride == 0) in_stride = f->in.item;
    if (out_stride == 0) out_stride = f->out.item;
    if (batch > 1 && (in_stride < f->in.extent || out_stride < f->out.extent)) {
        bp_set_error("batch strides (%zu, %zu) are smaller than one item (%zu, %zu)", in_stride, out_stride,
                     f->in.extent, f->out.extent);
        return -1;
    }
    if (!bp_batch_span_ok(batch, in_stride, f->in.extent) || !bp_batch_span_ok(batch, out_stride, f->out.extent)) {
        bp_set_error("batch of %zu items with strides (%zu, %zu) overflows the address space", batch, in_stride,
                     out_stride);
        return -1;
    }
    size_t in_span = (batch - 1) * in_stride + f->in.extent, out_span = (batch - 1) * out_stride + f->out.extent;
    float *t_in = NULL, *t_out = NULL, *t_w = NULL, *t_b = NULL, *base = NULL;
    bool temporary = false;
    int status = -1;
    if (x->in_type != BNNSDataTypeFloat32) {
        if ((t_in = bp_alloc(&f->allocator, in_span * sizeof(float))) == NULL) goto done;
        convert_images(&f->in, batch, in_stride, x->in_type, x->in_scale, x->in_bias, in, NULL, t_in, true);
    }
    if (x->out_type != BNNSDataTypeFloat32 && (t_out = bp_alloc(&f->allocator, out_span * sizeof(float))) == NULL)
        goto done;
    bp_filter *target = f;
    bp_filter view;
    if (x->convert_weights || x->convert_bias) {
        /* the same filter reading Float32 copies of the caller's weights / bias, with a workspace
           of its own (taken from f, so that concurrent calls stay apart) */
        memcpy(&view, f, sizeof view);
        if (x->convert_weights) {
            if ((t_w = convert_weights(&f->allocator, &x->w_desc, x->w_extent)) == NULL) goto done;
            view.w_data = t_w;
        }
        if (x->convert_bias) {
            if ((t_b = convert_bias(&f->allocator, &x->bias_desc, x->bias_count, x->bias_stride)) == NULL) goto done;
            view.bias_data = t_b;
            view.bias_stride = 1;
        }
        if ((base = bp_work_acquire(f, &temporary)) == NULL) goto done;
        view.workspace = base;
        atomic_flag_clear(&view.busy);
        target = &view;
    }
    status = apply_f32(target, batch, t_in ? t_in : in, in_stride, t_out ? t_out : out, out_stride);
    if (base != NULL) bp_work_release(f, base, temporary);
    if (status == 0 && t_out != NULL)
        convert_images(&f->out, batch, out_stride, x->out_type, 1.0f, 0.0f, NULL, out, t_out, false);
done:
    bp_free(&f->allocator, t_in);
    bp_free(&f->allocator, t_out);
    bp_free(&f->allocator, t_w);
    bp_free(&f->allocator, t_b);
    return status;
}

bool bp_dtype_backward_ok(const bp_filter *f) {
    if (f->dtype == NULL) return true;
    const struct bp_dtype_ext *x = f->dtype;
    bp_set_error("backward needs a filter whose descriptors are all Float32 (as BNNS requires); this one was "
                 "created with i_desc %s, o_desc %s, w_desc %s, bias %s", type_name(x->in_type),
                 type_name(x->out_type), type_name(x->w_type), type_name(x->bias_type));
    return false;
}

void bp_dtype_destroy(bp_filter *f) {
    if (f->dtype == NULL) return;
    bp_free(&f->allocator, f->dtype);
    f->dtype = NULL;
}
