/* softmax / log_softmax: forward against naive double loops (every dim, negative
 * dims, non-contiguous inputs), extreme inputs (huge logits, -inf, constant rows),
 * float16/bfloat16, results independent of the thread count, finite-difference
 * checks of the backward on odd shapes, and errors that name the op and the shapes. */
#include "norm_util.h"

/* y over dim d of a contiguous [outer, n, inner] view, in double. */
static void ref_softmax(const double *x, double *y, const int64_t *s, int32_t nd, int32_t d,
                        int take_log) {
    int64_t outer = su_count(s, d), n = s[d], inner = su_count(s + d + 1, nd - d - 1);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < inner; j++) {
            const double *xr = x + o * n * inner + j;
            double *yr = y + o * n * inner + j;
            double m = -INFINITY, sum = 0;
            for (int64_t k = 0; k < n; k++) m = fmax(m, xr[k * inner]);
            for (int64_t k = 0; k < n; k++) sum += exp(xr[k * inner] - m);
            for (int64_t k = 0; k < n; k++)
                yr[k * inner] = take_log ? xr[k * inner] - m - log(sum)
                                         : exp(xr[k * inner] - m) / sum;
        }
}

static void test_softmax_forward(void) {
    int64_t s[3] = {3, 4, 5};
    dr_tensor *x = smooth(s, 3, DR_F32, 4, 0, 1), *xs = strided_copy(x);
    double *xv = su_get(x), *want = malloc(60 * sizeof *want);
    for (int log = 0; log < 2; log++)
        for (int32_t d = 0; d < 3; d++) {
            ref_softmax(xv, want, s, 3, d, log);
            for (int variant = 0; variant < 3; variant++) {
                /* dim as given, negative, and on the non-contiguous copy */
                const dr_tensor *in = variant == 2 ? xs : x;
                int32_t dim = variant == 1 ? d - 3 : d;
                dr_tensor *y = NULL;
                if (!CHECK_OK(log ? dr_log_softmax(in, dim, &y) : dr_softmax(in, dim, &y)))
                    continue;
                if (!CHECK_EQ_INT(mismatches(y, want, 1e-5, 1e-7), 0))
                    fprintf(stderr, "    log %d dim %d variant %d\n", log, d, variant);
                dr_tensor_release(y);
            }
        }
    free(xv);
    free(want);
    dr_tensor_release(x);
    dr_tensor_release(xs);
}

/* Huge logits stay finite; -inf entries get probability 0; an all -inf row is
 * NaN (torch); a 0-d tensor is a row of one. */
