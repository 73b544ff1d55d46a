-- Tensors from Lua: making them, shapes and 1-based dims, indexing, views,
-- casts, arithmetic with torch's type promotion, sum, matmul, errors that point
-- at the caller's line, and tostring as PyTorch prints.
-- Tagged #binding: these also run under plain luajit with DIFFRL_LIB.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local error_of = h.error_of

-- assert.matches with plain text (shapes like "[2, 3]" are not patterns).
local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true),
                   ('expected to find %q in %q'):format(part, text))
end

describe('dr.tensor from nested lists #binding', function()
  it('makes a float32 tensor with the shape of the nesting', function()
    local t = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.equal('float32', t.dtype)
    assert.are.same({ 2, 3 }, t:size())
    assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:tolist())
  end)

  it('makes a bool tensor from booleans', function()
    local t = dr.tensor { true, false, true }
    assert.are.equal('bool', t.dtype)
    assert.are.same({ true, false, true }, t:tolist())
  end)

  it('makes a 0-d tensor from a number', function()
    local t = dr.tensor(2.5)
    assert.are.equal(0, t:dim())
    assert.are.equal(2.5, t:item())
  end)

  it('converts to the dtype option, truncating toward zero for integers', function()
    local t = dr.tensor({ 1.7, -2.2, 3 }, { dtype = dr.int64 })
    assert.are.equal('int64', t.dtype)
    assert.are.same({ 1, -2, 3 }, t:tolist())
    assert.are.equal('float16', dr.tensor({ 1 }, { dtype = 'float16' }).dtype)
    assert.are.same({ false, true, true }, dr.tensor({ 0, 1, 2 }, { dtype = dr.bool }):tolist())
  end)

  it('accepts torch dtype aliases', function()
    assert.are.equal('float32', dr.float)
    assert.are.equal('float16', dr.half)
    assert.are.equal('int64', dr.long)
    assert.are.equal('int32', dr.tensor({ 1 }, { dtype = dr.int }).dtype)
  end)

  it('copies a tensor given instead of a list', function()
    local a = dr.tensor { 1, 2 }
    local b = dr.tensor(a, { dtype = dr.int64 })
    a[1] = 10
    assert.are.equal('int64', b.dtype)
    assert.are.same({ 1, 2 }, b:tolist())
  end)

  it('rejects a ragged list, naming the list that is off', function()
    local msg = error_of(dr.tensor, { { 1, 2 }, { 3 } })
    assert_contains(msg, 'ragged')
    assert_contains(msg, 'list [2] has 1 elements, expected 2')
  end)

  it('rejects an element that is not a number, naming where it is', function()
    local msg = error_of(dr.tensor, { { 1, 2 }, { 3, 'x' } })
    assert_contains(msg, 'element [2][2] is a string')
    assert_contains(msg, 'number')
  end)

  it('rejects numbers mixed with booleans', function()
    assert_contains(error_of(dr.tensor, { 1, true }),
                    'element [2] is a boolean but earlier elements are numbers')
  end)

  it('rejects an unknown dtype, listing the known ones', function()
    local msg = error_of(dr.tensor, { 1 }, { dtype = 'float64' })
    assert_contains(msg, "unknown dtype 'float64'")
    assert_contains(msg, 'float32, float16, bfloat16, int64, int32, uint8, bool')
  end)
end)

