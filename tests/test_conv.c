/* Convolution and resampling against naive references computed in double:
 * conv2d (groups, depthwise, stride, padding, dilation, 1x1, asymmetric kernels,
 * odd sizes, batches, column bands of a tall image, non-contiguous inputs, f16/bf16),
 * its backward by finite differences (also through transposed views and without
 * bias), thread-count independence, nearest upsampling and average pooling
 * forward and backward, and the error messages of bad arguments. */
#include <stdint.h>
#include <stdlib.h>

#include "gradcheck.h"

static const dr_device CPU = {DR_CPU, 0};

/* ---- operands ------------------------------------------------------------------ */

/* Multiples of 0.25 in [-2, 2]: exact in every float dtype. */
static double test_value(int64_t i, int salt) {
    uint64_t h = (uint64_t)(i + 1) * 2654435761u + (uint64_t)salt * 40503u;
    h ^= h >> 13;
    return ((double)(h % 17) - 8) / 4;
}

static double *values(int64_t n, int salt) {
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = test_value(i, salt);
    return v;
}

static int64_t count(const int64_t *s, int32_t nd) {
    int64_t n = 1;
    for (int32_t i = 0; i < nd; i++) n *= s[i];
    return n;
}

/* How a 4-D operand sits in memory; its values do not depend on it. */
typedef enum layout {
    L_CONTIG,
    L_TRANSPOSED, /* stored [N, C, W, H], viewed through transpose(3, 4) */
    L_NARROWED,   /* a window of a larger [N, C + 3, H, W + 2] tensor */
    L_CHANNELS_LAST, /* stored [N, H, W, C], viewed through permute */
} layout;

/* A 4-D tensor of `dtype` holding `v` (row-major over `s`) in layout `lay`. */
static dr_tensor *image(const int64_t *s, const double *v, int32_t dtype, layout lay) {
    dr_tensor *src = NULL, *base = NULL, *mid = NULL, *out = NULL;
    if (!CHECK_OK(dr_tensor_from_f64(v, s, 4, dtype, CPU, &src))) return NULL;
    int64_t b[4] = {s[0], s[1], s[2], s[3]};
    dr_status st = DR_OK;
    switch (lay) {
    case L_CONTIG: return src;
    case L_TRANSPOSED:
        b[2] = s[3], b[3] = s[2];
        st = dr_tensor_empty(b, 4, dtype, CPU, &base);
        if (st == DR_OK) st = dr_tensor_transpose(base, 2, 3, &out);
        break;
    case L_NARROWED:
        b[1] = s[1] + 3, b[3] = s[3] + 2;
        st = dr_tensor_empty(b, 4, dtype, CPU, &base);
        if (st == DR_OK) st = dr_tensor_narrow(base, 1, 1, s[1], &mid);
        if (st == DR_OK) st = dr_tensor_narrow(mid, 3, 2, s[3], &out);
        break;
    case L_CHANNELS_LAST: {
        int32_t perm[4] = {0, 3, 1, 2};
        b[1] = s[2], b[2] = s[3], b[3] = s[1];
        st = dr_tensor_empty(b, 4, dtype, CPU, &base);
        if (st == DR_OK) st = dr_tensor_permute(base, perm, 4, &out);
        break;
    }
    }
    if (st == DR_OK) st = dr_tensor_copy_(out, src);
    CHECK_OK(st);
    dr_tensor_release(src);
    dr_tensor_release(base);
    dr_tensor_release(mid);
    return out;
}

static int compare(const dr_tensor *t, const int64_t *sizes, int32_t nd, const double *want,
                   double rtol, const char *what) {
    if (!CHECK_EQ_INT(t->ndim, nd)) return 0;
    for (int32_t d = 0; d < nd; d++)
        if (!CHECK_EQ_INT(t->sizes[d], sizes[d])) return 0;
    int64_t n = count(sizes, nd), bad = 0;
    double *got = malloc((size_t)(n > 0 ? n : 1) * sizeof *got);
    CHECK_OK(dr_tensor_to_f64(t, got, n));
    for (int64_t i = 0; i < n; i++) {
        double tol = rtol * (1 + fabs(want[i]));
        if (!(fabs(got[i] - want[i]) <= tol) && bad++ < 3)
            fprintf(stderr, "  %s: element %lld is %.9g, expected %.9g\n", what, (long long)i,
                    got[i], want[i]);
    }
    free(got);
    return CHECK_EQ_INT(bad, 0);
}

/* ---- conv2d forward ------------------------------------------------------------------ */

typedef struct conv_case {
    const char *name;
    int64_t n, c, h, w, o, kh, kw;
    int64_t stride[2], padding[2], dilation[2], groups;
    int bias;
} conv_case;

