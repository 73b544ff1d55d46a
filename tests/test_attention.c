/* scaled_dot_product_attention against a naive reference computed in double
 * (softmax(q k^T * scale + mask) v and its gradients): sequence lengths that are
 * not multiples of the tiles, E = 40/64/80/160, bool and float masks broadcast
 * from smaller shapes, causal masks with Lq != Lk (top-left aligned, as torch),
 * rows that attend nothing (zeros, logsumexp -inf), broadcast batch dims,
 * non-contiguous operands, float16/bfloat16; the backward by finite differences
 * (gradcheck.h) and through the autograd tape; bitwise equality across thread
 * counts; bounded memory for a 4096 x 4096 forward; the error messages. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"

static const dr_device CPU = {DR_CPU, 0};

/* Multiples of 1/8 in [-1, 1]: exact in every float dtype. */
static double test_value(int64_t i, int salt) {
    uint64_t h = (uint64_t)(i + 1) * 2654435761u + (uint64_t)salt * 40503u;
    h ^= h >> 13;
    h *= 0x9E3779B1u;
    h ^= h >> 16;
    return ((double)(h % 17) - 8) / 8;
}

static int64_t prod(const int64_t *s, int32_t n) {
    int64_t p = 1;
    for (int32_t i = 0; i < n; i++) p *= s[i];
    return p;
}

/* Index into an array of shape `sizes` (nd dims, right-aligned to `full`, size-1
 * dims broadcast) of element `flat` of the full shape. */
static int64_t bcast_index(const int64_t *full, int32_t nfull, const int64_t *sizes, int32_t nd,
                           int64_t flat) {
    int64_t idx = 0, stride = 1;
    for (int32_t d = nfull - 1; d >= 0; d--) {
        int64_t i = flat % full[d];
        flat /= full[d];
        int32_t ds = d - (nfull - nd);
        if (ds < 0) continue;
        if (sizes[ds] != 1) idx += i * stride;
        stride *= sizes[ds];
    }
    return idx;
}

/* ---- reference ----------------------------------------------------------------- */

typedef struct ref_case {
    int64_t batch, lq, lk, e, ev;
    const double *q, *k, *v; /* [batch, L, E] */
    const double *mask;      /* additive [batch, lq, lk] (-inf = masked) or NULL */
    int causal;
    double scale;
} ref_case;

/* P [lq, lk] of batch b; rows that attend nothing are 0. */
static void ref_probs(const ref_case *c, int64_t b, double *p) {
    for (int64_t i = 0; i < c->lq; i++) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < c->lk; j++) {
            double s = 0;
            for (int64_t x = 0; x < c->e; x++)
                s += c->q[(b * c->lq + i) * c->e + x] * c->k[(b * c->lk + j) * c->e + x];
            s *= c->scale;
            if (c->mask) s += c->mask[(b * c->lq + i) * c->lk + j];
            if (c->causal && j > i) s = -INFINITY;
            p[i * c->lk + j] = s;
            if (s > mx) mx = s;
        }
        double sum = 0;
        for (int64_t j = 0; j < c->lk; j++) {
            double s = p[i * c->lk + j];
            p[i * c->lk + j] = mx == -INFINITY ? 0 : exp(s - mx);
            sum += p[i * c->lk + j];
        }
        for (int64_t j = 0; j < c->lk; j++) p[i * c->lk + j] = sum > 0 ? p[i * c->lk + j] / sum : 0;
        p[c->lq * c->lk + i] = sum > 0 ? mx + log(sum) : -INFINITY; /* lse after P */
    }
}

static void ref_forward(const ref_case *c, double *out, double *lse) {
    double *p = malloc((size_t)(c->lq * c->lk + c->lq + 1) * sizeof(double));
    for (int64_t b = 0; b < c->batch; b++) {
        ref_probs(c, b, p);
        for (int64_t i = 0; i < c->lq; i++) {
            lse[b * c->lq + i] = p[c->lq * c->lk + i];
            for (int64_t y = 0; y < c->ev; y++) {
                double s = 0;
                for (int64_t j = 0; j < c->lk; j++)
                    s += p[i * c->lk + j] * c->v[(b * c->lk + j) * c->ev + y];
                out[(b * c->lq + i) * c->ev + y] = s;
            }
        }
    }
    free(p);
}

