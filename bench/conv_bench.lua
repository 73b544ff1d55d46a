-- conv2d on the CPU: forward, and forward + backward (input, weight and bias
-- gradients), on Stable-Diffusion-like shapes; bench/conv_bench_torch.py times
-- PyTorch on the same shapes. Reports wall-clock ms per call (best and median of
-- the repeats), GFLOP/s from the best, and os.clock's CPU ms, which sums over
-- threads (so it is not the time a call takes).
--
--   build/diffrl run bench/conv_bench.lua [threads] [repeats]
local dr = require 'diffrl'

local now = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/clock.lua')

local threads = tonumber(arg and arg[1]) or dr.get_num_threads()
local repeats = tonumber(arg and arg[2]) or 10
dr.set_num_threads(threads)

-- { name, input [N, C, H, W], weight [O, C/g, kh, kw], padding, stride }
local shapes = {
  { 'resnet 3x3 (level 1)', { 2, 320, 32, 32 }, { 320, 320, 3, 3 }, 1, 1 },
  { 'resnet 3x3 (mid)', { 2, 1280, 8, 8 }, { 1280, 1280, 3, 3 }, 1, 1 },
  { 'conv_in 3x3', { 2, 4, 64, 64 }, { 320, 4, 3, 3 }, 1, 1 },
  { 'downsample 3x3 s2', { 2, 640, 32, 32 }, { 640, 640, 3, 3 }, 1, 2 },
  { 'skip 1x1', { 2, 960, 32, 32 }, { 320, 960, 1, 1 }, 0, 1 },
}

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

-- Best and median wall seconds and mean CPU seconds of f() over `repeats` runs,
-- after one warm-up. The best is the number to compare on a shared machine.
local function time(f)
  f()
  collectgarbage()
  local walls, cpu0 = {}, os.clock()
  for i = 1, repeats do
    local t0 = now()
    f()
    walls[i] = now() - t0
  end
  local cpu = (os.clock() - cpu0) / repeats
  return math.min(unpack(walls)), median(walls), cpu
end

print(('diffrl conv2d, %d threads, %d repeats, float32; ms per call: best / median (cpu: '
  .. 'os.clock, all threads); GF/s from the best'):format(threads, repeats))
print(('%-22s %-14s %-15s %17s %7s %8s %17s %7s %8s'):format('shape', 'input', 'weight',
  'fwd ms', 'cpu', 'GF/s', 'fwd+bwd ms', 'cpu', 'GF/s'))
for _, s in ipairs(shapes) do
  local name, xs, ws, pad, stride = s[1], s[2], s[3], s[4], s[5]
  local x, w, b = dr.randn(xs), dr.randn(ws), dr.randn(ws[1])
  local opts = { padding = pad, stride = stride }
  local y = dr.conv2d(x, w, b, opts)
  local g = dr.randn(y:size())
  local ho, wo = y:size(3), y:size(4)
  local flops = 2 * xs[1] * ws[1] * ho * wo * ws[2] * ws[3] * ws[4]
  local fb, fm, fc = time(function() dr.conv2d(x, w, b, opts) end)
  local bb, bm, bc = time(function()
    dr.conv2d(x, w, b, opts)
    dr.conv2d_backward(g, x, w, opts)
  end)
  print(('%-22s %-14s %-15s %8.2f /%7.2f %7.1f %8.1f %8.2f /%7.2f %7.1f %8.1f'):format(name,
    table.concat(xs, 'x'), table.concat(ws, 'x'), fb * 1e3, fm * 1e3, fc * 1e3,
    flops / fb / 1e9, bb * 1e3, bm * 1e3, bc * 1e3, 3 * flops / bb / 1e9))
end
