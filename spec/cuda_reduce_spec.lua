-- CUDA parity of the reduction and indexing kernels (core/backend/cuda/cuda_reduce.cu,
-- cuda_index.cu): each case runs on the CPU and on a CUDA copy of the same inputs
-- and compares the outputs and every input's gradient (spec/cuda_parity.lua).
-- Shapes cover both the short-row plans (a thread or a warp per output) and the
-- long-row ones (a block per output, outputs split into chunks), column sums,
-- and strided (transposed) inputs.
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')
local dr = require 'diffrl'

local function long(list) return dr.tensor(list, { dtype = 'int64' }) end
-- An int64 input of `shape` with values in lo..hi (1-based indices).
local function ints(shape, lo, hi) return { shape = shape, dtype = 'int64', int = { lo, hi } } end

-- A float tensor (requiring grad) whose values repeat, ties for max/min:
-- (i * 7) mod 5 - 2.
local function with_ties(rows, cols)
  local t = {}
  for i = 1, rows do
    t[i] = {}
    for j = 1, cols do t[i][j] = ((i * cols + j) * 7) % 5 - 2 end
  end
  return dr.tensor(t):requires_grad_()
end

describe('cuda parity: sum #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('over one dim, several dims, everything, keepdim', function()
    P.check { inputs = { { 4, 5, 6 } }, fn = function(a) return a:sum(2, true) end }
    P.check { inputs = { { 4, 5, 6 } }, fn = function(a) return a:sum({ 1, 3 }) end }
    P.check { inputs = { { 4, 5, 6 } }, fn = function(a) return a:sum() end }
    P.check { inputs = { { 7, 1, 3 } }, fn = function(a) return a:sum(2) end } -- a size-1 dim: a copy
  end)

  it('long rows: 3M elements to one number, 64 rows of 40000', function()
    P.check { inputs = { { 3000000 } }, fn = function(a) return a:sum() end, rtol = 1e-4, atol = 1e-3 }
    P.check { inputs = { { 64, 40000 } }, fn = function(a) return a:sum(2) end, atol = 1e-3 }
    P.check { inputs = { { 3, 700 } }, fn = function(a) return a:sum(2) end } -- a warp per row
  end)

  it('columns (bias gradients): over the leading dims', function()
    P.check { inputs = { { 4096, 64 } }, fn = function(a) return a:sum(1) end, atol = 1e-4 }
    P.check { inputs = { { 8, 77, 320 } }, fn = function(a) return a:sum({ 1, 2 }) end, atol = 1e-4 }
    P.check { inputs = { { 100000, 3 } }, fn = function(a) return a:sum(1) end, atol = 1e-3 }
  end)

  it('strided inputs: a transposed view, a narrowed one', function()
    P.check { inputs = { { 300, 50 } }, fn = function(a) return a:t():sum(2) end, atol = 1e-4 }
    P.check { inputs = { { 6, 2000 } }, fn = function(a) return a:t():sum(1) end, atol = 1e-4 }
    P.check { inputs = { { 5, 8, 9 } }, fn = function(a) return a:transpose(1, 3):sum({ 2, 3 }) end }
  end)

  it('integers and bools sum to int64; float16 keeps its dtype', function()
    P.check { inputs = { ints({ 50, 33 }, -1000, 1000) },
              fn = function(a) return a:sum(2) end }
    P.check { inputs = { { shape = { 9, 700 }, dtype = 'int32', int = { -5, 5 } } },
              fn = function(a) return a:t():sum(1) end }
    P.check { inputs = { { shape = { 40, 50 }, dtype = 'bool' } }, fn = function(a) return a:sum() end }
    P.check { inputs = { { shape = { 16, 300 }, dtype = 'float16' } },
              fn = function(a) return a:sum(2) end, atol = 1e-2, rtol = 1e-3 }
  end)
end)

