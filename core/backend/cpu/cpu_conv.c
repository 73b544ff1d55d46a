/* conv2d kernels (float32, contiguous NCHW) by im2col + GEMM: cpu_gemm.c's GEMM
 * for convolutions with many channels (use_gemm below), OpenBLAS for the others
 * (cpu_conv_blas.c, with its own determinism rules); shared pieces in cpu_conv.h.
 *
 * For image n and group g, with Cg = C/groups input and Og = O/groups output
 * channels and GEMM depth K = Cg kh kw:
 *   cols[(c, i, j), (y, x)] = in[n, g Cg + c, y sh - ph + i dh, x sw - pw + j dw]  (0 outside)
 *   out[n, g Og : (g+1) Og] = W_g [Og, K] @ cols [K, Ho Wo] + bias
 *   dcols = W_g^T @ dY[n, g];  dX[n, g] = col2im(dcols): each input pixel sums the
 *           column entries it was copied to
 *   dW_g  = sum_n dY[n, g] @ cols_n^T, in chunks of pixels summed in order
 *   db[o] = sum_{n, y, x} dY[n, o, y, x]  (in double)
 * Here the columns are written straight into the GEMM's packed layout (B panels),
 * a block of rows at a time, so they are copied once and stay in cache.
 *
 * Determinism: the GEMM sums over its depth in blocks of a fixed size, in order,
 * whatever part of the product a call computes, so an output's bits depend only on
 * how the depth is cut into calls. The forward and the input gradient never cut it
 * (the forward's blocks are the GEMM's own), so their work may be split any way;
 * the weight gradient sums chunks of pixels whose bounds depend only on the shapes,
 * and col2im adds bands in a fixed order. Results do not depend on the thread
 * count. Each unit of work has its own buffer, so memory stays bounded however
 * large the image.
 *   forward:          unit = (image, group, band of output rows), all out channels
 *   grad input:       unit = (image, group, band of output rows); even bands first,
 *                     then odd ones, so two units never add into the same dX rows
 *   grad weight:      unit = (group, tile of input channels, tile of out channels),
 *                     chunks summed in order */
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "cpu_conv.h"

enum {
    BAND_COLS = 256,          /* output pixels per band (the GEMM's n, or its depth) */
    DCOLS_FLOATS = 1 << 22,   /* the input gradient's columns per unit, at most */
    GEMM_MIN = 128,           /* own GEMM where out channels and K (a group's) reach this */
};

/* Whether a convolution runs on cpu_gemm.c: a group with GEMM_MIN output channels
 * and GEMM_MIN rows of columns (K) or more; the rest run on OpenBLAS
 * (cpu_conv_blas.c), which is faster where packing would cost more than the
 * products (the GEMM copies the columns once for every few hundred flops only
 * when m and k are both large). Stable Diffusion's convolutions but conv_in and
 * conv_out take the GEMM; the tiny test models' take OpenBLAS. */
static bool use_gemm(const conv_geom *g) { return g->og >= GEMM_MIN && g->k >= GEMM_MIN; }

/* The output rows cut into bands of `rows` rows (at least one; the last band may
 * be shorter). */
static split row_bands(const conv_geom *g, int64_t rows) {
    split s;
    s.size = max64(1, min64(rows, g->ho));
    s.count = ceil_div(g->ho, s.size);
    return s;
}

/* dx [Cg, H, W] += col2im(cols) for input channels [c0, c1) and output rows [y0, y1),
 * rows (c, i, j) added in order. */
