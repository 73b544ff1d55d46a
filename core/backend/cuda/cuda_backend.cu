/* CUDA backend: device discovery and version reporting now; the kernels (cuBLASLt
 * GEMMs, cuDNN convolutions, fused attention, caching allocator) fill this table
 * in the CUDA backend work. Until then every entry reports DR_ERR_UNSUPPORTED
 * with a message naming the op, so a CUDA build runs everything on the CPU and
 * fails clearly, not silently, when asked for a CUDA tensor. */
#include <cstdio>
#include <cuda_runtime.h>
#if __has_include(<cudnn_version.h>)
#include <cudnn_version.h>
#endif
#if __has_include(<nccl.h>)
#include <nccl.h>
#endif

extern "C" {
#include "../backend.h"
#include "../../util/error.h"
}

static const char *const kNotYet = "%s: not implemented on CUDA yet in this build of diffrl; "
                                   "use device='cpu'";

extern "C" int dr_cuda_runtime_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" status */
        return 0;
    }
    return count;
}

extern "C" const char *dr_cuda_version_string(void) {
    static char buf[128];
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    char drv[32] = "no driver";
    if (driver > 0) std::snprintf(drv, sizeof drv, "driver %d.%d", driver / 1000, (driver % 1000) / 10);
    std::snprintf(buf, sizeof buf, "%d.%d (runtime %d.%d, %s)", CUDART_VERSION / 1000,
                  (CUDART_VERSION % 1000) / 10, runtime / 1000, (runtime % 1000) / 10, drv);
    return buf;
}

extern "C" const char *dr_cudnn_version_string(void) {
#ifdef CUDNN_MAJOR
    static char buf[64];
    std::snprintf(buf, sizeof buf, "%d.%d.%d (headers; not linked yet)", CUDNN_MAJOR, CUDNN_MINOR,
                  CUDNN_PATCHLEVEL);
    return buf;
#else
    return "none";
#endif
}

extern "C" const char *dr_nccl_version_string(void) {
#ifdef NCCL_MAJOR
    static char buf[64];
#ifdef DIFFRL_WITH_NCCL
    std::snprintf(buf, sizeof buf, "%d.%d.%d (linked; collectives in core/comm)", NCCL_MAJOR, NCCL_MINOR,
                  NCCL_PATCH);
#else
    std::snprintf(buf, sizeof buf, "%d.%d.%d (headers only; libnccl not found)", NCCL_MAJOR, NCCL_MINOR,
                  NCCL_PATCH);
#endif
    return buf;
#else
    return "none";
#endif
}

static dr_status cuda_alloc(int32_t, size_t, void **ptr) {
    *ptr = nullptr;
    return dr_fail(DR_ERR_UNSUPPORTED, kNotYet, "alloc");
}
static void cuda_dealloc(int32_t, void *, size_t) {}
static dr_status cuda_copy(dr_tensor *, const dr_tensor *) {
    return dr_fail(DR_ERR_UNSUPPORTED, kNotYet, "copy");
}
static dr_status cuda_fill(dr_tensor *, double) { return dr_fail(DR_ERR_UNSUPPORTED, kNotYet, "fill"); }
static dr_status cuda_binary(dr_binary_op, dr_tensor *, const dr_tensor *, const dr_tensor *, double) {
    return dr_fail(DR_ERR_UNSUPPORTED, kNotYet, "binary op");
}
static dr_status cuda_matmul(dr_tensor *, const dr_tensor *, const dr_tensor *) {
    return dr_fail(DR_ERR_UNSUPPORTED, kNotYet, "matmul");
}
static dr_status cuda_sum(dr_tensor *, const dr_tensor *, int32_t) {
    return dr_fail(DR_ERR_UNSUPPORTED, kNotYet, "sum");
}
static dr_status cuda_random(dr_tensor *, dr_random_kind, uint64_t, uint64_t, uint32_t) {
    return dr_fail(DR_ERR_UNSUPPORTED, kNotYet, "random");
}

/* Filled by name: kernels this backend lacks stay NULL, and core/ops reports
 * them as "not implemented on the cuda backend" (DR_KERNEL in backend.h). */
static dr_backend make_cuda_backend() {
    dr_backend b = {};
    b.name = "cuda";
    b.alloc = cuda_alloc;
    b.dealloc = cuda_dealloc;
    b.copy = cuda_copy;
    b.fill = cuda_fill;
    b.binary = cuda_binary;
    b.matmul = cuda_matmul;
    b.sum = cuda_sum;
    b.random = cuda_random;
    return b;
}

extern "C" const dr_backend dr_cuda_backend = make_cuda_backend();
