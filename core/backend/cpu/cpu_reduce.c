/* Sum over trailing dims, deterministic for any thread count.
 *
 * out[j] = sum_r in[j, r] over the reduced sub-space r. Each output element's
 * reduction is cut into fixed blocks of BLOCK elements; threads take (j, block)
 * pairs, and the block partials are added in block order afterwards, so the
 * result does not depend on scheduling. Floats accumulate in double (then round
 * once), integers in wrapping int64. */
#include <stdlib.h>

#include "cpu_internal.h"

enum { BLOCK = 16384 };

typedef struct reduce_geom {
    int32_t nkeep, nred;
    int64_t keep_sizes[DR_MAX_DIMS], keep_strides[DR_MAX_DIMS];
    int64_t red_sizes[DR_MAX_DIMS], red_strides[DR_MAX_DIMS];
    int64_t red_numel;
} reduce_geom;

static int64_t base_offset(const reduce_geom *g, const dr_tensor *in, int64_t j) {
    int64_t off = in->storage_offset;
    for (int32_t d = g->nkeep - 1; d >= 0; d--) {
        off += (j % g->keep_sizes[d]) * g->keep_strides[d];
        j /= g->keep_sizes[d];
    }
    return off;
}

/* Sums in[base + r] for r in [r0, r1) of the reduced sub-space. */
static void block_sum(const reduce_geom *g, const dr_tensor *in, int64_t base, int64_t r0,
                      int64_t r1, double *fsum, int64_t *isum) {
    *fsum = 0;
    *isum = 0;
    if (r0 >= r1) return;
    int64_t idx[DR_MAX_DIMS], off = base, rem = r0;
    for (int32_t d = g->nred - 1; d >= 0; d--) {
        idx[d] = rem % g->red_sizes[d];
        rem /= g->red_sizes[d];
        off += idx[d] * g->red_strides[d];
    }
    const char *p = dr_cpu_base(in);
    int32_t dt = in->scalar_type;
    bool is_float = dr_dtype_is_float(dt);
    double fs = 0;
    uint64_t is = 0;
    int32_t last = g->nred - 1;
    for (int64_t r = r0; r < r1; r++) {
        if (dt == DR_F32) fs += ((const float *)p)[off];
        else if (is_float) fs += dr_load_f64(p, dt, off);
        else is += (uint64_t)dr_load_i64(p, dt, off);
        for (int32_t d = last; d >= 0; d--) { /* next multi-index, with carry */
            idx[d]++;
            off += g->red_strides[d];
            if (idx[d] < g->red_sizes[d]) break;
            off -= idx[d] * g->red_strides[d];
            idx[d] = 0;
        }
    }
    *fsum = fs;
    *isum = (int64_t)is;
}

/* Whether dims [d0, d1) of t collapse into one run of `count` elements with
 * stride `stride` (row-major nesting). */
static bool collapses(const dr_tensor *t, int32_t d0, int32_t d1, int64_t stride, int64_t *count) {
    int64_t n = 1, s = stride;
    for (int32_t d = d1 - 1; d >= d0; d--) {
        if (t->sizes[d] != 1 && t->strides[d] != s) return false;
        s *= t->sizes[d];
        n *= t->sizes[d];
    }
    *count = n;
    return true;
}

enum { ROWS = 64 }; /* rows per partial sum of the column-sum path */

/* float32 fast paths, same blocking rules as the general path (fixed blocks,
 * partials added in block order), so results do not depend on threads:
 *  - columns: the reduced dims are the outer ones of a dense [R, K] block
 *    (bias gradients: sum over batch and tokens), summed row by row into K
 *    double accumulators per block of ROWS rows;
 *  - rows: the reduced dims are a dense inner run of R elements per output. */
