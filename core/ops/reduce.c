/* Reductions: sum over dims (torch.sum). Integer and bool inputs sum to int64.
 * Backward (with autograd): the gradient broadcast back over the reduced dims. */
#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"

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
    dr_status st = dr_tensor_permute(t, perm, t->ndim, &permuted);
    if (st == DR_OK) st = dr_tensor_new(keep_sizes, nkeep, dtype, t->device, "sum", &res);
    if (st == DR_OK) st = be->sum(res, permuted, nred);
    if (st == DR_OK) st = dr_tensor_view(res, out_sizes, out_ndim, &shaped);
    dr_tensor_release(permuted);
    dr_tensor_release(res);
    if (st == DR_OK) *out = shaped;
    return st;
}
