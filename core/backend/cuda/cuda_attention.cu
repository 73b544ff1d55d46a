/* Scaled dot product attention on CUDA, float32: FlashAttention-2 (Dao 2023) on
 * f32 FMA (no tensor cores, no TF32). The [Lq, Lk] scores never leave a block's
 * shared memory; the only scratch is D = rowsum(dO * O), one float per query row.
 *
 * Forward, one block per (batch, query tile Q_i), key tiles K_j, V_j streamed
 * through shared memory with the online softmax (the CPU's recurrence):
 *   S = (scale Q_i) K_j^T (+ mask);  m' = max(m, rowmax S);  P = exp(S - m')
 *   l = l e^(m - m') + rowsum P;     O = O e^(m - m') + P V_j
 * then O /= l and L = m + log l (natural log of the scaled, masked scores'
 * sum of exponentials). A row that attends no key (l = 0) gives O = 0 and
 * L = -inf; NaN scores stay NaN (the max keeps NaN), as on the CPU.
 * Backward, with P = exp(S - L) recomputed from q, k and L (shift +inf for L =
 * -inf, so such rows give P = 0 and zero gradients):
 *   dP = dO V^T,  dS = P (dP - D),  dV = P^T dO,  dK = scale dS^T Q,  dQ = scale dS K.
 * One kernel per (batch, key tile) sweeps the query tiles in order and keeps its
 * rows of dK and dV in registers; one per (batch, query tile) sweeps the key
 * tiles for its rows of dQ. Every sum runs in a fixed order inside one thread or
 * one fixed shuffle tree: no atomics, the same bits on every run.
 *
 * exp2 domain: the scores are computed as log2(e) S (log2(e) rides in the
 * scale of the resident operand, a float mask is multiplied by it), so every
 * exponential is one exp2f (ex2 plus its denormal fix-up) instead of expf's
 * range reduction; L is stored as ln 2 (m2 + log2 l). The extra rounding is a
 * few ulps of S, far inside the CPU parity tolerances.
 *
 * Tiling: 256 threads as a 32 x 8 grid (ty = tid / 8, tx = tid % 8). A thread
 * owns rows ty + 32 i of its block's row operand (query rows in the forward
 * and dQ kernels, key rows in the dK/dV kernel) for everything: the score
 * micro-tile (columns tx + 8 j), the softmax statistics and the accumulators
 * (columns 4 tx + 32 g + x). The 8 threads of a row are one eighth of a warp,
 * so row max and row sum are 3-step xor shuffles, and the P (or dS) tile a
 * thread needs for its accumulator update was written by its own warp: it goes
 * through shared memory with a __syncwarp, not a block barrier. Operands are
 * row-major tiles read as float4 along the head dim; row strides are an odd
 * number of float4s, so the 8 rows an eighth warp reads hit distinct banks; the
 * P tile's row stride is 8 mod 32 floats (4 rows x 8 columns written per warp
 * instruction hit 32 banks). Per 4 steps of a reduction a thread issues
 * MI + NJ (scores) or MI + 4 CG (accumulators) 16-byte loads for 4 MI NJ or
 * 16 MI CG FMAs. Global tiles are loaded as float4 when q/k/v/dO are 16-byte
 * aligned with row and batch strides a multiple of 4 (scalar otherwise). Head
 * dims are padded to 64, 128 or 256 for the register arrays only; loops run to
 * round4(E) and round4(Ev). Tiles that need masking (a mask, the causal
 * diagonal, padding keys) stage an additive bias in the P tile first (see
 * stage_mask); interior tiles skip it. The reduction loops are not unrolled
 * (each step is already 64 to 128 FMAs): unrolling by 2 spilled at 128
 * registers, the budget for 2 blocks per SM. */
#include <cmath>
#include <cstring>

#include "cuda_internal.cuh"

#define OP_FWD "scaled_dot_product_attention"
#define OP_BWD "scaled_dot_product_attention_backward"

