/* Broadcasting elementwise arithmetic (torch.add/sub/mul/div).
 *
 *   add(a, b, alpha) = a + alpha*b      sub(a, b, alpha) = a - alpha*b
 *   mul(a, b) = a*b                     div(a, b) = a/b (true division)
 * The result dtype is torch.result_type(a, b); div of integers gives float32.
 * Backward: d(a±αb) = (g, ±αg), d(ab) = (g·b, g·a), d(a/b) = (g/b, -g·a/b²),
 * each summed down to the input's shape (undoing broadcasting). */
#include <math.h>

#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* out = t * s for a scalar s (a 0-d tensor of t's dtype). */
static dr_status scale(const dr_tensor *t, double s, dr_tensor **out) {
    dr_tensor *k;
    DR_TRY(dr_tensor_full(NULL, 0, t->scalar_type, t->device, s, &k));
    dr_status st = dr_mul(t, k, out);
    dr_tensor_release(k);
    return st;
}

/* grads[i] = sum_to(g * factor) where factor is a tensor (or g itself if NULL). */
static dr_status grad_times(const dr_node *n, int i, const dr_tensor *g, const dr_tensor *factor,
                            double s, dr_tensor **grads) {
    if (!dr_node_needs(n, i)) return DR_OK;
    dr_tensor *p = NULL, *q = NULL;
    dr_status st = factor ? dr_mul(g, factor, &p) : (dr_tensor_retain((dr_tensor *)g), p = (dr_tensor *)g, DR_OK);
    if (st == DR_OK && s != 1.0) {
        st = scale(p, s, &q);
        dr_tensor_release(p);
        p = q;
    }
    if (st == DR_OK) st = dr_sum_to(p, n->in_sizes[i], n->in_ndim[i], n->in_dtype[i], &grads[i]);
    dr_tensor_release(p);
    return st;
}

static dr_status add_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    DR_TRY(grad_times(n, 0, g, NULL, 1.0, grads));
    return grad_times(n, 1, g, NULL, n->reals[0], grads); /* reals[0]: ±alpha */
}

static dr_status mul_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *a, *b;
    DR_TRY(dr_autograd_saved(n, 0, &a));
    DR_TRY(dr_autograd_saved(n, 1, &b));
    DR_TRY(grad_times(n, 0, g, b, 1.0, grads));
    return grad_times(n, 1, g, a, 1.0, grads);
}

static dr_status div_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *a, *b;
    DR_TRY(dr_autograd_saved(n, 0, &a));
    DR_TRY(dr_autograd_saved(n, 1, &b));
    dr_tensor *gb = NULL, *gab = NULL;
    dr_status st = dr_div(g, b, &gb);                       /* g/b */
    if (st == DR_OK && dr_node_needs(n, 0))
        st = dr_sum_to(gb, n->in_sizes[0], n->in_ndim[0], n->in_dtype[0], &grads[0]);
    if (st == DR_OK && dr_node_needs(n, 1)) {
        st = dr_div(gb, b, &gab);                            /* g/b² */
        if (st == DR_OK) st = grad_times(n, 1, gab, a, -1.0, grads); /* -g·a/b² */
    }
    dr_tensor_release(gb);
    dr_tensor_release(gab);
    return st;
}

static const char *const op_names[] = {"add", "sub", "mul", "div"};

