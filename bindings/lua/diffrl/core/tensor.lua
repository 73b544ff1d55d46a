-- diffrl.core.tensor: the Tensor type over libdiffrl's dr_tensor.
--
-- A Lua tensor is a small struct { dr_tensor *ptr } whose __gc drops one C
-- reference; t:free() releases the data at once (later use is a clear error).
-- Names and argument order follow torch; dimensions and indices are 1-based
-- (negative from the end), converted here for C, which is 0-based.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local dtypes = require 'diffrl.core.dtype'

local C, raise = api.C, api.raise

ffi.cdef 'typedef struct dr_ref { dr_tensor *ptr; } dr_ref;'

local M = {}
local Tensor = {}  -- methods
local getters = {} -- properties: t.shape, t.dtype, ...
local setters = {} -- assignable properties: t.grad = nil
M.Tensor, M.getters, M.setters = Tensor, getters, setters

local ref_t
local out_box = ffi.new('dr_tensor*[1]')
local sizes_buf = ffi.new('int64_t[8]')
local dims_buf = ffi.new('int32_t[8]')
local double_box = ffi.new('double[1]')

-- Lua's GC sees only the small handles, not the storage behind them: when C
-- memory on a device doubles since the last collection, collect, so loops that
-- drop tensors without free() stay bounded. Thresholds per device type.
local GC_FLOOR = 256 * 2 ^ 20
local gc_at = { [0] = GC_FLOOR, GC_FLOOR }
local function collect_if_needed(device_type)
  if C.dr_memory_allocated(device_type) > gc_at[device_type] then
    collectgarbage()
    gc_at[device_type] = math.max(GC_FLOOR, 2 * tonumber(C.dr_memory_allocated(device_type)))
  end
end

-- Wraps the tensor a C call wrote to out_box, or raises its error.
local function take(status)
  if status ~= 0 then raise(ffi.string(C.dr_last_error())) end
  local p = out_box[0]
  out_box[0] = nil
  local t = ref_t(p)
  collect_if_needed(p.device.type)
  return t
end
M.take, M.out_box = take, out_box

local check = api.check

local function is_tensor(x) return type(x) == 'cdata' and ffi.istype(ref_t, x) end
M.is_tensor = is_tensor

local function ptr(x, what)
  if not is_tensor(x) then
    raise(('%s: expected a tensor, got %s'):format(what or 'argument', type(x)))
  end
  return x.ptr
end

local function is_int(x) return type(x) == 'number' and x % 1 == 0 and x == x end

-- ---- argument conversion ---------------------------------------------------

-- 1-based dim (negative from the end) -> C's 0-based dim.
local function cdim(d, op)
  if not is_int(d) then raise(('%s: dimension must be an integer, got %s'):format(op, tostring(d))) end
  if d == 0 then
    raise(op .. ': dimension 0 does not exist; dims are 1-based (1 is the first, -1 the last)')
  end
  return d > 0 and d - 1 or d
end
M.cdim = cdim

-- Sizes from (n, m, ..., [opts]) or ({n, m} or a Size, [opts]); a first table
-- with no list part and some keys is the options (a 0-d shape).
-- Returns ndim, a C size buffer, and the options table (or nil).
local INFER_OPS = { view = true, reshape = true, expand = true } -- these take -1 sizes

local function sizes_from(op, ...)
  local allow_infer = INFER_OPS[op]
  local first = ...
  local list, opts = {}, nil
  if type(first) == 'table' then
    if first[1] ~= nil or next(first) == nil or getmetatable(first) == M.Size then
      list, opts = first, select(2, ...)
    else
      opts = first
    end
  else
    for i = 1, select('#', ...) do
      local v = select(i, ...)
      if type(v) == 'table' then opts = v; break end
      list[i] = v
    end
  end
  local n = #list
  if n > 8 then raise(('%s: %d dimensions given, at most 8 are supported'):format(op, n)) end
  for i = 1, n do
    local s = list[i]
    if not is_int(s) then
      raise(('%s: size %d must be an integer, got %s'):format(op, i, tostring(s)))
    end
    if s < 0 and not allow_infer then
      raise(('%s: negative size %d in dimension %d'):format(op, s, i))
    end
    sizes_buf[i - 1] = s
  end
  return n, sizes_buf, opts
end
M.sizes_from = sizes_from

