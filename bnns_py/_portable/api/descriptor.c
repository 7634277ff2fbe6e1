/* Reading BNNSNDArrayDescriptor sizes and strides: BNNS's packed-stride rule and overlap checks. */
#include <string.h>

#include "internal.h"

bool bp_resolve_strides(const BNNSNDArrayDescriptor *d, size_t rank, const char *name, size_t stride_out[8],
                        size_t *extent) {
    size_t last = 0;
    for (size_t k = 0; k < rank; k++) {
        size_t stride = d->stride[k];
        if (d->size[k] == 0) {
            bp_set_error("%s size[%zu] is 0", name, k);
            return false;
        }
        if (stride == 0) {
            if (k == 0) stride = 1;
            else if (!bp_mul(d->size[k - 1], stride_out[k - 1], &stride)) goto overflow;
        }
        stride_out[k] = stride;
        size_t span;
        if (!bp_mul(d->size[k] - 1, stride, &span) || !bp_add(last, span, &last)) goto overflow;
    }
    if (!bp_add(last, 1, extent)) goto overflow;
    /* No two elements may share memory: the axes taken from the smallest stride up (any order,
       e.g. a transposed array), each must step over everything the smaller ones span. */
    size_t order[8];
    for (size_t k = 0; k < rank; k++) {
        size_t at = k;
        while (at > 0 && stride_out[order[at - 1]] > stride_out[k]) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = k;
    }
    size_t spanned = 0; /* the largest offset of the axes so far */
    for (size_t i = 0; i < rank; i++) {
        size_t k = order[i], span;
        if (d->size[k] == 1) continue;
        if (stride_out[k] <= spanned) {
            bp_set_error("%s stride[%zu]=%zu overlaps: the axes with smaller strides span %zu values", name, k,
                         stride_out[k], spanned + 1);
            return false;
        }
        if (!bp_mul(d->size[k] - 1, stride_out[k], &span) || !bp_add(spanned, span, &spanned)) goto overflow;
    }
    /* every index must also fit in a signed 64-bit offset and a byte count */
    size_t bytes;
    if (!bp_mul(*extent, sizeof(float) * 2, &bytes) || bytes > (size_t)INT64_MAX) goto overflow;
    return true;
overflow:
    bp_set_error("%s size overflow: its sizes and strides exceed the address space", name);
    return false;
}

bool bp_image_from_desc(const BNNSNDArrayDescriptor *d, const char *name, bp_image *img) {
    if (d->layout != BNNSDataLayoutImageCHW) {
        bp_set_error("%s layout 0x%x is not ImageCHW (0x%x)", name, d->layout, BNNSDataLayoutImageCHW);
        return false;
    }
    if (d->data_type != BNNSDataTypeFloat32) {
        bp_set_error("%s data type 0x%x not supported by the portable backend yet (Float32 only)", name, d->data_type);
        return false;
    }
    size_t strides[8];
    if (!bp_resolve_strides(d, 3, name, strides, &img->extent)) return false;
    img->w = d->size[0];
    img->h = d->size[1];
    img->c = d->size[2];
    img->sx = strides[0];
    img->sy = strides[1];
    img->sc = strides[2];
    img->item = img->sc * img->c;
    img->packed = img->sx == 1 && img->sy == img->w && img->sc == img->w * img->h;
    return true;
}

bp_image bp_packed_like(const bp_image *img) {
    bp_image p = *img;
    p.sx = 1;
    p.sy = img->w;
    p.sc = img->w * img->h;
    p.extent = p.item = p.sc * img->c;
    p.packed = true;
    return p;
}

void bp_copy_image(const bp_image *from, const float *src, const bp_image *to, float *dst, bool accumulate) {
    for (size_t c = 0; c < from->c; c++)
        for (size_t y = 0; y < from->h; y++) {
            const float *s = src + c * from->sc + y * from->sy;
            float *d = dst + c * to->sc + y * to->sy;
            if (accumulate) {
                for (size_t x = 0; x < from->w; x++) d[x * to->sx] += s[x * from->sx];
            } else if (from->sx == 1 && to->sx == 1) {
                memcpy(d, s, from->w * sizeof(float));
            } else {
                for (size_t x = 0; x < from->w; x++) d[x * to->sx] = s[x * from->sx];
            }
        }
}
