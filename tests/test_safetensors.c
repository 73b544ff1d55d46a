/* safetensors I/O (core/io): save -> open -> get round trips for every dtype, 0-d,
 * empty and non-contiguous tensors; the exact bytes the reference writes; zero-copy
 * tensors that outlive close and write copy-on-write; misaligned data (copied); F64
 * (to float32) and unsupported dtypes; every header validation with the message
 * naming the file and the tensor; save's argument errors and its atomic replace;
 * reading from a pipe; random mutations of a valid file that must never crash.
 * (The reference's own files are checked by spec/safetensors_spec.lua.) */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <dirent.h>

#include "check.h"

static char g_dir[64];
static const dr_device CPU = {DR_CPU, 0};

/* ---- files -------------------------------------------------------------------- */

static const char *path_of(const char *name) {
    static char bufs[4][512];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", g_dir, name);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!CHECK(f != NULL)) return;
    CHECK(fwrite(data, 1, n, f) == n);
    fclose(f);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = malloc(1 << 20);
    *n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

/* A file: the 8-byte length `nfield` of a header `json` padded with `pad` spaces,
 * then `ndata` bytes of data (from `data`, or 0, 1, 2, ...). */
static const char *make_file_n(const char *name, uint64_t nfield, const char *json, size_t pad,
                               const void *data, size_t ndata) {
    size_t hj = strlen(json), n = 8 + hj + pad + ndata;
    unsigned char *buf = malloc(n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(nfield >> (8 * i));
    memcpy(buf + 8, json, hj);
    memset(buf + 8 + hj, ' ', pad);
    for (size_t i = 0; i < ndata; i++)
        buf[8 + hj + pad + i] = data ? ((const unsigned char *)data)[i] : (unsigned char)i;
    const char *path = path_of(name);
    write_bytes(path, buf, n);
    free(buf);
    return path;
}

static const char *make_file(const char *name, const char *json, size_t pad, const void *data,
                             size_t ndata) {
    return make_file_n(name, strlen(json) + pad, json, pad, data, ndata);
}

static dr_tensor *from_values(const double *v, const int64_t *sizes, int32_t ndim, int32_t dtype) {
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_from_f64(v, sizes, ndim, dtype, CPU, &t));
    return t;
}

static int same_values(const dr_tensor *a, const dr_tensor *b) {
    if (!a || !b || a->ndim != b->ndim || a->scalar_type != b->scalar_type) return 0;
    for (int32_t d = 0; d < a->ndim; d++)
        if (a->sizes[d] != b->sizes[d]) return 0;
    int64_t n = dr_tensor_numel(a);
    double *x = calloc((size_t)n + 1, sizeof *x), *y = calloc((size_t)n + 1, sizeof *y);
    int ok = dr_tensor_to_f64(a, x, n) == DR_OK && dr_tensor_to_f64(b, y, n) == DR_OK;
    for (int64_t i = 0; ok && i < n; i++) ok = x[i] == y[i];
    free(x);
    free(y);
    return ok;
}

static dr_tensor *get(dr_safetensors *f, const char *name) {
    dr_tensor *t = NULL;
    if (!CHECK_OK(dr_safetensors_get(f, name, &t))) fprintf(stderr, "    tensor %s\n", name);
    return t;
}

/* ---- round trips ----------------------------------------------------------------- */

static void test_round_trip(void) {
    static const double v6[6] = {1.5, -2.25, 3, 0.125, -1024, 6.5};
    static const double vi[6] = {-5, 1099511627777.0, 7, 0, 1, -1};
    static const int64_t s23[2] = {2, 3}, s6[1] = {6}, s03[2] = {0, 3};
    const char *names[9] = {"f32", "f16", "bf16", "i64", "i32", "u8", "bool", "scalar", "empty"};
    dr_tensor *ts[9];
    ts[0] = from_values(v6, s23, 2, DR_F32);
    ts[1] = from_values(v6, s6, 1, DR_F16);
    ts[2] = from_values(v6, s23, 2, DR_BF16);
    ts[3] = from_values(vi, s6, 1, DR_I64);
    static const double v32[6] = {-2147483648.0, 0, 2147483647, 5, -7, 1};
    ts[4] = from_values(v32, s23, 2, DR_I32);
    ts[5] = from_values((const double[]){0, 1, 128, 255, 7, 9}, s6, 1, DR_U8);
    ts[6] = from_values((const double[]){1, 0, 1, 1, 0, 0}, s23, 2, DR_BOOL);
    ts[7] = from_values(v6, NULL, 0, DR_F32);
    CHECK_OK(dr_tensor_empty(s03, 2, DR_F32, CPU, &ts[8]));
    const char *keys[2] = {"format", "note"}, *vals[2] = {"pt", "two\nlines"};
    const char *path = path_of("rt.safetensors");
    if (!CHECK_OK(dr_safetensors_save(path, names, (const dr_tensor *const *)ts, 9, keys, vals, 2)))
        return;
    dr_safetensors *f = NULL;
    if (!CHECK_OK(dr_safetensors_open(path, &f))) return;
    CHECK_EQ_INT(dr_safetensors_count(f), 9);
    /* names sorted by bytes */
    for (int64_t i = 1; i < 9; i++)
        CHECK(strcmp(dr_safetensors_name(f, i - 1), dr_safetensors_name(f, i)) < 0);
    CHECK(dr_safetensors_name(f, 9) == NULL && dr_safetensors_name(f, -1) == NULL);
    for (int i = 0; i < 9; i++) {
        dr_tensor *t = get(f, names[i]);
        if (!CHECK(same_values(t, ts[i]))) fprintf(stderr, "    tensor %s\n", names[i]);
        dr_tensor_release(t);
    }
    CHECK(strcmp(dr_safetensors_metadata(f, "note"), "two\nlines") == 0);
    CHECK(dr_safetensors_metadata(f, "absent") == NULL);
    CHECK_EQ_INT(dr_safetensors_metadata_count(f), 2);
    CHECK(strcmp(dr_safetensors_metadata_key(f, 0), "format") == 0);
    CHECK(dr_safetensors_metadata_key(f, 2) == NULL);
    dr_tensor *t = NULL;
    CHECK_FAILS(dr_safetensors_get(f, "nope", &t), DR_ERR_ARG,
                "no tensor named 'nope' (the file has 9)");
    CHECK_FAILS(dr_safetensors_get(f, NULL, &t), DR_ERR_ARG, "tensor name is NULL");
    CHECK_FAILS(dr_safetensors_get(f, "f32", NULL), DR_ERR_ARG, "out is NULL");
    CHECK_FAILS(dr_safetensors_get(NULL, "f32", &t), DR_ERR_ARG, "NULL");
    dr_safetensors_close(f);
    for (int i = 0; i < 9; i++) dr_tensor_release(ts[i]);
}

/* The reference's bytes: dtype rank then name order, compact JSON, space padding. */
static void test_exact_bytes(void) {
    static const int64_t s1[1] = {1}, s2[1] = {2};
    dr_tensor *a = from_values((const double[]){1}, s1, 1, DR_U8);
    dr_tensor *b = from_values((const double[]){2}, s1, 1, DR_F32);
    dr_tensor *c = from_values((const double[]){3, 4}, s2, 1, DR_I64);
    const char *names[3] = {"u", "f", "i"};
    const dr_tensor *ts[3] = {a, b, c};
    const char *k[1] = {"format"}, *v[1] = {"pt"};
    const char *path = path_of("exact.safetensors");
    if (!CHECK_OK(dr_safetensors_save(path, names, ts, 3, k, v, 1))) return;
    const char header[] = "{\"__metadata__\":{\"format\":\"pt\"},"
                          "\"i\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                          "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]},"
                          "\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[20,21]}}";
    size_t hl = sizeof header - 1, padded = (hl + 7) / 8 * 8, n = 0;
    unsigned char *got = read_bytes(path, &n);
    if (CHECK(got && n == 8 + padded + 21)) {
        CHECK_EQ_INT(got[0] | got[1] << 8, padded);
        CHECK(memcmp(got + 8, header, hl) == 0);
        int spaces = 1;
        for (size_t i = 8 + hl; i < 8 + padded; i++) spaces &= got[i] == ' ';
        CHECK(spaces);
        int64_t i0;
        float f0;
        memcpy(&i0, got + 8 + padded + 8, 8);
        memcpy(&f0, got + 8 + padded + 16, 4);
        CHECK(i0 == 4 && f0 == 2.0f && got[n - 1] == 1);
    }
    free(got);
    /* Mode: the umask's, not a temporary file's 0600. */
    struct stat st;
    mode_t mask = umask(022);
    umask(mask);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == (0666 & ~mask));
    dr_tensor_release(a);
    dr_tensor_release(b);
    dr_tensor_release(c);
}

