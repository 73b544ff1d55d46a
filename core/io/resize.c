/* Antialiased image resizing, Pillow's Image.resize(size, filter) (reducing_gap
 * None) on 8-bit images, bit for bit: Pillow's libImaging/Resample.c.
 *
 * Separable convolution, the horizontal pass first (into 8-bit rows), then the
 * vertical one. For output pixel x of an axis scaled in -> out:
 *   scale = in / out, fs = max(scale, 1), support = filter.support * fs
 *   center = (x + 0.5) * scale
 *   taps i in [xmin, xmax): xmin = int(center - support + 0.5) clamped to >= 0,
 *                           xmax = int(center + support + 0.5) clamped to <= in
 *   w_i = filter((i - center + 0.5) / fs), normalised to sum 1, then fixed point:
 *   k_i = int(w_i * 2^22 +- 0.5) (rounded away from zero), and
 *   out = clamp((2^21 + sum_i in_i * k_i) >> 22, 0, 255).
 * Widening the kernel by fs when shrinking is the antialiasing: every input pixel
 * contributes. Filters (Pillow's numbers): 1 lanczos (a = 3), 2 bilinear (triangle),
 * 3 bicubic (Keys, a = -0.5), 4 box, 5 hamming.
 *
 * dr_image_resize_crop is torchvision's Resize(size) + CenterCrop(size) on a PIL
 * image (diffusers' training scripts): the shorter side becomes `size`, the longer
 * int(size * long / short); the crop starts at round((side - size) / 2), Python's
 * round (half to even). Only the pixels inside the crop are computed: each output
 * pixel's taps do not depend on the others, so the crop of the full resize is the
 * same bytes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffrl.h"
#include "resize.h"
#include "../tensor/tensor_internal.h"
#include "../util/error.h"

enum { PRECISION_BITS = 32 - 8 - 2 };

static double bilinear(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double bicubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double box(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos(double x) { return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0; }

static double hamming(double x) {
    if (x < 0.0) x = -x;
    if (x == 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    x = x * M_PI;
    return sin(x) / x * (0.54 + 0.46 * cos(x));
}

typedef struct {
    double (*fn)(double);
    double support;
} filter_def;

static const filter_def FILTERS[6] = {
    {NULL, 0}, {lanczos, 3.0}, {bilinear, 1.0}, {bicubic, 2.0}, {box, 0.5}, {hamming, 1.0},
};

const char *dr_resize_filter_check(int32_t filter) {
    return filter >= 1 && filter <= 5 ? NULL
                                      : "filter must be 1 (lanczos), 2 (bilinear), 3 (bicubic), 4 (box) or 5 (hamming)";
}

/* Fixed-point taps of output pixels [first, first + count) of an axis in -> out:
 * bounds[2k] = first input index, bounds[2k + 1] = number of taps, kk[k * ksize ...]. */
typedef struct {
    int ksize;
    int *bounds;
    int32_t *kk;
} taps;

