/* Scaled dot product attention on the CPU, flash-attention style: the [Lq, Lk]
 * score matrix is never held. Work items stream one side through score tiles of
 * at most FWD_BK x FWD_BQ floats (forward) or two of BWD_BQ x BWD_BK (backward)
 * per thread; the backward also keeps D and a transposed copy of k and v (as big
 * as k and v themselves).
 *
 * Forward (Dao et al. 2022, online softmax), per query tile Q_i and key tile K_j:
 *   S = scale Q_i K_j^T (+ mask);  m' = max(m, rowmax S);  P = exp(S - m')
 *   l = l e^(m - m') + rowsum P;   O = O e^(m - m') + P V_j
 * then O /= l and the logsumexp L = m + log l is kept for the backward. A row
 * that attends no key (l = 0) gives O = 0 and L = -inf.
 * Backward (FlashAttention-2, Dao 2023), with D = rowsum(dO * O) and the scores
 * recomputed from q, k and L:  P = exp(S - L),  dP = dO V^T,  dS = P (dP - D),
 *   dV = P^T dO,  dK = scale dS^T Q,  dQ = scale dS K.
 *
 * Layout: the forward holds a query tile's scores transposed, S^T [keys][queries],
 * so each query's softmax statistics run along contiguous vectors (no horizontal
 * reductions), with scale Q_i^T packed once per item. The backward holds S
 * [queries][keys] against K^T and V^T packed per key tile. Every product is one
 * register-blocked kernel (tile_mm: 6 rows x 16 columns of broadcast-FMA) that
 * reads its left operand with any strides, so P and dS feed the next product in
 * place, transposed or not.
 *
 * Determinism: no float atomics, no sums split across threads. The backward
 * either sweeps each batch entry on one thread (FlashAttention-2's loop, 5 tile
 * products per tile pair) or, when that would leave threads idle, runs two
 * passes: one (batch, key tile) per item for its rows of dK and dV, then one
 * (batch, query tile) per item for its rows of dQ (7 products). Both compute
 * every tile and every sum with the same calls in the same order, so they give
 * the same bits and the choice may follow the thread count; tile sizes follow
 * the shapes only. (The AVX2+FMA and generic builds of the kernels round
 * differently; a machine always picks the same one.) */
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_vecmath.h"

enum { FWD_BQ = 64, FWD_BK = 256, BWD_BQ = 64, BWD_BK = 128 };

static int64_t round8(int64_t n) { return (n + 7) / 8 * 8; }

/* Tile size for n rows at most `max` (a multiple of 8): the rows split evenly over
 * the fewest tiles, rounded up to a multiple of 8 (77 keys -> one tile of 80;
 * 130 -> 2 x 72 with max 128). */
static int64_t tile_size(int64_t n, int64_t max) {
    if (n <= 0) return 8;
    int64_t tiles = (n + max - 1) / max;
    int64_t t = round8((n + tiles - 1) / tiles);
    return t < max ? t : max;
}

/* ---- tile products -------------------------------------------------------------- */

typedef float v8f __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4), may_alias));
#define TILE_INLINE static inline __attribute__((always_inline))
/* macros, not functions: a function returning a 256-bit vector is an ABI warning
 * in the generic build */
#define load8(p) (*(const v8fu *)(p))
#define store8(p, v) (*(v8fu *)(p) = (v))

/* c[r][0 : 8 nv] (+)= sum_k a[r ars + k acs] b[k ldb + 0 : 8 nv] for r < mr: the
 * register block of mr x nv vectors (at most 12 accumulators of 16 registers). */
TILE_INLINE void tile_block(const int mr, const int nv, int64_t kd, const float *a, int64_t ars,
                            int64_t acs, const float *b, int64_t ldb, float *c, int64_t ldc,
                            int accumulate) {
    v8f acc[3][6];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) {
            acc[v][r] = (v8f){0};
            if (accumulate) acc[v][r] = load8(c + r * ldc + 8 * v);
        }
    for (int64_t k = 0; k < kd; k++) {
        const float *bk = b + k * ldb, *ak = a + k * acs;
        v8f bv[3];
        for (int v = 0; v < nv; v++) bv[v] = load8(bk + 8 * v);
        for (int r = 0; r < mr; r++) {
            float x = ak[r * ars];
            v8f ar = {x, x, x, x, x, x, x, x};
            for (int v = 0; v < nv; v++) acc[v][r] += ar * bv[v];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) store8(c + r * ldc + 8 * v, acc[v][r]);
}

