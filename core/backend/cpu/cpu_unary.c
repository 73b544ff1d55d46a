/* Elementwise unary math on float32, forward and backward (see core/ops/unary.c
 * for the formulas and which of x or y each backward reads).
 *
 * Contiguous operands run in fixed chunks of CHUNK elements, one loop per op the
 * compiler vectorises (cpu_vecmath.h's exp, tanh and erfc; log and pow stay libm
 * calls). Strided operands are gathered a chunk at a time into stack buffers, so
 * the same chunk loops serve every layout. */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_vecmath.h"

enum { CHUNK = 1024 };

static const float SQRT_HALF = 0.70710678118654752f;
static const float INV_SQRT_2PI = 0.39894228040143268f;
static const float GELU_BETA = 0.79788456080286536f; /* sqrt(2/pi) */
static const float GELU_KAPPA = 0.044715f;
static const float QUICK_GELU_ALPHA = 1.702f;

static inline float vsigmoid(float x) { return 1.0f / (1.0f + dr_vexpf(-x)); }

/* gelu's tanh argument; x/2 (1 + tanh u) is computed as x sigmoid(2u), which
 * does not cancel for negative x. Likewise 1 + erf(z) as erfc(-z). */
static inline float gelu_u(float x) { return GELU_BETA * (x + GELU_KAPPA * x * x * x); }

/* min(max(x, lo), hi): NaN fails both compares and passes through; lo > hi
 * gives hi, as torch.clamp. */
static inline float clampf(float x, float lo, float hi) {
    float t = x < lo ? lo : x;
    return t > hi ? hi : t;
}

#define MAP(EXPR)                                                                      \
    do {                                                                               \
        for (int64_t i = 0; i < n; i++) {                                              \
            float x = in[i];                                                           \
            (void)x;                                                                   \
            o[i] = (EXPR);                                                             \
        }                                                                              \
    } while (0)

/* x^e with torch's exact special cases (pow_tensor_scalar_optimized_kernel). */
static void pow_chunk(float *restrict o, const float *restrict in, int64_t n, float e) {
    if (e == 0.0f) MAP(1.0f);
    else if (e == 1.0f) MAP(x);
    else if (e == 2.0f) MAP(x * x);
    else if (e == 3.0f) MAP(x * x * x);
    else if (e == 0.5f) MAP(sqrtf(x));
    else if (e == -0.5f) MAP(1.0f / sqrtf(x));
    else if (e == -1.0f) MAP(1.0f / x);
    else if (e == -2.0f) MAP(1.0f / (x * x));
    else MAP(powf(x, e));
}

/* The loops of every op, inlined into forward_chunk (compiled for x86-64-v3 and
 * baseline: DR_CPU_CLONES) and forward_chunk_v4 (AVX-512) below. */
static inline __attribute__((always_inline)) void
forward_map(dr_unary_op op, float *restrict o, const float *restrict in, int64_t n, float p0,
            float p1) {
    switch (op) {
    case DR_UNARY_SILU: MAP(x / (1.0f + dr_vexpf(-x))); break;
    case DR_UNARY_GELU: MAP(0.5f * x * dr_verfcf(-x * SQRT_HALF)); break;
    case DR_UNARY_GELU_TANH: MAP(x * vsigmoid(2.0f * gelu_u(x))); break;
    case DR_UNARY_QUICK_GELU: MAP(x / (1.0f + dr_vexpf(-QUICK_GELU_ALPHA * x))); break;
    case DR_UNARY_RELU: MAP(x < 0.0f ? 0.0f : x); break;
    case DR_UNARY_SIGMOID: MAP(vsigmoid(x)); break;
    case DR_UNARY_TANH: MAP(dr_vtanhf(x)); break;
    case DR_UNARY_EXP: MAP(dr_vexpf(x)); break;
    case DR_UNARY_LOG: MAP(logf(x)); break;
    case DR_UNARY_SQRT: MAP(sqrtf(x)); break;
    case DR_UNARY_RSQRT: MAP(1.0f / sqrtf(x)); break;
    case DR_UNARY_ABS: MAP(fabsf(x)); break;
    case DR_UNARY_NEG: MAP(-x); break;
    case DR_UNARY_POW: pow_chunk(o, in, n, p0); break;
    case DR_UNARY_CLAMP: MAP(clampf(x, p0, p1)); break;
    default: break;
    }
}

