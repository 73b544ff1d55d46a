/* CUDA reductions: sum, moments (mean / var / std), argreduce (max / min with
 * indices), the backward of a full max / min, and cumsum. The CPU kernels
 * (cpu_reduce.c, cpu_reduce_more.c, cpu_shape.c) are the reference.
 *
 * One engine serves every reduction over the trailing dims of a strided tensor:
 * output j reduces the sub-space r in [0, L). The work for j is cut into `split`
 * fixed chunks and each chunk goes to a group of 1, 32 or 256 threads (a thread,
 * a warp or a block); lane t of a group takes r = r0 + t, r0 + t + GROUP, ... and
 * the lanes combine by a fixed shuffle tree. With split > 1 the chunk partials go
 * to scratch and one thread per output adds them in chunk order. The plan
 * (group, split) is a function of the shape alone, never of the device, so a
 * result is the same on every run and every GPU; there are no float atomics.
 *
 * Floats accumulate in double and round once (as the CPU); the association
 * differs from the CPU's sequential blocks, which moves a float result by at
 * most an ulp in rare cases. Integers add in wrapping 64 bits: exact. */
#include <cmath>

#include "cuda_internal.cuh"

extern "C" void dr_cuda_register_index(dr_backend *b); /* cuda_index.cu */

namespace {

constexpr int kThreads = 256;

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }


/* ---- geometry ------------------------------------------------------------------ */

/* in = [kept..., reduced...]: the kept dims map j to a base offset, the reduced
 * dims (size-1 dims dropped, nested runs merged) map r to an offset from it. */
struct RedGeom {
    int32_t nkeep, nred;
    int64_t keep_sizes[DR_MAX_DIMS], keep_strides[DR_MAX_DIMS];
    int64_t red_sizes[DR_MAX_DIMS], red_strides[DR_MAX_DIMS];
    int64_t offset, nout, red_numel;
};

static RedGeom make_geom(const dr_tensor *in, int32_t nreduce) {
    RedGeom g = {};
    g.nkeep = in->ndim - nreduce;
    g.offset = in->storage_offset;
    g.nout = 1;
    g.red_numel = 1;
    for (int32_t d = 0; d < g.nkeep; d++) {
        g.keep_sizes[d] = in->sizes[d];
        g.keep_strides[d] = in->strides[d];
        g.nout *= in->sizes[d];
    }
    for (int32_t d = g.nkeep; d < in->ndim; d++) {
        int64_t s = in->sizes[d], st = in->strides[d];
        g.red_numel *= s;
        if (s == 1) continue;
        if (g.nred > 0 && g.red_strides[g.nred - 1] == st * s) {
            g.red_sizes[g.nred - 1] *= s;
            g.red_strides[g.nred - 1] = st;
            continue;
        }
        g.red_sizes[g.nred] = s;
        g.red_strides[g.nred] = st;
        g.nred++;
    }
    if (g.nred == 0) { /* nothing (or only ones) to reduce: one element each */
        g.nred = 1;
        g.red_sizes[0] = 1;
        g.red_strides[0] = 0;
    }
    return g;
}

__device__ __forceinline__ int64_t keep_off(const RedGeom &g, int64_t j) {
    int64_t off = g.offset;
    for (int32_t d = g.nkeep - 1; d >= 0; d--) {
        off += (j % g.keep_sizes[d]) * g.keep_strides[d];
        j /= g.keep_sizes[d];
    }
    return off;
}

__device__ __forceinline__ int64_t red_off(const RedGeom &g, int64_t r) {
    if (g.nred == 1) return r * g.red_strides[0];
    int64_t off = 0;
    for (int32_t d = g.nred - 1; d >= 0; d--) {
        off += (r % g.red_sizes[d]) * g.red_strides[d];
        r /= g.red_sizes[d];
    }
    return off;
}

/* ---- accumulators and their shuffles ------------------------------------------------ */

struct Pair {
    double a, b;
};
template <typename V> struct Arg {
    V v;
    long long i; /* -1: empty */
};

__device__ __forceinline__ double shfl_down(double v, int d) { return __shfl_down_sync(0xffffffffu, v, d); }
__device__ __forceinline__ unsigned long long shfl_down(unsigned long long v, int d) {
    return __shfl_down_sync(0xffffffffu, v, d);
}
__device__ __forceinline__ long long shfl_down(long long v, int d) {
    return __shfl_down_sync(0xffffffffu, v, d);
}
__device__ __forceinline__ Pair shfl_down(Pair v, int d) { return {shfl_down(v.a, d), shfl_down(v.b, d)}; }
template <typename V> __device__ __forceinline__ Arg<V> shfl_down(Arg<V> v, int d) {
    return {shfl_down(v.v, d), shfl_down(v.i, d)};
}

