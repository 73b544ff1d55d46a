-- diffrl.core.factory: making tensors (torch.tensor/zeros/ones/full/empty/randn/
-- rand) and Philox generators (torch.Generator, torch.manual_seed).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local dtypes = require 'diffrl.core.dtype'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local take, out_box, sizes_from = T.take, T.out_box, T.sizes_from

local M = {}

local function opt_dtype(opts, default)
  return dtypes.code(opts and opts.dtype or default)
end
local function opt_device(opts) return dtypes.device(opts and opts.device) end

-- ---- from Lua data -------------------------------------------------------------

-- Shape of a nested table, checked to be rectangular; flattened values.
local function flatten(data, op)
  if type(data) == 'table' and data[1] == nil and next(data) ~= nil then
    raise(('%s: expected a number, a boolean or a nested list, got a table with key %s')
      :format(op, tostring(next(data))))
  end
  local sizes, flat, kind = {}, {}, nil
  local probe = data
  while type(probe) == 'table' do
    sizes[#sizes + 1] = #probe
    probe = probe[1]
  end
  if #sizes > 8 then raise(op .. ': more than 8 levels of nesting') end
  local function walk(x, depth, path)
    if depth > #sizes then
      local tx = type(x)
      if tx ~= 'number' and tx ~= 'boolean' then
        raise(('%s: element %s is a %s, expected a number or boolean'):format(op, path, tx))
      end
      if kind and kind ~= tx then
        raise(('%s: element %s is a %s but earlier elements are %ss'):format(op, path, tx, kind))
      end
      kind = tx
      flat[#flat + 1] = tx == 'boolean' and (x and 1 or 0) or x
      return
    end
    if type(x) ~= 'table' then
      raise(('%s: element %s is a %s, expected a list of %d'):format(op, path, type(x), sizes[depth]))
    end
    if #x ~= sizes[depth] then
      raise(('%s: ragged nested list: %s has %d elements, expected %d'):format(
        op, path == '' and 'the outer list' or 'list ' .. path, #x, sizes[depth]))
    end
    for i = 1, #x do walk(x[i], depth + 1, path .. '[' .. i .. ']') end
  end
  walk(data, 1, '')
  return sizes, flat, kind
end

-- dr.tensor(data[, {dtype=, device=}]): numbers give float32, booleans bool.
function M.tensor(data, opts)
  if T.is_tensor(data) then
    local t = data:clone()
    if opts and opts.dtype then t = t:to(opts.dtype) end
    return t
  end
  local sizes, flat, kind = flatten(data, 'tensor')
  local code = opt_dtype(opts, kind == 'boolean' and 'bool' or 'float32')
  local n = #flat
  local buf = ffi.new('double[?]', math.max(n, 1), flat)
  local nd, s = sizes_from('tensor', sizes)
  return take(C.dr_tensor_from_f64(buf, s, nd, code, opt_device(opts), out_box))
end

-- ---- filled ------------------------------------------------------------------------

function M.empty(...)
  local n, s, opts = sizes_from('empty', ...)
  return take(C.dr_tensor_empty(s, n, opt_dtype(opts), opt_device(opts), out_box))
end

local function filled(name, value)
  return function(...)
    local n, s, opts = sizes_from(name, ...)
    return take(C.dr_tensor_full(s, n, opt_dtype(opts), opt_device(opts), value, out_box))
  end
end
M.zeros = filled('zeros', 0)
M.ones = filled('ones', 1)

-- dr.full(size, value[, opts])
function M.full(size, value, opts)
  if type(value) == 'boolean' then value = value and 1 or 0 end
  if type(value) ~= 'number' then raise('full: fill value must be a number, got ' .. type(value)) end
  local n, s = sizes_from('full', size)
  return take(C.dr_tensor_full(s, n, opt_dtype(opts), opt_device(opts), value, out_box))
end

-- ---- random -------------------------------------------------------------------------

local gen_t
local function generator_of(opts)
  local g = opts and opts.generator
  if g == nil then return nil end
  if not ffi.istype(gen_t, g) and not ffi.istype('dr_generator*', g) then
    raise('generator must be a dr.Generator, got ' .. type(g))
  end
  return g
end

-- A shard of a generator (g:shard(i, n), issue 9): a draw of [B, ...] gives rows
-- (i-1)B+1 .. iB of what g gives for [nB, ...], and moves g past that whole draw,
-- so n ranks with batch B draw exactly the numbers one rank with batch nB draws.
-- Element k of a draw comes from Philox block offset + k/4 (util/philox.h): when a
-- shard is a whole number of blocks only its own blocks are computed.
local Shard = {}
Shard.__index = Shard
local function is_shard(g) return getmetatable(g) == Shard end

local function shard_draw(op, fn, sh, n, s, opts)
  if n == 0 then raise(op .. ': a sharded generator needs a batch dimension (got a 0-d size)') end
  local g, numel = sh.generator, 1
  for d = 0, n - 1 do numel = numel * tonumber(s[d]) end
  local start, dtype, device = g.offset, opt_dtype(opts), opt_device(opts)
  local t
  if numel % 4 == 0 then
    g.offset = start + (sh.index - 1) * (numel / 4)
    t = take(fn(s, n, dtype, device, g, out_box))
  else
    local rows = tonumber(s[0])
    local full = ffi.new('int64_t[?]', n)
    for d = 0, n - 1 do full[d] = s[d] end
    full[0] = rows * sh.count
    t = take(fn(full, n, dtype, device, g, out_box)):narrow(1, (sh.index - 1) * rows + 1, rows):contiguous()
  end
  g.offset = start + math.ceil(numel * sh.count / 4)
  return t
end

-- Row generators (dr.row_generators{g1, ..., gB}, issue 12): a draw of [B, ...] gives
-- row i as g_i alone draws [1, ...], and moves each g_i past its row. A row's noise
-- then does not depend on the batch it is sampled in: diffrl eval gives the image of
-- (prompt, seed s) in any batch, for every model alike, as `diffrl sample --seed s`.
local Rows = {}
Rows.__index = Rows
local function is_rows(g) return getmetatable(g) == Rows end

local function rows_draw(op, fn, rows, n, s, opts)
  local b = n > 0 and tonumber(s[0]) or 0
  if b ~= #rows.list then
    raise(('%s: %d row generators for a draw of %d rows'):format(op, #rows.list, b))
  end
  local dtype, device = opt_dtype(opts), opt_device(opts)
  local one = ffi.new('int64_t[?]', n)
  for d = 0, n - 1 do one[d] = s[d] end
  one[0] = 1
  local out = take(C.dr_tensor_empty(s, n, dtype, device, out_box))
  for i, g in ipairs(rows.list) do
    out:narrow(1, i, 1):copy_(take(fn(one, n, dtype, device, g, out_box)))
  end
  return out
end

function M.row_generators(list)
  if type(list) ~= 'table' or #list == 0 then
    raise('row_generators: expected a non-empty list of dr.Generator, got ' .. type(list))
  end
  for i, g in ipairs(list) do
    if not ffi.istype(gen_t, g) then raise(('row_generators: entry %d is not a dr.Generator'):format(i)) end
  end
  return setmetatable({ list = list }, Rows)
end
Rows.__tostring = function(r) return ('dr.row_generators (%d rows)'):format(#r.list) end

-- dr.randn(sizes...[, {generator=, dtype=, device=}]): standard normal.
function M.randn(...)
  local n, s, opts = sizes_from('randn', ...)
  if opts and is_shard(opts.generator) then return shard_draw('randn', C.dr_randn, opts.generator, n, s, opts) end
  if opts and is_rows(opts.generator) then return rows_draw('randn', C.dr_randn, opts.generator, n, s, opts) end
  return take(C.dr_randn(s, n, opt_dtype(opts), opt_device(opts), generator_of(opts), out_box))
end

-- dr.rand(sizes...[, opts]): uniform on [0, 1).
function M.rand(...)
  local n, s, opts = sizes_from('rand', ...)
  if opts and is_shard(opts.generator) then return shard_draw('rand', C.dr_rand, opts.generator, n, s, opts) end
  if opts and is_rows(opts.generator) then return rows_draw('rand', C.dr_rand, opts.generator, n, s, opts) end
  return take(C.dr_rand(s, n, opt_dtype(opts), opt_device(opts), generator_of(opts), out_box))
end

-- Seeds are integers in [0, 2^53] as Lua numbers, or uint64 cdata for the rest.
local function to_seed(seed, op)
  if type(seed) == 'number' then
    if seed % 1 ~= 0 or seed < 0 or seed > 2 ^ 53 then
      raise(('%s: seed must be an integer in [0, 2^53], got %s'):format(op, tostring(seed)))
    end
    return ffi.new('uint64_t', seed)
  end
  if type(seed) == 'cdata' then return ffi.new('uint64_t', seed) end
  raise(('%s: seed must be an integer, got %s'):format(op, type(seed)))
end

local function to_lua_int(u)
  if u < 2ULL ^ 53 then return tonumber(u) end
  return u
end
local function int_text(u) return (tostring(to_lua_int(u)):gsub('ULL$', '')) end

local Generator = {}
function Generator.manual_seed(g, seed)
  g.seed = to_seed(seed, 'manual_seed')
  g.offset = 0
  return g
end
function Generator.initial_seed(g) return to_lua_int(g.seed) end
-- The whole state: two integers, saved in checkpoints.
function Generator.get_state(g) return { seed = to_lua_int(g.seed), offset = to_lua_int(g.offset) } end
function Generator.set_state(g, state)
  if type(state) ~= 'table' or state.seed == nil or state.offset == nil then
    raise('set_state: expected {seed=, offset=} from get_state()')
  end
  g.seed = to_seed(state.seed, 'set_state')
  g.offset = to_seed(state.offset, 'set_state')
  return g
end
-- g:shard(i, n): draws of shard i of n (see Shard above); g's state is the state.
function Generator.shard(g, index, count)
  if type(count) ~= 'number' or count % 1 ~= 0 or count < 1 or type(index) ~= 'number' or index % 1 ~= 0
     or index < 1 or index > count then
    raise(('shard: expected shard i of n with 1 <= i <= n, got %s of %s'):format(tostring(index), tostring(count)))
  end
  return setmetatable({ generator = g, index = index, count = count }, Shard)
end
function Shard:get_state() return self.generator:get_state() end
function Shard:set_state(state) self.generator:set_state(state); return self end
Shard.__tostring = function(sh)
  return ('dr.Generator shard %d of %d of %s'):format(sh.index, sh.count, tostring(sh.generator))
end
gen_t = ffi.metatype('dr_generator', {
  __index = Generator,
  __tostring = function(g)
    return ('dr.Generator(seed=%s, offset=%s)'):format(int_text(g.seed), int_text(g.offset))
  end,
})

-- dr.Generator([seed]): an explicit stream, independent of the default one.
function M.Generator(seed)
  return gen_t(to_seed(seed or 0, 'Generator'), 0)
end

function M.default_generator() return C.dr_default_generator() end

function M.manual_seed(seed)
  C.dr_manual_seed(to_seed(seed, 'manual_seed'))
end

return M
