/* The model object: a named parameter table, its initialisation, and loading
 * checkpoints into it with a full report of mismatched keys (see model.h). */
#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../autograd/autograd.h"
#include "../backend/backend.h"
#include "../backend/backend.h"
#include "../tensor/tensor_internal.h"

/* ---- the name index (FNV-1a, open addressing) ------------------------------ */
static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int64_t index_lookup(const dr_model *m, const char *name) {
    if (m->nslots == 0) return -1;
    for (uint64_t i = name_hash(name) & (uint64_t)(m->nslots - 1);; i = (i + 1) & (uint64_t)(m->nslots - 1)) {
        int64_t k = m->slots[i];
        if (k < 0) return -1;
        if (strcmp(m->params[k].name, name) == 0) return k;
    }
}

static void index_insert(int64_t *slots, int64_t nslots, const char *name, int64_t k) {
    uint64_t i = name_hash(name) & (uint64_t)(nslots - 1);
    while (slots[i] >= 0) i = (i + 1) & (uint64_t)(nslots - 1);
    slots[i] = k;
}

static dr_status index_grow(dr_model *m) {
    int64_t n = m->nslots ? m->nslots * 2 : 256;
    int64_t *slots = malloc((size_t)n * sizeof *slots);
    if (!slots) return dr_fail(DR_ERR_OOM, "%s: out of memory for the parameter index", m->context);
    for (int64_t i = 0; i < n; i++) slots[i] = -1;
    for (int64_t k = 0; k < m->nparams; k++) index_insert(slots, n, m->params[k].name, k);
    free(m->slots);
    m->slots = slots;
    m->nslots = n;
    return DR_OK;
}

static dr_status param_new(dr_model *m, dr_tensor **slot, int32_t init, double init_arg,
                           const int64_t *sizes, int32_t ndim, bool adapter, const char *fmt,
                           va_list ap) {
    char name[512];
    int len = vsnprintf(name, sizeof name, fmt, ap);
    if (len < 0 || (size_t)len >= sizeof name)
        return dr_fail(DR_ERR_ARG, "%s: parameter name too long", m->context);
    if (index_lookup(m, name) >= 0)
        return dr_fail(DR_ERR_INTERNAL, "%s: parameter %s registered twice", m->context, name);
    if (m->nparams == m->cap) {
        int64_t cap = m->cap ? m->cap * 2 : 256;
        dr_param *p = realloc(m->params, (size_t)cap * sizeof *p);
        if (!p) return dr_fail(DR_ERR_OOM, "%s: out of memory for parameters", m->context);
        m->params = p;
        m->cap = cap;
    }
    if (2 * (m->nparams + 1) > m->nslots) DR_TRY(index_grow(m));
    dr_tensor *t = NULL;
    dr_status st = dr_tensor_empty(sizes, ndim, DR_F32, m->device, &t);
    if (st != DR_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", dr_last_error());
        return dr_fail(st, "%s: cannot allocate %s %s: %s", m->context, name,
                       dr_sizes_str(sizes, ndim), why);
    }
    char *copy = strdup(name);
    if (!copy) {
        dr_tensor_release(t);
        return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    }
    dr_param *p = &m->params[m->nparams];
    p->name = copy;
    p->t = t;
    p->init = init;
    p->init_arg = init_arg;
    p->adapter = adapter;
    p->optional = false;
    index_insert(m->slots, m->nslots, copy, m->nparams);
    m->nparams++;
    *slot = t;
    return DR_OK;
}

dr_status dr_model_param_new(dr_model *m, dr_tensor **slot, int32_t init, double init_arg,
                             const int64_t *sizes, int32_t ndim, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dr_status st = param_new(m, slot, init, init_arg, sizes, ndim, false, fmt, ap);
    va_end(ap);
    return st;
}