static void ref_backward(const ref_case *c, const double *dout, double *dq, double *dk,
                         double *dv) {
    int64_t lq = c->lq, lk = c->lk, e = c->e, ev = c->ev;
    double *p = malloc((size_t)(lq * lk + lq + 1) * sizeof(double));
    double *ds = malloc((size_t)(lq * lk + 1) * sizeof(double));
    memset(dq, 0, (size_t)(c->batch * lq * e) * sizeof(double));
    memset(dk, 0, (size_t)(c->batch * lk * e) * sizeof(double));
    memset(dv, 0, (size_t)(c->batch * lk * ev) * sizeof(double));
    for (int64_t b = 0; b < c->batch; b++) {
        const double *go = dout + b * lq * ev, *q = c->q + b * lq * e, *k = c->k + b * lk * e;
        const double *v = c->v + b * lk * ev;
        ref_probs(c, b, p);
        for (int64_t i = 0; i < lq; i++) {
            double d = 0;
            for (int64_t j = 0; j < lk; j++) {
                double dp = 0;
                for (int64_t y = 0; y < ev; y++) dp += go[i * ev + y] * v[j * ev + y];
                ds[i * lk + j] = dp;
                d += dp * p[i * lk + j];
            }
            for (int64_t j = 0; j < lk; j++) ds[i * lk + j] = p[i * lk + j] * (ds[i * lk + j] - d);
        }
        for (int64_t i = 0; i < lq; i++)
            for (int64_t j = 0; j < lk; j++) {
                for (int64_t y = 0; y < ev; y++)
                    dv[(b * lk + j) * ev + y] += p[i * lk + j] * go[i * ev + y];
                for (int64_t x = 0; x < e; x++) {
                    dq[(b * lq + i) * e + x] += c->scale * ds[i * lk + j] * k[j * e + x];
                    dk[(b * lk + j) * e + x] += c->scale * ds[i * lk + j] * q[i * e + x];
                }
            }
    }
    free(p);
    free(ds);
}

/* ---- cases ------------------------------------------------------------------------ */

enum { MASK_NONE, MASK_BOOL, MASK_FLOAT };
enum { LAY_CONTIG, LAY_STRIDED }; /* q permuted (rows strided), k last dim strided, mask transposed */

typedef struct tcase {
    const char *name;
    int32_t nb;
    int64_t qb[3], kb[3], vb[3]; /* batch dims of q, k, v (broadcast) */
    int64_t lq, lk, e, ev;
    int mask_kind;
    int32_t mask_nd;
    int64_t mask_sizes[5];
    int empty_row; /* a query row (index 2) masked everywhere */
    int causal;
    double scale;  /* passed to the op (<= 0: default) */
    int32_t dtype;
    int layout;
} tcase;

typedef struct built {
    int64_t full_b[3], batch;
    double *q, *k, *v, *qx, *kx, *vx; /* own shapes, expanded [batch, L, E] */
    double *mask, *maskx;             /* own shape, additive expanded */
    dr_tensor *tq, *tk, *tv, *tm;
    ref_case ref;
} built;

/* A tensor of `dtype` holding v (row-major over s); LAY_STRIDED stores it with
 * dims a and b swapped and views it through transpose(a, b). */
static dr_tensor *make_tensor(const double *v, const int64_t *s, int32_t nd, int32_t dtype,
                              int strided, int32_t a, int32_t b) {
    dr_tensor *src = NULL, *base = NULL, *out = NULL;
    if (!CHECK_OK(dr_tensor_from_f64(v, s, nd, dtype, CPU, &src))) return NULL;
    if (!strided || a < 0) return src;
    int64_t bs[8];
    memcpy(bs, s, (size_t)nd * sizeof *s);
    bs[a] = s[b], bs[b] = s[a];
    dr_status st = dr_tensor_empty(bs, nd, dtype, CPU, &base);
    if (st == DR_OK) st = dr_tensor_transpose(base, a, b, &out);
    if (st == DR_OK) st = dr_tensor_copy_(out, src);
    CHECK_OK(st);
    dr_tensor_release(src);
    dr_tensor_release(base);
    return out;
}

