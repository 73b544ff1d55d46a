/* Webdataset .tar indexing (core/io/tar.c) on archives built here byte by byte:
 * ustar prefixes, GNU long names and base-256 sizes, pax path/size records, key
 * grouping as webdataset's base_plus_ext, skipped entries, and damage (a member cut
 * short, a bad checksum, stray bytes) reported by name without failing the open. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

typedef struct {
    uint8_t *data;
    size_t len, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void pad(buf *b) {
    static const uint8_t zero[512];
    if (b->len % 512) put(b, zero, 512 - b->len % 512);
}

/* A header: ustar (POSIX) or GNU magic; prefix may be NULL; size < 0 writes base-256. */
static void header(buf *b, const char *prefix, const char *name, long long size, char type, int gnu) {
    uint8_t h[512] = {0};
    memcpy(h, name, strlen(name) > 100 ? 100 : strlen(name));
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    if (size >= 0) {
        snprintf((char *)h + 124, 12, "%011llo", size & 077777777777LL);
    } else {
        h[124] = 0x80;
        long long v = -size;
        for (int i = 11; i > 0; i--, v >>= 8) h[124 + i] = (uint8_t)(v & 0xFF);
    }
    memcpy(h + 136, "00000000000", 12);
    h[156] = (uint8_t)type;
    if (gnu) memcpy(h + 257, "ustar  ", 8);
    else memcpy(h + 257, "ustar\0" "00", 8);
    if (prefix) memcpy(h + 345, prefix, strlen(prefix));
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    h[155] = ' ';
    put(b, h, 512);
}

static void member(buf *b, const char *name, const char *text) {
    header(b, NULL, name, (long long)strlen(text), '0', 0);
    put(b, text, strlen(text));
    pad(b);
}

static void end(buf *b) {
    static const uint8_t zero[1024];
    put(b, zero, 1024);
}

static dr_tar *open_buf(buf *b) {
    dr_tar *t = NULL;
    CHECK_OK(dr_tar_open_memory(b->data, b->len, "test.tar", &t));
    return t;
}

static int member_is(dr_tar *t, int64_t i, int32_t j, const char *name, const char *ext, int64_t size) {
    const char *n = NULL, *e = NULL;
    int64_t off = -1, sz = -1, present = 0;
    if (!CHECK_OK(dr_tar_member(t, i, j, &n, &e, &off, &sz, &present))) return 0;
    return CHECK(strcmp(n, name) == 0) & CHECK(strcmp(e, ext) == 0) & CHECK_EQ_INT(sz, size) &
           CHECK_EQ_INT(present, -1) & CHECK(off % 512 == 0);
}

static void test_grouping(void) {
    buf b = {0};
    member(&b, "a/000001.jpg", "JPEGDATA");
    member(&b, "a/000001.txt", "a caption");
    member(&b, "a/000001.json", "{}");
    header(&b, NULL, "a/", 0, '5', 0); /* a directory */
    member(&b, "README", "no key: skipped");
    member(&b, "a/000002.seg.png", "PNG");
    header(&b, "deep/folder", "000003.txt", 3, '0', 0); /* ustar prefix */
    put(&b, "abc", 3);
    pad(&b);
    end(&b);
    dr_tar *t = open_buf(&b);
    if (!t) return;
    CHECK_EQ_INT(dr_tar_sample_count(t), 3);
    CHECK(dr_tar_problem(t) == NULL);
    CHECK(strcmp(dr_tar_sample_key(t, 0), "a/000001") == 0);
    CHECK_EQ_INT(dr_tar_sample_members(t, 0), 3);
    member_is(t, 0, 0, "a/000001.jpg", "jpg", 8);
    member_is(t, 0, 2, "a/000001.json", "json", 2);
    CHECK(strcmp(dr_tar_sample_key(t, 1), "a/000002") == 0);
    member_is(t, 1, 0, "a/000002.seg.png", "seg.png", 3);
    CHECK(strcmp(dr_tar_sample_key(t, 2), "deep/folder/000003") == 0);
    const char *n;
    int64_t off, sz;
    CHECK_OK(dr_tar_member(t, 2, 0, &n, NULL, &off, &sz, NULL));
    CHECK(memcmp(b.data + off, "abc", 3) == 0);
    CHECK(dr_tar_sample_key(t, 3) == NULL);
    CHECK_EQ_INT(dr_tar_sample_members(t, -1), 0);
    CHECK_FAILS(dr_tar_member(t, 3, 0, &n, NULL, NULL, NULL, NULL), DR_ERR_ARG, "sample 3 out of range [0, 3)");
    CHECK_FAILS(dr_tar_member(t, 0, 3, &n, NULL, NULL, NULL, NULL), DR_ERR_ARG, "has 3 members, asked for member 3");
    dr_tar_close(t);
    free(b.data);
}

