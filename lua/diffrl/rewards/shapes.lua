-- diffrl.rewards.shapes: the paper's three reward kinds on the shapes world
-- (diffrl.shapes), all on CPU from the images alone, through its detector.
--
-- shapes_composition (PAPER.md Eq. 13, the detection score): the prompt is parsed
--   into the objects it names; each named object (a count of two names two) takes the
--   unused detection of its colour (any colour when the prompt leaves it open) with
--   the highest confidence for its kind (the detector's per-class score, as the
--   paper's "detector's confidence for that class": a blob half square, half circle
--   is a doubtful square too); the score is the mean of those confidences, a missing
--   object counting 0. A detection of the wrong size (when the prompt says one)
--   counts half.
--   Options: relation = true also halves the score when a spatial relation the prompt
--   names ('left of', ...) does not hold between the two detections. extra = w in
--   [0, 1] (default 0: Eq. 13 as the paper has it) counts the objects the prompt does
--   not name: every detection left unmatched adds w x its confidence to the number of
--   objects the mean is over, so 'a red circle' drawn as two red blobs scores about
--   half (RL on Eq. 13 alone learns to draw extra candidates: one of them may pass).
--   Prompts naming no shape the parser knows score NaN (the trainer skips them).
-- shapes_diversity (Eq. 12, statistical parity): images of one group (meta.groups,
--   else the prompt text) are judged together. Each image's outcome is the colour of
--   its most confident detection (confidence >= min_confidence; match_kind = true:
--   of a kind the prompt names), or 'none' when there is none. With K colours
--     SP = sum_a (freq_a - 1/K)^2 + freq_none^2
--   and every image of the group gets -SP. 'none' is an outcome with target frequency
--   0, so images without a recognisable object are always penalised (a group of blank
--   images scores worse, -1 - 1/K, than a group all of one colour).
-- shapes_preference: a fixed aesthetic rule standing in for ImageReward, in [0, 1],
--   from the image alone (the prompt only says how many objects to expect):
--     0.20 crisp     edges as sharp as a clean render (detector: sharp vs blurred fit)
--     0.20 form      the shapes match their templates (IoU 0.5 -> 0, 0.9 -> 1)
--     0.10 colour    saturated, pure colours
--                    (crisp and colour are weighted by form: noise has no shape)
--     0.15 centred   the objects' centre of mass near the frame's centre
--     0.10 fill      the objects cover 10-35% of the frame
--     0.15 clean     a flat background (no noise, no stripes)
--     0.10 count     as many confident objects as the prompt names, no extras
--   crisp, form and colour average over the expected number of objects (missing ones
--   count 0). It prefers clean renders to blurred ones and both to noise.
local api = require 'diffrl.core.ffi'
local shapes = require 'diffrl.shapes'

local raise, check_options = api.raise, api.check_options
local M = {}

local function clamp01(x) return x < 0 and 0 or x > 1 and 1 or x end

-- parse() results of recent prompts (prompts repeat within and across batches)
local function parser()
  local cache, n = {}, 0
  return function(text)
    local hit = cache[text]
    if hit then return hit end
    if n >= 4096 then cache, n = {}, 0 end
    hit = shapes.parse(text)
    cache[text], n = hit, n + 1
    return hit
  end
end

local function number_option(op, opts, key, default, lo, hi)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= 'number' or v < lo or v > hi then
    raise(('%s: %s must be a number in [%g, %g], got %s'):format(op, key, lo, hi, tostring(v)))
  end
  return v
end

local bool_option = api.bool_option

-- ---- composition -------------------------------------------------------------------

-- The Eq. 13 score of one image's detections for the parsed prompt, and how many
-- named objects were found; extra > 0: the unmatched detections' confidences
-- (times extra) join the denominator.
local function composition_score(objects, dets, wrong_size, check_relation, extra)
  local used, total, named, found, first = {}, 0, 0, 0, {}
  for oi, o in ipairs(objects) do
    for _ = 1, o.count do
      named = named + 1
      local pick, best = nil, 0 -- the unused detection most confident of being this object
      for j, d in ipairs(dets) do
        local c = d.kind_confidence[o.kind] * ((o.size and d.size ~= o.size) and wrong_size or 1)
        if not used[j] and c > best and (o.color == nil or d.color == o.color) then pick, best = j, c end
      end
      if pick then
        used[pick] = true
        found = found + 1
        total = total + best
        first[oi] = first[oi] or dets[pick]
      end
    end
  end
  local unnamed = 0
  if extra > 0 then
    for j, d in ipairs(dets) do
      if not used[j] then unnamed = unnamed + d.confidence end
    end
  end
  local score = total / (named + extra * unnamed)
  local rel = objects.relation
  if check_relation and rel and first[1] and first[2] and not shapes.holds(rel, first[1], first[2]) then
    score = score * 0.5
  end
  return score, found, named
end

function M.composition(opts)
  local op = 'shapes_composition'
  opts = check_options(op, opts, { wrong_size = true, relation = true, extra = true })
  local wrong_size = number_option(op, opts, 'wrong_size', 0.5, 0, 1)
  local extra = number_option(op, opts, 'extra', 0, 0, 1)
  local check_relation = bool_option(op, opts, 'relation', false)
  local parse = parser()
  return function(images, prompts)
    local dets = shapes.detect(images)
    local scores, found, named, unparsed = {}, 0, 0, 0
    for i = 1, #prompts do
      local objects = parse(prompts[i])
      if #objects == 0 then
        scores[i], unparsed = 0 / 0, unparsed + 1
      else
        local s, f, n = composition_score(objects, dets[i], wrong_size, check_relation, extra)
        scores[i], found, named = s, found + f, named + n
      end
    end
    return scores, { found = named > 0 and found / named or 0, unparsed = unparsed }
  end
