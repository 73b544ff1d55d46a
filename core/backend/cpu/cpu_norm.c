/* layer_norm and group_norm on contiguous float32, forward and backward (the
 * math is in core/ops/norm.c).
 *
 * Statistics take one pass: sums of (x - k) and (x - k)^2 with k the first
 * element (the shift keeps E[x^2] - E[x]^2 from cancelling when |mean| >> std),
 * in float over CHUNK elements (vectorised) and in double across chunks.
 * group_norm works one (n, group) slab at a time: its statistics, then at once
 * the normalise-and-affine pass while the slab is still in cache. Parameter
 * gradients sum over rows (layer_norm) or samples (group_norm) in a fixed order,
 * so nothing depends on the thread count. */
#include <math.h>
#include <stdlib.h>

#include "cpu_internal.h"
#include "cpu_vecmath.h"

enum { CHUNK = 2048, ROW_BLOCK = 64 };

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- vectorised pieces --------------------------------------------------------- */

DR_CPU_CLONES
static void shifted_sums(const float *restrict x, int64_t n, float k, float *s1, float *s2) {
    float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - k;
        a += d;
        b += d * d;
    }
    *s1 = a;
    *s2 = b;
}

/* Mean and 1/sqrt(biased variance + eps) of x[0..n). */
static void moments(const float *x, int64_t n, double eps, float *mean, float *rstd) {
    if (n == 0) {
        *mean = 0.0f;
        *rstd = (float)(1.0 / sqrt(eps));
        return;
    }
    float k = x[0];
    double s1 = 0, s2 = 0;
    for (int64_t j = 0; j < n; j += CHUNK) {
        float a, b;
        shifted_sums(x + j, min64(CHUNK, n - j), k, &a, &b);
        s1 += a;
        s2 += b;
    }
    double m = s1 / (double)n, var = s2 / (double)n - m * m;
    *mean = (float)(k + m);
    *rstd = (float)(1.0 / sqrt((var > 0 ? var : 0) + eps));
}

/* o = x * a + b, with a and b per element (w, bias; NULL means 1 and 0) or scalar. */
DR_CPU_CLONES
static void affine(float *restrict o, const float *restrict x, int64_t n, float mean, float rstd,
                   const float *restrict w, const float *restrict b) {
    if (w && b)
        for (int64_t i = 0; i < n; i++) o[i] = (x[i] - mean) * rstd * w[i] + b[i];
    else if (w)
        for (int64_t i = 0; i < n; i++) o[i] = (x[i] - mean) * rstd * w[i];
    else if (b)
        for (int64_t i = 0; i < n; i++) o[i] = (x[i] - mean) * rstd + b[i];
    else
        for (int64_t i = 0; i < n; i++) o[i] = (x[i] - mean) * rstd;
}

DR_CPU_CLONES
static void scale_shift(float *restrict o, const float *restrict x, int64_t n, float a, float b) {
    for (int64_t i = 0; i < n; i++) o[i] = x[i] * a + b;
}

/* Sums of g and g * x over n elements, g = dy * w (w NULL: g = dy), in float
 * inside a chunk and double across chunks. */
DR_CPU_CLONES
static void grad_sums_chunk(const float *restrict dy, const float *restrict w,
                            const float *restrict x, int64_t n, float *sg, float *sgx) {
    float a = 0.0f, b = 0.0f;
    if (w) {
#pragma omp simd reduction(+ : a, b)
        for (int64_t i = 0; i < n; i++) {
            float g = dy[i] * w[i];
            a += g;
            b += g * x[i];
        }
    } else {
#pragma omp simd reduction(+ : a, b)
        for (int64_t i = 0; i < n; i++) {
            a += dy[i];
            b += dy[i] * x[i];
        }
    }
    *sg = a;
    *sgx = b;
}

static void grad_sums(const float *dy, const float *w, const float *x, int64_t n, double *sg,
                      double *sgx) {
    double a = 0, b = 0;
    for (int64_t j = 0; j < n; j += CHUNK) {
        float ca, cb;
        grad_sums_chunk(dy + j, w ? w + j : NULL, x + j, min64(CHUNK, n - j), &ca, &cb);
        a += ca;
        b += cb;
    }
    *sg = a;
    *sgx = b;
}

/* ---- layer_norm ---------------------------------------------------------------------- */

static const float *data_or_null(const dr_tensor *t) {
    return t ? (const float *)dr_tensor_data(t) : NULL;
}

