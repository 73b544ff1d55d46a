-- diffrl.core.image: PNG files from Lua, as torchvision.utils.save_image / make_grid.
--
--   dr.save_image(path, img)                     -- img [C, H, W], C = 1, 3 or 4
--   dr.save_image(path, batch, {nrow = 8, padding = 2, pad_value = 0})
--                                                -- batch [B, C, H, W] -> one grid
--   local grid = dr.make_grid(batch[, opts])      -- the grid tensor [C, H', W']
--   local img = dr.load_image(path[, {channels = 3, dtype = 'float32'}])
--
-- Float values are clamped to [0, 1] and rounded as diffusers' numpy_to_pil does
-- ((x * 255).round(), half to even; torchvision's save_image adds 0.5 and floors,
-- which differs only at exact halves). uint8 tensors are written as they are.
-- load_image gives float32 [3, H, W] in [0, 1] by default, or uint8 bytes; alpha
-- is dropped for 3 channels (PIL's convert('RGB')). Gray grids stay gray (the
-- pixels torchvision writes after repeating the channel three times).
-- Files are written atomically; errors name the file.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local dtypes = require 'diffrl.core.dtype'
local F = require 'diffrl.core.factory'

local C, raise = api.C, api.raise

local M = {}

local function check_path(op, path)
  if type(path) ~= 'string' then
    raise(('%s: path must be a string, got %s'):format(op, type(path)))
  end
  if path:find('\0', 1, true) then raise(op .. ': path cannot contain NUL characters') end
end

local check_options = api.check_options

local function count_option(op, opts, key, default, min)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < min then
    raise(('%s: %s must be an integer >= %d, got %s'):format(op, key, min, tostring(v)))
  end
  return v
end

local GRID_OPTIONS = { nrow = true, padding = true, pad_value = true }

-- torchvision.utils.make_grid: images in rows of nrow (the last row may be short),
-- `padding` pixels of pad_value around and between them. One image [C, H, W]
-- (or a batch of one) comes back unpadded, as torchvision does.
function M.make_grid(t, opts)
  opts = check_options('make_grid', opts, GRID_OPTIONS)
  if not T.is_tensor(t) then raise('make_grid: expected a tensor, got ' .. type(t)) end
  local nrow = count_option('make_grid', opts, 'nrow', 8, 1)
  local padding = count_option('make_grid', opts, 'padding', 2, 0)
  local pad_value = opts.pad_value or 0
  if type(pad_value) ~= 'number' then
    raise('make_grid: pad_value must be a number, got ' .. type(pad_value))
  end
  t = t:detach()
  if t.ndim == 3 then return t end
  if t.ndim ~= 4 then
    raise(('make_grid: expected an image [C, H, W] or a batch [B, C, H, W], got %s')
      :format(tostring(t.shape)))
  end
  local b, c, h, w = t:size(1), t:size(2), t:size(3), t:size(4)
  if b == 0 then raise('make_grid: the batch is empty, ' .. tostring(t.shape)) end
  if b == 1 then return t:select(1, 1) end
  local xmaps = math.min(nrow, b)
  local ymaps = math.ceil(b / xmaps)
  local cell_h, cell_w = h + padding, w + padding
  local grid = F.full({ c, cell_h * ymaps + padding, cell_w * xmaps + padding }, pad_value,
                      { dtype = t.dtype, device = t.device })
  for k = 0, b - 1 do
    local y, x = math.floor(k / xmaps), k % xmaps
    grid:narrow(2, y * cell_h + padding + 1, h):narrow(3, x * cell_w + padding + 1, w)
        :copy_(t:select(1, k + 1))
  end
  return grid
end

function M.save_image(path, t, opts)
  check_path('save_image', path)
  if not T.is_tensor(t) then raise('save_image: expected a tensor, got ' .. type(t)) end
  opts = check_options('save_image', opts, GRID_OPTIONS)
  if t.ndim ~= 3 and t.ndim ~= 4 then
    raise(('save_image: expected an image [C, H, W] or a batch [B, C, H, W], got %s')
      :format(tostring(t.shape)))
  end
  local grid = M.make_grid(t, opts)
  api.check(C.dr_png_write(path, grid.ptr))
end

local LOAD_OPTIONS = { channels = true, dtype = true }

function M.load_image(path, opts)
  check_path('load_image', path)
  opts = check_options('load_image', opts, LOAD_OPTIONS)
  local channels = opts.channels or 3
  if channels ~= 1 and channels ~= 3 and channels ~= 4 then
    raise(('load_image: channels must be 1, 3 or 4, got %s'):format(tostring(channels)))
  end
  local dtype = dtypes.code(opts.dtype or 'float32')
  if dtype ~= C.DR_F32 and dtype ~= C.DR_U8 then
    raise(("load_image: dtype must be 'float32' or 'uint8', got %s"):format(tostring(opts.dtype)))
  end
  return T.take(C.dr_png_read(path, channels, dtype, T.out_box))
end

-- Decodes PNG bytes held in a Lua string (`name` labels errors).
function M.decode_image(bytes, opts, name)
  if type(bytes) ~= 'string' then raise('decode_image: expected a string of bytes, got ' .. type(bytes)) end
  opts = check_options('decode_image', opts, LOAD_OPTIONS)
  local channels = opts.channels or 3
  local dtype = dtypes.code(opts.dtype or 'float32')
  return T.take(C.dr_png_decode(ffi.cast('const uint8_t *', bytes), #bytes, name or '<bytes>',
                                channels, dtype, T.out_box))
end

return M