static const conv_case conv_cases[] = {
    {"3x3 pad 1", 2, 3, 7, 6, 4, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {"stride 2, odd sizes", 1, 4, 9, 7, 5, 3, 3, {2, 2}, {1, 1}, {1, 1}, 1, 1},
    {"stride 2, no padding", 3, 2, 8, 8, 3, 3, 3, {2, 2}, {0, 0}, {1, 1}, 1, 0},
    {"dilation 2", 1, 2, 8, 9, 3, 3, 3, {1, 1}, {2, 2}, {2, 2}, 1, 1},
    {"groups 2", 2, 4, 5, 6, 6, 3, 3, {1, 1}, {1, 1}, {1, 1}, 2, 1},
    {"depthwise", 2, 5, 7, 5, 5, 3, 3, {1, 1}, {1, 1}, {1, 1}, 5, 1},
    {"depthwise x2, stride 2", 1, 3, 9, 9, 6, 3, 3, {2, 2}, {1, 1}, {1, 1}, 3, 0},
    {"1x1", 2, 6, 5, 7, 3, 1, 1, {1, 1}, {0, 0}, {1, 1}, 1, 1},
    {"1x1 groups 3", 1, 6, 4, 3, 9, 1, 1, {1, 1}, {0, 0}, {1, 1}, 3, 1},
    {"1x1 stride 2", 2, 4, 7, 5, 3, 1, 1, {2, 2}, {0, 0}, {1, 1}, 1, 0},
    {"1x1 padded", 1, 3, 3, 4, 2, 1, 1, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    {"2x3, mixed params", 2, 4, 11, 9, 4, 2, 3, {1, 2}, {0, 1}, {2, 1}, 2, 1},
    {"5x5 pad 2, stride 3", 1, 2, 13, 10, 3, 5, 5, {3, 3}, {2, 2}, {1, 1}, 1, 1},
    {"kernel = image", 2, 3, 4, 5, 2, 4, 5, {1, 1}, {0, 0}, {1, 1}, 1, 1},
    {"big padding", 1, 2, 3, 3, 2, 3, 3, {1, 1}, {3, 2}, {1, 1}, 1, 1},
    {"batch 4, groups 4", 4, 8, 6, 6, 8, 3, 3, {2, 1}, {1, 0}, {1, 2}, 4, 1},
    /* K Wo Ho > the 4M-float column band: several bands per image */
    {"banded", 1, 64, 130, 64, 2, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, 1},
};

static void out_shape(const conv_case *k, int64_t *s) {
    s[0] = k->n, s[1] = k->o;
    s[2] = (k->h + 2 * k->padding[0] - k->dilation[0] * (k->kh - 1) - 1) / k->stride[0] + 1;
    s[3] = (k->w + 2 * k->padding[1] - k->dilation[1] * (k->kw - 1) - 1) / k->stride[1] + 1;
}

/* The naive loop over every (output, kernel tap) pair: y = conv(x, w) + b when
 * dy is NULL, else the gradients dx, dw (zeroed here) of sum(y * dy). */
static void ref_conv_loop(const conv_case *k, const double *x, const double *w, const double *b,
                          double *y, const double *dy, double *dx, double *dw) {
    int64_t os[4];
    out_shape(k, os);
    int64_t cg = k->c / k->groups, og = k->o / k->groups;
    if (dy) {
        memset(dx, 0, (size_t)(k->n * k->c * k->h * k->w) * sizeof(double));
        memset(dw, 0, (size_t)(k->o * cg * k->kh * k->kw) * sizeof(double));
    }
    for (int64_t n = 0; n < k->n; n++)
        for (int64_t o = 0; o < k->o; o++)
            for (int64_t i = 0; i < os[2]; i++)
                for (int64_t j = 0; j < os[3]; j++) {
                    int64_t yi = ((n * k->o + o) * os[2] + i) * os[3] + j, g = o / og;
                    double s = b ? b[o] : 0;
                    for (int64_t c = 0; c < cg; c++)
                        for (int64_t a = 0; a < k->kh; a++)
                            for (int64_t e = 0; e < k->kw; e++) {
                                int64_t p = i * k->stride[0] - k->padding[0] + a * k->dilation[0];
                                int64_t q = j * k->stride[1] - k->padding[1] + e * k->dilation[1];
                                if (p < 0 || p >= k->h || q < 0 || q >= k->w) continue;
                                int64_t wi = ((o * cg + c) * k->kh + a) * k->kw + e;
                                int64_t xi = ((n * k->c + g * cg + c) * k->h + p) * k->w + q;
                                if (dy) {
                                    dx[xi] += w[wi] * dy[yi];
                                    dw[wi] += x[xi] * dy[yi];
                                } else {
                                    s += w[wi] * x[xi];
                                }
                            }
                    if (!dy) y[yi] = s;
                }
}

static void ref_conv(const conv_case *k, const double *x, const double *w, const double *b,
                     double *y) {
    ref_conv_loop(k, x, w, b, y, NULL, NULL, NULL);
}

static void test_conv_forward(void) {
    static const int32_t dtypes[] = {DR_F32, DR_F16, DR_BF16};
    static const double tols[] = {1e-5, 2e-3, 1.6e-2};
    for (size_t ci = 0; ci < sizeof conv_cases / sizeof *conv_cases; ci++) {
        const conv_case *k = &conv_cases[ci];
        int64_t xs[4] = {k->n, k->c, k->h, k->w}, ws[4] = {k->o, k->c / k->groups, k->kh, k->kw};
        int64_t os[4], bs[1] = {k->o};
        out_shape(k, os);
        double *xv = values(count(xs, 4), 1), *wv = values(count(ws, 4), 2);
        double *bv = values(k->o, 3), *want = malloc((size_t)count(os, 4) * sizeof(double));
        ref_conv(k, xv, wv, k->bias ? bv : NULL, want);
        for (int di = 0; di < 3; di++) {
            int last_layout = di == 0 && ci != 16 ? L_CHANNELS_LAST : L_CONTIG;
            for (int lay = L_CONTIG; lay <= last_layout; lay++) {
                dr_tensor *x = image(xs, xv, dtypes[di], lay);
                dr_tensor *w = image(ws, wv, dtypes[di], lay == L_NARROWED ? L_CONTIG : lay);
                dr_tensor *b = NULL, *y = NULL;
                if (k->bias) CHECK_OK(dr_tensor_from_f64(bv, bs, 1, dtypes[di], CPU, &b));
                if (CHECK_OK(dr_conv2d(x, w, b, k->stride, k->padding, k->dilation, k->groups,
                                       &y))) {
                    CHECK_EQ_INT(y->scalar_type, dtypes[di]);
                    if (!compare(y, os, 4, want, tols[di], k->name))
                        fprintf(stderr, "  (case '%s', %s, layout %d)\n", k->name,
                                dr_dtype_name(dtypes[di]), lay);
                }
                dr_tensor_release(x);
                dr_tensor_release(w);
                dr_tensor_release(b);
                dr_tensor_release(y);
            }
        }
        free(xv);
        free(wv);
        free(bv);
        free(want);
    }
}

/* ---- conv2d backward by finite differences ------------------------------------------ */

typedef struct gc_conv {
    const conv_case *k;
    int transposed; /* inputs[0] holds x stored [N, C, W, H]; the op sees its transpose */
} gc_conv;

static dr_status conv_input_view(dr_tensor *stored, const gc_conv *g, dr_tensor **x) {
    if (!g->transposed) {
        dr_tensor_retain(stored);
        *x = stored;
        return DR_OK;
    }
    return dr_tensor_transpose(stored, 2, 3, x);
}

static dr_status gc_conv_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const gc_conv *g = ctx;
    const conv_case *k = g->k;
    dr_tensor *x = NULL;
    dr_status st = conv_input_view(in[0], g, &x);
    if (st != DR_OK) return st;
    st = dr_conv2d(x, in[1], k->bias ? in[2] : NULL, k->stride, k->padding,
                             k->dilation, k->groups, out);
    dr_tensor_release(x);
    return st;
}

static dr_status gc_conv_bwd(const dr_tensor *grad_out, dr_tensor **in, const void *ctx,
                             dr_tensor **grads) {
    const gc_conv *g = ctx;
    const conv_case *k = g->k;
    dr_tensor *x = NULL, *gi = NULL;
    dr_status st = conv_input_view(in[0], g, &x);
    if (st != DR_OK) return st;
    st = dr_conv2d_backward(grad_out, x, in[1], k->stride, k->padding, k->dilation,
                                      k->groups, &gi, &grads[1], k->bias ? &grads[2] : NULL);
    dr_tensor_release(x);
    if (st != DR_OK) return st;
    if (!g->transposed) {
        grads[0] = gi;
        return DR_OK;
    }
    dr_tensor *t = NULL; /* back to the stored layout */
    st = dr_tensor_transpose(gi, 2, 3, &t);
    if (st == DR_OK) st = dr_tensor_contiguous(t, &grads[0]);
    dr_tensor_release(t);
    dr_tensor_release(gi);
    return st;
}

static void test_conv_backward(void) {
    static const int picks[] = {0, 1, 3, 4, 5, 6, 7, 9, 10, 11, 12, 15};
    dr_generator gen = {7, 0};
    for (size_t pi = 0; pi < sizeof picks / sizeof *picks; pi++) {
        const conv_case *k = &conv_cases[picks[pi]];
        for (int transposed = 0; transposed < 2; transposed++) {
            int64_t xs[4] = {k->n, k->c, transposed ? k->w : k->h, transposed ? k->h : k->w};
            int64_t ws[4] = {k->o, k->c / k->groups, k->kh, k->kw}, bs[1] = {k->o};
            dr_tensor *in[3] = {NULL, NULL, NULL};
            CHECK_OK(dr_randn(xs, 4, DR_F32, CPU, &gen, &in[0]));
            CHECK_OK(dr_randn(ws, 4, DR_F32, CPU, &gen, &in[1]));
            CHECK_OK(dr_randn(bs, 1, DR_F32, CPU, &gen, &in[2]));
            gc_conv ctx = {k, transposed};
            if (gradcheck(k->name, gc_conv_fwd, gc_conv_bwd, &ctx, in, 3, 1e-2, 2e-3, 2e-3))
                fprintf(stderr, "  (case '%s', transposed %d)\n", k->name, transposed);
            for (int i = 0; i < 3; i++) dr_tensor_release(in[i]);
        }
    }
}

/* Each gradient alone equals the one computed with the others; a transposed
 * grad_out and half dtypes work. */
static void test_conv_backward_parts(void) {
    const conv_case *k = &conv_cases[11];
    int64_t xs[4] = {k->n, k->c, k->h, k->w}, ws[4] = {k->o, k->c / k->groups, k->kh, k->kw};
    int64_t os[4];
    out_shape(k, os);
    double *xv = values(count(xs, 4), 4), *wv = values(count(ws, 4), 5);
    double *gv = values(count(os, 4), 6);
    dr_tensor *x = image(xs, xv, DR_F32, L_CONTIG), *w = image(ws, wv, DR_F32, L_CONTIG);
    dr_tensor *g = image(os, gv, DR_F32, L_CONTIG), *gt = image(os, gv, DR_F32, L_TRANSPOSED);
    dr_tensor *all[3] = {NULL}, *one[3] = {NULL};
    CHECK_OK(dr_conv2d_backward(g, x, w, k->stride, k->padding, k->dilation, k->groups, &all[0],
                                &all[1], &all[2]));
    CHECK_OK(dr_conv2d_backward(gt, x, w, k->stride, k->padding, k->dilation, k->groups, &one[0],
                                NULL, NULL));
    CHECK_OK(dr_conv2d_backward(g, x, w, k->stride, k->padding, k->dilation, k->groups, NULL,
                                &one[1], NULL));
    CHECK_OK(dr_conv2d_backward(gt, x, w, k->stride, k->padding, k->dilation, k->groups, NULL,
                                NULL, &one[2]));
    CHECK_OK(dr_conv2d_backward(g, x, w, k->stride, k->padding, k->dilation, k->groups, NULL,
                                NULL, NULL));
    /* Half dtypes: the same gradients, rounded once. */
    dr_tensor *xh = image(xs, xv, DR_BF16, L_CONTIG), *wh = image(ws, wv, DR_BF16, L_CONTIG);
    dr_tensor *gh = image(os, gv, DR_BF16, L_CONTIG), *half[3] = {NULL};
    CHECK_OK(dr_conv2d_backward(gh, xh, wh, k->stride, k->padding, k->dilation, k->groups,
                                &half[0], &half[1], &half[2]));
    for (int i = 0; i < 3; i++) {
        if (all[i] && one[i] && half[i]) {
            int64_t n = dr_tensor_numel(all[i]);
            double *a = malloc((size_t)n * sizeof *a);
            CHECK_OK(dr_tensor_to_f64(all[i], a, n));
            compare(one[i], all[i]->sizes, all[i]->ndim, a, 0, "gradient alone");
            CHECK_EQ_INT(half[i]->scalar_type, DR_BF16);
            compare(half[i], all[i]->sizes, all[i]->ndim, a, 1.6e-2, "bfloat16 gradient");
            free(a);
        }
        dr_tensor_release(all[i]);
        dr_tensor_release(one[i]);
        dr_tensor_release(half[i]);
    }
    dr_tensor_release(xh);
    dr_tensor_release(wh);
    dr_tensor_release(gh);
    dr_tensor_release(x);
    dr_tensor_release(w);
    dr_tensor_release(g);
    dr_tensor_release(gt);
    free(xv);
    free(wv);
    free(gv);

    /* An empty batch: empty output, zero weight and bias gradients. */
    int64_t es[4] = {0, 3, 5, 5}, ews[4] = {2, 3, 3, 3}, one2[2] = {1, 1}, zero2[2] = {0, 0};
    dr_tensor *ex = NULL, *ew = NULL, *ey = NULL, *eg[3] = {NULL};
    CHECK_OK(dr_tensor_empty(es, 4, DR_F32, CPU, &ex));
    CHECK_OK(dr_tensor_full(ews, 4, DR_F32, CPU, 1.0, &ew));
    if (CHECK_OK(dr_conv2d(ex, ew, NULL, one2, zero2, one2, 1, &ey))) {
        CHECK_EQ_INT(ey->sizes[0], 0);
        CHECK_EQ_INT(ey->sizes[2], 3);
        if (CHECK_OK(dr_conv2d_backward(ey, ex, ew, one2, zero2, one2, 1, &eg[0], &eg[1],
                                        &eg[2]))) {
            double v = 1;
            int64_t idx[4] = {1, 2, 2, 2};
            CHECK_OK(dr_tensor_get(eg[1], idx, &v));
            CHECK_NEAR(v, 0, 0);
            CHECK_OK(dr_tensor_get(eg[2], idx, &v));
            CHECK_NEAR(v, 0, 0);
        }
    }
    dr_tensor_release(ex);
    dr_tensor_release(ew);
    dr_tensor_release(ey);
    for (int j = 0; j < 3; j++) dr_tensor_release(eg[j]);
}

/* Shapes with several channel tiles, out-channel tiles and row bands per image,
 * against the naive gradients. */
static void test_conv_backward_big(void) {
    static const conv_case big[] = {
        {"tiles", 1, 64, 10, 9, 160, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, 0},
        {"tiles, groups 2", 2, 96, 9, 11, 64, 3, 3, {2, 1}, {1, 1}, {1, 2}, 2, 0},
        {"1x1 tiles", 2, 300, 6, 5, 200, 1, 1, {1, 1}, {0, 0}, {1, 1}, 1, 0},
        /* cpu_gemm.c's path (128 output channels and K >= 128 a group), with five
         * row bands (dX: even bands, then odd ones, added into shared rows) */
        {"gemm, bands, dilation 2", 2, 16, 300, 4, 128, 3, 3, {1, 1}, {1, 1}, {2, 1}, 1, 1},
        {"gemm, bands, stride 2", 1, 15, 300, 3, 130, 3, 3, {2, 1}, {1, 1}, {1, 1}, 1, 0},
        {"gemm, groups 2", 2, 40, 9, 7, 262, 3, 3, {1, 1}, {1, 1}, {1, 1}, 2, 1},
        {"gemm, 1x1", 3, 133, 5, 6, 140, 1, 1, {1, 1}, {0, 0}, {1, 1}, 1, 1},
        /* the weight gradient sums several whole images in one chunk */
        {"gemm, small images", 5, 16, 5, 4, 129, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    };
    int nbig = (int)(sizeof big / sizeof big[0]);
    for (int bi = 0; bi <= nbig; bi++) {
        const conv_case *k = bi < nbig ? &big[bi] : &conv_cases[16]; /* 16: banded */
        int64_t xs[4] = {k->n, k->c, k->h, k->w}, ws[4] = {k->o, k->c / k->groups, k->kh, k->kw};
        int64_t os[4];
        out_shape(k, os);
        double *xv = values(count(xs, 4), 9), *wv = values(count(ws, 4), 10);
        double *gv = values(count(os, 4), 11);
        double *dx = malloc((size_t)count(xs, 4) * sizeof(double));
        double *dw = malloc((size_t)count(ws, 4) * sizeof(double));
        ref_conv_loop(k, xv, wv, NULL, NULL, gv, dx, dw);
        dr_tensor *x = image(xs, xv, DR_F32, L_CONTIG), *w = image(ws, wv, DR_F32, L_CONTIG);
        dr_tensor *g = image(os, gv, DR_F32, L_CONTIG), *gx = NULL, *gw = NULL;
        if (CHECK_OK(dr_conv2d_backward(g, x, w, k->stride, k->padding, k->dilation, k->groups,
                                        &gx, &gw, NULL))) {
            compare(gx, xs, 4, dx, 1e-5, k->name);
            compare(gw, ws, 4, dw, 1e-5, k->name);
        }
        dr_tensor *all[] = {x, w, g, gx, gw};
        for (int i = 0; i < 5; i++) dr_tensor_release(all[i]);
        free(xv);
        free(wv);
        free(gv);
        free(dx);
        free(dw);
    }
}

/* Same bits for 1, 2 and 3 threads (OpenBLAS alone would not give that). */
static void test_conv_threads(void) {
    int saved = dr_get_num_threads();
    static const conv_case cases[] = {
        {"threads", 1, 64, 18, 18, 160, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, 1},
        {"threads", 2, 16, 22, 20, 32, 3, 3, {1, 1}, {1, 1}, {1, 1}, 2, 1},
        {"threads", 2, 16, 300, 4, 128, 3, 3, {1, 1}, {1, 1}, {2, 1}, 1, 1},
        {"threads", 5, 16, 5, 4, 129, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, 1},
    };
    for (int bi = 0; bi < (int)(sizeof cases / sizeof cases[0]); bi++) {
        conv_case k = cases[bi];
        int64_t xs[4] = {k.n, k.c, k.h, k.w}, ws[4] = {k.o, k.c / k.groups, 3, 3}, bs[1] = {k.o};
        int64_t os[4];
        out_shape(&k, os);
        dr_generator gen = {11, 0};
        dr_tensor *x = NULL, *w = NULL, *b = NULL, *g = NULL, *res[3][4] = {{NULL}};
        CHECK_OK(dr_randn(xs, 4, DR_F32, CPU, &gen, &x));
        CHECK_OK(dr_randn(ws, 4, DR_F32, CPU, &gen, &w));
        CHECK_OK(dr_randn(bs, 1, DR_F32, CPU, &gen, &b));
        CHECK_OK(dr_randn(os, 4, DR_F32, CPU, &gen, &g));
        for (int t = 0; t < 3; t++) {
            dr_set_num_threads(t + 1);
            CHECK_OK(dr_conv2d(x, w, b, k.stride, k.padding, k.dilation, k.groups, &res[t][0]));
            CHECK_OK(dr_conv2d_backward(g, x, w, k.stride, k.padding, k.dilation, k.groups,
                                        &res[t][1], &res[t][2], &res[t][3]));
        }
        dr_set_num_threads(saved);
        for (int t = 1; t < 3; t++)
            for (int r = 0; r < 4; r++) {
                if (!res[0][r] || !res[t][r]) continue;
                int64_t n = dr_tensor_numel(res[0][r]);
                if (!CHECK(memcmp(dr_tensor_data(res[0][r]), dr_tensor_data(res[t][r]),
                                  (size_t)n * sizeof(float)) == 0))
                    fprintf(stderr, "  batch %lld, %d threads, result %d differs\n",
                            (long long)k.n, t + 1, r);
            }
        for (int t = 0; t < 3; t++)
            for (int r = 0; r < 4; r++) dr_tensor_release(res[t][r]);
        dr_tensor_release(x);
        dr_tensor_release(w);
        dr_tensor_release(b);
        dr_tensor_release(g);
    }
}

/* ---- upsampling and pooling --------------------------------------------------------- */

typedef struct pool_case {
    int64_t n, c, h, w;
    int64_t kernel[2], stride[2], padding[2];
} pool_case;

static const pool_case pool_cases[] = {
    {2, 3, 8, 6, {2, 2}, {2, 2}, {0, 0}},
    {1, 2, 7, 9, {3, 3}, {2, 2}, {1, 1}},
    {2, 2, 5, 6, {3, 2}, {1, 2}, {1, 0}},
    {1, 3, 9, 7, {2, 3}, {3, 1}, {1, 1}},
    {3, 1, 4, 4, {4, 4}, {1, 1}, {2, 2}},
};

static void pool_out_shape(const pool_case *p, int64_t *s) {
    s[0] = p->n, s[1] = p->c;
    s[2] = (p->h + 2 * p->padding[0] - p->kernel[0]) / p->stride[0] + 1;
    s[3] = (p->w + 2 * p->padding[1] - p->kernel[1]) / p->stride[1] + 1;
}

static void ref_pool(const pool_case *p, const double *x, double *y) {
    int64_t os[4];
    pool_out_shape(p, os);
    for (int64_t pl = 0; pl < p->n * p->c; pl++)
        for (int64_t i = 0; i < os[2]; i++)
            for (int64_t j = 0; j < os[3]; j++) {
                double s = 0;
                for (int64_t a = 0; a < p->kernel[0]; a++)
                    for (int64_t b = 0; b < p->kernel[1]; b++) {
                        int64_t r = i * p->stride[0] - p->padding[0] + a;
                        int64_t c = j * p->stride[1] - p->padding[1] + b;
                        if (r >= 0 && r < p->h && c >= 0 && c < p->w)
                            s += x[(pl * p->h + r) * p->w + c];
                    }
                y[(pl * os[2] + i) * os[3] + j] = s / (double)(p->kernel[0] * p->kernel[1]);
            }
}

typedef struct gc_resample {
    const pool_case *pool; /* NULL: upsampling by scale */
    int64_t scale[2];
} gc_resample;

static dr_status gc_resample_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const gc_resample *g = ctx;
    if (!g->pool) return dr_upsample_nearest2d(in[0], g->scale[0], g->scale[1], out);
    return dr_avg_pool2d(in[0], g->pool->kernel, g->pool->stride, g->pool->padding, out);
}

static dr_status gc_resample_bwd(const dr_tensor *grad_out, dr_tensor **in, const void *ctx,
                                 dr_tensor **grads) {
    const gc_resample *g = ctx;
    if (!g->pool) return dr_upsample_nearest2d_backward(grad_out, g->scale[0], g->scale[1], grads);
    return dr_avg_pool2d_backward(grad_out, in[0], g->pool->kernel, g->pool->stride,
                                  g->pool->padding, grads);
}

static void test_pool(void) {
    static const int32_t dtypes[] = {DR_F32, DR_F16, DR_BF16};
    static const double tols[] = {1e-6, 1e-3, 8e-3};
    dr_generator gen = {5, 0};
    for (size_t pi = 0; pi < sizeof pool_cases / sizeof *pool_cases; pi++) {
        const pool_case *p = &pool_cases[pi];
        int64_t xs[4] = {p->n, p->c, p->h, p->w}, os[4];
        pool_out_shape(p, os);
        double *xv = values(count(xs, 4), 7), *want = malloc((size_t)count(os, 4) * sizeof(double));
        ref_pool(p, xv, want);
        for (int di = 0; di < 3; di++)
            for (int lay = L_CONTIG; lay <= L_CHANNELS_LAST; lay++) {
                dr_tensor *x = image(xs, xv, dtypes[di], lay), *y = NULL;
                if (CHECK_OK(dr_avg_pool2d(x, p->kernel, p->stride, p->padding, &y))) {
                    CHECK_EQ_INT(y->scalar_type, dtypes[di]);
                    compare(y, os, 4, want, tols[di], "avg_pool2d");
                }
                dr_tensor_release(x);
                dr_tensor_release(y);
            }
        dr_tensor *in = NULL;
        CHECK_OK(dr_randn(xs, 4, DR_F32, CPU, &gen, &in));
        gc_resample ctx = {p, {0, 0}};
        gradcheck("avg_pool2d", gc_resample_fwd, gc_resample_bwd, &ctx, &in, 1, 1e-2, 1e-3, 1e-3);
        dr_tensor_release(in);
        free(xv);
        free(want);
    }
}

static void test_upsample(void) {
    static const int64_t scales[][2] = {{2, 2}, {3, 1}, {1, 2}, {2, 3}};
    dr_generator gen = {9, 0};
    int64_t xs[4] = {2, 3, 5, 4};
    double *xv = values(count(xs, 4), 8);
    for (int si = 0; si < 4; si++) {
        int64_t sh = scales[si][0], sw = scales[si][1];
        int64_t os[4] = {2, 3, 5 * sh, 4 * sw};
        double *want = malloc((size_t)count(os, 4) * sizeof(double));
        for (int64_t pl = 0; pl < 6; pl++)
            for (int64_t i = 0; i < os[2]; i++)
                for (int64_t j = 0; j < os[3]; j++)
                    want[(pl * os[2] + i) * os[3] + j] = xv[(pl * 5 + i / sh) * 4 + j / sw];
        for (int32_t dt = DR_F32; dt <= DR_BF16; dt++)
            for (int lay = L_CONTIG; lay <= L_CHANNELS_LAST; lay++) {
                dr_tensor *x = image(xs, xv, dt, lay), *y = NULL;
                if (CHECK_OK(dr_upsample_nearest2d(x, sh, sw, &y))) {
                    CHECK_EQ_INT(y->scalar_type, dt);
                    compare(y, os, 4, want, 0, "upsample_nearest2d");
                }
                dr_tensor_release(x);
                dr_tensor_release(y);
            }
        dr_tensor *in = NULL;
        CHECK_OK(dr_randn(xs, 4, DR_F32, CPU, &gen, &in));
        gc_resample ctx = {NULL, {sh, sw}};
        gradcheck("upsample_nearest2d", gc_resample_fwd, gc_resample_bwd, &ctx, &in, 1, 1e-2,
                  1e-3, 1e-3);
        dr_tensor_release(in);
        free(want);
    }
    free(xv);
}

/* ---- errors -------------------------------------------------------------------------- */

static dr_tensor *empty(int64_t a, int64_t b, int64_t c, int64_t d, int32_t nd, int32_t dtype) {
    int64_t s[4] = {a, b, c, d};
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_empty(s, nd, dtype, CPU, &t));
    return t;
}

