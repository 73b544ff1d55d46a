/* Internals of the BLIP pieces ImageReward is made of (image-reward 1.5,
 * ImageReward/models/BLIP/): the timm-style VisionTransformer of vit.py
 * (blip_vit.c) and med.py's BertModel with cross-attention (bert.c). imagereward.c
 * puts them together with the score head. Parameter names are the keys of the
 * official ImageReward.pt ("blip.visual_encoder.blocks.0.attn.qkv.weight",
 * "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"): the
 * builders take the module prefix. Not part of the public API. */
#ifndef DR_MODELS_BLIP_H
#define DR_MODELS_BLIP_H

#include "nn.h"

/* ---- VisionTransformer (vit.py) ------------------------------------------------ */
typedef struct blip_vit_config {
    int64_t image_size, patch_size, width, depth, heads, mlp_hidden;
    double eps; /* partial(nn.LayerNorm, eps=1e-6) */
} blip_vit_config;

typedef struct blip_vit_block {
    nn_norm norm1, norm2;
    nn_linear qkv, proj; /* attn.qkv (fused q, k, v; with bias), attn.proj */
    nn_linear fc1, fc2;  /* mlp.fc1, mlp.fc2 (GELU between) */
} blip_vit_block;

typedef struct blip_vit {
    blip_vit_config cfg;
    dr_tensor *cls_token, *pos_embed; /* [1, 1, width], [1, grid^2 + 1, width] */
    nn_conv patch;                    /* patch_embed.proj: kernel = stride = patch_size */
    blip_vit_block *blocks;           /* owned */
    nn_norm norm;
} blip_vit;

/* Reads a vision config object (keys image_size, patch_size, hidden_size,
 * num_hidden_layers, num_attention_heads, mlp_ratio, layer_norm_eps; NULL or a
 * missing key: ViT-L/16 at 224 as create_vit('large')); errors name the key. */
dr_status blip_vit_config_read(const dr_model *m, const dr_json *cfg, blip_vit_config *out);
dr_status blip_vit_new(dr_model *m, blip_vit *v, const blip_vit_config *cfg, const char *prefix);
void blip_vit_free(blip_vit *v);
/* pixel_values [B, 3, image_size, image_size] -> [B, grid^2 + 1, width] (after norm) */
dr_status blip_vit_forward(const blip_vit *v, const dr_tensor *pixel_values, dr_tensor **out);

/* ---- BertModel (med.py), encoder with cross-attention to image tokens ---------- */
typedef enum bert_act { BERT_GELU, BERT_GELU_TANH, BERT_RELU } bert_act;

typedef struct bert_attention {
    nn_linear query, key, value; /* self.{query,key,value} */
    nn_linear dense;             /* output.dense */
    nn_norm norm;                /* output.LayerNorm */
} bert_attention;

typedef struct bert_layer {
    bert_attention self_attn, cross_attn; /* attention, crossattention */
    nn_linear inter, out;                 /* intermediate.dense, output.dense */
    nn_norm out_norm;                     /* output.LayerNorm */
} bert_layer;

typedef struct bert {
    int64_t vocab, hidden, heads, layers, inter, max_pos, encoder_width;
    double eps;
    bert_act act;
    dr_tensor *word_emb, *pos_emb; /* embeddings.{word,position}_embeddings.weight */
    nn_norm emb_norm;              /* embeddings.LayerNorm */
    bert_layer *layer;             /* owned */
} bert;

/* Reads med_config.json's object; encoder_width is the image encoder's width (as
 * BLIP_Pretrain overrides the config's encoder_width with vision_width). */
dr_status bert_new(dr_model *m, bert *b, const dr_json *med_config, int64_t encoder_width,
                   const char *prefix);
void bert_free(bert *b);
/* input_ids int64 [B, L], attention_mask [B, L] (1 attend, 0 padding; any real
 * dtype) or NULL (all ones), encoder_hidden_states [B, N, encoder_width] (every
 * image token attended) -> last_hidden_state [B, L, hidden]. */
dr_status bert_forward(const bert *b, const dr_tensor *input_ids, const dr_tensor *attention_mask,
                       const dr_tensor *encoder_hidden_states, dr_tensor **out);

#endif
