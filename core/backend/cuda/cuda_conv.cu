/* conv2d and its two backwards (float32, contiguous NCHW) on cuDNN 9's legacy
 * convolution API; the math is core/ops/conv.c's, the reference
 * backend/cpu/cpu_conv.c:
 *   y[n, o] = b[o] + sum W[o, c, a, e] x[n, g C/G + c, i sh - ph + a dh, j sw - pw + e dw]
 *   dx = the transposed convolution of dY with W (cudnnConvolutionBackwardData)
 *   dW[o, c, a, e] = sum_{n, i, j} dY[n, o, i, j] x[...]  (cudnnConvolutionBackwardFilter;
 *                    overwritten, as the CPU's first GEMM has beta 0)
 *   db[o] = sum_{n, i, j} dY[n, o, i, j], in double (our kernel, as the CPU)
 *
 * Precision and determinism: the convolution descriptor asks for CUDNN_FMA_MATH,
 * i.e. plain FP32 FMA kernels and never TF32 tensor cores, so the results match
 * the CPU's to float rounding of the C kh kw long sums. Only algorithms cuDNN
 * reports as deterministic are used (backward data algo 0 and backward filter
 * algos 0 and 3 add with atomics), so a run repeats its bits.
 *
 * Algorithms come from cuDNN's heuristics (cudnnGet*Algorithm_v7, no
 * benchmarking, so the choice does not depend on timing noise or free memory)
 * and are cached per device, direction and geometry in a small table. Each
 * entry also keeps the deterministic algorithm with the least workspace, used
 * when the preferred one's workspace cannot be allocated.
 *
 * cuDNN's legacy descriptors hold int sizes and strides, so a batch whose input
 * or output passes 2^31 elements runs in chunks of images (the weight gradient
 * accumulates the later chunks with beta 1, in order). */
#include <climits>
#include <cstring>
#include <mutex>

#include <cudnn.h>

#include "cuda_internal.cuh"

namespace {

struct conv_geom {
    int64_t n, c, h, w, o, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, groups;
};

conv_geom make_geom(const int64_t *in_sizes, const int64_t *out_sizes, int64_t kh, int64_t kw,
                    const int64_t *stride, const int64_t *padding, const int64_t *dilation,
                    int64_t groups) {
    conv_geom g;
    g.n = in_sizes[0], g.c = in_sizes[1], g.h = in_sizes[2], g.w = in_sizes[3];
    g.o = out_sizes[1], g.ho = out_sizes[2], g.wo = out_sizes[3];
    g.kh = kh, g.kw = kw;
    g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1];
    g.dh = dilation[0], g.dw = dilation[1], g.groups = groups;
    return g;
}

/* "input [2, 64, 32, 32], weight [64, 64, 3, 3], stride [1, 1], ..." for errors. */
const char *geom_str(const conv_geom &g) {
    static thread_local char buf[320];
    snprintf(buf, sizeof buf,
             "input [%lld, %lld, %lld, %lld], weight [%lld, %lld, %lld, %lld], output "
             "[%lld, %lld, %lld, %lld], stride [%lld, %lld], padding [%lld, %lld], dilation "
             "[%lld, %lld], groups %lld",
             (long long)g.n, (long long)g.c, (long long)g.h, (long long)g.w, (long long)g.o,
             (long long)(g.groups > 0 ? g.c / g.groups : 0), (long long)g.kh, (long long)g.kw,
             (long long)g.n, (long long)g.o, (long long)g.ho, (long long)g.wo, (long long)g.sh,
             (long long)g.sw, (long long)g.ph, (long long)g.pw, (long long)g.dh, (long long)g.dw,
             (long long)g.groups);
    return buf;
}

dr_status cudnn_fail(cudnnStatus_t s, const char *op, const conv_geom &g, const char *what) {
    int category = (int)s / 1000 * 1000;
    dr_status st = category == CUDNN_STATUS_NOT_SUPPORTED ? DR_ERR_UNSUPPORTED
                   : s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ? DR_ERR_OOM
                                                                               : DR_ERR_INTERNAL;
    return dr_fail(st, "%s: cuDNN %s failed (%s) for %s", op, what, cudnnGetErrorString(s),
                   geom_str(g));
}

