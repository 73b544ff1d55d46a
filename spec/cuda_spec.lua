-- The CUDA device itself: moving tensors, the caching allocator, errors. Kernel
-- parity lives in the cuda_*_spec.lua files beside this one.
local dr = require 'diffrl'
local P = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/cuda_parity.lua')

describe('cuda without a device #binding', function()
  it('says why a cuda tensor cannot be made', function()
    if P.available() then return end
    local ok, err = pcall(dr.zeros, { 2 }, { device = 'cuda' })
    assert.is_false(ok)
    assert.truthy(tostring(err):find('cuda:0', 1, true))
    for _, f in ipairs { function() return dr.cuda.memory_stats() end,
                         function() return dr.cuda.synchronize() end,
                         function() return dr.ones({ 2 }):cuda() end } do
      ok, err = pcall(f)
      assert.is_false(ok)
      assert.truthy(tostring(err):find('cuda:0', 1, true), tostring(err))
    end
    dr.cuda.empty_cache() -- harmless without a device
  end)
end)

describe('cuda tensors #gpu', function()
  if not P.available() then
    it('skips', function() pending('#gpu specs skipped: ' .. P.why()) end)
    return
  end

  it('round-trips every dtype through the device, strided views included', function()
    for _, dtype in ipairs { 'float32', 'float16', 'bfloat16', 'int64', 'int32', 'uint8', 'bool' } do
      local a = dr.arange(0, 24):reshape(2, 3, 4):to(dtype)
      local g = a:cuda()
      assert.equal('cuda:0', g.device)
      assert.equal(dtype, g.dtype)
      assert.same(a:tolist(), g:cpu():tolist())
      assert.same(a:tolist(), g:tolist()) -- read through the host
      local t = a:transpose(1, 3)
      assert.same(t:contiguous():tolist(), t:cuda():cpu():tolist())
      assert.same(t:contiguous():tolist(), a:cuda():transpose(1, 3):cpu():tolist())
    end
  end)

  it('casts while copying across devices', function()
    local a = dr.tensor { 1.5, -2.25, 3e5, 0.1 }
    local g = dr.zeros({ 4 }, { dtype = 'bfloat16', device = 'cuda' })
    g:copy_(a)
    assert.same(a:to('bfloat16'):tolist(), g:cpu():tolist())
    local back = dr.zeros({ 4 }, { dtype = 'float16' })
    back:copy_(a:cuda())
    assert.same(a:to('float16'):tolist(), back:tolist())
  end)

  it('makes tensors on the device from data, fill and random', function()
    assert.same({ { 1, 2 }, { 3, 4 } }, dr.tensor({ { 1, 2 }, { 3, 4 } }, { device = 'cuda' }):tolist())
    assert.same({ 7, 7, 7 }, dr.full({ 3 }, 7, { device = 'cuda' }):tolist())
    assert.equal(2.5, dr.tensor({ 2.5 }, { device = 'cuda' }):item())
  end)

  it('moves gradients back across the device boundary', function()
    local x = dr.tensor({ 1, 2, 3 }):requires_grad(true)
    local y = (x:cuda() * x:cuda()):cpu():sum()
    y:backward()
    assert.equal('cpu', x.grad.device)
    assert.same({ 2, 4, 6 }, x.grad:tolist())
  end)

  it('reuses freed blocks through the caching allocator', function()
    dr.cuda.synchronize()
    local before = dr.cuda.memory_stats()
    local a = dr.zeros({ 1024, 1024 }, { device = 'cuda' })
    local held = dr.cuda.memory_stats()
    assert.is_true(held.allocated >= before.allocated + 4 * 1024 * 1024)
    a:free()
    local b = dr.zeros({ 1024, 1024 }, { device = 'cuda' })
    local after = dr.cuda.memory_stats()
    assert.is_true(after.cache_hits > held.cache_hits)
    assert.equal(held.cuda_malloc_count, after.cuda_malloc_count)
    b:free()
    dr.cuda.empty_cache()
    assert.is_true(dr.cuda.memory_stats().reserved <= after.reserved - 4 * 1024 * 1024)
  end)

  it('says what was asked and what is held when the device is out of memory', function()
    local ok, err = pcall(dr.empty, { 1024, 1024, 1024, 1024 }, { device = 'cuda' })
    assert.is_false(ok)
    err = tostring(err)
    assert.truthy(err:find('out of memory', 1, true), err)
    assert.truthy(err:find('cuda:0', 1, true), err)
    assert.truthy(err:find('MiB', 1, true), err)
    -- and the device still works afterwards
    assert.same({ 1, 1 }, dr.ones({ 2 }, { device = 'cuda' }):tolist())
  end)

  it('saves cuda tensors to safetensors (through the host)', function()
    local path = os.tmpname()
    local a = dr.arange(0, 12):reshape(3, 4):cuda()
    dr.save(path, { a = a, t = a:t(), h = a:to('bfloat16') })
    local back = dr.load(path)
    os.remove(path)
    assert.same(a:cpu():tolist(), back.a:tolist())
    assert.same(a:cpu():t():tolist(), back.t:tolist())
    assert.equal('bfloat16', back.h.dtype)
  end)

  it('runs NCCL collectives on cuda tensors (one rank)', function()
    if dr.build_info().nccl:find('linked', 1, true) == nil then
      pending('this diffrl is built without NCCL')
      return
    end
    local world = dr.comm.world():enable_nccl(0)
    local t = dr.arange(0, 6):reshape(2, 3):cuda()
    local g = world:all_gather(t)
    assert.equal('cuda:0', g.device)
    assert.same(t:cpu():tolist(), g:cpu():tolist())
    world:all_reduce(t)
    world:broadcast(t, 0)
    assert.same({ { 0, 1, 2 }, { 3, 4, 5 } }, t:cpu():tolist())
  end)

  it('refuses ops that mix devices, naming both', function()
    local ok, err = pcall(function() return dr.ones({ 2 }) + dr.ones({ 2 }, { device = 'cuda' }) end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find('cuda:0', 1, true), tostring(err))
  end)
end)
