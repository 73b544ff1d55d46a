/*
 * gradcheck.h — finite-difference checks of explicit backward functions.
 *
 * An op under test is given as two callbacks over an array of input tensors:
 *   forward(inputs, ctx, &out)
 *   backward(grad_out, inputs, ctx, grads)   grads[i] = dL/dinputs[i] (NULL if none)
 * gradcheck() draws a random cotangent R, takes L = sum(out * R) and compares each
 * analytic gradient element with the central difference (L(x+h) - L(x-h)) / 2h,
 * evaluated in double from float32 outputs. Inputs must be contiguous float32.
 * Returns the number of mismatching elements (also recorded as CHECKs).
 */
#ifndef DIFFRL_TESTS_GRADCHECK_H
#define DIFFRL_TESTS_GRADCHECK_H

#include <stdlib.h>

#include "check.h"

typedef dr_status (*gc_forward_fn)(dr_tensor **inputs, const void *ctx, dr_tensor **out);
typedef dr_status (*gc_backward_fn)(const dr_tensor *grad_out, dr_tensor **inputs,
                                    const void *ctx, dr_tensor **grads);

/* L = sum(out * R) in double. */
static inline double gc_loss_(dr_tensor *out, const dr_tensor *r) {
    int64_t n = dr_tensor_numel(out);
    double *a = malloc((size_t)(n + 1) * sizeof(double));
    double *b = malloc((size_t)(n + 1) * sizeof(double));
    double l = 0;
    if (a && b && dr_tensor_to_f64(out, a, n) == DR_OK && dr_tensor_to_f64(r, b, n) == DR_OK)
        for (int64_t i = 0; i < n; i++) l += a[i] * b[i];
    free(a);
    free(b);
    return l;
}

static inline int gradcheck(const char *name, gc_forward_fn fwd, gc_backward_fn bwd,
                            const void *ctx, dr_tensor **inputs, int ninputs, double h,
                            double atol, double rtol) {
    dr_device cpu = {DR_CPU, 0};
    dr_generator g = {12345, 0};
    enum { MAX_INPUTS = 8 };
    dr_tensor *out = NULL, *r = NULL, *grads[MAX_INPUTS] = {NULL};
    int bad = 0;
    if (!CHECK(ninputs >= 0 && ninputs <= MAX_INPUTS)) return 1;
    if (!CHECK_OK(fwd(inputs, ctx, &out))) return 1;
    if (!CHECK_OK(dr_randn(out->sizes, out->ndim, DR_F32, cpu, &g, &r))) return 1;
    if (!CHECK_OK(bwd(r, inputs, ctx, grads))) return 1;
    for (int k = 0; k < ninputs; k++) {
        if (!grads[k]) continue;
        CHECK_EQ_INT(dr_tensor_numel(grads[k]), dr_tensor_numel(inputs[k]));
        float *x = dr_tensor_data(inputs[k]);
        int64_t n = dr_tensor_numel(inputs[k]);
        double *analytic = malloc((size_t)(n + 1) * sizeof(double));
        if (!analytic || dr_tensor_to_f64(grads[k], analytic, n) != DR_OK) n = 0;
        for (int64_t i = 0; i < n; i++) {
            float keep = x[i];
            dr_tensor *o1 = NULL, *o2 = NULL;
            x[i] = keep + (float)h;
            dr_status s1 = fwd(inputs, ctx, &o1);
            x[i] = keep - (float)h;
            dr_status s2 = fwd(inputs, ctx, &o2);
            x[i] = keep;
            double numeric = s1 == DR_OK && s2 == DR_OK
                                 ? (gc_loss_(o1, r) - gc_loss_(o2, r)) / (2 * h) : NAN;
            dr_tensor_release(o1);
            dr_tensor_release(o2);
            if (!(fabs(numeric - analytic[i]) <= atol + rtol * fabs(numeric))) {
                if (bad < 5)
                    fprintf(stderr, "%s: input %d element %lld: analytic %.6g, numeric %.6g\n",
                            name, k, (long long)i, analytic[i], numeric);
                bad++;
            }
        }
        free(analytic);
    }
    CHECK_EQ_INT(bad, 0);
    for (int k = 0; k < MAX_INPUTS; k++) dr_tensor_release(grads[k]);
    dr_tensor_release(out);
    dr_tensor_release(r);
    return bad;
}

#endif
