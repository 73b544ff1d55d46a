-- AutoencoderKL (core/models/vae.c) against diffusers 0.42.1: the tiny SD1.5- and
-- SD2-style VAEs of spec/fixtures/models (tools/fixtures/make_model_fixtures.py)
-- encode and decode the golden inputs to the golden outputs, and the gradients of
--   L = sum(mean * w_mean) + sum(logvar * w_logvar) + sum(decode(z) * w_dec)
-- for every parameter and for x and z are the reference's, with and without
-- gradient checkpointing. Relative error of a tensor a against the golden b:
--   max|a - b| / max(max|b|, 1e-6),
-- except for the mid-block attentions' to_k.bias, whose exact gradient is 0 (softmax
-- is shift-invariant per query: q.(k_j + b) adds the same q.b to every score), so
-- both sides are float rounding (~1e-7); it is measured against the scale of the
-- same attention's bias gradients: max|a - b| / max|golden grad of to_q.bias|.
-- Broken configs and checkpoints give errors naming the key; the full-size SD
-- VAEs have the reference's parameter count.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local MODELS = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/models/'
local PIPELINES = { 'tiny-sd15', 'tiny-sd2' }
local FORWARD_TOL, GRAD_TOL = 1e-4, 1e-3

local error_of = h.error_of

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

local function max_abs(t) return t:abs():max():item() end

local function max_error(a, b)
  assert.are.same(b:size(), a:size())
  return max_abs(a - b)
end

local function rel_error(a, b)
  return max_error(a, b) / math.max(max_abs(b), 1e-6)
end

local function vae_dir(name) return MODELS .. name .. '/vae' end
local function golden(name) return (dr.load(MODELS .. name .. '/golden/vae.safetensors')) end

-- The golden loss of a model, with x and z as leaves that require grad.
local function golden_loss(m, g)
  local x, z = g.x:detach():requires_grad(true), g.z:detach():requires_grad(true)
  local mean, logvar = m:encode(x)
  local dec = m:decode(z)
  local loss = (mean * g.w_mean):sum() + (logvar * g.w_logvar):sum() + (dec * g.w_dec):sum()
  return loss, x, z
end

-- Every parameter's gradient and grad.x / grad.z against the golden file.
local function check_gradients(name, checkpointing)
  local g = golden(name)
  local m = dr.load_model(vae_dir(name)):requires_grad(true):set_checkpointing(checkpointing)
  local loss, x, z = golden_loss(m, g)
  loss:backward()
  local worst, checked = 0, 0
  for _, p in ipairs(m:named_parameters()) do
    local key, param = p[1], p[2]
    local want = g['grad.' .. key]
    assert.is_not_nil(want, 'golden file has no grad.' .. key)
    assert.is_not_nil(param.grad, key .. ' got no gradient')
    local e
    if key:find('%.to_k%.bias$') then
      e = max_error(param.grad, want) / max_abs(g['grad.' .. key:gsub('to_k%.bias$', 'to_q.bias')])
    else
      e = rel_error(param.grad, want)
    end
    assert.is_true(e <= GRAD_TOL, ('%s: gradient of %s is off by %g (relative)'):format(name, key, e))
    worst, checked = math.max(worst, e), checked + 1
  end
  assert.are.equal(124, checked)
  for key, t in pairs { x = x, z = z } do
    local e = rel_error(t.grad, g['grad.' .. key])
    assert.is_true(e <= GRAD_TOL, ('%s: gradient of %s is off by %g (relative)'):format(name, key, e))
  end
  return worst
end

describe('AutoencoderKL #golden', function()
  for _, name in ipairs(PIPELINES) do
    describe(name, function()
      it('encodes to the reference posterior and decodes to the reference image', function()
        local g = golden(name)
        local m = dr.load_model(vae_dir(name))
        assert.are.equal(43711, m:num_parameters())
        local mean, logvar = m:encode(g.x)
        assert.is_true(max_error(mean, g.posterior_mean) <= FORWARD_TOL)
        assert.is_true(max_error(logvar, g.posterior_logvar) <= FORWARD_TOL)
        assert.is_true(max_error(m:decode(g.z), g.decoded) <= FORWARD_TOL)
      end)

      it('gives the reference gradients for every parameter, x and z', function()
        check_gradients(name, false)
      end)

      it('gives the same gradients with gradient checkpointing', function()
        check_gradients(name, true)
      end)
    end)
  end

  it('refuses inputs of the wrong shape, naming the expected channels', function()
    local m = dr.load_model(vae_dir('tiny-sd15'))
    assert_contains(error_of(m.encode, m, dr.zeros(1, 4, 16, 16)),
                    'vae: encode expects x [B, 3, H, W] (in_channels 3) with H and W positive '
                    .. 'multiples of 2, got [1, 4, 16, 16]')
    assert_contains(error_of(m.encode, m, dr.zeros(1, 3, 15, 16)), 'got [1, 3, 15, 16]')
    assert_contains(error_of(m.encode, m, dr.zeros(3, 16, 16)), 'got [3, 16, 16]')
    assert_contains(error_of(m.decode, m, dr.zeros(1, 3, 8, 8)),
                    'vae: decode expects z [B, 4, h, w] (latent_channels 4), got [1, 3, 8, 8]')
    assert_contains(error_of(m.encode, m, dr.zeros(1, 3, 16, 16, { dtype = 'float16' })),
                    'vae: encode expects x as float32 on cpu (the model\'s parameters), '
                    .. 'got float16 [1, 3, 16, 16] on cpu')
    assert_contains(error_of(m.decode, m, dr.zeros(1, 4, 8, 8, { dtype = 'int64' })),
                    'vae: decode expects z as float32 on cpu')
  end)
end)

