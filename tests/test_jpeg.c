/* JPEG in memory (core/io/jpeg.c): encoded sizes equal PIL's Image.save(format="JPEG",
 * quality=q) byte for byte (the numbers are tools/fixtures/make_jpeg_golden.py's, for
 * the same images built here), float and uint8 inputs and strided views encode to the
 * same bytes, decoding round-trips, channels 1 is PIL's convert("L"), and bad
 * arguments, truncated and mutated files are errors naming the input, never crashes. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"

static const dr_device CPU = {DR_CPU, 0};

/* The images of make_jpeg_golden.py, channels first, u8. */
static dr_tensor *gradient(void) {
    int64_t sizes[3] = {3, 32, 32};
    dr_tensor *t = NULL;
    if (!CHECK_OK(dr_tensor_empty(sizes, 3, DR_U8, CPU, &t))) return NULL;
    uint8_t *p = dr_tensor_data(t);
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
            int v[3] = {x * 8, y * 8, (x + y) * 4};
            for (int c = 0; c < 3; c++) p[(c * 32 + y) * 32 + x] = (uint8_t)(v[c] > 255 ? 255 : v[c]);
        }
    return t;
}

static dr_tensor *shapes(void) {
    int64_t sizes[3] = {3, 17, 33};
    dr_tensor *t = NULL;
    if (!CHECK_OK(dr_tensor_empty(sizes, 3, DR_U8, CPU, &t))) return NULL;
    uint8_t *p = dr_tensor_data(t);
    for (int y = 0; y < 17; y++)
        for (int x = 0; x < 33; x++) {
            uint8_t v[3] = {30, 60, 200};
            if (y >= 3 && y < 12 && x >= 4 && x < 15) v[0] = 240, v[1] = 20, v[2] = 20;
            if (y >= 6 && y < 16 && x >= 18 && x < 30) v[0] = 250, v[1] = 250, v[2] = 40;
            for (int c = 0; c < 3; c++) p[(c * 17 + y) * 33 + x] = v[c];
        }
    return t;
}

static dr_tensor *gray(void) {
    int64_t sizes[3] = {1, 16, 16};
    dr_tensor *t = NULL;
    if (!CHECK_OK(dr_tensor_empty(sizes, 3, DR_U8, CPU, &t))) return NULL;
    uint8_t *p = dr_tensor_data(t);
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++) p[y * 16 + x] = (uint8_t)(((x + y) * 8) % 256);
    return t;
}

static size_t encoded_size(const dr_tensor *t, int q) {
    uint8_t *data = NULL;
    size_t size = 0;
    if (!CHECK_OK(dr_jpeg_encode(t, q, &data, &size))) return 0;
    dr_jpeg_free(data);
    return size;
}

static void test_sizes_match_pil(void) {
    static const int qualities[5] = {95, 75, 50, 10, 100};
    static const size_t pil[3][5] = {
        {854, 742, 711, 667, 1090},   /* gradient */
        {1033, 834, 774, 692, 1289},  /* shapes */
        {389, 358, 351, 339, 407},    /* gray */
    };
    dr_tensor *imgs[3] = {gradient(), shapes(), gray()};
    for (int i = 0; i < 3; i++) {
        if (!imgs[i]) continue;
        for (int k = 0; k < 5; k++) {
            if (!CHECK_EQ_INT(encoded_size(imgs[i], qualities[k]), pil[i][k]))
                fprintf(stderr, "    image %d, quality %d\n", i, qualities[k]);
        }
        dr_tensor_release(imgs[i]);
    }
}

static int same_bytes(const dr_tensor *a, const dr_tensor *b, int q) {
    uint8_t *da = NULL, *db = NULL;
    size_t na = 0, nb = 0;
    int ok = CHECK_OK(dr_jpeg_encode(a, q, &da, &na)) & CHECK_OK(dr_jpeg_encode(b, q, &db, &nb));
    ok = ok && na == nb && memcmp(da, db, na) == 0;
    dr_jpeg_free(da);
    dr_jpeg_free(db);
    return ok;
}

