/*
 * Zip archives in memory (APPNOTE.TXT 6.3.x, PKWARE): the end-of-central-directory
 * record (EOCD, found by scanning back over at most a 64 KiB comment), its zip64
 * locator and record when present, then the central directory (CD). Sizes and
 * offsets come from the CD (torch's writer sets bit 3 and leaves the local
 * headers' sizes zero, with data descriptors after the data); the local header only
 * gives where the data starts (30 + its own name and extra lengths: torch pads the
 * extra field so storages start 64-byte aligned).
 *
 * Every number read is checked against the buffer before use: the fuzz target
 * (fuzz/fuzz_zip.c) feeds arbitrary bytes here.
 */
#include "zip.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../util/error.h"

enum {
    SIG_LOCAL = 0x04034b50,
    SIG_CENTRAL = 0x02014b50,
    SIG_EOCD = 0x06054b50,
    SIG_EOCD64 = 0x06064b50,
    SIG_LOCATOR64 = 0x07064b50,
    EOCD_LEN = 22,
    LOCATOR64_LEN = 20,
    EOCD64_LEN = 56,
    CENTRAL_LEN = 46,
    LOCAL_LEN = 30,
    MAX_COMMENT = 65535,
    ZIP64_EXTRA_ID = 0x0001
};

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

uint32_t dr_zip_crc32(const uint8_t *p, size_t n) {
    static uint32_t table[256];
    static int ready;  /* benign race: every thread writes the same values */
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* Finds the EOCD: the last signature whose comment length reaches exactly the end. */
static bool find_eocd(const uint8_t *b, size_t len, size_t *at) {
    if (len < EOCD_LEN) return false;
    size_t lowest = len - EOCD_LEN > MAX_COMMENT ? len - EOCD_LEN - MAX_COMMENT : 0;
    for (size_t i = len - EOCD_LEN + 1; i-- > lowest;) {
        if (rd32(b + i) == SIG_EOCD && i + EOCD_LEN + rd16(b + i + 20) == len) {
            *at = i;
            return true;
        }
    }
    return false;
}

typedef struct cd_info {
    uint64_t count, size, offset;
} cd_info;

static dr_status read_eocd(const char *name, const uint8_t *b, size_t len, cd_info *cd) {
    size_t at;
    if (!find_eocd(b, len, &at))
        return dr_fail(DR_ERR_IO, "%s: not a zip archive (no end-of-central-directory record)",
                       name);
    if (rd16(b + at + 4) != 0 || rd16(b + at + 6) != 0)
        return dr_fail(DR_ERR_IO, "%s: multi-disk (split) zip archives are not supported", name);
    cd->count = rd16(b + at + 10);
    cd->size = rd32(b + at + 12);
    cd->offset = rd32(b + at + 16);
    if (at >= LOCATOR64_LEN && rd32(b + at - LOCATOR64_LEN) == SIG_LOCATOR64) {
        const uint8_t *loc = b + at - LOCATOR64_LEN;
        uint64_t rec = rd64(loc + 8);
        if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1)
            return dr_fail(DR_ERR_IO, "%s: multi-disk (split) zip64 archives are not supported",
                           name);
        if (rec > len || len - rec < EOCD64_LEN || rd32(b + rec) != SIG_EOCD64)
            return dr_fail(DR_ERR_IO, "%s: the zip64 end-of-central-directory record is missing "
                           "or lies outside the file (offset %llu)", name,
                           (unsigned long long)rec);
        cd->count = rd64(b + rec + 32);
        cd->size = rd64(b + rec + 40);
        cd->offset = rd64(b + rec + 48);
    }
    if (cd->offset > len || cd->size > len - cd->offset)
        return dr_fail(DR_ERR_IO, "%s: the central directory (offset %llu, %llu bytes) lies "
                       "outside the file (%zu bytes): truncated or not a zip archive", name,
                       (unsigned long long)cd->offset, (unsigned long long)cd->size, len);
    if (cd->count > cd->size / CENTRAL_LEN)
        return dr_fail(DR_ERR_IO, "%s: the central directory claims %llu entries in %llu bytes",
                       name, (unsigned long long)cd->count, (unsigned long long)cd->size);
    return DR_OK;
}

/* Applies the zip64 extended-information extra field to the fields set to all ones. */
static dr_status apply_zip64(const char *name, const char *entry, const uint8_t *extra,
                             size_t n, uint64_t *usize, uint64_t *csize, uint64_t *offset) {
    for (size_t i = 0; i + 4 <= n;) {
        uint16_t id = rd16(extra + i), sz = rd16(extra + i + 2);
        if (sz > n - i - 4) break; /* a ragged tail, as other readers tolerate */
        if (id == ZIP64_EXTRA_ID) {
            const uint8_t *p = extra + i + 4, *end = p + sz;
            uint64_t *fields[3] = {usize, csize, offset};
            for (int k = 0; k < 3; k++) {
                if (*fields[k] != 0xFFFFFFFFu) continue;
                if (end - p < 8)
                    return dr_fail(DR_ERR_IO, "%s: entry '%s': the zip64 extra field is too "
                                   "short", name, entry);
                *fields[k] = rd64(p);
                p += 8;
            }
            return DR_OK;
        }
        i += 4 + (size_t)sz;
    }
    if (*usize == 0xFFFFFFFFu || *csize == 0xFFFFFFFFu || *offset == 0xFFFFFFFFu)
        return dr_fail(DR_ERR_IO, "%s: entry '%s' needs a zip64 extra field and has none", name,
                       entry);
    return DR_OK;
}

