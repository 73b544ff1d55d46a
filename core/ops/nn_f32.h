/* Float32 staging shared by the nn ops (unary.c, softmax.c, norm.c): they take
 * float32, float16 or bfloat16 tensors, compute in float32 and hand results back
 * in the input's dtype, as torch does for half types on CPU. */
#ifndef DR_OPS_NN_F32_H
#define DR_OPS_NN_F32_H

#include <stdbool.h>

#include "../tensor/tensor_internal.h"

/* A tensor argument of `op` that must be of a float dtype. */
static inline dr_status dr_nn_check_float(const dr_tensor *t, const char *op, const char *arg) {
    DR_TRY(dr_check_tensor(t, op, arg));
    if (!dr_dtype_is_float(t->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: %s %s has dtype %s; expected float32, float16 or "
                       "bfloat16", op, arg, dr_shape_str(t), dr_dtype_name(t->scalar_type));
    return DR_OK;
}

/* b (NULL allowed) must be on a's device. */
static inline dr_status dr_nn_check_device(const dr_tensor *a, const dr_tensor *b, const char *op,
                                           const char *bname) {
    if (b && !dr_device_eq(a->device, b->device))
        return dr_fail(DR_ERR_DEVICE, "%s: %s is on %s but the input is on %s", op, bname,
                       dr_device_str(b->device), dr_device_str(a->device));
    return DR_OK;
}

/* Two tensors of `op` that must have the same shape. */
static inline dr_status dr_nn_check_same_shape(const dr_tensor *a, const dr_tensor *b,
                                               const char *op, const char *aname,
                                               const char *bname) {
    bool same = a->ndim == b->ndim;
    for (int32_t d = 0; same && d < a->ndim; d++) same = a->sizes[d] == b->sizes[d];
    if (!same)
        return dr_fail(DR_ERR_SHAPE, "%s: %s %s and %s %s must have the same shape", op, aname,
                       dr_shape_str(a), bname, dr_shape_str(b));
    return DR_OK;
}

/* t as float32 (and contiguous if asked): t itself, retained, when it already is;
 * NULL for NULL. */
static inline dr_status dr_nn_stage(const dr_tensor *t, bool contiguous, dr_tensor **out) {
    dr_tensor *f = NULL;
    *out = NULL;
    if (!t) return DR_OK;
    DR_TRY(dr_as_dtype(t, DR_F32, &f));
    if (!contiguous || dr_tensor_is_contiguous(f)) {
        *out = f;
        return DR_OK;
    }
    dr_status st = dr_tensor_contiguous(f, out);
    dr_tensor_release(f);
    return st;
}

/* Hands the result `res` (consumed; NULL when not computed or on an earlier
 * failure) to *out in `dtype`; *out stays NULL when st or the cast fails. A NULL
 * out drops res. */
static inline dr_status dr_nn_finish(dr_status st, dr_tensor *res, int32_t dtype, dr_tensor **out) {
    if (st == DR_OK && res && res->scalar_type != dtype) {
        dr_tensor *cast = NULL;
        st = dr_tensor_to_dtype(res, dtype, &cast);
        dr_tensor_release(res);
        res = cast;
    }
    if (st == DR_OK && out) *out = res;
    else dr_tensor_release(res);
    return st;
}

#endif
