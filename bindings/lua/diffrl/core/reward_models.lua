-- diffrl.core.reward_models: the reward models of core/models from Lua (issue 10).
--
--   local ir = dr.load_imagereward('ImageReward/')       -- ImageReward.pt or a .safetensors
--   local ir = dr.load_imagereward('ImageReward.safetensors', { med_config = 'med_config.json' })
--   local px = ir:imagereward_preprocess(images)          -- [B, 3, H, W] in [0, 1] -> [B, 3, 224, 224]
--   local scores = ir:imagereward_forward(px, ids, mask)  -- [B]; ids / mask int64 [B, L]
--   local s, img, txt = ir:imagereward_forward(px, ids, mask, { image_embeds = true, text_features = true })
--   m:load_tensors(tensors, { source = 'x.pt', prefix = '...', allow_missing = .. })
--
-- load_imagereward(path, opts): path is a folder (ImageReward.safetensors,
-- model.safetensors or ImageReward.pt in it, and med_config.json) or a weights
-- file (.safetensors, or .pt read by dr.torch_load); opts.med_config overrides the
-- config path; opts.vision_config ({ image_size, patch_size, hidden_size,
-- num_hidden_layers, num_attention_heads }) and opts.mlp_widths (4 ints) change the
-- official sizes (ViT-L/16 at 224, 1024-128-64-16) for small test models, as does an
-- imagereward_sizes.json ({ "vision_config": ..., "mlp_widths": ... }) beside the
-- weights (the official folder has none).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local models = require 'diffrl.core.models'

local C, raise = api.C, api.raise
local Model = models.ModelClass
local M = {}

local check = api.check

local read_file, file_exists = models._read_file, models._file_exists

local function tensor_arg(x, op, what, optional)
  if x == nil and optional then return nil end
  if not T.is_tensor(x) then raise(('%s: %s must be a tensor, got %s'):format(op, what, type(x))) end
  return x.ptr
end
M.tensor_arg = tensor_arg -- for clip_models.lua

