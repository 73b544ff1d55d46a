-- diffrl.rewards.clip: CLIP score and the LAION improved aesthetic predictor (PAPER.md
-- "Rewards"), batched and without gradients, on the C models of core/models/
-- clip_vision.c and aesthetic.c (bindings: diffrl.core.clip_models).
--
--   local clip_score = dr.rewards.clip_score { path = '/models/clip-vit-large-patch14' }
--   local aesthetic  = dr.rewards.aesthetic {
--     path = '/models/sac+logos+ava1-l14-linearMSE.pth',
--     clip = '/models/clip-vit-large-patch14',    -- or an open_clip ViT-L-14 (OpenAI) file / folder
--   }
--   local scores = clip_score(images, prompts)    -- images [B, 3, H, W] in [0, 1]
--
-- clip_score: scale * cos(image_features, text_features), per image, as torchmetrics'
-- CLIPScore (scale 100). clamp = true (default) clamps each score at 0 as
-- torchmetrics does (it clamps the batch mean; per image here, the reward being per
-- image); clamp = false keeps negative scores (a signal a policy can still climb).
-- Options:
--   path        a CLIP folder or open_clip weights file (dr.load_clip), or model = a loaded one
--   arch, model_config, quick_gelu   for open_clip checkpoints (see dr.load_clip)
--   tokenizer   a folder with CLIP's vocab.json + merges.txt (default: path, when it has
--               them), a dr.CLIPTokenizer, or a function(prompts) -> input_ids int64 [B, L]
--   max_length  prompt tokens, truncated keeping the end token (default: the text
--               tower's max_position_embeddings, 77 for every released CLIP)
--   batch_size  images per forward (default 8); clamp (true); scale (100)
--
-- aesthetic: the predictor's MLP on the L2-normalised CLIP image features of `clip`
-- (OpenAI's ViT-L/14 for the released weights: the transformers folder
-- openai/clip-vit-large-patch14, or open_clip's ViT-L-14 'openai' weights, for which
-- arch defaults to 'ViT-L-14' with quick_gelu = true). Options: path (the .pth / a
-- .safetensors conversion) or mlp = a loaded dr.load_aesthetic; clip (a path) or
-- clip_model (a loaded CLIP); arch, model_config, quick_gelu; batch_size (default 8).
--
-- Images are resized on float data (torch's antialiased bicubic, core/models/
-- clip_image.c), not PIL's uint8 path: scores differ from the packages' on a PIL image
-- by the rounding of the resized pixels (measured in spec/clip_reward_spec.lua).
local api = require 'diffrl.core.ffi'
local batched = require 'diffrl.rewards.batched'
local clip_models = require 'diffrl.core.clip_models'
local models = require 'diffrl.core.models'

local raise, check_options = api.raise, api.check_options
local M = {}

local positive_int = batched.positive_int

local function load_clip(op, path, model, opts)
  if model ~= nil then
    if not models.is_model(model) or model.kind ~= 'clip' then
      raise(('%s: the CLIP model must be a dr.load_clip model, got %s'):format(op,
        models.is_model(model) and (model.kind .. ' model') or type(model)))
    end
    return model
  end
  if type(path) ~= 'string' then
    raise(('%s: the CLIP model\'s path is required (a transformers CLIPModel folder or an open_clip '
      .. 'checkpoint)'):format(op))
  end
  return clip_models.load_clip(path, opts)
end

local function make_tokenize(op, tok, path, max_length)
  if type(tok) == 'function' then return tok end
  if tok == nil and type(path) == 'string' and models._file_exists(path .. '/vocab.json') then tok = path end
  if tok == nil then
    raise(op .. ': tokenizer is required: a folder with CLIP\'s vocab.json and merges.txt, a '
      .. 'dr.CLIPTokenizer or a function(prompts) -> input_ids')
  end
  if type(tok) == 'string' then tok = require('diffrl.core.tokenizer').CLIPTokenizer(tok) end
  if type(tok) ~= 'table' or type(tok.encode) ~= 'function' then
    raise(op .. ': tokenizer must be a folder path, a dr.CLIPTokenizer or a function, got ' .. type(tok))
  end
  return function(prompts)
    return tok:encode(prompts, { max_length = max_length, padding = 'max_length', truncation = true })
  end
end

local CLIP_SCORE_OPTIONS = { path = true, model = true, arch = true, model_config = true, quick_gelu = true,
                             tokenizer = true, max_length = true, batch_size = true, clamp = true, scale = true }

function M.clip_score(opts)
  local op = 'clip_score'
  opts = check_options(op, opts, CLIP_SCORE_OPTIONS)
  local batch = positive_int(op, 'batch_size', opts.batch_size, 8)
  local scale = opts.scale == nil and 100 or opts.scale
  if type(scale) ~= 'number' then raise(op .. ': scale must be a number, got ' .. type(scale)) end
  local clamp = opts.clamp ~= false
  local model = load_clip(op, opts.path, opts.model,
    { arch = opts.arch, model_config = opts.model_config, quick_gelu = opts.quick_gelu })
  local context = model:param('text_model.embeddings.position_embedding.weight'):size(1)
  local max_length = positive_int(op, 'max_length', opts.max_length, context)
  if max_length > context then
    raise(('%s: max_length %d is more than the text tower\'s %d positions'):format(op, max_length, context))
  end
  local tokenize = make_tokenize(op, opts.tokenizer, opts.path, max_length)
  return function(images, prompts)
    return batched.score(op, images, prompts, { batch = batch, need_prompts = true, tokenize = tokenize },
      function(x, ids)
        local px = model:clip_preprocess(x)
        local fi, ft = model:clip_image_features(px), model:clip_text_features(ids)
        px:free()
        local cos = ((fi * ft):sum(2) / ((fi * fi):sum(2) * (ft * ft):sum(2)):sqrt()):tolist()
        for i, c in ipairs(cos) do cos[i] = clamp and math.max(scale * c, 0) or scale * c end
        return cos
      end)
  end
end

local AESTHETIC_OPTIONS = { path = true, mlp = true, clip = true, clip_model = true, arch = true,
                            model_config = true, quick_gelu = true, batch_size = true }

function M.aesthetic(opts)
  local op = 'aesthetic'
  opts = check_options(op, opts, AESTHETIC_OPTIONS)
  local batch = positive_int(op, 'batch_size', opts.batch_size, 8)
  local mlp = opts.mlp
  if mlp == nil then
    if opts.path == nil then raise(op .. ': path (the aesthetic predictor\'s .pth or .safetensors) is required') end
    mlp = clip_models.load_aesthetic(opts.path)
  elseif not models.is_model(mlp) or mlp.kind ~= 'aesthetic' then
    raise(op .. ': mlp must be a dr.load_aesthetic model')
  end
  -- open_clip files without a config: OpenAI's ViT-L/14 (QuickGELU), the predictor's CLIP
  local clip_opts = { arch = opts.arch, model_config = opts.model_config, quick_gelu = opts.quick_gelu }
  if clip_opts.arch == nil and clip_opts.model_config == nil then
    clip_opts.arch = 'ViT-L-14'
    if clip_opts.quick_gelu == nil then clip_opts.quick_gelu = true end
  end
  if type(opts.clip) == 'string' and models._file_exists(opts.clip .. '/open_clip_config.json') then
    clip_opts.arch, clip_opts.quick_gelu = opts.arch, opts.quick_gelu -- the folder says what it is
  end
  local clip = load_clip(op, opts.clip, opts.clip_model, clip_opts)
  local dim = clip:param('visual_projection.weight'):size(1)
  local want = mlp:param('layers.0.weight'):size(2)
  if dim ~= want then
    raise(('%s: the predictor %s takes %d-d CLIP image features (layers.0.weight [%d, %d]), but the CLIP '
      .. 'model %s gives %d-d ones (projection_dim): the released predictor needs CLIP ViT-L/14')
      :format(op, tostring(mlp.path), want, mlp:param('layers.0.weight'):size(1), want, tostring(clip.path), dim))
  end
  return function(images)
    return batched.score(op, images, nil, { batch = batch }, function(x)
      local px = clip:clip_preprocess(x)
      local s = mlp:aesthetic_forward(clip:clip_image_features(px))
      px:free()
      return s
    end)
  end
end

return M
