-- CPU/CUDA parity of the elementwise kernels (core/backend/cuda/cuda_elementwise.cu,
-- cuda_random.cu, cuda_optim.cu): copy with casts and strides, fill, the binary
-- ops, every unary op forward and backward, where, dropout, the Philox streams,
-- ranges and the optimizer updates. Casts, fills, moves and random draws must
-- be bit-identical to the CPU; arithmetic is held to the parity tolerance.
local dr = require 'diffrl'
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')
local T = require 'diffrl.core.tensor'
local C = require('diffrl.core.ffi').C

local DTYPES = { 'float32', 'float16', 'bfloat16', 'int64', 'int32', 'uint8', 'bool' }

-- Bit-for-bit equality (NaN matches NaN) of a cpu and a cuda tensor.
local function same(a, b, what) P.close(a, b, 0, 0, what) end

-- Values that exercise the casts: halves and ties, out of the f16 range,
-- negatives for the unsigned wrap, tiny, infinities and NaN.
local function specials()
  return dr.tensor { 0, -0.5, 0.5, 1.5, 2.5, -2.5, 65504, 65520, 70000, -70000, 1e-8, 3e38,
                     -3e38, 255.9, 256, -1, 1 / 0, -1 / 0, 0 / 0, 1234.567 }
end

describe('cuda parity: copy and fill #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  it('casts between every pair of dtypes as the cpu does', function()
    local values = { specials(), dr.randn({ 4, 6 }, { generator = P.gen(3) }) * 100 }
    for _, v in ipairs(values) do
      for _, from in ipairs(DTYPES) do
        local src = v:to(from)
        local g = src:cuda()
        for _, to in ipairs(DTYPES) do
          same(src:to(to), g:to(to), from .. ' -> ' .. to)
        end
      end
    end
  end)

  it('copies strided, transposed and offset views, with and without a cast', function()
    local a = dr.randn({ 4, 5, 6 }, { generator = P.gen(4) })
    local g = a:cuda()
    local views = {
      function(t) return t:transpose(1, 3) end,
      function(t) return t:permute(2, 3, 1) end,
      function(t) return t:narrow(2, 2, 3) end,
      function(t) return t:select(3, 4) end,
      function(t) return t:narrow(3, 2, 1):expand(4, 5, 6) end,
      function(t) return t:transpose(2, 3):narrow(1, 2, 2) end,
    }
    for i, view in ipairs(views) do
      same(view(a):contiguous(), view(g):contiguous(), 'view ' .. i)
      for _, to in ipairs { 'float16', 'bfloat16', 'int64', 'bool' } do
        same(view(a):to(to), view(g):to(to), ('view %d as %s'):format(i, to))
      end
    end
    -- half-precision sources through strided views
    local h = a:to('bfloat16')
    same(h:transpose(1, 2):to('float32'), h:cuda():transpose(1, 2):to('float32'), 'bf16 view -> f32')
  end)

  it('copies into strided destinations and broadcasts the source', function()
    for _, dtype in ipairs(DTYPES) do
      local src = (dr.randn({ 4, 6 }, { generator = P.gen(5) }) * 10):to(dtype)
      local dc = dr.zeros({ 6, 4 }, { dtype = dtype }):t()
      local dg = dr.zeros({ 6, 4 }, { dtype = dtype, device = 'cuda' }):t()
      dc:copy_(src)
      dg:copy_(src:cuda())
      same(dc, dg, dtype .. ' into a transposed view')
      local row = dr.tensor { 1.5, -2, 3, 0, 7.25, -9 }
      local ec = dr.zeros({ 3, 4, 6 }, { dtype = dtype })
      local eg = dr.zeros({ 3, 4, 6 }, { dtype = dtype, device = 'cuda' })
      ec:narrow(2, 2, 2):copy_(row)
      eg:narrow(2, 2, 2):copy_(row:cuda())
      same(ec, eg, dtype .. ' broadcast row into a narrowed view')
      -- a float32 source cast on the way in
      local fc = dr.zeros({ 4, 6 }, { dtype = dtype })
      local fg = dr.zeros({ 4, 6 }, { dtype = dtype, device = 'cuda' })
      local f = dr.randn({ 6, 4 }, { generator = P.gen(6) }) * 3
      fc:copy_(f:t())
      fg:copy_(f:cuda():t())
      same(fc, fg, 'float32 transposed into ' .. dtype)
    end
  end)

  it('fills contiguous and strided tensors of every dtype', function()
    for _, dtype in ipairs(DTYPES) do
      for _, v in ipairs { 0, 2.75, -1.5, 1e6, 0 / 0 } do
        local c = dr.zeros({ 5, 6 }, { dtype = dtype })
        local g = dr.zeros({ 5, 6 }, { dtype = dtype, device = 'cuda' })
        c:narrow(2, 2, 3):fill_(v)
        g:narrow(2, 2, 3):fill_(v)
        c:t():select(1, 5):fill_(v + 1)
        g:t():select(1, 5):fill_(v + 1)
        same(c, g, ('%s strided fill %g'):format(dtype, v))
        same(dr.full({ 3, 7 }, v, { dtype = dtype }), dr.full({ 3, 7 }, v, { dtype = dtype, device = 'cuda' }),
             ('%s full %g'):format(dtype, v))
      end
    end
  end)

  it('handles odd lengths and offset starts on the vectorised contiguous paths', function()
    -- 4 x 35 rows: narrow(1, k, 1) starts k*35 elements in, so some starts are
    -- 16-byte aligned and some not, and 35 leaves a tail of 3 past the float4s
    local a = dr.randn({ 4, 35 }, { generator = P.gen(7) }) * 100
    local g = a:cuda()
    for k = 1, 4 do
      local rc, rg = a:narrow(1, k, 1), g:narrow(1, k, 1)
      for _, to in ipairs { 'float16', 'bfloat16', 'int32' } do
        same(rc:to(to), rg:to(to), ('row %d as %s'):format(k, to))
        same(rc:to(to):to('float32'), rg:to(to):to('float32'), ('row %d %s back'):format(k, to))
      end
      local fc, fg = a:clone(), g:clone()
      fc:narrow(1, k, 1):fill_(3.25)
      fg:narrow(1, k, 1):fill_(3.25)
      same(fc, fg, 'fill row ' .. k)
    end
  end)

  it('moves a large tensor through the device unchanged', function()
    local a = dr.randn({ 1000, 1003 }, { generator = P.gen(8) })
    same(a, a:cuda())
    same(a:t():contiguous(), a:cuda():t():contiguous())
  end)
