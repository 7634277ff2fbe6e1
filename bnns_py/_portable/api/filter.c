/* Creating, applying and destroying portable convolution filters. */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "filter.h"
#include "direct.h"
#include "dtypes.h"
#include "parallel.h"
#include "plan.h"

static atomic_long live_filters;
static atomic_long created_filters;
static atomic_long live_twins;
static atomic_long created_twins;

long bnns_portable_live_filter_count(void) { return atomic_load(&live_filters); }
long bnns_portable_created_filter_count(void) { return atomic_load(&created_filters); }
long bnns_portable_live_twin_count(void) { return atomic_load(&live_twins); }
long bnns_portable_created_twin_count(void) { return atomic_load(&created_twins); }
const char *bnns_portable_version(void) { return BNNS_PORTABLE_VERSION; }

/* ---- memory ------------------------------------------------------------------------------ */

void *bp_alloc(const bp_allocator *a, size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = BNNS_PORTABLE_ALIGNMENT;
    int status = a->alloc ? a->alloc(&p, BNNS_PORTABLE_ALIGNMENT, bytes)
                          : posix_memalign(&p, BNNS_PORTABLE_ALIGNMENT, bytes);
    if (status != 0 || p == NULL) {
        bp_set_error("allocating %zu bytes failed", bytes);
        return NULL;
    }
    return p;
}

void bp_free(const bp_allocator *a, void *p) {
    if (p == NULL) return;
    if (a->release) a->release(p);
    else free(p);
}

/* ---- weights -------------------------------------------------------------------------------- */

/* Offset of W(kx, ky, i, o) in the caller's weights: i is the input channel within its group as
   the descriptor counts it, o the output channel. */
static size_t weight_offset(const bp_filter *f, size_t kx, size_t ky, size_t i, size_t o) {
    const size_t *s = f->w_stride;
    size_t kw = f->w_size[0], kh = f->w_size[1];
    switch (f->w_layout) {
    case BNNSDataLayoutConvolutionWeightsOIHrWr:
        return (kw - 1 - kx) * s[0] + (kh - 1 - ky) * s[1] + i * s[2] + o * s[3];
    case BNNSDataLayoutConvolutionWeightsIOHrWr:
        return (kw - 1 - kx) * s[0] + (kh - 1 - ky) * s[1] + o * s[2] + i * s[3];
    case BNNSDataLayoutConvolutionWeightsOIHW_Pack32:
        /* output channels in blocks of 32, the position in the block fastest, then kx, ky, i */
        return o % 32 + 32 * (kx + kw * (ky + kh * (i + f->w_size[2] * (o / 32))));
    default:
        return kx * s[0] + ky * s[1] + i * s[2] + o * s[3];
    }
}

/* Every weight row (o, i, ky) of the layer: where its kx = 0 value is in the caller's layout and
   how far apart its kx values are there (layouts with reversed kernels step backwards), and
   where the row goes in S's canonical matrix. Copying whole rows keeps the per-call repacking of
   client-pointer weights cheap. */
typedef struct {
    const bp_filter *f;
    size_t stride[4]; /* of the caller's array (weights or their gradient) */
    float *canonical;
    const float *src;  /* pack: caller -> canonical */
    float *dst;        /* unpack: canonical -> caller */
    bool accumulate;
} weight_rows_job;

static void weight_rows(void *p, size_t o0, size_t o1) {
    const weight_rows_job *j = p;
    bp_filter view = *j->f;
    memcpy(view.w_stride, j->stride, sizeof view.w_stride);
    const bp_geom *g = &view.g;
    size_t lin = view.transposed ? g->out_cg : g->in_cg;  /* layer input channels per group */
    size_t lout = view.transposed ? g->in_cg : g->out_cg; /* layer output channels per group */
    size_t kw = g->kw, kh = g->kh, taps = kh * kw;
    for (size_t o = o0; o < o1; o++) {
        size_t grp = o / lout, ol = o % lout;
        for (size_t i = 0; i < lin; i++) {
            /* one (o, i) kernel: where its (0, 0) tap is and how far apart its kx / ky taps are */
            size_t start = weight_offset(&view, 0, 0, i, o);
            ptrdiff_t sx = kw > 1 ? (ptrdiff_t)weight_offset(&view, 1, 0, i, o) - (ptrdiff_t)start : 1;
            ptrdiff_t sy = kh > 1 ? (ptrdiff_t)weight_offset(&view, 0, 1, i, o) - (ptrdiff_t)start : (ptrdiff_t)kw;
            size_t c = view.transposed ? ((grp * lin + i) * lout + ol) * taps : (o * lin + i) * taps;
            float *kernel = j->canonical + c;
            if (sx == 1 && sy == (ptrdiff_t)kw) { /* the caller's kernel is contiguous too */
                if (j->src != NULL) memcpy(kernel, j->src + start, taps * sizeof(float));
                else if (j->accumulate)
                    for (size_t t = 0; t < taps; t++) j->dst[start + t] += kernel[t];
                else memcpy(j->dst + start, kernel, taps * sizeof(float));
                continue;
            }
            for (size_t ky = 0; ky < kh; ky++) {
                float *row = kernel + ky * kw;
                ptrdiff_t first = (ptrdiff_t)ky * sy;
                if (j->src != NULL) {
                    const float *w = j->src + start + first;
                    for (size_t kx = 0; kx < kw; kx++) row[kx] = w[(ptrdiff_t)kx * sx];
                } else if (j->accumulate) {
                    float *w = j->dst + start + first;
                    for (size_t kx = 0; kx < kw; kx++) w[(ptrdiff_t)kx * sx] += row[kx];
                } else {
                    float *w = j->dst + start + first;
                    for (size_t kx = 0; kx < kw; kx++) w[(ptrdiff_t)kx * sx] = row[kx];
                }
            }
        }
    }
}

