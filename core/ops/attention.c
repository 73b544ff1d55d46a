/* Scaled dot product attention: torch.nn.functional.scaled_dot_product_attention
 * with dropout_p = 0, forward and backward, memory-efficient.
 *
 *   q [B..., Lq, E], k [B..., Lk, E], v [B..., Lk, Ev]   (batch dims broadcast)
 *   S = scale q k^T + M     P = softmax(S) over the keys     out = P v  [B..., Lq, Ev]
 *
 * M comes from attn_mask (broadcast to [B..., Lq, Lk]): a bool mask sets S = -inf
 * where it is false; a float mask is added. is_causal masks key j > query i
 * (top-left aligned, torch's ones(Lq, Lk).tril(0), also when Lq != Lk); it cannot
 * be combined with attn_mask (torch refuses that too). scale <= 0 or NaN means
 * 1/sqrt(E) (torch's scale=None). A query row that attends no key at all gives
 * out = 0 and zero gradients, as torch >= 2.5 does, not NaN.
 *
 * The backend never forms the [Lq, Lk] matrices: the forward streams key tiles
 * through an online softmax and also returns the logsumexp L = log sum_j e^S[i,j]
 * (float32 [B..., Lq], -inf for rows that attend nothing); the backward
 * recomputes P = exp(S - L) tile by tile and, with D = rowsum(dout * out),
 *   dv = P^T dout,   dS = P (dout v^T - D),   dq = scale dS k,   dk = scale dS^T q,
 * summed over broadcast batch dims. f16/bf16 compute in float32; out and the
 * gradients come back in the inputs' dtype.
 *
 * Autograd saves q, k, v and the output; for float32 without a mask the
 * logsumexp rides in the output's storage, just past its elements (one float per
 * query row), so the backward does not rerun the forward. With a mask (which
 * takes the fourth save slot) or half inputs the backward recomputes out and L.
 * attn_mask itself gets no gradient: a mask that requires grad is an error. */
#include <math.h>

#include "nn_f32.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

#define OP_FWD "scaled_dot_product_attention"
#define OP_BWD "scaled_dot_product_attention_backward"

/* Checked geometry of one call. */
typedef struct sdpa_geom {
    int64_t batch[DR_MAX_DIMS]; /* broadcast batch dims */
    int32_t nb;
    int64_t lq, lk, e, ev;
    double scale; /* resolved */
    int causal;
} sdpa_geom;

static dr_status check_operand(const dr_tensor *t, const char *op, const char *name) {
    DR_TRY(dr_nn_check_float(t, op, name));
    if (t->ndim < 2)
        return dr_fail(DR_ERR_SHAPE, "%s: %s must have at least 2 dims ([..., L, E]), got %s", op,
                       name, dr_shape_str(t));
    return DR_OK;
}

/* Broadcasts the batch part (all but the last two dims) of t into g->batch. */
static bool broadcast_batch(sdpa_geom *g, const dr_tensor *t) {
    int32_t n = t->ndim - 2;
    if (n > g->nb) {
        for (int32_t i = n - 1; i >= n - g->nb; i--) g->batch[i] = g->batch[i - (n - g->nb)];
        for (int32_t i = 0; i < n - g->nb; i++) g->batch[i] = 1;
        g->nb = n;
    }
    for (int32_t i = 0; i < n; i++) {
        int64_t s = t->sizes[i], *b = &g->batch[g->nb - n + i];
        if (s == *b || s == 1) continue;
        if (*b != 1) return false;
        *b = s;
    }
    return true;
}

