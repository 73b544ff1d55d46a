/* Internals of the PyTorch checkpoint reader (torch_load.c): the restricted
 * unpickler (pickle.c) and its value tree. Not part of the public API; the C tests
 * and fuzz targets use it directly. */
#ifndef DR_IO_TORCH_LOAD_H
#define DR_IO_TORCH_LOAD_H

#include <stddef.h>
#include <stdint.h>

#include "diffrl.h"

typedef enum dr_pk_kind {
    DR_PK_NONE, DR_PK_BOOL, DR_PK_INT, DR_PK_FLOAT, DR_PK_STR, DR_PK_BYTES,
    DR_PK_TUPLE, DR_PK_LIST, DR_PK_DICT,
    DR_PK_GLOBAL,   /* an allowed class or function (global: dr_pk_global) */
    DR_PK_STORAGE,  /* a storage from a persistent id: tensor is its 1-D base */
    DR_PK_TENSOR
} dr_pk_kind;

typedef enum dr_pk_global {
    DR_PKG_ORDERED_DICT,          /* collections.OrderedDict */
    DR_PKG_REBUILD_TENSOR_V2,     /* torch._utils._rebuild_tensor_v2 */
    DR_PKG_REBUILD_PARAMETER,     /* torch._utils._rebuild_parameter */
    DR_PKG_REBUILD_PARAMETER_STATE, /* torch._utils._rebuild_parameter_with_state */
    DR_PKG_REBUILD_FROM_TYPE_V2,  /* torch._tensor._rebuild_from_type_v2 */
    DR_PKG_TENSOR_CLASS,          /* torch.Tensor */
    DR_PKG_PARAMETER_CLASS,       /* torch.nn.parameter.Parameter */
    DR_PKG_STORAGE_CLASS          /* torch.<X>Storage; storage: the type index */
} dr_pk_global;

/* torch's typed-storage classes that diffrl reads, and what they become. */
typedef struct dr_pk_storage_type {
    const char *name;     /* "FloatStorage" */
    int32_t file_size;    /* bytes per element in the archive */
    int32_t dtype;        /* the dr_dtype the tensors get */
    int32_t convert;      /* 0: same bytes; 1: float64 -> float32; 2: int16 -> int32;
                             3: int8 -> int32 */
} dr_pk_storage_type;
extern const dr_pk_storage_type dr_pk_storage_types[];
extern const int32_t dr_pk_num_storage_types;

typedef struct dr_pk_value dr_pk_value;
struct dr_pk_value {
    int32_t kind;         /* dr_pk_kind */
    int32_t global;       /* GLOBAL: dr_pk_global; */
    int32_t storage;      /* GLOBAL of a storage class / STORAGE: index in dr_pk_storage_types */
    int64_t i;            /* BOOL, INT */
    double f;             /* FLOAT */
    char *s;              /* STR, BYTES: NUL-terminated copy */
    size_t len;
    dr_pk_value **items;  /* TUPLE, LIST: n items; DICT: n (key, value) pairs in 2n slots */
    int64_t n, cap;
    dr_tensor *tensor;    /* TENSOR; STORAGE: the storage as a 1-D tensor */
};

/* Gives the storage `key` of a persistent id ('storage', torch.<type>, key, location,
 * numel) as a new reference to a contiguous 1-D tensor of numel elements of the
 * type's dtype. Called once per reference; cache by key to share storages. */
typedef dr_status (*dr_pk_storage_fn)(void *ctx, const char *key, int32_t storage_type,
                                      int64_t numel, dr_tensor **out);

typedef struct dr_pickle dr_pickle;
/* Runs the restricted unpickler over bytes[0..len) (protocols 2-5; `name` prefixes
 * messages). *root is the unpickled object, owned by *out (free with dr_pickle_free,
 * also on failure, where *out may be NULL). Only tensors and plain containers are
 * built; any other class or function is an error naming module.name. */
dr_status dr_pickle_load(const char *name, const uint8_t *bytes, size_t len,
                         dr_pk_storage_fn storage, void *ctx, dr_pickle **out,
                         const dr_pk_value **root);
void dr_pickle_free(dr_pickle *p);

/* dr_torch_load on an archive held in memory (exactly len bytes: the fuzz target). */
dr_status dr_torch_load_buffer(const char *name, const uint8_t *bytes, size_t len,
                               dr_torch_checkpoint **out);

#endif