static void run_weight_rows(const weight_rows_job *j) {
    const bp_geom *g = &j->f->g;
    size_t outputs = j->f->transposed ? g->in_c : g->out_c; /* the layer's output channels */
    bp_parallel_for(j->f->gemm.threads, outputs, g->out_c * g->k, weight_rows, (void *)j);
}

static void pack_weights(const bp_filter *f, float *canonical) {
    weight_rows_job j = {f, {0}, canonical, f->w_data, NULL, false};
    memcpy(j.stride, f->w_stride, sizeof j.stride);
    run_weight_rows(&j);
}

const float *bp_current_weights(const bp_filter *f, float *scratch) {
    if (f->w_direct) return f->w_data;
    if (!f->client) return f->w_owned;
    pack_weights(f, scratch);  /* the caller may have changed them since the last call */
    return scratch;
}

void bp_weights_to_descriptor(const bp_filter *f, const float *canonical, const BNNSNDArrayDescriptor *d,
                              const size_t stride[4], bool accumulate) {
    weight_rows_job j = {f, {0}, (float *)canonical, NULL, d->data, accumulate};
    memcpy(j.stride, stride, sizeof j.stride);
    run_weight_rows(&j);
}

/* A client filter's weights as the caller holds them, when they are OIHW with each kernel's taps
   contiguous (any strides between kernels): the direct engine packs straight from them, with no
   canonical copy in between. */
static bool caller_view(const bp_filter *f, bp_weights_view *v) {
    const bp_geom *g = &f->g;
    const size_t *s = f->w_stride; /* kx, ky, in / groups, out */
    if (!f->client || !f->w_oihw_kernels) return false;
    if (!f->transposed) /* W(kx, ky, i, o): S's own kernels */
        *v = (bp_weights_view){f->w_data, g->out_cg * s[3], s[3], s[2]};
    else /* S's output channels are T's input channels, S's inputs T's outputs */
        *v = (bp_weights_view){f->w_data, g->in_cg * s[3], s[2], s[3]};
    return true;
}

const float *bp_call_weights(const bp_filter *f, int which, const bp_work *w, bp_direct_pass *pass,
                             const bp_direct_pass **direct) {
    *direct = NULL;
    if (which >= 0 && f->direct[which] != NULL) {
        *pass = (bp_direct_pass){f->direct[which], f->direct_w[which], {NULL, 0, 0, 0}, w->direct_w};
        *direct = pass;
        if (pass->packed != NULL) { /* and the canonical copy, for kernels that read the steps in order */
            const bp_geom *g = &f->g;
            pass->weights = (bp_weights_view){f->w_owned, g->out_cg * g->k, g->k, g->kh * g->kw};
            return NULL;
        }
        if (caller_view(f, &pass->weights)) return NULL;
    }
    const float *canonical = bp_current_weights(f, f->client && !f->w_direct ? w->weights : NULL);
    if (*direct != NULL) {
        const bp_geom *g = &f->g;
        pass->weights = (bp_weights_view){canonical, g->out_cg * g->k, g->k, g->kh * g->kw};
    }
    return canonical;
}

float bp_bias_at(const bp_filter *f, size_t channel) {
    if (!f->has_bias) return 0.0f;
    if (f->bias_owned) return f->bias_owned[channel];
    return f->bias_data[channel * f->bias_stride];
}

/* ---- workspace ------------------------------------------------------------------------------ */

static size_t weight_count(const bp_geom *g) { return g->out_c * g->k; }

static size_t scratch_total(const bp_filter *f) { return f->scratch_floats * (size_t)f->workers; }

void bp_work_split(const bp_filter *f, float *base, bp_work *w) {
    const bp_geom *g = &f->g;
    size_t in = g->in_c * g->in_h * g->in_w, out = g->out_c * g->out_h * g->out_w;
    /* 16-float (64-byte) aligned slices */
#define SLICE(n) (((n) + 15) / 16 * 16)
    w->scratch = (bp_scratch){base, f->scratch_floats};
    w->pack_in = base + SLICE(scratch_total(f));
    w->pack_out = w->pack_in + SLICE(in);
    w->pack_out2 = w->pack_out + SLICE(out);
    w->weights = w->pack_out2 + (f->client ? SLICE(out) : 0);
    w->dweights = w->weights + (f->client ? SLICE(weight_count(g)) : 0);
    w->dbias = w->dweights + (f->client ? SLICE(weight_count(g)) : 0);
    w->rows = w->dbias + (f->client ? SLICE(g->out_c + g->in_c) : 0);
    w->direct_w = w->rows + (f->client ? SLICE(2 * (f->in.w + f->out.w)) : 0);
    w->wino_u = w->direct_w + SLICE(f->direct_w_floats);
    w->wino_u_dx = w->wino_u + (f->winograd && f->client ? SLICE(bp_winograd_weight_floats(&f->wino, g)) : 0);
}

static bool workspace_size(const bp_filter *f, size_t *floats) {
    const bp_geom *g = &f->g;
    size_t scratch, in, out, wc, total = 0, t;
    if (!bp_mul(f->scratch_floats, (size_t)f->workers, &scratch)) return false;
    if (!bp_mul(g->in_c, g->in_h, &t) || !bp_mul(t, g->in_w, &in)) return false;
    if (!bp_mul(g->out_c, g->out_h, &t) || !bp_mul(t, g->out_w, &out)) return false;
    if (!bp_mul(g->out_c, g->k, &wc)) return false;
    size_t parts[] = {scratch, in, out, f->client ? out : 0, f->client ? wc : 0, f->client ? wc : 0,
                      f->client ? g->out_c + g->in_c : 0, f->client ? 2 * (f->in.w + f->out.w) : 0,
                      f->direct_w_floats, f->winograd && f->client ? bp_winograd_weight_floats(&f->wino, g) : 0,
                      f->wino_dx ? bp_winograd_weight_floats(&f->wino_dx_plan, &f->dx_geom) : 0};
    for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
        size_t padded;
        if (!bp_add(parts[p], 16, &padded) || !bp_add(total, padded, &total)) return false;
    }
    if (!bp_mul(total, sizeof(float), &t)) return false;
    *floats = total;
    return true;
}