static void test_non_contiguous(void) {
    static const double v[6] = {1, 2, 3, 4, 5, 6};
    static const int64_t s23[2] = {2, 3};
    dr_tensor *a = from_values(v, s23, 2, DR_F32), *t = NULL, *n = NULL;
    CHECK_OK(dr_tensor_transpose(a, 0, 1, &t));
    CHECK_OK(dr_tensor_narrow(a, 1, 1, 2, &n));
    const char *names[2] = {"t", "n"};
    const dr_tensor *ts[2] = {t, n};
    const char *path = path_of("strided.safetensors");
    dr_safetensors *f = NULL;
    if (CHECK_OK(dr_safetensors_save(path, names, ts, 2, NULL, NULL, 0)) &&
        CHECK_OK(dr_safetensors_open(path, &f))) {
        dr_tensor *gt = get(f, "t"), *gn = get(f, "n");
        CHECK(same_values(gt, t) && same_values(gn, n));
        CHECK(gt && dr_tensor_is_contiguous(gt));
        dr_tensor_release(gt);
        dr_tensor_release(gn);
        dr_safetensors_close(f);
    }
    dr_tensor_release(a);
    dr_tensor_release(t);
    dr_tensor_release(n);
}

/* ---- the mapping ------------------------------------------------------------------- */

