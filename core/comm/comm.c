/* Collectives on tensors (diffrl.h "Collectives"): argument checks, the one-rank
 * world, dtype staging (float16/bfloat16 reduce in float32, strided tensors through a
 * contiguous copy), the call descriptions ranks compare, and the dispatch to MPI
 * (CPU tensors, comm_mpi.c) or NCCL (CUDA tensors, comm_nccl.c). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_internal.h"
#include "../tensor/tensor_internal.h"
#include "../util/error.h"
#include "../util/half.h"

static dr_comm world;
static int world_ready;
static const double default_timeout_s = 300.0;

const char *dr_coll_name(dr_coll c) {
    static const char *const names[] = {"all_reduce", "all_gather", "broadcast", "barrier"};
    return c >= 0 && c <= DR_COLL_BARRIER ? names[c] : "collective";
}

double dr_comm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dr_comm_backoff(long polls) {
    if (polls < 64) return;
    long ns = polls < 1000 ? 20000 : polls < 5000 ? 200000 : 1000000; /* 20 us .. 1 ms */
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

dr_status dr_comm_timeout_error(dr_comm *c, const char *what, const char *detail) {
    c->broken = c->failed = 1;
    return dr_fail(DR_ERR_COMM,
                   "%s: rank %d of %d timed out after %g s (dist.timeout_s) waiting for the "
                   "other ranks%s%s: a rank died, is stuck, or called another collective; every "
                   "rank will be ended (MPI_Abort) when this one exits",
                   what, c->rank, c->size, c->timeout_s, detail ? ": " : "", detail ? detail : "");
}

/* ---- the world ----------------------------------------------------------------- */

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end = NULL;
    long x = strtol(v, &end, 10);
    return (end && *end == '\0' && x >= 0 && x < (1L << 30)) ? (int)x : fallback;
}

static dr_status init_world(dr_comm *c) {
    memset(c, 0, sizeof *c);
    c->timeout_s = default_timeout_s;
    c->size = c->local_size = 1;
    c->kind = DR_COMM_SINGLE;
    snprintf(c->backend, sizeof c->backend, "single");
#ifdef DIFFRL_WITH_MPI
    if (dr_mpi_launched()) {
        DR_TRY(dr_mpi_world_init(c));
        snprintf(c->backend, sizeof c->backend, "mpi");
        return DR_OK;
    }
#endif
    int slurm_tasks = env_int("SLURM_STEP_NUM_TASKS", 1);
    int ompi_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
#ifdef DIFFRL_WITH_MPI
    static const char *const why = "no MPI launcher gave it a rank (no PMIX_RANK or PMI_RANK: under "
                                   "Slurm use srun --mpi=pmix, see docs/scaling.md)";
#else
    static const char *const why = "this libdiffrl was built without MPI: rebuild with "
                                   "-DDIFFRL_MPI=ON, or run one task";
#endif
    if (slurm_tasks > 1 || ompi_size > 1)
        return dr_fail(DR_ERR_COMM, "comm: this process is task %d of %d of a parallel job (%s) but %s",
                       slurm_tasks > 1 ? env_int("SLURM_PROCID", 0) : env_int("OMPI_COMM_WORLD_RANK", 0),
                       slurm_tasks > 1 ? slurm_tasks : ompi_size,
                       slurm_tasks > 1 ? "SLURM_STEP_NUM_TASKS" : "OMPI_COMM_WORLD_SIZE", why);
    int env_size = env_int("WORLD_SIZE", 1);
    if (env_size > 1) { /* torchrun: NCCL bootstraps from MASTER_ADDR / MASTER_PORT */
        int rank = env_int("RANK", -1);
        if (rank < 0 || rank >= env_size)
            return dr_fail(DR_ERR_COMM,
                           "comm: WORLD_SIZE=%d but RANK is missing or not in [0, %d)", env_size,
                           env_size);
        c->kind = DR_COMM_ENV;
        c->rank = rank;
        c->size = env_size;
        c->local_rank = env_int("LOCAL_RANK", 0);
        c->local_size = env_int("LOCAL_WORLD_SIZE", 1);
        snprintf(c->backend, sizeof c->backend, "env");
    }
    return DR_OK;
}

