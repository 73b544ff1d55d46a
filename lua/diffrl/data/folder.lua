-- diffrl.data.folder: real image-text pairs from a folder, for the pretraining
-- loss (PAPER.md step 5): NAME.png or NAME.jpg with its caption in NAME.txt,
-- images already at the model's resolution (resizing and webdataset shards are
-- issue 11's loader). A seeded shuffle per epoch; position saved in checkpoints.
--
--   local src = folder.open(dir, { resolution = 512, seed = 0 })
--   local images, captions = src:next(4)   -- float [4, 3, H, W] in [0, 1], 4 strings
--   src:state() / src:set_state(t)
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

function M.open(dir, opts)
  opts = opts or {}
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
  return setmetatable({ dir = dir, items = items, resolution = opts.resolution, seed = opts.seed or 0,
                        epoch = 0, pos = 0, name = 'folder:' .. dir }, Folder)
end

function Folder:size() return #self.items end

function Folder:next(n)
  local images, captions = {}, {}
  for i = 1, n do
    if self.pos >= #self.items then self.epoch, self.pos, self.perm = self.epoch + 1, 0, nil end
    self.perm = self.perm or permutation(#self.items, self.seed, self.epoch)
    self.pos = self.pos + 1
    local it = self.items[self.perm[self.pos]]
    local img = it.jpeg and core.load_jpeg(it.image) or core.load_image(it.image)
    local r = self.resolution
    if r and (img:size(2) ~= r or img:size(3) ~= r) then
      raise(('data.folder: %s is %dx%d, the model samples %dx%d (resizing is not implemented yet: '
        .. 'resize the folder first)'):format(it.image, img:size(3), img:size(2), r, r))
    end
    images[i] = img
    captions[i] = (read(it.caption):gsub('%s+$', ''):gsub('^%s+', ''))
  end
  return core.stack(images, 1), captions
end

function Folder:state() return { epoch = self.epoch, pos = self.pos, n = #self.items } end

function Folder:set_state(s)
  if s.n ~= #self.items then
    raise(('data.folder: %s now has %d pairs, the checkpoint saw %d'):format(self.dir, #self.items, s.n))
  end
  self.epoch, self.pos, self.perm = s.epoch, s.pos, nil
end

return M
