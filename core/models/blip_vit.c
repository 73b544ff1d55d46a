/* BLIP's VisionTransformer (image-reward 1.5, ImageReward/models/BLIP/vit.py, itself
 * timm's ViT of 2022), the image encoder of ImageReward (create_vit('large'): ViT-L/16,
 * width 1024, depth 24, 16 heads, image 224), in eval mode:
 *
 *   x_0 = cat(cls_token, patch_embed.proj(x) flattened to [B, grid^2, width]) + pos_embed
 *   x_l = y + mlp(norm2(y)),  y = x_{l-1} + attn(norm1(x_{l-1}))
 *         attn: [q | k | v] = qkv(x) (fused, with bias, q first), heads split,
 *         softmax(q k^T * head_dim^-0.5) v, proj
 *         mlp: fc2(gelu(fc1(x))), exact (erf) GELU, hidden = width * mlp_ratio
 *   out = norm(x_depth)          (LayerNorm eps 1e-6 everywhere)
 * Dropout and drop_path (0.1 for 'large') are identities at eval. The pos_embed
 * interpolation of BLIP's load_checkpoint is not needed: ImageReward.pt holds the
 * 224 embedding. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blip.h"
#include "../tensor/tensor_internal.h"

dr_status blip_vit_config_read(const dr_model *m, const dr_json *cfg, blip_vit_config *out) {
    double ratio;
    DR_TRY(dr_cfg_int(m, cfg, "image_size", 224, &out->image_size));
    DR_TRY(dr_cfg_int(m, cfg, "patch_size", 16, &out->patch_size));
    DR_TRY(dr_cfg_int(m, cfg, "hidden_size", 1024, &out->width));
    DR_TRY(dr_cfg_int(m, cfg, "num_hidden_layers", 24, &out->depth));
    DR_TRY(dr_cfg_int(m, cfg, "num_attention_heads", 16, &out->heads));
    DR_TRY(dr_cfg_num(m, cfg, "mlp_ratio", 4.0, &ratio));
    DR_TRY(dr_cfg_num(m, cfg, "layer_norm_eps", 1e-6, &out->eps));
    DR_TRY(dr_cfg_range(m, "vision_config.image_size", out->image_size, 1, 1 << 14));
    DR_TRY(dr_cfg_range(m, "vision_config.patch_size", out->patch_size, 1, out->image_size));
    DR_TRY(dr_cfg_range(m, "vision_config.hidden_size", out->width, 1, 1 << 16));
    DR_TRY(dr_cfg_range(m, "vision_config.num_hidden_layers", out->depth, 1, 1024));
    DR_TRY(dr_cfg_range(m, "vision_config.num_attention_heads", out->heads, 1, out->width));
    if (out->image_size % out->patch_size != 0)
        return dr_fail(DR_ERR_IO, "%s: vision_config: image_size %lld is not a multiple of patch_size %lld",
                       m->context, (long long)out->image_size, (long long)out->patch_size);
    if (out->width % out->heads != 0)
        return dr_fail(DR_ERR_IO, "%s: vision_config: hidden_size %lld does not split into %lld heads",
                       m->context, (long long)out->width, (long long)out->heads);
    if (!(ratio > 0 && ratio <= 64))
        return dr_fail(DR_ERR_IO, "%s: vision_config: mlp_ratio %g is out of range (0, 64]", m->context, ratio);
    if (!(out->eps > 0))
        return dr_fail(DR_ERR_IO, "%s: vision_config: layer_norm_eps %g must be positive", m->context, out->eps);
    out->mlp_hidden = (int64_t)((double)out->width * ratio); /* int(dim * mlp_ratio) */
    return DR_OK;
}

static dr_status linear(dr_model *m, nn_linear *l, int64_t in, int64_t out, const char *prefix,
                        const char *sub) {
    char name[600];
    snprintf(name, sizeof name, "%s.%s", prefix, sub);
    return nn_linear_new(m, l, in, out, true, name);
}

static dr_status norm(dr_model *m, nn_norm *n, int64_t dim, double eps, const char *prefix,
                      const char *sub) {
    char name[600];
    snprintf(name, sizeof name, "%s.%s", prefix, sub);
    return nn_layer_norm_new(m, n, dim, eps, name);
}

