/* Joining and scanning: torch.cat, torch.stack, torch.cumsum, and the range
 * factories torch.arange and torch.linspace.
 *
 *   cat(x_1..x_n, d):   y = [x_1; ...; x_n] along d; shapes agree except at d;
 *                       dtype = torch.result_type of all inputs.
 *   stack(x_1..x_n, d): cat of the x_i with a unit dim inserted at d.
 *   cumsum(x, d):       y_k = sum_{i <= k} x_i along d (integers and bool give int64).
 *   arange(a, b, s):    a + i s for i < ceil((b - a) / s) (computed in double).
 *   linspace(a, b, n):  n points, step (b - a)/(n - 1), from both ends (torch).
 * Backward:
 *   cat:    dx_i = narrow(dy, d, offset_i, size_i)       (views of dy)
 *   stack:  dx_i = select(dy, d, i)
 *   cumsum: dx_k = sum_{i >= k} dy_i                      (the reversed scan)
 *
 * The tape keeps at most DR_NODE_MAX_INPUTS inputs per node, so cat of more
 * tensors records a tree: the inputs are grouped, each group's part of the
 * output (a narrow view of it, no copy) gets its own node, and the output's node
 * takes the groups. Gradients flow through the same narrowing. */
#include <math.h>

#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* ---- cat / stack ------------------------------------------------------------------- */

/* node: ints[0] = dim; input i spans n->in_sizes[i][dim] along it */
static dr_status cat_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    int32_t dim = (int32_t)n->ints[0];
    int64_t off = 0;
    for (int32_t i = 0; i < n->ninputs; i++) {
        int64_t len = n->in_sizes[i][dim];
        if (dr_node_needs(n, i)) {
            dr_tensor *v;
            DR_TRY(dr_tensor_narrow(g, dim, off, len, &v));
            dr_status st = dr_as_dtype(v, n->in_dtype[i], &grads[i]);
            dr_tensor_release(v);
            DR_TRY(st);
        }
        off += len;
    }
    return DR_OK;
}

/* node: ints[0] = dim, ints[1] = position of the node's first input along it */
static dr_status stack_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    for (int32_t i = 0; i < n->ninputs; i++) {
        if (!dr_node_needs(n, i)) continue;
        dr_tensor *v;
        DR_TRY(dr_tensor_select(g, (int32_t)n->ints[0], i, &v));
        dr_status st = dr_as_dtype(v, n->in_dtype[i], &grads[i]);
        dr_tensor_release(v);
        DR_TRY(st);
    }
    return DR_OK;
}

/* Records `out` = join of ins[0..n) along dim; each input spans len(i) of it. */
static dr_status record_join(dr_tensor *out, const dr_tensor *const *ins, int32_t n, int32_t dim,
                             bool stack, const char *name) {
    dr_node *node;
    if (!dr_grad_mode()) return DR_OK;
    if (n <= DR_NODE_MAX_INPUTS) {
        DR_TRY(dr_autograd_record(out, name, stack ? stack_node_backward : cat_node_backward, ins,
                                  n, &node));
        if (node) node->ints[0] = dim;
        return DR_OK;
    }
    int32_t per = (n + DR_NODE_MAX_INPUTS - 1) / DR_NODE_MAX_INPUTS, ngroups = 0;
    dr_tensor *groups[DR_NODE_MAX_INPUTS] = {NULL};
    const dr_tensor *group_in[DR_NODE_MAX_INPUTS];
    dr_status st = DR_OK;
    int64_t off = 0;
    for (int32_t first = 0; first < n && st == DR_OK; first += per, ngroups++) {
        int32_t cnt = n - first < per ? n - first : per;
        int64_t len = 0;
        for (int32_t i = first; i < first + cnt; i++) len += stack ? 1 : ins[i]->sizes[dim];
        bool grad = dr_grad_pause();
        st = dr_tensor_narrow(out, dim, off, len, &groups[ngroups]);
        dr_grad_resume(grad);
        if (st == DR_OK) st = record_join(groups[ngroups], ins + first, cnt, dim, stack, name);
        group_in[ngroups] = groups[ngroups];
        off += len;
    }
    if (st == DR_OK) st = dr_autograd_record(out, name, cat_node_backward, group_in, ngroups, &node);
    if (st == DR_OK && node) node->ints[0] = dim;
    for (int32_t k = 0; k < ngroups; k++) dr_tensor_release(groups[k]);
    return st;
}

