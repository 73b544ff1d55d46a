-- CPU/CUDA parity of the dense kernels (core/backend/cuda/cuda_matmul.cu,
-- cuda_conv.cu, cuda_pool.cu): matmul in every operand layout the backend takes
-- in place or gathers, conv2d with its two gradients over strides, padding,
-- dilation and groups, nearest upsampling and average pooling. Forward outputs
-- and every input's gradient are compared with the CPU backend (cuda_parity.lua).
-- Long sums (matmul, conv) differ from the CPU in summation order only, so
-- their atol is 1e-4; the resampling kernels repeat the CPU's float sums in
-- the same order and are held to the default.
local dr = require 'diffrl'
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')

local LONG = { atol = 1e-4, rtol = 1e-4 }

local function check(o)
  o.atol = o.atol or LONG.atol
  o.rtol = o.rtol or LONG.rtol
  P.check(o)
end

describe('cuda parity: matmul #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('multiplies 2-D matrices', function()
    check { inputs = { { 7, 13 }, { 13, 5 } }, fn = function(a, b) return a:matmul(b) end }
  end)

  it('multiplies batches', function()
    check { inputs = { { 3, 9, 17 }, { 3, 17, 6 } }, fn = function(a, b) return a:matmul(b) end }
  end)

  it('broadcasts the batch dims of both operands', function()
    check { inputs = { { 2, 3, 4 }, { 4, 5 } }, fn = function(a, b) return a:matmul(b) end }
    check { inputs = { { 2, 1, 5, 6 }, { 3, 6, 4 } }, fn = function(a, b) return a:matmul(b) end }
    check { inputs = { { 5, 6 }, { 4, 6, 3 } }, fn = function(a, b) return a:matmul(b) end }
  end)

  it('reads transposed operands in place', function()
    check { inputs = { { 13, 7 }, { 13, 5 } }, fn = function(a, b) return a:t():matmul(b) end }
    check { inputs = { { 7, 13 }, { 5, 13 } }, fn = function(a, b) return a:matmul(b:t()) end }
    check { inputs = { { 2, 11, 6 }, { 2, 4, 11 } },
            fn = function(a, b) return a:transpose(2, 3):matmul(b:transpose(2, 3)) end }
  end)

  it('takes non-contiguous slices (narrow, select, a batch that does not fold)', function()
    -- narrow: rows longer than the matrix (ld > cols)
    check { inputs = { { 6, 20 }, { 9, 4 } }, fn = function(a, b) return a:narrow(2, 3, 9):matmul(b) end }
    -- select on the last dim: neither stride is 1, so the operand is gathered
    check { inputs = { { 6, 9, 2 }, { 9, 4, 3 } },
            fn = function(a, b) return a:select(3, 2):matmul(b:select(3, 1)) end }
    -- a transposed [N, B, C] view against a weight: a batch of GEMMs over a view
    check { inputs = { { 5, 3, 8 }, { 8, 4 } },
            fn = function(a, b) return a:transpose(1, 2):matmul(b) end }
  end)

  it('multiplies vectors', function()
    check { inputs = { { 9 }, { 9 } }, fn = function(a, b) return a:matmul(b) end }
    check { inputs = { { 9 }, { 3, 9, 4 } }, fn = function(a, b) return a:matmul(b) end }
    check { inputs = { { 3, 5, 9 }, { 9 } }, fn = function(a, b) return a:matmul(b) end }
  end)

  it('computes linear with and without bias', function()
    check { inputs = { { 2, 7, 32 }, { 24, 32 }, { 24 } },
            fn = function(x, w, b) return dr.linear(x, w, b) end }
    check { inputs = { { 10, 32 }, { 24, 32 } }, fn = function(x, w) return dr.linear(x, w) end }
  end)

  it('keeps long sums within FP32 parity (no TF32)', function()
    check { inputs = { { 2, 64, 768 }, { 768, 96 } }, fn = function(a, b) return a:matmul(b) end,
            atol = 3e-4 }
  end)
end)

