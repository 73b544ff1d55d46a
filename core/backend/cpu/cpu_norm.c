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
#include <string.h>

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

/* Sums of g and g (x - mean) over n elements, g = dy * w (w NULL: g = dy), in
 * float inside a chunk and double across chunks. Centring on the known mean
 * (rather than sum(g x) - mean sum(g), torch's form) avoids cancellation when
 * |mean| >> std. */
DR_CPU_CLONES
static void grad_sums_chunk(const float *restrict dy, const float *restrict w,
                            const float *restrict x, int64_t n, float mean, float *sg,
                            float *sgx) {
    float a = 0.0f, b = 0.0f;
    if (w) {
#pragma omp simd reduction(+ : a, b)
        for (int64_t i = 0; i < n; i++) {
            float g = dy[i] * w[i];
            a += g;
            b += g * (x[i] - mean);
        }
    } else {
#pragma omp simd reduction(+ : a, b)
        for (int64_t i = 0; i < n; i++) {
            a += dy[i];
            b += dy[i] * (x[i] - mean);
        }
    }
    *sg = a;
    *sgx = b;
}

static void grad_sums(const float *dy, const float *w, const float *x, int64_t n, float mean,
                      double *sg, double *sgx) {
    double a = 0, b = 0;
    for (int64_t j = 0; j < n; j += CHUNK) {
        float ca, cb;
        grad_sums_chunk(dy + j, w ? w + j : NULL, x + j, min64(CHUNK, n - j), mean, &ca, &cb);
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

/* One row of the backward in one pass after the sums:
 *   dx = rstd (g - mean(g) - xhat mean(g xhat)),  g = dy w,  xhat = (x - mean) rstd
 *   gw += dy xhat,  gb += dy   (this row's share of the parameter gradients).
 * The flags are constants at each call site below, so every combination
 * compiles to its own branch-free loop. */
static inline __attribute__((always_inline)) void
layer_norm_row_backward(float *restrict dx, float *restrict gw, float *restrict gb,
                        const float *restrict dy, const float *restrict x,
                        const float *restrict w, int64_t n, float mean, float rstd,
                        const int has_w, const int want_dx, const int want_gw,
                        const int want_gb) {
    float a = 0.0f, bq = 0.0f;
    if (want_dx) {
        double sg, sgc;
        grad_sums(dy, has_w ? w : NULL, x, n, mean, &sg, &sgc);
        a = (float)(sg / (double)n);
        bq = (float)(sgc * rstd / (double)n);
    }
    for (int64_t i = 0; i < n; i++) {
        float xhat = (x[i] - mean) * rstd;
        if (want_dx) dx[i] = rstd * ((has_w ? dy[i] * w[i] : dy[i]) - a - xhat * bq);
        if (want_gw) gw[i] += dy[i] * xhat;
        if (want_gb) gb[i] += dy[i];
    }
}

/* Rows [r0, r1) of the backward; gw/gb: this block's partial sums. */
DR_CPU_CLONES
static void layer_norm_rows_backward(float *dx, float *gw, float *gb, const float *dy,
                                     const float *x, const float *w, const float *pm,
                                     const float *pr, int64_t r0, int64_t r1, int64_t n) {
    int has_w = w != NULL, mode = (dx != NULL) * 4 + (gw != NULL) * 2 + (gb != NULL);
    for (int64_t r = r0; r < r1; r++) {
        float *dxr = dx ? dx + r * n : NULL;
        const float *dyr = dy + r * n, *xr = x + r * n;
#define ROW(HW, DX, GW, GB) \
    layer_norm_row_backward(dxr, gw, gb, dyr, xr, w, n, pm[r], pr[r], HW, DX, GW, GB)
        if (has_w) {
            switch (mode) {
            case 7: ROW(1, 1, 1, 1); break;
            case 4: ROW(1, 1, 0, 0); break;
            default: ROW(1, dx != NULL, gw != NULL, gb != NULL); break;
            }
        } else {
            switch (mode) {
            case 7: ROW(0, 1, 1, 1); break;
            case 4: ROW(0, 1, 0, 0); break;
            default: ROW(0, dx != NULL, gw != NULL, gb != NULL); break;
            }
        }
#undef ROW
    }
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
    /* Per-block partial sums of dy * xhat and dy, added in block order at the end;
     * from the block cache (a fresh calloc of this size is mmapped, page-faulted and
     * unmapped every call), each block zeroing its own. */
    float *pgw = NULL, *pgb = NULL;
    size_t part = (size_t)(nblocks > 0 ? nblocks : 1) * (size_t)(cols > 0 ? cols : 1);
    size_t nparts = (grad_weight != NULL) + (grad_bias != NULL);
    size_t part_bytes = nparts * part * sizeof(float);
    void *mem = NULL;
    if (nparts > 0 && dr_cpu_alloc(0, part_bytes, &mem) != DR_OK)
        return dr_fail(DR_ERR_OOM, "layer_norm_backward: out of memory for %lld x %lld partial "
                       "sums", (long long)nblocks, (long long)cols);
    if (grad_weight) pgw = mem;
    if (grad_bias) pgb = (float *)mem + (grad_weight ? part : 0);
#pragma omp parallel for schedule(static) if (rows * cols > DR_CPU_PARALLEL_MIN)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        float *gw = pgw ? pgw + blk * cols : NULL, *gb = pgb ? pgb + blk * cols : NULL;
        if (gw) memset(gw, 0, (size_t)cols * sizeof(float));
        if (gb) memset(gb, 0, (size_t)cols * sizeof(float));
        layer_norm_rows_backward(dx, gw, gb, dy, x, w, pm, pr, blk * ROW_BLOCK,
                                 min64(rows, (blk + 1) * ROW_BLOCK), cols);
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
    if (mem) dr_cpu_dealloc(0, mem, part_bytes);
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

/* dx = dy a + (x - mean) c2 + c3 over one channel plane. */
DR_CPU_CLONES
static void group_norm_dx_plane(float *restrict dx, const float *restrict dy,
                                const float *restrict x, int64_t n, float a, float mean,
                                float c2, float c3) {
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * a + (x[i] - mean) * c2 + c3;
}

/* torch's GroupNormKernel backward, centred on the mean: with ds = sum_hw dy
 * (x - mean) and db = sum_hw dy per (n, c), per group ds_g = sum_c ds w and
 * db_g = sum_c db w, and M = C/G HW:
 *   dx = dy rstd w + (x - mean) c2 + c3,  c2 = -ds_g rstd^3 / M,  c3 = -db_g rstd / M
 *   dw_c = sum_n ds rstd,  db_c = sum_n db. */
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
            grad_sums(dy + base + ci * hw, NULL, x + base + ci * hw, hw, pm[task], &db[plane],
                      &ds[plane]);
            double wc = w ? w[g * per + ci] : 1.0;
            dsg += ds[plane] * wc;
            dbg += db[plane] * wc;
        }
        if (!dx) continue;
        double r = pr[task], inv = 1.0 / (double)(slab > 0 ? slab : 1);
        float c2 = (float)(-dsg * r * r * r * inv), c3 = (float)(-dbg * r * inv);
        for (int64_t ci = 0; ci < per; ci++) {
            float a = (float)(r * (w ? w[g * per + ci] : 1.0f));
            group_norm_dx_plane(dx + base + ci * hw, dy + base + ci * hw, x + base + ci * hw, hw,
                                a, pm[task], c2, c3);
        }
    }
    float *ow = grad_weight ? dr_tensor_data(grad_weight) : NULL;
    float *ob = grad_bias ? dr_tensor_data(grad_bias) : NULL;
    for (int64_t ch = 0; ch < c && (ow || ob); ch++) {
        int64_t g = ch / per;
        double sw = 0, sb = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t plane = i * c + ch, task = i * groups + g;
            sw += ds[plane] * pr[task];
            sb += db[plane];
        }
        if (ow) ow[ch] = (float)sw;
        if (ob) ob[ch] = (float)sb;
    }
    free(ds);
    free(db);
    return DR_OK;
}