namespace {

constexpr int NT = 256, TX = 8, TY = NT / TX;
constexpr unsigned FULL = 0xffffffffu;
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

/* q, k, v, grad_out or out: batch strides over the shared batch dims, row stride;
 * the last dim has stride 1 (ops/attention.c sees to it). vec: float4 loads are
 * legal (16-byte aligned base, row and batch strides multiples of 4). */
struct operand {
    const float *p;
    int64_t ld;
    int64_t bs[DR_MAX_DIMS];
    int vec;
};

/* The expanded mask [batch..., Lq, Lk]: bool (0 = masked) or float32 (added). */
struct mask_arg {
    const void *p;
    int is_bool;
    int64_t rs, cs;
    int64_t bs[DR_MAX_DIMS];
};

struct args {
    int32_t nb;
    int64_t bsz[DR_MAX_DIMS];
    int64_t batch, lq, lk;
    int e, ev, e4, ev4; /* head dims and their round-up to 4 */
    int qs, vs;         /* shared row strides of the E and Ev tiles */
    float scale;
    int causal;
    operand q, k, v, go, o;
    mask_arg m;
    float *out, *lse;                 /* forward: contiguous */
    const float *lse_in;              /* backward: contiguous [batch, Lq] */
    float *dsum, *dq, *dk, *dv;       /* contiguous; a NULL gradient is skipped */
    int out_vec, dq_vec, dk_vec, dv_vec; /* float4 stores are legal */
};

/* Tile sizes per padded head dim D (rows of the resident tile x rows of the
 * streamed one). The forward keeps Q_i (FQ rows) and streams K, V (FK); the
 * dK/dV kernel keeps a key tile (KK) and streams query tiles (KQ); the dQ kernel
 * keeps a query tile (QQ) and streams key tiles (QK). Resident tiles are a
 * multiple of 32 rows (MI = rows / 32 per thread), streamed ones of 8 (NJ =
 * rows / 8 score columns per thread). Every kernel's shared memory fits 163 KiB
 * (A100) at E = Ev = D. FB, KB, QB: blocks per SM the register budget aims at
 * (2: 128 registers; at D = 64 two blocks' shared memory fit an H100/H200 SM). */
template <int D> struct tiles;
template <> struct tiles<64> {
    enum { FQ = 128, FK = 64, KK = 64, KQ = 64, QQ = 64, QK = 64, FB = 2, KB = 2, QB = 2 };
};
template <> struct tiles<128> {
    enum { FQ = 128, FK = 32, KK = 64, KQ = 32, QQ = 64, QK = 32, FB = 1, KB = 1, QB = 2 };
};
template <> struct tiles<256> {
    enum { FQ = 64, FK = 32, KK = 32, KQ = 32, QQ = 32, QK = 32, FB = 1, KB = 1, QB = 1 };
};

/* ---- device helpers ------------------------------------------------------------ */

__device__ __forceinline__ int64_t batch_off(const args &a, const int64_t *bs, int64_t b) {
    int64_t off = 0;
    for (int d = a.nb - 1; d >= 0; d--) {
        off += (b % a.bsz[d]) * bs[d];
        b /= a.bsz[d];
    }
    return off;
}

/* max that keeps NaN, so a NaN score is not taken for "masked" (the CPU's max_nan). */
__device__ __forceinline__ float max_nan(float x, float y) { return (y > x) | (y != y) ? y : x; }

/* s[0 .. BR) x [0 .. c4) (row stride ls) = mult g[r][c] for r < n, c < cols, else
 * 0: zero rows and columns keep the padded products finite. D / 4 threads share
 * a row (one float4 each, so no index division), NT / (D / 4) rows per pass; all
 * of a thread's global loads are issued before its shared stores. */
template <int BR, int D>
__device__ __forceinline__ void load_tile(float *s, int ls, const float *g, int64_t ld, int n,
                                          int cols, int c4, float mult, bool vec) {
    constexpr int TPR = D / 4, RSTEP = NT / TPR;
    static_assert(BR % RSTEP == 0, "tile rows cover whole passes");
    const int c = (threadIdx.x % TPR) * 4, r0 = threadIdx.x / TPR;
    if (c >= c4) return;
    float4 t[BR / RSTEP];
#pragma unroll
    for (int p = 0; p < BR / RSTEP; p++) {
        const int r = r0 + p * RSTEP;
        t[p] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < n) {
            const float *src = g + r * ld + c;
            if (vec && c + 4 <= cols) {
                t[p] = *reinterpret_cast<const float4 *>(src);
            } else {
                if (c < cols) t[p].x = src[0];
                if (c + 1 < cols) t[p].y = src[1];
                if (c + 2 < cols) t[p].z = src[2];
                if (c + 3 < cols) t[p].w = src[3];
            }
        }
    }
#pragma unroll
    for (int p = 0; p < BR / RSTEP; p++) {
        const float4 v = t[p];
        *reinterpret_cast<float4 *>(s + (r0 + p * RSTEP) * ls + c) =
            make_float4(mult * v.x, mult * v.y, mult * v.z, mult * v.w);
    }
}

/* acc[i][j] = sum over d < n4 of a[(ty + 32 i) la + d] b[(tx + 8 j) lb + d],
 * d in increasing order (one fma chain per element, like the CPU's tile_mm). */
template <int MI, int NJ>
__device__ __forceinline__ void score_block(float (&acc)[MI][NJ], const float *a, int la,
                                            const float *b, int lb, int n4, int ty, int tx) {
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] = 0.0f;
    const float *ap = a + ty * la, *bp = b + tx * lb;
#pragma unroll 1
    for (int d = 0; d < n4; d += 4) {
        float4 av[MI];
#pragma unroll
        for (int i = 0; i < MI; i++)
            av[i] = *reinterpret_cast<const float4 *>(ap + TY * i * la + d);
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            const float4 bv = *reinterpret_cast<const float4 *>(bp + TX * j * lb + d);
#pragma unroll
            for (int i = 0; i < MI; i++) {
                float s = acc[i][j];
                s = fmaf(av[i].x, bv.x, s);
                s = fmaf(av[i].y, bv.y, s);
                s = fmaf(av[i].z, bv.z, s);
                acc[i][j] = fmaf(av[i].w, bv.w, s);
            }
        }
    }
}

