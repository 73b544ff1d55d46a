/* The MPI path of core/comm: MPI_Init when an MPI launcher started this process, a
 * private duplicate of MPI_COMM_WORLD that returns errors instead of aborting, and
 * every collective as a non-blocking call polled against the communicator's
 * deadline (MPI has no timeout of its own: a blocking MPI_Allreduce waits forever
 * for a dead or stuck rank). At exit: MPI_Finalize, or MPI_Abort when this rank
 * failed, so the other ranks end too instead of waiting in Finalize. */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"
#include "../util/error.h"

static MPI_Comm dr_world = MPI_COMM_NULL;
static int owns_mpi;        /* this library called MPI_Init */
static dr_comm *exit_comm;  /* the world, for the exit handler */

int dr_mpi_launched(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK",
                                       "MPI_LOCALNRANKS"};
    int inited = 0;
    MPI_Initialized(&inited);
    if (inited) return 1;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return 1;
    }
    return 0;
}

void dr_mpi_abort(int code) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

static void at_exit(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized || !exit_comm) return;
    if (exit_comm->failed) {
        fprintf(stderr, "diffrl: rank %d failed: ending every rank (MPI_Abort)\n", exit_comm->rank);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (dr_world != MPI_COMM_NULL) MPI_Comm_free(&dr_world);
    if (owns_mpi) MPI_Finalize();
}

static dr_status mpi_error(dr_comm *c, const char *what, const char *call, int rc) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "error %d", rc);
    c->broken = c->failed = 1;
    return dr_fail(DR_ERR_COMM, "%s: rank %d of %d: %s failed: %s", what, c->rank, c->size,
                   call, text);
}

dr_status dr_mpi_world_init(dr_comm *c) {
    int inited = 0, rc;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;
        /* only the thread that drives Lua calls MPI; OpenMP workers never do */
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS)
            return dr_fail(DR_ERR_COMM, "comm: MPI_Init_thread failed (%d): is this "
                           "process started by mpirun or srun of the same MPI?", rc);
        owns_mpi = 1;
    }
    if ((rc = MPI_Comm_dup(MPI_COMM_WORLD, &dr_world)) != MPI_SUCCESS)
        return mpi_error(c, "comm", "MPI_Comm_dup", rc);
    MPI_Comm_set_errhandler(dr_world, MPI_ERRORS_RETURN);
    MPI_Comm_rank(dr_world, &c->rank);
    MPI_Comm_size(dr_world, &c->size);
    MPI_Comm node;
    if ((rc = MPI_Comm_split_type(dr_world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node)) !=
        MPI_SUCCESS)
        return mpi_error(c, "comm", "MPI_Comm_split_type", rc);
    MPI_Comm_rank(node, &c->local_rank);
    MPI_Comm_size(node, &c->local_size);
    MPI_Comm_free(&node);
    c->kind = DR_COMM_MPI;
    exit_comm = c;
    atexit(at_exit);
    return DR_OK;
}

/* Polls req until it completes or the deadline passes. */
static dr_status wait_for(dr_comm *c, const char *what, MPI_Request *req) {
    double deadline = dr_comm_now() + c->timeout_s;
    for (long polls = 0;; polls++) {
        int done = 0;
        int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_error(c, what, "MPI_Test", rc);
        if (done) return DR_OK;
        if ((polls & 15) == 0 && dr_comm_now() > deadline) return dr_comm_timeout_error(c, what, NULL);
        dr_comm_backoff(polls);
    }
}

dr_status dr_mpi_check_desc(dr_comm *c, const char *what, const dr_comm_desc *mine) {
    size_t words = (size_t)c->size * DR_COMM_DESC_WORDS;
    int64_t *all = (int64_t *)malloc(words * sizeof(int64_t));
    if (!all) return dr_fail(DR_ERR_OOM, "%s: no memory for %d call descriptions", what, c->size);
    MPI_Request req;
    int rc = MPI_Iallgather(mine->w, DR_COMM_DESC_WORDS, MPI_INT64_T, all, DR_COMM_DESC_WORDS,
                            MPI_INT64_T, dr_world, &req);
    dr_status st = rc == MPI_SUCCESS ? wait_for(c, what, &req) : mpi_error(c, what, "MPI_Iallgather", rc);
    for (int r = 0; st == DR_OK && r < c->size; r++) {
        const int64_t *w = all + (size_t)r * DR_COMM_DESC_WORDS;
        if (memcmp(w, mine->w, sizeof mine->w) == 0) continue;
        char a[160], b[160];
        dr_comm_desc theirs;
        memcpy(theirs.w, w, sizeof theirs.w);
        dr_comm_describe(mine, a, sizeof a);
        dr_comm_describe(&theirs, b, sizeof b);
        c->broken = c->failed = 1;
        st = dr_fail(DR_ERR_COMM, "%s: ranks disagree: rank %d called %s, rank %d called %s "
                     "(every rank must make the same collective calls in the same order)",
                     what, c->rank, a, r, b);
    }
    free(all);
    return st;
}

static MPI_Datatype mpi_type(dr_comm_elem e) {
    switch (e) {
    case DR_ELEM_F32: return MPI_FLOAT;
    case DR_ELEM_F64: return MPI_DOUBLE;
    case DR_ELEM_I32: return MPI_INT32_T;
    case DR_ELEM_I64: return MPI_INT64_T;
    default: return MPI_BYTE;
    }
}

static size_t elem_size(dr_comm_elem e) {
    return e == DR_ELEM_F64 || e == DR_ELEM_I64 ? 8 : e == DR_ELEM_BYTE ? 1 : 4;
}

enum { CHUNK = 1 << 28 }; /* elements per MPI call: counts are int */

dr_status dr_mpi_all_reduce(dr_comm *c, const char *what, void *buf, int64_t count,
                            dr_comm_elem elem, int op) {
    MPI_Datatype type = mpi_type(elem);
    MPI_Op mop = op == DR_REDUCE_MAX ? MPI_MAX : MPI_SUM;
    for (int64_t at = 0; at < count; at += CHUNK) {
        int n = (int)(count - at < CHUNK ? count - at : CHUNK);
        MPI_Request req;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + (size_t)at * elem_size(elem), n, type, mop,
                                dr_world, &req);
        if (rc != MPI_SUCCESS) return mpi_error(c, what, "MPI_Iallreduce", rc);
        DR_TRY(wait_for(c, what, &req));
    }
    return DR_OK;
}

dr_status dr_mpi_all_gather(dr_comm *c, const char *what, const void *in, void *out, int64_t bytes) {
    if (bytes > INT_MAX)
        return dr_fail(DR_ERR_ARG, "%s: %lld bytes per rank is more than one MPI call moves "
                       "(2^31 - 1); gather in pieces", what, (long long)bytes);
    MPI_Request req;
    int rc = MPI_Iallgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, dr_world, &req);
    if (rc != MPI_SUCCESS) return mpi_error(c, what, "MPI_Iallgather", rc);
    return wait_for(c, what, &req);
}

dr_status dr_mpi_broadcast(dr_comm *c, const char *what, void *buf, int64_t bytes, int root) {
    for (int64_t at = 0; at < bytes; at += CHUNK) {
        int n = (int)(bytes - at < CHUNK ? bytes - at : CHUNK);
        MPI_Request req;
        int rc = MPI_Ibcast((char *)buf + at, n, MPI_BYTE, root, dr_world, &req);
        if (rc != MPI_SUCCESS) return mpi_error(c, what, "MPI_Ibcast", rc);
        DR_TRY(wait_for(c, what, &req));
    }
    return DR_OK;
}
