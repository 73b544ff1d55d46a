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

dr_status dr_cpu_sum(dr_tensor *out, const dr_tensor *in, int32_t nreduce) {
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