/* All m rows of one strip of 8 nv columns: blocks of 6 rows (4 when 3 wide). */
TILE_INLINE void tile_rows(const int nv, int64_t m, int64_t kd, const float *a, int64_t ars,
                           int64_t acs, const float *b, int64_t ldb, float *c, int64_t ldc,
                           int accumulate) {
    const int mr = nv == 3 ? 4 : 6;
    int64_t r = 0;
    for (; r + mr <= m; r += mr)
        tile_block(mr, nv, kd, a + r * ars, ars, acs, b, ldb, c + r * ldc, ldc, accumulate);
    const float *ar = a + r * ars;
    float *cr = c + r * ldc;
    switch (m - r) {
    case 5: tile_block(5, nv, kd, ar, ars, acs, b, ldb, cr, ldc, accumulate); break;
    case 4: tile_block(4, nv, kd, ar, ars, acs, b, ldb, cr, ldc, accumulate); break;
    case 3: tile_block(3, nv, kd, ar, ars, acs, b, ldb, cr, ldc, accumulate); break;
    case 2: tile_block(2, nv, kd, ar, ars, acs, b, ldb, cr, ldc, accumulate); break;
    case 1: tile_block(1, nv, kd, ar, ars, acs, b, ldb, cr, ldc, accumulate); break;
    default: break;
    }
}

/* C (m x n, row stride ldc) (+)= A B, A element (r, k) at a[r ars + k acs], B
 * row-major (k x n, row stride ldb). Strips of 16 columns, the last 24 as one
 * strip when n is an odd multiple of 8 (head dims 40, 24); columns past the last
 * multiple of 8 take a scalar loop (only odd head dims reach it). */
TILE_INLINE void tile_mm_body(int64_t m, int64_t n, int64_t kd, const float *a, int64_t ars,
                              int64_t acs, const float *b, int64_t ldb, float *c, int64_t ldc,
                              int accumulate) {
    int64_t j = 0, n8 = n / 8 * 8;
    for (; j + 16 <= n8 && n8 - j != 24; j += 16)
        tile_rows(2, m, kd, a, ars, acs, b + j, ldb, c + j, ldc, accumulate);
    if (n8 - j == 24) tile_rows(3, m, kd, a, ars, acs, b + j, ldb, c + j, ldc, accumulate);
    else if (n8 - j == 8) tile_rows(1, m, kd, a, ars, acs, b + j, ldb, c + j, ldc, accumulate);
    for (j = n8; j < n; j++)
        for (int64_t r = 0; r < m; r++) {
            float s = accumulate ? c[r * ldc + j] : 0.0f;
            for (int64_t k = 0; k < kd; k++) s += a[r * ars + k * acs] * b[k * ldb + j];
            c[r * ldc + j] = s;
        }
}

#define TILE_MM_ARGS                                                                     \
    int64_t m, int64_t n, int64_t kd, const float *a, int64_t ars, int64_t acs,          \
        const float *b, int64_t ldb, float *c, int64_t ldc, int accumulate
#define TILE_MM_PASS m, n, kd, a, ars, acs, b, ldb, c, ldc, accumulate

static void tile_mm_generic(TILE_MM_ARGS) { tile_mm_body(TILE_MM_PASS); }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target("avx2,fma"))) static void tile_mm_fma(TILE_MM_ARGS) {
    tile_mm_body(TILE_MM_PASS);
}
static void tile_mm(TILE_MM_ARGS) {
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) tile_mm_fma(TILE_MM_PASS);
    else tile_mm_generic(TILE_MM_PASS);
}
#else
static void tile_mm(TILE_MM_ARGS) { tile_mm_generic(TILE_MM_PASS); }
#endif

/* ---- elementwise passes over a tile (vectorised along its rows) ------------------ */

/* max(a, b) that keeps NaN, so a NaN score is not read as "masked". */
static inline float max_nan(float a, float b) { return (b > a) | (b != b) ? b : a; }

/* mx[i] = max over the kn rows of s (row stride ld) of column i < n. */
DR_CPU_CLONES
static void col_max(float *restrict mx, const float *restrict s, int64_t ld, int64_t kn, int64_t n) {
    for (int64_t i = 0; i < n; i++) mx[i] = -INFINITY;
    for (int64_t j = 0; j < kn; j++)
        for (int64_t i = 0; i < n; i++) mx[i] = max_nan(mx[i], s[j * ld + i]);
}

