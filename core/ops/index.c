/* Indexing: torch.index_select, torch.gather, F.embedding, torch.where.
 *
 *   index_select(x, d, idx):  y[.., j, ..] = x[.., idx[j], ..]        (idx 1-D)
 *   gather(x, d, idx):        y[i] = x[i with i_d replaced by idx[i]]  (idx of x's rank)
 *   embedding(idx, W):        y[i, :] = W[idx[i], :]                   (idx any shape)
 *   where(c, a, b):           y = c ? a : b, broadcasting all three
 * Backward (scatter-adds, deterministic: see backend/cpu/cpu_index.c):
 *   index_select: dx[.., r, ..] = sum_{j: idx[j] = r} dy[.., j, ..]
 *   gather:       dx[i with i_d = idx[i]] += dy[i]
 *   embedding:    dW[r, :] = sum_{i: idx[i] = r} dy[i, :]
 *   where:        da = sum_to(c ? dy : 0), db = sum_to(c ? 0 : dy)
 * Indices are int64 and 0-based here; the Lua layer converts its 1-based ones, so
 * an out-of-range index is reported as index + 1, the Lua user's number. */
#include <stdio.h>

#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* Validates an index argument of `op`: int64, on `device`, every value in
 * [0, size); `what` completes "out of range for ...". */
static dr_status check_index(const dr_tensor *index, dr_device device, int64_t size,
                             const char *op, const char *what) {
    DR_TRY(dr_check_tensor(index, op, "index"));
    if (index->scalar_type != DR_I64)
        return dr_fail(DR_ERR_DTYPE, "%s: index must be an int64 tensor, got %s %s", op,
                       dr_dtype_name(index->scalar_type), dr_shape_str(index));
    if (!dr_device_eq(index->device, device))
        return dr_fail(DR_ERR_DEVICE, "%s: index is on %s but the input is on %s", op,
                       dr_device_str(index->device), dr_device_str(device));
    if (dr_tensor_numel(index) == 0) return DR_OK;
    const dr_backend *be = dr_backend_get(device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, index_check, op));
    int64_t bad = 0;
    int found = 0;
    DR_TRY(be->index_check(index, size, &bad, &found));
    if (found)
        return dr_fail(DR_ERR_ARG, "%s: index %lld is out of range for %s (indices are 1..%lld)",
                       op, (long long)bad + (bad < INT64_MAX), what, (long long)size);
    return DR_OK;
}

