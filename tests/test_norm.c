/* layer_norm and group_norm: forward against naive double loops (every dim, negative
 * dims, non-contiguous inputs, with and without the affine parameters), extreme
 * inputs (a large mean, constant rows), float16/bfloat16, finite-difference checks of
 * every backward on odd shapes, parameter gradients independent of the thread count,
 * and errors that name the op and the shapes. Softmax: test_softmax.c. */
#include "norm_util.h"

/* ---- layer_norm ------------------------------------------------------------------------ */

/* Reference over [rows, cols]; w, b may be NULL. */
static void ref_layer_norm(const double *x, const double *w, const double *b, int64_t rows,
                           int64_t cols, double eps, double *y, double *mean, double *rstd) {
    for (int64_t r = 0; r < rows; r++) {
        const double *xr = x + r * cols;
        double m = 0, v = 0;
        for (int64_t j = 0; j < cols; j++) m += xr[j];
        m /= (double)cols;
        for (int64_t j = 0; j < cols; j++) v += (xr[j] - m) * (xr[j] - m);
        double rs = 1 / sqrt(v / (double)cols + eps);
        mean[r] = m;
        rstd[r] = rs;
        for (int64_t j = 0; j < cols; j++)
            y[r * cols + j] = (xr[j] - m) * rs * (w ? w[j] : 1) + (b ? b[j] : 0);
    }
}

static void test_layer_norm_forward(void) {
    int64_t s[3] = {2, 3, 5};
    dr_tensor *x = smooth(s, 3, DR_F32, 2, 1.5, 1), *xs = strided_copy(x);
    double *xv = su_get(x);
    for (int32_t nnorm = 1; nnorm <= 2; nnorm++) {
        const int64_t *shape = s + 3 - nnorm;
        int64_t cols = su_count(shape, nnorm), rows = 30 / cols;
        dr_tensor *w = smooth(shape, nnorm, DR_F32, 1, 0.5, 2);
        dr_tensor *b = smooth(shape, nnorm, DR_F32, 1, 0, 3);
        double *wv = su_get(w), *bv = su_get(b), y[30], m[30], r[30];
        for (int affine = 0; affine < 4; affine++) {
            bool hw = affine & 1, hb = affine & 2;
            ref_layer_norm(xv, hw ? wv : NULL, hb ? bv : NULL, rows, cols, 1e-5, y, m, r);
            for (int strided = 0; strided < 2; strided++) {
                dr_tensor *out = NULL, *mean = NULL, *rstd = NULL;
                if (!CHECK_OK(dr_layer_norm(strided ? xs : x, shape, nnorm, hw ? w : NULL,
                                            hb ? b : NULL, 1e-5, &out, &mean, &rstd)))
                    continue;
                CHECK_EQ_INT(mismatches(out, y, 1e-5, 1e-6), 0);
                CHECK_EQ_INT(mismatches(mean, m, 1e-6, 1e-7), 0);
                CHECK_EQ_INT(mismatches(rstd, r, 1e-5, 0), 0);
                CHECK_EQ_INT(mean->ndim, 3);
                CHECK_EQ_INT(mean->sizes[0], 2);
                CHECK_EQ_INT(mean->sizes[1], nnorm == 1 ? 3 : 1);
                CHECK_EQ_INT(mean->sizes[2], 1);
                CHECK_EQ_INT(rstd->scalar_type, DR_F32);
                dr_tensor_release(out);
                dr_tensor_release(mean);
                dr_tensor_release(rstd);
            }
        }
        /* mean and rstd are optional */
        dr_tensor *out = NULL;
        CHECK_OK(dr_layer_norm(x, shape, nnorm, NULL, NULL, 1e-5, &out, NULL, NULL));
        dr_tensor_release(out);
        free(wv);
        free(bv);
        dr_tensor_release(w);
        dr_tensor_release(b);
    }
    free(xv);
    dr_tensor_release(x);
    dr_tensor_release(xs);
}