float *bp_work_acquire(bp_filter *f, bool *temporary) {
    if (!atomic_flag_test_and_set(&f->busy)) {
        *temporary = false;
        return f->workspace;
    }
    *temporary = true;  /* another thread is using the filter: work in private memory */
    return bp_alloc(&f->allocator, f->workspace_floats * sizeof(float));
}

float *bp_kept_buffer_get(bp_filter *f, bp_kept_buffer *kept, bool temporary, size_t floats) {
    size_t bytes;
    if (!bp_mul(floats, sizeof(float), &bytes)) return NULL;
    if (temporary) return bp_alloc(&f->allocator, bytes);
    if (atomic_load_explicit(&kept->floats, memory_order_relaxed) < floats) {
        float *grown = bp_alloc(&f->allocator, bytes);
        if (grown == NULL) return NULL;
        bp_free(&f->allocator, kept->data);
        kept->data = grown;
        atomic_store_explicit(&kept->floats, floats, memory_order_relaxed);
    }
    return kept->data;
}

void bp_work_release(bp_filter *f, float *work, bool temporary) {
    if (temporary) bp_free(&f->allocator, work);
    else atomic_flag_clear(&f->busy);
}

/* ---- creation ------------------------------------------------------------------------------- */

static void destroy_filter(bp_filter *f) {
    bp_allocator a = f->allocator;
    bp_dtype_destroy(f); /* dtypes hook */
    bp_filter *twin = atomic_load(&f->twin);
    if (twin != NULL) bp_twin_destroy(twin);
    bp_free(&a, f->workspace);
    bp_free(&a, atomic_load(&f->wino_dw_sums));
    bp_free(&a, f->dz_batch.data);
    bp_free(&a, f->fc_inputs.data);
    for (int i = 0; i < 2; i++) {
        if (f->direct[i] != NULL) bp_direct_destroy(f->direct[i], &a);
        bp_free(&a, f->direct_w[i]);
    }
    bp_free(&a, f->wino_u);
    bp_free(&a, f->w_owned);
    bp_free(&a, f->fc_panels);
    bp_free(&a, f->bias_owned);
    bp_free(&a, f);
}

static bool check_size_rule(const char *axis, size_t in, size_t out, size_t k, size_t s, size_t d,
                            size_t pb, size_t pa, bool transposed) {
    /* standard: in + pads >= s*(out-1) + d*(k-1) + 1; transposed: the same with in/out swapped */
    size_t a = transposed ? out : in, b = transposed ? in : out;
    size_t lhs, rhs, t;
    if (!bp_add(a, pb, &lhs) || !bp_add(lhs, pa, &lhs) || !bp_mul(s, b - 1, &rhs) ||
        !bp_mul(d, k - 1, &t) || !bp_add(rhs, t, &rhs) || !bp_add(rhs, 1, &rhs)) {
        bp_set_error("size overflow along %s", axis);
        return false;
    }
    if (lhs < rhs) {
        bp_set_error("%s sizes do not fit along %s: %s %zu + padding %zu+%zu < stride %zu * (%s %zu - 1) + "
                     "dilated kernel %zu", transposed ? "transposed convolution" : "convolution", axis,
                     transposed ? "output" : "input", a, pb, pa, s, transposed ? "input" : "output", b, t + 1);
        return false;
    }
    return true;
}

/* A convolution's parameters, checked (validate_convolution). */
typedef struct {
    bp_allocator allocator;
    uint32_t flags;
    size_t threads;
    bp_image in, out;                     /* the layer's own input and output */
    const BNNSNDArrayDescriptor *wd, *bd; /* weights and bias as the caller gave them */
    size_t w_stride[8];
    size_t kw, kh, w_in, groups;          /* kernel size, input channels per group */
    size_t sx, sy, dx, dy, pl, pt;        /* strides, dilations, leading padding */
    bool has_bias;
    size_t bias_stride;
    BNNSActivation activation;
} conv_request;

/* Check every parameter of a Float32 convolution (false with bp_set_error on the first that does
   not fit) and collect what planning and packing need. */
