-- diffrl.core.wordpiece: BERT's WordPiece tokenizer (core/io/wordpiece.c), the ids
-- of transformers' BertTokenizer (bert-base-uncased; BLIP / ImageReward's text side).
--
--   local tok = dr.BertTokenizer('bert-base-uncased/vocab.txt', { lowercase = true })
--   local ids, mask = tok:encode({ 'a cat', 'a dog' }, { max_length = 35 })
--                                               -- int64 [2, 35] each; mask 1 / 0
--   tok:ids('a cat')                            -- { 101, 1037, 4937, 102 }
--   tok:token(1037)  tok:token_id('[SEP]')
--   tok.vocab_size  tok.cls_id  tok.sep_id  tok.pad_id  tok.unk_id
--
-- Options of BertTokenizer: lowercase (default true: lower case and strip accents,
-- as bert-base-uncased), added = { '[DEC]', '[ENC]' } (extra special tokens with
-- the ids after the vocabulary's, as BLIP's init_tokenizer adds them).
-- encode options (as transformers' __call__): max_length (default 512), padding =
-- 'max_length' (default) | 'longest' | false, truncation = true (default) | false.
-- The mask is transformers' attention_mask. Not thread-safe (one per thread).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local F = require 'diffrl.core.factory'

local C, raise = api.C, api.raise

local M = {}

local tok_box = ffi.new('dr_wordpiece*[1]')

local check = api.check

local Tokenizer = {}
Tokenizer.__index = Tokenizer
Tokenizer.__tostring = function(t)
  return ('BertTokenizer(%q, vocab_size=%d%s)'):format(t.path, t.vocab_size,
    t._handle == nil and ', freed' or '')
end

local function handle(t, op)
  if getmetatable(t) ~= Tokenizer then raise(op .. ': expected a BertTokenizer (use tok:' .. op .. ')') end
  local h = t._handle
  if h == nil then raise(('%s: the tokenizer of %s was freed'):format(op, t.path)) end
  return h
end

local shared = require 'diffrl.core.tokenizer' -- encode_one, encode_batch (the CLIP tokenizer's)

local function fresh(n) return ffi.new('int64_t[?]', n), n end

-- Ids of one text, [CLS] ... [SEP], untruncated (a Lua table).
function Tokenizer.ids(t, text)
  local h = handle(t, 'ids')
  local buf, _, n = shared.encode_one(C.dr_wordpiece_encode, h, 'ids', text, 0, ffi.new('int64_t[?]', 64), 64, 0)
  local out = {}
  for i = 0, n - 1 do out[i + 1] = tonumber(buf[i]) end
  return out
end

function Tokenizer.encode(t, texts, opts)
  local h = handle(t, 'encode')
  local buf, _, starts, lens, width = shared.encode_batch(C.dr_wordpiece_encode, h, texts, opts, t.model_max_length, fresh)
  local b = #lens
  local ids = F.empty(b, width, { dtype = 'int64' })
  local mask = F.empty(b, width, { dtype = 'int64' })
  local p = ffi.cast('int64_t *', C.dr_tensor_data(ids.ptr))
  local m = ffi.cast('int64_t *', C.dr_tensor_data(mask.ptr))
  local pad = t.pad_id
  for i = 1, b do
    local row, mrow, n = p + (i - 1) * width, m + (i - 1) * width, lens[i]
    ffi.copy(row, buf + starts[i], n * 8)
    for j = 0, n - 1 do mrow[j] = 1 end
    if n < width and pad < 0 then
      raise(('encode: text %d needs padding, but the vocabulary has no [PAD]'):format(i))
    end
    for j = n, width - 1 do row[j], mrow[j] = pad, 0 end
  end
  return ids, mask
end

function Tokenizer.token(t, id)
  local h = handle(t, 'token')
  if type(id) ~= 'number' then raise('token: expected an integer id, got ' .. type(id)) end
  local s = C.dr_wordpiece_token(h, id)
  if s == nil then return nil end
  return ffi.string(s)
end

function Tokenizer.token_id(t, token)
  local h = handle(t, 'token_id')
  if type(token) ~= 'string' then raise('token_id: expected a string, got ' .. type(token)) end
  local id = C.dr_wordpiece_token_id(h, token)
  if id < 0 then return nil end
  return id
end

function Tokenizer.free(t)
  local h = t._handle
  if h == nil then return end
  t._handle = nil
  ffi.gc(h, nil)
  C.dr_wordpiece_free(h)
end

function M.BertTokenizer(path, opts)
  if type(path) ~= 'string' then raise('BertTokenizer: expected the path of vocab.txt, got ' .. type(path)) end
  local lowercase, added = true, {}
  if opts ~= nil then
    if type(opts) ~= 'table' then raise('BertTokenizer: options must be a table, got ' .. type(opts)) end
    for k in pairs(opts) do
      if k ~= 'lowercase' and k ~= 'added' and k ~= 'model_max_length' then
        raise(("BertTokenizer: unknown option '%s' (options: lowercase, added, model_max_length)")
          :format(tostring(k)))
      end
    end
    if opts.lowercase ~= nil then
      if type(opts.lowercase) ~= 'boolean' then
        raise('BertTokenizer: lowercase must be a boolean, got ' .. tostring(opts.lowercase))
      end
      lowercase = opts.lowercase
    end
    if opts.added ~= nil then
      if type(opts.added) ~= 'table' then raise('BertTokenizer: added must be a list of strings') end
      added = opts.added
    end
  end
  local cadded = ffi.new('const char *[?]', #added + 1)
  for i, s in ipairs(added) do
    if type(s) ~= 'string' or s == '' then
      raise(('BertTokenizer: added token %d must be a non-empty string, got %s'):format(i, tostring(s)))
    end
    cadded[i - 1] = s -- `added` keeps the strings alive
  end
  check(C.dr_wordpiece_load(path, lowercase and 1 or 0, cadded, #added, tok_box))
  local h = ffi.gc(tok_box[0], C.dr_wordpiece_free)
  tok_box[0] = nil
  local function id_of(s)
    local id = C.dr_wordpiece_token_id(h, s)
    return id >= 0 and id or -1
  end
  local mml = opts and opts.model_max_length or 512
  if type(mml) ~= 'number' or mml % 1 ~= 0 or mml < 2 then
    raise('BertTokenizer: model_max_length must be an integer >= 2, got ' .. tostring(mml))
  end
  return setmetatable({
    _handle = h, path = path, lowercase = lowercase,
    vocab_size = C.dr_wordpiece_vocab_size(h),
    cls_id = id_of('[CLS]'), sep_id = id_of('[SEP]'), pad_id = id_of('[PAD]'),
    unk_id = id_of('[UNK]'), model_max_length = mml,
  }, Tokenizer)
end

return M