static void test_zero_copy(void) {
    static const int64_t s[1] = {1000};
    dr_tensor *a = NULL;
    CHECK_OK(dr_tensor_full(s, 1, DR_F32, CPU, 3.0, &a));
    const char *names[1] = {"w"};
    const char *path = path_of("map.safetensors");
    if (!CHECK_OK(dr_safetensors_save(path, names, (const dr_tensor *const *)&a, 1, NULL, NULL, 0)))
        return;
    size_t n0 = 0;
    unsigned char *before = read_bytes(path, &n0);
    dr_safetensors *f = NULL;
    if (!CHECK_OK(dr_safetensors_open(path, &f))) return;
    int64_t mem = dr_memory_allocated(DR_CPU);
    dr_tensor *t1 = get(f, "w"), *t2 = get(f, "w");
    CHECK(dr_memory_allocated(DR_CPU) == mem);                 /* no allocation ... */
    CHECK(t1 && t2 && dr_tensor_data(t1) == dr_tensor_data(t2)); /* ... same bytes */
    dr_safetensors_close(f);
    /* still readable after close */
    double x = 0;
    int64_t idx[1] = {999};
    CHECK_OK(dr_tensor_get(t1, idx, &x));
    CHECK_NEAR(x, 3.0, 0);
    /* in-place writes are private: t2 shares the pages, the file does not change */
    CHECK_OK(dr_tensor_fill_(t1, 7.0));
    CHECK_OK(dr_tensor_get(t2, idx, &x));
    CHECK_NEAR(x, 7.0, 0);
    size_t n1 = 0;
    unsigned char *after = read_bytes(path, &n1);
    CHECK(before && after && n0 == n1 && memcmp(before, after, n0) == 0);
    dr_tensor_release(t1);
    dr_tensor_release(t2);
    dr_tensor_release(a);
    free(before);
    free(after);
}

/* Saving over a file whose tensors are still in use: they keep the old bytes, the
 * new file is complete, and no temporary file is left. */
static void test_atomic_replace(void) {
    static const int64_t s[1] = {4};
    dr_tensor *a = NULL, *b = NULL, *old = NULL;
    CHECK_OK(dr_tensor_full(s, 1, DR_I32, CPU, 1, &a));
    CHECK_OK(dr_tensor_full(s, 1, DR_I32, CPU, 2, &b));
    const char *names[1] = {"x"}, *path = path_of("replace.safetensors");
    dr_safetensors *f = NULL;
    CHECK_OK(dr_safetensors_save(path, names, (const dr_tensor *const *)&a, 1, NULL, NULL, 0));
    if (!CHECK_OK(dr_safetensors_open(path, &f))) return;
    old = get(f, "x");
    dr_safetensors_close(f);
    CHECK_OK(dr_safetensors_save(path, names, (const dr_tensor *const *)&b, 1, NULL, NULL, 0));
    CHECK(same_values(old, a));
    if (CHECK_OK(dr_safetensors_open(path, &f))) {
        dr_tensor *fresh = get(f, "x");
        CHECK(same_values(fresh, b));
        dr_tensor_release(fresh);
        dr_safetensors_close(f);
    }
    DIR *d = opendir(g_dir);
    int temps = 0;
    for (struct dirent *e; d && (e = readdir(d));) temps += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    CHECK_EQ_INT(temps, 0);
    dr_tensor_release(a);
    dr_tensor_release(b);
    dr_tensor_release(old);
}