static double *fill(int64_t n, int salt) {
    double *v = malloc((size_t)(n + 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = test_value(i, salt);
    return v;
}

/* x expanded from its batch shape xb to the full [batch, rows, cols]. */
static double *expand(const double *x, const int64_t *xb, const built *bt, int32_t nb, int64_t rc) {
    double *o = malloc((size_t)(bt->batch * rc + 1) * sizeof *o);
    for (int64_t b = 0; b < bt->batch; b++) {
        int64_t src = bcast_index(bt->full_b, nb, xb, nb, b);
        memcpy(o + b * rc, x + src * rc, (size_t)rc * sizeof *o);
    }
    return o;
}

static void build(const tcase *tc, built *bt) {
    memset(bt, 0, sizeof *bt);
    int32_t nb = tc->nb, nd = nb + 2;
    bt->batch = 1;
    for (int32_t i = 0; i < nb; i++) {
        int64_t m = tc->qb[i];
        if (tc->kb[i] > m) m = tc->kb[i];
        if (tc->vb[i] > m) m = tc->vb[i];
        bt->full_b[i] = m;
        bt->batch *= m;
    }
    int64_t sq[5], sk[5], sv[5];
    memcpy(sq, tc->qb, sizeof tc->qb), memcpy(sk, tc->kb, sizeof tc->kb), memcpy(sv, tc->vb, sizeof tc->vb);
    sq[nb] = tc->lq, sq[nb + 1] = tc->e;
    sk[nb] = tc->lk, sk[nb + 1] = tc->e;
    sv[nb] = tc->lk, sv[nb + 1] = tc->ev;
    bt->q = fill(prod(sq, nd), 1);
    bt->k = fill(prod(sk, nd), 2);
    bt->v = fill(prod(sv, nd), 3);
    bt->qx = expand(bt->q, tc->qb, bt, nb, tc->lq * tc->e);
    bt->kx = expand(bt->k, tc->kb, bt, nb, tc->lk * tc->e);
    bt->vx = expand(bt->v, tc->vb, bt, nb, tc->lk * tc->ev);
    int strided = tc->layout == LAY_STRIDED;
    bt->tq = make_tensor(bt->q, sq, nd, tc->dtype, strided, nb > 0 ? nb - 1 : -1, nb);
    bt->tk = make_tensor(bt->k, sk, nd, tc->dtype, strided, nb, nb + 1);
    bt->tv = make_tensor(bt->v, sv, nd, tc->dtype, 0, -1, -1);
    if (tc->mask_kind != MASK_NONE) {
        int64_t nm = prod(tc->mask_sizes, tc->mask_nd);
        int32_t mnd = tc->mask_nd;
        bt->mask = malloc((size_t)(nm + 1) * sizeof(double));
        for (int64_t i = 0; i < nm; i++) {
            uint64_t h = (uint64_t)(i + 7) * 2246822519u;
            h ^= h >> 15;
            int64_t row = mnd >= 2 && tc->mask_sizes[mnd - 2] > 2
                              ? i / tc->mask_sizes[mnd - 1] % tc->mask_sizes[mnd - 2] : -1;
            bool off = h % 4 == 0 || (tc->empty_row && row == 2);
            if (tc->mask_kind == MASK_BOOL) bt->mask[i] = off ? 0 : 1;
            else bt->mask[i] = off ? -INFINITY : -(double)(h % 9) / 4;
        }
        int32_t mdt = tc->mask_kind == MASK_BOOL ? DR_BOOL : tc->dtype;
        int mstrided = strided && mnd >= 2;
        bt->tm = make_tensor(bt->mask, tc->mask_sizes, mnd, mdt, mstrided, mnd - 2, mnd - 1);
        int64_t full[5];
        memcpy(full, bt->full_b, sizeof bt->full_b);
        full[nb] = tc->lq, full[nb + 1] = tc->lk;
        int64_t nx = bt->batch * tc->lq * tc->lk;
        bt->maskx = malloc((size_t)(nx + 1) * sizeof(double));
        for (int64_t i = 0; i < nx; i++) {
            double m = bt->mask[bcast_index(full, nd, tc->mask_sizes, mnd, i)];
            bt->maskx[i] = tc->mask_kind == MASK_BOOL ? (m != 0 ? 0 : -INFINITY) : m;
        }
    }
    ref_case r = {bt->batch, tc->lq, tc->lk, tc->e, tc->ev, bt->qx, bt->kx, bt->vx, bt->maskx,
                  tc->causal, tc->scale > 0 ? tc->scale : 1 / sqrt((double)tc->e)};
    bt->ref = r;
}

static void unbuild(built *bt) {
    double *arrays[] = {bt->q, bt->k, bt->v, bt->qx, bt->kx, bt->vx, bt->mask, bt->maskx};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]);
    dr_tensor_release(bt->tq);
    dr_tensor_release(bt->tk);
    dr_tensor_release(bt->tv);
    dr_tensor_release(bt->tm);
}

/* Sums the expanded [batch, rc] gradient over the batch dims that xb broadcasts. */
static double *reduce(const double *gx, const int64_t *xb, const built *bt, int32_t nb, int64_t rc) {
    int64_t n = prod(xb, nb) * rc;
    double *o = calloc((size_t)(n + 1), sizeof *o);
    for (int64_t b = 0; b < bt->batch; b++) {
        int64_t dst = bcast_index(bt->full_b, nb, xb, nb, b);
        for (int64_t i = 0; i < rc; i++) o[dst * rc + i] += gx[b * rc + i];
    }
    return o;
}

/* Equal bits (memcmp, which must not see the NULL data of empty tensors). */
static bool same_bits(const dr_tensor *a, const dr_tensor *b) {
    int64_t n = dr_tensor_numel(a);
    if (n != dr_tensor_numel(b)) return false;
    return n == 0 || memcmp(dr_tensor_data(a), dr_tensor_data(b),
                            (size_t)(n * dr_dtype_size(a->scalar_type))) == 0;
}

static int compare(const char *what, const char *name, const dr_tensor *t, const double *want,
                   int64_t n, double atol, double rtol) {
    if (!CHECK_EQ_INT(dr_tensor_numel(t), n)) return 0;
    double *got = malloc((size_t)(n + 1) * sizeof *got);
    int bad = 0;
    if (CHECK_OK(dr_tensor_to_f64(t, got, n)))
        for (int64_t i = 0; i < n; i++) {
            bool ok = got[i] == want[i] || fabs(got[i] - want[i]) <= atol + rtol * fabs(want[i]);
            if (!ok && bad++ < 3)
                fprintf(stderr, "%s %s: element %lld got %.9g, expected %.9g\n", name, what,
                        (long long)i, got[i], want[i]);
        }
    free(got);
    return CHECK_EQ_INT(bad, 0);
}

