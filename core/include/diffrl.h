/*
 * diffrl.h — the one public header of libdiffrl.
 *
 * The Lua bindings feed the text of this file to LuaJIT's ffi.cdef (the library
 * embeds it: dr_header_text()), so declarations here use no macros: constants are
 * enums, arrays have literal or enum sizes. Preprocessor lines and the C++
 * guard block are stripped before parsing.
 *
 * Conventions:
 *  - Every fallible function returns dr_status; DR_OK is 0. On failure the message
 *    (op, shapes, dtypes, device, file) is kept per thread: dr_last_error().
 *  - Functions that make a tensor write it to `out` with one reference owned by the
 *    caller (release with dr_tensor_release). Inputs are borrowed.
 *  - Dimensions and indices are 0-based here; negative counts from the end. The
 *    Lua layer is 1-based and converts; error messages speak its 1-based terms,
 *    since they are read by the user of the Lua API.
 */
#ifndef DIFFRL_H
#define DIFFRL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { DR_MAX_DIMS = 8 };

typedef enum dr_status {
    DR_OK = 0,
    DR_ERR_ARG = 1,          /* bad argument value (negative size, bad dim, ...) */
    DR_ERR_SHAPE = 2,        /* shapes do not fit the op */
    DR_ERR_DTYPE = 3,        /* dtype not supported by the op */
    DR_ERR_DEVICE = 4,       /* device missing, or tensors on different devices */
    DR_ERR_OOM = 5,          /* allocation failed */
    DR_ERR_IO = 6,           /* file or format error */
    DR_ERR_UNSUPPORTED = 7,  /* not implemented for this backend/configuration */
    DR_ERR_FREED = 8,        /* tensor data was released with dr_tensor_free */
    DR_ERR_INTERNAL = 9,
    DR_ERR_COMM = 10         /* a collective failed, mismatched or timed out (core/comm) */
} dr_status;

typedef enum dr_dtype {
    DR_F32 = 0,
    DR_F16 = 1,
    DR_BF16 = 2,
    DR_I64 = 3,
    DR_I32 = 4,
    DR_U8 = 5,
    DR_BOOL = 6,
    DR_NUM_DTYPES = 7
} dr_dtype;

typedef enum dr_device_type {
    DR_CPU = 0,
    DR_CUDA = 1
} dr_device_type;

typedef struct dr_device {
    int32_t type;   /* dr_device_type */
    int32_t index;  /* 0 for cpu */
} dr_device;

typedef struct dr_storage dr_storage;  /* opaque: refcounted bytes on one device */

/*
 * A tensor is a view: sizes/strides (in elements) and an offset into a refcounted
 * storage. Fields are public so the bindings read shapes without a call; change
 * them only through the functions below. Field names avoid the Lua method names
 * (shape, dtype, device) on purpose.
 */
typedef struct dr_tensor {
    int64_t sizes[DR_MAX_DIMS];
    int64_t strides[DR_MAX_DIMS];
    int64_t storage_offset;
    int32_t ndim;
    int32_t scalar_type;     /* dr_dtype */
    dr_device device;
    int32_t refcount;        /* managed by retain/release; do not touch */
    int32_t flags;           /* reserved for autograd */
    dr_storage *storage;     /* NULL after dr_tensor_free */
    void *autograd;          /* reserved for autograd */
} dr_tensor;

/*
 * Counter-based Philox4x32-10 generator: the stream is a pure function of
 * (seed, offset), so CPU and CUDA give identical numbers and state is two integers.
 * Each random op consumes ceil(n/4) counters and advances offset by that.
 */
typedef struct dr_generator {
    uint64_t seed;
    uint64_t offset;
} dr_generator;

typedef struct dr_build_info {
    const char *version;
    const char *git_commit;
    const char *build_type;
    const char *compiler;
    const char *blas;
    const char *cuda;     /* "none" when built without CUDA */
    const char *cudnn;
    const char *nccl;
    const char *mpi;
    const char *sanitize;
} dr_build_info;

/* ---- library, errors ---------------------------------------------------- */
const char *dr_header_text(void);
const dr_build_info *dr_get_build_info(void);
const char *dr_last_error(void);
void dr_clear_error(void);
const char *dr_dtype_name(int32_t dtype);
int64_t dr_dtype_size(int32_t dtype);
int dr_get_num_threads(void);
void dr_set_num_threads(int n);
int dr_cuda_device_count(void);  /* 0 without CUDA or without a device */

/* ---- tensors ------------------------------------------------------------ */
dr_status dr_tensor_empty(const int64_t *sizes, int32_t ndim, int32_t dtype,
                          dr_device device, dr_tensor **out);
dr_status dr_tensor_full(const int64_t *sizes, int32_t ndim, int32_t dtype,
                         dr_device device, double value, dr_tensor **out);
/* Copies n doubles (row-major) into a new tensor of `dtype`, converting. */
dr_status dr_tensor_from_f64(const double *data, const int64_t *sizes, int32_t ndim,
                             int32_t dtype, dr_device device, dr_tensor **out);
/* Writes every element, row-major, as double into out[0..numel). */
dr_status dr_tensor_to_f64(const dr_tensor *t, double *out, int64_t n);
dr_status dr_tensor_item(const dr_tensor *t, double *out);
dr_status dr_tensor_get(const dr_tensor *t, const int64_t *index, double *out);

void dr_tensor_retain(dr_tensor *t);
void dr_tensor_release(dr_tensor *t);
/* Releases the data now (deterministic free); the handle stays valid and any
 * later use reports DR_ERR_FREED. Other views keep their storage alive. */
void dr_tensor_free(dr_tensor *t);

int64_t dr_tensor_numel(const dr_tensor *t);
int dr_tensor_is_contiguous(const dr_tensor *t);
void *dr_tensor_data(const dr_tensor *t);  /* CPU: pointer to element 0; NULL if freed */
/* Bytes of tensor storage currently allocated on a device type (all indices).
 * The bindings use it to run Lua's GC when C memory grows, since the GC itself
 * only sees the small Lua handles. */
int64_t dr_memory_allocated(int32_t device_type);
/* Returns cached free blocks to the system (CPU block cache and, in CUDA builds,
 * the CUDA caching allocator's free blocks). */
void dr_empty_cache(void);

/* The CUDA caching allocator of one device (torch.cuda.memory_stats). Sizes are
 * the allocator's rounded block sizes. Fails without CUDA or without the device. */
typedef struct dr_cuda_memory_stats {
    int64_t allocated;          /* bytes in blocks held by tensors and scratch */
    int64_t reserved;           /* bytes obtained from cudaMalloc: held + cached */
    int64_t peak_allocated;
    int64_t peak_reserved;
    int64_t alloc_count;        /* allocations asked of the allocator */
    int64_t cache_hits;         /* ... served from the cache */
    int64_t cuda_malloc_count;  /* ... that needed cudaMalloc */
    int64_t oom_count;          /* ... that failed */
} dr_cuda_memory_stats;
dr_status dr_cuda_get_memory_stats(int32_t device, dr_cuda_memory_stats *out);
/* Waits until every op queued on the device has finished (kernel errors surface here). */
dr_status dr_cuda_synchronize(int32_t device);

/* Views (share storage). */
dr_status dr_tensor_view(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                         dr_tensor **out);
dr_status dr_tensor_reshape(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                            dr_tensor **out);
dr_status dr_tensor_permute(const dr_tensor *t, const int32_t *dims, int32_t ndim,
                            dr_tensor **out);
dr_status dr_tensor_transpose(const dr_tensor *t, int32_t dim0, int32_t dim1,
                              dr_tensor **out);
dr_status dr_tensor_narrow(const dr_tensor *t, int32_t dim, int64_t start,
                           int64_t length, dr_tensor **out);
dr_status dr_tensor_select(const dr_tensor *t, int32_t dim, int64_t index,
                           dr_tensor **out);
dr_status dr_tensor_expand(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                           dr_tensor **out);

