/* libFuzzer target: any bytes as a PNG file (core/io/png.c, dr_png_decode).
 *
 * Every input either fails with DR_ERR_IO and a message naming the input, or
 * decodes; then the properties: the 8-bit RGBA reading and the float reading agree
 * (float = byte / 255 for 8-bit files, its high byte for 16-bit ones), and the image
 * survives write -> read byte for byte. Inputs whose IHDR claims more than 2^20
 * pixels are skipped (the decoder allocates the image before the data proves it).
 * Any violated property traps, which libFuzzer reports as a crash. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diffrl.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The IHDR chunk's data (width, height, depth, ...) as libpng finds it: walking the
 * chunks from byte 8 by their length fields (libpng accepts unknown chunks before
 * it, so it is not always at byte 16; the bytes "IHDR" inside another chunk's data
 * are not it: a crash found by this target in CI was the harness taking such bytes
 * for the header and expecting 8-bit samples from a 16-bit file). */
static const uint8_t *find_ihdr(const uint8_t *data, size_t size) {
    size_t i = 8;
    while (i + 8 + 13 <= size) {
        uint32_t len = be32(data + i);
        if (memcmp(data + i + 4, "IHDR", 4) == 0) return data + i + 8;
        if (len > 0x7fffffffu || len > size - i - 12) return NULL; /* libpng stops */
        i += 12 + (size_t)len;
    }
    return NULL;
}

/* Any bytes "IHDR" followed by a width and height over 2^20 pixels: such inputs are
 * skipped even where the chunk walk above disagrees with libpng's reading. */
static int claims_large(const uint8_t *data, size_t size) {
    for (size_t i = 8; i + 4 + 8 <= size; i++)
        if (memcmp(data + i, "IHDR", 4) == 0 &&
            (uint64_t)be32(data + i + 4) * be32(data + i + 8) > (1u << 20))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (claims_large(data, size)) return 0;
    const uint8_t *ihdr = find_ihdr(data, size);
    uint8_t *copy = malloc(size ? size : 1); /* exact size: ASan sees over-reads */
    if (!copy) return 0;
    memcpy(copy, data, size);

    dr_tensor *bytes = NULL, *floats = NULL;
    dr_status st = dr_png_decode(copy, size, "fuzz.png", 4, DR_U8, &bytes);
    if (st != DR_OK) {
        REQUIRE(st == DR_ERR_IO && bytes == NULL);
        REQUIRE(strstr(dr_last_error(), "png: read fuzz.png: ") == dr_last_error());
        free(copy);
        return 0;
    }
    REQUIRE(dr_png_decode(copy, size, "fuzz.png", 4, DR_F32, &floats) == DR_OK);
    int depth16 = ihdr && ihdr[8] == 16;
    int64_t n = dr_tensor_numel(bytes);
    const uint8_t *b = dr_tensor_data(bytes);
    const float *f = dr_tensor_data(floats);
    for (int64_t i = 0; i < n; i++) {
        REQUIRE(f[i] >= 0.0f && f[i] <= 1.0f);
        if (!depth16) REQUIRE(f[i] == (float)b[i] / 255.0f);
        else REQUIRE((uint8_t)(lrintf(f[i] * 65535.0f) >> 8) == b[i]);
    }

    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_png.%ld.png", (long)getpid());
    REQUIRE(dr_png_write(path, bytes) == DR_OK);
    dr_tensor *back = NULL;
    REQUIRE(dr_png_read(path, 4, DR_U8, &back) == DR_OK);
    REQUIRE(dr_tensor_numel(back) == n);
    REQUIRE(memcmp(dr_tensor_data(back), b, (size_t)n) == 0);
    unlink(path);

    dr_tensor_release(back);
    dr_tensor_release(floats);
    dr_tensor_release(bytes);
    free(copy);
    return 0;
}
