/*
 * shape_util.h — helpers of test_shape.c and test_index.c: operands with known
 * values, non-contiguous copies, comparisons against reference arrays, and
 * gradients through the autograd tape (for gradcheck's backward callback).
 */
#ifndef DIFFRL_TESTS_SHAPE_UTIL_H
#define DIFFRL_TESTS_SHAPE_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static const dr_device CPU = {DR_CPU, 0};

/* Multiples of 0.25 in [-2, 2] (exact in every float dtype; many ties). */
static inline double su_value(int64_t i, int salt) {
    uint64_t h = (uint64_t)(i + 1) * 2654435761u + (uint64_t)salt * 40503u;
    h ^= h >> 13;
    return ((double)(h % 17) - 8) / 4;
}

/* Distinct values (for i < 1009): no ties, so max/min gradients are smooth. */
static inline double su_distinct(int64_t i, int salt) {
    return (double)(((i + salt) * 7919) % 1009) / 64.0 - 7.0;
}

static inline int64_t su_count(const int64_t *s, int32_t nd) {
    int64_t n = 1;
    for (int32_t i = 0; i < nd; i++) n *= s[i];
    return n;
}

static inline double *su_values(int64_t n, int salt, int distinct) {
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = distinct ? su_distinct(i, salt) : su_value(i, salt);
    return v;
}

/* A contiguous tensor of `dtype` holding v (row-major). */
static inline dr_tensor *su_from(const double *v, const int64_t *s, int32_t nd, int32_t dtype) {
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, s, nd, dtype, CPU, &t));
    return t;
}

/* A tensor of su_value/su_distinct values. */
static inline dr_tensor *su_make(const int64_t *s, int32_t nd, int32_t dtype, int salt,
                                 int distinct) {
    double *v = su_values(su_count(s, nd), salt, distinct);
    dr_tensor *t = su_from(v, s, nd, dtype);
    free(v);
    return t;
}

/* int64 tensor of the given values. */
static inline dr_tensor *su_index(const int64_t *v, const int64_t *s, int32_t nd) {
    int64_t n = su_count(s, nd);
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof *d);
    for (int64_t i = 0; i < n; i++) d[i] = (double)v[i];
    dr_tensor *t = su_from(d, s, nd, DR_I64);
    free(d);
    return t;
}

/* The same values in a non-contiguous view: a window of a tensor whose last dim
 * is wider, at an offset (0-d and empty tensors are returned as they are). */
static inline dr_tensor *su_spread(const dr_tensor *t) {
    dr_tensor *base = NULL, *view = NULL;
    if (t->ndim == 0 || dr_tensor_numel(t) == 0) {
        dr_tensor_retain((dr_tensor *)t);
        return (dr_tensor *)t;
    }
    int64_t s[DR_MAX_DIMS];
    for (int32_t d = 0; d < t->ndim; d++) s[d] = t->sizes[d];
    s[t->ndim - 1] += 3;
    CHECK_OK(dr_tensor_full(s, t->ndim, t->scalar_type, CPU, 99, &base));
    CHECK_OK(dr_tensor_narrow(base, t->ndim - 1, 2, t->sizes[t->ndim - 1], &view));
    CHECK_OK(dr_tensor_copy_(view, t));
    dr_tensor_release(base);
    return view;
}

/* The elements of t (row-major) as a malloc'd double array. */
static inline double *su_get(const dr_tensor *t) {
    int64_t n = dr_tensor_numel(t);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    CHECK_OK(dr_tensor_to_f64(t, v, n));
    return v;
}

/* t has shape s and holds want within tol (relative to 1 + |want|); NaN
 * matches NaN. */
static inline int su_close(const dr_tensor *t, const int64_t *s, int32_t nd, const double *want,
                           double tol, const char *what) {
    int ok = CHECK_EQ_INT(t->ndim, nd);
    for (int32_t d = 0; ok && d < nd; d++) ok = CHECK_EQ_INT(t->sizes[d], s[d]);
    if (!ok) {
        fprintf(stderr, "  %s: shape %lld dims\n", what, (long long)t->ndim);
        return 0;
    }
    int64_t n = su_count(s, nd), bad = 0;
    double *got = su_get(t);
    for (int64_t i = 0; i < n; i++) {
        bool same = (got[i] != got[i] && want[i] != want[i]) ||
                    fabs(got[i] - want[i]) <= tol * (1 + fabs(want[i]));
        if (!same && bad++ < 3)
            fprintf(stderr, "  %s: element %lld is %.9g, expected %.9g\n", what, (long long)i,
                    got[i], want[i]);
    }
    free(got);
    return CHECK_EQ_INT(bad, 0);
}

/* Bitwise equality of two tensors' elements (same dtype and shape). */
static inline int su_same_bits(const dr_tensor *a, const dr_tensor *b, const char *what) {
    dr_tensor *ca = NULL, *cb = NULL;
    CHECK_OK(dr_tensor_contiguous(a, &ca));
    CHECK_OK(dr_tensor_contiguous(b, &cb));
    int64_t bytes = dr_tensor_numel(a) * dr_dtype_size(a->scalar_type);
    int ok = ca && cb && a->scalar_type == b->scalar_type &&
             dr_tensor_numel(a) == dr_tensor_numel(b) &&
             memcmp(dr_tensor_data(ca), dr_tensor_data(cb), (size_t)bytes) == 0;
    if (!CHECK(ok)) fprintf(stderr, "  %s: results differ bitwise\n", what);
    dr_tensor_release(ca);
    dr_tensor_release(cb);
    return ok;
}

/* Gradients of sum(fwd(in) * g) with respect to every input, through the tape:
 * a gradcheck backward callback body. Leaves the inputs as they were. */
static inline dr_status su_tape_grads(gc_forward_fn fwd, const void *ctx, dr_tensor **in, int n,
                                      const dr_tensor *g, dr_tensor **grads) {
    dr_tensor *out = NULL;
    dr_status st = DR_OK;
    for (int i = 0; i < n && st == DR_OK; i++) st = dr_tensor_set_requires_grad(in[i], 1);
    if (st == DR_OK) st = fwd(in, ctx, &out);
    if (st == DR_OK) st = dr_backward(out, g, 0);
    for (int i = 0; i < n; i++) {
        if (st == DR_OK) {
            st = dr_tensor_get_grad(in[i], &grads[i]);
            if (st == DR_OK && !grads[i]) /* no path: a zero gradient */
                st = dr_tensor_full(in[i]->sizes, in[i]->ndim, DR_F32, CPU, 0, &grads[i]);
        }
        dr_tensor_set_grad(in[i], NULL);
        dr_tensor_set_requires_grad(in[i], 0);
    }
    dr_tensor_release(out);
    return st;
}

#endif