void dr_conv_col2im(const conv_geom *g, const float *cols, float *dx, int64_t c0, int64_t c1,
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

/* ---- running units ------------------------------------------------------------------ */

/* Runs fn(job, u, buf) for every unit u, with `buf_floats` of private buffer per
 * thread that runs any. The team always has every thread, idle or not: inside an
 * active parallel region OpenBLAS stays on one thread, outside it would not. Only
 * when the whole job is below CONV_SERIAL_MACS multiply-adds, which OpenBLAS computes on
 * one thread anyway (its SMP threshold), does it run here without waking the pool.
 * The buffers come from the CPU block cache, so a training step does not page-fault
 * them in afresh. */
dr_status dr_conv_run_units(const conv_job *job, int64_t units, conv_unit_fn fn,
                            int64_t buf_floats, int64_t macs, const char *op) {
    int nt = macs <= CONV_SERIAL_MACS ? 1 : omp_get_max_threads();
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

/* Rows [r0, r1) of the columns (r = (c, i, j), c an input channel of x [Cg, H, W])
 * for output rows [y0, y1), packed for dr_gemm_packed_b with depth k = r1 - r0:
 * B[r - r0][(y - y0) Wo + x] at dr_gemm_b_index(k, ., .), the last panel's padding
 * zeroed. */
static void im2col_panels(const conv_geom *g, const float *x, float *cols, int64_t r0,
                          int64_t r1, int64_t y0, int64_t y1) {
    int64_t ncols = (y1 - y0) * g->wo, k = r1 - r0, nr = DR_GEMM_NR;
    int64_t padded = (ncols + nr - 1) / nr * nr;
    for (int64_t r = r0; r < r1; r++) {
        int64_t c = r / g->khw, i = r / g->kw % g->kh, j = r % g->kw;
        int64_t x0 = j * g->dw - g->pw, lo, hi;
        valid_cols(g, x0, &lo, &hi);
        const float *xc = x + c * g->hw;
        for (int64_t y = y0; y < y1; y++) {
            int64_t iy = y * g->sh - g->ph + i * g->dh;
            bool inside = iy >= 0 && iy < g->h;
            const float *s = xc + (inside ? iy : 0) * g->w; /* s[x0 + ox sw] */
            for (int64_t ox = 0; ox < g->wo;) {
                int64_t p = (y - y0) * g->wo + ox, lane = p % nr;
                int64_t end = min64(ox + nr - lane, g->wo);
                /* this run: output columns [ox, end), one row of a panel; inside
                 * [a, b) they read the input, outside it they are padding */
                float *d = cols + dr_gemm_b_index(k, r - r0, p); /* d[t - ox] */
                int64_t a = inside ? max64(ox, min64(lo, end)) : end;
                int64_t b = inside ? max64(a, min64(hi, end)) : end;
                for (int64_t t = ox; t < a; t++) d[t - ox] = 0;
                if (g->sw == 1 && b - a == DR_GEMM_NR) /* a whole panel row: inlined */
                    memcpy(d, s + x0 + a, DR_GEMM_NR * sizeof(float));
                else if (g->sw == 1) for (int64_t t = a; t < b; t++) d[t - ox] = s[x0 + t];
                else for (int64_t t = a; t < b; t++) d[t - ox] = s[x0 + t * g->sw];
                for (int64_t t = b; t < end; t++) d[t - ox] = 0;
                ox = end;
            }
        }
        for (int64_t p = ncols; p < padded; p++) cols[dr_gemm_b_index(k, r - r0, p)] = 0;
    }
}

/* Unit = (image, group, band of output rows): its columns, then all the group's
 * output channels by dr_gemm_packed_b, whose bits do not depend on the band. */
static void forward_unit(const conv_job *job, int64_t u, float *cols) {
    const conv_geom *g = &job->g;
    int64_t band = u % job->bands.count, item = u / job->bands.count;
    int64_t n = item / g->groups, gi = item % g->groups;
    int64_t y0 = band * job->bands.size, y1 = min64(y0 + job->bands.size, g->ho);
    int64_t ncols = (y1 - y0) * g->wo;
    const float *xg = job->x + (n * g->c + gi * g->cg) * g->hw;
    float *yt = job->y + (n * g->o + gi * g->og) * g->howo + y0 * g->wo;
    for (int64_t oc = 0; oc < g->og; oc++) {
        float v = job->b ? job->b[gi * g->og + oc] : 0.0f, *row = yt + oc * g->howo;
        for (int64_t p = 0; p < ncols; p++) row[p] = v;
    }
    /* a block of DR_GEMM_KC rows of columns at a time (it stays in L2), the blocks
     * the GEMM would cut itself: the same sums */
    const float *wg = job->w + gi * g->og * g->k;
    for (int64_t r0 = 0; r0 < g->k; r0 += DR_GEMM_KC) {
        int64_t r1 = min64(r0 + DR_GEMM_KC, g->k);
        im2col_panels(g, xg, cols, r0, r1, y0, y1);
        dr_gemm_packed_b(g->og, ncols, r1 - r0, wg + r0, g->k, 1, cols, yt, g->howo, false);
    }
}

dr_status dr_cpu_conv2d(dr_tensor *out, const dr_tensor *in, const dr_tensor *weight,
                        const dr_tensor *bias, const int64_t *stride, const int64_t *padding,
                        const int64_t *dilation, int64_t groups) {
    conv_job job = {0};
    conv_geom *g = &job.g;
    *g = make_geom(in->sizes, out->sizes, weight->sizes[2], weight->sizes[3], stride, padding,
                   dilation, groups);
    if (g->n == 0 || g->o == 0 || g->howo == 0) return DR_OK;
    job.x = dr_tensor_data(in);
    job.w = dr_tensor_data(weight);
    job.b = bias ? dr_tensor_data(bias) : NULL;
    job.y = dr_tensor_data(out);
    if (!use_gemm(g)) return dr_conv_blas_forward(&job);
    int64_t items = g->n * g->groups, nt = omp_get_max_threads();
    /* bands of about BAND_COLS output pixels, halved (down to one row or 64
     * pixels) while there are fewer than two units a thread: the bits do not
     * depend on the bands, so the cut may follow the thread count */
    int64_t band_rows = ceil_div(BAND_COLS, g->wo);
    while (items * ceil_div(g->ho, band_rows) < 2 * nt && band_rows > 1 &&
           (band_rows / 2) * g->wo >= 64)
        band_rows /= 2;
    job.bands = row_bands(g, band_rows);
    int64_t units = items * job.bands.count;
    int64_t buf = dr_gemm_b_rows(min64(g->k, DR_GEMM_KC) + 1) *
                  ceil_div(job.bands.size * g->wo, DR_GEMM_NR) * DR_GEMM_NR;
    return dr_conv_run_units(&job, units, forward_unit, buf, g->n * g->o * g->howo * g->k,
                             "conv2d");
}

/* ---- backward: input ---------------------------------------------------------------- */

/* Unit = (image, group, band of output rows): dcols = W_g^T dY for the band, all
 * K rows, by dr_gemm_packed_ab (W_g^T packed once a call, the band of dY packed
 * here), then col2im adds dcols into dX. Bands next to each other touch
 * the same input rows, so the even bands run first, then the odd ones (bands are
 * tall enough that bands two apart never meet): every dX element gets its sums
 * in an order fixed by the shapes. A direct convolution writes dX in place. */
static void input_unit(const conv_job *job, int64_t u, float *buf) {
    const conv_geom *g = &job->g;
    int64_t per_item = g->direct ? job->bands.count : (job->bands.count - job->phase + 1) / 2;
    int64_t j = u % per_item, item = u / per_item;
    int64_t band = g->direct ? j : job->phase + 2 * j;
    int64_t n = item / g->groups, gi = item % g->groups;
    int64_t y0 = band * job->bands.size, y1 = min64(y0 + job->bands.size, g->ho);
    int64_t ncols = (y1 - y0) * g->wo;
    const float *dyg = job->dy + (n * g->o + gi * g->og) * g->howo + y0 * g->wo;
    float *dxg = job->dx + (n * g->c + gi * g->cg) * g->hw;
    float *packed = buf, *c = dxg + y0 * g->wo;
    int64_t ldc = g->hw;
    if (!g->direct) {
        c = buf + dr_gemm_b_rows(g->og) * ceil_div(ncols, DR_GEMM_NR) * DR_GEMM_NR;
        ldc = ncols;
    }
    dr_gemm_pack_b(packed, dyg, g->howo, 1, g->og, ncols);
    dr_gemm_packed_ab(g->k, ncols, g->og, job->pa + gi * job->pa_group, g->og, packed, c, ldc,
                      true);
    if (!g->direct) dr_conv_col2im(g, c, dxg, 0, g->cg, y0, y1);
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
    float *dx = dr_tensor_data(grad_in);
    if (g->o == 0 || g->howo == 0) { /* no output: nothing flows back */
        memset(dx, 0, (size_t)(g->n * g->c * g->hw) * sizeof(float));
        return DR_OK;
    }
    job.dy = dr_tensor_data(grad_out);
    job.w = dr_tensor_data(weight);
    job.dx = dx;
    if (!use_gemm(g)) return dr_conv_blas_backward_input(&job);
    if (!g->direct) /* col2im adds into it */
        memset(dx, 0, (size_t)(g->n * g->c * g->hw) * sizeof(float));
    /* bands of about BAND_COLS pixels whose dcols fit DCOLS_FLOATS, at least
     * tall enough that bands two apart touch disjoint input rows:
     * (kh - 1) dh < (rows + 1) sh; the cut depends on the shapes alone */
    int64_t band_rows = ceil_div(BAND_COLS, g->wo);
    band_rows = min64(band_rows, DCOLS_FLOATS / max64(1, g->k * g->wo));
    if (!g->direct) band_rows = max64(band_rows, (g->kh - 1) * g->dh / g->sh);
    job.bands = row_bands(g, band_rows);
    int64_t items = g->n * g->groups;
    int64_t padded = ceil_div(job.bands.size * g->wo, DR_GEMM_NR) * DR_GEMM_NR;
    int64_t buf = dr_gemm_b_rows(g->og) * padded + (g->direct ? 0 : g->k * job.bands.size * g->wo);
    int64_t macs = g->n * g->o * g->howo * g->k;
    job.pa_group = ceil_div(g->k, DR_GEMM_MR) * DR_GEMM_MR * g->og;
    size_t pa_bytes = (size_t)(g->groups * job.pa_group) * sizeof(float);
    void *pa_mem = NULL;
    if (dr_cpu_alloc(0, pa_bytes, &pa_mem) != DR_OK)
        return dr_fail(DR_ERR_OOM, "conv2d: cannot allocate %zu bytes for the packed weight",
                       pa_bytes);
    float *pa = pa_mem;
    /* W_g^T (A[r][o] = W[o K + r]), in pieces of 16 panels (96 rows r) on the team */
    int64_t pieces = ceil_div(g->k, 16 * DR_GEMM_MR);
#pragma omp parallel for schedule(static) if (macs > CONV_SERIAL_MACS)
    for (int64_t t = 0; t < g->groups * pieces; t++) {
        int64_t gi = t / pieces, r0 = t % pieces * 16 * DR_GEMM_MR;
        dr_gemm_pack_a(pa + gi * job.pa_group + r0 * g->og, g->og, 0,
                       job.w + gi * g->og * g->k + r0, 1, g->k, min64(16 * DR_GEMM_MR, g->k - r0),
                       g->og);
    }
    job.pa = pa;
    dr_status st = DR_OK;
    for (job.phase = 0; job.phase < (g->direct ? 1 : 2); job.phase++) {
        int64_t per_item = g->direct ? job.bands.count : (job.bands.count - job.phase + 1) / 2;
        if (per_item > 0 && st == DR_OK)
            st = dr_conv_run_units(&job, items * per_item, input_unit, buf, macs, "conv2d");
    }
    dr_cpu_dealloc(0, pa_mem, pa_bytes);
    return st;
}

/* ---- backward: weight and bias ------------------------------------------------------- */

/* Rows r = (c, i, j) of the columns for input channels [c0, c1) and output rows
 * [y0, y1), transposed and packed as the B of dr_gemm_packed_ab for `depth` rows of
 * B: B[p0 + (y - y0) Wo + x][r - c0 kh kw], in panels of DR_GEMM_NR columns (the
 * last one padded with zeros). */
static void im2col_transposed(const conv_geom *g, const float *x, float *cols, int64_t depth,
                              int64_t p0, int64_t c0, int64_t c1, int64_t y0, int64_t y1) {
    int64_t ncols = (y1 - y0) * g->wo, rows = (c1 - c0) * g->khw, nr = DR_GEMM_NR;
    for (int64_t rr = 0; rr < ceil_div(rows, nr) * nr; rr++) {
        float *d = cols + dr_gemm_b_index(depth, p0, rr); /* d[p nr] */
        if (rr >= rows) {
            for (int64_t p = 0; p < ncols; p++) d[p * nr] = 0;
            continue;
        }
        int64_t r = c0 * g->khw + rr;
        int64_t c = r / g->khw, i = r / g->kw % g->kh, j = r % g->kw;
        int64_t x0 = j * g->dw - g->pw, lo, hi;
        valid_cols(g, x0, &lo, &hi);
        for (int64_t y = y0; y < y1; y++, d += g->wo * nr) {
            int64_t iy = y * g->sh - g->ph + i * g->dh;
            if (iy < 0 || iy >= g->h) {
                for (int64_t ox = 0; ox < g->wo; ox++) d[ox * nr] = 0;
                continue;
            }
            const float *s = x + c * g->hw + iy * g->w; /* s[x0 + ox sw] */
            for (int64_t ox = 0; ox < lo; ox++) d[ox * nr] = 0;
            for (int64_t ox = lo; ox < hi; ox++) d[ox * nr] = s[x0 + ox * g->sw];
            for (int64_t ox = hi; ox < g->wo; ox++) d[ox * nr] = 0;
        }
    }
}

/* The weight gradient sums over images and output pixels in chunks of about
 * BAND_COLS pixels: a band of one image, or whole images when an image has
 * fewer pixels (several images in one chunk); fixed by the shapes. Chunk `ch`
 * is the segments (image n, output rows [y0, y1)) that chunk_segment(job, ch, s, ...)
 * gives for s = 0, 1, ... until it returns false. */
static bool chunk_segment(const conv_job *job, int64_t ch, int64_t s, int64_t *n, int64_t *y0,
                          int64_t *y1) {
    const conv_geom *g = &job->g;
    if (job->bands.count > 1) { /* one band */
        if (s > 0) return false;
        *n = ch / job->bands.count;
        *y0 = ch % job->bands.count * job->bands.size;
        *y1 = min64(*y0 + job->bands.size, g->ho);
        return true;
    }
    *n = ch * job->chunk_images + s;
    *y0 = 0;
    *y1 = g->ho;
    return s < job->chunk_images && *n < g->n;
}

/* The pixels of chunk `ch` (its depth in the GEMM). */
static int64_t chunk_depth(const conv_job *job, int64_t ch) {
    int64_t depth = 0, n, y0, y1;
    for (int64_t s = 0; chunk_segment(job, ch, s, &n, &y0, &y1); s++)
        depth += (y1 - y0) * job->g.wo;
    return depth;
}

/* Unit = (group, tile of input channels, tile of output channels): for every chunk
 * in order, dW_tile += dY_tile cols^T by dr_gemm_packed_ab (dY packed as A once for
 * all units, the columns transposed as B). */
static void weight_unit(const conv_job *job, int64_t u, float *pb) {
    const conv_geom *g = &job->g;
    weight_tile t = weight_tile_of(job, u);
    int64_t gi = t.gi, c0 = t.c0, c1 = t.c1, m0 = t.m0, m1 = t.m1, rows = (c1 - c0) * g->khw;
    float *dwt = job->dw + (gi * g->og + m0) * g->k + c0 * g->khw;
    for (int64_t ch = 0; ch < job->chunks; ch++) {
        int64_t depth = chunk_depth(job, ch), n, y0, y1;
        for (int64_t s = 0, p0 = 0; chunk_segment(job, ch, s, &n, &y0, &y1); s++) {
            const float *xg = job->x + (n * g->c + gi * g->cg) * g->hw;
            im2col_transposed(g, xg, pb, depth, p0, c0, c1, y0, y1);
            p0 += (y1 - y0) * g->wo;
        }
        const float *pa = job->pa + (ch * g->groups + gi) * job->pa_group + m0 * depth;
        dr_gemm_packed_ab(m1 - m0, rows, depth, pa, depth, pb, dwt, g->k, ch == 0);
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
    job.x = dr_tensor_data(in);
    job.dy = dr_tensor_data(grad_out);
    job.dw = dr_tensor_data(grad_weight);
    if (!use_gemm(g)) return dr_conv_blas_backward_weight(&job);
    job.ctiles = channel_tiles(g);
    job.mtiles = out_tiles(g, g->groups * job.ctiles.count);
    /* whole panels of the packed dY */
    job.mtiles.size = ceil_div(job.mtiles.size, DR_GEMM_MR) * DR_GEMM_MR;
    job.mtiles.count = ceil_div(g->og, job.mtiles.size);
    int64_t rows = job.ctiles.size * g->khw;
    job.bands = row_bands(g, ceil_div(BAND_COLS, g->wo));
    job.chunk_images = job.bands.count > 1 ? 1 : max64(1, BAND_COLS / g->howo);
    job.chunks = job.bands.count > 1 ? g->n * job.bands.count : ceil_div(g->n, job.chunk_images);
    int64_t max_depth = job.bands.count > 1 ? job.bands.size * g->wo /* a band */
                                            : min64(job.chunk_images, g->n) * g->howo;
    int64_t units = g->groups * job.ctiles.count * job.mtiles.count;
    int64_t buf = ceil_div(rows, DR_GEMM_NR) * DR_GEMM_NR * dr_gemm_b_rows(max_depth);
    int64_t macs = g->n * g->o * g->howo * g->k;
    /* dY packed once as A panels, per chunk and group, shared by the units */
    job.pa_group = ceil_div(g->og, DR_GEMM_MR) * DR_GEMM_MR * max_depth;
    int64_t slabs = job.chunks * g->groups;
    size_t pa_bytes = (size_t)(slabs * job.pa_group) * sizeof(float);
    void *pa_mem = NULL;
    if (dr_cpu_alloc(0, pa_bytes, &pa_mem) != DR_OK)
        return dr_fail(DR_ERR_OOM, "conv2d: cannot allocate %zu bytes to pack grad_out",
                       pa_bytes);
    float *pa = pa_mem;
#pragma omp parallel for schedule(static) if (macs > CONV_SERIAL_MACS)
    for (int64_t sl = 0; sl < slabs; sl++) {
        int64_t gi = sl % g->groups, ch = sl / g->groups, depth = chunk_depth(&job, ch), n, y0, y1;
        for (int64_t s = 0, p0 = 0; chunk_segment(&job, ch, s, &n, &y0, &y1); s++) {
            dr_gemm_pack_a(pa + sl * job.pa_group, depth, p0,
                           job.dy + (n * g->o + gi * g->og) * g->howo + y0 * g->wo, g->howo, 1,
                           g->og, (y1 - y0) * g->wo);
            p0 += (y1 - y0) * g->wo;
        }
    }
    job.pa = pa;
    dr_status st = dr_conv_run_units(&job, units, weight_unit, buf, macs, "conv2d");
    dr_cpu_dealloc(0, pa_mem, pa_bytes);
    return st;
}
