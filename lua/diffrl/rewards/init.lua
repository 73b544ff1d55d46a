-- diffrl.rewards: the reward interface, the registry, and ways to combine rewards.
-- See README.md beside this file.
--
-- A reward is a Lua function (or a callable table)
--
--   scores[, info] = reward(images, prompts, meta)
--
--   images   float tensor [B, 3, H, W], values in [0, 1] (the decoded samples)
--   prompts  Lua list of B strings
--   meta     table: meta.step (the iteration), meta.groups (a list of B group ids,
--            e.g. the prompt index: images of one group are judged together by
--            batch-level rewards), anything else the trainer adds
--   scores   Lua list of B numbers, or a float tensor [B]; NaN / inf are allowed
--            (the trainer skips those samples)
--   info     optional table of per-batch metrics (numbers), logged with the step
--
-- rewards.call(fn, images, prompts, meta) runs one and checks all of that.
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local jpeg = require 'diffrl.rewards.jpeg'

local raise = api.raise
local M = {}

-- ---- names -------------------------------------------------------------------

local names = setmetatable({}, { __mode = 'k' })

-- Labels a reward function for error messages and metric keys; returns it.
function M.named(name, fn)
  if type(name) ~= 'string' or name == '' then
    raise('rewards.named: name must be a non-empty string, got ' .. tostring(name))
  end
  if not M.is_reward(fn) then
    raise(('rewards.named: %s: expected a function or a callable table, got %s'):format(name, type(fn)))
  end
  names[fn] = name
  return fn
end

function M.is_reward(fn)
  if type(fn) == 'function' then return true end
  local mt = type(fn) == 'table' and getmetatable(fn)
  return mt and mt.__call ~= nil or false
end

-- 'jpeg_compressibility', a table's .name, or 'reward function at file.lua:12'.
function M.name_of(fn)
  if names[fn] then return names[fn] end
  if type(fn) == 'table' and type(fn.name) == 'string' then return fn.name end
  if type(fn) == 'function' then
    local info = debug.getinfo(fn, 'S')
    return ('reward function at %s:%d'):format(info.short_src, info.linedefined)
  end
  return 'reward ' .. tostring(fn)
end

-- ---- calling and checking ------------------------------------------------------

local function is_finite(x) return x == x and x ~= math.huge and x ~= -math.huge end

