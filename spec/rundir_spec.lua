-- Run folders (dr.rundir): creating and resuming, metrics.jsonl byte for byte,
-- sample grids, checkpoints that round-trip exactly, keep the last K, and survive
-- a crash at any moment (a temp folder renamed into place); progress bars
-- (dr.progress) on a terminal and in logs, with a fake clock.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local rundir, progress = dr.rundir, dr.progress

local function assert_contains(text, part)
  assert.is_truthy(tostring(text):find(part, 1, true), ('expected to find %q in:\n%s'):format(part, tostring(text)))
end

local temp_dirs = {}
local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  temp_dirs[#temp_dirs + 1] = p
  return p
end

local function sh(cmd) return assert(os.execute(cmd)) end
local function ls(dir)
  local names = rundir._fs.list_dir(dir)
  return names or {}
end

local CONFIG = "return { run = { dir = 'x', seed = 1 } }\n"

local function new_run(opts)
  opts = opts or {}
  opts.config_text = opts.config_text or CONFIG
  local dir = temp_dir() .. '/run'
  return rundir.create(dir, opts), dir
end

local function same_tensor(a, b)
  assert.are.equal(a.dtype, b.dtype)
  assert.are.same(a.shape, b.shape)
  assert.are.same(a:tolist(), b:tolist())
end

after_each(function()
  for _, d in ipairs(temp_dirs) do rundir._fs.remove_tree(d) end
  temp_dirs = {}
end)

describe('rundir.create', function()
  it('makes the folder (and its parents) with config.lua and run.json', function()
    local run, dir = new_run { info = { recipe = 'compressibility' } }
    assert.are.equal(dir, run.dir)
    assert.are.equal(dir .. '/metrics.jsonl', run.path('metrics.jsonl'))
    assert.are.equal(CONFIG, h.read_file(dir .. '/config.lua'))
    assert.are.equal(CONFIG, run.config_text)
    local info = require('cjson').decode(h.read_file(dir .. '/run.json'))
    assert.are.equal('compressibility', info.recipe)
    assert.are.equal(dr.build_info().git_commit, info.git_commit)
    assert.are.equal(dr.build_info().version, info.build.version)
    assert.is_string(info.start_time)
    assert.is_table(info.argv)
    assert.are.same({ 'checkpoints', 'config.lua', 'run.json', 'samples' }, ls(dir))
  end)

  it('refuses a folder that already holds a run, pointing at --resume', function()
    local _, dir = new_run()
    local err = h.error_of(rundir.create, dir, { config_text = CONFIG })
    assert_contains(err, dir .. ' already holds a run')
    assert_contains(err, '--resume ' .. dir)
    assert_contains(err, 'another run.dir')
  end)

  it('names the path it cannot create', function()
    local file = h.temp_file('not a folder')
    local err = h.error_of(rundir.create, file .. '/run', { config_text = CONFIG })
    os.remove(file)
    assert_contains(err, 'cannot create the run folder ' .. file .. '/run')
  end)

  it('checks its options', function()
    assert_contains(h.error_of(rundir.create, temp_dir(), {}), 'config_text')
    assert_contains(h.error_of(rundir.create, temp_dir(), { config_text = '', kep = 2 }),
                    "unknown option 'kep'")
    assert_contains(h.error_of(rundir.create, temp_dir(), { config_text = '', keep = 0 }),
                    'keep must be an integer >= 1')
  end)
end)

describe('rundir.open', function()
  it('gives back the config of the run', function()
    local _, dir = new_run()
    local run = rundir.open(dir .. '/')
    assert.are.equal(dir, run.dir)
    assert.are.equal(CONFIG, run.config_text)
    assert.is_table(run.info.build)
  end)

  it('names what is missing', function()
    local missing = temp_dir()
    assert_contains(h.error_of(rundir.open, missing), 'no run folder ' .. missing)
    local _, dir = new_run()
    os.remove(dir .. '/config.lua')
    assert_contains(h.error_of(rundir.open, dir), dir .. '/config.lua is missing')
    os.remove(dir .. '/run.json')
    assert_contains(h.error_of(rundir.open, dir), dir .. '/run.json is missing')
  end)
end)

describe('metrics.jsonl', function()
  it('holds one JSON object per line, keys sorted, full precision, same bytes every time', function()
    local run, dir = new_run()
    run:log { step = 1, reward_mean = 0.1, loss = -2.5e-7, ['reward_mean/jpeg'] = 1 / 3, lr = 3e-4,
              note = 'a "b"\n', ok = true }
    run:log { step = 2, reward_mean = 0.30000000000000004, big = 2 ^ 53 - 1 }
    assert.are.equal(
      '{"loss":-2.4999999999999999e-07,"lr":0.00029999999999999997,"note":"a \\"b\\"\\n",' ..
      '"ok":true,"reward_mean":0.10000000000000001,"reward_mean/jpeg":0.33333333333333331,"step":1}\n' ..
      '{"big":9007199254740991,"reward_mean":0.30000000000000004,"step":2}\n',
      h.read_file(dir .. '/metrics.jsonl'))
    -- every line is JSON, and the numbers read back exactly
    local cjson = require 'cjson'
    local lines = {}
    for line in h.read_file(dir .. '/metrics.jsonl'):gmatch('[^\n]+') do lines[#lines + 1] = cjson.decode(line) end
    assert.are.equal(1 / 3, lines[1]['reward_mean/jpeg'])
    assert.are.equal(0.30000000000000004, lines[2].reward_mean)
  end)

  it('writes NaN and inf as null and lists their keys under nonfinite', function()
    local run, dir = new_run()
    run:log { step = 3, loss = 0 / 0, grad_norm = 1 / 0, reward_mean = 0.5, z = -1 / 0 }
    local text = h.read_file(dir .. '/metrics.jsonl')
    assert.are.equal('{"grad_norm":null,"loss":null,"nonfinite":["grad_norm","loss","z"],' ..
                     '"reward_mean":0.5,"step":3,"z":null}\n', text)
    assert.is_table(require('cjson').decode(text))
  end)

  it('needs a step, and keeps nonfinite for itself', function()
    local run = new_run()
    assert_contains(h.error_of(run.log, run, { loss = 1 }), 'numeric step')
    assert_contains(h.error_of(run.log, run, { step = 1, nonfinite = 1 }), 'reserved')
  end)

  it('truncate_metrics keeps the lines up to a step (and drops a line cut short)', function()
    local run, dir = new_run()
    for step = 1, 5 do run:log { step = step, loss = step / 7 } end
    local before = h.read_file(dir .. '/metrics.jsonl')
    local f = io.open(dir .. '/metrics.jsonl', 'ab')
    f:write('{"loss":0.5,"st') -- a crash mid-line
    f:close()
    local resumed = rundir.open(dir)
    assert.are.equal(3, resumed:truncate_metrics(3))
    for step = 4, 5 do resumed:log { step = step, loss = step / 7 } end
    assert.are.equal(before, h.read_file(dir .. '/metrics.jsonl'))
    assert.are.same({ 'checkpoints', 'config.lua', 'metrics.jsonl', 'run.json', 'samples' }, ls(dir))
  end)
end)

describe('sample grids', function()
  it('are a PNG grid and the prompts, one a line', function()
    local run, dir = new_run()
    local images = dr.rand({ 3, 3, 8, 8 }, { generator = dr.Generator(1) })
    local png, txt = run:save_grid(10, images, { 'a cat', 'a dog\non a line', 'a fox' })
    assert.are.equal(dir .. '/samples/step_000010.png', png)
    assert.are.equal(dir .. '/samples/step_000010.txt', txt)
    assert.are.equal('a cat\na dog on a line\na fox\n', h.read_file(txt))
    local grid = dr.load_image(png)
    assert.are.same({ 3, 12, 32 }, grid.shape)
    assert_contains(h.error_of(run.save_grid, run, 20, images, { 'one' }), '3 images but 1 prompts')
  end)
end)

-- A state as a trainer saves it: weights, optimizer moments, RNG and data positions.
local function make_state(step)
  local g = dr.Generator(7)
  return {
    tensors = {
      ['unet.conv.weight'] = dr.randn({ 4, 3, 3, 3 }, { generator = g }),
      ['optim.exp_avg.1'] = dr.randn({ 17 }, { generator = g }):mul(1e-30),
      ['ids'] = dr.tensor({ -5, 1099511627777, 7 }, { dtype = 'int64' }),
      ['half'] = dr.randn({ 5 }, { generator = g }):to('bfloat16'),
    },
    lua = {
      step = step,
      lr = 1e-4 / 3,
      max_int = 2 ^ 53 - 1,
      neg_zero = -0.0,
      seed_text = '18446744073709551615',
      seed_u64 = 18446744073709551615ULL,
      seed_i64 = -9223372036854775807LL,
      rng = { seed = 2 ^ 53 - 1, offset = 123456789012 },
      prompts = { position = 17, order = { 3, 1, 2 }, ['held out'] = 'a "quoted"\nline\0' },
      flags = { ema = true, lora = false },
      nonfinite = { 0 / 0, 1 / 0, -1 / 0 },
      [1] = 'first',
    },
  }
end

describe('checkpoints', function()
  it('round-trip: tensors bit for bit, the Lua state exactly', function()
    local run, dir = new_run()
    local state = make_state(20)
    local path = run:save_checkpoint(20, state)
    assert.are.equal(dir .. '/checkpoints/step_000020', path)
    assert.are.same({ 'state.lua', 'tensors.safetensors' }, ls(path))
    local step, latest = run:latest_checkpoint()
    assert.are.equal(20, step)
    assert.are.equal(path, latest)
    local back = rundir.load_checkpoint(latest)
    for name, t in pairs(state.tensors) do same_tensor(t, back.tensors[name]) end
    local n = 0
    for _ in pairs(back.tensors) do n = n + 1 end
    assert.are.equal(4, n)
    local lua = back.lua
    assert.are.equal(1e-4 / 3, lua.lr)
    assert.are.equal(9007199254740991, lua.max_int)
    assert.are.equal(-math.huge, 1 / lua.neg_zero)
    assert.is_true(lua.seed_u64 == 18446744073709551615ULL)
    assert.is_true(lua.seed_i64 == -9223372036854775807LL)
    assert.is_true(lua.nonfinite[1] ~= lua.nonfinite[1])
    assert.are.equal(math.huge, lua.nonfinite[2])
    assert.are.equal(-math.huge, lua.nonfinite[3])
    lua.seed_u64, lua.seed_i64, lua.nonfinite = nil, nil, nil
    local expected = make_state(20).lua
    expected.seed_u64, expected.seed_i64, expected.nonfinite = nil, nil, nil
    assert.are.same(expected, lua)
    -- the file is the same bytes for the same state
    local text = h.read_file(path .. '/state.lua')
    run:save_checkpoint(21, make_state(20))
    assert.are.equal(text, h.read_file(dir .. '/checkpoints/step_000021/state.lua'))
  end)

  it('a Generator state survives the round trip', function()
    local run = new_run()
    local g = dr.Generator(2 ^ 53)
    dr.randn({ 10 }, { generator = g })
    run:save_checkpoint(1, { lua = { rng = g:get_state() } })
    local g2 = dr.Generator(0):set_state(rundir.load_checkpoint(select(2, run:latest_checkpoint())).lua.rng)
    same_tensor(dr.randn({ 6 }, { generator = g }), dr.randn({ 6 }, { generator = g2 }))
  end)

  it('keeps the last `keep`', function()
    local run, dir = new_run { keep = 2 }
    for step = 10, 50, 10 do run:save_checkpoint(step, { lua = { step = step } }) end
    assert.are.same({ 'step_000040', 'step_000050' }, ls(dir .. '/checkpoints'))
    local reopened = rundir.open(dir) -- keep = 3 by default
    for step = 60, 80, 10 do reopened:save_checkpoint(step, { lua = { step = step } }) end
    assert.are.same({ 'step_000060', 'step_000070', 'step_000080' }, ls(dir .. '/checkpoints'))
    assert.are.equal(80, reopened:latest_checkpoint())
  end)

  it('saving the same step again replaces it', function()
    local run, dir = new_run()
    run:save_checkpoint(5, { lua = { v = 1 } })
    run:save_checkpoint(5, { lua = { v = 2 } })
    assert.are.same({ 'step_000005' }, ls(dir .. '/checkpoints'))
    assert.are.equal(2, rundir.load_checkpoint(dir .. '/checkpoints/step_000005').lua.v)
  end)

  it('a run without checkpoints has no latest one', function()
    local run = new_run()
    assert.is_nil(run:latest_checkpoint())
  end)

  it('refuses what state.lua cannot hold before writing anything', function()
    local run, dir = new_run()
    assert_contains(h.error_of(run.save_checkpoint, run, 1, { lua = { f = print } }),
                    'save_checkpoint: state.lua.f: cannot write a function (state.lua holds numbers')
    assert_contains(h.error_of(run.save_checkpoint, run, 1, { lua = { opt = { m = dr.zeros(2) } } }),
                    'state.lua.opt.m is a tensor; put tensors in state.tensors')
    local cyclic = {}
    cyclic.self = cyclic
    assert_contains(h.error_of(run.save_checkpoint, run, 1, { lua = cyclic }), 'contains itself')
    assert_contains(h.error_of(run.save_checkpoint, run, 1, { weights = {} }), "unknown state field 'weights'")
    assert.are.same({}, ls(dir .. '/checkpoints'))
  end)
end)

describe('checkpoints after a crash', function()
  it('a save that fails half-way leaves the previous checkpoint as the latest, and no temp folder', function()
    local run, dir = new_run()
    run:save_checkpoint(10, make_state(10))
    local bad = make_state(20)
    bad.tensors.zzz = 'not a tensor' -- dr.save raises once the folder is made
    assert_contains(h.error_of(run.save_checkpoint, run, 20, bad), "'zzz' must be a tensor")
    assert.are.same({ 'step_000010' }, ls(dir .. '/checkpoints'))
    assert.are.equal(10, run:latest_checkpoint())
  end)

  it('a temp folder left by a killed writer is never the latest, and open() removes it', function()
    local run, dir = new_run()
    run:save_checkpoint(10, make_state(10))
    local ckpt = dir .. '/checkpoints'
    local stale = ckpt .. '/.tmp-step_000020-4242'
    sh('mkdir -p ' .. h.shell_quote(stale))
    local good = h.read_file(ckpt .. '/step_000010/tensors.safetensors')
    h.write_file(stale .. '/tensors.safetensors', good:sub(1, #good - 100))
    assert.are.equal(10, run:latest_checkpoint())
    local reopened = rundir.open(dir)
    assert.are.same({ 'step_000010' }, ls(ckpt))
    local step, path = reopened:latest_checkpoint()
    assert.are.equal(10, step)
    same_tensor(make_state(10).tensors['unet.conv.weight'],
                rundir.load_checkpoint(path).tensors['unet.conv.weight'])
  end)

  it('load_checkpoint names the corrupt file', function()
    local run = new_run()
    local path = run:save_checkpoint(10, make_state(10))
    local tensors = path .. '/tensors.safetensors'
    local bytes = h.read_file(tensors)
    h.write_file(tensors, bytes:sub(1, #bytes - 7))
    assert_contains(h.error_of(rundir.load_checkpoint, path), tensors)
    h.write_file(tensors, bytes)
    h.write_file(path .. '/state.lua', 'return { step = 10, lr = ')
    local err = h.error_of(rundir.load_checkpoint, path)
    assert_contains(err, path .. '/state.lua is corrupt')
    os.remove(path .. '/state.lua')
    assert_contains(h.error_of(rundir.load_checkpoint, path), path .. '/state.lua is missing')
    assert_contains(h.error_of(rundir.load_checkpoint, path .. '-nope'), 'no checkpoint folder')
  end)
end)

describe('a process killed with SIGKILL while it writes checkpoints #cli', function()
  -- Runs a writer of checkpoints (keep = 4), kills it `delay` seconds after its fifth
  -- checkpoint, at whatever moment of a write that falls on; returns the run folder.
  local function write_and_kill(delay)
    local dir = temp_dir() .. '/run'
    local script = h.temp_file(([[
      local dr = require 'diffrl'
      local run = dr.rundir.create(%q, { config_text = 'return {}\n', keep = 4 })
      local big = dr.zeros({ 512, 1024 })
      for step = 1, 100000 do
        big:fill_(step)
        run:log { step = step } -- before the checkpoint of the step, as a trainer must
        run:save_checkpoint(step, { tensors = { big = big, small = dr.full({ 3 }, step) },
                                    lua = { step = step, rng = { seed = 2 ^ 53 - 1, offset = step } } })
      end
    ]]):format(dir), '.lua')
    sh(([[
      %s run %s >/dev/null 2>&1 &
      pid=$!
      for i in $(seq 500); do [ -d %s/checkpoints/step_000005 ] && break; sleep 0.02; done
      sleep %g
      kill -9 $pid
      wait $pid 2>/dev/null
      true]]):format(h.shell_quote(h.bin()), h.shell_quote(script), h.shell_quote(dir), delay))
    os.remove(script)
    return dir
  end

  for _, delay in ipairs { 0.03, 0.11, 0.19 } do
    it(('leaves only checkpoints that load cleanly (killed %g s in)'):format(delay), function()
      local dir = write_and_kill(delay)
      local names = ls(dir .. '/checkpoints')
      local steps = 0
      for _, name in ipairs(names) do
        local step = tonumber(name:match('^step_(%d+)$'))
        if step then
          steps = steps + 1
          local state = rundir.load_checkpoint(dir .. '/checkpoints/' .. name)
          assert.are.equal(step, state.lua.step)
          assert.are.equal(step, state.lua.rng.offset)
          assert.are.same({ step, step, step }, state.tensors.small:tolist())
          assert.are.equal(step * 512 * 1024, state.tensors.big:sum():item())
        else
          assert.is_truthy(name:match('^%.tmp%-'), 'unexpected entry ' .. name)
        end
      end
      -- keep + 1 when it died between the rename and removing the oldest
      assert.is_true(steps >= 1 and steps <= 5, 'checkpoints: ' .. table.concat(names, ' '))
      local run = rundir.open(dir)
      for _, name in ipairs(ls(dir .. '/checkpoints')) do assert.is_truthy(name:match('^step_%d+$')) end
      local latest = run:latest_checkpoint()
      assert.is_true(latest >= 5)
      -- metrics: whole lines up to where it died, then exactly those up to the checkpoint
      run:truncate_metrics(latest)
      local expected = {}
      for step = 1, latest do expected[step] = ('{"step":%d}\n'):format(step) end
      assert.are.equal(table.concat(expected), h.read_file(dir .. '/metrics.jsonl'))
    end)
  end
end)

describe('progress bars', function()
  -- a clock that says what the spec tells it
  local function fake_clock()
    local t = { now = 100 }
    return t, function() return t.now end
  end
  local function sink()
    local s = { text = '' }
    function s:write(...) for _, x in ipairs { ... } do self.text = self.text .. x end return self end
    function s:flush() return self end
    return s
  end

  it('redraw in place on a terminal, with elapsed<ETA, rate and extra text', function()
    local t, clock = fake_clock()
    local out = sink()
    local bar = progress.bar { total = 10, label = 'iteration', out = out, tty = true, clock = clock, width = 10 }
    t.now = 104
    bar:update(1, 'reward 0.512')
    assert.are.equal('\riteration [#.........]  1/10  0:04<0:36  4.00 s/it  reward 0.512\27[K', out.text)
    out.text = ''
    t.now = 104.05
    bar:update(2) -- too soon to redraw
    assert.are.equal('', out.text)
    t.now = 110
    bar:update(5)
    assert.are.equal('\riteration [#####.....]  5/10  0:10<0:10  2.00 s/it\27[K', out.text)
    out.text = ''
    t.now = 3800
    bar:update(10)
    assert.are.equal('\riteration [##########] 10/10  1:01:40<0:00  370.00 s/it\27[K\n', out.text)
    out.text = ''
    bar:finish()
    assert.are.equal('', out.text)
  end)

  it('print plain lines elsewhere, every tenth or every min_interval seconds', function()
    local t, clock = fake_clock()
    local out = sink()
    local bar = progress.bar { total = 100, label = 'sampling', out = out, tty = false, clock = clock,
                               min_interval = 30 }
    for i = 1, 100 do
      t.now = 100 + i * 0.5 + (i >= 23 and 40 or 0) -- step 23 is slow: a line inside a tenth
      bar:update(i)
    end
    bar:finish()
    assert.are.equal(table.concat {
      'sampling 1/100 (1%) 0:01<0:50 2.00 it/s\n',
      'sampling 10/100 (10%) 0:05<0:45 2.00 it/s\n',
      'sampling 20/100 (20%) 0:10<0:40 2.00 it/s\n',
      'sampling 23/100 (23%) 0:52<2:52 2.24 s/it\n',
      'sampling 30/100 (30%) 0:55<2:08 1.83 s/it\n',
      'sampling 40/100 (40%) 1:00<1:30 1.50 s/it\n',
      'sampling 50/100 (50%) 1:05<1:05 1.30 s/it\n',
      'sampling 60/100 (60%) 1:10<0:47 1.17 s/it\n',
      'sampling 70/100 (70%) 1:15<0:32 1.07 s/it\n',
      'sampling 80/100 (80%) 1:20<0:20 1.00 it/s\n',
      'sampling 90/100 (90%) 1:25<0:09 1.06 it/s\n',
      'sampling 100/100 (100%) 1:30<0:00 1.11 it/s\n',
    }, out.text)
  end)

  it('finish ends a bar stopped early on a terminal; callback(i, n) drives one per run', function()
    local t, clock = fake_clock()
    local out = sink()
    local bar = progress.bar { total = 4, label = 'x', out = out, tty = true, clock = clock, width = 4 }
    t.now = 101
    bar:update(1)
    bar:finish()
    bar:finish()
    assert.are.equal('\rx [#...] 1/4  0:01<0:03  1.00 it/s\27[K\n', out.text)
    out.text = ''
    -- timed from the first call: the rate counts the steps after it
    local fn = progress.callback('denoise', { out = out, tty = false, clock = clock })
    for _ = 1, 2 do
      for i = 1, 3 do t.now = t.now + 2; fn(i, 3) end
    end
    local one = 'denoise 1/3 (33%) 0:00<? ? it/s\n' ..
                'denoise 2/3 (66%) 0:02<0:02 2.00 s/it\n' ..
                'denoise 3/3 (100%) 0:04<0:00 2.00 s/it\n'
    assert.are.equal(one .. one, out.text)
  end)

  it('count from `initial` for a resumed run', function()
    local t, clock = fake_clock()
    local out = sink()
    local bar = progress.bar { total = 100, initial = 60, label = 'iteration', out = out, tty = false,
                               clock = clock }
    t.now = 110
    bar:update(65)
    assert.are.equal('iteration 65/100 (65%) 0:10<1:10 2.00 s/it\n', out.text)
  end)

  it('format durations as m:ss and h:mm:ss', function()
    assert.are.equal('0:00', progress.format_duration(0))
    assert.are.equal('1:15', progress.format_duration(75))
    assert.are.equal('1:02:05', progress.format_duration(3725))
    assert.are.equal('?', progress.format_duration(0 / 0))
  end)
end)