describe('zeros, ones, full, empty #binding', function()
  it('take sizes as arguments or as one table', function()
    assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, dr.zeros(2, 3):tolist())
    assert.are.same({ { 1, 1, 1 }, { 1, 1, 1 } }, dr.ones { 2, 3 }:tolist())
    assert.are.same({ 2, 3 }, dr.empty(2, 3):size())
    assert.are.same({ 2, 3 }, dr.empty { 2, 3 }:size())
    assert.are.same({ 2, 3 }, dr.zeros(dr.ones(2, 3).shape):size())
  end)

  it('take a dtype option after the sizes', function()
    assert.are.equal('int64', dr.zeros(2, 3, { dtype = dr.int64 }).dtype)
    assert.are.equal('bool', dr.ones({ 2 }, { dtype = dr.bool }).dtype)
    assert.are.same({ true, true }, dr.ones({ 2 }, { dtype = dr.bool }):tolist())
    assert.are.equal('float16', dr.empty(4, { dtype = dr.float16 }).dtype)
  end)

  it('make a 0-d tensor from no sizes', function()
    assert.are.equal(0, dr.zeros {}:dim())
    local one = dr.ones { dtype = dr.int64 }
    assert.are.equal(0, one:dim())
    assert.are.equal('int64', one.dtype)
    assert.are.equal(1, one:item())
  end)

  it('full fills with the value', function()
    assert.are.same({ { 7, 7 }, { 7, 7 } }, dr.full({ 2, 2 }, 7):tolist())
    assert.are.same({ 2, 2, 2 }, dr.full(3, 2):tolist())
    local h16 = dr.full({ 2 }, 1.5, { dtype = dr.float16 })
    assert.are.equal('float16', h16.dtype)
    assert.are.same({ 1.5, 1.5 }, h16:tolist())
  end)

  it('reject sizes that are not integers, naming the factory', function()
    assert_contains(error_of(dr.zeros, 2.5), 'zeros: size 1 must be an integer, got 2.5')
  end)

  it('reject a negative size, naming the factory and the size', function()
    local msg = error_of(dr.zeros, 2, -1)
    assert_contains(msg, 'zeros')
    assert_contains(msg, '-1')
  end)
end)

describe('shapes and dimensions #binding', function()
  local t = dr.zeros(2, 3, 4)

  it('shape is a Size that prints and compares like a list', function()
    assert.are.equal('dr.Size([2, 3, 4])', tostring(t.shape))
    assert.are.equal(t.shape, dr.ones(2, 3, 4).shape)
    assert.are_not.equal(t.shape, dr.ones(2, 4, 3).shape)
    assert.are.equal(24, t.shape:numel())
    assert.are.same({ 2, 3, 4 }, t:size())
  end)

  it('counts dims from 1, and from the end with negative numbers', function()
    assert.are.equal(2, t:size(1))
    assert.are.equal(4, t:size(3))
    assert.are.equal(4, t:size(-1))
    assert.are.equal(2, t:size(-3))
  end)

  it('dim, ndim and numel', function()
    assert.are.equal(3, t:dim())
    assert.are.equal(3, t.ndim)
    assert.are.equal(24, t:numel())
    assert.are.equal(1, dr.tensor(5):numel())
  end)

  it('stride is in elements, row-major for a new tensor', function()
    assert.are.same({ 12, 4, 1 }, t:stride())
    assert.are.equal(12, t:stride(1))
    assert.are.equal(1, t:stride(-1))
  end)

  it('says dims are 1-based when given dim 0', function()
    for _, call in ipairs {
      function() return t:size(0), nil end,
      function() return t:stride(0), nil end,
      function() return t:sum(0), nil end,
      function() return t:transpose(0, 1), nil end,
      function() return t:permute(0, 1, 2), nil end,
      function() return t:select(0, 1), nil end,
    } do
      assert_contains(error_of(call), '1-based')
    end
  end)

  it('rejects a dim past the last one', function()
    assert_contains(error_of(function() return t:size(4), nil end), 'out of range')
    assert_contains(error_of(function() return t:stride(4), nil end), 'out of range')
    assert_contains(error_of(function() return dr.ones(2):sum(3), nil end), 'out of range')
  end)
end)

