/* Philox kernels of ops/random_more.c (randint, the dropout mask) and the masked
 * scaling dropout applies forward and backward. The stream layouts are given in
 * ops/random_more.c and must match any other backend bit for bit. */
#include "cpu_internal.h"
#include "../../util/philox.h"

dr_status dr_cpu_randint(dr_tensor *out, int64_t low, uint64_t range, uint64_t seed,
                         uint64_t offset) {
    int64_t *o = (int64_t *)dr_cpu_base(out) + out->storage_offset;
    int64_t n = dr_tensor_numel(out);
    bool wide = range > ((uint64_t)1 << 32);
    int per_block = wide ? 2 : 4;
    int64_t nblocks = (n + per_block - 1) / per_block;
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN / 8)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        uint32_t x[4];
        dr_philox_block(offset + (uint64_t)blk, seed, x);
        int64_t i0 = blk * per_block;
        for (int l = 0; l < per_block && i0 + l < n; l++) {
            uint64_t draw;
            if (wide) {
                uint64_t bits = (uint64_t)x[2 * l] | (uint64_t)x[2 * l + 1] << 32;
                draw = (uint64_t)(((unsigned __int128)bits * range) >> 64);
            } else {
                draw = ((uint64_t)x[l] * range) >> 32;
            }
            o[i0 + l] = (int64_t)((uint64_t)low + draw);
        }
    }
    return DR_OK;
}

dr_status dr_cpu_dropout_mask(dr_tensor *mask, double p, uint64_t seed, uint64_t offset) {
    uint8_t *m = (uint8_t *)dr_cpu_base(mask) + mask->storage_offset;
    int64_t n = dr_tensor_numel(mask);
    int64_t nblocks = (n + 3) / 4;
    double keep = 1.0 - p;
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN / 8)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        uint32_t x[4];
        dr_philox_block(offset + (uint64_t)blk, seed, x);
        int64_t i0 = blk * 4;
        for (int l = 0; l < 4 && i0 + l < n; l++)
            m[i0 + l] = (double)dr_philox_uniform(x[l], 24) < keep;
    }
    return DR_OK;
}

dr_status dr_cpu_masked_scale(dr_tensor *out, const dr_tensor *in, const dr_tensor *mask,
                              double scale) {
    const dr_tensor *ops[3] = {out, in, mask};
    dr_iter it;
    dr_iter_init(&it, 3, ops);
    int32_t dt = out->scalar_type, last = it.ndim - 1;
    int64_t so = it.strides[0][last], si = it.strides[1][last], sm = it.strides[2][last];
    char *o = dr_cpu_base(out);
    const char *x = dr_cpu_base(in);
    const uint8_t *m = (const uint8_t *)dr_cpu_base(mask);
    float s = (float)scale;
#pragma omp parallel for schedule(static) if (it.rows * it.inner > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < it.rows; r++) {
        int64_t off[3];
        dr_iter_row(&it, r, off);
        if (dt == DR_F32) {
            float *po = (float *)o + off[0];
            const float *px = (const float *)x + off[1];
            const uint8_t *pm = m + off[2];
            for (int64_t i = 0; i < it.inner; i++) po[i * so] = px[i * si] * (pm[i * sm] ? s : 0.0f);
        } else {
            for (int64_t i = 0; i < it.inner; i++) {
                float v = (float)dr_load_f64(x, dt, off[1] + i * si);
                dr_store_f64(o, dt, off[0] + i * so, v * (m[off[2] + i * sm] ? s : 0.0f));
            }
        }
    }
    return DR_OK;
}
