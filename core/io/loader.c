/* Batches of images decoded, resized and center-cropped on a pool of pthreads,
 * so the next batch is ready while the caller trains on this one.
 *
 * An image is a byte range of a file (a member of a .tar shard, or a whole file);
 * its format is read from its first bytes (JPEG: FF D8 FF, PNG: the signature),
 * decoded by jpeg.c / png.c as RGB bytes, then resize.c makes it size x size
 * (torchvision Resize + CenterCrop, Pillow's filters) as float32 byte / 255 into
 * the batch's [n, 3, size, size] tensor. Each image is one task; a task's result
 * does not depend on the thread or the order, so a pool of any size (0: decode in
 * the calling thread, in dr_image_batch_wait) gives the same bytes. A failed
 * image leaves its slot zero and keeps its message; the others are unaffected.
 *
 * Ownership: a batch holds a reference on its loader, so loader and batches may
 * be freed in any order (the Lua GC's); the workers stop when the last goes. */
#define _FILE_OFFSET_BITS 64
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffrl.h"
#include "file_read.h"
#include "resize.h"
#include "../tensor/tensor_internal.h"
#include "../util/error.h"

typedef struct {
    char *path;
    char *name;
    int64_t offset, size; /* size < 0: the whole file */
} image_src;

struct dr_image_batch {
    dr_image_loader *loader;
    dr_image_batch *next_queued;
    int32_t n, size, filter;
    image_src *src;
    char **errors;
    dr_tensor *out;
    int32_t next_task; /* guarded by loader->mu */
    int32_t remaining; /* guarded by loader->mu */
    pthread_cond_t done;
    int sync;          /* no threads: the tasks run in dr_image_batch_wait */
};

struct dr_image_loader {
    pthread_mutex_t mu;
    pthread_cond_t work;
    dr_image_batch *head, *tail; /* batches with tasks not yet taken */
    int refs;                    /* the handle + one per live batch */
    int stop;
    int32_t nthreads;
    pthread_t *threads;
};

static char *message(const char *fmt, ...) {
    char buf[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return strdup(buf);
}

/* Reads the image's bytes; NULL message on success. */
static char *read_bytes(const image_src *s, uint8_t **buf, size_t *len) {
    char e[128];
    *buf = NULL, *len = 0;
    if (s->size < 0) {
        if (dr_io_read_file("image", s->path, buf, len) != DR_OK) return strdup(dr_last_error());
        return NULL;
    }
    FILE *fp = fopen(s->path, "rb");
    if (!fp) return message("%s: cannot open %s: %s", s->name, s->path, strerror_r(errno, e, sizeof e));
    uint8_t *b = malloc(s->size ? (size_t)s->size : 1);
    if (!b) {
        fclose(fp);
        return message("%s: out of memory for %lld bytes", s->name, (long long)s->size);
    }
    size_t got = 0;
    if (fseeko(fp, s->offset, SEEK_SET) == 0) got = fread(b, 1, (size_t)s->size, fp);
    fclose(fp);
    if (got != (size_t)s->size) {
        free(b);
        return message("%s: cut short: %zu of %lld bytes in %s", s->name, got, (long long)s->size, s->path);
    }
    *buf = b, *len = got;
    return NULL;
}

static char *process(const dr_image_batch *b, int32_t i) {
    const image_src *s = &b->src[i];
    uint8_t *data;
    size_t len;
    char *err = read_bytes(s, &data, &len);
    if (err) return err;
    dr_tensor *img = NULL;
    dr_status st;
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        st = dr_jpeg_decode(data, len, s->name, 3, DR_U8, &img);
    else if (len >= 8 && memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0)
        st = dr_png_decode(data, len, s->name, 3, DR_U8, &img);
    else
        st = dr_fail(DR_ERR_IO, "%s: not a JPEG or PNG image (%zu bytes)", s->name, len);
    free(data);
    if (st != DR_OK) return strdup(dr_last_error());
    int h = (int)img->sizes[1], w = (int)img->sizes[2], rw, rh, x0, y0;
    size_t plane = (size_t)b->size * b->size;
    float *dst = (float *)dr_tensor_data(b->out) + (size_t)i * 3 * plane;
    if (dr_resize_crop_geometry(w, h, b->size, &rw, &rh, &x0, &y0) != 0)
        err = message("%s: a %dx%d image is too elongated to resize to %d", s->name, w, h, (int)b->size);
    else if (dr_resize_window(dr_tensor_data(img), 3, h, w, rw, rh, x0, y0, b->size, b->size, b->filter,
                              NULL, dst) != 0)
        err = message("%s: out of memory resizing %dx%d", s->name, w, h);
    dr_tensor_release(img);
    if (err) memset(dst, 0, 3 * plane * sizeof *dst);
    return err;
}

static void *worker(void *arg) {
    dr_image_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->head && !l->stop) pthread_cond_wait(&l->work, &l->mu);
        if (!l->head) break; /* stop, and nothing left */
        dr_image_batch *b = l->head;
        int32_t i = b->next_task++;
        if (b->next_task == b->n) {
            l->head = b->next_queued;
            if (!l->head) l->tail = NULL;
        }
        pthread_mutex_unlock(&l->mu);
        char *err = process(b, i);
        pthread_mutex_lock(&l->mu);
        b->errors[i] = err;
        if (--b->remaining == 0) pthread_cond_broadcast(&b->done);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void loader_destroy(dr_image_loader *l) {
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->work);
    pthread_mutex_unlock(&l->mu);
    for (int32_t i = 0; i < l->nthreads; i++) pthread_join(l->threads[i], NULL);
    pthread_cond_destroy(&l->work);
    pthread_mutex_destroy(&l->mu);
    free(l->threads);
    free(l);
}

