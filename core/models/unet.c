/* UNet2DConditionModel (diffusers src/diffusers/models/unets/unet_2d_condition.py),
 * the SD 1.x / 2.x configurations: positional time embedding, CrossAttnDownBlock2D /
 * DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D.
 *
 *   emb  = linear_2(silu(linear_1(sinusoid(t))))      sinusoid as get_timestep_embedding
 *   h    = conv_in(x);  skips = [h]
 *   down: per block, resnet (+ transformer) per layer, each output pushed to skips;
 *         then a stride-2 conv (not in the last block), pushed too
 *   mid:  resnet, transformer, resnet
 *   up:   per block, layers + 1 times h = resnet(cat(h, skips.pop())) (+ transformer);
 *         then nearest 2x + conv (not in the last block)
 *   out  = conv_out(silu(conv_norm_out(h)))
 * diffusers' naming quirk is kept: attention_head_dim (when num_attention_heads is
 * null) is the number of heads; each head has channels / heads dims. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "../autograd/autograd.h"
#include "../tensor/tensor_internal.h"

enum { UNET_MAX_BLOCKS = 8, UNET_MAX_LAYERS = 8 };

typedef struct unet_block {
    int64_t nlayers;
    nn_resnet res[UNET_MAX_LAYERS + 1];
    nn_transformer attn[UNET_MAX_LAYERS + 1];
    bool cross;   /* has transformers */
    bool resample;/* downsampler / upsampler */
    nn_conv conv; /* its conv */
} unet_block;

typedef struct unet {
    int64_t nblocks, in_channels, out_channels, cross_dim, time_dim;
    bool flip_sin_to_cos, center_input;
    double freq_shift;
    nn_linear time1, time2;
    nn_conv conv_in, conv_out;
    nn_norm norm_out;
    unet_block down[UNET_MAX_BLOCKS], up[UNET_MAX_BLOCKS];
    bool has_mid, mid_cross;
    nn_resnet mid_res[2];
    nn_transformer mid_attn;
    const dr_model *model;
} unet;

static void unet_free(void *p) {
    unet *u = p;
    if (!u) return;
    for (int64_t b = 0; b < UNET_MAX_BLOCKS; b++)
        for (int64_t l = 0; l <= UNET_MAX_LAYERS; l++) {
            nn_transformer_free(&u->down[b].attn[l]);
            nn_transformer_free(&u->up[b].attn[l]);
        }
    nn_transformer_free(&u->mid_attn);
    free(u);
}

/* Options of the reference class this implementation does not do: each must be
 * absent, null, false, or the given default. */
static const struct { const char *key, *dflt; } unsupported[] = {
    {"class_embed_type", NULL},       {"addition_embed_type", NULL},
    {"encoder_hid_dim", NULL},        {"encoder_hid_dim_type", NULL},
    {"time_cond_proj_dim", NULL},     {"num_class_embeds", NULL},
    {"projection_class_embeddings_input_dim", NULL},
    {"class_embeddings_concat", NULL}, {"dual_cross_attention", NULL},
    {"only_cross_attention", NULL},   {"mid_block_only_cross_attention", NULL},
    {"cross_attention_norm", NULL},   {"addition_time_embed_dim", NULL},
    {"timestep_post_act", NULL},      {"time_embedding_act_fn", NULL},
    {"time_embedding_dim", NULL},     {"resnet_skip_time_act", NULL},
    {"reverse_transformer_layers_per_block", NULL},
    {"time_embedding_type", "positional"}, {"resnet_time_scale_shift", "default"},
    {"act_fn", "silu"},               {"attention_type", "default"},
};

static dr_status check_int(const dr_model *m, const char *key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' = %lld is out of range [%lld, %lld]", m->context,
                       key, (long long)v, (long long)lo, (long long)hi);
    return DR_OK;
}

