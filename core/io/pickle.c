/*
 * A restricted unpickler: the pickle virtual machine of CPython's Lib/pickle.py
 * (class _Unpickler), protocols 2 to 5, reduced to what torch.save writes for
 * tensors and plain containers. It never calls anything: GLOBAL / STACK_GLOBAL may
 * only name the classes and functions of the allow-list below (anything else,
 * os.system's posix.system first of all, is an error naming module.name), and
 * REDUCE / BUILD are interpreted here for those alone:
 *
 *   collections.OrderedDict()                      -> dict
 *   torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
 *                                   backward_hooks[, metadata])  -> a strided view
 *   torch._utils._rebuild_parameter(data, requires_grad, hooks)   -> data
 *   torch._utils._rebuild_parameter_with_state(data, rg, hooks, state) -> data
 *   torch._tensor._rebuild_from_type_v2(func, torch.Tensor | Parameter, args, state)
 *   BINPERSID ('storage', torch.<X>Storage, key, location, numel) -> a storage
 *   BUILD on a dict or tensor (OrderedDict._metadata, tensor state): state dropped
 *
 * Every length, memo index and stack access is checked (fuzz/fuzz_pickle.c).
 * Values live until dr_pickle_free; containers may share values (the memo).
 */
#include "torch_load.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tensor/tensor_internal.h"

const dr_pk_storage_type dr_pk_storage_types[] = {
    {"FloatStorage", 4, DR_F32, 0},   {"HalfStorage", 2, DR_F16, 0},
    {"BFloat16Storage", 2, DR_BF16, 0}, {"LongStorage", 8, DR_I64, 0},
    {"IntStorage", 4, DR_I32, 0},     {"ByteStorage", 1, DR_U8, 0},
    {"BoolStorage", 1, DR_BOOL, 0},   {"DoubleStorage", 8, DR_F32, 1},
    {"ShortStorage", 2, DR_I32, 2},   {"CharStorage", 1, DR_I32, 3},
};
const int32_t dr_pk_num_storage_types =
    (int32_t)(sizeof dr_pk_storage_types / sizeof dr_pk_storage_types[0]);