/* Copies. */
dr_status dr_tensor_contiguous(const dr_tensor *t, dr_tensor **out);
dr_status dr_tensor_clone(const dr_tensor *t, dr_tensor **out);
dr_status dr_tensor_to_dtype(const dr_tensor *t, int32_t dtype, dr_tensor **out);
/* dst[...] = src, broadcasting src to dst's shape and casting; dst and src may be
 * on different devices (one of them the cpu). */
dr_status dr_tensor_copy_(dr_tensor *dst, const dr_tensor *src);
/* t on `device` (t itself, retained, if already there); differentiable: the
 * gradient moves back to t's device. */
dr_status dr_tensor_to_device(const dr_tensor *t, dr_device device, dr_tensor **out);
dr_status dr_tensor_fill_(dr_tensor *t, double value);
/* Moves t's data into base's storage at element `offset` (base contiguous, same
 * dtype and device, room for t) and makes t a contiguous view there: how
 * optimizers gather parameters into one flat buffer. Leaves only, no grad mode. */
dr_status dr_tensor_rebind_(dr_tensor *t, dr_tensor *base, int64_t offset);

/* ---- ops ---------------------------------------------------------------- */
/* Broadcasting elementwise; result dtype follows torch's promotion rules.
 * add/sub: out = a + alpha * b (alpha as torch.add). div is true division. */
dr_status dr_add(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out);
dr_status dr_sub(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out);
dr_status dr_mul(const dr_tensor *a, const dr_tensor *b, dr_tensor **out);
dr_status dr_div(const dr_tensor *a, const dr_tensor *b, dr_tensor **out);
/* In place: self += alpha * other (other broadcast to self's shape, cast to its
 * dtype). Refuses tensors in the autograd graph unless grad mode is off. */
dr_status dr_add_(dr_tensor *self, const dr_tensor *other, double alpha);
/* torch.matmul semantics: 1-D/2-D/batched with broadcast batch dims. */
dr_status dr_matmul(const dr_tensor *a, const dr_tensor *b, dr_tensor **out);
/* Sum over `dims` (ndims == 0: all dims). Integer and bool inputs sum to int64. */
dr_status dr_sum(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                 dr_tensor **out);

/* ---- nn: convolution and resampling (core/ops/conv.c, pool.c) ------------ */
/* torch.nn.functional.conv2d on NCHW: input [N, C, H, W], weight
 * [O, C/groups, kh, kw], bias [O] or NULL; stride, padding, dilation are {h, w}.
 * out [N, O, Ho, Wo], Ho = (H + 2 ph - dh (kh - 1) - 1) / sh + 1 (floor). */
dr_status dr_conv2d(const dr_tensor *input, const dr_tensor *weight, const dr_tensor *bias,
                    const int64_t *stride, const int64_t *padding, const int64_t *dilation,
                    int64_t groups, dr_tensor **out);
/* Gradients of conv2d given grad_out [N, O, Ho, Wo]; a NULL grad pointer skips
 * that gradient (grad_bias is [O]). */
dr_status dr_conv2d_backward(const dr_tensor *grad_out, const dr_tensor *input,
                             const dr_tensor *weight, const int64_t *stride,
                             const int64_t *padding, const int64_t *dilation, int64_t groups,
                             dr_tensor **grad_input, dr_tensor **grad_weight,
                             dr_tensor **grad_bias);
/* F.interpolate(input, scale_factor=(scale_h, scale_w), mode='nearest') with integer
 * scales on [N, C, H, W]; the backward sums grad_out over each scale_h x scale_w block. */
dr_status dr_upsample_nearest2d(const dr_tensor *input, int64_t scale_h, int64_t scale_w,
                                dr_tensor **out);
dr_status dr_upsample_nearest2d_backward(const dr_tensor *grad_out, int64_t scale_h,
                                         int64_t scale_w, dr_tensor **grad_input);
/* F.avg_pool2d(input, kernel, stride, padding) with ceil_mode=False and
 * count_include_pad=True (torch's defaults); kernel, stride, padding are {h, w}. */
dr_status dr_avg_pool2d(const dr_tensor *input, const int64_t *kernel, const int64_t *stride,
                        const int64_t *padding, dr_tensor **out);
dr_status dr_avg_pool2d_backward(const dr_tensor *grad_out, const dr_tensor *input,
                                 const int64_t *kernel, const int64_t *stride,
                                 const int64_t *padding, dr_tensor **grad_input);

/* ---- nn: normalization, softmax, unary math (core/ops/norm.c, softmax.c, unary.c) */
/* Elementwise math with torch semantics on float tensors (float16/bfloat16 compute
 * in float32 and round once). Backward: grad_x = grad_out * f'(.), computed from
 * the input x or the output y as dr_unary_backward_uses_output says (the other
 * may be NULL). DR_UNARY_POW and DR_UNARY_CLAMP take parameters: use
 * dr_pow_scalar / dr_clamp and their backward functions. */
typedef enum dr_unary_op {
    DR_UNARY_SILU = 0,        /* x * sigmoid(x) */
    DR_UNARY_GELU = 1,        /* x/2 (1 + erf(x/sqrt 2)), approximate='none' */
    DR_UNARY_GELU_TANH = 2,   /* x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    DR_UNARY_QUICK_GELU = 3,  /* x * sigmoid(1.702 x) */
    DR_UNARY_RELU = 4,
    DR_UNARY_SIGMOID = 5,
    DR_UNARY_TANH = 6,
    DR_UNARY_EXP = 7,
    DR_UNARY_LOG = 8,         /* log(0) = -inf, log(x < 0) = nan */
    DR_UNARY_SQRT = 9,
    DR_UNARY_RSQRT = 10,
    DR_UNARY_ABS = 11,
    DR_UNARY_NEG = 12,
    DR_UNARY_POW = 13,        /* x ^ exponent (a scalar) */
    DR_UNARY_CLAMP = 14,      /* min(max(x, lo), hi) */
    DR_NUM_UNARY_OPS = 15
} dr_unary_op;
/* Name of a unary op ("silu"), or "unknown". */
const char *dr_unary_name(int32_t op);
/* 1 if the backward of `op` reads the forward output y, 0 if the input x
 * (y: sigmoid, tanh, exp, sqrt, rsqrt, relu; x: the rest). */
int dr_unary_backward_uses_output(int32_t op);
dr_status dr_unary(int32_t op, const dr_tensor *x, dr_tensor **out);
dr_status dr_unary_backward(int32_t op, const dr_tensor *grad_out, const dr_tensor *x,
                            const dr_tensor *y, dr_tensor **grad_x);
dr_status dr_silu(const dr_tensor *x, dr_tensor **out);
/* approximate: 0 for 'none' (erf), 1 for 'tanh'. */
dr_status dr_gelu(const dr_tensor *x, int32_t approximate, dr_tensor **out);
dr_status dr_quick_gelu(const dr_tensor *x, dr_tensor **out);
dr_status dr_relu(const dr_tensor *x, dr_tensor **out);
dr_status dr_sigmoid(const dr_tensor *x, dr_tensor **out);
dr_status dr_tanh(const dr_tensor *x, dr_tensor **out);
dr_status dr_exp(const dr_tensor *x, dr_tensor **out);
dr_status dr_log(const dr_tensor *x, dr_tensor **out);
dr_status dr_sqrt(const dr_tensor *x, dr_tensor **out);
dr_status dr_rsqrt(const dr_tensor *x, dr_tensor **out);
dr_status dr_abs(const dr_tensor *x, dr_tensor **out);
dr_status dr_neg(const dr_tensor *x, dr_tensor **out);
dr_status dr_pow_scalar(const dr_tensor *x, double exponent, dr_tensor **out);
dr_status dr_pow_scalar_backward(const dr_tensor *grad_out, const dr_tensor *x,
                                 double exponent, dr_tensor **grad_x);
