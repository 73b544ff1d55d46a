/* Elementwise kernels on CUDA: copy (with casts), fill, binary ops, unary math
 * forward and backward, where and masked_scale; and the table entries of the
 * family (the Philox kernels are in cuda_random.cu, the optimizers in
 * cuda_optim.cu). The CPU kernels are the reference (cpu_backend.c,
 * cpu_elementwise.c, cpu_unary.c, cpu_index.c, cpu_random_more.c).
 *
 * Layout: operands of one shape with any strides (0 included). Before a launch
 * their dims are collapsed as the CPU's dr_iter does (size-1 dims dropped,
 * neighbours merged where every operand is contiguous across them), so a
 * contiguous operand costs no index arithmetic and a strided one a division
 * per remaining dim. Grid-stride loops, 64-bit indices; when every operand is
 * contiguous float32 (or a float <-> half cast, or a fill) the kernels move 16
 * bytes per access.
 *
 * Rounding: binary ops round every product and sum explicitly (__fmul_rn,
 * __fadd_rn): nvcc contracts a + alpha*b into an FMA by default, the CPU kernels
 * (baseline x86-64) never do, so this keeps them bit-identical. The unary math
 * uses CUDA's precise expf/erfcf/tanhf/logf/powf, which differ from the CPU's
 * vectorised Cephes-style approximations (cpu_vecmath.h) by a few ulp; the
 * formulas (and the cancellation-free forms) are the CPU's. */
#include <cstdio>
#include <cstring>

#include "cuda_elementwise.cuh"
extern "C" {
#include "../../util/scalar.h"
}

