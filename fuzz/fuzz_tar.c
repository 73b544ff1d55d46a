/* libFuzzer target: any bytes as a webdataset .tar shard (core/io/tar.c).
 *
 * Opening never fails on content (damage is a dr_tar_problem, not an error); then
 * the properties: every sample has members, every member's name starts with its
 * sample's key and a '.', its extension is the rest, its data lies inside the
 * input (or, when cut short, runs exactly to its end), consecutive samples have
 * different keys, and the same bytes read from a file (a memfd, the stdio path)
 * give the same index. Any violated property traps. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "diffrl.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

static void check_index(const dr_tar *t, size_t size) {
    int64_t n = dr_tar_sample_count(t);
    for (int64_t i = 0; i < n; i++) {
        const char *key = dr_tar_sample_key(t, i);
        REQUIRE(key != NULL);
        size_t klen = strlen(key);
        if (i > 0) REQUIRE(strcmp(key, dr_tar_sample_key(t, i - 1)) != 0);
        int32_t m = dr_tar_sample_members(t, i);
        REQUIRE(m >= 1);
        for (int32_t j = 0; j < m; j++) {
            const char *name, *ext;
            int64_t off, sz, present;
            REQUIRE(dr_tar_member(t, i, j, &name, &ext, &off, &sz, &present) == DR_OK);
            REQUIRE(strncmp(name, key, klen) == 0 && name[klen] == '.' && ext == name + klen + 1);
            REQUIRE(off % 512 == 0 && off >= 512 && sz >= 0);
            if (present < 0) REQUIRE((uint64_t)off + (uint64_t)sz <= size);
            else REQUIRE(present < sz && (uint64_t)off + (uint64_t)present == size);
        }
    }
    REQUIRE(dr_tar_sample_key(t, n) == NULL && dr_tar_sample_members(t, n) == 0);
}

static int same_index(const dr_tar *a, const dr_tar *b) {
    if (dr_tar_sample_count(a) != dr_tar_sample_count(b)) return 0;
    for (int64_t i = 0; i < dr_tar_sample_count(a); i++) {
        if (strcmp(dr_tar_sample_key(a, i), dr_tar_sample_key(b, i)) != 0) return 0;
        if (dr_tar_sample_members(a, i) != dr_tar_sample_members(b, i)) return 0;
        for (int32_t j = 0; j < dr_tar_sample_members(a, i); j++) {
            const char *na, *nb;
            int64_t oa, ob, sa, sb, pa, pb;
            dr_tar_member(a, i, j, &na, NULL, &oa, &sa, &pa);
            dr_tar_member(b, i, j, &nb, NULL, &ob, &sb, &pb);
            if (strcmp(na, nb) || oa != ob || sa != sb || pa != pb) return 0;
        }
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1); /* exact size: ASan sees over-reads */
    if (!copy) return 0;
    memcpy(copy, data, size);
    dr_tar *t = NULL;
    dr_status st = dr_tar_open_memory(copy, size, "fuzz.tar", &t);
    if (st != DR_OK) {
        REQUIRE(st == DR_ERR_OOM);
        free(copy);
        return 0;
    }
    check_index(t, size);
    int fd = memfd_create("fuzz_tar", 0);
    if (fd >= 0) {
        if (write(fd, copy, size) == (ssize_t)size) {
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            dr_tar *f = NULL;
            if (dr_tar_open(path, &f) == DR_OK) {
                REQUIRE(same_index(t, f));
                const char *pt = dr_tar_problem(t), *pf = dr_tar_problem(f);
                REQUIRE((pt == NULL) == (pf == NULL));
                dr_tar_close(f);
            }
        }
        close(fd);
    }
    dr_tar_close(t);
    free(copy);
    return 0;
}