/* The additive mask of a score tile, staged in the shared P tile before the
 * block barrier that publishes K and V (so the per-score work reads one float
 * instead of holding mask addresses in registers): for query i0 + qi (qi < nq)
 * and key k0 + kj (kj < nk), -inf where a bool mask is false or the causal rule
 * (top-left: key > query) masks, log2(e) mask for a float mask, else 0;
 * -inf for padding. The key index runs fastest across the threads (a
 * contiguous mask row reads coalesced). KEY_ROWS: the tile is [key][query]. */
template <int NQ, int NK, bool KEY_ROWS>
__device__ __forceinline__ void stage_mask(const args &a, float *dst, int ps, int64_t moff,
                                           int64_t i0, int nq, int64_t k0, int nk) {
    for (int idx = threadIdx.x; idx < NQ * NK; idx += NT) {
        const int qi = idx / NK, kj = idx % NK;
        float bias = -INFINITY;
        if (qi < nq && kj < nk && !(a.causal && k0 + kj > i0 + qi)) {
            bias = 0.0f;
            if (a.m.p) {
                const int64_t at = moff + (i0 + qi) * a.m.rs + (k0 + kj) * a.m.cs;
                if (a.m.is_bool) {
                    if (!static_cast<const uint8_t *>(a.m.p)[at]) bias = -INFINITY;
                } else {
                    bias = static_cast<const float *>(a.m.p)[at] * LOG2E;
                }
            }
        }
        dst[KEY_ROWS ? kj * ps + qi : qi * ps + kj] = bias;
    }
}

/* s[i][j] with the staged bias at the thread's own positions (rows ty + 32 i,
 * columns tx + 8 j of the tile at w): a -inf bias masks (even a NaN score, as
 * the CPU's masking does), any other is added. */
template <int MI, int NJ>
__device__ __forceinline__ void apply_mask(float (&s)[MI][NJ], const float *w, int lw) {
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            const float bias = w[TY * i * lw + TX * j];
            s[i][j] = bias == -INFINITY ? -INFINITY : s[i][j] + bias;
        }
}

/* acc[i][g][.] += sum over the BK columns c of w[(ty + 32 i) lw + c] r[c lr +
 * 4 tx + 32 g + .], c in increasing order: the sequence products (P V, P^T dO,
 * dS^T Q, dS K), w the warp's own P or dS rows, r the value-side tile. Columns
 * at or past n4 are skipped (they are never stored). */
template <int MI, int CG, int BK>
__device__ __forceinline__ void acc_update(float (&acc)[MI][CG][4], const float *w, int lw,
                                           const float *r, int lr, int n4, int ty, int tx) {
    const float *wp = w + ty * lw;
#pragma unroll 1
    for (int c = 0; c < BK; c += 4) {
        float4 pv[MI];
#pragma unroll
        for (int i = 0; i < MI; i++) pv[i] = *reinterpret_cast<const float4 *>(wp + TY * i * lw + c);
#pragma unroll
        for (int g = 0; g < CG; g++) {
            const int col = 32 * g + 4 * tx;
            if (col < n4) {
                const float *rp = r + c * lr + col;
                const float4 v0 = *reinterpret_cast<const float4 *>(rp);
                const float4 v1 = *reinterpret_cast<const float4 *>(rp + lr);
                const float4 v2 = *reinterpret_cast<const float4 *>(rp + 2 * lr);
                const float4 v3 = *reinterpret_cast<const float4 *>(rp + 3 * lr);
#pragma unroll
                for (int i = 0; i < MI; i++) {
                    float *o = acc[i][g];
                    o[0] = fmaf(pv[i].w, v3.x, fmaf(pv[i].z, v2.x, fmaf(pv[i].y, v1.x, fmaf(pv[i].x, v0.x, o[0]))));
                    o[1] = fmaf(pv[i].w, v3.y, fmaf(pv[i].z, v2.y, fmaf(pv[i].y, v1.y, fmaf(pv[i].x, v0.y, o[1]))));
                    o[2] = fmaf(pv[i].w, v3.z, fmaf(pv[i].z, v2.z, fmaf(pv[i].y, v1.z, fmaf(pv[i].x, v0.z, o[2]))));
                    o[3] = fmaf(pv[i].w, v3.w, fmaf(pv[i].z, v2.w, fmaf(pv[i].y, v1.w, fmaf(pv[i].x, v0.w, o[3]))));
                }
            }
        }
    }
}

/* dst row (contiguous, n columns) = mult acc[g][.] for this thread's columns. */
template <int CG>
__device__ __forceinline__ void store_row(float *dst, const float (&acc)[CG][4], int n, float mult,
                                          bool vec, int tx) {
#pragma unroll
    for (int g = 0; g < CG; g++) {
        const int col = 32 * g + 4 * tx;
        if (vec && col + 4 <= n) {
            *reinterpret_cast<float4 *>(dst + col) = make_float4(
                mult * acc[g][0], mult * acc[g][1], mult * acc[g][2], mult * acc[g][3]);
        } else {
#pragma unroll
            for (int x = 0; x < 4; x++)
                if (col + x < n) dst[col + x] = mult * acc[g][x];
        }
    }
}

