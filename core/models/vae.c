/* AutoencoderKL (diffusers src/diffusers/models/autoencoders/autoencoder_kl.py, with
 * Encoder / Decoder of autoencoders/vae.py), the SD 1.x / 2.x configuration:
 * DownEncoderBlock2D / UpDecoderBlock2D, UNetMidBlock2D, no time embedding.
 *
 *   encoder: h = conv_in(x)
 *            down: per block, layers x resnet; then (not in the last block)
 *                  Downsample2D: zero-pad right and bottom by 1, 3x3 conv, stride 2
 *            mid:  resnet, attention, resnet
 *            h = conv_out(silu(conv_norm_out(h)))            [B, 2 latent, H/f, W/f]
 *   encode:  moments = quant_conv(h); mean, logvar = moments.chunk(2, dim 1);
 *            logvar = clamp(logvar, -30, 20)               (DiagonalGaussianDistribution)
 *   decode:  h = conv_in(post_quant_conv(z)); mid; up: per block, layers + 1 resnets,
 *            then (not in the last block) Upsample2D: nearest 2x, 3x3 conv;
 *            out = conv_out(silu(conv_norm_out(h)))
 * Every resnet and norm uses eps 1e-6 (resnet_eps of vae.py). The mid-block
 * attention (attention_processor.py, Attention with group_norm, residual_connection,
 * bias, AttnProcessor2_0) is one head of C dims over the H W positions:
 *   y = x + to_out.0(sdpa(to_q(t), to_k(t), to_v(t))),  t = tokens(group_norm(x))
 * (rescale_output_factor is 1 in the VAE). scaling_factor / shift_factor are read
 * for validation only: the caller scales latents, as the pipelines do. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "../tensor/tensor_internal.h"

enum { VAE_MAX_BLOCKS = 8, VAE_MAX_LAYERS = 8 };

static const double VAE_EPS = 1e-6;
static const double LOGVAR_MIN = -30.0, LOGVAR_MAX = 20.0;

/* Attention of UNetMidBlock2D: group_norm + a single-head self-attention. */
typedef struct vae_attention {
    nn_norm norm;
    nn_attention attn;
} vae_attention;

typedef struct vae_mid {
    nn_resnet res[2];
    vae_attention attn;
    bool has_attn; /* mid_block_add_attention */
} vae_mid;

typedef struct vae_block {
    int64_t nlayers;
    nn_resnet res[VAE_MAX_LAYERS + 1];
    bool resample; /* downsampler / upsampler */
    nn_conv conv;  /* its conv */
} vae_block;

typedef struct vae {
    int64_t nblocks, in_channels, out_channels, latent;
    nn_conv enc_conv_in, enc_conv_out, dec_conv_in, dec_conv_out;
    nn_norm enc_norm_out, dec_norm_out;
    vae_block down[VAE_MAX_BLOCKS], up[VAE_MAX_BLOCKS];
    vae_mid enc_mid, dec_mid;
    bool has_quant, has_post_quant;
    nn_conv quant, post_quant;
} vae;

/* Options of AutoencoderKL this implementation does not do: each must be absent,
 * null, false, or the given default. latents_mean / latents_std belong to other
 * pipelines (SDXL-style latent normalisation), not to SD 1.x / 2.x. */
static const struct { const char *key, *dflt; } unsupported[] = {
    {"act_fn", "silu"},
    {"latents_mean", NULL},
    {"latents_std", NULL},
};

static dr_status check_int(const dr_model *m, const char *key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' = %lld is out of range [%lld, %lld]", m->context,
                       key, (long long)v, (long long)lo, (long long)hi);
    return DR_OK;
}

/* A block-type list (default: one block of dflt); every entry must be dflt. */
static dr_status block_types(const dr_model *m, const dr_json *cfg, const char *key,
                             const char *dflt, int64_t *n) {
    const dr_json *v = dr_json_get(cfg, key);
    if (!v || v->type == DR_JSON_NULL) {
        *n = 1;
        return DR_OK;
    }
    const char *types[VAE_MAX_BLOCKS];
    DR_TRY(dr_cfg_str_list(m, cfg, key, types, VAE_MAX_BLOCKS, n));
    for (int64_t i = 0; i < *n; i++)
        if (strcmp(types[i], dflt) != 0)
            return dr_fail(DR_ERR_UNSUPPORTED, "%s: %s[%lld] = '%s' is not supported (only %s)",
                           m->context, key, (long long)i, types[i], dflt);
    return DR_OK;
}

