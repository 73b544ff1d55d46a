-- The shipped shapes-world model (models/shapes-base, made by
-- recipes/pretrain_shapes.lua): a diffusers folder that loads and samples, and
-- whose images the shapes detector recognises better than chance for the prompt.
local dr = require 'diffrl'

local DIR = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/models/shapes-base'

describe('models/shapes-base', function()
  it('loads, samples 32x32 images and draws what simple prompts name more often than not', function()
    local pipe = dr.pipeline.load(DIR)
    local prompts = { 'a red circle', 'a blue square', 'a green triangle', 'a yellow star',
                      'a purple circle', 'an orange square', 'a blue star', 'a red triangle' }
    local images = pipe:sample { prompt = prompts, steps = 20, cfg = 4, seed = 1 }
    assert.are.same({ 8, 3, 32, 32 }, { images:size(1), images:size(2), images:size(3), images:size(4) })
    local scores = dr.rewards.call(dr.rewards.get('shapes_composition'), images, prompts, {})
    local shuffled = { prompts[2], prompts[3], prompts[4], prompts[1], prompts[6], prompts[7], prompts[8], prompts[5] }
    local wrong = dr.rewards.call(dr.rewards.get('shapes_composition'), images, shuffled, {})
    local function mean(xs) local s = 0; for _, x in ipairs(xs) do s = s + x end; return s / #xs end
    -- the right prompt scores higher than another image's prompt (the model follows text)
    assert.is_true(mean(scores) > mean(wrong) + 0.05, ('%.3f vs %.3f'):format(mean(scores), mean(wrong)))
  end)
end)
