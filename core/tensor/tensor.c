/* Tensor lifecycle: storage, refcounts, creation from data, element access. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor_internal.h"
#include "../backend/backend.h"
#include "../util/scalar.h"
#include "../autograd/autograd.h"

static const int64_t dtype_sizes[DR_NUM_DTYPES] = {4, 2, 2, 8, 4, 1, 1};
static const char *const dtype_names[DR_NUM_DTYPES] = {
    "float32", "float16", "bfloat16", "int64", "int32", "uint8", "bool"};

int64_t dr_dtype_size(int32_t dtype) { return dr_dtype_valid(dtype) ? dtype_sizes[dtype] : 0; }
const char *dr_dtype_name(int32_t dtype) {
    return dr_dtype_valid(dtype) ? dtype_names[dtype] : "invalid-dtype";
}

static int64_t allocated_bytes[2]; /* by dr_device_type */

int64_t dr_memory_allocated(int32_t device_type) {
    if (device_type < 0 || device_type > 1) return 0;
    return __atomic_load_n(&allocated_bytes[device_type], __ATOMIC_RELAXED);
}

void dr_storage_release(dr_storage *s) {
    if (!s) return;
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (s->owner) {
        s->owner_release(s->owner);
        free(s);
        return;
    }
    const dr_backend *be = dr_backend_get(s->device, "release");
    if (be && s->data) {
        be->dealloc(s->device.index, s->data, s->nbytes);
        __atomic_sub_fetch(&allocated_bytes[s->device.type], (int64_t)s->nbytes, __ATOMIC_RELAXED);
    }
    free(s);
}

void dr_tensor_retain(dr_tensor *t) {
    if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
}

void dr_tensor_release(dr_tensor *t) {
    if (!t) return;
    if (__atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    dr_autograd_release_meta(t);
    dr_storage_release(t->storage);
    free(t);
}

void dr_tensor_free(dr_tensor *t) {
    if (!t) return;
    dr_storage *s = t->storage;
    t->storage = NULL;
    dr_storage_release(s);
}

int64_t dr_tensor_numel(const dr_tensor *t) {
    if (!t) return 0;
    int64_t n = 1;
    for (int32_t i = 0; i < t->ndim; i++) n *= t->sizes[i];
    return n;
}

int dr_tensor_is_contiguous(const dr_tensor *t) {
    if (!t) return 0;
    if (dr_tensor_numel(t) == 0) return 1; /* as torch: no element is out of place */
    int64_t expected = 1;
    for (int32_t i = t->ndim - 1; i >= 0; i--) {
        if (t->sizes[i] == 1) continue;
        if (t->strides[i] != expected) return 0;
        expected *= t->sizes[i];
    }
    return 1;
}

void *dr_tensor_data(const dr_tensor *t) {
    if (!t || !t->storage || !t->storage->data) return NULL;
    return (char *)t->storage->data + t->storage_offset * dtype_sizes[t->scalar_type];
}

void dr_tensor_set_contiguous_strides(dr_tensor *t) {
    int64_t s = 1;
    for (int32_t i = t->ndim - 1; i >= 0; i--) {
        t->strides[i] = s;
        s *= t->sizes[i] > 1 ? t->sizes[i] : 1;
    }
}

dr_status dr_check_sizes(const int64_t *sizes, int32_t ndim, const char *op, int64_t *numel) {
    if (ndim < 0 || ndim > DR_MAX_DIMS)
        return dr_fail(DR_ERR_ARG, "%s: %d dimensions requested, at most %d are supported", op,
                       ndim, DR_MAX_DIMS);
    if (ndim > 0 && !sizes) return dr_fail(DR_ERR_ARG, "%s: sizes is nil", op);
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) {
        if (sizes[i] < 0)
            return dr_fail(DR_ERR_ARG, "%s: negative size %lld in dimension %d of %s", op,
                           (long long)sizes[i], i + 1, dr_sizes_str(sizes, ndim));
        if (sizes[i] != 0 && n > INT64_MAX / sizes[i])
            return dr_fail(DR_ERR_ARG, "%s: shape %s has too many elements", op,
                           dr_sizes_str(sizes, ndim));
        n *= sizes[i];
    }
    if (numel) *numel = n;
    return DR_OK;
}

