/* Reductions beyond sum (reduce.c): torch.mean, var, std over dims; max/min over
 * one dim (values and indices) or over everything; argmax/argmin.
 *
 *   mean(x) = (1/n) sum x                          n = elements reduced
 *   var(x)  = sum (x - mean)^2 / max(n - c, 0)     c = correction (1: unbiased)
 *   std(x)  = sqrt(var(x))
 *   max(x, d) = (values, indices): the first maximum along d (NaN wins), as torch
 * Backward, g broadcast back over the reduced dims:
 *   mean: dx = g / n
 *   var:  dx = 2 (x - mean) g / (n - c)
 *   std:  dx = var's backward of g / (2 std), with 0 where std = 0 (torch)
 *   max/min over d: g goes to the selected index (a scatter, gather_backward)
 *   max/min over all: g shared evenly by every element equal to the result
 * Float inputs only for mean/var/std (computed in float32 with double
 * accumulation, rounded once); max/min/argmax take every dtype. All results are
 * independent of the thread count (fixed blocks, see cpu_reduce_more.c). */
#include <math.h>
#include <stdio.h>

#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* Which dims a reduction removes, and the layout the kernels want (kept dims
 * first, reduced dims last). */
typedef struct plan {
    bool reduce[DR_MAX_DIMS];
    int32_t perm[DR_MAX_DIMS], nkeep, out_ndim;
    int64_t keep_sizes[DR_MAX_DIMS], out_sizes[DR_MAX_DIMS], kept[DR_MAX_DIMS];
    int64_t count; /* elements per output */
} plan;

/* dims/ndims as dr_sum (ndims 0: all dims); kept[] is the keepdim shape. */
static dr_status make_plan(const int64_t *sizes, int32_t ndim, const int32_t *dims, int32_t ndims,
                           int keepdim, const char *op, plan *p) {
    if (ndims < 0 || ndims > DR_MAX_DIMS || (ndims > 0 && !dims))
        return dr_fail(DR_ERR_ARG, "%s: invalid list of %d dims", op, ndims);
    for (int32_t d = 0; d < DR_MAX_DIMS; d++) p->reduce[d] = ndims == 0 && d < ndim;
    for (int32_t i = 0; i < ndims; i++) {
        int32_t d;
        DR_TRY(dr_norm_dim(dims[i], ndim ? ndim : 1, op, &d));
        if (ndim == 0) continue; /* torch: reducing a 0-d tensor over dim 0 or -1 */
        if (p->reduce[d]) return dr_fail(DR_ERR_ARG, "%s: dimension %d appears twice", op, d + 1);
        p->reduce[d] = true;
    }
    int32_t np = 0;
    p->nkeep = p->out_ndim = 0;
    p->count = 1;
    for (int32_t d = 0; d < ndim; d++)
        if (!p->reduce[d]) {
            p->perm[np++] = d;
            p->keep_sizes[p->nkeep++] = sizes[d];
        }
    for (int32_t d = 0; d < ndim; d++) {
        if (p->reduce[d]) {
            p->perm[np++] = d;
            p->count *= sizes[d];
        }
        p->kept[d] = p->reduce[d] ? 1 : sizes[d];
        if (!p->reduce[d] || keepdim) p->out_sizes[p->out_ndim++] = p->kept[d];
    }
    return DR_OK;
}