/* Constant rows give bias; a mean of 1e4 with unit spread keeps its variance. */
static void test_layer_norm_extremes(void) {
    int64_t s[2] = {2, 1000}, c = 1000;
    dr_tensor *x = smooth(s, 2, DR_F32, 1, 1e4, 5), *out = NULL, *mean = NULL, *rstd = NULL;
    double *xv = su_get(x), *y = malloc(2000 * sizeof *y), m[2], r[2];
    ref_layer_norm(xv, NULL, NULL, 2, 1000, 1e-5, y, m, r);
    if (CHECK_OK(dr_layer_norm(x, &c, 1, NULL, NULL, 1e-5, &out, &mean, &rstd))) {
        CHECK_EQ_INT(mismatches(out, y, 0, 2e-3), 0);
        CHECK_EQ_INT(mismatches(rstd, r, 1e-3, 0), 0);
    }
    dr_tensor_release(out);
    dr_tensor_release(mean);
    dr_tensor_release(rstd);
    dr_tensor *k = NULL, *b = NULL;
    CHECK_OK(dr_tensor_full(s, 2, DR_F32, CPU, 3.25, &k));
    CHECK_OK(dr_tensor_full(&c, 1, DR_F32, CPU, 0.5, &b));
    if (CHECK_OK(dr_layer_norm(k, &c, 1, NULL, b, 1e-5, &out, NULL, NULL))) {
        double *v = su_get(out);
        int bad = 0;
        for (int i = 0; i < 2000; i++) bad += v[i] != 0.5;
        CHECK_EQ_INT(bad, 0);
        free(v);
    }
    dr_tensor_release(out);
    dr_tensor_release(k);
    dr_tensor_release(b);
    free(xv);
    free(y);
    dr_tensor_release(x);
}

static void test_layer_norm_half(void) {
    int64_t s[2] = {4, 33}, c = 33;
    int32_t dts[2] = {DR_F16, DR_BF16};
    for (int k = 0; k < 2; k++) {
        dr_tensor *x = smooth(s, 2, dts[k], 2, 1, 6), *w = smooth(&c, 1, dts[k], 1, 1, 7);
        dr_tensor *out = NULL, *mean = NULL;
        double *xv = su_get(x), *wv = su_get(w), y[132], m[4], r[4];
        ref_layer_norm(xv, wv, NULL, 4, 33, 1e-5, y, m, r);
        if (CHECK_OK(dr_layer_norm(x, &c, 1, w, NULL, 1e-5, &out, &mean, NULL))) {
            CHECK_EQ_INT(out->scalar_type, dts[k]);
            CHECK_EQ_INT(mean->scalar_type, DR_F32);
            CHECK_EQ_INT(mismatches(out, y, k ? 1e-2 : 2e-3, 1e-2), 0);
        }
        dr_tensor_release(out);
        dr_tensor_release(mean);
        free(xv);
        free(wv);
        dr_tensor_release(x);
        dr_tensor_release(w);
    }
}

typedef struct ln_ctx {
    int64_t shape[2];
    int32_t nnorm;
    bool weight, bias;
} ln_ctx;

/* inputs: x stored [.., last, second-to-last] (the op sees a transpose), w, b. */
static dr_status ln_forward(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const ln_ctx *c = ctx;
    dr_tensor *v = NULL;
    dr_status st = dr_tensor_transpose(in[0], -1, -2, &v);
    if (st == DR_OK)
        st = dr_layer_norm(v, c->shape, c->nnorm, c->weight ? in[1] : NULL,
                           c->bias ? in[2] : NULL, 1e-5, out, NULL, NULL);
    dr_tensor_release(v);
    return st;
}

