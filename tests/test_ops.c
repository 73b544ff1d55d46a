/* Ops against naive references computed in double: add/sub/mul/div (broadcasting,
 * strided inputs, every dtype, torch's promotion, integer wraparound, bool),
 * matmul (every torch.matmul rank combination, batch broadcasting, transposed,
 * packed and expanded operands, k = 0, half dtypes) and sum (dims, keepdim,
 * integer accumulation, non-contiguous inputs, thread-count independence). */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

#define LEN(a) ((int32_t)(sizeof(a) / sizeof((a)[0])))

static const dr_device CPU = {DR_CPU, 0};

/* ---- operands ----------------------------------------------------------------- */

/* How a test operand is laid out in memory; its values do not depend on it. */
typedef enum layout {
    L_CONTIG,     /* fresh contiguous tensor */
    L_TRANSPOSED, /* the last two dims swapped in memory (a transpose view) */
    L_STRIDED,    /* every other element of a wider tensor: no dim has stride 1 */
    L_EXPANDED,   /* dim 0 expanded from size 1 (stride 0) */
} layout;

static int64_t count(const int64_t *sizes, int32_t ndim) {
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) n *= sizes[i];
    return n;
}

/* Deterministic test values that every dtype represents exactly; `nonzero` for
 * divisors. Floats are multiples of 0.25 in [-5, 5]. */
static double test_value(int64_t i, int32_t dtype, int salt, int nonzero) {
    uint64_t h = (uint64_t)(i + 1) * 2654435761u + (uint64_t)salt * 40503u;
    h ^= h >> 13;
    double v;
    switch (dtype) {
    case DR_BOOL: v = (double)(h % 3 == 0); break;
    case DR_U8: v = (double)(h % 256); break;
    case DR_I32: case DR_I64: v = (double)(int64_t)(h % 201) - 100; break;
    default: v = ((double)(h % 41) - 20) / 4; break;
    }
    return nonzero && v == 0 ? 1 : v;
}

static dr_tensor *filled(const int64_t *sizes, int32_t ndim, int32_t dtype, int salt, int nonzero) {
    int64_t n = count(sizes, ndim);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = test_value(i, dtype, salt, nonzero);
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, sizes, ndim, dtype, CPU, &t));
    free(v);
    return t;
}

/* A tensor of `sizes` with the given memory layout (NULL, reported, on failure). */
static dr_tensor *operand(const int64_t *sizes, int32_t ndim, int32_t dtype, layout lay, int salt,
                          int nonzero) {
    int64_t s[DR_MAX_DIMS + 1];
    if (ndim < (lay == L_TRANSPOSED ? 2 : lay == L_CONTIG ? 0 : 1)) {
        CHECK(!"the layout needs more dims: fix the test table");
        return NULL;
    }
    memcpy(s, sizes, (size_t)ndim * sizeof *s);
    dr_tensor *base = NULL, *mid = NULL, *out = NULL;
    dr_status st = DR_OK;
    switch (lay) {
    case L_CONTIG:
        return filled(sizes, ndim, dtype, salt, nonzero);
    case L_TRANSPOSED:
        s[ndim - 2] = sizes[ndim - 1];
        s[ndim - 1] = sizes[ndim - 2];
        base = filled(s, ndim, dtype, salt, nonzero);
        st = base ? dr_tensor_transpose(base, -1, -2, &out) : DR_ERR_INTERNAL;
        break;
    case L_STRIDED: /* [..., 2n] viewed as [..., n, 2], then lane 1 of the last dim */
        s[ndim - 1] = 2 * sizes[ndim - 1];
        base = filled(s, ndim, dtype, salt, nonzero);
        s[ndim - 1] = sizes[ndim - 1];
        s[ndim] = 2;
        st = base ? dr_tensor_view(base, s, ndim + 1, &mid) : DR_ERR_INTERNAL;
        if (st == DR_OK) st = dr_tensor_select(mid, -1, 1, &out);
        break;
    case L_EXPANDED:
        s[0] = 1;
        base = filled(s, ndim, dtype, salt, nonzero);
        st = base ? dr_tensor_expand(base, sizes, ndim, &out) : DR_ERR_INTERNAL;
        break;
    }
    CHECK_OK(st);
    dr_tensor_release(base);
    dr_tensor_release(mid);
    return out;
}

/* Row-major values of t as doubles (caller frees), or NULL (reported). */
static double *dense(const dr_tensor *t) {
    int64_t n = dr_tensor_numel(t);
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (!CHECK_OK(dr_tensor_to_f64(t, v, n))) {
        free(v);
        return NULL;
    }
    return v;
}

static int check_sizes(const dr_tensor *t, const int64_t *sizes, int32_t ndim) {
    if (!CHECK_EQ_INT(t->ndim, ndim)) return 0;
    int ok = 1;
    for (int32_t i = 0; i < ndim; i++) ok &= CHECK_EQ_INT(t->sizes[i], sizes[i]);
    return ok;
}

/* Relative tolerance of a result rounded once to `dtype`. */
static double rounding_tol(int32_t dtype) {
    switch (dtype) {
    case DR_F32: return 0x1p-22;
    case DR_F16: return 0x1p-10;
    case DR_BF16: return 0x1p-7;
    default: return 0;
    }
}

/* Compares got[i] with want[i] within tol[i] (exact where tol is NULL). */
static int compare(const double *got, const double *want, const double *tol, int64_t n,
                   const char *what) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double t = tol ? tol[i] : 0;
        int ok = got[i] == want[i] || fabs(got[i] - want[i]) <= t ||
                 (isnan(got[i]) && isnan(want[i]));
        if (!ok && bad++ < 3)
            fprintf(stderr, "  %s: element %lld is %.9g, expected %.9g (tol %g)\n", what,
                    (long long)i, got[i], want[i], t);
    }
    return CHECK_EQ_INT(bad, 0);
}

