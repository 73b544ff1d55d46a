/* Indexing ops against naive loops: index_select, gather, embedding, where, and
 * max/min/argmax/argmin with their indices; gradients by finite differences
 * through the explicit backward functions and through the tape (repeated
 * indices, negative dims, non-contiguous operands); bitwise equal scatter-adds
 * on 1 and 2 threads; error messages naming the op, the index and the size. */
#include "shape_util.h"

/* ---- index_select -------------------------------------------------------------- */

static void ref_index_select(const double *x, const int64_t *s, int32_t nd, int32_t dim,
                             const int64_t *idx, int64_t nidx, double *y) {
    int64_t outer = 1, inner = 1;
    for (int32_t d = 0; d < dim; d++) outer *= s[d];
    for (int32_t d = dim + 1; d < nd; d++) inner *= s[d];
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < nidx; j++)
            for (int64_t i = 0; i < inner; i++)
                y[(o * nidx + j) * inner + i] = x[(o * s[dim] + idx[j]) * inner + i];
}

static void test_index_select_forward(void) {
    int64_t s[3] = {5, 4, 3};
    int64_t idx[6] = {2, 0, 2, 1, 1, 0};
    double *xv = su_values(60, 1, 0);
    static const int32_t dtypes[] = {DR_F32, DR_F16, DR_I64, DR_BOOL};
    for (int32_t dim = -1; dim < 3; dim++) {
        int32_t d = dim < 0 ? dim + 3 : dim;
        int64_t nidx = d == 0 ? 6 : 3 + d, is[1] = {nidx};
        int64_t os[3] = {s[0], s[1], s[2]};
        os[d] = nidx;
        double *want = malloc((size_t)su_count(os, 3) * sizeof *want);
        ref_index_select(xv, s, 3, d, idx, nidx, want);
        dr_tensor *ix = su_index(idx, is, 1);
        for (int k = 0; k < 4; k++) {
            dr_tensor *x = su_from(xv, s, 3, dtypes[k]), *xs = su_spread(x), *y = NULL;
            int64_t n = su_count(os, 3);
            double *w = malloc((size_t)n * sizeof *w);
            for (int64_t i = 0; i < n; i++) /* as the dtype stores them */
                w[i] = dtypes[k] == DR_BOOL ? want[i] != 0 : dtypes[k] == DR_I64 ? trunc(want[i]) : want[i];
            if (CHECK_OK(dr_index_select(xs, dim, ix, &y))) {
                CHECK_EQ_INT(y->scalar_type, dtypes[k]);
                su_close(y, os, 3, w, 0, "index_select");
            }
            free(w);
            dr_tensor_release(x);
            dr_tensor_release(xs);
            dr_tensor_release(y);
        }
        dr_tensor_release(ix);
        free(want);
    }
    /* an empty index and a 0-d index */
    dr_tensor *x = su_make(s, 3, DR_F32, 2, 0), *y = NULL, *e = NULL, *z = NULL;
    int64_t zero = 0;
    e = su_index(&zero, &zero, 1);
    if (CHECK_OK(dr_index_select(x, 1, e, &y))) CHECK(y->sizes[1] == 0 && y->ndim == 3);
    dr_tensor_release(y);
    CHECK_OK(dr_tensor_from_f64((double[]){2}, NULL, 0, DR_I64, CPU, &z));
    if (CHECK_OK(dr_index_select(x, 0, z, &y))) CHECK(y->sizes[0] == 1 && y->ndim == 3);
    dr_tensor_release(y);
    dr_tensor_release(e);
    dr_tensor_release(z);
    dr_tensor_release(x);
    free(xv);
}

typedef struct ix_ctx {
    int32_t dim;
    const dr_tensor *index;
    int transposed; /* the op sees in[0] transposed (non-contiguous) */
    int tape;
} ix_ctx;

static dr_status view_in(dr_tensor *x, const ix_ctx *c, dr_tensor **v) {
    if (!c->transposed) return dr_tensor_transpose(x, 0, 0, v);
    return dr_tensor_transpose(x, 0, x->ndim - 1, v);
}

