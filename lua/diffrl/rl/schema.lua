-- The settings every RL recipe shares (PAPER.md "Algorithm"). Defaults mirror the
-- official imagereward_train_configs.yaml where it has the key (named in each doc as
-- "YAML: key"); configs/imagereward.lua holds the paper's run on top of them.
-- Recipes merge their own keys in: config.schema(config.merge(rl.schema.spec, {...})).
local config = require 'diffrl.config'

return config.schema(config.merge(config.common(), {
  model = {
    path = { type = 'string',
             doc = 'diffusers model folder, e.g. stable-diffusion-2-base (YAML: pretrained_model_name)' },
  },
  train = {
    iterations = { default = 1000, doc = 'RL iterations: sample, score, policy-gradient steps (YAML: max_iterations)' },
    lr = { type = 'number', default = 2e-6, min = 0, doc = 'AdamW learning rate (YAML: learning_rate)' },
    lr_schedule = { type = 'string', default = 'constant', choices = { 'constant', 'cosine' },
                    doc = 'learning-rate schedule (YAML: lr_scheduler, constant | cosineannealing); cosine runs to 0 over every optimizer step of the run, pretraining steps included' },
    warmup_steps = { type = 'integer', default = 0, min = 0,
                     doc = "optimizer steps of linear learning-rate warmup from 0 (Adam's first steps move "
                           .. 'every weight by about lr, whatever its gradient; not in the YAML)' },
    adam_beta1 = { type = 'number', default = 0.9, min = 0, max = 1, doc = 'AdamW beta1 (YAML: adam_*)' },
    adam_beta2 = { type = 'number', default = 0.999, min = 0, max = 1, doc = 'AdamW beta2 (YAML: adam_*)' },
    adam_eps = { type = 'number', default = 1e-8, min = 0, doc = 'AdamW epsilon (YAML: adam_*)' },
    weight_decay = { type = 'number', default = 1e-2, min = 0, doc = 'AdamW decoupled weight decay (YAML: weight_decay)' },
    clip_range = { type = 'number', default = 1e-4, min = 0,
                   doc = 'importance-ratio clip: ratio kept in [1 - eps, 1 + eps] (YAML: clip_range)' },
    adv_clip_max = { type = 'number', default = 10, min = 0,
                     doc = 'advantages clamped to [-max, max] after normalization (YAML: ADV_CLIP_MAX)' },
    negative_advantage_scale = { type = 'number', default = 1, min = 0, max = 1,
                                 doc = 'negative advantages are multiplied by this: 1 as the paper; 0 only '
                                       .. 'raises the likelihood of better-than-average samples' },
    timestep_count = { type = 'integer', default = 5, min = 1,
                       doc = 'denoising steps drawn at random per iteration, one optimizer step each (YAML: n_train_steps)' },
    timestep_window = { type = 'integer', default = 0, min = 0,
                        doc = 'choose the trained steps among the first N denoising steps only (the high-noise '
                              .. 'ones, which set layout, count and colour; the late ones mostly add noise to '
                              .. 'the policy gradient); 0: among all steps' },
    inner_epochs = { type = 'integer', default = 1, min = 1,
                     doc = 'passes over the sampled batch per iteration (not in the YAML: 1 there; DDPO num_inner_epochs)' },
    timestep_fraction = { type = 'number', min = 0, max = 1, optional = true,
                          doc = 'train this fraction of the denoising steps instead of timestep_count (DDPO timestep_fraction)' },
    advantage = { type = 'string', default = 'batch', choices = { 'batch', 'per_prompt', 'group', 'group_mean' },
                  doc = "reward normalisation: 'batch' over the whole batch (the paper), 'per_prompt' history "
                        .. "per prompt (DDPO's stat tracking), 'group' within each prompt's images (GRPO), "
                        .. "'group_mean' minus the mean of each prompt's images, over the batch's std (Dr. GRPO)" },
    tracker_buffer = { type = 'integer', default = 16, min = 1, doc = "with advantage = 'per_prompt': rewards kept per prompt" },
    tracker_min_count = { type = 'integer', default = 16, min = 1,
                          doc = "with advantage = 'per_prompt': below this many, use the batch's statistics" },
    accumulate_timesteps = { type = 'boolean', default = false,
                             doc = 'one optimizer step per task and inner epoch on the mean loss of all chosen '
                                   .. "denoising steps (ddpo-pytorch's accumulation over timesteps); false: one "
                                   .. 'step per denoising step (the official code)' },
    grad_accum = { type = 'integer', default = 1, min = 1,
                   doc = 'micro-batches accumulated per optimizer step (not in the YAML: 1 there)' },
    max_grad_norm = { type = 'number', default = 1.0, min = 0,
                      doc = 'clip the global gradient norm to this; 0 turns clipping off (not in the YAML or paper; DDPO uses 1.0)' },
    loss_reduction = { type = 'string', default = 'mean', choices = { 'mean', 'sum' },
                       doc = "policy loss over the batch: 'mean' (default) or 'sum' (what the official code does)" },
    gradient_checkpointing = { type = 'boolean', default = true,
                               doc = 'recompute UNet block activations in backward (YAML: gradient_checkpointing)' },
    trainable = { type = 'list', of = 'string', default = {},
                  doc = "fine-tune only the UNet parameters whose name contains one of these strings (e.g. "
                        .. "{'attn'}: the self- and cross-attention layers; the others stay frozen); empty: "
                        .. 'the whole UNet (the paper). Not with lora.rank > 0' },
    use_ema = { type = 'boolean', default = false, doc = 'keep an EMA of the trained weights (YAML: use_ema)' },
    kl_weight = { type = 'number', default = 0, min = 0,
                  doc = 'beta of a KL penalty to the starting UNet (a frozen copy); 0 = off, as the paper' },
    kl_estimator = { type = 'string', default = 'k3', choices = { 'k1', 'k2', 'k3', 'analytic' },
                     doc = "KL estimator (Schulman): 'k3' (GRPO's), 'k2' (its gradient is KL's), 'k1'; "
                           .. "'analytic': the closed-form KL of the two steps' Gaussians" },
    ema_decay = { type = 'number', default = 0.9999, min = 0, max = 1,
                  doc = 'EMA decay per optimizer step, with use_ema (not in the YAML)' },
  },
  sample = {
    batch_size = { default = 5, doc = 'images sampled per iteration on each rank (YAML: batch_size, 5; the paper used 16)' },
    steps = { default = 50, doc = 'DDIM steps per image (YAML: n_inference_steps)' },
    eta = { type = 'number', default = 1.0, min = 0,
            doc = 'DDIM eta; > 0 makes each step a Gaussian policy with std eta * sigma_t (YAML: eta)' },
    guidance = { type = 'number', default = 7.0, min = 0,
                 doc = 'classifier-free guidance scale, also in training (YAML: guidance_scale)' },
    resolution = { type = 'integer', default = 512, min = 8, doc = 'image height and width in pixels (YAML: resolution)' },
    negative_prompt = { type = 'string', default = '', doc = 'unconditional prompt of the guidance (not in the YAML: empty there)' },
    images_per_prompt = { type = 'integer', default = 1, min = 1,
                          doc = 'images per prompt in a batch (a group: the diversity reward and GRPO judge a '
                                .. "prompt's images together); batch_size must be a multiple; a task may override it" },
  },
  eval = {
    every = { type = 'integer', min = 1, optional = true,
              doc = "evaluate the tasks' held-out prompts every N iterations; unset: before training and at the end only" },
    seed = { type = 'integer', default = 7, min = 0,
             doc = 'noise seed of the held-out samples: the same noise at every evaluation, so before/after pairs' },
    seeds = { type = 'integer', min = 1, optional = true,
              doc = "held-out images per prompt, image j from its own generator seeded eval.seed + j - 1: the "
                    .. "images (and numbers) of `diffrl eval --seeds N` from seed eval.seed; unset: the task's "
                    .. "images_per_prompt, from one generator" },
  },
  checkpoint = {
    every = { default = 200, doc = 'write a checkpoint every N iterations (YAML: save_interval)' },
  },
  log = {
    grid_every = { type = 'integer', min = 1, optional = true,
                   doc = "save a PNG grid of the first task's samples every N iterations; unset: never" },
  },
  pretrain = {
    weight = { type = 'number', default = 0, min = 0,
               doc = 'beta, weight of the pretraining diffusion loss L_pre; 0 turns it off (YAML: use_pretrain_dataset; beta is not given in the paper)' },
    data = { type = 'string', optional = true,
             doc = 'real image-text pairs for L_pre: webdataset .tar shards (a folder, a list, or a pattern like '
                   .. 'data/{00000..00099}.tar) or a folder of NAME.jpg/png + NAME.txt (the paper: LAION aesthetic >= 6); '
                   .. 'resized and centre-cropped to sample.resolution' },
    batch_size = { type = 'integer', min = 1, optional = true, doc = 'images per L_pre step on each rank; unset: sample.batch_size' },
  },
  dist = { -- ranks come from the launcher (diffrl launch, mpirun, srun); docs/scaling.md
    timeout_s = { type = 'number', default = 300, min = 0.001,
                  doc = 'seconds a rank waits in any collective before every rank ends with an error naming it' },
    io_timeout_s = { type = 'number', default = 3600, min = 0.001,
                     doc = 'seconds the other ranks wait while rank 0 evaluates or writes a checkpoint' },
    bucket_mb = { type = 'number', default = 25, min = 0.001,
                  doc = 'gradient all-reduce bucket size in MB (float32)' },
    zero = { type = 'boolean', default = false,
             doc = "ZeRO-1: each rank keeps AdamW's moments for 1/R of the parameters (same results, less memory)" },
    backend = { type = 'string', default = 'auto', choices = { 'auto', 'mpi', 'nccl' },
                doc = "'auto': MPI when launched by an MPI launcher, else one rank; 'mpi': launched or an error; "
                      .. "'nccl': also NCCL for CUDA tensors" },
  },
  lora = {
    rank = { type = 'integer', default = 0, min = 0, doc = 'LoRA rank on the attention projections; 0 = full UNet fine-tune (the paper)' },
    alpha = { type = 'number', min = 0, optional = true, doc = 'LoRA alpha (scale alpha / rank); unset: rank' },
  },
}))
