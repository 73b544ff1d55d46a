/* Optimizer updates on CUDA: in place on contiguous float32, one fused pass per
 * parameter (the math is core/ops/optim.c's; hyper holds what it precomputes).
 *
 * Every product and sum is an explicitly rounded intrinsic (__fmul_rn,
 * __fadd_rn, ...) in the CPU's evaluation order: nvcc would otherwise contract
 * a*b + c into an FMA, which the CPU kernels (baseline x86-64, no FMA) never do,
 * and parameters would drift from the CPU's by an ulp per step. With the same
 * order and rounding the updates are bit-identical to cpu_optim.c (sqrtf and
 * division are IEEE-exact without --use_fast_math).
 *
 * sum_squares adds the squares in double in a fixed tree (per-thread strided
 * sums, a block tree, one final block), so the result depends only on the
 * tensor's size, never on timing; it is not the CPU's sequential order, so it
 * can differ from the CPU's value in the last bits of the double. */
#include "cuda_elementwise.cuh"

namespace {

const int THREADS = DR_CUDA_EW_THREADS;


/* m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
 * p <- p decay - step_size m / (sqrt(v) / sqrt(bc2) + eps) */
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, int64_t n, float decay,
                             float b1, float b2, float one_b1, float one_b2, float step_size,
                             float inv_sqrt_bc2, float eps) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(one_b1, gi));
        float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(one_b2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        float denom = __fadd_rn(__fmul_rn(sqrtf(vi), inv_sqrt_bc2), eps);
        p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fdiv_rn(__fmul_rn(step_size, mi), denom));
    }
}

/* d = g + wd p; with a buffer: buf = d (first step) or mom buf + (1-damp) d,
 * d = nesterov ? d + mom buf : buf; p <- p - lr d. */
__global__ void sgd_kernel(float *p, const float *g, float *buf, int64_t n, float lr, float mom,
                           float one_damp, float wd, int nesterov, int first) {
    GRID_STRIDE(i, n) {
        float d = __fadd_rn(g[i], __fmul_rn(wd, p[i]));
        if (buf) {
            float bi = first ? d : __fadd_rn(__fmul_rn(mom, buf[i]), __fmul_rn(one_damp, d));
            buf[i] = bi;
            d = nesterov ? __fadd_rn(d, __fmul_rn(mom, bi)) : bi;
        }
        p[i] = __fsub_rn(p[i], __fmul_rn(lr, d));
    }
}

__global__ void lerp_kernel(float *s, const float *e, int64_t n, float w) {
    GRID_STRIDE(i, n) {
        float si = s[i];
        s[i] = __fadd_rn(si, __fmul_rn(w, __fsub_rn(e[i], si)));
    }
}

__global__ void scale_kernel(float *p, int64_t n, float k) {
    GRID_STRIDE(i, n) p[i] = __fmul_rn(p[i], k);
}

/* ---- sum of squares -------------------------------------------------------- */

const int SUMSQ_MAX_BLOCKS = 1024;

/* Tree sum of the block's values in shared memory, in a fixed pairing. */
__device__ __forceinline__ double block_tree_sum(double v, double *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
        __syncthreads();
    }
    return sh[0];
}

/* Block b's partial: each thread sums x^2 over its grid-stride elements, then the
 * block's tree. x^2 of a float is exact in double, so it is the same with or
 * without an FMA. */
__global__ void sumsq_partial_kernel(const float *x, int64_t n, double *part) {
    __shared__ double sh[THREADS];
    double s = 0;
    GRID_STRIDE(i, n) {
        double v = x[i];
        s += v * v;
    }
    double total = block_tree_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = total;
}

/* One block: the partials in a fixed order, the result in part[nparts]. */
__global__ void sumsq_final_kernel(double *part, int nparts) {
    __shared__ double sh[THREADS];
    double s = 0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
    double total = block_tree_sum(s, sh);
    if (threadIdx.x == 0) part[nparts] = total;
}

} // namespace

