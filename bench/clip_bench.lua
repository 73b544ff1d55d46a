-- The CLIP-based rewards' throughput (images/s), diffrl next to open_clip on PyTorch
-- CPU (bench/clip_bench_torch.py, run from here) on the same shapes and threads:
--   aesthetic    CLIP ViT-L/14 (QuickGELU, as OpenAI's) image features + the LAION
--                predictor's MLP (768-1024-128-64-16-1)
--   clip_score   CLIP ViT-B/32 image and text features (77 tokens) + cosine
-- from float images [B, 3, 256, 256] in [0, 1] (the preprocessing's resize to 224,
-- centre crop and normalisation included), without gradients. Both sides use
-- random-init weights (speed does not depend on the values) and token ids, so no
-- download is needed. Median of `repeats` batches.
--
--   build/diffrl run bench/clip_bench.lua [threads] [repeats] [batch]
local dr = require 'diffrl'
local cjson = require 'cjson'
local cm = require 'diffrl.core.clip_models'

local here = arg[0]:match('^(.*)/[^/]*$') or '.'
local H = dofile(here .. '/harness.lua')
local threads, repeats, batch = H.args(dr, 3, 4)

local function timed(f) return (H.timed(repeats, f)) end

local function clip(arch)
  local cfg = cm.open_clip_to_clip_config(cm.OPEN_CLIP_CONFIGS[arch], arch, true)
  return dr.Model('clip', cjson.encode(cfg), { seed = 0 })
end

local g = dr.Generator(0)
local images = dr.rand({ batch, 3, 256, 256 }, { generator = g })
local ids = dr.zeros(batch, 77, { dtype = 'int64' })
for b = 1, batch do
  for j = 1, 12 do ids[b][j] = j == 1 and 49406 or (j == 12 and 49407 or 300 + 17 * b + j) end
end

local results, order = {}, {}
dr.no_grad(function()
  local l14, mlp = clip('ViT-L-14'), dr.Model('aesthetic', '{}', { seed = 0 })
  results.aesthetic = timed(function()
    mlp:aesthetic_forward(l14:clip_image_features(l14:clip_preprocess(images))):free()
  end)
  order[#order + 1] = 'aesthetic'
  l14:free()
  local b32 = clip('ViT-B-32')
  results.clip_score = timed(function()
    local fi = b32:clip_image_features(b32:clip_preprocess(images))
    local ft = b32:clip_text_features(ids)
    local score = (fi * ft):sum(2) / ((fi * fi):sum(2) * (ft * ft):sum(2)):sqrt() * 100
    score:free()
  end)
  order[#order + 1] = 'clip_score'
end)

local torch = H.run_torch(here .. '/clip_bench_torch.py', threads, repeats, tostring(batch))
print(('%d thread(s), batch %d, median of %d'):format(threads, batch, repeats))
print(('| %-28s | %12s | %12s | %7s |'):format('reward', 'diffrl img/s', 'torch img/s', 'ratio'))
print('|' .. ('-'):rep(30) .. '|' .. ('-'):rep(14) .. '|' .. ('-'):rep(14) .. '|' .. ('-'):rep(9) .. '|')
local names = { aesthetic = 'aesthetic (ViT-L/14 + MLP)', clip_score = 'clip_score (ViT-B/32)' }
for _, name in ipairs(order) do
  local d, t = results[name], torch[name]
  print(('| %-28s | %12.2f | %12s | %7s |'):format(names[name], batch / d,
    t and ('%.2f'):format(batch / t) or '-', t and ('%.2f'):format(t / d) or '-'))
end
