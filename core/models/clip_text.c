/* CLIPTextModel (transformers src/transformers/models/clip/modeling_clip.py, 5.24.0):
 * the text tower of SD 1.x (CLIP ViT-L/14) and SD 2.x (OpenCLIP ViT-H/14, converted).
 *
 *   h_0  = token_embedding(ids) + position_embedding(0 .. L-1)
 *   h_l  = x + mlp(layer_norm2(x)),  x = h_{l-1} + self_attn(layer_norm1(h_{l-1}))
 *          self_attn: q, k, v = q_proj, k_proj, v_proj (with bias) split into heads,
 *          sdpa(q, k, v, is_causal, scale = head_dim^-0.5), out_proj
 *          mlp: fc2(act(fc1(x))), act = hidden_act
 *   last = final_layer_norm(h_N);  pooled = last[b, eos position of row b]
 *   eos position: eos_token_id == 2 (configs from before transformers PR #24773, such
 *   as SD's): argmax(ids[b]) (the first maximum); otherwise the first position where
 *   ids[b] == eos_token_id (0 when there is none, as argmax of all zeros).
 * clip_skip (diffusers' encode_prompt): final_layer_norm(hidden_states[-(k + 1)]) with
 * hidden_states = (h_0, ..., h_N); pooled still comes from h_N.
 *
 * Parameter names are the published SD checkpoints' keys ("text_model.encoder.layers.0.
 * self_attn.q_proj.weight", transformers 4.x), registered in transformers' module order
 * (k_proj, v_proj, q_proj, out_proj, layer_norm1, fc1, fc2, layer_norm2). transformers 5
 * saves the same keys without "text_model." (the loader maps those; see model.c).
 * position_ids is a non-persistent buffer, not a parameter (nor counted).
 * The encoder layer (clip_layer_new / clip_layer_forward) is shared with the vision
 * tower (clip_vision.c), which runs it without the causal mask.
 * No attention_mask: SD pipelines never pass one to the text encoder (padding tokens
 * are attended, only the causal mask applies), so neither does this forward. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip.h"
#include "../tensor/tensor_internal.h"

static const struct { const char *name; clip_act act; } acts[] = {
    {"quick_gelu", CLIP_QUICK_GELU}, {"gelu", CLIP_GELU},   {"gelu_new", CLIP_GELU_TANH},
    {"gelu_pytorch_tanh", CLIP_GELU_TANH}, {"gelu_fast", CLIP_GELU_TANH},
    {"relu", CLIP_RELU},             {"silu", CLIP_SILU},   {"swish", CLIP_SILU},
};

/* transformers' CLIPPreTrainedModel._init_weights instead of torch.nn's defaults:
 * linear weights N(0, std), biases zero (PreTrainedModel._init_weights). */
static dr_status linear_new(dr_model *m, nn_linear *l, int64_t in, int64_t out, double std,
                            bool lora, const char *fmt_prefix, const char *sub) {
    char name[512];
    snprintf(name, sizeof name, "%s.%s", fmt_prefix, sub);
    DR_TRY(nn_linear_new(m, l, in, out, true, name));
    dr_model_param_set_init(m, l->weight, DR_INIT_NORMAL, std);
    dr_model_param_set_init(m, l->bias, DR_INIT_ZERO, 0.0);
    return lora ? nn_lora_target(m, l, name) : DR_OK;
}

