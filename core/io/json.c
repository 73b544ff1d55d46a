/* Strict JSON parser and string writer (see json.h for the rules).
 *
 * Recursive descent over the whole text with a depth limit. Values of an array or
 * object being parsed wait on a scratch stack shared by all nesting levels and are
 * copied into the document's arena when the bracket closes, so the tree is a few
 * flat arrays and memory stays linear in the input (and capped by the limits). */
#define _GNU_SOURCE /* strtod_l: numbers parse the same under any LC_NUMERIC */
#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/error.h"

enum { DEFAULT_DEPTH = 128, ARENA_BLOCK = 64 * 1024, QUOTE_CAP = 80 };
#define DEFAULT_MEMORY ((size_t)512 << 20)

typedef struct block {
    struct block *next;
    size_t cap, used;
    max_align_t data[];
} block;

struct dr_json_doc {
    block *blocks;
    dr_json root;
};

typedef struct parser {
    const unsigned char *text;
    size_t len, pos;
    const char *context;
    int depth, max_depth;
    size_t memory, max_memory;
    dr_json_doc *doc;
    dr_json *vals;  /* scratch: items of the open arrays */
    size_t nvals, cap_vals;
    dr_json_member *mems;  /* scratch: members of the open objects */
    size_t nmems, cap_mems;
} parser;

/* ---- messages ------------------------------------------------------------------ */

const char *dr_json_quote_msg(const char *s, size_t n, char *buf, size_t cap) {
    size_t o = 0, shown = cap > 12 ? cap - 12 : 0;
    buf[o++] = '\'';
    size_t i = 0;
    for (; i < n && o < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') buf[o++] = (char)c;
        else if (c >= 0x80) buf[o++] = (char)c; /* UTF-8 stays readable */
        else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    }
    if (i < n) o += (size_t)snprintf(buf + o, cap - o, "...");
    snprintf(buf + o, cap - o, "'");
    return buf;
}

static void describe_at(const parser *p, size_t at, char *buf, size_t cap) {
    if (at >= p->len) snprintf(buf, cap, "the end of the input");
    else if (p->text[at] >= 0x20 && p->text[at] < 0x7f) snprintf(buf, cap, "'%c'", p->text[at]);
    else snprintf(buf, cap, "byte 0x%02x", p->text[at]);
}

static dr_status fail_at(const parser *p, size_t at, const char *fmt, ...) DR_PRINTF(3, 4);
static dr_status fail_at(const parser *p, size_t at, const char *fmt, ...) {
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return dr_fail(DR_ERR_IO, "%s: invalid JSON at byte %zu: %s", p->context, at, reason);
}

static dr_status fail_expected(const parser *p, const char *what) {
    char got[32];
    describe_at(p, p->pos, got, sizeof got);
    return fail_at(p, p->pos, "expected %s, got %s", what, got);
}

/* ---- memory ---------------------------------------------------------------------- */

static dr_status charge(parser *p, size_t n) {
    if (n > p->max_memory || p->memory > p->max_memory - n)
        return dr_fail(DR_ERR_IO, "%s: JSON document needs more than %zu bytes of memory to parse",
                       p->context, p->max_memory);
    p->memory += n;
    return DR_OK;
}

static dr_status arena_alloc(parser *p, size_t size, void **out) {
    size = (size + 15) & ~(size_t)15;
    block *b = p->doc->blocks;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > ARENA_BLOCK ? size : ARENA_BLOCK;
        DR_TRY(charge(p, cap + sizeof(block)));
        b = malloc(sizeof(block) + cap);
        if (!b) return dr_fail(DR_ERR_OOM, "%s: out of memory parsing JSON", p->context);
        b->cap = cap;
        b->used = 0;
        b->next = p->doc->blocks;
        p->doc->blocks = b;
    }
    *out = (char *)b->data + b->used;
    b->used += size;
    return DR_OK;
}

static dr_status grow(parser *p, void **buf, size_t *cap, size_t elem) {
    size_t ncap = *cap ? *cap * 2 : 64;
    DR_TRY(charge(p, (ncap - *cap) * elem));
    void *nb = realloc(*buf, ncap * elem);
    if (!nb) return dr_fail(DR_ERR_OOM, "%s: out of memory parsing JSON", p->context);
    *buf = nb;
    *cap = ncap;
    return DR_OK;
}

