-- diffrl.core.ops_shape: joining and splitting (cat, stack, split, chunk,
-- unsqueeze, squeeze, flatten), indexing (index_select, gather, embedding,
-- where), reductions (mean, var, std, max, min, argmax, argmin, cumsum), ranges
-- (arange, linspace) and random ops (randint, normal_, dropout), as torch names
-- them. Each is a Tensor method where torch has one, and a functional form in
-- the returned table (dr.cat{a, b}, dr.mean(t, 2)).
--
-- Dims are 1-based (negative from the end) and so are INDICES: index_select,
-- gather and embedding take indices 1..n, and max/min/argmax/argmin return
-- indices 1..n, as torch7 did. The C library is 0-based: this wrapper passes
-- `index - 1` (a temporary int64 tensor) and adds 1 to the indices it returns.
-- An out-of-range index is reported with the number the caller wrote:
--   index_select: index 6 is out of range for dimension 1 with size 5 (indices are 1..5)
-- Index arguments are integer tensors (any integer dtype) or Lua lists of integers.
-- Values are not indices: arange, linspace and randint give torch's values
-- (dr.arange(5) is 0, 1, 2, 3, 4).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local dtypes = require 'diffrl.core.dtype'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local Tensor, take, out_box, cdim = T.Tensor, T.take, T.out_box, T.cdim
local is_tensor = T.is_tensor

local M = {}

local dims_buf = ffi.new('int32_t[8]')
local sizes_buf = ffi.new('int64_t[8]')
local out_box2 = ffi.new('dr_tensor*[1]')

local function is_int(x) return type(x) == 'number' and x % 1 == 0 and x == x end

local check = api.check

local function need_tensor(x, op, what)
  if not is_tensor(x) then
    raise(('%s: %s must be a tensor, got %s'):format(op, what or 'input', type(x)))
  end
  return x
end

-- A 1-based dim that may be nil (then `default`).
local function dim_or(d, default, op)
  if d == nil then d = default end
  return cdim(d, op)
end

-- Fills dims_buf from a dim, a list of dims or nil (all); returns the count.
local function dims_arg(dims, op)
  if dims == nil then return 0 end
  if type(dims) == 'table' then
    if #dims == 0 then raise(op .. ': empty list of dims') end
    if #dims > 8 then raise(('%s: at most 8 dims, got %d'):format(op, #dims)) end
    for i = 1, #dims do dims_buf[i - 1] = cdim(dims[i], op) end
    return #dims
  end
  dims_buf[0] = cdim(dims, op)
  return 1
end

-- ---- 1-based indices <-> C's 0-based ones --------------------------------------

local ones = {} -- a 0-d int64 1 per device, kept for the index conversions
local function one_on(device)
  local key = tonumber(device.type) * 65536 + tonumber(device.index)
  local t = ones[key]
  if not t then
    t = take(C.dr_tensor_full(nil, 0, C.DR_I64, device, 1, out_box))
    ones[key] = t
  end
  return t
end

-- Raises unless every leaf of the nested list is an integer.
local function check_int_list(list, op, path)
  for i = 1, #list do
    local v = list[i]
    if type(v) == 'table' then check_int_list(v, op, path .. '[' .. i .. ']')
    elseif not is_int(v) then
      raise(('%s: index%s[%d] of the list must be an integer, got %s'):format(op, path, i, tostring(v)))
    end
  end
end

-- 1-based indices (an integer tensor or a nested list of integers) as a 0-based
-- int64 tensor on `device`.
local function zero_based(idx, op, device)
  if type(idx) == 'table' and not is_tensor(idx) then
    check_int_list(idx, op, '')
    idx = require('diffrl.core.factory').tensor(idx, { dtype = 'int64',
                                                       device = dtypes.device_name(device) })
  end
  if not is_tensor(idx) then
    raise(('%s: index must be an integer tensor or a list of integers, got %s'):format(op, type(idx)))
  end
  local code = idx.ptr.scalar_type
  if dtypes.is_float(code) or code == C.DR_BOOL then
    raise(('%s: index must be an integer tensor, got %s'):format(op, dtypes.names[code]))
  end
  return take(C.dr_sub(idx.ptr, one_on(idx.ptr.device).ptr, 1, out_box))
end

-- C's 0-based int64 indices (a fresh tensor) as 1-based ones.
local function one_based(idx)
  return take(C.dr_add(idx.ptr, one_on(idx.ptr.device).ptr, 1, out_box))
end

-- ---- generators ------------------------------------------------------------------