/* Pass -INFINITY for "no min" and INFINITY for "no max" (torch's None); NaN
 * bounds are an error. min > max gives max everywhere, as torch. The gradient
 * flows where min <= x <= max. */
dr_status dr_clamp(const dr_tensor *x, double min, double max, dr_tensor **out);
dr_status dr_clamp_backward(const dr_tensor *grad_out, const dr_tensor *x, double min,
                            double max, dr_tensor **grad_x);

/* softmax / log_softmax over `dim`, max-subtracted. Backward from the output y:
 *   softmax:     dx = y * (dy - sum(dy * y))
 *   log_softmax: dx = dy - exp(y) * sum(dy)        (sums over dim) */
dr_status dr_softmax(const dr_tensor *x, int32_t dim, dr_tensor **out);
dr_status dr_log_softmax(const dr_tensor *x, int32_t dim, dr_tensor **out);
dr_status dr_softmax_backward(const dr_tensor *grad_out, const dr_tensor *y, int32_t dim,
                              dr_tensor **grad_x);
dr_status dr_log_softmax_backward(const dr_tensor *grad_out, const dr_tensor *y, int32_t dim,
                                  dr_tensor **grad_x);

/* layer_norm over the last `nnorm` dims (normalized_shape = their sizes), as
 * torch.native_layer_norm: out has x's dtype; mean and rstd (float32, shape
 * x.shape[:-nnorm] + [1]*nnorm) are optional outputs (NULL: not wanted) that the
 * backward takes. weight and bias (shape normalized_shape) may be NULL. */
dr_status dr_layer_norm(const dr_tensor *x, const int64_t *normalized_shape, int32_t nnorm,
                        const dr_tensor *weight, const dr_tensor *bias, double eps,
                        dr_tensor **out, dr_tensor **mean, dr_tensor **rstd);
/* Any of grad_x, grad_weight, grad_bias may be NULL (not needed). */
dr_status dr_layer_norm_backward(const dr_tensor *grad_out, const dr_tensor *x,
                                 const int64_t *normalized_shape, int32_t nnorm,
                                 const dr_tensor *mean, const dr_tensor *rstd,
                                 const dr_tensor *weight, dr_tensor **grad_x,
                                 dr_tensor **grad_weight, dr_tensor **grad_bias);
/* group_norm of x [N, C, *] in num_groups groups of C/num_groups channels, as
 * torch.native_group_norm: mean and rstd are float32 [N, num_groups], optional.
 * weight and bias ([C]) may be NULL. */
dr_status dr_group_norm(const dr_tensor *x, int64_t num_groups, const dr_tensor *weight,
                        const dr_tensor *bias, double eps, dr_tensor **out, dr_tensor **mean,
                        dr_tensor **rstd);
dr_status dr_group_norm_backward(const dr_tensor *grad_out, const dr_tensor *x,
                                 const dr_tensor *mean, const dr_tensor *rstd,
                                 const dr_tensor *weight, int64_t num_groups,
                                 dr_tensor **grad_x, dr_tensor **grad_weight,
                                 dr_tensor **grad_bias);

/* ---- nn: attention (core/ops/attention.c) ---------------------------------- */
/* torch.nn.functional.scaled_dot_product_attention with dropout_p = 0:
 *   out = softmax(q k^T * scale + mask) v,  q [B..., Lq, E], k [B..., Lk, E],
 *   v [B..., Lk, Ev] -> out [B..., Lq, Ev]; batch dims broadcast.
 * attn_mask (NULL: none) is bool (true = attend) or float (added to the scores),
 * broadcastable to [B..., Lq, Lk]; it gets no gradient. is_causal: query i attends
 * keys j <= i (top-left aligned, torch's ones(Lq, Lk).tril(), also for Lq != Lk);
 * not together with attn_mask. scale <= 0 or NaN means 1/sqrt(E). A query row
 * that attends no key gives zeros (as torch >= 2.5), not NaN. Memory-efficient
 * (flash attention): extra memory is a few tiles per thread, never [Lq, Lk].
 * f16/bf16 compute in float32. Recorded on the autograd tape for q, k and v. */
dr_status dr_scaled_dot_product_attention(const dr_tensor *q, const dr_tensor *k,
                                          const dr_tensor *v, const dr_tensor *attn_mask,
                                          int is_causal, double scale, dr_tensor **out);
/* The same, also giving logsumexp (float32 [B..., Lq]: log sum_j exp(score[i, j]),
 * -inf for rows that attend nothing) for the explicit backward; it may be NULL. */
dr_status dr_scaled_dot_product_attention_forward(const dr_tensor *q, const dr_tensor *k,
                                                  const dr_tensor *v, const dr_tensor *attn_mask,
                                                  int is_causal, double scale, dr_tensor **out,
                                                  dr_tensor **logsumexp);
/* Gradients given grad_out [B..., Lq, Ev], with the forward's arguments; out and
 * logsumexp come from dr_scaled_dot_product_attention_forward (both NULL: they are
 * recomputed). A NULL grad pointer skips that gradient; gradients have their
 * input's shape (broadcast batch dims summed) and dtype. */
dr_status dr_scaled_dot_product_attention_backward(
    const dr_tensor *grad_out, const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
    const dr_tensor *attn_mask, int is_causal, double scale, const dr_tensor *out,
    const dr_tensor *logsumexp, dr_tensor **grad_q, dr_tensor **grad_k, dr_tensor **grad_v);

/* ---- shape and indexing (core/ops/shape_ops.c, index.c) ---------------------- */
/* Also core/ops/reduce_more.c and random_more.c. torch semantics; dims are
 * 0-based here (negative from the end) and so are indices, which are int64
 * tensors (the Lua layer passes its 1-based indices minus one; out-of-range
 * errors name index + 1, the Lua user's number). Backward functions return the
 * gradient of each input; a NULL grad pointer means "not wanted". */

/* torch.cat / torch.stack of n tensors along dim; the dtype is torch.result_type
 * of all of them. cat_backward gives grads[i] = narrow(grad_out, dim, offset_i,
 * sizes[i]) and stack_backward select(grad_out, dim, i): views of grad_out. */
dr_status dr_cat(const dr_tensor *const *tensors, int32_t n, int32_t dim, dr_tensor **out);
dr_status dr_cat_backward(const dr_tensor *grad_out, const int64_t *sizes, int32_t n, int32_t dim,
                          dr_tensor **grads);
dr_status dr_stack(const dr_tensor *const *tensors, int32_t n, int32_t dim, dr_tensor **out);
dr_status dr_stack_backward(const dr_tensor *grad_out, int32_t n, int32_t dim, dr_tensor **grads);
/* Inclusive prefix sum along dim (integers and bool give int64, summed in int64;
 * floats in double). Backward: the reversed prefix sum of grad_out. */
dr_status dr_cumsum(const dr_tensor *t, int32_t dim, dr_tensor **out);
dr_status dr_cumsum_backward(const dr_tensor *grad_out, int32_t dim, dr_tensor **grad_input);
/* torch.arange(start, end, step): ceil((end - start) / step) values start + i*step
 * (double arithmetic; integer dtypes exact). torch.linspace(start, end, steps). */
dr_status dr_arange(double start, double end, double step, int32_t dtype, dr_device device,
                    dr_tensor **out);
dr_status dr_linspace(double start, double end, int64_t steps, int32_t dtype, dr_device device,
                      dr_tensor **out);

/* torch.index_select(t, dim, index) with index 1-D int64; the backward sums the
 * rows of grad_out that picked the same row (deterministic, double accumulation). */
dr_status dr_index_select(const dr_tensor *t, int32_t dim, const dr_tensor *index,
                          dr_tensor **out);
dr_status dr_index_select_backward(const dr_tensor *grad_out, const int64_t *input_sizes,
                                   int32_t ndim, int32_t dim, const dr_tensor *index,
                                   dr_tensor **grad_input);
/* torch.gather(t, dim, index): index int64 of t's rank, no larger than t except
 * at dim; out has index's shape. Backward: scatter-add into zeros of input_sizes. */
