/* Shape, reduction and random ops against naive loops: cat and stack (mixed
 * dtypes, non-contiguous inputs, more inputs than a tape node holds), narrow's
 * gradient, cumsum, arange and linspace, mean/var/std over dim sets (blocks of
 * a long reduction, 1 vs 2 threads bitwise), randint/normal_/dropout against the
 * Philox stream; gradients by finite differences, explicit and through the tape;
 * errors naming the op. */
#include "shape_util.h"

/* ---- cat / stack --------------------------------------------------------------------- */

typedef struct join_ctx {
    int32_t n, dim, stack, tape;
} join_ctx;

/* The op sees every other input transposed back from a [.., b, a] layout: the
 * stored inputs alternate between the shape and its last-two-dims swap. */
static dr_status views(dr_tensor **in, int32_t n, dr_tensor **v) {
    for (int32_t i = 0; i < n; i++) {
        dr_status st = i % 2 ? dr_tensor_transpose(in[i], -1, -2, &v[i])
                             : dr_tensor_transpose(in[i], 0, 0, &v[i]);
        if (st != DR_OK) return st;
    }
    return DR_OK;
}

static void release_all(dr_tensor **t, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        dr_tensor_release(t[i]);
        t[i] = NULL;
    }
}

static dr_status gc_join_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const join_ctx *c = ctx;
    dr_tensor *v[16] = {NULL};
    dr_status st = views(in, c->n, v);
    if (st == DR_OK)
        st = c->stack ? dr_stack((const dr_tensor *const *)v, c->n, c->dim, out)
                      : dr_cat((const dr_tensor *const *)v, c->n, c->dim, out);
    release_all(v, c->n);
    return st;
}

static dr_status gc_join_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const join_ctx *c = ctx;
    if (c->tape) return su_tape_grads(gc_join_fwd, ctx, in, c->n, g, grads);
    dr_tensor *v[16] = {NULL}, *gv[16] = {NULL};
    int64_t sizes[16];
    dr_status st = views(in, c->n, v);
    int32_t d = c->dim < 0 ? c->dim + v[0]->ndim + c->stack : c->dim;
    for (int32_t i = 0; i < c->n; i++) sizes[i] = c->stack ? 1 : v[i]->sizes[d];
    if (st == DR_OK)
        st = c->stack ? dr_stack_backward(g, c->n, c->dim, gv) : dr_cat_backward(g, sizes, c->n, c->dim, gv);
    for (int32_t i = 0; i < c->n && st == DR_OK; i++) { /* back to the stored layouts */
        dr_tensor *t = NULL;
        st = i % 2 ? dr_tensor_transpose(gv[i], -1, -2, &t) : dr_tensor_transpose(gv[i], 0, 0, &t);
        if (st == DR_OK) st = dr_tensor_contiguous(t, &grads[i]);
        dr_tensor_release(t);
    }
    release_all(v, c->n);
    release_all(gv, c->n);
    return st;
}

/* cat along dim 1 (or -2) of [2, k_i, 3] parts; stack of [2, 3] parts. */
static void test_join(void) {
    for (int stack = 0; stack < 2; stack++)
        for (int32_t n = 1; n <= 8; n += (n < 5 ? 1 : 3)) /* 1..5 and 8: a tree of nodes */
            for (int mode = 0; mode < 4; mode++) {
                join_ctx c = {n, mode & 1 ? -2 : 1, stack, mode >> 1};
                dr_tensor *in[16] = {NULL};
                for (int32_t i = 0; i < n; i++) {
                    int64_t k = stack ? 2 : 1 + i % 3;
                    int64_t s[3] = {2, k, 3}, st[3] = {2, 3, k};
                    in[i] = su_make(i % 2 ? st : s, 3, DR_F32, i, 0);
                }
                if (gradcheck(stack ? "stack" : "cat", gc_join_fwd, gc_join_bwd, &c, in, n, 1e-2,
                              1e-4, 1e-4))
                    fprintf(stderr, "  (n %d, dim %d, tape %d)\n", n, c.dim, c.tape);
                /* forward values against a naive join of the views' elements:
                 * out = for each outer index, each input's chunk in turn */
                dr_tensor *y = NULL, *v[16] = {NULL};
                if (CHECK_OK(gc_join_fwd(in, &c, &y)) && CHECK_OK(views(in, n, v))) {
                    int32_t d = c.dim < 0 ? c.dim + 3 + stack : c.dim;
                    int64_t outer = 1, pos = 0, bad = 0;
                    for (int32_t q = 0; q < d; q++) outer *= v[0]->sizes[q];
                    double *got = su_get(y), *vals[16];
                    for (int32_t i = 0; i < n; i++) vals[i] = su_get(v[i]);
                    for (int64_t o = 0; o < outer; o++)
                        for (int32_t i = 0; i < n; i++) {
                            int64_t chunk = dr_tensor_numel(v[i]) / outer;
                            for (int64_t e = 0; e < chunk; e++) bad += got[pos++] != vals[i][o * chunk + e];
                        }
                    CHECK_EQ_INT(pos, dr_tensor_numel(y));
                    CHECK_EQ_INT(bad, 0);
                    for (int32_t i = 0; i < n; i++) free(vals[i]);
                    free(got);
                }
                release_all(v, n);
                dr_tensor_release(y);
                release_all(in, n);
            }
}