dr_status dr_tensor_new(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                        const char *op, dr_tensor **out) {
    int64_t numel;
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    *out = NULL;
    DR_TRY(dr_check_sizes(sizes, ndim, op, &numel));
    if (!dr_dtype_valid(dtype)) return dr_fail(DR_ERR_DTYPE, "%s: unknown dtype code %d", op, dtype);
    const dr_backend *be = dr_backend_get(device, op);
    if (!be) return DR_ERR_DEVICE;
    if (numel > INT64_MAX / 8)
        return dr_fail(DR_ERR_ARG, "%s: shape %s has too many elements", op,
                       dr_sizes_str(sizes, ndim));
    size_t nbytes = (size_t)(numel * dtype_sizes[dtype]);

    dr_storage *s = calloc(1, sizeof *s);
    dr_tensor *t = calloc(1, sizeof *t);
    if (!s || !t) {
        free(s);
        free(t);
        return dr_fail(DR_ERR_OOM, "%s: out of host memory for a tensor header", op);
    }
    s->refcount = 1;
    s->device = device;
    s->nbytes = nbytes;
    if (nbytes > 0) {
        dr_status st = be->alloc(device.index, nbytes, &s->data);
        if (st != DR_OK) {
            free(s);
            free(t);
            char why[512]; /* the backend's own message says what is held */
            snprintf(why, sizeof why, "%s", dr_last_error());
            return dr_fail(st, "%s: cannot allocate %zu bytes on %s for %s %s: %s", op, nbytes,
                           dr_device_str(device), dr_dtype_name(dtype), dr_sizes_str(sizes, ndim),
                           why);
        }
        __atomic_add_fetch(&allocated_bytes[device.type], (int64_t)nbytes, __ATOMIC_RELAXED);
    }
    t->refcount = 1;
    t->ndim = ndim;
    t->scalar_type = dtype;
    t->device = device;
    t->storage = s;
    for (int32_t i = 0; i < ndim; i++) t->sizes[i] = sizes[i];
    dr_tensor_set_contiguous_strides(t);
    *out = t;
    return DR_OK;
}

dr_status dr_tensor_alias(const dr_tensor *t, dr_tensor **out) {
    dr_tensor *v = malloc(sizeof *v);
    if (!v) return dr_fail(DR_ERR_OOM, "view: out of host memory for a tensor header");
    *v = *t;
    v->refcount = 1;
    v->flags = 0;
    v->autograd = NULL;
    __atomic_add_fetch(&v->storage->refcount, 1, __ATOMIC_RELAXED);
    *out = v;
    return DR_OK;
}

dr_status dr_tensor_empty(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                          dr_tensor **out) {
    return dr_tensor_new(sizes, ndim, dtype, device, "empty", out);
}

dr_status dr_tensor_full(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                         double value, dr_tensor **out) {
    DR_TRY(dr_tensor_new(sizes, ndim, dtype, device, "full", out));
    dr_status st = dr_tensor_fill_(*out, value);
    return dr_drop_on_error(st, out);
}

dr_status dr_tensor_from_f64(const double *data, const int64_t *sizes, int32_t ndim,
                             int32_t dtype, dr_device device, dr_tensor **out) {
    dr_tensor *src;
    int64_t numel;
    DR_TRY(dr_check_sizes(sizes, ndim, "tensor", &numel));
    if (numel > 0 && !data) return dr_fail(DR_ERR_ARG, "tensor: data is NULL");
    if (!dr_dtype_valid(dtype)) return dr_fail(DR_ERR_DTYPE, "tensor: unknown dtype code %d", dtype);
    /* Stage the doubles on the CPU as f32 (float dtypes) or int64 (integer dtypes),
     * then let the copy kernel cast and move them. */
    int32_t staging = dr_dtype_is_float(dtype) ? DR_F32 : DR_I64;
    DR_TRY(dr_tensor_new(sizes, ndim, staging, dr_cpu(), "tensor", &src));
    if (staging == DR_F32) {
        float *p = dr_tensor_data(src);
        for (int64_t i = 0; i < numel; i++) p[i] = (float)data[i];
    } else {
        int64_t *p = dr_tensor_data(src);
        for (int64_t i = 0; i < numel; i++) {
            double v = data[i];
            if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0)) {
                dr_tensor_release(src);
                return dr_fail(DR_ERR_ARG, "tensor: value %g at flat index %lld does not fit %s",
                               v, (long long)i, dr_dtype_name(dtype));
            }
            p[i] = dtype == DR_BOOL ? v != 0 : (int64_t)v; /* bool(0.25) is true */
        }
    }
    dr_status st = dr_tensor_new(sizes, ndim, dtype, device, "tensor", out);
    if (st == DR_OK) {
        st = dr_tensor_copy_(*out, src);
        if (st != DR_OK) {
            dr_tensor_release(*out);
            *out = NULL;
        }
    }
    dr_tensor_release(src);
    return st;
}

