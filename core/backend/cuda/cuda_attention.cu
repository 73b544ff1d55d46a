/* Scaled dot product attention on CUDA, float32: FlashAttention-2 (Dao 2023) on
 * f32 FMA. The [Lq, Lk] scores never leave a block's shared memory; the only
 * scratch is D = rowsum(dO * O), one float per query row.
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
 * Tiling: 256 threads as a 16 x 16 grid (ty = tid / 16, tx = tid % 16). Score
 * tiles are register blocks of rows ty + 16 i and columns tx + 16 j, read as
 * float4 along the head dim from row-major tiles whose row stride is an odd
 * number of float4s (no bank conflicts across the 8 rows a quarter warp reads).
 * The 16 threads of a score row are one half warp, so the softmax statistics are
 * xor-shuffle reductions and every lane of the half warp holds the same bits.
 * The products over the sequence (P V, P^T dO, dS^T Q, dS K) give each thread 4
 * (or 2) consecutive rows and columns 4 tx + 64 g: float4 broadcasts of P and
 * float4 reads of the value rows. Head dims are padded to 64, 128 or 256 for the
 * register arrays only; loops run to round4(E) and round4(Ev). */
#include <cmath>
#include <cstring>

#include "cuda_internal.cuh"

#define OP_FWD "scaled_dot_product_attention"
#define OP_BWD "scaled_dot_product_attention_backward"