dr_status dr_model_adapter_new(dr_model *m, dr_tensor **slot, int32_t init, double init_arg,
                               const int64_t *sizes, int32_t ndim, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dr_status st = param_new(m, slot, init, init_arg, sizes, ndim, true, fmt, ap);
    va_end(ap);
    return st;
}

void dr_model_param_set_init(dr_model *m, const dr_tensor *t, int32_t init, double init_arg) {
    for (int64_t k = m->nparams - 1; k >= 0; k--)
        if (m->params[k].t == t) {
            m->params[k].init = init;
            m->params[k].init_arg = init_arg;
            return;
        }
}

/* ---- initialisation ------------------------------------------------------------ */
static dr_status param_init(dr_param *p, dr_generator *gen) {
    if (p->t->device.type != DR_CPU) { /* the same numbers as on the cpu, made there and copied */
        dr_param host = *p;
        dr_status st = dr_tensor_empty(p->t->sizes, p->t->ndim, DR_F32, dr_cpu(), &host.t);
        if (st == DR_OK) st = param_init(&host, gen);
        if (st == DR_OK) st = dr_tensor_copy_(p->t, host.t);
        dr_tensor_release(host.t);
        return st;
    }
    switch (p->init) {
    case DR_INIT_ZERO: return dr_tensor_fill_(p->t, 0.0);
    case DR_INIT_ONE: return dr_tensor_fill_(p->t, 1.0);
    case DR_INIT_NORMAL: return dr_normal_(p->t, 0.0, p->init_arg, gen);
    default: {
        /* U(-b, b) = b (2 U(0,1) - 1), b = 1/sqrt(fan_in) (kaiming_uniform with a = sqrt 5) */
        double b = 1.0 / sqrt(p->init_arg > 0 ? p->init_arg : 1.0);
        const dr_backend *be = dr_backend_get(p->t->device, "model_init_");
        if (!be) return DR_ERR_DEVICE;
        /* uniform [0, 1) in place (the stream of dr_rand), then 2 b u - b */
        DR_TRY(be->random(p->t, DR_RANDOM_UNIFORM, gen->seed, gen->offset, 24));
        int64_t n = dr_tensor_numel(p->t);
        gen->offset += ((uint64_t)n + 3) / 4;
        float *o = dr_tensor_data(p->t);
        float scale = (float)(2.0 * b), shift = (float)b;
        #pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++) o[i] = o[i] * scale - shift;
        return DR_OK;
    }
    }
}

dr_status dr_model_init_(dr_model *m, uint64_t seed, int32_t adapters_only) {
    DR_TRY(dr_model_check(m, NULL, "model_init_"));
    dr_generator gen = {seed, 0};
    bool g = dr_grad_pause();
    dr_status st = DR_OK;
    for (int64_t k = 0; k < m->nparams && st == DR_OK; k++)
        if (!adapters_only || m->params[k].adapter) st = param_init(&m->params[k], &gen);
    dr_grad_resume(g);
    return st;
}

/* ---- create / free / accessors ------------------------------------------------- */
typedef dr_status (*builder_fn)(dr_model *m, const dr_json *cfg);
static const struct { const char *kind; builder_fn build; } builders[] = {
    {"unet", dr_unet_build},
    {"vae", dr_vae_build},
    {"clip_text", dr_clip_text_build},
    {"imagereward", dr_imagereward_build},
    {"clip", dr_clip_build},
    {"aesthetic", dr_aesthetic_build},
};

void dr_model_free(dr_model *m) {
    if (!m) return;
    if (m->impl_free) m->impl_free(m->impl);
    for (int64_t k = 0; k < m->nparams; k++) {
        free(m->params[k].name);
        dr_tensor_release(m->params[k].t);
    }
    for (int64_t i = 0; i < m->nlora; i++) free(m->lora_names[i]);
    free(m->lora_names);
    free(m->lora_targets);
    free(m->params);
    free(m->slots);
    free(m);
}

