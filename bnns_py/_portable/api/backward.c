/* BNNSFilterApplyBackwardBatch for standard and transposed convolution filters. */
#include <string.h>

#include "direct.h"
#include "filter.h"
#include "fully_connected_backward.h"
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

/* What one backward call asks for, checked, its batch strides resolved. */
typedef struct {
    size_t batch;
    const float *in, *out;
    size_t in_stride, out_stride;
    BNNSNDArrayDescriptor *in_delta, *weights_delta, *bias_delta;
    const BNNSNDArrayDescriptor *out_delta;
    size_t in_delta_stride, out_delta_stride;
    bp_image dx_img, dy_img;
    size_t dw_stride[8], db_stride;
} backward_call;

static bool check_weights_delta(const bp_filter *f, backward_call *c) {
    const BNNSNDArrayDescriptor *d = c->weights_delta;
    size_t extent;
    if (c->in == NULL) {
        bp_set_error("in (the forward input) is required for weights_delta");
        return false;
    }
    if (d->data == NULL) {
        bp_set_error("weights_delta.data is NULL");
        return false;
    }
    if (d->data_type != BNNSDataTypeFloat32) {
        bp_set_error("weights_delta data type 0x%x not supported by the portable backend yet (Float32 only)",
                     d->data_type);
        return false;
    }
    if (d->layout != f->w_layout || memcmp(d->size, f->w_size, sizeof f->w_size) != 0) {
        bp_set_error("weights_delta must have the weights' layout 0x%x and sizes {%zu, %zu, %zu, %zu}, got layout "
                     "0x%x sizes {%zu, %zu, %zu, %zu}", f->w_layout, f->w_size[0], f->w_size[1], f->w_size[2],
                     f->w_size[3], d->layout, d->size[0], d->size[1], d->size[2], d->size[3]);
        return false;
    }
    if (!bp_resolve_strides(d, 4, "weights_delta", c->dw_stride, &extent)) return false;
    if (f->w_layout == BNNSDataLayoutConvolutionWeightsOIHW_Pack32 &&
        memcmp(c->dw_stride, f->w_stride, sizeof f->w_stride) != 0) {
        bp_set_error("weights_delta in layout OIHW_Pack32 needs packed strides");
        return false;
    }
    return true;
}

static bool check_bias_delta(const bp_filter *f, backward_call *c) {
    const BNNSNDArrayDescriptor *d = c->bias_delta;
    BNNSDataLayout l = d->layout;
    if (d->data == NULL || d->data_type != BNNSDataTypeFloat32 || d->size[0] != f->out.c ||
        (l != BNNSDataLayoutVector && l != BNNSDataLayout1DLastMajor && l != BNNSDataLayout1DFirstMajor)) {
        bp_set_error("bias_delta must be a Float32 vector with data and %zu values", f->out.c);
        return false;
    }
    size_t stride[8], extent;
    if (!bp_resolve_strides(d, 1, "bias_delta", stride, &extent)) return false;
    c->db_stride = stride[0];
    return true;
}

/* Batch strides: 0 means one item; every item must fit, not overlap the next, nor overflow. */
static bool check_batch_strides(const bp_filter *f, backward_call *c) {
    if (c->in_stride == 0) c->in_stride = f->in.item;
    if (c->out_stride == 0) c->out_stride = f->out.item;
    if (c->out_delta_stride == 0) c->out_delta_stride = c->dy_img.item;
    if (c->in_delta_stride == 0) c->in_delta_stride = c->in_delta ? c->dx_img.item : 0;
    bool dx = c->in_delta != NULL;
    if (c->batch > 1 && ((c->in && c->in_stride < f->in.extent) || (c->out && c->out_stride < f->out.extent) ||
                         c->out_delta_stride < c->dy_img.extent || (dx && c->in_delta_stride < c->dx_img.extent))) {
        bp_set_error("batch strides smaller than one item");
        return false;
    }
    if (!bp_batch_span_ok(c->batch, c->in_stride, f->in.extent) ||
        !bp_batch_span_ok(c->batch, c->out_stride, f->out.extent) ||
        !bp_batch_span_ok(c->batch, c->out_delta_stride, c->dy_img.extent) ||
        (dx && !bp_batch_span_ok(c->batch, c->in_delta_stride, c->dx_img.extent))) {
        bp_set_error("batch strides overflow the address space");
        return false;
    }
    return true;
}

