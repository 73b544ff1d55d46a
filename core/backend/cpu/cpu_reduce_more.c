/* Reductions beyond sum: mean/variance (moments), max/min with their indices
 * (argreduce), and the backward of a full max/min.
 *
 * moments: each output's reduced sub-space is cut into fixed blocks of BLOCK
 * elements. A block gives (count, mean, M2) by two passes in double (the mean,
 * then the squared deviations from it); blocks combine in block order with Chan
 * et al.'s pairwise update
 *     n = na + nb,  d = mb - ma,  m = ma + d nb/n,  M2 = M2a + M2b + d^2 na nb / n,
 * so the result depends on the data only, not on the thread count.
 * var = M2 / max(n - correction, 0) (0/0 gives NaN, as torch). */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

enum { BLOCK = 16384 };

/* The reduced sub-space of one output: sizes and strides (adjacent dims merged
 * where they are contiguous with each other). */
typedef struct red_geom {
    int32_t nkeep, nred;
    int64_t keep_sizes[DR_MAX_DIMS], keep_strides[DR_MAX_DIMS];
    int64_t red_sizes[DR_MAX_DIMS], red_strides[DR_MAX_DIMS];
    int64_t nout, red_numel;
} red_geom;

static void geom_init(red_geom *g, const dr_tensor *in, int32_t nreduce) {
    g->nkeep = in->ndim - nreduce;
    g->nout = 1;
    g->red_numel = 1;
    for (int32_t d = 0; d < g->nkeep; d++) {
        g->keep_sizes[d] = in->sizes[d];
        g->keep_strides[d] = in->strides[d];
        g->nout *= in->sizes[d];
    }
    g->nred = 0;
    for (int32_t d = g->nkeep; d < in->ndim; d++) {
        int64_t s = in->sizes[d], st = in->strides[d];
        g->red_numel *= s;
        if (s == 1) continue;
        if (g->nred > 0 && g->red_strides[g->nred - 1] == st * s) {
            g->red_sizes[g->nred - 1] *= s;
            g->red_strides[g->nred - 1] = st;
            continue;
        }
        g->red_sizes[g->nred] = s;
        g->red_strides[g->nred] = st;
        g->nred++;
    }
    if (g->nred == 0) { /* nothing (or only ones) to reduce: one element */
        g->nred = 1;
        g->red_sizes[0] = 1;
        g->red_strides[0] = 0;
    }
}

static int64_t keep_offset(const red_geom *g, const dr_tensor *in, int64_t j) {
    int64_t off = in->storage_offset;
    for (int32_t d = g->nkeep - 1; d >= 0; d--) {
        off += (j % g->keep_sizes[d]) * g->keep_strides[d];
        j /= g->keep_sizes[d];
    }
    return off;
}

/* s1 = sum (x - shift), s2 = sum (x - shift)^2 over elements [r0, r1) of the
 * reduced sub-space starting at `base`; s2 only if want_s2. */
static void block_pass(const red_geom *g, const float *p, int64_t base, int64_t r0, int64_t r1,
                       double shift, bool want_s2, double *s1, double *s2) {
    double a = 0, b = 0;
    if (g->nred == 1) {
        int64_t st = g->red_strides[0];
        const float *q = p + base + r0 * st;
        if (st == 1) { /* eight independent sums (a fixed order): not latency-bound */
            double pa[8] = {0}, pb[8] = {0};
            int64_t len = r1 - r0, r = 0;
            for (; r + 8 <= len; r += 8)
                for (int k = 0; k < 8; k++) {
                    double x = (double)q[r + k] - shift;
                    pa[k] += x;
                    pb[k] += x * x;
                }
            for (int k = 0; k < 8; k++) a += pa[k], b += pb[k];
            for (; r < len; r++) {
                double x = (double)q[r] - shift;
                a += x;
                b += x * x;
            }
            if (!want_s2) b = 0;
        } else {
            for (int64_t r = 0; r < r1 - r0; r++) {
                double x = (double)q[r * st] - shift;
                a += x;
                if (want_s2) b += x * x;
            }
        }
    } else {
        int64_t idx[DR_MAX_DIMS], off = base, rem = r0;
        for (int32_t d = g->nred - 1; d >= 0; d--) {
            idx[d] = rem % g->red_sizes[d];
            rem /= g->red_sizes[d];
            off += idx[d] * g->red_strides[d];
        }
        int32_t last = g->nred - 1;
        for (int64_t r = r0; r < r1; r++) {
            double x = (double)p[off] - shift;
            a += x;
            if (want_s2) b += x * x;
            for (int32_t d = last; d >= 0; d--) {
                idx[d]++;
                off += g->red_strides[d];
                if (idx[d] < g->red_sizes[d]) break;
                off -= idx[d] * g->red_strides[d];
                idx[d] = 0;
            }
        }
    }
    *s1 = a;
    *s2 = b;
}

