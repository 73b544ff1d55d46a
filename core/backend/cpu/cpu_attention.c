/* Scaled dot product attention on the CPU, flash-attention style: the [Lq, Lk]
 * score matrix is never held. Each work item owns a tile of query rows (forward,
 * dQ) or key rows (dK, dV) and streams the other side through one score tile
 * per thread: at most FWD_BK x FWD_BQ floats in the forward, two BWD tiles in the
 * backward, plus the item's own rows transposed.
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
 * Layout: a query-tile item holds its tile transposed, S^T [keys][queries], so
 * the softmax statistics of each query run along contiguous vectors (no
 * horizontal reductions) and Q_i^T is packed once per item; a key-tile item holds
 * S [queries][keys] with K_j^T and V_j^T packed once. Every product is one
 * register-blocked kernel (tile_mm: 6 rows x 16 columns, broadcast-FMA) that
 * reads the unpacked operand with any strides, so P and dS feed the next product
 * in place.
 *
 * Determinism: no float atomics and no reductions split across threads. Pass 1
 * gives each (batch, key tile) its rows of dK and dV, looping over the query
 * tiles in order; pass 2 gives each (batch, query tile) its rows of dQ. Tile sizes
 * depend on the shapes only, so every value is computed by the same sequence of
 * operations whatever the thread count. (The AVX2+FMA and generic builds of the
 * kernels round differently; a machine always picks the same one.) */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_vecmath.h"

enum { FWD_BQ = 64, FWD_BK = 256, BWD_BQ = 64, BWD_BK = 64 };

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
 * register block, mr x nv vectors of accumulators. */
TILE_INLINE void tile_block(const int mr, const int nv, int64_t kd, const float *a, int64_t ars,
                            int64_t acs, const float *b, int64_t ldb, float *c, int64_t ldc,
                            int accumulate) {
    v8f c0[6], c1[6];
    for (int r = 0; r < mr; r++) {
        c0[r] = c1[r] = (v8f){0};
        if (accumulate) c0[r] = load8(c + r * ldc);
        if (accumulate && nv > 1) c1[r] = load8(c + r * ldc + 8);
    }
    for (int64_t k = 0; k < kd; k++) {
        const float *bk = b + k * ldb, *ak = a + k * acs;
        v8f b0 = load8(bk), b1 = b0;
        if (nv > 1) b1 = load8(bk + 8);
        for (int r = 0; r < mr; r++) {
            float x = ak[r * ars];
            v8f ar = {x, x, x, x, x, x, x, x};
            c0[r] += ar * b0;
            if (nv > 1) c1[r] += ar * b1;
        }
    }
    for (int r = 0; r < mr; r++) {
        store8(c + r * ldc, c0[r]);
        if (nv > 1) store8(c + r * ldc + 8, c1[r]);
    }
}

TILE_INLINE void tile_rows(const int nv, int64_t m, int64_t kd, const float *a, int64_t ars,
                           int64_t acs, const float *b, int64_t ldb, float *c, int64_t ldc,
                           int accumulate) {
    int64_t r = 0;
    for (; r + 6 <= m; r += 6)
        tile_block(6, nv, kd, a + r * ars, ars, acs, b, ldb, c + r * ldc, ldc, accumulate);
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
 * row-major (k x n, row stride ldb). Columns past the last multiple of 8 take a
 * scalar loop (only odd head dims reach it). */
TILE_INLINE void tile_mm_body(int64_t m, int64_t n, int64_t kd, const float *a, int64_t ars,
                              int64_t acs, const float *b, int64_t ldb, float *c, int64_t ldc,
                              int accumulate) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) tile_rows(2, m, kd, a, ars, acs, b + j, ldb, c + j, ldc, accumulate);
    for (; j + 8 <= n; j += 8) tile_rows(1, m, kd, a, ars, acs, b + j, ldb, c + j, ldc, accumulate);
    for (; j < n; j++)
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

/* s[j][i] = exp(s[j][i] - shift[i]); sum[i] = sum over j (NULL: not wanted). */
DR_CPU_CLONES
static void col_exp(float *restrict s, int64_t ld, int64_t kn, int64_t n,
                    const float *restrict shift, float *restrict sum) {
    if (sum)
        for (int64_t i = 0; i < n; i++) sum[i] = 0.0f;
    for (int64_t j = 0; j < kn; j++) {
        float *row = s + j * ld;
        if (sum)
            for (int64_t i = 0; i < n; i++) {
                float e = dr_vexpf(row[i] - shift[i]);
                row[i] = e;
                sum[i] += e;
            }
        else
            for (int64_t i = 0; i < n; i++) row[i] = dr_vexpf(row[i] - shift[i]);
    }
}

/* dp[j][i] = p[j][i] (dp[j][i] - d[i]): dS from dP, along columns. */
DR_CPU_CLONES
static void col_dsoftmax(float *restrict dp, const float *restrict p, int64_t ld, int64_t kn,
                         int64_t n, const float *restrict d) {
    for (int64_t j = 0; j < kn; j++)
        for (int64_t i = 0; i < n; i++) dp[j * ld + i] = p[j * ld + i] * (dp[j * ld + i] - d[i]);
}