template <int MI, int CG> __device__ __forceinline__ void zero(float (&acc)[MI][CG][4]) {
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int g = 0; g < CG; g++)
#pragma unroll
            for (int x = 0; x < 4; x++) acc[i][g][x] = 0.0f;
}

/* ---- forward ---------------------------------------------------------------------- */

template <int D, int BQ, int BK>
__global__ void __launch_bounds__(NT, tiles<D>::FB) fwd_kernel(const args a) {
    constexpr int MI = BQ / TY, NJ = BK / TX, CG = D / (4 * TX), PS = BK + TX;
    extern __shared__ float4 smem4[];
    float *qs = reinterpret_cast<float *>(smem4);
    float *ks = qs + BQ * a.qs, *vs = ks + BK * a.qs, *ps = vs + BK * a.vs; /* ps: P, by row */
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    const int64_t nqt = (a.lq + BQ - 1) / BQ, b = blockIdx.x / nqt, i0 = blockIdx.x % nqt * BQ;
    const int rows = (int)min((int64_t)BQ, a.lq - i0);
    const float *kg = a.k.p + batch_off(a, a.k.bs, b), *vg = a.v.p + batch_off(a, a.v.bs, b);
    const int64_t moff = a.m.p ? batch_off(a, a.m.bs, b) : 0;
    /* the scale (and log2 e) rides in Q, as the CPU packs the scale */
    load_tile<BQ, D>(qs, a.qs, a.q.p + batch_off(a, a.q.bs, b) + i0 * a.q.ld, a.q.ld, rows, a.e,
                     a.e4, a.scale * LOG2E, a.q.vec);

    float m[MI], l[MI], o[MI][CG][4];
#pragma unroll
    for (int i = 0; i < MI; i++) m[i] = -INFINITY, l[i] = 0.0f;
    zero(o);
    /* causal: no query of this tile sees a key at or past i0 + rows */
    const int64_t kend = a.causal ? min(a.lk, i0 + rows) : a.lk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        const int kn = (int)min((int64_t)BK, kend - k0);
        /* a tile-uniform test: interior tiles without a mask skip the per-score
         * work; padding keys (zero rows of K) must not enter the softmax */
        const bool need = a.m.p || kn < BK || (a.causal && k0 + kn - 1 > i0);
        __syncthreads(); /* every warp is done with the previous ks, vs, ps (Q is loaded) */
        load_tile<BK, D>(ks, a.qs, kg + k0 * a.k.ld, a.k.ld, kn, a.e, a.e4, 1.0f, a.k.vec);
        load_tile<BK, D>(vs, a.vs, vg + k0 * a.v.ld, a.v.ld, kn, a.ev, a.ev4, 1.0f, a.v.vec);
        if (need) stage_mask<BQ, BK, false>(a, ps, PS, moff, i0, rows, k0, kn);
        __syncthreads();
        float s[MI][NJ];
        score_block<MI, NJ>(s, qs, a.qs, ks, a.qs, a.e4, ty, tx);
        if (need) apply_mask<MI, NJ>(s, ps + ty * PS + tx, PS);
#pragma unroll
        for (int i = 0; i < MI; i++) {
            float tmax = s[i][0];
#pragma unroll
            for (int j = 1; j < NJ; j++) tmax = max_nan(tmax, s[i][j]);
#pragma unroll
            for (int off = 1; off < TX; off <<= 1)
                tmax = max_nan(tmax, __shfl_xor_sync(FULL, tmax, off));
            const float mnew = max_nan(m[i], tmax);
            /* nothing attended yet: exp2(-inf - 0) = 0 keeps P, l and O at 0 */
            const float shift = mnew == -INFINITY ? 0.0f : mnew;
            const float corr = mnew == -INFINITY ? 1.0f : exp2f(m[i] - mnew);
            float sum = 0.0f;
            float *prow = ps + (ty + TY * i) * PS + tx;
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const float p = exp2f(s[i][j] - shift);
                prow[TX * j] = p;
                sum += p;
            }
            /* xor butterfly: every lane of the row adds the same pairs, same bits */
#pragma unroll
            for (int off = 1; off < TX; off <<= 1) sum += __shfl_xor_sync(FULL, sum, off);
            l[i] = l[i] * corr + sum;
            m[i] = mnew;
#pragma unroll
            for (int g = 0; g < CG; g++)
#pragma unroll
                for (int x = 0; x < 4; x++) o[i][g][x] *= corr;
        }
        __syncwarp(); /* the warp's P rows are written */
        /* O += P V; past kn, P = 0 and V's rows are zero */
        acc_update<MI, CG, BK>(o, ps, PS, vs, a.vs, a.ev4, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < MI; i++) {
        const int qi = ty + TY * i;
        if (qi >= rows) continue;
        const int64_t row = b * a.lq + i0 + qi;
        if (tx == 0) a.lse[row] = l[i] == 0.0f ? -INFINITY : (m[i] + log2f(l[i])) * LN2;
        /* the row attends no key: zeros (torch >= 2.5), not 0/0 */
        store_row<CG>(a.out + row * a.ev, o[i], a.ev, l[i] == 0.0f ? 0.0f : 1.0f / l[i],
                      a.out_vec, tx);
    }
}

