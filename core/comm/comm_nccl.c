/* The NCCL path of core/comm (CUDA builds): CUDA tensors reduce on the GPU. The
 * unique id travels over MPI (dr_comm_broadcast_bytes) or, in a job started from
 * torchrun's environment without MPI, over one TCP exchange with rank 0 at
 * MASTER_ADDR:MASTER_PORT+1 (MASTER_PORT itself belongs to torchrun's store).
 * The communicator is non-blocking (NCCL >= 2.14): init and every collective are
 * polled against the deadline with ncclCommGetAsyncError and cudaStreamQuery; on
 * expiry ncclCommAbort frees the GPU side and the call fails like the MPI path.
 * Collectives run on the CUDA backend's stream of the device, ordered after the
 * kernels that made their tensors. Half types reduce in NCCL's own arithmetic. */
#define _POSIX_C_SOURCE 200809L
#include <cuda_runtime.h>
#include <errno.h>
#include <nccl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "comm_internal.h"
#include "../backend/backend.h"
#include "../util/error.h"

typedef struct nccl_state {
    ncclComm_t comm;
    int device;
    cudaStream_t stream; /* the backend's compute stream of `device` */
} nccl_state;

static dr_status nccl_fail(dr_comm *c, const char *what, const char *call, ncclResult_t rc) {
    c->broken = c->failed = 1;
    return dr_fail(DR_ERR_COMM, "%s: rank %d of %d: %s failed: %s (%s)", what, c->rank,
                   c->size, call, ncclGetErrorString(rc), ncclGetLastError(NULL));
}

/* Waits until the communicator has no operation in progress and, when `wait_stream`,
 * until the stream drained; aborts the communicator at the deadline. */
static dr_status nccl_wait(dr_comm *c, const char *what, nccl_state *s, int wait_stream) {
    double deadline = dr_comm_now() + c->timeout_s;
    for (long polls = 0;; polls++) {
        ncclResult_t async = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(s->comm, &async);
        if (rc != ncclSuccess) return nccl_fail(c, what, "ncclCommGetAsyncError", rc);
        if (async != ncclSuccess && async != ncclInProgress) {
            ncclCommAbort(s->comm);
            return nccl_fail(c, what, "the NCCL communicator", async);
        }
        if (async == ncclSuccess) {
            if (!wait_stream) return DR_OK;
            cudaError_t q = cudaStreamQuery(s->stream);
            if (q == cudaSuccess) return DR_OK;
            if (q != cudaErrorNotReady) {
                c->broken = c->failed = 1;
                return dr_fail(DR_ERR_COMM, "%s: rank %d: CUDA error while waiting: %s",
                               what, c->rank, cudaGetErrorString(q));
            }
        }
        if (dr_comm_now() > deadline) {
            ncclCommAbort(s->comm);
            return dr_comm_timeout_error(c, what, "NCCL");
        }
        dr_comm_backoff(polls);
    }
}

/* ---- the unique id over TCP (torchrun's environment, no MPI) ------------------------- */

static int tcp_port(void) {
    const char *p = getenv("MASTER_PORT");
    long port = p ? strtol(p, NULL, 10) : 0;
    return port > 0 && port < 65535 ? (int)port + 1 : -1;
}

static dr_status tcp_exchange(dr_comm *c, ncclUniqueId *id) {
    const char *what = "enable_nccl";
    const char *addr = getenv("MASTER_ADDR");
    int port = tcp_port();
    if (!addr || port < 0)
        return dr_fail(DR_ERR_COMM, "%s: rank %d of %d: without MPI, NCCL needs "
                       "MASTER_ADDR and MASTER_PORT (torchrun sets them) to share its id", what,
                       c->rank, c->size);
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = c->rank == 0 ? AI_PASSIVE : 0;
    int gai = getaddrinfo(c->rank == 0 ? NULL : addr, service, &hints, &ai);
    if (gai != 0)
        return dr_fail(DR_ERR_COMM, "%s: rank %d: cannot resolve %s:%d: %s", what, c->rank,
                       addr, port, gai_strerror(gai));
    double deadline = dr_comm_now() + c->timeout_s;
    dr_status st = DR_OK;
    if (c->rank == 0) {
        int lfd = socket(ai->ai_family, SOCK_STREAM, 0), one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (lfd < 0 || bind(lfd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(lfd, 64) != 0) {
            st = dr_fail(DR_ERR_COMM, "%s: rank 0 cannot listen on port %d: %s", what, port,
                         strerror(errno));
        }
        for (int served = 1; st == DR_OK && served < c->size;) {
            struct pollfd p = {lfd, POLLIN, 0};
            if (poll(&p, 1, 100) > 0) {
                int fd = accept(lfd, NULL, NULL);
                if (fd >= 0) {
                    if (write(fd, id, sizeof *id) == (ssize_t)sizeof *id) served++;
                    close(fd);
                }
            } else if (dr_comm_now() > deadline) {
                st = dr_comm_timeout_error(c, what, "ranks connecting for the NCCL id");
            }
        }
        if (lfd >= 0) close(lfd);
    } else {
        for (;;) {
            int fd = socket(ai->ai_family, SOCK_STREAM, 0);
            if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                size_t got = 0;
                while (got < sizeof *id) {
                    ssize_t n = read(fd, (char *)id + got, sizeof *id - got);
                    if (n <= 0) break;
                    got += (size_t)n;
                }
                close(fd);
                if (got == sizeof *id) break;
            } else if (fd >= 0) {
                close(fd);
            }
            if (dr_comm_now() > deadline) {
                st = dr_comm_timeout_error(c, what, "rank 0 at MASTER_ADDR:MASTER_PORT+1");
                break;
            }
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
        }
    }
    freeaddrinfo(ai);
    return st;
}