static dr_status ln_backward(const dr_tensor *grad_out, dr_tensor **in, const void *ctx,
                             dr_tensor **grads) {
    const ln_ctx *c = ctx;
    dr_tensor *v = NULL, *y = NULL, *mean = NULL, *rstd = NULL, *gx = NULL;
    dr_status st = dr_tensor_transpose(in[0], -1, -2, &v);
    if (st == DR_OK)
        st = dr_layer_norm(v, c->shape, c->nnorm, c->weight ? in[1] : NULL,
                           c->bias ? in[2] : NULL, 1e-5, &y, &mean, &rstd);
    if (st == DR_OK)
        st = dr_layer_norm_backward(grad_out, v, c->shape, c->nnorm, mean, rstd,
                                    c->weight ? in[1] : NULL, &gx, c->weight ? &grads[1] : NULL,
                                    c->bias ? &grads[2] : NULL);
    if (st == DR_OK) st = dr_tensor_transpose(gx, -1, -2, &grads[0]);
    dr_tensor_release(v);
    dr_tensor_release(y);
    dr_tensor_release(mean);
    dr_tensor_release(rstd);
    dr_tensor_release(gx);
    return st;
}

static void test_layer_norm_gradcheck(void) {
    int64_t s[3] = {2, 5, 3}; /* the op sees [2, 3, 5] */
    int64_t seen[3] = {2, 3, 5};
    for (int32_t nnorm = 1; nnorm <= 2; nnorm++)
        for (int affine = 0; affine < 4; affine++) {
            ln_ctx c = {{0, 0}, nnorm, affine & 1, affine & 2};
            for (int32_t i = 0; i < nnorm; i++) c.shape[i] = seen[3 - nnorm + i];
            dr_tensor *in[3] = {smooth(s, 3, DR_F32, 2, 0.5, nnorm),
                                smooth(c.shape, nnorm, DR_F32, 1, 0.3, 8),
                                smooth(c.shape, nnorm, DR_F32, 1, 0, 9)};
            gradcheck("layer_norm", ln_forward, ln_backward, &c, in, 3, 1e-2, 3e-3, 3e-3);
            for (int i = 0; i < 3; i++) dr_tensor_release(in[i]);
        }
}

/* Normalisation forgets a shift of x: all gradients at x + 1000 equal those at x
 * (the backward sums are centred on the mean, so nothing cancels). */
static void test_layer_norm_shifted_backward(void) {
    int64_t s[2] = {6, 300}, c = 300;
    dr_tensor *g = smooth(s, 2, DR_F32, 1, 0, 13), *w = smooth(&c, 1, DR_F32, 1, 1, 14);
    dr_tensor *gx[2], *gw[2], *gb[2];
    for (int k = 0; k < 2; k++) {
        dr_tensor *x = quantized(s, 2, k ? 1000 : 0, 15), *y = NULL, *m = NULL, *r = NULL;
        gx[k] = gw[k] = gb[k] = NULL;
        CHECK_OK(dr_layer_norm(x, &c, 1, w, NULL, 1e-5, &y, &m, &r));
        CHECK_OK(dr_layer_norm_backward(g, x, &c, 1, m, r, w, &gx[k], &gw[k], &gb[k]));
        dr_tensor_release(x);
        dr_tensor_release(y);
        dr_tensor_release(m);
        dr_tensor_release(r);
    }
    dr_tensor *pairs[3][2] = {{gx[0], gx[1]}, {gw[0], gw[1]}, {gb[0], gb[1]}};
    for (int p = 0; p < 3; p++) {
        double *want = su_get(pairs[p][0]);
        CHECK_EQ_INT(mismatches(pairs[p][1], want, 1e-4, 1e-4), 0);
        free(want);
        dr_tensor_release(pairs[p][0]);
        dr_tensor_release(pairs[p][1]);
    }
    dr_tensor_release(g);
    dr_tensor_release(w);
}

/* grad_weight / grad_bias sum over rows in a fixed order: same bits on 1 and 3
 * threads; each gradient can be asked for alone. */
