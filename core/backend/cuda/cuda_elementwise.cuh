/* Entries of the elementwise family that live outside cuda_elementwise.cu:
 * the Philox kernels and fill_range (cuda_random.cu) and the optimizer updates
 * (cuda_optim.cu). dr_cuda_register_elementwise puts them in the table; their
 * semantics are backend.h's. */
#ifndef DR_CUDA_ELEMENTWISE_CUH
#define DR_CUDA_ELEMENTWISE_CUH

#include "cuda_internal.cuh"

extern "C" {
/* cuda_random.cu */
dr_status dr_cuda_random(dr_tensor *out, dr_random_kind kind, uint64_t seed, uint64_t offset,
                         uint32_t uniform_bits);
dr_status dr_cuda_randint(dr_tensor *out, int64_t low, uint64_t range, uint64_t seed,
                          uint64_t offset);
dr_status dr_cuda_dropout_mask(dr_tensor *mask, double p, uint64_t seed, uint64_t offset);
dr_status dr_cuda_fill_range(dr_tensor *out, double start, double step, double end, int linspace);

/* cuda_optim.cu */
dr_status dr_cuda_adamw(dr_tensor *param, const dr_tensor *grad, dr_tensor *exp_avg,
                        dr_tensor *exp_avg_sq, const double *hyper);
dr_status dr_cuda_sgd(dr_tensor *param, const dr_tensor *grad, dr_tensor *buf,
                      const double *hyper);
dr_status dr_cuda_lerp(dr_tensor *self, const dr_tensor *end, double weight);
dr_status dr_cuda_scale(dr_tensor *self, double s);
dr_status dr_cuda_sum_squares(const dr_tensor *t, double *out);
}

/* Threads per block of the elementwise kernels. */
enum { DR_CUDA_EW_THREADS = 256 };

#endif