static const struct {
    const char *module, *name;
    int32_t global;
} allowed[] = {
    {"collections", "OrderedDict", DR_PKG_ORDERED_DICT},
    {"torch._utils", "_rebuild_tensor_v2", DR_PKG_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_parameter", DR_PKG_REBUILD_PARAMETER},
    {"torch._utils", "_rebuild_parameter_with_state", DR_PKG_REBUILD_PARAMETER_STATE},
    {"torch._tensor", "_rebuild_from_type_v2", DR_PKG_REBUILD_FROM_TYPE_V2},
    {"torch", "Tensor", DR_PKG_TENSOR_CLASS},
    {"torch.nn.parameter", "Parameter", DR_PKG_PARAMETER_CLASS},
};

static const char *global_names[] = {
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2", "torch.Tensor", "torch.nn.parameter.Parameter",
    "a torch storage class",
};

enum { MAX_NAME = 256 };

struct dr_pickle {
    const char *name;
    const uint8_t *p, *end, *start;
    dr_pk_value **all;
    int64_t nall, capall;
    dr_pk_value **stack;
    int64_t sp, scap;
    int64_t *marks;
    int64_t nmarks, mcap;
    dr_pk_value **memo;
    int64_t memo_cap, memo_filled;
    dr_pk_storage_fn storage;
    void *ctx;
};

static size_t at(const dr_pickle *vm) { return (size_t)(vm->p - vm->start); }

#define FAIL(vm, st, ...) pk_fail(vm, st, __VA_ARGS__)
DR_PRINTF(3, 4)
static dr_status pk_fail(dr_pickle *vm, dr_status st, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dr_fail(st, "%s: byte %zu: %s", vm->name, at(vm), msg);
}

/* Grows *arr (of elem-size slots) to hold need, doubling. */
static bool grow(void **arr, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return true;
    int64_t ncap = *cap ? *cap : 16;
    while (ncap < need) ncap *= 2;
    void *n = realloc(*arr, (size_t)ncap * elem);
    if (!n) return false;
    *arr = n;
    *cap = ncap;
    return true;
}

static dr_status oom(dr_pickle *vm) { return FAIL(vm, DR_ERR_OOM, "out of memory"); }

static dr_status new_value(dr_pickle *vm, int32_t kind, dr_pk_value **out) {
    if (!grow((void **)&vm->all, &vm->capall, vm->nall + 1, sizeof *vm->all)) return oom(vm);
    dr_pk_value *v = calloc(1, sizeof *v);
    if (!v) return oom(vm);
    v->kind = kind;
    vm->all[vm->nall++] = v;
    *out = v;
    return DR_OK;
}

static dr_status push(dr_pickle *vm, dr_pk_value *v) {
    if (!grow((void **)&vm->stack, &vm->scap, vm->sp + 1, sizeof *vm->stack)) return oom(vm);
    vm->stack[vm->sp++] = v;
    return DR_OK;
}

static dr_status push_new(dr_pickle *vm, int32_t kind, dr_pk_value **out) {
    dr_pk_value *v = NULL;
    DR_TRY(new_value(vm, kind, &v));
    if (out) *out = v;
    return push(vm, v);
}

/* The stack's floor: the last mark (items above it belong to the current frame). */
static int64_t floor_of(const dr_pickle *vm) { return vm->nmarks ? vm->marks[vm->nmarks - 1] : 0; }

static dr_status pop(dr_pickle *vm, const char *op, dr_pk_value **out) {
    if (vm->sp <= floor_of(vm)) return FAIL(vm, DR_ERR_IO, "%s on an empty stack", op);
    *out = vm->stack[--vm->sp];
    return DR_OK;
}

static dr_status top(dr_pickle *vm, const char *op, dr_pk_value **out) {
    if (vm->sp <= floor_of(vm)) return FAIL(vm, DR_ERR_IO, "%s on an empty stack", op);
    *out = vm->stack[vm->sp - 1];
    return DR_OK;
}

/* Pops the mark; *first is where the items above it begin. */
static dr_status pop_mark(dr_pickle *vm, const char *op, int64_t *first) {
    if (!vm->nmarks) return FAIL(vm, DR_ERR_IO, "%s without a MARK", op);
    *first = vm->marks[--vm->nmarks];
    return DR_OK;
}

static dr_status need(dr_pickle *vm, uint64_t n, const char *op) {
    if ((uint64_t)(vm->end - vm->p) < n)
        return FAIL(vm, DR_ERR_IO, "%s needs %llu bytes but the pickle ends (truncated)", op,
                    (unsigned long long)n);
    return DR_OK;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static dr_status append_item(dr_pickle *vm, dr_pk_value *c, dr_pk_value *item) {
    if (!grow((void **)&c->items, &c->cap, c->n + 1, sizeof *c->items)) return oom(vm);
    c->items[c->n++] = item;
    return DR_OK;
}

static dr_status set_item(dr_pickle *vm, dr_pk_value *d, dr_pk_value *k, dr_pk_value *v) {
    if (!grow((void **)&d->items, &d->cap, 2 * d->n + 2, sizeof *d->items)) return oom(vm);
    d->items[2 * d->n] = k;
    d->items[2 * d->n + 1] = v;
    d->n++;
    return DR_OK;
}

static const char *kind_name(int32_t k) {
    static const char *names[] = {"None", "bool", "int", "float", "str", "bytes", "tuple",
                                  "list", "dict", "class or function", "storage", "tensor"};
    return k >= 0 && k <= DR_PK_TENSOR ? names[k] : "?";
}

/* A tuple of the items stack[first..sp), popped. */
static dr_status make_tuple(dr_pickle *vm, int64_t first, dr_pk_value **out) {
    dr_pk_value *t;
    DR_TRY(new_value(vm, DR_PK_TUPLE, &t));
    for (int64_t i = first; i < vm->sp; i++) DR_TRY(append_item(vm, t, vm->stack[i]));
    vm->sp = first;
    *out = t;
    return DR_OK;
}

static dr_status new_string(dr_pickle *vm, int32_t kind, uint64_t n, const char *op) {
    DR_TRY(need(vm, n, op));
    dr_pk_value *v = NULL;
    DR_TRY(new_value(vm, kind, &v));
    v->s = malloc((size_t)n + 1);
    if (!v->s) return oom(vm);
    memcpy(v->s, vm->p, (size_t)n);
    v->s[n] = '\0';
    v->len = (size_t)n;
    vm->p += n;
    return push(vm, v);
}

/* ---- globals ------------------------------------------------------------------ */

static dr_status find_global(dr_pickle *vm, const char *module, size_t mlen, const char *name,
                             size_t nlen) {
    char full[2 * MAX_NAME + 2];
    snprintf(full, sizeof full, "%.*s.%.*s", (int)mlen, module, (int)nlen, name);
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        if (strlen(allowed[i].module) == mlen && memcmp(allowed[i].module, module, mlen) == 0 &&
            strlen(allowed[i].name) == nlen && memcmp(allowed[i].name, name, nlen) == 0) {
            dr_pk_value *v = NULL;
            DR_TRY(push_new(vm, DR_PK_GLOBAL, &v));
            v->global = allowed[i].global;
            return DR_OK;
        }
    if (mlen == 5 && memcmp(module, "torch", 5) == 0)
        for (int32_t i = 0; i < dr_pk_num_storage_types; i++)
            if (strlen(dr_pk_storage_types[i].name) == nlen &&
                memcmp(dr_pk_storage_types[i].name, name, nlen) == 0) {
                dr_pk_value *v = NULL;
                DR_TRY(push_new(vm, DR_PK_GLOBAL, &v));
                v->global = DR_PKG_STORAGE_CLASS;
                v->storage = i;
                return DR_OK;
            }
    if (mlen == 5 && memcmp(module, "torch", 5) == 0 && nlen > 7 &&
        memcmp(name + nlen - 7, "Storage", 7) == 0)
        return FAIL(vm, DR_ERR_UNSUPPORTED, "storage class '%s' is not supported (storages: "
                    "Float, Half, BFloat16, Long, Int, Byte, Bool, Double -> float32, Short and "
                    "Char -> int32)", full);
    return FAIL(vm, DR_ERR_IO, "GLOBAL '%s' is not allowed: the restricted unpickler builds "
                "only tensors and plain containers (dict, OrderedDict, list, tuple, str, int, "
                "float, bool, None); this file is not a plain state dict, or is malicious",
                full);
}

static dr_status op_global(dr_pickle *vm) {
    const uint8_t *nl1 = memchr(vm->p, '\n', (size_t)(vm->end - vm->p));
    const uint8_t *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(vm->end - nl1 - 1)) : NULL;
    if (!nl2) return FAIL(vm, DR_ERR_IO, "GLOBAL: the module and name lines are not terminated");
    size_t mlen = (size_t)(nl1 - vm->p), nlen = (size_t)(nl2 - nl1 - 1);
    if (mlen > MAX_NAME || nlen > MAX_NAME)
        return FAIL(vm, DR_ERR_IO, "GLOBAL: module or name longer than %d bytes", MAX_NAME);
    const char *module = (const char *)vm->p, *name = (const char *)nl1 + 1;
    vm->p = nl2 + 1;
    return find_global(vm, module, mlen, name, nlen);
}

static dr_status op_stack_global(dr_pickle *vm) {
    dr_pk_value *name = NULL, *module = NULL;
    DR_TRY(pop(vm, "STACK_GLOBAL", &name));
    DR_TRY(pop(vm, "STACK_GLOBAL", &module));
    if (name->kind != DR_PK_STR || module->kind != DR_PK_STR)
        return FAIL(vm, DR_ERR_IO, "STACK_GLOBAL needs two strings, got %s and %s",
                    kind_name(module->kind), kind_name(name->kind));
    if (module->len > MAX_NAME || name->len > MAX_NAME)
        return FAIL(vm, DR_ERR_IO, "STACK_GLOBAL: module or name longer than %d bytes", MAX_NAME);
    return find_global(vm, module->s, module->len, name->s, name->len);
}

/* ---- torch objects ------------------------------------------------------------------ */

static dr_status int_tuple(dr_pickle *vm, const dr_pk_value *t, const char *what, int64_t *out,
                           int32_t *n) {
    if (t->kind != DR_PK_TUPLE && t->kind != DR_PK_LIST)
        return FAIL(vm, DR_ERR_IO, "_rebuild_tensor_v2: %s must be a tuple, got %s", what,
                    kind_name(t->kind));
    if (t->n > DR_MAX_DIMS)
        return FAIL(vm, DR_ERR_UNSUPPORTED, "_rebuild_tensor_v2: %s has %lld dimensions; at "
                    "most %d are supported", what, (long long)t->n, DR_MAX_DIMS);
    for (int64_t i = 0; i < t->n; i++) {
        const dr_pk_value *v = t->items[i];
        if (v->kind != DR_PK_INT || v->i < 0)
            return FAIL(vm, DR_ERR_IO, "_rebuild_tensor_v2: %s[%lld] must be a non-negative "
                        "int", what, (long long)i);
        out[i] = v->i;
    }
    *n = (int32_t)t->n;
    return DR_OK;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta]) */
