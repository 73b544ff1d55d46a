/* Elementwise unary math with torch semantics, forward and backward.
 *
 *   op          y = f(x)                                 grad_x = g * f'   (from)
 *   silu        x s(x),  s = sigmoid                     s(x)(1 + x(1 - s(x)))      x
 *   gelu        x Phi(x) = x/2 (1 + erf(x/sqrt 2))       Phi(x) + x phi(x)          x
 *   gelu tanh   x/2 (1 + tanh(u)),                       (1 + t)/2 + x/2 (1 - t^2)
 *               u = sqrt(2/pi)(x + 0.044715 x^3)           sqrt(2/pi)(1 + 3*0.044715 x^2)  x
 *   quick_gelu  x s(1.702 x)                             s + 1.702 x s (1 - s)      x
 *   relu        max(x, 0)                                [y > 0]                    y
 *   sigmoid     1 / (1 + e^-x)                           y (1 - y)                  y
 *   tanh        tanh x                                   1 - y^2                    y
 *   exp         e^x                                      y                          y
 *   log         ln x  (ln 0 = -inf, ln(x<0) = nan)       1 / x                      x
 *   sqrt        sqrt x                                   1 / (2y)                   y
 *   rsqrt       1 / sqrt x                               -y^3 / 2                   y
 *   abs         |x|                                      sign(x) (0 at 0)           x
 *   neg         -x                                       -1                         x
 *   pow         x^e (e a scalar)                         e x^(e-1), 0 when e = 0    x
 *   clamp       min(max(x, lo), hi)                      [lo <= x <= hi]            x
 * (g is grad_out; phi the standard normal density.) Inputs are float32, float16
 * or bfloat16; half types compute in float32 and round once. The backward reads
 * x or y as the last column says (dr_unary_backward_uses_output) and returns the
 * gradient in grad_out's dtype. clamp's absent bounds are -inf / +inf; min > max
 * gives max everywhere (torch.clamp). */
#include <math.h>
#include <stdio.h>

#include "nn_f32.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

static const char *const unary_names[DR_NUM_UNARY_OPS] = {
    "silu", "gelu", "gelu", "quick_gelu", "relu", "sigmoid", "tanh", "exp",
    "log", "sqrt", "rsqrt", "abs", "neg", "pow", "clamp"};

const char *dr_unary_name(int32_t op) {
    return op >= 0 && op < DR_NUM_UNARY_OPS ? unary_names[op] : "unknown";
}

int dr_unary_backward_uses_output(int32_t op) {
    switch (op) {
    case DR_UNARY_RELU: case DR_UNARY_SIGMOID: case DR_UNARY_TANH: case DR_UNARY_EXP:
    case DR_UNARY_SQRT: case DR_UNARY_RSQRT:
        return 1;
    default:
        return 0;
    }
}

static dr_status backward(dr_unary_op op, const dr_tensor *grad_out, const dr_tensor *saved,
                          const char *saved_name, double p0, double p1, dr_tensor **grad_x);

/* The tape: ints[0] = op, reals = its parameters, saved[0] = x or y. */
static dr_status unary_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *saved;
    DR_TRY(dr_autograd_saved(n, 0, &saved));
    dr_unary_op op = (dr_unary_op)n->ints[0];
    int uses_y = dr_unary_backward_uses_output(op);
    return backward(op, g, saved, uses_y ? "output" : "input", n->reals[0], n->reals[1],
                    &grads[0]);
}

static dr_status record(dr_unary_op op, const dr_tensor *x, double p0, double p1, dr_tensor *y) {
    dr_node *node;
    DR_TRY(dr_autograd_record(y, unary_names[op], unary_node_backward, &x, 1, &node));
    if (!node) return DR_OK;
    node->ints[0] = op;
    node->reals[0] = p0;
    node->reals[1] = p1;
    return dr_autograd_save(node, 0, dr_unary_backward_uses_output(op) ? y : x);
}

static dr_status forward(dr_unary_op op, const dr_tensor *x, double p0, double p1,
                         dr_tensor **out) {
    const char *name = unary_names[op];
    DR_TRY(dr_check_out(out, name));
    DR_TRY(dr_nn_check_float(x, name, "input"));
    const dr_backend *be = dr_backend_get(x->device, name);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, unary, name));

    dr_tensor *fx = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_nn_stage(x, false, &fx);
    if (st == DR_OK) st = dr_tensor_new(x->sizes, x->ndim, DR_F32, x->device, name, &res);
    if (st == DR_OK) st = be->unary(op, res, fx, p0, p1);
    dr_tensor_release(fx);
    st = dr_nn_finish(st, res, x->scalar_type, out);
    dr_grad_resume(grad);
    if (st == DR_OK) st = record(op, x, p0, p1, *out);
    return dr_drop_on_error(st, out);
}

