/* The image transform of CLIP and of the reward models built on it (OpenAI CLIP's
 * _transform, open_clip's image_transform(is_train=False), ImageReward's
 * _transform): Resize(S, BICUBIC) of the shorter side (the longer to
 * int(S * long / short)), CenterCrop(S) with torchvision's offsets
 * int(round((size - S) / 2)) (Python's round half to even), ToTensor, Normalize with
 * CLIP's mean / std.
 *
 * diffrl's images are float [B, 3, H, W] in [0, 1], so the resize is torch's
 * antialiased bicubic (F.interpolate(mode='bicubic', antialias=True,
 * align_corners=False): PIL's filter, a = -0.5, support 2 * scale when shrinking) on
 * float data, written as two matmuls with the resampling matrices (rows of the crop
 * only): out = R_h x R_w^T. PIL works on uint8 and rounds after each pass, so scores
 * differ slightly from the packages' on a PIL image (measured in
 * spec/imagereward_spec.lua and spec/clip_reward_spec.lua); the tensor path is exact
 * to 1e-6. transformers' CLIPImageProcessor crops at floor((size - S) / 2) instead:
 * one pixel apart when size - S is odd. Being matmuls, the preprocessing is
 * differentiable. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "../tensor/tensor_internal.h"

static const double CLIP_MEAN[3] = {0.48145466, 0.4578275, 0.40821073};
static const double CLIP_STD[3] = {0.26862954, 0.26130258, 0.27577711};

/* torch's antialiased bicubic kernel (upsample_bicubic2d_aa: PIL's, a = -0.5) */
static double aa_cubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Rows [first, first + count) of the [out, in] matrix resampling a length-`in` axis
 * to `out` samples (ATen's _compute_indices_weights_aa, align_corners False). */
static void resample_rows(int64_t in, int64_t out, int64_t first, int64_t count, double *w) {
    double scale = (double)in / (double)out;
    double support = scale >= 1.0 ? 2.0 * scale : 2.0;
    double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    memset(w, 0, (size_t)(count * in) * sizeof *w);
    for (int64_t r = 0; r < count; r++) {
        double center = scale * ((double)(first + r) + 0.5);
        int64_t lo = (int64_t)(center - support + 0.5), hi = (int64_t)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        double total = 0.0, *row = w + r * in;
        for (int64_t j = lo; j < hi; j++) total += row[j] = aa_cubic(((double)j - center + 0.5) * invscale);
        if (total != 0.0)
            for (int64_t j = lo; j < hi; j++) row[j] /= total;
    }
}

static dr_status resample_matrix(int64_t in, int64_t out, int64_t first, int64_t count, dr_device dev,
                                 dr_tensor **mat) {
    double *w = malloc((size_t)(count * in) * sizeof *w);
    if (!w) return dr_fail(DR_ERR_OOM, "clip_preprocess: out of memory");
    resample_rows(in, out, first, count, w);
    dr_status st = dr_tensor_from_f64(w, (int64_t[]){count, in}, 2, DR_F32, dev, mat);
    free(w);
    return st;
}

/* x [B, 3, H, W] -> [B, 3, S, S]: resized so the shorter side is S, centre-cropped */
static dr_status resize_crop(const dr_tensor *x, int64_t s, dr_tensor **out) {
    int64_t h = x->sizes[2], w = x->sizes[3], nh, nw;
    if (w <= h) nw = s, nh = (int64_t)((double)(s * h) / (double)w);
    else nh = s, nw = (int64_t)((double)(s * w) / (double)h);
    int64_t top = (int64_t)rint((double)(nh - s) / 2.0), left = (int64_t)rint((double)(nw - s) / 2.0);
    if (nh == h && nw == w) { /* Resize is the identity: crop only */
        dr_tensor *a = NULL, *b = NULL;
        dr_status st = dr_tensor_narrow(x, 2, top, s, &a);
        if (st == DR_OK) st = dr_tensor_narrow(a, 3, left, s, &b);
        if (st == DR_OK) st = dr_tensor_contiguous(b, out);
        dr_tensor_release(a);
        dr_tensor_release(b);
        return st;
    }
    dr_tensor *rh = NULL, *rw = NULL, *rwt = NULL, *t = NULL;
    dr_status st = resample_matrix(h, nh, top, s, x->device, &rh);
    if (st == DR_OK) st = resample_matrix(w, nw, left, s, x->device, &rw);
    if (st == DR_OK) st = dr_tensor_transpose(rw, 0, 1, &rwt);
    if (st == DR_OK) st = dr_matmul(x, rwt, &t);     /* [B, 3, H, S] */
    if (st == DR_OK) st = dr_matmul(rh, t, out);     /* [S, H] @ [B, 3, H, S] */
    dr_tensor_release(rh);
    dr_tensor_release(rw);
    dr_tensor_release(rwt);
    dr_tensor_release(t);
    return st;
}

dr_status nn_clip_preprocess(const char *op, const dr_tensor *images, int64_t size, dr_tensor **out) {
    DR_TRY(dr_check_tensor(images, op, "images"));
    if (images->ndim != 4 || images->sizes[0] < 1 || images->sizes[1] != 3 || images->sizes[2] < 1 ||
        images->sizes[3] < 1)
        return dr_fail(DR_ERR_SHAPE, "%s: images must be [B, 3, H, W] (RGB in [0, 1]), got %s", op,
                       dr_shape_str(images));
    if (!dr_dtype_is_float(images->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "%s: images must be a float tensor with values in [0, 1], got %s "
                       "(uint8 images: divide by 255)", op, dr_dtype_name(images->scalar_type));
    dr_tensor *x = NULL, *y = NULL, *mean = NULL, *std = NULL, *c = NULL;
    dr_status st = DR_OK;
    if (images->scalar_type == DR_F32) {
        x = (dr_tensor *)images;
        dr_tensor_retain(x);
    } else {
        st = dr_tensor_to_dtype(images, DR_F32, &x);
    }
    if (st == DR_OK) st = resize_crop(x, size, &y);
    if (st == DR_OK) st = dr_tensor_from_f64(CLIP_MEAN, (int64_t[]){3, 1, 1}, 3, DR_F32, x->device, &mean);
    if (st == DR_OK) st = dr_tensor_from_f64(CLIP_STD, (int64_t[]){3, 1, 1}, 3, DR_F32, x->device, &std);
    if (st == DR_OK) st = dr_sub(y, mean, 1.0, &c);
    if (st == DR_OK) st = dr_div(c, std, out);
    dr_tensor_release(x);
    dr_tensor_release(y);
    dr_tensor_release(mean);
    dr_tensor_release(std);
    dr_tensor_release(c);
    return st;
}