static dr_status check_float_grad(const dr_tensor *g, const char *op) {
    DR_TRY(dr_check_tensor(g, op, "grad_out"));
    if (!dr_dtype_is_float(g->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: grad_out dtype %s is not a float type", op,
                       dr_dtype_name(g->scalar_type));
    return DR_OK;
}

/* "dimension 2 with size 5" */
static const char *dim_what(int32_t dim, int64_t size, char *buf, size_t n) {
    snprintf(buf, n, "dimension %d with size %lld", dim + 1, (long long)size);
    return buf;
}

/* Finishes a forward: on success records out on the tape with index saved. */
static dr_status finish(dr_status st, dr_tensor *res, const dr_tensor *input, const char *name,
                        dr_backward_fn fn, const dr_tensor *saved, int64_t param,
                        dr_tensor **out) {
    if (st == DR_OK) {
        dr_node *node;
        const dr_tensor *inputs[1] = {input};
        st = dr_autograd_record(res, name, fn, inputs, 1, &node);
        if (st == DR_OK && node) {
            node->ints[0] = param;
            st = dr_autograd_save(node, 0, saved);
        }
    }
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

/* grad (float32 work) cast to `dtype` in place of *g. */
static dr_status cast_result(dr_tensor **g, int32_t dtype) {
    if (!*g || (*g)->scalar_type == dtype) return DR_OK;
    dr_tensor *c;
    dr_status st = dr_as_dtype(*g, dtype, &c);
    dr_tensor_release(*g);
    *g = st == DR_OK ? c : NULL;
    return st;
}

/* ---- index_select ------------------------------------------------------------------ */

/* outer = prod sizes[:dim], inner = prod sizes[dim+1:] */
static void split_at(const int64_t *sizes, int32_t ndim, int32_t dim, int64_t *outer,
                     int64_t *inner) {
    *outer = *inner = 1;
    for (int32_t d = 0; d < dim; d++) *outer *= sizes[d];
    for (int32_t d = dim + 1; d < ndim; d++) *inner *= sizes[d];
}

static dr_status index_select_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *index;
    DR_TRY(dr_autograd_saved(n, 0, &index));
    DR_TRY(dr_index_select_backward(g, n->in_sizes[0], n->in_ndim[0], (int32_t)n->ints[0], index,
                                    &grads[0]));
    return cast_result(&grads[0], n->in_dtype[0]);
}

dr_status dr_index_select(const dr_tensor *t, int32_t dim, const dr_tensor *index,
                          dr_tensor **out) {
    const char *op = "index_select";
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_check_tensor(t, op, "input"));
    if (t->ndim == 0) return dr_fail(DR_ERR_SHAPE, "%s: cannot index a 0-d tensor", op);
    DR_TRY(dr_norm_dim(dim, t->ndim, op, &dim));
    DR_TRY(dr_check_tensor(index, op, "index"));
    if (index->ndim > 1)
        return dr_fail(DR_ERR_SHAPE, "%s: index must be 1-D, got %s", op, dr_shape_str(index));
    char what[64];
    DR_TRY(check_index(index, t->device, t->sizes[dim], op, dim_what(dim, t->sizes[dim], what, sizeof what)));
    const dr_backend *be = dr_backend_get(t->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, index_select, op));
    int64_t sizes[DR_MAX_DIMS], outer, inner;
    for (int32_t d = 0; d < t->ndim; d++) sizes[d] = t->sizes[d];
    sizes[dim] = dr_tensor_numel(index);
    split_at(t->sizes, t->ndim, dim, &outer, &inner);
    dr_tensor *x = NULL, *ix = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_tensor_contiguous(t, &x);
    if (st == DR_OK) st = dr_tensor_contiguous(index, &ix);
    if (st == DR_OK) st = dr_tensor_new(sizes, t->ndim, t->scalar_type, t->device, op, &res);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->index_select(res, x, ix, outer, inner);
    dr_grad_resume(grad);
    dr_tensor_release(x);
    dr_tensor_release(ix);
    return finish(st, res, t, op, index_select_node_backward, index, dim, out);
}

/* dx (input_sizes) from dy: index_add of dy's slices along dim. */
dr_status dr_index_select_backward(const dr_tensor *grad_out, const int64_t *input_sizes,
                                   int32_t ndim, int32_t dim, const dr_tensor *index,
                                   dr_tensor **grad_input) {
    const char *op = "index_select_backward";
    DR_TRY(dr_check_out(grad_input, op));
    DR_TRY(check_float_grad(grad_out, op));
    if (ndim < 1 || ndim > DR_MAX_DIMS)
        return dr_fail(DR_ERR_ARG, "%s: input rank %d is not in 1..%d", op, ndim, DR_MAX_DIMS);
    DR_TRY(dr_check_sizes(input_sizes, ndim, op, NULL));
    DR_TRY(dr_norm_dim(dim, ndim, op, &dim));
    DR_TRY(dr_check_tensor(index, op, "index"));
    int64_t nidx = dr_tensor_numel(index);
    bool fits = index->ndim <= 1 && grad_out->ndim == ndim;
    for (int32_t d = 0; fits && d < ndim; d++)
        fits = grad_out->sizes[d] == (d == dim ? nidx : input_sizes[d]);
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s does not fit input %s with index %s at "
                       "dimension %d", op, dr_shape_str(grad_out), dr_sizes_str(input_sizes, ndim),
                       dr_shape_str(index), dim + 1);
    char what[64];
    DR_TRY(check_index(index, grad_out->device, input_sizes[dim], op,
                       dim_what(dim, input_sizes[dim], what, sizeof what)));
    const dr_backend *be = dr_backend_get(grad_out->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, index_add, op));
    int64_t outer, inner;
    split_at(input_sizes, ndim, dim, &outer, &inner);
    dr_tensor *g = NULL, *g32 = NULL, *ix = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(grad_out, DR_F32, &g);
    if (st == DR_OK) st = dr_tensor_contiguous(g, &g32);
    if (st == DR_OK) st = dr_tensor_contiguous(index, &ix);
    if (st == DR_OK) st = dr_tensor_new(input_sizes, ndim, DR_F32, grad_out->device, op, &res);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->index_add(res, g32, ix, outer, inner);
    if (st == DR_OK) st = cast_result(&res, grad_out->scalar_type);
    dr_grad_resume(grad);
    dr_tensor_release(g);
    dr_tensor_release(g32);
    dr_tensor_release(ix);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *grad_input = res;
    return DR_OK;
}

