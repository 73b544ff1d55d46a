/* Random tensors from explicit Philox generators (torch.randn / torch.rand with
 * generator=). A generator is (seed, offset); an op drawing n numbers uses blocks
 * offset .. offset+ceil(n/4)-1 and advances offset past them, so streams are
 * reproducible, resumable from two integers, and equal on CPU and CUDA. */
#include "../tensor/tensor_internal.h"
#include "../backend/backend.h"
#include "../util/philox.h"

static dr_generator default_generator = {0, 0};

dr_generator *dr_default_generator(void) { return &default_generator; }

void dr_manual_seed(uint64_t seed) {
    default_generator.seed = seed;
    default_generator.offset = 0;
}

void dr_philox4x32(const uint32_t *counter, const uint32_t *key, uint32_t *out) {
    dr_philox4x32_10(counter, key, out);
}

static dr_status random_tensor(dr_random_kind kind, const char *op, const int64_t *sizes,
                               int32_t ndim, int32_t dtype, dr_device device,
                               dr_generator *gen, dr_tensor **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "%s: out is NULL", op);
    *out = NULL;
    if (!dr_dtype_is_float(dtype))
        return dr_fail(DR_ERR_DTYPE, "%s: dtype %s is not a floating point type", op,
                       dr_dtype_name(dtype));
    const dr_backend *be = dr_backend_get(device, op);
    if (!be) return DR_ERR_DEVICE;
    if (!gen) gen = &default_generator;
    dr_tensor *f = NULL;
    DR_TRY(dr_tensor_new(sizes, ndim, DR_F32, device, op, &f));
    uint32_t bits = dtype == DR_F16 ? 11 : dtype == DR_BF16 ? 8 : 24;
    dr_status st = be->random(f, kind, gen->seed, gen->offset, bits);
    if (st == DR_OK) {
        gen->offset += ((uint64_t)dr_tensor_numel(f) + 3) / 4;
        st = dr_as_dtype(f, dtype, out);
    }
    dr_tensor_release(f);
    return st;
}

dr_status dr_randn(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                   dr_generator *gen, dr_tensor **out) {
    return random_tensor(DR_RANDOM_NORMAL, "randn", sizes, ndim, dtype, device, gen, out);
}

dr_status dr_rand(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                  dr_generator *gen, dr_tensor **out) {
    return random_tensor(DR_RANDOM_UNIFORM, "rand", sizes, ndim, dtype, device, gen, out);
}