static void test_float_and_views(void) {
    dr_tensor *u = shapes(), *f = NULL, *half = NULL, *hwc = NULL;
    if (!u) return;
    CHECK_OK(dr_tensor_to_dtype(u, DR_F32, &f));
    float *p = dr_tensor_data(f);
    int64_t n = dr_tensor_numel(f);
    for (int64_t i = 0; i < n; i++) p[i] = p[i] / 255.0f; /* v / 255 rounds back to v */
    CHECK(same_bytes(u, f, 95));
    CHECK_OK(dr_tensor_to_dtype(f, DR_F16, &half));
    CHECK(same_bytes(u, half, 95));
    /* a [C, H, W] view of an [H, W, C] tensor: strides other than contiguous */
    int32_t to_hwc[3] = {1, 2, 0}, to_chw[3] = {2, 0, 1};
    dr_tensor *hwc_view = NULL, *chw_view = NULL;
    CHECK_OK(dr_tensor_permute(u, to_hwc, 3, &hwc_view));
    CHECK_OK(dr_tensor_contiguous(hwc_view, &hwc));
    CHECK_OK(dr_tensor_permute(hwc, to_chw, 3, &chw_view));
    CHECK(!dr_tensor_is_contiguous(chw_view));
    CHECK(same_bytes(u, chw_view, 90));
    /* out-of-range and NaN floats clamp as png.c does */
    p[0] = -3.0f, p[1] = 7.0f, p[2] = NAN;
    uint8_t *b = dr_tensor_data(u);
    b[0] = 0, b[1] = 255, b[2] = 0;
    CHECK(same_bytes(u, f, 95));

    dr_tensor_release(chw_view);
    dr_tensor_release(hwc_view);
    dr_tensor_release(hwc);
    dr_tensor_release(half);
    dr_tensor_release(f);
    dr_tensor_release(u);
}

/* Quality 100 of a smooth image comes back close; u8, float and gray readings agree. */
static void test_round_trip(void) {
    dr_tensor *u = gradient(), *back = NULL;
    uint8_t *d = NULL;
    size_t s = 0;
    if (!u) return;
    CHECK_OK(dr_jpeg_encode(u, 100, &d, &s));
    if (CHECK_OK(dr_jpeg_decode(d, s, "rt.jpg", 3, DR_U8, &back))) {
        const uint8_t *a = dr_tensor_data(u), *b = dr_tensor_data(back);
        int worst = 0;
        for (int64_t i = 0; i < dr_tensor_numel(u); i++) {
            int e = abs((int)a[i] - (int)b[i]);
            if (e > worst) worst = e;
        }
        CHECK(worst <= 8); /* PIL's own round trip of this image: 6 */
        dr_tensor *fl = NULL, *l = NULL;
        CHECK_OK(dr_jpeg_decode(d, s, "rt.jpg", 3, DR_F32, &fl));
        CHECK_OK(dr_jpeg_decode(d, s, "rt.jpg", 1, DR_U8, &l));
        if (fl && l) {
            const float *fp = dr_tensor_data(fl);
            const uint8_t *lp = dr_tensor_data(l);
            int64_t plane = 32 * 32;
            int agree = 1, luma = 1;
            for (int64_t i = 0; i < 3 * plane; i++) agree &= fp[i] == (float)b[i] / 255.0f;
            for (int64_t i = 0; i < plane; i++) {
                unsigned v = (19595u * b[i] + 38470u * b[plane + i] + 7471u * b[2 * plane + i] +
                              0x8000u) >> 16;
                luma &= lp[i] == v;
            }
            CHECK(agree);
            CHECK(luma);
        }
        dr_tensor_release(fl);
        dr_tensor_release(l);
    }
    dr_jpeg_free(d);
    dr_tensor_release(back);
    dr_tensor_release(u);
}

static void test_gray_file_reads_as_rgb(void) {
    dr_tensor *g = gray(), *rgb = NULL, *l = NULL;
    uint8_t *d = NULL;
    size_t s = 0;
    if (!g || !CHECK_OK(dr_jpeg_encode(g, 95, &d, &s))) return;
    if (CHECK_OK(dr_jpeg_decode(d, s, NULL, 3, DR_U8, &rgb)) &&
        CHECK_OK(dr_jpeg_decode(d, s, NULL, 1, DR_U8, &l))) {
        const uint8_t *a = dr_tensor_data(rgb), *b = dr_tensor_data(l);
        int ok = 1;
        for (int i = 0; i < 256; i++) ok &= a[i] == b[i] && a[256 + i] == b[i] && a[512 + i] == b[i];
        CHECK(ok);
    }
    dr_tensor_release(rgb);
    dr_tensor_release(l);
    dr_jpeg_free(d);
    dr_tensor_release(g);
}