/* Combines the lanes of a group; the result is valid in its lane 0. */
template <int GROUP, class Op>
__device__ __forceinline__ typename Op::Acc group_reduce(const Op &op, typename Op::Acc v,
                                                         typename Op::Acc *smem) {
    if constexpr (GROUP == 1) {
        return v;
    } else {
        for (int d = 16; d > 0; d >>= 1) v = op.combine(v, shfl_down(v, d));
        if constexpr (GROUP == 32) {
            return v;
        } else {
            const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            if (lane == 0) smem[warp] = v;
            __syncthreads();
            if (warp == 0) {
                v = lane < GROUP / 32 ? smem[lane] : op.identity();
                for (int d = 16; d > 0; d >>= 1) v = op.combine(v, shfl_down(v, d));
            }
            __syncthreads(); /* smem is reused by the next group of the block */
            return v;
        }
    }
}

/* ---- the engine ------------------------------------------------------------------ */

/* Group gid reduces chunk s = gid / nout of output j = gid % nout (neighbouring
 * threads of the serial plan take neighbouring outputs: coalesced columns). */
template <class Op, int GROUP>
__global__ void reduce_kernel(RedGeom g, Op op, int64_t split, int64_t chunk, typename Op::Acc *part) {
    using Acc = typename Op::Acc;
    __shared__ Acc smem[kThreads / 32];
    constexpr int per_block = kThreads / GROUP;
    const int lane = threadIdx.x % GROUP;
    const int64_t ngroups = g.nout * split;
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < ngroups;
         base += (int64_t)gridDim.x * per_block) {
        const int64_t gid = base + threadIdx.x / GROUP;
        int64_t j = 0, s = 0;
        Acc acc = op.identity();
        if (gid < ngroups) {
            s = gid / g.nout;
            j = gid % g.nout;
            int64_t r0 = s * chunk, r1 = r0 + chunk < g.red_numel ? r0 + chunk : g.red_numel;
            int64_t kb = keep_off(g, j);
            for (int64_t r = r0 + lane; r < r1; r += GROUP)
                acc = op.combine(acc, op.load(j, r, kb + red_off(g, r)));
        }
        acc = group_reduce<GROUP>(op, acc, smem);
        if (gid < ngroups && lane == 0) {
            if (part) part[j * split + s] = acc;
            else op.store(g, j, acc);
        }
    }
}

template <class Op>
__global__ void finalize_kernel(RedGeom g, Op op, int64_t split, const typename Op::Acc *part) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < g.nout;
         j += (int64_t)gridDim.x * blockDim.x) {
        typename Op::Acc acc = part[j * split];
        for (int64_t s = 1; s < split; s++) acc = op.combine(acc, part[j * split + s]);
        op.store(g, j, acc);
    }
}

struct Plan {
    int group;
    int64_t split, chunk;
};

/* Short reductions: a thread each. Columns (the kept dims are the unit-stride
 * ones, e.g. a bias gradient summed over the batch): a thread per output too, so
 * a warp reads 32 neighbouring columns, the rows cut into chunks until there are
 * enough threads. Rows: a warp per output up to 1024 elements, then a block,
 * with chunks when the outputs are too few to fill the GPU. */
static Plan make_plan(const RedGeom &g) {
    const int64_t L = g.red_numel, nout = g.nout;
    Plan p = {1, 1, L > 0 ? L : 1};
    if (L <= 32) return p;
    int64_t keep_inner = 0;
    for (int32_t d = g.nkeep - 1; d >= 0; d--)
        if (g.keep_sizes[d] != 1) {
            keep_inner = g.keep_strides[d];
            break;
        }
    int64_t want;
    if (keep_inner == 1 && g.red_strides[g.nred - 1] != 1) {
        want = ceil_div(32768, nout);
        int64_t most = ceil_div(L, 64);
        p.split = want < most ? want : most;
    } else if (L <= 1024) {
        p.group = 32;
    } else {
        p.group = kThreads;
        if (nout < 512) {
            want = ceil_div(1024, nout);
            int64_t most = ceil_div(L, 4096);
            p.split = want < most ? want : most;
        }
    }
    if (p.split < 1) p.split = 1;
    p.chunk = ceil_div(L, p.split);
    p.split = ceil_div(L, p.chunk);
    return p;
}