static dr_status binary(dr_binary_op op, const dr_tensor *a, const dr_tensor *b, double alpha,
                        dr_tensor **out) {
    const char *name = op_names[op];
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", name);
    *out = NULL;
    DR_TRY(dr_check_tensor(a, name, "input"));
    DR_TRY(dr_check_tensor(b, name, "other"));
    if (!dr_device_eq(a->device, b->device))
        return dr_fail(DR_ERR_DEVICE, "%s: tensors are on different devices (%s and %s)", name,
                       dr_device_str(a->device), dr_device_str(b->device));
    int32_t dtype = dr_promote_types(a->scalar_type, b->scalar_type);
    if (op == DR_OP_SUB && dtype == DR_BOOL)
        return dr_fail(DR_ERR_DTYPE, "sub: subtracting bool tensors is not supported; use "
                       "logical_xor or cast to an integer dtype");
    if (op == DR_OP_DIV && !dr_dtype_is_float(dtype)) dtype = DR_F32;
    if (!dr_dtype_is_float(dtype) && !(fabs(alpha) < 0x1p63 && alpha == trunc(alpha)))
        return dr_fail(DR_ERR_ARG, "%s: alpha %g must be an integer for %s tensors", name, alpha,
                       dr_dtype_name(dtype));

    int64_t sizes[DR_MAX_DIMS];
    int32_t ndim;
    DR_TRY(dr_broadcast_shape(a, b, name, sizes, &ndim));
    const dr_backend *be = dr_backend_get(a->device, name);
    if (!be) return DR_ERR_DEVICE;

    dr_tensor *ca = NULL, *cb = NULL, *ea = NULL, *eb = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(a, dtype, &ca);
    if (st == DR_OK) st = dr_as_dtype(b, dtype, &cb);
    if (st == DR_OK) st = dr_expand_to(ca, sizes, ndim, name, &ea);
    if (st == DR_OK) st = dr_expand_to(cb, sizes, ndim, name, &eb);
    if (st == DR_OK) st = dr_tensor_new(sizes, ndim, dtype, a->device, name, &res);
    if (st == DR_OK) st = be->binary(op, res, ea, eb, alpha);
    dr_grad_resume(grad);
    if (st == DR_OK) { /* the tape */
        static const dr_backward_fn backward[] = {add_backward, add_backward, mul_backward,
                                                  div_backward};
        const dr_tensor *inputs[2] = {a, b};
        dr_node *node;
        st = dr_autograd_record(res, name, backward[op], inputs, 2, &node);
        if (st == DR_OK && node) {
            node->reals[0] = op == DR_OP_SUB ? -alpha : alpha;
            if (op == DR_OP_MUL || op == DR_OP_DIV) {
                st = dr_autograd_save(node, 0, a);
                if (st == DR_OK) st = dr_autograd_save(node, 1, b);
            }
        }
    }
    dr_tensor_release(ca);
    dr_tensor_release(cb);
    dr_tensor_release(ea);
    dr_tensor_release(eb);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

dr_status dr_add_(dr_tensor *self, const dr_tensor *other, double alpha) {
    DR_TRY(dr_check_tensor(self, "add_", "self"));
    DR_TRY(dr_check_tensor(other, "add_", "other"));
    if (!dr_device_eq(self->device, other->device))
        return dr_fail(DR_ERR_DEVICE, "add_: tensors are on different devices (%s and %s)",
                       dr_device_str(self->device), dr_device_str(other->device));
    if (!dr_dtype_is_float(self->scalar_type) && !(fabs(alpha) < 0x1p63 && alpha == trunc(alpha)))
        return dr_fail(DR_ERR_ARG, "add_: alpha %g must be an integer for %s tensors", alpha,
                       dr_dtype_name(self->scalar_type));
    const dr_backend *be = dr_backend_get(self->device, "add_");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(dr_autograd_inplace(self, "add_"));
    dr_tensor *cast = NULL, *expanded = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(other, self->scalar_type, &cast);
    if (st == DR_OK) st = dr_expand_to(cast, self->sizes, self->ndim, "add_", &expanded);
    /* elementwise with out aliasing self: each element reads then writes itself */
    if (st == DR_OK) st = be->binary(DR_OP_ADD, self, self, expanded, alpha);
    dr_grad_resume(grad);
    dr_tensor_release(cast);
    dr_tensor_release(expanded);
    return st;
}

dr_status dr_add(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out) {
    return binary(DR_OP_ADD, a, b, alpha, out);
}
dr_status dr_sub(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out) {
    return binary(DR_OP_SUB, a, b, alpha, out);
}
dr_status dr_mul(const dr_tensor *a, const dr_tensor *b, dr_tensor **out) {
    return binary(DR_OP_MUL, a, b, 1.0, out);
}
dr_status dr_div(const dr_tensor *a, const dr_tensor *b, dr_tensor **out) {
    return binary(DR_OP_DIV, a, b, 1.0, out);
}