dr_status dr_model_create(const char *kind, const char *config_json, size_t len,
                          const char *context, uint64_t seed, dr_model **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "model_create: out is NULL");
    *out = NULL;
    if (!kind || !config_json) return dr_fail(DR_ERR_ARG, "model_create: kind and config are required");
    builder_fn build = NULL;
    for (size_t i = 0; i < sizeof builders / sizeof *builders; i++)
        if (strcmp(kind, builders[i].kind) == 0) build = builders[i].build;
    if (!build)
        return dr_fail(DR_ERR_ARG, "model_create: unknown model kind '%s' (expected unet, vae, clip_text, imagereward, clip or aesthetic)",
                       kind);
    dr_model *m = calloc(1, sizeof *m);
    if (!m) return dr_fail(DR_ERR_OOM, "model_create: out of memory");
    snprintf(m->kind, sizeof m->kind, "%s", kind);
    snprintf(m->context, sizeof m->context, "%s: %s", kind, context && *context ? context : "config");
    dr_json_doc *doc = NULL;
    dr_status st = dr_json_parse(config_json, len, NULL, m->context, &doc);
    if (st == DR_OK && dr_json_root(doc)->type != DR_JSON_OBJECT)
        st = dr_fail(DR_ERR_IO, "%s: config must be a JSON object", m->context);
    if (st == DR_OK) st = build(m, dr_json_root(doc));
    dr_json_free(doc);
    if (st == DR_OK && seed != (uint64_t)DR_MODEL_NO_INIT) st = dr_model_init_(m, seed, 0);
    for (int64_t k = 0; st == DR_OK && seed == (uint64_t)DR_MODEL_NO_INIT && k < m->nparams; k++)
        st = dr_tensor_fill_(m->params[k].t, 0.0);
    if (st != DR_OK) {
        dr_model_free(m);
        return st;
    }
    *out = m;
    return DR_OK;
}

dr_status dr_model_check(const dr_model *m, const char *kind, const char *op) {
    if (!m) return dr_fail(DR_ERR_ARG, "%s: model is NULL", op);
    if (kind && strcmp(m->kind, kind) != 0)
        return dr_fail(DR_ERR_ARG, "%s: expects a %s model, got a %s model", op, kind, m->kind);
    return DR_OK;
}

const char *dr_model_kind(const dr_model *m) { return m ? m->kind : NULL; }
int64_t dr_model_param_count(const dr_model *m) { return m ? m->nparams : 0; }
const char *dr_model_param_name(const dr_model *m, int64_t i) {
    return m && i >= 0 && i < m->nparams ? m->params[i].name : NULL;
}
dr_tensor *dr_model_param(const dr_model *m, int64_t i) {
    return m && i >= 0 && i < m->nparams ? m->params[i].t : NULL;
}
int dr_model_param_is_adapter(const dr_model *m, int64_t i) {
    return m && i >= 0 && i < m->nparams && m->params[i].adapter;
}
int64_t dr_model_find_param(const dr_model *m, const char *name) {
    return m && name ? index_lookup(m, name) : -1;
}
int dr_model_checkpoint_mode(const dr_model *m) {
    if (!m->checkpointing || !dr_is_grad_enabled()) return 0;
    for (int64_t k = 0; k < m->nparams; k++)
        if (dr_tensor_requires_grad(m->params[k].t)) return 2;
    return 1;
}

void dr_model_set_checkpointing(dr_model *m, int on) {
    if (m) m->checkpointing = on != 0;
}

/* Each parameter's header stays (the bindings and optimizers hold the pointers);
 * its storage is swapped for a copy on `device`. Gradients are dropped: they
 * belong to the old device. */