/* Step 1: whether the filter can run this call (false with bp_set_error). */
static bool validate_call(const bp_filter *f, backward_call *c) {
    if (f->transposed && f->g.groups > 1) {
        bp_set_error("backward of a grouped transposed convolution is not supported");
        return false;
    }
    const char *why_not = bp_activation_backward_unsupported_reason(&f->activation);
    if (why_not != NULL) {
        bp_set_error("activation %u cannot be differentiated from the layer output: %s", f->activation.function,
                     why_not);
        return false;
    }
    if (c->out_delta == NULL) {
        bp_set_error("out_delta is required");
        return false;
    }
    if (!gradient_image(c->out_delta, "out_delta", &f->out, &c->dy_img)) return false;
    if (c->in_delta && !gradient_image(c->in_delta, "in_delta", &f->in, &c->dx_img)) return false;
    if (f->activation.function != 0 && c->out == NULL) {
        bp_set_error("out (the forward output) is required with a non-identity activation");
        return false;
    }
    if (c->weights_delta && !check_weights_delta(f, c)) return false;
    if (c->bias_delta && !check_bias_delta(f, c)) return false;
    return check_batch_strides(f, c);
}

/* How the call runs (step 2): where each gradient goes and which engine pass computes it. dx comes
   from S's backward data (standard) or S's forward pass (transposed); dW from x (for a
   transposed layer dz) and dz. */
typedef struct {
    bp_work w;
    bool whole_batch;      /* each engine call takes the whole batch: dz is out_delta itself or dz_batch */
    bool fc_gemm;          /* dW and dx as two GEMMs over the batch (bp_fc_backward) */
    float *dz_batch;       /* the whole batch's dz (packed images, out_packed.item apart), or NULL */
    bool dz_batch_temporary; /* dz_batch is the call's own, not the filter's */
    bool dx_winograd;      /* dx as the adjoint convolution of dy on the Winograd pass */
    bool dw_winograd;      /* dW on the Winograd pass (standard layers; else on S's forward plan) */
    float *dw_sums;        /* its workers' sums: the filter's, or the call's own (dw_sums_temporary) */
    bool dw_sums_temporary;
    bp_direct_pass pass;
    const bp_direct_pass *direct;
    const float *weights;  /* canonical, for an im2col dx */
    float *dweights;       /* the caller's array or the workspace (then copied to the caller's layout) */
    bool dw_direct;
    float dw_beta;
    float *dz;             /* the gradient before the activation, packed, in the layer's output space */
    bp_image in_packed, out_packed;
} backward_plan;

/* Room for the whole batch's dz: the filter's buffer, grown when a batch needs more (only a call
   holding the filter's workspace uses it, so no two calls share it), or for a call working in
   private memory its own; NULL when memory is short (the call then runs image by image). */
static float *dz_batch_buffer(bp_filter *f, bool temporary, size_t batch, size_t item) {
    size_t floats;
    return bp_mul(batch, item, &floats) ? bp_kept_buffer_get(f, &f->dz_batch, temporary, floats) : NULL;
}

/* A standard 1x1 filter over 1x1 images (every fully-connected filter) whose batch operands are
   matrices, rows batch-stride apart: its gradients are two GEMMs over the whole batch. */
static bool one_gemm_for_batch(const bp_filter *f, const backward_call *c) {
    bool x_rows = c->weights_delta == NULL || (f->in.sc == 1 && c->in_stride <= INT32_MAX);
    bool dx_rows = c->in_delta == NULL || (c->dx_img.sc == 1 && c->in_delta_stride <= INT32_MAX);
    return bp_filter_is_matrix_product(f) && x_rows && dx_rows && c->batch <= INT32_MAX &&
           c->out_delta_stride <= INT32_MAX;
}

/* Whether dx of a standard filter whose backward-data pass runs on the pointwise kernel runs on the
   im2col engine's GEMM instead: a dx that accumulates or whose values are not consecutive, which
   that plan would run on its planes and kernel (accumulating into ResNet's 256 -> 64 1x1 layer at
   56x56: 0.67x the GEMM's speed). */