/* Data not aligned for its dtype (a 9-byte header: legal JSON padding) is copied. */
static void test_misaligned(void) {
    const char json[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    float v[2] = {1.25f, -3.5f};
    size_t pad = 1; /* the mapping is page-aligned: make 8 + header length odd */
    while ((8 + sizeof json - 1 + pad) % 2 == 0) pad++;
    const char *path = make_file("misaligned.safetensors", json, pad, v, sizeof v);
    dr_safetensors *f = NULL;
    if (!CHECK_OK(dr_safetensors_open(path, &f))) return;
    dr_tensor *t1 = get(f, "a"), *t2 = get(f, "a");
    CHECK(t1 && t2 && dr_tensor_data(t1) != dr_tensor_data(t2));
    CHECK(t1 && (uintptr_t)dr_tensor_data(t1) % 4 == 0);
    double x[2] = {0, 0};
    CHECK_OK(dr_tensor_to_f64(t1, x, 2));
    CHECK(x[0] == 1.25 && x[1] == -3.5);
    dr_tensor_release(t1);
    dr_tensor_release(t2);
    dr_safetensors_close(f);
}

/* Read through a pipe: no mmap, the bytes are read into memory. */
static void test_pipe(void) {
    int fd[2];
    if (!CHECK(pipe(fd) == 0)) return;
    const char json[] = "{\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}";
    unsigned char buf[128];
    size_t hl = sizeof json - 1;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, hl);
    memcpy(buf + 8 + hl, "\x05\x06\x07", 3);
    CHECK(write(fd[1], buf, 8 + hl + 3) == (ssize_t)(8 + hl + 3));
    close(fd[1]);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd[0]);
    dr_safetensors *f = NULL;
    if (CHECK_OK(dr_safetensors_open(path, &f))) {
        dr_tensor *t = get(f, "b");
        double x[3] = {0};
        CHECK_OK(dr_tensor_to_f64(t, x, 3));
        CHECK(x[0] == 5 && x[1] == 6 && x[2] == 7);
        dr_tensor_release(t);
        dr_safetensors_close(f);
    }
    close(fd[0]);
}

/* ---- dtypes -------------------------------------------------------------------------- */

static void test_dtypes(void) {
    const char json[] = "{\"f64\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                        "\"i8\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[16,18]},"
                        "\"bool\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[18,20]},"
                        "\"deep\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                        "\"data_offsets\":[20,21]},"
                        "\"f4\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[21,22]}}";
    unsigned char data[22];
    double d[2] = {0.5, -1e300};
    memcpy(data, d, 16);
    data[16] = 0xff, data[17] = 2, data[18] = 1, data[19] = 2, data[20] = 9, data[21] = 0;
    const char *path = make_file("dtypes.safetensors", json, 0, data, sizeof data);
    dr_safetensors *f = NULL;
    if (!CHECK_OK(dr_safetensors_open(path, &f))) return;
    dr_tensor *t = get(f, "f64");
    if (t) {
        double x[2];
        CHECK_EQ_INT(t->scalar_type, DR_F32);
        CHECK_OK(dr_tensor_to_f64(t, x, 2));
        CHECK(x[0] == 0.5 && isinf(x[1]) && x[1] < 0);
        dr_tensor_release(t);
    }
    CHECK_FAILS(dr_safetensors_get(f, "i8", &t), DR_ERR_DTYPE,
                "dtypes.safetensors: tensor 'i8' has dtype I8, which diffrl does not support");
    CHECK_FAILS(dr_safetensors_get(f, "f4", &t), DR_ERR_DTYPE, "tensor 'f4' has dtype F4");
    CHECK_FAILS(dr_safetensors_get(f, "bool", &t), DR_ERR_IO,
                "tensor 'bool' (BOOL) holds byte 0x02 at element 2; booleans must be 0 or 1");
    CHECK_FAILS(dr_safetensors_get(f, "deep", &t), DR_ERR_UNSUPPORTED,
                "tensor 'deep' has 9 dimensions; at most 8 are supported");
    dr_safetensors_close(f);
}

