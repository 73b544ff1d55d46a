/*
 * safetensors reader (huggingface/safetensors, safetensors/src/tensor.rs is the
 * reference): an 8-byte little-endian u64 N, N bytes of JSON header
 *     {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
 *      "__metadata__": {"key": "value"}}
 * (optionally padded with JSON whitespace), then the data buffer; offsets are
 * relative to the buffer. Validation follows the reference's read_metadata and
 * Metadata::validate, with a message per problem: N <= 100 MB and within the file;
 * UTF-8 JSON object; per tensor a known dtype, a shape of non-negative integers and
 * [begin, end] with begin <= end; (end - begin) == numel * bits / 8 (whole bytes,
 * no overflow); sorted by offset the tensors tile the buffer from 0 to its end with
 * no overlap, hole or trailing byte. Stricter than the reference: duplicate keys,
 * NUL characters in names and non-string metadata values are errors.
 *
 * The file is mapped copy-on-write (PROT_READ|PROT_WRITE, MAP_PRIVATE): tensors
 * point into the mapping without a copy, in-place ops on them change private pages
 * only, never the file. Each such tensor's storage holds a reference on the mapping,
 * so it outlives dr_safetensors_close. (Replacing the file by rename, as our writer
 * does, is safe; truncating it in place while mapped is not: SIGBUS on access.)
 */
#define _GNU_SOURCE /* GNU strerror_r */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "safetensors_internal.h"
#include "../tensor/tensor_internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader assumes a little-endian host"
#endif

enum { QUOTE = 96 };

/* The reference's Dtype enum, in its order (the rank). */
static const dr_st_dtype st_dtypes[] = {
    {"BOOL", 8, 0, DR_BOOL},          {"F4", 4, 1, -1},
    {"F6_E2M3", 6, 2, -1},            {"F6_E3M2", 6, 3, -1},
    {"U8", 8, 4, DR_U8},              {"I8", 8, 5, -1},
    {"F8_E5M2", 8, 6, -1},            {"F8_E4M3", 8, 7, -1},
    {"F8_E8M0", 8, 8, -1},            {"F8_E4M3FNUZ", 8, 9, -1},
    {"F8_E5M2FNUZ", 8, 10, -1},       {"I16", 16, 11, -1},
    {"U16", 16, 12, -1},              {"F16", 16, 13, DR_F16},
    {"BF16", 16, 14, DR_BF16},        {"I32", 32, 15, DR_I32},
    {"U32", 32, 16, -1},              {"F32", 32, 17, DR_F32},
    {"C64", 64, 18, -1},              {"F64", 64, 19, -1},
    {"I64", 64, 20, DR_I64},          {"U64", 64, 21, -1},
};
enum { N_ST_DTYPES = sizeof st_dtypes / sizeof st_dtypes[0] };

const dr_st_dtype *dr_st_dtype_by_name(const char *name, size_t len) {
    for (int i = 0; i < N_ST_DTYPES; i++)
        if (strlen(st_dtypes[i].name) == len && memcmp(st_dtypes[i].name, name, len) == 0)
            return &st_dtypes[i];
    return NULL;
}

const dr_st_dtype *dr_st_dtype_of(int32_t dtype) {
    for (int i = 0; i < N_ST_DTYPES; i++)
        if (st_dtypes[i].dtype == dtype && dtype >= 0) return &st_dtypes[i];
    return NULL;
}

/* ---- the mapping: refcounted, shared by the file and its tensors ----------------- */

typedef struct mapping {
    int32_t refcount;
    bool mapped;  /* munmap, else free */
    unsigned char *base;
    size_t len;
} mapping;

