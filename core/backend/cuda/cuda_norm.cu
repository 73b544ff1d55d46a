/* CUDA softmax / log_softmax, layer_norm and group_norm, forward and backward, on
 * contiguous float32 (the math is in core/ops/softmax.c and core/ops/norm.c;
 * cpu_softmax.c and cpu_norm.c are the reference).
 *
 * Softmax reads the tensor as [outer, n, inner]. inner == 1: a warp per row up
 * to 1024 elements, a block per longer row; max, sum of exps and the output are
 * three passes over the row (it stays in L2). inner > 1: a thread per column, so
 * a warp reads neighbouring columns. Sums are in float as on the CPU.
 *
 * The norms reduce segments (layer_norm rows, group_norm (n, group) slabs, the
 * backward's rows and channel planes) into pairs of double sums. A segment is cut
 * into fixed chunks, each reduced by a warp or a block by a fixed shuffle tree,
 * and the chunk partials are added in chunk order by one thread per segment. The
 * weight and bias gradients sum per-row-block partials in block order (layer_norm)
 * or loop over the samples in order (group_norm). The plans depend on the shape
 * only, and there are no atomics, so results are identical from run to run. */
#include <cmath>

#include "cuda_internal.cuh"

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }



static const float *data_or_null(const dr_tensor *t) { return t ? dr_cuda_ptr<float>(t) : nullptr; }

/* ---- group reductions ------------------------------------------------------------- */

struct AddF {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxF { /* lane maxima are never NaN (x > m skips it), as the CPU's row_max */
    __device__ float operator()(float a, float b) const { return b > a ? b : a; }
};

/* Every lane of the group gets the same bits: the butterfly adds a + b on one lane
 * and b + a on its partner (equal), and the block step reads the warp results in
 * one fixed order. GROUP is 32 (a warp) or kThreads (the block). */
template <int GROUP, class F> __device__ __forceinline__ float group_all(float v, F f, float *smem) {
    for (int d = 16; d > 0; d >>= 1) v = f(v, __shfl_xor_sync(0xffffffffu, v, d));
    if constexpr (GROUP == 32) {
        return v;
    } else {
        if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
        __syncthreads();
        float r = smem[0];
        for (int w = 1; w < kWarps; w++) r = f(r, smem[w]);
        __syncthreads();
        return r;
    }
}

struct Pair {
    double a, b;
};

/* Pair sums of a group; valid in lane 0. */
template <int GROUP> __device__ __forceinline__ Pair group_sum(Pair v, Pair *smem) {
    for (int d = 16; d > 0; d >>= 1) {
        v.a += __shfl_down_sync(0xffffffffu, v.a, d);
        v.b += __shfl_down_sync(0xffffffffu, v.b, d);
    }
    if constexpr (GROUP == 32) {
        return v;
    } else {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        if (lane == 0) smem[warp] = v;
        __syncthreads();
        if (warp == 0) {
            v = lane < kWarps ? smem[lane] : Pair{0.0, 0.0};
            for (int d = 16; d > 0; d >>= 1) {
                v.a += __shfl_down_sync(0xffffffffu, v.a, d);
                v.b += __shfl_down_sync(0xffffffffu, v.b, d);
            }
        }
        __syncthreads();
        return v;
    }
}

/* ---- softmax --------------------------------------------------------------------- */

/* One row per group. Forward: y = exp(x - m) / s, or (x - m) - log s, with m the
 * row max and s = sum exp(x - m). Backward (y the forward's output):
 *   softmax:      dx = y (dy - sum dy y)
 *   log_softmax:  dx = dy - exp(y) sum dy */
template <int GROUP>
__global__ void softmax_rows(float *o, const float *a, const float *c, int64_t rows, int64_t n, int log,
                             int back) {
    __shared__ float smem[kWarps];
    constexpr int per_block = kThreads / GROUP;
    const int lane = threadIdx.x % GROUP;
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows;
         base += (int64_t)gridDim.x * per_block) {
        const int64_t row = base + threadIdx.x / GROUP;
        const bool ok = row < rows;
        const float *ar = a + row * n, *cr = c ? c + row * n : nullptr;
        float *orow = o + row * n;
        if (!back) {
            float m = -INFINITY;
            if (ok)
                for (int64_t i = lane; i < n; i += GROUP) m = ar[i] > m ? ar[i] : m;
            m = group_all<GROUP>(m, MaxF(), smem);
            float s = 0.0f;
            if (ok)
                for (int64_t i = lane; i < n; i += GROUP) s += expf(ar[i] - m);
            s = group_all<GROUP>(s, AddF(), smem);
            if (!ok) continue;
            if (log) {
                const float ls = logf(s);
                for (int64_t i = lane; i < n; i += GROUP) orow[i] = (ar[i] - m) - ls;
            } else {
                const float r = 1.0f / s;
                for (int64_t i = lane; i < n; i += GROUP) orow[i] = expf(ar[i] - m) * r;
            }
        } else {
            float s = 0.0f;
            if (ok)
                for (int64_t i = lane; i < n; i += GROUP) s += log ? ar[i] : ar[i] * cr[i];
            s = group_all<GROUP>(s, AddF(), smem);
            if (!ok) continue;
            for (int64_t i = lane; i < n; i += GROUP)
                orow[i] = log ? ar[i] - expf(cr[i]) * s : cr[i] * (ar[i] - s);
        }
    }
}

