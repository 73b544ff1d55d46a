-- The models on the CUDA backend: the tiny diffusers / transformers fixtures of
-- spec/fixtures/models (random init, saved by the real libraries) moved with
-- m:cuda() give diffusers' golden outputs, and the same parameter gradients as on
-- the cpu.
local dr = require 'diffrl'
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')
local ROOT = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/models/'

local function max_abs(t) return t:abs():max():item() end

-- Every parameter gradient of `cpu_model` and `cuda_model` agrees (relative to the
-- largest cpu gradient of that parameter).
local function same_grads(cpu_model, cuda_model, tol)
  local cuda_params = {}
  for _, p in ipairs(cuda_model:named_parameters()) do cuda_params[p[1]] = p[2] end
  local n = 0
  for _, p in ipairs(cpu_model:named_parameters()) do
    local name, gc = p[1], p[2].grad
    local gg = cuda_params[name].grad
    assert((gc == nil) == (gg == nil), name .. ': gradient on one device only')
    if gc then
      local err = max_abs(gc - gg:cpu()) / math.max(max_abs(gc), 1e-6)
      assert(err <= tol, ('%s: relative gradient error %.3g'):format(name, err))
      n = n + 1
    end
  end
  assert.is_true(n > 0)
end

describe('cuda models #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  for _, name in ipairs { 'tiny-sd15', 'tiny-sd2' } do
    local dir = ROOT .. name

    it(name .. ' unet: golden output and cpu gradients on cuda', function()
      local g = dr.load(dir .. '/golden/unet.safetensors')
      local cpu = dr.load_model(dir .. '/unet')
      local gpu = dr.load_model(dir .. '/unet'):cuda()
      assert.equal('cuda:0', gpu:parameters()[1].device)
      local out = dr.no_grad(function()
        return gpu:forward(g.sample:cuda(), g.timestep, g.encoder_hidden_states:cuda())
      end)
      assert.equal('cuda:0', out.device)
      assert.is_true(max_abs(out:cpu() - g.out) <= 1e-4, 'max abs error ' .. max_abs(out:cpu() - g.out))
      for _, m in ipairs { cpu, gpu } do
        m:requires_grad(true)
        local dev = m == gpu and 'cuda' or 'cpu'
        local loss = (m:forward(g.sample:to(dev), g.timestep, g.encoder_hidden_states:to(dev)) *
                      g.loss_weight:to(dev)):sum()
        loss:backward()
      end
      same_grads(cpu, gpu, 1e-3)
    end)

    it(name .. ' vae: golden encode and decode on cuda', function()
      local g = dr.load(dir .. '/golden/vae.safetensors')
      local m = dr.load_model(dir .. '/vae'):cuda()
      local mean, logvar = dr.no_grad(function() return m:encode(g.x:cuda()) end)
      assert.is_true(max_abs(mean:cpu() - g.posterior_mean) <= 1e-4, "mean: " .. max_abs(mean:cpu() - g.posterior_mean))
      assert.is_true(max_abs(logvar:cpu() - g.posterior_logvar) <= 1e-4, "logvar: " .. max_abs(logvar:cpu() - g.posterior_logvar))
      local dec = dr.no_grad(function() return m:decode(g.z:cuda()) end)
      assert.is_true(max_abs(dec:cpu() - g.decoded) <= 1e-4, 'decoded: ' .. max_abs(dec:cpu() - g.decoded))
    end)

    it(name .. ' text encoder: golden hidden states on cuda', function()
      local g = dr.load(dir .. '/golden/text_encoder.safetensors')
      local te = dr.load_model(dir .. '/text_encoder'):cuda()
      local cpu = dr.load_model(dir .. '/text_encoder')
      local hid, pooled = dr.no_grad(function() return te:forward(g.input_ids:cuda()) end)
      local hid_c, pooled_c = dr.no_grad(function() return cpu:forward(g.input_ids) end)
      P.close(hid_c, hid, 1e-5, 1e-4, 'hidden states')
      P.close(pooled_c, pooled, 1e-5, 1e-4, 'pooled')
    end)
  end

  it('moves a model back to the cpu', function()
    local m = dr.load_model(ROOT .. 'tiny-sd15/unet')
    local before = m:parameters()[1]:clone()
    m:cuda():cpu()
    assert.equal('cpu', m:parameters()[1].device)
    assert.equal(0, max_abs(m:parameters()[1] - before))
  end)
end)
