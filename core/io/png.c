/*
 * PNG images in and out of tensors (libpng's classic API).
 *
 * Writing: a CPU tensor [C, H, W] (C = 1 gray, 3 RGB, 4 RGBA) becomes an 8-bit PNG.
 * Float values are clamped to [0, 1] and rounded as diffusers' numpy_to_pil does,
 * `(images * 255).round().astype("uint8")`: x * 255 in float32, then round half to
 * even (numpy's round); NaN writes 0. u8 tensors are written as they are. The file
 * appears atomically: a temporary file beside it, fsync, rename (as safetensors).
 *
 * Reading: any PNG (bit depths 1-16, gray, gray+alpha, palette, RGB, RGBA, tRNS,
 * interlaced) becomes [channels, H, W]:
 *   channels 3: RGB; alpha dropped (as PIL's convert("RGB"): no compositing);
 *   channels 4: RGBA; alpha 255 (1.0) when the file has none, tRNS expanded;
 *   channels 1: the file's gray, or for colour files PIL's convert("L"):
 *               L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16 on 8-bit values.
 * dtype u8 gives bytes; 16-bit samples keep their high byte (PIL's "RGB;16B").
 * dtype float32 gives v / 255, or v / 65535 for 16-bit files (full precision).
 * Gamma, iCCP and sRGB chunks are ignored, as PIL ignores them.
 *
 * Errors: libpng reports by longjmp; every libpng call runs inside run_decode /
 * run_encode, after their setjmp, and all allocations hang off a job struct that
 * the caller frees, so an error leaks nothing. Warnings are dropped (core prints
 * nothing). Every message names the file: "png: read a.png: truncated file ...".
 */
#define _GNU_SOURCE /* GNU strerror_r */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file_read.h"
#include "../tensor/tensor_internal.h"

enum { MAX_SIDE = 1 << 15, TEMP_TRIES = 100 };
/* 2^28 pixels: 1 GiB of float32 RGB; beyond that an image is surely a mistake. */
static const int64_t MAX_PIXELS = (int64_t)1 << 28;

/* ---- reading -------------------------------------------------------------- */

typedef struct decode_job {
    const uint8_t *data;
    size_t size, pos;
    const char *name;
    int32_t channels, dtype;
    char msg[200];
    png_structp png;
    png_infop info;
    uint8_t *pixels;   /* H rows of rowbytes */
    uint8_t **rows;
    int64_t h, w;      /* what run_decode found */
    int src_ch, depth16;
    dr_tensor *out;
} decode_job;

static void on_error(png_structp png, png_const_charp msg) {
    char *buf = png_get_error_ptr(png);
    snprintf(buf, 200, "%s", msg);
    png_longjmp(png, 1);
}
static void on_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static void read_bytes(png_structp png, png_bytep dst, size_t n) {
    decode_job *j = png_get_io_ptr(png);
    if (n > j->size - j->pos) png_error(png, "truncated file (it ends inside a chunk)");
    memcpy(dst, j->data + j->pos, n);
    j->pos += n;
}

static uint8_t luma(const uint8_t *p) {
    return (uint8_t)((19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 0x8000u) >> 16);
}

/* Converts the decoded rows (8 or 16 bits, 1-4 channels as libpng left them) to
 * the output tensor. src_ch: channels per pixel in the rows. */
