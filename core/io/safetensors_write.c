/*
 * safetensors writer, byte for byte what the reference (huggingface/safetensors,
 * tensor.rs `prepare` + serde_json) writes for the same tensors: tensors ordered by
 * the reference's dtype rank descending (I64, F32, I32, BF16, F16, U8, BOOL for ours),
 * then by name (bytes); a compact header {"__metadata__":{...},"name":{"dtype":..,
 * "shape":[..],"data_offsets":[b,e]},...} padded with spaces to a multiple of 8; data
 * packed from offset 0 in that order. (The reference writes metadata in hash order;
 * we sort the keys, so files with two or more metadata keys may differ from it in
 * that order only.)
 *
 * The file appears atomically: written to a temporary file beside it, fsync'ed,
 * then renamed over `path` (so a reader that has the old file mapped keeps its
 * pages), then the directory is fsync'ed.
 */
#define _GNU_SOURCE /* GNU strerror_r */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "safetensors_internal.h"
#include "../tensor/tensor_internal.h"
#include "../autograd/autograd.h"
#include "../backend/backend.h"

enum { QUOTE = 96, TEMP_TRIES = 100 };

typedef struct item {
    const char *name;
    const dr_tensor *t;
    const dr_st_dtype *dt;
} item;

static int cmp_item(const void *a, const void *b) {
    const item *x = a, *y = b;
    if (x->dt->rank != y->dt->rank) return x->dt->rank > y->dt->rank ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_str_index(const void *a, const void *b, void *strs) {
    const char *const *s = strs;
    return strcmp(s[*(const int64_t *)a], s[*(const int64_t *)b]);
}

static const char *q(const char *s, char *buf) { return dr_json_quote_msg(s, strlen(s), buf, QUOTE); }

/* Non-NULL and valid UTF-8 strings; `what` names them in errors. With `order`, also
 * unique, and order gets the indices sorted by string. */
static dr_status check_strings(const char *path, const char *const *s, int64_t n, const char *what,
                               int64_t *order) {
    char b[QUOTE];
    for (int64_t i = 0; i < n; i++) {
        if (!s[i])
            return dr_fail(DR_ERR_ARG, "safetensors: save %s: %s %lld is NULL", path, what,
                           (long long)i + 1);
        if (!dr_utf8_valid(s[i], strlen(s[i])))
            return dr_fail(DR_ERR_ARG, "safetensors: save %s: %s %s is not valid UTF-8", path,
                           what, q(s[i], b));
        if (order) order[i] = i;
    }
    if (!order) return DR_OK;
    qsort_r(order, (size_t)n, sizeof *order, cmp_str_index, (void *)s);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(s[order[i]], s[order[i - 1]]) == 0)
            return dr_fail(DR_ERR_ARG, "safetensors: save %s: duplicate %s %s", path, what,
                           q(s[order[i]], b));
    return DR_OK;
}

static dr_status check_tensors(const char *path, const char *const *names,
                               const dr_tensor *const *tensors, int64_t n, item *items) {
    char b[QUOTE], arg[QUOTE + 16], op[256];
    snprintf(op, sizeof op, "safetensors: save %s", path);
    for (int64_t i = 0; i < n; i++) {
        if (strcmp(names[i], "__metadata__") == 0)
            return dr_fail(DR_ERR_ARG, "safetensors: save %s: '__metadata__' is reserved for "
                           "the metadata and cannot name a tensor", path);
        snprintf(arg, sizeof arg, "tensor %s", q(names[i], b));
        DR_TRY(dr_check_tensor(tensors[i], op, arg));
        if (tensors[i]->device.type != DR_CPU) { /* written through the host: its device must work */
            char dop[sizeof op + sizeof arg + 4];
            snprintf(dop, sizeof dop, "%s: %s", op, arg);
            if (!dr_backend_get(tensors[i]->device, dop)) return DR_ERR_DEVICE;
        }
        items[i].name = names[i];
        items[i].t = tensors[i];
        items[i].dt = dr_st_dtype_of(tensors[i]->scalar_type);
        if (!items[i].dt)
            return dr_fail(DR_ERR_DTYPE, "safetensors: save %s: tensor %s has unknown dtype code "
                           "%d", path, b, tensors[i]->scalar_type);
    }
    qsort(items, (size_t)n, sizeof *items, cmp_item);
    return DR_OK;
}

