-- Stable Diffusion fine-tuned with RL on the LAION improved aesthetic predictor
-- (DDPO's aesthetic task; the paper's aesthetic reward, PAPER.md "Rewards"), settings
-- in configs/aesthetic.lua. Needs, on local disk: a diffusers folder (model.path), a
-- prompt file, one prompt per line (data.prompts), the predictor's weights
-- (reward.path: christophschuhmann/improved-aesthetic-predictor's
-- sac+logos+ava1-l14-linearMSE.pth, or a safetensors conversion) and its CLIP
-- ViT-L/14 (reward.clip: the transformers folder openai/clip-vit-large-patch14, or
-- open_clip's ViT-L-14 OpenAI weights; a bare open_clip file is taken as ViT-L-14
-- with QuickGELU unless reward.arch says otherwise).
--
--   diffrl run recipes/aesthetic.lua --config configs/aesthetic.lua \
--     model.path=/models/sd2-base data.prompts=/data/animals.txt pretrain.weight=0 \
--     reward.path=/models/sac+logos+ava1-l14-linearMSE.pth reward.clip=/models/clip-vit-large-patch14
local dr = require 'diffrl'
local config = dr.config

local schema = config.schema(config.merge(dr.rl.schema.spec, {
  data = {
    prompts = { type = 'string', doc = 'prompt file, one per line (DDPO: 45 common animals)' },
    holdout = { type = 'number', default = 0, min = 0, max = 0.5, doc = 'fraction held out for evaluation' },
  },
  reward = {
    path = { type = 'string', doc = "the aesthetic predictor's .pth (or .safetensors)" },
    clip = { type = 'string', doc = 'its CLIP ViT-L/14: a transformers CLIPModel folder or an open_clip checkpoint' },
    arch = { type = 'string', optional = true, doc = "open_clip architecture of reward.clip (default ViT-L-14)" },
    quick_gelu = { type = 'boolean', optional = true, doc = 'open_clip: QuickGELU (default true: OpenAI weights)' },
    batch_size = { type = 'number', default = 8, min = 1, doc = 'images per CLIP forward' },
  },
}))

return dr.rl.main {
  name = 'aesthetic',
  schema = schema,
  tasks = function(cfg)
    return { {
      name = 'aesthetic',
      prompts = dr.prompts.file(cfg.data.prompts, { holdout = cfg.data.holdout, split = 'train',
                                                    seed = cfg.run.seed }),
      reward = dr.rewards.get('aesthetic', { path = cfg.reward.path, clip = cfg.reward.clip, arch = cfg.reward.arch,
                                            quick_gelu = cfg.reward.quick_gelu,
                                            batch_size = cfg.reward.batch_size }),
    } }
  end,
}
