/* CUDA backend: devices and streams, the caching allocator, library handles, host
 * <-> device transfers, and the table that the kernel files fill
 * (dr_cuda_register_* in cuda_internal.cuh). An entry a family leaves NULL is
 * reported by core/ops as "op: not implemented on the cuda backend yet".
 *
 * Caching allocator (as PyTorch's CUDACachingAllocator, simplified to one stream
 * per device): requests round up to 512 B below 1 MiB and to 2 MiB above; a freed
 * block goes to its device's free list and is handed out again to a request of
 * the same rounded size (small) or of up to 1/8 less (large). All work runs on the
 * device's one stream, so reuse needs no event: the next op is queued after the
 * last one that used the block. When cudaMalloc fails the cache is released and
 * the allocation retried once; then the error says what was asked and what is
 * held. DIFFRL_CUDA_NO_CACHE=1 turns caching off (for compute-sanitizer). */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include <cublas_v2.h>
#if __has_include(<cudnn.h>)
#include <cudnn.h>
#define DR_HAVE_CUDNN 1
#endif
#if __has_include(<nccl.h>)
#include <nccl.h>
#endif

#include "cuda_internal.cuh"

enum { DR_CUDA_MAX_DEVICES = 16 };

/* ---- devices and streams ----------------------------------------------------- */

static std::mutex g_mutex; /* streams, handles and the allocator's lists */
static cudaStream_t g_stream[DR_CUDA_MAX_DEVICES];
static cublasHandle_t g_cublas[DR_CUDA_MAX_DEVICES];
#ifdef DR_HAVE_CUDNN
static cudnnHandle_t g_cudnn[DR_CUDA_MAX_DEVICES];
#endif

dr_status dr_cuda_fail(cudaError_t e, const char *op, const char *what) {
    cudaGetLastError(); /* clear a non-sticky error so later calls are not blamed */
    dr_status st = e == cudaErrorMemoryAllocation ? DR_ERR_OOM : DR_ERR_INTERNAL;
    return dr_fail(st, "%s: CUDA error %s (%s) in %s", op, cudaGetErrorName(e),
                   cudaGetErrorString(e), what);
}

extern "C" int dr_cuda_runtime_device_count(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" status */
        return 0;
    }
    return count;
}

cudaStream_t dr_cuda_stream_for(int32_t device_index, const char *op) {
    if (device_index < 0 || device_index >= DR_CUDA_MAX_DEVICES) {
        dr_fail(DR_ERR_DEVICE, "%s: cuda:%d is beyond the %d devices diffrl supports", op,
                device_index, DR_CUDA_MAX_DEVICES);
        return nullptr;
    }
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess || current != device_index) {
        cudaError_t e = cudaSetDevice(device_index);
        if (e != cudaSuccess) {
            dr_cuda_fail(e, op, "cudaSetDevice");
            return nullptr;
        }
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_stream[device_index]) {
        cudaError_t e = cudaStreamCreateWithFlags(&g_stream[device_index], cudaStreamNonBlocking);
        if (e != cudaSuccess) {
            g_stream[device_index] = nullptr;
            dr_cuda_fail(e, op, "cudaStreamCreateWithFlags");
            return nullptr;
        }
    }
    return g_stream[device_index];
}

extern "C" void *dr_cuda_stream_handle(int32_t device_index, const char *op) {
    return (void *)dr_cuda_stream_for(device_index, op);
}

dr_status dr_cuda_sync(int32_t device_index, const char *op) {
    cudaStream_t s = dr_cuda_stream_for(device_index, op);
    if (!s) return DR_ERR_DEVICE;
    DR_CUDA_TRY(cudaStreamSynchronize(s), op);
    return DR_OK;
}

static const char *cublas_status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
}

dr_status dr_cuda_cublas(int32_t device_index, struct cublasContext **handle) {
    cudaStream_t s = dr_cuda_stream_for(device_index, "cublas");
    if (!s) return DR_ERR_DEVICE;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_cublas[device_index]) {
        cublasStatus_t st = cublasCreate(&g_cublas[device_index]);
        if (st != CUBLAS_STATUS_SUCCESS) {
            g_cublas[device_index] = nullptr;
            return dr_fail(DR_ERR_INTERNAL, "cublas: cublasCreate on cuda:%d failed: %s",
                           device_index, cublas_status_name(st));
        }
        cublasSetStream(g_cublas[device_index], s);
        /* full f32 by default: TF32 only where a caller asks for it */
        cublasSetMathMode(g_cublas[device_index], CUBLAS_DEFAULT_MATH);
    }
    *handle = g_cublas[device_index];
    return DR_OK;
}

