/* layer_norm and group_norm (torch.native_layer_norm / native_group_norm and
 * their backward).
 *
 * Both normalise x over a set S of elements with the biased variance, then apply
 * an elementwise affine map (weight w and bias b, each optional):
 *   mean = E_S[x],  rstd = 1/sqrt(Var_S[x] + eps),  xhat = (x - mean) rstd,
 *   y = xhat w + b
 * layer_norm: S = the last nnorm dims (normalized_shape) of each row; w, b have
 *   that shape. mean/rstd: x.shape[:-nnorm] + [1]*nnorm.
 * group_norm: x is [N, C, *]; S = one sample's C/G channels of a group, all
 *   spatial positions; w, b are [C]. mean/rstd: [N, G].
 * mean and rstd are float32 whatever x's dtype (torch's CUDA convention; they
 * feed the backward at full precision). Backward, with g = dy w and M = |S|:
 *   dx = rstd (g - E_S[g] - xhat E_S[g xhat])
 *   dw = sum over rows/samples of dy xhat,   db = sum of dy
 * (group_norm sums dw, db over N and the spatial positions per channel.)
 * Gradients take grad_out's dtype (dx) and weight's dtype, or x's without a
 * weight (dw, db). Any of the gradient out-pointers may be NULL: not computed. */
#include <math.h>

#include "nn_f32.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* weight or bias (NULL allowed) of `op`: a float tensor of exactly `sizes`. */
static dr_status check_param(const dr_tensor *p, const dr_tensor *x, const int64_t *sizes,
                             int32_t ndim, const char *op, const char *name, const char *what) {
    if (!p) return DR_OK;
    DR_TRY(dr_nn_check_float(p, op, name));
    DR_TRY(dr_nn_check_device(x, p, op, name));
    bool same = p->ndim == ndim;
    for (int32_t d = 0; same && d < ndim; d++) same = p->sizes[d] == sizes[d];
    if (!same)
        return dr_fail(DR_ERR_SHAPE, "%s: %s has shape %s but %s is %s", op, name, dr_shape_str(p),
                       what, dr_sizes_str(sizes, ndim));
    return DR_OK;
}

static dr_status check_eps(double eps, const char *op) {
    if (!(eps >= 0) || isinf(eps))
        return dr_fail(DR_ERR_ARG, "%s: eps must be a finite number >= 0, got %g", op, eps);
    return DR_OK;
}

/* mean or rstd handed to a backward: float, `count` elements, on x's device. */
static dr_status check_stat(const dr_tensor *s, const dr_tensor *x, int64_t count, const char *op,
                            const char *name) {
    DR_TRY(dr_nn_check_float(s, op, name));
    DR_TRY(dr_nn_check_device(x, s, op, name));
    if (dr_tensor_numel(s) != count)
        return dr_fail(DR_ERR_SHAPE, "%s: %s %s should have %lld elements for input %s", op, name,
                       dr_shape_str(s), (long long)count, dr_shape_str(x));
    return DR_OK;
}

static void clear(dr_tensor **a, dr_tensor **b, dr_tensor **c) {
    if (a) *a = NULL;
    if (b) *b = NULL;
    if (c) *c = NULL;
}

/* New float32 tensors for the optional outputs whose pointers are set. */
static dr_status new_f32(dr_tensor **t, bool want, const int64_t *sizes, int32_t ndim,
                         dr_device dev, const char *op) {
    *t = NULL;
    return want ? dr_tensor_new(sizes, ndim, DR_F32, dev, op, t) : DR_OK;
}

/* ---- layer_norm ------------------------------------------------------------------- */

