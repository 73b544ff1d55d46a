/* 2-D convolution, torch.nn.functional.conv2d on NCHW tensors.
 *
 *   input x [N, C, H, W], weight W [O, C/G, kh, kw], bias b [O] (optional), G groups;
 *   Ho = floor((H + 2 ph - dh (kh - 1) - 1) / sh) + 1, Wo likewise;
 *   y[n, o, i, j] = b[o] + sum_{c, a, e} W[o, c, a, e] x[n, g C/G + c, i sh - ph + a dh,
 *                                                     j sw - pw + e dw]
 *   where g = o / (O/G) is o's group and x reads 0 outside the image.
 * Backward, for an upstream gradient dY [N, O, Ho, Wo]:
 *   dx[n, g C/G + c, p, q] = sum over (o in g, a, e, i, j) with i sh - ph + a dh = p
 *                            and j sw - pw + e dw = q of W[o, c, a, e] dY[n, o, i, j]
 *   dW[o, c, a, e] = sum_{n, i, j} dY[n, o, i, j] x[n, g C/G + c, i sh - ph + a dh, ...]
 *   db[o] = sum_{n, i, j} dY[n, o, i, j]
 * (the CPU kernel, backend/cpu/cpu_conv.c, does this as im2col + GEMM.) f16/bf16
 * compute in f32 and round the results once. */
#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../autograd/autograd.h"
#include "conv_common.h"

/* Validates input/weight/params of conv2d (or its backward, `op`) and computes the
 * output shape. */
static dr_status check_conv(const dr_tensor *input, const dr_tensor *weight,
                            const int64_t *stride, const int64_t *padding,
                            const int64_t *dilation, int64_t groups, const char *op,
                            int64_t *out_sizes) {
    DR_TRY(dr_nn_check_float(input, op, "input"));
    DR_TRY(dr_check_tensor(weight, op, "weight"));
    DR_TRY(conv_check_pair(stride, op, "stride", 1));
    DR_TRY(conv_check_pair(padding, op, "padding", 0));
    DR_TRY(conv_check_pair(dilation, op, "dilation", 1));
    if (input->ndim != 4)
        return dr_fail(DR_ERR_SHAPE, "%s: expected a 4-D input [N, C, H, W], got %s", op,
                       dr_shape_str(input));
    if (weight->ndim != 4)
        return dr_fail(DR_ERR_SHAPE, "%s: expected a 4-D weight [out_channels, "
                       "in_channels/groups, kH, kW], got %s", op, dr_shape_str(weight));
    DR_TRY(conv_check_same(weight, input, op, "weight", "input"));
    if (groups < 1 || groups > CONV_MAX_GEOM)
        return dr_fail(DR_ERR_ARG, "%s: groups must be positive, got %lld", op,
                       (long long)groups);
    const int64_t *ws = weight->sizes;
    if (ws[1] < 1 || ws[2] < 1 || ws[3] < 1)
        return dr_fail(DR_ERR_SHAPE, "%s: weight %s is empty", op, dr_shape_str(weight));
    if (ws[0] % groups != 0)
        return dr_fail(DR_ERR_SHAPE, "%s: weight %s has %lld output channels, not divisible "
                       "by groups %lld", op, dr_shape_str(weight), (long long)ws[0],
                       (long long)groups);
    if (ws[1] > CONV_MAX_GEOM / groups || ws[1] * groups != input->sizes[1])
        return dr_fail(DR_ERR_SHAPE, "%s: weight %s expects %lld input channels (groups %lld), "
                       "got input %s with %lld", op, dr_shape_str(weight),
                       (long long)(ws[1] <= CONV_MAX_GEOM / groups ? ws[1] * groups : ws[1]),
                       (long long)groups, dr_shape_str(input), (long long)input->sizes[1]);
    out_sizes[0] = input->sizes[0];
    out_sizes[1] = ws[0];
    for (int d = 0; d < 2; d++)
        if (ws[2 + d] - 1 > (INT64_MAX / 4) / dilation[d])
            return dr_fail(DR_ERR_SHAPE, "%s: weight %s with dilation %s spans too many pixels",
                           op, dr_shape_str(weight), dr_sizes_str(dilation, 2));
    for (int d = 0; d < 2; d++) {
        int64_t padded = input->sizes[2 + d] + 2 * padding[d];
        int64_t span = dilation[d] * (ws[2 + d] - 1) + 1;
        if (padded < span)
            return dr_fail(DR_ERR_SHAPE, "%s: padded input %lldx%lld (input %s, padding %s) is "
                           "smaller than the kernel %lldx%lld (weight %s, dilation %s)", op,
                           (long long)(input->sizes[2] + 2 * padding[0]),
                           (long long)(input->sizes[3] + 2 * padding[1]), dr_shape_str(input),
                           dr_sizes_str(padding, 2),
                           (long long)(dilation[0] * (ws[2] - 1) + 1),
                           (long long)(dilation[1] * (ws[3] - 1) + 1), dr_shape_str(weight),
                           dr_sizes_str(dilation, 2));
        out_sizes[2 + d] = (padded - span) / stride[d] + 1;
    }
    return DR_OK;
}