static dr_status check_float_input(const dr_tensor *t, const char *op) {
    DR_TRY(dr_check_tensor(t, op, "input"));
    if (!dr_dtype_is_float(t->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: input dtype %s is not supported (float32, float16, "
                       "bfloat16)", op, dr_dtype_name(t->scalar_type));
    return DR_OK;
}

/* Replaces *t by its cast to dtype (no-op when equal). */
static dr_status cast_in_place(dr_tensor **t, int32_t dtype) {
    if ((*t)->scalar_type == dtype) return DR_OK;
    dr_tensor *c;
    dr_status st = dr_as_dtype(*t, dtype, &c);
    dr_tensor_release(*t);
    *t = st == DR_OK ? c : NULL;
    return st;
}

/* Releases *out on failure; returns st. */
static dr_status settle(dr_status st, dr_tensor **out) {
    if (st != DR_OK && out && *out) {
        dr_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

/* t's value times a double, as a 0-d tensor of t's dtype. */
static dr_status scale(const dr_tensor *t, double s, dr_tensor **out) {
    dr_tensor *k;
    DR_TRY(dr_tensor_full(NULL, 0, t->scalar_type, t->device, s, &k));
    dr_status st = dr_mul(t, k, out);
    dr_tensor_release(k);
    return st;
}

/* g (reduced shape, keepdim or not) viewed with the reduced dims kept as 1. */
static dr_status kept_view(const dr_tensor *g, const plan *p, int32_t ndim, const char *op,
                           dr_tensor **out) {
    int64_t n = 1;
    for (int32_t d = 0; d < ndim; d++) n *= p->kept[d];
    if (dr_tensor_numel(g) != n)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s does not match the reduced shape %s", op,
                       dr_shape_str(g), dr_sizes_str(p->out_sizes, p->out_ndim));
    return dr_tensor_reshape(g, p->kept, ndim, out);
}

/* ---- mean / var / std ------------------------------------------------------------- */

/* mean and (if var) variance of float t over the plan, in t's dtype */
static dr_status moments(const dr_tensor *t, const plan *p, dr_tensor **mean, dr_tensor **var,
                         double correction, int take_sqrt, const char *op) {
    const dr_backend *be = dr_backend_get(t->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, moments, op));
    dr_tensor *x = NULL, *xp = NULL, *m = NULL, *v = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(t, DR_F32, &x);
    if (st == DR_OK) st = dr_tensor_permute(x, p->perm, t->ndim, &xp);
    if (st == DR_OK) st = dr_tensor_new(p->keep_sizes, p->nkeep, DR_F32, t->device, op, &m);
    if (st == DR_OK && var) st = dr_tensor_new(p->keep_sizes, p->nkeep, DR_F32, t->device, op, &v);
    if (st == DR_OK) st = be->moments(m, v, xp, t->ndim - p->nkeep, correction, take_sqrt);
    dr_tensor *shaped = NULL;
    if (st == DR_OK) st = dr_tensor_view(m, p->out_sizes, p->out_ndim, &shaped);
    if (st == DR_OK) st = cast_in_place(&shaped, t->scalar_type);
    if (st == DR_OK) *mean = shaped;
    else dr_tensor_release(shaped);
    if (st == DR_OK && var) {
        shaped = NULL;
        st = dr_tensor_view(v, p->out_sizes, p->out_ndim, &shaped);
        if (st == DR_OK) st = cast_in_place(&shaped, t->scalar_type);
        if (st == DR_OK) *var = shaped;
        else dr_tensor_release(shaped);
        if (st != DR_OK) settle(st, mean);
    }
    dr_grad_resume(grad);
    dr_tensor_release(x);
    dr_tensor_release(xp);
    dr_tensor_release(m);
    dr_tensor_release(v);
    return st;
}

/* dx = expand(g) / n */
static dr_status mean_grad(const dr_tensor *g, const int64_t *sizes, int32_t ndim, const plan *p,
                           int32_t dtype, const char *op, dr_tensor **out) {
    dr_tensor *v = NULL, *e = NULL;
    dr_status st = kept_view(g, p, ndim, op, &v);
    if (st == DR_OK) st = dr_expand_to(v, sizes, ndim, op, &e);
    if (st == DR_OK) st = scale(e, p->count > 0 ? 1.0 / (double)p->count : NAN, out);
    if (st == DR_OK) st = cast_in_place(out, dtype);
    dr_tensor_release(v);
    dr_tensor_release(e);
    return st;
}

/* dx = (x - mean) * expand(g) * 2 / (n - c), in float32, cast to x's dtype */
static dr_status var_grad(const dr_tensor *g, const dr_tensor *x, const plan *p, double correction,
                          const char *op, dr_tensor **out) {
    dr_tensor *x32 = NULL, *m = NULL, *dev = NULL, *v = NULL, *v32 = NULL, *gs = NULL;
    dr_status st = dr_as_dtype(x, DR_F32, &x32);
    if (st == DR_OK) {
        plan keep = *p;
        keep.out_ndim = x->ndim;
        for (int32_t d = 0; d < x->ndim; d++) keep.out_sizes[d] = p->kept[d];
        st = moments(x32, &keep, &m, NULL, 0, 0, op);
    }
    if (st == DR_OK) st = dr_sub(x32, m, 1.0, &dev);
    if (st == DR_OK) st = kept_view(g, p, x->ndim, op, &v);
    if (st == DR_OK) st = dr_as_dtype(v, DR_F32, &v32);
    if (st == DR_OK) st = scale(v32, 2.0 / ((double)p->count - correction), &gs);
    if (st == DR_OK) st = dr_mul(dev, gs, out);
    if (st == DR_OK) st = cast_in_place(out, x->scalar_type);
    dr_tensor_release(x32);
    dr_tensor_release(m);
    dr_tensor_release(dev);
    dr_tensor_release(v);
    dr_tensor_release(v32);
    dr_tensor_release(gs);
    return st;
}

/* g / (2 std), 0 where std is 0 */
static dr_status std_to_var_grad(const dr_tensor *g, const dr_tensor *std, dr_tensor **out) {
    dr_tensor *q = NULL, *half = NULL, *nonzero = NULL, *zero = NULL;
    dr_status st = dr_div(g, std, &q);
    if (st == DR_OK) st = scale(q, 0.5, &half);
    if (st == DR_OK) st = dr_tensor_to_dtype(std, DR_BOOL, &nonzero);
    if (st == DR_OK) st = dr_tensor_full(NULL, 0, half->scalar_type, half->device, 0, &zero);
    if (st == DR_OK) st = dr_where(nonzero, half, zero, out);
    dr_tensor_release(q);
    dr_tensor_release(half);
    dr_tensor_release(nonzero);
    dr_tensor_release(zero);
    return st;
}

enum { MOMENT_MEAN, MOMENT_VAR, MOMENT_STD };
static const char *const moment_names[] = {"mean", "var", "std"};

/* node: ints[d] = reduced flags, ints[DR_MAX_DIMS] = kind; reals[0] = correction;
 * saved: 0 input, 1 result (std) */
static dr_status moment_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    int32_t nd = n->in_ndim[0], kind = (int32_t)n->ints[DR_MAX_DIMS];
    const char *op = moment_names[kind];
    plan p;
    int32_t dims[DR_MAX_DIMS], ndims = 0;
    for (int32_t d = 0; d < nd; d++)
        if (n->ints[d]) dims[ndims++] = d;
    /* ndims is 0 only for a 0-d input, where "all dims" reduces nothing too */
    DR_TRY(make_plan(n->in_sizes[0], nd, dims, ndims, 1, op, &p));
    if (kind == MOMENT_MEAN)
        return mean_grad(g, n->in_sizes[0], nd, &p, n->in_dtype[0], op, &grads[0]);
    const dr_tensor *x, *y;
    DR_TRY(dr_autograd_saved(n, 0, &x));
    if (kind == MOMENT_VAR) return var_grad(g, x, &p, n->reals[0], op, &grads[0]);
    DR_TRY(dr_autograd_saved(n, 1, &y));
    dr_tensor *gv;
    DR_TRY(std_to_var_grad(g, y, &gv));
    dr_status st = var_grad(gv, x, &p, n->reals[0], op, &grads[0]);
    dr_tensor_release(gv);
    return st;
}

static dr_status moment_op(int kind, const dr_tensor *t, const int32_t *dims, int32_t ndims,
                           double correction, int keepdim, dr_tensor **out) {
    const char *op = moment_names[kind];
    DR_TRY(dr_check_out(out, op));
    DR_TRY(check_float_input(t, op));
    if (!isfinite(correction))
        return dr_fail(DR_ERR_ARG, "%s: correction must be finite, got %g", op, correction);
    plan p;
    DR_TRY(make_plan(t->sizes, t->ndim, dims, ndims, keepdim, op, &p));
    dr_tensor *mean = NULL, *var = NULL, *res = NULL;
    dr_status st = moments(t, &p, &mean, kind == MOMENT_MEAN ? NULL : &var, correction,
                           kind == MOMENT_STD, op);
    if (st == DR_OK) {
        res = kind == MOMENT_MEAN ? mean : var;
        dr_tensor_retain(res);
    }
    dr_tensor_release(mean);
    dr_tensor_release(var);
    if (st == DR_OK) {
        dr_node *node;
        const dr_tensor *inputs[1] = {t};
        st = dr_autograd_record(res, op, moment_node_backward, inputs, 1, &node);
        if (st == DR_OK && node) {
            for (int32_t d = 0; d < t->ndim; d++) node->ints[d] = p.reduce[d];
            node->ints[DR_MAX_DIMS] = kind;
            node->reals[0] = correction;
            if (kind != MOMENT_MEAN) st = dr_autograd_save(node, 0, t);
            if (st == DR_OK && kind == MOMENT_STD) st = dr_autograd_save(node, 1, res);
        }
    }
    if (st == DR_OK) *out = res;
    else dr_tensor_release(res);
    return st;
}

dr_status dr_mean(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                  dr_tensor **out) {
    return moment_op(MOMENT_MEAN, t, dims, ndims, 0, keepdim, out);
}
dr_status dr_var(const dr_tensor *t, const int32_t *dims, int32_t ndims, double correction,
                 int keepdim, dr_tensor **out) {
    return moment_op(MOMENT_VAR, t, dims, ndims, correction, keepdim, out);
}
dr_status dr_std(const dr_tensor *t, const int32_t *dims, int32_t ndims, double correction,
                 int keepdim, dr_tensor **out) {
    return moment_op(MOMENT_STD, t, dims, ndims, correction, keepdim, out);
}

/* The explicit backward functions: validate, then the same math as the tape. */
static dr_status moment_backward(int kind, const dr_tensor *g, const dr_tensor *x,
                                 const dr_tensor *result, const int32_t *dims, int32_t ndims,
                                 double correction, int keepdim, dr_tensor **grad_input) {
    char op[32];
    snprintf(op, sizeof op, "%s_backward", moment_names[kind]);
    DR_TRY(dr_check_out(grad_input, op));
    DR_TRY(dr_check_tensor(g, op, "grad_out"));
    DR_TRY(check_float_input(x, op));
    plan p;
    DR_TRY(make_plan(x->sizes, x->ndim, dims, ndims, keepdim, op, &p));
    bool fits = g->ndim == p.out_ndim && dr_dtype_is_float(g->scalar_type);
    for (int32_t d = 0; fits && d < g->ndim; d++) fits = g->sizes[d] == p.out_sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s %s does not match the reduced shape %s", op,
                       dr_dtype_name(g->scalar_type), dr_shape_str(g),
                       dr_sizes_str(p.out_sizes, p.out_ndim));
    bool grad = dr_grad_pause();
    dr_status st;
    if (kind == MOMENT_MEAN) {
        st = mean_grad(g, x->sizes, x->ndim, &p, x->scalar_type, op, grad_input);
    } else if (kind == MOMENT_VAR) {
        st = var_grad(g, x, &p, correction, op, grad_input);
    } else {
        dr_tensor *gv = NULL;
        st = dr_check_tensor(result, op, "result");
        if (st == DR_OK && result->ndim != g->ndim)
            st = dr_fail(DR_ERR_SHAPE, "%s: result %s does not match grad_out %s", op,
                         dr_shape_str(result), dr_shape_str(g));
        if (st == DR_OK) st = std_to_var_grad(g, result, &gv);
        if (st == DR_OK) st = var_grad(gv, x, &p, correction, op, grad_input);
        dr_tensor_release(gv);
    }
    dr_grad_resume(grad);
    return settle(st, grad_input);
}