static void test_layer_norm_threads(void) {
    int64_t s[2] = {700, 64}, c = 64;
    dr_tensor *x = smooth(s, 2, DR_F32, 2, 0, 10), *g = smooth(s, 2, DR_F32, 1, 0, 11);
    dr_tensor *w = smooth(&c, 1, DR_F32, 1, 1, 12), *y = NULL, *mean = NULL, *rstd = NULL;
    CHECK_OK(dr_layer_norm(x, &c, 1, w, NULL, 1e-5, &y, &mean, &rstd));
    dr_tensor *gx[2] = {NULL, NULL}, *gw[2] = {NULL, NULL}, *gb[2] = {NULL, NULL};
    int keep = dr_get_num_threads();
    for (int t = 0; t < 2; t++) {
        dr_set_num_threads(t ? 3 : 1);
        CHECK_OK(dr_layer_norm_backward(g, x, &c, 1, mean, rstd, w, &gx[t], &gw[t], &gb[t]));
    }
    dr_set_num_threads(keep);
    CHECK(bitwise_equal(gx[0], gx[1]));
    CHECK(bitwise_equal(gw[0], gw[1]));
    CHECK(bitwise_equal(gb[0], gb[1]));
    dr_tensor *only = NULL;
    if (CHECK_OK(dr_layer_norm_backward(g, x, &c, 1, mean, rstd, w, NULL, NULL, &only)))
        CHECK(bitwise_equal(only, gb[0]));
    dr_tensor_release(only);
    CHECK_OK(dr_layer_norm_backward(g, x, &c, 1, mean, rstd, w, NULL, NULL, NULL));
    /* grad_bias = column sums of g */
    double *gv = su_get(g), *gbv = su_get(gb[0]);
    for (int64_t j = 0; j < 64; j += 21) {
        double sum = 0;
        for (int64_t r = 0; r < 700; r++) sum += gv[r * 64 + j];
        CHECK_NEAR(gbv[j], sum, 1e-4 * (1 + fabs(sum)));
    }
    free(gv);
    free(gbv);
    for (int t = 0; t < 2; t++) {
        dr_tensor_release(gx[t]);
        dr_tensor_release(gw[t]);
        dr_tensor_release(gb[t]);
    }
    dr_tensor_release(x);
    dr_tensor_release(g);
    dr_tensor_release(w);
    dr_tensor_release(y);
    dr_tensor_release(mean);
    dr_tensor_release(rstd);
}

/* ---- group_norm ------------------------------------------------------------------------ */

static void ref_group_norm(const double *x, const double *w, const double *b, int64_t n,
                           int64_t c, int64_t hw, int64_t groups, double eps, double *y,
                           double *mean, double *rstd) {
    int64_t per = c / groups, slab = per * hw;
    for (int64_t t = 0; t < n * groups; t++) {
        const double *xs = x + t * slab;
        double m = 0, v = 0;
        for (int64_t i = 0; i < slab; i++) m += xs[i];
        m /= (double)slab;
        for (int64_t i = 0; i < slab; i++) v += (xs[i] - m) * (xs[i] - m);
        double rs = 1 / sqrt(v / (double)slab + eps);
        mean[t] = m;
        rstd[t] = rs;
        for (int64_t i = 0; i < slab; i++) {
            int64_t ch = (t % groups) * per + i / hw;
            y[t * slab + i] = (xs[i] - m) * rs * (w ? w[ch] : 1) + (b ? b[ch] : 0);
        }
    }
}

