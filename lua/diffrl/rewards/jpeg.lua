-- diffrl.rewards.jpeg: DDPO's JPEG rewards (Black et al. 2023, ddpo_pytorch/rewards.py):
-- the size of each image saved by PIL as JPEG at quality 95, in kilobytes (bytes / 1000).
--   jpeg_incompressibility:  + size / 1000
--   jpeg_compressibility:    - size / 1000
-- Images [B, 3, H, W] in [0, 1] become bytes as DDPO's
-- (images * 255).round().clamp(0, 255) does; the encoder uses PIL's settings, so the
-- sizes are PIL's to the byte (core/io/jpeg.c; spec/rewards_spec.lua checks goldens).
local api = require 'diffrl.core.ffi'
local jpeg = require 'diffrl.core.jpeg'

local raise = api.raise
local M = {}

local OPTIONS = { quality = true }

local function options(op, opts)
  if opts == nil then opts = {} end
  if type(opts) ~= 'table' then raise(('%s: options must be a table, got %s'):format(op, type(opts))) end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      raise(("%s: unknown option '%s' (options: quality)"):format(op, tostring(k)))
    end
  end
  local q = opts.quality == nil and 95 or opts.quality
  if type(q) ~= 'number' or q % 1 ~= 0 or q < 1 or q > 100 then
    raise(('%s: quality must be an integer in [1, 100], got %s'):format(op, tostring(q)))
  end
  return q
end

-- Kilobytes of each image of the batch as JPEG at quality q.
local function kilobytes(images, q)
  local x = images:detach()
  if x.is_cuda then x = x:to { device = 'cpu' } end
  local out = {}
  for i = 1, x:size(1) do out[i] = jpeg.jpeg_size(x:select(1, i), q) / 1000 end
  return out
end

function M.incompressibility(opts)
  local q = options('jpeg_incompressibility', opts)
  return function(images)
    return kilobytes(images, q), {}
  end
end

function M.compressibility(opts)
  local q = options('jpeg_compressibility', opts)
  return function(images)
    local kb = kilobytes(images, q)
    for i = 1, #kb do kb[i] = -kb[i] end
    return kb, {}
  end
end

return M
