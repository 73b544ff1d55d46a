-- Text-to-image end to end (lua/diffrl/pipeline.lua, `diffrl sample`): the tiny
-- pipelines of spec/fixtures/models sampled from the same initial noise as
-- diffusers' StableDiffusionPipeline (4 DDIM steps, guidance 3) give its images;
-- the CLI writes PNGs and reports bad arguments and folders.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local ROOT = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/models/'

local function max_abs(t) return t:abs():max():item() end

describe('#golden pipeline', function()
  for _, name in ipairs { 'tiny-sd15', 'tiny-sd2' } do
    it(name .. ' samples the images diffusers samples from the same noise', function()
      local file = dr.safetensors_open(ROOT .. name .. '/golden/pipeline.safetensors')
      local meta = file:metadata()
      local g = dr.load(ROOT .. name .. '/golden/pipeline.safetensors')
      local pipe = dr.pipeline.load(ROOT .. name)
      local ids = pipe.tokenizer:encode({ meta.prompt })
      assert.are.equal(0, max_abs((ids - g.input_ids):float()))
      assert.is_true(max_abs(pipe:encode_prompt({ meta.prompt }) - g.prompt_embeds) <= 1e-4)
      local images, latents = pipe:sample {
        prompt = meta.prompt, negative = meta.negative_prompt, steps = tonumber(meta.num_inference_steps),
        cfg = tonumber(meta.guidance_scale), eta = tonumber(meta.eta), latents = g.latents,
      }
      assert.is_true(max_abs(latents - g.final_latents) <= 1e-4, 'latents ' .. max_abs(latents - g.final_latents))
      local hwc = images:permute(1, 3, 4, 2)
      assert.is_true(max_abs(hwc - g.images) <= 1e-4, 'images ' .. max_abs(hwc - g.images))
    end)
  end

  it('is deterministic for a seed and varies with it', function()
    local pipe = dr.pipeline.load(ROOT .. 'tiny-sd15')
    local a = pipe:sample { prompt = 'a red circle', steps = 3, seed = 7, eta = 1 }
    local b = pipe:sample { prompt = 'a red circle', steps = 3, seed = 7, eta = 1 }
    local c = pipe:sample { prompt = 'a red circle', steps = 3, seed = 8, eta = 1 }
    assert.are.equal(0, max_abs(a - b))
    assert.is_true(max_abs(a - c) > 0)
    assert.are.same({ 1, 3, 16, 16 }, { a:size(1), a:size(2), a:size(3), a:size(4) })
  end)

  it('keeps the trajectory with log-probabilities when asked', function()
    local pipe = dr.pipeline.load(ROOT .. 'tiny-sd15')
    local _, _, traj = pipe:sample { prompt = { 'a', 'b' }, steps = 3, eta = 1, keep_trajectory = true }
    assert.are.equal(4, #traj.latents)
    assert.are.same({ 2, 3 }, { traj.log_probs:size(1), traj.log_probs:size(2) })
  end)

  it('names a folder that is not a pipeline', function()
    local err = h.error_of(dr.pipeline.load, ROOT .. 'bin-only')
    assert.is_truthy(err:find('model_index.json not found', 1, true), err)
  end)
end)

describe('#cli diffrl sample', function()
  it('writes a PNG of the requested size', function()
    local out = os.tmpname() .. '.png'
    local r = h.diffrl { 'sample', '--model', ROOT .. 'tiny-sd15', '--prompt', 'a red circle',
                         '--steps', '3', '--height', '32', '--width', '16', '--seed', '3', '-o', out }
    assert.are.equal(0, r.code, r.stderr)
    assert.is_truthy(r.stderr:find('sampling 3/3', 1, true), r.stderr)
    local img = dr.load_image(out)
    os.remove(out)
    assert.are.same({ 3, 32, 16 }, { img:size(1), img:size(2), img:size(3) })
  end)

  it('writes one file per image with --separate', function()
    local stem = os.tmpname()
    local r = h.diffrl { 'sample', '--model', ROOT .. 'tiny-sd2', '--prompt', 'two stars', '--steps', '2',
                         '--batch', '2', '--separate', '-o', stem .. '.png' }
    assert.are.equal(0, r.code, r.stderr)
    for i = 1, 2 do
      assert.is_truthy(io.open(stem .. '-' .. i .. '.png'), 'missing image ' .. i)
      os.remove(stem .. '-' .. i .. '.png')
    end
  end)

  it('reports usage errors with exit code 2 and bad folders with 1', function()
    local r = h.diffrl { 'sample', '--prompt', 'x' }
    assert.are.equal(2, r.code)
    assert.is_truthy(r.stderr:find('missing --model', 1, true), r.stderr)
    r = h.diffrl { 'sample', '--model', ROOT, '--prompt', 'x', '--steps', 'many' }
    assert.are.equal(2, r.code)
    assert.is_truthy(r.stderr:find("--steps expects an integer, got 'many'", 1, true), r.stderr)
    r = h.diffrl { 'sample', '--model', ROOT .. 'nope', '--prompt', 'x' }
    assert.are.equal(1, r.code)
    assert.is_truthy(r.stderr:find('not a diffusers pipeline folder', 1, true), r.stderr)
    r = h.diffrl { 'sample', '--model', ROOT .. 'tiny-sd15', '--prompt', 'x', '--height', '18' }
    assert.are.equal(1, r.code)
    assert.is_truthy(r.stderr:find('multiples of', 1, true), r.stderr)
  end)

  it('documents every option in --help', function()
    local r = h.diffrl { 'sample', '--help' }
    assert.are.equal(0, r.code)
    for _, opt in ipairs { '--model', '--prompt', '--negative', '--steps', '--cfg', '--seed', '--height',
                           '--width', '--batch', '-o' } do
      assert.is_truthy(r.stdout:find(opt, 1, true), opt)
    end
  end)
end)
