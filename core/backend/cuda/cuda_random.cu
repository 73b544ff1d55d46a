/* Philox kernels (random, randint, dropout_mask) and fill_range on CUDA.
 *
 * The streams must equal the CPU's bit for bit (cpu_random.c,
 * cpu_random_more.c): one thread per Philox block, element i from lane i%4 of
 * block offset + i/4 (randint with a range above 2^32: lanes 2(i%2), 2(i%2)+1 of
 * block offset + i/2). util/philox.h is shared with the CPU. Box-Muller runs in
 * double like the CPU; CUDA's double log/sin/cos are within 1-2 ulp of glibc's,
 * so after the rounding to float a value can differ only when the double lands
 * within a few ulp of a float rounding boundary (odds about 2^-28 per value).
 *
 * fill_range writes a + b*i with explicitly rounded operations (__dmul_rn,
 * __dadd_rn, ...): nvcc would otherwise fuse them into an FMA, which the CPU
 * (built for baseline x86-64, no FMA) does not, and the last bit would differ. */
#include "cuda_elementwise.cuh"
#include "../../util/philox.h"
extern "C" {
#include "../../util/scalar.h"
}

namespace {

const int THREADS = DR_CUDA_EW_THREADS;

/* u1 in (0, 1] so log(u1) is finite; the same operations as cpu_random.c. */
__device__ __forceinline__ void box_muller(uint32_t x0, uint32_t x1, float *z0, float *z1) {
    double u1 = ((double)(x0 >> 8) + 1.0) * 0x1.0p-24;
    double u2 = (double)(x1 >> 8) * 0x1.0p-24;
    double r = sqrt(-2.0 * log(u1));
    double theta = 6.283185307179586476925 * u2;
    *z0 = (float)(r * cos(theta));
    *z1 = (float)(r * sin(theta));
}

__global__ void random_kernel(float *o, int64_t n, int normal, uint64_t seed, uint64_t offset,
                              uint32_t bits) {
    int64_t nblocks = (n + 3) / 4;
    for (int64_t blk = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; blk < nblocks;
         blk += (int64_t)gridDim.x * blockDim.x) {
        uint32_t x[4];
        float v[4];
        dr_philox_block(offset + (uint64_t)blk, seed, x);
        if (normal) {
            box_muller(x[0], x[1], &v[0], &v[1]);
            box_muller(x[2], x[3], &v[2], &v[3]);
        } else {
            for (int l = 0; l < 4; l++) v[l] = dr_philox_uniform(x[l], bits);
        }
        int64_t i0 = blk * 4;
        for (int l = 0; l < 4 && i0 + l < n; l++) o[i0 + l] = v[l];
    }
}

/* Lemire's multiply-shift: floor(x * range / 2^32) or, for wide ranges, the
 * high 64 bits of the 64x64 product (__umul64hi is the CPU's 128-bit product). */
__global__ void randint_kernel(int64_t *o, int64_t n, int64_t low, uint64_t range, int wide,
                               uint64_t seed, uint64_t offset) {
    int per_block = wide ? 2 : 4;
    int64_t nblocks = (n + per_block - 1) / per_block;
    for (int64_t blk = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; blk < nblocks;
         blk += (int64_t)gridDim.x * blockDim.x) {
        uint32_t x[4];
        dr_philox_block(offset + (uint64_t)blk, seed, x);
        int64_t i0 = blk * per_block;
        for (int l = 0; l < per_block && i0 + l < n; l++) {
            uint64_t draw;
            if (wide) {
                uint64_t b = (uint64_t)x[2 * l] | (uint64_t)x[2 * l + 1] << 32;
                draw = __umul64hi(b, range);
            } else {
                draw = ((uint64_t)x[l] * range) >> 32;
            }
            o[i0 + l] = (int64_t)((uint64_t)low + draw);
        }
    }
}

/* keep iff the element's 24-bit uniform (the rand stream) is below 1 - p,
 * compared in double as the CPU does. */
__global__ void dropout_mask_kernel(uint8_t *m, int64_t n, double keep, uint64_t seed,
                                    uint64_t offset) {
    int64_t nblocks = (n + 3) / 4;
    for (int64_t blk = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; blk < nblocks;
         blk += (int64_t)gridDim.x * blockDim.x) {
        uint32_t x[4];
        dr_philox_block(offset + (uint64_t)blk, seed, x);
        int64_t i0 = blk * 4;
        for (int l = 0; l < 4 && i0 + l < n; l++)
            m[i0 + l] = (double)dr_philox_uniform(x[l], 24) < keep;
    }
}

/* ---- fill_range ------------------------------------------------------------ */

/* Integer arange: exact steps in wrapping uint64 arithmetic. */
__global__ void arange_int_kernel(char *o, int32_t dt, int64_t base, int64_t n, int64_t s0,
                                  int64_t ds) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dr_cuda_store_i64(o, dt, base + i, (int64_t)((uint64_t)s0 + (uint64_t)i * (uint64_t)ds));
}