static void mapping_release(void *owner) {
    mapping *m = owner;
    if (!m || __atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (m->mapped) munmap(m->base, m->len);
    else free(m->base);
    free(m);
}

typedef struct entry {
    const char *name;  /* in the file's string pool */
    const dr_st_dtype *dt;
    int32_t ndim;
    const int64_t *shape; /* ndim values, in the file's shape pool */
    uint64_t begin, end;  /* in the data buffer */
} entry;

struct dr_safetensors {
    char *path;
    mapping *map;
    const unsigned char *data; /* the data buffer: map->base + 8 + N */
    uint64_t data_len;
    entry *entries;            /* sorted by name */
    int64_t count;
    const char **meta;         /* key, value, key, value ... sorted by key */
    int64_t nmeta;
    char *strings;             /* pool of names and metadata */
    int64_t *shapes;           /* pool of shape values */
};

static const char *errno_text(int err, char *buf, size_t cap) {
    return strerror_r(err, buf, cap);
}

/* ---- reading the bytes --------------------------------------------------------------- */

static dr_status read_all(int fd, const char *path, mapping *m) {
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) return dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory reading the file", path);
        if (len == cap) {
            unsigned char *nb = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) free(buf);
            buf = nb;
            cap *= 2;
            continue;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            char e[128];
            free(buf);
            return dr_fail(DR_ERR_IO, "safetensors: %s: read failed: %s", path,
                           errno_text(errno, e, sizeof e));
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    m->base = buf;
    m->len = len;
    m->mapped = false;
    return DR_OK;
}

static dr_status map_file(const char *path, mapping **out) {
    char e[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dr_fail(DR_ERR_IO, "safetensors: %s: cannot open: %s", path,
                       errno_text(errno, e, sizeof e));
    struct stat st;
    int err = fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
    if (err) {
        close(fd);
        return dr_fail(DR_ERR_IO, "safetensors: %s: cannot open: %s", path,
                       errno_text(err, e, sizeof e));
    }
    mapping *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        return dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory", path);
    }
    m->refcount = 1;
    void *p = MAP_FAILED;
    if (S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size <= SIZE_MAX)
        p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    dr_status s = DR_OK;
    if (p != MAP_FAILED) {
        m->base = p;
        m->len = (size_t)st.st_size;
        m->mapped = true;
    } else {
        s = read_all(fd, path, m); /* a pipe, an empty file, or mmap refused */
    }
    close(fd);
    if (s != DR_OK) {
        free(m);
        return s;
    }
    *out = m;
    return DR_OK;
}

/* ---- the header ------------------------------------------------------------------------ */

typedef struct header_ctx {
    const char *path;
    dr_safetensors *f;
    char *pool_next;
    int64_t *shape_next;
} header_ctx;

static char *pool_copy(header_ctx *c, const char *s, size_t n) {
    char *d = c->pool_next;
    memcpy(d, s, n);
    d[n] = '\0';
    c->pool_next += n + 1;
    return d;
}

static const char *qname(const char *s, size_t n, char *buf) {
    return dr_json_quote_msg(s, n, buf, QUOTE);
}

/* A non-negative JSON integer, or an error naming `what` of the tensor. */
static dr_status get_count(const header_ctx *c, const char *tq, const dr_json *v, const char *what,
                           int64_t *out) {
    if (v->type == DR_JSON_INT && v->u.i >= 0) {
        *out = v->u.i;
        return DR_OK;
    }
    if (v->type == DR_JSON_INT)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: %s is %lld; it must be a "
                       "non-negative integer", c->path, tq, what, (long long)v->u.i);
    return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: %s must be a non-negative integer, "
                   "got %s %s", c->path, tq, what,
                   v->type == DR_JSON_NUMBER ? "the number" : "a value of type",
                   v->type == DR_JSON_NUMBER ? "with a fraction, exponent or beyond int64"
                                             : dr_json_type_name(v->type));
}

static dr_status tensor_field(const header_ctx *c, const char *tq, const dr_json *obj,
                              const char *key, dr_json_type type, const dr_json **out) {
    const dr_json *v = dr_json_get(obj, key);
    if (!v)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s has no \"%s\"", c->path, tq, key);
    if (v->type != type)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: \"%s\" must be %s, got %s",
                       c->path, tq, key, type == DR_JSON_STRING ? "a string" : "a list",
                       dr_json_type_name(v->type));
    *out = v;
    return DR_OK;
}