dr_status dr_cuda_cudnn(int32_t device_index, struct cudnnContext **handle) {
#ifdef DR_HAVE_CUDNN
    cudaStream_t s = dr_cuda_stream_for(device_index, "cudnn");
    if (!s) return DR_ERR_DEVICE;
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_cudnn[device_index]) {
        cudnnStatus_t st = cudnnCreate(&g_cudnn[device_index]);
        if (st != CUDNN_STATUS_SUCCESS) {
            g_cudnn[device_index] = nullptr;
            return dr_fail(DR_ERR_INTERNAL, "cudnn: cudnnCreate on cuda:%d failed: %s",
                           device_index, cudnnGetErrorString(st));
        }
        cudnnSetStream(g_cudnn[device_index], s);
    }
    *handle = g_cudnn[device_index];
    return DR_OK;
#else
    (void)device_index;
    *handle = nullptr;
    return dr_fail(DR_ERR_UNSUPPORTED, "cudnn: this diffrl was built without cuDNN");
#endif
}

/* ---- caching allocator ---------------------------------------------------------- */

struct DeviceCache {
    std::multimap<size_t, void *> free_blocks;      /* size -> block */
    std::unordered_map<void *, size_t> live;        /* block -> its rounded size */
    dr_cuda_memory_stats stats;
};
static DeviceCache g_cache[DR_CUDA_MAX_DEVICES];

static size_t round_size(size_t n) {
    const size_t small = 512, large = (size_t)2 << 20;
    if (n == 0) n = 1;
    if (n < ((size_t)1 << 20)) return (n + small - 1) / small * small;
    return (n + large - 1) / large * large;
}

static bool caching_enabled() {
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("DIFFRL_CUDA_NO_CACHE");
        on = !(v && *v && strcmp(v, "0") != 0);
    }
    return on;
}

/* Frees every cached block of a device (lock held). */
static void release_cached(int32_t dev) {
    DeviceCache &c = g_cache[dev];
    if (c.free_blocks.empty()) return;
    cudaStreamSynchronize(g_stream[dev]);
    for (auto &kv : c.free_blocks) {
        cudaFree(kv.second);
        c.stats.reserved -= (int64_t)kv.first;
    }
    c.free_blocks.clear();
}

static dr_status cuda_alloc(int32_t dev, size_t nbytes, void **ptr) {
    *ptr = nullptr;
    if (!dr_cuda_stream_for(dev, "alloc")) return DR_ERR_DEVICE;
    size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(g_mutex);
    DeviceCache &c = g_cache[dev];
    c.stats.alloc_count++;
    if (caching_enabled()) {
        auto it = c.free_blocks.lower_bound(size);
        bool fits = it != c.free_blocks.end() &&
                    (it->first == size || (size >= ((size_t)1 << 20) && it->first - size <= size / 8));
        if (fits) {
            *ptr = it->second;
            size = it->first;
            c.free_blocks.erase(it);
            c.stats.cache_hits++;
        }
    }
    if (!*ptr) {
        cudaError_t e = cudaMalloc(ptr, size);
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            release_cached(dev);
            e = cudaMalloc(ptr, size);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            *ptr = nullptr;
            c.stats.oom_count++;
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            return dr_fail(DR_ERR_OOM, "cuda:%d out of memory: asked for %zu bytes (%.1f MiB); "
                           "tensors hold %.1f MiB, the cache %.1f MiB, the device has %.1f MiB "
                           "free of %.1f MiB (%s)", dev, nbytes, nbytes / 1048576.0,
                           c.stats.allocated / 1048576.0,
                           (c.stats.reserved - c.stats.allocated) / 1048576.0, free_b / 1048576.0,
                           total_b / 1048576.0, cudaGetErrorName(e));
        }
        c.stats.reserved += (int64_t)size;
        c.stats.cuda_malloc_count++;
        if (c.stats.reserved > c.stats.peak_reserved) c.stats.peak_reserved = c.stats.reserved;
    }
    c.live[*ptr] = size;
    c.stats.allocated += (int64_t)size;
    if (c.stats.allocated > c.stats.peak_allocated) c.stats.peak_allocated = c.stats.allocated;
    return DR_OK;
}

