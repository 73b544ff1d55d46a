/* conv2d on OpenBLAS, for convolutions with few channels (cpu_conv.c sends the
 * others to its own GEMM): im2col into a column buffer, then cblas_sgemm.
 *
 * Determinism: OpenBLAS gives different bits for the same product when it splits
 * it over a different number of threads, or when it is given different sizes. So
 * the work is cut into units whose shapes depend only on the problem (bands of
 * output rows, tiles of channels), every unit runs single-threaded BLAS
 * (OpenBLAS's OpenMP build does inside a parallel region), and threads only
 * choose which units they run: results do not depend on the thread count.
 *   forward:          unit = (image, group, band of output rows, tile of out channels)
 *   grad input:       unit = (image, group, tile of input channels), bands in order;
 *                     tiles own disjoint planes of dX, so col2im needs no atomics
 *   grad weight:      unit = (group, tile of input channels, tile of out channels),
 *                     images and bands summed in order */
#include <string.h>
#include <cblas.h>

#include "cpu_conv.h"

enum {
    FWD_BAND_COLS = 256,      /* output pixels per forward band (GEMM n) */
    BUF_FLOATS = 1 << 20,     /* column buffer per unit of the backward passes */
    FWD_BUF_FLOATS = 1 << 22, /* ... and the forward's, which holds all K rows */
};

/* Bands of about `band_rows` output rows whose columns (`rows` of them each) fit
 * `budget` floats (a direct convolution reads its columns in place). */
static split row_bands(const conv_geom *g, int64_t rows, int64_t band_rows, int64_t budget) {
    if (!g->direct) band_rows = min64(band_rows, budget / max64(1, rows * g->wo));
    band_rows = max64(1, band_rows);
    return split_in(g->ho, ceil_div(g->ho, band_rows));
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

static inline void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n,
                         int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                         float beta, float *c, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k, 1.0f, a,
                (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
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

dr_status dr_conv_blas_forward(conv_job *job) {
    const conv_geom *g = &job->g;
    int64_t items = g->n * g->groups;
    job->bands = row_bands(g, g->k, ceil_div(FWD_BAND_COLS, g->wo), FWD_BUF_FLOATS);
    job->mtiles = out_tiles(g, items * job->bands.count);
    int64_t units = items * job->bands.count * job->mtiles.count;
    int64_t buf = g->direct ? 0 : g->k * job->bands.size * g->wo;
    return dr_conv_run_units(job, units, forward_unit, buf, g->n * g->o * g->howo * g->k,
                             "conv2d");
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
        dr_conv_col2im(g, cols, dxg, c0, c1, y0, y1);
    }
}

dr_status dr_conv_blas_backward_input(conv_job *job) {
    const conv_geom *g = &job->g;
    job->ctiles = channel_tiles(g);
    int64_t rows = job->ctiles.size * g->khw;
    job->bands = row_bands(g, rows, g->ho, BUF_FLOATS);
    int64_t buf = g->direct ? 0 : rows * job->bands.size * g->wo;
    return dr_conv_run_units(job, g->n * g->groups * job->ctiles.count, input_unit, buf,
                             g->n * g->o * g->howo * g->k, "conv2d");
}

/* ---- backward: weight ---------------------------------------------------------------- */

static void weight_unit(const conv_job *job, int64_t u, float *cols) {
    const conv_geom *g = &job->g;
    weight_tile t = weight_tile_of(job, u);
    int64_t gi = t.gi, c0 = t.c0, c1 = t.c1, m0 = t.m0, m1 = t.m1, rows = (c1 - c0) * g->khw;
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

dr_status dr_conv_blas_backward_weight(conv_job *job) {
    const conv_geom *g = &job->g;
    job->ctiles = channel_tiles(g);
    job->mtiles = out_tiles(g, g->groups * job->ctiles.count);
    int64_t rows = job->ctiles.size * g->khw;
    job->bands = row_bands(g, rows, g->ho, 4 * BUF_FLOATS);
    int64_t units = g->groups * job->ctiles.count * job->mtiles.count;
    int64_t buf = g->direct ? 0 : rows * job->bands.size * g->wo;
    return dr_conv_run_units(job, units, weight_unit, buf, g->n * g->o * g->howo * g->k,
                             "conv2d");
}
