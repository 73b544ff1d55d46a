-- diffrl.core.ops_nn: normalization, softmax and unary math, as torch spells
-- them. Tensor methods (t:silu(), t:exp(), t:pow(2), t:clamp(min, max),
-- t:softmax(dim), ...) and the torch.nn.functional forms this module returns
-- (dr.gelu(x, {approximate='tanh'}), dr.softmax(x, dim),
-- dr.layer_norm(x, normalized_shape, weight, bias, eps),
-- dr.group_norm(x, num_groups, weight, bias, eps), ...). Dims are 1-based.
-- native_layer_norm / native_group_norm also return mean and rstd, the saved
-- statistics the C backward functions take.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local Tensor, take, out_box, is_tensor, cdim = T.Tensor, T.take, T.out_box, T.is_tensor, T.cdim

local M = {}

local stats_box = ffi.new('dr_tensor*[2]')
local shape_buf = ffi.new('int64_t[8]')

local function is_int(x) return type(x) == 'number' and x % 1 == 0 and math.abs(x) < 2 ^ 53 end

local function tensor_arg(op, name, t)
  if not is_tensor(t) then raise(('%s: %s must be a tensor, got %s'):format(op, name, type(t))) end
  return t
end

-- An optional tensor argument: its pointer, or nil.
local function optional(op, name, t)
  if t == nil then return nil end
  return tensor_arg(op, name, t).ptr
end

-- v, or `default` when v is nil (a default of 'nil' makes the argument required).
local function number_arg(op, name, v, default)
  if v == nil and default ~= 'nil' then return default end
  if type(v) ~= 'number' then
    raise(('%s: %s must be a number, got %s'):format(op, name, type(v)))
  end
  return v
end

-- ---- unary math ----------------------------------------------------------------

local unary_ops = {
  silu = C.DR_UNARY_SILU, quick_gelu = C.DR_UNARY_QUICK_GELU, relu = C.DR_UNARY_RELU,
  sigmoid = C.DR_UNARY_SIGMOID, tanh = C.DR_UNARY_TANH, exp = C.DR_UNARY_EXP,
  log = C.DR_UNARY_LOG, sqrt = C.DR_UNARY_SQRT, rsqrt = C.DR_UNARY_RSQRT, abs = C.DR_UNARY_ABS,
}
for name, code in pairs(unary_ops) do
  Tensor[name] = function(t)
    return take(C.dr_unary(code, tensor_arg(name, 'input', t).ptr, out_box))
  end
end

-- gelu(approximate): 'none' (erf, the default) or 'tanh'; also {approximate=...}.
local function gelu_mode(v)
  if type(v) == 'table' then
    for k in pairs(v) do
      if k ~= 'approximate' then raise(("gelu: unknown option '%s'"):format(tostring(k))) end
    end
    v = v.approximate
  end
  if v == nil or v == 'none' then return 0 end
  if v == 'tanh' then return 1 end
  raise(("gelu: approximate must be 'none' or 'tanh', got %s"):format(tostring(v)))
end

function Tensor.gelu(t, approximate)
  local mode = gelu_mode(approximate)
  return take(C.dr_gelu(tensor_arg('gelu', 'input', t).ptr, mode, out_box))
end

-- pow(exponent) with a number exponent (torch.pow(tensor, scalar)).
function Tensor.pow(t, exponent)
  if is_tensor(exponent) then
    raise('pow: a tensor exponent is not supported yet; pass a number')
  end
  if type(exponent) ~= 'number' then
    raise(('pow: exponent must be a number, got %s'):format(type(exponent)))
  end
  return take(C.dr_pow_scalar(tensor_arg('pow', 'input', t).ptr, exponent, out_box))
end

-- clamp(min, max): either bound may be nil, not both (torch).
function Tensor.clamp(t, min, max)
  if min == nil and max == nil then
    raise("clamp: at least one of 'min' or 'max' must be given")
  end
  min = number_arg('clamp', 'min', min, -math.huge)
  max = number_arg('clamp', 'max', max, math.huge)
  return take(C.dr_clamp(tensor_arg('clamp', 'input', t).ptr, min, max, out_box))
end
function Tensor.clamp_min(t, min)
  return Tensor.clamp(t, number_arg('clamp_min', 'min', min, 'nil'), nil)