dr_status clip_layer_new(dr_model *m, clip_layer *y, const clip_encoder_config *c, int64_t i,
                         const char *prefix, bool lora, int causal) {
    char pre[320], sub[400];
    int64_t dim = c->hidden;
    snprintf(pre, sizeof pre, "%s.encoder.layers.%lld", prefix, (long long)i);
    double in_std = pow((double)dim, -0.5) * pow(2.0 * (double)c->layers, -0.5) * c->factor;
    double out_std = pow((double)dim, -0.5) * c->factor;
    double fc_std = pow(2.0 * (double)dim, -0.5) * c->factor;
    y->heads = c->heads;
    y->scale = pow((double)(dim / c->heads), -0.5);
    y->act = c->act;
    y->causal = causal;
    snprintf(sub, sizeof sub, "%s.self_attn", pre);
    DR_TRY(linear_new(m, &y->k, dim, dim, in_std, lora, sub, "k_proj"));
    DR_TRY(linear_new(m, &y->v, dim, dim, in_std, lora, sub, "v_proj"));
    DR_TRY(linear_new(m, &y->q, dim, dim, in_std, lora, sub, "q_proj"));
    DR_TRY(linear_new(m, &y->out, dim, dim, out_std, lora, sub, "out_proj"));
    snprintf(sub, sizeof sub, "%s.layer_norm1", pre);
    DR_TRY(nn_layer_norm_new(m, &y->ln1, dim, c->eps, sub));
    snprintf(sub, sizeof sub, "%s.mlp", pre);
    DR_TRY(linear_new(m, &y->fc1, dim, c->inter, fc_std, false, sub, "fc1"));
    DR_TRY(linear_new(m, &y->fc2, c->inter, dim, in_std, false, sub, "fc2"));
    snprintf(sub, sizeof sub, "%s.layer_norm2", pre);
    return nn_layer_norm_new(m, &y->ln2, dim, c->eps, sub);
}

/* Dropout is an error unless 0: SD's text encoders are configured without it, and a
 * training run would otherwise silently differ from transformers in train mode. */
dr_status clip_check_zero(const dr_model *m, const dr_json *cfg, const char *key) {
    double p;
    DR_TRY(dr_cfg_num(m, cfg, key, 0.0, &p));
    if (p != 0.0)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: config key '%s' = %g is not supported (only 0)",
                       m->context, key, p);
    return DR_OK;
}

