/* More random ops on the Philox streams of random.c: torch.randint, Tensor.normal_,
 * and F.dropout.
 *
 * Stream layouts (blocks b = offset, offset+1, ... of util/philox.h; each block
 * gives four 32-bit lanes x0..x3; the generator's offset advances past the
 * blocks used, so the next op continues the stream):
 *   randint(low, high), r = high - low:
 *     r <= 2^32: element i uses lane i%4 of block offset + i/4 (ceil(n/4) blocks);
 *                value = low + floor(x * r / 2^32)
 *     r >  2^32: element i uses lanes 2(i%2), 2(i%2)+1 of block offset + i/2
 *                (ceil(n/2) blocks) as x = lo | hi << 32; value = low + floor(x r / 2^64)
 *     (multiply-shift, Lemire 2019: no division; bias below r / 2^32 or r / 2^64)
 *   normal_(mean, std): the randn stream (Box-Muller, ceil(n/4) blocks) in
 *     row-major order of the tensor, then mean + std z in float32.
 *   dropout(p): element i keeps iff its 24-bit uniform (the rand stream: lane i%4
 *     of block offset + i/4) is below 1 - p; kept elements scale by 1/(1 - p).
 *     p = 0 (or training off) returns the input itself and p = 1 zeros, drawing
 *     nothing (torch's CPU dropout).
 * Backward of dropout: dx = dy * mask / (1 - p), from the saved bool mask. */
#include <math.h>

#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"

/* ---- randint ------------------------------------------------------------------ */

dr_status dr_randint(int64_t low, int64_t high, const int64_t *sizes, int32_t ndim, int32_t dtype,
                     dr_device device, dr_generator *gen, dr_tensor **out) {
    const char *op = "randint";
    DR_TRY(dr_check_out(out, op));
    if (high <= low)
        return dr_fail(DR_ERR_ARG, "%s: random_ expects 'from' to be less than 'to', but got "
                       "from=%lld >= to=%lld", op, (long long)low, (long long)high);
    if (!dr_dtype_valid(dtype) || dtype == DR_BOOL)
        return dr_fail(DR_ERR_DTYPE, "%s: dtype %s is not supported", op, dr_dtype_name(dtype));
    const dr_backend *be = dr_backend_get(device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, randint, op));
    if (!gen) gen = dr_default_generator();
    uint64_t range = (uint64_t)high - (uint64_t)low;
    dr_tensor *r = NULL;
    DR_TRY(dr_tensor_new(sizes, ndim, DR_I64, device, op, &r));
    int64_t n = dr_tensor_numel(r);
    dr_status st = n > 0 ? be->randint(r, low, range, gen->seed, gen->offset) : DR_OK;
    if (st == DR_OK) {
        uint64_t per_block = range > ((uint64_t)1 << 32) ? 2 : 4;
        gen->offset += ((uint64_t)n + per_block - 1) / per_block;
        st = dr_as_dtype(r, dtype, out);
    }
    dr_tensor_release(r);
    return st;
}

/* ---- normal_ ---------------------------------------------------------------------- */

dr_status dr_normal_(dr_tensor *t, double mean, double std, dr_generator *gen) {
    const char *op = "normal_";
    DR_TRY(dr_check_tensor(t, op, "tensor"));
    if (!dr_dtype_is_float(t->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: dtype %s is not a floating point type", op,
                       dr_dtype_name(t->scalar_type));
    if (!(std >= 0) || !isfinite(std) || !isfinite(mean))
        return dr_fail(DR_ERR_ARG, "%s: expects std >= 0.0 and finite mean and std, got mean %g, "
                       "std %g", op, mean, std);
    DR_TRY(dr_autograd_inplace(t, op));
    dr_tensor *z = NULL, *k = NULL, *scaled = NULL, *shifted = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_randn(t->sizes, t->ndim, DR_F32, t->device, gen, &z);
    if (st == DR_OK && std != 1.0) {
        st = dr_tensor_full(NULL, 0, DR_F32, t->device, std, &k);
        if (st == DR_OK) st = dr_mul(z, k, &scaled);
        dr_tensor_release(k);
        k = NULL;
    }
    const dr_tensor *cur = scaled ? scaled : z;
    if (st == DR_OK && mean != 0.0) {
        st = dr_tensor_full(NULL, 0, DR_F32, t->device, mean, &k);
        if (st == DR_OK) st = dr_add(cur, k, 1.0, &shifted);
        cur = shifted;
    }
    if (st == DR_OK) st = dr_tensor_copy_(t, cur);
    dr_grad_resume(grad);
    dr_tensor_release(z);
    dr_tensor_release(k);
    dr_tensor_release(scaled);
    dr_tensor_release(shifted);
    return st;
}

/* ---- dropout ------------------------------------------------------------------------ */

static dr_status check_p(double p, const char *op) {
    if (!(p >= 0 && p <= 1))
        return dr_fail(DR_ERR_ARG, "%s: dropout probability has to be between 0 and 1, but got %g",
                       op, p);
    return DR_OK;
}

/* out = x * mask / (1 - p) (0 for p = 1) */
static dr_status apply_mask(const dr_tensor *x, const dr_tensor *mask, double p, const char *op,
                            dr_tensor **out) {
    const dr_backend *be = dr_backend_get(x->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, masked_scale, op));
    dr_tensor *res;
    DR_TRY(dr_tensor_new(x->sizes, x->ndim, x->scalar_type, x->device, op, &res));
    dr_status st = dr_tensor_numel(res) > 0
                       ? be->masked_scale(res, x, mask, p < 1 ? 1.0 / (1.0 - p) : 0.0)
                       : DR_OK;
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

/* saved 0 = mask; reals[0] = p */
static dr_status dropout_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *mask;
    DR_TRY(dr_autograd_saved(n, 0, &mask));
    return apply_mask(g, mask, n->reals[0], "dropout backward", &grads[0]);
}

