-- recipes/eval_shapes.lua — the structure of the paper's Table 5 on the shapes world:
-- the base model, the single-reward models (composition, diversity, preference) and
-- the joint model, each scored with every shapes reward on its held-out prompts.
--
-- Rows: the models given (the base always; the others when their paths are set).
-- Columns: each task's reward on that task's held-out prompts, as
-- recipes/quickstart.lua holds them out (diffrl.eval.sources.shapes_sets):
--   composition  shapes_composition (detection score, higher is better)
--   diversity    shapes_diversity reported as statistical parity SP (lower is fairer)
--   preference   shapes_preference (the fixed aesthetic rule, higher is better)
-- Every cell: the mean over prompts [95% bootstrap CI over prompts], `seeds` images
-- per prompt with the same seeds (the same initial noise) for every model.
-- Below the table, when the joint model and single-reward models are given:
--   gain kept by the joint model = (joint - base) / (single - base) per reward (the
--   paper's "> 80% of each single-task gain"), and the alignment tax: what each
--   single-reward model loses, against the base, on the rewards it did not train on.
--
--   diffrl run recipes/eval_shapes.lua                                 # the base row alone
--   diffrl run recipes/eval_shapes.lua composition=runs/comp diversity=runs/div \
--       preference=runs/pref joint=runs/quickstart-20260101-120000 out=runs/table5
-- A model is a diffusers folder, a run folder (its newest checkpoint) or a checkpoint
-- folder (RUN/checkpoints/step_NNNNNN). Writes OUT/table5.md plus what `diffrl eval`
-- writes (eval.jsonl, images/, summary.json, summary.md, eval.html).
local dr = require 'diffrl'
local ev = require 'diffrl.eval'

local root = debug.getinfo(1, 'S').source:match('^@(.*)/recipes/[^/]*$') or '.'
local quickstart = dofile(root .. '/configs/quickstart.lua') -- its held-out set's size

local ROWS = { 'composition', 'diversity', 'preference', 'joint' }
local COLUMNS = { { set = 'composition', reward = 'shapes_composition', higher = true },
                  { set = 'diversity', reward = 'shapes_diversity', higher = false }, -- SP
                  { set = 'preference', reward = 'shapes_preference', higher = true } }
local SINGLE = { shapes_composition = 'composition', shapes_diversity = 'diversity', shapes_preference = 'preference' }

local function model_option(what)
  return { type = 'string', optional = true,
           doc = ('the %s model: a diffusers folder, a run folder or a checkpoint'):format(what) }
end

local schema = dr.config.schema {
  base = { type = 'string', default = root .. '/models/shapes-open', doc = 'the base model (a diffusers folder)' },
  composition = model_option('single-reward composition'),
  diversity = model_option('single-reward diversity'),
  preference = model_option('single-reward preference'),
  joint = model_option('joint (all three rewards)'),
  out = { type = 'string', default = 'runs/eval_shapes', doc = 'the output folder' },
  seeds = { type = 'integer', default = 8, min = 1, doc = 'images per prompt and model' },
  heldout = { type = 'integer', default = quickstart.shapes.heldout, min = 1,
              doc = 'held-out prompts of the composition and preference sets (the runs\' shapes.heldout)' },
  seed = { type = 'integer', default = 0, min = 0,
           doc = 'the runs\' run.seed: which captions are held out (as quickstart draws them)' },
  max_objects = { type = 'integer', default = 2, min = 1, max = 3, doc = 'as the runs\' shapes.max_objects' },
  steps = { type = 'integer', default = 10, min = 1, doc = 'DDIM steps (the quickstart samples with 10)' },
  guidance = { type = 'number', default = 4.0, min = 0, doc = 'guidance scale (quickstart: 4)' },
  eta = { type = 'number', default = 1.0, min = 0, doc = 'DDIM eta (quickstart: 1)' },
  resolution = { type = 'integer', default = 32, min = 8, doc = 'image size in pixels' },
  batch = { type = 'integer', default = 16, min = 1, doc = 'images per forward pass' },
  -- the weights recipes/quickstart.lua trains its preference task with, so the
  -- column scores the reward the models learned
  preference_weights = { type = 'table', default = ev.sources.SHAPES_PREFERENCE,
                         doc = 'weights of shapes_preference (those recipes/quickstart.lua trains with)' },
  bootstrap = { type = 'integer', default = 1000, min = 1, doc = 'bootstrap resamples' },
  overwrite = { type = 'boolean', default = false, doc = 'discard OUT/eval.jsonl instead of resuming it' },
}

local cfg, args = dr.config.from_cli(schema, arg and { unpack(arg) } or {})
if not cfg then
  io.write('Usage: diffrl run recipes/eval_shapes.lua [key=value ...]\n\n', dr.config.help(schema), '\n')
  return
end
if args.resume then
  error('eval_shapes: there is no --resume: run it again with the same out= and it goes on from eval.jsonl', 0)
end

-- the models, base first
local models = { ev.sources.model('base=' .. cfg.base) }
for _, name in ipairs(ROWS) do
  if cfg[name] then
    local m = ev.sources.model(cfg[name], { base = cfg.base })
    m.label = name
    models[#models + 1] = m
  end
end
local labels = {}
for i, m in ipairs(models) do labels[i] = m.label end

local entries = ev.sources.shapes_sets { seed = cfg.seed, n = cfg.heldout, max_objects = cfg.max_objects }
local dir = cfg.out
local settings = { steps = cfg.steps, cfg = cfg.guidance, eta = cfg.eta, negative = '', height = cfg.resolution,
                   width = cfg.resolution, seeds = cfg.seeds, seed = 0 }
local done = ev.run.open(dir, settings, { overwrite = cfg.overwrite }) -- resumes an eval cut short
local rows = ev.run.evaluate {
  models = models, entries = entries, reward_opts = { shapes_preference = { weights = cfg.preference_weights } },
  seeds = cfg.seeds, seed = 0, steps = cfg.steps, cfg = cfg.guidance, eta = cfg.eta, negative = '',
  height = cfg.resolution, width = cfg.resolution, batch = cfg.batch, dir = dir, done = done,
}
local wanted = {}
for _, l in ipairs(labels) do wanted[l] = true end
local kept = {}
for _, r in ipairs(rows) do if wanted[r.model] and r.seed < cfg.seeds then kept[#kept + 1] = r end end

local lines = {}
for _, m in ipairs(models) do
  lines[#lines + 1] = ('%s: %s %s%s'):format(m.label, m.kind, m.path, m.base and (' on ' .. m.base) or '')
end
lines[#lines + 1] = ('%d seeds per prompt, %d steps, cfg %g, eta %g, %dx%d; held-out prompts of run seed %d.'):format(
  cfg.seeds, cfg.steps, cfg.guidance, cfg.eta, cfg.resolution, cfg.resolution, cfg.seed)
local s = ev.summary.build(kept, {
  models = labels, sets = { 'composition', 'diversity', 'preference' },
  rewards = { 'shapes_composition', 'shapes_diversity', 'shapes_preference' },
  group_rewards = ev.run.GROUP_REWARDS, resamples = cfg.bootstrap, info = { lines = lines },
})
ev.write(dir, s, kept, labels)

-- Table 5
local T = { '# Table 5 on the shapes world', '' }
for _, l in ipairs(lines) do T[#T + 1] = '- ' .. l end
T[#T + 1] = ''
T[#T + 1] = 'Mean over held-out prompts [95% CI, bootstrap over prompts]. SP: statistical parity, lower is fairer.'
T[#T + 1] = ''
T[#T + 1] = '| model | composition (detection) ↑ | diversity (SP) ↓ | preference ↑ |'
T[#T + 1] = '| --- | --- | --- | --- |'
local value = {}
for _, label in ipairs(labels) do
  local cells = { label }
  value[label] = {}
  for j, c in ipairs(COLUMNS) do
    local r = ev.summary.find(s, c.set, label, c.reward)
    value[label][j] = r and r.mean
    cells[#cells + 1] = ev.summary.cell(r)
  end
  T[#T + 1] = '| ' .. table.concat(cells, ' | ') .. ' |'
end
-- gain kept by the joint model; the alignment tax of the single-reward models
local function gain(label, j)
  local v, b = value[label] and value[label][j], value.base[j]
  if not v or not b then return nil end
  return COLUMNS[j].higher and v - b or b - v -- SP: lower is better
end
if value.joint then
  local cells = { 'gain kept by joint' }
  for j, c in ipairs(COLUMNS) do
    local single, joint = gain(SINGLE[c.reward], j), gain('joint', j)
    cells[#cells + 1] = (single and joint and single > 0) and ('%.0f%%'):format(100 * joint / single) or '-'
  end
  T[#T + 1] = '| ' .. table.concat(cells, ' | ') .. ' |'
end
T[#T + 1] = ''
T[#T + 1] = 'Gain kept: (joint - base) / (single-reward model - base) per column (the paper: > 80%). ' ..
            'Alignment tax: a single-reward model\'s change against the base on the other columns (below).'
local any_tax = false
for _, name in ipairs { 'composition', 'diversity', 'preference' } do
  if value[name] then
    local parts = {}
    for j, c in ipairs(COLUMNS) do
      if SINGLE[c.reward] ~= name then
        local g = gain(name, j)
        parts[#parts + 1] = ('%s %s'):format(c.set, g and ('%+.3f'):format(g) or 'n/a')
      end
    end
    if not any_tax then T[#T + 1] = '' end
    any_tax = true
    T[#T + 1] = ('- %s model, change on the other rewards (better > 0): %s'):format(name, table.concat(parts, ', '))
  end
end
local text = table.concat(T, '\n') .. '\n'
local f = assert(io.open(dir .. '/table5.md', 'wb'))
f:write(text)
f:close()
io.write(text, ('wrote %s/table5.md, summary.md, eval.html, eval.jsonl\n'):format(dir))
