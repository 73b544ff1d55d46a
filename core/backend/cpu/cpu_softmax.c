/* softmax / log_softmax over one dim of a contiguous float32 tensor, forward and
 * backward (formulas in core/ops/softmax.c).
 *
 * The tensor is read as [outer, n, inner] with n the softmax dim. inner == 1 (the
 * last dim, the attention case) runs row by row with vectorised reductions;
 * otherwise a tile of TILE neighbouring columns is reduced together, so the loads
 * along the row stay contiguous. Each row's sums run in one fixed order, so
 * results do not depend on the thread count. */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_vecmath.h"

enum { TILE = 64 };

typedef struct geom {
    int64_t outer, n, inner;
} geom;

static geom geometry(const dr_tensor *t, int32_t dim) {
    geom g = {1, t->ndim ? t->sizes[dim] : 1, 1};
    for (int32_t d = 0; d < dim; d++) g.outer *= t->sizes[d];
    for (int32_t d = dim + 1; d < t->ndim; d++) g.inner *= t->sizes[d];
    return g;
}

/* ---- one contiguous row ------------------------------------------------------ */

/* Rows are short (77 tokens in attention): the exps run in blocks of LANES with
 * a per-lane accumulator, and the tail as one more block padded with -inf (whose
 * exp is 0), so every exp is a vector one and no scalar epilogue remains. */
enum { LANES = 8 };

static inline float row_max(const float *restrict x, int64_t n) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* y[i] = exp(x[i] - m); returns their sum. */
static inline float exp_shifted(float *restrict y, const float *restrict x, int64_t n, float m) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float e = dr_vexpf(x[i + j] - m);
            y[i + j] = e;
            acc[j] += e;
        }
    if (i < n) {
        float t[LANES];
        for (int j = 0; j < LANES; j++) t[j] = i + j < n ? x[i + j] - m : -INFINITY;
        for (int j = 0; j < LANES; j++) {
            t[j] = dr_vexpf(t[j]);
            acc[j] += t[j];
        }
        for (int j = 0; i + j < n; j++) y[i + j] = t[j];
    }
    float s = 0.0f;
    for (int j = 0; j < LANES; j++) s += acc[j];
    return s;
}

DR_CPU_CLONES
static void row_forward(float *restrict y, const float *restrict x, int64_t n, int log) {
    float m = row_max(x, n);
    float s = exp_shifted(y, x, n, m);
    if (log) { /* (x - m) is exact for x near m; adding m to log(s) first would round */
        float ls = logf(s);
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) - ls;
    } else {
        float r = 1.0f / s;
        for (int64_t i = 0; i < n; i++) y[i] *= r;
    }
}

DR_CPU_CLONES
static void row_backward(float *restrict dx, const float *restrict dy, const float *restrict y,
                         int64_t n, int log) {
    float s = 0.0f;
    if (log) {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < n; i++) s += dy[i];
        exp_shifted(dx, y, n, 0.0f);
        for (int64_t i = 0; i < n; i++) dx[i] = dy[i] - dx[i] * s;
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < n; i++) s += dy[i] * y[i];
        for (int64_t i = 0; i < n; i++) dx[i] = y[i] * (dy[i] - s);
    }
}

/* ---- a tile of w columns, each reduced over n rows of stride `inner` --------------- */

DR_CPU_CLONES
static void tile_forward(float *restrict y, const float *restrict x, int64_t n, int64_t inner,
                         int64_t w, int log) {
    float m[TILE], s[TILE];
    for (int64_t j = 0; j < w; j++) {
        m[j] = -INFINITY;
        s[j] = 0.0f;
    }
    for (int64_t k = 0; k < n; k++) {
        const float *xk = x + k * inner;
        for (int64_t j = 0; j < w; j++) m[j] = xk[j] > m[j] ? xk[j] : m[j];
    }
    for (int64_t k = 0; k < n; k++) {
        const float *xk = x + k * inner;
        float *yk = y + k * inner;
        if (log)
            for (int64_t j = 0; j < w; j++) s[j] += dr_vexpf(xk[j] - m[j]);
        else
            for (int64_t j = 0; j < w; j++) {
                yk[j] = dr_vexpf(xk[j] - m[j]);
                s[j] += yk[j];
            }
    }
    for (int64_t j = 0; j < w; j++) s[j] = log ? logf(s[j]) : 1.0f / s[j];
    for (int64_t k = 0; k < n; k++) {
        const float *xk = x + k * inner;
        float *yk = y + k * inner;
        if (log)
            for (int64_t j = 0; j < w; j++) yk[j] = (xk[j] - m[j]) - s[j];
        else
            for (int64_t j = 0; j < w; j++) yk[j] *= s[j];
    }
}