end
function Tensor.clamp_max(t, max)
  return Tensor.clamp(t, nil, number_arg('clamp_max', 'max', max, 'nil'))
end

-- ---- softmax ----------------------------------------------------------------------

local function softmax_dim(op, dim)
  if dim == nil then raise(op .. ': dim is required (1-based, negative from the end)') end
  return cdim(dim, op)
end

function Tensor.softmax(t, dim)
  return take(C.dr_softmax(tensor_arg('softmax', 'input', t).ptr, softmax_dim('softmax', dim),
                           out_box))
end
function Tensor.log_softmax(t, dim)
  return take(C.dr_log_softmax(tensor_arg('log_softmax', 'input', t).ptr,
                               softmax_dim('log_softmax', dim), out_box))
end

-- ---- normalization ------------------------------------------------------------------

-- Output and the two statistics (each a tensor) of a C call that filled
-- out_box and stats_box, or its error.
local function take3(status)
  local out = take(status)
  out_box[0] = stats_box[0]
  local mean = take(0)
  out_box[0] = stats_box[1]
  local rstd = take(0)
  stats_box[0], stats_box[1] = nil, nil
  return out, mean, rstd
end

-- normalized_shape: a size or a list of sizes (or a dr.Size).
local function shape_arg(op, s)
  if is_int(s) then s = { s } end
  if type(s) ~= 'table' or #s == 0 or #s > 8 then
    raise(('%s: normalized_shape must be a size or a list of 1 to 8 sizes, got %s')
      :format(op, tostring(s)))
  end
  for i = 1, #s do
    if not is_int(s[i]) then
      raise(('%s: normalized_shape[%d] must be an integer, got %s'):format(op, i, tostring(s[i])))
    end
    shape_buf[i - 1] = s[i]
  end
  return shape_buf, #s
end

function M.native_layer_norm(input, normalized_shape, weight, bias, eps)
  local op = 'layer_norm'
  local x = tensor_arg(op, 'input', input)
  local s, n = shape_arg(op, normalized_shape)
  return take3(C.dr_layer_norm(x.ptr, s, n, optional(op, 'weight', weight),
                               optional(op, 'bias', bias), number_arg(op, 'eps', eps, 1e-5),
                               out_box, stats_box, stats_box + 1))
end

function M.layer_norm(input, normalized_shape, weight, bias, eps)
  local op = 'layer_norm'
  local x = tensor_arg(op, 'input', input)
  local s, n = shape_arg(op, normalized_shape)
  return take(C.dr_layer_norm(x.ptr, s, n, optional(op, 'weight', weight),
                              optional(op, 'bias', bias), number_arg(op, 'eps', eps, 1e-5),
                              out_box, nil, nil))
end

local function groups_arg(g)
  if not is_int(g) then
    raise(('group_norm: num_groups must be an integer, got %s'):format(tostring(g)))
  end
  return g
end

function M.native_group_norm(input, num_groups, weight, bias, eps)
  local op = 'group_norm'
  local x = tensor_arg(op, 'input', input)
  return take3(C.dr_group_norm(x.ptr, groups_arg(num_groups), optional(op, 'weight', weight),
                               optional(op, 'bias', bias), number_arg(op, 'eps', eps, 1e-5),
                               out_box, stats_box, stats_box + 1))
end

function M.group_norm(input, num_groups, weight, bias, eps)
  local op = 'group_norm'
  local x = tensor_arg(op, 'input', input)
  return take(C.dr_group_norm(x.ptr, groups_arg(num_groups), optional(op, 'weight', weight),
                              optional(op, 'bias', bias), number_arg(op, 'eps', eps, 1e-5),
                              out_box, nil, nil))
end

-- ---- functional forms ------------------------------------------------------------------

for _, name in ipairs { 'silu', 'quick_gelu', 'relu', 'sigmoid', 'tanh', 'exp', 'log', 'sqrt',
                        'rsqrt', 'abs', 'gelu', 'pow', 'clamp', 'clamp_min', 'clamp_max',
                        'softmax', 'log_softmax' } do
  local method = Tensor[name]
  M[name] = function(t, ...)
    tensor_arg(name, 'input', t)
    return method(t, ...)
  end
end

return M