describe('cuda parity: conv2d #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  local function conv(xs, ws, opts, bias)
    local inputs = { xs, ws }
    if bias then inputs[3] = { ws[1] } end
    check { inputs = inputs, fn = function(x, w, b) return dr.conv2d(x, w, b, opts) end }
  end

  it('convolves with stride 2 and padding, with bias', function()
    conv({ 2, 4, 9, 9 }, { 6, 4, 3, 3 }, { stride = 2, padding = 1 }, true)
  end)

  it('convolves without bias', function()
    conv({ 2, 4, 8, 7 }, { 5, 4, 3, 3 }, { padding = 1 }, false)
  end)

  it('convolves with dilation 2', function()
    conv({ 2, 3, 11, 10 }, { 4, 3, 3, 3 }, { padding = 2, dilation = 2 }, true)
  end)

  it('convolves in 2 groups and depthwise', function()
    conv({ 2, 4, 8, 8 }, { 6, 2, 3, 3 }, { padding = 1, groups = 2 }, true)
    conv({ 2, 6, 8, 8 }, { 6, 1, 3, 3 }, { padding = 1, groups = 6 }, true)
    conv({ 1, 4, 7, 7 }, { 8, 1, 3, 3 }, { stride = 2, groups = 4 }, false)
  end)

  it('convolves with a 1x1 kernel', function()
    conv({ 2, 8, 6, 5 }, { 5, 8, 1, 1 }, nil, true)
  end)

  it('takes uneven kernels, strides and padding', function()
    conv({ 3, 5, 7, 9 }, { 4, 5, 2, 3 }, { stride = { 2, 1 }, padding = { 0, 1 } }, true)
  end)

  it('convolves an SD-like 64-channel 32x32 batch with a 3x3 kernel', function()
    conv({ 2, 64, 32, 32 }, { 64, 64, 3, 3 }, { padding = 1 }, true)
  end)

  it('returns each gradient alone from conv2d_backward', function()
    local g = P.gen(7)
    local x, w = dr.randn({ 2, 4, 8, 8 }, { generator = g }), dr.randn({ 6, 2, 3, 3 }, { generator = g })
    local dy = dr.randn({ 2, 6, 4, 4 }, { generator = g })
    local opts = { stride = 2, padding = 1, groups = 2 }
    local gi, gw, gb = dr.conv2d_backward(dy, x, w, opts)
    local ci, cw, cb = dr.conv2d_backward(dy:cuda(), x:cuda(), w:cuda(), opts)
    P.close(gi, ci, 1e-4, 1e-4, 'grad_input')
    P.close(gw, cw, 1e-4, 1e-4, 'grad_weight')
    P.close(gb, cb, 1e-4, 1e-4, 'grad_bias')
  end)

  it('repeats its bits (deterministic algorithms only)', function()
    local g = P.gen(11)
    local x = dr.randn({ 2, 16, 12, 12 }, { generator = g }):cuda()
    local w = dr.randn({ 16, 16, 3, 3 }, { generator = g }):cuda()
    local dy = dr.randn({ 2, 16, 12, 12 }, { generator = g }):cuda()
    local function run()
      local gi, gw, gb = dr.conv2d_backward(dy, x:detach(), w:detach(), { padding = 1 })
      return gi:cpu():tolist(), gw:cpu():tolist(), gb:cpu():tolist()
    end
    local a1, b1, c1 = run()
    local a2, b2, c2 = run()
    assert.same(a1, a2)
    assert.same(b1, b2)
    assert.same(c1, c2)
  end)
end)

describe('cuda parity: upsample and avg_pool2d #gpu', function()
  if not P.available() then it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end) return end

  it('upsamples by 2 (nearest), forward and backward', function()
    P.check { inputs = { { 2, 3, 5, 7 } }, fn = function(x) return dr.interpolate(x, { scale_factor = 2 }) end }
  end)

  it('upsamples by uneven factors', function()
    P.check { inputs = { { 1, 2, 4, 3 } },
              fn = function(x) return dr.interpolate(x, { scale_factor = { 3, 2 } }) end }
  end)

  it('average-pools 2x2, forward and backward', function()
    P.check { inputs = { { 2, 3, 8, 10 } }, fn = function(x) return dr.avg_pool2d(x, 2) end }
  end)

  it('average-pools with overlapping padded windows (count_include_pad)', function()
    P.check { inputs = { { 2, 3, 11, 10 } }, fn = function(x) return dr.avg_pool2d(x, 3, 2, 1) end }
    P.check { inputs = { { 1, 2, 9, 9 } }, fn = function(x) return dr.avg_pool2d(x, { 3, 2 }, { 1, 2 }, { 1, 1 }) end }
  end)
end)
