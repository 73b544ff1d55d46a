/* Webdataset .tar shards: an index of samples built from the headers alone.
 *
 * Formats: POSIX ustar (name = prefix "/" name), GNU (magic "ustar  ", long names
 * in 'L' records, sizes in base-256), old v7 headers, and pax 'x' records (their
 * "path" and "size" override the next header's). Only regular files ('0', '\0',
 * '7') become members; directories, links, pax 'g' and other records are skipped.
 * The header checksum is the byte sum with the checksum field read as spaces
 * (unsigned, or the signed sum old tars wrote).
 *
 * Grouping follows webdataset's tariterators.group_by_keys / base_plus_ext: the key
 * of "dir/000012.seg.jpg" is "dir/000012" (the path up to the first '.' of the file
 * name), its extension "seg.jpg"; consecutive members with one key form a sample.
 * A name with no '.' in its file name is no sample's member (webdataset skips it).
 *
 * Damage never fails the open: a header whose checksum does not match, or a
 * member whose data runs past the end of the file, ends the index there, and
 * dr_tar_problem says what and at which byte. A member cut short stays in its sample,
 * marked, so the reader can skip that one sample by name and go on. */
#define _FILE_OFFSET_BITS 64
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "diffrl.h"
#include "../util/error.h"

typedef struct {
    size_t name;     /* arena offsets */
    size_t ext;
    int64_t offset;  /* of the data */
    int64_t size;
    int64_t present; /* bytes in the file when cut short, else -1 */
} tar_member;

typedef struct {
    size_t key;
    int64_t first;
    int32_t count;
} tar_sample;

struct dr_tar {
    char *name;
    char *arena;
    size_t arena_len, arena_cap;
    tar_member *members;
    int64_t n_members, cap_members;
    tar_sample *samples;
    int64_t n_samples, cap_samples;
    char problem[512];
    /* the source while indexing: a file or bytes in memory */
    FILE *fp;
    const uint8_t *mem;
    int64_t size;
};

enum { BLOCK = 512, MAX_NAME = 65536 };

static int read_at(dr_tar *t, int64_t off, void *buf, size_t n) {
    if (off < 0 || off > t->size || (int64_t)n > t->size - off) return -1;
    if (t->mem) {
        memcpy(buf, t->mem + off, n);
        return 0;
    }
    if (fseeko(t->fp, off, SEEK_SET) != 0) return -1;
    return fread(buf, 1, n, t->fp) == n ? 0 : -1;
}

/* Appends n bytes and a NUL to the arena; returns the offset or (size_t)-1. */
static size_t arena_add(dr_tar *t, const char *s, size_t n) {
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < t->arena_len + n + 1) cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a) return (size_t)-1;
        t->arena = a, t->arena_cap = cap;
    }
    size_t at = t->arena_len;
    memcpy(t->arena + at, s, n);
    t->arena[at + n] = '\0';
    t->arena_len += n + 1;
    return at;
}

/* An octal field (NUL / space terminated) or GNU base-256 (high bit set). */
static int parse_number(const uint8_t *f, size_t n, int64_t *out) {
    int64_t v = 0;
    if (f[0] & 0x80) {
        if (f[0] != 0x80) return -1; /* negative or > 2^63 */
        for (size_t i = 1; i < n; i++) {
            if (v > (INT64_MAX >> 8)) return -1;
            v = (v << 8) | f[i];
        }
        *out = v;
        return 0;
    }
    size_t i = 0;
    while (i < n && f[i] == ' ') i++;
    int digits = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (v > (INT64_MAX >> 3)) return -1;
        v = (v << 3) | (f[i] - '0');
    }
    for (; i < n; i++)
        if (f[i] != ' ' && f[i] != '\0') return -1;
    *out = v;
    return digits ? 0 : -1;
}

static int checksum_ok(const uint8_t *h) {
    int64_t want;
    if (parse_number(h + 148, 8, &want) != 0) return 0;
    int64_t u = 0, s = 0;
    for (int i = 0; i < BLOCK; i++) {
        int c = (i >= 148 && i < 156) ? ' ' : h[i];
        u += (uint8_t)c;
        s += (int8_t)c;
    }
    return want == u || want == s;
}