/* s[j][i] = exp(s[j][i] - shift[i]); sum[i] = sum over j, in order. */
DR_CPU_CLONES
static void col_exp_sum_any(float *restrict s, int64_t ld, int64_t kn, int64_t n,
                            const float *restrict shift, float *restrict sum) {
    for (int64_t i = 0; i < n; i++) sum[i] = 0.0f;
    for (int64_t j = 0; j < kn; j++)
        for (int64_t i = 0; i < n; i++) {
            float e = dr_vexpf(s[j * ld + i] - shift[i]);
            s[j * ld + i] = e;
            sum[i] += e;
        }
}

/* Along rows: s[r][j] = exp(s[r][j] - shift[r]). */
DR_CPU_CLONES
static void row_exp_any(float *restrict s, int64_t ld, int64_t rows, int64_t n,
                        const float *restrict shift) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) s[r * ld + j] = dr_vexpf(s[r * ld + j] - shift[r]);
}

#ifdef DR_HAVE_VEXPF8
/* The same two loops on the x86-64-v3 CPUs (those that run the clones' v3 code),
 * for widths that are multiples of 8 (the tiles' always are; others take the
 * loops above): dr_vexpf8 gives the same bits as the clones, and the column sums
 * run in registers, 4 blocks of 8 columns at a time, each in the same order (j =
 * 0, 1, ...) as above. The exp was a quarter of the forward's time. */
DR_V3_FN static void col_exp_sum_v3(float *s, int64_t ld, int64_t kn, int64_t n,
                                    const float *shift, float *sum) {
    for (int64_t i = 0; i < n; i += 32) {
        int nb = n - i >= 32 ? 4 : (int)((n - i) / 8);
        __m256 acc[4], sh[4];
        for (int v = 0; v < nb; v++) {
            acc[v] = _mm256_setzero_ps();
            sh[v] = _mm256_loadu_ps(shift + i + 8 * v);
        }
        for (int64_t j = 0; j < kn; j++) {
            float *row = s + j * ld + i;
            for (int v = 0; v < nb; v++) {
                __m256 e = dr_vexpf8(_mm256_sub_ps(_mm256_loadu_ps(row + 8 * v), sh[v]));
                _mm256_storeu_ps(row + 8 * v, e);
                acc[v] = _mm256_add_ps(acc[v], e);
            }
        }
        for (int v = 0; v < nb; v++) _mm256_storeu_ps(sum + i + 8 * v, acc[v]);
    }
}

DR_V3_FN static void row_exp_v3(float *s, int64_t ld, int64_t rows, int64_t n,
                                const float *shift) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = s + r * ld;
        __m256 sh = _mm256_set1_ps(shift[r]);
        for (int64_t j = 0; j < n; j += 8)
            _mm256_storeu_ps(row + j, dr_vexpf8(_mm256_sub_ps(_mm256_loadu_ps(row + j), sh)));
    }
}

/* Both pairs on a 16 x 40 tile of fixed values (5 blocks of 8 columns). */
static int attention_probe(void) {
    enum { R = 16, C = 40 };
    float a[R * C], b[R * C], shift[R > C ? R : C], sa[C], sb[C];
    dr_cpu_probe_values(a, R * C);
    dr_cpu_probe_values(shift, R > C ? R : C);
    memcpy(b, a, sizeof a);
    col_exp_sum_v3(a, C, R, C, shift, sa);
    col_exp_sum_any(b, C, R, C, shift, sb);
    int same = memcmp(a, b, sizeof a) == 0 && memcmp(sa, sb, sizeof sa) == 0;
    dr_cpu_probe_values(a, R * C);
    memcpy(b, a, sizeof a);
    row_exp_v3(a, C, R, C, shift);
    row_exp_any(b, C, R, C, shift);
    return same && memcmp(a, b, sizeof a) == 0;
}

int dr_cpu_attention_v3(void) {
    static int state;
    return dr_cpu_probe(&state, attention_probe);
}

static void col_exp_sum(float *s, int64_t ld, int64_t kn, int64_t n, const float *shift,
                        float *sum) {
    if (n % 8 == 0 && dr_cpu_attention_v3()) col_exp_sum_v3(s, ld, kn, n, shift, sum);
    else col_exp_sum_any(s, ld, kn, n, shift, sum);
}

static void row_exp(float *s, int64_t ld, int64_t rows, int64_t n, const float *shift) {
    if (n % 8 == 0 && dr_cpu_attention_v3()) row_exp_v3(s, ld, rows, n, shift);
    else row_exp_any(s, ld, rows, n, shift);
}
#else
int dr_cpu_attention_v3(void) { return 0; }
#define col_exp_sum col_exp_sum_any
#define row_exp row_exp_any
#endif