/* Validates the list (all of one shape except at `dim`; for stack, all of one
 * shape) and returns the output shape and dtype; dim is normalized. */
static dr_status check_join(const dr_tensor *const *ts, int32_t n, int32_t *dim, bool stack,
                            const char *op, int64_t *sizes, int32_t *ndim, int32_t *dtype) {
    if (n < 1) return dr_fail(DR_ERR_ARG, "%s: expected a non-empty list of tensors, got %d", op, n);
    DR_TRY(dr_check_array(ts, n, op, "tensors"));
    for (int32_t i = 0; i < n; i++)
        if (!ts[i] || !ts[i]->storage)
            return dr_fail(ts[i] ? DR_ERR_FREED : DR_ERR_ARG, "%s: tensor %d of the list is %s", op,
                           i + 1, ts[i] ? "freed" : "NULL");
    const dr_tensor *t0 = ts[0];
    if (!stack && t0->ndim == 0)
        return dr_fail(DR_ERR_SHAPE, "%s: zero-dimensional tensor (at position 1) cannot be "
                       "concatenated", op);
    int32_t nd = stack ? t0->ndim + 1 : t0->ndim;
    if (nd > DR_MAX_DIMS)
        return dr_fail(DR_ERR_SHAPE, "%s: stacking %s tensors gives more than %d dimensions", op,
                       dr_shape_str(t0), DR_MAX_DIMS);
    DR_TRY(dr_norm_dim(*dim, nd, op, dim));
    *dtype = t0->scalar_type;
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        const dr_tensor *t = ts[i];
        if (!dr_device_eq(t->device, t0->device))
            return dr_fail(DR_ERR_DEVICE, "%s: tensor %d is on %s but tensor 1 is on %s", op, i + 1,
                           dr_device_str(t->device), dr_device_str(t0->device));
        if (t->ndim != t0->ndim)
            return dr_fail(DR_ERR_SHAPE, "%s: tensors must have the same number of dimensions: "
                           "tensor 1 is %s, tensor %d is %s", op, dr_shape_str(t0), i + 1,
                           dr_shape_str(t));
        for (int32_t d = 0; d < t->ndim; d++)
            if (t->sizes[d] != t0->sizes[d] && (stack || d != *dim))
                return stack ? dr_fail(DR_ERR_SHAPE, "%s: expects each tensor to be equal size, "
                                       "but got %s at entry 1 and %s at entry %d", op,
                                       dr_shape_str(t0), dr_shape_str(t), i + 1)
                             : dr_fail(DR_ERR_SHAPE, "%s: sizes of tensors must match except in "
                                       "dimension %d: tensor 1 is %s, tensor %d is %s", op,
                                       *dim + 1, dr_shape_str(t0), i + 1, dr_shape_str(t));
        *dtype = dr_promote_types(*dtype, t->scalar_type);
        total += stack ? 1 : t->sizes[*dim];
    }
    for (int32_t d = 0, s = 0; d < nd; d++) {
        if (d == *dim) sizes[d] = total;
        else sizes[d] = t0->sizes[s];
        if (d != *dim || !stack) s++;
    }
    *ndim = nd;
    return DR_OK;
}

static dr_status join(const dr_tensor *const *ts, int32_t n, int32_t dim, bool stack,
                      const char *op, dr_tensor **out) {
    DR_TRY(dr_check_out(out, op));
    int64_t sizes[DR_MAX_DIMS];
    int32_t nd = 0, dtype = DR_F32;
    DR_TRY(check_join(ts, n, &dim, stack, op, sizes, &nd, &dtype));
    dr_tensor *res;
    DR_TRY(dr_tensor_new(sizes, nd, dtype, ts[0]->device, op, &res));
    bool grad = dr_grad_pause();
    dr_status st = DR_OK;
    int64_t off = 0;
    for (int32_t i = 0; i < n && st == DR_OK; i++) {
        int64_t len = stack ? 1 : ts[i]->sizes[dim];
        dr_tensor *part = NULL;
        if (stack) st = dr_tensor_select(res, dim, i, &part);
        else if (len > 0) st = dr_tensor_narrow(res, dim, off, len, &part);
        if (part && st == DR_OK) st = dr_tensor_copy_(part, ts[i]);
        dr_tensor_release(part);
        off += len;
    }
    dr_grad_resume(grad);
    if (st == DR_OK) st = record_join(res, ts, n, dim, stack, op);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

dr_status dr_cat(const dr_tensor *const *tensors, int32_t n, int32_t dim, dr_tensor **out) {
    return join(tensors, n, dim, false, "cat", out);
}

dr_status dr_stack(const dr_tensor *const *tensors, int32_t n, int32_t dim, dr_tensor **out) {
    return join(tensors, n, dim, true, "stack", out);
}

/* Releases grads[0..n) and clears them (after a failure). */
static void drop_all(dr_tensor **grads, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        dr_tensor_release(grads[i]);
        grads[i] = NULL;
    }
}