static void release_all(dr_tensor **ts, int n) {
    for (int i = 0; i < n; i++) dr_tensor_release(ts[i]);
}

/* ---- add / sub / mul / div --------------------------------------------------------- */

typedef enum bop { ADD, SUB, MUL, DIV } bop;
static const char *const bop_names[] = {"add", "sub", "mul", "div"};

static dr_status run_binary(bop op, const dr_tensor *a, const dr_tensor *b, double alpha,
                            dr_tensor **out) {
    switch (op) {
    case ADD: return dr_add(a, b, alpha, out);
    case SUB: return dr_sub(a, b, alpha, out);
    case MUL: return dr_mul(a, b, out);
    default: return dr_div(a, b, out);
    }
}

/* Integer results wrap to the width of `dtype`, as torch's do. */
static double wrap_int(uint64_t v, int32_t dtype) {
    switch (dtype) {
    case DR_I32: return (double)(int32_t)(uint32_t)v;
    case DR_U8: return (double)(uint8_t)v;
    case DR_BOOL: return v != 0;
    default: return (double)(int64_t)v;
    }
}

static double ref_binary(bop op, int32_t dtype, double x, double y, double alpha) {
    if (dtype == DR_F32 || dtype == DR_F16 || dtype == DR_BF16) {
        switch (op) {
        case ADD: return x + alpha * y;
        case SUB: return x - alpha * y;
        case MUL: return x * y;
        default: return x / y;
        }
    }
    uint64_t ux = (uint64_t)(int64_t)x, uy = (uint64_t)(int64_t)y;
    uint64_t ua = (uint64_t)(int64_t)alpha;
    switch (op) {
    case ADD: return wrap_int(ux + ua * uy, dtype);
    case SUB: return wrap_int(ux - ua * uy, dtype);
    default: return wrap_int(ux * uy, dtype);
    }
}

/* Flat index into a dense tensor of `sizes` (right-aligned, size-1 dims
 * broadcast) of the element at flat index k of the broadcast shape. */
static int64_t broadcast_index(int64_t k, const int64_t *out_sizes, int32_t out_ndim,
                               const int64_t *sizes, int32_t ndim) {
    int64_t idx = 0, stride = 1;
    for (int32_t d = out_ndim - 1; d >= 0; d--) {
        int64_t i = k % out_sizes[d];
        k /= out_sizes[d];
        int32_t td = d - (out_ndim - ndim);
        if (td < 0) continue;
        if (sizes[td] != 1) idx += i * stride;
        stride *= sizes[td];
    }
    return idx;
}

typedef struct binary_case {
    bop op;
    int32_t adt; int32_t andim; int64_t as[4]; layout al;
    int32_t bdt; int32_t bndim; int64_t bs[4]; layout bl;
    double alpha;
    int32_t want_dtype; int32_t want_ndim; int64_t want[4];
} binary_case;

