-- Reverse-mode autodiff: every differentiable op so far checked against central
-- finite differences, plus the tape's promises (accumulation, no_grad, detach,
-- errors for freed / modified / twice-walked graphs).
local dr = require 'diffrl'

local gradcheck = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/gradcheck.lua')

local g = dr.Generator(1)
local function rand(...) return dr.randn({ ... }, { generator = g }) end

describe('gradients match finite differences #binding', function()
  it('add, sub, mul, div with broadcasting and alpha', function()
    gradcheck(function(a, b) return a:add(b, 2.5) end, { rand(3, 1, 5), rand(4, 1) })
    gradcheck(function(a, b) return a:sub(b, 0.5) end, { rand(2, 3), rand(3) })
    gradcheck(function(a, b) return a * b end, { rand(3, 1, 5), rand(4, 1) })
    gradcheck(function(a, b) return a / b end, { rand(2, 3), rand(3):add(dr.full({3}, 3)) })
    gradcheck(function(a) return a * 3 - 1 end, { rand(4) })
    gradcheck(function(a) return 2 / (a * a + 1) end, { rand(5) })
  end)

  it('matmul: matrices, batches with broadcasting, vectors', function()
    gradcheck(function(a, b) return a:matmul(b) end, { rand(3, 4), rand(4, 2) })
    gradcheck(function(a, b) return a:matmul(b) end, { rand(2, 1, 3, 4), rand(5, 4, 2) })
    gradcheck(function(a, b) return a:matmul(b) end, { rand(2, 3, 4), rand(4, 2) })
    gradcheck(function(a, b) return a:matmul(b) end, { rand(4), rand(4, 3) })
    gradcheck(function(a, b) return a:matmul(b) end, { rand(2, 3, 4), rand(4) })
    gradcheck(function(a, b) return a:matmul(b) end, { rand(4), rand(4) })
    gradcheck(function(a, b) return a:t():matmul(b) end, { rand(4, 3), rand(4, 2) })
  end)

  it('sum over all, one, several and negative dims, with keepdim', function()
    gradcheck(function(a) return a:sum() end, { rand(2, 3) })
    gradcheck(function(a) return a:sum(2) end, { rand(2, 3, 4) })
    gradcheck(function(a) return a:sum({ 1, -1 }, true) end, { rand(2, 3, 4) })
  end)

  it('views and copies', function()
    gradcheck(function(a) return a:view(3, 4) end, { rand(2, 6) })
    gradcheck(function(a) return a:t():reshape(12) end, { rand(3, 4) })
    gradcheck(function(a) return a:permute(3, 1, 2) * 1 end, { rand(2, 3, 4) })
    gradcheck(function(a) return a:transpose(1, 3) end, { rand(2, 3, 4) })
    gradcheck(function(a) return a:narrow(2, 2, 2) end, { rand(3, 4) })
    gradcheck(function(a) return a:select(1, -1) end, { rand(3, 4) })
    gradcheck(function(a) return a[2] end, { rand(3, 4) })
    gradcheck(function(a) return a:expand(3, 2, 4) end, { rand(2, 1) })
    gradcheck(function(a) return a:t():contiguous() end, { rand(3, 4) })
    gradcheck(function(a) return a:clone() * a end, { rand(5) })
  end)

  it('casts to float16 and back (loose tolerance)', function()
    gradcheck(function(a) return a:half():float() * 2 end, { rand(4) }, { h = 0.1, atol = 0.05 })
  end)
end)