namespace {

constexpr int NT = 256;
constexpr unsigned FULL = 0xffffffffu;

/* q, k, v, grad_out or out: batch strides over the shared batch dims, row stride;
 * the last dim has stride 1 (ops/attention.c sees to it). */
struct operand {
    const float *p;
    int64_t ld;
    int64_t bs[DR_MAX_DIMS];
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
};

/* Tile sizes per padded head dim D. The forward keeps Q_i and streams K, V;
 * the dK/dV kernel keeps a key tile (KK) and streams query tiles (KQ); the dQ
 * kernel keeps a query tile (QQ) and streams key tiles (QK). Chosen so that
 * every kernel's shared memory fits 163 KiB (A100) at E = Ev = D and the
 * accumulators stay in registers. FB, KB, QB: blocks per SM the register
 * budget aims at (2 where shared memory allows 2 at E = Ev = D: 128 registers,
 * a few bytes of spill, against 1 block of 8 warps). */
template <int D> struct tiles;
template <> struct tiles<64> {
    enum { FQ = 64, FK = 64, KQ = 64, KK = 64, QQ = 64, QK = 64, FB = 2, KB = 2, QB = 2 };
};
template <> struct tiles<128> {
    enum { FQ = 64, FK = 32, KQ = 32, KK = 64, QQ = 64, QK = 32, FB = 2, KB = 1, QB = 2 };
};
template <> struct tiles<256> {
    enum { FQ = 64, FK = 32, KQ = 32, KK = 32, QQ = 32, QK = 32, FB = 1, KB = 1, QB = 1 };
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
 * 0: zero rows and columns keep the padded products finite. */
template <int BR>
__device__ __forceinline__ void load_rows(float *s, int ls, const float *g, int64_t ld, int n,
                                          int cols, int c4, float mult) {
    const int total = BR * c4;
    for (int i = threadIdx.x; i < total; i += NT) {
        const int r = i / c4, c = i - r * c4;
        s[r * ls + c] = r < n && c < cols ? mult * g[r * ld + c] : 0.0f;
    }
}

template <int N> __device__ __forceinline__ void load_vec(float (&x)[N], const float *p) {
    if constexpr (N == 4) {
        const float4 t = *reinterpret_cast<const float4 *>(p);
        x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
    } else {
        static_assert(N == 2, "rows per thread are 2 or 4");
        const float2 t = *reinterpret_cast<const float2 *>(p);
        x[0] = t.x, x[1] = t.y;
    }
}

/* acc[i][j] = sum over d < n4 of a[(ty + 16 i) la + d] b[(tx + 16 j) lb + d],
 * d in increasing order (one fma chain per element, like the CPU's tile_mm). */
template <int MI, int NJ>
__device__ __forceinline__ void score_block(float (&acc)[MI][NJ], const float *a, int la,
                                            const float *b, int lb, int n4, int ty, int tx) {
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[i][j] = 0.0f;
#pragma unroll 2
    for (int d = 0; d < n4; d += 4) {
        float4 av[MI], bv[NJ];
#pragma unroll
        for (int i = 0; i < MI; i++)
            av[i] = *reinterpret_cast<const float4 *>(a + (ty + 16 * i) * la + d);
#pragma unroll
        for (int j = 0; j < NJ; j++)
            bv[j] = *reinterpret_cast<const float4 *>(b + (tx + 16 * j) * lb + d);
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                float s = acc[i][j];
                s = fmaf(av[i].x, bv[j].x, s);
                s = fmaf(av[i].y, bv[j].y, s);
                s = fmaf(av[i].z, bv[j].z, s);
                acc[i][j] = fmaf(av[i].w, bv[j].w, s);
            }
    }
}

/* The score of query qi, key kj after the mask (bool: -inf where false; float:
 * added) and the causal rule (top-left: key kj > query qi is masked). */
__device__ __forceinline__ float mask_score(const args &a, float s, int64_t moff, int64_t qi,
                                            int64_t kj) {
    if (a.m.p) {
        const int64_t at = moff + qi * a.m.rs + kj * a.m.cs;
        if (a.m.is_bool) {
            if (!static_cast<const uint8_t *>(a.m.p)[at]) s = -INFINITY;
        } else {
            s += static_cast<const float *>(a.m.p)[at];
        }
    }
    if (a.causal && kj > qi) s = -INFINITY;
    return s;
}

/* acc[r][g][x] += w[r] row[4 tx + 64 g + x] for the columns below n4: the
 * sequence products, one shared row of the right operand per step. */
template <int R, int CG>
__device__ __forceinline__ void row_update(float (&acc)[R][CG][4], const float (&w)[R],
                                           const float *row, int n4, int tx) {
#pragma unroll
    for (int g = 0; g < CG; g++) {
        const int col = 64 * g + 4 * tx;
        if (col < n4) {
            const float4 v = *reinterpret_cast<const float4 *>(row + col);
#pragma unroll
            for (int r = 0; r < R; r++) {
                acc[r][g][0] = fmaf(w[r], v.x, acc[r][g][0]);
                acc[r][g][1] = fmaf(w[r], v.y, acc[r][g][1]);
                acc[r][g][2] = fmaf(w[r], v.z, acc[r][g][2]);
                acc[r][g][3] = fmaf(w[r], v.w, acc[r][g][3]);
            }
        }
    }
}

/* dst row (contiguous, n columns) = mult acc[r][g][.] for this thread's columns. */
template <int R, int CG>
__device__ __forceinline__ void store_row(float *dst, const float (&acc)[R][CG][4], int r, int n,
                                          float mult, int tx) {
#pragma unroll
    for (int g = 0; g < CG; g++)
#pragma unroll
        for (int x = 0; x < 4; x++) {
            const int col = 64 * g + 4 * tx + x;
            if (col < n) dst[col] = mult * acc[r][g][x];
        }
}

template <int R, int CG> __device__ __forceinline__ void zero(float (&acc)[R][CG][4]) {
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int g = 0; g < CG; g++)
#pragma unroll
            for (int x = 0; x < 4; x++) acc[r][g][x] = 0.0f;
}

/* ---- forward ---------------------------------------------------------------------- */

