-- diffrl.sampler.common: argument checks and per-sample coefficients shared by the
-- DDIM and DDPM steps. Coefficients are float32 values held in Lua numbers (see
-- schedule.f32); a step whose samples share one timestep multiplies by a number, a
-- batch of timesteps by a [B, 1, ..., 1] float32 tensor of the same values, so both
-- round exactly as diffusers' float32 torch does.
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local F = require 'diffrl.core.factory'
local S = require 'diffrl.sampler.schedule'

local raise, f32 = api.raise, S.f32
local M = {}

M.check_options = api.check_options

function M.tensor_arg(op, name, x)
  if not T.is_tensor(x) then raise(('%s: %s must be a tensor, got %s'):format(op, name, type(x))) end
  if x.ndim < 1 then raise(('%s: %s must have a batch dimension, got a 0-d tensor'):format(op, name)) end
  return x
end

-- "[2, 4, 64, 64]"
function M.shape_text(t) return '[' .. table.concat(t.shape, ', ') .. ']' end

function M.same_shape(op, name_a, a, name_b, b)
  if a.shape ~= b.shape then
    raise(('%s: %s %s and %s %s must have the same shape'):format(op, name_a, M.shape_text(a),
          name_b, M.shape_text(b)))
  end
end

function M.check_schedule(op, sched)
  if not S.is_schedule(sched) then
    raise(op .. ': expected a schedule (diffrl.sampler.schedule.from_config), got ' .. type(sched))
  end
  if not sched.num_inference_steps then
    raise(op .. ': the schedule has no inference steps; use schedule:set_timesteps(n) first')
  end
end

-- The timestep of each of the B samples: t a number, a list, or a tensor [B].
function M.timesteps(op, t, b)
  local list
  if type(t) == 'number' then
    list = {}
    for i = 1, b do list[i] = t end
  elseif T.is_tensor(t) then
    if t.ndim == 0 then return M.timesteps(op, t:item(), b) end
    if t.ndim ~= 1 or t:size(1) ~= b then
      raise(('%s: timesteps %s must be a number or have one per sample [%d]'):format(op,
            M.shape_text(t), b))
    end
    list = t:tolist()
  elseif type(t) == 'table' then
    if #t ~= b then raise(('%s: %d timesteps given for a batch of %d'):format(op, #t, b)) end
    list = t
  else
    raise(('%s: timestep must be a number, a list or a tensor, got %s'):format(op, type(t)))
  end
  for i = 1, b do
    local v = list[i]
    if type(v) ~= 'number' or v % 1 ~= 0 then
      raise(('%s: timestep %s must be an integer'):format(op, tostring(v)))
    end
  end
  return list
end

-- A per-sample coefficient for tensor `like` [B, ...]: a number when every sample
-- has the same value, else a float32 tensor [B, 1, ..., 1] on like's device.
function M.coef(values, like)
  local first, same = values[1], true
  for i = 2, #values do
    if values[i] ~= first then same = false; break end
  end
  if same then return first end
  local sizes = { #values }
  for d = 2, like.ndim do sizes[d] = 1 end
  return F.tensor(values, { device = like.device }):reshape(sizes)
end

-- x * c + y * d with c, d numbers or tensors.
local function scale(x, c)
  if type(c) == 'number' then return x * c end
  return c * x
end
M.scale = scale

-- Predicted x_0 (and epsilon when want_eps) from the model output, as diffusers
-- DDIMScheduler.step steps 3-4 (clip_sample included; thresholding refused at load).
function M.predict_original(sched, model_output, x_t, sqrt_a, sqrt_b, want_eps)
  local kind = sched.prediction_type
  local x0, eps
  if kind == 'epsilon' then
    x0 = (x_t - scale(model_output, sqrt_b)) / sqrt_a
    eps = model_output
  elseif kind == 'sample' then
    x0 = model_output
    if want_eps then eps = (x_t - scale(x0, sqrt_a)) / sqrt_b end
  else -- v_prediction
    x0 = scale(x_t, sqrt_a) - scale(model_output, sqrt_b)
    if want_eps then eps = scale(model_output, sqrt_a) + scale(x_t, sqrt_b) end
  end
  local cfg = sched.config
  if cfg.clip_sample then x0 = x0:clamp(-cfg.clip_sample_range, cfg.clip_sample_range) end
  return x0, eps
end

local LOG_SQRT_2PI = f32(math.log(f32(math.sqrt(f32(2 * f32(math.pi))))))

-- ddpo-pytorch's log-probability of prev_sample under N(mean, std^2), elementwise in
-- float32 and then the mean over every dim but the batch: [B]. stds: one float32
-- per sample; a sample with std 0 (a deterministic step) scores 0.
--   log_prob = -(prev - mean)^2 / (2 std^2) - log(std) - log(sqrt(2 pi))
-- Per-sample 2 std^2, log std and a 0/1 mask of the samples with std > 0 (a zero
-- std is replaced by 1 so nothing divides by 0; the mask zeroes those samples).
local function variance_terms(stds)
  local two_var, log_std, keep, any_zero = {}, {}, {}, false
  for i = 1, #stds do
    local s = stds[i]
    if s == 0 then s, any_zero = 1, true end
    two_var[i] = f32(2 * f32(s * s))
    log_std[i] = f32(math.log(s))
    keep[i] = stds[i] == 0 and 0 or 1
  end
  return two_var, log_std, keep, any_zero
end

-- x [B, ...] averaged over every dim but the batch, then masked.
local function per_sample_mean(x, keep, any_zero)
  local dims = {}
  for k = 2, x.ndim do dims[#dims + 1] = k end
  if #dims > 0 then x = x:mean(dims) end
  if any_zero then x = x * F.tensor(keep, { device = x.device }) end
  return x
end

function M.gaussian_log_prob(prev, mean, stds)
  local two_var, log_std, keep, any_zero = variance_terms(stds)
  local d = prev:detach() - mean
  local lp = (d * d) / M.coef(two_var, prev)
  lp = (-lp) - M.coef(log_std, prev)
  lp = lp - LOG_SQRT_2PI
  return per_sample_mean(lp, keep, any_zero)
end

-- gaussian_kl(mean, mean_base, stds) -> [B]: KL(N(mean, std^2) || N(mean_base, std^2))
-- per element, averaged over every dim but the batch as gaussian_log_prob averages:
-- (mean - mean_base)^2 / (2 std^2). Differentiable in mean (mean_base is detached);
-- samples with std 0 give 0.
function M.gaussian_kl(mean, mean_base, stds)
  local two_var, _, keep, any_zero = variance_terms(stds)
  local d = mean - mean_base:detach()
  return per_sample_mean((d * d) / M.coef(two_var, mean), keep, any_zero)
end

M.f32 = f32
return M
