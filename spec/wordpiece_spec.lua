-- BERT's WordPiece tokenizer (dr.BertTokenizer, core/io/wordpiece.c) gives the ids of
-- transformers' BertTokenizer (golden ids from tools/fixtures/make_wordpiece_golden.py
-- on a small made-up vocabulary): accents, CJK, Hangul, emoji, control characters,
-- punctuation of many scripts, long words, special tokens in the text, uncased and
-- cased, BLIP's added [DEC] / [ENC], padding, truncation and the attention mask.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local cjson = require 'cjson'

local DIR = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/wordpiece/'
local golden = cjson.decode(h.read_file(DIR .. 'golden.json'))
local VOCAB = DIR .. 'vocab.txt'

local function assert_contains(text, part)
  assert.is_string(text)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in %q'):format(part, text))
end

local function rows(t)
  local out = {}
  for i = 1, t:size(1) do out[i] = t[i]:tolist() end
  return out
end

local function check_all(tok, cases)
  local bad = {}
  for _, c in ipairs(cases) do
    local ids = tok:ids(c.text)
    if not h.difference(ids, c.ids) == nil or #ids ~= #c.ids then
      bad[#bad + 1] = ('%q: got {%s}, want {%s}'):format(c.text, table.concat(ids, ','),
        table.concat(c.ids, ','))
    else
      for i = 1, #ids do
        if ids[i] ~= c.ids[i] then
          bad[#bad + 1] = ('%q: got {%s}, want {%s}'):format(c.text, table.concat(ids, ','),
            table.concat(c.ids, ','))
          break
        end
      end
    end
  end
  assert.are.same({}, bad)
end

describe('dr.BertTokenizer #golden', function()
  it('gives the ids of transformers (uncased: lower case, accents stripped)', function()
    local tok = dr.BertTokenizer(VOCAB)
    assert.are.equal(golden.vocab_size, tok.vocab_size)
    assert.are.same({ 2, 3, 0, 1 }, { tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id })
    check_all(tok, golden.uncased)
  end)

  it('gives the ids of transformers (cased)', function()
    check_all(dr.BertTokenizer(VOCAB, { lowercase = false }), golden.cased)
  end)

  it("adds BLIP's [DEC] and [ENC] after the vocabulary, matched in the text", function()
    local tok = dr.BertTokenizer(VOCAB, { added = { '[DEC]', '[ENC]' } })
    assert.are.equal(golden.blip_ids['[DEC]'], tok:token_id('[DEC]'))
    assert.are.equal(golden.blip_ids['[ENC]'], tok:token_id('[ENC]'))
    assert.are.equal(golden.vocab_size + 2, tok.vocab_size)
    assert.are.equal('[ENC]', tok:token(golden.blip_ids['[ENC]']))
    check_all(tok, golden.blip)
  end)

  it('pads to max_length, truncates keeping [SEP], and gives the attention mask', function()
    local tok = dr.BertTokenizer(VOCAB, { added = { '[DEC]', '[ENC]' } })
    local g = golden.padded
    local ids, mask = tok:encode(g.texts, { max_length = g.max_length })
    assert.are.equal('int64', ids.dtype)
    assert.are.same({ #g.texts, g.max_length }, { ids:size(1), ids:size(2) })
    assert.are.same(g.input_ids, rows(ids))
    assert.are.same(g.attention_mask, rows(mask))
    local l = golden.longest
    ids, mask = dr.BertTokenizer(VOCAB):encode(l.texts, { padding = 'longest', truncation = false })
    assert.are.same(l.input_ids, rows(ids))
    assert.are.same(l.attention_mask, rows(mask))
  end)

  it('names the problem: options, files, invalid UTF-8', function()
    local tok = dr.BertTokenizer(VOCAB)
    assert_contains(h.error_of(tok.encode, tok, 'a', { max_len = 3 }), "unknown option 'max_len'")
    assert_contains(h.error_of(tok.encode, tok, { 'a', 'a b c' }, { padding = false }),
      'without padding every text must give as many tokens')
    assert_contains(h.error_of(tok.encode, tok, 'a b c d', { max_length = 4, truncation = false }),
      'text 1 has 6 tokens, more than max_length 4')
    assert_contains(h.error_of(tok.ids, tok, 'ok \255 bad'), 'invalid UTF-8 at byte 4')
    assert_contains(h.error_of(dr.BertTokenizer, DIR .. 'none.txt'), 'none.txt: cannot open')
    assert_contains(h.error_of(dr.BertTokenizer, VOCAB, { lower = true }), "unknown option 'lower'")
    local path = h.temp_file('hello\nworld\n')
    assert_contains(h.error_of(dr.BertTokenizer, path), 'has no [UNK] token')
    os.remove(path)
  end)

  it('reads a vocabulary with CRLF line ends and no final newline', function()
    local path = h.temp_file('[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\ncat\r\n##s')
    local tok = dr.BertTokenizer(path)
    assert.are.same({ 2, 4, 5, 3 }, tok:ids('cats'))
    assert.are.equal('##s', tok:token(5))
    os.remove(path)
  end)
end)