static void run_case(const tcase *tc) {
    built bt;
    build(tc, &bt);
    bool half = tc->dtype != DR_F32;
    double tol = half ? (tc->dtype == DR_BF16 ? 2e-2 : 4e-3) : 2e-5;
    int64_t nq = bt.batch * tc->lq;
    double *out = malloc((size_t)(nq * tc->ev + 1) * sizeof(double));
    double *lse = malloc((size_t)(nq + 1) * sizeof(double));
    ref_forward(&bt.ref, out, lse);

    dr_tensor *o = NULL, *l = NULL, *o2 = NULL;
    if (CHECK_OK(dr_scaled_dot_product_attention_forward(bt.tq, bt.tk, bt.tv, bt.tm, tc->causal,
                                                        tc->scale, &o, &l))) {
        CHECK_EQ_INT(o->scalar_type, tc->dtype);
        CHECK_EQ_INT(l->scalar_type, DR_F32);
        CHECK_EQ_INT(o->ndim, tc->nb + 2);
        CHECK_EQ_INT(l->ndim, tc->nb + 1);
        compare("out", tc->name, o, out, nq * tc->ev, tol, tol);
        compare("logsumexp", tc->name, l, lse, nq, 1e-4, 1e-5);
        /* the plain forward gives the same bits */
        if (CHECK_OK(dr_scaled_dot_product_attention(bt.tq, bt.tk, bt.tv, bt.tm, tc->causal,
                                                     tc->scale, &o2)))
            CHECK(same_bits(o, o2));
    }

    /* backward against the reference, and with out/logsumexp recomputed */
    int32_t nb = tc->nb;
    int64_t so[5];
    memcpy(so, bt.full_b, sizeof bt.full_b);
    so[nb] = tc->lq, so[nb + 1] = tc->ev;
    double *go = fill(nq * tc->ev, 9);
    dr_tensor *tg = NULL, *g[3] = {NULL}, *g2[3] = {NULL};
    double *dq = malloc((size_t)(nq * tc->e + 1) * sizeof(double));
    double *dk = malloc((size_t)(bt.batch * tc->lk * tc->e + 1) * sizeof(double));
    double *dv = malloc((size_t)(bt.batch * tc->lk * tc->ev + 1) * sizeof(double));
    ref_backward(&bt.ref, go, dq, dk, dv);
    double *rq = reduce(dq, tc->qb, &bt, nb, tc->lq * tc->e);
    double *rk = reduce(dk, tc->kb, &bt, nb, tc->lk * tc->e);
    double *rv = reduce(dv, tc->vb, &bt, nb, tc->lk * tc->ev);
    if (o && CHECK_OK(dr_tensor_from_f64(go, so, nb + 2, tc->dtype, CPU, &tg)) &&
        CHECK_OK(dr_scaled_dot_product_attention_backward(tg, bt.tq, bt.tk, bt.tv, bt.tm,
                                                          tc->causal, tc->scale, o, l, &g[0],
                                                          &g[1], &g[2]))) {
        double gtol = half ? 4 * tol : 1e-4;
        compare("grad_q", tc->name, g[0], rq, prod(tc->qb, nb) * tc->lq * tc->e, gtol, gtol);
        compare("grad_k", tc->name, g[1], rk, prod(tc->kb, nb) * tc->lk * tc->e, gtol, gtol);
        compare("grad_v", tc->name, g[2], rv, prod(tc->vb, nb) * tc->lk * tc->ev, gtol, gtol);
        for (int i = 0; i < 3; i++) {
            const dr_tensor *in = i == 0 ? bt.tq : i == 1 ? bt.tk : bt.tv;
            CHECK_EQ_INT(g[i]->scalar_type, tc->dtype);
            CHECK(g[i]->ndim == in->ndim &&
                  memcmp(g[i]->sizes, in->sizes, (size_t)in->ndim * sizeof(int64_t)) == 0);
        }
        /* only grad_k wanted; out and logsumexp recomputed (f32: the same bits) */
        if (CHECK_OK(dr_scaled_dot_product_attention_backward(
                tg, bt.tq, bt.tk, bt.tv, bt.tm, tc->causal, tc->scale, NULL, NULL, NULL, &g2[1],
                NULL)) && !half)
            CHECK(same_bits(g[1], g2[1]));
    }
    for (int i = 0; i < 3; i++) dr_tensor_release(g[i]), dr_tensor_release(g2[i]);
    double *arrays[] = {out, lse, go, dq, dk, dv, rq, rk, rv};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) free(arrays[i]);
    dr_tensor_release(tg);
    dr_tensor_release(o);
    dr_tensor_release(o2);
    dr_tensor_release(l);
    unbuild(&bt);
}

