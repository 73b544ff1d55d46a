-- CPU/CUDA parity for the #gpu specs: the CPU backend is the reference, every
-- CUDA kernel must give its results (forward and gradients) within a tolerance.
--
--   local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')
--   describe('cuda parity: ... #gpu', function()
--     if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end
--     it('add broadcasts', function()
--       P.check{ inputs = { {2, 3}, {3} }, fn = function(a, b) return a + b end }
--     end)
--   end)
--
-- An input is a shape list ({2, 3}: float32 normal values), a table
-- {shape=, dtype=, positive=true (uniform in [0.1, 2]), int={lo, hi}, grad=false},
-- or a ready cpu tensor. Float inputs require grad unless grad=false. fn gets the
-- inputs (cpu ones, then cuda ones) and returns a tensor or a list of tensors; when
-- the outputs need grad, each gets the same random grad_output on both devices and
-- every input's gradient is compared too. Tolerance: |cpu - cuda| <= atol + rtol |cpu|.
local dr = require 'diffrl'
local assert = require 'luassert' -- busted gives its assert to spec files only
local P = {}

function P.why()
  if dr.build_info().cuda == 'none' then return 'this diffrl is built without CUDA (-DDIFFRL_CUDA=ON)' end
  if not dr.cuda.is_available() then return 'no CUDA device is visible' end
end
function P.available() return P.why() == nil end

function P.gen(seed) return dr.Generator(seed or 1234) end

local function make_input(spec, gen)
  if dr.is_tensor(spec) then return spec, spec:requires_grad() end
  local shape, dtype, grad = spec, 'float32', true
  local positive, int
  if spec.shape then
    shape, dtype, positive, int = spec.shape, spec.dtype or 'float32', spec.positive, spec.int
    if spec.grad == false or dtype ~= 'float32' or int then grad = false end
  end
  local t
  if int then
    t = dr.randint(int[1], int[2] + 1, shape, { generator = gen }):to(dtype == 'float32' and 'int64' or dtype)
  elseif dtype == 'bool' then
    t = dr.randint(0, 2, shape, { generator = gen }):to('bool')
  elseif positive then
    t = (dr.rand(shape, { generator = gen }) * 1.9 + 0.1):to(dtype)
  else
    t = dr.randn(shape, { generator = gen }):to(dtype)
  end
  return t, grad
end

local function as_list(x)
  if dr.is_tensor(x) then return { x } end
  return x
end

-- Flat doubles of a tensor on any device (read through the host).
local ffi = require 'ffi'
local C = require('diffrl.core.ffi').C
local function flat(t)
  local n = t:numel()
  local buf = ffi.new('double[?]', math.max(n, 1))
  assert(C.dr_tensor_to_f64(t.ptr, buf, n) == 0, ffi.string(C.dr_last_error()))
  return buf, n
end

-- The worst element: how far past atol + rtol |a| it is, |a - b| there, and how
-- many elements are NaN on one device only.
local function worst(a, b, atol, rtol)
  local x, n = flat(a)
  local y = flat(b)
  local over, maxdiff, nan_mismatch, at = -math.huge, 0, 0, 0
  for i = 0, n - 1 do
    local u, v = x[i], y[i]
    if (u ~= u) ~= (v ~= v) then
      nan_mismatch = nan_mismatch + 1
    elseif u == u and not (u == v) then -- equal infinities pass
      local d = math.abs(u - v)
      local e = d - (atol + rtol * math.abs(u))
      if d ~= d then e = math.huge end
      if e > over then over, at = e, i + 1 end
      if d > maxdiff then maxdiff = d end
    end
  end
  return over, nan_mismatch, maxdiff, at
end

-- Asserts cpu tensor a and cuda tensor b agree (shape, dtype, values).
function P.close(a, b, atol, rtol, what)
  what = what or 'output'
  atol, rtol = atol or 1e-5, rtol or 1e-4
  assert(b.device:match('^cuda'), what .. ': expected a cuda result, got one on ' .. b.device)
  assert.same(a.shape, b.shape, what .. ': shapes differ')
  assert.equal(a.dtype, b.dtype, what .. ': dtypes differ')
  if a:numel() == 0 then return end
  local over, nan_mismatch, maxdiff, at = worst(a, b, atol, rtol)
  assert(nan_mismatch == 0, ('%s: NaN in %d places on one device only'):format(what, nan_mismatch))
  assert(over <= 0, ('%s %s: max |cpu - cuda| = %.3g (worst at flat element %d) exceeds atol %g + rtol %g |cpu|')
    :format(what, table.concat(a.shape, 'x'), maxdiff, at, atol, rtol))
end

function P.check(o)
  local gen = P.gen(o.seed)
  local cpu_in, cuda_in, wants = {}, {}, {}
  for i, spec in ipairs(o.inputs) do
    local t, grad = make_input(spec, gen)
    if o.grad == false then grad = false end
    wants[i] = grad
    local c = t:detach():clone()
    local g = t:detach():cuda()
    if grad then c:requires_grad(true); g:requires_grad(true) end
    cpu_in[i], cuda_in[i] = c, g
  end
  local cpu_out = as_list(o.fn(unpack(cpu_in)))
  local cuda_out = as_list(o.fn(unpack(cuda_in)))
  assert.equal(#cpu_out, #cuda_out)
  local atol, rtol = o.atol or 1e-5, o.rtol or 1e-4
  for i = 1, #cpu_out do P.close(cpu_out[i], cuda_out[i], atol, rtol, 'output ' .. i) end
  -- gradients: sum_i <out_i, g_i> with the same g_i on both devices
  local loss_c, loss_g
  for i = 1, #cpu_out do
    if cpu_out[i]:requires_grad() and o.backward ~= false then
      local g = dr.randn(cpu_out[i].shape, { generator = gen })
      local lc = (cpu_out[i] * g):sum()
      local lg = (cuda_out[i] * g:cuda()):sum()
      loss_c = loss_c and loss_c + lc or lc
      loss_g = loss_g and loss_g + lg or lg
    end
  end
  if not loss_c then return end
  loss_c:backward()
  loss_g:backward()
  local gatol, grtol = o.grad_atol or atol * 10, o.grad_rtol or rtol * 10
  for i = 1, #cpu_in do
    if wants[i] then
      local gc, gg = cpu_in[i].grad, cuda_in[i].grad
      assert((gc == nil) == (gg == nil), ('input %d: gradient on one device only'):format(i))
      if gc then P.close(gc, gg, gatol, grtol, ('gradient of input %d'):format(i)) end
    end
  end
end

return P