/* ---- gather ------------------------------------------------------------------------ */

/* index has t's rank and fits inside t except along dim. */
static dr_status check_gather_shapes(int32_t ndim, const int64_t *sizes, int32_t dim,
                                     const dr_tensor *index, const char *op) {
    int32_t ind = index->ndim ? index->ndim : 1, tnd = ndim ? ndim : 1;
    if (ind != tnd)
        return dr_fail(DR_ERR_SHAPE, "%s: index %s must have as many dimensions as the input %s",
                       op, dr_shape_str(index), dr_sizes_str(sizes, ndim));
    for (int32_t d = 0; d < index->ndim; d++)
        if (d != dim && index->sizes[d] > sizes[d])
            return dr_fail(DR_ERR_SHAPE, "%s: index %s is larger than the input %s in dimension "
                           "%d", op, dr_shape_str(index), dr_sizes_str(sizes, ndim), d + 1);
    return DR_OK;
}

/* 0-d tensors act as [1]: a view of t with at least one dim. */
static dr_status at_least_1d(const dr_tensor *t, dr_tensor **out) {
    int64_t one = 1;
    return t->ndim ? dr_tensor_alias(t, out) : dr_tensor_view(t, &one, 1, out);
}

static dr_status gather_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *index;
    DR_TRY(dr_autograd_saved(n, 0, &index));
    DR_TRY(dr_gather_backward(g, n->in_sizes[0], n->in_ndim[0], (int32_t)n->ints[0], index,
                              &grads[0]));
    return cast_result(&grads[0], n->in_dtype[0]);
}

dr_status dr_gather(const dr_tensor *t, int32_t dim, const dr_tensor *index, dr_tensor **out) {
    const char *op = "gather";
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_check_tensor(t, op, "input"));
    DR_TRY(dr_norm_dim(dim, t->ndim ? t->ndim : 1, op, &dim));
    DR_TRY(dr_check_tensor(index, op, "index"));
    DR_TRY(check_gather_shapes(t->ndim, t->sizes, dim, index, op));
    int64_t size = t->ndim ? t->sizes[dim] : 1;
    char what[64];
    DR_TRY(check_index(index, t->device, size, op, dim_what(dim, size, what, sizeof what)));
    const dr_backend *be = dr_backend_get(t->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, gather, op));
    dr_tensor *x = NULL, *ix = NULL, *res = NULL, *r1 = NULL;
    bool grad = dr_grad_pause();
    dr_status st = at_least_1d(t, &x);
    if (st == DR_OK) st = at_least_1d(index, &ix);
    if (st == DR_OK) st = dr_tensor_new(index->sizes, index->ndim, t->scalar_type, t->device, op, &res);
    if (st == DR_OK) st = at_least_1d(res, &r1);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->gather(r1, x, dim, ix);
    dr_grad_resume(grad);
    dr_tensor_release(x);
    dr_tensor_release(ix);
    dr_tensor_release(r1);
    return finish(st, res, t, op, gather_node_backward, index, dim, out);
}

