-- The samplers reproduce diffusers' DDIMScheduler / DDPMScheduler (schedules,
-- timesteps, steps) and ddpo-pytorch's per-step log-probability, from golden files
-- (spec/fixtures/sampler, made by tools/fixtures/make_sampler_golden.py), and keep
-- the promises PPO relies on: scoring an action gives the log-prob sampling it gave,
-- one seed gives one trajectory, bad input is an error that names the problem.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local cjson = require 'cjson'

local sampler = dr.sampler
local schedule, ddim, ddpm = sampler.schedule, sampler.ddim, sampler.ddpm
local FIXTURES = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/sampler/'
local GOLDENS = { 'sd15', 'sd2v', 'linear_clip', 'cosine' }

local SD15 = { beta_schedule = 'scaled_linear', beta_start = 0.00085, beta_end = 0.012,
               steps_offset = 1, set_alpha_to_one = false, clip_sample = false }

-- Largest |a - b| / (1 + |b|) over all elements (a, b tensors or Lua lists): an
-- absolute difference for values up to 1, relative above.
local function max_diff(a, b)
  local x = type(a) == 'table' and a or a:reshape(-1):tolist()
  local y = type(b) == 'table' and b or b:reshape(-1):tolist()
  assert.are.equal(#y, #x, 'element counts differ')
  local m = 0
  for i = 1, #x do
    -- diffusers gets nan where 1 - alpha_prev - std^2, 0 in exact arithmetic, rounds
    -- below 0 (zero terminal SNR, eta 1, first step); we clamp it: finite there.
    local d = y[i] ~= y[i] and (x[i] - x[i] == 0 and 0 or math.huge)
              or math.abs(x[i] - y[i]) / (1 + math.abs(y[i]))
    if d ~= d then return math.huge end
    m = math.max(m, d)
  end
  return m
end

-- The goldens' torch (2.15.0, CPU) rounds float32 sqrt to within 1 ulp, not always
-- to nearest (numpy and we do), so a coefficient may differ from ours in its last
-- bit; pred_original_sample at high t divides by sqrt(alpha_cumprod) ~ 0.07 after a
-- cancelling subtraction and reaches |x| ~ 30: hence the relative part, and 5e-6
-- there (and for betas rescaled to zero SNR, computed through sqrt).
local function assert_close(a, b, tol, what)
  local d = max_diff(a, b)
  assert(d <= tol, ('%s: max |difference| / (1 + |expected|) %.3g > %.3g'):format(what, d, tol))
end

local function load_golden(name)
  local t, meta = dr.load(FIXTURES .. name .. '.safetensors')
  return t, cjson.decode(meta.config), cjson.decode(meta.cases)
end

describe('sampler.schedule against diffusers #binding #golden', function()
  for _, name in ipairs(GOLDENS) do
    it(name .. ': betas and alphas_cumprod to 1e-7 (5e-6 zero-SNR), timesteps exactly', function()
      local g, cfg = load_golden(name)
      local s = schedule.from_config(cfg)
      local tol = cfg.rescale_betas_zero_snr and 5e-6 or 1e-7
      assert_close(s.betas, g.betas, tol, 'betas')
      assert_close(s.alphas_cumprod, g.alphas_cumprod, tol, 'alphas_cumprod')
      for _, n in ipairs { 1, 7, 50, 333, 1000 } do
        assert.are.same(g['timesteps_' .. n]:tolist(), s:set_timesteps(n).timesteps)
      end
    end)
  end

  it('final_alpha_cumprod is 1 with set_alpha_to_one, else alphas_cumprod[0]', function()
    local s = schedule.from_config(SD15)
    assert.are.equal(s.alphas_cumprod[1], s.final_alpha_cumprod)
    assert.are.equal(1, schedule.from_config {}.final_alpha_cumprod)
  end)

  it('reads scheduler_config.json from a file or a model folder', function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute(('mkdir -p %s/scheduler'):format(h.shell_quote(dir))))
    h.write_file(dir .. '/scheduler/scheduler_config.json', cjson.encode {
      _class_name = 'PNDMScheduler', beta_schedule = 'scaled_linear', beta_start = 0.00085,
      beta_end = 0.012, set_alpha_to_one = false, skip_prk_steps = true, steps_offset = 1,
      trained_betas = cjson.null })
    local a = schedule.from_config(dir)
    local b = schedule.from_config(dir .. '/scheduler/scheduler_config.json')
    assert.are.same(schedule.from_config(SD15).alphas_cumprod, a.alphas_cumprod)
    assert.are.same(a.alphas_cumprod, b.alphas_cumprod)
    assert.are.same(a:set_timesteps(50).timesteps, b:set_timesteps(50).timesteps)
    os.execute('rm -rf ' .. h.shell_quote(dir))
  end)

  it('set_timesteps returns a new schedule and leaves the old one alone', function()
    local s = schedule.from_config(SD15)
    local s50 = s:set_timesteps(50)
    assert.is_nil(s.timesteps)
    assert.are.equal(50, #s50.timesteps)
    assert.are.equal(981, s50.timesteps[1])
    assert.are.equal(1, s50.timesteps[50])
  end)

  it('refuses bad configs, naming the key', function()
    assert.matches("unknown beta_schedule 'cubic'",
      h.error_of(schedule.from_config, { beta_schedule = 'cubic' }))
    assert.matches('thresholding = true .* not supported',
      h.error_of(schedule.from_config, { thresholding = true }))
    assert.matches("unknown prediction_type 'x0'",
      h.error_of(schedule.from_config, { prediction_type = 'x0' }))
    assert.matches("unknown timestep_spacing 'even'",
      h.error_of(schedule.from_config, { timestep_spacing = 'even' }))
    assert.matches('clip_sample must be true or false',
      h.error_of(schedule.from_config, { clip_sample = 'yes' }))
    assert.matches('steps %(1001%) cannot be larger than num_train_timesteps %(1000%)',
      h.error_of(function() schedule.from_config(SD15):set_timesteps(1001) end))
    assert.matches('cannot read /nonexistent',
      h.error_of(schedule.from_config, '/nonexistent'))
  end)
end)

local STEP = { ddim = ddim.step, ddpm = ddpm.step }

describe('sampler steps against diffusers #binding #golden', function()
  for _, name in ipairs(GOLDENS) do
    it(name .. ': DDIM (eta 0, 0.5, 1) and DDPM steps and log-probs to 1e-6 (x0 5e-6)', function()
      local g, cfg, cases = load_golden(name)
      local s = schedule.from_config(cfg):set_timesteps(50)
      local k = cfg.rescale_betas_zero_snr and 5 or 1 -- its alphas_cumprod differ in ulps
      for _, case in ipairs(cases) do
        local p = case.name .. '.'
        local opts = { noise = g[p .. 'noise'] }
        if case.method == 'ddim' then opts.eta = case.eta end
        local t = case.t
        local same = true
        for i = 2, #t do same = same and t[i] == t[1] end
        if same then t = t[1] end -- one number for the whole batch
        local prev, x0, lp = STEP[case.method](s, g[p .. 'model_output'], t, g[p .. 'sample'], opts)
        assert_close(prev, g[p .. 'prev_sample'], k * 1e-6, case.name .. ' prev_sample')
        assert_close(x0, g[p .. 'pred_original_sample'], 5e-6, case.name .. ' pred_original_sample')
        if g[p .. 'log_prob'] then
          assert_close(lp, g[p .. 'log_prob'], k * 1e-6, case.name .. ' log_prob')
        else
          assert.is_nil(lp, case.name .. ': eta 0 has no log_prob')
        end
      end
    end)
  end

  it('a batch of timesteps as a tensor equals the same list', function()
    local g, cfg = load_golden('sd15')
    local s = schedule.from_config(cfg):set_timesteps(50)
    local p = 'ddim_mixed_eta1.0.'
    local ts = { 981, 641, 1 }
    local a = { ddim.step(s, g[p .. 'model_output'], ts, g[p .. 'sample'], { eta = 1, noise = g[p .. 'noise'] }) }
    local b = { ddim.step(s, g[p .. 'model_output'], dr.tensor(ts, { dtype = 'int64' }), g[p .. 'sample'],
                          { eta = 1, noise = g[p .. 'noise'] }) }
    for i = 1, 3 do assert.are.equal(0, max_diff(a[i], b[i])) end
  end)
end)

describe('sampler log-probabilities #binding', function()
  local s = schedule.from_config(SD15):set_timesteps(20)
  local x = dr.randn(3, 4, 8, 8, { generator = dr.Generator(1) })
  local eps = dr.randn(3, 4, 8, 8, { generator = dr.Generator(2) })

  it('scoring a sampled prev_sample gives back exactly the log-prob of sampling it', function()
    for _, t in ipairs { s.timesteps[1], s.timesteps[10], s.timesteps[20] } do
      for _, eta in ipairs { 1.0, 0.3 } do
        local prev, _, lp = ddim.step(s, eps, t, x, { eta = eta, generator = dr.Generator(7) })
        local prev2, _, lp2 = ddim.step(s, eps, t, x, { eta = eta, prev_sample = prev })
        assert.are.equal(prev, prev2)
        assert.are.same(lp:tolist(), lp2:tolist())
      end
      local prev, _, lp = ddpm.step(s, eps, t, x, { generator = dr.Generator(7) })
      local _, _, lp2 = ddpm.step(s, eps, t, x, { prev_sample = prev })
      assert.are.same(lp:tolist(), lp2:tolist())
    end
  end)

  it('is the Gaussian log-density averaged over C, H, W', function()
    local t = s.timesteps[5]
    local noise = dr.randn(3, 4, 8, 8, { generator = dr.Generator(3) })
    local prev, _, lp = ddim.step(s, eps, t, x, { eta = 1, noise = noise })
    local mean = ddim.step(s, eps, t, x, { eta = 1, noise = dr.zeros(3, 4, 8, 8) })
    -- sigma_t from the DDIM paper's eq. 16, in double
    local a_t = s:alpha_cumprod(t)
    local a_prev = s:alpha_cumprod(ddim.prev_timestep(s, t))
    local sigma = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    local p, m = prev:tolist(), mean:tolist()
    for b = 1, 3 do
      local sum, n = 0, 0
      for c = 1, 4 do for i = 1, 8 do for j = 1, 8 do
        local d = p[b][c][i][j] - m[b][c][i][j]
        sum = sum - d * d / (2 * sigma ^ 2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        n = n + 1
      end end end
      h.assert_close(lp:tolist()[b], sum / n, 1e-5)
    end
  end)

  it('is differentiable in the model output (for the PPO ratio)', function()
    local t = s.timesteps[3]
    local prev = ddim.step(s, eps, t, x, { eta = 1, generator = dr.Generator(4) })
    local e = eps:clone():requires_grad_()
    local _, _, lp = ddim.step(s, e, t, x, { eta = 1, prev_sample = prev })
    lp:sum():backward()
    assert.is_true(e.grad:abs():sum():item() > 0)
  end)

  it('a zero-variance final step (set_alpha_to_one) scores 0, not nan', function()
    local s1 = schedule.from_config { set_alpha_to_one = true, clip_sample = false }:set_timesteps(10)
    local last = s1.timesteps[10]
    local _, _, lp = ddim.step(s1, eps, last, x, { eta = 1, generator = dr.Generator(1) })
    assert.are.same({ 0, 0, 0 }, lp:tolist())
  end)
end)

describe('sampler.sample #binding', function()
  local s = schedule.from_config(SD15)
  local function model(x, t) return x * (t / 2000) end

  local function run(seed, opts)
    local o = { scheduler = s, model = model, shape = { 2, 4, 8, 8 }, steps = 6, eta = 1.0,
                generator = dr.Generator(seed), keep_trajectory = true }
    for k, v in pairs(opts or {}) do o[k] = v ~= false and v or nil end -- false: leave out
    return sampler.sample(o)
  end

  it('the same generator seed gives the same trajectory twice', function()
    local x1, t1 = run(5)
    local x2, t2 = run(5)
    local x3 = run(6)
    assert.are.same(x1:tolist(), x2:tolist())
    assert.are.same(t1.log_probs:tolist(), t2.log_probs:tolist())
    for i = 1, 7 do assert.are.same(t1.latents[i]:tolist(), t2.latents[i]:tolist()) end
    assert.are_not.same(x1:tolist(), x3:tolist())
  end)

  it('keeps x_T..x_0, the timesteps and log_probs [B, steps] that rescore to themselves', function()
    local calls = {}
    local x0, traj = run(9, { progress = function(i, n) calls[#calls + 1] = i .. '/' .. n end })
    assert.are.same({ 831, 665, 499, 333, 167, 1 }, traj.timesteps)
    assert.are.equal(7, #traj.latents)
    assert.are.equal(x0, traj.latents[7])
    assert.are.same({ 2, 6 }, { traj.log_probs:size(1), traj.log_probs:size(2) })
    assert.are.same({ '1/6', '2/6', '3/6', '4/6', '5/6', '6/6' }, calls)
    local s6 = s:set_timesteps(6)
    for i, t in ipairs(traj.timesteps) do
      local _, _, lp = ddim.step(s6, model(traj.latents[i], t), t, traj.latents[i],
                                 { eta = 1, prev_sample = traj.latents[i + 1] })
      assert.are.same(traj.log_probs:select(2, i):tolist(), lp:tolist())
    end
  end)

  it('eta 0 is deterministic and has no log_probs; ddpm runs too', function()
    local lat = dr.randn(1, 4, 8, 8, { generator = dr.Generator(1) })
    local a, ta = run(1, { eta = 0, shape = false, latents = lat })
    local b = run(2, { eta = 0, shape = false, latents = lat })
    assert.are.same(a:tolist(), b:tolist())
    assert.is_nil(ta.log_probs)
    local _, td = run(3, { eta = false, method = 'ddpm' })
    assert.are.same({ 2, 6 }, { td.log_probs:size(1), td.log_probs:size(2) })
  end)

  it('classifier-free guidance runs the model once on the doubled batch', function()
    local seen = {}
    local function unet(x, t, cond)
      seen[#seen + 1] = x:size(1)
      return x * 0 + cond
    end
    local cond = dr.full({ 2, 4, 8, 8 }, 3)
    local uncond = dr.full({ 2, 4, 8, 8 }, 1)
    local out = sampler.cfg.predict(unet, dr.zeros(2, 4, 8, 8), 500, cond, uncond, 7.5)
    assert.are.same({ 4 }, seen)
    assert.are.equal(1 + 7.5 * (3 - 1), out:max():item())
    assert.are.equal(16, out:min():item())
    assert.are.equal(4 + 7.5 * (2 - 4), sampler.cfg.guide(dr.full({ 1 }, 4), dr.full({ 1 }, 2), 7.5):item())
  end)
end)

describe('sampler errors #binding', function()
  local s = schedule.from_config(SD15):set_timesteps(10)
  local x = dr.zeros(2, 4, 8, 8)

  it('name the shapes, options and timesteps that are wrong', function()
    assert.matches('model_output %[2, 4, 8, 4%] and sample %[2, 4, 8, 8%] must have the same shape',
      h.error_of(ddim.step, s, dr.zeros(2, 4, 8, 4), 901, x))
    assert.matches('noise %[1, 4, 8, 8%] and sample %[2, 4, 8, 8%]',
      h.error_of(ddim.step, s, x, 901, x, { eta = 1, noise = dr.zeros(1, 4, 8, 8) }))
    assert.matches('prev_sample %[2, 4, 8%] and sample',
      h.error_of(ddpm.step, s, x, 901, x, { prev_sample = dr.zeros(2, 4, 8) }))
    assert.matches('timestep 1000 is outside %[0, 999%]', h.error_of(ddim.step, s, x, 1000, x))
    assert.matches('3 timesteps given for a batch of 2', h.error_of(ddim.step, s, x, { 1, 2, 3 }, x))
    assert.matches("unknown option 'etta'", h.error_of(ddim.step, s, x, 901, x, { etta = 1 }))
    assert.matches('prev_sample given with eta = 0', h.error_of(ddim.step, s, x, 901, x, { prev_sample = x }))
    assert.matches('no inference steps', h.error_of(ddim.step, schedule.from_config(SD15), x, 901, x))
    assert.matches('timestep 900 is not in the schedule', h.error_of(ddpm.step, s, x, 900, x))
    assert.matches('give latents or shape', h.error_of(sampler.sample,
      { scheduler = s, model = function(y) return y end, steps = 3 }))
  end)

  it('are reported at the caller\'s line', function()
    local line, ok, err = h.line(), pcall(ddim.step, s, dr.zeros(2, 4, 8, 4), 901, x)
    assert.is_false(ok)
    assert.matches(h.escape_pattern(h.short_src() .. ':' .. line .. ':'), err)
  end)
end)
