-- scaled_dot_product_attention on the CPU: forward, and forward + backward through
-- the autograd tape (gradients of q, k and v), on Stable-Diffusion-like shapes;
-- bench/attention_bench_torch.py times PyTorch on the same shapes. Reports wall
-- ms per call (median of the repeats), GFLOP/s from it (forward 4 B H Lq Lk E,
-- forward + backward 3.5 times that, as FlashAttention counts), os.clock's CPU ms
-- (summed over threads), and the peak of live tensor bytes during the call.
--
--   build/diffrl run bench/attention_bench.lua [threads] [repeats]
local dr = require 'diffrl'

local now = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/clock.lua')

local threads = tonumber(arg and arg[1]) or dr.get_num_threads()
local repeats = tonumber(arg and arg[2]) or 5
dr.set_num_threads(threads)

-- { name, q [B, H, Lq, E], k/v [B, H, Lk, E] }
local shapes = {
  { 'self-attn 32x32 latents', { 2, 8, 1024, 64 }, { 2, 8, 1024, 64 } },
  { 'cross-attn 64x64 x text', { 2, 8, 4096, 40 }, { 2, 8, 77, 40 } },
  { 'self-attn 64x64 latents', { 2, 8, 4096, 40 }, { 2, 8, 4096, 40 } },
}

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

local function time(f)
  f()
  collectgarbage()
  local walls, cpu0 = {}, os.clock()
  for i = 1, repeats do
    local t0 = now()
    f()
    walls[i] = now() - t0
  end
  return median(walls), (os.clock() - cpu0) / repeats
end

print(('diffrl scaled_dot_product_attention, %d threads, %d repeats, float32'):format(threads, repeats))
print(('%-24s %-16s %-16s %9s %9s %8s %9s %9s %8s'):format('shape', 'q', 'k, v', 'fwd ms',
  'fwd cpu', 'fwd GF/s', 'f+b ms', 'f+b cpu', 'f+b GF/s'))
for _, s in ipairs(shapes) do
  local name, qs, ks = s[1], s[2], s[3]
  local q, k, v = dr.randn(qs), dr.randn(ks), dr.randn(ks)
  local g = dr.randn(qs)
  local flops = 4 * qs[1] * qs[2] * qs[3] * ks[3] * qs[4]
  -- results are freed at once (as torch's refcounts do), so the allocator reuses
  -- their blocks instead of faulting in fresh pages while the GC waits
  local fwd, fwd_cpu = time(function()
    dr.no_grad(function() dr.scaled_dot_product_attention(q, k, v):free() end)
  end)
  for _, x in ipairs { q, k, v } do x:requires_grad_() end
  local both, both_cpu = time(function()
    for _, x in ipairs { q, k, v } do
      if x.grad then x.grad:free() end
      x.grad = nil
    end
    local out = dr.scaled_dot_product_attention(q, k, v)
    out:backward(g)
    out:free()
  end)
  print(('%-24s %-16s %-16s %9.2f %9.2f %8.1f %9.2f %9.2f %8.1f'):format(name,
    table.concat(qs, 'x'), table.concat(ks, 'x'), fwd * 1e3, fwd_cpu * 1e3, flops / fwd / 1e9,
    both * 1e3, both_cpu * 1e3, 3.5 * flops / both / 1e9))
end