static dr_status check_args(const char *op, const dr_tensor *q, const dr_tensor *k,
                            const dr_tensor *v, const dr_tensor *mask, int is_causal,
                            double scale, sdpa_geom *g) {
    DR_TRY(check_operand(q, op, "query"));
    DR_TRY(check_operand(k, op, "key"));
    DR_TRY(check_operand(v, op, "value"));
    DR_TRY(dr_nn_check_device(q, k, op, "key"));
    DR_TRY(dr_nn_check_device(q, v, op, "value"));
    if (q->scalar_type != k->scalar_type || q->scalar_type != v->scalar_type)
        return dr_fail(DR_ERR_DTYPE, "%s: query, key and value must have the same dtype, got %s, "
                       "%s and %s", op, dr_dtype_name(q->scalar_type),
                       dr_dtype_name(k->scalar_type), dr_dtype_name(v->scalar_type));
    g->lq = q->sizes[q->ndim - 2];
    g->e = q->sizes[q->ndim - 1];
    g->lk = k->sizes[k->ndim - 2];
    g->ev = v->sizes[v->ndim - 1];
    if (k->sizes[k->ndim - 1] != g->e)
        return dr_fail(DR_ERR_SHAPE, "%s: query %s and key %s must have the same embedding size "
                       "(last dim), got %lld and %lld", op, dr_shape_str(q), dr_shape_str(k),
                       (long long)g->e, (long long)k->sizes[k->ndim - 1]);
    if (v->sizes[v->ndim - 2] != g->lk)
        return dr_fail(DR_ERR_SHAPE, "%s: key %s and value %s must have the same sequence length "
                       "(dim -2), got %lld and %lld", op, dr_shape_str(k), dr_shape_str(v),
                       (long long)g->lk, (long long)v->sizes[v->ndim - 2]);
    g->nb = 0;
    if (!broadcast_batch(g, q) || !broadcast_batch(g, k) || !broadcast_batch(g, v))
        return dr_fail(DR_ERR_SHAPE, "%s: the batch dims of query %s, key %s and value %s cannot "
                       "be broadcast together", op, dr_shape_str(q), dr_shape_str(k),
                       dr_shape_str(v));
    if (mask) {
        DR_TRY(dr_check_tensor(mask, op, "attn_mask"));
        DR_TRY(dr_nn_check_device(q, mask, op, "attn_mask"));
        if (mask->scalar_type != DR_BOOL && !dr_dtype_is_float(mask->scalar_type))
            return dr_fail(DR_ERR_DTYPE, "%s: attn_mask %s has dtype %s; expected bool (true = "
                           "attend) or a float dtype (added to the scores)", op,
                           dr_shape_str(mask), dr_dtype_name(mask->scalar_type));
        int64_t full[DR_MAX_DIMS];
        int32_t nf = g->nb + 2;
        for (int32_t i = 0; i < g->nb; i++) full[i] = g->batch[i];
        full[g->nb] = g->lq;
        full[g->nb + 1] = g->lk;
        bool fits = mask->ndim <= nf;
        for (int32_t i = 0; fits && i < mask->ndim; i++) {
            int64_t s = mask->sizes[i], want = full[nf - mask->ndim + i];
            fits = s == want || s == 1;
        }
        if (!fits)
            return dr_fail(DR_ERR_SHAPE, "%s: attn_mask %s cannot be broadcast to the scores' "
                           "shape %s ([batch..., Lq, Lk])", op, dr_shape_str(mask),
                           dr_sizes_str(full, nf));
        if (is_causal)
            return dr_fail(DR_ERR_ARG, "%s: attn_mask and is_causal cannot both be given (as in "
                           "torch); fold the causal mask into attn_mask", op);
    }
    if (isinf(scale))
        return dr_fail(DR_ERR_ARG, "%s: scale must be finite, got %g (<= 0 or NaN means "
                       "1/sqrt(E))", op, scale);
    g->scale = scale > 0 ? scale : 1.0 / sqrt(g->e > 0 ? (double)g->e : 1.0);
    g->causal = is_causal != 0;
    return DR_OK;
}

/* [batch..., a, b] */
static int32_t batch_shape(const sdpa_geom *g, int64_t a, int64_t b, int64_t *sizes) {
    for (int32_t i = 0; i < g->nb; i++) sizes[i] = g->batch[i];
    sizes[g->nb] = a;
    sizes[g->nb + 1] = b;
    return g->nb + 2;
}

