/* The restricted unpickler (core/io/pickle.c) on pickles written here opcode by
 * opcode: plain containers and scalars of protocols 2 and 4; torch's tensor rebuild
 * with storages from persistent ids (views with offsets and strides, one storage
 * shared by two tensors); and refusals, each naming what it refused: GLOBAL and
 * STACK_GLOBAL of os.system, NEWOBJ, INST, views past their storage, memo misuse,
 * truncation, calling a storage class. Random mutations of a valid pickle never
 * crash. Files made by the real torch.save: spec/torch_load_spec.lua. */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "io/torch_load.h"

typedef struct fake {
    int calls;
    dr_tensor *last;
} fake;

/* Storages of 0, 1, 2, ... as float32 (or the type's dtype), numel <= 4096. */
static dr_status fake_storage(void *ctx, const char *key, int32_t type, int64_t numel,
                              dr_tensor **out) {
    fake *f = ctx;
    f->calls++;
    (void)key;
    if (numel > 4096) {
        dr_set_error("fake storage: too big");
        return DR_ERR_ARG;
    }
    dr_device cpu = {DR_CPU, 0};
    dr_status st = dr_tensor_empty(&numel, 1, dr_pk_storage_types[type].dtype, cpu, out);
    if (st == DR_OK && dr_pk_storage_types[type].dtype == DR_F32)
        for (int64_t i = 0; i < numel; i++) ((float *)dr_tensor_data(*out))[i] = (float)i;
    f->last = *out;
    return st;
}

static dr_status run(const char *bytes, size_t n, const dr_pk_value **root, dr_pickle **vm,
                     fake *f) {
    return dr_pickle_load("test.pkl", (const uint8_t *)bytes, n, fake_storage, f, vm, root);
}

#define PKL(s) s, sizeof s - 1

static const dr_pk_value *get(const dr_pk_value *dict, const char *key) {
    for (int64_t i = 0; dict && dict->kind == DR_PK_DICT && i < dict->n; i++)
        if (dict->items[2 * i]->kind == DR_PK_STR && strcmp(dict->items[2 * i]->s, key) == 0)
            return dict->items[2 * i + 1];
    return NULL;
}

static void test_plain(void) {
    /* {'a': [1, -2, 300, 70000], 'b': (1.5, None, True, 'xy'), 'c': b'\x00', 'd': -2**40}
     * as pickle.dumps(..., protocol=3) writes it */
    static const char p2[] = "\200\003}q\000(X\001\000\000\000aq\001]q\002(K\001J\376\377\377\377M,\001Jp\021\001\000eX\001\000\000\000bq\003(G\077\370\000\000\000\000\000\000N\210X\002\000\000\000xyq\004tq\005X\001\000\000\000cq\006C\001\000q\007X\001\000\000\000dq\010\212\006\000\000\000\000\000\377u.";
    fake f = {0};
    const dr_pk_value *root;
    dr_pickle *vm;
    if (CHECK_OK(run(PKL(p2), &root, &vm, &f))) {
        const dr_pk_value *a = get(root, "a"), *b = get(root, "b"), *d = get(root, "d");
        CHECK(a && a->kind == DR_PK_LIST && a->n == 4);
        if (a && a->n == 4) {
            CHECK_EQ_INT(a->items[1]->i, -2);
            CHECK_EQ_INT(a->items[2]->i, 300);
            CHECK_EQ_INT(a->items[3]->i, 70000);
        }
        CHECK(b && b->kind == DR_PK_TUPLE && b->n == 4);
        if (b && b->n == 4) {
            CHECK(b->items[0]->f == 1.5);
            CHECK_EQ_INT(b->items[1]->kind, DR_PK_NONE);
            CHECK(b->items[2]->kind == DR_PK_BOOL && b->items[2]->i == 1);
            CHECK(strcmp(b->items[3]->s, "xy") == 0);
        }
        CHECK(get(root, "c") && get(root, "c")->kind == DR_PK_BYTES && get(root, "c")->len == 1);
        CHECK(d && d->i == -(1ll << 40));
    }
    dr_pickle_free(vm);
    /* protocol 4: FRAME, MEMOIZE, SHORT_BINUNICODE, BINGET of a memoized value */
    static const char p4[] = "\200\004\225\020\000\000\000\000\000\000\000]\224(\214\002hi\224h\001K\007e.";
    if (CHECK_OK(run(PKL(p4), &root, &vm, &f))) {
        CHECK(root->kind == DR_PK_LIST && root->n == 3);
        if (root->n == 3) CHECK(root->items[0] == root->items[1]); /* the memo shares */
    }
    dr_pickle_free(vm);
}

/* OrderedDict with two tensors on storage '0' (12 floats): a [3, 4] view and its
 * transpose-like [2, 2] view at offset 5 with strides (4, 2). */
static const char torch_pkl[] =
    "\200\002ccollections\012OrderedDict\012q\000)Rq\001(X\001\000\000\000wq\002ctorch._utils\012_rebuild_tensor_v2\012q\003((X\007\000\000\000storageq\004ctorch\012FloatStorage\012q\005X\001\000\000\0000q\006X\003\000\000\000cpuq\007K\014tq\010QK\000K\003K\004\206K\004K\001\206\211h\000)Rtq\011Rq\012X\001\000\000\000vq\013h\003((h\004h\005h\006h\007K\014tQK\005K\002K\002\206K\004K\002\206\211h\000)RtRq\014u.";

