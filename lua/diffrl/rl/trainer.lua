-- diffrl.rl.trainer: the paper's training loop (PAPER.md, Algorithm steps 1-5)
-- over a diffusers pipeline, one process (issue 9 adds ranks).
--
-- One iteration, per task in turn (joint training: each task samples its own
-- prompts and images, normalises within its own batch, then steps):
--   1. sample B images with DDIM (eta > 0) and classifier-free guidance from the
--      current weights, keeping x_t, x_{t-1}, t and log p_old per step;
--   2. decode and score them with the task's reward (no gradient);
--   3. advantages: (r - mean) / (std + 1e-7) over the batch, clamped;
--   4. for each inner epoch, K step indices drawn without replacement; for each,
--      the PPO-clipped loss on that step's recomputed log-probability, backward,
--      gradient clipping, one optimizer step (skipped when not finite);
-- then 5., one step of the ordinary diffusion loss on real image-text pairs
-- (pretrain.weight > 0; pretrain.data: webdataset .tar shards or a folder of
-- pairs (diffrl.data.shards), or the recipe's own source, opts.pretrain_data).
-- Tasks with held-out prompts (task.heldout) are evaluated before training, every
-- eval.every iterations and at the end, with the same noise each time: eval.jsonl
-- (heldout_reward/<task>) and heldout/before.png, heldout/after.png.
-- Every random draw comes from generators whose state the checkpoints keep, so
-- a resumed run repeats the uninterrupted one bit for bit.
-- With R ranks (diffrl launch, mpirun, srun; dist.* settings, docs/scaling.md) each
-- rank draws the global batch's prompts and takes its share, draws its rows of the
-- global noise (a generator shard), gathers the rewards for the global advantages
-- and averages gradients, so R ranks x batch B train as 1 rank x batch R*B; rank 0
-- writes metrics, checkpoints and evaluations, and every rank resumes from them.
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'
local optim = require 'diffrl.optim'
local pipeline = require 'diffrl.pipeline'
local rewards = require 'diffrl.rewards'
local rundir = require 'diffrl.rundir'
local progress = require 'diffrl.progress'
local config = require 'diffrl.config'
local rl = require 'diffrl.rl.core'
local dist = require 'diffrl.dist'
local statistics = require 'diffrl.stats'

local raise = api.raise
local M = {}

local now = progress.clock -- monotonic seconds

local function mean_std(xs)
  local n, s = 0, 0
  for _, x in ipairs(xs) do if x == x and x ~= math.huge and x ~= -math.huge then n, s = n + 1, s + x end end
  if n == 0 then return 0 / 0, 0 / 0 end
  local m, v = s / n, 0
  for _, x in ipairs(xs) do if x == x and x ~= math.huge and x ~= -math.huge then v = v + (x - m) ^ 2 end end
  return m, n > 1 and math.sqrt(v / (n - 1)) or 0
end

local function gen_state(g) local s = g:get_state(); return { seed = s.seed, offset = s.offset } end

-- The trained parameters, as { {name, tensor}, ... }: LoRA adapters, the UNet
-- parameters train.trainable names (the others frozen), or the whole UNet.
local function setup_model(pipe, cfg)
  local unet = pipe.unet
  unet:set_checkpointing(cfg.train.gradient_checkpointing)
  local names = cfg.train.trainable
  if cfg.lora.rank > 0 then
    if #names > 0 then raise('rl: train.trainable and lora.rank > 0 exclude each other (LoRA trains its adapters)') end
    unet:add_lora { rank = cfg.lora.rank, alpha = cfg.lora.alpha or cfg.lora.rank, seed = cfg.run.seed }
    return unet:named_parameters { adapters_only = true }
  end
  unet:requires_grad(true)
  if #names == 0 then return unet:named_parameters() end
  local kept, used = {}, {}
  for _, np in ipairs(unet:named_parameters()) do
    local keep = false
    for _, s in ipairs(names) do
      if np[1]:find(s, 1, true) then keep, used[s] = true, true end
    end
    if keep then kept[#kept + 1] = np else np[2]:requires_grad(false) end
  end
  for _, s in ipairs(names) do
    if not used[s] then
      raise(("rl: train.trainable: no UNet parameter name contains '%s' (names look like %s)")
        :format(s, unet:named_parameters()[1][1]))
    end
  end
  return kept
end

-- The denoising steps a task trains on, out of a trajectory of n_steps: the first
-- train.timestep_window of them (0: all), and how many of those each inner epoch
-- draws (train.timestep_fraction of them, else train.timestep_count). One
-- function for train_task and the length of the cosine schedule.
local function trained_steps(t, n_steps)
  local steps = n_steps
  if t.timestep_window > 0 and t.timestep_window < steps then steps = t.timestep_window end
  local k = t.timestep_fraction and math.floor(steps * t.timestep_fraction) or math.min(t.timestep_count, steps)
  return steps, k
end

local Trainer = {}
Trainer.__index = Trainer

local TASK_FIELDS = { name = true, prompts = true, reward = true, weight = true, heldout = true,
                      images_per_prompt = true, advantage = true, tracker = true, batch_size = true, credit = true }

local function check_task(i, t, cfg)
  if type(t) ~= 'table' then raise(('rl: task %d must be a table {name, prompts, reward}'):format(i)) end
  if type(t.name) ~= 'string' then raise(('rl: task %d needs a name'):format(i)) end
  for k in pairs(t) do
    if not TASK_FIELDS[k] then
      raise(("rl: task %s: unknown field '%s' (fields: advantage, batch_size, credit, heldout, images_per_prompt, "
             .. "name, prompts, reward, weight)")
        :format(t.name, tostring(k)))
    end
  end
  if type(t.prompts) ~= 'table' or type(t.prompts.next) ~= 'function' then
    raise(('rl: task %s: prompts must be a prompt source (diffrl.prompts)'):format(t.name))
  end
  if type(t.reward) ~= 'function' then raise(('rl: task %s: reward must be a function'):format(t.name)) end
  if t.weight ~= nil and (type(t.weight) ~= 'number' or not (t.weight >= 0)) then
    raise(('rl: task %s: weight must be a number >= 0, got %s'):format(t.name, tostring(t.weight)))
  end
  local k = t.images_per_prompt or cfg.sample.images_per_prompt or 1
  if type(k) ~= 'number' or k % 1 ~= 0 or k < 1 then
    raise(('rl: task %s: images_per_prompt must be an integer >= 1, got %s'):format(t.name, tostring(k)))
  end
  local b = t.batch_size
  if b ~= nil and (type(b) ~= 'number' or b % 1 ~= 0 or b < 1) then
    raise(('rl: task %s: batch_size must be an integer >= 1, got %s'):format(t.name, tostring(b)))
  end
  if (b or cfg.sample.batch_size) % k ~= 0 then
    raise(('rl: task %s: %s = %d is not a multiple of images_per_prompt = %d')
      :format(t.name, b and 'batch_size' or 'sample.batch_size', b or cfg.sample.batch_size, k))
  end
  local modes = { batch = true, per_prompt = true, group = true, group_mean = true }
  if t.advantage ~= nil and not modes[t.advantage] then
    raise(("rl: task %s: advantage must be 'batch', 'per_prompt', 'group' or 'group_mean', got %s")
      :format(t.name, tostring(t.advantage)))
  end
  if t.credit ~= nil and t.credit ~= 'group' and t.credit ~= 'leave_one_out' then
    raise(("rl: task %s: credit must be 'group' or 'leave_one_out', got %s"):format(t.name, tostring(t.credit)))
  end
  if t.credit == 'leave_one_out' and k < 2 then
    raise(("rl: task %s: credit = 'leave_one_out' needs images_per_prompt >= 2 (groups of images to leave one "
           .. "out of), got %d"):format(t.name, k))
  end
  if t.heldout ~= nil then
    if type(t.heldout) ~= 'table' or #t.heldout == 0 then
      raise(('rl: task %s: heldout must be a non-empty list of prompts'):format(t.name))
    end
    for j, p in ipairs(t.heldout) do
      if type(p) ~= 'string' then
        raise(('rl: task %s: heldout[%d] is a %s, not a prompt string'):format(t.name, j, type(p)))
      end
    end
  end
end

local function check_source(what, src)
  for _, m in ipairs { 'next', 'state', 'set_state' } do
    if type(src) ~= 'table' or type(src[m]) ~= 'function' then
      raise(('rl: %s must be a data source with next(n), state() and set_state(t); it has no %s')
        :format(what, m))
    end
  end
  return src
end

-- M.new(cfg, opts): opts.tasks = { {name, prompts (a diffrl.prompts source),
-- reward (a reward function), weight, heldout (a list of prompts),
-- images_per_prompt, batch_size (images per iteration on each rank; unset:
-- sample.batch_size), credit ('group': the rewards as the reward gives them;
-- 'leave_one_out': each image's marginal share of its group's reward, rl.core's
-- leave_one_out, for group rewards such as statistical parity)}, ... };
-- opts.pretrain_data (a source of image-text pairs:
-- next(n) -> images [n, 3, H, W] in [0, 1], captions; state, set_state);
-- opts.resume (a run folder); opts.config_text.
local function new(cfg, opts, world)
  local tasks = opts.tasks
  if type(tasks) ~= 'table' or #tasks == 0 then raise('rl: at least one task {name, prompts, reward} is needed') end
  for i, t in ipairs(tasks) do check_task(i, t, cfg) end
  local self = setmetatable({ cfg = cfg, tasks = tasks, world = world, rank = world.rank, ranks = world.size,
                              writer = world.rank == 0 }, Trainer)
  if cfg.pretrain.weight > 0 then
    if opts.pretrain_data then
      self.pretrain_data = check_source('the recipe\'s pretrain_data', opts.pretrain_data)
    elseif cfg.pretrain.data then
      -- every rank reads the global batch and keeps its rows (pretrain_step), so R
      -- ranks see the pairs one rank would: the source is not split by rank
      self.pretrain_data = require('diffrl.data.shards').open(cfg.pretrain.data,
        { resolution = cfg.sample.resolution, seed = cfg.run.seed })
    else
      raise('rl: pretrain.weight > 0 needs pretrain.data (webdataset .tar shards, a pattern like ' ..
            'data/{00000..00099}.tar, or a folder of NAME.png/.jpg + NAME.txt), or a recipe that supplies ' ..
            'pretrain_data; or set pretrain.weight = 0')
    end
  end
  for _, task in ipairs(tasks) do
    if (task.advantage or cfg.train.advantage) == 'per_prompt' then
      task.tracker = rl.PerPromptTracker.new { buffer_size = cfg.train.tracker_buffer,
                                              min_count = cfg.train.tracker_min_count,
                                              clip = cfg.train.adv_clip_max }
    end
  end
  local ok, why = pcall(require('diffrl.core.dtype').device, cfg.run.device)
  if not ok then raise('run.device: ' .. tostring(why):gsub('^.-: ', '', 1)) end
  self.pipe = pipeline.load(cfg.model.path, { device = cfg.run.device })
  self.named = setup_model(self.pipe, cfg)
  self.params = {}
  for i, p in ipairs(self.named) do self.params[i] = p[2] end
  local t = cfg.train
  if t.kl_weight > 0 then -- a frozen copy of the starting UNet for the KL penalty
    self.base_unet = require('diffrl.core').load_model(cfg.model.path .. '/unet'):to(cfg.run.device)
  end
  self.opt = optim.AdamW(self.params, { lr = t.lr, betas = { t.adam_beta1, t.adam_beta2 }, eps = t.adam_eps,
                                        weight_decay = t.weight_decay, flat = true })
  if self.ranks > 1 and cfg.dist.zero then self.opt = dist.zero_adamw(world, self.opt) end -- ZeRO-1
  if t.lr_schedule == 'cosine' then -- over every optimizer step of the run, the L_pre steps too
    local _, k = trained_steps(t, cfg.sample.steps)
    local per_iteration = #tasks * t.inner_epochs * (t.accumulate_timesteps and 1 or k)
    local total = t.iterations * (per_iteration + (self.pretrain_data and 1 or 0))
    self.schedule = optim.schedules.cosine(t.lr, total, t.warmup_steps, 0)
  elseif t.warmup_steps > 0 then
    self.schedule = optim.schedules.warmup(t.lr, t.warmup_steps)
  end
  if t.use_ema then self.ema = optim.EMA(self.params, t.ema_decay) end
  self.gen_sample = core.Generator(cfg.run.seed)
  self.gen_train = core.Generator(cfg.run.seed + 1000003)
  self.step = 0
  self.run_dir = opts.resume or cfg.run.dir
  if self.ranks > 1 then -- rank 0 names the folder (a default name holds the time)
    self.run_dir = world:broadcast_string(self.run_dir, 0)
    cfg.run.dir = opts.resume and cfg.run.dir or self.run_dir
  end
  local ok, err = true, nil
  if self.writer then -- the other ranks only read checkpoints
    ok, err = pcall(function()
      if opts.resume then
        self.run = rundir.open(opts.resume)
      else
        self.run = rundir.create(cfg.run.dir, { config_text = opts.config_text or config.serialize(cfg),
                                                 info = { recipe = opts.recipe, tasks = #tasks, ranks = self.ranks } })
      end
    end)
  end
  dist.agree(world, ok, err, 'opening the run folder')
  if opts.resume then self:restore() end
  return self
end

-- M.new(cfg, opts): see new above; with several ranks an error on one rank ends
-- them all (dist.guard).
function M.new(cfg, opts)
  local world = dist.world(cfg)
  return dist.guard(world, new, cfg, opts, world)
end

-- ---- checkpoints -------------------------------------------------------------------
function Trainer:state()
  local tensors = {}
  for _, p in ipairs(self.named) do tensors['param.' .. p[1]] = p[2]:detach() end
  local fs = self.opt.state.flat
  if fs then tensors['adam.exp_avg'], tensors['adam.exp_avg_sq'] = fs.exp_avg, fs.exp_avg_sq end
  if self.ema then
    for i, p in ipairs(self.named) do tensors['ema.' .. p[1]] = self.ema.shadow[i] end
  end
  local lua = { step = self.step, adam_step = self.opt.step_count, gen_sample = gen_state(self.gen_sample),
                gen_train = gen_state(self.gen_train), prompts = {} }
  lua.trackers = {}
  for _, task in ipairs(self.tasks) do
    lua.prompts[task.name] = task.prompts:state()
    if task.tracker then lua.trackers[task.name] = task.tracker:state() end
  end
  if self.pretrain_data then lua.pretrain_data = self.pretrain_data:state() end
  return { tensors = tensors, lua = lua }
end

-- Copies a checkpoint's <prefix><name> tensors (st: rundir.load_checkpoint) into the
-- parameters of named ({ name, tensor } pairs from setup_model), or into opts.into[i];
-- a missing one is an error naming opts.op, the folder opts.path and opts.hint.
function M.load_params(named, st, prefix, opts)
  core.no_grad(function()
    for i, p in ipairs(named) do
      local t = st.tensors[prefix .. p[1]]
      if not t then raise(('%s: %s has no %s%s%s'):format(opts.op, opts.path, prefix, p[1], opts.hint or '')) end
      (opts.into and opts.into[i] or p[2]):copy_(t)
    end
  end)
end

function Trainer:restore()
  local step, path
  if self.writer then step, path = self.run:latest_checkpoint() end
  if self.ranks > 1 then -- rank 0 chooses; every rank loads the same folder
    path = self.world:broadcast_string(path or '', 0)
    step = path ~= '' and path or nil
  end
  if not step then raise(('resume: %s has no checkpoint yet'):format(self.run_dir)) end
  local st = rundir.load_checkpoint(path)
  M.load_params(self.named, st, 'param.', { op = 'resume', path = path })
  if st.tensors['adam.exp_avg'] then
    local on = self.pipe.device -- the moments live beside the parameters
    self.opt.state.flat = { exp_avg = st.tensors['adam.exp_avg']:to(on):clone(),
                            exp_avg_sq = st.tensors['adam.exp_avg_sq']:to(on):clone() }
  end
  if self.ema then
    M.load_params(self.named, st, 'ema.', { op = 'resume', path = path, into = self.ema.shadow,
                                           hint = ' (was train.use_ema off?)' })
  end
  local lua = st.lua
  self.opt.step_count = lua.adam_step
  self.gen_sample:set_state(lua.gen_sample)
  self.gen_train:set_state(lua.gen_train)
  for _, task in ipairs(self.tasks) do
    if lua.prompts[task.name] then task.prompts:set_state(lua.prompts[task.name]) end
    if task.tracker and lua.trackers and lua.trackers[task.name] then
      task.tracker:set_state(lua.trackers[task.name])
    end
  end
  if self.pretrain_data and lua.pretrain_data then self.pretrain_data:set_state(lua.pretrain_data) end
  self.step = lua.step
  if self.writer then self.run:truncate_metrics(self.step) end
end

-- ---- one iteration ---------------------------------------------------------------------
local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end

-- Rows [r0, r0 + n) of a trajectory (a micro-batch for gradient accumulation).
local function rows(traj, r0, n)
  local sub = { timesteps = traj.timesteps, guidance = traj.guidance, eta = traj.eta, latents = {} }
  for i, x in ipairs(traj.latents) do sub.latents[i] = x:narrow(1, r0, n) end
  sub.log_probs = traj.log_probs:narrow(1, r0, n)
  sub.cond = traj.cond:narrow(1, r0, n)
  if traj.uncond then sub.uncond = traj.uncond:narrow(1, r0, n) end
  return sub
end

-- With several ranks, after each rank's backward: the gradients averaged over the
-- ranks (summed when train.loss_reduction = 'sum': the loss sums over the global
-- batch), the loss likewise, the statistics averaged (in place); returns the
-- global loss. Every rank then sees the same loss and gradient, so all clip,
-- step or skip alike and the parameters stay identical.
function Trainer:reduce_step(loss, stats)
  local cfg, R = self.cfg, self.ranks
  local op = cfg.train.loss_reduction == 'sum' and 'sum' or 'mean'
  dist.all_reduce_grads(self.world, self.opt.flat.grads, op, cfg.dist.bucket_mb)
  local keys = { 'ratio_mean', 'clipfrac', 'approx_kl', 'kl' }
  local xs = { loss }
  for i, k in ipairs(keys) do xs[i + 1] = stats[k] or 0 end
  local sums = self.world:all_reduce_numbers(xs, 'sum')
  for i, k in ipairs(keys) do if stats[k] then stats[k] = sums[i + 1] / R end end
  return op == 'sum' and sums[1] or sums[1] / R
end

-- One optimizer step on trajectory step j (or on the mean loss of the steps of a
-- list j, train.accumulate_timesteps): the PPO loss (over train.grad_accum
-- micro-batches whose gradients add up to the full batch's), clipping, AdamW, EMA.
-- Returns loss, stats, grad norm; nothing is applied when either is not finite.
function Trainer:policy_step(traj, js, adv_t, B, weight)
  local t = self.cfg.train
  local parts = math.min(t.grad_accum, B)
  local loss_sum, stats = 0, { ratio_mean = 0, clipfrac = 0, approx_kl = 0, kl = self.base_unet and 0 or nil }
  self.opt:zero_grad()
  if type(js) == 'number' then js = { js } end
  local nj = #js
  for _, j in ipairs(js) do
    if not finite(loss_sum) then break end
    local r0 = 1
    for part = 1, parts do
      local n = math.floor(B * part / parts) - (r0 - 1)
      local whole = parts == 1
      local loss, st = rl.trajectory_step_loss {
        unet = self.pipe.unet, scheduler = self.pipe.scheduler, traj = whole and traj or rows(traj, r0, n),
        index = j, advantages = whole and adv_t or adv_t:narrow(1, r0, n),
        clip_range = t.clip_range, reduction = t.loss_reduction,
        kl = self.base_unet and { base = self.base_unet, weight = t.kl_weight, estimator = t.kl_estimator } or nil,
      }
      -- a mean over the batch is the size-weighted mean of the micro-batch means
      if not whole and t.loss_reduction == 'mean' then loss = loss * (n / B) end
      if weight ~= 1 then loss = loss * weight end -- the task's weight in joint training
      if nj > 1 then loss = loss * (1 / nj) end     -- the mean over the accumulated steps
      local lv = loss:item()
      loss_sum = loss_sum + lv
      for k in pairs(stats) do stats[k] = stats[k] + st[k] * n / B / nj end
      if not finite(lv) then break end
      loss:backward()
      r0 = r0 + n
    end
  end
  if self.ranks > 1 then loss_sum = self:reduce_step(loss_sum, stats) end
  local gn = 0 / 0
  if finite(loss_sum) then
    gn = optim.clip_grad_norm_(self.params, t.max_grad_norm > 0 and t.max_grad_norm or math.huge)
  end
  if finite(loss_sum) and finite(gn) then
    if self.schedule then self.opt.lr = self.schedule(self.opt.step_count + 1) end
    self.opt:step()
    if self.ema then self.ema:update() end
  end
  self.opt:zero_grad()
  return loss_sum, stats, gn
end

-- B prompts for a batch: B / k drawn from the source, each k times in a row, and
-- their group ids (nil when k = 1).
local function batch_prompts(list, k)
  if k == 1 then return list, nil end
  local prompts, groups = {}, {}
  for g, p in ipairs(list) do
    for _ = 1, k do prompts[#prompts + 1], groups[#groups + 1] = p, g end
  end
  return prompts, groups
end

function Trainer:train_task(task, metrics)
  local cfg, pipe = self.cfg, self.pipe
  local B = task.batch_size or cfg.sample.batch_size
  local k = task.images_per_prompt or cfg.sample.images_per_prompt
  local R = self.ranks
  local drawn = task.prompts:next(R * B / k) -- the global batch's prompts, on every rank
  local prompts, groups = batch_prompts(R > 1 and dist.slice(drawn, self.rank, R, 'the prompts') or drawn, k)
  local t0 = now()
  local images, _, traj = pipe:sample {
    prompt = prompts, negative = cfg.sample.negative_prompt or '', steps = cfg.sample.steps,
    cfg = cfg.sample.guidance, eta = cfg.sample.eta,
    generator = R > 1 and self.gen_sample:shard(self.rank + 1, R) or self.gen_sample,
    height = cfg.sample.resolution, width = cfg.sample.resolution, keep_trajectory = true,
  }
  images = images:cpu() -- rewards, grids and PNGs read them on the host
  local t_sample = now() - t0
  local scores, rinfo = rewards.call(task.reward, images, prompts,
                                     { step = self.step + 1, task = task.name, groups = groups })
  local credit = scores -- what the advantages normalise
  if task.credit == 'leave_one_out' then -- each image's share of its group's reward
    credit = rl.leave_one_out(scores, groups, function(idx, sub_ids)
      local sub_prompts = {}
      for j, i in ipairs(idx) do sub_prompts[j] = prompts[i] end
      return (rewards.call(task.reward, images:index_select(1, idx), sub_prompts,
                           { step = self.step + 1, task = task.name, groups = sub_ids }))
    end)
  end
  metrics.reward_s = (metrics.reward_s or 0) + (now() - t0 - t_sample)
  if R > 1 then -- the global batch's rewards and prompts, in rank order (PAPER.md step 3)
    scores, prompts = self.world:all_gather_numbers(scores), (batch_prompts(drawn, k))
    credit = task.credit == 'leave_one_out' and self.world:all_gather_numbers(credit) or scores
  end
  local adv, ainfo
  local mode = task.advantage or cfg.train.advantage
  if task.tracker then
    adv, ainfo = task.tracker:update(prompts, credit)
  elseif mode == 'group' or mode == 'group_mean' then -- GRPO: normalise among the images of one prompt
    adv, ainfo = rl.group_advantages(credit, prompts, { clip = cfg.train.adv_clip_max,
                                                        scale = mode == 'group_mean' and 'batch' or 'group' })
  else
    adv, ainfo = rl.advantages(credit, { clip = cfg.train.adv_clip_max })
  end
  adv = rl.scale_negative(adv, cfg.train.negative_advantage_scale)
  if R > 1 then -- this rank's rows
    adv, prompts = dist.slice(adv, self.rank, R), traj.prompts
  end
  local t1 = now()
  local stats = { loss = 0, ratio_mean = 0, clipfrac = 0, approx_kl = 0, grad_norm = 0, n = 0, skipped = 0 }
  local adv_t = core.tensor(adv, { device = pipe.device })
  local steps, k = trained_steps(cfg.train, #traj.timesteps) -- trajectory index 1 is the noisiest step
  local fraction = cfg.train.timestep_fraction
  for _ = 1, cfg.train.inner_epochs do
    local chosen = fraction and rl.choose_timesteps(steps, nil, self.gen_train, { fraction = fraction })
                   or rl.choose_timesteps(steps, k, self.gen_train)
    -- one optimizer step per chosen denoising step, or one for all of them
    for _, j in ipairs(cfg.train.accumulate_timesteps and { chosen } or chosen) do
      local lv, st, gn = self:policy_step(traj, j, adv_t, B, task.weight or 1)
      if finite(lv) and finite(gn) then
        stats.loss, stats.grad_norm = stats.loss + lv, stats.grad_norm + gn
        stats.ratio_mean, stats.clipfrac = stats.ratio_mean + st.ratio_mean, stats.clipfrac + st.clipfrac
        stats.approx_kl = stats.approx_kl + st.approx_kl
        if st.kl then stats.kl_base = (stats.kl_base or 0) + st.kl end
        stats.n = stats.n + 1
      else
        stats.skipped = stats.skipped + 1 -- NaN/inf never reaches the weights
      end
    end
  end
  local m, sd = mean_std(scores)
  metrics['reward_mean/' .. task.name], metrics['reward_std/' .. task.name] = m, sd
  metrics._scores = metrics._scores or {}
  for _, s in ipairs(scores) do metrics._scores[#metrics._scores + 1] = s end
  for _, key in ipairs { 'loss', 'ratio_mean', 'clipfrac', 'approx_kl', 'grad_norm' } do
    metrics[key] = (metrics[key] or 0) + (stats.n > 0 and stats[key] / stats.n or 0) / #self.tasks
  end
  if stats.kl_base then
    metrics.kl_base = (metrics.kl_base or 0) + (stats.n > 0 and stats.kl_base / stats.n or 0) / #self.tasks
  end
  metrics.skipped_steps = (metrics.skipped_steps or 0) + stats.skipped
  metrics.nonfinite_rewards = (metrics.nonfinite_rewards or 0) + (ainfo.n_nonfinite or 0)
  metrics.sample_s = (metrics.sample_s or 0) + t_sample
  metrics.train_s = (metrics.train_s or 0) + (now() - t1)
  metrics.images = (metrics.images or 0) + B * R
  return images, prompts, rinfo
end

-- PAPER.md step 5: one step of the ordinary diffusion loss on real pairs,
-- weighted by pretrain.weight (keeps the model from reward hacking).
function Trainer:pretrain_step(metrics)
  local cfg, pipe = self.cfg, self.pipe
  local n = cfg.pretrain.batch_size or cfg.sample.batch_size
  local R, first = self.ranks, self.rank * n + 1
  -- with R ranks: the global batch's pairs, noise and timesteps, this rank's rows
  local images, captions = self.pretrain_data:next(n * R)
  if R > 1 then images, captions = images:narrow(1, first, n), dist.slice(captions, self.rank, R) end
  local latents = pipe:encode(images)
  local cond = pipe:encode_prompt(captions)
  local noise = core.randn(latents.shape, { generator = R > 1 and self.gen_train:shard(self.rank + 1, R)
                                                        or self.gen_train, device = pipe.device })
  local T = pipe.scheduler.num_train_timesteps
  local ts = core.randint(0, T, { n * R }, { generator = self.gen_train })
  if R > 1 then ts = ts:narrow(1, first, n) end
  local noisy = rl.add_noise(latents, noise, ts, pipe.scheduler)
  self.opt:zero_grad()
  local pred = pipe.unet:forward(noisy, ts, cond)
  local loss = rl.pretrain_loss(pred, noise, latents, ts, pipe.scheduler) * cfg.pretrain.weight
  local lv, gn = loss:item(), 0 / 0
  if finite(lv) then loss:backward() end
  if R > 1 then -- a mean over the global batch: gradients and loss averaged over the ranks
    dist.all_reduce_grads(self.world, self.opt.flat.grads, 'mean', cfg.dist.bucket_mb)
    lv = self.world:all_reduce_numbers({ lv }, 'mean')[1]
  end
  if finite(lv) then
    gn = optim.clip_grad_norm_(self.params, cfg.train.max_grad_norm > 0 and cfg.train.max_grad_norm or math.huge)
  end
  if finite(lv) and finite(gn) then
    if self.schedule then self.opt.lr = self.schedule(self.opt.step_count + 1) end
    self.opt:step()
    if self.ema then self.ema:update() end
  else
    metrics.skipped_steps = (metrics.skipped_steps or 0) + 1
  end
  self.opt:zero_grad()
  metrics.pretrain_loss, metrics.pretrain_grad_norm = lv, gn
end

-- ---- held-out evaluation --------------------------------------------------------------
local GRID_PER_TASK = 8 -- held-out images per task in heldout/before.png, after.png

-- Samples every task's held-out prompts with the eval.seed noise (the same at each
-- call; with eval.seeds = N, N images of each prompt, image j from its own
-- dr.Generator(eval.seed + j - 1): the images `diffrl eval --seeds N` samples),
-- scores them, logs heldout_reward/<task> to eval.jsonl at the current step
-- and writes heldout/<label>.png. Returns the logged row, or nil when no task has
-- held-out prompts.
function Trainer:evaluate(label)
  if self.ranks == 1 then return self:evaluate_here(label) end
  -- rank 0 evaluates (its noise and prompts as one process's) while the others wait
  local row = self.writer and self:evaluate_here(label) or nil
  dist.wait(self.world, self.cfg.dist.io_timeout_s, 'the held-out evaluation on rank 0')
  return row
end

-- Held-out images per prompt of a task: eval.seeds, else its images_per_prompt.
function Trainer:heldout_images(task)
  return self.cfg.eval.seeds or task.images_per_prompt or self.cfg.sample.images_per_prompt or 1
end

function Trainer:evaluate_here(label)
  local cfg, pipe = self.cfg, self.pipe
  local row, grid, grid_prompts = { step = self.step }, {}, {}
  local t0 = now()
  for ti, task in ipairs(self.tasks) do
    if task.heldout then
      local k = self:heldout_images(task)
      local prompts, groups = batch_prompts(task.heldout, k)
      groups = groups or {}
      local chunk = math.max(k, math.floor(cfg.sample.batch_size / k) * k)
      local gen = not cfg.eval.seeds and core.Generator(cfg.eval.seed + 7919 * (ti - 1)) or nil
      local scores, shown = {}, 0
      for c = 1, #prompts, chunk do
        local sub, sub_groups, gens = {}, {}, {}
        for i = c, math.min(c + chunk - 1, #prompts) do
          sub[#sub + 1], sub_groups[#sub_groups + 1] = prompts[i], groups[i]
          if not gen then gens[#gens + 1] = core.Generator(cfg.eval.seed + (i - 1) % k) end
        end
        local images = core.no_grad(function()
          return pipe:sample { prompt = sub, negative = cfg.sample.negative_prompt or '', steps = cfg.sample.steps,
                               cfg = cfg.sample.guidance, eta = cfg.sample.eta,
                               generator = gen or core.row_generators(gens),
                               height = cfg.sample.resolution, width = cfg.sample.resolution }
        end):cpu()
        local s = rewards.call(task.reward, images, sub, { step = self.step, task = task.name, heldout = true,
                                                           groups = k > 1 and sub_groups or nil })
        for i = 1, #sub do
          scores[#scores + 1] = s[i]
          if shown < GRID_PER_TASK then
            shown = shown + 1
            grid[#grid + 1] = images:narrow(1, i, 1)
            grid_prompts[#grid_prompts + 1] = ('[%s] %s'):format(task.name, sub[i])
          end
        end
      end
      row['heldout_reward/' .. task.name], row['heldout_std/' .. task.name] = mean_std(scores)
      -- per image, in prompt order (NaN is written as null): the end table pairs them
      -- with step 0's
      row['heldout_scores/' .. task.name] = scores
    end
  end
  if #grid == 0 then return nil end
  row.time_s = now() - t0
  self.run:log(row, 'eval')
  self.run:save_heldout(label, core.cat(grid, 1), grid_prompts)
  return row
end

function Trainer:iteration()
  local t0 = now()
  local metrics = {}
  local first_images, first_prompts
  for _, task in ipairs(self.tasks) do
    local images, prompts = self:train_task(task, metrics)
    if not first_images then first_images, first_prompts = images, prompts end
  end
  if self.pretrain_data then self:pretrain_step(metrics) end
  self.step = self.step + 1
  local m, sd = mean_std(metrics._scores)
  metrics._scores = nil
  metrics.step, metrics.reward_mean, metrics.reward_std = self.step, m, sd
  metrics.lr = self.opt.lr
  metrics.time_s = now() - t0
  metrics.images_per_s = metrics.images / metrics.time_s
  if self.writer then self.run:log(metrics) end
  local every = self.cfg.checkpoint.every
  if self.writer and self.cfg.log and self.cfg.log.grid_every and self.step % self.cfg.log.grid_every == 0 then
    self.run:save_grid(self.step, first_images, first_prompts)
  end
  local eval_every = self.cfg.eval.every
  if self.step == self.cfg.train.iterations or (eval_every and self.step % eval_every == 0) then
    self:evaluate('after')
  end
  if self.step % every == 0 or self.step == self.cfg.train.iterations then
    if self.opt.gather_state then self.opt:gather_state() end -- ZeRO-1: every rank's slice
    if self.writer then self.run:save_checkpoint(self.step, self:state()) end
    if self.ranks > 1 then dist.wait(self.world, self.cfg.dist.io_timeout_s, 'the checkpoint of rank 0') end
  end
  return metrics
end

-- ---- the end-of-run table -----------------------------------------------------------------

-- Per task: the training reward at the start and at the end (means over the first
-- and last few logged iterations) and the held-out reward before and after.
function Trainer:summary()
  local rows = self.run:read_log('metrics')
  local evals = self.run:read_log('eval')
  local w = math.max(1, math.min(5, math.floor(#rows / 4)))
  local out = {}
  for _, task in ipairs(self.tasks) do
    local key = 'reward_mean/' .. task.name
    local function window(from, to)
      local s, n = 0, 0
      for i = math.max(1, from), math.min(#rows, to) do
        local v = rows[i][key]
        if type(v) == 'number' then s, n = s + v, n + 1 end
      end
      return n > 0 and s / n or nil
    end
    local r = { task = task.name, window = w, train_first = window(1, w), train_last = window(#rows - w + 1, #rows) }
    local hk, sk = 'heldout_reward/' .. task.name, 'heldout_scores/' .. task.name
    local before, after
    for _, e in ipairs(evals) do
      if type(e[hk]) == 'number' then
        if e.step == 0 then r.heldout_before, before = e[hk], e[sk] end
        r.heldout_after, r.heldout_step, after = e[hk], e.step, e[sk]
      end
    end
    if r.heldout_step == 0 then r.heldout_after, after = nil, nil end
    -- the paired win rate: the same prompts and noise before and after, so image i
    -- after against image i before; the CI resamples prompts (diffrl.stats)
    if type(before) == 'table' and type(after) == 'table' and #before == #after and #before > 0 then
      local k = self:heldout_images(task)
      local units, a, b = {}, {}, {}
      for i = 1, #before do
        units[i] = math.floor((i - 1) / k) + 1
        a[i] = type(after[i]) == 'number' and after[i] or 0 / 0
        b[i] = type(before[i]) == 'number' and before[i] or 0 / 0
      end
      local w = statistics.win_rate(a, b, units, { seed = 0 })
      if w.n > 0 then r.heldout_win = w end
    end
    out[#out + 1] = r
  end
  return out
end

local function cell(a, b)
  if not a or not b then return (a and ('%.4f'):format(a) or '-'), '' end
  return ('%.4f -> %.4f'):format(a, b), ('%+.4f'):format(b - a)
end

-- The paired win rate of the held-out images after over before, with its 95% CI.
local function win_cell(win)
  if not win then return '-' end
  return ('%.2f [%.2f, %.2f]'):format(win.rate, win.lo, win.hi)
end

function M.summary_text(rows)
  local lines = {}
  local w = rows[1] and rows[1].window or 1
  local any_win = false
  for _, r in ipairs(rows) do any_win = any_win or r.heldout_win ~= nil end
  local fmt = '%-14s %-26s %-9s %-26s %-9s %s'
  lines[1] = fmt:format('task', ('train reward (%d it. avg)'):format(w), 'change', 'held-out reward', 'change',
                        any_win and 'win rate after/before [95% CI]' or ''):gsub('%s+$', '')
  for _, r in ipairs(rows) do
    local t, dt = cell(r.train_first, r.train_last)
    local h, dh = cell(r.heldout_before, r.heldout_after)
    lines[#lines + 1] = fmt:format(r.task, t, dt, h, dh, any_win and win_cell(r.heldout_win) or ''):gsub('%s+$', '')
  end
  if any_win then
    lines[#lines + 1] = 'win rate: each held-out image after training against the same prompt and noise at step 0 '
      .. '(ties half); a CI across 0.5 is no clear change'
  end
  return table.concat(lines, '\n')
end

-- Runs until train.iterations; returns the last metrics.
local function train(self)
  local total = self.cfg.train.iterations
  if self.step == 0 then self:evaluate('before') end -- the baseline, on held-out prompts
  local quiet = { update = function() end, finish = function() end } -- ranks other than 0
  local bar = self.writer and progress.bar { total = total, label = 'iteration', initial = self.step } or quiet
  local last
  while self.step < total do
    last = self:iteration()
    bar:update(self.step, ('reward %.4g'):format(last.reward_mean))
  end
  bar:finish()
  if self.writer then io.write(M.summary_text(self:summary()), '\n') end
  return last
end

-- With several ranks an error on one ends them all (dist.guard), none waits.
function Trainer:train() return dist.guard(self.world, train, self) end

M.Trainer = Trainer
-- diffrl eval puts a checkpoint's tensors (M.load_params) on a pipeline set up as here
M.setup_model = setup_model
return M
