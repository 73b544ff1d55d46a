-- conv2d on the CPU: forward, and forward + backward (input, weight and bias
-- gradients), on Stable-Diffusion-like shapes; bench/conv_bench_torch.py times
-- PyTorch on the same shapes. Reports wall-clock ms per call (median of the
-- repeats), GFLOP/s from it, and os.clock's CPU ms, which sums over threads.
--
--   build/diffrl run bench/conv_bench.lua [threads] [repeats]
local dr = require 'diffrl'
local ffi = require 'ffi'

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } dr_bench_timespec;
int clock_gettime(int clk_id, dr_bench_timespec *tp);
]])
local ts = ffi.new('dr_bench_timespec')
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = tonumber(arg and arg[1]) or dr.get_num_threads()
local repeats = tonumber(arg and arg[2]) or 10
dr.set_num_threads(threads)

-- { name, input [N, C, H, W], weight [O, C/g, kh, kw], padding, stride }
local shapes = {
  { 'SD down/up block 3x3', { 2, 320, 32, 32 }, { 320, 320, 3, 3 }, 1, 1 },
  { 'SD mid block 3x3', { 2, 1280, 8, 8 }, { 1280, 1280, 3, 3 }, 1, 1 },
  { 'SD conv_in 3x3', { 2, 4, 64, 64 }, { 320, 4, 3, 3 }, 1, 1 },
  { 'SD downsample 3x3 s2', { 2, 640, 32, 32 }, { 640, 640, 3, 3 }, 1, 2 },
  { 'SD skip 1x1', { 2, 960, 32, 32 }, { 320, 960, 1, 1 }, 0, 1 },
}

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

-- Median wall seconds and mean CPU seconds of f() over `repeats` runs, after one warm-up.
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

print(('diffrl conv2d, %d threads, %d repeats, float32'):format(threads, repeats))
print(('%-24s %-20s %-20s %10s %10s %9s %10s %10s %9s'):format('shape', 'input', 'weight',
  'fwd ms', 'fwd cpu', 'fwd GF/s', 'f+b ms', 'f+b cpu', 'f+b GF/s'))
for _, s in ipairs(shapes) do
  local name, xs, ws, pad, stride = s[1], s[2], s[3], s[4], s[5]
  local x, w, b = dr.randn(xs), dr.randn(ws), dr.randn(ws[1])
  local opts = { padding = pad, stride = stride }
  local y = dr.conv2d(x, w, b, opts)
  local g = dr.randn(y:size())
  local ho, wo = y:size(3), y:size(4)
  local flops = 2 * xs[1] * ws[1] * ho * wo * ws[2] * ws[3] * ws[4]
  local fwd, fwd_cpu = time(function() dr.conv2d(x, w, b, opts) end)
  local both, both_cpu = time(function()
    dr.conv2d(x, w, b, opts)
    dr.conv2d_backward(g, x, w, opts)
  end)
  print(('%-24s %-20s %-20s %10.2f %10.2f %9.1f %10.2f %10.2f %9.1f'):format(name,
    table.concat(xs, 'x'), table.concat(ws, 'x'), fwd * 1e3, fwd_cpu * 1e3, flops / fwd / 1e9,
    both * 1e3, both_cpu * 1e3, 3 * flops / both / 1e9))
end