end)

describe('cuda parity: binary ops #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  it('add and sub broadcast, with alpha', function()
    P.check { inputs = { { 2, 3, 4 }, { 3, 1 } }, fn = function(a, b) return a:add(b, 0.5) end }
    P.check { inputs = { { 2, 3, 4 }, { 4 } }, fn = function(a, b) return a:sub(b, 2) end }
    P.check { inputs = { { 3, 1, 5 }, { 4, 1 } }, fn = function(a, b) return a + b end }
  end)

  it('mul and div broadcast', function()
    P.check { inputs = { { 4, 1, 5 }, { 3, 1 } }, fn = function(a, b) return a * b end }
    P.check { inputs = { { 2, 3, 4 }, { shape = { 3, 4 }, positive = true } },
              fn = function(a, b) return a / b end }
    P.check { inputs = { { 5, 6 } }, fn = function(a) return a * 3 - 1 end }
  end)

  it('takes transposed and narrowed operands', function()
    P.check { inputs = { { 5, 4 }, { 4, 5 } }, fn = function(a, b) return a + b:t() end }
    P.check { inputs = { { 5, 4 }, { 4, 5 } }, fn = function(a, b) return a:t() * b end }
    P.check { inputs = { { 6, 7 }, { shape = { 7, 6 }, positive = true } },
              fn = function(a, b) return a:narrow(1, 2, 4) / b:t():narrow(1, 2, 4) end }
    P.check { inputs = { { 3, 4, 5 }, { 5, 4 } }, fn = function(a, b) return a:sub(b:t(), 0.25) end }
  end)

  it('runs the contiguous fast path on odd lengths and offset rows', function()
    P.check { inputs = { { 7, 5 }, { 7, 5 } }, fn = function(a, b) return { a + b, a:div(b:abs() + 1) } end }
    P.check { inputs = { { 4, 35 }, { 4, 35 } },
              fn = function(a, b)
                local r = {}
                for k = 1, 4 do r[k] = a:narrow(1, k, 1):sub(b:narrow(1, 5 - k, 1), 0.5) end
                return r
              end }
  end)

  it('runs the contiguous fast path on a large tensor', function()
    P.check { inputs = { { 700, 1001 }, { 700, 1001 } },
              fn = function(a, b) return { a + b, a:sub(b, 1.5), a * b } end }
  end)

  it('computes float16 and bfloat16 in float and rounds once', function()
    for _, dtype in ipairs { 'float16', 'bfloat16' } do
      P.check { inputs = { { shape = { 3, 4 }, dtype = dtype }, { shape = { 4 }, dtype = dtype } },
                fn = function(a, b) return { a + b, a:sub(b, 0.5), a * b, a:t():add(b:view(4, 1), 3) } end }
      P.check { inputs = { { shape = { 3, 4 }, dtype = dtype }, { shape = { 3, 4 }, dtype = dtype, positive = true } },
                fn = function(a, b) return a / b end }
    end
  end)

  it('wraps integers like the cpu and treats bool add/mul as or/and', function()
    for _, dtype in ipairs { 'int64', 'int32', 'uint8' } do
      P.check { inputs = { { shape = { 3, 4 }, dtype = dtype, int = { -100, 100 } },
                           { shape = { 4 }, dtype = dtype, int = { -100, 100 } } },
                fn = function(a, b) return { a + b, a:sub(b, 3), a * b, a:t() * 7, a:add(b, -2) } end }
      P.check { inputs = { { shape = { 3, 4 }, dtype = dtype, int = { -50, 50 } },
                           { shape = { 3, 4 }, dtype = dtype, int = { 1, 9 } } },
                fn = function(a, b) return a / b end }
    end
    P.check { inputs = { { shape = { 5, 6 }, dtype = 'bool' }, { shape = { 6 }, dtype = 'bool' } },
              fn = function(a, b) return { a + b, a * b } end }
    local big = dr.tensor({ 2 ^ 62, -2 ^ 62 }, { dtype = 'int64' })
    same(big * 4, big:cuda() * 4, 'int64 overflow wraps')
  end)