#define DR_CUDNN_TRY(call, op, g)                                                   \
    do {                                                                            \
        cudnnStatus_t dr_cudnn_s_ = (call);                                         \
        if (dr_cudnn_s_ != CUDNN_STATUS_SUCCESS) return cudnn_fail(dr_cudnn_s_, (op), (g), #call); \
    } while (0)

/* cuDNN's int parameters; per-image sizes must fit too (its strides are int). */
dr_status check_int_geom(const conv_geom &g, const char *op) {
    const int64_t v[] = {g.c, g.h, g.w, g.o, g.ho, g.wo, g.kh, g.kw, g.sh, g.sw,
                         g.ph, g.pw, g.dh, g.dw, g.groups, g.c * g.h * g.w, g.o * g.ho * g.wo,
                         (g.c / g.groups) * g.kh * g.kw * g.o};
    for (int64_t x : v)
        if (x > INT_MAX)
            return dr_fail(DR_ERR_UNSUPPORTED, "%s: cuDNN takes 32-bit sizes and one image or "
                           "the weight is larger: %s", op, geom_str(g));
    return DR_OK;
}

/* Images per cuDNN call: input and output of a chunk stay within int. */
int64_t chunk_images(const conv_geom &g) {
    int64_t per = g.c * g.h * g.w > g.o * g.ho * g.wo ? g.c * g.h * g.w : g.o * g.ho * g.wo;
    int64_t nb = per > 0 ? INT_MAX / per : g.n;
    if (nb < 1) nb = 1;
    return nb < g.n ? nb : g.n;
}

/* ---- descriptors ---------------------------------------------------------------- */

/* The descriptors of one call, destroyed on every return path. */
struct conv_descs {
    cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
    cudnnFilterDescriptor_t w = nullptr;
    cudnnConvolutionDescriptor_t conv = nullptr;
    conv_descs() = default;
    conv_descs(const conv_descs &) = delete;
    conv_descs &operator=(const conv_descs &) = delete;
    ~conv_descs() {
        if (x) cudnnDestroyTensorDescriptor(x);
        if (y) cudnnDestroyTensorDescriptor(y);
        if (bias) cudnnDestroyTensorDescriptor(bias);
        if (w) cudnnDestroyFilterDescriptor(w);
        if (conv) cudnnDestroyConvolutionDescriptor(conv);
    }
};

/* x [nb, C, H, W], y [nb, O, Ho, Wo], w [O, C/G, kh, kw] (and bias [1, O, 1, 1]),
 * the convolution in FP32 FMA math. */
dr_status make_descs(conv_descs &d, const conv_geom &g, int64_t nb, bool with_bias,
                     const char *op) {
    DR_CUDNN_TRY(cudnnCreateTensorDescriptor(&d.x), op, g);
    DR_CUDNN_TRY(cudnnCreateTensorDescriptor(&d.y), op, g);
    DR_CUDNN_TRY(cudnnCreateFilterDescriptor(&d.w), op, g);
    DR_CUDNN_TRY(cudnnCreateConvolutionDescriptor(&d.conv), op, g);
    DR_CUDNN_TRY(cudnnSetTensor4dDescriptor(d.x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)nb,
                                            (int)g.c, (int)g.h, (int)g.w), op, g);
    DR_CUDNN_TRY(cudnnSetTensor4dDescriptor(d.y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)nb,
                                            (int)g.o, (int)g.ho, (int)g.wo), op, g);
    DR_CUDNN_TRY(cudnnSetFilter4dDescriptor(d.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, (int)g.o,
                                            (int)(g.c / g.groups), (int)g.kh, (int)g.kw), op, g);
    DR_CUDNN_TRY(cudnnSetConvolution2dDescriptor(d.conv, (int)g.ph, (int)g.pw, (int)g.sh,
                                                 (int)g.sw, (int)g.dh, (int)g.dw,
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                 op, g);
    DR_CUDNN_TRY(cudnnSetConvolutionGroupCount(d.conv, (int)g.groups), op, g);
    DR_CUDNN_TRY(cudnnSetConvolutionMathType(d.conv, CUDNN_FMA_MATH), op, g);
    if (with_bias) {
        DR_CUDNN_TRY(cudnnCreateTensorDescriptor(&d.bias), op, g);
        DR_CUDNN_TRY(cudnnSetTensor4dDescriptor(d.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1,
                                                (int)g.o, 1, 1), op, g);
    }
    return DR_OK;
}

