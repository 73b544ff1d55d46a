-- diffrl.data.shards: image-text pairs from webdataset .tar shards (img2dataset's
-- output: NNN.jpg / NNN.png + NNN.txt [+ NNN.json]) for the pretraining loss,
-- streamed shard by shard, sharded by rank, resumable mid-shard.
--
--   local src = shards.open('laion/{00000..00999}.tar', { resolution = 512, seed = 0,
--                           rank = 0, world_size = 1, threads = 2, filter = 'bilinear' })
--   local images, captions = src:next(4) -- float [4, 3, R, R] in [0, 1], 4 strings
--   src:state() / src:set_state(t)       -- (epoch, shard, offset, seed): exact resume
--   src.stats                            -- samples, skipped, corrupt, truncated, missing, ...
--
-- `spec`: a list of .tar paths; a pattern with webdataset's numeric braces
-- ({000..099}) and/or '*' in the file name; or a folder: its .tar files, or,
-- when it holds none, a plain folder of NAME.jpg/png + NAME.txt (diffrl.data.folder,
-- same options). Only a shard's index (its headers) and the batch in flight are in
-- memory: 1,000 shards cost 1,000 path strings.
--
-- Order: each epoch is a seeded permutation of the shard list; rank r of W takes
-- shards r, r + W, ... of it (floor(#shards / W) a rank, so ranks read disjoint
-- shards and their epochs have equal shard counts); inside a shard the samples
-- come in a seeded permutation (shuffle = false: both in order). Images are
-- decoded, resized (Pillow's filter, antialiased, shorter side to R) and
-- centre-cropped by libdiffrl on `threads` background threads; while the caller
-- trains, the next batch of the same size is already decoding (prefetch). The
-- result is the same bytes with or without threads and prefetch.
--
-- A sample whose image is corrupt, whose member is cut short (a truncated shard),
-- or that lacks an image or a caption is skipped, counted in src.stats and logged
-- by name (opts.log(message), default: a line on stderr); the run goes on. Every
-- sample skipped or kept advances the position, so a resumed run skips the same.
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'
local rundir = require 'diffrl.rundir'
local bit = require 'bit'

local raise = api.raise
local M = {}

local IMAGE_EXTS = { jpg = true, jpeg = true, png = true }
local OPTIONS = { resolution = true, seed = true, rank = true, world_size = true, threads = true,
                  filter = true, shuffle = true, prefetch = true, log = true }

-- ---- shard lists ------------------------------------------------------------------------

-- 'a/{000..012}.tar' -> 'a/000.tar' ... 'a/012.tar' (zero-padded to the first bound's width).
local function expand_braces(s)
  local pre, a, b, post = s:match('^(.-){(%d+)%.%.(%d+)}(.*)$')
  if not pre then return { s } end
  local lo, hi, width = tonumber(a), tonumber(b), #a
  if hi < lo then raise(('data.shards: empty range {%s..%s} in %s'):format(a, b, s)) end
  local out = {}
  for _, rest in ipairs(expand_braces(post)) do
    for i = lo, hi do out[#out + 1] = { i = i, rest = rest } end
  end
  table.sort(out, function(x, y) if x.i ~= y.i then return x.i < y.i end return x.rest < y.rest end)
  for k, e in ipairs(out) do out[k] = pre .. ('%0' .. width .. 'd'):format(e.i) .. e.rest end
  return out
end

local function glob(path)
  local dir, name = path:match('^(.*)/([^/]*)$')
  if not dir then dir, name = '.', path end
  if not name:find('*', 1, true) then return { path } end
  local pat = '^' .. name:gsub('[%^%$%(%)%%%.%[%]%+%-%?]', '%%%0'):gsub('%*', '.*') .. '$'
  local names = rundir._fs.list_dir(dir)
  if not names then raise(('data.shards: cannot list %s (for %s)'):format(dir, path)) end
  local out = {}
  for _, n in ipairs(names) do
    if n:match(pat) then out[#out + 1] = (path:find('/', 1, true) and dir .. '/' or '') .. n end
  end
  return out
end

-- The shard paths of `spec`, or nil and the folder when it is a plain folder.
function M.resolve(spec)
  if type(spec) == 'table' then
    if #spec == 0 then raise('data.shards: the list of shards is empty') end
    for i, p in ipairs(spec) do
      if type(p) ~= 'string' then raise(('data.shards: shard %d must be a path, got %s'):format(i, type(p))) end
    end
    return { unpack(spec) }
  end
  if type(spec) ~= 'string' then raise('data.shards: expected shard paths, a pattern or a folder, got ' .. type(spec)) end
  local names = not spec:find('[*{]') and rundir._fs.list_dir(spec)
  if names then -- a folder
    local out = {}
    for _, n in ipairs(names) do
      if n:lower():match('%.tar$') then out[#out + 1] = spec .. '/' .. n end
    end
    if #out == 0 then return nil, spec end
    return out
  end
  local out = {}
  for _, p in ipairs(expand_braces(spec)) do
    for _, q in ipairs(glob(p)) do out[#out + 1] = q end
  end
  if #out == 0 then raise(('data.shards: %s matches no files'):format(spec)) end
  return out
end

-- ---- seeded permutations ------------------------------------------------------------------

-- h * 0x2C1B3C6D + 0x297A2D39 mod 2^32 in 16-bit halves: every product stays below
-- 2^53, so the interpreter and JIT-compiled code agree (bit.tobit of a larger,
-- rounded product would not).
local function mix(h, v)
  h = bit.bxor(h, v)
  h = bit.tobit(h * 0x3C6D + bit.lshift(bit.tobit(h * 0x2C1B), 16) + 0x297A2D39)
  return bit.bxor(h, bit.rshift(h, 15))
end

-- a * b mod 2^32 for 32-bit a and a constant b, exact (see mix)
local function mul32(a, b)
  return bit.tobit(a * bit.band(b, 0xFFFF) + bit.lshift(bit.tobit(a * bit.rshift(b, 16)), 16))
end

-- MurmurHash3's finalizer: every input bit flips each output bit with probability 1/2.
local function fmix(h)
  h = mul32(bit.bxor(h, bit.rshift(h, 16)), 0x85EBCA6B)
  h = mul32(bit.bxor(h, bit.rshift(h, 13)), 0xC2B2AE35)
  return bit.bxor(h, bit.rshift(h, 16))
end

-- Fisher-Yates over 1..n driven by a xorshift32 stream seeded from (seed, a, b).
local function permutation(n, seed, a, b)
  local s = fmix(mix(mix(mix(mix(0x3C6EF372, seed % 2 ^ 31), math.floor(seed / 2 ^ 31)), a), b))
  if s == 0 then s = 1 end
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    s = bit.bxor(s, bit.lshift(s, 13))
    s = bit.bxor(s, bit.rshift(s, 17))
    s = bit.bxor(s, bit.lshift(s, 5))
    local j = (s % 2 ^ 32) % i + 1
    p[i], p[j] = p[j], p[i]
  end
  return p
end

local function fingerprint(paths)
  local h = 0x811C9DC5
  for _, p in ipairs(paths) do
    for i = 1, #p do h = mix(h, p:byte(i)) end
    h = mix(h, 0)
  end
  return bit.tohex(h)
end

-- ---- the source --------------------------------------------------------------------------

local Shards = {}
Shards.__index = Shards

local function int_opt(opts, key, default, min)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < min then
    raise(('data.shards: %s must be an integer >= %d, got %s'):format(key, min, tostring(v)))
  end
  return v
end

function M.open(spec, opts)
  opts = api.check_options('data.shards', opts, OPTIONS)
  local paths, folder = M.resolve(spec)
  if not paths then return require('diffrl.data.folder').open(folder, opts) end
  local resolution = opts.resolution
  if type(resolution) ~= 'number' or resolution % 1 ~= 0 or resolution < 1 then
    raise('data.shards: resolution (the model\'s image side) must be a positive integer, got ' .. tostring(resolution))
  end
  local world_size, rank = int_opt(opts, 'world_size', 1, 1), int_opt(opts, 'rank', 0, 0)
  if rank >= world_size then raise(('data.shards: rank must be in [0, %d), got %d'):format(world_size, rank)) end
  local per_rank = math.floor(#paths / world_size)
  if per_rank == 0 then
    raise(('data.shards: %d shards cannot be shared by %d ranks (each rank reads whole shards)')
      :format(#paths, world_size))
  end
  local filter = opts.filter or 'bilinear'
  core.filter_code('data.shards', filter)
  if opts.log ~= nil and type(opts.log) ~= 'function' then raise('data.shards: log must be a function') end
  local threads = int_opt(opts, 'threads', 2, 0)
  return setmetatable({
    paths = paths, resolution = resolution, seed = int_opt(opts, 'seed', 0, 0), rank = rank,
    world_size = world_size, per_rank = per_rank, filter = filter,
    shuffle = opts.shuffle ~= false, prefetch = opts.prefetch ~= false and threads > 0,
    log = opts.log or function(msg) io.stderr:write('data.shards: ', msg, '\n') end,
    pool = core.image_loader(threads), fingerprint = fingerprint(paths),
    name = 'shards:' .. (type(spec) == 'string' and spec or paths[1] .. ' ...'),
    cursor = { epoch = 0, shard = 0, offset = 0 },
    stats = { samples = 0, skipped = 0, corrupt = 0, truncated = 0, missing = 0, shards = 0,
              damaged_shards = 0 },
    messages = {},
  }, Shards)
end

function Shards:size() return nil end -- unknown without reading every shard's headers

-- Shard number k (0-based) of this rank in epoch e.
function Shards:_shard_path(epoch, k)
  if self.order_epoch ~= epoch then
    self.order = self.shuffle and permutation(#self.paths, self.seed, epoch, 0x5A4D) or nil
    self.order_epoch = epoch
  end
  local g = self.rank + self.world_size * k + 1
  return self.paths[self.order and self.order[g] or g], (self.order and self.order[g] or g)
end

-- The shard under cursor `cur` (its index and sample order), opened when the
-- cursor moved on; the last two stay open (the batch in use and the prefetched
-- one). A shard that cannot be read counts as empty. Its news (opened, damaged)
-- goes into `notes` once per list until a consumed batch applies it, so the
-- counts and the log are the same with and without prefetch.
function Shards:_shard(cur, notes)
  local key = cur.epoch .. ':' .. cur.shard
  local cache = self.shard_cache or {}
  self.shard_cache = cache
  local sh = cache[key]
  if not sh then
    local path, id = self:_shard_path(cur.epoch, cur.shard)
    sh = { path = path, n = 0, news = { { kind = 'shards' } } }
    local ok, tar = pcall(core.tar_index, path)
    if not ok then
      sh.news[2] = { kind = 'damaged_shards', msg = tostring(tar) .. ' (shard skipped)' }
    else
      if tar.problem then sh.news[2] = { kind = 'damaged_shards', msg = tar.problem } end
      sh.tar, sh.n = tar, tar:count()
      sh.order = self.shuffle and sh.n > 1 and permutation(sh.n, self.seed, cur.epoch, id) or nil
    end
    for _, note in ipairs(sh.news) do note.shard = sh end
    cache[key] = sh
    cache[#cache + 1] = key
    if #cache > 2 then
      local old = table.remove(cache, 1)
      if cache[old] and cache[old].tar then cache[old].tar:close() end
      cache[old] = nil
    end
  end
  if not sh.noted and sh.listed_in ~= notes then
    sh.listed_in = notes
    for _, note in ipairs(sh.news) do notes[#notes + 1] = note end
  end
  return sh
end

local function read_range(path, offset, size)
  local f = io.open(path, 'rb')
  if not f then return nil end
  f:seek('set', offset)
  local s = f:read(size) or ''
  f:close()
  return #s == size and s or nil
end

-- Counts a sample that cannot be used; so many in a row means the data is not
-- what this reader expects (stop, rather than skip forever).
local MAX_UNUSABLE = 10000
function Shards:_unusable(where)
  self.unusable = (self.unusable or 0) + 1
  if self.unusable > MAX_UNUSABLE then
    raise(('data.shards: %d samples in a row were unusable, the last %s (see the log; %d kept so far)')
      :format(MAX_UNUSABLE, where, self.stats.samples))
  end
  return nil
end

-- The next candidate from cursor `cur` (advanced): an image to decode with its
-- caption, or nil and a note when the sample is skipped without decoding.
function Shards:_candidate(cur, notes)
  local empty_shards = 0
  while true do
    local sh = self:_shard(cur, notes)
    if cur.offset < sh.n then
      local i = sh.order and sh.order[cur.offset + 1] - 1 or cur.offset
      cur.offset = cur.offset + 1
      local s = sh.tar:sample(i)
      local where = sh.path .. ':' .. s.key
      local image, text
      for _, m in ipairs(s.members) do
        local ext = m.ext:lower()
        if IMAGE_EXTS[ext] and not image then image = m end
        if ext == 'txt' and not text then text = m end
      end
      for _, m in ipairs({ image, text }) do
        if m.present then
          notes[#notes + 1] = { kind = 'truncated', msg = ('%s:%s is cut short (%d of %d bytes): skipped')
            :format(sh.path, m.name, m.present, m.size) }
          return self:_unusable(where)
        end
      end
      if not image or not text then
        notes[#notes + 1] = { kind = 'missing', msg = ('%s has no %s: skipped'):format(where,
          not image and 'image (.jpg, .jpeg or .png)' or 'caption (.txt)') }
        return self:_unusable(where)
      end
      local caption = read_range(sh.path, text.offset, text.size)
      if not caption then
        notes[#notes + 1] = { kind = 'truncated', msg = ('%s:%s cannot be read: skipped'):format(sh.path, text.name) }
        return self:_unusable(where)
      end
      self.unusable = 0
      return { path = sh.path, offset = image.offset, size = image.size, name = sh.path .. ':' .. image.name,
               caption = (caption:gsub('^%s+', ''):gsub('%s+$', '')) }
    end
    if sh.n == 0 then
      empty_shards = empty_shards + 1
      if empty_shards > self.per_rank then
        raise(('data.shards: none of this rank\'s %d shards holds a readable sample (first: %s)')
          :format(self.per_rank, self.paths[1]))
      end
    else
      empty_shards = 0
    end
    cur.offset, cur.shard = 0, cur.shard + 1
    if cur.shard == self.per_rank then
      cur.epoch, cur.shard = cur.epoch + 1, 0
    end
  end
end

-- Submits `count` candidates from cursor `cur` (advanced); the notes of samples
-- skipped on the way are kept with the batch and applied when it is used.
function Shards:_submit(cur, count, notes)
  local cands = {}
  while #cands < count do
    local c = self:_candidate(cur, notes)
    if c then cands[#cands + 1] = c end
  end
  return { batch = self.pool:submit(cands, self.resolution, self.filter), cands = cands }
end

function Shards:_note(note)
  if note.shard then -- a shard's news counts once
    if note.applied then return end
    note.applied = true
    local all = true
    for _, other in ipairs(note.shard.news) do all = all and other.applied end
    note.shard.noted = all
  end
  self.stats[note.kind] = self.stats[note.kind] + 1
  if note.kind == 'shards' then return end
  if note.kind ~= 'damaged_shards' then self.stats.skipped = self.stats.skipped + 1 end
  if #self.messages >= 100 then table.remove(self.messages, 1) end
  self.messages[#self.messages + 1] = note.msg
  self.log(note.msg)
end

local function copy_cursor(c) return { epoch = c.epoch, shard = c.shard, offset = c.offset } end

function Shards:_drop_pending()
  if self.pending then
    self.pending.job.batch:free()
    self.pending = nil
  end
end

function Shards:next(n)
  if type(n) ~= 'number' or n % 1 ~= 0 or n < 1 then
    raise('data.shards: next(n) needs an integer n >= 1, got ' .. tostring(n))
  end
  local p = self.pending
  self.pending = nil
  local job, notes, cur
  if p and p.n == n then
    job, notes, cur = p.job, p.notes, p.after
  else
    if p then p.job.batch:free() end
    notes, cur = {}, copy_cursor(self.cursor)
    job = self:_submit(cur, n, notes)
  end
  local rows, captions, parts = {}, {}, {}
  while true do
    local images, errors = job.batch:wait()
    for _, note in ipairs(notes) do self:_note(note) end
    notes = {}
    local keep = {}
    for i, c in ipairs(job.cands) do
      if errors[i] then
        self:_note({ kind = 'corrupt', msg = errors[i] .. ': skipped' })
        self:_unusable(c.name)
      else
        self.unusable = 0
        keep[#keep + 1] = i
        captions[#captions + 1] = c.caption
      end
    end
    if #keep == #job.cands then
      parts[#parts + 1] = images
    elseif #keep > 0 then
      parts[#parts + 1] = images:index_select(1, keep)
    end
    rows[#rows + 1] = #keep
    if #captions == n then break end
    job = self:_submit(cur, n - #captions, notes)
  end
  self.stats.samples = self.stats.samples + n
  self.cursor = cur
  if self.prefetch then
    local after, pnotes = copy_cursor(cur), {}
    self.pending = { n = n, job = self:_submit(after, n, pnotes), notes = pnotes, after = after }
  end
  return #parts == 1 and parts[1] or core.cat(parts, 1), captions
end

function Shards:state()
  return { kind = 'shards', fingerprint = self.fingerprint, shards = #self.paths, seed = self.seed,
           shuffle = self.shuffle, rank = self.rank, world_size = self.world_size,
           epoch = self.cursor.epoch, shard = self.cursor.shard, offset = self.cursor.offset,
           samples = self.stats.samples, skipped = self.stats.skipped }
end

function Shards:set_state(st)
  if type(st) ~= 'table' or st.kind ~= 'shards' then
    raise('data.shards: set_state: expected a state from data.shards, got ' .. tostring(st and st.kind))
  end
  if st.fingerprint ~= self.fingerprint or st.shards ~= #self.paths then
    raise(('data.shards: set_state: the state is for another shard list (%s shards, fingerprint %s; '
      .. 'this source: %d, %s)'):format(tostring(st.shards), tostring(st.fingerprint), #self.paths, self.fingerprint))
  end
  for _, k in ipairs({ 'seed', 'shuffle', 'rank', 'world_size' }) do
    if st[k] ~= self[k] then
      raise(('data.shards: set_state: the state has %s = %s, this source has %s'):format(k, tostring(st[k]),
        tostring(self[k])))
    end
  end
  for _, k in ipairs({ 'epoch', 'shard', 'offset' }) do
    if type(st[k]) ~= 'number' or st[k] % 1 ~= 0 or st[k] < 0 then
      raise(('data.shards: set_state: bad %s %s'):format(k, tostring(st[k])))
    end
  end
  if st.shard >= self.per_rank then
    raise(('data.shards: set_state: shard %d is past this rank\'s %d shards'):format(st.shard, self.per_rank))
  end
  self:_drop_pending()
  self.shard_cache = nil
  self.cursor = { epoch = st.epoch, shard = st.shard, offset = st.offset }
  self.stats.samples, self.stats.skipped = st.samples or 0, st.skipped or 0
end

-- Stops the prefetch (frees the batch in flight); the source stays usable.
function Shards:close() self:_drop_pending() end

return M