/* Along rows: dS = dp = p (dp - d[r]). */
DR_CPU_CLONES
static void row_dsoftmax(float *restrict dp, const float *restrict p, int64_t ld, int64_t rows,
                         int64_t n, const float *restrict d) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) dp[r * ld + j] = p[r * ld + j] * (dp[r * ld + j] - d[r]);
}

static void scale_floats(float *x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

/* ---- operands ----------------------------------------------------------------------- */

/* A tensor seen by the kernels: element (batch b, row r, col c) with the last dim
 * of stride 1 (ops/attention.c sees to it); batch and row strides are free. */
typedef struct operand {
    const float *data;
    const dr_tensor *t;
    int32_t nb;  /* batch dims */
    int64_t ld;  /* row stride */
} operand;

static int64_t batch_offset(const dr_tensor *t, int32_t nb, int64_t b) {
    int64_t off = t->storage_offset;
    for (int32_t d = nb - 1; d >= 0; d--) {
        off += (b % t->sizes[d]) * t->strides[d];
        b /= t->sizes[d];
    }
    return off;
}

static operand make_operand(const dr_tensor *t) {
    operand o = {(const float *)dr_cpu_base(t), t, t->ndim - 2, t->strides[t->ndim - 2]};
    return o;
}

static const float *rows_of(const operand *o, int64_t b, int64_t row) {
    return o->data + batch_offset(o->t, o->nb, b) + row * o->ld;
}

/* dst[c][r] = mult rows[r][c] for r < n, 0 for n <= r < width (the row stride of
 * dst). The scores' scale rides in the packed q or k. */
static void pack_transposed(float *dst, int64_t width, const float *rows, int64_t ld, int64_t n,
                            int64_t cols, float mult) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * width + r] = mult * rows[r * ld + c];
    for (int64_t c = 0; c < cols; c++)
        for (int64_t r = n; r < width; r++) dst[c * width + r] = 0.0f;
}

/* The mask and causal flag of one call; the mask is bool (true = attend) or
 * float32 (added), expanded to [batch..., Lq, Lk] with any strides. */
typedef struct masking {
    const dr_tensor *mask;
    int causal;
} masking;

/* Masks the scores of queries i0 + qi (qi < nq) and keys k0 + kj (kj < nk), which
 * sit at s[qi qs + kj ks]. */
static void mask_tile(const masking *mk, int64_t b, float *s, int64_t qs, int64_t ks, int64_t nq,
                      int64_t nk, int64_t i0, int64_t k0) {
    const dr_tensor *m = mk->mask;
    if (m) {
        int32_t nd = m->ndim;
        int64_t rs = m->strides[nd - 2], cs = m->strides[nd - 1];
        int64_t base = batch_offset(m, nd - 2, b) + i0 * rs + k0 * cs;
        if (m->scalar_type == DR_BOOL) {
            const uint8_t *mb = (const uint8_t *)dr_cpu_base(m) + base;
            for (int64_t qi = 0; qi < nq; qi++)
                for (int64_t kj = 0; kj < nk; kj++)
                    if (!mb[qi * rs + kj * cs]) s[qi * qs + kj * ks] = -INFINITY;
        } else {
            const float *mf = (const float *)dr_cpu_base(m) + base;
            for (int64_t qi = 0; qi < nq; qi++)
                for (int64_t kj = 0; kj < nk; kj++) s[qi * qs + kj * ks] += mf[qi * rs + kj * cs];
        }
    }
    if (mk->causal) /* top-left aligned: query i attends keys j <= i */
        for (int64_t qi = 0; qi < nq; qi++)
            for (int64_t kj = i0 + qi + 1 - k0 < 0 ? 0 : i0 + qi + 1 - k0; kj < nk; kj++)
                s[qi * qs + kj * ks] = -INFINITY;
}

typedef struct geometry {
    int64_t batch, lq, lk, e, ev;
    float scale;
} geometry;

static geometry geometry_of(const dr_tensor *q, const dr_tensor *k, const dr_tensor *v,
                            double scale) {
    int32_t nd = q->ndim;
    geometry g = {1, q->sizes[nd - 2], k->sizes[nd - 2], q->sizes[nd - 1], v->sizes[nd - 1],
                  (float)scale};
    for (int32_t d = 0; d < nd - 2; d++) g.batch *= q->sizes[d];
    return g;
}

/* ---- forward ------------------------------------------------------------------------ */

