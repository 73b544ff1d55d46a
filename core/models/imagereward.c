/* ImageReward (image-reward 1.5, ImageReward/ImageReward.py; Xu et al. 2023), the
 * human-preference reward of the paper (PAPER.md "Rewards"): BLIP's ViT-L/16 image
 * encoder (blip_vit.c), BLIP's BERT-base text encoder cross-attending to the image
 * tokens (bert.c) and an MLP on the text [CLS] state, standardised:
 *
 *   img    = visual_encoder(preprocess(image))                       [B, 197, 1024]
 *   txt    = text_encoder(ids, attention_mask, img)[:, 0, :]           [B, 768]
 *   r      = L5(L4(L3(L2(L1(txt)))))   mlp.layers.{0,2,4,6,7}: 768-1024-128-64-16-1,
 *            no activations (the ReLUs are commented out upstream), dropouts off
 *   score  = (r - 0.16717362830052426) / 1.0333394966054072
 *
 * preprocess (ImageReward._transform(224)): CLIP's transform on float images
 * (clip_image.c: antialiased bicubic resize of the shorter side, centre crop, CLIP
 * normalisation); on the fixture images the scores differ by 4e-5 (shrinking) to 2e-3
 * (enlarging 96 -> 224) from the package's PIL path (spec/imagereward_spec.lua).
 *
 * The model is kind "imagereward", built from one JSON object:
 *   text_config    med_config.json (required)
 *   vision_config  image_size, patch_size, hidden_size, num_hidden_layers,
 *                  num_attention_heads, mlp_ratio, layer_norm_eps (default: ViT-L/16, 224)
 *   mlp_widths     the head's four hidden widths (default [1024, 128, 64, 16])
 *   embed_dim      BLIP_Pretrain's vision_proj / text_proj width (default 256)
 *   score_mean, score_std   the standardisation (defaults as above)
 * Parameter names are ImageReward.pt's keys. blip.vision_proj and blip.text_proj
 * (BLIP's contrastive projections) are parameters of the official module, so they
 * count and load, but scoring never uses them and a checkpoint may leave them out. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blip.h"
#include "../tensor/tensor_internal.h"

typedef struct imagereward {
    blip_vit vit;
    bert text;
    nn_linear vision_proj, text_proj;
    nn_score_mlp head;
    double mean, std;
} imagereward;

static void imagereward_free(void *p) {
    imagereward *r = p;
    if (!r) return;
    blip_vit_free(&r->vit);
    bert_free(&r->text);
    free(r);
}

static const char *const known_keys[] = {"text_config", "vision_config", "mlp_widths", "embed_dim",
                                         "score_mean", "score_std", NULL};

static dr_status check_keys(const dr_model *m, const dr_json *cfg) {
    for (size_t i = 0; i < cfg->len; i++) {
        const char *key = cfg->u.members[i].key;
        bool known = false;
        for (int k = 0; known_keys[k]; k++) known = known || strcmp(key, known_keys[k]) == 0;
        if (!known)
            return dr_fail(DR_ERR_IO, "%s: unknown key '%s' (expected text_config, vision_config, "
                           "mlp_widths, embed_dim, score_mean, score_std)", m->context, key);
    }
    return DR_OK;
}

/* a parameter a checkpoint may leave out (see the top of the file) */
static void mark_optional(dr_model *m, const nn_linear *l) {
    for (int64_t k = 0; k < m->nparams; k++)
        if (m->params[k].t == l->weight || m->params[k].t == l->bias) m->params[k].optional = true;
}

dr_status dr_imagereward_build(dr_model *m, const dr_json *cfg) {
    DR_TRY(check_keys(m, cfg));
    const dr_json *text_cfg = dr_json_get(cfg, "text_config");
    if (!text_cfg)
        return dr_fail(DR_ERR_IO, "%s: text_config (the contents of med_config.json) is missing", m->context);
    const dr_json *vision_cfg = dr_json_get(cfg, "vision_config");
    if (vision_cfg && vision_cfg->type != DR_JSON_OBJECT && vision_cfg->type != DR_JSON_NULL)
        return dr_fail(DR_ERR_IO, "%s: vision_config must be a JSON object, got %s", m->context,
                       dr_json_type_name(vision_cfg->type));
    imagereward *r = calloc(1, sizeof *r);
    if (!r) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    m->impl = r;
    m->impl_free = imagereward_free;

    int64_t widths[NN_SCORE_MLP_LAYERS - 1], embed_dim;
    blip_vit_config vc;
    DR_TRY(blip_vit_config_read(m, vision_cfg, &vc));
    DR_TRY(nn_score_mlp_widths(m, cfg, "mlp_widths", widths));
    DR_TRY(dr_cfg_int(m, cfg, "embed_dim", 256, &embed_dim));
    DR_TRY(dr_cfg_range(m, "embed_dim", embed_dim, 1, 1 << 16));
    DR_TRY(dr_cfg_num(m, cfg, "score_mean", 0.16717362830052426, &r->mean));
    DR_TRY(dr_cfg_num(m, cfg, "score_std", 1.0333394966054072, &r->std));
    if (!(r->std > 0) || !isfinite(r->mean))
        return dr_fail(DR_ERR_IO, "%s: score_std must be positive and score_mean finite, got %g and %g",
                       m->context, r->std, r->mean);

    DR_TRY(blip_vit_new(m, &r->vit, &vc, "blip.visual_encoder"));
    DR_TRY(bert_new(m, &r->text, text_cfg, vc.width, "blip.text_encoder"));
    DR_TRY(nn_linear_new(m, &r->vision_proj, vc.width, embed_dim, true, "blip.vision_proj"));
    DR_TRY(nn_linear_new(m, &r->text_proj, r->text.hidden, embed_dim, true, "blip.text_proj"));
    mark_optional(m, &r->vision_proj);
    mark_optional(m, &r->text_proj);
    /* ImageReward's MLP: weights N(0, 1 / (input_size + 1)), biases 0 */
    DR_TRY(nn_score_mlp_new(m, &r->head, r->text.hidden, widths, "mlp.layers"));
    for (int i = 0; i < NN_SCORE_MLP_LAYERS; i++) {
        dr_model_param_set_init(m, r->head.layers[i].weight, DR_INIT_NORMAL, 1.0 / (double)(r->text.hidden + 1));
        dr_model_param_set_init(m, r->head.layers[i].bias, DR_INIT_ZERO, 0.0);
    }
    return DR_OK;
}

