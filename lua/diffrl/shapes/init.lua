-- diffrl.shapes: the embedded shapes world (DESIGN.md "Embedded default"): a
-- procedural text-to-image world of coloured shapes on grey backgrounds, its captions,
-- a programmatic detector, and prompt sources. See README.md beside this file.
--
--   local shapes = require('diffrl').shapes
--   local images, captions, scenes = shapes.sample(16, { seed = 0, resolution = 32 })
--   shapes.caption(scenes[1])              --> 'a small blue square left of a red star'
--   shapes.parse('two yellow stars')       --> { { kind = 'star', color = 'yellow', count = 2 } }
--   shapes.detect(images)                  --> per image { { kind =, color =, confidence =, ... } }
--   local src = shapes.prompts { seed = 0 } -- the diffrl.prompts interface
--
-- Held-out captions: a hash of the caption text puts 10% of all captions (holdout) in
-- the 'test' split. sample() and prompts() give 'train' captions only (split = 'all'
-- turns that off); heldout_prompts() draws from 'test', so those captions are never
-- trained on, as the paper's held-out prompts.
local api = require 'diffrl.core.ffi'
local prompts = require 'diffrl.prompts'
local world = require 'diffrl.shapes.world'
local caption = require 'diffrl.shapes.caption'
local render = require 'diffrl.shapes.render'
local detect = require 'diffrl.shapes.detect'

local raise, check_options = api.raise, api.check_options
local M = {}

M.COLORS, M.KINDS, M.SIZES, M.RELATIONS = world.COLORS, world.KINDS, world.SIZES, world.RELATIONS
M.SIZE_SCALE = world.SIZE_SCALE
M.caption = caption.caption
M.parse = caption.parse
M.render = render.render
M.detect = detect.detect
M.holds = world.holds

local DEFAULT_HOLDOUT = 0.1
local MAX_ATTEMPTS = 1000

local function int_option(op, v, key, default, lo, hi)
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < lo or v > hi then
    raise(('%s: %s must be an integer in [%d, %s], got %s'):format(op, key, lo, tostring(hi), tostring(v)))
  end
  return v
end

local function split_option(op, opts, default)
  local split = opts.split or default
  if split ~= 'train' and split ~= 'test' and split ~= 'all' then
    raise(("%s: split must be 'train', 'test' or 'all', got %s"):format(op, tostring(split)))
  end
  local holdout = opts.holdout or DEFAULT_HOLDOUT
  if type(holdout) ~= 'number' or holdout < 0 or holdout >= 1 then
    raise(('%s: holdout must be a fraction in [0, 1), got %s'):format(op, tostring(holdout)))
  end
  return split, holdout
end

-- Which split a caption is in: 'test' for a fraction `holdout` of all captions.
function M.split_of(text, holdout)
  return prompts.holdout_unit(text, 0) < (holdout or DEFAULT_HOLDOUT) and 'test' or 'train'
end