static void test_softmax_extremes(void) {
    double xv[12] = {1000, 1001, 1002, -1000, -INFINITY, -INFINITY, 0, 1,
                     -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t s[2] = {3, 4};
    dr_tensor *x = NULL, *y = NULL, *ly = NULL;
    CHECK_OK(dr_tensor_from_f64(xv, s, 2, DR_F32, CPU, &x));
    double e = exp(1), z = 1 + e + e * e;
    double want[12] = {1 / z, e / z, e * e / z, 0, 0, 0, 1 / e / (1 + 1 / e), 1 / (1 + 1 / e),
                       NAN, NAN, NAN, NAN};
    double want_log[12] = {log(1 / z), log(e / z), log(e * e / z), -2000 - log(z), -INFINITY,
                           -INFINITY, -1 - log(1 + 1 / e), -log(1 + 1 / e), NAN, NAN, NAN, NAN};
    if (CHECK_OK(dr_softmax(x, 1, &y))) {
        double *v = su_get(y);
        CHECK_EQ_INT(mismatches(y, want, 1e-6, 1e-7), 0);
        CHECK(isfinite(v[0]) && isfinite(v[2]));
        free(v);
    }
    if (CHECK_OK(dr_log_softmax(x, -1, &ly))) {
        double *v = su_get(ly);
        for (int i = 0; i < 8; i++)
            CHECK(isinf(want_log[i]) ? v[i] == want_log[i]
                                     : fabs(v[i] - want_log[i]) <= 1e-5 * fabs(want_log[i]) + 1e-6);
        for (int i = 8; i < 12; i++) CHECK(isnan(v[i]));
        free(v);
    }
    dr_tensor_release(x);
    dr_tensor_release(y);
    dr_tensor_release(ly);
    dr_tensor *s0 = NULL, *y0 = NULL;
    double v;
    CHECK_OK(dr_tensor_full(NULL, 0, DR_F32, CPU, 7, &s0));
    if (CHECK_OK(dr_softmax(s0, -1, &y0))) {
        CHECK_EQ_INT(y0->ndim, 0);
        CHECK_OK(dr_tensor_item(y0, &v));
        CHECK_NEAR(v, 1, 0);
    }
    dr_tensor_release(y0);
    if (CHECK_OK(dr_log_softmax(s0, 0, &y0)) && CHECK_OK(dr_tensor_item(y0, &v)))
        CHECK_NEAR(v, 0, 0);
    dr_tensor_release(y0);
    dr_tensor_release(s0);
}

static void test_softmax_half(void) {
    int64_t s[2] = {6, 77};
    int32_t dts[2] = {DR_F16, DR_BF16};
    for (int k = 0; k < 2; k++) {
        dr_tensor *x = smooth(s, 2, dts[k], 5, 0, 2), *y = NULL;
        double *xv = su_get(x), *want = malloc(6 * 77 * sizeof *want);
        for (int log = 0; log < 2; log++) {
            ref_softmax(xv, want, s, 2, 1, log);
            if (CHECK_OK(log ? dr_log_softmax(x, 1, &y) : dr_softmax(x, 1, &y))) {
                CHECK_EQ_INT(y->scalar_type, dts[k]);
                CHECK_EQ_INT(mismatches(y, want, k ? 1e-2 : 2e-3, 1e-4), 0);
            }
            dr_tensor_release(y);
        }
        free(xv);
        free(want);
        dr_tensor_release(x);
    }
}

/* Large tensors run in parallel; results match one thread bit for bit. */
static void test_softmax_threads(void) {
    int64_t s1[2] = {700, 77}, s2[3] = {40, 30, 41};
    const int64_t *shapes[2] = {s1, s2};
    int32_t nds[2] = {2, 3}, dims[2] = {1, 1};
    int keep = dr_get_num_threads();
    for (int k = 0; k < 2; k++) {
        dr_tensor *x = smooth(shapes[k], nds[k], DR_F32, 6, 0, 3);
        dr_tensor *g = smooth(shapes[k], nds[k], DR_F32, 1, 0, 4);
        dr_tensor *y[2] = {NULL, NULL}, *dx[2] = {NULL, NULL};
        for (int t = 0; t < 2; t++) {
            dr_set_num_threads(t ? 3 : 1);
            CHECK_OK(dr_log_softmax(x, dims[k], &y[t]));
            CHECK_OK(dr_log_softmax_backward(g, y[t], dims[k], &dx[t]));
        }
        CHECK(bitwise_equal(y[0], y[1]));
        CHECK(bitwise_equal(dx[0], dx[1]));
        double *xv = su_get(x), *want = malloc((size_t)dr_tensor_numel(x) * sizeof *want);
        ref_softmax(xv, want, shapes[k], nds[k], dims[k], 1);
        CHECK_EQ_INT(mismatches(y[1], want, 1e-5, 1e-6), 0);
        free(xv);
        free(want);
        for (int t = 0; t < 2; t++) {
            dr_tensor_release(y[t]);
            dr_tensor_release(dx[t]);
        }
        dr_tensor_release(x);
        dr_tensor_release(g);
    }
    dr_set_num_threads(keep);
}

typedef struct sm_ctx {
    int32_t dim;
    int log;
} sm_ctx;

/* The op sees the transpose of the stored input (non-contiguous). */
static dr_status sm_forward(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const sm_ctx *c = ctx;
    dr_tensor *v = NULL;
    dr_status st = dr_tensor_transpose(in[0], 1, 2, &v);
    if (st == DR_OK) st = c->log ? dr_log_softmax(v, c->dim, out) : dr_softmax(v, c->dim, out);
    dr_tensor_release(v);
    return st;
}

static dr_status sm_backward(const dr_tensor *grad_out, dr_tensor **in, const void *ctx,
                             dr_tensor **grads) {
    const sm_ctx *c = ctx;
    dr_tensor *y = NULL, *ys = NULL, *gx = NULL;
    dr_status st = sm_forward(in, ctx, &y);
    if (st == DR_OK) {
        ys = strided_copy(y); /* the backward also reads strided outputs */
        st = c->log ? dr_log_softmax_backward(grad_out, ys, c->dim, &gx)
                    : dr_softmax_backward(grad_out, ys, c->dim, &gx);
    }
    if (st == DR_OK) st = dr_tensor_transpose(gx, 1, 2, &grads[0]);
    dr_tensor_release(y);
    dr_tensor_release(ys);
    dr_tensor_release(gx);
    return st;
}

static void test_softmax_gradcheck(void) {
    int64_t s[3] = {3, 5, 4}; /* the op sees [3, 4, 5] */
    for (int log = 0; log < 2; log++)
        for (int32_t dim = 0; dim < 3; dim++) {
            sm_ctx c = {dim == 2 ? -1 : dim, log};
            dr_tensor *x = smooth(s, 3, DR_F32, 2, 0, dim);
            gradcheck(log ? "log_softmax" : "softmax", sm_forward, sm_backward, &c, &x, 1, 1e-2,
                      2e-3, 2e-3);
            dr_tensor_release(x);
        }
}

static void test_errors(void) {
    int64_t s[3] = {2, 6, 3}, c6 = 6;
    dr_tensor *x = NULL, *xi = NULL, *w6 = NULL, *y = NULL;
    CHECK_OK(dr_tensor_full(s, 3, DR_F32, CPU, 1, &x));
    CHECK_OK(dr_tensor_full(s, 3, DR_I32, CPU, 1, &xi));
    CHECK_OK(dr_tensor_full(&c6, 1, DR_F32, CPU, 1, &w6));
    CHECK_FAILS(dr_softmax(x, 3, &y), DR_ERR_ARG, "softmax: dimension 4 out of range");
    CHECK_FAILS(dr_log_softmax(xi, 0, &y), DR_ERR_DTYPE,
                "log_softmax: input [2, 6, 3] has dtype int32");
    CHECK_FAILS(dr_softmax_backward(x, w6, 0, &y), DR_ERR_SHAPE,
                "softmax_backward: grad_out [2, 6, 3] and output [6] must have the same shape");
    dr_tensor_release(x);
    dr_tensor_release(xi);
    dr_tensor_release(w6);
}

int main(void) {
    test_softmax_forward();
    test_softmax_extremes();
    test_softmax_half();
    test_softmax_threads();
    test_softmax_gradcheck();
    test_errors();
    return check_summary("test_softmax");
}
