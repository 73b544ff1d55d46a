-- PyTorch checkpoints from Lua: dr.torch_load reads files the real torch.save wrote
-- (spec/fixtures/torch, made by tools/fixtures/make_torch_fixtures.py) exactly —
-- every storage dtype, strided views sharing one storage, nested containers with
-- non-tensor leaves, pickle protocols 2 and 4 — and refuses what is not plain data:
-- a pickle that calls os.system is an error naming posix.system and runs nothing;
-- a pickled nn.Module names its class; compressed, legacy and damaged files say so.
-- `diffrl convert` writes the tensors to safetensors.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local cjson = require 'cjson'

local DIR = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/torch/'
local expected = cjson.decode(h.read_file(DIR .. 'expected.json'))

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

local function flat(t)
  if t:numel() == 0 then return {} end
  local v = t:reshape({ t:numel() }):tolist()
  return v
end

local function shape_of(t)
  local s = {}
  for i = 1, t.ndim do s[i] = t:size(i) end
  return s
end

local function check_against(name, tensors, values, strip)
  local want = expected[name]
  local seen = 0
  for key, e in pairs(want) do
    local k = strip and key:gsub('^' .. h.escape_pattern(strip), '') or key
    if e.dtype then
      local t = tensors[k]
      assert(t, ('%s: no tensor %s'):format(name, k))
      assert.are.equal(e.dtype, t.dtype, k)
      assert.are.same(e.shape, shape_of(t), k)
      assert.are.same(e.values, flat(t), k) -- exact: every value is representable
      seen = seen + 1
    elseif e.bytes then
      assert.are.equal(string.char(unpack(e.bytes)), values[k])
    elseif e.value ~= cjson.null then
      assert.are.equal(e.value, values[k], k)
    else
      assert.is_nil(values[k], k)
    end
  end
  local n = 0
  for _ in pairs(tensors) do n = n + 1 end
  assert.are.equal(seen, n, name .. ': tensor count')
end

