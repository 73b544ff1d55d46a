/*
 * JPEG images in and out of tensors (libjpeg-turbo's libjpeg API), in memory.
 *
 * Encoding: a CPU tensor [C, H, W] (C = 1 gray, 3 RGB) becomes baseline JPEG bytes
 * with the settings PIL's `Image.save(buf, format="JPEG", quality=q)` uses:
 * jpeg_set_defaults (JFIF header, density 1:1, 4:2:0 chroma subsampling for RGB,
 * standard Huffman tables, no optimisation, ISLOW DCT), then jpeg_set_quality(q,
 * force_baseline). So the sizes are PIL's, which DDPO's JPEG rewards count
 * (ddpo_pytorch/rewards.py). Float values become bytes by the rule png.c uses
 * (diffusers' numpy_to_pil and DDPO's reward): clamp to [0, 1], x * 255 in float32
 * rounded half to even; NaN gives 0. uint8 tensors are taken as they are.
 *
 * Decoding: any JPEG libjpeg reads (baseline, progressive, arithmetic, gray, YCbCr,
 * RGB, CMYK/YCCK) becomes [channels, H, W], channels 3 (RGB) or 1:
 *   colour files: libjpeg's RGB (ISLOW IDCT, fancy upsampling: PIL's defaults);
 *   CMYK / YCCK files: inverted (PIL always assumes Adobe's polarity, "CMYK;I"),
 *     then PIL's cmyk2rgb: r = (255 - k) - c (255 - k) / 255, rounded as PIL;
 *   channels 1: the file's gray, or PIL's convert("L") of the RGB:
 *     L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16;
 *   gray files read as 3 channels repeat the gray.
 * dtype u8 gives bytes, float32 gives v / 255.
 *
 * Errors: libjpeg reports by calling error_exit, which longjmps back to
 * run_decode / run_encode; every allocation hangs off a job struct the caller frees.
 * Warnings that mean the pixels are wrong (truncated data, bad Huffman codes, ...)
 * are errors too: a training image decoded half gray is worse than a failure.
 * Progressive files are limited to MAX_SCANS scans (libjpeg-turbo's tjLimitScans
 * advice: crafted files with thousands of scans take minutes to decode).
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#include "file_read.h"
#include "../tensor/tensor_internal.h"

enum { MAX_SIDE = JPEG_MAX_DIMENSION, MAX_SCANS = 500 };
/* 2^28 pixels: as png.c, beyond that an image is surely a mistake. */
static const int64_t MAX_PIXELS = (int64_t)1 << 28;

/* ---- errors ---------------------------------------------------------------- */

typedef struct error_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} error_mgr;

static void on_error(j_common_ptr cinfo) {
    error_mgr *e = (error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jump, 1);
}

/* Warnings (level -1) that mean the decoded pixels would be wrong become errors;
 * the rest (extraneous bytes between markers, unknown JFIF revisions, bad ICC
 * markers) are dropped, as trace messages are: core prints nothing. */
static void on_message(j_common_ptr cinfo, int level) {
    if (level != -1) return;
    switch (cinfo->err->msg_code) {
    case JWRN_ARITH_BAD_CODE:
    case JWRN_BOGUS_PROGRESSION:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_JPEG_EOF:
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
        on_error(cinfo);
        break;
    default:
        break;
    }
}

static void init_errors(error_mgr *e) {
    jpeg_std_error(&e->pub);
    e->pub.error_exit = on_error;
    e->pub.emit_message = on_message;
    e->msg[0] = '\0';
}

/* ---- reading -------------------------------------------------------------- */

typedef struct decode_job {
    struct jpeg_decompress_struct cinfo;
    error_mgr err;
    struct jpeg_progress_mgr progress;
    const uint8_t *data;
    size_t size;
    int32_t channels, dtype;
    uint8_t *pixels; /* H rows of W * src_ch bytes */
    int64_t h, w;
    int src_ch;
} decode_job;

static void on_progress(j_common_ptr common) {
    j_decompress_ptr cinfo = (j_decompress_ptr)common;
    if (cinfo->is_decompressor && cinfo->progressive_mode &&
        cinfo->input_scan_number > MAX_SCANS) {
        snprintf(((error_mgr *)cinfo->err)->msg, JMSG_LENGTH_MAX,
                 "more than %d progressive scans (a crafted or broken file)", MAX_SCANS);
        longjmp(((error_mgr *)cinfo->err)->jump, 1);
    }
}

