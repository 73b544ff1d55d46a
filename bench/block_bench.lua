-- GEMMs and a small UNet-like block (conv3x3 + group_norm + silu + single-head
-- self-attention with q/k/v/out projections + residual, 2 x 64 x 32 x 32),
-- forward and forward+backward through the tape, side by side with PyTorch CPU
-- on the same shapes and threads (bench/block_bench_torch.py, run from here).
-- Median wall ms; ratio = torch / diffrl (> 1: diffrl faster); GEMM GFLOP/s.
--
--   build/diffrl run bench/block_bench.lua [threads] [repeats]
local dr = require 'diffrl'

local now = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/clock.lua')

local threads = tonumber(arg[1]) or dr.get_num_threads()
local repeats = tonumber(arg[2]) or 10
dr.set_num_threads(threads)

local function timed(f)
  f()
  local walls = {}
  for i = 1, repeats do
    collectgarbage()
    local t0 = now()
    f()
    walls[i] = now() - t0
  end
  table.sort(walls)
  return walls[math.floor((#walls + 1) / 2)]
end

local g = dr.Generator(0)
local function randn(...) return dr.randn({ ... }, { generator = g }) end
local results, order, flops = {}, {}, {}
local function record(name, secs, gemm_flops)
  results[name], flops[name] = secs, gemm_flops
  order[#order + 1] = name
end

for _, c in ipairs {
  { 'matmul 4096x320 @ 320x1280', 4096, 320, 1280, 0 },
  { 'matmul 77x1024 @ 1024x1024', 77, 1024, 1024, 0 },
  { 'bmm 16 x (1024x64 @ 64x1024)', 1024, 64, 1024, 16 },
} do
  local name, m, k, n, batch = unpack(c)
  local a = batch > 0 and randn(batch, m, k) or randn(m, k)
  local b = batch > 0 and randn(batch, k, n) or randn(k, n)
  record(name, timed(function() a:matmul(b):free() end), 2 * m * n * k * math.max(batch, 1))
end

local C, H = 64, 32
local x = randn(2, C, H, H)
local p = {
  w = randn(C, C, 3, 3) * 0.05, b = dr.zeros(C), gw = dr.ones(C), gb = dr.zeros(C),
  wq = randn(C, C) * 0.1, wk = randn(C, C) * 0.1, wv = randn(C, C) * 0.1, wo = randn(C, C) * 0.1,
}
local params = {}
for _, k in ipairs { 'w', 'b', 'gw', 'gb', 'wq', 'wk', 'wv', 'wo' } do
  p[k]:requires_grad_()
  params[#params + 1] = p[k]
end

local function block()
  local h = dr.group_norm(dr.conv2d(x, p.w, p.b, { padding = 1 }), 32, p.gw, p.gb, 1e-5):silu()
  local t = h:flatten(3):transpose(2, 3) -- [2, 1024, C]
  local a = dr.scaled_dot_product_attention(dr.linear(t, p.wq), dr.linear(t, p.wk),
                                            dr.linear(t, p.wv))
  local o = dr.linear(a, p.wo):transpose(2, 3):reshape(2, C, H, H) + h
  return (o * o):mean()
end
record('block forward', timed(function() dr.no_grad(block) end))
record('block forward+backward', timed(function()
  for _, q in ipairs(params) do q.grad = nil end
  block():backward()
end))

local here = arg[0]:match('^(.*)/[^/]*$') or '.'
local pipe = io.popen(('python3 %s/block_bench_torch.py %d %d 2>&1'):format(here, threads, repeats))
local text = pipe:read('*a')
pipe:close()
local ok, cjson = pcall(require, 'cjson')
local torch_ok, torch = pcall(function() return cjson.decode(text:match('{.*}')) end)
if not (ok and torch_ok) then torch = {}; print('PyTorch comparison unavailable: ' .. text:sub(1, 200)) end

print(('%d thread(s), median of %d'):format(threads, repeats))
print(('| %-32s | %10s | %10s | %7s | %12s |'):format('case', 'diffrl ms', 'torch ms', 'ratio', 'diffrl GF/s'))
print('|' .. ('-'):rep(34) .. '|' .. ('-'):rep(12) .. '|' .. ('-'):rep(12) .. '|' .. ('-'):rep(9) .. '|' .. ('-'):rep(14) .. '|')
for _, name in ipairs(order) do
  local d, t = results[name], torch[name]
  print(('| %-32s | %10.2f | %10s | %7s | %12s |'):format(name, d * 1e3,
    t and ('%.2f'):format(t * 1e3) or '-', t and ('%.2f'):format(t / d) or '-',
    flops[name] and ('%.1f'):format(flops[name] / d / 1e9) or ''))
end
