/* BLIP's BertModel (image-reward 1.5, ImageReward/models/BLIP/med.py, from
 * transformers 4.15's BERT) as ImageReward's text encoder uses it: an encoder
 * (is_decoder False) in mode 'multimodal', every layer cross-attending to the
 * image tokens, no pooler (add_pooling_layer=False), eval mode (dropout off):
 *
 *   h_0 = LayerNorm(word_embeddings(ids) + position_embeddings(0 .. L-1))
 *         (med.py has no token_type embeddings)
 *   a   = LN(dense(selfattn(h)) + h)       selfattn: softmax(q k^T / sqrt(d) + M) v
 *         M[b, j] = (1 - attention_mask[b, j]) * -10000 (get_extended_attention_mask)
 *   c   = LN(dense(crossattn(a, img)) + a) q from a, k and v from the image tokens
 *         (key / value: encoder_width -> hidden); encoder_attention_mask is all ones
 *         in ImageReward, so no mask
 *   h_l = LN(output.dense(act(intermediate.dense(c))) + c)
 * LayerNorms use layer_norm_eps (1e-12 in med_config.json); act = hidden_act.
 * Keys: <prefix>.embeddings.*, <prefix>.encoder.layer.<i>.{attention,crossattention}.
 * {self.{query,key,value},output.{dense,LayerNorm}}, .intermediate.dense,
 * .output.{dense,LayerNorm}. embeddings.position_ids is a buffer (the loader skips it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blip.h"
#include "../tensor/tensor_internal.h"

/* BertPreTrainedModel._init_weights: N(0, initializer_range) weights, zero biases */
static dr_status linear(dr_model *m, nn_linear *l, int64_t in, int64_t out, double std,
                        const char *prefix, const char *sub) {
    char name[600];
    snprintf(name, sizeof name, "%s.%s", prefix, sub);
    DR_TRY(nn_linear_new(m, l, in, out, true, name));
    dr_model_param_set_init(m, l->weight, DR_INIT_NORMAL, std);
    dr_model_param_set_init(m, l->bias, DR_INIT_ZERO, 0.0);
    return DR_OK;
}

static dr_status norm(dr_model *m, nn_norm *n, int64_t dim, double eps, const char *prefix,
                      const char *sub) {
    char name[600];
    snprintf(name, sizeof name, "%s.%s", prefix, sub);
    return nn_layer_norm_new(m, n, dim, eps, name);
}

static dr_status attention_new(dr_model *m, bert_attention *a, const bert *b, int64_t kv_in,
                               double std, const char *prefix) {
    char sub[560];
    snprintf(sub, sizeof sub, "%s.self", prefix);
    DR_TRY(linear(m, &a->query, b->hidden, b->hidden, std, sub, "query"));
    DR_TRY(linear(m, &a->key, kv_in, b->hidden, std, sub, "key"));
    DR_TRY(linear(m, &a->value, kv_in, b->hidden, std, sub, "value"));
    snprintf(sub, sizeof sub, "%s.output", prefix);
    DR_TRY(linear(m, &a->dense, b->hidden, b->hidden, std, sub, "dense"));
    return norm(m, &a->norm, b->hidden, b->eps, sub, "LayerNorm");
}

/* Options of med.py's BertModel that ImageReward's scoring never uses are errors
 * rather than silently different results. */
static dr_status check_config(const dr_model *m, const dr_json *cfg) {
    bool cross, decoder;
    DR_TRY(dr_cfg_require_default(m, cfg, "position_embedding_type", "absolute"));
    DR_TRY(dr_cfg_bool(m, cfg, "add_cross_attention", false, &cross));
    if (!cross)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: med_config: add_cross_attention must be true (ImageReward's "
                       "text encoder cross-attends to the image in every layer)", m->context);
    DR_TRY(dr_cfg_bool(m, cfg, "is_decoder", false, &decoder));
    if (decoder)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: med_config: is_decoder = true is not supported (ImageReward "
                       "runs BertModel as an encoder)", m->context);
    return DR_OK;
}