static int make_taps(int in, int out, int first, int count, const filter_def *f, taps *t) {
    double scale = (double)in / out, fs = scale < 1.0 ? 1.0 : scale;
    double support = f->support * fs;
    int ksize = (int)ceil(support) * 2 + 1;
    double *w = malloc((size_t)ksize * sizeof *w);
    t->ksize = ksize;
    t->bounds = malloc((size_t)count * 2 * sizeof *t->bounds);
    t->kk = malloc((size_t)count * (size_t)ksize * sizeof *t->kk);
    if (!w || !t->bounds || !t->kk) {
        free(w);
        free(t->bounds);
        free(t->kk);
        t->bounds = NULL, t->kk = NULL;
        return -1;
    }
    for (int k = 0; k < count; k++) {
        double center = (first + k + 0.5) * scale, ww = 0.0, ss = 1.0 / fs;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            w[x] = f->fn((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *kk = t->kk + (size_t)k * ksize;
        for (int x = 0; x < ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            kk[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                          : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        t->bounds[2 * k] = xmin;
        t->bounds[2 * k + 1] = xmax;
    }
    free(w);
    return 0;
}

static void free_taps(taps *t) {
    free(t->bounds);
    free(t->kk);
}

static inline uint8_t clip8(int32_t ss) {
    if (ss < 0) return 0;
    ss >>= PRECISION_BITS;
    return ss > 255 ? 255 : (uint8_t)ss;
}

int dr_resize_window(const uint8_t *src, int c, int h, int w, int rw, int rh, int x0, int y0,
                     int ow, int oh, int32_t filter, uint8_t *dst_u8, float *dst_f32) {
    const filter_def *f = &FILTERS[filter];
    int need_h = rw != w, need_v = rh != h;
    taps th = {0}, tv = {0};
    int row0 = y0, rows = oh; /* input rows the vertical pass reads */
    if (need_v) {
        if (make_taps(h, rh, y0, oh, f, &tv) != 0) return -1;
        row0 = tv.bounds[0];
        rows = tv.bounds[2 * (oh - 1)] + tv.bounds[2 * (oh - 1) + 1] - row0;
    }
    if (need_h && make_taps(w, rw, x0, ow, f, &th) != 0) {
        free_taps(&tv);
        return -1;
    }
    uint8_t *tmp = malloc((size_t)rows * (size_t)ow);
    uint8_t *out = dst_u8 ? NULL : malloc((size_t)oh * (size_t)ow);
    if (!tmp || (!dst_u8 && !out)) {
        free(tmp);
        free(out);
        free_taps(&th);
        free_taps(&tv);
        return -1;
    }
    for (int ch = 0; ch < c; ch++) {
        const uint8_t *plane = src + (size_t)ch * h * w;
        /* horizontal: rows [row0, row0 + rows) -> tmp [rows, ow] */
        for (int y = 0; y < rows; y++) {
            const uint8_t *in = plane + (size_t)(row0 + y) * w;
            uint8_t *o = tmp + (size_t)y * ow;
            if (!need_h) {
                memcpy(o, in + x0, (size_t)ow);
                continue;
            }
            for (int x = 0; x < ow; x++) {
                const int32_t *k = th.kk + (size_t)x * th.ksize;
                const uint8_t *p = in + th.bounds[2 * x];
                int n = th.bounds[2 * x + 1];
                int32_t ss = 1 << (PRECISION_BITS - 1);
                for (int i = 0; i < n; i++) ss += p[i] * k[i];
                o[x] = clip8(ss);
            }
        }
        /* vertical: tmp -> [oh, ow] */
        uint8_t *o8 = dst_u8 ? dst_u8 + (size_t)ch * oh * ow : out;
        for (int y = 0; y < oh; y++) {
            uint8_t *o = o8 + (size_t)y * ow;
            if (!need_v) {
                memcpy(o, tmp + (size_t)y * ow, (size_t)ow);
                continue;
            }
            const int32_t *k = tv.kk + (size_t)y * tv.ksize;
            const uint8_t *p = tmp + (size_t)(tv.bounds[2 * y] - row0) * ow;
            int n = tv.bounds[2 * y + 1];
            for (int x = 0; x < ow; x++) {
                int32_t ss = 1 << (PRECISION_BITS - 1);
                for (int i = 0; i < n; i++) ss += p[(size_t)i * ow + x] * k[i];
                o[x] = clip8(ss);
            }
        }
        if (dst_f32) {
            float *of = dst_f32 + (size_t)ch * oh * ow;
            for (size_t i = 0; i < (size_t)oh * ow; i++) of[i] = (float)o8[i] / 255.0f;
        }
    }
    free(tmp);
    free(out);
    free_taps(&th);
    free_taps(&tv);
    return 0;
}

int dr_resize_crop_geometry(int w, int h, int size, int *rw, int *rh, int *x0, int *y0) {
    int w_short = w <= h;
    int64_t s = w_short ? w : h, l = w_short ? h : w;
    double long_side = (double)((int64_t)size * l) / (double)s;
    if (long_side > (double)(1 << 30)) return -1;
    int nl = (int)long_side;
    *rw = w_short ? size : nl;
    *rh = w_short ? nl : size;
    int dx = *rw - size, dy = *rh - size;
    /* Python's round((d) / 2.0): half to even */
    *x0 = dx / 2 + ((dx & 1) && ((dx / 2) & 1));
    *y0 = dy / 2 + ((dy & 1) && ((dy / 2) & 1));
    return 0;
}

static dr_status check_image(const dr_tensor *image, const char *op, dr_tensor **contig) {
    DR_TRY(dr_check_tensor(image, op, "image"));
    if (image->ndim != 3)
        return dr_fail(DR_ERR_SHAPE, "%s: image must be [C, H, W], got %s", op, dr_shape_str(image));
    if (image->scalar_type != DR_U8)
        return dr_fail(DR_ERR_DTYPE, "%s: image must be uint8 (bytes, as PIL's), got %s", op,
                       dr_dtype_name(image->scalar_type));
    if (image->device.type != DR_CPU)
        return dr_fail(DR_ERR_DEVICE, "%s: image must be on the cpu", op);
    if (image->sizes[1] < 1 || image->sizes[2] < 1 || image->sizes[0] < 1)
        return dr_fail(DR_ERR_SHAPE, "%s: image %s is empty", op, dr_shape_str(image));
    if (image->sizes[1] > 65535 || image->sizes[2] > 65535)
        return dr_fail(DR_ERR_SHAPE, "%s: image %s: sides must be at most 65535", op, dr_shape_str(image));
    return dr_tensor_contiguous(image, contig);
}

dr_status dr_image_resize(const dr_tensor *image, int32_t width, int32_t height, int32_t filter,
                          dr_tensor **out) {
    const char *op = "image_resize";
    DR_TRY(dr_check_out(out, op));
    const char *bad = dr_resize_filter_check(filter);
    if (bad) return dr_fail(DR_ERR_ARG, "%s: %s, got %d", op, bad, (int)filter);
    if (width < 1 || height < 1 || width > 65535 || height > 65535)
        return dr_fail(DR_ERR_ARG, "%s: size must be in [1, 65535], got %dx%d", op, (int)width, (int)height);
    dr_tensor *src = NULL;
    DR_TRY(check_image(image, op, &src));
    int c = (int)src->sizes[0], h = (int)src->sizes[1], w = (int)src->sizes[2];
    int64_t sizes[3] = {c, height, width};
    dr_tensor *t = NULL;
    dr_status st = dr_tensor_new(sizes, 3, DR_U8, dr_cpu(), op, &t);
    if (st == DR_OK && dr_resize_window(dr_tensor_data(src), c, h, w, width, height, 0, 0, width,
                                        height, filter, dr_tensor_data(t), NULL) != 0)
        st = dr_fail(DR_ERR_OOM, "%s: out of memory", op);
    dr_tensor_release(src);
    if (st == DR_OK) *out = t;
    else dr_tensor_release(t);
    return st;
}

dr_status dr_image_resize_crop(const dr_tensor *image, int32_t size, int32_t filter, int32_t dtype,
                               dr_tensor **out) {
    const char *op = "image_resize_crop";
    DR_TRY(dr_check_out(out, op));
    const char *bad = dr_resize_filter_check(filter);
    if (bad) return dr_fail(DR_ERR_ARG, "%s: %s, got %d", op, bad, (int)filter);
    if (size < 1 || size > 65535) return dr_fail(DR_ERR_ARG, "%s: size must be in [1, 65535], got %d", op, (int)size);
    if (dtype != DR_U8 && dtype != DR_F32)
        return dr_fail(DR_ERR_DTYPE, "%s: dtype must be uint8 or float32, got %s", op, dr_dtype_name(dtype));
    dr_tensor *src = NULL;
    DR_TRY(check_image(image, op, &src));
    int c = (int)src->sizes[0], h = (int)src->sizes[1], w = (int)src->sizes[2];
    int rw, rh, x0, y0;
    if (dr_resize_crop_geometry(w, h, size, &rw, &rh, &x0, &y0) != 0) {
        dr_tensor_release(src);
        return dr_fail(DR_ERR_SHAPE, "%s: image %s is too elongated to resize to %d on its shorter side",
                       op, dr_shape_str(image), (int)size);
    }
    int64_t sizes[3] = {c, size, size};
    dr_tensor *t = NULL;
    dr_status st = dr_tensor_new(sizes, 3, dtype, dr_cpu(), op, &t);
    if (st == DR_OK &&
        dr_resize_window(dr_tensor_data(src), c, h, w, rw, rh, x0, y0, size, size, filter,
                         dtype == DR_U8 ? dr_tensor_data(t) : NULL,
                         dtype == DR_F32 ? dr_tensor_data(t) : NULL) != 0)
        st = dr_fail(DR_ERR_OOM, "%s: out of memory", op);
    dr_tensor_release(src);
    if (st == DR_OK) *out = t;
    else dr_tensor_release(t);
    return st;
}
