-- diffrl.sampler.cfg: classifier-free guidance (Ho & Salimans 2022), as diffusers'
-- StableDiffusionPipeline does it: one model call on the batch doubled
-- [uncond; cond], split, then uncond + scale * (text - uncond).
--
--   cfg.guide(noise_uncond, noise_text, scale)
--   cfg.predict(model, latents, t, cond, uncond, scale)   -- model(x [2B], t, cond [2B])
--   local m = cfg.wrap(model, cond, uncond, scale)        -- m(x, t): for sampler.sample
--
-- With scale <= 1 (diffusers' do_classifier_free_guidance is scale > 1) the model
-- runs once on the conditional batch only. t may be a number or a tensor [B] (then
-- doubled too). Differentiable: the PPO step recomputes guided predictions with
-- gradients through the same code.
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local shape = require 'diffrl.core.ops_shape'
local common = require 'diffrl.sampler.common'

local raise = api.raise
local M = {}

function M.guide(noise_uncond, noise_text, scale)
  if type(scale) ~= 'number' then raise('cfg.guide: scale must be a number, got ' .. type(scale)) end
  if noise_uncond.shape ~= noise_text.shape then
    raise(('cfg.guide: noise_uncond %s and noise_text %s must have the same shape'):format(
      common.shape_text(noise_uncond), common.shape_text(noise_text)))
  end
  return noise_uncond + (noise_text - noise_uncond) * scale
end

local function doubled(x)
  if T.is_tensor(x) then return shape.cat({ x, x }, 1) end
  return x
end

function M.predict(model, latents, t, cond, uncond, scale)
  if type(model) ~= 'function' and not (type(model) == 'table' and getmetatable(model)
                                        and getmetatable(model).__call) then
    raise('cfg.predict: model must be a function (x, t, cond) -> prediction, got ' .. type(model))
  end
  if type(scale) ~= 'number' then raise('cfg.predict: scale must be a number, got ' .. type(scale)) end
  if scale <= 1 or uncond == nil then return model(latents, t, cond) end
  if T.is_tensor(cond) and T.is_tensor(uncond) and cond.shape ~= uncond.shape then
    raise(('cfg.predict: cond %s and uncond %s must have the same shape'):format(
      common.shape_text(cond), common.shape_text(uncond)))
  end
  local b = latents:size(1)
  local out = model(doubled(latents), doubled(t), shape.cat({ uncond, cond }, 1))
  if not T.is_tensor(out) or out:size(1) ~= 2 * b then
    raise(('cfg.predict: the model must return a tensor with %d rows (the doubled batch), got %s')
      :format(2 * b, T.is_tensor(out) and common.shape_text(out) or type(out)))
  end
  return M.guide(out:narrow(1, 1, b), out:narrow(1, b + 1, b), scale)
end

function M.wrap(model, cond, uncond, scale)
  return function(x, t) return M.predict(model, x, t, cond, uncond, scale) end
end

return M