local function generator_of(opts, op)
  local g = opts and opts.generator
  if g == nil then return nil end
  if not ffi.istype('dr_generator', g) and not ffi.istype('dr_generator*', g) then
    raise(('%s: generator must be a dr.Generator, got %s'):format(op, type(g)))
  end
  return g
end

-- ---- joining and splitting ---------------------------------------------------------

local function tensor_list(list, op)
  if type(list) ~= 'table' or is_tensor(list) then
    raise(('%s: expected a list of tensors, got %s'):format(op, type(list)))
  end
  local n = #list
  if n == 0 then raise(op .. ': expected a non-empty list of tensors') end
  local arr = ffi.new('const dr_tensor*[?]', n)
  for i = 1, n do
    if not is_tensor(list[i]) then
      raise(('%s: element %d of the list is a %s, expected a tensor'):format(op, i, type(list[i])))
    end
    arr[i - 1] = list[i].ptr
  end
  return arr, n
end


-- dr.cat({a, b, ...}, dim=1): joined along dim; dtypes promote as torch.
function M.cat(list, dim)
  local arr, n = tensor_list(list, 'cat')
  return take(C.dr_cat(arr, n, dim_or(dim, 1, 'cat'), out_box))
end

-- dr.stack({a, b, ...}, dim=1): joined along a new dim.
function M.stack(list, dim)
  local arr, n = tensor_list(list, 'stack')
  return take(C.dr_stack(arr, n, dim_or(dim, 1, 'stack'), out_box))
end

-- The size of dim d (1-based, negative from the end) of t, and d as 1-based.
local function dim_size(t, d, op)
  local nd = t.ptr.ndim
  local c = cdim(d, op)
  if c < 0 then c = c + nd end
  if c < 0 or c >= nd then
    raise(('%s: dimension %d out of range for a %d-d tensor (dims are 1..%d, or negative from ' ..
           'the end)'):format(op, d, nd, nd))
  end
  return tonumber(t.ptr.sizes[c]), c + 1
end