dr_status dr_gather(const dr_tensor *t, int32_t dim, const dr_tensor *index, dr_tensor **out);
dr_status dr_gather_backward(const dr_tensor *grad_out, const int64_t *input_sizes, int32_t ndim,
                             int32_t dim, const dr_tensor *index, dr_tensor **grad_input);
/* F.embedding(indices, weight): indices int64 of any shape, weight [num, dim];
 * out = indices.shape + [dim]. Only the weight has a gradient. */
dr_status dr_embedding(const dr_tensor *indices, const dr_tensor *weight, dr_tensor **out);
dr_status dr_embedding_backward(const dr_tensor *grad_out, const dr_tensor *indices,
                                int64_t num_weights, dr_tensor **grad_weight);
/* torch.where(cond, a, b): cond bool; all three broadcast; dtype result_type(a, b).
 * Backward: grad_a = sum_to(cond ? g : 0), grad_b = sum_to(cond ? 0 : g). */
dr_status dr_where(const dr_tensor *cond, const dr_tensor *a, const dr_tensor *b, dr_tensor **out);
dr_status dr_where_backward(const dr_tensor *grad_out, const dr_tensor *cond, const dr_tensor *a,
                            const dr_tensor *b, dr_tensor **grad_a, dr_tensor **grad_b);

/* Reductions over `dims` (ndims 0: every dim), float inputs, as dr_sum.
 * var = sum (x - mean)^2 / max(n - correction, 0); torch's default correction is 1.
 * Backward: mean g/n; var 2 (x - mean) g / (n - correction); std var's of
 * g / (2 std) (0 where std = 0). Deterministic (fixed blocks, double sums). */
dr_status dr_mean(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                  dr_tensor **out);
dr_status dr_mean_backward(const dr_tensor *grad_out, const dr_tensor *input, const int32_t *dims,
                           int32_t ndims, int keepdim, dr_tensor **grad_input);
dr_status dr_var(const dr_tensor *t, const int32_t *dims, int32_t ndims, double correction,
                 int keepdim, dr_tensor **out);
dr_status dr_var_backward(const dr_tensor *grad_out, const dr_tensor *input, const int32_t *dims,
                          int32_t ndims, double correction, int keepdim, dr_tensor **grad_input);
dr_status dr_std(const dr_tensor *t, const int32_t *dims, int32_t ndims, double correction,
                 int keepdim, dr_tensor **out);
dr_status dr_std_backward(const dr_tensor *grad_out, const dr_tensor *input,
                          const dr_tensor *result, const int32_t *dims, int32_t ndims,
                          double correction, int keepdim, dr_tensor **grad_input);
/* torch.max(t, dim, keepdim) / min: values and int64 indices of the first extreme
 * along dim (NaN counts as the extreme); either out pointer may be NULL. Any dtype.
 * Backward: grad_values scattered to the indices (the same for min). */
dr_status dr_max_dim(const dr_tensor *t, int32_t dim, int keepdim, dr_tensor **values,
                     dr_tensor **indices);
dr_status dr_min_dim(const dr_tensor *t, int32_t dim, int keepdim, dr_tensor **values,
                     dr_tensor **indices);
dr_status dr_max_dim_backward(const dr_tensor *grad_values, const dr_tensor *indices,
                              const int64_t *input_sizes, int32_t ndim, int32_t dim, int keepdim,
                              dr_tensor **grad_input);
dr_status dr_min_dim_backward(const dr_tensor *grad_values, const dr_tensor *indices,
                              const int64_t *input_sizes, int32_t ndim, int32_t dim, int keepdim,
                              dr_tensor **grad_input);
/* torch.max(t) / min over every element (0-d); the backward shares grad_out evenly
 * among the elements equal to the result, as torch. */
dr_status dr_max(const dr_tensor *t, dr_tensor **out);
dr_status dr_min(const dr_tensor *t, dr_tensor **out);
dr_status dr_max_backward(const dr_tensor *grad_out, const dr_tensor *input,
                          const dr_tensor *result, dr_tensor **grad_input);
dr_status dr_min_backward(const dr_tensor *grad_out, const dr_tensor *input,
                          const dr_tensor *result, dr_tensor **grad_input);
/* torch.argmax(t, dim, keepdim): ndims 1 (dims[0]) or 0 (the flattened input). */
dr_status dr_argmax(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                    dr_tensor **out);
dr_status dr_argmin(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                    dr_tensor **out);

/* torch.randint(low, high, sizes): values in [low, high), drawn as int64 and cast
 * to dtype; Tensor.normal_(mean, std) in place; F.dropout(x, p, training) with the
 * keep mask (bool, optional out) for dropout_backward = grad * mask / (1 - p).
 * Stream layouts in core/ops/random_more.c; gen NULL: the default generator. */
dr_status dr_randint(int64_t low, int64_t high, const int64_t *sizes, int32_t ndim, int32_t dtype,
                     dr_device device, dr_generator *gen, dr_tensor **out);
dr_status dr_normal_(dr_tensor *t, double mean, double std, dr_generator *gen);
dr_status dr_dropout(const dr_tensor *x, double p, int training, dr_generator *gen,
                     dr_tensor **out, dr_tensor **mask);
dr_status dr_dropout_backward(const dr_tensor *grad_out, const dr_tensor *mask, double p,
                              dr_tensor **grad_x);

/* ---- io: safetensors (core/io) -------------------------------------------- */
/* safetensors files (the format of huggingface/safetensors): an 8-byte little-endian
 * header length, a JSON header, the tensor bytes. open maps the file copy-on-write
 * (the file itself is never modified) and validates the whole header as the
 * reference implementation does; every problem is DR_ERR_IO with a message naming
 * the file and the tensor or key. get returns a CPU tensor whose storage points
 * into the mapping (no copy; a copy only when the bytes are misaligned for the
 * dtype, or for F64, which loads as float32) and keeps the mapping alive after
 * close. Dtypes: F32 F16 BF16 I64 I32 U8 BOOL (+ F64 -> float32); other dtypes of
 * the format open fine but get fails with DR_ERR_DTYPE naming tensor and dtype. */
typedef struct dr_safetensors dr_safetensors;
dr_status dr_safetensors_open(const char *path, dr_safetensors **out);
int64_t dr_safetensors_count(const dr_safetensors *f);
/* Tensor names sorted by bytes, i in [0, count); NULL out of range. */
const char *dr_safetensors_name(const dr_safetensors *f, int64_t i);
dr_status dr_safetensors_get(dr_safetensors *f, const char *name, dr_tensor **out);
/* The "__metadata__" value of `key`, or NULL. Keys sorted by bytes, i in [0, count). */
const char *dr_safetensors_metadata(const dr_safetensors *f, const char *key);
int64_t dr_safetensors_metadata_count(const dr_safetensors *f);
const char *dr_safetensors_metadata_key(const dr_safetensors *f, int64_t i);
void dr_safetensors_close(dr_safetensors *f);
/* Writes n CPU tensors (any strides) and nmeta metadata strings, as the reference
 * writes them (same order, same bytes), atomically: a temporary file beside `path`,
 * fsync, rename. Names must be unique UTF-8 and not "__metadata__". */
dr_status dr_safetensors_save(const char *path, const char *const *names,
                              const dr_tensor *const *tensors, int64_t n,
                              const char *const *meta_keys, const char *const *meta_values,
                              int64_t nmeta);

