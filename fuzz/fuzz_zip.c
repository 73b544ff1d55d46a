/* libFuzzer target: any bytes as a PyTorch checkpoint (dr_torch_load_buffer): the
 * zip reader (core/io/zip.c), the archive layout, the restricted unpickler and the
 * flattening, end to end. Seeds: spec/fixtures/torch's small checkpoints.
 *
 * Properties: a failure names the file; a success gives entries with unique names
 * whose tensors read back every element (views inside their storages), and loading
 * the same bytes twice gives the same names. Violations trap. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/torch_load.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

static void read_all(const dr_tensor *t) {
    int64_t numel = dr_tensor_numel(t);
    if (numel <= 0 || numel > (1 << 16)) return;
    double *buf = malloc((size_t)numel * sizeof *buf);
    REQUIRE(buf != NULL);
    REQUIRE(dr_tensor_to_f64(t, buf, numel) == DR_OK);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dr_torch_checkpoint *a = NULL, *b = NULL;
    dr_clear_error();
    dr_status st = dr_torch_load_buffer("fuzz.pt", data, size, &a);
    if (st != DR_OK) {
        REQUIRE(a == NULL);
        REQUIRE(strstr(dr_last_error(), "fuzz.pt") != NULL);
        return 0;
    }
    REQUIRE(dr_torch_load_buffer("fuzz.pt", data, size, &b) == DR_OK);
    int64_t n = dr_torch_checkpoint_count(a);
    REQUIRE(n == dr_torch_checkpoint_count(b));
    for (int64_t i = 0; i < n; i++) {
        REQUIRE(strcmp(dr_torch_checkpoint_name(a, i), dr_torch_checkpoint_name(b, i)) == 0);
        for (int64_t j = 0; j < i && n < 256; j++)
            REQUIRE(strcmp(dr_torch_checkpoint_name(a, i), dr_torch_checkpoint_name(a, j)) != 0);
        if (dr_torch_checkpoint_kind(a, i) == DR_TORCH_TENSOR) {
            dr_tensor *t = NULL;
            REQUIRE(dr_torch_checkpoint_tensor(a, i, &t) == DR_OK);
            read_all(t);
            dr_tensor_release(t);
        }
    }
    dr_torch_checkpoint_free(a);
    dr_torch_checkpoint_free(b);
    return 0;
}