dr_status blip_vit_new(dr_model *m, blip_vit *v, const blip_vit_config *cfg, const char *prefix) {
    memset(v, 0, sizeof *v);
    v->cfg = *cfg;
    int64_t c = cfg->width, grid = cfg->image_size / cfg->patch_size;
    char name[512]; /* prefix < 400 (imagereward.c passes a literal) */
    /* module order of vit.py: cls_token, pos_embed, patch_embed, blocks, norm */
    DR_TRY(dr_model_param_new(m, &v->cls_token, DR_INIT_NORMAL, 0.02, (int64_t[]){1, 1, c}, 3,
                              "%s.cls_token", prefix));
    DR_TRY(dr_model_param_new(m, &v->pos_embed, DR_INIT_NORMAL, 0.02, (int64_t[]){1, grid * grid + 1, c},
                              3, "%s.pos_embed", prefix));
    snprintf(name, sizeof name, "%s.patch_embed.proj", prefix);
    DR_TRY(nn_conv_new(m, &v->patch, 3, c, cfg->patch_size, cfg->patch_size, 0, name));
    v->blocks = calloc((size_t)cfg->depth, sizeof *v->blocks);
    if (!v->blocks) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    for (int64_t i = 0; i < cfg->depth; i++) {
        blip_vit_block *b = &v->blocks[i];
        snprintf(name, sizeof name, "%s.blocks.%lld", prefix, (long long)i);
        DR_TRY(norm(m, &b->norm1, c, cfg->eps, name, "norm1"));
        DR_TRY(linear(m, &b->qkv, c, 3 * c, name, "attn.qkv"));
        DR_TRY(linear(m, &b->proj, c, c, name, "attn.proj"));
        DR_TRY(norm(m, &b->norm2, c, cfg->eps, name, "norm2"));
        DR_TRY(linear(m, &b->fc1, c, cfg->mlp_hidden, name, "mlp.fc1"));
        DR_TRY(linear(m, &b->fc2, cfg->mlp_hidden, c, name, "mlp.fc2"));
    }
    return norm(m, &v->norm, c, cfg->eps, prefix, "norm");
}

void blip_vit_free(blip_vit *v) {
    free(v->blocks);
    v->blocks = NULL;
}

/* ---- forward ------------------------------------------------------------------------ */
/* proj(attention(q, k, v)) with q, k, v the three thirds of qkv(x) */
static dr_status attention(const blip_vit_block *b, int64_t heads, const dr_tensor *x, dr_tensor **out) {
    dr_tensor *qkv = NULL, *part[3] = {0}, *o = NULL;
    int64_t c = x->sizes[2];
    dr_status st = nn_linear_forward(&b->qkv, x, &qkv);
    for (int i = 0; i < 3 && st == DR_OK; i++) {
        dr_tensor *view = NULL;
        st = dr_tensor_narrow(qkv, -1, i * c, c, &view);
        if (st == DR_OK) st = dr_tensor_contiguous(view, &part[i]);
        dr_tensor_release(view);
    }
    dr_tensor_release(qkv);
    if (st == DR_OK) st = nn_heads_attention(part[0], part[1], part[2], heads, 0, 0.0, &o);
    for (int i = 0; i < 3; i++) dr_tensor_release(part[i]);
    if (st == DR_OK) st = nn_linear_forward(&b->proj, o, out);
    dr_tensor_release(o);
    return st;
}

static dr_status mlp(const blip_vit_block *b, const dr_tensor *x, dr_tensor **out) {
    dr_tensor *h = NULL, *g = NULL;
    DR_TRY(nn_linear_forward(&b->fc1, x, &h));
    dr_status st = dr_gelu(h, 0, &g);
    dr_tensor_release(h);
    if (st == DR_OK) st = nn_linear_forward(&b->fc2, g, out);
    dr_tensor_release(g);
    return st;
}

static dr_status block_forward(const blip_vit_block *b, int64_t heads, const dr_tensor *x,
                               dr_tensor **out) {
    dr_tensor *n = NULL, *a = NULL, *y = NULL, *f = NULL;
    dr_status st = nn_norm_forward(&b->norm1, x, &n);
    if (st == DR_OK) st = attention(b, heads, n, &a);
    dr_drop(&n);
    if (st == DR_OK) st = dr_add(x, a, 1.0, &y);
    dr_drop(&a);
    if (st == DR_OK) st = nn_norm_forward(&b->norm2, y, &n);
    if (st == DR_OK) st = mlp(b, n, &f);
    dr_drop(&n);
    if (st == DR_OK) st = dr_add(y, f, 1.0, out);
    dr_tensor_release(f);
    dr_tensor_release(y);
    return st;
}

dr_status blip_vit_forward(const blip_vit *v, const dr_tensor *x, dr_tensor **out) {
    *out = NULL;
    int64_t s = v->cfg.image_size;
    if (x->ndim != 4 || x->sizes[0] < 1 || x->sizes[1] != 3 || x->sizes[2] != s || x->sizes[3] != s)
        return dr_fail(DR_ERR_SHAPE, "imagereward: pixel_values must be [B, 3, %lld, %lld] (the "
                       "preprocessed image), got %s", (long long)s, (long long)s, dr_shape_str(x));
    if (!dr_dtype_is_float(x->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "imagereward: pixel_values must be a float tensor, got %s",
                       dr_dtype_name(x->scalar_type));
    dr_tensor *h = NULL, *t = NULL;
    dr_status st = nn_vit_embed(&v->patch, v->cls_token, v->pos_embed, x, &h);
    for (int64_t i = 0; i < v->cfg.depth && st == DR_OK; i++) {
        st = block_forward(&v->blocks[i], v->cfg.heads, h, &t);
        if (st == DR_OK) dr_swap(&h, t), t = NULL;
    }
    if (st == DR_OK) st = nn_norm_forward(&v->norm, h, out);
    dr_tensor_release(h);
    return st;
}
