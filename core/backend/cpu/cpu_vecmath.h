/* Float math written so the compiler vectorises the loops that use it (glibc's
 * expf is one call per element), and DR_CPU_CLONES, which compiles a hot loop a
 * second time for x86-64-v3 (AVX2 + FMA), picked at load time by the CPU it
 * runs on.
 *
 * Including this header compiles the rest of the file without -ftrapping-math:
 * a select on a float compare (x < lo ? lo : x) may then become a vector blend.
 * Results are unchanged; only the FP exception flags, which nothing reads, may
 * differ. Otherwise GCC keeps such loops scalar. (errno cannot be switched off
 * this way, so loops over sqrtf/logf stay scalar.)
 *
 * dr_vexpf: Cephes' expf (x = k ln2 + r with ln2 split in two, a degree-6
 * polynomial in r), within 1.4 ulp of exp over the normal range; inf above
 * 88.72, subnormals correctly scaled below -87.3 and 0 below -103.9, NaN kept.
 * 2^k is applied as two halves so k down to -150 needs no branch; no integer
 * step can overflow, so a NaN lane's garbage exponent is harmless.
 * dr_vtanhf: Cephes' tanhf, an odd polynomial below |x| = 0.625 and
 * 1 - 2/(exp(2|x|) + 1) above, both computed and one picked (no branch).
 * dr_verfcf: erfc by Numerical Recipes' erfcc (Chebyshev fit in t = 1/(1 + |z|/2)
 * inside one exp, relative error < 1.2e-7 for z >= 0; 2 - erfc(-z) below 0).
 * In float, relative error < 1e-6 for |z| < 2, < 2e-6 for |z| < 3, then growing
 * with the rounding of z^2 (4e-6 at z = 4). No 1 + erf cancellation: the normal CDF
 * 0.5 erfc(-x/sqrt 2) keeps its relative accuracy in the left tail. */
#ifndef DR_CPU_VECMATH_H
#define DR_CPU_VECMATH_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && \
    defined(__linux__)
#define DR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DR_CPU_CLONES
#endif

static inline float dr_vexpf(float x) {
    x = x < -104.0f ? -104.0f : x; /* comparisons are false for NaN: it passes */
    x = x > 89.0f ? 89.0f : x;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504088896341f + shifter;
    float kf = t - shifter;
    uint32_t tb;
    memcpy(&tb, &t, 4);
    int32_t k = (int32_t)(tb - 0x4B400000u); /* the integer in t's low mantissa bits */
    float r = x - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t k1 = k >> 1, k2 = k - k1; /* arithmetic shift (GCC): floor(k / 2) */
    uint32_t b1 = ((uint32_t)k1 + 127u) << 23, b2 = ((uint32_t)k2 + 127u) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return p * s1 * s2;
}

/* dr_vexpf on 8 lanes, written with AVX2 + FMA intrinsics for the loops whose time
 * is mostly exp (attention's softmax tiles, silu, softmax rows): the same operations in the same order
 * as GCC's vectorisation of dr_vexpf in a DR_CPU_CLONES function (its FMA
 * contractions included), so the same bits for every float (tests/test_vecmath.c
 * compares them), in fewer instructions: the clamps are one max and one min (which
 * return their second operand, x, for NaN) instead of compares and blends. Only
 * for functions compiled with target("avx2,fma") on a CPU that has them. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
#define DR_HAVE_VEXPF8 1
/* For functions written with these intrinsics: AVX2 + FMA, and no FMA contraction
 * (GCC would otherwise fuse a _mm256_mul_ps into a following _mm256_add_ps), so
 * each intrinsic is one rounding, as written. */
#define DR_V3_FN __attribute__((target("avx2,fma"), optimize("fp-contract=off")))
/* exp(x) as the product (p 2^k1) 2^k2: returns the first factor and puts 2^k2 in
 * *s2, for callers that fuse the last multiplication as GCC does (1 + exp(-x) in a
 * sigmoid becomes fma(p 2^k1, 2^k2, 1) in the clones' code). */
DR_V3_FN __attribute__((always_inline)) static inline __m256
dr_vexpf8_parts(__m256 x, __m256 *s2) {
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    const __m256 shifter = _mm256_set1_ps(12582912.0f);
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), shifter);
    __m256 kf = _mm256_sub_ps(t, shifter);
    __m256i k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000));
    __m256 r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(kf, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i k1 = _mm256_srai_epi32(k, 1), k2 = _mm256_sub_epi32(k, k1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    *s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
    return _mm256_mul_ps(p, s1);
}

DR_V3_FN __attribute__((always_inline)) static inline __m256 dr_vexpf8(__m256 x) {
    __m256 s2;
    __m256 ps1 = dr_vexpf8_parts(x, &s2);
    return _mm256_mul_ps(ps1, s2);
}

/* The same on 16 lanes, for CPUs with AVX-512 (x86-64-v4): the same operations on
 * each lane, so the same bits, in half the instructions (which is what a loop of
 * exps is short of: its chain of dependent steps is long, and the out-of-order
 * window holds twice as many elements). */
#define DR_V4_FN                                                                               \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512cd,avx2,fma"),          \
                   optimize("fp-contract=off")))
