-- The paper's ImageReward run (PAPER.md "Algorithm": settings of the paper), keyed by
-- the shared RL schema (lua/diffrl/rl/schema.lua; `diffrl run recipes/imagereward.lua
-- --help` lists every key). The paper ran 128 GPUs x 16 images = 2048 per iteration.
--   diffrl run recipes/imagereward.lua --config configs/imagereward.lua \
--     --set model.path=/models/stable-diffusion-2-base --set pretrain.data=/data/laion-aes6
return {
  model = {
    path = 'models/stable-diffusion-2-base', -- a diffusers folder of stabilityai/stable-diffusion-2-base
  },
  train = {
    iterations = 1000,          -- converges in ~1,000 iterations (YAML: max_iterations)
    lr = 2e-6,                  -- AdamW, constant learning rate
    lr_schedule = 'constant',
    adam_beta1 = 0.9,
    adam_beta2 = 0.999,
    adam_eps = 1e-8,
    weight_decay = 1e-2,
    timestep_count = 5,         -- n_train_steps: 5 of the 50 steps, one optimizer step each
    clip_range = 1e-4,
    adv_clip_max = 10,
    inner_epochs = 1,
    grad_accum = 1,
    loss_reduction = 'mean',    -- the official code sums over the batch ('sum')
    gradient_checkpointing = true,
    use_ema = false,
  },
  sample = {
    batch_size = 16,            -- per GPU (the official YAML has 5)
    steps = 50,                 -- DDIM
    eta = 1.0,
    guidance = 7.0,
    resolution = 512,           -- SD2-base: latents 4x64x64
  },
  checkpoint = {
    every = 200,                -- save_interval
  },
  pretrain = {
    -- beta is not given in the paper: 1.0 (L_pre weighted like the policy loss) is a
    -- placeholder, not the paper's value. Needs pretrain.data (real image-text pairs).
    weight = 1.0,
  },
  lora = {
    rank = 0,                   -- full UNet fine-tune; text encoder and VAE frozen
  },
}