static bool dx_on_gemm(const bp_filter *f, const backward_call *c) {
    const bp_direct *d = f->direct[BP_DIRECT_BACKWARD_DATA];
    return !f->transposed && d != NULL && bp_direct_pointwise(d) && (accumulates(c->in_delta) || c->dx_img.sx != 1);
}

static void plan_call(bp_filter *f, const backward_call *c, bool temporary, backward_plan *p) {
    const bp_geom *g = &f->g;
    /* dW straight into the caller's array when it is S's canonical matrix (plain OIHW of a
       standard layer; of a one-group transposed layer, OIHW strides that read PyTorch's
       (in, out, kH, kW) order), else into the workspace and then into the caller's layout */
    const size_t *s = c->dw_stride;
    size_t taps = g->kh * g->kw;
    bool canonical_strides = f->transposed ? g->groups == 1 && s[2] == g->in_cg * taps && s[3] == taps
                                           : s[2] == taps && s[3] == g->k;
    p->dw_direct = c->weights_delta != NULL && f->w_layout == BNNSDataLayoutConvolutionWeightsOIHW && s[0] == 1 &&
                   s[1] == g->kw && canonical_strides;
    p->dweights = p->dw_direct ? c->weights_delta->data : p->w.dweights;
    p->dw_beta = p->dw_direct && accumulates(c->weights_delta) ? 1.0f : 0.0f;
    p->dz = f->transposed ? p->w.pack_in : p->w.pack_out;
    p->in_packed = bp_packed_like(&f->in);
    p->out_packed = bp_packed_like(&f->out);
    bool dx_plain = c->in_delta == NULL || (c->dx_img.packed && !accumulates(c->in_delta));
    bool dz_is_dy = f->activation.function == BNNSActivationFunctionIdentity && c->dy_img.packed;
    p->dz_batch = NULL;
    p->dz_batch_temporary = temporary;
    if (!f->transposed && !dz_is_dy) /* dz for the whole batch first; per image if memory is short */
        p->dz_batch = dz_batch_buffer(f, temporary, c->batch, p->out_packed.item);
    p->whole_batch = dz_is_dy ? !f->transposed || (f->in.packed && dx_plain) : p->dz_batch != NULL;
    p->dx_winograd = c->in_delta != NULL && dx_plain && bp_input_gradient_runs_winograd(f, c->batch);
    p->fc_gemm = p->whole_batch && one_gemm_for_batch(f, c);
    p->direct = NULL;
    p->weights = NULL;
    if (c->in_delta) /* the engines' form of the weights; canonical for the GEMMs */
        p->weights = bp_call_weights(f, p->fc_gemm || dx_on_gemm(f, c) ? -1
                                        : f->transposed ? BP_DIRECT_FORWARD : BP_DIRECT_BACKWARD_DATA,
                                     &p->w, &p->pass, &p->direct);
    size_t dw_batch = p->whole_batch ? c->batch : 1; /* images per weight-gradient call */
    p->dw_winograd = !p->fc_gemm && c->weights_delta != NULL && bp_weight_gradient_runs_winograd(f, dw_batch);
}

/* dW of a standard layer (canonical, set at beta 0 or added) from x and the packed dz. */
static void weight_gradient(const bp_filter *f, const backward_plan *p, size_t batch, const float *x, size_t x_bs,
                            const float *dz, size_t dz_bs, float beta) {
    const bp_work *w = &p->w;
    float *dw = p->dweights;
    if (p->dw_winograd)
        bp_winograd_weight_gradient(&f->wino, &f->g, batch, &f->in, x, x_bs, dz, dz_bs, dw, beta, p->dw_sums,
                                    &w->scratch, &f->gemm);
    else
        bp_conv_backward_weights(&f->g, batch, &f->in, x, x_bs, dz, dz_bs, dw, beta, &w->scratch, &f->gemm,
                                 f->weight_gradient_plan);
}

/* dW of a transposed layer (S's canonical, set at beta 0 or added) from its output gradient dz
   (S's input, packed) and its input x (S's output gradient, packed): read in place where the
   direct engine would run it and the layer's kernel rows allow, else on S's forward plan. */
