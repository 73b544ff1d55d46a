/* Whole-file reads for the image decoders (see file_read.h). */
#define _GNU_SOURCE /* strerror_r returning the message */
#include "file_read.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/error.h"

dr_status dr_io_read_file(const char *format, const char *path, uint8_t **buf, size_t *len) {
    char e[128];
    *buf = NULL;
    *len = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return dr_fail(DR_ERR_IO, "%s: read %s: cannot open: %s", format, path,
                       strerror_r(errno, e, sizeof e));
    uint8_t *data = NULL;
    size_t n = 0, cap = 0;
    dr_status st = DR_OK;
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 16;
            uint8_t *nb = realloc(data, ncap);
            if (!nb) {
                st = dr_fail(DR_ERR_OOM, "%s: read %s: out of memory", format, path);
                break;
            }
            data = nb, cap = ncap;
        }
        size_t got = fread(data + n, 1, cap - n, fp);
        n += got;
        if (got == 0) {
            if (ferror(fp))
                st = dr_fail(DR_ERR_IO, "%s: read %s: read failed: %s", format, path,
                             strerror_r(errno, e, sizeof e));
            break;
        }
    }
    fclose(fp);
    if (st != DR_OK) {
        free(data);
        return st;
    }
    *buf = data;
    *len = n;
    return DR_OK;
}
