/* The autograd tape and the backward engine (Kahn's algorithm over the nodes
 * reachable from the root: a node runs once every consumer has added its
 * gradient, so each gradient is complete when used). */
#include <stdlib.h>
#include <string.h>

#include "autograd.h"

static _Thread_local bool grad_disabled;

bool dr_grad_mode(void) { return !grad_disabled; }
bool dr_grad_pause(void) {
    bool was = !grad_disabled;
    grad_disabled = true;
    return was;
}
void dr_grad_resume(bool was_enabled) { grad_disabled = !was_enabled; }
int dr_is_grad_enabled(void) { return !grad_disabled; }
void dr_set_grad_enabled(int enabled) { grad_disabled = !enabled; }

static dr_autograd_meta *meta(const dr_tensor *t) { return (dr_autograd_meta *)t->autograd; }

bool dr_requires_grad(const dr_tensor *t) {
    return t && t->autograd && meta(t)->requires_grad;
}

static dr_status ensure_meta(dr_tensor *t, const char *op) {
    if (t->autograd) return DR_OK;
    t->autograd = calloc(1, sizeof(dr_autograd_meta));
    return t->autograd ? DR_OK : dr_fail(DR_ERR_OOM, "%s: out of memory for autograd state", op);
}

/* ---- releasing: iterative, so a graph of a million ops does not overflow the
 * C stack; nested releases (a saved tensor's own grad_fn) join the work list. */

static _Thread_local dr_node **work;
static _Thread_local size_t nwork, capwork;
static _Thread_local bool releasing;

static void drop_saved(dr_node *n) {
    for (int i = 0; i < DR_NODE_MAX_SAVED; i++) {
        dr_tensor_release(n->saved[i]);
        n->saved[i] = NULL;
    }
    if (n->custom_release) n->custom_release(n->custom_ctx);
    n->custom_release = NULL;
    n->custom_ctx = NULL;
}

