/* The hand-written AVX2 + FMA loops of the CPU backend give the same bits as the
 * compiler-vectorised code they stand in for:
 * - dr_vexpf8 (core/backend/cpu/cpu_vecmath.h) against dr_vexpf compiled for the
 *   same CPU level, on every 61st float bit pattern (all exponents, both signs,
 *   NaNs, infinities) and on the edges of its clamps (the whole 2^32 range was
 *   compared once by hand: 0 mismatches), in builds where the library's probes
 *   found the two equal (optimised GCC); else its accuracy;
 * - dr_vexpf16 (2^k as one vscalefps) against dr_vexpf likewise, on CPUs with AVX-512;
 * - silu and exact gelu forward and backward on the same bit patterns, every unary op forward
 *   and backward on every 997th pattern (their AVX-512 compilation), attention forward and
 *   backward on several shapes (odd sizes, masks, causal), and softmax / log_softmax
 *   over rows of several lengths (-inf and NaN entries), through the public ops
 *   with dr_cpu_intrinsics at 2 (silu's, gelu's and softmax's AVX-512 loops, where the
 *   CPU has them) and 1 (AVX2 only), each against 0 (the clones' loops); NaN results
 *   match as NaN (their sign bit may differ).
 * On a CPU that is not x86-64-v3, or a compiler without the intrinsics, it says so
 * and checks nothing else. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/cpu_vecmath.h"

static const dr_device CPU = {DR_CPU, 0};

#ifdef DR_HAVE_VEXPF8
__attribute__((target("avx2,fma"), noinline)) static void vexp8(const float *x, float *out) {
    _mm256_storeu_ps(out, dr_vexpf8(_mm256_loadu_ps(x)));
}

DR_V4_FN __attribute__((noinline)) static void vexp16(const float *x, float *out) {
    _mm512_storeu_ps(out, dr_vexpf16(_mm512_loadu_ps(x)));
}

/* dr_vexpf8 (lanes 8) or dr_vexpf16 (lanes 16, 2^k by vscalefps) on x against
 * dr_vexpf compiled here with the clones' contractions; returns how many lanes differ
 * (bit for bit, NaNs included). */