static dr_status parse_entry(header_ctx *c, const dr_json_member *m, entry *e) {
    char tq[QUOTE];
    qname(m->key, m->key_len, tq);
    const dr_json *v = &m->value, *dtype = NULL, *shape = NULL, *offs = NULL;
    if (strlen(m->key) != m->key_len)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor name %s contains a NUL character",
                       c->path, tq);
    if (v->type != DR_JSON_OBJECT)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: expected an object with dtype, "
                       "shape and data_offsets, got %s", c->path, tq, dr_json_type_name(v->type));
    DR_TRY(tensor_field(c, tq, v, "dtype", DR_JSON_STRING, &dtype));
    DR_TRY(tensor_field(c, tq, v, "shape", DR_JSON_ARRAY, &shape));
    DR_TRY(tensor_field(c, tq, v, "data_offsets", DR_JSON_ARRAY, &offs));
    e->dt = dr_st_dtype_by_name(dtype->u.s, dtype->len);
    if (!e->dt) {
        char dq[QUOTE];
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s has unknown dtype %s", c->path, tq,
                       qname(dtype->u.s, dtype->len, dq));
    }
    if (shape->len > INT32_MAX)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: shape has too many dimensions",
                       c->path, tq);
    e->ndim = (int32_t)shape->len;
    e->shape = c->shape_next;
    uint64_t numel = 1;
    bool overflow = false;
    for (int32_t d = 0; d < e->ndim; d++) {
        char what[40];
        int64_t s = 0;
        snprintf(what, sizeof what, "shape[%d]", d + 1);
        DR_TRY(get_count(c, tq, &shape->u.items[d], what, &s));
        c->shape_next[d] = s;
        if (s && numel > UINT64_MAX / (uint64_t)s) overflow = true;
        else numel *= (uint64_t)s;
    }
    c->shape_next += e->ndim;
    if (offs->len != 2)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: data_offsets must be a list of "
                       "two integers [begin, end], got a list of %zu", c->path, tq, offs->len);
    int64_t begin = 0, end = 0;
    DR_TRY(get_count(c, tq, &offs->u.items[0], "data_offsets[1] (begin)", &begin));
    DR_TRY(get_count(c, tq, &offs->u.items[1], "data_offsets[2] (end)", &end));
    e->begin = (uint64_t)begin;
    e->end = (uint64_t)end;
    if (end < begin)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: data_offsets [%lld, %lld] end "
                       "before they begin", c->path, tq, (long long)begin, (long long)end);
    if (overflow || numel > UINT64_MAX / (uint64_t)e->dt->bits)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: shape %s overflows when "
                       "computing its size in bytes", c->path, tq,
                       dr_sizes_str(e->shape, e->ndim));
    uint64_t bits = numel * (uint64_t)e->dt->bits;
    if (bits % 8)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: %s %s does not fill whole bytes",
                       c->path, tq, e->dt->name, dr_sizes_str(e->shape, e->ndim));
    if (bits / 8 != e->end - e->begin)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: %s %s needs %llu bytes, but "
                       "data_offsets [%lld, %lld] hold %llu", c->path, tq, e->dt->name,
                       dr_sizes_str(e->shape, e->ndim), (unsigned long long)(bits / 8),
                       (long long)begin, (long long)end, (unsigned long long)(end - begin));
    if (e->end > c->f->data_len)
        return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s: data_offsets [%lld, %lld] reach "
                       "past the end of the data buffer (%llu bytes): the file is truncated "
                       "or the offsets are wrong", c->path, tq, (long long)begin, (long long)end,
                       (unsigned long long)c->f->data_len);
    e->name = pool_copy(c, m->key, m->key_len);
    return DR_OK;
}

static dr_status parse_metadata(header_ctx *c, const dr_json *v) {
    if (v->type == DR_JSON_NULL) return DR_OK; /* the reference's Option: null is none */
    if (v->type != DR_JSON_OBJECT)
        return dr_fail(DR_ERR_IO, "safetensors: %s: \"__metadata__\" must be an object of "
                       "strings, got %s", c->path, dr_json_type_name(v->type));
    for (size_t i = 0; i < v->len; i++) {
        const dr_json_member *m = &v->u.members[i];
        char kq[QUOTE];
        qname(m->key, m->key_len, kq);
        if (m->value.type != DR_JSON_STRING)
            return dr_fail(DR_ERR_IO, "safetensors: %s: metadata %s must be a string, got %s",
                           c->path, kq, dr_json_type_name(m->value.type));
        if (strlen(m->key) != m->key_len || strlen(m->value.u.s) != m->value.len)
            return dr_fail(DR_ERR_IO, "safetensors: %s: metadata %s contains a NUL character",
                           c->path, kq);
        c->f->meta[2 * i] = pool_copy(c, m->key, m->key_len);
        c->f->meta[2 * i + 1] = pool_copy(c, m->value.u.s, m->value.len);
    }
    c->f->nmeta = (int64_t)v->len;
    return DR_OK;
}

