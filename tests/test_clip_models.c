/* CLIP (kind "clip") and the LAION aesthetic predictor (kind "aesthetic") at the C
 * API, without Lua: the predictor's forward equals its formula on hand-set weights
 * (L2 normalisation, five linears without activations), a zero feature row scores
 * the biases (numpy's normalized() divides a zero norm by 1: no NaN), a tiny CLIP
 * gives [B, projection_dim] features whose scale does not matter to the cosine, and
 * bad configs and inputs fail with messages naming the key or shape. Parity with
 * transformers / open_clip is spec/clip_reward_spec.lua's job. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

static const dr_device CPU = {DR_CPU, 0};

static dr_model *create(const char *kind, const char *cfg, uint64_t seed) {
    dr_model *m = NULL;
    if (!CHECK_OK(dr_model_create(kind, cfg, strlen(cfg), "test", seed, &m))) return NULL;
    return m;
}

static dr_tensor *param(dr_model *m, const char *name) {
    int64_t i = dr_model_find_param(m, name);
    CHECK(i >= 0);
    return i >= 0 ? dr_model_param(m, i) : NULL;
}

/* every weight and bias of layer `index` set to v */
static void fill_layer(dr_model *m, int index, double w, double b) {
    char name[64];
    snprintf(name, sizeof name, "layers.%d.weight", index);
    CHECK_OK(dr_tensor_fill_(param(m, name), w));
    snprintf(name, sizeof name, "layers.%d.bias", index);
    CHECK_OK(dr_tensor_fill_(param(m, name), b));
}

static void test_aesthetic_formula(void) {
    dr_model *m = create("aesthetic", "{\"input_size\": 2, \"mlp_widths\": [3, 2, 2, 1]}", 0);
    if (!m) return;
    CHECK_EQ_INT(dr_model_param_count(m), 10);
    /* 2 -> 3 -> 2 -> 2 -> 1 -> 1, every weight w_l and bias b_l constant: with e the
     * normalised row, h1 = 3 copies of w0 (e1 + e2) + b0, and so on */
    const double w[5] = {0.5, -1.0, 0.25, 2.0, 3.0}, b[5] = {0.1, 0.2, -0.3, 0.0, 0.5};
    const int index[5] = {0, 2, 4, 6, 7};
    for (int i = 0; i < 5; i++) fill_layer(m, index[i], w[i], b[i]);
    const double feats[4] = {3.0, 4.0, 0.0, 0.0};
    dr_tensor *f = NULL, *s = NULL;
    if (!CHECK_OK(dr_tensor_from_f64(feats, (int64_t[]){2, 2}, 2, DR_F32, CPU, &f))) return;
    if (CHECK_OK(dr_aesthetic_forward(m, f, &s))) {
        CHECK_EQ_INT(s->ndim, 1);
        CHECK_EQ_INT(s->sizes[0], 2);
        double got[2];
        CHECK_OK(dr_tensor_to_f64(s, got, 2));
        const int fan[5] = {2, 3, 2, 2, 1};
        for (int r = 0; r < 2; r++) {
            double e_sum = r == 0 ? (3.0 + 4.0) / 5.0 : 0.0, h = e_sum * w[0] + b[0];
            for (int i = 1; i < 5; i++) h = fan[i] * h * w[i] + b[i];
            CHECK_NEAR(got[r], h, 1e-5);
        }
        dr_tensor_release(s);
    }
    CHECK_FAILS(dr_aesthetic_forward(m, NULL, &s), DR_ERR_ARG, "image_features");
    dr_tensor *bad = NULL;
    if (CHECK_OK(dr_tensor_empty((int64_t[]){2, 3}, 2, DR_F32, CPU, &bad))) {
        CHECK_FAILS(dr_aesthetic_forward(m, bad, &s), DR_ERR_SHAPE, "image_features must be [B, 2]");
        dr_tensor_release(bad);
    }
    CHECK_FAILS(dr_aesthetic_forward(m, f, NULL), DR_ERR_ARG, "out is NULL");
    CHECK_FAILS(dr_clip_preprocess(m, f, &s), DR_ERR_ARG, "expects a clip model, got a aesthetic model");
    dr_tensor_release(f);
    dr_model_free(m);
}