/* Drops one reference; the last one stops and frees the pool. */
static void loader_unref(dr_image_loader *l) {
    pthread_mutex_lock(&l->mu);
    int last = --l->refs == 0;
    pthread_mutex_unlock(&l->mu);
    if (last) loader_destroy(l);
}

dr_status dr_image_loader_create(int32_t threads, dr_image_loader **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "image_loader: out is NULL");
    *out = NULL;
    if (threads < 0 || threads > 256)
        return dr_fail(DR_ERR_ARG, "image_loader: threads must be in [0, 256], got %d", (int)threads);
    dr_image_loader *l = calloc(1, sizeof *l);
    if (!l) return dr_fail(DR_ERR_OOM, "image_loader: out of memory");
    l->threads = threads ? calloc((size_t)threads, sizeof *l->threads) : NULL;
    if (threads && !l->threads) {
        free(l);
        return dr_fail(DR_ERR_OOM, "image_loader: out of memory");
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->work, NULL);
    l->refs = 1;
    for (int32_t i = 0; i < threads; i++) {
        int rc = pthread_create(&l->threads[i], NULL, worker, l);
        if (rc != 0) {
            char e[128];
            loader_destroy(l); /* joins the l->nthreads started */
            return dr_fail(DR_ERR_INTERNAL, "image_loader: cannot start thread %d: %s", (int)i,
                           strerror_r(rc, e, sizeof e));
        }
        l->nthreads = i + 1;
    }
    *out = l;
    return DR_OK;
}

void dr_image_loader_free(dr_image_loader *l) {
    if (l) loader_unref(l);
}

int32_t dr_image_loader_threads(const dr_image_loader *l) { return l ? l->nthreads : 0; }

static void batch_destroy(dr_image_batch *b) {
    if (b->src)
        for (int32_t i = 0; i < b->n; i++) {
            free(b->src[i].path);
            free(b->src[i].name);
        }
    if (b->errors)
        for (int32_t i = 0; i < b->n; i++) free(b->errors[i]);
    free(b->src);
    free(b->errors);
    dr_tensor_release(b->out);
    pthread_cond_destroy(&b->done);
    free(b);
}