static int cmp_entry_name(const void *a, const void *b) {
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}
static int cmp_entry_offsets(const void *a, const void *b) {
    const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}
static int cmp_meta(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorted by offset, the tensors must tile [0, data_len) exactly. */
static dr_status check_tiling(const dr_safetensors *f) {
    if (f->count == 0 && f->data_len == 0) return DR_OK;
    const entry **order = malloc((size_t)(f->count ? f->count : 1) * sizeof *order);
    if (!order) return dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory", f->path);
    for (int64_t i = 0; i < f->count; i++) order[i] = &f->entries[i];
    qsort(order, (size_t)f->count, sizeof *order, cmp_entry_offsets);
    uint64_t at = 0;
    const entry *prev = NULL;
    dr_status st = DR_OK;
    char a[QUOTE], b[QUOTE];
    for (int64_t i = 0; i < f->count && st == DR_OK; i++) {
        const entry *e = order[i];
        if (e->begin < at)
            st = dr_fail(DR_ERR_IO, "safetensors: %s: tensors %s [%llu, %llu] and %s [%llu, %llu] "
                         "overlap", f->path, qname(prev->name, strlen(prev->name), a),
                         (unsigned long long)prev->begin, (unsigned long long)prev->end,
                         qname(e->name, strlen(e->name), b), (unsigned long long)e->begin,
                         (unsigned long long)e->end);
        else if (e->begin > at)
            st = dr_fail(DR_ERR_IO, "safetensors: %s: bytes [%llu, %llu) of the data buffer "
                         "belong to no tensor (a hole before tensor %s)", f->path,
                         (unsigned long long)at, (unsigned long long)e->begin,
                         qname(e->name, strlen(e->name), a));
        at = e->end;
        prev = e;
    }
    free(order);
    if (st == DR_OK && at != f->data_len)
        st = dr_fail(DR_ERR_IO, "safetensors: %s: the data buffer has %llu bytes after the last "
                     "tensor that belong to no tensor", f->path,
                     (unsigned long long)(f->data_len - at));
    return st;
}

/* Counts what the pools need, allocates them, then fills entries and metadata. */
static dr_status parse_header(dr_safetensors *f, const dr_json *root) {
    header_ctx c = {.path = f->path, .f = f};
    if (root->type != DR_JSON_OBJECT)
        return dr_fail(DR_ERR_IO, "safetensors: %s: the header must be a JSON object, got %s",
                       f->path, dr_json_type_name(root->type));
    size_t pool = 1, dims = 0, nmeta = 0;
    int64_t count = 0;
    const dr_json *meta = NULL;
    for (size_t i = 0; i < root->len; i++) {
        const dr_json_member *m = &root->u.members[i];
        if (strcmp(m->key, "__metadata__") == 0 && m->key_len == 12) {
            meta = &m->value;
            if (meta->type == DR_JSON_OBJECT)
                for (size_t k = 0; k < meta->len; k++) {
                    const dr_json_member *mm = &meta->u.members[k];
                    pool += mm->key_len + 1;
                    if (mm->value.type == DR_JSON_STRING) pool += mm->value.len + 1;
                    nmeta++;
                }
            continue;
        }
        count++;
        pool += m->key_len + 1;
        const dr_json *shape = dr_json_get(&m->value, "shape");
        if (shape && shape->type == DR_JSON_ARRAY) dims += shape->len;
    }
    f->entries = calloc((size_t)count + 1, sizeof *f->entries);
    f->meta = calloc(2 * nmeta + 1, sizeof *f->meta);
    f->strings = malloc(pool);
    f->shapes = malloc((dims + 1) * sizeof *f->shapes);
    if (!f->entries || !f->meta || !f->strings || !f->shapes)
        return dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory for the header", f->path);
    c.pool_next = f->strings;
    c.shape_next = f->shapes;
    if (meta) DR_TRY(parse_metadata(&c, meta));
    for (size_t i = 0; i < root->len; i++) {
        const dr_json_member *m = &root->u.members[i];
        if (&m->value == meta) continue;
        DR_TRY(parse_entry(&c, m, &f->entries[f->count]));
        f->count++;
    }
    qsort(f->entries, (size_t)f->count, sizeof *f->entries, cmp_entry_name);
    qsort(f->meta, (size_t)f->nmeta, 2 * sizeof *f->meta, cmp_meta);
    return check_tiling(f);
}

/* Validates the bytes of `m` (a mapping or a buffer; taken over, released on
 * failure) as a safetensors file called `path` in messages. */
static dr_status open_bytes(const char *path, mapping *m, dr_safetensors **out) {
    dr_safetensors *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        mapping_release(m);
        return dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory", path);
    }
    f->map = m;
    const unsigned char *b = m->base;
    size_t len = m->len;
    uint64_t n = 0;
    dr_status st = DR_OK;
    for (int i = 7; i >= 0 && len >= DR_ST_LEN_BYTES; i--) n = n << 8 | b[i];
    if (len < DR_ST_LEN_BYTES)
        st = dr_fail(DR_ERR_IO, "safetensors: %s: the file has %zu bytes; a safetensors file "
                     "starts with an 8-byte header length", path, len);
    else if (n > DR_ST_MAX_HEADER || n > len - DR_ST_LEN_BYTES)
        st = dr_fail(DR_ERR_IO, "safetensors: %s: bad header length %llu: %s (the file has "
                     "%zu bytes)", path, (unsigned long long)n,
                     n > DR_ST_MAX_HEADER ? "more than the 100000000 bytes a header may have"
                                          : "it runs past the end of the file",
                     len);
    if (st == DR_OK) {
        f->data = b + DR_ST_LEN_BYTES + n;
        f->data_len = len - DR_ST_LEN_BYTES - n;
        size_t cap = strlen(path) + 32;
        char *context = malloc(cap);
        dr_json_doc *doc = NULL;
        if (!context) st = dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory", path);
        else snprintf(context, cap, "safetensors: %s: header", path);
        if (st == DR_OK)
            st = dr_json_parse((const char *)b + DR_ST_LEN_BYTES, (size_t)n, NULL, context, &doc);
        if (st == DR_OK) st = parse_header(f, dr_json_root(doc));
        dr_json_free(doc);
        free(context);
    }
    if (st != DR_OK) {
        dr_safetensors_close(f);
        return st;
    }
    *out = f;
    return DR_OK;
}

