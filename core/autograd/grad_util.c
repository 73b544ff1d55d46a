/* Helpers for backward functions. */
#include "autograd.h"

bool dr_node_needs(const dr_node *n, int32_t i) { return n->next[i].node || n->next[i].leaf; }

dr_status dr_sum_to(const dr_tensor *grad, const int64_t *sizes, int32_t ndim, int32_t dtype,
                    dr_tensor **out) {
    int32_t dims[DR_MAX_DIMS], nd = 0, lead = grad->ndim - ndim;
    for (int32_t d = 0; d < grad->ndim; d++)
        if (d < lead || (sizes[d - lead] == 1 && grad->sizes[d] != 1)) dims[nd++] = d;
    dr_tensor *summed = NULL, *shaped = NULL;
    dr_status st;
    if (nd == 0) {
        dr_tensor_retain((dr_tensor *)grad);
        summed = (dr_tensor *)grad;
        st = DR_OK;
    } else {
        st = dr_sum(grad, dims, nd, 1, &summed);
    }
    if (st == DR_OK) st = dr_tensor_reshape(summed, sizes, ndim, &shaped);
    dr_tensor_release(summed);
    if (st == DR_OK) st = dr_as_dtype(shaped, dtype, out);
    dr_tensor_release(shaped);
    return st;
}