/* 21 inputs: a tape tree two levels deep; each input's gradient is its slice */
static void test_join_many(void) {
    enum { N = 21 };
    dr_tensor *in[N], *y = NULL, *g = NULL;
    int64_t total = 0;
    for (int i = 0; i < N; i++) {
        int64_t s[2] = {1 + i % 2, 3};
        in[i] = su_make(s, 2, DR_F32, i, 0);
        total += s[0];
        CHECK_OK(dr_tensor_set_requires_grad(in[i], 1));
    }
    int64_t gs[2] = {total, 3};
    g = su_make(gs, 2, DR_F32, 99, 0);
    double *gv = su_get(g);
    if (CHECK_OK(dr_cat((const dr_tensor *const *)in, N, 0, &y)) && CHECK_OK(dr_backward(y, g, 0))) {
        int64_t off = 0;
        for (int i = 0; i < N; i++) {
            dr_tensor *gi = NULL;
            if (CHECK_OK(dr_tensor_get_grad(in[i], &gi)) && CHECK(gi))
                su_close(gi, in[i]->sizes, 2, gv + off * 3, 0, "cat of 21: gradient");
            off += in[i]->sizes[0];
            dr_tensor_release(gi);
        }
    }
    dr_tensor_release(y);
    y = NULL;
    CHECK_OK(dr_tensor_set_requires_grad(in[0], 0));
    for (int i = 0; i < N; i++) { /* stack of the [2, 3] ones */
        dr_tensor_set_grad(in[i], NULL);
        if (in[i]->sizes[0] == 2) continue;
        dr_tensor_release(in[i]);
        in[i] = su_make((int64_t[]){2, 3}, 2, DR_F32, i, 0);
    }
    dr_tensor *sg = su_make((int64_t[]){2, N, 3}, 3, DR_F32, 98, 0);
    double *sv = su_get(sg);
    if (CHECK_OK(dr_stack((const dr_tensor *const *)in, N, -2, &y)) && CHECK_OK(dr_backward(y, sg, 0))) {
        for (int i = 1; i < N; i += 2) { /* those that required grad all along */
            dr_tensor *gi = NULL;
            double want[6];
            for (int a = 0; a < 2; a++)
                for (int e = 0; e < 3; e++) want[a * 3 + e] = sv[(a * N + i) * 3 + e];
            if (CHECK_OK(dr_tensor_get_grad(in[i], &gi)) && CHECK(gi))
                su_close(gi, in[i]->sizes, 2, want, 0, "stack of 21: gradient");
            dr_tensor_release(gi);
        }
    }
    free(gv);
    free(sv);
    dr_tensor_release(y);
    dr_tensor_release(g);
    dr_tensor_release(sg);
    release_all(in, N);
}

/* mixed dtypes promote; the inputs' gradients come back in their own dtypes */
static void test_join_dtypes(void) {
    int64_t s[2] = {2, 3};
    dr_tensor *a = su_make(s, 2, DR_F16, 1, 0), *b = su_make(s, 2, DR_F32, 2, 0);
    dr_tensor *i = su_make(s, 2, DR_I32, 3, 0), *l = su_make(s, 2, DR_I64, 4, 0), *y = NULL, *z = NULL;
    const dr_tensor *fl[2] = {a, b}, *il[2] = {i, l};
    if (CHECK_OK(dr_cat(fl, 2, 0, &y))) CHECK_EQ_INT(y->scalar_type, DR_F32);
    if (CHECK_OK(dr_stack(il, 2, 2, &z))) {
        CHECK_EQ_INT(z->scalar_type, DR_I64);
        CHECK(z->ndim == 3 && z->sizes[0] == 2 && z->sizes[1] == 3 && z->sizes[2] == 2);
    }
    dr_tensor_release(y);
    CHECK_OK(dr_tensor_set_requires_grad(a, 1));
    dr_tensor *ga = NULL, *sum = NULL;
    if (CHECK_OK(dr_cat(fl, 2, 1, &y)) && CHECK_OK(dr_sum(y, NULL, 0, 0, &sum)) &&
        CHECK_OK(dr_backward(sum, NULL, 0)) && CHECK_OK(dr_tensor_get_grad(a, &ga)) && CHECK(ga))
        CHECK_EQ_INT(ga->scalar_type, DR_F16);
    dr_tensor *objs[] = {a, b, i, l, y, z, ga, sum};
    for (size_t k = 0; k < sizeof objs / sizeof *objs; k++) dr_tensor_release(objs[k]);
}

