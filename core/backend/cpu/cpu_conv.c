/* conv2d kernels (float32, contiguous NCHW) by im2col + OpenBLAS sgemm.
 *
 * For image n and group g, with Cg = C/groups input and Og = O/groups output
 * channels and GEMM depth K = Cg kh kw:
 *   cols[(c, i, j), (y, x)] = in[n, g Cg + c, y sh - ph + i dh, x sw - pw + j dw]  (0 outside)
 *   out[n, g Og : (g+1) Og] = W_g [Og, K] @ cols [K, Ho Wo] + bias
 *   dcols = W_g^T @ dY[n, g];  dX[n, g] = col2im(dcols): each input pixel sums the
 *           column entries it was copied to
 *   dW_g  = sum_n dY[n, g] @ cols_n^T, images and bands summed in order
 *   db[o] = sum_{n, y, x} dY[n, o, y, x]  (in double)
 * A 1x1 kernel with stride 1 and no padding needs no columns: cols is the input.
 *
 * Determinism: OpenBLAS gives different bits for the same product when it splits it
 * over a different number of threads. So the work is cut into units whose shapes
 * depend only on the problem (bands of output rows, tiles of channels), every unit
 * runs single-threaded BLAS (OpenBLAS's OpenMP build does inside a parallel region),
 * and threads only choose which units they run: results do not depend on the thread
 * count. Each unit has its own column buffer, a band of columns, so memory stays
 * bounded however large the image (a VAE decoder at 512x512 would need a gigabyte of
 * columns at once).
 *   forward:          unit = (image, group, band of output rows, tile of out channels)
 *   grad input:       unit = (image, group, tile of input channels), bands in order;
 *                     tiles own disjoint planes of dX, so col2im needs no atomics
 *   grad weight:      unit = (group, tile of input channels, tile of out channels),
 *                     images and bands summed in order */
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <cblas.h>

#include "cpu_internal.h"

enum {
    FWD_BAND_COLS = 256,      /* output pixels per forward band (GEMM n) */
    BUF_FLOATS = 1 << 20,     /* column buffer per unit of the backward passes */
    FWD_BUF_FLOATS = 1 << 22, /* ... and the forward's, which holds all K rows */
    ROWS_PER_TILE = 256,      /* K rows per input-channel tile */
    MIN_MTILE = 128,          /* output channels per tile, at least */
    MIN_UNITS = 4,            /* out-channel tiles are cut until there are this many units */
    SERIAL_MACS = 1 << 16,    /* jobs this small run on the calling thread */
};

typedef struct conv_geom {
    int64_t n, c, h, w, o, ho, wo;
    int64_t kh, kw, sh, sw, ph, pw, dh, dw, groups;
    int64_t cg, og, khw, k, hw, howo;
    bool direct; /* 1x1, stride 1, no padding: the input is the column matrix */
} conv_geom;

/* A split of `total` into `count` parts of `size` (the last may be smaller). */
typedef struct split {
    int64_t size, count;
} split;

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static split split_in(int64_t total, int64_t parts) {
    split s;
    parts = max64(1, min64(parts, total));
    s.size = total > 0 ? ceil_div(total, parts) : 1;
    s.count = total > 0 ? ceil_div(total, s.size) : 1;
    return s;
}

static conv_geom make_geom(const int64_t *in_sizes, const int64_t *out_sizes, int64_t kh,
                           int64_t kw, const int64_t *stride, const int64_t *padding,
                           const int64_t *dilation, int64_t groups) {
    conv_geom g;
    g.n = in_sizes[0], g.c = in_sizes[1], g.h = in_sizes[2], g.w = in_sizes[3];
    g.o = out_sizes[1], g.ho = out_sizes[2], g.wo = out_sizes[3];
    g.kh = kh, g.kw = kw;
    g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1];
    g.dh = dilation[0], g.dw = dilation[1], g.groups = groups;
    g.cg = g.c / groups, g.og = g.o / groups, g.khw = kh * kw, g.k = g.cg * g.khw;
    g.hw = g.h * g.w, g.howo = g.ho * g.wo;
    g.direct = kh == 1 && kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
    return g;
}

