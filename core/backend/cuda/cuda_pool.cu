/* Resampling kernels (float32, contiguous NCHW): nearest upsampling by integer
 * factors and average pooling, forward and backward, as backend/cpu/cpu_pool.c.
 *
 *   upsample:  out[p, y, x] = in[p, y / sh, x / sw]        (p = one (n, c) plane)
 *              dIn[p, i, j] = sum_{a < sh, b < sw} dOut[p, i sh + a, j sw + b]
 *   avg_pool:  out[p, y, x] = 1/(kh kw) sum_{a, b} in[p, y sh - ph + a, x sw - pw + b]
 *              (padding reads as 0 and counts in the divisor: count_include_pad,
 *              no divisor override; ceil_mode is off, so a window never leaves
 *              the padded image)
 *              dIn[p, i, j] = 1/(kh kw) sum over windows covering (i, j) of dOut[p, y, x]
 *
 * Every output element is one thread's float sum, taken in the CPU kernel's
 * order (rows, then columns) and scaled by the same float 1/(kh kw) at the end:
 * the results are the CPU's bits. The backwards gather (each grad_in element
 * sums the grad_out elements that read it) instead of scattering with atomics,
 * so they are deterministic. Indices are 64-bit: a batch of large images passes
 * 2^31 elements. */
#include "cuda_internal.cuh"

namespace {

constexpr int THREADS = 256;

#define DR_GRID_STRIDE(i, total)                                                      \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total);     \
         i += (int64_t)gridDim.x * blockDim.x)

__global__ void upsample_kernel(float *__restrict__ y, const float *__restrict__ x,
                                int64_t total, int64_t h, int64_t w, int64_t ho, int64_t wo,
                                int64_t sh, int64_t sw) {
    DR_GRID_STRIDE(i, total) {
        int64_t ox = i % wo, oy = (i / wo) % ho, plane = i / (wo * ho);
        y[i] = x[(plane * h + oy / sh) * w + ox / sw];
    }
}

/* One thread per grad_in element: its sh x sw block of grad_out, rows first. */
__global__ void upsample_backward_kernel(float *__restrict__ dx, const float *__restrict__ dy,
                                         int64_t total, int64_t h, int64_t w, int64_t ho,
                                         int64_t wo, int64_t sh, int64_t sw) {
    DR_GRID_STRIDE(i, total) {
        int64_t ix = i % w, iy = (i / w) % h, plane = i / (w * h);
        const float *src = dy + (plane * ho + iy * sh) * wo + ix * sw;
        float s = 0;
        for (int64_t a = 0; a < sh; a++)
            for (int64_t b = 0; b < sw; b++) s += src[a * wo + b];
        dx[i] = s;
    }
}

struct pool_params {
    int64_t h, w, ho, wo, kh, kw, sh, sw, ph, pw;
    float scale; /* 1/(kh kw) rounded to float once, as the CPU does */
};

__global__ void avg_pool_kernel(float *__restrict__ y, const float *__restrict__ x,
                                int64_t total, pool_params p) {
    DR_GRID_STRIDE(i, total) {
        int64_t ox = i % p.wo, oy = (i / p.wo) % p.ho, plane = i / (p.wo * p.ho);
        /* the window clipped to the image: padding adds zeros, which change no sum */
        int64_t y0 = oy * p.sh - p.ph, y1 = y0 + p.kh;
        int64_t x0 = ox * p.sw - p.pw, x1 = x0 + p.kw;
        if (y0 < 0) y0 = 0;
        if (y1 > p.h) y1 = p.h;
        if (x0 < 0) x0 = 0;
        if (x1 > p.w) x1 = p.w;
        const float *xp = x + plane * p.h * p.w;
        float s = 0;
        for (int64_t iy = y0; iy < y1; iy++)
            for (int64_t ix = x0; ix < x1; ix++) s += xp[iy * p.w + ix];
        y[i] = s * p.scale;
    }
}

/* One thread per grad_in element (i, j): the windows covering it are the output
 * rows oy with oy sh - ph <= i < oy sh - ph + kh, i.e.
 * ceil((i + ph - kh + 1) / sh) <= oy <= floor((i + ph) / sh), clipped to
 * [0, ho); columns likewise. */