/* narrow views (what split and chunk return) carry their gradient */
typedef struct narrow_ctx {
    int tape;
} narrow_ctx;

static dr_status gc_split_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    (void)ctx;
    dr_tensor *t = NULL, *p[3] = {NULL};
    dr_status st = dr_tensor_transpose(in[0], 0, 1, &t); /* [5, 4] seen as [4, 5] */
    if (st == DR_OK) st = dr_tensor_narrow(t, 1, 0, 2, &p[0]);
    if (st == DR_OK) st = dr_tensor_narrow(t, -1, -3, 2, &p[1]);
    if (st == DR_OK) st = dr_tensor_narrow(t, 1, 4, 1, &p[2]);
    const dr_tensor *parts[4] = {p[2], p[0], p[1], p[0]};
    if (st == DR_OK) st = dr_cat(parts, 4, 1, out);
    release_all(p, 3);
    dr_tensor_release(t);
    return st;
}

static dr_status gc_split_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    return su_tape_grads(gc_split_fwd, ctx, in, 1, g, grads);
}

static void test_narrow_grad(void) {
    int64_t s[2] = {5, 4};
    dr_tensor *x = su_make(s, 2, DR_F32, 5, 0);
    narrow_ctx c = {1};
    gradcheck("narrow pieces (tape)", gc_split_fwd, gc_split_bwd, &c, &x, 1, 1e-2, 1e-4, 1e-4);
    dr_tensor_release(x);
}

/* ---- cumsum ------------------------------------------------------------------------ */

typedef struct cum_ctx {
    int32_t dim;
    int tape;
} cum_ctx;

static dr_status gc_cum_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const cum_ctx *c = ctx;
    dr_tensor *t = NULL;
    dr_status st = dr_tensor_transpose(in[0], 0, 2, &t);
    if (st == DR_OK) st = dr_cumsum(t, c->dim, out);
    dr_tensor_release(t);
    return st;
}

static dr_status gc_cum_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const cum_ctx *c = ctx;
    if (c->tape) return su_tape_grads(gc_cum_fwd, ctx, in, 1, g, grads);
    dr_tensor *gt = NULL, *t = NULL;
    dr_status st = dr_cumsum_backward(g, c->dim, &gt);
    if (st == DR_OK) st = dr_tensor_transpose(gt, 0, 2, &t);
    if (st == DR_OK) st = dr_tensor_contiguous(t, &grads[0]);
    dr_tensor_release(gt);
    dr_tensor_release(t);
    return st;
}

static void test_cumsum(void) {
    int64_t s[3] = {3, 4, 5};
    double *xv = su_values(60, 3, 0);
    for (int32_t dim = -3; dim < 3; dim++) {
        int32_t d = dim < 0 ? dim + 3 : dim;
        double want[60];
        for (int64_t i = 0; i < 60; i++) {
            int64_t c[3] = {i / 20, i / 5 % 4, i % 5};
            double acc = 0;
            for (int64_t k = 0; k <= c[d]; k++) {
                int64_t q[3] = {c[0], c[1], c[2]};
                q[d] = k;
                acc += xv[(q[0] * 4 + q[1]) * 5 + q[2]];
            }
            want[i] = acc;
        }
        dr_tensor *x = su_from(xv, s, 3, DR_F32), *xs = su_spread(x), *xi = su_from(xv, s, 3, DR_BF16);
        dr_tensor *y = NULL, *yi = NULL, *b = NULL, *yb = NULL;
        if (CHECK_OK(dr_cumsum(xs, dim, &y))) su_close(y, s, 3, want, 1e-6, "cumsum");
        if (CHECK_OK(dr_cumsum(xi, dim, &yi))) {
            CHECK_EQ_INT(yi->scalar_type, DR_BF16);
            su_close(yi, s, 3, want, 1e-2, "cumsum bf16");
        }
        CHECK_OK(dr_tensor_to_dtype(x, DR_BOOL, &b)); /* bool sums to int64 counts */
        if (CHECK_OK(dr_cumsum(b, dim, &yb))) CHECK_EQ_INT(yb->scalar_type, DR_I64);
        dr_tensor *objs[] = {x, xs, xi, y, yi, b, yb};
        for (size_t k = 0; k < sizeof objs / sizeof *objs; k++) dr_tensor_release(objs[k]);
        for (int tape = 0; tape < 2; tape++) {
            cum_ctx c = {dim, tape};
            dr_tensor *in = su_make((int64_t[]){5, 4, 3}, 3, DR_F32, 9, 0);
            gradcheck(tape ? "cumsum (tape)" : "cumsum", gc_cum_fwd, gc_cum_bwd, &c, &in, 1, 1e-2,
                      1e-4, 1e-4);
            dr_tensor_release(in);
        }
    }
    dr_tensor *z = NULL, *zc = NULL; /* 0-d */
    CHECK_OK(dr_tensor_full(NULL, 0, DR_F32, CPU, 2.5, &z));
    if (CHECK_OK(dr_cumsum(z, -1, &zc))) su_close(zc, NULL, 0, (double[]){2.5}, 0, "cumsum 0-d");
    dr_tensor_release(z);
    dr_tensor_release(zc);
    free(xv);
}