/* Validates x against normalized_shape; rows and cols of the [rows, cols] view. */
static dr_status layer_norm_geometry(const dr_tensor *x, const int64_t *shape, int32_t nnorm,
                                     const char *op, int64_t *rows, int64_t *cols) {
    DR_TRY(dr_check_array(shape, nnorm, op, "normalized_shape"));
    if (nnorm < 1 || nnorm > DR_MAX_DIMS)
        return dr_fail(DR_ERR_ARG, "%s: normalized_shape must have 1 to %d sizes, got %d", op,
                       DR_MAX_DIMS, nnorm);
    bool fits = x->ndim >= nnorm;
    for (int32_t i = 0; fits && i < nnorm; i++)
        fits = x->sizes[x->ndim - nnorm + i] == shape[i];
    if (!fits) {
        const char *s = dr_sizes_str(shape, nnorm);
        return dr_fail(DR_ERR_SHAPE, "%s: normalized_shape %s expects input of shape [*, %s, "
                       "got %s", op, s, s + 1, dr_shape_str(x));
    }
    *rows = 1;
    *cols = 1;
    for (int32_t d = 0; d < x->ndim; d++) *(d < x->ndim - nnorm ? rows : cols) *= x->sizes[d];
    return DR_OK;
}

/* ---- the tape ----------------------------------------------------------------
 * Inputs: x, then weight and bias where given. Saved: x, weight, mean, rstd.
 * ints: [0] has weight, [1] has bias, [2] num_groups (group) or nnorm (layer),
 * [3..] normalized_shape (layer). */
static dr_status norm_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads, bool group) {
    const dr_tensor *x, *w = NULL, *m, *r;
    DR_TRY(dr_autograd_saved(n, 0, &x));
    if (n->ints[0]) DR_TRY(dr_autograd_saved(n, 1, &w));
    DR_TRY(dr_autograd_saved(n, 2, &m));
    DR_TRY(dr_autograd_saved(n, 3, &r));
    int wi = n->ints[0] ? 1 : -1, bi = n->ints[1] ? (n->ints[0] ? 2 : 1) : -1;
    dr_tensor **gx = dr_node_needs(n, 0) ? &grads[0] : NULL;
    dr_tensor **gw = wi > 0 && dr_node_needs(n, wi) ? &grads[wi] : NULL;
    dr_tensor **gb = bi > 0 && dr_node_needs(n, bi) ? &grads[bi] : NULL;
    if (group) return dr_group_norm_backward(g, x, m, r, w, n->ints[2], gx, gw, gb);
    return dr_layer_norm_backward(g, x, &n->ints[3], (int32_t)n->ints[2], m, r, w, gx, gw, gb);
}
static dr_status layer_norm_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return norm_node_backward(n, g, grads, false);
}
static dr_status group_norm_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return norm_node_backward(n, g, grads, true);
}

/* Records out's node, then hands mean/rstd to the caller (or drops them). */
static dr_status norm_finish(dr_status st, const char *op, dr_backward_fn fn, const dr_tensor *x,
                             const dr_tensor *weight, const dr_tensor *bias, int64_t param,
                             const int64_t *shape, int32_t nshape, dr_tensor **out,
                             dr_tensor *m, dr_tensor *r, dr_tensor **mean, dr_tensor **rstd) {
    dr_node *node = NULL;
    if (st == DR_OK) {
        const dr_tensor *inputs[3] = {x, NULL, NULL};
        int32_t n = 1;
        if (weight) inputs[n++] = weight;
        if (bias) inputs[n++] = bias;
        st = dr_autograd_record(*out, op, fn, inputs, n, &node);
    }
    if (st == DR_OK && node) {
        node->ints[0] = weight != NULL;
        node->ints[1] = bias != NULL;
        node->ints[2] = param;
        for (int32_t i = 0; i < nshape; i++) node->ints[3 + i] = shape[i];
        st = dr_autograd_save(node, 0, x);
        if (st == DR_OK && weight) st = dr_autograd_save(node, 1, weight);
        if (st == DR_OK) st = dr_autograd_save(node, 2, m);
        if (st == DR_OK) st = dr_autograd_save(node, 3, r);
    }
    dr_drop_on_error(st, out);
    if (st == DR_OK && mean) *mean = m;
    else dr_tensor_release(m);
    if (st == DR_OK && rstd) *rstd = r;
    else dr_tensor_release(r);
    return st;
}

