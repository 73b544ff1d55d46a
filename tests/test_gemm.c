/* The CPU backend's own GEMM (core/backend/cpu/cpu_gemm.c), which conv2d runs on:
 * - close to a double-precision product, on odd sizes (edge tiles in m and n, k
 *   over several blocks), A read in place row- or column-major, or packed;
 * - the bits of an element do not depend on how the product is split into calls:
 *   any cut of m or n, a cut of k at multiples of DR_GEMM_KC, B packed per call;
 * - overwrite gives the bits of adding to zeros; A packed gives the bits of A in
 *   place; the AVX-512 kernel (two panels at once, where the CPU has it) and the
 *   AVX2 kernel the bits of the C loop (dr_cpu_intrinsics 2, 1 and 0). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "backend/cpu/cpu_internal.h"

static uint64_t state = 0x9e3779b97f4a7c15ull;
static float uniform(void) { /* in [-1, 1) */
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((state >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

/* c (row stride n) += A B over columns [j0, j1) and rows [i0, i1), B packed here. */
static void product(int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t k, const float *a,
                    int64_t rsa, int64_t csa, const float *b, int64_t n, float *c,
                    bool overwrite) {
    int64_t cols = j1 - j0;
    float *pb = malloc(sizeof(float) * (size_t)(dr_gemm_b_rows(k) * (cols + DR_GEMM_NR)));
    dr_gemm_pack_b(pb, b + j0, n, 1, k, cols);
    dr_gemm_packed_b(i1 - i0, cols, k, a + i0 * rsa, rsa, csa, pb, c + i0 * n + j0, n, overwrite);
    free(pb);
}

static char shape[96]; /* the case being run, for messages */

static int same_bits(const float *x, const float *y, int64_t count, const char *what) {
    for (int64_t i = 0; i < count; i++)
        if (memcmp(&x[i], &y[i], sizeof(float)) != 0) {
            fprintf(stderr, "  %s, %s: element %lld: %a vs %a\n", shape, what, (long long)i, x[i],
                    y[i]);
            return 0;
        }
    return 1;
}

static void test_case(int64_t m, int64_t n, int64_t k, bool a_transposed) {
    float *a = malloc(sizeof(float) * (size_t)(m * k)), *b = malloc(sizeof(float) * (size_t)(k * n));
    float *c0 = malloc(sizeof(float) * (size_t)(m * n)), *c1 = malloc(sizeof(float) * (size_t)(m * n));
    for (int64_t i = 0; i < m * k; i++) a[i] = uniform();
    for (int64_t i = 0; i < k * n; i++) b[i] = uniform();
    /* A[i][p] at a[i rsa + p csa]: row-major, or stored transposed */
    int64_t rsa = a_transposed ? 1 : k, csa = a_transposed ? m : 1;
    snprintf(shape, sizeof shape, "%lld x %lld x %lld%s", (long long)m, (long long)n, (long long)k,
             a_transposed ? " (A transposed)" : "");

    /* one call, overwrite */
    for (int64_t i = 0; i < m * n; i++) c0[i] = NAN;
    product(0, m, 0, n, k, a, rsa, csa, b, n, c0, true);
    double worst = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0, mag = 0;
            for (int64_t p = 0; p < k; p++) {
                s += (double)a[i * rsa + p * csa] * b[p * n + j];
                mag += fabs((double)a[i * rsa + p * csa] * b[p * n + j]);
            }
            double err = fabs(c0[i * n + j] - s) / (mag + 1e-30);
            if (err > worst) worst = err;
        }
    if (worst > 4e-6) fprintf(stderr, "  %s: relative error %g\n", shape, worst);
    CHECK(worst <= 4e-6);

    /* zeros + add, in pieces: m cut at 5, n cut at 7 and 21, k cut at DR_GEMM_KC */
    memset(c1, 0, sizeof(float) * (size_t)(m * n));
    int64_t mc[] = {0, m < 5 ? m : 5, m}, nc[] = {0, n < 7 ? n : 7, n < 21 ? n : 21, n};
    for (int64_t p0 = 0; p0 < k; p0 += DR_GEMM_KC) {
        int64_t kc = k - p0 < DR_GEMM_KC ? k - p0 : DR_GEMM_KC;
        for (int mi = 0; mi < 2; mi++)
            for (int ni = 0; ni < 3; ni++)
                if (mc[mi] < mc[mi + 1] && nc[ni] < nc[ni + 1])
                    product(mc[mi], mc[mi + 1], nc[ni], nc[ni + 1], kc, a + p0 * csa, rsa, csa,
                            b + p0 * n, n, c1, false);
    }
    CHECK(same_bits(c0, c1, m * n, "the product in pieces against one call"));

    /* A packed */
    float *pa = malloc(sizeof(float) * (size_t)((m + DR_GEMM_MR) * k));
    float *pb = malloc(sizeof(float) * (size_t)(dr_gemm_b_rows(k) * (n + DR_GEMM_NR)));
    dr_gemm_pack_a(pa, k, 0, a, rsa, csa, m, k);
    dr_gemm_pack_b(pb, b, n, 1, k, n);
    dr_gemm_packed_ab(m, n, k, pa, k, pb, c1, n, true);
    CHECK(same_bits(c0, c1, m * n, "A packed against A in place"));

    /* the other kernels: the C loop (0), AVX2 alone (1); c0 came from the default
     * (2: the AVX-512 pair kernel where the CPU has it) */
    int saved = dr_cpu_intrinsics;
    for (int level = 0; level < 2; level++) {
        dr_cpu_intrinsics = level;
        dr_gemm_packed_ab(m, n, k, pa, k, pb, c1, n, true);
        CHECK(same_bits(c0, c1, m * n, level ? "the AVX2 kernel against the default"
                                              : "the C kernel against the default"));
        dr_gemm_packed_b(m, n, k, a, rsa, csa, pb, c1, n, true);
        CHECK(same_bits(c0, c1, m * n, level ? "the AVX2 kernel, A in place"
                                              : "the C kernel, A in place"));
    }
    dr_cpu_intrinsics = saved;
    free(pa);
    free(pb);
    free(a);
    free(b);
    free(c0);
    free(c1);
}

int main(void) {
    const int64_t shapes[][3] = {
        {1, 1, 1},   {6, 16, 1},   {7, 17, 3},    {5, 15, 256}, {13, 40, 257},
        {12, 32, 600}, {31, 9, 513}, {72, 48, 100}, {80, 33, 777}, {145, 70, 64},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int t = 0; t < 2; t++) test_case(shapes[s][0], shapes[s][1], shapes[s][2], t);
    return check_summary("test_gemm");
}
