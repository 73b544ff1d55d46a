/* A reader of zip archives held in memory, for PyTorch checkpoints (torch.save's
 * zip format, written by PyTorch's miniz-based PyTorchStreamWriter). Internal to
 * libdiffrl; the public face is dr_torch_load (torch_load.c). */
#ifndef DR_IO_ZIP_H
#define DR_IO_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "diffrl.h"

typedef struct dr_zip_entry {
    const char *name;      /* NUL-terminated copy (names with NUL bytes are refused) */
    uint64_t data_offset;  /* of the entry's bytes in the archive */
    uint64_t size;         /* uncompressed size (== stored size for method 0) */
    uint64_t stored_size;  /* compressed size */
    uint32_t crc32;
    uint16_t method;       /* 0 stored, 8 deflate, ... */
    uint16_t flags;        /* general purpose bit flag; bit 0: encrypted */
} dr_zip_entry;

typedef struct dr_zip {
    dr_zip_entry *entries;  /* in central-directory order */
    int64_t count;
    char *names;            /* pool of the names */
} dr_zip;

/* Parses the central directory of bytes[0..len) (zip64 included); every entry's
 * local header is checked and its data must lie inside the archive. `name` is what
 * messages call the archive. Errors: DR_ERR_IO "<name>: not a zip archive ..." etc. */
dr_status dr_zip_parse(const char *name, const uint8_t *bytes, size_t len, dr_zip *out);
void dr_zip_free(dr_zip *z);
/* The entry named exactly `entry`, or NULL. */
const dr_zip_entry *dr_zip_find(const dr_zip *z, const char *entry);
/* Checks that the entry can be read without decompression (stored, not encrypted,
 * sizes agree), naming archive and entry otherwise. */
dr_status dr_zip_check_stored(const char *name, const dr_zip_entry *e);
/* The CRC-32 of zip (and PNG): reflected polynomial 0xEDB88320. */
uint32_t dr_zip_crc32(const uint8_t *p, size_t n);

#endif