describe('indexing with t[i] #binding', function()
  it('selects along the first dim, 1-based and negative from the end', function()
    local t = dr.tensor { { 1, 2 }, { 3, 4 }, { 5, 6 } }
    assert.are.same({ 1, 2 }, t[1]:tolist())
    assert.are.same({ 5, 6 }, t[-1]:tolist())
    assert.are.equal(4, t[2][2]:item())
    assert.are.equal(3, #t)
  end)

  it('gives a view: writing through it changes the tensor', function()
    local t = dr.zeros(2, 2)
    local row = t[2]
    row[1] = 5
    assert.are.same({ { 0, 0 }, { 5, 0 } }, t:tolist())
  end)

  it('assigns a number to a whole row, or a tensor broadcast to it', function()
    local t = dr.zeros(2, 3)
    t[1] = 7
    t[-1] = dr.tensor { 1, 2, 3 }
    assert.are.same({ { 7, 7, 7 }, { 1, 2, 3 } }, t:tolist())
    local v = dr.tensor { 1, 2, 3 }
    v[2] = 9
    assert.are.same({ 1, 9, 3 }, v:tolist())
  end)

  it('rejects an index out of range, naming it and the size', function()
    local msg = error_of(function() return dr.zeros(2, 3)[3], nil end)
    assert_contains(msg, 'index 3 out of range')
    assert_contains(msg, 'size 2')
  end)

  it('rejects an unknown method or property by name', function()
    assert_contains(error_of(function() return dr.zeros(2).foo, nil end), "'foo'")
  end)
end)

describe('views #binding', function()
  local function m23() return dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } } end

  it('view and reshape, with -1 inferred', function()
    assert.are.same({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, m23():view(3, 2):tolist())
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, m23():view { 6 }:tolist())
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, m23():reshape(-1):tolist())
    assert.are.same({ 3, 2 }, m23():reshape(-1, 2):size())
    -- reshape copies when a view is impossible
    assert.are.same({ 1, 4, 2, 5, 3, 6 }, m23():t():reshape(6):tolist())
  end)

  it('view shares storage with its base', function()
    local a = m23()
    a:view(6)[1] = 100
    assert.are.equal(100, a[1][1]:item())
  end)

  it('view rejects a shape of the wrong size, naming both shapes', function()
    local msg = error_of(function() return m23():view(4), nil end)
    assert_contains(msg, 'view')
    assert_contains(msg, '[4]')
    assert_contains(msg, '[2, 3]')
  end)

  it('permute, transpose and t', function()
    local expected = { { 1, 4 }, { 2, 5 }, { 3, 6 } }
    assert.are.same(expected, m23():permute(2, 1):tolist())
    assert.are.same(expected, m23():transpose(1, 2):tolist())
    assert.are.same(expected, m23():t():tolist())
    assert.are.same({ 4, 2, 3 }, dr.zeros(2, 3, 4):permute { 3, 1, 2 }:size())
    assert.are.same({ 4, 3, 2 }, dr.zeros(2, 3, 4):transpose(-1, 1):size())
    assert.are.same({ 1, 2 }, dr.tensor { 1, 2 }:t():tolist())
  end)

  it('a transpose is a strided view, not contiguous', function()
    local tt = m23():t()
    assert.are.same({ 1, 3 }, tt:stride())
    assert.is_false(tt:is_contiguous())
  end)

  it('narrow(dim, start, length) with a 1-based start', function()
    assert.are.same({ { 2, 3 }, { 5, 6 } }, m23():narrow(2, 2, 2):tolist())
    assert.are.same({ { 4, 5, 6 } }, m23():narrow(1, -1, 1):tolist())
    assert_contains(error_of(function() return m23():narrow(1, 0, 1), nil end), '1-based')
  end)

  it('select(dim, index) drops the dim', function()
    assert.are.same({ 3, 6 }, m23():select(2, -1):tolist())
    assert.are.same({ 4, 5, 6 }, m23():select(1, 2):tolist())
  end)

  it('expand repeats size-1 dims with stride 0', function()
    local e = dr.tensor { 1, 2 }:expand(3, 2)
    assert.are.same({ { 1, 2 }, { 1, 2 }, { 1, 2 } }, e:tolist())
    assert.are.same({ 0, 1 }, e:stride())
  end)

  it('functional forms take the tensor first', function()
    assert.are.same({ 3, 2 }, dr.reshape(m23(), 3, 2):size())
    assert.are.same({ 3, 2 }, dr.transpose(m23(), 1, 2):size())
    assert_contains(error_of(dr.reshape, 5, 3), 'reshape: expected a tensor, got number')
  end)
end)