static void test_errors(void) {
    const int64_t one[2] = {1, 1}, zero[2] = {0, 0}, two[2] = {2, 2}, neg[2] = {0, -1};
    dr_tensor *x = empty(1, 8, 64, 64, 4, DR_F32), *w = empty(320, 4, 3, 3, 4, DR_F32);
    dr_tensor *x4 = empty(1, 4, 5, 5, 4, DR_F32), *w4 = empty(6, 4, 3, 3, 4, DR_F32);
    dr_tensor *xh = empty(1, 4, 5, 5, 4, DR_F16), *xi = empty(1, 4, 5, 5, 4, DR_I64);
    dr_tensor *x3 = empty(4, 5, 5, 1, 3, DR_F32), *b5 = empty(5, 1, 1, 1, 1, DR_F32);
    dr_tensor *y = NULL, *gi = NULL;
    CHECK_FAILS(dr_conv2d(x, w, NULL, one, one, one, 1, &y), DR_ERR_SHAPE,
                "conv2d: weight [320, 4, 3, 3] expects 4 input channels (groups 1), got input "
                "[1, 8, 64, 64] with 8");
    CHECK_FAILS(dr_conv2d(x, w, NULL, one, one, one, 4, &y), DR_ERR_SHAPE,
                "expects 16 input channels (groups 4)");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, one, one, one, 4, &y), DR_ERR_SHAPE,
                "conv2d: weight [6, 4, 3, 3] has 6 output channels, not divisible by groups 4");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, one, one, one, 0, &y), DR_ERR_ARG,
                "conv2d: groups must be positive, got 0");
    CHECK_FAILS(dr_conv2d(x4, w4, b5, one, one, one, 1, &y), DR_ERR_SHAPE,
                "conv2d: bias [5] does not fit weight [6, 4, 3, 3]: expected [6]");
    CHECK_FAILS(dr_conv2d(xh, w4, NULL, one, one, one, 1, &y), DR_ERR_DTYPE,
                "conv2d: input float16 [1, 4, 5, 5] and weight float32 [6, 4, 3, 3] must have "
                "the same dtype");
    CHECK_FAILS(dr_conv2d(xi, w4, NULL, one, one, one, 1, &y), DR_ERR_DTYPE,
                "conv2d: input [1, 4, 5, 5] has dtype int64");
    CHECK_FAILS(dr_conv2d(x3, w4, NULL, one, one, one, 1, &y), DR_ERR_SHAPE,
                "conv2d: expected a 4-D input [N, C, H, W], got [4, 5, 5]");
    CHECK_FAILS(dr_conv2d(x4, x3, NULL, one, one, one, 1, &y), DR_ERR_SHAPE,
                "conv2d: expected a 4-D weight");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, zero, one, one, 1, &y), DR_ERR_ARG,
                "conv2d: stride must be positive, got [0, 0]");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, one, neg, one, 1, &y), DR_ERR_ARG,
                "conv2d: padding must be non-negative, got [0, -1]");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, one, one, zero, 1, &y), DR_ERR_ARG,
                "conv2d: dilation must be positive");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, NULL, one, one, 1, &y), DR_ERR_ARG, "conv2d");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, one, zero, (const int64_t[2]){3, 3}, 1, &y),
                DR_ERR_SHAPE, "conv2d: padded input 5x5 (input [1, 4, 5, 5], padding [0, 0]) is "
                "smaller than the kernel 7x7 (weight [6, 4, 3, 3], dilation [3, 3])");
    CHECK_FAILS(dr_conv2d(NULL, w4, NULL, one, one, one, 1, &y), DR_ERR_ARG, "conv2d");
    CHECK_FAILS(dr_conv2d(x4, w4, NULL, one, one, one, 1, NULL), DR_ERR_ARG, "conv2d");
    CHECK_FAILS(dr_conv2d_backward(x4, x4, w4, one, one, one, 1, &gi, NULL, NULL), DR_ERR_SHAPE,
                "conv2d_backward: grad_out [1, 4, 5, 5] does not match the output [1, 6, 5, 5] "
                "of input [1, 4, 5, 5] and weight [6, 4, 3, 3]");
    CHECK(gi == NULL);
    CHECK_FAILS(dr_conv2d_backward(NULL, x4, w4, one, one, one, 1, &gi, NULL, NULL), DR_ERR_ARG,
                "conv2d_backward");

    CHECK_FAILS(dr_upsample_nearest2d(x4, 0, 2, &y), DR_ERR_ARG,
                "upsample_nearest2d: scale factors must be positive integers, got [0, 2]");
    CHECK_FAILS(dr_upsample_nearest2d(x3, 2, 2, &y), DR_ERR_SHAPE,
                "upsample_nearest2d: expected a 4-D input [N, C, H, W], got [4, 5, 5]");
    CHECK_FAILS(dr_upsample_nearest2d(xi, 2, 2, &y), DR_ERR_DTYPE,
                "upsample_nearest2d: input [1, 4, 5, 5] has dtype int64");
    CHECK_FAILS(dr_upsample_nearest2d_backward(x4, 2, 2, &y), DR_ERR_SHAPE,
                "upsample_nearest2d_backward: grad_out [1, 4, 5, 5] is not a whole multiple of "
                "the scale [2, 2]");
    CHECK_FAILS(dr_avg_pool2d(x4, two, two, (const int64_t[2]){2, 0}, &y), DR_ERR_ARG,
                "avg_pool2d: padding [2, 0] must be at most half of kernel_size [2, 2]");
    CHECK_FAILS(dr_avg_pool2d(x4, (const int64_t[2]){6, 2}, two, zero, &y), DR_ERR_SHAPE,
                "avg_pool2d: input [1, 4, 5, 5] padded by [0, 0] is smaller than kernel_size "
                "[6, 2]");
    CHECK_FAILS(dr_avg_pool2d(x4, zero, two, zero, &y), DR_ERR_ARG,
                "avg_pool2d: kernel_size must be positive");
    CHECK_FAILS(dr_avg_pool2d(x4, two, NULL, zero, &y), DR_ERR_ARG, "avg_pool2d");
    CHECK_FAILS(dr_avg_pool2d_backward(x4, x4, two, two, zero, &y), DR_ERR_SHAPE,
                "avg_pool2d_backward: grad_out [1, 4, 5, 5] does not match the output "
                "[1, 4, 2, 2] of input [1, 4, 5, 5]");
    CHECK(y == NULL);
    dr_tensor_free(x4);
    CHECK_FAILS(dr_avg_pool2d(x4, two, two, zero, &y), DR_ERR_FREED, "avg_pool2d");
    dr_tensor *all[] = {x, w, x4, w4, xh, xi, x3, b5};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) dr_tensor_release(all[i]);
}

int main(void) {
    test_conv_forward();
    test_conv_backward();
    test_conv_backward_parts();
    test_conv_backward_big();
    test_conv_threads();
    test_pool();
    test_upsample();
    test_errors();
    return check_summary("test_conv");
}