/* ---- arange / linspace ----------------------------------------------------------------- */

static void test_ranges(void) {
    dr_tensor *t = NULL;
    if (CHECK_OK(dr_arange(0, 5, 1, DR_I64, CPU, &t)))
        su_close(t, (int64_t[]){5}, 1, (double[]){0, 1, 2, 3, 4}, 0, "arange(5)");
    dr_tensor_release(t);
    if (CHECK_OK(dr_arange(1, -1.1, -0.5, DR_F32, CPU, &t))) /* ceil(4.2) = 5 values */
        su_close(t, (int64_t[]){5}, 1, (double[]){1, 0.5, 0, -0.5, -1}, 0, "arange(1, -1.1, -0.5)");
    dr_tensor_release(t);
    if (CHECK_OK(dr_arange(9007199254740000.0, 9007199254740003.0, 1, DR_I64, CPU, &t)))
        CHECK_EQ_INT(((int64_t *)dr_tensor_data(t))[2], 9007199254740002LL);
    dr_tensor_release(t);
    if (CHECK_OK(dr_arange(3, 3, 1, DR_F32, CPU, &t))) CHECK_EQ_INT(t->sizes[0], 0);
    dr_tensor_release(t);
    if (CHECK_OK(dr_linspace(-1, 1, 5, DR_F32, CPU, &t)))
        su_close(t, (int64_t[]){5}, 1, (double[]){-1, -0.5, 0, 0.5, 1}, 0, "linspace");
    dr_tensor_release(t);
    if (CHECK_OK(dr_linspace(0, 1, 7, DR_F32, CPU, &t))) { /* both ends exact */
        float *f = dr_tensor_data(t);
        CHECK(f[0] == 0.0f && f[6] == 1.0f && f[5] == 1.0f - (1.0f / 6.0f));
    }
    dr_tensor_release(t);
    if (CHECK_OK(dr_linspace(2, 7, 1, DR_F32, CPU, &t))) su_close(t, (int64_t[]){1}, 1, (double[]){2}, 0, "linspace 1");
    dr_tensor_release(t);
    if (CHECK_OK(dr_linspace(0, 10, 4, DR_I64, CPU, &t)))
        su_close(t, (int64_t[]){4}, 1, (double[]){0, 3, 6, 10}, 0, "linspace int64");
    dr_tensor_release(t);
    CHECK_FAILS(dr_arange(0, 1, 0, DR_F32, CPU, &t), DR_ERR_ARG, "arange: step must be nonzero");
    CHECK_FAILS(dr_arange(0, -1, 1, DR_F32, CPU, &t), DR_ERR_ARG, "arange: upper bound (-1) and lower bound (0) inconsistent");
    CHECK_FAILS(dr_arange(0, 1, 1, DR_BOOL, CPU, &t), DR_ERR_DTYPE, "arange: dtype bool");
    CHECK_FAILS(dr_linspace(0, 1, -2, DR_F32, CPU, &t), DR_ERR_ARG, "linspace: number of steps must be non-negative");
}

/* ---- mean / var / std ---------------------------------------------------------------- */

/* reference moments over the dims in `mask` of x [s0, s1, s2] */
static void ref_moments(const double *x, const int64_t *s, const bool *mask, double corr, int kind,
                        double *out) {
    int64_t os[3];
    for (int d = 0; d < 3; d++) os[d] = mask[d] ? 1 : s[d];
    int64_t nout = os[0] * os[1] * os[2];
    for (int64_t q = 0; q < nout; q++) {
        int64_t c[3] = {q / (os[1] * os[2]), q / os[2] % os[1], q % os[2]};
        double sum = 0, n = 0, m2 = 0;
        for (int pass = 0; pass < 2; pass++)
            for (int64_t a = 0; a < s[0]; a++)
                for (int64_t b = 0; b < s[1]; b++)
                    for (int64_t e = 0; e < s[2]; e++) {
                        if ((!mask[0] && a != c[0]) || (!mask[1] && b != c[1]) || (!mask[2] && e != c[2]))
                            continue;
                        double v = x[(a * s[1] + b) * s[2] + e];
                        if (pass == 0) sum += v, n++;
                        else m2 += (v - sum / n) * (v - sum / n);
                    }
        double var = m2 / (n - corr > 0 ? n - corr : 0);
        out[q] = kind == 0 ? sum / n : kind == 1 ? var : sqrt(var);
    }
}

typedef struct mom_ctx {
    int kind; /* 0 mean, 1 var, 2 std */
    const int32_t *dims;
    int32_t ndims;
    int keepdim, tape;
    double corr;
} mom_ctx;