-- Lua number -> 0-d tensor whose dtype does not change the result type of an op
-- with `like` (torch: a Python scalar only promotes int -> float).
local function scalar_like(x, like)
  local code = like.scalar_type
  if type(x) == 'boolean' then x = x and 1 or 0
  elseif not dtypes.is_float(code) and not is_int(x) then code = C.DR_F32
  elseif code == C.DR_BOOL then code = C.DR_I64 end
  return take(C.dr_tensor_full(nil, 0, code, like.device, x, out_box))
end

local function scalar_ok(x) return type(x) == 'number' or type(x) == 'boolean' end

-- Both operands as tensors (numbers become 0-d tensors). Returns the Lua
-- handles, not raw pointers, so a temporary scalar tensor stays alive (and is
-- not collected) until the C call that uses it.
local function operands(a, b, op)
  local ta, tb = is_tensor(a), is_tensor(b)
  if ta and tb then return a, b end
  if ta and scalar_ok(b) then return a, scalar_like(b, a.ptr) end
  if tb and scalar_ok(a) then return scalar_like(a, b.ptr), b end
  raise(('%s: unsupported operand types %s and %s'):format(op, type(a), type(b)))
end

-- ---- the type ---------------------------------------------------------------

local mt = {}
mt.__index = function(t, k)
  local m = Tensor[k]
  if m ~= nil then return m end
  local g = getters[k]
  if g then return g(t) end
  if type(k) == 'number' then return t:select(1, k) end
  raise(("Tensor has no method or property '%s'"):format(tostring(k)))
end
mt.__newindex = function(t, k, v)
  local set = setters[k]
  if set then return set(t, v) end
  if type(k) == 'number' then
    local row = t:select(1, k)
    if is_tensor(v) then row:copy_(v) else row:fill_(v) end
    return
  end
  raise(("cannot set '%s' on a Tensor"):format(tostring(k)))
end
mt.__gc = function(r)
  local p = r.ptr
  if p ~= nil then
    r.ptr = nil
    C.dr_tensor_release(p)
  end
end
mt.__tostring = function(t) return require('diffrl.core.format').tensor(t) end
mt.__len = function(t)
  if t.ptr.ndim == 0 then raise('len() of a 0-d tensor') end
  return tonumber(t.ptr.sizes[0])
end
mt.__add = function(a, b) local x, y = operands(a, b, 'add'); return take(C.dr_add(x.ptr, y.ptr, 1, out_box)) end
mt.__sub = function(a, b) local x, y = operands(a, b, 'sub'); return take(C.dr_sub(x.ptr, y.ptr, 1, out_box)) end
mt.__mul = function(a, b) local x, y = operands(a, b, 'mul'); return take(C.dr_mul(x.ptr, y.ptr, out_box)) end
mt.__div = function(a, b) local x, y = operands(a, b, 'div'); return take(C.dr_div(x.ptr, y.ptr, out_box)) end
mt.__unm = function(a) local x, y = operands(a, -1, 'neg'); return take(C.dr_mul(x.ptr, y.ptr, out_box)) end
mt.__eq = function(a, b) -- identity; elementwise comparison is t:eq(u)
  return is_tensor(a) and is_tensor(b) and a.ptr == b.ptr
end
ref_t = ffi.metatype('dr_ref', mt)
M.ref_t = ref_t

-- ---- Size: what t.shape returns ----------------------------------------------

local Size = {}
Size.__index = Size
Size.__tostring = function(s)
  local parts = {}
  for i = 1, #s do parts[i] = tostring(s[i]) end
  return 'dr.Size([' .. table.concat(parts, ', ') .. '])'
