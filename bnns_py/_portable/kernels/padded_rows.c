/* The convolution engine's padded rows of one vector each (conv_kernels.h). */
#include "conv_kernels.h"
#include "simd.h"

#if defined(__AVX512F__)
bool bp_fill_short_padded_rows(const bp_geom *g, const bp_image *img, const float *x, size_t c0, float *pad) {
    size_t ph = g->out_h + (g->kh - 1) * g->dy, pw = g->out_w + (g->kw - 1) * g->dx;
    if (img->sx != 1 || pw > 16) return false;
    size_t x0 = bp_min(g->pl, pw), x1 = bp_min(g->pl + g->in_w, pw), n = x1 > x0 ? x1 - x0 : 0;
    /* each padded row in one store: its values in place, zeros around */
    __mmask16 row_mask = (__mmask16)((1u << pw) - 1u), data = (__mmask16)(((1u << n) - 1u) << x0);
    for (size_t ci = 0; ci < g->in_cg; ci++)
        for (size_t py = 0; py < ph; py++) {
            __m512 v = _mm512_setzero_ps();
            if (n > 0 && py >= g->pt && py - g->pt < g->in_h)
                v = _mm512_maskz_expandloadu_ps(data, x + (c0 + ci) * img->sc + (py - g->pt) * img->sy);
            _mm512_mask_storeu_ps(pad + (ci * ph + py) * pw, row_mask, v);
        }
    return true;
}
#else
bool bp_fill_short_padded_rows(const bp_geom *g, const bp_image *img, const float *x, size_t c0, float *pad) {
    (void)g, (void)img, (void)x, (void)c0, (void)pad;
    return false;
}
#endif
