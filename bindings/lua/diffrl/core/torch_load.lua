-- diffrl.core.torch_load: PyTorch checkpoints (torch.save's zip format) read safely
-- (core/io/torch_load.c: a restricted unpickler that builds only tensors and plain
-- containers; any other class is an error naming it, nothing is ever executed).
--
--   local tensors, values = dr.torch_load('ImageReward.pt')
--   tensors['blip.text_encoder.embeddings.word_embeddings.weight']  -- a cpu tensor
--   values['epoch']                                                -- 3
--
-- Nested dict keys are joined with '.', list / tuple items named by their 0-based
-- index (as state_dict keys are). `values` holds the non-tensor leaves: numbers
-- (integers beyond 2^53 lose precision), booleans and strings (bytes too); None
-- leaves are left out. Tensors point into the file's copy-on-write mapping (no copy;
-- writing to them never changes the file); float64 loads as float32, int16 / int8
-- as int32.
--
-- opts.key: the sub-dict to return, its prefix stripped ('state_dict', 'model', ...;
-- false: the whole checkpoint). Default: a checkpoint whose tensors all live under
-- 'state_dict.' (a training checkpoint {state_dict = ..., epoch = ...}) gives that
-- state dict; anything else is returned whole.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise

local M = {}

local box = ffi.new('dr_torch_checkpoint*[1]')
local len_box = ffi.new('size_t[1]')

local KIND = { [0] = 'tensor', 'none', 'bool', 'int', 'float', 'string', 'bytes' }

local check = api.check

-- Every entry of the checkpoint: a list of { name, kind, value }.
local function read_entries(path)
  check(C.dr_torch_load(path, box))
  local h = ffi.gc(box[0], C.dr_torch_checkpoint_free)
  box[0] = nil
  local out = {}
  for i = 0, tonumber(C.dr_torch_checkpoint_count(h)) - 1 do
    local kind = KIND[C.dr_torch_checkpoint_kind(h, i)]
    local value
    if kind == 'tensor' then
      value = T.take(C.dr_torch_checkpoint_tensor(h, i, T.out_box))
    elseif kind == 'bool' then
      value = C.dr_torch_checkpoint_int(h, i) ~= 0
    elseif kind == 'int' or kind == 'float' then
      value = C.dr_torch_checkpoint_number(h, i)
    elseif kind == 'string' or kind == 'bytes' then
      local s = C.dr_torch_checkpoint_string(h, i, len_box)
      value = ffi.string(s, len_box[0])
    end
    out[#out + 1] = { name = ffi.string(C.dr_torch_checkpoint_name(h, i)), kind = kind, value = value }
  end
  ffi.gc(h, nil)
  C.dr_torch_checkpoint_free(h)
  return out
end

local function under(name, prefix)
  if prefix == '' then return name end
  if name:sub(1, #prefix + 1) == prefix .. '.' then return name:sub(#prefix + 2) end
  return nil
end

function M.torch_load(path, opts)
  if type(path) ~= 'string' then raise('torch_load: path must be a string, got ' .. type(path)) end
  local key
  if opts ~= nil then
    if type(opts) ~= 'table' then raise('torch_load: options must be a table, got ' .. type(opts)) end
    for k in pairs(opts) do
      if k ~= 'key' then raise(("torch_load: unknown option '%s' (the option is key)"):format(tostring(k))) end
    end
    key = opts.key
    if key ~= nil and key ~= false and (type(key) ~= 'string' or key == '') then
      raise('torch_load: key must be a non-empty string or false, got ' .. tostring(key))
    end
  end
  local entries = read_entries(path)
  if key == nil then
    local all, any = true, false
    for _, e in ipairs(entries) do
      if e.kind == 'tensor' then
        any = true
        if not under(e.name, 'state_dict') then all = false end
      end
    end
    key = any and all and 'state_dict' or ''
  elseif key == false then
    key = ''
  end
  local tensors, values, found = {}, {}, key == ''
  for _, e in ipairs(entries) do
    local name = under(e.name, key)
    if name then
      found = true
      if e.kind == 'tensor' then tensors[name] = e.value
      elseif e.value ~= nil then values[name] = e.value end
    end
  end
  if not found then
    raise(("torch_load: %s has no entry '%s' (keys: %s)"):format(path, key, (function()
      local seen, list = {}, {}
      for _, e in ipairs(entries) do
        local top = e.name:match('^[^.]*')
        if not seen[top] then seen[top] = true list[#list + 1] = top end
        if #list == 12 then list[#list + 1] = '...' break end
      end
      return table.concat(list, ', ')
    end)()))
  end
  return tensors, values
end

return M
