-- diffrl.eval.summary: eval.jsonl rows -> the tables of `diffrl eval`
-- (summary.json, summary.md), like the paper's Tables 1-5: one block per prompt
-- set, one row per model, one column per reward.
--
--   local s = summary.build(rows, { models = { 'A', 'B' }, sets = {...}, rewards = {...},
--                                   group_rewards = { name = true }, a = 'A', b = 'B',
--                                   resamples = 1000, seed = 0, level = 0.95, info = {...} })
--   summary.markdown(s)  -> text
--
-- Per (set, model, reward): the mean over prompts of each prompt's mean over its
-- seeds, with a 95% percentile-bootstrap CI that resamples prompts (stats.lua).
-- Group rewards report statistical parity, SP = -score (the reward is -SP), one
-- value per prompt (its group of seeds); lower is fairer. Win rate of A over B per
-- (set, reward): pairs of images with the same (prompt, seed), a tie half a win
-- (for group rewards one pair per prompt: its two groups), CI over prompts; and the
-- paired mean change A - B (of SP for group rewards) with its CI.
local stats = require 'diffrl.stats'

local M = {}

local function fmt(x, digits)
  if not stats.finite(x) then return 'n/a' end
  return ('%.' .. (digits or 3) .. 'f'):format(x)
end

local function signed(x)
  if not stats.finite(x) then return 'n/a' end
  return ('%+.3f'):format(x == 0 and 0 or x) -- not "-0.000"
end