dr_status dr_mean_backward(const dr_tensor *grad_out, const dr_tensor *input, const int32_t *dims,
                           int32_t ndims, int keepdim, dr_tensor **grad_input) {
    return moment_backward(MOMENT_MEAN, grad_out, input, NULL, dims, ndims, 0, keepdim, grad_input);
}
dr_status dr_var_backward(const dr_tensor *grad_out, const dr_tensor *input, const int32_t *dims,
                          int32_t ndims, double correction, int keepdim, dr_tensor **grad_input) {
    return moment_backward(MOMENT_VAR, grad_out, input, NULL, dims, ndims, correction, keepdim,
                           grad_input);
}
dr_status dr_std_backward(const dr_tensor *grad_out, const dr_tensor *input,
                          const dr_tensor *result, const int32_t *dims, int32_t ndims,
                          double correction, int keepdim, dr_tensor **grad_input) {
    return moment_backward(MOMENT_STD, grad_out, input, result, dims, ndims, correction, keepdim,
                           grad_input);
}

/* ---- max / min / argmax / argmin ------------------------------------------------------ */

/* Values and/or indices of the max (min) of t along dim (all = over the
 * flattened tensor, giving 0-d results or all-ones shapes with keepdim). */
static dr_status extreme(const dr_tensor *t, int32_t dim, bool all, int keepdim, int is_min,
                         const char *op, dr_tensor **values, dr_tensor **indices) {
    const dr_backend *be = dr_backend_get(t->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, argreduce, op));
    int64_t numel = dr_tensor_numel(t);
    plan p;
    if (all) {
        if (numel == 0)
            return dr_fail(DR_ERR_SHAPE, "%s: cannot reduce an empty tensor %s; give a dim", op,
                           dr_shape_str(t));
        DR_TRY(make_plan(t->sizes, t->ndim, NULL, 0, keepdim, op, &p));
    } else {
        DR_TRY(make_plan(t->sizes, t->ndim, &dim, 1, keepdim, op, &p));
        if (p.count == 0)
            return dr_fail(DR_ERR_SHAPE, "%s: cannot reduce over dimension %d of size 0 (input "
                           "%s)", op, dim < 0 ? dim : dim + 1, dr_shape_str(t));
    }
    dr_tensor *x = NULL, *v = NULL, *ix = NULL, *sv = NULL, *si = NULL;
    bool grad = dr_grad_pause();
    dr_status st;
    if (all) {
        st = dr_tensor_reshape(t, &numel, 1, &x);
    } else if (t->ndim == 0) {
        int64_t one = 1;
        st = dr_tensor_view(t, &one, 1, &x);
    } else {
        st = dr_tensor_permute(t, p.perm, t->ndim, &x);
    }
    int32_t nkeep = all ? 0 : p.nkeep;
    if (st == DR_OK && values)
        st = dr_tensor_new(p.keep_sizes, nkeep, t->scalar_type, t->device, op, &v);
    if (st == DR_OK) st = dr_tensor_new(p.keep_sizes, nkeep, DR_I64, t->device, op, &ix);
    if (st == DR_OK) st = be->argreduce(v, ix, x, is_min);
    if (st == DR_OK && values) st = dr_tensor_view(v, p.out_sizes, p.out_ndim, &sv);
    if (st == DR_OK && indices) st = dr_tensor_view(ix, p.out_sizes, p.out_ndim, &si);
    dr_grad_resume(grad);
    dr_tensor_release(x);
    dr_tensor_release(v);
    dr_tensor_release(ix);
    if (st != DR_OK) {
        dr_tensor_release(sv);
        dr_tensor_release(si);
        return st;
    }
    if (values) *values = sv;
    if (indices) *indices = si;
    return DR_OK;
}