static int all_zero(const uint8_t *h) {
    for (int i = 0; i < BLOCK; i++)
        if (h[i]) return 0;
    return 1;
}

static dr_status oom(dr_tar *t) { return dr_fail(DR_ERR_OOM, "tar: %s: out of memory", t->name); }

/* Adds member `name` (n bytes) at data offset off: to the current sample when its
 * key continues it, else to a new sample. */
static dr_status add_member(dr_tar *t, const char *name, size_t n, int64_t off, int64_t size,
                            int64_t present) {
    size_t base = 0;
    for (size_t i = 0; i < n; i++)
        if (name[i] == '/') base = i + 1;
    const char *dot = memchr(name + base, '.', n - base);
    if (!dot || dot == name + base) return DR_OK; /* no key: not a sample's member */
    size_t keylen = (size_t)(dot - name);
    if (t->n_members == t->cap_members) {
        int64_t cap = t->cap_members ? t->cap_members * 2 : 256;
        tar_member *m = realloc(t->members, (size_t)cap * sizeof *m);
        if (!m) return oom(t);
        t->members = m, t->cap_members = cap;
    }
    size_t at = arena_add(t, name, n);
    if (at == (size_t)-1) return oom(t);
    tar_sample *last = t->n_samples ? &t->samples[t->n_samples - 1] : NULL;
    if (!last || strlen(t->arena + last->key) != keylen ||
        memcmp(t->arena + last->key, name, keylen) != 0) {
        if (t->n_samples == t->cap_samples) {
            int64_t cap = t->cap_samples ? t->cap_samples * 2 : 128;
            tar_sample *s = realloc(t->samples, (size_t)cap * sizeof *s);
            if (!s) return oom(t);
            t->samples = s, t->cap_samples = cap;
        }
        size_t key = arena_add(t, name, keylen);
        if (key == (size_t)-1) return oom(t);
        last = &t->samples[t->n_samples++];
        last->key = key, last->first = t->n_members, last->count = 0;
    }
    tar_member *m = &t->members[t->n_members++];
    m->name = at, m->ext = at + keylen + 1, m->offset = off, m->size = size, m->present = present;
    last->count++;
    return DR_OK;
}

/* The value of `key` in a pax extended header's records ("LEN key=value\n"). */
static int pax_value(const char *rec, size_t n, const char *key, const char **val, size_t *vlen) {
    size_t klen = strlen(key), i = 0;
    while (i < n) {
        size_t len = 0, j = i;
        while (j < n && rec[j] >= '0' && rec[j] <= '9' && len < n) len = len * 10 + (size_t)(rec[j++] - '0');
        if (j >= n || rec[j] != ' ' || len == 0 || len > n - i) return 0;
        const char *kv = rec + j + 1, *end = rec + i + len - 1; /* end: the '\n' */
        if (kv + klen < end && memcmp(kv, key, klen) == 0 && kv[klen] == '=') {
            *val = kv + klen + 1;
            *vlen = (size_t)(end - *val);
            return 1;
        }
        i += len;
    }
    return 0;
}

