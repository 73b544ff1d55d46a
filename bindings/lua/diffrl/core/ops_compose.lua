-- diffrl.core.ops_compose: torch.nn.functional ops that are compositions of the
-- C ops (their gradients come from the parts): linear, bmm, geglu.
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local raise = api.raise
local M = {}

local function tensor_arg(x, op, what)
  if not T.is_tensor(x) then raise(('%s: %s must be a tensor, got %s'):format(op, what, type(x))) end
  return x
end

-- F.linear(input, weight[, bias]) = input @ weight^T + bias; weight [out, in].
function M.linear(input, weight, bias)
  tensor_arg(input, 'linear', 'input')
  tensor_arg(weight, 'linear', 'weight')
  if weight.ndim ~= 2 then raise(('linear: weight must be 2-d [out, in], got %s'):format(tostring(weight.shape))) end
  local y = input:matmul(weight:t())
  if bias ~= nil then y = y + tensor_arg(bias, 'linear', 'bias') end
  return y
end

-- torch.bmm: batched matrix product of two 3-d tensors (no broadcasting).
function M.bmm(a, b)
  tensor_arg(a, 'bmm', 'input')
  tensor_arg(b, 'bmm', 'mat2')
  if a.ndim ~= 3 or b.ndim ~= 3 or a:size(1) ~= b:size(1) then
    raise(('bmm: expects two 3-d tensors with the same batch size, got %s and %s'):format(
      tostring(a.shape), tostring(b.shape)))
  end
  return a:matmul(b)
end

-- GEGLU (diffusers' attention feed-forward): split the last dim in two halves,
-- hidden * gelu(gate).
function M.geglu(x)
  tensor_arg(x, 'geglu', 'input')
  local n = x:size(-1)
  if n % 2 ~= 0 then raise(('geglu: last dimension %d must be even'):format(n)) end
  local hidden, gate = x:narrow(-1, 1, n / 2), x:narrow(-1, n / 2 + 1, n / 2)
  return hidden * gate:gelu()
end

T.Tensor.bmm = M.bmm
return M
