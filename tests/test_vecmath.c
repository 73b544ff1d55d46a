/* core/backend/cpu/cpu_vecmath.h: dr_vexpf8 (AVX2 + FMA intrinsics, used by the
 * attention kernels) gives the same bits as dr_vexpf compiled for the same CPU
 * level (what the DR_CPU_CLONES loops run), on every 61st float bit pattern (all
 * exponents, both signs, NaNs, infinities) and on the edges of its clamps. The
 * whole 2^32 range was compared once by hand (0 mismatches). On a CPU without
 * AVX2 + FMA, or a compiler without the intrinsics version, it says so and passes
 * nothing else. */
#include <stdint.h>

#include "check.h"
#include "backend/cpu/cpu_vecmath.h"

#ifdef DR_HAVE_VEXPF8
__attribute__((target("avx2,fma"), noinline)) static void vexp8(const float *x, float *out) {
    _mm256_storeu_ps(out, dr_vexpf8(_mm256_loadu_ps(x)));
}

/* Compares 8 floats; returns how many lanes differ (bit for bit, NaNs included). */
__attribute__((target("avx2,fma"), noinline)) static int compare8(const float *x) {
    float vec[8], ref[8];
    vexp8(x, vec);
    for (int i = 0; i < 8; i++) ref[i] = dr_vexpf(x[i]);
    int bad = 0;
    for (int i = 0; i < 8; i++)
        if (memcmp(&vec[i], &ref[i], 4) != 0) {
            if (bad == 0) fprintf(stderr, "exp(%a): dr_vexpf8 %a, dr_vexpf %a\n", x[i], vec[i], ref[i]);
            bad++;
        }
    return bad;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_sampled_patterns(void) {
    int64_t bad = 0, n = 0;
    float x[8];
    for (uint64_t u = 0; u < (1ull << 32); u += 61 * 8) {
        for (int i = 0; i < 8; i++) x[i] = from_bits((uint32_t)(u + 61 * (uint64_t)i));
        bad += compare8(x), n += 8;
    }
    fprintf(stderr, "dr_vexpf8 vs dr_vexpf: %lld floats, %lld differ\n", (long long)n, (long long)bad);
    CHECK(bad == 0);
}

static void test_edges(void) {
    const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN, -NAN,
                           -104.0f, -103.97f, -103.9f, -87.33f, -87.3f, -88.0f, -150.0f,
                           88.72f, 88.73f, 89.0f, 89.01f, 1e-30f, -1e-30f, 0.5f, 1e30f,
                           -1e30f, 0.693359375f, -0.34657359f, 0.34657359f, 12582912.0f};
    int n = (int)(sizeof edges / sizeof edges[0]);
    float x[8];
    int bad = 0;
    for (int i = 0; i < n; i += 8) {
        for (int j = 0; j < 8; j++) x[j] = edges[(i + j) % n];
        bad += compare8(x);
    }
    CHECK(bad == 0);
    /* what the attention relies on: masked scores (-inf) give 0, NaN stays NaN */
    float v[8] = {-INFINITY, 0.0f, 1.0f, NAN, 89.0f, -104.0f, -1.0f, 2.0f}, out[8];
    vexp8(v, out);
    CHECK(out[0] == 0.0f);
    CHECK(out[1] == 1.0f);
    CHECK_NEAR(out[2], 2.718281828, 1e-6);
    CHECK(isnan(out[3]));
    CHECK(isinf(out[4]) && out[4] > 0);
    CHECK(out[5] == 0.0f);
    CHECK_NEAR(out[6], 0.367879441, 1e-7);
    CHECK_NEAR(out[7], 7.389056099, 1e-5);
}
#endif

int main(void) {
#ifdef DR_HAVE_VEXPF8
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        test_sampled_patterns();
        test_edges();
    } else {
        fprintf(stderr, "test_vecmath: this CPU has no AVX2 + FMA: dr_vexpf8 is not used, not tested\n");
    }
#else
    fprintf(stderr, "test_vecmath: dr_vexpf8 is not compiled on this compiler/target: not tested\n");
#endif
    return check_summary("test_vecmath");
}