static const tcase cases[] = {
    /* name          nb  qb          kb          vb          lq   lk   e    ev   mask */
    {"text E40", 2, {2, 3}, {2, 3}, {2, 3}, 77, 77, 40, 40, MASK_NONE, 0, {0}, 0, 0, 0, DR_F32, 0},
    {"tiles E64 bool", 2, {1, 2}, {1, 2}, {1, 2}, 130, 67, 64, 64, MASK_BOOL, 2, {130, 67}, 1, 0,
     0, DR_F32, 0},
    {"long keys E80 float", 2, {2, 1}, {2, 1}, {2, 1}, 65, 300, 80, 48, MASK_FLOAT, 4,
     {2, 1, 1, 300}, 0, 0, 0.3, DR_F32, 0},
    {"causal Lq>Lk E40", 1, {2}, {2}, {2}, 100, 70, 40, 40, MASK_NONE, 0, {0}, 0, 1, 0, DR_F32, 0},
    {"causal Lq<Lk E160", 1, {1}, {1}, {1}, 50, 140, 160, 160, MASK_NONE, 0, {0}, 0, 1, 0, DR_F32,
     0},
    {"causal square", 0, {0}, {0}, {0}, 129, 129, 16, 24, MASK_NONE, 0, {0}, 0, 1, NAN, DR_F32, 0},
    {"float mask empty row", 1, {3}, {3}, {3}, 9, 300, 8, 5, MASK_FLOAT, 2, {9, 300}, 1, 0, 0,
     DR_F32, 0},
    {"broadcast batch", 2, {2, 3}, {1, 3}, {2, 1}, 70, 33, 40, 40, MASK_BOOL, 1, {33}, 0, 0, 0,
     DR_F32, 0},
    {"strided", 2, {2, 3}, {2, 3}, {2, 3}, 70, 90, 40, 40, MASK_FLOAT, 4, {2, 1, 70, 90}, 1, 0, 0,
     DR_F32, LAY_STRIDED},
    {"float16", 2, {1, 2}, {1, 2}, {1, 2}, 70, 77, 40, 40, MASK_FLOAT, 2, {70, 77}, 0, 0, 0,
     DR_F16, LAY_STRIDED},
    {"bfloat16 causal", 1, {2}, {2}, {2}, 40, 20, 64, 64, MASK_NONE, 0, {0}, 0, 1, 0, DR_BF16, 0},
    {"no keys", 1, {2}, {2}, {2}, 5, 0, 8, 3, MASK_NONE, 0, {0}, 0, 0, 0, DR_F32, 0},
    {"no queries", 1, {2}, {2}, {2}, 0, 5, 8, 3, MASK_NONE, 0, {0}, 0, 1, 0, DR_F32, 0},
};

/* ---- finite differences --------------------------------------------------------- */

typedef struct gc_ctx {
    const dr_tensor *mask;
    int causal;
    double scale;
} gc_ctx;

static dr_status gc_fwd(dr_tensor **in, const void *ctx, dr_tensor **out) {
    const gc_ctx *c = ctx;
    return dr_scaled_dot_product_attention(in[0], in[1], in[2], c->mask, c->causal, c->scale, out);
}

static dr_status gc_bwd(const dr_tensor *g, dr_tensor **in, const void *ctx, dr_tensor **grads) {
    const gc_ctx *c = ctx;
    return dr_scaled_dot_product_attention_backward(g, in[0], in[1], in[2], c->mask, c->causal,
                                                    c->scale, NULL, NULL, &grads[0], &grads[1],
                                                    &grads[2]);
}

static dr_tensor *randn(const int64_t *s, int32_t nd, uint64_t seed) {
    dr_generator gen = {seed, 0};
    dr_tensor *t = NULL;
    CHECK_OK(dr_randn(s, nd, DR_F32, CPU, &gen, &t));
    return t;
}

static void test_gradcheck(void) {
    int64_t sq[3] = {2, 5, 3}, sk[3] = {2, 7, 3}, sv[3] = {2, 7, 4}, skb[3] = {1, 7, 3};
    int64_t sm[2] = {5, 7};
    double bmask[35], fmask[35];
    for (int i = 0; i < 35; i++) {
        bmask[i] = i / 7 == 1 ? 0 : (i % 3 != 0); /* row 2 attends nothing */
        fmask[i] = i % 4 == 0 ? -INFINITY : -0.25 * (i % 5);
    }
    dr_tensor *mb = NULL, *mf = NULL;
    CHECK_OK(dr_tensor_from_f64(bmask, sm, 2, DR_BOOL, CPU, &mb));
    CHECK_OK(dr_tensor_from_f64(fmask, sm, 2, DR_F32, CPU, &mf));
    struct { const char *name; const int64_t *kshape; gc_ctx ctx; } runs[] = {
        {"plain", sk, {NULL, 0, 0}},
        {"causal", sk, {NULL, 1, 0.7}},
        {"bool mask", sk, {mb, 0, 0}},
        {"float mask", sk, {mf, 0, 0}},
        {"broadcast key", skb, {NULL, 0, 0}},
    };
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        dr_tensor *in[3] = {randn(sq, 3, 11 + r), randn(runs[r].kshape, 3, 21 + r),
                            randn(sv, 3, 31 + r)};
        if (in[0] && in[1] && in[2])
            gradcheck(runs[r].name, gc_fwd, gc_bwd, &runs[r].ctx, in, 3, 1e-2, 3e-3, 3e-3);
        for (int i = 0; i < 3; i++) dr_tensor_release(in[i]);
    }
    dr_tensor_release(mb);
    dr_tensor_release(mf);
}

/* ---- the tape -------------------------------------------------------------------- */

