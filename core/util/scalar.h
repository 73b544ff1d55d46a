/* Reading and writing one element of any storage dtype as double or int64.
 * Conversions follow torch: float to integer truncates toward zero (here without
 * C's undefined behaviour), bool is "!= 0". */
#ifndef DR_UTIL_SCALAR_H
#define DR_UTIL_SCALAR_H

#include <stdint.h>
#include "diffrl.h"
#include "half.h"

static inline double dr_load_f64(const void *p, int32_t dt, int64_t i) {
    switch (dt) {
    case DR_F32: return ((const float *)p)[i];
    case DR_F16: return dr_f16_to_f32(((const uint16_t *)p)[i]);
    case DR_BF16: return dr_bf16_to_f32(((const uint16_t *)p)[i]);
    case DR_I64: return (double)((const int64_t *)p)[i];
    case DR_I32: return ((const int32_t *)p)[i];
    case DR_U8: return ((const uint8_t *)p)[i];
    default: return ((const uint8_t *)p)[i] != 0;
    }
}

static inline int64_t dr_load_i64(const void *p, int32_t dt, int64_t i) {
    switch (dt) {
    case DR_I64: return ((const int64_t *)p)[i];
    case DR_I32: return ((const int32_t *)p)[i];
    case DR_U8: return ((const uint8_t *)p)[i];
    default: return ((const uint8_t *)p)[i] != 0;
    }
}

/* Float to integer truncates toward zero like torch, but without C's undefined
 * behaviour: NaN becomes 0 and out-of-range values saturate. */
static inline int64_t dr_f64_to_i64(double v) {
    if (v != v) return 0;
    if (v >= 9223372036854775807.0) return INT64_MAX;
    if (v <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}

static inline void dr_store_i64(void *p, int32_t dt, int64_t i, int64_t v) {
    switch (dt) {
    case DR_I64: ((int64_t *)p)[i] = v; break;
    case DR_I32: ((int32_t *)p)[i] = (int32_t)(uint32_t)(uint64_t)v; break;
    case DR_U8: ((uint8_t *)p)[i] = (uint8_t)(uint64_t)v; break;
    default: ((uint8_t *)p)[i] = v != 0; break;
    }
}

static inline void dr_store_f64(void *p, int32_t dt, int64_t i, double v) {
    switch (dt) {
    case DR_F32: ((float *)p)[i] = (float)v; break;
    case DR_F16: ((uint16_t *)p)[i] = dr_f32_to_f16((float)v); break;
    case DR_BF16: ((uint16_t *)p)[i] = dr_f32_to_bf16((float)v); break;
    case DR_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    default: dr_store_i64(p, dt, i, dr_f64_to_i64(v)); break;
    }
}

#endif