static void transposed_weight_gradient(const bp_filter *f, const backward_plan *p, size_t batch, const float *dz,
                                       size_t dz_bs, const float *x, size_t x_bs, float beta) {
    const bp_work *w = &p->w;
    if (f->weight_gradient_plan != NULL &&
        bp_transposed_weight_gradient(&f->g, batch, &p->out_packed, dz, dz_bs, x, x_bs, p->dweights, beta != 0.0f,
                                      &w->scratch, f->gemm.threads))
        return;
    bp_conv_backward_weights(&f->g, batch, &p->out_packed, dz, dz_bs, x, x_bs, p->dweights, beta, &w->scratch,
                             &f->gemm, f->weight_gradient_plan);
}

/* dz_batch = dy * f'(y) for every image of the call. */
static void batch_activation_gradient(const bp_filter *f, const backward_call *c, const backward_plan *p) {
    const bp_work *w = &p->w;
    for (size_t b = 0; b < c->batch; b++)
        activation_gradient(f, &c->dy_img, (const float *)c->out_delta->data + b * c->out_delta_stride,
                            c->out ? c->out + b * c->out_stride : NULL, p->dz_batch + b * p->out_packed.item, w->rows,
                            w->rows + f->out.w);
}

/* dbias += the sums of dz over the batch and each channel's pixels. */
static void bias_gradient(const bp_filter *f, size_t batch, const float *dz, size_t dz_bs, float *dbias) {
    size_t hw = f->out.w * f->out.h;
    if (hw == 1) {
        for (size_t b = 0; b < batch; b++)
            for (size_t ch = 0; ch < f->out.c; ch++) dbias[ch] += dz[b * dz_bs + ch];
        return;
    }
    for (size_t b = 0; b < batch; b++)
        for (size_t ch = 0; ch < f->out.c; ch++) dbias[ch] += bp_sum(dz + b * dz_bs + ch * hw, hw);
}

/* Step 3 for a filter whose batch is one GEMM (one_gemm_for_batch): dz as run_whole_batch has
   it, then dW = dz^T x and dx = dz W over the whole batch. */
static void run_fc_gemm(const bp_filter *f, const backward_call *c, backward_plan *p) {
    const float *dz = p->dz_batch ? p->dz_batch : c->out_delta->data;
    size_t dz_bs = p->dz_batch ? p->out_packed.item : c->out_delta_stride;
    if (p->dz_batch) batch_activation_gradient(f, c, p);
    if (c->bias_delta) bias_gradient(f, c->batch, dz, dz_bs, p->w.dbias);
    bp_fc_gradients g = {.batch = c->batch, .in = f->in.c, .out = f->out.c, .dz = dz, .ldz = dz_bs, .w = p->weights,
                         .x = c->in, .ldx = c->in_stride, .ldw = f->in.c, .lddw = f->in.c, .lddx = c->in_delta_stride,
                         .dw_beta = p->dw_beta};
    if (c->weights_delta) g.dw = p->dweights;
    if (c->in_delta) {
        g.dx = c->in_delta->data;
        g.dx_beta = accumulates(c->in_delta) ? 1.0f : 0.0f;
    }
    bp_fc_backward(&g, &f->gemm);
}

/* Step 3 when each engine call takes the whole batch: dz is out_delta (no activation, packed)
   or dz_batch. */
