/* libFuzzer target for the portable BNNS library: create (standard, transposed, fully-connected and
   legacy), apply, apply backward and destroy with parameter structs decoded from the fuzzer's bytes.

   Every descriptor the harness hands over is backed by memory at least as large as the
   descriptor says (that is the caller's side of the BNNS contract); everything else is
   arbitrary. The library must never crash, must return NULL / -1 for what it refuses, and must
   destroy everything it creates. Build and run: see .ci/fuzz.sh. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnns.h"
#include "bnns_portable.h"

#define MAX_FLOATS (1u << 18)

typedef struct {
    const uint8_t *p;
    size_t n;
} stream;

static uint64_t take(stream *s, size_t bytes) {
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; i++) {
        uint8_t b = 0;
        if (s->n) {
            b = *s->p++;
            s->n--;
        }
        v |= (uint64_t)b << (8 * i);
    }
    return v;
}

/* mostly small values, sometimes a byte, rarely any 64-bit value */
static size_t value(stream *s, size_t small_max) {
    uint8_t mode = (uint8_t)take(s, 1);
    if (mode < 230) return mode % (small_max + 1);
    if (mode < 250) return (size_t)take(s, 1);
    return (size_t)take(s, 8);
}

static const uint32_t layouts[] = {BNNSDataLayoutImageCHW, BNNSDataLayoutVector, BNNSDataLayoutConvolutionWeightsOIHW,
                                   BNNSDataLayoutConvolutionWeightsOIHrWr, BNNSDataLayoutConvolutionWeightsIOHrWr,
                                   BNNSDataLayoutConvolutionWeightsOIHW_Pack32, BNNSDataLayoutRowMajorMatrix};

static uint32_t pick_layout(stream *s, uint32_t usual) {
    uint8_t r = (uint8_t)take(s, 1);
    if (r < 200) return usual;
    if (r < 250) return layouts[r % (sizeof layouts / sizeof layouts[0])];
    return (uint32_t)take(s, 4);
}

static size_t rank_of(uint32_t layout) { return (layout >> 16) & 0xF; }

/* Values spanned by a descriptor (BNNS's packed-stride rule), or SIZE_MAX if huge/invalid;
   *item receives the outermost stride times the outermost size (one batch item). */
static size_t extent_item(const BNNSNDArrayDescriptor *d, size_t *item) {
    size_t rank = rank_of(d->layout);
    if (rank == 0 || rank > 8) return SIZE_MAX;
    /* first-major layouts (0x?8001) list sizes outermost first; strides always run fastest first */
    bool first_major = (d->layout & 0xFFFF) == 0x8001;
    size_t stride = 1, last = 0, prev_size = 1, prev_stride = 1;
    for (size_t k = 0; k < rank; k++) {
        size_t n = d->size[first_major ? rank - 1 - k : k];
        stride = d->stride[k] ? d->stride[k] : (k == 0 ? 1 : prev_size * prev_stride);
        if (n > MAX_FLOATS || stride > MAX_FLOATS) return SIZE_MAX;
        if (n) last += (n - 1) * stride;
        if (last > MAX_FLOATS) return SIZE_MAX;
        prev_size = n;
        prev_stride = stride;
    }
    *item = prev_size * prev_stride;
    return last + 1;
}

/* Elements a caller must provide: the strided extent, and for OIHW_Pack32 weights the padded
   blocks of 32 output channels BNNS requires (32 * kW * kH * in * ceil(out / 32)). */
static size_t extent(const BNNSNDArrayDescriptor *d) {
    size_t item, n = extent_item(d, &item);
    if (n != SIZE_MAX && d->layout == BNNSDataLayoutConvolutionWeightsOIHW_Pack32) {
        size_t factors[4] = {d->size[0], d->size[1], d->size[2], (d->size[3] + 31) / 32}, packed = 32;
        for (int k = 0; k < 4; k++) {
            if (factors[k] != 0 && packed > MAX_FLOATS / factors[k]) return SIZE_MAX;
            packed *= factors[k];
        }
        if (packed > n) n = packed;
    }
    return n;
}

