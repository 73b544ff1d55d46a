/* The zip reader under PyTorch checkpoints (core/io/zip.c): archives built here
 * byte by byte — stored entries, torch's aligned extra fields and data descriptors
 * (bit 3, zero sizes in the local header), zip64 records and extra fields, a
 * trailing comment — parse to the right names, offsets and sizes; every damaged
 * structure is an error naming the archive (and the entry); compressed and
 * encrypted entries are refused by name; random mutations never crash. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "io/zip.h"

typedef struct buf {
    uint8_t b[8192];
    size_t n;
} buf;

static void put(buf *z, const void *p, size_t n) {
    memcpy(z->b + z->n, p, n);
    z->n += n;
}
static void u16(buf *z, uint32_t v) { uint8_t b[2] = {v & 255, v >> 8}; put(z, b, 2); }
static void u32(buf *z, uint32_t v) { u16(z, v & 0xFFFF); u16(z, v >> 16); }
static void u64(buf *z, uint64_t v) { u32(z, (uint32_t)v); u32(z, (uint32_t)(v >> 32)); }

typedef struct spec {
    const char *name;
    const char *data;
    uint16_t method, flags;
    int pad;        /* bytes of extra field in the local header (torch aligns with it) */
    int zip64;      /* central entry stores offset and sizes in a zip64 extra field */
} spec;

/* An archive of the entries; zip64_eocd adds the zip64 EOCD record and locator. */
static void build(buf *z, const spec *e, int n, int zip64_eocd, const char *comment) {
    uint64_t offs[16];
    z->n = 0;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(e[i].name), dl = strlen(e[i].data);
        offs[i] = z->n;
        u32(z, 0x04034b50); u16(z, 20); u16(z, e[i].flags); u16(z, e[i].method);
        u32(z, 0); u32(z, dr_zip_crc32((const uint8_t *)e[i].data, dl));
        u32(z, e[i].flags & 8 ? 0 : (uint32_t)dl); u32(z, e[i].flags & 8 ? 0 : (uint32_t)dl);
        u16(z, (uint32_t)nl); u16(z, (uint32_t)e[i].pad);
        put(z, e[i].name, nl);
        for (int k = 0; k < e[i].pad; k++) put(z, "F", 1);
        put(z, e[i].data, dl);
        if (e[i].flags & 8) { u32(z, 0x08074b50); u32(z, 0); u32(z, (uint32_t)dl); u32(z, (uint32_t)dl); }
    }
    uint64_t cd = z->n;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(e[i].name), dl = strlen(e[i].data);
        u32(z, 0x02014b50); u16(z, 20); u16(z, 20); u16(z, e[i].flags); u16(z, e[i].method);
        u32(z, 0); u32(z, dr_zip_crc32((const uint8_t *)e[i].data, dl));
        u32(z, e[i].zip64 ? 0xFFFFFFFF : (uint32_t)dl); u32(z, e[i].zip64 ? 0xFFFFFFFF : (uint32_t)dl);
        u16(z, (uint32_t)nl); u16(z, e[i].zip64 ? 28 : 0); u16(z, 0); u16(z, 0); u16(z, 0);
        u32(z, 0); u32(z, e[i].zip64 ? 0xFFFFFFFF : (uint32_t)offs[i]);
        put(z, e[i].name, nl);
        if (e[i].zip64) { u16(z, 1); u16(z, 24); u64(z, dl); u64(z, dl); u64(z, offs[i]); }
    }
    uint64_t cd_size = z->n - cd;
    if (zip64_eocd) {
        uint64_t rec = z->n;
        u32(z, 0x06064b50); u64(z, 44); u16(z, 45); u16(z, 45); u32(z, 0); u32(z, 0);
        u64(z, (uint64_t)n); u64(z, (uint64_t)n); u64(z, cd_size); u64(z, cd);
        u32(z, 0x07064b50); u32(z, 0); u64(z, rec); u32(z, 1);
    }
    size_t cl = comment ? strlen(comment) : 0;
    u32(z, 0x06054b50); u16(z, 0); u16(z, 0);
    u16(z, zip64_eocd ? 0xFFFF : (uint32_t)n); u16(z, zip64_eocd ? 0xFFFF : (uint32_t)n);
    u32(z, zip64_eocd ? 0xFFFFFFFF : (uint32_t)cd_size); u32(z, zip64_eocd ? 0xFFFFFFFF : (uint32_t)cd);
    u16(z, (uint32_t)cl);
    if (cl) put(z, comment, cl);
}

static const spec torchlike[] = {
    {"archive/data.pkl", "\x80\x02}q\x00.", 0, 0x808, 0, 0},
    {"archive/byteorder", "little", 0, 0x808, 5, 0},
    {"archive/data/0", "0123456789abcdef", 0, 0x808, 37, 1},
};

