-- CUDA parity of softmax / log_softmax, layer_norm and group_norm
-- (core/backend/cuda/cuda_norm.cu), forward and backward, against the CPU
-- backend (spec/cuda_parity.lua). Shapes cover a warp per row and a block per
-- row, softmax over a non-last dim (a thread per column), long segments cut into
-- chunks (few group_norm slabs of many elements), many short rows, and strided
-- inputs.
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')
local dr = require 'diffrl'

describe('cuda parity: softmax, log_softmax #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('short rows (a warp each)', function()
    P.check { inputs = { { 8, 77 } }, fn = function(a) return a:softmax(2) end }
    P.check { inputs = { { 8, 77 } }, fn = function(a) return a:log_softmax(2) end }
    P.check { inputs = { { 2, 3, 1024 } }, fn = function(a) return dr.softmax(a, -1) end }
    P.check { inputs = { { 5, 1 } }, fn = function(a) return a:log_softmax(2) end }
  end)

  it('long rows (a block each): 4096 and 10000 columns', function()
    P.check { inputs = { { 4, 4096 } }, fn = function(a) return a:softmax(2) end }
    P.check { inputs = { { 4, 4096 } }, fn = function(a) return a:log_softmax(-1) end, atol = 1e-4 }
    P.check { inputs = { { 3, 10000 } }, fn = function(a) return a:softmax(2) end }
    P.check { inputs = { { 2, 1025 } }, fn = function(a) return a:log_softmax(2) end }
  end)

  it('over a leading dim (a thread per column)', function()
    P.check { inputs = { { 4, 50, 6 } }, fn = function(a) return a:softmax(2) end }
    P.check { inputs = { { 64, 7 } }, fn = function(a) return a:log_softmax(1) end }
    P.check { inputs = { { 3000, 2 } }, fn = function(a) return a:softmax(1) end }
  end)

  it('strided inputs and large values', function()
    P.check { inputs = { { 30, 40 } }, fn = function(a) return a:t():softmax(2) end }
    P.check { inputs = { { 30, 2000 } }, fn = function(a) return a:t():log_softmax(1) end, atol = 1e-4 }
    local big = (dr.randn({ 6, 300 }, { generator = dr.Generator(3) }) * 1000):requires_grad_()
    P.check { inputs = { big }, fn = function(a) return a:softmax(2) end }
    P.check { inputs = { big }, fn = function(a) return a:log_softmax(2) end, rtol = 1e-4, atol = 1e-3 }
  end)
end)

describe('cuda parity: layer_norm #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('with weight and bias, either, or neither', function()
    P.check { inputs = { { 16, 64 }, { 64 }, { 64 } },
              fn = function(x, w, b) return dr.layer_norm(x, 64, w, b) end }
    P.check { inputs = { { 16, 64 }, { 64 } }, fn = function(x, w) return dr.layer_norm(x, 64, w) end }
    P.check { inputs = { { 16, 64 }, { 64 } }, fn = function(x, b) return dr.layer_norm(x, 64, nil, b) end }
    P.check { inputs = { { 8, 3000 } }, fn = function(x) return dr.layer_norm(x, 3000) end }
  end)

  it('several normalized dims, many short rows, few long rows', function()
    P.check { inputs = { { 2, 5, 4, 6 }, { 4, 6 }, { 4, 6 } },
              fn = function(x, w, b) return dr.layer_norm(x, { 4, 6 }, w, b, 1e-3) end }
    P.check { inputs = { { 4096, 32 }, { 32 }, { 32 } },
              fn = function(x, w, b) return dr.layer_norm(x, 32, w, b) end, grad_atol = 1e-3 }
    P.check { inputs = { { 2, 50000 }, { 50000 }, { 50000 } },
              fn = function(x, w, b) return dr.layer_norm(x, 50000, w, b) end }
    P.check { inputs = { { 4, 77, 768 }, { 768 }, { 768 } },
              fn = function(x, w, b) return dr.layer_norm(x, 768, w, b) end, grad_atol = 1e-3 }
  end)

  it('strided input, a large offset, mean and rstd', function()
    P.check { inputs = { { 40, 24 }, { 40 } }, fn = function(x, w) return dr.layer_norm(x:t(), 40, w) end }
    local off = (dr.randn({ 6, 500 }, { generator = dr.Generator(4) }) * 0.01 + 300):requires_grad_()
    P.check { inputs = { off }, fn = function(x) return dr.layer_norm(x, 500) end, atol = 1e-3, rtol = 1e-3 }
    P.check { inputs = { { 12, 700 }, { 700 }, { 700 } }, grad = false,
              fn = function(x, w, b) return { dr.native_layer_norm(x, 700, w, b) } end }
  end)
end)

describe('cuda parity: group_norm #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('image shapes: {2, 64, 32, 32} with 32 groups, {2, 320, 16, 16}', function()
    P.check { inputs = { { 2, 64, 32, 32 }, { 64 }, { 64 } },
              fn = function(x, w, b) return dr.group_norm(x, 32, w, b) end, grad_atol = 1e-3 }
    P.check { inputs = { { 2, 320, 16, 16 }, { 320 }, { 320 } },
              fn = function(x, w, b) return dr.group_norm(x, 32, w, b, 1e-6) end, grad_atol = 1e-3 }
  end)

  it('few long slabs (chunked), no affine, weight only', function()
    P.check { inputs = { { 1, 32, 64, 64 }, { 32 }, { 32 } },
              fn = function(x, w, b) return dr.group_norm(x, 8, w, b) end, grad_atol = 1e-3 }
    P.check { inputs = { { 2, 8, 40, 40 } }, fn = function(x) return dr.group_norm(x, 2) end }
    P.check { inputs = { { 2, 8, 40, 40 }, { 8 } }, fn = function(x, w) return dr.group_norm(x, 4, w) end,
              grad_atol = 1e-3 }
  end)

  it('small spatial sizes: 3-D input, one position, one group per channel', function()
    P.check { inputs = { { 4, 6, 5 }, { 6 }, { 6 } },
              fn = function(x, w, b) return dr.group_norm(x, 3, w, b) end }
    P.check { inputs = { { 3, 8 }, { 8 }, { 8 } },
              fn = function(x, w, b) return dr.group_norm(x, 4, w, b) end }
    P.check { inputs = { { 5, 12, 3, 3 }, { 12 }, { 12 } },
              fn = function(x, w, b) return dr.group_norm(x, 12, w, b) end }
  end)

  it('strided input, mean and rstd', function()
    P.check { inputs = { { 2, 4, 6, 8 }, { 4 }, { 4 } },
              fn = function(x, w, b) return dr.group_norm(x:transpose(3, 4), 2, w, b) end }
    P.check { inputs = { { 2, 64, 16, 16 }, { 64 }, { 64 } }, grad = false,
              fn = function(x, w, b) return { dr.native_group_norm(x, 32, w, b) } end }
  end)
end)