/* ---- autograd (core/autograd) -------------------------------------------- */
/* Grad mode is per thread; off inside backward and dr.no_grad. */
int dr_is_grad_enabled(void);
void dr_set_grad_enabled(int enabled);
/* Leaves only; floating point dtypes only. */
dr_status dr_tensor_set_requires_grad(dr_tensor *t, int requires_grad);
int dr_tensor_requires_grad(const dr_tensor *t);
int dr_tensor_is_leaf(const dr_tensor *t);
const char *dr_tensor_grad_fn_name(const dr_tensor *t);  /* NULL for leaves */
/* The accumulated gradient (a new reference) or *out = NULL if none yet. */
dr_status dr_tensor_get_grad(const dr_tensor *t, dr_tensor **out);
dr_status dr_tensor_set_grad(dr_tensor *t, const dr_tensor *grad);  /* NULL clears */
/* Same data, no history, requires_grad off. */
dr_status dr_tensor_detach(const dr_tensor *t, dr_tensor **out);
/* Accumulates d(root)/d(leaf) into every leaf's grad. grad NULL: root must have
 * one element (seed 1). Without retain_graph, saved tensors are dropped. */
dr_status dr_backward(const dr_tensor *root, const dr_tensor *grad, int retain_graph);
/* A node whose backward is supplied by the caller (the Lua bindings use it for
 * dr.checkpoint). fn writes one gradient per input into grads (a new reference,
 * or NULL) and returns 0, or sets an error with dr_set_error and returns it.
 * ctx is passed through; release(ctx) runs when the node is freed. */
typedef int (*dr_custom_backward_fn)(void *ctx, const dr_tensor *grad, dr_tensor **grads);
dr_status dr_autograd_custom(dr_tensor *out, const char *name, const dr_tensor *const *inputs,
                             int32_t ninputs, dr_custom_backward_fn fn, void *ctx,
                             void (*release)(void *ctx));
/* A release function for dr_autograd_custom that queues ctx instead of calling
 * back; the owner collects queued contexts with dr_autograd_take_released. */
void dr_autograd_queue_release(void *ctx);
int64_t dr_autograd_take_released(void **out, int64_t cap);
/* Sets the thread's error message (for callbacks that report failures). */
void dr_set_error(const char *message);

/* ---- optimizers (core/ops/optim.c) ----------------------------------------- */
/* In-place updates of contiguous float32 tensors of one shape, in one pass each;
 * run them with grad mode off (dr.no_grad), as parameters require grad.
 * AdamW (Loshchilov & Hutter; torch.optim.AdamW): p -= lr*wd*p; m = b1 m + (1-b1) g;
 * v = b2 v + (1-b2) g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). */
dr_status dr_adamw_step_(dr_tensor *param, const dr_tensor *grad, dr_tensor *exp_avg,
                         dr_tensor *exp_avg_sq, double lr, double beta1, double beta2,
                         double eps, double weight_decay, int64_t step);
/* torch.optim.SGD: d = g + wd p; buf = momentum buf + (1-dampening) d (buf = d at
 * step 1); d = nesterov ? d + momentum buf : buf; p -= lr d. buf may be NULL when
 * momentum is 0. first_step: 1 on the first update of this buffer. */
dr_status dr_sgd_step_(dr_tensor *param, const dr_tensor *grad, dr_tensor *momentum_buf,
                       double lr, double momentum, double dampening, double weight_decay,
                       int nesterov, int first_step);
/* self += weight * (end - self)   (EMA: lerp_(ema, param, 1 - decay)) */
dr_status dr_lerp_(dr_tensor *self, const dr_tensor *end, double weight);
dr_status dr_mul_scalar_(dr_tensor *self, double s);
/* sum of squares in double, deterministic (for clip_grad_norm) */
dr_status dr_sum_squares(const dr_tensor *t, double *out);

/* ---- random ------------------------------------------------------------- */
dr_generator *dr_default_generator(void);
void dr_manual_seed(uint64_t seed);
/* Four Philox4x32-10 outputs for one (counter, key); exposed for tests. */
void dr_philox4x32(const uint32_t *counter, const uint32_t *key, uint32_t *out);
dr_status dr_randn(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                   dr_generator *gen, dr_tensor **out);
dr_status dr_rand(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                  dr_generator *gen, dr_tensor **out);

/* ---- io: CLIP tokenizer (core/io/clip_tokenizer.c) ------------------------ */
/* [section: tokenizer] */
/* CLIP's byte-level BPE tokenizer, giving the ids transformers' CLIPTokenizer
 * (5.24.0, tokenizers 0.23.3) gives: NFC, whitespace runs to one space, lower case,
 * CLIP's pre-tokenizer pattern, BPE with "</w>", bos + ids + eos.
 * load reads a transformers tokenizer folder: vocab.json, merges.txt, and, when
 * present, tokenizer_config.json then special_tokens_map.json (bos/eos/unk/pad tokens
 * as strings or {"content": ..., "normalized": ...} objects, model_max_length; the
 * defaults are <|startoftext|>, <|endoftext|> for the other three, 77). Special
 * tokens found in the text become their id (so with SD2's pad_token "!", every "!"
 * is id 0, as in transformers). Errors name the file and the line or token.
 * A tokenizer object is not thread-safe: encode uses scratch buffers and a word
 * cache inside it; use one tokenizer per thread (the getters may be shared). */
typedef struct dr_clip_tokenizer dr_clip_tokenizer;
dr_status dr_clip_tokenizer_load(const char *dir, dr_clip_tokenizer **out);
void dr_clip_tokenizer_free(dr_clip_tokenizer *tok);
/* Encodes text[0..len) (UTF-8; invalid UTF-8 is DR_ERR_ARG naming the byte offset).
 * ids has room for *n ids (*n may be 0 and ids NULL). On success *n is the length
 * of the encoding, and its first min(*n before, *n after) ids are written: call
 * again with a bigger buffer when *n grew past the room. max_length <= 0: the whole
 * sequence, bos ... eos. max_length >= 2: truncated to max_length (eos kept last),
 * then, when pad != 0, padded with the pad id to exactly max_length. */
dr_status dr_clip_tokenizer_encode(dr_clip_tokenizer *tok, const char *text, size_t len,
                                   int32_t max_length, int32_t pad, int64_t *ids, int32_t *n);
/* Tokens in the vocabulary plus special tokens added to it. */
int32_t dr_clip_tokenizer_vocab_size(const dr_clip_tokenizer *tok);
/* -1 where the folder defines no such token (pad_token: null). */
int32_t dr_clip_tokenizer_bos_id(const dr_clip_tokenizer *tok);
int32_t dr_clip_tokenizer_eos_id(const dr_clip_tokenizer *tok);
int32_t dr_clip_tokenizer_pad_id(const dr_clip_tokenizer *tok);
int32_t dr_clip_tokenizer_model_max_length(const dr_clip_tokenizer *tok);
/* The token string of an id (byte-level characters, "</w>" kept), or NULL. Valid
 * until free. */
const char *dr_clip_tokenizer_token(const dr_clip_tokenizer *tok, int64_t id);

/* ---- io: PNG images (core/io/png.c) ---------------------------------------- */
/* [section: png] */
/* PNG files <-> image tensors [C, H, W] on the cpu (libpng). Channels: 1 gray,
 * 3 RGB, 4 RGBA.
 * dr_png_write: image float (float32/16, bfloat16; values clamped to [0, 1], NaN
 *   as 0, byte = (x * 255) rounded half to even in float32, as diffusers'
 *   numpy_to_pil) or uint8 (written as is), any strides; an 8-bit PNG written
 *   atomically (temporary file beside `path`, fsync, rename). Sides 1..32768.
 * dr_png_read: any PNG (1-16 bits, gray, gray+alpha, palette, RGB, RGBA, tRNS,
 *   interlaced) as a new contiguous [channels, H, W] tensor, channels 1, 3 or 4:
 *   3 drops alpha (PIL convert("RGB")), 4 adds alpha 1 when the file has none,
 *   1 is the file's gray or PIL's convert("L") of colour. dtype DR_U8 gives bytes
 *   (16-bit samples: their high byte, as PIL); DR_F32 gives v / 255, or v / 65535
 *   for 16-bit files. Gamma and colour-profile chunks are ignored (as PIL).
 *   Corrupt or truncated files fail with DR_ERR_IO naming the file.
 * dr_png_decode: the same from bytes in memory; `name` (may be NULL) is what error
 *   messages call them. */