/* float32 linspace in float32 (torch): the first half counts up from start, the
 * second down from end, so both ends are exact. */
__global__ void linspace_f32_kernel(float *o, int64_t n, int64_t half, float fs, float fe,
                                    float fst) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        o[i] = i < half ? __fadd_rn(fs, __fmul_rn(fst, (float)i))
                        : __fsub_rn(fe, __fmul_rn(fst, (float)(n - 1 - i)));
}

/* Every other case in double, then cast to the dtype (util/scalar.h rules). */
__global__ void range_f64_kernel(char *o, int32_t dt, int64_t base, int64_t n, int64_t half,
                                 double start, double step, double end, int linspace) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        double v = !linspace || i < half ? __dadd_rn(start, __dmul_rn((double)i, step))
                                         : __dsub_rn(end, __dmul_rn((double)(n - 1 - i), step));
        dr_cuda_store_f64(o, dt, base + i, v);
    }
}

} // namespace

extern "C" dr_status dr_cuda_random(dr_tensor *out, dr_random_kind kind, uint64_t seed,
                                    uint64_t offset, uint32_t uniform_bits) {
    const char *op = kind == DR_RANDOM_NORMAL ? "randn" : "rand";
    int64_t n = dr_tensor_numel(out);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(out, op);
    if (!s) return DR_ERR_DEVICE;
    random_kernel<<<dr_cuda_blocks((n + 3) / 4, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<float>(out), n, kind == DR_RANDOM_NORMAL, seed, offset, uniform_bits);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

extern "C" dr_status dr_cuda_randint(dr_tensor *out, int64_t low, uint64_t range, uint64_t seed,
                                     uint64_t offset) {
    int64_t n = dr_tensor_numel(out);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(out, "randint");
    if (!s) return DR_ERR_DEVICE;
    int wide = range > ((uint64_t)1 << 32);
    int64_t nblocks = wide ? (n + 1) / 2 : (n + 3) / 4;
    randint_kernel<<<dr_cuda_blocks(nblocks, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<int64_t>(out), n, low, range, wide, seed, offset);
    DR_CUDA_LAUNCHED("randint");
    return DR_OK;
}

extern "C" dr_status dr_cuda_dropout_mask(dr_tensor *mask, double p, uint64_t seed,
                                          uint64_t offset) {
    int64_t n = dr_tensor_numel(mask);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(mask, "dropout");
    if (!s) return DR_ERR_DEVICE;
    dropout_mask_kernel<<<dr_cuda_blocks((n + 3) / 4, THREADS), THREADS, 0, s>>>(
        dr_cuda_ptr<uint8_t>(mask), n, 1.0 - p, seed, offset);
    DR_CUDA_LAUNCHED("dropout");
    return DR_OK;
}

extern "C" dr_status dr_cuda_fill_range(dr_tensor *out, double start, double step, double end,
                                        int linspace) {
    const char *op = linspace ? "linspace" : "arange";
    int64_t n = dr_tensor_numel(out);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(out, op);
    if (!s) return DR_ERR_DEVICE;
    int32_t dt = out->scalar_type;
    unsigned grid = dr_cuda_blocks(n, THREADS);
    if (!linspace && !dr_dtype_is_float(dt)) {
        arange_int_kernel<<<grid, THREADS, 0, s>>>(dr_cuda_base(out), dt, out->storage_offset, n,
                                                   dr_f64_to_i64(start), dr_f64_to_i64(step));
    } else {
        int64_t half = n == 1 ? 1 : n / 2; /* one step: start, as torch */
        if (linspace && dt == DR_F32) {
            /* the step in float, as the CPU computes it */
            float fs = (float)start, fe = (float)end;
            float fst = n > 1 ? (fe - fs) / (float)(n - 1) : 0.0f;
            linspace_f32_kernel<<<grid, THREADS, 0, s>>>(dr_cuda_ptr<float>(out), n, half, fs, fe,
                                                         fst);
        } else {
            range_f64_kernel<<<grid, THREADS, 0, s>>>(dr_cuda_base(out), dt, out->storage_offset,
                                                      n, half, start, step, end, linspace);
        }
    }
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}
