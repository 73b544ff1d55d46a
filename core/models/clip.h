/* Internals of CLIP (transformers modeling_clip.py, 5.24.0): the encoder layer both
 * towers share, the text tower (clip_text.c) and the vision tower (clip_vision.c).
 * The "clip_text" kind is the text tower alone (SD's text encoders); the "clip"
 * kind is CLIPModel: both towers, visual_projection, text_projection and
 * logit_scale. Parameter names are transformers' keys ("text_model.encoder.layers.0.
 * self_attn.q_proj.weight", "vision_model.pre_layrnorm.weight"). Not public API. */
#ifndef DR_MODELS_CLIP_H
#define DR_MODELS_CLIP_H

#include "nn.h"

typedef enum clip_act {
    CLIP_QUICK_GELU, /* x sigmoid(1.702 x) */
    CLIP_GELU,       /* exact (erf) */
    CLIP_GELU_TANH,  /* gelu_new / gelu_pytorch_tanh / gelu_fast: the tanh approximation */
    CLIP_RELU,
    CLIP_SILU
} clip_act;

/* CLIPEncoderLayer: x + mlp(layer_norm2(y)), y = x + self_attn(layer_norm1(x)) */
typedef struct clip_layer {
    nn_linear q, k, v, out; /* self_attn.{q,k,v,out}_proj */
    nn_norm ln1, ln2;       /* layer_norm1, layer_norm2 */
    nn_linear fc1, fc2;     /* mlp.fc1, mlp.fc2 */
    int64_t heads;
    double scale;           /* head_dim^-0.5 */
    clip_act act;
    int causal;             /* the text tower's causal mask */
} clip_layer;

/* The sizes of one tower's encoder, read from its config object (CLIPTextConfig /
 * CLIPVisionConfig keys); errors name the key. */
typedef struct clip_encoder_config {
    int64_t hidden, inter, layers, heads;
    double eps, factor;
    clip_act act;
} clip_encoder_config;

/* defaults: the tower's (text 512 / 2048 / 12 / 8, vision 768 / 3072 / 12 / 12) */
dr_status clip_encoder_config_read(const dr_model *m, const dr_json *cfg, const int64_t *defaults,
                                   clip_encoder_config *out);
/* Registers "<prefix>.encoder.layers.<i>" with transformers' init (std from the sizes). */
dr_status clip_layer_new(dr_model *m, clip_layer *y, const clip_encoder_config *c, int64_t i,
                         const char *prefix, bool lora, int causal);
/* An nn_checkpoint block: in[0] [B, L, hidden] -> [B, L, hidden] */
dr_status clip_layer_forward(const void *layer, const dr_tensor *const *in, dr_tensor **out);

/* ---- text tower: text_model.* ----------------------------------------------------- */
typedef struct clip_text {
    dr_tensor *token_emb, *pos_emb; /* [vocab, hidden], [max_position_embeddings, hidden] */
    int64_t vocab, hidden, max_pos, nlayers, eos;
    nn_norm final_ln;
    clip_layer *layers; /* owned */
} clip_text;

dr_status clip_text_new(dr_model *m, clip_text *c, const dr_json *cfg);
void clip_text_free(clip_text *c);
/* dr_clip_text_forward's contract (diffrl.h) on the tower. */
dr_status clip_text_run(const dr_model *m, const clip_text *c, const dr_tensor *input_ids, int32_t skip,
                        dr_tensor **hidden, dr_tensor **pooled);

/* ---- vision tower: vision_model.* ------------------------------------------------- */
typedef struct clip_vision {
    int64_t image_size, patch_size, hidden, nlayers;
    dr_tensor *class_emb, *pos_emb; /* embeddings.class_embedding [hidden], position_embedding [N + 1, hidden] */
    nn_conv patch;                  /* embeddings.patch_embedding (no bias) */
    nn_norm pre_ln, post_ln;        /* pre_layrnorm (sic), post_layernorm */
    clip_layer *layers;             /* owned */
} clip_vision;

dr_status clip_vision_new(dr_model *m, clip_vision *v, const dr_json *cfg);
void clip_vision_free(clip_vision *v);
/* pixel_values [B, 3, S, S] -> pooled [B, hidden] (post_layernorm of the class token) */
dr_status clip_vision_run(const dr_model *m, const clip_vision *v, const dr_tensor *pixel_values,
                          dr_tensor **pooled);

/* dropout / attention_dropout must be 0 (a training run would otherwise differ from
 * transformers in train mode). */
dr_status clip_check_zero(const dr_model *m, const dr_json *cfg, const char *key);

#endif