dr_status dr_imagereward_preprocess(dr_model *m, const dr_tensor *images, dr_tensor **out) {
    const char *op = "imagereward_preprocess";
    if (out) *out = NULL;
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    DR_TRY(dr_model_check(m, "imagereward", op));
    const imagereward *r = m->impl;
    return nn_clip_preprocess(op, images, r->vit.cfg.image_size, out);
}

/* ---- scoring ------------------------------------------------------------------------ */
/* (mlp(txt) - mean) / std, as [B] */
static dr_status head_forward(const imagereward *r, const dr_tensor *txt, dr_tensor **out) {
    dr_tensor *h = NULL, *t = NULL, *mean = NULL, *std = NULL;
    dr_status st = nn_score_mlp_forward(&r->head, txt, &h);
    if (st == DR_OK) st = dr_tensor_full(NULL, 0, DR_F32, h->device, r->mean, &mean);
    if (st == DR_OK) st = dr_tensor_full(NULL, 0, DR_F32, h->device, r->std, &std);
    if (st == DR_OK) st = dr_sub(h, mean, 1.0, &t);
    if (st == DR_OK) st = dr_div(t, std, out);
    dr_tensor_release(t);
    dr_tensor_release(mean);
    dr_tensor_release(std);
    dr_tensor_release(h);
    return st;
}

dr_status dr_imagereward_forward(dr_model *m, const dr_tensor *pixel_values, const dr_tensor *input_ids,
                                 const dr_tensor *attention_mask, dr_tensor **scores,
                                 dr_tensor **image_embeds, dr_tensor **text_features) {
    const char *op = "imagereward_forward";
    if (scores) *scores = NULL;
    if (image_embeds) *image_embeds = NULL;
    if (text_features) *text_features = NULL;
    if (!scores && !image_embeds && !text_features)
        return dr_fail(DR_ERR_ARG, "%s: scores, image_embeds and text_features are all NULL", op);
    DR_TRY(dr_model_check(m, "imagereward", op));
    DR_TRY(dr_check_tensor(pixel_values, op, "pixel_values"));
    DR_TRY(dr_check_tensor(input_ids, op, "input_ids"));
    if (attention_mask) DR_TRY(dr_check_tensor(attention_mask, op, "attention_mask"));
    const imagereward *r = m->impl;
    if (pixel_values->ndim != 4)
        return dr_fail(DR_ERR_SHAPE, "%s: pixel_values must be [B, 3, %lld, %lld], got %s", op,
                       (long long)r->vit.cfg.image_size, (long long)r->vit.cfg.image_size,
                       dr_shape_str(pixel_values));
    if (input_ids->ndim != 2 || input_ids->sizes[0] != pixel_values->sizes[0])
        return dr_fail(DR_ERR_SHAPE, "%s: input_ids must be [B, L] with B = %lld images, got %s", op,
                       (long long)pixel_values->sizes[0], dr_shape_str(input_ids));
    dr_tensor *img = NULL, *hid = NULL, *cls = NULL, *txt = NULL;
    dr_status st = blip_vit_forward(&r->vit, pixel_values, &img);
    if (st == DR_OK && (scores || text_features)) {
        st = bert_forward(&r->text, input_ids, attention_mask, img, &hid);
        if (st == DR_OK) st = dr_tensor_select(hid, 1, 0, &cls);
        if (st == DR_OK) st = dr_tensor_contiguous(cls, &txt);
        if (st == DR_OK && scores) st = head_forward(r, txt, scores);
    }
    if (st == DR_OK && image_embeds) *image_embeds = img, img = NULL;
    if (st == DR_OK && text_features) *text_features = txt, txt = NULL;
    if (st != DR_OK && scores) dr_drop(scores);
    dr_tensor_release(img);
    dr_tensor_release(hid);
    dr_tensor_release(cls);
    dr_tensor_release(txt);
    return st;
}