static dr_status rebuild_tensor(dr_pickle *vm, const dr_pk_value *args, dr_pk_value **out) {
    if (args->n != 6 && args->n != 7)
        return FAIL(vm, DR_ERR_IO, "_rebuild_tensor_v2 takes 6 or 7 arguments, got %lld",
                    (long long)args->n);
    const dr_pk_value *storage = args->items[0], *offset = args->items[1];
    if (storage->kind != DR_PK_STORAGE)
        return FAIL(vm, DR_ERR_IO, "_rebuild_tensor_v2: argument 1 must be a storage, got %s",
                    kind_name(storage->kind));
    if (offset->kind != DR_PK_INT || offset->i < 0)
        return FAIL(vm, DR_ERR_IO, "_rebuild_tensor_v2: the storage offset must be a "
                    "non-negative int");
    int64_t sizes[DR_MAX_DIMS], strides[DR_MAX_DIMS];
    int32_t nd, nst;
    DR_TRY(int_tuple(vm, args->items[2], "size", sizes, &nd));
    DR_TRY(int_tuple(vm, args->items[3], "stride", strides, &nst));
    if (nd != nst)
        return FAIL(vm, DR_ERR_IO, "_rebuild_tensor_v2: size has %d dimensions, stride %d", nd,
                    nst);
    int64_t numel = 1, last = offset->i; /* the highest element index the view touches */
    bool overflow = false;
    for (int32_t d = 0; d < nd; d++) {
        int64_t reach;
        overflow |= __builtin_mul_overflow(numel, sizes[d], &numel);
        if (sizes[d] > 0) {
            overflow |= __builtin_mul_overflow(sizes[d] - 1, strides[d], &reach);
            overflow |= __builtin_add_overflow(last, reach, &last);
        }
    }
    int64_t have = storage->tensor->sizes[0];
    if (overflow || (numel > 0 && last >= have) || offset->i > have)
        return FAIL(vm, DR_ERR_IO, "_rebuild_tensor_v2: a view of size %s, stride %s at offset "
                    "%lld reaches past its storage of %lld elements", dr_sizes_str(sizes, nd),
                    dr_sizes_str(strides, nd), (long long)offset->i, (long long)have);
    dr_tensor *t;
    DR_TRY(dr_tensor_alias(storage->tensor, &t));
    t->ndim = nd;
    for (int32_t d = 0; d < DR_MAX_DIMS; d++) {
        t->sizes[d] = d < nd ? sizes[d] : 0;
        t->strides[d] = d < nd ? strides[d] : 0;
    }
    t->storage_offset = offset->i;
    dr_status st = new_value(vm, DR_PK_TENSOR, out);
    if (st != DR_OK) {
        dr_tensor_release(t);
        return st;
    }
    (*out)->tensor = t;
    return DR_OK;
}

