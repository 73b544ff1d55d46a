-- Pretraining a text-to-image model from scratch (lua/diffrl/pretrain.lua,
-- recipes/pretrain_shapes.lua): the shapes vocabulary is a CLIP tokenizer folder whose
-- captions fit model_max_length; a few seeded training steps lower the diffusion loss
-- and the VAE loss on a fixed batch; the saved folder is a diffusers pipeline that
-- dr.pipeline.load reads and samples; the recipe resumes bit for bit.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local pretrain = require 'diffrl.pretrain'
local config = require 'diffrl.config'
local optim = require 'diffrl.optim'
local shapes = require 'diffrl.shapes'
local cjson = require 'cjson'

local SOURCE = os.getenv('DIFFRL_SOURCE_DIR') or '.'

local function temp_dir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -p '" .. path .. "'") == 0)
  return path
end

local function remove_dir(path) os.execute("rm -rf '" .. path .. "'") end

-- The recipe's defaults shrunk to a model that trains in seconds.
local function tiny_cfg(dir)
  local defaults = dofile(SOURCE .. '/configs/pretrain_shapes.lua')
  return config.resolve(config.schema(pretrain.schema), defaults, {
    run = { dir = dir, seed = 3 },
    tokenizer = { corpus = 300, max_length = 16 },
    text_encoder = { hidden_size = 16, intermediate_size = 32, layers = 1, heads = 2 },
    unet = { block_out_channels = { 8, 16 }, norm_num_groups = 4, attention_head_dim = 2 },
    vae = { block_out_channels = { 8, 8 }, norm_num_groups = 4 },
  })
end

local function tokenizer_dir(root, cfg)
  local _, captions = shapes.sample(cfg.tokenizer.corpus, { seed = 1, resolution = 32 })
  local merges = pretrain.learn_bpe(captions, { max_merges = cfg.tokenizer.max_merges })
  pretrain.write_tokenizer(root .. '/tokenizer', merges, { max_length = cfg.tokenizer.max_length })
  return root .. '/tokenizer', captions, merges
end

