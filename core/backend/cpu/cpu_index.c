/* Indexing kernels: index bounds, index_select and its backward (index_add),
 * gather and its backward (scatter_add), where.
 *
 * Determinism without atomics: index_add sorts the index positions by target row
 * (a stable counting sort) and sums each row's contributions in increasing
 * position, in double; scatter_add gives each line (all coordinates but `dim`)
 * to one thread, which adds in increasing position along dim. Either way the
 * result does not depend on the thread count. Copies move elements by size, so
 * every dtype works. */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

/* Copies element `si` of src to element `di` of dst, elements of `esize` bytes. */
static inline void move_elem(char *dst, int64_t di, const char *src, int64_t si, int64_t esize) {
    switch (esize) {
    case 1: ((uint8_t *)dst)[di] = ((const uint8_t *)src)[si]; break;
    case 2: ((uint16_t *)dst)[di] = ((const uint16_t *)src)[si]; break;
    case 4: ((uint32_t *)dst)[di] = ((const uint32_t *)src)[si]; break;
    default: ((uint64_t *)dst)[di] = ((const uint64_t *)src)[si]; break;
    }
}

/* ---- bounds ------------------------------------------------------------------- */

dr_status dr_cpu_index_check(const dr_tensor *index, int64_t size, int64_t *bad, int *found) {
    const dr_tensor *ops[1] = {index};
    dr_iter it;
    dr_iter_init(&it, 1, ops);
    const char *p = dr_cpu_base(index);
    int32_t dt = index->scalar_type;
    int64_t s = it.strides[0][it.ndim - 1];
    int64_t first_row = it.rows; /* the first row holding a bad index */
#pragma omp parallel for schedule(static) reduction(min : first_row) \
    if (it.rows * it.inner > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < it.rows; r++) {
        int64_t off;
        dr_iter_row(&it, r, &off);
        for (int64_t i = 0; i < it.inner; i++) {
            int64_t v = dr_load_i64(p, dt, off + i * s);
            if (v < 0 || v >= size) {
                if (r < first_row) first_row = r;
                break;
            }
        }
    }
    *found = 0;
    if (first_row == it.rows) return DR_OK;
    int64_t off;
    dr_iter_row(&it, first_row, &off);
    for (int64_t i = 0; i < it.inner; i++) {
        int64_t v = dr_load_i64(p, dt, off + i * s);
        if (v < 0 || v >= size) {
            *bad = v;
            *found = 1;
            break;
        }
    }
    return DR_OK;
}

/* ---- index_select / index_add ------------------------------------------------------ */

dr_status dr_cpu_index_select(dr_tensor *out, const dr_tensor *in, const dr_tensor *index,
                              int64_t outer, int64_t inner) {
    int64_t esize = dr_dtype_size(in->scalar_type);
    int64_t nidx = dr_tensor_numel(index), n = outer > 0 && inner > 0
                                                  ? dr_tensor_numel(in) / (outer * inner) : 0;
    const int64_t *idx = (const int64_t *)dr_cpu_base(index) + index->storage_offset;
    const char *src = dr_cpu_base(in) + in->storage_offset * esize;
    char *dst = dr_cpu_base(out) + out->storage_offset * esize;
    int64_t rows = outer * nidx;
#pragma omp parallel for schedule(static) if (rows * inner > DR_CPU_PARALLEL_MIN)
    for (int64_t row = 0; row < rows; row++) {
        int64_t o = row / nidx, j = row % nidx;
        const char *s = src + ((o * n + idx[j]) * inner) * esize;
        char *d = dst + row * inner * esize;
        if (inner == 1) move_elem(d, 0, s, 0, esize);
        else memcpy(d, s, (size_t)(inner * esize));
    }
    return DR_OK;
}

dr_status dr_cpu_index_add(dr_tensor *grad_in, const dr_tensor *grad_out, const dr_tensor *index,
                           int64_t outer, int64_t inner) {
    int64_t nidx = dr_tensor_numel(index);
    int64_t n = outer > 0 && inner > 0 ? dr_tensor_numel(grad_in) / (outer * inner) : 0;
    const int64_t *idx = (const int64_t *)dr_cpu_base(index) + index->storage_offset;
    const float *g = (const float *)dr_cpu_base(grad_out) + grad_out->storage_offset;
    float *gi = (float *)dr_cpu_base(grad_in) + grad_in->storage_offset;
    if (n == 0) return DR_OK;
    /* start[r] .. start[r+1]: the positions j with idx[j] == r, increasing */
    int64_t *start = calloc((size_t)n + 1, sizeof *start);
    int64_t *order = malloc((size_t)(nidx > 0 ? nidx : 1) * sizeof *order);
    int64_t *fill = malloc((size_t)n * sizeof *fill);
    if (!start || !order || !fill) {
        free(start);
        free(order);
        free(fill);
        return dr_fail(DR_ERR_OOM, "index_add: out of memory sorting %lld indices", (long long)nidx);
    }
    for (int64_t j = 0; j < nidx; j++) start[idx[j] + 1]++;
    for (int64_t r = 0; r < n; r++) start[r + 1] += start[r];
    memcpy(fill, start, (size_t)n * sizeof *fill);
    for (int64_t j = 0; j < nidx; j++) order[fill[idx[j]]++] = j;
    free(fill);

    int64_t tasks = outer * n;
    int oom = 0;
#pragma omp parallel if (tasks * inner > DR_CPU_PARALLEL_MIN || nidx * inner > DR_CPU_PARALLEL_MIN)
    {
        double *acc = malloc((size_t)inner * sizeof *acc);
        if (!acc) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic, 16)
        for (int64_t task = 0; task < tasks; task++) {
            if (!acc) continue;
            int64_t o = task / n, r = task % n;
            float *dst = gi + task * inner;
            int64_t j0 = start[r], j1 = start[r + 1];
            if (j0 == j1) {
                memset(dst, 0, (size_t)inner * sizeof *dst);
                continue;
            }
            for (int64_t i = 0; i < inner; i++) acc[i] = 0;
            for (int64_t k = j0; k < j1; k++) {
                const float *src = g + (o * nidx + order[k]) * inner;
                for (int64_t i = 0; i < inner; i++) acc[i] += src[i];
            }
            for (int64_t i = 0; i < inner; i++) dst[i] = (float)acc[i];
        }
        free(acc);
    }
    free(start);
    free(order);
    if (oom) return dr_fail(DR_ERR_OOM, "index_add: out of memory for row sums of %lld", (long long)inner);
    return DR_OK;
}

