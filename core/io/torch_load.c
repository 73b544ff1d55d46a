/*
 * PyTorch checkpoints (torch.save's zip format, torch >= 1.6; torch/serialization.py
 * _save / _load are the reference): a zip archive of stored entries
 *
 *   <archive>/data.pkl        the pickled object; tensors are persistent ids
 *                             ('storage', torch.<X>Storage, key, location, numel)
 *   <archive>/data/<key>      each storage's raw bytes (64-byte aligned)
 *   <archive>/byteorder       "little" (absent in files from before torch 1.10)
 *   <archive>/version, .format_version, .storage_alignment, .data/serialization_id
 *
 * The file is mapped copy-on-write, as safetensors are: tensors are strided views
 * of their storage pointing into the mapping (no copy; storages shared between
 * tensors stay shared), except float64 (converted to float32), int16 / int8
 * (converted to int32) and misaligned storages, which are copied. data.pkl runs
 * through the restricted unpickler (pickle.c); the object is flattened to
 * (name, value) entries, nested dict keys joined with '.' and list / tuple items
 * named by their 0-based index, as state_dict keys are.
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

#include "torch_load.h"
#include "zip.h"
#include "../tensor/tensor_internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the PyTorch checkpoint reader assumes a little-endian host"
#endif

enum { MAX_DEPTH = 64, MAX_KEY = 4096 };

typedef struct tl_mapping {
    int32_t refcount;
    bool mapped; /* munmap, else free */
    uint8_t *base;
    size_t len;
} tl_mapping;