dr_status dr_unet_build(dr_model *m, const dr_json *cfg) {
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++)
        DR_TRY(dr_cfg_require_default(m, cfg, unsupported[i].key, unsupported[i].dflt));
    unet *u = calloc(1, sizeof *u);
    if (!u) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    m->impl = u;
    m->impl_free = unet_free;
    u->model = m;

    const char *down_types[UNET_MAX_BLOCKS], *up_types[UNET_MAX_BLOCKS], *mid_type = NULL;
    int64_t nup = 0;
    DR_TRY(dr_cfg_str_list(m, cfg, "down_block_types", down_types, UNET_MAX_BLOCKS, &u->nblocks));
    DR_TRY(dr_cfg_str_list(m, cfg, "up_block_types", up_types, UNET_MAX_BLOCKS, &nup));
    int64_t nb = u->nblocks;
    if (nup != nb)
        return dr_fail(DR_ERR_IO, "%s: %lld down_block_types but %lld up_block_types", m->context,
                       (long long)nb, (long long)nup);
    DR_TRY(dr_cfg_str(m, cfg, "mid_block_type", "UNetMidBlock2DCrossAttn", &mid_type));

    int64_t channels[UNET_MAX_BLOCKS], layers[UNET_MAX_BLOCKS], heads[UNET_MAX_BLOCKS],
        tlayers[UNET_MAX_BLOCKS], cross_dims[UNET_MAX_BLOCKS];
    const dr_json *boc = dr_json_get(cfg, "block_out_channels");
    if (!boc || boc->type != DR_JSON_ARRAY || (int64_t)boc->len != nb)
        return dr_fail(DR_ERR_IO, "%s: config key 'block_out_channels' must list %lld integers (one per block)",
                       m->context, (long long)nb);
    DR_TRY(dr_cfg_int_list(m, cfg, "block_out_channels", nb, 0, channels));
    DR_TRY(dr_cfg_int_list(m, cfg, "layers_per_block", nb, 2, layers));
    DR_TRY(dr_cfg_int_list(m, cfg, "transformer_layers_per_block", nb, 1, tlayers));
    DR_TRY(dr_cfg_int_list(m, cfg, "cross_attention_dim", nb, 1280, cross_dims));
    /* num_attention_heads, falling back to attention_head_dim (diffusers' naming) */
    const dr_json *nah = dr_json_get(cfg, "num_attention_heads");
    DR_TRY(dr_cfg_int_list(m, cfg, nah && nah->type != DR_JSON_NULL ? "num_attention_heads"
                                                                    : "attention_head_dim",
                           nb, 8, heads));
    for (int64_t i = 1; i < nb; i++)
        if (cross_dims[i] != cross_dims[0])
            return dr_fail(DR_ERR_UNSUPPORTED, "%s: per-block cross_attention_dim values differ", m->context);
    u->cross_dim = cross_dims[0];
    int64_t groups, down_pad, conv_in_k, conv_out_k;
    double eps, mid_scale, out_scale, dropout;
    bool linear_proj;
    DR_TRY(dr_cfg_int(m, cfg, "in_channels", 4, &u->in_channels));
    DR_TRY(dr_cfg_int(m, cfg, "out_channels", 4, &u->out_channels));
    DR_TRY(dr_cfg_int(m, cfg, "norm_num_groups", 32, &groups));
    DR_TRY(dr_cfg_num(m, cfg, "norm_eps", 1e-5, &eps));
    DR_TRY(dr_cfg_int(m, cfg, "downsample_padding", 1, &down_pad));
    DR_TRY(dr_cfg_num(m, cfg, "mid_block_scale_factor", 1.0, &mid_scale));
    DR_TRY(dr_cfg_num(m, cfg, "resnet_out_scale_factor", 1.0, &out_scale));
    DR_TRY(dr_cfg_num(m, cfg, "dropout", 0.0, &dropout));
    DR_TRY(dr_cfg_bool(m, cfg, "use_linear_projection", false, &linear_proj));
    DR_TRY(dr_cfg_bool(m, cfg, "flip_sin_to_cos", true, &u->flip_sin_to_cos));
    DR_TRY(dr_cfg_bool(m, cfg, "center_input_sample", false, &u->center_input));
    DR_TRY(dr_cfg_num(m, cfg, "freq_shift", 0.0, &u->freq_shift));
    DR_TRY(dr_cfg_int(m, cfg, "conv_in_kernel", 3, &conv_in_k));
    DR_TRY(dr_cfg_int(m, cfg, "conv_out_kernel", 3, &conv_out_k));
    if (dropout != 0.0)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: config key 'dropout' = %g is not supported (only 0)",
                       m->context, dropout);
    DR_TRY(check_int(m, "in_channels", u->in_channels, 1, 1 << 16));
    DR_TRY(check_int(m, "out_channels", u->out_channels, 1, 1 << 16));
    DR_TRY(check_int(m, "cross_attention_dim", u->cross_dim, 1, 1 << 16));
    DR_TRY(check_int(m, "conv_in_kernel", conv_in_k, 1, 7));
    DR_TRY(check_int(m, "conv_out_kernel", conv_out_k, 1, 7));
    for (int64_t i = 0; i < nb; i++) {
        DR_TRY(check_int(m, "block_out_channels", channels[i], 1, 1 << 16));
        DR_TRY(check_int(m, "layers_per_block", layers[i], 1, UNET_MAX_LAYERS - 1));
        DR_TRY(check_int(m, "transformer_layers_per_block", tlayers[i], 1, 64));
        DR_TRY(check_int(m, "num_attention_heads", heads[i], 1, channels[i]));
        if (channels[i] % heads[i] != 0)
            return dr_fail(DR_ERR_IO, "%s: block %lld: %lld channels do not split into %lld attention heads",
                           m->context, (long long)i, (long long)channels[i], (long long)heads[i]);
    }

    char name[256];
    int64_t c0 = channels[0];
    u->time_dim = 4 * c0;
    DR_TRY(nn_conv_new(m, &u->conv_in, u->in_channels, c0, conv_in_k, 1, (conv_in_k - 1) / 2, "conv_in"));
    DR_TRY(nn_linear_new(m, &u->time1, c0, u->time_dim, true, "time_embedding.linear_1"));
    DR_TRY(nn_linear_new(m, &u->time2, u->time_dim, u->time_dim, true, "time_embedding.linear_2"));

    int64_t out_ch = c0;
    for (int64_t i = 0; i < nb; i++) {
        unet_block *b = &u->down[i];
        int64_t in_ch = out_ch;
        out_ch = channels[i];
        if (strcmp(down_types[i], "CrossAttnDownBlock2D") == 0) b->cross = true;
        else if (strcmp(down_types[i], "DownBlock2D") != 0)
            return dr_fail(DR_ERR_UNSUPPORTED, "%s: down_block_types[%lld] = '%s' is not supported "
                           "(CrossAttnDownBlock2D, DownBlock2D)", m->context, (long long)i, down_types[i]);
        b->nlayers = layers[i];
        for (int64_t l = 0; l < b->nlayers; l++) {
            snprintf(name, sizeof name, "down_blocks.%lld.resnets.%lld", (long long)i, (long long)l);
            DR_TRY(nn_resnet_new(m, &b->res[l], l == 0 ? in_ch : out_ch, out_ch, u->time_dim, groups,
                                 eps, out_scale, name));
            if (b->cross) {
                snprintf(name, sizeof name, "down_blocks.%lld.attentions.%lld", (long long)i, (long long)l);
                DR_TRY(nn_transformer_new(m, &b->attn[l], out_ch, heads[i], out_ch / heads[i],
                                          u->cross_dim, groups, tlayers[i], linear_proj, name));
            }
        }
        if (i < nb - 1) {
            b->resample = true;
            snprintf(name, sizeof name, "down_blocks.%lld.downsamplers.0.conv", (long long)i);
            DR_TRY(nn_conv_new(m, &b->conv, out_ch, out_ch, 3, 2, down_pad, name));
        }
    }

    int64_t cl = channels[nb - 1];
    if (mid_type && strcmp(mid_type, "UNetMidBlock2DCrossAttn") == 0) {
        u->has_mid = u->mid_cross = true;
        DR_TRY(nn_resnet_new(m, &u->mid_res[0], cl, cl, u->time_dim, groups, eps, mid_scale,
                             "mid_block.resnets.0"));
        DR_TRY(nn_transformer_new(m, &u->mid_attn, cl, heads[nb - 1], cl / heads[nb - 1], u->cross_dim,
                                  groups, tlayers[nb - 1], linear_proj, "mid_block.attentions.0"));
        DR_TRY(nn_resnet_new(m, &u->mid_res[1], cl, cl, u->time_dim, groups, eps, mid_scale,
                             "mid_block.resnets.1"));
    } else if (mid_type) {
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: mid_block_type '%s' is not supported "
                       "(UNetMidBlock2DCrossAttn or null)", m->context, mid_type);
    }

    out_ch = channels[nb - 1];
    for (int64_t i = 0; i < nb; i++) {
        unet_block *b = &u->up[i];
        int64_t r = nb - 1 - i; /* the matching down block */
        int64_t prev_out = out_ch;
        out_ch = channels[r];
        int64_t in_ch = channels[r > 0 ? r - 1 : 0];
        if (strcmp(up_types[i], "CrossAttnUpBlock2D") == 0) b->cross = true;
        else if (strcmp(up_types[i], "UpBlock2D") != 0)
            return dr_fail(DR_ERR_UNSUPPORTED, "%s: up_block_types[%lld] = '%s' is not supported "
                           "(CrossAttnUpBlock2D, UpBlock2D)", m->context, (long long)i, up_types[i]);
        b->nlayers = layers[r] + 1;
        for (int64_t l = 0; l < b->nlayers; l++) {
            int64_t skip_ch = l == b->nlayers - 1 ? in_ch : out_ch;
            int64_t res_in = l == 0 ? prev_out : out_ch;
            snprintf(name, sizeof name, "up_blocks.%lld.resnets.%lld", (long long)i, (long long)l);
            DR_TRY(nn_resnet_new(m, &b->res[l], res_in + skip_ch, out_ch, u->time_dim, groups, eps,
                                 out_scale, name));
            if (b->cross) {
                snprintf(name, sizeof name, "up_blocks.%lld.attentions.%lld", (long long)i, (long long)l);
                DR_TRY(nn_transformer_new(m, &b->attn[l], out_ch, heads[r], out_ch / heads[r],
                                          u->cross_dim, groups, tlayers[r], linear_proj, name));
            }
        }
        if (i < nb - 1) {
            b->resample = true;
            snprintf(name, sizeof name, "up_blocks.%lld.upsamplers.0.conv", (long long)i);
            DR_TRY(nn_conv_new(m, &b->conv, out_ch, out_ch, 3, 1, 1, name));
        }
    }
    DR_TRY(nn_group_norm_new(m, &u->norm_out, groups, c0, eps, "conv_norm_out"));
    return nn_conv_new(m, &u->conv_out, c0, u->out_channels, conv_out_k, 1, (conv_out_k - 1) / 2,
                       "conv_out");
}