dr_status bert_new(dr_model *m, bert *b, const dr_json *cfg, int64_t encoder_width, const char *prefix) {
    memset(b, 0, sizeof *b);
    if (!cfg || cfg->type != DR_JSON_OBJECT)
        return dr_fail(DR_ERR_IO, "%s: text_config (med_config.json) must be a JSON object", m->context);
    DR_TRY(check_config(m, cfg));
    const char *act = NULL;
    double std;
    DR_TRY(dr_cfg_int(m, cfg, "vocab_size", 30524, &b->vocab));
    DR_TRY(dr_cfg_int(m, cfg, "hidden_size", 768, &b->hidden));
    DR_TRY(dr_cfg_int(m, cfg, "num_hidden_layers", 12, &b->layers));
    DR_TRY(dr_cfg_int(m, cfg, "num_attention_heads", 12, &b->heads));
    DR_TRY(dr_cfg_int(m, cfg, "intermediate_size", 3072, &b->inter));
    DR_TRY(dr_cfg_int(m, cfg, "max_position_embeddings", 512, &b->max_pos));
    DR_TRY(dr_cfg_num(m, cfg, "layer_norm_eps", 1e-12, &b->eps));
    DR_TRY(dr_cfg_num(m, cfg, "initializer_range", 0.02, &std));
    DR_TRY(dr_cfg_str(m, cfg, "hidden_act", "gelu", &act));
    DR_TRY(dr_cfg_range(m, "text_config.vocab_size", b->vocab, 1, (int64_t)1 << 31));
    DR_TRY(dr_cfg_range(m, "text_config.hidden_size", b->hidden, 1, 1 << 16));
    DR_TRY(dr_cfg_range(m, "text_config.num_hidden_layers", b->layers, 1, 1024));
    DR_TRY(dr_cfg_range(m, "text_config.num_attention_heads", b->heads, 1, b->hidden));
    DR_TRY(dr_cfg_range(m, "text_config.intermediate_size", b->inter, 1, 1 << 18));
    DR_TRY(dr_cfg_range(m, "text_config.max_position_embeddings", b->max_pos, 1, 1 << 20));
    if (b->hidden % b->heads != 0)
        return dr_fail(DR_ERR_IO, "%s: text_config: hidden_size %lld is not a multiple of "
                       "num_attention_heads %lld", m->context, (long long)b->hidden, (long long)b->heads);
    if (!(b->eps > 0))
        return dr_fail(DR_ERR_IO, "%s: text_config: layer_norm_eps %g must be positive", m->context, b->eps);
    if (strcmp(act, "gelu") == 0) b->act = BERT_GELU;
    else if (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0) b->act = BERT_GELU_TANH;
    else if (strcmp(act, "relu") == 0) b->act = BERT_RELU;
    else
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: text_config: hidden_act '%s' is not supported (gelu, "
                       "gelu_new, gelu_pytorch_tanh, relu)", m->context, act);
    b->encoder_width = encoder_width;

    char name[560];
    DR_TRY(dr_model_param_new(m, &b->word_emb, DR_INIT_NORMAL, std, (int64_t[]){b->vocab, b->hidden}, 2,
                              "%s.embeddings.word_embeddings.weight", prefix));
    DR_TRY(dr_model_param_new(m, &b->pos_emb, DR_INIT_NORMAL, std, (int64_t[]){b->max_pos, b->hidden}, 2,
                              "%s.embeddings.position_embeddings.weight", prefix));
    snprintf(name, sizeof name, "%s.embeddings", prefix);
    DR_TRY(norm(m, &b->emb_norm, b->hidden, b->eps, name, "LayerNorm"));
    b->layer = calloc((size_t)b->layers, sizeof *b->layer);
    if (!b->layer) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    for (int64_t i = 0; i < b->layers; i++) {
        bert_layer *y = &b->layer[i];
        char sub[600];
        snprintf(name, sizeof name, "%s.encoder.layer.%lld", prefix, (long long)i);
        snprintf(sub, sizeof sub, "%s.attention", name);
        DR_TRY(attention_new(m, &y->self_attn, b, b->hidden, std, sub));
        snprintf(sub, sizeof sub, "%s.crossattention", name);
        DR_TRY(attention_new(m, &y->cross_attn, b, encoder_width, std, sub));
        DR_TRY(linear(m, &y->inter, b->hidden, b->inter, std, name, "intermediate.dense"));
        DR_TRY(linear(m, &y->out, b->inter, b->hidden, std, name, "output.dense"));
        DR_TRY(norm(m, &y->out_norm, b->hidden, b->eps, name, "output.LayerNorm"));
    }
    return DR_OK;
}

