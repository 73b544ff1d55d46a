/* The backend interface: one table of function pointers per device type, in the
 * manner of ggml's ggml-backend-impl.h. core/ops validates arguments (shapes,
 * dtypes, devices), allocates outputs and then calls a backend with tensors that
 * already fit; a backend never sees bad input. Every backend passes the same op
 * specs; CPU is the reference. */
#ifndef DR_BACKEND_H
#define DR_BACKEND_H

#include <stddef.h>
#include "diffrl.h"
#include "../util/error.h"

typedef enum dr_binary_op { DR_OP_ADD, DR_OP_SUB, DR_OP_MUL, DR_OP_DIV } dr_binary_op;
typedef enum dr_random_kind { DR_RANDOM_NORMAL, DR_RANDOM_UNIFORM } dr_random_kind;

typedef struct dr_backend {
    const char *name;
    dr_status (*alloc)(int32_t device_index, size_t nbytes, void **ptr);
    void (*dealloc)(int32_t device_index, void *ptr, size_t nbytes);
    /* dst = src cast to dst's dtype; same shape (src may carry 0 strides). */
    dr_status (*copy)(dr_tensor *dst, const dr_tensor *src);
    dr_status (*fill)(dr_tensor *t, double value);
    /* out = a OP b (ADD/SUB: a +/- alpha*b); a and b have out's shape and dtype. */
    dr_status (*binary)(dr_binary_op op, dr_tensor *out, const dr_tensor *a,
                        const dr_tensor *b, double alpha);
    /* 3-D float32: out[i] = a[i] @ b[i]; any strides, batch strides may be 0; out
     * contiguous. */
    dr_status (*matmul)(dr_tensor *out, const dr_tensor *a, const dr_tensor *b);
    /* Sums the trailing `nreduce` dims of `in` into contiguous `out`, whose shape is
     * in's leading dims. Deterministic: independent of the thread count. */
    dr_status (*sum)(dr_tensor *out, const dr_tensor *in, int32_t nreduce);
    /* ---- nn: convolution and resampling (ops/conv.c, ops/pool.c) ---- */
    /* float32, every tensor contiguous NCHW and already checked by ops/conv.c;
     * bias and either gradient of conv2d_backward_weight may be NULL. Results do
     * not depend on the thread count. */
    dr_status (*conv2d)(dr_tensor *out, const dr_tensor *in, const dr_tensor *weight,
                        const dr_tensor *bias, const int64_t *stride, const int64_t *padding,
                        const int64_t *dilation, int64_t groups);
    dr_status (*conv2d_backward_input)(dr_tensor *grad_in, const dr_tensor *grad_out,
                                       const dr_tensor *weight, const int64_t *stride,
                                       const int64_t *padding, const int64_t *dilation,
                                       int64_t groups);
    dr_status (*conv2d_backward_weight)(dr_tensor *grad_weight, dr_tensor *grad_bias,
                                        const dr_tensor *grad_out, const dr_tensor *in,
                                        const int64_t *stride, const int64_t *padding,
                                        const int64_t *dilation, int64_t groups);
    /* float32 contiguous NCHW (ops/pool.c); the scales are out's size over in's. */
    dr_status (*upsample_nearest2d)(dr_tensor *out, const dr_tensor *in);
    dr_status (*upsample_nearest2d_backward)(dr_tensor *grad_in, const dr_tensor *grad_out);
    dr_status (*avg_pool2d)(dr_tensor *out, const dr_tensor *in, const int64_t *kernel,
                            const int64_t *stride, const int64_t *padding);
    dr_status (*avg_pool2d_backward)(dr_tensor *grad_in, const dr_tensor *grad_out,
                                     const int64_t *kernel, const int64_t *stride,
                                     const int64_t *padding);

    /* ---- nn: normalization, softmax, unary math (ops/norm.c, ops/softmax.c, ops/unary.c) ---- */
    /* Float32 elementwise; `in`/`grad_out`/`saved` have out's shape, any strides
     * (0 included); out / grad_in contiguous. p0, p1: pow's exponent, clamp's
     * bounds. The backward reads x or y, as dr_unary_backward_uses_output says. */
    dr_status (*unary)(dr_unary_op op, dr_tensor *out, const dr_tensor *in, double p0,
                       double p1);
    dr_status (*unary_backward)(dr_unary_op op, dr_tensor *grad_in, const dr_tensor *grad_out,
                                const dr_tensor *saved, double p0, double p1);
    /* Contiguous float32, same shapes; `dim` already normalized. */
    dr_status (*softmax)(dr_tensor *out, const dr_tensor *in, int32_t dim, int log);
    dr_status (*softmax_backward)(dr_tensor *grad_in, const dr_tensor *grad_out,
                                  const dr_tensor *y, int32_t dim, int log);
    /* Contiguous float32 viewed as [rows, cols]; weight/bias [cols] or NULL;
     * mean/rstd [rows]. The backward's grad outputs may be NULL (not wanted);
     * grad_weight/grad_bias sum over rows in a fixed order. */
    dr_status (*layer_norm)(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd,
                            const dr_tensor *in, const dr_tensor *weight,
                            const dr_tensor *bias, int64_t rows, int64_t cols, double eps);
    dr_status (*layer_norm_backward)(dr_tensor *grad_in, dr_tensor *grad_weight,
                                     dr_tensor *grad_bias, const dr_tensor *grad_out,
                                     const dr_tensor *in, const dr_tensor *mean,
                                     const dr_tensor *rstd, const dr_tensor *weight,
                                     int64_t rows, int64_t cols);
    /* Contiguous float32 [N, C, HW]; mean/rstd [N, G]; weight/bias [C] or NULL. */
    dr_status (*group_norm)(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd,
                            const dr_tensor *in, const dr_tensor *weight,
                            const dr_tensor *bias, int64_t n, int64_t c, int64_t hw,
                            int64_t groups, double eps);
    dr_status (*group_norm_backward)(dr_tensor *grad_in, dr_tensor *grad_weight,
                                     dr_tensor *grad_bias, const dr_tensor *grad_out,
                                     const dr_tensor *in, const dr_tensor *mean,
                                     const dr_tensor *rstd, const dr_tensor *weight,
                                     int64_t n, int64_t c, int64_t hw, int64_t groups);

    /* ---- nn: attention (ops/attention.c) ---- */
    /* Float32 q [batch..., Lq, E], k [batch..., Lk, E], v [batch..., Lk, Ev] with equal
     * batch dims and any batch and row strides (0 included), the last dim stride 1;
     * grad_out and out likewise; mask NULL, bool or float32, expanded to [batch...,
     * Lq, Lk] (any strides). out, lse and the gradients contiguous; lse float32
     * [batch..., Lq]; a NULL gradient is not computed. scale is resolved (> 0).
     * Extra memory: score tiles per thread (the backward also a packed copy of k
     * and v), never [Lq, Lk]. Results do not depend on the thread count. */
    dr_status (*attention)(dr_tensor *out, dr_tensor *lse, const dr_tensor *q,
                           const dr_tensor *k, const dr_tensor *v, const dr_tensor *mask,
                           int causal, double scale);
    dr_status (*attention_backward)(dr_tensor *grad_q, dr_tensor *grad_k, dr_tensor *grad_v,
                                    const dr_tensor *grad_out, const dr_tensor *q,
                                    const dr_tensor *k, const dr_tensor *v,
                                    const dr_tensor *mask, const dr_tensor *out,
                                    const dr_tensor *lse, int causal, double scale);

    /* ---- shape and indexing (ops/shape_ops.c, ops/index.c) ---- */
    /* Also ops/reduce_more.c and ops/random_more.c. Index tensors are int64 and
     * already checked to lie in range (index_check) unless said otherwise; every
     * result is independent of the thread count (no float atomics). */
    /* Integer `index`, any strides: *found = 1 and *bad = the first element (in
     * row-major order) outside [0, size); else *found = 0. */
    dr_status (*index_check)(const dr_tensor *index, int64_t size, int64_t *bad, int *found);
    /* Contiguous `in` [outer, n, inner] and out [outer, nidx, inner] of one dtype,
     * index contiguous [nidx]:  out[o, j, :] = in[o, index[j], :]. */
    dr_status (*index_select)(dr_tensor *out, const dr_tensor *in, const dr_tensor *index,
                              int64_t outer, int64_t inner);
    /* Contiguous float32 grad_in [outer, n, inner] (overwritten), grad_out
     * [outer, nidx, inner], index [nidx]: grad_in[o, r, :] = sum over j with
     * index[j] = r, in increasing j, of grad_out[o, j, :] (double accumulation). */
    dr_status (*index_add)(dr_tensor *grad_in, const dr_tensor *grad_out, const dr_tensor *index,
                           int64_t outer, int64_t inner);
    /* torch.gather: out (contiguous, index's shape, in's dtype)[..i..] =
     * in[..i.. with index[..i..] at dim]; in and index any strides. */
    dr_status (*gather)(dr_tensor *out, const dr_tensor *in, int32_t dim, const dr_tensor *index);
    /* Its backward: grad_in (contiguous float32, zero-filled by ops) += grad_out
     * (float32, index's shape) scattered along dim, each line in increasing order. */
    dr_status (*scatter_add)(dr_tensor *grad_in, int32_t dim, const dr_tensor *index,
                             const dr_tensor *grad_out);
    /* out (contiguous) = cond ? a : b; cond bool, a and b of out's dtype, all of
     * out's shape with any strides (0 included). */
    dr_status (*where)(dr_tensor *out, const dr_tensor *cond, const dr_tensor *a,
                       const dr_tensor *b);
    /* Mean (and, if var is not NULL, variance with `correction`) over the trailing
     * `nreduce` dims of float32 `in` (any strides) into contiguous float32 outputs
     * of in's leading shape; double accumulation in fixed blocks. take_sqrt:
     * var holds the standard deviation (the square root taken in double). */
    dr_status (*moments)(dr_tensor *mean, dr_tensor *var, const dr_tensor *in, int32_t nreduce,
                         double correction, int take_sqrt);
    /* Max (is_min 0) or min over the last dim of `in` (any dtype, any strides):
     * values (in's dtype) and/or indices (int64), contiguous, of in's leading
     * shape; the first extreme wins, NaN counts as the extreme (torch). The last
     * dim is not empty. */
    dr_status (*argreduce)(dr_tensor *values, dr_tensor *indices, const dr_tensor *in, int is_min);
    /* Backward of a full max/min: grad_in (contiguous float32, in's shape) =
     * g / count where in == value (NaN matches NaN), else 0. */
    dr_status (*extreme_backward)(dr_tensor *grad_in, const dr_tensor *in, double value, double g);
    /* Inclusive scan along dim (reverse: from the end) of float32 or int64 `in`
     * (any strides) into contiguous out of the same dtype; floats add in double. */
    dr_status (*cumsum)(dr_tensor *out, const dr_tensor *in, int32_t dim, int reverse);
    /* Contiguous out of numel n: arange (linspace 0) out[i] = start + i*step;
     * linspace (1): start + i*step for i < n/2, end - (n-1-i)*step after (torch). */
    dr_status (*fill_range)(dr_tensor *out, double start, double step, double end, int linspace);
    /* Contiguous int64 out: low + a uniform draw below `range` (ops/random_more.c). */
    dr_status (*randint)(dr_tensor *out, int64_t low, uint64_t range, uint64_t seed,
                         uint64_t offset);
    /* Contiguous bool mask: 1 where the element's 24-bit uniform u < 1 - p. */
    dr_status (*dropout_mask)(dr_tensor *mask, double p, uint64_t seed, uint64_t offset);
    /* out = in * (mask ? scale : 0); in and out one float dtype, mask bool, all of
     * out's shape, any strides. */
    dr_status (*masked_scale)(dr_tensor *out, const dr_tensor *in, const dr_tensor *mask,
                              double scale);

    /* ---- optimizers (ops/optim.c): in place on contiguous float32 ---- */
    dr_status (*adamw)(dr_tensor *param, const dr_tensor *grad, dr_tensor *exp_avg,
                       dr_tensor *exp_avg_sq, const double *hyper); /* see ops/optim.c */
    dr_status (*sgd)(dr_tensor *param, const dr_tensor *grad, dr_tensor *buf, const double *hyper);
    dr_status (*lerp)(dr_tensor *self, const dr_tensor *end, double weight);
    dr_status (*scale)(dr_tensor *self, double s);
    dr_status (*sum_squares)(const dr_tensor *t, double *out);

    /* Fills contiguous f32 `out` from the Philox stream (see util/philox.h);
     * uniforms carry `uniform_bits` bits (24 for f32, 11 for f16, 8 for bf16) so
     * they stay below 1 in the dtype they are cast to. */
    dr_status (*random)(dr_tensor *out, dr_random_kind kind, uint64_t seed, uint64_t offset,
                        uint32_t uniform_bits);
} dr_backend;

extern const dr_backend dr_cpu_backend;
#ifdef DIFFRL_WITH_CUDA
extern const dr_backend dr_cuda_backend;
/* dst = src where exactly one is a CUDA tensor (same shape; src already expanded). */
dr_status dr_cuda_transfer(dr_tensor *dst, const dr_tensor *src);
void dr_cuda_empty_cache(void);
/* The device's compute stream as a cudaStream_t (NULL with the error set, naming op). */
void *dr_cuda_stream_handle(int32_t device_index, const char *op);
#endif

/* DR_OK if backend `be` has kernel `fn`, else the error "op: not implemented on
 * the <name> backend yet". Ops check every kernel they call beyond the first
 * block of the table:  DR_TRY(DR_KERNEL(be, conv2d, "conv2d"));  */
#define DR_KERNEL(be, fn, op)                                                         \
    ((be)->fn ? DR_OK                                                                 \
              : dr_fail(DR_ERR_UNSUPPORTED, "%s: not implemented on the %s backend yet", \
                        (op), (be)->name))

/* The backend of a device, or NULL with the error set ("op: ..."). */
const dr_backend *dr_backend_get(dr_device device, const char *op);

#endif