dr_status dr_gather_backward(const dr_tensor *grad_out, const int64_t *input_sizes, int32_t ndim,
                             int32_t dim, const dr_tensor *index, dr_tensor **grad_input) {
    const char *op = "gather_backward";
    DR_TRY(dr_check_out(grad_input, op));
    DR_TRY(check_float_grad(grad_out, op));
    if (ndim < 0 || ndim > DR_MAX_DIMS)
        return dr_fail(DR_ERR_ARG, "%s: input rank %d is not in 0..%d", op, ndim, DR_MAX_DIMS);
    DR_TRY(dr_check_sizes(input_sizes, ndim, op, NULL));
    DR_TRY(dr_norm_dim(dim, ndim ? ndim : 1, op, &dim));
    DR_TRY(dr_check_tensor(index, op, "index"));
    DR_TRY(check_gather_shapes(ndim, input_sizes, dim, index, op));
    bool fits = grad_out->ndim == index->ndim;
    for (int32_t d = 0; fits && d < index->ndim; d++) fits = grad_out->sizes[d] == index->sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s must have the index's shape %s", op,
                       dr_shape_str(grad_out), dr_shape_str(index));
    int64_t size = ndim ? input_sizes[dim] : 1;
    char what[64];
    DR_TRY(check_index(index, grad_out->device, size, op, dim_what(dim, size, what, sizeof what)));
    const dr_backend *be = dr_backend_get(grad_out->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, scatter_add, op));
    dr_tensor *g = NULL, *g1 = NULL, *ix = NULL, *res = NULL, *r1 = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(grad_out, DR_F32, &g);
    if (st == DR_OK) st = at_least_1d(g, &g1);
    if (st == DR_OK) st = at_least_1d(index, &ix);
    if (st == DR_OK) st = dr_tensor_full(input_sizes, ndim, DR_F32, grad_out->device, 0, &res);
    if (st == DR_OK) st = at_least_1d(res, &r1);
    if (st == DR_OK && dr_tensor_numel(index) > 0) st = be->scatter_add(r1, dim, ix, g1);
    if (st == DR_OK) st = cast_result(&res, grad_out->scalar_type);
    dr_grad_resume(grad);
    dr_tensor_release(g);
    dr_tensor_release(g1);
    dr_tensor_release(ix);
    dr_tensor_release(r1);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *grad_input = res;
    return DR_OK;
}

/* ---- embedding --------------------------------------------------------------------- */

static dr_status embedding_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *indices;
    DR_TRY(dr_autograd_saved(n, 0, &indices));
    DR_TRY(dr_embedding_backward(g, indices, n->in_sizes[0][0], &grads[0]));
    return cast_result(&grads[0], n->in_dtype[0]);
}

static dr_status flat_index(const dr_tensor *indices, dr_tensor **out) {
    int64_t n = dr_tensor_numel(indices);
    return dr_tensor_reshape(indices, &n, 1, out);
}

dr_status dr_embedding(const dr_tensor *indices, const dr_tensor *weight, dr_tensor **out) {
    const char *op = "embedding";
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_check_tensor(weight, op, "weight"));
    DR_TRY(dr_check_tensor(indices, op, "indices"));
    if (weight->ndim != 2)
        return dr_fail(DR_ERR_SHAPE, "%s: weight must be 2-D [num_embeddings, embedding_dim], "
                       "got %s", op, dr_shape_str(weight));
    if (indices->ndim >= DR_MAX_DIMS)
        return dr_fail(DR_ERR_SHAPE, "%s: indices %s have too many dimensions (at most %d)", op,
                       dr_shape_str(indices), DR_MAX_DIMS - 1);
    char what[96];
    snprintf(what, sizeof what, "a weight of %lld rows %s", (long long)weight->sizes[0],
             dr_shape_str(weight));
    DR_TRY(check_index(indices, weight->device, weight->sizes[0], op, what));
    const dr_backend *be = dr_backend_get(weight->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, index_select, op));
    int64_t sizes[DR_MAX_DIMS];
    for (int32_t d = 0; d < indices->ndim; d++) sizes[d] = indices->sizes[d];
    sizes[indices->ndim] = weight->sizes[1];
    dr_tensor *w = NULL, *ix = NULL, *c = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_tensor_contiguous(weight, &w);
    if (st == DR_OK) st = flat_index(indices, &ix);
    if (st == DR_OK) st = dr_tensor_contiguous(ix, &c);
    if (st == DR_OK)
        st = dr_tensor_new(sizes, indices->ndim + 1, weight->scalar_type, weight->device, op, &res);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->index_select(res, w, c, 1, weight->sizes[1]);
    dr_grad_resume(grad);
    dr_tensor_release(w);
    dr_tensor_release(ix);
    dr_tensor_release(c);
    return finish(st, res, weight, op, embedding_node_backward, indices, 0, out);
}