/* get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift), in float32
 * op for op as torch evaluates it:
 *   f_i = exp(-ln(10000) i / (dim/2 - shift)),  emb = [sin(t f), cos(t f)] (flipped: cos first) */
static dr_status timestep_embedding(const unet *u, const dr_tensor *timestep, int64_t batch,
                                    dr_device device, dr_tensor **out) {
    int64_t dim = u->time1.in, half = dim / 2;
    int64_t nt = dr_tensor_numel(timestep);
    if (!(timestep->ndim == 0 || (timestep->ndim == 1 && (nt == batch || nt == 1))))
        return dr_fail(DR_ERR_SHAPE, "unet: timestep must be 0-d, [1] or [%lld], got %s", (long long)batch,
                       dr_shape_str(timestep));
    double *ts = malloc((size_t)nt * sizeof *ts);
    if (!ts) return dr_fail(DR_ERR_OOM, "unet: out of memory");
    dr_status st = dr_tensor_to_f64(timestep, ts, nt);
    if (st == DR_OK) st = dr_tensor_full((int64_t[]){batch, dim}, 2, DR_F32, dr_cpu(), 0.0, out);
    if (st != DR_OK) {
        free(ts);
        return st;
    }
    float *e = dr_tensor_data(*out);
    float neg_log = (float)-log(10000.0), denom = (float)((double)half - u->freq_shift);
    for (int64_t b = 0; b < batch; b++) {
        float t = (float)ts[nt == 1 ? 0 : b];
        for (int64_t i = 0; i < half; i++) {
            float f = expf(((float)i * neg_log) / denom);
            float a = t * f;
            float s = sinf(a), c = cosf(a);
            e[b * dim + i] = u->flip_sin_to_cos ? c : s;
            e[b * dim + half + i] = u->flip_sin_to_cos ? s : c;
        }
    }
    free(ts);
    if (device.type != DR_CPU) { /* computed on the host, used beside the sample */
        dr_tensor *moved;
        st = dr_tensor_to_device(*out, device, &moved);
        dr_tensor_release(*out);
        *out = st == DR_OK ? moved : NULL;
    }
    return st;
}

