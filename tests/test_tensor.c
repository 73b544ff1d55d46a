/* Tensors: creation in every dtype, refcounts, free-then-use, views (view,
 * reshape, permute, transpose, narrow, select, expand), copies (contiguous,
 * clone, to_dtype, copy_ with broadcasting and casts, fill_), element access,
 * 0-d and zero-size tensors, and the limits (DR_MAX_DIMS, negative sizes, numel
 * overflow, allocation failure). */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

/* The allocation-failure test asks for petabytes; under ASan that must come back
 * as NULL (DR_ERR_OOM) rather than abort the process. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

#define LEN(a) ((int32_t)(sizeof(a) / sizeof((a)[0])))

static const dr_device CPU = {DR_CPU, 0};
static const int32_t ALL_DTYPES[] = {DR_F32, DR_F16, DR_BF16, DR_I64, DR_I32, DR_U8, DR_BOOL};

/* ---- helpers ------------------------------------------------------------------ */

static int64_t count(const int64_t *sizes, int32_t ndim) {
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) n *= sizes[i];
    return n;
}

/* 0, 1, 2, ... row-major, in `dtype`; NULL (reported) on failure. */
static dr_tensor *arange(const int64_t *sizes, int32_t ndim, int32_t dtype) {
    int64_t n = count(sizes, ndim);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = (double)i;
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, sizes, ndim, dtype, CPU, &t));
    free(v);
    return t;
}

/* t's elements (row-major, as double) equal want[0..n). */
static int check_values(const dr_tensor *t, const double *want, int64_t n, const char *what) {
    if (!t) return CHECK(t != NULL);
    if (!CHECK_EQ_INT(dr_tensor_numel(t), n)) return 0;
    double *got = malloc((size_t)(n > 0 ? n : 1) * sizeof *got);
    int ok = CHECK_OK(dr_tensor_to_f64(t, got, n));
    int64_t bad = 0;
    for (int64_t i = 0; ok && i < n; i++) {
        int same = got[i] == want[i] || (isnan(got[i]) && isnan(want[i]));
        if (!same && bad++ < 3)
            fprintf(stderr, "  %s: element %lld is %g, expected %g\n", what, (long long)i, got[i],
                    want[i]);
    }
    free(got);
    return ok && CHECK_EQ_INT(bad, 0);
}

/* t has these sizes (and strides, unless NULL). */
static int check_geometry(const dr_tensor *t, const int64_t *sizes, const int64_t *strides,
                          int32_t ndim) {
    if (!t) return CHECK(t != NULL);
    if (!CHECK_EQ_INT(t->ndim, ndim)) return 0;
    int ok = 1;
    for (int32_t i = 0; i < ndim; i++) {
        ok &= CHECK_EQ_INT(t->sizes[i], sizes[i]);
        if (strides) ok &= CHECK_EQ_INT(t->strides[i], strides[i]);
    }
    return ok;
}

/* The values of arange(sizes) permuted by perm (out dim i = input dim perm[i]). */
static double *permuted_arange(const int64_t *sizes, int32_t ndim, const int32_t *perm) {
    int64_t n = count(sizes, ndim), contig[DR_MAX_DIMS], out_sizes[DR_MAX_DIMS];
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t d = ndim - 1, s = 1; d >= 0; d--) {
        contig[d] = s;
        s *= sizes[d];
    }
    for (int32_t i = 0; i < ndim; i++) out_sizes[i] = sizes[perm[i]];
    for (int64_t k = 0; k < n; k++) {
        int64_t rem = k, flat = 0;
        for (int32_t i = ndim - 1; i >= 0; i--) {
            flat += (rem % out_sizes[i]) * contig[perm[i]];
            rem /= out_sizes[i];
        }
        v[k] = (double)flat;
    }
    return v;
}

static void release_all(dr_tensor **ts, int n) {
    for (int i = 0; i < n; i++) dr_tensor_release(ts[i]);
}

/* ---- creation ----------------------------------------------------------------- */

static void test_empty_and_full_every_dtype(void) {
    const int64_t sizes[2] = {2, 3}, strides[2] = {3, 1};
    for (int32_t i = 0; i < LEN(ALL_DTYPES); i++) {
        int32_t dt = ALL_DTYPES[i];
        dr_tensor *e = NULL, *f = NULL;
        if (CHECK_OK(dr_tensor_empty(sizes, 2, dt, CPU, &e))) {
            check_geometry(e, sizes, strides, 2);
            CHECK_EQ_INT(e->scalar_type, dt);
            CHECK_EQ_INT(e->device.type, DR_CPU);
            CHECK_EQ_INT(e->storage_offset, 0);
            CHECK_EQ_INT(e->refcount, 1);
            CHECK_EQ_INT(dr_tensor_numel(e), 6);
            CHECK(dr_tensor_is_contiguous(e));
            CHECK(dr_tensor_data(e) != NULL);
        }
        if (CHECK_OK(dr_tensor_full(sizes, 2, dt, CPU, 3.0, &f))) {
            double want = dt == DR_BOOL ? 1.0 : 3.0;
            const double all[6] = {want, want, want, want, want, want};
            check_values(f, all, 6, dr_dtype_name(dt));
        }
        CHECK(dr_dtype_size(dt) > 0);
        dr_tensor_release(e);
        dr_tensor_release(f);
    }
}

/* from_f64 converts like torch.tensor(values, dtype=...): floats round, integers
 * truncate toward zero, bool is "!= 0". */