dr_status dr_cpu_layer_norm(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd, const dr_tensor *in,
                            const dr_tensor *weight, const dr_tensor *bias, int64_t rows,
                            int64_t cols, double eps) {
    float *o = dr_tensor_data(out), *pm = dr_tensor_data(mean), *pr = dr_tensor_data(rstd);
    const float *x = dr_tensor_data(in), *w = data_or_null(weight), *b = data_or_null(bias);
#pragma omp parallel for schedule(static) if (rows * cols > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        moments(x + r * cols, cols, eps, &pm[r], &pr[r]);
        affine(o + r * cols, x + r * cols, cols, pm[r], pr[r], w, b);
    }
    return DR_OK;
}

/* One row of dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w,
 * xhat = (x - mean) rstd, using sum(g xhat) = rstd (sum(g x) - mean sum(g)). */
DR_CPU_CLONES
static void layer_norm_dx_row(float *restrict dx, const float *restrict dy,
                              const float *restrict x, const float *restrict w, int64_t n,
                              float mean, float rstd) {
    double sg, sgx;
    grad_sums(dy, w, x, n, &sg, &sgx);
    float a = (float)(sg / (double)n);
    float bq = (float)((sgx - (double)mean * sg) * rstd / (double)n);
    if (w)
        for (int64_t i = 0; i < n; i++)
            dx[i] = rstd * (dy[i] * w[i] - a - (x[i] - mean) * rstd * bq);
    else
        for (int64_t i = 0; i < n; i++) dx[i] = rstd * (dy[i] - a - (x[i] - mean) * rstd * bq);
}

DR_CPU_CLONES
static void accumulate_param_grads(float *restrict gw, float *restrict gb, const float *restrict dy,
                                   const float *restrict x, int64_t n, float mean, float rstd) {
    if (gw)
        for (int64_t i = 0; i < n; i++) gw[i] += dy[i] * ((x[i] - mean) * rstd);
    if (gb)
        for (int64_t i = 0; i < n; i++) gb[i] += dy[i];
}

dr_status dr_cpu_layer_norm_backward(dr_tensor *grad_in, dr_tensor *grad_weight,
                                     dr_tensor *grad_bias, const dr_tensor *grad_out,
                                     const dr_tensor *in, const dr_tensor *mean,
                                     const dr_tensor *rstd, const dr_tensor *weight,
                                     int64_t rows, int64_t cols) {
    const float *dy = dr_tensor_data(grad_out), *x = dr_tensor_data(in);
    const float *pm = dr_tensor_data(mean), *pr = dr_tensor_data(rstd), *w = data_or_null(weight);
    float *dx = grad_in ? dr_tensor_data(grad_in) : NULL;
    int64_t nblocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK;
    /* Per-block partial sums of dy * xhat and dy, added in block order at the end. */
    float *pgw = NULL, *pgb = NULL;
    size_t part = (size_t)(nblocks > 0 ? nblocks : 1) * (size_t)(cols > 0 ? cols : 1);
    if (grad_weight) pgw = calloc(part, sizeof(float));
    if (grad_bias) pgb = calloc(part, sizeof(float));
    if ((grad_weight && !pgw) || (grad_bias && !pgb)) {
        free(pgw);
        free(pgb);
        return dr_fail(DR_ERR_OOM, "layer_norm_backward: out of memory for %lld x %lld partial "
                       "sums", (long long)nblocks, (long long)cols);
    }
#pragma omp parallel for schedule(static) if (rows * cols > DR_CPU_PARALLEL_MIN)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        float *gw = pgw ? pgw + blk * cols : NULL, *gb = pgb ? pgb + blk * cols : NULL;
        for (int64_t r = blk * ROW_BLOCK; r < min64(rows, (blk + 1) * ROW_BLOCK); r++) {
            const float *dyr = dy + r * cols, *xr = x + r * cols;
            if (dx) layer_norm_dx_row(dx + r * cols, dyr, xr, w, cols, pm[r], pr[r]);
            if (gw || gb) accumulate_param_grads(gw, gb, dyr, xr, cols, pm[r], pr[r]);
        }
    }
    float *ow = grad_weight ? dr_tensor_data(grad_weight) : NULL;
    float *ob = grad_bias ? dr_tensor_data(grad_bias) : NULL;
#pragma omp parallel for schedule(static) if (nblocks * cols > DR_CPU_PARALLEL_MIN)
    for (int64_t j = 0; j < cols; j++) {
        double sw = 0, sb = 0;
        for (int64_t blk = 0; blk < nblocks; blk++) {
            if (pgw) sw += pgw[blk * cols + j];
            if (pgb) sb += pgb[blk * cols + j];
        }
        if (ow) ow[j] = (float)sw;
        if (ob) ob[j] = (float)sb;
    }
    free(pgw);
    free(pgb);
    return DR_OK;
}

/* ---- group_norm ------------------------------------------------------------------------ */

