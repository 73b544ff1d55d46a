/* Argument checks shared by the convolution and resampling ops (conv.c, pool.c);
 * their float32 staging is nn_f32.h's. */
#ifndef DR_OPS_CONV_COMMON_H
#define DR_OPS_CONV_COMMON_H

#include <stdint.h>

#include "../tensor/tensor_internal.h"
#include "nn_f32.h"

/* Bounds stride, padding, dilation and groups so that shape arithmetic cannot overflow. */
#define CONV_MAX_GEOM ((int64_t)1 << 40)

static inline dr_status conv_check_pair(const int64_t *v, const char *op, const char *name,
                                        int64_t min) {
    DR_TRY(dr_check_array(v, 2, op, name));
    if (v[0] < min || v[1] < min || v[0] > CONV_MAX_GEOM || v[1] > CONV_MAX_GEOM)
        return dr_fail(DR_ERR_ARG, "%s: %s must be %s, got %s", op, name,
                       min > 0 ? "positive" : "non-negative", dr_sizes_str(v, 2));
    return DR_OK;
}

static inline dr_status conv_check_same(const dr_tensor *t, const dr_tensor *like,
                                        const char *op, const char *what,
                                        const char *like_what) {
    if (!dr_device_eq(t->device, like->device))
        return dr_fail(DR_ERR_DEVICE, "%s: %s is on %s but %s is on %s", op, what,
                       dr_device_str(t->device), like_what, dr_device_str(like->device));
    if (t->scalar_type != like->scalar_type)
        return dr_fail(DR_ERR_DTYPE, "%s: %s %s %s and %s %s %s must have the same dtype", op,
                       like_what, dr_dtype_name(like->scalar_type), dr_shape_str(like), what,
                       dr_dtype_name(t->scalar_type), dr_shape_str(t));
    return DR_OK;
}

#endif