static dr_status mid_new(dr_model *m, vae_mid *mid, int64_t channels, int64_t groups, bool attn,
                         const char *prefix) {
    char name[256];
    /* UNetMidBlock2D registers its attentions before its resnets (module order). */
    mid->has_attn = attn;
    if (attn) {
        snprintf(name, sizeof name, "%s.mid_block.attentions.0.group_norm", prefix);
        DR_TRY(nn_group_norm_new(m, &mid->attn.norm, groups, channels, VAE_EPS, name));
        snprintf(name, sizeof name, "%s.mid_block.attentions.0", prefix);
        DR_TRY(nn_attention_new(m, &mid->attn.attn, channels, 0, 1, channels, true, name));
    }
    for (int64_t r = 0; r < 2; r++) {
        snprintf(name, sizeof name, "%s.mid_block.resnets.%lld", prefix, (long long)r);
        DR_TRY(nn_resnet_new(m, &mid->res[r], channels, channels, 0, groups, VAE_EPS, 1.0, name));
    }
    return DR_OK;
}

dr_status dr_vae_build(dr_model *m, const dr_json *cfg) {
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        DR_TRY(dr_cfg_require_default(m, cfg, unsupported[i].key, unsupported[i].dflt));
    vae *v = calloc(1, sizeof *v);
    if (!v) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    m->impl = v;
    m->impl_free = free;

    int64_t nup = 0, layers, groups;
    DR_TRY(block_types(m, cfg, "down_block_types", "DownEncoderBlock2D", &v->nblocks));
    DR_TRY(block_types(m, cfg, "up_block_types", "UpDecoderBlock2D", &nup));
    int64_t nb = v->nblocks;
    if (nup != nb)
        return dr_fail(DR_ERR_IO, "%s: %lld down_block_types but %lld up_block_types", m->context,
                       (long long)nb, (long long)nup);
    int64_t channels[VAE_MAX_BLOCKS];
    const dr_json *boc = dr_json_get(cfg, "block_out_channels");
    if (boc && boc->type != DR_JSON_NULL && (boc->type != DR_JSON_ARRAY || (int64_t)boc->len != nb))
        return dr_fail(DR_ERR_IO, "%s: config key 'block_out_channels' must list %lld integers (one per block)",
                       m->context, (long long)nb);
    DR_TRY(dr_cfg_int_list(m, cfg, "block_out_channels", nb, 64, channels));
    DR_TRY(dr_cfg_int(m, cfg, "in_channels", 3, &v->in_channels));
    DR_TRY(dr_cfg_int(m, cfg, "out_channels", 3, &v->out_channels));
    DR_TRY(dr_cfg_int(m, cfg, "latent_channels", 4, &v->latent));
    DR_TRY(dr_cfg_int(m, cfg, "layers_per_block", 1, &layers));
    DR_TRY(dr_cfg_int(m, cfg, "norm_num_groups", 32, &groups));
    bool add_attn, force_upcast;
    double scaling, shift;
    DR_TRY(dr_cfg_bool(m, cfg, "use_quant_conv", true, &v->has_quant));
    DR_TRY(dr_cfg_bool(m, cfg, "use_post_quant_conv", true, &v->has_post_quant));
    DR_TRY(dr_cfg_bool(m, cfg, "mid_block_add_attention", true, &add_attn));
    DR_TRY(dr_cfg_bool(m, cfg, "force_upcast", true, &force_upcast)); /* always float32 here */
    DR_TRY(dr_cfg_num(m, cfg, "scaling_factor", 0.18215, &scaling));
    DR_TRY(dr_cfg_num(m, cfg, "shift_factor", 0.0, &shift));
    DR_TRY(check_int(m, "in_channels", v->in_channels, 1, 1 << 16));
    DR_TRY(check_int(m, "out_channels", v->out_channels, 1, 1 << 16));
    DR_TRY(check_int(m, "latent_channels", v->latent, 1, 1 << 16));
    DR_TRY(check_int(m, "layers_per_block", layers, 1, VAE_MAX_LAYERS - 1));
    DR_TRY(check_int(m, "norm_num_groups", groups, 1, 1 << 16));
    for (int64_t i = 0; i < nb; i++) DR_TRY(check_int(m, "block_out_channels", channels[i], 1, 1 << 16));

    /* encoder (vae.py Encoder: double_z, downsample_padding 0) */
    char name[256];
    int64_t c0 = channels[0], cl = channels[nb - 1];
    DR_TRY(nn_conv_new(m, &v->enc_conv_in, v->in_channels, c0, 3, 1, 1, "encoder.conv_in"));
    int64_t out_ch = c0;
    for (int64_t i = 0; i < nb; i++) {
        vae_block *b = &v->down[i];
        int64_t in_ch = out_ch;
        out_ch = channels[i];
        b->nlayers = layers;
        for (int64_t l = 0; l < b->nlayers; l++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%lld.resnets.%lld", (long long)i, (long long)l);
            DR_TRY(nn_resnet_new(m, &b->res[l], l == 0 ? in_ch : out_ch, out_ch, 0, groups, VAE_EPS, 1.0,
                                 name));
        }
        if (i < nb - 1) {
            b->resample = true;
            snprintf(name, sizeof name, "encoder.down_blocks.%lld.downsamplers.0.conv", (long long)i);
            DR_TRY(nn_conv_new(m, &b->conv, out_ch, out_ch, 3, 2, 0, name));
        }
    }
    DR_TRY(mid_new(m, &v->enc_mid, cl, groups, add_attn, "encoder"));
    DR_TRY(nn_group_norm_new(m, &v->enc_norm_out, groups, cl, VAE_EPS, "encoder.conv_norm_out"));
    DR_TRY(nn_conv_new(m, &v->enc_conv_out, cl, 2 * v->latent, 3, 1, 1, "encoder.conv_out"));

    /* decoder (vae.py Decoder, norm_type "group"): its up_blocks list is registered
     * before mid_block, so their parameters come first in module order */
    DR_TRY(nn_conv_new(m, &v->dec_conv_in, v->latent, cl, 3, 1, 1, "decoder.conv_in"));
    out_ch = cl;
    for (int64_t i = 0; i < nb; i++) {
        vae_block *b = &v->up[i];
        int64_t prev_out = out_ch;
        out_ch = channels[nb - 1 - i];
        b->nlayers = layers + 1;
        for (int64_t l = 0; l < b->nlayers; l++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%lld.resnets.%lld", (long long)i, (long long)l);
            DR_TRY(nn_resnet_new(m, &b->res[l], l == 0 ? prev_out : out_ch, out_ch, 0, groups, VAE_EPS,
                                 1.0, name));
        }
        if (i < nb - 1) {
            b->resample = true;
            snprintf(name, sizeof name, "decoder.up_blocks.%lld.upsamplers.0.conv", (long long)i);
            DR_TRY(nn_conv_new(m, &b->conv, out_ch, out_ch, 3, 1, 1, name));
        }
    }
    DR_TRY(mid_new(m, &v->dec_mid, cl, groups, add_attn, "decoder"));
    DR_TRY(nn_group_norm_new(m, &v->dec_norm_out, groups, c0, VAE_EPS, "decoder.conv_norm_out"));
    DR_TRY(nn_conv_new(m, &v->dec_conv_out, c0, v->out_channels, 3, 1, 1, "decoder.conv_out"));

    if (v->has_quant)
        DR_TRY(nn_conv_new(m, &v->quant, 2 * v->latent, 2 * v->latent, 1, 1, 0, "quant_conv"));
    if (v->has_post_quant)
        DR_TRY(nn_conv_new(m, &v->post_quant, v->latent, v->latent, 1, 1, 0, "post_quant_conv"));
    return DR_OK;
}