/* ---- UTF-8 ----------------------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s (n bytes available), or 0. */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xc2 || c > 0xf4) return 0;
    if (c < 0xe0) return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    unsigned lo = 0x80, hi = 0xbf;
    if (c == 0xe0) lo = 0xa0;       /* overlong */
    else if (c == 0xed) hi = 0x9f;  /* surrogates */
    else if (c == 0xf0) lo = 0x90;  /* overlong */
    else if (c == 0xf4) hi = 0x8f;  /* > U+10FFFF */
    size_t need = c < 0xf0 ? 3 : 4;
    if (n < need || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return need;
}

bool dr_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(u + i, n - i);
        if (!k) return false;
        i += k;
    }
    return true;
}

static size_t utf8_put(char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ---- scalars --------------------------------------------------------------------- */

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        unsigned char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* Four hex digits at text[at..at+4), all before `limit`. */
static bool read_hex4(const parser *p, size_t at, size_t limit, uint32_t *out) {
    uint32_t v = 0;
    if (at + 4 > limit) return false;
    for (size_t i = at; i < at + 4; i++) {
        unsigned c = p->text[i];
        unsigned d = c >= '0' && c <= '9'   ? c - '0'
                     : c >= 'a' && c <= 'f' ? c - 'a' + 10
                     : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                            : 16;
        if (d == 16) return false;
        v = v * 16 + d;
    }
    *out = v;
    return true;
}

/* The string literal at p->pos (a '"'), decoded into the arena. Decoding never
 * grows the text (\uXXXX is 6 bytes for at most 3, a surrogate pair 12 for 4), so
 * the raw length bounds the buffer. */
static dr_status parse_string(parser *p, const char **out, size_t *out_len) {
    size_t open = p->pos, start = open + 1, close = start;
    while (close < p->len && p->text[close] != '"') close += p->text[close] == '\\' ? 2 : 1;
    if (close >= p->len) return fail_at(p, open, "unterminated string");
    char *dst;
    DR_TRY(arena_alloc(p, close - start + 1, (void **)&dst));
    size_t n = 0;
    for (size_t i = start; i < close;) {
        unsigned char c = p->text[i];
        if (c < 0x20)
            return fail_at(p, i, "control character 0x%02x in a string must be escaped", c);
        if (c >= 0x80) {
            size_t k = utf8_seq_len(p->text + i, close - i);
            if (!k) return fail_at(p, i, "invalid UTF-8 byte 0x%02x in a string", c);
            memcpy(dst + n, p->text + i, k);
            n += k;
            i += k;
            continue;
        }
        if (c != '\\') {
            dst[n++] = (char)c;
            i++;
            continue;
        }
        unsigned char e = p->text[i + 1]; /* i + 1 <= close: the scan above skipped it */
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            static const char decoded[] = "\"\\/\b\f\n\r\t";
            dst[n++] = decoded[simple - "\"\\/bfnrt"];
            i += 2;
            continue;
        }
        if (e != 'u')
            return fail_at(p, i, "invalid escape '\\%c' in a string",
                           e >= 0x20 && e < 0x7f ? e : '?');
        uint32_t cp, lo;
        if (!read_hex4(p, i + 2, close, &cp))
            return fail_at(p, i, "\\u must be followed by four hex digits");
        i += 6;
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return fail_at(p, i - 6, "lone low surrogate \\u%04x in a string", (unsigned)cp);
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (i + 1 >= close || p->text[i] != '\\' || p->text[i + 1] != 'u' ||
                !read_hex4(p, i + 2, close, &lo) || lo < 0xdc00 || lo > 0xdfff)
                return fail_at(p, i - 6, "high surrogate \\u%04x is not followed by a low "
                                         "surrogate", (unsigned)cp);
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            i += 6;
        }
        n += utf8_put(dst + n, cp);
    }
    dst[n] = '\0';
    *out = dst;
    *out_len = n;
    p->pos = close + 1;
    return DR_OK;
}

static bool is_digit(const parser *p, size_t at) {
    return at < p->len && p->text[at] >= '0' && p->text[at] <= '9';
}