/* ---- backward ---------------------------------------------------------------------- */

/* D[row] = sum_e dO[row][e] O[row][e], one warp per query row. */
__global__ void __launch_bounds__(NT) dsum_kernel(const args a) {
    const int64_t row = (int64_t)blockIdx.x * (NT / 32) + threadIdx.x / 32;
    if (row >= a.batch * a.lq) return;
    const int lane = threadIdx.x & 31;
    const int64_t b = row / a.lq, i = row % a.lq;
    const float *g = a.go.p + batch_off(a, a.go.bs, b) + i * a.go.ld;
    const float *y = a.o.p + batch_off(a, a.o.bs, b) + i * a.o.ld;
    float acc = 0.0f;
    for (int c = lane; c < a.ev; c += 32) acc = fmaf(g[c], y[c], acc);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(FULL, acc, off);
    if (lane == 0) a.dsum[row] = acc;
}

/* exp2() shift of query row `row` (< n valid): log2(e) L, +inf for a row that
 * attends nothing and for padding rows (P = 0 either way). */
__device__ __forceinline__ float lse_shift(const args &a, int64_t b, int64_t i0, int r, int n) {
    if (r >= n) return INFINITY;
    const float l = a.lse_in[b * a.lq + i0 + r];
    return l == -INFINITY ? INFINITY : l * LOG2E;
}

/* One (batch, key tile): rows k0 .. k0 + kn of dK and dV over all query tiles.
 * The transposed view: a thread's rows are keys, its score columns queries. */
template <int D, int BQ, int BK>
__global__ void __launch_bounds__(NT, tiles<D>::KB) dkv_kernel(const args a) {
    constexpr int MI = BK / TY, NJ = BQ / TX, CG = D / (4 * TX), PS = BQ + TX;
    extern __shared__ float4 smem4[];
    float *k_s = reinterpret_cast<float *>(smem4);
    float *v_s = k_s + BK * a.qs, *q_s = v_s + BK * a.vs, *g_s = q_s + BQ * a.qs;
    float *p_s = g_s + BQ * a.vs, *lse_s = p_s + BK * PS, *d_s = lse_s + BQ;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    const int64_t nkt = (a.lk + BK - 1) / BK, b = blockIdx.x / nkt, k0 = blockIdx.x % nkt * BK;
    const int kn = (int)min((int64_t)BK, a.lk - k0);
    const bool want_dk = a.dk != nullptr, want_dv = a.dv != nullptr;
    const int64_t moff = a.m.p ? batch_off(a, a.m.bs, b) : 0;
    const float *qg = a.q.p + batch_off(a, a.q.bs, b), *gg = a.go.p + batch_off(a, a.go.bs, b);
    /* the scale (and log2 e) rides in K: S^T = (scale K) Q^T; dK is scaled at the end */
    load_tile<BK, D>(k_s, a.qs, a.k.p + batch_off(a, a.k.bs, b) + k0 * a.k.ld, a.k.ld, kn, a.e,
                     a.e4, a.scale * LOG2E, a.k.vec);
    load_tile<BK, D>(v_s, a.vs, a.v.p + batch_off(a, a.v.bs, b) + k0 * a.v.ld, a.v.ld, kn, a.ev,
                     a.ev4, 1.0f, a.v.vec);
    float dk[MI][CG][4], dv[MI][CG][4];
    zero(dk);
    zero(dv);
    /* causal: queries before k0 see none of these keys */
    for (int64_t i0 = a.causal ? k0 / BQ * BQ : 0; i0 < a.lq; i0 += BQ) {
        const int n = (int)min((int64_t)BQ, a.lq - i0);
        if (a.causal && i0 + n <= k0) break;
        __syncthreads(); /* the previous tile is done with q_s .. d_s and p_s */
        load_tile<BQ, D>(q_s, a.qs, qg + i0 * a.q.ld, a.q.ld, n, a.e, a.e4, 1.0f, a.q.vec);
        load_tile<BQ, D>(g_s, a.vs, gg + i0 * a.go.ld, a.go.ld, n, a.ev, a.ev4, 1.0f, a.go.vec);
        for (int r = threadIdx.x; r < BQ; r += NT) {
            lse_s[r] = lse_shift(a, b, i0, r, n);
            d_s[r] = r < n && a.dsum ? a.dsum[b * a.lq + i0 + r] : 0.0f;
        }
        /* padding queries have shift +inf (P = 0); padding keys only reach their
         * own (unstored) rows, so only the mask and the diagonal need the test */
        const bool need = a.m.p || (a.causal && k0 + kn - 1 > i0);
        if (need) stage_mask<BQ, BK, true>(a, p_s, PS, moff, i0, n, k0, kn);
        __syncthreads();
        float s[MI][NJ], dp[MI][NJ];
        score_block<MI, NJ>(s, k_s, a.qs, q_s, a.qs, a.e4, ty, tx);
        if (want_dk) score_block<MI, NJ>(dp, v_s, a.vs, g_s, a.vs, a.ev4, ty, tx);
        if (need) apply_mask<MI, NJ>(s, p_s + ty * PS + tx, PS);
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const int qc = tx + TX * j;
                const float p = exp2f(s[i][j] - lse_s[qc]);
                s[i][j] = p;
                if (want_dk) dp[i][j] = p * (dp[i][j] - d_s[qc]);
            }
        /* dV += P^T dO, then dK += dS^T Q, the query rows in increasing order;
         * the warp's own rows of P^T, then dS^T, go through p_s */
        if (want_dv) {
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NJ; j++) p_s[(ty + TY * i) * PS + tx + TX * j] = s[i][j];
            __syncwarp();
            acc_update<MI, CG, BQ>(dv, p_s, PS, g_s, a.vs, a.ev4, ty, tx);
        }
        if (want_dk) {
            __syncwarp(); /* the warp is done reading P^T */
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NJ; j++) p_s[(ty + TY * i) * PS + tx + TX * j] = dp[i][j];
            __syncwarp();
            acc_update<MI, CG, BQ>(dk, p_s, PS, q_s, a.qs, a.e4, ty, tx);
        }
    }