static void fill_descriptor(stream *s, BNNSNDArrayDescriptor *d, uint32_t layout) {
    memset(d, 0, sizeof *d);
    d->layout = pick_layout(s, layout);
    d->flags = take(s, 1) < 200 ? BNNSNDArrayFlagBackpropSet : BNNSNDArrayFlagBackpropAccumulate;
    d->data_type = take(s, 1) < 240 ? BNNSDataTypeFloat32 : (uint32_t)take(s, 4);
    size_t rank = rank_of(d->layout);
    for (size_t k = 0; k < rank && k < 8; k++) {
        d->size[k] = value(s, 5);
        d->stride[k] = take(s, 1) < 220 ? 0 : value(s, 40);
    }
}

/* Back a descriptor with zeroed memory of at least its extent (or leave data NULL). */
static float *back(BNNSNDArrayDescriptor *d, stream *s) {
    size_t n = extent(d);
    if (n == SIZE_MAX || take(s, 1) > 245) return NULL;
    float *p = calloc(n, sizeof(float));
    d->data = p;
    return p;
}

static void check_status(int status) {
    if (status != 0 && status != -1) abort();
}

/* A fully-connected filter: vectors in and out, a (possibly row-padded) weight matrix. */
static void fuzz_fully_connected(stream *s) {
    BNNSLayerParametersFullyConnected p;
    memset(&p, 0, sizeof p);
    fill_descriptor(s, &p.i_desc, BNNSDataLayoutVector);
    fill_descriptor(s, &p.o_desc, BNNSDataLayoutVector);
    fill_descriptor(s, &p.w_desc, take(s, 1) & 1 ? BNNSDataLayoutRowMajorMatrix : BNNSDataLayout2DFirstMajor);
    float *weights = back(&p.w_desc, s);
    float *bias = NULL;
    if (take(s, 1) & 1) {
        fill_descriptor(s, &p.bias, BNNSDataLayoutVector);
        bias = back(&p.bias, s);
    }
    p.activation.function = (uint32_t)(take(s, 1) % 40);
    p.activation.alpha = (float)(int8_t)take(s, 1) / 16.0f;
    BNNSFilterParameters fp = {.flags = (uint32_t)take(s, 1) & 1, .n_threads = 1};
    BNNSFilter f = BNNSFilterCreateLayerFullyConnected(&p, &fp);
    if (f) {
        size_t in_item, out_item;
        size_t in_n = extent_item(&p.i_desc, &in_item), out_n = extent_item(&p.o_desc, &out_item);
        size_t batch = 1 + take(s, 1) % 3;
        if (in_n != SIZE_MAX && out_n != SIZE_MAX) {
            float *x = calloc(batch * (in_item + in_n), sizeof(float));
            float *y = calloc(batch * (out_item + out_n), sizeof(float));
            check_status(BNNSFilterApplyBatch(f, batch, x, 0, y, 0));
            BNNSNDArrayDescriptor d_out = p.o_desc, d_in = p.i_desc;
            d_out.data = y;
            d_in.data = calloc(batch * (in_item + in_n), sizeof(float));
            check_status(BNNSFilterApplyBackwardBatch(f, batch, x, 0, (take(s, 1) & 1) ? NULL : &d_in, 0, y, 0,
                                                      &d_out, 0, NULL, NULL));
            free(d_in.data);
            free(x);
            free(y);
        }
        BNNSFilterDestroy(f);
    }
    free(weights);
    free(bias);
}