static dr_status gc_isel_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const ix_ctx *c = ctx;
    dr_tensor *v = NULL;
    dr_status st = view_in(in[0], c, &v);
    if (st == DR_OK) st = dr_index_select(v, c->dim, c->index, out);
    dr_tensor_release(v);
    return st;
}

/* grads[0] from the gradient of the view the op saw */
static dr_status undo_view(const ix_ctx *c, dr_tensor *gv, dr_tensor **g) {
    dr_tensor *t = NULL;
    dr_status st = view_in(gv, c, &t);
    if (st == DR_OK) st = dr_tensor_contiguous(t, g);
    dr_tensor_release(t);
    dr_tensor_release(gv);
    return st;
}

static dr_status gc_isel_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const ix_ctx *c = ctx;
    if (c->tape) return su_tape_grads(gc_isel_fwd, ctx, in, 1, g, grads);
    dr_tensor *v = NULL, *gv = NULL;
    dr_status st = view_in(in[0], c, &v);
    if (st == DR_OK) st = dr_index_select_backward(g, v->sizes, v->ndim, c->dim, c->index, &gv);
    dr_tensor_release(v);
    return st == DR_OK ? undo_view(c, gv, &grads[0]) : st;
}

static void test_index_select_backward(void) {
    int64_t s[3] = {4, 3, 5}, idx[7] = {1, 0, 1, 2, 1, 0, 2}, is[1] = {7};
    dr_tensor *ix = su_index(idx, is, 1);
    for (int32_t dim = -3; dim < 3; dim++)
        for (int mode = 0; mode < 4; mode++) {
            ix_ctx c = {dim, ix, mode & 1, mode >> 1};
            dr_tensor *x = su_make(s, 3, DR_F32, 3 + dim, 0);
            if (gradcheck("index_select", gc_isel_fwd, gc_isel_bwd, &c, &x, 1, 1e-2, 1e-3, 1e-3))
                fprintf(stderr, "  (dim %d, transposed %d, tape %d)\n", dim, mode & 1, mode >> 1);
            dr_tensor_release(x);
        }
    dr_tensor_release(ix);
}

/* ---- gather ----------------------------------------------------------------------- */

static void test_gather_forward(void) {
    int64_t s[3] = {3, 4, 5}, is[3] = {2, 4, 3};
    double *xv = su_values(60, 4, 0);
    for (int32_t dim = 0; dim < 3; dim++) {
        int64_t n = su_count(is, 3), *iv = malloc((size_t)n * sizeof *iv);
        for (int64_t i = 0; i < n; i++) iv[i] = (i * 7 + dim) % s[dim];
        double *want = malloc((size_t)n * sizeof *want);
        for (int64_t a = 0; a < is[0]; a++)
            for (int64_t b = 0; b < is[1]; b++)
                for (int64_t e = 0; e < is[2]; e++) {
                    int64_t q = (a * is[1] + b) * is[2] + e, c[3] = {a, b, e};
                    c[dim] = iv[q];
                    want[q] = xv[(c[0] * s[1] + c[1]) * s[2] + c[2]];
                }
        dr_tensor *x = su_from(xv, s, 3, DR_F32), *xs = su_spread(x);
        dr_tensor *ix = su_index(iv, is, 3), *ixs = su_spread(ix), *y = NULL, *y2 = NULL;
        if (CHECK_OK(dr_gather(xs, dim - 3, ixs, &y))) su_close(y, is, 3, want, 0, "gather");
        dr_tensor *xh = su_from(xv, s, 3, DR_BF16);
        if (CHECK_OK(dr_gather(xh, dim, ix, &y2))) {
            CHECK_EQ_INT(y2->scalar_type, DR_BF16);
            su_close(y2, is, 3, want, 0, "gather bf16");
        }
        dr_tensor *objs[] = {x, xs, ix, ixs, y, y2, xh};
        for (size_t k = 0; k < sizeof objs / sizeof *objs; k++) dr_tensor_release(objs[k]);
        free(iv);
        free(want);
    }
    /* 0-d input and index */
    dr_tensor *x0 = NULL, *i0 = NULL, *y0 = NULL;
    CHECK_OK(dr_tensor_from_f64((double[]){3.5}, NULL, 0, DR_F32, CPU, &x0));
    CHECK_OK(dr_tensor_from_f64((double[]){0}, NULL, 0, DR_I64, CPU, &i0));
    if (CHECK_OK(dr_gather(x0, 0, i0, &y0))) su_close(y0, NULL, 0, (double[]){3.5}, 0, "gather 0-d");
    dr_tensor_release(x0);
    dr_tensor_release(i0);
    dr_tensor_release(y0);
    free(xv);
}