template <class Op>
static dr_status run_reduce(const RedGeom &g, const Op &op, int32_t dev, cudaStream_t st, const char *name) {
    using Acc = typename Op::Acc;
    if (g.nout == 0) return DR_OK;
    const Plan p = make_plan(g);
    Scratch part(dev);
    if (p.split > 1) DR_TRY(part.alloc((size_t)(g.nout * p.split) * sizeof(Acc)));
    Acc *pp = part.as<Acc>();
    const unsigned blocks = dr_cuda_blocks(g.nout * p.split * p.group, kThreads);
    if (p.group == 1) reduce_kernel<Op, 1><<<blocks, kThreads, 0, st>>>(g, op, p.split, p.chunk, pp);
    else if (p.group == 32) reduce_kernel<Op, 32><<<blocks, kThreads, 0, st>>>(g, op, p.split, p.chunk, pp);
    else reduce_kernel<Op, kThreads><<<blocks, kThreads, 0, st>>>(g, op, p.split, p.chunk, pp);
    DR_CUDA_LAUNCHED(name);
    if (pp) {
        finalize_kernel<Op><<<dr_cuda_blocks(g.nout, kThreads), kThreads, 0, st>>>(g, op, p.split, pp);
        DR_CUDA_LAUNCHED(name);
    }
    return DR_OK;
}

/* ---- sum --------------------------------------------------------------------------- */

template <bool F32> struct SumFloat {
    using Acc = double;
    const char *p;
    int32_t dt;
    char *o;
    int32_t odt;
    int64_t ooff;
    __device__ Acc identity() const { return 0.0; }
    __device__ Acc combine(Acc a, Acc b) const { return a + b; }
    __device__ Acc load(int64_t, int64_t, int64_t off) const {
        return F32 ? (double)((const float *)p)[off] : dr_cuda_load_f64(p, dt, off);
    }
    __device__ void store(const RedGeom &, int64_t j, Acc a) const { dr_cuda_store_f64(o, odt, ooff + j, a); }
};

struct SumInt {
    using Acc = unsigned long long;
    const char *p;
    int32_t dt;
    char *o;
    int32_t odt;
    int64_t ooff;
    __device__ Acc identity() const { return 0ull; }
    __device__ Acc combine(Acc a, Acc b) const { return a + b; }
    __device__ Acc load(int64_t, int64_t, int64_t off) const { return (Acc)dr_cuda_load_i64(p, dt, off); }
    __device__ void store(const RedGeom &, int64_t j, Acc a) const {
        dr_cuda_store_i64(o, odt, ooff + j, (int64_t)a);
    }
};

static dr_status cuda_sum(dr_tensor *out, const dr_tensor *in, int32_t nreduce) {
    const char *op = "sum";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    RedGeom g = make_geom(in, nreduce);
    const char *p = dr_cuda_base(in);
    char *o = dr_cuda_base(out);
    int32_t dev = in->device.index;
    if (dr_dtype_is_float(out->scalar_type)) {
        if (in->scalar_type == DR_F32)
            return run_reduce(g, SumFloat<true>{p, in->scalar_type, o, out->scalar_type, out->storage_offset},
                              dev, st, op);
        return run_reduce(g, SumFloat<false>{p, in->scalar_type, o, out->scalar_type, out->storage_offset},
                          dev, st, op);
    }
    return run_reduce(g, SumInt{p, in->scalar_type, o, out->scalar_type, out->storage_offset}, dev, st, op);
}

/* ---- moments ------------------------------------------------------------------------- */

/* Two passes over the whole reduction: the mean (sum / n), then the sums of
 * d = x - mean and d^2, M2 = sum d^2 - (sum d)^2 / n (the correction term cancels
 * the rounding of the mean). var = M2 / max(n - correction, 0), so 0/0 is NaN as
 * in torch; n = 0 gives mean NaN. */
struct MeanOp {
    using Acc = double;
    const float *p;
    double n;
    double *mean_d; /* NULL: the mean alone is wanted */
    float *om;
    __device__ Acc identity() const { return 0.0; }
    __device__ Acc combine(Acc a, Acc b) const { return a + b; }
    __device__ Acc load(int64_t, int64_t, int64_t off) const { return (double)p[off]; }
    __device__ void store(const RedGeom &, int64_t j, Acc a) const {
        double m = n > 0 ? a / n : (double)NAN;
        if (mean_d) mean_d[j] = m;
        om[j] = (float)m;
    }
};