describe('copies and casts #binding', function()
  it('contiguous makes a row-major copy of a strided view', function()
    local c = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }:t():contiguous()
    assert.is_true(c:is_contiguous())
    assert.are.same({ 2, 1 }, c:stride())
    assert.are.same({ { 1, 4 }, { 2, 5 }, { 3, 6 } }, c:tolist())
  end)

  it('clone is independent of the original', function()
    local a = dr.tensor { 1, 2 }
    local b = a:clone()
    a[1] = 9
    assert.are.same({ 1, 2 }, b:tolist())
  end)

  it('to, float, half, long, int and bool convert the dtype', function()
    local a = dr.tensor { -1.5, 0, 2 }
    assert.are.equal('int64', a:to(dr.int64).dtype)
    assert.are.equal('int32', a:to { dtype = dr.int32 }.dtype)
    assert.are.equal('float16', a:half().dtype)
    assert.are.same({ -1, 0, 2 }, a:long():tolist())
    assert.are.same({ -1, 0, 2 }, a:int():tolist())
    assert.are.same({ true, false, true }, a:bool():tolist())
    assert.are.equal('float32', a:long():float().dtype)
  end)

  it('to with only a device keeps the dtype', function()
    local i = dr.tensor({ 1, 2 }, { dtype = dr.int64 })
    assert.are.equal('int64', i:to { device = 'cpu' }.dtype)
  end)

  it('half rounds to the nearest float16', function()
    assert.are.equal(0.0999755859375, dr.tensor { 0.1 }:half()[1]:item())
  end)
end)

describe('tolist and item #binding', function()
  it('tolist gives nested tables, a number for 0-d, booleans for bool', function()
    assert.are.same({ { 1, 2 }, { 3, 4 } }, dr.tensor { { 1, 2 }, { 3, 4 } }:tolist())
    assert.are.equal(3.5, dr.tensor(3.5):tolist())
    assert.are.same({ true, false }, dr.tensor { true, false }:tolist())
    assert.are.same({}, dr.zeros(0):tolist())
  end)

  it('item gives the one value as a number (or boolean)', function()
    assert.are.equal(4, dr.tensor { { 4 } }:item())
    assert.is_true(dr.tensor(true):item())
  end)

  it('item of a tensor with more than one element is an error', function()
    local msg = error_of(function() return dr.zeros(2, 3):item(), nil end)
    assert_contains(msg, 'item')
    assert_contains(msg, '[2, 3]')
  end)
end)

describe('free #binding', function()
  it('releases the data now; any later use is an error that says so', function()
    local t = dr.tensor { 1, 2, 3 }
    t:free()
    assert.is_true(t:is_freed())
    for _, use in ipairs {
      function() return t + 1, nil end,
      function() return t:sum(), nil end,
      function() return t:view(3), nil end,
      function() return t[1], nil end,
      function() return t:item(), nil end,
      function() return t:tolist(), nil end,
      function() return t:clone(), nil end,
      function() return t:matmul(dr.ones(3)), nil end,
    } do
      assert_contains(error_of(use), 'free')
    end
  end)

  it('keeps shape readable and prints as freed', function()
    local t = dr.zeros(3)
    t:free()
    assert.are.same({ 3 }, t:size())
    assert.are.equal('tensor(<freed>, size=(3,))', tostring(t))
  end)

  it('leaves other views of the storage usable', function()
    local t = dr.tensor { 1, 2, 3, 4 }
    local v = t:view(2, 2)
    t:free()
    assert.are.same({ { 1, 2 }, { 3, 4 } }, v:tolist())
  end)
end)