/* g: grad_out, s: the saved x or y. */
#define MAP2(EXPR)                                                                     \
    do {                                                                               \
        for (int64_t i = 0; i < n; i++) {                                              \
            float g = go[i], s = sv[i];                                                \
            (void)s;                                                                   \
            o[i] = (EXPR);                                                             \
        }                                                                              \
    } while (0)

/* With q = sigmoid(2u): (1 + tanh u)/2 = q and 1 - tanh^2 u = 4 q (1 - q). */
static inline float gelu_tanh_grad(float s) {
    float q = vsigmoid(2.0f * gelu_u(s));
    return q + 2.0f * s * q * (1.0f - q) * GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * s * s);
}

static inline float silu_grad(float s, float a) { /* d/ds s*sigmoid(a s) */
    float sg = vsigmoid(a * s);
    return sg + a * s * sg * (1.0f - sg);
}

static inline __attribute__((always_inline)) void
backward_map(dr_unary_op op, float *restrict o, const float *restrict go,
             const float *restrict sv, int64_t n, float p0, float p1) {
    switch (op) {
    case DR_UNARY_SILU: MAP2(g * silu_grad(s, 1.0f)); break;
    case DR_UNARY_GELU:
        MAP2(g * (0.5f * dr_verfcf(-s * SQRT_HALF) + s * INV_SQRT_2PI * dr_vexpf(-0.5f * s * s)));
        break;
    case DR_UNARY_GELU_TANH: MAP2(g * gelu_tanh_grad(s)); break;
    case DR_UNARY_QUICK_GELU: MAP2(g * silu_grad(s, QUICK_GELU_ALPHA)); break;
    case DR_UNARY_RELU: MAP2(s > 0.0f ? g : 0.0f); break;
    case DR_UNARY_SIGMOID: MAP2(g * s * (1.0f - s)); break;
    case DR_UNARY_TANH: MAP2(g * (1.0f - s * s)); break;
    case DR_UNARY_EXP: MAP2(g * s); break;
    case DR_UNARY_LOG: MAP2(g / s); break;
    case DR_UNARY_SQRT: MAP2(g / (2.0f * s)); break;
    case DR_UNARY_RSQRT: MAP2(-0.5f * g * s * s * s); break;
    case DR_UNARY_ABS: MAP2(s > 0.0f ? g : s < 0.0f ? -g : 0.0f); break;
    case DR_UNARY_NEG: MAP2(-g); break;
    case DR_UNARY_POW: /* e x^(e-1), and 0 for e = 0 (torch's pow_backward) */
        if (p0 == 0.0f) {
            for (int64_t i = 0; i < n; i++) o[i] = 0.0f;
        } else {
            pow_chunk(o, sv, n, p0 - 1.0f);
            for (int64_t i = 0; i < n; i++) o[i] = go[i] * p0 * o[i];
        }
        break;
    case DR_UNARY_CLAMP: MAP2(s >= p0 && s <= p1 ? g : 0.0f); break;
    default: break;
    }
}

DR_CPU_CLONES
static void forward_chunk(dr_unary_op op, float *restrict o, const float *restrict in, int64_t n,
                          float p0, float p1) {
    forward_map(op, o, in, n, p0, p1);
}

DR_CPU_CLONES
static void backward_chunk(dr_unary_op op, float *restrict o, const float *restrict go,
                           const float *restrict sv, int64_t n, float p0, float p1) {
    backward_map(op, o, go, sv, n, p0, p1);
}

