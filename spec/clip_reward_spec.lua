-- CLIP (core/models/clip_vision.c, clip_text.c; kind "clip") and the LAION improved
-- aesthetic predictor (core/models/aesthetic.c) against transformers 5.24, open_clip
-- 3.3 and the predictor's MLP class: tiny random-init models saved in their real
-- formats by tools/fixtures/make_clip_fixtures.py (a transformers CLIPModel folder as
-- model.safetensors and as pytorch_model.bin, an open_clip hub folder as
-- open_clip_model.safetensors and open_clip_pytorch_model.bin, the MLP as .pth and
-- .safetensors), golden features and scores on the same float preprocessing; the
-- rewards clip_score and aesthetic; errors that name the file, key or shape.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local cjson = require 'cjson'

local DIR = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/clip/'
local META = cjson.decode(h.read_file(DIR .. 'meta.json'))
local GOLDEN = dr.load(DIR .. 'golden.safetensors')
local TOL = 1e-4

local function max_abs(t) return t:abs():max():item() end

local function image(i) -- [1, 3, H, W] float in [0, 1], as PIL reads the PNG
  local x = dr.load_image(DIR .. 'image_' .. i .. '.png')
  return x:reshape(1, 3, x:size(2), x:size(3))
end

-- the four fixture images (32x32 twice, 24x20 enlarged, 48x40 shrunk) preprocessed
local function pixels(m)
  local parts = {}
  for i = 0, 3 do parts[i + 1] = m:clip_preprocess(image(i)) end
  return dr.cat(parts, 1)
end

local function cosine100(a, b)
  return (a * b):sum(2) * 100 / ((a * a):sum(2) * (b * b):sum(2)):sqrt()
end

local function check_model(m, prefix)
  local px = pixels(m)
  assert.is_true(max_abs(px - GOLDEN.pixel_values) <= 1e-5, 'pixels: ' .. max_abs(px - GOLDEN.pixel_values))
  local fi, ft = m:clip_image_features(px), m:clip_text_features(GOLDEN.input_ids)
  local e_img = max_abs(fi - GOLDEN[prefix .. '_image_features'])
  local e_txt = max_abs(ft - GOLDEN[prefix .. '_text_features'])
  local e_score = max_abs(cosine100(fi, ft) - GOLDEN[prefix .. '_clip_score'])
  assert.is_true(e_img <= TOL, 'image features: ' .. e_img)
  assert.is_true(e_txt <= TOL, 'text features: ' .. e_txt)
  assert.is_true(e_score <= TOL, 'clip score: ' .. e_score)
  -- the scores are far apart: the comparison can fail
  local s = GOLDEN[prefix .. '_clip_score']
  assert.is_true(s:max():item() - s:min():item() > 10)
end