end
Size.__eq = function(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end
Size.__call = function(s) return s end -- so t:shape() and t.shape both work
function Size.numel(s) local n = 1; for i = 1, #s do n = n * s[i] end; return n end
M.Size = Size

local function size_of(p)
  local s = {}
  for i = 1, p.ndim do s[i] = tonumber(p.sizes[i - 1]) end
  return setmetatable(s, Size)
end

-- ---- properties ---------------------------------------------------------------

function getters.shape(t) return size_of(t.ptr) end
function getters.dtype(t) return dtypes.names[t.ptr.scalar_type] end
function getters.device(t) return dtypes.device_name(t.ptr.device) end
function getters.ndim(t) return t.ptr.ndim end
function getters.is_cuda(t) return t.ptr.device.type == C.DR_CUDA end

-- ---- shape and storage ---------------------------------------------------------

-- A 1-based (or negative) dim of p as a checked 0-based index.
local function dim_index(p, d, op)
  local cd = cdim(d, op)
  if cd < 0 then cd = cd + p.ndim end
  if cd < 0 or cd >= p.ndim then
    raise(('%s: dimension %d out of range for a %d-d tensor'):format(op, d, p.ndim))
  end
  return cd
end

function Tensor.size(t, d)
  local p = t.ptr
  if d == nil then return size_of(p) end
  return tonumber(p.sizes[dim_index(p, d, 'size')])
end
function Tensor.dim(t) return t.ptr.ndim end
function Tensor.numel(t) return tonumber(C.dr_tensor_numel(t.ptr)) end
function Tensor.is_contiguous(t) return C.dr_tensor_is_contiguous(t.ptr) ~= 0 end
function Tensor.stride(t, d)
  local p = t.ptr
  if d ~= nil then return tonumber(p.strides[dim_index(p, d, 'stride')]) end
  local s = {}
  for i = 1, p.ndim do s[i] = tonumber(p.strides[i - 1]) end
  return s
end
function Tensor.is_freed(t) return t.ptr.storage == nil end

-- Releases the data now; the tensor errors if used again.
function Tensor.free(t) C.dr_tensor_free(t.ptr) end

function Tensor.item(t)
  check(C.dr_tensor_item(t.ptr, double_box))
  local v = double_box[0]
  if t.ptr.scalar_type == C.DR_BOOL then return v ~= 0 end
  return v
end

-- Nested Lua tables (a number for a 0-d tensor), as torch's tolist().
function Tensor.tolist(t)
  local p = t.ptr
  local n = tonumber(C.dr_tensor_numel(p))
  local buf = ffi.new('double[?]', math.max(n, 1))
  check(C.dr_tensor_to_f64(p, buf, n))
  local is_bool = p.scalar_type == C.DR_BOOL
  local pos = 0
  local function build(d)
    if d == p.ndim then
      local v = buf[pos]
      pos = pos + 1
      if is_bool then return v ~= 0 end
      return v
    end
    local out = {}
    for i = 1, tonumber(p.sizes[d]) do out[i] = build(d + 1) end
    return out
  end
  return build(0)
end

-- ---- views -------------------------------------------------------------------

function Tensor.view(t, ...)
  local n, s = sizes_from('view', ...)
  return take(C.dr_tensor_view(t.ptr, s, n, out_box))
end
function Tensor.reshape(t, ...)
  local n, s = sizes_from('reshape', ...)
  return take(C.dr_tensor_reshape(t.ptr, s, n, out_box))
end
function Tensor.expand(t, ...)
  local n, s = sizes_from('expand', ...)
  return take(C.dr_tensor_expand(t.ptr, s, n, out_box))
end
function Tensor.permute(t, ...)
  local dims = type(...) == 'table' and (...) or { ... }
  if #dims > 8 then raise('permute: at most 8 dims') end
  for i = 1, #dims do dims_buf[i - 1] = cdim(dims[i], 'permute') end
  return take(C.dr_tensor_permute(t.ptr, dims_buf, #dims, out_box))
end
function Tensor.transpose(t, d0, d1)
  return take(C.dr_tensor_transpose(t.ptr, cdim(d0, 'transpose'), cdim(d1, 'transpose'), out_box))
end
-- torch.t: transpose of a matrix, identity for 0-d and 1-d.
function Tensor.t(t)
  local nd = t.ptr.ndim
  if nd > 2 then raise(('t: expects a tensor with <= 2 dimensions, got %d'):format(nd)) end
  if nd < 2 then return t end
  return t:transpose(1, 2)
end
-- narrow(dim, start, length): start is 1-based, negative from the end.
function Tensor.narrow(t, d, start, length)
  if not is_int(start) or start == 0 then
    raise(('narrow: start must be a non-zero integer (1-based), got %s'):format(tostring(start)))
  end
  if not is_int(length) then raise('narrow: length must be an integer') end
  return take(C.dr_tensor_narrow(t.ptr, cdim(d, 'narrow'), start > 0 and start - 1 or start,
                                 length, out_box))
end
-- select(dim, index): index is 1-based, negative from the end; drops the dim.
function Tensor.select(t, d, index)
  if not is_int(index) or index == 0 then
    raise(('select: index must be a non-zero integer (1-based), got %s'):format(tostring(index)))
  end
  return take(C.dr_tensor_select(t.ptr, cdim(d, 'select'), index > 0 and index - 1 or index,
                                 out_box))
end

-- ---- copies and casts -------------------------------------------------------------

function Tensor.contiguous(t) return take(C.dr_tensor_contiguous(t.ptr, out_box)) end
function Tensor.clone(t) return take(C.dr_tensor_clone(t.ptr, out_box)) end
-- to(dtype), to(device) or to{dtype=, device=} (torch's Tensor.to): a device is
-- 'cpu', 'cuda' or 'cuda:N'. Moving is differentiable (the gradient moves back).
local function is_device_name(s)
  return s == 'cpu' or s == 'cuda' or (type(s) == 'string' and s:match('^cuda:%d+$') ~= nil)
end
function Tensor.to(t, what)
  local dtype, device
  if type(what) == 'table' and not is_tensor(what) then
    dtype, device = what.dtype, what.device
  elseif is_device_name(what) then
    device = what
  else
    dtype = what
  end
  local r = t
  if dtype ~= nil then
    local code = dtypes.code(dtype)
    if code ~= r.ptr.scalar_type then r = take(C.dr_tensor_to_dtype(r.ptr, code, out_box)) end
  end
  if device ~= nil then
    local d = dtypes.device(device)
    if dtypes.device_name(d) ~= r.device then r = take(C.dr_tensor_to_device(r.ptr, d, out_box)) end
  end
  if r == t then r = take(C.dr_tensor_to_dtype(t.ptr, t.ptr.scalar_type, out_box)) end
  return r
end
-- cuda([index]) / cpu(): torch's names for to('cuda:N') / to('cpu').
function Tensor.cuda(t, index)
  return t:to(index and ('cuda:' .. index) or 'cuda')
end
function Tensor.cpu(t) return t:to('cpu') end
function Tensor.float(t) return t:to('float32') end
function Tensor.half(t) return t:to('float16') end
function Tensor.bfloat16(t) return t:to('bfloat16') end
function Tensor.long(t) return t:to('int64') end
function Tensor.int(t) return t:to('int32') end
function Tensor.bool(t) return t:to('bool') end
function Tensor.copy_(t, src)
  check(C.dr_tensor_copy_(t.ptr, ptr(src, 'copy_')))
  return t
end
function Tensor.fill_(t, v)
  if type(v) == 'boolean' then v = v and 1 or 0 end
  if type(v) ~= 'number' then raise('fill_: value must be a number, got ' .. type(v)) end
  check(C.dr_tensor_fill_(t.ptr, v))
  return t
end
function Tensor.zero_(t) return t:fill_(0) end

-- ---- math ---------------------------------------------------------------------------

function Tensor.add(a, b, alpha)
  local x, y = operands(a, b, 'add')
  return take(C.dr_add(x.ptr, y.ptr, alpha or 1, out_box))
end
function Tensor.sub(a, b, alpha)
  local x, y = operands(a, b, 'sub')
  return take(C.dr_sub(x.ptr, y.ptr, alpha or 1, out_box))
end
Tensor.mul, Tensor.div = mt.__mul, mt.__div
function Tensor.neg(a) return mt.__unm(a) end
function Tensor.matmul(a, b)
  return take(C.dr_matmul(ptr(a, 'matmul'), ptr(b, 'matmul'), out_box))
end
-- sum() over everything, sum(dim[, keepdim]) or sum({dims}[, keepdim]).
function Tensor.sum(t, dims, keepdim)
  local n = 0
  if type(dims) == 'table' then
    if #dims > 8 then raise(('sum: at most 8 dims, got %d'):format(#dims)) end
    for i = 1, #dims do dims_buf[i - 1] = cdim(dims[i], 'sum') end
    n = #dims
    if n == 0 then raise('sum: empty list of dims') end
  elseif dims ~= nil then
    dims_buf[0] = cdim(dims, 'sum')
    n = 1
  end
  return take(C.dr_sum(t.ptr, dims_buf, n, keepdim and 1 or 0, out_box))
end

return M
