/*
 * norm_util.h — helpers of test_norm.c and test_softmax.c: smooth and quantized
 * operands, mismatch counts against reference arrays, non-contiguous copies,
 * bitwise comparison (on shape_util.h's CPU, su_count and su_get).
 */
#ifndef DIFFRL_TESTS_NORM_UTIL_H
#define DIFFRL_TESTS_NORM_UTIL_H

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"
#include "shape_util.h" /* CPU, su_count, su_get */

#define LEN(a) ((int32_t)(sizeof(a) / sizeof((a)[0])))

/* Smooth deterministic values a*sin(...) + offset. */
static inline dr_tensor *smooth(const int64_t *s, int32_t nd, int32_t dtype, double a,
                                double offset, int salt) {
    int64_t n = su_count(s, nd);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = offset + a * sin(0.71 * (double)i + 0.37 * salt);
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, s, nd, dtype, CPU, &t));
    free(v);
    return t;
}

/* Multiples of 1/256 in [-2, 2] plus `offset`: exact in float32 for offsets up
 * to 2^14, so x + offset is the same data shifted. */
static inline dr_tensor *quantized(const int64_t *s, int32_t nd, double offset, int salt) {
    int64_t n = su_count(s, nd);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = offset + round(512 * sin(0.71 * (double)i + salt)) / 256;
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, s, nd, DR_F32, CPU, &t));
    free(v);
    return t;
}

/* Number of elements of t farther than rel*|want| + abs from want[] (NaN == NaN). */
static inline int64_t mismatches(const dr_tensor *t, const double *want, double rel, double abs_tol) {
    int64_t n = dr_tensor_numel(t), bad = 0;
    double *got = su_get(t);
    for (int64_t i = 0; i < n; i++) {
        bool ok = isnan(want[i]) ? isnan(got[i])
                                 : fabs(got[i] - want[i]) <= rel * fabs(want[i]) + abs_tol;
        if (!ok && bad++ < 3)
            fprintf(stderr, "    element %lld: got %.9g, expected %.9g\n", (long long)i, got[i],
                    want[i]);
    }
    free(got);
    return bad;
}

/* A non-contiguous tensor equal to t: stored with its last two dims swapped. */
static inline dr_tensor *strided_copy(const dr_tensor *t) {
    dr_tensor *a = NULL, *b = NULL, *c = NULL;
    int32_t nd = t->ndim;
    CHECK_OK(dr_tensor_transpose(t, nd - 2, nd - 1, &a));
    CHECK_OK(dr_tensor_contiguous(a, &b));
    CHECK_OK(dr_tensor_transpose(b, nd - 2, nd - 1, &c));
    CHECK(!dr_tensor_is_contiguous(c));
    dr_tensor_release(a);
    dr_tensor_release(b);
    return c;
}

static inline bool bitwise_equal(const dr_tensor *a, const dr_tensor *b) {
    int64_t n = dr_tensor_numel(a);
    double *va = su_get(a), *vb = su_get(b);
    bool same = n == dr_tensor_numel(b);
    for (int64_t i = 0; same && i < n; i++) same = va[i] == vb[i];
    free(va);
    free(vb);
    return same;
}

#endif
