/* Shape-family kernels that make values: inclusive scans (cumsum and the
 * reversed scan of its backward) and the ranges of arange / linspace. */
#include "cpu_internal.h"

/* Lines are all coordinates but `dim`; each is scanned by one thread in order,
 * floats in double (torch's CPU accumulate type), integers in wrapping int64. */
dr_status dr_cpu_cumsum(dr_tensor *out, const dr_tensor *in, int32_t dim, int reverse) {
    int32_t nd = in->ndim;
    int64_t len = in->sizes[dim], numel = dr_tensor_numel(in);
    int64_t lines = len > 0 ? numel / len : 0;
    bool is_float = out->scalar_type == DR_F32;
    const char *src = dr_cpu_base(in);
    char *dst = dr_cpu_base(out);
    int64_t in_st = in->strides[dim], out_st = out->strides[dim];
#pragma omp parallel for schedule(static) if (numel > DR_CPU_PARALLEL_MIN)
    for (int64_t line = 0; line < lines; line++) {
        int64_t rem = line, ioff = in->storage_offset, ooff = out->storage_offset;
        for (int32_t d = nd - 1; d >= 0; d--) {
            if (d == dim) continue;
            int64_t c = rem % in->sizes[d];
            rem /= in->sizes[d];
            ioff += c * in->strides[d];
            ooff += c * out->strides[d];
        }
        int64_t k0 = reverse ? len - 1 : 0, step = reverse ? -1 : 1;
        if (is_float) {
            const float *x = (const float *)src + ioff;
            float *y = (float *)dst + ooff;
            double acc = 0;
            for (int64_t n = 0, k = k0; n < len; n++, k += step) {
                acc += x[k * in_st];
                y[k * out_st] = (float)acc;
            }
        } else {
            const int64_t *x = (const int64_t *)src + ioff;
            int64_t *y = (int64_t *)dst + ooff;
            uint64_t acc = 0;
            for (int64_t n = 0, k = k0; n < len; n++, k += step) {
                acc += (uint64_t)x[k * in_st];
                y[k * out_st] = (int64_t)acc;
            }
        }
    }
    return DR_OK;
}

dr_status dr_cpu_fill_range(dr_tensor *out, double start, double step, double end, int linspace) {
    int64_t n = dr_tensor_numel(out);
    int32_t dt = out->scalar_type;
    char *o = dr_cpu_base(out);
    int64_t base = out->storage_offset;
    if (!linspace && !dr_dtype_is_float(dt)) { /* exact integer steps */
        int64_t s0 = dr_f64_to_i64(start), ds = dr_f64_to_i64(step);
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++)
            dr_store_i64(o, dt, base + i, (int64_t)((uint64_t)s0 + (uint64_t)i * (uint64_t)ds));
        return DR_OK;
    }
    int64_t half = n == 1 ? 1 : n / 2; /* one step: start, as torch */
    if (linspace && dt == DR_F32) { /* torch computes float32 linspace in float32 */
        float fs = (float)start, fe = (float)end, fst = n > 1 ? (fe - fs) / (float)(n - 1) : 0;
        float *f = (float *)o + base;
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++)
            f[i] = i < half ? fs + fst * (float)i : fe - fst * (float)(n - 1 - i);
        return DR_OK;
    }
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        double v = !linspace || i < half ? start + (double)i * step
                                         : end - (double)(n - 1 - i) * step;
        dr_store_f64(o, dt, base + i, v);
    }
    return DR_OK;
}
