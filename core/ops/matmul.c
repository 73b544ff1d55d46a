/* Matrix products with torch.matmul semantics.
 *
 *   1-D @ 1-D -> 0-d dot;  2-D @ 2-D -> mm;  1-D operands gain a unit dim that is
 *   dropped from the result;  N-D operands are batches of matrices whose batch
 *   dims broadcast.  C[..., i, j] = sum_k A[..., i, k] B[..., k, j].
 * Backward (with autograd): dA = dC @ B^T, dB = A^T @ dC, summed over broadcast
 * batch dims. f16/bf16 inputs compute in f32 and round the result once. */
#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"

/* t (with at least 2 dims) viewed as (batch, rows, cols); copies only when the
 * batch dims cannot be merged in place. */
static dr_status as_3d(const dr_tensor *t, dr_tensor **out) {
    int64_t s[3] = {1, t->sizes[t->ndim - 2], t->sizes[t->ndim - 1]};
    for (int32_t d = 0; d < t->ndim - 2; d++) s[0] *= t->sizes[d];
    return dr_tensor_reshape(t, s, 3, out);
}

/* Computes the product of a (.., m, k) and b (.., k, n), batch dims already equal
 * or b 2-D (then folded into one GEMM with a's batch as rows). */
static dr_status product(const dr_backend *be, const dr_tensor *a, const dr_tensor *b,
                         const int64_t *out_sizes, int32_t out_ndim, dr_tensor **out) {
    dr_tensor *a3 = NULL, *b3 = NULL, *res = NULL;
    dr_status st;
    if (b->ndim == 2 && a->ndim > 2) {
        int64_t rows = 1;
        for (int32_t d = 0; d < a->ndim - 1; d++) rows *= a->sizes[d];
        int64_t sa[3] = {1, rows, a->sizes[a->ndim - 1]};
        int64_t sb[3] = {1, b->sizes[0], b->sizes[1]};
        st = dr_tensor_reshape(a, sa, 3, &a3);
        if (st == DR_OK) st = dr_tensor_view(b, sb, 3, &b3);
    } else {
        st = as_3d(a, &a3);
        if (st == DR_OK) st = as_3d(b, &b3);
    }
    int64_t s3[3] = {a3 ? a3->sizes[0] : 0, a3 ? a3->sizes[1] : 0, b3 ? b3->sizes[2] : 0};
    if (st == DR_OK) st = dr_tensor_new(s3, 3, DR_F32, a->device, "matmul", &res);
    if (st == DR_OK) st = be->matmul(res, a3, b3);
    if (st == DR_OK) st = dr_tensor_view(res, out_sizes, out_ndim, out);
    dr_tensor_release(a3);
    dr_tensor_release(b3);
    dr_tensor_release(res);
    return st;
}