static void convert(decode_job *j, int64_t h, int64_t w, int src_ch, int depth16) {
    int32_t oc = j->channels;
    int64_t plane = h * w;
    float *f = j->dtype == DR_F32 ? dr_tensor_data(j->out) : NULL;
    uint8_t *u = j->dtype == DR_U8 ? dr_tensor_data(j->out) : NULL;
    int has_color = src_ch >= 3, has_alpha = src_ch == 2 || src_ch == 4;
    for (int64_t y = 0; y < h; y++) {
        const uint8_t *row = j->rows[y];
        for (int64_t x = 0; x < w; x++) {
            uint16_t v[4]; /* sample values at the file's depth */
            uint8_t hi[4]; /* their high bytes */
            for (int c = 0; c < src_ch; c++) {
                if (depth16) {
                    const uint8_t *s = row + (x * src_ch + c) * 2;
                    v[c] = (uint16_t)(s[0] << 8 | s[1]);
                    hi[c] = s[0];
                } else {
                    v[c] = hi[c] = row[x * src_ch + c];
                }
            }
            uint16_t rgba[4];
            uint8_t rgba8[4];
            if (has_color) {
                for (int c = 0; c < 3; c++) rgba[c] = v[c], rgba8[c] = hi[c];
            } else {
                for (int c = 0; c < 3; c++) rgba[c] = v[0], rgba8[c] = hi[0];
            }
            uint16_t full = depth16 ? 65535 : 255;
            rgba[3] = has_alpha ? v[src_ch - 1] : full;
            rgba8[3] = has_alpha ? hi[src_ch - 1] : 255;
            if (oc == 1) {
                if (!has_color) {
                    rgba[0] = v[0];
                } else { /* PIL's L from 8-bit RGB */
                    rgba8[0] = luma(rgba8);
                    rgba[0] = depth16 ? (uint16_t)(rgba8[0] * 257) : rgba8[0];
                }
            }
            int64_t at = y * w + x;
            for (int c = 0; c < oc; c++) {
                if (u) u[c * plane + at] = oc == 1 && has_color ? rgba8[0] : rgba8[c];
                else f[c * plane + at] = (float)rgba[c] / (float)full;
            }
        }
    }
}