/* Everything that may longjmp. Returns 0, or 1 with j->err.msg set. */
static int run_decode(decode_job *j) {
    if (setjmp(j->err.jump)) return 1;
    struct jpeg_decompress_struct *ci = &j->cinfo;
    jpeg_create_decompress(ci);
    j->progress.progress_monitor = on_progress;
    ci->progress = &j->progress;
    jpeg_mem_src(ci, j->data, (unsigned long)j->size);
    jpeg_read_header(ci, TRUE);
    if ((int64_t)ci->image_width * ci->image_height > MAX_PIXELS) {
        snprintf(j->err.msg, sizeof j->err.msg, "image too large (%ux%u, more than 2^28 pixels)",
                 ci->image_width, ci->image_height);
        return 1;
    }
    switch (ci->jpeg_color_space) {
    case JCS_GRAYSCALE: ci->out_color_space = JCS_GRAYSCALE; break;
    case JCS_CMYK:
    case JCS_YCCK: ci->out_color_space = JCS_CMYK; break;
    default: ci->out_color_space = JCS_RGB; break;
    }
    jpeg_start_decompress(ci);
    int src_ch = ci->output_components;
    if ((src_ch != 1 && src_ch != 3 && src_ch != 4) || ci->output_width != ci->image_width ||
        ci->output_height != ci->image_height) {
        snprintf(j->err.msg, sizeof j->err.msg, "unexpected pixel layout (%d components)", src_ch);
        return 1;
    }
    size_t row = (size_t)ci->output_width * src_ch;
    j->pixels = malloc(row * ci->output_height + 1);
    if (!j->pixels) {
        snprintf(j->err.msg, sizeof j->err.msg, "out of memory");
        return 1;
    }
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW r = j->pixels + row * ci->output_scanline;
        jpeg_read_scanlines(ci, &r, 1);
    }
    jpeg_finish_decompress(ci); /* reads up to EOI: a missing end is a truncation */
    j->h = ci->output_height, j->w = ci->output_width, j->src_ch = src_ch;
    return 0;
}

static uint8_t luma(const uint8_t *p) {
    return (uint8_t)((19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 0x8000u) >> 16);
}

/* PIL's cmyk2rgb: r = 255 - min(255, c + k) written as CLIP8(nk - c * nk / 255),
 * nk = 255 - k, with MULDIV255(a, b) = ((a * b + 128) + ((a * b + 128) >> 8)) >> 8. */
