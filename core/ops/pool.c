/* Resampling of NCHW images: nearest upsampling by integer factors
 * (F.interpolate(mode='nearest', scale_factor=s)) and average pooling
 * (F.avg_pool2d with ceil_mode=False, count_include_pad=True).
 *
 *   upsample:  y[n, c, i, j] = x[n, c, floor(i / sh), floor(j / sw)],  y [N, C, H sh, W sw]
 *              dx[n, c, p, q] = sum_{a < sh, b < sw} dy[n, c, p sh + a, q sw + b]
 *   avg_pool:  Ho = floor((H + 2 ph - kh) / sh) + 1, Wo likewise;
 *              y[n, c, i, j] = 1/(kh kw) sum_{a < kh, b < kw} x[n, c, i sh - ph + a, j sw - pw + b]
 *              with x = 0 in the padding (which counts in the divisor);
 *              dx[n, c, p, q] = 1/(kh kw) sum over windows (i, j) covering (p, q) of dy[n, c, i, j]
 * f16/bf16 compute in f32 and round the results once. */
#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"
#include "conv_common.h"

static dr_status check_image(const dr_tensor *t, const char *op, const char *what) {
    DR_TRY(dr_nn_check_float(t, op, what));
    if (t->ndim != 4)
        return dr_fail(DR_ERR_SHAPE, "%s: expected a 4-D %s [N, C, H, W], got %s", op, what,
                       dr_shape_str(t));
    return DR_OK;
}

static dr_status check_scales(int64_t sh, int64_t sw, const char *op) {
    if (sh < 1 || sw < 1 || sh > CONV_MAX_GEOM || sw > CONV_MAX_GEOM) {
        int64_t s[2] = {sh, sw};
        return dr_fail(DR_ERR_ARG, "%s: scale factors must be positive integers, got %s", op,
                       dr_sizes_str(s, 2));
    }
    return DR_OK;
}

/* The backend of `in` with kernel `fn` (named `op`), or NULL with the error set. */
#define RESAMPLE_BACKEND(in, fn, op, be_out)                                         \
    do {                                                                             \
        (be_out) = dr_backend_get((in)->device, (op));                              \
        if (!(be_out)) return DR_ERR_DEVICE;                                         \
        DR_TRY(DR_KERNEL((be_out), fn, (op)));                                       \
    } while (0)

typedef enum resample_kind { UPSAMPLE, UPSAMPLE_BACKWARD, POOL, POOL_BACKWARD } resample_kind;

/* out = kernel(in) on a float32 contiguous copy of `in`, out of shape out_sizes, the
 * result cast back to in's dtype. p: the scales, or kernel/stride/padding pairs. */
static dr_status resample(const dr_backend *be, resample_kind kind, const dr_tensor *in,
                          const int64_t *out_sizes, const int64_t *p, const char *op,
                          dr_tensor **out) {
    dr_tensor *x = NULL, *res = NULL;
    dr_status st = dr_nn_stage(in, true, &x);
    if (st == DR_OK) st = dr_tensor_new(out_sizes, 4, DR_F32, in->device, op, &res);
    if (st == DR_OK) {
        switch (kind) {
        case UPSAMPLE: st = be->upsample_nearest2d(res, x); break;
        case UPSAMPLE_BACKWARD: st = be->upsample_nearest2d_backward(res, x); break;
        case POOL: st = be->avg_pool2d(res, x, p, p + 2, p + 4); break;
        case POOL_BACKWARD: st = be->avg_pool2d_backward(res, x, p, p + 2, p + 4); break;
        }
    }
    dr_tensor_release(x);
    return dr_nn_finish(st, res, in->scalar_type, out);
}

/* ---- nearest upsampling ------------------------------------------------------------ */

/* The tape. upsample: ints = scale_h, scale_w. avg_pool2d: saved input;
 * ints = kernel(2), stride(2), padding(2). */
static dr_status upsample_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    return dr_upsample_nearest2d_backward(g, n->ints[0], n->ints[1], &grads[0]);
}

static dr_status avg_pool_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *x;
    DR_TRY(dr_autograd_saved(n, 0, &x));
    return dr_avg_pool2d_backward(g, x, n->ints, n->ints + 2, n->ints + 4, &grads[0]);
}

/* Puts *out (made by resample from input) on the tape; on failure releases it. */
static dr_status resample_record(dr_status st, const dr_tensor *input, const char *op,
                                 dr_backward_fn fn, const int64_t *params, int nparams,
                                 bool save_input, dr_tensor **out) {
    dr_node *node = NULL;
    if (st == DR_OK) st = dr_autograd_record(*out, op, fn, &input, 1, &node);
    for (int i = 0; node && i < nparams; i++) node->ints[i] = params[i];
    if (st == DR_OK && node && save_input) st = dr_autograd_save(node, 0, input);
    return dr_drop_on_error(st, out);
}