static void test_group_norm_forward(void) {
    struct { int64_t s[4]; int32_t nd; int64_t groups; } cases[] = {
        {{2, 6, 3, 5}, 4, 3}, {{2, 6, 3, 5}, 4, 1}, {{2, 6, 3, 5}, 4, 6},
        {{3, 4, 7}, 3, 2},    {{3, 4}, 2, 2},       {{1, 8, 2, 3}, 4, 4},
    };
    for (int32_t k = 0; k < LEN(cases); k++) {
        const int64_t *s = cases[k].s;
        int32_t nd = cases[k].nd;
        int64_t n = s[0], c = s[1], hw = su_count(s + 2, nd - 2), g = cases[k].groups;
        dr_tensor *x = smooth(s, nd, DR_F32, 2, 0.7, k), *xs = strided_copy(x);
        dr_tensor *w = smooth(&c, 1, DR_F32, 1, 0.5, 20), *b = smooth(&c, 1, DR_F32, 1, 0, 21);
        double *xv = su_get(x), *wv = su_get(w), *bv = su_get(b);
        double *y = malloc((size_t)(n * c * hw) * sizeof *y), m[64], r[64];
        for (int affine = 0; affine < 4; affine++) {
            bool hwt = affine & 1, hb = affine & 2;
            ref_group_norm(xv, hwt ? wv : NULL, hb ? bv : NULL, n, c, hw, g, 1e-5, y, m, r);
            for (int strided = 0; strided < 2; strided++) {
                dr_tensor *out = NULL, *mean = NULL, *rstd = NULL;
                if (!CHECK_OK(dr_group_norm(strided ? xs : x, g, hwt ? w : NULL, hb ? b : NULL,
                                            1e-5, &out, &mean, &rstd)))
                    continue;
                if (!CHECK_EQ_INT(mismatches(out, y, 1e-5, 1e-6), 0))
                    fprintf(stderr, "    case %d affine %d strided %d\n", k, affine, strided);
                CHECK_EQ_INT(mismatches(mean, m, 1e-6, 1e-7), 0);
                CHECK_EQ_INT(mismatches(rstd, r, 1e-5, 0), 0);
                CHECK_EQ_INT(mean->ndim, 2);
                CHECK_EQ_INT(mean->sizes[0], n);
                CHECK_EQ_INT(mean->sizes[1], g);
                dr_tensor_release(out);
                dr_tensor_release(mean);
                dr_tensor_release(rstd);
            }
        }
        free(xv);
        free(wv);
        free(bv);
        free(y);
        dr_tensor_release(x);
        dr_tensor_release(xs);
        dr_tensor_release(w);
        dr_tensor_release(b);
    }
}

/* A large mean (1e4 + unit spread) keeps its variance: the shifted one-pass sums. */
static void test_group_norm_extremes(void) {
    int64_t s[4] = {2, 64, 16, 16};
    dr_tensor *x = smooth(s, 4, DR_F32, 1, 1e4, 3), *out = NULL, *rstd = NULL;
    double *xv = su_get(x), *y = malloc(2 * 64 * 256 * sizeof *y), m[8], r[8];
    ref_group_norm(xv, NULL, NULL, 2, 64, 256, 4, 1e-6, y, m, r);
    if (CHECK_OK(dr_group_norm(x, 4, NULL, NULL, 1e-6, &out, NULL, &rstd))) {
        CHECK_EQ_INT(mismatches(rstd, r, 1e-3, 0), 0);
        CHECK_EQ_INT(mismatches(out, y, 0, 2e-3), 0);
    }
    free(xv);
    free(y);
    dr_tensor_release(x);
    dr_tensor_release(out);
    dr_tensor_release(rstd);
}