dr_status dr_dropout(const dr_tensor *x, double p, int training, dr_generator *gen,
                     dr_tensor **out, dr_tensor **mask) {
    const char *op = "dropout";
    DR_TRY(dr_check_out(out, op));
    if (mask) *mask = NULL;
    DR_TRY(dr_check_tensor(x, op, "input"));
    if (!dr_dtype_is_float(x->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: input dtype %s is not a floating point type", op,
                       dr_dtype_name(x->scalar_type));
    DR_TRY(check_p(p, op));
    if (!training || p == 0) { /* F.dropout returns the input itself (torch on the CPU) */
        dr_tensor_retain((dr_tensor *)x);
        *out = (dr_tensor *)x;
        return DR_OK;
    }
    const dr_backend *be = dr_backend_get(x->device, op);
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, dropout_mask, op));
    if (!gen) gen = dr_default_generator();
    dr_tensor *m = NULL, *res = NULL;
    DR_TRY(dr_tensor_new(x->sizes, x->ndim, DR_BOOL, x->device, op, &m));
    int64_t n = dr_tensor_numel(m);
    dr_status st; /* p = 1 drops everything without drawing, as torch */
    if (p == 1 || n == 0) {
        st = be->fill(m, 0);
    } else {
        st = be->dropout_mask(m, p, gen->seed, gen->offset);
        gen->offset += ((uint64_t)n + 3) / 4;
    }
    if (st == DR_OK) {
        bool grad = dr_grad_pause();
        st = apply_mask(x, m, p, op, &res);
        dr_grad_resume(grad);
    }
    if (st == DR_OK) {
        dr_node *node;
        const dr_tensor *inputs[1] = {x};
        st = dr_autograd_record(res, op, dropout_node_backward, inputs, 1, &node);
        if (st == DR_OK && node) {
            node->reals[0] = p;
            st = dr_autograd_save(node, 0, m);
        }
    }
    if (st != DR_OK) {
        dr_tensor_release(m);
        dr_tensor_release(res);
        return st;
    }
    if (mask) *mask = m;
    else dr_tensor_release(m);
    *out = res;
    return DR_OK;
}

dr_status dr_dropout_backward(const dr_tensor *grad_out, const dr_tensor *mask, double p,
                              dr_tensor **grad_x) {
    const char *op = "dropout_backward";
    DR_TRY(dr_check_out(grad_x, op));
    DR_TRY(dr_check_tensor(grad_out, op, "grad_out"));
    DR_TRY(dr_check_tensor(mask, op, "mask"));
    DR_TRY(check_p(p, op));
    if (!dr_dtype_is_float(grad_out->scalar_type) || mask->scalar_type != DR_BOOL)
        return dr_fail(DR_ERR_DTYPE, "%s: expects a float grad_out and a bool mask, got %s and %s",
                       op, dr_dtype_name(grad_out->scalar_type), dr_dtype_name(mask->scalar_type));
    bool fits = grad_out->ndim == mask->ndim && dr_device_eq(grad_out->device, mask->device);
    for (int32_t d = 0; fits && d < mask->ndim; d++) fits = grad_out->sizes[d] == mask->sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s (%s) and mask %s (%s) must match", op,
                       dr_shape_str(grad_out), dr_device_str(grad_out->device),
                       dr_shape_str(mask), dr_device_str(mask->device));
    bool grad = dr_grad_pause();
    dr_status st = apply_mask(grad_out, mask, p, op, grad_x);
    dr_grad_resume(grad);
    return st;
}