/* The kept elements form one stride-1 run (reducing over leading dims, e.g. the
 * batch of [B, D]): then columns are summed side by side, which reads memory in
 * order, instead of one strided walk per output. */
enum { COLS = 64 };

static bool kept_is_one_run(const red_geom *g) {
    if (g->nkeep == 0 || g->keep_strides[g->nkeep - 1] != 1 || g->nout < 16) return false;
    for (int32_t d = 0; d + 1 < g->nkeep; d++)
        if (g->keep_strides[d] != g->keep_strides[d + 1] * g->keep_sizes[d + 1]) return false;
    return g->red_numel > 1;
}

/* Adds row r's columns (shifted) into s1 (and their squares into s2). */
static void column_pass(const red_geom *g, const float *p, int64_t base, int64_t ncols,
                        const double *shift, double *s1, double *s2) {
    int64_t idx[DR_MAX_DIMS] = {0}, off = base;
    int32_t last = g->nred - 1;
    for (int64_t r = 0; r < g->red_numel; r++) {
        const float *row = p + off;
        if (shift) {
            for (int64_t c = 0; c < ncols; c++) {
                double x = (double)row[c] - shift[c];
                s2[c] += x * x;
            }
        } else {
            for (int64_t c = 0; c < ncols; c++) s1[c] += (double)row[c];
        }
        for (int32_t d = last; d >= 0; d--) {
            idx[d]++;
            off += g->red_strides[d];
            if (idx[d] < g->red_sizes[d]) break;
            off -= idx[d] * g->red_strides[d];
            idx[d] = 0;
        }
    }
}

static void moments_by_columns(const red_geom *g, const dr_tensor *in, float *om, float *ov,
                               double correction, int take_sqrt) {
    const float *p = (const float *)dr_cpu_base(in);
    int64_t base = keep_offset(g, in, 0), nb = (g->nout + COLS - 1) / COLS;
    double n = (double)g->red_numel, dof = n - correction;
#pragma omp parallel for schedule(static) if (g->nout * g->red_numel > DR_CPU_PARALLEL_MIN)
    for (int64_t b = 0; b < nb; b++) {
        int64_t c0 = b * COLS, nc = g->nout - c0 < COLS ? g->nout - c0 : COLS;
        double s1[COLS] = {0}, s2[COLS] = {0};
        column_pass(g, p, base + c0, nc, NULL, s1, s2);
        for (int64_t c = 0; c < nc; c++) s1[c] /= n;
        if (ov) column_pass(g, p, base + c0, nc, s1, NULL, s2);
        for (int64_t c = 0; c < nc; c++) {
            om[c0 + c] = (float)s1[c];
            if (ov) {
                double v = s2[c] / (dof > 0 ? dof : 0.0);
                ov[c0 + c] = (float)(take_sqrt ? sqrt(v) : v);
            }
        }
    }
}

dr_status dr_cpu_moments(dr_tensor *mean, dr_tensor *var, const dr_tensor *in, int32_t nreduce,
                         double correction, int take_sqrt) {
    red_geom g;
    geom_init(&g, in, nreduce);
    if (kept_is_one_run(&g)) {
        moments_by_columns(&g, in, (float *)dr_cpu_base(mean) + mean->storage_offset,
                           var ? (float *)dr_cpu_base(var) + var->storage_offset : NULL,
                           correction, take_sqrt);
        return DR_OK;
    }
    int64_t nblocks = g.red_numel == 0 ? 1 : (g.red_numel + BLOCK - 1) / BLOCK;
    int64_t ntasks = g.nout * nblocks;
    /* per task: count, mean, M2 */
    double *part = malloc((size_t)(ntasks > 0 ? ntasks : 1) * 3 * sizeof(double));
    if (!part) return dr_fail(DR_ERR_OOM, "mean: out of memory for %lld partial sums", (long long)ntasks);
    const float *p = (const float *)dr_cpu_base(in);
    bool want_var = var != NULL;
#pragma omp parallel for schedule(static) if (g.nout * g.red_numel > DR_CPU_PARALLEL_MIN)
    for (int64_t task = 0; task < ntasks; task++) {
        int64_t j = task / nblocks, blk = task % nblocks;
        int64_t r0 = blk * BLOCK, r1 = r0 + BLOCK < g.red_numel ? r0 + BLOCK : g.red_numel;
        int64_t base = keep_offset(&g, in, j);
        double s1 = 0, s2 = 0, m = 0, m2 = 0;
        if (r1 > r0) {
            block_pass(&g, p, base, r0, r1, 0, false, &s1, &s2);
            m = s1 / (double)(r1 - r0);
            if (want_var) {
                block_pass(&g, p, base, r0, r1, m, true, &s1, &s2);
                m2 = s2 - s1 * s1 / (double)(r1 - r0); /* s1 ~ 0: corrected two-pass */
                if (m2 < 0) m2 = 0;
            }
        }
        part[3 * task] = (double)(r1 > r0 ? r1 - r0 : 0);
        part[3 * task + 1] = m;
        part[3 * task + 2] = m2;
    }
    float *om = (float *)dr_cpu_base(mean) + mean->storage_offset;
    float *ov = want_var ? (float *)dr_cpu_base(var) + var->storage_offset : NULL;
    for (int64_t j = 0; j < g.nout; j++) {
        const double *q = part + 3 * j * nblocks;
        double n = q[0], m = q[1], m2 = q[2];
        for (int64_t blk = 1; blk < nblocks; blk++) {
            double nb = q[3 * blk], mb = q[3 * blk + 1], m2b = q[3 * blk + 2];
            double tot = n + nb, d = mb - m;
            m += d * nb / tot;
            m2 += m2b + d * d * n * nb / tot;
            n = tot;
        }
        om[j] = n > 0 ? (float)m : NAN;
        if (ov) {
            double dof = n - correction;
            double v = m2 / (dof > 0 ? dof : 0.0);
            ov[j] = (float)(take_sqrt ? sqrt(v) : v);
        }
    }
    free(part);
    return DR_OK;
}

