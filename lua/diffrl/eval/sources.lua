-- diffrl.eval.sources: what `diffrl eval` compares (models) and on what (prompt sets).
--
--   sources.prompt_file(path, { column = 'prompt', set_column = 'set', set = nil })
--     -> { { prompt =, set = }, ... } in file order: one prompt per line (.txt), or the
--     fields of a .jsonl / .csv file (diffrl.data.records). The set is the record's
--     set_column field when it has one, else opts.set, else the file's name without
--     its extension. Trimmed; empty prompts skipped; a (set, prompt) pair repeated is
--     kept once. Errors name the file and line.
--   sources.shapes_sets{ seed = 0, n = 8, max_objects = 2 }
--     -> the shapes world's held-out prompts per task, as recipes/quickstart.lua holds
--     them out (its tasks' `heldout`), each entry with the rewards of its task:
--       composition  n captions of the test split (shapes.heldout_prompts(n, seed))
--       diversity    'a star', ..., 'two circles', ...: colour left open, a kind or a count
--                    never trained on (11 prompts)
--       preference   n captions of the test split (stream seed + 2)
--     sources.SHAPES_PREFERENCE: the quickstart's shapes_preference weights
--   sources.model(spec, { base =, ema =, device = }) -> { label, path, kind, pipe, step, run }
--     spec: 'PATH' or 'LABEL=PATH'; PATH a diffusers folder (model_index.json), a run
--     folder of `diffrl run` (its newest checkpoint) or a checkpoint folder
--     (RUN/checkpoints/step_NNNNNN). A checkpoint is put on the base pipeline its run's
--     config.lua names (model.path; opts.base overrides) the way the trainer sets it
--     up (rl.trainer.setup_model: LoRA adapters or the whole UNet), then its
--     param.<name> tensors (ema.<name> with opts.ema) are copied in, as resume does.
--   sources.checkpoints(run_dir) -> { { step =, path = }, ... } ascending
local cjson = require 'cjson.safe'
local api = require 'diffrl.core.ffi'
local records = require 'diffrl.data.records'
local rundir = require 'diffrl.rundir'
local shapes_tasks = require 'diffrl.rewards.shapes_tasks'

local raise = api.raise
local fs = rundir._fs
local M = {}

local function trim(s) return (s:gsub('^%s+', ''):gsub('%s+$', '')) end

local function is_dir(path)
  local names = fs.list_dir(path)
  return names ~= nil
end

local function exists(path) return fs.exists(path) end

-- ---- prompt files ----------------------------------------------------------------------

function M.prompt_file(path, opts)
  opts = opts or {}
  local op = 'eval: --prompts'
  if type(path) ~= 'string' then raise(op .. ': expected a file path') end
  local f, err = io.open(path, 'rb')
  if not f then raise(('%s: cannot read %s (%s)'):format(op, path, tostring(err))) end
  if is_dir(path) then f:close(); raise(('%s: %s is a folder, not a prompt file'):format(op, path)) end
  local format = records.format_of(path)
  local column, set_column = opts.column or 'prompt', opts.set_column or 'set'
  local default_set = opts.set or path:match('([^/]*)$'):gsub('%.[^.]*$', '')
  local function fail(lineno, msg) raise(('%s: %s:%s: %s'):format(op, path, tostring(lineno), msg)) end
  local prompt_of = records.reader(format, column, fail).prompt
  local header -- csv: the column names
  local out, seen = {}, {}
  local ok, perr = pcall(records.each, f, format == 'csv', function(_, _, lineno, raw)
    if raw:find('\0', 1, true) then fail(lineno, 'a NUL byte (is this a text file?)') end
    local text = prompt_of(raw, lineno)
    if text == nil then header = records.csv_fields(raw) return end
    local set = default_set
    if format == 'jsonl' and raw:find('%S') then
      local v = cjson.decode(raw)[set_column]
      if v ~= nil and v ~= cjson.null then
        if type(v) ~= 'string' and type(v) ~= 'number' then fail(lineno, ("field '%s' must be a string"):format(set_column)) end
        set = tostring(v)
      end
    elseif format == 'csv' and header then
      local fields = records.csv_fields(raw)
      for i, name in ipairs(header) do
        if name == set_column and fields[i] and trim(fields[i]) ~= '' then set = trim(fields[i]) end
      end
    end
    text = trim(text)
    if text == '' then return end
    local key = set .. '\0' .. text
    if not seen[key] then
      seen[key] = true
      out[#out + 1] = { prompt = text, set = set, line = lineno }
    end
  end, fail)
  f:close()
  if not ok then error(perr, 0) end
  if #out == 0 then raise(('%s: %s holds no prompts'):format(op, path)) end
  return out
end

-- ---- the shapes world's held-out prompts -------------------------------------------------

-- The weights of shapes_preference that recipes/quickstart.lua trains with
-- (diffrl.rewards.shapes_tasks): the preference column scores the reward the models learned.
M.SHAPES_PREFERENCE = shapes_tasks.PREFERENCE

-- The held-out prompts of recipes/quickstart.lua's tasks (shapes_tasks.heldout), each
-- entry with the reward of its task.
function M.shapes_sets(opts)
  opts = opts or {}
  local held = shapes_tasks.heldout { seed = opts.seed or 0, n = opts.n or 8, max_objects = opts.max_objects or 2 }
  local out = {}
  for _, set in ipairs(shapes_tasks.NAMES) do
    for _, p in ipairs(held[set]) do out[#out + 1] = { prompt = p, set = set, rewards = { shapes_tasks.REWARDS[set] } } end
  end
  return out
end

-- ---- models --------------------------------------------------------------------------------

function M.checkpoints(run_dir)
  local out = {}
  for _, name in ipairs(fs.list_dir(run_dir .. '/checkpoints') or {}) do
    local s = name:match('^step_(%d+)$')
    if s then out[#out + 1] = { step = tonumber(s), path = run_dir .. '/checkpoints/' .. name } end
  end
  table.sort(out, function(a, b) return a.step < b.step end)
  return out
end

-- The run's resolved config (config.lua) and its base model folder.
function M.run_config(run_dir, base)
  local config = require 'diffrl.config'
  local path = run_dir .. '/config.lua'
  if not exists(path) then raise(('eval: %s is not a run folder of diffrl run: %s is missing'):format(run_dir, path)) end
  local cfg = config.load_file(path)
  base = base or (cfg.model and cfg.model.path)
  if type(base) ~= 'string' or not exists(base .. '/model_index.json') then
    raise(('eval: the base model of %s (model.path = %s in %s) is not a diffusers folder here; give --base DIR')
      :format(run_dir, tostring(base), path))
  end
  return cfg, base
end

local function load_checkpoint(ckpt, opts)
  local pipeline = require 'diffrl.pipeline'
  local trainer = require 'diffrl.rl.trainer'
  local run_dir = ckpt:gsub('/+$', ''):gsub('/checkpoints/[^/]+$', '')
  local cfg, base = M.run_config(run_dir, opts.base)
  local pipe = pipeline.load(base, { device = opts.device })
  local named = trainer.setup_model(pipe, cfg)
  local st = rundir.load_checkpoint(ckpt)
  trainer.load_params(named, st, opts.ema and 'ema.' or 'param.',
                      { op = 'eval', path = ckpt, hint = opts.ema and ' (was train.use_ema off? leave out --ema)' })
  return pipe, st.lua.step, run_dir, base
end

function M.model(spec, opts)
  opts = opts or {}
  if type(spec) ~= 'string' or spec == '' then raise('eval: a model must be a path') end
  local label, path = spec:match('^([%w_.%-]+)=(.+)$')
  if not label then path = spec end
  path = path:gsub('/+$', '')
  local m = { path = path }
  if exists(path .. '/model_index.json') then
    m.kind, m.pipe = 'diffusers', require('diffrl.pipeline').load(path, { device = opts.device })
    m.label = label or path:match('([^/]*)$')
  elseif exists(path .. '/state.lua') then
    m.kind = 'checkpoint'
    m.pipe, m.step, m.run, m.base = load_checkpoint(path, opts)
    m.label = label or ('%s@%d'):format(m.run:match('([^/]*)$'), m.step)
  elseif exists(path .. '/run.json') then
    local list = M.checkpoints(path)
    if #list == 0 then raise(('eval: the run folder %s has no checkpoint yet'):format(path)) end
    m.kind = 'checkpoint'
    m.path = list[#list].path
    m.pipe, m.step, m.run, m.base = load_checkpoint(m.path, opts)
    m.label = label or ('%s@%d'):format(path:match('([^/]*)$'), m.step)
  elseif not exists(path) then
    raise(('eval: model %s does not exist'):format(path))
  else
    raise(('eval: model %s is neither a diffusers folder (model_index.json), a run folder (run.json) ' ..
           'nor a checkpoint (state.lua + tensors.safetensors)'):format(path))
  end
  return m
end

return M