static const binary_case binary_cases[] = {
    /* broadcasting on odd shapes */
    {ADD, DR_F32, 3, {3, 1, 5}, L_CONTIG, DR_F32, 2, {4, 1}, L_CONTIG, 1, DR_F32, 3, {3, 4, 5}},
    {SUB, DR_F32, 3, {3, 1, 5}, L_CONTIG, DR_F32, 2, {4, 1}, L_CONTIG, 2.5, DR_F32, 3, {3, 4, 5}},
    {MUL, DR_F32, 2, {4, 1}, L_CONTIG, DR_F32, 3, {3, 1, 5}, L_CONTIG, 1, DR_F32, 3, {3, 4, 5}},
    {DIV, DR_F32, 1, {1}, L_CONTIG, DR_F32, 3, {2, 1, 3}, L_CONTIG, 1, DR_F32, 3, {2, 1, 3}},
    {ADD, DR_F32, 0, {0}, L_CONTIG, DR_F32, 1, {3}, L_CONTIG, -1, DR_F32, 1, {3}},
    {ADD, DR_F32, 2, {0, 3}, L_CONTIG, DR_F32, 1, {3}, L_CONTIG, 1, DR_F32, 2, {0, 3}},
    /* strided and transposed inputs */
    {MUL, DR_F32, 3, {2, 3, 4}, L_TRANSPOSED, DR_F32, 1, {4}, L_STRIDED, 1, DR_F32, 3, {2, 3, 4}},
    {DIV, DR_F32, 2, {5, 3}, L_TRANSPOSED, DR_F32, 2, {5, 3}, L_STRIDED, 1, DR_F32, 2, {5, 3}},
    {SUB, DR_F32, 2, {5, 3}, L_EXPANDED, DR_F32, 2, {5, 3}, L_TRANSPOSED, 0.5, DR_F32, 2, {5, 3}},
    {ADD, DR_I32, 2, {6, 7}, L_STRIDED, DR_I32, 2, {6, 7}, L_TRANSPOSED, 1, DR_I32, 2, {6, 7}},
    /* large enough for the parallel paths (strided and the contiguous fast path) */
    {ADD, DR_F32, 2, {300, 200}, L_TRANSPOSED, DR_F32, 1, {200}, L_CONTIG, 1,
     DR_F32, 2, {300, 200}},
    {MUL, DR_F32, 1, {70001}, L_CONTIG, DR_F32, 1, {70001}, L_CONTIG, 1, DR_F32, 1, {70001}},
    {ADD, DR_F16, 2, {300, 200}, L_CONTIG, DR_F16, 2, {300, 1}, L_CONTIG, 1, DR_F16, 2, {300, 200}},
    /* rows broadcast along (a scalar, a bias), long enough to be cut in pieces */
    {MUL, DR_F32, 1, {70001}, L_CONTIG, DR_F32, 1, {1}, L_CONTIG, 1, DR_F32, 1, {70001}},
    {SUB, DR_F32, 1, {1}, L_CONTIG, DR_F32, 2, {3, 40000}, L_CONTIG, 2.5, DR_F32, 2, {3, 40000}},
    {ADD, DR_F32, 2, {2, 20000}, L_CONTIG, DR_F32, 1, {20000}, L_CONTIG, -0.5,
     DR_F32, 2, {2, 20000}},
    {DIV, DR_F32, 3, {2, 3, 17000}, L_CONTIG, DR_F32, 3, {2, 3, 1}, L_CONTIG, 1,
     DR_F32, 3, {2, 3, 17000}},
    /* every dtype; promotion */
    {ADD, DR_F16, 2, {7, 9}, L_CONTIG, DR_F16, 1, {9}, L_CONTIG, 1, DR_F16, 2, {7, 9}},
    {MUL, DR_BF16, 2, {4, 4}, L_TRANSPOSED, DR_BF16, 2, {4, 1}, L_CONTIG, 1, DR_BF16, 2, {4, 4}},
    {ADD, DR_F16, 2, {3, 5}, L_CONTIG, DR_BF16, 2, {3, 5}, L_CONTIG, 1, DR_F32, 2, {3, 5}},
    {DIV, DR_F16, 1, {6}, L_CONTIG, DR_F32, 1, {6}, L_CONTIG, 1, DR_F32, 1, {6}},
    {ADD, DR_I64, 2, {3, 4}, L_CONTIG, DR_F32, 1, {4}, L_CONTIG, 1, DR_F32, 2, {3, 4}},
    {SUB, DR_I64, 2, {3, 4}, L_CONTIG, DR_F16, 1, {4}, L_CONTIG, 1, DR_F16, 2, {3, 4}},
    {ADD, DR_U8, 2, {2, 3}, L_CONTIG, DR_I32, 1, {3}, L_CONTIG, 1, DR_I32, 2, {2, 3}},
    {SUB, DR_I32, 3, {3, 1, 5}, L_CONTIG, DR_I64, 2, {4, 1}, L_CONTIG, 3, DR_I64, 3, {3, 4, 5}},
    {ADD, DR_I64, 1, {8}, L_CONTIG, DR_I64, 1, {8}, L_CONTIG, -2, DR_I64, 1, {8}},
    {DIV, DR_I32, 2, {4, 5}, L_CONTIG, DR_I32, 1, {5}, L_CONTIG, 1, DR_F32, 2, {4, 5}},
    {DIV, DR_U8, 1, {9}, L_CONTIG, DR_I64, 1, {9}, L_CONTIG, 1, DR_F32, 1, {9}},
    /* integer wraparound (u8 products and sums exceed 255) */
    {MUL, DR_U8, 2, {4, 8}, L_CONTIG, DR_U8, 2, {4, 8}, L_TRANSPOSED, 1, DR_U8, 2, {4, 8}},
    {ADD, DR_U8, 1, {16}, L_CONTIG, DR_U8, 1, {16}, L_CONTIG, 2, DR_U8, 1, {16}},
    {SUB, DR_U8, 1, {16}, L_CONTIG, DR_U8, 1, {16}, L_STRIDED, 1, DR_U8, 1, {16}},
    /* bool: add is or, mul is and; bool with numbers promotes */
    {ADD, DR_BOOL, 2, {3, 4}, L_CONTIG, DR_BOOL, 2, {3, 4}, L_TRANSPOSED, 1, DR_BOOL, 2, {3, 4}},
    {MUL, DR_BOOL, 2, {3, 4}, L_CONTIG, DR_BOOL, 1, {4}, L_CONTIG, 1, DR_BOOL, 2, {3, 4}},
    {ADD, DR_BOOL, 1, {5}, L_CONTIG, DR_U8, 1, {5}, L_CONTIG, 1, DR_U8, 1, {5}},
    {MUL, DR_I32, 1, {5}, L_CONTIG, DR_BOOL, 1, {5}, L_CONTIG, 1, DR_I32, 1, {5}},
    {SUB, DR_F32, 1, {5}, L_CONTIG, DR_BOOL, 1, {5}, L_CONTIG, 1, DR_F32, 1, {5}},
    {DIV, DR_BOOL, 1, {5}, L_CONTIG, DR_I32, 1, {5}, L_CONTIG, 1, DR_F32, 1, {5}},
};

static void run_binary_case(const binary_case *c) {
    char what[96];
    snprintf(what, sizeof what, "%s(%s%s, %s%s)", bop_names[c->op], dr_dtype_name(c->adt),
             c->al ? " (strided)" : "", dr_dtype_name(c->bdt), c->bl ? " (strided)" : "");
    dr_tensor *a = operand(c->as, c->andim, c->adt, c->al, 1, 0);
    dr_tensor *b = operand(c->bs, c->bndim, c->bdt, c->bl, 2, c->op == DIV);
    dr_tensor *out = NULL;
    double *va = NULL, *vb = NULL, *got = NULL, *want = NULL, *tol = NULL;
    if (!a || !b) goto done;
    if (!CHECK_OK(run_binary(c->op, a, b, c->alpha, &out))) {
        fprintf(stderr, "    in %s\n", what);
        goto done;
    }
    if (!CHECK_EQ_INT(out->scalar_type, c->want_dtype) ||
        !check_sizes(out, c->want, c->want_ndim)) {
        fprintf(stderr, "    in %s\n", what);
        goto done;
    }
    CHECK(dr_tensor_is_contiguous(out));
    int64_t n = count(c->want, c->want_ndim);
    va = dense(a);
    vb = dense(b);
    got = dense(out);
    want = malloc((size_t)(n > 0 ? n : 1) * sizeof *want);
    tol = malloc((size_t)(n > 0 ? n : 1) * sizeof *tol);
    if (!va || !vb || !got) goto done;
    for (int64_t k = 0; k < n; k++) {
        double x = va[broadcast_index(k, c->want, c->want_ndim, c->as, c->andim)];
        double y = vb[broadcast_index(k, c->want, c->want_ndim, c->bs, c->bndim)];
        want[k] = ref_binary(c->op, c->want_dtype, x, y, c->alpha);
        tol[k] = rounding_tol(c->want_dtype) * (fabs(want[k]) + fabs(x) + fabs(c->alpha * y));
    }
    compare(got, want, tol, n, what);
done:
    free(va);
    free(vb);
    free(got);
    free(want);
    free(tol);
    dr_tensor_release(a);
    dr_tensor_release(b);
    dr_tensor_release(out);
}

