/* core/comm: collectives on odd sizes and every dtype, as one process (the world
 * is a single rank) and under `mpiexec -n 2` (ctest c_test_comm_mpi2): sums, means
 * and maxima of rank-dependent values, float16/bfloat16 reduced in float32, strided
 * tensors, gathers in rank order, broadcasts from the last rank, host doubles, and
 * the errors: bad ops and dtypes, a root out of range, ranks making different calls. */
#include <stdlib.h>

#include "check.h"
#include "comm/comm_internal.h"
#include "util/half.h"

static const dr_device CPU = {DR_CPU, 0};
static int R, N; /* this rank, ranks */

/* A [n] tensor of `dtype` holding f(rank, i). */
static dr_tensor *filled(int32_t dtype, int64_t n, double (*f)(int, int64_t), int rank) {
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) v[i] = f(rank, i);
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, &n, 1, dtype, CPU, &t));
    free(v);
    return t;
}

static double value(int rank, int64_t i) { return (double)((rank + 1) * ((i % 13) + 1)) * 0.5; }
static double int_value(int rank, int64_t i) { return (double)((rank + 1) * 1000003LL + i); }

static double get(const dr_tensor *t, int64_t i) {
    double x = 0;
    dr_tensor_get(t, &i, &x);
    return x;
}

static void test_all_reduce(dr_comm *c) {
    static const int32_t dtypes[] = {DR_F32, DR_F16, DR_BF16, DR_I64, DR_I32};
    static const int64_t lengths[] = {1, 7, 1001};
    double tri = N * (N + 1) / 2.0; /* sum over ranks of (rank + 1) */
    for (size_t d = 0; d < 5; d++) {
        int32_t dt = dtypes[d];
        int integer = dt == DR_I64 || dt == DR_I32;
        for (size_t l = 0; l < 3; l++) {
            int64_t n = lengths[l];
            for (int op = 0; op < 3; op++) {
                if (integer && op == DR_REDUCE_MEAN) continue;
                dr_tensor *t = filled(dt, n, integer ? int_value : value, R);
                if (!t || !CHECK_OK(dr_comm_all_reduce(c, t, op))) {
                    dr_tensor_release(t);
                    continue;
                }
                int bad = 0;
                for (int64_t i = 0; i < n && !bad; i++) {
                    double want;
                    if (integer) {
                        double base = (double)i;
                        want = op == DR_REDUCE_SUM ? 1000003.0 * tri + N * base : int_value(N - 1, i);
                    } else {
                        double unit = value(0, i);
                        want = op == DR_REDUCE_SUM ? unit * tri : op == DR_REDUCE_MEAN ? unit * tri / N
                                                                                   : value(N - 1, i);
                    }
                    /* half types round the f32 result once: relative 2^-8 (bf16), 2^-11 (f16) */
                    double tol = dt == DR_BF16 ? fabs(want) / 128 : dt == DR_F16 ? fabs(want) / 1024 : 0;
                    if (!CHECK_NEAR(get(t, i), want, tol)) {
                        fprintf(stderr, "    %s n=%lld op=%d at %lld\n", dr_dtype_name(dt), (long long)n, op,
                                (long long)i);
                        bad = 1;
                    }
                }
                dr_tensor_release(t);
            }
        }
    }
}

static void test_strided(dr_comm *c) {
    /* the transpose of a [3, 5]: the result lands back in the view's layout */
    int64_t sizes[2] = {3, 5};
    dr_tensor *a = NULL, *v = NULL;
    CHECK_OK(dr_tensor_full(sizes, 2, DR_F32, CPU, (double)(R + 1), &a));
    CHECK_OK(dr_tensor_transpose(a, 0, 1, &v));
    CHECK(!dr_tensor_is_contiguous(v));
    CHECK_OK(dr_comm_all_reduce(c, v, DR_REDUCE_SUM));
    int64_t at[2] = {2, 4};
    double x = 0;
    dr_tensor_get(a, at, &x);
    CHECK_NEAR(x, N * (N + 1) / 2.0, 0);
    dr_tensor_release(v);
    dr_tensor_release(a);
}

static void test_all_gather(dr_comm *c) {
    static const int32_t dtypes[] = {DR_F32, DR_F16, DR_BF16, DR_I64, DR_I32, DR_U8};
    for (size_t d = 0; d < 6; d++) {
        int64_t sizes[2] = {3, 5};
        dr_tensor *t = NULL, *g = NULL;
        CHECK_OK(dr_tensor_full(sizes, 2, dtypes[d], CPU, (double)(R + 2), &t));
        if (!CHECK_OK(dr_comm_all_gather(c, t, &g))) {
            dr_tensor_release(t);
            continue;
        }
        CHECK_EQ_INT(g->ndim, 2);
        CHECK_EQ_INT(g->sizes[0], 3 * N);
        CHECK_EQ_INT(g->sizes[1], 5);
        for (int r = 0; r < N; r++) {
            int64_t at[2] = {3 * r + 2, 4};
            double x = 0;
            dr_tensor_get(g, at, &x);
            CHECK_NEAR(x, r + 2, 0);
        }
        dr_tensor_release(g);
        dr_tensor_release(t);
    }
    /* a 0-d tensor gathers to [size]; an empty one to an empty one */
    dr_tensor *s = NULL, *g = NULL;
    CHECK_OK(dr_tensor_full(NULL, 0, DR_F32, CPU, (double)R, &s));
    if (CHECK_OK(dr_comm_all_gather(c, s, &g))) {
        CHECK_EQ_INT(g->ndim, 1);
        CHECK_EQ_INT(g->sizes[0], N);
        CHECK_NEAR(get(g, N - 1), N - 1, 0);
        dr_tensor_release(g);
    }
    dr_tensor_release(s);
    int64_t zero = 0;
    CHECK_OK(dr_tensor_empty(&zero, 1, DR_F32, CPU, &s));
    if (CHECK_OK(dr_comm_all_gather(c, s, &g))) {
        CHECK_EQ_INT(dr_tensor_numel(g), 0);
        dr_tensor_release(g);
    }
    dr_tensor_release(s);
}