static void node_release(dr_node *n) {
    if (!n || __atomic_sub_fetch(&n->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (nwork == capwork) {
        size_t cap = capwork ? 2 * capwork : 64;
        dr_node **w = realloc(work, cap * sizeof *w);
        if (!w) { /* cannot defer: release in place (recursion, bounded by memory) */
            drop_saved(n);
            for (int i = 0; i < n->ninputs; i++) {
                node_release(n->next[i].node);
                dr_tensor_release(n->next[i].leaf);
            }
            dr_tensor_release(n->pending);
            free(n);
            return;
        }
        work = w;
        capwork = cap;
    }
    work[nwork++] = n;
    if (releasing) return;
    releasing = true;
    while (nwork > 0) {
        dr_node *m = work[--nwork];
        drop_saved(m);
        for (int i = 0; i < m->ninputs; i++) {
            node_release(m->next[i].node);
            dr_tensor_release(m->next[i].leaf);
        }
        dr_tensor_release(m->pending);
        free(m);
    }
    releasing = false;
}

void dr_autograd_release_meta(dr_tensor *t) {
    dr_autograd_meta *m = meta(t);
    if (!m) return;
    t->autograd = NULL;
    dr_tensor_release(m->grad);
    node_release(m->grad_fn);
    free(m);
}

/* ---- recording ------------------------------------------------------------ */

dr_status dr_autograd_record(dr_tensor *out, const char *name, dr_backward_fn fn,
                             const dr_tensor *const *inputs, int32_t ninputs, dr_node **node) {
    *node = NULL;
    if (grad_disabled) return DR_OK;
    bool any = false;
    for (int32_t i = 0; i < ninputs; i++) any = any || dr_requires_grad(inputs[i]);
    if (!any) return DR_OK;
    if (!dr_dtype_is_float(out->scalar_type))
        return DR_OK; /* integer results (argmax, casts to int) carry no gradient */
    dr_node *n = calloc(1, sizeof *n);
    if (!n) return dr_fail(DR_ERR_OOM, "%s: out of memory for an autograd node", name);
    n->refcount = 1;
    n->name = name;
    n->backward = fn;
    n->ninputs = ninputs;
    for (int32_t i = 0; i < ninputs; i++) {
        const dr_tensor *in = inputs[i];
        n->in_ndim[i] = in->ndim;
        n->in_dtype[i] = in->scalar_type;
        n->in_device[i] = in->device;
        memcpy(n->in_sizes[i], in->sizes, sizeof in->sizes);
        if (!dr_requires_grad(in)) continue;
        dr_node *fn_in = meta(in)->grad_fn;
        if (fn_in) {
            __atomic_add_fetch(&fn_in->refcount, 1, __ATOMIC_RELAXED);
            n->next[i].node = fn_in;
        } else {
            dr_tensor_retain((dr_tensor *)in);
            n->next[i].leaf = (dr_tensor *)in;
        }
    }
    dr_status st = ensure_meta(out, name);
    if (st != DR_OK) {
        node_release(n);
        return st;
    }
    meta(out)->requires_grad = true;
    meta(out)->grad_fn = n;
    *node = n;
    return DR_OK;
}

static dr_status custom_backward(dr_node *n, const dr_tensor *g, dr_tensor **grads) {
    if (!n->custom_fn || n->released)
        return dr_fail(DR_ERR_ARG, "backward through %s: the graph was freed by an earlier "
                       "backward(); pass retain_graph=true to backward twice", n->name);
    dr_clear_error();
    int st = n->custom_fn(n->custom_ctx, g, grads);
    if (st != DR_OK && dr_last_error()[0] == '\0')
        return dr_fail(DR_ERR_INTERNAL, "backward through %s failed", n->name);
    return (dr_status)st;
}

dr_status dr_autograd_custom(dr_tensor *out, const char *name, const dr_tensor *const *inputs,
                             int32_t ninputs, dr_custom_backward_fn fn, void *ctx,
                             void (*release)(void *ctx)) {
    DR_TRY(dr_check_tensor(out, "custom autograd node", "output"));
    if (ninputs < 0 || ninputs > DR_NODE_MAX_INPUTS)
        return dr_fail(DR_ERR_ARG, "%s: %d inputs, at most %d", name, ninputs, DR_NODE_MAX_INPUTS);
    for (int32_t i = 0; i < ninputs; i++) DR_TRY(dr_check_tensor(inputs[i], name, "input"));
    if (out->autograd && ((dr_autograd_meta *)out->autograd)->grad_fn)
        return dr_fail(DR_ERR_ARG, "%s: the output already has a grad_fn", name);
    bool was = dr_grad_mode();
    dr_set_grad_enabled(1); /* record even when called inside no_grad */
    dr_node *node;
    dr_status st = dr_autograd_record(out, name, custom_backward, inputs, ninputs, &node);
    dr_set_grad_enabled(was);
    if (st != DR_OK) return st;
    if (!node) {
        if (release) release(ctx);
        return DR_OK;
    }
    node->custom_fn = fn;
    node->custom_ctx = ctx;
    node->custom_release = release;
    return DR_OK;
}

/* Contexts of freed custom nodes wait here for their owner (the Lua bindings) to
 * collect them: calling back into Lua while a tensor is being released (often
 * inside Lua's garbage collector) is not safe, polling is. */
static _Thread_local void **released_ctx;
static _Thread_local int64_t nreleased, capreleased;

void dr_autograd_queue_release(void *ctx) {
    if (nreleased == capreleased) {
        int64_t cap = capreleased ? 2 * capreleased : 64;
        void **p = realloc(released_ctx, (size_t)cap * sizeof *p);
        if (!p) return; /* the owner keeps the context: a leak, not a crash */
        released_ctx = p;
        capreleased = cap;
    }
    released_ctx[nreleased++] = ctx;
}

int64_t dr_autograd_take_released(void **out, int64_t cap) {
    int64_t n = 0;
    while (n < cap && nreleased > 0) out[n++] = released_ctx[--nreleased];
    return n;
}

dr_status dr_autograd_save(dr_node *node, int32_t slot, const dr_tensor *t) {
    /* A node's own output is saved as a detached alias (same storage, no grad_fn):
     * saving the output itself would make a reference cycle. */
    dr_tensor *keep;
    if (dr_requires_grad(t) && meta(t)->grad_fn == node) {
        DR_TRY(dr_tensor_alias(t, &keep));
    } else {
        dr_tensor_retain((dr_tensor *)t);
        keep = (dr_tensor *)t;
    }
    node->saved[slot] = keep;
    node->saved_version[slot] = t->storage ? t->storage->version : 0;
    return DR_OK;
}

dr_status dr_autograd_saved(const dr_node *node, int32_t slot, const dr_tensor **t) {
    const dr_tensor *s = node->saved[slot];
    if (node->released || !s)
        return dr_fail(DR_ERR_ARG, "backward through %s: the graph was freed by an earlier "
                       "backward(); pass retain_graph=true to backward twice", node->name);
    if (!s->storage)
        return dr_fail(DR_ERR_FREED, "backward through %s: a tensor %s it saved was released "
                       "with free()", node->name, dr_shape_str(s));
    if (s->storage->version != node->saved_version[slot])
        return dr_fail(DR_ERR_ARG, "backward through %s: a tensor %s it saved was modified in "
                       "place afterwards (version %u, saved at %u)", node->name,
                       dr_shape_str(s), s->storage->version, node->saved_version[slot]);
    *t = s;
    return DR_OK;
}

dr_status dr_autograd_inplace(dr_tensor *t, const char *op) {
    if (!grad_disabled && dr_requires_grad(t) && !meta(t)->grad_fn)
        return dr_fail(DR_ERR_ARG, "%s: a leaf tensor %s that requires grad cannot be modified in "
                       "place; do it inside dr.no_grad(...)", op, dr_shape_str(t));
    if (!grad_disabled && dr_requires_grad(t))
        return dr_fail(DR_ERR_UNSUPPORTED, "%s: in-place writes to a tensor %s in the autograd "
                       "graph are not differentiable yet; use an out-of-place op", op,
                       dr_shape_str(t));
    if (t->storage) __atomic_add_fetch(&t->storage->version, 1, __ATOMIC_RELAXED);
    return DR_OK;
}

/* ---- public: flags, grads, detach ----------------------------------------- */

dr_status dr_tensor_set_requires_grad(dr_tensor *t, int requires_grad) {
    DR_TRY(dr_check_tensor(t, "requires_grad", "tensor"));
    if (t->autograd && meta(t)->grad_fn)
        return dr_fail(DR_ERR_ARG, "requires_grad: %s is the result of %s, not a leaf; use "
                       "detach() to make a new leaf", dr_shape_str(t), meta(t)->grad_fn->name);
    if (requires_grad && !dr_dtype_is_float(t->scalar_type))
        return dr_fail(DR_ERR_DTYPE, "requires_grad: only floating point tensors can require "
                       "gradients, got %s", dr_dtype_name(t->scalar_type));
    if (!requires_grad && !t->autograd) return DR_OK;
    DR_TRY(ensure_meta(t, "requires_grad"));
    meta(t)->requires_grad = requires_grad != 0;
    return DR_OK;
}

int dr_tensor_requires_grad(const dr_tensor *t) { return dr_requires_grad(t); }

int dr_tensor_is_leaf(const dr_tensor *t) { return !(t && t->autograd && meta(t)->grad_fn); }

const char *dr_tensor_grad_fn_name(const dr_tensor *t) {
    return t && t->autograd && meta(t)->grad_fn ? meta(t)->grad_fn->name : NULL;
}

dr_status dr_tensor_get_grad(const dr_tensor *t, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "grad"));
    if (!t) return dr_fail(DR_ERR_ARG, "grad: tensor is nil");
    dr_tensor *g = t->autograd ? meta(t)->grad : NULL;
    if (g) dr_tensor_retain(g);
    *out = g;
    return DR_OK;
}

dr_status dr_tensor_set_grad(dr_tensor *t, const dr_tensor *grad) {
    DR_TRY(dr_check_tensor(t, "grad", "tensor"));
    if (grad) {
        DR_TRY(dr_check_tensor(grad, "grad", "gradient"));
        if (grad->ndim != t->ndim || memcmp(grad->sizes, t->sizes, sizeof(int64_t) * t->ndim))
            return dr_fail(DR_ERR_SHAPE, "grad: gradient %s does not match tensor %s",
                           dr_shape_str(grad), dr_shape_str(t));
    }
    if (!grad && !t->autograd) return DR_OK;
    DR_TRY(ensure_meta(t, "grad"));
    dr_tensor_release(meta(t)->grad);
    if (grad) dr_tensor_retain((dr_tensor *)grad);
    meta(t)->grad = (dr_tensor *)grad;
    return DR_OK;
}

dr_status dr_tensor_detach(const dr_tensor *t, dr_tensor **out) {
    DR_TRY(dr_check_out(out, "detach"));
    DR_TRY(dr_check_tensor(t, "detach", "tensor"));
    return dr_tensor_alias(t, out);
}
