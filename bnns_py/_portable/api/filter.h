/* The portable filter object shared by creation, forward and backward. */
#ifndef BNNS_PORTABLE_FILTER_H
#define BNNS_PORTABLE_FILTER_H

#include "internal.h"
#include "winograd.h"

/* A buffer a filter keeps between calls (bp_kept_buffer_get); its size is read by other threads
   (bnns_portable_filter_reserved_bytes). */
typedef struct {
    float *data;
    _Atomic size_t floats;
} bp_kept_buffer;

typedef struct bp_filter {
    bool transposed;
    /* a fully-connected filter (fully_connected.c), built as a 1x1 convolution over a 1x1 image:
       backward takes its gradients in the FC shapes, see bp_fc_translate_gradients */
    bool fully_connected;
    BNNSDataLayout fc_w_layout;   /* RowMajorMatrix {in, out} or 2DFirstMajor {out, in} */
    size_t fc_w_size[2];
    float *fc_panels;             /* owned weights packed for bp_fc_forward (bp_fc_pack), or NULL */
    bp_allocator allocator;
    bp_gemm_ctx gemm;
    bool client;                  /* BNNSFlagsUseClientPtr: read weights/bias from the caller */
    bp_image in, out;             /* the layer's own input and output */
    bp_geom g;                    /* the standard convolution S (see internal.h) */
    BNNSActivation activation;
    /* weights as the caller described them */
    const float *w_data;
    BNNSDataLayout w_layout;
    size_t w_size[4], w_stride[4];
    /* S's weights as a packed [S.out_c][S.k] matrix: a filter-owned copy, or the caller's own
       memory when it already has that form (client mode, standard OIHW packed); NULL in a
       fully-connected filter that holds fc_panels instead (fully_connected.c) */
    float *w_owned;
    bool w_direct;
    bool w_oihw_kernels;          /* the caller's weights are OIHW, each kernel's taps contiguous */
    /* bias */
    bool has_bias;
    const float *bias_data;
    size_t bias_stride;
    float *bias_owned;
    /* the direct engine (direct.c): plans of S's forward [0] and backward-data [1] passes (NULL:
       the im2col engine runs that pass) and, when the filter owns its weights, their packed
       weights; client-pointer filters pack them into the workspace at each call */
    struct bp_direct *direct[2];
    struct bp_direct *weight_gradient_plan; /* the plan that computes S's weight gradients: direct[0] or NULL (im2col) */
    float *direct_w[2];
    size_t direct_w_floats;       /* workspace floats for packing (client filters) */
    /* Winograd F(2x2, 3x3) forward pass (winograd.c), with its transformed weights when the
       filter owns its weights; client-pointer filters transform them into the workspace at each call */
    bool winograd;
    bp_winograd wino;
    float *wino_u;
    /* and for the input gradient of a client-pointer filter, through the adjoint geometry */
    bool wino_dx;
    bp_geom dx_geom;
    bp_winograd wino_dx_plan;
    /* and for its weight gradient, on the forward plan's tiles: in the calls where it
       pays (bp_winograd_gradient_pays), or all when BNNS_PY_PORTABLE_ENGINE=winograd; the
       workers' sums (bp_winograd_gradient_floats) are reserved by the first backward call that
       runs it, for the calls that hold the workspace (backward.c) */
    bool wino_dw, wino_dw_forced;
    float *_Atomic wino_dw_sums;
    /* a backward call's dz = dy * f'(y) for its whole batch (backward.c): grown to the largest
       batch seen by the calls that hold the workspace (only they use it), freed with the filter */
    bp_kept_buffer dz_batch;
    /* a fully-connected call's packed inputs (client weights, batches the pointwise kernel takes):
       kept the same way, for the calls that hold the workspace */
    bp_kept_buffer fc_inputs;
    /* one workspace per filter; a concurrent call allocates its own */
    float *workspace;
    size_t workspace_floats;
    size_t scratch_floats;        /* per worker (bp_geom_plan) */
    int workers;                  /* scratch areas in the workspace */
    atomic_flag busy;
    /* data types other than Float32 (dtypes.c): NULL when every descriptor is Float32 */
    struct bp_dtype_ext *dtype;
    /* what the filter was created from (the caller's data pointers in it are not read after
       creation): backward on a filter that owns its weights runs on a twin made from these */
    BNNSLayerParametersConvolution params;
    BNNSFilterParameters filter_params;
    bool has_filter_params;
    float *twin_copy;             /* a twin's weights and bias (bp_client_twin) */
    size_t twin_copy_floats;
    struct bp_filter *_Atomic twin; /* the twin backward runs on (made at its first call, see backward.c) */
} bp_filter;