/* ---- validation ------------------------------------------------------------------------ */

typedef struct bad_case {
    const char *name;
    const char *json;
    size_t ndata;
    const char *needle;
} bad_case;

/* One header entry: "name":{"dtype":..,"shape":..,"data_offsets":[b,e]} */
#define T_(name, dtype, shape, b, e)                                      \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":[" #b \
    "," #e "]}"

static const bad_case bad_headers[] = {
    {"not_json", "{\"a\":", 0, "header: invalid JSON at byte 5: expected a value"},
    {"not_object", "[1, 2]", 0, "the header must be a JSON object, got array"},
    {"dup_key", "{" T_("w", "U8", "[1]", 0, 1) "," T_("w", "U8", "[1]", 1, 2) "}", 2,
     "duplicate key 'w'"},
    {"entry_array", "{\"w\":[1]}", 0, "tensor 'w': expected an object with dtype, shape and "
     "data_offsets, got array"},
    {"no_dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor 'w' has no \"dtype\""},
    {"no_shape", "{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "tensor 'w' has no \"shape\""},
    {"no_offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "tensor 'w' has no \"data_offsets\""},
    {"dtype_type", "{\"w\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "tensor 'w': \"dtype\" must be a string, got integer"},
    {"shape_type", "{\"w\":{\"dtype\":\"U8\",\"shape\":\"1\",\"data_offsets\":[0,1]}}", 1,
     "tensor 'w': \"shape\" must be a list, got string"},
    {"offsets_type", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":{}}}", 1,
     "\"data_offsets\" must be a list, got object"},
    {"unknown_dtype", "{" T_("w", "F128", "[1]", 0, 1) "}", 1, "tensor 'w' has unknown dtype 'F128'"},
    {"negative_dim", "{" T_("w", "U8", "[1,-1]", 0, 1) "}", 1, "tensor 'w': shape[2] is -1; it "
     "must be a non-negative integer"},
    {"fraction_dim", "{" T_("w", "U8", "[1.5]", 0, 1) "}", 1, "shape[1] must be a non-negative "
     "integer, got the number"},
    {"string_dim", "{" T_("w", "U8", "[\"1\"]", 0, 1) "}", 1, "got a value of type string"},
    {"huge_dim", "{" T_("w", "U8", "[1e30]", 0, 1) "}", 1, "shape[1] must be a non-negative"},
    {"three_offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1,
     "data_offsets must be a list of two integers [begin, end], got a list of 3"},
    {"negative_offset", "{" T_("w", "U8", "[1]", -1, 0) "}", 1, "data_offsets[1] (begin) is -1"},
    {"end_before_begin", "{" T_("w", "U8", "[0]", 4, 2) "}", 4, "tensor 'w': data_offsets [4, 2] "
     "end before they begin"},
    {"past_buffer", "{" T_("w", "F32", "[2,3]", 0, 24) "}", 16, "tensor 'w': data_offsets [0, 24] "
     "reach past the end of the data buffer (16 bytes)"},
    {"size_mismatch", "{" T_("w", "F32", "[2,3]", 0, 20) "}", 20, "tensor 'w': F32 [2, 3] needs "
     "24 bytes, but data_offsets [0, 20] hold 20"},
    {"overlap", "{" T_("a", "U8", "[4]", 0, 4) "," T_("b", "U8", "[4]", 2, 6) "}", 6,
     "tensors 'a' [0, 4] and 'b' [2, 6] overlap"},
    {"overlap_empty", "{" T_("a", "U8", "[4]", 0, 4) "," T_("b", "U8", "[0]", 2, 2) "}", 4,
     "tensors 'a' [0, 4] and 'b' [2, 2] overlap"},
    {"hole", "{" T_("a", "U8", "[2]", 0, 2) "," T_("b", "U8", "[2]", 4, 6) "}", 6,
     "bytes [2, 4) of the data buffer belong to no tensor (a hole before tensor 'b')"},
    {"hole_at_start", "{" T_("a", "U8", "[2]", 2, 4) "}", 4, "bytes [0, 2) of the data buffer"},
    {"trailing", "{" T_("a", "U8", "[2]", 0, 2) "}", 5, "the data buffer has 3 bytes after the "
     "last tensor"},
    {"data_no_tensors", "{}", 1, "has 1 bytes after the last tensor"},
    {"sub_byte", "{" T_("a", "F4", "[3]", 0, 1) "}", 1, "tensor 'a': F4 [3] does not fill whole bytes"},
    {"overflow", "{" T_("a", "F32", "[4294967296,4294967296]", 0, 0) "}", 0,
     "tensor 'a': shape [4294967296, 4294967296] overflows"},
    {"meta_type", "{\"__metadata__\":[\"a\"]}", 0, "\"__metadata__\" must be an object of "
     "strings, got array"},
    {"meta_value", "{\"__metadata__\":{\"k\":1}}", 0, "metadata 'k' must be a string, got integer"},
    {"meta_nul", "{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, "metadata 'k' contains a NUL"},
    {"name_nul", "{" T_("a\\u0000b", "U8", "[1]", 0, 1) "}", 1, "tensor name 'a\\x00b' contains "
     "a NUL character"},
    {"bad_utf8", "{\"\xff\":1}", 0, "invalid UTF-8 byte 0xff"},
    {"nul_padding", "{}\0\0\0\0\0\0", 0, "unexpected byte 0x00 after the value"},
};

static void test_bad_headers(void) {
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        const bad_case *c = &bad_headers[i];
        char fname[64];
        snprintf(fname, sizeof fname, "bad_%s.safetensors", c->name);
        size_t jl = strlen(c->json);
        if (strcmp(c->name, "nul_padding") == 0) jl = 8;
        /* header of jl bytes (may contain NULs), then ndata data bytes */
        unsigned char buf[1024];
        for (int k = 0; k < 8; k++) buf[k] = (unsigned char)((uint64_t)jl >> (8 * k));
        memcpy(buf + 8, c->json, jl);
        for (size_t k = 0; k < c->ndata; k++) buf[8 + jl + k] = (unsigned char)k;
        const char *path = path_of(fname);
        write_bytes(path, buf, 8 + jl + c->ndata);
        dr_safetensors *f = (dr_safetensors *)1;
        int ok = CHECK_FAILS(dr_safetensors_open(path, &f), DR_ERR_IO, c->needle);
        ok &= CHECK(f == NULL);
        ok &= CHECK(strstr(dr_last_error(), fname) != NULL); /* names the file */
        if (!ok) fprintf(stderr, "    case %s\n", c->name);
    }
}

