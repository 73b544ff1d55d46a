/* The CPU backend table, memory, and the layout kernels (copy with cast, fill). */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

int dr_cpu_intrinsics = 2;

void dr_iter_init(dr_iter *it, int32_t nops, const dr_tensor *const *ops) {
    const dr_tensor *t0 = ops[0];
    int32_t n = 0;
    it->nops = nops;
    for (int32_t k = 0; k < nops; k++) it->base[k] = ops[k]->storage_offset;
    for (int32_t d = 0; d < t0->ndim; d++) {
        if (t0->sizes[d] == 1) continue; /* size-1 dims never move the offset */
        if (n > 0) {
            bool mergeable = true;
            for (int32_t k = 0; k < nops; k++)
                if (it->strides[k][n - 1] != ops[k]->strides[d] * t0->sizes[d]) mergeable = false;
            if (mergeable) {
                it->sizes[n - 1] *= t0->sizes[d];
                for (int32_t k = 0; k < nops; k++) it->strides[k][n - 1] = ops[k]->strides[d];
                continue;
            }
        }
        it->sizes[n] = t0->sizes[d];
        for (int32_t k = 0; k < nops; k++) it->strides[k][n] = ops[k]->strides[d];
        n++;
    }
    if (n == 0) { /* 0-d or all ones: one element */
        it->sizes[0] = 1;
        for (int32_t k = 0; k < nops; k++) it->strides[k][0] = 1;
        n = 1;
    }
    for (int32_t d = 0; d < t0->ndim; d++)
        if (t0->sizes[d] == 0) it->sizes[0] = 0;
    it->ndim = n;
    it->inner = it->sizes[n - 1];
    it->rows = 1;
    for (int32_t d = 0; d < n - 1; d++) it->rows *= it->sizes[d];
    if (it->inner == 0) it->rows = 0;
}

/* Same dtype: move elements of `size` bytes. */
#define DEFINE_COPY_SAME(NAME, T)                                                      \
    static void NAME(const dr_iter *it, char *dst, const char *src) {                  \
        _Pragma("omp parallel for schedule(static) if (it->rows * it->inner > DR_CPU_PARALLEL_MIN)") \
        for (int64_t r = 0; r < it->rows; r++) {                                       \
            int64_t off[2];                                                            \
            dr_iter_row(it, r, off);                                                   \
            T *d = (T *)dst + off[0];                                                  \
            const T *s = (const T *)src + off[1];                                      \
            int64_t ds = it->strides[0][it->ndim - 1], ss = it->strides[1][it->ndim - 1]; \
            if (ds == 1 && ss == 1) memcpy(d, s, (size_t)it->inner * sizeof(T));       \
            else for (int64_t i = 0; i < it->inner; i++) d[i * ds] = s[i * ss];        \
        }                                                                              \
    }
DEFINE_COPY_SAME(copy_same_1, uint8_t)
DEFINE_COPY_SAME(copy_same_2, uint16_t)
DEFINE_COPY_SAME(copy_same_4, uint32_t)
DEFINE_COPY_SAME(copy_same_8, uint64_t)

static dr_status cpu_copy(dr_tensor *dst, const dr_tensor *src) {
    const dr_tensor *ops[2] = {dst, src};
    dr_iter it;
    dr_iter_init(&it, 2, ops);
    char *d = dr_cpu_base(dst);
    const char *s = dr_cpu_base(src);
    int32_t dt = dst->scalar_type, st = src->scalar_type;
    if (dt == st) {
        switch (dr_dtype_size(dt)) {
        case 1: copy_same_1(&it, d, s); break;
        case 2: copy_same_2(&it, d, s); break;
        case 4: copy_same_4(&it, d, s); break;
        default: copy_same_8(&it, d, s); break;
        }
        return DR_OK;
    }
    bool via_int = !dr_dtype_is_float(dt) && !dr_dtype_is_float(st);
    int64_t ds = it.strides[0][it.ndim - 1], ss = it.strides[1][it.ndim - 1];
#pragma omp parallel for schedule(static) if (it.rows * it.inner > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < it.rows; r++) {
        int64_t off[2];
        dr_iter_row(&it, r, off);
        for (int64_t i = 0; i < it.inner; i++) {
            int64_t di = off[0] + i * ds, si = off[1] + i * ss;
            if (via_int) dr_store_i64(d, dt, di, dr_load_i64(s, st, si));
            else dr_store_f64(d, dt, di, dr_load_f64(s, st, si));
        }
    }
    return DR_OK;
}

