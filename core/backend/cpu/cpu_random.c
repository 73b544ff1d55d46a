/* Philox streams on the CPU; the layout is documented in util/philox.h and must
 * match the CUDA kernels bit for bit. */
#include <math.h>

#include "cpu_internal.h"
#include "../../util/philox.h"

/* Box-Muller on two 24-bit uniforms; u1 in (0, 1] so log(u1) is finite. */
static inline void box_muller(uint32_t x0, uint32_t x1, float *z0, float *z1) {
    double u1 = ((double)(x0 >> 8) + 1.0) * 0x1.0p-24;
    double u2 = (double)(x1 >> 8) * 0x1.0p-24;
    double r = sqrt(-2.0 * log(u1));
    double theta = 6.283185307179586476925 * u2;
    *z0 = (float)(r * cos(theta));
    *z1 = (float)(r * sin(theta));
}

dr_status dr_cpu_random(dr_tensor *out, dr_random_kind kind, uint64_t seed, uint64_t offset,
                        uint32_t uniform_bits) {
    float *o = (float *)dr_cpu_base(out) + out->storage_offset;
    int64_t n = dr_tensor_numel(out);
    int64_t nblocks = (n + 3) / 4;
#pragma omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN / 8)
    for (int64_t blk = 0; blk < nblocks; blk++) {
        uint32_t x[4];
        float v[4];
        dr_philox_block(offset + (uint64_t)blk, seed, x);
        if (kind == DR_RANDOM_NORMAL) {
            box_muller(x[0], x[1], &v[0], &v[1]);
            box_muller(x[2], x[3], &v[2], &v[3]);
        } else {
            for (int l = 0; l < 4; l++) v[l] = dr_philox_uniform(x[l], uniform_bits);
        }
        int64_t i0 = blk * 4;
        for (int l = 0; l < 4 && i0 + l < n; l++) o[i0 + l] = v[l];
    }
    return DR_OK;
}