static locale_t c_locale(void) {
    static locale_t loc;
    locale_t l = __atomic_load_n(&loc, __ATOMIC_ACQUIRE);
    if (l) return l;
    l = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    locale_t expected = (locale_t)0;
    if (l && !__atomic_compare_exchange_n(&loc, &expected, l, false, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE)) {
        freelocale(l);
        l = expected;
    }
    return l;
}

static dr_status parse_number(parser *p, dr_json *v) {
    size_t s = p->pos;
    bool neg = p->text[p->pos] == '-', integral = true;
    if (neg) p->pos++;
    if (!is_digit(p, p->pos)) return fail_expected(p, "a digit");
    if (p->text[p->pos] == '0') {
        p->pos++;
        if (is_digit(p, p->pos)) return fail_at(p, s, "leading zeros are not allowed in numbers");
    } else {
        while (is_digit(p, p->pos)) p->pos++;
    }
    if (p->pos < p->len && p->text[p->pos] == '.') {
        p->pos++;
        if (!is_digit(p, p->pos)) return fail_expected(p, "a digit after the decimal point");
        while (is_digit(p, p->pos)) p->pos++;
        integral = false;
    }
    if (p->pos < p->len && (p->text[p->pos] == 'e' || p->text[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->text[p->pos] == '+' || p->text[p->pos] == '-')) p->pos++;
        if (!is_digit(p, p->pos)) return fail_expected(p, "a digit in the exponent");
        while (is_digit(p, p->pos)) p->pos++;
        integral = false;
    }
    if (integral) {
        uint64_t acc = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        bool fits = true;
        for (size_t i = s + neg; i < p->pos && fits; i++) {
            unsigned d = p->text[i] - '0';
            if (acc > (limit - d) / 10) fits = false;
            else acc = acc * 10 + d;
        }
        if (fits) {
            v->type = DR_JSON_INT;
            v->u.i = neg ? (int64_t)(0 - acc) : (int64_t)acc;
            return DR_OK;
        }
    }
    size_t n = p->pos - s;
    char small[64], *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf) return dr_fail(DR_ERR_OOM, "%s: out of memory parsing JSON", p->context);
    memcpy(buf, p->text + s, n);
    buf[n] = '\0';
    locale_t loc = c_locale();
    double d = loc ? strtod_l(buf, NULL, loc) : strtod(buf, NULL);
    if (buf != small) free(buf);
    if (!isfinite(d)) return fail_at(p, s, "number out of the range of a double");
    v->type = DR_JSON_NUMBER;
    v->u.d = d;
    return DR_OK;
}

static dr_status parse_literal(parser *p, const char *word, dr_json_type type, bool b, dr_json *v) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0)
        return fail_expected(p, "a value");
    p->pos += n;
    v->type = type;
    v->u.b = b;
    return DR_OK;
}

/* ---- containers ------------------------------------------------------------------ */

static dr_status parse_value(parser *p, dr_json *v);

static dr_status enter(parser *p) {
    if (++p->depth > p->max_depth)
        return fail_at(p, p->pos, "arrays and objects nested deeper than %d levels", p->max_depth);
    p->pos++; /* the bracket */
    skip_ws(p);
    return DR_OK;
}

/* After an item: ',' (more follow) or the closing bracket. *more says which. */
static dr_status next_item(parser *p, char close, size_t open_at, bool *more) {
    skip_ws(p);
    if (p->pos < p->len && p->text[p->pos] == ',') {
        p->pos++;
        *more = true;
        return DR_OK;
    }
    if (p->pos < p->len && p->text[p->pos] == close) {
        p->pos++;
        *more = false;
        return DR_OK;
    }
    char got[32], what[96];
    describe_at(p, p->pos, got, sizeof got);
    snprintf(what, sizeof what, "',' or '%c' in the %s that starts at byte %zu", close,
             close == ']' ? "array" : "object", open_at);
    return fail_at(p, p->pos, "expected %s, got %s", what, got);
}