#ifdef DR_HAVE_VEXPF8
/* The same loops compiled for x86-64-v4: GCC vectorises them on 16 lanes with the
 * same operations per element (the same contractions: it is the same code), so
 * they give the clones' bits in about half the time where the chain of an
 * element's steps is long (gelu: 1.27 -> 0.85 ns an element on Zen 4). Used where
 * the CPU has AVX-512, dr_cpu_intrinsics is 2, and a probe of every op finds the
 * two equal (dr_cpu_unary_v4). */
__attribute__((target("arch=x86-64-v4"), noinline)) static void
forward_chunk_v4(dr_unary_op op, float *restrict o, const float *restrict in, int64_t n, float p0,
                 float p1) {
    forward_map(op, o, in, n, p0, p1);
}

__attribute__((target("arch=x86-64-v4"), noinline)) static void
backward_chunk_v4(dr_unary_op op, float *restrict o, const float *restrict go,
                  const float *restrict sv, int64_t n, float p0, float p1) {
    backward_map(op, o, go, sv, n, p0, p1);
}

/* Every op forward and backward, both compilations, on the probe's values (and
 * exponents / bounds that take pow's and clamp's general paths). */
static int unary_probe_v4(void) {
    enum { N = 1024 };
    static const float params[][2] = {{0, 0}, {2.5f, 0}, {-0.5f, 0}, {-1.0f, 2.0f}};
    float x[N], y[N], g[N], a[N], b[N];
    dr_cpu_probe_values(x, N);
    for (int i = 0; i < N; i++) {
        g[i] = 0.3f * x[(i * 7) % N];
        y[i] = x[i] < 0 ? -x[i] : x[i]; /* positive saved values (log, sqrt) */
    }
    for (int op = 0; op < DR_NUM_UNARY_OPS; op++)
        for (int k = 0; k < 4; k++) {
            float p0 = params[k][0], p1 = params[k][1];
            const float *in = k == 0 ? x : y;
            forward_chunk_v4((dr_unary_op)op, a, in, N, p0, p1);
            forward_chunk((dr_unary_op)op, b, in, N, p0, p1);
            if (memcmp(a, b, sizeof a) != 0) return 0;
            backward_chunk_v4((dr_unary_op)op, a, g, in, N, p0, p1);
            backward_chunk((dr_unary_op)op, b, g, in, N, p0, p1);
            if (memcmp(a, b, sizeof a) != 0) return 0;
        }
    return 1;
}

int dr_cpu_unary_v4(void) {
    static int state;
    return dr_cpu_use_v4() && dr_cpu_probe(&state, unary_probe_v4);
}
#else
int dr_cpu_unary_v4(void) { return 0; }
#endif

#ifdef DR_HAVE_VEXPF8
/* silu forward and backward for the first n8 = n / 8 * 8 elements on x86-64-v3
 * CPUs, with dr_vexpf8: the operations of the clones' v3 code above, in its order
 * and with its one fused step (1 + exp(-x) as fma(p 2^k1, 2^k2, 1), as GCC
 * contracts it there), so the same bits (tests/test_vecmath.c compares the two on
 * every 61st float pattern; a NaN's sign bit may differ); silu runs 1.3x faster. */
DR_V3_FN static void silu_forward_v3(float *o, const float *in, int64_t n8) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n8; i += 8) {
        __m256 x = _mm256_loadu_ps(in + i), s2;
        __m256 ps1 = dr_vexpf8_parts(_mm256_xor_ps(x, neg), &s2);
        _mm256_storeu_ps(o + i, _mm256_div_ps(x, _mm256_fmadd_ps(ps1, s2, one)));
    }
}

/* g (sg + (s sg) (1 - sg)), sg = 1 / (1 + exp(-s)): silu_grad(s, 1). */
DR_V3_FN static void silu_backward_v3(float *o, const float *go, const float *sv, int64_t n8) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n8; i += 8) {
        __m256 s = _mm256_loadu_ps(sv + i), s2;
        __m256 ps1 = dr_vexpf8_parts(_mm256_xor_ps(s, neg), &s2);
        __m256 sg = _mm256_div_ps(one, _mm256_fmadd_ps(ps1, s2, one));
        __m256 d = _mm256_add_ps(sg, _mm256_mul_ps(_mm256_mul_ps(s, sg), _mm256_sub_ps(one, sg)));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(go + i), d));
    }
}