static dr_status backward(dr_unary_op op, const dr_tensor *grad_out, const dr_tensor *saved,
                          const char *saved_name, double p0, double p1, dr_tensor **grad_x) {
    const char *name = unary_names[op];
    char bname[48];
    snprintf(bname, sizeof bname, "%s_backward", name);
    DR_TRY(dr_check_out(grad_x, bname));
    DR_TRY(dr_nn_check_float(grad_out, bname, "grad_out"));
    DR_TRY(dr_nn_check_float(saved, bname, saved_name));
    DR_TRY(dr_nn_check_device(saved, grad_out, bname, "grad_out"));
    DR_TRY(dr_nn_check_same_shape(grad_out, saved, bname, "grad_out", saved_name));
    const dr_backend *be = dr_backend_get(saved->device, bname);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, unary_backward, bname));

    dr_tensor *fg = NULL, *fs = NULL, *res = NULL;
    dr_status st = dr_nn_stage(grad_out, false, &fg);
    if (st == DR_OK) st = dr_nn_stage(saved, false, &fs);
    if (st == DR_OK)
        st = dr_tensor_new(saved->sizes, saved->ndim, DR_F32, saved->device, bname, &res);
    if (st == DR_OK) st = be->unary_backward(op, res, fg, fs, p0, p1);
    dr_tensor_release(fg);
    dr_tensor_release(fs);
    return dr_nn_finish(st, res, grad_out->scalar_type, grad_x);
}

static dr_status check_op(int32_t op, const char *fn) {
    if (op < 0 || op >= DR_NUM_UNARY_OPS)
        return dr_fail(DR_ERR_ARG, "%s: unknown unary op %d (0..%d)", fn, op,
                       DR_NUM_UNARY_OPS - 1);
    if (op == DR_UNARY_POW)
        return dr_fail(DR_ERR_ARG, "%s: pow takes an exponent; call dr_pow_scalar", fn);
    if (op == DR_UNARY_CLAMP)
        return dr_fail(DR_ERR_ARG, "%s: clamp takes bounds; call dr_clamp", fn);
    return DR_OK;
}

dr_status dr_unary(int32_t op, const dr_tensor *x, dr_tensor **out) {
    DR_TRY(check_op(op, "unary"));
    return forward((dr_unary_op)op, x, 0, 0, out);
}

dr_status dr_unary_backward(int32_t op, const dr_tensor *grad_out, const dr_tensor *x,
                            const dr_tensor *y, dr_tensor **grad_x) {
    DR_TRY(check_op(op, "unary_backward"));
    int uses_y = dr_unary_backward_uses_output(op);
    return backward((dr_unary_op)op, grad_out, uses_y ? y : x, uses_y ? "output" : "input", 0, 0,
                    grad_x);
}

dr_status dr_silu(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_SILU, x, 0, 0, out);
}
dr_status dr_gelu(const dr_tensor *x, int32_t approximate, dr_tensor **out) {
    if (approximate != 0 && approximate != 1) {
        if (out) *out = NULL;
        return dr_fail(DR_ERR_ARG, "gelu: approximate must be 0 ('none') or 1 ('tanh'), got %d",
                       approximate);
    }
    return forward(approximate ? DR_UNARY_GELU_TANH : DR_UNARY_GELU, x, 0, 0, out);
}
dr_status dr_quick_gelu(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_QUICK_GELU, x, 0, 0, out);
}
dr_status dr_relu(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_RELU, x, 0, 0, out);
}
dr_status dr_sigmoid(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_SIGMOID, x, 0, 0, out);
}
dr_status dr_tanh(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_TANH, x, 0, 0, out);
}
dr_status dr_exp(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_EXP, x, 0, 0, out);
}
dr_status dr_log(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_LOG, x, 0, 0, out);
}
dr_status dr_sqrt(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_SQRT, x, 0, 0, out);
}
dr_status dr_rsqrt(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_RSQRT, x, 0, 0, out);
}
dr_status dr_abs(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_ABS, x, 0, 0, out);
}
dr_status dr_neg(const dr_tensor *x, dr_tensor **out) {
    return forward(DR_UNARY_NEG, x, 0, 0, out);
}

dr_status dr_pow_scalar(const dr_tensor *x, double exponent, dr_tensor **out) {
    return forward(DR_UNARY_POW, x, exponent, 0, out);
}
dr_status dr_pow_scalar_backward(const dr_tensor *grad_out, const dr_tensor *x, double exponent,
                                 dr_tensor **grad_x) {
    return backward(DR_UNARY_POW, grad_out, x, "input", exponent, 0, grad_x);
}

static dr_status check_bounds(double min, double max, const char *fn, dr_tensor **out) {
    if (isnan(min) || isnan(max)) {
        if (out) *out = NULL;
        return dr_fail(DR_ERR_ARG, "%s: bounds must not be NaN (got min %g, max %g); use "
                       "-inf / +inf for no bound", fn, min, max);
    }
    return DR_OK;
}

dr_status dr_clamp(const dr_tensor *x, double min, double max, dr_tensor **out) {
    DR_TRY(check_bounds(min, max, "clamp", out));
    return forward(DR_UNARY_CLAMP, x, min, max, out);
}
dr_status dr_clamp_backward(const dr_tensor *grad_out, const dr_tensor *x, double min, double max,
                            dr_tensor **grad_x) {
    DR_TRY(check_bounds(min, max, "clamp_backward", grad_x));
    return backward(DR_UNARY_CLAMP, grad_out, x, "input", min, max, grad_x);
}
