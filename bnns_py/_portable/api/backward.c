/* BNNSFilterApplyBackwardBatch for standard and transposed convolution filters. */
#include <string.h>

#include "direct.h"
#include "filter.h"
#include "simd.h"

/* A gradient descriptor must have data, Float32 and the given sizes; returns its resolved image. */
static bool gradient_image(const BNNSNDArrayDescriptor *d, const char *name, const bp_image *like, bp_image *img) {
    if (d->data == NULL) {
        bp_set_error("%s.data is NULL", name);
        return false;
    }
    if (!bp_image_from_desc(d, name, img)) return false;
    if (img->w != like->w || img->h != like->h || img->c != like->c) {
        bp_set_error("%s sizes (%zu, %zu, %zu) differ from the layer's (%zu, %zu, %zu)", name, img->w, img->h,
                     img->c, like->w, like->h, like->c);
        return false;
    }
    return true;
}

static bool accumulates(const BNNSNDArrayDescriptor *d) { return d->flags == BNNSNDArrayFlagBackpropAccumulate; }

/* dz (packed) = dy * f'(y), reading dy and y through their strides. */
static void activation_gradient(const bp_filter *f, const bp_image *dy_img, const float *dy, const float *y,
                                float *dz, float *row_y, float *row_dy) {
    const bp_image *o = &f->out;
    bool channelwise = bp_activation_is_channelwise(&f->activation);
    for (size_t c = 0; c < o->c; c++)
        for (size_t r = 0; r < o->h; r++) {
            float *d = dz + (c * o->h + r) * o->w;
            const float *gy = dy + c * dy_img->sc + r * dy_img->sy;
            for (size_t x = 0; x < o->w; x++) row_dy[x] = gy[x * dy_img->sx];
            if (f->activation.function == 0 || channelwise) {
                memcpy(d, row_dy, o->w * sizeof(float));
                continue;
            }
            const float *yy = y + c * o->sc + r * o->sy;
            for (size_t x = 0; x < o->w; x++) row_y[x] = yy[x * o->sx];
            bp_activation_backward(&f->activation, row_y, row_dy, d, o->w);
        }
    if (channelwise)  /* Softmax / LogSoftmax: per pixel, over the channels of dz (= dy so far) */
        for (size_t r = 0; r < o->h; r++)
            bp_activation_backward_channels(&f->activation, y + r * o->sy, o->sc, o->sx, dz + r * o->w,
                                            o->w * o->h, o->c, o->w);
}

/* dW of a standard layer (canonical, set at beta 0 or added) from x and the packed dz. */
static void weight_gradient(const bp_filter *f, const bp_work *w, size_t batch, const float *x, size_t x_bs,
                            const float *dz, size_t dz_bs, float *dw, float beta) {
    if (f->wino_dw)
        bp_winograd_weight_gradient(&f->wino, &f->g, batch, &f->in, x, x_bs, dz, dz_bs, dw, beta, w->wino_dw,
                                    &w->scratch, &f->gemm);
    else
        bp_conv_backward_weights(&f->g, batch, &f->in, x, x_bs, dz, dz_bs, dw, beta, &w->scratch, &f->gemm,
                                 f->direct[BP_DIRECT_FORWARD]);
}

