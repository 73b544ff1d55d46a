-- diffrl.sampler.schedule: the noise schedule of a diffusers scheduler config
-- (scheduler_config.json), as diffusers' DDIMScheduler / DDPMScheduler build it.
--
--   local S = schedule.from_config(cfg)      -- a table, a scheduler_config.json path,
--                                            -- or a model folder (scheduler/ inside)
--   local S50 = S:set_timesteps(50)          -- a new schedule; S is unchanged
--   S50.timesteps                            -- {981, 961, ..., 1} (Lua list, descending)
--   S:alpha_cumprod(t)                       -- alphas_cumprod[t], t a 0-based timestep
--   S:tensor('alphas_cumprod')               -- float32 [num_train_timesteps]
--
-- Numbers: diffusers computes betas and alphas_cumprod in float32 torch; every value
-- here is the float32 it gets, held in a Lua number (torch.linspace's single
-- rounding of start + i * step, cumprod accumulated in double and stored in float32
-- as torch does on the CPU). Timesteps follow DDIMScheduler.set_timesteps exactly
-- (numpy's float arange and round-half-to-even included).
--
-- Unknown config keys are ignored (scheduler configs carry other schedulers' keys:
-- skip_prk_steps, _class_name, ...); known keys are type-checked. thresholding is
-- not supported (an error, not a silent no-op).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local F = require 'diffrl.core.factory'

local raise = api.raise
local M = {}

local f32_box = ffi.new('float[1]')
-- x rounded to the nearest float32 (every float32 op of torch rounds so).
local function f32(x)
  f32_box[0] = x
  return f32_box[0]
end
M.f32 = f32

-- numpy's round: half to even.
local function round_half_even(x)
  local r = math.floor(x + 0.5)
  if r - x == 0.5 and r % 2 ~= 0 then r = r - 1 end
  return r
end
M.round_half_even = round_half_even

local DEFAULTS = {
  num_train_timesteps = 1000, beta_start = 0.0001, beta_end = 0.02, beta_schedule = 'linear',
  clip_sample = true, set_alpha_to_one = true, steps_offset = 0, prediction_type = 'epsilon',
  thresholding = false, dynamic_thresholding_ratio = 0.995, clip_sample_range = 1.0,
  sample_max_value = 1.0, timestep_spacing = 'leading', rescale_betas_zero_snr = false,
  variance_type = 'fixed_small',
}
local CHOICES = {
  beta_schedule = { linear = true, scaled_linear = true, squaredcos_cap_v2 = true },
  prediction_type = { epsilon = true, v_prediction = true, sample = true },
  timestep_spacing = { leading = true, trailing = true, linspace = true },
  variance_type = { fixed_small = true, fixed_large = true },
}

local function choices_text(set)
  local names = {}
  for k in pairs(set) do names[#names + 1] = "'" .. k .. "'" end
  table.sort(names)
  return table.concat(names, ', ')
end

-- ---- betas -----------------------------------------------------------------------

-- torch.linspace(start, stop, n, dtype=float32) on the CPU: float32 ends and step,
-- start + step * i for the first half and stop - step * (n - 1 - i) for the rest,
-- each rounded once to float32.
local function linspace_f32(start, stop, n)
  local s, e = f32(start), f32(stop)
  if n == 1 then return { s } end
  local step = f32(f32(e - s) / (n - 1))
  local out, half = {}, math.floor(n / 2)
  for i = 0, n - 1 do
    out[i + 1] = i < half and f32(s + step * i) or f32(e - step * (n - 1 - i))
  end
  return out
end

-- diffusers' betas_for_alpha_bar (the "cosine" transform): doubles, then float32.
local function cosine_betas(n)
  local function alpha_bar(t) return math.cos((t + 0.008) / 1.008 * math.pi / 2) ^ 2 end
  local out = {}
  for i = 0, n - 1 do
    out[i + 1] = f32(math.min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999))
  end
  return out
end

-- torch.cumprod on a float32 CPU tensor: accumulated in double, stored in float32.
local function cumprod_f32(values)
  local out, acc = {}, 1
  for i = 1, #values do
    acc = acc * values[i]
    out[i] = f32(acc)
  end
  return out
end

-- diffusers' rescale_zero_terminal_snr (arXiv 2305.08891, Algorithm 1), float32.
local function rescale_zero_terminal_snr(betas)
  local n = #betas
  local alphas = {}
  for i = 1, n do alphas[i] = f32(1 - betas[i]) end
  local sq = cumprod_f32(alphas)
  for i = 1, n do sq[i] = f32(math.sqrt(sq[i])) end
  local s0, sT = sq[1], sq[n]
  local scale = f32(s0 / f32(s0 - sT))
  local bar = {}
  for i = 1, n do
    local v = f32(f32(sq[i] - sT) * scale)
    bar[i] = f32(v * v)
  end
  local out = { f32(1 - bar[1]) }
  for i = 2, n do out[i] = f32(1 - f32(bar[i] / bar[i - 1])) end
  return out
end

-- ---- config ----------------------------------------------------------------------

local function read_json(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local text = f:read('*a') -- nil for a directory
  f:close()
  if text == nil then return nil end
  local ok, cjson = pcall(require, 'cjson.safe')
  if not ok then raise('schedule: reading ' .. path .. ' needs lua-cjson (apt-get install lua-cjson)') end
  local cfg, err = cjson.decode(text)
  if cfg == nil then raise(('schedule: %s: invalid JSON: %s'):format(path, tostring(err))) end
  if type(cfg) ~= 'table' then raise(('schedule: %s: expected a JSON object'):format(path)) end
  for k, v in pairs(cfg) do
    if v == cjson.null then cfg[k] = nil end
  end
  return cfg
end

local function load_config(src)
  if type(src) == 'table' then return src, 'config' end
  if type(src) ~= 'string' then
    raise('schedule.from_config: expected a config table or a path, got ' .. type(src))
  end
  for _, p in ipairs { src, src .. '/scheduler_config.json', src .. '/scheduler/scheduler_config.json' } do
    local cfg = read_json(p)
    if cfg then return cfg, p end
  end
  raise(('schedule.from_config: cannot read %s (nor %s/scheduler_config.json, ' ..
         '%s/scheduler/scheduler_config.json)'):format(src, src, src))
end

local function check_config(raw, where)
  local cfg = {}
  for k, v in pairs(raw) do cfg[k] = v end
  for k, v in pairs(DEFAULTS) do
    if cfg[k] == nil then cfg[k] = v end
  end
  local function bad(key, expected)
    raise(('schedule: %s: %s must be %s, got %s'):format(where, key, expected, tostring(cfg[key])))
  end
  for k, d in pairs(DEFAULTS) do
    local v = cfg[k]
    if type(d) == 'boolean' and type(v) ~= 'boolean' then bad(k, 'true or false') end
    if type(d) == 'number' and type(v) ~= 'number' then bad(k, 'a number') end
    if CHOICES[k] and not CHOICES[k][v] then
      raise(("schedule: %s: unknown %s '%s' (supported: %s)"):format(where, k, tostring(v),
            choices_text(CHOICES[k])))
    end
  end
  local n = cfg.num_train_timesteps
  if n % 1 ~= 0 or n < 1 then bad('num_train_timesteps', 'a positive integer') end
  if cfg.steps_offset % 1 ~= 0 or cfg.steps_offset < 0 then bad('steps_offset', 'an integer >= 0') end
  if cfg.thresholding then
    raise(('schedule: %s: thresholding = true (dynamic thresholding) is not supported; it is ' ..
           'meant for pixel-space models, not latent diffusion'):format(where))
  end
  if cfg.trained_betas ~= nil then
    local tb = cfg.trained_betas
    if type(tb) ~= 'table' or #tb ~= n then
      raise(('schedule: %s: trained_betas must be a list of num_train_timesteps (%d) numbers')
        :format(where, n))
    end
  end
  return cfg
end

-- ---- the schedule ----------------------------------------------------------------

local Schedule = {}
Schedule.__index = Schedule

function M.from_config(src)
  local raw, where = load_config(src)
  local cfg = check_config(raw, where)
  local n = cfg.num_train_timesteps
  local betas
  if cfg.trained_betas ~= nil then
    betas = {}
    for i = 1, n do betas[i] = f32(cfg.trained_betas[i]) end
  elseif cfg.beta_schedule == 'linear' then
    betas = linspace_f32(cfg.beta_start, cfg.beta_end, n)
  elseif cfg.beta_schedule == 'scaled_linear' then
    betas = linspace_f32(cfg.beta_start ^ 0.5, cfg.beta_end ^ 0.5, n)
    for i = 1, n do betas[i] = f32(betas[i] * betas[i]) end
  else
    betas = cosine_betas(n)
  end
  if cfg.rescale_betas_zero_snr then betas = rescale_zero_terminal_snr(betas) end
  local alphas = {}
  for i = 1, n do alphas[i] = f32(1 - betas[i]) end
  local ac = cumprod_f32(alphas)
  return setmetatable({
    config = cfg,
    num_train_timesteps = n,
    prediction_type = cfg.prediction_type,
    betas = betas,                   -- Lua lists: index t + 1 for timestep t
    alphas = alphas,
    alphas_cumprod = ac,
    final_alpha_cumprod = cfg.set_alpha_to_one and 1 or ac[1],
    init_noise_sigma = 1.0,
  }, Schedule)
end

-- alphas_cumprod[t] for a 0-based timestep t (an integer in [0, T-1]).
function Schedule.alpha_cumprod(s, t, op)
  local v = s.alphas_cumprod[t + 1]
  if v == nil or t % 1 ~= 0 then
    raise(('%s: timestep %s is outside [0, %d]'):format(op or 'alpha_cumprod', tostring(t),
          s.num_train_timesteps - 1))
  end
  return v
end

-- numpy.arange(start, stop, step) for floats: ceil((stop - start) / step) values
-- start + i * delta, delta = (start + step) - start (numpy's fill).
local function np_arange(start, stop, step)
  local len = math.ceil((stop - start) / step)
  local out = {}
  if len <= 0 then return out end
  local delta = (start + step) - start
  for i = 0, len - 1 do out[i + 1] = start + i * delta end
  if len >= 2 then out[2] = start + step end
  return out
end

-- diffusers' DDIMScheduler.set_timesteps (DDPMScheduler's is the same for these
-- spacings). Returns a new schedule with num_inference_steps and timesteps.
function Schedule.set_timesteps(s, steps)
  local n = s.num_train_timesteps
  if type(steps) ~= 'number' or steps % 1 ~= 0 or steps < 1 then
    raise(('set_timesteps: steps must be a positive integer, got %s'):format(tostring(steps)))
  end
  if steps > n then
    raise(('set_timesteps: steps (%d) cannot be larger than num_train_timesteps (%d)'):format(steps, n))
  end
  local cfg, ts = s.config, {}
  if cfg.timestep_spacing == 'linspace' then
    -- np.linspace(0, n - 1, steps).round()[::-1]
    local step = steps > 1 and (n - 1) / (steps - 1) or 0
    for i = 0, steps - 1 do
      local v = (i == steps - 1 and steps > 1) and (n - 1) or i * step
      ts[steps - i] = round_half_even(v)
    end
  elseif cfg.timestep_spacing == 'leading' then
    local ratio = math.floor(n / steps)
    for i = 0, steps - 1 do ts[steps - i] = i * ratio + cfg.steps_offset end
  else -- trailing: np.round(np.arange(n, 0, -n / steps)) - 1
    local vals = np_arange(n, 0, -(n / steps))
    for i, v in ipairs(vals) do ts[i] = round_half_even(v) - 1 end
  end
  local out = setmetatable({}, Schedule)
  for k, v in pairs(s) do out[k] = v end
  out.num_inference_steps = #ts
  out.timesteps = ts
  return out
end

-- A float32 tensor of one of the per-timestep lists ('betas', 'alphas',
-- 'alphas_cumprod'), or an int64 tensor of 'timesteps'.
function Schedule.tensor(s, name)
  local list = s[name]
  if name ~= 'betas' and name ~= 'alphas' and name ~= 'alphas_cumprod' and name ~= 'timesteps'
     or list == nil then
    raise(("schedule: tensor: unknown list '%s' (betas, alphas, alphas_cumprod, timesteps " ..
           "after set_timesteps)"):format(tostring(name)))
  end
  return F.tensor(list, { dtype = name == 'timesteps' and 'int64' or 'float32' })
end

function Schedule.__tostring(s)
  local c = s.config
  return ('Schedule(%s %g..%g, %d train steps, %s, %s%s)'):format(c.beta_schedule, c.beta_start,
    c.beta_end, s.num_train_timesteps, s.prediction_type, c.timestep_spacing,
    s.num_inference_steps and (', ' .. s.num_inference_steps .. ' inference steps') or '')
end

function M.is_schedule(x) return getmetatable(x) == Schedule end

return M
