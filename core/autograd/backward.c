/* dr_backward: from a root tensor, run every node's backward once, in an order
 * where all of a node's consumers have contributed to its gradient first
 * (dependency counts, Kahn's algorithm). Leaves accumulate into .grad. */
#include <stdlib.h>
#include <string.h>

#include "autograd.h"

typedef struct node_list {
    dr_node **items;
    size_t n, cap;
} node_list;

static dr_status push(node_list *l, dr_node *n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        dr_node **items = realloc(l->items, cap * sizeof *items);
        if (!items) return dr_fail(DR_ERR_OOM, "backward: out of memory walking the graph");
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = n;
    return DR_OK;
}

/* acc = acc + g (acc takes ownership of g when empty) */
static dr_status accumulate(dr_tensor **acc, dr_tensor *g) {
    if (!*acc) {
        *acc = g;
        return DR_OK;
    }
    dr_tensor *sum;
    dr_status st = dr_add(*acc, g, 1.0, &sum);
    dr_tensor_release(g);
    if (st != DR_OK) return st;
    dr_tensor_release(*acc);
    *acc = sum;
    return DR_OK;
}

/* A leaf's .grad must own its memory (optimizers update it in place), while a
 * gradient handed down may alias another tensor: the first one is copied. Later
 * ones are added in place when they fit, so a .grad that is a view into an
 * optimizer's flat gradient buffer stays one. */
static dr_status accumulate_leaf(dr_tensor *leaf, dr_tensor *g) {
    dr_autograd_meta *m = leaf->autograd;
    if (m->grad && m->grad->scalar_type == g->scalar_type && m->grad->ndim == g->ndim &&
        memcmp(m->grad->sizes, g->sizes, sizeof(int64_t) * (size_t)g->ndim) == 0 &&
        dr_tensor_is_contiguous(m->grad)) {
        dr_status st = dr_add_(m->grad, g, 1.0);
        dr_tensor_release(g);
        return st;
    }
    if (m->grad) return accumulate(&m->grad, g);
    /* The first gradient: adopt it when nothing else can see it (torch steals
     * such buffers too), else copy, so later in-place accumulation is safe. */
    if (g->refcount == 1 && g->storage && g->storage->refcount == 1 && !g->storage->owner && !g->autograd &&
        dr_tensor_is_contiguous(g) && g->storage_offset == 0 &&
        (size_t)dr_tensor_numel(g) * (size_t)dr_dtype_size(g->scalar_type) == g->storage->nbytes) {
        m->grad = g;
        return DR_OK;
    }
    dr_status st = dr_tensor_clone(g, &m->grad);
    dr_tensor_release(g);
    return st;
}

static uint64_t pass_counter;

/* Every node reachable from root, each once; deps = number of consumers. */
static dr_status collect(dr_node *root, node_list *all) {
    uint64_t pass = __atomic_add_fetch(&pass_counter, 1, __ATOMIC_RELAXED);
    node_list stack = {0};
    root->visit = pass;
    root->deps = 0;
    dr_status st = push(all, root);
    if (st == DR_OK) st = push(&stack, root);
    while (st == DR_OK && stack.n > 0) {
        dr_node *n = stack.items[--stack.n];
        for (int i = 0; i < n->ninputs && st == DR_OK; i++) {
            dr_node *m = n->next[i].node;
            if (!m) continue;
            if (m->visit != pass) {
                m->visit = pass;
                m->deps = 0;
                st = push(all, m);
                if (st == DR_OK) st = push(&stack, m);
            }
            m->deps++;
        }
    }
    free(stack.items);
    return st;
}

static dr_status check_grad_shape(const dr_node *n, int i, const dr_tensor *g) {
    if (g->ndim == n->in_ndim[i] &&
        memcmp(g->sizes, n->in_sizes[i], sizeof(int64_t) * (size_t)g->ndim) == 0)
        return DR_OK;
    return dr_fail(DR_ERR_INTERNAL, "backward through %s: gradient %s for input %d of shape %s",
                   n->name, dr_shape_str(g), i + 1, dr_sizes_str(n->in_sizes[i], n->in_ndim[i]));
}