static void test_bad_files(void) {
    dr_safetensors *f = NULL;
    const char *p = path_of("short.safetensors");
    write_bytes(p, "\x02\0\0", 3);
    CHECK_FAILS(dr_safetensors_open(p, &f), DR_ERR_IO, "short.safetensors: the file has 3 bytes; "
                "a safetensors file starts with an 8-byte header length");
    p = path_of("zero.safetensors");
    write_bytes(p, "", 0);
    CHECK_FAILS(dr_safetensors_open(p, &f), DR_ERR_IO, "zero.safetensors: the file has 0 bytes");
    p = make_file_n("absurd.safetensors", 100000001, "{}", 6, NULL, 0);
    CHECK_FAILS(dr_safetensors_open(p, &f), DR_ERR_IO, "absurd.safetensors: bad header length "
                "100000001: more than the 100000000 bytes a header may have");
    p = make_file_n("huge.safetensors", UINT64_MAX, "{}", 6, NULL, 0);
    CHECK_FAILS(dr_safetensors_open(p, &f), DR_ERR_IO, "bad header length 18446744073709551615");
    p = make_file_n("long.safetensors", 64, "{}", 6, NULL, 0);
    CHECK_FAILS(dr_safetensors_open(p, &f), DR_ERR_IO, "long.safetensors: bad header length 64: "
                "it runs past the end of the file (the file has 16 bytes)");
    p = make_file_n("zero_header.safetensors", 0, "", 0, NULL, 0);
    CHECK_FAILS(dr_safetensors_open(p, &f), DR_ERR_IO, "header: invalid JSON at byte 0");
    CHECK_FAILS(dr_safetensors_open(path_of("missing.safetensors"), &f), DR_ERR_IO,
                "missing.safetensors: cannot open: No such file or directory");
    CHECK_FAILS(dr_safetensors_open(g_dir, &f), DR_ERR_IO, "cannot open: Is a directory");
    CHECK_FAILS(dr_safetensors_open(NULL, &f), DR_ERR_ARG, "path is NULL");
    CHECK_FAILS(dr_safetensors_open(p, NULL), DR_ERR_ARG, "out is NULL");
    /* whitespace the reference allows around the header object */
    p = make_file("spaces.safetensors", " \t\r\n{" T_("a", "U8", "[2]", 0, 2) "}\n", 5, NULL, 2);
    if (CHECK_OK(dr_safetensors_open(p, &f))) dr_safetensors_close(f);
    /* unknown fields in a tensor entry are ignored, as the reference does; null metadata */
    p = make_file("extra.safetensors", "{\"__metadata__\":null,\"a\":{\"dtype\":\"U8\",\"shape\":[2],"
                  "\"data_offsets\":[0,2],\"extra\":[1]}}", 0, NULL, 2);
    if (CHECK_OK(dr_safetensors_open(p, &f))) {
        CHECK_EQ_INT(dr_safetensors_metadata_count(f), 0);
        dr_safetensors_close(f);
    }
    dr_safetensors_close(NULL);
    CHECK_EQ_INT(dr_safetensors_count(NULL), 0);
}