dr_status dr_comm_world(double timeout_s, dr_comm **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "comm_world: out is NULL");
    *out = NULL;
    if (!(timeout_s >= 0))
        return dr_fail(DR_ERR_ARG, "comm_world: timeout must be >= 0 seconds (0: keep), got %g",
                       timeout_s);
    if (!world_ready) {
        DR_TRY(init_world(&world));
        world_ready = 1;
    }
    if (timeout_s > 0) world.timeout_s = timeout_s;
    *out = &world;
    return DR_OK;
}

int dr_comm_rank(const dr_comm *c) { return c ? c->rank : 0; }
int dr_comm_size(const dr_comm *c) { return c ? c->size : 1; }
int dr_comm_local_rank(const dr_comm *c) { return c ? c->local_rank : 0; }
int dr_comm_local_size(const dr_comm *c) { return c ? c->local_size : 1; }
const char *dr_comm_backend(const dr_comm *c) { return c ? c->backend : "none"; }
double dr_comm_timeout(const dr_comm *c) { return c ? c->timeout_s : 0; }

dr_status dr_comm_set_timeout(dr_comm *c, double timeout_s) {
    if (!c) return dr_fail(DR_ERR_ARG, "comm_set_timeout: communicator is NULL");
    if (!(timeout_s > 0) || timeout_s > 1e9)
        return dr_fail(DR_ERR_ARG, "comm_set_timeout: timeout must be in (0, 1e9] seconds, got %g",
                       timeout_s);
    c->timeout_s = timeout_s;
    return DR_OK;
}

void dr_comm_mark_failed(dr_comm *c) {
    if (c) c->failed = 1;
}

void dr_comm_abort(dr_comm *c, int32_t code) {
    fflush(stdout);
    fflush(stderr);
    if (code == 0) code = 1;
#ifdef DIFFRL_WITH_NCCL
    if (c && c->nccl) dr_nccl_abort(c);
#endif
#ifdef DIFFRL_WITH_MPI
    if (c && c->kind == DR_COMM_MPI) dr_mpi_abort(code);
#endif
    exit(code);
}

dr_status dr_comm_enable_nccl(dr_comm *c, int32_t device) {
    if (!c) return dr_fail(DR_ERR_ARG, "comm_enable_nccl: communicator is NULL");
#ifdef DIFFRL_WITH_NCCL
    if (c->nccl) return DR_OK;
    DR_TRY(dr_nccl_init(c, device));
    snprintf(c->backend, sizeof c->backend, c->kind == DR_COMM_MPI ? "mpi+nccl" : "nccl");
    return DR_OK;
#else
    (void)device;
    return dr_fail(DR_ERR_UNSUPPORTED,
                   "comm_enable_nccl: this libdiffrl was built without CUDA and NCCL "
                   "(-DDIFFRL_CUDA=ON with nccl.h and libnccl found)");
#endif
}

/* ---- checks and call descriptions ------------------------------------------- */

static const char *op_name(int op) {
    return op == DR_REDUCE_SUM ? "sum" : op == DR_REDUCE_MEAN ? "mean" : op == DR_REDUCE_MAX ? "max" : "?";
}

static dr_status check_comm(dr_comm *c, const char *what) {
    if (!c) return dr_fail(DR_ERR_ARG, "%s: communicator is NULL", what);
    if (c->broken)
        return dr_fail(DR_ERR_COMM,
                       "%s: rank %d: the communicator is broken by an earlier timed out or "
                       "mismatched collective; no further collectives can run", what, c->rank);
    return DR_OK;
}

static dr_status check_op(const char *what, int32_t op, int floating) {
    if (op != DR_REDUCE_SUM && op != DR_REDUCE_MEAN && op != DR_REDUCE_MAX)
        return dr_fail(DR_ERR_ARG, "%s: unknown reduce op %d (sum 0, mean 1, max 2)", what, op);
    if (op == DR_REDUCE_MEAN && !floating)
        return dr_fail(DR_ERR_DTYPE, "%s: op mean needs a floating point dtype (use sum)", what);
    return DR_OK;
}