#pragma unroll
    for (int i = 0; i < MI; i++) {
        const int kr = ty + TY * i;
        if (kr >= kn) continue;
        const int64_t row = b * a.lk + k0 + kr;
        if (want_dk) store_row<CG>(a.dk + row * a.e, dk[i], a.e, a.scale, a.dk_vec, tx);
        if (want_dv) store_row<CG>(a.dv + row * a.ev, dv[i], a.ev, 1.0f, a.dv_vec, tx);
    }
}

/* One (batch, query tile): rows i0 .. i0 + n of dQ over the key tiles in order. */
template <int D, int BQ, int BK>
__global__ void __launch_bounds__(NT, tiles<D>::QB) dq_kernel(const args a) {
    constexpr int MI = BQ / TY, NJ = BK / TX, CG = D / (4 * TX), PS = BK + TX;
    extern __shared__ float4 smem4[];
    float *q_s = reinterpret_cast<float *>(smem4);
    float *g_s = q_s + BQ * a.qs, *k_s = g_s + BQ * a.vs, *v_s = k_s + BK * a.qs;
    float *p_s = v_s + BK * a.vs; /* dS, by row */
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;
    const int64_t nqt = (a.lq + BQ - 1) / BQ, b = blockIdx.x / nqt, i0 = blockIdx.x % nqt * BQ;
    const int n = (int)min((int64_t)BQ, a.lq - i0);
    const float *kg = a.k.p + batch_off(a, a.k.bs, b), *vg = a.v.p + batch_off(a, a.v.bs, b);
    const int64_t moff = a.m.p ? batch_off(a, a.m.bs, b) : 0;
    /* the scale (and log2 e) rides in Q for S; dQ = scale dS K takes K as it is */
    load_tile<BQ, D>(q_s, a.qs, a.q.p + batch_off(a, a.q.bs, b) + i0 * a.q.ld, a.q.ld, n, a.e,
                     a.e4, a.scale * LOG2E, a.q.vec);
    load_tile<BQ, D>(g_s, a.vs, a.go.p + batch_off(a, a.go.bs, b) + i0 * a.go.ld, a.go.ld, n,
                     a.ev, a.ev4, 1.0f, a.go.vec);
    float shift[MI], dd[MI], dq[MI][CG][4];
#pragma unroll
    for (int i = 0; i < MI; i++) {
        const int qi = ty + TY * i;
        shift[i] = lse_shift(a, b, i0, qi, n);
        dd[i] = qi < n ? a.dsum[b * a.lq + i0 + qi] : 0.0f;
    }
    zero(dq);
    const int64_t kend = a.causal ? min(a.lk, i0 + n) : a.lk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        const int kn = (int)min((int64_t)BK, kend - k0);
        /* padding keys must give P = 0 here: exp2(0 - shift) may overflow */
        const bool need = a.m.p || kn < BK || (a.causal && k0 + kn - 1 > i0);
        __syncthreads(); /* the previous tile is done with k_s, v_s, p_s (Q, dO are loaded) */
        load_tile<BK, D>(k_s, a.qs, kg + k0 * a.k.ld, a.k.ld, kn, a.e, a.e4, 1.0f, a.k.vec);
        load_tile<BK, D>(v_s, a.vs, vg + k0 * a.v.ld, a.v.ld, kn, a.ev, a.ev4, 1.0f, a.v.vec);
        if (need) stage_mask<BQ, BK, false>(a, p_s, PS, moff, i0, n, k0, kn);
        __syncthreads();
        float s[MI][NJ], dp[MI][NJ];
        score_block<MI, NJ>(s, q_s, a.qs, k_s, a.qs, a.e4, ty, tx);
        score_block<MI, NJ>(dp, g_s, a.vs, v_s, a.vs, a.ev4, ty, tx);
        float *prow = p_s + ty * PS + tx;
        if (need) apply_mask<MI, NJ>(s, prow, PS);
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const float p = exp2f(s[i][j] - shift[i]);
                prow[TY * i * PS + TX * j] = p * (dp[i][j] - dd[i]); /* dS */
            }
        __syncwarp(); /* the warp's dS rows are written */
        acc_update<MI, CG, BK>(dq, p_s, PS, k_s, a.qs, a.e4, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < MI; i++) {
        const int qi = ty + TY * i;
        if (qi < n)
            store_row<CG>(a.dq + (b * a.lq + i0 + qi) * a.e, dq[i], a.e, a.scale, a.dq_vec, tx);
    }
}

