-- ImageReward's throughput (images/s), diffrl next to the official image-reward 1.5
-- package on PyTorch CPU (bench/imagereward_bench_torch.py, run from here) on the
-- same shapes and threads: the full-size model (BLIP ViT-L/16 image encoder,
-- BERT-base cross-attending to the image tokens, the 768-1024-128-64-16-1 head;
-- 446,665,953 parameters, core/models/imagereward.c) scoring float images
-- [B, 3, 256, 256] in [0, 1] with prompts of 35 token ids (ImageReward's
-- max_length), the preprocessing (antialiased bicubic resize to 224, centre crop,
-- CLIP normalisation) included, without gradients. Both sides use random-init
-- weights (speed does not depend on the values) and fixed token ids, so no download
-- of weights or vocabulary is needed. Median of `repeats` batches after one warm-up;
-- GF/s from PyTorch's FlopCounterMode count of one batch, against the machine's
-- float32 peak (78.4 GF/s a core, bench/README.md).
--
--   build/diffrl run bench/imagereward_bench.lua [threads] [repeats] [batch]
local dr = require 'diffrl'
local cjson = require 'cjson'
local rm = require 'diffrl.core.reward_models'

local here = arg[0]:match('^(.*)/[^/]*$') or '.'
local H = dofile(here .. '/harness.lua')
local threads, repeats, batch = H.args(dr, 3, 4)

-- BLIP's med_config.json (bert-base, cross-attention to the 1024-wide ViT tokens), as
-- tools/fixtures/make_imagereward_fixtures.py's REAL_MED writes it into meta.json
local f = assert(io.open(here .. '/../spec/fixtures/imagereward/meta.json'))
local META = cjson.decode(f:read('*a'))
f:close()

local g = dr.Generator(0)
local images = dr.rand({ batch, 3, 256, 256 }, { generator = g })
local L = META.max_length -- 35
local ids = dr.zeros(batch, L, { dtype = 'int64' })
local mask = dr.zeros(batch, L, { dtype = 'int64' })
for b = 1, batch do -- [CLS], 10 word ids, [SEP], then padding (as the torch twin)
  for j = 1, 12 do
    ids[b][j] = j == 1 and 101 or (j == 12 and 102 or 2000 + 17 * b + j - 1)
    mask[b][j] = 1
  end
end

local t0 = H.now()
local model = dr.Model('imagereward', rm.imagereward_config(cjson.encode(META.real.med_config)), { seed = 0 })
local build_s = H.now() - t0
assert(model:num_parameters() == META.real.param_count, 'not the full-size ImageReward')

local secs
dr.no_grad(function()
  secs = H.timed(repeats, function()
    local px = model:imagereward_preprocess(images)
    local s = model:imagereward_forward(px, ids, mask)
    px:free()
    s:free()
  end)
end)
model:free()
collectgarbage()

local torch = H.run_torch(here .. '/imagereward_bench_torch.py', threads, repeats, tostring(batch))
local peak = 78.4 * threads
local function gfs(s)
  if not (torch.flops and s) then return '-' end
  local gf = torch.flops / s / 1e9
  return ('%.1f (%d%%)'):format(gf, math.floor(100 * gf / peak + 0.5))
end
print(('%d thread(s), batch %d, median of %d; diffrl model built in %.1f s; %.1f GFLOP a batch (torch count), '
  .. 'peak %.0f GF/s'):format(threads, batch, repeats, build_s, (torch.flops or 0) / 1e9, peak))
print(('| %-34s | %12s | %12s | %7s | %12s | %12s |'):format('reward', 'diffrl img/s', 'torch img/s', 'ratio',
  'diffrl GF/s', 'torch GF/s'))
print('|' .. ('-'):rep(36) .. '|' .. ('-'):rep(14) .. '|' .. ('-'):rep(14) .. '|' .. ('-'):rep(9) .. '|'
  .. ('-'):rep(14) .. '|' .. ('-'):rep(14) .. '|')
local t = torch.imagereward
print(('| %-34s | %12.3f | %12s | %7s | %12s | %12s |'):format('imagereward (ViT-L/16 + BERT-base)',
  batch / secs, t and ('%.3f'):format(batch / t) or '-', t and ('%.2f'):format(t / secs) or '-',
  gfs(secs), gfs(t)))
