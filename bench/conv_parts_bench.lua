-- conv2d's three parts timed apart on one shape: the forward, the input gradient
-- alone and the weight (+ bias) gradient alone (dr_conv2d_backward with the other
-- outputs NULL); best of `repeats` each, ms. For A/B runs of two builds in turn
-- (bench/README.md); conv_bench.lua times forward + the whole backward.
--
--   build/diffrl run bench/conv_parts_bench.lua [threads] [case] [repeats]
--   case: res | mid | down | skip (conv_bench.lua's shapes) | tiny (32x32x16x16, 3x3)
local dr = require 'diffrl'
local ffi = require 'ffi'
local C = require('diffrl.core.ffi').C

local now = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/clock.lua')

local threads = tonumber(arg and arg[1]) or dr.get_num_threads()
local name = arg and arg[2] or 'res'
local repeats = tonumber(arg and arg[3]) or 10
dr.set_num_threads(threads)

-- { input, weight, stride, padding }
local cases = {
  res = { { 2, 320, 32, 32 }, { 320, 320, 3, 3 }, 1, 1 },
  mid = { { 2, 1280, 8, 8 }, { 1280, 1280, 3, 3 }, 1, 1 },
  down = { { 2, 640, 32, 32 }, { 640, 640, 3, 3 }, 2, 1 },
  skip = { { 2, 960, 32, 32 }, { 320, 960, 1, 1 }, 1, 0 },
  tiny = { { 32, 32, 16, 16 }, { 32, 32, 3, 3 }, 1, 1 },
}
local c = assert(cases[name], 'unknown case ' .. name .. ' (res, mid, down, skip, tiny)')
local x, w, b = dr.randn(c[1]), dr.randn(c[2]), dr.randn(c[2][1])
local opts = { stride = c[3], padding = c[4] }
local g = dr.randn(dr.conv2d(x, w, b, opts):size())
local stride = ffi.new('int64_t[2]', c[3], c[3])
local padding = ffi.new('int64_t[2]', c[4], c[4])
local dilation = ffi.new('int64_t[2]', 1, 1)
local box = ffi.new('dr_tensor*[3]')

local function release()
  for i = 0, 2 do
    if box[i] ~= nil then C.dr_tensor_release(box[i]) end
    box[i] = nil
  end
end

local function backward(gi, gw, gb)
  local st = C.dr_conv2d_backward(g.ptr, x.ptr, w.ptr, stride, padding, dilation, 1, gi, gw, gb)
  assert(st == 0, 'dr_conv2d_backward failed')
  release()
end

local best = { 1e9, 1e9, 1e9 }
local parts = {
  function() dr.conv2d(x, w, b, opts):free() end,
  function() backward(box, nil, nil) end,
  function() backward(nil, box + 1, box + 2) end,
}
for _, f in ipairs(parts) do f() end -- warm-up
for _ = 1, repeats do
  for i, f in ipairs(parts) do
    local t0 = now()
    f()
    best[i] = math.min(best[i], now() - t0)
  end
end
print(('%-5s %d threads: fwd %7.2f  dx %7.2f  dw %7.2f ms (best of %d)'):format(name, threads,
  best[1] * 1e3, best[2] * 1e3, best[3] * 1e3, repeats))
