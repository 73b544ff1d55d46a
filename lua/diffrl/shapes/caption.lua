-- diffrl.shapes.caption: scene -> caption by templates, and caption -> the objects it
-- names (the inverse, for the rewards).
--
-- Templates (objects of equal kind and colour are counted, in order of appearance):
--   one object           'a red circle', 'a small blue square', 'an orange star'
--   two, with relation   'a blue square left of a green triangle' (left of, right of,
--                        above, below, next to, and)
--   counted              'two yellow stars', 'three red circles',
--                        'two red circles and a blue square'
--   three different      'a red circle, a blue square and a green star'
-- The size is said for single objects whose scene says so (object.say_size); with
-- { open_color = true } the colours are left out ('a circle', 'two squares').
local world = require 'diffrl.shapes.world'

local M = {}

local NUMBERS = { 'a', 'two', 'three' }
local PLURAL = { circle = 'circles', square = 'squares', triangle = 'triangles', star = 'stars' }

-- Objects of equal kind and colour, counted, in order of first appearance.
local function groups_of(objects)
  local out, at = {}, {}
  for _, o in ipairs(objects) do
    local key = o.kind .. '/' .. o.color
    local g = at[key]
    if g then
      g.count = g.count + 1
    else
      g = { kind = o.kind, color = o.color, count = 1, size = o.say_size and o.size or nil }
      at[key] = g
      out[#out + 1] = g
    end
  end
  return out
end

local function phrase(g, open_color)
  local words = {}
  if g.count == 1 and g.size then words[#words + 1] = g.size end
  if not open_color then words[#words + 1] = g.color end
  words[#words + 1] = g.count == 1 and g.kind or PLURAL[g.kind]
  local first = words[1]
  local det = NUMBERS[g.count]
  if det == 'a' and first:match('^[aeiou]') then det = 'an' end
  return det .. ' ' .. table.concat(words, ' ')
end

function M.caption(scene, opts)
  local open_color = opts and opts.open_color or false
  local groups = groups_of(scene.objects)
  local parts = {}
  for i, g in ipairs(groups) do parts[i] = phrase(g, open_color) end
  if #parts == 1 then return parts[1] end
  if #parts == 2 and scene.relation and #scene.objects == 2 then
    return parts[1] .. ' ' .. scene.relation .. ' ' .. parts[2]
  end
  if #parts == 2 then return parts[1] .. ' and ' .. parts[2] end
  return parts[1] .. ', ' .. parts[2] .. ' and ' .. parts[3]
end

-- ---- parsing ---------------------------------------------------------------------------

local COUNT = { a = 1, an = 1, one = 1, two = 2, three = 3 }
local SIZE_WORD = { small = 'small', large = 'large', big = 'large', little = 'small', tiny = 'small' }
local KIND_WORD = {}
for _, k in ipairs(world.KINDS) do
  KIND_WORD[k] = k
  KIND_WORD[PLURAL[k] or (k .. 's')] = k
end

-- Phrases between two objects; a spatial one becomes the result's .relation.
local SEPARATORS = {
  { { 'to', 'the', 'left', 'of' }, 'left of' }, { { 'left', 'of' }, 'left of' },
  { { 'to', 'the', 'right', 'of' }, 'right of' }, { { 'right', 'of' }, 'right of' },
  { { 'above' }, 'above' }, { { 'below' }, 'below' }, { { 'under' }, 'below' },
  { { 'next', 'to' }, 'next to' }, { { 'near' }, 'next to' }, { { 'beside' }, 'next to' },
  { { 'on', 'side', 'of' }, 'next to' },
  { { ',', 'and' } }, { { ',' } }, { { 'and' } }, { { 'with' } },
}

local function match_words(tokens, i, words)
  for k = 1, #words do
    if tokens[i + k - 1] ~= words[k] then return false end
  end
  return true
end

-- The objects a caption names: a list of { kind =, color = (nil when the caption
-- leaves it open), count =, size = (nil unless said) }, with .relation set when a
-- spatial relation joins two of them. Words it does not know give an empty list.
function M.parse(text)
  if type(text) ~= 'string' then return {} end
  local tokens = {}
  for w in text:lower():gsub(',', ' , '):gsub('%.%s*$', ''):gmatch('%S+') do tokens[#tokens + 1] = w end
  local objects, i, relation = {}, 1, nil
  while true do
    local count = COUNT[tokens[i]]
    if count then i = i + 1 else count = 1 end
    local size = SIZE_WORD[tokens[i]]
    if size then i = i + 1 end
    local color = world.COLOR_INDEX[tokens[i]] and tokens[i] or nil
    if color then i = i + 1 end
    local kind = KIND_WORD[tokens[i]]
    if not kind then return {} end
    i = i + 1
    objects[#objects + 1] = { kind = kind, color = color, count = count, size = size }
    if i > #tokens then break end
    local matched = false
    for _, sep in ipairs(SEPARATORS) do
      if match_words(tokens, i, sep[1]) then
        i = i + #sep[1]
        if sep[2] and not relation then relation = sep[2] end
        matched = true
        break
      end
    end
    if not matched or i > #tokens then return {} end
  end
  if relation and #objects == 2 then objects.relation = relation end
  return objects
end

return M