dr_status dr_image_batch_submit(dr_image_loader *l, int32_t n, const char *const *paths,
                                const int64_t *offsets, const int64_t *sizes,
                                const char *const *names, int32_t size, int32_t filter,
                                dr_image_batch **out) {
    const char *op = "image_batch";
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    *out = NULL;
    if (!l) return dr_fail(DR_ERR_ARG, "%s: the loader is NULL", op);
    if (n < 1) return dr_fail(DR_ERR_ARG, "%s: n must be >= 1, got %d", op, (int)n);
    if (!paths || !offsets || !sizes) return dr_fail(DR_ERR_ARG, "%s: paths, offsets and sizes are needed", op);
    if (size < 1 || size > 16384) return dr_fail(DR_ERR_ARG, "%s: size must be in [1, 16384], got %d", op, (int)size);
    const char *bad = dr_resize_filter_check(filter);
    if (bad) return dr_fail(DR_ERR_ARG, "%s: %s, got %d", op, bad, (int)filter);
    for (int32_t i = 0; i < n; i++)
        if (!paths[i] || offsets[i] < 0)
            return dr_fail(DR_ERR_ARG, "%s: image %d: %s", op, (int)i,
                           paths[i] ? "negative offset" : "path is NULL");
    dr_image_batch *b = calloc(1, sizeof *b);
    if (!b) return dr_fail(DR_ERR_OOM, "%s: out of memory", op);
    pthread_cond_init(&b->done, NULL);
    b->n = n, b->size = size, b->filter = filter;
    b->src = calloc((size_t)n, sizeof *b->src);
    b->errors = calloc((size_t)n, sizeof *b->errors);
    int ok = b->src && b->errors;
    for (int32_t i = 0; ok && i < n; i++) {
        b->src[i].path = strdup(paths[i]);
        b->src[i].name = strdup(names && names[i] ? names[i] : paths[i]);
        b->src[i].offset = offsets[i], b->src[i].size = sizes[i];
        ok = b->src[i].path && b->src[i].name;
    }
    if (!ok) {
        batch_destroy(b);
        return dr_fail(DR_ERR_OOM, "%s: out of memory", op);
    }
    int64_t shape[4] = {n, 3, size, size};
    dr_status st = dr_tensor_full(shape, 4, DR_F32, dr_cpu(), 0.0, &b->out);
    if (st != DR_OK) {
        batch_destroy(b);
        return st;
    }
    b->loader = l;
    pthread_mutex_lock(&l->mu);
    l->refs++;
    b->remaining = n;
    b->sync = l->nthreads == 0;
    if (!b->sync) {
        if (l->tail) l->tail->next_queued = b;
        else l->head = b;
        l->tail = b;
        pthread_cond_broadcast(&l->work);
    }
    pthread_mutex_unlock(&l->mu);
    *out = b;
    return DR_OK;
}

/* Waits for the batch's tasks (or runs them, without threads). */
static void batch_finish(dr_image_batch *b) {
    if (b->sync) {
        for (int32_t i = b->next_task; i < b->n; i++) b->errors[i] = process(b, i);
        b->next_task = b->n, b->remaining = 0;
        return;
    }
    dr_image_loader *l = b->loader;
    pthread_mutex_lock(&l->mu);
    while (b->remaining > 0) pthread_cond_wait(&b->done, &l->mu);
    pthread_mutex_unlock(&l->mu);
}

dr_status dr_image_batch_wait(dr_image_batch *b, dr_tensor **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "image_batch: wait: out is NULL");
    *out = NULL;
    if (!b) return dr_fail(DR_ERR_ARG, "image_batch: wait: the batch is NULL");
    batch_finish(b);
    dr_tensor_retain(b->out);
    *out = b->out;
    return DR_OK;
}

int32_t dr_image_batch_count(const dr_image_batch *b) { return b ? b->n : 0; }

const char *dr_image_batch_error(const dr_image_batch *b, int32_t i) {
    if (!b || i < 0 || i >= b->n || b->remaining > 0) return NULL;
    return b->errors[i];
}

void dr_image_batch_free(dr_image_batch *b) {
    if (!b) return;
    if (!b->sync) {
        /* tasks no worker took yet are dropped; the running ones are waited for */
        dr_image_loader *l = b->loader;
        pthread_mutex_lock(&l->mu);
        if (b->next_task < b->n) {
            dr_image_batch **p = &l->head, *prev = NULL;
            while (*p && *p != b) prev = *p, p = &(*p)->next_queued;
            if (*p) {
                *p = b->next_queued;
                if (l->tail == b) l->tail = prev;
            }
            b->remaining -= b->n - b->next_task;
            b->next_task = b->n;
        }
        while (b->remaining > 0) pthread_cond_wait(&b->done, &l->mu);
        pthread_mutex_unlock(&l->mu);
    }
    dr_image_loader *l = b->loader;
    batch_destroy(b);
    if (l) loader_unref(l);
}