/* t as float32 with a stride-1 last dim (rows may have any stride), expanded
 * (stride 0, no copy) to [batch..., rows, cols]. */
static dr_status stage(const dr_tensor *t, const sdpa_geom *g, const char *op, dr_tensor **out) {
    dr_tensor *f = NULL, *c = NULL;
    *out = NULL;
    DR_TRY(dr_as_dtype(t, DR_F32, &f));
    int32_t nd = f->ndim;
    dr_status st = DR_OK;
    if (f->sizes[nd - 1] <= 1 || f->strides[nd - 1] == 1) {
        c = f;
        f = NULL;
    } else {
        st = dr_tensor_contiguous(f, &c);
    }
    int64_t sizes[DR_MAX_DIMS];
    int32_t n = batch_shape(g, t->sizes[nd - 2], t->sizes[nd - 1], sizes);
    if (st == DR_OK) st = dr_expand_to(c, sizes, n, op, out);
    dr_tensor_release(f);
    dr_tensor_release(c);
    return st;
}

/* The mask for the backend: bool, or float32 (NULL stays NULL); expanded to the
 * scores' shape. */
static dr_status stage_mask(const dr_tensor *m, const sdpa_geom *g, const char *op,
                            dr_tensor **out) {
    *out = NULL;
    if (!m) return DR_OK;
    dr_tensor *f = NULL;
    DR_TRY(m->scalar_type == DR_BOOL ? dr_tensor_alias(m, &f) : dr_as_dtype(m, DR_F32, &f));
    int64_t sizes[DR_MAX_DIMS];
    int32_t n = batch_shape(g, g->lq, g->lk, sizes);
    dr_status st = dr_expand_to(f, sizes, n, op, out);
    dr_tensor_release(f);
    return st;
}

/* A float32 out [batch..., Lq, Ev] and lse [batch..., Lq]; with `pack` both live in
 * one storage, lse right after out's elements (read back by packed_lse). */
static dr_status new_outputs(const sdpa_geom *g, dr_device dev, bool pack, dr_tensor **out,
                             dr_tensor **lse) {
    int64_t so[DR_MAX_DIMS], sl[DR_MAX_DIMS];
    int32_t no = batch_shape(g, g->lq, g->ev, so), nl = g->nb + 1;
    for (int32_t i = 0; i < nl; i++) sl[i] = so[i];
    *out = *lse = NULL;
    if (!pack) {
        DR_TRY(dr_tensor_new(so, no, DR_F32, dev, OP_FWD, out));
        return dr_tensor_new(sl, nl, DR_F32, dev, OP_FWD, lse);
    }
    int64_t n_out = 1, n_lse = 1;
    for (int32_t i = 0; i < no; i++) n_out *= so[i];
    for (int32_t i = 0; i < nl; i++) n_lse *= sl[i];
    int64_t total = n_out + n_lse;
    dr_tensor *buf = NULL, *part = NULL;
    dr_status st = dr_tensor_new(&total, 1, DR_F32, dev, OP_FWD, &buf);
    if (st == DR_OK) st = dr_tensor_narrow(buf, 0, 0, n_out, &part);
    if (st == DR_OK) st = dr_tensor_view(part, so, no, out);
    dr_tensor_release(part);
    part = NULL;
    if (st == DR_OK) st = dr_tensor_narrow(buf, 0, n_out, n_lse, &part);
    if (st == DR_OK) st = dr_tensor_view(part, sl, nl, lse);
    dr_tensor_release(part);
    dr_tensor_release(buf);
    return st;
}

