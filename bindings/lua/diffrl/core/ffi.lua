-- diffrl.core.ffi: loads libdiffrl and declares its API from the library's own
-- copy of core/include/diffrl.h (dr_header_text), as torch7's THNN.lua does with
-- its header: one declaration, no glue per function. Also the error path: a C
-- status becomes a Lua error at the caller's file:line.
local ffi = require 'ffi'

local M = {}

ffi.cdef 'const char *dr_header_text(void);'

local function has_api(lib)
  return pcall(function() return lib.dr_header_text end)
end

local this_file = debug.getinfo(1, 'S').source:match('^@(.*)$') or ''
local this_dir = this_file:match('^(.*)/[^/]*$') or '.'

-- Tensors are released by finalizers, which may run while the Lua state closes,
-- after the library handle itself was collected: mark the library RTLD_NODELETE
-- so its code stays mapped until the process ends.
local function pin_library(name)
  pcall(ffi.cdef, 'void *dlopen(const char *file, int mode);')
  local file = (name:find('/') or name:find('%.so')) and name or ('lib' .. name .. '.so')
  local RTLD_LAZY, RTLD_NOLOAD, RTLD_NODELETE = 0x1, 0x4, 0x1000 -- glibc's values
  pcall(function() ffi.C.dlopen(file, RTLD_LAZY + RTLD_NOLOAD + RTLD_NODELETE) end)
end

-- The library: linked into the diffrl host; else $DIFFRL_LIB, the system
-- library path, or the build/ folder of the source checkout this file is in.
local function load_library()
  if has_api(ffi.C) then return ffi.C, 'diffrl host' end
  local candidates = {}
  local env = os.getenv('DIFFRL_LIB')
  if env and env ~= '' then candidates[#candidates + 1] = env end
  candidates[#candidates + 1] = 'diffrl'
  local root = this_dir:match('^(.-)/?bindings/lua/diffrl/core$')
  if root then
    candidates[#candidates + 1] = (root == '' and '.' or root) .. '/build/libdiffrl.so'
  end
  local tried = {}
  for _, name in ipairs(candidates) do
    local ok, lib = pcall(ffi.load, name)
    if ok and has_api(lib) then
      pin_library(name)
      return lib, name
    end
    tried[#tried + 1] = name .. (ok and ' (no diffrl symbols)' or (': ' .. tostring(lib)))
  end
  error('diffrl: cannot load libdiffrl. Tried:\n  ' .. table.concat(tried, '\n  ') ..
        '\nBuild it (cmake --build build) or set DIFFRL_LIB=/path/to/libdiffrl.so', 0)
end

local C, where_loaded = load_library()
M.C = C
M.library = where_loaded

-- The header minus the preprocessor: drop the C++ guard block, then # lines.
local function strip_preprocessor(text)
  text = text:gsub('\n#ifdef __cplusplus\n.-\n#endif', '\n')
  local out = {}
  for line in text:gmatch('[^\n]*') do
    if not line:match('^%s*#') then out[#out + 1] = line end
  end
  return table.concat(out, '\n')
end

M.header = strip_preprocessor(ffi.string(C.dr_header_text()))
ffi.cdef(M.header)

-- ---- errors ---------------------------------------------------------------
-- Frames from these directories are the library's own; an error is reported at
-- the first frame outside them (the recipe or REPL line that made the call).
local internal_prefixes = { (this_dir:gsub('/core$', '/')) }

function M.add_internal_dir(dir)
  internal_prefixes[#internal_prefixes + 1] = (dir:gsub('/?$', '/'))
end

local function is_internal(source)
  if source:sub(1, 1) ~= '@' then return false end
  local path = source:sub(2)
  for _, p in ipairs(internal_prefixes) do
    if path:sub(1, #p) == p then return true end
  end
  return false
end

-- "file:line: " of the first frame outside diffrl, or "" if there is none.
function M.caller_position()
  for level = 3, 60 do
    local info = debug.getinfo(level, 'Sl')
    if not info then break end
    if info.what ~= 'C' and info.currentline > 0 and not is_internal(info.source) then
      return info.short_src .. ':' .. info.currentline .. ': '
    end
  end
  return ''
end

-- Raises the message of a failed C call at the user's position.
function M.raise(msg)
  error(M.caller_position() .. msg, 0)
end

-- Checks an options table of `op` against the set of allowed keys (positional
-- entries, numbers, are the caller's): nil gives {}, an unknown key is an error
-- listing the options. Returns the table.
function M.check_options(op, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= 'table' then M.raise(('%s: options must be a table, got %s'):format(op, type(opts))) end
  for k in pairs(opts) do
    if type(k) ~= 'number' and not allowed[k] then
      local names = {}
      for name in pairs(allowed) do names[#names + 1] = name end
      table.sort(names)
      M.raise(("%s: unknown option '%s' (options: %s)"):format(op, tostring(k), table.concat(names, ', ')))
    end
  end
  return opts
end

-- opts[key] as a boolean; `default` when absent; anything else is an error naming it.
function M.bool_option(op, opts, key, default)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= 'boolean' then M.raise(('%s: %s must be true or false, got %s'):format(op, key, tostring(v))) end
  return v
end

function M.check(status)
  if status ~= 0 then M.raise(ffi.string(C.dr_last_error())) end
end

return M