/* node: ints[0] = dim, ints[1] = keepdim; saved 0 = indices */
static dr_status extreme_dim_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *indices;
    DR_TRY(dr_autograd_saved(n, 0, &indices));
    DR_TRY(dr_max_dim_backward(g, indices, n->in_sizes[0], n->in_ndim[0], (int32_t)n->ints[0],
                               (int)n->ints[1], &grads[0]));
    return cast_in_place(&grads[0], n->in_dtype[0]);
}

static dr_status extreme_dim(const dr_tensor *t, int32_t dim, int keepdim, int is_min,
                             dr_tensor **values, dr_tensor **indices) {
    const char *op = is_min ? "min" : "max";
    if (values) *values = NULL;
    if (indices) *indices = NULL;
    DR_TRY(dr_check_tensor(t, op, "input"));
    dr_tensor *v = NULL, *ix = NULL;
    DR_TRY(extreme(t, dim, false, keepdim, is_min, op, &v, &ix));
    dr_node *node;
    const dr_tensor *inputs[1] = {t};
    dr_status st = dr_autograd_record(v, op, extreme_dim_node_backward, inputs, 1, &node);
    if (st == DR_OK && node) {
        node->ints[0] = dim;
        node->ints[1] = keepdim;
        st = dr_autograd_save(node, 0, ix);
    }
    if (st == DR_OK && values) *values = v;
    else dr_tensor_release(v);
    if (st == DR_OK && indices) *indices = ix;
    else dr_tensor_release(ix);
    return st;
}