/* backward(sum(sdpa(q, k, v) * r)) equals the explicit backward with grad_out r. */
static void tape_case(int32_t dtype, const dr_tensor *mask, int causal, const char *name) {
    int64_t sq[4] = {2, 2, 9, 8}, sk[4] = {2, 2, 11, 8};
    dr_tensor *f[4] = {randn(sq, 4, 1), randn(sk, 4, 2), randn(sk, 4, 3), randn(sq, 4, 4)};
    dr_tensor *in[3] = {NULL}, *out = NULL, *prodt = NULL, *loss = NULL, *want[3] = {NULL};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(dr_tensor_to_dtype(f[i], dtype, &in[i]));
        CHECK_OK(dr_tensor_set_requires_grad(in[i], 1));
    }
    if (CHECK_OK(dr_scaled_dot_product_attention(in[0], in[1], in[2], mask, causal, 0, &out)) &&
        CHECK(dr_tensor_grad_fn_name(out) &&
              strcmp(dr_tensor_grad_fn_name(out), "scaled_dot_product_attention") == 0) &&
        CHECK_OK(dr_mul(out, f[3], &prodt)) && CHECK_OK(dr_sum(prodt, NULL, 0, 0, &loss)) &&
        CHECK_OK(dr_backward(loss, NULL, 0))) {
        dr_set_grad_enabled(0);
        dr_tensor *g = NULL;
        CHECK_OK(dr_tensor_to_dtype(f[3], dtype, &g));
        CHECK_OK(dr_scaled_dot_product_attention_backward(g, in[0], in[1], in[2], mask, causal, 0,
                                                          NULL, NULL, &want[0], &want[1],
                                                          &want[2]));
        dr_set_grad_enabled(1);
        for (int i = 0; i < 3; i++) {
            dr_tensor *got = NULL;
            int64_t n = dr_tensor_numel(in[i]);
            double *w = malloc((size_t)n * sizeof(double));
            if (CHECK_OK(dr_tensor_get_grad(in[i], &got)) && CHECK(got != NULL) &&
                CHECK_OK(dr_tensor_to_f64(want[i], w, n)))
                compare("tape grad", name, got, w, n, dtype == DR_F32 ? 1e-6 : 1e-2, 1e-5);
            free(w);
            dr_tensor_release(got);
        }
        dr_tensor_release(g);
    }
    for (int i = 0; i < 4; i++) dr_tensor_release(f[i]);
    for (int i = 0; i < 3; i++) dr_tensor_release(in[i]), dr_tensor_release(want[i]);
    dr_tensor_release(out);
    dr_tensor_release(prodt);
    dr_tensor_release(loss);
}

static void test_tape(void) {
    int64_t sm[2] = {9, 11};
    double m[99];
    for (int i = 0; i < 99; i++) m[i] = i % 5 != 0;
    dr_tensor *mask = NULL;
    CHECK_OK(dr_tensor_from_f64(m, sm, 2, DR_BOOL, CPU, &mask));
    tape_case(DR_F32, NULL, 0, "f32 (logsumexp packed with out)");
    tape_case(DR_F32, NULL, 1, "f32 causal");
    tape_case(DR_F32, mask, 0, "f32 mask (recomputed)");
    tape_case(DR_F16, NULL, 0, "f16 (recomputed)");

    /* modifying the saved output in place is caught */
    int64_t s[3] = {1, 4, 8};
    dr_tensor *q = randn(s, 3, 5), *out = NULL, *loss = NULL;
    dr_tensor_set_requires_grad(q, 1);
    if (CHECK_OK(dr_scaled_dot_product_attention(q, q, q, NULL, 0, 0, &out)) &&
        CHECK_OK(dr_sum(out, NULL, 0, 0, &loss))) {
        dr_set_grad_enabled(0);
        CHECK_OK(dr_tensor_fill_(out, 1));
        dr_set_grad_enabled(1);
        CHECK_FAILS(dr_backward(loss, NULL, 0), DR_ERR_ARG, "modified in place");
    }
    /* the mask gets no gradient */
    dr_tensor *fm = NULL, *o2 = NULL;
    int64_t s2[2] = {4, 4};
    fm = randn(s2, 2, 6);
    dr_tensor_set_requires_grad(fm, 1);
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, q, fm, 0, 0, &o2), DR_ERR_UNSUPPORTED,
                "attn_mask [4, 4] requires grad");
    dr_tensor_release(fm);
    dr_tensor_release(q);
    dr_tensor_release(out);
    dr_tensor_release(loss);
    dr_tensor_release(mask);
}

/* ---- threads, memory ------------------------------------------------------------ */

/* Bitwise equal results on 1 and 2 threads. With 3 heads the backward sweeps
 * each head on one thread when alone and runs two passes on two threads: the
 * two schedules must agree to the bit as well. */
static void threads_case(int64_t heads, const dr_tensor *mask, int causal, const char *name) {
    int64_t sq[3] = {heads, 150, 64}, sk[3] = {heads, 200, 64};
    dr_tensor *q = randn(sq, 3, 1), *k = randn(sk, 3, 2), *v = randn(sk, 3, 3);
    dr_tensor *g = randn(sq, 3, 4), *res[2][4] = {{NULL}};
    int saved = dr_get_num_threads();
    for (int t = 0; t < 2; t++) {
        dr_set_num_threads(t + 1);
        CHECK_OK(dr_scaled_dot_product_attention(q, k, v, mask, causal, 0, &res[t][0]));
        CHECK_OK(dr_scaled_dot_product_attention_backward(g, q, k, v, mask, causal, 0, NULL, NULL,
                                                          &res[t][1], &res[t][2], &res[t][3]));
    }
    dr_set_num_threads(saved);
    for (int r = 0; r < 4; r++)
        if (CHECK(res[0][r] && res[1][r]) &&
            !CHECK(same_bits(res[0][r], res[1][r])))
            fprintf(stderr, "%s: output %d differs between 1 and 2 threads\n", name, r);
    for (int t = 0; t < 2; t++)
        for (int r = 0; r < 4; r++) dr_tensor_release(res[t][r]);
    dr_tensor *rel[] = {q, k, v, g};
    for (int i = 0; i < 4; i++) dr_tensor_release(rel[i]);
}

