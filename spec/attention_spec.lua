-- dr.scaled_dot_product_attention as torch.nn.functional's: shapes, values
-- against softmax(q k^T * scale + mask) v, bool and float masks, causal masks with
-- Lq != Lk (top-left aligned), rows that attend nothing (zeros), gradients
-- through the tape by finite differences, the explicit backward, and errors
-- raised at the caller's line. Tagged #binding: also runs under plain luajit.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local gradcheck = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/gradcheck.lua')
local dr = require 'diffrl'

local g = dr.Generator(3)
local function rand(...) return dr.randn({ ... }, { generator = g }) end

local function assert_close(want, got, tol)
  local a, b = want:contiguous():view(-1):tolist(), got:contiguous():view(-1):tolist()
  assert.are.equal(#a, #b)
  for i = 1, #a do
    assert(math.abs(a[i] - b[i]) <= (tol or 1e-5) * (1 + math.abs(a[i])),
      ('element %d: want %.7g, got %.7g'):format(i, a[i], b[i]))
  end
end

-- softmax(q k^T * scale + mask) v with plain ops (mask: additive float or nil).
local function naive(q, k, v, mask, scale)
  local s = q:matmul(k:transpose(-2, -1)) * (scale or 1 / math.sqrt(q:size(-1)))
  if mask then s = s + mask end
  return s:softmax(-1):matmul(v)
end

local function error_here(line, ok, msg)
  assert.is_false(ok, 'expected an error')
  local where = h.short_src() .. ':' .. line .. ': '
  assert.are.equal(where, msg:sub(1, #where))
  return msg
end

local function assert_contains(text, part)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

describe('dr.scaled_dot_product_attention #binding', function()
  it('maps [N, heads, Lq, E] x [N, heads, Lk, E] x [N, heads, Lk, Ev] to [N, heads, Lq, Ev]', function()
    local out = dr.scaled_dot_product_attention(rand(2, 3, 5, 4), rand(2, 3, 7, 4), rand(2, 3, 7, 6))
    assert.are.same({ 2, 3, 5, 6 }, out:size())
    assert.are.same({ 7, 6 }, dr.scaled_dot_product_attention(rand(7, 4), rand(9, 4), rand(9, 6)):size())
    -- batch dims broadcast (one key/value head shared by all query heads)
    assert.are.same({ 2, 3, 5, 6 },
      dr.scaled_dot_product_attention(rand(2, 3, 5, 4), rand(2, 1, 7, 4), rand(1, 7, 6)):size())
  end)

  it('averages the values when all scores are equal', function()
    local v = dr.tensor { { 1, 2 }, { 3, 4 }, { 5, 9 } }
    local out = dr.scaled_dot_product_attention(dr.zeros(2, 3), dr.zeros(3, 3), v)
    assert_close(dr.tensor { { 3, 5 }, { 3, 5 } }, out)
  end)

  it('equals softmax(q k^T * scale + mask) v', function()
    local q, k, v = rand(2, 2, 9, 8), rand(2, 2, 11, 8), rand(2, 2, 11, 5)
    assert_close(naive(q, k, v), dr.scaled_dot_product_attention(q, k, v))
    assert_close(naive(q, k, v, nil, 0.3), dr.scaled_dot_product_attention(q, k, v, { scale = 0.3 }))
    local fmask = rand(9, 11)
    assert_close(naive(q, k, v, fmask), dr.scaled_dot_product_attention(q, k, v, { attn_mask = fmask }))
    -- torch's positional order: attn_mask, dropout_p, is_causal, scale
    assert_close(naive(q, k, v, fmask, 0.5), dr.scaled_dot_product_attention(q, k, v, fmask, 0, false, 0.5))
  end)

  it('takes a bool mask: true attends, false does not', function()
    local v = dr.tensor { { 1, 10 }, { 2, 20 }, { 3, 30 } }
    local mask = dr.tensor({ { false, true, false }, { true, false, true } }, { dtype = 'bool' })
    local out = dr.scaled_dot_product_attention(dr.zeros(2, 2), dr.zeros(3, 2), v, { attn_mask = mask })
    assert_close(dr.tensor { { 2, 20 }, { 2, 20 } }, out)
  end)

  it('is_causal lets query i see keys 1..i, aligned top-left when Lq ~= Lk', function()
    local v = dr.tensor { { 1 }, { 2 }, { 3 } }
    -- Lq = 4 > Lk = 3: the last query sees every key
    local out = dr.scaled_dot_product_attention(dr.zeros(4, 2), dr.zeros(3, 2), v, { is_causal = true })
    assert_close(dr.tensor { { 1 }, { 1.5 }, { 2 }, { 2 } }, out)
    -- Lq = 2 < Lk = 3: key 3 is never seen
    out = dr.scaled_dot_product_attention(dr.zeros(2, 2), dr.zeros(3, 2), v, { is_causal = true })
    assert_close(dr.tensor { { 1 }, { 1.5 } }, out)
  end)

  it('gives zeros (not NaN) for a query row that attends no key', function()
    local mask = dr.tensor({ { true, true }, { false, false } }, { dtype = 'bool' })
    local out = dr.scaled_dot_product_attention(rand(2, 3), rand(2, 3), dr.ones(2, 4), { attn_mask = mask })
    assert.are.same({ 0, 0, 0, 0 }, out[2]:tolist())
    assert_close(dr.ones(4), out[1])
  end)

  it('keeps float16 inputs in float16', function()
    local q = rand(3, 4):half()
    local out = dr.scaled_dot_product_attention(q, q, q)
    assert.are.equal('float16', out.dtype)
    assert_close(dr.scaled_dot_product_attention(q:float(), q:float(), q:float()), out:float(), 3e-3)
  end)
end)

describe('gradients of scaled_dot_product_attention #binding', function()
  local function sdpa(opts)
    return function(q, k, v) return dr.scaled_dot_product_attention(q, k, v, opts) end
  end

  it('match finite differences for q, k and v', function()
    gradcheck(sdpa(), { rand(2, 4, 3), rand(2, 5, 3), rand(2, 5, 2) })
  end)

  it('match with is_causal, a mask, a scale and broadcast batch dims', function()
    gradcheck(sdpa { is_causal = true }, { rand(5, 3), rand(4, 3), rand(4, 2) })
    local mask = dr.tensor({ { true, false, true }, { false, false, false } }, { dtype = 'bool' })
    gradcheck(sdpa { attn_mask = mask, scale = 0.8 }, { rand(2, 3), rand(3, 3), rand(3, 2) })
    gradcheck(sdpa { attn_mask = rand(1, 3) }, { rand(2, 2, 3), rand(1, 3, 3), rand(2, 3, 2) })
  end)

  it('equal the explicit backward', function()
    local q, k, v, r = rand(2, 6, 4), rand(2, 7, 4), rand(2, 7, 3), rand(2, 6, 3)
    for _, x in ipairs { q, k, v } do x:requires_grad_() end
    local out = dr.scaled_dot_product_attention(q, k, v, { is_causal = true })
    assert.are.equal('ScaledDotProductAttentionBackward', out.grad_fn)
    ;(out * r):sum():backward()
    local gq, gk, gv = dr.scaled_dot_product_attention_backward(r, q, k, v, { is_causal = true })
    assert_close(gq, q.grad, 1e-6)
    assert_close(gk, k.grad, 1e-6)
    assert_close(gv, v.grad, 1e-6)
  end)
end)

describe('scaled_dot_product_attention errors #binding', function()
  local q = rand(2, 4, 8)
  local sdpa = dr.scaled_dot_product_attention

  it('refuses attention dropout', function()
    local msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, q, q, { dropout_p = 0.1 }))
    assert_contains(msg, 'dropout_p must be 0')
  end)

  it('names unknown options and bad option values', function()
    local msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, q, q, { causal = true }))
    assert_contains(msg, "unknown option 'causal'")
    msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, q, q, { scale = -1 }))
    assert_contains(msg, 'scale must be a positive finite number')
    msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, q, q, { is_causal = 1 }))
    assert_contains(msg, 'is_causal must be a boolean')
    msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, q, 'v'))
    assert_contains(msg, 'value must be a tensor, got string')
  end)

  it('names the shapes that do not fit', function()
    local msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, rand(2, 4, 6), q))
    assert_contains(msg, 'query [2, 4, 8] and key [2, 4, 6] must have the same embedding size')
    msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, q, q, { attn_mask = rand(3, 4) }))
    assert_contains(msg, 'attn_mask [3, 4] cannot be broadcast')
    local both = { attn_mask = dr.ones(4, 4), is_causal = true }
    msg = error_here(debug.getinfo(1).currentline, pcall(sdpa, q, q, q, both))
    assert_contains(msg, 'attn_mask and is_causal cannot both be given')
  end)
end)
