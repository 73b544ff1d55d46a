-- DDPO's JPEG compressibility task on any diffusers Stable Diffusion folder:
-- the reward is minus the image's JPEG size in kB (quality 95), so the model
-- learns to draw simpler, smoother images. A small, honest end-to-end test of
-- the RL loop: no reward model needed.
--
--   diffrl run recipes/compressibility.lua model.path=/models/sd2-base run.dir=runs/jpeg
--   diffrl run recipes/compressibility.lua --resume runs/jpeg            # after an interruption
--   diffrl run recipes/compressibility.lua --help                         # every setting
--
-- Copy this file to start a new experiment: change `prompts` and `reward`.
local dr = require 'diffrl'

-- ddpo-pytorch's "simple animals" prompt set (a sample of its ImageNet animal names)
local ANIMALS = {
  'cat', 'dog', 'horse', 'monkey', 'rabbit', 'zebra', 'spider', 'bird', 'sheep', 'deer', 'cow',
  'goat', 'lion', 'tiger', 'bear', 'raccoon', 'fox', 'wolf', 'lizard', 'beetle', 'ant',
  'butterfly', 'fish', 'shark', 'whale', 'dolphin', 'squirrel', 'mouse', 'rat', 'snake',
  'turtle', 'frog', 'chicken', 'duck', 'goose', 'bee', 'pig', 'turkey', 'fly', 'llama', 'camel',
  'bat', 'gorilla', 'hedgehog', 'kangaroo',
}

return dr.rl.main {
  name = 'compressibility',
  defaults = dofile((debug.getinfo(1, 'S').source:match('^@(.*)/recipes/[^/]*$') or '.')
                    .. '/configs/compressibility.lua'),
  tasks = function(cfg)
    return { {
      name = 'compressibility',
      prompts = dr.prompts.list { shuffle = true, seed = cfg.run.seed, unpack(ANIMALS) },
      reward = dr.rewards.jpeg_compressibility { quality = 95 },
    } }
  end,
}
