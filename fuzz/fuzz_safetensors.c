/* libFuzzer target: any bytes as a safetensors file.
 *
 * Each input is opened twice, as an exact-size heap copy (dr_st_open_buffer: ASan
 * sees any over-read) and as a real file (a memfd, through dr_safetensors_open: the
 * mmap path); both must agree. For a file that opens, every tensor is taken and every
 * element read. When all tensors load, a round trip must hold: saving them (with the
 * metadata) and reopening gives the same tensors, and saving those again gives the
 * same bytes. Any violated property traps, which libFuzzer reports as a crash. */
#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "diffrl.h"
#include "io/safetensors_internal.h"

enum { MAX_ROUND_TRIP = 64 };

static int memfd = -1;
static char memfd_path[64], out1[128], out2[128];

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    dr_set_num_threads(1);
    memfd = memfd_create("fuzz_safetensors", MFD_CLOEXEC);
    snprintf(memfd_path, sizeof memfd_path, "/proc/self/fd/%d", memfd);
    char dir[] = "/dev/shm/fuzz_safetensors_XXXXXX", alt[] = "/tmp/fuzz_safetensors_XXXXXX";
    const char *d = mkdtemp(dir) ? dir : mkdtemp(alt);
    if (d) {
        snprintf(out1, sizeof out1, "%s/a.safetensors", d);
        snprintf(out2, sizeof out2, "%s/b.safetensors", d);
    }
    return 0;
}

/* Reads every element (numel is bounded by the file's size once it opened). */
static void touch(const dr_tensor *t) {
    int64_t n = dr_tensor_numel(t);
    double *x = malloc((size_t)(n + 1) * sizeof *x);
    REQUIRE(x && dr_tensor_to_f64(t, x, n) == DR_OK);
    free(x);
}

static int same_tensor(const dr_tensor *a, const dr_tensor *b) {
    if (a->ndim != b->ndim || a->scalar_type != b->scalar_type) return 0;
    for (int32_t d = 0; d < a->ndim; d++)
        if (a->sizes[d] != b->sizes[d]) return 0;
    size_t nbytes = (size_t)(dr_tensor_numel(a) * dr_dtype_size(a->scalar_type));
    return nbytes == 0 || memcmp(dr_tensor_data(a), dr_tensor_data(b), nbytes) == 0;
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)len + 1);
    REQUIRE(buf && fread(buf, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

/* Takes every tensor; returns how many loaded (tensors[] keeps the first MAX). */
static int64_t take_all(dr_safetensors *f, dr_tensor **tensors, const char **names) {
    int64_t n = dr_safetensors_count(f), loaded = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *name = dr_safetensors_name(f, i);
        REQUIRE(name);
        dr_tensor *t = NULL;
        if (dr_safetensors_get(f, name, &t) != DR_OK) continue;
        REQUIRE(t && t->device.type == DR_CPU && dr_tensor_is_contiguous(t));
        touch(t);
        if (loaded < MAX_ROUND_TRIP) {
            tensors[loaded] = t;
            names[loaded] = name;
        } else {
            dr_tensor_release(t);
        }
        loaded++;
    }
    for (int64_t i = 0; i < dr_safetensors_metadata_count(f); i++)
        REQUIRE(dr_safetensors_metadata(f, dr_safetensors_metadata_key(f, i)));
    return loaded;
}

static void round_trip(dr_safetensors *f, dr_tensor **tensors, const char **names, int64_t n) {
    int64_t nmeta = dr_safetensors_metadata_count(f);
    const char **keys = calloc((size_t)nmeta + 1, sizeof *keys);
    const char **values = calloc((size_t)nmeta + 1, sizeof *values);
    for (int64_t i = 0; i < nmeta; i++) {
        keys[i] = dr_safetensors_metadata_key(f, i);
        values[i] = dr_safetensors_metadata(f, keys[i]);
    }
    REQUIRE(dr_safetensors_save(out1, names, (const dr_tensor *const *)tensors, n, keys, values,
                                nmeta) == DR_OK);
    dr_safetensors *g = NULL;
    REQUIRE(dr_safetensors_open(out1, &g) == DR_OK);
    REQUIRE(dr_safetensors_count(g) == n && dr_safetensors_metadata_count(g) == nmeta);
    dr_tensor *again[MAX_ROUND_TRIP];
    for (int64_t i = 0; i < n; i++) {
        REQUIRE(dr_safetensors_get(g, names[i], &again[i]) == DR_OK);
        REQUIRE(same_tensor(again[i], tensors[i]));
    }
    REQUIRE(dr_safetensors_save(out2, names, (const dr_tensor *const *)again, n, keys, values,
                                nmeta) == DR_OK);
    size_t n1, n2;
    unsigned char *b1 = slurp(out1, &n1), *b2 = slurp(out2, &n2);
    REQUIRE(n1 == n2 && memcmp(b1, b2, n1) == 0);
    free(b1);
    free(b2);
    for (int64_t i = 0; i < n; i++) dr_tensor_release(again[i]);
    dr_safetensors_close(g);
    free(keys);
    free(values);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dr_safetensors *f = NULL;
    dr_status from_buffer = dr_st_open_buffer("input", data, size, &f);
    if (from_buffer == DR_OK) {
        dr_tensor *tensors[MAX_ROUND_TRIP];
        const char *names[MAX_ROUND_TRIP];
        int64_t loaded = take_all(f, tensors, names);
        if (loaded == dr_safetensors_count(f) && loaded <= MAX_ROUND_TRIP && out1[0])
            round_trip(f, tensors, names, loaded);
        for (int64_t i = 0; i < loaded && i < MAX_ROUND_TRIP; i++) dr_tensor_release(tensors[i]);
        dr_safetensors_close(f);
    }
    if (memfd >= 0 && ftruncate(memfd, 0) == 0 &&
        (size == 0 || pwrite(memfd, data, size, 0) == (ssize_t)size)) {
        dr_safetensors *g = NULL;
        dr_status from_file = dr_safetensors_open(memfd_path, &g);
        REQUIRE(from_file == from_buffer);
        if (from_file == DR_OK) {
            for (int64_t i = 0; i < dr_safetensors_count(g); i++) {
                dr_tensor *t = NULL;
                if (dr_safetensors_get(g, dr_safetensors_name(g, i), &t) == DR_OK) touch(t);
                dr_tensor_release(t);
            }
            dr_safetensors_close(g);
        }
    }
    return 0;
}
