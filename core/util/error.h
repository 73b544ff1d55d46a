/* Per-thread error reporting: C returns a status, the message waits here for the
 * Lua layer (or a C caller) to read with dr_last_error(). Nothing in core prints,
 * aborts or exits on bad input. */
#ifndef DR_UTIL_ERROR_H
#define DR_UTIL_ERROR_H

#include "diffrl.h"

#if defined(__GNUC__)
#define DR_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define DR_PRINTF(f, a)
#endif

/* Sets the thread's message and returns `status`, so callers write
 * `return dr_fail(DR_ERR_SHAPE, "add: ...", ...)`. */
dr_status dr_fail(dr_status status, const char *fmt, ...) DR_PRINTF(2, 3);

/* "[2, 3]" for a tensor / a size list. Strings live in a small per-thread ring,
 * valid until eight more are made: enough for one message. */
const char *dr_shape_str(const dr_tensor *t);
const char *dr_sizes_str(const int64_t *sizes, int32_t ndim);
/* "cpu", "cuda:0" */
const char *dr_device_str(dr_device d);

/* Validates a tensor argument of `op`: not NULL, not freed. */
dr_status dr_check_tensor(const dr_tensor *t, const char *op, const char *argname);
/* Validates the out-parameter of `op` and sets *out = NULL. */
dr_status dr_check_out(dr_tensor **out, const char *op);
/* Validates that an array argument of n > 0 elements is not NULL. */
dr_status dr_check_array(const void *p, int64_t n, const char *op, const char *argname);

#define DR_TRY(expr)                      \
    do {                                  \
        dr_status dr_try_s_ = (expr);     \
        if (dr_try_s_ != DR_OK) return dr_try_s_; \
    } while (0)

#endif
