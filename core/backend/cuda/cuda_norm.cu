/* Placeholder: the norm kernels are being written; entries stay NULL (reported as
 * "not implemented on the cuda backend yet"). */
#include "cuda_internal.cuh"

extern "C" void dr_cuda_register_norm(dr_backend *) {}
