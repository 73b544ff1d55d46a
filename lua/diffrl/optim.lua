-- diffrl.optim: optimizers, gradient clipping, EMA and learning-rate schedules,
-- named and parameterised as torch.optim. Updates are fused C kernels
-- (core/ops/optim.c), one pass per parameter, run under no_grad.
--
--   local opt = dr.optim.AdamW(params, { lr = 1e-4, weight_decay = 1e-2 })
--   loss:backward(); dr.optim.clip_grad_norm_(params, 1.0); opt:step(); opt:zero_grad()
--
-- flat = true moves every parameter into one contiguous buffer (the tensors
-- become views of it) and gives each a .grad that is a view of one flat gradient
-- buffer, so a step is a single fused pass over all parameters. Gradients are
-- then zeroed, not cleared, and every parameter is updated each step (as torch
-- with zero_grad(set_to_none=False)).
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'

local raise = api.raise
local M = {}

local function check_params(params, who)
  if type(params) ~= 'table' or #params == 0 then
    raise(who .. ': expected a non-empty list of tensors')
  end
  for i, p in ipairs(params) do
    if not core.is_tensor(p) then raise(('%s: params[%d] is a %s, not a tensor'):format(who, i, type(p))) end
  end
  return params
end

local function option(opts, key, default, who)
  local v = opts[key]
  if v == nil then return default end
  if type(v) ~= type(default) then
    raise(('%s: option %s must be a %s, got %s'):format(who, key, type(default), type(v)))
  end
  return v
end

-- Gathers params into one flat buffer and their grads into another (see above).
local function flatten(params, who)
  local total = 0
  for i, p in ipairs(params) do
    if p.dtype ~= 'float32' or p.device ~= params[1].device then
      raise(('%s: flat = true needs float32 parameters on one device; params[%d] is %s on %s')
        :format(who, i, p.dtype, p.device))
    end
    total = total + p:numel()
  end
  local on = { device = params[1].device }
  local flat = { params = core.empty(total, on), grads = core.zeros(total, on), views = {} }
  core.no_grad(function()
    local offset = 0
    for i, p in ipairs(params) do
      local n = p:numel()
      p:rebind_(flat.params, offset)
      flat.views[i] = flat.grads:narrow(1, offset + 1, n):view(p.shape)
      p.grad = flat.views[i]
      offset = offset + n
    end
  end)
  return flat
end

local function check_known(opts, known, who)
  for k in pairs(opts) do
    if not known[k] then raise(("%s: unknown option '%s'"):format(who, tostring(k))) end
  end
end

-- ---- AdamW --------------------------------------------------------------------

local AdamW = {}
AdamW.__index = AdamW

function M.AdamW(params, opts)
  opts = opts or {}
  check_known(opts, { lr = true, betas = true, eps = true, weight_decay = true, flat = true },
              'AdamW')
  local betas = opts.betas or { 0.9, 0.999 }
  local self = setmetatable({
    params = check_params(params, 'AdamW'),
    lr = option(opts, 'lr', 1e-3, 'AdamW'),
    beta1 = betas[1], beta2 = betas[2],
    eps = option(opts, 'eps', 1e-8, 'AdamW'),
    weight_decay = option(opts, 'weight_decay', 1e-2, 'AdamW'),
    step_count = 0,
    state = {},
  }, AdamW)
  if opts.flat then self.flat = flatten(self.params, 'AdamW') end
  return self
end

function AdamW:step()
  self.step_count = self.step_count + 1
  local flat = self.flat
  if flat then -- one fused pass over every parameter
    local s = self.state.flat
    if not s then
      local on = { device = flat.params.device } -- optimizer state lives beside its parameters
      s = { exp_avg = core.zeros(flat.params:numel(), on), exp_avg_sq = core.zeros(flat.params:numel(), on) }
      self.state.flat = s
    end
    core.no_grad(function()
      core.adamw_step_(flat.params, flat.grads, s.exp_avg, s.exp_avg_sq, self.lr, self.beta1,
                       self.beta2, self.eps, self.weight_decay, self.step_count)
    end)
    return
  end
  core.no_grad(function()
    for i, p in ipairs(self.params) do
      local g = p.grad
      if g then
        local s = self.state[i]
        if not s then
          local on = { device = p.device }
          s = { exp_avg = core.zeros(p.shape, on), exp_avg_sq = core.zeros(p.shape, on), step = 0 }
          self.state[i] = s
        end
        s.step = s.step + 1
        core.adamw_step_(p, g:contiguous(), s.exp_avg, s.exp_avg_sq, self.lr, self.beta1,
                         self.beta2, self.eps, self.weight_decay, s.step)
      end
    end
  end)
end

-- ---- SGD -----------------------------------------------------------------------

local SGD = {}
SGD.__index = SGD