dr_status dr_max_dim(const dr_tensor *t, int32_t dim, int keepdim, dr_tensor **values,
                     dr_tensor **indices) {
    return extreme_dim(t, dim, keepdim, 0, values, indices);
}
dr_status dr_min_dim(const dr_tensor *t, int32_t dim, int keepdim, dr_tensor **values,
                     dr_tensor **indices) {
    return extreme_dim(t, dim, keepdim, 1, values, indices);
}

dr_status dr_max_dim_backward(const dr_tensor *grad_values, const dr_tensor *indices,
                              const int64_t *input_sizes, int32_t ndim, int32_t dim, int keepdim,
                              dr_tensor **grad_input) {
    const char *op = "max_backward";
    DR_TRY(dr_check_out(grad_input, op));
    DR_TRY(dr_check_tensor(grad_values, op, "grad_out"));
    DR_TRY(dr_check_tensor(indices, op, "indices"));
    if (ndim < 0 || ndim > DR_MAX_DIMS)
        return dr_fail(DR_ERR_ARG, "%s: input rank %d is not in 0..%d", op, ndim, DR_MAX_DIMS);
    DR_TRY(dr_check_sizes(input_sizes, ndim, op, NULL));
    plan p;
    DR_TRY(make_plan(input_sizes, ndim, &dim, 1, keepdim, op, &p));
    bool fits = grad_values->ndim == p.out_ndim && indices->ndim == p.out_ndim;
    for (int32_t d = 0; fits && d < p.out_ndim; d++)
        fits = grad_values->sizes[d] == p.out_sizes[d] && indices->sizes[d] == p.out_sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s and indices %s must both have the reduced "
                       "shape %s", op, dr_shape_str(grad_values), dr_shape_str(indices),
                       dr_sizes_str(p.out_sizes, p.out_ndim));
    dr_tensor *g = NULL, *ix = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_tensor_reshape(grad_values, p.kept, ndim, &g);
    if (st == DR_OK) st = dr_tensor_reshape(indices, p.kept, ndim, &ix);
    if (st == DR_OK) st = dr_gather_backward(g, input_sizes, ndim, dim, ix, grad_input);
    dr_grad_resume(grad);
    dr_tensor_release(g);
    dr_tensor_release(ix);
    return st;
}
dr_status dr_min_dim_backward(const dr_tensor *grad_values, const dr_tensor *indices,
                              const int64_t *input_sizes, int32_t ndim, int32_t dim, int keepdim,
                              dr_tensor **grad_input) {
    return dr_max_dim_backward(grad_values, indices, input_sizes, ndim, dim, keepdim, grad_input);
}

