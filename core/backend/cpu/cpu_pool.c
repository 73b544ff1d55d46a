/* Resampling kernels (float32, contiguous NCHW): nearest upsampling by integer
 * factors and average pooling, forward and backward.
 *
 *   upsample:  out[p, y, x] = in[p, y / sh, x / sw]        (p = one (n, c) plane)
 *              dIn[p, i, j] = sum_{a < sh, b < sw} dOut[p, i sh + a, j sw + b]
 *   avg_pool:  out[p, y, x] = 1/(kh kw) sum_{a < kh, b < kw} in[p, y sh - ph + a, x sw - pw + b]
 *              (padding reads as 0 and counts in the divisor; the window never
 *              leaves the padded image since ceil_mode is off)
 *              dIn[p, i, j] = sum over windows covering (i, j) of dOut[p, y, x] / (kh kw)
 * Planes or output rows are split over threads; each output element is written by
 * one thread in a fixed order, so results do not depend on the thread count. */
#include <string.h>

#include "cpu_internal.h"

dr_status dr_cpu_upsample_nearest2d(dr_tensor *out, const dr_tensor *in) {
    int64_t h = in->sizes[2], w = in->sizes[3], ho = out->sizes[2], wo = out->sizes[3];
    int64_t rows = in->sizes[0] * in->sizes[1] * h; /* input rows; each makes sh output rows */
    if (rows == 0 || w == 0) return DR_OK;
    int64_t sh = ho / h, sw = wo / w;
    const float *x = dr_tensor_data(in);
    float *y = dr_tensor_data(out);
#pragma omp parallel for schedule(static) if (rows * sh * wo > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *src = x + r * w;
        float *dst = y + r * sh * wo;
        if (sw == 1) memcpy(dst, src, (size_t)w * sizeof(float));
        else if (sw == 2)
            for (int64_t ix = 0; ix < w; ix++) dst[2 * ix] = dst[2 * ix + 1] = src[ix];
        else
            for (int64_t ox = 0; ox < wo; ox++) dst[ox] = src[ox / sw];
        for (int64_t a = 1; a < sh; a++) memcpy(dst + a * wo, dst, (size_t)wo * sizeof(float));
    }
    return DR_OK;
}

dr_status dr_cpu_upsample_nearest2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out) {
    int64_t h = grad_in->sizes[2], w = grad_in->sizes[3];
    int64_t ho = grad_out->sizes[2], wo = grad_out->sizes[3];
    int64_t rows = grad_in->sizes[0] * grad_in->sizes[1] * h;
    if (rows == 0 || w == 0) return DR_OK;
    int64_t sh = ho / h, sw = wo / w;
    const float *dy = dr_tensor_data(grad_out);
    float *dx = dr_tensor_data(grad_in);
#pragma omp parallel for schedule(static) if (rows * sh * wo > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t plane = r / h, iy = r % h;
        float *dst = dx + r * w;
        for (int64_t ix = 0; ix < w; ix++) dst[ix] = 0;
        for (int64_t a = 0; a < sh; a++) {
            const float *src = dy + (plane * ho + iy * sh + a) * wo;
            for (int64_t ix = 0; ix < w; ix++) {
                float s = dst[ix];
                for (int64_t b = 0; b < sw; b++) s += src[ix * sw + b];
                dst[ix] = s;
            }
        }
    }
    return DR_OK;
}

dr_status dr_cpu_avg_pool2d(dr_tensor *out, const dr_tensor *in, const int64_t *kernel,
                            const int64_t *stride, const int64_t *padding) {
    int64_t h = in->sizes[2], w = in->sizes[3], ho = out->sizes[2], wo = out->sizes[3];
    int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1];
    int64_t ph = padding[0], pw = padding[1];
    int64_t rows = out->sizes[0] * out->sizes[1] * ho;
    if (rows == 0 || wo == 0) return DR_OK;
    const float *x = dr_tensor_data(in);
    float *y = dr_tensor_data(out);
    float scale = 1.0f / (float)(kh * kw);
#pragma omp parallel for schedule(static) if (rows * wo * kh * kw > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t plane = r / ho, oy = r % ho;
        int64_t y0 = oy * sh - ph, y1 = y0 + kh;
        if (y0 < 0) y0 = 0;
        if (y1 > h) y1 = h;
        const float *xp = x + plane * h * w;
        for (int64_t ox = 0; ox < wo; ox++) {
            int64_t x0 = ox * sw - pw, x1 = x0 + kw;
            if (x0 < 0) x0 = 0;
            if (x1 > w) x1 = w;
            float s = 0;
            for (int64_t iy = y0; iy < y1; iy++)
                for (int64_t ix = x0; ix < x1; ix++) s += xp[iy * w + ix];
            y[r * wo + ox] = s * scale;
        }
    }
    return DR_OK;
}

/* Gathers, per input row, the windows that cover it: each grad_in element is
 * written once, by one thread. */
dr_status dr_cpu_avg_pool2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out,
                                     const int64_t *kernel, const int64_t *stride,
                                     const int64_t *padding) {
    int64_t h = grad_in->sizes[2], w = grad_in->sizes[3];
    int64_t ho = grad_out->sizes[2], wo = grad_out->sizes[3];
    int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1];
    int64_t ph = padding[0], pw = padding[1];
    int64_t rows = grad_in->sizes[0] * grad_in->sizes[1] * h;
    if (rows == 0 || w == 0) return DR_OK;
    const float *dy = dr_tensor_data(grad_out);
    float *dx = dr_tensor_data(grad_in);
    float scale = 1.0f / (float)(kh * kw);
#pragma omp parallel for schedule(static) if (rows * w * kh * kw > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t plane = r / h, iy = r % h;
        /* output rows oy with oy sh - ph <= iy < oy sh - ph + kh */
        int64_t oy0 = iy + ph - kh + 1 <= 0 ? 0 : (iy + ph - kh + 1 + sh - 1) / sh;
        int64_t oy1 = (iy + ph) / sh + 1;
        if (oy1 > ho) oy1 = ho;
        const float *dyp = dy + plane * ho * wo;
        for (int64_t ix = 0; ix < w; ix++) {
            int64_t ox0 = ix + pw - kw + 1 <= 0 ? 0 : (ix + pw - kw + 1 + sw - 1) / sw;
            int64_t ox1 = (ix + pw) / sw + 1;
            if (ox1 > wo) ox1 = wo;
            float s = 0;
            for (int64_t oy = oy0; oy < oy1; oy++)
                for (int64_t ox = ox0; ox < ox1; ox++) s += dyp[oy * wo + ox];
            dx[r * w + ix] = s * scale;
        }
    }
    return DR_OK;
}
