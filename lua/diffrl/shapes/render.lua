-- diffrl.shapes.render: scenes -> float32 images [B, 3, R, R] in [0, 1].
-- Backgrounds are grey textures (plain, hashed per-pixel noise, soft stripes); shapes
-- are anti-aliased by n x n supersampling of their coverage (geometry.lua). The pixel
-- loops run over the tensor's float array so LuaJIT compiles them.
local ffi = require 'ffi'
local bit = require 'bit'
local api = require 'diffrl.core.ffi'
local F = require 'diffrl.core.factory'
local world = require 'diffrl.shapes.world'
local geometry = require 'diffrl.shapes.geometry'

local C, raise = api.C, api.raise
local band, bxor, rshift, lshift, tobit = bit.band, bit.bxor, bit.rshift, bit.lshift, bit.tobit
local floor, ceil, abs, max, min = math.floor, math.ceil, math.abs, math.max, math.min
local coverage = geometry.coverage

local M = {}

-- a * b mod 2^32 for int32 a, b, exact in doubles (the halves stay below 2^51)
local function imul(a, b)
  local lo = tobit(band(a, 0xffff) * b)
  return tobit(lo + lshift(rshift(a, 16) * band(b, 0xffff), 16))
end

local K1, K2 = tobit(0x9E3779B1), tobit(0x85EBCA77)
local K3, K4 = tobit(0x7FEB352D), tobit(0x846CA68B)

-- A uniform number in [0, 1) for pixel (i, j) of noise field `seed` (a 32-bit hash
-- with lowbias32's finalizer).
local function pixel_hash(i, j, seed)
  local h = imul(bxor(seed, i), K1)
  h = imul(bxor(h, j), K2)
  h = imul(bxor(h, rshift(h, 16)), K3)
  h = imul(bxor(h, rshift(h, 15)), K4)
  h = bxor(h, rshift(h, 16))
  return (h % 4294967296) / 4294967296
end
M.pixel_hash = pixel_hash

local function paint_background(p, res, bg)
  local plane = res * res
  local r, g, b = bg.rgb[1], bg.rgb[2], bg.rgb[3]
  local kind = bg.kind == 'noise' and 1 or bg.kind == 'stripes' and 2 or 0
  local amp = bg.amplitude or 0
  local seed = tobit(bg.noise_seed or 0)
  local cs, sn, period, phase = 0, 0, 1, 0
  if kind == 2 then
    local a = math.rad(bg.angle)
    cs, sn, period, phase = math.cos(a), math.sin(a), bg.period, bg.phase
  end
  for y = 0, res - 1 do
    for x = 0, res - 1 do
      local d = 0
      if kind == 1 then
        d = amp * (2 * pixel_hash(x, y, seed) - 1)
      elseif kind == 2 then
        local t = (((x + 0.5) * cs + (y + 0.5) * sn) / res) / period + phase
        local tri = 1 - 4 * abs(t - floor(t) - 0.5) -- triangle wave in [-1, 1]
        d = amp * max(-1, min(1, 3 * tri))           -- softened square wave
      end
      local k = y * res + x
      p[k] = r + d
      p[plane + k] = g + d
      p[2 * plane + k] = b + d
    end
  end
end

local function paint_object(p, res, o, samples)
  local kind = world.KIND_INDEX[o.kind]
  local rgb = world.COLORS[world.COLOR_INDEX[o.color]].rgb
  local r, g, b = rgb[1], rgb[2], rgb[3]
  local plane = res * res
  local h = world.SIZE_SCALE[o.size] * res
  local cx, cy = o.x * res, o.y * res
  local reach = geometry.BOUND[kind] * h + 1
  local x0, x1 = max(0, floor(cx - reach)), min(res - 1, ceil(cx + reach))
  local y0, y1 = max(0, floor(cy - reach)), min(res - 1, ceil(cy + reach))
  for y = y0, y1 do
    for x = x0, x1 do
      local c = coverage(kind, cx, cy, h, x, y, samples)
      if c > 0 then
        local k = y * res + x
        p[k] = p[k] + c * (r - p[k])
        p[plane + k] = p[plane + k] + c * (g - p[plane + k])
        p[2 * plane + k] = p[2 * plane + k] + c * (b - p[2 * plane + k])
      end
    end
  end
end

local function check_scene(op, s, i)
  if type(s) ~= 'table' or type(s.objects) ~= 'table' or type(s.background) ~= 'table' then
    raise(('%s: scene %d must be a table with background and objects (from shapes.scene)'):format(op, i))
  end
  for j, o in ipairs(s.objects) do
    if not world.KIND_INDEX[o.kind] or not world.COLOR_INDEX[o.color] or not world.SIZE_SCALE[o.size]
        or type(o.x) ~= 'number' or type(o.y) ~= 'number' then
      raise(('%s: scene %d, object %d: needs a known kind, color and size and numbers x, y'):format(op, i, j))
    end
  end
end

local OPTIONS = { resolution = true, supersample = true }

-- render(scenes, { resolution = 32, supersample = 4 }): one scene or a list of them.
function M.render(scenes, opts)
  local op = 'shapes.render'
  opts = api.check_options(op, opts, OPTIONS)
  local res = opts.resolution or 32
  if type(res) ~= 'number' or res % 1 ~= 0 or res < 8 or res > 1024 then
    raise(('%s: resolution must be an integer in [8, 1024], got %s'):format(op, tostring(res)))
  end
  local samples = opts.supersample or 4
  if type(samples) ~= 'number' or samples % 1 ~= 0 or samples < 1 or samples > 16 then
    raise(('%s: supersample must be an integer in [1, 16], got %s'):format(op, tostring(samples)))
  end
  if type(scenes) ~= 'table' then raise(op .. ': expected a scene or a list of scenes, got ' .. type(scenes)) end
  if scenes.objects then scenes = { scenes } end
  if #scenes == 0 then raise(op .. ': no scenes') end
  local out = F.empty(#scenes, 3, res, res)
  local base = ffi.cast('float *', C.dr_tensor_data(out.ptr))
  for i, s in ipairs(scenes) do
    check_scene(op, s, i)
    local p = base + (i - 1) * 3 * res * res
    paint_background(p, res, s.background)
    for _, o in ipairs(s.objects) do paint_object(p, res, o, samples) end
    for k = 0, 3 * res * res - 1 do p[k] = max(0, min(1, p[k])) end
  end
  return out
end

return M