/* ---- max / min with indices ------------------------------------------------------ */

/* Index of the first maximum (minimum) of a line; NaN wins at its first place. */
static int64_t line_argext_f(const char *p, int32_t dt, int64_t off, int64_t st, int64_t len,
                             int is_min) {
    int64_t best_i = 0;
    double best = dt == DR_F32 ? ((const float *)p)[off] : dr_load_f64(p, dt, off);
    if (best != best) return 0;
    for (int64_t k = 1; k < len; k++) {
        double v = dt == DR_F32 ? ((const float *)p)[off + k * st] : dr_load_f64(p, dt, off + k * st);
        if (v != v) return k;
        if (is_min ? v < best : v > best) {
            best = v;
            best_i = k;
        }
    }
    return best_i;
}

static int64_t line_argext_i(const char *p, int32_t dt, int64_t off, int64_t st, int64_t len,
                             int is_min) {
    int64_t best_i = 0, best = dr_load_i64(p, dt, off);
    for (int64_t k = 1; k < len; k++) {
        int64_t v = dr_load_i64(p, dt, off + k * st);
        if (is_min ? v < best : v > best) {
            best = v;
            best_i = k;
        }
    }
    return best_i;
}

dr_status dr_cpu_argreduce(dr_tensor *values, dr_tensor *indices, const dr_tensor *in, int is_min) {
    red_geom g;
    geom_init(&g, in, 1);
    int32_t last = in->ndim - 1;
    int64_t len = in->sizes[last], st = in->strides[last];
    int32_t dt = in->scalar_type;
    int64_t esize = dr_dtype_size(dt);
    bool is_float = dr_dtype_is_float(dt);
    const char *p = dr_cpu_base(in);
    char *pv = values ? dr_cpu_base(values) : NULL;
    int64_t *pi = indices ? (int64_t *)dr_cpu_base(indices) + indices->storage_offset : NULL;
#pragma omp parallel for schedule(static) if (g.nout * len > DR_CPU_PARALLEL_MIN)
    for (int64_t j = 0; j < g.nout; j++) {
        int64_t off = keep_offset(&g, in, j);
        int64_t k = is_float ? line_argext_f(p, dt, off, st, len, is_min)
                             : line_argext_i(p, dt, off, st, len, is_min);
        if (pi) pi[j] = k;
        if (pv) memcpy(pv + (values->storage_offset + j) * esize, p + (off + k * st) * esize,
                       (size_t)esize);
    }
    return DR_OK;
}

dr_status dr_cpu_extreme_backward(dr_tensor *grad_in, const dr_tensor *in, double value, double g) {
    int64_t n = dr_tensor_numel(in);
    const float *x = (const float *)dr_cpu_base(in) + in->storage_offset;
    float *gi = (float *)dr_cpu_base(grad_in) + grad_in->storage_offset;
    bool nan = value != value;
    float v = (float)value;
    int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) count += nan ? x[i] != x[i] : x[i] == v;
    float share = count > 0 ? (float)(g / (double)count) : 0.0f;
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) gi[i] = (nan ? x[i] != x[i] : x[i] == v) ? share : 0.0f;
    return DR_OK;
}