end)

describe('cuda parity: unary math #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  -- fn, and whether the input must be positive
  local ops = {
    silu = { function(x) return x:silu() end },
    gelu = { function(x) return x:gelu() end },
    gelu_tanh = { function(x) return x:gelu('tanh') end },
    quick_gelu = { function(x) return x:quick_gelu() end },
    relu = { function(x) return x:relu() end },
    sigmoid = { function(x) return x:sigmoid() end },
    tanh = { function(x) return x:tanh() end },
    exp = { function(x) return x:exp() end },
    log = { function(x) return x:log() end, true },
    sqrt = { function(x) return x:sqrt() end, true },
    rsqrt = { function(x) return x:rsqrt() end, true },
    abs = { function(x) return x:abs() end },
    -- DR_UNARY_NEG itself (Tensor.neg multiplies by -1)
    neg = { function(x) return T.take(C.dr_unary(C.DR_UNARY_NEG, x.ptr, T.out_box)) end },
    clamp = { function(x) return x:clamp(-0.5, 0.7) end },
    clamp_min = { function(x) return x:clamp_min(0.1) end },
    clamp_max = { function(x) return x:clamp_max(-0.2) end },
    clamp_crossed = { function(x) return x:clamp(0.5, -0.5) end },
  }
  for _, e in ipairs { 0, 1, 2, 3, 0.5, -0.5, -1, -2, 2.5, -1.3 } do
    ops['pow ' .. e] = { function(x) return x:pow(e) end, e % 1 ~= 0 or e < 0 }
  end
  local names = {}
  for name in pairs(ops) do names[#names + 1] = name end
  table.sort(names)

  for _, name in ipairs(names) do
    local fn, positive = ops[name][1], ops[name][2]
    it(name .. ' forward and backward, contiguous and strided', function()
      local shape = positive and { shape = { 4, 33 }, positive = true } or { 4, 33 }
      P.check { inputs = { shape }, fn = fn }
      P.check { inputs = { shape }, fn = function(x) return fn(x:t()) end }
      local odd = positive and { shape = { 3, 37 }, positive = true } or { 3, 37 }
      P.check { inputs = { odd }, fn = function(x) return { fn(x), fn(x:narrow(1, 2, 1)), fn(x:narrow(1, 3, 1)) } end }
      local half = positive and { shape = { 5, 6 }, dtype = 'float16', positive = true }
                            or { shape = { 5, 6 }, dtype = 'float16' }
      P.check { inputs = { half }, fn = fn, atol = 1e-3, rtol = 1e-3 }
    end)
  end

  it('keeps infinities and NaN where the cpu does', function()
    local x = dr.tensor { 0, -0.0, 1 / 0, -1 / 0, 0 / 0, 100, -100, 1e-30 }
    for _, name in ipairs(names) do
      local fn = ops[name][1]
      P.close(dr.no_grad(fn, x), dr.no_grad(fn, x:cuda()), 1e-5, 1e-4, name)
    end
  end)
end)

describe('cuda parity: where and dropout #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  it('where broadcasts and takes strided operands of any dtype', function()
    local cond = { shape = { 3, 4 }, dtype = 'bool' }
    P.check { inputs = { cond, { 3, 4 }, { 4 } }, fn = function(c, a, b) return dr.where(c, a, b) end }
    P.check { inputs = { cond, { 4, 3 }, { 3, 1 } }, fn = function(c, a, b) return dr.where(c, a:t(), b) end }
    P.check { inputs = { { shape = { 4, 3 }, dtype = 'bool' }, { 3, 4 } },
              fn = function(c, a) return dr.where(c:t(), a, 0.5) end }
    for _, dtype in ipairs { 'int64', 'float16', 'uint8', 'bool' } do
      P.check { inputs = { cond, { shape = { 3, 4 }, dtype = dtype, int = { -9, 9 } },
                           { shape = { 3, 1 }, dtype = dtype, int = { -9, 9 } } },
                fn = function(c, a, b) return dr.where(c, a, b) end }
    end
  end)

  it('dropout draws the cpu mask for the same generator, forward and backward', function()
    for _, p in ipairs { 0.1, 0.5, 0.9 } do
      P.check { inputs = { { 37, 41 } },
                fn = function(x) return dr.dropout(x, p, true, { generator = dr.Generator(5) }) end }
    end
    P.check { inputs = { { 6, 5 } },
              fn = function(x) return dr.dropout(x:t(), 0.3, true, { generator = dr.Generator(9) }) end }
    P.check { inputs = { { shape = { 8, 9 }, dtype = 'bfloat16' } },
              fn = function(x) return dr.dropout(x, 0.25, true, { generator = dr.Generator(2) }) end }
    P.check { inputs = { { 4, 4 } }, fn = function(x) return dr.dropout(x, 1, true) end }
  end)
end)