/* The logsumexp packed behind a saved float32 output (new_outputs with pack). */
static dr_status packed_lse(const dr_tensor *out, dr_tensor **lse) {
    int64_t n_out = dr_tensor_numel(out), n_lse = 1;
    for (int32_t i = 0; i < out->ndim - 1; i++) n_lse *= out->sizes[i];
    if (!dr_tensor_is_contiguous(out) ||
        (size_t)(out->storage_offset + n_out + n_lse) * sizeof(float) > out->storage->nbytes)
        return dr_fail(DR_ERR_INTERNAL, OP_BWD ": the saved output %s carries no logsumexp",
                       dr_shape_str(out));
    DR_TRY(dr_tensor_alias(out, lse));
    (*lse)->ndim = out->ndim - 1;
    dr_tensor_set_contiguous_strides(*lse);
    (*lse)->storage_offset = out->storage_offset + n_out;
    return DR_OK;
}

/* Runs the backend forward on float32 staging of the inputs. */
static dr_status forward_f32(const dr_backend *be, const sdpa_geom *g, const dr_tensor *q,
                             const dr_tensor *k, const dr_tensor *v, const dr_tensor *mask,
                             bool pack, dr_tensor **out, dr_tensor **lse) {
    dr_tensor *fq = NULL, *fk = NULL, *fv = NULL, *fm = NULL;
    *out = *lse = NULL;
    dr_status st = stage(q, g, OP_FWD, &fq);
    if (st == DR_OK) st = stage(k, g, OP_FWD, &fk);
    if (st == DR_OK) st = stage(v, g, OP_FWD, &fv);
    if (st == DR_OK) st = stage_mask(mask, g, OP_FWD, &fm);
    if (st == DR_OK) st = new_outputs(g, q->device, pack, out, lse);
    if (st == DR_OK) st = be->attention(*out, *lse, fq, fk, fv, fm, g->causal, g->scale);
    if (st != DR_OK) {
        dr_tensor_release(*out);
        dr_tensor_release(*lse);
        *out = *lse = NULL;
    }
    dr_tensor_release(fq);
    dr_tensor_release(fk);
    dr_tensor_release(fv);
    dr_tensor_release(fm);
    return st;
}

static dr_status sdpa_backward_node(dr_node *n, const dr_tensor *g, dr_tensor **grads);

static dr_status sdpa_forward(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                              const dr_tensor *mask, int is_causal, double scale,
                              dr_tensor **out, dr_tensor **logsumexp) {
    DR_TRY(dr_check_out(out, OP_FWD));
    if (logsumexp) *logsumexp = NULL;
    sdpa_geom g;
    DR_TRY(check_args(OP_FWD, q, k, v, mask, is_causal, scale, &g));
    const dr_backend *be = dr_backend_get(q->device, OP_FWD);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, attention, OP_FWD));
    bool tape = dr_grad_mode() && (dr_requires_grad(q) || dr_requires_grad(k) ||
                                   dr_requires_grad(v));
    if (mask && dr_grad_mode() && dr_requires_grad(mask))
        return dr_fail(DR_ERR_UNSUPPORTED, OP_FWD ": attn_mask %s requires grad, but gradients "
                       "for the mask are not supported; pass mask:detach()", dr_shape_str(mask));
    int32_t dtype = q->scalar_type;
    bool pack = tape && !mask && dtype == DR_F32;

    dr_tensor *res = NULL, *lse = NULL;
    bool grad = dr_grad_pause();
    dr_status st = forward_f32(be, &g, q, k, v, mask, pack, &res, &lse);
    if (st == DR_OK && dtype != DR_F32) {
        dr_tensor *cast = NULL;
        st = dr_tensor_to_dtype(res, dtype, &cast);
        dr_tensor_release(res);
        res = cast;
    }
    dr_grad_resume(grad);
    if (st == DR_OK) {
        const dr_tensor *inputs[3] = {q, k, v};
        dr_node *node;
        st = dr_autograd_record(res, OP_FWD, sdpa_backward_node, inputs, 3, &node);
        if (st == DR_OK && node) {
            node->ints[0] = g.causal;
            node->ints[1] = pack;
            node->ints[2] = mask != NULL;
            node->reals[0] = g.scale;
            for (int32_t i = 0; st == DR_OK && i < 3; i++) st = dr_autograd_save(node, i, inputs[i]);
            if (st == DR_OK && (pack || mask)) st = dr_autograd_save(node, 3, pack ? res : mask);
        }
    }
    if (st == DR_OK) {
        *out = res;
        if (logsumexp) *logsumexp = lse;
        else dr_tensor_release(lse);
    } else {
        dr_tensor_release(res);
        dr_tensor_release(lse);
    }
    return st;
}