static dr_status build_index(dr_tar *t) {
    uint8_t h[BLOCK];
    char *long_name = NULL; /* from a GNU 'L' or pax "path" record, for the next header */
    size_t long_len = 0;
    int64_t pax_size = -1;
    int64_t off = 0;
    size_t prev = (size_t)-1; /* arena offset of the last member's name */
    dr_status st = DR_OK;
    while (off + BLOCK <= t->size) {
        if (read_at(t, off, h, BLOCK) != 0) {
            snprintf(t->problem, sizeof t->problem, "%s: cannot read the header at byte %lld",
                     t->name, (long long)off);
            break;
        }
        if (all_zero(h)) break; /* end of archive */
        if (!checksum_ok(h)) {
            snprintf(t->problem, sizeof t->problem,
                     "%s: bad header checksum at byte %lld%s%.200s%s: the rest of the file is skipped",
                     t->name, (long long)off, prev != (size_t)-1 ? " (after member " : "",
                     prev != (size_t)-1 ? t->arena + prev : "", prev != (size_t)-1 ? ")" : "");
            break;
        }
        int64_t size;
        if (parse_number(h + 124, 12, &size) != 0) {
            snprintf(t->problem, sizeof t->problem,
                     "%s: unreadable size in the header at byte %lld: the rest of the file is skipped",
                     t->name, (long long)off);
            break;
        }
        char type = (char)h[156];
        int64_t data = off + BLOCK;
        int64_t present = size <= t->size - data ? -1 : t->size - data;
        if (type == 'L' || type == 'x') {
            if (present >= 0 || size > MAX_NAME) {
                snprintf(t->problem, sizeof t->problem,
                         "%s: the %s record at byte %lld is %s: the rest of the file is skipped",
                         t->name, type == 'L' ? "GNU long-name" : "pax", (long long)off,
                         present >= 0 ? "cut short" : "too long");
                break;
            }
            char *buf = malloc((size_t)size + 1);
            if (!buf) { st = oom(t); break; }
            if (read_at(t, data, buf, (size_t)size) != 0) {
                free(buf);
                snprintf(t->problem, sizeof t->problem, "%s: cannot read the record at byte %lld",
                         t->name, (long long)data);
                break;
            }
            buf[size] = '\0';
            if (type == 'L') {
                free(long_name);
                long_name = buf;
                long_len = strnlen(buf, (size_t)size);
            } else {
                const char *v;
                size_t vlen;
                if (pax_value(buf, (size_t)size, "path", &v, &vlen)) {
                    vlen = strnlen(v, vlen); /* a name ends at a NUL, as in a header */
                    char *name = malloc(vlen + 1);
                    if (!name) { free(buf); st = oom(t); break; }
                    memcpy(name, v, vlen);
                    name[vlen] = '\0';
                    free(long_name);
                    long_name = name, long_len = vlen;
                }
                if (pax_value(buf, (size_t)size, "size", &v, &vlen)) {
                    int64_t ps = 0;
                    size_t i = 0;
                    for (; i < vlen && v[i] >= '0' && v[i] <= '9' && ps < (INT64_MAX / 10 - 9); i++)
                        ps = ps * 10 + (v[i] - '0');
                    if (i == vlen && vlen > 0) pax_size = ps;
                }
                free(buf);
            }
        } else {
            if (pax_size >= 0) {
                size = pax_size;
                present = size <= t->size - data ? -1 : t->size - data;
            }
            if (type == '0' || type == '\0' || type == '7') {
                char name[256 + 1];
                const char *nm = name;
                size_t n;
                if (long_name) {
                    nm = long_name, n = long_len;
                } else {
                    size_t nlen = strnlen((const char *)h, 100);
                    int ustar = memcmp(h + 257, "ustar\0", 6) == 0; /* POSIX, not GNU */
                    size_t plen = ustar ? strnlen((const char *)h + 345, 155) : 0;
                    n = 0;
                    if (plen) {
                        memcpy(name, h + 345, plen);
                        name[plen] = '/';
                        n = plen + 1;
                    }
                    memcpy(name + n, h, nlen);
                    n += nlen;
                    name[n] = '\0';
                }
                st = add_member(t, nm, n, data, size, present);
                if (st != DR_OK) break;
                if (t->n_members) prev = t->members[t->n_members - 1].name;
                if (present >= 0) {
                    snprintf(t->problem, sizeof t->problem,
                             "%s: member %.*s is cut short (%lld of %lld bytes): the file ends there",
                             t->name, (int)(n > 200 ? 200 : n), nm, (long long)present, (long long)size);
                }
            }
            free(long_name);
            long_name = NULL, long_len = 0, pax_size = -1;
            if (present >= 0) break;
        }
        int64_t padded = (size + BLOCK - 1) / BLOCK * BLOCK;
        if (padded > t->size - data) break; /* the last member's padding may be missing */
        off = data + padded;
    }
    if (!t->problem[0] && off + BLOCK > t->size && off < t->size && st == DR_OK) {
        snprintf(t->problem, sizeof t->problem, "%s: %lld stray bytes at the end (byte %lld)",
                 t->name, (long long)(t->size - off), (long long)off);
    }
    free(long_name);
    return st;
}

