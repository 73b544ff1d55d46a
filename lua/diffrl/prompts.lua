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
--                        seed = 0, shuffle = true, min_length, max_length, banned, name,
--                        format, column = 'prompt', rank = 0, world_size = 1 })
--     one prompt per line (.txt), or the string field / column `column` of a .jsonl
--     or .csv file (RFC 4180, header row; format = 'txt' | 'jsonl' | 'csv' overrides
--     the extension). Streamed: the file is never held in memory, only the byte
--     range and hash of each kept prompt (16 bytes), and prompts are read again
--     when drawn. Rank r of world_size W draws positions r, r + W, ... of each
--     epoch's seeded order (floor(n / W) a rank and epoch): the ranks' prompts are
--     disjoint and de-dup, filters and split do not depend on W. Trimmed; empty
--     lines skipped; duplicates dropped (the
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
local records = require 'diffrl.data.records'

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

local bool_option = api.bool_option

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

-- The file source keeps no prompt text: one streaming pass over the file keeps,
-- per kept prompt, its record's byte range and 32-bit FNV-1a hash in FFI arrays
-- (16 bytes a prompt), and de-duplicates by a 64-bit key (FNV-1a and a second
-- multiplicative hash) in an open-addressing set that is dropped after the pass;
-- next() reads the chosen records again by offset. Two different prompts share a
-- key with probability ~n^2 / 2^65 (3e-6 for 10M distinct prompts): one of them
-- would be dropped as a duplicate.

-- Trims `text` (Lua's %s: space and \t \n \v \f \r) and hashes the rest in one
-- pass, in code the JIT compiles (string.match and pattern finds it does not):
-- the 0-based bounds [i, j] of the prompt (i > j: blank), its FNV-1a (as fnv1a, but
-- a signed 32-bit number), a second multiplicative hash, and whether it holds a
-- byte >= 128 (then UTF-8 is checked and characters counted the slow way).
local function trim_hash(text)
  local p = ffi.cast('const uint8_t *', text)
  local i, j = 0, #text - 1
  while i <= j do
    local c = p[i]
    if c ~= 32 and (c < 9 or c > 13) then break end
    i = i + 1
  end
  while j >= i do
    local c = p[j]
    if c ~= 32 and (c < 9 or c > 13) then break end
    j = j - 1
  end
  local h1, h2, any = bit.tobit(0x811C9DC5), 0x2545F491, 0
  for k = i, j do
    local c = p[k]
    any = bit.bor(any, c)
    h1 = bit.bxor(h1, c)
    h1 = bit.tobit(bit.lshift(h1, 24) + h1 * 403)
    h2 = bit.tobit(bit.bxor(h2, c) * 65599 + 7)
  end
  return i, j, h1, h2, any >= 128
end

-- Large arrays live in C memory (malloc / realloc, freed by ffi.gc or at once), not
-- in the Lua heap: the GC does not count them, so it keeps the per-line garbage
-- small, and realloc can grow a big array in place.
pcall(ffi.cdef, [[
void *malloc(size_t size);
void *calloc(size_t n, size_t size);
void *realloc(void *p, size_t size);
void free(void *p);
]])

local function c_array(ctype, n, zero)
  local p = zero and ffi.C.calloc(n, ffi.sizeof(ctype)) or ffi.C.malloc(n * ffi.sizeof(ctype))
  if p == nil then raise(('prompts.file: out of memory for %d entries'):format(n)) end
  return ffi.gc(ffi.cast(ctype .. ' *', p), ffi.C.free)
end

local function c_grow(ctype, arr, n)
  local p = ffi.C.realloc(ffi.gc(arr, nil), n * ffi.sizeof(ctype))
  if p == nil then
    ffi.gc(arr, ffi.C.free)
    raise(('prompts.file: out of memory for %d entries'):format(n))
  end
  return ffi.gc(ffi.cast(ctype .. ' *', p), ffi.C.free)
end

local function c_free(arr) if arr ~= nil then ffi.C.free(ffi.gc(arr, nil)) end end

local function new_seen(cap)
  return { cap = cap, n = 0, a = c_array('int32_t', cap), b = c_array('int32_t', cap),
           used = c_array('uint8_t', cap, true) }
end

local function free_seen(s) c_free(s.a) c_free(s.b) c_free(s.used) end

local seen_add
local function seen_grow(s)
  local old = s
  local new = new_seen(old.cap * 2)
  for i = 0, old.cap - 1 do
    if old.used[i] ~= 0 then seen_add(new, old.a[i], old.b[i]) end
  end
  free_seen(old)
  s.cap, s.n, s.a, s.b, s.used = new.cap, new.n, new.a, new.b, new.used
end

-- Adds the key (a, b); true when it was not there yet.
function seen_add(s, a, b)
  if (s.n + 1) * 4 > s.cap * 3 then seen_grow(s) end
  local mask = s.cap - 1
  local A, B, U = s.a, s.b, s.used
  local i = bit.band(bit.bxor(a, bit.rol(b, 16)), mask)
  while U[i] ~= 0 do
    if A[i] == a and B[i] == b then return false end
    i = bit.band(i + 1, mask)
  end
  U[i], A[i], B[i] = 1, a, b
  s.n = s.n + 1
  return true
end

-- Growable arrays of the kept records: offset (double: exact to 2^53), length, hash.
local function new_records(cap)
  return { cap = cap, n = 0, offset = c_array('double', cap), length = c_array('int32_t', cap),
           hash = c_array('int32_t', cap) }
end

local function records_add(r, offset, length, hash)
  if r.n == r.cap then
    local cap = r.cap * 2
    r.offset, r.length, r.hash = c_grow('double', r.offset, cap), c_grow('int32_t', r.length, cap),
                                 c_grow('int32_t', r.hash, cap)
    r.cap = cap
  end
  r.offset[r.n], r.length[r.n], r.hash[r.n] = offset, length, hash
  r.n = r.n + 1
end

local FILE_OPTIONS = { dedupe = true, holdout = true, split = true, split_seed = true, seed = true,
                       shuffle = true, min_length = true, max_length = true, banned = true,
                       name = true, format = true, column = true, rank = true, world_size = true }

local function open_file(op, path)
  local f, err = io.open(path, 'rb')
  if not f then raise(('%s: cannot open %s: %s'):format(op, path, tostring(err))) end
  return f
end

local FileSource = {}
FileSource.__index = FileSource

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
  local format = opts.format or records.format_of(path)
  if format ~= 'txt' and format ~= 'jsonl' and format ~= 'csv' then
    raise(("%s: format must be 'txt', 'jsonl' or 'csv', got %s"):format(op, tostring(format)))
  end
  local column = opts.column
  if format == 'txt' and column ~= nil then
    raise(("%s: column is for .jsonl and .csv files; %s is read as text lines (set format)"):format(op, path))
  end
  column = column or 'prompt'
  if type(column) ~= 'string' or column == '' then
    raise(('%s: column must be a non-empty string, got %s'):format(op, tostring(column)))
  end
  local split_seed = int_option(op, opts, 'split_seed', 0, 0)
  local min_length = int_option(op, opts, 'min_length', 0, 0)
  local max_length = int_option(op, opts, 'max_length', math.huge, 0)
  local world_size = int_option(op, opts, 'world_size', 1, 1)
  local rank = int_option(op, opts, 'rank', 0, 0)
  if rank >= world_size then
    raise(('%s: rank must be in [0, world_size = %d), got %d'):format(op, world_size, rank))
  end
  local banned = banned_patterns(op, opts.banned)
  local base = path:match('([^/]*)$'):gsub('%.[^.]*$', '')
  local count_chars = min_length > 0 or max_length < math.huge

  local function fail(lineno, msg)
    raise(('%s: %s:%s: %s'):format(op, path, tostring(lineno), msg))
  end
  local reader = records.reader(format, column, fail)
  local stats = { lines = 0, empty = 0, duplicates = 0, too_short = 0, too_long = 0, banned = 0,
                  train = 0, test = 0 }
  local seen = dedupe and new_seen(1024)
  local kept = new_records(1024)
  local f = open_file(op, path)
  local ok, err = pcall(function()
    stats.lines = records.each(f, format == 'csv', function(offset, length, lineno, raw)
      if raw:find('\0', 1, true) then fail(lineno, 'a NUL byte (is this a text file?)') end
      local text = reader.prompt(raw, lineno)
      if text == nil then return end -- the CSV header
      local i, j, h1, h2, high = trim_hash(text)
      if i > j then
        stats.empty = stats.empty + 1
        return
      end
      local p -- the prompt as a Lua string, made only when a check needs it
      if high then
        p = text:sub(i + 1, j + 1)
        local at = utf8_error(p)
        if at then fail(lineno, ('invalid UTF-8 at byte %d of the prompt'):format(at)) end
      end
      if seen and not seen_add(seen, h1, h2) then
        stats.duplicates = stats.duplicates + 1
        return
      end
      if count_chars then
        local len = high and char_count(p) or j - i + 1
        if len < min_length then stats.too_short = stats.too_short + 1 return end
        if len > max_length then stats.too_long = stats.too_long + 1 return end
      end
      if #banned > 0 then
        local lower = (p or text:sub(i + 1, j + 1)):lower()
        for _, pat in ipairs(banned) do
          if lower:find(pat) then stats.banned = stats.banned + 1 return end
        end
      end
      local side = holdout > 0 and unit(h1 % TWO32, split_seed) < holdout and 'test' or 'train'
      stats[side] = stats[side] + 1
      if side == split then records_add(kept, offset, length, h1) end
    end, fail)
  end)
  f:close()
  if seen then free_seen(seen) end -- the pass's largest allocation: gone before the shuffle's
  if not ok then error(err, 0) end
  local n = kept.n
  if n == 0 then
    raise(('%s: %s: no %s prompts left (%d lines: %d empty, %d duplicates, %d too short, '
      .. '%d too long, %d banned; %d train, %d test)'):format(op, path, split, stats.lines,
      stats.empty, stats.duplicates, stats.too_short, stats.too_long, stats.banned, stats.train,
      stats.test))
  end
  local per_rank = math.floor(n / world_size)
  if per_rank == 0 then
    raise(('%s: %s: %d %s prompts cannot be shared by %d ranks'):format(op, path, n, split, world_size))
  end
  if kept.cap > n then -- give back the doubling's slack
    kept.offset, kept.length, kept.hash = c_grow('double', kept.offset, n), c_grow('int32_t', kept.length, n),
                                          c_grow('int32_t', kept.hash, n)
    kept.cap = n
  end
  -- the fingerprint of prompts.list over the same prompts, from the kept hashes
  local fp = U64(n)
  for i = 0, n - 1 do fp = mix64(fp + U64(kept.hash[i] % TWO32)) end
  return setmetatable({
    op = op .. ' ' .. path, path = path, format = format, reader = reader, fail = fail,
    kept = kept, total = n, n = per_rank, rank = rank, world_size = world_size,
    seed = int_option(op, opts, 'seed', 0, 0), shuffle = bool_option(op, opts, 'shuffle', true),
    name = name_option(op, opts, base ~= '' and base or path), fingerprint = bit.tohex(fp),
    split = split, stats = stats, epoch = 0, pos = 0,
  }, FileSource)
end

-- The order of epoch e over all kept prompts (0-based indices in an int32 array):
-- prompts.list's permutation, so the same prompts give the same stream.
function FileSource:_order()
  if self.order and self.order_epoch == self.epoch then return self.order end
  local n = self.total
  local order = self.order or c_array('int32_t', n)
  for i = 0, n - 1 do order[i] = i end
  if self.shuffle then
    local below = stream(self.seed, self.epoch)
    for i = n, 2, -1 do
      local j = below(i)
      order[i - 1], order[j] = order[j], order[i - 1]
    end
  end
  self.order, self.order_epoch = order, self.epoch
  return order
end

-- The prompt of kept record k (0-based), read from the file open in f.
function FileSource:_read(f, k)
  local kept = self.kept
  local offset = kept.offset[k]
  local raw = f:seek('set', offset) and f:read(kept.length[k]) or ''
  local text = #raw == kept.length[k] and self.reader.prompt(raw, 'byte ' .. offset)
  local p = text and text:match('^%s*(.*%S)')
  if not p or bit.tobit(fnv1a(p)) ~= kept.hash[k] then
    raise(('%s: the file changed since it was opened (the record at byte %d differs): open it again')
      :format(self.op, offset))
  end
  return p
end

-- Rank r of W takes positions r, r + W, r + 2W, ... of each epoch's order, so the
-- ranks' prompts are disjoint and together are one rank's stream.
function FileSource:next(count)
  check_count(self.op, count)
  local out = {}
  if count == 0 then return out end
  local f = open_file(self.op, self.path)
  local ok, err = pcall(function()
    for k = 1, count do
      if self.pos == self.n then self.epoch, self.pos = self.epoch + 1, 0 end
      local order = self:_order()
      out[k] = self:_read(f, order[self.rank + self.world_size * self.pos])
      self.pos = self.pos + 1
    end
  end)
  f:close()
  if not ok then error(err, 0) end
  return out
end

function FileSource:size() return self.n end

-- Every prompt of the split (all ranks), in file order.
function FileSource:all()
  local f, out = open_file(self.op, self.path), {}
  local ok, err = pcall(function()
    for k = 0, self.total - 1 do out[k + 1] = self:_read(f, k) end
  end)
  f:close()
  if not ok then error(err, 0) end
  return out
end

function FileSource:state()
  return { kind = 'file', name = self.name, size = self.total, fingerprint = self.fingerprint,
           seed = self.seed, shuffle = self.shuffle, epoch = self.epoch, pos = self.pos,
           rank = self.rank, world_size = self.world_size }
end

function FileSource:set_state(st)
  if type(st) ~= 'table' then raise(self.op .. ': set_state: expected a table, got ' .. type(st)) end
  state_field(self.op, st, 'kind', 'file')
  if st.size ~= self.total or st.fingerprint ~= self.fingerprint then
    raise(('%s: set_state: the state is for %s prompts (fingerprint %s), this source has %d '
      .. '(fingerprint %s): the prompts changed since it was saved'):format(self.op,
      tostring(st.size), tostring(st.fingerprint), self.total, self.fingerprint))
  end
  state_field(self.op, st, 'seed', self.seed)
  state_field(self.op, st, 'shuffle', self.shuffle)
  if (st.world_size or 1) ~= self.world_size or (st.rank or 0) ~= self.rank then
    raise(('%s: set_state: the state is for rank %s of %s, this source is rank %d of %d')
      :format(self.op, tostring(st.rank or 0), tostring(st.world_size or 1), self.rank, self.world_size))
  end
  if type(st.epoch) ~= 'number' or st.epoch % 1 ~= 0 or st.epoch < 0 or type(st.pos) ~= 'number'
      or st.pos % 1 ~= 0 or st.pos < 0 or st.pos > self.n then
    raise(('%s: set_state: bad position epoch = %s, pos = %s'):format(self.op, tostring(st.epoch),
      tostring(st.pos)))
  end
  self.epoch, self.pos = st.epoch, st.pos
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

-- ---- generated sources: prompt i is a function of (seed, i) alone --------------------
-- M.generated_class(kind, what) gives a class whose objects need only op, name,
-- fingerprint, seed, count (0) and a method _prompt(i); it supplies next, size, state
-- and set_state (`what` names the settings the fingerprint covers, for errors).
-- Templates use it; so does diffrl.shapes' prompt source.
local Generated = {}

function Generated:next(n)
  check_count(self.op, n)
  local out = {}
  for k = 1, n do
    out[k] = self:_prompt(self.count)
    self.count = self.count + 1
  end
  return out
end

function Generated:size() return nil end

function Generated:state()
  return { kind = self.kind, name = self.name, fingerprint = self.fingerprint, seed = self.seed,
           count = self.count }
end

function Generated:set_state(st)
  if type(st) ~= 'table' then raise(self.op .. ': set_state: expected a table, got ' .. type(st)) end
  state_field(self.op, st, 'kind', self.kind)
  if st.fingerprint ~= self.fingerprint then
    raise(('%s: set_state: the state is for other %s (fingerprint %s, this source %s)'):format(self.op,
      self.fingerprint_what, tostring(st.fingerprint), self.fingerprint))
  end
  state_field(self.op, st, 'seed', self.seed)
  if type(st.count) ~= 'number' or st.count % 1 ~= 0 or st.count < 0 then
    raise(self.op .. ': set_state: bad count ' .. tostring(st.count))
  end
  self.count = st.count
end

function M.generated_class(kind, what)
  local class = { kind = kind, fingerprint_what = what }
  for k, f in pairs(Generated) do class[k] = f end
  class.__index = class
  return class
end

local Templates = M.generated_class('templates', 'templates or words')

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

-- Hash helpers, exposed for specs and for sources built elsewhere.
M.hash = fnv1a
function M.holdout_unit(text, split_seed) return unit(fnv1a(text), split_seed or 0) end

return M
