/* Copies: contiguous, clone, dtype casts, copy_ with broadcasting, fill_. */
#include "tensor_internal.h"
#include "../backend/backend.h"

dr_status dr_tensor_copy_(dr_tensor *dst, const dr_tensor *src) {
    DR_TRY(dr_check_tensor(dst, "copy_", "destination"));
    DR_TRY(dr_check_tensor(src, "copy_", "source"));
    if (!dr_device_eq(dst->device, src->device))
        return dr_fail(DR_ERR_UNSUPPORTED, "copy_: copies between %s and %s are not supported yet",
                       dr_device_str(src->device), dr_device_str(dst->device));
    const dr_backend *be = dr_backend_get(dst->device, "copy_");
    if (!be) return DR_ERR_DEVICE;
    dr_tensor *expanded;
    DR_TRY(dr_expand_to(src, dst->sizes, dst->ndim, "copy_", &expanded));
    dr_status st = be->copy(dst, expanded);
    dr_tensor_release(expanded);
    return st;
}

dr_status dr_tensor_fill_(dr_tensor *t, double value) {
    DR_TRY(dr_check_tensor(t, "fill_", "tensor"));
    const dr_backend *be = dr_backend_get(t->device, "fill_");
    if (!be) return DR_ERR_DEVICE;
    return be->fill(t, value);
}

static dr_status copy_new(const dr_tensor *t, int32_t dtype, const char *op, dr_tensor **out) {
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_check_tensor(t, op, "tensor"));
    if (!dr_dtype_valid(dtype)) return dr_fail(DR_ERR_DTYPE, "%s: unknown dtype code %d", op, dtype);
    DR_TRY(dr_tensor_new(t->sizes, t->ndim, dtype, t->device, op, out));
    dr_status st = dr_tensor_copy_(*out, t);
    if (st != DR_OK) {
        dr_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

dr_status dr_tensor_clone(const dr_tensor *t, dr_tensor **out) {
    return copy_new(t, t ? t->scalar_type : DR_F32, "clone", out);
}

dr_status dr_tensor_contiguous(const dr_tensor *t, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "contiguous"));
    DR_TRY(dr_check_tensor(t, "contiguous", "tensor"));
    if (dr_tensor_is_contiguous(t)) return dr_tensor_alias(t, out);
    return copy_new(t, t->scalar_type, "contiguous", out);
}

dr_status dr_tensor_to_dtype(const dr_tensor *t, int32_t dtype, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "to"));
    DR_TRY(dr_check_tensor(t, "to", "tensor"));
    if (t->scalar_type == dtype) return dr_tensor_alias(t, out);
    return copy_new(t, dtype, "to", out);
}

dr_status dr_as_dtype(const dr_tensor *t, int32_t dtype, dr_tensor **out) {
    if (t->scalar_type == dtype) {
        dr_tensor_retain((dr_tensor *)t);
        *out = (dr_tensor *)t;
        return DR_OK;
    }
    return copy_new(t, dtype, "to", out);
}
