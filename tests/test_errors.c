/* Bad input never crashes libdiffrl: every public function, given NULL tensors,
 * freed tensors, NULL pointers, bad dims, bad dtype codes or a device that is not
 * there, returns a non-zero status and a message that names the op (and, for
 * dims, speaks the 1-based terms of the Lua API).
 *
 * Each case runs in its own child process (check_isolated), so a case that
 * crashes is reported by name and the others still run. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

/* Expected status of a device case: DR_ERR_DEVICE or DR_ERR_UNSUPPORTED. */
enum { ANY_DEVICE_ERR = -1 };

/* ---- fixtures (made once in the parent; every child inherits them) ----------- */

static dr_tensor *g_f;         /* float32 [2, 3] */
static dr_tensor *g_i;         /* int32 [2, 3] */
static dr_tensor *g_b;         /* bool [2, 3] */
static dr_tensor *g_v4;        /* float32 [4] */
static dr_tensor *g_one;       /* float32 [1] */
static dr_tensor *g_freed;     /* float32 [2, 3], released with dr_tensor_free */
static dr_tensor *g_cuda;      /* float32 [2, 3] claiming to live on cuda:0 */
static dr_tensor *g_cuda_t;    /* its transpose: not contiguous */
static dr_tensor *g_cuda_one;  /* float32 [1] claiming to live on cuda:0 */
static dr_tensor *g_out;
static double g_buf[16], g_x;
static dr_generator g_gen = {1, 0};

