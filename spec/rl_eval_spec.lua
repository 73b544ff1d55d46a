-- The trainer's held-out evaluation, prompt groups and recipe-supplied pretraining
-- data (lua/diffrl/rl/trainer.lua) on the tiny SD1.5-style fixture pipeline:
-- eval.jsonl at step 0 and at the end with the same noise, heldout/before.png and
-- after.png, the end-of-run table, images_per_prompt groups reaching the reward as
-- meta.groups, a pretrain_data source whose position the checkpoint keeps, and a
-- resumed run whose eval.jsonl equals the uninterrupted run's.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'
local MODEL = SRC .. '/spec/fixtures/models/tiny-sd15'

local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function cfg_for(dir, extra)
  local layer = {
    model = { path = MODEL }, run = { dir = dir }, checkpoint = { every = 1 }, lora = { rank = 2 },
    train = { iterations = 2, timestep_count = 1, lr = 1e-3 },
    sample = { batch_size = 4, steps = 3, resolution = 16 },
  }
  return dr.config.resolve(dr.rl.schema, layer, extra or {})
end

-- A reward that records what it saw: mean brightness, plus the groups.
local function recording_reward(log)
  return function(images, prompts, meta)
    log[#log + 1] = { n = #prompts, groups = meta.groups, heldout = meta.heldout, prompts = prompts }
    local m = images:mean({ 2, 3, 4 }):tolist()
    return m
  end
end

local function lines(path)
  local out = {}
  local f = io.open(path)
  if not f then return out end
  for l in f:lines() do out[#out + 1] = l end
  f:close()
  return out
end

describe('rl trainer: held-out evaluation and groups', function()
  it('evaluates held-out prompts before and after with the same noise, and prints the table', function()
    local dir = temp_dir()
    local seen = {}
    local tr = dr.rl.trainer.new(cfg_for(dir), { tasks = { {
      name = 'bright', prompts = dr.prompts.list { 'a', 'b', shuffle = false },
      reward = recording_reward(seen), heldout = { 'held one', 'held two', 'held three' },
    } } })
    tr:train()
    local ev = tr.run:read_log('eval')
    assert.are.equal(2, #ev)
    assert.are.equal(0, ev[1].step)
    assert.are.equal(2, ev[2].step)
    assert.is_number(ev[1]['heldout_reward/bright'])
    assert.is_number(ev[2]['heldout_std/bright'])
    for _, name in ipairs { 'before', 'after' } do
      local txt = h.read_file(dir .. '/heldout/' .. name .. '.txt')
      assert.are.equal('[bright] held one\n[bright] held two\n[bright] held three\n', txt)
      assert.is_truthy(io.open(dir .. '/heldout/' .. name .. '.png'))
    end
    -- held-out calls: 3 prompts in chunks of the batch size (4), marked heldout
    local held = {}
    for _, c in ipairs(seen) do if c.heldout then held[#held + 1] = c end end
    assert.are.equal(2, #held)
    assert.are.same({ 'held one', 'held two', 'held three' }, held[1].prompts)
    -- the table: one row per task with both columns
    local rows = tr:summary()
    assert.are.equal(1, #rows)
    assert.are.equal(ev[1]['heldout_reward/bright'], rows[1].heldout_before)
    assert.are.equal(ev[2]['heldout_reward/bright'], rows[1].heldout_after)
    local text = dr.rl.trainer.summary_text(rows)
    assert.is_truthy(text:find('held-out reward', 1, true), text)
    assert.is_truthy(text:find('^task.*\nbright%s+%-?%d%.%d+ %-> %-?%d%.%d+'), text)
    -- per-image held-out scores, paired by position into the win rate after / before
    local before, after = ev[1]['heldout_scores/bright'], ev[2]['heldout_scores/bright']
    assert.are.equal(3, #before)
    assert.are.equal(3, #after)
    assert.is_true(math.abs(ev[1]['heldout_reward/bright'] - (before[1] + before[2] + before[3]) / 3) < 1e-6)
    local wins = 0
    for i = 1, 3 do wins = wins + (after[i] > before[i] and 1 or after[i] == before[i] and 0.5 or 0) end
    assert.are.equal(3, rows[1].heldout_win.n)
    assert.is_true(math.abs(rows[1].heldout_win.rate - wins / 3) < 1e-12)
    assert.is_truthy(text:find(('win rate after/before'), 1, true), text)
    assert.is_truthy(text:find(('%.2f ['):format(wins / 3), 1, true), text)
    os.execute('rm -rf ' .. dir)

    -- the same seed, a fresh run: the held-out numbers repeat exactly
    local dir2 = temp_dir()
    local tr2 = dr.rl.trainer.new(cfg_for(dir2), { tasks = { {
      name = 'bright', prompts = dr.prompts.list { 'a', 'b', shuffle = false },
      reward = recording_reward({}), heldout = { 'held one', 'held two', 'held three' },
    } } })
    tr2:train()
    local ev2 = tr2.run:read_log('eval')
    for i = 1, 2 do ev[i].time_s, ev2[i].time_s = nil, nil end
    assert.are.same(ev, ev2)
    os.execute('rm -rf ' .. dir2)
  end)

  it('samples images_per_prompt images of each prompt and passes the groups to the reward', function()
    local dir = temp_dir()
    local seen = {}
    local tr = dr.rl.trainer.new(cfg_for(dir, { train = { iterations = 1 } }), { tasks = { {
      name = 'grouped', prompts = dr.prompts.list { 'x', 'y', 'z', shuffle = false },
      reward = recording_reward(seen), images_per_prompt = 2, heldout = { 'h' },
    } } })
    tr:train()
    local train_calls = {}
    for _, c in ipairs(seen) do if not c.heldout then train_calls[#train_calls + 1] = c end end
    assert.are.equal(1, #train_calls)
    assert.are.same({ 'x', 'x', 'y', 'y' }, train_calls[1].prompts)
    assert.are.same({ 1, 1, 2, 2 }, train_calls[1].groups)
    -- held out: each prompt images_per_prompt times too
    assert.are.same({ 'h', 'h' }, seen[1].prompts)
    assert.is_true(seen[1].heldout)
    os.execute('rm -rf ' .. dir)
  end)

  it('eval.seeds = N: N held-out images a prompt, each from its own seed, whatever the batch', function()
    local function step0(batch, heldout)
      local dir, seen = temp_dir(), {}
      local tr = dr.rl.trainer.new(cfg_for(dir, { train = { iterations = 1 }, sample = { batch_size = batch },
                                                  eval = { seed = 3, seeds = 2 } }), { tasks = { {
        name = 'bright', prompts = dr.prompts.list { 'a', shuffle = false }, reward = recording_reward(seen),
        heldout = heldout,
      } } })
      tr:train()
      local ev, row = tr.run:read_log('eval'), tr:summary()[1]
      os.execute('rm -rf ' .. dir)
      return ev[1]['heldout_scores/bright'], seen[1], row
    end
    local a, seen, row = step0(4, { 'h1', 'h2', 'h3' })
    assert.are.same({ 'h1', 'h1', 'h2', 'h2' }, seen.prompts) -- the first chunk of 4
    assert.are.same({ 1, 1, 2, 2 }, seen.groups)
    assert.are.equal(6, #a)
    assert.are.equal(6, row.heldout_win.n)
    local b = step0(2, { 'h1', 'h2', 'h3' })
    for i = 1, 6 do assert.is_true(math.abs(a[i] - b[i]) < 1e-5, ('image %d: %.7f, %.7f'):format(i, a[i], b[i])) end
    local c = step0(4, { 'h2' }) -- h2's two images alone: the same noise as among the others
    for i = 1, 2 do assert.is_true(math.abs(a[2 + i] - c[i]) < 1e-5) end
    assert.is_true(a[3] ~= a[4]) -- seed 3 and seed 4 differ
  end)

  it("samples a task's own batch_size, the others sample.batch_size", function()
    local dir = temp_dir()
    local seen_big, seen_small = {}, {}
    local tr = dr.rl.trainer.new(cfg_for(dir, { train = { iterations = 1 } }), { tasks = {
      { name = 'big', prompts = dr.prompts.list { 'p', 'q', 'r', shuffle = false }, reward = recording_reward(seen_big),
        batch_size = 6, images_per_prompt = 2 },
      { name = 'small', prompts = dr.prompts.list { 's', shuffle = false }, reward = recording_reward(seen_small) },
    } })
    tr:train()
    assert.are.same({ 'p', 'p', 'q', 'q', 'r', 'r' }, seen_big[1].prompts)
    assert.are.same({ 1, 1, 2, 2, 3, 3 }, seen_big[1].groups)
    assert.are.equal(4, seen_small[1].n)
    assert.are.equal(10, tr.run:read_log('metrics')[1].images)
    os.execute('rm -rf ' .. dir)
  end)

  it("a task's weight scales its loss: weight 0 leaves the trained weights as they were", function()
    local function trained(weight)
      local dir = temp_dir()
      local tr = dr.rl.trainer.new(cfg_for(dir, { train = { iterations = 1, weight_decay = 0 } }), { tasks = { {
        name = 't', prompts = dr.prompts.list { 'p', 'q', shuffle = false }, reward = recording_reward({}),
        images_per_prompt = 2, weight = weight } } })
      local before = {}
      for i, p in ipairs(tr.params) do before[i] = p:detach():clone() end
      tr:train()
      local moved = 0
      for i, p in ipairs(tr.params) do moved = math.max(moved, (p:detach() - before[i]):abs():max():item()) end
      os.execute('rm -rf ' .. dir)
      return moved
    end
    assert.are.equal(0, trained(0))
    assert.is_true(trained(1) > 0)
  end)

  it("credit = 'leave_one_out': the reward judges every group again without each image", function()
    local dir, seen = temp_dir(), {}
    local record = recording_reward(seen)
    local tr = dr.rl.trainer.new(cfg_for(dir, { train = { iterations = 1 } }), { tasks = { {
      name = 'fair', prompts = dr.prompts.list { 'x', 'y', shuffle = false }, images_per_prompt = 2,
      credit = 'leave_one_out',
      reward = dr.rewards.group_level(function(images, prompts, meta)
        record(images, prompts, meta)
        return images:mean():item() -- one score per group
      end, 'fair'),
    } } })
    tr:train()
    -- the batch's two groups of 2 (one call per group), then the 4 leave-one-out
    -- subsets of one image each, in groups of their own
    assert.are.equal(6, #seen)
    for i = 1, 2 do assert.are.same({ 2, { i, i } }, { seen[i].n, seen[i].groups }) end
    for i = 3, 6 do assert.are.same({ 1, { i - 2 } }, { seen[i].n, seen[i].groups }) end
    assert.are.same({ 'x' }, seen[3].prompts)
    assert.are.same({ 'y' }, seen[6].prompts)
    local m = tr.run:read_log('metrics')[1]
    assert.are.equal(4, m.images)
    assert.is_true(m['reward_mean/fair'] > 0) -- the groups' scores, not the credits (which sum to 0)
    os.execute('rm -rf ' .. dir)
  end)

  it('names bad task fields and a batch that is not a multiple of the group', function()
    local cfg = cfg_for(temp_dir())
    local function new(task) return pcall(dr.rl.trainer.new, cfg, { tasks = { task } }) end
    local base = function()
      return { name = 't', prompts = dr.prompts.list { 'a' }, reward = function() return { 0 } end }
    end
    local t = base(); t.images_per_prompt = 3
    local ok, err = new(t)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find('sample.batch_size = 4 is not a multiple of images_per_prompt = 3', 1, true), err)
    t = base(); t.batch_size, t.images_per_prompt = 6, 4
    ok, err = new(t)
    assert.is_truthy(tostring(err):find('task t: batch_size = 6 is not a multiple of images_per_prompt = 4', 1, true),
                     err)
    t = base(); t.batch_size = 2.5
    ok, err = new(t)
    assert.is_truthy(tostring(err):find('batch_size must be an integer >= 1, got 2.5', 1, true), err)
    t = base(); t.heldout = { 'a', 5 }
    ok, err = new(t)
    assert.is_truthy(tostring(err):find('heldout[2] is a number', 1, true), err)
    t = base(); t.credit = 'shapley'
    ok, err = new(t)
    assert.is_truthy(tostring(err):find("task t: credit must be 'group' or 'leave_one_out', got shapley", 1, true), err)
    t = base(); t.credit = 'leave_one_out'
    ok, err = new(t)
    assert.is_truthy(tostring(err):find("credit = 'leave_one_out' needs images_per_prompt >= 2", 1, true), err)
    t = base(); t.held_out = { 'a' }
    ok, err = new(t)
    assert.is_truthy(tostring(err):find("unknown field 'held_out'", 1, true), err)
  end)

  it('reads pretrain.data from webdataset shards, skipping a damaged sample and going on', function()
    local dir = temp_dir()
    local list = { SRC .. '/spec/fixtures/data/shard-000.tar', SRC .. '/spec/fixtures/data/damaged.tar' }
    local cfg = cfg_for(dir, { train = { iterations = 3 }, pretrain = { weight = 0.5, batch_size = 4 } })
    cfg.pretrain.data = nil
    local src = require('diffrl.data.shards').open(list, { resolution = 16, seed = 0, log = function() end })
    local tr = dr.rl.trainer.new(cfg, { tasks = { {
      name = 'bright', prompts = dr.prompts.list { 'a', 'b', shuffle = false }, reward = recording_reward({}),
    } }, pretrain_data = src })
    local m = tr:train()
    assert.is_true(m.pretrain_loss > 0 and m.pretrain_loss < math.huge)
    assert.is_true(src.stats.skipped >= 1, 'the damaged shard was read')
    os.execute('rm -rf ' .. dir)
    -- and through the config: pretrain.data names the shards
    local dir2 = temp_dir()
    local cfg2 = cfg_for(dir2, { train = { iterations = 1 }, pretrain = { weight = 0.5, batch_size = 2,
                                                                            data = SRC .. '/spec/fixtures/data' } })
    local tr2 = dr.rl.trainer.new(cfg2, { tasks = { {
      name = 'bright', prompts = dr.prompts.list { 'a', shuffle = false }, reward = recording_reward({}),
    } } })
    assert.is_true(tr2:train().pretrain_loss > 0)
    os.execute('rm -rf ' .. dir2)
  end)

  it('takes the pretraining pairs from the recipe and resumes eval.jsonl exactly', function()
    local a, b = temp_dir(), temp_dir()
    local function pairs_source()
      return require('diffrl.data.shapes').open { seed = 3, resolution = 16, max_objects = 1 }
    end
    local function task()
      return { name = 'bright', prompts = dr.prompts.list { 'a', 'b', shuffle = false },
               reward = recording_reward({}), heldout = { 'h1', 'h2' } }
    end
    local extra = { train = { iterations = 3 }, pretrain = { weight = 0.5, batch_size = 2 }, eval = { every = 2 } }
    local tr = dr.rl.trainer.new(cfg_for(a, extra), { tasks = { task() }, pretrain_data = pairs_source() })
    local m = tr:train()
    assert.is_true(m.pretrain_loss > 0 and m.pretrain_loss < math.huge)
    local st = dr.rundir.load_checkpoint(a .. '/checkpoints/step_000003')
    assert.are.equal(6, st.lua.pretrain_data.count) -- 3 steps x 2 pairs
    local ev = tr.run:read_log('eval')
    assert.are.same({ 0, 2, 3 }, { ev[1].step, ev[2].step, ev[3].step })

    -- b: stop after 2 iterations (as if killed after checkpoint 2), then resume
    local tb = dr.rl.trainer.new(cfg_for(b, extra), { tasks = { task() }, pretrain_data = pairs_source() })
    tb:iteration()
    tb:iteration()
    tb.run:close()
    -- a line of a later evaluation that the resume must drop
    local f = assert(io.open(b .. '/eval.jsonl', 'a'))
    f:write('{"step":3,"heldout_reward/bright":99}\n')
    f:close()
    local cfg_b = cfg_for(b, extra)
    local tr2 = dr.rl.trainer.new(cfg_b, { tasks = { task() }, pretrain_data = pairs_source(), resume = b })
    tr2:train()
    -- tb never ran the step-0 evaluation (train() does): compare from step 2 on
    local ea, eb = lines(a .. '/eval.jsonl'), lines(b .. '/eval.jsonl')
    local function strip(l) return (l:gsub('"time_s":[^,}]*,?', '')) end
    assert.are.equal(2, #eb)
    assert.are.equal(strip(ea[2]), strip(eb[1]))
    assert.are.equal(strip(ea[3]), strip(eb[2]))
    os.execute('rm -rf ' .. a .. ' ' .. b)
  end)

  it('runs the cosine schedule over every optimizer step, the pretraining steps too', function()
    local dir = temp_dir()
    -- 1 policy step + 1 L_pre step per iteration, 2 iterations: 4 steps in all
    local extra = { train = { iterations = 2, lr_schedule = 'cosine', lr = 1e-3 },
                    pretrain = { weight = 0.5, batch_size = 2 } }
    local tr = dr.rl.trainer.new(cfg_for(dir, extra), { tasks = { {
      name = 'bright', prompts = dr.prompts.list { 'a', 'b', shuffle = false }, reward = recording_reward({}),
    } }, pretrain_data = require('diffrl.data.shapes').open { seed = 3, resolution = 16, max_objects = 1 } })
    tr:train()
    local rows = tr.run:read_log('metrics')
    assert.are.equal(2, #rows)
    -- after iteration 1 (step 2 of 4) the cosine is half way: lr / 2, not already 0
    assert.is_true(math.abs(rows[1].lr - 0.5e-3) < 1e-12, tostring(rows[1].lr))
    assert.is_true(math.abs(rows[2].lr) < 1e-12, tostring(rows[2].lr))
    os.execute('rm -rf ' .. dir)
  end)
end)
