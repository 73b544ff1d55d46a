/* Batched float32 GEMM on OpenBLAS: out[i] (m x n) = a[i] (m x k) @ b[i] (k x n).
 * Operands reach BLAS in place when a matrix is row- or column-major with a valid
 * leading dimension (a transposed view costs nothing); other layouts are packed
 * first. Many small matrices run one per thread with BLAS single-threaded
 * (OpenBLAS's OpenMP build does that inside a parallel region); a few big ones
 * let BLAS use every thread. */
#include <stdlib.h>
#include <string.h>
#include <cblas.h>

#include "cpu_internal.h"

typedef struct gemm_operand {
    const float *base;     /* element [0,0] of batch 0 */
    int64_t batch_stride;
    CBLAS_TRANSPOSE trans;
    int64_t ld;
    float *packed;         /* owned when the layout needed packing */
} gemm_operand;

/* rows x cols matrix with strides (rs, cs) as a BLAS operand, or pack it. */
static dr_status prepare(const dr_tensor *t, gemm_operand *g) {
    int64_t batch = t->sizes[0], rows = t->sizes[1], cols = t->sizes[2];
    int64_t rs = t->strides[1], cs = t->strides[2];
    g->packed = NULL;
    g->base = (const float *)dr_cpu_base(t) + t->storage_offset;
    g->batch_stride = t->strides[0];
    if ((cs == 1 || cols == 1) && (rows == 1 || rs >= (cols > 1 ? cols : 1))) {
        g->trans = CblasNoTrans;
        g->ld = rows > 1 ? rs : (cols > 1 ? cols : 1);
        return DR_OK;
    }
    if ((rs == 1 || rows == 1) && (cols == 1 || cs >= (rows > 1 ? rows : 1))) {
        g->trans = CblasTrans;
        g->ld = cols > 1 ? cs : (rows > 1 ? rows : 1);
        return DR_OK;
    }
    size_t n = (size_t)(batch * rows * cols);
    g->packed = malloc(n * sizeof(float) + 1);
    if (!g->packed)
        return dr_fail(DR_ERR_OOM, "matmul: cannot allocate %zu bytes to pack %s",
                       n * sizeof(float), dr_shape_str(t));
    for (int64_t bi = 0; bi < batch; bi++)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                g->packed[(bi * rows + r) * cols + c] =
                    g->base[bi * t->strides[0] + r * rs + c * cs];
    g->base = g->packed;
    g->batch_stride = rows * cols;
    g->trans = CblasNoTrans;
    g->ld = cols > 1 ? cols : 1;
    return DR_OK;
}

dr_status dr_cpu_matmul(dr_tensor *out, const dr_tensor *a, const dr_tensor *b) {
    int64_t batch = out->sizes[0], m = out->sizes[1], n = out->sizes[2], k = a->sizes[2];
    float *o = (float *)dr_cpu_base(out) + out->storage_offset;
    if (batch == 0 || m == 0 || n == 0) return DR_OK;
    if (k == 0) {
        memset(o, 0, (size_t)(batch * m * n) * sizeof(float));
        return DR_OK;
    }
    gemm_operand ga, gb;
    DR_TRY(prepare(a, &ga));
    dr_status st = prepare(b, &gb);
    if (st != DR_OK) {
        free(ga.packed);
        return st;
    }
    int64_t ldc = n;
    /* One GEMM per thread pays when each is small relative to the batch. */
    bool per_thread = batch > 1 && m * n * k < (int64_t)1 << 21;
#pragma omp parallel for schedule(static) if (per_thread)
    for (int64_t i = 0; i < batch; i++) {
        cblas_sgemm(CblasRowMajor, ga.trans, gb.trans, (blasint)m, (blasint)n, (blasint)k, 1.0f,
                    ga.base + i * ga.batch_stride, (blasint)ga.ld,
                    gb.base + i * gb.batch_stride, (blasint)gb.ld, 0.0f,
                    o + i * m * n, (blasint)ldc);
    }
    free(ga.packed);
    free(gb.packed);
    return DR_OK;
}