struct VarOp {
    using Acc = Pair;
    const float *p;
    const double *mean_d;
    float *ov;
    double n, correction;
    int take_sqrt;
    __device__ Acc identity() const { return {0.0, 0.0}; }
    __device__ Acc combine(Acc x, Acc y) const { return {x.a + y.a, x.b + y.b}; }
    __device__ Acc load(int64_t j, int64_t, int64_t off) const {
        double d = (double)p[off] - mean_d[j];
        return {d, d * d};
    }
    __device__ void store(const RedGeom &, int64_t j, Acc s) const {
        double m2 = n > 0 ? s.b - s.a * s.a / n : 0.0;
        if (m2 < 0) m2 = 0;
        double dof = n - correction;
        double v = m2 / (dof > 0 ? dof : 0.0);
        ov[j] = (float)(take_sqrt ? sqrt(v) : v);
    }
};

static dr_status cuda_moments(dr_tensor *mean, dr_tensor *var, const dr_tensor *in, int32_t nreduce,
                              double correction, int take_sqrt) {
    const char *op = "moments";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    RedGeom g = make_geom(in, nreduce);
    if (g.nout == 0) return DR_OK;
    const int32_t dev = in->device.index;
    const float *p = (const float *)dr_cuda_base(in);
    const double n = (double)g.red_numel;
    Scratch md(dev);
    if (var) DR_TRY(md.alloc((size_t)g.nout * sizeof(double)));
    DR_TRY(run_reduce(g, MeanOp{p, n, md.as<double>(), dr_cuda_ptr<float>(mean)}, dev, st, op));
    if (!var) return DR_OK;
    return run_reduce(g, VarOp{p, md.as<double>(), dr_cuda_ptr<float>(var), n, correction, take_sqrt}, dev,
                      st, op);
}

/* ---- max / min with indices ----------------------------------------------------------- */

/* The first extreme wins and NaN beats every number (torch): combining two
 * candidates keeps a NaN (the earlier of two), else the better value, else on
 * a tie the smaller index. That rule does not depend on the order of combining. */
template <typename V, bool IS_FLOAT> struct ArgOp {
    using Acc = Arg<V>;
    const char *p;
    int32_t dt;
    int is_min;
    int64_t len_stride; /* the reduced dim's stride (0 when its size is 1) */
    int64_t *idx;       /* may be NULL */
    char *vals;         /* may be NULL */
    int64_t vals_off, esize;
    __device__ Acc identity() const { return {V(0), -1}; }
    __device__ Acc combine(Acc a, Acc b) const {
        if (a.i < 0) return b;
        if (b.i < 0) return a;
        if (IS_FLOAT) {
            bool an = a.v != a.v, bn = b.v != b.v;
            if (an || bn) return an && bn ? (a.i < b.i ? a : b) : (an ? a : b);
        }
        if (is_min ? b.v < a.v : b.v > a.v) return b;
        if (is_min ? a.v < b.v : a.v > b.v) return a;
        return a.i < b.i ? a : b;
    }
    __device__ Acc load(int64_t, int64_t r, int64_t off) const {
        if (IS_FLOAT) return {(V)dr_cuda_load_f64(p, dt, off), (long long)r};
        return {(V)dr_cuda_load_i64(p, dt, off), (long long)r};
    }
    __device__ void store(const RedGeom &g, int64_t j, Acc a) const {
        long long k = a.i < 0 ? 0 : a.i;
        if (idx) idx[j] = k;
        if (!vals) return;
        int64_t src = keep_off(g, j) + k * len_stride, dst = vals_off + j;
        switch (esize) {
        case 1: ((uint8_t *)vals)[dst] = ((const uint8_t *)p)[src]; break;
        case 2: ((uint16_t *)vals)[dst] = ((const uint16_t *)p)[src]; break;
        case 4: ((uint32_t *)vals)[dst] = ((const uint32_t *)p)[src]; break;
        default: ((uint64_t *)vals)[dst] = ((const uint64_t *)p)[src]; break;
        }
    }
};

