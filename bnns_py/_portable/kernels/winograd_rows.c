/* Winograd's input tile rows: the input rows under a tile row split into the columns of the tiles'
   even and odd taps (winograd.h). */
#include "simd.h"
#include "winograd.h"

/* One input row (columns sx apart, w of them): e[i] its column x0 + 2 d i, o[i] the column d
   further, zero outside the row, i in [0, n). */
static void split_row(const float *row, size_t sx, ptrdiff_t d, ptrdiff_t x0, ptrdiff_t w, ptrdiff_t n, float *e,
                      float *o) {
#if defined(__AVX512F__)
    if (sx == 1 && d == 1) { /* 32 columns at a time, masked to the image, split in two */
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        for (ptrdiff_t i = 0; i < n; i += 16) {
            ptrdiff_t c0 = x0 + 2 * i, lo_lane = c0 < 0 ? -c0 : 0, hi_lane = w - c0; /* lanes inside */
            if (hi_lane > 32) hi_lane = 32;
            __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
            if (lo_lane < hi_lane) {
                uint32_t keep = (uint32_t)((hi_lane >= 32 ? 0xFFFFFFFFu : (1u << hi_lane) - 1u) &
                                           ~((1u << lo_lane) - 1u));
                /* the address of column c0, which may lie before the row: only kept lanes are read */
                const float *at = (const float *)((uintptr_t)row + (uintptr_t)(c0 * (ptrdiff_t)sizeof(float)));
                lo = _mm512_maskz_loadu_ps((__mmask16)(keep & 0xFFFF), at);
                hi = _mm512_maskz_loadu_ps((__mmask16)(keep >> 16), (const float *)((uintptr_t)at + 64));
            }
            _mm512_storeu_ps(e + i, _mm512_permutex2var_ps(lo, even, hi));
            _mm512_storeu_ps(o + i, _mm512_permutex2var_ps(lo, odd, hi));
        }
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < n; i++) {
        ptrdiff_t ce = x0 + 2 * d * i, co = ce + d;
        e[i] = ce >= 0 && ce < w ? row[(size_t)ce * sx] : 0.0f;
        o[i] = co >= 0 && co < w ? row[(size_t)co * sx] : 0.0f;
    }
}

/* The 4 input rows under tile row ty of output phase (a, b) of one channel, each split into the
   columns of the tiles' even (e) and odd (o) taps: with d the dilation, row r is input row
   d * (2 ty + r) + a - pt, e[i] its column d * 2i + b - pl and o[i] the column d further, zero
   outside the image, i in [0, tw]. */
void bp_winograd_tile_row_inputs(const bp_geom *g, size_t tw, size_t ld, const bp_image *img,
                                  const float *plane, size_t ty, size_t a, size_t b, float *e, float *o) {
    ptrdiff_t n = (ptrdiff_t)tw + 1, w = (ptrdiff_t)g->in_w, d = (ptrdiff_t)g->dx;
    ptrdiff_t x0 = (ptrdiff_t)b - (ptrdiff_t)g->pl; /* column of e[0] */
    for (size_t r = 0; r < 4; r++) {
        float *er = e + r * ld, *or_ = o + r * ld;
        ptrdiff_t iy = d * (ptrdiff_t)(2 * ty + r) + (ptrdiff_t)a - (ptrdiff_t)g->pt;
        if (iy < 0 || iy >= (ptrdiff_t)g->in_h) {
            for (ptrdiff_t i = 0; i < n; i++) er[i] = or_[i] = 0.0f;
            continue;
        }
        split_row(plane + (size_t)iy * img->sy, img->sx, d, x0, w, n, er, or_);
    }
}