__global__ void avg_pool_backward_kernel(float *__restrict__ dx, const float *__restrict__ dy,
                                         int64_t total, pool_params p) {
    DR_GRID_STRIDE(i, total) {
        int64_t ix = i % p.w, iy = (i / p.w) % p.h, plane = i / (p.w * p.h);
        int64_t oy0 = iy + p.ph - p.kh + 1 <= 0 ? 0 : (iy + p.ph - p.kh + 1 + p.sh - 1) / p.sh;
        int64_t oy1 = (iy + p.ph) / p.sh + 1;
        if (oy1 > p.ho) oy1 = p.ho;
        int64_t ox0 = ix + p.pw - p.kw + 1 <= 0 ? 0 : (ix + p.pw - p.kw + 1 + p.sw - 1) / p.sw;
        int64_t ox1 = (ix + p.pw) / p.sw + 1;
        if (ox1 > p.wo) ox1 = p.wo;
        const float *dyp = dy + plane * p.ho * p.wo;
        float s = 0;
        for (int64_t oy = oy0; oy < oy1; oy++)
            for (int64_t ox = ox0; ox < ox1; ox++) s += dyp[oy * p.wo + ox];
        dx[i] = s * p.scale;
    }
}

pool_params make_pool(const int64_t *small, const int64_t *big, const int64_t *kernel,
                      const int64_t *stride, const int64_t *padding) {
    pool_params p;
    p.h = small[2], p.w = small[3], p.ho = big[2], p.wo = big[3];
    p.kh = kernel[0], p.kw = kernel[1], p.sh = stride[0], p.sw = stride[1];
    p.ph = padding[0], p.pw = padding[1];
    p.scale = 1.0f / (float)(kernel[0] * kernel[1]);
    return p;
}

} // namespace

dr_status dr_cuda_upsample_nearest2d(dr_tensor *out, const dr_tensor *in) {
    const char *op = "upsample_nearest2d";
    cudaStream_t s = dr_cuda_stream_of(out, op);
    if (!s) return DR_ERR_DEVICE;
    int64_t h = in->sizes[2], w = in->sizes[3], ho = out->sizes[2], wo = out->sizes[3];
    int64_t total = dr_tensor_numel(out);
    if (total == 0 || h == 0 || w == 0) return DR_OK;
    upsample_kernel<<<dr_cuda_blocks(total, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(out), dr_cuda_ptr<float>(in), total, h, w, ho, wo, ho / h, wo / w);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

dr_status dr_cuda_upsample_nearest2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out) {
    const char *op = "upsample_nearest2d_backward";
    cudaStream_t s = dr_cuda_stream_of(grad_in, op);
    if (!s) return DR_ERR_DEVICE;
    int64_t h = grad_in->sizes[2], w = grad_in->sizes[3];
    int64_t ho = grad_out->sizes[2], wo = grad_out->sizes[3];
    int64_t total = dr_tensor_numel(grad_in);
    if (total == 0) return DR_OK;
    upsample_backward_kernel<<<dr_cuda_blocks(total, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(grad_in), dr_cuda_ptr<float>(grad_out), total, h, w, ho, wo, ho / h,
        wo / w);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

dr_status dr_cuda_avg_pool2d(dr_tensor *out, const dr_tensor *in, const int64_t *kernel,
                             const int64_t *stride, const int64_t *padding) {
    const char *op = "avg_pool2d";
    cudaStream_t s = dr_cuda_stream_of(out, op);
    if (!s) return DR_ERR_DEVICE;
    int64_t total = dr_tensor_numel(out);
    if (total == 0) return DR_OK;
    pool_params p = make_pool(in->sizes, out->sizes, kernel, stride, padding);
    avg_pool_kernel<<<dr_cuda_blocks(total, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(out), dr_cuda_ptr<float>(in), total, p);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

dr_status dr_cuda_avg_pool2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out,
                                      const int64_t *kernel, const int64_t *stride,
                                      const int64_t *padding) {
    const char *op = "avg_pool2d_backward";
    cudaStream_t s = dr_cuda_stream_of(grad_in, op);
    if (!s) return DR_ERR_DEVICE;
    int64_t total = dr_tensor_numel(grad_in);
    if (total == 0) return DR_OK;
    pool_params p = make_pool(grad_in->sizes, grad_out->sizes, kernel, stride, padding);
    avg_pool_backward_kernel<<<dr_cuda_blocks(total, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(grad_in), dr_cuda_ptr<float>(grad_out), total, p);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}