static void test_threads(void) {
    int64_t sm[2] = {150, 200};
    dr_tensor *m = randn(sm, 2, 5);
    threads_case(6, m, 0, "6 heads, float mask");
    threads_case(3, NULL, 1, "3 heads, causal");
    threads_case(3, m, 0, "3 heads, float mask");
    dr_tensor_release(m);
}

/* Peak resident memory in kB since the last reset, or -1 if Linux won't say. */
static long peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kb;
}

static bool reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return false;
    bool ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

/* A 4096 x 4096 single head (E = 64), forward and backward: the score matrix
 * alone would be 64 MiB; the kernels hold a few tiles per thread. Runs first, on
 * a fresh heap, so freed memory that malloc could reuse does not hide growth (a
 * forked child cannot run OpenMP once the parent has). */
static void big_attention(void) {
    int64_t s[3] = {1, 4096, 64}, ws[3] = {1, 256, 64};
    dr_tensor *q = randn(s, 3, 1), *k = randn(s, 3, 2), *v = randn(s, 3, 3), *g = randn(s, 3, 4);
    dr_tensor *w = randn(ws, 3, 5), *warm = NULL, *out = NULL, *lse = NULL, *gr[3] = {NULL};
    /* start the thread pool before measuring */
    CHECK_OK(dr_scaled_dot_product_attention(w, w, w, NULL, 0, 0, &warm));
    bool can = reset_peak_rss();
    long before = peak_rss_kb();
    if (!CHECK_OK(dr_scaled_dot_product_attention_forward(q, k, v, NULL, 0, 0, &out, &lse)))
        goto done;
    long fwd = peak_rss_kb() - before;
    if (!CHECK_OK(dr_scaled_dot_product_attention_backward(g, q, k, v, NULL, 0, 0, out, lse,
                                                           &gr[0], &gr[1], &gr[2])))
        goto done;
    long total = peak_rss_kb() - before;
    if (can && before > 0) {
        /* out is 1 MiB, the gradients 3 MiB, the backward's packed k and v 2 MiB;
         * the rest covers tiles and allocator slack, far below the 64 MiB of one
         * score matrix */
        if (!CHECK(fwd < 8 * 1024 && total < 12 * 1024))
            fprintf(stderr, "peak RSS grew by %ld kB (forward), %ld kB (both)\n", fwd, total);
    } else {
        fprintf(stderr, "note: /proc/self/clear_refs unavailable; peak memory not measured\n");
    }
    /* spot check the last query row against a reference in double */
    double o[64] = {0}, mx = -INFINITY, sum = 0;
    const float *qd = dr_tensor_data(q), *kd = dr_tensor_data(k), *vd = dr_tensor_data(v);
    double *sc = malloc(4096 * sizeof(double));
    for (int j = 0; j < 4096; j++) {
        double d = 0;
        for (int x = 0; x < 64; x++) d += (double)qd[4095 * 64 + x] * kd[j * 64 + x];
        sc[j] = d / 8;
        if (sc[j] > mx) mx = sc[j];
    }
    for (int j = 0; j < 4096; j++) {
        double p = exp(sc[j] - mx);
        sum += p;
        for (int y = 0; y < 64; y++) o[y] += p * vd[j * 64 + y];
    }
    const float *od = dr_tensor_data(out);
    for (int y = 0; y < 64; y += 9) CHECK_NEAR(od[4095 * 64 + y], o[y] / sum, 1e-5);
    free(sc);
done:;
    dr_tensor *rel[] = {q, k, v, g, w, warm, out, lse, gr[0], gr[1], gr[2]};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) dr_tensor_release(rel[i]);
}

/* Rows with stride 0 (a query expanded along its sequence) read like copies. */
static void test_expanded_rows(void) {
    int64_t s1[3] = {2, 1, 8}, se[3] = {2, 5, 8}, sk[3] = {2, 7, 8};
    dr_tensor *q1 = randn(s1, 3, 1), *k = randn(sk, 3, 2), *v = randn(sk, 3, 3);
    dr_tensor *qe = NULL, *qc = NULL, *oe = NULL, *oc = NULL;
    if (CHECK_OK(dr_tensor_expand(q1, se, 3, &qe)) && CHECK_OK(dr_tensor_contiguous(qe, &qc)) &&
        CHECK_OK(dr_scaled_dot_product_attention(qe, k, v, NULL, 1, 0, &oe)) &&
        CHECK_OK(dr_scaled_dot_product_attention(qc, k, v, NULL, 1, 0, &oc)))
        CHECK(same_bits(oe, oc));
    dr_tensor *rel[] = {q1, k, v, qe, qc, oe, oc};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) dr_tensor_release(rel[i]);
}

/* ---- errors ---------------------------------------------------------------------- */