describe('AutoencoderKL loading', function()
  local config = h.read_file(vae_dir('tiny-sd15') .. '/config.json')
  local weights = vae_dir('tiny-sd15') .. '/diffusion_pytorch_model.safetensors'

  -- A copy of the fixture checkpoint with edit(tensors) applied, at a temporary path.
  local function edited_checkpoint(edit)
    local tensors = dr.load(weights)
    edit(tensors)
    local path = os.tmpname()
    os.remove(path)
    path = path .. '.safetensors'
    dr.save(path, tensors)
    return path
  end

  it('names an unsupported block type or option of the config', function()
    local bad = config:gsub('"DownEncoderBlock2D"', '"AttnDownEncoderBlock2D"', 1)
    assert_contains(error_of(dr.Model, 'vae', bad),
                    "down_block_types[0] = 'AttnDownEncoderBlock2D' is not supported "
                    .. '(only DownEncoderBlock2D)')
    bad = config:gsub('"UpDecoderBlock2D"', '"AttnUpDecoderBlock2D"', 1)
    assert_contains(error_of(dr.Model, 'vae', bad), "up_block_types[0] = 'AttnUpDecoderBlock2D'")
    bad = config:gsub('"act_fn": "silu"', '"act_fn": "gelu"')
    assert_contains(error_of(dr.Model, 'vae', bad),
                    "config key 'act_fn' = 'gelu' is not supported (only 'silu')")
    bad = config:gsub('"latents_mean": null', '"latents_mean": [0, 0, 0, 0]')
    assert_contains(error_of(dr.Model, 'vae', bad), "config key 'latents_mean'")
    bad = config:gsub('"norm_num_groups": 4', '"norm_num_groups": 3')
    assert_contains(error_of(dr.Model, 'vae', bad), 'do not split into 3 groups (norm_num_groups)')
  end)

  it('builds without quant convs or mid-block attention when the config says so', function()
    local plain = config:gsub('"use_quant_conv": true', '"use_quant_conv": false')
      :gsub('"use_post_quant_conv": true', '"use_post_quant_conv": false')
      :gsub('"mid_block_add_attention": true', '"mid_block_add_attention": false')
    local m = dr.Model('vae', plain)
    for _, p in ipairs(m:named_parameters()) do
      assert.is_nil(p[1]:find('quant_conv', 1, true))
      assert.is_nil(p[1]:find('attentions', 1, true))
    end
    local mean, logvar = m:encode(dr.zeros(2, 3, 8, 8))
    assert.are.same({ 2, 4, 4, 4 }, mean:size())
    assert.are.same({ 2, 4, 4, 4 }, logvar:size())
    assert.are.same({ 2, 3, 8, 8 }, m:decode(mean):size())
  end)

  it('names a wrong-shape tensor of the checkpoint with both shapes', function()
    local path = edited_checkpoint(function(t) t['decoder.conv_in.weight'] = dr.zeros(16, 4, 1, 1) end)
    local m = dr.Model('vae', config)
    local msg = error_of(m.load, m, path)
    os.remove(path)
    assert_contains(msg, 'decoder.conv_in.weight: file [16, 4, 1, 1], model [16, 4, 3, 3]')
  end)

  it('names a missing key of the checkpoint', function()
    local path = edited_checkpoint(function(t) t['encoder.mid_block.attentions.0.to_q.bias'] = nil end)
    local m = dr.Model('vae', config)
    local msg = error_of(m.load, m, path)
    os.remove(path)
    assert_contains(msg, '1 missing key (encoder.mid_block.attentions.0.to_q.bias)')
  end)

  it('builds the full-size SD1.5 and SD2 VAEs with the reference parameter count', function()
    local counts = h.read_file(MODELS .. 'param_counts.json')
    for _, name in ipairs { 'sd15', 'sd2-base' } do
      local want = tonumber(counts:match('"' .. name:gsub('%-', '%%-') .. '/vae"%s*:%s*(%d+)'))
      local m = dr.Model('vae', h.read_file(MODELS .. 'configs/' .. name .. '/vae/config.json'))
      assert.are.equal(want, m:num_parameters())
      m:free()
    end
  end)
end)