describe('cuda parity: mean, var, std #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('over dims, with and without correction', function()
    P.check { inputs = { { 8, 1000 } }, fn = function(a) return a:mean(2) end }
    P.check { inputs = { { 8, 1000 } }, fn = function(a) return a:var(2) end }
    P.check { inputs = { { 6, 7, 5 } }, fn = function(a) return a:std({ 1, 3 }, { keepdim = true }) end }
    P.check { inputs = { { 6, 7 } }, fn = function(a) return a:var(1, { correction = 0 }) end }
    P.check { inputs = { { 12, 5 } }, fn = function(a) return a:std() end }
  end)

  it('long rows and columns, strided input', function()
    P.check { inputs = { { 2000000 } }, fn = function(a) return a:var() end, atol = 1e-4 }
    P.check { inputs = { { 3, 50000 } }, fn = function(a) return a:mean(2) end }
    P.check { inputs = { { 5000, 40 } }, fn = function(a) return a:std(1) end }
    P.check { inputs = { { 400, 30 } }, fn = function(a) return a:t():var(2) end }
    P.check { inputs = { { 30, 400 } }, fn = function(a) return a:t():mean(1) end }
  end)

  it('a large offset does not cancel (two passes)', function()
    local x = (dr.randn({ 4, 3000 }, { generator = dr.Generator(5) }) + 1000):requires_grad_()
    P.check { inputs = { x }, fn = function(a) return a:var(2) end, atol = 1e-3, rtol = 1e-3 }
  end)

  it('float16 inputs', function()
    P.check { inputs = { { shape = { 10, 300 }, dtype = 'float16' } },
              fn = function(a) return a:mean(2) end, atol = 1e-3, rtol = 1e-3 }
  end)
end)

describe('cuda parity: max, min, argmax, argmin #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('along a dim: values and the first index of the extreme', function()
    P.check { inputs = { { 7, 9 } }, fn = function(a) return { a:max(2) } end }
    P.check { inputs = { { 7, 9, 4 } }, fn = function(a) return { a:min(2, true) } end }
    P.check { inputs = { { 5, 3000 } }, fn = function(a) return { a:max(2) } end }
    P.check { inputs = { { 30, 40 } }, fn = function(a) return { a:t():min(2) } end }
    P.check { inputs = { with_ties(12, 10) }, fn = function(a) return { a:max(2) } end }
    P.check { inputs = { with_ties(12, 10) }, fn = function(a) return { a:min(1) } end }
  end)

  it('argmax / argmin, flattened and along a dim, long rows', function()
    P.check { inputs = { { 6, 8 } }, fn = function(a) return a:argmax() end }
    P.check { inputs = { { 6, 8 } }, fn = function(a) return a:argmin(1) end }
    P.check { inputs = { { 1000000 } }, fn = function(a) return a:argmax() end }
    P.check { inputs = { with_ties(300, 70) }, fn = function(a) return a:argmin() end }
    P.check { inputs = { with_ties(70, 300) }, fn = function(a) return a:t():argmax(2) end }
  end)

  it('NaN is the extreme, the first NaN wins', function()
    local nan = 0 / 0
    local x = dr.tensor({ { 1, nan, 3, nan }, { 2, 5, 5, 1 }, { nan, 0, 9, 9 } }):requires_grad_()
    P.check { inputs = { x }, fn = function(a) return { a:max(2) } end }
    P.check { inputs = { x }, fn = function(a) return { a:min(2) } end }
    P.check { inputs = { x }, fn = function(a) return a:argmax() end }
  end)

  it('integer, bool and half inputs', function()
    P.check { inputs = { ints({ 20, 31 }, -3, 3) },
              fn = function(a) return { a:max(2) } end }
    P.check { inputs = { { shape = { 20, 31 }, dtype = 'int32', int = { -3, 3 } } },
              fn = function(a) return a:argmin() end }
    P.check { inputs = { { shape = { 20, 31 }, dtype = 'bool' } }, fn = function(a) return { a:max(1) } end }
    P.check { inputs = { { shape = { 9, 50 }, dtype = 'float16' } },
              fn = function(a) return { a:min(2) } end }
  end)

  it('the backward of a full max / min shares the gradient among ties', function()
    P.check { inputs = { { 40, 50 } }, fn = function(a) return a:max() end }
    P.check { inputs = { with_ties(300, 400) }, fn = function(a) return a:min() end }
    P.check { inputs = { with_ties(9, 9) }, fn = function(a) return a:t():max() end }
  end)
end)