dr_status dr_cpu_group_norm(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd, const dr_tensor *in,
                            const dr_tensor *weight, const dr_tensor *bias, int64_t n, int64_t c,
                            int64_t hw, int64_t groups, double eps) {
    float *o = dr_tensor_data(out), *pm = dr_tensor_data(mean), *pr = dr_tensor_data(rstd);
    const float *x = dr_tensor_data(in), *w = data_or_null(weight), *b = data_or_null(bias);
    int64_t per = c / groups, slab = per * hw;
#pragma omp parallel for schedule(static) if (n * c * hw > DR_CPU_PARALLEL_MIN)
    for (int64_t task = 0; task < n * groups; task++) {
        int64_t g = task % groups;
        const float *xs = x + task * slab;
        float *os = o + task * slab;
        moments(xs, slab, eps, &pm[task], &pr[task]);
        for (int64_t ci = 0; ci < per; ci++) {
            int64_t ch = g * per + ci;
            float a = pr[task] * (w ? w[ch] : 1.0f);
            float sh = (b ? b[ch] : 0.0f) - pm[task] * a;
            scale_shift(os + ci * hw, xs + ci * hw, hw, a, sh);
        }
    }
    return DR_OK;
}

/* dx = dy rstd w + x c2 + c3 over one channel plane. */
DR_CPU_CLONES
static void group_norm_dx_plane(float *restrict dx, const float *restrict dy,
                                const float *restrict x, int64_t n, float a, float c2, float c3) {
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * a + x[i] * c2 + c3;
}

/* As torch's GroupNormKernel backward: with ds = sum_hw dy x and db = sum_hw dy
 * per (n, c), and per group ds_g = sum_c ds w, db_g = sum_c db w, M = C/G HW:
 *   c2 = (db_g mean - ds_g) rstd^3 / M,   c3 = -c2 mean - db_g rstd / M. */
dr_status dr_cpu_group_norm_backward(dr_tensor *grad_in, dr_tensor *grad_weight,
                                     dr_tensor *grad_bias, const dr_tensor *grad_out,
                                     const dr_tensor *in, const dr_tensor *mean,
                                     const dr_tensor *rstd, const dr_tensor *weight, int64_t n,
                                     int64_t c, int64_t hw, int64_t groups) {
    const float *dy = dr_tensor_data(grad_out), *x = dr_tensor_data(in);
    const float *pm = dr_tensor_data(mean), *pr = dr_tensor_data(rstd), *w = data_or_null(weight);
    float *dx = grad_in ? dr_tensor_data(grad_in) : NULL;
    int64_t per = c / groups, slab = per * hw;
    size_t planes = (size_t)(n * c > 0 ? n * c : 1);
    double *ds = malloc(planes * sizeof(double)), *db = malloc(planes * sizeof(double));
    if (!ds || !db) {
        free(ds);
        free(db);
        return dr_fail(DR_ERR_OOM, "group_norm_backward: out of memory for %lld channel sums",
                       (long long)(n * c));
    }
#pragma omp parallel for schedule(static) if (n * c * hw > DR_CPU_PARALLEL_MIN)
    for (int64_t task = 0; task < n * groups; task++) {
        int64_t g = task % groups, base = task * slab;
        double dsg = 0, dbg = 0;
        for (int64_t ci = 0; ci < per; ci++) {
            int64_t plane = task * per + ci;
            grad_sums(dy + base + ci * hw, NULL, x + base + ci * hw, hw, &db[plane], &ds[plane]);
            double wc = w ? w[g * per + ci] : 1.0;
            dsg += ds[plane] * wc;
            dbg += db[plane] * wc;
        }
        if (!dx) continue;
        double m = pm[task], r = pr[task], inv = 1.0 / (double)(slab > 0 ? slab : 1);
        double c2 = (dbg * m - dsg) * r * r * r * inv;
        double c3 = -c2 * m - dbg * r * inv;
        for (int64_t ci = 0; ci < per; ci++) {
            float a = (float)(r * (w ? w[g * per + ci] : 1.0f));
            group_norm_dx_plane(dx + base + ci * hw, dy + base + ci * hw, x + base + ci * hw, hw,
                                a, (float)c2, (float)c3);
        }
    }
    float *ow = grad_weight ? dr_tensor_data(grad_weight) : NULL;
    float *ob = grad_bias ? dr_tensor_data(grad_bias) : NULL;
    for (int64_t ch = 0; ch < c && (ow || ob); ch++) {
        int64_t g = ch / per;
        double sw = 0, sb = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t plane = i * c + ch, task = i * groups + g;
            sw += (ds[plane] - db[plane] * pm[task]) * pr[task];
            sb += db[plane];
        }
        if (ow) ow[ch] = (float)sw;
        if (ob) ob[ch] = (float)sb;
    }
    free(ds);
    free(db);
    return DR_OK;
}
