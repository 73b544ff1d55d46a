/* Views: new geometry over the same storage, no data copied.
 *
 * Backward of each (the gradient of the input from that of the view):
 *   view/reshape: reshape back;  permute: the inverse permutation;
 *   transpose: the same transpose;  expand: sum over the expanded dims;
 *   narrow/select: zeros of the input's shape with the gradient copied into
 *   the narrowed/selected part. */
#include "tensor_internal.h"
#include "../autograd/autograd.h"

static dr_status reshape_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return dr_tensor_reshape(g, n->in_sizes[0], n->in_ndim[0], &grads[0]);
}

static dr_status permute_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    int32_t inverse[DR_MAX_DIMS];
    for (int32_t i = 0; i < g->ndim; i++) inverse[n->ints[i]] = i;
    return dr_tensor_permute(g, inverse, g->ndim, &grads[0]);
}

static dr_status transpose_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return dr_tensor_transpose(g, (int32_t)n->ints[0], (int32_t)n->ints[1], &grads[0]);
}

/* zeros of the input's shape; `part` is the region the forward viewed */
static dr_status scatter_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads,
                                  bool is_select) {
    dr_tensor *z = NULL, *part = NULL;
    dr_status st = dr_tensor_full(n->in_sizes[0], n->in_ndim[0], g->scalar_type, g->device, 0, &z);
    if (st == DR_OK)
        st = is_select ? dr_tensor_select(z, (int32_t)n->ints[0], n->ints[1], &part)
                       : dr_tensor_narrow(z, (int32_t)n->ints[0], n->ints[1], n->ints[2], &part);
    if (st == DR_OK) st = dr_tensor_copy_(part, g);
    dr_tensor_release(part);
    if (st == DR_OK) grads[0] = z;
    else dr_tensor_release(z);
    return st;
}
static dr_status narrow_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return scatter_backward(n, g, grads, false);
}
static dr_status select_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return scatter_backward(n, g, grads, true);
}

/* Puts the view `*out` of t on the tape; params go to node->ints. */
static dr_status record(dr_status st, const dr_tensor *t, dr_tensor **out, const char *name,
                        dr_backward_fn fn, const int64_t *params, int32_t nparams) {
    if (st != DR_OK) return st;
    dr_node *node;
    st = dr_autograd_record(*out, name, fn, &t, 1, &node);
    for (int32_t i = 0; node && i < nparams; i++) node->ints[i] = params[i];
    return dr_drop_on_error(st, out);
}

/* Strides for viewing t as `sizes` without a copy, or false when the memory
 * layout does not allow it (torch's computeStride: split/merge only within runs
 * of dims that are contiguous with each other). */