dr_status dr_png_write(const char *path, const dr_tensor *image);
dr_status dr_png_read(const char *path, int32_t channels, int32_t dtype, dr_tensor **out);
dr_status dr_png_decode(const uint8_t *data, size_t size, const char *name, int32_t channels,
                        int32_t dtype, dr_tensor **out);

/* ---- io: JPEG images (core/io/jpeg.c) --------------------------------------- */
/* [section: jpeg] */
/* JPEG bytes <-> image tensors [C, H, W] on the cpu (libjpeg-turbo), in memory.
 * dr_jpeg_encode: image [1 or 3, H, W], float (float32/16, bfloat16; clamped to
 *   [0, 1], NaN as 0, byte = (x * 255) rounded half to even in float32, as png)
 *   or uint8, any strides; quality 1..100. The settings of PIL's
 *   Image.save(buf, "JPEG", quality=q): baseline, JFIF, 4:2:0 for RGB, standard
 *   Huffman tables, so the sizes are PIL's (DDPO's JPEG rewards). *data is a new
 *   buffer of *size bytes; free it with dr_jpeg_free. Sides 1..65500.
 * dr_jpeg_read / dr_jpeg_decode: any JPEG libjpeg reads (baseline, progressive,
 *   arithmetic; gray, YCbCr, RGB, CMYK/YCCK as PIL converts them) as a new
 *   contiguous [channels, H, W] tensor, channels 3 (RGB) or 1 (the file's gray, or
 *   PIL's convert("L")); dtype DR_U8 gives bytes, DR_F32 v / 255. Corrupt or
 *   truncated data fails with DR_ERR_IO naming the file (decode: `name`, may be
 *   NULL), never a gray-filled image. */
dr_status dr_jpeg_encode(const dr_tensor *image, int32_t quality, uint8_t **data, size_t *size);
void dr_jpeg_free(uint8_t *data);
dr_status dr_jpeg_read(const char *path, int32_t channels, int32_t dtype, dr_tensor **out);
dr_status dr_jpeg_decode(const uint8_t *data, size_t size, const char *name, int32_t channels,
                         int32_t dtype, dr_tensor **out);

/* ---- data (issue 11): tar shards, resizing, batch decoding (core/io/tar.c, resize.c, loader.c) */
/* [section: data] */
/* dr_tar_open: an index of a webdataset .tar shard from its headers alone (data is
 *   skipped by seeking): ustar, GNU (long names, base-256 sizes), v7 and pax path /
 *   size records; regular files only. Members group into samples by webdataset's
 *   key: "dir/000012.seg.jpg" has key "dir/000012" and extension "seg.jpg";
 *   consecutive members with one key are one sample. A bad header checksum or a
 *   member cut short by the end of the file ends the index there without failing:
 *   dr_tar_problem says what, where (byte) and after which member (NULL when the
 *   file was whole). The cut member stays in its sample with *present = the bytes
 *   there (else -1). dr_tar_open_memory indexes bytes in memory (they need not
 *   outlive the call; offsets refer to them). Strings live until dr_tar_close.
 * dr_tar_member: member j of sample i: name, extension, data offset and size. */
typedef struct dr_tar dr_tar;
dr_status dr_tar_open(const char *path, dr_tar **out);
dr_status dr_tar_open_memory(const uint8_t *data, size_t size, const char *name, dr_tar **out);
void dr_tar_close(dr_tar *t);
int64_t dr_tar_sample_count(const dr_tar *t);
const char *dr_tar_sample_key(const dr_tar *t, int64_t i);   /* NULL out of range */
int32_t dr_tar_sample_members(const dr_tar *t, int64_t i);   /* 0 out of range */
dr_status dr_tar_member(const dr_tar *t, int64_t i, int32_t j, const char **name, const char **ext,
                        int64_t *offset, int64_t *size, int64_t *present);
const char *dr_tar_problem(const dr_tar *t);
/* Pillow's Image.resize(filter) with reducing_gap None on uint8 [C, H, W] images,
 * bit for bit (antialiased: the kernel widens by the shrink factor). filter uses
 * Pillow's numbers: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
 * dr_image_resize: to width x height, uint8. dr_image_resize_crop: torchvision's
 *   Resize(size) + CenterCrop(size) on a PIL image (shorter side to size, centre
 *   crop), [C, size, size] as uint8 or float32 (byte / 255, ToTensor). */
dr_status dr_image_resize(const dr_tensor *image, int32_t width, int32_t height, int32_t filter,
                          dr_tensor **out);
dr_status dr_image_resize_crop(const dr_tensor *image, int32_t size, int32_t filter, int32_t dtype,
                               dr_tensor **out);
/* A pool of `threads` pthreads (0: none; images then decode in the calling thread
 * inside dr_image_batch_wait) that decodes, resizes and crops batches of images.
 * dr_image_batch_submit queues n images: image i is bytes [offsets[i], offsets[i] +
 *   sizes[i]) of file paths[i] (sizes[i] < 0: the whole file), JPEG or PNG by its
 *   first bytes, called names[i] in messages (names may be NULL: the paths); each
 *   becomes RGB [3, size, size] float32 in [0, 1] as dr_image_resize_crop. It
 *   returns at once; strings are copied.
 * dr_image_batch_wait: blocks until all are done; *out is [n, 3, size, size] (a new
 *   reference). Same bytes for any thread count. dr_image_batch_error: NULL when
 *   image i is fine, else why not (its slot is zero); valid after wait, until free.
 * dr_image_batch_free drops tasks not started, waits for running ones, frees.
 * Batches keep their loader alive: free the two in any order. */
typedef struct dr_image_loader dr_image_loader;
typedef struct dr_image_batch dr_image_batch;
dr_status dr_image_loader_create(int32_t threads, dr_image_loader **out);
void dr_image_loader_free(dr_image_loader *l);
int32_t dr_image_loader_threads(const dr_image_loader *l);
dr_status dr_image_batch_submit(dr_image_loader *l, int32_t n, const char *const *paths,
                                const int64_t *offsets, const int64_t *sizes,
                                const char *const *names, int32_t size, int32_t filter,
                                dr_image_batch **out);
dr_status dr_image_batch_wait(dr_image_batch *b, dr_tensor **out);
int32_t dr_image_batch_count(const dr_image_batch *b);
const char *dr_image_batch_error(const dr_image_batch *b, int32_t i);
void dr_image_batch_free(dr_image_batch *b);

/* ---- models (core/models) -------------------------------------------------- */
/* [section: models] */
/* Stable Diffusion's networks, built from their diffusers / transformers
 * config.json, with parameters named exactly as the checkpoint keys:
 *   "unet"       UNet2DConditionModel   (dr_unet_forward)
 *   "vae"        AutoencoderKL          (dr_vae_encode, dr_vae_decode)
 *   "clip_text"  CLIPTextModel          (dr_clip_text_forward)
 * create parses the config (errors name `context`, the key and the problem;
 * options of the reference classes that are not implemented are errors, never
 * ignored), allocates every parameter as a float32 leaf (requires_grad off) and
 * initialises it as torch.nn's defaults do, from the Philox stream of `seed` —
 * or, with seed DR_MODEL_NO_INIT, to zeros (quick; for loading a checkpoint).
 * Parameters are borrowed from the model (valid until dr_model_free); the
 * forwards record on the autograd tape like any op. */
typedef struct dr_model dr_model;
enum { DR_MODEL_NO_INIT = -1 };
dr_status dr_model_create(const char *kind, const char *config_json, size_t len,
                          const char *context, uint64_t seed, dr_model **out);