dr_status dr_scaled_dot_product_attention(const dr_tensor *q, const dr_tensor *k,
                                          const dr_tensor *v, const dr_tensor *attn_mask,
                                          int is_causal, double scale, dr_tensor **out) {
    return sdpa_forward(q, k, v, attn_mask, is_causal, scale, out, NULL);
}

dr_status dr_scaled_dot_product_attention_forward(const dr_tensor *q, const dr_tensor *k,
                                                  const dr_tensor *v, const dr_tensor *attn_mask,
                                                  int is_causal, double scale, dr_tensor **out,
                                                  dr_tensor **logsumexp) {
    return sdpa_forward(q, k, v, attn_mask, is_causal, scale, out, logsumexp);
}

/* t (NULL allowed) must have exactly the given shape. */
static dr_status check_shape(const dr_tensor *t, const int64_t *sizes, int32_t nd,
                             const char *name) {
    bool same = t->ndim == nd;
    for (int32_t i = 0; same && i < nd; i++) same = t->sizes[i] == sizes[i];
    if (!same)
        return dr_fail(DR_ERR_SHAPE, OP_BWD ": %s has shape %s, expected %s", name,
                       dr_shape_str(t), dr_sizes_str(sizes, nd));
    return DR_OK;
}

/* float32 [batch..., rows, cols] gradient buffer, or NULL when not wanted. */
static dr_status new_grad(const sdpa_geom *g, dr_device dev, int64_t rows, int64_t cols,
                          dr_tensor **want, dr_tensor **buf) {
    int64_t sizes[DR_MAX_DIMS];
    *buf = NULL;
    if (!want) return DR_OK;
    return dr_tensor_new(sizes, batch_shape(g, rows, cols, sizes), DR_F32, dev, OP_BWD, buf);
}