static uint8_t cmyk_channel(unsigned c, unsigned k) {
    unsigned nk = 255 - k, t = c * nk + 128;
    int v = (int)nk - (int)((t + (t >> 8)) >> 8);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static void convert(decode_job *j, dr_tensor *out) {
    int64_t plane = j->h * j->w;
    float *f = j->dtype == DR_F32 ? dr_tensor_data(out) : NULL;
    uint8_t *u = j->dtype == DR_U8 ? dr_tensor_data(out) : NULL;
    for (int64_t i = 0; i < plane; i++) {
        const uint8_t *p = j->pixels + i * j->src_ch;
        uint8_t rgb[3];
        if (j->src_ch == 1) {
            rgb[0] = rgb[1] = rgb[2] = p[0];
        } else if (j->src_ch == 3) {
            rgb[0] = p[0], rgb[1] = p[1], rgb[2] = p[2];
        } else {
            uint8_t q[4];
            for (int c = 0; c < 4; c++) q[c] = (uint8_t)(255 - p[c]);
            for (int c = 0; c < 3; c++) rgb[c] = cmyk_channel(q[c], q[3]);
        }
        if (j->channels == 1) rgb[0] = j->src_ch == 1 ? p[0] : luma(rgb);
        for (int c = 0; c < j->channels; c++) {
            if (u) u[c * plane + i] = rgb[c];
            else f[c * plane + i] = (float)rgb[c] / 255.0f;
        }
    }
}

dr_status dr_jpeg_decode(const uint8_t *data, size_t size, const char *name, int32_t channels,
                         int32_t dtype, dr_tensor **out) {
    if (!name) name = "<memory>";
    DR_TRY(dr_check_out(out, "jpeg: read"));
    if (channels != 1 && channels != 3)
        return dr_fail(DR_ERR_ARG, "jpeg: read %s: channels must be 1 or 3, got %d", name,
                       (int)channels);
    if (dtype != DR_F32 && dtype != DR_U8)
        return dr_fail(DR_ERR_DTYPE, "jpeg: read %s: dtype must be float32 or uint8, got %s",
                       name, dr_dtype_name(dtype));
    if (!data && size) return dr_fail(DR_ERR_ARG, "jpeg: read %s: data is NULL", name);
    if (size < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF)
        return dr_fail(DR_ERR_IO, "jpeg: read %s: not a JPEG file (no SOI marker)", name);
    if (size > (size_t)(unsigned long)-1)
        return dr_fail(DR_ERR_IO, "jpeg: read %s: file too large", name);

    decode_job *j = calloc(1, sizeof *j);
    if (!j) return dr_fail(DR_ERR_OOM, "jpeg: read %s: out of memory", name);
    j->data = data, j->size = size, j->channels = channels, j->dtype = dtype;
    init_errors(&j->err);
    j->cinfo.err = &j->err.pub;
    int failed = run_decode(j);
    jpeg_destroy_decompress(&j->cinfo);
    dr_status st = DR_OK;
    dr_tensor *t = NULL;
    if (failed) {
        st = dr_fail(DR_ERR_IO, "jpeg: read %s: %s", name, j->err.msg);
    } else {
        int64_t sizes[3] = {channels, j->h, j->w};
        st = dr_tensor_new(sizes, 3, dtype, dr_cpu(), "jpeg: read", &t);
        if (st == DR_OK) convert(j, t);
    }
    free(j->pixels);
    free(j);
    if (st == DR_OK) *out = t;
    return st;
}

dr_status dr_jpeg_read(const char *path, int32_t channels, int32_t dtype, dr_tensor **out) {
    if (!path) return dr_fail(DR_ERR_ARG, "jpeg: read: path is NULL");
    DR_TRY(dr_check_out(out, "jpeg: read"));
    uint8_t *buf = NULL;
    size_t len = 0;
    DR_TRY(dr_io_read_file("jpeg", path, &buf, &len));
    dr_status st = dr_jpeg_decode(buf, len, path, channels, dtype, out);
    free(buf);
    return st;
}

/* ---- writing -------------------------------------------------------------- */

/* A growing malloc'd buffer as the destination (jpeg_mem_dest would do, but after
 * an error its buffer may already have been replaced and freed inside libjpeg). */
typedef struct buffer_dest {
    struct jpeg_destination_mgr pub;
    uint8_t *data;
    size_t cap, len;
} buffer_dest;

typedef struct encode_job {
    struct jpeg_compress_struct cinfo;
    error_mgr err;
    buffer_dest dest;
    const uint8_t *bytes; /* [H, W, C] interleaved */
    int64_t c, h, w;
    int quality;
} encode_job;

static void dest_init(j_compress_ptr cinfo) {
    buffer_dest *d = (buffer_dest *)cinfo->dest;
    d->pub.next_output_byte = d->data;
    d->pub.free_in_buffer = d->cap;
}

static boolean dest_grow(j_compress_ptr cinfo) {
    buffer_dest *d = (buffer_dest *)cinfo->dest;
    size_t ncap = d->cap * 2;
    uint8_t *nb = realloc(d->data, ncap);
    if (!nb) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 99);
    d->len = d->cap; /* libjpeg calls this only when the buffer is full */
    d->data = nb, d->cap = ncap;
    d->pub.next_output_byte = d->data + d->len;
    d->pub.free_in_buffer = d->cap - d->len;
    return TRUE;
}

static void dest_term(j_compress_ptr cinfo) {
    buffer_dest *d = (buffer_dest *)cinfo->dest;
    d->len = d->cap - d->pub.free_in_buffer;
}