/* ---- algorithm choice, cached ------------------------------------------------------ */

enum conv_dir : int64_t { DIR_FORWARD, DIR_DATA, DIR_FILTER };

/* All int64, no padding bytes: compared with memcmp. */
struct algo_key {
    int64_t device, dir, nb;
    conv_geom g;
};

struct algo_choice {
    int algo;          /* preferred: cuDNN's best-ranked deterministic FMA algorithm */
    size_t ws;
    int small_algo;    /* the same kind with the least workspace */
    size_t small_ws;
};

/* Workspace beyond this skips to the next-ranked algorithm (FFT variants can
 * ask for gigabytes on large images). */
constexpr size_t WORKSPACE_CAP = (size_t)1 << 30;
constexpr int CACHE_SIZE = 64;

struct algo_cache {
    std::mutex mutex;
    algo_key keys[CACHE_SIZE];
    algo_choice choices[CACHE_SIZE];
    int used = 0;       /* filled slots */
    unsigned next = 0;  /* round-robin replacement once full */
};
algo_cache g_algos;

bool cache_get(const algo_key &k, algo_choice *out) {
    std::lock_guard<std::mutex> lock(g_algos.mutex);
    for (int i = 0; i < g_algos.used; i++)
        if (std::memcmp(&g_algos.keys[i], &k, sizeof k) == 0) {
            *out = g_algos.choices[i];
            return true;
        }
    return false;
}

void cache_put(const algo_key &k, const algo_choice &c) {
    std::lock_guard<std::mutex> lock(g_algos.mutex);
    int slot = g_algos.used < CACHE_SIZE ? g_algos.used++ : (int)(g_algos.next++ % CACHE_SIZE);
    g_algos.keys[slot] = k;
    g_algos.choices[slot] = c;
}

/* From cuDNN's ranked list: the first usable algorithm within the workspace cap,
 * and the usable one with the least workspace. Usable: it runs (status), repeats
 * its bits (determinism) and is no tensor-core kernel (TF32 would break parity). */
template <typename Perf>
bool pick(const Perf *perf, int count, algo_choice *c) {
    int best = -1, small = -1;
    for (int i = 0; i < count; i++) {
        const Perf &p = perf[i];
        if (p.status != CUDNN_STATUS_SUCCESS || p.determinism != CUDNN_DETERMINISTIC) continue;
        if (p.mathType == CUDNN_TENSOR_OP_MATH ||
            p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
            continue;
        if (best < 0 && p.memory <= WORKSPACE_CAP) best = i;
        if (small < 0 || p.memory < perf[small].memory) small = i;
    }
    if (small < 0) return false;
    if (best < 0) best = small;
    c->algo = (int)perf[best].algo;
    c->small_algo = (int)perf[small].algo;
    return true;
}

/* The algorithm (and workspace sizes, asked of cuDNN for the exact algorithm)
 * for direction `dir` on descriptors `d`, from the cache or the heuristics. */
dr_status choose(cudnnHandle_t h, const conv_descs &d, conv_dir dir, int32_t device, int64_t nb,
                 const conv_geom &g, const char *op, algo_choice *out) {
    algo_key key;
    std::memset(&key, 0, sizeof key);
    key.device = device, key.dir = dir, key.nb = nb, key.g = g;
    if (cache_get(key, out)) return DR_OK;
    algo_choice c = {};
    bool ok = false;
    int count = 0;
    if (dir == DIR_FORWARD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        DR_CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(
                         h, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf),
                     op, g);
        ok = pick(perf, count, &c);
        if (ok) {
            DR_CUDNN_TRY(cudnnGetConvolutionForwardWorkspaceSize(
                             h, d.x, d.w, d.conv, d.y, (cudnnConvolutionFwdAlgo_t)c.algo, &c.ws),
                         op, g);
            DR_CUDNN_TRY(cudnnGetConvolutionForwardWorkspaceSize(
                             h, d.x, d.w, d.conv, d.y, (cudnnConvolutionFwdAlgo_t)c.small_algo,
                             &c.small_ws),
                         op, g);
        }
    } else if (dir == DIR_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        DR_CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(
                         h, d.w, d.y, d.conv, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count,
                         perf),
                     op, g);
        ok = pick(perf, count, &c);
        if (ok) {
            DR_CUDNN_TRY(cudnnGetConvolutionBackwardDataWorkspaceSize(
                             h, d.w, d.y, d.conv, d.x, (cudnnConvolutionBwdDataAlgo_t)c.algo,
                             &c.ws),
                         op, g);
            DR_CUDNN_TRY(cudnnGetConvolutionBackwardDataWorkspaceSize(
                             h, d.w, d.y, d.conv, d.x, (cudnnConvolutionBwdDataAlgo_t)c.small_algo,
                             &c.small_ws),
                         op, g);
        }
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        DR_CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                         h, d.x, d.y, d.conv, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                         &count, perf),
                     op, g);
        ok = pick(perf, count, &c);
        if (ok) {
            DR_CUDNN_TRY(cudnnGetConvolutionBackwardFilterWorkspaceSize(
                             h, d.x, d.y, d.conv, d.w, (cudnnConvolutionBwdFilterAlgo_t)c.algo,
                             &c.ws),
                         op, g);
            DR_CUDNN_TRY(cudnnGetConvolutionBackwardFilterWorkspaceSize(
                             h, d.x, d.y, d.conv, d.w,
                             (cudnnConvolutionBwdFilterAlgo_t)c.small_algo, &c.small_ws),
                         op, g);
        }
    }
    if (!ok)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: cuDNN offers no deterministic FP32 %s algorithm "
                       "(of %d) for %s", op,
                       dir == DIR_FORWARD ? "forward" : dir == DIR_DATA ? "backward data"
                                                                        : "backward filter",
                       count, geom_str(g));
    cache_put(key, c);
    *out = c;
    return DR_OK;
}