static dr_status gc_mom_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const mom_ctx *c = ctx;
    dr_tensor *t = NULL;
    dr_status st = dr_tensor_transpose(in[0], 0, 1, &t);
    if (st != DR_OK) return st;
    if (c->kind == 0) st = dr_mean(t, c->dims, c->ndims, c->keepdim, out);
    else if (c->kind == 1) st = dr_var(t, c->dims, c->ndims, c->corr, c->keepdim, out);
    else st = dr_std(t, c->dims, c->ndims, c->corr, c->keepdim, out);
    dr_tensor_release(t);
    return st;
}

static dr_status gc_mom_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const mom_ctx *c = ctx;
    if (c->tape) return su_tape_grads(gc_mom_fwd, ctx, in, 1, g, grads);
    dr_tensor *t = NULL, *y = NULL, *gt = NULL, *back = NULL;
    dr_status st = dr_tensor_transpose(in[0], 0, 1, &t);
    if (st == DR_OK && c->kind == 0) st = dr_mean_backward(g, t, c->dims, c->ndims, c->keepdim, &gt);
    if (st == DR_OK && c->kind == 1)
        st = dr_var_backward(g, t, c->dims, c->ndims, c->corr, c->keepdim, &gt);
    if (st == DR_OK && c->kind == 2) {
        st = dr_std(t, c->dims, c->ndims, c->corr, c->keepdim, &y);
        if (st == DR_OK) st = dr_std_backward(g, t, y, c->dims, c->ndims, c->corr, c->keepdim, &gt);
    }
    if (st == DR_OK) st = dr_tensor_transpose(gt, 0, 1, &back);
    if (st == DR_OK) st = dr_tensor_contiguous(back, &grads[0]);
    dr_tensor *objs[] = {t, y, gt, back};
    for (size_t k = 0; k < 4; k++) dr_tensor_release(objs[k]);
    return st;
}

static void test_moments(void) {
    static const int32_t dimsets[][3] = {{0}, {-1}, {1, 2}, {0, 2}, {2, 0, 1}};
    static const int32_t ndimsets[] = {1, 1, 2, 2, 3};
    int64_t s[3] = {3, 4, 5}; /* the op sees the transpose of a stored [4, 3, 5] */
    for (size_t k = 0; k < 6; k++) {
        const int32_t *dims = k < 5 ? dimsets[k] : NULL;
        int32_t ndims = k < 5 ? ndimsets[k] : 0;
        bool mask[3] = {ndims == 0, ndims == 0, ndims == 0};
        for (int32_t i = 0; i < ndims; i++) mask[(dims[i] + 3) % 3] = true;
        int64_t os[3], ks[3], nos = 0;
        for (int d = 0; d < 3; d++) ks[d] = mask[d] ? 1 : s[d];
        for (int kind = 0; kind < 3; kind++)
            for (int mode = 0; mode < 4; mode++) {
                mom_ctx c = {kind, dims, ndims, mode & 1, mode >> 1, kind == 2 ? 0 : 1.0};
                if (mode == 1 && kind > 0) c.corr = 2.5;
                nos = 0;
                for (int d = 0; d < 3; d++)
                    if (!mask[d] || c.keepdim) os[nos++] = ks[d];
                dr_tensor *x = su_make((int64_t[]){4, 3, 5}, 3, DR_F32, (int)k + kind, 1), *y = NULL;
                double *xs = su_get(x), xv[60], want[60];
                for (int64_t i = 0; i < 60; i++) { /* xv = the transposed view, row-major */
                    int64_t a = i / 20, b = i / 5 % 4, e = i % 5;
                    xv[i] = xs[(b * 3 + a) * 5 + e];
                }
                ref_moments(xv, s, mask, c.corr, kind, want);
                if (CHECK_OK(gc_mom_fwd(&x, &c, &y))) su_close(y, os, (int32_t)nos, want, 2e-6, "moments");
                if (gradcheck("mean/var/std", gc_mom_fwd, gc_mom_bwd, &c, &x, 1, 1e-2, 2e-3, 2e-3))
                    fprintf(stderr, "  (dims set %zu, kind %d, keepdim %d, tape %d)\n", k, kind,
                            c.keepdim, c.tape);
                dr_tensor_release(x);
                dr_tensor_release(y);
                free(xs);
            }
    }
}

