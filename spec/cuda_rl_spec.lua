-- Sampling and RL training with run.device = 'cuda': the same seed gives the cpu's
-- images and log-probabilities (to float tolerance), rewards get their images on the
-- cpu, and a short training run moves the weights as the cpu run does.
local dr = require 'diffrl'
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')
local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'
local MODEL = SRC .. '/spec/fixtures/models/tiny-sd15'

local function temp_dir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute('mkdir -p ' .. p))
  return p
end

describe('cuda sampling and training #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  it('samples the cpu images from the same seed', function()
    local cpu = dr.pipeline.load(MODEL)
    local gpu = dr.pipeline.load(MODEL, { device = 'cuda' })
    local function opts()
      return { prompt = { 'a red circle', 'two blue squares' }, steps = 6, eta = 1, cfg = 4, seed = 3,
               height = 32, width = 32, keep_trajectory = true }
    end
    local a, la, ta = cpu:sample(opts())
    local b, lb, tb = gpu:sample(opts())
    assert.equal('cuda:0', lb.device)
    P.close(la, lb, 1e-4, 1e-3, 'latents')
    P.close(a, b, 1e-4, 1e-3, 'images')
    P.close(ta.log_probs, tb.log_probs, 1e-3, 1e-3, 'log-probabilities')
  end)

  it('trains LoRA on cuda as on the cpu', function()
    local function train(device)
      local dir = temp_dir()
      local cfg = dr.config.resolve(dr.rl.schema, {
        model = { path = MODEL }, run = { dir = dir, device = device },
        train = { iterations = 2, timestep_count = 2, lr = 1e-4 },
        sample = { batch_size = 4, steps = 4, resolution = 32 }, checkpoint = { every = 2 }, lora = { rank = 2 },
      })
      local seen = {}
      local tr = dr.rl.trainer.new(cfg, { tasks = { {
        name = 'bright', prompts = dr.prompts.list { 'a', 'b' },
        reward = function(images)
          seen[#seen + 1] = images.device
          local out = {}
          for i = 1, images:size(1) do out[i] = images:narrow(1, i, 1):mean():item() end
          return out
        end,
      } } })
      local m1, m2 = tr:iteration(), tr:iteration()
      local params = {}
      for i, p in ipairs(tr.params) do params[i] = p:detach():cpu():clone() end
      return dir, m1, m2, params, seen
    end
    local dc, c1, c2, pc = train('cpu')
    local dg, g1, g2, pg, seen = train('cuda')
    assert.same({ 'cpu', 'cpu' }, seen)
    assert.near(c1.reward_mean, g1.reward_mean, 1e-4)
    assert.is_true(g2.loss == g2.loss, 'loss is NaN')
    local worst = 0
    for i = 1, #pc do worst = math.max(worst, (pc[i] - pg[i]):abs():max():item()) end
    assert.is_true(worst < 5e-4, 'largest parameter difference after two iterations ' .. worst)
    -- the checkpoint written from cuda tensors loads on the cpu
    local t = dr.load(dg .. '/checkpoints/step_000002/tensors.safetensors')
    assert.is_true(next(t) ~= nil)
    os.execute('rm -rf ' .. dc .. ' ' .. dg)
  end)
end)
