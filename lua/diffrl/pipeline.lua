-- diffrl.pipeline: a diffusers Stable Diffusion folder as one object, and
-- text-to-image sampling as StableDiffusionPipeline.__call__ does it.
--
--   local pipe = dr.pipeline.load('models/sd2-base')      -- model_index.json + parts
--   local pipe = dr.pipeline.load(dir, { device = 'cuda' }) -- the three models on the GPU
--   local images, latents, traj = pipe:sample {
--     prompt = 'a red circle',  negative = '',  steps = 50,  cfg = 7.5,  eta = 0,
--     seed = 0,  height = 512,  width = 512,  batch = 1,
--     latents = x_T,                -- optional initial noise [B, 4, h, w]
--     keep_trajectory = false,  progress = function(i, n) end,
--   }                               -- images [B, 3, H, W] in [0, 1]; traj (keep_trajectory):
--                                   -- timesteps, latents, log_probs, cond, uncond, guidance, eta, prompts
--   pipe:encode_prompt({ 'a', 'b' })   -- [B, 77, D] text embeddings (no grad)
--   pipe:decode(latents)               -- VAE decode of scaled latents, in [0, 1]
--   pipe:encode(images)                -- [0, 1] images -> scaled latents (posterior mean)
--   (tensors made or returned by the pipeline live on pipe.device; inputs on the cpu are moved)
--   pipe:save_lora_weights(dir)  pipe:load_lora_weights(dir_or_file)   -- diffusers' LoRA files
--
-- The parts: pipe.unet, pipe.vae, pipe.text_encoder (dr models), pipe.tokenizer,
-- pipe.scheduler (a diffrl.sampler schedule), pipe.scaling_factor, pipe.vae_scale.
local cjson = require 'cjson.safe'
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'
local sampler = require 'diffrl.sampler'

local raise = api.raise
local M = {}

local Pipeline = {}
Pipeline.__index = Pipeline

local function read_json(path, what)
  local f, err = io.open(path, 'rb')
  if not f then raise(('%s: cannot read %s'):format(what, err or path)) end
  local text = f:read('*a')
  f:close()
  local v, jerr = cjson.decode(text)
  if type(v) ~= 'table' then raise(('%s: %s is not valid JSON: %s'):format(what, path, tostring(jerr))) end
  return v
end

local function exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() end
  return f ~= nil
end