describe('arithmetic operators #binding', function()
  local a, b = dr.tensor { 1, 2 }, dr.tensor { 3, 5 }

  it('+ - * / and unary minus on tensors', function()
    assert.are.same({ 4, 7 }, (a + b):tolist())
    assert.are.same({ -2, -3 }, (a - b):tolist())
    assert.are.same({ 3, 10 }, (a * b):tolist())
    assert.are.same({ 0.5, 0.25 }, (dr.tensor { 1, 1 } / dr.tensor { 2, 4 }):tolist())
    assert.are.same({ -1, -2 }, (-a):tolist())
  end)

  it('take numbers on either side', function()
    assert.are.same({ 3, 4 }, (a + 2):tolist())
    assert.are.same({ 3, 4 }, (2 + a):tolist())
    assert.are.same({ 9, 8 }, (10 - a):tolist())
    assert.are.same({ -1, 0 }, (a - 2):tolist())
    assert.are.same({ 2, 4 }, (a * 2):tolist())
    assert.are.same({ 2, 4 }, (2 * a):tolist())
    assert.are.same({ 0.5, 1 }, (a / 2):tolist())
    assert.are.same({ 6, 3 }, (6 / a):tolist())
  end)

  it('promote types as torch does', function()
    local i = dr.tensor({ 1, 2 }, { dtype = dr.int64 })
    assert.are.equal('int64', (i + 2).dtype)
    assert.are.equal('int64', (-i).dtype)
    local f = i * 2.5
    assert.are.equal('float32', f.dtype)
    assert.are.same({ 2.5, 5 }, f:tolist())
    assert.are.equal('float32', (i / 2).dtype) -- true division
    assert.are.same({ 0.5, 1 }, (i / 2):tolist())
    local bi = dr.tensor { true, false } + 1
    assert.are.equal('int64', bi.dtype)
    assert.are.same({ 2, 1 }, bi:tolist())
    assert.are.equal('float32', (i + a).dtype)
    assert.are.equal('float16', (dr.ones(2, { dtype = dr.float16 }) * 3).dtype)
  end)

  it('broadcast shapes', function()
    local m = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ { 11, 22, 33 }, { 14, 25, 36 } }, (m + dr.tensor { 10, 20, 30 }):tolist())
    assert.are.same({ { 2, 4, 6 }, { 12, 15, 18 } }, (m * dr.tensor { { 2 }, { 3 } }):tolist())
    assert.are.same({ 2, 3, 3 }, (dr.ones(2, 1, 3) + dr.ones(3, 1)):size())
  end)

  it('reject shapes that do not broadcast, naming both', function()
    local msg = error_of(function() return dr.ones(2, 3) + dr.ones(4), nil end)
    assert_contains(msg, 'add')
    assert_contains(msg, '[2, 3]')
    assert_contains(msg, '[4]')
  end)

  it('reject operands that are not tensors or numbers', function()
    assert_contains(error_of(function() return a + 'x', nil end), 'unsupported operand')
  end)

  it('add and sub take alpha as torch.add does', function()
    local m = dr.tensor { { 1, 2 }, { 3, 4 } }
    assert.are.same({ { 1.5, 3 }, { 4.5, 6 } }, m:add(m, 0.5):tolist())
    assert.are.same({ -1, 0 }, a:sub(1, 2):tolist())
    assert.are.same({ 4, 7 }, dr.add(a, b):tolist())
  end)
end)

describe('sum #binding', function()
  local m = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }

  it('over everything gives a 0-d tensor', function()
    local s = m:sum()
    assert.are.equal(0, s:dim())
    assert.are.equal(21, s:item())
  end)

  it('over one dim, 1-based or negative', function()
    assert.are.same({ 5, 7, 9 }, m:sum(1):tolist())
    assert.are.same({ 6, 15 }, m:sum(2):tolist())
    assert.are.same({ 6, 15 }, m:sum(-1):tolist())
  end)

  it('over a list of dims', function()
    assert.are.equal(21, m:sum { 1, 2 }:item())
    assert.are.same({ 6 }, dr.ones(2, 1, 3):sum { 1, 3 }:tolist())
  end)

  it('keeps summed dims with size 1 when asked', function()
    assert.are.same({ { 6 }, { 15 } }, m:sum(2, true):tolist())
    assert.are.same({ 1, 1 }, m:sum({ 1, 2 }, true):size())
  end)

  it('sums integers and booleans to int64', function()
    local s = dr.tensor({ 1, 2 }, { dtype = dr.int32 }):sum()
    assert.are.equal('int64', s.dtype)
    assert.are.equal(3, s:item())
    local c = dr.tensor { true, false, true }:sum()
    assert.are.equal('int64', c.dtype)
    assert.are.equal(2, c:item())
  end)