static void test_tensors(void) {
    fake f = {0};
    const dr_pk_value *root;
    dr_pickle *vm;
    if (CHECK_OK(run(PKL(torch_pkl), &root, &vm, &f))) {
        const dr_pk_value *w = get(root, "w"), *v = get(root, "v");
        CHECK_EQ_INT(f.calls, 2); /* once per reference: the loader caches by key */
        if (CHECK(w && w->kind == DR_PK_TENSOR && v && v->kind == DR_PK_TENSOR)) {
            CHECK_EQ_INT(w->tensor->ndim, 2);
            CHECK_EQ_INT(w->tensor->sizes[1], 4);
            CHECK_EQ_INT(v->tensor->storage_offset, 5);
            CHECK_EQ_INT(v->tensor->strides[1], 2);
            int64_t idx[2] = {1, 1};
            double x;
            CHECK_OK(dr_tensor_get(v->tensor, idx, &x));
            CHECK_NEAR(x, 5 + 4 + 2, 0); /* storage element 11 */
        }
    }
    dr_pickle_free(vm);
    /* the same view made to reach element 12 of a 12-element storage */
    char *bad = malloc(sizeof torch_pkl);
    memcpy(bad, torch_pkl, sizeof torch_pkl);
    char *at = NULL;
    for (size_t i = 0; i + 6 <= sizeof torch_pkl && !at; i++)
        if (memcmp(bad + i, "K\005K\002K\002", 6) == 0) at = bad + i;
    if (CHECK(at != NULL)) {
        at[1] = 6;
        CHECK_FAILS(run(bad, sizeof torch_pkl - 1, &root, &vm, &f), DR_ERR_IO,
                    "a view of size [2, 2], stride [4, 2] at offset 6 reaches past its storage "
                    "of 12 elements");
        dr_pickle_free(vm);
    }
    free(bad);
}

static void refuse(const char *bytes, size_t n, dr_status status, const char *needle) {
    fake f = {0};
    const dr_pk_value *root;
    dr_pickle *vm = NULL;
    CHECK_FAILS(run(bytes, n, &root, &vm, &f), status, needle);
    dr_pickle_free(vm);
}

static void test_refusals(void) {
    refuse(PKL("\200\002cposix\012system\012q\000X\002\000\000\000idq\001\205q\002Rq\003."), DR_ERR_IO,
           "test.pkl: byte 16: GLOBAL 'posix.system' is not allowed");
    refuse(PKL("\200\004\214\002os\214\006system\223\214\002id\205R."), DR_ERR_IO,
           "GLOBAL 'os.system' is not allowed");
    refuse(PKL("\200\002cbuiltins\012eval\012."), DR_ERR_IO,
           "GLOBAL 'builtins.eval'");
    refuse(PKL("\200\002ctorch\012ComplexFloatStorage\012."), DR_ERR_UNSUPPORTED,
           "storage class 'torch.ComplexFloatStorage' is not supported");
    refuse(PKL("\200\002ccollections\012OrderedDict\012)\201."), DR_ERR_IO,
           "NEWOBJ of collections.OrderedDict is not allowed");
    refuse(PKL("\200\002(iposix\012system\012."), DR_ERR_UNSUPPORTED,
           "INST/OBJ");
    refuse(PKL("\200\002ctorch\012FloatStorage\012)R."), DR_ERR_IO,
           "REDUCE: calling FloatStorage is not allowed");
    refuse(PKL("\200\002h\005."), DR_ERR_IO,
           "GET of memo index 5, which was never PUT");
    refuse(PKL("\200\002]q\000(K\001"), DR_ERR_IO,
           "the pickle ends without STOP");
    refuse(PKL("\200\002X\377\000\000\000ab."), DR_ERR_IO,
           "needs 255 bytes but the pickle ends");
    refuse(PKL("\200\002K\001K\002."), DR_ERR_IO,
           "STOP with 2 values");
    refuse(PKL("\200\002s."), DR_ERR_IO,
           "SETITEM on an empty stack");
    refuse(PKL("\200\002]K\001u."), DR_ERR_IO,
           "SETITEMS without a MARK");
    refuse(PKL("\200\002\377."), DR_ERR_IO,
           "unknown opcode 0xff");
    refuse(PKL("\200\002(X\007\000\000\000storagectorch\012FloatStorage\012X\004\000\000\000../xX\003\000\000\000cpuK\001tQ."), DR_ERR_IO,
           "bad storage key '../x'");
}

static void test_mutations(void) {
    char m[sizeof torch_pkl];
    uint32_t rng = 99;
    int ok = 0;
    for (int it = 0; it < 30000; it++) {
        memcpy(m, torch_pkl, sizeof m);
        for (int k = 0; k < 1 + it % 3; k++) {
            rng = rng * 1664525u + 1013904223u;
            m[(rng >> 8) % (sizeof m - 1)] = (char)(rng >> 24);
        }
        fake f = {0};
        const dr_pk_value *root;
        dr_pickle *vm = NULL;
        ok += run(m, (rng >> 4) % 3 ? sizeof m - 1 : (rng >> 6) % (sizeof m), &root, &vm, &f) == DR_OK;
        dr_pickle_free(vm);
    }
    CHECK(ok > 0); /* some mutations keep it valid; none crash (ASan in CI) */
}

int main(void) {
    test_plain();
    test_tensors();
    test_refusals();
    test_mutations();
    return check_summary("test_pickle");
}
