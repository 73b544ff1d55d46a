/* Building blocks shared by the models, each named and laid out as its diffusers /
 * transformers module so parameter names come out as checkpoint keys:
 *   nn_linear        torch.nn.Linear (+ an optional LoRA adapter, peft's layout)
 *   nn_conv          torch.nn.Conv2d (square kernel, symmetric padding)
 *   nn_norm          GroupNorm / LayerNorm (affine)
 *   nn_attention     diffusers Attention with AttnProcessor2_0 (to_q/to_k/to_v/to_out.0)
 *   nn_resnet        diffusers ResnetBlock2D (time_embedding_norm "default")
 *   nn_transformer   diffusers Transformer2DModel of BasicTransformerBlocks (GEGLU ff)
 * Every forward takes borrowed inputs and writes a new reference to *out, recording
 * on the autograd tape through the ops it calls. `name` arguments are the module's
 * full prefix ("down_blocks.0.attentions.1"). */
#ifndef DR_MODELS_NN_H
#define DR_MODELS_NN_H

#include "model.h"

typedef struct nn_linear {
    dr_tensor *weight, *bias;       /* [out, in], [out] or NULL */
    dr_tensor *lora_down, *lora_up; /* peft lora_A [r, in], lora_B [out, r], or NULL */
    double lora_scale;              /* alpha / r */
    int64_t in, out;
} nn_linear;

typedef struct nn_conv {
    dr_tensor *weight, *bias;
    int64_t stride, padding;
} nn_conv;

typedef struct nn_norm {
    dr_tensor *weight, *bias;
    int64_t groups;  /* group norm; 0 for layer norm */
    int64_t dim;     /* channels (group norm) / normalized size (layer norm) */
    double eps;
} nn_norm;

typedef struct nn_attention {
    nn_linear to_q, to_k, to_v, to_out;
    int64_t heads, dim_head;
} nn_attention;

typedef struct nn_resnet {
    nn_norm norm1, norm2;
    nn_conv conv1, conv2, shortcut;
    nn_linear temb;
    bool has_shortcut, has_temb;
    double out_scale;  /* output_scale_factor */
} nn_resnet;

typedef struct nn_transformer_block {
    nn_norm norm1, norm2, norm3;
    nn_attention attn1, attn2;
    nn_linear ff_in, ff_out;  /* ff.net.0.proj (GEGLU, 2 x inner), ff.net.2 */
} nn_transformer_block;

typedef struct nn_transformer {
    nn_norm norm;
    bool linear_proj;             /* use_linear_projection */
    nn_linear proj_in_l, proj_out_l;
    nn_conv proj_in_c, proj_out_c;
    int64_t nblocks;
    nn_transformer_block *blocks; /* owned: free with nn_transformer_free */
} nn_transformer;

dr_status nn_linear_new(dr_model *m, nn_linear *l, int64_t in, int64_t out, bool bias,
                        const char *name);
dr_status nn_linear_forward(const nn_linear *l, const dr_tensor *x, dr_tensor **out);
/* Marks l as a LoRA target called `name` (dr_model_add_lora finds it there). */
dr_status nn_lora_target(dr_model *m, nn_linear *l, const char *name);

dr_status nn_conv_new(dr_model *m, nn_conv *c, int64_t in, int64_t out, int64_t kernel,
                      int64_t stride, int64_t padding, const char *name);
/* The same without a bias (CLIP's patch embedding). */
dr_status nn_conv_new_nobias(dr_model *m, nn_conv *c, int64_t in, int64_t out, int64_t kernel,
                             int64_t stride, int64_t padding, const char *name);
dr_status nn_conv_forward(const nn_conv *c, const dr_tensor *x, dr_tensor **out);

dr_status nn_group_norm_new(dr_model *m, nn_norm *n, int64_t groups, int64_t channels, double eps,
                            const char *name);
dr_status nn_layer_norm_new(dr_model *m, nn_norm *n, int64_t dim, double eps, const char *name);
dr_status nn_norm_forward(const nn_norm *n, const dr_tensor *x, dr_tensor **out);

/* context_dim 0: self-attention. qkv_bias: to_q/k/v carry biases (VAE). */
dr_status nn_attention_new(dr_model *m, nn_attention *a, int64_t query_dim, int64_t context_dim,
                           int64_t heads, int64_t dim_head, bool qkv_bias, const char *name);
/* x [B, L, query_dim], context [B, Lk, context_dim] or NULL (self) -> [B, L, query_dim] */
dr_status nn_attention_forward(const nn_attention *a, const dr_tensor *x, const dr_tensor *context,
                               dr_tensor **out);

/* The multi-head core shared by diffusers' Attention and CLIP's: q [B, Lq, h d],
 * k, v [B, Lk, h d] split into h heads, scaled dot-product attention (is_causal,
 * scale <= 0: 1/sqrt(d)), heads merged back -> [B, Lq, h d]. */
