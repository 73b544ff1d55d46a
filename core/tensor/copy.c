/* Copies: contiguous, clone, dtype casts, copy_ with broadcasting, fill_.
 * Backward of contiguous/clone: the gradient itself; of a cast: the gradient cast
 * back. copy_ and fill_ write in place: they bump the storage version (so a
 * backward that saved the old values fails loudly) and are not differentiable. */
#include "tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

static dr_status copy_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return dr_as_dtype(g, n->in_dtype[0], &grads[0]);
}

static dr_status record_copy(dr_status st, const dr_tensor *t, const char *name, dr_tensor **out) {
    if (st != DR_OK) return st;
    dr_node *node;
    st = dr_autograd_record(*out, name, copy_backward, &t, 1, &node);
    return dr_drop_on_error(st, out);
}

dr_status dr_tensor_copy_(dr_tensor *dst, const dr_tensor *src) {
    DR_TRY(dr_check_tensor(dst, "copy_", "destination"));
    DR_TRY(dr_check_tensor(src, "copy_", "source"));
    bool across = !dr_device_eq(dst->device, src->device);
    if (across && dst->device.type == src->device.type)
        return dr_fail(DR_ERR_UNSUPPORTED, "copy_: copies between %s and %s (two devices of one "
                       "kind) are not supported yet; go through the cpu",
                       dr_device_str(src->device), dr_device_str(dst->device));
    /* Across devices the CUDA side is the one that knows both (a CPU backend never
     * sees device memory). */
    const dr_backend *be = dr_backend_get(dst->device.type == DR_CPU ? src->device : dst->device,
                                          "copy_");
    if (!be) return DR_ERR_DEVICE;
    if (dr_grad_mode() && dr_requires_grad(src))
        return dr_fail(DR_ERR_UNSUPPORTED, "copy_: copying a tensor %s that requires grad in place "
                       "is not differentiable yet; use clone(), or dr.no_grad", dr_shape_str(src));
    DR_TRY(dr_autograd_inplace(dst, "copy_"));
    dr_tensor *expanded;
    DR_TRY(dr_expand_to(src, dst->sizes, dst->ndim, "copy_", &expanded));
    dr_status st;
#ifdef DIFFRL_WITH_CUDA
    if (across) st = dr_cuda_transfer(dst, expanded);
    else
#endif
    st = be->copy(dst, expanded);
    dr_tensor_release(expanded);
    return st;
}

static dr_status to_device_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return dr_tensor_to_device(g, n->in_device[0], &grads[0]);
}

dr_status dr_tensor_to_device(const dr_tensor *t, dr_device device, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "to"));
    DR_TRY(dr_check_tensor(t, "to", "tensor"));
    if (!dr_backend_get(device, "to")) return DR_ERR_DEVICE;
    dr_status st;
    if (dr_device_eq(t->device, device)) {
        st = dr_tensor_alias(t, out);
    } else {
        DR_TRY(dr_tensor_new(t->sizes, t->ndim, t->scalar_type, device, "to", out));
        bool grad = dr_grad_pause();
        st = dr_drop_on_error(dr_tensor_copy_(*out, t), out);
        dr_grad_resume(grad);
    }
    if (st != DR_OK) return st;
    dr_node *node;
    st = dr_autograd_record(*out, "to", to_device_backward, &t, 1, &node);
    return dr_drop_on_error(st, out);
}

dr_status dr_tensor_fill_(dr_tensor *t, double value) {
    DR_TRY(dr_check_tensor(t, "fill_", "tensor"));
    const dr_backend *be = dr_backend_get(t->device, "fill_");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(dr_autograd_inplace(t, "fill_"));
    return be->fill(t, value);
}

dr_status dr_tensor_rebind_(dr_tensor *t, dr_tensor *base, int64_t offset) {
    DR_TRY(dr_check_tensor(t, "rebind_", "tensor"));
    DR_TRY(dr_check_tensor(base, "rebind_", "base"));
    if (dr_grad_mode() && dr_requires_grad(t))
        return dr_fail(DR_ERR_ARG, "rebind_: tensor %s requires grad; do it inside dr.no_grad",
                       dr_shape_str(t));
    if (t->autograd && !dr_tensor_is_leaf(t))
        return dr_fail(DR_ERR_ARG, "rebind_: tensor %s is not a leaf", dr_shape_str(t));
    if (base->scalar_type != t->scalar_type || !dr_device_eq(base->device, t->device) ||
        !dr_tensor_is_contiguous(base))
        return dr_fail(DR_ERR_ARG, "rebind_: base %s must be contiguous %s on %s like the tensor",
                       dr_shape_str(base), dr_dtype_name(t->scalar_type), dr_device_str(t->device));
    int64_t n = dr_tensor_numel(t);
    if (offset < 0 || offset > dr_tensor_numel(base) - n)
        return dr_fail(DR_ERR_ARG, "rebind_: %lld elements at offset %lld do not fit base %s",
                       (long long)n, (long long)offset, dr_shape_str(base));
    dr_tensor *slot;
    int64_t flat[1] = {dr_tensor_numel(base)};
    dr_tensor *flat_view = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_tensor_view(base, flat, 1, &flat_view);
    if (st == DR_OK) st = dr_tensor_narrow(flat_view, 0, offset, n, &slot);
    dr_tensor_release(flat_view);
    if (st == DR_OK) {
        dr_tensor *shaped;
        st = dr_tensor_view(slot, t->sizes, t->ndim, &shaped);
        dr_tensor_release(slot);
        if (st == DR_OK) st = dr_tensor_copy_(shaped, t);
        if (st == DR_OK) { /* t takes the slot's storage reference and geometry */
            dr_storage *old = t->storage;
            t->storage = shaped->storage;
            __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_RELAXED);
            t->storage_offset = shaped->storage_offset;
            for (int32_t d = 0; d < t->ndim; d++) t->strides[d] = shaped->strides[d];
            dr_storage_release(old);
        }
        dr_tensor_release(shaped);
    }
    dr_grad_resume(grad);
    return st;
}

static dr_status copy_new(const dr_tensor *t, int32_t dtype, const char *op, dr_tensor **out) {
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_check_tensor(t, op, "tensor"));
    if (!dr_dtype_valid(dtype)) return dr_fail(DR_ERR_DTYPE, "%s: unknown dtype code %d", op, dtype);
    DR_TRY(dr_tensor_new(t->sizes, t->ndim, dtype, t->device, op, out));
    bool grad = dr_grad_pause();
    dr_status st = dr_tensor_copy_(*out, t);
    dr_grad_resume(grad);
    return record_copy(dr_drop_on_error(st, out), t, op, out);
}

dr_status dr_tensor_clone(const dr_tensor *t, dr_tensor **out) {
    return copy_new(t, t ? t->scalar_type : DR_F32, "clone", out);
}

dr_status dr_tensor_contiguous(const dr_tensor *t, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "contiguous"));
    DR_TRY(dr_check_tensor(t, "contiguous", "tensor"));
    if (dr_tensor_is_contiguous(t)) return record_copy(dr_tensor_alias(t, out), t, "contiguous", out);
    return copy_new(t, t->scalar_type, "contiguous", out);
}

dr_status dr_tensor_to_dtype(const dr_tensor *t, int32_t dtype, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "to"));
    DR_TRY(dr_check_tensor(t, "to", "tensor"));
    if (t->scalar_type == dtype) return record_copy(dr_tensor_alias(t, out), t, "to", out);
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