static const dr_device CPU = {DR_CPU, 0}, CPU1 = {DR_CPU, 1}, CUDA0 = {DR_CUDA, 0};
static const dr_device CUDA99 = {DR_CUDA, 99}, NO_SUCH_DEVICE = {7, 0};
static const int64_t S23[2] = {2, 3}, S6[1] = {6}, S43[2] = {4, 3}, NEG[2] = {2, -1};
static const int64_t S9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, TWO_M1[2] = {-1, -1};
static const int64_t HUGE2[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
static const int64_t IDX00[2] = {0, 0}, IDX03[2] = {0, 3};
static const int32_t P10[2] = {1, 0}, P00[2] = {0, 0}, P02[2] = {0, 2}, D1[1] = {1};
static const int32_t D2[1] = {2}, D0M2[2] = {0, -2}, NINE[9] = {0};
static const double VALS[6] = {1, 2, 3, 4, 5, 6}, NAN1[1] = {NAN};

/* ---- cases: X(name, expected status, substring of the message, call) ---------- */

#define NULL_TENSOR_CASES(X)                                                              \
    X(null_to_f64, DR_ERR_ARG, "tolist", dr_tensor_to_f64(NULL, g_buf, 6))                \
    X(null_item, DR_ERR_ARG, "item", dr_tensor_item(NULL, &g_x))                          \
    X(null_get, DR_ERR_ARG, "get", dr_tensor_get(NULL, IDX00, &g_x))                      \
    X(null_view, DR_ERR_ARG, "view", dr_tensor_view(NULL, S6, 1, &g_out))                 \
    X(null_reshape, DR_ERR_ARG, "reshape", dr_tensor_reshape(NULL, S6, 1, &g_out))        \
    X(null_permute, DR_ERR_ARG, "permute", dr_tensor_permute(NULL, P10, 2, &g_out))       \
    X(null_transpose, DR_ERR_ARG, "transpose", dr_tensor_transpose(NULL, 0, 1, &g_out))   \
    X(null_narrow, DR_ERR_ARG, "narrow", dr_tensor_narrow(NULL, 0, 0, 1, &g_out))         \
    X(null_select, DR_ERR_ARG, "select", dr_tensor_select(NULL, 0, 0, &g_out))            \
    X(null_expand, DR_ERR_ARG, "expand", dr_tensor_expand(NULL, S23, 2, &g_out))          \
    X(null_contiguous, DR_ERR_ARG, "contiguous", dr_tensor_contiguous(NULL, &g_out))      \
    X(null_clone, DR_ERR_ARG, "clone", dr_tensor_clone(NULL, &g_out))                     \
    X(null_to_dtype, DR_ERR_ARG, "to", dr_tensor_to_dtype(NULL, DR_F16, &g_out))          \
    X(null_copy_dst, DR_ERR_ARG, "copy_", dr_tensor_copy_(NULL, g_f))                     \
    X(null_copy_src, DR_ERR_ARG, "copy_", dr_tensor_copy_(g_f, NULL))                     \
    X(null_fill, DR_ERR_ARG, "fill_", dr_tensor_fill_(NULL, 1.0))                         \
    X(null_add_a, DR_ERR_ARG, "add", dr_add(NULL, g_f, 1.0, &g_out))                      \
    X(null_add_b, DR_ERR_ARG, "add", dr_add(g_f, NULL, 1.0, &g_out))                      \
    X(null_sub, DR_ERR_ARG, "sub", dr_sub(g_f, NULL, 1.0, &g_out))                        \
    X(null_mul, DR_ERR_ARG, "mul", dr_mul(NULL, g_f, &g_out))                             \
    X(null_div, DR_ERR_ARG, "div", dr_div(g_f, NULL, &g_out))                             \
    X(null_matmul_a, DR_ERR_ARG, "matmul", dr_matmul(NULL, g_f, &g_out))                  \
    X(null_matmul_b, DR_ERR_ARG, "matmul", dr_matmul(g_f, NULL, &g_out))                  \
    X(null_sum, DR_ERR_ARG, "sum", dr_sum(NULL, NULL, 0, 0, &g_out))

#define FREED_TENSOR_CASES(X)                                                             \
    X(freed_to_f64, DR_ERR_FREED, "tolist", dr_tensor_to_f64(g_freed, g_buf, 6))          \
    X(freed_item, DR_ERR_FREED, "item", dr_tensor_item(g_freed, &g_x))                    \
    X(freed_get, DR_ERR_FREED, "get", dr_tensor_get(g_freed, IDX00, &g_x))                \
    X(freed_view, DR_ERR_FREED, "view", dr_tensor_view(g_freed, S6, 1, &g_out))           \
    X(freed_reshape, DR_ERR_FREED, "reshape", dr_tensor_reshape(g_freed, S6, 1, &g_out))  \
    X(freed_permute, DR_ERR_FREED, "permute", dr_tensor_permute(g_freed, P10, 2, &g_out)) \
    X(freed_transpose, DR_ERR_FREED, "transpose", dr_tensor_transpose(g_freed, 0, 1, &g_out)) \
    X(freed_narrow, DR_ERR_FREED, "narrow", dr_tensor_narrow(g_freed, 0, 0, 1, &g_out))   \
    X(freed_select, DR_ERR_FREED, "select", dr_tensor_select(g_freed, 0, 0, &g_out))      \
    X(freed_expand, DR_ERR_FREED, "expand", dr_tensor_expand(g_freed, S23, 2, &g_out))    \
    X(freed_contiguous, DR_ERR_FREED, "contiguous", dr_tensor_contiguous(g_freed, &g_out)) \
    X(freed_clone, DR_ERR_FREED, "clone", dr_tensor_clone(g_freed, &g_out))               \
    X(freed_to_dtype, DR_ERR_FREED, "to", dr_tensor_to_dtype(g_freed, DR_F16, &g_out))    \
    X(freed_copy_dst, DR_ERR_FREED, "copy_", dr_tensor_copy_(g_freed, g_f))               \
    X(freed_copy_src, DR_ERR_FREED, "copy_", dr_tensor_copy_(g_f, g_freed))               \
    X(freed_fill, DR_ERR_FREED, "fill_", dr_tensor_fill_(g_freed, 1.0))                   \
    X(freed_add_a, DR_ERR_FREED, "add", dr_add(g_freed, g_f, 1.0, &g_out))                \
    X(freed_add_b, DR_ERR_FREED, "add", dr_add(g_f, g_freed, 1.0, &g_out))                \
    X(freed_sub, DR_ERR_FREED, "sub", dr_sub(g_freed, g_f, 1.0, &g_out))                  \
    X(freed_mul, DR_ERR_FREED, "mul", dr_mul(g_f, g_freed, &g_out))                       \
    X(freed_div, DR_ERR_FREED, "div", dr_div(g_freed, g_f, &g_out))                       \
    X(freed_matmul, DR_ERR_FREED, "matmul", dr_matmul(g_f, g_freed, &g_out))              \
    X(freed_sum, DR_ERR_FREED, "sum", dr_sum(g_freed, NULL, 0, 0, &g_out))

/* A NULL `out` (or other result pointer) is a bad argument, not a crash. */
#define NULL_POINTER_CASES(X)                                                             \
    X(nullout_empty, DR_ERR_ARG, "empty", dr_tensor_empty(S23, 2, DR_F32, CPU, NULL))     \
    X(nullout_full, DR_ERR_ARG, "full", dr_tensor_full(S23, 2, DR_F32, CPU, 0, NULL))     \
    X(nullout_from_f64, DR_ERR_ARG, "tensor",                                             \
      dr_tensor_from_f64(VALS, S23, 2, DR_F32, CPU, NULL))                                \
    X(nullout_view, DR_ERR_ARG, "view", dr_tensor_view(g_f, S6, 1, NULL))                 \
    X(nullout_reshape, DR_ERR_ARG, "reshape", dr_tensor_reshape(g_f, S6, 1, NULL))        \
    X(nullout_permute, DR_ERR_ARG, "permute", dr_tensor_permute(g_f, P10, 2, NULL))       \
    X(nullout_transpose, DR_ERR_ARG, "transpose", dr_tensor_transpose(g_f, 0, 1, NULL))   \
    X(nullout_narrow, DR_ERR_ARG, "narrow", dr_tensor_narrow(g_f, 0, 0, 1, NULL))         \
    X(nullout_select, DR_ERR_ARG, "select", dr_tensor_select(g_f, 0, 0, NULL))            \
    X(nullout_expand, DR_ERR_ARG, "expand", dr_tensor_expand(g_f, S23, 2, NULL))          \
    X(nullout_contiguous, DR_ERR_ARG, "contiguous", dr_tensor_contiguous(g_f, NULL))      \
    X(nullout_clone, DR_ERR_ARG, "clone", dr_tensor_clone(g_f, NULL))                     \
    X(nullout_to_dtype, DR_ERR_ARG, "to", dr_tensor_to_dtype(g_f, DR_F16, NULL))          \
    X(nullout_add, DR_ERR_ARG, "add", dr_add(g_f, g_f, 1.0, NULL))                        \
    X(nullout_matmul, DR_ERR_ARG, "matmul", dr_matmul(g_f, g_f, NULL))                    \
    X(nullout_sum, DR_ERR_ARG, "sum", dr_sum(g_f, NULL, 0, 0, NULL))                      \
    X(nullout_randn, DR_ERR_ARG, "randn", dr_randn(S23, 2, DR_F32, CPU, &g_gen, NULL))    \
    X(nullout_item, DR_ERR_ARG, "item", dr_tensor_item(g_one, NULL))                        \
    X(nullout_get, DR_ERR_ARG, "get", dr_tensor_get(g_f, IDX00, NULL))                    \
    X(nullout_to_f64, DR_ERR_ARG, "tolist", dr_tensor_to_f64(g_f, NULL, 6))               \
    X(nullsizes_empty, DR_ERR_ARG, "sizes", dr_tensor_empty(NULL, 2, DR_F32, CPU, &g_out)) \
    X(nullsizes_from_f64, DR_ERR_ARG, "sizes",                                            \
      dr_tensor_from_f64(VALS, NULL, 2, DR_F32, CPU, &g_out))                             \
    X(nullsizes_view, DR_ERR_ARG, "view", dr_tensor_view(g_f, NULL, 1, &g_out))           \
    X(nullsizes_reshape, DR_ERR_ARG, "reshape", dr_tensor_reshape(g_f, NULL, 1, &g_out))  \
    X(nullsizes_expand, DR_ERR_ARG, "expand", dr_tensor_expand(g_f, NULL, 2, &g_out))     \
    X(nullsizes_randn, DR_ERR_ARG, "randn", dr_randn(NULL, 1, DR_F32, CPU, &g_gen, &g_out)) \
    X(nulldims_permute, DR_ERR_ARG, "permute", dr_tensor_permute(g_f, NULL, 2, &g_out))   \
    X(nulldims_sum, DR_ERR_ARG, "sum", dr_sum(g_f, NULL, 1, 0, &g_out))                   \
    X(nullindex_get, DR_ERR_ARG, "get", dr_tensor_get(g_f, NULL, &g_x))                   \
    X(nulldata_from_f64, DR_ERR_ARG, "data", dr_tensor_from_f64(NULL, S23, 2, DR_F32, CPU, &g_out))

/* Messages speak the 1-based dims of the Lua API. */
#define DIM_CASES(X)                                                                      \
    X(transpose_dim_high, DR_ERR_ARG, "dimension 3", dr_tensor_transpose(g_f, 2, 0, &g_out)) \
    X(transpose_dim_low, DR_ERR_ARG, "dimension -3", dr_tensor_transpose(g_f, 0, -3, &g_out)) \
    X(narrow_dim, DR_ERR_ARG, "dimension 3", dr_tensor_narrow(g_f, 2, 0, 1, &g_out))      \
    X(narrow_range, DR_ERR_ARG, "dimension 2", dr_tensor_narrow(g_f, 1, 2, 2, &g_out))    \
    X(narrow_length, DR_ERR_ARG, "narrow", dr_tensor_narrow(g_f, 0, 0, 3, &g_out))        \
    X(select_dim, DR_ERR_ARG, "dimension 6", dr_tensor_select(g_f, 5, 0, &g_out))         \
    X(select_index, DR_ERR_ARG, "dimension 1", dr_tensor_select(g_f, 0, 2, &g_out))       \
    X(select_negative, DR_ERR_ARG, "index -4", dr_tensor_select(g_f, 1, -4, &g_out))      \
    X(permute_repeat, DR_ERR_ARG, "dimension 1 repeated", dr_tensor_permute(g_f, P00, 2, &g_out)) \
    X(permute_range, DR_ERR_ARG, "dimension 3", dr_tensor_permute(g_f, P02, 2, &g_out))   \
    X(permute_count, DR_ERR_ARG, "permute", dr_tensor_permute(g_f, D1, 1, &g_out))        \
    X(sum_dim, DR_ERR_ARG, "dimension 3", dr_sum(g_f, D2, 1, 0, &g_out))                  \
    X(sum_repeat, DR_ERR_ARG, "dimension 1 appears twice", dr_sum(g_f, D0M2, 2, 0, &g_out)) \
    X(sum_ndims, DR_ERR_ARG, "sum", dr_sum(g_f, NINE, 9, 0, &g_out))                      \
    X(sum_ndims_neg, DR_ERR_ARG, "sum", dr_sum(g_f, D1, -1, 0, &g_out))                   \
    X(get_index, DR_ERR_ARG, "dimension 2", dr_tensor_get(g_f, IDX03, &g_x))              \
    X(get_index_one_based, DR_ERR_ARG, "index 4", dr_tensor_get(g_f, IDX03, &g_x))        \
    X(empty_ndim, DR_ERR_ARG, "at most 8", dr_tensor_empty(S9, 9, DR_F32, CPU, &g_out))   \
    X(empty_ndim_neg, DR_ERR_ARG, "empty", dr_tensor_empty(S9, -1, DR_F32, CPU, &g_out))  \
    X(empty_negative, DR_ERR_ARG, "negative size -1 in dimension 2",                      \
      dr_tensor_empty(NEG, 2, DR_F32, CPU, &g_out))                                       \
    X(empty_huge, DR_ERR_ARG, "too many elements", dr_tensor_empty(HUGE2, 2, DR_U8, CPU, &g_out)) \
    X(randn_negative, DR_ERR_ARG, "randn", dr_randn(NEG, 2, DR_F32, CPU, &g_gen, &g_out)) \
    X(view_ndim, DR_ERR_ARG, "at most 8", dr_tensor_view(g_f, S9, 9, &g_out))             \
    X(view_numel, DR_ERR_SHAPE, "view", dr_tensor_view(g_f, S43, 2, &g_out))              \
    X(reshape_two_infer, DR_ERR_ARG, "-1", dr_tensor_reshape(g_f, TWO_M1, 2, &g_out))     \
    X(expand_size, DR_ERR_SHAPE, "expand", dr_tensor_expand(g_f, S43, 2, &g_out))         \
    X(expand_fewer, DR_ERR_SHAPE, "expand", dr_tensor_expand(g_f, S6, 1, &g_out))

#define DTYPE_CASES(X)                                                                    \
    X(empty_dtype, DR_ERR_DTYPE, "empty", dr_tensor_empty(S23, 2, 99, CPU, &g_out))       \
    X(empty_dtype_neg, DR_ERR_DTYPE, "empty", dr_tensor_empty(S23, 2, -1, CPU, &g_out))   \
    X(full_dtype, DR_ERR_DTYPE, "full", dr_tensor_full(S23, 2, DR_NUM_DTYPES, CPU, 0, &g_out)) \
    X(from_f64_dtype, DR_ERR_DTYPE, "tensor",                                             \
      dr_tensor_from_f64(VALS, S23, 2, 99, CPU, &g_out))                                  \
    X(to_dtype_code, DR_ERR_DTYPE, "to", dr_tensor_to_dtype(g_f, 99, &g_out))             \
    X(to_dtype_neg, DR_ERR_DTYPE, "to", dr_tensor_to_dtype(g_f, -5, &g_out))              \
    X(randn_dtype, DR_ERR_DTYPE, "randn", dr_randn(S23, 2, 99, CPU, &g_gen, &g_out))      \
    X(rand_int, DR_ERR_DTYPE, "rand", dr_rand(S23, 2, DR_I32, CPU, &g_gen, &g_out))       \
    X(matmul_int, DR_ERR_DTYPE, "matmul", dr_matmul(g_i, g_i, &g_out))                    \
    X(matmul_mixed, DR_ERR_DTYPE, "matmul", dr_matmul(g_f, g_i, &g_out))                  \
    X(sub_bool, DR_ERR_DTYPE, "sub", dr_sub(g_b, g_b, 1.0, &g_out))

#define DEVICE_CASES(X)                                                                   \
    X(empty_cuda99, ANY_DEVICE_ERR, "empty", dr_tensor_empty(S23, 2, DR_F32, CUDA99, &g_out)) \
    X(full_cuda99, ANY_DEVICE_ERR, "full", dr_tensor_full(S23, 2, DR_F32, CUDA99, 0, &g_out)) \
    X(from_f64_cuda99, ANY_DEVICE_ERR, "tensor",                                          \
      dr_tensor_from_f64(VALS, S23, 2, DR_F32, CUDA99, &g_out))                           \
    X(randn_cuda99, ANY_DEVICE_ERR, "randn", dr_randn(S23, 2, DR_F32, CUDA99, &g_gen, &g_out)) \
    X(rand_cuda99, ANY_DEVICE_ERR, "rand", dr_rand(S23, 2, DR_F32, CUDA99, &g_gen, &g_out)) \
    X(empty_cpu1, DR_ERR_DEVICE, "cpu:1", dr_tensor_empty(S23, 2, DR_F32, CPU1, &g_out))  \
    X(empty_bad_device, DR_ERR_DEVICE, "unknown device",                                  \
      dr_tensor_empty(S23, 2, DR_F32, NO_SUCH_DEVICE, &g_out))                            \
    X(randn_bad_device, DR_ERR_DEVICE, "randn",                                           \
      dr_randn(S23, 2, DR_F32, NO_SUCH_DEVICE, &g_gen, &g_out))                           \
    X(add_mixed_devices, DR_ERR_DEVICE, "add", dr_add(g_f, g_cuda, 1.0, &g_out))          \
    X(matmul_mixed_devices, DR_ERR_DEVICE, "matmul", dr_matmul(g_cuda, g_f, &g_out))      \
    X(copy_across_devices, ANY_DEVICE_ERR, "copy_", dr_tensor_copy_(g_f, g_cuda))         \
    X(to_f64_cuda, DR_ERR_DEVICE, "tolist", dr_tensor_to_f64(g_cuda, g_buf, 6))           \
    X(get_cuda, DR_ERR_DEVICE, "get", dr_tensor_get(g_cuda, IDX00, &g_x))                 \
    X(item_cuda, DR_ERR_DEVICE, "item", dr_tensor_item(g_cuda_one, &g_x))

/* Only where no CUDA device exists: these would otherwise reach a real kernel with
 * host memory behind a tensor that claims to be on the GPU. */
#define NO_GPU_CASES(X)                                                                   \
    X(empty_cuda0, ANY_DEVICE_ERR, "empty", dr_tensor_empty(S23, 2, DR_F32, CUDA0, &g_out)) \
    X(from_f64_cuda0, ANY_DEVICE_ERR, "tensor",                                           \
      dr_tensor_from_f64(VALS, S23, 2, DR_F32, CUDA0, &g_out))                            \
    X(randn_cuda0, ANY_DEVICE_ERR, "randn", dr_randn(S23, 2, DR_F32, CUDA0, &g_gen, &g_out)) \
    X(add_cuda, ANY_DEVICE_ERR, "add", dr_add(g_cuda, g_cuda, 1.0, &g_out))               \
    X(mul_cuda, ANY_DEVICE_ERR, "mul", dr_mul(g_cuda, g_cuda, &g_out))                    \
    X(matmul_cuda, ANY_DEVICE_ERR, "matmul", dr_matmul(g_cuda, g_cuda_t, &g_out))           \
    X(sum_cuda, ANY_DEVICE_ERR, "sum", dr_sum(g_cuda, NULL, 0, 0, &g_out))                \
    X(fill_cuda, ANY_DEVICE_ERR, "fill_", dr_tensor_fill_(g_cuda, 1.0))                   \
    X(copy_cuda, ANY_DEVICE_ERR, "copy_", dr_tensor_copy_(g_cuda, g_cuda))                \
    X(clone_cuda, ANY_DEVICE_ERR, "clone", dr_tensor_clone(g_cuda, &g_out))               \
    X(contiguous_cuda, ANY_DEVICE_ERR, "contiguous", dr_tensor_contiguous(g_cuda_t, &g_out)) \
    X(to_dtype_cuda, ANY_DEVICE_ERR, "to", dr_tensor_to_dtype(g_cuda, DR_F16, &g_out))

#define MISC_CASES(X)                                                                     \
    X(item_many, DR_ERR_SHAPE, "item", dr_tensor_item(g_f, &g_x))                         \
    X(to_f64_short, DR_ERR_ARG, "tolist", dr_tensor_to_f64(g_f, g_buf, 5))                \
    X(add_broadcast, DR_ERR_SHAPE, "add", dr_add(g_f, g_v4, 1.0, &g_out))                 \
    X(div_broadcast, DR_ERR_SHAPE, "div", dr_div(g_v4, g_f, &g_out))                      \
    X(add_alpha_frac, DR_ERR_ARG, "alpha", dr_add(g_i, g_i, 0.5, &g_out))                 \
    X(add_alpha_nan, DR_ERR_ARG, "alpha", dr_add(g_i, g_i, NAN, &g_out))                  \
    X(add_alpha_huge, DR_ERR_ARG, "alpha", dr_add(g_i, g_i, 1e300, &g_out))               \
    X(from_f64_nan_int, DR_ERR_ARG, "does not fit",                                       \
      dr_tensor_from_f64(NAN1, S6, 1, DR_I64, CPU, &g_out))                               \
    X(copy_shape, DR_ERR_SHAPE, "copy_", dr_tensor_copy_(g_f, g_v4))                      \
    X(matmul_shape, DR_ERR_SHAPE, "matmul", dr_matmul(g_f, g_f, &g_out))

/* Functions without a status must simply survive bad input (and report success
 * here). numel of NULL should be 0. */
#define NO_CRASH_CASES(X)                                                                 \
    X(retain_null, DR_OK, NULL, (dr_tensor_retain(NULL), DR_OK))                          \
    X(release_null, DR_OK, NULL, (dr_tensor_release(NULL), DR_OK))                       \
    X(free_null, DR_OK, NULL, (dr_tensor_free(NULL), DR_OK))                              \
    X(free_twice, DR_OK, NULL, (dr_tensor_free(g_freed), DR_OK))                          \
    X(data_null, DR_OK, NULL, dr_tensor_data(NULL) == NULL ? DR_OK : DR_ERR_INTERNAL)     \
    X(data_freed, DR_OK, NULL, dr_tensor_data(g_freed) == NULL ? DR_OK : DR_ERR_INTERNAL) \
    X(numel_null, DR_OK, NULL, dr_tensor_numel(NULL) == 0 ? DR_OK : DR_ERR_INTERNAL)      \
    X(is_contiguous_null, DR_OK, NULL, (dr_tensor_is_contiguous(NULL), DR_OK))            \
    X(numel_freed, DR_OK, NULL, dr_tensor_numel(g_freed) == 6 ? DR_OK : DR_ERR_INTERNAL)  \
    X(dtype_name_bad, DR_OK, NULL,                                                        \
      dr_dtype_name(99)[0] && dr_dtype_name(-1)[0] ? DR_OK : DR_ERR_INTERNAL)             \
    X(dtype_size_bad, DR_OK, NULL,                                                        \
      dr_dtype_size(99) == 0 && dr_dtype_size(-1) == 0 ? DR_OK : DR_ERR_INTERNAL)         \
    X(threads_zero, DR_OK, NULL,                                                          \
      (dr_set_num_threads(0), dr_get_num_threads() >= 1 ? DR_OK : DR_ERR_INTERNAL))       \
    X(randn_default_gen, DR_OK, NULL, dr_randn(S23, 2, DR_F32, CPU, NULL, &g_out))

#define ALL_CASES(X)                                                                      \
    NULL_TENSOR_CASES(X) FREED_TENSOR_CASES(X) NULL_POINTER_CASES(X) DIM_CASES(X)         \
    DTYPE_CASES(X) DEVICE_CASES(X) MISC_CASES(X) NO_CRASH_CASES(X)

typedef struct err_case {
    const char *what;
    dr_status (*run)(void);
    int status; /* a dr_status, or ANY_DEVICE_ERR */
    const char *needle;
} err_case;

#define DEFINE_CASE(name, status, needle, call) \
    static dr_status name(void) { return (call); }
#define CASE_ROW(name, status, needle, call) {#name ": " #call, name, status, needle},

ALL_CASES(DEFINE_CASE)
NO_GPU_CASES(DEFINE_CASE)
static const err_case cases[] = {ALL_CASES(CASE_ROW)};
static const err_case no_gpu_cases[] = {NO_GPU_CASES(CASE_ROW)};

/* Runs in a child process: one call, then its status and message are judged. */
static void run_case(const void *arg) {
    const err_case *c = arg;
    g_out = NULL;
    dr_clear_error();
    dr_status s = c->run();
    if (c->status == DR_OK) {
        if (!check_ok_(s, __FILE__, __LINE__, c->what)) return;
        dr_tensor_release(g_out);
        return;
    }
    dr_status want = (dr_status)c->status;
    if (c->status == ANY_DEVICE_ERR) want = s == DR_ERR_UNSUPPORTED ? s : DR_ERR_DEVICE;
    check_fails_(s, want, c->needle, __FILE__, __LINE__, c->what);
    if (want == DR_ERR_FREED) check_fails_(s, want, "free", __FILE__, __LINE__, c->what);
    if (c->status == ANY_DEVICE_ERR && strstr(c->what, "cuda"))
        check_fails_(s, want, "cuda", __FILE__, __LINE__, c->what);
    if (!check_record_(g_out == NULL, __FILE__, __LINE__, "no tensor made by a failed call"))
        fprintf(stderr, "    in %s\n", c->what);
}

static void run_table(const err_case *table, size_t n) {
    for (size_t i = 0; i < n; i++) check_isolated(table[i].what, run_case, &table[i]);
}

static int make_fixtures(void) {
    double b[6] = {1, 0, 1, 0, 0, 1};
    const int64_t s4 = 4;
    int ok = CHECK_OK(dr_tensor_from_f64(VALS, S23, 2, DR_F32, CPU, &g_f)) &&
             CHECK_OK(dr_tensor_from_f64(VALS, S23, 2, DR_I32, CPU, &g_i)) &&
             CHECK_OK(dr_tensor_from_f64(b, S23, 2, DR_BOOL, CPU, &g_b)) &&
             CHECK_OK(dr_tensor_full(&s4, 1, DR_F32, CPU, 1.0, &g_v4)) &&
             CHECK_OK(dr_tensor_full(&s4, 0, DR_F32, CPU, 2.0, &g_one)) &&
             CHECK_OK(dr_tensor_clone(g_one, &g_cuda_one)) &&
             CHECK_OK(dr_tensor_clone(g_f, &g_freed)) &&
             CHECK_OK(dr_tensor_clone(g_f, &g_cuda));
    if (!ok) return 0;
    dr_tensor_free(g_freed);
    /* A cuda tensor cannot be made without CUDA; relabel a CPU one. Its storage
     * stays a CPU storage, so releasing it is safe. */
    g_cuda->device = CUDA0;
    g_cuda_one->device = CUDA0;
    return CHECK_OK(dr_tensor_transpose(g_cuda, 0, 1, &g_cuda_t));
}

static void test_messages_are_kept_per_call(void) {
    dr_tensor *out = NULL;
    CHECK_FAILS(dr_tensor_empty(NEG, 2, DR_F32, CPU, &out), DR_ERR_ARG, "empty");
    dr_clear_error();
    CHECK(dr_last_error() != NULL && dr_last_error()[0] == '\0');
    const dr_build_info *info = dr_get_build_info();
    CHECK(info != NULL && info->version != NULL && info->cuda != NULL);
    CHECK(dr_header_text() != NULL && strstr(dr_header_text(), "dr_tensor_empty") != NULL);
}

int main(void) {
    if (make_fixtures()) {
        run_table(cases, sizeof cases / sizeof cases[0]);
        if (dr_cuda_device_count() == 0)
            run_table(no_gpu_cases, sizeof no_gpu_cases / sizeof no_gpu_cases[0]);
    }
    test_messages_are_kept_per_call();
    dr_tensor *fixtures[] = {g_f, g_i, g_b, g_v4, g_one, g_freed, g_cuda, g_cuda_t, g_cuda_one};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        dr_tensor_release(fixtures[i]);
    return check_summary("test_errors");
}