dr_status dr_cat_backward(const dr_tensor *grad_out, const int64_t *sizes, int32_t n, int32_t dim,
                          dr_tensor **grads) {
    const char *op = "cat_backward";
    DR_TRY(dr_check_tensor(grad_out, op, "grad_out"));
    if (n < 1) return dr_fail(DR_ERR_ARG, "%s: expected at least one input, got %d", op, n);
    DR_TRY(dr_check_array(sizes, n, op, "sizes"));
    DR_TRY(dr_check_array(grads, n, op, "grads"));
    DR_TRY(dr_norm_dim(dim, grad_out->ndim, op, &dim));
    int64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (sizes[i] < 0) return dr_fail(DR_ERR_ARG, "%s: negative size %lld", op, (long long)sizes[i]);
        total += sizes[i];
        grads[i] = NULL;
    }
    if (total != grad_out->sizes[dim])
        return dr_fail(DR_ERR_SHAPE, "%s: the sizes add up to %lld but grad_out %s has %lld in "
                       "dimension %d", op, (long long)total, dr_shape_str(grad_out),
                       (long long)grad_out->sizes[dim], dim + 1);
    int64_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        dr_status st = dr_tensor_narrow(grad_out, dim, off, sizes[i], &grads[i]);
        if (st != DR_OK) {
            drop_all(grads, n);
            return st;
        }
        off += sizes[i];
    }
    return DR_OK;
}

dr_status dr_stack_backward(const dr_tensor *grad_out, int32_t n, int32_t dim, dr_tensor **grads) {
    const char *op = "stack_backward";
    DR_TRY(dr_check_tensor(grad_out, op, "grad_out"));
    if (n < 1) return dr_fail(DR_ERR_ARG, "%s: expected at least one input, got %d", op, n);
    DR_TRY(dr_check_array(grads, n, op, "grads"));
    DR_TRY(dr_norm_dim(dim, grad_out->ndim, op, &dim));
    for (int32_t i = 0; i < n; i++) grads[i] = NULL;
    if (grad_out->sizes[dim] != n)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s has %lld in dimension %d, expected %d", op,
                       dr_shape_str(grad_out), (long long)grad_out->sizes[dim], dim + 1, n);
    for (int32_t i = 0; i < n; i++) {
        dr_status st = dr_tensor_select(grad_out, dim, i, &grads[i]);
        if (st != DR_OK) {
            drop_all(grads, n);
            return st;
        }
    }
    return DR_OK;
}

/* ---- cumsum --------------------------------------------------------------------------- */

/* The (reversed) inclusive scan of t along dim: float32 for float inputs, int64
 * for the rest; a 0-d t scans as one element. */
static dr_status scan(const dr_tensor *t, int32_t dim, int reverse, const char *op,
                      dr_tensor **out) {
    DR_TRY(dr_norm_dim(dim, t->ndim ? t->ndim : 1, op, &dim));
    const dr_backend *be = dr_backend_get(t->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, cumsum, op));
    int32_t work = dr_dtype_is_float(t->scalar_type) ? DR_F32 : DR_I64;
    int64_t one = 1;
    dr_tensor *x = NULL, *x1 = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(t, work, &x);
    if (st == DR_OK) st = t->ndim ? dr_tensor_alias(x, &x1) : dr_tensor_view(x, &one, 1, &x1);
    if (st == DR_OK) st = dr_tensor_new(x1->sizes, x1->ndim, work, t->device, op, &res);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->cumsum(res, x1, dim, reverse);
    if (st == DR_OK && t->ndim == 0) {
        dr_tensor *r0;
        st = dr_tensor_view(res, NULL, 0, &r0);
        dr_tensor_release(res);
        res = st == DR_OK ? r0 : NULL;
    }
    int32_t dtype = dr_dtype_is_float(t->scalar_type) ? t->scalar_type : DR_I64;
    if (st == DR_OK && dtype != work) {
        dr_tensor *c;
        st = dr_as_dtype(res, dtype, &c);
        dr_tensor_release(res);
        res = st == DR_OK ? c : NULL;
    }
    dr_grad_resume(grad);
    dr_tensor_release(x);
    dr_tensor_release(x1);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

