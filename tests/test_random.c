/* Philox4x32-10 and the random ops: known-answer vectors, the stream layout of
 * core/util/philox.h (element i of a draw comes from block offset + i/4, lane i%4),
 * generator offsets, moments, thread-count independence, half dtypes, errors. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "util/half.h"

static const dr_device CPU = {DR_CPU, 0};

/* Known-answer vectors of Random123's kat_vectors (philox4x32 10 rounds). */
typedef struct kat { uint32_t ctr[4], key[2], out[4]; } kat;
static const kat philox_kats[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

static void test_philox_known_answers(void) {
    for (size_t i = 0; i < sizeof philox_kats / sizeof philox_kats[0]; i++) {
        uint32_t out[4];
        dr_philox4x32(philox_kats[i].ctr, philox_kats[i].key, out);
        for (int l = 0; l < 4; l++)
            if (!CHECK_EQ_INT(out[l], philox_kats[i].out[l]))
                fprintf(stderr, "    vector %zu, lane %d: got 0x%08x\n", i, l, out[l]);
    }
}

/* ---- helpers ---------------------------------------------------------------- */

typedef dr_status (*random_fn)(const int64_t *, int32_t, int32_t, dr_device, dr_generator *,
                               dr_tensor **);

/* n numbers of `fn` as f32 (NULL on failure, reported). Caller frees. */
static float *draw(random_fn fn, int64_t n, dr_generator *gen) {
    dr_tensor *t = NULL;
    if (!CHECK_OK(fn(&n, 1, DR_F32, CPU, gen, &t))) return NULL;
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (n > 0) memcpy(v, dr_tensor_data(t), (size_t)n * sizeof *v);
    dr_tensor_release(t);
    return v;
}

/* The layout promise, recomputed from dr_philox4x32 directly. */
static void philox_block(uint64_t block, uint64_t seed, uint32_t x[4]) {
    const uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    dr_philox4x32(ctr, key, x);
}

static float expected_uniform(uint64_t seed, uint64_t offset, int64_t i) {
    uint32_t x[4];
    philox_block(offset + (uint64_t)i / 4, seed, x);
    return (float)(x[i % 4] >> 8) * 0x1.0p-24f;
}

static float expected_normal(uint64_t seed, uint64_t offset, int64_t i) {
    uint32_t x[4];
    philox_block(offset + (uint64_t)i / 4, seed, x);
    int pair = (int)(i % 4) / 2 * 2;
    double u1 = ((double)(x[pair] >> 8) + 1.0) * 0x1.0p-24;
    double u2 = (double)(x[pair + 1] >> 8) * 0x1.0p-24;
    double r = sqrt(-2.0 * log(u1)), theta = 6.283185307179586476925 * u2;
    return (float)(i % 2 == 0 ? r * cos(theta) : r * sin(theta));
}

/* ---- stream layout and generator state ------------------------------------- */

static void test_stream_layout_matches_philox(void) {
    /* Seed and offset above 2^32 so both counter and key words are exercised. */
    const uint64_t seed = 0x123456789ABCDEF0ull, offset = 0x1FFFFFFFEull;
    const int64_t n = 37;
    dr_generator g = {seed, offset};
    float *u = draw(dr_rand, n, &g);
    dr_generator h = {seed, offset};
    float *z = draw(dr_randn, n, &h);
    if (!u || !z) goto done;
    int bad_u = 0, bad_z = 0;
    for (int64_t i = 0; i < n; i++) {
        if (u[i] != expected_uniform(seed, offset, i)) bad_u++;
        if (fabsf(z[i] - expected_normal(seed, offset, i)) > 1e-6f) bad_z++;
    }
    CHECK_EQ_INT(bad_u, 0);
    CHECK_EQ_INT(bad_z, 0);
done:
    free(u);
    free(z);
}

static void test_deterministic_from_seed_and_offset(void) {
    random_fn fns[2] = {dr_randn, dr_rand};
    for (int f = 0; f < 2; f++) {
        dr_generator a = {42, 7}, b = {42, 7}, c = {43, 7}, d = {42, 8};
        float *va = draw(fns[f], 100, &a), *vb = draw(fns[f], 100, &b);
        float *vc = draw(fns[f], 100, &c), *vd = draw(fns[f], 100, &d);
        if (va && vb && vc && vd) {
            CHECK(memcmp(va, vb, 100 * sizeof(float)) == 0);
            CHECK(memcmp(va, vc, 100 * sizeof(float)) != 0);  /* seed matters */
            CHECK(memcmp(va, vd, 100 * sizeof(float)) != 0);  /* offset matters */
            CHECK(memcmp(va + 4, vd, 96 * sizeof(float)) == 0); /* offset + 1 = 4 numbers on */
        }
        free(va);
        free(vb);
        free(vc);
        free(vd);
    }
}

static void test_offset_advances_by_blocks(void) {
    static const struct { int64_t n; uint64_t advance; } cases[] = {
        {0, 0}, {1, 1}, {3, 1}, {4, 1}, {5, 2}, {10, 3}, {16, 4}, {17, 5}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dr_generator g = {5, 100};
        float *v = draw(dr_randn, cases[i].n, &g);
        CHECK_EQ_INT(g.seed, 5);
        if (!CHECK_EQ_INT(g.offset, 100 + cases[i].advance))
            fprintf(stderr, "    after drawing %lld\n", (long long)cases[i].n);
        free(v);
    }
    /* A 2-d shape consumes by its element count too. */
    dr_generator g = {5, 0};
    dr_tensor *t = NULL;
    const int64_t sizes[2] = {3, 5};
    if (CHECK_OK(dr_rand(sizes, 2, DR_F32, CPU, &g, &t))) CHECK_EQ_INT(g.offset, 4);
    dr_tensor_release(t);
}

/* Drawing 10 then 6 is not a prefix of drawing 16: the second draw starts at a
 * fresh block (offset 3), i.e. at element 12 of a single long draw. */
static void test_consecutive_draws_start_at_new_blocks(void) {
    dr_generator one = {99, 0}, two = {99, 0};
    float *all = draw(dr_randn, 20, &one);
    float *first = draw(dr_randn, 10, &two);
    float *second = draw(dr_randn, 6, &two);
    if (all && first && second) {
        CHECK(memcmp(first, all, 10 * sizeof(float)) == 0);
        CHECK(memcmp(second, all + 12, 6 * sizeof(float)) == 0);
        CHECK(memcmp(second, all + 10, 6 * sizeof(float)) != 0);
        CHECK_EQ_INT(two.offset, 5);
    }
    free(all);
    free(first);
    free(second);
}

static void test_default_generator(void) {
    dr_manual_seed(1234);
    dr_generator *g = dr_default_generator();
    if (!CHECK(g != NULL)) return;
    CHECK_EQ_INT(g->seed, 1234);
    CHECK_EQ_INT(g->offset, 0);
    float *a = draw(dr_randn, 8, NULL); /* NULL: the default generator */
    CHECK_EQ_INT(g->offset, 2);
    dr_generator explicit_gen = {1234, 0};
    float *b = draw(dr_randn, 8, &explicit_gen);
    if (a && b) CHECK(memcmp(a, b, 8 * sizeof(float)) == 0);
    dr_manual_seed(1234);
    CHECK_EQ_INT(g->offset, 0);
    free(a);
    free(b);
}

/* ---- distributions ---------------------------------------------------------- */

static void moments(const float *v, int64_t n, double *mean, double *var) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += v[i];
    *mean = s / (double)n;
    for (int64_t i = 0; i < n; i++) s2 += (v[i] - *mean) * (v[i] - *mean);
    *var = s2 / (double)(n - 1);
}