dr_status dr_model_to_device(dr_model *m, dr_device device) {
    DR_TRY(dr_model_check(m, NULL, "model.to"));
    if (!dr_backend_get(device, "model.to")) return DR_ERR_DEVICE;
    bool grad = dr_grad_pause();
    dr_status st = DR_OK;
    for (int64_t k = 0; k < m->nparams && st == DR_OK; k++) {
        dr_tensor *t = m->params[k].t;
        if (dr_device_eq(t->device, device)) continue;
        dr_tensor *moved;
        st = dr_tensor_to_device(t, device, &moved);
        if (st != DR_OK) break;
        dr_storage *old = t->storage;
        t->storage = moved->storage;
        __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_RELAXED);
        t->storage_offset = moved->storage_offset;
        for (int32_t d = 0; d < t->ndim; d++) t->strides[d] = moved->strides[d];
        t->device = device;
        dr_storage_release(old);
        dr_tensor_release(moved);
        dr_tensor_set_grad(t, NULL);
    }
    dr_grad_resume(grad);
    if (st != DR_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", dr_last_error());
        return dr_fail(st, "%s: moving to %s failed (some parameters may have moved): %s", m->context,
                       dr_device_str(device), why);
    }
    m->device = device;
    return DR_OK;
}

/* ---- loading -------------------------------------------------------------------- */
/* A list of names for the report: the first few in full, then a count. */
typedef struct name_list {
    char text[2048];
    size_t len;
    int64_t count;
} name_list;

static void name_list_add(name_list *l, const char *fmt, ...) DR_PRINTF(2, 3);
static void name_list_add(name_list *l, const char *fmt, ...) {
    l->count++;
    if (l->count > 8) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->text + l->len, sizeof l->text - l->len, fmt, ap);
    va_end(ap);
    if (n > 0) l->len = l->len + (size_t)n < sizeof l->text ? l->len + (size_t)n : sizeof l->text - 1;
}

static const char *name_list_str(const name_list *l) {
    static _Thread_local char buf[2200];
    if (l->count > 8)
        snprintf(buf, sizeof buf, "%s and %lld more", l->text, (long long)(l->count - 8));
    else
        snprintf(buf, sizeof buf, "%s", l->text);
    return buf;
}

/* Checkpoint keys that are buffers, not parameters (transformers keeps
 * position_ids in older CLIP files, ImageReward.pt the BERT embeddings' one). */
static bool ignorable_key(const dr_model *m, const char *key) {
    if (strcmp(m->kind, "clip_text") == 0 || strcmp(m->kind, "imagereward") == 0 ||
        strcmp(m->kind, "clip") == 0) {
        size_t n = strlen(key);
        return n >= 12 && strcmp(key + n - 12, "position_ids") == 0;
    }
    return false;
}

/* One load in progress: which parameters were present, what did not fit. */
typedef struct load_state {
    bool *seen;
    name_list unexpected, mismatched;
    int64_t loaded;
} load_state;

/* The checkpoint's key (prefix stripped) into its parameter; get(ctx, &src) reads the
 * tensor, only when the key names a parameter. */
static dr_status load_key(dr_model *m, load_state *ls, const char *key,
                          dr_status (*get)(void *ctx, dr_tensor **src), void *ctx) {
    int64_t k = index_lookup(m, key);
    if (k < 0 && strcmp(m->kind, "clip_text") == 0 && strlen(key) < 400) {
        /* transformers >= 5 saves CLIPTextModel without the text_model. prefix */
        char full[512];
        snprintf(full, sizeof full, "text_model.%s", key);
        k = index_lookup(m, full);
    }
    if (k < 0) {
        if (!ignorable_key(m, key))
            name_list_add(&ls->unexpected, "%s%s", ls->unexpected.count ? ", " : "", key);
        return DR_OK;
    }
    dr_tensor *src = NULL;
    DR_TRY(get(ctx, &src));
    dr_tensor *dst = m->params[k].t;
    bool same = src->ndim == dst->ndim;
    for (int32_t d = 0; same && d < dst->ndim; d++) same = src->sizes[d] == dst->sizes[d];
    ls->seen[k] = true; /* present: not "missing", even when it does not fit */
    dr_status st = DR_OK;
    if (!same) {
        name_list_add(&ls->mismatched, "%s%s: file %s, model %s", ls->mismatched.count ? ", " : "",
                      key, dr_shape_str(src), dr_shape_str(dst));
    } else if (!dr_dtype_is_float(src->scalar_type)) {
        name_list_add(&ls->mismatched, "%s%s: dtype %s is not a float type",
                      ls->mismatched.count ? ", " : "", key, dr_dtype_name(src->scalar_type));
    } else {
        st = dr_tensor_copy_(dst, src);
        if (st == DR_OK) ls->loaded++;
    }
    dr_tensor_release(src);
    return st;
}

