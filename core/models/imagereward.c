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
 * preprocess (ImageReward._transform(224) on a PIL image): Resize(224, BICUBIC) of the
 * shorter side (the longer to int(224 * long / short)), CenterCrop(224) (offsets
 * int(round((size - 224) / 2)), Python's round half to even), ToTensor, Normalize
 * with CLIP's mean / std. diffrl's images are float [B, 3, H, W] in [0, 1], so the
 * resize is torch's antialiased bicubic (F.interpolate(mode='bicubic', antialias=True,
 * align_corners=False): PIL's filter, a = -0.5, support 2 * scale when shrinking)
 * on float data, written as two matmuls with the resampling matrices (rows of the
 * crop only): out = R_h x R_w^T. PIL works on uint8 and rounds after each pass; on
 * the fixture images the scores differ by 4e-5 (shrinking) to 2e-3 (enlarging 96 ->
 * 224) from PIL's (spec/imagereward_spec.lua), the tensor path is exact to 1e-6.
 * Being matmuls, the preprocessing is differentiable, as the forward is.
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

#define IR_HEAD_LAYERS 5

static const double CLIP_MEAN[3] = {0.48145466, 0.4578275, 0.40821073};
static const double CLIP_STD[3] = {0.26862954, 0.26130258, 0.27577711};

typedef struct imagereward {
    blip_vit vit;
    bert text;
    nn_linear vision_proj, text_proj;
    nn_linear head[IR_HEAD_LAYERS];
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

    int64_t widths[IR_HEAD_LAYERS - 1], embed_dim;
    blip_vit_config vc;
    DR_TRY(blip_vit_config_read(m, vision_cfg, &vc));
    const dr_json *w = dr_json_get(cfg, "mlp_widths");
    if (w && w->type == DR_JSON_ARRAY && w->len != IR_HEAD_LAYERS - 1)
        return dr_fail(DR_ERR_IO, "%s: mlp_widths has %zu entries, expected 4 (the head's hidden "
                       "widths, 1024, 128, 64, 16 in ImageReward)", m->context, w->len);
    if (w && w->type == DR_JSON_INT)
        return dr_fail(DR_ERR_IO, "%s: mlp_widths must be a list of 4 integers", m->context);
    static const int64_t official[IR_HEAD_LAYERS - 1] = {1024, 128, 64, 16};
    if (!w || w->type == DR_JSON_NULL) memcpy(widths, official, sizeof widths);
    else DR_TRY(dr_cfg_int_list(m, cfg, "mlp_widths", IR_HEAD_LAYERS - 1, 0, widths));
    for (int i = 0; i < IR_HEAD_LAYERS - 1; i++)
        DR_TRY(blip_check_range(m, "mlp_widths[]", widths[i], 1, 1 << 16));
    DR_TRY(dr_cfg_int(m, cfg, "embed_dim", 256, &embed_dim));
    DR_TRY(blip_check_range(m, "embed_dim", embed_dim, 1, 1 << 16));
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
    /* MLP: Linear at Sequential indices 0, 2, 4, 6, 7 (Dropouts at 1, 3, 5); weights
     * N(0, 1 / (input_size + 1)), biases 0 */
    static const int index[IR_HEAD_LAYERS] = {0, 2, 4, 6, 7};
    int64_t in = r->text.hidden;
    for (int i = 0; i < IR_HEAD_LAYERS; i++) {
        int64_t out = i < IR_HEAD_LAYERS - 1 ? widths[i] : 1;
        char name[64];
        snprintf(name, sizeof name, "mlp.layers.%d", index[i]);
        DR_TRY(nn_linear_new(m, &r->head[i], in, out, true, name));
        dr_model_param_set_init(m, r->head[i].weight, DR_INIT_NORMAL, 1.0 / (double)(r->text.hidden + 1));
        dr_model_param_set_init(m, r->head[i].bias, DR_INIT_ZERO, 0.0);
        in = out;
    }
    return DR_OK;
}