/* Bands of about `band_rows` output rows whose columns (`rows` of them each) fit
 * `budget` floats (a direct convolution reads its columns in place). */
static split row_bands(const conv_geom *g, int64_t rows, int64_t band_rows, int64_t budget) {
    if (!g->direct) band_rows = min64(band_rows, budget / max64(1, rows * g->wo));
    band_rows = max64(1, band_rows);
    return split_in(g->ho, ceil_div(g->ho, band_rows));
}

/* Tiles of input channels of about ROWS_PER_TILE K rows each. */
static split channel_tiles(const conv_geom *g) {
    return split_in(g->cg, g->k / ROWS_PER_TILE);
}

/* Tiles of output channels: more only while there are fewer than MIN_UNITS units. */
static split out_tiles(const conv_geom *g, int64_t other_units) {
    return split_in(g->og, min64(ceil_div(g->og, MIN_MTILE), ceil_div(MIN_UNITS, other_units)));
}

/* Output columns x in [lo, hi) read input column x sw + x0 inside [0, w). */
static void valid_cols(const conv_geom *g, int64_t x0, int64_t *lo, int64_t *hi) {
    int64_t l = x0 >= 0 ? 0 : ceil_div(-x0, g->sw);
    int64_t h = g->w - x0 <= 0 ? 0 : ceil_div(g->w - x0, g->sw);
    l = min64(l, g->wo);
    h = min64(h, g->wo);
    *lo = l;
    *hi = max64(h, l);
}

/* cols [(c1 - c0) kh kw, (y1 - y0) Wo]: input channels [c0, c1) of x [Cg, H, W] for
 * output rows [y0, y1). */
static void im2col(const conv_geom *g, const float *x, float *cols, int64_t c0, int64_t c1,
                   int64_t y0, int64_t y1) {
    int64_t ncols = (y1 - y0) * g->wo;
    for (int64_t r = 0; r < (c1 - c0) * g->khw; r++) {
        int64_t c = c0 + r / g->khw, i = r / g->kw % g->kh, j = r % g->kw;
        int64_t x0 = j * g->dw - g->pw, lo, hi;
        valid_cols(g, x0, &lo, &hi);
        const float *xc = x + c * g->hw;
        float *row = cols + r * ncols;
        for (int64_t y = y0; y < y1; y++) {
            float *d = row + (y - y0) * g->wo;
            int64_t iy = y * g->sh - g->ph + i * g->dh;
            if (iy < 0 || iy >= g->h) {
                memset(d, 0, (size_t)g->wo * sizeof(float));
                continue;
            }
            const float *s = xc + iy * g->w; /* s[x0 + ox sw], in range for ox in [lo, hi) */
            for (int64_t ox = 0; ox < lo; ox++) d[ox] = 0;
            if (g->sw == 1) memcpy(d + lo, s + x0 + lo, (size_t)(hi - lo) * sizeof(float));
            else for (int64_t ox = lo; ox < hi; ox++) d[ox] = s[x0 + ox * g->sw];
            for (int64_t ox = hi; ox < g->wo; ox++) d[ox] = 0;
        }
    }
}

/* dx [Cg, H, W] += col2im(cols) for input channels [c0, c1) and output rows [y0, y1),
 * rows (c, i, j) added in order. */
static void col2im(const conv_geom *g, const float *cols, float *dx, int64_t c0, int64_t c1,
                   int64_t y0, int64_t y1) {
    int64_t ncols = (y1 - y0) * g->wo;
    for (int64_t r = 0; r < (c1 - c0) * g->khw; r++) {
        int64_t c = c0 + r / g->khw, i = r / g->kw % g->kh, j = r % g->kw;
        int64_t x0 = j * g->dw - g->pw, lo, hi;
        valid_cols(g, x0, &lo, &hi);
        const float *row = cols + r * ncols;
        for (int64_t y = y0; y < y1; y++) {
            int64_t iy = y * g->sh - g->ph + i * g->dh;
            if (iy < 0 || iy >= g->h) continue;
            float *d = dx + c * g->hw + iy * g->w; /* d[x0 + ox sw] */
            const float *s = row + (y - y0) * g->wo;
            if (g->sw == 1) for (int64_t ox = lo; ox < hi; ox++) d[x0 + ox] += s[ox];
            else for (int64_t ox = lo; ox < hi; ox++) d[x0 + ox * g->sw] += s[ox];
        }
    }
}