__attribute__((target("avx2,fma"), noinline)) static int compare(const float *x, int lanes) {
    float vec[16], ref[16];
    if (lanes == 16) vexp16(x, vec);
    else vexp8(x, vec);
    for (int i = 0; i < lanes; i++) ref[i] = dr_vexpf(x[i]);
    int bad = 0;
    for (int i = 0; i < lanes; i++)
        if (memcmp(&vec[i], &ref[i], 4) != 0) {
            if (bad == 0)
                fprintf(stderr, "exp(%a): dr_vexpf%d %a, dr_vexpf %a\n", x[i], lanes, vec[i],
                        ref[i]);
            bad++;
        }
    return bad;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* dr_vexpf8 equals dr_vexpf as this file's compiler built it, where the library's
 * probe found its compiled loops equal to the intrinsics (an optimised GCC build);
 * otherwise (a Debug build rounds the compiled loops differently) it is within
 * 2 ulp of exp in double, as dr_vexpf is. */
static void test_sampled_patterns(void) {
    int identical = dr_cpu_attention_v3();
    int64_t bad = 0, n = 0, far = 0;
    float x[8], vec[8];
    for (uint64_t u = 0; u < (1ull << 32); u += 61 * 8) {
        for (int i = 0; i < 8; i++) x[i] = from_bits((uint32_t)(u + 61 * (uint64_t)i));
        if (identical) {
            bad += compare(x, 8);
        } else {
            vexp8(x, vec);
            for (int i = 0; i < 8; i++) {
                if (!(x[i] > -87.0f && x[i] < 88.0f)) continue; /* normal results only */
                double want = exp((double)x[i]);
                far += fabs(vec[i] - want) > 2.5e-7 * want;
            }
        }
        n += 8;
    }
    fprintf(stderr, "dr_vexpf8 on %lld floats: %s, %lld differ\n", (long long)n,
            identical ? "bit for bit against dr_vexpf" : "within 2 ulp of exp",
            (long long)(identical ? bad : far));
    CHECK(bad == 0 && far == 0);
    if (identical && dr_cpu_use_v4()) { /* the 16-lane exp with vscalefps, likewise */
        int64_t bad16 = 0;
        for (uint64_t u = 0; u < (1ull << 32); u += 61 * 16) {
            float x16[16];
            for (int i = 0; i < 16; i++) x16[i] = from_bits((uint32_t)(u + 61 * (uint64_t)i));
            bad16 += compare(x16, 16);
        }
        fprintf(stderr, "dr_vexpf16 on as many floats: %lld differ\n", (long long)bad16);
        CHECK(bad16 == 0);
    }
}

static void test_edges(void) {
    const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN, -NAN,
                           -104.0f, -103.97f, -103.9f, -87.33f, -87.3f, -88.0f, -150.0f,
                           88.72f, 88.73f, 89.0f, 89.01f, 1e-30f, -1e-30f, 0.5f, 1e30f,
                           -1e30f, 0.693359375f, -0.34657359f, 0.34657359f, 12582912.0f};
    int n = (int)(sizeof edges / sizeof edges[0]);
    int bad = 0;
    for (int lanes = 8; lanes <= 16; lanes += 8) {
        if (!dr_cpu_attention_v3() || (lanes == 16 && !dr_cpu_use_v4())) continue;
        for (int i = 0; i < n; i += lanes) {
            float x[16];
            for (int j = 0; j < lanes; j++) x[j] = edges[(i + j) % n];
            bad += compare(x, lanes);
        }
    }
    CHECK(bad == 0);
    /* what the attention relies on: masked scores (-inf) give 0, NaN stays NaN */
    float v[8] = {-INFINITY, 0.0f, 1.0f, NAN, 89.0f, -104.0f, -1.0f, 2.0f}, out[8];
    vexp8(v, out);
    CHECK(out[0] == 0.0f);
    CHECK(out[1] == 1.0f);
    CHECK_NEAR(out[2], 2.718281828, 1e-6);
    CHECK(isnan(out[3]));
    CHECK(isinf(out[4]) && out[4] > 0);
    CHECK(out[5] == 0.0f);
    CHECK_NEAR(out[6], 0.367879441, 1e-7);
    CHECK_NEAR(out[7], 7.389056099, 1e-5);
}

/* Runs f with the intrinsics on and off; both results must be bit-identical. */
typedef dr_status (*op_fn)(dr_tensor *const *in, dr_tensor **out, int nout, const void *ctx);

/* Bit for bit, except that any two NaNs match: a NaN input's result is NaN in both,
 * but its sign bit may differ (silu's backward negates x with a sign flip where the
 * clones fold the minus sign into a constant). */
static int same_or_nan(const float *a, const float *b) {
    return memcmp(a, b, 4) == 0 || (isnan(*a) && isnan(*b));
}

static int same_bits(const dr_tensor *a, const dr_tensor *b) {
    int64_t n = dr_tensor_numel(a);
    if (n != dr_tensor_numel(b)) return 0;
    const float *x = dr_tensor_data(a), *y = dr_tensor_data(b);
    for (int64_t i = 0; i < n; i++)
        if (!same_or_nan(x + i, y + i)) return 0;
    return 1;
}

/* Levels of dr_cpu_intrinsics: the AVX-512 loops where the CPU has them, the AVX2
 * loops alone, and the compiled loops (the reference). */
static const int levels[] = {2, 1};
static const char *const level_names[] = {"AVX-512 where present", "AVX2"};