static bool validate_convolution(const BNNSLayerParametersConvolution *p, const BNNSFilterParameters *fp,
                                 bool transposed, conv_request *r) {
    memset(r, 0, sizeof *r);
    if (fp != NULL) {
        if ((fp->alloc_memory == NULL) != (fp->free_memory == NULL)) {
            bp_set_error("alloc_memory and free_memory must be given together");
            return false;
        }
        r->allocator.alloc = fp->alloc_memory;
        r->allocator.release = fp->free_memory;
        r->flags = fp->flags;
        r->threads = fp->n_threads;
    }
    if (!bp_image_from_desc(&p->i_desc, "i_desc", &r->in) || !bp_image_from_desc(&p->o_desc, "o_desc", &r->out))
        return false;
    const bp_image in = r->in, out = r->out;

    /* weights */
    const BNNSNDArrayDescriptor *wd = r->wd = &p->w_desc;
    size_t groups = r->groups = p->groups <= 1 ? 1 : p->groups;
    bool pack32 = wd->layout == BNNSDataLayoutConvolutionWeightsOIHW_Pack32;
    if (wd->layout != BNNSDataLayoutConvolutionWeightsOIHW && wd->layout != BNNSDataLayoutConvolutionWeightsOIHrWr &&
        wd->layout != BNNSDataLayoutConvolutionWeightsIOHrWr && !pack32) {
        bp_set_error("w_desc layout 0x%x not supported (OIHW, OIHrWr, IOHrWr%s)", wd->layout,
                     transposed ? "" : " or OIHW_Pack32");
        return false;
    }
    if (pack32 && (transposed || groups > 1)) {
        bp_set_error("w_desc layout OIHW_Pack32 is supported for ungrouped standard convolution only");
        return false;
    }
    if (wd->data_type != BNNSDataTypeFloat32) {
        bp_set_error("w_desc data type 0x%x not supported by the portable backend yet (Float32 only)", wd->data_type);
        return false;
    }
    if (wd->data == NULL) {
        bp_set_error("w_desc.data is NULL");
        return false;
    }
    size_t *w_stride = r->w_stride, w_extent;
    if (!bp_resolve_strides(wd, 4, "w_desc", w_stride, &w_extent)) return false;
    size_t kw = r->kw = wd->size[0], kh = r->kh = wd->size[1];
    if (pack32) {
        /* the strides describe the plain OIHW shape (0 or packed); the data is the blocked form,
           32 * kW * kH * in * ceil(out / 32) values */
        size_t blocks = wd->size[3] / 32 + (wd->size[3] % 32 != 0), padded;
        if (w_stride[0] != 1 || w_stride[1] != kw || w_stride[2] != kw * kh || w_stride[3] != kw * kh * wd->size[2]) {
            bp_set_error("w_desc layout OIHW_Pack32 needs packed strides (0, or those of a packed OIHW array)");
            return false;
        }
        if (!bp_mul(blocks * 32, w_stride[3], &padded) || !bp_mul(padded, 2 * sizeof(float), &padded) ||
            padded > (size_t)INT64_MAX) {
            bp_set_error("w_desc size overflow");
            return false;
        }
    }
    size_t w_in = wd->size[2], w_out = wd->size[3];
    if (wd->layout == BNNSDataLayoutConvolutionWeightsIOHrWr) {
        if (groups > 1) {
            bp_set_error("grouped convolution needs OIHW or OIHrWr weights, not IOHrWr");
            return false;
        }
        w_in = wd->size[3];
        w_out = wd->size[2];
    }
    if (in.c % groups || out.c % groups) {
        bp_set_error("groups %zu must divide input channels %zu and output channels %zu", groups, in.c, out.c);
        return false;
    }
    r->w_in = w_in;
    if (w_in != in.c / groups || w_out != out.c) {
        bp_set_error("weights have %zu input channels per group and %zu output channels; the layer needs %zu and %zu",
                     w_in, w_out, in.c / groups, out.c);
        return false;
    }

    /* geometry */
    size_t sx = r->sx = p->x_stride ? p->x_stride : 1, sy = r->sy = p->y_stride ? p->y_stride : 1;
    size_t dx = r->dx = p->x_dilation_stride > 1 ? p->x_dilation_stride : 1;
    size_t dy = r->dy = p->y_dilation_stride > 1 ? p->y_dilation_stride : 1;
    size_t pl, pr, pt, pb;
    if (p->x_padding > 0 || p->y_padding > 0) {
        pl = pr = p->x_padding;
        pt = pb = p->y_padding;
    } else {
        pl = p->pad[0];
        pr = p->pad[1];
        pt = p->pad[2];
        pb = p->pad[3];
    }
    if (!check_size_rule("x (width)", in.w, out.w, kw, sx, dx, pl, pr, transposed) ||
        !check_size_rule("y (height)", in.h, out.h, kh, sy, dy, pt, pb, transposed))
        return false;
    r->pl = pl;
    r->pt = pt;

    /* bias */
    const BNNSNDArrayDescriptor *bd = r->bd = &p->bias;
    r->has_bias = bd->data != NULL;
    r->bias_stride = 1;
    if (r->has_bias) {
        if (bd->layout != BNNSDataLayoutVector && bd->layout != BNNSDataLayout1DLastMajor &&
            bd->layout != BNNSDataLayout1DFirstMajor) {
            bp_set_error("bias layout 0x%x is not a vector", bd->layout);
            return false;
        }
        if (bd->size[0] != out.c) {
            bp_set_error("bias has %zu values, the layer has %zu output channels", bd->size[0], out.c);
            return false;
        }
        if (bd->data_type != BNNSDataTypeFloat32) {
            bp_set_error("bias data type 0x%x not supported by the portable backend yet (Float32 only)", bd->data_type);
            return false;
        }
        size_t b_stride[8], b_extent;
        if (!bp_resolve_strides(bd, 1, "bias", b_stride, &b_extent)) return false;
        r->bias_stride = b_stride[0];
    }
    r->activation = p->activation;
    const char *why_not = bp_activation_unsupported_reason(&p->activation);
    if (why_not != NULL) {
        bp_set_error("activation %u not supported: %s", p->activation.function, why_not);
        return false;
    }

    return true;
}

/* Allocate the filter and plan its passes: the geometry of S, the engine of each pass (direct,
   Winograd, or im2col with its depthwise and tiny kernels) and the workspace they need. */
