/* The dense family's entries of the CUDA table: matmul on cuBLAS (cuda_matmul.cu),
 * conv2d and its backwards on cuDNN (cuda_conv.cu), nearest upsampling and
 * average pooling as plain kernels (cuda_pool.cu). The declarations have C++
 * linkage, so a signature that drifts from its definition fails to link. */
#include "cuda_internal.cuh"

dr_status dr_cuda_matmul(dr_tensor *out, const dr_tensor *a, const dr_tensor *b);

dr_status dr_cuda_conv2d(dr_tensor *out, const dr_tensor *in, const dr_tensor *weight,
                         const dr_tensor *bias, const int64_t *stride, const int64_t *padding,
                         const int64_t *dilation, int64_t groups);
dr_status dr_cuda_conv2d_backward_input(dr_tensor *grad_in, const dr_tensor *grad_out,
                                        const dr_tensor *weight, const int64_t *stride,
                                        const int64_t *padding, const int64_t *dilation,
                                        int64_t groups);
dr_status dr_cuda_conv2d_backward_weight(dr_tensor *grad_weight, dr_tensor *grad_bias,
                                         const dr_tensor *grad_out, const dr_tensor *in,
                                         const int64_t *stride, const int64_t *padding,
                                         const int64_t *dilation, int64_t groups);

dr_status dr_cuda_upsample_nearest2d(dr_tensor *out, const dr_tensor *in);
dr_status dr_cuda_upsample_nearest2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out);
dr_status dr_cuda_avg_pool2d(dr_tensor *out, const dr_tensor *in, const int64_t *kernel,
                             const int64_t *stride, const int64_t *padding);
dr_status dr_cuda_avg_pool2d_backward(dr_tensor *grad_in, const dr_tensor *grad_out,
                                      const int64_t *kernel, const int64_t *stride,
                                      const int64_t *padding);

extern "C" void dr_cuda_register_dense(dr_backend *b) {
    b->matmul = dr_cuda_matmul;
    b->conv2d = dr_cuda_conv2d;
    b->conv2d_backward_input = dr_cuda_conv2d_backward_input;
    b->conv2d_backward_weight = dr_cuda_conv2d_backward_weight;
    b->upsample_nearest2d = dr_cuda_upsample_nearest2d;
    b->upsample_nearest2d_backward = dr_cuda_upsample_nearest2d_backward;
    b->avg_pool2d = dr_cuda_avg_pool2d;
    b->avg_pool2d_backward = dr_cuda_avg_pool2d_backward;
}