/* ---- init and collectives ------------------------------------------------------------- */

dr_status dr_nccl_init(dr_comm *c, int device) {
    const char *what = "enable_nccl";
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count) {
        cudaGetLastError();
        return dr_fail(DR_ERR_DEVICE, "%s: rank %d: no CUDA device %d (this node has %d)", what,
                       c->rank, device, count);
    }
    cudaError_t ce = cudaSetDevice(device);
    if (ce != cudaSuccess)
        return dr_fail(DR_ERR_DEVICE, "%s: cudaSetDevice(%d): %s", what, device, cudaGetErrorString(ce));
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t rc;
    if (c->rank == 0 && (rc = ncclGetUniqueId(&id)) != ncclSuccess)
        return nccl_fail(c, what, "ncclGetUniqueId", rc);
    if (c->kind == DR_COMM_MPI) {
        int64_t n = sizeof id;
        DR_TRY(dr_comm_broadcast_bytes(c, &id, &n, 0));
    } else if (c->kind == DR_COMM_ENV) {
        DR_TRY(tcp_exchange(c, &id));
    }
    nccl_state *s = (nccl_state *)calloc(1, sizeof *s);
    if (!s) return dr_fail(DR_ERR_OOM, "%s: no memory", what);
    s->device = device;
    s->stream = (cudaStream_t)dr_cuda_stream_handle(device, what);
    if (!s->stream) {
        free(s);
        return DR_ERR_DEVICE;
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0; /* so a missing rank cannot hang init past the deadline */
    rc = ncclCommInitRankConfig(&s->comm, c->size, id, c->rank, &config);
    if (rc != ncclSuccess && rc != ncclInProgress) {
        free(s);
        return nccl_fail(c, what, "ncclCommInitRankConfig", rc);
    }
    dr_status st = nccl_wait(c, what, s, 0);
    if (st != DR_OK) {
        free(s);
        return st;
    }
    c->nccl = s;
    return DR_OK;
}

static ncclDataType_t nccl_type(int32_t dtype) {
    switch (dtype) {
    case DR_F32: return ncclFloat32;
    case DR_F16: return ncclFloat16;
    case DR_BF16: return ncclBfloat16;
    case DR_I64: return ncclInt64;
    case DR_I32: return ncclInt32;
    default: return ncclUint8;
    }
}

static dr_status issued(dr_comm *c, const char *what, const char *call, ncclResult_t rc) {
    if (rc != ncclSuccess && rc != ncclInProgress) return nccl_fail(c, what, call, rc);
    return nccl_wait(c, what, (nccl_state *)c->nccl, 1);
}

dr_status dr_nccl_all_reduce(dr_comm *c, const char *what, void *buf, int64_t count, int32_t dtype,
                             int op) {
    if (c->size == 1 || count == 0) return DR_OK;
    nccl_state *s = (nccl_state *)c->nccl;
    ncclRedOp_t rop = op == DR_REDUCE_MAX ? ncclMax : op == DR_REDUCE_MEAN ? ncclAvg : ncclSum;
    return issued(c, what, "ncclAllReduce",
                  ncclAllReduce(buf, buf, (size_t)count, nccl_type(dtype), rop, s->comm, s->stream));
}

dr_status dr_nccl_all_gather(dr_comm *c, const char *what, const void *in, void *out, int64_t count,
                             int32_t dtype) {
    nccl_state *s = (nccl_state *)c->nccl;
    size_t n = (size_t)count;
    ncclDataType_t t = nccl_type(dtype);
    if (t == ncclUint8) n *= (size_t)dr_dtype_size(dtype);
    return issued(c, what, "ncclAllGather", ncclAllGather(in, out, n, t, s->comm, s->stream));
}

dr_status dr_nccl_broadcast(dr_comm *c, const char *what, void *buf, int64_t count, int32_t dtype,
                            int root) {
    if (c->size == 1 || count == 0) return DR_OK;
    nccl_state *s = (nccl_state *)c->nccl;
    size_t n = (size_t)count;
    ncclDataType_t t = nccl_type(dtype);
    if (t == ncclUint8) n *= (size_t)dr_dtype_size(dtype);
    return issued(c, what, "ncclBroadcast", ncclBroadcast(buf, buf, n, t, root, s->comm, s->stream));
}

void dr_nccl_abort(dr_comm *c) {
    nccl_state *s = (nccl_state *)c->nccl;
    if (s && s->comm) ncclCommAbort(s->comm);
    if (s) s->comm = NULL;
}
