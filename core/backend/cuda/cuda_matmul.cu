/* Batched float32 GEMM on cuBLAS: out[i] (m x n) = a[i] (m x k) @ b[i] (k x n).
 *
 * cuBLAS is column-major. A row-major m x n matrix with leading dimension ld is,
 * read column-major, its transpose (n x m, same ld). So the row-major product
 * C = A B is computed as the column-major product C^T = B^T A^T: b is the first
 * cuBLAS operand and a the second, m and n swap, and `out` (contiguous) is C^T
 * with ldc = n.
 *
 * An operand reaches cuBLAS in place when its matrix is row-major (unit column
 * stride, row stride >= cols: read column-major it is the transpose, op N) or
 * column-major (unit row stride, column stride >= rows: op T), the same test as
 * the CPU kernel; any other layout (a broadcast row, a slice of every other
 * column) is gathered into contiguous scratch first. A batch stride of 0 is
 * legal in cublasSgemmStridedBatched and is passed through, so a broadcast
 * operand is never materialized per batch.
 *
 * Precision: the handle keeps CUBLAS_DEFAULT_MATH (full FP32, no TF32), so the
 * result matches the CPU to float rounding of the k-long sums. cuBLAS gives the
 * same bits on every run of one shape on one GPU model. */
#include <cublas_v2.h>

#include "cuda_internal.cuh"

namespace {

/* One cuBLAS operand: where batch 0 starts, the batch stride, op and ld. */
struct gemm_operand {
    const float *base;
    int64_t batch_stride;
    cublasOperation_t op;
    int64_t ld;
    float *packed;       /* scratch owned when the layout needed a gather */
    size_t packed_bytes;
};

/* packed[(bi, r, c)] = src[bi bs + r rs + c cs]: the operand made row-major,
 * one thread per element in a grid-stride loop (64-bit: batches of large
 * matrices pass 2^31 elements). */
__global__ void gather3d_kernel(float *__restrict__ dst, const float *__restrict__ src,
                                int64_t total, int64_t rows, int64_t cols, int64_t bs,
                                int64_t rs, int64_t cs) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = i % cols, r = (i / cols) % rows, bi = i / (cols * rows);
        dst[i] = src[bi * bs + r * rs + c * cs];
    }
}

const char *cublas_error(cublasStatus_t s) { return cublasGetStatusString(s); }

/* t [batch, rows, cols] as a cuBLAS operand in the row-major sense of the CPU
 * kernel: op N = row-major (ld = row stride), op T = column-major (ld = column
 * stride). The caller maps this to the column-major call (see the file comment). */
dr_status prepare(const dr_tensor *t, cudaStream_t stream, gemm_operand *g) {
    int64_t batch = t->sizes[0], rows = t->sizes[1], cols = t->sizes[2];
    int64_t rs = t->strides[1], cs = t->strides[2];
    g->packed = nullptr;
    g->packed_bytes = 0;
    g->base = dr_cuda_ptr<float>(t);
    g->batch_stride = t->strides[0];
    /* The leading dimension rules are cuBLAS's (ld >= the stored dim, >= 1); a
     * unit dim makes its stride irrelevant, so it never forces a gather. */
    if ((cs == 1 || cols == 1) && (rows == 1 || rs >= (cols > 1 ? cols : 1))) {
        g->op = CUBLAS_OP_N;
        g->ld = rows > 1 ? rs : (cols > 1 ? cols : 1);
        return DR_OK;
    }
    if ((rs == 1 || rows == 1) && (cols == 1 || cs >= (rows > 1 ? rows : 1))) {
        g->op = CUBLAS_OP_T;
        g->ld = cols > 1 ? cs : (rows > 1 ? rows : 1);
        return DR_OK;
    }
    /* A batch-broadcast operand (stride 0) is gathered once and stays broadcast. */
    int64_t nmat = g->batch_stride == 0 ? 1 : batch;
    int64_t total = nmat * rows * cols;
    g->packed_bytes = (size_t)total * sizeof(float);
    void *mem = nullptr;
    DR_TRY(dr_cuda_scratch(t->device.index, g->packed_bytes, &mem));
    g->packed = (float *)mem;
    gather3d_kernel<<<dr_cuda_blocks(total, 256), 256, 0, stream>>>(
        g->packed, g->base, total, rows, cols, g->batch_stride, rs, cs);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        dr_cuda_scratch_free(t->device.index, g->packed, g->packed_bytes);
        g->packed = nullptr;
        return dr_cuda_fail(e, "matmul", "gather3d_kernel");
    }
    g->base = g->packed;
    g->batch_stride = nmat == 1 ? 0 : rows * cols;
    g->op = CUBLAS_OP_N;
    g->ld = cols > 1 ? cols : 1;
    return DR_OK;
}