static void test_group_norm_shifted_backward(void) {
    int64_t s[4] = {2, 8, 9, 7}, c = 8;
    dr_tensor *g = smooth(s, 4, DR_F32, 1, 0, 16), *w = smooth(&c, 1, DR_F32, 1, 1, 17);
    dr_tensor *gx[2], *gw[2], *gb[2];
    for (int k = 0; k < 2; k++) {
        dr_tensor *x = quantized(s, 4, k ? 1000 : 0, 18), *y = NULL, *m = NULL, *r = NULL;
        gx[k] = gw[k] = gb[k] = NULL;
        CHECK_OK(dr_group_norm(x, 4, w, NULL, 1e-5, &y, &m, &r));
        CHECK_OK(dr_group_norm_backward(g, x, m, r, w, 4, &gx[k], &gw[k], &gb[k]));
        dr_tensor_release(x);
        dr_tensor_release(y);
        dr_tensor_release(m);
        dr_tensor_release(r);
    }
    dr_tensor *pairs[3][2] = {{gx[0], gx[1]}, {gw[0], gw[1]}, {gb[0], gb[1]}};
    for (int p = 0; p < 3; p++) {
        double *want = su_get(pairs[p][0]);
        CHECK_EQ_INT(mismatches(pairs[p][1], want, 1e-4, 1e-4), 0);
        free(want);
        dr_tensor_release(pairs[p][0]);
        dr_tensor_release(pairs[p][1]);
    }
    dr_tensor_release(g);
    dr_tensor_release(w);
}

static void test_group_norm_half(void) {
    int64_t s[4] = {2, 6, 3, 5}, c = 6;
    int32_t dts[2] = {DR_F16, DR_BF16};
    for (int k = 0; k < 2; k++) {
        dr_tensor *x = smooth(s, 4, dts[k], 2, 1, 6), *b = smooth(&c, 1, DR_F32, 1, 0, 7);
        dr_tensor *out = NULL;
        double *xv = su_get(x), *bv = su_get(b), y[180], m[6], r[6];
        ref_group_norm(xv, NULL, bv, 2, 6, 15, 3, 1e-5, y, m, r);
        if (CHECK_OK(dr_group_norm(x, 3, NULL, b, 1e-5, &out, NULL, NULL))) {
            CHECK_EQ_INT(out->scalar_type, dts[k]);
            CHECK_EQ_INT(mismatches(out, y, k ? 1e-2 : 2e-3, 1e-2), 0);
        }
        dr_tensor_release(out);
        free(xv);
        free(bv);
        dr_tensor_release(x);
        dr_tensor_release(b);
    }
}

typedef struct gn_ctx {
    int64_t groups;
    bool weight, bias;
} gn_ctx;

static dr_status gn_forward(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const gn_ctx *c = ctx;
    dr_tensor *v = NULL;
    dr_status st = dr_tensor_transpose(in[0], -1, -2, &v);
    if (st == DR_OK)
        st = dr_group_norm(v, c->groups, c->weight ? in[1] : NULL, c->bias ? in[2] : NULL, 1e-5,
                           out, NULL, NULL);
    dr_tensor_release(v);
    return st;
}

static dr_status gn_backward(const dr_tensor *grad_out, dr_tensor **in, const void *ctx,
                             dr_tensor **grads) {
    const gn_ctx *c = ctx;
    dr_tensor *v = NULL, *y = NULL, *mean = NULL, *rstd = NULL, *gx = NULL, *gs = NULL;
    dr_status st = dr_tensor_transpose(in[0], -1, -2, &v);
    if (st == DR_OK)
        st = dr_group_norm(v, c->groups, c->weight ? in[1] : NULL, c->bias ? in[2] : NULL, 1e-5,
                           &y, &mean, &rstd);
    if (st == DR_OK) {
        gs = strided_copy(grad_out);
        st = dr_group_norm_backward(gs, v, mean, rstd, c->weight ? in[1] : NULL, c->groups, &gx,
                                    c->weight ? &grads[1] : NULL, c->bias ? &grads[2] : NULL);
    }
    if (st == DR_OK) st = dr_tensor_transpose(gx, -1, -2, &grads[0]);
    dr_tensor_release(v);
    dr_tensor_release(y);
    dr_tensor_release(mean);
    dr_tensor_release(rstd);
    dr_tensor_release(gx);
    dr_tensor_release(gs);
    return st;
}