dr_status clip_encoder_config_read(const dr_model *m, const dr_json *cfg, const int64_t *defaults,
                                   clip_encoder_config *out) {
    const char *act_name = NULL;
    DR_TRY(clip_check_zero(m, cfg, "dropout"));
    DR_TRY(clip_check_zero(m, cfg, "attention_dropout"));
    DR_TRY(dr_cfg_int(m, cfg, "hidden_size", defaults[0], &out->hidden));
    DR_TRY(dr_cfg_int(m, cfg, "intermediate_size", defaults[1], &out->inter));
    DR_TRY(dr_cfg_int(m, cfg, "num_hidden_layers", defaults[2], &out->layers));
    DR_TRY(dr_cfg_int(m, cfg, "num_attention_heads", defaults[3], &out->heads));
    DR_TRY(dr_cfg_num(m, cfg, "layer_norm_eps", 1e-5, &out->eps));
    DR_TRY(dr_cfg_num(m, cfg, "initializer_factor", 1.0, &out->factor));
    DR_TRY(dr_cfg_str(m, cfg, "hidden_act", "quick_gelu", &act_name));
    DR_TRY(dr_cfg_range(m, "hidden_size", out->hidden, 1, 1 << 16));
    DR_TRY(dr_cfg_range(m, "intermediate_size", out->inter, 1, 1 << 18));
    DR_TRY(dr_cfg_range(m, "num_hidden_layers", out->layers, 1, 1024));
    DR_TRY(dr_cfg_range(m, "num_attention_heads", out->heads, 1, out->hidden));
    if (out->hidden % out->heads != 0)
        return dr_fail(DR_ERR_IO, "%s: hidden_size %lld does not split into %lld attention heads "
                       "(num_attention_heads)", m->context, (long long)out->hidden, (long long)out->heads);
    if (!(out->eps > 0))
        return dr_fail(DR_ERR_IO, "%s: config key 'layer_norm_eps' = %g must be positive", m->context, out->eps);
    for (size_t i = 0; i < sizeof acts / sizeof *acts; i++)
        if (strcmp(act_name, acts[i].name) == 0) {
            out->act = acts[i].act;
            return DR_OK;
        }
    return dr_fail(DR_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported (quick_gelu, gelu, "
                   "gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu)", m->context, act_name);
}

dr_status clip_text_new(dr_model *m, clip_text *c, const dr_json *cfg) {
    static const int64_t defaults[4] = {512, 2048, 12, 8};
    clip_encoder_config ec;
    DR_TRY(clip_encoder_config_read(m, cfg, defaults, &ec));
    c->hidden = ec.hidden;
    c->nlayers = ec.layers;
    DR_TRY(dr_cfg_int(m, cfg, "vocab_size", 49408, &c->vocab));
    DR_TRY(dr_cfg_int(m, cfg, "max_position_embeddings", 77, &c->max_pos));
    DR_TRY(dr_cfg_int(m, cfg, "eos_token_id", 49407, &c->eos));
    DR_TRY(dr_cfg_range(m, "vocab_size", c->vocab, 1, (int64_t)1 << 31));
    DR_TRY(dr_cfg_range(m, "max_position_embeddings", c->max_pos, 1, 1 << 20));

    DR_TRY(dr_model_param_new(m, &c->token_emb, DR_INIT_NORMAL, 0.02 * ec.factor,
                              (int64_t[]){c->vocab, c->hidden}, 2, "text_model.embeddings.token_embedding.weight"));
    DR_TRY(dr_model_param_new(m, &c->pos_emb, DR_INIT_NORMAL, 0.02 * ec.factor,
                              (int64_t[]){c->max_pos, c->hidden}, 2,
                              "text_model.embeddings.position_embedding.weight"));
    c->layers = calloc((size_t)c->nlayers, sizeof *c->layers);
    if (!c->layers) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    for (int64_t i = 0; i < c->nlayers; i++)
        DR_TRY(clip_layer_new(m, &c->layers[i], &ec, i, "text_model", true, 1));
    return nn_layer_norm_new(m, &c->final_ln, c->hidden, ec.eps, "text_model.final_layer_norm");
}

void clip_text_free(clip_text *c) {
    free(c->layers);
    c->layers = NULL;
}

static void clip_text_impl_free(void *p) {
    if (!p) return;
    clip_text_free(p);
    free(p);
}

dr_status dr_clip_text_build(dr_model *m, const dr_json *cfg) {
    /* CLIPTextModelWithProjection (SDXL's second encoder) has a text_projection on top,
     * and a full CLIPConfig nests the text config: neither is this class. */
    const dr_json *arch = dr_json_get(cfg, "architectures");
    if (arch && arch->type == DR_JSON_ARRAY && arch->len > 0 && arch->u.items[0].type == DR_JSON_STRING &&
        strcmp(arch->u.items[0].u.s, "CLIPTextModel") != 0)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: architectures '%s' is not supported (CLIPTextModel)",
                       m->context, arch->u.items[0].u.s);
    DR_TRY(dr_cfg_require_default(m, cfg, "model_type", "clip_text_model"));
    clip_text *c = calloc(1, sizeof *c);
    if (!c) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    m->impl = c;
    m->impl_free = clip_text_impl_free;
    return clip_text_new(m, c, cfg);
}

/* ---- forward ------------------------------------------------------------------------ */
/* CLIPAttention with the causal mask (sdpa is_causal: Lq == Lk, so top-left aligned
 * is the usual lower triangle). */
static dr_status self_attn(const clip_layer *y, const dr_tensor *x, dr_tensor **out) {
    dr_tensor *q = NULL, *k = NULL, *v = NULL, *o = NULL;
    dr_status st = nn_linear_forward(&y->q, x, &q);
    if (st == DR_OK) st = nn_linear_forward(&y->k, x, &k);
    if (st == DR_OK) st = nn_linear_forward(&y->v, x, &v);
    if (st == DR_OK) st = nn_heads_attention(q, k, v, y->heads, y->causal, y->scale, &o);
    dr_tensor_release(q);
    dr_tensor_release(k);
    dr_tensor_release(v);
    if (st == DR_OK) st = nn_linear_forward(&y->out, o, out);
    dr_tensor_release(o);
    return st;
}

static dr_status activation(clip_act act, const dr_tensor *x, dr_tensor **out) {
    switch (act) {
    case CLIP_QUICK_GELU: return dr_quick_gelu(x, out);
    case CLIP_GELU: return dr_gelu(x, 0, out);
    case CLIP_GELU_TANH: return dr_gelu(x, 1, out);
    case CLIP_RELU: return dr_relu(x, out);
    default: return dr_silu(x, out);
    }
}

