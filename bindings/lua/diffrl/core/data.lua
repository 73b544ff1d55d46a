-- diffrl.core.data: the C side of data loading (core/io/tar.c, resize.c, loader.c).
--
--   local img = dr.image_resize(u8img, width, height[, 'bicubic'])   -- Pillow's resize
--   local img = dr.image_resize_crop(u8img, size[, {filter = 'bilinear', dtype = 'float32'}])
--   local tar = dr.tar_index(path)         -- tar:count(), tar:sample(i) (0-based), tar.problem
--   local pool = dr.image_loader(threads)  -- pool:submit(images, size, filter) -> batch
--   local images, errors = batch:wait()    -- [n, 3, size, size] float32; errors[i] (1-based)
--
-- Filters by name: 'bilinear', 'bicubic', 'lanczos', 'box', 'hamming' (Pillow's).
-- An image for submit is { path =, offset = 0, size = -1 (whole file), name = }.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local dtypes = require 'diffrl.core.dtype'

local C, raise, check_options = api.C, api.raise, api.check_options

local M = {}

local FILTERS = { lanczos = 1, bilinear = 2, bicubic = 3, box = 4, hamming = 5 }
M.resize_filters = FILTERS

local function filter_code(op, name, default)
  name = name or default
  local code = FILTERS[name]
  if not code then
    raise(("%s: filter must be 'bilinear', 'bicubic', 'lanczos', 'box' or 'hamming', got %s")
      :format(op, tostring(name)))
  end
  return code
end
M.filter_code = filter_code

local function positive(op, what, v)
  if type(v) ~= 'number' or v % 1 ~= 0 or v < 1 then
    raise(('%s: %s must be a positive integer, got %s'):format(op, what, tostring(v)))
  end
  return v
end

function M.image_resize(img, width, height, filter)
  local op = 'image_resize'
  if not T.is_tensor(img) then raise(op .. ': expected a tensor, got ' .. type(img)) end
  return T.take(C.dr_image_resize(img.ptr, positive(op, 'width', width), positive(op, 'height', height),
                                  filter_code(op, filter, 'bicubic'), T.out_box))
end

function M.image_resize_crop(img, size, opts)
  local op = 'image_resize_crop'
  if not T.is_tensor(img) then raise(op .. ': expected a tensor, got ' .. type(img)) end
  opts = check_options(op, opts, { filter = true, dtype = true })
  local dtype = dtypes.code(opts.dtype or 'float32')
  return T.take(C.dr_image_resize_crop(img.ptr, positive(op, 'size', size),
                                       filter_code(op, opts.filter, 'bilinear'), dtype, T.out_box))
end

-- ---- tar shards -----------------------------------------------------------------------

local Tar = {}
Tar.__index = Tar

local tar_box = ffi.new('dr_tar *[1]')
local name_box, ext_box = ffi.new('const char *[1]'), ffi.new('const char *[1]')
local i64_box = ffi.new('int64_t[3]')

function M.tar_index(path)
  if type(path) ~= 'string' then raise('tar_index: path must be a string, got ' .. type(path)) end
  api.check(C.dr_tar_open(path, tar_box))
  local ptr = ffi.gc(tar_box[0], C.dr_tar_close)
  tar_box[0] = nil
  local problem = C.dr_tar_problem(ptr)
  return setmetatable({ ptr = ptr, path = path, n = tonumber(C.dr_tar_sample_count(ptr)),
                        problem = problem ~= nil and ffi.string(problem) or nil }, Tar)
end

function Tar:count() return self.n end

-- Sample i (0-based): { key =, members = { {name, ext, offset, size, present}, ... } };
-- present is the bytes in the file of a member cut short, else nil.
function Tar:sample(i)
  if type(i) ~= 'number' or i % 1 ~= 0 or i < 0 or i >= self.n then
    raise(('tar_index %s: sample %s out of range [0, %d)'):format(self.path, tostring(i), self.n))
  end
  local members = {}
  for j = 0, C.dr_tar_sample_members(self.ptr, i) - 1 do
    api.check(C.dr_tar_member(self.ptr, i, j, name_box, ext_box, i64_box, i64_box + 1, i64_box + 2))
    local present = tonumber(i64_box[2])
    members[j + 1] = { name = ffi.string(name_box[0]), ext = ffi.string(ext_box[0]),
                       offset = tonumber(i64_box[0]), size = tonumber(i64_box[1]),
                       present = present >= 0 and present or nil }
  end
  return { key = ffi.string(C.dr_tar_sample_key(self.ptr, i)), members = members }
end

function Tar:close()
  if self.ptr then
    C.dr_tar_close(ffi.gc(self.ptr, nil))
    self.ptr = nil
  end
end

-- ---- image loader ----------------------------------------------------------------------

local Loader, Batch = {}, {}
Loader.__index, Batch.__index = Loader, Batch

local loader_box = ffi.new('dr_image_loader *[1]')
local batch_box = ffi.new('dr_image_batch *[1]')

function M.image_loader(threads)
  threads = threads or 0
  if type(threads) ~= 'number' or threads % 1 ~= 0 or threads < 0 then
    raise('image_loader: threads must be an integer >= 0, got ' .. tostring(threads))
  end
  api.check(C.dr_image_loader_create(threads, loader_box))
  local ptr = ffi.gc(loader_box[0], C.dr_image_loader_free)
  loader_box[0] = nil
  return setmetatable({ ptr = ptr, threads = threads }, Loader)
end

-- images: a list of { path =, offset =, size =, name = }; returns at once.
function Loader:submit(images, size, filter)
  local op = 'image_loader: submit'
  local n = #images
  if n == 0 then raise(op .. ': no images') end
  positive(op, 'size', size)
  local paths, names = ffi.new('const char *[?]', n), ffi.new('const char *[?]', n)
  local offsets, sizes = ffi.new('int64_t[?]', n), ffi.new('int64_t[?]', n)
  local keep = {}
  for i, im in ipairs(images) do
    if type(im) ~= 'table' or type(im.path) ~= 'string' then
      raise(('%s: image %d must be a table with a path'):format(op, i))
    end
    paths[i - 1], names[i - 1] = im.path, im.name or im.path
    keep[#keep + 1], keep[#keep + 2] = im.path, im.name
    offsets[i - 1], sizes[i - 1] = im.offset or 0, im.size or -1
  end
  api.check(C.dr_image_batch_submit(self.ptr, n, paths, offsets, sizes, names, size,
                                    filter_code(op, filter, 'bilinear'), batch_box))
  local ptr = ffi.gc(batch_box[0], C.dr_image_batch_free)
  batch_box[0] = nil
  return setmetatable({ ptr = ptr, n = n }, Batch)
end

-- Blocks until the batch is decoded: the images and a table of errors by index
-- (1-based; empty when every image decoded). Frees the batch's C side.
function Batch:wait()
  if not self.ptr then raise('image_loader: this batch was already waited for') end
  local images = T.take(C.dr_image_batch_wait(self.ptr, T.out_box))
  local errors = {}
  for i = 0, self.n - 1 do
    local e = C.dr_image_batch_error(self.ptr, i)
    if e ~= nil then errors[i + 1] = ffi.string(e) end
  end
  self:free()
  return images, errors
end

-- Drops the batch: tasks not started are cancelled, running ones waited for.
function Batch:free()
  if self.ptr then
    C.dr_image_batch_free(ffi.gc(self.ptr, nil))
    self.ptr = nil
  end
end

return M
