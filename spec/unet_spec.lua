-- UNet2DConditionModel (core/models/unet.c) against diffusers 0.42.1 itself: the
-- tiny SD1.5-style and SD2-style pipelines of spec/fixtures/models (made by
-- tools/fixtures/make_model_fixtures.py with the real classes, random init) with
-- their golden outputs and parameter gradients; gradient checkpointing; LoRA;
-- the loader's reports; the full-size configs' parameter counts.
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

local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute('mkdir -p ' .. p))
  return p
end

local function loss_and_grads(u, g, opts)
  u:requires_grad(true, opts)
  for _, p in ipairs(u:parameters()) do p.grad = nil end
  local s = g.sample:clone():requires_grad_()
  local e = g.encoder_hidden_states:clone():requires_grad_()
  local loss = (u:forward(s, g.timestep, e) * g.loss_weight):sum()
  loss:backward()
  return s, e
end

describe('#golden unet', function()
  for _, name in ipairs { 'tiny-sd15', 'tiny-sd2' } do
    describe(name, function()
      local dir = ROOT .. name
      local g = dr.load(dir .. '/golden/unet.safetensors')
      local u = dr.load_model(dir .. '/unet')

      it('has the parameters diffusers has', function()
        local counts = read(ROOT .. 'param_counts.json')
        local want = tonumber(counts:match('"' .. name:gsub('%-', '%%-') .. '"%s*:%s*{[^}]-"unet"%s*:%s*(%d+)'))
        assert.are.equal(want, u:num_parameters())
      end)

      it('predicts the noise diffusers predicts (max abs error <= 1e-4)', function()
        local out = dr.no_grad(function() return u:forward(g.sample, g.timestep, g.encoder_hidden_states) end)
        assert.are.same(g.out.shape, out.shape)
        assert.is_true(max_abs(out - g.out) <= 1e-4, 'max abs error ' .. max_abs(out - g.out))
      end)

      it('gives every parameter the gradient diffusers gives (relative error <= 1e-3)', function()
        local s, e = loss_and_grads(u, g)
        local n = 0
        for _, p in ipairs(u:named_parameters()) do
          local ref = g['grad.' .. p[1]]
          assert.is_not_nil(ref, 'golden has no gradient for ' .. p[1])
          local err = rel_err(p[2].grad, ref)
          assert.is_true(err <= 1e-3, p[1] .. ': relative error ' .. err)
          n = n + 1
        end
        assert.is_true(n > 100)
        assert.is_true(rel_err(s.grad, g['grad.sample']) <= 1e-3)
        assert.is_true(rel_err(e.grad, g['grad.encoder_hidden_states']) <= 1e-3)
      end)

      it('gives the same gradients with gradient checkpointing', function()
        u:set_checkpointing(true)
        local s = loss_and_grads(u, g)
        u:set_checkpointing(false)
        for _, p in ipairs(u:named_parameters()) do
          local err = rel_err(p[2].grad, g['grad.' .. p[1]])
          assert.is_true(err <= 1e-3, p[1] .. ': relative error ' .. err)
        end
        assert.is_true(rel_err(s.grad, g['grad.sample']) <= 1e-3)
      end)

      it('accepts a number, a 0-d or a [B] timestep alike', function()
        local t = g.timestep
        dr.no_grad(function()
          local a = u:forward(g.sample:narrow(1, 2, 1), 37, g.encoder_hidden_states:narrow(1, 2, 1))
          local b = u:forward(g.sample:narrow(1, 2, 1), t:narrow(1, 2, 1), g.encoder_hidden_states:narrow(1, 2, 1))
          assert.are.equal(0, max_abs(a - b))
          assert.is_true(max_abs(a - g.out:narrow(1, 2, 1)) <= 1e-4)
        end)
      end)
    end)
  end
end)