/* ---- save errors ------------------------------------------------------------------------- */

static void test_save_errors(void) {
    static const int64_t s[1] = {2};
    dr_tensor *a = NULL, *freed = NULL;
    CHECK_OK(dr_tensor_full(s, 1, DR_F32, CPU, 1, &a));
    CHECK_OK(dr_tensor_full(s, 1, DR_F32, CPU, 1, &freed));
    dr_tensor_free(freed);
    const char *p = path_of("save_err.safetensors");
    const char *two[2] = {"x", "x"}, *one[1] = {"x"}, *meta[1] = {"__metadata__"};
    const char *bad_utf8[1] = {"\xff"}, *null_name[1] = {NULL};
    const dr_tensor *aa[2] = {a, a}, *af[1] = {freed}, *an[1] = {NULL};
    const char *k2[2] = {"k", "k"}, *v2[2] = {"v", "v"};
    CHECK_FAILS(dr_safetensors_save(p, two, aa, 2, NULL, NULL, 0), DR_ERR_ARG,
                "save_err.safetensors: duplicate tensor name 'x'");
    CHECK_FAILS(dr_safetensors_save(p, meta, aa, 1, NULL, NULL, 0), DR_ERR_ARG,
                "'__metadata__' is reserved");
    CHECK_FAILS(dr_safetensors_save(p, bad_utf8, aa, 1, NULL, NULL, 0), DR_ERR_ARG,
                "tensor name '\xff' is not valid UTF-8");
    CHECK_FAILS(dr_safetensors_save(p, null_name, aa, 1, NULL, NULL, 0), DR_ERR_ARG,
                "tensor name 1 is NULL");
    CHECK_FAILS(dr_safetensors_save(p, one, af, 1, NULL, NULL, 0), DR_ERR_FREED,
                "save_err.safetensors: tensor 'x' [2] was released");
    CHECK_FAILS(dr_safetensors_save(p, one, an, 1, NULL, NULL, 0), DR_ERR_ARG,
                "save_err.safetensors: tensor 'x' is nil");
    CHECK_FAILS(dr_safetensors_save(p, one, aa, 1, k2, v2, 2), DR_ERR_ARG,
                "duplicate metadata key 'k'");
    CHECK_FAILS(dr_safetensors_save(p, one, aa, 1, k2, bad_utf8, 1), DR_ERR_ARG,
                "metadata value '\xff' is not valid UTF-8");
    CHECK_FAILS(dr_safetensors_save(p, one, aa, -1, NULL, NULL, 0), DR_ERR_ARG, "negative count");
    CHECK_FAILS(dr_safetensors_save(p, NULL, aa, 1, NULL, NULL, 0), DR_ERR_ARG, "names is NULL");
    CHECK_FAILS(dr_safetensors_save(NULL, one, aa, 1, NULL, NULL, 0), DR_ERR_ARG, "path is NULL");
    CHECK_FAILS(dr_safetensors_save(path_of("no/such/dir.safetensors"), one, aa, 1, NULL, NULL, 0),
                DR_ERR_IO, "dir.safetensors: cannot create a temporary file beside it");
    a->device.type = DR_CUDA; /* claims to live on cuda:0 (no GPU where the tests run) */
    CHECK_FAILS(dr_safetensors_save(p, one, aa, 1, NULL, NULL, 0), DR_ERR_DEVICE,
                "tensor 'x': cuda:0 requested but");
    a->device.type = DR_CPU;
    struct stat st;
    CHECK(stat(p, &st) != 0); /* nothing was written */
    /* empty: no tensors, no metadata -> "{}" padded to 8 */
    if (CHECK_OK(dr_safetensors_save(p, NULL, NULL, 0, NULL, NULL, 0))) {
        size_t n = 0;
        unsigned char *got = read_bytes(p, &n);
        CHECK(got && n == 16 && memcmp(got, "\x08\0\0\0\0\0\0\0{}      ", 16) == 0);
        free(got);
    }
    dr_tensor_release(a);
    dr_tensor_release(freed);
}