static void header_json(dr_json_buf *h, const item *items, int64_t n, const char *const *keys,
                        const char *const *values, const int64_t *meta_order, int64_t nmeta) {
    dr_json_buf_raw(h, "{", 1);
    if (nmeta > 0) {
        dr_json_buf_raw(h, "\"__metadata__\":{", 16);
        for (int64_t i = 0; i < nmeta; i++) {
            int64_t k = meta_order[i];
            if (i) dr_json_buf_raw(h, ",", 1);
            dr_json_buf_string(h, keys[k], strlen(keys[k]));
            dr_json_buf_raw(h, ":", 1);
            dr_json_buf_string(h, values[k], strlen(values[k]));
        }
        dr_json_buf_raw(h, "}", 1);
    }
    int64_t offset = 0;
    for (int64_t i = 0; i < n; i++) {
        const dr_tensor *t = items[i].t;
        int64_t nbytes = dr_tensor_numel(t) * dr_dtype_size(t->scalar_type);
        if (i || nmeta > 0) dr_json_buf_raw(h, ",", 1);
        dr_json_buf_string(h, items[i].name, strlen(items[i].name));
        dr_json_buf_raw(h, ":{\"dtype\":", 10);
        dr_json_buf_string(h, items[i].dt->name, strlen(items[i].dt->name));
        dr_json_buf_raw(h, ",\"shape\":[", 10);
        for (int32_t d = 0; d < t->ndim; d++) {
            if (d) dr_json_buf_raw(h, ",", 1);
            dr_json_buf_int(h, t->sizes[d]);
        }
        dr_json_buf_raw(h, "],\"data_offsets\":[", 18);
        dr_json_buf_int(h, offset);
        dr_json_buf_raw(h, ",", 1);
        dr_json_buf_int(h, offset + nbytes);
        dr_json_buf_raw(h, "]}", 2);
        offset += nbytes;
    }
    dr_json_buf_raw(h, "}", 1);
    while (!h->failed && h->len % 8) dr_json_buf_raw(h, " ", 1);
}

static dr_status write_all(int fd, const void *data, size_t n, const char *path) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            char e[128];
            return dr_fail(DR_ERR_IO, "safetensors: save %s: write failed: %s", path,
                           strerror_r(errno, e, sizeof e));
        }
        p += w;
        n -= (size_t)w;
    }
    return DR_OK;
}

static dr_status write_body(int fd, const dr_json_buf *h, const item *items, int64_t n,
                            const char *path) {
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)h->len >> (8 * i));
    DR_TRY(write_all(fd, len, sizeof len, path));
    DR_TRY(write_all(fd, h->data, h->len, path));
    for (int64_t i = 0; i < n; i++) {
        const dr_tensor *t = items[i].t;
        size_t nbytes = (size_t)(dr_tensor_numel(t) * dr_dtype_size(t->scalar_type));
        if (nbytes == 0) continue;
        if (t->device.type == DR_CPU && dr_tensor_is_contiguous(t)) {
            DR_TRY(write_all(fd, dr_tensor_data(t), nbytes, path));
            continue;
        }
        dr_tensor *c; /* contiguous on the host: device tensors travel one at a time */
        bool grad = dr_grad_pause();
        dr_status made = t->device.type == DR_CPU ? dr_tensor_contiguous(t, &c)
                                                  : dr_tensor_to_device(t, (dr_device){DR_CPU, 0}, &c);
        dr_grad_resume(grad);
        DR_TRY(made);
        dr_status st = write_all(fd, dr_tensor_data(c), nbytes, path);
        dr_tensor_release(c);
        DR_TRY(st);
    }
    return DR_OK;
}