static dr_status extreme_all_backward(const dr_tensor *g, const dr_tensor *x,
                                      const dr_tensor *result, const char *op,
                                      dr_tensor **grad_input) {
    const dr_backend *be = dr_backend_get(x->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, extreme_backward, op));
    double gv, value;
    DR_TRY(dr_tensor_item(g, &gv));
    DR_TRY(dr_tensor_item(result, &value));
    dr_tensor *x32 = NULL, *c = NULL, *res = NULL;
    dr_status st = dr_as_dtype(x, DR_F32, &x32);
    if (st == DR_OK) st = dr_tensor_contiguous(x32, &c);
    if (st == DR_OK) st = dr_tensor_new(x->sizes, x->ndim, DR_F32, x->device, op, &res);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->extreme_backward(res, c, value, gv);
    if (st == DR_OK) st = cast_in_place(&res, x->scalar_type);
    dr_tensor_release(x32);
    dr_tensor_release(c);
    if (st == DR_OK) *grad_input = res;
    else dr_tensor_release(res);
    return st;
}

/* saved 0 = input, 1 = result */
static dr_status extreme_all_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *x, *y;
    DR_TRY(dr_autograd_saved(n, 0, &x));
    DR_TRY(dr_autograd_saved(n, 1, &y));
    return extreme_all_backward(g, x, y, n->name, &grads[0]);
}

