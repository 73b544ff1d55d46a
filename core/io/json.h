/*
 * json.h — a small strict JSON (RFC 8259) parser and string writer, internal to
 * libdiffrl (not in diffrl.h). Used by the safetensors header today; meant for the
 * loaders to come (a diffusers config.json, a tokenizer's vocab.json).
 *
 * Strict: one value, surrounded by optional whitespace (space, tab, CR, LF) and
 * nothing else; no comments, trailing commas, NaN/Infinity, byte-order mark,
 * leading zeros or lone surrogates; strings must be valid UTF-8 without raw
 * control characters; duplicate keys in an object are an error. Nesting is limited
 * (default 128, as serde_json) and so is memory (default 512 MiB; a document takes
 * at most ~24 bytes per input byte). Errors are DR_ERR_IO with the context given
 * by the caller and the byte offset (0-based) in the text:
 *     "safetensors: a.st: header: invalid JSON at byte 17: expected ':' after key"
 *
 * The parsed tree lives in one arena owned by the document: every pointer below is
 * valid until dr_json_free. Objects keep their members in document order.
 */
#ifndef DR_IO_JSON_H
#define DR_IO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "diffrl.h"

typedef enum dr_json_type {
    DR_JSON_NULL,
    DR_JSON_BOOL,
    DR_JSON_INT,     /* a number written without fraction or exponent that fits int64 */
    DR_JSON_NUMBER,  /* any other number (finite double) */
    DR_JSON_STRING,
    DR_JSON_ARRAY,
    DR_JSON_OBJECT
} dr_json_type;

typedef struct dr_json_member dr_json_member;

typedef struct dr_json {
    dr_json_type type;
    size_t offset;  /* byte offset of the value's first character in the text */
    size_t len;     /* STRING: bytes (the NUL not counted); ARRAY, OBJECT: count */
    union {
        bool b;                   /* BOOL */
        int64_t i;                /* INT */
        double d;                 /* NUMBER */
        const char *s;            /* STRING: UTF-8, NUL-terminated (may hold \u0000) */
        struct dr_json *items;    /* ARRAY */
        dr_json_member *members;  /* OBJECT */
    } u;
} dr_json;

struct dr_json_member {
    const char *key;  /* UTF-8, NUL-terminated (may hold \u0000) */
    size_t key_len;
    size_t key_offset; /* byte offset of the key's opening quote */
    dr_json value;
};

typedef struct dr_json_limits {
    int max_depth;      /* nesting of arrays/objects; <= 0: 128 */
    size_t max_memory;  /* bytes for the tree and parse stacks; 0: 512 MiB */
} dr_json_limits;

typedef struct dr_json_doc dr_json_doc;

/* Parses text[0..len). `context` starts every error message (e.g. "config: f.json").
 * limits may be NULL (defaults). On success *out owns the tree. */
dr_status dr_json_parse(const char *text, size_t len, const dr_json_limits *limits,
                        const char *context, dr_json_doc **out);
const dr_json *dr_json_root(const dr_json_doc *doc);
void dr_json_free(dr_json_doc *doc);

/* The member `key` of an object (exact bytes, NUL-terminated key), or NULL when v is
 * not an object or has no such key. Linear in the object's size. */
const dr_json *dr_json_get(const dr_json *v, const char *key);
/* "null", "boolean", "integer", "number", "string", "array", "object" */
const char *dr_json_type_name(dr_json_type type);
/* INT or NUMBER as double; NAN for anything else. */
double dr_json_number(const dr_json *v);

/* Whether s[0..n) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
bool dr_utf8_valid(const char *s, size_t n);
/* s[0..n) in single quotes for an error message: control bytes as \xNN, cut with
 * "..." to fit `cap` bytes (cap >= 16). Returns buf. */
const char *dr_json_quote_msg(const char *s, size_t n, char *buf, size_t cap);

/* A growable byte buffer for writing JSON. Functions do nothing once `failed` is
 * set (out of memory); check it at the end. Free `data` with free(). */
typedef struct dr_json_buf {
    char *data;
    size_t len, cap;
    bool failed;
} dr_json_buf;

void dr_json_buf_raw(dr_json_buf *b, const char *s, size_t n);
/* A JSON string literal, escaped as serde_json does: \" \\ \b \f \n \r \t, other
 * control characters as \u00xx, everything else (UTF-8 included) as is. */
void dr_json_buf_string(dr_json_buf *b, const char *s, size_t n);
void dr_json_buf_int(dr_json_buf *b, int64_t v);

#endif