-- t:split(size, dim=1) -> list of views of `size` along dim (the last may be
-- smaller); t:split({s1, s2, ...}, dim) -> views of those sizes (they must add
-- up to the dim's size). Gradients flow through the views (narrow).
function Tensor.split(t, split, dim)
  dim = dim or 1
  local size, d = dim_size(t, dim, 'split')
  local parts, start = {}, 1
  if type(split) == 'table' then
    local total = 0
    for i = 1, #split do
      if not is_int(split[i]) or split[i] < 0 then
        raise(('split: split size %d must be a non-negative integer, got %s'):format(i, tostring(split[i])))
      end
      total = total + split[i]
    end
    if total ~= size then
      raise(('split: split sizes sum to %d but dimension %d has size %d'):format(total, dim, size))
    end
    for i = 1, #split do
      parts[i] = t:narrow(d, start, split[i])
      start = start + split[i]
    end
    return parts
  end
  if not is_int(split) or split < 0 or (split == 0 and size > 0) then
    raise(('split: split size must be a positive integer, got %s'):format(tostring(split)))
  end
  if size == 0 then return { t:narrow(d, 1, 0) } end
  while start <= size do
    parts[#parts + 1] = t:narrow(d, start, math.min(split, size - start + 1))
    start = start + split
  end
  return parts
end

-- t:chunk(n, dim=1): at most n views of ceil(size / n) along dim (torch.chunk).
function Tensor.chunk(t, n, dim)
  if not is_int(n) or n < 1 then
    raise(('chunk: number of chunks must be a positive integer, got %s'):format(tostring(n)))
  end
  dim = dim or 1
  local size, d = dim_size(t, dim, 'chunk')
  if size == 0 then
    local parts = {}
    for i = 1, n do parts[i] = t:narrow(d, 1, 0) end
    return parts
  end
  return t:split(math.ceil(size / n), d)
end

local function reshape_to(t, sizes)
  local n = #sizes
  for i = 1, n do sizes_buf[i - 1] = sizes[i] end
  return take(C.dr_tensor_reshape(t.ptr, sizes_buf, n, out_box))
end

-- t:unsqueeze(dim): a unit dim inserted so that it becomes dim `dim` of the
-- result (1..ndim+1, or negative: -1 appends).
function Tensor.unsqueeze(t, dim)
  local nd = t.ptr.ndim
  local c = cdim(dim, 'unsqueeze')
  if c < 0 then c = c + nd + 1 end
  if c < 0 or c > nd then
    raise(('unsqueeze: dimension %d out of range for a %d-d tensor (dims are 1..%d, or negative ' ..
           'from the end)'):format(dim, nd, nd + 1))
  end
  if nd >= 8 then raise('unsqueeze: a tensor has at most 8 dimensions') end
  local s = {}
  for i = 0, nd - 1 do
    if i == c then s[#s + 1] = 1 end
    s[#s + 1] = tonumber(t.ptr.sizes[i])
  end
  if c == nd then s[#s + 1] = 1 end
  return reshape_to(t, s)
end

-- t:squeeze(): every unit dim removed; t:squeeze(dim) or t:squeeze({dims}):
-- those dims, where they have size 1 (others stay, as torch).
function Tensor.squeeze(t, dims)
  local nd = t.ptr.ndim
  local drop = {}
  if dims == nil then
    for i = 0, nd - 1 do drop[i] = t.ptr.sizes[i] == 1 end
  else
    local list = type(dims) == 'table' and dims or { dims }
    for _, d in ipairs(list) do
      if nd == 0 then
        cdim(d, 'squeeze')
        if d ~= 1 and d ~= -1 then
          raise(('squeeze: dimension %d out of range for a 0-d tensor'):format(d))
        end
      else
        local size, d1 = dim_size(t, d, 'squeeze')
        drop[d1 - 1] = size == 1
      end
    end
  end
  local s = {}
  for i = 0, nd - 1 do
    if not drop[i] then s[#s + 1] = tonumber(t.ptr.sizes[i]) end
  end
  return reshape_to(t, s)
end

-- t:flatten(start_dim=1, end_dim=-1): those dims merged into one (a view when
-- the layout allows, else a copy; a 0-d tensor becomes 1-d).
function Tensor.flatten(t, start_dim, end_dim)
  local nd = t.ptr.ndim
  if nd == 0 then return reshape_to(t, { 1 }) end
  local _, s0 = dim_size(t, start_dim or 1, 'flatten')
  local _, s1 = dim_size(t, end_dim or -1, 'flatten')
  if s0 > s1 then
    raise(('flatten: start_dim %d comes after end_dim %d (of a %d-d tensor)'):format(s0, s1, nd))
  end
  local s, merged = {}, 1
  for i = 1, nd do
    local size = tonumber(t.ptr.sizes[i - 1])
    if i < s0 or i > s1 then s[#s + 1] = size
    else
      merged = merged * size
      if i == s1 then s[#s + 1] = merged end
    end
  end
  return reshape_to(t, s)
end

-- ---- indexing ----------------------------------------------------------------------

-- t:index_select(dim, index): the entries 1..n of `index` along dim.
function Tensor.index_select(t, dim, index)
  local d = cdim(dim, 'index_select')
  local ix = zero_based(index, 'index_select', t.ptr.device)
  return take(C.dr_index_select(t.ptr, d, ix.ptr, out_box))
end

-- t:gather(dim, index): out[i][j] = t[index[i][j]][j] (dim 1), index 1-based.
function Tensor.gather(t, dim, index)
  local d = cdim(dim, 'gather')
  local ix = zero_based(index, 'gather', t.ptr.device)
  return take(C.dr_gather(t.ptr, d, ix.ptr, out_box))
end

-- dr.embedding(indices, weight): rows 1..num of weight [num, dim] for indices of
-- any shape (F.embedding with 1-based rows); only weight gets a gradient.
function M.embedding(indices, weight)
  need_tensor(weight, 'embedding', 'weight')
  local ix = zero_based(indices, 'embedding', weight.ptr.device)
  return take(C.dr_embedding(ix.ptr, weight.ptr, out_box))
end

-- A number operand of where as a 0-d tensor that does not promote `like` (torch's
-- rule for Python scalars); with no tensor to follow, int64 or float32.
local function where_operand(x, like)
  local code, device
  if like then
    code, device = like.ptr.scalar_type, like.ptr.device
    if type(x) == 'boolean' then x = x and 1 or 0
    elseif type(x) ~= 'number' then raise('where: expected a tensor or a number, got ' .. type(x))
    elseif not dtypes.is_float(code) and not is_int(x) then code = C.DR_F32
    elseif code == C.DR_BOOL then code = C.DR_I64 end
  else
    if type(x) == 'boolean' then x, code = x and 1 or 0, C.DR_BOOL
    elseif type(x) ~= 'number' then raise('where: expected a tensor or a number, got ' .. type(x))
    else code = is_int(x) and C.DR_I64 or C.DR_F32 end
    device = dtypes.device()
  end
  return take(C.dr_tensor_full(nil, 0, code, device, x, out_box))
end

-- dr.where(cond, a, b): cond ? a : b with broadcasting; a or b may be numbers.
function M.where(cond, a, b)
  need_tensor(cond, 'where', 'condition')
  local x, y
  if is_tensor(a) then x, y = a, is_tensor(b) and b or where_operand(b, a)
  elseif is_tensor(b) then x, y = where_operand(a, b), b
  else x, y = where_operand(a), where_operand(b) end
  return take(C.dr_where(cond.ptr, x.ptr, y.ptr, out_box))
end
-- t:where(cond, other) == dr.where(cond, t, other)
function Tensor.where(t, cond, other) return M.where(cond, t, other) end

-- ---- reductions --------------------------------------------------------------------

-- t:mean(), t:mean(dim[, keepdim]), t:mean({dims}[, keepdim])
function Tensor.mean(t, dims, keepdim)
  local n = dims_arg(dims, 'mean')
  return take(C.dr_mean(t.ptr, dims_buf, n, keepdim and 1 or 0, out_box))
end

-- (dims, opts) of var/std: (dim), (dim, {correction=, keepdim=, unbiased=}),
-- ({correction=...}), or torch's older (dim, unbiased, keepdim).
local function moment_args(op, dims, a, b)
  if type(dims) == 'table' and dims[1] == nil and next(dims) ~= nil then dims, a = nil, dims end
  local correction, keepdim = 1, false
  if type(a) == 'table' then
    if a.correction ~= nil and a.unbiased ~= nil then
      raise(op .. ': give correction or unbiased, not both')
    end
    if a.unbiased ~= nil then correction = a.unbiased and 1 or 0 end
    if a.correction ~= nil then correction = a.correction end
    keepdim = a.keepdim and true or false
  elseif a ~= nil then
    if type(a) ~= 'boolean' then
      raise(('%s: expected unbiased (a boolean) or an options table, got %s'):format(op, type(a)))
    end
    correction = a and 1 or 0
    keepdim = b and true or false
  end
  if type(correction) ~= 'number' then
    raise(('%s: correction must be a number, got %s'):format(op, type(correction)))
  end
  return dims_arg(dims, op), correction, keepdim and 1 or 0
end

-- t:var([dim][, {correction=1, keepdim=false}]) as torch.var
function Tensor.var(t, dims, a, b)
  local n, corr, keep = moment_args('var', dims, a, b)
  return take(C.dr_var(t.ptr, dims_buf, n, corr, keep, out_box))
end
function Tensor.std(t, dims, a, b)
  local n, corr, keep = moment_args('std', dims, a, b)
  return take(C.dr_std(t.ptr, dims_buf, n, corr, keep, out_box))
end

-- t:max() -> the largest element (0-d); t:max(dim[, keepdim]) -> values, indices
-- (1-based, the first maximum; NaN counts as the maximum). Likewise t:min.
local function extreme(name, all_fn, dim_fn)
  return function(t, dim, keepdim)
    if dim == nil then return take(all_fn(t.ptr, out_box)) end
    if is_tensor(dim) then
      raise(name .. ': the elementwise form (a tensor argument) is not supported; use dr.where')
    end
    check(dim_fn(t.ptr, cdim(dim, name), keepdim and 1 or 0, out_box, out_box2))
    local values = take(0)
    out_box[0], out_box2[0] = out_box2[0], nil
    local indices = take(0)
    return values, one_based(indices)
  end
end
Tensor.max = extreme('max', C.dr_max, C.dr_max_dim)
Tensor.min = extreme('min', C.dr_min, C.dr_min_dim)

-- t:argmax([dim][, keepdim]): 1-based int64 indices (of the flattened tensor
-- without dim).
local function arg_extreme(name, fn)
  return function(t, dim, keepdim)
    local n = 0
    if dim ~= nil then
      dims_buf[0] = cdim(dim, name)
      n = 1
    end
    return one_based(take(fn(t.ptr, dims_buf, n, keepdim and 1 or 0, out_box)))
  end
end
Tensor.argmax = arg_extreme('argmax', C.dr_argmax)
Tensor.argmin = arg_extreme('argmin', C.dr_argmin)

-- t:cumsum(dim): running sums along dim (integers give int64).
function Tensor.cumsum(t, dim)
  if dim == nil then raise('cumsum: dim is required') end
  return take(C.dr_cumsum(t.ptr, cdim(dim, 'cumsum'), out_box))
end

-- ---- ranges ----------------------------------------------------------------------

local function number_arg(x, op, what)
  if type(x) ~= 'number' then
    raise(('%s: %s must be a number, got %s'):format(op, what, type(x)))
  end
  return x
end

-- dr.arange(end), dr.arange(start, end[, step])[, {dtype=, device=}]: torch's
-- values start, start+step, ... below end; int64 when every argument is an
-- integer, else float32.
function M.arange(...)
  local args, opts = {}, nil
  for i = 1, select('#', ...) do
    local v = select(i, ...)
    if type(v) == 'table' then opts = v; break end
    args[i] = v
  end
  local start, stop, step
  if #args == 1 then start, stop, step = 0, args[1], 1
  elseif #args == 2 then start, stop, step = args[1], args[2], 1
  elseif #args == 3 then start, stop, step = args[1], args[2], args[3]
  else raise(('arange: expected 1 to 3 numbers, got %d'):format(#args)) end
  number_arg(start, 'arange', 'start'); number_arg(stop, 'arange', 'end'); number_arg(step, 'arange', 'step')
  local dtype = opts and opts.dtype
  local code = dtype and dtypes.code(dtype) or
               ((is_int(start) and is_int(stop) and is_int(step)) and C.DR_I64 or C.DR_F32)
  return take(C.dr_arange(start, stop, step, code, dtypes.device(opts and opts.device), out_box))
end

-- dr.linspace(start, end, steps[, {dtype=, device=}]): float32 by default.
function M.linspace(start, stop, steps, opts)
  number_arg(start, 'linspace', 'start'); number_arg(stop, 'linspace', 'end')
  if not is_int(steps) then
    raise(('linspace: steps must be an integer, got %s'):format(tostring(steps)))
  end
  return take(C.dr_linspace(start, stop, steps, dtypes.code(opts and opts.dtype),
                            dtypes.device(opts and opts.device), out_box))
end

-- ---- random ---------------------------------------------------------------------

local function size_list(size, op)
  if type(size) ~= 'table' then
    raise(('%s: size must be a list of integers, got %s'):format(op, type(size)))
  end
  if #size > 8 then raise(('%s: at most 8 dimensions, got %d'):format(op, #size)) end
  for i = 1, #size do
    if not is_int(size[i]) or size[i] < 0 then
      raise(('%s: size %d must be a non-negative integer, got %s'):format(op, i, tostring(size[i])))
    end
    sizes_buf[i - 1] = size[i]
  end
  return #size
end

-- dr.randint([low,] high, size[, {generator=, dtype=, device=}]): integers in
-- [low, high) (low defaults to 0), int64 by default, from the Philox stream.
function M.randint(a, b, c, d)
  local low, high, size, opts
  if type(b) == 'table' then low, high, size, opts = 0, a, b, c
  else low, high, size, opts = a, b, c, d end
  for _, v in ipairs { { low, 'low' }, { high, 'high' } } do
    if not is_int(v[1]) or math.abs(v[1]) > 2 ^ 53 then
      raise(('randint: %s must be an integer, got %s'):format(v[2], tostring(v[1])))
    end
  end
  local n = size_list(size, 'randint')
  return take(C.dr_randint(low, high, sizes_buf, n, dtypes.code(opts and opts.dtype or 'int64'),
                           dtypes.device(opts and opts.device), generator_of(opts, 'randint'),
                           out_box))
end

-- t:normal_(mean=0, std=1[, {generator=}]): fills t in place; returns t.
function Tensor.normal_(t, mean, std, opts)
  if type(mean) == 'table' then mean, std, opts = nil, nil, mean end
  if type(std) == 'table' then std, opts = nil, std end
  mean = mean == nil and 0 or number_arg(mean, 'normal_', 'mean')
  std = std == nil and 1 or number_arg(std, 'normal_', 'std')
  check(C.dr_normal_(t.ptr, mean, std, generator_of(opts, 'normal_')))
  return t
end

-- dr.dropout(x, p=0.5, training=true[, {generator=}]) as F.dropout: zeroes each
-- element with probability p and scales the rest by 1/(1-p); x itself when not
-- training or p = 0.
function M.dropout(x, p, training, opts)
  need_tensor(x, 'dropout')
  if type(p) == 'table' then p, training, opts = nil, nil, p end
  if type(training) == 'table' then training, opts = nil, training end
  p = p == nil and 0.5 or number_arg(p, 'dropout', 'p')
  if training == nil then training = true end
  return take(C.dr_dropout(x.ptr, p, training and 1 or 0, generator_of(opts, 'dropout'),
                           out_box, nil))
end

-- ---- functional forms of the methods ---------------------------------------------

for _, k in ipairs { 'split', 'chunk', 'unsqueeze', 'squeeze', 'flatten', 'index_select',
                     'gather', 'mean', 'var', 'std', 'max', 'min', 'argmax', 'argmin',
                     'cumsum' } do
  local method = Tensor[k]
  M[k] = function(t, ...)
    if not is_tensor(t) then raise(k .. ': expected a tensor, got ' .. type(t)) end
    return method(t, ...)
  end
end

return M
