/* What this libdiffrl was built with, for `diffrl --version` and run folders. */
#include <stdio.h>

#include "diffrl.h"
#include "diffrl_gitinfo.h" /* generated at build time: DIFFRL_GIT_COMMIT */

#ifdef DIFFRL_WITH_CUDA
const char *dr_cuda_version_string(void);
const char *dr_cudnn_version_string(void);
const char *dr_nccl_version_string(void);
#endif
#ifdef DIFFRL_WITH_MPI
const char *dr_mpi_version_string(void);
#endif

char *openblas_get_config(void);
int openblas_get_parallel(void);

#ifndef DIFFRL_SANITIZE_FLAGS
#define DIFFRL_SANITIZE_FLAGS "none"
#endif

const dr_build_info *dr_get_build_info(void) {
    static dr_build_info info;
    static char blas[192];
    if (!info.version) {
        static const char *const modes[] = {"sequential", "pthreads", "openmp"};
        int par = openblas_get_parallel();
        snprintf(blas, sizeof blas, "%s (%s)", openblas_get_config(),
                 par >= 0 && par <= 2 ? modes[par] : "unknown threading");
        info.blas = blas;
        info.git_commit = DIFFRL_GIT_COMMIT;
        info.build_type = DIFFRL_BUILD_TYPE;
#if defined(__clang__)
        info.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
        info.compiler = "gcc " __VERSION__;
#else
        info.compiler = "unknown";
#endif
#ifdef DIFFRL_WITH_CUDA
        info.cuda = dr_cuda_version_string();
        info.cudnn = dr_cudnn_version_string();
        info.nccl = dr_nccl_version_string();
#else
        info.cuda = info.cudnn = info.nccl = "none";
#endif
#ifdef DIFFRL_WITH_MPI
        info.mpi = dr_mpi_version_string();
#else
        info.mpi = "none";
#endif
        info.sanitize = DIFFRL_SANITIZE_FLAGS;
        info.version = DIFFRL_VERSION; /* last: marks the struct complete */
    }
    return &info;
}