/* Workspace for `c` from the caching allocator; when the preferred algorithm's
 * does not fit, the least-workspace algorithm instead (the OOM error dropped). */
dr_status workspace(int32_t device, algo_choice *c, void **ws) {
    *ws = nullptr;
    if (c->ws == 0) return DR_OK;
    dr_status st = dr_cuda_scratch(device, c->ws, ws);
    if (st != DR_OK && st == DR_ERR_OOM && c->small_ws < c->ws) {
        dr_clear_error();
        c->algo = c->small_algo;
        c->ws = c->small_ws;
        if (c->ws == 0) return DR_OK;
        st = dr_cuda_scratch(device, c->ws, ws);
    }
    if (st != DR_OK) *ws = nullptr;
    return st;
}

/* ---- plain kernels ----------------------------------------------------------------- */

constexpr int BIAS_THREADS = 256;

/* db[o] = sum_{n, p} dy[n, o, p]: one block per channel, each thread a double
 * partial sum over a fixed subset, then a fixed-shape tree. The order depends
 * only on the shape, so the result repeats. */
__global__ void bias_grad_kernel(float *__restrict__ db, const float *__restrict__ dy, int64_t n,
                                 int64_t o, int64_t hw) {
    __shared__ double part[BIAS_THREADS];
    for (int64_t oc = blockIdx.x; oc < o; oc += gridDim.x) {
        double s = 0;
        for (int64_t img = 0; img < n; img++) {
            const float *row = dy + (img * o + oc) * hw;
            for (int64_t p = threadIdx.x; p < hw; p += BIAS_THREADS) s += row[p];
        }
        part[threadIdx.x] = s;
        __syncthreads();
        for (int step = BIAS_THREADS / 2; step > 0; step >>= 1) {
            if ((int)threadIdx.x < step) part[threadIdx.x] += part[threadIdx.x + step];
            __syncthreads();
        }
        if (threadIdx.x == 0) db[oc] = (float)part[0];
        __syncthreads(); /* part is rewritten for the next channel */
    }
}

/* y[n, o, p] = bias[o] or 0: the output of a convolution over an empty image
 * (all padding), which cuDNN does not take. */
__global__ void bias_fill_kernel(float *__restrict__ y, const float *__restrict__ bias,
                                 int64_t total, int64_t o, int64_t hw) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = bias ? bias[(i / hw) % o] : 0.0f;
}

} // namespace

/* ---- entries ---------------------------------------------------------------------- */