DR_CPU_CLONES
static void tile_backward(float *restrict dx, const float *restrict dy, const float *restrict y,
                          int64_t n, int64_t inner, int64_t w, int log) {
    float s[TILE];
    for (int64_t j = 0; j < w; j++) s[j] = 0.0f;
    for (int64_t k = 0; k < n; k++) {
        const float *dyk = dy + k * inner, *yk = y + k * inner;
        if (log)
            for (int64_t j = 0; j < w; j++) s[j] += dyk[j];
        else
            for (int64_t j = 0; j < w; j++) s[j] += dyk[j] * yk[j];
    }
    for (int64_t k = 0; k < n; k++) {
        const float *dyk = dy + k * inner, *yk = y + k * inner;
        float *dxk = dx + k * inner;
        if (log)
            for (int64_t j = 0; j < w; j++) dxk[j] = dyk[j] - dr_vexpf(yk[j]) * s[j];
        else
            for (int64_t j = 0; j < w; j++) dxk[j] = yk[j] * (dyk[j] - s[j]);
    }
}

#ifdef DR_HAVE_VEXPF8
enum { ROWS_V3 = 4 };

/* row_forward on x86-64-v3 CPUs for `rows` (<= ROWS_V3) consecutive rows, with AVX2
 * intrinsics and dr_vexpf8: the same max (vmaxps keeps the running max for a NaN
 * element, as the compare above), the same exps, lane sums and padded tail, so the
 * same bits (tests/test_vecmath.c compares the two). The rows go through each step
 * together (all maxima, then all exps, then the scaling), so the chains of
 * dependent steps of different rows (max, exp, sum, divide) sit close enough to
 * overlap. The tail block is a masked load and store: the clones' code wrote it
 * float by float and read it back as one vector, which stalls store forwarding.
 * 16x4096x77 on one thread: 6.45 -> 5.2 ms (most of it from the tail). */
DR_V3_FN static void rows_forward_v3(float *y, const float *x, int64_t n, int log, int rows) {
    float m[ROWS_V3], sum[ROWS_V3], lanes[LANES];
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        __m256 mv = _mm256_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + LANES <= n; i += LANES) mv = _mm256_max_ps(_mm256_loadu_ps(xr + i), mv);
        _mm256_storeu_ps(lanes, mv);
        float mr = -INFINITY;
        for (int j = 0; j < LANES; j++) mr = lanes[j] > mr ? lanes[j] : mr;
        for (; i < n; i++) mr = xr[i] > mr ? xr[i] : mr;
        m[r] = mr;
    }
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        const __m256 mm = _mm256_set1_ps(m[r]);
        __m256 acc = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + LANES <= n; i += LANES) {
            __m256 e = dr_vexpf8(_mm256_sub_ps(_mm256_loadu_ps(xr + i), mm));
            _mm256_storeu_ps(yr + i, e);
            acc = _mm256_add_ps(acc, e);
        }
        if (i < n) { /* the tail as one block, -inf (exp 0) past the row's end */
            __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - i)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            __m256 t = _mm256_sub_ps(_mm256_maskload_ps(xr + i, live), mm);
            t = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), t, _mm256_castsi256_ps(live));
            __m256 e = dr_vexpf8(t);
            acc = _mm256_add_ps(acc, e);
            _mm256_maskstore_ps(yr + i, live, e);
        }
        _mm256_storeu_ps(lanes, acc);
        float sr = 0.0f;
        for (int j = 0; j < LANES; j++) sr += lanes[j];
        sum[r] = sr;
    }
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        int64_t i = 0;
        if (log) {
            float ls = logf(sum[r]);
            const __m256 mm = _mm256_set1_ps(m[r]), lsv = _mm256_set1_ps(ls);
            for (; i + LANES <= n; i += LANES)
                _mm256_storeu_ps(yr + i,
                                 _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), mm), lsv));
            for (; i < n; i++) yr[i] = (xr[i] - m[r]) - ls;
        } else {
            float rcp = 1.0f / sum[r];
            const __m256 rv = _mm256_set1_ps(rcp);
            for (; i + LANES <= n; i += LANES)
                _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_loadu_ps(yr + i), rv));
            for (; i < n; i++) yr[i] *= rcp;
        }
    }
}

