/* The strict JSON parser of core/io (json.h): values and their types, exact int64,
 * strings with escapes and surrogate pairs, the strictness rules with the byte
 * offset in each error, limits on depth and memory, duplicate keys, the string
 * writer (serde_json's escapes) and a round trip, and random mutations that must
 * never crash. */
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "io/json.h"

/* Parses `text` (NUL-terminated), checks it succeeds, returns the doc. */
static dr_json_doc *parse_ok(const char *text) {
    dr_json_doc *doc = NULL;
    if (!CHECK_OK(dr_json_parse(text, strlen(text), NULL, "test", &doc))) {
        fprintf(stderr, "    input: %s\n", text);
        return NULL;
    }
    return doc;
}

/* Checks that `text` fails with `needle` in the message. */
static void parse_fails(const char *text, size_t len, const char *needle) {
    dr_json_doc *doc = (dr_json_doc *)1;
    int ok = CHECK_FAILS(dr_json_parse(text, len, NULL, "ctx", &doc), DR_ERR_IO, needle);
    ok &= CHECK(doc == NULL);
    if (!ok) fprintf(stderr, "    input: %.*s\n", (int)len, text);
    ok = strncmp(dr_last_error(), "ctx: ", 5) == 0;
    CHECK(ok);
}
#define FAILS(lit, needle) parse_fails(lit, sizeof(lit) - 1, needle)

static void test_scalars(void) {
    dr_json_doc *d;
    if ((d = parse_ok(" null "))) CHECK_EQ_INT(dr_json_root(d)->type, DR_JSON_NULL), dr_json_free(d);
    if ((d = parse_ok("true"))) {
        CHECK(dr_json_root(d)->type == DR_JSON_BOOL && dr_json_root(d)->u.b);
        dr_json_free(d);
    }
    if ((d = parse_ok("\t\r\nfalse\n"))) {
        CHECK(dr_json_root(d)->type == DR_JSON_BOOL && !dr_json_root(d)->u.b);
        CHECK_EQ_INT(dr_json_root(d)->offset, 3);
        dr_json_free(d);
    }
    static const struct { const char *text; int64_t v; } ints[] = {
        {"0", 0}, {"-0", 0}, {"42", 42}, {"-17", -17},
        {"9223372036854775807", INT64_MAX}, {"-9223372036854775808", INT64_MIN},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (!(d = parse_ok(ints[i].text))) continue;
        CHECK_EQ_INT(dr_json_root(d)->type, DR_JSON_INT);
        CHECK(dr_json_root(d)->u.i == ints[i].v);
        dr_json_free(d);
    }
    static const struct { const char *text; double v; } nums[] = {
        {"0.1", 0.1}, {"-2.5e-3", -2.5e-3}, {"1E+2", 100.0}, {"1e2", 100.0},
        {"9223372036854775808", 9223372036854775808.0}, /* beyond int64: a double */
        {"-9223372036854775809", -9223372036854775809.0}, {"3.0", 3.0},
        {"1e-400", 0.0}, {"123456789012345678901234567890", 1.2345678901234568e29},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (!(d = parse_ok(nums[i].text))) continue;
        CHECK_EQ_INT(dr_json_root(d)->type, DR_JSON_NUMBER);
        CHECK_NEAR(dr_json_root(d)->u.d, nums[i].v, 0);
        CHECK_NEAR(dr_json_number(dr_json_root(d)), nums[i].v, 0);
        dr_json_free(d);
    }
}