static void compare_on_off(const char *what, op_fn f, dr_tensor *const *in, int nout,
                           const void *ctx) {
    int saved = dr_cpu_intrinsics;
    dr_tensor *off[4] = {NULL};
    dr_cpu_intrinsics = 0;
    int ok = CHECK_OK(f(in, off, nout, ctx));
    for (int l = 0; l < 2; l++) {
        dr_tensor *on[4] = {NULL};
        dr_cpu_intrinsics = levels[l];
        int ok_on = CHECK_OK(f(in, on, nout, ctx)) && ok;
        for (int i = 0; ok_on && i < nout; i++)
            if (!CHECK(same_bits(on[i], off[i]))) {
                const float *a = dr_tensor_data(on[i]), *b = dr_tensor_data(off[i]);
                const float *x = dr_tensor_data(in[0]);
                int64_t j = 0, n = dr_tensor_numel(on[i]);
                while (j < n && same_or_nan(a + j, b + j)) j++;
                fprintf(stderr, "%s (%s loops): output %d differs at %lld (input %a): %a, "
                        "compiled loops %a\n", what, level_names[l], i, (long long)j,
                        x[j % dr_tensor_numel(in[0])], a[j], b[j]);
            }
        for (int i = 0; i < nout; i++) dr_tensor_release(on[i]);
    }
    dr_cpu_intrinsics = saved;
    for (int i = 0; i < nout; i++) dr_tensor_release(off[i]);
}

/* op (silu or gelu) forward and backward */
static dr_status op_both(dr_tensor *const *in, dr_tensor **out, int nout, const void *ctx) {
    int32_t op = *(const int32_t *)ctx;
    (void)nout;
    dr_status st = dr_unary(op, in[0], &out[0]);
    if (st == DR_OK) st = dr_unary_backward(op, in[1], in[0], out[0], &out[1]);
    return st;
}

/* op on every 61st bit pattern, 2^20 at a time (odd lengths at the end: the
 * tails take the clones' loops in both runs) */
static void test_every_61st(int32_t op) {
    const int64_t chunk = 1 << 20;
    uint64_t u = 0;
    while (u < (1ull << 32)) {
        int64_t n = (int64_t)(((1ull << 32) - u + 60) / 61);
        if (n > chunk) n = chunk;
        dr_tensor *x = NULL, *g = NULL;
        int64_t sz = n;
        if (!CHECK_OK(dr_tensor_empty(&sz, 1, DR_F32, CPU, &x)) ||
            !CHECK_OK(dr_tensor_empty(&sz, 1, DR_F32, CPU, &g)))
            return;
        float *xv = dr_tensor_data(x), *gv = dr_tensor_data(g);
        for (int64_t i = 0; i < n; i++, u += 61) {
            xv[i] = from_bits((uint32_t)u);
            gv[i] = (float)((i % 7) - 3) * 0.37f;
        }
        dr_tensor *in[2] = {x, g};
        compare_on_off(dr_unary_name(op), op_both, in, 2, &op);
        dr_tensor_release(x);
        dr_tensor_release(g);
    }
}

/* Every unary op (pow and clamp with parameters that take their general paths),
 * forward and backward, on every 997th bit pattern: the AVX-512 compilation of the
 * loops (level 2, where the CPU has it) and the AVX2 one against the clones. */
typedef struct unary_case {
    int32_t op;
    double p0, p1;
} unary_case;

static dr_status unary_both(dr_tensor *const *in, dr_tensor **out, int nout, const void *ctx) {
    const unary_case *c = ctx;
    (void)nout;
    dr_status st;
    if (c->op == DR_UNARY_POW) {
        st = dr_pow_scalar(in[0], c->p0, &out[0]);
        if (st == DR_OK) st = dr_pow_scalar_backward(in[1], in[0], c->p0, &out[1]);
    } else if (c->op == DR_UNARY_CLAMP) {
        st = dr_clamp(in[0], c->p0, c->p1, &out[0]);
        if (st == DR_OK) st = dr_clamp_backward(in[1], in[0], c->p0, c->p1, &out[1]);
    } else {
        st = dr_unary(c->op, in[0], &out[0]);
        if (st == DR_OK) st = dr_unary_backward(c->op, in[1], in[0], out[0], &out[1]);
    }
    return st;
}

