/* float16 / bfloat16 <-> float32 with round-to-nearest-even, NaN and infinity kept.
 * The f16 conversions are the branch-light bit methods of Maratyszcza's FP16
 * library (MIT); they need IEEE float arithmetic in the default rounding mode,
 * so never compile this with -ffast-math. */
#ifndef DR_UTIL_HALF_H
#define DR_UTIL_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t dr_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float dr_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float dr_f16_to_f32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = dr_f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = dr_f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits = two_w < (1u << 27) ? dr_f32_bits(denormalized) : dr_f32_bits(normalized);
    return dr_f32_from_bits(sign | bits);
}

static inline uint16_t dr_f32_to_f16(float f) {
    float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = dr_f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = dr_f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = dr_f32_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float dr_bf16_to_f32(uint16_t h) { return dr_f32_from_bits((uint32_t)h << 16); }

static inline uint16_t dr_f32_to_bf16(float f) {
    uint32_t u = dr_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif
