/* Unary math (silu, gelu, quick_gelu, relu, sigmoid, tanh, exp, log, sqrt, rsqrt,
 * abs, neg, pow, clamp): forward against double references on ordinary and
 * extreme inputs (log 0 = -inf, overflow to inf, NaN kept), strided and expanded
 * inputs, float16/bfloat16, the large parallel path, finite-difference checks of
 * every backward on a non-contiguous input away from kinks, the gradient at kinks
 * (torch's choices), exact gelu's relative accuracy on [-14, 14] (its left tail
 * included), and errors that name the op. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gradcheck.h"

#define LEN(a) ((int32_t)(sizeof(a) / sizeof((a)[0])))

static const dr_device CPU = {DR_CPU, 0};

static dr_tensor *from(const double *v, const int64_t *sizes, int32_t ndim, int32_t dtype) {
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, sizes, ndim, dtype, CPU, &t));
    return t;
}

static double *values(const dr_tensor *t) {
    int64_t n = dr_tensor_numel(t);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    CHECK_OK(dr_tensor_to_f64(t, v, n));
    return v;
}

/* got ~ want: equal (infinities included), both NaN, or within rel*|want| + abs. */
static int close_to(double got, double want, double rel, double abs_tol) {
    if (isnan(want)) return isnan(got);
    if (isinf(want)) return got == want;
    return fabs(got - want) <= rel * fabs(want) + abs_tol;
}

/* ---- references ------------------------------------------------------------------ */

typedef struct ucase {
    int32_t op;
    double p0, p1; /* pow exponent; clamp bounds */
    const char *label;
} ucase;

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

static double ref_forward(const ucase *c, double x) {
    switch (c->op) {
    case DR_UNARY_SILU: return x * sigm(x);
    case DR_UNARY_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case DR_UNARY_GELU_TANH:
        return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case DR_UNARY_QUICK_GELU: return x * sigm(1.702 * x);
    case DR_UNARY_RELU: return x < 0 ? 0 : x;
    case DR_UNARY_SIGMOID: return sigm(x);
    case DR_UNARY_TANH: return tanh(x);
    case DR_UNARY_EXP: return exp(x);
    case DR_UNARY_LOG: return log(x);
    case DR_UNARY_SQRT: return sqrt(x);
    case DR_UNARY_RSQRT: return 1.0 / sqrt(x);
    case DR_UNARY_ABS: return fabs(x);
    case DR_UNARY_NEG: return -x;
    case DR_UNARY_POW: /* torch's special cases: x^0 = 1 (NaN too), x^±0.5 via sqrt */
        return c->p0 == 0 ? 1.0 : c->p0 == 0.5 ? sqrt(x) : c->p0 == -0.5 ? 1 / sqrt(x)
                                                                         : pow(x, c->p0);
    default: { double t = x < c->p0 ? c->p0 : x; return t > c->p1 ? c->p1 : t; }
    }
}

static dr_status apply(const ucase *c, const dr_tensor *x, dr_tensor **out) {
    if (c->op == DR_UNARY_POW) return dr_pow_scalar(x, c->p0, out);
    if (c->op == DR_UNARY_CLAMP) return dr_clamp(x, c->p0, c->p1, out);
    return dr_unary(c->op, x, out);
}

static const ucase CASES[] = {
    {DR_UNARY_SILU, 0, 0, "silu"},          {DR_UNARY_GELU, 0, 0, "gelu"},
    {DR_UNARY_GELU_TANH, 0, 0, "gelu_tanh"}, {DR_UNARY_QUICK_GELU, 0, 0, "quick_gelu"},
    {DR_UNARY_RELU, 0, 0, "relu"},          {DR_UNARY_SIGMOID, 0, 0, "sigmoid"},
    {DR_UNARY_TANH, 0, 0, "tanh"},          {DR_UNARY_EXP, 0, 0, "exp"},
    {DR_UNARY_LOG, 0, 0, "log"},            {DR_UNARY_SQRT, 0, 0, "sqrt"},
    {DR_UNARY_RSQRT, 0, 0, "rsqrt"},        {DR_UNARY_ABS, 0, 0, "abs"},
    {DR_UNARY_NEG, 0, 0, "neg"},            {DR_UNARY_POW, 2, 0, "pow 2"},
    {DR_UNARY_POW, 3, 0, "pow 3"},          {DR_UNARY_POW, 0.5, 0, "pow 0.5"},
    {DR_UNARY_POW, -0.5, 0, "pow -0.5"},    {DR_UNARY_POW, -1, 0, "pow -1"},
    {DR_UNARY_POW, -2, 0, "pow -2"},        {DR_UNARY_POW, 2.5, 0, "pow 2.5"},
    {DR_UNARY_POW, 0, 0, "pow 0"},          {DR_UNARY_POW, 1, 0, "pow 1"},
    {DR_UNARY_POW, 1.0 / 3, 0, "pow 1/3"},  {DR_UNARY_CLAMP, -0.5, 0.7, "clamp"},
    {DR_UNARY_CLAMP, -INFINITY, 0.7, "clamp max"}, {DR_UNARY_CLAMP, -0.5, INFINITY, "clamp min"},
    {DR_UNARY_CLAMP, 1.0, -1.0, "clamp min>max"},
};

/* ---- forward ------------------------------------------------------------------------ */

/* Ordinary and extreme inputs in float32 against the double reference rounded to
 * float: subnormal and overflowing results, log/sqrt of 0 and negatives, NaN. */
static void test_forward_values(void) {
    static const double xs[] = {-1000, -100, -20, -3.5, -1, -0.3, -1e-3, -0.0, 0, 1e-4, 0.25,
                                0.7, 1, 2.5, 9, 30, 88, 89, 100, INFINITY, -INFINITY, NAN};
    int64_t n = LEN(xs);
    dr_tensor *x = from(xs, &n, 1, DR_F32);
    for (int32_t k = 0; k < LEN(CASES); k++) {
        dr_tensor *y = NULL;
        if (!CHECK_OK(apply(&CASES[k], x, &y))) continue;
        CHECK_EQ_INT(y->scalar_type, DR_F32);
        CHECK_EQ_INT(dr_tensor_numel(y), n);
        double *got = values(y);
        for (int64_t i = 0; i < n; i++) {
            double want = (float)ref_forward(&CASES[k], xs[i]);
            if (!CHECK(close_to(got[i], want, 2e-6, 1e-30)))
                fprintf(stderr, "    %s(%g) = %.9g, expected %.9g\n", CASES[k].label, xs[i],
                        got[i], want);
        }
        free(got);
        dr_tensor_release(y);
    }
    dr_tensor_release(x);
}

/* Exact gelu's relative accuracy on [-14, 14] (every 1021st float there), the left
 * tail included, where x/2 (1 + erf(x/sqrt 2)) would lose it to cancellation: x Phi(x)
 * against erfc in double, and its derivative Phi(x) + x phi(x) against the size of its
 * two terms (it crosses 0 near x = -0.75). The bounds are cpu_vecmath.h's for
 * dr_verfcf: < 1e-6 for |x| < 2.8; beyond, the error grows with the rounding of
 * (x/sqrt 2)^2 (1.5e-5 at x = -12.8; 1.8e-5 without FMA contraction). On an
 * x86-64-v4 CPU this runs the AVX-512 loops; tests/test_vecmath.c checks they equal
 * the compiled ones. */
static void test_gelu_accuracy(void) {
    enum { STRIDE = 1021, TOP = 0x41600000 }; /* the bits of 14.0f */
    float *xs = malloc((TOP / STRIDE + 1) * 2 * sizeof *xs);
    int64_t n = 0;
    for (uint32_t u = 0; u <= TOP; u += STRIDE) {
        float f;
        memcpy(&f, &u, 4);
        xs[n++] = f;
        xs[n++] = -f;
    }
    dr_tensor *x = NULL, *g = NULL, *y = NULL, *dx = NULL;
    if (CHECK_OK(dr_tensor_empty(&n, 1, DR_F32, CPU, &x)) &&
        CHECK_OK(dr_tensor_empty(&n, 1, DR_F32, CPU, &g))) {
        memcpy(dr_tensor_data(x), xs, (size_t)n * sizeof *xs);
        float *gv = dr_tensor_data(g);
        for (int64_t i = 0; i < n; i++) gv[i] = 1.0f;
        if (CHECK_OK(dr_unary(DR_UNARY_GELU, x, &y)) &&
            CHECK_OK(dr_unary_backward(DR_UNARY_GELU, g, x, y, &dx))) {
            const float *yv = dr_tensor_data(y), *dv = dr_tensor_data(dx);
            double worst[2] = {0, 0}, worst_d = 0; /* [0]: |x| < 2.8, [1]: all */
            for (int64_t i = 0; i < n; i++) {
                double v = xs[i], cdf = 0.5 * erfc(-v / sqrt(2.0));
                double pdf = exp(-0.5 * v * v) / sqrt(2.0 * M_PI), want = v * cdf;
                if (fabs(want) > 1e-36) {
                    double err = fabs(yv[i] - want) / fabs(want);
                    if (fabs(v) < 2.8 && err > worst[0]) worst[0] = err;
                    if (err > worst[1]) worst[1] = err;
                }
                double size = cdf + fabs(v) * pdf, err = fabs(dv[i] - (cdf + v * pdf)) / size;
                if (size > 1e-36 && err > worst_d) worst_d = err;
            }
            fprintf(stderr, "gelu on %lld floats in [-14, 14]: relative error %.2g (|x| < 2.8), "
                            "%.2g (all); derivative %.2g\n", (long long)n, worst[0], worst[1],
                    worst_d);
            CHECK(worst[0] < 1e-6);
            CHECK(worst[1] < 3e-5);
            CHECK(worst_d < 5e-6);
        }
    }
    dr_tensor_release(dx);
    dr_tensor_release(y);
    dr_tensor_release(g);
    dr_tensor_release(x);
    free(xs);
}

/* torch's exact answers at special points. */
static void test_special_points(void) {
    double xs[] = {0, -1, -0.0};
    int64_t n = 3;
    dr_tensor *x = from(xs, &n, 1, DR_F32), *y = NULL;
    double v[3];
    if (CHECK_OK(dr_log(x, &y)) && CHECK_OK(dr_tensor_to_f64(y, v, 3))) {
        CHECK(isinf(v[0]) && v[0] < 0);
        CHECK(isnan(v[1]));
        CHECK(isinf(v[2]) && v[2] < 0);
    }
    dr_tensor_release(y);
    if (CHECK_OK(dr_rsqrt(x, &y)) && CHECK_OK(dr_tensor_to_f64(y, v, 3))) {
        CHECK(isinf(v[0]) && v[0] > 0);
        CHECK(isnan(v[1]));
    }
    dr_tensor_release(y);
    if (CHECK_OK(dr_sqrt(x, &y)) && CHECK_OK(dr_tensor_to_f64(y, v, 3))) CHECK(isnan(v[1]));
    dr_tensor_release(y);
    dr_tensor_release(x);
    /* pow(NaN, 0) = 1 and clamp/relu keep NaN, as torch. */
    double nanv = NAN;
    int64_t one = 1;
    x = from(&nanv, &one, 1, DR_F32);
    if (CHECK_OK(dr_pow_scalar(x, 0, &y)) && CHECK_OK(dr_tensor_item(y, v))) CHECK_NEAR(v[0], 1, 0);
    dr_tensor_release(y);
    if (CHECK_OK(dr_clamp(x, -1, 1, &y)) && CHECK_OK(dr_tensor_item(y, v))) CHECK(isnan(v[0]));
    dr_tensor_release(y);
    if (CHECK_OK(dr_relu(x, &y)) && CHECK_OK(dr_tensor_item(y, v))) CHECK(isnan(v[0]));
    dr_tensor_release(y);
    dr_tensor_release(x);
}

/* The named wrappers are the enum ops. */
static void test_wrappers(void) {
    static const double xs[] = {-2, -0.5, 0.5, 3};
    int64_t n = 4;
    dr_tensor *x = from(xs, &n, 1, DR_F32);
    typedef dr_status (*fn)(const dr_tensor *, dr_tensor **);
    static const fn fns[] = {dr_silu, dr_quick_gelu, dr_relu, dr_sigmoid, dr_tanh, dr_exp,
                             dr_log, dr_sqrt, dr_rsqrt, dr_abs, dr_neg};
    static const int32_t ops[] = {DR_UNARY_SILU, DR_UNARY_QUICK_GELU, DR_UNARY_RELU,
                                  DR_UNARY_SIGMOID, DR_UNARY_TANH, DR_UNARY_EXP, DR_UNARY_LOG,
                                  DR_UNARY_SQRT, DR_UNARY_RSQRT, DR_UNARY_ABS, DR_UNARY_NEG};
    for (int32_t k = 0; k < LEN(fns); k++) {
        dr_tensor *a = NULL, *b = NULL;
        if (CHECK_OK(fns[k](x, &a)) && CHECK_OK(dr_unary(ops[k], x, &b))) {
            double *va = values(a), *vb = values(b);
            for (int64_t i = 0; i < n; i++) CHECK(va[i] == vb[i] || (isnan(va[i]) && isnan(vb[i])));
            free(va);
            free(vb);
        }
        dr_tensor_release(a);
        dr_tensor_release(b);
    }
    for (int32_t approx = 0; approx < 2; approx++) {
        dr_tensor *a = NULL, *b = NULL;
        if (CHECK_OK(dr_gelu(x, approx, &a)) &&
            CHECK_OK(dr_unary(approx ? DR_UNARY_GELU_TANH : DR_UNARY_GELU, x, &b))) {
            double *va = values(a), *vb = values(b);
            for (int64_t i = 0; i < n; i++) CHECK(va[i] == vb[i]);
            free(va);
            free(vb);
        }
        dr_tensor_release(a);
        dr_tensor_release(b);
    }
    CHECK(strcmp(dr_unary_name(DR_UNARY_QUICK_GELU), "quick_gelu") == 0);
    CHECK(strcmp(dr_unary_name(99), "unknown") == 0);
    CHECK_EQ_INT(dr_unary_backward_uses_output(DR_UNARY_EXP), 1);
    CHECK_EQ_INT(dr_unary_backward_uses_output(DR_UNARY_SILU), 0);
    dr_tensor_release(x);
}

/* A [rows, cols] tensor of smooth test values in [-3, 3]. */
static dr_tensor *grid(int64_t rows, int64_t cols, int32_t dtype, int salt) {
    int64_t s[2] = {rows, cols}, n = rows * cols;
    double *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = 3.0 * sin(0.37 * (double)i + salt);
    dr_tensor *t = from(v, s, 2, dtype);
    free(v);
    return t;
}

/* Transposed, strided and expanded inputs give the contiguous answer, on the
 * serial and the parallel (large) paths. */
static void test_layouts(void) {
    static const int64_t shapes[][2] = {{7, 5}, {300, 257}};
    for (int32_t s = 0; s < 2; s++) {
        int64_t rows = shapes[s][0], cols = shapes[s][1];
        dr_tensor *base = grid(cols, rows, DR_F32, 1), *xt = NULL, *xc = NULL;
        CHECK_OK(dr_tensor_transpose(base, 0, 1, &xt));
        CHECK_OK(dr_tensor_contiguous(xt, &xc));
        /* every other column of a wider tensor: stride 2 in the last dim */
        dr_tensor *wide = grid(rows, 2 * cols, DR_F32, 2), *w3 = NULL, *xs = NULL, *xsc = NULL;
        int64_t s3[3] = {rows, cols, 2};
        CHECK_OK(dr_tensor_view(wide, s3, 3, &w3));
        CHECK_OK(dr_tensor_select(w3, 2, 1, &xs));
        CHECK_OK(dr_tensor_contiguous(xs, &xsc));
        /* a row expanded down the rows: stride 0 */
        dr_tensor *row = grid(1, cols, DR_F32, 3), *xe = NULL, *xec = NULL;
        int64_t se[2] = {rows, cols};
        CHECK_OK(dr_tensor_expand(row, se, 2, &xe));
        CHECK_OK(dr_tensor_contiguous(xe, &xec));
        const dr_tensor *views[3] = {xt, xs, xe}, *dense[3] = {xc, xsc, xec};
        for (int32_t k = 0; k < LEN(CASES); k++) {
            for (int32_t l = 0; l < 3; l++) {
                dr_tensor *a = NULL, *b = NULL;
                if (CHECK_OK(apply(&CASES[k], views[l], &a)) &&
                    CHECK_OK(apply(&CASES[k], dense[l], &b))) {
                    int64_t n = rows * cols;
                    double *va = values(a), *vb = values(b);
                    int bad = 0;
                    for (int64_t i = 0; i < n; i++)
                        bad += !(va[i] == vb[i] || (isnan(va[i]) && isnan(vb[i])));
                    if (!CHECK_EQ_INT(bad, 0))
                        fprintf(stderr, "    %s, layout %d, shape [%lld, %lld]\n",
                                CASES[k].label, l, (long long)rows, (long long)cols);
                    free(va);
                    free(vb);
                }
                dr_tensor_release(a);
                dr_tensor_release(b);
            }
        }
        dr_tensor_release(base);
        dr_tensor_release(xt);
        dr_tensor_release(xc);
        dr_tensor_release(wide);
        dr_tensor_release(w3);
        dr_tensor_release(xs);
        dr_tensor_release(xsc);
        dr_tensor_release(row);
        dr_tensor_release(xe);
        dr_tensor_release(xec);
    }
}

/* The large contiguous path against the reference (and an empty tensor). */
static void test_large(void) {
    dr_tensor *x = grid(211, 331, DR_F32, 4);
    double *xv = values(x);
    for (int32_t k = 0; k < LEN(CASES); k++) {
        dr_tensor *y = NULL;
        if (!CHECK_OK(apply(&CASES[k], x, &y))) continue;
        double *v = values(y);
        int bad = 0;
        for (int64_t i = 0; i < 211 * 331; i++)
            bad += !close_to(v[i], (float)ref_forward(&CASES[k], (float)xv[i]), 2e-6, 1e-30);
        if (!CHECK_EQ_INT(bad, 0)) fprintf(stderr, "    %s\n", CASES[k].label);
        free(v);
        dr_tensor_release(y);
    }
    free(xv);
    dr_tensor_release(x);
    int64_t z[2] = {0, 3};
    dr_tensor *e = NULL, *ey = NULL;
    CHECK_OK(dr_tensor_empty(z, 2, DR_F32, CPU, &e));
    if (CHECK_OK(dr_silu(e, &ey))) CHECK_EQ_INT(dr_tensor_numel(ey), 0);
    dr_tensor_release(ey);
    dr_tensor_release(e);
}

/* float16 / bfloat16: computed in float32 from the rounded input, rounded once. */
static void test_half(void) {
    static const double xs[] = {-9, -3.5, -1, -0.3, 0.125, 0.7, 1, 2.5, 9};
    int64_t n = LEN(xs);
    int32_t dts[2] = {DR_F16, DR_BF16};
    double tol[2] = {1e-3, 8e-3};
    for (int32_t d = 0; d < 2; d++) {
        dr_tensor *x = from(xs, &n, 1, dts[d]);
        double *xr = values(x);
        for (int32_t k = 0; k < LEN(CASES); k++) {
            dr_tensor *y = NULL;
            if (!CHECK_OK(apply(&CASES[k], x, &y))) continue;
            CHECK_EQ_INT(y->scalar_type, dts[d]);
            double *v = values(y);
            for (int64_t i = 0; i < n; i++)
                if (!CHECK(close_to(v[i], ref_forward(&CASES[k], xr[i]), tol[d], 1e-3)))
                    fprintf(stderr, "    %s %s(%g) = %g\n", dr_dtype_name(dts[d]),
                            CASES[k].label, xr[i], v[i]);
            free(v);
            dr_tensor_release(y);
        }
        free(xr);
        dr_tensor_release(x);
    }
}

/* ---- backward ------------------------------------------------------------------------ */

/* Forward on the transpose of the stored input: the op sees a non-contiguous x. */
static dr_status gc_forward(dr_tensor **in, const void *ctx, dr_tensor **out) {
    dr_tensor *v = NULL;
    dr_status st = dr_tensor_transpose(in[0], 0, 1, &v);
    if (st == DR_OK) st = apply(ctx, v, out);
    dr_tensor_release(v);
    return st;
}

/* The backward gets only what it needs (the other of x, y is NULL) and a
 * non-contiguous grad_out. */