static void test_from_f64_every_dtype(void) {
    static const struct { int32_t dtype; double in[6], want[6]; } cases[] = {
        {DR_F32, {0, 1, -1.5, 2.75, 1e6, -0.25}, {0, 1, -1.5, 2.75, 1e6, -0.25}},
        {DR_F16, {0, 1, -1.5, 2.75, 1000.25, 1e-8}, {0, 1, -1.5, 2.75, 1000.0, 0}},
        {DR_BF16, {0, 1, -1.5, 2.75, 257, 1e30}, {0, 1, -1.5, 2.75, 256, 1.0002555517425873e30}},
        {DR_I64, {0, 1, -1.5, 2.75, 0x1p53, -0.25}, {0, 1, -1, 2, 0x1p53, 0}},
        {DR_I32, {0, 1, -1.5, 2.75, -0x1p31, 0x1p31 - 1}, {0, 1, -1, 2, -0x1p31, 0x1p31 - 1}},
        {DR_U8, {0, 1, 1.5, 2.75, 255, 254.9}, {0, 1, 1, 2, 255, 254}},
        {DR_BOOL, {0, 1, -1.5, 2.75, 0.25, -0.0}, {0, 1, 1, 1, 1, 0}},
    };
    const int64_t sizes[2] = {3, 2};
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_tensor *t = NULL;
        if (!CHECK_OK(dr_tensor_from_f64(cases[i].in, sizes, 2, cases[i].dtype, CPU, &t))) continue;
        CHECK_EQ_INT(t->scalar_type, cases[i].dtype);
        check_values(t, cases[i].want, 6, dr_dtype_name(cases[i].dtype));
        dr_tensor_release(t);
    }
    /* Values an integer dtype cannot take are errors, not undefined behaviour. */
    const double bad[2] = {NAN, 1e19};
    const int64_t one = 1;
    for (int i = 0; i < 2; i++) {
        dr_tensor *t = NULL;
        CHECK_FAILS(dr_tensor_from_f64(&bad[i], &one, 1, DR_I64, CPU, &t), DR_ERR_ARG,
                    "does not fit");
        CHECK(t == NULL);
    }
}

/* ---- lifetime ----------------------------------------------------------------- */

static void test_retain_release(void) {
    const int64_t sizes[1] = {4}, flat[2] = {2, 2};
    dr_tensor *t = arange(sizes, 1, DR_F32), *v = NULL;
    if (!t) return;
    CHECK_EQ_INT(t->refcount, 1);
    dr_tensor_retain(t);
    CHECK_EQ_INT(t->refcount, 2);
    dr_tensor_release(t);
    CHECK_EQ_INT(t->refcount, 1);
    if (CHECK_OK(dr_tensor_view(t, flat, 2, &v))) {
        CHECK(v != t);
        CHECK(v->storage == t->storage);
        CHECK_EQ_INT(v->refcount, 1);
        CHECK_EQ_INT(t->refcount, 1);
    }
    dr_tensor_release(t); /* the view keeps the storage alive */
    const double want[4] = {0, 1, 2, 3};
    check_values(v, want, 4, "view outliving its base");
    dr_tensor_release(v);
}

static void test_free_then_use(void) {
    const int64_t sizes[2] = {2, 3}, flat[1] = {6}, zero[2] = {0, 0};
    dr_tensor *t = arange(sizes, 2, DR_F32), *v = NULL, *out = NULL;
    if (!t || !CHECK_OK(dr_tensor_view(t, flat, 1, &v))) goto done;
    dr_tensor_free(t);
    CHECK(t->storage == NULL);
    CHECK(dr_tensor_data(t) == NULL);
    double buf[6], x;
    CHECK_FAILS(dr_tensor_to_f64(t, buf, 6), DR_ERR_FREED, "free");
    CHECK_FAILS(dr_tensor_item(t, &x), DR_ERR_FREED, "item");
    CHECK_FAILS(dr_tensor_get(t, zero, &x), DR_ERR_FREED, "get");
    CHECK_FAILS(dr_tensor_view(t, flat, 1, &out), DR_ERR_FREED, "view");
    CHECK_FAILS(dr_tensor_clone(t, &out), DR_ERR_FREED, "clone");
    CHECK_FAILS(dr_tensor_fill_(t, 1.0), DR_ERR_FREED, "fill_");
    CHECK_FAILS(dr_add(v, t, 1.0, &out), DR_ERR_FREED, "add");
    CHECK_FAILS(dr_tensor_copy_(t, v), DR_ERR_FREED, "copy_");
    CHECK(out == NULL);
    /* The shape stays readable; a view made before the free keeps its data. */
    CHECK_EQ_INT(dr_tensor_numel(t), 6);
    const double want[6] = {0, 1, 2, 3, 4, 5};
    check_values(v, want, 6, "view of a freed tensor");
    dr_tensor_free(t); /* twice: harmless */
    CHECK(t->storage == NULL);
done:
    dr_tensor_release(t);
    dr_tensor_release(v);
}

/* ---- views -------------------------------------------------------------------- */

static void test_view_shapes(void) {
    static const struct { int64_t sizes[3]; int32_t ndim; int64_t want[3], strides[3]; } cases[] = {
        {{6, 4}, 2, {6, 4}, {4, 1}},
        {{-1, 4}, 2, {6, 4}, {4, 1}},
        {{4, -1, 3}, 3, {4, 2, 3}, {6, 3, 1}},
        {{-1}, 1, {24}, {1}},
        {{2, 1, 12}, 3, {2, 1, 12}, {12, 12, 1}},
    };
    const int64_t sizes[3] = {2, 3, 4};
    dr_tensor *base = arange(sizes, 3, DR_F32);
    if (!base) return;
    double want[24];
    for (int i = 0; i < 24; i++) want[i] = i;
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_tensor *v = NULL;
        if (!CHECK_OK(dr_tensor_view(base, cases[i].sizes, cases[i].ndim, &v))) continue;
        check_geometry(v, cases[i].want, cases[i].strides, cases[i].ndim);
        CHECK(v->storage == base->storage);
        check_values(v, want, 24, "view");
        dr_tensor_release(v);
    }
    static const struct { int64_t sizes[2]; dr_status status; const char *needle; } bad[] = {
        {{5, 5}, DR_ERR_SHAPE, "invalid for input of size 24"},
        {{-1, -1}, DR_ERR_ARG, "only one dimension can be -1"},
        {{-1, 5}, DR_ERR_SHAPE, "view"},
        {{0, -1}, DR_ERR_SHAPE, "view"},
        {{-2, -12}, DR_ERR_ARG, "invalid size -2"},
    };
    for (int32_t i = 0; i < LEN(bad); i++) {
        dr_tensor *v = NULL;
        CHECK_FAILS(dr_tensor_view(base, bad[i].sizes, 2, &v), bad[i].status, bad[i].needle);
        CHECK(v == NULL);
    }
    dr_tensor_release(base);
}

