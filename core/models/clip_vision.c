/* CLIP's vision tower and CLIPModel (transformers src/transformers/models/clip/
 * modeling_clip.py, 5.24.0; Radford et al. 2021), for CLIP score and the LAION
 * aesthetic predictor (PAPER.md "Rewards"):
 *
 *   x_0    = cat(class_embedding, patch_embedding(px) as [B, grid^2, D]) + position_embedding
 *            (patch_embedding: Conv2d(3, D, patch, stride patch, bias=False))
 *   h_0    = pre_layrnorm(x_0)
 *   h_l    = CLIPEncoderLayer(h_{l-1}) (clip_text.c's layer, without the causal mask)
 *   pooled = post_layernorm(h_N[:, 0])
 *   image_features = visual_projection(pooled)                 (Linear, no bias)
 *   text_features  = text_projection(text_model(ids).pooled)    (Linear, no bias)
 *
 * The model is kind "clip", built from transformers' CLIPConfig (config.json of a
 * CLIPModel folder): text_config (CLIPTextConfig), vision_config (CLIPVisionConfig:
 * hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, image_size,
 * patch_size, hidden_act, layer_norm_eps), projection_dim; a missing value takes
 * transformers' default. Parameter names are CLIPModel's state-dict keys
 * (logit_scale, text_model.*, vision_model.*, visual_projection.weight,
 * text_projection.weight). open_clip checkpoints load by a key mapping in the Lua
 * binding (bindings/lua/diffrl/core/clip_models.lua), which also writes the
 * CLIPConfig for an open_clip model config. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip.h"
#include "../tensor/tensor_internal.h"

typedef struct clip_model {
    clip_text text;
    clip_vision vision;
    nn_linear visual_proj, text_proj;
    dr_tensor *logit_scale;
} clip_model;

/* ---- vision tower --------------------------------------------------------------------- */
dr_status clip_vision_new(dr_model *m, clip_vision *v, const dr_json *cfg) {
    static const int64_t defaults[4] = {768, 3072, 12, 12};
    clip_encoder_config ec;
    int64_t channels;
    DR_TRY(clip_encoder_config_read(m, cfg, defaults, &ec));
    DR_TRY(dr_cfg_int(m, cfg, "image_size", 224, &v->image_size));
    DR_TRY(dr_cfg_int(m, cfg, "patch_size", 32, &v->patch_size));
    DR_TRY(dr_cfg_int(m, cfg, "num_channels", 3, &channels));
    DR_TRY(dr_cfg_range(m, "vision_config.image_size", v->image_size, 1, 1 << 14));
    DR_TRY(dr_cfg_range(m, "vision_config.patch_size", v->patch_size, 1, v->image_size));
    DR_TRY(dr_cfg_range(m, "vision_config.num_channels", channels, 3, 3));
    if (v->image_size % v->patch_size != 0)
        return dr_fail(DR_ERR_IO, "%s: vision_config: image_size %lld is not a multiple of patch_size %lld",
                       m->context, (long long)v->image_size, (long long)v->patch_size);
    v->hidden = ec.hidden;
    v->nlayers = ec.layers;
    int64_t d = ec.hidden, grid = v->image_size / v->patch_size;
    /* module order of CLIPVisionTransformer: embeddings, pre_layrnorm, encoder, post_layernorm;
     * transformers' init: class N(0, D^-0.5), patch and positions N(0, 0.02) (times the factor) */
    DR_TRY(dr_model_param_new(m, &v->class_emb, DR_INIT_NORMAL, pow((double)d, -0.5) * ec.factor,
                              (int64_t[]){d}, 1, "vision_model.embeddings.class_embedding"));
    DR_TRY(nn_conv_new_nobias(m, &v->patch, 3, d, v->patch_size, v->patch_size, 0,
                              "vision_model.embeddings.patch_embedding"));
    dr_model_param_set_init(m, v->patch.weight, DR_INIT_NORMAL, 0.02 * ec.factor);
    DR_TRY(dr_model_param_new(m, &v->pos_emb, DR_INIT_NORMAL, 0.02 * ec.factor,
                              (int64_t[]){grid * grid + 1, d}, 2,
                              "vision_model.embeddings.position_embedding.weight"));
    DR_TRY(nn_layer_norm_new(m, &v->pre_ln, d, ec.eps, "vision_model.pre_layrnorm"));
    v->layers = calloc((size_t)ec.layers, sizeof *v->layers);
    if (!v->layers) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    for (int64_t i = 0; i < ec.layers; i++)
        DR_TRY(clip_layer_new(m, &v->layers[i], &ec, i, "vision_model", false, 0));
    return nn_layer_norm_new(m, &v->post_ln, d, ec.eps, "vision_model.post_layernorm");
}

void clip_vision_free(clip_vision *v) {
    free(v->layers);
    v->layers = NULL;
}

