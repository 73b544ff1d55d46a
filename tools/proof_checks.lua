-- tools/proof_checks.lua — the quickstart proof's checks, in one place: the
-- thresholds spec/quickstart_proof_spec.lua asserts on the default run, and the
-- table row tools/proof_trajectories prints for any run (docs/results.md, "How often
-- the default passes its proof").
--
--   diffrl run tools/proof_checks.lua [label=]DIR...
--
-- Each DIR holds eval8/summary.json (`diffrl eval --prompts shapes:32 --seeds 8`
-- of the run against models/shapes-open) and eval32/summary.json (the 11 diversity
-- prompts with --seeds 32), as tools/proof_trajectories writes them; prints one
-- markdown row per DIR, a check mark where the proof's threshold holds. Exit code 0
-- when every DIR passes every check, 1 otherwise.
-- As a module (dofile, no arguments): { checks = function(s8, s32), row = ..., show = ... }
-- on decoded summary.json tables.
local M = {}

-- The proof's thresholds: about half of what the default run (seed 0) measured.
-- Each takes the set's win-rate record of summary.json (rate, lo, hi, change = {mean,
-- lo, hi}); SP columns: a change below 0 is fairer.
M.CHECKS = {
  { name = 'composition', eval = 8, set = 'composition',
    ok = function(w) return w.rate > 0.58 and w.change.mean > 0.025 end,
    rule = 'win rate > 0.58, change > +0.025' },
  { name = 'diversity, 8 seeds', eval = 8, set = 'diversity',
    ok = function(w) return w.rate > 0.5 and w.change.mean < -0.03 end,
    rule = 'win rate > 0.5, SP change < -0.03' },
  { name = 'diversity, 32 seeds', eval = 32, set = 'diversity',
    ok = function(w) return w.change.mean < -0.035 and w.change.hi < 0 end,
    rule = 'SP change < -0.035, its CI below 0' },
  { name = 'preference', eval = 8, set = 'preference',
    ok = function(w) return w.rate > 0.6 and w.change.mean > 0.01 end,
    rule = 'win rate > 0.6, change > +0.01' },
}

function M.show(w)
  return ('%s: win rate %.3f [%.3f, %.3f], change %+.4f [%+.4f, %+.4f]'):format(
    w.set, w.rate, w.lo, w.hi, w.change.mean, w.change.lo, w.change.hi)
end

local function win_rate(summary, set, what)
  for _, w in ipairs(summary.win_rates or {}) do
    if w.set == set then return w end
  end
  error(('%s: no win rate of the set %q (expected diffrl eval of two models)'):format(what, set), 0)
end

-- s8, s32: decoded summary.json of the two evaluations. A list of { name, eval, ok,
-- rule, win_rate, text } in M.CHECKS' order.
function M.checks(s8, s32)
  local out = {}
  for i, c in ipairs(M.CHECKS) do
    local summary = c.eval == 8 and s8 or s32
    local w = win_rate(summary, c.set, c.eval == 8 and 'eval8/summary.json' or 'eval32/summary.json')
    local ok = c.ok(w)
    out[i] = { name = c.name, eval = c.eval, ok = ok, rule = c.rule, win_rate = w,
               text = ('%s (%s): %s %s'):format(c.name, c.rule, M.show(w), ok and 'holds' or 'FAILS') }
  end
  return out
end

-- One markdown row: the label, each check's numbers (a check mark where it holds) and
-- how many hold.
function M.row(label, results)
  local cells, passed = { label }, 0
  for _, r in ipairs(results) do
    local w = r.win_rate
    local cell = r.eval == 32 -- its SP change alone
        and ('%+.3f [%+.3f, %+.3f]'):format(w.change.mean, w.change.lo, w.change.hi)
        or ('%.3f [%.3f, %.3f], %+.3f'):format(w.rate, w.lo, w.hi, w.change.mean)
    if r.ok then cell, passed = cell .. ' ✓', passed + 1 end
    cells[#cells + 1] = cell
  end
  cells[#cells + 1] = passed == #results and 'all' or ('%d of %d'):format(passed, #results)
  return '| ' .. table.concat(cells, ' | ') .. ' |', passed == #results
end

M.HEADER = '| run | composition: win rate, change | diversity, 8 seeds: win rate, SP change | '
  .. 'diversity, 32 seeds: SP change [CI] | preference: win rate, change | passes |\n'
  .. '| --- | --- | --- | --- | --- | --- |'

local args = { ... }
if #args == 0 then return M end

local cjson = require 'cjson'
local function summary(path)
  local f, err = io.open(path)
  if not f then error(('proof_checks: cannot read %s: %s'):format(path, err), 0) end
  local text = f:read('*a')
  f:close()
  local ok, v = pcall(cjson.decode, text)
  if not ok then error(('proof_checks: %s is not JSON: %s'):format(path, v), 0) end
  return v
end

if args[1]:match('^%-%-?h') then
  local root = debug.getinfo(1, 'S').source:match('^@(.*)/tools/[^/]*$') or '.'
  local f = io.open(root .. '/tools/proof_checks.lua')
  io.write((f:read('*a'):match('^(.-)\nlocal'):gsub('%-%- ?', '')), '\n')
  f:close()
  return
end
print(M.HEADER)
local all = true
for _, a in ipairs(args) do
  local label, dir = a:match('^([^=/]+)=(.+)$')
  if not label then label, dir = a, a end
  local line, ok = M.row(label, M.checks(summary(dir .. '/eval8/summary.json'),
                                         summary(dir .. '/eval32/summary.json')))
  print(line)
  all = all and ok
end
io.stdout:flush()
if not all then os.exit(1, true) end -- true: close the Lua state first (its finalizers run)
