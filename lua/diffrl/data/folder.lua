-- diffrl.data.folder: real image-text pairs from a folder, for the pretraining
-- loss (PAPER.md step 5): NAME.png or NAME.jpg with its caption in NAME.txt.
-- A seeded shuffle per epoch; position saved in checkpoints.
--
--   local src = folder.open(dir, { resolution = 512, seed = 0, rank = 0, world_size = 1,
--                                  threads = 2, filter = 'bilinear' })
--   local images, captions = src:next(4)   -- float [4, 3, H, W] in [0, 1], 4 strings
--   src:state() / src:set_state(t)
--
-- With `resolution`, images are decoded, resized (Pillow's filter, shorter side to
-- the resolution) and centre-cropped on `threads` threads by libdiffrl, as
-- diffrl.data.shards does; an image that does not decode is skipped, counted in
-- src.stats and logged by name (opts.log). Without it they must all share one
-- size. Rank r of world_size W takes positions r, r + W, ... of each epoch's
-- order (floor(n / W) pairs a rank and epoch). diffrl.data.shards opens a folder
-- without .tar files through here, with its options (shuffle, prefetch are
-- accepted; a folder is always shuffled and decodes on demand).
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'
local rundir = require 'diffrl.rundir'

local raise = api.raise
local M = {}

local Folder = {}
Folder.__index = Folder

local function read(path)
  local f, err = io.open(path, 'rb')
  if not f then raise(('data.folder: cannot read %s'):format(err or path)) end
  local s = f:read('*a')
  f:close()
  return s
end

-- A seeded LCG over 2^31 (exact in doubles) permutes the file list the same way
-- on every machine.
local function permutation(n, seed, epoch)
  local state = (seed * 1000003 + epoch * 7919 + 12345) % 2147483648
  local function rand(k)
    state = (1103515245 * state + 12345) % 2147483648
    return state % k
  end
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = rand(i) + 1
    p[i], p[j] = p[j], p[i]
  end
  return p
end

local OPTIONS = { resolution = true, seed = true, rank = true, world_size = true, threads = true,
                  filter = true, shuffle = true, prefetch = true, log = true }

local function int_opt(opts, key, default, min)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < min then
    raise(('data.folder: %s must be an integer >= %d, got %s'):format(key, min, tostring(v)))
  end
  return v
end