static dr_status cumsum_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    dr_tensor *r;
    DR_TRY(scan(g, (int32_t)n->ints[0], 1, "cumsum backward", &r));
    dr_status st = dr_as_dtype(r, n->in_dtype[0], &grads[0]);
    dr_tensor_release(r);
    return st;
}

dr_status dr_cumsum(const dr_tensor *t, int32_t dim, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "cumsum"));
    DR_TRY(dr_check_tensor(t, "cumsum", "input"));
    DR_TRY(scan(t, dim, 0, "cumsum", out));
    dr_node *node;
    const dr_tensor *inputs[1] = {t};
    dr_status st = dr_autograd_record(*out, "cumsum", cumsum_node_backward, inputs, 1, &node);
    if (node) node->ints[0] = dim;
    return dr_drop_on_error(st, out);
}

dr_status dr_cumsum_backward(const dr_tensor *grad_out, int32_t dim, dr_tensor **grad_input) {
    DR_TRY(dr_check_out(grad_input, "cumsum_backward"));
    DR_TRY(dr_check_tensor(grad_out, "cumsum_backward", "grad_out"));
    if (!dr_dtype_is_float(grad_out->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "cumsum_backward: grad_out dtype %s is not a float type",
                       dr_dtype_name(grad_out->scalar_type));
    return scan(grad_out, dim, 1, "cumsum_backward", grad_input);
}

/* ---- arange / linspace ------------------------------------------------------------------ */

static dr_status range_tensor(int64_t n, int32_t dtype, dr_device device, double start,
                              double step, double end, int linspace, const char *op,
                              dr_tensor **out) {
    if (!dr_dtype_valid(dtype) || dtype == DR_BOOL)
        return dr_fail(DR_ERR_DTYPE, "%s: dtype %s is not supported", op, dr_dtype_name(dtype));
    const dr_backend *be = dr_backend_get(device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, fill_range, op));
    dr_tensor *res;
    DR_TRY(dr_tensor_new(&n, 1, dtype, device, op, &res));
    dr_status st = n > 0 ? be->fill_range(res, start, step, end, linspace) : DR_OK;
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

dr_status dr_arange(double start, double end, double step, int32_t dtype, dr_device device,
                    dr_tensor **out) {
    DR_TRY(dr_check_out(out, "arange"));
    if (!isfinite(start) || !isfinite(end) || !isfinite(step))
        return dr_fail(DR_ERR_ARG, "arange: start (%g), end (%g) and step (%g) must be finite",
                       start, end, step);
    if (step == 0) return dr_fail(DR_ERR_ARG, "arange: step must be nonzero");
    if ((step > 0 && end < start) || (step < 0 && end > start))
        return dr_fail(DR_ERR_ARG, "arange: upper bound (%g) and lower bound (%g) inconsistent "
                       "with step sign (%g)", end, start, step);
    double size = ceil((end - start) / step);
    if (!(size < 9.0e15))
        return dr_fail(DR_ERR_ARG, "arange: %g elements from %g to %g by %g are too many", size,
                       start, end, step);
    return range_tensor((int64_t)size, dtype, device, start, step, end, 0, "arange", out);
}

dr_status dr_linspace(double start, double end, int64_t steps, int32_t dtype, dr_device device,
                      dr_tensor **out) {
    DR_TRY(dr_check_out(out, "linspace"));
    if (steps < 0)
        return dr_fail(DR_ERR_ARG, "linspace: number of steps must be non-negative, got %lld",
                       (long long)steps);
    if (!isfinite(start) || !isfinite(end))
        return dr_fail(DR_ERR_ARG, "linspace: start (%g) and end (%g) must be finite", start, end);
    double step = steps > 1 ? (end - start) / (double)(steps - 1) : 0;
    return range_tensor(steps, dtype, device, start, step, end, 1, "linspace", out);
}