/* "float32 [3, 4] sum" for messages. */
static void desc_text(const dr_comm_desc *d, char *buf, size_t room) {
    int kind = (int)d->w[1];
    int n = snprintf(buf, room, "%s #%lld", dr_coll_name((dr_coll)kind), (long long)d->w[0]);
    if (kind == DR_COLL_BARRIER || n < 0 || (size_t)n >= room) return;
    const char *dt = d->w[2] == -1 ? "float64 (host)" : d->w[2] == -2 ? "bytes" : dr_dtype_name((int32_t)d->w[2]);
    int64_t sizes[DR_MAX_DIMS];
    int32_t nd = (int32_t)(d->w[4] < 0 ? 0 : d->w[4] > DR_MAX_DIMS ? DR_MAX_DIMS : d->w[4]);
    for (int32_t i = 0; i < nd; i++) sizes[i] = d->w[6 + i];
    n += snprintf(buf + n, room - (size_t)n, " of %s %s", dt,
                  d->w[5] < 0 ? "(any length)" : dr_sizes_str(sizes, nd));
    if ((size_t)n >= room) return;
    if (kind == DR_COLL_ALL_REDUCE) snprintf(buf + n, room - (size_t)n, ", %s", op_name((int)d->w[3]));
    if (kind == DR_COLL_BROADCAST) snprintf(buf + n, room - (size_t)n, " from rank %lld", (long long)d->w[3]);
}

static dr_comm_desc make_desc(dr_comm *c, dr_coll kind, int64_t dtype, int64_t op_or_root,
                              const int64_t *sizes, int32_t ndim, int64_t numel) {
    dr_comm_desc d;
    memset(&d, 0, sizeof d);
    d.w[0] = c->seq++;
    d.w[1] = kind;
    d.w[2] = dtype;
    d.w[3] = op_or_root;
    d.w[4] = ndim;
    d.w[5] = numel;
    for (int32_t i = 0; i < ndim && i < DR_MAX_DIMS; i++) d.w[6 + i] = sizes[i];
    return d;
}

/* The MPI path compares every rank's description before moving data. */
static dr_status agree(dr_comm *c, const char *what, const dr_comm_desc *d) {
#ifdef DIFFRL_WITH_MPI
    if (c->kind == DR_COMM_MPI && c->size > 1) return dr_mpi_check_desc(c, what, d);
#endif
    (void)c, (void)what, (void)d;
    return DR_OK;
}

void dr_comm_describe(const dr_comm_desc *d, char *buf, size_t room) { desc_text(d, buf, room); }

static dr_status need_mpi(dr_comm *c, const char *what) {
    if (c->size == 1 || c->kind == DR_COMM_MPI) return DR_OK;
    return dr_fail(DR_ERR_UNSUPPORTED,
                   "%s: rank %d of %d: CPU collectives need MPI, and this job was started by "
                   "torchrun's environment (WORLD_SIZE) without an MPI launcher: start it with "
                   "`diffrl launch`, mpirun or srun", what, c->rank, c->size);
}

static dr_comm_elem elem_of(int32_t dtype) {
    switch (dtype) {
    case DR_F32: case DR_F16: case DR_BF16: return DR_ELEM_F32;
    case DR_I64: return DR_ELEM_I64;
    case DR_I32: return DR_ELEM_I32;
    default: return DR_ELEM_BYTE;
    }
}

/* Data movement on host buffers for the current world. */
static dr_status host_all_reduce(dr_comm *c, const char *what, void *buf, int64_t n,
                                 dr_comm_elem elem, int op) {
    if (c->size == 1 || n == 0) return DR_OK;
#ifdef DIFFRL_WITH_MPI
    return dr_mpi_all_reduce(c, what, buf, n, elem, op);
#else
    (void)buf, (void)elem, (void)op;
    return need_mpi(c, what);
#endif
}