dr_status dr_tensor_to_f64(const dr_tensor *t, double *out, int64_t n) {
    DR_TRY(dr_check_tensor(t, "tolist", "tensor"));
    DR_TRY(dr_check_array(out, dr_tensor_numel(t), "tolist", "buffer"));
    int64_t numel = dr_tensor_numel(t);
    if (t->device.type != DR_CPU) { /* read through a host copy */
        if (!dr_backend_get(t->device, "tolist")) return DR_ERR_DEVICE;
        if (n < numel)
            return dr_fail(DR_ERR_ARG, "tolist: buffer of %lld for %lld elements", (long long)n,
                           (long long)numel);
        dr_tensor *host;
        bool grad = dr_grad_pause();
        dr_status st = dr_tensor_to_device(t, dr_cpu(), &host);
        dr_grad_resume(grad);
        if (st != DR_OK) return st;
        st = dr_tensor_to_f64(host, out, n);
        dr_tensor_release(host);
        return st;
    }
    if (n < numel)
        return dr_fail(DR_ERR_ARG, "tolist: buffer of %lld for %lld elements", (long long)n,
                       (long long)numel);
    int64_t idx[DR_MAX_DIMS] = {0};
    const char *base = t->storage->data;
    for (int64_t k = 0; k < numel; k++) {
        int64_t off = t->storage_offset;
        for (int32_t d = 0; d < t->ndim; d++) off += idx[d] * t->strides[d];
        out[k] = dr_load_f64(base, t->scalar_type, off);
        for (int32_t d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->sizes[d]) break;
            idx[d] = 0;
        }
    }
    return DR_OK;
}

/* One element as double; indices 0-based, negative from the end. */
static dr_status get_element(const dr_tensor *t, const int64_t *index, double *out, const char *op) {
    DR_TRY(dr_check_tensor(t, op, "tensor"));
    DR_TRY(dr_check_array(out, 1, op, "result pointer"));
    DR_TRY(dr_check_array(index, t->ndim, op, "index"));
    int64_t off = t->storage_offset;
    for (int32_t d = 0; d < t->ndim; d++) {
        int64_t i = index[d], size = t->sizes[d];
        if (i < -size || i >= size)
            return dr_fail(DR_ERR_ARG, "%s: index %lld out of range for dimension %d of size %lld",
                           op, (long long)(i < 0 ? i : i + 1), d + 1, (long long)size);
        off += (i < 0 ? i + size : i) * t->strides[d];
    }
    if (t->device.type != DR_CPU) { /* one element through the host */
        if (!dr_backend_get(t->device, op)) return DR_ERR_DEVICE;
        dr_tensor *one, *host;
        DR_TRY(dr_tensor_alias(t, &one));
        one->ndim = 0;
        one->storage_offset = off;
        bool grad = dr_grad_pause();
        dr_status st = dr_tensor_to_device(one, dr_cpu(), &host);
        dr_grad_resume(grad);
        dr_tensor_release(one);
        if (st != DR_OK) return st;
        *out = dr_load_f64(host->storage->data, host->scalar_type, host->storage_offset);
        dr_tensor_release(host);
        return DR_OK;
    }
    *out = dr_load_f64(t->storage->data, t->scalar_type, off);
    return DR_OK;
}

dr_status dr_tensor_get(const dr_tensor *t, const int64_t *index, double *out) {
    return get_element(t, index, out, "get");
}

dr_status dr_tensor_item(const dr_tensor *t, double *out) {
    DR_TRY(dr_check_tensor(t, "item", "tensor"));
    int64_t n = dr_tensor_numel(t);
    if (n != 1)
        return dr_fail(DR_ERR_SHAPE, "item: tensor of shape %s has %lld elements, expected 1",
                       dr_shape_str(t), (long long)n);
    int64_t zeros[DR_MAX_DIMS] = {0};
    return get_element(t, zeros, out, "item");
}
