/* Pillow-exact resizing (core/io/resize.c) and the threaded image loader
 * (core/io/loader.c): values Pillow 13 gives for small rows, torchvision's
 * Resize + CenterCrop geometry (half-to-even centring), the crop equal to a crop
 * of the full resize, and batches that decode the same bytes on 0 or 3 threads,
 * read byte ranges, and report a bad image by name while the others decode. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

static const dr_device CPU = {DR_CPU, 0};

static dr_tensor *row_image(const uint8_t *v, int n) {
    int64_t sizes[3] = {1, 1, n};
    dr_tensor *t = NULL;
    if (!CHECK_OK(dr_tensor_empty(sizes, 3, DR_U8, CPU, &t))) return NULL;
    memcpy(dr_tensor_data(t), v, (size_t)n);
    return t;
}

static int row_is(dr_tensor *t, const uint8_t *want, int n) {
    const uint8_t *p = dr_tensor_data(t);
    int ok = 1;
    for (int i = 0; i < n; i++) ok &= p[i] == want[i];
    if (!ok) {
        fprintf(stderr, "    got");
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", p[i]);
        fprintf(stderr, "\n");
    }
    return CHECK(ok);
}

static void test_pillow_values(void) {
    /* Image.fromarray([[0,100,200,255,30,60,90]], 'L').resize(..., reducing_gap=None), Pillow 13 */
    const uint8_t v[7] = {0, 100, 200, 255, 30, 60, 90};
    const uint8_t bilinear3[3] = {86, 169, 64}, bicubic3[3] = {85, 175, 60};
    const uint8_t bicubic10[10] = {0, 47, 126, 196, 255, 187, 26, 47, 76, 92};
    dr_tensor *img = row_image(v, 7), *out = NULL;
    if (!img) return;
    if (CHECK_OK(dr_image_resize(img, 3, 1, 2, &out))) row_is(out, bilinear3, 3);
    dr_tensor_release(out);
    if (CHECK_OK(dr_image_resize(img, 3, 1, 3, &out))) row_is(out, bicubic3, 3);
    dr_tensor_release(out);
    if (CHECK_OK(dr_image_resize(img, 10, 1, 3, &out))) row_is(out, bicubic10, 10);
    dr_tensor_release(out);
    CHECK_FAILS(dr_image_resize(img, 3, 1, 0, &out), DR_ERR_ARG, "filter must be 1 (lanczos)");
    CHECK_FAILS(dr_image_resize(img, 0, 1, 2, &out), DR_ERR_ARG, "size must be in [1, 65535]");
    dr_tensor_release(img);
}