static dr_status call_global(dr_pickle *vm, const dr_pk_value *fn, const dr_pk_value *args,
                             int depth, dr_pk_value **out) {
    if (fn->kind != DR_PK_GLOBAL)
        return FAIL(vm, DR_ERR_IO, "REDUCE: cannot call a %s", kind_name(fn->kind));
    if (args->kind != DR_PK_TUPLE)
        return FAIL(vm, DR_ERR_IO, "REDUCE: the arguments of %s must be a tuple, got %s",
                    global_names[fn->global], kind_name(args->kind));
    switch (fn->global) {
    case DR_PKG_ORDERED_DICT: {
        DR_TRY(new_value(vm, DR_PK_DICT, out));
        if (args->n == 0) return DR_OK;
        const dr_pk_value *pairs = args->items[0];
        if (args->n > 1 || (pairs->kind != DR_PK_LIST && pairs->kind != DR_PK_TUPLE))
            return FAIL(vm, DR_ERR_IO, "collections.OrderedDict takes () or (a list of pairs,)");
        for (int64_t i = 0; i < pairs->n; i++) {
            const dr_pk_value *kv = pairs->items[i];
            if (kv->kind != DR_PK_TUPLE || kv->n != 2)
                return FAIL(vm, DR_ERR_IO, "collections.OrderedDict: item %lld is not a pair",
                            (long long)i);
            DR_TRY(set_item(vm, *out, kv->items[0], kv->items[1]));
        }
        return DR_OK;
    }
    case DR_PKG_REBUILD_TENSOR_V2: return rebuild_tensor(vm, args, out);
    case DR_PKG_REBUILD_PARAMETER:
    case DR_PKG_REBUILD_PARAMETER_STATE: {
        int64_t want = fn->global == DR_PKG_REBUILD_PARAMETER ? 3 : 4;
        if (args->n != want || args->items[0]->kind != DR_PK_TENSOR)
            return FAIL(vm, DR_ERR_IO, "%s takes (tensor, requires_grad, hooks%s)",
                        global_names[fn->global], want == 4 ? ", state" : "");
        *out = args->items[0]; /* a Parameter's data is the tensor */
        return DR_OK;
    }
    case DR_PKG_REBUILD_FROM_TYPE_V2: {
        /* (func, type, args, state): func(*args) as the type; only plain tensors. */
        if (args->n != 4 || args->items[1]->kind != DR_PK_GLOBAL ||
            (args->items[1]->global != DR_PKG_TENSOR_CLASS &&
             args->items[1]->global != DR_PKG_PARAMETER_CLASS))
            return FAIL(vm, DR_ERR_IO, "torch._tensor._rebuild_from_type_v2: only torch.Tensor "
                        "and torch.nn.parameter.Parameter are supported");
        if (depth > 0)
            return FAIL(vm, DR_ERR_IO, "torch._tensor._rebuild_from_type_v2 nested in itself");
        return call_global(vm, args->items[0], args->items[2], depth + 1, out);
    }
    default:
        return FAIL(vm, DR_ERR_IO, "REDUCE: calling %s is not allowed (only tensors and plain "
                    "containers are built)", fn->global == DR_PKG_STORAGE_CLASS
                        ? dr_pk_storage_types[fn->storage].name
                        : global_names[fn->global]);
    }
}

