/* Helpers shared by the CUDA kernels: errors, the compute stream, handles,
 * strided indexing, dtype loads and stores. Every kernel file includes this and
 * nothing from the CPU backend.
 *
 * Conventions (the same as backend.h states for every backend):
 * - a kernel entry gets tensors already checked by core/ops (shapes, dtypes,
 *   devices) and returns DR_OK or a dr_fail(...) status; it never aborts;
 * - all work is queued on dr_cuda_stream(device) in order, so a buffer freed to
 *   the caching allocator can be reused by the next op without a sync;
 * - float results are deterministic (no float atomics) unless a comment says why
 *   not; float accumulation is in float or double as the CPU kernel does it. */
#ifndef DR_CUDA_INTERNAL_CUH
#define DR_CUDA_INTERNAL_CUH

#include <cstdint>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

extern "C" {
#include "../backend.h"
#include "../../tensor/tensor_internal.h"
#include "../../util/error.h"
}

/* ---- devices, streams, errors --------------------------------------------- */

/* Makes `device_index` current on this thread and returns its compute stream
 * (created on first use, non-blocking). NULL only if the device cannot be used;
 * then the error is set, naming `op`. */
cudaStream_t dr_cuda_stream_for(int32_t device_index, const char *op);

/* The stream of t's device (and makes that device current). */
static inline cudaStream_t dr_cuda_stream_of(const dr_tensor *t, const char *op) {
    return dr_cuda_stream_for(t->device.index, op);
}

/* A CUDA runtime error as a diffrl error naming the op. */
dr_status dr_cuda_fail(cudaError_t e, const char *op, const char *what);

/* DR_CUDA_TRY(cudaMemsetAsync(...), "fill") */
#define DR_CUDA_TRY(call, op)                                         \
    do {                                                              \
        cudaError_t dr_cuda_e_ = (call);                              \
        if (dr_cuda_e_ != cudaSuccess) return dr_cuda_fail(dr_cuda_e_, (op), #call); \
    } while (0)

/* After a <<<...>>> launch: reports a bad launch configuration at once. */
#define DR_CUDA_LAUNCHED(op) DR_CUDA_TRY(cudaGetLastError(), (op))

/* Grid size for n threads' worth of work in blocks of `threads`, capped so the
 * kernels (grid-stride loops) stay within the grid limit. */
static inline unsigned dr_cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535LL * 32) b = 65535LL * 32;
    return (unsigned)b;
}

/* Device scratch from the caching allocator (stream-ordered: free it after the
 * kernels that use it are queued, never before). */
dr_status dr_cuda_scratch(int32_t device_index, size_t nbytes, void **ptr);
void dr_cuda_scratch_free(int32_t device_index, void *ptr, size_t nbytes);

/* Scratch owned by a scope: released (stream-ordered) when the entry returns, after
 * its kernels are queued; early returns on an error free it too. */
struct Scratch {
    int32_t dev;
    void *ptr = nullptr;
    size_t bytes = 0;
    explicit Scratch(int32_t d) : dev(d) {}
    Scratch(const Scratch &) = delete;
    Scratch &operator=(const Scratch &) = delete;
    dr_status alloc(size_t n) {
        bytes = n;
        return dr_cuda_scratch(dev, n, &ptr);
    }
    template <typename T> T *as() const { return (T *)ptr; }
    ~Scratch() {
        if (ptr) dr_cuda_scratch_free(dev, ptr, bytes);
    }
};

/* A grid-stride loop over [0, n) with 64-bit indices. */
#define GRID_STRIDE(i, n)                                                                   \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);               \
         i += (int64_t)gridDim.x * blockDim.x)

/* Waits for device_index's stream (for results read on the host, e.g. sum_squares). */
dr_status dr_cuda_sync(int32_t device_index, const char *op);

/* Library handles bound to the device's stream (created on first use). */
struct cublasContext;
struct cublasLtContext;
struct cudnnContext;
dr_status dr_cuda_cublas(int32_t device_index, struct cublasContext **handle);
dr_status dr_cuda_cudnn(int32_t device_index, struct cudnnContext **handle);

/* ---- geometry -------------------------------------------------------------- */

static inline char *dr_cuda_base(const dr_tensor *t) { return (char *)t->storage->data; }
/* The first element of t (storage offset applied), typed. */
template <typename T> static inline T *dr_cuda_ptr(const dr_tensor *t) {
    return (T *)t->storage->data + t->storage_offset;
}

/* A tensor's shape and strides passed by value to a kernel: maps the row-major
 * linear index of an element to its storage offset (storage_offset included). */
