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

-- torch's _Formatter: returns format(v) -> padded string, chosen from the
-- printed values. Floats: integer-valued ("1."), fixed ("%.4f") or scientific
-- ("%.4e"), the width taken over nonzero finite values only (so nan, inf and
-- 0 do not widen a column); integers and bools: the widest value.
local function make_formatter(values, code)
  local width = 1
  local fmt
  if not dtypes.is_float(code) then
    local is_bool = code == C.DR_BOOL
    fmt = function(v)
      if is_bool then return v ~= 0 and 'True' or 'False' end
      return ('%d'):format(v)
    end
    for _, v in ipairs(values) do width = math.max(width, #fmt(v)) end
  else
    local int_mode, lo, hi, finite = true, math.huge, 0, {}
    for _, v in ipairs(values) do
      if not special(v) and v ~= 0 then
        finite[#finite + 1] = v
        if v ~= math.ceil(v) then int_mode = false end
        local a = math.abs(v)
        lo, hi = math.min(lo, a), math.max(hi, a)
      end
    end
    local sci = #finite > 0 and (hi / lo > 1000 or hi > 1e8 or (not int_mode and lo < 1e-4))
    local pattern = sci and ('%.' .. PRECISION .. 'e') or
                    (int_mode and '%.0f' or ('%.' .. PRECISION .. 'f'))
    local dot = int_mode and not sci
    fmt = function(v)
      local s = special(v)
      if s then return s end
      if v == 0 and 1 / v < 0 then return dot and '-0.' or pattern:format(-0.0) end
      return pattern:format(v) .. (dot and '.' or '')
    end
    for _, v in ipairs(finite) do width = math.max(width, #fmt(v)) end
  end
  return function(v)
    local s = fmt(v)
    return (' '):rep(width - #s) .. s
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

local function layout(p, values, fmt, summarize)
  local width = #fmt(values[1])
  local pos = 0
  local function nextval()
    pos = pos + 1
    return fmt(values[pos])
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

-- torch's _add_suffixes: ", suffix" on the last line while it fits in 80
-- columns, else on a new line indented under "tensor(".
local function add_suffixes(text, suffixes, indent)
  local parts = { text }
  local nl = text:match('.*()\n')
  local last_len = #text - (nl or 0) + (nl and 1 or 2) -- torch: len - rfind('\n') + 1
  for _, suffix in ipairs(suffixes) do
    if last_len + #suffix + 2 > LINEWIDTH then
      parts[#parts + 1] = ',\n' .. (' '):rep(indent) .. suffix
      last_len = indent + #suffix
    else
      parts[#parts + 1] = ', ' .. suffix
      last_len = last_len + #suffix + 2
    end
  end
  return table.concat(parts) .. ')'
end

function M.tensor(t)
  local p = t.ptr
  local prefix = 'tensor('
  local suffixes = {}
  local code = p.scalar_type
  if p.device.type ~= C.DR_CPU then
    suffixes[#suffixes + 1] = ("device='%s'"):format(dtypes.device_name(p.device))
  end
  local dtype_suffix = 'dtype=dr.' .. dtypes.names[code]
  local autograd_suffix -- torch: requires_grad=True on leaves, grad_fn=<...> after ops
  if C.dr_tensor_requires_grad(p) ~= 0 then
    autograd_suffix = C.dr_tensor_is_leaf(p) ~= 0 and 'requires_grad=True'
                      or ('grad_fn=<%s>'):format(t.grad_fn)
  end
  local numel = tonumber(C.dr_tensor_numel(p))
  local body
  if p.storage == nil then
    body = '<freed>'
    suffixes[#suffixes + 1] = 'size=' .. size_tuple(p)
  elseif numel == 0 then
    body = '[]'
    -- no values to infer the dtype from: show any but the default
    if p.ndim ~= 1 then suffixes[#suffixes + 1] = 'size=' .. size_tuple(p) end
    if code ~= C.DR_F32 then suffixes[#suffixes + 1] = dtype_suffix end
  else
    if code ~= C.DR_F32 and code ~= C.DR_I64 and code ~= C.DR_BOOL then
      suffixes[#suffixes + 1] = dtype_suffix
    end
    local summarize = numel > THRESHOLD
    local values = collect(p, summarize)
    local fmt = make_formatter(values, code)
    body = p.ndim == 0 and fmt(values[1]) or layout(p, values, fmt, summarize)
  end
  suffixes[#suffixes + 1] = autograd_suffix
  return add_suffixes(prefix .. body, suffixes, #prefix)
end

return M
