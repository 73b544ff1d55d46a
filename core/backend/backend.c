/* Device -> backend table. */
#include "backend.h"
#include "../util/error.h"
#include "cpu/cpu_internal.h"

#ifdef DIFFRL_WITH_CUDA
int dr_cuda_runtime_device_count(void);
#endif

const dr_backend *dr_backend_get(dr_device device, const char *op) {
    if (device.type == DR_CPU) {
        if (device.index != 0)
            return dr_fail(DR_ERR_DEVICE, "%s: there is one cpu device, got cpu:%d", op,
                           device.index), NULL;
        return &dr_cpu_backend;
    }
    if (device.type == DR_CUDA) {
#ifdef DIFFRL_WITH_CUDA
        int count = dr_cuda_runtime_device_count();
        if (device.index < 0 || device.index >= count)
            return dr_fail(DR_ERR_DEVICE, "%s: %s requested but %d CUDA device(s) are visible", op,
                           dr_device_str(device), count), NULL;
        return &dr_cuda_backend;
#else
        return dr_fail(DR_ERR_DEVICE, "%s: %s requested but this diffrl was built without CUDA "
                       "(configure with -DDIFFRL_CUDA=ON)", op, dr_device_str(device)), NULL;
#endif
    }
    return dr_fail(DR_ERR_DEVICE, "%s: unknown device type %d", op, device.type), NULL;
}

int dr_cuda_device_count(void) {
#ifdef DIFFRL_WITH_CUDA
    return dr_cuda_runtime_device_count();
#else
    return 0;
#endif
}

#ifndef DIFFRL_WITH_CUDA
dr_status dr_cuda_get_memory_stats(int32_t device, dr_cuda_memory_stats *out) {
    (void)out;
    return dr_fail(DR_ERR_DEVICE, "cuda.memory_stats: cuda:%d requested but this diffrl was built "
                   "without CUDA (configure with -DDIFFRL_CUDA=ON)", device);
}
dr_status dr_cuda_synchronize(int32_t device) {
    return dr_fail(DR_ERR_DEVICE, "cuda.synchronize: cuda:%d requested but this diffrl was built "
                   "without CUDA (configure with -DDIFFRL_CUDA=ON)", device);
}
#endif

void dr_empty_cache(void) {
    dr_cpu_empty_cache();
#ifdef DIFFRL_WITH_CUDA
    dr_cuda_empty_cache();
#endif
}