/* nn_checkpoint adapters: inputs {x, temb_act} / {x, context} */
static dr_status resnet_fn(const void *block, const dr_tensor *const *in, dr_tensor **out) {
    return nn_resnet_forward(block, in[0], in[1], out);
}
static dr_status transformer_fn(const void *block, const dr_tensor *const *in, dr_tensor **out) {
    return nn_transformer_forward(block, in[0], in[1], out);
}

typedef struct unet_run {
    const unet *u;
    int ckpt; /* dr_model_checkpoint_mode */
    const dr_tensor *temb, *context;
    dr_tensor *skips[UNET_MAX_BLOCKS * (UNET_MAX_LAYERS + 1) + 1];
    int64_t nskips;
} unet_run;

/* h = resnet(h) [+ transformer(h)] */
static dr_status layer(unet_run *r, const nn_resnet *res, const nn_transformer *attn, dr_tensor **h) {
    dr_tensor *t = NULL;
    DR_TRY(nn_checkpoint(r->ckpt, resnet_fn, res, (const dr_tensor *[]){*h, r->temb}, 2, &t));
    dr_swap(h, t);
    if (attn) {
        DR_TRY(nn_checkpoint(r->ckpt, transformer_fn, attn, (const dr_tensor *[]){*h, r->context}, 2, &t));
        dr_swap(h, t);
    }
    return DR_OK;
}