describe('cuda parity: random streams and ranges #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  local function pair(seed)
    local a, b = dr.Generator(seed), dr.Generator(seed)
    return a, b
  end

  it('randn and rand give the cpu stream bit for bit', function()
    for _, n in ipairs { 1, 3, 4, 1000, 4099 } do
      for _, f in ipairs { dr.randn, dr.rand } do
        local a = f(n, { generator = dr.Generator(7) })
        local b = f(n, { generator = dr.Generator(7), device = 'cuda' })
        same(a, b, 'n = ' .. n)
      end
    end
    for _, dtype in ipairs { 'float16', 'bfloat16' } do
      same(dr.rand({ 33, 7 }, { dtype = dtype, generator = dr.Generator(3) }),
           dr.rand({ 33, 7 }, { dtype = dtype, generator = dr.Generator(3), device = 'cuda' }), dtype)
      same(dr.randn({ 9 }, { dtype = dtype, generator = dr.Generator(3) }),
           dr.randn({ 9 }, { dtype = dtype, generator = dr.Generator(3), device = 'cuda' }), dtype)
    end
  end)

  it('continues the stream from any offset, the counter and key high words included', function()
    local gc, gg = pair(11)
    same(dr.randn(5, { generator = gc }), dr.randn(5, { generator = gg, device = 'cuda' }))
    same(dr.rand(1001, { generator = gc }), dr.rand(1001, { generator = gg, device = 'cuda' }))
    assert.same(gc:get_state(), gg:get_state())
    local state = { seed = 2 ^ 40 + 3, offset = 2 ^ 33 + 1 }
    gc:set_state(state)
    gg:set_state(state)
    same(dr.randn({ 17, 5 }, { generator = gc }), dr.randn({ 17, 5 }, { generator = gg, device = 'cuda' }))
    same(dr.randint(0, 10, { 33 }, { generator = gc }), dr.randint(0, 10, { 33 }, { generator = gg, device = 'cuda' }))
  end)

  it('randint draws the cpu integers for narrow and wide ranges', function()
    local cases = { { -5, 17, { 1000 } }, { 0, 2 ^ 32, { 13 } }, { 0, 2 ^ 40, { 999 } },
                    { -2 ^ 45, 2 ^ 45, { 7, 3 } }, { 3, 4, { 5 } } }
    for i, c in ipairs(cases) do
      local a = dr.randint(c[1], c[2], c[3], { generator = dr.Generator(i) })
      local b = dr.randint(c[1], c[2], c[3], { generator = dr.Generator(i), device = 'cuda' })
      same(a, b, 'case ' .. i)
    end
    same(dr.randint(0, 100, { 50 }, { dtype = 'int32', generator = dr.Generator(4) }),
         dr.randint(0, 100, { 50 }, { dtype = 'int32', generator = dr.Generator(4), device = 'cuda' }))
  end)

  it('normal_ fills a device tensor from the same stream', function()
    local c = dr.empty({ 5, 7 })
    local g = dr.empty({ 5, 7 }, { device = 'cuda' })
    c:normal_(1.5, 2, { generator = dr.Generator(3) })
    g:normal_(1.5, 2, { generator = dr.Generator(3) })
    P.close(c, g)
  end)

  it('arange and linspace give the cpu values', function()
    local function both(f, ...)
      local args = { ... }
      local n = select('#', ...)
      local opts = args[n]
      local gopts = {}
      for k, v in pairs(opts) do gopts[k] = v end
      gopts.device = 'cuda'
      local ga = { unpack(args, 1, n - 1) }
      ga[n] = gopts
      return f(...), f(unpack(ga, 1, n))
    end
    same(both(dr.arange, 0, 100, {}))
    same(both(dr.arange, 10, -10, -3, {}))
    same(both(dr.arange, 5, 1000003, 7, {}))
    same(both(dr.arange, -3, 7, 0.37, {}))
    same(both(dr.arange, 0, 50, 0.5, { dtype = 'float16' }))
    same(both(dr.arange, 0, 20, 3, { dtype = 'uint8' }))
    for _, n in ipairs { 1, 2, 7, 1000, 1001 } do
      same(both(dr.linspace, -2, 3, n, {}))
      same(both(dr.linspace, 0, 1, n, { dtype = 'bfloat16' }))
      same(both(dr.linspace, 0, 100, n, { dtype = 'int64' }))
    end
  end)
end)

