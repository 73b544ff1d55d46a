-- diffrl.core.inplace: in-place updates used by optimizers (core/ops/optim.c).
-- They refuse to touch tensors that require grad unless grad mode is off: call
-- them inside dr.no_grad, as the optimizers in diffrl.optim do.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local Tensor = T.Tensor
local M = {}

local check = api.check
local function ptr(x, op, what)
  if not T.is_tensor(x) then raise(('%s: %s must be a tensor, got %s'):format(op, what, type(x))) end
  return x.ptr
end
local function num(x, op, what)
  if type(x) ~= 'number' then raise(('%s: %s must be a number, got %s'):format(op, what, type(x))) end
  return x
end

-- t:mul_(s): t *= s for a number s
function Tensor.mul_(t, s)
  check(C.dr_mul_scalar_(t.ptr, num(s, 'mul_', 'factor')))
  return t
end

-- t:add_(other[, alpha]): t += alpha * other (broadcast)
function Tensor.add_(t, other, alpha)
  check(C.dr_add_(t.ptr, ptr(other, 'add_', 'other'), alpha or 1))
  return t
end

-- t:rebind_(base, offset): moves t's data into base at element offset (0-based)
-- and makes t a view there (see dr.optim's flat mode).
function Tensor.rebind_(t, base, offset)
  check(C.dr_tensor_rebind_(t.ptr, ptr(base, 'rebind_', 'base'), num(offset, 'rebind_', 'offset')))
  return t
end

-- t:lerp_(end, w): t += w * (end - t)
function Tensor.lerp_(t, e, w)
  check(C.dr_lerp_(t.ptr, ptr(e, 'lerp_', 'end'), num(w, 'lerp_', 'weight')))
  return t
end

-- Sum of squares as a Lua number (double accumulation, deterministic).
local box = ffi.new('double[1]')
function M.sum_squares(t)
  check(C.dr_sum_squares(ptr(t, 'sum_squares', 'tensor'), box))
  return box[0]
end

function M.adamw_step_(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
  check(C.dr_adamw_step_(ptr(p, 'adamw', 'param'), ptr(g, 'adamw', 'grad'), ptr(m, 'adamw', 'exp_avg'),
                         ptr(v, 'adamw', 'exp_avg_sq'), lr, beta1, beta2, eps, weight_decay, step))
end

function M.sgd_step_(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)
  check(C.dr_sgd_step_(ptr(p, 'sgd', 'param'), ptr(g, 'sgd', 'grad'), buf and buf.ptr or nil, lr,
                       momentum, dampening, weight_decay, nesterov and 1 or 0, first and 1 or 0))
end

return M
