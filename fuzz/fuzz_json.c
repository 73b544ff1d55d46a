/* libFuzzer target: any bytes as JSON (core/io/json.h).
 *
 * A document that parses is checked (strings NUL-terminated valid UTF-8, keys
 * unique) and written back with the JSON writer; the text written must parse to
 * an equal tree, and writing that again must give the same text. The first input
 * bytes pick small depth or memory limits now and then ("  ", "\n "), to exercise
 * the limit paths.
 * Any violated property traps, which libFuzzer reports as a crash. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

static void write_value(dr_json_buf *b, const dr_json *v) {
    char num[40];
    switch (v->type) {
    case DR_JSON_NULL: dr_json_buf_raw(b, "null", 4); break;
    case DR_JSON_BOOL: dr_json_buf_raw(b, v->u.b ? "true" : "false", v->u.b ? 4 : 5); break;
    case DR_JSON_INT: dr_json_buf_int(b, v->u.i); break;
    case DR_JSON_NUMBER: /* an exponent keeps it a NUMBER; 17 digits keep it exact */
        dr_json_buf_raw(b, num, (size_t)snprintf(num, sizeof num, "%.17e", v->u.d));
        break;
    case DR_JSON_STRING: dr_json_buf_string(b, v->u.s, v->len); break;
    case DR_JSON_ARRAY:
        dr_json_buf_raw(b, "[", 1);
        for (size_t i = 0; i < v->len; i++) {
            if (i) dr_json_buf_raw(b, ",", 1);
            write_value(b, &v->u.items[i]);
        }
        dr_json_buf_raw(b, "]", 1);
        break;
    case DR_JSON_OBJECT:
        dr_json_buf_raw(b, "{", 1);
        for (size_t i = 0; i < v->len; i++) {
            const dr_json_member *m = &v->u.members[i];
            if (i) dr_json_buf_raw(b, ",", 1);
            dr_json_buf_string(b, m->key, m->key_len);
            dr_json_buf_raw(b, ":", 1);
            write_value(b, &m->value);
        }
        dr_json_buf_raw(b, "}", 1);
        break;
    }
}

static void check_tree(const dr_json *v) {
    REQUIRE(v->type >= DR_JSON_NULL && v->type <= DR_JSON_OBJECT);
    if (v->type == DR_JSON_NUMBER) REQUIRE(isfinite(v->u.d));
    if (v->type == DR_JSON_STRING) REQUIRE(v->u.s[v->len] == 0 && dr_utf8_valid(v->u.s, v->len));
    if (v->type == DR_JSON_ARRAY)
        for (size_t i = 0; i < v->len; i++) check_tree(&v->u.items[i]);
    if (v->type == DR_JSON_OBJECT)
        for (size_t i = 0; i < v->len; i++) {
            const dr_json_member *m = &v->u.members[i];
            REQUIRE(m->key[m->key_len] == 0 && dr_utf8_valid(m->key, m->key_len));
            if (v->len < 64)
                for (size_t j = 0; j < i; j++)
                    REQUIRE(m->key_len != v->u.members[j].key_len ||
                            memcmp(m->key, v->u.members[j].key, m->key_len) != 0);
            check_tree(&m->value);
        }
}

static int same(const dr_json *a, const dr_json *b) {
    if (a->type != b->type) return 0;
    switch (a->type) {
    case DR_JSON_NULL: return 1;
    case DR_JSON_BOOL: return a->u.b == b->u.b;
    case DR_JSON_INT: return a->u.i == b->u.i;
    case DR_JSON_NUMBER: return a->u.d == b->u.d;
    case DR_JSON_STRING: return a->len == b->len && memcmp(a->u.s, b->u.s, a->len) == 0;
    case DR_JSON_ARRAY:
        if (a->len != b->len) return 0;
        for (size_t i = 0; i < a->len; i++)
            if (!same(&a->u.items[i], &b->u.items[i])) return 0;
        return 1;
    case DR_JSON_OBJECT:
        if (a->len != b->len) return 0;
        for (size_t i = 0; i < a->len; i++) {
            const dr_json_member *x = &a->u.members[i], *y = &b->u.members[i];
            if (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0 ||
                !same(&x->value, &y->value))
                return 0;
        }
        return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dr_json_limits limits = {0}, again_limits = {0};
    if (size > 1 && data[0] == ' ' && data[1] == ' ') limits.max_depth = 1 + size % 8;
    if (size > 1 && data[0] == '\n' && data[1] == ' ') limits.max_memory = 1 + size * 16;
    again_limits.max_depth = limits.max_depth; /* the text written back may be longer */
    dr_json_doc *doc = NULL;
    if (dr_json_parse((const char *)data, size, &limits, "fuzz", &doc) != DR_OK) {
        REQUIRE(doc == NULL);
        return 0;
    }
    const dr_json *root = dr_json_root(doc);
    check_tree(root);
    dr_json_buf b1 = {0}, b2 = {0};
    write_value(&b1, root);
    REQUIRE(!b1.failed);
    dr_json_doc *again = NULL;
    REQUIRE(dr_json_parse(b1.data, b1.len, &again_limits, "fuzz again", &again) == DR_OK);
    REQUIRE(same(root, dr_json_root(again)));
    write_value(&b2, dr_json_root(again));
    REQUIRE(b1.len == b2.len && memcmp(b1.data, b2.data, b1.len) == 0);
    dr_json_free(again);
    dr_json_free(doc);
    free(b1.data);
    free(b2.data);
    return 0;
}
