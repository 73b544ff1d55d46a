-- CUDA scaled_dot_product_attention (core/backend/cuda/cuda_attention.cu) against
-- the CPU reference: out and the gradients of q, k and v on the head dims the
-- models use (SD 40/64/80/128, CLIP 64) and odd ones, tiny and long sequences,
-- cross-attention with Ev ~= E, bool and float masks broadcast over heads,
-- causal masks with Lq ~= Lk, strided (transposed) q views, rows that attend
-- nothing, and memory that stays O(L) rather than O(Lq Lk).
local dr = require 'diffrl'
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')

local sdpa = dr.scaled_dot_product_attention

-- fn(q, k, v[, mask]) with the given options; the mask, when an input, goes to attn_mask.
local function attention(opts)
  return function(q, k, v, mask)
    local o = {}
    for key, val in pairs(opts or {}) do o[key] = val end
    if mask then o.attn_mask = mask end
    return sdpa(q, k, v, o)
  end
end

-- [B, H, L, E] shapes of q, k and v.
local function qkv(b, h, lq, lk, e, ev)
  return { { b, h, lq, e }, { b, h, lk, e }, { b, h, lk, ev or e } }
end

describe('cuda parity: scaled_dot_product_attention #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  it('self-attention on head dims 40, 64, 80 and 128', function()
    for _, e in ipairs { 40, 64, 80, 128 } do
      P.check { inputs = qkv(2, 4, 77, 77, e), fn = attention(), atol = 2e-5 }
    end
  end)

  it('head dims that are not a multiple of 8 or 64, and the largest (256)', function()
    P.check { inputs = qkv(2, 1, 33, 33, 24), fn = attention(), atol = 2e-5 }
    P.check { inputs = qkv(1, 2, 70, 90, 72), fn = attention(), atol = 2e-5 }
    P.check { inputs = qkv(1, 1, 65, 65, 256), fn = attention(), atol = 2e-5 }
    P.check { inputs = { { 3, 9, 3 }, { 3, 11, 3 }, { 3, 11, 5 } }, fn = attention(), atol = 2e-5 }
  end)

  it('one query, seven queries, one key', function()
    P.check { inputs = qkv(2, 3, 1, 7, 64), fn = attention(), atol = 2e-5 }
    P.check { inputs = qkv(2, 3, 7, 7, 40), fn = attention(), atol = 2e-5 }
    P.check { inputs = qkv(2, 3, 7, 1, 64), fn = attention(), atol = 2e-5 }
  end)

  it('1024 tokens', function()
    P.check { inputs = qkv(1, 2, 1024, 1024, 64), fn = attention(), atol = 2e-5 }
  end)

  it('cross-attention: Lq 256 over Lk 77, Ev ~= E', function()
    P.check { inputs = qkv(2, 2, 256, 77, 40, 72), fn = attention(), atol = 2e-5 }
    P.check { inputs = qkv(1, 2, 256, 77, 160, 40), fn = attention(), atol = 2e-5 }
  end)

  it('a bool mask and a float mask broadcast over batch and heads', function()
    local q, k, v = { 2, 3, 50, 64 }, { 2, 3, 60, 64 }, { 2, 3, 60, 64 }
    P.check { inputs = { q, k, v, { shape = { 50, 60 }, dtype = 'bool', grad = false } },
              fn = attention(), atol = 2e-5 }
    P.check { inputs = { q, k, v, { shape = { 2, 1, 50, 60 }, grad = false } },
              fn = attention(), atol = 2e-5 }
  end)

  it('masks over several query and key tiles, head dims 128 and 256', function()
    local q, k, v = { 1, 2, 150, 128 }, { 1, 2, 200, 128 }, { 1, 2, 200, 96 }
    P.check { inputs = { q, k, v, { shape = { 150, 200 }, dtype = 'bool', grad = false } },
              fn = attention(), atol = 2e-5 }
    P.check { inputs = { q, k, v, { shape = { 1, 2, 150, 200 }, grad = false } },
              fn = attention(), atol = 2e-5 }
    P.check { inputs = { { 1, 1, 70, 256 }, { 1, 1, 90, 256 }, { 1, 1, 90, 256 },
                         { shape = { 70, 90 }, grad = false } }, fn = attention(), atol = 2e-5 }
  end)

  it('is_causal, top-left aligned, with Lq > Lk, Lq < Lk and Lq = Lk', function()
    local causal = attention { is_causal = true }
    P.check { inputs = qkv(2, 2, 100, 70, 64), fn = causal, atol = 2e-5 }
    P.check { inputs = qkv(2, 2, 70, 100, 64), fn = causal, atol = 2e-5 }
    P.check { inputs = qkv(1, 2, 130, 130, 128), fn = causal, atol = 2e-5 }
    P.check { inputs = qkv(1, 1, 5, 200, 256), fn = causal, atol = 2e-5 }
  end)

  it('an explicit scale', function()
    P.check { inputs = qkv(1, 2, 40, 40, 64), fn = attention { scale = 0.3 }, atol = 2e-5 }
  end)

  it('q, k and v as transposed views of [B, L, H, E] (any batch and row strides)', function()
    P.check { inputs = { { 2, 77, 4, 64 }, { 2, 77, 4, 64 }, { 2, 77, 4, 40 } },
              fn = function(q, k, v)
                return sdpa(q:transpose(2, 3), k:transpose(2, 3), v:transpose(2, 3))
              end, atol = 2e-5 }
  end)

  it('key and value shared by all heads (batch stride 0)', function()
    P.check { inputs = { { 2, 4, 50, 64 }, { 2, 1, 60, 64 }, { 2, 1, 60, 64 } },
              fn = attention(), atol = 2e-5 }
  end)

  it('a row that attends no key gives zeros and zero gradients, as on the CPU', function()
    local bools, floats = {}, {}
    for i = 1, 9 do
      bools[i], floats[i] = {}, {}
      for j = 1, 11 do
        bools[i][j] = i ~= 4 and j % 3 ~= 0
        floats[i][j] = i == 4 and -math.huge or (j - 5) * 0.3
      end
    end
    local q, k, v = { 2, 9, 64 }, { 2, 11, 64 }, { 2, 11, 64 }
    P.check { inputs = { q, k, v, dr.tensor(bools, { dtype = 'bool' }) }, fn = attention(),
              atol = 2e-5 }
    P.check { inputs = { q, k, v, dr.tensor(floats) }, fn = attention(), atol = 2e-5 }
    local mask = dr.tensor(bools, { dtype = 'bool' }):cuda()
    local out = sdpa(dr.randn { 2, 9, 64 }:cuda(), dr.randn { 2, 11, 64 }:cuda(),
                     dr.randn { 2, 11, 64 }:cuda(), { attn_mask = mask }):cpu()
    local rows = out:tolist()
    for b = 1, 2 do assert.same(dr.zeros(64):tolist(), rows[b][4]) end
  end)

  it('4096 tokens, one head: parity, and memory O(L), not a [Lq, Lk] matrix', function()
    P.check { inputs = qkv(1, 1, 4096, 4096, 64), fn = attention(), atol = 2e-5 }
    local g = P.gen(5)
    local function rand() return dr.randn({ 1, 1, 4096, 64 }, { generator = g }):cuda() end
    local q, k, v, go = rand(), rand(), rand(), rand()
    dr.cuda.synchronize()
    local before = dr.cuda.memory_stats()
    local out = sdpa(q, k, v)
    local dq, dk, dv = dr.scaled_dot_product_attention_backward(go, q, k, v)
    dr.cuda.synchronize()
    local after = dr.cuda.memory_stats()
    -- one [4096, 4096] float32 matrix is 64 MiB; out, lse, D and the gradients take
    -- about 5 blocks of the allocator's 2 MiB rounding
    local grew = after.peak_allocated - math.max(before.peak_allocated, before.allocated)
    assert(grew <= 32 * 1024 * 1024, ('peak allocation grew by %d bytes'):format(grew))
    assert.same({ 1, 1, 4096, 64 }, out.shape)
    assert.same({ 1, 1, 4096, 64 }, dq.shape)
    assert.same(dk.shape, dv.shape)
  end)

  it('refuses head dims above 256, naming them', function()
    local q = dr.randn { 1, 1, 8, 264 }:cuda()
    local ok, err = pcall(sdpa, q, q, q)
    assert.is_false(ok)
    assert.truthy(tostring(err):find('E = 264', 1, true), tostring(err))
  end)
end)