void dr_model_free(dr_model *m);
const char *dr_model_kind(const dr_model *m);
int64_t dr_model_param_count(const dr_model *m);
/* i in [0, count), in registration order (the module order of the reference). */
const char *dr_model_param_name(const dr_model *m, int64_t i);
dr_tensor *dr_model_param(const dr_model *m, int64_t i);
int dr_model_param_is_adapter(const dr_model *m, int64_t i);  /* a LoRA parameter */
int64_t dr_model_find_param(const dr_model *m, const char *name);  /* -1: none */
/* Re-initialises every parameter (adapters_only: only the LoRA ones) from seed. */
dr_status dr_model_init_(dr_model *m, uint64_t seed, int32_t adapters_only);
/* Recompute each resnet / transformer block in backward instead of keeping its
 * activations (gradient checkpointing). Off by default. */
void dr_model_set_checkpointing(dr_model *m, int on);
/* Moves every parameter to `device` in place (the tensor pointers stay valid; their
 * gradients are cleared). Move a model before building its optimizer. */
dr_status dr_model_to_device(dr_model *m, dr_device device);

enum { DR_LOAD_ALLOW_MISSING = 1, DR_LOAD_ALLOW_UNEXPECTED = 2 };
/* Copies the tensors of safetensors files into the parameters of the same name
 * (any float dtype, converted to float32). With a prefix, only keys that start
 * with it are read, the prefix stripped. Every missing (non-adapter) parameter,
 * unexpected key and wrong shape is listed by name in one DR_ERR_IO message,
 * unless flags allow missing / unexpected keys; nloaded (may be NULL) gets the
 * number of parameters written. On error parameters may be partly written. */
dr_status dr_model_load_safetensors(dr_model *m, const char *const *paths, int32_t npaths,
                                    const char *prefix, int32_t flags, int64_t *nloaded);
/* The same checks and report for n named tensors already in memory (a PyTorch
 * checkpoint read by dr.torch_load, say); `source` names them in messages. */
dr_status dr_model_load_tensors(dr_model *m, const char *const *names, dr_tensor *const *tensors,
                                int64_t n, const char *source, const char *prefix, int32_t flags,
                                int64_t *nloaded);
/* Adds LoRA adapters (peft's layout: <module>.lora_A.weight [rank, in], kaiming
 * uniform; <module>.lora_B.weight [out, rank], zeros; output += alpha / rank *
 * B A x) to every attention projection whose name ends in one of `targets`
 * ("to_q", "to_k", "to_v", "to_out.0"; "q_proj", ... for CLIP). nadded (may be
 * NULL) gets the number of adapted modules. */
dr_status dr_model_add_lora(dr_model *m, int64_t rank, double alpha, const char *const *targets,
                            int32_t ntargets, uint64_t seed, int64_t *nadded);

/* UNet2DConditionModel.forward(sample, timestep, encoder_hidden_states).sample:
 * sample [B, in_channels, H, W] (H, W divisible by 2^(blocks-1)), timestep a
 * 0-d or [B] tensor (any real dtype), encoder_hidden_states [B, L,
 * cross_attention_dim] -> [B, out_channels, H, W]. */
dr_status dr_unet_forward(dr_model *m, const dr_tensor *sample, const dr_tensor *timestep,
                          const dr_tensor *encoder_hidden_states, dr_tensor **out);
/* AutoencoderKL: encode x [B, in_channels, H, W] (in [-1, 1]) to the posterior's
 * mean and logvar (clamped to [-30, 20], as DiagonalGaussianDistribution), each
 * [B, latent_channels, H/f, W/f]; either may be NULL. decode z -> image. Neither
 * applies scaling_factor (the caller does, as the pipelines do). */
dr_status dr_vae_encode(dr_model *m, const dr_tensor *x, dr_tensor **mean, dr_tensor **logvar);
dr_status dr_vae_decode(dr_model *m, const dr_tensor *z, dr_tensor **out);
/* CLIPTextModel: input_ids int64 [B, L] (L <= max_position_embeddings) ->
 * hidden [B, L, hidden] and pooled [B, hidden] (either may be NULL).
 * skip = 0: last_hidden_state (after final_layer_norm); skip = k > 0: the hidden
 * state k layers before the last, passed through final_layer_norm (diffusers'
 * clip_skip = k). pooled is always from the last layer. */
dr_status dr_clip_text_forward(dr_model *m, const dr_tensor *input_ids, int32_t skip,
                               dr_tensor **hidden, dr_tensor **pooled);

/* ---- ImageReward / BLIP (issue 10; core/models/imagereward.c, blip_vit.c, bert.c) */
/* Model kind "imagereward": the official ImageReward (image-reward 1.5) - BLIP ViT
 * image encoder, BERT text encoder cross-attending to the image tokens, MLP head -
 * with parameters named as ImageReward.pt's keys. Its config is one JSON object:
 * {"text_config": <med_config.json>, "vision_config": {...}, "mlp_widths": [4 ints],
 *  "embed_dim": 256, "score_mean": .., "score_std": ..}; all but text_config default
 * to the official model (ViT-L/16 at 224). See imagereward.c.
 * preprocess: images float [B, 3, H, W] in [0, 1] -> pixel_values [B, 3, S, S]
 * (S = image_size): resize of the shorter side to S with torch's antialiased
 * bicubic, centre crop, CLIP normalisation (ImageReward's transform, on floats).
 * forward: pixel_values, input_ids int64 [B, L] and attention_mask [B, L] (1 =
 * token, 0 = padding; NULL: all ones) -> scores [B] (standardised ImageReward
 * scores), image_embeds [B, N + 1, width] (the ViT output), text_features [B,
 * hidden] (the text [CLS] state); any of the three may be NULL. */
dr_status dr_imagereward_preprocess(dr_model *m, const dr_tensor *images, dr_tensor **out);
dr_status dr_imagereward_forward(dr_model *m, const dr_tensor *pixel_values,
                                 const dr_tensor *input_ids, const dr_tensor *attention_mask,
                                 dr_tensor **scores, dr_tensor **image_embeds,
                                 dr_tensor **text_features);

/* ---- CLIP and the LAION aesthetic predictor (issue 10; core/models/clip_vision.c,
 * clip_text.c, aesthetic.c) */
/* Model kind "clip": transformers' CLIPModel from its CLIPConfig (config.json), with
 * parameters named as its state-dict keys. preprocess: images float [B, 3, H, W] in
 * [0, 1] -> pixel_values [B, 3, S, S] (S = vision_config.image_size), the transform
 * of ImageReward above. image_features: pixel_values -> visual_projection of the
 * post-layernormed class token, [B, projection_dim]; text_features: input_ids int64
 * [B, L] -> text_projection of the pooled text state, [B, projection_dim]. Neither
 * is normalised. */
dr_status dr_clip_preprocess(dr_model *m, const dr_tensor *images, dr_tensor **out);
dr_status dr_clip_image_features(dr_model *m, const dr_tensor *pixel_values, dr_tensor **out);
dr_status dr_clip_text_features(dr_model *m, const dr_tensor *input_ids, dr_tensor **out);
/* Model kind "aesthetic": the LAION improved aesthetic predictor's MLP, config
 * {"input_size": 768, "mlp_widths": [1024, 128, 64, 16]} (the official sizes by
 * default), parameters layers.{0,2,4,6,7}.{weight,bias}. forward: CLIP image
 * features [B, input_size] -> scores [B] (the features L2-normalised first). */
dr_status dr_aesthetic_forward(dr_model *m, const dr_tensor *image_features, dr_tensor **out);

/* ---- io: PyTorch checkpoints, WordPiece (issue 10) --------------------------- */
/* [section: torch_load] (core/io/torch_load.c, pickle.c, zip.c)
 * torch.save's zip checkpoints (torch >= 1.6), read safely: stored zip entries
 * (zip64 too; compressed entries are an error naming the entry), data.pkl through a
 * restricted unpickler (protocols 2-5) that builds only tensors and plain
 * containers; any other class or function (os.system's posix.system, a module
 * object) is DR_ERR_IO naming module.name. Tensors are CPU strided views of their
 * storages in the file's copy-on-write mapping (no copy; shared storages stay
 * shared); float64 loads as float32, int16 / int8 as int32, misaligned storages are
 * copied. The object is flattened: nested dict keys joined with '.', list / tuple
 * items named by 0-based index; entries in the file's order. Non-tensor leaves
 * (None, bool, int, float, str, bytes) are entries too, with their kind. */
