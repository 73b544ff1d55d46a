/*
 * diffrl.h — the one public header of libdiffrl.
 *
 * The Lua bindings feed the text of this file to LuaJIT's ffi.cdef (the library
 * embeds it: dr_header_text()), so declarations here use no macros: constants are
 * enums, arrays have literal or enum sizes. Preprocessor lines and the C++
 * guard block are stripped before parsing.
 *
 * Conventions:
 *  - Every fallible function returns dr_status; DR_OK is 0. On failure the message
 *    (op, shapes, dtypes, device, file) is kept per thread: dr_last_error().
 *  - Functions that make a tensor write it to `out` with one reference owned by the
 *    caller (release with dr_tensor_release). Inputs are borrowed.
 *  - Dimensions and indices are 0-based here; negative counts from the end. The
 *    Lua layer is 1-based and converts; error messages speak its 1-based terms,
 *    since they are read by the user of the Lua API.
 */
#ifndef DIFFRL_H
#define DIFFRL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { DR_MAX_DIMS = 8 };

typedef enum dr_status {
    DR_OK = 0,
    DR_ERR_ARG = 1,          /* bad argument value (negative size, bad dim, ...) */
    DR_ERR_SHAPE = 2,        /* shapes do not fit the op */
    DR_ERR_DTYPE = 3,        /* dtype not supported by the op */
    DR_ERR_DEVICE = 4,       /* device missing, or tensors on different devices */
    DR_ERR_OOM = 5,          /* allocation failed */
    DR_ERR_IO = 6,           /* file or format error */
    DR_ERR_UNSUPPORTED = 7,  /* not implemented for this backend/configuration */
    DR_ERR_FREED = 8,        /* tensor data was released with dr_tensor_free */
    DR_ERR_INTERNAL = 9
} dr_status;

typedef enum dr_dtype {
    DR_F32 = 0,
    DR_F16 = 1,
    DR_BF16 = 2,
    DR_I64 = 3,
    DR_I32 = 4,
    DR_U8 = 5,
    DR_BOOL = 6,
    DR_NUM_DTYPES = 7
} dr_dtype;

typedef enum dr_device_type {
    DR_CPU = 0,
    DR_CUDA = 1
} dr_device_type;

typedef struct dr_device {
    int32_t type;   /* dr_device_type */
    int32_t index;  /* 0 for cpu */
} dr_device;

typedef struct dr_storage dr_storage;  /* opaque: refcounted bytes on one device */

/*
 * A tensor is a view: sizes/strides (in elements) and an offset into a refcounted
 * storage. Fields are public so the bindings read shapes without a call; change
 * them only through the functions below. Field names avoid the Lua method names
 * (shape, dtype, device) on purpose.
 */
typedef struct dr_tensor {
    int64_t sizes[DR_MAX_DIMS];
    int64_t strides[DR_MAX_DIMS];
    int64_t storage_offset;
    int32_t ndim;
    int32_t scalar_type;     /* dr_dtype */
    dr_device device;
    int32_t refcount;        /* managed by retain/release; do not touch */
    int32_t flags;           /* reserved for autograd */
    dr_storage *storage;     /* NULL after dr_tensor_free */
    void *autograd;          /* reserved for autograd */
} dr_tensor;

/*
 * Counter-based Philox4x32-10 generator: the stream is a pure function of
 * (seed, offset), so CPU and CUDA give identical numbers and state is two integers.
 * Each random op consumes ceil(n/4) counters and advances offset by that.
 */
typedef struct dr_generator {
    uint64_t seed;
    uint64_t offset;
} dr_generator;

typedef struct dr_build_info {
    const char *version;
    const char *git_commit;
    const char *build_type;
    const char *compiler;
    const char *blas;
    const char *cuda;     /* "none" when built without CUDA */
    const char *cudnn;
    const char *nccl;
    const char *mpi;
    const char *sanitize;
} dr_build_info;

/* ---- library, errors ---------------------------------------------------- */
const char *dr_header_text(void);
const dr_build_info *dr_get_build_info(void);
const char *dr_last_error(void);
void dr_clear_error(void);
const char *dr_dtype_name(int32_t dtype);
int64_t dr_dtype_size(int32_t dtype);
int dr_get_num_threads(void);
void dr_set_num_threads(int n);
int dr_cuda_device_count(void);  /* 0 without CUDA or without a device */

/* ---- tensors ------------------------------------------------------------ */
dr_status dr_tensor_empty(const int64_t *sizes, int32_t ndim, int32_t dtype,
                          dr_device device, dr_tensor **out);
dr_status dr_tensor_full(const int64_t *sizes, int32_t ndim, int32_t dtype,
                         dr_device device, double value, dr_tensor **out);
