/* CUDA indexing kernels: index_check, index_select and its backward (index_add),
 * gather and its backward (scatter_add). cpu_index.c is the reference.
 *
 * Determinism without float atomics:
 * - index_add sorts the positions j by target row with CUB's radix sort, which
 *   is stable, so each row's positions come out increasing; one thread per
 *   grad_in element then adds its row's contributions in that order in double,
 *   exactly the CPU's sum (same order, same precision: the same bits);
 * - scatter_add gives each line (every coordinate but dim) to one thread, which
 *   adds along dim in increasing position into float, as the CPU does; lines
 *   write disjoint elements of grad_in, so no two threads touch one.
 * index_check finds the first bad element by an integer atomicMin of its linear
 * index (exact whatever the order) and returns it to the host. */
#include <cub/device/device_radix_sort.cuh>

#include "cuda_internal.cuh"

namespace {

constexpr int kThreads = 256;



/* t's strides walked over `sizes` (another tensor's shape, or its lines with
 * size 1 at dim); stride `zero_dim` left out (-1: none). */
static dr_cuda_geom geom_over(const dr_tensor *t, const int64_t *sizes, int32_t ndim, int32_t zero_dim) {
    dr_cuda_geom g = dr_cuda_geom_of(t);
    g.ndim = ndim;
    for (int32_t d = 0; d < ndim; d++) {
        g.sizes[d] = sizes[d];
        if (d == zero_dim) g.strides[d] = 0;
    }
    g.contiguous = false;
    return g;
}

/* ---- bounds ----------------------------------------------------------------------- */

__global__ void first_bad_kernel(dr_cuda_geom g, const char *p, int32_t dt, int64_t n, int64_t size,
                                 unsigned long long *first) {
    unsigned long long m = ~0ull;
    GRID_STRIDE(i, n) {
        int64_t v = dr_cuda_load_i64(p, dt, dr_cuda_offset(g, i));
        if ((v < 0 || v >= size) && (unsigned long long)i < m) m = (unsigned long long)i;
    }
    for (int d = 16; d > 0; d >>= 1) {
        unsigned long long o = __shfl_down_sync(0xffffffffu, m, d);
        m = o < m ? o : m;
    }
    if (threadIdx.x % 32 == 0 && m != ~0ull) atomicMin(first, m);
}

/* res[0]: the first bad linear index (all ones: none) -> res[1]: its value */
__global__ void bad_value_kernel(dr_cuda_geom g, const char *p, int32_t dt, unsigned long long *res) {
    if (res[0] != ~0ull)
        res[1] = (unsigned long long)dr_cuda_load_i64(p, dt, dr_cuda_offset(g, (int64_t)res[0]));
}

static dr_status cuda_index_check(const dr_tensor *index, int64_t size, int64_t *bad, int *found) {
    const char *op = "index_check";
    *found = 0;
    cudaStream_t st = dr_cuda_stream_of(index, op);
    if (!st) return DR_ERR_DEVICE;
    const int64_t n = dr_tensor_numel(index);
    if (n == 0) return DR_OK;
    Scratch res(index->device.index);
    DR_TRY(res.alloc(2 * sizeof(unsigned long long)));
    unsigned long long *r = res.as<unsigned long long>();
    DR_CUDA_TRY(cudaMemsetAsync(r, 0xff, 2 * sizeof(unsigned long long), st), op);
    dr_cuda_geom g = dr_cuda_geom_of(index);
    first_bad_kernel<<<dr_cuda_blocks(n, kThreads), kThreads, 0, st>>>(g, dr_cuda_base(index),
                                                                       index->scalar_type, n, size, r);
    DR_CUDA_LAUNCHED(op);
    bad_value_kernel<<<1, 1, 0, st>>>(g, dr_cuda_base(index), index->scalar_type, r);
    DR_CUDA_LAUNCHED(op);
    unsigned long long host[2];
    DR_CUDA_TRY(cudaMemcpyAsync(host, r, sizeof host, cudaMemcpyDeviceToHost, st), op);
    DR_CUDA_TRY(cudaStreamSynchronize(st), op);
    if (host[0] != ~0ull) {
        *found = 1;
        *bad = (int64_t)host[1];
    }
    return DR_OK;
}

/* ---- index_select / index_add ------------------------------------------------------- */

template <typename E>
__global__ void index_select_kernel(E *out, const E *in, const int64_t *idx, int64_t total, int64_t nidx,
                                    int64_t n, int64_t inner) {
    GRID_STRIDE(e, total) {
        int64_t i = e % inner, t = e / inner;
        int64_t j = t % nidx, o = t / nidx;
        out[e] = in[(o * n + idx[j]) * inner + i];
    }
}

static dr_status cuda_index_select(dr_tensor *out, const dr_tensor *in, const dr_tensor *index, int64_t outer,
                                   int64_t inner) {
    const char *op = "index_select";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    const int64_t nidx = dr_tensor_numel(index), total = dr_tensor_numel(out);
    const int64_t n = outer > 0 && inner > 0 ? dr_tensor_numel(in) / (outer * inner) : 0;
    if (total == 0) return DR_OK;
    const int64_t *idx = dr_cuda_ptr<int64_t>(index);
    const unsigned blocks = dr_cuda_blocks(total, kThreads);
    switch (dr_dtype_size(in->scalar_type)) {
    case 1:
        index_select_kernel<<<blocks, kThreads, 0, st>>>(dr_cuda_ptr<uint8_t>(out), dr_cuda_ptr<uint8_t>(in),
                                                         idx, total, nidx, n, inner);
        break;
    case 2:
        index_select_kernel<<<blocks, kThreads, 0, st>>>(
            dr_cuda_ptr<uint16_t>(out), dr_cuda_ptr<uint16_t>(in), idx, total, nidx, n, inner);
        break;
    case 4:
        index_select_kernel<<<blocks, kThreads, 0, st>>>(
            dr_cuda_ptr<uint32_t>(out), dr_cuda_ptr<uint32_t>(in), idx, total, nidx, n, inner);
        break;
    default:
        index_select_kernel<<<blocks, kThreads, 0, st>>>(
            dr_cuda_ptr<uint64_t>(out), dr_cuda_ptr<uint64_t>(in), idx, total, nidx, n, inner);
        break;
    }
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

__global__ void iota_kernel(unsigned long long *v, int64_t n) {
    GRID_STRIDE(i, n) v[i] = (unsigned long long)i;
}

/* start[r] = the first sorted position whose key is >= r (r = 0..n): row r's
 * positions are order[start[r] .. start[r+1]). */
__global__ void segment_start_kernel(const unsigned long long *keys, int64_t nidx, int64_t n,
                                     int64_t *start) {
    GRID_STRIDE(r, n + 1) {
        int64_t lo = 0, hi = nidx;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo) / 2;
            if ((int64_t)keys[mid] < r) lo = mid + 1;
            else hi = mid;
        }
        start[r] = lo;
    }
}