static void test_unary_ops(void) {
    enum { STRIDE = 997 };
    int64_t n = (int64_t)((1ull << 32) / STRIDE) + 1;
    dr_tensor *x = NULL, *g = NULL;
    if (!CHECK_OK(dr_tensor_empty(&n, 1, DR_F32, CPU, &x)) ||
        !CHECK_OK(dr_tensor_empty(&n, 1, DR_F32, CPU, &g)))
        return;
    float *xv = dr_tensor_data(x), *gv = dr_tensor_data(g);
    for (int64_t i = 0; i < n; i++) {
        xv[i] = from_bits((uint32_t)((uint64_t)i * STRIDE));
        gv[i] = (float)((i % 7) - 3) * 0.37f;
    }
    dr_tensor *in[2] = {x, g};
    for (int32_t op = 0; op < DR_NUM_UNARY_OPS; op++) {
        unary_case c = {op, 0, 0};
        if (op == DR_UNARY_POW) c.p0 = 2.5;
        if (op == DR_UNARY_CLAMP) c.p0 = -1.0, c.p1 = 2.0;
        compare_on_off(dr_unary_name(op), unary_both, in, 2, &c);
    }
    dr_tensor_release(x);
    dr_tensor_release(g);
}

typedef struct att_case {
    int64_t b, lq, lk, e;
    int causal, masked;
} att_case;

static dr_status attention_both(dr_tensor *const *in, dr_tensor **out, int nout, const void *ctx) {
    const att_case *c = ctx;
    (void)nout;
    dr_status st = dr_scaled_dot_product_attention(in[0], in[1], in[2], in[4], c->causal, 0,
                                                   &out[0]);
    if (st == DR_OK)
        st = dr_scaled_dot_product_attention_backward(in[3], in[0], in[1], in[2], in[4],
                                                      c->causal, 0, NULL, NULL, &out[1],
                                                      &out[2], &out[3]);
    return st;
}

static void test_attention(void) {
    const att_case cases[] = {{2, 1024, 1024, 64, 0, 0}, {3, 77, 130, 40, 0, 1},
                              {1, 300, 77, 24, 1, 0}, {2, 65, 200, 33, 0, 0},
                              {1, 5, 7, 3, 1, 0},     {1, 513, 1000, 64, 0, 1}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const att_case *c = &cases[ci];
        int64_t qs[3] = {c->b, c->lq, c->e}, ks[3] = {c->b, c->lk, c->e};
        int64_t ms[2] = {c->lq, c->lk};
        dr_tensor *t[5] = {NULL};
        int ok = CHECK_OK(dr_randn(qs, 3, DR_F32, CPU, NULL, &t[0])) &&
                 CHECK_OK(dr_randn(ks, 3, DR_F32, CPU, NULL, &t[1])) &&
                 CHECK_OK(dr_randn(ks, 3, DR_F32, CPU, NULL, &t[2])) &&
                 CHECK_OK(dr_randn(qs, 3, DR_F32, CPU, NULL, &t[3])) &&
                 (!c->masked || CHECK_OK(dr_randn(ms, 2, DR_F32, CPU, NULL, &t[4])));
        if (ok) compare_on_off("attention", attention_both, t, 4, c);
        for (int i = 0; i < 5; i++) dr_tensor_release(t[i]);
    }
}

static dr_status softmaxes(dr_tensor *const *in, dr_tensor **out, int nout, const void *ctx) {
    (void)nout, (void)ctx;
    dr_status st = dr_softmax(in[0], -1, &out[0]);
    if (st == DR_OK) st = dr_log_softmax(in[0], -1, &out[1]);
    return st;
}

