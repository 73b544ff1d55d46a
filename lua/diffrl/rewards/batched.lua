-- diffrl.rewards.batched: what the reward models (imagereward.lua, clip.lua) share:
-- checking the reward's inputs, scoring them in chunks without gradients, and the
-- prompt tokens of a chunk.
--
--   local scores = batched.score(op, images, prompts, { batch = 8, need_prompts = true,
--                                tokenize = fn, ids_of = 'int64 ids' }, function(x, ids, mask, count)
--     return scores_tensor_or_list   -- [count]
--   end)
-- images [B, 3, H, W] in [0, 1] (a CUDA tensor is copied to the CPU); prompts a list
-- of B strings when need_prompts; tokenize(part) -> ids [count, L][, mask] for the
-- chunk's prompts (checked). Returns B Lua numbers.
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local autograd = require 'diffrl.core.autograd'

local raise = api.raise
local M = {}

function M.positive_int(op, key, v, default)
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < 1 then
    raise(('%s: %s must be a positive integer, got %s'):format(op, key, tostring(v)))
  end
  return v
end

local function describe(x)
  return T.is_tensor(x) and ('[' .. table.concat(x.shape, ', ') .. ']') or type(x)
end

function M.score(op, images, prompts, opts, fn)
  if not T.is_tensor(images) or images.ndim ~= 4 then
    raise(op .. ': images must be a tensor [B, 3, H, W] in [0, 1]')
  end
  local n = images:size(1)
  if opts.need_prompts and (type(prompts) ~= 'table' or #prompts ~= n) then
    raise(('%s: expected %d prompts for %d images'):format(op, n, n))
  end
  local scores = {}
  autograd.no_grad(function()
    local x = images:detach()
    if x.is_cuda then x = x:to { device = 'cpu' } end
    for first = 1, n, opts.batch do
      local count = math.min(opts.batch, n - first + 1)
      local ids, mask
      if opts.tokenize then
        local part = {}
        for i = 1, count do part[i] = prompts[first + i - 1] end
        ids, mask = opts.tokenize(part)
        if not T.is_tensor(ids) or ids.ndim ~= 2 or ids:size(1) ~= count then
          raise(('%s: the tokenizer returned %s for %d prompts (expected int64 ids [%d, L])')
            :format(op, describe(ids), count, count))
        end
      end
      local s = fn(x:narrow(1, first, count), ids, mask, count)
      local list = T.is_tensor(s) and s:tolist() or s
      for i = 1, count do scores[first + i - 1] = list[i] end
      if T.is_tensor(s) then s:free() end
    end
  end)
  return scores
end

return M