static void test_binary_against_reference(void) {
    for (int32_t i = 0; i < LEN(binary_cases); i++) run_binary_case(&binary_cases[i]);
}

/* torch.result_type for every pair of storage dtypes (rows: a, columns: b, in
 * dr_dtype order f32 f16 bf16 i64 i32 u8 bool). */
static void test_promotion_table(void) {
    enum { F32 = DR_F32, F16 = DR_F16, BF = DR_BF16, I64 = DR_I64, I32 = DR_I32, U8 = DR_U8 };
    enum { B = DR_BOOL };
    static const int32_t table[DR_NUM_DTYPES][DR_NUM_DTYPES] = {
        {F32, F32, F32, F32, F32, F32, F32},
        {F32, F16, F32, F16, F16, F16, F16},
        {F32, F32, BF, BF, BF, BF, BF},
        {F32, F16, BF, I64, I64, I64, I64},
        {F32, F16, BF, I64, I32, I32, I32},
        {F32, F16, BF, I64, I32, U8, U8},
        {F32, F16, BF, I64, I32, U8, B},
    };
    const int64_t one = 1;
    for (int32_t x = 0; x < DR_NUM_DTYPES; x++)
        for (int32_t y = 0; y < DR_NUM_DTYPES; y++) {
            dr_tensor *a = NULL, *b = NULL, *sum = NULL, *quot = NULL;
            double v;
            int is_float = table[x][y] == F32 || table[x][y] == F16 || table[x][y] == BF;
            if (CHECK_OK(dr_tensor_full(&one, 1, x, CPU, 1, &a)) &&
                CHECK_OK(dr_tensor_full(&one, 1, y, CPU, 1, &b))) {
                if (CHECK_OK(dr_add(a, b, 1, &sum))) {
                    if (!CHECK_EQ_INT(sum->scalar_type, table[x][y]))
                        fprintf(stderr, "    add(%s, %s)\n", dr_dtype_name(x), dr_dtype_name(y));
                    if (CHECK_OK(dr_tensor_item(sum, &v)))
                        CHECK_NEAR(v, table[x][y] == B ? 1 : 2, 0);
                }
                if (CHECK_OK(dr_div(a, b, &quot))) {
                    if (!CHECK_EQ_INT(quot->scalar_type, is_float ? table[x][y] : F32))
                        fprintf(stderr, "    div(%s, %s)\n", dr_dtype_name(x), dr_dtype_name(y));
                }
            }
            dr_tensor *ts[] = {a, b, sum, quot};
            release_all(ts, LEN(ts));
        }
}

/* Single elements at the edges of each integer type, read back bit-exactly. */
static void poke(dr_tensor *t, int64_t v) {
    void *p = dr_tensor_data(t);
    switch (t->scalar_type) {
    case DR_I64: *(int64_t *)p = v; break;
    case DR_I32: *(int32_t *)p = (int32_t)v; break;
    default: *(uint8_t *)p = (uint8_t)v; break;
    }
}

static int64_t peek(const dr_tensor *t) {
    const void *p = dr_tensor_data(t);
    switch (t->scalar_type) {
    case DR_I64: return *(const int64_t *)p;
    case DR_I32: return *(const int32_t *)p;
    default: return *(const uint8_t *)p;
    }
}

static void test_integer_wraparound(void) {
    static const struct {
        bop op; int32_t dtype; int64_t x, y; double alpha; int64_t want;
    } cases[] = {
        {ADD, DR_I64, INT64_MAX, 1, 1, INT64_MIN},
        {SUB, DR_I64, INT64_MIN, 1, 1, INT64_MAX},
        {MUL, DR_I64, INT64_MAX, 2, 1, -2},
        {ADD, DR_I64, 5, INT64_MIN, -1, INT64_MIN + 5},
        {ADD, DR_I32, INT32_MAX, 1, 1, INT32_MIN},
        {SUB, DR_I32, INT32_MIN, 1, 1, INT32_MAX},
        {MUL, DR_I32, 65536, 65536, 1, 0},
        {ADD, DR_I32, 1, 2, 3, 7},
        {ADD, DR_I32, 0, INT32_MAX, 2, -2},
        {ADD, DR_U8, 200, 100, 1, 44},
        {SUB, DR_U8, 3, 5, 1, 254},
        {MUL, DR_U8, 16, 16, 1, 0},
        {ADD, DR_BOOL, 1, 1, 1, 1},
        {ADD, DR_BOOL, 0, 0, 1, 0},
        {MUL, DR_BOOL, 1, 0, 1, 0},
        {MUL, DR_BOOL, 1, 1, 1, 1},
    };
    const int64_t one = 1;
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_tensor *a = NULL, *b = NULL, *out = NULL;
        if (CHECK_OK(dr_tensor_empty(&one, 1, cases[i].dtype, CPU, &a)) &&
            CHECK_OK(dr_tensor_empty(&one, 1, cases[i].dtype, CPU, &b))) {
            poke(a, cases[i].x);
            poke(b, cases[i].y);
            if (CHECK_OK(run_binary(cases[i].op, a, b, cases[i].alpha, &out)) &&
                !CHECK_EQ_INT(peek(out), cases[i].want))
                fprintf(stderr, "    %s %s case %d\n", bop_names[cases[i].op],
                        dr_dtype_name(cases[i].dtype), i);
        }
        dr_tensor *ts[] = {a, b, out};
        release_all(ts, LEN(ts));
    }
}