/* The tape: inputs input, weight[, bias]; saved input, weight;
 * ints = stride(2), padding(2), dilation(2), groups, has bias. */
static dr_status conv2d_node_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    const dr_tensor *x, *w;
    DR_TRY(dr_autograd_saved(n, 0, &x));
    DR_TRY(dr_autograd_saved(n, 1, &w));
    const int64_t *p = n->ints;
    return dr_conv2d_backward(g, x, w, p, p + 2, p + 4, p[6],
                              dr_node_needs(n, 0) ? &grads[0] : NULL,
                              dr_node_needs(n, 1) ? &grads[1] : NULL,
                              p[7] && dr_node_needs(n, 2) ? &grads[2] : NULL);
}

static dr_status conv2d_record(const dr_tensor *input, const dr_tensor *weight,
                               const dr_tensor *bias, const int64_t *stride,
                               const int64_t *padding, const int64_t *dilation, int64_t groups,
                               dr_tensor *out) {
    const dr_tensor *inputs[3] = {input, weight, bias};
    dr_node *node;
    DR_TRY(dr_autograd_record(out, "conv2d", conv2d_node_backward, inputs, bias ? 3 : 2, &node));
    if (!node) return DR_OK;
    for (int i = 0; i < 2; i++) {
        node->ints[i] = stride[i];
        node->ints[2 + i] = padding[i];
        node->ints[4 + i] = dilation[i];
    }
    node->ints[6] = groups;
    node->ints[7] = bias != NULL;
    DR_TRY(dr_autograd_save(node, 0, input));
    return dr_autograd_save(node, 1, weight);
}

dr_status dr_conv2d(const dr_tensor *input, const dr_tensor *weight, const dr_tensor *bias,
                    const int64_t *stride, const int64_t *padding, const int64_t *dilation,
                    int64_t groups, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "conv2d"));
    int64_t out_sizes[4];
    DR_TRY(check_conv(input, weight, stride, padding, dilation, groups, "conv2d", out_sizes));
    if (bias) {
        DR_TRY(dr_check_tensor(bias, "conv2d", "bias"));
        DR_TRY(conv_check_same(bias, input, "conv2d", "bias", "input"));
        if (bias->ndim != 1 || bias->sizes[0] != weight->sizes[0])
            return dr_fail(DR_ERR_SHAPE, "conv2d: bias %s does not fit weight %s: expected "
                           "[%lld]", dr_shape_str(bias), dr_shape_str(weight),
                           (long long)weight->sizes[0]);
    }
    const dr_backend *be = dr_backend_get(input->device, "conv2d");
    if (!be) return DR_ERR_DEVICE;
    DR_TRY(DR_KERNEL(be, conv2d, "conv2d"));

    dr_tensor *x = NULL, *w = NULL, *b = NULL, *res = NULL;
    bool grad = dr_grad_pause();
    dr_status st = dr_nn_stage(input, true, &x);
    if (st == DR_OK) st = dr_nn_stage(weight, true, &w);
    if (st == DR_OK) st = dr_nn_stage(bias, true, &b);
    if (st == DR_OK) st = dr_tensor_new(out_sizes, 4, DR_F32, input->device, "conv2d", &res);
    if (st == DR_OK) st = be->conv2d(res, x, w, b, stride, padding, dilation, groups);
    dr_tensor_release(x);
    dr_tensor_release(w);
    dr_tensor_release(b);
    st = dr_nn_finish(st, res, input->scalar_type, out);
    dr_grad_resume(grad);
    if (st == DR_OK) st = conv2d_record(input, weight, bias, stride, padding, dilation, groups, *out);
    return dr_drop_on_error(st, out);
}

