/* Float32 GEMM with a summation order fixed by k alone (conv2d's forward and
 * backward run on it, cpu_conv.c):
 *   c[m x n] += A[m x k] B[k x n]      (or c = A B: overwrite)
 * A is read in place through strides (a[i rsa + p csa]) or packed in panels of MR
 * rows (dr_gemm_pack_a); B comes packed in panels of NR columns (dr_gemm_b_index).
 * The sum over p runs in blocks of KC: each block's products are fused
 * multiply-adds into an accumulator starting at zero, in order of p, and the
 * block's sum is then added to c. So an element of c gets the same bits whichever
 * m x n tile it is computed in and however the caller splits m and n between calls
 * or threads, unlike OpenBLAS, whose kernels differ with the sizes they are given.
 *
 * The kernel computes MR x NR = 6 x 16 of c in twelve AVX2 registers (BLIS's
 * Haswell shape) where the CPU has AVX2 + FMA, or in a C loop with fmaf: the same
 * roundings, so the same bits, only slower (much slower on a CPU without FMA,
 * where fmaf is done in software). Where the CPU has AVX-512, whole pairs of B
 * panels run a 6 x 32 kernel in twelve 16-lane registers, the same sums again.
 * Edge tiles run the 6 x 16 kernel on a copy of c padded to 6 x 16 (and of A,
 * with zero rows, where A is not packed). Loops: rows of c in blocks of MC (kept
 * in L2 while the k blocks add up), then k blocks, then B's panels, then A's. */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_vecmath.h"

enum { MR = DR_GEMM_MR, NR = DR_GEMM_NR, KC = DR_GEMM_KC, MC = 72 };

/* c[MR x NR] (row stride ldc) += sum_p a_i[p] b[p][j] (add), or = it (!add: the
 * same bits as adding to zero, since a sum that starts at +0 is never -0). */
static void kernel_c(int64_t kc, const float *a, int64_t rsa, int64_t csa, const float *b,
                     float *c, int64_t ldc, int add) {
    float acc[MR][NR] = {{0}};
    for (int64_t p = 0; p < kc; p++)
        for (int i = 0; i < MR; i++) {
            float ai = a[i * rsa + p * csa];
            for (int j = 0; j < NR; j++) acc[i][j] = fmaf(ai, b[p * NR + j], acc[i][j]);
        }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) c[i * ldc + j] = add ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

#ifdef DR_HAVE_VEXPF8
DR_V3_FN static void kernel_v3(int64_t kc, const float *a, int64_t rsa, int64_t csa,
                               const float *b, float *c, int64_t ldc, int add) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a1 = a + rsa, *a2 = a + 2 * rsa, *a3 = a + 3 * rsa;
    const float *a4 = a + 4 * rsa, *a5 = a + 5 * rsa;
    for (int64_t p = 0, q = 0; p < kc; p++, q += csa, b += NR) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), t;
        t = _mm256_broadcast_ss(a0 + q);
        c00 = _mm256_fmadd_ps(t, b0, c00), c01 = _mm256_fmadd_ps(t, b1, c01);
        t = _mm256_broadcast_ss(a1 + q);
        c10 = _mm256_fmadd_ps(t, b0, c10), c11 = _mm256_fmadd_ps(t, b1, c11);
        t = _mm256_broadcast_ss(a2 + q);
        c20 = _mm256_fmadd_ps(t, b0, c20), c21 = _mm256_fmadd_ps(t, b1, c21);
        t = _mm256_broadcast_ss(a3 + q);
        c30 = _mm256_fmadd_ps(t, b0, c30), c31 = _mm256_fmadd_ps(t, b1, c31);
        t = _mm256_broadcast_ss(a4 + q);
        c40 = _mm256_fmadd_ps(t, b0, c40), c41 = _mm256_fmadd_ps(t, b1, c41);
        t = _mm256_broadcast_ss(a5 + q);
        c50 = _mm256_fmadd_ps(t, b0, c50), c51 = _mm256_fmadd_ps(t, b1, c51);
    }
#define DR_GEMM_STORE(i, lo, hi)                                                              \
    if (add) {                                                                                \
        lo = _mm256_add_ps(_mm256_loadu_ps(c + (i) * ldc), lo);                               \
        hi = _mm256_add_ps(_mm256_loadu_ps(c + (i) * ldc + 8), hi);                           \
    }                                                                                         \
    _mm256_storeu_ps(c + (i) * ldc, lo);                                                      \
    _mm256_storeu_ps(c + (i) * ldc + 8, hi)
    DR_GEMM_STORE(0, c00, c01);
    DR_GEMM_STORE(1, c10, c11);
    DR_GEMM_STORE(2, c20, c21);
    DR_GEMM_STORE(3, c30, c31);
    DR_GEMM_STORE(4, c40, c41);
    DR_GEMM_STORE(5, c50, c51);