/* The report of every missing, unexpected and wrong-shape key, when the flags do
 * not allow them; `source` names the checkpoint. */
static dr_status load_finish(dr_model *m, load_state *ls, const char *source, int32_t flags) {
    name_list missing = {0};
    for (int64_t k = 0; k < m->nparams; k++)
        if (!ls->seen[k] && !m->params[k].adapter && !m->params[k].optional)
            name_list_add(&missing, "%s%s", missing.count ? ", " : "", m->params[k].name);
    bool bad_missing = missing.count && !(flags & DR_LOAD_ALLOW_MISSING);
    bool bad_unexpected = ls->unexpected.count && !(flags & DR_LOAD_ALLOW_UNEXPECTED);
    if (!bad_missing && !bad_unexpected && !ls->mismatched.count) return DR_OK;
    char msg[8192];
    int len = snprintf(msg, sizeof msg, "%s: checkpoint %s does not fit the model:", m->context, source);
    if (bad_missing && len < (int)sizeof msg)
        len += snprintf(msg + len, sizeof msg - (size_t)len, " %lld missing key%s (%s);",
                        (long long)missing.count, missing.count == 1 ? "" : "s", name_list_str(&missing));
    if (bad_unexpected && len < (int)sizeof msg)
        len += snprintf(msg + len, sizeof msg - (size_t)len, " %lld unexpected key%s (%s);",
                        (long long)ls->unexpected.count, ls->unexpected.count == 1 ? "" : "s",
                        name_list_str(&ls->unexpected));
    if (ls->mismatched.count && len < (int)sizeof msg)
        snprintf(msg + len, sizeof msg - (size_t)len, " %lld wrong shape%s (%s);",
                 (long long)ls->mismatched.count, ls->mismatched.count == 1 ? "" : "s",
                 name_list_str(&ls->mismatched));
    return dr_fail(DR_ERR_IO, "%s", msg);
}

typedef struct st_get_ctx {
    dr_safetensors *file;
    const char *name;
} st_get_ctx;

static dr_status st_get(void *ctx, dr_tensor **src) {
    st_get_ctx *c = ctx;
    return dr_safetensors_get(c->file, c->name, src);
}

dr_status dr_model_load_safetensors(dr_model *m, const char *const *paths, int32_t npaths,
                                    const char *prefix, int32_t flags, int64_t *nloaded) {
    DR_TRY(dr_model_check(m, NULL, "model_load"));
    if (npaths <= 0 || !paths) return dr_fail(DR_ERR_ARG, "%s: no checkpoint files given", m->context);
    size_t plen = prefix ? strlen(prefix) : 0;
    load_state ls = {0};
    ls.seen = calloc((size_t)(m->nparams ? m->nparams : 1), 1);
    if (!ls.seen) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    dr_status st = DR_OK;
    bool g = dr_grad_pause();
    for (int32_t f = 0; f < npaths && st == DR_OK; f++) {
        dr_safetensors *file = NULL;
        st = dr_safetensors_open(paths[f], &file);
        if (st != DR_OK) break;
        int64_t n = dr_safetensors_count(file);
        for (int64_t i = 0; i < n && st == DR_OK; i++) {
            const char *key = dr_safetensors_name(file, i);
            if (plen) {
                if (strncmp(key, prefix, plen) != 0) continue;
                key += plen;
            }
            st_get_ctx ctx = {file, dr_safetensors_name(file, i)};
            st = load_key(m, &ls, key, st_get, &ctx);
        }
        dr_safetensors_close(file);
    }
    dr_grad_resume(g);
    if (st == DR_OK) {
        char source[1100];
        snprintf(source, sizeof source, "%s%s", paths[0], npaths > 1 ? " (and more files)" : "");
        st = load_finish(m, &ls, source, flags);
    }
    free(ls.seen);
    if (nloaded) *nloaded = ls.loaded;
    return st;
}