static void test_group_norm_gradcheck(void) {
    int64_t s[4] = {2, 6, 5, 3}, c = 6; /* the op sees [2, 6, 3, 5] */
    int64_t groups[2] = {3, 2};
    for (int gi = 0; gi < 2; gi++)
        for (int affine = 0; affine < 4; affine++) {
            gn_ctx ctx = {groups[gi], affine & 1, affine & 2};
            dr_tensor *in[3] = {smooth(s, 4, DR_F32, 2, 0.5, affine),
                                smooth(&c, 1, DR_F32, 1, 0.3, 8), smooth(&c, 1, DR_F32, 1, 0, 9)};
            gradcheck("group_norm", gn_forward, gn_backward, &ctx, in, 3, 1e-2, 3e-3, 3e-3);
            for (int i = 0; i < 3; i++) dr_tensor_release(in[i]);
        }
}

static void test_group_norm_threads(void) {
    int64_t s[4] = {4, 64, 16, 16}, c = 64;
    dr_tensor *x = smooth(s, 4, DR_F32, 2, 0, 10), *g = smooth(s, 4, DR_F32, 1, 0, 11);
    dr_tensor *w = smooth(&c, 1, DR_F32, 1, 1, 12), *b = smooth(&c, 1, DR_F32, 1, 0, 13);
    dr_tensor *y[2] = {NULL, NULL}, *mean = NULL, *rstd = NULL;
    dr_tensor *gx[2] = {NULL, NULL}, *gw[2] = {NULL, NULL}, *gb[2] = {NULL, NULL};
    int keep = dr_get_num_threads();
    for (int t = 0; t < 2; t++) {
        dr_set_num_threads(t ? 3 : 1);
        dr_tensor_release(mean);
        dr_tensor_release(rstd);
        CHECK_OK(dr_group_norm(x, 32, w, b, 1e-5, &y[t], &mean, &rstd));
        CHECK_OK(dr_group_norm_backward(g, x, mean, rstd, w, 32, &gx[t], &gw[t], &gb[t]));
    }
    dr_set_num_threads(keep);
    CHECK(bitwise_equal(y[0], y[1]));
    CHECK(bitwise_equal(gx[0], gx[1]));
    CHECK(bitwise_equal(gw[0], gw[1]));
    CHECK(bitwise_equal(gb[0], gb[1]));
    dr_tensor *only = NULL;
    if (CHECK_OK(dr_group_norm_backward(g, x, mean, rstd, w, 32, NULL, &only, NULL)))
        CHECK(bitwise_equal(only, gw[0]));
    dr_tensor_release(only);
    for (int t = 0; t < 2; t++) {
        dr_tensor_release(y[t]);
        dr_tensor_release(gx[t]);
        dr_tensor_release(gw[t]);
        dr_tensor_release(gb[t]);
    }
    dr_tensor_release(mean);
    dr_tensor_release(rstd);
    dr_tensor_release(x);
    dr_tensor_release(g);
    dr_tensor_release(w);
    dr_tensor_release(b);
}

/* ---- errors -------------------------------------------------------------------------- */