dr_status dr_safetensors_open(const char *path, dr_safetensors **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "safetensors: out is NULL");
    *out = NULL;
    if (!path) return dr_fail(DR_ERR_ARG, "safetensors: path is NULL");
    mapping *m;
    DR_TRY(map_file(path, &m));
    return open_bytes(path, m, out);
}

dr_status dr_st_open_buffer(const char *name, const void *bytes, size_t len,
                            dr_safetensors **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "safetensors: out is NULL");
    *out = NULL;
    if (!name || (!bytes && len))
        return dr_fail(DR_ERR_ARG, "safetensors: name or bytes is NULL");
    mapping *m = calloc(1, sizeof *m);
    unsigned char *copy = malloc(len ? len : 1);
    if (!m || !copy) {
        free(m);
        free(copy);
        return dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory", name);
    }
    if (len) memcpy(copy, bytes, len);
    m->refcount = 1;
    m->base = copy;
    m->len = len;
    return open_bytes(name, m, out);
}

void dr_safetensors_close(dr_safetensors *f) {
    if (!f) return;
    mapping_release(f->map);
    free(f->entries);
    free(f->meta);
    free(f->strings);
    free(f->shapes);
    free(f->path);
    free(f);
}

int64_t dr_safetensors_count(const dr_safetensors *f) { return f ? f->count : 0; }

const char *dr_safetensors_name(const dr_safetensors *f, int64_t i) {
    return f && i >= 0 && i < f->count ? f->entries[i].name : NULL;
}

int64_t dr_safetensors_metadata_count(const dr_safetensors *f) { return f ? f->nmeta : 0; }

const char *dr_safetensors_metadata_key(const dr_safetensors *f, int64_t i) {
    return f && i >= 0 && i < f->nmeta ? f->meta[2 * i] : NULL;
}