static dr_status gc_gather_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const ix_ctx *c = ctx;
    dr_tensor *v = NULL;
    dr_status st = view_in(in[0], c, &v);
    if (st == DR_OK) st = dr_gather(v, c->dim, c->index, out);
    dr_tensor_release(v);
    return st;
}

static dr_status gc_gather_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const ix_ctx *c = ctx;
    if (c->tape) return su_tape_grads(gc_gather_fwd, ctx, in, 1, g, grads);
    dr_tensor *v = NULL, *gv = NULL;
    dr_status st = view_in(in[0], c, &v);
    if (st == DR_OK) st = dr_gather_backward(g, v->sizes, v->ndim, c->dim, c->index, &gv);
    dr_tensor_release(v);
    return st == DR_OK ? undo_view(c, gv, &grads[0]) : st;
}

static void test_gather_backward(void) {
    int64_t s[3] = {3, 4, 5}, is[3] = {3, 2, 4}; /* index fits the transposed view too */
    int64_t n = su_count(is, 3), *iv = malloc((size_t)n * sizeof *iv);
    for (int32_t dim = -1; dim < 3; dim++) {
        int32_t d = dim < 0 ? 2 : dim;
        for (int64_t i = 0; i < n; i++) iv[i] = (i * 5 + 1) % 3; /* repeats in range of 3 */
        dr_tensor *ix = su_index(iv, is, 3);
        for (int mode = 0; mode < 4; mode++) {
            ix_ctx c = {dim, ix, mode & 1, mode >> 1};
            int64_t xs[3] = {s[0], s[1], s[2]};
            if (c.transposed) xs[0] = s[2], xs[2] = s[0]; /* the view is [3, 4, 5] again */
            dr_tensor *x = su_make(xs, 3, DR_F32, 7 + d, 0);
            if (gradcheck("gather", gc_gather_fwd, gc_gather_bwd, &c, &x, 1, 1e-2, 1e-3, 1e-3))
                fprintf(stderr, "  (dim %d, transposed %d, tape %d)\n", dim, mode & 1, mode >> 1);
            dr_tensor_release(x);
        }
        dr_tensor_release(ix);
    }
    free(iv);
}

/* ---- embedding ---------------------------------------------------------------------- */