/* A legacy image-stack convolution: the weights are exactly k_width*k_height*in*out floats. */
static void fuzz_legacy_convolution(stream *s) {
    BNNSImageStackDescriptor in, out;
    BNNSImageStackDescriptor *stacks[2] = {&in, &out};
    for (int i = 0; i < 2; i++) {
        BNNSImageStackDescriptor *d = stacks[i];
        memset(d, 0, sizeof *d);
        d->width = value(s, 6);
        d->height = value(s, 6);
        d->channels = value(s, 4);
        d->row_stride = d->width + (take(s, 1) < 200 ? 0 : value(s, 3));
        d->image_stride = d->row_stride * d->height + (take(s, 1) < 200 ? 0 : value(s, 3));
        d->data_type = take(s, 1) < 240 ? BNNSDataTypeFloat32 : (uint32_t)take(s, 4);
    }
    BNNSConvolutionLayerParameters p;
    memset(&p, 0, sizeof p);
    p.x_stride = value(s, 2);
    p.y_stride = value(s, 2);
    p.x_padding = value(s, 2);
    p.y_padding = value(s, 2);
    p.k_width = value(s, 3);
    p.k_height = value(s, 3);
    p.in_channels = take(s, 1) < 230 ? in.channels : value(s, 4);
    p.out_channels = take(s, 1) < 230 ? out.channels : value(s, 4);
    p.activation.function = (uint32_t)(take(s, 1) % 36);
    double count = (double)p.k_width * (double)p.k_height * (double)p.in_channels * (double)p.out_channels;
    float *weights = count < MAX_FLOATS ? calloc((size_t)count + 1, sizeof(float)) : NULL;
    float *bias = (take(s, 1) & 1) && p.out_channels < MAX_FLOATS ? calloc(p.out_channels + 1, sizeof(float)) : NULL;
    p.weights.data = weights;
    p.weights.data_type = BNNSDataTypeFloat32;
    p.bias.data = bias;
    p.bias.data_type = BNNSDataTypeFloat32;
    BNNSFilterParameters fp = {.flags = (uint32_t)take(s, 1) & 1, .n_threads = 1};
    BNNSFilter f = weights ? BNNSFilterCreateConvolutionLayer(&in, &out, &p, &fp) : NULL;
    if (f) {
        double in_n = (double)in.image_stride * (double)in.channels, out_n = (double)out.image_stride * (double)out.channels;
        if (in_n < MAX_FLOATS && out_n < MAX_FLOATS) {
            float *x = calloc((size_t)in_n * 2 + 1, sizeof(float));
            float *y = calloc((size_t)out_n * 2 + 1, sizeof(float));
            check_status(BNNSFilterApplyBatch(f, 2, x, 0, y, 0));
            free(x);
            free(y);
        }
        BNNSFilterDestroy(f);
    }
    free(weights);
    free(bias);
}