/* Everything that may longjmp. Returns 0, or 1 with j->msg set. */
static int run_decode(decode_job *j) {
    if (setjmp(png_jmpbuf(j->png))) return 1;
    png_set_read_fn(j->png, j, read_bytes);
    png_set_user_limits(j->png, MAX_SIDE, MAX_SIDE);
    png_set_chunk_malloc_max(j->png, 64u << 20);
    png_read_info(j->png, j->info);
    png_uint_32 w = png_get_image_width(j->png, j->info);
    png_uint_32 h = png_get_image_height(j->png, j->info);
    int color = png_get_color_type(j->png, j->info);
    int depth = png_get_bit_depth(j->png, j->info);
    if ((int64_t)w * h > MAX_PIXELS) png_error(j->png, "image too large (more than 2^28 pixels)");

    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(j->png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(j->png);
    if (png_get_valid(j->png, j->info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(j->png);
    png_set_interlace_handling(j->png);
    png_read_update_info(j->png, j->info);

    int src_ch = png_get_channels(j->png, j->info);
    int depth16 = png_get_bit_depth(j->png, j->info) == 16;
    size_t rowbytes = png_get_rowbytes(j->png, j->info);
    if (src_ch < 1 || src_ch > 4 || rowbytes != (size_t)w * src_ch * (depth16 ? 2 : 1))
        png_error(j->png, "unexpected pixel layout after conversion");

    j->pixels = malloc(rowbytes * h + 1);
    j->rows = malloc(sizeof *j->rows * (h + 1));
    if (!j->pixels || !j->rows) png_error(j->png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) j->rows[y] = j->pixels + rowbytes * y;
    png_read_image(j->png, j->rows);
    png_read_end(j->png, NULL); /* checks the rest of the file up to IEND */

    j->h = h, j->w = w, j->src_ch = src_ch, j->depth16 = depth16;
    return 0;
}

dr_status dr_png_decode(const uint8_t *data, size_t size, const char *name, int32_t channels,
                        int32_t dtype, dr_tensor **out) {
    if (!name) name = "<memory>";
    DR_TRY(dr_check_out(out, "png: read"));
    if (channels != 1 && channels != 3 && channels != 4)
        return dr_fail(DR_ERR_ARG, "png: read %s: channels must be 1, 3 or 4, got %d", name,
                       (int)channels);
    if (dtype != DR_F32 && dtype != DR_U8)
        return dr_fail(DR_ERR_DTYPE, "png: read %s: dtype must be float32 or uint8, got %s", name,
                       dr_dtype_name(dtype));
    if (!data && size) return dr_fail(DR_ERR_ARG, "png: read %s: data is NULL", name);
    if (size < 8 || png_sig_cmp(data, 0, 8) != 0)
        return dr_fail(DR_ERR_IO, "png: read %s: not a PNG file (bad signature)", name);

    decode_job j = {.data = data, .size = size, .name = name, .channels = channels,
                    .dtype = dtype};
    j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, j.msg, on_error, on_warning);
    if (j.png) j.info = png_create_info_struct(j.png);
    if (!j.png || !j.info) {
        png_destroy_read_struct(j.png ? &j.png : NULL, NULL, NULL);
        return dr_fail(DR_ERR_OOM, "png: read %s: out of memory", name);
    }
    int failed = run_decode(&j);
    png_destroy_read_struct(&j.png, &j.info, NULL);
    dr_status st = DR_OK;
    if (failed) {
        st = dr_fail(DR_ERR_IO, "png: read %s: %s", name, j.msg);
    } else {
        int64_t sizes[3] = {channels, j.h, j.w};
        st = dr_tensor_new(sizes, 3, dtype, dr_cpu(), "png: read", &j.out);
        if (st == DR_OK) convert(&j, j.h, j.w, j.src_ch, j.depth16);
    }
    free(j.pixels);
    free(j.rows);
    if (st == DR_OK) *out = j.out;
    return st;
}

dr_status dr_png_read(const char *path, int32_t channels, int32_t dtype, dr_tensor **out) {
    if (!path) return dr_fail(DR_ERR_ARG, "png: read: path is NULL");
    DR_TRY(dr_check_out(out, "png: read"));
    uint8_t *buf = NULL;
    size_t len = 0;
    DR_TRY(dr_io_read_file("png", path, &buf, &len));
    dr_status st = dr_png_decode(buf, len, path, channels, dtype, out);
    free(buf);
    return st;
}

/* ---- writing -------------------------------------------------------------- */

typedef struct encode_job {
    FILE *fp;
    char msg[200];
    png_structp png;
    png_infop info;
    const uint8_t *bytes; /* [H, W, C] interleaved */
    int64_t c, h, w;
} encode_job;

static int run_encode(encode_job *j) {
    if (setjmp(png_jmpbuf(j->png))) return 1;
    static const int color_of[5] = {0, PNG_COLOR_TYPE_GRAY, 0, PNG_COLOR_TYPE_RGB,
                                    PNG_COLOR_TYPE_RGB_ALPHA};
    png_init_io(j->png, j->fp);
    png_set_IHDR(j->png, j->info, (png_uint_32)j->w, (png_uint_32)j->h, 8, color_of[j->c],
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(j->png, j->info);
    for (int64_t y = 0; y < j->h; y++)
        png_write_row(j->png, (png_const_bytep)(j->bytes + y * j->w * j->c));
    png_write_end(j->png, NULL);
    return 0;
}

/* numpy's (x * 255).round() on float32, clamped: round half to even. */
static uint8_t to_byte(float x) {
    if (!(x > 0.0f)) return 0; /* also NaN */
    if (x >= 1.0f) return 255;
    return (uint8_t)nearbyintf(x * 255.0f);
}

static int open_temp(const char *path, char *tmp, size_t cap) {
    static unsigned counter;
    for (int tries = 0; tries < TEMP_TRIES; tries++) {
        unsigned k = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
        snprintf(tmp, cap, "%s.tmp.%ld.%u", path, (long)getpid(), k);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

/* Interleaves image [C, H, W] (float or u8, any strides) into [H, W, C] bytes. */
static dr_status interleave(const char *path, const dr_tensor *image, uint8_t **out) {
    const dr_tensor *src = image;
    dr_tensor *tmp = NULL;
    int32_t dt = image->scalar_type;
    if (dt != DR_U8 && dt != DR_F32) {
        if (!dr_dtype_is_float(dt))
            return dr_fail(DR_ERR_DTYPE, "png: write %s: image must be float (values in [0, 1]) "
                           "or uint8, got %s", path, dr_dtype_name(dt));
        DR_TRY(dr_tensor_to_dtype(image, DR_F32, &tmp));
        src = tmp;
    } else if (!dr_tensor_is_contiguous(image)) {
        DR_TRY(dr_tensor_contiguous(image, &tmp));
        src = tmp;
    }
    if (!dr_tensor_is_contiguous(src)) { /* to_dtype keeps the layout of a view */
        dr_tensor *c;
        dr_status st = dr_tensor_contiguous(src, &c);
        dr_tensor_release(tmp);
        DR_TRY(st);
        src = tmp = c;
    }
    int64_t c = src->sizes[0], plane = src->sizes[1] * src->sizes[2];
    uint8_t *bytes = malloc((size_t)(c * plane) + 1);
    if (!bytes) {
        dr_tensor_release(tmp);
        return dr_fail(DR_ERR_OOM, "png: write %s: out of memory", path);
    }
    if (src->scalar_type == DR_U8) {
        const uint8_t *p = dr_tensor_data(src);
        for (int64_t k = 0; k < c; k++)
            for (int64_t i = 0; i < plane; i++) bytes[i * c + k] = p[k * plane + i];
    } else {
        const float *p = dr_tensor_data(src);
        for (int64_t k = 0; k < c; k++)
            for (int64_t i = 0; i < plane; i++) bytes[i * c + k] = to_byte(p[k * plane + i]);
    }
    dr_tensor_release(tmp);
    *out = bytes;
    return DR_OK;
}

dr_status dr_png_write(const char *path, const dr_tensor *image) {
    char e[128];
    if (!path) return dr_fail(DR_ERR_ARG, "png: write: path is NULL");
    DR_TRY(dr_check_tensor(image, "png: write", "image"));
    if (image->device.type != DR_CPU)
        return dr_fail(DR_ERR_DEVICE, "png: write %s: image must be on the cpu, got %s", path,
                       dr_device_str(image->device));
    int64_t c = image->ndim == 3 ? image->sizes[0] : 0;
    if (image->ndim != 3 || (c != 1 && c != 3 && c != 4))
        return dr_fail(DR_ERR_SHAPE, "png: write %s: expected an image [C, H, W] with C = 1, 3 "
                       "or 4, got %s", path, dr_shape_str(image));
    int64_t h = image->sizes[1], w = image->sizes[2];
    if (h < 1 || w < 1 || h > MAX_SIDE || w > MAX_SIDE)
        return dr_fail(DR_ERR_SHAPE, "png: write %s: height and width must be in [1, %d], got %s",
                       path, MAX_SIDE, dr_shape_str(image));

    encode_job j = {.c = c, .h = h, .w = w};
    uint8_t *bytes = NULL;
    DR_TRY(interleave(path, image, &bytes));
    j.bytes = bytes;

    size_t cap = strlen(path) + 64;
    char *tmp = malloc(cap);
    int fd = tmp ? open_temp(path, tmp, cap) : -1;
    if (fd < 0) {
        dr_status st = tmp ? dr_fail(DR_ERR_IO, "png: write %s: cannot create a temporary file "
                                     "beside it: %s", path, strerror_r(errno, e, sizeof e))
                           : dr_fail(DR_ERR_OOM, "png: write %s: out of memory", path);
        free(tmp);
        free(bytes);
        return st;
    }
    dr_status st = DR_OK;
    j.fp = fdopen(fd, "wb");
    if (!j.fp) {
        close(fd);
        st = dr_fail(DR_ERR_IO, "png: write %s: %s", path, strerror_r(errno, e, sizeof e));
    }
    if (st == DR_OK) {
        j.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, j.msg, on_error, on_warning);
        if (j.png) j.info = png_create_info_struct(j.png);
        if (!j.png || !j.info) st = dr_fail(DR_ERR_OOM, "png: write %s: out of memory", path);
        else if (run_encode(&j))
            st = dr_fail(DR_ERR_IO, "png: write %s: %s", path, j.msg);
        png_destroy_write_struct(j.png ? &j.png : NULL, j.info ? &j.info : NULL);
    }
    if (j.fp) {
        if (st == DR_OK && (fflush(j.fp) != 0 || fsync(fileno(j.fp)) != 0))
            st = dr_fail(DR_ERR_IO, "png: write %s: %s", path, strerror_r(errno, e, sizeof e));
        if (fclose(j.fp) != 0 && st == DR_OK)
            st = dr_fail(DR_ERR_IO, "png: write %s: close failed: %s", path,
                         strerror_r(errno, e, sizeof e));
    }
    if (st == DR_OK && rename(tmp, path) != 0)
        st = dr_fail(DR_ERR_IO, "png: write %s: cannot rename the temporary file into place: %s",
                     path, strerror_r(errno, e, sizeof e));
    if (st != DR_OK) unlink(tmp);
    free(tmp);
    free(bytes);
    return st;
}