template <int D, int BQ, int BK>
__global__ void __launch_bounds__(NT, tiles<D>::FB) fwd_kernel(const args a) {
    constexpr int MI = BQ / 16, NJ = BK / 16, RQ = BQ / 16, CG = D / 64, PT = BQ + 4;
    extern __shared__ float4 smem4[];
    float *qs = reinterpret_cast<float *>(smem4);
    float *ks = qs + BQ * a.qs, *vs = ks + BK * a.qs, *pt = vs + BK * a.vs; /* pt: P^T */
    float *corr_s = pt + BK * PT, *l_s = corr_s + BQ;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t nqt = (a.lq + BQ - 1) / BQ, b = blockIdx.x / nqt, i0 = blockIdx.x % nqt * BQ;
    const int rows = (int)min((int64_t)BQ, a.lq - i0);
    const float *kg = a.k.p + batch_off(a, a.k.bs, b), *vg = a.v.p + batch_off(a, a.v.bs, b);
    const int64_t moff = a.m.p ? batch_off(a, a.m.bs, b) : 0;
    /* the scale rides in Q, as the CPU packs it */
    load_rows<BQ>(qs, a.qs, a.q.p + batch_off(a, a.q.bs, b) + i0 * a.q.ld, a.q.ld, rows, a.e,
                  a.e4, a.scale);

    float m[MI], l[MI], o[RQ][CG][4];
#pragma unroll
    for (int i = 0; i < MI; i++) m[i] = -INFINITY, l[i] = 0.0f;
    zero(o);
    /* causal: no query of this tile sees a key at or past i0 + rows */
    const int64_t kend = a.causal ? min(a.lk, i0 + rows) : a.lk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        const int kn = (int)min((int64_t)BK, kend - k0);
        load_rows<BK>(ks, a.qs, kg + k0 * a.k.ld, a.k.ld, kn, a.e, a.e4, 1.0f);
        load_rows<BK>(vs, a.vs, vg + k0 * a.v.ld, a.v.ld, kn, a.ev, a.ev4, 1.0f);
        __syncthreads();
        float s[MI][NJ];
        score_block<MI, NJ>(s, qs, a.qs, ks, a.qs, a.e4, ty, tx);
#pragma unroll
        for (int i = 0; i < MI; i++) {
            const int qi = ty + 16 * i;
            float tmax = -INFINITY;
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const int kj = tx + 16 * j;
                s[i][j] = qi < rows && kj < kn ? mask_score(a, s[i][j], moff, i0 + qi, k0 + kj)
                                               : -INFINITY;
                tmax = max_nan(tmax, s[i][j]);
            }
            for (int off = 1; off < 16; off <<= 1)
                tmax = max_nan(tmax, __shfl_xor_sync(FULL, tmax, off));
            const float mnew = max_nan(m[i], tmax);
            /* nothing attended yet: exp(-inf - 0) = 0 keeps P, l and O at 0 */
            const float shift = mnew == -INFINITY ? 0.0f : mnew;
            const float corr = mnew == -INFINITY ? 1.0f : expf(m[i] - mnew);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const float p = expf(s[i][j] - shift);
                pt[(tx + 16 * j) * PT + qi] = p;
                sum += p;
            }
            for (int off = 1; off < 16; off <<= 1) sum += __shfl_xor_sync(FULL, sum, off);
            l[i] = l[i] * corr + sum;
            m[i] = mnew;
            if (tx == 0) corr_s[qi] = corr;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < RQ; r++) {
            const float c = corr_s[ty * RQ + r];
#pragma unroll
            for (int g = 0; g < CG; g++)
#pragma unroll
                for (int x = 0; x < 4; x++) o[r][g][x] *= c;
        }
#pragma unroll 4
        for (int kk = 0; kk < kn; kk++) {
            float p[RQ];
            load_vec<RQ>(p, pt + kk * PT + ty * RQ);
            row_update<RQ, CG>(o, p, vs + kk * a.vs, a.ev4, tx);
        }
        __syncthreads(); /* the next tile overwrites ks, vs, pt, corr_s */
    }
