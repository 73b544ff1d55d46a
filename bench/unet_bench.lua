-- UNet2DConditionModel forward and forward + backward (all parameters), diffrl
-- (core/models/unet.c) side by side with diffusers on PyTorch CPU
-- (bench/unet_bench_torch.py, run from here) on the same configs, inputs' shapes
-- and threads:
--   tiny   the tiny-sd15 fixture UNet (203k parameters), batch 2, 8x8 latents
--   small  bench/configs/unet_small.json (5.9M parameters, SD2-style), batch 2,
--          16x16 latents
-- both with 77 text tokens. Median wall ms; ratio = torch / diffrl (> 1: diffrl
-- faster); GF/s from PyTorch's FlopCounterMode count of the same computation.
--
--   build/diffrl run bench/unet_bench.lua [threads] [repeats]
local dr = require 'diffrl'
local here = arg[0]:match('^(.*)/[^/]*$') or '.'
local H = dofile(here .. '/harness.lua')

local threads, repeats = H.args(dr, 10)

local function read(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

local root = here .. '/..'
local cases = {
  { 'tiny', read(root .. '/spec/fixtures/models/tiny-sd15/unet/config.json'), 8, 32 },
  { 'small', read(here .. '/configs/unet_small.json'), 16, 128 },
}

local rows, g = {}, dr.Generator(0)
for _, c in ipairs(cases) do
  local name, config, size, cross = unpack(c)
  local u = dr.Model('unet', config, { seed = 1 })
  local x = dr.randn({ 2, 4, size, size }, { generator = g })
  local e = dr.randn({ 2, 77, cross }, { generator = g })
  local w = dr.randn({ 2, 4, size, size }, { generator = g })
  local t = dr.tensor({ 999, 37 })
  rows[#rows + 1] = { name .. ' forward', (H.timed(repeats, function()
    dr.no_grad(function() u:forward(x, t, e):free() end)
  end)) }
  u:requires_grad(true)
  local params = u:parameters()
  rows[#rows + 1] = { name .. ' forward+backward', (H.timed(repeats, function()
    for _, p in ipairs(params) do p.grad = nil end
    local loss = (u:forward(x, t, e) * w):sum()
    loss:backward()
  end)) }
  u:free()
end

local torch = H.run_torch(here .. '/unet_bench_torch.py', threads, repeats)
for _, r in ipairs(rows) do r[3] = torch['flops ' .. r[1]] end
print(('%d thread(s), median of %d'):format(threads, repeats))
H.print_table(rows, torch)