typedef struct fwd_scratch {
    float *qt, *st, *m, *l, *tmax, *shift, *corr, *lsum;
} fwd_scratch;

/* One query tile: rows i0 .. i0 + rows of batch b, with the online softmax over
 * key tiles of at most bk rows, scores held as S^T [keys][queries]. */
static void forward_tile(const geometry *g, const operand *q, const operand *k, const operand *v,
                         const masking *mk, int64_t b, int64_t i0, int64_t rows, int64_t bk,
                         float *o, float *lse, const fwd_scratch *w) {
    int64_t w8 = round8(rows), e = g->e, ev = g->ev;
    pack_transposed(w->qt, w8, rows_of(q, b, i0), q->ld, rows, e, g->scale);
    memset(o, 0, (size_t)(rows * ev) * sizeof(float));
    for (int64_t i = 0; i < w8; i++) w->m[i] = -INFINITY, w->l[i] = 0.0f;
    int64_t kend = mk->causal && i0 + rows < g->lk ? i0 + rows : g->lk;
    for (int64_t k0 = 0; k0 < kend; k0 += bk) {
        int64_t kn = kend - k0 < bk ? kend - k0 : bk;
        tile_mm(kn, w8, e, rows_of(k, b, k0), k->ld, 1, w->qt, w8, w->st, w8, 0);
        mask_tile(mk, b, w->st, 1, w8, rows, kn, i0, k0);
        col_max(w->tmax, w->st, w8, kn, w8);
        for (int64_t i = 0; i < w8; i++) {
            float mnew = max_nan(w->m[i], w->tmax[i]);
            /* nothing attended yet: exp(-inf - 0) = 0 keeps P, l and O at 0 */
            w->shift[i] = mnew == -INFINITY ? 0.0f : mnew;
            w->corr[i] = mnew == -INFINITY ? 1.0f : dr_vexpf(w->m[i] - mnew);
            w->m[i] = mnew;
        }
        col_exp_sum(w->st, w8, kn, w8, w->shift, w->lsum);
        for (int64_t i = 0; i < w8; i++) w->l[i] = w->l[i] * w->corr[i] + w->lsum[i];
        for (int64_t i = 0; i < rows; i++)
            if (w->corr[i] != 1.0f) scale_floats(o + i * ev, ev, w->corr[i]);
        tile_mm(rows, ev, kn, w->st, 1, w8, rows_of(v, b, k0), v->ld, o, ev, 1);
    }
    for (int64_t i = 0; i < rows; i++) {
        float l = w->l[i];
        if (l == 0.0f) { /* the row attends no key; NaN scores keep NaN */
            memset(o + i * ev, 0, (size_t)ev * sizeof(float));
            lse[i] = -INFINITY;
        } else {
            scale_floats(o + i * ev, ev, 1.0f / l);
            lse[i] = w->m[i] + logf(l);
        }
    }
}