#pragma unroll
    for (int i = 0; i < MI; i++) {
        const int qi = ty + 16 * i;
        if (tx == 0) {
            l_s[qi] = l[i];
            if (qi < rows)
                a.lse[b * a.lq + i0 + qi] = l[i] == 0.0f ? -INFINITY : m[i] + logf(l[i]);
        }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < RQ; r++) {
        const int qi = ty * RQ + r;
        if (qi >= rows) continue;
        const float lr = l_s[qi];
        /* the row attends no key: zeros (torch >= 2.5), not 0/0 */
        store_row<RQ, CG>(a.out + (b * a.lq + i0 + qi) * a.ev, o, r, a.ev,
                          lr == 0.0f ? 0.0f : 1.0f / lr, tx);
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

/* exp() shift of a query row: L, or +inf for a row that attends nothing (P = 0). */
__device__ __forceinline__ float lse_shift(float l) { return l == -INFINITY ? INFINITY : l; }

/* Query rows [i0, i0 + n) of batch b into q_s, g_s (dO), lse_s (the shift) and
 * d_s; rows past n are zero (finite padding: P = 0 there, dS = 0). */
template <int BQ>
__device__ __forceinline__ void load_query_side(const args &a, int64_t b, int64_t i0, int n,
                                                float *q_s, float *g_s, float *lse_s, float *d_s) {
    load_rows<BQ>(q_s, a.qs, a.q.p + batch_off(a, a.q.bs, b) + i0 * a.q.ld, a.q.ld, n, a.e, a.e4,
                  1.0f);
    load_rows<BQ>(g_s, a.vs, a.go.p + batch_off(a, a.go.bs, b) + i0 * a.go.ld, a.go.ld, n, a.ev,
                  a.ev4, 1.0f);
    for (int r = threadIdx.x; r < BQ; r += NT) {
        lse_s[r] = r < n ? lse_shift(a.lse_in[b * a.lq + i0 + r]) : 0.0f;
        d_s[r] = r < n && a.dsum ? a.dsum[b * a.lq + i0 + r] : 0.0f;
    }
}

/* P (and dS when want_ds) of the score block: rows ty + 16 i of the query tile
 * (n of them valid) against columns tx + 16 j of the key tile (kn valid). */
template <int MI, int NJ>
__device__ __forceinline__ void probs(const args &a, float (&s)[MI][NJ], float (&dp)[MI][NJ],
                                      bool want_ds, int64_t moff, int64_t i0, int n, int64_t k0,
                                      int kn, const float *lse_s, const float *d_s, int ty, int tx) {
#pragma unroll
    for (int i = 0; i < MI; i++) {
        const int qi = ty + 16 * i;
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            const int kj = tx + 16 * j;
            const float sv = qi < n && kj < kn ? mask_score(a, s[i][j], moff, i0 + qi, k0 + kj)
                                               : -INFINITY;
            const float p = expf(sv - lse_s[qi]);
            s[i][j] = p;
            if (want_ds) dp[i][j] = p * (dp[i][j] - d_s[qi]);
        }
    }
}