namespace {

const int THREADS = DR_CUDA_EW_THREADS;


/* ---- geometry --------------------------------------------------------------- */

/* The geometries of nops same-shape operands with dims collapsed (see above).
 * numel must be > 0. */
void collapse(int nops, const dr_tensor *const *ts, dr_cuda_geom *g) {
    const dr_tensor *t0 = ts[0];
    int64_t sizes[DR_MAX_DIMS], strides[4][DR_MAX_DIMS];
    int32_t n = 0;
    for (int32_t d = 0; d < t0->ndim; d++) {
        if (t0->sizes[d] == 1) continue; /* never moves the offset */
        if (n > 0) {
            bool mergeable = true;
            for (int k = 0; k < nops; k++)
                if (strides[k][n - 1] != ts[k]->strides[d] * t0->sizes[d]) mergeable = false;
            if (mergeable) {
                sizes[n - 1] *= t0->sizes[d];
                for (int k = 0; k < nops; k++) strides[k][n - 1] = ts[k]->strides[d];
                continue;
            }
        }
        sizes[n] = t0->sizes[d];
        for (int k = 0; k < nops; k++) strides[k][n] = ts[k]->strides[d];
        n++;
    }
    if (n == 0) { /* 0-d or all ones: one element */
        sizes[0] = 1;
        for (int k = 0; k < nops; k++) strides[k][0] = 1;
        n = 1;
    }
    for (int k = 0; k < nops; k++) {
        dr_cuda_geom &gk = g[k];
        gk.ndim = n;
        gk.offset = ts[k]->storage_offset;
        gk.contiguous = true;
        int64_t expect = 1;
        for (int32_t d = DR_MAX_DIMS - 1; d >= 0; d--) {
            if (d >= n) {
                gk.sizes[d] = 1, gk.strides[d] = 0;
                continue;
            }
            gk.sizes[d] = sizes[d];
            gk.strides[d] = strides[k][d];
            if (strides[k][d] != expect) gk.contiguous = false;
            expect *= sizes[d];
        }
    }
}

/* Float dtypes as float: f16/bf16 widen exactly and narrow round-to-nearest-even
 * (util/scalar.h goes through double, which rounds the same). */
__device__ __forceinline__ float load_float(const char *p, int32_t dt, int64_t i) {
    switch (dt) {
    case DR_F16: return __half2float(((const __half *)p)[i]);
    case DR_BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

__device__ __forceinline__ void store_float(char *p, int32_t dt, int64_t i, float v) {
    switch (dt) {
    case DR_F16: ((__half *)p)[i] = __float2half_rn(v); break;
    case DR_BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

/* Contiguous runs move 16 bytes per access when their pointers allow it (the
 * allocator's blocks are aligned; views at an offset may not be): the vector
 * loop covers n/4 (or n16) chunks and the first threads do the tail. */
bool aligned(const void *p, uintptr_t bytes) { return ((uintptr_t)p & (bytes - 1)) == 0; }

__device__ __forceinline__ int64_t tail_index(int64_t done) {
    return done + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
}

/* o[i] = f(a[i]) on contiguous float32 */
template <typename F>
__global__ void map1_f32_kernel(float *o, const float *a, int64_t n, bool vec, F f) {
    if (!vec) {
        GRID_STRIDE(i, n) o[i] = f(a[i]);
        return;
    }
    int64_t n4 = n / 4;
    GRID_STRIDE(i, n4) {
        float4 x = ((const float4 *)a)[i];
        ((float4 *)o)[i] = make_float4(f(x.x), f(x.y), f(x.z), f(x.w));
    }
    int64_t t = tail_index(n4 * 4);
    if (t < n) o[t] = f(a[t]);
}

/* o[i] = f(a[i], b[i]) on contiguous float32 */
template <typename F>
__global__ void map2_f32_kernel(float *o, const float *a, const float *b, int64_t n, bool vec,
                                F f) {
    if (!vec) {
        GRID_STRIDE(i, n) o[i] = f(a[i], b[i]);
        return;
    }
    int64_t n4 = n / 4;
    GRID_STRIDE(i, n4) {
        float4 x = ((const float4 *)a)[i], y = ((const float4 *)b)[i];
        ((float4 *)o)[i] = make_float4(f(x.x, y.x), f(x.y, y.y), f(x.z, y.z), f(x.w, y.w));
    }
    int64_t t = tail_index(n4 * 4);
    if (t < n) o[t] = f(a[t], b[t]);
}

template <typename F>
dr_status launch_map1(float *o, const float *a, int64_t n, F f, cudaStream_t s, const char *op) {
    bool vec = aligned(o, 16) && aligned(a, 16);
    map1_f32_kernel<<<dr_cuda_blocks(vec ? n / 4 : n, THREADS), THREADS, 0, s>>>(o, a, n, vec, f);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

template <typename F>
dr_status launch_map2(float *o, const float *a, const float *b, int64_t n, F f, cudaStream_t s,
                      const char *op) {
    bool vec = aligned(o, 16) && aligned(a, 16) && aligned(b, 16);
    map2_f32_kernel<<<dr_cuda_blocks(vec ? n / 4 : n, THREADS), THREADS, 0, s>>>(o, a, b, n, vec,
                                                                                  f);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

/* ---- copy ------------------------------------------------------------------- */

template <typename T>
__global__ void copy_same_kernel(T *d, const T *s, dr_cuda_geom gd, dr_cuda_geom gs, int64_t n) {
    GRID_STRIDE(i, n) d[dr_cuda_offset(gd, i)] = s[dr_cuda_offset(gs, i)];
}

/* Casts as util/scalar.h: between integer dtypes through int64, otherwise
 * through double (float to integer truncates and saturates, NaN -> 0). */
__global__ void copy_cast_kernel(char *d, int32_t dt, const char *s, int32_t st, dr_cuda_geom gd,
                                 dr_cuda_geom gs, int64_t n, bool via_int) {
    GRID_STRIDE(i, n) {
        int64_t di = dr_cuda_offset(gd, i), si = dr_cuda_offset(gs, i);
        if (via_int) dr_cuda_store_i64(d, dt, di, dr_cuda_load_i64(s, st, si));
        else dr_cuda_store_f64(d, dt, di, dr_cuda_load_f64(s, st, si));
    }
}

/* Contiguous float <-> half casts, the common case (mixed precision); four
 * elements per access: a float4 and the 8 bytes of four halves. */
__device__ __forceinline__ uint32_t half_bits(int32_t dt, float v) {
    return dt == DR_F16 ? __half_as_ushort(__float2half_rn(v))
                        : __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
__device__ __forceinline__ float half_value(int32_t dt, uint32_t bits) {
    return dt == DR_F16 ? __half2float(__ushort_as_half((unsigned short)bits))
                        : __bfloat162float(__ushort_as_bfloat16((unsigned short)bits));
}

__global__ void f32_to_half_kernel(char *d, int32_t dt, const float *s, int64_t n, bool vec) {
    if (!vec) {
        GRID_STRIDE(i, n) store_float(d, dt, i, s[i]);
        return;
    }
    int64_t n4 = n / 4;
    GRID_STRIDE(i, n4) {
        float4 x = ((const float4 *)s)[i];
        ((uint2 *)d)[i] = make_uint2(half_bits(dt, x.x) | half_bits(dt, x.y) << 16,
                                     half_bits(dt, x.z) | half_bits(dt, x.w) << 16);
    }
    int64_t t = tail_index(n4 * 4);
    if (t < n) store_float(d, dt, t, s[t]);
}

__global__ void half_to_f32_kernel(float *d, const char *s, int32_t st, int64_t n, bool vec) {
    if (!vec) {
        GRID_STRIDE(i, n) d[i] = load_float(s, st, i);
        return;
    }
    int64_t n4 = n / 4;
    GRID_STRIDE(i, n4) {
        uint2 h = ((const uint2 *)s)[i];
        ((float4 *)d)[i] = make_float4(half_value(st, h.x & 0xFFFF), half_value(st, h.x >> 16),
                                       half_value(st, h.y & 0xFFFF), half_value(st, h.y >> 16));
    }
    int64_t t = tail_index(n4 * 4);
    if (t < n) d[t] = load_float(s, st, t);
}

template <typename T>
dr_status launch_copy_same(dr_tensor *dst, const dr_tensor *src, const dr_cuda_geom *g, int64_t n,
                           cudaStream_t s) {
    copy_same_kernel<T><<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        (T *)dr_cuda_base(dst), (const T *)dr_cuda_base(src), g[0], g[1], n);
    DR_CUDA_LAUNCHED("copy");
    return DR_OK;
}

dr_status cuda_copy(dr_tensor *dst, const dr_tensor *src) {
    int64_t n = dr_tensor_numel(dst);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(dst, "copy");
    if (!s) return DR_ERR_DEVICE;
    const dr_tensor *ts[2] = {dst, src};
    dr_cuda_geom g[2];
    collapse(2, ts, g);
    int32_t dt = dst->scalar_type, st = src->scalar_type;
    size_t esize = (size_t)dr_dtype_size(dt);
    bool contiguous = g[0].contiguous && g[1].contiguous;
    if (dt == st) {
        if (contiguous) {
            DR_CUDA_TRY(cudaMemcpyAsync(dr_cuda_base(dst) + g[0].offset * esize,
                                        dr_cuda_base(src) + g[1].offset * esize, (size_t)n * esize,
                                        cudaMemcpyDeviceToDevice, s),
                        "copy");
            return DR_OK;
        }
        switch (esize) {
        case 1: return launch_copy_same<uint8_t>(dst, src, g, n, s);
        case 2: return launch_copy_same<uint16_t>(dst, src, g, n, s);
        case 4: return launch_copy_same<uint32_t>(dst, src, g, n, s);
        default: return launch_copy_same<uint64_t>(dst, src, g, n, s);
        }
    }
    unsigned grid = dr_cuda_blocks(n, THREADS);
    if (contiguous && st == DR_F32 && (dt == DR_F16 || dt == DR_BF16)) {
        char *d = dr_cuda_base(dst) + g[0].offset * esize;
        const float *f = dr_cuda_ptr<float>(src);
        bool vec = aligned(d, 8) && aligned(f, 16);
        f32_to_half_kernel<<<vec ? dr_cuda_blocks(n / 4, THREADS) : grid, THREADS, 0, s>>>(
            d, dt, f, n, vec);
    } else if (contiguous && dt == DR_F32 && (st == DR_F16 || st == DR_BF16)) {
        float *f = dr_cuda_ptr<float>(dst);
        const char *h = dr_cuda_base(src) + g[1].offset * dr_dtype_size(st);
        bool vec = aligned(f, 16) && aligned(h, 8);
        half_to_f32_kernel<<<vec ? dr_cuda_blocks(n / 4, THREADS) : grid, THREADS, 0, s>>>(
            f, h, st, n, vec);
    } else {
        bool via_int = !dr_dtype_is_float(dt) && !dr_dtype_is_float(st);
        copy_cast_kernel<<<grid, THREADS, 0, s>>>(dr_cuda_base(dst), dt, dr_cuda_base(src), st,
                                                  g[0], g[1], n, via_int);
    }
    DR_CUDA_LAUNCHED("copy");
    return DR_OK;
}

/* ---- fill ------------------------------------------------------------------- */

template <typename T> __global__ void fill_kernel(T *p, dr_cuda_geom g, T v, int64_t n) {
    GRID_STRIDE(i, n) p[dr_cuda_offset(g, i)] = v;
}

/* Contiguous: 16-byte stores of the value repeated (16 is a multiple of every
 * element size, so an aligned start keeps the pattern in phase). */
template <typename T>
__global__ void fill_contig_kernel(T *p, T v, uint4 v16, int64_t n, bool vec) {
    if (!vec) {
        GRID_STRIDE(i, n) p[i] = v;
        return;
    }
    const int64_t per = 16 / sizeof(T), n16 = n / per;
    GRID_STRIDE(i, n16) ((uint4 *)p)[i] = v16;
    int64_t t = tail_index(n16 * per);
    if (t < n) p[t] = v;
}

template <typename T>
dr_status launch_fill(dr_tensor *t, const dr_cuda_geom &g, uint64_t bits, int64_t n,
                      cudaStream_t s) {
    T v;
    memcpy(&v, &bits, sizeof v); /* little-endian: the dtype's bits are the low bytes */
    if (g.contiguous) {
        T *p = (T *)dr_cuda_base(t) + g.offset;
        uint4 v16;
        for (size_t k = 0; k < 16 / sizeof(T); k++) memcpy((char *)&v16 + k * sizeof(T), &v, sizeof(T));
        bool vec = aligned(p, 16);
        int64_t per = 16 / sizeof(T);
        fill_contig_kernel<T><<<dr_cuda_blocks(vec ? n / per : n, THREADS), THREADS, 0, s>>>(
            p, v, v16, n, vec);
    } else {
        fill_kernel<T><<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>((T *)dr_cuda_base(t), g, v, n);
    }
    DR_CUDA_LAUNCHED("fill");
    return DR_OK;
}

dr_status cuda_fill(dr_tensor *t, double value) {
    int64_t n = dr_tensor_numel(t);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(t, "fill");
    if (!s) return DR_ERR_DEVICE;
    /* the value converted once on the host by the CPU's own rules */
    uint64_t bits = 0;
    dr_store_f64(&bits, t->scalar_type, 0, value);
    const dr_tensor *ts[1] = {t};
    dr_cuda_geom g;
    collapse(1, ts, &g);
    size_t esize = (size_t)dr_dtype_size(t->scalar_type);
    if (g.contiguous && (bits == 0 || esize == 1)) {
        DR_CUDA_TRY(cudaMemsetAsync(dr_cuda_base(t) + g.offset * esize, (int)(bits & 0xFF),
                                    (size_t)n * esize, s),
                    "fill");
        return DR_OK;
    }
    switch (esize) {
    case 1: return launch_fill<uint8_t>(t, g, bits, n, s);
    case 2: return launch_fill<uint16_t>(t, g, bits, n, s);
    case 4: return launch_fill<uint32_t>(t, g, bits, n, s);
    default: return launch_fill<uint64_t>(t, g, bits, n, s);
    }
}

/* ---- binary ----------------------------------------------------------------- */

/* add: a + alpha b, sub: a - alpha b, mul, div; each operation rounded on its
 * own (no FMA), as the CPU. */
__device__ __forceinline__ float apply_f32(int op, float x, float y, float alpha) {
    switch (op) {
    case DR_OP_ADD: return __fadd_rn(x, __fmul_rn(alpha, y));
    case DR_OP_SUB: return __fsub_rn(x, __fmul_rn(alpha, y));
    case DR_OP_MUL: return __fmul_rn(x, y);
    default: return __fdiv_rn(x, y);
    }
}

/* Integers wrap like torch: computed in uint64 (ops never sends div). */
__device__ __forceinline__ int64_t apply_i64(int op, int64_t x, int64_t y, int64_t alpha) {
    uint64_t ux = (uint64_t)x, uy = (uint64_t)y, ua = (uint64_t)alpha;
    switch (op) {
    case DR_OP_ADD: return (int64_t)(ux + ua * uy);
    case DR_OP_SUB: return (int64_t)(ux - ua * uy);
    default: return (int64_t)(ux * uy);
    }
}

/* All three contiguous float32: the op is a template parameter. */
template <int OP> struct BinaryF32 {
    float alpha;
    __device__ float operator()(float x, float y) const { return apply_f32(OP, x, y, alpha); }
};

/* Any dtype and strides: floats in float, integers (and bool) in int64. */
__global__ void binary_kernel(int op, char *o, const char *a, const char *b, int32_t dt,
                              dr_cuda_geom go, dr_cuda_geom ga, dr_cuda_geom gb, float falpha,
                              int64_t ialpha, int64_t n) {
    bool is_float = dt == DR_F32 || dt == DR_F16 || dt == DR_BF16;
    GRID_STRIDE(i, n) {
        int64_t io = dr_cuda_offset(go, i), ia = dr_cuda_offset(ga, i), ib = dr_cuda_offset(gb, i);
        if (is_float) {
            store_float(o, dt, io, apply_f32(op, load_float(a, dt, ia), load_float(b, dt, ib), falpha));
        } else {
            int64_t r = apply_i64(op, dr_cuda_load_i64(a, dt, ia), dr_cuda_load_i64(b, dt, ib), ialpha);
            dr_cuda_store_i64(o, dt, io, r);
        }
    }
}

dr_status cuda_binary(dr_binary_op op, dr_tensor *out, const dr_tensor *a, const dr_tensor *b,
                      double alpha) {
    static const char *const names[4] = {"add", "sub", "mul", "div"};
    const char *name = (unsigned)op < 4 ? names[op] : "binary op";
    int64_t n = dr_tensor_numel(out);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(out, name);
    if (!s) return DR_ERR_DEVICE;
    const dr_tensor *ts[3] = {out, a, b};
    dr_cuda_geom g[3];
    collapse(3, ts, g);
    int32_t dt = out->scalar_type;
    float falpha = (float)alpha;
    if (dt == DR_F32 && g[0].contiguous && g[1].contiguous && g[2].contiguous) {
        float *po = dr_cuda_ptr<float>(out);
        const float *pa = dr_cuda_ptr<float>(a), *pb = dr_cuda_ptr<float>(b);
        switch (op) {
        case DR_OP_ADD: return launch_map2(po, pa, pb, n, BinaryF32<DR_OP_ADD>{falpha}, s, name);
        case DR_OP_SUB: return launch_map2(po, pa, pb, n, BinaryF32<DR_OP_SUB>{falpha}, s, name);
        case DR_OP_MUL: return launch_map2(po, pa, pb, n, BinaryF32<DR_OP_MUL>{falpha}, s, name);
        default: return launch_map2(po, pa, pb, n, BinaryF32<DR_OP_DIV>{falpha}, s, name);
        }
    } else {
        binary_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>((int)op, dr_cuda_base(out), dr_cuda_base(a),
                                               dr_cuda_base(b), dt, g[0], g[1], g[2], falpha,
                                               dr_f64_to_i64(alpha), n);
    }
    DR_CUDA_LAUNCHED(name);
    return DR_OK;
}

/* ---- unary math --------------------------------------------------------------- */

constexpr float SQRT_HALF = 0.70710678118654752f;
constexpr float INV_SQRT_2PI = 0.39894228040143268f;
constexpr float GELU_BETA = 0.79788456080286536f; /* sqrt(2/pi) */
constexpr float GELU_KAPPA = 0.044715f;
constexpr float QUICK_GELU_ALPHA = 1.702f;

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* gelu's tanh argument u; x/2 (1 + tanh u) is computed as x sigmoid(2u), which
 * does not cancel for negative x (likewise 1 + erf(z) as erfc(-z)). */
__device__ __forceinline__ float gelu_u(float x) {
    return GELU_BETA * (x + GELU_KAPPA * x * x * x);
}

/* x^e with torch's exact special cases (pow_tensor_scalar_optimized_kernel);
 * 1/sqrtf rather than rsqrtf, which is not correctly rounded. */
__device__ __forceinline__ float pow_special(float x, float e) {
    if (e == 0.0f) return 1.0f;
    if (e == 1.0f) return x;
    if (e == 2.0f) return x * x;
    if (e == 3.0f) return x * x * x;
    if (e == 0.5f) return sqrtf(x);
    if (e == -0.5f) return 1.0f / sqrtf(x);
    if (e == -1.0f) return 1.0f / x;
    if (e == -2.0f) return 1.0f / (x * x);
    return powf(x, e);
}

/* min(max(x, lo), hi): NaN fails both compares and passes through; lo > hi
 * gives hi (torch.clamp). */
__device__ __forceinline__ float clampf(float x, float lo, float hi) {
    float t = x < lo ? lo : x;
    return t > hi ? hi : t;
}

__device__ __forceinline__ float unary_forward(int op, float x, float p0, float p1) {
    switch (op) {
    case DR_UNARY_SILU: return x / (1.0f + expf(-x));
    case DR_UNARY_GELU: return 0.5f * x * erfcf(-x * SQRT_HALF);
    case DR_UNARY_GELU_TANH: return x * sigmoidf(2.0f * gelu_u(x));
    case DR_UNARY_QUICK_GELU: return x / (1.0f + expf(-QUICK_GELU_ALPHA * x));
    case DR_UNARY_RELU: return x < 0.0f ? 0.0f : x;
    case DR_UNARY_SIGMOID: return sigmoidf(x);
    case DR_UNARY_TANH: return tanhf(x);
    case DR_UNARY_EXP: return expf(x);
    case DR_UNARY_LOG: return logf(x);
    case DR_UNARY_SQRT: return sqrtf(x);
    case DR_UNARY_RSQRT: return 1.0f / sqrtf(x);
    case DR_UNARY_ABS: return fabsf(x);
    case DR_UNARY_NEG: return -x;
    case DR_UNARY_POW: return pow_special(x, p0);
    case DR_UNARY_CLAMP: return clampf(x, p0, p1);
    default: return 0.0f;
    }
}

/* d/ds s sigmoid(a s) = sg + a s sg (1 - sg) */
__device__ __forceinline__ float silu_grad(float s, float a) {
    float sg = sigmoidf(a * s);
    return sg + a * s * sg * (1.0f - sg);
}

/* With q = sigmoid(2u): (1 + tanh u)/2 = q and 1 - tanh^2 u = 4 q (1 - q). */
__device__ __forceinline__ float gelu_tanh_grad(float s) {
    float q = sigmoidf(2.0f * gelu_u(s));
    return q + 2.0f * s * q * (1.0f - q) * GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * s * s);
}

/* g: grad_out; s: the saved x, or y where dr_unary_backward_uses_output says. */
__device__ __forceinline__ float unary_backward(int op, float g, float s, float p0, float p1) {
    switch (op) {
    case DR_UNARY_SILU: return g * silu_grad(s, 1.0f);
    case DR_UNARY_GELU: /* Phi(x) + x phi(x) */
        return g * (0.5f * erfcf(-s * SQRT_HALF) + s * INV_SQRT_2PI * expf(-0.5f * s * s));
    case DR_UNARY_GELU_TANH: return g * gelu_tanh_grad(s);
    case DR_UNARY_QUICK_GELU: return g * silu_grad(s, QUICK_GELU_ALPHA);
    case DR_UNARY_RELU: return s > 0.0f ? g : 0.0f;
    case DR_UNARY_SIGMOID: return g * s * (1.0f - s);
    case DR_UNARY_TANH: return g * (1.0f - s * s);
    case DR_UNARY_EXP: return g * s;
    case DR_UNARY_LOG: return g / s;
    case DR_UNARY_SQRT: return g / (2.0f * s);
    case DR_UNARY_RSQRT: return -0.5f * g * s * s * s;
    case DR_UNARY_ABS: return s > 0.0f ? g : s < 0.0f ? -g : 0.0f;
    case DR_UNARY_NEG: return -g;
    case DR_UNARY_POW: /* e x^(e-1), and 0 for e = 0 (torch's pow_backward) */
        return p0 == 0.0f ? 0.0f : g * p0 * pow_special(s, p0 - 1.0f);
    case DR_UNARY_CLAMP: return s >= p0 && s <= p1 ? g : 0.0f;
    default: return 0.0f;
    }
}

struct UnaryForward {
    int op;
    float p0, p1;
    __device__ float operator()(float x) const { return unary_forward(op, x, p0, p1); }
};
struct UnaryBackward {
    int op;
    float p0, p1;
    __device__ float operator()(float g, float s) const { return unary_backward(op, g, s, p0, p1); }
};

__global__ void unary_kernel(int op, float *o, const float *in, dr_cuda_geom go, dr_cuda_geom gi,
                             float p0, float p1, int64_t n) {
    GRID_STRIDE(i, n) o[dr_cuda_offset(go, i)] = unary_forward(op, in[dr_cuda_offset(gi, i)], p0, p1);
}

__global__ void unary_backward_kernel(int op, float *o, const float *g, const float *sv,
                                      dr_cuda_geom go, dr_cuda_geom gg, dr_cuda_geom gs, float p0,
                                      float p1, int64_t n) {
    GRID_STRIDE(i, n) {
        float gv = g[dr_cuda_offset(gg, i)], s = sv[dr_cuda_offset(gs, i)];
        o[dr_cuda_offset(go, i)] = unary_backward(op, gv, s, p0, p1);
    }
}

/* "silu", "pow_backward", ... for error messages */
const char *unary_op_name(dr_unary_op op, bool backward, char *buf, size_t size) {
    snprintf(buf, size, "%s%s", dr_unary_name(op), backward ? "_backward" : "");
    return buf;
}

dr_status cuda_unary(dr_unary_op op, dr_tensor *out, const dr_tensor *in, double p0, double p1) {
    char name[48];
    unary_op_name(op, false, name, sizeof name);
    int64_t n = dr_tensor_numel(out);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(out, name);
    if (!s) return DR_ERR_DEVICE;
    const dr_tensor *ts[2] = {out, in};
    dr_cuda_geom g[2];
    collapse(2, ts, g);
    if (g[0].contiguous && g[1].contiguous)
        return launch_map1(dr_cuda_ptr<float>(out), dr_cuda_ptr<float>(in), n,
                           UnaryForward{(int)op, (float)p0, (float)p1}, s, name);
    unary_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        (int)op, (float *)dr_cuda_base(out), (const float *)dr_cuda_base(in), g[0], g[1],
        (float)p0, (float)p1, n);
    DR_CUDA_LAUNCHED(name);
    return DR_OK;
}

dr_status cuda_unary_backward(dr_unary_op op, dr_tensor *grad_in, const dr_tensor *grad_out,
                              const dr_tensor *saved, double p0, double p1) {
    char name[48];
    unary_op_name(op, true, name, sizeof name);
    int64_t n = dr_tensor_numel(grad_in);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(grad_in, name);
    if (!s) return DR_ERR_DEVICE;
    const dr_tensor *ts[3] = {grad_in, grad_out, saved};
    dr_cuda_geom g[3];
    collapse(3, ts, g);
    if (g[0].contiguous && g[1].contiguous && g[2].contiguous)
        return launch_map2(dr_cuda_ptr<float>(grad_in), dr_cuda_ptr<float>(grad_out),
                           dr_cuda_ptr<float>(saved), n,
                           UnaryBackward{(int)op, (float)p0, (float)p1}, s, name);
    unary_backward_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        (int)op, (float *)dr_cuda_base(grad_in), (const float *)dr_cuda_base(grad_out),
        (const float *)dr_cuda_base(saved), g[0], g[1], g[2], (float)p0, (float)p1, n);
    DR_CUDA_LAUNCHED(name);
    return DR_OK;
}

/* ---- where, masked_scale --------------------------------------------------------- */

/* Moves the element's bits, so any dtype of this size (and NaN payloads) passes. */
template <typename T>
__global__ void where_kernel(T *o, const uint8_t *c, const T *a, const T *b, dr_cuda_geom go,
                             dr_cuda_geom gc, dr_cuda_geom ga, dr_cuda_geom gb, int64_t n) {
    GRID_STRIDE(i, n) {
        bool take_a = c[dr_cuda_offset(gc, i)] != 0;
        o[dr_cuda_offset(go, i)] = take_a ? a[dr_cuda_offset(ga, i)] : b[dr_cuda_offset(gb, i)];
    }
}

template <typename T>
dr_status launch_where(dr_tensor *out, const dr_tensor *cond, const dr_tensor *a,
                       const dr_tensor *b, const dr_cuda_geom *g, int64_t n, cudaStream_t s) {
    where_kernel<T><<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        (T *)dr_cuda_base(out), (const uint8_t *)dr_cuda_base(cond), (const T *)dr_cuda_base(a),
        (const T *)dr_cuda_base(b), g[0], g[1], g[2], g[3], n);
    DR_CUDA_LAUNCHED("where");
    return DR_OK;
}

dr_status cuda_where(dr_tensor *out, const dr_tensor *cond, const dr_tensor *a,
                     const dr_tensor *b) {
    int64_t n = dr_tensor_numel(out);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(out, "where");
    if (!s) return DR_ERR_DEVICE;
    const dr_tensor *ts[4] = {out, cond, a, b};
    dr_cuda_geom g[4];
    collapse(4, ts, g);
    switch (dr_dtype_size(out->scalar_type)) {
    case 1: return launch_where<uint8_t>(out, cond, a, b, g, n, s);
    case 2: return launch_where<uint16_t>(out, cond, a, b, g, n, s);
    case 4: return launch_where<uint32_t>(out, cond, a, b, g, n, s);
    default: return launch_where<uint64_t>(out, cond, a, b, g, n, s);
    }
}

/* out = in * (mask ? scale : 0) in float, rounded once to the dtype; a dropped
 * inf or NaN gives NaN (0 * inf), as on the CPU. */
__global__ void masked_scale_kernel(char *o, const char *x, const uint8_t *m, int32_t dt,
                                    dr_cuda_geom go, dr_cuda_geom gx, dr_cuda_geom gm, float scale,
                                    int64_t n) {
    GRID_STRIDE(i, n) {
        float v = load_float(x, dt, dr_cuda_offset(gx, i));
        float k = m[dr_cuda_offset(gm, i)] ? scale : 0.0f;
        store_float(o, dt, dr_cuda_offset(go, i), __fmul_rn(v, k));
    }
}

dr_status cuda_masked_scale(dr_tensor *out, const dr_tensor *in, const dr_tensor *mask,
                            double scale) {
    int64_t n = dr_tensor_numel(out);
    if (n == 0) return DR_OK;
    cudaStream_t s = dr_cuda_stream_of(out, "dropout");
    if (!s) return DR_ERR_DEVICE;
    const dr_tensor *ts[3] = {out, in, mask};
    dr_cuda_geom g[3];
    collapse(3, ts, g);
    masked_scale_kernel<<<dr_cuda_blocks(n, THREADS), THREADS, 0, s>>>(
        dr_cuda_base(out), dr_cuda_base(in), (const uint8_t *)dr_cuda_base(mask), out->scalar_type,
        g[0], g[1], g[2], (float)scale, n);
    DR_CUDA_LAUNCHED("dropout");
    return DR_OK;
}

} // namespace

extern "C" void dr_cuda_register_elementwise(dr_backend *b) {
    b->copy = cuda_copy;
    b->fill = cuda_fill;
    b->binary = cuda_binary;
    b->unary = cuda_unary;
    b->unary_backward = cuda_unary_backward;
    b->where = cuda_where;
    b->masked_scale = cuda_masked_scale;
    b->random = dr_cuda_random;
    b->randint = dr_cuda_randint;
    b->dropout_mask = dr_cuda_dropout_mask;
    b->fill_range = dr_cuda_fill_range;
    b->adamw = dr_cuda_adamw;
    b->sgd = dr_cuda_sgd;
    b->lerp = dr_cuda_lerp;
    b->scale = dr_cuda_scale;
    b->sum_squares = dr_cuda_sum_squares;
}