describe('unet LoRA', function()
  local dir = ROOT .. 'tiny-sd15'
  local g = dr.load(dir .. '/golden/unet.safetensors')

  it('starts as the base model, trains only the adapters, and changes the output', function()
    local u = dr.load_model(dir .. '/unet')
    local n = u:add_lora { rank = 2, alpha = 4 }
    assert.are.equal(4 * 2 * 4, n) -- to_q/k/v/out.0 of attn1 and attn2 in 4 transformer blocks
    local adapters = u:named_parameters { adapters_only = true }
    assert.are.equal(2 * n, #adapters)
    assert.is_truthy(adapters[1][1]:find('%.lora_A%.weight$'))
    local out = dr.no_grad(function() return u:forward(g.sample, g.timestep, g.encoder_hidden_states) end)
    assert.is_true(max_abs(out - g.out) <= 1e-4)

    local loss = (u:forward(g.sample, g.timestep, g.encoder_hidden_states) * g.loss_weight):sum()
    loss:backward()
    for _, p in ipairs(u:named_parameters()) do
      local is_adapter = p[1]:find('lora_') ~= nil
      if is_adapter and p[1]:find('lora_B') then
        assert.is_true(max_abs(p[2].grad) > 0, p[1] .. ' got no gradient')
      elseif not is_adapter then
        assert.is_nil(p[2].grad, p[1] .. ' is frozen but got a gradient')
      end
    end
    dr.no_grad(function()
      for _, p in ipairs(adapters) do
        if p[1]:find('lora_B') then p[2]:copy_(dr.randn(p[2].shape) * 0.1) end
      end
    end)
    local changed = dr.no_grad(function() return u:forward(g.sample, g.timestep, g.encoder_hidden_states) end)
    assert.is_true(max_abs(changed - g.out) > 1e-3)
  end)

  it('gives the adapters the same gradients with gradient checkpointing (base frozen)', function()
    local function adapter_grads(ckpt)
      local u = dr.load_model(dir .. '/unet')
      u:add_lora { rank = 2, seed = 4 }
      dr.no_grad(function()
        for _, p in ipairs(u:named_parameters { adapters_only = true }) do
          if p[1]:find('lora_B') then p[2]:copy_(dr.randn(p[2].shape, { generator = dr.Generator(9) }) * 0.1) end
        end
      end)
      u:set_checkpointing(ckpt)
      local loss = (u:forward(g.sample, g.timestep, g.encoder_hidden_states) * g.loss_weight):sum()
      loss:backward()
      local out = {}
      for _, p in ipairs(u:named_parameters { adapters_only = true }) do out[p[1]] = p[2].grad end
      return out
    end
    local plain, ckpt = adapter_grads(false), adapter_grads(true)
    local n = 0
    for name, grad in pairs(plain) do
      assert.is_not_nil(ckpt[name], name .. ' got no gradient with checkpointing')
      assert.is_true(max_abs(ckpt[name] - grad) <= 1e-6 * math.max(max_abs(grad), 1), name)
      n = n + 1
    end
    assert.are.equal(64, n)
  end)

  it('refuses unknown targets by name', function()
    local u = dr.load_model(dir .. '/unet')
    local ok, err = pcall(u.add_lora, u, { rank = 2, targets = { 'to_qq' } })
    assert.is_false(ok)
    assert.is_truthy(err:find('to_qq', 1, true))
  end)
end)

describe('unet loading', function()
  local dir = ROOT .. 'tiny-sd15/unet'

  it('loads the fp16 variant to within half precision', function()
    local g = dr.load(ROOT .. 'tiny-sd15/golden/unet.safetensors')
    local u = dr.load_model(dir, { variant = 'fp16' })
    local out = dr.no_grad(function() return u:forward(g.sample, g.timestep, g.encoder_hidden_states) end)
    assert.is_true(max_abs(out - g.out) < 0.05)
  end)

  it('names missing, unexpected and wrong-shape keys', function()
    local tensors = dr.load(dir .. '/diffusion_pytorch_model.safetensors')
    tensors['conv_in.weight'] = nil
    tensors['conv_out.bias'] = dr.zeros(5)
    tensors['extra.weight'] = dr.zeros(1)
    local tmp = temp_dir()
    dr.save(tmp .. '/diffusion_pytorch_model.safetensors', tensors)
    os.execute(('cp %s/config.json %s/'):format(dir, tmp))
    local ok, err = pcall(dr.load_model, tmp)
    os.execute('rm -rf ' .. tmp)
    assert.is_false(ok)
    assert.is_truthy(err:find('1 missing key (conv_in.weight)', 1, true), err)
    assert.is_truthy(err:find('1 unexpected key (extra.weight)', 1, true), err)
    assert.is_truthy(err:find('conv_out.bias: file [5], model [4]', 1, true), err)
  end)

  it('loads weights sharded over several files by their index', function()
    local tensors = dr.load(dir .. '/diffusion_pytorch_model.safetensors')
    local a, b, map = {}, {}, {}
    local i = 0
    for name, t in pairs(tensors) do
      i = i + 1
      local shard = i % 2 == 0 and 'diffusion_pytorch_model-00001-of-00002.safetensors'
                                 or 'diffusion_pytorch_model-00002-of-00002.safetensors'
      if i % 2 == 0 then a[name] = t else b[name] = t end
      map[#map + 1] = ('"%s": "%s"'):format(name, shard)
    end
    local tmp = temp_dir()
    dr.save(tmp .. '/diffusion_pytorch_model-00001-of-00002.safetensors', a)
    dr.save(tmp .. '/diffusion_pytorch_model-00002-of-00002.safetensors', b)
    local f = assert(io.open(tmp .. '/diffusion_pytorch_model.safetensors.index.json', 'w'))
    f:write('{"metadata": {}, "weight_map": {' .. table.concat(map, ', ') .. '}}')
    f:close()
    os.execute(('cp %s/config.json %s/'):format(dir, tmp))
    local u = dr.load_model(tmp)
    os.execute('rm -rf ' .. tmp)
    local g = dr.load(ROOT .. 'tiny-sd15/golden/unet.safetensors')
    local out = dr.no_grad(function() return u:forward(g.sample, g.timestep, g.encoder_hidden_states) end)
    assert.is_true(max_abs(out - g.out) <= 1e-4)
  end)

  it('explains how to convert a folder with only .bin weights', function()
    local ok, err = pcall(dr.load_model, ROOT .. 'bin-only/unet')
    assert.is_false(ok)
    assert.is_truthy(err:find('convert_to_safetensors.py', 1, true), err)
  end)

  it('rejects config options it does not implement, by key', function()
    local cfg = read(dir .. '/config.json'):gsub('"class_embed_type": null', '"class_embed_type": "timestep"')
    local ok, err = pcall(dr.Model, 'unet', cfg)
    assert.is_false(ok)
    assert.is_truthy(err:find("config key 'class_embed_type'", 1, true), err)
    ok, err = pcall(dr.Model, 'unet', '{"down_block_types": ["CrossAttnDownBlock2D"], "up_block_types": ["Nope"], "block_out_channels": [32]}')
    assert.is_false(ok)
    assert.is_truthy(err:find("'Nope' is not supported", 1, true), err)
  end)

  it('checks input shapes', function()
    local u = dr.load_model(dir)
    local ok, err = pcall(u.forward, u, dr.zeros(1, 3, 8, 8), 1, dr.zeros(1, 77, 32))
    assert.is_false(ok)
    assert.is_truthy(err:find('sample must be [B, 4, H, W]', 1, true), err)
    ok, err = pcall(u.forward, u, dr.zeros(1, 4, 8, 8), 1, dr.zeros(1, 77, 24))
    assert.is_false(ok)
    assert.is_truthy(err:find('cross_attention_dim', 1, true), err)
  end)
end)

describe('unet full size', function()
  local counts = read(ROOT .. 'param_counts.json')
  for _, name in ipairs { 'sd15', 'sd2-base' } do
    it(name .. ' builds with the parameter count diffusers reports', function()
      local u = dr.Model('unet', read(ROOT .. 'configs/' .. name .. '/unet/config.json'), { init = false })
      local want = tonumber(counts:match('"' .. name:gsub('%-', '%%-') .. '/unet"%s*:%s*(%d+)'))
      assert.are.equal(want, u:num_parameters())
      u:free()
    end)
  end

  it('#slow sd2-base runs a forward at 32x32 latents', function()
    if dr.build_info().sanitize ~= 'none' then
      pending('skipped under sanitizers (3.5 GB of parameters)')
      return
    end
    local u = dr.Model('unet', read(ROOT .. 'configs/sd2-base/unet/config.json'), { seed = 1 })
    local out = dr.no_grad(function() return u:forward(dr.randn(1, 4, 32, 32), 500, dr.randn(1, 77, 1024)) end)
    assert.are.same({ 1, 4, 32, 32 }, { out:size(1), out:size(2), out:size(3), out:size(4) })
    assert.is_true(max_abs(out) > 0 and max_abs(out) < 100)
    u:free()
  end)
end)