static dr_status cuda_argreduce(dr_tensor *values, dr_tensor *indices, const dr_tensor *in, int is_min) {
    const char *op = is_min ? "min" : "max";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    RedGeom g = make_geom(in, 1);
    const int32_t dt = in->scalar_type;
    int64_t stride = in->ndim > 0 ? in->strides[in->ndim - 1] : 0;
    int64_t *idx = indices ? dr_cuda_ptr<int64_t>(indices) : nullptr;
    char *vals = values ? dr_cuda_base(values) : nullptr;
    int64_t voff = values ? values->storage_offset : 0, esize = dr_dtype_size(dt);
    const int32_t dev = in->device.index;
    if (dr_dtype_is_float(dt))
        return run_reduce(g,
                          ArgOp<double, true>{dr_cuda_base(in), dt, is_min, stride, idx, vals, voff, esize},
                          dev, st, op);
    return run_reduce(g,
                      ArgOp<long long, false>{dr_cuda_base(in), dt, is_min, stride, idx, vals, voff, esize},
                      dev, st, op);
}

/* ---- backward of a full max / min -------------------------------------------------------- */

struct CountOp {
    using Acc = unsigned long long;
    const float *x;
    float v;
    bool nan;
    unsigned long long *count;
    __device__ Acc identity() const { return 0ull; }
    __device__ Acc combine(Acc a, Acc b) const { return a + b; }
    __device__ Acc load(int64_t, int64_t, int64_t off) const {
        float e = x[off];
        return (nan ? e != e : e == v) ? 1ull : 0ull;
    }
    __device__ void store(const RedGeom &, int64_t, Acc a) const { *count = a; }
};

__global__ void share_kernel(float *gi, const float *x, int64_t n, float v, bool nan, double g,
                             const unsigned long long *count) {
    const unsigned long long c = *count;
    const float share = c > 0 ? (float)(g / (double)c) : 0.0f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float e = x[i];
        gi[i] = (nan ? e != e : e == v) ? share : 0.0f;
    }
}

static dr_status cuda_extreme_backward(dr_tensor *grad_in, const dr_tensor *in, double value, double g) {
    const char *op = "max/min backward";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    const int64_t n = dr_tensor_numel(in);
    if (n == 0) return DR_OK;
    const int32_t dev = in->device.index;
    Scratch cnt(dev);
    DR_TRY(cnt.alloc(sizeof(unsigned long long)));
    RedGeom geom = {};
    geom.nkeep = 0;
    geom.nred = 1;
    geom.red_sizes[0] = n;
    geom.red_strides[0] = 1;
    geom.offset = in->storage_offset;
    geom.nout = 1;
    geom.red_numel = n;
    const bool nan = value != value;
    const float v = (float)value;
    DR_TRY(run_reduce(geom, CountOp{(const float *)dr_cuda_base(in), v, nan, cnt.as<unsigned long long>()},
                      dev, st, op));
    share_kernel<<<dr_cuda_blocks(n, kThreads), kThreads, 0, st>>>(
        dr_cuda_ptr<float>(grad_in), dr_cuda_ptr<float>(in), n, v, nan, g, cnt.as<unsigned long long>());
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

/* ---- cumsum ----------------------------------------------------------------------------- */

/* The lines are every coordinate but dim's; in and out offsets of a line. */
struct LineGeom {
    int32_t ndim;
    int64_t sizes[DR_MAX_DIMS], in_strides[DR_MAX_DIMS], out_strides[DR_MAX_DIMS];
    int64_t in_off, out_off, len, in_st, out_st, lines;
};

__device__ __forceinline__ void line_offsets(const LineGeom &g, int64_t line, int64_t *io, int64_t *oo) {
    int64_t a = g.in_off, b = g.out_off;
    for (int32_t d = g.ndim - 1; d >= 0; d--) {
        int64_t c = line % g.sizes[d];
        line /= g.sizes[d];
        a += c * g.in_strides[d];
        b += c * g.out_strides[d];
    }
    *io = a;
    *oo = b;
}

/* A thread per line, adding in order as the CPU does (identical for int64; for
 * float the same double running sum, so the same bits). */
template <typename T, typename A> __global__ void cumsum_serial(LineGeom g, const T *x, T *y, int reverse) {
    for (int64_t line = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; line < g.lines;
         line += (int64_t)gridDim.x * blockDim.x) {
        int64_t io, oo;
        line_offsets(g, line, &io, &oo);
        A acc = 0;
        for (int64_t n = 0; n < g.len; n++) {
            int64_t k = reverse ? g.len - 1 - n : n;
            acc += (A)x[io + k * g.in_st];
            y[oo + k * g.out_st] = (T)acc;
        }
    }
}

template <typename A> __device__ __forceinline__ A shfl_up(A v, int d) {
    return __shfl_up_sync(0xffffffffu, v, d);
}

/* A block per long line: tiles of kThreads * ITEMS elements, each thread scanning
 * ITEMS neighbours, warps by shuffles, the warp totals by warp 0, and a carry
 * between tiles. Float sums are in double in that fixed tree order. */
template <typename T, typename A> __global__ void cumsum_block(LineGeom g, const T *x, T *y, int reverse) {
    constexpr int ITEMS = 4, TILE = kThreads * ITEMS, NW = kThreads / 32;
    __shared__ A warp_sum[NW];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t line = blockIdx.x; line < g.lines; line += gridDim.x) {
        int64_t io, oo;
        line_offsets(g, line, &io, &oo);
        A carry = 0;
        for (int64_t t0 = 0; t0 < g.len; t0 += TILE) {
            A v[ITEMS], run = 0;
            for (int it = 0; it < ITEMS; it++) {
                int64_t n = t0 + threadIdx.x * ITEMS + it;
                int64_t k = reverse ? g.len - 1 - n : n;
                run += n < g.len ? (A)x[io + k * g.in_st] : (A)0;
                v[it] = run;
            }
            A incl = run;
            for (int d = 1; d < 32; d <<= 1) {
                A o = shfl_up(incl, d);
                if (lane >= d) incl += o;
            }
            A excl = shfl_up(incl, 1);
            if (lane == 0) excl = 0;
            if (lane == 31) warp_sum[warp] = incl;
            __syncthreads();
            if (warp == 0) {
                A w = lane < NW ? warp_sum[lane] : (A)0;
                for (int d = 1; d < 32; d <<= 1) {
                    A o = shfl_up(w, d);
                    if (lane >= d) w += o;
                }
                if (lane < NW) warp_sum[lane] = w;
            }
            __syncthreads();
            A prefix = carry + ((warp > 0 ? warp_sum[warp - 1] : (A)0) + excl);
            for (int it = 0; it < ITEMS; it++) {
                int64_t n = t0 + threadIdx.x * ITEMS + it;
                int64_t k = reverse ? g.len - 1 - n : n;
                if (n < g.len) y[oo + k * g.out_st] = (T)(prefix + v[it]);
            }
            carry += warp_sum[NW - 1];
            __syncthreads(); /* warp_sum is rewritten by the next tile */
        }
    }
}

