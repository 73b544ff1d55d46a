/* Shape arithmetic shared by the ops: dims, broadcasting, dtype promotion; and
 * expand, whose backward sums the gradient over the expanded dims. */
#include "tensor_internal.h"
#include "../autograd/autograd.h"

static dr_status expand_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return dr_sum_to(g, n->in_sizes[0], n->in_ndim[0], n->in_dtype[0], &grads[0]);
}

dr_status dr_norm_dim(int32_t dim, int32_t ndim, const char *op, int32_t *out) {
    int32_t d = dim < 0 ? dim + ndim : dim;
    if (d < 0 || d >= ndim) {
        /* Messages speak Lua's 1-based dims: the C API is 0-based, users are not. */
        return dr_fail(DR_ERR_ARG, "%s: dimension %d out of range for a %d-d tensor "
                       "(dims are 1..%d, or negative from the end)",
                       op, dim < 0 ? dim : dim + 1, ndim, ndim);
    }
    *out = d;
    return DR_OK;
}

/* Category then width, as torch.result_type for two tensors: bool < integer <
 * float; within floats f16 and bf16 meet at f32. */
int32_t dr_promote_types(int32_t a, int32_t b) {
    if (a == b) return a;
    bool fa = dr_dtype_is_float(a), fb = dr_dtype_is_float(b);
    if (fa && fb) return DR_F32;
    if (fa) return a;
    if (fb) return b;
    if (a == DR_BOOL) return b;
    if (b == DR_BOOL) return a;
    static const int rank[DR_NUM_DTYPES] = {0, 0, 0, 3, 2, 1, 0}; /* u8 < i32 < i64 */
    return rank[a] >= rank[b] ? a : b;
}

dr_status dr_broadcast_shape(const dr_tensor *a, const dr_tensor *b, const char *op,
                             int64_t *sizes, int32_t *ndim) {
    int32_t n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int32_t i = 0; i < n; i++) {
        int32_t ia = a->ndim - n + i, ib = b->ndim - n + i;
        int64_t sa = ia >= 0 ? a->sizes[ia] : 1;
        int64_t sb = ib >= 0 ? b->sizes[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1)
            return dr_fail(DR_ERR_SHAPE,
                           "%s: shapes %s and %s cannot be broadcast (size %lld vs %lld at "
                           "dimension %d from the end)",
                           op, dr_shape_str(a), dr_shape_str(b), (long long)sa, (long long)sb,
                           n - i);
        sizes[i] = sa == 1 ? sb : sa;
    }
    *ndim = n;
    return DR_OK;
}

dr_status dr_expand_to(const dr_tensor *t, const int64_t *sizes, int32_t ndim, const char *op,
                       dr_tensor **out) {
    if (ndim < t->ndim)
        return dr_fail(DR_ERR_SHAPE, "%s: cannot expand %s to fewer dimensions %s", op,
                       dr_shape_str(t), dr_sizes_str(sizes, ndim));
    int64_t new_strides[DR_MAX_DIMS];
    for (int32_t i = 0; i < ndim; i++) {
        int32_t it = t->ndim - ndim + i;
        int64_t size = it >= 0 ? t->sizes[it] : 1;
        int64_t target = sizes[i] == -1 && it >= 0 ? size : sizes[i];
        if (size == target) {
            new_strides[i] = it >= 0 ? t->strides[it] : 0;
        } else if (size == 1 && target >= 0) {
            new_strides[i] = 0;
        } else {
            return dr_fail(DR_ERR_SHAPE, "%s: cannot expand %s to %s (size %lld at dimension %d "
                           "is not 1)", op, dr_shape_str(t), dr_sizes_str(sizes, ndim),
                           (long long)size, i + 1);
        }
    }
    int64_t resolved[DR_MAX_DIMS];
    for (int32_t i = 0; i < ndim; i++) {
        int32_t it = t->ndim - ndim + i;
        resolved[i] = sizes[i] == -1 && it >= 0 ? t->sizes[it] : sizes[i];
    }
    DR_TRY(dr_check_sizes(resolved, ndim, op, NULL)); /* an expanded numel must fit too */
    DR_TRY(dr_tensor_alias(t, out));
    (*out)->ndim = ndim;
    for (int32_t i = 0; i < ndim; i++) {
        (*out)->sizes[i] = resolved[i];
        (*out)->strides[i] = new_strides[i];
    }
    return DR_OK;
}

dr_status dr_tensor_expand(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                           dr_tensor **out) {
    DR_TRY(dr_check_out(out, "expand"));
    DR_TRY(dr_check_tensor(t, "expand", "tensor"));
    if (ndim < 0 || ndim > DR_MAX_DIMS)
        return dr_fail(DR_ERR_ARG, "expand: %d dimensions requested, at most %d are supported",
                       ndim, DR_MAX_DIMS);
    DR_TRY(dr_check_array(sizes, ndim, "expand", "sizes"));
    DR_TRY(dr_expand_to(t, sizes, ndim, "expand", out));
    dr_node *node;
    dr_status st = dr_autograd_record(*out, "expand", expand_backward, &t, 1, &node);
    return dr_drop_on_error(st, out);
}