static bp_filter *plan_convolution(const conv_request *r, bool transposed) {
    const bp_allocator allocator = r->allocator;
    const BNNSNDArrayDescriptor *wd = r->wd;
    const size_t *w_stride = r->w_stride, kw = r->kw, kh = r->kh, groups = r->groups;
    bp_filter *f = bp_alloc(&allocator, sizeof *f);
    if (f == NULL) return NULL;
    memset(f, 0, sizeof *f);
    atomic_flag_clear(&f->busy);
    f->transposed = transposed;
    f->allocator = allocator;
    bp_gemm_ctx_init(&f->gemm, r->threads);
    f->client = (r->flags & BNNSFlagsUseClientPtr) != 0;
    f->in = r->in;
    f->out = r->out;
    f->activation = r->activation;
    f->w_data = wd->data;
    f->w_layout = wd->layout;
    memcpy(f->w_size, wd->size, sizeof f->w_size);
    memcpy(f->w_stride, w_stride, sizeof f->w_stride);
    bp_geom *g = &f->g;
    const bp_image *s_in = transposed ? &r->out : &r->in, *s_out = transposed ? &r->in : &r->out;
    *g = (bp_geom){.in_c = s_in->c, .in_h = s_in->h, .in_w = s_in->w, .out_c = s_out->c, .out_h = s_out->h,
                   .out_w = s_out->w, .kh = kh, .kw = kw, .sx = r->sx, .sy = r->sy, .dx = r->dx, .dy = r->dy,
                   .pl = r->pl, .pt = r->pt, .groups = groups};
    g->in_cg = g->in_c / groups;
    g->out_cg = g->out_c / groups;
    g->k = g->in_cg * kh * kw;
    f->workers = f->gemm.threads < BP_MAX_WORKERS ? f->gemm.threads : BP_MAX_WORKERS;
    if (!bp_geom_plan(g, &f->scratch_floats)) {
        bp_set_error("workspace size overflow");
        bp_free(&allocator, f);
        return NULL;
    }
    /* the BLAS takes 32-bit dimensions and leading dimensions */
    if (g->k > INT32_MAX || g->out_cg > INT32_MAX || g->out_h * g->out_w > INT32_MAX || g->in_h * g->in_w > INT32_MAX) {
        bp_set_error("layer too large for 32-bit BLAS dimensions (GEMM depth %zu, %zu x %zu output pixels)", g->k,
                     g->out_h, g->out_w);
        bp_free(&allocator, f);
        return NULL;
    }
    bp_plan_engines(f);
    f->w_oihw_kernels = wd->layout == BNNSDataLayoutConvolutionWeightsOIHW && w_stride[0] == 1 && w_stride[1] == kw;
    f->w_direct = f->client && !transposed && f->w_oihw_kernels && w_stride[2] == kw * kh &&
                  w_stride[3] == kw * kh * r->w_in;
    if (!workspace_size(f, &f->workspace_floats)) {
        bp_set_error("workspace size overflow");
        destroy_filter(f);
        return NULL;
    }
    return f;
}

/* Allocate the workspace and, for a filter that owns its weights, copy them and pack them for
   the planned engines (direct engine tiles, Winograd's transformed kernels); the bias likewise.
   False when memory runs out (the caller destroys the filter). */
static bool pack_convolution(bp_filter *f, const conv_request *r) {
    const bp_allocator allocator = f->allocator;
    const bp_geom *g = &f->g;
    f->workspace = bp_alloc(&allocator, f->workspace_floats * sizeof(float));
    if (f->workspace == NULL) return false;
    if (!f->client) {
        f->w_owned = bp_alloc(&allocator, weight_count(g) * sizeof(float));
        if (f->w_owned == NULL) return false;
        pack_weights(f, f->w_owned);
        f->w_data = NULL;  /* the caller may free theirs now */
        for (int i = 0; i < 2; i++)
            if (f->direct[i] != NULL) {
                f->direct_w[i] = bp_alloc(&allocator, bp_direct_weight_floats(f->direct[i]) * sizeof(float));
                if (f->direct_w[i] == NULL) return false;
                bp_weights_view canonical = {f->w_owned, g->out_cg * g->k, g->k, g->kh * g->kw};
                bp_direct_pack(f->direct[i], &canonical, f->direct_w[i], f->gemm.threads);
            }
        if (f->winograd) {
            f->wino_u = bp_alloc(&allocator, bp_winograd_weight_floats(&f->wino, g) * sizeof(float));
            if (f->wino_u == NULL) return false;
            bp_work w;
            bp_work_split(f, f->workspace, &w);
            bp_winograd_weights(&f->wino, g, f->w_owned, f->wino_u, &w.scratch, f->gemm.threads, false);
        }
    }
    f->has_bias = r->has_bias;
    f->bias_stride = r->bias_stride;
    if (r->has_bias) {
        if (f->client) {
            f->bias_data = r->bd->data;
        } else {
            f->bias_owned = bp_alloc(&allocator, f->out.c * sizeof(float));
            if (f->bias_owned == NULL) return false;
            for (size_t c = 0; c < f->out.c; c++) f->bias_owned[c] = ((const float *)r->bd->data)[c * r->bias_stride];
        }
    }
    return true;
}

bp_filter *bp_create_convolution(const BNNSLayerParametersConvolution *p, const BNNSFilterParameters *fp,
                                 bool transposed) {
    bp_clear_error();
    if (bp_tier_refusal() != NULL) {
        bp_set_error("%s", bp_tier_refusal());
        return NULL;
    }
    if (p == NULL) {
        bp_set_error("layer_params is NULL");
        return NULL;
    }
    /* dtypes hook: non-Float32 descriptors are converted around this Float32 path (dtypes.c) */
    if (bp_dtype_needed(p)) return bp_dtype_create_convolution(p, fp, transposed);
    conv_request request;
    if (!validate_convolution(p, fp, transposed, &request)) return NULL;
    bp_filter *f = plan_convolution(&request, transposed);
    if (f == NULL) return NULL;
    f->params = *p; /* kept for bp_client_twin */
    if (fp != NULL) {
        f->filter_params = *fp;
        f->has_filter_params = true;
    }
    if (!pack_convolution(f, &request)) {
        destroy_filter(f);
        return NULL;
    }
    atomic_fetch_add(&live_filters, 1);
    atomic_fetch_add(&created_filters, 1);
    return f;
}