/* long reductions (several blocks), half inputs, zero std, 1 vs 2 threads */
static void test_moments_more(void) {
    int64_t s[2] = {3, 50001};
    dr_tensor *x = su_make(s, 2, DR_F32, 4, 0), *r[2][2] = {{NULL}};
    double *xv = su_get(x), want[3], wstd[3];
    bool mask[3] = {false, true, false};
    ref_moments(xv, (int64_t[]){3, 50001, 1}, mask, 0, 0, want);
    ref_moments(xv, (int64_t[]){3, 50001, 1}, mask, 1, 2, wstd);
    int saved = dr_get_num_threads();
    int32_t d1 = 1;
    for (int t = 0; t < 2; t++) {
        dr_set_num_threads(t + 1);
        CHECK_OK(dr_mean(x, &d1, 1, 0, &r[t][0]));
        CHECK_OK(dr_std(x, &d1, 1, 1, 0, &r[t][1]));
    }
    dr_set_num_threads(saved);
    su_close(r[0][0], s, 1, want, 1e-6, "long mean");
    su_close(r[0][1], s, 1, wstd, 1e-6, "long std");
    su_same_bits(r[0][0], r[1][0], "mean threads");
    su_same_bits(r[0][1], r[1][1], "std threads");
    for (int t = 0; t < 2; t++) dr_tensor_release(r[t][0]), dr_tensor_release(r[t][1]);
    free(xv);
    dr_tensor_release(x);

    /* reducing leading dims of a contiguous tensor (the column path) */
    int64_t cs3[3] = {20, 15, 130};
    dr_tensor *cx = su_make(cs3, 3, DR_F32, 6, 0), *cr[2][2] = {{NULL}};
    double *cv = su_get(cx), *cm = malloc(130 * sizeof(double)), *cvar = malloc(130 * sizeof(double));
    bool lead[3] = {true, true, false};
    ref_moments(cv, cs3, lead, 0, 0, cm);
    ref_moments(cv, cs3, lead, 1, 1, cvar);
    int32_t d01[2] = {0, 1};
    for (int t = 0; t < 2; t++) {
        dr_set_num_threads(t + 1);
        CHECK_OK(dr_mean(cx, d01, 2, 0, &cr[t][0]));
        CHECK_OK(dr_var(cx, d01, 2, 1, 0, &cr[t][1]));
    }
    dr_set_num_threads(saved);
    su_close(cr[0][0], cs3 + 2, 1, cm, 1e-6, "leading mean");
    su_close(cr[0][1], cs3 + 2, 1, cvar, 1e-6, "leading var");
    su_same_bits(cr[0][0], cr[1][0], "leading mean threads");
    su_same_bits(cr[0][1], cr[1][1], "leading var threads");
    for (int t = 0; t < 2; t++) dr_tensor_release(cr[t][0]), dr_tensor_release(cr[t][1]);
    dr_tensor_release(cx);
    free(cv), free(cm), free(cvar);

    int64_t hs[2] = {2, 6};
    dr_tensor *h = su_make(hs, 2, DR_F16, 5, 0), *hm = NULL, *c = NULL, *cs = NULL, *g = NULL;
    double *hv = su_get(h), hw[2];
    ref_moments(hv, (int64_t[]){2, 6, 1}, mask, 1, 1, hw);
    if (CHECK_OK(dr_var(h, &d1, 1, 1, 0, &hm))) {
        CHECK_EQ_INT(hm->scalar_type, DR_F16);
        su_close(hm, hs, 1, hw, 1e-3, "var float16");
    }
    /* std of a constant row: 0, and a zero (not NaN) gradient, as torch */
    CHECK_OK(dr_tensor_full(hs, 2, DR_F32, CPU, 1.5, &c));
    CHECK_OK(dr_tensor_set_requires_grad(c, 1));
    dr_tensor *sum = NULL;
    if (CHECK_OK(dr_std(c, &d1, 1, 1, 0, &cs)) && CHECK_OK(dr_sum(cs, NULL, 0, 0, &sum)) &&
        CHECK_OK(dr_backward(sum, NULL, 0)) && CHECK_OK(dr_tensor_get_grad(c, &g)) && CHECK(g)) {
        double zeros[12] = {0};
        su_close(g, hs, 2, zeros, 0, "std grad at 0");
    }
    /* var of one element with correction 1 is NaN, as torch */
    dr_tensor *one = NULL, *v1 = NULL;
    CHECK_OK(dr_tensor_full((int64_t[]){1}, 1, DR_F32, CPU, 3, &one));
    if (CHECK_OK(dr_var(one, NULL, 0, 1, 0, &v1))) CHECK(isnan(*(float *)dr_tensor_data(v1)));
    dr_tensor *objs[] = {h, hm, c, cs, g, sum, one, v1};
    for (size_t k = 0; k < sizeof objs / sizeof *objs; k++) dr_tensor_release(objs[k]);
    free(hv);
}

/* ---- randint / normal_ / dropout --------------------------------------------------------- */

static void philox(uint64_t block, uint64_t seed, uint32_t *x) {
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    dr_philox4x32(ctr, key, x);
}