static void test_argument_errors(void) {
    uint8_t *d = (uint8_t *)1;
    size_t s = 7;
    dr_tensor *t = NULL, *out = NULL;
    int64_t two[3] = {2, 4, 4}, ints[3] = {3, 4, 4};
    CHECK_OK(dr_tensor_empty(two, 3, DR_F32, CPU, &t));
    CHECK_FAILS(dr_jpeg_encode(t, 95, &d, &s), DR_ERR_SHAPE, "C = 1 or 3, got [2, 4, 4]");
    CHECK(d == NULL && s == 0);
    dr_tensor_release(t);
    CHECK_OK(dr_tensor_empty(ints, 3, DR_I32, CPU, &t));
    CHECK_FAILS(dr_jpeg_encode(t, 95, &d, &s), DR_ERR_DTYPE, "float (values in [0, 1]) or uint8");
    dr_tensor_release(t);
    CHECK_OK(dr_tensor_empty(ints, 3, DR_U8, CPU, &t));
    CHECK_FAILS(dr_jpeg_encode(t, 0, &d, &s), DR_ERR_ARG, "quality must be in [1, 100], got 0");
    CHECK_FAILS(dr_jpeg_encode(t, 101, &d, &s), DR_ERR_ARG, "got 101");
    CHECK_FAILS(dr_jpeg_encode(t, 95, NULL, &s), DR_ERR_ARG, "must not be NULL");
    CHECK_FAILS(dr_jpeg_encode(NULL, 95, &d, &s), DR_ERR_ARG, "jpeg: encode");
    dr_tensor_release(t);

    static const uint8_t junk[] = "GIF89a not a jpeg";
    CHECK_FAILS(dr_jpeg_decode(junk, sizeof junk, "a.gif", 3, DR_U8, &out), DR_ERR_IO,
                "jpeg: read a.gif: not a JPEG file");
    CHECK_FAILS(dr_jpeg_decode(junk, 0, "e.jpg", 3, DR_U8, &out), DR_ERR_IO, "jpeg: read e.jpg");
    CHECK_FAILS(dr_jpeg_decode(junk, sizeof junk, "x", 4, DR_U8, &out), DR_ERR_ARG,
                "channels must be 1 or 3, got 4");
    CHECK_FAILS(dr_jpeg_decode(junk, sizeof junk, "x", 3, DR_I64, &out), DR_ERR_DTYPE,
                "dtype must be float32 or uint8");
    CHECK_FAILS(dr_jpeg_read("/nonexistent/dir/x.jpg", 3, DR_U8, &out), DR_ERR_IO,
                "jpeg: read /nonexistent/dir/x.jpg: cannot open");
    CHECK(out == NULL);
}

/* Every prefix and many single-byte mutations of a real file: an error naming the
 * input, or an image; never a crash (run isolated, so a crash is one failure). */
static void corrupt_files(const void *arg) {
    (void)arg;
    dr_tensor *img = gradient();
    uint8_t *d = NULL;
    size_t s = 0;
    if (!img || !CHECK_OK(dr_jpeg_encode(img, 90, &d, &s))) return;
    int named = 1, failed_all_prefixes = 1;
    for (size_t n = 0; n < s - 1; n++) { /* everything short of the EOI's last byte */
        uint8_t *copy = malloc(n + 1);
        memcpy(copy, d, n);
        dr_tensor *out = NULL;
        dr_status st = dr_jpeg_decode(copy, n, "cut.jpg", 3, DR_U8, &out);
        failed_all_prefixes &= st == DR_ERR_IO && out == NULL;
        if (st != DR_OK) named &= strstr(dr_last_error(), "jpeg: read cut.jpg: ") == dr_last_error();
        dr_tensor_release(out);
        free(copy);
    }
    CHECK(failed_all_prefixes);
    CHECK(named);
    int ok = 1;
    for (size_t i = 2; i < s; i++) {
        for (int flip = 1; flip < 256; flip <<= 2) {
            uint8_t *copy = malloc(s);
            memcpy(copy, d, s);
            copy[i] ^= (uint8_t)flip;
            dr_tensor *out = NULL;
            dr_status st = dr_jpeg_decode(copy, s, "mut.jpg", 3, DR_F32, &out);
            if (st != DR_OK)
                ok &= st == DR_ERR_IO && out == NULL &&
                      strstr(dr_last_error(), "jpeg: read mut.jpg: ") == dr_last_error();
            dr_tensor_release(out);
            free(copy);
        }
    }
    CHECK(ok);
    dr_jpeg_free(d);
    dr_tensor_release(img);
}

static void test_read_file(void) {
    dr_tensor *img = shapes(), *back = NULL, *direct = NULL;
    uint8_t *d = NULL;
    size_t s = 0;
    if (!img || !CHECK_OK(dr_jpeg_encode(img, 95, &d, &s))) return;
    char path[64];
    snprintf(path, sizeof path, "/tmp/test_jpeg.%ld.jpg", (long)getpid());
    FILE *fp = fopen(path, "wb");
    if (CHECK(fp != NULL)) {
        CHECK_EQ_INT(fwrite(d, 1, s, fp), s);
        fclose(fp);
        if (CHECK_OK(dr_jpeg_read(path, 3, DR_U8, &back)) &&
            CHECK_OK(dr_jpeg_decode(d, s, path, 3, DR_U8, &direct)))
            CHECK(memcmp(dr_tensor_data(back), dr_tensor_data(direct), 3 * 17 * 33) == 0);
        unlink(path);
    }
    dr_tensor_release(back);
    dr_tensor_release(direct);
    dr_jpeg_free(d);
    dr_tensor_release(img);
}

int main(void) {
    test_sizes_match_pil();
    test_float_and_views();
    test_round_trip();
    test_gray_file_reads_as_rgb();
    test_argument_errors();
    check_isolated("corrupt JPEG files", corrupt_files, NULL);
    test_read_file();
    return check_summary("test_jpeg");
}
