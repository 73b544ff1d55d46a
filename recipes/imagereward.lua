-- The paper's run: Stable Diffusion 2 fine-tuned with RL on the ImageReward human-
-- preference reward over DiffusionDB prompts (PAPER.md; settings in
-- configs/imagereward.lua). Needs, on local disk: a diffusers folder of
-- stabilityai/stable-diffusion-2-base (model.path) and a prompt file, one prompt per
-- line (data.prompts; tools/ will convert DiffusionDB's parquet, issue 11).
--
--   diffrl run recipes/imagereward.lua --config configs/imagereward.lua \
--     model.path=/models/sd2-base data.prompts=/data/diffusiondb.txt pretrain.weight=0
--
-- The ImageReward model itself is issue 10: until it lands this recipe stops with
-- an error naming it (never a silent substitute). Swap `reward` below for any
-- registered reward to run the same algorithm today.
local dr = require 'diffrl'
local config = dr.config

local schema = config.schema(config.merge(dr.rl.schema.spec, {
  data = {
    prompts = { type = 'string', doc = 'prompt file, one per line (DiffusionDB: 1.5M unique prompts)' },
    holdout = { type = 'number', default = 0.0013, min = 0, max = 0.5,
                doc = 'fraction held out for evaluation (the paper held out 2,000 of 1.5M)' },
  },
}))

return dr.rl.main {
  name = 'imagereward',
  schema = schema,
  tasks = function(cfg)
    return { {
      name = 'imagereward',
      prompts = dr.prompts.file(cfg.data.prompts, { holdout = cfg.data.holdout, split = 'train',
                                                    seed = cfg.run.seed }),
      reward = dr.rewards.get('imagereward'),
    } }
  end,
}