/* ---- preprocessing ---------------------------------------------------------------- */
/* torch's antialiased bicubic kernel (upsample_bicubic2d_aa: PIL's, a = -0.5) */
static double aa_cubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Rows [first, first + count) of the [out, in] matrix resampling a length-`in` axis
 * to `out` samples (ATen's _compute_indices_weights_aa, align_corners False). */
static void resample_rows(int64_t in, int64_t out, int64_t first, int64_t count, double *w) {
    double scale = (double)in / (double)out;
    double support = scale >= 1.0 ? 2.0 * scale : 2.0;
    double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    memset(w, 0, (size_t)(count * in) * sizeof *w);
    for (int64_t r = 0; r < count; r++) {
        double center = scale * ((double)(first + r) + 0.5);
        int64_t lo = (int64_t)(center - support + 0.5), hi = (int64_t)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        double total = 0.0, *row = w + r * in;
        for (int64_t j = lo; j < hi; j++) total += row[j] = aa_cubic(((double)j - center + 0.5) * invscale);
        if (total != 0.0)
            for (int64_t j = lo; j < hi; j++) row[j] /= total;
    }
}

static dr_status resample_matrix(int64_t in, int64_t out, int64_t first, int64_t count, dr_device dev,
                                 dr_tensor **mat) {
    double *w = malloc((size_t)(count * in) * sizeof *w);
    if (!w) return dr_fail(DR_ERR_OOM, "imagereward_preprocess: out of memory");
    resample_rows(in, out, first, count, w);
    dr_status st = dr_tensor_from_f64(w, (int64_t[]){count, in}, 2, DR_F32, dev, mat);
    free(w);
    return st;
}

/* x [B, 3, H, W] -> [B, 3, S, S]: resized so the shorter side is S, centre-cropped */
static dr_status resize_crop(const dr_tensor *x, int64_t s, dr_tensor **out) {
    int64_t h = x->sizes[2], w = x->sizes[3], nh, nw;
    if (w <= h) nw = s, nh = (int64_t)((double)(s * h) / (double)w);
    else nh = s, nw = (int64_t)((double)(s * w) / (double)h);
    int64_t top = (int64_t)rint((double)(nh - s) / 2.0), left = (int64_t)rint((double)(nw - s) / 2.0);
    if (nh == h && nw == w) { /* Resize is the identity: crop only */
        dr_tensor *a = NULL, *b = NULL;
        dr_status st = dr_tensor_narrow(x, 2, top, s, &a);
        if (st == DR_OK) st = dr_tensor_narrow(a, 3, left, s, &b);
        if (st == DR_OK) st = dr_tensor_contiguous(b, out);
        dr_tensor_release(a);
        dr_tensor_release(b);
        return st;
    }
    dr_tensor *rh = NULL, *rw = NULL, *rwt = NULL, *t = NULL;
    dr_status st = resample_matrix(h, nh, top, s, x->device, &rh);
    if (st == DR_OK) st = resample_matrix(w, nw, left, s, x->device, &rw);
    if (st == DR_OK) st = dr_tensor_transpose(rw, 0, 1, &rwt);
    if (st == DR_OK) st = dr_matmul(x, rwt, &t);     /* [B, 3, H, S] */
    if (st == DR_OK) st = dr_matmul(rh, t, out);     /* [S, H] @ [B, 3, H, S] */
    dr_tensor_release(rh);
    dr_tensor_release(rw);
    dr_tensor_release(rwt);
    dr_tensor_release(t);
    return st;
}

dr_status dr_imagereward_preprocess(dr_model *m, const dr_tensor *images, dr_tensor **out) {
    const char *op = "imagereward_preprocess";
    if (out) *out = NULL;
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    DR_TRY(dr_model_check(m, "imagereward", op));
    DR_TRY(dr_check_tensor(images, op, "images"));
    if (images->ndim != 4 || images->sizes[0] < 1 || images->sizes[1] != 3 || images->sizes[2] < 1 ||
        images->sizes[3] < 1)
        return dr_fail(DR_ERR_SHAPE, "%s: images must be [B, 3, H, W] (RGB in [0, 1]), got %s", op,
                       dr_shape_str(images));
    if (!dr_dtype_is_float(images->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: images must be a float tensor with values in [0, 1], got %s "
                       "(uint8 images: divide by 255)", op, dr_dtype_name(images->scalar_type));
    const imagereward *r = m->impl;
    dr_tensor *x = NULL, *y = NULL, *mean = NULL, *std = NULL, *c = NULL;
    dr_status st = DR_OK;
    if (images->scalar_type == DR_F32) {
        x = (dr_tensor *)images;
        dr_tensor_retain(x);
    } else {
        st = dr_tensor_to_dtype(images, DR_F32, &x);
    }
    if (st == DR_OK) st = resize_crop(x, r->vit.cfg.image_size, &y);
    if (st == DR_OK) st = dr_tensor_from_f64(CLIP_MEAN, (int64_t[]){3, 1, 1}, 3, DR_F32, x->device, &mean);
    if (st == DR_OK) st = dr_tensor_from_f64(CLIP_STD, (int64_t[]){3, 1, 1}, 3, DR_F32, x->device, &std);
    if (st == DR_OK) st = dr_sub(y, mean, 1.0, &c);
    if (st == DR_OK) st = dr_div(c, std, out);
    dr_tensor_release(x);
    dr_tensor_release(y);
    dr_tensor_release(mean);
    dr_tensor_release(std);
    dr_tensor_release(c);
    return st;
}

/* ---- scoring ------------------------------------------------------------------------ */
/* (mlp(txt) - mean) / std, as [B] */
static dr_status head_forward(const imagereward *r, const dr_tensor *txt, dr_tensor **out) {
    dr_tensor *h = (dr_tensor *)txt, *t = NULL, *flat = NULL, *mean = NULL, *std = NULL;
    dr_tensor_retain(h);
    dr_status st = DR_OK;
    for (int i = 0; i < IR_HEAD_LAYERS && st == DR_OK; i++) {
        st = nn_linear_forward(&r->head[i], h, &t);
        if (st == DR_OK) dr_swap(&h, t), t = NULL;
    }
    if (st == DR_OK) st = dr_tensor_reshape(h, (int64_t[]){h->sizes[0]}, 1, &flat);
    if (st == DR_OK) st = dr_tensor_full(NULL, 0, DR_F32, h->device, r->mean, &mean);
    if (st == DR_OK) st = dr_tensor_full(NULL, 0, DR_F32, h->device, r->std, &std);
    if (st == DR_OK) st = dr_sub(flat, mean, 1.0, &t);
    if (st == DR_OK) st = dr_div(t, std, out);
    dr_tensor_release(t);
    dr_tensor_release(flat);
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