/* inner > 1: a thread per (outer, column), stepping down the column by `inner`. */
__global__ void softmax_cols(float *o, const float *a, const float *c, int64_t outer, int64_t n,
                             int64_t inner, int log, int back) {
    GRID_STRIDE(t, outer * inner) {
        const int64_t base = (t / inner) * n * inner + t % inner;
        if (!back) {
            float m = -INFINITY, s = 0.0f;
            for (int64_t k = 0; k < n; k++) {
                float v = a[base + k * inner];
                m = v > m ? v : m;
            }
            for (int64_t k = 0; k < n; k++) s += expf(a[base + k * inner] - m);
            const float q = log ? logf(s) : 1.0f / s;
            for (int64_t k = 0; k < n; k++) {
                const int64_t e = base + k * inner;
                o[e] = log ? (a[e] - m) - q : expf(a[e] - m) * q;
            }
        } else {
            float s = 0.0f;
            for (int64_t k = 0; k < n; k++) {
                const int64_t e = base + k * inner;
                s += log ? a[e] : a[e] * c[e];
            }
            for (int64_t k = 0; k < n; k++) {
                const int64_t e = base + k * inner;
                o[e] = log ? a[e] - expf(c[e]) * s : c[e] * (a[e] - s);
            }
        }
    }
}

