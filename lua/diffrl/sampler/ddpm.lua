-- diffrl.sampler.ddpm: one ancestral DDPM step (Ho et al. 2020, eqs. 6-7) with its
-- log-probability, as diffusers' DDPMScheduler.step (variance_type fixed_small or
-- fixed_large), same interface as ddim.step:
--
--   local prev, x0, log_prob = ddpm.step(sched, model_output, t, x_t,
--                                        { generator = g | noise = n | prev_sample = x })
--
-- The previous timestep is the next entry of sched.timesteps (-1 after the last,
-- where alpha_cumprod_prev = 1), as DDPMScheduler.previous_timestep. Noise is added
-- only where t > 0; std = sqrt(max(variance, 1e-20)) (diffusers clamps so). log_prob
-- [B] is the Gaussian log-density of prev_sample around the posterior mean with that
-- std, averaged over every dim but the batch (the DDPO formula); samples at t = 0
-- are deterministic and score 0. log_prob is never nil here.
local api = require 'diffrl.core.ffi'
local F = require 'diffrl.core.factory'
local common = require 'diffrl.sampler.common'

local raise, f32, coef, scale = api.raise, common.f32, common.coef, common.scale
local M = {}

local OPTIONS = { generator = true, noise = true, prev_sample = true }
local MIN_VARIANCE = f32(1e-20)

function M.prev_timestep(sched, t)
  local ts = sched.timesteps
  for i = 1, #ts do
    if ts[i] == t then return ts[i + 1] or -1 end
  end
  raise(('ddpm.step: timestep %s is not in the schedule\'s %d timesteps (%d..%d)'):format(
    tostring(t), #ts, ts[1], ts[#ts]))
end

local function coefficients(sched, ts, op)
  local c = { sqrt_a = {}, sqrt_b = {}, c0 = {}, cx = {}, std = {} }
  local large = sched.config.variance_type == 'fixed_large'
  for i, t in ipairs(ts) do
    local a_t = sched:alpha_cumprod(t, op)
    local prev_t = M.prev_timestep(sched, t)
    local a_prev = prev_t >= 0 and sched:alpha_cumprod(prev_t, op) or 1
    local beta_t, beta_prev = f32(1 - a_t), f32(1 - a_prev)
    local cur_alpha = f32(a_t / a_prev)
    local cur_beta = f32(1 - cur_alpha)
    c.sqrt_a[i], c.sqrt_b[i] = f32(math.sqrt(a_t)), f32(math.sqrt(beta_t))
    c.c0[i] = f32(f32(f32(math.sqrt(a_prev)) * cur_beta) / beta_t)
    c.cx[i] = f32(f32(f32(math.sqrt(cur_alpha)) * beta_prev) / beta_t)
    local variance = f32(f32(beta_prev / beta_t) * cur_beta)
    variance = math.max(variance, MIN_VARIANCE)
    if large then variance = cur_beta end
    c.std[i] = t > 0 and f32(math.sqrt(variance)) or 0
  end
  return c
end

function M.step(sched, model_output, t, x_t, opts)
  local op = 'ddpm.step'
  common.check_schedule(op, sched)
  common.tensor_arg(op, 'model_output', model_output)
  common.tensor_arg(op, 'sample', x_t)
  common.same_shape(op, 'model_output', model_output, 'sample', x_t)
  opts = common.check_options(op, opts, OPTIONS)
  if opts.noise ~= nil and opts.generator ~= nil then
    raise(op .. ': give noise or generator, not both')
  end
  if opts.prev_sample ~= nil and (opts.noise ~= nil or opts.generator ~= nil) then
    raise(op .. ': prev_sample is scored, not sampled: it takes no noise or generator')
  end
  local b = x_t:size(1)
  local ts = common.timesteps(op, t, b)
  local c = coefficients(sched, ts, op)

  local x0 = common.predict_original(sched, model_output, x_t, coef(c.sqrt_a, x_t),
                                     coef(c.sqrt_b, x_t), false)
  local mean = scale(x0, coef(c.c0, x_t)) + scale(x_t, coef(c.cx, x_t))
  local prev = opts.prev_sample
  if prev ~= nil then
    common.tensor_arg(op, 'prev_sample', prev)
    common.same_shape(op, 'prev_sample', prev, 'sample', x_t)
  else
    local any_noise = false
    for i = 1, b do any_noise = any_noise or ts[i] > 0 end
    prev = mean
    if any_noise then
      local noise = opts.noise
      if noise ~= nil then
        common.tensor_arg(op, 'noise', noise)
        common.same_shape(op, 'noise', noise, 'sample', x_t)
      else
        noise = F.randn(model_output.shape, { generator = opts.generator,
                                              dtype = model_output.dtype, device = model_output.device })
      end
      prev = mean + scale(noise, coef(c.std, x_t))
    end
  end
  return prev, x0, common.gaussian_log_prob(prev, mean, c.std)
end

return M