/* Copies n doubles (row-major) into a new tensor of `dtype`, converting. */
dr_status dr_tensor_from_f64(const double *data, const int64_t *sizes, int32_t ndim,
                             int32_t dtype, dr_device device, dr_tensor **out);
/* Writes every element, row-major, as double into out[0..numel). */
dr_status dr_tensor_to_f64(const dr_tensor *t, double *out, int64_t n);
dr_status dr_tensor_item(const dr_tensor *t, double *out);
dr_status dr_tensor_get(const dr_tensor *t, const int64_t *index, double *out);

void dr_tensor_retain(dr_tensor *t);
void dr_tensor_release(dr_tensor *t);
/* Releases the data now (deterministic free); the handle stays valid and any
 * later use reports DR_ERR_FREED. Other views keep their storage alive. */
void dr_tensor_free(dr_tensor *t);

int64_t dr_tensor_numel(const dr_tensor *t);
int dr_tensor_is_contiguous(const dr_tensor *t);
void *dr_tensor_data(const dr_tensor *t);  /* CPU: pointer to element 0; NULL if freed */
/* Bytes of tensor storage currently allocated on a device type (all indices).
 * The bindings use it to run Lua's GC when C memory grows, since the GC itself
 * only sees the small Lua handles. */
int64_t dr_memory_allocated(int32_t device_type);
/* Returns cached free blocks to the system (CPU block cache; CUDA's later). */
void dr_empty_cache(void);

/* Views (share storage). */
dr_status dr_tensor_view(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                         dr_tensor **out);
dr_status dr_tensor_reshape(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                            dr_tensor **out);
dr_status dr_tensor_permute(const dr_tensor *t, const int32_t *dims, int32_t ndim,
                            dr_tensor **out);
dr_status dr_tensor_transpose(const dr_tensor *t, int32_t dim0, int32_t dim1,
                              dr_tensor **out);
dr_status dr_tensor_narrow(const dr_tensor *t, int32_t dim, int64_t start,
                           int64_t length, dr_tensor **out);
dr_status dr_tensor_select(const dr_tensor *t, int32_t dim, int64_t index,
                           dr_tensor **out);
dr_status dr_tensor_expand(const dr_tensor *t, const int64_t *sizes, int32_t ndim,
                           dr_tensor **out);

/* Copies. */
dr_status dr_tensor_contiguous(const dr_tensor *t, dr_tensor **out);
dr_status dr_tensor_clone(const dr_tensor *t, dr_tensor **out);
dr_status dr_tensor_to_dtype(const dr_tensor *t, int32_t dtype, dr_tensor **out);
/* dst[...] = src, broadcasting src to dst's shape and casting. */
dr_status dr_tensor_copy_(dr_tensor *dst, const dr_tensor *src);
dr_status dr_tensor_fill_(dr_tensor *t, double value);

/* ---- ops ---------------------------------------------------------------- */
/* Broadcasting elementwise; result dtype follows torch's promotion rules.
 * add/sub: out = a + alpha * b (alpha as torch.add). div is true division. */
dr_status dr_add(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out);
dr_status dr_sub(const dr_tensor *a, const dr_tensor *b, double alpha, dr_tensor **out);
dr_status dr_mul(const dr_tensor *a, const dr_tensor *b, dr_tensor **out);
dr_status dr_div(const dr_tensor *a, const dr_tensor *b, dr_tensor **out);
/* torch.matmul semantics: 1-D/2-D/batched with broadcast batch dims. */
dr_status dr_matmul(const dr_tensor *a, const dr_tensor *b, dr_tensor **out);
/* Sum over `dims` (ndims == 0: all dims). Integer and bool inputs sum to int64. */
dr_status dr_sum(const dr_tensor *t, const int32_t *dims, int32_t ndims, int keepdim,
                 dr_tensor **out);

/* ---- nn: convolution and resampling (core/ops/conv.c, pool.c) ------------ */

/* ---- nn: normalization, softmax, unary math (core/ops/norm.c, softmax.c, unary.c) */

/* ---- io: safetensors (core/io) -------------------------------------------- */

/* ---- random ------------------------------------------------------------- */
dr_generator *dr_default_generator(void);
void dr_manual_seed(uint64_t seed);
/* Four Philox4x32-10 outputs for one (counter, key); exposed for tests. */
void dr_philox4x32(const uint32_t *counter, const uint32_t *key, uint32_t *out);
dr_status dr_randn(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                   dr_generator *gen, dr_tensor **out);
dr_status dr_rand(const int64_t *sizes, int32_t ndim, int32_t dtype, dr_device device,
                  dr_generator *gen, dr_tensor **out);

#ifdef __cplusplus
}
#endif

#endif /* DIFFRL_H */