static void test_gnu_and_pax(void) {
    buf b = {0};
    char longname[300];
    memset(longname, 'x', sizeof longname);
    memcpy(longname + 250, "/000009.txt", 12); /* 261 characters */
    header(&b, NULL, "././@LongLink", (long long)strlen(longname) + 1, 'L', 1);
    put(&b, longname, strlen(longname) + 1);
    pad(&b);
    header(&b, NULL, "truncated-name", 5, '0', 1);
    put(&b, "hello", 5);
    pad(&b);
    const char *pax = "27 path=pax/000010.caption\n12 size=300\n";
    header(&b, NULL, "PaxHeader", (long long)strlen(pax), 'x', 0);
    put(&b, pax, strlen(pax));
    pad(&b);
    header(&b, NULL, "ignored", 7, '0', 0); /* the pax size (300) wins */
    uint8_t big[300];
    memset(big, 'p', sizeof big);
    put(&b, big, sizeof big);
    pad(&b);
    header(&b, NULL, "b256.txt", -4, '0', 1); /* base-256 size 4 */
    put(&b, "b256", 4);
    pad(&b);
    end(&b);
    dr_tar *t = open_buf(&b);
    if (!t) return;
    CHECK_EQ_INT(dr_tar_sample_count(t), 3);
    CHECK(dr_tar_problem(t) == NULL);
    member_is(t, 0, 0, longname, "txt", 5);
    member_is(t, 1, 0, "pax/000010.caption", "caption", 300);
    member_is(t, 2, 0, "b256.txt", "txt", 4);
    dr_tar_close(t);
    free(b.data);
}

static void test_damage(void) {
    /* a member cut short: kept, marked, named */
    buf b = {0};
    member(&b, "000001.jpg", "fine");
    member(&b, "000001.txt", "fine");
    header(&b, NULL, "000002.jpg", 2000, '0', 0);
    put(&b, "only a little", 13);
    dr_tar *t = open_buf(&b);
    if (t) {
        CHECK_EQ_INT(dr_tar_sample_count(t), 2);
        int64_t present = -1, size = 0;
        CHECK_OK(dr_tar_member(t, 1, 0, NULL, NULL, NULL, &size, &present));
        CHECK_EQ_INT(present, 13);
        CHECK_EQ_INT(size, 2000);
        CHECK(dr_tar_problem(t) && strstr(dr_tar_problem(t), "member 000002.jpg is cut short (13 of 2000 bytes)"));
        dr_tar_close(t);
    }
    /* a bad checksum: the index ends there, naming the byte and the member before */
    b.len = 0;
    member(&b, "000001.jpg", "fine");
    size_t at = b.len;
    member(&b, "000002.jpg", "fine");
    b.data[at + 10] ^= 0x55;
    member(&b, "000003.jpg", "never reached");
    end(&b);
    t = open_buf(&b);
    if (t) {
        CHECK_EQ_INT(dr_tar_sample_count(t), 1);
        CHECK(dr_tar_problem(t) && strstr(dr_tar_problem(t), "bad header checksum at byte 1024 (after member 000001.jpg)"));
        dr_tar_close(t);
    }
    /* stray bytes after the last member, no end blocks */
    b.len = 0;
    member(&b, "000001.jpg", "fine");
    put(&b, "junk", 4);
    t = open_buf(&b);
    if (t) {
        CHECK_EQ_INT(dr_tar_sample_count(t), 1);
        CHECK(dr_tar_problem(t) && strstr(dr_tar_problem(t), "4 stray bytes at the end (byte 1024)"));
        dr_tar_close(t);
    }
    /* empty input: no samples, no problem */
    t = NULL;
    CHECK_OK(dr_tar_open_memory(NULL, 0, NULL, &t));
    CHECK_EQ_INT(dr_tar_sample_count(t), 0);
    CHECK(dr_tar_problem(t) == NULL);
    dr_tar_close(t);
    free(b.data);
}

static void test_files(void) {
    char path[] = "/tmp/diffrl_test_tar_XXXXXX";
    int fd = mkstemp(path);
    if (!CHECK(fd >= 0)) return;
    buf b = {0};
    member(&b, "k/000001.jpg", "x");
    member(&b, "k/000001.txt", "y");
    end(&b);
    CHECK_EQ_INT(write(fd, b.data, b.len), (long long)b.len);
    close(fd);
    dr_tar *t = NULL;
    if (CHECK_OK(dr_tar_open(path, &t))) {
        CHECK_EQ_INT(dr_tar_sample_count(t), 1);
        dr_tar_close(t);
    }
    unlink(path);
    CHECK_FAILS(dr_tar_open(path, &t), DR_ERR_IO, "tar: cannot open /tmp/diffrl_test_tar_");
    CHECK(t == NULL);
    CHECK_FAILS(dr_tar_open(NULL, &t), DR_ERR_ARG, "path is NULL");
    CHECK_FAILS(dr_tar_open("/tmp", &t), DR_ERR_IO, "tar: /tmp is not a regular file");
    free(b.data);
}

int main(void) {
    test_grouping();
    test_gnu_and_pax();
    test_damage();
    test_files();
    return check_summary("test_tar");
}