static void test_broadcast(dr_comm *c) {
    dr_tensor *t = filled(DR_F32, 11, value, R);
    CHECK_OK(dr_comm_broadcast(c, t, N - 1));
    for (int64_t i = 0; i < 11; i++) CHECK_NEAR(get(t, i), value(N - 1, i), 0);
    dr_tensor_release(t);
    char text[32] = "";
    int64_t n = sizeof text;
    if (R == 0) {
        snprintf(text, sizeof text, "runs/from-rank-0");
        n = (int64_t)strlen(text) + 1;
    }
    CHECK_OK(dr_comm_broadcast_bytes(c, text, &n, 0));
    CHECK_EQ_INT(n, (long long)strlen("runs/from-rank-0") + 1);
    CHECK(strcmp(text, "runs/from-rank-0") == 0);
    CHECK_OK(dr_comm_barrier(c));
}

static void test_host_doubles(dr_comm *c) {
    double x[3] = {R + 0.25, -1.0 * R, 1e300}, all[3 * 64];
    CHECK_OK(dr_comm_all_gather_f64(c, x, 3, all));
    for (int r = 0; r < N && r < 64; r++) {
        CHECK_NEAR(all[3 * r], r + 0.25, 0);
        CHECK_NEAR(all[3 * r + 1], -1.0 * r, 0);
    }
    CHECK_OK(dr_comm_all_reduce_f64(c, x, 2, DR_REDUCE_MEAN));
    CHECK_NEAR(x[0], (N - 1) / 2.0 + 0.25, 1e-15);
    double m[1] = {(double)R};
    CHECK_OK(dr_comm_all_reduce_f64(c, m, 1, DR_REDUCE_MAX));
    CHECK_NEAR(m[0], N - 1, 0);
}

static void test_errors(dr_comm *c) {
    dr_tensor *t = filled(DR_I64, 4, int_value, R), *u = NULL, *g = NULL;
    CHECK_FAILS(dr_comm_all_reduce(c, t, DR_REDUCE_MEAN), DR_ERR_DTYPE, "mean needs a floating");
    CHECK_FAILS(dr_comm_all_reduce(c, t, 7), DR_ERR_ARG, "unknown reduce op 7");
    CHECK_FAILS(dr_comm_broadcast(c, t, N), DR_ERR_ARG, "is not a rank");
    CHECK_FAILS(dr_comm_all_reduce(NULL, t, 0), DR_ERR_ARG, "communicator is NULL");
    CHECK_FAILS(dr_comm_all_gather(c, t, NULL), DR_ERR_ARG, "out");
    int64_t four = 4;
    CHECK_OK(dr_tensor_empty(&four, 1, DR_U8, CPU, &u));
    CHECK_FAILS(dr_comm_all_reduce(c, u, DR_REDUCE_SUM), DR_ERR_DTYPE, "cannot be reduced");
    CHECK_FAILS(dr_comm_set_timeout(c, 0), DR_ERR_ARG, "timeout");
    CHECK_FAILS(dr_comm_enable_nccl(NULL, 0), DR_ERR_ARG, "NULL");
    /* the argument checks above made no collective call: the ranks are still in step */
    CHECK_OK(dr_comm_all_gather(c, t, &g));
    dr_tensor_release(g);
    dr_tensor_release(u);
    dr_tensor_release(t);
}

/* Ranks calling different things fail together, each naming both calls. */
static void test_mismatch(dr_comm *c) {
    if (N < 2) return;
    dr_tensor *t = filled(DR_F32, R == 0 ? 3 : 4, value, R);
    CHECK_FAILS(dr_comm_all_reduce(c, t, DR_REDUCE_SUM), DR_ERR_COMM, "ranks disagree");
    CHECK(strstr(dr_last_error(), "float32 [3]") && strstr(dr_last_error(), "float32 [4]"));
    CHECK_FAILS(dr_comm_barrier(c), DR_ERR_COMM, "broken");
    /* the exchange completed, so the world is usable again once the test says so */
    c->broken = c->failed = 0;
    if (R == 0) {
        CHECK_FAILS(dr_comm_barrier(c), DR_ERR_COMM, "rank 0 called barrier");
    } else {
        CHECK_FAILS(dr_comm_all_reduce(c, t, DR_REDUCE_SUM), DR_ERR_COMM, "ranks disagree");
    }
    c->broken = c->failed = 0;
    dr_tensor_release(t);
    CHECK_OK(dr_comm_barrier(c));
}

int main(void) {
    dr_comm *c = NULL, *again = NULL;
    if (!CHECK_OK(dr_comm_world(120, &c))) return check_summary("test_comm");
    CHECK_OK(dr_comm_world(0, &again));
    CHECK(again == c);
    CHECK_NEAR(dr_comm_timeout(c), 120, 0);
    R = dr_comm_rank(c);
    N = dr_comm_size(c);
    CHECK(N >= 1 && R >= 0 && R < N);
    CHECK(dr_comm_local_rank(c) < dr_comm_local_size(c));
    CHECK(strcmp(dr_comm_backend(c), N > 1 ? "mpi" : "single") == 0 || N == 1);
    test_all_reduce(c);
    test_strided(c);
    test_all_gather(c);
    test_broadcast(c);
    test_host_doubles(c);
    test_errors(c);
    test_mismatch(c);
    char name[32];
    snprintf(name, sizeof name, "test_comm (rank %d of %d)", R, N);
    return check_summary(name);
}