dr_status dr_cpu_attention(dr_tensor *out, dr_tensor *lse, const dr_tensor *qt,
                           const dr_tensor *kt, const dr_tensor *vt, const dr_tensor *mask,
                           int causal, double scale) {
    geometry g = geometry_of(qt, kt, vt, scale);
    if (g.batch == 0 || g.lq == 0) return DR_OK;
    operand q = make_operand(qt), k = make_operand(kt), v = make_operand(vt);
    masking mk = {mask, causal};
    float *o_all = (float *)dr_cpu_base(out) + out->storage_offset;
    float *l_all = (float *)dr_cpu_base(lse) + lse->storage_offset;
    int64_t bq = tile_size(g.lq, FWD_BQ), bk = tile_size(g.lk, FWD_BK);
    int64_t nqt = (g.lq + bq - 1) / bq, items = g.batch * nqt;
    size_t floats = (size_t)(g.e * bq + bk * bq + 6 * bq);
    int failed = 0;
#pragma omp parallel if (g.batch * g.lq * g.lk > DR_CPU_PARALLEL_MIN)
    {
        float *buf = malloc(floats * sizeof(float));
        fwd_scratch w = {buf, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
        if (buf) {
            w.st = w.qt + g.e * bq;
            w.m = w.st + bk * bq;
            w.l = w.m + bq, w.tmax = w.l + bq, w.shift = w.tmax + bq, w.corr = w.shift + bq;
            w.lsum = w.corr + bq;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++) {
            if (!buf) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            int64_t b = item / nqt, i0 = item % nqt * bq;
            int64_t rows = g.lq - i0 < bq ? g.lq - i0 : bq;
            forward_tile(&g, &q, &k, &v, &mk, b, i0, rows, bk, o_all + (b * g.lq + i0) * g.ev,
                         l_all + b * g.lq + i0, &w);
        }
        free(buf);
    }
    if (failed)
        return dr_fail(DR_ERR_OOM, "scaled_dot_product_attention: cannot allocate %zu bytes of "
                       "tiles", floats * sizeof(float));
    return DR_OK;
}

/* ---- backward ----------------------------------------------------------------------- */

typedef struct bwd_ctx {
    geometry g;
    operand q, k, v, dout;
    masking mk;
    const float *lse, *dsum; /* [batch][Lq]; dsum: D = rowsum(dO * O) */
    /* scale K^T and V^T per key tile, [batch][tile][E or Ev][bk], 0 past Lk: a tile's
     * rows are contiguous (a whole-head row stride of 2^n floats would map every
     * row to one cache set) */
    const float *kt, *vt;
    int64_t nkt, bq, bk;
} bwd_ctx;

/* exp() shift of query row i: L, or +inf for rows that attend nothing (P = 0). */
static float lse_shift(float l) { return l == -INFINITY ? INFINITY : l; }

/* P (in p) and, if ds, dS = P (dO V^T - D) for query rows i0 .. i0 + rows against
 * the n keys from k0 (computed over round8(n) columns, row stride bk). Every path
 * of the backward gets its tiles here, so they all hold the same bits. */
static void tile_probs(const bwd_ctx *c, int64_t b, int64_t i0, int64_t rows, int64_t k0,
                       int64_t n, float *p, float *ds, float *shift) {
    const geometry *g = &c->g;
    int64_t ld = c->bk, n8 = round8(n), nreal = n8 < g->lk - k0 ? n8 : g->lk - k0;
    int64_t tile = b * c->nkt + k0 / c->bk; /* k0 starts a key tile */
    tile_mm(rows, n8, g->e, rows_of(&c->q, b, i0), c->q.ld, 1, c->kt + tile * g->e * ld, ld, p,
            ld, 0);
    mask_tile(&c->mk, b, p, ld, 1, rows, nreal, i0, k0);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = nreal; j < n8; j++) p[r * ld + j] = -INFINITY; /* past Lk */
        shift[r] = lse_shift(c->lse[b * g->lq + i0 + r]);
    }
    row_exp(p, ld, rows, n8, shift);
    if (!ds) return;
    tile_mm(rows, n8, g->ev, rows_of(&c->dout, b, i0), c->dout.ld, 1,
            c->vt + tile * g->ev * ld, ld, ds, ld, 0);
    row_dsoftmax(ds, p, ld, rows, n8, c->dsum + b * g->lq + i0);
}

/* Keys of tile k0 (cols of them) that query rows i0 .. i0 + rows attend: all of
 * them, or under the causal mask those before i0 + rows (<= 0: none). */
static int64_t keys_seen(const bwd_ctx *c, int64_t i0, int64_t rows, int64_t k0, int64_t cols) {
    return c->mk.causal && i0 + rows - k0 < cols ? i0 + rows - k0 : cols;
}

typedef struct grad_rows {
    float *dq, *dk, *dv; /* contiguous [batch][L][E or Ev], or NULL */
} grad_rows;

/* Pass 1: rows k0 .. k0 + cols of dK and dV, over the query tiles in order. */
static void key_tile_grads(const bwd_ctx *c, int64_t b, int64_t k0, int64_t cols,
                           const grad_rows *gr, float *p, float *ds, float *shift) {
    const geometry *g = &c->g;
    float *dk = gr->dk ? gr->dk + (b * g->lk + k0) * g->e : NULL;
    float *dv = gr->dv ? gr->dv + (b * g->lk + k0) * g->ev : NULL;
    /* causal: query rows before k0 attend none of these keys */
    for (int64_t i0 = c->mk.causal ? k0 / c->bq * c->bq : 0; i0 < g->lq; i0 += c->bq) {
        int64_t rows = g->lq - i0 < c->bq ? g->lq - i0 : c->bq;
        int64_t n = keys_seen(c, i0, rows, k0, cols);
        if (n <= 0) continue;
        tile_probs(c, b, i0, rows, k0, n, p, dk ? ds : NULL, shift);
        if (dv) tile_mm(n, g->ev, rows, p, 1, c->bk, rows_of(&c->dout, b, i0), c->dout.ld, dv,
                        g->ev, 1);
        if (dk) tile_mm(n, g->e, rows, ds, 1, c->bk, rows_of(&c->q, b, i0), c->q.ld, dk, g->e, 1);
    }
    if (dk) scale_floats(dk, cols * g->e, g->scale);
}