dr_status nn_heads_attention(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                             int64_t heads, int is_causal, double scale, dr_tensor **out);
/* The same with an attention mask (sdpa's attn_mask: bool, true = attend, or float,
 * added to the scores; broadcastable to [B, heads, Lq, Lk]); NULL: none. */
dr_status nn_heads_attention_masked(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                                    int64_t heads, const dr_tensor *mask, double scale,
                                    dr_tensor **out);

/* temb_channels 0: no time embedding projection. */
dr_status nn_resnet_new(dr_model *m, nn_resnet *r, int64_t in, int64_t out, int64_t temb_channels,
                        int64_t groups, double eps, double out_scale, const char *name);
/* temb_act: silu(time embedding) [B, temb_channels] (computed once by the caller), or NULL. */
dr_status nn_resnet_forward(const nn_resnet *r, const dr_tensor *x, const dr_tensor *temb_act,
                            dr_tensor **out);

dr_status nn_transformer_new(dr_model *m, nn_transformer *t, int64_t channels, int64_t heads,
                             int64_t dim_head, int64_t cross_dim, int64_t groups, int64_t layers,
                             bool linear_proj, const char *name);
void nn_transformer_free(nn_transformer *t);
/* x [B, C, H, W], context [B, L, cross_dim] -> [B, C, H, W] */
dr_status nn_transformer_forward(const nn_transformer *t, const dr_tensor *x,
                                 const dr_tensor *context, dr_tensor **out);

/* [B, C, H, W] -> [B, H W, C] (a copy unless it is a view already), and
 * [B, H W, C] -> [B, C, H, W] contiguous: the token layout of attention. */
dr_status nn_to_tokens(const dr_tensor *x, dr_tensor **out);
dr_status nn_to_image(const dr_tensor *x, int64_t h, int64_t w, dr_tensor **out);

/* A ViT's input tokens: cat(cls expanded to [B, 1, C], patch(x) as [B, N, C]) + pos.
 * cls [C] or [1, 1, C], pos [N + 1, C] or [1, N + 1, C] (CLIP's and BLIP's layouts). */
dr_status nn_vit_embed(const nn_conv *patch, const dr_tensor *cls, const dr_tensor *pos,
                       const dr_tensor *x, dr_tensor **out);

/* The score MLP of ImageReward and of the LAION improved aesthetic predictor (the
 * same class: Linear layers at nn.Sequential indices 0, 2, 4, 6, 7, Dropouts between
 * them (identities at eval), no activations): in -> widths[0..3] -> 1. */
enum { NN_SCORE_MLP_LAYERS = 5 };
typedef struct nn_score_mlp {
    nn_linear layers[NN_SCORE_MLP_LAYERS];
} nn_score_mlp;
/* prefix: the Sequential's name ("mlp.layers", "layers"); torch.nn's init. */
dr_status nn_score_mlp_new(dr_model *m, nn_score_mlp *h, int64_t in, const int64_t *widths,
                           const char *prefix);
/* x [B, in] -> [B] */
dr_status nn_score_mlp_forward(const nn_score_mlp *h, const dr_tensor *x, dr_tensor **out);
/* The 4 hidden widths from config key `key` (a list; missing / null: the official
 * 1024, 128, 64, 16); errors name the key. */
dr_status nn_score_mlp_widths(const dr_model *m, const dr_json *cfg, const char *key, int64_t *widths);

/* CLIP's image transform on float images [B, 3, H, W] in [0, 1] (clip_image.c):
 * resize of the shorter side to `size` (antialiased bicubic), centre crop, CLIP
 * normalisation -> [B, 3, size, size]. `op` starts error messages. */
dr_status nn_clip_preprocess(const char *op, const dr_tensor *images, int64_t size, dr_tensor **out);

/* x * s as a recorded op (a 0-d float32 factor). */
dr_status nn_scale(const dr_tensor *x, double s, dr_tensor **out);

/* Gradient checkpointing of one block: runs fn(block, inputs) without keeping its
 * intermediates and recomputes it in backward (torch.utils.checkpoint). mode
 * (dr_model_checkpoint_mode): 0 fn simply runs; 1 checkpoint when an input
 * requires grad (else fn simply runs: parameters still get gradients); 2 always,
 * tying the node to the tape through a placeholder input when no input requires
 * grad, so trainable parameters inside fn get their gradients from the rerun.
 * The block must be deterministic. */
typedef dr_status (*nn_block_fn)(const void *block, const dr_tensor *const *inputs,
                                 dr_tensor **out);
dr_status nn_checkpoint(int mode, nn_block_fn fn, const void *block,
                        const dr_tensor *const *inputs, int32_t ninputs, dr_tensor **out);

#endif