dr_status dr_upsample_nearest2d(const dr_tensor *input, int64_t scale_h, int64_t scale_w,
                                dr_tensor **out) {
    const char *op = "upsample_nearest2d";
    DR_TRY(dr_check_out(out, op));
    DR_TRY(check_image(input, op, "input"));
    DR_TRY(check_scales(scale_h, scale_w, op));
    int64_t sizes[4] = {input->sizes[0], input->sizes[1], input->sizes[2], input->sizes[3]};
    int64_t scale[2] = {scale_h, scale_w};
    for (int d = 0; d < 2; d++) {
        if (sizes[2 + d] > INT64_MAX / scale[d])
            return dr_fail(DR_ERR_SHAPE, "%s: input %s scaled by %s is too large", op,
                           dr_shape_str(input), dr_sizes_str(scale, 2));
        sizes[2 + d] *= scale[d];
    }
    const dr_backend *be;
    RESAMPLE_BACKEND(input, upsample_nearest2d, op, be);
    bool grad = dr_grad_pause();
    dr_status st = resample(be, UPSAMPLE, input, sizes, scale, op, out);
    dr_grad_resume(grad);
    return resample_record(st, input, op, upsample_node_backward, scale, 2, false, out);
}

dr_status dr_upsample_nearest2d_backward(const dr_tensor *grad_out, int64_t scale_h,
                                         int64_t scale_w, dr_tensor **grad_input) {
    const char *op = "upsample_nearest2d_backward";
    DR_TRY(dr_check_out(grad_input, op));
    DR_TRY(check_image(grad_out, op, "grad_out"));
    DR_TRY(check_scales(scale_h, scale_w, op));
    int64_t scale[2] = {scale_h, scale_w};
    if (grad_out->sizes[2] % scale_h != 0 || grad_out->sizes[3] % scale_w != 0)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s is not a whole multiple of the scale %s",
                       op, dr_shape_str(grad_out), dr_sizes_str(scale, 2));
    int64_t sizes[4] = {grad_out->sizes[0], grad_out->sizes[1], grad_out->sizes[2] / scale_h,
                        grad_out->sizes[3] / scale_w};
    const dr_backend *be;
    RESAMPLE_BACKEND(grad_out, upsample_nearest2d_backward, op, be);
    return resample(be, UPSAMPLE_BACKWARD, grad_out, sizes, scale, op, grad_input);
}

/* ---- average pooling ------------------------------------------------------------------- */

/* Validates kernel/stride/padding as torch does and computes the output shape. */
static dr_status check_pool(const dr_tensor *input, const int64_t *kernel, const int64_t *stride,
                            const int64_t *padding, const char *op, int64_t *out_sizes) {
    DR_TRY(check_image(input, op, "input"));
    DR_TRY(conv_check_pair(kernel, op, "kernel_size", 1));
    DR_TRY(conv_check_pair(stride, op, "stride", 1));
    DR_TRY(conv_check_pair(padding, op, "padding", 0));
    if (padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2)
        return dr_fail(DR_ERR_ARG, "%s: padding %s must be at most half of kernel_size %s", op,
                       dr_sizes_str(padding, 2), dr_sizes_str(kernel, 2));
    out_sizes[0] = input->sizes[0];
    out_sizes[1] = input->sizes[1];
    for (int d = 0; d < 2; d++) {
        int64_t padded = input->sizes[2 + d] + 2 * padding[d];
        if (padded < kernel[d])
            return dr_fail(DR_ERR_SHAPE, "%s: input %s padded by %s is smaller than "
                           "kernel_size %s", op, dr_shape_str(input), dr_sizes_str(padding, 2),
                           dr_sizes_str(kernel, 2));
        out_sizes[2 + d] = (padded - kernel[d]) / stride[d] + 1;
    }
    return DR_OK;
}

dr_status dr_avg_pool2d(const dr_tensor *input, const int64_t *kernel, const int64_t *stride,
                        const int64_t *padding, dr_tensor **out) {
    const char *op = "avg_pool2d";
    DR_TRY(dr_check_out(out, op));
    int64_t out_sizes[4];
    DR_TRY(check_pool(input, kernel, stride, padding, op, out_sizes));
    int64_t params[6] = {kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]};
    const dr_backend *be;
    RESAMPLE_BACKEND(input, avg_pool2d, op, be);
    bool grad = dr_grad_pause();
    dr_status st = resample(be, POOL, input, out_sizes, params, op, out);
    dr_grad_resume(grad);
    return resample_record(st, input, op, avg_pool_node_backward, params, 6, true, out);
}

dr_status dr_avg_pool2d_backward(const dr_tensor *grad_out, const dr_tensor *input,
                                 const int64_t *kernel, const int64_t *stride,
                                 const int64_t *padding, dr_tensor **grad_input) {
    const char *op = "avg_pool2d_backward";
    DR_TRY(dr_check_out(grad_input, op));
    DR_TRY(check_image(grad_out, op, "grad_out"));
    int64_t out_sizes[4];
    DR_TRY(check_pool(input, kernel, stride, padding, op, out_sizes));
    DR_TRY(conv_check_same(grad_out, input, op, "grad_out", "input"));
    bool fits = true;
    for (int d = 0; d < 4; d++) fits = fits && grad_out->sizes[d] == out_sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s does not match the output %s of input %s",
                       op, dr_shape_str(grad_out), dr_sizes_str(out_sizes, 4),
                       dr_shape_str(input));
    int64_t params[6] = {kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1]};
    int64_t in_sizes[4] = {input->sizes[0], input->sizes[1], input->sizes[2], input->sizes[3]};
    const dr_backend *be;
    RESAMPLE_BACKEND(grad_out, avg_pool2d_backward, op, be);
    return resample(be, POOL_BACKWARD, grad_out, in_sizes, params, op, grad_input);
}