dr_status dr_conv2d_backward(const dr_tensor *grad_out, const dr_tensor *input,
                             const dr_tensor *weight, const int64_t *stride,
                             const int64_t *padding, const int64_t *dilation, int64_t groups,
                             dr_tensor **grad_input, dr_tensor **grad_weight,
                             dr_tensor **grad_bias) {
    const char *op = "conv2d_backward";
    if (grad_input) *grad_input = NULL;
    if (grad_weight) *grad_weight = NULL;
    if (grad_bias) *grad_bias = NULL;
    DR_TRY(dr_check_tensor(grad_out, op, "grad_out"));
    int64_t out_sizes[4];
    DR_TRY(check_conv(input, weight, stride, padding, dilation, groups, op, out_sizes));
    DR_TRY(conv_check_same(grad_out, input, op, "grad_out", "input"));
    bool fits = grad_out->ndim == 4;
    for (int d = 0; fits && d < 4; d++) fits = grad_out->sizes[d] == out_sizes[d];
    if (!fits)
        return dr_fail(DR_ERR_SHAPE, "%s: grad_out %s does not match the output %s of input %s "
                       "and weight %s", op, dr_shape_str(grad_out), dr_sizes_str(out_sizes, 4),
                       dr_shape_str(input), dr_shape_str(weight));
    if (!grad_input && !grad_weight && !grad_bias) return DR_OK;
    const dr_backend *be = dr_backend_get(input->device, op);
    if (!be) return DR_ERR_DEVICE;
    if (grad_input) DR_TRY(DR_KERNEL(be, conv2d_backward_input, op));
    if (grad_weight || grad_bias) DR_TRY(DR_KERNEL(be, conv2d_backward_weight, op));

    int32_t dtype = input->scalar_type;
    int64_t bias_size = weight->sizes[0];
    dr_tensor *dy = NULL, *x = NULL, *w = NULL, *gi = NULL, *gw = NULL, *gb = NULL;
    dr_status st = dr_nn_stage(grad_out, true, &dy);
    if (st == DR_OK && grad_input) st = dr_nn_stage(weight, true, &w);
    if (st == DR_OK && grad_weight) st = dr_nn_stage(input, true, &x);
    if (st == DR_OK && grad_input)
        st = dr_tensor_new(input->sizes, 4, DR_F32, input->device, op, &gi);
    if (st == DR_OK && grad_weight)
        st = dr_tensor_new(weight->sizes, 4, DR_F32, input->device, op, &gw);
    if (st == DR_OK && grad_bias) st = dr_tensor_new(&bias_size, 1, DR_F32, input->device, op, &gb);
    if (st == DR_OK && gi)
        st = be->conv2d_backward_input(gi, dy, w, stride, padding, dilation, groups);
    if (st == DR_OK && (gw || gb)) {
        /* Without grad_weight the kernel needs only the input's shape. */
        st = be->conv2d_backward_weight(gw, gb, dy, x ? x : input, stride, padding, dilation,
                                        groups);
    }
    dr_tensor_release(dy);
    dr_tensor_release(x);
    dr_tensor_release(w);
    st = dr_nn_finish(st, gi, dtype, grad_input);
    st = dr_nn_finish(st, gw, dtype, grad_weight);
    st = dr_nn_finish(st, gb, dtype, grad_bias);
    if (st != DR_OK) { /* all or nothing */
        dr_tensor **outs[3] = {grad_input, grad_weight, grad_bias};
        for (int i = 0; i < 3; i++)
            if (outs[i]) {
                dr_tensor_release(*outs[i]);
                *outs[i] = NULL;
            }
    }
    return st;
}