/* BINPERSID: ('storage', torch.<X>Storage, key, location, numel) */
static dr_status op_persid(dr_pickle *vm) {
    dr_pk_value *pid = NULL;
    DR_TRY(pop(vm, "BINPERSID", &pid));
    if (pid->kind != DR_PK_TUPLE || pid->n != 5 || pid->items[0]->kind != DR_PK_STR ||
        strcmp(pid->items[0]->s, "storage") != 0)
        return FAIL(vm, DR_ERR_IO, "BINPERSID: expected a persistent id ('storage', type, key, "
                    "location, numel), got a %s", kind_name(pid->kind));
    const dr_pk_value *type = pid->items[1], *key = pid->items[2], *loc = pid->items[3],
                      *numel = pid->items[4];
    if (type->kind != DR_PK_GLOBAL || type->global != DR_PKG_STORAGE_CLASS)
        return FAIL(vm, DR_ERR_IO, "BINPERSID: the storage type must be a torch storage class");
    if (key->kind != DR_PK_STR || loc->kind != DR_PK_STR || numel->kind != DR_PK_INT ||
        numel->i < 0)
        return FAIL(vm, DR_ERR_IO, "BINPERSID: the storage key and location must be strings "
                    "and numel a non-negative int");
    if (memchr(key->s, '/', key->len) || strlen(key->s) != key->len || key->len == 0 ||
        strcmp(key->s, "..") == 0 || strcmp(key->s, ".") == 0)
        return FAIL(vm, DR_ERR_IO, "BINPERSID: bad storage key '%.64s'", key->s);
    dr_tensor *base = NULL;
    DR_TRY(vm->storage(vm->ctx, key->s, type->storage, numel->i, &base));
    dr_pk_value *v = NULL;
    dr_status st = push_new(vm, DR_PK_STORAGE, &v);
    if (st != DR_OK) {
        dr_tensor_release(base);
        return st;
    }
    v->tensor = base;
    v->storage = type->storage;
    return DR_OK;
}

/* ---- the machine ---------------------------------------------------------------------- */

static dr_status memo_put(dr_pickle *vm, uint64_t idx) {
    dr_pk_value *v = NULL;
    DR_TRY(top(vm, "PUT", &v));
    /* Picklers number memo entries from 0 up, each PUT taking >= 2 bytes. */
    if (idx >= (uint64_t)(vm->end - vm->start))
        return FAIL(vm, DR_ERR_IO, "memo index %llu is out of range", (unsigned long long)idx);
    if ((int64_t)idx >= vm->memo_cap) {
        int64_t old = vm->memo_cap;
        if (!grow((void **)&vm->memo, &vm->memo_cap, (int64_t)idx + 1, sizeof *vm->memo))
            return oom(vm);
        memset(vm->memo + old, 0, (size_t)(vm->memo_cap - old) * sizeof *vm->memo);
    }
    if (!vm->memo[idx]) vm->memo_filled++;
    vm->memo[idx] = v;
    return DR_OK;
}

static dr_status memo_get(dr_pickle *vm, uint64_t idx) {
    if ((int64_t)idx >= vm->memo_cap || idx >= (uint64_t)INT64_MAX || !vm->memo[idx])
        return FAIL(vm, DR_ERR_IO, "GET of memo index %llu, which was never PUT",
                    (unsigned long long)idx);
    return push(vm, vm->memo[idx]);
}