local function check_inputs(name, images, prompts, meta)
  if not T.is_tensor(images) then
    raise(('%s: images must be a tensor [B, 3, H, W], got %s'):format(name, type(images)))
  end
  if images.ndim ~= 4 or images:size(2) ~= 3 then
    raise(('%s: images must be [B, 3, H, W], got [%s]'):format(name, table.concat(images.shape, ', ')))
  end
  local b = images:size(1)
  if type(prompts) ~= 'table' then
    raise(('%s: prompts must be a list of %d strings, got %s'):format(name, b, type(prompts)))
  end
  if #prompts ~= b then
    raise(('%s: %d prompts for %d images'):format(name, #prompts, b))
  end
  for i = 1, b do
    if type(prompts[i]) ~= 'string' then
      raise(('%s: prompt %d must be a string, got %s'):format(name, i, type(prompts[i])))
    end
  end
  if meta ~= nil and type(meta) ~= 'table' then
    raise(('%s: meta must be a table, got %s'):format(name, type(meta)))
  end
  if meta and meta.groups ~= nil then
    if type(meta.groups) ~= 'table' or #meta.groups ~= b then
      raise(('%s: meta.groups must be a list of %d group ids, got %s'):format(name, b,
        type(meta.groups) == 'table' and (#meta.groups .. ' entries') or type(meta.groups)))
    end
  end
  return b
end

-- The scores as a Lua list of b numbers, or an error naming the reward.
local function normalize_scores(name, scores, b)
  if T.is_tensor(scores) then
    if scores.ndim ~= 1 or scores:size(1) ~= b then
      raise(('%s: returned a tensor [%s], expected %d scores [%d]'):format(name,
        table.concat(scores.shape, ', '), b, b))
    end
    if scores.is_cuda then scores = scores:to { device = 'cpu' } end
    return scores:detach():tolist()
  end
  if type(scores) ~= 'table' then
    raise(('%s: must return a list of %d numbers or a tensor [%d], got %s'):format(name, b, b,
      type(scores)))
  end
  local n, last = 0, 0
  for k in pairs(scores) do
    if type(k) ~= 'number' or k % 1 ~= 0 or k < 1 then
      raise(('%s: scores must be a list, got a key %s'):format(name, tostring(k)))
    end
    n, last = n + 1, math.max(last, k)
  end
  if last ~= n then
    raise(('%s: the scores have holes (%d entries, the last at %d; nil is not a score, use 0/0 '
      .. 'to skip a sample)'):format(name, n, last))
  end
  if n ~= b then
    raise(('%s: returned %d scores for %d images'):format(name, n, b))
  end
  local out = {}
  for i = 1, b do
    local v = scores[i]
    if type(v) ~= 'number' then
      raise(('%s: score %d is a %s (%s), not a number'):format(name, i, type(v), tostring(v)))
    end
    out[i] = v
  end
  return out
end

-- Runs reward fn on a batch: returns a list of B numbers and an info table with
-- info.nonfinite = how many scores are NaN or infinite.
function M.call(fn, images, prompts, meta)
  if not M.is_reward(fn) then
    raise('rewards.call: expected a reward function, got ' .. type(fn))
  end
  local name = M.name_of(fn)
  local b = check_inputs(name, images, prompts, meta)
  local scores, info = fn(images, prompts, meta or {})
  scores = normalize_scores(name, scores, b)
  if info == nil then
    info = {}
  elseif type(info) ~= 'table' then
    raise(('%s: info must be a table, got %s'):format(name, type(info)))
  end
  local bad = 0
  for i = 1, b do
    if not is_finite(scores[i]) then bad = bad + 1 end
  end
  info.nonfinite = bad
  return scores, info
end

-- ---- registry ------------------------------------------------------------------

-- name -> constructor(opts) returning a reward function.
M.registry = {}

-- Rewards the design names that are not built yet: asking for one says so.
local planned = {}

function M.register(name, constructor)
  if type(name) ~= 'string' or not name:match('^[%a_][%w_%.%-]*$') then
    raise('rewards.register: name must be an identifier-like string, got ' .. tostring(name))
  end
  if type(constructor) ~= 'function' then
    raise(('rewards.register: %s: constructor must be a function(opts) -> reward, got %s')
      :format(name, type(constructor)))
  end
  if M.registry[name] then
    raise(("rewards.register: '%s' is already registered"):format(name))
  end
  M.registry[name] = constructor
  planned[name] = nil
end

local function registered_names()
  local out = {}
  for k in pairs(M.registry) do out[#out + 1] = k end
  table.sort(out)
  return table.concat(out, ', ')
end

-- A new reward function from the registry, labelled with its name.
function M.get(name, opts)
  if type(name) ~= 'string' then raise('rewards.get: name must be a string, got ' .. type(name)) end
  local make = M.registry[name]
  if not make then
    if planned[name] then raise(name .. ': ' .. planned[name]) end
    raise(("rewards.get: unknown reward '%s' (registered: %s)"):format(name, registered_names()))
  end
  local fn = make(opts)
  if not M.is_reward(fn) then
    raise(('rewards.get: the constructor of %s returned %s, not a reward function'):format(name, type(fn)))
  end
  return M.named(name, fn)
end

M.register('jpeg_compressibility', jpeg.compressibility)
M.register('jpeg_incompressibility', jpeg.incompressibility)
-- An HTTP/JSON reward server (lua/diffrl/rewards/server.lua, docs/reward-server.md).
M.register('reward_server', function(opts) return require('diffrl.rewards.server').new(opts) end)

function M.jpeg_compressibility(opts) return M.get('jpeg_compressibility', opts) end
function M.jpeg_incompressibility(opts) return M.get('jpeg_incompressibility', opts) end

-- ImageReward (issue 10): rewards.imagereward{ path =, tokenizer =, ... } (imagereward.lua)
M.register('imagereward', require('diffrl.rewards.imagereward').imagereward)
function M.imagereward(opts) return M.get('imagereward', opts) end
-- CLIP score and the LAION aesthetic predictor (issue 10; clip.lua)
M.register('clip_score', require('diffrl.rewards.clip').clip_score)
M.register('aesthetic', require('diffrl.rewards.clip').aesthetic)
function M.clip_score(opts) return M.get('clip_score', opts) end
function M.aesthetic(opts) return M.get('aesthetic', opts) end

-- ---- combining -----------------------------------------------------------------

local function resolve(op, r)
  if type(r) == 'string' then return M.get(r) end
  if not M.is_reward(r) then raise(('%s: expected a reward function or a registered name, got %s'):format(op, type(r))) end
  return r
end

-- rewards.weighted{ {fn_a, 1.0}, {fn_b, 0.5}, ... } (entries may also be
-- { reward = fn, weight = w, name = 'x' }; fn may be a registered name): the sum of
-- weight * score per image. info holds each part's mean over its finite scores as
-- info['<name>'] and its numeric info as info['<name>/<key>'].
function M.weighted(parts)
  local op = 'rewards.weighted'
  if type(parts) ~= 'table' or #parts == 0 then
    raise(op .. ': expected a list of {reward, weight} pairs')
  end
  local list, seen = {}, {}
  for i, p in ipairs(parts) do
    if type(p) ~= 'table' or M.is_reward(p) then
      raise(('%s: entry %d must be a {reward, weight} pair, got %s'):format(op, i, type(p)))
    end
    local fn = resolve(op, p.reward or p[1])
    local w = p.weight or p[2]
    if type(w) ~= 'number' or not is_finite(w) then
      raise(('%s: entry %d: weight must be a finite number, got %s'):format(op, i, tostring(w)))
    end
    local name = p.name or (type(p.reward or p[1]) == 'string' and (p.reward or p[1])) or M.name_of(fn)
    if seen[name] then name = name .. '#' .. i end
    seen[name] = true
    list[i] = { fn = fn, weight = w, name = name }
  end
  local label = {}
  for i, p in ipairs(list) do label[i] = ('%g * %s'):format(p.weight, p.name) end
  return M.named('weighted(' .. table.concat(label, ' + ') .. ')', function(images, prompts, meta)
    local total, info = {}, {}
    for i = 1, images:size(1) do total[i] = 0 end
    for _, p in ipairs(list) do
      local scores, part_info = M.call(p.fn, images, prompts, meta)
      local sum, n = 0, 0
      for i, s in ipairs(scores) do
        total[i] = total[i] + p.weight * s
        if is_finite(s) then sum, n = sum + s, n + 1 end
      end
      info[p.name] = n > 0 and sum / n or 0 / 0
      for k, v in pairs(part_info) do
        if type(v) == 'number' then info[p.name .. '/' .. tostring(k)] = v end
      end
    end
    return total, info
  end)
end

-- rewards.group_level(fn): a batch-level reward judged one group at a time.
-- The batch is split by meta.groups (or, without it, by prompt text: the images
-- of one prompt); fn(group_images, group_prompts, group_meta) sees one group
-- (group_meta = meta plus .group, the id, and .indices, positions in the batch)
-- and returns one number for the whole group (given to each of its images, as the
-- paper's fairness reward -SP) or a list of one score per image; info numbers are
-- averaged over the groups.
function M.group_level(fn, name)
  if not M.is_reward(fn) then raise('rewards.group_level: expected a function, got ' .. type(fn)) end
  local inner = name or M.name_of(fn)
  return M.named(name or ('group_level(' .. inner .. ')'), function(images, prompts, meta)
    local keys = meta.groups or prompts
    local order, members = {}, {}
    for i = 1, #keys do
      local k = keys[i]
      if k == nil or k ~= k then raise(('%s: group id %d is %s'):format(inner, i, tostring(k))) end
      if not members[k] then
        members[k] = {}
        order[#order + 1] = k
      end
      local m = members[k]
      m[#m + 1] = i
    end
    local scores, info_sum, info_n = {}, {}, {}
    for _, k in ipairs(order) do
      local idx = members[k]
      local sub_prompts = {}
      for j, i in ipairs(idx) do sub_prompts[j] = prompts[i] end
      local sub_meta = {}
      for mk, mv in pairs(meta) do sub_meta[mk] = mv end
      sub_meta.group, sub_meta.indices = k, idx
      if meta.groups then
        sub_meta.groups = {}
        for j = 1, #idx do sub_meta.groups[j] = k end
      end
      local sub_images = images:index_select(1, idx)
      local s, info = fn(sub_images, sub_prompts, sub_meta)
      if type(s) == 'number' then
        for _, i in ipairs(idx) do scores[i] = s end
      else
        local list = normalize_scores(('%s (group %s)'):format(inner, tostring(k)), s, #idx)
        for j, i in ipairs(idx) do scores[i] = list[j] end
      end
      if type(info) == 'table' then
        for ik, iv in pairs(info) do
          if type(iv) == 'number' then
            info_sum[ik] = (info_sum[ik] or 0) + iv
            info_n[ik] = (info_n[ik] or 0) + 1
          end
        end
      end
    end
    local info = { groups = #order }
    for ik, v in pairs(info_sum) do info[ik] = v / info_n[ik] end
    return scores, info
  end)
end

require('diffrl.rewards.shapes').register(M)

return M