-- m:load_tensors({ name = tensor, ... } or { {name, tensor}, ... }[, opts]): the
-- checks and report of m:load for tensors already in memory. opts: source (the name
-- in messages), prefix, allow_missing, allow_unexpected. Returns the count loaded.
function Model.load_tensors(m, tensors, opts)
  if getmetatable(m) ~= Model or m._h == nil then raise('load_tensors: expected a live model') end
  opts = opts or {}
  if type(tensors) ~= 'table' then raise('load_tensors: expected a table of tensors, got ' .. type(tensors)) end
  local list = {}
  if #tensors > 0 then
    for i, p in ipairs(tensors) do list[i] = p end
  else
    for k, v in pairs(tensors) do list[#list + 1] = { k, v } end
    table.sort(list, function(a, b) return a[1] < b[1] end)
  end
  local n = #list
  local names = ffi.new('const char *[?]', math.max(n, 1))
  local ptrs = ffi.new('dr_tensor *[?]', math.max(n, 1))
  for i, p in ipairs(list) do
    if type(p[1]) ~= 'string' then raise(('load_tensors: entry %d has a %s name'):format(i, type(p[1]))) end
    names[i - 1] = p[1]
    ptrs[i - 1] = tensor_arg(p[2], 'load_tensors', p[1])
  end
  local flags = (opts.allow_missing and C.DR_LOAD_ALLOW_MISSING or 0)
    + (opts.allow_unexpected and C.DR_LOAD_ALLOW_UNEXPECTED or 0)
  local count = ffi.new('int64_t[1]')
  check(C.dr_model_load_tensors(m._h, names, ptrs, n, opts.source or '(tensors)', opts.prefix, flags, count))
  return tonumber(count[0]), list -- list keeps the tensors alive until here
end

local function ir_handle(m, op)
  if getmetatable(m) ~= Model or m._h == nil then raise(op .. ': expected a live model') end
  if m.kind ~= 'imagereward' then raise(('%s: needs an imagereward model, got %s'):format(op, m.kind)) end
  return m._h
end

-- ir:imagereward_preprocess(images): ImageReward's transform on float images.
function Model.imagereward_preprocess(m, images)
  local h = ir_handle(m, 'imagereward_preprocess')
  return T.take(C.dr_imagereward_preprocess(h, tensor_arg(images, 'imagereward_preprocess', 'images'),
    T.out_box))
end

local boxes = { ffi.new('dr_tensor*[1]'), ffi.new('dr_tensor*[1]'), ffi.new('dr_tensor*[1]') }

-- ir:imagereward_forward(pixel_values, input_ids[, attention_mask][, opts]) -> scores [B]
-- (and image_embeds, text_features when opts asks for them).
function Model.imagereward_forward(m, px, ids, mask, opts)
  local h = ir_handle(m, 'imagereward_forward')
  if opts == nil and type(mask) == 'table' and not T.is_tensor(mask) then mask, opts = nil, mask end
  opts = opts or {}
  local op = 'imagereward_forward'
  check(C.dr_imagereward_forward(h, tensor_arg(px, op, 'pixel_values'), tensor_arg(ids, op, 'input_ids'),
    tensor_arg(mask, op, 'attention_mask', true), boxes[1],
    opts.image_embeds and boxes[2] or nil, opts.text_features and boxes[3] or nil))
  local out = {}
  for i = 1, 3 do
    out[i] = boxes[i][0] ~= nil and T.ref_t(boxes[i][0]) or nil
    boxes[i][0] = nil
  end
  return out[1], out[2], out[3]
end

local function weights_in(dir)
  for _, name in ipairs { 'ImageReward.safetensors', 'model.safetensors', 'ImageReward.pt' } do
    if file_exists(dir .. '/' .. name) then return dir .. '/' .. name end
  end
  raise(('load_imagereward: no weights in %s (expected ImageReward.safetensors, model.safetensors '
    .. 'or ImageReward.pt)'):format(dir))
end

-- The JSON config of the "imagereward" kind: med_config.json's text kept as it is.
function M.imagereward_config(med_text, opts)
  local cjson = require 'cjson'
  opts = opts or {}
  local parts = { '{"text_config": ' .. med_text }
  if opts.vision_config then parts[#parts + 1] = '"vision_config": ' .. cjson.encode(opts.vision_config) end
  if opts.mlp_widths then parts[#parts + 1] = '"mlp_widths": ' .. cjson.encode(opts.mlp_widths) end
  return table.concat(parts, ', ') .. '}'
end

function M.load_imagereward(path, opts)
  opts = opts or {}
  if type(path) ~= 'string' then raise('load_imagereward: path must be a folder or a weights file, got ' .. type(path)) end
  path = path:gsub('/+$', '')
  local is_dir = not path:match('%.safetensors$') and not path:match('%.pt$') and not path:match('%.pth$')
  local weights = is_dir and weights_in(path) or path
  if not file_exists(weights) then raise('load_imagereward: ' .. weights .. ' not found') end
  local dir = is_dir and path or (path:match('^(.*)/[^/]*$') or '.')
  local med = opts.med_config or (dir .. '/med_config.json')
  if not file_exists(med) then
    raise(('load_imagereward: %s not found (ImageReward ships med_config.json beside ImageReward.pt; '
      .. 'pass med_config = PATH)'):format(med))
  end
  local sizes = opts
  if not opts.vision_config and not opts.mlp_widths and file_exists(dir .. '/imagereward_sizes.json') then
    local ok, v = pcall(require('cjson').decode, read_file(dir .. '/imagereward_sizes.json', 'load_imagereward'))
    if not ok or type(v) ~= 'table' then
      raise(('load_imagereward: %s/imagereward_sizes.json is not a JSON object'):format(dir))
    end
    sizes = v
  end
  local config = M.imagereward_config(read_file(med, 'load_imagereward'), sizes)
  local m = models.Model('imagereward', config, { init = false, context = med })
  if weights:match('%.safetensors$') then
    m:load(weights)
  else
    local core = require 'diffrl.core.torch_load'
    if not core.torch_load then raise('load_imagereward: reading ' .. weights .. ' needs dr.torch_load') end
    local tensors = core.torch_load(weights)
    m:load_tensors(tensors, { source = weights })
  end
  m.path = weights
  return m
end

return M
