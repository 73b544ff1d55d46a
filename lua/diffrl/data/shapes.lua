-- diffrl.data.shapes: an endless stream of shapes-world image-caption pairs
-- (diffrl.shapes.sample), with the interface of diffrl.data.folder, for the
-- pretraining loss of recipes on the shapes world (recipes/quickstart.lua).
--
--   local src = require('diffrl.data.shapes').open { seed = 0, resolution = 32 }
--   local images, captions = src:next(8)   -- float [8, 3, 32, 32] in [0, 1], 8 captions
--   src:state() / src:set_state(t)         -- the position: pair i is scene i of the stream
--
-- Options: seed, resolution (32), max_objects (3), open_color (0: the probability
-- that a caption leaves the colours open), open_color_mix (nil: the colour weights of
-- those scenes, shapes.sample's), offset (0: where the stream starts).
-- Pairs come from the 'train' split: held-out captions never appear.
local api = require 'diffrl.core.ffi'
local shapes = require 'diffrl.shapes'

local raise, check_options = api.raise, api.check_options
local M = {}

local Source = {}
Source.__index = Source

local OPTIONS = { seed = true, resolution = true, max_objects = true, open_color = true, open_color_mix = true,
                  offset = true }

local function integer(op, v, key, default, lo)
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < lo then
    raise(('%s: %s must be an integer >= %d, got %s'):format(op, key, lo, tostring(v)))
  end
  return v
end

function M.open(opts)
  local op = 'data.shapes'
  opts = check_options(op, opts, OPTIONS)
  local self = setmetatable({
    op = op,
    seed = integer(op, opts.seed, 'seed', 0, 0),
    resolution = integer(op, opts.resolution, 'resolution', 32, 8),
    max_objects = integer(op, opts.max_objects, 'max_objects', 3, 1),
    open_color = opts.open_color or 0,
    open_color_mix = shapes.check_open_color_mix(op, opts.open_color_mix),
    count = integer(op, opts.offset, 'offset', 0, 0),
  }, Source)
  if type(self.open_color) ~= 'number' or self.open_color < 0 or self.open_color > 1 then
    raise(('%s: open_color must be a probability in [0, 1], got %s'):format(op, tostring(opts.open_color)))
  end
  self.fingerprint = ('resolution=%d;max_objects=%d;open_color=%.17g'):format(self.resolution, self.max_objects,
                                                                               self.open_color)
  if self.open_color_mix then
    local w = {}
    for i, x in ipairs(self.open_color_mix) do w[i] = ('%.17g'):format(x) end
    self.fingerprint = self.fingerprint .. ';open_color_mix=' .. table.concat(w, ',')
  end
  return self
end

function Source:next(n)
  if type(n) ~= 'number' or n % 1 ~= 0 or n < 1 then
    raise(('%s: next(n) needs an integer n >= 1, got %s'):format(self.op, tostring(n)))
  end
  local images, captions = shapes.sample(n, { seed = self.seed, offset = self.count, resolution = self.resolution,
                                              max_objects = self.max_objects, open_color = self.open_color,
                                              open_color_mix = self.open_color_mix })
  self.count = self.count + n
  return images, captions
end

function Source:state()
  return { kind = 'shapes_pairs', seed = self.seed, fingerprint = self.fingerprint, count = self.count }
end

function Source:set_state(st)
  if type(st) ~= 'table' or st.kind ~= 'shapes_pairs' then
    raise(("%s: set_state: expected the state of a shapes pair source, got %s"):format(self.op,
      type(st) == 'table' and ("kind '" .. tostring(st.kind) .. "'") or type(st)))
  end
  if st.seed ~= self.seed or st.fingerprint ~= self.fingerprint then
    raise(('%s: set_state: the state is of seed %s, %s; this source has seed %d, %s'):format(self.op,
      tostring(st.seed), tostring(st.fingerprint), self.seed, self.fingerprint))
  end
  if type(st.count) ~= 'number' or st.count % 1 ~= 0 or st.count < 0 then
    raise(self.op .. ': set_state: bad count ' .. tostring(st.count))
  end
  self.count = st.count
end

return M
