-- Normalization, softmax and unary math from Lua: tensor methods and the
-- torch.nn.functional forms, 1-based dims, optional arguments, and errors that
-- name the op and point at the caller's line.
-- Tagged #binding: these also run under plain luajit with DIFFRL_LIB.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local error_of = h.error_of

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

local function sigmoid(x) return 1 / (1 + math.exp(-x)) end
local function map(list, f)
  local out = {}
  for i, v in ipairs(list) do out[i] = f(v) end
  return out
end

local xs = { -2.5, -1, -0.25, 0.5, 1, 3 }

describe('unary math #binding', function()
  it('computes the activations as torch does', function()
    local x = dr.tensor(xs)
    h.assert_close(x:silu():tolist(), map(xs, function(v) return v * sigmoid(v) end), 1e-6)
    h.assert_close(dr.quick_gelu(x):tolist(),
                   map(xs, function(v) return v * sigmoid(1.702 * v) end), 1e-6)
    h.assert_close(dr.relu(x):tolist(), map(xs, function(v) return math.max(v, 0) end), 0)
    h.assert_close(x:sigmoid():tolist(), map(xs, sigmoid), 1e-6)
    h.assert_close(dr.tanh(x):tolist(), map(xs, function(v)
      return (math.exp(v) - math.exp(-v)) / (math.exp(v) + math.exp(-v)) end), 1e-6)
  end)

  it('has exact and tanh-approximated gelu', function()
    local x = dr.tensor { -1, 0, 1 }
    h.assert_close(dr.gelu(x):tolist(), { -0.15865525, 0, 0.84134475 }, 1e-6)
    local tanh_form = { -0.15880801, 0, 0.84119199 }
    h.assert_close(dr.gelu(x, { approximate = 'tanh' }):tolist(), tanh_form, 1e-6)
    h.assert_close(x:gelu('tanh'):tolist(), tanh_form, 1e-6)
    assert_contains(error_of(dr.gelu, x, { approximate = 'fast' }),
                    "gelu: approximate must be 'none' or 'tanh', got fast")
    assert_contains(error_of(dr.gelu, x, { approx = 'tanh' }), "gelu: unknown option 'approx'")
  end)

  it('has exp, log, sqrt, rsqrt and abs with torch edge values', function()
    local x = dr.tensor { 0, 1, 4 }
    h.assert_close(x:exp():tolist(), { 1, math.exp(1), math.exp(4) }, 1e-6)
    local l = dr.log(x):tolist()
    assert.are.equal(-math.huge, l[1])
    h.assert_close({ l[2], l[3] }, { 0, math.log(4) }, 1e-6)
    assert.are.same({ 0, 1, 2 }, x:sqrt():tolist())
    assert.are.same({ math.huge, 1, 0.5 }, x:rsqrt():tolist())
    assert.are.same({ 3, 0, 2 }, dr.tensor({ -3, 0, 2 }):abs():tolist())
    local nan = dr.tensor({ -1 }):log():item()
    assert.is_true(nan ~= nan)
  end)

  it('raises to a number power', function()
    local x = dr.tensor { 1, 2, 3 }
    assert.are.same({ 1, 4, 9 }, x:pow(2):tolist())
    h.assert_close(dr.pow(x, 0.5):tolist(), { 1, math.sqrt(2), math.sqrt(3) }, 1e-6)
    assert.are.same({ 1, 1, 1 }, x:pow(0):tolist())
    assert_contains(error_of(x.pow, x, x), 'pow: a tensor exponent is not supported yet')
    assert_contains(error_of(x.pow, x, 'two'), 'pow: exponent must be a number, got string')
  end)

  it('clamps with either bound missing', function()
    local x = dr.tensor { -2, -0.5, 0.5, 2 }
    assert.are.same({ -1, -0.5, 0.5, 1 }, x:clamp(-1, 1):tolist())
    assert.are.same({ -2, -0.5, 0, 0 }, x:clamp(nil, 0):tolist())
    assert.are.same({ 0, 0, 0.5, 2 }, dr.clamp(x, 0):tolist())
    assert.are.same({ 0, 0, 0.5, 2 }, x:clamp_min(0):tolist())
    assert.are.same({ -2, -0.5, 0.5, 1 }, x:clamp_max(1):tolist())
    assert.are.same({ 1, 1, 1, 1 }, x:clamp(3, 1):tolist()) -- min > max gives max, as torch
    assert_contains(error_of(x.clamp, x), "clamp: at least one of 'min' or 'max' must be given")
    assert_contains(error_of(x.clamp_min, x), 'clamp_min: min must be a number, got nil')
  end)

  it('keeps float16 and bfloat16 and refuses integers, naming the op', function()
    assert.are.equal('float16', dr.tensor({ 1, 2 }, { dtype = 'float16' }):silu().dtype)
    assert.are.equal('bfloat16', dr.tensor({ 1, 2 }, { dtype = 'bfloat16' }):exp().dtype)
    local msg = error_of(function() return dr.tensor({ 1, 2 }, { dtype = 'int64' }):silu(), nil end)
    assert_contains(msg, 'silu: input [2] has dtype int64')
  end)

  it("reports errors at the caller's line", function()
    local t = dr.tensor({ 1 }, { dtype = 'int32' })
    local line, ok, msg = h.line(), pcall(dr.sigmoid, t)
    assert.is_false(ok)
    local where = h.short_src() .. ':' .. line .. ': '
    assert.are.equal(where, msg:sub(1, #where))
    assert_contains(error_of(dr.relu, 3), 'relu: input must be a tensor, got number')
  end)
end)

describe('softmax #binding', function()
  local x = dr.tensor { { 1, 2, 3 }, { 1, 1, 1 } }

  it('normalises over a 1-based dim', function()
    local e = math.exp(1)
    local z = 1 + e + e * e
    h.assert_close(x:softmax(2):tolist(),
                   { { 1 / z, e / z, e * e / z }, { 1 / 3, 1 / 3, 1 / 3 } }, 1e-6)
    h.assert_close(dr.softmax(x, -1):tolist(), x:softmax(2):tolist(), 0)
    local cols = x:softmax(1):sum(1):tolist()
    h.assert_close(cols, { 1, 1, 1 }, 1e-6)
  end)

  it('log_softmax is the log of softmax, finite for huge inputs', function()
    h.assert_close(x:log_softmax(2):tolist(), map(x:softmax(2):tolist(), function(row)
      return map(row, math.log) end), 1e-6)
    local big = dr.tensor { 1000, 1001, 1002 }
    local p = dr.softmax(big, 1):tolist()
    for _, v in ipairs(p) do assert.is_true(v == v and v < math.huge) end
    h.assert_close(dr.log_softmax(big, 1):tolist(), x:log_softmax(2):tolist()[1], 1e-5)
  end)

  it('needs a dim and speaks 1-based dims', function()
    assert_contains(error_of(x.softmax, x), 'softmax: dim is required')
    assert_contains(error_of(x.softmax, x, 0), '1-based')
    assert_contains(error_of(x.log_softmax, x, 3),
                    'log_softmax: dimension 3 out of range for a 2-d tensor')
  end)
end)

describe('layer_norm #binding', function()
  local x = dr.tensor { { 1, 2, 3, 4 }, { -1, 0, 0, 5 } }

  it('normalises the last dims to mean 0, variance 1', function()
    local y = dr.layer_norm(x, 4)
    assert.are.same({ 2, 4 }, y:size())
    h.assert_close(y:sum(2):tolist(), { 0, 0 }, 1e-5)
    h.assert_close(y:mul(y):sum(2):tolist(), { 4, 4 }, 1e-3)
    h.assert_close(dr.layer_norm(x, { 2, 4 }):sum():item(), 0, 1e-5)
    h.assert_close(dr.layer_norm(x, x:size()):tolist(), dr.layer_norm(x, { 2, 4 }):tolist(), 0)
  end)

  it('applies weight and bias, either optional', function()
    local w, b = dr.tensor { 1, 2, 1, 1 }, dr.tensor { 0, 0, 0, 10 }
    local y, yw = dr.layer_norm(x, { 4 }), dr.layer_norm(x, { 4 }, w)
    local yb = dr.layer_norm(x, { 4 }, nil, b)
    h.assert_close(yw:tolist()[1][2], 2 * y:tolist()[1][2], 1e-6)
    h.assert_close(yb:tolist()[2][4], y:tolist()[2][4] + 10, 1e-6)
    h.assert_close(dr.layer_norm(x, { 4 }, w, b, 1e-3):tolist()[1][4],
                   dr.layer_norm(x, { 4 }, nil, nil, 1e-3):tolist()[1][4] + 10, 1e-6)
  end)

  it('native_layer_norm also returns mean and rstd', function()
    local y, mean, rstd = dr.native_layer_norm(x, { 4 })
    assert.are.same({ 2, 4 }, y:size())
    assert.are.same({ 2, 1 }, mean:size())
    h.assert_close(mean:tolist(), { { 2.5 }, { 1 } }, 1e-6)
    h.assert_close(rstd:tolist()[1][1], 1 / math.sqrt(1.25 + 1e-5), 1e-6)
  end)

  it('names the shapes that do not fit', function()
    assert_contains(error_of(dr.layer_norm, x, { 3 }),
                    'layer_norm: normalized_shape [3] expects input of shape [*, 3], got [2, 4]')
    assert_contains(error_of(dr.layer_norm, x, { 4 }, dr.ones(3)),
                    'layer_norm: weight has shape [3] but normalized_shape is [4]')
    assert_contains(error_of(dr.layer_norm, x, 'four'), 'layer_norm: normalized_shape must be')
  end)
end)

describe('group_norm #binding', function()
  local x = dr.randn(2, 6, 3, 3)

  it('normalises each group of channels', function()
    local y = dr.group_norm(x, 3)
    assert.are.same({ 2, 6, 3, 3 }, y:size())
    local groups = y:reshape(2, 3, 18)
    h.assert_close(groups:sum(3):tolist(), { { 0, 0, 0 }, { 0, 0, 0 } }, 1e-4)
    h.assert_close(groups:mul(groups):sum(3):tolist(), { { 18, 18, 18 }, { 18, 18, 18 } }, 1e-2)
  end)

  it('applies per-channel weight and bias', function()
    local w, b = dr.full({ 6 }, 2), dr.full({ 6 }, 1)
    local y, yab = dr.group_norm(x, 2), dr.group_norm(x, 2, w, b, 1e-5)
    h.assert_close(yab:tolist(), y:mul(2):add(1):tolist(), 1e-5)
  end)

  it('native_group_norm returns mean and rstd of shape [N, G]', function()
    local y, mean, rstd = dr.native_group_norm(x, 3)
    assert.are.same({ 2, 6, 3, 3 }, y:size())
    assert.are.same({ 2, 3 }, mean:size())
    assert.are.same({ 2, 3 }, rstd:size())
  end)

  it('requires channels divisible by num_groups, as torch', function()
    assert_contains(error_of(dr.group_norm, x, 4),
                    'group_norm: expected the number of channels 6 of input [2, 6, 3, 3] to be ' ..
                    'divisible by num_groups 4')
    assert_contains(error_of(dr.group_norm, x, 1.5), 'group_norm: num_groups must be an integer')
    assert_contains(error_of(dr.group_norm, x, 3, dr.ones(5)),
                    'group_norm: weight has shape [5] but the channel count of the input is [6]')
  end)
end)
