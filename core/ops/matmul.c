/* Matrix products with torch.matmul semantics.
 *
 *   1-D @ 1-D -> 0-d dot;  2-D @ 2-D -> mm;  1-D operands gain a unit dim that is
 *   dropped from the result;  N-D operands are batches of matrices whose batch
 *   dims broadcast.  C[..., i, j] = sum_k A[..., i, k] B[..., k, j].
 * Backward: dA = dC @ B^T, dB = A^T @ dC (1-D operands as the matrices they were
 * promoted to), summed over broadcast batch dims. f16/bf16 inputs compute in f32
 * and round the result once. */
#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* t with a unit dim inserted before position `at` (0-based; negative from the end). */
static dr_status unsqueeze(const dr_tensor *t, int32_t at, dr_tensor **out) {
    int64_t s[DR_MAX_DIMS];
    int32_t pos = at < 0 ? t->ndim + 1 + at : at, n = 0;
    for (int32_t d = 0; d <= t->ndim; d++) {
        if (d == pos) s[n++] = 1;
        if (d < t->ndim) s[n++] = t->sizes[d];
    }
    return dr_tensor_reshape(t, s, t->ndim + 1, out);
}

static dr_status matmul_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *a, *b;
    DR_TRY(dr_autograd_saved(n, 0, &a));
    DR_TRY(dr_autograd_saved(n, 1, &b));
    int64_t k = a->sizes[a->ndim - 1];
    int64_t row[2] = {1, k}, col[2] = {k, 1};
    dr_tensor *a2 = NULL, *b2 = NULL, *g1 = NULL, *g2 = NULL, *t = NULL, *p = NULL;
    /* the matrices the forward multiplied, and dC with their unit dims back */
    dr_status st = a->ndim == 1 ? dr_tensor_view(a, row, 2, &a2) : dr_tensor_alias(a, &a2);
    if (st == DR_OK) st = b->ndim == 1 ? dr_tensor_view(b, col, 2, &b2) : dr_tensor_alias(b, &b2);
    if (st == DR_OK) st = a->ndim == 1 ? unsqueeze(g, -2 + (b->ndim == 1), &g1) : dr_tensor_alias(g, &g1);
    if (st == DR_OK) st = b->ndim == 1 ? unsqueeze(g1, -1, &g2) : dr_tensor_alias(g1, &g2);
    if (st == DR_OK && dr_node_needs(n, 0)) { /* dA = dC @ B^T */
        st = dr_tensor_transpose(b2, -1, -2, &t);
        if (st == DR_OK) st = dr_matmul(g2, t, &p);
        if (st == DR_OK) st = dr_sum_to(p, a2->sizes, a2->ndim, a->scalar_type, &grads[0]);
        if (st == DR_OK && a->ndim == 1) {
            dr_tensor *v;
            st = dr_tensor_reshape(grads[0], a->sizes, 1, &v);
            dr_tensor_release(grads[0]);
            grads[0] = v;
        }
        dr_tensor_release(t);
        dr_tensor_release(p);
        t = p = NULL;
    }
    if (st == DR_OK && dr_node_needs(n, 1) && b2->ndim == 2 && a2->ndim > 2) {
        /* B broadcast over A's batch (a linear layer): one GEMM with the batch
         * folded into the inner dimension, dB = A'^T dC' with A' [rows, k],
         * dC' [rows, n], instead of one product per batch and a sum. */
        dr_tensor *af = NULL, *gf = NULL;
        st = dr_tensor_reshape(a2, (int64_t[]){-1, k}, 2, &af);
        if (st == DR_OK) st = dr_tensor_reshape(g2, (int64_t[]){-1, g2->sizes[g2->ndim - 1]}, 2, &gf);
        if (st == DR_OK) st = dr_tensor_transpose(af, 0, 1, &t);
        if (st == DR_OK) st = dr_matmul(t, gf, &p);
        if (st == DR_OK) st = dr_as_dtype(p, b->scalar_type, &grads[1]);
        if (st == DR_OK && b->ndim == 1) {
            dr_tensor *v;
            st = dr_tensor_reshape(grads[1], b->sizes, 1, &v);
            dr_tensor_release(grads[1]);
            grads[1] = v;
        }
        dr_tensor_release(af);
        dr_tensor_release(gf);
    } else if (st == DR_OK && dr_node_needs(n, 1)) { /* dB = A^T @ dC */
        st = dr_tensor_transpose(a2, -1, -2, &t);
        if (st == DR_OK) st = dr_matmul(t, g2, &p);
        if (st == DR_OK) st = dr_sum_to(p, b2->sizes, b2->ndim, b->scalar_type, &grads[1]);
        if (st == DR_OK && b->ndim == 1) {
            dr_tensor *v;
            st = dr_tensor_reshape(grads[1], b->sizes, 1, &v);
            dr_tensor_release(grads[1]);
            grads[1] = v;
        }
    }
    dr_tensor_release(t);
    dr_tensor_release(p);
    dr_tensor_release(a2);
    dr_tensor_release(b2);
    dr_tensor_release(g1);
    dr_tensor_release(g2);
    return st;
}

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
    int64_t rows = 1;
    for (int32_t d = 0; d < a->ndim - 1; d++) rows *= a->sizes[d];
    int64_t sa[3] = {1, rows, a->sizes[a->ndim - 1]};
    if (b->ndim == 2 && a->ndim > 2 && dr_tensor_view(a, sa, 3, &a3) == DR_OK) {
        /* a's batch folds into rows without a copy: one GEMM */
        int64_t sb[3] = {1, b->sizes[0], b->sizes[1]};
        st = dr_tensor_view(b, sb, 3, &b3);
    } else if (b->ndim == 2 && a->ndim > 2) {
        /* a's batch does not fold (e.g. a transposed [B, N, C] view): a batch of
         * GEMMs over a, each matrix read in place, against b broadcast */
        int64_t sb[3] = {0, b->sizes[0], b->sizes[1]};
        dr_tensor *b2 = NULL;
        st = as_3d(a, &a3);
        sb[0] = st == DR_OK ? a3->sizes[0] : 0;
        if (st == DR_OK) st = dr_tensor_view(b, sb + 1, 2, &b2);
        if (st == DR_OK) st = dr_expand_to(b2, sb, 3, "matmul", &b3);
        dr_tensor_release(b2);
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
    bool grad = dr_grad_pause();
    st = a->ndim == 1 ? dr_tensor_view(a, row, 2, &a2) : dr_as_dtype(a, dtype, &a2);
    if (st == DR_OK) st = b->ndim == 1 ? dr_tensor_view(b, col, 2, &b2) : dr_as_dtype(b, dtype, &b2);
    if (st != DR_OK) goto paused;

    /* Batch shape: broadcast of both batch parts. */
    int32_t na = a2->ndim - 2, nb = b2->ndim - 2, nbatch = na > nb ? na : nb;
    int64_t batch[DR_MAX_DIMS];
    for (int32_t i = 0; i < nbatch; i++) {
        int32_t ia = na - nbatch + i, ib = nb - nbatch + i;
        int64_t sa = ia >= 0 ? a2->sizes[ia] : 1, sb = ib >= 0 ? b2->sizes[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            st = dr_fail(DR_ERR_SHAPE, "matmul: batch dimensions of %s and %s cannot be broadcast",
                         dr_shape_str(a), dr_shape_str(b));
            goto paused;
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
    if (st != DR_OK) goto paused;
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
paused:
    dr_grad_resume(grad);
    if (st == DR_OK) {
        const dr_tensor *inputs[2] = {a, b};
        dr_node *node;
        st = dr_autograd_record(res, "matmul", matmul_backward, inputs, 2, &node);
        if (st == DR_OK && node) st = dr_autograd_save(node, 0, a);
        if (st == DR_OK && node) st = dr_autograd_save(node, 1, b);
    }
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
