-- tools/proof_checks.lua (the quickstart proof's thresholds) and the argument checks of
-- tools/proof_trajectories, on made-up summaries: no run, no evaluation.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local cjson = require 'cjson'

local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'
local proof = dofile(SRC .. '/tools/proof_checks.lua')

local function win(set, rate, change, hi)
  return { set = set, rate = rate, lo = rate - 0.05, hi = rate + 0.05,
           change = { mean = change, lo = change - 0.04, hi = hi or change + 0.04 } }
end

-- the default run's numbers (docs/results.md), each field overridable
local function summaries(o)
  o = o or {}
  local s8 = { win_rates = { win('composition', o.c_rate or 0.66, o.c_change or 0.048),
                             win('diversity', o.d_rate or 0.73, o.d_change or -0.062),
                             win('preference', o.p_rate or 0.71, o.p_change or 0.024) } }
  local s32 = { win_rates = { win('diversity', 0.77, o.d32_change or -0.075, o.d32_hi or -0.029) } }
  return s8, s32
end

local function failing(s8, s32)
  local names = {}
  for _, r in ipairs(proof.checks(s8, s32)) do
    if not r.ok then names[#names + 1] = r.name end
  end
  return table.concat(names, ', ')
end

describe('tools/proof_checks.lua', function()
  it('passes the default run\'s numbers on all four checks', function()
    local results = proof.checks(summaries())
    assert.are.equal(4, #results)
    assert.are.equal('', failing(summaries()))
    local row, ok = proof.row('seed 0', results)
    assert.is_true(ok)
    assert.are.equal('| seed 0 | 0.660 [0.610, 0.710], +0.048 ✓ | 0.730 [0.680, 0.780], -0.062 ✓ | '
                     .. '-0.075 [-0.115, -0.029] ✓ | 0.710 [0.660, 0.760], +0.024 ✓ | all |', row)
  end)

  it('fails each check at its threshold, and only that one', function()
    assert.are.equal('composition', failing(summaries { c_rate = 0.58 }))
    assert.are.equal('composition', failing(summaries { c_change = 0.025 }))
    assert.are.equal('diversity, 8 seeds', failing(summaries { d_rate = 0.5 }))
    assert.are.equal('diversity, 8 seeds', failing(summaries { d_change = -0.03 }))
    assert.are.equal('diversity, 32 seeds', failing(summaries { d32_change = -0.035 }))
    assert.are.equal('diversity, 32 seeds', failing(summaries { d32_hi = 0 }))
    assert.are.equal('preference', failing(summaries { p_rate = 0.6 }))
    assert.are.equal('preference', failing(summaries { p_change = 0.01 }))
    local s8, s32 = summaries { p_rate = 0.55, c_change = 0.01 }
    local results = proof.checks(s8, s32)
    local row, ok = proof.row('seed 2', results)
    assert.is_false(ok)
    assert.truthy(row:find('| 2 of 4 |', 1, true), row)
    assert.truthy(results[4].text:find('preference (win rate > 0.6, change > +0.01): preference: win rate 0.550',
                                       1, true), results[4].text)
    assert.truthy(results[4].text:find('FAILS$'), results[4].text)
  end)

  it('names the summary a set is missing from', function()
    local s8, s32 = summaries()
    s32.win_rates = {}
    local ok, err = pcall(proof.checks, s8, s32)
    assert.is_false(ok)
    assert.truthy(tostring(err):find('eval32/summary.json: no win rate of the set "diversity"', 1, true), err)
  end)

  it('prints a table from run folders and exits 1 when a run fails a check', function()
    local root = os.tmpname()
    os.remove(root)
    local function folder(name, s8, s32)
      os.execute('mkdir -p ' .. h.shell_quote(root .. '/' .. name .. '/eval8') .. ' '
                 .. h.shell_quote(root .. '/' .. name .. '/eval32'))
      h.write_file(root .. '/' .. name .. '/eval8/summary.json', cjson.encode(s8))
      h.write_file(root .. '/' .. name .. '/eval32/summary.json', cjson.encode(s32))
      return root .. '/' .. name
    end
    local good = folder('good', summaries())
    local bad = folder('bad', summaries { d32_hi = 0.01 })
    local r = h.diffrl { 'run', SRC .. '/tools/proof_checks.lua', 'seed 0=' .. good }
    assert.are.equal(0, r.code, r.stderr)
    local lines = {}
    for line in r.stdout:gmatch('[^\n]+') do lines[#lines + 1] = line end
    assert.are.equal(3, #lines, r.stdout)
    assert.truthy(lines[1]:find('^| run | composition'), lines[1])
    assert.truthy(lines[3]:find('^| seed 0 | .* | all |$'), lines[3])
    r = h.diffrl { 'run', SRC .. '/tools/proof_checks.lua', good, bad }
    assert.are.equal(1, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find('\n| ' .. bad .. ' | ', 1, true), r.stdout)
    assert.truthy(r.stdout:find(' | 3 of 4 |\n', 1, true), r.stdout)
    r = h.diffrl { 'run', SRC .. '/tools/proof_checks.lua', root .. '/none' }
    assert.are_not.equal(0, r.code)
    assert.truthy(r.stderr:find('cannot read ' .. root .. '/none/eval8/summary.json', 1, true), r.stderr)
    os.execute('rm -rf ' .. h.shell_quote(root))
  end)
end)

describe('tools/proof_trajectories', function()
  local tool = SRC .. '/tools/proof_trajectories'

  it('prints its usage with -h and refuses what is neither a seed nor a setting', function()
    local r = h.run_program(tool, { '-h' })
    assert.are.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find('tools/proof_trajectories [-j JOBS] [-o DIR] [-b DIFFRL] SEED... [SETTING...]',
                                1, true), r.stdout)
    r = h.run_program(tool, {})
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find('SEED...', 1, true), r.stderr)
    r = h.run_program(tool, { '-b', h.bin(), '0', 'shapes' })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("'shapes' is neither a seed nor a setting (key=value)", 1, true), r.stderr)
    r = h.run_program(tool, { '-j', 'two', '-b', h.bin(), '0' })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find('-j two: expected a count', 1, true), r.stderr)
    r = h.run_program(tool, { '-b', '/nonexistent/diffrl', '0' })
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find('no diffrl binary at /nonexistent/diffrl', 1, true), r.stderr)
  end)
end)