static void check_entry(const dr_zip *z, const buf *b, const char *name, const char *data) {
    const dr_zip_entry *e = dr_zip_find(z, name);
    if (!CHECK(e != NULL)) return;
    CHECK_EQ_INT((long long)e->size, (long long)strlen(data));
    CHECK(e->data_offset + e->size <= b->n);
    CHECK(memcmp(b->b + e->data_offset, data, strlen(data)) == 0);
    CHECK_EQ_INT(e->crc32, dr_zip_crc32((const uint8_t *)data, strlen(data)));
    CHECK_OK(dr_zip_check_stored("t.zip", e));
}

static void test_parse(void) {
    static buf b;
    for (int variant = 0; variant < 2; variant++) {
        dr_zip z;
        build(&b, torchlike, 3, variant, variant ? "a comment PK\x05\x06 inside" : NULL);
        if (!CHECK_OK(dr_zip_parse("t.zip", b.b, b.n, &z))) continue;
        CHECK_EQ_INT(z.count, 3);
        check_entry(&z, &b, "archive/data.pkl", "\x80\x02}q\x00.");
        check_entry(&z, &b, "archive/byteorder", "little");
        check_entry(&z, &b, "archive/data/0", "0123456789abcdef");
        CHECK(dr_zip_find(&z, "archive/data/1") == NULL);
        dr_zip_free(&z);
    }
    CHECK_EQ_INT(dr_zip_crc32((const uint8_t *)"123456789", 9), 0xCBF43926u);
}

static void test_errors(void) {
    static buf b;
    dr_zip z;
    CHECK_FAILS(dr_zip_parse("t.zip", (const uint8_t *)"PK\x03\x04", 4, &z), DR_ERR_IO,
                "t.zip: not a zip archive");
    build(&b, torchlike, 3, 0, NULL);
    for (size_t cut = 1; cut < b.n; cut += 7) /* every truncation fails cleanly */
        if (dr_zip_parse("t.zip", b.b, cut, &z) == DR_OK) {
            CHECK(0 && "a truncated archive parsed");
            dr_zip_free(&z);
        }
    size_t at = b.n - 22 + 16; /* the central directory offset in the EOCD */
    b.b[at + 1] ^= 0x40;
    CHECK_FAILS(dr_zip_parse("t.zip", b.b, b.n, &z), DR_ERR_IO, "lies outside the file");
    spec bad[] = {{"x/data.pkl", "abc", 8, 0, 0, 0}, {"x/secret", "abc", 0, 1, 0, 0}};
    build(&b, bad, 2, 0, NULL);
    if (CHECK_OK(dr_zip_parse("t.zip", b.b, b.n, &z))) {
        CHECK_FAILS(dr_zip_check_stored("t.zip", &z.entries[0]), DR_ERR_UNSUPPORTED,
                    "entry 'x/data.pkl' is compressed (zip method 8, deflate)");
        CHECK_FAILS(dr_zip_check_stored("t.zip", &z.entries[1]), DR_ERR_UNSUPPORTED,
                    "entry 'x/secret' is encrypted");
        dr_zip_free(&z);
    }
    /* a central entry whose local header is elsewhere */
    build(&b, torchlike, 1, 0, NULL);
    b.b[0] = 'Q';
    CHECK_FAILS(dr_zip_parse("t.zip", b.b, b.n, &z), DR_ERR_IO,
                "entry 'archive/data.pkl': no local header at offset 0");
    /* zip64 fields without the extra field */
    build(&b, torchlike + 2, 1, 0, NULL);
    size_t cd = 0;
    for (size_t i = 0; i + 4 < b.n; i++)
        if (memcmp(b.b + i, "PK\x01\x02", 4) == 0) cd = i;
    b.b[cd + 30] = 0; /* extra length 0, but sizes stay 0xFFFFFFFF */
    CHECK(dr_zip_parse("t.zip", b.b, b.n, &z) != DR_OK);
}

static void test_mutations(void) {
    static buf b, m;
    build(&b, torchlike, 3, 1, NULL);
    uint32_t rng = 12345;
    for (int it = 0; it < 20000; it++) {
        m = b;
        for (int k = 0; k < 1 + it % 4; k++) {
            rng = rng * 1664525u + 1013904223u;
            m.b[(rng >> 8) % m.n] = (uint8_t)(rng >> 24);
        }
        dr_zip z;
        if (dr_zip_parse("m.zip", m.b, m.n, &z) == DR_OK) {
            for (int64_t i = 0; i < z.count; i++)
                CHECK(z.entries[i].data_offset + z.entries[i].stored_size <= m.n);
            dr_zip_free(&z);
        }
    }
}

int main(void) {
    test_parse();
    test_errors();
    test_mutations();
    return check_summary("test_zip");
}
