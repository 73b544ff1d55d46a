/* Reverse-mode autodiff: a define-by-run tape of nodes, one per differentiable
 * op output, walked backward from a scalar by dr_backward (engine.c).
 *
 * An op records itself after computing its forward:
 *     dr_node *node;
 *     DR_TRY(dr_autograd_record(out, "mul", mul_backward, inputs, 2, &node));
 *     if (node) { dr_autograd_save(node, 0, a); ... }
 * node is NULL when grad mode is off or no input requires grad. The backward
 * function gets the gradient of the output and writes one gradient per input
 * (NULL where an input needs none), each with that input's shape and dtype.
 * Saved tensors are checked when used: released with free() or modified in place
 * since they were saved is an error naming the op. */
#ifndef DR_AUTOGRAD_H
#define DR_AUTOGRAD_H

#include <stdbool.h>
#include "../tensor/tensor_internal.h"

enum { DR_NODE_MAX_INPUTS = 8, DR_NODE_MAX_SAVED = 4 };

typedef struct dr_node dr_node;
typedef dr_status (*dr_backward_fn)(dr_node *node, const dr_tensor *grad, dr_tensor **grads);

typedef struct dr_edge {
    dr_node *node;    /* the input's grad_fn, or NULL */
    dr_tensor *leaf;  /* or the input itself, a leaf that requires grad */
} dr_edge;

struct dr_node {
    int32_t refcount;
    const char *name;
    dr_backward_fn backward;
    int32_t ninputs;
    dr_edge next[DR_NODE_MAX_INPUTS];
    /* each input's geometry, for reducing broadcast gradients and casting back */
    int64_t in_sizes[DR_NODE_MAX_INPUTS][DR_MAX_DIMS];
    int32_t in_ndim[DR_NODE_MAX_INPUTS];
    int32_t in_dtype[DR_NODE_MAX_INPUTS];
    dr_device in_device[DR_NODE_MAX_INPUTS];
    dr_tensor *saved[DR_NODE_MAX_SAVED];
    uint32_t saved_version[DR_NODE_MAX_SAVED];
    bool released; /* saved tensors dropped by a backward without retain_graph */
    /* op parameters */
    int64_t ints[2 * DR_MAX_DIMS];
    double reals[4];
    /* custom nodes (dr_autograd_custom) */
    dr_custom_backward_fn custom_fn;
    void *custom_ctx;
    void (*custom_release)(void *ctx);
    /* engine scratch */
    uint64_t visit; /* the backward pass that last reached this node */
    int32_t deps;
    dr_tensor *pending;
};

typedef struct dr_autograd_meta {
    bool requires_grad;
    dr_tensor *grad;   /* accumulated gradient (leaves) */
    dr_node *grad_fn;  /* the op that made this tensor (non-leaves) */
} dr_autograd_meta;

bool dr_grad_mode(void);
/* An op's internals run with grad mode paused (no nodes for temporaries); the op
 * records its one node afterwards:  bool g = dr_grad_pause(); ...; dr_grad_resume(g); */
bool dr_grad_pause(void);
void dr_grad_resume(bool was_enabled);
bool dr_requires_grad(const dr_tensor *t);

dr_status dr_autograd_record(dr_tensor *out, const char *name, dr_backward_fn fn,
                             const dr_tensor *const *inputs, int32_t ninputs, dr_node **node);
dr_status dr_autograd_save(dr_node *node, int32_t slot, const dr_tensor *t);
dr_status dr_autograd_saved(const dr_node *node, int32_t slot, const dr_tensor **t);

/* Whether input i of n needs a gradient (backward functions may skip the rest). */
bool dr_node_needs(const dr_node *n, int32_t i);

/* The gradient of a broadcast input: grad summed down to sizes (leading dims and
 * dims of size 1), cast to dtype. */
dr_status dr_sum_to(const dr_tensor *grad, const int64_t *sizes, int32_t ndim, int32_t dtype,
                    dr_tensor **out);
/* Marks an in-place write of t's storage; refuses leaves that require grad while
 * grad mode is on (as torch does). */
dr_status dr_autograd_inplace(dr_tensor *t, const char *op);

#endif
