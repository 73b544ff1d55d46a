-- ImageReward (core/models/imagereward.c, blip_vit.c, bert.c; issue 10) against the
-- official image-reward 1.5 package: a tiny random-init model made by the package's
-- own classes (tools/fixtures/make_imagereward_fixtures.py: ViT width 32 / depth 2 at
-- 224, BERT hidden 32 / 2 layers with cross-attention, head 64-32-16-8) saved as the
-- official ImageReward.pt and as safetensors, with golden scores, features and token
-- ids; the full-size ViT-L + BERT-base model's parameter count; the reward function;
-- errors that name the key, shape or option.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local cjson = require 'cjson'

local DIR = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/imagereward/'
local META = cjson.decode(h.read_file(DIR .. 'meta.json'))
local GOLDEN = dr.load(DIR .. 'golden.safetensors')
local SMALL = { vision_config = META.vision_config, mlp_widths = META.mlp_widths }

local function max_abs(t) return t:abs():max():item() end
local function shape(t)
  local s = {}
  for i = 1, t.ndim do s[i] = t:size(i) end
  return s
end

local function tiny(path, opts)
  local o = { vision_config = SMALL.vision_config, mlp_widths = SMALL.mlp_widths }
  for k, v in pairs(opts or {}) do o[k] = v end
  return dr.load_imagereward(path or (DIR .. 'model.safetensors'), o)
end

local function image(i) -- [1, 3, H, W] float in [0, 1], as PIL reads the PNG
  local x = dr.load_image(DIR .. 'image_' .. i .. '.png')
  return x:reshape(1, 3, x:size(2), x:size(3))
end

local function rows(t, first, n) return t:narrow(1, first, n) end

-- every image through the tensor preprocessing, one batch of 4
local function all_pixels(ir)
  local parts = {}
  for i = 0, META.num_images - 1 do parts[i + 1] = ir:imagereward_preprocess(image(i)) end
  return dr.cat(parts, 1)
end

