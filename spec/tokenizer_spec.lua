-- dr.CLIPTokenizer gives the ids transformers' CLIPTokenizer gives: every prompt of
-- spec/fixtures/models/clip_tokenizer_golden.json (tools/fixtures/make_tokenizer_golden.py:
-- accents in NFC and NFD, CJK, Hangul, emoji, full-width forms, contractions, digits,
-- whitespace runs, special-token text, prompts over 77 tokens), unpadded and padded
-- to 77, from the fixture folder and from its SD2-style copy whose pad token is "!".
-- Broken folders give errors naming the file, at the caller's line.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'

local MODELS = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/models/'

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

-- A small JSON reader, enough for the golden file (objects, arrays, strings with
-- escapes, integers, booleans).
local function decode_json(s)
  local pos = 1
  local value
  local function ws() pos = s:find('[^ \t\r\n]', pos) or #s + 1 end
  local function utf8(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
    if cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                       0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  local escapes = { b = '\b', f = '\f', n = '\n', r = '\r', t = '\t', ['"'] = '"', ['\\'] = '\\', ['/'] = '/' }
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == '"' then pos = pos + 1; return table.concat(out) end
      if c == '\\' then
        local e = s:sub(pos + 1, pos + 1)
        if e == 'u' then
          local cp = tonumber(s:sub(pos + 2, pos + 5), 16)
          pos = pos + 6
          if cp >= 0xD800 and cp < 0xDC00 then
            cp = 0x10000 + (cp - 0xD800) * 1024 + (tonumber(s:sub(pos + 2, pos + 5), 16) - 0xDC00)
            pos = pos + 6
          end
          out[#out + 1] = utf8(cp)
        else
          out[#out + 1] = escapes[e]
          pos = pos + 2
        end
      else
        local j = s:find('["\\]', pos)
        out[#out + 1] = s:sub(pos, j - 1)
        pos = j
      end
    end
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == '{' then
      local t = {}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == '}' then pos = pos + 1; return t end
      repeat
        ws()
        local k = str()
        ws()
        pos = pos + 1 -- ':'
        t[k] = value()
        ws()
        c = s:sub(pos, pos)
        pos = pos + 1
      until c == '}'
      return t
    elseif c == '[' then
      local t = {}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == ']' then pos = pos + 1; return t end
      repeat
        t[#t + 1] = value()
        ws()
        c = s:sub(pos, pos)
        pos = pos + 1
      until c == ']'
      return t
    elseif c == '"' then
      return str()
    end
    local lit = s:match('^[%w%.%-+]+', pos)
    pos = pos + #lit
    if lit == 'true' then return true elseif lit == 'false' then return false end
    return tonumber(lit)
  end
  return value()
end

local golden = decode_json(assert(h.read_file(MODELS .. 'clip_tokenizer_golden.json')))

local function row(t, i)
  local out = {}
  for j = 0, t:size(2) - 1 do out[j + 1] = tonumber(t[i][j + 1]:item()) end
  return out
end

describe('dr.CLIPTokenizer against transformers #binding #golden', function()
  local tok = dr.CLIPTokenizer(MODELS .. 'clip_tokenizer')
  local bang = dr.CLIPTokenizer(MODELS .. 'clip_tokenizer_pad_bang')

  it('has the special ids and sizes transformers reports', function()
    assert.are.equal(golden.vocab_size, tok.vocab_size)
    assert.are.equal(golden.bos_id, tok.bos_id)
    assert.are.equal(golden.eos_id, tok.eos_id)
    assert.are.equal(golden.pad_id, tok.pad_id)
    assert.are.equal(golden.pad_id_bang, bang.pad_id)
    assert.are.equal(0, bang.pad_id)
    assert.are.equal(77, tok.model_max_length)
  end)

  it('gives the unpadded ids of every prompt', function()
    assert.is_true(#golden.cases >= 60)
    for i, case in ipairs(golden.cases) do
      assert.are.same(case.ids, tok:ids(case.text), ('prompt %d %q'):format(i, case.text))
    end
  end)

  it('gives the padded, truncated [B, 77] ids of every prompt, in one batch', function()
    local texts = {}
    for i, case in ipairs(golden.cases) do texts[i] = case.text end
    local ids = tok:encode(texts)
    local bang_ids = bang:encode(texts, { max_length = 77, padding = 'max_length', truncation = true })
    assert.are.same({ #texts, 77 }, { ids:size(1), ids:size(2) })
    assert.are.equal('int64', ids.dtype)
    for i, case in ipairs(golden.cases) do
      assert.are.same(case.padded, row(ids, i), ('prompt %d %q'):format(i, case.text))
      assert.are.same(case.padded_bang, row(bang_ids, i), ('pad "!": prompt %d %q'):format(i, case.text))
    end
  end)

  it('pads to the longest, or not at all', function()
    local t = tok:encode({ 'a cat', 'a photo of a cat' }, { padding = 'longest' })
    assert.are.same({ 2, 7 }, { t:size(1), t:size(2) })
    assert.are.same({ 3512, 320, 2368, 3513, 3513, 3513, 3513 }, row(t, 1))
    local one = tok:encode('a cat', { padding = false })
    assert.are.same({ 3512, 320, 2368, 3513 }, row(one, 1))
    local ok, err = pcall(function() return tok:encode({ 'a', 'a cat' }, { padding = false }) end)
    assert.is_false(ok)
    assert_contains(err, 'text 2 has 4')
  end)

  it('rejects a long prompt when truncation is off', function()
    local ok, err = pcall(function() return tok:encode(('word '):rep(100), { truncation = false }) end)
    assert.is_false(ok)
    assert_contains(err, 'text 1 has 102 tokens, more than max_length 77')
  end)

  it('names the byte offset of invalid UTF-8', function()
    local ok, err = pcall(function() return tok:ids('ok \xff') end)
    assert.is_false(ok)
    assert_contains(err, 'not valid UTF-8 at byte 3')
  end)

  it('maps ids back to token strings', function()
    assert.are.equal('a</w>', tok:token(320))
    assert.are.equal('<|endoftext|>', tok:token(tok.eos_id))
    assert.is_nil(tok:token(1e6))
  end)
end)

describe('dr.CLIPTokenizer errors #binding', function()
  local function temp_dir(files)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir -p ' .. h.shell_quote(dir)))
    for name, text in pairs(files) do h.write_file(dir .. '/' .. name, text) end
    return dir
  end
  local function remove_dir(dir) os.execute('rm -rf ' .. h.shell_quote(dir)) end

  it('names the missing file, at the caller', function()
    local ok, err = pcall(dr.CLIPTokenizer, '/nonexistent/tokenizer')
    assert.is_false(ok)
    assert_contains(err, '/nonexistent/tokenizer/vocab.json: cannot open')
    assert_contains(err, 'tokenizer_spec.lua:')
  end)

  it('names a malformed vocab.json', function()
    local dir = temp_dir({ ['vocab.json'] = '{"a": 0, "b": }', ['merges.txt'] = '' })
    local ok, err = pcall(dr.CLIPTokenizer, dir)
    remove_dir(dir)
    assert.is_false(ok)
    assert_contains(err, dir .. '/vocab.json: invalid JSON at byte 14')
  end)

  it('names the merges.txt line with an unknown token', function()
    local dir = temp_dir({ ['vocab.json'] = '{"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}',
                           ['merges.txt'] = '#version: 0.2\na b\na c\n' })
    local ok, err = pcall(dr.CLIPTokenizer, dir)
    remove_dir(dir)
    assert.is_false(ok)
    assert_contains(err, dir .. "/merges.txt: line 3: token 'c' is not in vocab.json")
  end)

  it('refuses a freed tokenizer', function()
    local tok = dr.CLIPTokenizer(MODELS .. 'clip_tokenizer')
    tok:free()
    tok:free()
    local ok, err = pcall(function() return tok:ids('a') end)
    assert.is_false(ok)
    assert_contains(err, 'was freed')
  end)
end)