/* Runs node n with its complete gradient; hands each input its share. */
static dr_status run_node(dr_node *n, node_list *ready) {
    dr_tensor *grads[DR_NODE_MAX_INPUTS] = {NULL};
    dr_tensor *g = n->pending;
    n->pending = NULL;
    dr_status st = g ? n->backward(n, g, grads) : DR_OK;
    dr_tensor_release(g);
    for (int i = 0; i < n->ninputs; i++) {
        dr_edge e = n->next[i];
        if (st == DR_OK && grads[i] && (e.node || e.leaf)) {
            st = check_grad_shape(n, i, grads[i]);
            if (st == DR_OK && e.node) {
                st = accumulate(&e.node->pending, grads[i]);
                grads[i] = NULL;
            } else if (st == DR_OK) {
                st = accumulate_leaf(e.leaf, grads[i]);
                grads[i] = NULL;
            }
        }
        dr_tensor_release(grads[i]);
        if (e.node && --e.node->deps == 0) {
            dr_status ps = push(ready, e.node);
            if (st == DR_OK) st = ps;
        }
    }
    return st;
}

dr_status dr_backward(const dr_tensor *root, const dr_tensor *grad, int retain_graph) {
    DR_TRY(dr_check_tensor(root, "backward", "tensor"));
    if (!dr_requires_grad(root))
        return dr_fail(DR_ERR_ARG, "backward: tensor %s does not require grad and has no grad_fn",
                       dr_shape_str(root));
    dr_tensor *seed;
    if (grad) {
        DR_TRY(dr_check_tensor(grad, "backward", "gradient"));
        if (grad->ndim != root->ndim ||
            memcmp(grad->sizes, root->sizes, sizeof(int64_t) * (size_t)root->ndim))
            return dr_fail(DR_ERR_SHAPE, "backward: gradient %s does not match the output %s",
                           dr_shape_str(grad), dr_shape_str(root));
        DR_TRY(dr_tensor_to_dtype(grad, root->scalar_type, &seed));
    } else {
        if (dr_tensor_numel(root) != 1)
            return dr_fail(DR_ERR_SHAPE, "backward: a gradient can be implied only for a scalar "
                           "output, got %s; pass one", dr_shape_str(root));
        DR_TRY(dr_tensor_full(root->sizes, root->ndim, root->scalar_type, root->device, 1.0, &seed));
    }
    dr_autograd_meta *rm = root->autograd;
    if (!rm->grad_fn) return accumulate_leaf((dr_tensor *)root, seed); /* a leaf: d(x)/dx */

    bool was_disabled = !dr_grad_mode();
    dr_set_grad_enabled(0); /* no graph of the backward itself */
    node_list all = {0}, ready = {0};
    dr_status st = collect(rm->grad_fn, &all);
    if (st == DR_OK) {
        rm->grad_fn->pending = seed;
        seed = NULL;
        st = push(&ready, rm->grad_fn);
    }
    while (st == DR_OK && ready.n > 0) st = run_node(ready.items[--ready.n], &ready);
    for (size_t i = 0; i < all.n; i++) { /* also clears what a failure left behind */
        dr_tensor_release(all.items[i]->pending);
        all.items[i]->pending = NULL;
        if (!retain_graph && st == DR_OK) {
            for (int k = 0; k < DR_NODE_MAX_SAVED; k++) {
                dr_tensor_release(all.items[i]->saved[k]);
                all.items[i]->saved[k] = NULL;
            }
            all.items[i]->released = true;
        }
    }
    dr_tensor_release(seed);
    free(all.items);
    free(ready.items);
    dr_set_grad_enabled(!was_disabled);
    return st;
}
