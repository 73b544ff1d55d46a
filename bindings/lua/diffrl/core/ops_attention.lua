-- diffrl.core.ops_attention: torch.nn.functional.scaled_dot_product_attention
-- (memory-efficient, on the autograd tape for query, key and value) and its
-- explicit backward. Attention dropout is not supported: dropout_p must be 0.
--
--   dr.scaled_dot_product_attention(q, k, v[, {attn_mask=, dropout_p=, is_causal=, scale=}])
--   dr.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)  -- torch's order
--
-- q [..., Lq, E], k [..., Lk, E], v [..., Lk, Ev] -> [..., Lq, Ev]. attn_mask: bool
-- (true = attend) or float (added to the scores), broadcastable to [..., Lq, Lk].
-- is_causal: query i sees keys j <= i (top-left aligned, as torch). scale: default
-- 1/sqrt(E). A query row that may attend no key gives zeros (torch >= 2.5).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local take, out_box, is_tensor = T.take, T.out_box, T.is_tensor

local M = {}
local OP = 'scaled_dot_product_attention'
local KNOWN = { attn_mask = true, dropout_p = true, is_causal = true, scale = true }
local grads_box = ffi.new('dr_tensor*[3]')

local function tensor_arg(op, name, t)
  if not is_tensor(t) then raise(('%s: %s must be a tensor, got %s'):format(op, name, type(t))) end
  return t.ptr
end

-- The C arguments after q, k, v from an options table or torch's positional list.
local function attention_options(op, mask, dropout_p, is_causal, scale)
  if type(mask) == 'table' then
    if dropout_p ~= nil then
      raise(('%s: pass either an options table or positional arguments, not both'):format(op))
    end
    for key in pairs(mask) do
      if not KNOWN[key] then raise(("%s: unknown option '%s'"):format(op, tostring(key))) end
    end
    mask, dropout_p, is_causal, scale = mask.attn_mask, mask.dropout_p, mask.is_causal, mask.scale
  end
  if mask ~= nil and not is_tensor(mask) then
    raise(('%s: attn_mask must be a tensor or nil, got %s'):format(op, type(mask)))
  end
  if dropout_p ~= nil and dropout_p ~= 0 then
    raise(('%s: dropout_p must be 0 (attention dropout is not supported), got %s')
      :format(op, tostring(dropout_p)))
  end
  if is_causal ~= nil and type(is_causal) ~= 'boolean' then
    raise(('%s: is_causal must be a boolean, got %s'):format(op, type(is_causal)))
  end
  if scale ~= nil and not (type(scale) == 'number' and scale > 0 and scale < math.huge) then
    raise(('%s: scale must be a positive finite number or nil (1/sqrt(E)), got %s')
      :format(op, tostring(scale)))
  end
  return mask and mask.ptr or nil, is_causal and 1 or 0, scale or 0
end

function M.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)
  local qp, kp, vp = tensor_arg(OP, 'query', q), tensor_arg(OP, 'key', k), tensor_arg(OP, 'value', v)
  local m, causal, s = attention_options(OP, attn_mask, dropout_p, is_causal, scale)
  return take(C.dr_scaled_dot_product_attention(qp, kp, vp, m, causal, s, out_box))
end

-- grad_q, grad_k, grad_v = dr.scaled_dot_product_attention_backward(grad_out, q, k, v[, opts])
-- with the forward's options (the forward is recomputed tile by tile).
function M.scaled_dot_product_attention_backward(grad_out, q, k, v, ...)
  local op = OP .. '_backward'
  local gp = tensor_arg(op, 'grad_out', grad_out)
  local qp, kp, vp = tensor_arg(op, 'query', q), tensor_arg(op, 'key', k), tensor_arg(op, 'value', v)
  local m, causal, s = attention_options(op, ...)
  local status = C.dr_scaled_dot_product_attention_backward(gp, qp, kp, vp, m, causal, s, nil, nil,
                                                            grads_box, grads_box + 1, grads_box + 2)
  if status ~= 0 then raise(ffi.string(C.dr_last_error())) end
  local r = {}
  for i = 1, 3 do
    out_box[0] = grads_box[i - 1]
    r[i] = take(0)
  end
  return r[1], r[2], r[3]
end

return M