static dr_status gc_backward(const dr_tensor *grad_out, dr_tensor **in, const void *ctx,
                             dr_tensor **grads) {
    const ucase *c = ctx;
    dr_tensor *v = NULL, *y = NULL, *gt = NULL, *gtc = NULL, *g = NULL, *gx = NULL;
    dr_status st = dr_tensor_transpose(in[0], 0, 1, &v);
    if (st == DR_OK) st = apply(c, v, &y);
    /* the same values as grad_out, stored transposed */
    if (st == DR_OK) st = dr_tensor_transpose(grad_out, 0, 1, &gt);
    if (st == DR_OK) st = dr_tensor_contiguous(gt, &gtc);
    if (st == DR_OK) st = dr_tensor_transpose(gtc, 0, 1, &g);
    if (st == DR_OK) {
        if (c->op == DR_UNARY_POW) st = dr_pow_scalar_backward(g, v, c->p0, &gx);
        else if (c->op == DR_UNARY_CLAMP) st = dr_clamp_backward(g, v, c->p0, c->p1, &gx);
        else if (dr_unary_backward_uses_output(c->op))
            st = dr_unary_backward(c->op, g, NULL, y, &gx);
        else
            st = dr_unary_backward(c->op, g, v, NULL, &gx);
    }
    if (st == DR_OK) st = dr_tensor_transpose(gx, 0, 1, &grads[0]);
    dr_tensor_release(v);
    dr_tensor_release(y);
    dr_tensor_release(gt);
    dr_tensor_release(gtc);
    dr_tensor_release(g);
    dr_tensor_release(gx);
    return st;
}

/* Test points for op c: odd shape [5, 3] stored (the op sees [3, 5]), kept off
 * kinks and poles: |x| >= 0.2 for relu/abs, positive for log/sqrt/rsqrt and
 * fractional powers, 0.1 away from clamp bounds. */
static double point(const ucase *c, int64_t i) {
    double v = 2.2 * sin(1.3 * (double)i + 0.4);
    bool positive = c->op == DR_UNARY_LOG || c->op == DR_UNARY_SQRT || c->op == DR_UNARY_RSQRT ||
                    (c->op == DR_UNARY_POW && c->p0 != floor(c->p0));
    if (positive) return 0.3 + fabs(v);
    if (c->op == DR_UNARY_POW && c->p0 < 0) return v < 0 ? v - 0.5 : v + 0.5;
    if (c->op == DR_UNARY_RELU || c->op == DR_UNARY_ABS) return v < 0 ? v - 0.2 : v + 0.2;
    if (c->op == DR_UNARY_CLAMP) {
        if (isfinite(c->p0) && fabs(v - c->p0) < 0.1) v += 0.25;
        if (isfinite(c->p1) && fabs(v - c->p1) < 0.1) v += 0.25;
    }
    return v;
}

static void test_gradcheck(void) {
    int64_t s[2] = {5, 3};
    for (int32_t k = 0; k < LEN(CASES); k++) {
        double v[15];
        for (int64_t i = 0; i < 15; i++) v[i] = point(&CASES[k], i);
        dr_tensor *x = from(v, s, 2, DR_F32);
        gradcheck(CASES[k].label, gc_forward, gc_backward, &CASES[k], &x, 1, 1e-2, 2e-3, 2e-3);
        dr_tensor_release(x);
    }
}

/* Gradients at the kinks follow torch: relu'(0) = 0, abs'(0) = 0, clamp passes
 * the gradient at its bounds (inclusive), pow with exponent 0 gives 0. */