describe('ImageReward #golden', function()
  local ir = tiny()

  it('has the tiny model\'s parameters, named as ImageReward.pt\'s keys', function()
    assert.are.equal(META.tiny_param_count, ir:num_parameters())
    -- the state dict also holds the position_ids buffer, which is not a parameter
    assert.are.equal(META.tiny_state_dict_keys - 1, #ir:named_parameters())
    assert.are.same({ 1, 1, 32 }, shape(ir:param('blip.visual_encoder.cls_token')))
    assert.are.same({ 96, 32 }, shape(ir:param('blip.visual_encoder.blocks.1.attn.qkv.weight')))
    assert.is_truthy(ir:param('blip.text_encoder.encoder.layer.1.crossattention.self.key.weight'))
    assert.are.same({ 1, 8 }, shape(ir:param('mlp.layers.7.weight')))
  end)

  it('scores a batch as the official model does (224 images: the same pixels as PIL)', function()
    local px = all_pixels(ir)
    local s, img, txt = ir:imagereward_forward(px, GOLDEN.input_ids, GOLDEN.attention_mask,
      { image_embeds = true, text_features = true })
    assert.are.same({ 4 }, shape(s))
    assert.is_true(max_abs(s - GOLDEN.scores_tensor) <= 1e-4, 'scores: ' .. max_abs(s - GOLDEN.scores_tensor))
    -- images 0 and 1 are 224 x 224: the official PIL preprocessing gives the same input
    local pil2 = rows(GOLDEN.scores_pil, 1, 2)
    assert.is_true(max_abs(rows(s, 1, 2) - pil2) <= 1e-4)
    assert.is_true(max_abs(img:select(2, 1) - GOLDEN.vit_cls) <= 1e-4)
    assert.is_true(max_abs(img:select(2, img:size(2)) - GOLDEN.vit_last) <= 1e-4)
    assert.is_true(max_abs(txt - GOLDEN.text_cls) <= 1e-4)
    -- the scores differ by far more than the tolerance: the test can fail
    assert.is_true(max_abs(s - s:mean()) > 1e-2)
  end)

  it('scores every image with every prompt in one batch (padding masks of 4 lengths)', function()
    local px = all_pixels(ir)
    local n = META.num_images
    local idx, rep = {}, {}
    for i = 1, n do
      for j = 1, n do idx[#idx + 1], rep[#rep + 1] = i, j end
    end
    local s = ir:imagereward_forward(px:index_select(1, idx), GOLDEN.input_ids:index_select(1, rep),
      GOLDEN.attention_mask:index_select(1, rep))
    local err = max_abs(s:reshape(n, n) - GOLDEN.scores_all_pairs)
    assert.is_true(err <= 1e-4, 'all pairs: ' .. err)
  end)

  it('resizes as torch\'s antialiased bicubic, and measures the distance to PIL\'s uint8 path', function()
    local mean, std = { 0.48145466, 0.4578275, 0.40821073 }, { 0.26862954, 0.26130258, 0.27577711 }
    local pos = GOLDEN.sample_positions:tolist()
    for _, i in ipairs { 2, 3 } do -- 96 x 128 enlarged, 320 x 256 shrunk
      local px = ir:imagereward_preprocess(image(i))
      assert.are.same({ 1, 3, 224, 224 }, shape(px))
      local want, pil = GOLDEN['resized_' .. i]:tolist(), GOLDEN['resized_pil_' .. i]:tolist()
      local err, pil_err = 0, 0
      for c = 1, 3 do
        for k, p in ipairs(pos) do
          local v = px[1][c][p[1] + 1][p[2] + 1]:item() * std[c] + mean[c]
          err = math.max(err, math.abs(v - want[c][k]))
          pil_err = math.max(pil_err, math.abs(v - pil[c][k]))
        end
      end
      assert.is_true(err <= 1e-5, 'resize ' .. i .. ': ' .. err)
      -- PIL rounds and clips to bytes after each pass: where bicubic overshoots past
      -- [0, 1] at the checker edges of the enlarged image, 0.04 apart (measured)
      assert.is_true(pil_err <= 0.05, 'PIL distance ' .. i .. ': ' .. pil_err)
    end
    -- and on the scores: measured 4e-5 (shrunk) and 1.3e-3 (enlarged) on these images
    local d = max_abs(GOLDEN.scores_tensor - GOLDEN.scores_pil)
    assert.is_true(d > 0 and d < 5e-3)
  end)

  it('loads the official ImageReward.pt (dr.torch_load) to the same scores', function()
    local pt = tiny(DIR .. 'ImageReward.pt')
    local px = all_pixels(pt)
    local s = pt:imagereward_forward(px, GOLDEN.input_ids, GOLDEN.attention_mask)
    assert.is_true(max_abs(s - GOLDEN.scores_tensor) <= 1e-4)
  end)

  it('tokenizes the prompts with dr.BertTokenizer as BLIP\'s tokenizer does', function()
    local tok = dr.BertTokenizer(DIR .. 'vocab.txt', { added = { '[DEC]', '[ENC]' } })
    local ids, mask = tok:encode(META.prompts, { max_length = META.max_length, padding = 'max_length',
                                                 truncation = true })
    assert.are.same(GOLDEN.input_ids:tolist(), ids:tolist())
    assert.are.same(GOLDEN.attention_mask:tolist(), mask:tolist())
  end)
end)

describe('the imagereward reward #golden', function()
  it('scores images and prompts in batches, without gradients', function()
    local reward = dr.rewards.imagereward {
      path = DIR, tokenizer = DIR .. 'vocab.txt', batch_size = 3, -- sizes: imagereward_sizes.json
    }
    -- the two 224 images, each with two of the prompts: golden pairs (image, prompt)
    local images = dr.cat({ image(0), image(1), image(0), image(1) }, 1)
    local prompts = { META.prompts[1], META.prompts[2], META.prompts[3], META.prompts[4] }
    local scores, info = dr.rewards.call(reward, images, prompts)
    assert.are.equal(0, info.nonfinite)
    local want = GOLDEN.scores_all_pairs:tolist()
    local pairs_ = { { 1, 1 }, { 2, 2 }, { 1, 3 }, { 2, 4 } }
    for k, p in ipairs(pairs_) do
      assert.is_true(math.abs(scores[k] - want[p[1]][p[2]]) <= 1e-4, 'score ' .. k)
    end
    assert.are.equal('imagereward', dr.rewards.name_of(reward))
  end)

  it('takes a tokenizer function and says what is wrong with its output', function()
    local ir = tiny()
    local reward = dr.rewards.imagereward { model = ir, tokenizer = function(p)
      return GOLDEN.input_ids:narrow(1, 1, #p), GOLDEN.attention_mask:narrow(1, 1, #p)
    end }
    local s = reward(image(0), { 'x' })
    assert.is_true(math.abs(s[1] - GOLDEN.scores_pil[1]:item()) <= 1e-4)
    local bad = dr.rewards.imagereward { model = ir, tokenizer = function() return {} end }
    assert.matches('the tokenizer returned table for 1 prompts', h.error_of(bad, image(0), { 'x' }))
    assert.matches("imagereward: unknown option 'batchsize'",
      h.error_of(dr.rewards.imagereward, { model = ir, tokenizer = bad, batchsize = 2 }))
  end)
end)

describe('ImageReward errors', function()
  local ir = tiny()

  it('name missing, unexpected and wrong-shape keys', function()
    local tensors = dr.load(DIR .. 'model.safetensors')
    local m = dr.Model('imagereward', require('diffrl.core.reward_models').imagereward_config(
      h.read_file(DIR .. 'med_config.json'), SMALL), { init = false })
    -- vision_proj / text_proj are unused by scoring: a checkpoint may leave them out
    local kept = {}
    for k, v in pairs(tensors) do if not k:find('_proj%.') then kept[k] = v end end
    m:load_tensors(kept, { source = 'kept' })
    kept['mlp.layers.2.bias'] = nil
    kept['mlp.extra'] = tensors['mlp.layers.7.bias']
    kept['blip.visual_encoder.pos_embed'] = tensors['blip.visual_encoder.cls_token']
    local err = h.error_of(m.load_tensors, m, kept, { source = 'edited.pt' })
    assert.matches('checkpoint edited.pt does not fit the model: 1 missing key %(mlp.layers.2.bias%); '
      .. '1 unexpected key %(mlp.extra%); 1 wrong shape %(blip.visual_encoder.pos_embed: file %[1, 1, 32%], '
      .. 'model %[1, 197, 32%]%)', err)
    -- the official sizes do not fit the tiny file
    err = h.error_of(dr.load_imagereward, DIR .. 'model.safetensors', { vision_config = {} })
    assert.matches('model.safetensors does not fit the model: 264 missing keys %(blip.visual_encoder.blocks.2.'
      .. '.*; 44 wrong shapes %(blip.text_encoder.encoder.layer.0.crossattention.self.key.weight: file '
      .. '%[32, 32%], model %[32, 1024%]', err)
  end)

  it('name bad inputs and options', function()
    assert.matches('imagereward: pixel_values must be %[B, 3, 224, 224%] %(the preprocessed image%), got %[1, 3, 32, 32%]',
      h.error_of(ir.imagereward_forward, ir, dr.zeros(1, 3, 32, 32), GOLDEN.input_ids:narrow(1, 1, 1)))
    local ids = GOLDEN.input_ids:narrow(1, 1, 1):clone()
    ids[1][3] = 100
    assert.matches('token id 100 %(input_ids row 1, position 3, 1%-based%) is out of range for the text '
      .. 'encoder\'s vocab_size 100', h.error_of(ir.imagereward_forward, ir, dr.zeros(1, 3, 224, 224), ids))
    assert.matches('attention_mask must have input_ids\' shape %[1, 35%], got %[1, 34%]',
      h.error_of(ir.imagereward_forward, ir, dr.zeros(1, 3, 224, 224), GOLDEN.input_ids:narrow(1, 1, 1),
        dr.ones(1, 34, { dtype = 'int64' })))
    assert.matches('images must be a float tensor with values in %[0, 1%], got uint8',
      h.error_of(ir.imagereward_preprocess, ir, dr.zeros(1, 3, 8, 8, { dtype = 'uint8' })))
    assert.matches('images must be %[B, 3, H, W%]', h.error_of(ir.imagereward_preprocess, ir, dr.zeros(3, 8, 8)))
    local med = h.read_file(DIR .. 'med_config.json')
    local rm = require 'diffrl.core.reward_models'
    assert.matches("unknown key 'mlp_width'", h.error_of(dr.Model, 'imagereward',
      '{"text_config": ' .. med .. ', "mlp_width": [1, 2, 3, 4]}'))
    assert.matches('mlp_widths has 3 entries, expected 4', h.error_of(dr.Model, 'imagereward',
      rm.imagereward_config(med, { mlp_widths = { 1, 2, 3 } })))
    assert.matches('add_cross_attention must be true', h.error_of(dr.Model, 'imagereward',
      rm.imagereward_config((med:gsub('"add_cross_attention": true', '"add_cross_attention": false')))))
    assert.matches("hidden_act 'swish' is not supported", h.error_of(dr.Model, 'imagereward',
      rm.imagereward_config((med:gsub('"gelu"', '"swish"')))))
    assert.matches('image_size 224 is not a multiple of patch_size 15', h.error_of(dr.Model, 'imagereward',
      rm.imagereward_config(med, { vision_config = { patch_size = 15 } })))
    assert.matches('med_config.json not found %(ImageReward ships med_config.json beside ImageReward.pt',
      h.error_of(dr.load_imagereward, DIR .. 'model.safetensors', { med_config = DIR .. 'none/med_config.json' }))
  end)
end)

describe('#cli recipes/imagereward.lua', function()
  it('runs end to end on the tiny SD2-style pipeline with the tiny ImageReward', function()
    local src = os.getenv('DIFFRL_SOURCE_DIR') or '.'
    local dir, prompts = os.tmpname(), os.tmpname()
    os.remove(dir)
    h.write_file(prompts, 't5 t6 t7\nt8 t9\nt10 t11 t12\nt13\n')
    local r = h.diffrl { 'run', src .. '/recipes/imagereward.lua', 'model.path=' .. src .. '/spec/fixtures/models/tiny-sd2',
                         'data.prompts=' .. prompts, 'data.holdout=0', 'reward.path=' .. DIR,
                         'reward.tokenizer=' .. DIR .. 'vocab.txt', 'run.dir=' .. dir, 'train.iterations=2',
                         'sample.batch_size=2', 'sample.steps=3', 'sample.resolution=32', 'pretrain.weight=0' }
    local lines = {}
    if r.code == 0 then
      for line in io.lines(dir .. '/metrics.jsonl') do lines[#lines + 1] = cjson.decode(line) end
    end
    os.execute('rm -rf ' .. h.shell_quote(dir) .. ' ' .. h.shell_quote(prompts))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(2, #lines)
    -- the tiny model's scores on these images sit near -1 (far from 0: it was run)
    local m = lines[1].reward_mean
    assert.is_true(m < -0.5 and m > -2, tostring(m))
  end)

  it('loads `diffrl convert`\'s safetensors of ImageReward.pt to the same scores', function()
    local base = os.tmpname()
    os.remove(base)
    local out = base .. '.safetensors'
    local r = h.diffrl { 'convert', DIR .. 'ImageReward.pt', out }
    assert.are.equal(0, r.code, r.stderr)
    local ok, m = pcall(tiny, out, { med_config = DIR .. 'med_config.json' })
    local s = ok and m:imagereward_forward(all_pixels(m), GOLDEN.input_ids, GOLDEN.attention_mask)
    os.remove(out)
    assert.is_true(ok, tostring(m))
    assert.is_true(max_abs(s - GOLDEN.scores_tensor) <= 1e-4)
  end)

  it('says which setting is missing', function()
    local src = os.getenv('DIFFRL_SOURCE_DIR') or '.'
    local r = h.diffrl { 'run', src .. '/recipes/imagereward.lua', 'model.path=x', 'data.prompts=y',
                         'reward.path=' .. DIR }
    assert.are_not.equal(0, r.code)
    assert.matches('reward.tokenizer', r.stderr)
  end)
end)

describe('the full-size ImageReward #slow', function()
  it('builds ViT-L/16 + BERT-base with exactly the official parameter count', function()
    local rm = require 'diffrl.core.reward_models'
    local m = dr.Model('imagereward', rm.imagereward_config(cjson.encode(META.real.med_config)), { init = false })
    assert.are.equal(META.real.param_count, m:num_parameters()) -- 446,665,953
    assert.are.equal(META.real.state_dict_keys - 1, #m:named_parameters())
    m:free()
  end)
end)
