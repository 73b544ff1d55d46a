-- The full-size SD2-base UNet2DConditionModel (865M parameters, random init) on the
-- CUDA backend, side by side with diffusers' own class on PyTorch eager on the same
-- GPU (bench/gpu_unet_torch.py, run from here): forward and forward + backward
-- through every parameter, batch B of 64x64 latents (512 px) with 77 text tokens,
-- float32 (TF32 off on both sides; diffrl has no bf16 path yet).
--   diffrl run bench/gpu_unet.lua [batch] [repeats]
-- GF/s counts the forward as diffusers' FlopCounterMode does (from the torch side)
-- and the backward as twice the forward.
local dr = require 'diffrl'
local here = arg[0]:match('^(.*)/[^/]*$') or '.'
local H = dofile(here .. '/harness.lua')
local batch, repeats = tonumber(arg[1]) or 8, tonumber(arg[2]) or 5
local peak = tonumber(os.getenv('DIFFRL_F32_PEAK_TFLOPS') or '67') * 1e3

local f = assert(io.open(here .. '/../spec/fixtures/models/configs/sd2-base/unet/config.json', 'rb'))
local config = f:read('*a')
f:close()
local u = dr.Model('unet', config, { seed = 1 }):cuda()
local g = dr.Generator(0)
local x = dr.randn({ batch, 4, 64, 64 }, { generator = g }):cuda()
local e = dr.randn({ batch, 77, 1024 }, { generator = g }):cuda()
local t = dr.full({ batch }, 500):cuda()
local function timed(fn)
  return H.timed(repeats, function()
    fn()
    dr.cuda.synchronize()
  end)
end
local fwd = timed(function() dr.no_grad(function() u:forward(x, t, e):free() end) end)
u:requires_grad(true)
local ones = dr.ones({ batch, 4, 64, 64 }, { device = 'cuda' })
local fb = timed(function()
  u:forward(x, t, e):backward(ones)
  for _, p in ipairs(u:parameters()) do p.grad = nil end
end)
local peak_mib = dr.cuda.memory_stats().peak_allocated / 2 ^ 20

local torch = H.run_torch(here .. '/gpu_unet_torch.py', batch, repeats)
local flops = torch.forward_flops
print(('SD2-base UNet, batch %d, 64x64 latents, f32, %d repeats, median ms'):format(batch, repeats))
H.print_table({ { 'forward', fwd, flops }, { 'forward+backward', fb, flops and 3 * flops } }, torch, peak)
print(('peak memory: diffrl %.0f MiB (caching allocator), torch %s MiB (max_memory_allocated)')
  :format(peak_mib, torch.peak_mib and ('%.0f'):format(torch.peak_mib) or '-'))