static void test_embedding(void) {
    int64_t ws[2] = {7, 3}, is[2] = {2, 4}, iv[8] = {6, 0, 3, 3, 1, 6, 6, 2};
    double *wv = su_values(21, 9, 0), want[24];
    for (int64_t i = 0; i < 8; i++)
        for (int64_t k = 0; k < 3; k++) want[i * 3 + k] = wv[iv[i] * 3 + k];
    dr_tensor *w = su_from(wv, ws, 2, DR_F32), *wsp = su_spread(w), *ix = su_index(iv, is, 2);
    dr_tensor *y = NULL, *i0 = NULL, *y0 = NULL;
    int64_t os[3] = {2, 4, 3};
    if (CHECK_OK(dr_embedding(ix, wsp, &y))) su_close(y, os, 3, want, 0, "embedding");
    CHECK_OK(dr_tensor_from_f64((double[]){3}, NULL, 0, DR_I64, CPU, &i0));
    if (CHECK_OK(dr_embedding(i0, w, &y0))) su_close(y0, ws + 1, 1, wv + 9, 0, "embedding 0-d");
    /* the weight gradient sums repeated rows, explicit and through the tape */
    double gv[24], gw[21] = {0};
    for (int i = 0; i < 24; i++) gv[i] = su_value(i, 11);
    for (int64_t i = 0; i < 8; i++)
        for (int64_t k = 0; k < 3; k++) gw[iv[i] * 3 + k] += gv[i * 3 + k];
    dr_tensor *g = su_from(gv, os, 3, DR_F32), *gs = su_spread(g), *dw = NULL, *y2 = NULL, *tw = NULL;
    if (CHECK_OK(dr_embedding_backward(gs, ix, 7, &dw))) su_close(dw, ws, 2, gw, 1e-6, "embedding grad");
    CHECK_OK(dr_tensor_set_requires_grad(w, 1));
    if (CHECK_OK(dr_embedding(ix, w, &y2)) && CHECK_OK(dr_backward(y2, g, 0)) &&
        CHECK_OK(dr_tensor_get_grad(w, &tw)) && CHECK(tw != NULL))
        su_close(tw, ws, 2, gw, 1e-6, "embedding tape grad");
    dr_tensor *objs[] = {w, wsp, ix, y, i0, y0, g, gs, dw, y2, tw};
    for (size_t k = 0; k < sizeof objs / sizeof *objs; k++) dr_tensor_release(objs[k]);
    free(wv);
}

/* Scatter-adds with many repeated indices give the same bits on 1 and 2 threads. */
static void test_determinism(void) {
    int saved = dr_get_num_threads();
    int64_t n = 40000, ws[2] = {7, 16}, is[1] = {n}, gs[2] = {n, 16};
    int64_t *iv = malloc((size_t)n * sizeof *iv);
    for (int64_t i = 0; i < n; i++) iv[i] = (i * i + 3 * i) % 7;
    dr_tensor *ix = su_index(iv, is, 1), *g = su_make(gs, 2, DR_F32, 12, 1);
    dr_tensor *emb[2] = {NULL}, *isel[2] = {NULL}, *gat[2] = {NULL};
    /* gather along dim 0 of [7, 16] with a [n, 16] index */
    int64_t *gv = malloc((size_t)(n * 16) * sizeof *gv);
    for (int64_t i = 0; i < n * 16; i++) gv[i] = (i / 16 * 3 + i % 5) % 7;
    dr_tensor *gix = su_index(gv, gs, 2);
    for (int t = 0; t < 2; t++) {
        dr_set_num_threads(t + 1);
        CHECK_OK(dr_embedding_backward(g, ix, 7, &emb[t]));
        CHECK_OK(dr_index_select_backward(g, ws, 2, 0, ix, &isel[t]));
        CHECK_OK(dr_gather_backward(g, ws, 2, 0, gix, &gat[t]));
    }
    dr_set_num_threads(saved);
    su_same_bits(emb[0], emb[1], "embedding_backward threads");
    su_same_bits(isel[0], isel[1], "index_select_backward threads");
    su_same_bits(gat[0], gat[1], "gather_backward threads");
    su_same_bits(emb[0], isel[0], "embedding = index_select backward");
    for (int t = 0; t < 2; t++) {
        dr_tensor_release(emb[t]);
        dr_tensor_release(isel[t]);
        dr_tensor_release(gat[t]);
    }
    dr_tensor_release(ix);
    dr_tensor_release(gix);
    dr_tensor_release(g);
    free(iv);
    free(gv);
}

/* ---- where -------------------------------------------------------------------------- */

typedef struct where_ctx {
    const dr_tensor *cond;
    int tape;
} where_ctx;

