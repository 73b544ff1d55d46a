-- diffrl.core.tokenizer: CLIP's BPE tokenizer (core/io/clip_tokenizer.c), the ids
-- of transformers' CLIPTokenizer.
--
--   local tok = dr.CLIPTokenizer('sd/tokenizer')      -- vocab.json + merges.txt (+ configs)
--   local ids = tok:encode({ 'a cat', 'a dog' })      -- int64 tensor [2, 77]
--   tok:encode('a cat', { max_length = 16, padding = 'longest', truncation = true })
--   tok:ids('a cat')                                  -- { 49406, 320, 2368, 49407 }
--   tok:token(320)                                    -- 'a</w>'
--   tok.vocab_size  tok.bos_id  tok.eos_id  tok.pad_id  tok.model_max_length
--   tok:free()
--
-- encode options (as transformers' __call__): max_length (default model_max_length),
-- padding = 'max_length' (default) | 'longest' | false, truncation = true (default:
-- cut to max_length keeping eos last) | false (a longer prompt is an error when the
-- result must fit max_length). A tokenizer is not thread-safe (one per thread).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local F = require 'diffrl.core.factory'

local C, raise = api.C, api.raise

local M = {}

local tok_box = ffi.new('dr_clip_tokenizer*[1]')
local n_box = ffi.new('int32_t[1]')

local check = api.check

local Tokenizer = {}
Tokenizer.__index = Tokenizer
Tokenizer.__tostring = function(t)
  return ('CLIPTokenizer(%q, vocab_size=%d%s)'):format(t.dir, t.vocab_size,
    t._handle == nil and ', freed' or '')
end

local function handle(t, op)
  if getmetatable(t) ~= Tokenizer then raise(op .. ': expected a CLIPTokenizer (use tok:' .. op .. ')') end
  local h = t._handle
  if h == nil then raise(('%s: the tokenizer of %s was freed'):format(op, t.dir)) end
  return h
end

-- A growable int64 scratch buffer.
local scratch, scratch_cap = nil, 0
local function ensure(n)
  if n > scratch_cap then
    scratch_cap = math.max(n, 2 * scratch_cap, 256)
    scratch = ffi.new('int64_t[?]', scratch_cap)
  end
  return scratch
end

-- Encodes one text with the C encoder enc(h, text, len, max_length, out, n_inout)
-- into `buf` from `at` (growing it); returns buf, its capacity and the length.
-- Shared with the WordPiece tokenizer (wordpiece.lua).
local function encode_one(enc, h, op, text, max_length, buf, buf_cap, at)
  if type(text) ~= 'string' then raise(('%s: expected a string, got %s'):format(op, type(text))) end
  while true do
    n_box[0] = buf_cap - at
    check(enc(h, text, #text, max_length, buf + at, n_box))
    local n = n_box[0]
    if at + n <= buf_cap then return buf, buf_cap, n end
    local bigger = ffi.new('int64_t[?]', 2 * (at + n))
    ffi.copy(bigger, buf, at * 8)
    buf, buf_cap = bigger, 2 * (at + n)
  end
end
M.encode_one = encode_one

local function clip_encode(h, text, len, max_length, out, n)
  return C.dr_clip_tokenizer_encode(h, text, len, max_length, 0, out, n)
end

-- Ids of one text, bos ... eos, without truncation or padding (a Lua table).
function Tokenizer.ids(t, text)
  local h = handle(t, 'ids')
  local buf, cap, n = encode_one(clip_encode, h, 'ids', text, 0, ensure(256), scratch_cap, 0)
  local out = {}
  for i = 0, n - 1 do out[i + 1] = tonumber(buf[i]) end
  return out
end

local PADDING = { max_length = true, longest = true }

-- encode()'s arguments checked: texts (a list), max_length, padding, truncation.
-- Shared with the WordPiece tokenizer (wordpiece.lua).
function M.encode_options(texts, opts, default_max_length)
  if type(texts) == 'string' then texts = { texts }
  elseif type(texts) ~= 'table' then
    raise('encode: expected a string or a list of strings, got ' .. type(texts))
  end
  local max_length, padding, truncation = default_max_length, 'max_length', true
  if opts ~= nil then
    if type(opts) ~= 'table' then raise('encode: options must be a table, got ' .. type(opts)) end
    for k in pairs(opts) do
      if k ~= 'max_length' and k ~= 'padding' and k ~= 'truncation' then
        raise(("encode: unknown option '%s' (options: max_length, padding, truncation)"):format(tostring(k)))
      end
    end
    if opts.max_length ~= nil then max_length = opts.max_length end
    if opts.padding ~= nil then padding = opts.padding end
    if opts.truncation ~= nil then truncation = opts.truncation end
  end
  if type(max_length) ~= 'number' or max_length % 1 ~= 0 or max_length < 2 or max_length > 2 ^ 31 - 1 then
    raise('encode: max_length must be an integer >= 2, got ' .. tostring(max_length))
  end
  if padding ~= false and not PADDING[padding] then
    raise(("encode: padding must be 'max_length', 'longest' or false, got %s"):format(tostring(padding)))
  end
  if type(truncation) ~= 'boolean' then
    raise('encode: truncation must be a boolean, got ' .. tostring(truncation))
  end
  if #texts == 0 then raise('encode: the list of texts is empty') end
  return texts, max_length, padding, truncation
end

-- A batch encoded by enc (see encode_one) under encode()'s options: the ids of text
-- i are buf[starts[i] .. starts[i] + lens[i]), rows `width` wide once padded.
-- alloc(n) -> buf, capacity gives the first buffer. Shared with wordpiece.lua.
function M.encode_batch(enc, h, texts, opts, default_max_length, alloc)
  local max_length, padding, truncation
  texts, max_length, padding, truncation = M.encode_options(texts, opts, default_max_length)
  local b = #texts
  local starts, lens = {}, {}
  local buf, cap = alloc(b * max_length)
  local at, longest = 0, 0
  for i = 1, b do
    local n
    buf, cap, n = encode_one(enc, h, 'encode', texts[i], truncation and max_length or 0, buf, cap, at)
    if not truncation and padding == 'max_length' and n > max_length then
      raise(('encode: text %d has %d tokens, more than max_length %d (truncation is off)')
        :format(i, n, max_length))
    end
    starts[i], lens[i], at = at, n, at + n
    if n > longest then longest = n end
  end
  local width = padding == 'max_length' and max_length or longest
  if padding == false then
    for i = 2, b do
      if lens[i] ~= lens[1] then
        raise(('encode: without padding every text must give as many tokens: text 1 has %d, text %d has %d')
          :format(lens[1], i, lens[i]))
      end
    end
  end
  return buf, cap, starts, lens, width
end

local function scratch_alloc(n) return ensure(n), scratch_cap end

function Tokenizer.encode(t, texts, opts)
  local h = handle(t, 'encode')
  local buf, cap, starts, lens, width = M.encode_batch(clip_encode, h, texts, opts, t.model_max_length,
                                                      scratch_alloc)
  scratch, scratch_cap = buf, cap
  local b = #lens
  local pad = t.pad_id
  local out = F.empty(b, width, { dtype = 'int64' })
  local p = ffi.cast('int64_t *', C.dr_tensor_data(out.ptr))
  for i = 1, b do
    local row, n = p + (i - 1) * width, lens[i]
    ffi.copy(row, buf + starts[i], n * 8)
    if n < width then
      if pad < 0 then raise(('encode: text %d needs padding, but the tokenizer has no pad token'):format(i)) end
      for j = n, width - 1 do row[j] = pad end
    end
  end
  return out
end

-- The token string of an id (byte-level characters, '</w>' kept), or nil.
function Tokenizer.token(t, id)
  local h = handle(t, 'token')
  if type(id) ~= 'number' then raise('token: expected an integer id, got ' .. type(id)) end
  local s = C.dr_clip_tokenizer_token(h, id)
  if s == nil then return nil end
  return ffi.string(s)
end

-- Frees the tokenizer now (else the GC does).
function Tokenizer.free(t)
  local h = t._handle
  if h == nil then return end
  t._handle = nil
  ffi.gc(h, nil)
  C.dr_clip_tokenizer_free(h)
end

function M.CLIPTokenizer(dir)
  if type(dir) ~= 'string' then raise('CLIPTokenizer: expected a folder path, got ' .. type(dir)) end
  check(C.dr_clip_tokenizer_load(dir, tok_box))
  local h = ffi.gc(tok_box[0], C.dr_clip_tokenizer_free)
  tok_box[0] = nil
  return setmetatable({
    _handle = h, dir = dir,
    vocab_size = C.dr_clip_tokenizer_vocab_size(h),
    bos_id = C.dr_clip_tokenizer_bos_id(h),
    eos_id = C.dr_clip_tokenizer_eos_id(h),
    pad_id = C.dr_clip_tokenizer_pad_id(h),
    model_max_length = C.dr_clip_tokenizer_model_max_length(h),
  }, Tokenizer)
end

return M