void bert_free(bert *b) {
    free(b->layer);
    b->layer = NULL;
}

/* ---- forward ------------------------------------------------------------------------ */
/* LN(dense(attention(x, context)) + x); context NULL: self-attention with mask */
static dr_status attention_forward(const bert *b, const bert_attention *a, const dr_tensor *x,
                                   const dr_tensor *context, const dr_tensor *mask, dr_tensor **out) {
    const dr_tensor *kv = context ? context : x;
    dr_tensor *q = NULL, *k = NULL, *v = NULL, *o = NULL, *d = NULL, *s = NULL;
    double scale = 1.0 / sqrt((double)(b->hidden / b->heads));
    dr_status st = nn_linear_forward(&a->query, x, &q);
    if (st == DR_OK) st = nn_linear_forward(&a->key, kv, &k);
    if (st == DR_OK) st = nn_linear_forward(&a->value, kv, &v);
    if (st == DR_OK) st = nn_heads_attention_masked(q, k, v, b->heads, context ? NULL : mask, scale, &o);
    dr_tensor_release(q);
    dr_tensor_release(k);
    dr_tensor_release(v);
    if (st == DR_OK) st = nn_linear_forward(&a->dense, o, &d);
    dr_tensor_release(o);
    if (st == DR_OK) st = dr_add(d, x, 1.0, &s);
    dr_tensor_release(d);
    if (st == DR_OK) st = nn_norm_forward(&a->norm, s, out);
    dr_tensor_release(s);
    return st;
}

static dr_status activation(bert_act act, const dr_tensor *x, dr_tensor **out) {
    switch (act) {
    case BERT_GELU: return dr_gelu(x, 0, out);
    case BERT_GELU_TANH: return dr_gelu(x, 1, out);
    default: return dr_relu(x, out);
    }
}

static dr_status layer_forward(const bert *b, const bert_layer *y, const dr_tensor *x,
                               const dr_tensor *mask, const dr_tensor *image, dr_tensor **out) {
    dr_tensor *a = NULL, *c = NULL, *h = NULL, *g = NULL, *f = NULL, *s = NULL;
    dr_status st = attention_forward(b, &y->self_attn, x, NULL, mask, &a);
    if (st == DR_OK) st = attention_forward(b, &y->cross_attn, a, image, NULL, &c);
    dr_tensor_release(a);
    if (st == DR_OK) st = nn_linear_forward(&y->inter, c, &h);
    if (st == DR_OK) st = activation(b->act, h, &g);
    dr_tensor_release(h);
    if (st == DR_OK) st = nn_linear_forward(&y->out, g, &f);
    dr_tensor_release(g);
    if (st == DR_OK) st = dr_add(f, c, 1.0, &s);
    dr_tensor_release(f);
    dr_tensor_release(c);
    if (st == DR_OK) st = nn_norm_forward(&y->out_norm, s, out);
    dr_tensor_release(s);
    return st;
}

/* Checks the ids against the vocabulary and builds the additive mask
 * [B, 1, 1, L] = (1 - attention_mask) * -10000 (NULL when every token is attended). */