static dr_status op_setitems(dr_pickle *vm, int64_t first) {
    if (first < 1 || first <= floor_of(vm) ||
        (vm->sp - first) % 2)
        return FAIL(vm, DR_ERR_IO, "SETITEMS needs a dict below the mark and key-value pairs");
    dr_pk_value *d = vm->stack[first - 1];
    if (d->kind != DR_PK_DICT)
        return FAIL(vm, DR_ERR_IO, "SETITEMS on a %s", kind_name(d->kind));
    for (int64_t i = first; i < vm->sp; i += 2)
        DR_TRY(set_item(vm, d, vm->stack[i], vm->stack[i + 1]));
    vm->sp = first;
    return DR_OK;
}

static dr_status op_appends(dr_pickle *vm, int64_t first) {
    if (first < 1 || first <= floor_of(vm))
        return FAIL(vm, DR_ERR_IO, "APPENDS needs a list below the mark");
    dr_pk_value *l = vm->stack[first - 1];
    if (l->kind != DR_PK_LIST) return FAIL(vm, DR_ERR_IO, "APPENDS on a %s", kind_name(l->kind));
    for (int64_t i = first; i < vm->sp; i++) DR_TRY(append_item(vm, l, vm->stack[i]));
    vm->sp = first;
    return DR_OK;
}

static dr_status unsupported(dr_pickle *vm, uint8_t op, const char *name) {
    vm->p--;
    return FAIL(vm, DR_ERR_UNSUPPORTED, "opcode 0x%02x (%s) is not supported by the restricted "
                "unpickler", op, name);
}