/* One (batch, key tile): rows k0 .. k0 + kn of dK and dV over all query tiles. */
template <int D, int BQ, int BK>
__global__ void __launch_bounds__(NT, tiles<D>::KB) dkv_kernel(const args a) {
    constexpr int MI = BQ / 16, NJ = BK / 16, RK = BK / 16, CG = D / 64, PS = BK + 16;
    /* PS: 16 mod 32, so the two query rows a warp writes land in disjoint banks */
    extern __shared__ float4 smem4[];
    float *q_s = reinterpret_cast<float *>(smem4);
    float *g_s = q_s + BQ * a.qs, *k_s = g_s + BQ * a.vs, *v_s = k_s + BK * a.qs;
    float *p_s = v_s + BK * a.vs, *ds_s = p_s + BQ * PS, *lse_s = ds_s + BQ * PS;
    float *d_s = lse_s + BQ;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t nkt = (a.lk + BK - 1) / BK, b = blockIdx.x / nkt, k0 = blockIdx.x % nkt * BK;
    const int kn = (int)min((int64_t)BK, a.lk - k0);
    const bool want_dk = a.dk != nullptr, want_dv = a.dv != nullptr;
    const int64_t moff = a.m.p ? batch_off(a, a.m.bs, b) : 0;
    /* the scale rides in K (S = Q (scale K)^T), dK is scaled at the end */
    load_rows<BK>(k_s, a.qs, a.k.p + batch_off(a, a.k.bs, b) + k0 * a.k.ld, a.k.ld, kn, a.e, a.e4,
                  a.scale);
    load_rows<BK>(v_s, a.vs, a.v.p + batch_off(a, a.v.bs, b) + k0 * a.v.ld, a.v.ld, kn, a.ev,
                  a.ev4, 1.0f);
    float dk[RK][CG][4], dv[RK][CG][4];
    zero(dk);
    zero(dv);
    /* causal: queries before k0 see none of these keys */
    for (int64_t i0 = a.causal ? k0 / BQ * BQ : 0; i0 < a.lq; i0 += BQ) {
        const int n = (int)min((int64_t)BQ, a.lq - i0);
        if (a.causal && i0 + n <= k0) break;
        __syncthreads(); /* the previous tile is done with q_s .. d_s */
        load_query_side<BQ>(a, b, i0, n, q_s, g_s, lse_s, d_s);
        __syncthreads();
        float s[MI][NJ], dp[MI][NJ];
        score_block<MI, NJ>(s, q_s, a.qs, k_s, a.qs, a.e4, ty, tx);
        if (want_dk) score_block<MI, NJ>(dp, g_s, a.vs, v_s, a.vs, a.ev4, ty, tx);
        probs<MI, NJ>(a, s, dp, want_dk, moff, i0, n, k0, kn, lse_s, d_s, ty, tx);
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                const int at = (ty + 16 * i) * PS + tx + 16 * j;
                p_s[at] = s[i][j];
                if (want_dk) ds_s[at] = dp[i][j];
            }
        __syncthreads();
        /* dV += P^T dO and dK += dS^T Q, the query rows in increasing order */
#pragma unroll 2
        for (int qq = 0; qq < n; qq++) {
            float w[RK];
            if (want_dv) {
                load_vec<RK>(w, p_s + qq * PS + ty * RK);
                row_update<RK, CG>(dv, w, g_s + qq * a.vs, a.ev4, tx);
            }
            if (want_dk) {
                load_vec<RK>(w, ds_s + qq * PS + ty * RK);
                row_update<RK, CG>(dk, w, q_s + qq * a.qs, a.e4, tx);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RK; r++) {
        const int kj = ty * RK + r;
        if (kj >= kn) continue;
        const int64_t row = b * a.lk + k0 + kj;
        if (want_dk) store_row<RK, CG>(a.dk + row * a.e, dk, r, a.e, a.scale, tx);
        if (want_dv) store_row<RK, CG>(a.dv + row * a.ev, dv, r, a.ev, 1.0f, tx);
    }
}

/* One (batch, query tile): rows i0 .. i0 + n of dQ over the key tiles in order. */
template <int D, int BQ, int BK>
__global__ void __launch_bounds__(NT, tiles<D>::QB) dq_kernel(const args a) {
    constexpr int MI = BQ / 16, NJ = BK / 16, RQ = BQ / 16, CG = D / 64, PT = BQ + 4;
    extern __shared__ float4 smem4[];
    float *q_s = reinterpret_cast<float *>(smem4);
    float *g_s = q_s + BQ * a.qs, *k_s = g_s + BQ * a.vs, *v_s = k_s + BK * a.qs;
    float *dst = v_s + BK * a.vs, *lse_s = dst + BK * PT, *d_s = lse_s + BQ; /* dst: dS^T */
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t nqt = (a.lq + BQ - 1) / BQ, b = blockIdx.x / nqt, i0 = blockIdx.x % nqt * BQ;
    const int n = (int)min((int64_t)BQ, a.lq - i0);
    const float *kg = a.k.p + batch_off(a, a.k.bs, b), *vg = a.v.p + batch_off(a, a.v.bs, b);
    const int64_t moff = a.m.p ? batch_off(a, a.m.bs, b) : 0;
    load_query_side<BQ>(a, b, i0, n, q_s, g_s, lse_s, d_s);
    float dq[RQ][CG][4];
    zero(dq);
    const int64_t kend = a.causal ? min(a.lk, i0 + n) : a.lk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        const int kn = (int)min((int64_t)BK, kend - k0);
        __syncthreads(); /* the previous tile is done with k_s, v_s, dst */
        /* K scaled: S = Q (scale K)^T and dQ = dS (scale K) */
        load_rows<BK>(k_s, a.qs, kg + k0 * a.k.ld, a.k.ld, kn, a.e, a.e4, a.scale);
        load_rows<BK>(v_s, a.vs, vg + k0 * a.v.ld, a.v.ld, kn, a.ev, a.ev4, 1.0f);
        __syncthreads();
        float s[MI][NJ], dp[MI][NJ];
        score_block<MI, NJ>(s, q_s, a.qs, k_s, a.qs, a.e4, ty, tx);
        score_block<MI, NJ>(dp, g_s, a.vs, v_s, a.vs, a.ev4, ty, tx);
        probs<MI, NJ>(a, s, dp, true, moff, i0, n, k0, kn, lse_s, d_s, ty, tx);
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) dst[(tx + 16 * j) * PT + ty + 16 * i] = dp[i][j];
        __syncthreads();
#pragma unroll 4
        for (int kk = 0; kk < kn; kk++) {
            float w[RQ];
            load_vec<RQ>(w, dst + kk * PT + ty * RQ);
            row_update<RQ, CG>(dq, w, k_s + kk * a.qs, a.e4, tx);
        }
    }
