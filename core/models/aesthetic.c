/* The LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor,
 * simple_inference.py; sac+logos+ava1-l14-linearMSE.pth), the aesthetic reward of
 * PAPER.md "Rewards", on CLIP ViT-L/14 image features (clip_vision.c, kind "clip"):
 *
 *   e     = f / ||f||_2        (numpy's normalized(): a zero norm divides by 1)
 *   score = layers(e)          Linear at Sequential indices 0, 2, 4, 6, 7:
 *                              768-1024-128-64-16-1, Dropouts between (identities at
 *                              eval), no activations (the ReLUs are commented out)
 *
 * The model is kind "aesthetic", built from {"input_size": 768, "mlp_widths": [1024,
 * 128, 64, 16]} (both optional, the official sizes by default); parameter names are
 * the .pth's keys (layers.0.weight, ...). The head is ImageReward's MLP class too
 * (nn_score_mlp in nn.c). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "../tensor/tensor_internal.h"

typedef struct aesthetic {
    int64_t input_size;
    nn_score_mlp mlp;
} aesthetic;

dr_status dr_aesthetic_build(dr_model *m, const dr_json *cfg) {
    for (size_t i = 0; i < cfg->len; i++) {
        const char *key = cfg->u.members[i].key;
        if (strcmp(key, "input_size") != 0 && strcmp(key, "mlp_widths") != 0)
            return dr_fail(DR_ERR_IO, "%s: unknown key '%s' (expected input_size, mlp_widths)", m->context, key);
    }
    aesthetic *a = calloc(1, sizeof *a);
    if (!a) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    m->impl = a;
    m->impl_free = free;
    int64_t widths[NN_SCORE_MLP_LAYERS - 1];
    DR_TRY(dr_cfg_int(m, cfg, "input_size", 768, &a->input_size));
    DR_TRY(dr_cfg_range(m, "input_size", a->input_size, 1, 1 << 16));
    DR_TRY(nn_score_mlp_widths(m, cfg, "mlp_widths", widths));
    return nn_score_mlp_new(m, &a->mlp, a->input_size, widths, "layers");
}

dr_status dr_aesthetic_forward(dr_model *m, const dr_tensor *image_features, dr_tensor **out) {
    const char *op = "aesthetic_forward";
    if (out) *out = NULL;
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    DR_TRY(dr_model_check(m, "aesthetic", op));
    DR_TRY(dr_check_tensor(image_features, op, "image_features"));
    const aesthetic *a = m->impl;
    const dr_tensor *f = image_features;
    if (f->ndim != 2 || f->sizes[0] < 1 || f->sizes[1] != a->input_size)
        return dr_fail(DR_ERR_SHAPE, "%s: image_features must be [B, %lld] (CLIP image features of the "
                       "predictor's input_size), got %s", op, (long long)a->input_size, dr_shape_str(f));
    if (!dr_dtype_is_float(f->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: image_features must be a float tensor, got %s", op,
                       dr_dtype_name(f->scalar_type));
    /* ||f|| = sqrt(sum f^2), clamped to >= FLT_MIN: a zero norm means f = 0, so the
     * quotient is 0 as with numpy's division by 1 */
    dr_tensor *sq = NULL, *ss = NULL, *norm = NULL, *safe = NULL, *e = NULL;
    dr_status st = dr_mul(f, f, &sq);
    if (st == DR_OK) st = dr_sum(sq, (int32_t[]){1}, 1, 1, &ss);
    if (st == DR_OK) st = dr_sqrt(ss, &norm);
    if (st == DR_OK) st = dr_clamp(norm, FLT_MIN, HUGE_VAL, &safe);
    if (st == DR_OK) st = dr_div(f, safe, &e);
    if (st == DR_OK) st = nn_score_mlp_forward(&a->mlp, e, out);
    dr_tensor_release(sq);
    dr_tensor_release(ss);
    dr_tensor_release(norm);
    dr_tensor_release(safe);
    dr_tensor_release(e);
    return st;
}
