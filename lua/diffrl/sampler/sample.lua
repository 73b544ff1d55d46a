-- diffrl.sampler.sample: the denoising loop, keeping what policy-gradient training
-- needs (PAPER.md, Algorithm step 1: per step x_t, x_{t-1}, t, log p_old).
--
--   local x0, traj = sampler.sample {
--     scheduler = sched,            -- a schedule (from_config); set_timesteps(steps) is applied
--     model = function(x, t) return eps end,   -- e.g. cfg.wrap(unet, cond, uncond, 7.0)
--     latents = x_T,                -- or shape = {B, 4, 64, 64} (drawn from generator)
--     steps = 50, eta = 1.0,        -- eta 0: deterministic DDIM (no log_probs)
--     method = 'ddim',              -- or 'ddpm'
--     generator = g,                -- dr.Generator for x_T and every step's noise
--     keep_trajectory = true,
--     progress = function(i, n) end,
--     grad = false,                 -- run the model with gradients (default: no_grad)
--   }
--   traj = { timesteps = {981, ..., 1}, latents = {x_T, ..., x_0} (steps + 1 tensors),
--            log_probs = [B, steps] float32 (nil for eta 0) }
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local F = require 'diffrl.core.factory'
local autograd = require 'diffrl.core.autograd'
local shape = require 'diffrl.core.ops_shape'
local S = require 'diffrl.sampler.schedule'
local ddim = require 'diffrl.sampler.ddim'
local ddpm = require 'diffrl.sampler.ddpm'
local common = require 'diffrl.sampler.common'

local raise = api.raise
local M = {}

local OPTIONS = { scheduler = true, model = true, latents = true, shape = true, steps = true,
                  eta = true, method = true, generator = true, keep_trajectory = true,
                  progress = true, grad = true, device = true }

local function run(o)
  local sched = o.scheduler:set_timesteps(o.steps)
  local step = o.method == 'ddpm' and ddpm.step or ddim.step
  local x = o.latents
  if x == nil then
    x = F.randn(o.shape, { generator = o.generator, device = o.device }) * sched.init_noise_sigma
  end
  local keep = o.keep_trajectory
  local lats, lps = keep and { x } or nil, keep and {} or nil
  local n = #sched.timesteps
  for i, t in ipairs(sched.timesteps) do
    local out = o.model(x, t)
    if not T.is_tensor(out) then
      raise(('sample: the model must return a tensor, got %s at step %d (t = %d)'):format(type(out), i, t))
    end
    local step_opts = { generator = o.generator }
    if o.method ~= 'ddpm' then step_opts.eta = o.eta end
    local prev, _, lp = step(sched, out, t, x, step_opts)
    x = prev
    if keep then
      lats[i + 1] = x
      if lp then lps[i] = lp end
    end
    if o.progress then o.progress(i, n) end
  end
  local traj
  if keep then
    local ts = {}
    for i, t in ipairs(sched.timesteps) do ts[i] = t end
    traj = { timesteps = ts, latents = lats, log_probs = #lps == n and shape.stack(lps, 2) or nil }
  end
  return x, traj
end

function M.sample(o)
  if type(o) ~= 'table' then raise('sample: expected a table of options, got ' .. type(o)) end
  common.check_options('sample', o, OPTIONS)
  if not S.is_schedule(o.scheduler) then
    raise('sample: scheduler must be a schedule (sampler.schedule.from_config), got ' .. type(o.scheduler))
  end
  if o.model == nil then raise('sample: model (a function (x, t) -> prediction) is required') end
  if (o.latents == nil) == (o.shape == nil) then raise('sample: give latents or shape (one of them)') end
  if o.latents ~= nil and not T.is_tensor(o.latents) then
    raise('sample: latents must be a tensor, got ' .. type(o.latents))
  end
  if type(o.steps) ~= 'number' then raise('sample: steps (a number) is required') end
  if o.method ~= nil and o.method ~= 'ddim' and o.method ~= 'ddpm' then
    raise(("sample: unknown method '%s' (ddim, ddpm)"):format(tostring(o.method)))
  end
  if o.method == 'ddpm' and o.eta ~= nil then raise('sample: eta is a DDIM option (method ddpm)') end
  if o.grad then return run(o) end
  return autograd.no_grad(run, o)
end

return M
