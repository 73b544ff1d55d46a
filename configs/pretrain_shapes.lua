-- Settings of recipes/pretrain_shapes.lua (the schema, with docs and bounds, is
-- diffrl.pretrain.schema; `diffrl run recipes/pretrain_shapes.lua --help` lists it).
-- Override on the command line:  train.steps=2000 train.batch_size=64 run.dir=runs/shapes
return {
  run = { seed = 0 },
  data = { resolution = 32, max_objects = 3 },
  tokenizer = { corpus = 2000, max_merges = 400, max_length = 32 },
  -- ~70k parameters; trained jointly with the UNet (train.train_text_encoder)
  text_encoder = { hidden_size = 64, intermediate_size = 256, layers = 2, heads = 4 },
  -- ~0.8M parameters on 16x16x4 latents; cross-attention at 8x8 and in the mid
  -- block only: attention at 16x16 cost ~40% more time per step on 2 cores
  unet = {
    block_out_channels = { 32, 64 }, layers_per_block = 1,
    down_block_types = { 'DownBlock2D', 'CrossAttnDownBlock2D' },
    up_block_types = { 'CrossAttnUpBlock2D', 'UpBlock2D' },
    attention_head_dim = 4, norm_num_groups = 8,
  },
  -- 32x32x3 images <-> 16x16x4 latents
  vae = {
    block_out_channels = { 16, 32 }, latent_channels = 4, layers_per_block = 1,
    norm_num_groups = 8, mid_block_attention = false,
    steps = 300, batch_size = 32, lr = 1e-3, kl_weight = 1e-4,
  },
  train = {
    steps = 300, batch_size = 32, lr = 1e-3, warmup = 30, min_lr = 1e-4,
    weight_decay = 1e-2, max_grad_norm = 1.0, caption_dropout = 0.1, train_text_encoder = true,
  },
  sample = {
    every = 100, steps = 20, guidance = 4.0, seeds = 2,
    prompts = {
      'a red circle', 'a blue square', 'a green triangle', 'a yellow star',
      'a small blue square', 'a red circle left of a blue square',
      'a blue square left of a green triangle', 'two yellow stars',
    },
  },
  checkpoint = { every = 100, keep = 2 },
}
