/* Batched float32 GEMM on OpenBLAS: out[i] (m x n) = a[i] (m x k) @ b[i] (k x n).
 * Operands reach BLAS in place when a matrix is row- or column-major with a valid
 * leading dimension (a transposed view costs nothing); other layouts are packed
 * first. The work is split into shape-determined tiles, one single-threaded
 * GEMM each, so results do not depend on the thread count. */
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include <omp.h>

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

enum { TILES = 8 };

/* Tile extent for cutting a dim of size d into about `parts`: a multiple of 64. */
static int64_t piece(int64_t d, int64_t parts) {
    int64_t t = (d + parts - 1) / parts;
    return (t + 63) / 64 * 64;
}

/* Row and column tile extents for an m x n product: rows first (about TILES row
 * tiles, then columns until there are about TILES tiles), unless fewer row tiles
 * copy much less. Each tile's GEMM packs its rows of A and its columns of B, so
 * pm x pn tiles pack k (pn m + pm n) floats: for 77 x 1024 that is 2 x 4 tiles of
 * 64 and 13 rows packing B twice, against 1 x 8 tiles packing it once (and no
 * 13-row tile). The choice depends on the shape alone. */
static void choose_tiles(int64_t m, int64_t n, int64_t *tm_out, int64_t *tn_out) {
    int64_t base_cost = 0, base_tiles = 0, best_cost = 0;
    for (int64_t parts = TILES; parts >= 1; parts /= 2) {
        int64_t tm = piece(m, parts), pm = (m + tm - 1) / tm;
        int64_t tn = pm >= TILES ? n : piece(n, (TILES + pm - 1) / pm), pn = (n + tn - 1) / tn;
        int64_t cost = pn * m + pm * n, tiles = pm * pn;
        if (parts == TILES) {
            base_cost = best_cost = cost;
            base_tiles = tiles < TILES ? tiles : TILES;
        } else if (tiles < base_tiles || 5 * cost >= 4 * base_cost || cost >= best_cost) {
            continue; /* switch only for a clear saving (a fifth), as many parallel tiles */
        }
        best_cost = cost;
        *tm_out = tm;
        *tn_out = tn;
    }
}

typedef struct tile_job {
    const gemm_operand *a, *b;
    float *o;
    int64_t m, n, k, tm, tn, pm, pn;
} tile_job;

/* Tile t: batch i, rows [r0, r0 + tm), columns [c0, c0 + tn), one BLAS call. */
static void run_tile(const tile_job *j, int64_t t) {
    const gemm_operand *ga = j->a, *gb = j->b;
    int64_t i = t / (j->pm * j->pn), r0 = (t / j->pn % j->pm) * j->tm, c0 = t % j->pn * j->tn;
    int64_t rows = j->m - r0 < j->tm ? j->m - r0 : j->tm, cols = j->n - c0 < j->tn ? j->n - c0 : j->tn;
    const float *pa = ga->base + i * ga->batch_stride + r0 * (ga->trans == CblasNoTrans ? ga->ld : 1);
    const float *pb = gb->base + i * gb->batch_stride + c0 * (gb->trans == CblasNoTrans ? 1 : gb->ld);
    cblas_sgemm(CblasRowMajor, ga->trans, gb->trans, (blasint)rows, (blasint)cols, (blasint)j->k,
                1.0f, pa, (blasint)ga->ld, pb, (blasint)gb->ld, 0.0f,
                j->o + i * j->m * j->n + r0 * j->n + c0, (blasint)j->n);
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
    /* Same bits for any thread count: the product is cut into tiles whose sizes
     * depend only on the shapes (about 8 per matrix: rows first, columns when
     * there are too few rows; multiples of 64), each one single-threaded GEMM
     * (OpenBLAS's OpenMP build runs serially inside a parallel region).
     * OpenBLAS's own threading, and any thread-dependent cut, changes the bits:
     * its kernels differ with the sizes they are given. The cost is repacking B
     * once per row tile and A once per column tile; choose_tiles keeps that small. */
    int64_t tm, tn;
    choose_tiles(m, n, &tm, &tn);
    /* OpenBLAS threads a product it gets outside an active parallel region once
     * m n k >= 2^18 (it asks omp_in_parallel()): inside our one-thread region that
     * made a nested team, i.e. new threads on every call, and bits that depend on
     * the thread count. Such a product is cut in two (a shape-determined cut, in
     * multiples of 16), so it runs in an active region like the rest. */
    bool blas_would_thread = (double)m * (double)n * (double)k >= (double)(1 << 18);
    if (batch == 1 && (m + tm - 1) / tm == 1 && (n + tn - 1) / tn == 1 && blas_would_thread) {
        if (n >= 32) tn = ((n + 1) / 2 + 15) / 16 * 16;
        else if (m >= 32) tm = ((m + 1) / 2 + 15) / 16 * 16;
    }
    int64_t pm = (m + tm - 1) / tm, pn = (n + tn - 1) / tn, tasks = batch * pm * pn;
    bool parallel = tasks > 1 && (batch * m * n * k >= (int64_t)1 << 16 || blas_would_thread);
    /* what still reaches BLAS alone (m and n both under 32): an active region of
     * two where one thread calls it, so BLAS stays single-threaded */
    bool guard = !parallel && blas_would_thread && omp_get_max_threads() > 1;
    tile_job job = {&ga, &gb, o, m, n, k, tm, tn, pm, pn};
    if (guard) {
#pragma omp parallel num_threads(2)
        if (omp_get_thread_num() == 0)
            for (int64_t t = 0; t < tasks; t++) run_tile(&job, t);
    } else {
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
        for (int64_t t = 0; t < tasks; t++) run_tile(&job, t);
    }
    free(ga.packed);
    free(gb.packed);
    return DR_OK;
}
