-- diffrl.core.io: safetensors files from Lua, as safetensors' torch API.
--
--   dr.save(path, { name = tensor, ... }[, { metadata = { key = 'value' } }])
--   local tensors, metadata = dr.load(path)          -- name -> tensor, key -> value
--   local f = dr.safetensors_open(path)              -- lazy: nothing read yet
--   f:keys()  f:get(name)  f:metadata()  f:close()
--
-- Tensors come back on the cpu, pointing into the file's copy-on-write mapping (no
-- copy): writing to them never changes the file, and they stay valid after
-- f:close(). Errors name the file (and the tensor) and point at the caller's line.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise

local M = {}

local file_box = ffi.new('dr_safetensors*[1]')

local check = api.check

local function check_path(op, path)
  if type(path) ~= 'string' then
    raise(('%s: path must be a string, got %s'):format(op, type(path)))
  end
end

-- ---- lazy file ----------------------------------------------------------------

local File = {}
File.__index = File
File.__tostring = function(f)
  return ('SafetensorsFile(%q%s)'):format(f.path, f._handle == nil and ', closed' or '')
end

local function handle(f, op)
  if getmetatable(f) ~= File then raise(op .. ': expected a safetensors file (use f:' .. op .. ')') end
  local h = f._handle
  if h == nil then raise(('%s: %s is closed'):format(op, f.path)) end
  return h
end

-- Tensor names, sorted (as safetensors' safe_open.keys()).
function File.keys(f)
  local h = handle(f, 'keys')
  local out = {}
  for i = 0, tonumber(C.dr_safetensors_count(h)) - 1 do
    out[i + 1] = ffi.string(C.dr_safetensors_name(h, i))
  end
  return out
end

function File.get(f, name)
  local h = handle(f, 'get')
  if type(name) ~= 'string' then
    raise(('get: tensor name must be a string, got %s'):format(type(name)))
  end
  return T.take(C.dr_safetensors_get(h, name, T.out_box))
end

-- The header's "__metadata__" as a table of strings ({} when there is none).
function File.metadata(f)
  local h = handle(f, 'metadata')
  local out = {}
  for i = 0, tonumber(C.dr_safetensors_metadata_count(h)) - 1 do
    local k = C.dr_safetensors_metadata_key(h, i)
    out[ffi.string(k)] = ffi.string(C.dr_safetensors_metadata(h, k))
  end
  return out
end

-- Closes the file now (else the GC does); tensors already taken stay valid.
function File.close(f)
  local h = f._handle
  if h == nil then return end
  f._handle = nil
  ffi.gc(h, nil)
  C.dr_safetensors_close(h)
end

function M.safetensors_open(path)
  check_path('safetensors_open', path)
  check(C.dr_safetensors_open(path, file_box))
  local h = ffi.gc(file_box[0], C.dr_safetensors_close)
  file_box[0] = nil
  return setmetatable({ _handle = h, path = path }, File)
end

-- ---- whole files --------------------------------------------------------------

function M.load(path)
  check_path('load', path)
  local f = M.safetensors_open(path)
  local ok, err = pcall(function()
    local tensors = {}
    for _, name in ipairs(f:keys()) do tensors[name] = f:get(name) end
    return { tensors, f:metadata() }
  end)
  f:close()
  if not ok then error(err, 0) end -- already positioned at the caller
  return err[1], err[2]
end

local function sorted_keys(t, op, what)
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= 'string' then
      raise(('%s: %s must be strings, got the %s key %s'):format(op, what, type(k), tostring(k)))
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

function M.save(path, tensors, opts)
  check_path('save', path)
  if type(tensors) ~= 'table' then
    raise(('save: expected a table of name = tensor, got %s'):format(type(tensors)))
  end
  local metadata = {}
  if opts ~= nil then
    if type(opts) ~= 'table' then raise('save: options must be a table, got ' .. type(opts)) end
    for k in pairs(opts) do
      if k ~= 'metadata' then
        raise(("save: unknown option '%s' (the option is metadata)"):format(tostring(k)))
      end
    end
    metadata = opts.metadata or {}
    if type(metadata) ~= 'table' then
      raise('save: metadata must be a table of strings, got ' .. type(metadata))
    end
  end
  local names = sorted_keys(tensors, 'save', 'tensor names')
  local n = #names
  local cnames = ffi.new('const char *[?]', n + 1)
  local ctensors = ffi.new('const dr_tensor *[?]', n + 1)
  for i, name in ipairs(names) do
    local t = tensors[name]
    if not T.is_tensor(t) then
      raise(("save: '%s' must be a tensor, got %s"):format(name, type(t)))
    end
    if name:find('\0', 1, true) then raise('save: tensor names cannot contain NUL characters') end
    cnames[i - 1], ctensors[i - 1] = name, t.ptr -- `names` and `tensors` keep them alive
  end
  local keys = sorted_keys(metadata, 'save', 'metadata keys')
  local ckeys = ffi.new('const char *[?]', #keys + 1)
  local cvalues = ffi.new('const char *[?]', #keys + 1)
  for i, k in ipairs(keys) do
    local v = metadata[k]
    if type(v) ~= 'string' then
      raise(("save: metadata '%s' must be a string, got %s"):format(k, type(v)))
    end
    if (k .. v):find('\0', 1, true) then raise('save: metadata cannot contain NUL characters') end
    ckeys[i - 1], cvalues[i - 1] = k, v
  end
  check(C.dr_safetensors_save(path, cnames, ctensors, n, ckeys, cvalues, #keys))
end

return M
