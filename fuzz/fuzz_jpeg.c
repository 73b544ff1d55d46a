/* libFuzzer target: any bytes as a JPEG file (core/io/jpeg.c, dr_jpeg_decode).
 *
 * Every input either fails with DR_ERR_IO and a message naming the input, or
 * decodes; then the properties: the 8-bit and the float readings agree (float =
 * byte / 255), the 1-channel reading is PIL's convert("L") of the RGB one (or its
 * gray, for gray files: then R = G = B), and the image re-encodes to bytes that
 * decode to the same shape, with dr_jpeg_encode deterministic. Inputs whose first
 * SOF marker claims more than 2^20 pixels are skipped (the decoder allocates the
 * image before the data proves it). Any violated property traps, which libFuzzer
 * reports as a crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffrl.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

/* Width * height of the first SOFn segment found walking the markers, or 0. */
static uint64_t claimed_pixels(const uint8_t *d, size_t n) {
    size_t i = 2;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) return 0;
        uint8_t m = d[i + 1];
        if (m == 0xFF) { i++; continue; }
        size_t len = (size_t)d[i + 2] << 8 | d[i + 3];
        int sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
        if (sof && i + 9 <= n) return (uint64_t)(d[i + 5] << 8 | d[i + 6]) * (d[i + 7] << 8 | d[i + 8]);
        if (m == 0xDA) return 0;
        i += 2 + len;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (claimed_pixels(data, size) > (1u << 20)) return 0;
    uint8_t *copy = malloc(size ? size : 1); /* exact size: ASan sees over-reads */
    if (!copy) return 0;
    memcpy(copy, data, size);

    dr_tensor *bytes = NULL, *floats = NULL, *gray = NULL;
    dr_status st = dr_jpeg_decode(copy, size, "fuzz.jpg", 3, DR_U8, &bytes);
    if (st != DR_OK) {
        REQUIRE(st == DR_ERR_IO && bytes == NULL);
        REQUIRE(strstr(dr_last_error(), "jpeg: read fuzz.jpg: ") == dr_last_error());
        free(copy);
        return 0;
    }
    REQUIRE(dr_jpeg_decode(copy, size, "fuzz.jpg", 3, DR_F32, &floats) == DR_OK);
    REQUIRE(dr_jpeg_decode(copy, size, "fuzz.jpg", 1, DR_U8, &gray) == DR_OK);
    int64_t n = dr_tensor_numel(bytes), plane = n / 3;
    REQUIRE(dr_tensor_numel(gray) == plane);
    const uint8_t *b = dr_tensor_data(bytes), *g = dr_tensor_data(gray);
    const float *f = dr_tensor_data(floats);
    for (int64_t i = 0; i < n; i++) REQUIRE(f[i] == (float)b[i] / 255.0f);
    for (int64_t i = 0; i < plane; i++) {
        uint8_t r = b[i], gg = b[plane + i], bb = b[2 * plane + i];
        int is_gray = r == gg && gg == bb && g[i] == r;
        unsigned l = (19595u * r + 38470u * gg + 7471u * bb + 0x8000u) >> 16;
        REQUIRE(is_gray || g[i] == l);
    }

    uint8_t *enc = NULL, *enc2 = NULL;
    size_t esize = 0, esize2 = 0;
    REQUIRE(dr_jpeg_encode(bytes, 90, &enc, &esize) == DR_OK);
    REQUIRE(dr_jpeg_encode(floats, 90, &enc2, &esize2) == DR_OK);
    REQUIRE(esize == esize2 && memcmp(enc, enc2, esize) == 0);
    dr_tensor *back = NULL;
    REQUIRE(dr_jpeg_decode(enc, esize, "reencoded", 3, DR_U8, &back) == DR_OK);
    REQUIRE(dr_tensor_numel(back) == n);

    dr_tensor_release(back);
    dr_jpeg_free(enc);
    dr_jpeg_free(enc2);
    dr_tensor_release(gray);
    dr_tensor_release(floats);
    dr_tensor_release(bytes);
    free(copy);
    return 0;
}