struct dr_cuda_geom {
    int32_t ndim;
    int64_t sizes[DR_MAX_DIMS];
    int64_t strides[DR_MAX_DIMS];
    int64_t offset;
    bool contiguous;
};

static inline dr_cuda_geom dr_cuda_geom_of(const dr_tensor *t) {
    dr_cuda_geom g;
    g.ndim = t->ndim;
    g.offset = t->storage_offset;
    int64_t expect = 1;
    g.contiguous = true;
    for (int32_t d = t->ndim - 1; d >= 0; d--) {
        g.sizes[d] = t->sizes[d];
        g.strides[d] = t->strides[d];
        if (t->sizes[d] != 1 && t->strides[d] != expect) g.contiguous = false;
        expect *= t->sizes[d];
    }
    for (int32_t d = t->ndim; d < DR_MAX_DIMS; d++) g.sizes[d] = 1, g.strides[d] = 0;
    return g;
}

__device__ __forceinline__ int64_t dr_cuda_offset(const dr_cuda_geom &g, int64_t linear) {
    if (g.contiguous) return g.offset + linear;
    int64_t off = g.offset;
    for (int32_t d = g.ndim - 1; d >= 0; d--) {
        int64_t i = linear % g.sizes[d];
        linear /= g.sizes[d];
        off += i * g.strides[d];
    }
    return off;
}

/* ---- dtypes: element i of base as double / int64, and back ------------------
 * Conversions match core/util/scalar.h: doubles round to float first, then to
 * f16/bf16 by round-to-nearest-even; float to integer truncates, NaN -> 0,
 * out of range saturates; bool is != 0. */
__device__ __forceinline__ double dr_cuda_load_f64(const char *p, int32_t dt, int64_t i) {
    switch (dt) {
    case DR_F32: return ((const float *)p)[i];
    case DR_F16: return __half2float(((const __half *)p)[i]);
    case DR_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    case DR_I64: return (double)((const int64_t *)p)[i];
    case DR_I32: return ((const int32_t *)p)[i];
    case DR_U8: return ((const uint8_t *)p)[i];
    default: return ((const uint8_t *)p)[i] != 0;
    }
}

__device__ __forceinline__ int64_t dr_cuda_load_i64(const char *p, int32_t dt, int64_t i) {
    switch (dt) {
    case DR_I64: return ((const int64_t *)p)[i];
    case DR_I32: return ((const int32_t *)p)[i];
    case DR_U8: return ((const uint8_t *)p)[i];
    default: return ((const uint8_t *)p)[i] != 0;
    }
}

__device__ __forceinline__ int64_t dr_cuda_f64_to_i64(double v) {
    if (v != v) return 0;
    if (v >= 9223372036854775807.0) return INT64_MAX;
    if (v <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}

__device__ __forceinline__ void dr_cuda_store_i64(char *p, int32_t dt, int64_t i, int64_t v) {
    switch (dt) {
    case DR_I64: ((int64_t *)p)[i] = v; break;
    case DR_I32: ((int32_t *)p)[i] = (int32_t)(uint32_t)(uint64_t)v; break;
    case DR_U8: ((uint8_t *)p)[i] = (uint8_t)(uint64_t)v; break;
    default: ((uint8_t *)p)[i] = v != 0; break;
    }
}

__device__ __forceinline__ void dr_cuda_store_f64(char *p, int32_t dt, int64_t i, double v) {
    switch (dt) {
    case DR_F32: ((float *)p)[i] = (float)v; break;
    case DR_F16: ((__half *)p)[i] = __float2half_rn((float)v); break;
    case DR_BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v); break;
    case DR_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    default: dr_cuda_store_i64(p, dt, i, dr_cuda_f64_to_i64(v)); break;
    }
}

/* ---- kernel families: each file fills its entries of the table ------------- */
extern "C" {
void dr_cuda_register_elementwise(dr_backend *b); /* cuda_elementwise.cu, cuda_random.cu, cuda_optim.cu */
void dr_cuda_register_reduce(dr_backend *b);      /* cuda_reduce.cu (calls the next) */
void dr_cuda_register_index(dr_backend *b);       /* cuda_index.cu */
void dr_cuda_register_norm(dr_backend *b);        /* cuda_norm.cu (softmax, layer/group norm) */
void dr_cuda_register_dense(dr_backend *b);       /* cuda_matmul.cu, cuda_conv.cu, cuda_pool.cu */
void dr_cuda_register_attention(dr_backend *b);   /* cuda_attention.cu */
}

#endif