dr_status dr_layer_norm(const dr_tensor *x, const int64_t *normalized_shape, int32_t nnorm,
                        const dr_tensor *weight, const dr_tensor *bias, double eps,
                        dr_tensor **out, dr_tensor **mean, dr_tensor **rstd) {
    const char *op = "layer_norm";
    clear(mean, rstd, NULL);
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_nn_check_float(x, op, "input"));
    int64_t rows, cols;
    DR_TRY(layer_norm_geometry(x, normalized_shape, nnorm, op, &rows, &cols));
    DR_TRY(check_param(weight, x, normalized_shape, nnorm, op, "weight", "normalized_shape"));
    DR_TRY(check_param(bias, x, normalized_shape, nnorm, op, "bias", "normalized_shape"));
    DR_TRY(check_eps(eps, op));
    const dr_backend *be = dr_backend_get(x->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, layer_norm, op));

    int64_t stat_sizes[DR_MAX_DIMS];
    for (int32_t d = 0; d < x->ndim; d++) stat_sizes[d] = d < x->ndim - nnorm ? x->sizes[d] : 1;
    dr_tensor *fx = NULL, *fw = NULL, *fb = NULL, *res = NULL, *m = NULL, *r = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_nn_stage(x, true, &fx);
    if (st == DR_OK) st = dr_nn_stage(weight, true, &fw);
    if (st == DR_OK) st = dr_nn_stage(bias, true, &fb);
    if (st == DR_OK) st = dr_tensor_new(x->sizes, x->ndim, DR_F32, x->device, op, &res);
    if (st == DR_OK) st = new_f32(&m, true, stat_sizes, x->ndim, x->device, op);
    if (st == DR_OK) st = new_f32(&r, true, stat_sizes, x->ndim, x->device, op);
    if (st == DR_OK) st = be->layer_norm(res, m, r, fx, fw, fb, rows, cols, eps);
    dr_tensor_release(fx);
    dr_tensor_release(fw);
    dr_tensor_release(fb);
    st = dr_nn_finish(st, res, x->scalar_type, out);
    dr_grad_resume(grad);
    return norm_finish(st, op, layer_norm_node_backward, x, weight, bias, nnorm, normalized_shape,
                       nnorm, out, m, r, mean, rstd);
}

/* The three gradients of a norm backward, cast to their dtypes. */
static dr_status finish_grads(dr_status st, dr_tensor *gx, dr_tensor *gw, dr_tensor *gb,
                              int32_t x_dtype, int32_t param_dtype, dr_tensor **grad_x,
                              dr_tensor **grad_weight, dr_tensor **grad_bias) {
    st = dr_nn_finish(st, gx, x_dtype, grad_x);
    st = dr_nn_finish(st, gw, param_dtype, grad_weight);
    st = dr_nn_finish(st, gb, param_dtype, grad_bias);
    if (st != DR_OK) {
        if (grad_x) dr_tensor_release(*grad_x);
        if (grad_weight) dr_tensor_release(*grad_weight);
        if (grad_bias) dr_tensor_release(*grad_bias);
        clear(grad_x, grad_weight, grad_bias);
    }
    return st;
}

