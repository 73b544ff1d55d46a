/* Internals of core/models: the parameter table every model is built on, config
 * readers, and the small helpers the model files share. Not part of the public
 * API (diffrl.h has the dr_model_* and per-model functions).
 *
 * A model is a flat, ordered table of named parameters whose names are exactly the
 * keys of the diffusers / transformers checkpoint ("down_blocks.0.resnets.0.conv1.weight"),
 * plus an implementation struct that holds borrowed pointers into that table
 * (one place for names: stable-diffusion.cpp's lesson). Building a model from its
 * config.json allocates every parameter (float32, contiguous) and initialises it as
 * torch.nn's defaults would, from a seeded Philox stream; loading a checkpoint then
 * overwrites them and reports every missing, unexpected or wrong-shape key. */
#ifndef DR_MODELS_MODEL_H
#define DR_MODELS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "diffrl.h"
#include "../io/json.h"
#include "../util/error.h"

/* How a parameter is initialised (torch.nn defaults). */
typedef enum dr_init {
    DR_INIT_ZERO,
    DR_INIT_ONE,
    DR_INIT_FAN_IN,  /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)): Linear / Conv2d weight and bias */
    DR_INIT_NORMAL   /* N(0, std): embeddings */
} dr_init;

typedef struct dr_param {
    char *name;
    dr_tensor *t;       /* a leaf, float32, contiguous */
    int32_t init;       /* dr_init */
    double init_arg;    /* fan_in or std */
    bool adapter;       /* a LoRA parameter (not in the base checkpoint) */
    bool optional;      /* unused by the forward: a checkpoint may leave it out */
} dr_param;

struct nn_linear;

struct dr_model {
    char kind[16];
    char context[256];  /* "unet: /path/config.json": starts messages */
    dr_param *params;
    int64_t nparams, cap;
    int64_t *slots;     /* open-addressing index of params by name (-1: empty) */
    int64_t nslots;
    void *impl;
    void (*impl_free)(void *impl);
    bool checkpointing; /* recompute blocks in backward (dr_model_set_checkpointing) */
    dr_device device;   /* where new parameters (LoRA adapters) are made: dr_model_to_device */
    /* linears that may carry a LoRA adapter (attention projections), by name */
    struct nn_linear **lora_targets;
    char **lora_names;
    int64_t nlora, lora_cap;
};

/* Registers parameter `name` (printf-formatted) with the given shape and init,
 * allocating it, and stores the tensor (borrowed from the table) in *slot. */
dr_status dr_model_param_new(dr_model *m, dr_tensor **slot, int32_t init, double init_arg,
                             const int64_t *sizes, int32_t ndim, const char *fmt, ...)
    DR_PRINTF(7, 8);
/* Same, for a LoRA adapter parameter. */
dr_status dr_model_adapter_new(dr_model *m, dr_tensor **slot, int32_t init, double init_arg,
                               const int64_t *sizes, int32_t ndim, const char *fmt, ...)
    DR_PRINTF(7, 8);

/* Changes how the parameter t (registered before) is initialised, for models
 * whose reference initialises differently from torch.nn's defaults. */
void dr_model_param_set_init(dr_model *m, const dr_tensor *t, int32_t init, double init_arg);

/* ---- config.json readers: errors name the model context, the key and what was
 * expected. A missing key (or JSON null) gives the default. */
dr_status dr_cfg_int(const dr_model *m, const dr_json *cfg, const char *key, int64_t dflt,
                     int64_t *out);
dr_status dr_cfg_num(const dr_model *m, const dr_json *cfg, const char *key, double dflt,
                     double *out);
dr_status dr_cfg_bool(const dr_model *m, const dr_json *cfg, const char *key, bool dflt,
                      bool *out);
/* *out points into the document (or is dflt). */
dr_status dr_cfg_str(const dr_model *m, const dr_json *cfg, const char *key, const char *dflt,
                     const char **out);
/* An int, or a list of n ints (an int is repeated n times); n must match. */
dr_status dr_cfg_int_list(const dr_model *m, const dr_json *cfg, const char *key, int64_t n,
                          int64_t dflt, int64_t *out);
/* A list of strings: *n gets its length (at most cap). */
dr_status dr_cfg_str_list(const dr_model *m, const dr_json *cfg, const char *key,
                          const char **out, int64_t cap, int64_t *n);
/* A dr_fail unless lo <= v <= hi, naming the config key. */
dr_status dr_cfg_range(const dr_model *m, const char *key, int64_t v, int64_t lo, int64_t hi);
/* Errors when `key` is present with a value other than null / false / the given
 * string (dflt_str) — for options of the reference class this build does not do. */
dr_status dr_cfg_require_default(const dr_model *m, const dr_json *cfg, const char *key,
                                 const char *dflt_str);

/* ---- builders, one per model kind (unet.c, vae.c, clip_text.c). Each reads its
 * config, registers its parameters and sets m->impl / m->impl_free. */
dr_status dr_unet_build(dr_model *m, const dr_json *cfg);
dr_status dr_vae_build(dr_model *m, const dr_json *cfg);
dr_status dr_clip_text_build(dr_model *m, const dr_json *cfg);
dr_status dr_imagereward_build(dr_model *m, const dr_json *cfg);  /* imagereward.c */
dr_status dr_clip_build(dr_model *m, const dr_json *cfg);         /* clip_vision.c */
dr_status dr_aesthetic_build(dr_model *m, const dr_json *cfg);    /* aesthetic.c */

/* How a forward should checkpoint its blocks (nn_checkpoint's mode): 0 not at
 * all (off, or grad mode off); 1 blocks whose inputs require grad; 2 every
 * block, since some parameter requires grad (LoRA-only training: the blocks
 * before the first adapter have inputs that need no gradient). */
int dr_model_checkpoint_mode(const dr_model *m);

/* Checks that m is a model of `kind` for the function `op`. */
dr_status dr_model_check(const dr_model *m, const char *kind, const char *op);

/* Releases *t and sets it to NULL (NULL-safe). */
static inline void dr_drop(dr_tensor **t) {
    dr_tensor_release(*t);
    *t = NULL;
}
/* Replaces *t by next (releasing the old one); for x = f(x) chains. */
static inline void dr_swap(dr_tensor **t, dr_tensor *next) {
    dr_tensor_release(*t);
    *t = next;
}

#endif
