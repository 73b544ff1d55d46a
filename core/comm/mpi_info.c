/* MPI, compiled in with DIFFRL_MPI=ON. Collectives (all_reduce, all_gather,
 * broadcast with timeouts) land with the distributed work; for now this reports
 * the library so `diffrl --version` and run folders record it. */
#include <mpi.h>

const char *dr_mpi_version_string(void) {
    static char buf[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(buf, &len);
    for (int i = 0; i < len; i++) /* first line only */
        if (buf[i] == '\n' || buf[i] == ',') {
            buf[i] = '\0';
            break;
        }
    return buf;
}