bool bp_filter_is_matrix_product(const bp_filter *f) {
    const bp_geom *g = &f->g;
    return !f->transposed && g->groups == 1 && g->kh == 1 && g->kw == 1 && g->pl == 0 && g->pt == 0 &&
           f->in.w == 1 && f->in.h == 1 && f->out.w == 1 && f->out.h == 1;
}

bool bp_forward_runs_winograd(const bp_filter *f, size_t batch) {
    return f->winograd && batch >= f->wino.min_batch;
}

bool bp_input_gradient_runs_winograd(const bp_filter *f, size_t batch) {
    return !f->transposed && f->wino_dx && batch >= f->wino_dx_plan.min_batch;
}

bool bp_weight_gradient_runs_winograd(const bp_filter *f, size_t batch) {
    return f->wino_dw && (f->wino_dw_forced || bp_winograd_gradient_pays(&f->g, &f->wino, batch, f->gemm.threads));
}

/* The engine of a call of `batch` images in the filter's own layouts (packed images, an identity
   or elementwise activation), by the choices BNNSFilterApplyBatch and bp_apply_backward make. */
const char *bnns_portable_filter_engine(BNNSFilter filter, int pass, size_t batch) {
    const bp_filter *f = filter;
    if (f == NULL || pass < 0 || pass > 2 || batch == 0) return "";
    if (f->fc_panels != NULL || bp_filter_is_matrix_product(f)) return "fully connected";
    if (pass == 2) { /* weight gradient: on Winograd or S's forward plan, when the filter can run backward */
        if (bp_weight_gradient_runs_winograd(f, batch)) return "winograd";
        return f->client && f->weight_gradient_plan != NULL ? "direct" : "im2col";
    }
    /* the layer's forward pass is S's forward (standard) or S's backward data (transposed) */
    if (pass == 0 && bp_forward_runs_winograd(f, batch)) return "winograd";
    if (pass == 1 && bp_input_gradient_runs_winograd(f, batch)) return "winograd";
    int which = (pass == 0) != f->transposed ? BP_DIRECT_FORWARD : BP_DIRECT_BACKWARD_DATA;
    if (f->direct[which] == NULL) return bp_conv_engine(&f->g, which == BP_DIRECT_BACKWARD_DATA);
    return bp_direct_kind(f->direct[which], batch);
}

/* The copies of the weights and bias a filter holds (those it owns, packed for its engines, and a
   twin's copy of its parent's). */
static size_t weight_copies_floats(const bp_filter *f) {
    size_t floats = f->twin_copy_floats + (f->bias_owned != NULL ? f->out.c : 0);
    if (f->w_owned != NULL) floats += weight_count(&f->g);
    if (f->fc_panels != NULL) floats += bp_fc_packed_floats(f->out.c, f->in.c);
    if (f->wino_u != NULL) floats += bp_winograd_weight_floats(&f->wino, &f->g);
    for (int i = 0; i < 2; i++)
        if (f->direct_w[i] != NULL) floats += bp_direct_weight_floats(f->direct[i]);
    return floats;
}

size_t bnns_portable_filter_reserved_bytes(BNNSFilter filter) {
    const bp_filter *f = filter;
    if (f == NULL) return 0;
    size_t bytes = (f->workspace_floats + weight_copies_floats(f)) * sizeof(float);
    if (atomic_load(&f->wino_dw_sums) != NULL)
        bytes += bp_winograd_gradient_floats(&f->g, &f->wino, f->workers) * sizeof(float);
    bytes += (atomic_load(&f->dz_batch.floats) + atomic_load(&f->fc_inputs.floats)) * sizeof(float);
    return bytes + bnns_portable_filter_reserved_bytes(atomic_load(&f->twin));
}

BNNSFilter BNNSFilterCreateLayerConvolution(const BNNSLayerParametersConvolution *layer_params,
                                            const BNNSFilterParameters *filter_params) {
    return bp_create_convolution(layer_params, filter_params, false);
}

BNNSFilter BNNSFilterCreateLayerTransposedConvolution(const BNNSLayerParametersConvolution *layer_params,
                                                      const BNNSFilterParameters *filter_params) {
    return bp_create_convolution(layer_params, filter_params, true);
}

/* One past the last value of the caller's weight array that the filter reads (any layout). */
static size_t weights_extent(const bp_filter *f) {
    const bp_geom *g = &f->g;
    size_t lin = f->transposed ? g->out_cg : g->in_cg, outputs = f->transposed ? g->in_c : g->out_c;
    size_t kw = g->kw, kh = g->kh, last = 0;
    for (size_t corner = 0; corner < 4; corner++) { /* reversed layouts peak at kx or ky = 0 */
        size_t at = weight_offset(f, corner & 1 ? kw - 1 : 0, corner & 2 ? kh - 1 : 0, lin - 1, outputs - 1);
        if (at > last) last = at;
    }
    return last + 1;
}