/* BNNS_PY_FUZZ_LIST_TIERS=1: print the vector tiers this CPU runs and exit (.ci/fuzz.sh fuzzes
   each in turn, with BNNS_PY_ISA). Otherwise report the tier being fuzzed and refuse to start on a
   refused one (every creation would fail: nothing would be fuzzed). */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (getenv("BNNS_PY_FUZZ_LIST_TIERS")) {
        printf("%s\n", bnns_portable_isa_available());
        exit(0);
    }
    fprintf(stderr, "bnns-py fuzzing tier: %s\n", bnns_portable_isa());
    if (bnns_portable_isa_error()[0]) {
        fprintf(stderr, "%s\n", bnns_portable_isa_error());
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    stream s = {data, size};
    uint8_t entry = (uint8_t)take(&s, 1);
    if (entry >= 200) {
        if (entry >= 228) fuzz_legacy_convolution(&s);
        else fuzz_fully_connected(&s);
        if (bnns_portable_live_filter_count() != 0) abort();
        return 0;
    }
    BNNSLayerParametersConvolution p;
    memset(&p, 0, sizeof p);
    fill_descriptor(&s, &p.i_desc, BNNSDataLayoutImageCHW);
    fill_descriptor(&s, &p.o_desc, BNNSDataLayoutImageCHW);
    fill_descriptor(&s, &p.w_desc, BNNSDataLayoutConvolutionWeightsOIHW);
    float *weights = back(&p.w_desc, &s);
    float *bias = NULL;
    if (take(&s, 1) < 128) {
        fill_descriptor(&s, &p.bias, BNNSDataLayoutVector);
        bias = back(&p.bias, &s);
    }
    p.activation.function = take(&s, 1) < 240 ? (uint32_t)(take(&s, 1) % 40) : (uint32_t)take(&s, 4);
    p.activation.alpha = (float)(int8_t)take(&s, 1) / 16.0f;
    p.activation.beta = (float)(int8_t)take(&s, 1) / 16.0f;
    p.x_stride = value(&s, 3);
    p.y_stride = value(&s, 3);
    p.x_dilation_stride = value(&s, 3);
    p.y_dilation_stride = value(&s, 3);
    p.x_padding = take(&s, 1) < 200 ? 0 : value(&s, 3);
    p.y_padding = take(&s, 1) < 200 ? 0 : value(&s, 3);
    p.groups = value(&s, 4);
    for (int i = 0; i < 4; i++) p.pad[i] = value(&s, 3);
    BNNSFilterParameters fp = {.flags = (uint32_t)take(&s, 1) & 3, .n_threads = 1};
    bool transposed = take(&s, 1) & 1;

    BNNSFilter f = transposed ? BNNSFilterCreateLayerTransposedConvolution(&p, &fp)
                              : BNNSFilterCreateLayerConvolution(&p, &fp);
    if (f) {
        size_t in_item, out_item;
        size_t in_n = extent_item(&p.i_desc, &in_item), out_n = extent_item(&p.o_desc, &out_item);
        size_t batch = 1 + take(&s, 1) % 3;
        uint8_t mode = (uint8_t)take(&s, 1);
        /* huge strides are >= 2^61: two items can never both be addressed, so BNNS must refuse */
        size_t huge = (size_t)take(&s, 8) | ((size_t)1 << 61);
        size_t in_stride = mode < 100 ? 0 : mode < 250 ? in_n + take(&s, 1) % 4 : huge;
        size_t out_stride = mode < 100 ? 0 : mode < 250 ? out_n + take(&s, 1) % 4 : huge;
        /* Buffers for the strides given; with huge strides only item 0 is backed (enough for a
           batch of 1, and BNNS must refuse larger batches). Layers too large for the harness to
           back (images, or an im2col workspace of about weights x image) are created and
           destroyed, not applied. */
        bool huge_strides = mode >= 250;
        double in_total_d = huge_strides ? (double)in_n
                                         : (double)batch * ((double)(in_stride ? in_stride : in_item) + (double)in_n);
        double out_total_d = huge_strides ? (double)out_n
                                          : (double)batch * ((double)(out_stride ? out_stride : out_item) + (double)out_n);
        size_t w_n = extent(&p.w_desc);
        bool affordable = in_n != SIZE_MAX && out_n != SIZE_MAX && w_n != SIZE_MAX &&
                          (double)w_n * (double)(in_n + out_n) < (double)(1u << 24) &&
                          in_total_d < MAX_FLOATS * 4.0 && out_total_d < MAX_FLOATS * 4.0;
        if (affordable) {
            size_t in_total = (size_t)in_total_d, out_total = (size_t)out_total_d;
            float *x = calloc(in_total, sizeof(float));
            float *y = calloc(out_total, sizeof(float));
            float *dy = calloc(out_total, sizeof(float));
            float *dx = calloc(in_total, sizeof(float));
            int status = BNNSFilterApplyBatch(f, batch, x, in_stride, y, out_stride);
            if (status != 0 && status != -1) abort();
            if (huge_strides && batch > 1 && status == 0) abort();  /* must refuse: items cannot fit */
            BNNSNDArrayDescriptor d_out = p.o_desc, d_in = p.i_desc, d_w = p.w_desc, d_b = p.bias;
            d_out.data = dy;
            d_in.data = dx;
            d_in.flags = take(&s, 1) & 1;
            float *dw = weights ? calloc(extent(&p.w_desc), sizeof(float)) : NULL;
            float *db = bias ? calloc(extent(&p.bias), sizeof(float)) : NULL;
            d_w.data = dw;
            d_b.data = db;
            uint8_t mask = (uint8_t)take(&s, 1);
            status = BNNSFilterApplyBackwardBatch(f, batch, (mask & 1) ? NULL : x, in_stride, (mask & 2) ? NULL : &d_in,
                                                  in_stride, (mask & 4) ? NULL : y, out_stride, &d_out, out_stride,
                                                  (mask & 8) || !dw ? NULL : &d_w, (mask & 16) || !db ? NULL : &d_b);
            if (status != 0 && status != -1) abort();
            free(x);
            free(y);
            free(dy);
            free(dx);
            free(dw);
            free(db);
        }
        BNNSFilterDestroy(f);
    }
    free(weights);
    free(bias);
    if (bnns_portable_live_filter_count() != 0) abort();
    return 0;
}