static void test_binary_errors(void) {
    const int64_t s34[2] = {3, 4}, s5[1] = {5};
    dr_tensor *f = filled(s34, 2, DR_F32, 1, 0), *g = filled(s5, 1, DR_F32, 2, 0);
    dr_tensor *b = filled(s34, 2, DR_BOOL, 3, 0), *i = filled(s34, 2, DR_I32, 4, 0), *out = NULL;
    if (f && g && b && i) {
        CHECK_FAILS(dr_add(f, g, 1, &out), DR_ERR_SHAPE, "[3, 4]");
        CHECK(strstr(dr_last_error(), "[5]") && strstr(dr_last_error(), "add"));
        CHECK_FAILS(dr_mul(g, f, &out), DR_ERR_SHAPE, "mul");
        CHECK_FAILS(dr_sub(b, b, 1, &out), DR_ERR_DTYPE, "sub");
        CHECK_FAILS(dr_add(i, i, 0.5, &out), DR_ERR_ARG, "alpha");
        CHECK_FAILS(dr_sub(i, b, 1.5, &out), DR_ERR_ARG, "int32");
        CHECK_FAILS(dr_add(i, i, NAN, &out), DR_ERR_ARG, "alpha");
        CHECK(out == NULL);
    }
    dr_tensor *ts[] = {f, g, b, i};
    release_all(ts, LEN(ts));
}

/* ---- matmul ------------------------------------------------------------------------ */

/* torch.matmul in double on dense row-major a and b; sizes already validated. */
static double *ref_matmul(const double *a, const int64_t *as, int32_t an, const double *b,
                          const int64_t *bs, int32_t bn, double **abs_out) {
    int64_t m = an == 1 ? 1 : as[an - 2], k = as[an - 1], n = bn == 1 ? 1 : bs[bn - 1];
    int32_t nba = an > 2 ? an - 2 : 0, nbb = bn > 2 ? bn - 2 : 0, nb = nba > nbb ? nba : nbb;
    int64_t batch[DR_MAX_DIMS], nbatch = 1;
    for (int32_t i = 0; i < nb; i++) {
        int32_t ia = i - (nb - nba), ib = i - (nb - nbb);
        int64_t sa = ia >= 0 ? as[ia] : 1, sb = ib >= 0 ? bs[ib] : 1;
        batch[i] = sa == 1 ? sb : sa;
        nbatch *= batch[i];
    }
    double *c = calloc((size_t)(nbatch * m * n > 0 ? nbatch * m * n : 1), sizeof *c);
    double *cabs = calloc((size_t)(nbatch * m * n > 0 ? nbatch * m * n : 1), sizeof *cabs);
    for (int64_t bi = 0; bi < nbatch; bi++) {
        int64_t ai = broadcast_index(bi, batch, nb, as, nba);
        int64_t bj = broadcast_index(bi, batch, nb, bs, nbb);
        const double *pa = a + ai * m * k, *pb = b + bj * k * n;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                for (int64_t l = 0; l < k; l++) {
                    c[(bi * m + i) * n + j] += pa[i * k + l] * pb[l * n + j];
                    cabs[(bi * m + i) * n + j] += fabs(pa[i * k + l] * pb[l * n + j]);
                }
    }
    *abs_out = cabs;
    return c;
}

typedef struct matmul_case {
    int32_t dtype;
    int32_t an; int64_t as[4]; layout al;
    int32_t bn; int64_t bs[4]; layout bl;
    int32_t want_ndim; int64_t want[4];
} matmul_case;

