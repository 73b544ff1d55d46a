/* libFuzzer target: any bytes as data.pkl for the restricted unpickler
 * (core/io/pickle.c), storages given by a fake resolver (zero-filled, at most 4096
 * elements).
 *
 * Properties: a failure sets a message naming the pickle; a success has a root and
 * every tensor in the tree is a view inside its storage (the bounds the unpickler
 * promises). Any violated property traps, which libFuzzer reports as a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/torch_load.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

static dr_status storage(void *ctx, const char *key, int32_t type, int64_t numel,
                         dr_tensor **out) {
    (void)ctx;
    (void)key;
    if (numel > 4096) {
        dr_set_error("fuzz: storage too big");
        return DR_ERR_ARG;
    }
    dr_device cpu = {DR_CPU, 0};
    return dr_tensor_full(&numel, 1, dr_pk_storage_types[type].dtype, cpu, 0.0, out);
}

static void check_tree(const dr_pk_value *v, int depth, int64_t *budget) {
    if (!v || depth > 64 || --*budget < 0) return; /* the memo can make cycles and DAGs */
    if (v->kind == DR_PK_TENSOR) {
        /* the last element of the view lies in the storage (ASan checks the read) */
        const dr_tensor *t = v->tensor;
        if (dr_tensor_numel(t) > 0) {
            int64_t idx[DR_MAX_DIMS];
            double x;
            for (int32_t d = 0; d < t->ndim; d++) idx[d] = t->sizes[d] - 1;
            REQUIRE(dr_tensor_get(t, idx, &x) == DR_OK);
        }
    }
    if (v->kind == DR_PK_TUPLE || v->kind == DR_PK_LIST)
        for (int64_t i = 0; i < v->n; i++) check_tree(v->items[i], depth + 1, budget);
    if (v->kind == DR_PK_DICT)
        for (int64_t i = 0; i < 2 * v->n; i++) check_tree(v->items[i], depth + 1, budget);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1); /* exact size: ASan sees over-reads */
    if (!copy) return 0;
    memcpy(copy, data, size);
    const dr_pk_value *root = NULL;
    dr_pickle *vm = NULL;
    dr_clear_error();
    dr_status st = dr_pickle_load("fuzz.pkl", copy, size, storage, NULL, &vm, &root);
    if (st == DR_OK) {
        REQUIRE(root != NULL);
        int64_t budget = 4 * (int64_t)size + 1024;
        check_tree(root, 0, &budget);
    } else {
        REQUIRE(strstr(dr_last_error(), "fuzz") != NULL);
    }
    dr_pickle_free(vm);
    free(copy);
    return 0;
}
