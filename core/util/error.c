#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { MSG_CAP = 2048, RING = 8, RING_CAP = 160 };

static _Thread_local char last_msg[MSG_CAP];
static _Thread_local char ring[RING][RING_CAP];
static _Thread_local unsigned ring_next;

dr_status dr_fail(dr_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return status;
}

const char *dr_last_error(void) { return last_msg; }

void dr_clear_error(void) { last_msg[0] = '\0'; }

void dr_set_error(const char *message) {
    snprintf(last_msg, sizeof last_msg, "%s", message ? message : "");
}

static char *ring_slot(void) {
    char *s = ring[ring_next % RING];
    ring_next++;
    return s;
}

const char *dr_sizes_str(const int64_t *sizes, int32_t ndim) {
    char *s = ring_slot();
    size_t n = 0;
    s[n++] = '[';
    s[n] = '\0';
    for (int32_t i = 0; i < ndim && n < RING_CAP - 24; i++)
        n += (size_t)snprintf(s + n, RING_CAP - n, i ? ", %lld" : "%lld", (long long)sizes[i]);
    snprintf(s + n, RING_CAP - n, "]");
    return s;
}

const char *dr_shape_str(const dr_tensor *t) {
    if (!t) return "nil";
    return dr_sizes_str(t->sizes, t->ndim);
}

const char *dr_device_str(dr_device d) {
    char *s = ring_slot();
    if (d.type == DR_CPU) snprintf(s, RING_CAP, "cpu");
    else if (d.type == DR_CUDA) snprintf(s, RING_CAP, "cuda:%d", d.index);
    else snprintf(s, RING_CAP, "device(%d:%d)", d.type, d.index);
    return s;
}

dr_status dr_check_out(dr_tensor **out, const char *op) {
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    *out = NULL;
    return DR_OK;
}

dr_status dr_check_array(const void *p, int64_t n, const char *op, const char *argname) {
    if (n > 0 && !p) return dr_fail(DR_ERR_ARG, "%s: %s is NULL", op, argname);
    return DR_OK;
}

dr_status dr_check_tensor(const dr_tensor *t, const char *op, const char *argname) {
    if (!t) return dr_fail(DR_ERR_ARG, "%s: %s is nil (expected a tensor)", op, argname);
    if (!t->storage)
        return dr_fail(DR_ERR_FREED, "%s: %s %s was released with free() and cannot be used",
                       op, argname, dr_shape_str(t));
    return DR_OK;
}