function M.open(dir, opts)
  opts = api.check_options('data.folder', opts, OPTIONS)
  if type(dir) ~= 'string' then raise('data.folder: expected a folder path, got ' .. type(dir)) end
  local names = rundir._fs.list_dir(dir)
  if not names then raise(('data.folder: cannot list %s'):format(dir)) end
  local items = {}
  table.sort(names)
  for _, name in ipairs(names) do
    local stem, ext = name:match('^(.*)%.([%a]+)$')
    ext = ext and ext:lower()
    if stem and (ext == 'png' or ext == 'jpg' or ext == 'jpeg') then
      local caption = dir .. '/' .. stem .. '.txt'
      local f = io.open(caption, 'rb')
      if f then
        f:close()
        items[#items + 1] = { image = dir .. '/' .. name, caption = caption, jpeg = ext ~= 'png' }
      end
    end
  end
  if #items == 0 then
    raise(('data.folder: %s holds no image-text pairs (NAME.png or NAME.jpg with NAME.txt)'):format(dir))
  end
  local world_size, rank = int_opt(opts, 'world_size', 1, 1), int_opt(opts, 'rank', 0, 0)
  if rank >= world_size then raise(('data.folder: rank must be in [0, %d), got %d'):format(world_size, rank)) end
  local per_rank = math.floor(#items / world_size)
  if per_rank == 0 then
    raise(('data.folder: %s: %d pairs cannot be shared by %d ranks'):format(dir, #items, world_size))
  end
  local resolution = opts.resolution
  if resolution ~= nil and (type(resolution) ~= 'number' or resolution % 1 ~= 0 or resolution < 1) then
    raise('data.folder: resolution must be a positive integer, got ' .. tostring(resolution))
  end
  if opts.log ~= nil and type(opts.log) ~= 'function' then raise('data.folder: log must be a function') end
  local filter = opts.filter or 'bilinear'
  core.filter_code('data.folder', filter)
  return setmetatable({
    dir = dir, items = items, resolution = resolution, seed = int_opt(opts, 'seed', 0, 0),
    rank = rank, world_size = world_size, per_rank = per_rank, filter = filter,
    pool = resolution and core.image_loader(int_opt(opts, 'threads', 2, 0)),
    log = opts.log or function(msg) io.stderr:write('data.folder: ', msg, '\n') end,
    stats = { samples = 0, skipped = 0 }, epoch = 0, pos = 0, name = 'folder:' .. dir,
  }, Folder)
end

function Folder:size() return self.per_rank end

-- The next item of this rank (the position advances).
function Folder:_advance()
  if self.pos >= self.per_rank then self.epoch, self.pos, self.perm = self.epoch + 1, 0, nil end
  self.perm = self.perm or permutation(#self.items, self.seed, self.epoch)
  local it = self.items[self.perm[self.rank + self.world_size * self.pos + 1]]
  self.pos = self.pos + 1
  return it
end

local function caption_of(it) return (read(it.caption):gsub('%s+$', ''):gsub('^%s+', '')) end

function Folder:next(n)
  if type(n) ~= 'number' or n % 1 ~= 0 or n < 1 then
    raise('data.folder: next(n) needs an integer n >= 1, got ' .. tostring(n))
  end
  local images, captions = {}, {}
  if not self.resolution then
    for i = 1, n do
      local it = self:_advance()
      images[i] = it.jpeg and core.load_jpeg(it.image) or core.load_image(it.image)
      captions[i] = caption_of(it)
    end
    self.stats.samples = self.stats.samples + n
    return core.stack(images, 1), captions
  end
  local parts, tried = {}, 0
  while #captions < n do
    local batch = {}
    for i = 1, n - #captions do
      local it = self:_advance()
      batch[i] = { path = it.image, item = it }
    end
    tried = tried + #batch
    if tried > n + #self.items then
      raise(('data.folder: %s: no image decodes (%d tried)'):format(self.dir, tried))
    end
    local imgs, errors = self.pool:submit(batch, self.resolution, self.filter):wait()
    local keep = {}
    for i, b in ipairs(batch) do
      if errors[i] then
        self.stats.skipped = self.stats.skipped + 1
        self.log(errors[i] .. ': skipped')
      else
        keep[#keep + 1] = i
        captions[#captions + 1] = caption_of(b.item)
      end
    end
    if #keep == #batch then parts[#parts + 1] = imgs
    elseif #keep > 0 then parts[#parts + 1] = imgs:index_select(1, keep) end
  end
  self.stats.samples = self.stats.samples + n
  return #parts == 1 and parts[1] or core.cat(parts, 1), captions
end

function Folder:state()
  return { epoch = self.epoch, pos = self.pos, n = #self.items, rank = self.rank, world_size = self.world_size }
end

function Folder:set_state(s)
  if type(s) ~= 'table' then raise('data.folder: set_state: expected a table, got ' .. type(s)) end
  if s.n ~= #self.items then
    raise(('data.folder: %s now has %d pairs, the checkpoint saw %s'):format(self.dir, #self.items, tostring(s.n)))
  end
  if (s.rank or 0) ~= self.rank or (s.world_size or 1) ~= self.world_size then
    raise(('data.folder: set_state: the state is for rank %s of %s, this source is rank %d of %d')
      :format(tostring(s.rank or 0), tostring(s.world_size or 1), self.rank, self.world_size))
  end
  if type(s.epoch) ~= 'number' or type(s.pos) ~= 'number' or s.pos < 0 or s.pos > self.per_rank then
    raise(('data.folder: set_state: bad position epoch = %s, pos = %s'):format(tostring(s.epoch), tostring(s.pos)))
  end
  self.epoch, self.pos, self.perm = s.epoch, s.pos, nil
end

return M