describe('CLIP #golden', function()
  it('loads a transformers CLIPModel folder (model.safetensors) and matches transformers', function()
    local m = dr.load_clip(DIR .. 'transformers')
    assert.are.equal('clip', m.kind)
    assert.are.equal(META.hf_param_count, m:num_parameters())
    assert.are.same({ 16, 16 }, m:param('visual_projection.weight').shape)
    assert.are.same({ 16 }, m:param('vision_model.embeddings.class_embedding').shape)
    check_model(m, 'hf')
  end)

  it('loads pytorch_model.bin (dr.torch_load) to the same features', function()
    check_model(dr.load_clip(DIR .. 'transformers-bin'), 'hf')
  end)

  it('loads a CLIPModel folder with dr.load_model too', function()
    local m = dr.load_model(DIR .. 'transformers')
    assert.are.equal('clip', m.kind)
    check_model(m, 'hf')
  end)

  it('loads an open_clip hub folder (open_clip_config.json + safetensors) and matches open_clip', function()
    local m = dr.load_clip(DIR .. 'open_clip')
    assert.are.equal(META.oc_param_count, m:num_parameters())
    check_model(m, 'oc')
  end)

  it('loads open_clip_pytorch_model.bin with its model config given', function()
    local m = dr.load_clip(DIR .. 'open_clip/open_clip_pytorch_model.bin',
      { model_config = DIR .. 'open_clip/open_clip_config.json' })
    check_model(m, 'oc')
    -- the config as a table (open_clip's model_configs layout) and the quick_gelu switch
    local cfg = cjson.decode(h.read_file(DIR .. 'open_clip/open_clip_config.json')).model_cfg
    cfg.quick_gelu = nil
    local gelu = dr.load_clip(DIR .. 'open_clip/open_clip_model.safetensors', { model_config = cfg })
    local quick = dr.load_clip(DIR .. 'open_clip/open_clip_model.safetensors', { model_config = cfg, quick_gelu = true })
    check_model(quick, 'oc')
    local px = GOLDEN.pixel_values
    assert.is_true(max_abs(gelu:clip_image_features(px) - GOLDEN.oc_image_features) > 1e-3)
  end)

  it('measures the distance to open_clip\'s PIL (uint8) preprocessing', function()
    local m = dr.load_clip(DIR .. 'open_clip')
    local s = cosine100(m:clip_image_features(pixels(m)), m:clip_text_features(GOLDEN.input_ids))
    local d = (s - GOLDEN.oc_clip_score_pil):abs():tolist()
    -- 32 x 32 images: no resize, the same pixels
    assert.is_true(d[1] <= TOL and d[2] <= TOL)
    -- resized: PIL rounds to bytes after each pass; measured 2.7e-2 and 3.3e-2 on the
    -- 100 * cosine scale (images 2 and 3)
    assert.is_true(d[3] > 0 and d[3] < 0.1 and d[4] > 0 and d[4] < 0.1, cjson.encode(d))
  end)
end)

describe('the LAION aesthetic predictor #golden', function()
  it('loads the .pth state dict and scores open_clip features as the MLP class does', function()
    local mlp = dr.load_aesthetic(DIR .. 'aesthetic.pth')
    assert.are.equal('aesthetic', mlp.kind)
    assert.are.same({ META.aesthetic_widths[1], META.embed_dim }, mlp:param('layers.0.weight').shape)
    assert.are.same({ 1, META.aesthetic_widths[4] }, mlp:param('layers.7.weight').shape)
    local clip = dr.load_clip(DIR .. 'open_clip')
    local s = mlp:aesthetic_forward(clip:clip_image_features(GOLDEN.pixel_values))
    assert.is_true(max_abs(s - GOLDEN.aesthetic) <= TOL, 'aesthetic: ' .. max_abs(s - GOLDEN.aesthetic))
    local hf = dr.load_clip(DIR .. 'transformers')
    s = mlp:aesthetic_forward(hf:clip_image_features(GOLDEN.pixel_values))
    assert.is_true(max_abs(s - GOLDEN.hf_aesthetic) <= TOL)
    assert.is_true(GOLDEN.aesthetic:max():item() - GOLDEN.aesthetic:min():item() > 1e-2)
  end)

  it('loads a safetensors conversion to the same scores; a zero feature scores the biases', function()
    local mlp = dr.load_aesthetic(DIR .. 'aesthetic.safetensors')
    local f = GOLDEN.oc_image_features
    local s = mlp:aesthetic_forward(f * 3) -- scale-free: the features are normalised
    assert.is_true(max_abs(s - GOLDEN.aesthetic) <= TOL)
    local z = mlp:aesthetic_forward(dr.zeros(1, META.embed_dim))
    assert.is_true(z:item() == z:item()) -- finite, not NaN (numpy divides a zero norm by 1)
  end)

  it('has the released predictor\'s sizes by default (768-1024-128-64-16-1)', function()
    local m = dr.Model('aesthetic', '{}', { init = false })
    assert.are.equal(927969, m:num_parameters())
  end)
end)

describe('the clip_score and aesthetic rewards #golden', function()
  local images = dr.cat({ image(0), image(1) }, 1)

  it('score images with their prompts in batches, without gradients', function()
    for _, c in ipairs { { 'transformers', 'hf' }, { 'open_clip', 'oc' } } do
      local reward = dr.rewards.clip_score { path = DIR .. c[1], tokenizer = DIR .. 'tokenizer', batch_size = 1,
                                             clamp = false }
      local scores, info = dr.rewards.call(reward, images, { META.prompts[1], META.prompts[2] })
      assert.are.equal(0, info.nonfinite)
      local want = GOLDEN[c[2] .. '_clip_score']:tolist()
      for i = 1, 2 do assert.is_true(math.abs(scores[i] - want[i]) <= TOL, c[1] .. ' score ' .. i) end
      assert.are.equal('clip_score', dr.rewards.name_of(reward))
    end
    -- the tokenizer reproduces transformers' CLIPTokenizer ids for the prompts
    local ids = dr.CLIPTokenizer(DIR .. 'tokenizer'):encode(META.prompts, { max_length = META.context_length })
    assert.are.same(GOLDEN.input_ids:tolist(), ids:tolist())
  end)

  it('clamps at 0 as torchmetrics unless clamp = false; scale changes the unit', function()
    local m = dr.load_clip(DIR .. 'open_clip')
    local tok = function(p) return GOLDEN.input_ids:narrow(1, 4, #p) end -- prompt 4 with image 3: negative
    local want = GOLDEN.oc_clip_score:tolist()[4]
    assert.is_true(want < 0)
    local x = image(3)
    assert.are.equal(0, dr.rewards.clip_score { model = m, tokenizer = tok } (x, { 'p' })[1])
    local raw = dr.rewards.clip_score { model = m, tokenizer = tok, clamp = false } (x, { 'p' })[1]
    assert.is_true(math.abs(raw - want) <= TOL)
    local unit = dr.rewards.clip_score { model = m, tokenizer = tok, clamp = false, scale = 1 } (x, { 'p' })[1]
    assert.is_true(math.abs(unit * 100 - raw) <= 1e-6)
  end)

  it('aesthetic: the predictor on the CLIP model given, batched', function()
    local reward = dr.rewards.aesthetic { path = DIR .. 'aesthetic.pth', clip = DIR .. 'open_clip', batch_size = 1 }
    local scores = dr.rewards.call(reward, images, { 'a', 'b' })
    local want = GOLDEN.aesthetic:tolist()
    for i = 1, 2 do assert.is_true(math.abs(scores[i] - want[i]) <= TOL, 'aesthetic ' .. i) end
    assert.are.equal('aesthetic', dr.rewards.name_of(reward))
    -- a bare open_clip file: with the predictor's own CLIP's settings given explicitly
    local file = dr.rewards.aesthetic { path = DIR .. 'aesthetic.safetensors',
      clip = DIR .. 'open_clip/open_clip_pytorch_model.bin', model_config = DIR .. 'open_clip/open_clip_config.json' }
    assert.is_true(math.abs(file(image(0))[1] - want[1]) <= TOL)
  end)
end)

describe('CLIP and aesthetic errors', function()
  it('name the missing or misshaped open_clip key and the file', function()
    local tensors = dr.load(DIR .. 'open_clip/open_clip_model.safetensors')
    tensors['visual.proj'] = nil
    tensors['visual.ln_post.bias'] = tensors['visual.class_embedding']:narrow(1, 1, 8)
    tensors['visual.extra'] = tensors['logit_scale']
    local path = os.tmpname() .. '.safetensors'
    dr.save(path, tensors)
    local err = h.error_of(dr.load_clip, path, { model_config = DIR .. 'open_clip/open_clip_config.json' })
    os.remove(path)
    assert.matches('load_clip: open_clip checkpoint .*%.safetensors does not fit the model: 1 missing key '
      .. '%(visual.proj%); 1 unexpected key %(visual.extra%); 1 wrong shape %(visual.ln_post.bias: file %[8%], '
      .. 'model %[16%]%)', err)
    -- the fused in_proj of attention: a wrong shape names the open_clip key
    tensors = dr.load(DIR .. 'open_clip/open_clip_model.safetensors')
    tensors['transformer.resblocks.1.attn.in_proj_weight'] = tensors['transformer.resblocks.1.attn.out_proj.weight']
    path = os.tmpname() .. '.safetensors'
    dr.save(path, tensors)
    err = h.error_of(dr.load_clip, path, { model_config = DIR .. 'open_clip/open_clip_config.json' })
    os.remove(path)
    assert.matches('transformer.resblocks.1.attn.in_proj_weight: file %[16, 16%], model %[48, 16%]', err)
  end)

  it('name missing and misshaped transformers keys', function()
    local m = dr.Model('clip', h.read_file(DIR .. 'transformers/config.json'), { init = false })
    local tensors = dr.load(DIR .. 'transformers/model.safetensors')
    tensors['visual_projection.weight'] = nil
    tensors['vision_model.embeddings.position_embedding.weight'] = tensors['text_projection.weight']
    local err = h.error_of(m.load_tensors, m, tensors, { source = 'edited.bin' })
    assert.matches('checkpoint edited.bin does not fit the model: 1 missing key %(visual_projection.weight%); '
      .. '1 wrong shape %(vision_model.embeddings.position_embedding.weight: file %[16, 16%], model %[17, 16%]%)', err)
  end)

  it('name a missing folder, file, config or key of the predictor', function()
    assert.matches('load_clip: .*nowhere is not a CLIP folder', h.error_of(dr.load_clip, DIR .. 'nowhere'))
    assert.matches('load_clip: .*none%.bin not found', h.error_of(dr.load_clip, DIR .. 'none.bin'))
    local bare = os.tmpname() .. '.safetensors' -- an open_clip file in a folder without its config
    dr.save(bare, dr.load(DIR .. 'open_clip/open_clip_model.safetensors'))
    local bare_err = h.error_of(dr.load_clip, bare)
    os.remove(bare)
    assert.matches("has no open_clip_config.json: pass arch = 'ViT%-L%-14'", bare_err)
    assert.matches("arch 'ViT%-Q%-1' is not built in %(ViT%-B%-16, ViT%-B%-32",
      h.error_of(dr.load_clip, DIR .. 'open_clip/open_clip_model.safetensors', { arch = 'ViT-Q-1' }))
    -- a built-in architecture that is not this file: every key's shape is named
    assert.matches('does not fit the model: .*wrong shapes %(token_embedding.weight: file %[614, 16%], model '
      .. '%[49408, 768%]', h.error_of(dr.load_clip, DIR .. 'open_clip/open_clip_model.safetensors', { arch = 'ViT-L-14' }))
    local cfg = cjson.decode(h.read_file(DIR .. 'open_clip/open_clip_config.json')).model_cfg
    cfg.vision_cfg.attentional_pool = true
    assert.matches('open_clip config vision_cfg.attentional_pool = true is not supported',
      h.error_of(dr.load_clip, DIR .. 'open_clip/open_clip_model.safetensors', { model_config = cfg }))
    assert.matches('load_aesthetic: .*nothing%.pth not found', h.error_of(dr.load_aesthetic, DIR .. 'nothing.pth'))
    local tensors = dr.load(DIR .. 'aesthetic.safetensors')
    tensors['layers.4.weight'] = nil
    local path = os.tmpname() .. '.safetensors'
    dr.save(path, tensors)
    local err = h.error_of(dr.load_aesthetic, path)
    tensors = dr.load(DIR .. 'aesthetic.safetensors')
    tensors['layers.7.bias'] = tensors['layers.6.bias']
    dr.save(path, tensors)
    local err2 = h.error_of(dr.load_aesthetic, path)
    os.remove(path)
    assert.matches('load_aesthetic: .*%.safetensors has no layers.4.weight', err)
    assert.matches('does not fit the model: 1 wrong shape %(layers.7.bias: file %[4%], model %[1%]%)', err2)
  end)

  it('name bad inputs and mismatched models', function()
    local m = dr.load_clip(DIR .. 'transformers')
    assert.matches('clip_image_features: pixel_values must be %[B, 3, 32, 32%] %(the preprocessed image',
      h.error_of(m.clip_image_features, m, dr.zeros(1, 3, 24, 24)))
    assert.matches('images must be a float tensor with values in %[0, 1%], got uint8',
      h.error_of(m.clip_preprocess, m, dr.zeros(1, 3, 8, 8, { dtype = 'uint8' })))
    local ids = GOLDEN.input_ids:narrow(1, 1, 1):clone()
    ids[1][2] = 614
    assert.matches('token id 614 %(input_ids row 1, position 2, 1%-based%) is out of range for vocab_size 614',
      h.error_of(m.clip_text_features, m, ids))
    local mlp = dr.Model('aesthetic', '{"input_size": 8, "mlp_widths": [4, 4, 4, 4]}')
    assert.matches('aesthetic_forward: image_features must be %[B, 8%]', h.error_of(mlp.aesthetic_forward, mlp,
      dr.zeros(2, 16)))
    assert.matches('the predictor .* takes 8%-d CLIP image features %(layers.0.weight %[4, 8%]%), but the CLIP model '
      .. '.* gives 16%-d ones', h.error_of(dr.rewards.aesthetic, { mlp = mlp, clip_model = m }))
    assert.matches("clip_score: unknown option 'clamp_min'",
      h.error_of(dr.rewards.clip_score, { model = m, tokenizer = DIR .. 'tokenizer', clamp_min = 0 }))
    assert.matches('clip_score: tokenizer is required', h.error_of(dr.rewards.clip_score, { model = m }))
    assert.matches("unknown key 'input'", h.error_of(dr.Model, 'aesthetic', '{"input": 3}'))
    assert.matches("architectures 'CLIPVisionModel' is not supported %(CLIPModel%)",
      h.error_of(dr.Model, 'clip', '{"architectures": ["CLIPVisionModel"]}'))
  end)
end)

describe('the full-size CLIP ViT-L/14 #slow', function()
  it('builds the aesthetic predictor\'s CLIP with open_clip\'s parameter count', function()
    local cm = require 'diffrl.core.clip_models'
    local cfg = cm.open_clip_to_clip_config(cm.OPEN_CLIP_CONFIGS['ViT-L-14'], 'ViT-L-14', true)
    local m = dr.Model('clip', cjson.encode(cfg), { init = false })
    assert.are.equal(427616513, m:num_parameters()) -- open_clip 3.3 and transformers' openai/clip-vit-large-patch14
    m:free()
  end)
end)

describe('#cli recipes/aesthetic.lua', function()
  it('runs end to end (configs/aesthetic.lua) on the tiny SD2-style pipeline with the tiny predictor and CLIP', function()
    local src = os.getenv('DIFFRL_SOURCE_DIR') or '.'
    local dir, prompts = os.tmpname(), os.tmpname()
    os.remove(dir)
    h.write_file(prompts, 'a cat\na dog\n')
    local r = h.diffrl { 'run', src .. '/recipes/aesthetic.lua', '--config', src .. '/configs/aesthetic.lua',
                         'model.path=' .. src .. '/spec/fixtures/models/tiny-sd2',
                         'data.prompts=' .. prompts, 'reward.path=' .. DIR .. 'aesthetic.pth',
                         'reward.clip=' .. DIR .. 'open_clip', 'run.dir=' .. dir, 'train.iterations=2',
                         'sample.batch_size=2', 'sample.steps=3', 'sample.resolution=32' }
    local lines = {}
    if r.code == 0 then
      for line in io.lines(dir .. '/metrics.jsonl') do lines[#lines + 1] = cjson.decode(line) end
    end
    os.execute('rm -rf ' .. h.shell_quote(dir) .. ' ' .. h.shell_quote(prompts))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(2, #lines)
    -- the tiny predictor's scores sit near 0.65 on any image (far from 0: it was run)
    local m = lines[1].reward_mean
    assert.is_true(m > 0.3 and m < 1, tostring(m))
  end)
end)