static void test_random(void) {
    /* randint: the documented layouts, narrow and wide ranges */
    dr_generator gen = {77, 5};
    dr_tensor *r = NULL;
    int64_t s[1] = {7};
    if (CHECK_OK(dr_randint(-3, 10, s, 1, DR_I64, CPU, &gen, &r))) {
        int64_t *v = dr_tensor_data(r), bad = 0;
        for (int64_t i = 0; i < 7; i++) {
            uint32_t x[4];
            philox(5 + (uint64_t)i / 4, 77, x);
            bad += v[i] != -3 + (int64_t)(((uint64_t)x[i % 4] * 13) >> 32);
        }
        CHECK_EQ_INT(bad, 0);
        CHECK_EQ_INT(gen.offset, 5 + 2);
    }
    dr_tensor_release(r);
    int64_t lo = -((int64_t)1 << 40), hi = (int64_t)1 << 41;
    if (CHECK_OK(dr_randint(lo, hi, s, 1, DR_I64, CPU, &gen, &r))) {
        int64_t *v = dr_tensor_data(r), bad = 0;
        for (int64_t i = 0; i < 7; i++) {
            uint32_t x[4];
            philox(7 + (uint64_t)i / 2, 77, x);
            uint64_t bits = (uint64_t)x[2 * (i % 2)] | (uint64_t)x[2 * (i % 2) + 1] << 32;
            uint64_t draw = (uint64_t)(((unsigned __int128)bits * (uint64_t)(hi - lo)) >> 64);
            bad += v[i] != lo + (int64_t)draw || v[i] < lo || v[i] >= hi;
        }
        CHECK_EQ_INT(bad, 0);
        CHECK_EQ_INT(gen.offset, 7 + 4);
    }
    dr_tensor_release(r);
    CHECK_FAILS(dr_randint(3, 3, s, 1, DR_I64, CPU, &gen, &r), DR_ERR_ARG, "randint: random_ expects 'from' to be less than 'to'");

    /* normal_: mean + std * the randn stream, in row-major order of a strided target */
    int64_t ms[2] = {3, 5};
    dr_generator g1 = {9, 2}, g2 = {9, 2};
    dr_tensor *base = NULL, *t = NULL, *z = NULL;
    CHECK_OK(dr_tensor_full((int64_t[]){5, 3}, 2, DR_F32, CPU, 0, &base));
    CHECK_OK(dr_tensor_transpose(base, 0, 1, &t));
    if (CHECK_OK(dr_normal_(t, 1.5, 0.5, &g1)) && CHECK_OK(dr_randn(ms, 2, DR_F32, CPU, &g2, &z))) {
        double *zv = su_get(z);
        for (int i = 0; i < 15; i++) zv[i] = (float)((float)zv[i] * 0.5f + 1.5f);
        su_close(t, ms, 2, zv, 0, "normal_");
        CHECK_EQ_INT(g1.offset, g2.offset);
        free(zv);
    }
    CHECK_FAILS(dr_normal_(t, 0, -1, &g1), DR_ERR_ARG, "normal_: expects std >= 0.0");
    dr_tensor *it = NULL;
    CHECK_OK(dr_tensor_full(ms, 2, DR_I64, CPU, 0, &it));
    CHECK_FAILS(dr_normal_(it, 0, 1, &g1), DR_ERR_DTYPE, "normal_: dtype int64");
    CHECK_OK(dr_tensor_set_requires_grad(base, 1));
    CHECK_FAILS(dr_normal_(base, 0, 1, &g1), DR_ERR_ARG, "normal_: a leaf tensor [5, 3] that requires grad");
    dr_tensor *objs[] = {base, t, z, it};
    for (size_t k = 0; k < 4; k++) dr_tensor_release(objs[k]);

    /* dropout: mask from the rand stream, scale 1/(1-p), backward from the mask */
    int64_t ds[2] = {4, 9};
    dr_generator g3 = {3, 0}, g4 = {3, 0};
    dr_tensor *x = su_make(ds, 2, DR_F32, 6, 0), *xs = su_spread(x), *y = NULL, *mask = NULL, *u = NULL;
    if (CHECK_OK(dr_dropout(xs, 0.25, 1, &g3, &y, &mask)) && CHECK_OK(dr_rand(ds, 2, DR_F32, CPU, &g4, &u))) {
        double *uv = su_get(u), *xv = su_get(x), want[36], mw[36];
        for (int i = 0; i < 36; i++) {
            mw[i] = uv[i] < 0.75;
            want[i] = mw[i] ? (float)xv[i] * (float)(1 / 0.75) : 0;
        }
        su_close(y, ds, 2, want, 0, "dropout");
        su_close(mask, ds, 2, mw, 0, "dropout mask");
        CHECK_EQ_INT(g3.offset, g4.offset);
        dr_tensor *gx = NULL, *gy = NULL, *ty = NULL, *tg = NULL;
        CHECK_OK(dr_tensor_full(ds, 2, DR_F32, CPU, 2, &gy));
        for (int i = 0; i < 36; i++) want[i] = mw[i] ? 2 * (float)(1 / 0.75) : 0;
        if (CHECK_OK(dr_dropout_backward(gy, mask, 0.25, &gx))) su_close(gx, ds, 2, want, 0, "dropout backward");
        dr_generator g5 = {3, 0};
        CHECK_OK(dr_tensor_set_requires_grad(x, 1));
        if (CHECK_OK(dr_dropout(x, 0.25, 1, &g5, &ty, NULL)) && CHECK_OK(dr_backward(ty, gy, 0)) &&
            CHECK_OK(dr_tensor_get_grad(x, &tg)) && CHECK(tg))
            su_close(tg, ds, 2, want, 0, "dropout tape");
        dr_tensor *o2[] = {gx, gy, ty, tg};
        for (size_t k = 0; k < 4; k++) dr_tensor_release(o2[k]);
        free(uv);
        free(xv);
    }
    dr_tensor *same = NULL, *zero = NULL;
    dr_generator g6 = {3, 0};
    if (CHECK_OK(dr_dropout(x, 0.5, 0, &g6, &same, NULL))) CHECK(same == x);
    dr_tensor_release(same);
    if (CHECK_OK(dr_dropout(x, 1, 1, &g6, &zero, NULL))) {
        double zeros[36] = {0};
        su_close(zero, ds, 2, zeros, 0, "dropout p=1");
        CHECK_EQ_INT(g6.offset, 0);
    }
    CHECK_FAILS(dr_dropout(x, 1.5, 1, &g6, &same, NULL), DR_ERR_ARG, "dropout: dropout probability has to be between 0 and 1, but got 1.5");
    dr_tensor *o3[] = {x, xs, y, mask, u, zero};
    for (size_t k = 0; k < 6; k++) dr_tensor_release(o3[k]);
}

