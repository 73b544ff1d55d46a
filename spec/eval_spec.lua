-- `diffrl eval` (lua/diffrl/eval/, lua/diffrl/cli/eval.lua): the statistics on
-- hand-made numbers with known answers; the same noise for the same (prompt, seed)
-- whatever the model, the batch or the run, so A == B gives identical images and
-- a win rate of exactly 1/2 (all ties); a checkpoint put on its base pipeline as
-- resume does; eval of the shipped shapes model is deterministic; resume skips
-- what eval.jsonl holds; errors name the model, the file or the reward.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local stats = require 'diffrl.stats'
local sources = require 'diffrl.eval.sources'
local cli = require 'diffrl.cli.eval'
local rundir = dr.rundir
local cjson = require 'cjson.safe'

local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'
local BASE = SRC .. '/models/shapes-base'

local temp_dirs = {}
local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute('mkdir -p ' .. h.shell_quote(p)))
  temp_dirs[#temp_dirs + 1] = p
  return p
end
after_each(function()
  for _, d in ipairs(temp_dirs) do rundir._fs.remove_tree(d) end
  temp_dirs = {}
end)

local function assert_contains(text, part)
  assert.is_truthy(tostring(text):find(part, 1, true), ('expected to find %q in:\n%s'):format(part, tostring(text)))
end

-- diffrl eval in this process (no progress bar); returns the folder's rows by key.
local function eval(args)
  local o = assert(cli.parse(args))
  o.quiet = true
  local dir = cli.main(o)
  local rows = {}
  for line in io.lines(dir .. '/eval.jsonl') do
    local r = cjson.decode(line)
    rows[#rows + 1] = r
  end
  return rows, dir
end

local TINY = { '--steps', '2', '--cfg', '3', '--eta', '1', '--seeds', '2', '--quiet' }
local function args(list)
  local out = {}
  for _, a in ipairs(list) do out[#out + 1] = a end
  for _, a in ipairs(TINY) do out[#out + 1] = a end
  return out
end

describe('eval statistics #binding', function()
  it('bootstraps a CI of the mean that the numbers pin down', function()
    -- one value: no spread at all
    local c = stats.bootstrap_ci({ 0.25 }, { seed = 3 })
    assert.equal(0.25, c.mean); assert.equal(0.25, c.lo); assert.equal(0.25, c.hi)
    -- equal values: every resample has the same mean
    c = stats.bootstrap_ci({ 2, 2, 2, 2 })
    assert.same({ 2, 2, 2, 4 }, { c.mean, c.lo, c.hi, c.n })
    -- {0, 1}: resample means 0, 1/2, 1 with probability 1/4, 1/2, 1/4, so the 2.5% and
    -- 97.5% quantiles are 0 and 1
    c = stats.bootstrap_ci({ 0, 1 }, { resamples = 4000 })
    assert.same({ 0.5, 0, 1 }, { c.mean, c.lo, c.hi })
    -- 1..20: the bootstrap standard error is sd * sqrt((n - 1) / n) / sqrt(n) = 1.29,
    -- so the 95% interval spans about 2 * 1.96 * 1.29 = 5.06 around 10.5
    local xs = {}
    for i = 1, 20 do xs[i] = i end
    c = stats.bootstrap_ci(xs, { resamples = 4000, seed = 1 })
    assert.equal(10.5, c.mean)
    assert.is_true(math.abs((c.hi - c.lo) - 5.06) < 0.4, ('width %g'):format(c.hi - c.lo))
    assert.is_true(math.abs((c.hi + c.lo) / 2 - 10.5) < 0.3)
    -- NaN values are left out; the same seed gives the same interval, another seed another
    local a = stats.bootstrap_ci({ 1, 0 / 0, 3, 7 }, { seed = 5 })
    assert.equal(3, a.n)
    assert.same(a, stats.bootstrap_ci({ 1, 3, 7 }, { seed = 5 }))
    assert.are_not.same(a, stats.bootstrap_ci({ 1, 3, 7 }, { seed = 6 }))
  end)

  it('quantiles interpolate linearly (numpy\'s default)', function()
    assert.equal(2.5, stats.quantile({ 1, 2, 3, 4 }, 0.5))
    assert.equal(1.75, stats.quantile({ 1, 2, 3, 4 }, 0.25))
    assert.equal(4, stats.quantile({ 1, 2, 3, 4 }, 1))
  end)

  it('counts a tie as half a win and averages per prompt', function()
    -- wins 1, ties 2, losses 1 -> 1/2
    local w = stats.win_rate({ 1, 2, 3, 4 }, { 0, 2, 5, 4 })
    assert.same({ 0.5, 1, 2, 1, 4 }, { w.rate, w.wins, w.ties, w.losses, w.n })
    -- all ties: exactly 1/2 with no spread
    w = stats.win_rate({ 0.3, 0.1, 0.7 }, { 0.3, 0.1, 0.7 })
    assert.same({ 0.5, 0.5, 0.5 }, { w.rate, w.lo, w.hi })
    -- A always better: 1 [1, 1]
    w = stats.win_rate({ 2, 2 }, { 1, 1 })
    assert.same({ 1, 1, 1 }, { w.rate, w.lo, w.hi })
    -- prompt p1 (3 pairs: 1, 1, 0) and p2 (1 pair: 0): the per-prompt means 2/3 and 0
    -- average to 1/3 (each prompt counts once), not 2/4
    w = stats.win_rate({ 1, 1, 0, 0 }, { 0, 0, 1, 1 }, { 'p1', 'p1', 'p1', 'p2' })
    assert.is_true(math.abs(w.rate - 1 / 3) < 1e-12)
    assert.equal(2, w.units)
    -- a pair with a NaN side is left out
    w = stats.win_rate({ 1, 0 / 0 }, { 0, 1 })
    assert.same({ 1, 1 }, { w.rate, w.n })
  end)

  it('gives the paired mean change per prompt: what a win rate leaves out', function()
    -- p1: one failure turned into a success (+1), three small losses (-0.1 each);
    -- p2: a small loss. Win rate 1/4 per p1, 0 for p2 -> 1/8; the change is positive
    local a, b = { 1, 0.4, 0.4, 0.4, 0.4 }, { 0, 0.5, 0.5, 0.5, 0.5 }
    local units = { 'p1', 'p1', 'p1', 'p1', 'p2' }
    assert.is_true(math.abs(stats.win_rate(a, b, units).rate - 1 / 8) < 1e-12)
    local c = stats.paired_change(a, b, units)
    assert.is_true(math.abs(c.mean - (0.175 - 0.1) / 2) < 1e-12, c.mean) -- (0.7 / 4 - 0.1) / 2
    assert.same({ 5, 2 }, { c.n, c.units })
    assert.is_true(c.lo <= c.mean and c.mean <= c.hi)
    c = stats.paired_change({ 0.3, 0.1 }, { 0.3, 0.1 })
    assert.same({ 0, 0, 0 }, { c.mean, c.lo, c.hi })
    c = stats.paired_change({ 1, 0 / 0 }, { 0.5, 1 })
    assert.same({ 0.5, 1 }, { c.mean, c.n })
  end)
end)

describe('diffrl eval', function()
  it('gives A == B identical images and a win rate of exactly 1/2 from ties', function()
    local dir = temp_dir()
    local rows = eval(args { '--model', BASE, '--against', BASE, '--prompts', 'shapes:2', '-o', dir })
    -- 3 sets x 2 prompts x 2 seeds x 2 models (diversity has 11 fixed prompts)
    assert.equal((2 + 11 + 2) * 2 * 2, #rows)
    local by = {}
    for _, r in ipairs(rows) do by[r.model .. '|' .. r.set .. '|' .. r.prompt .. '|' .. r.seed] = r end
    local compared = 0
    for _, r in ipairs(rows) do
      if r.model == 'A:shapes-base' then
        local b = by['B:shapes-base|' .. r.set .. '|' .. r.prompt .. '|' .. r.seed]
        assert.same(r.scores, b.scores)
        assert.equal(h.read_file(dir .. '/' .. r.image), h.read_file(dir .. '/' .. b.image))
        compared = compared + 1
      end
    end
    assert.equal(30, compared)
    local s = cjson.decode(h.read_file(dir .. '/summary.json'))
    assert.equal(3, #s.win_rates)
    for _, w in ipairs(s.win_rates) do
      assert.same({ 0.5, 0.5, 0.5, 0, 0 }, { w.rate, w.lo, w.hi, w.wins, w.losses })
      assert.same({ 0, 0, 0 }, { w.change.mean, w.change.lo, w.change.hi })
    end
    -- different seeds do give different images (the pairing is not trivially true)
    local r0 = by['A:shapes-base|composition|' .. rows[1].prompt .. '|0']
    local r1 = by['A:shapes-base|composition|' .. rows[1].prompt .. '|1']
    assert.are_not.equal(h.read_file(dir .. '/' .. r0.image), h.read_file(dir .. '/' .. r1.image))
    local md = h.read_file(dir .. '/summary.md')
    assert_contains(md, '## composition (2 prompts)')
    assert_contains(md, '| win rate A:shapes-base over B:shapes-base | 0.500 [0.500, 0.500] (0/4/0) |')
    assert_contains(md, 'shapes_diversity SP ↓')
    local page = h.read_file(dir .. '/eval.html')
    assert_contains(page, 'src="data:image/png;base64,')
    assert.is_nil(page:find('src="http', 1, true))
    assert_contains(page, '<table class="sortable" id="images-1">')
  end)

  it('is deterministic: two evals of the shipped model write the same scores', function()
    local a = eval(args { '--model', BASE, '--prompts', 'shapes:2', '-o', temp_dir() })
    local b = eval(args { '--model', BASE, '--prompts', 'shapes:2', '-o', temp_dir() })
    assert.equal(#a, #b)
    for i = 1, #a do
      assert.same({ a[i].prompt, a[i].seed, a[i].scores }, { b[i].prompt, b[i].seed, b[i].scores })
    end
  end)

  it('gives each (prompt, seed) its own noise: the image does not depend on the batch', function()
    local pipe = dr.pipeline.load(BASE)
    local gens = {}
    for i = 1, 3 do gens[i] = dr.Generator(10 + i) end
    local three = pipe:sample { prompt = 'a red circle', batch = 3, steps = 2, cfg = 3, eta = 1,
                                generator = dr.row_generators(gens) }
    local alone = pipe:sample { prompt = 'a red circle', batch = 1, steps = 2, cfg = 3, eta = 1, seed = 12 }
    -- up to the float rounding of batched matrix products
    assert.is_true((three:narrow(1, 2, 1) - alone):abs():max():item() < 1e-4)
    assert.is_true((three:narrow(1, 1, 1) - alone):abs():max():item() > 1e-2)
    assert.has_error(function() dr.randn({ 2, 4 }, { generator = dr.row_generators(gens) }) end,
                     'randn: 3 row generators for a draw of 2 rows')
  end)

  it('resumes: rows already in eval.jsonl are kept, not sampled again', function()
    local dir = temp_dir()
    local first = eval(args { '--model', BASE, '--prompts', 'shapes:1', '-o', dir })
    -- drop the last prompt's rows and a score we can recognise in the first row
    local lines = {}
    for line in io.lines(dir .. '/eval.jsonl') do lines[#lines + 1] = line end
    local marked = lines[1]:gsub('"shapes_composition":[^,}]+', '"shapes_composition":123')
    lines[1] = marked
    for _ = 1, 2 do table.remove(lines) end
    h.write_file(dir .. '/eval.jsonl', table.concat(lines, '\n') .. '\n')
    local again = eval(args { '--model', BASE, '--prompts', 'shapes:1', '-o', dir })
    assert.equal(#first, #again)
    assert.equal(123, again[1].scores.shapes_composition) -- kept, not recomputed
    -- recomputed in the batch it had first: the same numbers to the bit
    assert.same(first[#first].scores, again[#again].scores)
    -- other settings into the same folder: an error, not a mixed table
    local o = assert(cli.parse { '--model', BASE, '--prompts', 'shapes:1', '-o', dir, '--steps', '3', '--quiet' })
    local err = h.error_of(cli.main, o)
    assert_contains(err, 'was sampled with other settings (steps)')
  end)

  -- A run folder as diffrl run leaves it (full UNet fine-tune of the shapes model):
  -- step 2 holds the base weights unchanged, step 4 a changed conv_out.bias; the
  -- training reward of task 'seen' is 0.1 * step in metrics.jsonl.
  local function make_run()
    local run = temp_dir() .. '/run'
    local cfg = dr.config.resolve(dr.rl.schema, { model = { path = BASE }, sample = { resolution = 32 } })
    local r = rundir.create(run, { config_text = dr.config.serialize(cfg) })
    for step = 1, 5 do r:log { step = step, ['reward_mean/seen'] = 0.1 * step } end
    local pipe = dr.pipeline.load(BASE)
    local tensors = {}
    for _, p in ipairs(pipe.unet:named_parameters()) do tensors['param.' .. p[1]] = p[2]:detach():clone() end
    r:save_checkpoint(2, { tensors = tensors, lua = { step = 2 } })
    local name = 'conv_out.bias'
    assert.is_truthy(tensors['param.' .. name])
    tensors['param.' .. name] = tensors['param.' .. name] + 0.5
    r:save_checkpoint(4, { tensors = tensors, lua = { step = 4 } })
    r:close()
    return run
  end

  it('puts a checkpoint of diffrl run on its base model as resume does', function()
    local run = make_run()
    local f = h.temp_file('{"prompt": "a red circle", "set": "seen"}\n{"prompt": "a blue square", "set": "unseen"}\n',
                          '.jsonl')
    local rows, dir = eval(args { '--model', run .. '/checkpoints/step_000002', '--against', BASE, '--prompts', f,
                                  '--rewards', 'shapes_preference', '-o', temp_dir() })
    local s = cjson.decode(h.read_file(dir .. '/summary.json'))
    assert.equal('run@2', rows[1].model)
    assert.same({ 'seen', 'unseen' }, { s.sets[1].name, s.sets[2].name })
    for _, w in ipairs(s.win_rates) do assert.same({ 0.5, 0, 0 }, { w.rate, w.wins, w.losses }) end
    -- a run folder means its newest checkpoint: the changed one
    rows, dir = eval(args { '--model', run, '--against', BASE, '--prompts', f, '--rewards', 'shapes_preference',
                            '-o', temp_dir() })
    assert.equal('run@4', rows[1].model)
    s = cjson.decode(h.read_file(dir .. '/summary.json'))
    local changed = 0
    for _, w in ipairs(s.win_rates) do changed = changed + w.wins + w.losses end
    assert.is_true(changed > 0)
    os.remove(f)
  end)

  it('puts a LoRA checkpoint (lora.rank > 0) on its base model', function()
    local run = temp_dir() .. '/lora'
    local cfg = dr.config.resolve(dr.rl.schema, { model = { path = BASE }, sample = { resolution = 32 },
                                                  lora = { rank = 2 } })
    local r = rundir.create(run, { config_text = dr.config.serialize(cfg) })
    local pipe = dr.pipeline.load(BASE)
    pipe.unet:add_lora { rank = 2, alpha = 2, seed = 7 }
    local tensors = {}
    for _, p in ipairs(pipe.unet:named_parameters { adapters_only = true }) do
      tensors['param.' .. p[1]] = p[2]:detach():clone()
    end
    r:save_checkpoint(1, { tensors = tensors, lua = { step = 1 } })  -- lora_B = 0: the base model
    for k, t in pairs(tensors) do
      if k:match('lora_B%.weight$') then tensors[k] = dr.full(t.shape, 0.05) end
    end
    r:save_checkpoint(2, { tensors = tensors, lua = { step = 2 } })
    r:close()
    local f = h.temp_file('a red circle\n', '.txt')
    local function changes(step)
      local _, dir = eval(args { '--model', ('%s/checkpoints/step_%06d'):format(run, step), '--against', BASE,
                                 '--prompts', f, '--rewards', 'shapes_preference', '-o', temp_dir() })
      local w = cjson.decode(h.read_file(dir .. '/summary.json')).win_rates[1]
      return w.wins + w.losses
    end
    assert.equal(0, changes(1))
    assert.is_true(changes(2) > 0)
    os.remove(f)
  end)

  it('follows a run over its checkpoints (--run --every) beside its training reward', function()
    local run = make_run()
    local f = h.temp_file('{"prompt": "a red circle", "set": "seen"}\n', '.jsonl')
    local rows, dir = eval(args { '--run', run, '--every', '2', '--prompts', f, '--rewards', 'shapes_preference',
                                  '-o', temp_dir() })
    local s = cjson.decode(h.read_file(dir .. '/summary.json'))
    assert.same({ 'step 0', 'step 2', 'step 4' }, s.models)
    assert.equal(3 * 2, #rows)
    local c = s.curve
    assert.same({ 0, 2, 4 }, { c.points[1].step, c.points[2].step, c.points[3].step })
    -- the sampling settings are the run's (32x32), the base and step 2 the same weights
    assert.equal(32, s.settings.height)
    assert.equal(c.points[1].heldout[1].mean, c.points[2].heldout[1].mean)
    assert.are_not.equal(c.points[1].heldout[1].mean, c.points[3].heldout[1].mean)
    -- train: the mean of reward_mean/seen over iterations step-3 .. step+1
    assert.is_true(math.abs(c.points[1].train[1] - 0.1) < 1e-12)   -- iteration 1
    assert.is_true(math.abs(c.points[2].train[1] - 0.2) < 1e-12)   -- iterations 1..3
    assert.is_true(math.abs(c.points[3].train[1] - 0.3) < 1e-12)   -- iterations 1..5
    assert_contains(h.read_file(dir .. '/summary.md'), '## Reward over training steps (held-out prompts)')
    assert_contains(h.read_file(dir .. '/eval.html'), '<svg class="chart"')
    os.remove(f)
  end)

  it('reads prompt sets from .jsonl, .csv and .txt files', function()
    local j = h.temp_file('{"prompt": " a red circle ", "set": "seen"}\n\n{"prompt": "a star"}\n' ..
                          '{"prompt": "a red circle", "set": "seen"}\n', '.jsonl')
    local e = sources.prompt_file(j)
    local stem = j:match('([^/]*)%.jsonl$')
    assert.same({ { 'a red circle', 'seen' }, { 'a star', stem } }, { { e[1].prompt, e[1].set }, { e[2].prompt, e[2].set } })
    assert.equal(2, #e)
    local c = h.temp_file('id,text,group\n1,"a circle, red",A\n2,a square,\n', '.csv')
    e = sources.prompt_file(c, { column = 'text', set_column = 'group' })
    assert.same({ 'a circle, red', 'A', 'a square' }, { e[1].prompt, e[1].set, e[2].prompt })
    local t = h.temp_file('one\ntwo\n', '.txt')
    e = sources.prompt_file(t, { set = 'parti' })
    assert.same({ 'one', 'parti', 'two' }, { e[1].prompt, e[1].set, e[2].prompt })
    for _, p in ipairs { j, c, t } do os.remove(p) end
  end)
end)

describe('diffrl eval errors #cli', function()
  it('names the missing model, the bad prompts file and the unknown reward', function()
    local dir = temp_dir()
    local r = h.diffrl { 'eval', '--model', dir .. '/nope', '--prompts', 'shapes', '-o', dir }
    assert.equal(1, r.code)
    assert_contains(r.stderr, 'diffrl eval: eval: model ' .. dir .. '/nope does not exist')
    local bad = h.temp_file('{"prompt": "a circle"}\n{"text": "x"}\n', '.jsonl')
    r = h.diffrl { 'eval', '--model', BASE, '--prompts', bad, '--rewards', 'shapes_preference', '-o', dir }
    assert.equal(1, r.code)
    assert_contains(r.stderr, bad .. ":2: no field 'prompt' (fields: text)")
    r = h.diffrl { 'eval', '--model', BASE, '--prompts', dir .. '/missing.txt', '--rewards', 'x', '-o', dir }
    assert.equal(1, r.code)
    assert_contains(r.stderr, 'cannot read ' .. dir .. '/missing.txt')
    r = h.diffrl { 'eval', '--model', BASE, '--prompts', 'shapes', '--rewards', 'shapes_preferance', '-o', dir }
    assert.equal(1, r.code)
    assert_contains(r.stderr, "unknown reward 'shapes_preferance' (registered: ")
    assert_contains(r.stderr, 'shapes_preference')
    os.remove(bad)
  end)

  it('rejects bad usage with exit code 2 and prints --help', function()
    local r = h.diffrl { 'eval', '--model', BASE }
    assert.equal(2, r.code)
    assert_contains(r.stderr, 'missing -o DIR')
    r = h.diffrl { 'eval', '--model', BASE, '--seeds', '0', '-o', 'x' }
    assert.equal(2, r.code)
    assert_contains(r.stderr, '--seeds must be positive')
    r = h.diffrl { 'eval', '--help' }
    assert.equal(0, r.code)
    assert_contains(r.stdout, 'Usage: diffrl eval --model A [--against B]')
  end)
end)
