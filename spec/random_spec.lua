-- Random numbers: one counter-based Philox4x32-10 stream per generator, a pure
-- function of (seed, offset), so draws are reproducible and resume is exact.
-- Tagged #binding: these also run under plain luajit with DIFFRL_LIB.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local ffi = require 'ffi'

local function offset_of(g) return g:get_state().offset end

describe('Philox4x32-10 #binding', function()
  -- Known-answer vectors from Random123 (kat_vectors, philox4x32 with 10 rounds).
  local C = require('diffrl.core.ffi').C
  local function philox(c0, c1, c2, c3, k0, k1)
    local out = ffi.new('uint32_t[4]')
    C.dr_philox4x32(ffi.new('uint32_t[4]', c0, c1, c2, c3), ffi.new('uint32_t[2]', k0, k1), out)
    return { out[0], out[1], out[2], out[3] }
  end

  it('matches the Random123 known answers', function()
    assert.are.same({ 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 }, philox(0, 0, 0, 0, 0, 0))
    local ones = 0xffffffff
    assert.are.same({ 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd },
                    philox(ones, ones, ones, ones, ones, ones))
    assert.are.same({ 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 },
                    philox(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0))
  end)
end)

describe('the default generator #binding', function()
  it('manual_seed makes randn reproducible', function()
    dr.manual_seed(1234)
    local a = dr.randn(3, 5):tolist()
    dr.manual_seed(1234)
    local b = dr.randn(3, 5):tolist()
    assert.are.same(a, b)
  end)

  it('different seeds give different draws', function()
    dr.manual_seed(1)
    local a = dr.randn(8):tolist()
    dr.manual_seed(2)
    assert.are_not.same(a, dr.randn(8):tolist())
  end)

  it('successive draws differ', function()
    dr.manual_seed(5)
    assert.are_not.same(dr.randn(8):tolist(), dr.randn(8):tolist())
  end)

  it('manual_seed starts the stream over at offset 0', function()
    dr.randn(10)
    dr.manual_seed(9)
    assert.are.same({ seed = 9, offset = 0 }, dr.default_generator():get_state())
  end)
end)

describe('dr.Generator #binding', function()
  it('draws the same stream as the default generator with the same seed', function()
    dr.manual_seed(42)
    local from_default = dr.randn(6):tolist()
    local g = dr.Generator(42)
    assert.are.same(from_default, dr.randn(6, { generator = g }):tolist())
  end)

  it('is independent of the default generator', function()
    local g = dr.Generator(7)
    dr.manual_seed(7)
    local from_g = dr.randn(4, { generator = g }):tolist()
    assert.are.same({ seed = 7, offset = 0 }, dr.default_generator():get_state())
    assert.are.same(from_g, dr.randn(4):tolist())
    dr.randn(100)
    assert.are.same({ seed = 7, offset = 1 }, g:get_state())
  end)

  it('two generators with one seed give the same numbers', function()
    local g1, g2 = dr.Generator(3), dr.Generator(3)
    assert.are.same(dr.rand(5, { generator = g1 }):tolist(),
                    dr.rand(5, { generator = g2 }):tolist())
  end)

  it('get_state then set_state replays the same next draw', function()
    local g = dr.Generator(11)
    dr.randn(7, { generator = g })
    local state = g:get_state()
    local a = dr.randn(2, 3, { generator = g }):tolist()
    g:set_state(state)
    assert.are.same(a, dr.randn(2, 3, { generator = g }):tolist())
    -- the state moves to another generator, as a checkpoint restores it
    local other = dr.Generator(0):set_state(state)
    assert.are.same(a, dr.randn(2, 3, { generator = other }):tolist())
  end)

  it('advances the offset by ceil(n/4) per draw', function()
    local g = dr.Generator(1)
    assert.are.equal(0, offset_of(g))
    dr.randn(5, { generator = g })
    assert.are.equal(2, offset_of(g))
    dr.randn(4, { generator = g })
    assert.are.equal(3, offset_of(g))
    dr.rand(2, 3, { generator = g })
    assert.are.equal(5, offset_of(g))
    dr.rand(1, { generator = g })
    assert.are.equal(6, offset_of(g))
    dr.randn(0, { generator = g })
    assert.are.equal(6, offset_of(g))
  end)

  it('a draw at a given offset is the tail of a longer draw from the start', function()
    -- counters 0, 1 give 8 numbers; a draw of 4 at offset 1 gives the last 4
    local whole = dr.rand(8, { generator = dr.Generator(21) }):tolist()
    local g = dr.Generator(21):set_state { seed = 21, offset = 1 }
    assert.are.same({ whole[5], whole[6], whole[7], whole[8] },
                    dr.rand(4, { generator = g }):tolist())
  end)

  it('manual_seed on a generator resets it', function()
    local g = dr.Generator(1)
    dr.randn(9, { generator = g })
    g:manual_seed(8)
    assert.are.same({ seed = 8, offset = 0 }, g:get_state())
    assert.are.equal(8, g:initial_seed())
  end)

  it('prints its seed and offset', function()
    assert.are.equal('dr.Generator(seed=5, offset=0)', tostring(dr.Generator(5)))
  end)

  it('rejects a seed that is not a non-negative integer', function()
    assert.matches('seed must be an integer', h.error_of(dr.Generator, -1))
    assert.matches('seed must be an integer', h.error_of(dr.Generator, 1.5))
    assert.matches('seed must be an integer', h.error_of(dr.manual_seed, 'x'))
  end)

  it('rejects a generator option that is not a generator', function()
    assert.matches('generator must be a dr.Generator',
                   h.error_of(dr.randn, 3, { generator = 5 }))
  end)

  it('set_state rejects a table that is not a state', function()
    assert.matches('set_state: expected {seed=, offset=}',
                   h.error_of(function() return dr.Generator(1):set_state {}, nil end))
  end)
end)

