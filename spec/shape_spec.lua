-- Joining, splitting, indexing, reductions, ranges and random ops from Lua:
-- torch's names and values with 1-based dims and 1-based indices, gradients
-- through the tape (spec/gradcheck.lua), and errors raised at the caller's line
-- naming the op, the index the caller wrote and the size.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local gradcheck = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/gradcheck.lua')
local dr = require 'diffrl'

local g = dr.Generator(11)
local function rand(...) return dr.randn({ ... }, { generator = g }) end
local function long(list) return dr.tensor(list, { dtype = 'int64' }) end

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

-- The error f raises, checked to be reported at the caller's line (the line of
-- the pcall in this file) and to contain each of `parts`.
local function raises_here(line, ok, msg, ...)
  assert.is_false(ok, 'expected an error')
  assert.matches('shape_spec%.lua:' .. line .. ': ', msg)
  for _, part in ipairs { ... } do assert_contains(msg, part) end
end

describe('cat, stack, split, chunk #binding', function()
  local a = dr.tensor { { 1, 2 }, { 3, 4 } }
  local b = dr.tensor { { 5, 6 } }

  it('cat joins along a 1-based dim (default 1), negative dims too', function()
    assert.are.same({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, dr.cat({ a, b }):tolist())
    assert.are.same({ { 1, 2, 1, 2 }, { 3, 4, 3, 4 } }, dr.cat({ a, a }, -1):tolist())
    assert.are.equal('float32', dr.cat({ a:half(), a }).dtype)
  end)

  it('stack adds a dim', function()
    assert.are.same({ 2, 2, 2 }, dr.stack({ a, a }, 2):size())
    assert.are.same({ { 1, 1 }, { 2, 2 } }, dr.stack({ dr.tensor { 1, 2 }, dr.tensor { 1, 2 } }, 2):tolist())
    assert.are.same({ 2, 2, 3 }, dr.stack({ a, a, a }, -1):size())
  end)

  it('split and chunk give views like torch', function()
    local t = dr.arange(10)
    local parts = t:split(4)
    assert.are.equal(3, #parts)
    assert.are.same({ 8, 9 }, parts[3]:tolist())
    local s = t:split({ 1, 6, 3 })
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, s[2]:tolist())
    local c = t:chunk(3)
    assert.are.same({ 4, 4, 2 }, { #c[1], #c[2], #c[3] })
    assert.are.equal(2, #dr.chunk(dr.zeros(2, 3), 4, 1))
    assert.are.same({ 2, 1 }, dr.split(dr.zeros(2, 3), 1, 2)[1]:size())
  end)

  it('unsqueeze, squeeze, flatten', function()
    local t = dr.zeros(2, 1, 3)
    assert.are.same({ 1, 2, 1, 3 }, t:unsqueeze(1):size())
    assert.are.same({ 2, 1, 3, 1 }, t:unsqueeze(-1):size())
    assert.are.same({ 2, 3 }, t:squeeze():size())
    assert.are.same({ 2, 3 }, t:squeeze(2):size())
    assert.are.same({ 2, 1, 3 }, t:squeeze(1):size())
    assert.are.same({ 6 }, t:flatten():size())
    assert.are.same({ 2, 3 }, t:flatten(2):size())
    assert.are.same({ 1 }, dr.tensor(3):flatten():size())
  end)

  it('have gradients (narrow views too), on non-contiguous inputs', function()
    gradcheck(function(x, y) return dr.cat({ x, y:t(), x }, 2) end, { rand(3, 2), rand(4, 3) })
    gradcheck(function(x, y) return dr.stack({ x, y, x, y, x, y }, -1) end, { rand(2, 3), rand(2, 3) })
    gradcheck(function(x)
      local p = x:t():split({ 2, 1, 2 }, 2)
      return dr.cat({ p[3], p[1] * 2, p[2] }, 2)
    end, { rand(5, 3) })
    gradcheck(function(x)
      local c = x:chunk(3, -1)
      return c[1] + c[3]
    end, { rand(2, 5) })
    gradcheck(function(x) return x:unsqueeze(2):flatten(1, 2):squeeze() end, { rand(3, 2) })
  end)

  it("raise at the caller's line naming the op and the shapes", function()
    local line, ok, msg = h.line(), pcall(dr.cat, { a, dr.zeros(2, 3) }, 1)
    raises_here(line, ok, msg, 'cat: sizes of tensors must match except in dimension 1', '[2, 2]', '[2, 3]')
    line, ok, msg = h.line(), pcall(dr.stack, { a, b })
    raises_here(line, ok, msg, 'stack: expects each tensor to be equal size')
    line, ok, msg = h.line(), pcall(a.split, a, { 1, 2 })
    raises_here(line, ok, msg, 'split: split sizes sum to 3 but dimension 1 has size 2')
    line, ok, msg = h.line(), pcall(a.unsqueeze, a, 4)
    raises_here(line, ok, msg, 'unsqueeze: dimension 4 out of range')
    line, ok, msg = h.line(), pcall(dr.cat, {})
    raises_here(line, ok, msg, 'cat: expected a non-empty list')
  end)
end)

describe('index_select, gather, embedding, where #binding', function()
  local m = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }

  it('take 1-based indices (tensors or lists)', function()
    assert.are.same({ { 3, 1, 3 }, { 6, 4, 6 } }, m:index_select(2, { 3, 1, 3 }):tolist())
    assert.are.same({ { 4, 5, 6 } }, m:index_select(1, long { 2 }):tolist())
    assert.are.same({ { 3, 3 }, { 4, 5 } }, m:gather(2, long { { 3, 3 }, { 1, 2 } }):tolist())
    assert.are.same({ { 4, 2, 6 } }, m:gather(1, { { 2, 1, 2 } }):tolist())
    local w = dr.tensor { { 0, 0 }, { 1, 1 }, { 2, 2 } }
    assert.are.same({ { { 0, 0 }, { 2, 2 } }, { { 2, 2 }, { 2, 2 } } },
                    dr.embedding(long { { 1, 3 }, { 3, 3 } }, w):tolist())
    assert.are.same({ 3, 2 }, dr.embedding(dr.tensor({ 1, 2, 3 }, { dtype = 'int32' }), w):size())
  end)

  it('where broadcasts, takes numbers, and promotes like torch', function()
    local c = dr.tensor { { true }, { false } }
    assert.are.same({ { 1, 2, 3 }, { 0, 0, 0 } }, dr.where(c, m, 0):tolist())
    assert.are.same({ { 9, 9, 9 }, { 4, 5, 6 } }, m:where(dr.tensor { { false }, { true } }, 9):tolist())
    assert.are.equal('float32', dr.where(c, long { 1, 2, 3 }, 0.5).dtype)
    assert.are.equal('int64', dr.where(c, long { 1, 2, 3 }, 7).dtype)
  end)

  it('have gradients: scatter-adds of repeated indices, masked where', function()
    gradcheck(function(x) return x:t():index_select(1, { 2, 1, 2, 2 }) end, { rand(3, 2) })
    gradcheck(function(x) return x:gather(2, { { 1, 1, 3 }, { 2, 3, 3 } }) end, { rand(2, 3) })
    gradcheck(function(w) return dr.embedding(long { { 2, 2 }, { 1, 2 } }, w) end, { rand(3, 4) })
    local c = dr.tensor { true, false, true }
    gradcheck(function(x, y) return dr.where(c, x, y) end, { rand(2, 3), rand(3) })
  end)

  it("name the op, the caller's index and the size when out of range", function()
    local line, ok, msg = h.line(), pcall(m.index_select, m, 2, { 1, 4 })
    raises_here(line, ok, msg, 'index_select: index 4 is out of range for dimension 2 with size 3')
    line, ok, msg = h.line(), pcall(m.index_select, m, 1, { 0 })
    raises_here(line, ok, msg, 'index_select: index 0 is out of range for dimension 1 with size 2')
    line, ok, msg = h.line(), pcall(m.gather, m, 1, { { 3, 1, 1 } })
    raises_here(line, ok, msg, 'gather: index 3 is out of range for dimension 1 with size 2')
    line, ok, msg = h.line(), pcall(dr.embedding, long { 1, 5 }, m)
    raises_here(line, ok, msg, 'embedding: index 5 is out of range for a weight of 2 rows')
    line, ok, msg = h.line(), pcall(m.index_select, m, 1, dr.tensor { 1 })
    raises_here(line, ok, msg, 'index_select: index must be an integer tensor, got float32')
    line, ok, msg = h.line(), pcall(dr.where, m, m, m)
    raises_here(line, ok, msg, 'where: condition must be a bool tensor')
  end)
end)

describe('reductions #binding', function()
  local m = dr.tensor { { 1, 5, 3 }, { 4, 2, 6 } }

  it('mean, var and std over dims with keepdim, as torch', function()
    assert.are.equal(3.5, m:mean():item())
    assert.are.same({ 3, 4 }, m:mean(2):tolist())
    assert.are.same({ { 2.5, 3.5, 4.5 } }, m:mean(1, true):tolist())
    assert.are.same({ 2, 1 }, m:mean({ -1 }, true):size())
    h.assert_close(m:var():item(), 3.5)
    h.assert_close(m:var(2):tolist(), { 4, 4 })
    h.assert_close(m:var(2, { correction = 0 }):tolist(), { 8 / 3, 8 / 3 })
    h.assert_close(m:var(2, false, true):tolist(), { { 8 / 3 }, { 8 / 3 } })
    h.assert_close(m:std({ correction = 0 }):item(), math.sqrt(17.5 / 6))
    h.assert_close(dr.std(m, 1, { keepdim = true }):tolist(), { { math.sqrt(4.5), math.sqrt(4.5), math.sqrt(4.5) } })
  end)

  it('max and min return values and 1-based indices; argmax/argmin too', function()
    assert.are.equal(6, m:max():item())
    assert.are.equal(1, m:min():item())
    local v, i = m:max(2)
    assert.are.same({ 5, 6 }, v:tolist())
    assert.are.same({ 2, 3 }, i:tolist())
    assert.are.equal('int64', i.dtype)
    v, i = m:min(1, true)
    assert.are.same({ { 1, 2, 3 } }, v:tolist())
    assert.are.same({ { 1, 2, 1 } }, i:tolist())
    assert.are.equal(6, m:argmax():item())
    assert.are.same({ 1, 2 }, m:argmin(-1):tolist())
    assert.are.same({ { 2, 1, 2 } }, dr.argmax(m, 1, true):tolist())
    assert.are.same({ 1 }, { dr.tensor({ 3, 3, 1 }):argmax():item() }) -- first of ties
  end)

  it('cumsum, with int64 for integers', function()
    assert.are.same({ { 1, 6, 9 }, { 4, 6, 12 } }, m:cumsum(2):tolist())
    assert.are.same({ { 1, 5, 3 }, { 5, 7, 9 } }, m:cumsum(-2):tolist())
    assert.are.equal('int64', long({ 1, 2 }):cumsum(1).dtype)
  end)

  it('have gradients (non-contiguous inputs, keepdim, corrections)', function()
    gradcheck(function(x) return x:t():mean(2) end, { rand(3, 4) })
    gradcheck(function(x) return x:mean({ 1, 3 }, true) end, { rand(2, 3, 2) })
    gradcheck(function(x) return x:t():var(1) end, { rand(3, 4) })
    gradcheck(function(x) return x:var({ correction = 0, keepdim = true }) end, { rand(2, 3) })
    gradcheck(function(x) return x:std(-1) end, { rand(2, 5) })
    gradcheck(function(x) return x:var(1) + x:mean(1) end, { rand(4, 17) }) -- leading dims
    gradcheck(function(x) return (x:max(2)) end, { dr.tensor { { 0.1, 0.9, -0.3 }, { 0.5, -0.2, 0.7 } } })
    gradcheck(function(x) return (x:t():min(1, true)) end, { dr.tensor { { 0.1, 0.9, -0.3 }, { 0.5, -0.2, 0.7 } } })
    gradcheck(function(x) return x:max() * 1 end, { dr.tensor { 0.1, 0.9, -0.3 } })
    gradcheck(function(x) return x:t():cumsum(1) end, { rand(3, 4) })
  end)

  it('reject integer means and bad dims, naming the op', function()
    local line, ok, msg = h.line(), pcall(long({ 1, 2 }).mean, long { 1, 2 })
    raises_here(line, ok, msg, 'mean: input dtype int64 is not supported')
    line, ok, msg = h.line(), pcall(m.max, m, 3)
    raises_here(line, ok, msg, 'max: dimension 3 out of range')
    line, ok, msg = h.line(), pcall(m.var, m, 0)
    raises_here(line, ok, msg, 'var: dimension 0 does not exist')
  end)
end)

describe('ranges and random ops #binding', function()
  it('arange and linspace give torch values (not indices)', function()
    assert.are.same({ 0, 1, 2, 3, 4 }, dr.arange(5):tolist())
    assert.are.equal('int64', dr.arange(5).dtype)
    assert.are.same({ 2, 4, 6 }, dr.arange(2, 8, 2):tolist())
    assert.are.same({ 0, 0.5 }, dr.arange(0, 1, 0.5):tolist())
    assert.are.equal('float32', dr.arange(3, { dtype = 'float32' }).dtype)
    assert.are.same({ 0, 0.25, 0.5, 0.75, 1 }, dr.linspace(0, 1, 5):tolist())
    local line, ok, msg = h.line(), pcall(dr.arange, 0, 1, 0)
    raises_here(line, ok, msg, 'arange: step must be nonzero')
  end)

  it('randint draws [low, high) from a generator, reproducibly', function()
    local a = dr.randint(3, 9, { 200 }, { generator = dr.Generator(5) })
    local b = dr.randint(3, 9, { 200 }, { generator = dr.Generator(5) })
    assert.are.same(a:tolist(), b:tolist())
    assert.are.equal('int64', a.dtype)
    assert.are.equal(3, a:min():item())
    assert.are.equal(8, a:max():item())
    assert.are.same({ 2, 3 }, dr.randint(4, { 2, 3 }):size())
    local line, ok, msg = h.line(), pcall(dr.randint, 5, 5, { 2 })
    raises_here(line, ok, msg, 'randint')
  end)

  it('normal_ fills in place from the randn stream', function()
    local t = dr.zeros(4, 5):normal_(2, 0.5, { generator = dr.Generator(3) })
    local z = dr.randn({ 4, 5 }, { generator = dr.Generator(3) })
    h.assert_close(t:tolist(), (z * 0.5 + 2):tolist())
  end)

  it('dropout zeroes with probability p and scales by 1/(1-p); identity when not training', function()
    local x = dr.ones(1000)
    local y = dr.dropout(x, 0.25, true, { generator = dr.Generator(1) })
    local kept = 0
    for _, v in ipairs(y:tolist()) do
      assert.is_true(v == 0 or math.abs(v - 4 / 3) < 1e-6)
      if v ~= 0 then kept = kept + 1 end
    end
    assert.is_true(kept > 700 and kept < 800, 'kept ' .. kept)
    assert.are.equal(x, dr.dropout(x, 0.5, false))
    local w = rand(3, 4)
    gradcheck(function(v) return dr.dropout(v, 0.5, true, { generator = dr.Generator(4) }) end, { w })
    local line, ok, msg = h.line(), pcall(dr.dropout, x, 2)
    raises_here(line, ok, msg, 'dropout: dropout probability has to be between 0 and 1, but got 2')
  end)
end)