-- rows of one (set, model): per prompt, the list of a reward's scores (seed order).
local function index_rows(rows)
  local by = {}
  for _, r in ipairs(rows) do
    by[r.set] = by[r.set] or {}
    by[r.set][r.model] = by[r.set][r.model] or {}
    local t = by[r.set][r.model]
    t[#t + 1] = r
  end
  for _, models in pairs(by) do
    for _, list in pairs(models) do
      table.sort(list, function(x, y)
        if x.prompt_index ~= y.prompt_index then return (x.prompt_index or 0) < (y.prompt_index or 0) end
        if x.prompt ~= y.prompt then return x.prompt < y.prompt end
        return x.seed < y.seed
      end)
    end
  end
  return by
end

-- values (per image, or per prompt for group rewards) and their prompt units
local function series(list, reward, is_group)
  local xs, units, seen = {}, {}, {}
  for _, r in ipairs(list) do
    local v = r.scores and r.scores[reward]
    if v ~= nil then
      if is_group then
        if not seen[r.prompt] then
          seen[r.prompt] = true
          xs[#xs + 1], units[#units + 1] = -v, r.prompt
        end
      else
        xs[#xs + 1], units[#units + 1] = v, r.prompt
      end
    end
  end
  return xs, units
end

function M.build(rows, o)
  local boot = { resamples = o.resamples or 1000, seed = o.seed or 0, level = o.level or 0.95 }
  local group = o.group_rewards or {}
  local by = index_rows(rows)
  local s = { models = o.models, sets = {}, rewards = o.rewards, group_rewards = {}, results = {}, win_rates = {},
              bootstrap = { resamples = boot.resamples, seed = boot.seed, level = boot.level, unit = 'prompt',
                            method = 'percentile' },
              info = o.info or {} }
  for _, name in ipairs(o.rewards) do if group[name] then s.group_rewards[#s.group_rewards + 1] = name end end
  for _, set in ipairs(o.sets) do
    local per_model = by[set] or {}
    local set_rewards, n_prompts = {}, 0
    for _, name in ipairs(o.rewards) do
      local any = false
      for _, label in ipairs(o.models) do
        for _, r in ipairs(per_model[label] or {}) do any = any or (r.scores and r.scores[name] ~= nil) end
      end
      if any then set_rewards[#set_rewards + 1] = name end
    end
    for _, label in ipairs(o.models) do
      local prompts = {}
      for _, r in ipairs(per_model[label] or {}) do prompts[r.prompt] = true end
      local c = 0
      for _ in pairs(prompts) do c = c + 1 end
      n_prompts = math.max(n_prompts, c)
    end
    s.sets[#s.sets + 1] = { name = set, rewards = set_rewards, prompts = n_prompts }
    for _, label in ipairs(o.models) do
      local list = per_model[label] or {}
      for _, name in ipairs(set_rewards) do
        local xs, units = series(list, name, group[name])
        local per_prompt = stats.cluster_means(xs, units)
        local ci = stats.bootstrap_ci(per_prompt, boot)
        s.results[#s.results + 1] = { set = set, model = label, reward = name, mean = ci.mean, lo = ci.lo,
                                      hi = ci.hi, prompts = ci.n, images = #list,
                                      statistic = group[name] and 'statistical_parity' or 'mean' }
      end
    end
    if o.a and o.b and o.a ~= o.b then
      local la, lb = per_model[o.a] or {}, per_model[o.b] or {}
      local bmap = {}
      for _, r in ipairs(lb) do bmap[r.prompt .. '\0' .. r.seed] = r end
      for _, name in ipairs(set_rewards) do
        local a, b, units, seen = {}, {}, {}, {}
        for _, r in ipairs(la) do
          local q = bmap[r.prompt .. '\0' .. r.seed]
          if q and r.scores[name] ~= nil and q.scores[name] ~= nil and not (group[name] and seen[r.prompt]) then
            seen[r.prompt] = true
            a[#a + 1], b[#b + 1], units[#units + 1] = r.scores[name], q.scores[name], r.prompt
          end
        end
        local w = stats.win_rate(a, b, units, boot)
        w.set, w.reward, w.a, w.b, w.pairs = set, name, o.a, o.b, group[name] and 'prompt' or 'image'
        -- the column's statistic: for SP (= -score) the change of SP
        local c = stats.paired_change(a, b, units, boot)
        if group[name] then c.mean, c.lo, c.hi = -c.mean, -c.hi, -c.lo end
        w.change = c
        s.win_rates[#s.win_rates + 1] = w
      end
    end
  end
  return s
end

function M.find(s, set, model, reward)
  for _, r in ipairs(s.results) do
    if r.set == set and r.model == model and r.reward == reward then return r end
  end
end

function M.cell(r)
  if not r then return '-' end
  return ('%s [%s, %s]'):format(fmt(r.mean), fmt(r.lo), fmt(r.hi))
end

function M.column_title(s, reward)
  for _, g in ipairs(s.group_rewards) do if g == reward then return reward .. ' SP ↓' end end
  return reward
end

function M.markdown(s)
  local L = {}
  local function add(x) L[#L + 1] = x end
  add('# diffrl eval')
  add('')
  for _, line in ipairs(s.info.lines or {}) do add('- ' .. line) end
  if s.info.lines and #s.info.lines > 0 then add('') end
  add(('Cells: mean over prompts [%d%% CI: percentile bootstrap, %d resamples of the prompts, seed %d]. ')
    :format(math.floor(s.bootstrap.level * 100 + 0.5), s.bootstrap.resamples, s.bootstrap.seed) ..
    'Each prompt counts with the mean of its seeds\' scores.' ..
    (#s.group_rewards > 0 and (' SP: statistical parity = -score of the group reward (' ..
      table.concat(s.group_rewards, ', ') .. '), one value per prompt (its seeds judged together); lower is fairer.') or ''))
  for _, set in ipairs(s.sets) do
    add('')
    add(('## %s (%d prompts)'):format(set.name, set.prompts))
    add('')
    local head, rule = { 'model' }, { '---' }
    for _, name in ipairs(set.rewards) do head[#head + 1], rule[#rule + 1] = M.column_title(s, name), '---' end
    add('| ' .. table.concat(head, ' | ') .. ' |')
    add('| ' .. table.concat(rule, ' | ') .. ' |')
    for _, label in ipairs(s.models) do
      local cells = { label }
      for _, name in ipairs(set.rewards) do cells[#cells + 1] = M.cell(M.find(s, set.name, label, name)) end
      add('| ' .. table.concat(cells, ' | ') .. ' |')
    end
    local wr = {}
    for _, w in ipairs(s.win_rates) do if w.set == set.name then wr[w.reward] = w end end
    if next(wr) then
      local any
      for _, name in ipairs(set.rewards) do any = any or wr[name] end
      local cells = { ('win rate %s over %s'):format(any.a, any.b) }
      for _, name in ipairs(set.rewards) do
        local w = wr[name]
        cells[#cells + 1] = w and ('%s [%s, %s] (%d/%d/%d)'):format(fmt(w.rate), fmt(w.lo), fmt(w.hi), w.wins,
                                                                    w.ties, w.losses) or '-'
      end
      add('| ' .. table.concat(cells, ' | ') .. ' |')
      cells = { ('change %s - %s'):format(any.a, any.b) }
      for _, name in ipairs(set.rewards) do
        local c = wr[name] and wr[name].change
        cells[#cells + 1] = c and ('%s [%s, %s]'):format(signed(c.mean), signed(c.lo), signed(c.hi)) or '-'
      end
      add('| ' .. table.concat(cells, ' | ') .. ' |')
    end
  end
  if next(s.win_rates) then
    add('')
    add('Win rate: pairs with the same prompt and seed (for SP columns: the two groups of one prompt, ' ..
        'lower SP wins); a tie counts half; (wins/ties/losses). Change: the mean over prompts of the ' ..
        'paired differences (for SP columns: of SP), with the same bootstrap CI.')
  end
  if s.curve then
    add('')
    add('## Reward over training steps (held-out prompts)')
    add('')
    add(s.curve.note)
    add('')
    local head, rule = { 'step' }, { '---' }
    for _, c in ipairs(s.curve.columns) do
      head[#head + 1], rule[#rule + 1] = ('%s / %s held-out'):format(c.set, M.column_title(s, c.reward)), '---'
      head[#head + 1], rule[#rule + 1] = ('%s train'):format(c.set), '---'
    end
    add('| ' .. table.concat(head, ' | ') .. ' |')
    add('| ' .. table.concat(rule, ' | ') .. ' |')
    for _, p in ipairs(s.curve.points) do
      local cells = { tostring(p.step) }
      for j in ipairs(s.curve.columns) do
        cells[#cells + 1] = M.cell(p.heldout[j])
        cells[#cells + 1] = fmt(p.train[j])
      end
      add('| ' .. table.concat(cells, ' | ') .. ' |')
    end
  end
  return table.concat(L, '\n') .. '\n'
end

return M
