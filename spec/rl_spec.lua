-- The RL loop end to end (lua/diffrl/rl/trainer.lua, recipes/compressibility.lua)
-- on the tiny SD1.5-style fixture pipeline: the reward rises; a run killed with
-- SIGKILL mid-iteration and resumed gives the uninterrupted run's weights and
-- metrics bit for bit; non-finite rewards are skipped and counted; the command
-- line reports bad settings by name.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'
local MODEL = SRC .. '/spec/fixtures/models/tiny-sd15'
local RECIPE = SRC .. '/recipes/compressibility.lua'

local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function metrics(dir)
  local out = {}
  for line in io.lines(dir .. '/metrics.jsonl') do out[#out + 1] = line end
  return out
end

-- A metrics line without the wall-clock fields (they differ run to run).
local TIMING = { images_per_s = true, sample_s = true, time_s = true, train_s = true, reward_s = true }
local function without_timing(line)
  local cjson = require 'cjson'
  local t = cjson.decode(line)
  local keys = {}
  for k in pairs(t) do if not TIMING[k] then keys[#keys + 1] = k end end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. '=' .. ('%.17g'):format(tonumber(t[k]) or 0 / 0) end
  return table.concat(parts, ' ')
end

local function reward_means(dir)
  local cjson = require 'cjson'
  local out = {}
  for _, line in ipairs(metrics(dir)) do out[#out + 1] = cjson.decode(line).reward_mean end
  return out
end

local function mean(xs, a, b)
  local s = 0
  for i = a, b do s = s + xs[i] end
  return s / (b - a + 1)
end

local SMALL = { 'model.path=' .. MODEL, 'sample.batch_size=4', 'sample.steps=4', 'sample.resolution=16',
                'train.timestep_count=2', 'lora.rank=0', 'train.lr=1e-2', 'train.clip_range=0.2' }

local function args(extra)
  local a = { 'run', RECIPE }
  for _, s in ipairs(SMALL) do a[#a + 1] = s end
  for _, s in ipairs(extra) do a[#a + 1] = s end
  return a
end

describe('#cli RL on the tiny pipeline', function()
  it('#slow raises the JPEG compressibility reward in 20 iterations', function()
    local dir = temp_dir()
    local r = h.diffrl { 'run', RECIPE, 'model.path=' .. MODEL, 'run.dir=' .. dir, 'train.iterations=20',
                         'sample.batch_size=8', 'sample.steps=6', 'sample.resolution=32', 'lora.rank=0',
                         'train.lr=1e-2', 'train.clip_range=0.2', 'train.timestep_count=3',
                         'checkpoint.every=100' }
    assert.are.equal(0, r.code, r.stderr)
    local rs = reward_means(dir)
    os.execute('rm -rf ' .. dir)
    assert.are.equal(20, #rs)
    local first, last = mean(rs, 1, 5), mean(rs, 16, 20)
    -- seeded, so the numbers are fixed for a build; the margin covers other BLAS builds
    assert.is_true(last > first + 0.008, ('reward %.4f -> %.4f'):format(first, last))
  end)

  it('resumes a run killed mid-iteration to the same weights and metrics, bit for bit', function()
    -- N iterations: the kill comes ~0.2 s after the first checkpoint, and the tiny run
    -- makes ~25 iterations a second, so N leaves it ~0.5 s to spare (6 raced it)
    local a, b, N = temp_dir(), temp_dir(), 20
    local last = ('/checkpoints/step_%06d/'):format(N)
    local r = h.diffrl(args { 'run.dir=' .. a, 'train.iterations=' .. N, 'checkpoint.every=2' })
    assert.are.equal(0, r.code, r.stderr)

    -- the same run, killed with SIGKILL once a checkpoint exists (any: keep = 3 removes
    -- step 2's once step 8's is written, which a poll under load may not see in time)
    local cmd = { h.shell_quote(h.bin()) }
    for _, s in ipairs(args { 'run.dir=' .. b, 'train.iterations=' .. N, 'checkpoint.every=2' }) do
      cmd[#cmd + 1] = h.shell_quote(s)
    end
    os.execute(table.concat(cmd, ' ') .. ' >/dev/null 2>&1 & pid=$!; ' ..
               'for i in $(seq 1 300); do ls -d ' .. b .. '/checkpoints/step_* >/dev/null 2>&1 && break; sleep 0.05; done; ' ..
               'sleep 0.15; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null')
    local ok_interrupted = io.open(b .. last .. 'state.lua') == nil
    r = h.diffrl { 'run', RECIPE, '--resume', b }
    assert.are.equal(0, r.code, r.stderr)
    -- it says where it goes on from: the last checkpoint's iteration
    local resumed = tonumber(r.stdout:match(('^[%%w_]+: resuming %s after iteration (%%d+) of %d\n')
                                              :format(h.escape_pattern(b), N)))
    assert.is_number(resumed, r.stdout)
    assert.is_true(resumed >= 2 and resumed < N and resumed % 2 == 0, r.stdout)

    local ma, mb = metrics(a), metrics(b)
    assert.are.equal(N, #ma)
    assert.are.equal(#ma, #mb)
    for i = 1, #ma do assert.are.equal(without_timing(ma[i]), without_timing(mb[i])) end
    local ta = dr.load(a .. last .. 'tensors.safetensors')
    local tb = dr.load(b .. last .. 'tensors.safetensors')
    local n = 0
    for name, t in pairs(ta) do
      assert.is_not_nil(tb[name], name)
      assert.are.equal(0, (t - tb[name]):abs():max():item(), name)
      n = n + 1
    end
    assert.is_true(n > 200)
    os.execute('rm -rf ' .. a .. ' ' .. b)
    assert.is_true(ok_interrupted, 'the run finished before it was killed; the test proved less')
  end)

  it('skips non-finite rewards and counts them, keeping the weights finite', function()
    local dir = temp_dir()
    local cfg = dr.config.resolve(dr.rl.schema, {
      model = { path = MODEL }, run = { dir = dir }, train = { iterations = 2, timestep_count = 2, lr = 1e-2 },
      sample = { batch_size = 4, steps = 4, resolution = 16 }, checkpoint = { every = 10 }, lora = { rank = 2 },
    })
    local calls = 0
    local trainer = dr.rl.trainer.new(cfg, { tasks = { {
      name = 'nan', prompts = dr.prompts.list { 'a', 'b' },
      reward = function(images)
        calls = calls + 1
        local out = {}
        for i = 1, images:size(1) do out[i] = (i == 2) and 0 / 0 or i end
        if calls == 2 then for i = 1, #out do out[i] = 1 / 0 end end
        return out
      end,
    } } })
    local m1 = trainer:iteration()
    assert.are.equal(1, m1.nonfinite_rewards)
    local m2 = trainer:iteration()
    assert.are.equal(4, m2.nonfinite_rewards)
    for _, p in ipairs(trainer.params) do
      assert.is_true(p:abs():max():item() < math.huge and p:sum():item() == p:sum():item())
    end
    os.execute('rm -rf ' .. dir)
  end)

  it('accumulates micro-batch gradients to the full batch update (train.grad_accum)', function()
    local function train(extra)
      local dir = temp_dir()
      local layer = {
        model = { path = MODEL }, run = { dir = dir }, checkpoint = { every = 10 }, lora = { rank = 0 },
        train = { iterations = 2, timestep_count = 2, lr = 0, clip_range = 0.2, max_grad_norm = 0 },
        sample = { batch_size = 4, steps = 4, resolution = 16 },
      }
      local cfg = dr.config.resolve(dr.rl.schema, layer, extra)
      local tr = dr.rl.trainer.new(cfg, { tasks = { {
        name = 'bright', prompts = dr.prompts.list { 'a', 'b', shuffle = false },
        reward = function(images) local m, out = images:mean({ 2, 3, 4 }), {}
          for i = 1, m:size(1) do out[i] = m[i]:item() end; return out end,
      } } })
      local m = tr:iteration()
      tr:iteration()
      os.execute('rm -rf ' .. dir)
      return tr.params, m
    end
    -- lr 0: the weights stay, so both runs see the same samples; compare the
    -- loss and the norm of the accumulated gradient (micro-batches run other
    -- kernel sizes: equal to rounding, not bit for bit)
    local _, m1 = train({})
    local _, m2 = train({ train = { grad_accum = 2 } })
    assert.is_true(math.abs(m1.loss - m2.loss) <= 1e-6 + 1e-5 * math.abs(m1.loss),
                   ('loss %.9g vs %.9g'):format(m1.loss, m2.loss))
    assert.is_true(math.abs(m1.grad_norm - m2.grad_norm) <= 1e-4 * m1.grad_norm,
                   ('grad norm %.9g vs %.9g'):format(m1.grad_norm, m2.grad_norm))
    local _, m3 = train({ train = { use_ema = true, ema_decay = 0.9, lr_schedule = 'cosine', lr = 1e-3 } })
    assert.is_true(m3.lr < 1e-3) -- decayed after the first steps
  end)

  it('trains only the first N denoising steps with train.timestep_window', function()
    local core_rl = require 'diffrl.rl.core'
    local real = core_rl.trajectory_step_loss
    local function trained(window, accumulate)
      local dir, seen = temp_dir(), {}
      local cfg = dr.config.resolve(dr.rl.schema, {
        model = { path = MODEL }, run = { dir = dir }, checkpoint = { every = 10 }, lora = { rank = 2 },
        train = { iterations = 3, timestep_count = 2, timestep_window = window, lr = 1e-3,
                  accumulate_timesteps = accumulate },
        sample = { batch_size = 2, steps = 6, resolution = 16 },
      })
      local tr = dr.rl.trainer.new(cfg, { tasks = { {
        name = 'bright', prompts = dr.prompts.list { 'a', 'b' },
        reward = function(images) local m, out = images:mean({ 2, 3, 4 }), {}
          for i = 1, m:size(1) do out[i] = m[i]:item() end; return out end,
      } } })
      core_rl.trajectory_step_loss = function(a) seen[#seen + 1] = a.index; return real(a) end
      local ok, err = pcall(function() for _ = 1, 3 do tr:iteration() end end)
      core_rl.trajectory_step_loss = real
      os.execute('rm -rf ' .. dir)
      assert(ok, err)
      return seen
    end
    for _, accumulate in ipairs { false, true } do
      local seen = trained(2, accumulate)
      assert.are.equal(6, #seen) -- 2 steps in each of 3 iterations
      for _, i in ipairs(seen) do assert.is_true(i == 1 or i == 2, 'trained step ' .. i .. ' of window 2') end
    end
    local later = false -- without a window the 6 steps are all candidates
    for _, i in ipairs(trained(0, false)) do later = later or i > 2 end
    assert.is_true(later, 'window 0 never trained a step past 2 in 6 draws')
  end)

  it('fine-tunes only the parameters train.trainable names, and saves and resumes those', function()
    local function bright(images) local m, out = images:mean({ 2, 3, 4 }), {}
      for i = 1, m:size(1) do out[i] = m[i]:item() end; return out end
    local function make(dir, trainable, lora)
      local cfg = dr.config.resolve(dr.rl.schema, {
        model = { path = MODEL }, run = { dir = dir }, checkpoint = { every = 1 }, lora = { rank = lora or 0 },
        train = { iterations = 2, timestep_count = 2, lr = 1e-2, clip_range = 0.2, trainable = trainable },
        sample = { batch_size = 4, steps = 4, resolution = 16 },
      })
      return dr.rl.trainer.new(cfg, { tasks = { { name = 'bright', prompts = dr.prompts.list { 'a', 'b' },
                                                   reward = bright } } })
    end
    local dir = temp_dir()
    local tr = make(dir, { 'attn2', 'conv_out' })
    local before = {}
    for _, np in ipairs(tr.pipe.unet:named_parameters()) do before[np[1]] = np[2]:clone() end
    for _, np in ipairs(tr.named) do
      assert.is_truthy(np[1]:find('attn2', 1, true) or np[1]:find('conv_out', 1, true), np[1])
    end
    assert.is_true(#tr.named > 4)
    tr:iteration(); tr:iteration()
    local moved, kept = 0, 0
    for _, np in ipairs(tr.pipe.unet:named_parameters()) do
      local same = (np[2] - before[np[1]]):abs():max():item() == 0
      if np[1]:find('attn2', 1, true) or np[1]:find('conv_out', 1, true) then
        if not same then moved = moved + 1 end
      else
        assert.is_true(same, np[1] .. ' is frozen but changed')
        kept = kept + 1
      end
    end
    assert.is_true(moved > 0 and kept > 0, ('moved %d, frozen %d'):format(moved, kept))
    local resumed = dr.rl.trainer.new(tr.cfg, { resume = dir, tasks = tr.tasks })
    for i, np in ipairs(resumed.named) do
      assert.are.equal(0, (np[2] - tr.named[i][2]):abs():max():item(), np[1])
    end
    os.execute('rm -rf ' .. dir)
    local ok, err = pcall(make, temp_dir(), { 'attn9' })
    assert.is_false(ok)
    assert.matches("train.trainable: no UNet parameter name contains 'attn9'", tostring(err), 1, true)
    ok, err = pcall(make, temp_dir(), { 'attn' }, 2)
    assert.is_false(ok)
    assert.matches('train.trainable and lora.rank > 0 exclude each other', tostring(err), 1, true)
  end)

  it('runs the pretraining loss on an image-text folder and the other advantage modes', function()
    local data = temp_dir()
    os.execute('mkdir -p ' .. data)
    local g = dr.Generator(3)
    for i = 1, 3 do
      dr.save_image(('%s/%d.png'):format(data, i), dr.rand({ 3, 16, 16 }, { generator = g }))
      local f = assert(io.open(('%s/%d.txt'):format(data, i), 'w'))
      f:write(('picture number %d\n'):format(i))
      f:close()
    end
    for _, mode in ipairs { 'per_prompt', 'group' } do
      local dir = temp_dir()
      local cfg = dr.config.resolve(dr.rl.schema, {
        model = { path = MODEL }, run = { dir = dir }, checkpoint = { every = 1 }, lora = { rank = 2 },
        train = { iterations = 2, timestep_count = 2, lr = 1e-3, advantage = mode, tracker_min_count = 2 },
        sample = { batch_size = 4, steps = 4, resolution = 16 },
        pretrain = { weight = 0.5, data = data, batch_size = 2 },
      })
      local tr = dr.rl.trainer.new(cfg, { tasks = { {
        name = 'jpeg', prompts = dr.prompts.list { 'a', 'b', shuffle = false },
        reward = dr.rewards.jpeg_compressibility {},
      } } })
      local m = tr:train()
      assert.is_true(m.pretrain_loss > 0 and m.pretrain_loss < math.huge, mode)
      assert.are.equal(0, m.skipped_steps)
      -- the checkpoint keeps the tracker and the data position
      local st = dr.rundir.load_checkpoint(dir .. '/checkpoints/step_000002')
      assert.are.equal(1, st.lua.pretrain_data.epoch) -- 4 pairs drawn from 3: into the second epoch
      if mode == 'per_prompt' then assert.is_table(st.lua.trackers.jpeg) end
      os.execute('rm -rf ' .. dir)
    end
    local ok, err = pcall(dr.config.resolve, dr.rl.schema, { model = { path = MODEL },
      sample = { resolution = 32 }, pretrain = { weight = 1, data = data } })
    assert.is_true(ok, err)
    os.execute('rm -rf ' .. data)
  end)

  it('adds a KL penalty to the starting model when train.kl_weight > 0', function()
    local dir = temp_dir()
    local cfg = dr.config.resolve(dr.rl.schema, {
      model = { path = MODEL }, run = { dir = dir }, checkpoint = { every = 10 }, lora = { rank = 0 },
      train = { iterations = 2, timestep_count = 2, lr = 1e-2, clip_range = 0.2, kl_weight = 0.1 },
      sample = { batch_size = 4, steps = 4, resolution = 16 },
    })
    local tr = dr.rl.trainer.new(cfg, { tasks = { {
      name = 'jpeg', prompts = dr.prompts.list { 'a', 'b' }, reward = dr.rewards.jpeg_compressibility {},
    } } })
    local m1, m2 = tr:iteration(), tr:iteration()
    os.execute('rm -rf ' .. dir)
    assert.is_number(m1.kl_base)
    assert.is_true(m1.kl_base >= 0 and m2.kl_base > m1.kl_base, ('%g then %g'):format(m1.kl_base, m2.kl_base))
  end)

  it('names unknown settings (no traceback), suggests the nearest, and lists them all in --help', function()
    local r = h.diffrl { 'run', RECIPE, 'model.path=' .. MODEL, 'train.iteratons=3' }
    assert.are.equal(1, r.code)
    assert.are.equal("diffrl: config: unknown key 'train.iteratons' (did you mean 'train.iterations'?)\n",
                     r.stderr) -- the message alone: no traceback of the config code
    r = h.diffrl { 'run', RECIPE, '--help' }
    assert.are.equal(0, r.code, r.stderr)
    for _, key in ipairs { 'run.dir', 'run.seed', 'model.path', 'train.iterations', 'sample.batch_size',
                           'sample.steps', 'checkpoint.every' } do
      assert.is_truthy(r.stdout:find(key, 1, true), key)
    end
    r = h.diffrl { 'run', RECIPE, '--resume', temp_dir() }
    assert.are.equal(1, r.code)
    assert.is_truthy(r.stderr:find('config.lua', 1, true), r.stderr)
  end)
end)
