/* Reading a whole file into memory for the image decoders (png.c, jpeg.c),
 * internal to core/io. */
#ifndef DR_IO_FILE_READ_H
#define DR_IO_FILE_READ_H

#include <stddef.h>
#include <stdint.h>
#include "diffrl.h"

/* *buf (malloc'd, free it) gets the bytes of `path`, *len their count. Errors are
 * "<format>: read <path>: <what>" (cannot open, read failed, out of memory). */
dr_status dr_io_read_file(const char *format, const char *path, uint8_t **buf, size_t *len);

#endif