describe('pretrain', function()
  local root, cfg, tok_dir, corpus
  setup(function()
    root = temp_dir()
    cfg = tiny_cfg(root .. '/run')
    tok_dir, corpus = tokenizer_dir(root, cfg)
  end)
  teardown(function() remove_dir(root) end)

  describe('the shapes vocabulary', function()
    it('is a CLIP tokenizer folder: 512 byte symbols, the merges, then bos and eos', function()
      local _, _, merges = tokenizer_dir(root .. '/again', cfg)
      local tok = dr.CLIPTokenizer(tok_dir)
      assert.are.equal(512 + #merges + 2, tok.vocab_size)
      assert.are.equal(tok.vocab_size - 2, tok.bos_id)
      assert.are.equal(tok.vocab_size - 1, tok.eos_id)
      assert.are.equal(tok.eos_id, tok.pad_id)
      assert.are.equal(16, tok.model_max_length)
      assert.is_true(#merges < 400)
      -- learning is deterministic: the same captions give the same files
      assert.are.equal(h.read_file(tok_dir .. '/merges.txt'), h.read_file(root .. '/again/tokenizer/merges.txt'))
      assert.are.equal(h.read_file(tok_dir .. '/vocab.json'), h.read_file(root .. '/again/tokenizer/vocab.json'))
    end)

    it('encodes every caption word as one token, within model_max_length', function()
      local tok = dr.CLIPTokenizer(tok_dir)
      for _, c in ipairs(corpus) do
        local ids = tok:ids(c)
        local words = 0
        for _ in c:gmatch('[%a]+') do words = words + 1 end
        for _ in c:gmatch(',') do words = words + 1 end
        assert.are.equal(words + 2, #ids, c)
        assert.is_true(#ids <= tok.model_max_length, c)
      end
      assert.are.same({ 2, 16 }, tok:encode({ 'a red circle', 'two yellow stars' }):size())
    end)

    it('still encodes words it never saw, byte by byte', function()
      local tok = dr.CLIPTokenizer(tok_dir)
      local ids = tok:ids('a zebra')
      assert.is_true(#ids > 4)
      assert.are.equal(tok.bos_id, ids[1])
      assert.are.equal(tok.eos_id, ids[#ids])
    end)
  end)

  describe('training', function()
    local function fixed_loss(loss_fn, gen_state)
      local g = dr.Generator(0)
      g:set_state(gen_state)
      return loss_fn(g)
    end

    it('a few seeded diffusion steps lower the loss on a fixed batch', function()
      local parts = pretrain.build(cfg, tok_dir)
      parts.scaling_factor = pretrain.calibrate_scaling(parts, (shapes.sample(16, { seed = 5 })))
      local images, captions = shapes.sample(8, { seed = 2, resolution = 32 })
      local params = parts.unet:requires_grad(true):parameters()
      for _, p in ipairs(parts.text_encoder:requires_grad(true):parameters()) do params[#params + 1] = p end
      local opt = optim.AdamW(params, { lr = 3e-3, flat = true })
      local state = { seed = 11, offset = 0 }
      local function loss(g) return pretrain.diffusion_loss(parts, images, captions, g) end
      local before = dr.no_grad(function() return fixed_loss(loss, state):item() end)
      assert.are.equal(before, dr.no_grad(function() return fixed_loss(loss, state):item() end))
      for _ = 1, 8 do
        local l = fixed_loss(loss, state)
        l:backward()
        opt:step()
        opt:zero_grad()
      end
      local after = dr.no_grad(function() return fixed_loss(loss, state):item() end)
      assert.is_true(after < 0.8 * before, ('loss %.4f -> %.4f'):format(before, after))
    end)

    it('a few seeded VAE steps lower the reconstruction loss on a fixed batch', function()
      local parts = pretrain.build(cfg, tok_dir)
      local images = shapes.sample(8, { seed = 4, resolution = 32 })
      local opt = optim.AdamW(parts.vae:requires_grad(true):parameters(), { lr = 3e-3, flat = true })
      local state = { seed = 12, offset = 0 }
      local function loss(g) return (pretrain.vae_loss(parts, images, g)) end
      local before = dr.no_grad(function() return fixed_loss(loss, state):item() end)
      for _ = 1, 8 do
        local l = fixed_loss(loss, state)
        l:backward()
        opt:step()
        opt:zero_grad()
      end
      local after = dr.no_grad(function() return fixed_loss(loss, state):item() end)
      assert.is_true(after < 0.8 * before, ('loss %.4f -> %.4f'):format(before, after))
    end)

    it('calibrate_scaling gives latents of unit standard deviation', function()
      local parts = pretrain.build(cfg, tok_dir)
      local images = shapes.sample(32, { seed = 6, resolution = 32 })
      local sf = pretrain.calibrate_scaling(parts, images)
      local z = dr.no_grad(function() return parts.vae:encode(images * 2 - 1) * sf end)
      local c = z - z:mean():item()
      assert.is_true(math.abs(math.sqrt((c * c):mean():item()) - 1) < 1e-3)
    end)
  end)

  describe('the saved folder', function()
    local dir, parts
    setup(function()
      parts = pretrain.build(cfg, tok_dir)
      parts.scaling_factor = 2.5
      dir = pretrain.save(root .. '/model', parts)
    end)

    it('holds what diffusers needs: model_index.json, configs with floats where Python has them', function()
      local index = cjson.decode(h.read_file(dir .. '/model_index.json'))
      assert.are.equal('StableDiffusionPipeline', index._class_name)
      assert.are.same({ 'diffusers', 'DDIMScheduler' }, index.scheduler)
      assert.are.equal(cjson.null, index.safety_checker[1])
      assert.is_false(index.requires_safety_checker)
      local te = h.read_file(dir .. '/text_encoder/config.json')
      assert.is_truthy(te:find('"initializer_factor": 1.0', 1, true))
      assert.is_truthy(te:find('"max_position_embeddings": 16', 1, true))
      assert.are.equal(2.5, cjson.decode(h.read_file(dir .. '/vae/config.json')).scaling_factor)
      local keys = dr.safetensors_open(dir .. '/text_encoder/model.safetensors'):keys()
      assert.are.equal('text_model.', keys[1]:sub(1, 11))
    end)

    it('loads with dr.pipeline.load and samples the same images as the parts it came from', function()
      local pipe = dr.pipeline.load(dir)
      assert.are.equal(32, pipe.sample_size)
      assert.are.equal(2.5, pipe.scaling_factor)
      local opts = { prompt = { 'a red circle', 'two yellow stars' }, steps = 3, cfg = 4, seed = 1 }
      local images = pipe:sample(opts)
      assert.are.same({ 2, 3, 32, 32 }, images:size())
      assert.is_true(images:min():item() >= 0 and images:max():item() <= 1)
      local direct = pretrain.pipeline(parts):sample(opts)
      assert.are.equal(0, (images - direct):abs():max():item())
    end)

    it('loads back as parts with pretrain.load', function()
      local again = pretrain.load(dir)
      assert.are.equal(2.5, again.scaling_factor)
      local p1, p2 = parts.unet:named_parameters(), again.unet:named_parameters()
      assert.are.equal(#p1, #p2)
      assert.are.equal(0, (p1[5][2] - p2[5][2]):abs():max():item())
    end)
  end)
end)

describe('#slow #cli recipes/pretrain_shapes.lua', function()
  local TINY = { 'tokenizer.corpus=300', 'tokenizer.max_length=16', 'text_encoder.hidden_size=16',
                 'text_encoder.intermediate_size=32', 'text_encoder.layers=1', 'text_encoder.heads=2',
                 'unet.block_out_channels={8,16}', 'unet.norm_num_groups=4', 'unet.attention_head_dim=2',
                 'vae.block_out_channels={8,8}', 'vae.norm_num_groups=4', 'vae.batch_size=4',
                 'train.batch_size=4', 'sample.seeds=1', 'sample.steps=2', 'sample.every=2',
                 'checkpoint.every=2', 'vae.steps=2' }
  local function recipe(dir, extra)
    local args = { 'run', SOURCE .. '/recipes/pretrain_shapes.lua' }
    for _, a in ipairs(extra) do args[#args + 1] = a end
    return h.diffrl(args)
  end
  local function with(list, ...)
    local out = {}
    for _, a in ipairs(list) do out[#out + 1] = a end
    for _, a in ipairs { ... } do out[#out + 1] = a end
    return out
  end

  it('trains, writes a loadable folder, and a resumed run repeats the uninterrupted one', function()
    local root = temp_dir()
    local full = recipe(root .. '/a', with(TINY, 'run.dir=' .. root .. '/a', 'train.steps=4'))
    assert.are.equal(0, full.code, full.stderr)
    local part = recipe(root .. '/b', with(TINY, 'run.dir=' .. root .. '/b', 'train.steps=2'))
    assert.are.equal(0, part.code, part.stderr)
    local resumed = recipe(root .. '/b', { '--resume', root .. '/b', '--set', 'train.steps=4' })
    assert.are.equal(0, resumed.code, resumed.stderr)
    local a = h.read_file(root .. '/a/metrics.jsonl')
    assert.are.equal(6, select(2, a:gsub('\n', '')))
    assert.are.equal(a, h.read_file(root .. '/b/metrics.jsonl'))
    local pipe = dr.pipeline.load(root .. '/a/model')
    assert.are.same({ 1, 3, 32, 32 }, pipe:sample { prompt = 'a red circle', steps = 2 }:size())
    assert.is_truthy(h.read_file(root .. '/a/samples/step_000006.png'))
    remove_dir(root)
  end)
end)
