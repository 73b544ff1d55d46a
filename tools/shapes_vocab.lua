-- Writes the shapes world's BPE vocabulary as a CLIPTokenizer folder (vocab.json,
-- merges.txt, special_tokens_map.json, tokenizer_config.json), learned from captions
-- of shapes.sample by diffrl.pretrain.learn_bpe. recipes/pretrain_shapes.lua does the
-- same at the start of a run (RUN/tokenizer); this is the stand-alone version.
--
--   diffrl run tools/shapes_vocab.lua OUT_DIR [corpus=2000] [max_merges=400] [max_length=32] [seed=0]
--
-- The corpus is the captions of scenes 2^40 .. 2^40 + corpus - 1 of stream `seed`
-- (the recipe's choice: a part of the stream training never reads).
local pretrain = require 'diffrl.pretrain'
local shapes = require 'diffrl.shapes'

local out = arg[1]
if not out or out:match('=') then
  io.stderr:write('usage: diffrl run tools/shapes_vocab.lua OUT_DIR [corpus=N] [max_merges=N] ' ..
                  '[max_length=N] [seed=N]\n')
  os.exit(2)
end
local opts = { corpus = 2000, max_merges = 400, max_length = 32, seed = 0 }
for i = 2, #arg do
  local k, v = arg[i]:match('^([%w_]+)=(%d+)$')
  if not k or opts[k] == nil then
    io.stderr:write(("shapes_vocab: unknown argument '%s'\n"):format(arg[i]))
    os.exit(2)
  end
  opts[k] = tonumber(v)
end

local _, captions = shapes.sample(opts.corpus, { seed = opts.seed, offset = 2 ^ 40, resolution = 32 })
local merges = pretrain.learn_bpe(captions, { max_merges = opts.max_merges })
local size = pretrain.write_tokenizer(out, merges, { max_length = opts.max_length })
local longest = 0
local tok = require('diffrl').CLIPTokenizer(out)
for _, c in ipairs(captions) do longest = math.max(longest, #tok:ids(c)) end
print(('shapes_vocab: %s: %d merges, %d tokens, model_max_length %d (longest caption: %d tokens)')
  :format(out, #merges, size, opts.max_length, longest))