-- check_open_color_mix(op, mix): raises unless mix is nil or one weight >= 0 per
-- colour (M.COLORS' order), not all 0; returns mix.
function M.check_open_color_mix(op, mix)
  if mix == nil then return nil end
  local ok, total = type(mix) == 'table' and #mix == #M.COLORS, 0
  for i = 1, ok and #mix or 0 do
    ok = ok and type(mix[i]) == 'number' and mix[i] >= 0 and mix[i] < math.huge
    total = total + (ok and mix[i] or 0)
  end
  if not ok or not (total > 0) then
    raise(('%s: open_color_mix must be %d weights >= 0 (%s), not all 0'):format(op, #M.COLORS,
      table.concat(world.COLOR_NAMES, ', ')))
  end
  return mix
end

-- Recolours a scene whose caption leaves the colours open: each of its colours becomes
-- one drawn from `mix` (weights in M.COLORS' order), the same for objects that shared
-- one, from a stream of (seed, index, attempt) of its own.
local function recolour(s, mix, seed, index, attempt)
  local rng, total, map = world.stream(seed, index, attempt, 0x0C0103), 0, {}
  for _, w in ipairs(mix) do total = total + w end
  for _, o in ipairs(s.objects) do
    if not map[o.color] then
      local u, acc = rng:uniform() * total, 0
      for i, w in ipairs(mix) do
        acc = acc + w
        if u < acc or i == #mix then map[o.color] = M.COLORS[i].name; break end
      end
    end
    o.color = map[o.color]
  end
end

-- The scene and caption number `index` of stream `seed` within `split`: held-out
-- draws are redrawn (attempt 1, 2, ...), so the result depends on (seed, index) alone.
-- mix: colour weights for scenes whose caption leaves the colours open (nil: as drawn).
local function draw(op, seed, index, so, split, holdout, open_color, mix)
  for attempt = 0, MAX_ATTEMPTS do
    local s = world.make_scene(seed, index, so, attempt)
    if open_color and mix then recolour(s, mix, seed, index, attempt) end
    local text = caption.caption(s, { open_color = open_color })
    if split == 'all' or M.split_of(text, holdout) == split then return s, text end
  end
  raise(('%s: no %s caption in %d draws: the kinds and colours allow too few captions'):format(op, split,
    MAX_ATTEMPTS))
end

local SCENE_OPTIONS = { max_objects = true, kinds = true, colors = true, identical = true, split = true,
                        holdout = true }

-- scene(seed, index[, { max_objects = 3, kinds, colors, identical = 0.25, split = 'all',
-- holdout = 0.1 }]): a deterministic scene (see world.lua for its fields).
function M.scene(seed, index, opts)
  local op = 'shapes.scene'
  opts = check_options(op, opts, SCENE_OPTIONS)
  seed = int_option(op, seed, 'seed', 0, 0, 2 ^ 53)
  index = int_option(op, index, 'index', 0, 0, 2 ^ 53)
  local split, holdout = split_option(op, opts, 'all')
  return (draw(op, seed, index, world.scene_options(op, opts), split, holdout, false))
end

local SAMPLE_OPTIONS = { seed = true, offset = true, resolution = true, max_objects = true, kinds = true,
                         colors = true, identical = true, split = true, holdout = true, open_color = true,
                         open_color_mix = true, supersample = true }

-- sample(n[, { seed = 0, offset = 0, resolution = 32, max_objects = 3, split = 'train',
-- open_color = 0, ... }]) -> images [n, 3, R, R], captions, scenes. Item i (1-based)
-- is scene index offset + i - 1, so calls with offset += n tile one stream.
-- open_color: the probability that a caption leaves the colours open (a hash of
-- (seed, index) decides), so a model also learns 'a circle'. open_color_mix: weights
-- of M.COLORS (in order) the objects of those scenes are coloured with instead (a
-- skewed mix makes a biased model, as real captions that leave an attribute open are:
-- what the diversity reward corrects); nil: the scene's own, uniform, colours.
function M.sample(n, opts)
  local op = 'shapes.sample'
  opts = check_options(op, opts, SAMPLE_OPTIONS)
  n = int_option(op, n, 'n', nil, 1, 2 ^ 31)
  if n == nil then raise(op .. ': n must be an integer >= 1') end
  local seed = int_option(op, opts.seed, 'seed', 0, 0, 2 ^ 53)
  local offset = int_option(op, opts.offset, 'offset', 0, 0, 2 ^ 53)
  local split, holdout = split_option(op, opts, 'train')
  local p_open = opts.open_color or 0
  if p_open == true then p_open = 1 elseif p_open == false then p_open = 0 end
  if type(p_open) ~= 'number' or p_open < 0 or p_open > 1 then
    raise(('%s: open_color must be a boolean or a probability, got %s'):format(op, tostring(opts.open_color)))
  end
  local mix = M.check_open_color_mix(op, opts.open_color_mix)
  local so = world.scene_options(op, opts)
  local scenes, captions = {}, {}
  for i = 1, n do
    local index = offset + i - 1
    local open = p_open > 0 and world.stream(seed, index, 0x0C0102):uniform() < p_open
    scenes[i], captions[i] = draw(op, seed, index, so, split, holdout, open, mix)
  end
  local images = render.render(scenes, { resolution = opts.resolution, supersample = opts.supersample })
  return images, captions, scenes
end

-- ---- prompt sources ------------------------------------------------------------------

-- next, size, state and set_state come from diffrl.prompts' generated sources
local Source = prompts.generated_class('shapes', 'options')

local PROMPT_OPTIONS = { seed = true, max_objects = true, kinds = true, colors = true, open_color = true,
                         split = true, holdout = true, name = true }

-- prompts{ seed = 0, max_objects = 2, kinds, colors, open_color = false, split = 'train',
-- holdout = 0.1, name } -> an infinite prompt source with the diffrl.prompts interface
-- (next, state, set_state, size, name): prompt i is the caption of scene i of the
-- stream. open_color = true gives prompts that leave the colour open, one kind each
-- ('a circle', 'a small star', 'two squares'), for the diversity reward.
function M.prompts(opts)
  local op = 'shapes.prompts'
  opts = check_options(op, opts, PROMPT_OPTIONS)
  local open = opts.open_color or false
  if type(open) ~= 'boolean' then raise(op .. ': open_color must be true or false, got ' .. tostring(open)) end
  local max_objects = int_option(op, opts.max_objects, 'max_objects', 2, 1, 3)
  if open then max_objects = math.min(max_objects, 2) end
  local so = world.scene_options(op, { max_objects = max_objects, kinds = opts.kinds, colors = opts.colors,
                                       identical = open and 1 or nil })
  local split, holdout = split_option(op, opts, 'train')
  local name = opts.name or (open and 'shapes_open' or 'shapes')
  if type(name) ~= 'string' or name == '' then raise(op .. ': name must be a non-empty string') end
  local fingerprint = table.concat({ 'max_objects=' .. max_objects, 'open=' .. tostring(open),
    'kinds=' .. table.concat(so.kinds, ','), 'colors=' .. table.concat(so.colors, ','),
    'split=' .. split, 'holdout=' .. holdout }, ';')
  return setmetatable({ op = op, seed = int_option(op, opts.seed, 'seed', 0, 0, 2 ^ 53), so = so, open = open,
                        split = split, holdout = holdout, name = name, fingerprint = fingerprint,
                        count = 0 }, Source)
end

function Source:_prompt(i)
  local _, text = draw(self.op, self.seed, i, self.so, self.split, self.holdout, self.open)
  return text
end

local HELDOUT_OPTIONS = { max_objects = true, kinds = true, colors = true, open_color = true, holdout = true }

-- heldout_prompts(n[, seed = 0[, opts]]): n distinct captions of the 'test' split
-- (never produced by sample() or prompts() with their default split), in a fixed order.
function M.heldout_prompts(n, seed, opts)
  local op = 'shapes.heldout_prompts'
  n = int_option(op, n, 'n', nil, 1, 2 ^ 31)
  if n == nil then raise(op .. ': n must be an integer >= 1') end
  opts = check_options(op, opts, HELDOUT_OPTIONS)
  local src = M.prompts { seed = int_option(op, seed, 'seed', 0, 0, 2 ^ 53), split = 'test',
                          max_objects = opts.max_objects, kinds = opts.kinds, colors = opts.colors,
                          open_color = opts.open_color, holdout = opts.holdout }
  local out, seen = {}, {}
  for _ = 1, 200 * n + 1000 do
    local p = src:next(1)[1]
    if not seen[p] then
      seen[p] = true
      out[#out + 1] = p
      if #out == n then return out end
    end
  end
  raise(('%s: found only %d distinct held-out captions, asked for %d'):format(op, #out, n))
end

return M