static const char *TINY_CLIP =
    "{\"projection_dim\": 6, \"text_config\": {\"vocab_size\": 10, \"hidden_size\": 8, "
    "\"intermediate_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
    "\"max_position_embeddings\": 5, \"eos_token_id\": 9}, \"vision_config\": {\"hidden_size\": 8, "
    "\"intermediate_size\": 16, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"image_size\": 8, "
    "\"patch_size\": 4, \"hidden_act\": \"gelu\"}}";

static void test_tiny_clip(void) {
    dr_model *m = create("clip", TINY_CLIP, 7);
    if (!m) return;
    CHECK(dr_model_find_param(m, "vision_model.pre_layrnorm.weight") >= 0);
    CHECK(dr_model_find_param(m, "vision_model.embeddings.patch_embedding.bias") < 0);
    dr_tensor *img = NULL, *px = NULL, *fi = NULL, *ids = NULL, *ft = NULL;
    if (CHECK_OK(dr_tensor_full((int64_t[]){3, 3, 12, 10}, 4, DR_F32, CPU, 0.5, &img)) &&
        CHECK_OK(dr_clip_preprocess(m, img, &px))) {
        CHECK_EQ_INT(px->sizes[2], 8);
        CHECK_EQ_INT(px->sizes[3], 8);
        if (CHECK_OK(dr_clip_image_features(m, px, &fi))) {
            CHECK_EQ_INT(fi->ndim, 2);
            CHECK_EQ_INT(fi->sizes[0], 3);
            CHECK_EQ_INT(fi->sizes[1], 6);
        }
    }
    const double id[2 * 4] = {8, 1, 2, 9, 8, 3, 9, 9};
    if (CHECK_OK(dr_tensor_from_f64(id, (int64_t[]){2, 4}, 2, DR_I64, CPU, &ids)) &&
        CHECK_OK(dr_clip_text_features(m, ids, &ft))) {
        CHECK_EQ_INT(ft->sizes[0], 2);
        CHECK_EQ_INT(ft->sizes[1], 6);
    }
    dr_tensor *none = NULL;
    CHECK_FAILS(dr_clip_image_features(m, img, &none), DR_ERR_SHAPE, "pixel_values must be [B, 3, 8, 8]");
    CHECK_FAILS(dr_clip_text_features(m, NULL, &none), DR_ERR_ARG, "input_ids");
    CHECK(none == NULL);
    dr_tensor_release(img);
    dr_tensor_release(px);
    dr_tensor_release(fi);
    dr_tensor_release(ids);
    dr_tensor_release(ft);
    dr_model_free(m);
}

static void test_bad_configs(void) {
    dr_model *m = NULL;
    const char *c1 = "{\"vision_config\": {\"image_size\": 30, \"patch_size\": 4}}";
    CHECK_FAILS(dr_model_create("clip", c1, strlen(c1), "c1", 0, &m), DR_ERR_IO,
                "image_size 30 is not a multiple of patch_size 4");
    const char *c2 = "{\"vision_config\": {\"num_channels\": 4}}";
    CHECK_FAILS(dr_model_create("clip", c2, strlen(c2), "c2", 0, &m), DR_ERR_IO,
                "'vision_config.num_channels' = 4 is out of range [3, 3]");
    const char *c3 = "{\"text_config\": 3}";
    CHECK_FAILS(dr_model_create("clip", c3, strlen(c3), "c3", 0, &m), DR_ERR_IO,
                "text_config must be a JSON object, got");
    const char *c4 = "{\"vision_config\": {\"hidden_act\": \"tanh\"}}";
    CHECK_FAILS(dr_model_create("clip", c4, strlen(c4), "c4", 0, &m), DR_ERR_UNSUPPORTED,
                "hidden_act 'tanh' is not supported");
    const char *a1 = "{\"mlp_widths\": [1, 2, 3]}";
    CHECK_FAILS(dr_model_create("aesthetic", a1, strlen(a1), "a1", 0, &m), DR_ERR_IO,
                "mlp_widths has 3 entries, expected 4");
    const char *a2 = "{\"input_size\": 0}";
    CHECK_FAILS(dr_model_create("aesthetic", a2, strlen(a2), "a2", 0, &m), DR_ERR_IO,
                "'input_size' = 0 is out of range");
    CHECK(m == NULL);
}

int main(void) {
    test_aesthetic_formula();
    test_tiny_clip();
    test_bad_configs();
    return check_summary("test_clip_models");
}
