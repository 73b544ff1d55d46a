/* Reductions: sum over dims (torch.sum). Integer and bool inputs sum to int64.
 * Backward: dx = g broadcast back over the reduced dims (made contiguous, so a
 * gradient never aliases itself). */
#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* node->ints[d] = 1 for each reduced dim of the input */
static dr_status sum_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    int64_t kept[DR_MAX_DIMS];
    int32_t nd = n->in_ndim[0];
    for (int32_t d = 0; d < nd; d++) kept[d] = n->ints[d] ? 1 : n->in_sizes[0][d];
    dr_tensor *v = NULL, *e = NULL, *c = NULL;
    dr_status st = dr_tensor_reshape(g, kept, nd, &v);
    if (st == DR_OK) st = dr_expand_to(v, n->in_sizes[0], nd, "sum backward", &e);
    if (st == DR_OK) st = dr_tensor_contiguous(e, &c);
    if (st == DR_OK) st = dr_as_dtype(c, n->in_dtype[0], &grads[0]);
    dr_tensor_release(v);
    dr_tensor_release(e);
    dr_tensor_release(c);
    return st;
}

dr_status dr_sum(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                 dr_tensor **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "sum: out is NULL");
    *out = NULL;
    DR_TRY(dr_check_tensor(t, "sum", "input"));
    if (ndims < 0 || ndims > DR_MAX_DIMS || (ndims > 0 && !dims))
        return dr_fail(DR_ERR_ARG, "sum: invalid list of %d dims", ndims);
    const dr_backend *be = dr_backend_get(t->device, "sum");
    if (!be) return DR_ERR_DEVICE;

    bool reduce[DR_MAX_DIMS] = {false};
    int32_t nred = 0;
    if (ndims == 0) {
        for (int32_t d = 0; d < t->ndim; d++) reduce[d] = true;
        nred = t->ndim;
    }
    for (int32_t i = 0; i < ndims; i++) {
        int32_t d;
        DR_TRY(dr_norm_dim(dims[i], t->ndim ? t->ndim : 1, "sum", &d));
        if (t->ndim == 0) continue; /* torch: sum(0-d, dim=0 or -1) is the identity */
        if (reduce[d]) return dr_fail(DR_ERR_ARG, "sum: dimension %d appears twice", d + 1);
        reduce[d] = true;
        nred++;
    }

    /* Kept dims first, reduced dims last: the layout the backend reduces. */
    int32_t perm[DR_MAX_DIMS], np = 0, nkeep = 0;
    int64_t out_sizes[DR_MAX_DIMS], keep_sizes[DR_MAX_DIMS];
    int32_t out_ndim = 0;
    for (int32_t d = 0; d < t->ndim; d++)
        if (!reduce[d]) {
            perm[np++] = d;
            keep_sizes[nkeep++] = t->sizes[d];
        }
    for (int32_t d = 0; d < t->ndim; d++) {
        if (reduce[d]) perm[np++] = d;
        if (!reduce[d]) out_sizes[out_ndim++] = t->sizes[d];
        else if (keepdim) out_sizes[out_ndim++] = 1;
    }
    int32_t dtype = dr_dtype_is_float(t->scalar_type) ? t->scalar_type : DR_I64;

    dr_tensor *permuted = NULL, *res = NULL, *shaped = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_tensor_permute(t, perm, t->ndim, &permuted);
    if (st == DR_OK) st = dr_tensor_new(keep_sizes, nkeep, dtype, t->device, "sum", &res);
    if (st == DR_OK) st = be->sum(res, permuted, nred);
    if (st == DR_OK) st = dr_tensor_view(res, out_sizes, out_ndim, &shaped);
    dr_tensor_release(permuted);
    dr_tensor_release(res);
    dr_grad_resume(grad);
    if (st == DR_OK) {
        dr_node *node;
        const dr_tensor *inputs[1] = {t};
        st = dr_autograd_record(shaped, "sum", sum_backward, inputs, 1, &node);
        for (int32_t d = 0; node && d < t->ndim; d++) node->ints[d] = reduce[d];
    }
    if (st == DR_OK) *out = shaped;
    else dr_tensor_release(shaped);
    return st;
}