/* rows_forward_v3 on 16 lanes, for CPUs with AVX-512: the exps of 16 floats at a
 * time (dr_vexpf16, the same bits as dr_vexpf8 on each lane), their two halves
 * added to the same 8-lane sums in the same order (blocks 2k and 2k + 1 of 8);
 * the tail, at most 15 floats, is one masked block of 16 whose -inf lanes add 0.
 * The max is exact in any order (a NaN element is skipped either way), so the
 * same bits again. */
DR_V4_FN static void rows_forward_v4(float *y, const float *x, int64_t n, int log, int rows) {
    float m[ROWS_V3], sum[ROWS_V3], lanes[LANES];
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        __m512 mv = _mm512_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(_mm512_loadu_ps(xr + i), mv);
        if (i < n) {
            __mmask16 live = (__mmask16)((1u << (n - i)) - 1);
            mv = _mm512_max_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live, xr + i), mv);
        }
        m[r] = _mm512_reduce_max_ps(mv);
    }
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        const __m512 mm = _mm512_set1_ps(m[r]);
        __m256 acc = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m512 e = dr_vexpf16(_mm512_sub_ps(_mm512_loadu_ps(xr + i), mm));
            _mm512_storeu_ps(yr + i, e);
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
            acc = _mm256_add_ps(acc, _mm512_extractf32x8_ps(e, 1));
        }
        if (i < n) { /* the tail as one block, -inf (exp 0) past the row's end */
            __mmask16 live = (__mmask16)((1u << (n - i)) - 1);
            __m512 t = _mm512_mask_sub_ps(_mm512_set1_ps(-INFINITY), live,
                                          _mm512_maskz_loadu_ps(live, xr + i), mm);
            __m512 e = dr_vexpf16(t);
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
            acc = _mm256_add_ps(acc, _mm512_extractf32x8_ps(e, 1));
            _mm512_mask_storeu_ps(yr + i, live, e);
        }
        _mm256_storeu_ps(lanes, acc);
        float sr = 0.0f;
        for (int j = 0; j < LANES; j++) sr += lanes[j];
        sum[r] = sr;
    }
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        int64_t i = 0;
        if (log) {
            float ls = logf(sum[r]);
            const __m512 mm = _mm512_set1_ps(m[r]), lsv = _mm512_set1_ps(ls);
            for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(yr + i,
                                 _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + i), mm), lsv));
            if (i < n) {
                __mmask16 live = (__mmask16)((1u << (n - i)) - 1);
                __m512 v = _mm512_maskz_loadu_ps(live, xr + i);
                _mm512_mask_storeu_ps(yr + i, live, _mm512_sub_ps(_mm512_sub_ps(v, mm), lsv));
            }
        } else {
            const __m512 rv = _mm512_set1_ps(1.0f / sum[r]);
            for (; i + 16 <= n; i += 16)
                _mm512_storeu_ps(yr + i, _mm512_mul_ps(_mm512_loadu_ps(yr + i), rv));
            if (i < n) {
                __mmask16 live = (__mmask16)((1u << (n - i)) - 1);
                __m512 v = _mm512_maskz_loadu_ps(live, yr + i);
                _mm512_mask_storeu_ps(yr + i, live, _mm512_mul_ps(v, rv));
            }
        }
    }
}

/* A rows_forward loop against row_forward on 4 rows of 77 and 3 of 16 fixed values,
 * softmax and log_softmax. */