static dr_status gc_where_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const where_ctx *c = ctx;
    dr_tensor *bt = NULL; /* b seen transposed */
    dr_status st = dr_tensor_transpose(in[1], 0, 1, &bt);
    if (st == DR_OK) st = dr_where(c->cond, in[0], bt, out);
    dr_tensor_release(bt);
    return st;
}

static dr_status gc_where_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const where_ctx *c = ctx;
    if (c->tape) return su_tape_grads(gc_where_fwd, ctx, in, 2, g, grads);
    dr_tensor *bt = NULL, *gb = NULL;
    dr_status st = dr_tensor_transpose(in[1], 0, 1, &bt);
    if (st == DR_OK) st = dr_where_backward(g, c->cond, in[0], bt, &grads[0], &gb);
    dr_tensor_release(bt);
    if (st == DR_OK) st = dr_tensor_transpose(gb, 0, 1, &bt);
    if (st == DR_OK) st = dr_tensor_contiguous(bt, &grads[1]);
    dr_tensor_release(bt);
    dr_tensor_release(gb);
    return st;
}

static void test_where(void) {
    int64_t cs[2] = {3, 1}, as[1] = {4}, bs[2] = {3, 4}, bts[2] = {4, 3};
    double cv[3] = {1, 0, 1};
    dr_tensor *cond = su_from(cv, cs, 2, DR_BOOL), *a = su_make(as, 1, DR_I64, 1, 0);
    dr_tensor *b = su_make(bs, 2, DR_F32, 2, 0), *y = NULL;
    double *av = su_get(a), *bv = su_get(b), want[12];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) want[i * 4 + j] = cv[i] ? av[j] : bv[i * 4 + j];
    if (CHECK_OK(dr_where(cond, a, b, &y))) {
        CHECK_EQ_INT(y->scalar_type, DR_F32); /* int64 and float32 promote */
        su_close(y, bs, 2, want, 0, "where");
    }
    dr_tensor_release(y);
    free(av);
    free(bv);
    for (int tape = 0; tape < 2; tape++) {
        where_ctx c = {cond, tape};
        dr_tensor *in[2] = {su_make(as, 1, DR_F32, 3, 0), su_make(bts, 2, DR_F32, 4, 0)};
        gradcheck(tape ? "where (tape)" : "where", gc_where_fwd, gc_where_bwd, &c, in, 2, 1e-2,
                  1e-3, 1e-3);
        dr_tensor_release(in[0]);
        dr_tensor_release(in[1]);
    }
    dr_tensor_release(cond);
    dr_tensor_release(a);
    dr_tensor_release(b);
}

/* ---- max / min / argmax / argmin -------------------------------------------------------- */