extern "C" dr_status dr_cuda_adamw(dr_tensor *param, const dr_tensor *grad, dr_tensor *exp_avg,
                                   dr_tensor *exp_avg_sq, const double *hyper) {
    int64_t n = dr_tensor_numel(param);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(param, "adamw");
    if (!s) return DR_ERR_DEVICE;
    /* hyper: decay factor, b1, b2, step size, 1/sqrt(bc2), eps (ops/optim.c); the
     * 1 - b terms in float, as the CPU forms them */
    const float decay = (float)hyper[0], b1 = (float)hyper[1], b2 = (float)hyper[2];
    adamw_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(param), dr_cuda_ptr<float>(grad), dr_cuda_ptr<float>(exp_avg),
        dr_cuda_ptr<float>(exp_avg_sq), n, decay, b1, b2, 1.0f - b1, 1.0f - b2, (float)hyper[3],
        (float)hyper[4], (float)hyper[5]);
    DR_CUDA_LAUNCHED("adamw");
    return DR_OK;
}

extern "C" dr_status dr_cuda_sgd(dr_tensor *param, const dr_tensor *grad, dr_tensor *buf,
                                 const double *hyper) {
    int64_t n = dr_tensor_numel(param);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(param, "sgd");
    if (!s) return DR_ERR_DEVICE;
    /* hyper: lr, momentum, dampening, weight decay, nesterov, first step */
    const float damp = (float)hyper[2];
    sgd_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(param), dr_cuda_ptr<float>(grad), buf ? dr_cuda_ptr<float>(buf) : nullptr,
        n, (float)hyper[0], (float)hyper[1], 1.0f - damp, (float)hyper[3], hyper[4] != 0,
        hyper[5] != 0);
    DR_CUDA_LAUNCHED("sgd");
    return DR_OK;
}

extern "C" dr_status dr_cuda_lerp(dr_tensor *self, const dr_tensor *end, double weight) {
    int64_t n = dr_tensor_numel(self);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(self, "lerp_");
    if (!s) return DR_ERR_DEVICE;
    lerp_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(self), dr_cuda_ptr<float>(end), n, (float)weight);
    DR_CUDA_LAUNCHED("lerp_");
    return DR_OK;
}

extern "C" dr_status dr_cuda_scale(dr_tensor *self, double k) {
    int64_t n = dr_tensor_numel(self);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(self, "mul_");
    if (!s) return DR_ERR_DEVICE;
    scale_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(dr_cuda_ptr<float>(self), n,
                                                                  (float)k);
    DR_CUDA_LAUNCHED("mul_");
    return DR_OK;
}

extern "C" dr_status dr_cuda_sum_squares(const dr_tensor *t, double *out) {
    const char *op = "sum_squares";
    *out = 0;
    int64_t n = dr_tensor_numel(t);
    if (n == 0) return DR_OK;
    int32_t dev = t->device.index;
    cudaStream_t s = dr_cuda_stream_of(t, op);
    if (!s) return DR_ERR_DEVICE;
    /* the grid depends on n alone, so the summation tree (and the bits) does too */
    int64_t want = (n + 4 * THREADS - 1) / (4 * THREADS);
    int nparts = (int)(want < SUMSQ_MAX_BLOCKS ? want : SUMSQ_MAX_BLOCKS);
    size_t nbytes = (size_t)(nparts + 1) * sizeof(double);
    void *scratch = nullptr;
    DR_TRY(dr_cuda_scratch(dev, nbytes, &scratch));
    double *part = (double *)scratch;
    sumsq_partial_kernel<<<nparts, THREADS, 0, s>>>(dr_cuda_ptr<float>(t), n, part);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) {
        sumsq_final_kernel<<<1, THREADS, 0, s>>>(part, nparts);
        e = cudaGetLastError();
    }
    double result = 0;
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(&result, part + nparts, sizeof(double), cudaMemcpyDeviceToHost, s);
    if (e != cudaSuccess) {
        dr_cuda_scratch_free(dev, scratch, nbytes);
        return dr_cuda_fail(e, op, "reducing the squares");
    }
    dr_status st = dr_cuda_sync(dev, op); /* the host reads result next */
    dr_cuda_scratch_free(dev, scratch, nbytes);
    if (st != DR_OK) return st;
    *out = result;
    return DR_OK;
}
