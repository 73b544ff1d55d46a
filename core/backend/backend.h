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

    /* ---- nn: normalization, softmax, unary math (ops/norm.c, ops/softmax.c, ops/unary.c) ---- */

    /* Fills contiguous f32 `out` from the Philox stream (see util/philox.h);
     * uniforms carry `uniform_bits` bits (24 for f32, 11 for f16, 8 for bf16) so
     * they stay below 1 in the dtype they are cast to. */
    dr_status (*random)(dr_tensor *out, dr_random_kind kind, uint64_t seed, uint64_t offset,
                        uint32_t uniform_bits);
} dr_backend;

extern const dr_backend dr_cpu_backend;
#ifdef DIFFRL_WITH_CUDA
extern const dr_backend dr_cuda_backend;
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