/* Creates "<path>.tmp.<pid>.<k>" exclusively (mode 0666 less the umask). */
static int open_temp(const char *path, char *tmp, size_t cap) {
    static unsigned counter;
    for (int tries = 0; tries < TEMP_TRIES; tries++) {
        unsigned k = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
        snprintf(tmp, cap, "%s.tmp.%ld.%u", path, (long)getpid(), k);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

static void sync_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd); /* best effort: the rename is done; some file systems refuse this */
        close(fd);
    }
    free(copy);
}

static dr_status write_file(const char *path, const dr_json_buf *h, const item *items, int64_t n) {
    char e[128];
    size_t cap = strlen(path) + 64;
    char *tmp = malloc(cap);
    if (!tmp) return dr_fail(DR_ERR_OOM, "safetensors: save %s: out of memory", path);
    int fd = open_temp(path, tmp, cap);
    if (fd < 0) {
        dr_status st = dr_fail(DR_ERR_IO, "safetensors: save %s: cannot create a temporary file "
                               "beside it: %s", path, strerror_r(errno, e, sizeof e));
        free(tmp);
        return st;
    }
    dr_status st = write_body(fd, h, items, n, path);
    if (st == DR_OK && fsync(fd) != 0)
        st = dr_fail(DR_ERR_IO, "safetensors: save %s: fsync failed: %s", path,
                     strerror_r(errno, e, sizeof e));
    if (close(fd) != 0 && st == DR_OK)
        st = dr_fail(DR_ERR_IO, "safetensors: save %s: close failed: %s", path,
                     strerror_r(errno, e, sizeof e));
    if (st == DR_OK && rename(tmp, path) != 0)
        st = dr_fail(DR_ERR_IO, "safetensors: save %s: cannot rename the temporary file into "
                     "place: %s", path, strerror_r(errno, e, sizeof e));
    if (st != DR_OK) unlink(tmp);
    else sync_dir(path);
    free(tmp);
    return st;
}

dr_status dr_safetensors_save(const char *path, const char *const *names,
                              const dr_tensor *const *tensors, int64_t n,
                              const char *const *meta_keys, const char *const *meta_values,
                              int64_t nmeta) {
    if (!path) return dr_fail(DR_ERR_ARG, "safetensors: save: path is NULL");
    if (n < 0 || nmeta < 0)
        return dr_fail(DR_ERR_ARG, "safetensors: save %s: negative count (%lld tensors, %lld "
                       "metadata entries)", path, (long long)n, (long long)nmeta);
    DR_TRY(dr_check_array(names, n, "safetensors: save", "names"));
    DR_TRY(dr_check_array(tensors, n, "safetensors: save", "tensors"));
    DR_TRY(dr_check_array(meta_keys, nmeta, "safetensors: save", "metadata keys"));
    DR_TRY(dr_check_array(meta_values, nmeta, "safetensors: save", "metadata values"));
    item *items = calloc((size_t)n + 1, sizeof *items);
    int64_t *order = calloc((size_t)(n > nmeta ? n : nmeta) + 1, sizeof *order);
    int64_t *meta_order = calloc((size_t)nmeta + 1, sizeof *meta_order);
    dr_json_buf h = {0};
    dr_status st = DR_OK;
    if (!items || !order || !meta_order)
        st = dr_fail(DR_ERR_OOM, "safetensors: save %s: out of memory", path);
    if (st == DR_OK) st = check_strings(path, names, n, "tensor name", order);
    if (st == DR_OK) st = check_strings(path, meta_keys, nmeta, "metadata key", meta_order);
    if (st == DR_OK) st = check_strings(path, meta_values, nmeta, "metadata value", NULL);
    if (st == DR_OK) st = check_tensors(path, names, tensors, n, items);
    if (st == DR_OK) {
        header_json(&h, items, n, meta_keys, meta_values, meta_order, nmeta);
        if (h.failed) st = dr_fail(DR_ERR_OOM, "safetensors: save %s: out of memory", path);
        else if (h.len > DR_ST_MAX_HEADER)
            st = dr_fail(DR_ERR_ARG, "safetensors: save %s: the header would take %zu bytes, more "
                         "than the 100000000 the format allows", path, h.len);
    }
    if (st == DR_OK) st = write_file(path, &h, items, n);
    free(h.data);
    free(items);
    free(order);
    free(meta_order);
    return st;
}
