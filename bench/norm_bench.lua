-- Normalization, softmax and unary math on the CPU, forward and explicit backward,
-- on Stable-Diffusion shapes; bench/norm_bench_torch.py times PyTorch on the same
-- shapes. Reports the median and the fastest wall-clock ms per call (on a shared
-- machine the fastest is the steadier figure) and GB/s of nominal traffic from the
-- fastest (forward: read x, write y; backward: read grad_out and x (or y), write
-- grad_x; float32, 4 bytes an element).
--
--   build/diffrl run bench/norm_bench.lua [threads] [repeats]
local dr = require 'diffrl'
local ffi = require 'ffi'
local C = require('diffrl.core.ffi').C

local now = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/clock.lua')

local threads = tonumber(arg and arg[1]) or dr.get_num_threads()
local repeats = tonumber(arg and arg[2]) or 20
dr.set_num_threads(threads)

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

-- Median and fastest wall seconds of f() over `repeats` runs, after one warm-up.
local function time(f)
  f()
  collectgarbage()
  local walls = {}
  for i = 1, repeats do
    local t0 = now()
    f()
    walls[i] = now() - t0
  end
  return { median(walls), math.min(unpack(walls)) }
end

-- Results of the C backward calls land here and are released at once.
local box = ffi.new('dr_tensor*[3]')
local function release_box()
  for i = 0, 2 do
    if box[i] ~= nil then C.dr_tensor_release(box[i]) end
    box[i] = nil
  end
end
local function check(status)
  if status ~= 0 then error(ffi.string(C.dr_last_error())) end
end

local cases = {}

cases[#cases + 1] = function()
  local shape = { 2, 320, 64, 64 }
  local x, g, w, b = dr.randn(shape), dr.randn(shape), dr.randn(320), dr.randn(320)
  local _, mean, rstd = dr.native_group_norm(x, 32, w, b, 1e-5)
  local fwd = time(function() dr.group_norm(x, 32, w, b, 1e-5):free() end)
  local bwd = time(function()
    check(C.dr_group_norm_backward(g.ptr, x.ptr, mean.ptr, rstd.ptr, w.ptr, 32, box, box + 1,
                                   box + 2))
    release_box()
  end)
  return 'group_norm G=32 (+w, b)', shape, x:numel(), fwd, bwd
end

cases[#cases + 1] = function()
  local shape = { 16, 4096, 77 }
  local x, g = dr.randn(shape), dr.randn(shape)
  local y = dr.softmax(x, -1)
  local fwd = time(function() dr.softmax(x, -1):free() end)
  local bwd = time(function()
    check(C.dr_softmax_backward(g.ptr, y.ptr, -1, box))
    release_box()
  end)
  return 'softmax dim=-1', shape, x:numel(), fwd, bwd
end

cases[#cases + 1] = function()
  local shape = { 2, 4096, 320 }
  local x, g, w, b = dr.randn(shape), dr.randn(shape), dr.randn(320), dr.randn(320)
  local _, mean, rstd = dr.native_layer_norm(x, { 320 }, w, b, 1e-5)
  local s = ffi.new('int64_t[1]', 320)
  local fwd = time(function() dr.layer_norm(x, { 320 }, w, b, 1e-5):free() end)
  local bwd = time(function()
    check(C.dr_layer_norm_backward(g.ptr, x.ptr, s, 1, mean.ptr, rstd.ptr, w.ptr, box, box + 1,
                                   box + 2))
    release_box()
  end)
  return 'layer_norm [320] (+w, b)', shape, x:numel(), fwd, bwd
end

for _, op in ipairs { { 'silu', C.DR_UNARY_SILU }, { 'gelu', C.DR_UNARY_GELU } } do
  cases[#cases + 1] = function()
    local shape = op[1] == 'silu' and { 2, 320, 64, 64 } or { 2, 4096, 1280 }
    local x, g = dr.randn(shape), dr.randn(shape)
    local fwd = time(function() dr[op[1]](x):free() end)
    local bwd = time(function()
      check(C.dr_unary_backward(op[2], g.ptr, x.ptr, nil, box))
      release_box()
    end)
    return op[1], shape, x:numel(), fwd, bwd
  end
end

print(('diffrl norm/softmax/unary, %d threads, %d repeats, float32'):format(threads, repeats))
print(('%-26s %-14s %9s %9s %9s %9s %9s %9s'):format('op', 'shape', 'fwd ms', 'fwd min',
  'fwd GB/s', 'bwd ms', 'bwd min', 'bwd GB/s'))
for _, case in ipairs(cases) do
  local name, shape, n, fwd, bwd = case()
  print(('%-26s %-14s %9.3f %9.3f %9.2f %9.3f %9.3f %9.2f'):format(name, table.concat(shape, 'x'),
    fwd[1] * 1e3, fwd[2] * 1e3, 2 * 4 * n / fwd[2] / 1e9, bwd[1] * 1e3, bwd[2] * 1e3,
    3 * 4 * n / bwd[2] / 1e9))
  collectgarbage()
end