/* Forward: o = y, a = x, c unused. Backward: o = dx, a = dy, c = y. */
static dr_status run_softmax(const dr_tensor *shape, int32_t dim, float *o, const float *a, const float *c,
                             int log, int back, const char *op) {
    cudaStream_t st = dr_cuda_stream_of(shape, op);
    if (!st) return DR_ERR_DEVICE;
    int64_t outer = 1, n = shape->ndim ? shape->sizes[dim] : 1, inner = 1;
    for (int32_t d = 0; d < dim; d++) outer *= shape->sizes[d];
    for (int32_t d = dim + 1; d < shape->ndim; d++) inner *= shape->sizes[d];
    if (outer * n * inner == 0) return DR_OK;
    if (inner > 1)
        softmax_cols<<<dr_cuda_blocks(outer * inner, kThreads), kThreads, 0, st>>>(o, a, c, outer, n, inner,
                                                                                   log, back);
    else if (n <= 1024)
        softmax_rows<32>
            <<<dr_cuda_blocks(outer * 32, kThreads), kThreads, 0, st>>>(o, a, c, outer, n, log, back);
    else
        softmax_rows<kThreads>
            <<<dr_cuda_blocks(outer * kThreads, kThreads), kThreads, 0, st>>>(o, a, c, outer, n, log, back);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

static dr_status cuda_softmax(dr_tensor *out, const dr_tensor *in, int32_t dim, int log) {
    return run_softmax(in, dim, dr_cuda_ptr<float>(out), dr_cuda_ptr<float>(in), nullptr, log, 0,
                       log ? "log_softmax" : "softmax");
}

static dr_status cuda_softmax_backward(dr_tensor *grad_in, const dr_tensor *grad_out, const dr_tensor *y,
                                       int32_t dim, int log) {
    return run_softmax(y, dim, dr_cuda_ptr<float>(grad_in), dr_cuda_ptr<float>(grad_out),
                       dr_cuda_ptr<float>(y), log, 1, log ? "log_softmax_backward" : "softmax_backward");
}

/* ---- segment sums ------------------------------------------------------------------- */

/* Segment seg, element i -> the pair of terms to sum. */
struct StatsF { /* (d, d^2), d = x - k with k the segment's first element (as the CPU) */
    const float *x;
    int64_t len;
    __device__ Pair operator()(int64_t seg, int64_t i) const {
        const float k = x[seg * len], d = x[seg * len + i] - k;
        return {(double)d, (double)d * (double)d};
    }
};
struct LnGradF { /* (g, g (x - mean)), g = dy w */
    const float *dy, *x, *w, *mean;
    int64_t cols;
    __device__ Pair operator()(int64_t row, int64_t i) const {
        const int64_t e = row * cols + i;
        const float g = w ? dy[e] * w[i] : dy[e];
        return {(double)g, (double)g * (double)(x[e] - mean[row])};
    }
};
struct GnGradF { /* per channel plane: (dy, dy (x - mean)) */
    const float *dy, *x, *mean;
    int64_t hw, per;
    __device__ Pair operator()(int64_t plane, int64_t i) const {
        const int64_t e = plane * hw + i;
        return {(double)dy[e], (double)dy[e] * (double)(x[e] - mean[plane / per])};
    }
};

struct SegPlan {
    int group;
    int64_t split, chunk;
};

/* A warp per segment up to 512 elements, else a block; chunks when the segments
 * are too few to fill the GPU (a few group_norm slabs of 40960 elements). */
static SegPlan seg_plan(int64_t nseg, int64_t len) {
    SegPlan p = {len <= 512 ? 32 : kThreads, 1, len > 0 ? len : 1};
    if (len == 0) return p;
    if (p.group == kThreads && nseg < 512) {
        int64_t want = ceil_div(1024, nseg), most = ceil_div(len, 4096);
        p.split = want < most ? want : most;
        if (p.split < 1) p.split = 1;
    }
    p.chunk = ceil_div(len, p.split);
    p.split = ceil_div(len, p.chunk);
    return p;
}

/* part[seg * split + s] = the sums over chunk s of segment seg. */
template <int GROUP, class F>
__global__ void seg_partials(F f, int64_t nseg, int64_t len, int64_t split, int64_t chunk, Pair *part) {
    __shared__ Pair smem[kWarps];
    constexpr int per_block = kThreads / GROUP;
    const int lane = threadIdx.x % GROUP;
    const int64_t ngroups = nseg * split;
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < ngroups;
         base += (int64_t)gridDim.x * per_block) {
        const int64_t gid = base + threadIdx.x / GROUP;
        Pair acc = {0.0, 0.0};
        if (gid < ngroups) {
            const int64_t seg = gid / split, r0 = (gid % split) * chunk, r1 = min64(r0 + chunk, len);
            for (int64_t i = r0 + lane; i < r1; i += GROUP) {
                Pair t = f(seg, i);
                acc.a += t.a;
                acc.b += t.b;
            }
        }
        acc = group_sum<GROUP>(acc, smem);
        if (gid < ngroups && lane == 0) part[gid] = acc;
    }
}