static dr_status step(dr_pickle *vm, bool *stop) {
    uint8_t op = *vm->p++;
    dr_pk_value *v = NULL, *a = NULL, *b = NULL;
    int64_t first = 0;
    switch (op) {
    case 0x80: DR_TRY(need(vm, 1, "PROTO")); /* PROTO */
        if (*vm->p > 5) return FAIL(vm, DR_ERR_UNSUPPORTED, "pickle protocol %u", *vm->p);
        vm->p++;
        return DR_OK;
    case 0x95: DR_TRY(need(vm, 8, "FRAME")); vm->p += 8; return DR_OK; /* framing: a hint */
    case '.': *stop = true; return DR_OK;
    case '(':
        if (!grow((void **)&vm->marks, &vm->mcap, vm->nmarks + 1, sizeof *vm->marks)) return oom(vm);
        vm->marks[vm->nmarks++] = vm->sp;
        return DR_OK;
    case '0': return pop(vm, "POP", &v);
    case '1': return pop_mark(vm, "POP_MARK", &vm->sp);
    case '2': DR_TRY(top(vm, "DUP", &v)); return push(vm, v);
    case 'N': return push_new(vm, DR_PK_NONE, NULL);
    case 0x88: case 0x89: DR_TRY(push_new(vm, DR_PK_BOOL, &v)); v->i = op == 0x88; return DR_OK;
    case 'J': DR_TRY(need(vm, 4, "BININT")); DR_TRY(push_new(vm, DR_PK_INT, &v));
        v->i = (int32_t)(uint32_t)le(vm->p, 4); vm->p += 4; return DR_OK;
    case 'K': DR_TRY(need(vm, 1, "BININT1")); DR_TRY(push_new(vm, DR_PK_INT, &v));
        v->i = *vm->p++; return DR_OK;
    case 'M': DR_TRY(need(vm, 2, "BININT2")); DR_TRY(push_new(vm, DR_PK_INT, &v));
        v->i = (int64_t)le(vm->p, 2); vm->p += 2; return DR_OK;
    case 0x8a: case 0x8b: { /* LONG1, LONG4: little-endian two's complement */
        uint64_t n;
        DR_TRY(need(vm, op == 0x8a ? 1 : 4, "LONG"));
        n = op == 0x8a ? *vm->p : le(vm->p, 4);
        vm->p += op == 0x8a ? 1 : 4;
        if (n > 8) return FAIL(vm, DR_ERR_UNSUPPORTED, "an integer of %llu bytes does not fit int64",
                               (unsigned long long)n);
        DR_TRY(need(vm, n, "LONG"));
        uint64_t u = le(vm->p, (int)n);
        if (n > 0 && n < 8 && (vm->p[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
        vm->p += n;
        DR_TRY(push_new(vm, DR_PK_INT, &v));
        v->i = (int64_t)u;
        return DR_OK;
    }
    case 'G': { /* BINFLOAT: big-endian IEEE double */
        DR_TRY(need(vm, 8, "BINFLOAT"));
        uint64_t u = 0;
        for (int i = 0; i < 8; i++) u = u << 8 | vm->p[i];
        vm->p += 8;
        DR_TRY(push_new(vm, DR_PK_FLOAT, &v));
        memcpy(&v->f, &u, 8);
        return DR_OK;
    }
    case 'X': DR_TRY(need(vm, 4, "BINUNICODE")); vm->p += 4;
        return new_string(vm, DR_PK_STR, le(vm->p - 4, 4), "BINUNICODE");
    case 0x8c: DR_TRY(need(vm, 1, "SHORT_BINUNICODE")); vm->p += 1;
        return new_string(vm, DR_PK_STR, vm->p[-1], "SHORT_BINUNICODE");
    case 0x8d: DR_TRY(need(vm, 8, "BINUNICODE8")); vm->p += 8;
        return new_string(vm, DR_PK_STR, le(vm->p - 8, 8), "BINUNICODE8");
    case 'T': DR_TRY(need(vm, 4, "BINSTRING")); vm->p += 4; /* Python 2 str */
        return new_string(vm, DR_PK_STR, (uint32_t)le(vm->p - 4, 4) & 0x7FFFFFFFu, "BINSTRING");
    case 'U': DR_TRY(need(vm, 1, "SHORT_BINSTRING")); vm->p += 1;
        return new_string(vm, DR_PK_STR, vm->p[-1], "SHORT_BINSTRING");
    case 'B': DR_TRY(need(vm, 4, "BINBYTES")); vm->p += 4;
        return new_string(vm, DR_PK_BYTES, le(vm->p - 4, 4), "BINBYTES");
    case 'C': DR_TRY(need(vm, 1, "SHORT_BINBYTES")); vm->p += 1;
        return new_string(vm, DR_PK_BYTES, vm->p[-1], "SHORT_BINBYTES");
    case 0x8e: DR_TRY(need(vm, 8, "BINBYTES8")); vm->p += 8;
        return new_string(vm, DR_PK_BYTES, le(vm->p - 8, 8), "BINBYTES8");
    case ']': return push_new(vm, DR_PK_LIST, NULL);
    case '}': return push_new(vm, DR_PK_DICT, NULL);
    case ')': return push_new(vm, DR_PK_TUPLE, NULL);
    case 't': DR_TRY(pop_mark(vm, "TUPLE", &first)); DR_TRY(make_tuple(vm, first, &v));
        return push(vm, v);
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
        int64_t n = op - 0x84;
        if (vm->sp - floor_of(vm) < n)
            return FAIL(vm, DR_ERR_IO, "TUPLE%lld needs %lld items on the stack", (long long)n,
                        (long long)n);
        DR_TRY(make_tuple(vm, vm->sp - n, &v));
        return push(vm, v);
    }
    case 'l': case 'd': { /* LIST, DICT from the mark */
        DR_TRY(pop_mark(vm, op == 'l' ? "LIST" : "DICT", &first));
        if (op == 'd' && (vm->sp - first) % 2)
            return FAIL(vm, DR_ERR_IO, "DICT with an odd number of items");
        DR_TRY(new_value(vm, op == 'l' ? DR_PK_LIST : DR_PK_DICT, &v));
        for (int64_t i = first; i < vm->sp; i += op == 'l' ? 1 : 2)
            DR_TRY(op == 'l' ? append_item(vm, v, vm->stack[i])
                             : set_item(vm, v, vm->stack[i], vm->stack[i + 1]));
        vm->sp = first;
        return push(vm, v);
    }
    case 'a':
        DR_TRY(pop(vm, "APPEND", &v));
        DR_TRY(top(vm, "APPEND", &a));
        if (a->kind != DR_PK_LIST) return FAIL(vm, DR_ERR_IO, "APPEND on a %s", kind_name(a->kind));
        return append_item(vm, a, v);
    case 'e': DR_TRY(pop_mark(vm, "APPENDS", &first)); return op_appends(vm, first);
    case 's':
        DR_TRY(pop(vm, "SETITEM", &v));
        DR_TRY(pop(vm, "SETITEM", &a));
        DR_TRY(top(vm, "SETITEM", &b));
        if (b->kind != DR_PK_DICT) return FAIL(vm, DR_ERR_IO, "SETITEM on a %s", kind_name(b->kind));
        return set_item(vm, b, a, v);
    case 'u': DR_TRY(pop_mark(vm, "SETITEMS", &first)); return op_setitems(vm, first);
    case 'c': return op_global(vm);
    case 0x93: return op_stack_global(vm);
    case 'R':
        DR_TRY(pop(vm, "REDUCE", &a));
        DR_TRY(pop(vm, "REDUCE", &b));
        DR_TRY(call_global(vm, b, a, 0, &v));
        return push(vm, v);
    case 'b': /* BUILD: state dropped for dicts (OrderedDict._metadata) and tensors */
        DR_TRY(pop(vm, "BUILD", &a));
        DR_TRY(top(vm, "BUILD", &b));
        if (b->kind != DR_PK_DICT && b->kind != DR_PK_TENSOR)
            return FAIL(vm, DR_ERR_IO, "BUILD (setting the state) of a %s is not allowed",
                        kind_name(b->kind));
        return DR_OK;
    case 0x81: case 0x92: /* NEWOBJ, NEWOBJ_EX */
        if (op == 0x92) DR_TRY(pop(vm, "NEWOBJ_EX", &v));
        DR_TRY(pop(vm, "NEWOBJ", &a));
        DR_TRY(pop(vm, "NEWOBJ", &b));
        return FAIL(vm, DR_ERR_IO, "NEWOBJ of %s is not allowed (only tensors and plain "
                    "containers are built)", b->kind == DR_PK_GLOBAL
                        ? (b->global == DR_PKG_STORAGE_CLASS ? dr_pk_storage_types[b->storage].name
                                                             : global_names[b->global])
                        : kind_name(b->kind));
    case 'Q': return op_persid(vm);
    case 'q': DR_TRY(need(vm, 1, "BINPUT")); vm->p++; return memo_put(vm, vm->p[-1]);
    case 'r': DR_TRY(need(vm, 4, "LONG_BINPUT")); vm->p += 4; return memo_put(vm, le(vm->p - 4, 4));
    case 0x94: return memo_put(vm, (uint64_t)vm->memo_filled);
    case 'h': DR_TRY(need(vm, 1, "BINGET")); vm->p++; return memo_get(vm, vm->p[-1]);
    case 'j': DR_TRY(need(vm, 4, "LONG_BINGET")); vm->p += 4; return memo_get(vm, le(vm->p - 4, 4));
    case 'i': case 'o': return unsupported(vm, op, "INST/OBJ: building class instances");
    case 'P': return unsupported(vm, op, "PERSID, protocol 0");
    case 'I': case 'L': case 'F': case 'S': case 'V': case 'p': case 'g':
        return unsupported(vm, op, "a protocol 0 text opcode");
    case 0x8f: case 0x90: case 0x91: return unsupported(vm, op, "sets");
    case 0x82: case 0x83: case 0x84: return unsupported(vm, op, "the extension registry");
    case 0x96: case 0x97: case 0x98: return unsupported(vm, op, "out-of-band buffers");
    default:
        vm->p--;
        return FAIL(vm, DR_ERR_IO, "unknown opcode 0x%02x: not a pickle, or corrupt", op);
    }
}

dr_status dr_pickle_load(const char *name, const uint8_t *bytes, size_t len,
                         dr_pk_storage_fn storage, void *ctx, dr_pickle **out,
                         const dr_pk_value **root) {
    *out = NULL;
    *root = NULL;
    dr_pickle *vm = calloc(1, sizeof *vm);
    if (!vm) return dr_fail(DR_ERR_OOM, "%s: out of memory", name);
    *out = vm;
    vm->name = name;
    vm->start = vm->p = bytes;
    vm->end = bytes + len;
    vm->storage = storage;
    vm->ctx = ctx;
    bool stop = false;
    while (!stop) {
        if (vm->p >= vm->end) return FAIL(vm, DR_ERR_IO, "the pickle ends without STOP (truncated)");
        DR_TRY(step(vm, &stop));
    }
    if (vm->nmarks || vm->sp != 1)
        return FAIL(vm, DR_ERR_IO, "STOP with %lld values and %lld marks on the stack "
                    "(expected one value)", (long long)vm->sp, (long long)vm->nmarks);
    *root = vm->stack[0];
    return DR_OK;
}

void dr_pickle_free(dr_pickle *vm) {
    if (!vm) return;
    for (int64_t i = 0; i < vm->nall; i++) {
        dr_pk_value *v = vm->all[i];
        if (v->tensor) dr_tensor_release(v->tensor);
        free(v->items);
        free(v->s);
        free(v);
    }
    free(vm->all);
    free(vm->stack);
    free(vm->marks);
    free(vm->memo);
    free(vm);
}