void release(int32_t dev, gemm_operand *g) {
    if (g->packed) dr_cuda_scratch_free(dev, g->packed, g->packed_bytes);
    g->packed = nullptr;
}

/* cuBLAS's strided-batched kernels take the batch count in a grid dimension on
 * some versions, so batches go in chunks of at most this many. */
constexpr int64_t MAX_BATCH_PER_CALL = 65535;

} // namespace

dr_status dr_cuda_matmul(dr_tensor *out, const dr_tensor *a, const dr_tensor *b) {
    const char *op = "matmul";
    int64_t batch = out->sizes[0], m = out->sizes[1], n = out->sizes[2], k = a->sizes[2];
    cudaStream_t stream = dr_cuda_stream_of(out, op);
    if (!stream) return DR_ERR_DEVICE;
    if (batch == 0 || m == 0 || n == 0) return DR_OK;
    float *o = dr_cuda_ptr<float>(out);
    if (k == 0) { /* an empty sum: zeros, which cuBLAS would not write for k = 0 */
        DR_CUDA_TRY(cudaMemsetAsync(o, 0, (size_t)(batch * m * n) * sizeof(float), stream), op);
        return DR_OK;
    }
    const int32_t dev = out->device.index;
    cublasHandle_t handle = nullptr;
    DR_TRY(dr_cuda_cublas(dev, &handle));

    gemm_operand ga, gb;
    DR_TRY(prepare(a, stream, &ga));
    dr_status st = prepare(b, stream, &gb);
    if (st != DR_OK) {
        release(dev, &ga);
        return st;
    }
    /* Column-major: C^T (n x m, ldc n) = op(B^T) (n x k) @ op(A^T) (k x m). A
     * row-major operand (our op N) read column-major is already the transpose the
     * formula wants, so our op passes through unchanged. */
    const float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t cs = CUBLAS_STATUS_SUCCESS;
    for (int64_t b0 = 0; b0 < batch && cs == CUBLAS_STATUS_SUCCESS; b0 += MAX_BATCH_PER_CALL) {
        int64_t nb = batch - b0 < MAX_BATCH_PER_CALL ? batch - b0 : MAX_BATCH_PER_CALL;
        cs = cublasSgemmStridedBatched_64(
            handle, gb.op, ga.op, n, m, k, &alpha, gb.base + b0 * gb.batch_stride, gb.ld,
            gb.batch_stride, ga.base + b0 * ga.batch_stride, ga.ld, ga.batch_stride, &beta,
            o + b0 * m * n, n, m * n, nb);
    }
    /* stream-ordered: the gathers are free to reuse once the GEMMs are queued */
    release(dev, &ga);
    release(dev, &gb);
    if (cs != CUBLAS_STATUS_SUCCESS)
        return dr_fail(DR_ERR_INTERNAL, "matmul: cublasSgemmStridedBatched failed for %s @ %s "
                       "(strides a [%lld, %lld, %lld], b [%lld, %lld, %lld]): %s",
                       dr_shape_str(a), dr_shape_str(b), (long long)a->strides[0],
                       (long long)a->strides[1], (long long)a->strides[2],
                       (long long)b->strides[0], (long long)b->strides[1],
                       (long long)b->strides[2], cublas_error(cs));
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}
