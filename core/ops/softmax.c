/* softmax and log_softmax over one dim (torch.softmax / torch.log_softmax).
 *
 *   softmax:      y_i = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j
 *   log_softmax:  y_i = x_i - m - log(sum_j exp(x_j - m))
 * Subtracting the max keeps every exponent <= 0, so large inputs stay finite; a
 * row that is all -inf (or holds a NaN) gives NaN, as torch. Backward from the
 * output y alone (sums over the softmax dim):
 *   softmax:      dx = y * (dy - sum(dy * y))
 *   log_softmax:  dx = dy - exp(y) * sum(dy)
 * Half types compute in float32; results take the input's (forward) or
 * grad_out's (backward) dtype. A 0-d tensor is one row of one element (dim 1 or
 * -1 from Lua, 0 or -1 in C). */
#include "nn_f32.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

static dr_status backward(const dr_tensor *grad_out, const dr_tensor *y, int32_t dim, int log,
                          dr_tensor **grad_x);

/* The tape: saved[0] = y, ints = {dim, log}. */
static dr_status softmax_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *y;
    DR_TRY(dr_autograd_saved(n, 0, &y));
    return backward(g, y, (int32_t)n->ints[0], (int)n->ints[1], &grads[0]);
}

static dr_status forward(const dr_tensor *x, int32_t dim, int log, dr_tensor **out) {
    const char *name = log ? "log_softmax" : "softmax";
    DR_TRY(dr_check_out(out, name));
    DR_TRY(dr_nn_check_float(x, name, "input"));
    int32_t d;
    DR_TRY(dr_norm_dim(dim, x->ndim ? x->ndim : 1, name, &d));
    const dr_backend *be = dr_backend_get(x->device, name);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, softmax, name));

    dr_tensor *fx = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_nn_stage(x, true, &fx);
    if (st == DR_OK) st = dr_tensor_new(x->sizes, x->ndim, DR_F32, x->device, name, &res);
    if (st == DR_OK) st = be->softmax(res, fx, d, log);
    dr_tensor_release(fx);
    st = dr_nn_finish(st, res, x->scalar_type, out);
    dr_grad_resume(grad);
    dr_node *node = NULL;
    if (st == DR_OK) st = dr_autograd_record(*out, name, softmax_node_backward, &x, 1, &node);
    if (st == DR_OK && node) {
        node->ints[0] = d;
        node->ints[1] = log;
        st = dr_autograd_save(node, 0, *out);
    }
    return dr_drop_on_error(st, out);
}

static dr_status backward(const dr_tensor *grad_out, const dr_tensor *y, int32_t dim, int log,
                          dr_tensor **grad_x) {
    const char *name = log ? "log_softmax_backward" : "softmax_backward";
    DR_TRY(dr_check_out(grad_x, name));
    DR_TRY(dr_nn_check_float(grad_out, name, "grad_out"));
    DR_TRY(dr_nn_check_float(y, name, "output"));
    DR_TRY(dr_nn_check_device(y, grad_out, name, "grad_out"));
    DR_TRY(dr_nn_check_same_shape(grad_out, y, name, "grad_out", "output"));
    int32_t d;
    DR_TRY(dr_norm_dim(dim, y->ndim ? y->ndim : 1, name, &d));
    const dr_backend *be = dr_backend_get(y->device, name);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, softmax_backward, name));

    dr_tensor *fg = NULL, *fy = NULL, *res = NULL;
    dr_status st = dr_nn_stage(grad_out, true, &fg);
    if (st == DR_OK) st = dr_nn_stage(y, true, &fy);
    if (st == DR_OK) st = dr_tensor_new(y->sizes, y->ndim, DR_F32, y->device, name, &res);
    if (st == DR_OK) st = be->softmax_backward(res, fg, fy, d, log);
    dr_tensor_release(fg);
    dr_tensor_release(fy);
    return dr_nn_finish(st, res, grad_out->scalar_type, grad_x);
}

dr_status dr_softmax(const dr_tensor *x, int32_t dim, dr_tensor **out) {
    return forward(x, dim, 0, out);
}
dr_status dr_log_softmax(const dr_tensor *x, int32_t dim, dr_tensor **out) {
    return forward(x, dim, 1, out);
}
dr_status dr_softmax_backward(const dr_tensor *grad_out, const dr_tensor *y, int32_t dim,
                              dr_tensor **grad_x) {
    return backward(grad_out, y, dim, 0, grad_x);
}
dr_status dr_log_softmax_backward(const dr_tensor *grad_out, const dr_tensor *y, int32_t dim,
                                  dr_tensor **grad_x) {
    return backward(grad_out, y, dim, 1, grad_x);
}
