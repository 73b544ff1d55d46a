-- diffrl.shapes.world: the vocabulary of the shapes world (colours, kinds, sizes,
-- relations), its counter-based random numbers, and scene(seed, index, opts).
--
-- A scene is plain data, resolution-free (positions and sizes are fractions of the
-- frame), so one scene renders at 32x32 or 64x64 alike:
--   { seed =, index =,
--     background = { kind = 'plain'|'noise'|'stripes', rgb = {r, g, b},
--                    amplitude =, period =, angle =, phase =, noise_seed = },
--     objects = { { kind =, color =, size =, x =, y =, say_size = bool }, ... },
--     relation = 'left of' | ... | nil }           -- only for two different objects
-- Object colours are saturated; backgrounds are near-grey (chroma <= 0.03) with grey
-- texture, so the detector can tell them apart by chroma alone.
local ffi = require 'ffi'
local bit = require 'bit'
local api = require 'diffrl.core.ffi'

local raise = api.raise

local M = {}

-- ---- vocabulary ---------------------------------------------------------------------

-- Saturated colours about 30+ degrees of hue apart (red/orange/yellow are the closest).
M.COLORS = {
  { name = 'red',    rgb = { 0.90, 0.10, 0.10 } },
  { name = 'orange', rgb = { 1.00, 0.55, 0.05 } },
  { name = 'yellow', rgb = { 0.95, 0.90, 0.10 } },
  { name = 'green',  rgb = { 0.10, 0.75, 0.20 } },
  { name = 'blue',   rgb = { 0.15, 0.30, 0.95 } },
  { name = 'purple', rgb = { 0.65, 0.15, 0.85 } },
}
M.KINDS = { 'circle', 'square', 'triangle', 'star' }
M.SIZES = { 'small', 'large' }
-- Half-extent of an object as a fraction of the frame side.
M.SIZE_SCALE = { small = 0.11, large = 0.18 }
-- Relations of two different objects; 'and' and 'next to' constrain nothing.
M.RELATIONS = { 'left of', 'right of', 'above', 'below', 'next to', 'and' }

M.COLOR_INDEX, M.KIND_INDEX, M.SIZE_INDEX, M.RELATION_INDEX = {}, {}, {}, {}
for i, c in ipairs(M.COLORS) do M.COLOR_INDEX[c.name] = i end
for i, k in ipairs(M.KINDS) do M.KIND_INDEX[k] = i end
for i, s in ipairs(M.SIZES) do M.SIZE_INDEX[s] = i end
for i, r in ipairs(M.RELATIONS) do M.RELATION_INDEX[r] = i end

-- Half-extents (x, y) of each kind's bounding box in units of the object's scale
-- (geometry.lua draws them).
M.EXTENT = {
  circle = { 1.0, 1.0 }, square = { 0.9, 0.9 }, triangle = { 1.04, 0.9 }, star = { 1.15, 1.09 },
}

-- ---- random numbers -------------------------------------------------------------------

-- SplitMix64 on uint64 cdata (exact, the same on every machine), counter-based: the
-- numbers of scene (seed, index, attempt) depend on those alone.
local U64 = ffi.typeof('uint64_t')
local GOLDEN = 0x9E3779B97F4A7C15ULL

local function mix64(z)
  z = bit.bxor(z, bit.rshift(z, 30)) * 0xBF58476D1CE4E5B9ULL
  z = bit.bxor(z, bit.rshift(z, 27)) * 0x94D049BB133111EBULL
  return bit.bxor(z, bit.rshift(z, 31))
end

-- An object with :uniform() in [0, 1), :below(n) in [0, n), :int32().
local Stream = {}
Stream.__index = Stream

function M.stream(...)
  local s = mix64(U64(0x5348415045ULL)) -- 'SHAPE'
  for i = 1, select('#', ...) do s = mix64(s + U64((select(i, ...))) * GOLDEN) end
  return setmetatable({ s = s }, Stream)
end

function Stream:uniform()
  self.s = self.s + GOLDEN
  return tonumber(bit.rshift(mix64(self.s), 11)) / 2 ^ 53