static int run_encode(encode_job *j) {
    if (setjmp(j->err.jump)) return 1;
    struct jpeg_compress_struct *ci = &j->cinfo;
    jpeg_create_compress(ci);
    j->dest.pub.init_destination = dest_init;
    j->dest.pub.empty_output_buffer = dest_grow;
    j->dest.pub.term_destination = dest_term;
    ci->dest = &j->dest.pub;
    ci->image_width = (JDIMENSION)j->w;
    ci->image_height = (JDIMENSION)j->h;
    ci->input_components = (int)j->c;
    ci->in_color_space = j->c == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(ci);
    jpeg_set_quality(ci, j->quality, TRUE);
    jpeg_start_compress(ci, TRUE);
    size_t row = (size_t)(j->w * j->c);
    while (ci->next_scanline < ci->image_height) {
        JSAMPROW r = (JSAMPROW)(j->bytes + row * ci->next_scanline);
        jpeg_write_scanlines(ci, &r, 1);
    }
    jpeg_finish_compress(ci);
    return 0;
}

/* numpy's (x * 255).round() on float32, clamped: round half to even (png.c's rule). */
static uint8_t to_byte(float x) {
    if (!(x > 0.0f)) return 0; /* also NaN */
    if (x >= 1.0f) return 255;
    return (uint8_t)nearbyintf(x * 255.0f);
}

/* Interleaves image [C, H, W] (float or u8, any strides) into [H, W, C] bytes. */
static dr_status interleave(const dr_tensor *image, uint8_t **out) {
    const dr_tensor *src = image;
    dr_tensor *tmp = NULL;
    int32_t dt = image->scalar_type;
    if (dt != DR_U8 && dt != DR_F32) {
        if (!dr_dtype_is_float(dt))
            return dr_fail(DR_ERR_DTYPE, "jpeg: encode: image must be float (values in [0, 1]) "
                           "or uint8, got %s", dr_dtype_name(dt));
        DR_TRY(dr_tensor_to_dtype(image, DR_F32, &tmp));
        src = tmp;
    }
    if (!dr_tensor_is_contiguous(src)) {
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
        return dr_fail(DR_ERR_OOM, "jpeg: encode: out of memory");
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

dr_status dr_jpeg_encode(const dr_tensor *image, int32_t quality, uint8_t **data, size_t *size) {
    if (!data || !size) return dr_fail(DR_ERR_ARG, "jpeg: encode: data and size must not be NULL");
    *data = NULL, *size = 0;
    DR_TRY(dr_check_tensor(image, "jpeg: encode", "image"));
    if (image->device.type != DR_CPU)
        return dr_fail(DR_ERR_DEVICE, "jpeg: encode: image must be on the cpu, got %s",
                       dr_device_str(image->device));
    int64_t c = image->ndim == 3 ? image->sizes[0] : 0;
    if (image->ndim != 3 || (c != 1 && c != 3))
        return dr_fail(DR_ERR_SHAPE, "jpeg: encode: expected an image [C, H, W] with C = 1 or 3, "
                       "got %s", dr_shape_str(image));
    int64_t h = image->sizes[1], w = image->sizes[2];
    if (h < 1 || w < 1 || h > MAX_SIDE || w > MAX_SIDE)
        return dr_fail(DR_ERR_SHAPE, "jpeg: encode: height and width must be in [1, %d], got %s",
                       MAX_SIDE, dr_shape_str(image));
    if (quality < 1 || quality > 100)
        return dr_fail(DR_ERR_ARG, "jpeg: encode: quality must be in [1, 100], got %d",
                       (int)quality);

    uint8_t *bytes = NULL;
    DR_TRY(interleave(image, &bytes));
    encode_job *j = calloc(1, sizeof *j);
    size_t cap = 4096 + (size_t)(c * h * w) / 4; /* most images fit the first guess */
    uint8_t *buf = j ? malloc(cap) : NULL;
    if (!buf) {
        free(j);
        free(bytes);
        return dr_fail(DR_ERR_OOM, "jpeg: encode: out of memory");
    }
    j->bytes = bytes, j->c = c, j->h = h, j->w = w, j->quality = quality;
    j->dest.data = buf, j->dest.cap = cap;
    init_errors(&j->err);
    j->cinfo.err = &j->err.pub;
    int failed = run_encode(j);
    jpeg_destroy_compress(&j->cinfo);
    dr_status st = DR_OK;
    if (failed) {
        st = dr_fail(DR_ERR_IO, "jpeg: encode: %s", j->err.msg);
        free(j->dest.data);
    } else {
        *data = j->dest.data;
        *size = j->dest.len;
    }
    free(bytes);
    free(j);
    return st;
}

void dr_jpeg_free(uint8_t *data) { free(data); }