/* softmax and log_softmax over the last dim: rows of 77 (the tail block), 8 and
 * 1024 (none), 3 (only the tail), 13; on 16 lanes also 16 (none), 20 and 40 (a tail
 * of 4 and 8: the upper half of the tail block is all padding); scales that push
 * exps to 0; -inf and NaN entries; an odd row count (the last block of rows is
 * short). */
static void test_softmax(void) {
    const int64_t shapes[][2] = {{3001, 77}, {5, 13},  {601, 8}, {4, 1024}, {7, 3},
                                 {9, 77},    {11, 20}, {6, 40},  {5, 16}};
    const float scales[] = {1.0f, 30.0f, 3.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    for (size_t ci = 0; ci < sizeof shapes / sizeof shapes[0]; ci++) {
        dr_tensor *x = NULL;
        if (!CHECK_OK(dr_randn(shapes[ci], 2, DR_F32, CPU, NULL, &x))) return;
        float *v = dr_tensor_data(x);
        int64_t n = dr_tensor_numel(x);
        for (int64_t i = 0; i < n; i++) v[i] *= scales[ci];
        if (ci == 5) { /* row 0 masked but one, row 1 all -inf, row 2 with a NaN */
            for (int64_t j = 1; j < 77; j++) v[j] = -INFINITY;
            for (int64_t j = 0; j < 77; j++) v[77 + j] = -INFINITY;
            v[2 * 77 + 40] = NAN;
        }
        compare_on_off("softmax", softmaxes, &x, 2, NULL);
        dr_tensor_release(x);
    }
}
#endif

int main(void) {
#ifdef DR_HAVE_VEXPF8
    if (dr_cpu_use_v3()) {
        fprintf(stderr, "hand-written AVX2 loops in use: attention %s, silu %s, softmax %s\n",
                dr_cpu_attention_v3() ? "yes" : "no", dr_cpu_silu_v3() ? "yes" : "no",
                dr_cpu_softmax_v3() ? "yes" : "no");
        fprintf(stderr, "AVX-512 loops in use: silu %s, gelu %s, softmax %s (hand-written), "
                "the unary ops' compiled %s\n", dr_cpu_silu_v4() ? "yes" : "no",
                dr_cpu_gelu_v4() ? "yes" : "no", dr_cpu_softmax_v4() ? "yes" : "no",
                dr_cpu_unary_v4() ? "yes" : "no");
        if (!dr_cpu_use_v4())
            fprintf(stderr, "(this CPU is not x86-64-v4: they are not tested)\n");
        /* both compilations of the unary loops are the same C: they must agree */
        CHECK(dr_cpu_unary_v4() == dr_cpu_use_v4());
        /* the AVX-512 loops do what the AVX2 ones do: where those pass the probe and
         * the CPU has AVX-512, these must too */
        CHECK(dr_cpu_silu_v4() == (dr_cpu_use_v4() && dr_cpu_silu_v3()));
        CHECK(dr_cpu_gelu_v4() == (dr_cpu_use_v4() && dr_cpu_silu_v3()));
        CHECK(dr_cpu_softmax_v4() == (dr_cpu_use_v4() && dr_cpu_softmax_v3()));
        if (!dr_cpu_attention_v3() || !dr_cpu_silu_v3() || !dr_cpu_softmax_v3())
            fprintf(stderr, "(where no: this build's compiled loops round differently, e.g. an "
                            "unoptimised build without FMA contraction; the compiled loops run, "
                            "and the comparisons below hold trivially for them)\n");
        test_sampled_patterns();
        test_edges();
        test_every_61st(DR_UNARY_SILU);
        test_every_61st(DR_UNARY_GELU);
        test_unary_ops();
        test_attention();
        test_softmax();
    } else {
        fprintf(stderr, "test_vecmath: this CPU is not x86-64-v3: the AVX2 loops are not used, "
                        "not tested\n");
    }
#else
    fprintf(stderr, "test_vecmath: dr_vexpf8 is not compiled on this compiler/target: not tested\n");
#endif
    return check_summary("test_vecmath");
}