describe('dr.torch_load #golden', function()
  it('reads every storage dtype torch.save writes, exactly', function()
    local tensors, values = dr.torch_load(DIR .. 'dtypes.pt')
    check_against('dtypes', tensors, values)
    assert.are.equal(2.5, tensors.scalar:item())
    assert.are.equal(0, tensors.scalar.ndim)
  end)

  it('gives strided views that share their storage, as torch does', function()
    local t = dr.torch_load(DIR .. 'views.pt')
    check_against('views', t, {})
    t.base[2]:fill_(100) -- row 2 of base: seen through every view of that storage
    assert.are.equal(100, t.transposed[1][2]:item())
    assert.are.equal(100, t.narrowed[1][6]:item())
    t.base[3]:fill_(7) -- expanded is row 3 with stride 0: every row sees it
    assert.are.same({ 7, 7, 7 }, { t.expanded[1][4]:item(), t.expanded[2][4]:item(),
                                   t.expanded[3][4]:item() })
    assert.are.equal(100, t.column[2]:item())
    -- the mapping is copy-on-write: the file itself did not change
    local again = dr.torch_load(DIR .. 'views.pt')
    assert.are.same(expected.views.base.values, flat(again.base))
  end)

  it('flattens nested dicts, lists and tuples, with non-tensor values (protocol 4)', function()
    local tensors, values = dr.torch_load(DIR .. 'nested.pt')
    check_against('nested', tensors, values)
    assert.are.equal(12, values.step)
    assert.are.equal(0.125, values.lr)
    assert.are.equal('run-1', values.name)
    assert.are.equal(false, values.done)
    assert.are.equal('\0\1', values.blob)
    assert.is_not_nil(tensors['model.head.1'])
    assert.is_not_nil(tensors['7']) -- an int key
  end)

  it("unwraps a training checkpoint's state_dict, or takes the key asked for", function()
    local sd, values = dr.torch_load(DIR .. 'wrapped.pt')
    check_against('views', sd, {})
    assert.is_nil(values.epoch)
    local all, v2 = dr.torch_load(DIR .. 'wrapped.pt', { key = false })
    check_against('wrapped', all, v2)
    assert.are.equal(3, v2.epoch)
    local same = dr.torch_load(DIR .. 'wrapped.pt', { key = 'state_dict' })
    assert.are.same(flat(sd.stepped), flat(same.stepped))
    assert_contains(h.error_of(dr.torch_load, DIR .. 'wrapped.pt', { key = 'model' }),
      "has no entry 'model' (keys: state_dict, epoch)")
    assert_contains(h.error_of(dr.torch_load, DIR .. 'views.pt', { strict = true }),
      "unknown option 'strict'")
  end)

  it('keeps tensors valid after the checkpoint and its mapping are collected', function()
    local t = dr.torch_load(DIR .. 'views.pt').stepped
    collectgarbage()
    collectgarbage()
    assert.are.same(expected.views.stepped.values, flat(t))
  end)

  it('refuses a pickle that calls os.system, naming posix.system, and runs nothing', function()
    os.remove('/tmp/diffrl-pwned')
    local line, ok, err = h.line(), pcall(dr.torch_load, DIR .. 'malicious.pt')
    assert.is_false(ok)
    assert_contains(err, "GLOBAL 'posix.system' is not allowed")
    assert_contains(err, 'malicious.pt: malicious/data.pkl')
    assert_contains(err, h.short_src():match('[^/]*$') .. ':' .. line .. ':')
    assert.is_nil(io.open('/tmp/diffrl-pwned'))
  end)

  it('names the class of a pickled module, and other unsupported files', function()
    assert_contains(h.error_of(dr.torch_load, DIR .. 'module.pt'),
      "GLOBAL 'torch.nn.modules.linear.Linear' is not allowed")
    assert_contains(h.error_of(dr.torch_load, DIR .. 'deflated.pt'),
      "entry 'dtypes/byteorder' is compressed (zip method 8, deflate)")
    assert_contains(h.error_of(dr.torch_load, DIR .. 'legacy.pt'), "PyTorch's legacy format")
    assert_contains(h.error_of(dr.torch_load, DIR .. 'bomb.pt'), 'the object expands to more entries')
    assert_contains(h.error_of(dr.torch_load, DIR .. 'expected.json'),
      'expected.json is not a PyTorch checkpoint (not a zip archive)')
    assert_contains(h.error_of(dr.torch_load, DIR .. 'missing.pt'), 'missing.pt: cannot open')
    assert_contains(h.error_of(dr.torch_load, DIR), 'cannot open: Is a directory')
  end)

  it('reports a damaged file by name, never crashing', function()
    local bytes = h.read_file(DIR .. 'dtypes.pt')
    local path = os.tmpname()
    for _, cut in ipairs { 10, 200, math.floor(#bytes / 2), #bytes - 30 } do
      h.write_file(path, bytes:sub(1, cut))
      assert_contains(h.error_of(dr.torch_load, path), path)
    end
    local flipped = bytes:gsub('FloatStorage', 'FloatStorXge', 1)
    h.write_file(path, flipped)
    assert_contains(h.error_of(dr.torch_load, path), 'CRC-32 mismatch')
    os.remove(path)
  end)
end)

describe('diffrl convert #cli #golden', function()
  it('writes the tensors of a checkpoint to safetensors', function()
    local out = os.tmpname() .. '.safetensors'
    local r = h.diffrl({ 'convert', DIR .. 'nested.pt', out })
    assert.are.equal(0, r.code, r.stderr)
    assert_contains(r.stdout, '6 tensors')
    assert_contains(r.stdout, 'left out 5 non-tensor values: blob, done, lr, name, step')
    local back = dr.load(out)
    check_against('nested', back, {
      step = 12, lr = 0.125, name = 'run-1', done = false, blob = '\0\1' })
    os.remove(out)
  end)

  it('refuses what torch_load refuses, and bad usage', function()
    local r = h.diffrl({ 'convert', DIR .. 'malicious.pt', os.tmpname() .. '.safetensors' })
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, 'posix.system')
    r = h.diffrl({ 'convert', DIR .. 'views.pt' })
    assert.are.equal(2, r.code)
    assert_contains(r.stderr, 'expected IN.pt and OUT.safetensors')
    r = h.diffrl({ 'convert', '--key', 'a', '--all', 'x.pt', 'y.safetensors' })
    assert.are.equal(2, r.code)
  end)
end)
