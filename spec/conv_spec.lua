-- Convolution and resampling from Lua, as torch.nn.functional: dr.conv2d (stride,
-- padding incl. 'same'/'valid', dilation, groups, bias, unbatched input, options
-- or positional arguments), dr.interpolate (nearest, integer scale factors),
-- dr.avg_pool2d, their backward functions, and errors at the caller's line.
-- Tagged #binding: these also run under plain luajit with DIFFRL_LIB.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

-- The message of f(...)'s error, checked to point at the caller's line.
local function error_here(line, ok, msg)
  assert.is_false(ok, 'expected an error')
  local where = h.short_src() .. ':' .. line .. ': '
  assert.are.equal(where, msg:sub(1, #where))
  return msg
end

-- A [1, 1, h, w] tensor 1, 2, 3, ... row by row.
local function counting(hh, ww)
  local rows = {}
  for i = 1, hh do
    rows[i] = {}
    for j = 1, ww do rows[i][j] = (i - 1) * ww + j end
  end
  return dr.tensor { { rows } }
end

describe('dr.conv2d #binding', function()
  it('sums the 3x3 neighbourhood of ones with padding 1, plus the bias', function()
    local x, w = dr.ones(1, 1, 3, 3), dr.ones(1, 1, 3, 3)
    local y = dr.conv2d(x, w, dr.tensor { 1 }, { padding = 1 })
    assert.are.same({ 1, 1, 3, 3 }, y:size())
    assert.are.same({ { { { 5, 7, 5 }, { 7, 10, 7 }, { 5, 7, 5 } } } }, y:tolist())
  end)

  it('gives torch output shapes for stride, padding and dilation', function()
    local x, w = dr.randn(2, 3, 9, 8), dr.randn(4, 3, 3, 3)
    assert.are.same({ 2, 4, 7, 6 }, dr.conv2d(x, w):size())
    assert.are.same({ 2, 4, 5, 4 }, dr.conv2d(x, w, nil, { stride = 2, padding = 1 }):size())
    assert.are.same({ 2, 4, 5, 4 }, dr.conv2d(x, w, { dilation = 2 }):size())
    assert.are.same({ 2, 4, 9, 2 },
                    dr.conv2d(x, w, nil, { stride = { 1, 3 }, padding = { 1, 0 } }):size())
    assert.are.same({ 2, 4, 5, 4 }, dr.conv2d(x, w, nil, 2, 1):size()) -- torch's positional order
    assert.are.same({ 2, 4, 9, 8 }, dr.conv2d(x, w, nil, { padding = 'same' }):size())
    assert.are.same({ 2, 4, 9, 8 }, dr.conv2d(x, w, nil, { padding = 'same', dilation = 2 }):size())
    assert.are.same({ 2, 4, 7, 6 }, dr.conv2d(x, w, nil, { padding = 'valid' }):size())
  end)

  it('convolves each group with its own filters', function()
    local x = dr.tensor { { { { 1, 1 } }, { { 2, 2 } } } } -- [1, 2, 1, 2]
    local w = dr.tensor { { { { 3 } } }, { { { 5 } } } }  -- [2, 1, 1, 1]
    local y = dr.conv2d(x, w, nil, { groups = 2 })
    assert.are.same({ { { { 3, 3 } }, { { 10, 10 } } } }, y:tolist())
  end)

  it('takes one unbatched [C, H, W] image', function()
    local x, w = dr.randn(3, 5, 5), dr.randn(2, 3, 3, 3)
    local y = dr.conv2d(x, w, nil, { padding = 1 })
    assert.are.same({ 2, 5, 5 }, y:size())
    h.assert_close(y:tolist(), dr.conv2d(x:reshape(1, 3, 5, 5), w, nil, 1, 1)[1]:tolist(), 1e-6)
  end)

  it('reads non-contiguous inputs and keeps half dtypes', function()
    local x, w = dr.randn(2, 3, 6, 5), dr.randn(4, 3, 3, 3)
    local xt = x:transpose(3, 4)
    assert.is_false(xt:is_contiguous())
    h.assert_close(dr.conv2d(xt, w, nil, 1, 1):tolist(),
                   dr.conv2d(xt:contiguous(), w, nil, 1, 1):tolist(), 1e-6)
    local y = dr.conv2d(x:half(), w:half(), nil, { padding = 1 })
    assert.are.equal('float16', y.dtype)
    local rounded = dr.conv2d(x:half():float(), w:half():float(), nil, 1, 1)
    h.assert_close(y:float():tolist(), rounded:tolist(), 5e-3)
  end)

  it('has a backward that returns input, weight and bias gradients', function()
    local x, w = dr.randn(2, 3, 5, 5), dr.randn(4, 3, 3, 3)
    local gi, gw, gb = dr.conv2d_backward(dr.ones(2, 4, 5, 5), x, w, { padding = 1 })
    assert.are.same({ 2, 3, 5, 5 }, gi:size())
    assert.are.same({ 4, 3, 3, 3 }, gw:size())
    assert.are.same({ 50, 50, 50, 50 }, gb:tolist())
  end)

  it('names both shapes when the channels do not match, at the caller\'s line', function()
    local x, w = dr.zeros(1, 8, 64, 64), dr.zeros(320, 4, 3, 3)
    local msg = error_here(h.line(), pcall(dr.conv2d, x, w))
    assert_contains(msg, 'conv2d: weight [320, 4, 3, 3] expects 4 input channels (groups 1), '
                    .. 'got input [1, 8, 64, 64] with 8')
  end)

  it('rejects bad arguments by name', function()
    local x, w = dr.zeros(1, 4, 5, 5), dr.zeros(6, 4, 3, 3)
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, w, nil, { stride = 0 })),
                    'conv2d: stride must be positive, got [0, 0]')
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, w, nil, { stride = { 1, 2, 3 } })),
                    'conv2d: stride must be an integer or a pair {h, w} of integers, got {1, 2, 3}')
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, w, nil, { pading = 1 })),
                    "conv2d: unknown option 'pading'")
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, w, dr.zeros(5))),
                    'conv2d: bias [5] does not fit weight [6, 4, 3, 3]')
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, w, nil, { groups = 4 })),
                    'not divisible by groups 4')
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, w:half())),
                    'must have the same dtype')
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, dr.zeros(6, 4, 2, 2), nil,
                                               { padding = 'same' })), "padding='same'")
    local strided_same = { stride = 2, padding = 'same' }
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, w, nil, strided_same)),
                    "padding='same' is not supported for strided convolutions")
    assert_contains(error_here(h.line(), pcall(dr.conv2d, x, nil)),
                    'conv2d: weight must be a tensor, got nil')
    assert_contains(error_here(h.line(), pcall(dr.conv2d, dr.zeros(4, 5), w)),
                    'conv2d: expected a 3-D [C, H, W] or 4-D [N, C, H, W] input, got [4, 5]')
  end)