static void test_extremes(void) {
    int64_t s[3] = {3, 5, 4};
    double *xv = su_values(60, 5, 0); /* many ties: the first one wins */
    xv[7] = NAN;                      /* row (0, 1, :) along dim 2 and column (0, :, 3) */
    dr_tensor *x = su_from(xv, s, 3, DR_F32), *xs = su_spread(x), *xi = NULL;
    xv[7] = 0;
    xi = su_from(xv, s, 3, DR_I64);
    xv[7] = NAN;
    for (int32_t dim = 0; dim < 3; dim++)
        for (int is_min = 0; is_min < 2; is_min++) {
            int64_t os[3] = {s[0], s[1], s[2]}, n;
            os[dim] = 1;
            n = su_count(os, 3);
            double *wv = malloc((size_t)n * sizeof *wv), *wi = malloc((size_t)n * sizeof *wi);
            double *wvi = malloc((size_t)n * sizeof *wvi), *wii = malloc((size_t)n * sizeof *wii);
            for (int64_t q = 0; q < n; q++) {
                int64_t c[3] = {q / (os[1] * os[2]), q / os[2] % os[1], q % os[2]};
                int64_t best = -1, besti = -1;
                double bv = 0, bvi = 0;
                for (int64_t k = 0; k < s[dim]; k++) {
                    c[dim] = k;
                    double v = xv[(c[0] * s[1] + c[1]) * s[2] + c[2]];
                    double vi = v != v ? 0 : trunc(v); /* as the int64 copy holds it */
                    if (best < 0 || (bv == bv && (v != v || (is_min ? v < bv : v > bv))))
                        best = k, bv = v;
                    if (besti < 0 || (is_min ? vi < bvi : vi > bvi)) besti = k, bvi = vi;
                }
                wv[q] = bv, wi[q] = (double)best, wvi[q] = bvi, wii[q] = (double)besti;
            }
            dr_tensor *v = NULL, *ix = NULL, *vi = NULL, *ii = NULL, *am = NULL;
            dr_status st = is_min ? dr_min_dim(xs, dim, 1, &v, &ix) : dr_max_dim(xs, dim, 1, &v, &ix);
            if (CHECK_OK(st)) {
                su_close(v, os, 3, wv, 0, is_min ? "min values" : "max values");
                su_close(ix, os, 3, wi, 0, is_min ? "min indices" : "max indices");
            }
            st = is_min ? dr_min_dim(xi, dim - 3, 0, &vi, &ii) : dr_max_dim(xi, dim - 3, 0, &vi, &ii);
            int64_t rs[2], nr = 0;
            for (int32_t d = 0; d < 3; d++)
                if (d != dim) rs[nr++] = s[d];
            if (CHECK_OK(st)) {
                CHECK_EQ_INT(vi->scalar_type, DR_I64);
                su_close(vi, rs, 2, wvi, 0, "int64 values");
                su_close(ii, rs, 2, wii, 0, "int64 indices");
            }
            st = is_min ? dr_argmin(x, &dim, 1, 0, &am) : dr_argmax(x, &dim, 1, 0, &am);
            if (CHECK_OK(st)) su_close(am, rs, 2, wi, 0, "argmax/argmin");
            dr_tensor *objs[] = {v, ix, vi, ii, am};
            for (size_t k = 0; k < 5; k++) dr_tensor_release(objs[k]);
            free(wv), free(wi), free(wvi), free(wii);
        }
    /* over everything: NaN wins; without NaN the first extreme of the flattened tensor */
    dr_tensor *m = NULL, *am = NULL, *d = NULL, *dm = NULL, *amk = NULL;
    if (CHECK_OK(dr_max(xs, &m))) CHECK(m->ndim == 0 && isnan(*(float *)dr_tensor_data(m)));
    double *dv = su_values(60, 8, 1);
    d = su_from(dv, s, 3, DR_F32);
    int64_t lo = 0;
    for (int64_t i = 1; i < 60; i++) lo = dv[i] < dv[lo] ? i : lo;
    if (CHECK_OK(dr_min(d, &dm))) su_close(dm, NULL, 0, &dv[lo], 0, "min all");
    if (CHECK_OK(dr_argmin(d, NULL, 0, 0, &am))) su_close(am, NULL, 0, (double[]){(double)lo}, 0, "argmin all");
    int64_t ones[3] = {1, 1, 1};
    if (CHECK_OK(dr_argmin(d, NULL, 0, 1, &amk))) su_close(amk, ones, 3, (double[]){(double)lo}, 0, "argmin keepdim");
    dr_tensor *objs[] = {x, xs, xi, m, am, d, dm, amk};
    for (size_t k = 0; k < sizeof objs / sizeof *objs; k++) dr_tensor_release(objs[k]);
    free(xv);
    free(dv);
}

typedef struct ext_ctx {
    int32_t dim; /* -100: over everything */
    int keepdim, is_min, tape;
} ext_ctx;

static dr_status gc_ext_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const ext_ctx *c = ctx;
    dr_tensor *t = NULL;
    dr_status st = dr_tensor_transpose(in[0], 0, 1, &t); /* non-contiguous */
    if (st == DR_OK && c->dim == -100) st = c->is_min ? dr_min(t, out) : dr_max(t, out);
    else if (st == DR_OK)
        st = c->is_min ? dr_min_dim(t, c->dim, c->keepdim, out, NULL)
                       : dr_max_dim(t, c->dim, c->keepdim, out, NULL);
    dr_tensor_release(t);
    return st;
}