static const matmul_case matmul_cases[] = {
    {DR_F32, 1, {5}, L_CONTIG, 1, {5}, L_CONTIG, 0, {0}},
    {DR_F32, 2, {3, 4}, L_CONTIG, 2, {4, 2}, L_CONTIG, 2, {3, 2}},
    {DR_F32, 1, {4}, L_CONTIG, 2, {4, 3}, L_CONTIG, 1, {3}},
    {DR_F32, 2, {3, 4}, L_CONTIG, 1, {4}, L_CONTIG, 1, {3}},
    {DR_F32, 4, {2, 1, 3, 4}, L_CONTIG, 3, {5, 4, 2}, L_CONTIG, 4, {2, 5, 3, 2}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 1, {4}, L_CONTIG, 2, {2, 3}},
    {DR_F32, 1, {4}, L_CONTIG, 3, {2, 4, 3}, L_CONTIG, 2, {2, 3}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 2, {4, 5}, L_CONTIG, 3, {2, 3, 5}},
    {DR_F32, 2, {3, 4}, L_CONTIG, 3, {2, 4, 5}, L_CONTIG, 3, {2, 3, 5}},
    {DR_F32, 3, {1, 3, 4}, L_CONTIG, 3, {5, 4, 2}, L_CONTIG, 3, {5, 3, 2}},
    {DR_F32, 3, {5, 3, 4}, L_TRANSPOSED, 3, {1, 4, 2}, L_CONTIG, 3, {5, 3, 2}},
    {DR_F32, 2, {3, 1}, L_CONTIG, 2, {1, 4}, L_TRANSPOSED, 2, {3, 4}},
    /* non-contiguous operands: transposed (BLAS in place), strided (packed), expanded */
    {DR_F32, 2, {3, 4}, L_TRANSPOSED, 2, {4, 2}, L_TRANSPOSED, 2, {3, 2}},
    {DR_F32, 2, {4, 3}, L_STRIDED, 2, {3, 5}, L_CONTIG, 2, {4, 5}},
    {DR_F32, 2, {4, 3}, L_CONTIG, 2, {3, 5}, L_STRIDED, 2, {4, 5}},
    {DR_F32, 1, {5}, L_STRIDED, 1, {5}, L_STRIDED, 0, {0}},
    {DR_F32, 1, {4}, L_STRIDED, 2, {4, 3}, L_TRANSPOSED, 1, {3}},
    {DR_F32, 3, {2, 3, 4}, L_TRANSPOSED, 3, {2, 4, 5}, L_TRANSPOSED, 3, {2, 3, 5}},
    {DR_F32, 3, {2, 3, 4}, L_TRANSPOSED, 2, {4, 5}, L_STRIDED, 3, {2, 3, 5}},
    {DR_F32, 3, {3, 2, 4}, L_EXPANDED, 3, {3, 4, 2}, L_STRIDED, 3, {3, 2, 2}},
    {DR_F32, 4, {2, 1, 3, 4}, L_STRIDED, 3, {5, 4, 2}, L_EXPANDED, 4, {2, 5, 3, 2}},
    /* empty dims: k = 0 gives zeros */
    {DR_F32, 2, {2, 0}, L_CONTIG, 2, {0, 3}, L_CONTIG, 2, {2, 3}},
    {DR_F32, 1, {0}, L_CONTIG, 1, {0}, L_CONTIG, 0, {0}},
    {DR_F32, 3, {2, 2, 0}, L_CONTIG, 2, {0, 3}, L_CONTIG, 3, {2, 2, 3}},
    {DR_F32, 2, {0, 3}, L_CONTIG, 2, {3, 2}, L_CONTIG, 2, {0, 2}},
    {DR_F32, 2, {2, 3}, L_CONTIG, 2, {3, 0}, L_CONTIG, 2, {2, 0}},
    {DR_F32, 3, {0, 2, 3}, L_CONTIG, 2, {3, 4}, L_CONTIG, 3, {0, 2, 4}},
    /* half precision in, same dtype out */
    {DR_F16, 2, {3, 4}, L_CONTIG, 2, {4, 5}, L_TRANSPOSED, 2, {3, 5}},
    {DR_BF16, 3, {2, 3, 4}, L_CONTIG, 3, {2, 4, 2}, L_CONTIG, 3, {2, 3, 2}},
    {DR_F16, 1, {7}, L_CONTIG, 1, {7}, L_STRIDED, 0, {0}},
    {DR_BF16, 2, {5, 6}, L_STRIDED, 1, {6}, L_CONTIG, 1, {5}},
    /* big enough for threaded BLAS; many small GEMMs (one per thread) */
    {DR_F32, 2, {64, 128}, L_CONTIG, 2, {128, 96}, L_TRANSPOSED, 2, {64, 96}},
    {DR_F32, 3, {16, 8, 8}, L_CONTIG, 3, {16, 8, 8}, L_TRANSPOSED, 3, {16, 8, 8}},
};

static void run_matmul_case(const matmul_case *c, int index) {
    dr_tensor *a = operand(c->as, c->an, c->dtype, c->al, 5, 0);
    dr_tensor *b = operand(c->bs, c->bn, c->dtype, c->bl, 6, 0);
    dr_tensor *out = NULL;
    double *va = NULL, *vb = NULL, *got = NULL, *want = NULL, *wabs = NULL, *tol = NULL;
    if (!a || !b) goto done;
    if (!CHECK_OK(dr_matmul(a, b, &out)) || !CHECK_EQ_INT(out->scalar_type, c->dtype) ||
        !check_sizes(out, c->want, c->want_ndim)) {
        fprintf(stderr, "    in matmul case %d\n", index);
        goto done;
    }
    int64_t n = count(c->want, c->want_ndim);
    va = dense(a);
    vb = dense(b);
    got = dense(out);
    if (!va || !vb || !got) goto done;
    want = ref_matmul(va, c->as, c->an, vb, c->bs, c->bn, &wabs);
    tol = malloc((size_t)(n > 0 ? n : 1) * sizeof *tol);
    for (int64_t i = 0; i < n; i++)
        tol[i] = 1e-6 * wabs[i] + rounding_tol(c->dtype) * fabs(want[i]);
    char what[48];
    snprintf(what, sizeof what, "matmul case %d", index);
    compare(got, want, tol, n, what);
done:
    free(va);
    free(vb);
    free(got);
    free(want);
    free(wabs);
    free(tol);
    dr_tensor_release(a);
    dr_tensor_release(b);
    dr_tensor_release(out);
}

static void test_matmul_against_reference(void) {
    for (int32_t i = 0; i < LEN(matmul_cases); i++) run_matmul_case(&matmul_cases[i], i);
}

static void test_matmul_errors(void) {
    const int64_t s23[2] = {2, 3}, s45[2] = {4, 5}, s3[1] = {3}, s4[1] = {4};
    const int64_t s234[3] = {2, 3, 4}, s345[3] = {3, 4, 5};
    dr_tensor *ts[9] = {NULL}, *out = NULL;
    dr_tensor **a = &ts[0], **b = &ts[1], **ia = &ts[2], **h = &ts[3], **v3 = &ts[4];
    dr_tensor **v4 = &ts[5], **scalar = &ts[6], **x = &ts[7], **y = &ts[8];
    *a = filled(s23, 2, DR_F32, 1, 0);
    *b = filled(s45, 2, DR_F32, 2, 0);
    *ia = filled(s23, 2, DR_I32, 3, 0);
    *h = filled(s23, 2, DR_F16, 4, 0);
    *v3 = filled(s3, 1, DR_F32, 5, 0);
    *v4 = filled(s4, 1, DR_F32, 6, 0);
    *scalar = filled(NULL, 0, DR_F32, 7, 0);
    *x = filled(s234, 3, DR_F32, 8, 0);
    *y = filled(s345, 3, DR_F32, 9, 0);
    for (int i = 0; i < LEN(ts); i++)
        if (!ts[i]) goto done;
    CHECK_FAILS(dr_matmul(*a, *b, &out), DR_ERR_SHAPE, "matmul");
    CHECK(strstr(dr_last_error(), "[2, 3]") && strstr(dr_last_error(), "[4, 5]"));
    CHECK_FAILS(dr_matmul(*a, *a, &out), DR_ERR_SHAPE, "[2, 3]");
    CHECK_FAILS(dr_matmul(*v3, *v4, &out), DR_ERR_SHAPE, "matmul");
    CHECK_FAILS(dr_matmul(*ia, *ia, &out), DR_ERR_DTYPE, "matmul");
    CHECK_FAILS(dr_matmul(*a, *h, &out), DR_ERR_DTYPE, "matmul");
    CHECK_FAILS(dr_matmul(*scalar, *v3, &out), DR_ERR_SHAPE, "matmul");
    CHECK_FAILS(dr_matmul(*v3, *scalar, &out), DR_ERR_SHAPE, "matmul");
    CHECK_FAILS(dr_matmul(*x, *y, &out), DR_ERR_SHAPE, "batch");
    CHECK(out == NULL);
done:
    release_all(ts, LEN(ts));
}