-- pipeline.load(dir, opts): opts.variant ('fp16'), opts.clip_skip (default 0),
-- opts.device ('cpu', 'cuda', 'cuda:N'; default 'cpu').
function M.load(dir, opts)
  opts = opts or {}
  if type(dir) ~= 'string' then raise('pipeline.load: expected a folder path, got ' .. type(dir)) end
  dir = dir:gsub('/+$', '')
  local index_path = dir .. '/model_index.json'
  if not exists(index_path) then
    raise(('pipeline.load: %s not found: %s is not a diffusers pipeline folder'):format(index_path, dir))
  end
  local index = read_json(index_path, 'pipeline.load')
  for _, part in ipairs { 'unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler' } do
    if index[part] == nil or not exists(dir .. '/' .. part) then
      raise(('pipeline.load: %s has no %s/ (model_index.json lists %s)'):format(dir, part,
        index[part] and 'it' or 'no such part'))
    end
  end
  local sched_class = type(index.scheduler) == 'table' and index.scheduler[2] or '?'
  local p = setmetatable({ dir = dir, index = index, clip_skip = opts.clip_skip or 0,
                          device = opts.device or 'cpu' }, Pipeline)
  p.tokenizer = core.CLIPTokenizer(dir .. '/tokenizer')
  p.text_encoder = core.load_model(dir .. '/text_encoder', { variant = opts.variant }):to(p.device)
  p.unet = core.load_model(dir .. '/unet', { variant = opts.variant }):to(p.device)
  p.vae = core.load_model(dir .. '/vae', { variant = opts.variant }):to(p.device)
  local sched_cfg = dir .. '/scheduler/scheduler_config.json'
  p.scheduler = sampler.schedule.from_config(sched_cfg)
  p.scheduler_class = sched_class
  local vcfg = read_json(dir .. '/vae/config.json', 'pipeline.load')
  local ucfg = read_json(dir .. '/unet/config.json', 'pipeline.load')
  p.scaling_factor = vcfg.scaling_factor or 0.18215
  p.vae_scale = 2 ^ (#(vcfg.block_out_channels or { 1, 1, 1, 1 }) - 1)
  p.sample_size = (type(ucfg.sample_size) == 'number' and ucfg.sample_size or 64) * p.vae_scale
  p.latent_channels = ucfg.in_channels or 4
  p.unet_levels = #(ucfg.block_out_channels or { 1 })
  return p
end

-- Text embeddings for a list of prompts (no gradient): [B, 77, D].
function Pipeline.encode_prompt(p, prompts)
  if type(prompts) == 'string' then prompts = { prompts } end
  local ids = p.tokenizer:encode(prompts):to(p.device)
  return core.no_grad(function()
    local hidden = p.text_encoder:forward(ids, { skip = p.clip_skip })
    return hidden
  end)
end

-- Scaled latents -> images in [0, 1] (VaeImageProcessor.postprocess's denormalize).
function Pipeline.decode(p, latents)
  return core.no_grad(function()
    local img = p.vae:decode(latents:to(p.device) * (1 / p.scaling_factor))
    return (img * 0.5 + 0.5):clamp(0, 1)
  end)
end

-- Images in [0, 1] -> scaled latents: the posterior mean (retrieve_latents'
-- mode "argmax"), or a sample with opts.generator.
function Pipeline.encode(p, images, opts)
  return core.no_grad(function()
    local mean, logvar = p.vae:encode(images:to(p.device) * 2 - 1)
    local z = mean
    if opts and opts.generator then
      z = mean + (logvar * 0.5):exp() * core.randn(mean.shape, { generator = opts.generator, device = p.device })
    end
    return z * p.scaling_factor
  end)
end

local SAMPLE_OPTIONS = { prompt = true, negative = true, steps = true, cfg = true, eta = true,
                         seed = true, generator = true, height = true, width = true, batch = true,
                         latents = true, keep_trajectory = true, progress = true, method = true }

local function list_of(x, n, what)
  if type(x) == 'string' then
    local out = {}
    for i = 1, n do out[i] = x end
    return out
  end
  if type(x) ~= 'table' then raise(('sample: %s must be a string or a list of strings'):format(what)) end
  return x
end

-- Text-to-image (see the header). Returns images [B, 3, H, W] in [0, 1], the
-- final latents, and the trajectory when keep_trajectory.
function Pipeline.sample(p, o)
  if type(o) ~= 'table' then raise('sample: expected a table of options') end
  for k in pairs(o) do
    if not SAMPLE_OPTIONS[k] then raise(('sample: unknown option %s'):format(tostring(k))) end
  end
  if o.prompt == nil then raise('sample: prompt is required') end
  local batch = o.batch or (type(o.prompt) == 'table' and #o.prompt or 1)
  local prompts = list_of(o.prompt, batch, 'prompt')
  if #prompts ~= batch then raise(('sample: %d prompts for batch %d'):format(#prompts, batch)) end
  local negatives = list_of(o.negative or '', batch, 'negative')
  local height, width = o.height or p.sample_size, o.width or p.sample_size
  local f = p.vae_scale * 2 ^ (p.unet_levels - 1)
  if height % f ~= 0 or width % f ~= 0 then
    raise(('sample: height and width must be multiples of %d, got %dx%d'):format(f, height, width))
  end
  local scale = o.cfg or 7.5
  local gen = o.generator or core.Generator(o.seed or 0)
  local cond = p:encode_prompt(prompts)
  local uncond
  if scale > 1 then
    local same = true
    for i = 2, #negatives do same = same and negatives[i] == negatives[1] end
    if same then
      -- one negative prompt for the whole batch (the usual case): encoded once per
      -- pipeline and expanded, not B times per call (ddpo does the same)
      p._uncond = p._uncond or {}
      local row = p._uncond[negatives[1]]
      if not row then
        row = p:encode_prompt({ negatives[1] })
        p._uncond[negatives[1]] = row
      end
      uncond = row:expand(batch, row:size(2), row:size(3))
    else
      uncond = p:encode_prompt(negatives)
    end
  end
  local unet = p.unet
  local model = sampler.cfg.wrap(function(x, t, c) return unet:forward(x, t, c) end, cond, uncond, scale)
  local latents, traj = sampler.sample {
    scheduler = p.scheduler, model = model, steps = o.steps or 50, eta = o.eta or 0,
    method = o.method, generator = gen, keep_trajectory = o.keep_trajectory,
    progress = o.progress, device = p.device,
    latents = o.latents and o.latents:to(p.device),
    shape = o.latents == nil and { batch, p.latent_channels, height / p.vae_scale, width / p.vae_scale } or nil,
  }
  if traj then -- what the policy-gradient step recomputes the prediction from
    traj.cond, traj.uncond, traj.guidance, traj.eta = cond, uncond, scale, o.eta or 0
    traj.prompts = prompts
  end
  return p:decode(latents), latents, traj
end

-- LoRA adapters of the UNet (and the text encoder, when it has them) in one
-- file as diffusers' save_lora_weights writes it: DIR/pytorch_lora_weights.safetensors.
function Pipeline.save_lora_weights(p, dir, opts)
  local io_ = require 'diffrl.core.io'
  local weights = p.unet:lora_state_dict('unet.')
  for k, v in pairs(p.text_encoder:lora_state_dict('text_encoder.')) do weights[k] = v end
  if next(weights) == nil then raise('save_lora_weights: no LoRA adapters (pipe.unet:add_lora first)') end
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  local path = dir .. '/' .. (opts and opts.weight_name or 'pytorch_lora_weights.safetensors')
  io_.save(path, weights, { metadata = { format = 'pt' } })
  return path
end

-- Loads a diffusers LoRA file (or a folder holding pytorch_lora_weights.safetensors).
function Pipeline.load_lora_weights(p, path)
  if not path:match('%.safetensors$') then path = path .. '/pytorch_lora_weights.safetensors' end
  local keys = core.safetensors_open(path):keys()
  local has_unet, has_te = false, false
  for _, k in ipairs(keys) do
    has_unet = has_unet or k:sub(1, 5) == 'unet.'
    has_te = has_te or k:sub(1, 13) == 'text_encoder.'
  end
  if not (has_unet or has_te) then raise(('load_lora_weights: %s has no unet. or text_encoder. LoRA keys'):format(path)) end
  if has_unet then p.unet:load_lora(path, { prefix = 'unet.' }) end
  if has_te then p.text_encoder:load_lora(path, { prefix = 'text_encoder.' }) end
end

function M.is_pipeline(x) return getmetatable(x) == Pipeline end
M.Pipeline = Pipeline
return M