static void test_errors(void) {
    int64_t s[3] = {2, 6, 3}, c5 = 5, c6 = 6, sh[2] = {6, 4};
    dr_tensor *x = NULL, *xi = NULL, *w5 = NULL, *w6 = NULL, *y = NULL, *m = NULL, *r = NULL;
    CHECK_OK(dr_tensor_full(s, 3, DR_F32, CPU, 1, &x));
    CHECK_OK(dr_tensor_full(s, 3, DR_I32, CPU, 1, &xi));
    CHECK_OK(dr_tensor_full(&c5, 1, DR_F32, CPU, 1, &w5));
    CHECK_OK(dr_tensor_full(&c6, 1, DR_F32, CPU, 1, &w6));

    CHECK_FAILS(dr_layer_norm(x, sh, 2, NULL, NULL, 1e-5, &y, &m, &r), DR_ERR_SHAPE,
                "layer_norm: normalized_shape [6, 4] expects input of shape [*, 6, 4], got "
                "[2, 6, 3]");
    CHECK(y == NULL && m == NULL && r == NULL);
    int64_t three = 3;
    CHECK_FAILS(dr_layer_norm(x, &three, 1, w5, NULL, 1e-5, &y, NULL, NULL), DR_ERR_SHAPE,
                "layer_norm: weight has shape [5] but normalized_shape is [3]");
    CHECK_FAILS(dr_layer_norm(x, &three, 0, NULL, NULL, 1e-5, &y, NULL, NULL), DR_ERR_ARG,
                "layer_norm: normalized_shape must have 1 to 8 sizes, got 0");
    CHECK_FAILS(dr_layer_norm(x, &three, 1, NULL, NULL, -1, &y, NULL, NULL), DR_ERR_ARG,
                "layer_norm: eps must be a finite number >= 0, got -1");
    CHECK_FAILS(dr_layer_norm(x, NULL, 1, NULL, NULL, 1e-5, &y, NULL, NULL), DR_ERR_ARG,
                "layer_norm: normalized_shape is NULL");
    CHECK_FAILS(dr_layer_norm_backward(x, x, &three, 1, w5, w6, NULL, &y, NULL, NULL), DR_ERR_SHAPE,
                "layer_norm_backward: mean [5] should have 12 elements for input [2, 6, 3]");

    CHECK_FAILS(dr_group_norm(x, 4, NULL, NULL, 1e-5, &y, &m, &r), DR_ERR_SHAPE,
                "group_norm: expected the number of channels 6 of input [2, 6, 3] to be divisible "
                "by num_groups 4");
    CHECK(y == NULL && m == NULL && r == NULL);
    CHECK_FAILS(dr_group_norm(x, 0, NULL, NULL, 1e-5, &y, NULL, NULL), DR_ERR_ARG,
                "group_norm: num_groups must be positive, got 0");
    CHECK_FAILS(dr_group_norm(x, 3, w5, NULL, 1e-5, &y, NULL, NULL), DR_ERR_SHAPE,
                "group_norm: weight has shape [5] but the channel count of the input is [6]");
    CHECK_FAILS(dr_group_norm(w6, 3, NULL, NULL, 1e-5, &y, NULL, NULL), DR_ERR_SHAPE,
                "group_norm: expected input of shape [N, C, *] with at least 2 dims, got [6]");
    CHECK_FAILS(dr_group_norm(xi, 3, NULL, NULL, 1e-5, &y, NULL, NULL), DR_ERR_DTYPE,
                "group_norm: input [2, 6, 3] has dtype int32");
    CHECK_FAILS(dr_group_norm(x, 3, NULL, NULL, 1e-5, NULL, NULL, NULL), DR_ERR_ARG,
                "group_norm: out is NULL");
    CHECK_FAILS(dr_group_norm_backward(x, x, w6, w5, NULL, 3, &y, NULL, NULL), DR_ERR_SHAPE,
                "group_norm_backward: rstd [5] should have 6 elements");
    CHECK_FAILS(dr_group_norm_backward(w6, x, w6, w6, NULL, 3, &y, NULL, NULL), DR_ERR_SHAPE,
                "group_norm_backward: grad_out [6] and input [2, 6, 3] must have the same shape");
    dr_tensor_release(x);
    dr_tensor_release(xi);
    dr_tensor_release(w5);
    dr_tensor_release(w6);
}

int main(void) {
    test_layer_norm_forward();
    test_layer_norm_extremes();
    test_layer_norm_half();
    test_layer_norm_gradcheck();
    test_layer_norm_shifted_backward();
    test_layer_norm_threads();
    test_group_norm_forward();
    test_group_norm_extremes();
    test_group_norm_shifted_backward();
    test_group_norm_half();
    test_group_norm_gradcheck();
    test_group_norm_threads();
    test_errors();
    return check_summary("test_norm");
}
