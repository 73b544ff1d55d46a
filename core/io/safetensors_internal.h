/* Shared by the safetensors reader (safetensors.c) and writer (safetensors_write.c):
 * the format's dtypes. Not part of the public API. */
#ifndef DR_IO_SAFETENSORS_INTERNAL_H
#define DR_IO_SAFETENSORS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "diffrl.h"

enum {
    DR_ST_LEN_BYTES = 8,                 /* the little-endian u64 before the header */
    DR_ST_MAX_HEADER = 100 * 1000 * 1000 /* the reference's MAX_HEADER_SIZE */
};

typedef struct dr_st_dtype {
    const char *name;  /* as written in the header: "F32", "BF16", ... */
    int32_t bits;      /* element size in bits (F4 is 4, F6_* 6) */
    int32_t rank;      /* position in the reference's Dtype enum (its sort key) */
    int32_t dtype;     /* our dr_dtype, or -1 when diffrl has no such dtype */
} dr_st_dtype;

/* Every dtype the reference knows, or NULL for an unknown name. */
const dr_st_dtype *dr_st_dtype_by_name(const char *name, size_t len);
/* The format's dtype of one of ours (never NULL for a valid dr_dtype). */
const dr_st_dtype *dr_st_dtype_of(int32_t dtype);

/* Opens a copy of bytes[0..len) held in memory (exactly len bytes, so ASan sees any
 * over-read: the fuzz target uses it); `name` stands for the file in messages. */
dr_status dr_st_open_buffer(const char *name, const void *bytes, size_t len,
                            dr_safetensors **out);

#endif