/* A pair of hand-written loops for op against the compiled ones on 1024 fixed
 * values (a multiple of 8 and of 16). */
static int probe_pair(dr_unary_op op, void (*fwd)(float *, const float *, int64_t),
                      void (*bwd)(float *, const float *, const float *, int64_t)) {
    enum { N = 1024 };
    float x[N], g[N], a[N], b[N];
    dr_cpu_probe_values(x, N);
    for (int i = 0; i < N; i++) g[i] = 0.3f * x[(i * 7) % N];
    fwd(a, x, N);
    forward_chunk(op, b, x, N, 0, 0);
    int same = memcmp(a, b, sizeof a) == 0;
    bwd(a, g, x, N);
    backward_chunk(op, b, g, x, N, 0, 0);
    return same && memcmp(a, b, sizeof a) == 0;
}

static int silu_probe(void) {
    return probe_pair(DR_UNARY_SILU, silu_forward_v3, silu_backward_v3);
}

int dr_cpu_silu_v3(void) {
    static int state;
    return dr_cpu_probe(&state, silu_probe);
}

/* The two loops again on 16 lanes (AVX-512): the same operations per lane, so the
 * same bits (tests/test_vecmath.c compares them too). On Zen 4 the backward runs
 * 1.4x faster than on 8 lanes: the 8-lane loop is short of out-of-order window. */
DR_V4_FN static void silu_forward_v4(float *o, const float *in, int64_t n16) {
    const __m512 one = _mm512_set1_ps(1.0f), neg = _mm512_set1_ps(-0.0f);
    for (int64_t i = 0; i < n16; i += 16) {
        __m512 x = _mm512_loadu_ps(in + i), s2;
        __m512 ps1 = dr_vexpf16_parts(_mm512_xor_ps(x, neg), &s2);
        _mm512_storeu_ps(o + i, _mm512_div_ps(x, _mm512_fmadd_ps(ps1, s2, one)));
    }
}

DR_V4_FN static void silu_backward_v4(float *o, const float *go, const float *sv, int64_t n16) {
    const __m512 one = _mm512_set1_ps(1.0f), neg = _mm512_set1_ps(-0.0f);
    for (int64_t i = 0; i < n16; i += 16) {
        __m512 s = _mm512_loadu_ps(sv + i), s2;
        __m512 ps1 = dr_vexpf16_parts(_mm512_xor_ps(s, neg), &s2);
        __m512 sg = _mm512_div_ps(one, _mm512_fmadd_ps(ps1, s2, one));
        __m512 d = _mm512_add_ps(sg, _mm512_mul_ps(_mm512_mul_ps(s, sg), _mm512_sub_ps(one, sg)));
        _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(go + i), d));
    }
}

static int silu_probe_v4(void) {
    return probe_pair(DR_UNARY_SILU, silu_forward_v4, silu_backward_v4);
}

int dr_cpu_silu_v4(void) {
    static int state;
    return dr_cpu_use_v4() && dr_cpu_probe(&state, silu_probe_v4);
}

/* Exact gelu forward and backward on 16 lanes (AVX-512): forward_map's and
 * backward_map's operations in GCC's order and contractions, with dr_verfcf16 and
 * dr_vexpf16 (2^k as one vscalefps), so the same bits (tests/test_vecmath.c
 * compares them on every 61st float pattern), 1.2x faster than GCC's AVX-512
 * compilation of those loops (2x4096x1280 on one thread: 9.1 -> 7.5 ms forward). */