/* The same along rows: s[r][j] = exp(s[r][j] - shift[r]);  dp = p (dp - d[r]). */
DR_CPU_CLONES
static void row_exp(float *restrict s, int64_t ld, int64_t rows, int64_t n,
                    const float *restrict shift) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) s[r * ld + j] = dr_vexpf(s[r * ld + j] - shift[r]);
}

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

/* A tensor seen by the kernels: element (batch b, row r, col c), last dim stride 1
 * and a row stride >= the row length (ops/attention.c guarantees both). */
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
        col_exp(w->st, w8, kn, w8, w->shift, w->lsum);
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
    const float *lse, *dsum; /* [batch, Lq] */
    int64_t bq, bk;
} bwd_ctx;

/* exp() shift of query row i: L, or +inf for rows that attend nothing (P = 0). */
static float lse_shift(float l) { return l == -INFINITY ? INFINITY : l; }

/* Pass 1: rows k0 .. k0 + cols of dK and dV (batch b), over every query tile. */
static void key_tile_grads(const bwd_ctx *c, int64_t b, int64_t k0, int64_t cols, float *dk,
                           float *dv, float *buf) {
    const geometry *g = &c->g;
    int64_t w8 = round8(cols), bq = c->bq;
    float *kt = buf, *vt = kt + g->e * w8, *p = vt + g->ev * w8, *dp = p + bq * w8;
    float *shift = dp + bq * w8;
    pack_transposed(kt, w8, rows_of(&c->k, b, k0), c->k.ld, cols, g->e, g->scale);
    if (dk) pack_transposed(vt, w8, rows_of(&c->v, b, k0), c->v.ld, cols, g->ev, 1.0f);
    /* causal: query rows before k0 attend none of these keys */
    for (int64_t i0 = c->mk.causal ? k0 / bq * bq : 0; i0 < g->lq; i0 += bq) {
        int64_t rows = g->lq - i0 < bq ? g->lq - i0 : bq;
        int64_t n = c->mk.causal && i0 + rows - k0 < cols ? i0 + rows - k0 : cols;
        if (n <= 0) break; /* causal, and k0 is past the last query row */
        int64_t n8 = round8(n), nreal = n8 < cols ? n8 : cols;
        const float *qi = rows_of(&c->q, b, i0), *doi = rows_of(&c->dout, b, i0);
        tile_mm(rows, n8, g->e, qi, c->q.ld, 1, kt, w8, p, w8, 0);
        mask_tile(&c->mk, b, p, w8, 1, rows, nreal, i0, k0);
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t j = nreal; j < n8; j++) p[r * w8 + j] = -INFINITY; /* padding */
            shift[r] = lse_shift(c->lse[b * g->lq + i0 + r]);
        }
        row_exp(p, w8, rows, n8, shift);
        if (dv) tile_mm(n, g->ev, rows, p, 1, w8, doi, c->dout.ld, dv, g->ev, 1);
        if (dk) {
            tile_mm(rows, n8, g->ev, doi, c->dout.ld, 1, vt, w8, dp, w8, 0);
            row_dsoftmax(dp, p, w8, rows, n8, c->dsum + b * g->lq + i0);
            tile_mm(n, g->e, rows, dp, 1, w8, qi, c->q.ld, dk, g->e, 1);
        }
    }
    if (dk) scale_floats(dk, cols * g->e, g->scale);
}

/* Pass 2: rows i0 .. i0 + rows of dQ (batch b), over every key tile; S^T layout. */
static void query_tile_grads(const bwd_ctx *c, int64_t b, int64_t i0, int64_t rows, float *dq,
                             float *buf) {
    const geometry *g = &c->g;
    int64_t w8 = round8(rows), bk = c->bk;
    float *qt = buf, *dot = qt + g->e * w8, *st = dot + g->ev * w8, *dpt = st + bk * w8;
    float *shift = dpt + bk * w8, *d = shift + w8;
    pack_transposed(qt, w8, rows_of(&c->q, b, i0), c->q.ld, rows, g->e, g->scale);
    pack_transposed(dot, w8, rows_of(&c->dout, b, i0), c->dout.ld, rows, g->ev, 1.0f);
    for (int64_t i = 0; i < w8; i++) {
        shift[i] = i < rows ? lse_shift(c->lse[b * g->lq + i0 + i]) : INFINITY;
        d[i] = i < rows ? c->dsum[b * g->lq + i0 + i] : 0.0f;
    }
    int64_t kend = c->mk.causal && i0 + rows < g->lk ? i0 + rows : g->lk;
    for (int64_t k0 = 0; k0 < kend; k0 += bk) {
        int64_t kn = kend - k0 < bk ? kend - k0 : bk;
        const float *kj = rows_of(&c->k, b, k0);
        tile_mm(kn, w8, g->e, kj, c->k.ld, 1, qt, w8, st, w8, 0);
        mask_tile(&c->mk, b, st, 1, w8, rows, kn, i0, k0);
        col_exp(st, w8, kn, w8, shift, NULL);
        tile_mm(kn, w8, g->ev, rows_of(&c->v, b, k0), c->v.ld, 1, dot, w8, dpt, w8, 0);
        col_dsoftmax(dpt, st, w8, kn, w8, d);
        tile_mm(rows, g->e, kn, dpt, 1, w8, kj, c->k.ld, dq, g->e, 1);
    }
    scale_floats(dq, rows * g->e, g->scale);
}