static dr_status mlp(const clip_layer *y, const dr_tensor *x, dr_tensor **out) {
    dr_tensor *h = NULL, *t = NULL;
    DR_TRY(nn_linear_forward(&y->fc1, x, &h));
    dr_status st = activation(y->act, h, &t);
    if (st == DR_OK) st = nn_linear_forward(&y->fc2, t, out);
    dr_tensor_release(h);
    dr_tensor_release(t);
    return st;
}

/* x + f(norm(x)), f = self_attn or mlp */
static dr_status residual(const clip_layer *y, const nn_norm *norm,
                          dr_status (*f)(const clip_layer *, const dr_tensor *, dr_tensor **),
                          const dr_tensor *x, dr_tensor **out) {
    dr_tensor *n = NULL, *h = NULL;
    DR_TRY(nn_norm_forward(norm, x, &n));
    dr_status st = f(y, n, &h);
    dr_tensor_release(n);
    if (st == DR_OK) st = dr_add(x, h, 1.0, out);
    dr_tensor_release(h);
    return st;
}

/* CLIPEncoderLayer; an nn_checkpoint block with inputs {x} */
dr_status clip_layer_forward(const void *block, const dr_tensor *const *in, dr_tensor **out) {
    const clip_layer *y = block;
    dr_tensor *h = NULL;
    DR_TRY(residual(y, &y->ln1, self_attn, in[0], &h));
    dr_status st = residual(y, &y->ln2, mlp, h, out);
    dr_tensor_release(h);
    return st;
}

/* Checks input_ids ([B, L], the caller checked) and reads them: every id must index the token embedding, and
 * pos[b] gets the pooling position of row b (see the top of the file). */
static dr_status read_ids(const clip_text *c, const dr_tensor *ids, int64_t *pos) {
    if (ids->scalar_type != DR_I64)
        return dr_fail(DR_ERR_DTYPE, "clip_text: input_ids must be int64, got %s",
                       dr_dtype_name(ids->scalar_type));
    int64_t b = ids->sizes[0], l = ids->sizes[1];
    if (l > c->max_pos)
        return dr_fail(DR_ERR_SHAPE, "clip_text: input_ids has %lld tokens, more than "
                       "max_position_embeddings (%lld)", (long long)l, (long long)c->max_pos);
    double *v = malloc((size_t)(b * l) * sizeof *v);
    if (!v) return dr_fail(DR_ERR_OOM, "clip_text: out of memory");
    dr_status st = dr_tensor_to_f64(ids, v, b * l);
    for (int64_t r = 0; r < b && st == DR_OK; r++) {
        const double *row = v + r * l;
        int64_t first_eos = -1, argmax = 0;
        for (int64_t j = 0; j < l; j++) {
            if (!(row[j] >= 0 && row[j] < (double)c->vocab)) {
                st = dr_fail(DR_ERR_ARG, "clip_text: token id %.0f (input_ids row %lld, position %lld, "
                             "1-based) is out of range for vocab_size %lld (ids 0 .. %lld)", row[j],
                             (long long)r + 1, (long long)j + 1, (long long)c->vocab, (long long)c->vocab - 1);
                break;
            }
            if (row[j] > row[argmax]) argmax = j;
            if (first_eos < 0 && row[j] == (double)c->eos) first_eos = j;
        }
        pos[r] = c->eos == 2 ? argmax : first_eos < 0 ? 0 : first_eos;
    }
    free(v);
    return st;
}

/* token_embedding(ids) + position_embedding(arange(L)) */
static dr_status embed(const clip_text *c, const dr_tensor *ids, dr_tensor **out) {
    dr_tensor *tok = NULL, *pid = NULL, *pe = NULL;
    dr_status st = dr_embedding(ids, c->token_emb, &tok);
    if (st == DR_OK) st = dr_arange(0.0, (double)ids->sizes[1], 1.0, DR_I64, ids->device, &pid);
    if (st == DR_OK) st = dr_embedding(pid, c->pos_emb, &pe);
    if (st == DR_OK) st = dr_add(tok, pe, 1.0, out);
    dr_tensor_release(tok);
    dr_tensor_release(pid);
    dr_tensor_release(pe);
    return st;
}