/* A thread per grad_in element (o, r, i), i fastest so a warp reads a row of
 * grad_out; the row's positions in increasing j, summed in double. */
__global__ void index_add_kernel(float *gi, const float *g, const unsigned long long *order,
                                 const int64_t *start, int64_t total, int64_t n, int64_t nidx,
                                 int64_t inner) {
    GRID_STRIDE(e, total) {
        int64_t i = e % inner, t = e / inner;
        int64_t r = t % n, o = t / n;
        double acc = 0;
        for (int64_t k = start[r], k1 = start[r + 1]; k < k1; k++)
            acc += (double)g[(o * nidx + (int64_t)order[k]) * inner + i];
        gi[e] = (float)acc;
    }
}

static dr_status cuda_index_add(dr_tensor *grad_in, const dr_tensor *grad_out, const dr_tensor *index,
                                int64_t outer, int64_t inner) {
    const char *op = "index_add";
    cudaStream_t st = dr_cuda_stream_of(grad_in, op);
    if (!st) return DR_ERR_DEVICE;
    const int32_t dev = grad_in->device.index;
    const int64_t nidx = dr_tensor_numel(index), total = dr_tensor_numel(grad_in);
    const int64_t n = outer > 0 && inner > 0 ? total / (outer * inner) : 0;
    if (total == 0 || n == 0) return DR_OK;
    float *gi = dr_cuda_ptr<float>(grad_in);
    if (nidx == 0) {
        DR_CUDA_TRY(cudaMemsetAsync(gi, 0, (size_t)total * sizeof(float), st), op);
        return DR_OK;
    }
    /* keys lie in [0, n): sort only their low bits */
    int end_bit = 1;
    while (end_bit < 64 && (1ull << end_bit) < (unsigned long long)n) end_bit++;
    const auto *keys_in = (const unsigned long long *)dr_cuda_ptr<int64_t>(index);
    size_t temp_bytes = 0;
    DR_CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, (unsigned long long *)nullptr,
                                                (const unsigned long long *)nullptr,
                                                (unsigned long long *)nullptr, nidx, 0, end_bit, st),
                op);
    /* one allocation: sorted keys, positions before and after, segment starts, CUB's temp */
    const size_t a = (size_t)nidx * sizeof(unsigned long long), sb = (size_t)(n + 1) * sizeof(int64_t);
    auto up = [](size_t x) { return (x + 255) / 256 * 256; };
    Scratch buf(dev);
    DR_TRY(buf.alloc(3 * up(a) + up(sb) + temp_bytes));
    char *base = buf.as<char>();
    auto *keys_out = (unsigned long long *)base;
    auto *pos_in = (unsigned long long *)(base + up(a));
    auto *pos_out = (unsigned long long *)(base + 2 * up(a));
    auto *start = (int64_t *)(base + 3 * up(a));
    void *temp = base + 3 * up(a) + up(sb);
    iota_kernel<<<dr_cuda_blocks(nidx, kThreads), kThreads, 0, st>>>(pos_in, nidx);
    DR_CUDA_LAUNCHED(op);
    DR_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, pos_in, pos_out, nidx, 0,
                                                end_bit, st),
                op);
    segment_start_kernel<<<dr_cuda_blocks(n + 1, kThreads), kThreads, 0, st>>>(keys_out, nidx, n, start);
    DR_CUDA_LAUNCHED(op);
    index_add_kernel<<<dr_cuda_blocks(total, kThreads), kThreads, 0, st>>>(
        gi, dr_cuda_ptr<float>(grad_out), pos_out, start, total, n, nidx, inner);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