#undef DR_GEMM_STORE
}
#endif

typedef void (*kernel_fn)(int64_t, const float *, int64_t, int64_t, const float *, float *,
                          int64_t, int);

static kernel_fn pick_kernel(void) {
#ifdef DR_HAVE_VEXPF8
    if (dr_cpu_use_v3()) return kernel_v3;
#endif
    return kernel_c;
}

#ifdef DR_HAVE_VEXPF8
/* Two panels of B at once (b and b + pstride), MR x 2 NR of c, on AVX-512: the same
 * sums as kernel_v3 on each panel (an element's chain of fused multiply-adds does
 * not depend on how many lanes run beside it), with a third of its instructions:
 * one 16-lane load per panel and row of B, no split halves. */
DR_V4_FN static void kernel_v4_pair(int64_t kc, const float *a, int64_t rsa, int64_t csa,
                                    const float *b, int64_t pstride, float *c, int64_t ldc,
                                    int add) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a1 = a + rsa, *a2 = a + 2 * rsa, *a3 = a + 3 * rsa;
    const float *a4 = a + 4 * rsa, *a5 = a + 5 * rsa;
    for (int64_t p = 0, q = 0; p < kc; p++, q += csa, b += NR) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + pstride), t;
        t = _mm512_set1_ps(a0[q]);
        c00 = _mm512_fmadd_ps(t, b0, c00), c01 = _mm512_fmadd_ps(t, b1, c01);
        t = _mm512_set1_ps(a1[q]);
        c10 = _mm512_fmadd_ps(t, b0, c10), c11 = _mm512_fmadd_ps(t, b1, c11);
        t = _mm512_set1_ps(a2[q]);
        c20 = _mm512_fmadd_ps(t, b0, c20), c21 = _mm512_fmadd_ps(t, b1, c21);
        t = _mm512_set1_ps(a3[q]);
        c30 = _mm512_fmadd_ps(t, b0, c30), c31 = _mm512_fmadd_ps(t, b1, c31);
        t = _mm512_set1_ps(a4[q]);
        c40 = _mm512_fmadd_ps(t, b0, c40), c41 = _mm512_fmadd_ps(t, b1, c41);
        t = _mm512_set1_ps(a5[q]);
        c50 = _mm512_fmadd_ps(t, b0, c50), c51 = _mm512_fmadd_ps(t, b1, c51);
    }
#define DR_GEMM_STORE(i, lo, hi)                                                              \
    if (add) {                                                                                \
        lo = _mm512_add_ps(_mm512_loadu_ps(c + (i) * ldc), lo);                               \
        hi = _mm512_add_ps(_mm512_loadu_ps(c + (i) * ldc + NR), hi);                          \
    }                                                                                         \
    _mm512_storeu_ps(c + (i) * ldc, lo);                                                      \
    _mm512_storeu_ps(c + (i) * ldc + NR, hi)
    DR_GEMM_STORE(0, c00, c01);
    DR_GEMM_STORE(1, c10, c11);
    DR_GEMM_STORE(2, c20, c21);
    DR_GEMM_STORE(3, c30, c31);
    DR_GEMM_STORE(4, c40, c41);
    DR_GEMM_STORE(5, c50, c51);
#undef DR_GEMM_STORE
}
#endif

/* The mi x nj tile of c at ct (mi <= MR, nj <= NR) += A's rows at ap times the B
 * panel bp. Edge tiles run the kernel on a copy of c padded to MR x NR, and of A
 * where its rows past m are not packed zeros (they would be read past its end). */
static void tile(kernel_fn kern, int64_t kc, const float *ap, int64_t rsa, int64_t csa,
                 bool a_packed, const float *bp, float *ct, int64_t ldc, int64_t mi, int64_t nj,
                 int add) {
    if (mi == MR && nj == NR) {
        kern(kc, ap, rsa, csa, bp, ct, ldc, add);
        return;
    }
    float t[MR * NR] = {0};
    for (int64_t r = 0; r < mi && add; r++)
        memcpy(t + r * NR, ct + r * ldc, (size_t)nj * sizeof(float));
    if (mi == MR || a_packed) {
        kern(kc, ap, rsa, csa, bp, t, NR, 1);
    } else {
        float at[KC * MR] = {0};
        for (int64_t r = 0; r < mi; r++)
            for (int64_t p = 0; p < kc; p++) at[p * MR + r] = ap[r * rsa + p * csa];
        kern(kc, at, 1, MR, bp, t, NR, 1);
    }
    for (int64_t r = 0; r < mi; r++) memcpy(ct + r * ldc, t + r * NR, (size_t)nj * sizeof(float));
}