dr_status dr_layer_norm_backward(const dr_tensor *grad_out, const dr_tensor *x,
                                 const int64_t *normalized_shape, int32_t nnorm,
                                 const dr_tensor *mean, const dr_tensor *rstd,
                                 const dr_tensor *weight, dr_tensor **grad_x,
                                 dr_tensor **grad_weight, dr_tensor **grad_bias) {
    const char *op = "layer_norm_backward";
    clear(grad_x, grad_weight, grad_bias);
    DR_TRY(dr_nn_check_float(grad_out, op, "grad_out"));
    DR_TRY(dr_nn_check_float(x, op, "input"));
    DR_TRY(dr_nn_check_device(x, grad_out, op, "grad_out"));
    DR_TRY(dr_nn_check_same_shape(grad_out, x, op, "grad_out", "input"));
    int64_t rows, cols;
    DR_TRY(layer_norm_geometry(x, normalized_shape, nnorm, op, &rows, &cols));
    DR_TRY(check_stat(mean, x, rows, op, "mean"));
    DR_TRY(check_stat(rstd, x, rows, op, "rstd"));
    DR_TRY(check_param(weight, x, normalized_shape, nnorm, op, "weight", "normalized_shape"));
    const dr_backend *be = dr_backend_get(x->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, layer_norm_backward, op));

    dr_tensor *fg = NULL, *fx = NULL, *fm = NULL, *fr = NULL, *fw = NULL;
    dr_tensor *gx = NULL, *gw = NULL, *gb = NULL;
    dr_status st = dr_nn_stage(grad_out, true, &fg);
    if (st == DR_OK) st = dr_nn_stage(x, true, &fx);
    if (st == DR_OK) st = dr_nn_stage(mean, true, &fm);
    if (st == DR_OK) st = dr_nn_stage(rstd, true, &fr);
    if (st == DR_OK) st = dr_nn_stage(weight, true, &fw);
    if (st == DR_OK) st = new_f32(&gx, grad_x, x->sizes, x->ndim, x->device, op);
    if (st == DR_OK) st = new_f32(&gw, grad_weight, normalized_shape, nnorm, x->device, op);
    if (st == DR_OK) st = new_f32(&gb, grad_bias, normalized_shape, nnorm, x->device, op);
    if (st == DR_OK && (gx || gw || gb))
        st = be->layer_norm_backward(gx, gw, gb, fg, fx, fm, fr, fw, rows, cols);
    dr_tensor_release(fg);
    dr_tensor_release(fx);
    dr_tensor_release(fm);
    dr_tensor_release(fr);
    dr_tensor_release(fw);
    return finish_grads(st, gx, gw, gb, grad_out->scalar_type,
                        weight ? weight->scalar_type : x->scalar_type, grad_x, grad_weight,
                        grad_bias);
}

/* ---- group_norm ---------------------------------------------------------------------- */

typedef struct gn_geom {
    int64_t n, c, hw;
} gn_geom;

static dr_status group_norm_geometry(const dr_tensor *x, int64_t groups, const char *op,
                                     gn_geom *g) {
    if (x->ndim < 2)
        return dr_fail(DR_ERR_SHAPE, "%s: expected input of shape [N, C, *] with at least 2 "
                       "dims, got %s", op, dr_shape_str(x));
    g->n = x->sizes[0];
    g->c = x->sizes[1];
    g->hw = 1;
    for (int32_t d = 2; d < x->ndim; d++) g->hw *= x->sizes[d];
    if (groups < 1)
        return dr_fail(DR_ERR_ARG, "%s: num_groups must be positive, got %lld", op,
                       (long long)groups);
    if (g->c % groups != 0)
        return dr_fail(DR_ERR_SHAPE, "%s: expected the number of channels %lld of input %s to be "
                       "divisible by num_groups %lld", op, (long long)g->c, dr_shape_str(x),
                       (long long)groups);
    return DR_OK;
}