/* t cannot be viewed as `sizes` (the message points at reshape); reshape copies
 * it into a contiguous tensor holding `want`. */
static void check_needs_reshape(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                                const double *want, const char *what) {
    dr_tensor *v = NULL, *r = NULL;
    CHECK_FAILS(dr_tensor_view(t, sizes, ndim, &v), DR_ERR_SHAPE, "reshape");
    CHECK(v == NULL);
    if (CHECK_OK(dr_tensor_reshape(t, sizes, ndim, &r))) {
        CHECK(dr_tensor_is_contiguous(r));
        CHECK(r->storage != t->storage);
        check_values(r, want, count(sizes, ndim), what);
    }
    dr_tensor_release(r);
}

static void test_view_of_transposed(void) {
    const int64_t sizes[3] = {2, 3, 4}, flat[1] = {24};
    const int32_t swap12[3] = {0, 2, 1};
    dr_tensor *base = arange(sizes, 3, DR_F32), *tr = NULL, *same = NULL;
    if (base && CHECK_OK(dr_tensor_transpose(base, 1, 2, &tr))) {
        double *want = permuted_arange(sizes, 3, swap12);
        check_needs_reshape(tr, flat, 1, want, "reshape of a transposed tensor");
        free(want);
    }
    if (base && CHECK_OK(dr_tensor_reshape(base, flat, 1, &same))) /* contiguous: no copy */
        CHECK(dr_tensor_data(same) == dr_tensor_data(base));
    dr_tensor *ts[] = {base, tr, same};
    release_all(ts, LEN(ts));
}

/* A narrowed tensor can still split its rows in place, but not merge them. */
static void test_view_of_narrowed(void) {
    const int64_t sizes[2] = {4, 6}, split[3] = {2, 2, 3}, strides[3] = {12, 6, 1}, flat[1] = {12};
    const double want[12] = {1, 2, 3, 7, 8, 9, 13, 14, 15, 19, 20, 21};
    dr_tensor *base = arange(sizes, 2, DR_F32), *nar = NULL, *sv = NULL;
    if (base && CHECK_OK(dr_tensor_narrow(base, 1, 1, 3, &nar))) {
        if (CHECK_OK(dr_tensor_view(nar, split, 3, &sv))) {
            check_geometry(sv, split, strides, 3);
            CHECK_EQ_INT(sv->storage_offset, 1);
            check_values(sv, want, 12, "split view of a narrowed tensor");
        }
        check_needs_reshape(nar, flat, 1, want, "reshape of a narrowed tensor");
    }
    dr_tensor *ts[] = {base, nar, sv};
    release_all(ts, LEN(ts));
}

/* An expanded (stride-0) tensor cannot be flattened without a copy. */
static void test_view_of_expanded(void) {
    const int64_t sizes[2] = {3, 1}, wide[2] = {3, 4}, flat[1] = {12};
    const double want[12] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2};
    dr_tensor *base = arange(sizes, 2, DR_F32), *ex = NULL;
    if (base && CHECK_OK(dr_tensor_expand(base, wide, 2, &ex)))
        check_needs_reshape(ex, flat, 1, want, "reshape of an expanded tensor");
    dr_tensor_release(base);
    dr_tensor_release(ex);
}

static void test_permute(void) {
    const int64_t sizes[3] = {2, 3, 4};
    static const struct { int32_t dims[3]; int32_t perm[3]; int64_t strides[3]; } cases[] = {
        {{2, 0, 1}, {2, 0, 1}, {1, 12, 4}},
        {{-1, 0, -2}, {2, 0, 1}, {1, 12, 4}},
        {{0, 1, 2}, {0, 1, 2}, {12, 4, 1}},
        {{1, 0, 2}, {1, 0, 2}, {4, 12, 1}},
    };
    dr_tensor *base = arange(sizes, 3, DR_F32);
    if (!base) return;
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_tensor *p = NULL;
        if (!CHECK_OK(dr_tensor_permute(base, cases[i].dims, 3, &p))) continue;
        int64_t want_sizes[3];
        for (int d = 0; d < 3; d++) want_sizes[d] = sizes[cases[i].perm[d]];
        check_geometry(p, want_sizes, cases[i].strides, 3);
        CHECK(p->storage == base->storage);
        double *want = permuted_arange(sizes, 3, cases[i].perm);
        check_values(p, want, 24, "permute");
        free(want);
        dr_tensor_release(p);
    }
    const int32_t repeated[3] = {0, 0, 1}, out_of_range[3] = {0, 1, 3}, two[2] = {1, 0};
    dr_tensor *p = NULL;
    CHECK_FAILS(dr_tensor_permute(base, repeated, 3, &p), DR_ERR_ARG, "repeated");
    CHECK_FAILS(dr_tensor_permute(base, out_of_range, 3, &p), DR_ERR_ARG, "dimension 4");
    CHECK_FAILS(dr_tensor_permute(base, two, 2, &p), DR_ERR_ARG, "permute");
    CHECK(p == NULL);
    dr_tensor_release(base);
}