/* Pass 2: rows i0 .. i0 + rows of dQ, over the key tiles in order. */
static void query_tile_grads(const bwd_ctx *c, int64_t b, int64_t i0, int64_t rows,
                             const grad_rows *gr, float *p, float *ds, float *shift) {
    const geometry *g = &c->g;
    float *dq = gr->dq + (b * g->lq + i0) * g->e;
    for (int64_t k0 = 0; k0 < g->lk; k0 += c->bk) {
        int64_t cols = g->lk - k0 < c->bk ? g->lk - k0 : c->bk;
        int64_t n = keys_seen(c, i0, rows, k0, cols);
        if (n <= 0) break;
        tile_probs(c, b, i0, rows, k0, n, p, ds, shift);
        tile_mm(rows, g->e, n, ds, c->bk, 1, rows_of(&c->k, b, k0), c->k.ld, dq, g->e, 1);
    }
    scale_floats(dq, rows * g->e, g->scale);
}

/* Both passes for one batch entry in one sweep (FlashAttention-2's loop: 5 tile
 * products per tile instead of 7): the same tiles and sums in the same order as
 * the two passes, so the same bits. */
static void batch_grads(const bwd_ctx *c, int64_t b, const grad_rows *gr, float *p, float *ds,
                        float *shift) {
    const geometry *g = &c->g;
    for (int64_t k0 = 0; k0 < g->lk; k0 += c->bk) {
        int64_t cols = g->lk - k0 < c->bk ? g->lk - k0 : c->bk;
        float *dk = gr->dk ? gr->dk + (b * g->lk + k0) * g->e : NULL;
        float *dv = gr->dv ? gr->dv + (b * g->lk + k0) * g->ev : NULL;
        for (int64_t i0 = c->mk.causal ? k0 / c->bq * c->bq : 0; i0 < g->lq; i0 += c->bq) {
            int64_t rows = g->lq - i0 < c->bq ? g->lq - i0 : c->bq;
            int64_t n = keys_seen(c, i0, rows, k0, cols);
            if (n <= 0) continue;
            tile_probs(c, b, i0, rows, k0, n, p, dk || gr->dq ? ds : NULL, shift);
            if (dv) tile_mm(n, g->ev, rows, p, 1, c->bk, rows_of(&c->dout, b, i0), c->dout.ld,
                            dv, g->ev, 1);
            if (dk) tile_mm(n, g->e, rows, ds, 1, c->bk, rows_of(&c->q, b, i0), c->q.ld, dk,
                            g->e, 1);
            if (gr->dq) tile_mm(rows, g->e, n, ds, c->bk, 1, rows_of(&c->k, b, k0), c->k.ld,
                                gr->dq + (b * g->lq + i0) * g->e, g->e, 1);
        }
        if (dk) scale_floats(dk, cols * g->e, g->scale);
    }
    if (gr->dq) scale_floats(gr->dq + b * g->lq * g->e, g->lq * g->e, g->scale);
}

