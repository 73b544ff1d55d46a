-- diffrl.core.clip_models: CLIP (core/models/clip_vision.c, kind "clip") and the LAION
-- improved aesthetic predictor (core/models/aesthetic.c, kind "aesthetic") from Lua
-- (issue 10).
--
--   local clip = dr.load_clip('clip-vit-large-patch14/')    -- transformers CLIPModel folder
--   local clip = dr.load_clip('laion-CLIP-ViT-H-14/')       -- open_clip hub folder (open_clip_config.json)
--   local clip = dr.load_clip('ViT-L-14.bin', { arch = 'ViT-L-14' })   -- an open_clip state dict
--   local px   = clip:clip_preprocess(images)               -- [B, 3, H, W] in [0, 1] -> [B, 3, S, S]
--   local fi   = clip:clip_image_features(px)               -- [B, projection_dim], not normalised
--   local ft   = clip:clip_text_features(ids)               -- ids int64 [B, L]
--   local mlp  = dr.load_aesthetic('sac+logos+ava1-l14-linearMSE.pth')
--   local s    = mlp:aesthetic_forward(fi)                  -- [B]
--
-- load_clip(path, opts): path is
--   - a transformers CLIPModel folder: config.json + model.safetensors (single or
--     sharded) or pytorch_model.bin (read by dr.torch_load);
--   - an open_clip folder: open_clip_model.safetensors or open_clip_pytorch_model.bin,
--     with open_clip_config.json ({"model_cfg": ...}, as open_clip's hub files) or
--     opts.model_config / opts.arch;
--   - an open_clip weights file (.safetensors, .bin, .pt, .pth: a state dict, or a
--     training checkpoint {state_dict = ...} with or without the "module." prefix).
-- opts.model_config: an open_clip model config (the path of a JSON file as
-- open_clip/model_configs/ViT-L-14.json or open_clip_config.json, or a Lua table);
-- opts.arch: one of the configs below (open_clip 3.3's model_configs), 'ViT-L-14' ..;
-- opts.quick_gelu: force QuickGELU (open_clip's "-quickgelu" names, and what
-- pretrained='openai' does; OpenAI's ViT-L/14, the aesthetic predictor's CLIP, needs it).
--
-- open_clip's keys map onto CLIPModel's in one place (openclip_source below):
-- visual.conv1 -> vision_model.embeddings.patch_embedding, attn.in_proj_{weight,bias}
-- -> the thirds q, k, v of self_attn.{q,k,v}_proj, visual.proj / text_projection
-- ([width, embed], used as x @ P) -> the transposed Linear weights, and so on. Errors
-- name the open_clip key and the file.
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local models = require 'diffrl.core.models'

local C, raise = api.C, api.raise
local Model = models.ModelClass
local read_file, file_exists = models._read_file, models._file_exists
local M = {}

local tensor_arg = require('diffrl.core.reward_models').tensor_arg

local function model_handle(m, op, kind)
  if getmetatable(m) ~= Model or m._h == nil then raise(op .. ': expected a live model') end
  if m.kind ~= kind then raise(('%s: needs a %s model, got %s'):format(op, kind, m.kind)) end
  return m._h
end

function Model.clip_preprocess(m, images)
  local op = 'clip_preprocess'
  return T.take(C.dr_clip_preprocess(model_handle(m, op, 'clip'), tensor_arg(images, op, 'images'), T.out_box))
end

function Model.clip_image_features(m, px)
  local op = 'clip_image_features'
  return T.take(C.dr_clip_image_features(model_handle(m, op, 'clip'), tensor_arg(px, op, 'pixel_values'),
    T.out_box))
end

function Model.clip_text_features(m, ids)
  local op = 'clip_text_features'
  return T.take(C.dr_clip_text_features(model_handle(m, op, 'clip'), tensor_arg(ids, op, 'input_ids'), T.out_box))
end

function Model.aesthetic_forward(m, features)
  local op = 'aesthetic_forward'
  return T.take(C.dr_aesthetic_forward(model_handle(m, op, 'aesthetic'),
    tensor_arg(features, op, 'image_features'), T.out_box))
end

-- ---- open_clip model configs ---------------------------------------------------------
-- open_clip 3.3.0's src/open_clip/model_configs/<name>.json for the common ViTs.
local function vit(embed, image, vlayers, vwidth, patch, twidth, theads, tlayers, extra)
  local v = { image_size = image, layers = vlayers, width = vwidth, patch_size = patch }
  for k, x in pairs(extra or {}) do v[k] = x end
  return { embed_dim = embed, vision_cfg = v,
           text_cfg = { context_length = 77, vocab_size = 49408, width = twidth, heads = theads, layers = tlayers } }
end
M.OPEN_CLIP_CONFIGS = {
  ['ViT-B-32'] = vit(512, 224, 12, 768, 32, 512, 8, 12),
  ['ViT-B-16'] = vit(512, 224, 12, 768, 16, 512, 8, 12),
  ['ViT-L-14'] = vit(768, 224, 24, 1024, 14, 768, 12, 12),
  ['ViT-L-14-336'] = vit(768, 336, 24, 1024, 14, 768, 12, 12),
  ['ViT-H-14'] = vit(1024, 224, 32, 1280, 14, 1024, 16, 24, { head_width = 80 }),
  ['ViT-bigG-14'] = vit(1280, 224, 48, 1664, 14, 1280, 20, 32, { head_width = 104, mlp_ratio = 4.9231 }),
}

-- keys of open_clip's CLIPVisionCfg / CLIPTextCfg this build follows, and the others
-- allowed only at their default (anything else changes the network: an error)
local NONE = {} -- a default of None (JSON null, or the key left out)
local VISION_KEYS = { layers = true, width = true, head_width = true, mlp_ratio = true, patch_size = true,
                      image_size = true, patch_dropout = true, output_tokens = true }
local VISION_DEFAULTS = { ls_init_value = NONE, attentional_pool = false, no_ln_pre = false,
                          pos_embed_type = 'learnable', final_ln_after_pool = false, pool_type = 'tok',
                          timm_model_name = NONE, block_type = NONE, qk_norm = false,
                          scaled_cosine_attn = false, scale_heads = false, scale_attn_inner = false,
                          scale_attn = false, scale_fc = false, act_kwargs = NONE, norm_kwargs = NONE }
local TEXT_KEYS = { context_length = true, vocab_size = true, width = true, heads = true, layers = true,
                    mlp_ratio = true, hf_tokenizer_name = true, tokenizer_mode = true, tokenizer_kwargs = true,
                    pad_id = true, eos_id = true, output_tokens = true }
local TEXT_DEFAULTS = { ls_init_value = NONE, embed_cls = false, no_causal_mask = false,
                        final_ln_after_pool = false, pool_type = 'argmax', proj_bias = false, proj_type = 'linear',
                        act_kwargs = NONE, norm_kwargs = NONE, block_type = NONE, qk_norm = false,
                        scaled_cosine_attn = false, scale_heads = false, scale_attn_inner = false,
                        scale_attn = false, scale_fc = false, hf_model_name = NONE }
local TOP_KEYS = { embed_dim = true, vision_cfg = true, text_cfg = true, quick_gelu = true, custom_text = true,
                   cast_dtype = true }

local function is_null(v) return v == nil or v == require('cjson').null end

local function check_keys(where, cfg, known, defaults, source)
  for k, v in pairs(cfg) do
    if not known[k] then
      local d = defaults and defaults[k]
      local ok = d ~= nil and (v == d or (d == NONE and is_null(v)))
      if not ok then
        raise(('load_clip: %s: open_clip config %s%s = %s is not supported (diffrl builds open_clip\'s '
          .. 'standard ViT CLIP)'):format(source, where, k, type(v) == 'table' and 'a table' or tostring(v)))
      end
    end
  end
end

local function number(source, where, key, v, default)
  if is_null(v) then return default end
  if type(v) ~= 'number' then
    raise(('load_clip: %s: open_clip config %s%s must be a number, got %s'):format(source, where, key, type(v)))
  end
  return v
end

-- transformers' CLIPConfig (a Lua table) for an open_clip model config.
function M.open_clip_to_clip_config(cfg, source, quick_gelu)
  source = source or 'model config'
  if type(cfg) ~= 'table' then raise(('load_clip: %s: the open_clip model config must be a table'):format(source)) end
  if cfg.model_cfg then cfg = cfg.model_cfg end -- open_clip_config.json (hub layout)
  check_keys('', cfg, TOP_KEYS, { init_logit_bias = NONE, init_logit_scale = NONE }, source)
  local v, t = cfg.vision_cfg, cfg.text_cfg
  if type(v) ~= 'table' or type(t) ~= 'table' then
    raise(('load_clip: %s: open_clip config needs vision_cfg and text_cfg objects'):format(source))
  end
  check_keys('vision_cfg.', v, VISION_KEYS, VISION_DEFAULTS, source)
  check_keys('text_cfg.', t, TEXT_KEYS, TEXT_DEFAULTS, source)
  local act = (quick_gelu or cfg.quick_gelu == true) and 'quick_gelu' or 'gelu'
  local image = v.image_size
  if type(image) == 'table' then
    if image[1] ~= image[2] then
      raise(('load_clip: %s: open_clip config vision_cfg.image_size [%s, %s] is not square'):format(source,
        tostring(image[1]), tostring(image[2])))
    end
    image = image[1]
  end
  local vw = number(source, 'vision_cfg.', 'width', v.width, 768)
  local head_width = number(source, 'vision_cfg.', 'head_width', v.head_width, 64)
  local tw = number(source, 'text_cfg.', 'width', t.width, 512)
  return {
    architectures = { 'CLIPModel' }, model_type = 'clip',
    projection_dim = number(source, '', 'embed_dim', cfg.embed_dim, 512),
    vision_config = {
      hidden_size = vw, num_hidden_layers = number(source, 'vision_cfg.', 'layers', v.layers, 12),
      num_attention_heads = math.floor(vw / head_width),
      intermediate_size = math.floor(vw * number(source, 'vision_cfg.', 'mlp_ratio', v.mlp_ratio, 4.0)),
      image_size = number(source, 'vision_cfg.', 'image_size', image, 224),
      patch_size = number(source, 'vision_cfg.', 'patch_size', v.patch_size, 16),
      hidden_act = act, layer_norm_eps = 1e-5,
    },
    text_config = {
      vocab_size = number(source, 'text_cfg.', 'vocab_size', t.vocab_size, 49408),
      max_position_embeddings = number(source, 'text_cfg.', 'context_length', t.context_length, 77),
      hidden_size = tw, num_hidden_layers = number(source, 'text_cfg.', 'layers', t.layers, 12),
      num_attention_heads = number(source, 'text_cfg.', 'heads', t.heads, 8),
      intermediate_size = math.floor(tw * number(source, 'text_cfg.', 'mlp_ratio', t.mlp_ratio, 4.0)),
      hidden_act = act, layer_norm_eps = 1e-5,
      -- open_clip pools the text at argmax(ids) (text_pool_type 'argmax': the end token
      -- has the largest id); clip_text.c pools so for transformers' legacy eos_token_id 2
      eos_token_id = 2,
    },
  }
end

-- ---- open_clip key mapping ------------------------------------------------------------
local LAYER_PARTS = {
  ['layer_norm1'] = 'ln_1', ['layer_norm2'] = 'ln_2', ['mlp.fc1'] = 'mlp.c_fc', ['mlp.fc2'] = 'mlp.c_proj',
  ['self_attn.out_proj'] = 'attn.out_proj',
}
local QKV = { q_proj = 1, k_proj = 2, v_proj = 3 }

-- The open_clip key of CLIPModel parameter `name` and how its tensor is made:
-- 'same', 'transpose' or the 1-based third (q, k, v) of a fused in_proj. tp: the
-- text tower's prefix ('' or 'text.' for open_clip's CustomTextCLIP).
local function openclip_source(name, tp)
  if name == 'logit_scale' then return 'logit_scale', 'same' end
  if name == 'text_projection.weight' then return tp .. 'text_projection', 'transpose' end
  if name == 'visual_projection.weight' then return 'visual.proj', 'transpose' end
  local simple = {
    ['text_model.embeddings.token_embedding.weight'] = tp .. 'token_embedding.weight',
    ['text_model.embeddings.position_embedding.weight'] = tp .. 'positional_embedding',
    ['vision_model.embeddings.class_embedding'] = 'visual.class_embedding',
    ['vision_model.embeddings.patch_embedding.weight'] = 'visual.conv1.weight',
    ['vision_model.embeddings.position_embedding.weight'] = 'visual.positional_embedding',
  }
  if simple[name] then return simple[name], 'same' end
  local norm, leaf = name:match('^(.-)%.(%a+)$')
  local norms = { ['text_model.final_layer_norm'] = tp .. 'ln_final', ['vision_model.pre_layrnorm'] = 'visual.ln_pre',
                  ['vision_model.post_layernorm'] = 'visual.ln_post' }
  if norms[norm] then return norms[norm] .. '.' .. leaf, 'same' end
  local tower, i, rest = name:match('^(%a+)_model%.encoder%.layers%.(%d+)%.(.+)$')
  if tower then
    local base = (tower == 'text' and tp or 'visual.') .. 'transformer.resblocks.' .. i .. '.'
    local proj, which = rest:match('^self_attn%.([qkv]_proj)%.(%a+)$')
    if proj then return base .. 'attn.in_proj_' .. which, QKV[proj] end
    local module, l = rest:match('^(.+)%.(%a+)$')
    if LAYER_PARTS[module] then return base .. LAYER_PARTS[module] .. '.' .. l, 'same' end
  end
  return nil
end

local function shape_str(s) return '[' .. table.concat(s, ', ') .. ']' end

local function list_str(list)
  local shown = {}
  for i = 1, math.min(#list, 8) do shown[i] = list[i] end
  local s = table.concat(shown, ', ')
  if #list > 8 then s = s .. (' and %d more'):format(#list - 8) end
  return s
end

-- CLIPModel-named tensors from an open_clip state dict, or an error naming every
-- missing, wrong-shape and unexpected open_clip key of `file`.
function M.map_open_clip(m, tensors, file)
  local tp = ''
  if tensors['text.token_embedding.weight'] and not tensors['token_embedding.weight'] then tp = 'text.' end
  local used, out, missing, wrong = {}, {}, {}, {}
  for _, p in ipairs(m:named_parameters()) do
    local name, param = p[1], p[2]
    local key, how = openclip_source(name, tp)
    local want = param.shape
    if key == nil then raise('load_clip: internal: no open_clip key for ' .. name) end
    local src = tensors[key]
    local expect = {}
    for d = 1, #want do expect[d] = want[d] end
    if how == 'transpose' then expect = { want[2], want[1] } end
    if type(how) == 'number' then expect[1] = 3 * want[1] end
    if src == nil then
      if not used[key] then missing[#missing + 1] = key end
      used[key] = true
    else
      used[key] = true
      local got = src.shape
      local same = #got == #expect
      for d = 1, #expect do same = same and got[d] == expect[d] end
      if not same then
        if how == 'same' or how == 'transpose' or how == 1 then
          wrong[#wrong + 1] = ('%s: file %s, model %s'):format(key, shape_str(got), shape_str(expect))
        end
      elseif how == 'transpose' then
        out[name] = src:t():contiguous()
      elseif type(how) == 'number' then
        out[name] = src:narrow(1, (how - 1) * want[1] + 1, want[1])
      else
        out[name] = src
      end
    end
  end
  local unexpected = {}
  for k in pairs(tensors) do
    if not used[k] and k ~= 'attn_mask' then unexpected[#unexpected + 1] = k end
  end
  table.sort(missing)
  table.sort(unexpected)
  if #missing + #wrong + #unexpected > 0 then
    local parts = {}
    if #missing > 0 then
      parts[#parts + 1] = (' %d missing key%s (%s);'):format(#missing, #missing == 1 and '' or 's', list_str(missing))
    end
    if #unexpected > 0 then
      parts[#parts + 1] = (' %d unexpected key%s (%s);'):format(#unexpected, #unexpected == 1 and '' or 's',
        list_str(unexpected))
    end
    if #wrong > 0 then
      parts[#parts + 1] = (' %d wrong shape%s (%s);'):format(#wrong, #wrong == 1 and '' or 's', list_str(wrong))
    end
    raise(('load_clip: open_clip checkpoint %s does not fit the model:%s'):format(file, table.concat(parts)))
  end
  return out
end

-- ---- loading ---------------------------------------------------------------------------
local function read_tensors(file)
  if file:match('%.safetensors$') then
    local tensors = require('diffrl.core.io').load(file)
    return tensors
  end
  local tensors = require('diffrl.core.torch_load').torch_load(file)
  -- DistributedDataParallel's training checkpoints: every key under module.
  local all = next(tensors) ~= nil
  for k in pairs(tensors) do all = all and k:sub(1, 7) == 'module.' end
  if all then
    local stripped = {}
    for k, v in pairs(tensors) do stripped[k:sub(8)] = v end
    tensors = stripped
  end
  return tensors
end

local function decode_json(path, op)
  local ok, v = pcall(require('cjson').decode, read_file(path, op))
  if not ok or type(v) ~= 'table' then raise(('%s: %s is not a JSON object'):format(op, path)) end
  return v
end

local function first_existing(dir, names)
  for _, n in ipairs(names) do
    if file_exists(dir .. '/' .. n) then return dir .. '/' .. n end
  end
end

local function is_weights_file(path)
  return path:match('%.safetensors$') or path:match('%.bin$') or path:match('%.pt$') or path:match('%.pth$')
end

local function load_transformers(dir)
  local cfg_path = dir .. '/config.json'
  local config = read_file(cfg_path, 'load_clip')
  local m = models.Model('clip', config, { init = false, context = cfg_path })
  local st = first_existing(dir, { 'model.safetensors', 'model.safetensors.index.json' })
  if st then
    m:load(models.weight_files(dir))
  else
    local bin = first_existing(dir, { 'pytorch_model.bin' })
    if not bin then
      raise(('load_clip: no weights in %s (expected model.safetensors or pytorch_model.bin beside '
        .. 'config.json)'):format(dir))
    end
    m:load_tensors(read_tensors(bin), { source = bin })
  end
  m.path = dir
  return m
end

local function open_clip_config(opts, dir)
  local cfg, source = opts.model_config, nil
  if type(cfg) == 'string' then
    if not file_exists(cfg) then raise(('load_clip: model_config %s not found'):format(cfg)) end
    source, cfg = cfg, decode_json(cfg, 'load_clip')
  elseif type(cfg) == 'table' then
    source = 'model_config'
  elseif cfg ~= nil then
    raise('load_clip: model_config must be a JSON file path or a table, got ' .. type(cfg))
  elseif opts.arch ~= nil then
    cfg = M.OPEN_CLIP_CONFIGS[opts.arch]
    if not cfg then
      local names = {}
      for k in pairs(M.OPEN_CLIP_CONFIGS) do names[#names + 1] = k end
      table.sort(names)
      raise(("load_clip: arch '%s' is not built in (%s); pass model_config = open_clip's "
        .. 'model_configs/<arch>.json'):format(tostring(opts.arch), table.concat(names, ', ')))
    end
    source = 'arch ' .. opts.arch
  elseif file_exists(dir .. '/open_clip_config.json') then
    source = dir .. '/open_clip_config.json'
    cfg = decode_json(source, 'load_clip')
  else
    raise(('load_clip: %s has no open_clip_config.json: pass arch = \'ViT-L-14\' (or another built-in '
      .. 'architecture) or model_config = the open_clip model config JSON'):format(dir))
  end
  return M.open_clip_to_clip_config(cfg, source, opts.quick_gelu), source
end

local function load_open_clip(file, dir, opts)
  local cfg, source = open_clip_config(opts, dir)
  local m = models.Model('clip', require('cjson').encode(cfg), { init = false, context = source })
  local tensors = read_tensors(file)
  m:load_tensors(M.map_open_clip(m, tensors, file), { source = file })
  m.path = file
  return m
end

function M.load_clip(path, opts)
  opts = opts or {}
  if type(path) ~= 'string' then raise('load_clip: path must be a folder or a weights file, got ' .. type(path)) end
  path = path:gsub('/+$', '')
  if is_weights_file(path) then
    if not file_exists(path) then raise('load_clip: ' .. path .. ' not found') end
    return load_open_clip(path, path:match('^(.*)/[^/]*$') or '.', opts)
  end
  local oc = first_existing(path, { 'open_clip_model.safetensors', 'open_clip_pytorch_model.bin' })
  if oc then return load_open_clip(oc, path, opts) end
  if file_exists(path .. '/config.json') then return load_transformers(path) end
  raise(('load_clip: %s is not a CLIP folder (expected config.json with model.safetensors or '
    .. 'pytorch_model.bin, or open_clip_model.safetensors / open_clip_pytorch_model.bin)'):format(path))
end

-- load_aesthetic(path): the predictor's state dict (.pth / .pt via dr.torch_load, or
-- .safetensors); sizes read from its layers.N.weight shapes.
function M.load_aesthetic(path)
  if type(path) ~= 'string' then raise('load_aesthetic: path must be a .pth or .safetensors file, got ' .. type(path)) end
  if not file_exists(path) then raise('load_aesthetic: ' .. path .. ' not found') end
  local tensors = read_tensors(path)
  local widths, input_size = {}, nil
  for i, idx in ipairs { 0, 2, 4, 6 } do
    local key = ('layers.%d.weight'):format(idx)
    local w = tensors[key]
    if w == nil then
      raise(('load_aesthetic: %s has no %s (expected the improved aesthetic predictor\'s MLP state dict: '
        .. 'layers.{0,2,4,6,7}.{weight,bias})'):format(path, key))
    end
    if w.ndim ~= 2 then
      raise(('load_aesthetic: %s: %s must be a matrix, got %s'):format(path, key, shape_str(w.shape)))
    end
    if i == 1 then input_size = w:size(2) end
    widths[i] = w:size(1)
  end
  local cfg = require('cjson').encode { input_size = input_size, mlp_widths = widths }
  local m = models.Model('aesthetic', cfg, { init = false, context = path })
  m:load_tensors(tensors, { source = path })
  m.path = path
  return m
end

return M
