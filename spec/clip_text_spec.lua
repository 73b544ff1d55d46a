-- CLIPTextModel (core/models/clip_text.c) against transformers 5.24.0 itself: the
-- tiny SD1.5-style (quick_gelu, "text_model." keys as published) and SD2-style
-- (gelu, transformers 5's unprefixed keys) text encoders of spec/fixtures/models
-- (tools/fixtures/make_model_fixtures.py, random init) with their golden outputs,
-- clip_skip and parameter gradients; gradient checkpointing; LoRA; errors that name
-- the problem; the full-size configs' parameter counts.
local dr = require 'diffrl'

local ROOT = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/models/'

local function read(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

local function max_abs(t) return t:abs():max():item() end
-- Relative error of a tensor: max |a - b| / max(max |b|, 1e-6).
local function rel_err(a, b) return max_abs(a - b) / math.max(max_abs(b), 1e-6) end

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

-- The golden file keys gradients by the checkpoint's own key layout: tiny-sd15 has
-- "text_model." keys (as the published SD checkpoints), tiny-sd2 the unprefixed keys
-- transformers 5 writes. Model parameters are always named with "text_model.".
local function file_key(name, p) return name == 'tiny-sd2' and (p:gsub('^text_model%.', '')) or p end

local function tiny(name) return dr.load_model(ROOT .. name .. '/text_encoder') end

local function loss_of(g, hid, pooled)
  return (hid * g.loss_weight_hidden):sum() + (pooled * g.loss_weight_pooled):sum()
end

-- Every parameter's gradient against the golden one, relative error <= 1e-3 — except
-- k_proj.bias, whose exact gradient is zero (q . b_k adds the same number to every
-- score of a query row, and softmax ignores that): both sides hold only rounding
-- noise, so it must be tiny against the model's gradient scale instead.
local function check_grads(te, g, name)
  local scale = 0
  for k, v in pairs(g) do
    if k:find('^grad%.') then scale = math.max(scale, max_abs(v)) end
  end
  local n = 0
  for _, p in ipairs(te:named_parameters()) do
    local ref = g['grad.' .. file_key(name, p[1])]
    assert.is_not_nil(ref, 'golden has no gradient for ' .. p[1])
    assert.is_not_nil(p[2].grad, p[1] .. ' got no gradient')
    if p[1]:find('k_proj%.bias$') then
      assert.is_true(max_abs(p[2].grad) <= 1e-5 * scale, p[1] .. ': ' .. max_abs(p[2].grad))
      assert.is_true(max_abs(ref) <= 1e-5 * scale)
    else
      local err = rel_err(p[2].grad, ref)
      assert.is_true(err <= 1e-3, p[1] .. ': relative error ' .. err)
    end
    n = n + 1
  end
  return n
end

describe('#golden clip_text', function()
  for _, name in ipairs { 'tiny-sd15', 'tiny-sd2' } do
    describe(name, function()
      local g = dr.load(ROOT .. name .. '/golden/text_encoder.safetensors')
      local te = tiny(name)

      it('has the parameters transformers has (position_ids is a buffer, not counted)', function()
        local counts = read(ROOT .. 'param_counts.json')
        local want = tonumber(counts:match('"' .. name:gsub('%-', '%%-') .. '"%s*:%s*{[^}]-"text_encoder"%s*:%s*(%d+)'))
        assert.are.equal(want, te:num_parameters())
      end)

      it('encodes as transformers does: last_hidden_state and pooler_output (max abs error <= 1e-4)', function()
        local hid, pooled = dr.no_grad(function() return te:forward(g.input_ids) end)
        assert.are.same(g.last_hidden_state.shape, hid.shape)
        assert.are.same(g.pooler_output.shape, pooled.shape)
        assert.is_true(max_abs(hid - g.last_hidden_state) <= 1e-4, 'hidden ' .. max_abs(hid - g.last_hidden_state))
        assert.is_true(max_abs(pooled - g.pooler_output) <= 1e-4, 'pooled ' .. max_abs(pooled - g.pooler_output))
      end)

      it('with skip = 1 gives final_layer_norm(hidden_states[-2]) as diffusers clip_skip, pooled unchanged', function()
        local hid, pooled = dr.no_grad(function() return te:encode_text(g.input_ids, { skip = 1 }) end)
        local d = te:param('text_model.final_layer_norm.weight'):size(1)
        local want = dr.layer_norm(g.penultimate, { d }, te:param('text_model.final_layer_norm.weight'),
                                   te:param('text_model.final_layer_norm.bias'), 1e-5)
        assert.is_true(max_abs(hid - want) <= 1e-4, 'skip 1: ' .. max_abs(hid - want))
        assert.is_true(max_abs(pooled - g.pooler_output) <= 1e-4)
      end)

      it('gives every parameter the gradient transformers gives (relative error <= 1e-3)', function()
        te:requires_grad(true)
        for _, p in ipairs(te:parameters()) do p.grad = nil end
        loss_of(g, te:forward(g.input_ids)):backward()
        assert.are.equal(#te:named_parameters(), check_grads(te, g, name))
      end)

      it('gives the same outputs and gradients with gradient checkpointing', function()
        te:requires_grad(true)
        te:set_checkpointing(true)
        for _, p in ipairs(te:parameters()) do p.grad = nil end
        local hid, pooled = te:forward(g.input_ids)
        assert.is_true(max_abs(hid - g.last_hidden_state) <= 1e-4)
        loss_of(g, hid, pooled):backward()
        te:set_checkpointing(false)
        check_grads(te, g, name)
      end)
    end)
  end
end)

describe('clip_text loading', function()
  it('dr.load_model reads the published layout ("text_model." keys)', function()
    local g = dr.load(ROOT .. 'tiny-sd15/golden/text_encoder.safetensors')
    local te = dr.load_model(ROOT .. 'tiny-sd15/text_encoder')
    assert.are.equal('clip_text', te.kind)
    local hid = dr.no_grad(function() return te:forward(g.input_ids) end)
    assert.is_true(max_abs(hid - g.last_hidden_state) <= 1e-4)
  end)

  it("dr.load_model reads transformers 5's layout (keys without \"text_model.\")", function()
    local te = dr.load_model(ROOT .. 'tiny-sd2/text_encoder')
    local g = dr.load(ROOT .. 'tiny-sd2/golden/text_encoder.safetensors')
    local hid = dr.no_grad(function() return te:forward(g.input_ids) end)
    assert.is_true(max_abs(hid - g.last_hidden_state) <= 1e-4)
  end)
end)

describe('clip_text LoRA', function()
  local g = dr.load(ROOT .. 'tiny-sd15/golden/text_encoder.safetensors')

  it('starts as the base model, trains only the adapters, and changes the output', function()
    local te = tiny('tiny-sd15')
    local base_hid, base_pooled = dr.no_grad(function() return te:forward(g.input_ids) end)
    local n = te:add_lora { rank = 2 }
    assert.are.equal(4 * 2, n) -- q/k/v/out_proj of 2 layers
    local adapters = te:named_parameters { adapters_only = true }
    assert.are.equal(2 * n, #adapters)
    assert.is_truthy(adapters[1][1]:find('^text_model%.encoder%.layers%.0%.self_attn%.[qkvout]+_proj%.lora_A%.weight$'),
                     adapters[1][1])
    local hid, pooled = dr.no_grad(function() return te:forward(g.input_ids) end)
    assert.are.equal(0, max_abs(hid - base_hid)) -- lora_B starts at zero
    assert.are.equal(0, max_abs(pooled - base_pooled))

    dr.no_grad(function()
      for _, p in ipairs(adapters) do
        if p[1]:find('lora_B') then p[2]:copy_(dr.randn(p[2].shape) * 0.1) end
      end
    end)
    hid, pooled = te:forward(g.input_ids)
    assert.is_true(max_abs(hid - g.last_hidden_state) > 1e-3)
    loss_of(g, hid, pooled):backward()
    for _, p in ipairs(te:named_parameters()) do
      if p[1]:find('lora_') then
        assert.is_true(max_abs(p[2].grad) > 0, p[1] .. ' got no gradient')
      else
        assert.is_nil(p[2].grad, p[1] .. ' is frozen but got a gradient')
      end
    end
  end)

  it('refuses unknown targets by name', function()
    local te = tiny('tiny-sd15')
    local ok, err = pcall(te.add_lora, te, { rank = 2, targets = { 'to_q' } })
    assert.is_false(ok)
    assert_contains(err, 'to_q')
  end)
end)

describe('clip_text errors', function()
  local cfg = read(ROOT .. 'tiny-sd15/text_encoder/config.json')

  it('names an unsupported hidden_act', function()
    local ok, err = pcall(dr.Model, 'clip_text', (cfg:gsub('"quick_gelu"', '"mish"')))
    assert.is_false(ok)
    assert_contains(err, "hidden_act 'mish' is not supported")
  end)

  it('names non-zero dropout and other architectures', function()
    local ok, err = pcall(dr.Model, 'clip_text', (cfg:gsub('"attention_dropout": 0.0', '"attention_dropout": 0.1')))
    assert.is_false(ok)
    assert_contains(err, "config key 'attention_dropout' = 0.1 is not supported")
    ok, err = pcall(dr.Model, 'clip_text', (cfg:gsub('"CLIPTextModel"', '"CLIPTextModelWithProjection"')))
    assert.is_false(ok)
    assert_contains(err, "architectures 'CLIPTextModelWithProjection' is not supported")
  end)

  it('names a token id outside the vocabulary, and where it is', function()
    local te = dr.Model('clip_text', cfg)
    local ok, err = pcall(te.forward, te, dr.tensor({ { 3512, 7, 3514, 3513 } }, { dtype = 'int64' }))
    assert.is_false(ok)
    assert_contains(err, 'token id 3514 (input_ids row 1, position 3, 1-based) is out of range for vocab_size 3514')
    ok, err = pcall(te.forward, te, dr.tensor({ { -1 } }, { dtype = 'int64' }))
    assert.is_false(ok)
    assert_contains(err, 'token id -1')
  end)

  it('names a sequence longer than max_position_embeddings', function()
    local te = dr.Model('clip_text', cfg)
    local ok, err = pcall(te.forward, te, dr.zeros(1, 78, { dtype = 'int64' }))
    assert.is_false(ok)
    assert_contains(err, 'input_ids has 78 tokens, more than max_position_embeddings (77)')
  end)

  it('checks the input_ids shape, dtype and skip', function()
    local te = dr.Model('clip_text', cfg)
    local ok, err = pcall(te.forward, te, dr.zeros(77, { dtype = 'int64' }))
    assert.is_false(ok)
    assert_contains(err, 'input_ids must be [B, L]')
    ok, err = pcall(te.forward, te, dr.zeros(1, 77))
    assert.is_false(ok)
    assert_contains(err, 'input_ids must be int64, got float32')
    ok, err = pcall(te.encode_text, te, dr.zeros(1, 77, { dtype = 'int64' }), { skip = 3 })
    assert.is_false(ok)
    assert_contains(err, 'skip (clip_skip) must be in [0, 2]')
  end)
end)

describe('clip_text full size', function()
  local counts = read(ROOT .. 'param_counts.json')
  -- CLIP ViT-L/14's text tower (SD1.5) and OpenCLIP ViT-H/14's (SD2); transformers
  -- counts parameters only (position_ids is a buffer), as num_parameters here.
  for _, name in ipairs { 'sd15', 'sd2-base' } do
    it(name .. ' builds with the parameter count transformers reports', function()
      local te = dr.Model('clip_text', read(ROOT .. 'configs/' .. name .. '/text_encoder/config.json'),
                          { init = false })
      local want = tonumber(counts:match('"' .. name:gsub('%-', '%%-') .. '/text_encoder"%s*:%s*(%d+)'))
      assert.are.equal(want, te:num_parameters())
      te:free()
    end)
  end
end)