DR_V4_FN static void gelu_forward_v4(float *o, const float *in, int64_t n16) {
    const __m512 half = _mm512_set1_ps(0.5f), c = _mm512_set1_ps(-SQRT_HALF);
    for (int64_t i = 0; i < n16; i += 16) {
        __m512 x = _mm512_loadu_ps(in + i);
        __m512 e = dr_verfcf16(_mm512_mul_ps(x, c));
        _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_mul_ps(x, half), e));
    }
}

/* g (erfc(-s/sqrt 2) / 2 + s exp(-s^2/2) / sqrt(2 pi)), the halving fused into
 * the sum (as GCC contracts it) */
DR_V4_FN static void gelu_backward_v4(float *o, const float *go, const float *sv, int64_t n16) {
    const __m512 half = _mm512_set1_ps(0.5f), c = _mm512_set1_ps(-SQRT_HALF);
    const __m512 mhalf = _mm512_set1_ps(-0.5f), k = _mm512_set1_ps(INV_SQRT_2PI);
    for (int64_t i = 0; i < n16; i += 16) {
        __m512 s = _mm512_loadu_ps(sv + i);
        __m512 e = dr_verfcf16(_mm512_mul_ps(s, c));
        __m512 d = dr_vexpf16(_mm512_mul_ps(_mm512_mul_ps(s, mhalf), s));
        d = _mm512_fmadd_ps(e, half, _mm512_mul_ps(_mm512_mul_ps(s, k), d));
        _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_loadu_ps(go + i), d));
    }
}

static int gelu_probe_v4(void) {
    return probe_pair(DR_UNARY_GELU, gelu_forward_v4, gelu_backward_v4);
}

int dr_cpu_gelu_v4(void) {
    static int state;
    return dr_cpu_use_v4() && dr_cpu_probe(&state, gelu_probe_v4);
}
#else
int dr_cpu_silu_v3(void) { return 0; }
int dr_cpu_silu_v4(void) { return 0; }
int dr_cpu_gelu_v4(void) { return 0; }
#endif

#ifdef DR_HAVE_VEXPF8
/* op's hand-written 16-lane loops, where the CPU runs them; else both NULL */
typedef struct loops16 {
    void (*fwd)(float *, const float *, int64_t);
    void (*bwd)(float *, const float *, const float *, int64_t);
} loops16;

static loops16 hand_loops_v4(dr_unary_op op) {
    if (op == DR_UNARY_SILU && dr_cpu_silu_v4()) return (loops16){silu_forward_v4, silu_backward_v4};
    if (op == DR_UNARY_GELU && dr_cpu_gelu_v4()) return (loops16){gelu_forward_v4, gelu_backward_v4};
    return (loops16){NULL, NULL};
}
#endif

/* forward_chunk / backward_chunk, or the hand-written silu and gelu loops where the
 * CPU runs them */
static void forward_any(dr_unary_op op, float *o, const float *in, int64_t n, float p0, float p1) {
#ifdef DR_HAVE_VEXPF8
    loops16 v4 = hand_loops_v4(op);
    if (v4.fwd) {
        int64_t n16 = n / 16 * 16;
        v4.fwd(o, in, n16);
        o += n16, in += n16, n -= n16;
    }
    if (op == DR_UNARY_SILU && n >= 8 && dr_cpu_silu_v3()) {
        int64_t n8 = n / 8 * 8;
        silu_forward_v3(o, in, n8);
        o += n8, in += n8, n -= n8;
    }
    if (n > 0 && dr_cpu_unary_v4()) { /* the rest: the clones' code, compiled for v4 */
        forward_chunk_v4(op, o, in, n, p0, p1);
        return;
    }
#endif
    if (n > 0) forward_chunk(op, o, in, n, p0, p1);
}

