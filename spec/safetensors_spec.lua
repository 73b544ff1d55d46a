-- safetensors from Lua: dr.load reads files the reference library wrote
-- (spec/fixtures/safetensors, made by tools/make_safetensors_fixtures.py) exactly;
-- dr.save writes the reference's bytes for the same content; lazy files; tensors
-- that outlive the file and never write to it; corrupt files made here at run time
-- each give an error naming the file and the problem, at the caller's line.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local FIXTURES = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/safetensors/'

local function fixture(name) return FIXTURES .. name .. '.safetensors' end

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

-- The error of f(...) must be raised at the line of the call that is passed in.
local function assert_error_at(line, ok, msg)
  assert.is_false(ok, 'expected an error')
  local where = h.short_src():match('[^/]*$') .. ':' .. line .. ': '
  assert_contains(msg, where)
end

local function temp_path(name)
  local p = os.tmpname()
  os.remove(p)
  return p .. '_' .. name .. '.safetensors'
end

-- Bytes of a safetensors file: an 8-byte little-endian length, header, data.
local function le64(n)
  local b = {}
  for i = 1, 8 do
    b[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(b)
end
local function st_bytes(header, data, length)
  return le64(length or #header) .. header .. (data or '')
end

-- The content of the reference-written fixtures (tools/make_safetensors_fixtures.py).
local CONTENT = {
  dtypes = {
    tensors = {
      f32 = { { { 1.5, -2.25, 3 }, { 0.125, -1024, 6.5 } }, 'float32' },
      ['a.weight'] = { { 42 }, 'float32' },
      f16 = { { 0.5, -65504, 1.0009765625 }, 'float16' },
      bf16 = { { { 1, -2.5 }, { 3.140625, 65536 } }, 'bfloat16' },
      i64 = { { -5, 1099511627777, 7 }, 'int64' },
      i32 = { { -2147483648, 0, 2147483647 }, 'int32' },
      u8 = { { 0, 1, 128, 255 }, 'uint8' },
      bool = { { true, false, true }, 'bool' },
    },
    metadata = { format = 'pt' },
  },
  scalars = {
    tensors = {
      scalar = { 2.5, 'float32' },
      one = { { 7 }, 'int32' },
    },
    empty = { empty = { { 0, 3 }, 'float32' }, empty_i64 = { { 0 }, 'int64' } },
  },
  names = {
    tensors = {
      ['ünïcödé/μ.weight'] = { { 1 }, 'float32' },
      ['quote"back\\slash'] = { { 2 }, 'float32' },
      ['tab\tnewline\n'] = { { 3 }, 'float32' },
      ['ctl\1\31'] = { { 4 }, 'float32' },
    },
    metadata = { note = 'line1\nline2 "quoted" \\ ünï \127' },
  },
  empty = { tensors = {} },
}

-- The fixture's content as diffrl tensors.
local function make(content)
  local out = {}
  for name, spec in pairs(content.tensors) do out[name] = dr.tensor(spec[1], { dtype = spec[2] }) end
  for name, spec in pairs(content.empty or {}) do out[name] = dr.zeros(spec[1], { dtype = spec[2] }) end
  return out
end

describe('dr.load of files the reference wrote #binding #golden', function()
  it('reads every dtype exactly, with the metadata', function()
    local t, meta = dr.load(fixture('dtypes'))
    local n = 0
    for name, spec in pairs(CONTENT.dtypes.tensors) do
      n = n + 1
      assert.are.equal(spec[2], t[name].dtype, name)
      assert.are.same(spec[1], t[name]:tolist(), name)
      assert.are.equal('cpu', t[name].device)
    end
    local m = 0
    for _ in pairs(t) do m = m + 1 end
    assert.are.equal(n, m)
    assert.are.same({ format = 'pt' }, meta)
  end)

  it('reads 0-d and empty tensors', function()
    local t, meta = dr.load(fixture('scalars'))
    assert.are.equal(0, t.scalar:dim())
    assert.are.equal(2.5, t.scalar:item())
    assert.are.same({ 0, 3 }, t.empty:size())
    assert.are.equal('int64', t.empty_i64.dtype)
    assert.are.same({ 0 }, t.empty_i64:size())
    assert.are.same({ 7 }, t.one:tolist())
    assert.are.same({}, meta)
  end)

  it('reads names and metadata that needed JSON escapes and UTF-8', function()
    local t, meta = dr.load(fixture('names'))
    for name, spec in pairs(CONTENT.names.tensors) do assert.are.same(spec[1], t[name]:tolist()) end
    assert.are.same(CONTENT.names.metadata, meta)
  end)

  it('reads several metadata keys and a file with no tensors', function()
    local t, meta = dr.load(fixture('metadata'))
    assert.are.same({ 1, 2 }, t.x:tolist())
    assert.are.same({ format = 'pt', author = 'diffrl', empty = '' }, meta)
    local none, nometa = dr.load(fixture('empty'))
    assert.are.same({}, none)
    assert.are.same({}, nometa)
  end)

  it('loads F64 as float32 and names the tensor and dtype it cannot load', function()
    local f = dr.safetensors_open(fixture('unsupported'))
    local t = f:get('f64')
    assert.are.equal('float32', t.dtype)
    assert.are.same({ 0.5, -1.25, 3 }, t:tolist())
    local line, ok, msg = h.line(), pcall(f.get, f, 'u16')
    assert_error_at(line, ok, msg)
    assert_contains(msg, "unsupported.safetensors: tensor 'u16' has dtype U16, which diffrl does not support")
    line, ok, msg = h.line(), pcall(dr.load, fixture('unsupported'))
    assert_error_at(line, ok, msg)
    assert_contains(msg, "tensor 'i8' has dtype I8")
    f:close()
  end)
end)

describe('dr.save #binding #golden', function()
  it("writes the reference's bytes for the same content", function()
    for _, stem in ipairs { 'dtypes', 'scalars', 'names', 'empty' } do
      local path = temp_path(stem)
      dr.save(path, make(CONTENT[stem]), { metadata = CONTENT[stem].metadata })
      local ours, ref = h.read_file(path), h.read_file(fixture(stem))
      os.remove(path)
      assert.is_string(ref)
      assert.are.equal(#ref, #ours, stem)
      assert.is_true(ours == ref, stem .. ': bytes differ from the reference')
    end
  end)

  it('round-trips what it loads, byte for byte', function()
    for _, stem in ipairs { 'dtypes', 'scalars', 'names', 'empty' } do
      local path = temp_path(stem)
      local t, meta = dr.load(fixture(stem))
      dr.save(path, t, { metadata = meta })
      assert.is_true(h.read_file(path) == h.read_file(fixture(stem)), stem)
      os.remove(path)
    end
  end)

  it('writes non-contiguous tensors contiguously', function()
    local a = dr.tensor { { 1, 2, 3 }, { 4, 5, 6 } }
    local path = temp_path('strided')
    dr.save(path, { t = a:t(), n = a:narrow(2, 2, 2) })
    local t = dr.load(path)
    os.remove(path)
    assert.are.same({ { 1, 4 }, { 2, 5 }, { 3, 6 } }, t.t:tolist())
    assert.are.same({ { 2, 3 }, { 5, 6 } }, t.n:tolist())
    assert.is_true(t.t:is_contiguous())
  end)

  it('raises argument errors at the caller, naming what is wrong', function()
    local a = dr.tensor { 1 }
    local path = temp_path('args')
    local cases = {
      { function() dr.save(path, { [1] = a }) end, 'tensor names must be strings' },
      { function() dr.save(path, { w = 3 }) end, "'w' must be a tensor, got number" },
      { function() dr.save(path, a) end, 'expected a table of name = tensor' },
      { function() dr.save(path, { w = a }, { meta = {} }) end, "unknown option 'meta'" },
      { function() dr.save(path, { w = a }, { metadata = { k = 1 } }) end, "metadata 'k' must be a string" },
      { function() dr.save(42, { w = a }) end, 'save: path must be a string, got number' },
      { function() dr.save(path, { __metadata__ = a }) end, "'__metadata__' is reserved" },
      { function() dr.save('/nonexistent-dir/x.safetensors', { w = a }) end,
        'save /nonexistent-dir/x.safetensors: cannot create a temporary file' },
      { function() dr.load(42) end, 'load: path must be a string' },
    }
    for _, c in ipairs(cases) do
      local line, ok, msg = h.line(), pcall(c[1])
      assert.is_false(ok)
      assert_contains(msg, c[2])
      -- the error points into this file (the function literal above), not into diffrl
      assert.is_truthy(msg:find('safetensors_spec.lua:', 1, true), msg)
      assert.is_true(line > 0)
    end
    assert.is_nil(h.read_file(path))
  end)
end)

describe('dr.safetensors_open #binding', function()
  it('lists keys sorted, gets tensors lazily, reads metadata, closes', function()
    local f = dr.safetensors_open(fixture('dtypes'))
    assert.are.same({ 'a.weight', 'bf16', 'bool', 'f16', 'f32', 'i32', 'i64', 'u8' }, f:keys())
    assert.are.same({ format = 'pt' }, f:metadata())
    local t = f:get('f32')
    assert_contains(tostring(f), 'dtypes.safetensors')
    f:close()
    f:close() -- twice is fine
    assert_contains(tostring(f), 'closed')
    -- tensors outlive the file
    assert.are.same({ 1.5, -2.25, 3 }, t[1]:tolist())
    local line, ok, msg = h.line(), pcall(f.get, f, 'f32')
    assert_error_at(line, ok, msg)
    assert_contains(msg, 'dtypes.safetensors is closed')
  end)

  it('names a missing tensor', function()
    local f = dr.safetensors_open(fixture('dtypes'))
    local line, ok, msg = h.line(), pcall(f.get, f, 'nope')
    assert_error_at(line, ok, msg)
    assert_contains(msg, "dtypes.safetensors: no tensor named 'nope' (the file has 8)")
    f:close()
  end)

  it('never writes to the file: tensors are copy-on-write', function()
    local path = temp_path('cow')
    dr.save(path, { w = dr.ones(4) })
    local before = h.read_file(path)
    local t = dr.load(path)
    t.w:fill_(7)
    assert.are.same({ 7, 7, 7, 7 }, t.w:tolist())
    assert.is_true(h.read_file(path) == before)
    assert.are.same({ 1, 1, 1, 1 }, dr.load(path).w:tolist())
    -- saving over a file whose tensors are alive replaces it atomically
    dr.save(path, { w = dr.zeros(2) })
    assert.are.same({ 7, 7, 7, 7 }, t.w:tolist())
    assert.are.same({ 0, 0 }, dr.load(path).w:tolist())
    os.remove(path)
  end)
end)

describe('corrupt safetensors files #binding', function()
  local ENTRY = '"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}'
  local function entry(name, dtype, shape, b, e) return ENTRY:format(name, dtype, shape, b, e) end
  local good_header = '{' .. entry('a', 'F32', '2', 0, 8) .. '}'

  local cases = {
    { 'truncated', st_bytes(good_header, ('\0'):rep(5)),
      "tensor 'a': data_offsets [0, 8] reach past the end of the data buffer (5 bytes)" },
    { 'too short', '\8\0\0', 'the file has 3 bytes' },
    { 'bad header length', st_bytes(good_header, ('\0'):rep(8), 4096),
      'bad header length 4096: it runs past the end of the file' },
    { 'absurd header length', st_bytes('{}', '', 2 ^ 40), 'more than the 100000000 bytes' },
    { 'not JSON', st_bytes('{"a":{', ''), 'header: invalid JSON at byte 6' },
    { 'overlapping offsets',
      st_bytes('{' .. entry('a', 'U8', '4', 0, 4) .. ',' .. entry('b', 'U8', '4', 2, 6) .. '}', ('\0'):rep(6)),
      "tensors 'a' [0, 4] and 'b' [2, 6] overlap" },
    { 'a hole', st_bytes('{' .. entry('a', 'U8', '2', 0, 2) .. ',' .. entry('b', 'U8', '2', 3, 5) .. '}', ('\0'):rep(5)),
      'bytes [2, 3) of the data buffer belong to no tensor' },
    { 'trailing bytes', st_bytes(good_header, ('\0'):rep(9)), 'has 1 bytes after the last tensor' },
    { 'bad dtype', st_bytes('{' .. entry('a', 'F99', '2', 0, 8) .. '}', ('\0'):rep(8)),
      "tensor 'a' has unknown dtype 'F99'" },
    { 'size mismatch', st_bytes('{' .. entry('a', 'F32', '3', 0, 8) .. '}', ('\0'):rep(8)),
      "tensor 'a': F32 [3] needs 12 bytes, but data_offsets [0, 8] hold 8" },
    { 'negative size', st_bytes('{' .. entry('a', 'F32', '-2', 0, 8) .. '}', ('\0'):rep(8)),
      "tensor 'a': shape[1] is -2" },
    { 'missing field', st_bytes('{"a":{"dtype":"F32","shape":[2]}}', ('\0'):rep(8)),
      "tensor 'a' has no \"data_offsets\"" },
    { 'duplicate key', st_bytes('{' .. good_header:sub(2, -2) .. ',' .. good_header:sub(2), ('\0'):rep(8)),
      "duplicate key 'a'" },
  }

  for _, c in ipairs(cases) do
    it('rejects ' .. c[1] .. ', naming the file and the problem', function()
      local path = temp_path(c[1]:gsub(' ', '_'))
      h.write_file(path, c[2])
      local line, ok, msg = h.line(), pcall(dr.load, path)
      os.remove(path)
      assert_error_at(line, ok, msg)
      assert_contains(msg, 'safetensors: ' .. path .. ': ')
      assert_contains(msg, c[3])
    end)
  end

  it('accepts the header padding the reference writes and JSON whitespace', function()
    local path = temp_path('padded')
    h.write_file(path, st_bytes(' \n' .. good_header .. '\t\r\n      ', ('\0'):rep(8)))
    assert.are.same({ 0, 0 }, dr.load(path).a:tolist())
    os.remove(path)
  end)
end)