/* workspace layout (offsets in floats) */
typedef struct {
    bp_scratch scratch;
    float *pack_in, *pack_out, *pack_out2, *weights, *dweights, *dbias, *rows, *direct_w, *wino_u, *wino_u_dx;
} bp_work;

enum { BP_DIRECT_FORWARD = 0, BP_DIRECT_BACKWARD_DATA = 1 };

/* Validate a convolution and build its filter (NULL with bp_set_error on any invalid input).
   Other layer kinds (fully connected, legacy) are expressed as convolutions and built here. */
bp_filter *bp_create_convolution(const BNNSLayerParametersConvolution *p, const BNNSFilterParameters *fp,
                                 bool transposed);

/* A client-pointer twin of a filter that owns its weights: the same layer reading the filter's
   copy of the weights (laid out again as the caller described them) and of the bias, for
   backward. Not counted as a filter but as a twin (bnns_portable_*_twin_count); NULL with
   bp_set_error on failure. A filter destroys its twin (bp_filter.twin) with itself. */
bp_filter *bp_client_twin(const bp_filter *f);
void bp_twin_destroy(bp_filter *twin);

/* The choices of a call that depend on its batch, shared by BNNSFilterApplyBatch,
   bp_apply_backward and bnns_portable_filter_engine. A matrix product: a standard one-group layer
   whose 1x1 kernel reads its one input pixel (no padding before it) into its one output pixel, so
   that a batch is one GEMM (fully-connected filters are built so). */
bool bp_filter_is_matrix_product(const bp_filter *f);
bool bp_forward_runs_winograd(const bp_filter *f, size_t batch);
bool bp_input_gradient_runs_winograd(const bp_filter *f, size_t batch);
bool bp_weight_gradient_runs_winograd(const bp_filter *f, size_t batch);

/* Whether the filter's forward calls run a whole batch at once (packed outputs, no channelwise
   activation), as the Winograd pass needs. */
bool bp_filter_batch_at_once(const bp_filter *f);

void bp_work_split(const bp_filter *f, float *base, bp_work *w);
float *bp_work_acquire(bp_filter *f, bool *temporary);
/* At least `floats` floats for a call: the filter's kept buffer, grown to the largest size asked,
   for the call that holds the workspace (temporary false); private memory, which the caller frees,
   for a concurrent one. NULL when the memory cannot be had. */
float *bp_kept_buffer_get(bp_filter *f, bp_kept_buffer *kept, bool temporary, size_t floats);
void bp_work_release(bp_filter *f, float *work, bool temporary);
const float *bp_current_weights(const bp_filter *f, float *scratch);
float bp_bias_at(const bp_filter *f, size_t channel);
/* What a call needs of the weights. With the direct engine running pass `which` (BP_DIRECT_*;
   -1: none), *direct = pass with the filter's packed weights, or a view of the caller's OIHW
   array (kernels contiguous), or of the canonical weights. The canonical weights are returned when the pass is
   not direct or needs them (copied into the workspace for client filters whose layout is not
   the canonical one), else NULL; *direct is NULL when the im2col engine runs the pass. */
const float *bp_call_weights(const bp_filter *f, int which, const bp_work *w, struct bp_direct_pass *pass,
                             const struct bp_direct_pass **direct);
void bp_weights_to_descriptor(const bp_filter *f, const float *canonical, const BNNSNDArrayDescriptor *d,
                              const size_t stride[4], bool accumulate);

/* For a fully-connected filter: check its vector / matrix gradient descriptors and point each
   non-NULL one at an ImageCHW / OIHW copy (in *_buf) describing the same memory for the 1x1
   convolution (fully_connected.c). False with bp_set_error if one does not fit the layer. */
bool bp_fc_translate_gradients(const bp_filter *f, BNNSNDArrayDescriptor **in_delta, BNNSNDArrayDescriptor *in_buf,
                               const BNNSNDArrayDescriptor **out_delta, BNNSNDArrayDescriptor *out_buf,
                               BNNSNDArrayDescriptor **weights_delta, BNNSNDArrayDescriptor *weights_buf);

int bp_apply_backward(bp_filter *f, size_t batch, const float *in, size_t in_stride,
                      BNNSNDArrayDescriptor *in_delta, size_t in_delta_stride, const float *out, size_t out_stride,
                      const BNNSNDArrayDescriptor *out_delta, size_t out_delta_stride,
                      BNNSNDArrayDescriptor *weights_delta, BNNSNDArrayDescriptor *bias_delta);

#endif