dr_status dr_cpu_attention_backward(dr_tensor *grad_q, dr_tensor *grad_k, dr_tensor *grad_v,
                                    const dr_tensor *grad_out, const dr_tensor *qt,
                                    const dr_tensor *kt, const dr_tensor *vt,
                                    const dr_tensor *mask, const dr_tensor *out,
                                    const dr_tensor *lse, int causal, double scale) {
    bwd_ctx c = {geometry_of(qt, kt, vt, scale), make_operand(qt), make_operand(kt),
                 make_operand(vt), make_operand(grad_out), {mask, causal}, NULL, NULL, NULL,
                 NULL, 0, 0, 0};
    const geometry *g = &c.g;
    grad_rows gr = {grad_q ? (float *)dr_cpu_base(grad_q) + grad_q->storage_offset : NULL,
                    grad_k ? (float *)dr_cpu_base(grad_k) + grad_k->storage_offset : NULL,
                    grad_v ? (float *)dr_cpu_base(grad_v) + grad_v->storage_offset : NULL};
    if (gr.dq) memset(gr.dq, 0, (size_t)(g->batch * g->lq * g->e) * sizeof(float));
    if (gr.dk) memset(gr.dk, 0, (size_t)(g->batch * g->lk * g->e) * sizeof(float));
    if (gr.dv) memset(gr.dv, 0, (size_t)(g->batch * g->lk * g->ev) * sizeof(float));
    if (g->batch == 0 || g->lq == 0 || g->lk == 0 || !(gr.dq || gr.dk || gr.dv)) return DR_OK;
    operand o = make_operand(out);
    c.lse = (const float *)dr_cpu_base(lse) + lse->storage_offset;
    c.bq = tile_size(g->lq, BWD_BQ);
    c.bk = tile_size(g->lk, BWD_BK);
    int64_t nqt = (g->lq + c.bq - 1) / c.bq, nkt = (g->lk + c.bk - 1) / c.bk;
    c.nkt = nkt;
    /* shared: D, and K^T and V^T packed once (as big as k and v, not [Lq, Lk]) */
    size_t shared = (size_t)(g->batch * (g->lq + (g->e + g->ev) * nkt * c.bk));
    float *dsum = malloc(shared * sizeof(float));
    if (!dsum)
        return dr_fail(DR_ERR_OOM, "scaled_dot_product_attention_backward: cannot allocate "
                       "%zu bytes", shared * sizeof(float));
    c.dsum = dsum;
    c.kt = dsum + g->batch * g->lq;
    c.vt = c.kt + g->batch * nkt * g->e * c.bk;
    /* One sweep per batch entry does less work, two passes spread better over
     * threads; both give the same bits, so the choice may follow the thread count. */
    bool parallel = g->batch * g->lq * g->lk > DR_CPU_PARALLEL_MIN;
    int64_t threads = parallel ? omp_get_max_threads() : 1;
    int64_t rounds = (g->batch + threads - 1) / threads;
    bool sweep = 5 * g->batch >= 4 * rounds * threads; /* at least 80% of threads busy */
    size_t floats = (size_t)(2 * c.bq * c.bk + c.bq);
    int failed = 0;
#pragma omp parallel if (parallel)
    {
#pragma omp for schedule(static)
        for (int64_t row = 0; row < g->batch * g->lq; row++) {
            const float *go = rows_of(&c.dout, row / g->lq, row % g->lq);
            const float *y = rows_of(&o, row / g->lq, row % g->lq);
            float acc[8] = {0};
            int64_t j = 0;
            for (; j + 8 <= g->ev; j += 8)
                for (int t = 0; t < 8; t++) acc[t] += go[j + t] * y[j + t];
            for (; j < g->ev; j++) acc[0] += go[j] * y[j];
            dsum[row] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                        ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
#pragma omp for schedule(static)
        for (int64_t item = 0; item < g->batch * nkt; item++) {
            int64_t b = item / nkt, k0 = item % nkt * c.bk;
            int64_t cols = g->lk - k0 < c.bk ? g->lk - k0 : c.bk;
            pack_transposed((float *)c.kt + item * g->e * c.bk, c.bk, rows_of(&c.k, b, k0),
                            c.k.ld, cols, g->e, g->scale);
            pack_transposed((float *)c.vt + item * g->ev * c.bk, c.bk, rows_of(&c.v, b, k0),
                            c.v.ld, cols, g->ev, 1.0f);
        }
        float *p = malloc(floats * sizeof(float));
        float *ds = p ? p + c.bq * c.bk : NULL, *shift = p ? ds + c.bq * c.bk : NULL;
        if (!p) {
#pragma omp atomic write
            failed = 1;
        }
        if (sweep) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t b = 0; b < g->batch; b++)
                if (p) batch_grads(&c, b, &gr, p, ds, shift);
        } else {
            if (gr.dk || gr.dv) {
#pragma omp for schedule(dynamic, 1)
                for (int64_t item = 0; item < g->batch * nkt; item++) {
                    int64_t b = item / nkt, k0 = item % nkt * c.bk;
                    int64_t cols = g->lk - k0 < c.bk ? g->lk - k0 : c.bk;
                    if (p) key_tile_grads(&c, b, k0, cols, &gr, p, ds, shift);
                }
            }
            if (gr.dq) {
#pragma omp for schedule(dynamic, 1)
                for (int64_t item = 0; item < g->batch * nqt; item++) {
                    int64_t b = item / nqt, i0 = item % nqt * c.bq;
                    int64_t rows = g->lq - i0 < c.bq ? g->lq - i0 : c.bq;
                    if (p) query_tile_grads(&c, b, i0, rows, &gr, p, ds, shift);
                }
            }
        }
        free(p);
    }
    free(dsum);
    if (failed)
        return dr_fail(DR_ERR_OOM, "scaled_dot_product_attention_backward: cannot allocate "
                       "%zu bytes of tiles", floats * sizeof(float));
    return DR_OK;
}