static void test_kinks(void) {
    double xs[] = {0, -0.5, 0.7, 2};
    int64_t n = 4;
    dr_tensor *x = from(xs, &n, 1, DR_F32), *g = NULL, *y = NULL, *gx = NULL;
    CHECK_OK(dr_tensor_full(&n, 1, DR_F32, CPU, 3.0, &g));
    double v[4];
    if (CHECK_OK(dr_relu(x, &y)) && CHECK_OK(dr_unary_backward(DR_UNARY_RELU, g, x, y, &gx)) &&
        CHECK_OK(dr_tensor_to_f64(gx, v, 4))) {
        CHECK_NEAR(v[0], 0, 0);
        CHECK_NEAR(v[1], 0, 0);
        CHECK_NEAR(v[3], 3, 0);
    }
    dr_tensor_release(y);
    dr_tensor_release(gx);
    if (CHECK_OK(dr_unary_backward(DR_UNARY_ABS, g, x, NULL, &gx)) &&
        CHECK_OK(dr_tensor_to_f64(gx, v, 4))) {
        CHECK_NEAR(v[0], 0, 0);
        CHECK_NEAR(v[1], -3, 0);
    }
    dr_tensor_release(gx);
    if (CHECK_OK(dr_clamp_backward(g, x, -0.5, 0.7, &gx)) && CHECK_OK(dr_tensor_to_f64(gx, v, 4))) {
        CHECK_NEAR(v[0], 3, 0);
        CHECK_NEAR(v[1], 3, 0);
        CHECK_NEAR(v[2], 3, 0);
        CHECK_NEAR(v[3], 0, 0);
    }
    dr_tensor_release(gx);
    if (CHECK_OK(dr_pow_scalar_backward(g, x, 0, &gx)) && CHECK_OK(dr_tensor_to_f64(gx, v, 4)))
        for (int i = 0; i < 4; i++) CHECK_NEAR(v[i], 0, 0);
    dr_tensor_release(gx);
    /* the gradient keeps grad_out's dtype */
    dr_tensor *gh = NULL;
    CHECK_OK(dr_tensor_to_dtype(g, DR_BF16, &gh));
    if (CHECK_OK(dr_unary_backward(DR_UNARY_NEG, gh, x, NULL, &gx))) {
        CHECK_EQ_INT(gx->scalar_type, DR_BF16);
        CHECK_OK(dr_tensor_to_f64(gx, v, 4));
        CHECK_NEAR(v[2], -3, 0);
    }
    dr_tensor_release(gx);
    dr_tensor_release(gh);
    dr_tensor_release(g);
    dr_tensor_release(x);
}

/* ---- errors ---------------------------------------------------------------------------- */

static void test_errors(void) {
    int64_t s[2] = {2, 3}, s2[2] = {3, 2};
    dr_tensor *xi = NULL, *x = NULL, *x2 = NULL, *y = (dr_tensor *)1;
    CHECK_OK(dr_tensor_full(s, 2, DR_I64, CPU, 1, &xi));
    CHECK_OK(dr_tensor_full(s, 2, DR_F32, CPU, 1, &x));
    CHECK_OK(dr_tensor_full(s2, 2, DR_F32, CPU, 1, &x2));
    CHECK_FAILS(dr_silu(xi, &y), DR_ERR_DTYPE, "silu: input [2, 3] has dtype int64");
    CHECK(y == NULL);
    CHECK_FAILS(dr_exp(NULL, &y), DR_ERR_ARG, "exp: input is nil");
    CHECK_FAILS(dr_exp(x, NULL), DR_ERR_ARG, "exp: out is NULL");
    CHECK_FAILS(dr_unary(DR_UNARY_POW, x, &y), DR_ERR_ARG, "dr_pow_scalar");
    CHECK_FAILS(dr_unary(DR_UNARY_CLAMP, x, &y), DR_ERR_ARG, "dr_clamp");
    CHECK_FAILS(dr_unary(42, x, &y), DR_ERR_ARG, "unknown unary op 42");
    CHECK_FAILS(dr_gelu(x, 2, &y), DR_ERR_ARG, "gelu: approximate must be 0");
    CHECK_FAILS(dr_clamp(x, NAN, 1, &y), DR_ERR_ARG, "clamp: bounds must not be NaN");
    CHECK_FAILS(dr_unary_backward(DR_UNARY_TANH, x, x2, x2, &y), DR_ERR_SHAPE,
                "tanh_backward: grad_out [2, 3] and output [3, 2] must have the same shape");
    CHECK_FAILS(dr_unary_backward(DR_UNARY_SILU, x, NULL, x, &y), DR_ERR_ARG,
                "silu_backward: input is nil");
    CHECK_FAILS(dr_unary_backward(DR_UNARY_EXP, x, x, NULL, &y), DR_ERR_ARG,
                "exp_backward: output is nil");
    CHECK_FAILS(dr_pow_scalar_backward(xi, x, 2, &y), DR_ERR_DTYPE, "pow_backward: grad_out");
    dr_tensor_free(x2);
    CHECK_FAILS(dr_sigmoid(x2, &y), DR_ERR_FREED, "sigmoid: input");
    dr_tensor_release(xi);
    dr_tensor_release(x);
    dr_tensor_release(x2);
}

int main(void) {
    test_forward_values();
    test_special_points();
    test_gelu_accuracy();
    test_wrappers();
    test_layouts();
    test_large();
    test_half();
    test_gradcheck();
    test_kinks();
    test_errors();
    return check_summary("test_unary");
}
