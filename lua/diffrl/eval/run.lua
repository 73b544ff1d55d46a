-- diffrl.eval.run: sampling and scoring for `diffrl eval`.
--
--   local rows = run.evaluate {
--     models = { m1, m2, ... },          -- sources.model(...) results (label, pipe)
--     entries = { { prompt =, set =, rewards = { names } | nil }, ... },
--     rewards = { 'shapes_composition', ... },   -- for entries without their own list
--     reward_opts = { name = opts },     -- passed to rewards.get(name, opts)
--     group_rewards = { name = true },   -- judged per prompt's group of seeds
--     seeds = 4, seed = 0,               -- seeds seed .. seed + seeds - 1 per prompt
--     steps =, cfg =, eta =, negative =, height =, width =, batch = 8,
--     dir = 'out',                       -- eval.jsonl and images/ go here
--     done = { [key] = row },            -- rows already in eval.jsonl (resume)
--     progress = true,
--   }
--
-- Noise: the image of (prompt, seed s) starts from, and draws its DDIM noise from,
-- its own generator dr.Generator(s) (dr.row_generators), so every model sees the
-- same noise for the same (prompt, seed) whatever the batch it falls in, and the
-- image is the one `diffrl sample --seed s` gives (equal up to the float rounding
-- of batched matrix products, ~1e-6). Same models, same settings: same eval.jsonl.
--
-- Group rewards (shapes_diversity, fairness, ...) judge the `seeds` images of one
-- prompt and model together (meta.groups); every image of the group gets the
-- group's score. All seeds of a prompt are therefore sampled and scored together,
-- in sub-batches of at most `batch` images.
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'
local rewards = require 'diffrl.rewards'
local rundir = require 'diffrl.rundir'
local progress = require 'diffrl.progress'

local raise = api.raise
local M = {}

-- Rewards judged per group of images; --group-rewards adds more.
M.GROUP_REWARDS = { shapes_diversity = true, fairness = true }

-- The key of one image in eval.jsonl (resume skips keys already there).
function M.key(model, set, prompt, seed)
  return table.concat({ model, set, prompt, tostring(seed) }, '\0')
end

-- A path-safe form of a label or set name.
local function safe(s) return (tostring(s):gsub('[^%w_.%-]+', '_')) end