int bp_apply_backward(bp_filter *f, size_t batch, const float *in, size_t in_stride,
                      BNNSNDArrayDescriptor *in_delta, size_t in_delta_stride, const float *out, size_t out_stride,
                      const BNNSNDArrayDescriptor *out_delta, size_t out_delta_stride,
                      BNNSNDArrayDescriptor *weights_delta, BNNSNDArrayDescriptor *bias_delta) {
    const bp_geom *g = &f->g;
    /* A fully-connected filter is a 1x1 convolution: first rewrite its vector / matrix gradient
       descriptors into that convolution's ImageCHW / OIHW ones (fully_connected.c). */
    BNNSNDArrayDescriptor fc_in_delta, fc_out_delta, fc_weights_delta;
    if (f->fully_connected && !bp_fc_translate_gradients(f, &in_delta, &fc_in_delta, &out_delta, &fc_out_delta,
                                                         &weights_delta, &fc_weights_delta))
        return -1;
    if (!f->client) {
        /* BNNS runs backward on a filter created without BNNSFlagsUseClientPtr too (conformance
           evidence, finding 6.2): here on a client-pointer twin reading the filter's own copy */
        bp_filter *twin = bp_client_twin(f);
        if (twin == NULL) return -1;
        int status = bp_apply_backward(twin, batch, in, in_stride, in_delta, in_delta_stride, out, out_stride,
                                       out_delta, out_delta_stride, weights_delta, bias_delta);
        bp_twin_destroy(twin);
        return status;
    }
    if (f->transposed && g->groups > 1) {
        bp_set_error("backward of a grouped transposed convolution is not supported");
        return -1;
    }
    const char *why_not = bp_activation_backward_unsupported_reason(&f->activation);
    if (why_not != NULL) {
        bp_set_error("activation %u cannot be differentiated from the layer output: %s", f->activation.function,
                     why_not);
        return -1;
    }
    if (out_delta == NULL) {
        bp_set_error("out_delta is required");
        return -1;
    }
    bp_image dy_img, dx_img;
    if (!gradient_image(out_delta, "out_delta", &f->out, &dy_img)) return -1;
    if (in_delta && !gradient_image(in_delta, "in_delta", &f->in, &dx_img)) return -1;
    if (f->activation.function != 0 && out == NULL) {
        bp_set_error("out (the forward output) is required with a non-identity activation");
        return -1;
    }
    size_t dw_stride[8];
    if (weights_delta) {
        size_t extent;
        if (in == NULL) {
            bp_set_error("in (the forward input) is required for weights_delta");
            return -1;
        }
        if (weights_delta->data == NULL) {
            bp_set_error("weights_delta.data is NULL");
            return -1;
        }
        if (weights_delta->data_type != BNNSDataTypeFloat32) {
            bp_set_error("weights_delta data type 0x%x not supported by the portable backend yet (Float32 only)",
                         weights_delta->data_type);
            return -1;
        }
        if (weights_delta->layout != f->w_layout || memcmp(weights_delta->size, f->w_size, sizeof f->w_size) != 0) {
            bp_set_error("weights_delta must have the weights' layout 0x%x and sizes {%zu, %zu, %zu, %zu}, got layout "
                         "0x%x sizes {%zu, %zu, %zu, %zu}", f->w_layout, f->w_size[0], f->w_size[1], f->w_size[2],
                         f->w_size[3], weights_delta->layout, weights_delta->size[0], weights_delta->size[1],
                         weights_delta->size[2], weights_delta->size[3]);
            return -1;
        }
        if (!bp_resolve_strides(weights_delta, 4, "weights_delta", dw_stride, &extent)) return -1;
        if (f->w_layout == BNNSDataLayoutConvolutionWeightsOIHW_Pack32 &&
            memcmp(dw_stride, f->w_stride, sizeof f->w_stride) != 0) {
            bp_set_error("weights_delta in layout OIHW_Pack32 needs packed strides");
            return -1;
        }
    }
    size_t db_stride = 1;
    if (bias_delta) {
        BNNSDataLayout l = bias_delta->layout;
        if (bias_delta->data == NULL || bias_delta->data_type != BNNSDataTypeFloat32 || bias_delta->size[0] != f->out.c ||
            (l != BNNSDataLayoutVector && l != BNNSDataLayout1DLastMajor && l != BNNSDataLayout1DFirstMajor)) {
            bp_set_error("bias_delta must be a Float32 vector with data and %zu values", f->out.c);
            return -1;
        }
        size_t stride[8], extent;
        if (!bp_resolve_strides(bias_delta, 1, "bias_delta", stride, &extent)) return -1;
        db_stride = stride[0];
    }
    if (batch == 0) return 0;
    if (in_stride == 0) in_stride = f->in.item;
    if (out_stride == 0) out_stride = f->out.item;
    if (out_delta_stride == 0) out_delta_stride = dy_img.item;
    if (in_delta_stride == 0) in_delta_stride = in_delta ? dx_img.item : 0;
    if (batch > 1 && ((in && in_stride < f->in.extent) || (out && out_stride < f->out.extent) ||
                      out_delta_stride < dy_img.extent || (in_delta && in_delta_stride < dx_img.extent))) {
        bp_set_error("batch strides smaller than one item");
        return -1;
    }
    if (!bp_batch_span_ok(batch, in_stride, f->in.extent) || !bp_batch_span_ok(batch, out_stride, f->out.extent) ||
        !bp_batch_span_ok(batch, out_delta_stride, dy_img.extent) ||
        (in_delta && !bp_batch_span_ok(batch, in_delta_stride, dx_img.extent))) {
        bp_set_error("batch strides overflow the address space");
        return -1;
    }

    bool temporary;
    float *base = bp_work_acquire(f, &temporary);
    if (base == NULL) return -1;
    bp_work w;
    bp_work_split(f, base, &w);
    /* dx comes from S's backward data (standard) or S's forward pass (transposed); dW from the
       planes of S's forward plan (S's input: x, or for a transposed layer dz) */
    bp_direct_pass pass;
    const bp_direct_pass *direct = NULL;
    const float *weights = NULL; /* canonical, for an im2col dx */
    if (in_delta)
        weights = bp_call_weights(f, f->transposed ? BP_DIRECT_FORWARD : BP_DIRECT_BACKWARD_DATA, &w, &pass, &direct);
    const bp_direct *dw_plan = f->direct[BP_DIRECT_FORWARD];
    /* dW straight into the caller's array when it is S's canonical matrix (plain OIHW of a
       standard layer; of a one-group transposed layer, OIHW strides that read PyTorch's
       (in, out, kH, kW) order), else into the workspace and then into the caller's layout */
    size_t taps = g->kh * g->kw;
    bool canonical_strides = f->transposed ? g->groups == 1 && dw_stride[2] == g->in_cg * taps && dw_stride[3] == taps
                                           : dw_stride[2] == taps && dw_stride[3] == g->k;
    bool dw_direct = weights_delta != NULL && f->w_layout == BNNSDataLayoutConvolutionWeightsOIHW &&
                     dw_stride[0] == 1 && dw_stride[1] == g->kw && canonical_strides;
    float *dweights = dw_direct ? weights_delta->data : w.dweights;
    float dw_beta = dw_direct && accumulates(weights_delta) ? 1.0f : 0.0f;
    /* dz: the gradient before the activation, packed, in the layer's output space */
    float *dz = f->transposed ? w.pack_in : w.pack_out;
    float *dbias = w.dbias;
    memset(dbias, 0, f->out.c * sizeof(float));
    bp_image in_packed = bp_packed_like(&f->in);
    bp_image out_packed = bp_packed_like(&f->out);

    /* Without an activation and with a packed out_delta, dz is out_delta itself: the whole batch
       goes through each engine call at once (images split over the workers). */
    bool dx_plain = in_delta == NULL || (dx_img.packed && !accumulates(in_delta));
    if (f->activation.function == BNNSActivationFunctionIdentity && dy_img.packed &&
        (!f->transposed || (f->in.packed && dx_plain))) {
        const float *dy = out_delta->data;
        if (bias_delta) {
            size_t hw = f->out.w * f->out.h;
            for (size_t b = 0; b < batch; b++)
                for (size_t c = 0; c < f->out.c; c++) dbias[c] += bp_sum(dy + b * out_delta_stride + c * hw, hw);
        }
        float *dx = in_delta ? in_delta->data : NULL;
        if (!f->transposed) {
            if (weights_delta)
                weight_gradient(f, &w, batch, in, in_stride, dy, out_delta_stride, dweights, dw_beta);
            if (in_delta && f->wino_dx && dx_img.packed && !accumulates(in_delta)) {
                /* the adjoint convolution of dy, on the Winograd pass */
                bp_direct_pass canonical_pass;
                const bp_direct_pass *none;
                bp_winograd_forward(&f->wino_dx_plan, &f->dx_geom, w.wino_u_dx,
                                    bp_call_weights(f, -1, &w, &canonical_pass, &none), true, batch, &out_packed, dy,
                                    out_delta_stride, dx, in_delta_stride, NULL, &w.scratch, f->gemm.threads);
            } else if (in_delta)
                bp_conv_backward_data(g, weights, batch, dy, out_delta_stride, &dx_img, dx, in_delta_stride,
                                      !accumulates(in_delta), NULL, &w.scratch, &f->gemm, direct);
        } else {
            if (weights_delta)
                bp_conv_backward_weights(g, batch, &out_packed, dy, out_delta_stride, in, in_stride, dweights, dw_beta,
                                         &w.scratch, &f->gemm, dw_plan);
            if (in_delta)
                bp_conv_forward(g, weights, batch, &out_packed, dy, out_delta_stride, dx, in_delta_stride, NULL,
                                &w.scratch, &f->gemm, direct);
        }
    } else {
        for (size_t b = 0; b < batch; b++) {
            const float *x = in ? in + b * in_stride : NULL;
            const float *y = out ? out + b * out_stride : NULL;
            const float *dy = (const float *)out_delta->data + b * out_delta_stride;
            activation_gradient(f, &dy_img, dy, y, dz, w.rows, w.rows + f->out.w);
            if (bias_delta) {
                size_t hw = f->out.w * f->out.h;
                for (size_t c = 0; c < f->out.c; c++) dbias[c] += bp_sum(dz + c * hw, hw);
            }
            if (!f->transposed) {
                if (weights_delta)
                    weight_gradient(f, &w, 1, x, 0, dz, 0, dweights, b == 0 ? dw_beta : 1.0f);
                if (in_delta) {
                    float *dx = (float *)in_delta->data + b * in_delta_stride;
                    bp_conv_backward_data(g, weights, 1, dz, 0, &dx_img, dx, 0, !accumulates(in_delta), NULL, &w.scratch,
                                          &f->gemm, direct);
                }
            } else {
                /* T = adjoint of S: S's input space is T's output (dz), S's output space is T's input */
                if (weights_delta) {
                    const float *xs = x;
                    if (!f->in.packed) {
                        bp_copy_image(&f->in, x, &in_packed, w.pack_out2, false);
                        xs = w.pack_out2;
                    }
                    bp_conv_backward_weights(g, 1, &out_packed, dz, 0, xs, 0, dweights, b == 0 ? dw_beta : 1.0f,
                                             &w.scratch, &f->gemm, dw_plan);
                }
                if (in_delta) {
                    bp_conv_forward(g, weights, 1, &out_packed, dz, 0, w.pack_out, 0, NULL, &w.scratch, &f->gemm, direct);
                    bp_copy_image(&in_packed, w.pack_out, &dx_img, (float *)in_delta->data + b * in_delta_stride,
                                  accumulates(in_delta));
                }
            }
        }
    }
    if (weights_delta && !dw_direct)
        bp_weights_to_descriptor(f, w.dweights, weights_delta, dw_stride, accumulates(weights_delta));
    if (bias_delta) {
        float *db = bias_delta->data;
        for (size_t c = 0; c < f->out.c; c++) {
            if (accumulates(bias_delta)) db[c * db_stride] += dbias[c];
            else db[c * db_stride] = dbias[c];
        }
    }
    bp_work_release(f, base, temporary);
    return 0;
}