dr_status dr_embedding_backward(const dr_tensor *grad_out, const dr_tensor *indices,
                                int64_t num_weights, dr_tensor **grad_weight) {
    const char *op = "embedding_backward";
    DR_TRY(dr_check_out(grad_weight, op));
    DR_TRY(check_float_grad(grad_out, op));
    DR_TRY(dr_check_tensor(indices, op, "indices"));
    if (num_weights < 0)
        return dr_fail(DR_ERR_ARG, "%s: negative num_weights %lld", op, (long long)num_weights);
    bool fits = grad_out->ndim == indices->ndim + 1;
    for (int32_t d = 0; fits && d < indices->ndim; d++) fits = grad_out->sizes[d] == indices->sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s must be the indices' shape %s plus "
                       "embedding_dim", op, dr_shape_str(grad_out), dr_shape_str(indices));
    char what[64];
    snprintf(what, sizeof what, "a weight of %lld rows", (long long)num_weights);
    DR_TRY(check_index(indices, grad_out->device, num_weights, op, what));
    const dr_backend *be = dr_backend_get(grad_out->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, index_add, op));
    int64_t dim = grad_out->sizes[indices->ndim], wsizes[2] = {num_weights, dim};
    int64_t gsizes[2] = {dr_tensor_numel(indices), dim};
    dr_tensor *g = NULL, *g2 = NULL, *ix = NULL, *c = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(grad_out, DR_F32, &g);
    if (st == DR_OK) st = dr_tensor_reshape(g, gsizes, 2, &g2); /* copies if not contiguous */
    if (st == DR_OK && !dr_tensor_is_contiguous(g2)) {
        dr_tensor *cg;
        st = dr_tensor_contiguous(g2, &cg);
        dr_tensor_release(g2);
        g2 = st == DR_OK ? cg : NULL;
    }
    if (st == DR_OK) st = flat_index(indices, &ix);
    if (st == DR_OK) st = dr_tensor_contiguous(ix, &c);
    if (st == DR_OK) st = dr_tensor_new(wsizes, 2, DR_F32, grad_out->device, op, &res);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->index_add(res, g2, c, 1, dim);
    if (st == DR_OK) st = cast_result(&res, grad_out->scalar_type);
    dr_grad_resume(grad);
    dr_tensor_release(g);
    dr_tensor_release(g2);
    dr_tensor_release(ix);
    dr_tensor_release(c);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *grad_weight = res;
    return DR_OK;
}

/* ---- where ----------------------------------------------------------------------------- */

/* The broadcast shape of cond, a and b. */
static dr_status where_shape(const dr_tensor *cond, const dr_tensor *a, const dr_tensor *b,
                             const char *op, int64_t *sizes, int32_t *ndim) {
    dr_tensor ab; /* a shape carrier for the second broadcast */
    ab.ndim = 0;
    DR_TRY(dr_broadcast_shape(a, b, op, ab.sizes, &ab.ndim));
    return dr_broadcast_shape(cond, &ab, op, sizes, ndim);
}

/* grad_a / grad_b of where for inputs of the given shapes and dtypes. */
static dr_status where_grads(const dr_tensor *g, const dr_tensor *cond, const int64_t *sa,
                             int32_t na, int32_t ta, const int64_t *sb, int32_t nb, int32_t tb,
                             dr_tensor **grad_a, dr_tensor **grad_b) {
    dr_tensor *zero = NULL, *masked = NULL;
    dr_status st = dr_tensor_full(NULL, 0, g->scalar_type, g->device, 0, &zero);
    if (st == DR_OK && grad_a) st = dr_where(cond, g, zero, &masked);
    if (st == DR_OK && grad_a) st = dr_sum_to(masked, sa, na, ta, grad_a);
    dr_tensor_release(masked);
    masked = NULL;
    if (st == DR_OK && grad_b) st = dr_where(cond, zero, g, &masked);
    if (st == DR_OK && grad_b) st = dr_sum_to(masked, sb, nb, tb, grad_b);
    dr_tensor_release(masked);
    dr_tensor_release(zero);
    return st;
}

static dr_status where_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *cond;
    DR_TRY(dr_autograd_saved(n, 0, &cond));
    return where_grads(g, cond, n->in_sizes[0], n->in_ndim[0], n->in_dtype[0], n->in_sizes[1],
                       n->in_ndim[1], n->in_dtype[1], dr_node_needs(n, 0) ? &grads[0] : NULL,
                       dr_node_needs(n, 1) ? &grads[1] : NULL);
}