static dr_status gc_ext_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const ext_ctx *c = ctx;
    if (c->tape) return su_tape_grads(gc_ext_fwd, ctx, in, 1, g, grads);
    dr_tensor *t = NULL, *r = NULL, *ix = NULL, *gt = NULL, *back = NULL;
    dr_status st = dr_tensor_transpose(in[0], 0, 1, &t);
    if (st == DR_OK && c->dim == -100) {
        st = c->is_min ? dr_min(t, &r) : dr_max(t, &r);
        if (st == DR_OK) st = c->is_min ? dr_min_backward(g, t, r, &gt) : dr_max_backward(g, t, r, &gt);
    } else if (st == DR_OK) {
        st = c->is_min ? dr_min_dim(t, c->dim, c->keepdim, NULL, &ix)
                       : dr_max_dim(t, c->dim, c->keepdim, NULL, &ix);
        if (st == DR_OK) st = dr_max_dim_backward(g, ix, t->sizes, t->ndim, c->dim, c->keepdim, &gt);
    }
    if (st == DR_OK) st = dr_tensor_transpose(gt, 0, 1, &back);
    if (st == DR_OK) st = dr_tensor_contiguous(back, &grads[0]);
    dr_tensor *objs[] = {t, r, ix, gt, back};
    for (size_t k = 0; k < 5; k++) dr_tensor_release(objs[k]);
    return st;
}

static void test_extreme_grads(void) {
    int64_t s[3] = {4, 3, 5};
    for (int32_t dim = -3; dim <= 3; dim++)
        for (int mode = 0; mode < 8; mode++) {
            ext_ctx c = {dim == 3 ? -100 : dim, mode & 1, (mode >> 1) & 1, mode >> 2};
            dr_tensor *x = su_make(s, 3, DR_F32, 20 + dim, 1);
            if (gradcheck("max/min", gc_ext_fwd, gc_ext_bwd, &c, &x, 1, 1e-3, 1e-3, 1e-3))
                fprintf(stderr, "  (dim %d, keepdim %d, min %d, tape %d)\n", c.dim, c.keepdim,
                        c.is_min, c.tape);
            dr_tensor_release(x);
        }
    /* ties over everything share the gradient, as torch */
    int64_t n3[1] = {4};
    dr_tensor *x = su_from((double[]){1, 3, -2, 3}, n3, 1, DR_F32), *m = NULL, *g = NULL, *dx = NULL;
    CHECK_OK(dr_tensor_full(NULL, 0, DR_F32, CPU, 2, &g));
    if (CHECK_OK(dr_max(x, &m)) && CHECK_OK(dr_max_backward(g, x, m, &dx)))
        su_close(dx, n3, 1, (double[]){0, 1, 0, 1}, 0, "max ties");
    dr_tensor_release(x);
    dr_tensor_release(m);
    dr_tensor_release(g);
    dr_tensor_release(dx);
}

/* ---- errors ----------------------------------------------------------------------------- */