static dr_status host_all_gather(dr_comm *c, const char *what, const void *in, void *out,
                                 int64_t bytes) {
    if (c->size == 1) {
        if (bytes) memcpy(out, in, (size_t)bytes);
        return DR_OK;
    }
#ifdef DIFFRL_WITH_MPI
    return dr_mpi_all_gather(c, what, in, out, bytes);
#else
    (void)in, (void)out, (void)bytes;
    return need_mpi(c, what);
#endif
}

static dr_status host_broadcast(dr_comm *c, const char *what, void *buf, int64_t bytes, int root) {
    if (c->size == 1 || bytes == 0) return DR_OK;
#ifdef DIFFRL_WITH_MPI
    return dr_mpi_broadcast(c, what, buf, bytes, root);
#else
    (void)buf, (void)root;
    return need_mpi(c, what);
#endif
}

/* ---- tensor collectives ------------------------------------------------------------ */

static dr_status check_cuda_tensor(dr_comm *c, const dr_tensor *t, const char *what) {
    if (!dr_tensor_is_contiguous(t))
        return dr_fail(DR_ERR_ARG, "%s: CUDA tensors must be contiguous (call :contiguous())", what);
    if (!c->nccl)
        return dr_fail(DR_ERR_DEVICE,
                       "%s: a CUDA tensor needs NCCL: call comm:enable_nccl(device) (dist.backend = "
                       "'nccl') first; this communicator is %s", what, c->backend);
    return DR_OK;
}

/* A contiguous CPU tensor with t's data (t itself, retained, when contiguous). */
static dr_status contiguous_of(const dr_tensor *t, dr_tensor **out) {
    if (dr_tensor_is_contiguous(t)) {
        dr_tensor_retain((dr_tensor *)t);
        *out = (dr_tensor *)t;
        return DR_OK;
    }
    return dr_tensor_contiguous(t, out);
}

static dr_status reduce_cpu(dr_comm *c, const char *what, dr_tensor *buf, int32_t op) {
    int64_t n = dr_tensor_numel(buf);
    void *data = dr_tensor_data(buf);
    int32_t dt = buf->scalar_type;
    if (dt == DR_F32 || dt == DR_I64 || dt == DR_I32) {
        DR_TRY(host_all_reduce(c, what, data, n, elem_of(dt), op));
        if (op == DR_REDUCE_MEAN && c->size > 1) {
            float *f = (float *)data;
            for (int64_t i = 0; i < n; i++) f[i] /= (float)c->size;
        }
        return DR_OK;
    }
    /* float16 / bfloat16: widen, reduce in float32, round once */
    float *f = (float *)malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!f) return dr_fail(DR_ERR_OOM, "%s: no memory for a float32 copy of %lld elements", what, (long long)n);
    uint16_t *h = (uint16_t *)data;
    for (int64_t i = 0; i < n; i++) f[i] = dt == DR_F16 ? dr_f16_to_f32(h[i]) : dr_bf16_to_f32(h[i]);
    dr_status st = host_all_reduce(c, what, f, n, DR_ELEM_F32, op);
    if (st == DR_OK) {
        for (int64_t i = 0; i < n; i++) {
            float v = op == DR_REDUCE_MEAN ? f[i] / (float)c->size : f[i];
            h[i] = dt == DR_F16 ? dr_f32_to_f16(v) : dr_f32_to_bf16(v);
        }
    }
    free(f);
    return st;
}