static void backward_any(dr_unary_op op, float *o, const float *go, const float *sv, int64_t n,
                         float p0, float p1) {
#ifdef DR_HAVE_VEXPF8
    loops16 v4 = hand_loops_v4(op);
    if (v4.bwd) {
        int64_t n16 = n / 16 * 16;
        v4.bwd(o, go, sv, n16);
        o += n16, go += n16, sv += n16, n -= n16;
    }
    if (op == DR_UNARY_SILU && n >= 8 && dr_cpu_silu_v3()) {
        int64_t n8 = n / 8 * 8;
        silu_backward_v3(o, go, sv, n8);
        o += n8, go += n8, sv += n8, n -= n8;
    }
    if (n > 0 && dr_cpu_unary_v4()) { /* the rest: the clones' code, compiled for v4 */
        backward_chunk_v4(op, o, go, sv, n, p0, p1);
        return;
    }
#endif
    if (n > 0) backward_chunk(op, o, go, sv, n, p0, p1);
}

/* Elements [j, j+len) of a strided row: the row itself when its stride is 1, else
 * a copy in buf. */
static inline const float *gather(const float *base, int64_t off, int64_t stride, int64_t j,
                                  int64_t len, float *buf) {
    if (stride == 1) return base + off + j;
    for (int64_t i = 0; i < len; i++) buf[i] = base[off + (j + i) * stride];
    return buf;
}

/* Runs forward (nops 2: out, in) or backward (nops 3: out, grad_out, saved). */
static void run(dr_unary_op op, int32_t nops, const dr_tensor *const *ts, float p0, float p1) {
    dr_iter it;
    dr_iter_init(&it, nops, ts);
    float *o = (float *)dr_cpu_base(ts[0]);
    const float *a = (const float *)dr_cpu_base(ts[1]);
    const float *b = nops > 2 ? (const float *)dr_cpu_base(ts[2]) : NULL;
    int32_t last = it.ndim - 1;
    int64_t so = it.strides[0][last], sa = it.strides[1][last];
    int64_t sb = nops > 2 ? it.strides[2][last] : 1;
    int64_t total = it.rows * it.inner;

    if (it.ndim == 1 && so == 1 && sa == 1 && sb == 1) {
        int64_t nchunks = (total + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (total > DR_CPU_PARALLEL_MIN)
        for (int64_t c = 0; c < nchunks; c++) {
            int64_t j = c * CHUNK, len = total - j < CHUNK ? total - j : CHUNK;
            float *po = o + it.base[0] + j;
            if (nops == 2) forward_any(op, po, a + it.base[1] + j, len, p0, p1);
            else backward_any(op, po, a + it.base[1] + j, b + it.base[2] + j, len, p0, p1);
        }
        return;
    }
#pragma omp parallel for schedule(static) if (total > DR_CPU_PARALLEL_MIN)
    for (int64_t r = 0; r < it.rows; r++) {
        float bufa[CHUNK], bufb[CHUNK], bufo[CHUNK];
        int64_t off[3];
        dr_iter_row(&it, r, off);
        for (int64_t j = 0; j < it.inner; j += CHUNK) {
            int64_t len = it.inner - j < CHUNK ? it.inner - j : CHUNK;
            const float *pa = gather(a, off[1], sa, j, len, bufa);
            float *po = so == 1 ? o + off[0] + j : bufo;
            if (nops == 2) forward_any(op, po, pa, len, p0, p1);
            else backward_any(op, po, pa, gather(b, off[2], sb, j, len, bufb), len, p0, p1);
            if (so != 1)
                for (int64_t i = 0; i < len; i++) o[off[0] + (j + i) * so] = bufo[i];
        }
    }
}

dr_status dr_cpu_unary(dr_unary_op op, dr_tensor *out, const dr_tensor *in, double p0,
                       double p1) {
    const dr_tensor *ts[2] = {out, in};
    run(op, 2, ts, (float)p0, (float)p1);
    return DR_OK;
}

dr_status dr_cpu_unary_backward(dr_unary_op op, dr_tensor *grad_in, const dr_tensor *grad_out,
                                const dr_tensor *saved, double p0, double p1) {
    const dr_tensor *ts[3] = {grad_in, grad_out, saved};
    run(op, 3, ts, (float)p0, (float)p1);
    return DR_OK;
}
