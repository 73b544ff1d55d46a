/* conv2d on the CPU, shared by its two paths: cpu_conv.c (the GEMM of cpu_gemm.c,
 * for convolutions with many channels) and cpu_conv_blas.c (OpenBLAS, for the
 * rest); the geometry, the split of the work into units, and running the units on
 * the OpenMP team. The math and the determinism rules are in cpu_conv.c's header. */
#ifndef DR_CPU_CONV_H
#define DR_CPU_CONV_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu_internal.h"

enum {
    CONV_SERIAL_MACS = 1 << 16, /* jobs this small run on the calling thread */
    CONV_ROWS_PER_TILE = 256,   /* K rows per input-channel tile (weight gradient, ...) */
    CONV_MIN_MTILE = 128,       /* output channels per tile, at least */
    CONV_MIN_UNITS = 4,         /* out-channel tiles are cut until there are this many units */
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

static inline split split_in(int64_t total, int64_t parts) {
    split s;
    parts = max64(1, min64(parts, total));
    s.size = total > 0 ? ceil_div(total, parts) : 1;
    s.count = total > 0 ? ceil_div(total, s.size) : 1;
    return s;
}

static inline conv_geom make_geom(const int64_t *in_sizes, const int64_t *out_sizes,
                                  int64_t kh, int64_t kw, const int64_t *stride,
                                  const int64_t *padding, const int64_t *dilation,
                                  int64_t groups) {
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

/* Output columns x in [lo, hi) read input column x sw + x0 inside [0, w). */
static inline void valid_cols(const conv_geom *g, int64_t x0, int64_t *lo, int64_t *hi) {
    int64_t l = x0 >= 0 ? 0 : ceil_div(-x0, g->sw);
    int64_t h = g->w - x0 <= 0 ? 0 : ceil_div(g->w - x0, g->sw);
    l = min64(l, g->wo);
    h = min64(h, g->wo);
    *lo = l;
    *hi = max64(h, l);
}

/* Tiles of input channels of about CONV_ROWS_PER_TILE K rows each. */
static inline split channel_tiles(const conv_geom *g) {
    return split_in(g->cg, g->k / CONV_ROWS_PER_TILE);
}

/* Tiles of output channels: more only while there are fewer than CONV_MIN_UNITS units. */
static inline split out_tiles(const conv_geom *g, int64_t other_units) {
    return split_in(g->og, min64(ceil_div(g->og, CONV_MIN_MTILE),
                                 ceil_div(CONV_MIN_UNITS, other_units)));
}

typedef struct conv_job {
    conv_geom g;
    split bands, ctiles, mtiles;
    int64_t phase;      /* backward input: 0 even bands, 1 odd ones */
    const float *pa;    /* packed A: W_g^T (backward input), dY (weight) */
    int64_t pa_group;   /* floats of pa per group (and chunk: weight) */
    int64_t chunks, chunk_images; /* weight: chunks of pixels (chunk_segment) */
    const float *x, *w, *b, *dy;
    float *y, *dx, *dw;
} conv_job;

/* A weight-gradient unit u: group gi, input channels [c0, c1), out channels [m0, m1). */
typedef struct weight_tile {
    int64_t gi, c0, c1, m0, m1;
} weight_tile;

static inline weight_tile weight_tile_of(const conv_job *job, int64_t u) {
    weight_tile t;
    int64_t mi = u % job->mtiles.count, rest = u / job->mtiles.count;
    int64_t ci = rest % job->ctiles.count;
    t.gi = rest / job->ctiles.count;
    t.c0 = ci * job->ctiles.size, t.c1 = min64(t.c0 + job->ctiles.size, job->g.cg);
    t.m0 = mi * job->mtiles.size, t.m1 = min64(t.m0 + job->mtiles.size, job->g.og);
    return t;
}

typedef void (*conv_unit_fn)(const conv_job *job, int64_t unit, float *buf);

/* Runs fn(job, u, buf) for every unit u, with buf_floats floats of private buffer
 * per thread that runs any (cpu_conv.c). */
dr_status dr_conv_run_units(const conv_job *job, int64_t units, conv_unit_fn fn,
                            int64_t buf_floats, int64_t macs, const char *op);
/* dx [Cg, H, W] += col2im(cols) for input channels [c0, c1) and output rows [y0, y1),
 * rows (c, i, j) added in order (cpu_conv.c). */
void dr_conv_col2im(const conv_geom *g, const float *cols, float *dx, int64_t c0, int64_t c1,
                    int64_t y0, int64_t y1);

/* The OpenBLAS path (cpu_conv_blas.c): job has the geometry and the tensors' data;
 * sizes are non-empty (the callers in cpu_conv.c return early otherwise). */
dr_status dr_conv_blas_forward(conv_job *job);
dr_status dr_conv_blas_backward_input(conv_job *job);
dr_status dr_conv_blas_backward_weight(conv_job *job);

#endif