dr_status dr_comm_all_reduce(dr_comm *c, dr_tensor *t, int32_t op) {
    const char *what = "all_reduce";
    DR_TRY(check_comm(c, what));
    DR_TRY(dr_check_tensor(t, what, "t"));
    int32_t dt = t->scalar_type;
    if (dt != DR_F32 && dt != DR_F16 && dt != DR_BF16 && dt != DR_I64 && dt != DR_I32)
        return dr_fail(DR_ERR_DTYPE, "%s: dtype %s cannot be reduced (float32, float16, bfloat16, "
                       "int64, int32)", what, dr_dtype_name(dt));
    DR_TRY(check_op(what, op, dr_dtype_is_float(dt)));
    if (t->device.type == DR_CUDA) {
        DR_TRY(check_cuda_tensor(c, t, what));
#ifdef DIFFRL_WITH_NCCL
        c->seq++;
        return dr_nccl_all_reduce(c, what, dr_tensor_data(t), dr_tensor_numel(t), dt, op);
#endif
    }
    DR_TRY(need_mpi(c, what));
    dr_comm_desc d = make_desc(c, DR_COLL_ALL_REDUCE, dt, op, t->sizes, t->ndim, dr_tensor_numel(t));
    DR_TRY(agree(c, what, &d));
    if (c->size == 1) return DR_OK;
    dr_tensor *buf = NULL;
    DR_TRY(contiguous_of(t, &buf));
    dr_status st = reduce_cpu(c, what, buf, op);
    if (st == DR_OK && buf != t) st = dr_tensor_copy_(t, buf);
    dr_tensor_release(buf);
    return st;
}

dr_status dr_comm_all_gather(dr_comm *c, const dr_tensor *t, dr_tensor **out) {
    const char *what = "all_gather";
    DR_TRY(dr_check_out(out, what));
    DR_TRY(check_comm(c, what));
    DR_TRY(dr_check_tensor(t, what, "t"));
    int64_t sizes[DR_MAX_DIMS];
    int32_t nd = t->ndim == 0 ? 1 : t->ndim;
    for (int32_t i = 0; i < t->ndim; i++) sizes[i] = t->sizes[i];
    sizes[0] = (t->ndim == 0 ? 1 : t->sizes[0]) * c->size;
    if (t->device.type == DR_CUDA) {
        DR_TRY(check_cuda_tensor(c, t, what));
#ifdef DIFFRL_WITH_NCCL
        DR_TRY(dr_tensor_empty(sizes, nd, t->scalar_type, t->device, out));
        c->seq++;
        dr_status st = dr_nccl_all_gather(c, what, dr_tensor_data(t), dr_tensor_data(*out),
                                          dr_tensor_numel(t), t->scalar_type);
        if (st != DR_OK) {
            dr_tensor_release(*out);
            *out = NULL;
        }
        return st;
#endif
    }
    DR_TRY(need_mpi(c, what));
    dr_comm_desc d = make_desc(c, DR_COLL_ALL_GATHER, t->scalar_type, 0, t->sizes, t->ndim,
                               dr_tensor_numel(t));
    DR_TRY(agree(c, what, &d));
    dr_tensor *in = NULL, *res = NULL;
    DR_TRY(contiguous_of(t, &in));
    dr_status st = dr_tensor_empty(sizes, nd, t->scalar_type, t->device, &res);
    if (st == DR_OK)
        st = host_all_gather(c, what, dr_tensor_data(in), dr_tensor_data(res),
                             dr_tensor_numel(in) * dr_dtype_size(t->scalar_type));
    dr_tensor_release(in);
    if (st != DR_OK) {
        dr_tensor_release(res);
        return st;
    }
    *out = res;
    return DR_OK;
}

static dr_status check_root(dr_comm *c, const char *what, int32_t root) {
    if (root < 0 || root >= c->size)
        return dr_fail(DR_ERR_ARG, "%s: root %d is not a rank of this communicator (size %d)", what,
                       root, c->size);
    return DR_OK;
}

dr_status dr_comm_broadcast(dr_comm *c, dr_tensor *t, int32_t root) {
    const char *what = "broadcast";
    DR_TRY(check_comm(c, what));
    DR_TRY(dr_check_tensor(t, what, "t"));
    DR_TRY(check_root(c, what, root));
    if (t->device.type == DR_CUDA) {
        DR_TRY(check_cuda_tensor(c, t, what));
#ifdef DIFFRL_WITH_NCCL
        c->seq++;
        return dr_nccl_broadcast(c, what, dr_tensor_data(t), dr_tensor_numel(t), t->scalar_type, root);
#endif
    }
    DR_TRY(need_mpi(c, what));
    dr_comm_desc d = make_desc(c, DR_COLL_BROADCAST, t->scalar_type, root, t->sizes, t->ndim,
                               dr_tensor_numel(t));
    DR_TRY(agree(c, what, &d));
    if (c->size == 1) return DR_OK;
    dr_tensor *buf = NULL;
    DR_TRY(contiguous_of(t, &buf));
    dr_status st = host_broadcast(c, what, dr_tensor_data(buf),
                                  dr_tensor_numel(buf) * dr_dtype_size(t->scalar_type), root);
    if (st == DR_OK && buf != t) st = dr_tensor_copy_(t, buf);
    dr_tensor_release(buf);
    return st;
}