static inline void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n,
                         int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                         float beta, float *c, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k, 1.0f, a,
                (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}

/* ---- running units ------------------------------------------------------------------ */

typedef struct conv_job {
    conv_geom g;
    split bands, ctiles, mtiles;
    const float *x, *w, *b, *dy;
    float *y, *dx, *dw;
} conv_job;

typedef void (*unit_fn)(const conv_job *job, int64_t unit, float *cols);

/* Runs fn(job, u, cols) for every unit u, with `buf_floats` of private columns per
 * thread that runs any. The team always has every thread, idle or not: inside an
 * active parallel region OpenBLAS stays on one thread, outside it would not. Only
 * when the whole job is below SERIAL_MACS multiply-adds, which OpenBLAS computes on
 * one thread anyway (its SMP threshold), does it run here without waking the pool.
 * The buffers come from the CPU block cache, so a training step does not page-fault
 * them in afresh. */
static dr_status run_units(const conv_job *job, int64_t units, unit_fn fn, int64_t buf_floats,
                           int64_t macs, const char *op) {
    int nt = macs <= SERIAL_MACS ? 1 : omp_get_max_threads();
    int64_t nbuf = nt < units ? nt : units;
    size_t per = (size_t)buf_floats, nbytes = (size_t)nbuf * per * sizeof(float);
    void *mem = NULL;
    if (nbytes > 0 && dr_cpu_alloc(0, nbytes, &mem) != DR_OK)
        return dr_fail(DR_ERR_OOM, "%s: cannot allocate %zu bytes of im2col columns", op, nbytes);
    float *buf = mem;
    if (nt == 1) {
        for (int64_t u = 0; u < units; u++) fn(job, u, buf);
    } else {
        int next_slot = 0;
#pragma omp parallel num_threads(nt)
        {
            float *cols = NULL;
#pragma omp for schedule(dynamic, 1)
            for (int64_t u = 0; u < units; u++) {
                if (buf && !cols) {
                    int slot;
#pragma omp atomic capture
                    slot = next_slot++;
                    cols = buf + (size_t)slot * per;
                }
                fn(job, u, cols);
            }
        }
    }
    if (mem) dr_cpu_dealloc(0, mem, nbytes);
    return DR_OK;
}

/* ---- forward ------------------------------------------------------------------------ */

static void forward_unit(const conv_job *job, int64_t u, float *cols) {
    const conv_geom *g = &job->g;
    int64_t mi = u % job->mtiles.count, rest = u / job->mtiles.count;
    int64_t band = rest % job->bands.count, item = rest / job->bands.count;
    int64_t n = item / g->groups, gi = item % g->groups;
    int64_t y0 = band * job->bands.size, y1 = min64(y0 + job->bands.size, g->ho);
    int64_t m0 = mi * job->mtiles.size, m1 = min64(m0 + job->mtiles.size, g->og);
    int64_t ncols = (y1 - y0) * g->wo;
    const float *xg = job->x + (n * g->c + gi * g->cg) * g->hw;
    float *yt = job->y + (n * g->o + gi * g->og + m0) * g->howo + y0 * g->wo;
    float beta = 0;
    if (job->b) {
        for (int64_t oc = m0; oc < m1; oc++) {
            float v = job->b[gi * g->og + oc], *row = yt + (oc - m0) * g->howo;
            for (int64_t p = 0; p < ncols; p++) row[p] = v;
        }
        beta = 1;
    }
    const float *src = xg + y0 * g->wo;
    int64_t ld = g->hw;
    if (!g->direct) {
        im2col(g, xg, cols, 0, g->cg, y0, y1);
        src = cols;
        ld = ncols;
    }
    sgemm(CblasNoTrans, CblasNoTrans, m1 - m0, ncols, g->k, job->w + (gi * g->og + m0) * g->k,
          g->k, src, ld, beta, yt, g->howo);
}