#pragma unroll
    for (int r = 0; r < RQ; r++) {
        const int qi = ty * RQ + r;
        if (qi < n) store_row<RQ, CG>(a.dq + (b * a.lq + i0 + qi) * a.e, dq, r, a.e, 1.0f, tx);
    }
}

/* ---- host side ------------------------------------------------------------------- */

int round4(int64_t n) { return (int)((n + 3) / 4 * 4); }
/* a row stride of an odd number of float4s */
int odd_quads(int n4) { return n4 / 4 % 2 ? n4 : n4 + 4; }

void set_operand(operand &o, const dr_tensor *t, int32_t nb) {
    o.p = t ? dr_cuda_ptr<float>(t) : nullptr;
    o.ld = t ? t->strides[t->ndim - 2] : 0;
    for (int32_t d = 0; d < DR_MAX_DIMS; d++) o.bs[d] = t && d < nb ? t->strides[d] : 0;
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
    const size_t smem = floats((int64_t)(BQ + BK) * a.qs + BK * a.vs + BK * (BQ + 4) + 2 * BQ);
    return launch(fwd_kernel<D, BQ, BK>, a.batch * ((a.lq + BQ - 1) / BQ), smem, stream, a, OP_FWD,
                  "forward");
}

template <int D> dr_status run_backward(const args &a, cudaStream_t stream) {
    if (a.dk || a.dv) {
        constexpr int BQ = tiles<D>::KQ, BK = tiles<D>::KK;
        const size_t smem = floats((int64_t)(BQ + BK) * (a.qs + a.vs) + 2 * BQ * (BK + 16) + 2 * BQ);
        DR_TRY(launch(dkv_kernel<D, BQ, BK>, a.batch * ((a.lk + BK - 1) / BK), smem, stream, a,
                      OP_BWD, "dK/dV"));
    }
    if (a.dq) {
        constexpr int BQ = tiles<D>::QQ, BK = tiles<D>::QK;
        const size_t smem = floats((int64_t)(BQ + BK) * (a.qs + a.vs) + BK * (BQ + 4) + 2 * BQ);
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
