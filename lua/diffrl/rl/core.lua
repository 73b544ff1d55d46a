-- diffrl.rl.core: the pure pieces of the paper's policy-gradient algorithm
-- (PAPER.md, Algorithm steps 3-5), each small and checked on hand-made numbers in
-- spec/rl_core_spec.lua. Nothing here samples images, keeps run state or talks
-- to other ranks: the trainer (rl/trainer.lua) wires these together.
--
--   local adv, info = core.advantages(rewards, { clip = 10 })        -- global batch
--   local tracker = core.PerPromptTracker.new { buffer_size = 16, min_count = 16 }
--   local adv = tracker:update(prompts, rewards)                     -- ddpo's option
--   local adv = core.group_advantages(rewards, group_ids)            -- GRPO-style
--   local c = core.leave_one_out(rewards, group_ids, rescore)        -- group-reward credit
--   local idx = core.choose_timesteps(50, 5, gen)                    -- step indices
--   local loss, st = core.trajectory_step_loss { ... }               -- one PPO step
--   local loss, st = core.ppo_loss(lp_new, lp_old, adv, { clip_range = 1e-4 })
--   local kl = core.kl_to_base(lp_new, lp_base)                      -- optional penalty
--   local l = core.pretrain_loss(pred, noise, x0, ts, sched)         -- L_pre
--   local x_t = core.add_noise(x0, noise, ts, sched)
--   if not core.all_finite { loss, gn } then skip the step end
--
-- Sources: the paper (Zhang et al. 2024, arXiv 2401.12244) Sec. 3 / Alg. 1 and its
-- official code pinterest/atg-research joint-rl-diffusion/train.py ("official"),
-- kvablack/ddpo-pytorch scripts/train.py and ddpo_pytorch/stat_tracking.py
-- ("ddpo"), diffusers 0.42.1 DDPMScheduler ("diffusers").
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local F = require 'diffrl.core.factory'
local autograd = require 'diffrl.core.autograd'
local shape = require 'diffrl.core.ops_shape'
local sampler_cfg = require 'diffrl.sampler.cfg'
local ddim = require 'diffrl.sampler.ddim'
local S = require 'diffrl.sampler.schedule'
local common = require 'diffrl.sampler.common'

local raise, f32 = api.raise, S.f32
local M = {}

-- ---- numbers ------------------------------------------------------------------------

local function is_finite(x) return x == x and x ~= math.huge and x ~= -math.huge end

local function check_opts(op, opts, allowed)
  return common.check_options(op, opts, allowed)
end

-- A Lua list of numbers from a list or a 1-d tensor; errors name the element.
local function number_list(op, what, xs)
  if T.is_tensor(xs) then
    if xs.ndim ~= 1 then raise(('%s: %s must be 1-d, got %s'):format(op, what, common.shape_text(xs))) end
    return autograd.no_grad(function() return xs:detach():float():tolist() end)
  end
  if type(xs) ~= 'table' then raise(('%s: %s must be a list of numbers, got %s'):format(op, what, type(xs))) end
  for i = 1, #xs do
    if type(xs[i]) ~= 'number' then
      raise(('%s: %s[%d] is a %s, expected a number'):format(op, what, i, type(xs[i])))
    end
  end
  return xs
end