function M.SGD(params, opts)
  opts = opts or {}
  check_known(opts, { lr = true, momentum = true, dampening = true, weight_decay = true,
                      nesterov = true }, 'SGD')
  if opts.lr == nil then raise('SGD: option lr is required') end
  return setmetatable({
    params = check_params(params, 'SGD'),
    lr = option(opts, 'lr', 0, 'SGD'),
    momentum = option(opts, 'momentum', 0, 'SGD'),
    dampening = option(opts, 'dampening', 0, 'SGD'),
    weight_decay = option(opts, 'weight_decay', 0, 'SGD'),
    nesterov = option(opts, 'nesterov', false, 'SGD'),
    step_count = 0,
    state = {},
  }, SGD)
end

function SGD:step()
  self.step_count = self.step_count + 1
  core.no_grad(function()
    for i, p in ipairs(self.params) do
      local g = p.grad
      if g then
        local s = self.state[i]
        local first = false
        if not s then
          s = { momentum_buffer = self.momentum ~= 0 and core.zeros(p.shape, { device = p.device }) or nil }
          self.state[i] = s
          first = true
        end
        core.sgd_step_(p, g:contiguous(), s.momentum_buffer, self.lr, self.momentum,
                       self.dampening, self.weight_decay, self.nesterov, first)
      end
    end
  end)
end

-- ---- shared ----------------------------------------------------------------------

-- Clears gradients (torch's default set_to_none=True); in flat mode zeroes the
-- flat gradient buffer and re-attaches each parameter's view of it.
local function zero_grad(self)
  local flat = self.flat
  if flat then
    core.no_grad(function() flat.grads:zero_() end)
    for i, p in ipairs(self.params) do p.grad = flat.views[i] end
    return
  end
  for _, p in ipairs(self.params) do p.grad = nil end
end
AdamW.zero_grad, SGD.zero_grad = zero_grad, zero_grad

-- Everything a checkpoint needs to resume exactly (tensors are the live state).
local function state_dict(self)
  return { step_count = self.step_count, lr = self.lr, state = self.state }
end
local function load_state_dict(self, sd)
  if type(sd) ~= 'table' or type(sd.state) ~= 'table' then
    raise('load_state_dict: expected a table from state_dict()')
  end
  self.step_count, self.lr, self.state = sd.step_count or 0, sd.lr or self.lr, sd.state
end
AdamW.state_dict, SGD.state_dict = state_dict, state_dict
AdamW.load_state_dict, SGD.load_state_dict = load_state_dict, load_state_dict

-- ---- gradient clipping, EMA -------------------------------------------------------

-- Scales all gradients so their global L2 norm is at most max_norm; returns the
-- norm before clipping (torch.nn.utils.clip_grad_norm_).
function M.clip_grad_norm_(params, max_norm)
  check_params(params, 'clip_grad_norm_')
  if type(max_norm) ~= 'number' or max_norm <= 0 then
    raise('clip_grad_norm_: max_norm must be a positive number, got ' .. tostring(max_norm))
  end
  local total, grads = 0, {}
  for _, p in ipairs(params) do
    local g = p.grad
    if g then
      g = g:contiguous()
      grads[#grads + 1] = { p, g }
      total = total + core.sum_squares(g)
    end
  end
  total = math.sqrt(total)
  local coef = max_norm / (total + 1e-6)
  if coef < 1 then
    core.no_grad(function()
      for _, pg in ipairs(grads) do
        pg[2]:mul_(coef)
        pg[1].grad = pg[2]
      end
    end)
  end
  return total
end

-- Exponential moving average of parameters: ema <- decay*ema + (1-decay)*param.
local EMA = {}
EMA.__index = EMA

function M.EMA(params, decay)
  check_params(params, 'EMA')
  if type(decay) ~= 'number' or decay < 0 or decay > 1 then
    raise('EMA: decay must be a number in [0, 1], got ' .. tostring(decay))
  end
  local shadow = {}
  core.no_grad(function()
    for i, p in ipairs(params) do shadow[i] = p:detach():clone() end
  end)
  return setmetatable({ params = params, decay = decay, shadow = shadow }, EMA)
end

function EMA:update()
  core.no_grad(function()
    for i, p in ipairs(self.params) do self.shadow[i]:lerp_(p:contiguous(), 1 - self.decay) end
  end)
end

-- Copies the averaged weights into the parameters (e.g. for sampling).
function EMA:copy_to(params)
  core.no_grad(function()
    for i, p in ipairs(params or self.params) do p:copy_(self.shadow[i]) end
  end)
end

-- ---- learning-rate schedules: step (1-based) -> lr ---------------------------------

M.schedules = {}

function M.schedules.constant(lr)
  return function() return lr end
end

-- Linear warmup from 0 over `warmup` steps, then constant.
function M.schedules.warmup(lr, warmup)
  return function(step) return step < warmup and lr * step / warmup or lr end
end

-- Linear warmup, then cosine decay to min_lr at `total` steps.
function M.schedules.cosine(lr, total, warmup, min_lr)
  warmup, min_lr = warmup or 0, min_lr or 0
  return function(step)
    if step < warmup then return lr * step / warmup end
    local t = math.min(1, (step - warmup) / math.max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))
  end
end

return M