dr_status dr_cpu_conv2d(dr_tensor *out, const dr_tensor *in, const dr_tensor *weight,
                        const dr_tensor *bias, const int64_t *stride, const int64_t *padding,
                        const int64_t *dilation, int64_t groups) {
    conv_job job = {0};
    conv_geom *g = &job.g;
    *g = make_geom(in->sizes, out->sizes, weight->sizes[2], weight->sizes[3], stride, padding,
                   dilation, groups);
    if (g->n == 0 || g->o == 0 || g->howo == 0) return DR_OK;
    int64_t items = g->n * g->groups;
    job.bands = row_bands(g, g->k, ceil_div(FWD_BAND_COLS, g->wo), FWD_BUF_FLOATS);
    job.mtiles = out_tiles(g, items * job.bands.count);
    job.x = dr_tensor_data(in);
    job.w = dr_tensor_data(weight);
    job.b = bias ? dr_tensor_data(bias) : NULL;
    job.y = dr_tensor_data(out);
    int64_t units = items * job.bands.count * job.mtiles.count;
    int64_t buf = g->direct ? 0 : g->k * job.bands.size * g->wo;
    return run_units(&job, units, forward_unit, buf, g->n * g->o * g->howo * g->k, "conv2d");
}

/* ---- backward: input ---------------------------------------------------------------- */

static void input_unit(const conv_job *job, int64_t u, float *cols) {
    const conv_geom *g = &job->g;
    int64_t ci = u % job->ctiles.count, item = u / job->ctiles.count;
    int64_t n = item / g->groups, gi = item % g->groups;
    int64_t c0 = ci * job->ctiles.size, c1 = min64(c0 + job->ctiles.size, g->cg);
    int64_t rows = (c1 - c0) * g->khw;
    const float *dyg = job->dy + (n * g->o + gi * g->og) * g->howo;
    const float *wt = job->w + gi * g->og * g->k + c0 * g->khw; /* W_g^T rows [c0, c1) */
    float *dxg = job->dx + (n * g->c + gi * g->cg) * g->hw;
    if (g->direct) {
        sgemm(CblasTrans, CblasNoTrans, rows, g->howo, g->og, wt, g->k, dyg, g->howo, 0,
              dxg + c0 * g->hw, g->hw);
        return;
    }
    memset(dxg + c0 * g->hw, 0, (size_t)((c1 - c0) * g->hw) * sizeof(float));
    for (int64_t band = 0; band < job->bands.count; band++) {
        int64_t y0 = band * job->bands.size, y1 = min64(y0 + job->bands.size, g->ho);
        int64_t ncols = (y1 - y0) * g->wo;
        sgemm(CblasTrans, CblasNoTrans, rows, ncols, g->og, wt, g->k, dyg + y0 * g->wo, g->howo,
              0, cols, ncols);
        col2im(g, cols, dxg, c0, c1, y0, y1);
    }
}

dr_status dr_cpu_conv2d_backward_input(dr_tensor *grad_in, const dr_tensor *grad_out,
                                       const dr_tensor *weight, const int64_t *stride,
                                       const int64_t *padding, const int64_t *dilation,
                                       int64_t groups) {
    conv_job job = {0};
    conv_geom *g = &job.g;
    *g = make_geom(grad_in->sizes, grad_out->sizes, weight->sizes[2], weight->sizes[3], stride,
                   padding, dilation, groups);
    if (g->n == 0 || g->c == 0 || g->hw == 0) return DR_OK;
    if (g->o == 0 || g->howo == 0) { /* no output: nothing flows back */
        memset(dr_tensor_data(grad_in), 0, (size_t)(g->n * g->c * g->hw) * sizeof(float));
        return DR_OK;
    }
    job.ctiles = channel_tiles(g);
    int64_t rows = job.ctiles.size * g->khw;
    job.bands = row_bands(g, rows, g->ho, BUF_FLOATS);
    job.dy = dr_tensor_data(grad_out);
    job.w = dr_tensor_data(weight);
    job.dx = dr_tensor_data(grad_in);
    int64_t buf = g->direct ? 0 : rows * job.bands.size * g->wo;
    return run_units(&job, g->n * g->groups * job.ctiles.count, input_unit, buf,
                     g->n * g->o * g->howo * g->k, "conv2d");
}

