/* The shared model blocks (see nn.h). Each forward is the diffusers module's
 * forward, op for op, in float32:
 *
 *   Linear        y = x W^T + b  (+ s (x A^T) B^T with a LoRA adapter, s = alpha / r)
 *   Attention     q, k, v = to_q(x), to_k(c), to_v(c) split into heads;
 *                 o = to_out.0(merge(sdpa(q, k, v)))          (AttnProcessor2_0)
 *   ResnetBlock2D h = conv1(silu(norm1(x))) + temb_proj(silu(temb))[:, :, None, None]
 *                 h = conv2(silu(norm2(h)));  y = (shortcut(x) + h) / output_scale_factor
 *   BasicTransformerBlock (norm_type "layer_norm", GEGLU feed-forward, mult 4)
 *                 x += attn1(norm1(x)); x += attn2(norm2(x), c); x += ff(norm3(x))
 *                 ff(x) = net.2(a * gelu(g)), [a, g] = net.0.proj(x).chunk(2, -1)
 *   Transformer2DModel  y = x + proj_out(blocks(proj_in(norm(x)))) with the
 *                 [B, C, H, W] <-> [B, H W, C] reshapes around the projections
 *                 (1x1 convs before/after the reshape, or linears after/before it).
 */
#include "nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../autograd/autograd.h"
#include "../tensor/tensor_internal.h"

/* ---- Linear (+ LoRA) ---------------------------------------------------------- */
dr_status nn_linear_new(dr_model *m, nn_linear *l, int64_t in, int64_t out, bool bias,
                        const char *name) {
    memset(l, 0, sizeof *l);
    l->in = in;
    l->out = out;
    DR_TRY(dr_model_param_new(m, &l->weight, DR_INIT_FAN_IN, (double)in, (int64_t[]){out, in}, 2,
                              "%s.weight", name));
    if (bias)
        DR_TRY(dr_model_param_new(m, &l->bias, DR_INIT_FAN_IN, (double)in, (int64_t[]){out}, 1,
                                  "%s.bias", name));
    return DR_OK;
}

/* x A^T B^T or x W^T: a matmul with the transposed weight view. */
static dr_status matmul_t(const dr_tensor *x, const dr_tensor *w, dr_tensor **out) {
    dr_tensor *wt = NULL;
    DR_TRY(dr_tensor_transpose(w, 0, 1, &wt));
    dr_status st = dr_matmul(x, wt, out);
    dr_tensor_release(wt);
    return st;
}

dr_status nn_linear_forward(const nn_linear *l, const dr_tensor *x, dr_tensor **out) {
    *out = NULL;
    dr_tensor *y = NULL, *t = NULL;
    DR_TRY(matmul_t(x, l->weight, &y));
    dr_status st = DR_OK;
    if (l->bias) {
        st = dr_add(y, l->bias, 1.0, &t);
        dr_swap(&y, t);
    }
    if (st == DR_OK && l->lora_down) {
        dr_tensor *a = NULL, *b = NULL;
        st = matmul_t(x, l->lora_down, &a);
        if (st == DR_OK) st = matmul_t(a, l->lora_up, &b);
        if (st == DR_OK) st = dr_add(y, b, l->lora_scale, &t);
        dr_tensor_release(a);
        dr_tensor_release(b);
        if (st == DR_OK) dr_swap(&y, t);
    }
    if (st != DR_OK) {
        dr_tensor_release(y);
        return st;
    }
    *out = y;
    return DR_OK;
}