#define DEFINE_FILL_CONTIG(NAME, T)                                                    \
    static void NAME(T *p, T v, int64_t n) {                                           \
        _Pragma("omp parallel for schedule(static) if (n > DR_CPU_PARALLEL_MIN)")      \
        for (int64_t i = 0; i < n; i++) p[i] = v;                                      \
    }
DEFINE_FILL_CONTIG(fill_contig_1, uint8_t)
DEFINE_FILL_CONTIG(fill_contig_2, uint16_t)
DEFINE_FILL_CONTIG(fill_contig_4, uint32_t)
DEFINE_FILL_CONTIG(fill_contig_8, uint64_t)

static dr_status cpu_fill(dr_tensor *t, double value) {
    if (dr_tensor_is_contiguous(t)) {
        union { uint8_t b1; uint16_t b2; uint32_t b4; uint64_t b8; } v = {0};
        dr_store_f64(&v, t->scalar_type, 0, value);
        void *p = dr_tensor_data(t);
        int64_t n = dr_tensor_numel(t);
        switch (dr_dtype_size(t->scalar_type)) {
        case 1: fill_contig_1(p, v.b1, n); break;
        case 2: fill_contig_2(p, v.b2, n); break;
        case 4: fill_contig_4(p, v.b4, n); break;
        default: fill_contig_8(p, v.b8, n); break;
        }
        return DR_OK;
    }
    /* Strided: convert once into a 1-element tensor, then broadcast-copy it. */
    uint64_t scalar_bits = 0;
    dr_storage storage = {.refcount = 1, .device = t->device, .data = &scalar_bits,
                          .nbytes = sizeof scalar_bits};
    dr_tensor scalar;
    memset(&scalar, 0, sizeof scalar);
    scalar.ndim = t->ndim;
    scalar.scalar_type = t->scalar_type;
    scalar.device = t->device;
    scalar.storage = &storage;
    for (int32_t d = 0; d < t->ndim; d++) scalar.sizes[d] = t->sizes[d];
    dr_store_f64(&scalar_bits, t->scalar_type, 0, value);
    return cpu_copy(t, &scalar);
}

const dr_backend dr_cpu_backend = {
    .name = "cpu",
    .alloc = dr_cpu_alloc,
    .dealloc = dr_cpu_dealloc,
    .copy = cpu_copy,
    .fill = cpu_fill,
    .binary = dr_cpu_binary,
    .matmul = dr_cpu_matmul,
    .sum = dr_cpu_sum,
    /* ---- nn: attention ---- */
    .attention = dr_cpu_attention,
    .attention_backward = dr_cpu_attention_backward,
    /* ---- shape and indexing ---- */
    .index_check = dr_cpu_index_check,
    .index_select = dr_cpu_index_select,
    .index_add = dr_cpu_index_add,
    .gather = dr_cpu_gather,
    .scatter_add = dr_cpu_scatter_add,
    .where = dr_cpu_where,
    .moments = dr_cpu_moments,
    .argreduce = dr_cpu_argreduce,
    .extreme_backward = dr_cpu_extreme_backward,
    .cumsum = dr_cpu_cumsum,
    .fill_range = dr_cpu_fill_range,
    .randint = dr_cpu_randint,
    .dropout_mask = dr_cpu_dropout_mask,
    .masked_scale = dr_cpu_masked_scale,
    .adamw = dr_cpu_adamw,
    .sgd = dr_cpu_sgd,
    .lerp = dr_cpu_lerp,
    .scale = dr_cpu_scale,
    .sum_squares = dr_cpu_sum_squares,
    /* ---- nn: convolution and resampling ---- */
    .conv2d = dr_cpu_conv2d,
    .conv2d_backward_input = dr_cpu_conv2d_backward_input,
    .conv2d_backward_weight = dr_cpu_conv2d_backward_weight,
    .upsample_nearest2d = dr_cpu_upsample_nearest2d,
    .upsample_nearest2d_backward = dr_cpu_upsample_nearest2d_backward,
    .avg_pool2d = dr_cpu_avg_pool2d,
    .avg_pool2d_backward = dr_cpu_avg_pool2d_backward,
    /* ---- nn: normalization, softmax, unary math ---- */
    .unary = dr_cpu_unary,
    .unary_backward = dr_cpu_unary_backward,
    .softmax = dr_cpu_softmax,
    .softmax_backward = dr_cpu_softmax_backward,
    .layer_norm = dr_cpu_layer_norm,
    .layer_norm_backward = dr_cpu_layer_norm_backward,
    .group_norm = dr_cpu_group_norm,
    .group_norm_backward = dr_cpu_group_norm_backward,
    .random = dr_cpu_random,
};