static void test_transpose_and_contiguous(void) {
    const int64_t sizes[3] = {2, 3, 4};
    const int32_t swap02[3] = {2, 1, 0};
    dr_tensor *base = arange(sizes, 3, DR_F32), *t = NULL, *u = NULL, *c = NULL, *same = NULL;
    if (!base) return;
    double *want = permuted_arange(sizes, 3, swap02);
    if (CHECK_OK(dr_tensor_transpose(base, 0, 2, &t))) {
        const int64_t ws[3] = {4, 3, 2}, wst[3] = {1, 4, 12};
        check_geometry(t, ws, wst, 3);
        CHECK(!dr_tensor_is_contiguous(t));
        check_values(t, want, 24, "transpose");
        if (CHECK_OK(dr_tensor_contiguous(t, &c))) {
            const int64_t cst[3] = {6, 2, 1};
            check_geometry(c, ws, cst, 3);
            CHECK(dr_tensor_data(c) != dr_tensor_data(base));
            check_values(c, want, 24, "contiguous of a transpose");
        }
    }
    if (CHECK_OK(dr_tensor_transpose(base, -1, -3, &u)))
        check_values(u, want, 24, "transpose(-1,-3)");
    if (CHECK_OK(dr_tensor_transpose(base, 1, 1, &same))) {
        CHECK(dr_tensor_is_contiguous(same));
        check_geometry(same, sizes, NULL, 3);
    }
    free(want);
    dr_tensor *ts[] = {base, t, u, c, same};
    release_all(ts, LEN(ts));
}

static void test_narrow(void) {
    const int64_t sizes[2] = {4, 6};
    static const struct {
        int32_t dim; int64_t start, length, offset; int64_t sizes[2]; double first, last;
    } cases[] = {
        {1, 2, 3, 2, {4, 3}, 2, 22},
        {0, -2, 2, 12, {2, 6}, 12, 23},
        {-1, 0, 6, 0, {4, 6}, 0, 23},
        {0, 1, 1, 6, {1, 6}, 6, 11},
    };
    dr_tensor *base = arange(sizes, 2, DR_F32);
    if (!base) return;
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_tensor *n = NULL;
        if (!CHECK_OK(dr_tensor_narrow(base, cases[i].dim, cases[i].start, cases[i].length, &n)))
            continue;
        check_geometry(n, cases[i].sizes, base->strides, 2);
        CHECK_EQ_INT(n->storage_offset, cases[i].offset);
        int64_t last[2] = {cases[i].sizes[0] - 1, cases[i].sizes[1] - 1}, first[2] = {0, 0};
        double x;
        if (CHECK_OK(dr_tensor_get(n, first, &x))) CHECK_NEAR(x, cases[i].first, 0);
        if (CHECK_OK(dr_tensor_get(n, last, &x))) CHECK_NEAR(x, cases[i].last, 0);
        dr_tensor_release(n);
    }
    /* Narrowing twice accumulates the offset; length 0 at the end is allowed. */
    dr_tensor *a = NULL, *b = NULL, *empty = NULL;
    if (CHECK_OK(dr_tensor_narrow(base, 1, 1, 4, &a)) &&
        CHECK_OK(dr_tensor_narrow(a, 1, 2, 2, &b))) {
        const double want[8] = {3, 4, 9, 10, 15, 16, 21, 22};
        check_values(b, want, 8, "narrow of a narrow");
    }
    if (CHECK_OK(dr_tensor_narrow(base, 1, 6, 0, &empty))) CHECK_EQ_INT(dr_tensor_numel(empty), 0);
    dr_tensor *n = NULL;
    CHECK_FAILS(dr_tensor_narrow(base, 1, 4, 3, &n), DR_ERR_ARG, "narrow");
    CHECK_FAILS(dr_tensor_narrow(base, 1, -7, 1, &n), DR_ERR_ARG, "narrow");
    CHECK_FAILS(dr_tensor_narrow(base, 1, 0, -1, &n), DR_ERR_ARG, "narrow");
    CHECK_FAILS(dr_tensor_narrow(base, 2, 0, 1, &n), DR_ERR_ARG, "dimension 3");
    CHECK(n == NULL);
    dr_tensor *ts[] = {base, a, b, empty};
    release_all(ts, LEN(ts));
}

static void test_select(void) {
    const int64_t sizes[2] = {4, 6};
    dr_tensor *base = arange(sizes, 2, DR_F32), *row = NULL, *col = NULL, *s = NULL;
    if (!base) return;
    if (CHECK_OK(dr_tensor_select(base, 0, 1, &row))) {
        const int64_t ws[1] = {6}, wst[1] = {1};
        check_geometry(row, ws, wst, 1);
        CHECK_EQ_INT(row->storage_offset, 6);
        const double want[6] = {6, 7, 8, 9, 10, 11};
        check_values(row, want, 6, "select row");
    }
    if (CHECK_OK(dr_tensor_select(base, 1, -1, &col))) {
        const int64_t ws[1] = {4}, wst[1] = {6};
        check_geometry(col, ws, wst, 1);
        const double want[4] = {5, 11, 17, 23};
        check_values(col, want, 4, "select column");
    }
    /* Selecting from a 1-d tensor gives a 0-d one. */
    double x;
    if (col && CHECK_OK(dr_tensor_select(col, 0, 2, &s))) {
        CHECK_EQ_INT(s->ndim, 0);
        if (CHECK_OK(dr_tensor_item(s, &x))) CHECK_NEAR(x, 17, 0);
    }
    dr_tensor *bad = NULL, *zero_d = NULL;
    CHECK_FAILS(dr_tensor_select(base, 0, 4, &bad), DR_ERR_ARG, "index 5");
    CHECK_FAILS(dr_tensor_select(base, 0, -5, &bad), DR_ERR_ARG, "select");
    CHECK_FAILS(dr_tensor_select(base, 2, 0, &bad), DR_ERR_ARG, "dimension 3");
    if (s) CHECK_FAILS(dr_tensor_select(s, 0, 0, &zero_d), DR_ERR_ARG, "0-d");
    CHECK(bad == NULL && zero_d == NULL);
    dr_tensor *ts[] = {base, row, col, s};
    release_all(ts, LEN(ts));
}