/* ---- errors ------------------------------------------------------------------------------ */

static void test_errors(void) {
    int64_t s[2] = {2, 3}, s2[2] = {2, 4}, s3[3] = {2, 3, 1};
    dr_tensor *a = su_make(s, 2, DR_F32, 1, 0), *b = su_make(s2, 2, DR_F32, 2, 0);
    dr_tensor *c = su_make(s3, 3, DR_F32, 3, 0), *i = su_make(s, 2, DR_I64, 4, 0), *z = NULL, *y = NULL;
    CHECK_OK(dr_tensor_full(NULL, 0, DR_F32, CPU, 1, &z));
    const dr_tensor *ab[2] = {a, b}, *ac[2] = {a, c}, *zz[2] = {z, z}, *an[2] = {a, NULL};
    CHECK_FAILS(dr_cat(ab, 2, 0, &y), DR_ERR_SHAPE, "cat: sizes of tensors must match except in dimension 1: tensor 1 is [2, 3], tensor 2 is [2, 4]");
    CHECK_FAILS(dr_cat(ac, 2, 0, &y), DR_ERR_SHAPE, "cat: tensors must have the same number of dimensions");
    CHECK_FAILS(dr_cat(zz, 2, 0, &y), DR_ERR_SHAPE, "cat: zero-dimensional tensor");
    CHECK_FAILS(dr_cat(ab, 0, 0, &y), DR_ERR_ARG, "cat: expected a non-empty list");
    CHECK_FAILS(dr_cat(an, 2, 0, &y), DR_ERR_ARG, "cat: tensor 2 of the list is NULL");
    CHECK_FAILS(dr_cat(ab, 2, 2, &y), DR_ERR_ARG, "cat: dimension 3 out of range");
    CHECK_FAILS(dr_stack(ab, 2, 0, &y), DR_ERR_SHAPE, "stack: expects each tensor to be equal size, but got [2, 3] at entry 1 and [2, 4] at entry 2");
    CHECK_FAILS(dr_stack(ab, 2, 3, &y), DR_ERR_ARG, "stack: dimension 4 out of range for a 3-d tensor");
    CHECK_FAILS(dr_cat_backward(a, (int64_t[]){1, 1}, 2, 1, (dr_tensor *[2]){NULL}), DR_ERR_SHAPE, "cat_backward: the sizes add up to 2");
    CHECK_FAILS(dr_cumsum(a, 2, &y), DR_ERR_ARG, "cumsum: dimension 3 out of range");
    CHECK_FAILS(dr_mean(i, NULL, 0, 0, &y), DR_ERR_DTYPE, "mean: input dtype int64 is not supported");
    CHECK_FAILS(dr_var(a, (int32_t[]){1, -1}, 2, 1, 0, &y), DR_ERR_ARG, "var: dimension 2 appears twice");
    CHECK_FAILS(dr_std(a, (int32_t[]){-3}, 1, 1, 0, &y), DR_ERR_ARG, "std: dimension -3 out of range");
    CHECK_FAILS(dr_mean_backward(b, a, NULL, 0, 0, &y), DR_ERR_SHAPE, "mean_backward: grad_out float32 [2, 4] does not match");
    dr_tensor *objs[] = {a, b, c, i, z};
    for (size_t k = 0; k < 5; k++) dr_tensor_release(objs[k]);
}

int main(void) {
    test_join();
    test_join_many();
    test_join_dtypes();
    test_narrow_grad();
    test_cumsum();
    test_ranges();
    test_moments();
    test_moments_more();
    test_random();
    test_errors();
    return check_summary("test_shape");
}