/* ---- host side ------------------------------------------------------------------- */

int round4(int64_t n) { return (int)((n + 3) / 4 * 4); }
/* a row stride of an odd number of float4s */
int odd_quads(int n4) { return n4 / 4 % 2 ? n4 : n4 + 4; }

bool aligned16(const void *p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void set_operand(operand &o, const dr_tensor *t, int32_t nb) {
    o.p = t ? dr_cuda_ptr<float>(t) : nullptr;
    o.ld = t ? t->strides[t->ndim - 2] : 0;
    o.vec = o.p && aligned16(o.p) && o.ld % 4 == 0;
    for (int32_t d = 0; d < DR_MAX_DIMS; d++) {
        o.bs[d] = t && d < nb ? t->strides[d] : 0;
        if (o.bs[d] % 4) o.vec = 0;
    }
}

args make_args(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v, const dr_tensor *mask,
               int causal, double scale) {
    args a;
    memset(&a, 0, sizeof a);
    const int32_t nd = q->ndim;
    a.nb = nd - 2;
    a.batch = 1;
    for (int32_t d = 0; d < DR_MAX_DIMS; d++) a.bsz[d] = d < a.nb ? q->sizes[d] : 1;
    for (int32_t d = 0; d < a.nb; d++) a.batch *= q->sizes[d];
    a.lq = q->sizes[nd - 2];
    a.lk = k->sizes[nd - 2];
    a.e = (int)q->sizes[nd - 1];
    a.ev = (int)v->sizes[nd - 1];
    a.e4 = round4(a.e);
    a.ev4 = round4(a.ev);
    a.qs = odd_quads(a.e4);
    a.vs = odd_quads(a.ev4);
    a.scale = (float)scale;
    a.causal = causal != 0;
    set_operand(a.q, q, a.nb);
    set_operand(a.k, k, a.nb);
    set_operand(a.v, v, a.nb);
    if (mask) {
        a.m.is_bool = mask->scalar_type == DR_BOOL;
        a.m.p = a.m.is_bool ? (const void *)dr_cuda_ptr<uint8_t>(mask)
                            : (const void *)dr_cuda_ptr<float>(mask);
        a.m.rs = mask->strides[mask->ndim - 2];
        a.m.cs = mask->strides[mask->ndim - 1];
        for (int32_t d = 0; d < a.nb; d++) a.m.bs[d] = mask->strides[d];
    }
    return a;
}

/* Launches kernel on grid blocks with smem bytes of shared memory, after checking
 * that this GPU has them. */
template <typename Kernel>
dr_status launch(Kernel kernel, int64_t grid, size_t smem, cudaStream_t stream, const args &a,
                 const char *op, const char *what) {
    if (grid == 0) return DR_OK;
    if (grid > 0x7fffffffLL)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: %lld %s blocks exceed the CUDA grid limit", op,
                       (long long)grid, what);
    int dev = 0, optin = 0;
    DR_CUDA_TRY(cudaGetDevice(&dev), op);
    DR_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), op);
    if (smem > (size_t)optin)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: head dims E = %d, Ev = %d need %zu bytes of "
                       "shared memory per block in the %s kernel; this GPU allows %d", op, a.e,
                       a.ev, smem, what, optin);
    if (smem > 48 * 1024)
        DR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem), op);
    kernel<<<(unsigned)grid, NT, smem, stream>>>(a);
    DR_CUDA_LAUNCHED(op);
    return DR_OK;
}

size_t floats(int64_t n) { return (size_t)n * sizeof(float); }

template <int D> dr_status run_forward(const args &a, cudaStream_t stream) {
    constexpr int BQ = tiles<D>::FQ, BK = tiles<D>::FK;
    const size_t smem = floats((int64_t)(BQ + BK) * a.qs + BK * a.vs + BQ * (BK + TX));
    return launch(fwd_kernel<D, BQ, BK>, a.batch * ((a.lq + BQ - 1) / BQ), smem, stream, a, OP_FWD,
                  "forward");
}