static void test_expand(void) {
    const int64_t s31[2] = {3, 1}, to234[3] = {2, 3, 4}, keep[2] = {-1, 5}, zero[2] = {3, 0};
    dr_tensor *base = arange(s31, 2, DR_F32), *e = NULL, *k = NULL, *z = NULL, *c = NULL;
    if (!base) return;
    if (CHECK_OK(dr_tensor_expand(base, to234, 3, &e))) {
        const int64_t strides[3] = {0, 1, 0};
        check_geometry(e, to234, strides, 3);
        CHECK(e->storage == base->storage);
        CHECK(!dr_tensor_is_contiguous(e));
        double want[24];
        for (int i = 0; i < 24; i++) want[i] = (i / 4) % 3;
        check_values(e, want, 24, "expand");
        if (CHECK_OK(dr_tensor_contiguous(e, &c))) {
            CHECK(dr_tensor_is_contiguous(c));
            check_values(c, want, 24, "contiguous of expand");
        }
    }
    if (CHECK_OK(dr_tensor_expand(base, keep, 2, &k))) {
        const int64_t ws[2] = {3, 5}, wst[2] = {1, 0};
        check_geometry(k, ws, wst, 2);
    }
    if (CHECK_OK(dr_tensor_expand(base, zero, 2, &z))) CHECK_EQ_INT(dr_tensor_numel(z), 0);
    const int64_t fewer[1] = {3}, new_minus1[3] = {-1, 3, 1}, two[2] = {2, 1};
    dr_tensor *bad = NULL;
    CHECK_FAILS(dr_tensor_expand(base, two, 2, &bad), DR_ERR_SHAPE, "expand");
    CHECK_FAILS(dr_tensor_expand(base, fewer, 1, &bad), DR_ERR_SHAPE, "expand");
    CHECK_FAILS(dr_tensor_expand(base, new_minus1, 3, &bad), DR_ERR_SHAPE, "expand");
    CHECK(bad == NULL);
    dr_tensor *ts[] = {base, e, k, z, c};
    release_all(ts, LEN(ts));
}

static void test_is_contiguous(void) {
    const int64_t s26[2] = {2, 6}, s31[2] = {3, 1}, s32[2] = {3, 2};
    dr_tensor *ts[9] = {NULL};
    ts[0] = arange(s26, 2, DR_F32);
    ts[1] = arange(s31, 2, DR_F32);
    if (!ts[0] || !ts[1]) goto done;
    CHECK(dr_tensor_is_contiguous(ts[0]));
    if (CHECK_OK(dr_tensor_transpose(ts[0], 0, 1, &ts[2]))) CHECK(!dr_tensor_is_contiguous(ts[2]));
    if (CHECK_OK(dr_tensor_narrow(ts[0], 1, 1, 3, &ts[3]))) CHECK(!dr_tensor_is_contiguous(ts[3]));
    if (CHECK_OK(dr_tensor_narrow(ts[0], 0, 1, 1, &ts[4]))) CHECK(dr_tensor_is_contiguous(ts[4]));
    if (CHECK_OK(dr_tensor_select(ts[0], 0, 1, &ts[5]))) CHECK(dr_tensor_is_contiguous(ts[5]));
    /* A transposed [3,1] is [1,3] with strides (1,1): size-1 dims do not count. */
    if (CHECK_OK(dr_tensor_transpose(ts[1], 0, 1, &ts[6]))) CHECK(dr_tensor_is_contiguous(ts[6]));
    if (CHECK_OK(dr_tensor_expand(ts[1], s32, 2, &ts[7]))) CHECK(!dr_tensor_is_contiguous(ts[7]));
    /* Zero elements: contiguous whatever the strides (torch.is_contiguous). */
    if (CHECK_OK(dr_tensor_narrow(ts[0], 1, 2, 0, &ts[8]))) CHECK(dr_tensor_is_contiguous(ts[8]));
done:
    release_all(ts, LEN(ts));
}

/* ---- copies ------------------------------------------------------------------- */

static void test_clone_and_to_dtype(void) {
    const int64_t sizes[2] = {2, 3};
    dr_tensor *base = arange(sizes, 2, DR_F32);
    dr_tensor *same = NULL, *cl = NULL, *i32 = NULL, *alias = NULL;
    if (!base) return;
    const double want[6] = {0, 1, 2, 3, 4, 5};
    if (CHECK_OK(dr_tensor_contiguous(base, &same))) {
        CHECK(same != base);
        CHECK(dr_tensor_data(same) == dr_tensor_data(base));
    }
    if (CHECK_OK(dr_tensor_clone(base, &cl))) {
        CHECK(dr_tensor_data(cl) != dr_tensor_data(base));
        check_values(cl, want, 6, "clone");
        CHECK_OK(dr_tensor_fill_(cl, 7.0));
        check_values(base, want, 6, "original after writing its clone");
    }
    if (CHECK_OK(dr_tensor_to_dtype(base, DR_I32, &i32))) {
        CHECK_EQ_INT(i32->scalar_type, DR_I32);
        check_values(i32, want, 6, "to int32");
    }
    if (CHECK_OK(dr_tensor_to_dtype(base, DR_F32, &alias)))
        CHECK(dr_tensor_data(alias) == dr_tensor_data(base));
    dr_tensor *ts[] = {base, same, cl, i32, alias};
    release_all(ts, LEN(ts));
}