-- Mean and standard deviation of the finite values of xs (indices in `rows`, all
-- when nil), in double. unbiased: divide by n - 1 (torch.std's default), else by
-- n (numpy's np.std). n = 0 gives mean 0, std 0; n = 1 unbiased gives std 0 (torch
-- gives nan there; 0 makes the one sample's advantage (r - mean) / eps = 0).
local function moments(xs, rows, unbiased)
  local n, sum = 0, 0
  local count = rows and #rows or #xs
  for k = 1, count do
    local x = xs[rows and rows[k] or k]
    if is_finite(x) then n, sum = n + 1, sum + x end
  end
  if n == 0 then return 0, 0, 0 end
  -- the two-pass mean with its correction term (Bjorck): equal rewards give their
  -- value exactly, hence advantages exactly 0
  local mean, corr = sum / n, 0
  for k = 1, count do
    local x = xs[rows and rows[k] or k]
    if is_finite(x) then corr = corr + (x - mean) end
  end
  mean = mean + corr / n
  local ss = 0
  for k = 1, count do
    local x = xs[rows and rows[k] or k]
    if is_finite(x) then ss = ss + (x - mean) * (x - mean) end
  end
  local div = unbiased and n - 1 or n
  return mean, div > 0 and math.sqrt(ss / div) or 0, n
end

local function clip_value(op, clip)
  if clip == nil then return 10 end
  if clip == false then return math.huge end
  if type(clip) ~= 'number' or not (clip > 0) then
    raise(('%s: clip must be a positive number or false, got %s'):format(op, tostring(clip)))
  end
  return clip
end

local function eps_value(op, eps, default)
  if eps == nil then return default end
  if type(eps) ~= 'number' or not (eps >= 0) then
    raise(('%s: eps must be a number >= 0, got %s'):format(op, tostring(eps)))
  end
  return eps
end

-- (r - mean) / (std + eps) clamped to [-clip, clip]; 0 for a non-finite reward.
local function normalized(r, mean, std, eps, clip)
  if not is_finite(r) then return 0 end
  local a = (r - mean) / (std + eps)
  if a ~= a then return 0 end -- std + eps = 0 and r = mean
  return math.max(-clip, math.min(clip, a))
end

-- ---- advantages: the global batch ---------------------------------------------------

-- core.advantages(rewards, opts) -> advantages (Lua list), info
--   A_i = clamp((r_i - mean) / (std + eps), -clip, clip)
-- over the GLOBAL batch (all ranks' rewards gathered first; PAPER.md step 3: not per
-- prompt). The official train.py: (r - mean(valid)) / (torch.std(valid) + 1e-7),
-- clamp(+-ADV_CLIP_MAX = 10), NaN rewards excluded from the statistics.
-- opts: clip (10; false: none), eps (1e-7), unbiased (true: torch.std, n - 1, as the
--       official code; false: population std, np.std, as ddpo's global branch).
-- A NaN or +-inf reward is excluded from mean and std and gets advantage 0 (no
-- gradient from it). Computed in double from the Lua numbers (official: float32).
-- info = { mean, std, n_valid, n_nonfinite } (mean = std = 0 when nothing is valid).
local ADV_OPTS = { clip = true, eps = true, unbiased = true }
function M.advantages(rewards, opts)
  local op = 'advantages'
  opts = check_opts(op, opts, ADV_OPTS)
  local rs = number_list(op, 'rewards', rewards)
  local clip, eps = clip_value(op, opts.clip), eps_value(op, opts.eps, 1e-7)
  local unbiased = opts.unbiased ~= false
  local mean, std, n = moments(rs, nil, unbiased)
  local adv = {}
  for i = 1, #rs do adv[i] = normalized(rs[i], mean, std, eps, clip) end
  return adv, { mean = mean, std = std, n_valid = n, n_nonfinite = #rs - n }
end

-- core.scale_negative(advantages, scale) -> advantages with each negative one
-- multiplied by scale (a new list; scale 1 returns the list itself). scale 0 keeps
-- only the push toward better-than-average samples: on small batches, lowering the
-- likelihood of the worse ones is what drifts the model away (issue 7's runs).
function M.scale_negative(adv, scale)
  if type(scale) ~= 'number' or scale < 0 or scale > 1 or scale ~= scale then
    raise(('scale_negative: scale must be a number in [0, 1], got %s'):format(tostring(scale)))
  end
  if scale == 1 then return adv end
  local out = {}
  for i, a in ipairs(adv) do out[i] = a < 0 and a * scale or a end
  return out
end

-- The positions of each group's members: rows[g] = { i, ... }, order = the groups in
-- order of first appearance. group_ids: one key (string or number) per reward.
local function group_rows(op, n, group_ids)
  if type(group_ids) ~= 'table' or #group_ids ~= n then
    raise(('%s: group_ids must be a list of %d keys (one per reward), got %s'):format(op, n,
          type(group_ids) == 'table' and #group_ids .. ' keys' or type(group_ids)))
  end
  local rows, order = {}, {}
  for i = 1, n do
    local g = group_ids[i]
    if type(g) ~= 'string' and type(g) ~= 'number' then
      raise(('%s: group_ids[%d] is a %s, expected a string or a number'):format(op, i, type(g)))
    end
    if not rows[g] then rows[g] = {}; order[#order + 1] = g end
    local r = rows[g]
    r[#r + 1] = i
  end
  return rows, order
end

-- ---- advantages: groups of the current batch (GRPO) -----------------------------------

-- core.group_advantages(rewards, group_ids, opts) -> advantages, info
-- Normalizes within each group of the current batch (GRPO, Shao et al. 2024,
-- arXiv 2402.03300 Sec. 4.1.2; Flow-GRPO does the same per prompt):
--   A_i = clamp((r_i - mean_g) / (std_g + eps), -clip, clip),  g = group_ids[i]
-- group_ids: one key (string or number) per reward, e.g. the prompt or its index.
-- opts: clip (10; false), eps (1e-6, ddpo's tracker), unbiased (false: np.std as
-- ddpo / Flow-GRPO), scale ('group'; 'batch': divide by the std of all the batch's
-- rewards instead of each group's, as Dr. GRPO (Liu et al. 2025, arXiv 2503.20783)
-- drops the per-group std: a group whose images all score about 0 then gets advantages
-- about 0, not +-1 for differences that are noise). Non-finite rewards: excluded,
-- advantage 0. A group of one (or all equal rewards) has advantage 0.
-- info = { n_groups, n_valid, n_nonfinite }
local GROUP_OPTS = { clip = true, eps = true, unbiased = true, scale = true }
function M.group_advantages(rewards, group_ids, opts)
  local op = 'group_advantages'
  opts = check_opts(op, opts, GROUP_OPTS)
  local rs = number_list(op, 'rewards', rewards)
  local clip, eps = clip_value(op, opts.clip), eps_value(op, opts.eps, 1e-6)
  local scale = opts.scale or 'group'
  if scale ~= 'group' and scale ~= 'batch' then
    raise(("%s: scale must be 'group' or 'batch', got %s"):format(op, tostring(scale)))
  end
  local rows, order = group_rows(op, #rs, group_ids)
  local adv, n_valid = {}, 0
  local batch_std = scale == 'batch' and select(2, moments(rs, nil, opts.unbiased == true)) or nil
  for _, g in ipairs(order) do
    local mean, std, n = moments(rs, rows[g], opts.unbiased == true)
    n_valid = n_valid + n
    if batch_std then std = batch_std end
    for _, i in ipairs(rows[g]) do adv[i] = normalized(rs[i], mean, std, eps, clip) end
  end
  return adv, { n_groups = #order, n_valid = n_valid, n_nonfinite = #rs - n_valid }
end

-- ---- credit of one image in a group reward (leave one out) ----------------------------

-- core.leave_one_out(rewards, group_ids, rescore) -> credits, info
-- A group reward (statistical parity, fairness: the paper's Eq. 12) gives every image
-- of a group the group's score, so the policy gradient cannot tell which image made
-- the group diverse. Each image's credit here is its marginal contribution:
--   c_i = R(G) - R(G without i),   R(G) = the mean of G's rewards (judged together)
-- R(G without i) depends only on the other images, which are sampled independently
-- of image i, so subtracting it is a baseline: the gradient's expectation is the
-- group objective's, its variance much lower. A colour the group has twice gets a
-- negative credit, a colour it lacks a positive one.
-- rescore(indices, sub_ids) -> rewards: the reward of the images at `indices` (1-based
-- positions in the batch), judged in the groups sub_ids (one id per index); called
-- once, with every leave-one-out subset of every group. A group of one, or a
-- non-finite reward in the group or its subset, gives credit NaN (advantage 0).
-- info = { n_groups, rescored (images judged again) }
function M.leave_one_out(rewards, group_ids, rescore)
  local op = 'leave_one_out'
  local rs = number_list(op, 'rewards', rewards)
  if type(rescore) ~= 'function' then raise(op .. ': rescore must be a function(indices, sub_ids)') end
  local rows, order = group_rows(op, #rs, group_ids)
  local idx, sub_ids, owner = {}, {}, {} -- subset s leaves out image owner[s]
  for _, g in ipairs(order) do
    local members = rows[g]
    if #members > 1 then
      for _, left in ipairs(members) do
        owner[#owner + 1] = left
        for _, i in ipairs(members) do
          if i ~= left then idx[#idx + 1], sub_ids[#sub_ids + 1] = i, #owner end
        end
      end
    end
  end
  local sub = #idx > 0 and number_list(op, 'rescore\'s rewards', rescore(idx, sub_ids)) or {}
  if #sub ~= #idx then raise(('%s: rescore returned %d rewards for %d images'):format(op, #sub, #idx)) end
  local sum, cnt = {}, {}
  for j, s in ipairs(sub_ids) do
    sum[s], cnt[s] = (sum[s] or 0) + sub[j], (cnt[s] or 0) + 1
  end
  local mean = {}
  for _, g in ipairs(order) do
    local total = 0
    for _, i in ipairs(rows[g]) do total = total + rs[i] end
    mean[g] = total / #rows[g]
  end
  local credits = {}
  for i = 1, #rs do credits[i] = 0 / 0 end
  for s, left in ipairs(owner) do
    local c = mean[group_ids[left]] - sum[s] / cnt[s]
    if c == c and c ~= math.huge and c ~= -math.huge then credits[left] = c end
  end
  return credits, { n_groups = #order, rescored = #idx }
end

-- ---- advantages: per-prompt history (ddpo's PerPromptStatTracker) ---------------------

-- local tr = core.PerPromptTracker.new { buffer_size = 16, min_count = 16 }
-- tr:update(prompts, rewards) -> advantages, info
--   ddpo_pytorch/stat_tracking.py: each prompt keeps its last buffer_size rewards
--   (this batch's included); its advantages use that history's mean and std once it
--   holds min_count rewards, the whole current batch's before. Then
--   A = clamp((r - mean) / (std + eps), -clip, clip) (ddpo clamps in the loss).
-- Options: buffer_size (16), min_count (16), eps (1e-6), unbiased (false: np.std),
-- clip (10; false). Non-finite rewards: not recorded, advantage 0.
-- tr:stats() -> { [prompt] = { mean, std, count } }  (ddpo's get_stats)
-- tr:state() -> a plain table (settings and every buffer, prompts sorted) that
-- tr:set_state(s) restores exactly; the rewards are Lua numbers, so a serializer
-- must round-trip doubles (17 significant digits) for the resume to be exact.
local Tracker = {}
Tracker.__index = Tracker
M.PerPromptTracker = Tracker

local TRACKER_OPTS = { buffer_size = true, min_count = true, eps = true, unbiased = true, clip = true }

local function positive_int(op, name, v, default)
  if v == nil then return default end
  if type(v) ~= 'number' or v % 1 ~= 0 or v < 1 then
    raise(('%s: %s must be a positive integer, got %s'):format(op, name, tostring(v)))
  end
  return v
end

local function tracker_settings(op, o)
  o = check_opts(op, o, TRACKER_OPTS)
  local s = {
    buffer_size = positive_int(op, 'buffer_size', o.buffer_size, 16),
    min_count = positive_int(op, 'min_count', o.min_count, 16),
    eps = eps_value(op, o.eps, 1e-6),
    unbiased = o.unbiased == true,
    clip = o.clip == nil and 10 or o.clip,
  }
  clip_value(op, s.clip)
  return s
end

function Tracker.new(opts)
  local self = setmetatable(tracker_settings('PerPromptTracker', opts), Tracker)
  self.buffers = {}
  return self
end

function Tracker:update(prompts, rewards)
  local op = 'PerPromptTracker:update'
  local rs = number_list(op, 'rewards', rewards)
  if type(prompts) ~= 'table' or #prompts ~= #rs then
    raise(('%s: prompts must be a list of %d strings (one per reward), got %s'):format(op, #rs,
          type(prompts) == 'table' and #prompts .. ' prompts' or type(prompts)))
  end
  local clip = clip_value(op, self.clip)
  local rows, order = {}, {}
  for i = 1, #rs do
    local p = prompts[i]
    if type(p) ~= 'string' then raise(('%s: prompts[%d] is a %s, expected a string'):format(op, i, type(p))) end
    if not rows[p] then rows[p] = {}; order[#order + 1] = p end
    local r = rows[p]
    r[#r + 1] = i
  end
  local batch_mean, batch_std, n_valid = moments(rs, nil, self.unbiased)
  local adv, from_history = {}, 0
  for _, p in ipairs(order) do
    local buf = self.buffers[p]
    if not buf then buf = {}; self.buffers[p] = buf end
    for _, i in ipairs(rows[p]) do
      if is_finite(rs[i]) then buf[#buf + 1] = rs[i] end
    end
    while #buf > self.buffer_size do table.remove(buf, 1) end -- deque(maxlen=buffer_size)
    local mean, std = batch_mean, batch_std
    if #buf >= self.min_count then
      mean, std = moments(buf, nil, self.unbiased)
      from_history = from_history + #rows[p]
    end
    for _, i in ipairs(rows[p]) do adv[i] = normalized(rs[i], mean, std, self.eps, clip) end
  end
  return adv, { n_prompts = #order, n_valid = n_valid, n_nonfinite = #rs - n_valid,
                from_history = from_history, batch_mean = batch_mean, batch_std = batch_std }
end

function Tracker:stats()
  local out = {}
  for p, buf in pairs(self.buffers) do
    local mean, std = moments(buf, nil, self.unbiased)
    out[p] = { mean = mean, std = std, count = #buf }
  end
  return out
end

function Tracker:clear() self.buffers = {} end

function Tracker:state()
  local names = {}
  for p in pairs(self.buffers) do names[#names + 1] = p end
  table.sort(names)
  local bufs = {}
  for i, p in ipairs(names) do
    local copy = {}
    for j, v in ipairs(self.buffers[p]) do copy[j] = v end
    bufs[i] = { prompt = p, rewards = copy }
  end
  return { buffer_size = self.buffer_size, min_count = self.min_count, eps = self.eps,
           unbiased = self.unbiased, clip = self.clip, buffers = bufs }
end

function Tracker:set_state(s)
  local op = 'PerPromptTracker:set_state'
  if type(s) ~= 'table' or type(s.buffers) ~= 'table' then
    raise(op .. ': expected a table from tracker:state()')
  end
  local settings = tracker_settings(op, { buffer_size = s.buffer_size, min_count = s.min_count,
                                          eps = s.eps, unbiased = s.unbiased, clip = s.clip })
  local bufs = {}
  for i, b in ipairs(s.buffers) do
    if type(b) ~= 'table' or type(b.prompt) ~= 'string' or type(b.rewards) ~= 'table' then
      raise(('%s: buffers[%d] must be { prompt = string, rewards = list }'):format(op, i))
    end
    local copy = {}
    for j, v in ipairs(number_list(op, 'buffers[' .. i .. '].rewards', b.rewards)) do copy[j] = v end
    bufs[b.prompt] = copy
  end
  for k, v in pairs(settings) do self[k] = v end
  self.buffers = bufs
  return self
end

-- ---- the clipped policy-gradient loss --------------------------------------------------

-- max(a, b) elementwise with torch.maximum's gradient: all to the larger, half to
-- each on a tie (a NaN propagates). The choice is made on the values.
local function maximum(a, b)
  local av, bv = a:detach():tolist(), b:detach():tolist()
  local gt, lt, any_tie = {}, {}, false
  for i = 1, #av do
    gt[i], lt[i] = av[i] > bv[i], av[i] < bv[i]
    any_tie = any_tie or not (gt[i] or lt[i])
  end
  local dev = a.device
  local rest = any_tie and shape.where(F.tensor(lt, { device = dev }), b, (a + b) * 0.5) or b
  return shape.where(F.tensor(gt, { device = dev }), a, rest)
end

local function as_tensor_like(op, what, x, like)
  if T.is_tensor(x) then
    if x.shape ~= like.shape then
      raise(('%s: %s %s must have the shape of log_prob_new %s'):format(op, what, common.shape_text(x),
            common.shape_text(like)))
    end
    return x:detach()
  end
  local xs = number_list(op, what, x)
  if #xs ~= like:size(1) then
    raise(('%s: %d %s for a batch of %d'):format(op, #xs, what, like:size(1)))
  end
  return F.tensor(xs, { dtype = like.dtype, device = like.device })
end

-- core.ppo_loss(log_prob_new, log_prob_old, advantages, opts) -> loss, stats
-- The paper's Alg. 1 / official train.py / ddpo (PPO, Schulman et al. 2017):
--   ratio     = exp(logp_new - logp_old)
--   unclipped = -A * ratio
--   clipped   = -A * clamp(ratio, 1 - clip_range, 1 + clip_range)
--   loss      = reduce(max(unclipped, clipped))
-- log_prob_new [B] carries the gradient; log_prob_old [B] and advantages ([B] tensor
-- or list; clamp them first: core.advantages does) are constants.
-- opts: clip_range (1e-4, the paper), reduction 'mean' (default; ddpo) or 'sum'
-- (official: loss summed over the batch, its step size then grows with B).
-- stats (no gradient, Lua numbers): ratio_mean, ratio_min, ratio_max, clipfrac =
-- mean(|ratio - 1| > clip_range), approx_kl = 0.5 * mean((new - old)^2) (ddpo's;
-- Schulman's k2), loss.
local PPO_OPTS = { clip_range = true, reduction = true }
function M.ppo_loss(log_prob_new, log_prob_old, advantages, opts)
  local op = 'ppo_loss'
  opts = check_opts(op, opts, PPO_OPTS)
  common.tensor_arg(op, 'log_prob_new', log_prob_new)
  if log_prob_new.ndim ~= 1 then
    raise(('%s: log_prob_new must be [B], got %s'):format(op, common.shape_text(log_prob_new)))
  end
  local old = as_tensor_like(op, 'log_prob_old', log_prob_old, log_prob_new)
  local adv = as_tensor_like(op, 'advantages', advantages, log_prob_new)
  local eps = opts.clip_range == nil and 1e-4 or opts.clip_range
  if type(eps) ~= 'number' or not (eps >= 0) then
    raise(('%s: clip_range must be a number >= 0, got %s'):format(op, tostring(eps)))
  end
  local reduction = opts.reduction or 'mean'
  if reduction ~= 'mean' and reduction ~= 'sum' then
    raise(("%s: reduction must be 'mean' or 'sum', got '%s'"):format(op, tostring(reduction)))
  end
  local log_ratio = log_prob_new - old
  local ratio = log_ratio:exp()
  local unclipped = -adv * ratio
  local clipped = -adv * ratio:clamp(1 - eps, 1 + eps)
  local per_sample = maximum(unclipped, clipped)
  local loss = reduction == 'sum' and per_sample:sum() or per_sample:mean()

  local st = autograd.no_grad(function()
    local rs, lr = ratio:detach():tolist(), log_ratio:detach():tolist()
    local n = #rs
    local sum, lo, hi, clipped_n, kl = 0, math.huge, -math.huge, 0, 0
    for i = 1, n do
      local r = rs[i]
      sum, lo, hi = sum + r, math.min(lo, r), math.max(hi, r)
      if math.abs(r - 1) > eps then clipped_n = clipped_n + 1 end
      kl = kl + lr[i] * lr[i]
    end
    return { ratio_mean = sum / n, ratio_min = lo, ratio_max = hi, clipfrac = clipped_n / n,
             approx_kl = 0.5 * kl / n, loss = loss:detach():item() }
  end)
  return loss, st
end

-- ---- step choice ----------------------------------------------------------------------------

-- core.choose_timesteps(n_steps, k, gen[, opts]) -> a Lua list of k distinct step
-- indices in 1..n_steps (positions in the trajectory, not timestep values).
-- The paper / official: random.sample(range(50), k=5), one choice for the whole
-- batch, trained in draw order. Uniform without replacement by a partial
-- Fisher-Yates shuffle; draw i (i = 1..k) is one dr.randint(0, n_steps - i + 1, {1})
-- from gen, so the call advances gen's Philox offset by exactly k draws and the
-- same generator state gives the same indices (checkpoints keep the state).
-- opts.sorted: return them ascending (default: draw order, as the official loop).
-- opts.fraction: k = floor(n_steps * fraction) (ddpo's timestep_fraction, its
-- int()); give k = nil then. (ddpo instead permutes the steps per sample.)
local CHOOSE_OPTS = { sorted = true, fraction = true }
function M.choose_timesteps(n_steps, k, gen, opts)
  local op = 'choose_timesteps'
  opts = check_opts(op, opts, CHOOSE_OPTS)
  if n_steps == nil then raise(op .. ': n_steps (a positive integer) is required') end
  positive_int(op, 'n_steps', n_steps)
  if opts.fraction ~= nil then
    local fr = opts.fraction
    if k ~= nil then raise(op .. ': give k or opts.fraction, not both') end
    if type(fr) ~= 'number' or not (fr > 0 and fr <= 1) then
      raise(('%s: fraction must be a number in (0, 1], got %s'):format(op, tostring(fr)))
    end
    k = math.floor(n_steps * fr)
    if k < 1 then
      raise(('%s: fraction %g of %d steps chooses no step'):format(op, fr, n_steps))
    end
  end
  if type(k) ~= 'number' or k % 1 ~= 0 or k < 1 or k > n_steps then
    raise(('%s: k must be an integer in [1, %d], got %s'):format(op, n_steps, tostring(k)))
  end
  if gen == nil then raise(op .. ': an explicit dr.Generator is required (deterministic runs)') end
  local pool = {}
  for i = 1, n_steps do pool[i] = i end
  local out = {}
  for i = 1, k do
    local j = i + shape.randint(0, n_steps - i + 1, { 1 }, { generator = gen }):item()
    pool[i], pool[j] = pool[j], pool[i]
    out[i] = pool[i]
  end
  if opts.sorted then table.sort(out) end
  return out
end

-- ---- KL to the base model -----------------------------------------------------------------

-- core.kl_to_base(log_prob_new, log_prob_base[, opts]) -> [B] (differentiable in
-- log_prob_new), for the optional penalty beta * mean(kl). With the action drawn
-- from the current policy q and the base model p, log r = logp_base - logp_new
-- (Schulman, "Approximating KL Divergence", joschu.net/blog/kl-approx.html):
--   'k1': -log r                  unbiased for KL(q||p), can be negative
--   'k2': 0.5 (log r)^2           biased, low variance; as a loss its gradient is
--                                 the gradient of KL(q||p) (on-policy)
--   'k3': (r - 1) - log r         unbiased, >= 0, low variance (GRPO's, the default)
-- The step log-probs are averaged over C, H, W (PAPER.md step 1), so k1 estimates
-- KL / (C H W), the per-element KL; k2 and k3 are then near-quadratic surrogates of
-- the same small quantity. opts.estimator: 'k3' (default), 'k1', 'k2'.
local KL_OPTS = { estimator = true }
function M.kl_to_base(log_prob_new, log_prob_base, opts)
  local op = 'kl_to_base'
  opts = check_opts(op, opts, KL_OPTS)
  common.tensor_arg(op, 'log_prob_new', log_prob_new)
  local base = as_tensor_like(op, 'log_prob_base', log_prob_base, log_prob_new)
  local est = opts.estimator or 'k3'
  local log_r = base - log_prob_new
  if est == 'k1' then return -log_r end
  if est == 'k2' then return log_r * log_r * 0.5 end
  if est == 'k3' then return (log_r:exp() - 1) - log_r end
  raise(("%s: estimator must be 'k1', 'k2' or 'k3', got '%s'"):format(op, tostring(est)))
end

-- ---- the pretraining loss (L_pre) ------------------------------------------------------------

-- float32 sqrt(alphas_cumprod[t]) and sqrt(1 - alphas_cumprod[t]) per sample, as
-- [B, 1, ..., 1] coefficients (a number when all t are equal).
local function noise_coefs(op, sched, timesteps, like)
  local b = like:size(1)
  if not S.is_schedule(sched) then
    raise(op .. ': expected a schedule (diffrl.sampler.schedule.from_config), got ' .. type(sched))
  end
  local ts = common.timesteps(op, timesteps, b)
  local sa, sb = {}, {}
  for i, t in ipairs(ts) do
    local a = sched:alpha_cumprod(t, op)
    sa[i], sb[i] = f32(math.sqrt(a)), f32(math.sqrt(f32(1 - a)))
  end
  return common.coef(sa, like), common.coef(sb, like)
end

-- core.add_noise(x0, noise, timesteps, sched) -> x_t, diffusers'
-- DDPMScheduler.add_noise (the forward process q(x_t | x_0)):
--   x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * noise,   a_t = alphas_cumprod[t]
-- timesteps: a number, a list or an int64 tensor [B] (0-based timesteps).
function M.add_noise(x0, noise, timesteps, sched)
  local op = 'add_noise'
  common.tensor_arg(op, 'x0', x0)
  common.tensor_arg(op, 'noise', noise)
  common.same_shape(op, 'x0', x0, 'noise', noise)
  local sa, sb = noise_coefs(op, sched, timesteps, x0)
  return common.scale(x0, sa) + common.scale(noise, sb)
end

-- core.pretrain_loss(model_pred, noise, latents_0, timesteps, sched[, prediction_type])
-- -> the ordinary diffusion loss (official train.py calculate_mse_loss; diffusers'
-- train_text_to_image): mean((model_pred - target)^2) over every element, with
--   'epsilon'       target = noise
--   'v_prediction'  target = sqrt(a_t) * noise - sqrt(1 - a_t) * x0  (get_velocity)
--   'sample'        target = x0
-- prediction_type defaults to the schedule's. model_pred is the model's output on
-- add_noise(latents_0, noise, timesteps, sched).
function M.pretrain_loss(model_pred, noise, latents_0, timesteps, sched, prediction_type)
  local op = 'pretrain_loss'
  common.tensor_arg(op, 'model_pred', model_pred)
  common.tensor_arg(op, 'noise', noise)
  common.tensor_arg(op, 'latents_0', latents_0)
  common.same_shape(op, 'model_pred', model_pred, 'noise', noise)
  common.same_shape(op, 'latents_0', latents_0, 'noise', noise)
  if not S.is_schedule(sched) then
    raise(op .. ': expected a schedule (diffrl.sampler.schedule.from_config), got ' .. type(sched))
  end
  local kind = prediction_type or sched.prediction_type
  local target
  if kind == 'epsilon' then
    target = noise
  elseif kind == 'v_prediction' then
    local sa, sb = noise_coefs(op, sched, timesteps, noise)
    target = common.scale(noise, sa) - common.scale(latents_0, sb)
  elseif kind == 'sample' then
    target = latents_0
  else
    raise(("%s: unknown prediction_type '%s' (epsilon, v_prediction, sample)"):format(op, tostring(kind)))
  end
  local d = model_pred:float() - target:detach():float()
  return (d * d):mean()
end

-- ---- finiteness ---------------------------------------------------------------------------

-- core.finite(x): x a number or a tensor; true when no element is NaN or +-inf.
-- For a tensor: sum(x - x) is 0 exactly when every element is finite (inf - inf
-- and NaN give NaN, which the sum keeps), with no overflow of a plain sum.
function M.finite(x)
  if type(x) == 'number' then return is_finite(x) end
  if T.is_tensor(x) then
    return autograd.no_grad(function()
      local v = x:detach()
      if v:numel() == 0 then return true end
      if v.dtype ~= 'float32' and v.dtype ~= 'float16' and v.dtype ~= 'bfloat16' then return true end
      return (v - v):float():sum():item() == 0
    end)
  end
  raise('finite: expected a number or a tensor, got ' .. type(x))
end

-- core.all_finite(list) -> true, or false and the index of the first non-finite
-- entry (numbers or tensors: a loss, a grad norm, gradients). The caller skips the
-- optimizer step: NaN/inf never reaches the weights (issue 6).
function M.all_finite(list)
  if type(list) ~= 'table' then raise('all_finite: expected a list of numbers or tensors, got ' .. type(list)) end
  for i, x in ipairs(list) do
    if not M.finite(x) then return false, i end
  end
  return true
end

-- ---- one PPO step on a recorded trajectory --------------------------------------------------

-- core.trajectory_step_loss(args) -> loss, stats
-- PAPER.md step 4 for one chosen step: recompute the guided noise prediction for
-- (x_t, t) WITH gradients through sampler.cfg.predict (one model call on the
-- doubled batch [uncond; cond], as sampling made it), score the recorded x_{t-1}
-- with sampler.ddim.step{eta, prev_sample}, and return ppo_loss of that log-prob
-- against the recorded one. Because sampling went through the same functions, the
-- same weights give the recorded log-prob bit for bit (ratio exactly 1; spec) --
-- for the batch as sampled, same rows in the same order: kernels block by batch
-- size, so a sub-batch or a reshuffled batch (ddpo re-batches) differs in the last
-- bits (ratio 1 +- 1e-6 on the tiny models, CPU), harmless but not exact.
-- args:
--   model        function(x [2B], t, cond [2B]) -> prediction, or unet = a dr UNet
--   scheduler    a schedule; set to the trajectory's step count when it is not
--   trajectory   (or traj) pipe:sample's / sampler.sample's trajectory, and index
--                (1-based step: x_t = latents[index], x_{t-1} = latents[index + 1],
--                t = timesteps[index], log_prob_old = log_probs[:, index]),
--                or x_t, x_prev, t, log_prob_old given directly
--   cond, uncond text embeddings [B, 77, D] (uncond nil or guidance <= 1: no CFG);
--                default trajectory.cond / trajectory.uncond
--   guidance     the CFG scale sampling used (default trajectory.guidance, else 7.5)
--   eta          the DDIM eta sampling used (default trajectory.eta, else 1)
--   advantages   [B] tensor or list; clip_range, reduction: as ppo_loss
--   kl           optional { base = a frozen base UNet or model function, weight =
--                beta, estimator = 'k3' }: adds beta * mean(kl_to_base) with the base
--                model's log-prob of the same x_{t-1} (computed without gradients);
--                estimator = 'analytic': beta * mean(common.gaussian_kl) of the two
--                steps' means instead, (mu - mu_base)^2 / (2 std^2) per element, whose
--                gradient pulls the step back toward the base's (the sample estimators'
--                gradients on the policy's own samples are zero in expectation)
-- stats: ppo_loss's, plus log_prob (the recomputed [B], detached), t, and kl (the
-- mean estimate) with the penalty.
local STEP_ARGS = { model = true, unet = true, scheduler = true, trajectory = true, traj = true,
                    index = true, x_t = true, x_prev = true, t = true, log_prob_old = true,
                    cond = true, uncond = true, guidance = true, eta = true, advantages = true,
                    clip_range = true, reduction = true, kl = true }
function M.trajectory_step_loss(a)
  local op = 'trajectory_step_loss'
  if type(a) ~= 'table' then raise(op .. ': expected a table of arguments, got ' .. type(a)) end
  check_opts(op, a, STEP_ARGS)
  local model = a.model
  if model == nil and a.unet ~= nil then
    local unet = a.unet
    model = function(x, t, c) return unet:forward(x, t, c) end
  end
  if model == nil then raise(op .. ': model (a function (x, t, cond)) or unet is required') end
  local traj = a.trajectory or a.traj
  local x_t, x_prev, t, lp_old = a.x_t, a.x_prev, a.t, a.log_prob_old
  local sched = a.scheduler
  if not S.is_schedule(sched) then
    raise(op .. ': scheduler must be a schedule (sampler.schedule.from_config), got ' .. type(sched))
  end
  if traj ~= nil then
    local i, n = a.index, #traj.timesteps
    if type(i) ~= 'number' or i % 1 ~= 0 or i < 1 or i > n then
      raise(('%s: index must be an integer in [1, %d] (the trajectory\'s steps), got %s'):format(op, n,
            tostring(i)))
    end
    if traj.log_probs == nil then
      raise(op .. ': the trajectory has no log_probs (sampled with eta = 0: no policy to score)')
    end
    x_t, x_prev, t = traj.latents[i], traj.latents[i + 1], traj.timesteps[i]
    lp_old = traj.log_probs:select(2, i)
    if sched.num_inference_steps ~= n then sched = sched:set_timesteps(n) end
  end
  if x_t == nil or x_prev == nil or t == nil or lp_old == nil then
    raise(op .. ': give trajectory and index, or x_t, x_prev, t and log_prob_old')
  end
  if sched.num_inference_steps == nil then
    raise(op .. ': the schedule has no inference steps; use schedule:set_timesteps(n) first')
  end
  if a.advantages == nil then raise(op .. ': advantages ([B] tensor or list) are required') end
  local cond = a.cond or (traj and traj.cond)
  local uncond = a.uncond or (traj and traj.uncond)
  local guidance = a.guidance or (traj and traj.guidance) or 7.5
  local eta = a.eta or (traj and traj.eta) or 1
  if cond == nil then raise(op .. ': cond (the prompt embeddings sampling used) is required') end
  return autograd.enable_grad(function()
    local pred = sampler_cfg.predict(model, x_t, t, cond, uncond, guidance)
    local _, _, lp, mean, std = ddim.step(sched, pred, t, x_t, { eta = eta, prev_sample = x_prev })
    local loss, st = M.ppo_loss(lp, lp_old, a.advantages,
                                { clip_range = a.clip_range, reduction = a.reduction })
    st.log_prob, st.t = lp:detach(), t
    if a.kl then
      local base = a.kl.base
      if type(base) == 'table' and base.forward then
        local unet = base
        base = function(x, tt, c) return unet:forward(x, tt, c) end
      end
      if type(base) ~= 'function' then raise(op .. ': kl.base must be a UNet or a model function') end
      local lp_base, mean_base = autograd.no_grad(function()
        local bpred = sampler_cfg.predict(base, x_t, t, cond, uncond, guidance)
        local _, _, blp, bmean = ddim.step(sched, bpred, t, x_t, { eta = eta, prev_sample = x_prev })
        return blp, bmean
      end)
      local kl
      if a.kl.estimator == 'analytic' then -- the two steps' Gaussians: a true restoring force
        kl = common.gaussian_kl(mean, mean_base, std):mean()
      else
        kl = M.kl_to_base(lp, lp_base, { estimator = a.kl.estimator }):mean()
      end
      st.kl = kl:item()
      loss = loss + kl * (a.kl.weight or 0)
    end
    return loss, st
  end)
end

return M