end)

describe('dr.interpolate #binding', function()
  it('repeats each pixel scale_factor times in both directions', function()
    local y = dr.interpolate(dr.tensor { { { { 1, 2 }, { 3, 4 } } } }, { scale_factor = 2 })
    assert.are.same({ { { { 1, 1, 2, 2 }, { 1, 1, 2, 2 }, { 3, 3, 4, 4 }, { 3, 3, 4, 4 } } } },
                    y:tolist())
    local x = dr.randn(2, 3, 5, 4)
    assert.are.same({ 2, 3, 10, 4 }, dr.interpolate(x, { scale_factor = { 2, 1 } }):size())
    assert.are.same({ 2, 3, 10, 12 }, dr.interpolate(x, { size = { 10, 12 } }):size())
    assert.are.same({ 1, 1, 4, 4 }, dr.interpolate(counting(2, 2), nil, 2):size()) -- positional
    local half = dr.randn(1, 1, 2, 2):bfloat16()
    assert.are.equal('bfloat16', dr.interpolate(half, { scale_factor = 2 }).dtype)
  end)

  it('sums each block in its backward', function()
    local g = dr.upsample_nearest2d_backward(counting(4, 4), 2)
    assert.are.same({ { { { 1 + 2 + 5 + 6, 3 + 4 + 7 + 8 },
                          { 9 + 10 + 13 + 14, 11 + 12 + 15 + 16 } } } }, g:tolist())
  end)

  it('names the option it does not support', function()
    local x = dr.zeros(1, 1, 4, 4)
    local bilinear = { scale_factor = 2, mode = 'bilinear' }
    assert_contains(error_here(h.line(), pcall(dr.interpolate, x, bilinear)),
                    "interpolate: mode 'bilinear' is not supported; only mode='nearest'")
    assert_contains(error_here(h.line(), pcall(dr.interpolate, x, { scale_factor = 1.5 })),
                    'interpolate: scale_factor 1.5 is not supported: only positive integer')
    assert_contains(error_here(h.line(), pcall(dr.interpolate, x, { size = { 6, 8 } })),
                    'interpolate: size {6, 8} is not a whole multiple')
    local corners = { scale_factor = 2, align_corners = true }
    assert_contains(error_here(h.line(), pcall(dr.interpolate, x, corners)),
                    'align_corners')
    assert_contains(error_here(h.line(), pcall(dr.interpolate, x, { scale_factor = 2, size = 8 })),
                    'exactly one of size and scale_factor')
    assert_contains(error_here(h.line(), pcall(dr.interpolate, x, { scale = 2 })),
                    "interpolate: unknown option 'scale'")
    local x3 = dr.zeros(1, 4, 4)
    assert_contains(error_here(h.line(), pcall(dr.interpolate, x3, { scale_factor = 2 })),
                    'interpolate: only 4-D input')
  end)
end)

