/* float16 / bfloat16 conversions of core/util/half.h: exhaustive checks over all
 * 65536 bit patterns, every rounding tie, known values, and a comparison with a
 * slow reference (double arithmetic, round-to-nearest-even) on random floats. */
#include <stdint.h>

#include "check.h"
#include "util/half.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t next_u32(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static int f16_is_nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0; }
static int bf16_is_nan(uint16_t h) { return (h & 0x7F80) == 0x7F80 && (h & 0x007F) != 0; }

/* ---- slow references ------------------------------------------------------ */

static double ref_f16_value(uint16_t h) {
    int e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return h & 0x8000 ? -v : v;
}

/* |x| rounded to `digits` significant bits (ties to even), exponents below
 * min_exp flushed into the subnormal grid of quantum 2^(min_exp - digits + 1). */
static double ref_round(double a, int digits, int min_exp) {
    int e;
    frexp(a, &e);
    int exp2 = e - 1 < min_exp ? min_exp : e - 1;
    double q = ldexp(1.0, exp2 - (digits - 1));
    return nearbyint(a / q) * q;
}

static uint16_t ref_f32_to_f16(float f) {
    uint16_t sign = (uint16_t)((dr_f32_bits(f) >> 16) & 0x8000);
    if (isnan(f)) return sign | 0x7E00;
    double v = ref_round(fabs((double)f), 11, -14);
    if (v >= 65536.0) return sign | 0x7C00;
    if (v < 0x1p-14) return sign | (uint16_t)(v * 0x1p24); /* zero or subnormal */
    int e;
    frexp(v, &e);
    uint16_t mant = (uint16_t)(ldexp(v, 1 - e) * 1024.0 - 1024.0);
    return sign | (uint16_t)((e - 1 + 15) << 10) | mant;
}

static uint16_t ref_f32_to_bf16(float f) {
    if (isnan(f)) return 0x7FC0;
    double v = ref_round(fabs((double)f), 8, -126);
    if (v >= 0x1p128) v = INFINITY;
    float r = (float)(signbit(f) ? -v : v); /* exact: v has at most 8 significant bits */
    return (uint16_t)(dr_f32_bits(r) >> 16);
}

/* ---- float16 --------------------------------------------------------------- */

static void test_f16_to_f32_exhaustive(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float got = dr_f16_to_f32((uint16_t)h);
        double want = ref_f16_value((uint16_t)h);
        int ok = isnan(want) ? isnan(got) : (got == want && !signbit(got) == !signbit(want));
        if (!ok && bad++ < 5) fprintf(stderr, "  f16 0x%04x -> %a, expected %a\n", h, got, want);
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_f16_round_trip_exhaustive(void) {
    int bad = 0, nan_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t back = dr_f32_to_f16(dr_f16_to_f32((uint16_t)h));
        if (f16_is_nan((uint16_t)h)) {
            if (!f16_is_nan(back)) nan_bad++;
        } else if (back != h && bad++ < 5) {
            fprintf(stderr, "  f16 0x%04x round-trips to 0x%04x\n", h, back);
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(nan_bad, 0);
}

static void test_f16_nan(void) {
    CHECK(f16_is_nan(dr_f32_to_f16(NAN)));
    CHECK(f16_is_nan(dr_f32_to_f16(-NAN)));
    CHECK(f16_is_nan(dr_f32_to_f16(dr_f32_from_bits(0x7F800001u)))); /* signalling */
    CHECK(f16_is_nan(dr_f32_to_f16(dr_f32_from_bits(0x7FC00000u))));
    CHECK(f16_is_nan(dr_f32_to_f16(dr_f32_from_bits(0xFFFFFFFFu))));
    CHECK(isnan(dr_f16_to_f32(0x7E00)));
    CHECK(isnan(dr_f16_to_f32(0x7C01)));
    CHECK(isnan(dr_f16_to_f32(0xFFFF)));
}

typedef struct f2h { float f; uint16_t h; } f2h;

static void test_f16_known_values(void) {
    static const f2h table[] = {
        {1.0f, 0x3C00},          {-2.0f, 0xC000},          {0.5f, 0x3800},
        {65504.0f, 0x7BFF},      {65519.99f, 0x7BFF},      {65520.0f, 0x7C00},
        {1e10f, 0x7C00},         {INFINITY, 0x7C00},       {-INFINITY, 0xFC00},
        {0x1p-24f, 0x0001},      {0x1p-25f, 0x0000},       {0x1.8p-25f, 0x0001},
        {0x1.8p-24f, 0x0002},    {0x1p-14f, 0x0400},       {0x1.ff8p-15f, 0x03FF},
        {0x1.ffcp-15f, 0x0400},
        {1e-10f, 0x0000},        {0.0f, 0x0000},           {-0.0f, 0x8000},
        {1.0f + 0x1p-11f, 0x3C00}, {1.0f + 3 * 0x1p-11f, 0x3C02}, {1.0f + 0x1p-10f, 0x3C01},
        {-(1.0f + 3 * 0x1p-11f), 0xBC02}, {0.1f, 0x2E66}, {3.14159265f, 0x4248},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        uint16_t got = dr_f32_to_f16(table[i].f);
        if (!CHECK_EQ_INT(got, table[i].h)) fprintf(stderr, "    for %a\n", table[i].f);
    }
}

/* Every midpoint between neighbouring finite f16 values rounds to the even one,
 * and one f32 ulp either side rounds to the nearer. */
static void test_f16_ties_exhaustive(void) {
    int bad = 0;
    for (uint16_t h = 0; h < 0x7BFF; h++) {
        float lo = dr_f16_to_f32(h), hi = dr_f16_to_f32((uint16_t)(h + 1));
        float mid = lo + (hi - lo) / 2;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
        const f2h cases[] = {{mid, even}, {nextafterf(mid, 0), h},
                             {nextafterf(mid, INFINITY), (uint16_t)(h + 1)},
                             {-mid, (uint16_t)(even | 0x8000)}};
        for (int c = 0; c < 4; c++) {
            uint16_t got = dr_f32_to_f16(cases[c].f);
            if (got != cases[c].h && bad++ < 5)
                fprintf(stderr, "  f16 tie %a -> 0x%04x, expected 0x%04x\n", cases[c].f, got,
                        cases[c].h);
        }
    }
    CHECK_EQ_INT(bad, 0);
}

/* Random f32 bit patterns: half with exponents around the f16 range, half anywhere. */
static float random_float(int i) {
    uint32_t u = next_u32();
    if (i % 2 == 0) {
        uint32_t exp = 96 + next_u32() % 60; /* 2^-31 .. 2^28 */
        u = (u & 0x807FFFFFu) | (exp << 23);
    }
    return dr_f32_from_bits(u);
}

static void test_f16_against_reference_random(void) {
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        float f = random_float(i);
        uint16_t got = dr_f32_to_f16(f), want = ref_f32_to_f16(f);
        int ok = isnan(f) ? f16_is_nan(got) : got == want;
        if (!ok && bad++ < 5)
            fprintf(stderr, "  f16(%a) = 0x%04x, expected 0x%04x\n", f, got, want);
    }
    CHECK_EQ_INT(bad, 0);
}

/* ---- bfloat16 -------------------------------------------------------------- */

static void test_bf16_exhaustive(void) {
    int bad_value = 0, bad_trip = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dr_bf16_to_f32((uint16_t)h);
        if (dr_f32_bits(f) != h << 16) bad_value++;
        uint16_t back = dr_f32_to_bf16(f);
        if (bf16_is_nan((uint16_t)h) ? !bf16_is_nan(back) : back != h) bad_trip++;
    }
    CHECK_EQ_INT(bad_value, 0);
    CHECK_EQ_INT(bad_trip, 0);
}