/* ---- sum --------------------------------------------------------------------------- */

typedef struct sum_case {
    int32_t dtype; int32_t ndim; int64_t sizes[8]; layout lay;
    int32_t ndims; int32_t dims[3]; int keepdim;
    int32_t want_dtype; int32_t want_ndim; int64_t want[8];
} sum_case;

static const sum_case sum_cases[] = {
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 0, {0}, 0, DR_F32, 0, {0}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 1, {1}, 0, DR_F32, 2, {2, 4}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 2, {0, 2}, 0, DR_F32, 1, {3}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 1, {-1}, 1, DR_F32, 3, {2, 3, 1}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 2, {-3, 2}, 1, DR_F32, 3, {1, 3, 1}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 0, {0}, 1, DR_F32, 3, {1, 1, 1}},
    {DR_F32, 3, {2, 3, 4}, L_CONTIG, 3, {2, 0, 1}, 0, DR_F32, 0, {0}},
    /* integers and bool sum to int64 */
    {DR_I32, 2, {5, 7}, L_CONTIG, 1, {1}, 0, DR_I64, 1, {5}},
    {DR_U8, 1, {300}, L_CONTIG, 0, {0}, 0, DR_I64, 0, {0}},
    {DR_BOOL, 2, {4, 6}, L_TRANSPOSED, 0, {0}, 0, DR_I64, 0, {0}},
    {DR_I64, 2, {4, 6}, L_STRIDED, 1, {0}, 1, DR_I64, 2, {1, 6}},
    /* non-contiguous inputs */
    {DR_F32, 2, {6, 5}, L_TRANSPOSED, 1, {0}, 0, DR_F32, 1, {5}},
    {DR_F32, 3, {3, 6, 5}, L_TRANSPOSED, 2, {0, 2}, 0, DR_F32, 1, {6}},
    {DR_F32, 2, {4, 6}, L_STRIDED, 1, {1}, 0, DR_F32, 1, {4}},
    {DR_F32, 2, {5, 4}, L_EXPANDED, 1, {0}, 0, DR_F32, 1, {4}},
    /* half dtypes keep their dtype */
    {DR_F16, 2, {8, 3}, L_CONTIG, 1, {0}, 0, DR_F16, 1, {3}},
    {DR_BF16, 2, {8, 3}, L_TRANSPOSED, 1, {1}, 0, DR_BF16, 1, {8}},
    /* 0-d: dim 0 or -1 is the identity */
    {DR_F32, 0, {0}, L_CONTIG, 1, {0}, 0, DR_F32, 0, {0}},
    {DR_F32, 0, {0}, L_CONTIG, 1, {-1}, 1, DR_F32, 0, {0}},
    {DR_I32, 0, {0}, L_CONTIG, 0, {0}, 0, DR_I64, 0, {0}},
    /* zero-size */
    {DR_F32, 2, {0, 3}, L_CONTIG, 1, {0}, 0, DR_F32, 1, {3}},
    {DR_F32, 2, {0, 3}, L_CONTIG, 0, {0}, 0, DR_F32, 0, {0}},
    {DR_I32, 2, {3, 0}, L_CONTIG, 1, {1}, 1, DR_I64, 2, {3, 1}},
    {DR_F32, 2, {3, 0}, L_CONTIG, 1, {0}, 0, DR_F32, 1, {0}},
    /* DR_MAX_DIMS */
    {DR_F32, 8, {2, 1, 3, 1, 2, 2, 1, 3}, L_TRANSPOSED, 3, {7, 0, 4}, 0,
     DR_F32, 5, {1, 3, 1, 2, 1}},
    {DR_F32, 8, {2, 1, 3, 1, 2, 2, 1, 3}, L_CONTIG, 0, {0}, 1, DR_F32, 8, {1, 1, 1, 1, 1, 1, 1, 1}},
};

/* Sums dense `v` of `sizes` over the marked dims, in double. */
static double *ref_sum(const double *v, const int64_t *sizes, int32_t ndim, const int *reduce,
                       int64_t nout, double **abs_out) {
    double *out = calloc((size_t)(nout > 0 ? nout : 1), sizeof *out);
    double *oabs = calloc((size_t)(nout > 0 ? nout : 1), sizeof *oabs);
    int64_t n = count(sizes, ndim);
    for (int64_t k = 0; k < n; k++) {
        int64_t rem = k, o = 0, stride = 1;
        for (int32_t d = ndim - 1; d >= 0; d--) {
            int64_t i = rem % sizes[d];
            rem /= sizes[d];
            if (reduce[d]) continue;
            o += i * stride;
            stride *= sizes[d];
        }
        out[o] += v[k];
        oabs[o] += fabs(v[k]);
    }
    *abs_out = oabs;
    return out;
}