dr_status dr_cuda_conv2d(dr_tensor *out, const dr_tensor *in, const dr_tensor *weight,
                         const dr_tensor *bias, const int64_t *stride, const int64_t *padding,
                         const int64_t *dilation, int64_t groups) {
    const char *op = "conv2d";
    conv_geom g = make_geom(in->sizes, out->sizes, weight->sizes[2], weight->sizes[3], stride,
                            padding, dilation, groups);
    cudaStream_t stream = dr_cuda_stream_of(out, op);
    if (!stream) return DR_ERR_DEVICE;
    if (g.n == 0 || g.o == 0 || g.ho * g.wo == 0) return DR_OK;
    float *y = dr_cuda_ptr<float>(out);
    const float *b = bias ? dr_cuda_ptr<float>(bias) : nullptr;
    if (g.h == 0 || g.w == 0) { /* every window in the padding: y = bias */
        int64_t total = g.n * g.o * g.ho * g.wo;
        bias_fill_kernel<<<dr_cuda_blocks(total, 256), 256, 0, stream>>>(y, b, total, g.o,
                                                                        g.ho * g.wo);
        DR_CUDA_LAUNCHED(op);
        return DR_OK;
    }
    DR_TRY(check_int_geom(g, op));
    const int32_t dev = out->device.index;
    cudnnHandle_t h = nullptr;
    DR_TRY(dr_cuda_cudnn(dev, &h));
    const float *x = dr_cuda_ptr<float>(in), *w = dr_cuda_ptr<float>(weight);
    const float one = 1.0f, zero = 0.0f;
    int64_t chunk = chunk_images(g);
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
        int64_t nb = g.n - n0 < chunk ? g.n - n0 : chunk;
        conv_descs d;
        DR_TRY(make_descs(d, g, nb, b != nullptr, op));
        algo_choice c;
        DR_TRY(choose(h, d, DIR_FORWARD, dev, nb, g, op, &c));
        void *ws = nullptr;
        DR_TRY(workspace(dev, &c, &ws));
        float *yc = y + n0 * g.o * g.ho * g.wo;
        cudnnStatus_t s = cudnnConvolutionForward(
            h, &one, d.x, x + n0 * g.c * g.h * g.w, d.w, w, d.conv,
            (cudnnConvolutionFwdAlgo_t)c.algo, ws, c.ws, &zero, d.y, yc);
        if (ws) dr_cuda_scratch_free(dev, ws, c.ws); /* stream-ordered: queued already */
        if (s != CUDNN_STATUS_SUCCESS) return cudnn_fail(s, op, g, "cudnnConvolutionForward");
        if (b) DR_CUDNN_TRY(cudnnAddTensor(h, &one, d.bias, b, &one, d.y, yc), op, g);
    }
    return DR_OK;
}

dr_status dr_cuda_conv2d_backward_input(dr_tensor *grad_in, const dr_tensor *grad_out,
                                        const dr_tensor *weight, const int64_t *stride,
                                        const int64_t *padding, const int64_t *dilation,
                                        int64_t groups) {
    const char *op = "conv2d_backward";
    conv_geom g = make_geom(grad_in->sizes, grad_out->sizes, weight->sizes[2], weight->sizes[3],
                            stride, padding, dilation, groups);
    cudaStream_t stream = dr_cuda_stream_of(grad_in, op);
    if (!stream) return DR_ERR_DEVICE;
    if (g.n == 0 || g.c == 0 || g.h * g.w == 0) return DR_OK;
    float *dx = dr_cuda_ptr<float>(grad_in);
    if (g.o == 0 || g.ho * g.wo == 0) { /* no output: nothing flows back */
        DR_CUDA_TRY(cudaMemsetAsync(dx, 0, (size_t)(g.n * g.c * g.h * g.w) * sizeof(float), stream),
                    op);
        return DR_OK;
    }
    DR_TRY(check_int_geom(g, op));
    const int32_t dev = grad_in->device.index;
    cudnnHandle_t h = nullptr;
    DR_TRY(dr_cuda_cudnn(dev, &h));
    const float *dy = dr_cuda_ptr<float>(grad_out), *w = dr_cuda_ptr<float>(weight);
    const float one = 1.0f, zero = 0.0f;
    int64_t chunk = chunk_images(g);
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
        int64_t nb = g.n - n0 < chunk ? g.n - n0 : chunk;
        conv_descs d;
        DR_TRY(make_descs(d, g, nb, false, op));
        algo_choice c;
        DR_TRY(choose(h, d, DIR_DATA, dev, nb, g, op, &c));
        void *ws = nullptr;
        DR_TRY(workspace(dev, &c, &ws));
        cudnnStatus_t s = cudnnConvolutionBackwardData(
            h, &one, d.w, w, d.y, dy + n0 * g.o * g.ho * g.wo, d.conv,
            (cudnnConvolutionBwdDataAlgo_t)c.algo, ws, c.ws, &zero, d.x,
            dx + n0 * g.c * g.h * g.w);
        if (ws) dr_cuda_scratch_free(dev, ws, c.ws);
        if (s != CUDNN_STATUS_SUCCESS) return cudnn_fail(s, op, g, "cudnnConvolutionBackwardData");
    }
    return DR_OK;
}