/* ---- forward pieces ------------------------------------------------------------ */
/* y = x + to_image(attention(tokens(group_norm(x)))) */
static dr_status attention_forward(const vae_attention *a, const dr_tensor *x, dr_tensor **out) {
    *out = NULL;
    int64_t h = x->sizes[2], w = x->sizes[3];
    dr_tensor *n = NULL, *t = NULL;
    dr_status st = nn_norm_forward(&a->norm, x, &n);
    if (st == DR_OK) st = nn_to_tokens(n, &t), dr_swap(&n, t), t = NULL;
    if (st == DR_OK) st = nn_attention_forward(&a->attn, n, NULL, &t), dr_swap(&n, t), t = NULL;
    if (st == DR_OK) st = nn_to_image(n, h, w, &t), dr_swap(&n, t), t = NULL;
    if (st == DR_OK) st = dr_add(n, x, 1.0, out);
    dr_tensor_release(n);
    return st;
}

/* F.pad(x, (0, 1, 0, 1)): one zero column on the right, one zero row at the bottom
 * (Downsample2D with padding 0), as two concatenations so autograd sees it. */
static dr_status pad_right_bottom(const dr_tensor *x, dr_tensor **out) {
    *out = NULL;
    int64_t b = x->sizes[0], c = x->sizes[1], h = x->sizes[2], w = x->sizes[3];
    dr_tensor *col = NULL, *row = NULL, *wide = NULL;
    dr_status st = dr_tensor_full((int64_t[]){b, c, h, 1}, 4, x->scalar_type, x->device, 0.0, &col);
    if (st == DR_OK) st = dr_cat((const dr_tensor *[]){x, col}, 2, 3, &wide);
    if (st == DR_OK)
        st = dr_tensor_full((int64_t[]){b, c, 1, w + 1}, 4, x->scalar_type, x->device, 0.0, &row);
    if (st == DR_OK) st = dr_cat((const dr_tensor *[]){wide, row}, 2, 2, out);
    dr_tensor_release(col);
    dr_tensor_release(row);
    dr_tensor_release(wide);
    return st;
}

