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

/* ---- backward: dz = y (dz - sum_c dz y) for Softmax, dz - e^y sum_c dz for LogSoftmax, dz holding
   dy on entry ---- */

/* count (<= BP_VL) values of y, stride apart (other lanes zero) */
static bp_vec load_strided(const float *y, size_t stride, size_t count) {
    if (stride == 1) return bp_vload_part(y, count);
    float lanes[BP_VL] = {0};
    for (size_t i = 0; i < count; i++) lanes[i] = y[i * stride];
    return bp_vload(lanes);
}

static bp_vec softmax_gradient(bool log_softmax, bp_vec y, bp_vec dy, bp_vec sum) {
    return log_softmax ? bp_vfnma(bp_vexp(y), sum, dy) : bp_vmul(y, bp_vsub(dy, sum));
}

/* One pixel, channels contiguous in y and dz. */
static void softmax_backward_vector(bool log_softmax, const float *y, float *dz, size_t channels) {
    bp_vec vsum = bp_vzero();
    for (size_t c = 0; c < channels; c += BP_VL) {
        size_t count = channels - c < BP_VL ? channels - c : BP_VL;
        bp_vec dy = bp_vload_part(dz + c, count);
        vsum = log_softmax ? bp_vadd(vsum, dy) : bp_vfma(dy, bp_vload_part(y + c, count), vsum);
    }
    const bp_vec sum = bp_vset1(bp_vsum(vsum));
    for (size_t c = 0; c < channels; c += BP_VL) {
        size_t count = channels - c < BP_VL ? channels - c : BP_VL;
        bp_vec g = softmax_gradient(log_softmax, bp_vload_part(y + c, count), bp_vload_part(dz + c, count), sum);
        bp_vstore_part(dz + c, g, count);
    }
}

/* Up to BP_VL pixels (count lanes): y's pixels y_sx apart, dz's contiguous. */
static void softmax_backward_pixels(bool log_softmax, const float *y, size_t y_sc, size_t y_sx, float *dz,
                                    size_t dz_sc, size_t channels, size_t count) {
    bp_vec sum = bp_vzero();
    for (size_t c = 0; c < channels; c++) {
        bp_vec dy = bp_vload_part(dz + c * dz_sc, count);
        sum = log_softmax ? bp_vadd(sum, dy) : bp_vfma(dy, load_strided(y + c * y_sc, y_sx, count), sum);
    }
    for (size_t c = 0; c < channels; c++) {
        float *d = dz + c * dz_sc;
        bp_vec g = softmax_gradient(log_softmax, load_strided(y + c * y_sc, y_sx, count), bp_vload_part(d, count), sum);
        bp_vstore_part(d, g, count);
    }
}

void bp_act_softmax_backward(bool log_softmax, const float *y, size_t y_sc, size_t y_sx, float *dz, size_t dz_sc,
                             size_t channels, size_t pixels) {
    if (pixels == 1 && y_sc == 1 && dz_sc == 1) {
        softmax_backward_vector(log_softmax, y, dz, channels);
        return;
    }
    for (size_t p = 0; p < pixels; p += BP_VL)
        softmax_backward_pixels(log_softmax, y + p * y_sx, y_sc, y_sx, dz + p, dz_sc, channels,
                                pixels - p < BP_VL ? pixels - p : BP_VL);
}