static dr_status parse_array(parser *p, dr_json *v) {
    size_t open_at = p->pos, base = p->nvals;
    DR_TRY(enter(p));
    bool more = !(p->pos < p->len && p->text[p->pos] == ']');
    if (!more) p->pos++;
    while (more) {
        dr_json item;
        DR_TRY(parse_value(p, &item));
        if (p->nvals == p->cap_vals) DR_TRY(grow(p, (void **)&p->vals, &p->cap_vals, sizeof item));
        p->vals[p->nvals++] = item;
        DR_TRY(next_item(p, ']', open_at, &more));
    }
    size_t n = p->nvals - base;
    v->type = DR_JSON_ARRAY;
    v->len = n;
    v->u.items = NULL;
    if (n) {
        DR_TRY(arena_alloc(p, n * sizeof(dr_json), (void **)&v->u.items));
        memcpy(v->u.items, p->vals + base, n * sizeof(dr_json));
    }
    p->nvals = base;
    p->depth--;
    return DR_OK;
}

static int cmp_member_ptr(const void *a, const void *b) {
    const dr_json_member *x = *(const dr_json_member *const *)a;
    const dr_json_member *y = *(const dr_json_member *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
    return x < y ? -1 : x > y; /* document order: the later one is the duplicate */
}

static bool same_key(const dr_json_member *a, const dr_json_member *b) {
    return a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0;
}

static dr_status duplicate(const parser *p, const dr_json_member *m, size_t open_at) {
    char q[QUOTE_CAP];
    return fail_at(p, m->key_offset, "duplicate key %s in the object that starts at byte %zu",
                   dr_json_quote_msg(m->key, m->key_len, q, sizeof q), open_at);
}

/* Duplicate keys among m[0..n): pairwise when few, else sorted. */
static dr_status check_unique(parser *p, const dr_json_member *m, size_t n, size_t open_at) {
    if (n <= 16) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (same_key(&m[i], &m[j])) return duplicate(p, &m[i], open_at);
        return DR_OK;
    }
    DR_TRY(charge(p, n * sizeof(void *)));
    const dr_json_member **order = malloc(n * sizeof *order);
    if (!order) return dr_fail(DR_ERR_OOM, "%s: out of memory parsing JSON", p->context);
    for (size_t i = 0; i < n; i++) order[i] = &m[i];
    qsort(order, n, sizeof *order, cmp_member_ptr);
    dr_status st = DR_OK;
    for (size_t i = 1; i < n && st == DR_OK; i++)
        if (same_key(order[i], order[i - 1])) st = duplicate(p, order[i], open_at);
    free(order);
    p->memory -= n * sizeof(void *);
    return st;
}

static dr_status parse_object(parser *p, dr_json *v) {
    size_t open_at = p->pos, base = p->nmems;
    DR_TRY(enter(p));
    bool more = !(p->pos < p->len && p->text[p->pos] == '}');
    if (!more) p->pos++;
    while (more) {
        dr_json_member m;
        skip_ws(p);
        if (p->pos >= p->len || p->text[p->pos] != '"') return fail_expected(p, "a string key");
        m.key_offset = p->pos;
        DR_TRY(parse_string(p, &m.key, &m.key_len));
        skip_ws(p);
        if (p->pos >= p->len || p->text[p->pos] != ':') return fail_expected(p, "':' after the key");
        p->pos++;
        DR_TRY(parse_value(p, &m.value));
        if (p->nmems == p->cap_mems) DR_TRY(grow(p, (void **)&p->mems, &p->cap_mems, sizeof m));
        p->mems[p->nmems++] = m;
        DR_TRY(next_item(p, '}', open_at, &more));
    }
    size_t n = p->nmems - base;
    v->type = DR_JSON_OBJECT;
    v->len = n;
    v->u.members = NULL;
    if (n) { /* (p->mems may still be NULL when n == 0) */
        DR_TRY(check_unique(p, p->mems + base, n, open_at));
        DR_TRY(arena_alloc(p, n * sizeof(dr_json_member), (void **)&v->u.members));
        memcpy(v->u.members, p->mems + base, n * sizeof(dr_json_member));
    }
    p->nmems = base;
    p->depth--;
    return DR_OK;
}