static void run_whole_batch(const bp_filter *f, const backward_call *c, backward_plan *p) {
    const bp_geom *g = &f->g;
    const bp_work *w = &p->w;
    size_t batch = c->batch, dy_bs = p->dz_batch ? p->out_packed.item : c->out_delta_stride;
    const float *dy = p->dz_batch ? p->dz_batch : c->out_delta->data;
    float *dx = c->in_delta ? c->in_delta->data : NULL;
    if (p->dz_batch) batch_activation_gradient(f, c, p);
    if (c->bias_delta) bias_gradient(f, batch, dy, dy_bs, w->dbias);
    if (f->transposed) {
        if (c->weights_delta) transposed_weight_gradient(f, p, batch, dy, dy_bs, c->in, c->in_stride, p->dw_beta);
        if (dx)
            bp_conv_forward(g, p->weights, batch, &p->out_packed, dy, dy_bs, dx, c->in_delta_stride, NULL, &w->scratch,
                            &f->gemm, p->direct);
        return;
    }
    if (c->weights_delta) weight_gradient(f, p, batch, c->in, c->in_stride, dy, dy_bs, p->dw_beta);
    if (p->dx_winograd) {
        bp_direct_pass canonical_pass;
        const bp_direct_pass *none;
        const float *canonical = bp_call_weights(f, -1, w, &canonical_pass, &none);
        bp_winograd_forward(&f->wino_dx_plan, &f->dx_geom, w->wino_u_dx, canonical, true, batch, &p->out_packed, dy,
                            dy_bs, dx, c->in_delta_stride, NULL, &w->scratch, f->gemm.threads);
    } else if (dx) {
        bp_conv_backward_data(g, p->weights, batch, dy, dy_bs, &c->dx_img, dx, c->in_delta_stride,
                              !accumulates(c->in_delta), NULL, &w->scratch, &f->gemm, p->direct);
    }
}

/* Step 3 otherwise (transposed layers with an activation or strided operands; memory for
   dz_batch short), image by image: dz = dy * f'(y) first. */
static void run_per_image(const bp_filter *f, const backward_call *c, backward_plan *p) {
    const bp_geom *g = &f->g;
    const bp_work *w = &p->w;
    float *dz = p->dz;
    size_t hw = f->out.w * f->out.h;
    for (size_t b = 0; b < c->batch; b++) {
        const float *x = c->in ? c->in + b * c->in_stride : NULL;
        const float *y = c->out ? c->out + b * c->out_stride : NULL;
        const float *dy = (const float *)c->out_delta->data + b * c->out_delta_stride;
        float beta = b == 0 ? p->dw_beta : 1.0f;
        activation_gradient(f, &c->dy_img, dy, y, dz, w->rows, w->rows + f->out.w);
        if (c->bias_delta)
            for (size_t ch = 0; ch < f->out.c; ch++) w->dbias[ch] += bp_sum(dz + ch * hw, hw);
        if (!f->transposed) {
            if (c->weights_delta) weight_gradient(f, p, 1, x, 0, dz, 0, beta);
            if (c->in_delta)
                bp_conv_backward_data(g, p->weights, 1, dz, 0, &c->dx_img,
                                      (float *)c->in_delta->data + b * c->in_delta_stride, 0,
                                      !accumulates(c->in_delta), NULL, &w->scratch, &f->gemm, p->direct);
            continue;
        }
        /* T = adjoint of S: S's input space is T's output (dz), S's output space is T's input */
        if (c->weights_delta) {
            const float *xs = x;
            if (!f->in.packed) {
                bp_copy_image(&f->in, x, &p->in_packed, w->pack_out2, false);
                xs = w->pack_out2;
            }
            transposed_weight_gradient(f, p, 1, dz, 0, xs, 0, beta);
        }
        if (c->in_delta) {
            bp_conv_forward(g, p->weights, 1, &p->out_packed, dz, 0, w->pack_out, 0, NULL, &w->scratch, &f->gemm,
                            p->direct);
            bp_copy_image(&p->in_packed, w->pack_out, &c->dx_img, (float *)c->in_delta->data + b * c->in_delta_stride,
                          accumulates(c->in_delta));
        }
    }
}

/* The gradients computed in the workspace into the caller's descriptors. */
static void store_gradients(const bp_filter *f, const backward_call *c, const backward_plan *p) {
    if (c->weights_delta && !p->dw_direct)
        bp_weights_to_descriptor(f, p->w.dweights, c->weights_delta, c->dw_stride, accumulates(c->weights_delta));
    if (c->bias_delta) {
        float *db = c->bias_delta->data;
        for (size_t ch = 0; ch < f->out.c; ch++) {
            if (accumulates(c->bias_delta)) db[ch * c->db_stride] += p->w.dbias[ch];
            else db[ch * c->db_stride] = p->w.dbias[ch];
        }
    }
}

/* The Winograd weight gradient's sums for a call that runs it: the filter's, reserved by the first
   such call (only a call holding the filter's workspace uses them, so no two calls race to make
   them), or for a call working in private memory its own. False with bp_set_error when memory
   runs out. */