template <typename T, typename A>
static dr_status launch_cumsum(const LineGeom &g, const dr_tensor *in, dr_tensor *out, int reverse,
                               cudaStream_t st, const char *op) {
    const T *x = (const T *)dr_cuda_base(in);
    T *y = (T *)dr_cuda_base(out);
    /* a block per line only when lines are long and too few to fill the GPU */
    if (g.len >= 512 && g.lines <= 4096)
        cumsum_block<T, A>
            <<<dr_cuda_blocks(g.lines * kThreads, kThreads), kThreads, 0, st>>>(g, x, y, reverse);
    else cumsum_serial<T, A><<<dr_cuda_blocks(g.lines, kThreads), kThreads, 0, st>>>(g, x, y, reverse);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

static dr_status cuda_cumsum(dr_tensor *out, const dr_tensor *in, int32_t dim, int reverse) {
    const char *op = "cumsum";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    LineGeom g = {};
    g.in_off = in->storage_offset;
    g.out_off = out->storage_offset;
    g.len = in->sizes[dim];
    g.in_st = in->strides[dim];
    g.out_st = out->strides[dim];
    g.lines = 1;
    for (int32_t d = 0; d < in->ndim; d++) {
        if (d == dim) continue;
        g.sizes[g.ndim] = in->sizes[d];
        g.in_strides[g.ndim] = in->strides[d];
        g.out_strides[g.ndim] = out->strides[d];
        g.lines *= in->sizes[d];
        g.ndim++;
    }
    if (g.lines == 0 || g.len == 0) return DR_OK;
    if (out->scalar_type == DR_F32) return launch_cumsum<float, double>(g, in, out, reverse, st, op);
    return launch_cumsum<int64_t, unsigned long long>(g, in, out, reverse, st, op);
}

} // namespace

extern "C" void dr_cuda_register_reduce(dr_backend *b) {
    b->sum = cuda_sum;
    b->moments = cuda_moments;
    b->argreduce = cuda_argreduce;
    b->extreme_backward = cuda_extreme_backward;
    b->cumsum = cuda_cumsum;
    dr_cuda_register_index(b);
}