describe('cuda parity: optimizer updates #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  -- params, two state buffers and per-step grads, the same on both devices
  local function setup(shape, seed)
    local gen = P.gen(seed)
    local p = dr.randn(shape, { generator = gen })
    local grads = {}
    for i = 1, 4 do grads[i] = dr.randn(shape, { generator = gen }) end
    return p, grads
  end

  it('adamw_step_ matches the cpu step for step', function()
    local p, grads = setup({ 37, 11 }, 21)
    local pc, pg = p:clone(), p:cuda()
    local mc, vc = dr.zeros(p.shape), dr.zeros(p.shape)
    local mg, vg = mc:cuda(), vc:cuda()
    dr.no_grad(function()
      for step, g in ipairs(grads) do
        dr.adamw_step_(pc, g, mc, vc, 1e-2, 0.9, 0.999, 1e-8, 0.05, step)
        dr.adamw_step_(pg, g:cuda(), mg, vg, 1e-2, 0.9, 0.999, 1e-8, 0.05, step)
      end
    end)
    P.close(pc, pg, 1e-6, 1e-6, 'param')
    P.close(mc, mg, 1e-6, 1e-6, 'exp_avg')
    P.close(vc, vg, 1e-6, 1e-6, 'exp_avg_sq')
  end)

  it('sgd_step_ matches the cpu with momentum, dampening, weight decay and nesterov', function()
    for _, c in ipairs { { 0.1, 0, 0, 0, false }, { 0.1, 0.9, 0, 0.01, false },
                         { 0.1, 0.9, 0.1, 0, false }, { 0.05, 0.9, 0, 0.01, true } } do
      local p, grads = setup({ 5, 7, 3 }, 22)
      local pc, pg = p:clone(), p:cuda()
      local bc = c[2] ~= 0 and dr.zeros(p.shape) or nil
      local bg = bc and bc:cuda() or nil
      dr.no_grad(function()
        for step, g in ipairs(grads) do
          dr.sgd_step_(pc, g, bc, c[1], c[2], c[3], c[4], c[5], step == 1)
          dr.sgd_step_(pg, g:cuda(), bg, c[1], c[2], c[3], c[4], c[5], step == 1)
        end
      end)
      P.close(pc, pg, 1e-6, 1e-6, 'param')
      if bc then P.close(bc, bg, 1e-6, 1e-6, 'momentum buffer') end
    end
  end)

  it('dr.optim.AdamW and SGD step cuda parameters like cpu ones', function()
    for _, make in ipairs {
      function(ps) return dr.optim.AdamW(ps, { lr = 1e-2, weight_decay = 0.1 }) end,
      function(ps) return dr.optim.SGD(ps, { lr = 0.1, momentum = 0.9, nesterov = true }) end,
    } do
      local p, grads = setup({ 6, 5 }, 23)
      local pc, pg = p:clone():requires_grad_(), p:cuda():requires_grad_()
      local oc, og = make({ pc }), make({ pg })
      for _, g in ipairs(grads) do
        pc.grad, pg.grad = g:clone(), g:cuda()
        oc:step()
        og:step()
      end
      P.close(pc:detach(), pg:detach(), 1e-6, 1e-6)
    end
  end)

  it('lerp_ (EMA) and mul_ match the cpu', function()
    local p, grads = setup({ 300, 7 }, 24)
    local sc, sg = p:clone(), p:cuda()
    dr.no_grad(function()
      for _, g in ipairs(grads) do
        sc:lerp_(g, 0.1)
        sg:lerp_(g:cuda(), 0.1)
      end
      sc:mul_(0.3)
      sg:mul_(0.3)
    end)
    P.close(sc, sg, 1e-6, 1e-6)
    local pe = dr.randn({ 4, 5 }, { generator = P.gen(25) })
    local ec, eg = pe:clone():requires_grad_(), pe:cuda():requires_grad_()
    local emc, emg = dr.optim.EMA({ ec }, 0.9), dr.optim.EMA({ eg }, 0.9)
    dr.no_grad(function()
      ec:fill_(1)
      eg:fill_(1)
    end)
    emc:update()
    emg:update()
    P.close(emc.shadow[1], emg.shadow[1], 1e-6, 1e-6, 'EMA shadow')
  end)

  it('sum_squares is deterministic and agrees with the cpu', function()
    for _, n in ipairs { 1, 255, 1025, 100003, 3000017 } do
      local t = dr.randn(n, { generator = P.gen(n) })
      local c = dr.sum_squares(t)
      local g1, g2 = dr.sum_squares(t:cuda()), dr.sum_squares(t:cuda())
      assert.equal(g1, g2)
      assert(math.abs(c - g1) <= 1e-10 * c, ('n = %d: cpu %.17g, cuda %.17g'):format(n, c, g1))
    end
    assert.equal(0, dr.sum_squares(dr.zeros({ 0 }, { device = 'cuda' })))
  end)

  it('clip_grad_norm_ scales cuda gradients like cpu ones', function()
    local shapes = { { 30, 20 }, { 7 }, { 3, 4, 5 } }
    local cps, gps = {}, {}
    for i, s in ipairs(shapes) do
      local g = dr.randn(s, { generator = P.gen(30 + i) }) * 3
      cps[i] = dr.zeros(s):requires_grad_()
      gps[i] = dr.zeros(s, { device = 'cuda' }):requires_grad_()
      cps[i].grad, gps[i].grad = g, g:cuda()
    end
    local nc = dr.optim.clip_grad_norm_(cps, 1.0)
    local ng = dr.optim.clip_grad_norm_(gps, 1.0)
    assert(math.abs(nc - ng) <= 1e-10 * nc, ('norms %.17g and %.17g'):format(nc, ng))
    for i = 1, #shapes do P.close(cps[i].grad, gps[i].grad, 1e-7, 1e-6, 'grad ' .. i) end
  end)
end)
