/* The tiny-layer kernel of the convolution engine (conv_kernels.h; conv_engine.c decides which layers
   take it): rows of at most 8 outputs straight from the padded planes, one vector per output row
   and up to 8 rows at a time, with no column matrix and no GEMM call, whose fixed costs would
   dominate. Lanes past out_w read padding or the scratch's slack and are not stored. */
#include <string.h>

#include "conv_kernels.h"
#include "simd.h"

/* Eight floats as one value (GCC and Clang vector extension; lowered to whatever SIMD the target
   has, or to scalars), so the tiny-layer kernel keeps its accumulators in registers. */
typedef float bp_v8 __attribute__((vector_size(32)));

/* The first n of 8 values to dst (the tiny-layer kernel's rows of at most 8 outputs). */
static inline void store_part(float *dst, const bp_v8 *v, size_t n) {
    if (n >= 8) {
        memcpy(dst, v, sizeof *v);
        return;
    }
#if defined(__AVX2__)
    static const int32_t ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    __m256i lanes = _mm256_loadu_si256((const __m256i *)ramp);
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lanes);
    __m256 value;
    memcpy(&value, v, sizeof value);
    _mm256_maskstore_ps(dst, mask, value);
#else
    for (size_t i = 0; i < n; i++) dst[i] = (*v)[i];
#endif
}

/* Rows 8 at a time with 32 vector registers, 4 with 16. */
#if defined(__AVX512VL__)
enum { SMALL_ACCUMULATORS = 16 };
#else
enum { SMALL_ACCUMULATORS = 8 };
#endif

/* M output channels of R rows at once: each input vector loaded feeds M accumulators. */
static inline __attribute__((always_inline)) void small_rows(const bp_geom *g, const float *pad, const float *wo,
                                                             const float *bias, size_t y0, float *out, const int M,
                                                             const int R) {
    size_t ow = g->out_w, ohw = g->out_h * g->out_w, ph = g->out_h + (g->kh - 1) * g->dy, pw = ow + (g->kw - 1) * g->dx;
    bp_v8 acc[2][8];
    for (int m = 0; m < M; m++) {
        bp_v8 start = {bias[m], bias[m], bias[m], bias[m], bias[m], bias[m], bias[m], bias[m]};
        for (int r = 0; r < R; r++) acc[m][r] = start;
    }
    size_t k = g->k, t = 0;
    for (size_t ci = 0; ci < g->in_cg; ci++)
        for (size_t ky = 0; ky < g->kh; ky++) {
            const float *row = pad + ci * ph * pw + (y0 + ky * g->dy) * pw;
            for (size_t kx = 0; kx < g->kw; kx++, t++) {
                const float *src = row + kx * g->dx;
                for (int r = 0; r < R; r++) {
                    bp_v8 v;
                    memcpy(&v, src + (size_t)r * pw, sizeof v);
#if defined(__AVX__)
                    if (M > 1) __asm__("" : "+x"(v)); /* one load for all M, not one folded into each FMA */
#endif
                    for (int m = 0; m < M; m++) acc[m][r] += wo[(size_t)m * k + t] * v;
                }
            }
        }
    for (int m = 0; m < M; m++)
        for (int r = 0; r < R; r++) store_part(out + (size_t)m * ohw + (y0 + (size_t)r) * ow, &acc[m][r], ow);
}

static inline __attribute__((always_inline)) void small_planes(const bp_geom *g, const float *pad, const float *wo,
                                                               const float *bias, float *out, const int M) {
    size_t y = 0;
    if (M * 8 <= SMALL_ACCUMULATORS)
        for (; y + 8 <= g->out_h; y += 8) small_rows(g, pad, wo, bias, y, out, M, 8);
    for (; y + 4 <= g->out_h; y += 4) small_rows(g, pad, wo, bias, y, out, M, 4);
    for (; y < g->out_h; y++) small_rows(g, pad, wo, bias, y, out, M, 1);
}

void bp_tiny_plane_pair(const bp_geom *g, const float *pad, const float *wo, const float *bias, float *out) {
    small_planes(g, pad, wo, bias, out, 2);
}

void bp_tiny_plane(const bp_geom *g, const float *pad, const float *wo, const float *bias, float *out) {
    small_planes(g, pad, wo, bias, out, 1);
}
