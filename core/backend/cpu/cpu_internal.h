/* Helpers shared by the CPU kernels: strided iteration, kernel entry points. */
#ifndef DR_CPU_INTERNAL_H
#define DR_CPU_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include "../../tensor/tensor_internal.h"
#include "../../util/scalar.h"
#include "../backend.h"

/* Below this many elements a kernel runs on one thread: waking the pool costs more. */
enum { DR_CPU_PARALLEL_MIN = 32768 };

/* Up to three same-shape operands, dims collapsed where every operand is
 * contiguous across them. Rows are all dims but the last; kernels run the last
 * dim as a strided inner loop and parallelise over rows. */
typedef struct dr_iter {
    int32_t ndim;
    int32_t nops;
    int64_t sizes[DR_MAX_DIMS];
    int64_t strides[3][DR_MAX_DIMS];
    int64_t base[3];
    int64_t rows, inner;
} dr_iter;

void dr_iter_init(dr_iter *it, int32_t nops, const dr_tensor *const *ops);

static inline void dr_iter_row(const dr_iter *it, int64_t row, int64_t *off) {
    for (int32_t k = 0; k < it->nops; k++) off[k] = it->base[k];
    for (int32_t d = it->ndim - 2; d >= 0; d--) {
        int64_t i = row % it->sizes[d];
        row /= it->sizes[d];
        for (int32_t k = 0; k < it->nops; k++) off[k] += i * it->strides[k][d];
    }
}

/* The hand-written AVX2 + FMA loops (with cpu_vecmath.h's dr_vexpf8: attention's
 * softmax tiles, silu, softmax over the last dim; and the GEMM's kernel) stand in
 * for compiler-vectorised loops and must give their bits. They run where the CPU
 * is x86-64-v3, this switch is 1 or more, and a probe found the two loops equal
 * on this build: the compiled loops' rounding depends on the compiler and its
 * optimisation (GCC fuses a multiply and an add into one FMA at -O2 and above,
 * which the intrinsics copy; a Debug build does not), so each file checks its pair
 * once on fixed inputs and keeps the compiled loops where they differ. Where the
 * CPU is x86-64-v4 and the switch is 2 (the default), the loops that have an
 * AVX-512 version run that, the same operations on 16 lanes, so the same bits:
 * silu's, exact gelu's and softmax's rows (hand-written), every unary op's
 * (compiled for x86-64-v4, probed against the clones) and the GEMM's kernel on
 * pairs of panels. Tests set 0 (compiled loops) and 1 (AVX2 only) to compare. */
extern int dr_cpu_intrinsics;

static inline int dr_cpu_use_v3(void) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    return dr_cpu_intrinsics && __builtin_cpu_supports("x86-64-v3");
#else
    return 0;
#endif
}

static inline int dr_cpu_use_v4(void) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    return dr_cpu_intrinsics >= 2 && __builtin_cpu_supports("x86-64-v4");
#else
    return 0;
#endif
}

/* Whether a family's hand-written loops run: dr_cpu_use_v3(), and the probe's
 * verdict, computed on first use (state: 0 not yet, 1 equal, 2 not). A race only
 * runs the deterministic probe twice. */
static inline int dr_cpu_probe(int *state, int (*probe)(void)) {
    if (!dr_cpu_use_v3()) return 0;
    int s = __atomic_load_n(state, __ATOMIC_ACQUIRE);
    if (s == 0) {
        s = probe() ? 1 : 2;
        __atomic_store_n(state, s, __ATOMIC_RELEASE);
    }
    return s == 1;
}

/* Whether each family's hand-written loops run (switch, CPU and probe). */
int dr_cpu_attention_v3(void);
int dr_cpu_silu_v3(void);
int dr_cpu_silu_v4(void);
int dr_cpu_gelu_v4(void);
int dr_cpu_unary_v4(void);
int dr_cpu_softmax_v3(void);
int dr_cpu_softmax_v4(void);

/* Fixed probe inputs: n floats in (-20, 20), none NaN. */
static inline void dr_cpu_probe_values(float *x, int n) {
    for (int i = 0; i < n; i++)
        x[i] = (float)((uint32_t)(i + 1) * 2654435761u % 100003u) * (40.0f / 100003.0f) - 20.0f;
}

static inline char *dr_cpu_base(const dr_tensor *t) { return (char *)t->storage->data; }

dr_status dr_cpu_adamw(dr_tensor *param, const dr_tensor *grad, dr_tensor *exp_avg,
                       dr_tensor *exp_avg_sq, const double *hyper);