end
function Stream:below(n) return math.floor(self:uniform() * n) end
function Stream:pick(list) return list[self:below(#list) + 1] end
function Stream:int32() return self:below(2 ^ 31) end

-- ---- scenes ------------------------------------------------------------------------------

local GAP = 0.07    -- between two objects' bounding boxes (>= 2 px at 32x32)
local MARGIN = 0.03 -- between a bounding box and the frame edge

local function background(rng)
  local g = 0.15 + 0.7 * rng:uniform()
  local rgb = {}
  for c = 1, 3 do rgb[c] = g + 0.05 * (rng:uniform() - 0.5) end
  local u = rng:uniform()
  local bg = { kind = u < 0.5 and 'plain' or u < 0.75 and 'noise' or 'stripes', rgb = rgb }
  if bg.kind == 'noise' then
    bg.amplitude = 0.04 + 0.05 * rng:uniform()
    bg.noise_seed = rng:int32()
  elseif bg.kind == 'stripes' then
    bg.amplitude = 0.05 + 0.05 * rng:uniform()
    bg.period = 0.15 + 0.2 * rng:uniform()
    bg.angle = rng:below(4) * 45
    bg.phase = rng:uniform()
  end
  -- keep the texture inside [0, 1] so it stays grey
  local lo, hi = math.min(rgb[1], rgb[2], rgb[3]), math.max(rgb[1], rgb[2], rgb[3])
  if bg.amplitude then bg.amplitude = math.min(bg.amplitude, lo, 1 - hi) end
  return bg
end

local function half_extent(o)
  local e, h = M.EXTENT[o.kind], M.SIZE_SCALE[o.size]
  return e[1] * h, e[2] * h
end

local function apart(a, b)
  local ax, ay = half_extent(a)
  local bx, by = half_extent(b)
  return math.abs(a.x - b.x) >= ax + bx + GAP or math.abs(a.y - b.y) >= ay + by + GAP
end

-- Whether a (object 1) stands in `relation` to b: the dominant axis of their offset
-- says it, so 'left of' never looks like 'above'.
function M.holds(relation, a, b)
  local dx, dy = b.x - a.x, b.y - a.y
  if relation == 'left of' then return dx > 0 and math.abs(dx) > math.abs(dy) end
  if relation == 'right of' then return dx < 0 and math.abs(dx) > math.abs(dy) end
  if relation == 'above' then return dy > 0 and math.abs(dy) > math.abs(dx) end
  if relation == 'below' then return dy < 0 and math.abs(dy) > math.abs(dx) end
  return true
end

-- Places the objects at random without overlap (and satisfying the relation);
-- after 200 tries everything is made small, which always fits three objects.
local function place(rng, objects, relation)
  for round = 1, 2 do
    for _ = 1, 200 do
      local ok = true
      for i, o in ipairs(objects) do
        local ex, ey = half_extent(o)
        o.x = ex + MARGIN + (1 - 2 * (ex + MARGIN)) * rng:uniform()
        o.y = ey + MARGIN + (1 - 2 * (ey + MARGIN)) * rng:uniform()
        for j = 1, i - 1 do
          if not apart(o, objects[j]) then ok = false end
        end
      end
      if ok and (not relation or M.holds(relation, objects[1], objects[2])) then return end
    end
    if round == 1 then
      for _, o in ipairs(objects) do o.size = 'small' end
    end
  end
  error('shapes.scene: cannot place the objects (a bug)')
end

local function names_of(op, list, index, what, all)
  if list == nil then return all end
  if type(list) ~= 'table' or #list == 0 then
    raise(('%s: %s must be a non-empty list of names'):format(op, what))
  end
  for i, name in ipairs(list) do
    if not index[name] then
      local known = {}
      for k in pairs(index) do known[#known + 1] = k end
      table.sort(known)
      raise(("%s: unknown %s '%s' (known: %s)"):format(op, what:gsub('s$', ''), tostring(name),
        table.concat(known, ', ')))
    end
  end
  return list
end

local COLOR_NAMES = {}
for i, c in ipairs(M.COLORS) do COLOR_NAMES[i] = c.name end
M.COLOR_NAMES = COLOR_NAMES

-- The options a scene depends on, checked, with defaults filled in.
function M.scene_options(op, opts)
  opts = opts or {}
  local n = opts.max_objects or 3
  if type(n) ~= 'number' or n % 1 ~= 0 or n < 1 or n > 3 then
    raise(('%s: max_objects must be 1, 2 or 3, got %s'):format(op, tostring(n)))
  end
  local identical = opts.identical or 0.25
  if type(identical) ~= 'number' or identical < 0 or identical > 1 then
    raise(('%s: identical must be a probability, got %s'):format(op, tostring(identical)))
  end
  return {
    max_objects = n, identical = identical,
    kinds = names_of(op, opts.kinds, M.KIND_INDEX, 'kinds', M.KINDS),
    colors = names_of(op, opts.colors, M.COLOR_INDEX, 'colors', COLOR_NAMES),
  }
end

-- Scene number `index` of stream `seed` (attempt > 0: a redraw, used to skip
-- held-out captions). o = scene_options(...).
function M.make_scene(seed, index, o, attempt)
  local rng = M.stream(seed, index, attempt or 0)
  local bg = background(rng)
  local n = 1 + rng:below(o.max_objects)
  local objects = {}
  local identical = n >= 2 and rng:uniform() < o.identical
  for i = 1, n do
    objects[i] = { kind = rng:pick(o.kinds), color = rng:pick(o.colors), size = rng:pick(M.SIZES),
                   say_size = rng:uniform() < 0.4 }
  end
  if identical then
    -- two (or all three) share kind, colour and size: "two yellow stars"
    local copies = (n == 3 and rng:uniform() < 0.5) and 3 or 2
    for i = 2, copies do
      objects[i].kind, objects[i].color, objects[i].size = objects[1].kind, objects[1].color, objects[1].size
    end
  end
  local relation
  if n == 2 and not (objects[1].kind == objects[2].kind and objects[1].color == objects[2].color) then
    relation = rng:pick(M.RELATIONS)
  end
  place(rng, objects, relation)
  return { seed = seed, index = index, background = bg, objects = objects, relation = relation }
end

return M