dr_status dr_scaled_dot_product_attention_backward(
    const dr_tensor *grad_out, const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
    const dr_tensor *attn_mask, int is_causal, double scale, const dr_tensor *out,
    const dr_tensor *logsumexp, dr_tensor **grad_q, dr_tensor **grad_k, dr_tensor **grad_v) {
    if (grad_q) *grad_q = NULL;
    if (grad_k) *grad_k = NULL;
    if (grad_v) *grad_v = NULL;
    sdpa_geom g;
    DR_TRY(check_args(OP_BWD, q, k, v, attn_mask, is_causal, scale, &g));
    DR_TRY(dr_nn_check_float(grad_out, OP_BWD, "grad_out"));
    DR_TRY(dr_nn_check_device(q, grad_out, OP_BWD, "grad_out"));
    int64_t so[DR_MAX_DIMS];
    int32_t no = batch_shape(&g, g.lq, g.ev, so);
    DR_TRY(check_shape(grad_out, so, no, "grad_out"));
    if ((out == NULL) != (logsumexp == NULL))
        return dr_fail(DR_ERR_ARG, OP_BWD ": pass both out and logsumexp from the forward, or "
                       "neither (then they are recomputed)");
    if (out) {
        DR_TRY(dr_nn_check_float(out, OP_BWD, "out"));
        DR_TRY(dr_nn_check_float(logsumexp, OP_BWD, "logsumexp"));
        DR_TRY(dr_nn_check_device(q, out, OP_BWD, "out"));
        DR_TRY(dr_nn_check_device(q, logsumexp, OP_BWD, "logsumexp"));
        DR_TRY(check_shape(out, so, no, "out"));
        DR_TRY(check_shape(logsumexp, so, no - 1, "logsumexp"));
    }
    const dr_backend *be = dr_backend_get(q->device, OP_BWD);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, attention, OP_BWD));
    DR_TRY(DR_KERNEL(be, attention_backward, OP_BWD));
    if (!grad_q && !grad_k && !grad_v) return DR_OK;

    dr_tensor *fq = NULL, *fk = NULL, *fv = NULL, *fm = NULL, *fg = NULL, *fo = NULL, *fl = NULL;
    dr_tensor *dq = NULL, *dk = NULL, *dv = NULL;
    bool grad = dr_grad_pause();
    dr_status st = stage(q, &g, OP_BWD, &fq);
    if (st == DR_OK) st = stage(k, &g, OP_BWD, &fk);
    if (st == DR_OK) st = stage(v, &g, OP_BWD, &fv);
    if (st == DR_OK) st = stage_mask(attn_mask, &g, OP_BWD, &fm);
    if (st == DR_OK) st = stage(grad_out, &g, OP_BWD, &fg);
    if (st == DR_OK && out) {
        st = stage(out, &g, OP_BWD, &fo);
        if (st == DR_OK) st = dr_nn_stage(logsumexp, true, &fl);
    } else if (st == DR_OK) {
        st = forward_f32(be, &g, q, k, v, attn_mask, false, &fo, &fl);
    }
    if (st == DR_OK) st = new_grad(&g, q->device, g.lq, g.e, grad_q, &dq);
    if (st == DR_OK) st = new_grad(&g, q->device, g.lk, g.e, grad_k, &dk);
    if (st == DR_OK) st = new_grad(&g, q->device, g.lk, g.ev, grad_v, &dv);
    if (st == DR_OK)
        st = be->attention_backward(dq, dk, dv, fg, fq, fk, fv, fm, fo, fl, g.causal, g.scale);
    /* back to each input's own shape (summing broadcast batch dims) and dtype */
    if (st == DR_OK && dq) st = dr_sum_to(dq, q->sizes, q->ndim, q->scalar_type, grad_q);
    if (st == DR_OK && dk) st = dr_sum_to(dk, k->sizes, k->ndim, k->scalar_type, grad_k);
    if (st == DR_OK && dv) st = dr_sum_to(dv, v->sizes, v->ndim, v->scalar_type, grad_v);
    dr_grad_resume(grad);
    dr_tensor *temps[] = {fq, fk, fv, fm, fg, fo, fl, dq, dk, dv};
    for (size_t i = 0; i < sizeof temps / sizeof temps[0]; i++) dr_tensor_release(temps[i]);
    if (st != DR_OK) {
        dr_tensor **outs[3] = {grad_q, grad_k, grad_v};
        for (int i = 0; i < 3; i++)
            if (outs[i]) {
                dr_tensor_release(*outs[i]);
                *outs[i] = NULL;
            }
    }
    return st;
}

static dr_status sdpa_backward_node(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *q, *k, *v, *extra = NULL;
    DR_TRY(dr_autograd_saved(n, 0, &q));
    DR_TRY(dr_autograd_saved(n, 1, &k));
    DR_TRY(dr_autograd_saved(n, 2, &v));
    if (n->ints[1] || n->ints[2]) DR_TRY(dr_autograd_saved(n, 3, &extra));
    const dr_tensor *mask = n->ints[2] ? extra : NULL, *out = n->ints[1] ? extra : NULL;
    dr_tensor *lse = NULL;
    if (out) DR_TRY(packed_lse(out, &lse));
    dr_status st = dr_scaled_dot_product_attention_backward(
        g, q, k, v, mask, (int)n->ints[0], n->reals[0], out, lse,
        dr_node_needs(n, 0) ? &grads[0] : NULL, dr_node_needs(n, 1) ? &grads[1] : NULL,
        dr_node_needs(n, 2) ? &grads[2] : NULL);
    dr_tensor_release(lse);
    return st;
}