describe('rand and randn #binding', function()
  local g = dr.Generator(2024)

  it('rand is uniform on [0, 1)', function()
    local values = dr.rand(10000, { generator = g }):tolist()
    local sum, lo, hi = 0, math.huge, -math.huge
    for _, v in ipairs(values) do
      sum = sum + v
      lo, hi = math.min(lo, v), math.max(hi, v)
    end
    assert.is_true(lo >= 0, 'min ' .. lo)
    assert.is_true(hi < 1, 'max ' .. hi)
    assert.is_true(math.abs(sum / #values - 0.5) < 0.02, 'mean ' .. sum / #values)
  end)

  it('randn has mean 0 and variance 1', function()
    local values = dr.randn(100, 100, { generator = g }):view(-1):tolist()
    local sum, sq = 0, 0
    for _, v in ipairs(values) do sum, sq = sum + v, sq + v * v end
    local mean = sum / #values
    assert.is_true(math.abs(mean) < 0.05, 'mean ' .. mean)
    assert.is_true(math.abs(sq / #values - mean * mean - 1) < 0.05, 'variance')
  end)

  it('take sizes as arguments or a table, with float32 by default', function()
    local a = dr.randn(2, 3, { generator = g })
    assert.are.same({ 2, 3 }, a:size())
    assert.are.equal('float32', a.dtype)
    assert.are.same({ 4, 1 }, dr.rand({ 4, 1 }, { generator = g }):size())
  end)

  it('draw float16: the float32 stream rounded', function()
    local h16 = dr.randn(6, { dtype = dr.float16, generator = dr.Generator(7) })
    assert.are.equal('float16', h16.dtype)
    local f32 = dr.randn(6, { generator = dr.Generator(7) }):tolist()
    h.assert_close(h16:tolist(), f32, 1e-3)
  end)

  it('reject an integer dtype, naming the op and the dtype', function()
    local msg = h.error_of(dr.randn, 3, { dtype = dr.int64 })
    assert.matches('randn', msg)
    assert.matches('int64', msg)
    assert.matches('floating point', msg)
    assert.matches('rand: dtype int32', h.error_of(dr.rand, 3, { dtype = dr.int32 }))
  end)
end)
