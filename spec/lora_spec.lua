-- LoRA files as diffusers writes and reads them (pytorch_lora_weights.safetensors,
-- peft key names with a unet. prefix): a LoRA made and saved by diffusers + peft
-- (tools/fixtures/make_lora_fixture.py) loads into diffrl and gives diffusers'
-- output; what diffrl saves it loads back unchanged. (The other direction,
-- diffusers loading diffrl's file, is checked by that script's --check-diffrl.)
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local ROOT = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/models/'

local function max_abs(t) return t:abs():max():item() end

describe('#golden LoRA files', function()
  local g = dr.load(ROOT .. 'tiny-sd15/golden/unet.safetensors')
  local function unet_out(pipe)
    return dr.no_grad(function() return pipe.unet:forward(g.sample, g.timestep, g.encoder_hidden_states) end)
  end

  it("loads diffusers' LoRA and computes diffusers' output", function()
    local pipe = dr.pipeline.load(ROOT .. 'tiny-sd15')
    pipe:load_lora_weights(ROOT .. 'tiny-sd15-lora')
    local want = dr.load(ROOT .. 'tiny-sd15-lora/golden.safetensors').out
    assert.is_true(max_abs(unet_out(pipe) - want) <= 1e-4, 'error ' .. max_abs(unet_out(pipe) - want))
    assert.is_true(max_abs(want - g.out) > 0.1) -- the LoRA matters
  end)

  it('saves what it loads back, with alpha / rank folded in', function()
    local pipe = dr.pipeline.load(ROOT .. 'tiny-sd15')
    pipe.unet:add_lora { rank = 2, alpha = 8 }
    dr.no_grad(function()
      for _, p in ipairs(pipe.unet:named_parameters { adapters_only = true }) do
        if p[1]:find('lora_B') then p[2]:copy_(dr.randn(p[2].shape) * 0.1) end
      end
    end)
    local before = unet_out(pipe)
    local dir = os.tmpname()
    os.remove(dir)
    local path = pipe:save_lora_weights(dir)
    local keys = dr.safetensors_open(path):keys()
    assert.is_truthy(keys[1]:find('^unet%.down_blocks%.0%.attentions%.0%.transformer_blocks%.0%.attn1%.to_'))
    local fresh = dr.pipeline.load(ROOT .. 'tiny-sd15')
    fresh:load_lora_weights(dir)
    os.execute('rm -rf ' .. dir)
    assert.is_true(max_abs(unet_out(fresh) - before) <= 1e-5)
  end)

  it('names what is wrong with a LoRA file', function()
    local pipe = dr.pipeline.load(ROOT .. 'tiny-sd15')
    local path = os.tmpname() .. '.safetensors'
    dr.save(path, { ['unet.nowhere.to_q.lora_A.weight'] = dr.zeros(2, 32), ['unet.nowhere.to_q.lora_B.weight'] = dr.zeros(32, 2) })
    local err = h.error_of(pipe.load_lora_weights, pipe, path)
    assert.is_truthy(err:find('nowhere.to_q', 1, true), err)
    dr.save(path, { ['vae.x'] = dr.zeros(1) })
    err = h.error_of(pipe.load_lora_weights, pipe, path)
    assert.is_truthy(err:find('no unet. or text_encoder. LoRA keys', 1, true), err)
    os.remove(path)
  end)
end)