static int softmax_probe_rows(void (*rows_forward)(float *, const float *, int64_t, int, int)) {
    enum { N = 4 * 77 };
    float x[N], a[N], b[N];
    dr_cpu_probe_values(x, N);
    int same = 1;
    for (int log = 0; log < 2; log++) {
        rows_forward(a, x, 77, log, 4);
        for (int r = 0; r < 4; r++) row_forward(b + r * 77, x + r * 77, 77, log);
        same = same && memcmp(a, b, sizeof a) == 0;
        rows_forward(a, x, 16, log, 3);
        for (int r = 0; r < 3; r++) row_forward(b + r * 16, x + r * 16, 16, log);
        same = same && memcmp(a, b, 48 * sizeof(float)) == 0;
    }
    return same;
}

static int softmax_probe(void) { return softmax_probe_rows(rows_forward_v3); }
static int softmax_probe_v4(void) { return softmax_probe_rows(rows_forward_v4); }

int dr_cpu_softmax_v3(void) {
    static int state;
    return dr_cpu_probe(&state, softmax_probe);
}

int dr_cpu_softmax_v4(void) {
    static int state;
    return dr_cpu_use_v4() && dr_cpu_probe(&state, softmax_probe_v4);
}
#else
int dr_cpu_softmax_v3(void) { return 0; }
int dr_cpu_softmax_v4(void) { return 0; }
#endif

/* ---- entry points ------------------------------------------------------------------- */

/* Forward: o = y, a = x, c unused. Backward: o = dx, a = dy, c = y. */
static void run(float *o, const float *a, const float *c, geom g, int log, int back) {
    int64_t total = g.outer * g.n * g.inner;
    if (total == 0) return;
    if (g.inner == 1) {
#ifdef DR_HAVE_VEXPF8
        if (!back && dr_cpu_softmax_v3()) {
            void (*rows_forward)(float *, const float *, int64_t, int, int) =
                dr_cpu_softmax_v4() ? rows_forward_v4 : rows_forward_v3;
            int64_t blocks = (g.outer + ROWS_V3 - 1) / ROWS_V3;
#pragma omp parallel for schedule(static) if (total > DR_CPU_PARALLEL_MIN)
            for (int64_t bi = 0; bi < blocks; bi++) {
                int64_t r0 = bi * ROWS_V3;
                int rows = g.outer - r0 < ROWS_V3 ? (int)(g.outer - r0) : ROWS_V3;
                rows_forward(o + r0 * g.n, a + r0 * g.n, g.n, log, rows);
            }
            return;
        }
#endif
#pragma omp parallel for schedule(static) if (total > DR_CPU_PARALLEL_MIN)
        for (int64_t r = 0; r < g.outer; r++) {
            int64_t off = r * g.n;
            if (back) row_backward(o + off, a + off, c + off, g.n, log);
            else row_forward(o + off, a + off, g.n, log);
        }
        return;
    }
    int64_t tiles = (g.inner + TILE - 1) / TILE, tasks = g.outer * tiles;
#pragma omp parallel for schedule(static) if (total > DR_CPU_PARALLEL_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t r = t / tiles, j0 = (t % tiles) * TILE;
        int64_t w = g.inner - j0 < TILE ? g.inner - j0 : TILE;
        int64_t off = r * g.n * g.inner + j0;
        if (back) tile_backward(o + off, a + off, c + off, g.n, g.inner, w, log);
        else tile_forward(o + off, a + off, g.n, g.inner, w, log);
    }
}

dr_status dr_cpu_softmax(dr_tensor *out, const dr_tensor *in, int32_t dim, int log) {
    run((float *)dr_tensor_data(out), dr_tensor_data(in), NULL, geometry(in, dim), log, 0);
    return DR_OK;
}

dr_status dr_cpu_softmax_backward(dr_tensor *grad_in, const dr_tensor *grad_out,
                                  const dr_tensor *y, int32_t dim, int log) {
    run((float *)dr_tensor_data(grad_in), dr_tensor_data(grad_out), dr_tensor_data(y),
        geometry(y, dim), log, 1);
    return DR_OK;
}