dr_status nn_lora_target(dr_model *m, nn_linear *l, const char *name) {
    if (m->nlora == m->lora_cap) {
        int64_t cap = m->lora_cap ? 2 * m->lora_cap : 64;
        nn_linear **t = realloc(m->lora_targets, (size_t)cap * sizeof *t);
        if (!t) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
        m->lora_targets = t;
        char **n = realloc(m->lora_names, (size_t)cap * sizeof *n);
        if (!n) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
        m->lora_names = n;
        m->lora_cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    m->lora_targets[m->nlora] = l;
    m->lora_names[m->nlora++] = copy;
    return DR_OK;
}

/* The last dotted component(s) of a target name match one of `targets`:
 * "to_q" matches "...attn1.to_q", "to_out.0" matches "...attn1.to_out.0". */
static bool target_matches(const char *name, const char *const *targets, int32_t n) {
    size_t len = strlen(name);
    for (int32_t i = 0; i < n; i++) {
        size_t tl = strlen(targets[i]);
        if (tl <= len && strcmp(name + len - tl, targets[i]) == 0 &&
            (tl == len || name[len - tl - 1] == '.'))
            return true;
    }
    return false;
}

dr_status dr_model_add_lora(dr_model *m, int64_t rank, double alpha, const char *const *targets,
                            int32_t ntargets, uint64_t seed, int64_t *nadded) {
    DR_TRY(dr_model_check(m, NULL, "model_add_lora"));
    if (rank <= 0) return dr_fail(DR_ERR_ARG, "%s: LoRA rank must be positive, got %lld", m->context,
                                  (long long)rank);
    if (!(alpha > 0)) return dr_fail(DR_ERR_ARG, "%s: LoRA alpha must be positive, got %g", m->context, alpha);
    if (ntargets <= 0 || !targets)
        return dr_fail(DR_ERR_ARG, "%s: no LoRA target modules given", m->context);
    int64_t added = 0;
    for (int64_t i = 0; i < m->nlora; i++) {
        nn_linear *l = m->lora_targets[i];
        if (!target_matches(m->lora_names[i], targets, ntargets)) continue;
        if (l->lora_down)
            return dr_fail(DR_ERR_ARG, "%s: %s already has a LoRA adapter", m->context, m->lora_names[i]);
        if (rank > l->in || rank > l->out)
            return dr_fail(DR_ERR_ARG, "%s: LoRA rank %lld exceeds %s [%lld, %lld]", m->context,
                           (long long)rank, m->lora_names[i], (long long)l->out, (long long)l->in);
        /* peft: lora_A kaiming-uniform (a = sqrt 5), lora_B zeros: the adapter starts as 0 */
        DR_TRY(dr_model_adapter_new(m, &l->lora_down, DR_INIT_FAN_IN, (double)l->in,
                                    (int64_t[]){rank, l->in}, 2, "%s.lora_A.weight", m->lora_names[i]));
        DR_TRY(dr_model_adapter_new(m, &l->lora_up, DR_INIT_ZERO, 0.0, (int64_t[]){l->out, rank}, 2,
                                    "%s.lora_B.weight", m->lora_names[i]));
        l->lora_scale = alpha / (double)rank;
        added++;
    }
    if (added == 0) {
        char list[256] = "";
        size_t len = 0;
        for (int32_t i = 0; i < ntargets && len < sizeof list; i++)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", targets[i]);
        return dr_fail(DR_ERR_ARG, "%s: no module matches the LoRA targets (%s); this model's "
                       "attention projections end in to_q, to_k, to_v, to_out.0 / q_proj, k_proj, "
                       "v_proj, out_proj", m->context, list);
    }
    DR_TRY(dr_model_init_(m, seed, 1));
    if (nadded) *nadded = added;
    return DR_OK;
}

/* ---- Conv2d, norms ---------------------------------------------------------------- */
dr_status nn_conv_new_nobias(dr_model *m, nn_conv *c, int64_t in, int64_t out, int64_t kernel,
                             int64_t stride, int64_t padding, const char *name) {
    c->stride = stride;
    c->padding = padding;
    c->bias = NULL;
    return dr_model_param_new(m, &c->weight, DR_INIT_FAN_IN, (double)(in * kernel * kernel),
                              (int64_t[]){out, in, kernel, kernel}, 4, "%s.weight", name);
}

dr_status nn_conv_new(dr_model *m, nn_conv *c, int64_t in, int64_t out, int64_t kernel,
                      int64_t stride, int64_t padding, const char *name) {
    DR_TRY(nn_conv_new_nobias(m, c, in, out, kernel, stride, padding, name));
    return dr_model_param_new(m, &c->bias, DR_INIT_FAN_IN, (double)(in * kernel * kernel), (int64_t[]){out},
                              1, "%s.bias", name);
}

dr_status nn_conv_forward(const nn_conv *c, const dr_tensor *x, dr_tensor **out) {
    int64_t s[2] = {c->stride, c->stride}, p[2] = {c->padding, c->padding}, d[2] = {1, 1};
    return dr_conv2d(x, c->weight, c->bias, s, p, d, 1, out);
}

dr_status nn_group_norm_new(dr_model *m, nn_norm *n, int64_t groups, int64_t channels, double eps,
                            const char *name) {
    if (groups <= 0 || channels % groups != 0)
        return dr_fail(DR_ERR_IO, "%s: %s: %lld channels do not split into %lld groups (norm_num_groups)",
                       m->context, name, (long long)channels, (long long)groups);
    n->groups = groups;
    n->dim = channels;
    n->eps = eps;
    DR_TRY(dr_model_param_new(m, &n->weight, DR_INIT_ONE, 0, (int64_t[]){channels}, 1, "%s.weight", name));
    return dr_model_param_new(m, &n->bias, DR_INIT_ZERO, 0, (int64_t[]){channels}, 1, "%s.bias", name);
}

dr_status nn_layer_norm_new(dr_model *m, nn_norm *n, int64_t dim, double eps, const char *name) {
    n->groups = 0;
    n->dim = dim;
    n->eps = eps;
    DR_TRY(dr_model_param_new(m, &n->weight, DR_INIT_ONE, 0, (int64_t[]){dim}, 1, "%s.weight", name));
    return dr_model_param_new(m, &n->bias, DR_INIT_ZERO, 0, (int64_t[]){dim}, 1, "%s.bias", name);
}

dr_status nn_norm_forward(const nn_norm *n, const dr_tensor *x, dr_tensor **out) {
    if (n->groups > 0) return dr_group_norm(x, n->groups, n->weight, n->bias, n->eps, out, NULL, NULL);
    return dr_layer_norm(x, &n->dim, 1, n->weight, n->bias, n->eps, out, NULL, NULL);
}

/* ---- ViT embedding, score MLP ---------------------------------------------------------- */
dr_status nn_vit_embed(const nn_conv *patch, const dr_tensor *cls, const dr_tensor *pos,
                       const dr_tensor *x, dr_tensor **out) {
    int64_t bsz = x->sizes[0], c = patch->weight->sizes[0];
    dr_tensor *p = NULL, *tok = NULL, *cls_b = NULL, *cat = NULL;
    dr_status st = nn_conv_forward(patch, x, &p);
    if (st == DR_OK) st = nn_to_tokens(p, &tok);
    dr_tensor_release(p);
    if (st == DR_OK) st = dr_tensor_expand(cls, (int64_t[]){bsz, 1, c}, 3, &cls_b);
    if (st == DR_OK) st = dr_cat((const dr_tensor *[]){cls_b, tok}, 2, 1, &cat);
    dr_tensor_release(cls_b);
    dr_tensor_release(tok);
    if (st == DR_OK) st = dr_add(cat, pos, 1.0, out);
    dr_tensor_release(cat);
    return st;
}

dr_status nn_score_mlp_widths(const dr_model *m, const dr_json *cfg, const char *key, int64_t *widths) {
    static const int64_t official[NN_SCORE_MLP_LAYERS - 1] = {1024, 128, 64, 16};
    const dr_json *w = dr_json_get(cfg, key);
    if (!w || w->type == DR_JSON_NULL) {
        memcpy(widths, official, sizeof official);
        return DR_OK;
    }
    if (w->type != DR_JSON_ARRAY)
        return dr_fail(DR_ERR_IO, "%s: %s must be a list of 4 integers", m->context, key);
    if (w->len != NN_SCORE_MLP_LAYERS - 1)
        return dr_fail(DR_ERR_IO, "%s: %s has %zu entries, expected 4 (the MLP's hidden widths, 1024, "
                       "128, 64, 16 in ImageReward and the aesthetic predictor)", m->context, key, w->len);
    DR_TRY(dr_cfg_int_list(m, cfg, key, NN_SCORE_MLP_LAYERS - 1, 0, widths));
    for (int i = 0; i < NN_SCORE_MLP_LAYERS - 1; i++)
        if (widths[i] < 1 || widths[i] > (1 << 16))
            return dr_fail(DR_ERR_IO, "%s: config key '%s[]' = %lld is out of range [1, 65536]", m->context,
                           key, (long long)widths[i]);
    return DR_OK;
}

dr_status nn_score_mlp_new(dr_model *m, nn_score_mlp *h, int64_t in, const int64_t *widths,
                           const char *prefix) {
    static const int index[NN_SCORE_MLP_LAYERS] = {0, 2, 4, 6, 7};
    for (int i = 0; i < NN_SCORE_MLP_LAYERS; i++) {
        int64_t out = i < NN_SCORE_MLP_LAYERS - 1 ? widths[i] : 1;
        char name[320];
        snprintf(name, sizeof name, "%s.%d", prefix, index[i]);
        DR_TRY(nn_linear_new(m, &h->layers[i], in, out, true, name));
        in = out;
    }
    return DR_OK;
}

dr_status nn_score_mlp_forward(const nn_score_mlp *h, const dr_tensor *x, dr_tensor **out) {
    dr_tensor *y = (dr_tensor *)x, *t = NULL;
    dr_tensor_retain(y);
    dr_status st = DR_OK;
    for (int i = 0; i < NN_SCORE_MLP_LAYERS && st == DR_OK; i++) {
        st = nn_linear_forward(&h->layers[i], y, &t);
        if (st == DR_OK) dr_swap(&y, t), t = NULL;
    }
    if (st == DR_OK) st = dr_tensor_reshape(y, (int64_t[]){y->sizes[0]}, 1, out);
    dr_tensor_release(y);
    return st;
}

dr_status nn_scale(const dr_tensor *x, double s, dr_tensor **out) {
    dr_tensor *f = NULL;
    DR_TRY(dr_tensor_full(NULL, 0, DR_F32, x->device, s, &f));
    dr_status st = dr_mul(x, f, out);
    dr_tensor_release(f);
    return st;
}

/* ---- Attention ---------------------------------------------------------------------- */
dr_status nn_attention_new(dr_model *m, nn_attention *a, int64_t query_dim, int64_t context_dim,
                           int64_t heads, int64_t dim_head, bool qkv_bias, const char *name) {
    char sub[512];
    int64_t inner = heads * dim_head;
    if (context_dim <= 0) context_dim = query_dim;
    a->heads = heads;
    a->dim_head = dim_head;
    snprintf(sub, sizeof sub, "%s.to_q", name);
    DR_TRY(nn_linear_new(m, &a->to_q, query_dim, inner, qkv_bias, sub));
    DR_TRY(nn_lora_target(m, &a->to_q, sub));
    snprintf(sub, sizeof sub, "%s.to_k", name);
    DR_TRY(nn_linear_new(m, &a->to_k, context_dim, inner, qkv_bias, sub));
    DR_TRY(nn_lora_target(m, &a->to_k, sub));
    snprintf(sub, sizeof sub, "%s.to_v", name);
    DR_TRY(nn_linear_new(m, &a->to_v, context_dim, inner, qkv_bias, sub));
    DR_TRY(nn_lora_target(m, &a->to_v, sub));
    snprintf(sub, sizeof sub, "%s.to_out.0", name);
    DR_TRY(nn_linear_new(m, &a->to_out, inner, query_dim, true, sub));
    return nn_lora_target(m, &a->to_out, sub);
}

/* [B, L, heads * d] -> a [B, heads, L, d] view */
static dr_status split_heads(const dr_tensor *x, int64_t heads, dr_tensor **out) {
    dr_tensor *v = NULL;
    int64_t s[4] = {x->sizes[0], x->sizes[1], heads, x->sizes[2] / heads};
    DR_TRY(dr_tensor_view(x, s, 4, &v));
    dr_status st = dr_tensor_permute(v, (int32_t[]){0, 2, 1, 3}, 4, out);
    dr_tensor_release(v);
    return st;
}

static dr_status heads_attention(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                 int64_t heads, const dr_tensor *mask, int is_causal, double scale,
                                 dr_tensor **out) {
    *out = NULL;
    dr_tensor *h[3] = {0}, *o = NULL, *t = NULL;
    const dr_tensor *in[3] = {q, k, v};
    dr_status st = DR_OK;
    for (int i = 0; i < 3 && st == DR_OK; i++) st = split_heads(in[i], heads, &h[i]);
    if (st == DR_OK) st = dr_scaled_dot_product_attention(h[0], h[1], h[2], mask, is_causal, scale, &o);
    for (int i = 0; i < 3; i++) dr_tensor_release(h[i]);
    if (st == DR_OK) st = dr_tensor_permute(o, (int32_t[]){0, 2, 1, 3}, 4, &t);
    dr_tensor_release(o);
    if (st == DR_OK) st = dr_tensor_reshape(t, (int64_t[]){q->sizes[0], q->sizes[1], q->sizes[2]}, 3, out);
    dr_tensor_release(t);
    return st;
}

dr_status nn_heads_attention(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                             int64_t heads, int is_causal, double scale, dr_tensor **out) {
    return heads_attention(q, k, v, heads, NULL, is_causal, scale, out);
}

dr_status nn_heads_attention_masked(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                    int64_t heads, const dr_tensor *mask, double scale,
                                    dr_tensor **out) {
    return heads_attention(q, k, v, heads, mask, 0, scale, out);
}

dr_status nn_attention_forward(const nn_attention *a, const dr_tensor *x, const dr_tensor *context,
                               dr_tensor **out) {
    *out = NULL;
    if (!context) context = x;
    if (x->ndim != 3 || context->ndim != 3 || x->sizes[0] != context->sizes[0])
        return dr_fail(DR_ERR_SHAPE, "attention: expects x [B, L, C] and context [B, Lk, Ck], got %s and %s",
                       dr_shape_str(x), dr_shape_str(context));
    dr_tensor *q = NULL, *k = NULL, *v = NULL, *o = NULL;
    dr_status st = nn_linear_forward(&a->to_q, x, &q);
    if (st == DR_OK) st = nn_linear_forward(&a->to_k, context, &k);
    if (st == DR_OK) st = nn_linear_forward(&a->to_v, context, &v);
    if (st == DR_OK) st = nn_heads_attention(q, k, v, a->heads, 0, 0.0, &o);
    dr_tensor_release(q);
    dr_tensor_release(k);
    dr_tensor_release(v);
    if (st == DR_OK) st = nn_linear_forward(&a->to_out, o, out);
    dr_tensor_release(o);
    return st;
}

/* ---- ResnetBlock2D ------------------------------------------------------------------ */
dr_status nn_resnet_new(dr_model *m, nn_resnet *r, int64_t in, int64_t out, int64_t temb_channels,
                        int64_t groups, double eps, double out_scale, const char *name) {
    char sub[512];
    memset(r, 0, sizeof *r);
    r->out_scale = out_scale;
    snprintf(sub, sizeof sub, "%s.norm1", name);
    DR_TRY(nn_group_norm_new(m, &r->norm1, groups, in, eps, sub));
    snprintf(sub, sizeof sub, "%s.conv1", name);
    DR_TRY(nn_conv_new(m, &r->conv1, in, out, 3, 1, 1, sub));
    if (temb_channels > 0) {
        r->has_temb = true;
        snprintf(sub, sizeof sub, "%s.time_emb_proj", name);
        DR_TRY(nn_linear_new(m, &r->temb, temb_channels, out, true, sub));
    }
    snprintf(sub, sizeof sub, "%s.norm2", name);
    DR_TRY(nn_group_norm_new(m, &r->norm2, groups, out, eps, sub));
    snprintf(sub, sizeof sub, "%s.conv2", name);
    DR_TRY(nn_conv_new(m, &r->conv2, out, out, 3, 1, 1, sub));
    if (in != out) {
        r->has_shortcut = true;
        snprintf(sub, sizeof sub, "%s.conv_shortcut", name);
        DR_TRY(nn_conv_new(m, &r->shortcut, in, out, 1, 1, 0, sub));
    }
    return DR_OK;
}

/* silu(norm(x)) */
static dr_status norm_silu(const nn_norm *n, const dr_tensor *x, dr_tensor **out) {
    dr_tensor *h = NULL;
    DR_TRY(nn_norm_forward(n, x, &h));
    dr_status st = dr_silu(h, out);
    dr_tensor_release(h);
    return st;
}

dr_status nn_resnet_forward(const nn_resnet *r, const dr_tensor *x, const dr_tensor *temb_act,
                            dr_tensor **out) {
    *out = NULL;
    dr_tensor *h = NULL, *t = NULL, *e = NULL, *skip = NULL;
    dr_status st = norm_silu(&r->norm1, x, &h);
    if (st == DR_OK) st = nn_conv_forward(&r->conv1, h, &t);
    if (st == DR_OK) dr_swap(&h, t), t = NULL;
    if (st == DR_OK && r->has_temb) {
        if (!temb_act) {
            st = dr_fail(DR_ERR_ARG, "resnet: this block needs a time embedding");
        } else {
            st = nn_linear_forward(&r->temb, temb_act, &e);
            if (st == DR_OK) {
                int64_t s[4] = {e->sizes[0], e->sizes[1], 1, 1};
                st = dr_tensor_view(e, s, 4, &t);
                if (st == DR_OK) dr_swap(&e, t), t = NULL;
            }
            if (st == DR_OK) st = dr_add(h, e, 1.0, &t);
            if (st == DR_OK) dr_swap(&h, t), t = NULL;
            dr_drop(&e);
        }
    }
    if (st == DR_OK) st = norm_silu(&r->norm2, h, &t);
    if (st == DR_OK) dr_swap(&h, t), t = NULL;
    if (st == DR_OK) st = nn_conv_forward(&r->conv2, h, &t);
    if (st == DR_OK) dr_swap(&h, t), t = NULL;
    if (st == DR_OK && r->has_shortcut) st = nn_conv_forward(&r->shortcut, x, &skip);
    if (st == DR_OK) st = dr_add(skip ? skip : x, h, 1.0, &t);
    dr_drop(&skip);
    if (st == DR_OK) dr_swap(&h, t), t = NULL;
    if (st == DR_OK && r->out_scale != 1.0) {
        st = nn_scale(h, 1.0 / r->out_scale, &t);
        if (st == DR_OK) dr_swap(&h, t), t = NULL;
    }
    if (st != DR_OK) {
        dr_tensor_release(h);
        return st;
    }
    *out = h;
    return DR_OK;
}

/* ---- Transformer2DModel ---------------------------------------------------------------- */
static dr_status block_new(dr_model *m, nn_transformer_block *b, int64_t dim, int64_t heads,
                           int64_t dim_head, int64_t cross_dim, const char *name) {
    char sub[600]; /* name (< 512, from nn_transformer_new) + a suffix */
    snprintf(sub, sizeof sub, "%s.norm1", name);
    DR_TRY(nn_layer_norm_new(m, &b->norm1, dim, 1e-5, sub));
    snprintf(sub, sizeof sub, "%s.attn1", name);
    DR_TRY(nn_attention_new(m, &b->attn1, dim, 0, heads, dim_head, false, sub));
    snprintf(sub, sizeof sub, "%s.norm2", name);
    DR_TRY(nn_layer_norm_new(m, &b->norm2, dim, 1e-5, sub));
    snprintf(sub, sizeof sub, "%s.attn2", name);
    DR_TRY(nn_attention_new(m, &b->attn2, dim, cross_dim, heads, dim_head, false, sub));
    snprintf(sub, sizeof sub, "%s.norm3", name);
    DR_TRY(nn_layer_norm_new(m, &b->norm3, dim, 1e-5, sub));
    snprintf(sub, sizeof sub, "%s.ff.net.0.proj", name);
    DR_TRY(nn_linear_new(m, &b->ff_in, dim, 2 * 4 * dim, true, sub));
    snprintf(sub, sizeof sub, "%s.ff.net.2", name);
    return nn_linear_new(m, &b->ff_out, 4 * dim, dim, true, sub);
}

/* x + f(norm(x)) for the three sublayers of a block */
typedef enum { SUB_SELF, SUB_CROSS, SUB_FF } sublayer;

static dr_status geglu_ff(const nn_transformer_block *b, const dr_tensor *x, dr_tensor **out) {
    dr_tensor *p = NULL, *a = NULL, *g = NULL, *gg = NULL, *h = NULL;
    DR_TRY(nn_linear_forward(&b->ff_in, x, &p));
    int64_t n = p->sizes[p->ndim - 1] / 2;
    dr_status st = dr_tensor_narrow(p, -1, 0, n, &a);
    if (st == DR_OK) st = dr_tensor_narrow(p, -1, n, n, &g);
    if (st == DR_OK) st = dr_gelu(g, 0, &gg);
    if (st == DR_OK) st = dr_mul(a, gg, &h);
    dr_tensor_release(p);
    dr_tensor_release(a);
    dr_tensor_release(g);
    dr_tensor_release(gg);
    if (st == DR_OK) st = nn_linear_forward(&b->ff_out, h, out);
    dr_tensor_release(h);
    return st;
}

static dr_status sublayer_forward(const nn_transformer_block *b, sublayer which, const dr_tensor *x,
                                  const dr_tensor *context, dr_tensor **out) {
    const nn_norm *norm = which == SUB_SELF ? &b->norm1 : which == SUB_CROSS ? &b->norm2 : &b->norm3;
    dr_tensor *n = NULL, *f = NULL;
    DR_TRY(nn_norm_forward(norm, x, &n));
    dr_status st = which == SUB_SELF    ? nn_attention_forward(&b->attn1, n, NULL, &f)
                   : which == SUB_CROSS ? nn_attention_forward(&b->attn2, n, context, &f)
                                        : geglu_ff(b, n, &f);
    dr_tensor_release(n);
    if (st == DR_OK) st = dr_add(f, x, 1.0, out);
    dr_tensor_release(f);
    return st;
}

static dr_status block_forward(const nn_transformer_block *b, const dr_tensor *x,
                               const dr_tensor *context, dr_tensor **out) {
    dr_tensor *h = NULL, *t = NULL;
    DR_TRY(sublayer_forward(b, SUB_SELF, x, NULL, &h));
    dr_status st = sublayer_forward(b, SUB_CROSS, h, context, &t);
    if (st == DR_OK) dr_swap(&h, t), t = NULL;
    if (st == DR_OK) st = sublayer_forward(b, SUB_FF, h, NULL, &t);
    dr_tensor_release(h);
    *out = st == DR_OK ? t : NULL;
    return st;
}

dr_status nn_transformer_new(dr_model *m, nn_transformer *t, int64_t channels, int64_t heads,
                             int64_t dim_head, int64_t cross_dim, int64_t groups, int64_t layers,
                             bool linear_proj, const char *name) {
    char sub[512];
    memset(t, 0, sizeof *t);
    int64_t inner = heads * dim_head;
    t->linear_proj = linear_proj;
    snprintf(sub, sizeof sub, "%s.norm", name);
    DR_TRY(nn_group_norm_new(m, &t->norm, groups, channels, 1e-6, sub));
    snprintf(sub, sizeof sub, "%s.proj_in", name);
    if (linear_proj)
        DR_TRY(nn_linear_new(m, &t->proj_in_l, channels, inner, true, sub));
    else
        DR_TRY(nn_conv_new(m, &t->proj_in_c, channels, inner, 1, 1, 0, sub));
    t->blocks = calloc((size_t)layers, sizeof *t->blocks);
    if (!t->blocks) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    t->nblocks = layers;
    for (int64_t i = 0; i < layers; i++) {
        snprintf(sub, sizeof sub, "%s.transformer_blocks.%lld", name, (long long)i);
        DR_TRY(block_new(m, &t->blocks[i], inner, heads, dim_head, cross_dim, sub));
    }
    snprintf(sub, sizeof sub, "%s.proj_out", name);
    if (linear_proj) return nn_linear_new(m, &t->proj_out_l, inner, channels, true, sub);
    return nn_conv_new(m, &t->proj_out_c, inner, channels, 1, 1, 0, sub);
}

void nn_transformer_free(nn_transformer *t) {
    free(t->blocks);
    t->blocks = NULL;
}

dr_status nn_to_tokens(const dr_tensor *x, dr_tensor **out) {
    dr_tensor *p = NULL;
    DR_TRY(dr_tensor_permute(x, (int32_t[]){0, 2, 3, 1}, 4, &p));
    dr_status st = dr_tensor_reshape(p, (int64_t[]){x->sizes[0], x->sizes[2] * x->sizes[3], x->sizes[1]},
                                     3, out);
    dr_tensor_release(p);
    return st;
}

dr_status nn_to_image(const dr_tensor *x, int64_t h, int64_t w, dr_tensor **out) {
    dr_tensor *v = NULL, *p = NULL;
    DR_TRY(dr_tensor_view(x, (int64_t[]){x->sizes[0], h, w, x->sizes[2]}, 4, &v));
    dr_status st = dr_tensor_permute(v, (int32_t[]){0, 3, 1, 2}, 4, &p);
    dr_tensor_release(v);
    if (st == DR_OK) st = dr_tensor_contiguous(p, out);
    dr_tensor_release(p);
    return st;
}

dr_status nn_transformer_forward(const nn_transformer *t, const dr_tensor *x,
                                 const dr_tensor *context, dr_tensor **out) {
    *out = NULL;
    if (x->ndim != 4) return dr_fail(DR_ERR_SHAPE, "transformer: expects x [B, C, H, W], got %s", dr_shape_str(x));
    int64_t h = x->sizes[2], w = x->sizes[3];
    dr_tensor *a = NULL, *b = NULL;
    dr_status st = nn_norm_forward(&t->norm, x, &a);
    if (st == DR_OK) {
        if (t->linear_proj) {
            st = nn_to_tokens(a, &b);
            if (st == DR_OK) dr_swap(&a, b), b = NULL, st = nn_linear_forward(&t->proj_in_l, a, &b);
        } else {
            st = nn_conv_forward(&t->proj_in_c, a, &b);
            if (st == DR_OK) dr_swap(&a, b), b = NULL, st = nn_to_tokens(a, &b);
        }
        if (st == DR_OK) dr_swap(&a, b), b = NULL;
    }
    for (int64_t i = 0; i < t->nblocks && st == DR_OK; i++) {
        st = block_forward(&t->blocks[i], a, context, &b);
        if (st == DR_OK) dr_swap(&a, b), b = NULL;
    }
    if (st == DR_OK) {
        if (t->linear_proj) {
            st = nn_linear_forward(&t->proj_out_l, a, &b);
            if (st == DR_OK) dr_swap(&a, b), b = NULL, st = nn_to_image(a, h, w, &b);
        } else {
            st = nn_to_image(a, h, w, &b);
            if (st == DR_OK) dr_swap(&a, b), b = NULL, st = nn_conv_forward(&t->proj_out_c, a, &b);
        }
        if (st == DR_OK) dr_swap(&a, b), b = NULL;
    }
    if (st == DR_OK) st = dr_add(a, x, 1.0, out);
    dr_tensor_release(a);
    return st;
}

/* ---- gradient checkpointing ------------------------------------------------------------ */
typedef struct ckpt_ctx {
    nn_block_fn fn;
    const void *block;
    int32_t n;
    dr_tensor *inputs[DR_NODE_MAX_INPUTS];
} ckpt_ctx;

static void ckpt_release(void *p) {
    ckpt_ctx *c = p;
    for (int32_t i = 0; i < c->n; i++) dr_tensor_release(c->inputs[i]);
    free(c);
}

static int ckpt_backward(void *p, const dr_tensor *grad, dr_tensor **grads) {
    ckpt_ctx *c = p;
    dr_tensor *det[DR_NODE_MAX_INPUTS] = {0}, *out = NULL;
    dr_status st = DR_OK;
    for (int32_t i = 0; i < c->n && st == DR_OK; i++) {
        st = dr_tensor_detach(c->inputs[i], &det[i]);
        if (st == DR_OK && dr_tensor_requires_grad(c->inputs[i]))
            st = dr_tensor_set_requires_grad(det[i], 1);
    }
    int was = dr_is_grad_enabled();
    dr_set_grad_enabled(1);
    if (st == DR_OK) st = c->fn(c->block, (const dr_tensor *const *)det, &out);
    /* a block without trainable parameters, reached only through the placeholder */
    if (st == DR_OK && dr_tensor_requires_grad(out)) st = dr_backward(out, grad, 0);
    dr_set_grad_enabled(was);
    dr_tensor_release(out);
    for (int32_t i = 0; i < c->n; i++) {
        if (st == DR_OK && dr_tensor_requires_grad(c->inputs[i])) st = dr_tensor_get_grad(det[i], &grads[i]);
        dr_tensor_release(det[i]);
    }
    return st;
}

dr_status nn_checkpoint(int mode, nn_block_fn fn, const void *block,
                        const dr_tensor *const *inputs, int32_t ninputs, dr_tensor **out) {
    *out = NULL;
    bool any = false;
    for (int32_t i = 0; i < ninputs; i++) any = any || dr_tensor_requires_grad(inputs[i]);
    if (mode == 0 || (mode == 1 && !any) || !dr_is_grad_enabled() || ninputs >= DR_NODE_MAX_INPUTS)
        return fn(block, inputs, out);
    ckpt_ctx *c = calloc(1, sizeof *c);
    if (!c) return dr_fail(DR_ERR_OOM, "checkpoint: out of memory");
    c->fn = fn;
    c->block = block;
    c->n = ninputs;
    for (int32_t i = 0; i < ninputs; i++) {
        c->inputs[i] = (dr_tensor *)inputs[i];
        dr_tensor_retain(c->inputs[i]);
    }
    /* the node's inputs: the block's, or a placeholder leaf (its gradient is
     * never written) when none of them is on the tape */
    const dr_tensor *edges[DR_NODE_MAX_INPUTS];
    int32_t nedges = ninputs;
    dr_tensor *anchor = NULL;
    for (int32_t i = 0; i < ninputs; i++) edges[i] = inputs[i];
    dr_status st = DR_OK;
    if (!any) {
        st = dr_tensor_full(NULL, 0, DR_F32, inputs[0]->device, 0.0, &anchor);
        if (st == DR_OK) st = dr_tensor_set_requires_grad(anchor, 1);
        edges[nedges++] = anchor;
    }
    if (st == DR_OK) {
        dr_set_grad_enabled(0);
        st = fn(block, inputs, out);
        dr_set_grad_enabled(1);
    }
    if (st == DR_OK) {
        st = dr_autograd_custom(*out, "checkpoint", edges, nedges, ckpt_backward, c, ckpt_release);
        if (st != DR_OK) ckpt_release(c); /* on failure it leaves ctx to the caller */
    } else {
        ckpt_release(c);
    }
    if (st != DR_OK) dr_drop(out);
    dr_tensor_release(anchor);
    return st;
}
