-- The CUDA backend's f32 kernels on SD-sized shapes, side by side with PyTorch
-- (eager, f32, TF32 off in both, since diffrl's f32 path is full FP32) on the same
-- GPU, in one command:
--   diffrl run bench/gpu_ops.lua [repeats]
-- Forward and forward + backward through the tape; each timed call ends with a
-- device synchronize. GF/s is against the card's f32 (non-tensor-core) peak, given
-- by DIFFRL_F32_PEAK_TFLOPS (H100/H200 SXM: 67).
local dr = require 'diffrl'
local H = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/harness.lua')
local repeats = tonumber(arg[1]) or 10
local peak = tonumber(os.getenv('DIFFRL_F32_PEAK_TFLOPS') or '67') * 1e3
local g = dr.Generator(0)
local function randn(shape, grad)
  local t = dr.randn(shape, { generator = g }):cuda()
  if grad then t:requires_grad(true) end
  return t
end
local function timed(f)
  return H.timed(repeats, function()
    f()
    dr.cuda.synchronize()
  end)
end
local function fwd_bwd(f, inputs)
  return timed(function()
    local y = f()
    y:backward(dr.ones(y.shape, { device = 'cuda' }))
    for _, t in ipairs(inputs) do t.grad = nil end
  end)
end

local rows = {}
local function add(name, secs, flops) rows[#rows + 1] = { name, secs, flops } end

do -- matmul 4096^3
  local a, b = randn({ 4096, 4096 }), randn({ 4096, 4096 })
  add('matmul 4096x4096x4096', timed(function() a:matmul(b) end), 2 * 4096 ^ 3)
end
do -- SD 64x64 level conv, batch 8 (320 -> 320, 3x3)
  local x, w, bias = randn({ 8, 320, 64, 64 }, true), randn({ 320, 320, 3, 3 }, true), randn({ 320 }, true)
  local opts = { padding = { 1, 1 } }
  local flops = 2 * 8 * 320 * 64 * 64 * 320 * 9
  add('conv2d 8x320x64x64 3x3 fwd', timed(function() dr.no_grad(function() dr.conv2d(x, w, bias, opts) end) end), flops)
  add('conv2d 8x320x64x64 3x3 fwd+bwd', fwd_bwd(function() return dr.conv2d(x, w, bias, opts) end, { x, w, bias }), 3 * flops)
end
do -- group norm, 32 groups
  local x, w, b = randn({ 8, 320, 64, 64 }, true), randn({ 320 }, true), randn({ 320 }, true)
  add('group_norm 8x320x64x64 fwd', timed(function() dr.no_grad(function() dr.group_norm(x, 32, w, b, 1e-5) end) end))
  add('group_norm 8x320x64x64 fwd+bwd', fwd_bwd(function() return dr.group_norm(x, 32, w, b, 1e-5) end, { x, w, b }))
end
do -- self-attention at SD's 64x64 level: 8 images x 5 heads, 4096 tokens, head dim 64
  local q, k, v = randn({ 8, 5, 4096, 64 }, true), randn({ 8, 5, 4096, 64 }, true), randn({ 8, 5, 4096, 64 }, true)
  local flops = 4 * 8 * 5 * 4096 * 4096 * 64
  add('attention 8x5x4096x64 fwd', timed(function()
    dr.no_grad(function() dr.scaled_dot_product_attention(q, k, v) end)
  end), flops)
  add('attention 8x5x4096x64 fwd+bwd', fwd_bwd(function() return dr.scaled_dot_product_attention(q, k, v) end,
    { q, k, v }), 3.5 * flops)
end
do -- a bandwidth-bound elementwise op
  local a, b = randn({ 64, 1024, 1024 }), randn({ 64, 1024, 1024 })
  add('add 64M f32', timed(function() local _ = a + b end))
end

local torch = H.run_torch((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/gpu_ops_torch.py', 0, repeats)
print(('diffrl CUDA f32 ops, %d repeats, median ms; ratio = torch / diffrl; GF/s of a %.0f TF/s f32 peak')
  :format(repeats, peak / 1e3))
H.print_table(rows, torch, peak)
print('peak memory (allocator): ' .. ('%.0f MiB'):format(dr.cuda.memory_stats().peak_allocated / 2 ^ 20))
