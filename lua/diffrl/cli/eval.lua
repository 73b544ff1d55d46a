-- `diffrl eval`: held-out numbers for models and checkpoints (diffrl.eval): samples
-- each prompt with fixed seeds for every model, scores every image, and writes
-- eval.jsonl, summary.json, summary.md and eval.html to -o DIR.
local M = {}

M.usage = [[
Usage: diffrl eval --model A [--against B] --prompts FILE --rewards R1,R2 -o DIR [options]
       diffrl eval --run RUN_DIR [--every K] [--prompts FILE --rewards ...] -o DIR

Samples every prompt with seeds S .. S+N-1 for each model, the image of (prompt,
seed s) from its own noise generator (seed s), so A and B start from the same
noise and the image is the one `diffrl sample --seed s` gives; scores every image
with each reward and writes, in DIR:
  eval.jsonl    one row per image: model, set, prompt, seed, scores, image
  images/       one PNG per image: images/MODEL/SET_pNNNN_sS.png
  summary.json  per prompt set, model and reward: mean and 95% CI; win rates
  summary.md    the same as tables (the paper's Tables 1-5 layout)
  eval.html     one self-contained page: the tables, A | B side by side per
                prompt and seed with scores, sortable by any column (past 48 MB
                of images, the rest are linked to images/ instead of embedded)
The CI is a percentile bootstrap over prompts (each prompt with the mean of its
seeds); the win rate of A over B compares the images of the same (prompt, seed),
a tie counting half. Group rewards (shapes_diversity, fairness, --group-rewards)
judge the N images of one prompt together and are reported as statistical parity
SP = -score, one value per prompt. An eval stopped midway resumes: rows already in
DIR/eval.jsonl are kept and not sampled again (--overwrite starts afresh).

A model (A, B) is a diffusers folder (model_index.json), a run folder of `diffrl
run` (its newest checkpoint) or a checkpoint RUN/checkpoints/step_NNNNNN, put on
the base model its run's config.lua names. LABEL=PATH names it in the tables.

Options:
  --model A            the model to evaluate (required unless --run)
  --against B          the model to compare with (win rates of A over B)
  --run RUN_DIR        evaluate the run's base model (step 0) and its checkpoints
  --every K            with --run: only checkpoints whose step is a multiple of K
                       (default: every checkpoint the run kept)
  --prompts FILE       .txt (one prompt a line), .jsonl or .csv; may be repeated.
                       'shapes' or 'shapes:N': the shapes world's held-out prompts
                       of recipes/quickstart.lua's tasks (sets composition, diversity,
                       preference; N per set, default 8), each set scored by its
                       task's reward (preference with the quickstart's weights)
                       unless --rewards is given. Default with --run of a shapes
                       run: 'shapes' with the run's seed and shapes.heldout.
  --prompt-column C    the prompt field of .jsonl / column of .csv (default prompt)
  --set-column C       the prompt-set field / column (default set); rows without it,
                       and .txt files, take the file's name as their set
  --rewards R1,R2      registered rewards (diffrl.rewards) scored on every prompt
  --reward-opt R.K=V   an option of reward R (V a Lua literal or a word), e.g.
                       imagereward.path=models/ImageReward; may be repeated
  --reward-config FILE a Lua file returning { R = { options } }
  --group-rewards R,.. more rewards to judge per prompt's group of seeds
  --seeds N            images per prompt and model (default 4)
  --seed S             the first seed (default 0)
  --steps N            denoising steps (default 50, or the run's sample.steps)
  --cfg S              guidance scale (default 7.5, or the run's sample.guidance)
  --eta E              DDIM eta (default 0, or the run's sample.eta)
  --negative TEXT      negative prompt (default: empty, or the run's)
  --height H, --width W  image size (default: the model's, or the run's resolution)
  --batch N            images per forward pass (default 8)
  --threads N          CPU threads (default: all)
  --device D           where the models sample: cpu (default), cuda, cuda:N (a CUDA build);
                       rewards always score images on the cpu
  --base DIR           the base model of checkpoints (default: the run's model.path)
  --ema                load a checkpoint's EMA weights instead of its parameters
  --bootstrap N        bootstrap resamples (default 1000)
  --bootstrap-seed S   seed of the resampling (default 0)
  --html-rows N        prompt-seed rows with images in eval.html (default 400)
  --overwrite          discard DIR/eval.jsonl instead of resuming it
  --quiet              no progress bar
  -o, --output DIR     the output folder (required)

Exit codes: 0 ok, 1 an error (the message names the model, file or reward), 2 a
usage error.]]

local options = require 'diffrl.cli.options'

local NUMERIC = { steps = 'int', cfg = 'num', eta = 'num', seed = 'int', height = 'int', width = 'int',
                  batch = 'int', threads = 'int', seeds = 'int', every = 'int', bootstrap = 'int',
                  ['bootstrap-seed'] = 'int', ['html-rows'] = 'int' }
local STRING = { model = true, against = true, run = true, rewards = true, ['reward-config'] = true,
                 ['group-rewards'] = true, negative = true, base = true, output = true,
                 ['prompt-column'] = true, ['set-column'] = true, device = true }
local LIST = { prompts = true, ['reward-opt'] = true }
local FLAG = { ema = true, overwrite = true, quiet = true, help = true }

local function usage_error(msg)
  io.stderr:write('diffrl eval: ', msg, "\nTry 'diffrl eval --help'.\n")
  return 2
end

local function split_list(s)
  local out = {}
  for w in s:gmatch('[^,%s]+') do out[#out + 1] = w end
  return out
end

function M.parse(args)
  local o, err = options.parse(args, { numeric = NUMERIC, string = STRING, list = LIST, flag = FLAG,
                                       short = { o = 'output', h = 'help' } })
  if not o then return nil, err end
  if o.help then return o end
  if not o.output then return nil, 'missing -o DIR' end
  if not o.model and not o.run then return nil, 'missing --model A (or --run RUN_DIR)' end
  if o.run and (o.model or o.against) then return nil, '--run evaluates a run\'s checkpoints: leave out --model/--against' end
  if o.against and not o.model then return nil, '--against needs --model' end
  if o.every and not o.run then return nil, '--every is for --run' end
  for _, k in ipairs { 'steps', 'batch', 'threads', 'height', 'width', 'seeds', 'every', 'bootstrap', 'html-rows' } do
    if o[k] and o[k] < 1 then return nil, ('--%s must be positive, got %d'):format(k, o[k]) end
  end
  if o.seed and o.seed < 0 then return nil, '--seed must be >= 0' end
  if o.rewards then
    o.reward_list = split_list(o.rewards)
    if #o.reward_list == 0 then return nil, '--rewards is empty' end
  end
  o.reward_opts = {}
  for _, kv in ipairs(o['reward-opt']) do
    local path, v = kv:match('^([%a_][%w_]*%.[%w_.]+)=(.*)$')
    if not path then return nil, ("--reward-opt expects REWARD.KEY=VALUE, got '%s'"):format(kv) end
    local config = require 'diffrl.config'
    local ok, lit = pcall(config.parse_literal, v)
    if not ok then lit = v end
    config.set(o.reward_opts, path, lit)
  end
  o.group = {}
  for _, name in ipairs(o['group-rewards'] and split_list(o['group-rewards']) or {}) do o.group[name] = true end
  return o
end

-- --prompts values -> entries { prompt, set, rewards? }
local function load_prompts(o, run_cfg)
  local sources = require 'diffrl.eval.sources'
  local entries, shapes_source = {}, false
  local list = o.prompts
  if #list == 0 and run_cfg and run_cfg.shapes then list = { 'shapes' } end
  if #list == 0 then error('missing --prompts FILE', 0) end
  for _, p in ipairs(list) do
    local n = p:match('^shapes:(%d+)$')
    local got
    if p == 'shapes' or n then
      shapes_source = true
      local sh = run_cfg and run_cfg.shapes or {}
      got = sources.shapes_sets { n = tonumber(n) or sh.heldout or 8, max_objects = sh.max_objects or 2,
                                  seed = run_cfg and run_cfg.run and run_cfg.run.seed or 0 }
    else
      got = sources.prompt_file(p, { column = o['prompt-column'], set_column = o['set-column'] })
    end
    for _, e in ipairs(got) do
      if o.reward_list then e.rewards = nil end
      entries[#entries + 1] = e
    end
  end
  return entries, shapes_source
end

local function set_order(entries)
  local sets, seen = {}, {}
  for _, e in ipairs(entries) do
    if not seen[e.set] then seen[e.set] = true; sets[#sets + 1] = e.set end
  end
  return sets
end

local function reward_order(entries, default)
  local names, seen = {}, {}
  for _, e in ipairs(entries) do
    for _, n in ipairs(e.rewards or default or {}) do
      if not seen[n] then seen[n] = true; names[#names + 1] = n end
    end
  end
  return names
end

-- The training reward near checkpoint step N: iteration N + 1 samples with the
-- weights of step N, so the mean of reward_mean/<task> over iterations N-3 .. N+1.
local function train_reward(metrics, task, step, is_group)
  local s, n = 0, 0
  for _, r in ipairs(metrics) do
    local v = r['reward_mean/' .. task]
    if type(v) == 'number' and r.step >= step - 3 and r.step <= step + 1 then s, n = s + v, n + 1 end
  end
  if n == 0 then return nil end
  return is_group and -s / n or s / n
end

function M.main(o)
  local dr = require 'diffrl'
  local sources = require 'diffrl.eval.sources'
  local erun = require 'diffrl.eval.run'
  local summary = require 'diffrl.eval.summary'
  local rundir = require 'diffrl.rundir'
  if o.threads then dr.set_num_threads(o.threads) end
  local dir = o.output:gsub('/+$', '')

  -- the run whose sampling settings are the defaults (--run, or a checkpoint A / B)
  local run_cfg, run_dir
  if o.run then
    run_dir = o.run:gsub('/+$', '')
    if not rundir._fs.exists(run_dir .. '/run.json') then
      error(('--run: %s is not a run folder of diffrl run (no run.json)'):format(run_dir), 0)
    end
    run_cfg = sources.run_config(run_dir, o.base)
  end

  local entries, shapes_source = load_prompts(o, run_cfg)
  local rewards_default = o.reward_list
  local reward_opts = o.reward_opts
  if o['reward-config'] then
    local from_file = require('diffrl.config').load_file(o['reward-config'])
    for k, v in pairs(from_file) do reward_opts[k] = reward_opts[k] or v end
  end
  -- the shapes sets score the preference reward the quickstart trains with (a run's
  -- config may name its own weights)
  if shapes_source and not reward_opts.shapes_preference then
    local w = run_cfg and run_cfg.shapes and run_cfg.shapes.preference_weights or sources.SHAPES_PREFERENCE
    reward_opts.shapes_preference = { weights = w }
  end
  erun.reward_functions(entries, rewards_default, reward_opts) -- unknown rewards fail before sampling

  -- the models
  local models = {}
  if o.run then
    local _, base = sources.run_config(run_dir, o.base)
    local m0 = sources.model(base, { device = o.device })
    m0.step, m0.label = 0, 'step 0'
    models[1] = m0
    for _, c in ipairs(sources.checkpoints(run_dir)) do
      if not o.every or c.step % o.every == 0 then
        local m = sources.model(c.path, { base = o.base, ema = o.ema, device = o.device })
        m.label = ('step %d'):format(c.step)
        models[#models + 1] = m
      end
    end
    if #models == 1 then io.stderr:write(('diffrl eval: %s has no checkpoint%s: only the base model is evaluated\n')
      :format(run_dir, o.every and (' at a multiple of %d'):format(o.every) or '')) end
  else
    models[1] = sources.model(o.model, { base = o.base, ema = o.ema, device = o.device })
    if o.against then
      models[2] = sources.model(o.against, { base = o.base, ema = o.ema, device = o.device })
      if models[2].label == models[1].label then
        models[1].label, models[2].label = 'A:' .. models[1].label, 'B:' .. models[2].label
      end
    end
    for _, m in ipairs(models) do
      if not run_cfg and m.run then run_cfg = sources.run_config(m.run, o.base) end
    end
  end
  local sample = run_cfg and run_cfg.sample or {}
  local settings = {
    steps = o.steps or sample.steps or 50, cfg = o.cfg or sample.guidance or 7.5, eta = o.eta or sample.eta or 0,
    negative = o.negative or sample.negative_prompt or '', height = o.height or sample.resolution,
    width = o.width or sample.resolution, seeds = o.seeds or 4, seed = o.seed or 0,
  }
  settings.height = settings.height or models[1].pipe.sample_size
  settings.width = settings.width or models[1].pipe.sample_size

  local done = erun.open(dir, settings, { overwrite = o.overwrite }) -- resume
  local rows = erun.evaluate {
    models = models, entries = entries, rewards = rewards_default, reward_opts = reward_opts, group_rewards = o.group,
    seeds = settings.seeds, seed = settings.seed, steps = settings.steps, cfg = settings.cfg, eta = settings.eta,
    negative = settings.negative, height = settings.height, width = settings.width, batch = o.batch or 8,
    dir = dir, done = done, progress = not o.quiet,
  }

  -- the tables: only this invocation's models and prompts
  local labels, wanted_model, wanted_prompt = {}, {}, {}
  for i, m in ipairs(models) do labels[i], wanted_model[m.label] = m.label, true end
  for _, e in ipairs(entries) do wanted_prompt[e.set .. '\0' .. e.prompt] = true end
  local kept = {}
  for _, r in ipairs(rows) do
    if wanted_model[r.model] and wanted_prompt[r.set .. '\0' .. r.prompt] and r.seed >= settings.seed
       and r.seed < settings.seed + settings.seeds then
      kept[#kept + 1] = r
    end
  end
  local group = {}
  for k, v in pairs(erun.GROUP_REWARDS) do group[k] = v end
  for k, v in pairs(o.group) do group[k] = v end
  local lines = {}
  for i, m in ipairs(models) do
    local role = o.run and '' or (i == 1 and 'A = ' or 'B = ')
    lines[#lines + 1] = ('%s%s: %s %s%s'):format(role, m.label, m.kind, m.path, m.base and (' on ' .. m.base) or '')
  end
  lines[#lines + 1] = ('%d seeds per prompt (%d..%d), %d steps, cfg %g, eta %g, %dx%d%s.'):format(
    settings.seeds, settings.seed, settings.seed + settings.seeds - 1, settings.steps, settings.cfg, settings.eta,
    settings.height, settings.width, settings.negative ~= '' and (', negative prompt ' .. settings.negative) or '')
  for _, name in ipairs(reward_order(entries, rewards_default)) do
    if name == 'shapes_preference' then
      lines[#lines + 1] = reward_opts.shapes_preference
        and 'shapes_preference with the weights recipes/quickstart.lua trains with (or those given).'
        or 'shapes_preference with its default weights (recipes/quickstart.lua trains with its own: ' ..
           '--prompts shapes or --reward-config gives them).'
    end
  end
  local s = summary.build(kept, {
    models = labels, sets = set_order(entries), rewards = reward_order(entries, rewards_default),
    group_rewards = group, a = not o.run and models[2] and labels[1] or nil, b = not o.run and labels[2] or nil,
    resamples = o.bootstrap or 1000, seed = o['bootstrap-seed'] or 0, info = { lines = lines },
  })
  s.settings = settings

  if o.run then -- reward vs step, beside the training reward
    local metrics = {}
    local f = io.open(run_dir .. '/metrics.jsonl', 'rb')
    if f then
      local cjson = require 'cjson.safe'
      for line in f:lines() do
        local r = cjson.decode(line)
        if type(r) == 'table' and type(r.step) == 'number' then metrics[#metrics + 1] = r end
      end
      f:close()
    end
    local columns = {}
    for _, set in ipairs(s.sets) do
      for _, name in ipairs(set.rewards) do columns[#columns + 1] = { set = set.name, reward = name } end
    end
    local points = {}
    for _, m in ipairs(models) do
      local p = { step = m.step, heldout = {}, train = {} }
      for j, c in ipairs(columns) do
        -- NaN (JSON null) where there is no number: the lists must stay lists
        p.heldout[j] = summary.find(s, c.set, m.label, c.reward) or { mean = 0 / 0, lo = 0 / 0, hi = 0 / 0 }
        p.train[j] = train_reward(metrics, c.set, m.step, group[c.reward]) or 0 / 0
      end
      points[#points + 1] = p
    end
    s.curve = { columns = columns, points = points, run = run_dir,
                note = 'held-out: this eval\'s mean [95% CI] at each checkpoint; train: the run\'s reward_mean/<set> ' ..
                       '(the training task of the same name, on its training prompts) averaged over iterations ' ..
                       'step-3 .. step+1 of metrics.jsonl (iteration N+1 samples with the weights of checkpoint N); ' ..
                       'SP columns as -reward. A gap that grows between the two is overfitting to the training prompts.' }
  end

  local md = require('diffrl.eval').write(dir, s, kept, labels, { max_rows = o['html-rows'] })
  return dir, md
end

function M.run(args)
  local o, err = M.parse(args)
  if not o then return usage_error(err) end
  if o.help then
    io.write(M.usage, '\n')
    return 0
  end
  local ok, dir, md = pcall(M.main, o)
  if not ok then
    io.stderr:write('diffrl eval: ', tostring(dir):gsub('^[^:\n]*%.lua:%d+: ', ''), '\n')
    return 1
  end
  io.write(md)
  io.write(('wrote %s/eval.jsonl, summary.json, summary.md, eval.html\n'):format(dir))
  return 0
end

return M