static void test_strings(void) {
    static const struct { const char *text; const char *want; size_t len; } cases[] = {
        {"\"\"", "", 0},
        {"\"abc\"", "abc", 3},
        {"\"a\\\"b\\\\c\\/d\"", "a\"b\\c/d", 7},
        {"\"\\b\\f\\n\\r\\t\"", "\b\f\n\r\t", 5},
        {"\"\\u00e9\\u00E9\"", "\xc3\xa9\xc3\xa9", 4},
        {"\"\\u20ac\"", "\xe2\x82\xac", 3},
        {"\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4}, /* a surrogate pair */
        {"\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf", 4},  /* U+10FFFF */
        {"\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
         "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14},
        {"\"a\\u0000b\"", "a\0b", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dr_json_doc *d = parse_ok(cases[i].text);
        if (!d) continue;
        const dr_json *r = dr_json_root(d);
        CHECK_EQ_INT(r->type, DR_JSON_STRING);
        CHECK_EQ_INT(r->len, cases[i].len);
        if (!CHECK(memcmp(r->u.s, cases[i].want, cases[i].len) == 0 && r->u.s[r->len] == 0))
            fprintf(stderr, "    input: %s\n", cases[i].text);
        dr_json_free(d);
    }
}

static void test_containers(void) {
    dr_json_doc *d = parse_ok("{\"a\": [1, 2.5, \"x\", [], {}], \"b\": {\"c\": null}, \"\": true}");
    if (!d) return;
    const dr_json *r = dr_json_root(d), *a = dr_json_get(r, "a"), *b = dr_json_get(r, "b");
    CHECK_EQ_INT(r->type, DR_JSON_OBJECT);
    CHECK_EQ_INT(r->len, 3);
    CHECK(strcmp(r->u.members[0].key, "a") == 0 && strcmp(r->u.members[2].key, "") == 0);
    if (CHECK(a && a->type == DR_JSON_ARRAY && a->len == 5)) {
        CHECK_EQ_INT(a->u.items[0].u.i, 1);
        CHECK_EQ_INT(a->u.items[0].offset, 7);
        CHECK_NEAR(a->u.items[1].u.d, 2.5, 0);
        CHECK(strcmp(a->u.items[2].u.s, "x") == 0);
        CHECK(a->u.items[3].type == DR_JSON_ARRAY && a->u.items[3].len == 0);
        CHECK(a->u.items[4].type == DR_JSON_OBJECT && a->u.items[4].len == 0);
    }
    CHECK(b && dr_json_get(b, "c") && dr_json_get(b, "c")->type == DR_JSON_NULL);
    CHECK(dr_json_get(r, "missing") == NULL);
    CHECK(dr_json_get(a, "a") == NULL); /* not an object */
    CHECK(dr_json_get(r, "")->type == DR_JSON_BOOL);
    CHECK(strcmp(dr_json_type_name(DR_JSON_OBJECT), "object") == 0);
    CHECK(isnan(dr_json_number(b)));
    dr_json_free(d);
    dr_json_free(NULL);
}

static void test_errors(void) {
    FAILS("", "at byte 0: expected a value, got the end of the input");
    FAILS("   ", "at byte 3: expected a value");
    FAILS("[1,]", "at byte 3: expected a value, got ']'");
    FAILS("{\"a\":1,}", "at byte 7: expected a string key, got '}'");
    FAILS("[1 2]", "at byte 3: expected ',' or ']' in the array that starts at byte 0, got '2'");
    FAILS("{\"a\" 1}", "at byte 5: expected ':' after the key");
    FAILS("{a:1}", "at byte 1: expected a string key, got 'a'");
    FAILS("{\"a\":1", "expected ',' or '}' in the object that starts at byte 0, got the end");
    FAILS("[", "at byte 1: expected a value, got the end of the input");
    FAILS("01", "at byte 0: leading zeros");
    FAILS("-01", "leading zeros");
    FAILS("1.", "at byte 2: expected a digit after the decimal point");
    FAILS(".5", "expected a value, got '.'");
    FAILS("1e", "expected a digit in the exponent");
    FAILS("1e+", "expected a digit in the exponent");
    FAILS("-", "at byte 1: expected a digit");
    FAILS("+1", "expected a value, got '+'");
    FAILS("NaN", "expected a value, got 'N'");
    FAILS("Infinity", "expected a value");
    FAILS("-Infinity", "expected a digit");
    FAILS("1e999", "number out of the range of a double");
    FAILS("tru", "expected a value");
    FAILS("nul", "expected a value");
    FAILS("true false", "at byte 5: unexpected 'f' after the value");
    FAILS("{} x", "unexpected 'x' after the value");
    FAILS("1\0", "unexpected byte 0x00 after the value");
    FAILS("\xef\xbb\xbf{}", "expected a value, got byte 0xef"); /* no BOM */
    FAILS("\"abc", "at byte 0: unterminated string");
    FAILS("\"abc\\\"", "unterminated string");
    FAILS("\"a\\x\"", "at byte 2: invalid escape '\\x'");
    FAILS("\"\\u12\"", "\\u must be followed by four hex digits");
    FAILS("\"\\u12g4\"", "four hex digits");
    FAILS("\"\\ud800\"", "high surrogate \\ud800 is not followed by a low surrogate");
    FAILS("\"\\ud800\\u0041\"", "not followed by a low surrogate");
    FAILS("\"\\ud800\\ud800\"", "not followed by a low surrogate");
    FAILS("\"\\udc00\"", "lone low surrogate \\udc00");
    FAILS("\"a\tb\"", "at byte 2: control character 0x09 in a string must be escaped");
    FAILS("\"a\nb\"", "control character 0x0a");
    FAILS("\"\xff\"", "at byte 1: invalid UTF-8 byte 0xff");
    FAILS("\"\xc0\xaf\"", "invalid UTF-8 byte 0xc0");     /* overlong '/' */
    FAILS("\"\xed\xa0\x80\"", "invalid UTF-8 byte 0xed"); /* an encoded surrogate */
    FAILS("\"\xe2\x82\"", "invalid UTF-8 byte 0xe2");     /* truncated */
    FAILS("\"\xf4\x90\x80\x80\"", "invalid UTF-8");        /* > U+10FFFF */
    FAILS("{\"a\":1,\"b\":2,\"a\":3}",
          "at byte 13: duplicate key 'a' in the object that starts at byte 0");
    FAILS("[{\"k\\u0000\":1,\"k\\u0000\":2}]", "duplicate key 'k\\x00'");
    FAILS("[1]]", "unexpected ']' after the value");
}

/* Duplicate keys in a big object (the sorted path) and none in a big one. */
static void test_large_objects(void) {
    char *buf = malloc(64 * 1000 + 16);
    size_t n = 0;
    buf[n++] = '{';
    for (int i = 0; i < 1000; i++) n += (size_t)sprintf(buf + n, "%s\"key%d\":%d", i ? "," : "", i, i);
    buf[n++] = '}';
    dr_json_doc *d = NULL;
    if (CHECK_OK(dr_json_parse(buf, n, NULL, "big", &d))) {
        CHECK_EQ_INT(dr_json_root(d)->len, 1000);
        CHECK_EQ_INT(dr_json_get(dr_json_root(d), "key999")->u.i, 999);
        dr_json_free(d);
    }
    n -= 1;
    n += (size_t)sprintf(buf + n, ",\"key500\":0}");
    CHECK_FAILS(dr_json_parse(buf, n, NULL, "big", &d), DR_ERR_IO, "duplicate key 'key500'");
    free(buf);
}

static void test_limits(void) {
    enum { DEEP = 200 };
    char deep[2 * DEEP + 1];
    for (int depth = 127; depth <= 129; depth++) {
        size_t n = 0;
        for (int i = 0; i < depth; i++) deep[n++] = '[';
        for (int i = 0; i < depth; i++) deep[n++] = ']';
        dr_json_doc *d = NULL;
        if (depth <= 128) {
            CHECK_OK(dr_json_parse(deep, n, NULL, "deep", &d));
            dr_json_free(d);
        } else {
            CHECK_FAILS(dr_json_parse(deep, n, NULL, "deep", &d), DR_ERR_IO,
                        "at byte 128: arrays and objects nested deeper than 128 levels");
        }
    }
    dr_json_limits lim = {.max_depth = 3};
    dr_json_doc *d = NULL;
    CHECK_OK(dr_json_parse("[{\"a\":[]}]", 10, &lim, "lim", &d));
    dr_json_free(d);
    CHECK_FAILS(dr_json_parse("[{\"a\":[[]]}]", 12, &lim, "lim", &d), DR_ERR_IO, "deeper than 3");
    /* Memory: a long array of small numbers under a 100 kB cap. */
    size_t n = 200000;
    char *big = malloc(2 * n + 2);
    big[0] = '[';
    for (size_t i = 0; i < n; i++) big[1 + 2 * i] = '0', big[2 + 2 * i] = ',';
    big[2 * n] = ']';
    lim = (dr_json_limits){.max_memory = 100000};
    CHECK_FAILS(dr_json_parse(big, 2 * n + 1, &lim, "mem", &d), DR_ERR_IO,
                "mem: JSON document needs more than 100000 bytes of memory");
    if (CHECK_OK(dr_json_parse(big, 2 * n + 1, NULL, "mem", &d))) {
        CHECK_EQ_INT(dr_json_root(d)->len, n);
        dr_json_free(d);
    }
    free(big);
    CHECK_FAILS(dr_json_parse(NULL, 3, NULL, "nul", &d), DR_ERR_ARG, "nul: text is NULL");
    CHECK_FAILS(dr_json_parse("1", 1, NULL, "nul", NULL), DR_ERR_ARG, "out is NULL");
}

/* Numbers parse the same under a locale whose decimal point is a comma. */
static void test_locale(void) {
    const char *locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "C.UTF-8"};
    char *old = strdup(setlocale(LC_NUMERIC, NULL));
    for (size_t i = 0; i < sizeof locales / sizeof locales[0]; i++)
        if (setlocale(LC_NUMERIC, locales[i])) break;
    dr_json_doc *d = parse_ok("0.5");
    if (d) CHECK_NEAR(dr_json_root(d)->u.d, 0.5, 0), dr_json_free(d);
    setlocale(LC_NUMERIC, old);
    free(old);
}

static void test_writer(void) {
    dr_json_buf b = {0};
    const char raw[] = "a\"b\\c/d\b\f\n\r\t\x01\x1f\x7f \xc3\xa9";
    dr_json_buf_string(&b, raw, sizeof raw - 1);
    dr_json_buf_raw(&b, ",", 1);
    dr_json_buf_int(&b, INT64_MIN);
    const char want[] = "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\\u001f\x7f \xc3\xa9\","
                        "-9223372036854775808";
    CHECK(!b.failed);
    if (!CHECK(b.len == sizeof want - 1 && memcmp(b.data, want, b.len) == 0))
        fprintf(stderr, "    got %s\n", b.data);
    free(b.data);
    /* Round trip of every byte 1..127 and some UTF-8. */
    char all[160];
    size_t n = 0;
    for (int c = 1; c < 128; c++) all[n++] = (char)c;
    memcpy(all + n, "\xf0\x9f\x98\x80\xe2\x82\xac", 7);
    n += 7;
    b = (dr_json_buf){0};
    dr_json_buf_string(&b, all, n);
    dr_json_doc *d = NULL;
    if (CHECK_OK(dr_json_parse(b.data, b.len, NULL, "rt", &d))) {
        CHECK(dr_json_root(d)->len == n && memcmp(dr_json_root(d)->u.s, all, n) == 0);
        dr_json_free(d);
    }
    free(b.data);
    CHECK(dr_utf8_valid("", 0));
    CHECK(dr_utf8_valid("\xc3\xa9\xf0\x9f\x98\x80", 6));
    CHECK(!dr_utf8_valid("\xc3", 1));
    CHECK(!dr_utf8_valid("\xf8\x88\x80\x80\x80", 5));
    char q[16];
    CHECK(strcmp(dr_json_quote_msg("abcdefghijklmnop", 16, q, sizeof q), "'abc...'") == 0);
}

/* Random byte edits of valid documents: any outcome but a crash or a leak. */
static void test_mutations(void) {
    const char *seeds[] = {
        "{\"a\": [1, -2.5e3, \"x\\u00e9\\ud83d\\ude00\", true, false, null], \"b\": {\"c\": []}}",
        "[[[[{\"k\": \"v\"}]]], 0.1, 12345678901234567890, \"\\\\\\\"\"]",
    };
    uint64_t rng = 12345;
    char buf[256];
    int parsed = 0;
    for (int it = 0; it < 20000; it++) {
        const char *s = seeds[it % 2];
        size_t n = strlen(s);
        memcpy(buf, s, n);
        int edits = 1 + it % 4;
        for (int e = 0; e < edits; e++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(rng >> 33) % n;
            unsigned char v = (unsigned char)(rng >> 20);
            switch ((rng >> 8) % 3) {
            case 0: buf[at] = (char)v; break;
            case 1: n = at + 1; break; /* truncate */
            default: buf[at] = "[]{}\",:\\u0e-"[(rng >> 40) % 13]; break;
            }
        }
        dr_json_doc *d = NULL;
        if (dr_json_parse(buf, n, NULL, "mut", &d) == DR_OK) parsed++;
        dr_json_free(d);
    }
    CHECK(parsed > 0);
}

int main(void) {
    test_scalars();
    test_strings();
    test_containers();
    test_errors();
    test_large_objects();
    test_limits();
    test_locale();
    test_writer();
    test_mutations();
    return check_summary("test_json");
}