static dr_status read_inputs(const bert *b, const dr_tensor *ids, const dr_tensor *mask,
                             dr_device device, dr_tensor **add_mask) {
    *add_mask = NULL;
    if (ids->scalar_type != DR_I64)
        return dr_fail(DR_ERR_DTYPE, "imagereward: input_ids must be int64, got %s", dr_dtype_name(ids->scalar_type));
    int64_t bsz = ids->sizes[0], l = ids->sizes[1];
    if (l > b->max_pos)
        return dr_fail(DR_ERR_SHAPE, "imagereward: input_ids has %lld tokens, more than the text "
                       "encoder's max_position_embeddings (%lld)", (long long)l, (long long)b->max_pos);
    if (mask && (mask->ndim != 2 || mask->sizes[0] != bsz || mask->sizes[1] != l))
        return dr_fail(DR_ERR_SHAPE, "imagereward: attention_mask must have input_ids' shape %s, got %s",
                       dr_shape_str(ids), dr_shape_str(mask));
    double *v = malloc((size_t)(2 * bsz * l) * sizeof *v);
    if (!v) return dr_fail(DR_ERR_OOM, "imagereward: out of memory");
    double *mv = v + bsz * l;
    dr_status st = dr_tensor_to_f64(ids, v, bsz * l);
    if (st == DR_OK && mask) st = dr_tensor_to_f64(mask, mv, bsz * l);
    bool any_masked = false;
    for (int64_t i = 0; i < bsz * l && st == DR_OK; i++) {
        if (!(v[i] >= 0 && v[i] < (double)b->vocab))
            st = dr_fail(DR_ERR_ARG, "imagereward: token id %.0f (input_ids row %lld, position %lld, "
                         "1-based) is out of range for the text encoder's vocab_size %lld", v[i],
                         (long long)(i / l) + 1, (long long)(i % l) + 1, (long long)b->vocab);
        double mk = mask ? mv[i] : 1.0;
        mv[i] = (1.0 - mk) * -10000.0;
        any_masked = any_masked || mv[i] != 0.0;
    }
    if (st == DR_OK && any_masked)
        st = dr_tensor_from_f64(mv, (int64_t[]){bsz, 1, 1, l}, 4, DR_F32, device, add_mask);
    free(v);
    return st;
}

dr_status bert_forward(const bert *b, const dr_tensor *ids, const dr_tensor *mask,
                       const dr_tensor *image, dr_tensor **out) {
    *out = NULL;
    if (ids->ndim != 2 || ids->sizes[0] < 1 || ids->sizes[1] < 1)
        return dr_fail(DR_ERR_SHAPE, "imagereward: input_ids must be [B, L] with B, L >= 1, got %s",
                       dr_shape_str(ids));
    if (image->ndim != 3 || image->sizes[0] != ids->sizes[0] || image->sizes[2] != b->encoder_width)
        return dr_fail(DR_ERR_SHAPE, "imagereward: image tokens %s do not fit input_ids %s (expected "
                       "[%lld, N, %lld])", dr_shape_str(image), dr_shape_str(ids), (long long)ids->sizes[0],
                       (long long)b->encoder_width);
    dr_tensor *add_mask = NULL, *tok = NULL, *pid = NULL, *pe = NULL, *e = NULL, *h = NULL, *t = NULL;
    dr_status st = read_inputs(b, ids, mask, image->device, &add_mask);
    if (st == DR_OK) st = dr_embedding(ids, b->word_emb, &tok);
    if (st == DR_OK) st = dr_arange(0.0, (double)ids->sizes[1], 1.0, DR_I64, image->device, &pid);
    if (st == DR_OK) st = dr_embedding(pid, b->pos_emb, &pe);
    if (st == DR_OK) st = dr_add(tok, pe, 1.0, &e);
    if (st == DR_OK) st = nn_norm_forward(&b->emb_norm, e, &h);
    dr_tensor_release(tok);
    dr_tensor_release(pid);
    dr_tensor_release(pe);
    dr_tensor_release(e);
    for (int64_t i = 0; i < b->layers && st == DR_OK; i++) {
        st = layer_forward(b, &b->layer[i], h, add_mask, image, &t);
        if (st == DR_OK) dr_swap(&h, t), t = NULL;
    }
    dr_tensor_release(add_mask);
    if (st != DR_OK) {
        dr_tensor_release(h);
        return st;
    }
    *out = h;
    return DR_OK;
}