-- Every reward function the entries need, by name (an unknown name fails here,
-- before any model is loaded or image sampled).
function M.reward_functions(entries, default, reward_opts)
  local fns, order = {}, {}
  local function need(name)
    if fns[name] then return end
    local opts = reward_opts and reward_opts[name]
    local ok, fn = pcall(rewards.get, name, opts)
    if not ok then raise(('eval: --rewards: %s'):format(tostring(fn):gsub('^[^:\n]*:%d+: ', ''))) end
    fns[name], order[#order + 1] = fn, name
  end
  for _, e in ipairs(entries) do
    local list = e.rewards or default
    if not list or #list == 0 then raise(('eval: no rewards for the prompt set %s (give --rewards)'):format(e.set)) end
    for _, name in ipairs(list) do need(name) end
  end
  return fns, order
end

-- Reads eval.jsonl rows (for resume and for summaries), keyed.
function M.read_rows(path)
  local cjson = require 'cjson.safe'
  local f = io.open(path, 'rb')
  local rows, done = {}, {}
  if not f then return rows, done end
  for line in f:lines() do
    local r = cjson.decode(line)
    if type(r) == 'table' and r.model and r.prompt and r.seed then
      for k, v in pairs(r.scores or {}) do
        if v == cjson.null then r.scores[k] = 0 / 0 end
      end
      local key = M.key(r.model, r.set, r.prompt, r.seed)
      if not done[key] then rows[#rows + 1], done[key] = r, r end
    end
  end
  f:close()
  return rows, done
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function mkdir_p(path)
  local ok = os.execute('mkdir -p ' .. shell_quote(path))
  if ok ~= 0 and ok ~= true then raise(('eval: cannot create the folder %s'):format(path)) end
end

local SETTINGS = { 'steps', 'cfg', 'eta', 'negative', 'height', 'width' }

-- Opens DIR for an eval with `settings` (steps, cfg, eta, negative, height, width,
-- seeds, seed): the rows DIR/eval.jsonl already holds, by key (resume), after
-- checking that they were sampled with the same settings (DIR/eval.settings.json);
-- opts.overwrite removes eval.jsonl and images/ first.
function M.open(dir, settings, opts)
  mkdir_p(dir)
  local path = dir .. '/eval.settings.json'
  if opts and opts.overwrite then
    os.remove(dir .. '/eval.jsonl')
    os.execute('rm -rf ' .. shell_quote(dir .. '/images'))
  end
  local _, done = M.read_rows(dir .. '/eval.jsonl')
  if next(done) then
    local f = io.open(path, 'rb')
    local old = f and require('cjson.safe').decode(f:read('*a'))
    if f then f:close() end
    local differ = type(old) ~= 'table' and 'eval.settings.json missing' or nil
    for _, k in ipairs(SETTINGS) do
      if not differ and old[k] ~= settings[k] then differ = k end
    end
    if differ then
      raise(('eval: %s/eval.jsonl was sampled with other settings (%s); use another output folder or --overwrite')
        :format(dir, differ))
    end
  end
  local f = io.open(path, 'wb')
  if not f then raise(('eval: cannot write %s'):format(path)) end
  f:write(rundir.json_encode(settings, '  '), '\n')
  f:close()
  return done
end

-- Samples rows { entry, seed } with model m: images [n, 3, H, W].
local function sample_rows(m, rows, o, bar, counted)
  local parts = {}
  local batch = o.batch or 8
  for r0 = 1, #rows, batch do
    local prompts, gens = {}, {}
    for i = r0, math.min(r0 + batch - 1, #rows) do
      prompts[#prompts + 1] = rows[i].entry.prompt
      gens[#gens + 1] = core.Generator(rows[i].seed)
    end
    parts[#parts + 1] = core.no_grad(function()
      return m.pipe:sample { prompt = prompts, negative = o.negative or '', steps = o.steps, cfg = o.cfg,
                             eta = o.eta, height = o.height, width = o.width,
                             generator = core.row_generators(gens) }
    end):cpu() -- rewards, PNGs and eval.html read them on the host
    counted[1] = counted[1] + #prompts
    if bar then bar:update(counted[1]) end
  end
  return #parts == 1 and parts[1] or core.cat(parts, 1)
end

function M.evaluate(o)
  local entries, models = o.entries, o.models
  if type(entries) ~= 'table' or #entries == 0 then raise('eval: no prompts') end
  if type(models) ~= 'table' or #models == 0 then raise('eval: no models') end
  local fns = M.reward_functions(entries, o.rewards, o.reward_opts)
  local seeds, seed0 = o.seeds or 4, o.seed or 0
  local dir = o.dir
  mkdir_p(dir)
  local done = o.done or {}
  local out = assert(io.open(dir .. '/eval.jsonl', 'ab'))
  -- the work: per model, chunks of whole prompts (about `batch` images); a chunk is
  -- sampled when eval.jsonl lacks one of its rows. The chunks do not depend on what
  -- is done, so a resumed eval samples every image in the batch it had first, and
  -- writes the same numbers as one never interrupted.
  local per_chunk = math.max(1, math.floor((o.batch or 8) / seeds))
  local todo, total = {}, 0
  for mi, m in ipairs(models) do
    for c = 1, #entries, per_chunk do
      local chunk, missing = {}, false
      for pi = c, math.min(c + per_chunk - 1, #entries) do
        chunk[#chunk + 1] = pi
        for s = seed0, seed0 + seeds - 1 do
          if not done[M.key(m.label, entries[pi].set, entries[pi].prompt, s)] then missing = true end
        end
      end
      if missing then
        todo[#todo + 1] = { model = mi, prompts = chunk }
        total = total + #chunk * seeds
      end
    end
  end
  local bar = (o.progress ~= false and total > 0) and progress.bar { total = total, label = 'eval', unit = 'img' } or nil
  local counted = { 0 }
  local written = {}
  for _, work in ipairs(todo) do
    local m, chunk = models[work.model], work.prompts
    local rows = {}
    for _, pi in ipairs(chunk) do
      for s = seed0, seed0 + seeds - 1 do rows[#rows + 1] = { entry = entries[pi], index = pi, seed = s } end
    end
    local images = sample_rows(m, rows, o, bar, counted)
    -- score: each reward on the rows whose prompt set asks for it, groups = prompts
    local scores = {}
    for r = 1, #rows do scores[r] = {} end
    local names = {}
    for _, row in ipairs(rows) do
      for _, name in ipairs(row.entry.rewards or o.rewards) do names[name] = true end
    end
    local sorted = {}
    for name in pairs(names) do sorted[#sorted + 1] = name end
    table.sort(sorted)
    for _, name in ipairs(sorted) do
      local idx, prompts, groups = {}, {}, {}
      for r, row in ipairs(rows) do
        local wants = false
        for _, n in ipairs(row.entry.rewards or o.rewards) do wants = wants or n == name end
        if wants then idx[#idx + 1], prompts[#prompts + 1], groups[#groups + 1] = r, row.entry.prompt, row.index end
      end
      local sub = #idx == #rows and images or images:index_select(1, idx)
      local s = rewards.call(fns[name], sub, prompts, { step = m.step or 0, heldout = true, eval = true,
                                                        groups = groups })
      for j, r in ipairs(idx) do scores[r][name] = s[j] end
    end
    local img_dir = ('%s/images/%s'):format(dir, safe(m.label))
    if not written[img_dir] then mkdir_p(img_dir); written[img_dir] = true end
    for r, row in ipairs(rows) do
      local key = M.key(m.label, row.entry.set, row.entry.prompt, row.seed)
      if not done[key] then
        local image = ('images/%s/%s_p%04d_s%d.png'):format(safe(m.label), safe(row.entry.set), row.index, row.seed)
        core.save_image(dir .. '/' .. image, images[r])
        local rec = { model = m.label, set = row.entry.set, prompt = row.entry.prompt, prompt_index = row.index,
                      seed = row.seed, scores = scores[r], image = image, step = m.step }
        out:write(rundir.json_encode(rec), '\n')
        done[key] = rec
      end
    end
    out:flush()
  end
  out:close()
  if bar then bar:finish() end
  return M.read_rows(dir .. '/eval.jsonl')
end

return M