/* dr_vexpf16's steps up to the polynomial: the clamps, k = round(x / ln2) (as the
 * float kf, and in the low mantissa bits of *t) and p = exp(x - k ln2). */
DR_V4_FN __attribute__((always_inline)) static inline __m512
dr_vexpf16_poly(__m512 x, __m512 *t_out, __m512 *kf_out) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    const __m512 shifter = _mm512_set1_ps(12582912.0f);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), shifter);
    __m512 kf = _mm512_sub_ps(t, shifter);
    __m512 r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(kf, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    *t_out = t;
    *kf_out = kf;
    return _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
}

DR_V4_FN __attribute__((always_inline)) static inline __m512
dr_vexpf16_parts(__m512 x, __m512 *s2) {
    __m512 t, kf;
    __m512 p = dr_vexpf16_poly(x, &t, &kf);
    __m512i k = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000));
    __m512i k1 = _mm512_srai_epi32(k, 1), k2 = _mm512_sub_epi32(k, k1);
    const __m512i bias = _mm512_set1_epi32(127);
    __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k1, bias), 23));
    *s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k2, bias), 23));
    return _mm512_mul_ps(p, s1);
}

/* The whole exp on 16 lanes, with (p 2^k1) 2^k2 as one vscalefps: p 2^k rounded
 * once, as there (p 2^k1 is exact, k1 being at least -75; only the last product
 * rounds, to the same nearest float, subnormal or infinite), in one instruction
 * instead of nine. For loops that use the whole product. */
DR_V4_FN __attribute__((always_inline)) static inline __m512 dr_vexpf16(__m512 x) {
    __m512 t, kf;
    __m512 p = dr_vexpf16_poly(x, &t, &kf);
    return _mm512_scalef_ps(p, kf);
}

/* dr_verfcf on 16 lanes: its operations in GCC's order and contractions (1 + a/2,
 * the Estrin steps and p - a^2 fused), with dr_vexpf16 for its exp: the same bits. */
DR_V4_FN __attribute__((always_inline)) static inline __m512 dr_verfcf16(__m512 z) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __mmask16 neg = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 a = _mm512_mask_xor_ps(z, neg, z, _mm512_set1_ps(-0.0f));
    __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), one));
    __m512 t2 = _mm512_mul_ps(t, t), t4 = _mm512_mul_ps(t2, t2), t8 = _mm512_mul_ps(t4, t4);
    __m512 q0 = _mm512_fmadd_ps(t, _mm512_set1_ps(1.00002368f), _mm512_set1_ps(-1.26551223f));
    __m512 q1 = _mm512_fmadd_ps(t, _mm512_set1_ps(0.09678418f), _mm512_set1_ps(0.37409196f));
    __m512 q2 = _mm512_fmadd_ps(t, _mm512_set1_ps(0.27886807f), _mm512_set1_ps(-0.18628806f));
    __m512 q3 = _mm512_fmadd_ps(t, _mm512_set1_ps(1.48851587f), _mm512_set1_ps(-1.13520398f));
    __m512 q4 = _mm512_fmadd_ps(t, _mm512_set1_ps(0.17087277f), _mm512_set1_ps(-0.82215223f));
    __m512 p = _mm512_fmadd_ps(_mm512_fmadd_ps(q3, t2, q2), t4, _mm512_fmadd_ps(q1, t2, q0));
    p = _mm512_fmadd_ps(q4, t8, p);
    __m512 r = _mm512_mul_ps(t, dr_vexpf16(_mm512_fnmadd_ps(a, a, p)));
    return _mm512_mask_sub_ps(r, neg, _mm512_set1_ps(2.0f), r);
}
#endif

static inline float dr_vtanhf(float x) {
    float a = x < 0.0f ? -x : x;
    float e = dr_vexpf(a + a);
    float big = 1.0f - 2.0f / (e + 1.0f);
    big = x < 0.0f ? -big : big;
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;
    return a < 0.625f ? small : big;
}

static inline float dr_verfcf(float z) {
    float a = z < 0.0f ? -z : z;
    float t = 1.0f / (1.0f + 0.5f * a);
    /* the degree-9 polynomial in Estrin's form: a shorter dependency chain */
    float t2 = t * t, t4 = t2 * t2, t8 = t4 * t4;
    float q0 = 1.00002368f * t - 1.26551223f, q1 = 0.09678418f * t + 0.37409196f;
    float q2 = 0.27886807f * t - 0.18628806f, q3 = 1.48851587f * t - 1.13520398f;
    float q4 = 0.17087277f * t - 0.82215223f;
    float p = (q0 + q1 * t2) + (q2 + q3 * t2) * t4 + q4 * t8;
    float r = t * dr_vexpf(p - a * a);
    return z < 0.0f ? 2.0f - r : r;
}

#endif
