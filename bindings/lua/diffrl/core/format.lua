-- diffrl.core.format: tostring(tensor) in PyTorch's layout (torch/_tensor_str.py):
-- precision 4, summarised past 1000 elements with 3 edge items, 80 columns,
-- fixed / integer-valued / scientific notation chosen the way torch chooses.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local dtypes = require 'diffrl.core.dtype'
local C = api.C

local M = {}

local PRECISION, THRESHOLD, EDGE, LINEWIDTH = 4, 1000, 3, 80

local function special(v)
  if v ~= v then return 'nan' end
  if v == math.huge then return 'inf' end
  if v == -math.huge then return '-inf' end
end

-- A function value -> string (unpadded), chosen over all printed values.
local function make_formatter(values, code)
  if code == C.DR_BOOL then
    return function(v) return v ~= 0 and 'True' or 'False' end
  end
  if not dtypes.is_float(code) then
    return function(v) return ('%d'):format(v) end
  end
  local int_mode, lo, hi = true, math.huge, 0
  for _, v in ipairs(values) do
    if not special(v) then
      if v ~= math.ceil(v) then int_mode = false end
      local a = math.abs(v)
      if a ~= 0 then
        lo = math.min(lo, a)
        hi = math.max(hi, a)
      end
    end
  end
  local sci
  if hi == 0 then sci = false
  elseif int_mode then sci = hi / lo > 1000 or hi > 1e8
  else sci = hi / lo > 1000 or hi > 1e8 or lo < 1e-4 end
  local fmt = sci and ('%.' .. PRECISION .. 'e') or
              (int_mode and '%.0f.' or ('%.' .. PRECISION .. 'f'))
  return function(v)
    local s = special(v)
    if s then return s end
    if v == 0 then v = 0 * (1 / v > 0 and 1 or -1) end -- keep -0. as torch does
    return fmt:format(v)
  end
end

-- Values to print, in print order, reading only the summarised slices.
local function collect(p, summarize)
  local nd = p.ndim
  local idx = ffi.new('int64_t[8]')
  local out = ffi.new('double[1]')
  local values = {}
  local function rec(d)
    if d == nd then
      if C.dr_tensor_get(p, idx, out) ~= 0 then error(ffi.string(C.dr_last_error()), 0) end
      values[#values + 1] = out[0]
      return
    end
    local n = tonumber(p.sizes[d])
    local i = 0
    while i < n do
      if summarize and n > 2 * EDGE and i == EDGE then i = n - EDGE end
      idx[d] = i
      rec(d + 1)
      i = i + 1
    end
  end
  rec(0)
  return values
end

local function layout(p, values, fmt, width, summarize)
  local pos = 0
  local function nextval()
    pos = pos + 1
    local s = fmt(values[pos])
    return (' '):rep(width - #s) .. s
  end
  local function rec(d, indent)
    local n = tonumber(p.sizes[d])
    local cut = summarize and n > 2 * EDGE
    if d == p.ndim - 1 then
      local items = {}
      for i = 0, n - 1 do
        if cut and i == EDGE then items[#items + 1] = ' ...' end
        if not cut or i < EDGE or i >= n - EDGE then items[#items + 1] = nextval() end
      end
      local per_line = math.max(1, math.floor((LINEWIDTH - indent) / (width + 2)))
      local lines = {}
      for i = 1, #items, per_line do
        lines[#lines + 1] = table.concat(items, ', ', i, math.min(i + per_line - 1, #items))
      end
      return '[' .. table.concat(lines, ',\n' .. (' '):rep(indent + 1)) .. ']'
    end
    local parts = {}
    for i = 0, n - 1 do
      if cut and i == EDGE then parts[#parts + 1] = '...' end
      if not cut or i < EDGE or i >= n - EDGE then parts[#parts + 1] = rec(d + 1, indent + 1) end
    end
    local sep = ',' .. ('\n'):rep(p.ndim - d - 1) .. (' '):rep(indent + 1)
    return '[' .. table.concat(parts, sep) .. ']'
  end
  return rec(0, #'tensor(')
end

local function size_tuple(p)
  local s = {}
  for i = 0, p.ndim - 1 do s[#s + 1] = tostring(tonumber(p.sizes[i])) end
  return '(' .. table.concat(s, ', ') .. (p.ndim == 1 and ',)' or ')')
end

function M.tensor(t)
  local p = t.ptr
  local suffix = {}
  local code = p.scalar_type
  if code ~= C.DR_F32 and code ~= C.DR_I64 and code ~= C.DR_BOOL then
    suffix[#suffix + 1] = 'dtype=dr.' .. dtypes.names[code]
  end
  if p.device.type ~= C.DR_CPU then
    suffix[#suffix + 1] = ("device='%s'"):format(dtypes.device_name(p.device))
  end
  local body
  local numel = tonumber(C.dr_tensor_numel(p))
  if p.storage == nil then
    body = '<freed>'
    table.insert(suffix, 1, 'size=' .. size_tuple(p))
  elseif numel == 0 then
    body = '[]'
    if not (p.ndim == 1) then table.insert(suffix, 1, 'size=' .. size_tuple(p)) end
  else
    local summarize = numel > THRESHOLD
    local values = collect(p, summarize)
    local fmt = make_formatter(values, code)
    local width = 0
    for _, v in ipairs(values) do width = math.max(width, #fmt(v)) end
    body = p.ndim == 0 and fmt(values[1]) or layout(p, values, fmt, width, summarize)
  end
  local tail = #suffix > 0 and (', ' .. table.concat(suffix, ', ')) or ''
  return 'tensor(' .. body .. tail .. ')'
end

return M