template <int D> dr_status run_backward(const args &a, cudaStream_t stream) {
    if (a.dk || a.dv) {
        constexpr int BQ = tiles<D>::KQ, BK = tiles<D>::KK;
        const size_t smem =
            floats((int64_t)(BQ + BK) * (a.qs + a.vs) + BK * (BQ + TX) + 2 * BQ);
        DR_TRY(launch(dkv_kernel<D, BQ, BK>, a.batch * ((a.lk + BK - 1) / BK), smem, stream, a,
                      OP_BWD, "dK/dV"));
    }
    if (a.dq) {
        constexpr int BQ = tiles<D>::QQ, BK = tiles<D>::QK;
        const size_t smem = floats((int64_t)(BQ + BK) * (a.qs + a.vs) + BQ * (BK + TX));
        DR_TRY(launch(dq_kernel<D, BQ, BK>, a.batch * ((a.lq + BQ - 1) / BQ), smem, stream, a,
                      OP_BWD, "dQ"));
    }
    return DR_OK;
}

/* The register arrays' head dim: E and Ev padded to 64, 128 or 256; 0 if above. */
int padded_head_dim(const args &a) {
    const int need = a.e4 > a.ev4 ? a.e4 : a.ev4;
    return need <= 64 ? 64 : need <= 128 ? 128 : need <= 256 ? 256 : 0;
}

dr_status unsupported_head_dim(const args &a, const char *op) {
    return dr_fail(DR_ERR_UNSUPPORTED, "%s: head dims E = %d, Ev = %d; the CUDA kernels support "
                   "at most 256", op, a.e, a.ev);
}

dr_status cuda_attention(dr_tensor *out, dr_tensor *lse, const dr_tensor *q, const dr_tensor *k,
                         const dr_tensor *v, const dr_tensor *mask, int causal, double scale) {
    cudaStream_t stream = dr_cuda_stream_of(q, OP_FWD);
    if (!stream) return DR_ERR_DEVICE;
    args a = make_args(q, k, v, mask, causal, scale);
    if (a.batch == 0 || a.lq == 0) return DR_OK;
    a.out = dr_cuda_ptr<float>(out);
    a.lse = dr_cuda_ptr<float>(lse);
    a.out_vec = aligned16(a.out) && a.ev % 4 == 0;
    switch (padded_head_dim(a)) {
    case 64: return run_forward<64>(a, stream);
    case 128: return run_forward<128>(a, stream);
    case 256: return run_forward<256>(a, stream);
    default: return unsupported_head_dim(a, OP_FWD);
    }
}

dr_status cuda_attention_backward(dr_tensor *grad_q, dr_tensor *grad_k, dr_tensor *grad_v,
                                  const dr_tensor *grad_out, const dr_tensor *q,
                                  const dr_tensor *k, const dr_tensor *v, const dr_tensor *mask,
                                  const dr_tensor *out, const dr_tensor *lse, int causal,
                                  double scale) {
    cudaStream_t stream = dr_cuda_stream_of(q, OP_BWD);
    if (!stream) return DR_ERR_DEVICE;
    args a = make_args(q, k, v, mask, causal, scale);
    if (a.batch == 0 || !(grad_q || grad_k || grad_v)) return DR_OK;
    const int d = padded_head_dim(a);
    if (!d) return unsupported_head_dim(a, OP_BWD);
    set_operand(a.go, grad_out, a.nb);
    set_operand(a.o, out, a.nb);
    a.lse_in = dr_cuda_ptr<float>(lse);
    a.dq = grad_q ? dr_cuda_ptr<float>(grad_q) : nullptr;
    a.dk = grad_k ? dr_cuda_ptr<float>(grad_k) : nullptr;
    a.dv = grad_v ? dr_cuda_ptr<float>(grad_v) : nullptr;
    a.dq_vec = a.dq && aligned16(a.dq) && a.e % 4 == 0;
    a.dk_vec = a.dk && aligned16(a.dk) && a.e % 4 == 0;
    a.dv_vec = a.dv && aligned16(a.dv) && a.ev % 4 == 0;
    /* D is read by dS only, which dV does not need */
    const int64_t rows = a.batch * a.lq;
    const size_t dbytes = floats(rows);
    void *dsum = nullptr;
    if ((a.dq || a.dk) && rows > 0) {
        DR_TRY(dr_cuda_scratch(q->device.index, dbytes, &dsum));
        a.dsum = static_cast<float *>(dsum);
    }
    dr_status st = DR_OK;
    if (a.dsum) st = launch(dsum_kernel, (rows + NT / 32 - 1) / (NT / 32), 0, stream, a, OP_BWD,
                            "rowsum(dO * O)");
    if (st == DR_OK) {
        switch (d) {
        case 64: st = run_backward<64>(a, stream); break;
        case 128: st = run_backward<128>(a, stream); break;
        default: st = run_backward<256>(a, stream); break;
        }
    }
    if (dsum) dr_cuda_scratch_free(q->device.index, dsum, dbytes); /* stream-ordered */
    return st;
}

} // namespace

extern "C" void dr_cuda_register_attention(dr_backend *b) {
    b->attention = cuda_attention;
    b->attention_backward = cuda_attention_backward;
}