end

-- ---- diversity ---------------------------------------------------------------------

function M.diversity(opts)
  local op = 'shapes_diversity'
  opts = check_options(op, opts, { min_confidence = true, match_kind = true, colors = true })
  local min_conf = number_option(op, opts, 'min_confidence', 0.2, 0, 1)
  local match_kind = bool_option(op, opts, 'match_kind', false)
  local colors, counted = {}, {}
  for _, c in ipairs(opts.colors or shapes.COLORS) do
    local name = type(c) == 'table' and c.name or c
    local known = false
    for _, k in ipairs(shapes.COLORS) do known = known or k.name == name end
    if not known then raise(("%s: unknown colour '%s'"):format(op, tostring(name))) end
    colors[#colors + 1], counted[name] = name, true
  end
  if #colors < 2 then raise(op .. ': colors must name at least 2 colours') end
  local k = #colors
  local parse = parser()
  local function judge_group(images, prompts)
    local dets = shapes.detect(images)
    local n, freq, none = #prompts, {}, 0
    for i = 1, n do
      local kinds
      if match_kind then
        kinds = {}
        for _, o in ipairs(parse(prompts[i])) do kinds[o.kind] = true end
      end
      local outcome
      for _, d in ipairs(dets[i]) do
        if d.confidence >= min_conf and counted[d.color] and (not kinds or kinds[d.kind]) then
          outcome = d.color
          break
        end
      end
      if outcome then freq[outcome] = (freq[outcome] or 0) + 1 / n else none = none + 1 end
    end
    local sp = (none / n) ^ 2
    for _, c in ipairs(colors) do sp = sp + ((freq[c] or 0) - 1 / k) ^ 2 end
    return -sp, { sp = sp, none = none / n }
  end
  return require('diffrl.rewards').group_level(judge_group, op)
end

-- ---- preference ----------------------------------------------------------------------

M.PREFERENCE_WEIGHTS = { crisp = 0.20, form = 0.20, colour = 0.10, centred = 0.15, fill = 0.10,
                         clean = 0.15, count = 0.10 }
local PARTS = { 'crisp', 'form', 'colour', 'centred', 'fill', 'clean', 'count' }
local CONFIDENT = 0.3

-- The rule's parts for one image, each in [0, 1].
local function preference_parts(dets, stats, expected)
  local crisp, form, colour = 0, 0, 0
  for j = 1, math.min(expected, #dets) do
    local d = dets[j]
    local shaped = clamp01((d.iou - 0.5) / 0.4)
    -- sharp edges and pure colour count on a recognisable shape only, not on noise
    crisp = crisp + d.crisp * shaped
    form = form + shaped
    colour = colour + clamp01((d.saturation - 0.3) / 0.6) * d.color_confidence * shaped
  end
  local confident, area, mx, my = 0, 0, 0, 0
  for _, d in ipairs(dets) do
    if d.confidence >= CONFIDENT then
      confident = confident + 1
      area, mx, my = area + d.area, mx + d.area * d.x, my + d.area * d.y
    end
  end
  local centred, fill = 0, 0
  if area > 0 then
    local dist = math.sqrt((mx / area - 0.5) ^ 2 + (my / area - 0.5) ^ 2)
    centred = 1 - clamp01(dist / 0.35)
    fill = math.min(clamp01(area / 0.10), 1 - clamp01((area - 0.35) / 0.3))
  end
  return {
    crisp = crisp / expected, form = form / expected, colour = colour / expected,
    centred = centred, fill = fill,
    clean = math.exp(-(stats.spread + stats.chroma) / 0.04),
    count = 1 / (1 + math.abs(confident - expected)),
  }
end
M.preference_parts = preference_parts

function M.preference(opts)
  local op = 'shapes_preference'
  opts = check_options(op, opts, { weights = true })
  local weights = {}
  for key, w in pairs(M.PREFERENCE_WEIGHTS) do weights[key] = w end
  if opts.weights ~= nil then
    if type(opts.weights) ~= 'table' then raise(op .. ': weights must be a table') end
    for key, w in pairs(opts.weights) do
      if weights[key] == nil then
        raise(("%s: weights: unknown part '%s' (parts: centred, clean, colour, count, crisp, fill, form)")
          :format(op, tostring(key)))
      end
      if type(w) ~= 'number' then raise(('%s: weights.%s must be a number'):format(op, key)) end
      weights[key] = w
    end
  end
  local parse = parser()
  return function(images, prompts)
    local dets, stats = shapes.detect(images, { stats = true })
    local scores, info = {}, {}
    for _, key in ipairs(PARTS) do info[key] = 0 end
    for i = 1, #prompts do
      local expected = 0
      for _, o in ipairs(parse(prompts[i])) do expected = expected + o.count end
      if expected == 0 then expected = 1 end
      local parts = preference_parts(dets[i], stats[i], expected)
      local s = 0
      for _, key in ipairs(PARTS) do
        s = s + weights[key] * parts[key]
        info[key] = info[key] + parts[key] / #prompts
      end
      scores[i] = s
    end
    return scores, info
  end
end

-- Adds the three to a rewards registry (diffrl.rewards calls this).
function M.register(rewards)
  rewards.register('shapes_composition', M.composition)
  rewards.register('shapes_diversity', M.diversity)
  rewards.register('shapes_preference', M.preference)
end

return M