/* The loops, for A[i][p] = a[(i / MR) psa + (i % MR) rsa + p csa]; a_packed: A is
 * in dr_gemm_pack_a's panels, rows past m included (zeros). */
static void gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t rsa, int64_t csa,
                 int64_t psa, bool a_packed, const float *pb, float *c, int64_t ldc,
                 bool overwrite) {
    kernel_fn kern = pick_kernel();
#ifdef DR_HAVE_VEXPF8
    bool pairs = dr_cpu_use_v4();
#endif
    int64_t npanels = (n + NR - 1) / NR;
    /* rows outer: a block of MC rows of c stays in L2 while the k blocks add up */
    for (int64_t i0 = 0; i0 < m; i0 += MC) {
        int64_t i1 = i0 + MC < m ? i0 + MC : m;
        for (int64_t p0 = 0; p0 < k; p0 += KC) {
            int64_t kc = k - p0 < KC ? k - p0 : KC;
            int add = !(overwrite && p0 == 0);
            for (int64_t jp = 0; jp < npanels; jp++) {
                const float *bp = pb + (jp * dr_gemm_b_rows(k) + p0) * NR;
                int64_t j0 = jp * NR, nj = n - j0 < NR ? n - j0 : NR;
#ifdef DR_HAVE_VEXPF8
                if (pairs && n - j0 >= 2 * NR) { /* this panel and the next, whole */
                    int64_t i = i0;
                    for (; i + MR <= i1; i += MR)
                        kernel_v4_pair(kc, a + i / MR * psa + p0 * csa, rsa, csa, bp,
                                       dr_gemm_b_rows(k) * NR, c + i * ldc + j0, ldc, add);
                    for (int64_t h = 0; h < 2 && i < i1; h++) /* rows left: a panel at a time */
                        tile(kern, kc, a + i / MR * psa + p0 * csa, rsa, csa, a_packed,
                             bp + h * dr_gemm_b_rows(k) * NR, c + i * ldc + j0 + h * NR, ldc,
                             i1 - i, NR, add);
                    jp++;
                    continue;
                }
#endif
                for (int64_t i = i0; i < i1; i += MR)
                    tile(kern, kc, a + i / MR * psa + p0 * csa, rsa, csa, a_packed, bp,
                         c + i * ldc + j0, ldc, i1 - i < MR ? i1 - i : MR, nj, add);
            }
        }
    }
}

void dr_gemm_packed_b(int64_t m, int64_t n, int64_t k, const float *a, int64_t rsa, int64_t csa,
                      const float *pb, float *c, int64_t ldc, bool overwrite) {
    gemm(m, n, k, a, rsa, csa, MR * rsa, false, pb, c, ldc, overwrite);
}

void dr_gemm_packed_ab(int64_t m, int64_t n, int64_t k, const float *pa, int64_t depth,
                       const float *pb, float *c, int64_t ldc, bool overwrite) {
    gemm(m, n, k, pa, 1, MR, MR * depth, true, pb, c, ldc, overwrite);
}

void dr_gemm_pack_a(float *dst, int64_t depth, int64_t p0, const float *a, int64_t rsa,
                    int64_t csa, int64_t m, int64_t k) {
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
        float *panel = dst + i0 * depth + p0 * MR;
        int64_t mi = m - i0 < MR ? m - i0 : MR;
        const float *src = a + i0 * rsa;
        /* p outer: a transposed A (rsa 1) is read MR floats at a time */
        for (int64_t p = 0; p < k; p++) {
            for (int64_t i = 0; i < mi; i++) panel[p * MR + i] = src[i * rsa + p * csa];
            for (int64_t i = mi; i < MR; i++) panel[p * MR + i] = 0.0f;
        }
    }
}

void dr_gemm_pack_b(float *dst, const float *b, int64_t rsb, int64_t csb, int64_t k, int64_t n) {
    int64_t full = n / NR * NR;
    for (int64_t p = 0; p < k; p++) {
        const float *row = b + p * rsb;
        if (csb == 1)
            for (int64_t j = 0; j < full; j += NR)
                memcpy(dst + dr_gemm_b_index(k, p, j), row + j, NR * sizeof(float));
        else
            for (int64_t j = 0; j < full; j++) dst[dr_gemm_b_index(k, p, j)] = row[j * csb];
        if (full < n) {
            float *d = dst + dr_gemm_b_index(k, p, full);
            for (int64_t j = full; j < full + NR; j++) d[j - full] = j < n ? row[j * csb] : 0.0f;
        }
    }
}