/* ---- backward: weight and bias ------------------------------------------------------- */

static void weight_unit(const conv_job *job, int64_t u, float *cols) {
    const conv_geom *g = &job->g;
    int64_t mi = u % job->mtiles.count, rest = u / job->mtiles.count;
    int64_t ci = rest % job->ctiles.count, gi = rest / job->ctiles.count;
    int64_t c0 = ci * job->ctiles.size, c1 = min64(c0 + job->ctiles.size, g->cg);
    int64_t m0 = mi * job->mtiles.size, m1 = min64(m0 + job->mtiles.size, g->og);
    int64_t rows = (c1 - c0) * g->khw;
    float *dwt = job->dw + (gi * g->og + m0) * g->k + c0 * g->khw;
    bool first = true;
    for (int64_t n = 0; n < g->n; n++) {
        const float *xg = job->x + (n * g->c + gi * g->cg) * g->hw;
        const float *dyt = job->dy + (n * g->o + gi * g->og + m0) * g->howo;
        for (int64_t band = 0; band < job->bands.count; band++) {
            int64_t y0 = band * job->bands.size, y1 = min64(y0 + job->bands.size, g->ho);
            int64_t ncols = (y1 - y0) * g->wo;
            const float *src = xg + c0 * g->hw + y0 * g->wo;
            int64_t ld = g->hw;
            if (!g->direct) {
                im2col(g, xg, cols, c0, c1, y0, y1);
                src = cols;
                ld = ncols;
            }
            sgemm(CblasNoTrans, CblasTrans, m1 - m0, rows, ncols, dyt + y0 * g->wo, g->howo, src,
                  ld, first ? 0.0f : 1.0f, dwt, g->k);
            first = false;
        }
    }
}

static void bias_grad(const conv_geom *g, const float *dy, float *db) {
#pragma omp parallel for schedule(static) if (g->n * g->o * g->howo > DR_CPU_PARALLEL_MIN)
    for (int64_t oc = 0; oc < g->o; oc++) {
        double s = 0;
        for (int64_t n = 0; n < g->n; n++) {
            const float *row = dy + (n * g->o + oc) * g->howo;
            for (int64_t p = 0; p < g->howo; p++) s += row[p];
        }
        db[oc] = (float)s;
    }
}

dr_status dr_cpu_conv2d_backward_weight(dr_tensor *grad_weight, dr_tensor *grad_bias,
                                        const dr_tensor *grad_out, const dr_tensor *in,
                                        const int64_t *stride, const int64_t *padding,
                                        const int64_t *dilation, int64_t groups) {
    conv_job job = {0};
    conv_geom *g = &job.g;
    int64_t kh = grad_weight ? grad_weight->sizes[2] : 1;
    int64_t kw = grad_weight ? grad_weight->sizes[3] : 1;
    *g = make_geom(in->sizes, grad_out->sizes, kh, kw, stride, padding, dilation, groups);
    if (grad_bias) bias_grad(g, dr_tensor_data(grad_out), dr_tensor_data(grad_bias));
    if (!grad_weight || g->o == 0 || g->k == 0) return DR_OK;
    if (g->n == 0 || g->howo == 0) {
        memset(dr_tensor_data(grad_weight), 0, (size_t)(g->o * g->k) * sizeof(float));
        return DR_OK;
    }
    job.ctiles = channel_tiles(g);
    job.mtiles = out_tiles(g, g->groups * job.ctiles.count);
    int64_t rows = job.ctiles.size * g->khw;
    job.bands = row_bands(g, rows, g->ho, 4 * BUF_FLOATS);
    job.x = dr_tensor_data(in);
    job.dy = dr_tensor_data(grad_out);
    job.dw = dr_tensor_data(grad_weight);
    int64_t units = g->groups * job.ctiles.count * job.mtiles.count;
    int64_t buf = g->direct ? 0 : rows * job.bands.size * g->wo;
    return run_units(&job, units, weight_unit, buf, g->n * g->o * g->howo * g->k, "conv2d");
}
