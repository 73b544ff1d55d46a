-- diffrl.core.jpeg: JPEG bytes from Lua, encoded as PIL's Image.save(format='JPEG').
--
--   local bytes = dr.jpeg_encode(img[, {quality = 95}])  -- img [C, H, W], C = 1 or 3
--   local n = dr.jpeg_size(img[, quality])                -- #bytes, without the string
--   local img = dr.decode_jpeg(bytes[, {channels = 3, dtype = 'float32'}, name])
--   local img = dr.load_jpeg(path[, {channels = 3, dtype = 'float32'}])
--
-- Float values are clamped to [0, 1] and rounded as PIL would get them from
-- diffusers / DDPO ((x * 255).round(), half to even); uint8 tensors are taken as
-- they are. Settings are PIL's (baseline, 4:2:0, standard tables), so sizes are the
-- ones DDPO's JPEG compressibility reward counts. Quality defaults to 95 (DDPO's);
-- PIL's own default is 75. Decoding gives float32 [3, H, W] in [0, 1] by default,
-- or uint8 bytes; errors name the file (`name` for bytes).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local dtypes = require 'diffrl.core.dtype'

local C, raise = api.C, api.raise

local M = {}

local data_box = ffi.new('uint8_t *[1]')
local size_box = ffi.new('size_t[1]')

local check_options = api.check_options

local function quality_of(op, q)
  if q == nil then return 95 end
  if type(q) ~= 'number' or q % 1 ~= 0 or q < 1 or q > 100 then
    raise(('%s: quality must be an integer in [1, 100], got %s'):format(op, tostring(q)))
  end
  return q
end

-- Encodes into data_box / size_box (the caller frees data_box[0]).
local function encode(op, t, quality)
  if not T.is_tensor(t) then raise(op .. ': expected a tensor, got ' .. type(t)) end
  api.check(C.dr_jpeg_encode(t.ptr, quality, data_box, size_box))
end

function M.jpeg_encode(t, opts)
  opts = check_options('jpeg_encode', opts, { quality = true })
  encode('jpeg_encode', t, quality_of('jpeg_encode', opts.quality))
  local p, n = data_box[0], size_box[0]
  data_box[0] = nil
  local ok, s = pcall(ffi.string, p, n)
  C.dr_jpeg_free(p)
  if not ok then raise('jpeg_encode: ' .. tostring(s)) end
  return s
end

function M.jpeg_size(t, quality)
  encode('jpeg_size', t, quality_of('jpeg_size', quality))
  local n = tonumber(size_box[0])
  C.dr_jpeg_free(data_box[0])
  data_box[0] = nil
  return n
end

local LOAD_OPTIONS = { channels = true, dtype = true }

local function load_args(op, opts)
  opts = check_options(op, opts, LOAD_OPTIONS)
  local channels = opts.channels or 3
  if channels ~= 1 and channels ~= 3 then
    raise(('%s: channels must be 1 or 3, got %s'):format(op, tostring(channels)))
  end
  local dtype = dtypes.code(opts.dtype or 'float32')
  if dtype ~= C.DR_F32 and dtype ~= C.DR_U8 then
    raise(("%s: dtype must be 'float32' or 'uint8', got %s"):format(op, tostring(opts.dtype)))
  end
  return channels, dtype
end

function M.load_jpeg(path, opts)
  if type(path) ~= 'string' then raise('load_jpeg: path must be a string, got ' .. type(path)) end
  if path:find('\0', 1, true) then raise('load_jpeg: path cannot contain NUL characters') end
  local channels, dtype = load_args('load_jpeg', opts)
  return T.take(C.dr_jpeg_read(path, channels, dtype, T.out_box))
end

-- Decodes JPEG bytes held in a Lua string (`name` labels errors).
function M.decode_jpeg(bytes, opts, name)
  if type(bytes) ~= 'string' then raise('decode_jpeg: expected a string of bytes, got ' .. type(bytes)) end
  local channels, dtype = load_args('decode_jpeg', opts)
  return T.take(C.dr_jpeg_decode(ffi.cast('const uint8_t *', bytes), #bytes, name or '<bytes>',
                                 channels, dtype, T.out_box))
end

return M