static dr_status extreme_all(const dr_tensor *t, int is_min, dr_tensor **out) {
    const char *op = is_min ? "min" : "max";
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_check_tensor(t, op, "input"));
    DR_TRY(extreme(t, 0, true, 0, is_min, op, out, NULL));
    dr_node *node;
    const dr_tensor *inputs[1] = {t};
    dr_status st = dr_autograd_record(*out, op, extreme_all_node_backward, inputs, 1, &node);
    if (st == DR_OK && node) st = dr_autograd_save(node, 0, t);
    if (st == DR_OK && node) st = dr_autograd_save(node, 1, *out);
    return settle(st, out);
}

dr_status dr_max(const dr_tensor *t, dr_tensor **out) { return extreme_all(t, 0, out); }
dr_status dr_min(const dr_tensor *t, dr_tensor **out) { return extreme_all(t, 1, out); }

static dr_status extreme_all_backward_checked(const dr_tensor *g, const dr_tensor *x,
                                              const dr_tensor *result, const char *op,
                                              dr_tensor **grad_input) {
    DR_TRY(dr_check_out(grad_input, op));
    DR_TRY(dr_check_tensor(g, op, "grad_out"));
    DR_TRY(check_float_input(x, op));
    DR_TRY(dr_check_tensor(result, op, "result"));
    if (dr_tensor_numel(g) != 1 || dr_tensor_numel(result) != 1 || !dr_dtype_is_float(g->scalar_type))
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s %s and result %s must be one float element",
                       op, dr_dtype_name(g->scalar_type), dr_shape_str(g), dr_shape_str(result));
    bool grad = dr_grad_pause();
    dr_status st = extreme_all_backward(g, x, result, op, grad_input);
    dr_grad_resume(grad);
    return st;
}

dr_status dr_max_backward(const dr_tensor *grad_out, const dr_tensor *input,
                          const dr_tensor *result, dr_tensor **grad_input) {
    return extreme_all_backward_checked(grad_out, input, result, "max_backward", grad_input);
}
dr_status dr_min_backward(const dr_tensor *grad_out, const dr_tensor *input,
                          const dr_tensor *result, dr_tensor **grad_input) {
    return extreme_all_backward_checked(grad_out, input, result, "min_backward", grad_input);
}

static dr_status arg_extreme(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                             int is_min, dr_tensor **out) {
    const char *op = is_min ? "argmin" : "argmax";
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_check_tensor(t, op, "input"));
    if (ndims < 0 || ndims > 1 || (ndims == 1 && !dims))
        return dr_fail(DR_ERR_ARG, "%s: expects one dim or none (the flattened input), got %d",
                       op, ndims);
    return extreme(t, ndims ? dims[0] : 0, ndims == 0, keepdim, is_min, op, NULL, out);
}

dr_status dr_argmax(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                    dr_tensor **out) {
    return arg_extreme(t, dims, ndims, keepdim, 0, out);
}
dr_status dr_argmin(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                    dr_tensor **out) {
    return arg_extreme(t, dims, ndims, keepdim, 1, out);
}