static void test_errors(void) {
    int64_t s3[3] = {2, 4, 8}, s3e[3] = {2, 4, 6}, s3l[3] = {2, 5, 8}, s3b[3] = {3, 4, 8};
    int64_t s1[1] = {8}, sm[2] = {4, 5}, s3v[3] = {2, 4, 5};
    dr_tensor *q = randn(s3, 3, 1), *ke = randn(s3e, 3, 2), *vl = randn(s3l, 3, 3);
    dr_tensor *qb = randn(s3b, 3, 4), *v1 = randn(s1, 1, 5), *mbad = randn(sm, 2, 6);
    dr_tensor *qh = NULL, *mi = NULL, *out = NULL, *gbad = randn(s3v, 3, 7), *g = NULL;
    CHECK_OK(dr_tensor_to_dtype(q, DR_F16, &qh));
    CHECK_OK(dr_tensor_to_dtype(mbad, DR_I64, &mi));
    const char *op = "scaled_dot_product_attention";
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, q, NULL, 0, 0, NULL), DR_ERR_ARG, op);
    CHECK_FAILS(dr_scaled_dot_product_attention(NULL, q, q, NULL, 0, 0, &out), DR_ERR_ARG, op);
    CHECK_FAILS(dr_scaled_dot_product_attention(q, ke, q, NULL, 0, 0, &out), DR_ERR_SHAPE,
                "query [2, 4, 8] and key [2, 4, 6] must have the same embedding size");
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, vl, NULL, 0, 0, &out), DR_ERR_SHAPE,
                "key [2, 4, 8] and value [2, 5, 8] must have the same sequence length");
    CHECK_FAILS(dr_scaled_dot_product_attention(qb, q, q, NULL, 0, 0, &out), DR_ERR_SHAPE,
                "batch dims of query [3, 4, 8], key [2, 4, 8] and value [2, 4, 8]");
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, v1, NULL, 0, 0, &out), DR_ERR_SHAPE,
                "value must have at least 2 dims");
    CHECK_FAILS(dr_scaled_dot_product_attention(qh, q, q, NULL, 0, 0, &out), DR_ERR_DTYPE,
                "same dtype, got float16, float32 and float32");
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, q, mbad, 0, 0, &out), DR_ERR_SHAPE,
                "attn_mask [4, 5] cannot be broadcast to the scores' shape [2, 4, 4]");
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, q, mi, 0, 0, &out), DR_ERR_DTYPE,
                "attn_mask [4, 5] has dtype int64");
    CHECK_FAILS(dr_scaled_dot_product_attention(mi, mi, mi, NULL, 0, 0, &out), DR_ERR_DTYPE,
                "query [4, 5] has dtype int64");
    dr_tensor *m44 = NULL;
    int64_t s44[2] = {4, 4};
    CHECK_OK(dr_tensor_full(s44, 2, DR_BOOL, CPU, 1, &m44));
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, q, m44, 1, 0, &out), DR_ERR_ARG,
                "attn_mask and is_causal cannot both be given");
    CHECK_FAILS(dr_scaled_dot_product_attention(q, q, q, NULL, 0, INFINITY, &out), DR_ERR_ARG,
                "scale must be finite");
    CHECK(out == NULL);
    const char *opb = "scaled_dot_product_attention_backward";
    CHECK_FAILS(dr_scaled_dot_product_attention_backward(gbad, q, q, q, NULL, 0, 0, NULL, NULL,
                                                         &g, NULL, NULL),
                DR_ERR_SHAPE, "grad_out has shape [2, 4, 5], expected [2, 4, 8]");
    CHECK_FAILS(dr_scaled_dot_product_attention_backward(q, q, q, q, NULL, 0, 0, q, NULL, &g,
                                                         NULL, NULL),
                DR_ERR_ARG, "pass both out and logsumexp");
    CHECK_FAILS(dr_scaled_dot_product_attention_backward(q, q, q, q, NULL, 0, 0, q, q, &g, NULL,
                                                         NULL),
                DR_ERR_SHAPE, "logsumexp has shape [2, 4, 8], expected [2, 4]");
    CHECK_FAILS(dr_scaled_dot_product_attention_backward(q, q, ke, q, NULL, 0, 0, NULL, NULL, &g,
                                                         NULL, NULL),
                DR_ERR_SHAPE, opb);
    CHECK(g == NULL);
    /* NaN stays NaN; it is not mistaken for a masked row */
    dr_tensor *qn = NULL;
    double nanv[32];
    for (int i = 0; i < 32; i++) nanv[i] = i < 8 ? NAN : 0.5;
    int64_t sn[2] = {4, 8};
    if (CHECK_OK(dr_tensor_from_f64(nanv, sn, 2, DR_F32, CPU, &qn)) &&
        CHECK_OK(dr_scaled_dot_product_attention(qn, qn, qn, NULL, 0, 0, &out))) {
        float *o = dr_tensor_data(out);
        CHECK(isnan(o[0]) && isnan(o[31]));
    }
    dr_tensor *rel[] = {q, ke, vl, qb, v1, mbad, qh, mi, out, gbad, m44, qn};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) dr_tensor_release(rel[i]);
}

int main(void) {
    big_attention();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
    test_gradcheck();
    test_tape();
    test_threads();
    test_expanded_rows();
    test_errors();
    return check_summary("test_attention");
}
