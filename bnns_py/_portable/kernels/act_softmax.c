/* Softmax and LogSoftmax over each pixel's channel vector, on whole vectors of pixels (or, for a
   single pixel with contiguous channels, e.g. a fully-connected output, of channels). */
#include <math.h>

#include "act_kernels.h"
#include "vfunc.h"

static float horizontal_max(bp_vec v) {
    float lanes[BP_VL];
    bp_vstore(lanes, v);
    float m = lanes[0];
    for (size_t i = 1; i < BP_VL; i++) m = lanes[i] > m ? lanes[i] : m;
    return m;
}

/* One pixel, channels contiguous. */
static void softmax_vector(bool log_softmax, float *v, size_t channels) {
    bp_vec vmax = bp_vset1(-INFINITY);
    size_t c = 0;
    for (; c + BP_VL <= channels; c += BP_VL) vmax = bp_vmax(vmax, bp_vload(v + c));
    float max = horizontal_max(vmax);
    for (; c < channels; c++) max = v[c] > max ? v[c] : max;
    const bp_vec m = bp_vset1(max);
    bp_vec vsum = bp_vzero();
    for (c = 0; c + BP_VL <= channels; c += BP_VL) {
        bp_vec e = bp_vexp(bp_vsub(bp_vload(v + c), m));
        vsum = bp_vadd(vsum, e);
        if (!log_softmax) bp_vstore(v + c, e);
    }
    if (c < channels) { /* lanes past the end are -inf, whose exp is 0 */
        float lanes[BP_VL];
        for (size_t i = 0; i < BP_VL; i++) lanes[i] = i < channels - c ? v[c + i] : -INFINITY;
        bp_vec e = bp_vexp(bp_vsub(bp_vload(lanes), m));
        vsum = bp_vadd(vsum, e);
        if (!log_softmax) bp_vstore_part(v + c, e, channels - c);
    }
    float sum = bp_vsum(vsum);
    if (log_softmax) {
        const bp_vec shift = bp_vset1(max + logf(sum));
        BP_VMAP(v, channels, x, bp_vsub(x, shift));
    } else {
        const bp_vec inv = bp_vset1(1.0f / sum);
        BP_VMAP(v, channels, x, bp_vmul(x, inv));
    }
}

/* Up to BP_VL pixels at p (count lanes), channels channel_stride apart. */
static void softmax_pixels(bool log_softmax, float *p, size_t channels, size_t channel_stride, size_t count) {
    bp_vec max = bp_vset1(-INFINITY), sum = bp_vzero();
    for (size_t c = 0; c < channels; c++) max = bp_vmax(max, bp_vload_part(p + c * channel_stride, count));
    for (size_t c = 0; c < channels; c++) {
        float *v = p + c * channel_stride;
        bp_vec e = bp_vexp(bp_vsub(bp_vload_part(v, count), max));
        sum = bp_vadd(sum, e);
        if (!log_softmax) bp_vstore_part(v, e, count);
    }
    if (log_softmax) {
        bp_vec shift = bp_vadd(max, bp_vlog(sum));
        for (size_t c = 0; c < channels; c++) {
            float *v = p + c * channel_stride;
            bp_vstore_part(v, bp_vsub(bp_vload_part(v, count), shift), count);
        }
    } else {
        bp_vec inv = bp_vdiv(bp_vset1(1.0f), sum);
        for (size_t c = 0; c < channels; c++) {
            float *v = p + c * channel_stride;
            bp_vstore_part(v, bp_vmul(bp_vload_part(v, count), inv), count);
        }
    }
}

void bp_act_softmax(bool log_softmax, float *data, size_t channels, size_t pixels, size_t channel_stride) {
    if (pixels == 1 && channel_stride == 1) {
        softmax_vector(log_softmax, data, channels);
        return;
    }
    for (size_t p = 0; p < pixels; p += BP_VL)
        softmax_pixels(log_softmax, data + p, channels, channel_stride, pixels - p < BP_VL ? pixels - p : BP_VL);
}
