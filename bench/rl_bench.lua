-- One RL iteration of diffrl's trainer (lua/diffrl/rl/trainer.lua) side by side
-- with a ddpo-pytorch-equivalent loop on diffusers (tools/ddpo_reference.py, run
-- from here), on the tiny-sd15 fixture pipeline with the same settings: DDIM eta
-- 1, guidance 5, JPEG-compressibility reward, advantages clamped to +-5, full UNet
-- fine-tune (text encoder and VAE frozen, LoRA off, gradient checkpointing off as
-- in ddpo), K policy steps of the PPO-clipped loss (clip 1e-4, mean), gradient
-- norm clipped to 1, AdamW lr 3e-4.
--   sample  images/s of sampling: text encoding + T denoising steps with CFG and the
--           trajectory kept + VAE decode (the trainer's metrics.sample_s) + the
--           reward (timed around the reward function)
--   train   images/s of training: B / the K policy steps (metrics.train_s)
-- Median over `repeats` iterations after one warm-up; ratio = diffrl images/s /
-- torch images/s (> 1: diffrl faster).
--
--   build/diffrl run bench/rl_bench.lua [threads] [repeats] [checkpointing 0|1] [B,T,K,R]
-- (the last: run that one case instead of the two below)
local dr = require 'diffrl'
local here = arg[0]:match('^(.*)/[^/]*$') or '.'
local H = dofile(here .. '/harness.lua')
-- the trainer's clock (bench/clock.lua's clock_gettime declaration clashes with it)
local now = require('diffrl.progress').clock

local threads, repeats = H.args(dr, 3)
local checkpointing = arg[3] == '1'

local MODEL = here .. '/../spec/fixtures/models/tiny-sd15'
local ANIMALS = { 'cat', 'dog', 'horse', 'monkey', 'rabbit', 'zebra', 'spider', 'bird', 'sheep', 'deer',
                  'cow', 'goat', 'lion', 'tiger', 'bear', 'raccoon', 'fox', 'wolf', 'lizard', 'beetle' }

local CASES = { -- B, T, K, R
  { 8, 10, 5, 32 },
  { 8, 20, 5, 48 },
}
if arg[4] then
  local c = {}
  for v in arg[4]:gmatch('%d+') do c[#c + 1] = tonumber(v) end
  assert(#c == 4, 'the case is B,T,K,R')
  CASES = { c }
end

local function median(xs)
  table.sort(xs)
  local n = #xs
  return n % 2 == 1 and xs[(n + 1) / 2] or (xs[n / 2] + xs[n / 2 + 1]) / 2
end

local function bench_diffrl(B, T, K, R)
  local dir = os.tmpname()
  os.remove(dir)
  local cfg = dr.config.resolve(dr.rl.schema, {
    model = { path = MODEL }, run = { dir = dir, seed = 0 },
    train = { iterations = 100000, lr = 3e-4, weight_decay = 1e-4, timestep_count = K, inner_epochs = 1,
              clip_range = 1e-4, adv_clip_max = 5, max_grad_norm = 1.0, gradient_checkpointing = checkpointing },
    sample = { batch_size = B, steps = T, eta = 1.0, guidance = 5.0, resolution = R },
    checkpoint = { every = 100000 }, lora = { rank = 0 },
  })
  local jpeg = dr.rewards.jpeg_compressibility { quality = 95 }
  local reward_s = 0
  local trainer = dr.rl.trainer.new(cfg, { tasks = { {
    name = 'compressibility', prompts = dr.prompts.list { shuffle = true, seed = 0, unpack(ANIMALS) },
    reward = function(images, prompts, meta)
      local t0 = now()
      local scores, info = jpeg(images, prompts, meta)
      reward_s = now() - t0
      return scores, info
    end,
  } } })
  local samples, rewards, trains = {}, {}, {}
  for i = 0, repeats do
    collectgarbage()
    local m = trainer:iteration()
    if i > 0 then -- i = 0: warm-up
      samples[i], rewards[i], trains[i] = m.sample_s + reward_s, reward_s, m.train_s
    end
  end
  os.execute('rm -rf ' .. dir)
  return median(samples), median(rewards), median(trains)
end

print(('%d thread(s), median of %d iterations after a warm-up, gradient checkpointing %s')
      :format(threads, repeats, checkpointing and 'on' or 'off'))
local lines = {}
for _, c in ipairs(CASES) do
  local B, T, K, R = unpack(c)
  local s, r, t = bench_diffrl(B, T, K, R)
  local torch = H.run_torch(here .. '/../tools/ddpo_reference.py', threads, repeats, ('%d %d %d %d'):format(B, T, K, R))
  lines[#lines + 1] = { ('B=%d T=%d K=%d R=%d'):format(B, T, K, R), B, s, r, t, torch }
end

local function rate(B, secs) return secs and ('%.2f'):format(B / secs) or '-' end
local function ratio(a, b) return (a and b) and ('%.2f'):format(b / a) or '-' end
print('| case | sample img/s diffrl | torch | ratio | train img/s diffrl | torch | ratio | ' ..
      'diffrl s: sample (reward) / train | torch s |')
print('|---|---|---|---|---|---|---|---|---|')
for _, l in ipairs(lines) do
  local name, B, s, r, t, torch = unpack(l)
  print(('| %s | %s | %s | %s | %s | %s | %s | %.3f (%.3f) / %.3f | %s |'):format(name,
    rate(B, s), rate(B, torch.sample), ratio(s, torch.sample),
    rate(B, t), rate(B, torch.train), ratio(t, torch.train), s, r, t,
    torch.sample and ('%.3f (%.3f) / %.3f'):format(torch.sample, torch.reward, torch.train) or '-'))
end