/* copy_: src broadcast to dst's shape and cast to dst's dtype. */
static void test_copy_broadcast_and_cast(void) {
    static const struct {
        int32_t dst_dtype; int64_t dst_sizes[2]; int32_t dst_ndim;
        int32_t src_dtype; int64_t src_sizes[2]; int32_t src_ndim;
        double src[4], want[6];
    } cases[] = {
        {DR_F32, {2, 3}, 2, DR_I64, {3}, 1, {1, 2, 3}, {1, 2, 3, 1, 2, 3}},
        {DR_I32, {2, 3}, 2, DR_F32, {2, 1}, 2, {-2.75, 2.75}, {-2, -2, -2, 2, 2, 2}},
        {DR_U8, {3}, 1, DR_F32, {0}, 0, {255.9}, {255, 255, 255}},
        {DR_BOOL, {4}, 1, DR_F32, {4}, 1, {0, -0.0, 0.5, NAN}, {0, 0, 1, 1}},
        {DR_F16, {2}, 1, DR_BF16, {2}, 1, {1.5, -3}, {1.5, -3}},
        {DR_I64, {2, 2}, 2, DR_BOOL, {2}, 1, {1, 0}, {1, 0, 1, 0}},
        {DR_BF16, {3}, 1, DR_I32, {3}, 1, {1, 257, -3}, {1, 256, -3}},
        {DR_F32, {1, 3}, 2, DR_F16, {3}, 1, {0.5, 65504, -0.25}, {0.5, 65504, -0.25}},
    };
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_tensor *dst = NULL, *src = NULL;
        if (CHECK_OK(dr_tensor_full(cases[i].dst_sizes, cases[i].dst_ndim, cases[i].dst_dtype, CPU,
                                    0.0, &dst)) &&
            CHECK_OK(dr_tensor_from_f64(cases[i].src, cases[i].src_sizes, cases[i].src_ndim,
                                        cases[i].src_dtype, CPU, &src)) &&
            CHECK_OK(dr_tensor_copy_(dst, src)))
            check_values(dst, cases[i].want, dr_tensor_numel(dst), "copy_");
        dr_tensor_release(dst);
        dr_tensor_release(src);
    }
}

/* copy_ and fill_ into non-contiguous destinations write through the view only. */
static void test_copy_and_fill_into_views(void) {
    const int64_t s32[2] = {3, 2}, s23[2] = {2, 3}, s34[2] = {3, 4}, s31[2] = {3, 1};
    dr_tensor *ts[6] = {NULL};
    dr_tensor **zeros = &ts[0], **tr = &ts[1], **src = &ts[2], **grid = &ts[3], **mid = &ts[4];
    dr_tensor **col = &ts[5];
    if (!CHECK_OK(dr_tensor_full(s32, 2, DR_F32, CPU, 0.0, zeros)) ||
        !CHECK_OK(dr_tensor_transpose(*zeros, 0, 1, tr)))
        goto done;
    *src = arange(s23, 2, DR_F32);
    if (*src && CHECK_OK(dr_tensor_copy_(*tr, *src))) {
        const double want[6] = {0, 3, 1, 4, 2, 5};
        check_values(*zeros, want, 6, "copy_ into a transposed view");
    }
    if (!CHECK_OK(dr_tensor_full(s34, 2, DR_I32, CPU, 1.0, grid)) ||
        !CHECK_OK(dr_tensor_narrow(*grid, 1, 1, 2, mid)))
        goto done;
    *col = arange(s31, 2, DR_F32);
    if (*col && CHECK_OK(dr_tensor_copy_(*mid, *col))) {
        const double want[12] = {1, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 1};
        check_values(*grid, want, 12, "copy_ into a narrowed view");
    }
    if (CHECK_OK(dr_tensor_fill_(*mid, -4.0))) {
        const double want[12] = {1, -4, -4, 1, 1, -4, -4, 1, 1, -4, -4, 1};
        check_values(*grid, want, 12, "fill_ of a narrowed view");
    }
    CHECK_FAILS(dr_tensor_copy_(*grid, *src), DR_ERR_SHAPE, "copy_");    /* [2,3] into [3,4] */
    CHECK_FAILS(dr_tensor_copy_(*col, *grid), DR_ERR_SHAPE, "[3, 4]");   /* more dims than dst */
done:
    release_all(ts, LEN(ts));
}

static void test_fill_every_dtype(void) {
    static const struct { int32_t dtype; double value, want; } cases[] = {
        {DR_F32, -1.25, -1.25}, {DR_F16, 65504, 65504}, {DR_BF16, 0.1, 0.10009765625},
        {DR_I64, -7.9, -7},     {DR_I32, 3.9, 3},       {DR_U8, 200, 200},
        {DR_BOOL, 0.5, 1},      {DR_BOOL, 0.0, 0},
    };
    const int64_t sizes[2] = {5, 3};
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_tensor *t = NULL;
        if (!CHECK_OK(dr_tensor_empty(sizes, 2, cases[i].dtype, CPU, &t))) continue;
        if (CHECK_OK(dr_tensor_fill_(t, cases[i].value))) {
            double want[15];
            for (int k = 0; k < 15; k++) want[k] = cases[i].want;
            check_values(t, want, 15, dr_dtype_name(cases[i].dtype));
        }
        dr_tensor_release(t);
    }
}

/* ---- element access ----------------------------------------------------------- */