/* nn_checkpoint adapters: one input each */
static dr_status resnet_fn(const void *block, const dr_tensor *const *in, dr_tensor **out) {
    return nn_resnet_forward(block, in[0], NULL, out);
}
static dr_status attention_fn(const void *block, const dr_tensor *const *in, dr_tensor **out) {
    return attention_forward(block, in[0], out);
}

/* *h = f(*h) for the checkpointable blocks */
static dr_status run_resnet(int ckpt, const nn_resnet *r, dr_tensor **h) {
    dr_tensor *t = NULL;
    DR_TRY(nn_checkpoint(ckpt, resnet_fn, r, (const dr_tensor *[]){*h}, 1, &t));
    dr_swap(h, t);
    return DR_OK;
}

static dr_status run_mid(int ckpt, const vae_mid *mid, dr_tensor **h) {
    DR_TRY(run_resnet(ckpt, &mid->res[0], h));
    if (mid->has_attn) {
        dr_tensor *t = NULL;
        DR_TRY(nn_checkpoint(ckpt, attention_fn, &mid->attn, (const dr_tensor *[]){*h}, 1, &t));
        dr_swap(h, t);
    }
    return run_resnet(ckpt, &mid->res[1], h);
}

/* *h = conv_out(silu(norm(*h))) */
static dr_status run_out(const nn_norm *norm, const nn_conv *conv, dr_tensor **h) {
    dr_tensor *t = NULL;
    DR_TRY(nn_norm_forward(norm, *h, &t));
    dr_swap(h, t);
    DR_TRY(dr_silu(*h, &t));
    dr_swap(h, t);
    DR_TRY(nn_conv_forward(conv, *h, &t));
    dr_swap(h, t);
    return DR_OK;
}

/* x -> moments [B, 2 latent, H/f, W/f]; *h is the caller's to release */
static dr_status encoder_forward(const vae *v, int ckpt, const dr_tensor *x, dr_tensor **h) {
    dr_tensor *t = NULL;
    DR_TRY(nn_conv_forward(&v->enc_conv_in, x, h));
    for (int64_t i = 0; i < v->nblocks; i++) {
        const vae_block *b = &v->down[i];
        for (int64_t l = 0; l < b->nlayers; l++) DR_TRY(run_resnet(ckpt, &b->res[l], h));
        if (b->resample) {
            DR_TRY(pad_right_bottom(*h, &t));
            dr_swap(h, t);
            DR_TRY(nn_conv_forward(&b->conv, *h, &t));
            dr_swap(h, t);
        }
    }
    DR_TRY(run_mid(ckpt, &v->enc_mid, h));
    DR_TRY(run_out(&v->enc_norm_out, &v->enc_conv_out, h));
    if (v->has_quant) {
        DR_TRY(nn_conv_forward(&v->quant, *h, &t));
        dr_swap(h, t);
    }
    return DR_OK;
}