/* ---- gather / scatter_add -------------------------------------------------------------- */

dr_status dr_cpu_gather(dr_tensor *out, const dr_tensor *in, int32_t dim, const dr_tensor *index) {
    int32_t nd = index->ndim, last = nd - 1;
    int64_t esize = dr_dtype_size(in->scalar_type);
    int64_t len = index->sizes[last], numel = dr_tensor_numel(index);
    int64_t rows = len > 0 ? numel / len : 0;
    const char *src = dr_cpu_base(in), *ip = dr_cpu_base(index);
    char *dst = dr_cpu_base(out);
    int32_t idt = index->scalar_type;
#pragma omp parallel for schedule(static) if (numel > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t rem = r, in_off = in->storage_offset, ix_off = index->storage_offset;
        for (int32_t d = last - 1; d >= 0; d--) {
            int64_t c = rem % index->sizes[d];
            rem /= index->sizes[d];
            if (d != dim) in_off += c * in->strides[d];
            ix_off += c * index->strides[d];
        }
        int64_t o = out->storage_offset + r * len;
        for (int64_t k = 0; k < len; k++) {
            int64_t v = dr_load_i64(ip, idt, ix_off + k * index->strides[last]);
            int64_t s = in_off + v * in->strides[dim] + (dim == last ? 0 : k * in->strides[last]);
            move_elem(dst, o + k, src, s, esize);
        }
    }
    return DR_OK;
}

dr_status dr_cpu_scatter_add(dr_tensor *grad_in, int32_t dim, const dr_tensor *index,
                             const dr_tensor *grad_out) {
    int32_t nd = index->ndim;
    int64_t len = index->sizes[dim], numel = dr_tensor_numel(index);
    int64_t lines = len > 0 ? numel / len : 0;
    const char *ip = dr_cpu_base(index);
    const float *g = (const float *)dr_cpu_base(grad_out);
    float *gi = (float *)dr_cpu_base(grad_in);
    int32_t idt = index->scalar_type;
#pragma omp parallel for schedule(static) if (numel > DR_CPU_PARALLEL_MIN)
    for (int64_t line = 0; line < lines; line++) {
        int64_t rem = line, gi_off = grad_in->storage_offset, ix_off = index->storage_offset;
        int64_t go_off = grad_out->storage_offset;
        for (int32_t d = nd - 1; d >= 0; d--) {
            if (d == dim) continue;
            int64_t c = rem % index->sizes[d];
            rem /= index->sizes[d];
            gi_off += c * grad_in->strides[d];
            ix_off += c * index->strides[d];
            go_off += c * grad_out->strides[d];
        }
        for (int64_t k = 0; k < len; k++) {
            int64_t v = dr_load_i64(ip, idt, ix_off + k * index->strides[dim]);
            gi[gi_off + v * grad_in->strides[dim]] += g[go_off + k * grad_out->strides[dim]];
        }
    }
    return DR_OK;
}

/* ---- where --------------------------------------------------------------------------- */

dr_status dr_cpu_where(dr_tensor *out, const dr_tensor *cond, const dr_tensor *a,
                       const dr_tensor *b) {
    const dr_tensor *ops[4] = {out, cond, a, b};
    int32_t nd = out->ndim, last = nd - 1;
    int64_t inner = nd > 0 ? out->sizes[last] : 1, numel = dr_tensor_numel(out);
    int64_t rows = inner > 0 ? numel / inner : 0;
    int64_t st[4];
    for (int k = 0; k < 4; k++) st[k] = nd > 0 ? ops[k]->strides[last] : 0;
    int64_t esize = dr_dtype_size(out->scalar_type);
    char *o = dr_cpu_base(out);
    const uint8_t *c = (const uint8_t *)dr_cpu_base(cond);
    const char *pa = dr_cpu_base(a), *pb = dr_cpu_base(b);
#pragma omp parallel for schedule(static) if (numel > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t off[4], rem = r;
        for (int k = 0; k < 4; k++) off[k] = ops[k]->storage_offset;
        for (int32_t d = last - 1; d >= 0; d--) {
            int64_t i = rem % out->sizes[d];
            rem /= out->sizes[d];
            for (int k = 0; k < 4; k++) off[k] += i * ops[k]->strides[d];
        }
        if (esize == 4 && st[0] == 1) {
            uint32_t *po = (uint32_t *)o + off[0];
            const uint32_t *xa = (const uint32_t *)pa, *xb = (const uint32_t *)pb;
            for (int64_t i = 0; i < inner; i++)
                po[i] = c[off[1] + i * st[1]] ? xa[off[2] + i * st[2]] : xb[off[3] + i * st[3]];
            continue;
        }
        for (int64_t i = 0; i < inner; i++) {
            bool take_a = c[off[1] + i * st[1]] != 0;
            move_elem(o, off[0] + i * st[0], take_a ? pa : pb,
                      take_a ? off[2] + i * st[2] : off[3] + i * st[3], esize);
        }
    }
    return DR_OK;
}
