-- diffrl.sampler.ddim: one DDIM step (Song et al. 2020, eqs. 12 and 16) with the
-- log-probability of the step, the policy of the paper's MDP (PAPER.md, Algorithm).
--
--   local prev, x0, log_prob = ddim.step(sched, model_output, t, x_t,
--                                        { eta = 1.0, generator = g })
--
-- sched: a schedule after set_timesteps(n). t: the current timestep, a number, or
-- one per sample (a list or a tensor [B]). model_output and x_t: [B, ...], same shape.
-- Options:
--   eta         0 (default: deterministic DDIM) .. 1 (DDPM-like variance)
--   generator   dr.Generator drawing the noise (else the default generator)
--   noise       the standard normal noise to use instead (diffusers' variance_noise)
--   prev_sample x_{t-1} to score instead of sampling one (PPO's ratio needs the
--               log-probability of the stored action under the current model);
--               it is returned as prev_sample. Needs eta > 0.
-- Returns prev_sample, pred_original_sample and log_prob [B] (nil when eta = 0: a
-- deterministic step has no density), then the step's mean and its per-sample std
-- (a list; for an analytic KL between two models' steps: common.gaussian_kl).
--
-- prev_sample and pred_original_sample are diffusers' DDIMScheduler.step
-- (use_clipped_model_output = False): prev timestep t - T // n, alphas_cumprod of it
-- or final_alpha_cumprod below 0, std_dev_t = eta * sqrt(variance). log_prob is
-- ddpo-pytorch's ddim_step_with_logprob: the Gaussian log-density of prev_sample
-- around the step's mean with std std_dev_t, per element, averaged over every dim
-- but the batch. (ddpo clamps the previous timestep to >= 0, so its final step uses
-- alphas_cumprod[0] even with set_alpha_to_one; we follow diffusers. A sample whose
-- std_dev_t is 0, the final step of a set_alpha_to_one schedule, scores 0.)
-- Differentiable in model_output (prev_sample given is detached in the log-prob).
local api = require 'diffrl.core.ffi'
local F = require 'diffrl.core.factory'
local common = require 'diffrl.sampler.common'

local raise, f32, coef, scale = api.raise, common.f32, common.coef, common.scale
local M = {}

local OPTIONS = { eta = true, generator = true, noise = true, prev_sample = true }

-- The per-sample float32 coefficients of the step at timesteps ts.
local function coefficients(sched, ts, eta, op)
  local T = sched.num_train_timesteps
  local stride = math.floor(T / sched.num_inference_steps)
  local c = { sqrt_a = {}, sqrt_b = {}, sqrt_a_prev = {}, dir = {}, std = {} }
  for i, t in ipairs(ts) do
    local a_t = sched:alpha_cumprod(t, op)
    local prev_t = t - stride
    local a_prev = prev_t >= 0 and sched:alpha_cumprod(prev_t, op) or sched.final_alpha_cumprod
    local beta_t, beta_prev = f32(1 - a_t), f32(1 - a_prev)
    local variance = f32(f32(beta_prev / beta_t) * f32(1 - f32(a_t / a_prev)))
    local std = f32(f32(eta) * f32(math.sqrt(variance)))
    c.sqrt_a[i], c.sqrt_b[i] = f32(math.sqrt(a_t)), f32(math.sqrt(beta_t))
    c.sqrt_a_prev[i] = f32(math.sqrt(a_prev))
    -- 1 - a_prev - std^2 is 0 in exact arithmetic at eta 1 with zero terminal SNR
    -- (a_t = 0); rounding can make it negative, where diffusers gets nan: clamp.
    c.dir[i] = f32(math.sqrt(math.max(0, f32(beta_prev - f32(std * std)))))
    c.std[i] = std
  end
  return c
end

function M.step(sched, model_output, t, x_t, opts)
  local op = 'ddim.step'
  common.check_schedule(op, sched)
  common.tensor_arg(op, 'model_output', model_output)
  common.tensor_arg(op, 'sample', x_t)
  common.same_shape(op, 'model_output', model_output, 'sample', x_t)
  opts = common.check_options(op, opts, OPTIONS)
  local eta = opts.eta or 0
  if type(eta) ~= 'number' or eta < 0 or eta ~= eta then
    raise(('%s: eta must be a number >= 0, got %s'):format(op, tostring(eta)))
  end
  if opts.noise ~= nil and opts.generator ~= nil then
    raise(op .. ': give noise or generator, not both')
  end
  if opts.prev_sample ~= nil and (opts.noise ~= nil or opts.generator ~= nil) then
    raise(op .. ': prev_sample is scored, not sampled: it takes no noise or generator')
  end
  if eta == 0 and opts.prev_sample ~= nil then
    raise(op .. ': prev_sample given with eta = 0: a deterministic step has no log-probability')
  end
  local b = x_t:size(1)
  local ts = common.timesteps(op, t, b)
  local c = coefficients(sched, ts, eta, op)

  local x0, eps = common.predict_original(sched, model_output, x_t, coef(c.sqrt_a, x_t),
                                          coef(c.sqrt_b, x_t), true)
  local mean = scale(x0, coef(c.sqrt_a_prev, x_t)) + scale(eps, coef(c.dir, x_t))
  if eta == 0 then return mean, x0, nil, mean, c.std end

  local prev = opts.prev_sample
  if prev ~= nil then
    common.tensor_arg(op, 'prev_sample', prev)
    common.same_shape(op, 'prev_sample', prev, 'sample', x_t)
  else
    local noise = opts.noise
    if noise ~= nil then
      common.tensor_arg(op, 'noise', noise)
      common.same_shape(op, 'noise', noise, 'sample', x_t)
    else
      noise = F.randn(model_output.shape, { generator = opts.generator, dtype = model_output.dtype,
                                            device = model_output.device })
    end
    prev = mean + scale(noise, coef(c.std, x_t))
  end
  return prev, x0, common.gaussian_log_prob(prev, mean, c.std), mean, c.std
end

-- The previous timestep diffusers' DDIM uses after t (may be negative: final alpha).
function M.prev_timestep(sched, t)
  common.check_schedule('ddim.prev_timestep', sched)
  return t - math.floor(sched.num_train_timesteps / sched.num_inference_steps)
end

return M
