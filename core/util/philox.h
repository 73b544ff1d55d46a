/* Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
 * SC'11), the counter-based generator of Random123 and cuRAND. Header-only so the
 * CPU and CUDA backends share one definition and produce identical streams.
 *
 * diffrl's stream layout: element i of a random op with generator (seed, offset)
 * comes from block b = offset + i/4, lane i%4, where a block is
 * philox(counter = {lo(b), hi(b), 0, 0}, key = {lo(seed), hi(seed)}).
 * uniform with b bits (24 for f32, 11 for f16, 8 for bf16, as torch):
 *   (x >> (32 - b)) * 2^-b in [0, 1), exact in the target dtype, so never 1.0.
 * normal: Box-Muller on lanes (0,1) and (2,3), computed in double, rounded to f32. */
#ifndef DR_UTIL_PHILOX_H
#define DR_UTIL_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define DR_HD __host__ __device__ __forceinline__
#else
#define DR_HD static inline
#endif

DR_HD void dr_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

DR_HD float dr_philox_uniform(uint32_t x, uint32_t bits) {
    return (float)(x >> (32 - bits)) * (1.0f / (float)(1u << bits));
}

DR_HD void dr_philox_block(uint64_t block, uint64_t seed, uint32_t out[4]) {
    const uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    dr_philox4x32_10(ctr, key, out);
}

#endif
