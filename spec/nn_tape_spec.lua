-- The nn ops on the autograd tape: gradients through conv2d, resampling,
-- normalization, softmax and the unary math match finite differences, and a
-- conv + group_norm + silu + attention block trains.
local dr = require 'diffrl'
local gradcheck = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/gradcheck.lua')

local g = dr.Generator(11)
local function rand(...) return dr.randn({ ... }, { generator = g }) end

describe('nn ops through the tape #binding', function()
  it('conv2d with bias, stride, padding, dilation and groups', function()
    gradcheck(function(x, w, b) return dr.conv2d(x, w, b, { stride = 2, padding = 1 }) end,
      { rand(2, 4, 5, 5), rand(6, 4, 3, 3), rand(6) }, { atol = 3e-2 })
    gradcheck(function(x, w) return dr.conv2d(x, w, nil, { dilation = 2, groups = 2 }) end,
      { rand(1, 4, 6, 6), rand(4, 2, 2, 2) }, { atol = 3e-2 })
  end)

  it('nearest upsampling and average pooling', function()
    gradcheck(function(x) return dr.interpolate(x, { scale_factor = 2, mode = 'nearest' }) end,
      { rand(1, 2, 3, 3) })
    gradcheck(function(x) return dr.avg_pool2d(x, 2, 2, 0) end, { rand(1, 2, 4, 5) })
  end)

  it('group_norm and layer_norm with affine parameters', function()
    gradcheck(function(x, w, b) return dr.group_norm(x, 2, w, b, 1e-5) end,
      { rand(2, 4, 3, 3), rand(4), rand(4) }, { atol = 3e-2 })
    gradcheck(function(x, w, b) return dr.layer_norm(x, { 5 }, w, b, 1e-5) end,
      { rand(3, 5), rand(5), rand(5) }, { atol = 3e-2 })
    gradcheck(function(x) return dr.layer_norm(x, { 2, 3 }, nil, nil, 1e-5) end,
      { rand(2, 2, 3) }, { atol = 3e-2 })
  end)

  it('softmax, log_softmax and the unary ops', function()
    gradcheck(function(x) return x:softmax(2) end, { rand(3, 4) })
    gradcheck(function(x) return x:log_softmax(-1) end, { rand(3, 4) })
    for _, name in ipairs { 'silu', 'gelu', 'quick_gelu', 'sigmoid', 'tanh', 'exp' } do
      gradcheck(function(x) return x[name](x) end, { rand(6) })
    end
    gradcheck(function(x) return (x * x + 1):log():sqrt():rsqrt() end, { rand(5) })
    gradcheck(function(x) return x:pow(3) end, { rand(5) })
  end)
end)

describe('a small conv + norm + attention block #binding', function()
  it('lowers its loss with AdamW', function()
    local x = rand(2, 4, 4, 4)
    local target = rand(2, 4, 4, 4)
    local w = (rand(4, 4, 3, 3) * 0.1):requires_grad_()
    local gn_w, gn_b = dr.ones(4):requires_grad_(), dr.zeros(4):requires_grad_()
    local params = { w, gn_w, gn_b }
    local opt = dr.optim.AdamW(params, { lr = 1e-2, weight_decay = 0 })
    local function loss()
      local h = dr.conv2d(x, w, nil, { padding = 1 })
      h = dr.group_norm(h, 2, gn_w, gn_b, 1e-5):silu()
      local seq = h:flatten(3):transpose(2, 3)          -- [2, 16, 4] tokens
      local a = dr.scaled_dot_product_attention(seq, seq, seq)
      local out = a:transpose(2, 3):reshape(2, 4, 4, 4) + h
      return ((out - target):pow(2)):mean()
    end
    local first = loss():item()
    for _ = 1, 30 do
      opt:zero_grad()
      loss():backward()
      opt:step()
    end
    assert.is_true(loss():item() < 0.8 * first)
  end)
end)

describe('composed functional ops #binding', function()
  it('linear, bmm and geglu compute and differentiate', function()
    local x, w, b = rand(3, 4), rand(5, 4), rand(5)
    local y = dr.linear(x, w, b)
    local ref = x:matmul(w:t()) + b
    assert.are.same(ref:tolist(), y:tolist())
    gradcheck(function(x_, w_, b_) return dr.linear(x_, w_, b_) end, { x, w, b })
    gradcheck(function(a, c) return dr.bmm(a, c) end, { rand(2, 3, 4), rand(2, 4, 2) })
    gradcheck(function(z) return dr.geglu(z) end, { rand(2, 6) })
    assert.has_error(function() dr.bmm(rand(3, 4), rand(4, 2)) end)
  end)
end)

describe('thread-count independence #binding', function()
  it('matmul gives the same bits on 1, 2 and 3 threads', function()
    local before = dr.get_num_threads()
    -- the last two: a small product with a long inner dimension (a linear
    -- layer's weight gradient), which OpenBLAS would otherwise thread itself
    for _, s in ipairs { { 300, 700, 500 }, { 77, 1024, 96 }, { 5, 7, 9 }, { 64, 4096, 64 }, { 16, 8192, 20 } } do
      local a, b = rand(s[1], s[2]), rand(s[2], s[3])
      local results = {}
      for t = 1, 3 do
        dr.set_num_threads(t)
        results[t] = a:matmul(b)
      end
      for t = 2, 3 do assert.are.equal(0, (results[1] - results[t]):abs():sum():item()) end
    end
    dr.set_num_threads(before)
  end)
end)