static dr_status push_skip(unet_run *r, dr_tensor *h) {
    dr_tensor_retain(h);
    r->skips[r->nskips++] = h;
    return DR_OK;
}

static dr_status run_blocks(unet_run *r, dr_tensor **h) {
    const unet *u = r->u;
    dr_tensor *t = NULL;
    DR_TRY(push_skip(r, *h));
    for (int64_t i = 0; i < u->nblocks; i++) {
        const unet_block *b = &u->down[i];
        for (int64_t l = 0; l < b->nlayers; l++) {
            DR_TRY(layer(r, &b->res[l], b->cross ? &b->attn[l] : NULL, h));
            DR_TRY(push_skip(r, *h));
        }
        if (b->resample) {
            DR_TRY(nn_conv_forward(&b->conv, *h, &t));
            dr_swap(h, t);
            DR_TRY(push_skip(r, *h));
        }
    }
    if (u->has_mid) {
        DR_TRY(layer(r, &u->mid_res[0], &u->mid_attn, h));
        DR_TRY(layer(r, &u->mid_res[1], NULL, h));
    }
    for (int64_t i = 0; i < u->nblocks; i++) {
        const unet_block *b = &u->up[i];
        for (int64_t l = 0; l < b->nlayers; l++) {
            dr_tensor *skip = r->skips[--r->nskips];
            dr_status st = dr_cat((const dr_tensor *[]){*h, skip}, 2, 1, &t);
            dr_tensor_release(skip);
            DR_TRY(st);
            dr_swap(h, t);
            DR_TRY(layer(r, &b->res[l], b->cross ? &b->attn[l] : NULL, h));
        }
        if (b->resample) {
            DR_TRY(dr_upsample_nearest2d(*h, 2, 2, &t));
            dr_swap(h, t);
            DR_TRY(nn_conv_forward(&b->conv, *h, &t));
            dr_swap(h, t);
        }
    }
    return DR_OK;
}

