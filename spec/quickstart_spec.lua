-- The embedded default, recipes/quickstart.lua: joint RL on the shapes world's
-- three rewards with models/shapes-open: a shortened run writes what `diffrl
-- report` shows and the end table; the RL loop moves models/shapes-base too
-- (redness); bad settings are named. That the default run raises every reward:
-- quickstart_proof_spec.lua.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')

local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'
local RECIPE = SRC .. '/recipes/quickstart.lua'
local TASKS = { 'composition', 'diversity', 'preference' }

local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function read_jsonl(path)
  local cjson = require 'cjson'
  local rows = {}
  for line in io.lines(path) do rows[#rows + 1] = cjson.decode(line) end
  return rows
end

local function mean(rows, key, a, b)
  local s, n = 0, 0
  for i = a, b do
    local v = rows[i][key]
    if type(v) == 'number' then s, n = s + v, n + 1 end
  end
  return s / n
end

describe('recipes/quickstart.lua #cli', function()
  -- What is checked here: the joint run works end to end and writes everything
  -- the report shows; and the RL loop moves shapes-base too (a redness reward).
  it('#slow runs the three tasks jointly with held-out evaluation, the table and the report', function()
    local dir = temp_dir()
    local r = h.diffrl { 'run', RECIPE, 'run.dir=' .. dir, 'train.iterations=3', 'shapes.heldout=2',
                         'checkpoint.every=3', 'log.grid_every=3' }
    assert.are.equal(0, r.code, r.stderr)
    local rows = read_jsonl(dir .. '/metrics.jsonl')
    local evals = read_jsonl(dir .. '/eval.jsonl')
    assert.are.equal(3, #rows)
    assert.are.same({ 0, 3 }, { evals[1].step, evals[2].step })
    for _, task in ipairs(TASKS) do
      assert.is_number(rows[3]['reward_mean/' .. task], task)
      assert.is_number(evals[2]['heldout_reward/' .. task], task)
      -- the table at the end: one row per task
      assert.is_truthy(r.stdout:find('\n' .. task .. ' ', 1, true), r.stdout)
    end
    assert.is_number(rows[3].pretrain_loss)
    -- where the run writes and how to go on after Ctrl-C, first; the folder again last
    local first = r.stdout:match('^[^\n]*')
    assert.are.equal(('quickstart: run folder %s; after Ctrl-C `diffrl run %s --resume %s` goes on from its '
                      .. 'last checkpoint (one every 3 iterations)'):format(dir, RECIPE, dir), first)
    local last = ('\nrun folder: %s (`diffrl report %s` writes its report.html)\n'):format(dir, dir)
    assert.are.equal(last, r.stdout:sub(-#last))
    for _, f in ipairs { 'heldout/before.png', 'heldout/after.png', 'samples/step_000003.png',
                         'checkpoints/step_000003/state.lua' } do
      assert.is_truthy(io.open(dir .. '/' .. f), f)
    end
    r = h.diffrl { 'report', dir }
    assert.are.equal(0, r.code, r.stderr)
    local html = h.read_file(dir .. '/report.html')
    assert.is_truthy(html:find('id="heldout-rewards"', 1, true))
    os.execute('rm -rf ' .. dir)
  end)

  it('#slow moves shapes-base: a redness reward rises in 8 iterations', function()
    local dir, recipe = temp_dir(), os.tmpname() .. '.lua'
    h.write_file(recipe, ([[
local dr = require 'diffrl'
local function redness(images)
  return (images:narrow(2, 1, 1):mean({ 2, 3, 4 }) - images:narrow(2, 2, 2):mean({ 2, 3, 4 })):tolist()
end
return dr.rl.main {
  name = 'redness',
  defaults = { model = { path = %q }, checkpoint = { every = 100 },
               sample = { batch_size = 16, steps = 10, resolution = 32, guidance = 4 },
               train = { iterations = 8, lr = 1e-4, clip_range = 0.2, timestep_count = 5,
                         gradient_checkpointing = false, weight_decay = 0 } },
  tasks = function()
    return { { name = 'red', reward = redness,
               prompts = dr.prompts.list { 'a blue square', 'a green circle', shuffle = false } } }
  end,
}
]]):format(SRC .. '/models/shapes-base'))
    local r = h.diffrl { 'run', recipe, 'run.dir=' .. dir }
    os.remove(recipe)
    assert.are.equal(0, r.code, r.stderr)
    local rows = read_jsonl(dir .. '/metrics.jsonl')
    os.execute('rm -rf ' .. dir)
    local first, last = mean(rows, 'reward_mean/red', 1, 2), mean(rows, 'reward_mean/red', 7, 8)
    -- seeded; measured -0.004 -> 0.13 on this machine
    assert.is_true(last > first + 0.05, ('redness %.4f -> %.4f'):format(first, last))
  end)

  it('names an unknown setting and suggests the nearest', function()
    local r = h.diffrl { 'run', RECIPE, 'train.iterashuns=5' }
    assert.are.equal(1, r.code)
    assert.is_truthy(r.stderr:find('train.iterashuns', 1, true), r.stderr)
    assert.is_truthy(r.stderr:find('train.iterations', 1, true), r.stderr)
  end)

  it('lists its settings with --help, the model folder among them, with the recipe\'s values', function()
    local r = h.diffrl { 'run', RECIPE, '--help' }
    assert.are.equal(0, r.code, r.stderr)
    assert.is_truthy(r.stdout:find('sample.images_per_prompt', 1, true), r.stdout)
    assert.is_truthy(r.stdout:find('eval.every', 1, true), r.stdout)
    -- the values a run gets: the recipe's (configs/quickstart.lua), then the schema's
    assert.is_truthy(r.stdout:find('train.iterations +integer +%= 70  %(schema: 1000%)'), r.stdout)
    assert.is_truthy(r.stdout:find("train.trainable +list of string += { \"attn\" }  %(schema: {}%)"), r.stdout)
  end)
end)