describe('cuda parity: cumsum #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('short lines (a thread each) and long ones (a block each), forward and reversed', function()
    P.check { inputs = { { 64, 33 } }, fn = function(a) return a:cumsum(2) end }
    P.check { inputs = { { 64, 33 } }, fn = function(a) return a:cumsum(1) end }
    P.check { inputs = { { 3, 5000 } }, fn = function(a) return a:cumsum(2) end, atol = 1e-4 }
    P.check { inputs = { { 10000, 8 } }, fn = function(a) return a:cumsum(1) end, atol = 1e-3 }
    P.check { inputs = { { 2, 1025 } }, fn = function(a) return a:cumsum(-1) end }
  end)

  it('strided inputs and integers', function()
    P.check { inputs = { { 700, 6 } }, fn = function(a) return a:t():cumsum(2) end, atol = 1e-4 }
    P.check { inputs = { { 4, 5, 6 } }, fn = function(a) return a:transpose(1, 3):cumsum(2) end }
    P.check { inputs = { ints({ 5, 3000 }, -100, 100) },
              fn = function(a) return a:cumsum(2) end }
    P.check { inputs = { { shape = { 30, 20 }, dtype = 'bool' } }, fn = function(a) return a:cumsum(1) end }
  end)
end)

describe('cuda parity: index_select, embedding, gather #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('index_select along each dim, repeated indices (index_add backward)', function()
    local idx = ints({ 25 }, 1, 10)
    P.check { inputs = { { 10, 7 }, idx }, fn = function(a, i) return a:index_select(1, i) end }
    P.check { inputs = { { 3, 10, 4 }, idx }, fn = function(a, i) return a:index_select(2, i) end }
    P.check { inputs = { { 6, 10 }, idx }, fn = function(a, i) return a:index_select(2, i) end }
    P.check { inputs = { { 10, 6 }, idx }, fn = function(a, i) return a:t():index_select(2, i) end }
    P.check { inputs = { { 10, 7 } }, fn = function(a) return a:index_select(1, { 3, 3, 3, 1 }) end }
  end)

  it('embedding: a vocabulary of 5000 rows, many repeats of one row', function()
    P.check { inputs = { ints({ 4, 77 }, 1, 5000), { 5000, 64 } },
              fn = function(i, w) return dr.embedding(i, w) end }
    P.check { inputs = { ints({ 3, 500 }, 1, 3), { 3, 16 } },
              fn = function(i, w) return dr.embedding(i, w) end, atol = 1e-4 }
  end)

  it('index_select keeps every dtype', function()
    P.check { inputs = { ints({ 8, 5 }, -9, 9), ints({ 6 }, 1, 8) },
              fn = function(a, i) return a:index_select(1, i) end }
    P.check { inputs = { { shape = { 8, 5 }, dtype = 'float16' }, ints({ 6 }, 1, 5) },
              fn = function(a, i) return a:index_select(2, i) end }
    P.check { inputs = { { shape = { 8, 5 }, dtype = 'bool' }, ints({ 6 }, 1, 8) },
              fn = function(a, i) return a:index_select(1, i) end }
  end)

  it('gather along each dim, strided input and index (scatter_add backward)', function()
    P.check { inputs = { { 6, 9 }, ints({ 6, 4 }, 1, 9) },
              fn = function(a, i) return a:gather(2, i) end }
    P.check { inputs = { { 6, 9 }, ints({ 12, 9 }, 1, 6) },
              fn = function(a, i) return a:gather(1, i) end }
    P.check { inputs = { { 9, 6 }, ints({ 6, 4 }, 1, 9) },
              fn = function(a, i) return a:t():gather(2, i) end }
    P.check { inputs = { { 4, 5, 6 }, ints({ 3, 5, 2 }, 1, 4) },
              fn = function(a, i) return a:gather(1, i:transpose(2, 3):contiguous():transpose(2, 3)) end }
    P.check { inputs = { { 3, 2000 }, ints({ 3, 3000 }, 1, 2000) },
              fn = function(a, i) return a:gather(2, i) end }
    P.check { inputs = { ints({ 6, 9 }, -5, 5), ints({ 6, 4 }, 1, 9) },
              fn = function(a, i) return a:gather(2, i) end }
  end)

  it('max along a dim backpropagates through scatter_add', function()
    P.check { inputs = { { 5, 6, 7 } }, fn = function(a) return (a:max(2)) end }
  end)

  it('an index out of range is reported with its 1-based value', function()
    local x = dr.randn { 3, 4 }:cuda()
    local ok, err = pcall(x.index_select, x, 1, long { 1, 4, 2 }:cuda())
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find('index 4 is out of range', 1, true), tostring(err))
    ok, err = pcall(x.gather, x, 2, long { { 1 }, { 0 }, { 5 } }:cuda())
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find('index 0 is out of range', 1, true), tostring(err))
    -- the stream is still usable after the error
    P.close(x:cpu():index_select(2, long { 4, 1 }), x:index_select(2, long { 4, 1 }:cuda()), 0, 0)
  end)
end)