static void cuda_dealloc(int32_t dev, void *ptr, size_t) {
    if (!ptr || dev < 0 || dev >= DR_CUDA_MAX_DEVICES) return;
    std::lock_guard<std::mutex> lock(g_mutex);
    DeviceCache &c = g_cache[dev];
    auto it = c.live.find(ptr);
    if (it == c.live.end()) return; /* not ours: never happens for tensor storage */
    size_t size = it->second;
    c.live.erase(it);
    c.stats.allocated -= (int64_t)size;
    if (caching_enabled()) {
        c.free_blocks.emplace(size, ptr);
    } else {
        int current = -1;
        cudaGetDevice(&current);
        if (current != dev) cudaSetDevice(dev);
        cudaStreamSynchronize(g_stream[dev]);
        cudaFree(ptr);
        c.stats.reserved -= (int64_t)size;
    }
}

dr_status dr_cuda_scratch(int32_t dev, size_t nbytes, void **ptr) { return cuda_alloc(dev, nbytes, ptr); }
void dr_cuda_scratch_free(int32_t dev, void *ptr, size_t nbytes) { cuda_dealloc(dev, ptr, nbytes); }

extern "C" dr_status dr_cuda_get_memory_stats(int32_t device, dr_cuda_memory_stats *out) {
    if (!out) return dr_fail(DR_ERR_ARG, "cuda.memory_stats: out is NULL");
    if (device < 0 || device >= DR_CUDA_MAX_DEVICES || device >= dr_cuda_runtime_device_count())
        return dr_fail(DR_ERR_DEVICE, "cuda.memory_stats: no device cuda:%d (%d visible)", device,
                       dr_cuda_runtime_device_count());
    std::lock_guard<std::mutex> lock(g_mutex);
    *out = g_cache[device].stats;
    return DR_OK;
}

extern "C" void dr_cuda_empty_cache(void) {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (int d = 0; d < DR_CUDA_MAX_DEVICES; d++)
        if (g_stream[d]) {
            cudaSetDevice(d);
            release_cached(d);
        }
}

extern "C" dr_status dr_cuda_synchronize(int32_t device) {
    if (device < 0 || device >= dr_cuda_runtime_device_count())
        return dr_fail(DR_ERR_DEVICE, "cuda.synchronize: no device cuda:%d (%d visible)", device,
                       dr_cuda_runtime_device_count());
    return dr_cuda_sync(device, "cuda.synchronize");
}

/* ---- host <-> device ------------------------------------------------------------ */

/* dst = src (cast, broadcast already applied) where exactly one of them is on a
 * CUDA device. The bytes travel contiguous in one dtype: the device side is cast
 * and laid out by the device copy kernel, the host side by the CPU one. */
