-- The paper's run: Stable Diffusion 2 fine-tuned with RL on the ImageReward human-
-- preference reward over DiffusionDB prompts (PAPER.md; settings in
-- configs/imagereward.lua). Needs, on local disk: a diffusers folder of
-- stabilityai/stable-diffusion-2-base (model.path), a prompt file, one prompt per
-- line (data.prompts; tools/ will convert DiffusionDB's parquet, issue 11), the
-- ImageReward folder (reward.path: THUDM/ImageReward's ImageReward.pt and
-- med_config.json, or a safetensors conversion) and bert-base-uncased's vocab.txt
-- (reward.tokenizer: the tokenizer BLIP uses).
--
--   diffrl run recipes/imagereward.lua --config configs/imagereward.lua \
--     model.path=/models/sd2-base data.prompts=/data/diffusiondb.txt pretrain.weight=0 \
--     reward.path=/models/ImageReward reward.tokenizer=/models/bert-base-uncased/vocab.txt
local dr = require 'diffrl'
local config = dr.config

local schema = config.schema(config.merge(dr.rl.schema.spec, {
  data = {
    prompts = { type = 'string', doc = 'prompt file, one per line (DiffusionDB: 1.5M unique prompts)' },
    holdout = { type = 'number', default = 0.0013, min = 0, max = 0.5,
                doc = 'fraction held out for evaluation (the paper held out 2,000 of 1.5M)' },
  },
  reward = {
    path = { type = 'string', doc = 'ImageReward folder (ImageReward.pt + med_config.json) or weights file' },
    tokenizer = { type = 'string', doc = "bert-base-uncased's vocab.txt (BLIP's tokenizer)" },
    med_config = { type = 'string', optional = true, doc = 'med_config.json (default: beside the weights)' },
    batch_size = { type = 'number', default = 8, min = 1, doc = 'images per ImageReward forward' },
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
      reward = dr.rewards.get('imagereward', { path = cfg.reward.path, tokenizer = cfg.reward.tokenizer,
                                              med_config = cfg.reward.med_config,
                                              batch_size = cfg.reward.batch_size }),
    } }
  end,
}