static void run_sum_case(const sum_case *c, int index) {
    dr_tensor *t = operand(c->sizes, c->ndim, c->dtype, c->lay, 7, 0), *out = NULL;
    double *v = NULL, *got = NULL, *want = NULL, *wabs = NULL;
    if (!t) return;
    if (!CHECK_OK(dr_sum(t, c->dims, c->ndims, c->keepdim, &out)) ||
        !CHECK_EQ_INT(out->scalar_type, c->want_dtype) ||
        !check_sizes(out, c->want, c->want_ndim)) {
        fprintf(stderr, "    in sum case %d\n", index);
        goto done;
    }
    int reduce[DR_MAX_DIMS] = {0};
    for (int32_t d = 0; d < c->ndim; d++) reduce[d] = c->ndims == 0;
    for (int32_t i = 0; i < c->ndims; i++)
        if (c->ndim > 0) reduce[(c->dims[i] + c->ndim) % c->ndim] = 1;
    int64_t nout = count(c->want, c->want_ndim);
    v = dense(t);
    got = dense(out);
    if (!v || !got) goto done;
    want = ref_sum(v, c->sizes, c->ndim, reduce, nout, &wabs);
    for (int64_t i = 0; i < nout; i++) wabs[i] = rounding_tol(c->want_dtype) * 2 * wabs[i];
    char what[32];
    snprintf(what, sizeof what, "sum case %d", index);
    compare(got, want, wabs, nout, what);
done:
    free(v);
    free(got);
    free(want);
    free(wabs);
    dr_tensor_release(t);
    dr_tensor_release(out);
}

static void test_sum_against_reference(void) {
    for (int32_t i = 0; i < LEN(sum_cases); i++) run_sum_case(&sum_cases[i], i);
}

/* int32 sums that overflow int32 are exact in the int64 result. */
static void test_sum_int_overflow(void) {
    const double big[3] = {2e9, 2e9, 2e9};
    const int64_t three = 3;
    dr_tensor *t = NULL, *s = NULL;
    if (CHECK_OK(dr_tensor_from_f64(big, &three, 1, DR_I32, CPU, &t)) &&
        CHECK_OK(dr_sum(t, NULL, 0, 0, &s)) && CHECK_EQ_INT(s->scalar_type, DR_I64))
        CHECK_EQ_INT(*(const int64_t *)dr_tensor_data(s), 6000000000LL);
    dr_tensor_release(t);
    dr_tensor_release(s);
}

/* Large sums are bit-identical for one and two threads. */
static void test_sum_thread_independence(void) {
    static const struct {
        int32_t ndim; int64_t sizes[2]; int32_t ndims; int32_t dims[1];
    } cases[] = {
        {1, {3000000}, 0, {0}},
        {2, {3, 1000000}, 1, {1}},
        {2, {1000, 3000}, 1, {0}},
    };
    int saved = dr_get_num_threads();
    for (int32_t i = 0; i < LEN(cases); i++) {
        dr_generator g = {123, 0};
        dr_tensor *t = NULL, *one = NULL, *two = NULL;
        if (!CHECK_OK(dr_randn(cases[i].sizes, cases[i].ndim, DR_F32, CPU, &g, &t))) continue;
        dr_set_num_threads(1);
        CHECK_OK(dr_sum(t, cases[i].dims, cases[i].ndims, 0, &one));
        dr_set_num_threads(2);
        CHECK_OK(dr_sum(t, cases[i].dims, cases[i].ndims, 0, &two));
        if (one && two) {
            int64_t n = dr_tensor_numel(one);
            CHECK(memcmp(dr_tensor_data(one), dr_tensor_data(two), (size_t)n * sizeof(float)) == 0);
        }
        if (one && i == 0) { /* and close to the double-precision sum */
            const float *x = dr_tensor_data(t);
            double s = 0, sabs = 0;
            for (int64_t k = 0; k < 3000000; k++) {
                s += x[k];
                sabs += fabs(x[k]);
            }
            CHECK_NEAR(*(const float *)dr_tensor_data(one), s, 1e-7 * sabs);
        }
        dr_tensor *ts[] = {t, one, two};
        release_all(ts, LEN(ts));
    }
    dr_set_num_threads(saved);
}

static void test_sum_errors(void) {
    const int64_t sizes[3] = {2, 3, 4};
    dr_tensor *t = filled(sizes, 3, DR_F32, 1, 0), *out = NULL;
    if (!t) return;
    const int32_t twice[2] = {1, 1}, aliased[2] = {0, -3}, high[1] = {3}, low[1] = {-4};
    const int32_t nine[9] = {0};
    CHECK_FAILS(dr_sum(t, twice, 2, 0, &out), DR_ERR_ARG, "dimension 2 appears twice");
    CHECK_FAILS(dr_sum(t, aliased, 2, 0, &out), DR_ERR_ARG, "twice");
    CHECK_FAILS(dr_sum(t, high, 1, 0, &out), DR_ERR_ARG, "dimension 4");
    CHECK_FAILS(dr_sum(t, low, 1, 1, &out), DR_ERR_ARG, "dimension -4");
    CHECK_FAILS(dr_sum(t, nine, 9, 0, &out), DR_ERR_ARG, "sum");
    CHECK_FAILS(dr_sum(t, NULL, 1, 0, &out), DR_ERR_ARG, "sum");
    CHECK(out == NULL);
    dr_tensor_release(t);
}

int main(void) {
    test_binary_against_reference();
    test_promotion_table();
    test_integer_wraparound();
    test_binary_errors();
    test_matmul_against_reference();
    test_matmul_errors();
    test_sum_against_reference();
    test_sum_int_overflow();
    test_sum_thread_independence();
    test_sum_errors();
    return check_summary("test_ops");
}