dr_status dr_cpu_sgd(dr_tensor *param, const dr_tensor *grad, dr_tensor *buf, const double *hyper);
dr_status dr_cpu_lerp(dr_tensor *self, const dr_tensor *end, double weight);
dr_status dr_cpu_scale(dr_tensor *self, double s);
dr_status dr_cpu_sum_squares(const dr_tensor *t, double *out);
dr_status dr_cpu_alloc(int32_t device_index, size_t nbytes, void **ptr);
void dr_cpu_dealloc(int32_t device_index, void *ptr, size_t nbytes);
void dr_cpu_empty_cache(void);
dr_status dr_cpu_binary(dr_binary_op op, dr_tensor *out, const dr_tensor *a,
                        const dr_tensor *b, double alpha);
dr_status dr_cpu_matmul(dr_tensor *out, const dr_tensor *a, const dr_tensor *b);
dr_status dr_cpu_sum(dr_tensor *out, const dr_tensor *in, int32_t nreduce);
dr_status dr_cpu_random(dr_tensor *out, dr_random_kind kind, uint64_t seed, uint64_t offset,
                        uint32_t uniform_bits);
/* ---- GEMM with a fixed summation order (cpu_gemm.c) ---- */
enum { DR_GEMM_MR = 6, DR_GEMM_NR = 16, DR_GEMM_KC = 256 };
/* Rows a panel of B packed for depth k takes: k and one or two unused, so that
 * panels never start a multiple of 4 KiB apart (they would share L1 sets, and the
 * packing, which writes a row of every panel in turn, would thrash them). */
static inline int64_t dr_gemm_b_rows(int64_t k) { return k + 1 + ((k + 1) % 64 == 0); }
/* Where B[p][j] goes in B packed for depth k: panels of NR columns, each
 * dr_gemm_b_rows(k) rows of NR floats; the last panel is padded with zeros to NR
 * columns. A B of n columns takes ceil(n / NR) NR dr_gemm_b_rows(k) floats. */
static inline int64_t dr_gemm_b_index(int64_t k, int64_t p, int64_t j) {
    return ((j / DR_GEMM_NR) * dr_gemm_b_rows(k) + p) * DR_GEMM_NR + j % DR_GEMM_NR;
}
/* c[m x n] (row stride ldc) += A B (overwrite: = A B, c not read), A[i][p] =
 * a[i rsa + p csa], B packed for depth k; the bits of each element of c do not
 * depend on m, n or how a product is split into calls over m and n, nor on a split
 * of k into calls at multiples of DR_GEMM_KC (the GEMM sums blocks of that depth,
 * in order; cpu_gemm.c). */
void dr_gemm_packed_b(int64_t m, int64_t n, int64_t k, const float *a, int64_t rsa, int64_t csa,
                      const float *pb, float *c, int64_t ldc, bool overwrite);
/* The same with A packed by dr_gemm_pack_a for `depth` columns; pa points at the
 * first column used (packed + p0 DR_GEMM_MR for columns [p0, p0 + k)). */
void dr_gemm_packed_ab(int64_t m, int64_t n, int64_t k, const float *pa, int64_t depth,
                       const float *pb, float *c, int64_t ldc, bool overwrite);
/* A[m x k] (A[i][p] = a[i rsa + p csa]) as columns [p0, p0 + k) of A packed for
 * `depth` columns: panels of MR rows, each depth columns of MR floats (rows past m
 * zero), ceil(m / MR) MR depth floats in all. */
void dr_gemm_pack_a(float *dst, int64_t depth, int64_t p0, const float *a, int64_t rsa,
                    int64_t csa, int64_t m, int64_t k);
/* dst = B[k x n] (B[p][j] = b[p rsb + j csb]) packed for depth k. */
void dr_gemm_pack_b(float *dst, const float *b, int64_t rsb, int64_t csb, int64_t k, int64_t n);
/* ---- nn: convolution and resampling (cpu_conv.c, cpu_pool.c) ---- */
dr_status dr_cpu_conv2d(dr_tensor *out, const dr_tensor *in, const dr_tensor *weight,
                        const dr_tensor *bias, const int64_t *stride, const int64_t *padding,
                        const int64_t *dilation, int64_t groups);
dr_status dr_cpu_conv2d_backward_input(dr_tensor *grad_in, const dr_tensor *grad_out,
                                       const dr_tensor *weight, const int64_t *stride,
                                       const int64_t *padding, const int64_t *dilation,
                                       int64_t groups);
dr_status dr_cpu_conv2d_backward_weight(dr_tensor *grad_weight, dr_tensor *grad_bias,
                                        const dr_tensor *grad_out, const dr_tensor *in,
                                        const int64_t *stride, const int64_t *padding,
                                        const int64_t *dilation, int64_t groups);
dr_status dr_cpu_upsample_nearest2d(dr_tensor *out, const dr_tensor *in);
dr_status dr_cpu_upsample_nearest2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out);
dr_status dr_cpu_avg_pool2d(dr_tensor *out, const dr_tensor *in, const int64_t *kernel,
                            const int64_t *stride, const int64_t *padding);
