/* Internals shared by core/tensor and core/ops: storage, header allocation,
 * dimension and dtype helpers. Not part of the public API. */
#ifndef DR_TENSOR_INTERNAL_H
#define DR_TENSOR_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include "diffrl.h"
#include "../util/error.h"

struct dr_storage {
    int32_t refcount;
    uint32_t version; /* bumped by in-place writes; autograd checks saved tensors */
    dr_device device;
    void *data;
    size_t nbytes;
    /* Bytes owned by someone else (a file mapping, core/io/safetensors.c): releasing
     * the storage calls owner_release(owner) instead of the backend's dealloc. */
    void *owner;
    void (*owner_release)(void *owner);
};

static inline dr_device dr_cpu(void) { dr_device d = {DR_CPU, 0}; return d; }
static inline bool dr_device_eq(dr_device a, dr_device b) {
    return a.type == b.type && a.index == b.index;
}
static inline bool dr_dtype_is_float(int32_t dt) {
    return dt == DR_F32 || dt == DR_F16 || dt == DR_BF16;
}
static inline bool dr_dtype_valid(int32_t dt) { return dt >= 0 && dt < DR_NUM_DTYPES; }

/* Drops one reference to a storage (freeing it with the last). */
void dr_storage_release(dr_storage *s);

/* Frees t->autograd (grad, grad_fn); defined in core/autograd. */
void dr_autograd_release_meta(dr_tensor *t);

/* The common end of an op: on failure, releases *out and sets it to NULL. */
static inline dr_status dr_drop_on_error(dr_status st, dr_tensor **out) {
    if (st != DR_OK) {
        dr_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

/* A contiguous tensor with fresh storage (uninitialised). */
dr_status dr_tensor_new(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                        const char *op, dr_tensor **out);
/* A new header sharing t's storage, same geometry. */
dr_status dr_tensor_alias(const dr_tensor *t, dr_tensor **out);
void dr_tensor_set_contiguous_strides(dr_tensor *t);
/* Normalizes a possibly negative dim against ndim; fails naming `op`. */
dr_status dr_norm_dim(int32_t dim, int32_t ndim, const char *op, int32_t *out);
/* Validates a size list (ndim range, non-negative, numel overflow). */
dr_status dr_check_sizes(const int64_t *sizes, int32_t ndim, const char *op, int64_t *numel);
/* torch's type promotion for two tensor operands. */
int32_t dr_promote_types(int32_t a, int32_t b);
/* Broadcast shape of a and b, or an error naming `op` and both shapes. */
dr_status dr_broadcast_shape(const dr_tensor *a, const dr_tensor *b, const char *op,
                             int64_t *sizes, int32_t *ndim);
/* A (possibly stride-0) view of t with the given shape, as torch.expand. */
dr_status dr_expand_to(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                       const char *op, dr_tensor **out);
/* t itself (retained) if already of `dtype`, else a converted copy. */
dr_status dr_as_dtype(const dr_tensor *t, int32_t dtype, dr_tensor **out);

#endif