static dr_status parse_value(parser *p, dr_json *v) {
    skip_ws(p);
    memset(v, 0, sizeof *v);
    v->offset = p->pos;
    if (p->pos >= p->len) return fail_expected(p, "a value");
    switch (p->text[p->pos]) {
    case '{': return parse_object(p, v);
    case '[': return parse_array(p, v);
    case '"': v->type = DR_JSON_STRING; return parse_string(p, &v->u.s, &v->len);
    case 't': return parse_literal(p, "true", DR_JSON_BOOL, true, v);
    case 'f': return parse_literal(p, "false", DR_JSON_BOOL, false, v);
    case 'n': return parse_literal(p, "null", DR_JSON_NULL, false, v);
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': return parse_number(p, v);
    default: return fail_expected(p, "a value");
    }
}

/* ---- public ---------------------------------------------------------------------- */

void dr_json_free(dr_json_doc *doc) {
    if (!doc) return;
    for (block *b = doc->blocks, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(doc);
}

dr_status dr_json_parse(const char *text, size_t len, const dr_json_limits *limits,
                        const char *context, dr_json_doc **out) {
    if (!context) context = "json";
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", context);
    *out = NULL;
    if (!text && len) return dr_fail(DR_ERR_ARG, "%s: text is NULL", context);
    parser p = {.text = (const unsigned char *)(text ? text : ""), .len = len, .context = context};
    p.max_depth = limits && limits->max_depth > 0 ? limits->max_depth : DEFAULT_DEPTH;
    p.max_memory = limits && limits->max_memory ? limits->max_memory : DEFAULT_MEMORY;
    p.doc = calloc(1, sizeof *p.doc);
    if (!p.doc) return dr_fail(DR_ERR_OOM, "%s: out of memory parsing JSON", context);
    dr_status st = parse_value(&p, &p.doc->root);
    if (st == DR_OK) {
        skip_ws(&p);
        if (p.pos < p.len) {
            char got[32];
            describe_at(&p, p.pos, got, sizeof got);
            st = fail_at(&p, p.pos, "unexpected %s after the value", got);
        }
    }
    free(p.vals);
    free(p.mems);
    if (st != DR_OK) {
        dr_json_free(p.doc);
        return st;
    }
    *out = p.doc;
    return DR_OK;
}

const dr_json *dr_json_root(const dr_json_doc *doc) { return doc ? &doc->root : NULL; }

const dr_json *dr_json_get(const dr_json *v, const char *key) {
    if (!v || v->type != DR_JSON_OBJECT || !key) return NULL;
    size_t n = strlen(key);
    for (size_t i = 0; i < v->len; i++) {
        const dr_json_member *m = &v->u.members[i];
        if (m->key_len == n && memcmp(m->key, key, n) == 0) return &m->value;
    }
    return NULL;
}

const char *dr_json_type_name(dr_json_type type) {
    static const char *const names[] = {"null",   "boolean", "integer", "number",
                                        "string", "array",   "object"};
    return (unsigned)type <= DR_JSON_OBJECT ? names[type] : "invalid";
}

double dr_json_number(const dr_json *v) {
    if (v && v->type == DR_JSON_INT) return (double)v->u.i;
    if (v && v->type == DR_JSON_NUMBER) return v->u.d;
    return NAN;
}

/* ---- writing --------------------------------------------------------------------- */

static bool buf_reserve(dr_json_buf *b, size_t n) {
    if (b->failed) return false;
    if (b->cap - b->len > n) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= n) {
        if (cap > SIZE_MAX / 2) {
            b->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (!d) {
        b->failed = true;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

void dr_json_buf_raw(dr_json_buf *b, const char *s, size_t n) {
    if (!buf_reserve(b, n)) return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void dr_json_buf_string(dr_json_buf *b, const char *s, size_t n) {
    dr_json_buf_raw(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        dr_json_buf_raw(b, s + run, i - run);
        run = i + 1;
        char esc[8];
        const char *simple = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b"
                           : c == '\f' ? "\\f" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                           : c == '\t' ? "\\t" : NULL;
        if (!simple) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            simple = esc;
        }
        dr_json_buf_raw(b, simple, strlen(simple));
    }
    dr_json_buf_raw(b, s + run, n - run);
    dr_json_buf_raw(b, "\"", 1);
}

void dr_json_buf_int(dr_json_buf *b, int64_t v) {
    char s[24];
    int n = snprintf(s, sizeof s, "%lld", (long long)v);
    dr_json_buf_raw(b, s, (size_t)n);
}