/* ---- many tensors, mutations ---------------------------------------------------------------- */

static void test_many(void) {
    enum { N = 3000 };
    static const int64_t s[1] = {3};
    dr_tensor *t = NULL;
    CHECK_OK(dr_tensor_full(s, 1, DR_F16, CPU, 0.5, &t));
    static char names_buf[N][16];
    static const char *names[N];
    static const dr_tensor *ts[N];
    for (int i = 0; i < N; i++) {
        snprintf(names_buf[i], sizeof names_buf[i], "layer.%d", (i * 7919) % N);
        names[i] = names_buf[i];
        ts[i] = t;
    }
    const char *p = path_of("many.safetensors");
    dr_safetensors *f = NULL;
    if (CHECK_OK(dr_safetensors_save(p, names, ts, N, NULL, NULL, 0)) &&
        CHECK_OK(dr_safetensors_open(p, &f))) {
        CHECK_EQ_INT(dr_safetensors_count(f), N);
        dr_tensor *g = get(f, "layer.2999");
        CHECK(same_values(g, t));
        dr_tensor_release(g);
        dr_safetensors_close(f);
    }
    dr_tensor_release(t);
}

static void test_mutations(void) {
    const char *src = path_of("rt.safetensors");
    size_t n = 0;
    unsigned char *orig = read_bytes(src, &n), *buf = malloc(n + 1);
    if (!CHECK(orig && n > 16)) return;
    uint64_t rng = 99;
    int opened = 0;
    const char *p = path_of("mut.safetensors");
    for (int it = 0; it < 1500; it++) {
        memcpy(buf, orig, n);
        size_t len = n;
        for (int e = 0; e <= it % 3; e++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(rng >> 33) % len;
            if ((rng >> 7) % 5 == 0) len = at + 1;
            else if ((rng >> 7) % 5 == 1) buf[at] = "0123456789,[]{}\""[(rng >> 45) % 16];
            else buf[at] = (unsigned char)(rng >> 50);
        }
        write_bytes(p, buf, len);
        dr_safetensors *f = NULL;
        if (dr_safetensors_open(p, &f) != DR_OK) continue;
        opened++;
        for (int64_t i = 0; i < dr_safetensors_count(f); i++) {
            dr_tensor *t = NULL;
            if (dr_safetensors_get(f, dr_safetensors_name(f, i), &t) != DR_OK) continue;
            int64_t k = dr_tensor_numel(t); /* at most the file's size: checked at open */
            double *x = malloc((size_t)(k + 1) * sizeof *x);
            CHECK(k <= (int64_t)len && dr_tensor_to_f64(t, x, k) == DR_OK); /* touch it all */
            free(x);
            dr_tensor_release(t);
        }
        dr_safetensors_close(f);
    }
    CHECK(opened > 0);
    free(orig);
    free(buf);
}

static void remove_dir(void) {
    DIR *d = opendir(g_dir);
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.') unlink(path_of(e->d_name));
    if (d) closedir(d);
    rmdir(g_dir);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/dr_safetensors_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_exact_bytes();
    test_non_contiguous();
    test_zero_copy();
    test_atomic_replace();
    test_misaligned();
    test_pipe();
    test_dtypes();
    test_bad_headers();
    test_bad_files();
    test_save_errors();
    test_many();
    test_mutations();
    remove_dir();
    return check_summary("test_safetensors");
}