bp_filter *bp_client_twin(const bp_filter *f) {
    BNNSLayerParametersConvolution p = f->params;
    BNNSFilterParameters q = f->has_filter_params ? f->filter_params : (BNNSFilterParameters){0};
    q.flags |= BNNSFlagsUseClientPtr;
    size_t stride[8], extent, bias_floats = f->has_bias ? f->out.c : 0;
    if (!bp_resolve_strides(&p.w_desc, 4, "weights", stride, &extent)) return NULL;
    if (weights_extent(f) > extent) extent = weights_extent(f); /* Pack32 pads to whole blocks */
    float *copy = bp_alloc(&f->allocator, (extent + bias_floats) * sizeof(float));
    if (copy == NULL) return NULL;
    memset(copy, 0, extent * sizeof(float));
    p.w_desc.data = copy;
    float *unpacked = NULL; /* a fully-connected filter holding its packed panels only */
    if (f->w_owned == NULL) {
        unpacked = bp_alloc(&f->allocator, weight_count(&f->g) * sizeof(float));
        if (unpacked == NULL) {
            bp_free(&f->allocator, copy);
            return NULL;
        }
        bp_fc_unpack(f->fc_panels, f->out.c, f->in.c, unpacked);
    }
    bp_weights_to_descriptor(f, unpacked != NULL ? unpacked : f->w_owned, &p.w_desc, f->w_stride, false);
    bp_free(&f->allocator, unpacked);
    if (f->has_bias) {
        memcpy(copy + extent, f->bias_owned, bias_floats * sizeof(float));
        p.bias.data = copy + extent;
        memset(p.bias.stride, 0, sizeof p.bias.stride);
    }
    bp_filter *twin = bp_create_convolution(&p, &q, f->transposed);
    if (twin == NULL) {
        bp_free(&f->allocator, copy);
        return NULL;
    }
    twin->twin_copy = copy;
    twin->twin_copy_floats = extent + bias_floats;
    atomic_fetch_sub(&live_filters, 1); /* internal: the counts are the caller's filters */
    atomic_fetch_sub(&created_filters, 1);
    atomic_fetch_add(&live_twins, 1);
    atomic_fetch_add(&created_twins, 1);
    return twin;
}

void bp_twin_destroy(bp_filter *twin) {
    bp_allocator a = twin->allocator;
    float *copy = twin->twin_copy;
    destroy_filter(twin);
    bp_free(&a, copy);
    atomic_fetch_sub(&live_twins, 1);
}

void BNNSFilterDestroy(BNNSFilter filter) {
    if (filter == NULL) return;
    destroy_filter(filter);
    atomic_fetch_sub(&live_filters, 1);
}

/* ---- forward -------------------------------------------------------------------------------- */

static bp_epilogue forward_epilogue(const bp_filter *f) {
    bp_epilogue e = {0};
    if (f->has_bias) {
        e.bias = f->bias_owned != NULL ? f->bias_owned : f->bias_data;
        e.bias_stride = f->bias_owned != NULL ? 1 : f->bias_stride;
    }
    /* a channelwise activation (softmax) needs every channel of a pixel: applied afterwards */
    if (!bp_activation_is_channelwise(&f->activation) && f->activation.function != BNNSActivationFunctionIdentity)
        e.act = &f->activation;
    return e;
}

/* The whole batch in one parallel pass: packed outputs (and, transposed, packed inputs) with an
   elementwise activation. */
bool bp_filter_batch_at_once(const bp_filter *f) {
    return f->out.packed && (!f->transposed || f->in.packed) && !bp_activation_is_channelwise(&f->activation);
}

static void forward_batch(bp_filter *f, const bp_work *w, const float *weights, const bp_direct_pass *direct,
                          size_t batch, const float *x, size_t x_bs, float *y, size_t y_bs) {
    bp_epilogue e = forward_epilogue(f);
    if (!f->transposed)
        bp_conv_forward(&f->g, weights, batch, &f->in, x, x_bs, y, y_bs, &e, &w->scratch, &f->gemm, direct);
    else
        bp_conv_backward_data(&f->g, weights, batch, x, x_bs, &f->out, y, y_bs, true, &e, &w->scratch, &f->gemm,
                              direct);
}

/* One image through packed buffers: strided outputs or inputs, channelwise activations. */
static void forward_one(bp_filter *f, const bp_work *w, const float *weights, const bp_direct_pass *direct,
                        const float *x, float *y) {
    bp_image out_packed = bp_packed_like(&f->out);
    float *result = f->out.packed ? y : (f->transposed ? w->pack_in : w->pack_out);
    bp_epilogue e = forward_epilogue(f);
    if (!f->transposed) {
        bp_conv_forward(&f->g, weights, 1, &f->in, x, 0, result, 0, &e, &w->scratch, &f->gemm, direct);
    } else {
        const float *t_in = x; /* S's output gradient: must be packed */
        if (!f->in.packed) {
            bp_image in_packed = bp_packed_like(&f->in);
            bp_copy_image(&f->in, x, &in_packed, w->pack_out, false);
            t_in = w->pack_out;
        }
        bp_conv_backward_data(&f->g, weights, 1, t_in, 0, &out_packed, result, 0, true, &e, &w->scratch, &f->gemm,
                              direct);
    }
    if (bp_activation_is_channelwise(&f->activation)) {
        size_t hw = f->out.w * f->out.h;
        bp_activation_apply_image(&f->activation, result, f->out.c, hw, hw);
    }
    if (!f->out.packed) bp_copy_image(&out_packed, result, &f->out, y, false);
}

/* A standard filter over 1x1 images with a 1x1 kernel (every fully-connected filter) maps a batch
   with one GEMM: Y (batch x out) = X (batch x in) * W^T, rows batch-stride apart. */
static bool one_gemm_for_batch(const bp_filter *f, size_t batch, size_t in_stride, size_t out_stride) {
    return bp_filter_is_matrix_product(f) && f->in.sc == 1 && f->out.sc == 1 && batch <= INT32_MAX &&
           in_stride <= INT32_MAX && out_stride <= INT32_MAX;
}

/* -1 (the error set) when the memory for the packed inputs cannot be had. `temporary`: the call
   works in private memory (another holds the workspace), and so allocates its packed inputs. */