static bool acquire_dw_sums(bp_filter *f, bool temporary, backward_plan *p) {
    p->dw_sums = NULL;
    p->dw_sums_temporary = temporary;
    if (!p->dw_winograd) return true;
    size_t bytes = bp_winograd_gradient_floats(&f->g, &f->wino, f->workers) * sizeof(float);
    p->dw_sums = temporary ? NULL : atomic_load_explicit(&f->wino_dw_sums, memory_order_acquire);
    if (p->dw_sums == NULL) {
        p->dw_sums = bp_alloc(&f->allocator, bytes);
        if (p->dw_sums == NULL) return false;
        if (!temporary) atomic_store_explicit(&f->wino_dw_sums, p->dw_sums, memory_order_release);
    }
    return true;
}

static void release_dw_sums(bp_filter *f, backward_plan *p) {
    if (p->dw_sums_temporary) bp_free(&f->allocator, p->dw_sums);
}

/* BNNS runs backward on a filter created without BNNSFlagsUseClientPtr too (conformance evidence,
   finding 6.2): here on a client-pointer twin reading the filter's own copy of the weights, made
   at the first backward call and kept until the filter is destroyed (the first of two threads
   racing to make it keeps theirs). */
static bp_filter *twin_of(bp_filter *f) {
    bp_filter *twin = atomic_load_explicit(&f->twin, memory_order_acquire);
    if (twin != NULL) return twin;
    twin = bp_client_twin(f);
    if (twin == NULL) return NULL;
    bp_filter *none = NULL;
    if (!atomic_compare_exchange_strong_explicit(&f->twin, &none, twin, memory_order_acq_rel, memory_order_acquire)) {
        bp_twin_destroy(twin);
        return none;
    }
    return twin;
}

int bp_apply_backward(bp_filter *f, size_t batch, const float *in, size_t in_stride,
                      BNNSNDArrayDescriptor *in_delta, size_t in_delta_stride, const float *out, size_t out_stride,
                      const BNNSNDArrayDescriptor *out_delta, size_t out_delta_stride,
                      BNNSNDArrayDescriptor *weights_delta, BNNSNDArrayDescriptor *bias_delta) {
    /* A fully-connected filter is a 1x1 convolution: first rewrite its vector / matrix gradient
       descriptors into that convolution's ImageCHW / OIHW ones (fully_connected.c). */
    BNNSNDArrayDescriptor fc_in_delta, fc_out_delta, fc_weights_delta;
    if (f->fully_connected && !bp_fc_translate_gradients(f, &in_delta, &fc_in_delta, &out_delta, &fc_out_delta,
                                                         &weights_delta, &fc_weights_delta))
        return -1;
    if (!f->client) {
        bp_filter *twin = twin_of(f);
        return twin == NULL ? -1
                            : bp_apply_backward(twin, batch, in, in_stride, in_delta, in_delta_stride, out, out_stride,
                                                out_delta, out_delta_stride, weights_delta, bias_delta);
    }
    backward_call c = {.batch = batch, .in = in, .out = out, .in_stride = in_stride, .out_stride = out_stride,
                       .in_delta = in_delta, .weights_delta = weights_delta, .bias_delta = bias_delta,
                       .out_delta = out_delta, .in_delta_stride = in_delta_stride,
                       .out_delta_stride = out_delta_stride, .db_stride = 1};
    if (!validate_call(f, &c)) return -1;
    if (batch == 0) return 0;
    bool temporary;
    float *base = bp_work_acquire(f, &temporary);
    if (base == NULL) return -1;
    backward_plan p;
    bp_work_split(f, base, &p.w);
    memset(p.w.dbias, 0, f->out.c * sizeof(float));
    plan_call(f, &c, temporary, &p);
    bool ok = acquire_dw_sums(f, temporary, &p);
    if (ok) {
        if (p.fc_gemm) run_fc_gemm(f, &c, &p);
        else if (p.whole_batch) run_whole_batch(f, &c, &p);
        else run_per_image(f, &c, &p);
        store_gradients(f, &c, &p);
        release_dw_sums(f, &p);
    }
    if (p.dz_batch_temporary) bp_free(&f->allocator, p.dz_batch);
    bp_work_release(f, base, temporary);
    return ok ? 0 : -1;
}