dr_status dr_unet_forward(dr_model *m, const dr_tensor *sample, const dr_tensor *timestep,
                          const dr_tensor *encoder_hidden_states, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "unet_forward"));
    DR_TRY(dr_model_check(m, "unet", "unet_forward"));
    DR_TRY(dr_check_tensor(sample, "unet_forward", "sample"));
    DR_TRY(dr_check_tensor(timestep, "unet_forward", "timestep"));
    DR_TRY(dr_check_tensor(encoder_hidden_states, "unet_forward", "encoder_hidden_states"));
    const unet *u = m->impl;
    int64_t f = (int64_t)1 << (u->nblocks - 1);
    if (sample->ndim != 4 || sample->sizes[1] != u->in_channels || sample->sizes[2] % f != 0 ||
        sample->sizes[3] % f != 0 || sample->sizes[2] == 0 || sample->sizes[3] == 0)
        return dr_fail(DR_ERR_SHAPE, "unet: sample must be [B, %lld, H, W] with H and W multiples of %lld, got %s",
                       (long long)u->in_channels, (long long)f, dr_shape_str(sample));
    int64_t batch = sample->sizes[0];
    const dr_tensor *ehs = encoder_hidden_states;
    if (ehs->ndim != 3 || ehs->sizes[0] != batch || ehs->sizes[2] != u->cross_dim)
        return dr_fail(DR_ERR_SHAPE, "unet: encoder_hidden_states must be [%lld, L, %lld] (cross_attention_dim), got %s",
                       (long long)batch, (long long)u->cross_dim, dr_shape_str(ehs));

    unet_run r = {.u = u, .ckpt = dr_model_checkpoint_mode(m), .context = ehs};
    dr_tensor *t_emb = NULL, *emb = NULL, *temb = NULL, *h = NULL, *t = NULL;
    dr_status st = timestep_embedding(u, timestep, batch, sample->device, &t_emb);
    if (st == DR_OK) st = nn_linear_forward(&u->time1, t_emb, &emb);
    if (st == DR_OK) st = dr_silu(emb, &t), dr_swap(&emb, t), t = NULL;
    if (st == DR_OK) st = nn_linear_forward(&u->time2, emb, &t), dr_swap(&emb, t), t = NULL;
    if (st == DR_OK) st = dr_silu(emb, &temb);
    r.temb = temb;
    if (st == DR_OK && u->center_input) {
        st = nn_scale(sample, 2.0, &t);
        dr_tensor *one = NULL;
        if (st == DR_OK) st = dr_tensor_full(NULL, 0, DR_F32, sample->device, 1.0, &one);
        if (st == DR_OK) st = dr_sub(t, one, 1.0, &h);
        dr_drop(&t);
        dr_tensor_release(one);
        if (st == DR_OK) st = nn_conv_forward(&u->conv_in, h, &t), dr_swap(&h, t), t = NULL;
    } else if (st == DR_OK) {
        st = nn_conv_forward(&u->conv_in, sample, &h);
    }
    if (st == DR_OK) st = run_blocks(&r, &h);
    while (r.nskips > 0) dr_tensor_release(r.skips[--r.nskips]);
    if (st == DR_OK) st = nn_norm_forward(&u->norm_out, h, &t), dr_swap(&h, t), t = NULL;
    if (st == DR_OK) st = dr_silu(h, &t), dr_swap(&h, t), t = NULL;
    if (st == DR_OK) st = nn_conv_forward(&u->conv_out, h, out);
    dr_tensor_release(h);
    dr_tensor_release(t_emb);
    dr_tensor_release(emb);
    dr_tensor_release(temb);
    return st;
}