dr_status dr_cpu_attention_backward(dr_tensor *grad_q, dr_tensor *grad_k, dr_tensor *grad_v,
                                    const dr_tensor *grad_out, const dr_tensor *qt,
                                    const dr_tensor *kt, const dr_tensor *vt,
                                    const dr_tensor *mask, const dr_tensor *out,
                                    const dr_tensor *lse, int causal, double scale) {
    bwd_ctx c = {geometry_of(qt, kt, vt, scale), make_operand(qt), make_operand(kt),
                 make_operand(vt), make_operand(grad_out), {mask, causal}, NULL, NULL, 0, 0};
    const geometry *g = &c.g;
    float *dq_all = grad_q ? (float *)dr_cpu_base(grad_q) + grad_q->storage_offset : NULL;
    float *dk_all = grad_k ? (float *)dr_cpu_base(grad_k) + grad_k->storage_offset : NULL;
    float *dv_all = grad_v ? (float *)dr_cpu_base(grad_v) + grad_v->storage_offset : NULL;
    if (dq_all) memset(dq_all, 0, (size_t)(g->batch * g->lq * g->e) * sizeof(float));
    if (dk_all) memset(dk_all, 0, (size_t)(g->batch * g->lk * g->e) * sizeof(float));
    if (dv_all) memset(dv_all, 0, (size_t)(g->batch * g->lk * g->ev) * sizeof(float));
    if (g->batch == 0 || g->lq == 0 || g->lk == 0) return DR_OK;
    operand o = make_operand(out);
    c.lse = (const float *)dr_cpu_base(lse) + lse->storage_offset;
    c.bq = tile_size(g->lq, BWD_BQ);
    c.bk = tile_size(g->lk, BWD_BK);
    int64_t nqt = (g->lq + c.bq - 1) / c.bq, nkt = (g->lk + c.bk - 1) / c.bk;
    int64_t ed = g->e > g->ev ? g->e : g->ev;
    size_t floats1 = (size_t)(2 * ed * c.bk + 2 * c.bq * c.bk + c.bq);
    size_t floats2 = (size_t)(2 * ed * c.bq + 2 * c.bk * c.bq + 2 * c.bq);
    size_t floats = floats1 > floats2 ? floats1 : floats2;
    float *dsum = malloc((size_t)(g->batch * g->lq) * sizeof(float)); /* D = rowsum(dO * O) */
    if (!dsum)
        return dr_fail(DR_ERR_OOM, "scaled_dot_product_attention_backward: cannot allocate "
                       "%lld floats", (long long)(g->batch * g->lq));
    c.dsum = dsum;
    int failed = 0;
#pragma omp parallel if (g->batch * g->lq * g->lk > DR_CPU_PARALLEL_MIN)
    {
#pragma omp for schedule(static)
        for (int64_t row = 0; row < g->batch * g->lq; row++) {
            const float *gr = rows_of(&c.dout, row / g->lq, row % g->lq);
            const float *y = rows_of(&o, row / g->lq, row % g->lq);
            float acc[8] = {0};
            int64_t j = 0;
            for (; j + 8 <= g->ev; j += 8)
                for (int t = 0; t < 8; t++) acc[t] += gr[j + t] * y[j + t];
            for (; j < g->ev; j++) acc[0] += gr[j] * y[j];
            dsum[row] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                        ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
        float *buf = malloc(floats * sizeof(float));
        if (dk_all || dv_all) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < g->batch * nkt; item++) {
                if (!buf) {
#pragma omp atomic write
                    failed = 1;
                    continue;
                }
                int64_t b = item / nkt, k0 = item % nkt * c.bk;
                int64_t cols = g->lk - k0 < c.bk ? g->lk - k0 : c.bk;
                key_tile_grads(&c, b, k0, cols, dk_all ? dk_all + (b * g->lk + k0) * g->e : NULL,
                               dv_all ? dv_all + (b * g->lk + k0) * g->ev : NULL, buf);
            }
        }
        if (dq_all) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < g->batch * nqt; item++) {
                if (!buf) {
#pragma omp atomic write
                    failed = 1;
                    continue;
                }
                int64_t b = item / nqt, i0 = item % nqt * c.bq;
                int64_t rows = g->lq - i0 < c.bq ? g->lq - i0 : c.bq;
                query_tile_grads(&c, b, i0, rows, dq_all + (b * g->lq + i0) * g->e, buf);
            }
        }
        free(buf);
    }
    free(dsum);
    if (failed)
        return dr_fail(DR_ERR_OOM, "scaled_dot_product_attention_backward: cannot allocate "
                       "%zu bytes of tiles", floats * sizeof(float));
    return DR_OK;
}