static bool view_strides(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                         int64_t *strides) {
    int64_t numel = dr_tensor_numel(t);
    if (numel == 0) {
        int64_t s = 1;
        for (int32_t i = ndim - 1; i >= 0; i--) {
            strides[i] = s;
            s *= sizes[i] > 1 ? sizes[i] : 1;
        }
        return true;
    }
    int32_t view_d = ndim - 1;
    int64_t chunk_base_stride = t->ndim ? t->strides[t->ndim - 1] : 1;
    int64_t tensor_numel = 1, view_numel = 1;
    for (int32_t td = t->ndim - 1; td >= 0; td--) {
        tensor_numel *= t->sizes[td];
        if (td == 0 || (t->sizes[td - 1] != 1 &&
                        t->strides[td - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || sizes[view_d] == 1)) {
                strides[view_d] = view_numel * chunk_base_stride;
                view_numel *= sizes[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return false;
            if (td > 0) {
                chunk_base_stride = t->strides[td - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    while (view_d >= 0) { /* trailing size-1 dims of a 0-d source */
        strides[view_d] = 1;
        view_d--;
    }
    return true;
}

/* Resolves one -1 entry and checks the element count. */
static dr_status infer_sizes(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                             const char *op, int64_t *resolved) {
    if (ndim < 0 || ndim > DR_MAX_DIMS)
        return dr_fail(DR_ERR_ARG, "%s: %d dimensions requested, at most %d are supported", op,
                       ndim, DR_MAX_DIMS);
    DR_TRY(dr_check_array(sizes, ndim, op, "sizes"));
    int64_t numel = dr_tensor_numel(t), known = 1;
    int32_t infer = -1;
    for (int32_t i = 0; i < ndim; i++) {
        resolved[i] = sizes[i];
        if (sizes[i] == -1) {
            if (infer >= 0) return dr_fail(DR_ERR_ARG, "%s: only one dimension can be -1", op);
            infer = i;
        } else if (sizes[i] < 0) {
            return dr_fail(DR_ERR_ARG, "%s: invalid size %lld in %s", op, (long long)sizes[i],
                           dr_sizes_str(sizes, ndim));
        } else if (sizes[i] != 0 && known > INT64_MAX / sizes[i]) {
            return dr_fail(DR_ERR_ARG, "%s: shape %s has too many elements", op,
                           dr_sizes_str(sizes, ndim));
        } else {
            known *= sizes[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || numel % known != 0)
            return dr_fail(DR_ERR_SHAPE, "%s: shape %s is invalid for input of size %lld", op,
                           dr_sizes_str(sizes, ndim), (long long)numel);
        resolved[infer] = numel / known;
    } else if (known != numel) {
        return dr_fail(DR_ERR_SHAPE, "%s: shape %s is invalid for input of size %lld (shape %s)",
                       op, dr_sizes_str(sizes, ndim), (long long)numel, dr_shape_str(t));
    }
    return DR_OK;
}

static dr_status make_view(const dr_tensor *t, const int64_t *sizes, const int64_t *strides,
                           int32_t ndim, int64_t offset, dr_tensor **out) {
    DR_TRY(dr_tensor_alias(t, out));
    (*out)->ndim = ndim;
    (*out)->storage_offset = offset;
    for (int32_t i = 0; i < ndim; i++) {
        (*out)->sizes[i] = sizes[i];
        (*out)->strides[i] = strides[i];
    }
    return DR_OK;
}

dr_status dr_tensor_view(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                         dr_tensor **out) {
    int64_t resolved[DR_MAX_DIMS], strides[DR_MAX_DIMS];
    DR_TRY(dr_check_out(out, "view"));
    DR_TRY(dr_check_tensor(t, "view", "tensor"));
    DR_TRY(infer_sizes(t, sizes, ndim, "view", resolved));
    if (!view_strides(t, resolved, ndim, strides))
        return dr_fail(DR_ERR_SHAPE, "view: shape %s is not compatible with the strides of the "
                       "input %s; use reshape (which copies) or contiguous() first",
                       dr_sizes_str(resolved, ndim), dr_shape_str(t));
    return record(make_view(t, resolved, strides, ndim, t->storage_offset, out), t, out, "view",
                  reshape_backward, NULL, 0);
}

dr_status dr_tensor_reshape(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                            dr_tensor **out) {
    int64_t resolved[DR_MAX_DIMS], strides[DR_MAX_DIMS];
    DR_TRY(dr_check_out(out, "reshape"));
    DR_TRY(dr_check_tensor(t, "reshape", "tensor"));
    DR_TRY(infer_sizes(t, sizes, ndim, "reshape", resolved));
    if (view_strides(t, resolved, ndim, strides))
        return record(make_view(t, resolved, strides, ndim, t->storage_offset, out), t, out,
                      "reshape", reshape_backward, NULL, 0);
    dr_tensor *c; /* contiguous copy, then a view of it: both on the tape */
    DR_TRY(dr_tensor_contiguous(t, &c));
    dr_status st = dr_tensor_view(c, resolved, ndim, out);
    dr_tensor_release(c);
    return st;
}

dr_status dr_tensor_permute(const dr_tensor *t, const int32_t *dims, int32_t ndim,
                            dr_tensor **out) {
    DR_TRY(dr_check_out(out, "permute"));
    DR_TRY(dr_check_tensor(t, "permute", "tensor"));
    DR_TRY(dr_check_array(dims, ndim, "permute", "dims"));
    if (ndim != t->ndim)
        return dr_fail(DR_ERR_ARG, "permute: %d dims given for a %d-d tensor %s", ndim, t->ndim,
                       dr_shape_str(t));
    int64_t sizes[DR_MAX_DIMS], strides[DR_MAX_DIMS], perm[DR_MAX_DIMS];
    bool seen[DR_MAX_DIMS] = {false};
    for (int32_t i = 0; i < ndim; i++) {
        int32_t d;
        DR_TRY(dr_norm_dim(dims[i], ndim, "permute", &d));
        if (seen[d]) return dr_fail(DR_ERR_ARG, "permute: dimension %d repeated", d + 1);
        seen[d] = true;
        sizes[i] = t->sizes[d];
        strides[i] = t->strides[d];
        perm[i] = d;
    }
    return record(make_view(t, sizes, strides, ndim, t->storage_offset, out), t, out, "permute",
                  permute_backward, perm, ndim);
}

dr_status dr_tensor_transpose(const dr_tensor *t, int32_t dim0, int32_t dim1, dr_tensor **out) {
    int32_t d0, d1;
    DR_TRY(dr_check_out(out, "transpose"));
    DR_TRY(dr_check_tensor(t, "transpose", "tensor"));
    int32_t nd = t->ndim ? t->ndim : 1; /* torch allows transpose(0,0)/(-1,-1) of a 0-d tensor */
    DR_TRY(dr_norm_dim(dim0, nd, "transpose", &d0));
    DR_TRY(dr_norm_dim(dim1, nd, "transpose", &d1));
    DR_TRY(dr_tensor_alias(t, out));
    if (t->ndim > 0) {
        int64_t s = (*out)->sizes[d0], st = (*out)->strides[d0];
        (*out)->sizes[d0] = (*out)->sizes[d1];
        (*out)->strides[d0] = (*out)->strides[d1];
        (*out)->sizes[d1] = s;
        (*out)->strides[d1] = st;
    }
    int64_t params[2] = {d0, d1};
    return record(DR_OK, t, out, "transpose", transpose_backward, params, 2);
}

dr_status dr_tensor_narrow(const dr_tensor *t, int32_t dim, int64_t start, int64_t length,
                           dr_tensor **out) {
    int32_t d;
    DR_TRY(dr_check_out(out, "narrow"));
    DR_TRY(dr_check_tensor(t, "narrow", "tensor"));
    DR_TRY(dr_norm_dim(dim, t->ndim, "narrow", &d));
    int64_t size = t->sizes[d], given = start;
    if (start < 0) start += size;
    if (start < 0 || length < 0 || start > size || length > size - start)
        return dr_fail(DR_ERR_ARG, "narrow: start %lld and length %lld exceed size %lld of "
                       "dimension %d of %s", (long long)(given < 0 ? given : given + 1),
                       (long long)length, (long long)size, d + 1, dr_shape_str(t));
    DR_TRY(dr_tensor_alias(t, out));
    (*out)->sizes[d] = length;
    (*out)->storage_offset += start * t->strides[d];
    int64_t params[3] = {d, start, length};
    return record(DR_OK, t, out, "narrow", narrow_backward, params, 3);
}

dr_status dr_tensor_select(const dr_tensor *t, int32_t dim, int64_t index, dr_tensor **out) {
    int32_t d;
    DR_TRY(dr_check_out(out, "select"));
    DR_TRY(dr_check_tensor(t, "select", "tensor"));
    if (t->ndim == 0) return dr_fail(DR_ERR_ARG, "select: cannot index a 0-d tensor");
    DR_TRY(dr_norm_dim(dim, t->ndim, "select", &d));
    int64_t size = t->sizes[d];
    if (index < -size || index >= size)
        return dr_fail(DR_ERR_ARG, "select: index %lld out of range for dimension %d of size %lld",
                       (long long)(index < 0 ? index : index + 1), d + 1, (long long)size);
    if (index < 0) index += size;
    DR_TRY(dr_tensor_alias(t, out));
    dr_tensor *v = *out;
    v->storage_offset += index * t->strides[d];
    for (int32_t i = d; i < t->ndim - 1; i++) {
        v->sizes[i] = t->sizes[i + 1];
        v->strides[i] = t->strides[i + 1];
    }
    v->ndim = t->ndim - 1;
    int64_t params[2] = {d, index};
    return record(DR_OK, t, out, "select", select_backward, params, 2);
}