extern "C" dr_status dr_cuda_transfer(dr_tensor *dst, const dr_tensor *src) {
    const bool upload = dst->device.type == DR_CUDA;
    const dr_tensor *dev_t = upload ? dst : src;
    const int32_t dev = dev_t->device.index;
    cudaStream_t s = dr_cuda_stream_for(dev, "copy_");
    if (!s) return DR_ERR_DEVICE;
    const dr_backend *cuda = &dr_cuda_backend;
    if (!cuda->copy) return dr_fail(DR_ERR_UNSUPPORTED, "copy_: the cuda backend has no copy kernel");
    int64_t n = dr_tensor_numel(dst);
    if (n == 0) return DR_OK;
    /* Travel in the host side's dtype when uploading (the device casts), the
     * destination's when downloading (the device casts before the copy). */
    int32_t travel = upload ? src->scalar_type : dst->scalar_type;
    size_t nbytes = (size_t)n * (size_t)dr_dtype_size(travel);
    dr_tensor *host = nullptr, *device = nullptr;
    dr_status st = dr_tensor_new(dst->sizes, dst->ndim, travel, dr_cpu(), "copy_", &host);
    if (st == DR_OK) st = dr_tensor_new(dst->sizes, dst->ndim, travel, dev_t->device, "copy_", &device);
    if (st == DR_OK) {
        if (upload) {
            st = dr_cpu_backend.copy(host, src); /* contiguous, host */
            if (st == DR_OK) {
                cudaError_t e = cudaMemcpyAsync(dr_tensor_data(device), dr_tensor_data(host), nbytes,
                                                cudaMemcpyHostToDevice, s);
                if (e == cudaSuccess) e = cudaStreamSynchronize(s); /* host buffer freed next */
                if (e != cudaSuccess) st = dr_cuda_fail(e, "copy_", "host to device");
            }
            if (st == DR_OK) st = cuda->copy(dst, device);
        } else {
            st = cuda->copy(device, src);
            if (st == DR_OK) {
                cudaError_t e = cudaMemcpyAsync(dr_tensor_data(host), dr_tensor_data(device), nbytes,
                                                cudaMemcpyDeviceToHost, s);
                if (e == cudaSuccess) e = cudaStreamSynchronize(s);
                if (e != cudaSuccess) st = dr_cuda_fail(e, "copy_", "device to host");
            }
            if (st == DR_OK) st = dr_cpu_backend.copy(dst, host);
        }
    }
    dr_tensor_release(host);
    dr_tensor_release(device);
    return st;
}

/* ---- versions ------------------------------------------------------------------- */

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
#ifdef DR_HAVE_CUDNN
    static char buf[64];
    size_t v = cudnnGetVersion();
    std::snprintf(buf, sizeof buf, "%d.%d.%d (linked %zu.%zu.%zu)", CUDNN_MAJOR, CUDNN_MINOR,
                  CUDNN_PATCHLEVEL, v / 10000, (v % 10000) / 100, v % 100);
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

/* ---- the table ---------------------------------------------------------------- */

/* core/ops calls the first block of the table without checking it (backend.h):
 * an entry no family filled must still fail cleanly. */
static dr_status missing_copy(dr_tensor *, const dr_tensor *) {
    return dr_fail(DR_ERR_UNSUPPORTED, "copy: not implemented on the cuda backend yet");
}
static dr_status missing_fill(dr_tensor *, double) {
    return dr_fail(DR_ERR_UNSUPPORTED, "fill: not implemented on the cuda backend yet");
}
static dr_status missing_binary(dr_binary_op, dr_tensor *, const dr_tensor *, const dr_tensor *, double) {
    return dr_fail(DR_ERR_UNSUPPORTED, "binary op: not implemented on the cuda backend yet");
}
static dr_status missing_matmul(dr_tensor *, const dr_tensor *, const dr_tensor *) {
    return dr_fail(DR_ERR_UNSUPPORTED, "matmul: not implemented on the cuda backend yet");
}
static dr_status missing_sum(dr_tensor *, const dr_tensor *, int32_t) {
    return dr_fail(DR_ERR_UNSUPPORTED, "sum: not implemented on the cuda backend yet");
}
static dr_status missing_random(dr_tensor *, dr_random_kind, uint64_t, uint64_t, uint32_t) {
    return dr_fail(DR_ERR_UNSUPPORTED, "random: not implemented on the cuda backend yet");
}

static dr_backend make_cuda_backend() {
    dr_backend b = {};
    b.name = "cuda";
    b.alloc = cuda_alloc;
    b.dealloc = cuda_dealloc;
    dr_cuda_register_elementwise(&b);
    dr_cuda_register_reduce(&b);
    dr_cuda_register_norm(&b);
    dr_cuda_register_dense(&b);
    dr_cuda_register_attention(&b);
    if (!b.copy) b.copy = missing_copy;
    if (!b.fill) b.fill = missing_fill;
    if (!b.binary) b.binary = missing_binary;
    if (!b.matmul) b.matmul = missing_matmul;
    if (!b.sum) b.sum = missing_sum;
    if (!b.random) b.random = missing_random;
    return b;
}

extern "C" const dr_backend dr_cuda_backend = make_cuda_backend();
