-- Optimizers follow torch.optim's update rules exactly (checked against the
-- formulas evaluated in double precision here), and clip/EMA/schedules behave.
local dr = require 'diffrl'

local function close(a, b, tol)
  for i = 1, #a do
    assert(math.abs(a[i] - b[i]) <= (tol or 1e-5) * (1 + math.abs(b[i])),
      ('element %d: %.9g vs %.9g'):format(i, a[i], b[i]))
  end
end

-- Three steps with fixed gradients; returns the parameter values.
local function run(make_opt, grads)
  local p = dr.tensor { 0.5, -1.0, 2.0 }:requires_grad_()
  local opt = make_opt({ p })
  for _, g in ipairs(grads) do
    p.grad = dr.tensor(g)
    opt:step()
  end
  return p:tolist()
end

local grads = { { 0.1, -0.2, 0.3 }, { -0.4, 0.5, 0.05 }, { 1.0, 0.0, -2.0 } }

describe('dr.optim #binding', function()
  it('AdamW matches torch.optim.AdamW (decoupled weight decay, bias correction)', function()
    local lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.01
    local p, m, v = { 0.5, -1.0, 2.0 }, { 0, 0, 0 }, { 0, 0, 0 }
    for t, g in ipairs(grads) do
      for i = 1, 3 do
        p[i] = p[i] * (1 - lr * wd)
        m[i] = b1 * m[i] + (1 - b1) * g[i]
        v[i] = b2 * v[i] + (1 - b2) * g[i] ^ 2
        local denom = math.sqrt(v[i]) / math.sqrt(1 - b2 ^ t) + eps
        p[i] = p[i] - lr / (1 - b1 ^ t) * m[i] / denom
      end
    end
    close(run(function(ps) return dr.optim.AdamW(ps, { lr = lr, weight_decay = wd }) end, grads), p)
  end)

  it('SGD matches torch.optim.SGD with momentum, dampening, weight decay, nesterov', function()
    local function reference(lr, mom, damp, wd, nesterov)
      local p, buf = { 0.5, -1.0, 2.0 }, nil
      for t, g in ipairs(grads) do
        buf = buf or {}
        for i = 1, 3 do
          local d = g[i] + wd * p[i]
          if mom ~= 0 then
            buf[i] = t == 1 and d or mom * buf[i] + (1 - damp) * d
            d = nesterov and d + mom * buf[i] or buf[i]
          end
          p[i] = p[i] - lr * d
        end
      end
      return p
    end
    for _, c in ipairs { { 0.1, 0, 0, 0, false }, { 0.1, 0.9, 0, 0.01, false },
                         { 0.1, 0.9, 0.1, 0, false }, { 0.05, 0.9, 0, 0.01, true } } do
      local got = run(function(ps)
        return dr.optim.SGD(ps, { lr = c[1], momentum = c[2], dampening = c[3],
                                  weight_decay = c[4], nesterov = c[5] })
      end, grads)
      close(got, reference(unpack(c)))
    end
  end)

  it('clips the global gradient norm and returns the norm before clipping', function()
    local a, b = dr.zeros(2):requires_grad_(), dr.zeros(1):requires_grad_()
    a.grad, b.grad = dr.tensor { 3, 0 }, dr.tensor { 4 }
    local norm = dr.optim.clip_grad_norm_({ a, b }, 1)
    assert.are.near(5, norm, 1e-6)
    close(a.grad:tolist(), { 0.6, 0 }, 1e-5)
    close(b.grad:tolist(), { 0.8 }, 1e-5)
    assert.are.near(1, dr.optim.clip_grad_norm_({ a, b }, 2), 1e-5) -- under the limit: unchanged
    close(b.grad:tolist(), { 0.8 }, 1e-5)
  end)

  it('keeps an exponential moving average of parameters', function()
    local p = dr.zeros(2):requires_grad_()
    local ema = dr.optim.EMA({ p }, 0.9)
    dr.no_grad(function() p:fill_(1) end)
    ema:update()
    ema:update()
    close(ema.shadow[1]:tolist(), { 0.19, 0.19 }, 1e-6) -- 0.1 + 0.9*0.1
    ema:copy_to()
    close(p:tolist(), { 0.19, 0.19 }, 1e-6)
  end)

  it('has warmup and cosine schedules', function()
    local cos = dr.optim.schedules.cosine(1.0, 110, 10, 0.1)
    assert.are.near(0.5, cos(5), 1e-12)
    assert.are.near(1.0, cos(10), 1e-12)
    assert.are.near(0.55, cos(60), 1e-12)
    assert.are.near(0.1, cos(110), 1e-12)
    assert.are.near(0.25, dr.optim.schedules.warmup(1, 4)(1), 1e-12)
  end)

  it('names bad options and arguments', function()
    local p = dr.zeros(2):requires_grad_()
    assert.has_error(function() dr.optim.AdamW({ p }, { learning_rate = 1 }) end,
      "AdamW: unknown option 'learning_rate'")
    assert.has_error(function() dr.optim.SGD({ p }, {}) end, 'SGD: option lr is required')
    assert.has_error(function() dr.optim.AdamW({ 1 }) end, 'AdamW: params[1] is a number, not a tensor')
    local ok, err = pcall(dr.adamw_step_, p, dr.zeros(2), dr.zeros(2), dr.zeros(2), 0.1, 0.9, 0.999,
                          1e-8, 0, 1)
    assert.is_false(ok)
    assert.truthy(err:find('requires grad cannot be modified in place', 1, true), err)
    ok, err = pcall(dr.adamw_step_, dr.zeros(2), dr.zeros(3), dr.zeros(2), dr.zeros(2), 0.1, 0.9,
                    0.999, 1e-8, 0, 1)
    assert.truthy(err:find('adamw: grad [3] does not match param [2]', 1, true), err)
  end)
end)

describe('dr.optim flat mode #binding', function()
  it('AdamW over one flat buffer matches per-tensor AdamW step for step', function()
    local function train(flat)
      local g = dr.Generator(9)
      local x = dr.randn({ 6, 3 }, { generator = g })
      local w1 = dr.randn({ 3, 4 }, { generator = g }):requires_grad_()
      local w2 = dr.randn({ 4 }, { generator = g }):requires_grad_()
      local opt = dr.optim.AdamW({ w1, w2 }, { lr = 0.05, flat = flat })
      for _ = 1, 5 do
        opt:zero_grad()
        local y = x:matmul(w1):matmul(w2)
        ;(y * y):sum():backward()
        opt:step()
      end
      return w1:tolist(), w2:tolist(), opt
    end
    local a1, a2 = train(false)
    local b1, b2, opt = train(true)
    for i = 1, 3 do close(b1[i], a1[i], 1e-5) end
    close(b2, a2, 1e-5)
    -- the parameters really live in the flat buffer now
    assert.are.equal(16, opt.flat.params:numel())
    close(opt.flat.params:narrow(1, 13, 4):tolist(), b2, 0)
  end)

  it('accumulates into the flat gradient views across backward calls', function()
    local w = dr.ones(2):requires_grad_()
    local opt = dr.optim.AdamW({ w }, { flat = true })
    ;(w * 2):sum():backward()
    ;(w * 3):sum():backward()
    assert.are.same({ 5, 5 }, opt.flat.grads:tolist())
    opt:zero_grad()
    assert.are.same({ 0, 0 }, w.grad:tolist())
  end)
end)