describe('the tape #binding', function()
  it('accumulates gradients over backward calls until cleared', function()
    local x = dr.ones(3):requires_grad_()
    ;(x * 2):sum():backward()
    ;(x * 3):sum():backward()
    assert.are.same({ 5, 5, 5 }, x.grad:tolist())
    x.grad = nil
    assert.is_nil(x.grad)
  end)

  it('adds the gradients of an input used twice', function()
    local x = dr.tensor { 1, 2 }:requires_grad_()
    ;(x * x + x):sum():backward()
    assert.are.same({ 3, 5 }, x.grad:tolist())
  end)

  it('records nothing inside dr.no_grad, and restores grad mode after errors', function()
    local x = dr.ones(2):requires_grad_()
    local y = dr.no_grad(function() return x * 2 end)
    assert.is_false(y:requires_grad())
    assert.is_nil(y.grad_fn)
    assert.has_error(function() dr.no_grad(function() error('inside') end) end)
    assert.is_true(dr.is_grad_enabled())
  end)

  it('detach shares data but not history', function()
    local x = dr.ones(2):requires_grad_()
    local d = (x * 3):detach()
    assert.is_false(d:requires_grad())
    assert.is_true(d.is_leaf)
    assert.are.same({ 3, 3 }, d:tolist())
  end)

  it('names the op that made a tensor, and prints it as torch does', function()
    local x = dr.ones(2):requires_grad_()
    assert.are.equal('MulBackward', (x * x).grad_fn)
    assert.truthy(tostring(x * x):find('grad_fn=<MulBackward>', 1, true))
    assert.truthy(tostring(x):find('requires_grad=True', 1, true))
  end)

  it('walks very long chains without exhausting the C stack', function()
    local x = dr.ones(1):requires_grad_()
    local y = x
    for _ = 1, 20000 do y = y + 1 end
    y:sum():backward()
    assert.are.same({ 1 }, x.grad:tolist())
    y = nil
    collectgarbage()
  end)

  it('refuses a second backward through freed saved tensors, unless retain_graph', function()
    local x = dr.ones(2):requires_grad_()
    local s = (x * x):sum()
    s:backward({ retain_graph = true })
    s:backward()
    assert.are.same({ 4, 4 }, x.grad:tolist())
    local ok, err = pcall(function() s:backward() end)
    assert.is_false(ok)
    assert.truthy(err:find('backward through mul', 1, true), err)
    assert.truthy(err:find('retain_graph', 1, true), err)
  end)

  it('refuses to use a saved tensor released with free() or modified in place', function()
    local a = dr.ones(2):requires_grad_()
    local b = dr.ones(2)
    local s = (a * b):sum()
    b:free()
    local ok, err = pcall(function() s:backward() end)
    assert.is_false(ok)
    assert.truthy(err:find('released with free()', 1, true), err)
    local c = dr.ones(2)
    local t = (a * c):sum()
    c:fill_(3)
    ok, err = pcall(function() t:backward() end)
    assert.is_false(ok)
    assert.truthy(err:find('modified in place', 1, true), err)
  end)

  it('refuses in-place writes to leaves that require grad, except under no_grad', function()
    local w = dr.ones(2):requires_grad_()
    assert.has_error(function() w:fill_(0) end)
    dr.no_grad(function() w:fill_(0) end)
    assert.are.same({ 0, 0 }, w:tolist())
  end)

  it('explains a backward it cannot do', function()
    assert.has_error(function() dr.ones(2):sum():backward() end,
      nil) -- no grad: message names backward
    local x = dr.ones(2):requires_grad_()
    local ok, err = pcall(function() (x * 2):backward() end)
    assert.is_false(ok)
    assert.truthy(err:find('only for a scalar output', 1, true), err)
    ok, err = pcall(function() dr.ones(2, { dtype = 'int64' }):requires_grad_() end)
    assert.truthy(err:find('floating point', 1, true), err)
    ok, err = pcall(function() (x * 2):requires_grad_() end)
    assert.truthy(err:find('not a leaf', 1, true), err)
  end)
end)

describe('dr.checkpoint #binding', function()
  local function block(x, w) return (x:matmul(w) * x:matmul(w)):sum(2) end

  it('gives the same gradients as the plain graph, parameters included', function()
    local g = dr.Generator(5)
    local x0, w0 = dr.randn({ 4, 3 }, { generator = g }), dr.randn({ 3, 3 }, { generator = g })
    local function grads(use_checkpoint)
      local x, w = x0:clone():requires_grad_(), w0:clone():requires_grad_()
      local h = x * 2
      local y = use_checkpoint and dr.checkpoint(function(a) return block(a, w) end, h)
                or block(h, w)
      y:sum():backward()
      return x.grad:tolist(), w.grad:tolist()
    end
    local gx, gw = grads(false)
    local cx, cw = grads(true)
    for i = 1, 4 do for j = 1, 3 do assert.are.near(gx[i][j], cx[i][j], 1e-4) end end
    for i = 1, 3 do for j = 1, 3 do assert.are.near(gw[i][j], cw[i][j], 1e-4) end end
  end)

  it('keeps no graph of the checkpointed function', function()
    local x = dr.ones(2):requires_grad_()
    local y = dr.checkpoint(function(a) return a * a * a end, x)
    assert.are.equal('CheckpointBackward', y.grad_fn)
  end)

  it('replays the default generator, so random ops recompute the same values', function()
    local x = dr.ones(3):requires_grad_()
    local y = dr.checkpoint(function(a) return a * dr.randn(3) end, x)
    local noise = y:detach():clone()
    y:sum():backward()
    assert.are.same(noise:tolist(), x.grad:tolist())
  end)

  it('reports an error raised during recomputation', function()
    local x = dr.ones(2):requires_grad_()
    local calls = 0
    local y = dr.checkpoint(function(a)
      calls = calls + 1
      if calls == 2 then error('recompute failed') end
      return a * 2
    end, x)
    local ok, err = pcall(function() y:sum():backward() end)
    assert.is_false(ok)
    assert.truthy(err:find('recompute failed', 1, true), err)
  end)
end)