static void test_get_item_to_f64(void) {
    const int64_t sizes[2] = {2, 3}, one[2] = {1, 1};
    dr_tensor *t = arange(sizes, 2, DR_F32), *tr = NULL, *single = NULL;
    if (!t) return;
    double x, buf[6];
    const int64_t at[2] = {1, 2}, row_out[2] = {2, 0}, col_out[2] = {0, -4};
    if (CHECK_OK(dr_tensor_get(t, at, &x))) CHECK_NEAR(x, 5, 0);
    CHECK_FAILS(dr_tensor_get(t, row_out, &x), DR_ERR_ARG, "dimension 1");
    CHECK_FAILS(dr_tensor_get(t, col_out, &x), DR_ERR_ARG, "dimension 2");
    /* diffrl.h: "indices are 0-based here; negative counts from the end" */
    const int64_t last[2] = {0, -1}, first[2] = {-2, -3};
    if (CHECK_OK(dr_tensor_get(t, last, &x))) CHECK_NEAR(x, 2, 0);
    if (CHECK_OK(dr_tensor_get(t, first, &x))) CHECK_NEAR(x, 0, 0);
    CHECK_FAILS(dr_tensor_item(t, &x), DR_ERR_SHAPE, "[2, 3]");
    CHECK_FAILS(dr_tensor_to_f64(t, buf, 5), DR_ERR_ARG, "tolist");
    if (CHECK_OK(dr_tensor_transpose(t, 0, 1, &tr))) {
        const double want[6] = {0, 3, 1, 4, 2, 5};
        check_values(tr, want, 6, "to_f64 of a transpose");
    }
    if (CHECK_OK(dr_tensor_full(one, 2, DR_I64, CPU, -3, &single)) &&
        CHECK_OK(dr_tensor_item(single, &x)))
        CHECK_NEAR(x, -3, 0);
    dr_tensor *ts[] = {t, tr, single};
    release_all(ts, LEN(ts));
}

/* ---- 0-d and zero-size tensors -------------------------------------------------- */

static void test_zero_dim(void) {
    const int64_t s11[2] = {1, 1}, s22[2] = {2, 2}, s1[1] = {1};
    const double value = 4.5;
    dr_tensor *ts[8] = {NULL};
    dr_tensor **e = &ts[0], **s = &ts[1], **v = &ts[2], **back = &ts[3], **cl = &ts[4];
    dr_tensor **big = &ts[5], **i = &ts[6], **v1 = &ts[7];
    double x;
    if (CHECK_OK(dr_tensor_empty(NULL, 0, DR_F32, CPU, e))) {
        CHECK_EQ_INT((*e)->ndim, 0);
        CHECK_EQ_INT(dr_tensor_numel(*e), 1);
        CHECK(dr_tensor_is_contiguous(*e));
    }
    if (!CHECK_OK(dr_tensor_from_f64(&value, NULL, 0, DR_F32, CPU, s))) goto done;
    if (CHECK_OK(dr_tensor_item(*s, &x))) CHECK_NEAR(x, 4.5, 0);
    if (CHECK_OK(dr_tensor_get(*s, NULL, &x))) CHECK_NEAR(x, 4.5, 0);
    if (CHECK_OK(dr_tensor_view(*s, s11, 2, v))) {
        check_geometry(*v, s11, NULL, 2);
        if (CHECK_OK(dr_tensor_view(*v, NULL, 0, back))) CHECK_EQ_INT((*back)->ndim, 0);
    }
    if (CHECK_OK(dr_tensor_clone(*s, cl))) check_values(*cl, &value, 1, "clone of 0-d");
    if (CHECK_OK(dr_tensor_full(s22, 2, DR_F32, CPU, 0, big)) &&
        CHECK_OK(dr_tensor_copy_(*big, *s))) {
        const double want[4] = {4.5, 4.5, 4.5, 4.5};
        check_values(*big, want, 4, "copy_ of a 0-d source");
    }
    const double four = 4;
    if (CHECK_OK(dr_tensor_to_dtype(*s, DR_I32, i))) check_values(*i, &four, 1, "0-d to int");
    if (CHECK_OK(dr_tensor_view(*s, s1, 1, v1))) check_geometry(*v1, s1, NULL, 1);
done:
    release_all(ts, LEN(ts));
}

static void test_zero_size(void) {
    const int64_t s03[2] = {0, 3}, s30[2] = {3, 0}, minus1_3[2] = {-1, 3}, minus1_0[2] = {-1, 0};
    const int64_t s05[2] = {0, 5}, s01[2] = {0, 1};
    for (int32_t k = 0; k < LEN(ALL_DTYPES); k++) {
        dr_tensor *t = NULL, *c = NULL;
        if (!CHECK_OK(dr_tensor_full(s03, 2, ALL_DTYPES[k], CPU, 1.0, &t))) continue;
        CHECK_EQ_INT(dr_tensor_numel(t), 0);
        CHECK(dr_tensor_is_contiguous(t));
        CHECK_OK(dr_tensor_to_f64(t, NULL, 0));
        if (CHECK_OK(dr_tensor_clone(t, &c))) CHECK_EQ_INT(dr_tensor_numel(c), 0);
        dr_tensor_release(t);
        dr_tensor_release(c);
    }
    dr_tensor *ts[7] = {NULL}, *bad = NULL;
    if (!CHECK_OK(dr_tensor_empty(s03, 2, DR_F32, CPU, &ts[0]))) return;
    if (CHECK_OK(dr_tensor_view(ts[0], s30, 2, &ts[1]))) check_geometry(ts[1], s30, NULL, 2);
    if (CHECK_OK(dr_tensor_view(ts[0], minus1_3, 2, &ts[2]))) check_geometry(ts[2], s03, NULL, 2);
    CHECK_FAILS(dr_tensor_view(ts[0], minus1_0, 2, &bad), DR_ERR_SHAPE, "view");
    if (CHECK_OK(dr_tensor_transpose(ts[0], 0, 1, &ts[3])) &&
        CHECK_OK(dr_tensor_contiguous(ts[3], &ts[4])))
        check_geometry(ts[4], s30, NULL, 2);
    if (CHECK_OK(dr_tensor_full(s01, 2, DR_I32, CPU, 2.0, &ts[5])) &&
        CHECK_OK(dr_tensor_expand(ts[5], s05, 2, &ts[6]))) {
        CHECK_EQ_INT(dr_tensor_numel(ts[6]), 0);
        CHECK_FAILS(dr_tensor_copy_(ts[0], ts[6]), DR_ERR_SHAPE, "copy_"); /* [0,5] into [0,3] */
        CHECK_OK(dr_tensor_copy_(ts[6], ts[5]));                          /* [0,1] into [0,5] */
    }
    CHECK(bad == NULL);
    release_all(ts, LEN(ts));
}