dr_status dr_cuda_conv2d_backward_weight(dr_tensor *grad_weight, dr_tensor *grad_bias,
                                         const dr_tensor *grad_out, const dr_tensor *in,
                                         const int64_t *stride, const int64_t *padding,
                                         const int64_t *dilation, int64_t groups) {
    const char *op = "conv2d_backward";
    /* Without grad_weight, `in` may be the caller's unstaged input: only its
     * shape is read (ops/conv.c). */
    int64_t kh = grad_weight ? grad_weight->sizes[2] : 1;
    int64_t kw = grad_weight ? grad_weight->sizes[3] : 1;
    conv_geom g = make_geom(in->sizes, grad_out->sizes, kh, kw, stride, padding, dilation, groups);
    const dr_tensor *any = grad_weight ? grad_weight : grad_bias;
    if (!any) return DR_OK;
    cudaStream_t stream = dr_cuda_stream_of(any, op);
    if (!stream) return DR_ERR_DEVICE;
    const float *dy = dr_cuda_ptr<float>(grad_out);
    if (grad_bias && g.o > 0) {
        unsigned blocks = (unsigned)(g.o < 65535LL * 32 ? g.o : 65535LL * 32);
        bias_grad_kernel<<<blocks, BIAS_THREADS, 0, stream>>>(dr_cuda_ptr<float>(grad_bias), dy,
                                                              g.n, g.o, g.ho * g.wo);
        DR_CUDA_LAUNCHED(op);
    }
    int64_t k = (g.c / g.groups) * g.kh * g.kw;
    if (!grad_weight || g.o == 0 || k == 0) return DR_OK;
    float *dw = dr_cuda_ptr<float>(grad_weight);
    if (g.n == 0 || g.ho * g.wo == 0 || g.h * g.w == 0) { /* an empty sum (or all padding) */
        DR_CUDA_TRY(cudaMemsetAsync(dw, 0, (size_t)(g.o * k) * sizeof(float), stream), op);
        return DR_OK;
    }
    DR_TRY(check_int_geom(g, op));
    const int32_t dev = grad_weight->device.index;
    cudnnHandle_t h = nullptr;
    DR_TRY(dr_cuda_cudnn(dev, &h));
    const float *x = dr_cuda_ptr<float>(in);
    const float one = 1.0f, zero = 0.0f;
    int64_t chunk = chunk_images(g);
    for (int64_t n0 = 0; n0 < g.n; n0 += chunk) {
        int64_t nb = g.n - n0 < chunk ? g.n - n0 : chunk;
        conv_descs d;
        DR_TRY(make_descs(d, g, nb, false, op));
        algo_choice c;
        DR_TRY(choose(h, d, DIR_FILTER, dev, nb, g, op, &c));
        void *ws = nullptr;
        DR_TRY(workspace(dev, &c, &ws));
        /* the first chunk overwrites dW, as the CPU's first GEMM (beta 0) */
        cudnnStatus_t s = cudnnConvolutionBackwardFilter(
            h, &one, d.x, x + n0 * g.c * g.h * g.w, d.y, dy + n0 * g.o * g.ho * g.wo, d.conv,
            (cudnnConvolutionBwdFilterAlgo_t)c.algo, ws, c.ws, n0 == 0 ? &zero : &one, d.w, dw);
        if (ws) dr_cuda_scratch_free(dev, ws, c.ws);
        if (s != CUDNN_STATUS_SUCCESS)
            return cudnn_fail(s, op, g, "cudnnConvolutionBackwardFilter");
    }
    return DR_OK;
}
