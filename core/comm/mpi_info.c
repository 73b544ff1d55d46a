/* The MPI library's name and version, for `diffrl --version` and run folders
 * (compiled in with DIFFRL_MPI=ON; the collectives are comm_mpi.c). */
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
