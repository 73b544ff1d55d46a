/* Optimizer kernels: one fused pass per parameter (math in core/ops/optim.c). */
#include <math.h>
#include <stdlib.h>

#include "cpu_internal.h"

static float *f32(const dr_tensor *t) { return (float *)dr_tensor_data(t); }

dr_status dr_cpu_adamw(dr_tensor *param, const dr_tensor *grad, dr_tensor *exp_avg,
                       dr_tensor *exp_avg_sq, const double *hyper) {
    float *p = f32(param), *m = f32(exp_avg), *v = f32(exp_avg_sq);
    const float *g = f32(grad);
    const float decay = (float)hyper[0], b1 = (float)hyper[1], b2 = (float)hyper[2];
    const float step_size = (float)hyper[3], inv_sqrt_bc2 = (float)hyper[4], eps = (float)hyper[5];
    int64_t n = dr_tensor_numel(param);
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + (1 - b1) * gi;
        float vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
    return DR_OK;
}

dr_status dr_cpu_sgd(dr_tensor *param, const dr_tensor *grad, dr_tensor *buf, const double *hyper) {
    float *p = f32(param), *b = buf ? f32(buf) : NULL;
    const float *g = f32(grad);
    const float lr = (float)hyper[0], mom = (float)hyper[1], damp = (float)hyper[2];
    const float wd = (float)hyper[3];
    const bool nesterov = hyper[4] != 0, first = hyper[5] != 0;
    int64_t n = dr_tensor_numel(param);
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float d = g[i] + wd * p[i];
        if (b) {
            float bi = first ? d : mom * b[i] + (1 - damp) * d;
            b[i] = bi;
            d = nesterov ? d + mom * bi : bi;
        }
        p[i] -= lr * d;
    }
    return DR_OK;
}

dr_status dr_cpu_lerp(dr_tensor *self, const dr_tensor *end, double weight) {
    float *s = f32(self);
    const float *e = f32(end), w = (float)weight;
    int64_t n = dr_tensor_numel(self);
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) s[i] += w * (e[i] - s[i]);
    return DR_OK;
}

dr_status dr_cpu_scale(dr_tensor *self, double s) {
    float *p = f32(self), k = (float)s;
    int64_t n = dr_tensor_numel(self);
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) p[i] *= k;
    return DR_OK;
}

/* Fixed blocks summed in order: the same bits for any thread count. */
enum { BLOCK = 16384 };

dr_status dr_cpu_sum_squares(const dr_tensor *t, double *out) {
    const float *p = f32(t);
    int64_t n = dr_tensor_numel(t), nblocks = (n + BLOCK - 1) / BLOCK;
    double *part = malloc((size_t)(nblocks > 0 ? nblocks : 1) * sizeof(double));
    if (!part) return dr_fail(DR_ERR_OOM, "sum_squares: out of memory for %lld partial sums",
                              (long long)nblocks);
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t b = 0; b < nblocks; b++) {
        double s = 0;
        int64_t end = (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
        for (int64_t i = b * BLOCK; i < end; i++) s += (double)p[i] * p[i];
        part[b] = s;
    }
    double total = 0;
    for (int64_t b = 0; b < nblocks; b++) total += part[b];
    free(part);
    *out = total;
    return DR_OK;
}