dr_status dr_comm_barrier(dr_comm *c) {
    const char *what = "barrier";
    DR_TRY(check_comm(c, what));
    DR_TRY(need_mpi(c, what));
    dr_comm_desc d = make_desc(c, DR_COLL_BARRIER, 0, 0, NULL, 0, 0);
    /* the description exchange is itself a full synchronisation */
    return agree(c, what, &d);
}

/* ---- host buffers --------------------------------------------------------------- */

dr_status dr_comm_all_reduce_f64(dr_comm *c, double *data, int64_t n, int32_t op) {
    const char *what = "all_reduce";
    DR_TRY(check_comm(c, what));
    if (n < 0) return dr_fail(DR_ERR_ARG, "%s: negative length %lld", what, (long long)n);
    DR_TRY(dr_check_array(data, n, what, "data"));
    DR_TRY(check_op(what, op, 1));
    DR_TRY(need_mpi(c, what));
    dr_comm_desc d = make_desc(c, DR_COLL_ALL_REDUCE, -1, op, &n, 1, n);
    DR_TRY(agree(c, what, &d));
    DR_TRY(host_all_reduce(c, what, data, n, DR_ELEM_F64, op));
    if (op == DR_REDUCE_MEAN && c->size > 1)
        for (int64_t i = 0; i < n; i++) data[i] /= (double)c->size;
    return DR_OK;
}

dr_status dr_comm_all_gather_f64(dr_comm *c, const double *data, int64_t n, double *out) {
    const char *what = "all_gather";
    DR_TRY(check_comm(c, what));
    if (n < 0) return dr_fail(DR_ERR_ARG, "%s: negative length %lld", what, (long long)n);
    DR_TRY(dr_check_array(data, n, what, "data"));
    DR_TRY(dr_check_array(out, n, what, "out"));
    DR_TRY(need_mpi(c, what));
    dr_comm_desc d = make_desc(c, DR_COLL_ALL_GATHER, -1, 0, &n, 1, n);
    DR_TRY(agree(c, what, &d));
    return host_all_gather(c, what, data, out, n * (int64_t)sizeof(double));
}

dr_status dr_comm_broadcast_bytes(dr_comm *c, void *data, int64_t *n, int32_t root) {
    const char *what = "broadcast";
    DR_TRY(check_comm(c, what));
    if (!n || *n < 0) return dr_fail(DR_ERR_ARG, "%s: n must point to the buffer's room (>= 0)", what);
    DR_TRY(dr_check_array(data, *n, what, "data"));
    DR_TRY(check_root(c, what, root));
    DR_TRY(need_mpi(c, what));
    dr_comm_desc d = make_desc(c, DR_COLL_BROADCAST, -2, root, NULL, 0, -1);
    DR_TRY(agree(c, what, &d));
    if (c->size == 1) return DR_OK;
    int64_t len = *n;
    DR_TRY(host_broadcast(c, what, &len, sizeof len, root));
    void *buf = len <= *n ? data : malloc((size_t)len);
    if (!buf) return dr_fail(DR_ERR_OOM, "%s: no memory for %lld bytes", what, (long long)len);
    dr_status st = host_broadcast(c, what, buf, len, root);
    if (buf != data) {
        free(buf);
        if (st == DR_OK)
            st = dr_fail(DR_ERR_ARG, "%s: rank %d sent %lld bytes; rank %d had room for %lld", what,
                         root, (long long)len, c->rank, (long long)*n);
    }
    if (st == DR_OK) *n = len;
    return st;
}