static void test_normal_moments(void) {
    const int64_t n = 1000000;
    dr_generator g = {2024, 0};
    float *z = draw(dr_randn, n, &g);
    if (!z) return;
    double mean, var;
    moments(z, n, &mean, &var);
    CHECK_NEAR(mean, 0.0, 0.005); /* 5 standard errors */
    CHECK_NEAR(var, 1.0, 0.01);
    int finite = 1;
    int64_t beyond_2sd = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(z[i])) finite = 0;
        if (fabsf(z[i]) > 2.0f) beyond_2sd++;
    }
    CHECK(finite);
    CHECK_NEAR((double)beyond_2sd / (double)n, 0.0455, 0.002);
    free(z);
}

static void test_uniform_range_and_moments(void) {
    const int64_t n = 1000000;
    dr_generator g = {77, 3};
    float *u = draw(dr_rand, n, &g);
    if (!u) return;
    int64_t outside = 0;
    for (int64_t i = 0; i < n; i++)
        if (!(u[i] >= 0.0f && u[i] < 1.0f)) outside++;
    CHECK_EQ_INT(outside, 0);
    double mean, var;
    moments(u, n, &mean, &var);
    CHECK_NEAR(mean, 0.5, 0.0015);
    CHECK_NEAR(var, 1.0 / 12.0, 0.001);
    free(u);
}

static void test_thread_count_independence(void) {
    const int64_t n = 1000003; /* not a multiple of 4: a partial last block */
    random_fn fns[2] = {dr_randn, dr_rand};
    int saved = dr_get_num_threads();
    for (int f = 0; f < 2; f++) {
        dr_generator g1 = {31337, 11}, g2 = {31337, 11};
        dr_set_num_threads(1);
        float *one = draw(fns[f], n, &g1);
        dr_set_num_threads(2);
        float *two = draw(fns[f], n, &g2);
        if (one && two) CHECK(memcmp(one, two, (size_t)n * sizeof(float)) == 0);
        CHECK_EQ_INT(g1.offset, g2.offset);
        free(one);
        free(two);
    }
    dr_set_num_threads(saved);
}

