/* One thread count for our OpenMP kernels and OpenBLAS (its OpenMP build shares
 * the pool, so the two never oversubscribe the cores). */
#include <omp.h>
#include "diffrl.h"

void openblas_set_num_threads(int n);

int dr_get_num_threads(void) { return omp_get_max_threads(); }

void dr_set_num_threads(int n) {
    if (n < 1) n = 1;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}