static dr_tensor *pattern(int c, int h, int w) {
    int64_t sizes[3] = {c, h, w};
    dr_tensor *t = NULL;
    if (!CHECK_OK(dr_tensor_empty(sizes, 3, DR_U8, CPU, &t))) return NULL;
    uint8_t *p = dr_tensor_data(t);
    for (int k = 0; k < c; k++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                p[((size_t)k * h + y) * w + x] = (uint8_t)((x * 37 + y * 91 + k * 50 + (x * y) % 13) & 0xFF);
    return t;
}

/* resize_crop == resize to torchvision's size, then the centre crop (round half even) */
static void check_crop(int w, int h, int size, int rw, int rh, int x0, int y0) {
    dr_tensor *img = pattern(3, h, w), *full = NULL, *crop = NULL;
    if (!img) return;
    if (CHECK_OK(dr_image_resize(img, rw, rh, 3, &full)) && CHECK_OK(dr_image_resize_crop(img, size, 3, DR_U8, &crop))) {
        const uint8_t *f = dr_tensor_data(full), *c = dr_tensor_data(crop);
        int ok = 1;
        for (int k = 0; k < 3; k++)
            for (int y = 0; y < size; y++)
                for (int x = 0; x < size; x++)
                    ok &= c[((size_t)k * size + y) * size + x] == f[((size_t)k * rh + y + y0) * rw + x + x0];
        if (!CHECK(ok)) fprintf(stderr, "    %dx%d -> %d: crop differs\n", w, h, size);
    }
    dr_tensor_release(img);
    dr_tensor_release(full);
    dr_tensor_release(crop);
}

static void test_crop_geometry(void) {
    check_crop(37, 23, 16, 25, 16, 4, 0);  /* (25 - 16) / 2 = 4.5 -> 4 */
    check_crop(23, 40, 16, 16, 27, 0, 6);  /* 11 / 2 = 5.5 -> 6 */
    check_crop(64, 64, 16, 16, 16, 0, 0);
    check_crop(10, 7, 32, 45, 32, 6, 0);   /* growing: 13 / 2 = 6.5 -> 6 */
    dr_tensor *img = pattern(3, 5, 5), *f = NULL, *u = NULL;
    if (img && CHECK_OK(dr_image_resize_crop(img, 3, 2, DR_F32, &f)) && CHECK_OK(dr_image_resize_crop(img, 3, 2, DR_U8, &u))) {
        const float *pf = dr_tensor_data(f);
        const uint8_t *pu = dr_tensor_data(u);
        int ok = 1;
        for (int i = 0; i < 27; i++) ok &= pf[i] == (float)pu[i] / 255.0f;
        CHECK(ok);
    }
    dr_tensor_release(f);
    dr_tensor_release(u);
    CHECK_FAILS(dr_image_resize_crop(img, 3, 2, DR_I64, &f), DR_ERR_DTYPE, "dtype must be uint8 or float32");
    dr_tensor_release(img);
}

/* Writes a PNG of `img` and appends its bytes to `blob` (for byte ranges). */
static int64_t write_png(dr_tensor *img, const char *path) {
    if (!CHECK_OK(dr_png_write(path, img))) return -1;
    FILE *fp = fopen(path, "rb");
    fseek(fp, 0, SEEK_END);
    int64_t n = ftell(fp);
    fclose(fp);
    return n;
}

static void test_loader(void) {
    char dir[] = "/tmp/diffrl_test_resize_XXXXXX";
    if (!CHECK(mkdtemp(dir) != NULL)) return;
    char a[256], b[256], bad[256], both[256];
    snprintf(a, sizeof a, "%s/a.png", dir);
    snprintf(b, sizeof b, "%s/b.jpg", dir);
    snprintf(bad, sizeof bad, "%s/bad.jpg", dir);
    snprintf(both, sizeof both, "%s/both.bin", dir);
    dr_tensor *ia = pattern(3, 30, 41), *ib = pattern(3, 50, 20);
    int64_t na = write_png(ia, a);
    uint8_t *jpg = NULL;
    size_t nj = 0;
    CHECK_OK(dr_jpeg_encode(ib, 90, &jpg, &nj));
    FILE *fp = fopen(b, "wb");
    fwrite(jpg, 1, nj, fp);
    fclose(fp);
    fp = fopen(bad, "wb");
    fwrite(jpg, 1, nj / 2, fp); /* a JPEG cut in half */
    fclose(fp);
    /* both.bin: 100 junk bytes, the PNG, then the JPEG: images as byte ranges */
    fp = fopen(both, "wb");
    for (int i = 0; i < 100; i++) fputc(i, fp);
    FILE *fa = fopen(a, "rb");
    int ch;
    while ((ch = fgetc(fa)) != EOF) fputc(ch, fp);
    fclose(fa);
    fwrite(jpg, 1, nj, fp);
    fclose(fp);
    dr_jpeg_free(jpg);

    const char *paths[5] = {a, b, bad, both, both};
    const char *names[5] = {"a.png", "b.jpg", "bad.jpg", "both:png", "both:jpg"};
    int64_t offsets[5] = {0, 0, 0, 100, 100 + na}, sizes[5] = {-1, -1, -1, na, (int64_t)nj};
    dr_tensor *out[2] = {NULL, NULL};
    for (int run = 0; run < 2; run++) {
        dr_image_loader *l = NULL;
        dr_image_batch *batch = NULL;
        if (!CHECK_OK(dr_image_loader_create(run ? 3 : 0, &l))) continue;
        CHECK_EQ_INT(dr_image_loader_threads(l), run ? 3 : 0);
        if (CHECK_OK(dr_image_batch_submit(l, 5, paths, offsets, sizes, names, 16, 2, &batch))) {
            dr_image_loader_free(l); /* the batch keeps the pool alive */
            l = NULL;
            CHECK_OK(dr_image_batch_wait(batch, &out[run]));
            CHECK(dr_image_batch_error(batch, 0) == NULL);
            CHECK(dr_image_batch_error(batch, 1) == NULL);
            const char *e = dr_image_batch_error(batch, 2);
            CHECK(e && strstr(e, "bad.jpg"));
            CHECK(dr_image_batch_error(batch, 3) == NULL);
            CHECK(dr_image_batch_error(batch, 4) == NULL);
            CHECK_EQ_INT(dr_image_batch_count(batch), 5);
            dr_image_batch_free(batch);
        }
        dr_image_loader_free(l);
    }
    if (out[0] && out[1]) {
        const float *p0 = dr_tensor_data(out[0]), *p1 = dr_tensor_data(out[1]);
        size_t plane = 3 * 16 * 16;
        CHECK(memcmp(p0, p1, 5 * plane * sizeof(float)) == 0);          /* same bytes, any threads */
        CHECK(memcmp(p0, p0 + 3 * plane, plane * sizeof(float)) == 0); /* the range = the file */
        CHECK(memcmp(p0 + plane, p0 + 4 * plane, plane * sizeof(float)) == 0);
        int zero = 1;
        for (size_t i = 0; i < plane; i++) zero &= p0[2 * plane + i] == 0.0f;
        CHECK(zero);
        dr_tensor *want = NULL; /* image 0 equals decode + resize_crop */
        dr_tensor *dec = NULL;
        if (CHECK_OK(dr_png_read(a, 3, DR_U8, &dec)) && CHECK_OK(dr_image_resize_crop(dec, 16, 2, DR_F32, &want)))
            CHECK(memcmp(dr_tensor_data(want), p0, plane * sizeof(float)) == 0);
        dr_tensor_release(dec);
        dr_tensor_release(want);
    }
    dr_tensor_release(out[0]);
    dr_tensor_release(out[1]);

    /* a range past the end of the file, a missing file, a batch freed unwaited */
    dr_image_loader *l = NULL;
    if (CHECK_OK(dr_image_loader_create(2, &l))) {
        int64_t far[2] = {100, 0}, big[2] = {100000, 10};
        const char *p2[2] = {both, "/nonexistent/x.png"};
        dr_image_batch *batch = NULL;
        dr_tensor *t = NULL;
        if (CHECK_OK(dr_image_batch_submit(l, 2, p2, far, big, NULL, 8, 3, &batch))) {
            CHECK_OK(dr_image_batch_wait(batch, &t));
            const char *e0 = dr_image_batch_error(batch, 0), *e1 = dr_image_batch_error(batch, 1);
            CHECK(e0 && strstr(e0, "cut short"));
            CHECK(e1 && strstr(e1, "/nonexistent/x.png"));
            dr_image_batch_free(batch);
            dr_tensor_release(t);
        }
        for (int k = 0; k < 4; k++)
            if (CHECK_OK(dr_image_batch_submit(l, 5, paths, offsets, sizes, names, 16, 2, &batch)))
                dr_image_batch_free(batch);
        CHECK_FAILS(dr_image_batch_submit(l, 0, paths, offsets, sizes, names, 16, 2, &batch), DR_ERR_ARG, "n must be >= 1");
        CHECK_FAILS(dr_image_batch_submit(l, 1, paths, offsets, sizes, names, 16, 9, &batch), DR_ERR_ARG, "filter must be");
        dr_image_loader_free(l);
    }
    CHECK_FAILS(dr_image_loader_create(-1, &l), DR_ERR_ARG, "threads must be in [0, 256]");
    dr_tensor_release(ia);
    dr_tensor_release(ib);
    remove(a), remove(b), remove(bad), remove(both), rmdir(dir);
}

int main(void) {
    test_pillow_values();
    test_crop_geometry();
    test_loader();
    return check_summary("test_resize");
}