static void mapping_release(void *owner) {
    tl_mapping *m = owner;
    if (!m || __atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (m->mapped) munmap(m->base, m->len);
    else free(m->base);
    free(m);
}

typedef struct tl_entry {
    char *name;
    int32_t kind; /* dr_torch_value_kind */
    dr_tensor *tensor;
    int64_t i;
    double f;
    char *s;
    size_t len;
} tl_entry;

struct dr_torch_checkpoint {
    tl_entry *entries;
    int64_t count, cap;
};

typedef struct cached_storage {
    char *key;
    dr_tensor *base;
} cached_storage;

typedef struct loader {
    const char *path;   /* the file, for messages */
    char pkl_name[4800]; /* "<path>: <archive>/data.pkl", for messages */
    tl_mapping *map;
    dr_zip zip;
    const char *prefix; /* "<archive>/" */
    cached_storage *cache;
    int64_t ncache, capcache;
} loader;

/* ---- the file ------------------------------------------------------------------------ */

static dr_status map_file(const char *path, tl_mapping **out) {
    char e[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    int err = fd < 0 ? errno : fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
    if (err) {
        if (fd >= 0) close(fd);
        return dr_fail(DR_ERR_IO, "torch_load: %s: cannot open: %s", path,
                       strerror_r(err, e, sizeof e));
    }
    tl_mapping *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", path);
    }
    m->refcount = 1;
    if (!S_ISREG(st.st_mode) || st.st_size <= 0) {
        close(fd);
        free(m);
        return dr_fail(DR_ERR_IO, "torch_load: %s: %s", path,
                       S_ISREG(st.st_mode) ? "the file is empty" : "not a regular file");
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    err = errno;
    close(fd);
    if (p == MAP_FAILED) {
        free(m);
        return dr_fail(DR_ERR_IO, "torch_load: %s: cannot map the file: %s", path,
                       strerror_r(err, e, sizeof e));
    }
    m->base = p;
    m->len = (size_t)st.st_size;
    m->mapped = true;
    *out = m;
    return DR_OK;
}

/* ---- storages ------------------------------------------------------------------------- */

static dr_status wrap_mapped(loader *L, uint8_t *p, size_t nbytes, int32_t dtype, int64_t numel,
                             dr_tensor **out) {
    dr_storage *s = calloc(1, sizeof *s);
    dr_tensor *t = calloc(1, sizeof *t);
    if (!s || !t) {
        free(s);
        free(t);
        return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory for a tensor header", L->path);
    }
    __atomic_add_fetch(&L->map->refcount, 1, __ATOMIC_RELAXED);
    s->refcount = 1;
    s->device = dr_cpu();
    s->data = p;
    s->nbytes = nbytes;
    s->owner = L->map;
    s->owner_release = mapping_release;
    t->refcount = 1;
    t->ndim = 1;
    t->sizes[0] = numel;
    t->strides[0] = 1;
    t->scalar_type = dtype;
    t->device = dr_cpu();
    t->storage = s;
    *out = t;
    return DR_OK;
}

/* The storage's bytes as a new tensor: the same bytes (a copy when misaligned) or
 * converted (float64 -> float32, int16 / int8 -> int32). */
static dr_status copy_storage(loader *L, const uint8_t *p, const dr_pk_storage_type *type,
                              int64_t numel, dr_tensor **out) {
    DR_TRY(dr_tensor_new(&numel, 1, type->dtype, dr_cpu(), "torch_load", out));
    void *dst = dr_tensor_data(*out);
    (void)L;
    for (int64_t i = 0; i < numel && type->convert; i++) {
        if (type->convert == 1) {
            double v;
            memcpy(&v, p + 8 * i, 8);
            ((float *)dst)[i] = (float)v;
        } else if (type->convert == 2) {
            int16_t v;
            memcpy(&v, p + 2 * i, 2);
            ((int32_t *)dst)[i] = v;
        } else {
            ((int32_t *)dst)[i] = (int8_t)p[i];
        }
    }
    if (!type->convert && numel) memcpy(dst, p, (size_t)numel * (size_t)type->file_size);
    return DR_OK;
}

static dr_status get_storage(void *ctx, const char *key, int32_t storage_type, int64_t numel,
                             dr_tensor **out) {
    loader *L = ctx;
    const dr_pk_storage_type *type = &dr_pk_storage_types[storage_type];
    for (int64_t i = 0; i < L->ncache; i++)
        if (strcmp(L->cache[i].key, key) == 0) {
            dr_tensor *b = L->cache[i].base;
            if (b->sizes[0] != numel || b->scalar_type != type->dtype)
                return dr_fail(DR_ERR_IO, "%s: storage '%s' is used as %lld x %s and as %lld x "
                               "%s", L->pkl_name, key, (long long)b->sizes[0],
                               dr_dtype_name(b->scalar_type), (long long)numel,
                               dr_dtype_name(type->dtype));
            dr_tensor_retain(b);
            *out = b;
            return DR_OK;
        }
    char entry_name[MAX_KEY + 600];
    snprintf(entry_name, sizeof entry_name, "%sdata/%s", L->prefix, key);
    const dr_zip_entry *e = dr_zip_find(&L->zip, entry_name);
    if (!e)
        return dr_fail(DR_ERR_IO, "torch_load: %s: storage '%s' has no entry %s in the archive",
                       L->path, key, entry_name);
    char zname[4200];
    snprintf(zname, sizeof zname, "torch_load: %s", L->path);
    DR_TRY(dr_zip_check_stored(zname, e));
    uint64_t want;
    if (__builtin_mul_overflow((uint64_t)numel, (uint64_t)type->file_size, &want) ||
        want != e->size)
        return dr_fail(DR_ERR_IO, "torch_load: %s: entry %s has %llu bytes; %lld elements of "
                       "torch.%s need %llu", L->path, entry_name, (unsigned long long)e->size,
                       (long long)numel, type->name, (unsigned long long)numel * type->file_size);
    uint8_t *p = L->map->base + e->data_offset;
    if (type->dtype == DR_BOOL)
        for (uint64_t i = 0; i < want; i++)
            if (p[i] > 1)
                return dr_fail(DR_ERR_IO, "torch_load: %s: entry %s (torch.BoolStorage) holds "
                               "byte 0x%02x at element %llu; booleans must be 0 or 1", L->path,
                               entry_name, p[i], (unsigned long long)i + 1);
    dr_tensor *base;
    if (!type->convert && want > 0 && (uintptr_t)p % (uintptr_t)type->file_size == 0)
        DR_TRY(wrap_mapped(L, p, (size_t)want, type->dtype, numel, &base));
    else
        DR_TRY(copy_storage(L, p, type, numel, &base));
    cached_storage c = {strdup(key), base};
    if (c.key && L->ncache == L->capcache) {
        int64_t ncap = L->capcache * 2 + 16;
        cached_storage *n = realloc(L->cache, (size_t)ncap * sizeof *n);
        if (n) L->cache = n, L->capcache = ncap;
    }
    if (!c.key || L->ncache == L->capcache) {
        free(c.key);
        dr_tensor_release(base);
        return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", L->path);
    }
    L->cache[L->ncache++] = c;
    dr_tensor_retain(base);
    *out = base;
    return DR_OK;
}

/* ---- flattening ----------------------------------------------------------------------- */

static dr_status add_entry(dr_torch_checkpoint *c, const char *path, const char *name,
                           const dr_pk_value *v) {
    if (c->count == c->cap) {
        int64_t ncap = c->cap * 2 + 64;
        tl_entry *n = realloc(c->entries, (size_t)ncap * sizeof *n);
        if (!n) return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", path);
        c->entries = n;
        c->cap = ncap;
    }
    tl_entry *e = &c->entries[c->count];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", path);
    c->count++;
    switch (v->kind) {
    case DR_PK_TENSOR: e->kind = DR_TORCH_TENSOR; e->tensor = v->tensor; dr_tensor_retain(v->tensor); break;
    case DR_PK_NONE: e->kind = DR_TORCH_NONE; break;
    case DR_PK_BOOL: e->kind = DR_TORCH_BOOL; e->i = v->i; e->f = (double)v->i; break;
    case DR_PK_INT: e->kind = DR_TORCH_INT; e->i = v->i; e->f = (double)v->i; break;
    case DR_PK_FLOAT: e->kind = DR_TORCH_FLOAT; e->f = v->f; break;
    default:
        e->kind = v->kind == DR_PK_STR ? DR_TORCH_STRING : DR_TORCH_BYTES;
        e->s = malloc(v->len + 1);
        if (!e->s) return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", path);
        memcpy(e->s, v->s, v->len + 1);
        e->len = v->len;
    }
    return DR_OK;
}

/* budget: containers and leaves left to visit. The memo lets a small pickle share one
 * list at every level of a deep tree (2^depth leaves); real checkpoints visit about
 * as many nodes as their pickle has opcodes. */
static dr_status flatten(dr_torch_checkpoint *c, const char *path, const dr_pk_value *v,
                         char *name, size_t nlen, int depth, int64_t *budget) {
    if (--*budget < 0)
        return dr_fail(DR_ERR_IO, "torch_load: %s: the object expands to more entries than "
                       "its pickle could describe (containers shared many times over)", path);
    if (depth > MAX_DEPTH)
        return dr_fail(DR_ERR_IO, "torch_load: %s: containers nested deeper than %d (at '%s'; "
                       "a container holding itself?)", path, MAX_DEPTH, name);
    bool dict = v->kind == DR_PK_DICT;
    if (!dict && v->kind != DR_PK_LIST && v->kind != DR_PK_TUPLE) {
        if (v->kind == DR_PK_GLOBAL || v->kind == DR_PK_STORAGE)
            return dr_fail(DR_ERR_IO, "torch_load: %s: '%s' is a %s, not a tensor or plain "
                           "value", path, name, v->kind == DR_PK_GLOBAL ? "class or function"
                                                                        : "bare storage");
        return add_entry(c, path, name, v);
    }
    for (int64_t i = 0; i < v->n; i++) {
        char part[32];
        const char *key = part;
        size_t klen;
        if (dict) {
            const dr_pk_value *k = v->items[2 * i];
            if (k->kind == DR_PK_STR) {
                if (strlen(k->s) != k->len)
                    return dr_fail(DR_ERR_IO, "torch_load: %s: a key in '%s' contains a NUL "
                                   "character", path, name);
                key = k->s;
            } else if (k->kind == DR_PK_INT || k->kind == DR_PK_BOOL) {
                snprintf(part, sizeof part, "%lld", (long long)k->i);
            } else {
                return dr_fail(DR_ERR_IO, "torch_load: %s: a key of '%s' is a %s; only str "
                               "and int keys are supported", path, name,
                               k->kind == DR_PK_TUPLE ? "tuple" : "non-string value");
            }
        } else {
            snprintf(part, sizeof part, "%lld", (long long)i);
        }
        klen = strlen(key);
        if (nlen + klen + 2 > MAX_KEY)
            return dr_fail(DR_ERR_IO, "torch_load: %s: a key under '%.64s...' is longer than "
                           "%d bytes", path, name, MAX_KEY);
        size_t n2 = nlen;
        if (nlen) name[n2++] = '.';
        memcpy(name + n2, key, klen + 1);
        DR_TRY(flatten(c, path, dict ? v->items[2 * i + 1] : v->items[i], name, n2 + klen,
                       depth + 1, budget));
        name[nlen] = '\0';
    }
    return DR_OK;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp((*(const tl_entry *const *)a)->name, (*(const tl_entry *const *)b)->name);
}

static dr_status check_unique(const dr_torch_checkpoint *c, const char *path) {
    if (c->count < 2) return DR_OK;
    const tl_entry **order = malloc((size_t)c->count * sizeof *order);
    if (!order) return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", path);
    for (int64_t i = 0; i < c->count; i++) order[i] = &c->entries[i];
    qsort(order, (size_t)c->count, sizeof *order, cmp_names);
    dr_status st = DR_OK;
    for (int64_t i = 1; i < c->count && st == DR_OK; i++)
        if (strcmp(order[i]->name, order[i - 1]->name) == 0)
            st = dr_fail(DR_ERR_IO, "torch_load: %s: the key '%s' occurs twice (after joining "
                         "nested keys with '.')", path, order[i]->name);
    free(order);
    return st;
}

/* ---- the archive ---------------------------------------------------------------------- */

static const uint8_t legacy_magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                       0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

static dr_status not_zip(const char *path, const uint8_t *b, size_t len) {
    if (len >= sizeof legacy_magic && memcmp(b, legacy_magic, sizeof legacy_magic) == 0)
        return dr_fail(DR_ERR_UNSUPPORTED, "torch_load: %s is in PyTorch's legacy format (torch "
                       "< 1.6 or _use_new_zipfile_serialization=False), which diffrl does not "
                       "read; re-save it with torch.save in torch >= 1.6, or convert it with "
                       "tools/convert_to_safetensors.py", path);
    if (len >= 1 && b[0] == 0x80)
        return dr_fail(DR_ERR_UNSUPPORTED, "torch_load: %s is a bare pickle, not a torch.save "
                       "zip archive; re-save it with torch.save", path);
    return dr_fail(DR_ERR_IO, "torch_load: %s is not a PyTorch checkpoint (not a zip archive)",
                   path);
}

static dr_status find_archive(loader *L, char *prefix, size_t cap) {
    if (L->zip.count == 0)
        return dr_fail(DR_ERR_IO, "torch_load: %s: the zip archive is empty", L->path);
    const char *first = L->zip.entries[0].name, *slash = strchr(first, '/');
    size_t plen = slash ? (size_t)(slash - first) + 1 : 0;
    if (plen + 32 > cap)
        return dr_fail(DR_ERR_IO, "torch_load: %s: the archive name is too long", L->path);
    memcpy(prefix, first, plen);
    strcpy(prefix + plen, "data.pkl");
    if (!dr_zip_find(&L->zip, prefix)) {
        strcpy(prefix + plen, "constants.pkl");
        bool script = dr_zip_find(&L->zip, prefix) != NULL;
        prefix[plen] = '\0';
        return dr_fail(DR_ERR_IO, "torch_load: %s: no entry %sdata.pkl: %s", L->path, prefix,
                       script ? "a TorchScript archive (torch.jit.save), not a torch.save "
                                "checkpoint; save its state_dict() with torch.save"
                              : "a zip file, but not a torch.save checkpoint");
    }
    prefix[plen] = '\0';
    return DR_OK;
}

static dr_status check_byteorder(loader *L, const char *prefix) {
    char name[640];
    snprintf(name, sizeof name, "%sbyteorder", prefix);
    const dr_zip_entry *e = dr_zip_find(&L->zip, name);
    if (!e) return DR_OK; /* torch < 1.10 wrote none: little-endian */
    char zname[4200];
    snprintf(zname, sizeof zname, "torch_load: %s", L->path);
    DR_TRY(dr_zip_check_stored(zname, e));
    const char *p = (const char *)L->map->base + e->data_offset;
    if (e->size == 6 && memcmp(p, "little", 6) == 0) return DR_OK;
    return dr_fail(DR_ERR_UNSUPPORTED, "torch_load: %s: %s says '%.*s'; only little-endian "
                   "checkpoints are supported", L->path, name, (int)(e->size < 16 ? e->size : 16),
                   p);
}

static dr_status load_mapping(const char *path, tl_mapping *m, dr_torch_checkpoint **out) {
    loader L = {.path = path, .map = m};
    const dr_pk_value *root = NULL;
    dr_pickle *vm = NULL;
    char prefix[600], zname[4200];
    dr_torch_checkpoint *c = NULL;
    dr_status st = DR_OK;
    snprintf(zname, sizeof zname, "torch_load: %s", path);
    if (m->len < 4 || memcmp(m->base, "PK\x03\x04", 4) != 0) st = not_zip(path, m->base, m->len);
    if (st == DR_OK) st = dr_zip_parse(zname, m->base, m->len, &L.zip);
    if (st == DR_OK) st = find_archive(&L, prefix, sizeof prefix);
    L.prefix = prefix;
    if (st == DR_OK) st = check_byteorder(&L, prefix);
    const dr_zip_entry *pkl = NULL;
    if (st == DR_OK) {
        char name[640];
        snprintf(name, sizeof name, "%sdata.pkl", prefix);
        snprintf(L.pkl_name, sizeof L.pkl_name, "torch_load: %s: %s", path, name);
        pkl = dr_zip_find(&L.zip, name);
        st = dr_zip_check_stored(zname, pkl);
    }
    if (st == DR_OK && dr_zip_crc32(m->base + pkl->data_offset, (size_t)pkl->size) != pkl->crc32)
        st = dr_fail(DR_ERR_IO, "%s: CRC-32 mismatch: the file is corrupt", L.pkl_name);
    if (st == DR_OK)
        st = dr_pickle_load(L.pkl_name, m->base + pkl->data_offset, (size_t)pkl->size,
                            get_storage, &L, &vm, &root);
    if (st == DR_OK && !(c = calloc(1, sizeof *c)))
        st = dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", path);
    if (st == DR_OK) {
        char *name = malloc(MAX_KEY + 1);
        if (!name) st = dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", path);
        else {
            name[0] = '\0';
            int64_t budget = 4 * (int64_t)pkl->size + 1024;
            st = flatten(c, path, root, name, 0, 0, &budget);
            free(name);
        }
    }
    if (st == DR_OK) st = check_unique(c, path);
    dr_pickle_free(vm);
    for (int64_t i = 0; i < L.ncache; i++) {
        free(L.cache[i].key);
        dr_tensor_release(L.cache[i].base);
    }
    free(L.cache);
    dr_zip_free(&L.zip);
    mapping_release(m);
    if (st != DR_OK) {
        dr_torch_checkpoint_free(c);
        return st;
    }
    *out = c;
    return DR_OK;
}

dr_status dr_torch_load(const char *path, dr_torch_checkpoint **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "torch_load: out is NULL");
    *out = NULL;
    if (!path) return dr_fail(DR_ERR_ARG, "torch_load: path is NULL");
    tl_mapping *m;
    DR_TRY(map_file(path, &m));
    return load_mapping(path, m, out);
}

dr_status dr_torch_load_buffer(const char *name, const uint8_t *bytes, size_t len,
                               dr_torch_checkpoint **out) {
    *out = NULL;
    tl_mapping *m = calloc(1, sizeof *m);
    uint8_t *copy = malloc(len ? len : 1);
    if (!m || !copy) {
        free(m);
        free(copy);
        return dr_fail(DR_ERR_OOM, "torch_load: %s: out of memory", name);
    }
    if (len) memcpy(copy, bytes, len);
    m->refcount = 1;
    m->base = copy;
    m->len = len;
    return load_mapping(name, m, out);
}

/* ---- the result ----------------------------------------------------------------------- */

int64_t dr_torch_checkpoint_count(const dr_torch_checkpoint *c) { return c ? c->count : 0; }

static const tl_entry *entry_at(const dr_torch_checkpoint *c, int64_t i) {
    return c && i >= 0 && i < c->count ? &c->entries[i] : NULL;
}

const char *dr_torch_checkpoint_name(const dr_torch_checkpoint *c, int64_t i) {
    const tl_entry *e = entry_at(c, i);
    return e ? e->name : NULL;
}

int32_t dr_torch_checkpoint_kind(const dr_torch_checkpoint *c, int64_t i) {
    const tl_entry *e = entry_at(c, i);
    return e ? e->kind : -1;
}

dr_status dr_torch_checkpoint_tensor(const dr_torch_checkpoint *c, int64_t i, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "torch_load"));
    const tl_entry *e = entry_at(c, i);
    if (!e) return dr_fail(DR_ERR_ARG, "torch_load: entry %lld is out of range", (long long)i);
    if (e->kind != DR_TORCH_TENSOR)
        return dr_fail(DR_ERR_ARG, "torch_load: '%s' is not a tensor", e->name);
    dr_tensor_retain(e->tensor);
    *out = e->tensor;
    return DR_OK;
}

int64_t dr_torch_checkpoint_int(const dr_torch_checkpoint *c, int64_t i) {
    const tl_entry *e = entry_at(c, i);
    return e ? e->i : 0;
}

double dr_torch_checkpoint_number(const dr_torch_checkpoint *c, int64_t i) {
    const tl_entry *e = entry_at(c, i);
    return e ? e->f : 0.0;
}

const char *dr_torch_checkpoint_string(const dr_torch_checkpoint *c, int64_t i, size_t *len) {
    const tl_entry *e = entry_at(c, i);
    if (len) *len = e && e->s ? e->len : 0;
    return e ? e->s : NULL;
}

void dr_torch_checkpoint_free(dr_torch_checkpoint *c) {
    if (!c) return;
    for (int64_t i = 0; i < c->count; i++) {
        free(c->entries[i].name);
        free(c->entries[i].s);
        if (c->entries[i].tensor) dr_tensor_release(c->entries[i].tensor);
    }
    free(c->entries);
    free(c);
}
