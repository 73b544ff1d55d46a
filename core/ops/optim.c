/* Optimizer updates: fused, in place, one pass over each parameter.
 *
 * AdamW (torch.optim.AdamW, decoupled weight decay), for step t >= 1:
 *   p <- p - lr*wd*p
 *   m <- b1*m + (1-b1)*g          v <- b2*v + (1-b2)*g^2
 *   p <- p - (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
 * SGD (torch.optim.SGD): d = g + wd*p; buf = d (first step) or
 *   momentum*buf + (1-dampening)*d; d = nesterov ? d + momentum*buf : buf;
 *   p <- p - lr*d.
 * lerp_: self <- self + w*(end - self), the EMA update with w = 1 - decay.
 * These write parameters that require grad, so they refuse to run in grad mode
 * (dr_autograd_inplace): optimizers call them inside no_grad. */
#include <math.h>

#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* All of `ts` contiguous float32 with the shape of ts[0], on one device. */
static dr_status check_same(const char *op, const dr_tensor *const *ts, const char *const *names,
                            int n) {
    for (int i = 0; i < n; i++) {
        if (!ts[i] && i > 0) continue;
        DR_TRY(dr_check_tensor(ts[i], op, names[i]));
        if (ts[i]->scalar_type != DR_F32)
            return dr_fail(DR_ERR_DTYPE, "%s: %s must be float32, got %s", op, names[i],
                           dr_dtype_name(ts[i]->scalar_type));
        if (!dr_tensor_is_contiguous(ts[i]))
            return dr_fail(DR_ERR_ARG, "%s: %s %s must be contiguous", op, names[i],
                           dr_shape_str(ts[i]));
        if (i > 0 && (ts[i]->ndim != ts[0]->ndim ||
                      dr_tensor_numel(ts[i]) != dr_tensor_numel(ts[0])))
            return dr_fail(DR_ERR_SHAPE, "%s: %s %s does not match %s %s", op, names[i],
                           dr_shape_str(ts[i]), names[0], dr_shape_str(ts[0]));
        if (i > 0 && !dr_device_eq(ts[i]->device, ts[0]->device))
            return dr_fail(DR_ERR_DEVICE, "%s: %s is on %s but %s is on %s", op, names[i],
                           dr_device_str(ts[i]->device), names[0], dr_device_str(ts[0]->device));
    }
    return DR_OK;
}

static const dr_backend *backend_with(const dr_tensor *t, const char *op) {
    return dr_backend_get(t->device, op);
}

dr_status dr_adamw_step_(dr_tensor *param, const dr_tensor *grad, dr_tensor *exp_avg,
                         dr_tensor *exp_avg_sq, double lr, double beta1, double beta2,
                         double eps, double weight_decay, int64_t step) {
    const dr_tensor *ts[4] = {param, grad, exp_avg, exp_avg_sq};
    static const char *const names[4] = {"param", "grad", "exp_avg", "exp_avg_sq"};
    DR_TRY(check_same("adamw", ts, names, 4));
    if (!exp_avg || !exp_avg_sq) return dr_fail(DR_ERR_ARG, "adamw: exp_avg and exp_avg_sq are required");
    if (step < 1) return dr_fail(DR_ERR_ARG, "adamw: step must be >= 1, got %lld", (long long)step);
    if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1))
        return dr_fail(DR_ERR_ARG, "adamw: betas must be in [0, 1), got (%g, %g)", beta1, beta2);
    if (!(lr >= 0) || !(eps >= 0) || !(weight_decay >= 0))
        return dr_fail(DR_ERR_ARG, "adamw: lr %g, eps %g and weight_decay %g must be >= 0", lr,
                       eps, weight_decay);
    const dr_backend *be = backend_with(param, "adamw");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, adamw, "adamw"));
    DR_TRY(dr_autograd_inplace(param, "adamw"));
    DR_TRY(dr_autograd_inplace(exp_avg, "adamw"));
    DR_TRY(dr_autograd_inplace(exp_avg_sq, "adamw"));
    double bc1 = 1 - pow(beta1, (double)step), bc2 = 1 - pow(beta2, (double)step);
    /* hyper: decay factor, b1, b2, step size, 1/sqrt(bc2), eps */
    double hyper[6] = {1 - lr * weight_decay, beta1, beta2, lr / bc1, 1 / sqrt(bc2), eps};
    return be->adamw(param, grad, exp_avg, exp_avg_sq, hyper);
}

dr_status dr_sgd_step_(dr_tensor *param, const dr_tensor *grad, dr_tensor *momentum_buf,
                       double lr, double momentum, double dampening, double weight_decay,
                       int nesterov, int first_step) {
    const dr_tensor *ts[3] = {param, grad, momentum_buf};
    static const char *const names[3] = {"param", "grad", "momentum_buffer"};
    DR_TRY(check_same("sgd", ts, names, 3));
    if (momentum != 0 && !momentum_buf)
        return dr_fail(DR_ERR_ARG, "sgd: momentum %g needs a momentum buffer", momentum);
    if (nesterov && (momentum <= 0 || dampening != 0))
        return dr_fail(DR_ERR_ARG, "sgd: nesterov needs momentum > 0 and dampening 0");
    const dr_backend *be = backend_with(param, "sgd");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, sgd, "sgd"));
    DR_TRY(dr_autograd_inplace(param, "sgd"));
    if (momentum_buf) DR_TRY(dr_autograd_inplace(momentum_buf, "sgd"));
    double hyper[6] = {lr, momentum, dampening, weight_decay, nesterov ? 1 : 0,
                       first_step ? 1 : 0};
    return be->sgd(param, grad, momentum != 0 ? momentum_buf : NULL, hyper);
}

dr_status dr_lerp_(dr_tensor *self, const dr_tensor *end, double weight) {
    const dr_tensor *ts[2] = {self, end};
    static const char *const names[2] = {"self", "end"};
    DR_TRY(check_same("lerp_", ts, names, 2));
    if (!end) return dr_fail(DR_ERR_ARG, "lerp_: end is nil");
    const dr_backend *be = backend_with(self, "lerp_");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, lerp, "lerp_"));
    DR_TRY(dr_autograd_inplace(self, "lerp_"));
    return be->lerp(self, end, weight);
}

dr_status dr_mul_scalar_(dr_tensor *self, double s) {
    const dr_tensor *ts[1] = {self};
    static const char *const names[1] = {"self"};
    DR_TRY(check_same("mul_", ts, names, 1));
    const dr_backend *be = backend_with(self, "mul_");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, scale, "mul_"));
    DR_TRY(dr_autograd_inplace(self, "mul_"));
    return be->scale(self, s);
}

dr_status dr_sum_squares(const dr_tensor *t, double *out) {
    const dr_tensor *ts[1] = {t};
    static const char *const names[1] = {"tensor"};
    DR_TRY(check_same("sum_squares", ts, names, 1));
    DR_TRY(dr_check_array(out, 1, "sum_squares", "result pointer"));
    const dr_backend *be = backend_with(t, "sum_squares");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, sum_squares, "sum_squares"));
    return be->sum_squares(t, out);
}
