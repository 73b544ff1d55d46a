-- DDPO's aesthetic-quality task with the paper's algorithm settings (as
-- configs/imagereward.lua), keyed by the shared RL schema (lua/diffrl/rl/schema.lua;
-- `diffrl run recipes/aesthetic.lua --help` lists every key).
--   diffrl run recipes/aesthetic.lua --config configs/aesthetic.lua \
--     model.path=/models/stable-diffusion-2-base data.prompts=/data/animals.txt \
--     reward.path=/models/sac+logos+ava1-l14-linearMSE.pth reward.clip=/models/clip-vit-large-patch14
return {
  model = {
    path = 'models/stable-diffusion-2-base', -- a diffusers folder
  },
  train = {
    iterations = 1000,
    lr = 2e-6,
    lr_schedule = 'constant',
    weight_decay = 1e-2,
    timestep_count = 5,
    clip_range = 1e-4,
    adv_clip_max = 10,
    gradient_checkpointing = true,
  },
  sample = {
    batch_size = 16,
    steps = 50,                 -- DDIM
    eta = 1.0,
    guidance = 7.0,
    resolution = 512,
  },
  pretrain = {
    weight = 0,                 -- no pretraining loss unless pretrain.data is given
  },
}