static int forward_batch_gemm(bp_filter *f, bool temporary, const float *weights, size_t batch, const float *in,
                              size_t in_stride, float *out, size_t out_stride) {
    size_t n_in = f->in.c, n_out = f->out.c;
    if (f->fc_panels != NULL || batch <= bp_fc_client_batch_max()) {
        bp_epilogue e = forward_epilogue(f);
        e.act = &f->activation;
        size_t floats = f->fc_panels != NULL ? 0 : bp_fc_inputs_floats(batch, n_in);
        float *inputs = NULL; /* with too many floats to count in bytes, the tiles take every row */
        if (floats > 0 && floats <= SIZE_MAX / sizeof(float) &&
            (inputs = bp_kept_buffer_get(f, &f->fc_inputs, temporary, floats)) == NULL)
            return -1;
        bp_fc_forward(weights, n_in, f->fc_panels, inputs, n_out, n_in, batch, in, in_stride, out, out_stride, &e,
                      f->gemm.threads);
        if (temporary) bp_free(&f->allocator, inputs);
        return 0;
    }
    bp_sgemm_parallel(&f->gemm, false, true, batch, n_out, n_in, 1.0f, in, in_stride, weights, n_in, 0.0f, out,
                      out_stride);
    for (size_t b = 0; b < batch; b++) {
        float *row = out + b * out_stride;
        if (f->has_bias)
            for (size_t c = 0; c < n_out; c++) row[c] += bp_bias_at(f, c);
        bp_activation_apply_image(&f->activation, row, n_out, 1, 1);
    }
    return 0;
}

static int apply_batch_f32(bp_filter *f, size_t batch_size, const float *in, size_t in_stride, float *out,
                           size_t out_stride);

int BNNSFilterApplyBatch(BNNSFilter filter, size_t batch_size, const void *in, size_t in_stride,
                         void *out, size_t out_stride) {
    bp_clear_error();
    bp_filter *f = filter;
    if (f == NULL || in == NULL || out == NULL) {
        bp_set_error("filter, in and out must not be NULL");
        return -1;
    }
    /* dtypes hook: non-Float32 input / output converted around the Float32 path (dtypes.c) */
    if (f->dtype != NULL) return bp_dtype_apply_batch(f, batch_size, in, in_stride, out, out_stride, apply_batch_f32);
    return apply_batch_f32(f, batch_size, in, in_stride, out, out_stride);
}

/* The Float32 forward path: every descriptor of f is Float32 here. */
static int apply_batch_f32(bp_filter *f, size_t batch_size, const float *in, size_t in_stride, float *out,
                           size_t out_stride) {
    if (batch_size == 0) return 0;
    if (in_stride == 0) in_stride = f->in.item;
    if (out_stride == 0) out_stride = f->out.item;
    if (batch_size > 1 && (in_stride < f->in.extent || out_stride < f->out.extent)) {
        bp_set_error("batch strides (%zu, %zu) are smaller than one item (%zu, %zu)", in_stride, out_stride,
                     f->in.extent, f->out.extent);
        return -1;
    }
    if (!bp_batch_span_ok(batch_size, in_stride, f->in.extent) || !bp_batch_span_ok(batch_size, out_stride, f->out.extent)) {
        bp_set_error("batch of %zu items with strides (%zu, %zu) overflows the address space", batch_size, in_stride,
                     out_stride);
        return -1;
    }
    bool temporary;
    float *base = bp_work_acquire(f, &temporary);
    if (base == NULL) return -1;
    bp_work w;
    bp_work_split(f, base, &w);
    bp_direct_pass pass;
    const bp_direct_pass *direct;
    int status = 0;
    if (f->fc_panels != NULL || one_gemm_for_batch(f, batch_size, in_stride, out_stride)) {
        const float *weights = bp_call_weights(f, -1, &w, &pass, &direct);
        status = forward_batch_gemm(f, temporary, weights, batch_size, in, in_stride, out, out_stride);
    } else if (bp_forward_runs_winograd(f, batch_size)) {
        /* client weights: transformed as they are now, in the same run */
        const float *now = f->wino_u == NULL ? bp_call_weights(f, -1, &w, &pass, &direct) : NULL;
        bp_epilogue e = forward_epilogue(f);
        bp_winograd_forward(&f->wino, &f->g, f->wino_u != NULL ? f->wino_u : w.wino_u, now, false, batch_size,
                            &f->in, in, in_stride, out, out_stride, &e, &w.scratch, f->gemm.threads);
    } else {
        const float *weights =
            bp_call_weights(f, f->transposed ? BP_DIRECT_BACKWARD_DATA : BP_DIRECT_FORWARD, &w, &pass, &direct);
        if (bp_filter_batch_at_once(f))
            forward_batch(f, &w, weights, direct, batch_size, in, in_stride, out, out_stride);
        else
            for (size_t b = 0; b < batch_size; b++)
                forward_one(f, &w, weights, direct, (const float *)in + b * in_stride, (float *)out + b * out_stride);
    }
    bp_work_release(f, base, temporary);
    return status;
}

int BNNSFilterApply(BNNSFilter filter, const void *in, void *out) {
    return BNNSFilterApplyBatch(filter, 1, in, 0, out, 0);
}

int BNNSFilterApplyBackwardBatch(BNNSFilter filter, size_t batch_size, const void *in, size_t in_stride,
                                 BNNSNDArrayDescriptor *in_delta, size_t in_delta_stride, const void *out,
                                 size_t out_stride, const BNNSNDArrayDescriptor *out_delta, size_t out_delta_stride,
                                 BNNSNDArrayDescriptor *weights_delta, BNNSNDArrayDescriptor *bias_delta) {
    bp_clear_error();
    if (filter == NULL) {
        bp_set_error("filter is NULL");
        return -1;
    }
    if (!bp_dtype_backward_ok(filter)) return -1; /* dtypes hook */
    return bp_apply_backward(filter, batch_size, in, in_stride, in_delta, in_delta_stride, out, out_stride,
                             out_delta, out_delta_stride, weights_delta, bias_delta);
}