/* z -> image; *h is the caller's to release */
static dr_status decoder_forward(const vae *v, int ckpt, const dr_tensor *z, dr_tensor **h) {
    dr_tensor *t = NULL;
    if (v->has_post_quant) {
        DR_TRY(nn_conv_forward(&v->post_quant, z, &t));
        dr_status st = nn_conv_forward(&v->dec_conv_in, t, h);
        dr_tensor_release(t);
        DR_TRY(st);
    } else {
        DR_TRY(nn_conv_forward(&v->dec_conv_in, z, h));
    }
    DR_TRY(run_mid(ckpt, &v->dec_mid, h));
    for (int64_t i = 0; i < v->nblocks; i++) {
        const vae_block *b = &v->up[i];
        for (int64_t l = 0; l < b->nlayers; l++) DR_TRY(run_resnet(ckpt, &b->res[l], h));
        if (b->resample) {
            DR_TRY(dr_upsample_nearest2d(*h, 2, 2, &t));
            dr_swap(h, t);
            DR_TRY(nn_conv_forward(&b->conv, *h, &t));
            dr_swap(h, t);
        }
    }
    return run_out(&v->dec_norm_out, &v->dec_conv_out, h);
}

/* The input must have the parameters' dtype and device (float32 on the CPU unless
 * the model was moved): a clearer message than the first conv's. */
static dr_status check_like_params(const dr_tensor *t, const dr_tensor *weight, const char *op,
                                   const char *arg) {
    if (t->scalar_type != weight->scalar_type || !dr_device_eq(t->device, weight->device))
        return dr_fail(DR_ERR_ARG, "vae: %s expects %s as %s on %s (the model's parameters), got %s %s on %s",
                       op, arg, dr_dtype_name(weight->scalar_type), dr_device_str(weight->device),
                       dr_dtype_name(t->scalar_type), dr_shape_str(t), dr_device_str(t->device));
    return DR_OK;
}

dr_status dr_vae_encode(dr_model *m, const dr_tensor *x, dr_tensor **mean, dr_tensor **logvar) {
    if (mean) *mean = NULL;
    if (logvar) *logvar = NULL;
    DR_TRY(dr_model_check(m, "vae", "vae_encode"));
    DR_TRY(dr_check_tensor(x, "vae_encode", "x"));
    const vae *v = m->impl;
    int64_t f = (int64_t)1 << (v->nblocks - 1);
    if (x->ndim != 4 || x->sizes[1] != v->in_channels || x->sizes[2] == 0 || x->sizes[3] == 0 ||
        x->sizes[2] % f != 0 || x->sizes[3] % f != 0)
        return dr_fail(DR_ERR_SHAPE, "vae: encode expects x [B, %lld, H, W] (in_channels %lld) with H and W "
                       "positive multiples of %lld, got %s", (long long)v->in_channels,
                       (long long)v->in_channels, (long long)f, dr_shape_str(x));
    DR_TRY(check_like_params(x, v->enc_conv_in.weight, "encode", "x"));
    dr_tensor *h = NULL, *part = NULL;
    dr_status st = encoder_forward(v, dr_model_checkpoint_mode(m), x, &h);
    if (st == DR_OK && mean) {
        st = dr_tensor_narrow(h, 1, 0, v->latent, &part);
        if (st == DR_OK) st = dr_tensor_contiguous(part, mean);
        dr_drop(&part);
    }
    if (st == DR_OK && logvar) {
        st = dr_tensor_narrow(h, 1, v->latent, v->latent, &part);
        if (st == DR_OK) st = dr_clamp(part, LOGVAR_MIN, LOGVAR_MAX, logvar);
        dr_drop(&part);
    }
    dr_tensor_release(h);
    if (st != DR_OK) {
        if (mean) dr_drop(mean);
        if (logvar) dr_drop(logvar);
    }
    return st;
}

dr_status dr_vae_decode(dr_model *m, const dr_tensor *z, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "vae_decode"));
    DR_TRY(dr_model_check(m, "vae", "vae_decode"));
    DR_TRY(dr_check_tensor(z, "vae_decode", "z"));
    const vae *v = m->impl;
    if (z->ndim != 4 || z->sizes[1] != v->latent || z->sizes[2] == 0 || z->sizes[3] == 0)
        return dr_fail(DR_ERR_SHAPE, "vae: decode expects z [B, %lld, h, w] (latent_channels %lld), got %s",
                       (long long)v->latent, (long long)v->latent, dr_shape_str(z));
    const dr_tensor *first = v->has_post_quant ? v->post_quant.weight : v->dec_conv_in.weight;
    DR_TRY(check_like_params(z, first, "decode", "z"));
    dr_tensor *h = NULL;
    dr_status st = decoder_forward(v, dr_model_checkpoint_mode(m), z, &h);
    if (st != DR_OK) {
        dr_tensor_release(h);
        return st;
    }
    *out = h;
    return DR_OK;
}