dr_status clip_vision_run(const dr_model *m, const clip_vision *v, const dr_tensor *x, dr_tensor **pooled) {
    const char *op = "clip_image_features";
    int64_t s = v->image_size;
    DR_TRY(dr_check_tensor(x, op, "pixel_values"));
    if (x->ndim != 4 || x->sizes[0] < 1 || x->sizes[1] != 3 || x->sizes[2] != s || x->sizes[3] != s)
        return dr_fail(DR_ERR_SHAPE, "%s: pixel_values must be [B, 3, %lld, %lld] (the preprocessed "
                       "image: clip_preprocess), got %s", op, (long long)s, (long long)s, dr_shape_str(x));
    if (!dr_dtype_is_float(x->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: pixel_values must be a float tensor, got %s", op,
                       dr_dtype_name(x->scalar_type));
    dr_tensor *e = NULL, *h = NULL, *t = NULL, *cls = NULL;
    int ckpt = dr_model_checkpoint_mode(m);
    dr_status st = nn_vit_embed(&v->patch, v->class_emb, v->pos_emb, x, &e);
    if (st == DR_OK) st = nn_norm_forward(&v->pre_ln, e, &h);
    dr_tensor_release(e);
    for (int64_t i = 0; i < v->nlayers && st == DR_OK; i++) {
        st = nn_checkpoint(ckpt, clip_layer_forward, &v->layers[i], (const dr_tensor *[]){h}, 1, &t);
        if (st == DR_OK) dr_swap(&h, t), t = NULL;
    }
    if (st == DR_OK) st = dr_tensor_select(h, 1, 0, &cls);
    if (st == DR_OK) st = nn_norm_forward(&v->post_ln, cls, pooled);
    dr_tensor_release(cls);
    dr_tensor_release(h);
    return st;
}

/* ---- CLIPModel ------------------------------------------------------------------------ */
static void clip_model_free(void *p) {
    clip_model *c = p;
    if (!c) return;
    clip_text_free(&c->text);
    clip_vision_free(&c->vision);
    free(c);
}

/* a tower's config: an object, or missing / null (transformers' defaults) */
static dr_status tower_config(const dr_model *m, const dr_json *cfg, const char *key, const dr_json **out) {
    const dr_json *v = dr_json_get(cfg, key);
    if (v && v->type != DR_JSON_OBJECT && v->type != DR_JSON_NULL)
        return dr_fail(DR_ERR_IO, "%s: %s must be a JSON object, got %s", m->context, key,
                       dr_json_type_name(v->type));
    *out = v && v->type == DR_JSON_OBJECT ? v : NULL;
    return DR_OK;
}

dr_status dr_clip_build(dr_model *m, const dr_json *cfg) {
    const dr_json *arch = dr_json_get(cfg, "architectures");
    if (arch && arch->type == DR_JSON_ARRAY && arch->len > 0 && arch->u.items[0].type == DR_JSON_STRING &&
        strcmp(arch->u.items[0].u.s, "CLIPModel") != 0)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: architectures '%s' is not supported (CLIPModel)",
                       m->context, arch->u.items[0].u.s);
    DR_TRY(dr_cfg_require_default(m, cfg, "model_type", "clip"));
    const dr_json *text_cfg = NULL, *vision_cfg = NULL;
    DR_TRY(tower_config(m, cfg, "text_config", &text_cfg));
    DR_TRY(tower_config(m, cfg, "vision_config", &vision_cfg));
    int64_t proj;
    double factor;
    DR_TRY(dr_cfg_int(m, cfg, "projection_dim", 512, &proj));
    DR_TRY(dr_cfg_range(m, "projection_dim", proj, 1, 1 << 16));
    DR_TRY(dr_cfg_num(m, cfg, "initializer_factor", 1.0, &factor));
    clip_model *c = calloc(1, sizeof *c);
    if (!c) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    m->impl = c;
    m->impl_free = clip_model_free;
    /* CLIPModel's module order: logit_scale (a direct parameter) first in the state dict */
    DR_TRY(dr_model_param_new(m, &c->logit_scale, DR_INIT_ZERO, 0.0, NULL, 0, "logit_scale"));
    DR_TRY(clip_text_new(m, &c->text, text_cfg));
    DR_TRY(clip_vision_new(m, &c->vision, vision_cfg));
    DR_TRY(nn_linear_new(m, &c->visual_proj, c->vision.hidden, proj, false, "visual_projection"));
    dr_model_param_set_init(m, c->visual_proj.weight, DR_INIT_NORMAL, pow((double)c->vision.hidden, -0.5) * factor);
    DR_TRY(nn_linear_new(m, &c->text_proj, c->text.hidden, proj, false, "text_projection"));
    dr_model_param_set_init(m, c->text_proj.weight, DR_INIT_NORMAL, pow((double)c->text.hidden, -0.5) * factor);
    return DR_OK;
}

dr_status dr_clip_preprocess(dr_model *m, const dr_tensor *images, dr_tensor **out) {
    const char *op = "clip_preprocess";
    if (out) *out = NULL;
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    DR_TRY(dr_model_check(m, "clip", op));
    const clip_model *c = m->impl;
    return nn_clip_preprocess(op, images, c->vision.image_size, out);
}

dr_status dr_clip_image_features(dr_model *m, const dr_tensor *pixel_values, dr_tensor **out) {
    const char *op = "clip_image_features";
    if (out) *out = NULL;
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    DR_TRY(dr_model_check(m, "clip", op));
    const clip_model *c = m->impl;
    dr_tensor *pooled = NULL;
    DR_TRY(clip_vision_run(m, &c->vision, pixel_values, &pooled));
    dr_status st = nn_linear_forward(&c->visual_proj, pooled, out);
    dr_tensor_release(pooled);
    return st;
}

dr_status dr_clip_text_features(dr_model *m, const dr_tensor *input_ids, dr_tensor **out) {
    const char *op = "clip_text_features";
    if (out) *out = NULL;
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    DR_TRY(dr_model_check(m, "clip", op));
    const clip_model *c = m->impl;
    dr_tensor *pooled = NULL;
    DR_TRY(clip_text_run(m, &c->text, input_ids, 0, NULL, &pooled));
    dr_status st = nn_linear_forward(&c->text_proj, pooled, out);
    dr_tensor_release(pooled);
    return st;
}