static void test_errors(void) {
    int64_t s[2] = {5, 3}, i1[1] = {3}, i2[2] = {2, 2};
    dr_tensor *x = su_make(s, 2, DR_F32, 1, 0), *y = NULL;
    dr_tensor *bad = su_index((int64_t[]){0, 5, 7}, i1, 1), *neg = su_index((int64_t[]){0, -1, 2}, i1, 1);
    dr_tensor *fidx = NULL, *idx2 = su_index((int64_t[]){0, 1, 1, 0}, i2, 2), *ok = su_index((int64_t[]){0, 1, 2}, i1, 1);
    CHECK_OK(dr_tensor_full(i1, 1, DR_F32, CPU, 0, &fidx));
    CHECK_FAILS(dr_index_select(x, 0, bad, &y), DR_ERR_ARG,
                "index_select: index 6 is out of range for dimension 1 with size 5 (indices are 1..5)");
    CHECK_FAILS(dr_index_select(x, 1, neg, &y), DR_ERR_ARG, "index 0 is out of range for dimension 2 with size 3");
    CHECK_FAILS(dr_index_select(x, 0, fidx, &y), DR_ERR_DTYPE, "index_select: index must be an int64 tensor, got float32");
    CHECK_FAILS(dr_index_select(x, 2, ok, &y), DR_ERR_ARG, "index_select: dimension 3 out of range");
    CHECK_FAILS(dr_index_select(x, 0, idx2, &y), DR_ERR_SHAPE, "index_select: index must be 1-D");
    CHECK_FAILS(dr_gather(x, 0, ok, &y), DR_ERR_SHAPE, "gather: index [3] must have as many dimensions");
    dr_tensor *far = su_index((int64_t[]){0, 1, 3, 0}, i2, 2);
    CHECK_FAILS(dr_gather(x, 1, far, &y), DR_ERR_ARG,
                "gather: index 4 is out of range for dimension 2 with size 3");
    dr_tensor *big = su_index((int64_t[]){0, 0, 0, 0, 0, 0, 0, 0}, (int64_t[]){2, 4}, 2);
    CHECK_FAILS(dr_gather(x, 0, big, &y), DR_ERR_SHAPE, "gather: index [2, 4] is larger than the input [5, 3] in dimension 2");
    CHECK_FAILS(dr_embedding(bad, x, &y), DR_ERR_ARG, "embedding: index 6 is out of range for a weight of 5 rows [5, 3]");
    CHECK_FAILS(dr_embedding(ok, ok, &y), DR_ERR_SHAPE, "embedding: weight must be 2-D");
    CHECK_FAILS(dr_embedding(fidx, x, &y), DR_ERR_DTYPE, "embedding: index must be an int64 tensor");
    CHECK_FAILS(dr_where(x, x, x, &y), DR_ERR_DTYPE, "where: condition must be a bool tensor, got float32");
    dr_tensor *c = NULL, *empty = NULL;
    CHECK_OK(dr_tensor_full((int64_t[]){4}, 1, DR_BOOL, CPU, 1, &c));
    CHECK_FAILS(dr_where(c, x, x, &y), DR_ERR_SHAPE, "where: shapes");
    CHECK_OK(dr_tensor_empty((int64_t[]){2, 0}, 2, DR_F32, CPU, &empty));
    CHECK_FAILS(dr_max_dim(empty, 1, 0, &y, NULL), DR_ERR_SHAPE, "max: cannot reduce over dimension 2 of size 0");
    CHECK_FAILS(dr_max(empty, &y), DR_ERR_SHAPE, "max: cannot reduce an empty tensor [2, 0]");
    CHECK_FAILS(dr_argmax(x, (int32_t[]){0, 1}, 2, 0, &y), DR_ERR_ARG, "argmax: expects one dim or none");
    CHECK_FAILS(dr_min_dim(x, -3, 0, &y, NULL), DR_ERR_ARG, "min: dimension -3 out of range");
    CHECK_FAILS(dr_index_select_backward(x, s, 2, 0, ok, &y), DR_ERR_SHAPE, "index_select_backward: grad_out [5, 3] does not fit");
    CHECK_FAILS(dr_embedding_backward(x, ok, 2, &y), DR_ERR_SHAPE, "embedding_backward: grad_out [5, 3] must be");
    dr_tensor *objs[] = {x, bad, neg, fidx, idx2, ok, big, c, empty, far};
    for (size_t k = 0; k < sizeof objs / sizeof *objs; k++) dr_tensor_release(objs[k]);
}

int main(void) {
    test_index_select_forward();
    test_index_select_backward();
    test_gather_forward();
    test_gather_backward();
    test_embedding();
    test_determinism();
    test_where();
    test_extremes();
    test_extreme_grads();
    test_errors();
    return check_summary("test_index");
}
