/* Helpers shared by the CPU kernels: strided iteration, kernel entry points. */
#ifndef DR_CPU_INTERNAL_H
#define DR_CPU_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include "../../tensor/tensor_internal.h"
#include "../../util/scalar.h"
#include "../backend.h"

/* Below this many elements a kernel runs on one thread: waking the pool costs more. */
enum { DR_CPU_PARALLEL_MIN = 32768 };

/* Up to three same-shape operands, dims collapsed where every operand is
 * contiguous across them. Rows are all dims but the last; kernels run the last
 * dim as a strided inner loop and parallelise over rows. */
typedef struct dr_iter {
    int32_t ndim;
    int32_t nops;
    int64_t sizes[DR_MAX_DIMS];
    int64_t strides[3][DR_MAX_DIMS];
    int64_t base[3];
    int64_t rows, inner;
} dr_iter;

void dr_iter_init(dr_iter *it, int32_t nops, const dr_tensor *const *ops);

static inline void dr_iter_row(const dr_iter *it, int64_t row, int64_t *off) {
    for (int32_t k = 0; k < it->nops; k++) off[k] = it->base[k];
    for (int32_t d = it->ndim - 2; d >= 0; d--) {
        int64_t i = row % it->sizes[d];
        row /= it->sizes[d];
        for (int32_t k = 0; k < it->nops; k++) off[k] += i * it->strides[k][d];
    }
}

static inline char *dr_cpu_base(const dr_tensor *t) { return (char *)t->storage->data; }

dr_status dr_cpu_alloc(int32_t device_index, size_t nbytes, void **ptr);
void dr_cpu_dealloc(int32_t device_index, void *ptr, size_t nbytes);
dr_status dr_cpu_binary(dr_binary_op op, dr_tensor *out, const dr_tensor *a,
                        const dr_tensor *b, double alpha);
dr_status dr_cpu_matmul(dr_tensor *out, const dr_tensor *a, const dr_tensor *b);
dr_status dr_cpu_sum(dr_tensor *out, const dr_tensor *in, int32_t nreduce);
dr_status dr_cpu_random(dr_tensor *out, dr_random_kind kind, uint64_t seed, uint64_t offset,
                        uint32_t uniform_bits);

#endif