static dr_status read_entry(const char *name, const uint8_t *b, size_t len, const uint8_t *c,
                            size_t room, char **pool, dr_zip_entry *e, size_t *used) {
    if (room < CENTRAL_LEN || rd32(c) != SIG_CENTRAL)
        return dr_fail(DR_ERR_IO, "%s: a central directory entry is damaged (bad signature or "
                       "truncated)", name);
    size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
    if (CENTRAL_LEN + nlen + xlen + clen > room)
        return dr_fail(DR_ERR_IO, "%s: a central directory entry runs past the directory", name);
    const char *raw = (const char *)c + CENTRAL_LEN;
    if (memchr(raw, '\0', nlen))
        return dr_fail(DR_ERR_IO, "%s: an entry name contains a NUL byte", name);
    memcpy(*pool, raw, nlen);
    (*pool)[nlen] = '\0';
    e->name = *pool;
    *pool += nlen + 1;
    e->flags = rd16(c + 8);
    e->method = rd16(c + 10);
    e->crc32 = rd32(c + 16);
    e->stored_size = rd32(c + 20);
    e->size = rd32(c + 24);
    uint64_t local = rd32(c + 42);
    if (rd16(c + 34) != 0)
        return dr_fail(DR_ERR_IO, "%s: entry '%s' lies on another disk (split archive)", name,
                       e->name);
    DR_TRY(apply_zip64(name, e->name, c + CENTRAL_LEN + nlen, xlen, &e->size, &e->stored_size,
                       &local));
    if (local > len || len - local < LOCAL_LEN || rd32(b + local) != SIG_LOCAL)
        return dr_fail(DR_ERR_IO, "%s: entry '%s': no local header at offset %llu", name,
                       e->name, (unsigned long long)local);
    size_t lnlen = rd16(b + local + 26), lxlen = rd16(b + local + 28);
    uint64_t data = local + LOCAL_LEN + lnlen + lxlen;
    if (lnlen != nlen || data > len || memcmp(b + local + LOCAL_LEN, raw, nlen) != 0)
        return dr_fail(DR_ERR_IO, "%s: entry '%s': the local header does not match the central "
                       "directory", name, e->name);
    if (e->stored_size > len - data)
        return dr_fail(DR_ERR_IO, "%s: entry '%s' (%llu bytes at offset %llu) runs past the end "
                       "of the file (%zu bytes): truncated", name, e->name,
                       (unsigned long long)e->stored_size, (unsigned long long)data, len);
    e->data_offset = data;
    *used = CENTRAL_LEN + nlen + xlen + clen;
    return DR_OK;
}

dr_status dr_zip_parse(const char *name, const uint8_t *bytes, size_t len, dr_zip *out) {
    memset(out, 0, sizeof *out);
    cd_info cd = {0, 0, 0};
    DR_TRY(read_eocd(name, bytes, len, &cd));
    out->entries = calloc((size_t)cd.count + 1, sizeof *out->entries);
    out->names = malloc((size_t)cd.size + 1); /* names are shorter than their records */
    if (!out->entries || !out->names) {
        dr_zip_free(out);
        return dr_fail(DR_ERR_OOM, "%s: out of memory for the zip directory", name);
    }
    char *pool = out->names;
    const uint8_t *c = bytes + cd.offset;
    size_t room = (size_t)cd.size;
    for (uint64_t i = 0; i < cd.count; i++) {
        size_t used = 0;
        dr_status st = read_entry(name, bytes, len, c, room, &pool, &out->entries[i], &used);
        if (st != DR_OK) {
            dr_zip_free(out);
            return st;
        }
        c += used;
        room -= used;
        out->count++;
    }
    return DR_OK;
}

void dr_zip_free(dr_zip *z) {
    if (!z) return;
    free(z->entries);
    free(z->names);
    memset(z, 0, sizeof *z);
}

const dr_zip_entry *dr_zip_find(const dr_zip *z, const char *entry) {
    for (int64_t i = 0; i < z->count; i++)
        if (strcmp(z->entries[i].name, entry) == 0) return &z->entries[i];
    return NULL;
}

dr_status dr_zip_check_stored(const char *name, const dr_zip_entry *e) {
    if (e->flags & 1)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: entry '%s' is encrypted", name, e->name);
    if (e->method != 0)
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: entry '%s' is compressed (zip method %u%s); only "
                       "stored entries are supported, as torch.save writes them (re-save the "
                       "checkpoint with torch.save, or re-zip it with `zip -0`)", name, e->name,
                       (unsigned)e->method, e->method == 8 ? ", deflate" : "");
    if (e->size != e->stored_size)
        return dr_fail(DR_ERR_IO, "%s: entry '%s' is stored but its sizes differ (%llu and %llu)",
                       name, e->name, (unsigned long long)e->size,
                       (unsigned long long)e->stored_size);
    return DR_OK;
}