static bool sum_f32_fast(dr_tensor *out, const dr_tensor *in, int32_t nkeep, dr_status *st) {
    int32_t nd = in->ndim;
    int64_t k = 1, r = 1;
    const float *p = (const float *)dr_cpu_base(in) + in->storage_offset;
    if (collapses(in, 0, nkeep, 1, &k) && collapses(in, nkeep, nd, k, &r) && r > 0 && k > 0) {
        int64_t nblocks = (r + ROWS - 1) / ROWS;
        double *part = malloc((size_t)(nblocks * k) * sizeof(double));
        if (!part) {
            *st = dr_fail(DR_ERR_OOM, "sum: out of memory for %lld partial sums", (long long)(nblocks * k));
            return true;
        }
#pragma omp parallel for schedule(static) if (r * k > DR_CPU_PARALLEL_MIN)
        for (int64_t b = 0; b < nblocks; b++) {
            double *acc = part + b * k;
            for (int64_t j = 0; j < k; j++) acc[j] = 0;
            int64_t end = (b + 1) * ROWS < r ? (b + 1) * ROWS : r;
            for (int64_t i = b * ROWS; i < end; i++) {
                const float *row = p + i * k;
                for (int64_t j = 0; j < k; j++) acc[j] += (double)row[j];
            }
        }
        float *o = (float *)dr_cpu_base(out) + out->storage_offset;
        for (int64_t j = 0; j < k; j++) {
            double s = 0;
            for (int64_t b = 0; b < nblocks; b++) s += part[b * k + j];
            o[j] = (float)s;
        }
        free(part);
        *st = DR_OK;
        return true;
    }
    if (collapses(in, nkeep, nd, 1, &r) && r > 0) {
        /* the same (output, BLOCK) partials as the general path: identical bits */
        int64_t nout = dr_tensor_numel(out);
        reduce_geom g;
        g.nkeep = nkeep;
        for (int32_t d = 0; d < nkeep; d++) {
            g.keep_sizes[d] = in->sizes[d];
            g.keep_strides[d] = in->strides[d];
        }
        const float *base = (const float *)dr_cpu_base(in);
        float *o = (float *)dr_cpu_base(out) + out->storage_offset;
#pragma omp parallel for schedule(static) if (nout * r > DR_CPU_PARALLEL_MIN)
        for (int64_t j = 0; j < nout; j++) {
            const float *q = base + base_offset(&g, in, j);
            double total = 0;
            for (int64_t b0 = 0; b0 < r; b0 += BLOCK) {
                int64_t b1 = b0 + BLOCK < r ? b0 + BLOCK : r;
                double s = 0;
                for (int64_t i = b0; i < b1; i++) s += q[i];
                total += s;
            }
            o[j] = (float)total;
        }
        *st = DR_OK;
        return true;
    }
    return false;
}

dr_status dr_cpu_sum(dr_tensor *out, const dr_tensor *in, int32_t nreduce) {
    if (in->scalar_type == DR_F32 && out->scalar_type == DR_F32 && dr_tensor_is_contiguous(out) &&
        nreduce > 0) {
        dr_status st = DR_OK;
        if (sum_f32_fast(out, in, in->ndim - nreduce, &st)) return st;
    }
    reduce_geom g;
    g.nkeep = in->ndim - nreduce;
    g.nred = nreduce;
    g.red_numel = 1;
    int64_t nout = 1;
    for (int32_t d = 0; d < g.nkeep; d++) {
        g.keep_sizes[d] = in->sizes[d];
        g.keep_strides[d] = in->strides[d];
        nout *= in->sizes[d];
    }
    for (int32_t d = 0; d < nreduce; d++) {
        g.red_sizes[d] = in->sizes[g.nkeep + d];
        g.red_strides[d] = in->strides[g.nkeep + d];
        g.red_numel *= g.red_sizes[d];
    }
    if (nreduce == 0) { /* nothing to reduce: a cast-copy */
        g.nred = 1;
        g.red_sizes[0] = 1;
        g.red_strides[0] = 0;
    }
    int64_t nblocks = g.red_numel == 0 ? 1 : (g.red_numel + BLOCK - 1) / BLOCK;
    int64_t ntasks = nout * nblocks;
    double *fpart = malloc((size_t)(ntasks > 0 ? ntasks : 1) * sizeof(double));
    int64_t *ipart = malloc((size_t)(ntasks > 0 ? ntasks : 1) * sizeof(int64_t));
    if (!fpart || !ipart) {
        free(fpart);
        free(ipart);
        return dr_fail(DR_ERR_OOM, "sum: out of memory for %lld partial sums", (long long)ntasks);
    }
#pragma omp parallel for schedule(static) if (nout * g.red_numel > DR_CPU_PARALLEL_MIN)
    for (int64_t task = 0; task < ntasks; task++) {
        int64_t j = task / nblocks, blk = task % nblocks;
        int64_t r0 = blk * BLOCK, r1 = r0 + BLOCK < g.red_numel ? r0 + BLOCK : g.red_numel;
        block_sum(&g, in, base_offset(&g, in, j), r0, r1, &fpart[task], &ipart[task]);
    }
    char *o = dr_cpu_base(out);
    for (int64_t j = 0; j < nout; j++) {
        double fs = 0;
        uint64_t is = 0;
        for (int64_t blk = 0; blk < nblocks; blk++) {
            fs += fpart[j * nblocks + blk];
            is += (uint64_t)ipart[j * nblocks + blk];
        }
        if (dr_dtype_is_float(out->scalar_type)) dr_store_f64(o, out->scalar_type, out->storage_offset + j, fs);
        else dr_store_i64(o, out->scalar_type, out->storage_offset + j, (int64_t)is);
    }
    free(fpart);
    free(ipart);
    return DR_OK;
}