/* last[b, pos[b]] for each b: rows of last viewed as [B L, D] */
static dr_status pool(const dr_tensor *last, const int64_t *pos, dr_tensor **out) {
    int64_t b = last->sizes[0], l = last->sizes[1], d = last->sizes[2];
    double *rows = malloc((size_t)b * sizeof *rows);
    if (!rows) return dr_fail(DR_ERR_OOM, "clip_text: out of memory");
    for (int64_t r = 0; r < b; r++) rows[r] = (double)(r * l + pos[r]);
    dr_tensor *idx = NULL, *flat = NULL;
    dr_status st = dr_tensor_from_f64(rows, &b, 1, DR_I64, last->device, &idx);
    free(rows);
    if (st == DR_OK) st = dr_tensor_reshape(last, (int64_t[]){b * l, d}, 2, &flat);
    if (st == DR_OK) st = dr_index_select(flat, 0, idx, out);
    dr_tensor_release(idx);
    dr_tensor_release(flat);
    return st;
}

dr_status dr_clip_text_forward(dr_model *m, const dr_tensor *input_ids, int32_t skip,
                               dr_tensor **hidden, dr_tensor **pooled) {
    const char *op = "clip_text_forward";
    if (hidden) *hidden = NULL;
    if (pooled) *pooled = NULL;
    DR_TRY(dr_model_check(m, "clip_text", op));
    return clip_text_run(m, m->impl, input_ids, skip, hidden, pooled);
}

dr_status clip_text_run(const dr_model *m, const clip_text *c, const dr_tensor *input_ids, int32_t skip,
                        dr_tensor **hidden, dr_tensor **pooled) {
    const char *op = "clip_text_forward";
    DR_TRY(dr_check_tensor(input_ids, op, "input_ids"));
    if (!hidden && !pooled) return dr_fail(DR_ERR_ARG, "%s: hidden and pooled are both NULL", op);
    if (skip < 0 || skip > c->nlayers)
        return dr_fail(DR_ERR_ARG, "clip_text: skip (clip_skip) must be in [0, %lld] for %lld layers, "
                       "got %d", (long long)c->nlayers, (long long)c->nlayers, skip);
    if (input_ids->ndim != 2 || input_ids->sizes[0] < 1 || input_ids->sizes[1] < 1)
        return dr_fail(DR_ERR_SHAPE, "clip_text: input_ids must be [B, L] with B, L >= 1, got %s",
                       dr_shape_str(input_ids));
    int64_t *pos = malloc((size_t)input_ids->sizes[0] * sizeof *pos);
    if (!pos) return dr_fail(DR_ERR_OOM, "clip_text: out of memory");
    dr_status st = read_ids(c, input_ids, pos);

    /* h_{N - skip} is the hidden output; without pooled the layers above it are not run */
    int64_t keep = c->nlayers - skip, stop = pooled ? c->nlayers : keep;
    dr_tensor *h = NULL, *kept = NULL, *t = NULL, *last = NULL;
    int ckpt = dr_model_checkpoint_mode(m);
    if (st == DR_OK) st = embed(c, input_ids, &h);
    if (st == DR_OK && keep == 0 && hidden) {
        dr_tensor_retain(h);
        kept = h;
    }
    for (int64_t i = 0; i < stop && st == DR_OK; i++) {
        st = nn_checkpoint(ckpt, clip_layer_forward, &c->layers[i], (const dr_tensor *[]){h}, 1, &t);
        if (st == DR_OK) dr_swap(&h, t), t = NULL;
        if (st == DR_OK && i + 1 == keep && keep < c->nlayers && hidden) {
            dr_tensor_retain(h);
            kept = h;
        }
    }
    if (st == DR_OK && pooled) {
        st = nn_norm_forward(&c->final_ln, h, &last);
        if (st == DR_OK) st = pool(last, pos, pooled);
    }
    if (st == DR_OK && hidden) {
        if (skip == 0 && last) {
            *hidden = last;
            last = NULL;
        } else {
            st = nn_norm_forward(&c->final_ln, kept ? kept : h, hidden);
        }
    }
    if (st != DR_OK && pooled) dr_drop(pooled);
    dr_tensor_release(last);
    dr_tensor_release(kept);
    dr_tensor_release(h);
    free(pos);
    return st;
}