template <class F>
static dr_status launch_partials(const F &f, int64_t nseg, int64_t len, const SegPlan &p, Pair *part,
                                 cudaStream_t st, const char *op) {
    const unsigned blocks = dr_cuda_blocks(nseg * p.split * p.group, kThreads);
    if (p.group == 32) seg_partials<32><<<blocks, kThreads, 0, st>>>(f, nseg, len, p.split, p.chunk, part);
    else seg_partials<kThreads><<<blocks, kThreads, 0, st>>>(f, nseg, len, p.split, p.chunk, part);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

__device__ __forceinline__ Pair sum_parts(const Pair *part, int64_t seg, int64_t split) {
    Pair s = part[seg * split];
    for (int64_t k = 1; k < split; k++) {
        s.a += part[seg * split + k].a;
        s.b += part[seg * split + k].b;
    }
    return s;
}

/* mean = k + s1/n, var = s2/n - (s1/n)^2 (shifted by k, so no cancellation when
 * |mean| >> std), rstd = 1/sqrt(max(var, 0) + eps), as the CPU's moments(). */
__global__ void stats_finalize(const Pair *part, int64_t split, int64_t nseg, int64_t len, const float *x,
                               double eps, float *mean, float *rstd) {
    GRID_STRIDE(seg, nseg) {
        if (len == 0) {
            mean[seg] = 0.0f;
            rstd[seg] = (float)(1.0 / sqrt(eps));
            continue;
        }
        const Pair s = sum_parts(part, seg, split);
        const double m = s.a / (double)len, var = s.b / (double)len - m * m;
        mean[seg] = (float)((double)x[seg * len] + m);
        rstd[seg] = (float)(1.0 / sqrt((var > 0 ? var : 0) + eps));
    }
}

/* Statistics of nseg contiguous segments of len elements into mean / rstd. */
static dr_status segment_stats(const float *x, int64_t nseg, int64_t len, double eps, float *mean,
                               float *rstd, int32_t dev, cudaStream_t st, const char *op) {
    const SegPlan p = seg_plan(nseg, len);
    Scratch part(dev);
    DR_TRY(part.alloc((size_t)(nseg * p.split) * sizeof(Pair)));
    DR_TRY(launch_partials(StatsF{x, len}, nseg, len, p, part.as<Pair>(), st, op));
    stats_finalize<<<dr_cuda_blocks(nseg, kThreads), kThreads, 0, st>>>(part.as<Pair>(), p.split, nseg, len,
                                                                        x, eps, mean, rstd);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

/* ---- layer_norm ------------------------------------------------------------------------ */

__global__ void layer_norm_apply(float *o, const float *x, const float *w, const float *b, const float *mean,
                                 const float *rstd, int64_t total, int64_t cols) {
    GRID_STRIDE(e, total) {
        const int64_t r = e / cols, i = e % cols;
        const float v = (x[e] - mean[r]) * rstd[r];
        o[e] = w && b ? v * w[i] + b[i] : w ? v * w[i] : b ? v + b[i] : v;
    }
}

static dr_status cuda_layer_norm(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd, const dr_tensor *in,
                                 const dr_tensor *weight, const dr_tensor *bias, int64_t rows, int64_t cols,
                                 double eps) {
    const char *op = "layer_norm";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    if (rows == 0) return DR_OK;
    const float *x = dr_cuda_ptr<float>(in);
    float *pm = dr_cuda_ptr<float>(mean), *pr = dr_cuda_ptr<float>(rstd);
    DR_TRY(segment_stats(x, rows, cols, eps, pm, pr, in->device.index, st, op));
    if (cols == 0) return DR_OK;
    layer_norm_apply<<<dr_cuda_blocks(rows * cols, kThreads), kThreads, 0, st>>>(
        dr_cuda_ptr<float>(out), x, data_or_null(weight), data_or_null(bias), pm, pr, rows * cols, cols);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

/* Per row: a = mean(g), bq = mean(g (x - mean)) rstd. */
__global__ void ln_row_coef(const Pair *part, int64_t split, int64_t rows, int64_t cols, const float *rstd,
                            float2 *coef) {
    GRID_STRIDE(r, rows) {
        const Pair s = sum_parts(part, r, split);
        coef[r] = make_float2((float)(s.a / (double)cols), (float)(s.b * rstd[r] / (double)cols));
    }
}

/* dx = rstd (g - a - xhat bq), xhat = (x - mean) rstd, g = dy w */
__global__ void ln_dx(float *dx, const float *dy, const float *x, const float *w, const float *mean,
                      const float *rstd, const float2 *coef, int64_t total, int64_t cols) {
    GRID_STRIDE(e, total) {
        const int64_t r = e / cols, i = e % cols;
        const float rs = rstd[r], xhat = (x[e] - mean[r]) * rs;
        const float g = w ? dy[e] * w[i] : dy[e];
        dx[e] = rs * (g - coef[r].x - xhat * coef[r].y);
    }
}

/* Block rb of rows, column i (neighbouring threads: neighbouring columns):
 * partial sums of dy xhat and dy in double. */
__global__ void ln_param_partials(double *pw, double *pb, const float *dy, const float *x, const float *mean,
                                  const float *rstd, int64_t rows, int64_t cols, int64_t rb, int64_t nrb) {
    GRID_STRIDE(t, nrb * cols) {
        const int64_t blk = t / cols, i = t % cols, r1 = min64(rows, (blk + 1) * rb);
        double sw = 0, sb = 0;
        for (int64_t r = blk * rb; r < r1; r++) {
            const float g = dy[r * cols + i];
            if (pw) sw += (double)(g * ((x[r * cols + i] - mean[r]) * rstd[r]));
            sb += (double)g;
        }
        if (pw) pw[t] = sw;
        if (pb) pb[t] = sb;
    }
}

/* Adds the nrb partials of each column in block order. */
__global__ void column_total(float *out, const double *part, int64_t nrb, int64_t cols) {
    GRID_STRIDE(i, cols) {
        double s = 0;
        for (int64_t k = 0; k < nrb; k++) s += part[k * cols + i];
        out[i] = (float)s;
    }
}

static dr_status cuda_layer_norm_backward(dr_tensor *grad_in, dr_tensor *grad_weight, dr_tensor *grad_bias,
                                          const dr_tensor *grad_out, const dr_tensor *in,
                                          const dr_tensor *mean, const dr_tensor *rstd,
                                          const dr_tensor *weight, int64_t rows, int64_t cols) {
    const char *op = "layer_norm_backward";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    const int32_t dev = in->device.index;
    const float *dy = dr_cuda_ptr<float>(grad_out), *x = dr_cuda_ptr<float>(in);
    const float *pm = dr_cuda_ptr<float>(mean), *pr = dr_cuda_ptr<float>(rstd), *w = data_or_null(weight);
    if (cols == 0) return DR_OK;
    if ((grad_weight || grad_bias) && rows == 0) { /* sums over no rows */
        if (grad_weight) DR_CUDA_TRY(cudaMemsetAsync(dr_cuda_ptr<float>(grad_weight), 0, cols * 4, st), op);
        if (grad_bias) DR_CUDA_TRY(cudaMemsetAsync(dr_cuda_ptr<float>(grad_bias), 0, cols * 4, st), op);
        return DR_OK;
    }
    if (rows == 0) return DR_OK;
    if (grad_in) {
        const SegPlan p = seg_plan(rows, cols);
        Scratch part(dev), coef(dev);
        DR_TRY(part.alloc((size_t)(rows * p.split) * sizeof(Pair)));
        DR_TRY(coef.alloc((size_t)rows * sizeof(float2)));
        DR_TRY(launch_partials(LnGradF{dy, x, w, pm, cols}, rows, cols, p, part.as<Pair>(), st, op));
        ln_row_coef<<<dr_cuda_blocks(rows, kThreads), kThreads, 0, st>>>(part.as<Pair>(), p.split, rows, cols,
                                                                         pr, coef.as<float2>());
        DR_CUDA_LAUNCHED(op);
        ln_dx<<<dr_cuda_blocks(rows * cols, kThreads), kThreads, 0, st>>>(
            dr_cuda_ptr<float>(grad_in), dy, x, w, pm, pr, coef.as<float2>(), rows * cols, cols);
        DR_CUDA_LAUNCHED(op);
    }
    if (!grad_weight && !grad_bias) return DR_OK;
    /* enough (block, column) threads to fill the GPU, at least 32 rows a block */
    int64_t nrb = min64(ceil_div(32768, cols), ceil_div(rows, 32));
    if (nrb < 1) nrb = 1;
    const int64_t rb = ceil_div(rows, nrb);
    nrb = ceil_div(rows, rb);
    Scratch parts(dev);
    const size_t one = (size_t)(nrb * cols) * sizeof(double);
    DR_TRY(parts.alloc(2 * one));
    double *pw = grad_weight ? parts.as<double>() : nullptr;
    double *pb = grad_bias ? parts.as<double>() + nrb * cols : nullptr;
    ln_param_partials<<<dr_cuda_blocks(nrb * cols, kThreads), kThreads, 0, st>>>(pw, pb, dy, x, pm, pr, rows,
                                                                                 cols, rb, nrb);
    DR_CUDA_LAUNCHED(op);
    if (pw) {
        column_total<<<dr_cuda_blocks(cols, kThreads), kThreads, 0, st>>>(dr_cuda_ptr<float>(grad_weight), pw,
                                                                          nrb, cols);
        DR_CUDA_LAUNCHED(op);
    }
    if (pb) {
        column_total<<<dr_cuda_blocks(cols, kThreads), kThreads, 0, st>>>(dr_cuda_ptr<float>(grad_bias), pb,
                                                                          nrb, cols);
        DR_CUDA_LAUNCHED(op);
    }
    return DR_OK;
}

/* ---- group_norm ----------------------------------------------------------------------- */

/* o = x a + sh per channel plane: a = rstd w_c, sh = b_c - mean a (the CPU's
 * scale_shift). */
__global__ void group_norm_apply(float *o, const float *x, const float *w, const float *b, const float *mean,
                                 const float *rstd, int64_t total, int64_t c, int64_t hw, int64_t groups) {
    const int64_t per = c / groups;
    GRID_STRIDE(e, total) {
        const int64_t plane = e / hw, ch = plane % c, task = (plane / c) * groups + ch / per;
        const float a = rstd[task] * (w ? w[ch] : 1.0f);
        const float sh = (b ? b[ch] : 0.0f) - mean[task] * a;
        o[e] = x[e] * a + sh;
    }
}

static dr_status cuda_group_norm(dr_tensor *out, dr_tensor *mean, dr_tensor *rstd, const dr_tensor *in,
                                 const dr_tensor *weight, const dr_tensor *bias, int64_t n, int64_t c,
                                 int64_t hw, int64_t groups, double eps) {
    const char *op = "group_norm";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    if (n * groups == 0) return DR_OK;
    const float *x = dr_cuda_ptr<float>(in);
    float *pm = dr_cuda_ptr<float>(mean), *pr = dr_cuda_ptr<float>(rstd);
    DR_TRY(segment_stats(x, n * groups, (c / groups) * hw, eps, pm, pr, in->device.index, st, op));
    const int64_t total = n * c * hw;
    if (total == 0) return DR_OK;
    group_norm_apply<<<dr_cuda_blocks(total, kThreads), kThreads, 0, st>>>(
        dr_cuda_ptr<float>(out), x, data_or_null(weight), data_or_null(bias), pm, pr, total, c, hw, groups);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

/* Per plane (n, c): db = sum dy, ds = sum dy (x - mean). */
__global__ void gn_plane_sums(const Pair *part, int64_t split, int64_t planes, double *ds, double *db) {
    GRID_STRIDE(p, planes) {
        const Pair s = sum_parts(part, p, split);
        db[p] = s.a;
        ds[p] = s.b;
    }
}

/* Per (n, group), torch's GroupNormKernel backward as the CPU has it:
 * ds_g = sum_c ds w, db_g = sum_c db w (channel order), M = C/G HW,
 * c2 = -ds_g rstd^3 / M, c3 = -db_g rstd / M. */
__global__ void gn_group_coef(const double *ds, const double *db, const float *w, const float *rstd,
                              int64_t tasks, int64_t groups, int64_t per, int64_t hw, float2 *coef) {
    GRID_STRIDE(task, tasks) {
        const int64_t g = task % groups, slab = per * hw;
        double dsg = 0, dbg = 0;
        for (int64_t ci = 0; ci < per; ci++) {
            const int64_t plane = task * per + ci;
            const double wc = w ? w[g * per + ci] : 1.0;
            dsg += ds[plane] * wc;
            dbg += db[plane] * wc;
        }
        const double r = rstd[task], inv = 1.0 / (double)(slab > 0 ? slab : 1);
        coef[task] = make_float2((float)(-dsg * r * r * r * inv), (float)(-dbg * r * inv));
    }
}

/* dx = dy a + (x - mean) c2 + c3, a = rstd w_c */
__global__ void gn_dx(float *dx, const float *dy, const float *x, const float *w, const float *mean,
                      const float *rstd, const float2 *coef, int64_t total, int64_t c, int64_t hw,
                      int64_t groups) {
    const int64_t per = c / groups;
    GRID_STRIDE(e, total) {
        const int64_t plane = e / hw, ch = plane % c, task = (plane / c) * groups + ch / per;
        const float a = (float)((double)rstd[task] * (w ? w[ch] : 1.0f));
        dx[e] = dy[e] * a + (x[e] - mean[task]) * coef[task].x + coef[task].y;
    }
}

/* dw_c = sum_n ds rstd, db_c = sum_n db, in sample order. */
__global__ void gn_params(float *gw, float *gb, const double *ds, const double *db, const float *rstd,
                          int64_t n, int64_t c, int64_t groups) {
    const int64_t per = c / groups;
    GRID_STRIDE(ch, c) {
        double sw = 0, sb = 0;
        for (int64_t i = 0; i < n; i++) {
            sw += ds[i * c + ch] * rstd[i * groups + ch / per];
            sb += db[i * c + ch];
        }
        if (gw) gw[ch] = (float)sw;
        if (gb) gb[ch] = (float)sb;
    }
}

static dr_status cuda_group_norm_backward(dr_tensor *grad_in, dr_tensor *grad_weight, dr_tensor *grad_bias,
                                          const dr_tensor *grad_out, const dr_tensor *in,
                                          const dr_tensor *mean, const dr_tensor *rstd,
                                          const dr_tensor *weight, int64_t n, int64_t c, int64_t hw,
                                          int64_t groups) {
    const char *op = "group_norm_backward";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    const int32_t dev = in->device.index;
    const float *dy = dr_cuda_ptr<float>(grad_out), *x = dr_cuda_ptr<float>(in);
    const float *pm = dr_cuda_ptr<float>(mean), *pr = dr_cuda_ptr<float>(rstd), *w = data_or_null(weight);
    const int64_t planes = n * c, per = c / groups;
    if (c == 0) return DR_OK;
    if (planes == 0) { /* no samples: zero parameter gradients */
        if (grad_weight) DR_CUDA_TRY(cudaMemsetAsync(dr_cuda_ptr<float>(grad_weight), 0, c * 4, st), op);
        if (grad_bias) DR_CUDA_TRY(cudaMemsetAsync(dr_cuda_ptr<float>(grad_bias), 0, c * 4, st), op);
        return DR_OK;
    }
    Scratch sums(dev);
    DR_TRY(sums.alloc(2 * (size_t)planes * sizeof(double)));
    double *ds = sums.as<double>(), *db = ds + planes;
    {
        const SegPlan p = seg_plan(planes, hw);
        Scratch part(dev);
        DR_TRY(part.alloc((size_t)(planes * p.split) * sizeof(Pair)));
        DR_TRY(launch_partials(GnGradF{dy, x, pm, hw, per}, planes, hw, p, part.as<Pair>(), st, op));
        gn_plane_sums<<<dr_cuda_blocks(planes, kThreads), kThreads, 0, st>>>(part.as<Pair>(), p.split, planes,
                                                                             ds, db);
        DR_CUDA_LAUNCHED(op);
    }
    if (grad_in && hw > 0) {
        const int64_t tasks = n * groups;
        Scratch coef(dev);
        DR_TRY(coef.alloc((size_t)tasks * sizeof(float2)));
        gn_group_coef<<<dr_cuda_blocks(tasks, kThreads), kThreads, 0, st>>>(ds, db, w, pr, tasks, groups, per,
                                                                            hw, coef.as<float2>());
        DR_CUDA_LAUNCHED(op);
        gn_dx<<<dr_cuda_blocks(planes * hw, kThreads), kThreads, 0, st>>>(
            dr_cuda_ptr<float>(grad_in), dy, x, w, pm, pr, coef.as<float2>(), planes * hw, c, hw, groups);
        DR_CUDA_LAUNCHED(op);
    }
    if (grad_weight || grad_bias) {
        gn_params<<<dr_cuda_blocks(c, kThreads), kThreads, 0, st>>>(
            grad_weight ? dr_cuda_ptr<float>(grad_weight) : nullptr,
            grad_bias ? dr_cuda_ptr<float>(grad_bias) : nullptr, ds, db, pr, n, c, groups);
        DR_CUDA_LAUNCHED(op);
    }
    return DR_OK;
}

} // namespace

extern "C" void dr_cuda_register_norm(dr_backend *b) {
    b->softmax = cuda_softmax;
    b->softmax_backward = cuda_softmax_backward;
    b->layer_norm = cuda_layer_norm;
    b->layer_norm_backward = cuda_layer_norm_backward;
    b->group_norm = cuda_group_norm;
    b->group_norm_backward = cuda_group_norm_backward;
}
