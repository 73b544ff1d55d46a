/* The communicator shared by comm.c (tensors, validation, one rank), comm_mpi.c (CPU
 * buffers over MPI) and comm_nccl.c (CUDA buffers over NCCL). Not public. */
#ifndef DR_COMM_INTERNAL_H
#define DR_COMM_INTERNAL_H

#include "diffrl.h"

/* How this process's world was formed. */
typedef enum dr_comm_kind {
    DR_COMM_SINGLE = 0, /* one rank: collectives are copies */
    DR_COMM_MPI = 1,    /* MPI_COMM_WORLD */
    DR_COMM_ENV = 2     /* torchrun's RANK / WORLD_SIZE, no MPI: NCCL only */
} dr_comm_kind;

/* Element types of raw buffers: the tensor dtypes MPI reduces, plus host doubles. */
typedef enum dr_comm_elem {
    DR_ELEM_F32 = 0,
    DR_ELEM_F64 = 1,
    DR_ELEM_I32 = 2,
    DR_ELEM_I64 = 3,
    DR_ELEM_BYTE = 4 /* gather and broadcast only */
} dr_comm_elem;

/* What one collective call is, exchanged before the data on the MPI path so that
 * ranks calling different collectives (or shapes) fail together, by name. */
enum { DR_COMM_DESC_WORDS = 14 };
typedef struct dr_comm_desc {
    int64_t w[DR_COMM_DESC_WORDS]; /* seq, kind, dtype, op/root, ndim, numel, sizes[8] */
} dr_comm_desc;

typedef enum dr_coll {
    DR_COLL_ALL_REDUCE = 0,
    DR_COLL_ALL_GATHER = 1,
    DR_COLL_BROADCAST = 2,
    DR_COLL_BARRIER = 3
} dr_coll;

struct dr_comm {
    dr_comm_kind kind;
    int rank, size, local_rank, local_size;
    double timeout_s;
    int broken;        /* a collective timed out or mismatched: no more calls */
    int failed;        /* exit with MPI_Abort (dr_comm_mark_failed, broken) */
    int64_t seq;       /* collectives called so far */
    void *nccl;        /* comm_nccl.c's state once dr_comm_enable_nccl ran */
    char backend[16];
};

const char *dr_coll_name(dr_coll c);
double dr_comm_now(void); /* monotonic seconds */
/* Sleeps a little longer each time while a collective is pending (polls start hot:
 * most complete within microseconds; a long wait must not burn a shared core). */
void dr_comm_backoff(long polls);
/* "all_reduce #3 of float32 [4, 5], sum" (for mismatch messages). */
void dr_comm_describe(const dr_comm_desc *d, char *buf, size_t room);
/* The DR_ERR_COMM message of an expired wait; marks the communicator broken. */
dr_status dr_comm_timeout_error(dr_comm *c, const char *what, const char *detail);

#ifdef DIFFRL_WITH_MPI
/* comm_mpi.c: MPI_Init (when launched by an MPI launcher), rank, size, node. */
dr_status dr_mpi_world_init(dr_comm *c);
int dr_mpi_launched(void);
dr_status dr_mpi_check_desc(dr_comm *c, const char *what, const dr_comm_desc *mine);
dr_status dr_mpi_all_reduce(dr_comm *c, const char *what, void *buf, int64_t count,
                            dr_comm_elem elem, int op);
dr_status dr_mpi_all_gather(dr_comm *c, const char *what, const void *in, void *out,
                            int64_t bytes);
dr_status dr_mpi_broadcast(dr_comm *c, const char *what, void *buf, int64_t bytes, int root);
void dr_mpi_abort(int code);
#endif

#ifdef DIFFRL_WITH_NCCL
/* comm_nccl.c: the NCCL communicator and collectives on device pointers. */
dr_status dr_nccl_init(dr_comm *c, int device);
dr_status dr_nccl_all_reduce(dr_comm *c, const char *what, void *buf, int64_t count,
                             int32_t dtype, int op);
dr_status dr_nccl_all_gather(dr_comm *c, const char *what, const void *in, void *out,
                             int64_t count, int32_t dtype);
dr_status dr_nccl_broadcast(dr_comm *c, const char *what, void *buf, int64_t count,
                            int32_t dtype, int root);
void dr_nccl_abort(dr_comm *c);
#endif

#endif