dr_status dr_cpu_avg_pool2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out,
                                     const int64_t *kernel, const int64_t *stride,
                                     const int64_t *padding);
/* ---- nn: normalization, softmax, unary math (cpu_norm.c, cpu_softmax.c, cpu_unary.c) ---- */
dr_status dr_cpu_unary(dr_unary_op op, dr_tensor *out, const dr_tensor *in, double p0, double p1);
dr_status dr_cpu_unary_backward(dr_unary_op op, dr_tensor *grad_in, const dr_tensor *grad_out,
                                const dr_tensor *saved, double p0, double p1);
dr_status dr_cpu_softmax(dr_tensor *out, const dr_tensor *in, int32_t dim, int log);
dr_status dr_cpu_softmax_backward(dr_tensor *grad_in, const dr_tensor *grad_out,
                                  const dr_tensor *y, int32_t dim, int log);
dr_status dr_cpu_layer_norm(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd, const dr_tensor *in,
                            const dr_tensor *weight, const dr_tensor *bias, int64_t rows,
                            int64_t cols, double eps);
dr_status dr_cpu_layer_norm_backward(dr_tensor *grad_in, dr_tensor *grad_weight,
                                     dr_tensor *grad_bias, const dr_tensor *grad_out,
                                     const dr_tensor *in, const dr_tensor *mean,
                                     const dr_tensor *rstd, const dr_tensor *weight,
                                     int64_t rows, int64_t cols);
dr_status dr_cpu_group_norm(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd, const dr_tensor *in,
                            const dr_tensor *weight, const dr_tensor *bias, int64_t n, int64_t c,
                            int64_t hw, int64_t groups, double eps);
dr_status dr_cpu_group_norm_backward(dr_tensor *grad_in, dr_tensor *grad_weight,
                                     dr_tensor *grad_bias, const dr_tensor *grad_out,
                                     const dr_tensor *in, const dr_tensor *mean,
                                     const dr_tensor *rstd, const dr_tensor *weight, int64_t n,
                                     int64_t c, int64_t hw, int64_t groups);

/* ---- shape and indexing (cpu_index.c, cpu_shape.c, cpu_reduce_more.c, cpu_random_more.c) ---- */
dr_status dr_cpu_index_check(const dr_tensor *index, int64_t size, int64_t *bad, int *found);
dr_status dr_cpu_index_select(dr_tensor *out, const dr_tensor *in, const dr_tensor *index,
                              int64_t outer, int64_t inner);
dr_status dr_cpu_index_add(dr_tensor *grad_in, const dr_tensor *grad_out, const dr_tensor *index,
                           int64_t outer, int64_t inner);
dr_status dr_cpu_gather(dr_tensor *out, const dr_tensor *in, int32_t dim, const dr_tensor *index);
dr_status dr_cpu_scatter_add(dr_tensor *grad_in, int32_t dim, const dr_tensor *index,
                             const dr_tensor *grad_out);
dr_status dr_cpu_where(dr_tensor *out, const dr_tensor *cond, const dr_tensor *a,
                       const dr_tensor *b);
dr_status dr_cpu_moments(dr_tensor *mean, dr_tensor *var, const dr_tensor *in, int32_t nreduce,
                         double correction, int take_sqrt);
dr_status dr_cpu_argreduce(dr_tensor *values, dr_tensor *indices, const dr_tensor *in, int is_min);
dr_status dr_cpu_extreme_backward(dr_tensor *grad_in, const dr_tensor *in, double value, double g);
dr_status dr_cpu_cumsum(dr_tensor *out, const dr_tensor *in, int32_t dim, int reverse);
dr_status dr_cpu_fill_range(dr_tensor *out, double start, double step, double end, int linspace);
dr_status dr_cpu_randint(dr_tensor *out, int64_t low, uint64_t range, uint64_t seed,
                         uint64_t offset);
dr_status dr_cpu_dropout_mask(dr_tensor *mask, double p, uint64_t seed, uint64_t offset);
dr_status dr_cpu_masked_scale(dr_tensor *out, const dr_tensor *in, const dr_tensor *mask,
                              double scale);

/* ---- nn: attention (cpu_attention.c) ---- */
dr_status dr_cpu_attention(dr_tensor *out, dr_tensor *lse, const dr_tensor *q, const dr_tensor *k,
                           const dr_tensor *v, const dr_tensor *mask, int causal, double scale);
dr_status dr_cpu_attention_backward(dr_tensor *grad_q, dr_tensor *grad_k, dr_tensor *grad_v,
                                    const dr_tensor *grad_out, const dr_tensor *q,
                                    const dr_tensor *k, const dr_tensor *v,
                                    const dr_tensor *mask, const dr_tensor *out,
                                    const dr_tensor *lse, int causal, double scale);

#endif
