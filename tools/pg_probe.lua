-- tools/pg_probe.lua — does a task's policy gradient carry signal, and where?
--
--   diffrl run tools/pg_probe.lua MODEL [task=composition] [batches=32] [alphas=1e-3,3e-3]
--       [only=all,attn] [seeds=7,8] [QUICKSTART SETTINGS...]
--
-- Builds recipes/quickstart.lua's trainer on MODEL (one task, no pretraining step, the
-- whole UNet trainable: `only` picks the parameters a step moves),
-- computes the task's policy gradient on `batches` sampled batches (sample.batch_size
-- images each, not the quickstart's shapes.batch_size) without stepping, and prints
--   * the cosine between the summed gradients of the two halves of the batches (0:
--     noise only; for a true gradient mu and per-batch noise sigma it is about
--     h|mu|^2 / (h|mu|^2 + |sigma|^2), h = batches / 2),
--   * then, for each name filter of `only` (a substring of the UNet parameter names;
--     `all`: every parameter) and each alpha, the held-out reward change after one step
--     theta -/+ alpha * m / sqrt(v) (Adam's direction with the batches' mean m and mean
--     square v, only on the filtered parameters): "RL" is the policy-gradient step,
--     "anti" the opposite one. Scored on the task's held-out prompts (16 of composition
--     or preference, not the quickstart's 32; shapes.heldout=N changes it), the same
--     noise per image (eval.seed = each of `seeds`), as the mean change and the paired
--     win rate.
-- A gradient with signal helps along RL and hurts along anti; steps that hurt both
-- ways mean the step's noise costs more than its signal gains.
local stats = require 'diffrl.stats'

local root = debug.getinfo(1, 'S').source:match('^@(.*)/tools/[^/]*$') or '.'
local model = arg[1]
if not model or model:match('^%-%-?h') then
  local f = io.open(root .. '/tools/pg_probe.lua')
  local head = f:read('*a'):match('^(.-)\nlocal')
  f:close()
  io.write((head:gsub('%-%- ?', '')), '\n')
  os.exit(model and 0 or 2)
end
local opts = { task = 'composition', batches = '32', alphas = '1e-3,3e-3', only = 'all', seeds = '7,8' }
local settings = {}
for i = 2, #arg do
  local k, v = arg[i]:match('^([%w_]+)=(.*)$')
  if k and opts[k] then opts[k] = v else settings[#settings + 1] = arg[i] end
end
local function list(s, num)
  local out = {}
  for x in s:gmatch('[^,]+') do
    out[#out + 1] = num and (tonumber(x) or error(('pg_probe: %q is not a number'):format(x), 0)) or x
  end
  return out
end
local K = tonumber(opts.batches)
if not K or K < 2 or K % 2 ~= 0 then
  error('pg_probe: batches must be an even number >= 2, got ' .. opts.batches, 0)
end

local dir = os.tmpname()
os.remove(dir)
-- a batch is sample.batch_size images (the quickstart's default or SETTINGS'), not the
-- quickstart's shapes.batch_size for the task, from the warm-up iteration on (it moves
-- the prompt stream and the noise); shapes.batch_size.TASK=N in SETTINGS still wins
local batch = dofile(root .. '/configs/quickstart.lua').sample.batch_size
for _, s in ipairs(settings) do batch = s:match('^sample%.batch_size=(%d+)$') or batch end
_G.arg = { 'model.path=' .. model, 'train.iterations=1', 'run.dir=' .. dir, 'train.warmup_steps=0',
           'train.lr=0', 'pretrain.weight=0', 'shapes.tasks=' .. opts.task,
           'train.trainable={}', -- every UNet weight (the quickstart's own default: attention only); `only` filters
           -- 16 held-out prompts of composition / preference, whatever the quickstart's
           -- shapes.heldout (docs/results.md's numbers); SETTINGS may change it
           'shapes.heldout=16',
           ('shapes.batch_size.%s=%s'):format(opts.task, batch), unpack(settings) }
-- one iteration at lr 0 builds the trainer (and scores the held-out prompts once)
local _, tr = dofile(root .. '/recipes/quickstart.lua')
-- held-out: images_per_prompt images a prompt from one generator per seed of `seeds`,
-- not the quickstart's eval.seeds
tr.cfg.eval.seeds = nil
local flat = tr.opt.flat
local theta0 = flat.params:clone()
local grads = {}
tr.opt.step = function(self) grads[#grads + 1] = self.flat.grads:clone() end
local t0 = os.clock()
for b = 1, K do
  tr:train_task(tr.tasks[1], {})
  io.stderr:write(('\rgradient of batch %d/%d'):format(b, K))
end
io.stderr:write(('  (%.0f s of CPU)\n'):format(os.clock() - t0))
if #grads ~= K then error(('pg_probe: %d of %d batches gave a finite gradient'):format(#grads, K), 0) end

local function dot(a, b) return (a * b):sum():item() end
local h1, h2 = grads[1]:clone(), grads[K / 2 + 1]:clone()
for i = 2, K / 2 do h1, h2 = h1 + grads[i], h2 + grads[K / 2 + i] end
print(('%s on %s: cos(first half, second half) = %.4f (%d batches of %d images)')
  :format(opts.task, model, dot(h1, h2) / math.sqrt(dot(h1, h1) * dot(h2, h2)), K, tr.tasks[1].batch_size))
local sq = grads[1] * grads[1]
for i = 2, K do sq = sq + grads[i] * grads[i] end
local dir_ = ((h1 + h2) * (1 / K)) / ((sq * (1 / K)):sqrt() + 1e-12)

local seeds = list(opts.seeds, true)
local function score()
  local all = {}
  for _, seed in ipairs(seeds) do
    tr.cfg.eval.seed = seed
    local row = tr:evaluate_here('after')
    for _, s in ipairs(row['heldout_scores/' .. opts.task]) do all[#all + 1] = s end
  end
  return all
end
local base = score()
print(('held-out %s: %.4f over %d images'):format(opts.task, stats.mean(base), #base))
for _, only in ipairs(list(opts.only)) do
  local d, kept, off = dir_:clone(), 0, 0
  for _, np in ipairs(tr.named) do
    local n = np[2]:numel()
    if only == 'all' or np[1]:find(only, 1, true) then kept = kept + n
    else d:narrow(1, off + 1, n):zero_() end
    off = off + n
  end
  print(('parameters %s: %d'):format(only, kept))
  for _, alpha in ipairs(list(opts.alphas, true)) do
    for _, sign in ipairs { -1, 1 } do -- the gradient is the loss's: descending it is the RL step
      flat.params:copy_(theta0 + d * (sign * alpha))
      local s = score()
      print(('  %-4s alpha %-6g change %+.4f  win rate %.3f'):format(sign < 0 and 'RL' or 'anti', alpha,
                                                                     stats.paired_change(s, base).mean,
                                                                     stats.win_rate(s, base).rate))
    end
  end
end
flat.params:copy_(theta0)
os.execute("rm -rf '" .. dir .. "'")