describe('dr.avg_pool2d #binding', function()
  it('averages windows, stride defaulting to the kernel size', function()
    local y = dr.avg_pool2d(counting(4, 4), 2)
    assert.are.same({ { { { 3.5, 5.5 }, { 11.5, 13.5 } } } }, y:tolist())
    assert.are.same({ 3, 2, 2 }, dr.avg_pool2d(dr.randn(3, 4, 4), 2):size()) -- unbatched
  end)

  it('counts the zero padding in the divisor, as torch by default', function()
    local y = dr.avg_pool2d(dr.ones(1, 1, 3, 3), 3, 1, 1)
    h.assert_close(y:tolist(), { { { { 4 / 9, 6 / 9, 4 / 9 }, { 6 / 9, 1, 6 / 9 },
                                     { 4 / 9, 6 / 9, 4 / 9 } } } }, 1e-6)
    local x = dr.randn(2, 3, 5, 6)
    assert.are.same({ 2, 3, 2, 3 }, dr.avg_pool2d(x, { 3, 2 }, { padding = { 1, 0 } }):size())
  end)

  it('spreads the gradient evenly over each window', function()
    local g = dr.avg_pool2d_backward(dr.ones(1, 1, 2, 2), dr.zeros(1, 1, 4, 5), 2)
    assert.are.same({ { { { .25, .25, .25, .25, 0 }, { .25, .25, .25, .25, 0 },
                          { .25, .25, .25, .25, 0 }, { .25, .25, .25, .25, 0 } } } }, g:tolist())
  end)

  it('rejects what it does not support by name', function()
    local x = dr.zeros(1, 1, 4, 4)
    assert_contains(error_here(h.line(), pcall(dr.avg_pool2d, x, 2, nil, 0, true)),
                    'avg_pool2d: ceil_mode=true is not supported')
    assert_contains(error_here(h.line(), pcall(dr.avg_pool2d, x, 2, { count_include_pad = false })),
                    'avg_pool2d: count_include_pad=false is not supported')
    assert_contains(error_here(h.line(), pcall(dr.avg_pool2d, x, 2, 2, 2)),
                    'avg_pool2d: padding [2, 2] must be at most half of kernel_size [2, 2]')
    assert_contains(error_here(h.line(), pcall(dr.avg_pool2d, x, 'big')),
                    "avg_pool2d: kernel_size must be an integer or a pair {h, w} of integers, "
                    .. "got 'big'")
  end)
end)