/* ---- limits ------------------------------------------------------------------- */

static void test_max_dims(void) {
    const int64_t s8[8] = {2, 1, 2, 1, 2, 1, 2, 1}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    const int32_t reverse[8] = {7, 6, 5, 4, 3, 2, 1, 0};
    dr_tensor *t = arange(s8, 8, DR_F32), *p = NULL, *c = NULL, *bad = NULL;
    if (!t) return;
    CHECK_EQ_INT(t->ndim, DR_MAX_DIMS);
    if (CHECK_OK(dr_tensor_permute(t, reverse, 8, &p)) && CHECK_OK(dr_tensor_contiguous(p, &c))) {
        double *want = permuted_arange(s8, 8, reverse);
        check_values(c, want, 16, "8-d permute");
        free(want);
    }
    CHECK_FAILS(dr_tensor_empty(s9, 9, DR_F32, CPU, &bad), DR_ERR_ARG, "at most 8");
    CHECK_FAILS(dr_tensor_empty(s9, -1, DR_F32, CPU, &bad), DR_ERR_ARG, "empty");
    CHECK_FAILS(dr_tensor_view(t, s9, 9, &bad), DR_ERR_ARG, "at most 8");
    CHECK_FAILS(dr_tensor_reshape(t, s9, 9, &bad), DR_ERR_ARG, "at most 8");
    CHECK_FAILS(dr_tensor_expand(t, s9, 9, &bad), DR_ERR_ARG, "at most 8");
    CHECK(bad == NULL);
    dr_tensor *ts[] = {t, p, c};
    release_all(ts, LEN(ts));
}

static void test_negative_sizes(void) {
    const int64_t sizes[2] = {2, -3};
    const double data[1] = {0};
    dr_tensor *t = NULL;
    CHECK_FAILS(dr_tensor_empty(sizes, 2, DR_F32, CPU, &t), DR_ERR_ARG,
                "negative size -3 in dimension 2");
    CHECK_FAILS(dr_tensor_full(sizes, 2, DR_I32, CPU, 1.0, &t), DR_ERR_ARG, "full");
    CHECK_FAILS(dr_tensor_from_f64(data, sizes, 2, DR_F32, CPU, &t), DR_ERR_ARG, "negative");
    CHECK(t == NULL);
}

/* Overflowing element counts are errors; run in a child process because the
 * failure mode of a missing check is undefined behaviour (a UBSan abort). */
static void numel_overflow_cases(const void *unused) {
    (void)unused;
    const int64_t huge2[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    const int64_t bytes_overflow[2] = {(int64_t)1 << 31, (int64_t)1 << 31}; /* 2^62 elements */
    const int64_t max2[2] = {INT64_MAX, 2};
    const int64_t s11[2] = {1, 1}, s0[1] = {0}, wrap[2] = {(int64_t)1 << 32, (int64_t)1 << 32};
    dr_tensor *t = NULL, *one = NULL, *empty = NULL;
    CHECK_FAILS(dr_tensor_empty(huge2, 2, DR_F32, CPU, &t), DR_ERR_ARG, "too many elements");
    CHECK_FAILS(dr_tensor_empty(bytes_overflow, 2, DR_F32, CPU, &t), DR_ERR_ARG,
                "too many elements");
    CHECK_FAILS(dr_tensor_full(max2, 2, DR_U8, CPU, 0, &t), DR_ERR_ARG, "too many elements");
    CHECK_FAILS(dr_tensor_from_f64(NULL, huge2, 2, DR_F32, CPU, &t), DR_ERR_ARG,
                "too many elements");
    CHECK(t == NULL);
    /* Views must not create shapes whose element count overflows int64 either. */
    if (CHECK_OK(dr_tensor_full(s11, 2, DR_F32, CPU, 1, &one))) {
        dr_tensor *e = NULL;
        if (!CHECK_FAILS(dr_tensor_expand(one, huge2, 2, &e), DR_ERR_ARG, "expand"))
            dr_tensor_release(e);
    }
    if (CHECK_OK(dr_tensor_empty(s0, 1, DR_F32, CPU, &empty))) {
        dr_tensor *v = NULL;
        if (!CHECK_FAILS(dr_tensor_view(empty, wrap, 2, &v), DR_ERR_ARG, "view"))
            dr_tensor_release(v);
    }
    dr_tensor_release(one);
    dr_tensor_release(empty);
}

static void test_allocation_failure(void) {
    const int64_t sizes[3] = {(int64_t)1 << 20, (int64_t)1 << 20, (int64_t)1 << 10}; /* 16 PiB */
    dr_tensor *t = NULL;
    CHECK_FAILS(dr_tensor_empty(sizes, 3, DR_F32, CPU, &t), DR_ERR_OOM, "cannot allocate");
    CHECK(t == NULL);
}

int main(void) {
    test_empty_and_full_every_dtype();
    test_from_f64_every_dtype();
    test_retain_release();
    test_free_then_use();
    test_view_shapes();
    test_view_of_transposed();
    test_view_of_narrowed();
    test_view_of_expanded();
    test_permute();
    test_transpose_and_contiguous();
    test_narrow();
    test_select();
    test_expand();
    test_is_contiguous();
    test_clone_and_to_dtype();
    test_copy_broadcast_and_cast();
    test_copy_and_fill_into_views();
    test_fill_every_dtype();
    test_get_item_to_f64();
    test_zero_dim();
    test_zero_size();
    test_max_dims();
    test_negative_sizes();
    check_isolated("numel overflow", numel_overflow_cases, NULL);
    test_allocation_failure();
    return check_summary("test_tensor");
}
