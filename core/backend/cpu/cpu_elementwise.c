/* Elementwise binary kernels: add, sub, mul, div over same-dtype, same-shape
 * (possibly stride-0) operands prepared by core/ops/binary.c.
 *
 *   add: out = a + alpha*b     sub: out = a - alpha*b
 *   mul: out = a * b           div: out = a / b   (floats only; ops casts ints)
 * f16/bf16 compute in f32 and round once. Integers wrap on overflow like torch
 * (computed in uint64, so no undefined behaviour); bool add/mul are or/and. */
#include "cpu_internal.h"

static inline float apply_f32(dr_binary_op op, float x, float y, float alpha) {
    switch (op) {
    case DR_OP_ADD: return x + alpha * y;
    case DR_OP_SUB: return x - alpha * y;
    case DR_OP_MUL: return x * y;
    default: return x / y;
    }
}

static inline int64_t apply_i64(dr_binary_op op, int64_t x, int64_t y, int64_t alpha) {
    uint64_t ux = (uint64_t)x, uy = (uint64_t)y, ua = (uint64_t)alpha;
    switch (op) {
    case DR_OP_ADD: return (int64_t)(ux + ua * uy);
    case DR_OP_SUB: return (int64_t)(ux - ua * uy);
    default: return (int64_t)(ux * uy);
    }
}

/* One row of float32 elements, out contiguous, each input contiguous (stride 1)
 * or one value broadcast along the row (stride 0): same-shape operands (one long
 * row), a bias over rows, a per-channel value over pixels. One loop per op and
 * stride pair, so the compiler vectorises each (a switch inside the loop kept it
 * scalar: 3x slower than torch); the same operations per element as apply_f32,
 * so the same bits as the strided loop below. */
#define ROW_LOOPS(EXPR)                                                               \
    do {                                                                              \
        if (sa && sb) {                                                               \
            for (int64_t i = 0; i < n; i++) {                                         \
                float x = a[i], y = b[i];                                             \
                o[i] = (EXPR);                                                        \
            }                                                                         \
        } else if (sa) {                                                              \
            float y = b[0];                                                           \
            for (int64_t i = 0; i < n; i++) {                                         \
                float x = a[i];                                                       \
                o[i] = (EXPR);                                                        \
            }                                                                         \
        } else if (sb) {                                                              \
            float x = a[0];                                                           \
            for (int64_t i = 0; i < n; i++) {                                         \
                float y = b[i];                                                       \
                o[i] = (EXPR);                                                        \
            }                                                                         \
        } else {                                                                      \
            float x = a[0], y = b[0], v = (EXPR);                                     \
            for (int64_t i = 0; i < n; i++) o[i] = v;                                 \
        }                                                                             \
    } while (0)

static void binary_f32_row(dr_binary_op op, float *o, const float *a, int64_t sa,
                           const float *b, int64_t sb, float alpha, int64_t n) {
    switch (op) {
    case DR_OP_ADD:
        if (alpha == 1.0f) ROW_LOOPS(x + y);
        else ROW_LOOPS(x + alpha * y);
        break;
    case DR_OP_SUB:
        if (alpha == 1.0f) ROW_LOOPS(x - y);
        else ROW_LOOPS(x - alpha * y);
        break;
    case DR_OP_MUL: ROW_LOOPS(x * y); break;
    default: ROW_LOOPS(x / y); break;
    }
}
#undef ROW_LOOPS

enum { ROW_PIECE = 1 << 14 }; /* elements of a long row per unit of parallel work */

dr_status dr_cpu_binary(dr_binary_op op, dr_tensor *out, const dr_tensor *a,
                        const dr_tensor *b, double alpha) {
    const dr_tensor *ops[3] = {out, a, b};
    dr_iter it;
    dr_iter_init(&it, 3, ops);
    int32_t dt = out->scalar_type;
    char *o = dr_cpu_base(out);
    const char *pa = dr_cpu_base(a), *pb = dr_cpu_base(b);
    int32_t last = it.ndim - 1;
    int64_t so = it.strides[0][last], sa = it.strides[1][last], sb = it.strides[2][last];

    if (dt == DR_F32 && so == 1 && (sa == 0 || sa == 1) && (sb == 0 || sb == 1)) {
        /* units: rows, long ones cut in pieces (contiguous operands are one row) */
        int64_t pieces = (it.inner + ROW_PIECE - 1) / ROW_PIECE, units = it.rows * pieces;
#pragma omp parallel for schedule(static) if (it.rows * it.inner > DR_CPU_PARALLEL_MIN)
        for (int64_t u = 0; u < units; u++) {
            int64_t off[3], j = u % pieces * ROW_PIECE;
            int64_t len = it.inner - j < ROW_PIECE ? it.inner - j : ROW_PIECE;
            dr_iter_row(&it, u / pieces, off);
            binary_f32_row(op, (float *)o + off[0] + j, (const float *)pa + off[1] + j * sa, sa,
                           (const float *)pb + off[2] + j * sb, sb, (float)alpha, len);
        }
        return DR_OK;
    }
    bool is_float = dr_dtype_is_float(dt);
    int64_t ialpha = dr_f64_to_i64(alpha);
#pragma omp parallel for schedule(static) if (it.rows * it.inner > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < it.rows; r++) {
        int64_t off[3];
        dr_iter_row(&it, r, off);
        if (dt == DR_F32) {
            float *po = (float *)o + off[0];
            const float *xa = (const float *)pa + off[1], *xb = (const float *)pb + off[2];
            for (int64_t i = 0; i < it.inner; i++)
                po[i * so] = apply_f32(op, xa[i * sa], xb[i * sb], (float)alpha);
        } else if (is_float) {
            for (int64_t i = 0; i < it.inner; i++) {
                float x = (float)dr_load_f64(pa, dt, off[1] + i * sa);
                float y = (float)dr_load_f64(pb, dt, off[2] + i * sb);
                dr_store_f64(o, dt, off[0] + i * so, apply_f32(op, x, y, (float)alpha));
            }
        } else {
            for (int64_t i = 0; i < it.inner; i++) {
                int64_t x = dr_load_i64(pa, dt, off[1] + i * sa);
                int64_t y = dr_load_i64(pb, dt, off[2] + i * sb);
                dr_store_i64(o, dt, off[0] + i * so, apply_i64(op, x, y, ialpha));
            }
        }
    }
    return DR_OK;
}