typedef struct dr_torch_checkpoint dr_torch_checkpoint;
typedef enum dr_torch_value_kind {
    DR_TORCH_TENSOR = 0,
    DR_TORCH_NONE = 1,
    DR_TORCH_BOOL = 2,
    DR_TORCH_INT = 3,
    DR_TORCH_FLOAT = 4,
    DR_TORCH_STRING = 5,
    DR_TORCH_BYTES = 6
} dr_torch_value_kind;
dr_status dr_torch_load(const char *path, dr_torch_checkpoint **out);
int64_t dr_torch_checkpoint_count(const dr_torch_checkpoint *c);
/* i in [0, count); NULL / -1 out of range. */
const char *dr_torch_checkpoint_name(const dr_torch_checkpoint *c, int64_t i);
int32_t dr_torch_checkpoint_kind(const dr_torch_checkpoint *c, int64_t i);
/* A new reference to the tensor of entry i (DR_ERR_ARG if it is not a tensor). */
dr_status dr_torch_checkpoint_tensor(const dr_torch_checkpoint *c, int64_t i, dr_tensor **out);
/* bool and int entries: the value; float: 0. */
int64_t dr_torch_checkpoint_int(const dr_torch_checkpoint *c, int64_t i);
/* bool, int and float entries as a double. */
double dr_torch_checkpoint_number(const dr_torch_checkpoint *c, int64_t i);
/* str (UTF-8) and bytes entries: the bytes and their count (len may be NULL); else NULL. */
const char *dr_torch_checkpoint_string(const dr_torch_checkpoint *c, int64_t i, size_t *len);
/* Tensors taken stay valid after free. */
void dr_torch_checkpoint_free(dr_torch_checkpoint *c);

/* [section: wordpiece] (core/io/wordpiece.c)
 * BERT's WordPiece tokenizer with the ids of transformers' BertTokenizer
 * (bert-base-uncased: tokenizers' BertNormalizer, BertPreTokenizer, WordPiece):
 * special tokens cut out of the raw text first ([PAD] [UNK] [CLS] [SEP] [MASK] when
 * the vocabulary has them, plus `added`), then per piece: control characters
 * dropped and whitespace made ' ', spaces around CJK ideographs, with lowercase the
 * accents stripped (NFD, marks Mn removed) and lower case; split on whitespace and
 * punctuation; greedy longest-match-first WordPiece with "##" continuations, a word
 * of more than 100 characters or with no match is [UNK]. load reads vocab.txt (one
 * token per line, id = line number - 1); `added` (may be NULL) are nadded extra
 * special tokens that get the ids after the vocabulary's, in order (BLIP adds
 * "[DEC]", "[ENC]"). Not thread-safe (scratch buffers inside). */
typedef struct dr_wordpiece dr_wordpiece;
dr_status dr_wordpiece_load(const char *vocab_path, int32_t lowercase,
                            const char *const *added, int32_t nadded, dr_wordpiece **out);
void dr_wordpiece_free(dr_wordpiece *w);
/* Encodes text[0..len) (invalid UTF-8 is DR_ERR_ARG naming the byte offset) as
 * [CLS] tokens [SEP]; max_length >= 2 truncates the tokens to keep the result within
 * max_length (as truncation=True), <= 0 keeps them all. ids / *n as
 * dr_clip_tokenizer_encode: *n is the room in, the full length out. */
dr_status dr_wordpiece_encode(dr_wordpiece *w, const char *text, size_t len, int32_t max_length,
                              int64_t *ids, int32_t *n);
int32_t dr_wordpiece_vocab_size(const dr_wordpiece *w);  /* including added tokens */
int32_t dr_wordpiece_token_id(const dr_wordpiece *w, const char *token);  /* -1: none */
const char *dr_wordpiece_token(const dr_wordpiece *w, int64_t id);  /* NULL out of range */

/* ---- Collectives (issue 9; core/comm) ------------------------------------------
 * The ranks of one job as a communicator. dr_comm_world opens the process's world
 * once (the library owns it until exit): MPI when the process was started by an MPI
 * launcher (mpirun, srun: OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK set) in a build
 * with MPI, else one rank ("single"); a Slurm job step of several tasks in a build
 * without MPI is an error, not n independent runs. CPU tensors travel over MPI, CUDA
 * tensors over NCCL (dr_comm_enable_nccl, CUDA builds). Every rank must call the same
 * collectives in the same order with the same shapes and dtypes; the MPI path checks
 * this (a mismatch fails on every rank, naming both ranks' calls). float16/bfloat16
 * reduce in float32 on the MPI path; integers reduce exactly (MEAN is floats only).
 * Every call waits at most the timeout (seconds; dr_comm_set_timeout): then it fails
 * with DR_ERR_COMM naming the collective, the rank and the timeout, the communicator
 * is broken (later calls fail at once), and when the process exits every rank is
 * ended with MPI_Abort, so a dead or stuck rank never hangs the others. */
typedef struct dr_comm dr_comm;
typedef enum dr_reduce_op {
    DR_REDUCE_SUM = 0,
    DR_REDUCE_MEAN = 1,  /* sum / size; float dtypes only */
    DR_REDUCE_MAX = 2
} dr_reduce_op;

dr_status dr_comm_world(double timeout_s, dr_comm **out);
int dr_comm_rank(const dr_comm *c);
int dr_comm_size(const dr_comm *c);
int dr_comm_local_rank(const dr_comm *c);  /* rank among the ranks of this node */
int dr_comm_local_size(const dr_comm *c);
const char *dr_comm_backend(const dr_comm *c);  /* "single", "mpi", "mpi+nccl", "nccl" */
double dr_comm_timeout(const dr_comm *c);
dr_status dr_comm_set_timeout(dr_comm *c, double timeout_s);  /* > 0 */
/* In place on every rank: t = op over the ranks' t. */
dr_status dr_comm_all_reduce(dr_comm *c, dr_tensor *t, int32_t op);
/* out = the ranks' t concatenated along dim 0 in rank order ([size * n0, ...]; a
 * 0-d t gives [size]). */
dr_status dr_comm_all_gather(dr_comm *c, const dr_tensor *t, dr_tensor **out);
/* t = root's t on every rank. */
dr_status dr_comm_broadcast(dr_comm *c, dr_tensor *t, int32_t root);
dr_status dr_comm_barrier(dr_comm *c);
/* Host doubles (rewards, metrics; exact, no tensor round trip). */
dr_status dr_comm_all_reduce_f64(dr_comm *c, double *data, int64_t n, int32_t op);
dr_status dr_comm_all_gather_f64(dr_comm *c, const double *data, int64_t n, double *out);
/* Bytes of root to every rank: *n is the room in data in, the root's length out
 * (a longer message is DR_ERR_ARG on the receiver, after the call completed). */
dr_status dr_comm_broadcast_bytes(dr_comm *c, void *data, int64_t *n, int32_t root);
/* Marks this rank failed: at exit every rank is ended (MPI_Abort) instead of the
 * orderly MPI_Finalize that would wait for the others. */
void dr_comm_mark_failed(dr_comm *c);
/* Ends every rank now with exit code `code` (MPI_Abort; exit() with one rank). */
void dr_comm_abort(dr_comm *c, int32_t code);
/* CUDA builds: an NCCL communicator on CUDA device `device` for CUDA tensors, its
 * unique id bootstrapped over MPI, or without MPI from torchrun's environment
 * (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). DR_ERR_UNSUPPORTED elsewhere. */
dr_status dr_comm_enable_nccl(dr_comm *c, int32_t device);

#ifdef __cplusplus
}
#endif

#endif /* DIFFRL_H */