static dr_status tensor_get(void *ctx, dr_tensor **src) {
    dr_tensor *t = ctx;
    dr_tensor_retain(t);
    *src = t;
    return DR_OK;
}

dr_status dr_model_load_tensors(dr_model *m, const char *const *names, dr_tensor *const *tensors,
                                int64_t n, const char *source, const char *prefix, int32_t flags,
                                int64_t *nloaded) {
    DR_TRY(dr_model_check(m, NULL, "model_load_tensors"));
    if (n < 0 || (n > 0 && (!names || !tensors)))
        return dr_fail(DR_ERR_ARG, "%s: model_load_tensors: names and tensors are required", m->context);
    for (int64_t i = 0; i < n; i++) {
        if (!names[i]) return dr_fail(DR_ERR_ARG, "%s: model_load_tensors: name %lld is NULL", m->context,
                                      (long long)i + 1);
        DR_TRY(dr_check_tensor(tensors[i], "model_load_tensors", names[i]));
    }
    size_t plen = prefix ? strlen(prefix) : 0;
    load_state ls = {0};
    ls.seen = calloc((size_t)(m->nparams ? m->nparams : 1), 1);
    if (!ls.seen) return dr_fail(DR_ERR_OOM, "%s: out of memory", m->context);
    dr_status st = DR_OK;
    bool g = dr_grad_pause();
    for (int64_t i = 0; i < n && st == DR_OK; i++) {
        const char *key = names[i];
        if (plen) {
            if (strncmp(key, prefix, plen) != 0) continue;
            key += plen;
        }
        st = load_key(m, &ls, key, tensor_get, tensors[i]);
    }
    dr_grad_resume(g);
    if (st == DR_OK) st = load_finish(m, &ls, source && *source ? source : "(tensors)", flags);
    free(ls.seen);
    if (nloaded) *nloaded = ls.loaded;
    return st;
}

/* ---- config readers ----------------------------------------------------------- */
static const dr_json *cfg_get(const dr_json *cfg, const char *key) {
    const dr_json *v = dr_json_get(cfg, key);
    return v && v->type != DR_JSON_NULL ? v : NULL;
}

dr_status dr_cfg_int(const dr_model *m, const dr_json *cfg, const char *key, int64_t dflt,
                     int64_t *out) {
    const dr_json *v = cfg_get(cfg, key);
    if (!v) { *out = dflt; return DR_OK; }
    if (v->type != DR_JSON_INT)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' must be an integer, got %s", m->context, key,
                       dr_json_type_name(v->type));
    *out = v->u.i;
    return DR_OK;
}

dr_status dr_cfg_num(const dr_model *m, const dr_json *cfg, const char *key, double dflt,
                     double *out) {
    const dr_json *v = cfg_get(cfg, key);
    if (!v) { *out = dflt; return DR_OK; }
    if (v->type != DR_JSON_INT && v->type != DR_JSON_NUMBER)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' must be a number, got %s", m->context, key,
                       dr_json_type_name(v->type));
    *out = dr_json_number(v);
    return DR_OK;
}

dr_status dr_cfg_bool(const dr_model *m, const dr_json *cfg, const char *key, bool dflt,
                      bool *out) {
    const dr_json *v = cfg_get(cfg, key);
    if (!v) { *out = dflt; return DR_OK; }
    if (v->type != DR_JSON_BOOL)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' must be true or false, got %s", m->context,
                       key, dr_json_type_name(v->type));
    *out = v->u.b;
    return DR_OK;
}