/* ---- gather / scatter_add ---------------------------------------------------------------- */

/* gin walks in's strides over index's shape with dim's stride left out, so
 * element e of out sits at gin(e) + index[e] * in_dim_stride. */
template <typename E>
__global__ void gather_kernel(E *out, const E *in, dr_cuda_geom gin, int64_t in_dim_stride, dr_cuda_geom gix,
                              const char *ix, int32_t idt, int64_t total) {
    GRID_STRIDE(e, total) {
        int64_t v = dr_cuda_load_i64(ix, idt, dr_cuda_offset(gix, e));
        out[e] = in[dr_cuda_offset(gin, e) + v * in_dim_stride];
    }
}

static dr_status cuda_gather(dr_tensor *out, const dr_tensor *in, int32_t dim, const dr_tensor *index) {
    const char *op = "gather";
    cudaStream_t st = dr_cuda_stream_of(in, op);
    if (!st) return DR_ERR_DEVICE;
    const int64_t total = dr_tensor_numel(index);
    if (total == 0) return DR_OK;
    dr_cuda_geom gin = geom_over(in, index->sizes, index->ndim, dim);
    dr_cuda_geom gix = dr_cuda_geom_of(index);
    const int64_t ds = in->strides[dim];
    const char *ix = dr_cuda_base(index);
    const int32_t idt = index->scalar_type;
    const unsigned blocks = dr_cuda_blocks(total, kThreads);
    switch (dr_dtype_size(in->scalar_type)) {
    case 1:
        gather_kernel<<<blocks, kThreads, 0, st>>>(
            dr_cuda_ptr<uint8_t>(out), (const uint8_t *)dr_cuda_base(in), gin, ds, gix, ix, idt, total);
        break;
    case 2:
        gather_kernel<<<blocks, kThreads, 0, st>>>(
            dr_cuda_ptr<uint16_t>(out), (const uint16_t *)dr_cuda_base(in), gin, ds, gix, ix, idt, total);
        break;
    case 4:
        gather_kernel<<<blocks, kThreads, 0, st>>>(
            dr_cuda_ptr<uint32_t>(out), (const uint32_t *)dr_cuda_base(in), gin, ds, gix, ix, idt, total);
        break;
    default:
        gather_kernel<<<blocks, kThreads, 0, st>>>(
            dr_cuda_ptr<uint64_t>(out), (const uint64_t *)dr_cuda_base(in), gin, ds, gix, ix, idt, total);
        break;
    }
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

/* Line l: the geoms walk index's shape with size 1 at dim, giving each tensor's
 * offset of the line's first element; the thread then steps along dim. */
__global__ void scatter_add_kernel(float *gi, const float *go, const char *ix, int32_t idt, dr_cuda_geom ggi,
                                   dr_cuda_geom ggo, dr_cuda_geom gix, int64_t gi_st, int64_t go_st,
                                   int64_t ix_st, int64_t len, int64_t lines) {
    GRID_STRIDE(l, lines) {
        const int64_t a = dr_cuda_offset(ggi, l), b = dr_cuda_offset(ggo, l), c = dr_cuda_offset(gix, l);
        for (int64_t k = 0; k < len; k++) {
            int64_t v = dr_cuda_load_i64(ix, idt, c + k * ix_st);
            gi[a + v * gi_st] += go[b + k * go_st];
        }
    }
}

static dr_status cuda_scatter_add(dr_tensor *grad_in, int32_t dim, const dr_tensor *index,
                                  const dr_tensor *grad_out) {
    const char *op = "scatter_add";
    cudaStream_t st = dr_cuda_stream_of(grad_in, op);
    if (!st) return DR_ERR_DEVICE;
    const int64_t len = index->sizes[dim], numel = dr_tensor_numel(index);
    const int64_t lines = len > 0 ? numel / len : 0;
    if (lines == 0) return DR_OK;
    int64_t line_sizes[DR_MAX_DIMS];
    for (int32_t d = 0; d < index->ndim; d++) line_sizes[d] = d == dim ? 1 : index->sizes[d];
    const int32_t nd = index->ndim;
    scatter_add_kernel<<<dr_cuda_blocks(lines, kThreads), kThreads, 0, st>>>(
        (float *)dr_cuda_base(grad_in), (const float *)dr_cuda_base(grad_out), dr_cuda_base(index),
        index->scalar_type, geom_over(grad_in, line_sizes, nd, -1), geom_over(grad_out, line_sizes, nd, -1),
        geom_over(index, line_sizes, nd, -1), grad_in->strides[dim], grad_out->strides[dim],
        index->strides[dim], len, lines);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

} // namespace

extern "C" void dr_cuda_register_index(dr_backend *b) {
    b->index_check = cuda_index_check;
    b->index_select = cuda_index_select;
    b->index_add = cuda_index_add;
    b->gather = cuda_gather;
    b->scatter_add = cuda_scatter_add;
}
