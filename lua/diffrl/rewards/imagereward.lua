-- diffrl.rewards.imagereward: the ImageReward human-preference reward (PAPER.md
-- "Rewards"; image-reward 1.5's ImageReward.score, batched), on the C model of
-- core/models/imagereward.c.
--
--   local reward = dr.rewards.imagereward {
--     path = '/models/ImageReward',            -- ImageReward.pt (or a .safetensors) + med_config.json
--     tokenizer = '/models/bert-base-uncased/vocab.txt',
--   }
--   local scores = reward(images, prompts)     -- images [B, 3, H, W] in [0, 1]
--
-- Options:
--   path        a folder (ImageReward.safetensors, model.safetensors or ImageReward.pt, and
--               med_config.json) or a weights file (.safetensors / .pt)
--   med_config  med_config.json's path (default: beside the weights)
--   tokenizer   bert-base-uncased's vocab.txt (BLIP's tokenizer: BertTokenizer plus the
--               [DEC] and [ENC] tokens), a dr.BertTokenizer, or a function(prompts) ->
--               input_ids, attention_mask (int64 [B, L])
--   batch_size  images scored per forward (default 8)
--   max_length  prompt tokens, padded and truncated as ImageReward.score (default 35)
--   vision_config, mlp_widths   sizes of small test models (default: the official ones)
--   model       an already loaded model (dr.load_imagereward) instead of path
-- Scores are ImageReward's standardised scores; no gradient is recorded. Images are
-- resized on float data (torch's antialiased bicubic, see imagereward.c), not PIL's
-- uint8 path: scores differ from the package's on a PIL image by ~1e-4 to 1e-3.
local api = require 'diffrl.core.ffi'
local batched = require 'diffrl.rewards.batched'
local reward_models = require 'diffrl.core.reward_models'

local raise, check_options = api.raise, api.check_options
local M = {}

local OPTIONS = { path = true, med_config = true, tokenizer = true, batch_size = true, max_length = true,
                  vision_config = true, mlp_widths = true, model = true }

local positive_int = batched.positive_int

-- A function(prompts) -> input_ids, attention_mask from the tokenizer option.
local function make_tokenize(op, tok, max_length)
  if type(tok) == 'function' then return tok end
  if tok == nil then
    raise(op .. ': tokenizer is required: the path of bert-base-uncased\'s vocab.txt (ImageReward '
      .. 'tokenizes with BLIP\'s BertTokenizer), a dr.BertTokenizer or a function(prompts) -> ids, mask')
  end
  if type(tok) == 'string' then
    local wordpiece = require 'diffrl.core.wordpiece'
    tok = wordpiece.BertTokenizer(tok, { added = { '[DEC]', '[ENC]' } }) -- BLIP's init_tokenizer
  end
  if type(tok) ~= 'table' or type(tok.encode) ~= 'function' then
    raise(op .. ': tokenizer must be a vocab.txt path, a dr.BertTokenizer or a function, got ' .. type(tok))
  end
  return function(prompts)
    return tok:encode(prompts, { max_length = max_length, padding = 'max_length', truncation = true })
  end
end

function M.imagereward(opts)
  local op = 'imagereward'
  opts = check_options(op, opts, OPTIONS)
  local batch = positive_int(op, 'batch_size', opts.batch_size, 8)
  local max_length = positive_int(op, 'max_length', opts.max_length, 35)
  local tokenize = make_tokenize(op, opts.tokenizer, max_length)
  local model = opts.model
  if model == nil then
    if opts.path == nil then raise(op .. ': path (the ImageReward folder or weights file) is required') end
    model = reward_models.load_imagereward(opts.path, {
      med_config = opts.med_config, vision_config = opts.vision_config, mlp_widths = opts.mlp_widths })
  end
  return function(images, prompts)
    return batched.score(op, images, prompts, { batch = batch, need_prompts = true, tokenize = tokenize },
      function(x, ids, mask)
        local px = model:imagereward_preprocess(x)
        local s = model:imagereward_forward(px, ids, mask)
        px:free()
        return s
      end)
  end
end

return M
