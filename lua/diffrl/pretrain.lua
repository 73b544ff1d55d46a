-- diffrl.pretrain: a small text-to-image model trained from scratch with diffrl's
-- own code, written out as a diffusers StableDiffusionPipeline folder. The pieces
-- recipes/pretrain_shapes.lua is made of (settings: configs/pretrain_shapes.lua):
--
--   local merges = pretrain.learn_bpe(captions, { max_merges = 400 })   -- CLIP-style BPE
--   pretrain.write_tokenizer(dir, merges, { max_length = 32 })          -- a CLIPTokenizer folder
--   local parts = pretrain.build(cfg, tokenizer_dir)   -- random init from cfg (the schema below)
--   local parts = pretrain.load(folder)                -- or a saved pipeline folder
--   local loss, st = pretrain.vae_loss(parts, images, gen, { kl_weight = 1e-4 })
--   local loss = pretrain.diffusion_loss(parts, images, captions, gen, { caption_dropout = 0.1 })
--   pretrain.calibrate_scaling(parts, images)          -- scaling_factor = 1 / std(latents)
--   local pipe = pretrain.pipeline(parts)              -- a diffrl.pipeline object (pipe:sample)
--   pretrain.save(dir, parts)                          -- model_index.json, unet/, vae/, ...
--
-- parts = { unet, vae, text_encoder (dr models), tokenizer, tokenizer_dir, scheduler
-- (a diffrl.sampler schedule), configs = { unet, vae, text_encoder, scheduler } (tables
-- written as the config.json files), scaling_factor }.
--
-- The folder follows diffusers 0.42.1 / transformers 5.24.0 (what
-- tools/check_shapes_model.py loads with StableDiffusionPipeline): parameter names are
-- the checkpoint keys (text_encoder keys keep their "text_model." prefix, as
-- transformers' save_pretrained writes them).
local cjson = require 'cjson.safe'
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'
local schedule = require 'diffrl.sampler.schedule'
local rl = require 'diffrl.rl.core'

local raise = api.raise
local M = {}

-- JSON null for the config tables (cjson's sentinel).
M.null = cjson.null

-- ---- JSON as diffusers writes it: sorted keys, two-space indent --------------------------

-- Keys whose values are floats in Python: written with a ".0" when whole, because
-- transformers 5 checks config types strictly (initializer_factor = 1 fails).
local FLOAT_KEYS = {}
for k in ([[attention_dropout beta_end beta_start clip_sample_range dropout
            dynamic_thresholding_ratio initializer_factor initializer_range layer_norm_eps
            norm_eps resnet_out_scale_factor sample_max_value scaling_factor]]):gmatch('%S+') do
  FLOAT_KEYS[k] = true
end

local function json_number(x, float)
  if x % 1 == 0 and math.abs(x) < 2 ^ 53 then return ('%d'):format(x) .. (float and '.0' or '') end
  for digits = 15, 17 do -- the shortest text that reads back as x
    local s = ('%.' .. digits .. 'g'):format(x)
    if tonumber(s) == x then return s end
  end
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\t'] = '\\t', ['\r'] = '\\r' }
    return named[c] or ('\\u%04x'):format(c:byte())
  end) .. '"'
end

local function is_array(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t and (n > 0 or getmetatable(t) == cjson.array_mt)
end

local function json_encode(v, indent, key)
  indent = indent or ''
  local tv = type(v)
  if v == M.null then return 'null' end
  if tv == 'boolean' then return tostring(v) end
  if tv == 'number' then return json_number(v, FLOAT_KEYS[key]) end
  if tv == 'string' then return json_string(v) end
  if tv ~= 'table' then raise('pretrain: cannot write a ' .. tv .. ' as JSON') end
  local inner, items = indent .. '  ', {}
  if is_array(v) then
    for i = 1, #v do items[i] = inner .. json_encode(v[i], inner) end
    return '[\n' .. table.concat(items, ',\n') .. '\n' .. indent .. ']'
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  if #keys == 0 then return '{}' end
  for i, k in ipairs(keys) do items[i] = inner .. json_string(k) .. ': ' .. json_encode(v[k], inner, k) end
  return '{\n' .. table.concat(items, ',\n') .. '\n' .. indent .. '}'
end
M.json_encode = json_encode

local function write_file(path, text)
  local f, err = io.open(path, 'wb')
  if not f then raise(('pretrain: cannot write %s: %s'):format(path, tostring(err))) end
  f:write(text)
  f:close()
end

local read_file = require('diffrl.rundir')._fs.read_file -- the text of a file, or nil

local function mkdir_p(path)
  local ok = os.execute("mkdir -p '" .. path:gsub("'", "'\\''") .. "'")
  if ok ~= 0 and ok ~= true then raise('pretrain: cannot create the folder ' .. path) end
end

-- ---- the vocabulary: CLIP's byte-level BPE, learned from captions ------------------------

-- CLIP / GPT-2 bytes_to_unicode: printable bytes stand for themselves, the others
-- for U+0100 onwards (UTF-8 strings), so every token is printable text.
local function bytes_to_unicode()
  local keep = {}
  for b = 33, 126 do keep[b] = true end
  for b = 161, 172 do keep[b] = true end
  for b = 174, 255 do keep[b] = true end
  local order, chars, n = {}, {}, 0
  local function utf8(cp)
    if cp < 128 then return string.char(cp) end
    return string.char(192 + math.floor(cp / 64), 128 + cp % 64) -- cp < 2048 here
  end
  for b = 0, 255 do if keep[b] then order[#order + 1] = b; chars[b] = utf8(b) end end
  for b = 0, 255 do
    if not keep[b] then
      order[#order + 1] = b
      chars[b] = utf8(256 + n)
      n = n + 1
    end
  end
  return order, chars
end

-- CLIP's pre-tokenizer on lowercased ASCII text: letter runs, single digits, runs of
-- other non-space characters (its regex's \p{L}+ | \p{N} | [^\s\p{L}\p{N}]+).
local function words_of(text)
  local out = {}
  text = text:lower()
  local i = 1
  while i <= #text do
    local s, e = text:find('^%a+', i)
    if not s then s, e = text:find('^%d', i) end
    if not s then s, e = text:find('^[^%s%w]+', i) end
    if s then
      out[#out + 1] = text:sub(s, e)
      i = e + 1
    else
      i = i + 1 -- whitespace
    end
  end
  return out
end

-- pretrain.learn_bpe(captions, { max_merges = 400 }) -> a list of merges "a b".
-- Sennrich et al.'s learner on CLIP's symbols: a word is its bytes (as
-- bytes_to_unicode characters) with "</w>" on the last; each round merges the most
-- frequent adjacent pair (ties: the smaller "a b" text), until every word is one
-- symbol or max_merges are made. Deterministic in the captions alone.
function M.learn_bpe(captions, opts)
  opts = opts or {}
  local max_merges = opts.max_merges or 400
  if type(captions) ~= 'table' or #captions == 0 then raise('learn_bpe: expected a non-empty list of captions') end
  local _, chars = bytes_to_unicode()
  local counts, words = {}, {}
  for _, c in ipairs(captions) do
    for _, w in ipairs(words_of(c)) do
      if not counts[w] then counts[w] = 0; words[#words + 1] = w end
      counts[w] = counts[w] + 1
    end
  end
  table.sort(words)
  local symbols = {}
  for i, w in ipairs(words) do
    local s = {}
    for j = 1, #w do s[j] = chars[w:byte(j)] end
    s[#s] = s[#s] .. '</w>'
    symbols[i] = s
  end
  local merges = {}
  while #merges < max_merges do
    local pairs_count, best, best_n = {}, nil, 0
    for i, s in ipairs(symbols) do
      for j = 1, #s - 1 do
        local p = s[j] .. ' ' .. s[j + 1]
        pairs_count[p] = (pairs_count[p] or 0) + counts[words[i]]
      end
    end
    for p, n in pairs(pairs_count) do
      if n > best_n or (n == best_n and p < best) then best, best_n = p, n end
    end
    if not best then break end
    merges[#merges + 1] = best
    local a, b = best:match('^(%S+) (%S+)$')
    for i, s in ipairs(symbols) do
      local out, j = {}, 1
      while j <= #s do
        if j < #s and s[j] == a and s[j + 1] == b then
          out[#out + 1] = a .. b
          j = j + 2
        else
          out[#out + 1] = s[j]
          j = j + 1
        end
      end
      symbols[i] = out
    end
  end
  return merges
end

-- pretrain.write_tokenizer(dir, merges, { max_length = 32 }): vocab.json, merges.txt,
-- special_tokens_map.json, tokenizer_config.json with the ids laid out as CLIP's
-- (tools/fixtures/make_clip_vocab.py): 256 byte symbols, the same with "</w>", one
-- token per merge, <|startoftext|>, <|endoftext|> (also the pad token, as SD 1.x).
-- Returns the vocabulary size.
function M.write_tokenizer(dir, merges, opts)
  opts = opts or {}
  local max_length = opts.max_length or 32
  local order, chars = bytes_to_unicode()
  local vocab, seen = {}, {}
  local function add(tok)
    if not seen[tok] then seen[tok] = true; vocab[#vocab + 1] = tok end
  end
  for _, b in ipairs(order) do add(chars[b]) end
  for _, b in ipairs(order) do add(chars[b] .. '</w>') end
  for _, m in ipairs(merges) do add((m:gsub(' ', ''))) end
  add('<|startoftext|>')
  add('<|endoftext|>')
  mkdir_p(dir)
  local items = {}
  for i, tok in ipairs(vocab) do items[i] = json_string(tok) .. ': ' .. (i - 1) end
  write_file(dir .. '/vocab.json', '{' .. table.concat(items, ', ') .. '}')
  write_file(dir .. '/merges.txt', '#version: 0.2\n' .. table.concat(merges, '\n') .. (#merges > 0 and '\n' or ''))
  local special = { bos_token = '<|startoftext|>', eos_token = '<|endoftext|>',
                    unk_token = '<|endoftext|>', pad_token = '<|endoftext|>' }
  write_file(dir .. '/special_tokens_map.json', json_encode(special) .. '\n')
  local config = { model_max_length = max_length, do_lower_case = true, tokenizer_class = 'CLIPTokenizer' }
  for k, v in pairs(special) do config[k] = v end
  write_file(dir .. '/tokenizer_config.json', json_encode(config) .. '\n')
  return #vocab
end

-- ---- the configs of the four parts ------------------------------------------------------

-- diffusers 0.42.1 UNet2DConditionModel defaults, with c's sizes.
function M.unet_config(c, cross_attention_dim, sample_size, channels)
  return {
    _class_name = 'UNet2DConditionModel', _diffusers_version = '0.42.1',
    act_fn = 'silu', addition_embed_type = M.null, addition_embed_type_num_heads = 64,
    addition_time_embed_dim = M.null, attention_head_dim = c.attention_head_dim,
    attention_type = 'default', block_out_channels = c.block_out_channels,
    center_input_sample = false, class_embed_type = M.null, class_embeddings_concat = false,
    conv_in_kernel = 3, conv_out_kernel = 3, cross_attention_dim = cross_attention_dim,
    cross_attention_norm = M.null, down_block_types = c.down_block_types, downsample_padding = 1,
    dropout = 0.0, dual_cross_attention = false, encoder_hid_dim = M.null,
    encoder_hid_dim_type = M.null, flip_sin_to_cos = true, freq_shift = 0,
    in_channels = channels, layers_per_block = c.layers_per_block,
    mid_block_only_cross_attention = M.null, mid_block_scale_factor = 1,
    mid_block_type = 'UNetMidBlock2DCrossAttn', norm_eps = 1e-05,
    norm_num_groups = c.norm_num_groups, num_attention_heads = M.null, num_class_embeds = M.null,
    only_cross_attention = false, out_channels = channels,
    projection_class_embeddings_input_dim = M.null, resnet_out_scale_factor = 1.0,
    resnet_skip_time_act = false, resnet_time_scale_shift = 'default',
    reverse_transformer_layers_per_block = M.null, sample_size = sample_size,
    time_cond_proj_dim = M.null, time_embedding_act_fn = M.null, time_embedding_dim = M.null,
    time_embedding_type = 'positional', timestep_post_act = M.null,
    transformer_layers_per_block = 1, up_block_types = c.up_block_types,
    upcast_attention = false, use_linear_projection = false,
  }
end

-- AutoencoderKL: one DownEncoderBlock2D / UpDecoderBlock2D per entry of
-- block_out_channels (each but the last halves the resolution).
function M.vae_config(c, resolution, scaling_factor)
  local down, up = {}, {}
  for i = 1, #c.block_out_channels do down[i], up[i] = 'DownEncoderBlock2D', 'UpDecoderBlock2D' end
  return {
    _class_name = 'AutoencoderKL', _diffusers_version = '0.42.1', act_fn = 'silu',
    block_out_channels = c.block_out_channels, down_block_types = down, force_upcast = true,
    in_channels = 3, latent_channels = c.latent_channels, latents_mean = M.null,
    latents_std = M.null, layers_per_block = c.layers_per_block,
    mid_block_add_attention = c.mid_block_attention, norm_num_groups = c.norm_num_groups,
    out_channels = 3, sample_size = resolution, scaling_factor = scaling_factor or 1.0,
    shift_factor = M.null, up_block_types = up, use_post_quant_conv = true, use_quant_conv = true,
  }
end

-- transformers 5.24.0 CLIPTextConfig for a tokenizer's vocabulary.
function M.text_encoder_config(c, tok)
  return {
    architectures = { 'CLIPTextModel' }, attention_dropout = 0.0, bos_token_id = tok.bos_id,
    dtype = 'float32', eos_token_id = tok.eos_id, hidden_act = 'quick_gelu',
    hidden_size = c.hidden_size, initializer_factor = 1.0, initializer_range = 0.02,
    intermediate_size = c.intermediate_size, layer_norm_eps = 1e-05,
    max_position_embeddings = tok.model_max_length, model_type = 'clip_text_model',
    num_attention_heads = c.heads, num_hidden_layers = c.layers, pad_token_id = tok.pad_id,
    projection_dim = c.hidden_size, transformers_version = '5.24.0', vocab_size = tok.vocab_size,
  }
end

-- DDIM with Stable Diffusion's betas (scaled_linear 0.00085 .. 0.012, 1000 steps, epsilon).
function M.scheduler_config()
  return {
    _class_name = 'DDIMScheduler', _diffusers_version = '0.42.1', beta_end = 0.012,
    beta_schedule = 'scaled_linear', beta_start = 0.00085, clip_sample = false,
    clip_sample_range = 1.0, dynamic_thresholding_ratio = 0.995, num_train_timesteps = 1000,
    prediction_type = 'epsilon', rescale_betas_zero_snr = false, sample_max_value = 1.0,
    set_alpha_to_one = false, steps_offset = 1, thresholding = false,
    timestep_spacing = 'leading', trained_betas = M.null,
  }
end

function M.model_index()
  return {
    _class_name = 'StableDiffusionPipeline', _diffusers_version = '0.42.1',
    feature_extractor = { M.null, M.null }, image_encoder = { M.null, M.null },
    requires_safety_checker = false, safety_checker = { M.null, M.null },
    scheduler = { 'diffusers', 'DDIMScheduler' }, text_encoder = { 'transformers', 'CLIPTextModel' },
    tokenizer = { 'transformers', 'CLIPTokenizer' }, unet = { 'diffusers', 'UNet2DConditionModel' },
    vae = { 'diffusers', 'AutoencoderKL' },
  }
end

-- ---- building, loading, saving -----------------------------------------------------------

local function finish(parts)
  local sched = {}
  for k, v in pairs(parts.configs.scheduler) do
    if v ~= M.null then sched[k] = v end -- JSON null: the default
  end
  parts.scheduler = schedule.from_config(sched)
  parts.vae_scale = 2 ^ (#parts.configs.vae.block_out_channels - 1)
  parts.latent_channels = parts.configs.vae.latent_channels
  parts.device = parts.device or 'cpu' -- M.to_device moves them
  return parts
end

-- Random init from settings (cfg.text_encoder, cfg.unet, cfg.vae, cfg.data.resolution,
-- cfg.run.seed) and a tokenizer folder.
function M.build(cfg, tokenizer_dir)
  local tok = core.CLIPTokenizer(tokenizer_dir)
  local res = cfg.data.resolution
  local vae_scale = 2 ^ (#cfg.vae.block_out_channels - 1)
  if res % (vae_scale * 2 ^ (#cfg.unet.block_out_channels - 1)) ~= 0 then
    raise(('pretrain.build: resolution %d is not divisible by the VAE and UNet downsampling (%d x %d)')
      :format(res, vae_scale, 2 ^ (#cfg.unet.block_out_channels - 1)))
  end
  local configs = {
    text_encoder = M.text_encoder_config(cfg.text_encoder, tok),
    unet = M.unet_config(cfg.unet, cfg.text_encoder.hidden_size, res / vae_scale, cfg.vae.latent_channels),
    vae = M.vae_config(cfg.vae, res, 1.0),
    scheduler = M.scheduler_config(),
  }
  local seed = cfg.run.seed
  local parts = {
    tokenizer = tok, tokenizer_dir = tokenizer_dir, configs = configs, scaling_factor = 1.0,
    text_encoder = core.Model('clip_text', json_encode(configs.text_encoder), { seed = seed + 1 }),
    unet = core.Model('unet', json_encode(configs.unet), { seed = seed + 2 }),
    vae = core.Model('vae', json_encode(configs.vae), { seed = seed + 3 }),
  }
  return finish(parts)
end

local function read_json(path)
  local v = cjson.decode(read_file(path) or '')
  if type(v) ~= 'table' then raise('pretrain.load: cannot read the JSON file ' .. path) end
  return v
end

-- A saved folder (pretrain.save's, or any SD folder of these classes) as parts.
function M.load(dir)
  dir = dir:gsub('/+$', '')
  local parts = {
    tokenizer = core.CLIPTokenizer(dir .. '/tokenizer'), tokenizer_dir = dir .. '/tokenizer',
    text_encoder = core.load_model(dir .. '/text_encoder'), unet = core.load_model(dir .. '/unet'),
    vae = core.load_model(dir .. '/vae'),
    configs = {
      text_encoder = read_json(dir .. '/text_encoder/config.json'),
      unet = read_json(dir .. '/unet/config.json'), vae = read_json(dir .. '/vae/config.json'),
      scheduler = read_json(dir .. '/scheduler/scheduler_config.json'),
    },
  }
  parts.scaling_factor = parts.configs.vae.scaling_factor or 0.18215
  return finish(parts)
end

local function copy_tree(from, to)
  local ok = os.execute(("cp -r '%s/.' '%s/'"):format(from:gsub("'", "'\\''"), to:gsub("'", "'\\''")))
  if ok ~= 0 and ok ~= true then raise(('pretrain.save: cannot copy %s to %s'):format(from, to)) end
end

-- Writes the diffusers folder (weights float32, keys = parameter names).
function M.save(dir, parts)
  dir = dir:gsub('/+$', '')
  for _, sub in ipairs { 'unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler' } do mkdir_p(dir .. '/' .. sub) end
  parts.configs.vae.scaling_factor = parts.scaling_factor
  write_file(dir .. '/model_index.json', json_encode(M.model_index()) .. '\n')
  write_file(dir .. '/scheduler/scheduler_config.json', json_encode(parts.configs.scheduler) .. '\n')
  local function weights(m)
    local out = {}
    core.no_grad(function()
      for _, p in ipairs(m:named_parameters()) do out[p[1]] = p[2]:detach():contiguous() end
    end)
    return out
  end
  for _, part in ipairs { { 'unet', 'diffusion_pytorch_model' }, { 'vae', 'diffusion_pytorch_model' },
                          { 'text_encoder', 'model' } } do
    local name, file = part[1], part[2]
    write_file(('%s/%s/config.json'):format(dir, name), json_encode(parts.configs[name]) .. '\n')
    core.save(('%s/%s/%s.safetensors'):format(dir, name, file), weights(parts[name]),
              { metadata = { format = 'pt' } })
  end
  if parts.tokenizer_dir ~= dir .. '/tokenizer' then copy_tree(parts.tokenizer_dir, dir .. '/tokenizer') end
  return dir
end

-- A diffrl.pipeline object over the parts (the fields pipeline.load sets), for
-- sampling during training without writing the folder.
function M.pipeline(parts)
  local pipeline = require 'diffrl.pipeline'
  local levels = #parts.configs.unet.block_out_channels
  return setmetatable({
    dir = '(training)', index = M.model_index(), clip_skip = 0,
    tokenizer = parts.tokenizer, text_encoder = parts.text_encoder, unet = parts.unet,
    vae = parts.vae, scheduler = parts.scheduler, scheduler_class = 'DDIMScheduler',
    scaling_factor = parts.scaling_factor, vae_scale = parts.vae_scale, device = parts.device,
    sample_size = parts.configs.unet.sample_size * parts.vae_scale,
    latent_channels = parts.latent_channels, unet_levels = levels,
  }, pipeline.Pipeline)
end

-- Moves the three models to `device` ('cpu', 'cuda', 'cuda:N') in place and records it in
-- parts.device: the losses and pipeline(parts) then move their inputs there. Move before
-- building the optimizers.
function M.to_device(parts, device)
  for _, k in ipairs { 'unet', 'vae', 'text_encoder' } do parts[k]:to(device) end
  parts.device = device
  return parts
end

-- ---- losses -----------------------------------------------------------------------------------

-- The VAE's training loss on images in [0, 1] (the reparameterised posterior sample,
-- Kingma & Welling 2014):
--   mse(decode(mean + exp(logvar / 2) * n), x) + kl_weight * mean(mean^2 + exp(logvar) - 1 - logvar) / 2
-- with x in [-1, 1]; the KL is per latent element (a small weight keeps the latents
-- bounded, the scale is fixed afterwards by calibrate_scaling).
function M.vae_loss(parts, images, gen, opts)
  local kl_weight = opts and opts.kl_weight or 1e-4
  local x = images:to(parts.device) * 2 - 1
  local mean, logvar = parts.vae:encode(x)
  logvar = logvar:clamp(-30, 20) -- diffusers' DiagonalGaussianDistribution
  local std = (logvar * 0.5):exp()
  local z = mean + std * core.randn(mean.shape, { generator = gen, device = mean.device })
  local d = parts.vae:decode(z) - x
  local mse = (d * d):mean()
  local kl = (mean * mean + logvar:exp() - logvar - 1):mean() * 0.5
  return mse + kl * kl_weight, { mse = mse:detach():item(), kl = kl:detach():item() }
end

-- Sets parts.scaling_factor to 1 / std of the posterior means of images (as Stable
-- Diffusion's 0.18215 was chosen: unit-variance latents for the diffusion).
function M.calibrate_scaling(parts, images)
  local std = core.no_grad(function()
    local mean = parts.vae:encode(images:to(parts.device) * 2 - 1)
    local m = mean:mean():item()
    local c = mean - m
    return math.sqrt((c * c):mean():item())
  end)
  parts.scaling_factor = 1 / std
  parts.configs.vae.scaling_factor = parts.scaling_factor
  return parts.scaling_factor
end

-- The VAE round trip of images in [0, 1]: the posterior mean decoded, clamped to
-- [0, 1], on the cpu (the reconstruction grid; tools/shapes_vae_roundtrip.lua).
function M.reconstruct(parts, images)
  return core.no_grad(function()
    local mean = parts.vae:encode(images:to(parts.device) * 2 - 1)
    return (parts.vae:decode(mean) * 0.5 + 0.5):clamp(0, 1):cpu()
  end)
end

-- Text embeddings [B, L, D] of captions, with the gradient into the text encoder.
function M.encode_text(parts, captions)
  local ids = parts.tokenizer:encode(captions):to(parts.device)
  return (parts.text_encoder:forward(ids))
end

-- The diffusion loss (rl.pretrain_loss, epsilon target) of one batch: latents of the
-- frozen VAE's posterior mean times scaling_factor, noise and timesteps from gen,
-- each caption replaced by '' with probability caption_dropout (what classifier-free
-- guidance needs at sampling, Ho & Salimans 2022). The UNet and text encoder get
-- gradients where they require them.
function M.diffusion_loss(parts, images, captions, gen, opts)
  opts = opts or {}
  local n = images:size(1)
  local latents = core.no_grad(function()
    local mean = parts.vae:encode(images:to(parts.device) * 2 - 1)
    return mean * parts.scaling_factor
  end)
  local drop = opts.caption_dropout or 0
  if drop > 0 then
    local u = core.rand({ n }, { generator = gen }):tolist()
    local kept = {}
    for i = 1, n do kept[i] = u[i] < drop and '' or captions[i] end
    captions = kept
  end
  local cond = M.encode_text(parts, captions)
  local noise = core.randn(latents.shape, { generator = gen, device = latents.device })
  local ts = core.randint(0, parts.scheduler.num_train_timesteps, { n }, { generator = gen })
  local noisy = rl.add_noise(latents, noise, ts, parts.scheduler)
  local pred = parts.unet:forward(noisy, ts, cond)
  return rl.pretrain_loss(pred, noise, latents, ts, parts.scheduler)
end

-- ---- settings ------------------------------------------------------------------------------

local function int(default, doc, min) return { type = 'integer', default = default, min = min or 1, doc = doc } end
local function num(default, doc, min) return { type = 'number', default = default, min = min or 0, doc = doc } end

M.schema = {
  run = {
    dir = { type = 'string', optional = true, doc = 'run folder; unset: runs/pretrain_shapes-<time>' },
    seed = { type = 'integer', default = 0, doc = 'seed of the init, the data stream, noise and timesteps' },
    device = { type = 'string', default = 'cpu', doc = "where the models train: 'cpu', 'cuda' or 'cuda:N'" },
  },
  model = {
    init = { type = 'string', optional = true,
             doc = 'start from this pipeline folder (e.g. models/shapes-base) instead of random init; ' ..
                   'its VAE is kept (vae.steps is skipped)' },
  },
  output = { type = 'string', optional = true, doc = 'where the final diffusers folder goes (default RUN/model)' },
  data = {
    resolution = int(32, 'image side in pixels (shapes.sample resolution)'),
    max_objects = int(3, 'at most this many shapes per image'),
    open_color = num(0, "probability that a caption leaves the colours open ('a circle'), so the model " ..
                        'also draws prompts that do not name a colour'),
    open_color_mix = { type = 'list', of = 'number', optional = true,
                       doc = 'weights of the 6 colours (red, orange, yellow, green, blue, purple) the objects of '
                             .. 'those captions are drawn in; unset: uniform. A skewed mix makes a biased model '
                             .. 'for the diversity reward to correct' },
  },
  tokenizer = {
    corpus = int(2000, 'captions the BPE merges are learned from'),
    max_merges = int(400, 'at most this many BPE merges'),
    max_length = int(32, 'model_max_length (= the text encoder\'s max_position_embeddings)', 4),
  },
  text_encoder = {
    hidden_size = int(64, 'CLIP hidden size (= the UNet\'s cross_attention_dim)'),
    intermediate_size = int(256, 'MLP width'),
    layers = int(2, 'transformer layers'),
    heads = int(4, 'attention heads'),
  },
  unet = {
    block_out_channels = { type = 'list', of = 'integer', default = { 32, 64 }, doc = 'channels per level' },
    layers_per_block = int(1, 'resnets per down block'),
    down_block_types = { type = 'list', of = 'string', default = { 'DownBlock2D', 'CrossAttnDownBlock2D' },
                         doc = 'diffusers down block classes, highest resolution first' },
    up_block_types = { type = 'list', of = 'string', default = { 'CrossAttnUpBlock2D', 'UpBlock2D' },
                       doc = 'diffusers up block classes, lowest resolution first' },
    attention_head_dim = int(4, 'diffusers\' attention_head_dim (the number of heads, a legacy name)'),
    norm_num_groups = int(8, 'GroupNorm groups'),
  },
  vae = {
    block_out_channels = { type = 'list', of = 'integer', default = { 16, 32 },
                           doc = 'channels per level; each level but the last halves the resolution' },
    latent_channels = int(4, 'latent channels'),
    layers_per_block = int(1, 'resnets per block'),
    norm_num_groups = int(8, 'GroupNorm groups'),
    mid_block_attention = { type = 'boolean', default = false, doc = 'self-attention in the mid blocks' },
    steps = { type = 'integer', default = 300, min = 0, doc = 'VAE training steps (phase 1)' },
    batch_size = int(32, 'images per VAE step'),
    lr = num(1e-3, 'AdamW step size of the VAE'),
    kl_weight = num(1e-4, 'weight of the per-element KL term'),
  },
  train = {
    steps = { type = 'integer', default = 300, min = 0, doc = 'diffusion training steps (phase 2)' },
    batch_size = int(32, 'image-caption pairs per step'),
    lr = num(1e-3, 'peak AdamW step size (UNet and text encoder)'),
    warmup = { type = 'integer', default = 30, min = 0, doc = 'linear warmup steps' },
    min_lr = num(1e-4, 'cosine decay ends here at the last step'),
    weight_decay = num(1e-2, 'AdamW weight decay'),
    max_grad_norm = num(1.0, 'global gradient norm clip (0: none)'),
    caption_dropout = num(0.1, 'probability a caption is replaced by "" (for guidance)'),
    train_text_encoder = { type = 'boolean', default = true, doc = 'train the text encoder jointly' },
  },
  sample = {
    every = { type = 'integer', default = 100, min = 0, doc = 'sample grid every N steps of the run (VAE steps count; 0: only at the end)' },
    steps = int(20, 'DDIM steps'),
    guidance = num(4.0, 'classifier-free guidance scale'),
    seeds = int(2, 'images per prompt'),
    prompts = { type = 'list', of = 'string', doc = 'the grid\'s prompts' },
  },
  checkpoint = {
    every = { type = 'integer', default = 100, min = 0, doc = 'checkpoint every N steps (0: never)' },
    keep = int(2, 'checkpoints kept'),
  },
}

return M