static dr_status check_where(const dr_tensor *cond, const dr_tensor *a, const dr_tensor *b,
                             const char *op) {
    DR_TRY(dr_check_tensor(cond, op, "condition"));
    DR_TRY(dr_check_tensor(a, op, "input"));
    DR_TRY(dr_check_tensor(b, op, "other"));
    if (cond->scalar_type != DR_BOOL)
        return dr_fail(DR_ERR_DTYPE, "%s: condition must be a bool tensor, got %s %s", op,
                       dr_dtype_name(cond->scalar_type), dr_shape_str(cond));
    if (!dr_device_eq(a->device, cond->device) || !dr_device_eq(b->device, cond->device))
        return dr_fail(DR_ERR_DEVICE, "%s: condition, input and other are on %s, %s and %s", op,
                       dr_device_str(cond->device), dr_device_str(a->device),
                       dr_device_str(b->device));
    return DR_OK;
}

dr_status dr_where(const dr_tensor *cond, const dr_tensor *a, const dr_tensor *b, dr_tensor **out) {
    const char *op = "where";
    DR_TRY(dr_check_out(out, op));
    DR_TRY(check_where(cond, a, b, op));
    int64_t sizes[DR_MAX_DIMS];
    int32_t ndim;
    DR_TRY(where_shape(cond, a, b, op, sizes, &ndim));
    int32_t dtype = dr_promote_types(a->scalar_type, b->scalar_type);
    const dr_backend *be = dr_backend_get(a->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, where, op));
    dr_tensor *ca = NULL, *cb = NULL, *ea = NULL, *eb = NULL, *ec = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_as_dtype(a, dtype, &ca);
    if (st == DR_OK) st = dr_as_dtype(b, dtype, &cb);
    if (st == DR_OK) st = dr_expand_to(ca, sizes, ndim, op, &ea);
    if (st == DR_OK) st = dr_expand_to(cb, sizes, ndim, op, &eb);
    if (st == DR_OK) st = dr_expand_to(cond, sizes, ndim, op, &ec);
    if (st == DR_OK) st = dr_tensor_new(sizes, ndim, dtype, a->device, op, &res);
    if (st == DR_OK && dr_tensor_numel(res) > 0) st = be->where(res, ec, ea, eb);
    dr_grad_resume(grad);
    dr_tensor_release(ca);
    dr_tensor_release(cb);
    dr_tensor_release(ea);
    dr_tensor_release(eb);
    dr_tensor_release(ec);
    if (st == DR_OK) {
        dr_node *node;
        const dr_tensor *inputs[2] = {a, b};
        st = dr_autograd_record(res, op, where_node_backward, inputs, 2, &node);
        if (st == DR_OK && node) st = dr_autograd_save(node, 0, cond);
    }
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

dr_status dr_where_backward(const dr_tensor *grad_out, const dr_tensor *cond, const dr_tensor *a,
                            const dr_tensor *b, dr_tensor **grad_a, dr_tensor **grad_b) {
    const char *op = "where_backward";
    if (grad_a) *grad_a = NULL;
    if (grad_b) *grad_b = NULL;
    DR_TRY(check_float_grad(grad_out, op));
    DR_TRY(check_where(cond, a, b, op));
    int64_t sizes[DR_MAX_DIMS];
    int32_t ndim;
    DR_TRY(where_shape(cond, a, b, op, sizes, &ndim));
    bool fits = grad_out->ndim == ndim;
    for (int32_t d = 0; fits && d < ndim; d++) fits = grad_out->sizes[d] == sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s does not match the output %s", op,
                       dr_shape_str(grad_out), dr_sizes_str(sizes, ndim));
    bool grad = dr_grad_pause();
    int32_t gt = grad_out->scalar_type;
    int32_t ta = dr_dtype_is_float(a->scalar_type) ? a->scalar_type : gt;
    int32_t tb = dr_dtype_is_float(b->scalar_type) ? b->scalar_type : gt;
    dr_status st = where_grads(grad_out, cond, a->sizes, a->ndim, ta, b->sizes, b->ndim, tb,
                               grad_a, grad_b);
    dr_grad_resume(grad);
    if (st != DR_OK) {
        if (grad_a) dr_tensor_release(*grad_a), *grad_a = NULL;
        if (grad_b) dr_tensor_release(*grad_b), *grad_b = NULL;
    }
    return st;
}