const char *dr_safetensors_metadata(const dr_safetensors *f, const char *key) {
    if (!f || !key) return NULL;
    for (int64_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

/* ---- tensors ----------------------------------------------------------------------------- */

/* A tensor whose storage is the mapping's bytes at p (no copy). */
static dr_status wrap_mapped(dr_safetensors *f, const entry *e, int32_t dtype, void *p,
                             size_t nbytes, dr_tensor **out) {
    dr_storage *s = calloc(1, sizeof *s);
    dr_tensor *t = calloc(1, sizeof *t);
    if (!s || !t) {
        free(s);
        free(t);
        return dr_fail(DR_ERR_OOM, "safetensors: %s: out of memory for a tensor header", f->path);
    }
    __atomic_add_fetch(&f->map->refcount, 1, __ATOMIC_RELAXED);
    s->refcount = 1;
    s->device = dr_cpu();
    s->data = p;
    s->nbytes = nbytes;
    s->owner = f->map;
    s->owner_release = mapping_release;
    t->refcount = 1;
    t->ndim = e->ndim;
    t->scalar_type = dtype;
    t->device = dr_cpu();
    t->storage = s;
    for (int32_t d = 0; d < e->ndim; d++) t->sizes[d] = e->shape[d];
    dr_tensor_set_contiguous_strides(t);
    *out = t;
    return DR_OK;
}

static dr_status check_bools(const dr_safetensors *f, const entry *e, const unsigned char *p,
                             uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if (p[i] > 1) {
            char q[QUOTE];
            return dr_fail(DR_ERR_IO, "safetensors: %s: tensor %s (BOOL) holds byte 0x%02x at "
                           "element %llu; booleans must be 0 or 1", f->path,
                           qname(e->name, strlen(e->name), q), p[i], (unsigned long long)i + 1);
        }
    return DR_OK;
}

dr_status dr_safetensors_get(dr_safetensors *f, const char *name, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "safetensors"));
    if (!f) return dr_fail(DR_ERR_ARG, "safetensors: the file handle is NULL (closed?)");
    if (!name) return dr_fail(DR_ERR_ARG, "safetensors: %s: tensor name is NULL", f->path);
    entry key = {.name = name};
    const entry *e = bsearch(&key, f->entries, (size_t)f->count, sizeof key, cmp_entry_name);
    char q[QUOTE];
    if (!e)
        return dr_fail(DR_ERR_ARG, "safetensors: %s: no tensor named %s (the file has %lld)",
                       f->path, qname(name, strlen(name), q), (long long)f->count);
    qname(e->name, strlen(e->name), q);
    bool f64 = strcmp(e->dt->name, "F64") == 0;
    int32_t dtype = f64 ? DR_F32 : e->dt->dtype;
    if (dtype < 0)
        return dr_fail(DR_ERR_DTYPE, "safetensors: %s: tensor %s has dtype %s, which diffrl does "
                       "not support (F32, F16, BF16, I64, I32, U8, BOOL; F64 loads as float32)",
                       f->path, q, e->dt->name);
    if (e->ndim > DR_MAX_DIMS)
        return dr_fail(DR_ERR_UNSUPPORTED, "safetensors: %s: tensor %s has %d dimensions; at "
                       "most %d are supported", f->path, q, e->ndim, DR_MAX_DIMS);
    unsigned char *p = (unsigned char *)f->data + e->begin;
    uint64_t nbytes = e->end - e->begin;
    int64_t esize = dr_dtype_size(dtype);
    if (dtype == DR_BOOL) DR_TRY(check_bools(f, e, p, nbytes));
    if (nbytes > 0 && !f64 && (uintptr_t)p % (uintptr_t)esize == 0)
        return wrap_mapped(f, e, dtype, p, (size_t)nbytes, out);
    /* Empty, misaligned or F64: a fresh tensor. */
    DR_TRY(dr_tensor_new(e->shape, e->ndim, dtype, dr_cpu(), "safetensors", out));
    unsigned char *dst = dr_tensor_data(*out);
    if (f64) {
        float *d = (float *)dst;
        for (uint64_t i = 0; i < nbytes / 8; i++) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            d[i] = (float)v;
        }
    } else if (nbytes) {
        memcpy(dst, p, (size_t)nbytes);
    }
    return DR_OK;
}