/* ---- dtypes ----------------------------------------------------------------- */

/* A half-precision draw is the f32 draw of the same generator state, rounded. */
static void test_half_dtypes(void) {
    static const int32_t dtypes[2] = {DR_F16, DR_BF16};
    random_fn fns[2] = {dr_randn, dr_rand};
    const int64_t n = 1001;
    for (int d = 0; d < 2; d++)
        for (int f = 0; f < 2; f++) {
            dr_generator g = {8, 40}, ref = {8, 40};
            dr_tensor *t = NULL;
            if (!CHECK_OK(fns[f](&n, 1, dtypes[d], CPU, &g, &t))) continue;
            CHECK_EQ_INT(t->scalar_type, dtypes[d]);
            CHECK_EQ_INT(g.offset, 40 + (n + 3) / 4);
            float *want = draw(fns[f], n, &ref);
            const uint16_t *h = dr_tensor_data(t);
            int bad = 0;
            /* randn: the f32 draw rounded once. rand: the f32 uniform truncated to
             * the dtype's 11 (f16) or 8 (bf16) bits, so it stays below 1. */
            float keep = dtypes[d] == DR_F16 ? 2048.0f : 256.0f;
            for (int64_t i = 0; want && i < n; i++) {
                float v = f == 1 ? floorf(want[i] * keep) / keep : want[i];
                uint16_t w = dtypes[d] == DR_F16 ? dr_f32_to_f16(v) : dr_f32_to_bf16(v);
                if (h[i] != w) bad++;
            }
            CHECK_EQ_INT(bad, 0);
            free(want);
            dr_tensor_release(t);
        }
}

/* torch.rand promises [0, 1) in every dtype; rounding an f32 uniform to a half
 * type can produce exactly 1.0 (anything above 1 - 2^-9 for bf16, 1 - 2^-12 for
 * f16), so the half draws must be made with the dtype's own precision. */
static void test_half_uniform_below_one(void) {
    static const int32_t dtypes[2] = {DR_F16, DR_BF16};
    const int64_t n = 1000000;
    for (int d = 0; d < 2; d++) {
        dr_generator g = {4242, 0};
        dr_tensor *t = NULL;
        if (!CHECK_OK(dr_rand(&n, 1, dtypes[d], CPU, &g, &t))) continue;
        double *v = malloc((size_t)n * sizeof *v);
        int64_t outside = 0;
        if (CHECK_OK(dr_tensor_to_f64(t, v, n)))
            for (int64_t i = 0; i < n; i++)
                if (!(v[i] >= 0.0 && v[i] < 1.0)) outside++;
        if (!CHECK_EQ_INT(outside, 0))
            fprintf(stderr, "    %s: %lld of %lld uniforms are not in [0, 1)\n",
                    dr_dtype_name(dtypes[d]), (long long)outside, (long long)n);
        free(v);
        dr_tensor_release(t);
    }
}

static void test_errors(void) {
    const int64_t sizes[2] = {2, 3};
    dr_generator g = {1, 10};
    dr_tensor *t = NULL;
    CHECK_FAILS(dr_randn(sizes, 2, DR_I32, CPU, &g, &t), DR_ERR_DTYPE, "randn");
    CHECK_FAILS(dr_rand(sizes, 2, DR_I64, CPU, &g, &t), DR_ERR_DTYPE, "rand");
    CHECK_FAILS(dr_rand(sizes, 2, DR_BOOL, CPU, &g, &t), DR_ERR_DTYPE, "bool");
    CHECK_FAILS(dr_randn(sizes, 2, 42, CPU, &g, &t), DR_ERR_DTYPE, "randn");
    const int64_t negative[2] = {2, -1};
    CHECK_FAILS(dr_randn(negative, 2, DR_F32, CPU, &g, &t), DR_ERR_ARG, "randn");
    CHECK(t == NULL);
    CHECK_EQ_INT(g.offset, 10); /* failed draws consume nothing */
}

int main(void) {
    test_philox_known_answers();
    test_stream_layout_matches_philox();
    test_deterministic_from_seed_and_offset();
    test_offset_advances_by_blocks();
    test_consecutive_draws_start_at_new_blocks();
    test_default_generator();
    test_normal_moments();
    test_uniform_range_and_moments();
    test_thread_count_independence();
    test_half_dtypes();
    test_half_uniform_below_one();
    test_errors();
    return check_summary("test_random");
}