static void test_bf16_ties_exhaustive(void) {
    int bad = 0;
    for (uint16_t h = 0; h < 0x7F7F; h++) {
        float lo = dr_bf16_to_f32(h), hi = dr_bf16_to_f32((uint16_t)(h + 1));
        float mid = lo + (hi - lo) / 2;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
        const f2h cases[] = {{mid, even}, {nextafterf(mid, 0), h},
                             {nextafterf(mid, INFINITY), (uint16_t)(h + 1)},
                             {-mid, (uint16_t)(even | 0x8000)}};
        for (int c = 0; c < 4; c++) {
            uint16_t got = dr_f32_to_bf16(cases[c].f);
            if (got != cases[c].h && bad++ < 5)
                fprintf(stderr, "  bf16 tie %a -> 0x%04x, expected 0x%04x\n", cases[c].f, got,
                        cases[c].h);
        }
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_bf16_known_values(void) {
    static const f2h table[] = {
        {1.0f, 0x3F80},                {-2.0f, 0xC000},
        {1.0f + 0x1p-8f, 0x3F80},      {1.0f + 3 * 0x1p-8f, 0x3F82}, /* ties to even */
        {1.0f + 0x1p-8f + 0x1p-20f, 0x3F81},
        {INFINITY, 0x7F80},            {-INFINITY, 0xFF80},
        {0x1.fffffep127f, 0x7F80},     /* FLT_MAX rounds up to inf */
        {0x1.fep127f, 0x7F7F},         /* largest finite bf16 */
        {0x1p-133f, 0x0001},           {-0.0f, 0x8000},
        {3.14159265f, 0x4049},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        uint16_t got = dr_f32_to_bf16(table[i].f);
        if (!CHECK_EQ_INT(got, table[i].h)) fprintf(stderr, "    for %a\n", table[i].f);
    }
    /* NaNs stay NaN, including signalling NaNs whose payload is all in the low bits
     * (plain truncation would turn them into infinity). */
    static const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu,
                                    0x7F80FFFFu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++)
        CHECK(bf16_is_nan(dr_f32_to_bf16(dr_f32_from_bits(nans[i]))));
    CHECK(isnan(dr_bf16_to_f32(0x7FC0)));
}

static void test_bf16_against_reference_random(void) {
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        float f = random_float(i);
        uint16_t got = dr_f32_to_bf16(f), want = ref_f32_to_bf16(f);
        int ok = isnan(f) ? bf16_is_nan(got) : got == want;
        if (!ok && bad++ < 5)
            fprintf(stderr, "  bf16(%a) = 0x%04x, expected 0x%04x\n", f, got, want);
    }
    CHECK_EQ_INT(bad, 0);
}

int main(void) {
    test_f16_to_f32_exhaustive();
    test_f16_round_trip_exhaustive();
    test_f16_nan();
    test_f16_known_values();
    test_f16_ties_exhaustive();
    test_f16_against_reference_random();
    test_bf16_exhaustive();
    test_bf16_ties_exhaustive();
    test_bf16_known_values();
    test_bf16_against_reference_random();
    return check_summary("test_half");
}