end)

describe('matmul #binding', function()
  it('the worked example: [[1,2],[3,4]] @ itself sums to 54', function()
    local a = dr.tensor { { 1, 2 }, { 3, 4 } }
    assert.are.equal(54, a:matmul(dr.tensor { { 1, 2 }, { 3, 4 } }):sum():item())
    assert.are.same({ { 7, 10 }, { 15, 22 } }, a:matmul(a):tolist())
  end)

  it('multiplies matrices of different shapes', function()
    local m = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ { 14, 32 }, { 32, 77 } }, m:matmul(m:t()):tolist())
    assert.are.same({ 3, 3 }, m:t():matmul(m):size())
  end)

  it('batches over leading dims, broadcasting them', function()
    assert.are.same({ 4, 2, 5 }, dr.ones(4, 2, 3):matmul(dr.ones(3, 5)):size())
    assert.are.same({ 3, 2, 5 }, dr.ones(3, 2, 4):matmul(dr.ones(3, 4, 5)):size())
    local batch = dr.tensor { { { 1, 0 }, { 0, 1 } }, { { 2, 0 }, { 0, 2 } } }
    local v = dr.tensor { { 1, 2 }, { 3, 4 } }
    assert.are.same({ { { 1, 2 }, { 3, 4 } }, { { 2, 4 }, { 6, 8 } } }, batch:matmul(v):tolist())
  end)

  it('treats 1-D operands as torch.matmul does', function()
    local dot = dr.tensor { 1, 2 }:matmul(dr.tensor { 3, 4 })
    assert.are.equal(0, dot:dim())
    assert.are.equal(11, dot:item())
    local m = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    assert.are.same({ 6, 15 }, m:matmul(dr.tensor { 1, 1, 1 }):tolist())
    assert.are.same({ 5, 7, 9 }, dr.tensor { 1, 1 }:matmul(m):tolist())
  end)

  it('works as dr.matmul(a, b)', function()
    assert.are.equal(11, dr.matmul(dr.tensor { 1, 2 }, dr.tensor { 3, 4 }):item())
  end)

  it("reports a shape mismatch at the caller's file:line, naming both shapes", function()
    local a, b = dr.ones(2, 3), dr.ones(2, 3)
    local line, ok, msg = h.line(), pcall(a.matmul, a, b)
    assert.is_false(ok)
    local where = h.short_src() .. ':' .. line .. ': '
    assert.are.equal(where, msg:sub(1, #where))
    assert.matches('tensor_spec%.lua:' .. line .. ': ', msg)
    assert_contains(msg, 'matmul')
    local _, shapes = msg:gsub('%[2, 3%]', '')
    assert.are.equal(2, shapes, 'both shapes [2, 3] in: ' .. msg)
  end)

  it('names shapes that differ, in order', function()
    local msg = error_of(function() return dr.ones(2, 3):matmul(dr.ones(4, 5)), nil end)
    assert.matches('matmul.*%[2, 3%].*%[4, 5%]', msg)
  end)

  it('rejects an operand that is not a tensor', function()
    assert_contains(error_of(function() return dr.ones(2):matmul(3), nil end),
                    'matmul: expected a tensor, got number')
  end)
end)

describe('tostring prints as PyTorch does #binding', function()
  -- Expected strings follow torch/_tensor_str.py with its defaults (precision 4,
  -- threshold 1000, edgeitems 3, linewidth 80), "torch." spelled "dr.".
  local function shows(expected, t) assert.are.equal(expected, tostring(t)) end

  it('a float matrix whose values are integers', function()
    shows('tensor([[1., 2.],\n        [3., 4.]])', dr.tensor { { 1, 2 }, { 3, 4 } })
  end)

  it('non-integer values with 4 decimals, padded to one width', function()
    shows('tensor([0.5000, 0.2500])', dr.tensor { 0.5, 0.25 })
    shows('tensor([ 1.5000, -2.0000])', dr.tensor { 1.5, -2 })
    shows('tensor([ 1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10.])',
          dr.tensor(h.list(10, function(i) return i end)))
  end)

  it('scientific notation for a wide range or tiny values', function()
    shows('tensor([1.0000e-05, 1.0000e+00])', dr.tensor { 1e-5, 1 })
    shows('tensor([1.2346e+05, 5.0000e-01])', dr.tensor { 123456, 0.5 })
  end)

  it('integers and booleans', function()
    shows('tensor([1, 2])', dr.tensor({ 1, 2 }, { dtype = dr.int64 }))
    shows('tensor([  1,  -2, 300])', dr.tensor({ 1, -2, 300 }, { dtype = dr.int64 }))
    shows('tensor([ True, False])', dr.tensor { true, false })
  end)

  it('a dtype suffix for dtypes other than float32, int64 and bool', function()
    shows('tensor([1., 2.], dtype=dr.float16)', dr.tensor({ 1, 2 }, { dtype = dr.float16 }))
    shows('tensor([1, 2], dtype=dr.int32)', dr.tensor({ 1, 2 }, { dtype = dr.int32 }))
  end)

  it('a suffix that does not fit the last line goes on its own line', function()
    shows('tensor([1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1.],\n' ..
          '       dtype=dr.float16)', dr.ones(18, { dtype = dr.float16 }))
  end)

  it('a 0-d tensor', function()
    shows('tensor(3.5000)', dr.tensor(3.5))
    shows('tensor(3)', dr.tensor(3, { dtype = dr.int64 }))
  end)

  it('empty tensors, with the size unless it is (0,)', function()
    shows('tensor([])', dr.tensor {})
    shows('tensor([], size=(0, 3))', dr.zeros(0, 3))
  end)

  it('empty tensors of any dtype but float32 name the dtype', function()
    shows('tensor([], dtype=dr.int64)', dr.zeros(0, { dtype = dr.int64 }))
    shows('tensor([], size=(0, 3), dtype=dr.bool)', dr.zeros(0, 3, { dtype = dr.bool }))
  end)

  it('only nonzero finite values set the column width (not nan, inf, -0.)', function()
    shows('tensor([1., inf])', dr.tensor { 1, math.huge })
    shows('tensor([nan, 1.])', dr.tensor { 0 / 0, 1 })
    shows('tensor([-0., 1.])', dr.tensor { -0.0, 1 })
  end)

  it('long rows wrap at 80 columns', function()
    shows('tensor([0.3333, 0.6667, 1.0000, 1.3333, 1.6667, 2.0000, 2.3333, 2.6667, 3.0000,\n' ..
          '        3.3333, 3.6667, 4.0000, 4.3333, 4.6667, 5.0000, 5.3333, 5.6667, 6.0000,\n' ..
          '        6.3333, 6.6667])', dr.tensor(h.list(20, function(i) return i / 3 end)))
  end)

  it('more than 1000 elements are summarised with ...', function()
    shows('tensor([0., 0., 0.,  ..., 0., 0., 0.])', dr.zeros(2000))
    -- the format is chosen from the printed values only: 1..3 and 1998..2000
    shows('tensor([1.0000e+00, 2.0000e+00, 3.0000e+00,  ..., 1.9980e+03, 1.9990e+03,\n' ..
          '        2.0000e+03])', dr.tensor(h.list(2000, function(i) return i end)))
    shows('tensor([[0., 0., 0.,  ..., 0., 0., 0.],\n' ..
          '        [0., 0., 0.,  ..., 0., 0., 0.],\n' ..
          '        [0., 0., 0.,  ..., 0., 0., 0.],\n' ..
          '        ...,\n' ..
          '        [0., 0., 0.,  ..., 0., 0., 0.],\n' ..
          '        [0., 0., 0.,  ..., 0., 0., 0.],\n' ..
          '        [0., 0., 0.,  ..., 0., 0., 0.]])', dr.zeros(40, 50))
  end)

  it('blank lines between the blocks of a 3-d tensor', function()
    shows('tensor([[[1., 2.],\n         [3., 4.]],\n\n        [[5., 6.],\n         [7., 8.]]])',
          dr.tensor { { { 1, 2 }, { 3, 4 } }, { { 5, 6 }, { 7, 8 } } })
  end)
end)
