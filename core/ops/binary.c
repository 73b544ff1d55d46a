/* Broadcasting elementwise arithmetic (torch.add/sub/mul/div).
 *
 *   add(a, b, alpha) = a + alpha*b      sub(a, b, alpha) = a - alpha*b
 *   mul(a, b) = a*b                     div(a, b) = a/b (true division)
 * The result dtype is torch.result_type(a, b); div of integers gives float32.
 * Backward lands with autograd (core/autograd): d(a+αb) = (g, αg), d(ab) =
 * (g·b, g·a), d(a/b) = (g/b, -g·a/b²), each summed over broadcast dims. */
#include <math.h>

#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"

static const char *const op_names[] = {"add", "sub", "mul", "div"};

static dr_status binary(dr_binary_op op, const dr_tensor *a, const dr_tensor *b, double alpha,
                        dr_tensor **out) {
    const char *name = op_names[op];
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", name);
    *out = NULL;
    DR_TRY(dr_check_tensor(a, name, "input"));
    DR_TRY(dr_check_tensor(b, name, "other"));
    if (!dr_device_eq(a->device, b->device))
        return dr_fail(DR_ERR_DEVICE, "%s: tensors are on different devices (%s and %s)", name,
                       dr_device_str(a->device), dr_device_str(b->device));
    int32_t dtype = dr_promote_types(a->scalar_type, b->scalar_type);
    if (op == DR_OP_SUB && dtype == DR_BOOL)
        return dr_fail(DR_ERR_DTYPE, "sub: subtracting bool tensors is not supported; use "
                       "logical_xor or cast to an integer dtype");
    if (op == DR_OP_DIV && !dr_dtype_is_float(dtype)) dtype = DR_F32;
    if (!dr_dtype_is_float(dtype) && !(fabs(alpha) < 0x1p63 && alpha == trunc(alpha)))
        return dr_fail(DR_ERR_ARG, "%s: alpha %g must be an integer for %s tensors", name, alpha,
                       dr_dtype_name(dtype));

    int64_t sizes[DR_MAX_DIMS];
    int32_t ndim;
    DR_TRY(dr_broadcast_shape(a, b, name, sizes, &ndim));
    const dr_backend *be = dr_backend_get(a->device, name);
    if (!be) return DR_ERR_DEVICE;

    dr_tensor *ca = NULL, *cb = NULL, *ea = NULL, *eb = NULL, *res = NULL;
    dr_status st = dr_as_dtype(a, dtype, &ca);
    if (st == DR_OK) st = dr_as_dtype(b, dtype, &cb);
    if (st == DR_OK) st = dr_expand_to(ca, sizes, ndim, name, &ea);
    if (st == DR_OK) st = dr_expand_to(cb, sizes, ndim, name, &eb);
    if (st == DR_OK) st = dr_tensor_new(sizes, ndim, dtype, a->device, name, &res);
    if (st == DR_OK) st = be->binary(op, res, ea, eb, alpha);
    dr_tensor_release(ca);
    dr_tensor_release(cb);
    dr_tensor_release(ea);
    dr_tensor_release(eb);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

dr_status dr_add(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out) {
    return binary(DR_OP_ADD, a, b, alpha, out);
}
dr_status dr_sub(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out) {
    return binary(DR_OP_SUB, a, b, alpha, out);
}
dr_status dr_mul(const dr_tensor *a, const dr_tensor *b, dr_tensor **out) {
    return binary(DR_OP_MUL, a, b, 1.0, out);
}
dr_status dr_div(const dr_tensor *a, const dr_tensor *b, dr_tensor **out) {
    return binary(DR_OP_DIV, a, b, 1.0, out);
}
