-- `diffrl report RUN_DIR` (lua/diffrl/report.lua): a run folder as one HTML file
-- that loads nothing from outside: a reward chart (SVG polyline) per task, NaN
-- points breaking the curve, the grids as data: URIs with their escaped prompts,
-- held-out before/after first when the run has it, the config; usage errors exit 2,
-- a folder that is not a run 1, naming what is missing.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local rundir = dr.rundir

local function assert_contains(text, part)
  assert.is_truthy(tostring(text):find(part, 1, true), ('expected to find %q in:\n%s'):format(part, tostring(text)))
end

local temp_dirs = {}
local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute('mkdir -p ' .. h.shell_quote(p .. '/samples')))
  temp_dirs[#temp_dirs + 1] = p
  return p
end

after_each(function()
  for _, d in ipairs(temp_dirs) do rundir._fs.remove_tree(d) end
  temp_dirs = {}
end)

local PROMPT = 'a <red> circle & "two" stars'
local CONFIG = "return {\n  train = { iterations = 4 },\n  reward = { note = 'x < y' },\n}\n"

-- A run folder as the trainer leaves it: 4 logged steps, diversity NaN at step 3,
-- grad_norm logged once, grids at steps 2 and 4.
local function make_run()
  local dir = temp_dir()
  h.write_file(dir .. '/run.json', rundir.json_encode({
    recipe = 'quickstart', start_time = '2026-01-02T03:04:05Z', git_commit = 'abc123def',
    build = { version = '0.1.0', build_type = 'Release', compiler = 'gcc' },
  }, '  ') .. '\n')
  h.write_file(dir .. '/config.lua', CONFIG)
  local lines = {}
  for step = 1, 4 do
    local m = {
      step = step, loss = 0.5 / step, clipfrac = 0.1,
      reward_mean = 0.1 * step,
      ['reward_mean/composition'] = 0.2 * step, ['reward_std/composition'] = 0.05,
      ['reward_mean/diversity'] = step == 3 and 0 / 0 or -0.1 * step,
    }
    if step == 2 then m.grad_norm = 1.5 end
    lines[step] = rundir.metrics_line(m) .. '\n'
  end
  assert_contains(lines[3], '"nonfinite":["reward_mean/diversity"]')
  h.write_file(dir .. '/metrics.jsonl', table.concat(lines))
  for _, step in ipairs { 2, 4 } do
    local stem = ('%s/samples/step_%06d'):format(dir, step)
    dr.save_image(stem .. '.png', dr.rand(2, 3, 8, 8))
    h.write_file(stem .. '.txt', PROMPT .. '\nstep ' .. step .. '\n')
  end
  return dir
end

-- The <svg> of one metric, or nil.
local function chart(html, metric)
  return html:match('<svg class="chart" data%-metric="' .. h.escape_pattern(metric) .. '".-</svg>')
end

-- The number of x,y points of each polyline in an SVG, in order.
local function polyline_lengths(svg)
  local out = {}
  for pts in svg:gmatch('<polyline[^>]- points="([^"]*)"') do
    local n = 0
    for _ in pts:gmatch('[^ ]+') do n = n + 1 end
    out[#out + 1] = n
  end
  return out
end

describe('report.base64', function()
  it('encodes as RFC 4648 does', function()
    local b64 = dr.report.base64
    assert.are.equal('', b64(''))
    assert.are.equal('Zg==', b64('f'))
    assert.are.equal('Zm8=', b64('fo'))
    assert.are.equal('Zm9v', b64('foo'))
    assert.are.equal('Zm9vYmFy', b64('foobar'))
    assert.are.equal('AP/+', b64('\0\255\254'))
  end)
end)

describe('#cli diffrl report', function()
  it('writes RUN_DIR/report.html, a page that loads nothing from outside', function()
    local dir = make_run()
    local r = h.diffrl { 'report', dir }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(dir .. '/report.html\n', r.stdout)
    local html = assert(h.read_file(dir .. '/report.html'), 'no report.html')
    assert.is_nil(html:find('http://', 1, true))
    assert.is_nil(html:find('https://', 1, true))
    assert.is_nil(html:find('<link', 1, true))
    assert.is_nil(html:find('<script', 1, true))
    for src in html:gmatch('src="([^"]*)"') do
      assert.is_truthy(src:find('^data:image/png;base64,'), 'an external src: ' .. src:sub(1, 60))
    end
    -- the grids are the run's PNG bytes
    local png = h.read_file(dir .. '/samples/step_000002.png')
    assert_contains(html, 'src="data:image/png;base64,' .. dr.report.base64(png) .. '"')
  end)

  it('draws a curve per task, broken where a value is NaN, with the std band and the table', function()
    local dir = make_run()
    assert.are.equal(0, h.diffrl({ 'report', dir }).code)
    local html = h.read_file(dir .. '/report.html')
    local comp = assert(chart(html, 'reward_mean/composition'), 'no composition chart')
    assert.are.same({ 4 }, polyline_lengths(comp))
    assert_contains(comp, '<polygon class="band"')
    local div = assert(chart(html, 'reward_mean/diversity'), 'no diversity chart')
    assert.are.same({ 2 }, polyline_lengths(div)) -- steps 1-2, then step 4 alone as a dot
    assert_contains(div, 'diversity step 4: -0.4')
    local all = assert(chart(html, 'reward_mean'), 'no overall reward chart')
    assert.are.same({ 4 }, polyline_lengths(all))
    assert.are.same({ 4 }, polyline_lengths(assert(chart(html, 'loss'))))
    local grad = assert(chart(html, 'grad_norm'), 'no grad_norm chart') -- a single point
    assert.are.same({}, polyline_lengths(grad))
    assert_contains(grad, '<circle')
    assert.is_nil(chart(html, 'approx_kl')) -- not logged, not drawn
    -- baseline vs final: composition 0.2 -> 0.8
    assert_contains(html, '<td>composition</td><td class="n">0.2 (1)</td><td class="n">0.8 (4)</td>')
    assert_contains(html, '+0.6 (+300.0%)')
  end)

  it('shows the facts, the escaped prompts and config, first and last grid as before/after', function()
    local dir = make_run()
    assert.are.equal(0, h.diffrl({ 'report', dir }).code)
    local html = h.read_file(dir .. '/report.html')
    local name = dir:match('[^/]+$')
    assert_contains(html, '<h1>' .. name .. '</h1>')
    for _, fact in ipairs { 'quickstart', '2026-01-02T03:04:05Z', 'abc123def', '4 of 4 iterations', 'gcc' } do
      assert_contains(html, fact)
    end
    assert_contains(html, '<li>a &lt;red&gt; circle &amp; &quot;two&quot; stars</li>')
    assert.is_nil(html:find(PROMPT, 1, true))
    assert_contains(html, "reward = { note = &#39;x &lt; y&#39; },")
    assert_contains(html, 'before: step 2')
    assert_contains(html, 'after: step 4')
    assert_contains(html, '<details><summary>All 2 grids</summary>')
    assert.is_nil(html:find('id="heldout"', 1, true))
  end)

  it('shows heldout/ before/after first when the run has it, and writes where -o says', function()
    local dir = make_run()
    assert(os.execute('mkdir ' .. h.shell_quote(dir .. '/heldout')))
    for _, stem in ipairs { 'before', 'after' } do
      dr.save_image(dir .. '/heldout/' .. stem .. '.png', dr.rand(3, 3, 8, 8))
      h.write_file(dir .. '/heldout/' .. stem .. '.txt', 'held <out> prompt\n')
    end
    local out = dir .. '/page.html'
    local r = h.diffrl { 'report', '-o', out, dir }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(out .. '\n', r.stdout)
    assert.is_nil(h.read_file(dir .. '/report.html'))
    local html = assert(h.read_file(out))
    local held, rewards = html:find('id="heldout"', 1, true), html:find('id="rewards"', 1, true)
    assert.is_truthy(held and rewards and held < rewards, 'held-out grids come before the rewards')
    assert.is_truthy(html:find('<figcaption>before</figcaption>', held, true) <
                     html:find('<figcaption>after</figcaption>', held, true))
    assert_contains(html, 'held &lt;out&gt; prompt')
  end)

  it('shows the held-out rewards of eval.jsonl: a chart per task from 3 evaluations, and the table', function()
    local dir = make_run()
    h.write_file(dir .. '/eval.jsonl', '{"heldout_reward/composition":0.1,"heldout_std/composition":0.05,"step":0}\n')
    assert.are.equal(0, h.diffrl({ 'report', dir }).code)
    local html = h.read_file(dir .. '/report.html')
    assert_contains(html, '<section id="heldout-rewards">')
    assert.is_nil(chart(html, 'heldout_reward/composition')) -- one evaluation: a table, no chart
    h.write_file(dir .. '/eval.jsonl', '{"heldout_reward/composition":0.1,"heldout_std/composition":0.05,"step":0}\n' ..
      '{"heldout_reward/composition":0.3,"heldout_std/composition":0.05,"step":2}\n' ..
      '{"heldout_reward/composition":0.4,"heldout_std/composition":0.05,"step":4}\n')
    assert.are.equal(0, h.diffrl({ 'report', dir }).code)
    html = h.read_file(dir .. '/report.html')
    local c = assert(chart(html, 'heldout_reward/composition'), 'no held-out chart')
    assert.are.same({ 3 }, polyline_lengths(c))
    assert_contains(html, '<td>composition</td><td class="n">0.1 (0)</td><td class="n">0.4 (4)</td>')
  end)

  it('draws a run of one step', function()
    local dir = make_run()
    local first = h.read_file(dir .. '/metrics.jsonl'):match('^[^\n]*\n')
    h.write_file(dir .. '/metrics.jsonl', first)
    assert.are.equal(0, h.diffrl({ 'report', dir }).code)
    local comp = assert(chart(h.read_file(dir .. '/report.html'), 'reward_mean/composition'))
    assert.are.same({}, polyline_lengths(comp))
    assert_contains(comp, 'composition step 1: 0.2')
  end)

  it('reports usage errors with exit code 2 and folders that are not runs with 1', function()
    local r = h.diffrl { 'report' }
    assert.are.equal(2, r.code)
    assert_contains(r.stderr, 'missing RUN_DIR')
    r = h.diffrl { 'report', 'a', 'b' }
    assert.are.equal(2, r.code)
    assert_contains(r.stderr, "unexpected argument 'b'")
    r = h.diffrl { 'report', '--bogus', 'a' }
    assert.are.equal(2, r.code)
    assert_contains(r.stderr, "unknown option '--bogus'")
    r = h.diffrl { 'report', 'a', '-o' }
    assert.are.equal(2, r.code)
    assert_contains(r.stderr, 'option -o needs a value')

    local dir = make_run()
    os.remove(dir .. '/metrics.jsonl')
    r = h.diffrl { 'report', dir }
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, dir .. '/metrics.jsonl is missing')
    os.remove(dir .. '/run.json')
    r = h.diffrl { 'report', dir }
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, dir .. '/run.json is missing')
    r = h.diffrl { 'report', dir .. '/nope' }
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, 'there is no run folder ' .. dir .. '/nope')
  end)

  it('documents itself in --help', function()
    local r = h.diffrl { 'report', '--help' }
    assert.are.equal(0, r.code)
    assert_contains(r.stdout, 'Usage: diffrl report RUN_DIR [-o FILE]')
    assert_contains(h.diffrl({ '--help' }).stdout, 'report')
  end)
end)
