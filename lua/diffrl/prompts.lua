-- diffrl.prompts: prompt sources for RL training, one interface for all of them.
--
--   local src = prompts.file('diffusiondb.txt', { holdout = 0.001, seed = run_seed })
--   local batch = src:next(8)          -- a list of 8 prompts; the stream advances
--   local st = src:state()             -- a plain table (goes into checkpoints)
--   src:set_state(st)                  -- continues exactly where st was taken
--   src:size()                         -- number of distinct prompts, nil if infinite
--   src.name                           -- for metrics: 'diffusiondb', 'list', ...
--
-- Sources:
--   prompts.list{ 'a', 'b', ..., shuffle = true, seed = 0, name = 'list' }
--     cycles through the prompts, epoch after epoch; with shuffle (the default)
--     each epoch is a new seeded permutation (Fisher-Yates).
--   prompts.file(path, { dedupe = true, holdout = 0, split = 'train', split_seed = 0,
--                        seed = 0, shuffle = true, min_length, max_length, banned, name })
--     one prompt per line, trimmed; empty lines skipped; duplicates dropped (the
--     first occurrence wins: the official code's prompt lists repeat prompts);
--     lengths in characters (UTF-8 code points); `banned` words or phrases drop a
--     prompt that contains one (case-insensitive, whole words). A prompt is held out
--     (split 'test') when a hash of its text and split_seed falls below `holdout`:
--     the split is stable when lines are added or removed, and changing `seed`
--     (shuffling) never moves a prompt between the splits. Then as list. src.stats
--     counts what was dropped. Errors name the file and the line.
--   prompts.templates{ template = 'a {object} {relation} a {object#2}',
--                      words = { object = {...}, relation = {...} }, seed = 0,
--                      distinct = false, name = 'templates' }
--     an infinite generator: each {slot} is a uniform draw from words[slot]; the same
--     {slot} twice in a template is one draw, {slot#2}, {slot#3} are further
--     independent draws from the same list (distinct = true: different words from
--     each other where the list allows). `template` may be a list of templates,
--     one drawn uniformly per prompt.
--
-- Randomness is SplitMix64 in pure Lua (64-bit integer cdata), counter-based: the
-- permutation of epoch e and the words of prompt i are functions of (seed, e) and
-- (seed, i) alone, so state() is a few numbers and the streams are the same on
-- every machine and run.
local ffi = require 'ffi'
local bit = require 'bit'
local api = require 'diffrl.core.ffi'

local raise = api.raise
local M = {}

-- ---- randomness and hashing ------------------------------------------------------

local U64 = ffi.typeof('uint64_t')
local GOLDEN = 0x9E3779B97F4A7C15ULL
local TWO32 = 4294967296

local function mix64(z)
  z = bit.bxor(z, bit.rshift(z, 30)) * 0xBF58476D1CE4E5B9ULL
  z = bit.bxor(z, bit.rshift(z, 27)) * 0x94D049BB133111EBULL
  return bit.bxor(z, bit.rshift(z, 31))
end

-- A generator of integers in [0, n) for stream (seed, id): SplitMix64.
local function stream(seed, id)
  local s = mix64(mix64(U64(seed) + GOLDEN) + U64(id) * GOLDEN)
  return function(n)
    s = s + GOLDEN
    return tonumber(bit.rshift(mix64(s), 11)) % n
  end
end

-- 32-bit FNV-1a of a string, as a number in [0, 2^32).
local function fnv1a(s)
  local h = bit.tobit(0x811C9DC5)
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    h = bit.tobit(bit.lshift(h, 24) + h * 403) -- h * 16777619 mod 2^32
  end
  return h % TWO32
end

-- A uniform number in [0, 1) from a text hash and a seed.
local function unit(hash, seed)
  return tonumber(bit.rshift(mix64(U64(seed) * GOLDEN + U64(hash)), 11)) / 2 ^ 53
end

local function fingerprint(list)
  local fp = U64(#list)
  for i = 1, #list do fp = mix64(fp + U64(fnv1a(list[i]))) end
  return bit.tohex(fp)
end

-- ---- option checks ------------------------------------------------------------------

local check_options = api.check_options

local function int_option(op, opts, key, default, min)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < min or v >= 2 ^ 53 then
    raise(('%s: %s must be an integer >= %d, got %s'):format(op, key, min, tostring(v)))
  end
  return v
end

local function bool_option(op, opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= 'boolean' then raise(('%s: %s must be true or false, got %s'):format(op, key, tostring(v))) end
  return v
end

local function name_option(op, opts, default)
  local v = opts.name
  if v == nil then return default end
  if type(v) ~= 'string' or v == '' then raise(op .. ': name must be a non-empty string') end
  return v
end

local function check_count(op, n)
  if type(n) ~= 'number' or n % 1 ~= 0 or n < 0 then
    raise(('%s: next(n) needs an integer n >= 0, got %s'):format(op, tostring(n)))
  end
end

local function state_field(op, st, key, want)
  if st[key] ~= want then
    raise(('%s: set_state: the state has %s = %s, this source has %s'):format(op, key,
      tostring(st[key]), tostring(want)))
  end
end

-- ---- cycling sources (list, file) -------------------------------------------------

local Cycle = {}
Cycle.__index = Cycle

local function new_cycle(kind, op, items, opts)
  return setmetatable({
    kind = kind, op = op, items = items, n = #items, seed = opts.seed, shuffle = opts.shuffle,
    name = opts.name, fingerprint = fingerprint(items), epoch = 0, pos = 0, order = nil,
  }, Cycle)
end

-- The order of epoch e: 1..n, or its Fisher-Yates shuffle by stream (seed, e).
function Cycle:_order()
  if self.order and self.order_epoch == self.epoch then return self.order end
  local n, order = self.n, {}
  for i = 1, n do order[i] = i end
  if self.shuffle then
    local below = stream(self.seed, self.epoch)
    for i = n, 2, -1 do
      local j = below(i) + 1
      order[i], order[j] = order[j], order[i]
    end
  end
  self.order, self.order_epoch = order, self.epoch
  return order
end

function Cycle:next(count)
  check_count(self.op, count)
  local out = {}
  for k = 1, count do
    if self.pos == self.n then self.epoch, self.pos = self.epoch + 1, 0 end
    self.pos = self.pos + 1
    out[k] = self.items[self:_order()[self.pos]]
  end
  return out
end

function Cycle:size() return self.n end
function Cycle:all() return { unpack(self.items) } end

function Cycle:state()
  return { kind = self.kind, name = self.name, size = self.n, fingerprint = self.fingerprint,
           seed = self.seed, shuffle = self.shuffle, epoch = self.epoch, pos = self.pos }
end

function Cycle:set_state(st)
  if type(st) ~= 'table' then raise(self.op .. ': set_state: expected a table, got ' .. type(st)) end
  state_field(self.op, st, 'kind', self.kind)
  if st.size ~= self.n or st.fingerprint ~= self.fingerprint then
    raise(('%s: set_state: the state is for %s prompts (fingerprint %s), this source has %d '
      .. '(fingerprint %s): the prompts changed since it was saved'):format(self.op,
      tostring(st.size), tostring(st.fingerprint), self.n, self.fingerprint))
  end
  state_field(self.op, st, 'seed', self.seed)
  state_field(self.op, st, 'shuffle', self.shuffle)
  if type(st.epoch) ~= 'number' or st.epoch % 1 ~= 0 or st.epoch < 0 or type(st.pos) ~= 'number'
      or st.pos % 1 ~= 0 or st.pos < 0 or st.pos > self.n then
    raise(('%s: set_state: bad position epoch = %s, pos = %s'):format(self.op, tostring(st.epoch),
      tostring(st.pos)))
  end
  self.epoch, self.pos = st.epoch, st.pos
end

-- ---- prompts.list -------------------------------------------------------------------

local LIST_OPTIONS = { shuffle = true, seed = true, name = true }

function M.list(t)
  local op = 'prompts.list'
  if type(t) ~= 'table' then raise(op .. ': expected a table of prompts, got ' .. type(t)) end
  check_options(op, t, LIST_OPTIONS)
  local items = {}
  for k, v in pairs(t) do
    if type(k) == 'number' and (k % 1 ~= 0 or k < 1 or k > #t) then
      raise(('%s: prompts must be a list (no holes), got key %s'):format(op, tostring(k)))
    end
  end
  for i = 1, #t do
    if type(t[i]) ~= 'string' then raise(('%s: prompt %d must be a string, got %s'):format(op, i, type(t[i]))) end
    items[i] = t[i]
  end
  if #items == 0 then raise(op .. ': the list has no prompts') end
  local opts = { seed = int_option(op, t, 'seed', 0, 0), shuffle = bool_option(op, t, 'shuffle', true),
                 name = name_option(op, t, 'list') }
  return new_cycle('list', op, items, opts)
end

-- ---- prompts.file -------------------------------------------------------------------

local FILE_OPTIONS = { dedupe = true, holdout = true, split = true, split_seed = true, seed = true,
                       shuffle = true, min_length = true, max_length = true, banned = true,
                       name = true }

-- Byte offset of the first invalid UTF-8 sequence in s, or nil.
local function utf8_error(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len, min
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len, min = 2, 0x80
    elseif c >= 0xE0 and c <= 0xEF then len, min = 3, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then len, min = 4, 0x10000
    else return i end
    if len > 1 then
      if i + len - 1 > n then return i end
      local cp = c % (2 ^ (7 - len))
      for k = 1, len - 1 do
        local d = s:byte(i + k)
        if d < 0x80 or d > 0xBF then return i end
        cp = cp * 64 + (d - 0x80)
      end
      if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return i end
    end
    i = i + len
  end
  return nil
end

local function char_count(s)
  local _, n = s:gsub('[^\128-\191]', '')
  return n
end

-- Patterns matching each banned word or phrase as whole words, lower case.
local function banned_patterns(op, list)
  if list == nil then return {} end
  if type(list) ~= 'table' then raise(op .. ': banned must be a list of words, got ' .. type(list)) end
  local out = {}
  for i, w in ipairs(list) do
    if type(w) ~= 'string' or not w:find('%S') then
      raise(('%s: banned word %d must be a non-empty string, got %s'):format(op, i, tostring(w)))
    end
    w = w:lower():match('^%s*(.*%S)')
    local p = w:gsub('[%^%$%(%)%%%.%[%]%*%+%-%?]', '%%%0')
    if w:find('^%w') then p = '%f[%w]' .. p end
    if w:find('%w$') then p = p .. '%f[%W]' end
    out[#out + 1] = p
  end
  return out
end

local function read_all(op, path)
  local f, err = io.open(path, 'rb')
  if not f then raise(('%s: cannot open %s: %s'):format(op, path, tostring(err))) end
  local text, rerr = f:read('*a')
  f:close()
  if not text then raise(('%s: cannot read %s: %s'):format(op, path, tostring(rerr))) end
  return text
end

function M.file(path, opts)
  local op = 'prompts.file'
  if type(path) ~= 'string' then raise(op .. ': path must be a string, got ' .. type(path)) end
  opts = opts or {}
  if type(opts) ~= 'table' then raise(op .. ': options must be a table, got ' .. type(opts)) end
  check_options(op, opts, FILE_OPTIONS)
  local dedupe = bool_option(op, opts, 'dedupe', true)
  local holdout = opts.holdout or 0
  if type(holdout) ~= 'number' or not (holdout >= 0 and holdout < 1) then
    raise(('%s: holdout must be a fraction in [0, 1), got %s'):format(op, tostring(holdout)))
  end
  local split = opts.split or 'train'
  if split ~= 'train' and split ~= 'test' then
    raise(("%s: split must be 'train' or 'test', got %s"):format(op, tostring(split)))
  end
  local split_seed = int_option(op, opts, 'split_seed', 0, 0)
  local min_length = int_option(op, opts, 'min_length', 0, 0)
  local max_length = int_option(op, opts, 'max_length', math.huge, 0)
  local banned = banned_patterns(op, opts.banned)
  local base = path:match('([^/]*)$'):gsub('%.[^.]*$', '')
  local cycle_opts = { seed = int_option(op, opts, 'seed', 0, 0),
                       shuffle = bool_option(op, opts, 'shuffle', true),
                       name = name_option(op, opts, base ~= '' and base or path) }

  local text = read_all(op, path)
  if text:sub(1, 3) == '\239\187\191' then text = text:sub(4) end -- UTF-8 byte order mark
  local stats = { lines = 0, empty = 0, duplicates = 0, too_short = 0, too_long = 0, banned = 0,
                  train = 0, test = 0 }
  local seen, items, lineno = {}, {}, 0
  if text ~= '' and text:sub(-1) ~= '\n' then text = text .. '\n' end
  for line in text:gmatch('([^\n]*)\n') do
    lineno = lineno + 1
    if line:find('\0', 1, true) then
      raise(('%s: %s:%d: a NUL byte (is this a text file?)'):format(op, path, lineno))
    end
    local p = line:match('^%s*(.*%S)')
    if p and p:find('[\128-\255]') then
      local at = utf8_error(p)
      if at then raise(('%s: %s:%d: invalid UTF-8 at byte %d of the prompt'):format(op, path, lineno, at)) end
    end
    if not p then
      stats.empty = stats.empty + 1
    elseif dedupe and seen[p] then
      stats.duplicates = stats.duplicates + 1
    else
      seen[p] = true
      local len = char_count(p)
      local lower = #banned > 0 and p:lower()
      local is_banned = false
      for _, pat in ipairs(banned) do
        if lower:find(pat) then is_banned = true break end
      end
      if len < min_length then stats.too_short = stats.too_short + 1
      elseif len > max_length then stats.too_long = stats.too_long + 1
      elseif is_banned then stats.banned = stats.banned + 1
      else
        local side = holdout > 0 and unit(fnv1a(p), split_seed) < holdout and 'test' or 'train'
        stats[side] = stats[side] + 1
        if side == split then items[#items + 1] = p end
      end
    end
  end
  stats.lines = lineno
  if #items == 0 then
    raise(('%s: %s: no %s prompts left (%d lines: %d empty, %d duplicates, %d too short, '
      .. '%d too long, %d banned; %d train, %d test)'):format(op, path, split, stats.lines,
      stats.empty, stats.duplicates, stats.too_short, stats.too_long, stats.banned, stats.train,
      stats.test))
  end
  local src = new_cycle('file', op .. ' ' .. path, items, cycle_opts)
  src.path, src.split, src.stats = path, split, stats
  return src
end

-- ---- prompts.templates --------------------------------------------------------------

local TEMPLATE_OPTIONS = { template = true, words = true, seed = true, distinct = true, name = true }

-- 'a {object} near a {object#2}' -> parts: strings and slots { list =, key = }.
local function parse_template(op, tpl, words, used)
  local parts, pos = {}, 1
  while true do
    local s, e, inner = tpl:find('{([^{}]*)}', pos)
    local brace = tpl:find('[{}]', pos)
    if brace and (not s or brace < s) then
      raise(("%s: template '%s': unmatched '%s' at character %d"):format(op, tpl, tpl:sub(brace, brace), brace))
    end
    if not s then break end
    if s > pos then parts[#parts + 1] = tpl:sub(pos, s - 1) end
    local list, k = inner:match('^([%a_][%w_]*)#(%d+)$')
    if not list then list, k = inner:match('^([%a_][%w_]*)$'), '1' end
    if not list then raise(("%s: template '%s': bad slot {%s} (use {name} or {name#2})"):format(op, tpl, inner)) end
    if words[list] == nil then
      raise(("%s: template '%s': no word list '%s' in words"):format(op, tpl, list))
    end
    used[list] = true
    parts[#parts + 1] = { list = list, key = list .. '#' .. tonumber(k) }
    pos = e + 1
  end
  if pos <= #tpl then parts[#parts + 1] = tpl:sub(pos) end
  return parts
end

local Templates = {}
Templates.__index = Templates

function M.templates(t)
  local op = 'prompts.templates'
  if type(t) ~= 'table' then raise(op .. ': expected a table {template = ..., words = ...}, got ' .. type(t)) end
  check_options(op, t, TEMPLATE_OPTIONS)
  local words = t.words
  if type(words) ~= 'table' then raise(op .. ': words must be a table of word lists, got ' .. type(words)) end
  local names, unique = {}, {}
  for name, list in pairs(words) do
    if type(name) ~= 'string' then raise(op .. ': words keys must be names, got ' .. tostring(name)) end
    if type(list) ~= 'table' or #list == 0 then
      raise(("%s: words.%s must be a non-empty list of strings"):format(op, name))
    end
    local set, n = {}, 0
    for i = 1, #list do
      if type(list[i]) ~= 'string' then
        raise(("%s: words.%s[%d] must be a string, got %s"):format(op, name, i, type(list[i])))
      end
      if not set[list[i]] then set[list[i]], n = true, n + 1 end
    end
    unique[name] = n
    names[#names + 1] = name
  end
  table.sort(names)
  local tpls = type(t.template) == 'string' and { t.template } or t.template
  if type(tpls) ~= 'table' or #tpls == 0 then
    raise(op .. ': template must be a string or a list of strings, got ' .. type(t.template))
  end
  local used, parsed = {}, {}
  for i, tpl in ipairs(tpls) do
    if type(tpl) ~= 'string' then raise(('%s: template %d must be a string, got %s'):format(op, i, type(tpl))) end
    parsed[i] = parse_template(op, tpl, words, used)
  end
  for _, name in ipairs(names) do
    if not used[name] then raise(("%s: words.%s is used by no template"):format(op, name)) end
  end
  -- the fingerprint covers templates and word lists, so a changed vocabulary
  -- cannot silently resume a stream
  local fp_items = { unpack(tpls) }
  for _, name in ipairs(names) do
    fp_items[#fp_items + 1] = '\0' .. name
    for _, w in ipairs(words[name]) do fp_items[#fp_items + 1] = w end
  end
  return setmetatable({
    op = op, parsed = parsed, words = words, unique = unique, seed = int_option(op, t, 'seed', 0, 0),
    distinct = bool_option(op, t, 'distinct', false), name = name_option(op, t, 'templates'),
    fingerprint = fingerprint(fp_items), count = 0,
  }, Templates)
end

-- Prompt number i (0-based) of the stream: a function of (seed, i) alone.
function Templates:_prompt(i)
  local below = stream(self.seed, i)
  local parts = self.parsed[#self.parsed == 1 and 1 or below(#self.parsed) + 1]
  local drawn, taken, ntaken, out = {}, {}, {}, {}
  for k, part in ipairs(parts) do
    if type(part) == 'string' then
      out[k] = part
    else
      local w = drawn[part.key]
      if not w then
        local list = self.words[part.list]
        local t = taken[part.list] or {}
        taken[part.list] = t
        local j = below(#list) + 1
        -- distinct: redraw while the word is taken, unless every word of the list is
        if self.distinct and (ntaken[part.list] or 0) < self.unique[part.list] then
          while t[list[j]] do j = below(#list) + 1 end
        end
        w = list[j]
        if not t[w] then t[w], ntaken[part.list] = true, (ntaken[part.list] or 0) + 1 end
        drawn[part.key] = w
      end
      out[k] = w
    end
  end
  return table.concat(out)
end

function Templates:next(n)
  check_count(self.op, n)
  local out = {}
  for k = 1, n do
    out[k] = self:_prompt(self.count)
    self.count = self.count + 1
  end
  return out
end

function Templates:size() return nil end

function Templates:state()
  return { kind = 'templates', name = self.name, fingerprint = self.fingerprint, seed = self.seed,
           count = self.count }
end

function Templates:set_state(st)
  if type(st) ~= 'table' then raise(self.op .. ': set_state: expected a table, got ' .. type(st)) end
  state_field(self.op, st, 'kind', 'templates')
  if st.fingerprint ~= self.fingerprint then
    raise(('%s: set_state: the state is for other templates or words (fingerprint %s, this '
      .. 'source %s)'):format(self.op, tostring(st.fingerprint), self.fingerprint))
  end
  state_field(self.op, st, 'seed', self.seed)
  if type(st.count) ~= 'number' or st.count % 1 ~= 0 or st.count < 0 then
    raise(self.op .. ': set_state: bad count ' .. tostring(st.count))
  end
  self.count = st.count
end

-- Hash helpers, exposed for specs and for sources built elsewhere.
M.hash = fnv1a
function M.holdout_unit(text, split_seed) return unit(fnv1a(text), split_seed or 0) end

return M