dr_status dr_cfg_str(const dr_model *m, const dr_json *cfg, const char *key, const char *dflt,
                     const char **out) {
    const dr_json *v = cfg_get(cfg, key);
    if (!v) { *out = dflt; return DR_OK; }
    if (v->type != DR_JSON_STRING)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' must be a string, got %s", m->context, key,
                       dr_json_type_name(v->type));
    *out = v->u.s;
    return DR_OK;
}

dr_status dr_cfg_int_list(const dr_model *m, const dr_json *cfg, const char *key, int64_t n,
                          int64_t dflt, int64_t *out) {
    const dr_json *v = cfg_get(cfg, key);
    if (!v || v->type == DR_JSON_INT) {
        for (int64_t i = 0; i < n; i++) out[i] = v ? v->u.i : dflt;
        return DR_OK;
    }
    if (v->type != DR_JSON_ARRAY)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' must be an integer or a list of %lld integers, got %s",
                       m->context, key, (long long)n, dr_json_type_name(v->type));
    if ((int64_t)v->len != n)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' has %zu entries, expected %lld (one per block)",
                       m->context, key, v->len, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        if (v->u.items[i].type != DR_JSON_INT)
            return dr_fail(DR_ERR_IO, "%s: config key '%s'[%lld] must be an integer, got %s", m->context,
                           key, (long long)i, dr_json_type_name(v->u.items[i].type));
        out[i] = v->u.items[i].u.i;
    }
    return DR_OK;
}

dr_status dr_cfg_str_list(const dr_model *m, const dr_json *cfg, const char *key,
                          const char **out, int64_t cap, int64_t *n) {
    const dr_json *v = cfg_get(cfg, key);
    if (!v) return dr_fail(DR_ERR_IO, "%s: config key '%s' is missing", m->context, key);
    if (v->type != DR_JSON_ARRAY)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' must be a list of strings, got %s", m->context,
                       key, dr_json_type_name(v->type));
    if ((int64_t)v->len > cap || v->len == 0)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' has %zu entries (1 to %lld supported)",
                       m->context, key, v->len, (long long)cap);
    for (size_t i = 0; i < v->len; i++) {
        if (v->u.items[i].type != DR_JSON_STRING)
            return dr_fail(DR_ERR_IO, "%s: config key '%s'[%zu] must be a string, got %s", m->context,
                           key, i, dr_json_type_name(v->u.items[i].type));
        out[i] = v->u.items[i].u.s;
    }
    *n = (int64_t)v->len;
    return DR_OK;
}

dr_status dr_cfg_range(const dr_model *m, const char *key, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        return dr_fail(DR_ERR_IO, "%s: config key '%s' = %lld is out of range [%lld, %lld]", m->context,
                       key, (long long)v, (long long)lo, (long long)hi);
    return DR_OK;
}

dr_status dr_cfg_require_default(const dr_model *m, const dr_json *cfg, const char *key,
                                 const char *dflt_str) {
    const dr_json *v = cfg_get(cfg, key);
    if (!v) return DR_OK;
    if (v->type == DR_JSON_BOOL && !v->u.b) return DR_OK;
    if (dflt_str && v->type == DR_JSON_STRING && strcmp(v->u.s, dflt_str) == 0) return DR_OK;
    char shown[80];
    if (v->type == DR_JSON_STRING)
        dr_json_quote_msg(v->u.s, v->len, shown, sizeof shown);
    else
        snprintf(shown, sizeof shown, "a %s", dr_json_type_name(v->type));
    return dr_fail(DR_ERR_UNSUPPORTED, "%s: config key '%s' = %s is not supported (only %s%s%s)",
                   m->context, key, shown, dflt_str ? "'" : "null/false", dflt_str ? dflt_str : "",
                   dflt_str ? "'" : "");
}