dr_status dr_group_norm(const dr_tensor *x, int64_t num_groups, const dr_tensor *weight,
                        const dr_tensor *bias, double eps, dr_tensor **out, dr_tensor **mean,
                        dr_tensor **rstd) {
    const char *op = "group_norm";
    clear(mean, rstd, NULL);
    DR_TRY(dr_check_out(out, op));
    DR_TRY(dr_nn_check_float(x, op, "input"));
    gn_geom g;
    DR_TRY(group_norm_geometry(x, num_groups, op, &g));
    int64_t channels[1] = {g.c};
    DR_TRY(check_param(weight, x, channels, 1, op, "weight", "the channel count of the input"));
    DR_TRY(check_param(bias, x, channels, 1, op, "bias", "the channel count of the input"));
    DR_TRY(check_eps(eps, op));
    const dr_backend *be = dr_backend_get(x->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, group_norm, op));

    int64_t stat_sizes[2] = {g.n, num_groups};
    dr_tensor *fx = NULL, *fw = NULL, *fb = NULL, *res = NULL, *m = NULL, *r = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_nn_stage(x, true, &fx);
    if (st == DR_OK) st = dr_nn_stage(weight, true, &fw);
    if (st == DR_OK) st = dr_nn_stage(bias, true, &fb);
    if (st == DR_OK) st = dr_tensor_new(x->sizes, x->ndim, DR_F32, x->device, op, &res);
    if (st == DR_OK) st = new_f32(&m, true, stat_sizes, 2, x->device, op);
    if (st == DR_OK) st = new_f32(&r, true, stat_sizes, 2, x->device, op);
    if (st == DR_OK) st = be->group_norm(res, m, r, fx, fw, fb, g.n, g.c, g.hw, num_groups, eps);
    dr_tensor_release(fx);
    dr_tensor_release(fw);
    dr_tensor_release(fb);
    st = dr_nn_finish(st, res, x->scalar_type, out);
    dr_grad_resume(grad);
    return norm_finish(st, op, group_norm_node_backward, x, weight, bias, num_groups, NULL, 0,
                       out, m, r, mean, rstd);
}

dr_status dr_group_norm_backward(const dr_tensor *grad_out, const dr_tensor *x,
                                 const dr_tensor *mean, const dr_tensor *rstd,
                                 const dr_tensor *weight, int64_t num_groups,
                                 dr_tensor **grad_x, dr_tensor **grad_weight,
                                 dr_tensor **grad_bias) {
    const char *op = "group_norm_backward";
    clear(grad_x, grad_weight, grad_bias);
    DR_TRY(dr_nn_check_float(grad_out, op, "grad_out"));
    DR_TRY(dr_nn_check_float(x, op, "input"));
    DR_TRY(dr_nn_check_device(x, grad_out, op, "grad_out"));
    DR_TRY(dr_nn_check_same_shape(grad_out, x, op, "grad_out", "input"));
    gn_geom g;
    DR_TRY(group_norm_geometry(x, num_groups, op, &g));
    DR_TRY(check_stat(mean, x, g.n * num_groups, op, "mean"));
    DR_TRY(check_stat(rstd, x, g.n * num_groups, op, "rstd"));
    int64_t channels[1] = {g.c};
    DR_TRY(check_param(weight, x, channels, 1, op, "weight", "the channel count of the input"));
    const dr_backend *be = dr_backend_get(x->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, group_norm_backward, op));

    dr_tensor *fg = NULL, *fx = NULL, *fm = NULL, *fr = NULL, *fw = NULL;
    dr_tensor *gx = NULL, *gw = NULL, *gb = NULL;
    dr_status st = dr_nn_stage(grad_out, true, &fg);
    if (st == DR_OK) st = dr_nn_stage(x, true, &fx);
    if (st == DR_OK) st = dr_nn_stage(mean, true, &fm);
    if (st == DR_OK) st = dr_nn_stage(rstd, true, &fr);
    if (st == DR_OK) st = dr_nn_stage(weight, true, &fw);
    if (st == DR_OK) st = new_f32(&gx, grad_x, x->sizes, x->ndim, x->device, op);
    if (st == DR_OK) st = new_f32(&gw, grad_weight, channels, 1, x->device, op);
    if (st == DR_OK) st = new_f32(&gb, grad_bias, channels, 1, x->device, op);
    if (st == DR_OK && (gx || gw || gb))
        st = be->group_norm_backward(gx, gw, gb, fg, fx, fm, fr, fw, g.n, g.c, g.hw, num_groups);
    dr_tensor_release(fg);
    dr_tensor_release(fx);
    dr_tensor_release(fm);
    dr_tensor_release(fr);
    dr_tensor_release(fw);
    return finish_grads(st, gx, gw, gb, grad_out->scalar_type,
                        weight ? weight->scalar_type : x->scalar_type, grad_x, grad_weight,
                        grad_bias);
}