dr_status dr_matmul(const dr_tensor *a, const dr_tensor *b, dr_tensor **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "matmul: out is NULL");
    *out = NULL;
    DR_TRY(dr_check_tensor(a, "matmul", "input"));
    DR_TRY(dr_check_tensor(b, "matmul", "other"));
    if (a->ndim == 0 || b->ndim == 0)
        return dr_fail(DR_ERR_SHAPE, "matmul: both arguments need at least 1 dimension, got %s "
                       "and %s", dr_shape_str(a), dr_shape_str(b));
    if (!dr_device_eq(a->device, b->device))
        return dr_fail(DR_ERR_DEVICE, "matmul: tensors are on different devices (%s and %s)",
                       dr_device_str(a->device), dr_device_str(b->device));
    if (a->scalar_type != b->scalar_type)
        return dr_fail(DR_ERR_DTYPE, "matmul: expected both arguments to have the same dtype, got "
                       "%s %s and %s %s", dr_dtype_name(a->scalar_type), dr_shape_str(a),
                       dr_dtype_name(b->scalar_type), dr_shape_str(b));
    int32_t dtype = a->scalar_type;
    if (!dr_dtype_is_float(dtype))
        return dr_fail(DR_ERR_DTYPE, "matmul: dtype %s is not supported (float32, float16, "
                       "bfloat16)", dr_dtype_name(dtype));
    int64_t k = a->sizes[a->ndim - 1];
    int64_t kb = b->sizes[b->ndim == 1 ? 0 : b->ndim - 2];
    if (k != kb)
        return dr_fail(DR_ERR_SHAPE, "matmul: shapes %s and %s cannot be multiplied (%lld != %lld)",
                       dr_shape_str(a), dr_shape_str(b), (long long)k, (long long)kb);
    const dr_backend *be = dr_backend_get(a->device, "matmul");
    if (!be) return DR_ERR_DEVICE;

    /* Promote 1-D operands to matrices; remember which unit dims to drop. */
    dr_tensor *a2 = NULL, *b2 = NULL, *ae = NULL, *be_ = NULL, *fa = NULL, *fb = NULL, *res = NULL;
    dr_status st = DR_OK;
    int64_t row[2] = {1, k}, col[2] = {k, 1};
    st = a->ndim == 1 ? dr_tensor_view(a, row, 2, &a2) : dr_as_dtype(a, dtype, &a2);
    if (st == DR_OK) st = b->ndim == 1 ? dr_tensor_view(b, col, 2, &b2) : dr_as_dtype(b, dtype, &b2);
    if (st != DR_OK) goto done;

    /* Batch shape: broadcast of both batch parts. */
    int32_t na = a2->ndim - 2, nb = b2->ndim - 2, nbatch = na > nb ? na : nb;
    int64_t batch[DR_MAX_DIMS];
    for (int32_t i = 0; i < nbatch; i++) {
        int32_t ia = na - nbatch + i, ib = nb - nbatch + i;
        int64_t sa = ia >= 0 ? a2->sizes[ia] : 1, sb = ib >= 0 ? b2->sizes[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            st = dr_fail(DR_ERR_SHAPE, "matmul: batch dimensions of %s and %s cannot be broadcast",
                         dr_shape_str(a), dr_shape_str(b));
            goto done;
        }
        batch[i] = sa == 1 ? sb : sa;
    }
    int64_t m = a2->sizes[a2->ndim - 2], n = b2->sizes[b2->ndim - 1];
    int64_t out_sizes[DR_MAX_DIMS];
    int32_t out_ndim = 0;
    for (int32_t i = 0; i < nbatch; i++) out_sizes[out_ndim++] = batch[i];
    if (a->ndim > 1) out_sizes[out_ndim++] = m;
    if (b->ndim > 1) out_sizes[out_ndim++] = n;

    /* Compute in float32. */
    st = dr_as_dtype(a2, DR_F32, &fa);
    if (st == DR_OK) st = dr_as_dtype(b2, DR_F32, &fb);
    if (st != DR_OK) goto done;
    if (b2->ndim == 2) {
        st = product(be, fa, fb, out_sizes, out_ndim, &res);
    } else {
        int64_t ea[DR_MAX_DIMS], eb[DR_MAX_DIMS];
        for (int32_t i = 0; i < nbatch; i++) ea[i] = eb[i] = batch[i];
        ea[nbatch] = m; ea[nbatch + 1] = k;
        eb[nbatch] = k; eb[nbatch + 1] = n;
        st = dr_expand_to(fa, ea, nbatch + 2, "matmul", &ae);
        if (st == DR_OK) st = dr_expand_to(fb, eb, nbatch + 2, "matmul", &be_);
        if (st == DR_OK) st = product(be, ae, be_, out_sizes, out_ndim, &res);
    }
    if (st == DR_OK && dtype != DR_F32) {
        dr_tensor *cast;
        st = dr_tensor_to_dtype(res, dtype, &cast);
        dr_tensor_release(res);
        res = st == DR_OK ? cast : NULL;
    }
done:
    dr_tensor_release(a2);
    dr_tensor_release(b2);
    dr_tensor_release(ae);
    dr_tensor_release(be_);
    dr_tensor_release(fa);
    dr_tensor_release(fb);
    if (st == DR_OK) *out = res;
    else dr_tensor_release(res);
    return st;
}