static dr_status open_common(dr_tar *t, dr_tar **out) {
    dr_status st = build_index(t);
    if (t->fp) fclose(t->fp);
    t->fp = NULL, t->mem = NULL;
    if (st != DR_OK) {
        dr_tar_close(t);
        return st;
    }
    *out = t;
    return DR_OK;
}

static dr_tar *new_tar(const char *name) {
    dr_tar *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->name = strdup(name);
    if (!t->name) {
        free(t);
        return NULL;
    }
    return t;
}

dr_status dr_tar_open(const char *path, dr_tar **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "tar: open: out is NULL");
    *out = NULL;
    if (!path) return dr_fail(DR_ERR_ARG, "tar: open: path is NULL");
    dr_tar *t = new_tar(path);
    if (!t) return dr_fail(DR_ERR_OOM, "tar: %s: out of memory", path);
    char e[128];
    t->fp = fopen(path, "rb");
    if (!t->fp) {
        dr_status st = dr_fail(DR_ERR_IO, "tar: cannot open %s: %s", path, strerror_r(errno, e, sizeof e));
        dr_tar_close(t);
        return st;
    }
    struct stat sb;
    if (fstat(fileno(t->fp), &sb) == 0 && !S_ISREG(sb.st_mode)) {
        dr_status st = dr_fail(DR_ERR_IO, "tar: %s is not a regular file", path);
        dr_tar_close(t);
        return st;
    }
    if (fseeko(t->fp, 0, SEEK_END) != 0 || (t->size = ftello(t->fp)) < 0) {
        dr_status st = dr_fail(DR_ERR_IO, "tar: cannot seek in %s: %s", path, strerror_r(errno, e, sizeof e));
        dr_tar_close(t);
        return st;
    }
    return open_common(t, out);
}

dr_status dr_tar_open_memory(const uint8_t *data, size_t size, const char *name, dr_tar **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "tar: open: out is NULL");
    *out = NULL;
    if (!name) name = "<memory>";
    if (!data && size) return dr_fail(DR_ERR_ARG, "tar: %s: data is NULL", name);
    dr_tar *t = new_tar(name);
    if (!t) return dr_fail(DR_ERR_OOM, "tar: %s: out of memory", name);
    t->mem = data ? data : (const uint8_t *)"";
    t->size = (int64_t)size;
    return open_common(t, out);
}

void dr_tar_close(dr_tar *t) {
    if (!t) return;
    if (t->fp) fclose(t->fp);
    free(t->name);
    free(t->arena);
    free(t->members);
    free(t->samples);
    free(t);
}

int64_t dr_tar_sample_count(const dr_tar *t) { return t ? t->n_samples : 0; }

const char *dr_tar_sample_key(const dr_tar *t, int64_t i) {
    if (!t || i < 0 || i >= t->n_samples) return NULL;
    return t->arena + t->samples[i].key;
}

int32_t dr_tar_sample_members(const dr_tar *t, int64_t i) {
    if (!t || i < 0 || i >= t->n_samples) return 0;
    return t->samples[i].count;
}

dr_status dr_tar_member(const dr_tar *t, int64_t i, int32_t j, const char **name, const char **ext,
                        int64_t *offset, int64_t *size, int64_t *present) {
    if (!t) return dr_fail(DR_ERR_ARG, "tar: member: the index is NULL");
    if (i < 0 || i >= t->n_samples)
        return dr_fail(DR_ERR_ARG, "tar: %s: sample %lld out of range [0, %lld)", t->name,
                       (long long)i, (long long)t->n_samples);
    const tar_sample *s = &t->samples[i];
    if (j < 0 || j >= s->count)
        return dr_fail(DR_ERR_ARG, "tar: %s: sample %s has %d members, asked for member %d", t->name,
                       t->arena + s->key, (int)s->count, (int)j);
    const tar_member *m = &t->members[s->first + j];
    if (name) *name = t->arena + m->name;
    if (ext) *ext = t->arena + m->ext;
    if (offset) *offset = m->offset;
    if (size) *size = m->size;
    if (present) *present = m->present;
    return DR_OK;
}

const char *dr_tar_problem(const dr_tar *t) { return t && t->problem[0] ? t->problem : NULL; }
