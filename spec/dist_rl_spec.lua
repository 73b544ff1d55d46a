-- Data-parallel RL (lua/diffrl/rl/trainer.lua, lua/diffrl/dist.lua) on the tiny
-- SD1.5-style fixture pipeline, #mpi: 2 ranks x batch B train as 1 rank x batch 2B
-- (rewards and reward metrics exactly, losses and parameters to float32
-- reduction-order tolerance), also with image groups, group advantages and the
-- pretraining loss; a 2-rank run killed after a checkpoint and resumed on 2 ranks
-- repeats the uninterrupted run bit for bit.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local launch = require 'diffrl.cli.launch'
local cjson = require 'cjson'

local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'
local MODEL = SRC .. '/spec/fixtures/models/tiny-sd15'
local RECIPE = SRC .. '/recipes/compressibility.lua'
local COMMON = { 'model.path=' .. MODEL, 'sample.steps=4', 'sample.resolution=16', 'train.timestep_count=2',
                 'lora.rank=0', 'train.lr=1e-2', 'train.clip_range=0.2' }

local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local mpi_missing, sanitizer_args = h.mpi_missing, h.mpi_sanitizer_args

-- `diffrl run RECIPE COMMON... extra...` on n ranks (n = 1: no mpirun); the argv.
local function argv(n, extra)
  local rest = {}
  for _, s in ipairs(COMMON) do rest[#rest + 1] = s end
  for _, s in ipairs(extra) do rest[#rest + 1] = s end
  if n == 1 then
    table.insert(rest, 1, RECIPE)
    table.insert(rest, 1, 'run')
    return { h.bin(), unpack(rest) }
  end
  return launch.command({ n = n, file = RECIPE, rest = rest, mpi_args = sanitizer_args(), threads = 1 }, { executable = h.bin() })
end

local function run_on(n, extra)
  local a = argv(n, extra)
  local program = table.remove(a, 1)
  return h.run_program(program, a)
end

local function metrics(dir)
  local out = {}
  for line in io.lines(dir .. '/metrics.jsonl') do out[#out + 1] = cjson.decode(line) end
  return out
end

local TIMING = { images_per_s = true, sample_s = true, time_s = true, train_s = true, reward_s = true }

local function params(dir, step)
  return dr.load(('%s/checkpoints/step_%06d/tensors.safetensors'):format(dir, step))
end

-- || a - b || / || a - start || over every parameter: differences relative to how
-- far training moved the weights.
local function relative_distance(a, b)
  local start = dr.load(MODEL .. '/unet/diffusion_pytorch_model.safetensors')
  local num, den, n = 0, 0, 0
  for name, t in pairs(a) do
    if name:match('^param%.') then
      assert.is_not_nil(b[name], name)
      num = num + (t - b[name]):pow(2):sum():item()
      den = den + (t - start[name:sub(7)]):pow(2):sum():item()
      n = n + 1
    end
  end
  assert.is_true(n > 200 and den > 0)
  return math.sqrt(num / den)
end

describe('#mpi data-parallel RL', function()
  local why = mpi_missing()
  if why then
    pending('#mpi specs skipped: ' .. why)
    return
  end

  local function compare(one_rank, two_ranks, K)
    local a, b = temp_dir(), temp_dir()
    local r = run_on(1, { 'run.dir=' .. a, 'train.iterations=' .. K, 'checkpoint.every=' .. K, unpack(one_rank) })
    assert.are.equal(0, r.code, r.stderr)
    r = run_on(2, { 'run.dir=' .. b, 'train.iterations=' .. K, 'checkpoint.every=' .. K, unpack(two_ranks) })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local ma, mb = metrics(a), metrics(b)
    assert.are.equal(K, #ma)
    assert.are.equal(K, #mb)
    for i = 1, K do
      for key, va in pairs(ma[i]) do
        local vb = mb[i][key]
        if not TIMING[key] then
          assert.is_number(vb, key)
          if key:match('^reward') or key == 'images' or key == 'step' or key:match('nonfinite') then
            assert.are.equal(va, vb, ('iteration %d: %s'):format(i, key))
          else -- sums over the batch in another order, and Adam
            assert.is_true(math.abs(va - vb) <= 1e-6 + 2e-3 * math.abs(va),
                           ('iteration %d: %s %.9g vs %.9g'):format(i, key, va, vb))
          end
        end
      end
    end
    local d = relative_distance(params(a, K), params(b, K))
    os.execute('rm -rf ' .. a .. ' ' .. b)
    return d
  end

  it('2 ranks x batch 2 train as 1 rank x batch 4', function()
    local d = compare({ 'sample.batch_size=4' }, { 'sample.batch_size=2' }, 3)
    -- observed ~1e-4: Adam's normalisation turns last-bit gradient differences of
    -- near-zero entries into lr-sized steps; a wrong shard or a missing all-reduce
    -- gives differences of order 1
    assert.is_true(d < 5e-3, ('parameters differ by %.3g of their change'):format(d))
  end)

  it('also with image groups, group advantages and the pretraining loss', function()
    local data = temp_dir()
    os.execute('mkdir -p ' .. data)
    local g = dr.Generator(3)
    for i = 1, 4 do
      dr.save_image(('%s/%d.png'):format(data, i), dr.rand({ 3, 16, 16 }, { generator = g }))
      h.write_file(('%s/%d.txt'):format(data, i), ('picture number %d\n'):format(i))
    end
    local shared = { 'sample.images_per_prompt=2', 'train.advantage=group', 'pretrain.weight=0.5',
                     'pretrain.data=' .. data, 'train.adam_eps=1e-3' }
    local one, two = { 'sample.batch_size=4', 'pretrain.batch_size=2' }, { 'sample.batch_size=2', 'pretrain.batch_size=1' }
    for _, s in ipairs(shared) do one[#one + 1], two[#two + 1] = s, s end
    local d = compare(one, two, 2)
    os.execute('rm -rf ' .. data)
    assert.is_true(d < 1e-3, ('parameters differ by %.3g of their change'):format(d))
  end)

  it('shards the optimizer state (dist.zero) with the same results bit for bit, also resumed', function()
    local a, b, c = temp_dir(), temp_dir(), temp_dir()
    local extra = { 'sample.batch_size=2', 'checkpoint.every=2' }
    local r = run_on(2, { 'run.dir=' .. a, 'train.iterations=3', unpack(extra) })
    assert.are.equal(0, r.code, r.stderr)
    r = run_on(2, { 'run.dir=' .. b, 'train.iterations=3', 'dist.zero=true', unpack(extra) })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    r = run_on(2, { 'run.dir=' .. c, 'train.iterations=2', 'dist.zero=true', unpack(extra) })
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local words = launch.command({ n = 2, file = RECIPE, rest = { '--resume', c, '--set', 'train.iterations=3' },
                                   mpi_args = sanitizer_args(), threads = 1 }, { executable = h.bin() })
    local program = table.remove(words, 1)
    r = h.run_program(program, words)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    local ma = metrics(a)
    for _, dir in ipairs { b, c } do
      local mb = metrics(dir)
      assert.are.equal(3, #mb)
      for i = 1, 3 do
        for key, v in pairs(ma[i]) do
          if not TIMING[key] then assert.are.equal(v, mb[i][key], ('%s iteration %d: %s'):format(dir, i, key)) end
        end
      end
      local pa, pb = params(a, 3), params(dir, 3)
      assert.is_not_nil(pa['adam.exp_avg'])
      for name, t in pairs(pa) do assert.are.equal(0, (t - pb[name]):abs():max():item(), name) end
    end
    os.execute('rm -rf ' .. a .. ' ' .. b .. ' ' .. c)
  end)

  it('resumes a 2-rank run killed after a checkpoint to the uninterrupted run, bit for bit', function()
    local a, b = temp_dir(), temp_dir()
    -- 9 iterations: the kill lands after the step-2 checkpoint and well before step 8's
    -- (with 5, a fast machine sometimes wrote step 4's checkpoint before the kill)
    local extra = { 'sample.batch_size=2', 'train.iterations=9', 'checkpoint.every=2' }
    local r = run_on(2, { 'run.dir=' .. a, unpack(extra) })
    assert.are.equal(0, r.code, r.stderr)

    -- the same run; rank 1 killed with SIGKILL once the step-2 checkpoint exists
    local words = {}
    for i, w in ipairs(argv(2, { 'run.dir=' .. b, unpack(extra) })) do words[i] = h.shell_quote(w) end
    local status = io.popen(table.concat(words, ' ') .. ' >/dev/null 2>&1 & pid=$!; ' ..
      'for i in $(seq 1 600); do [ -d ' .. b .. '/checkpoints/step_000002 ] && break; sleep 0.05; done; ' ..
      'kill -9 $(ps -o pid= --ppid $pid | tail -1) 2>/dev/null; wait $pid; echo $?'):read('*a')
    assert.are_not.equal(0, tonumber(status:match('%d+')), 'the killed job must fail')
    local interrupted = io.open(b .. '/checkpoints/step_000008/state.lua') == nil

    local words2 = {}
    for i, w in ipairs(launch.command({ n = 2, file = RECIPE, rest = { '--resume', b }, mpi_args = sanitizer_args(), threads = 1 },
                                      { executable = h.bin() })) do words2[i] = w end
    local program = table.remove(words2, 1)
    r = h.run_program(program, words2)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)

    local ma, mb = metrics(a), metrics(b)
    assert.are.equal(9, #ma)
    assert.are.equal(#ma, #mb)
    for i = 1, #ma do
      for key, v in pairs(ma[i]) do
        if not TIMING[key] then assert.are.equal(v, mb[i][key], ('iteration %d: %s'):format(i, key)) end
      end
    end
    local pa, pb = params(a, 9), params(b, 9)
    for name, t in pairs(pa) do assert.are.equal(0, (t - pb[name]):abs():max():item(), name) end
    os.execute('rm -rf ' .. a .. ' ' .. b)
    assert.is_true(interrupted, 'the run finished before it was killed; the test proved less')
  end)
end)
