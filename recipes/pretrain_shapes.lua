-- Pretrains the shapes world's text-to-image model from scratch with diffrl's own
-- code and writes it as a diffusers StableDiffusionPipeline folder (RUN/model, or
-- output=DIR; models/shapes-base is a copy of such a folder).
--
--   diffrl run recipes/pretrain_shapes.lua run.dir=runs/shapes            # settings: configs/pretrain_shapes.lua
--   diffrl run recipes/pretrain_shapes.lua --resume runs/shapes --set train.steps=3000
--   diffrl run recipes/pretrain_shapes.lua model.init=models/shapes-base train.steps=2000
--   diffrl run recipes/pretrain_shapes.lua --help
--
-- What it builds (sizes in configs/pretrain_shapes.lua):
--   tokenizer     a CLIP-format BPE vocabulary learned from shapes captions
--                 (diffrl.pretrain.learn_bpe): the 512 byte symbols plus one merge per
--                 step until every caption word is a single token (~150 merges)
--   text encoder  CLIPTextModel, hidden 64, 2 layers, trained jointly with the UNet:
--                 its embeddings start random and cost ~5% of a step, and a trained
--                 one lets "red" mean the same thing in every caption
--   VAE           AutoencoderKL 32x32x3 <-> 16x16x4, trained first (phase 1)
--   UNet          UNet2DConditionModel (32, 64) on 16x16x4 latents (phase 2)
--   scheduler     DDIM with Stable Diffusion's betas, epsilon prediction
--
-- Why a trained VAE with 2x downsampling rather than a 1-level near-identity VAE at
-- 32x32: on 2 CPU cores the UNet step dominates the whole run, and its cost grows with
-- the latent area; 16x16 latents make every diffusion step ~4x cheaper than 32x32
-- ones, which buys far more diffusion steps than the few hundred VAE steps cost.
-- Shapes-world images are flat colours with sharp edges, which a small VAE learns to
-- reconstruct in minutes (its loss is logged as vae_mse; the input and
-- reconstruction grid is samples/step_<vae.steps>.png), but the corners that tell a
-- square from a circle come last: after 400 steps the detector scores its round trip
-- of clean renders 0.57, after 2000 steps 0.98 (tools/shapes_vae_roundtrip.lua;
-- models/README.md). A near-identity VAE would need training too (GroupNorm and SiLU
-- sit between its input and output), so it saves nothing there.
--
-- Phase 1 (steps 1 .. vae.steps): VAE reconstruction + small KL
-- (pretrain.vae_loss), then scaling_factor = 1 / std of the latents. Phase 2 (the next
-- train.steps): the diffusion loss (rl.core.pretrain_loss) on shapes.sample batches, a
-- running offset into the world's stream, noise / timesteps / caption dropout from
-- one explicit generator: the same settings give the same run, and --resume from a
-- checkpoint repeats the uninterrupted run. Metrics: RUN/metrics.jsonl (loss per
-- step); grids: RUN/samples/ (DDIM, sample.steps, guidance sample.guidance).
--
-- Cost on this repository's 2-core machine (batch 32, 8 latent channels, 2 threads): ~0.28 s
-- per VAE step, ~0.36 s per diffusion step. 120 VAE steps reach a reconstruction MSE
-- of ~0.04 (shapes as blobs, colours not yet right) and 100 diffusion steps an epsilon
-- loss of ~0.16 with no shapes in the samples: the defaults are a start, a shippable
-- model needs far longer runs (models/README.md: 2000 VAE + 9000 diffusion steps).
local dr = require 'diffrl'
local config = require 'diffrl.config'
local pretrain = require 'diffrl.pretrain'
local rundir = require 'diffrl.rundir'
local progress = require 'diffrl.progress'
local optim = require 'diffrl.optim'
local shapes = require 'diffrl.shapes'

local ROOT = debug.getinfo(1, 'S').source:match('^@(.*)/recipes/[^/]*$') or '.'
local schema = config.schema(pretrain.schema)

local argv = {}
for i = 1, #(arg or {}) do argv[i] = arg[i] end
local args = config.parse_args(argv)
if args.help then
  io.write('Usage: diffrl run recipes/pretrain_shapes.lua [--config FILE] [key=value ...]\n',
           '       diffrl run recipes/pretrain_shapes.lua --resume RUN_DIR [--set train.steps=N]\n\n',
           config.help(schema, { defaults = dofile(ROOT .. '/configs/pretrain_shapes.lua') }), '\n')
  return
end
local layers = { dofile(ROOT .. '/configs/pretrain_shapes.lua') }
if args.resume then
  layers = { config.load_file(args.resume .. '/config.lua') } -- the run's own config, then --set
elseif args.config_file then
  layers[2] = config.load_file(args.config_file)
end
layers[#layers + 1] = args.sets
local cfg = config.resolve(schema, unpack(layers))
cfg.run.dir = args.resume or cfg.run.dir or ('runs/pretrain_shapes-%s'):format(os.date('%Y%m%d-%H%M%S'))
local config_text = config.serialize(cfg)

local run
if args.resume then
  run = rundir.open(args.resume, { keep = cfg.checkpoint.keep })
  -- a --set (e.g. more train.steps) becomes part of the run's config
  local f = assert(io.open(run.dir .. '/config.lua', 'wb'))
  f:write(config_text)
  f:close()
else
  run = rundir.create(cfg.run.dir, { config_text = config_text, keep = cfg.checkpoint.keep,
                                     info = { recipe = 'pretrain_shapes' } })
end

local function data_batch(n, offset)
  return shapes.sample(n, { seed = cfg.run.seed, offset = offset, resolution = cfg.data.resolution,
                            max_objects = cfg.data.max_objects, open_color = cfg.data.open_color,
                            open_color_mix = cfg.data.open_color_mix })
end

-- ---- the models ----------------------------------------------------------------------
local parts
if cfg.model.init then
  parts = pretrain.load(cfg.model.init)
else
  local tok_dir = run.dir .. '/tokenizer'
  if not io.open(tok_dir .. '/vocab.json', 'rb') then
    -- the corpus comes from its own part of the stream (offsets never used for training)
    local _, captions = data_batch(cfg.tokenizer.corpus, 2 ^ 40)
    local merges = pretrain.learn_bpe(captions, { max_merges = cfg.tokenizer.max_merges })
    local size = pretrain.write_tokenizer(tok_dir, merges, { max_length = cfg.tokenizer.max_length })
    print(('pretrain_shapes: tokenizer: %d merges, %d tokens, max length %d')
      :format(#merges, size, cfg.tokenizer.max_length))
  end
  parts = pretrain.build(cfg, tok_dir)
end
pretrain.to_device(parts, cfg.run.device) -- before the optimizers: their state lives beside the weights

local vae_steps = cfg.model.init and 0 or cfg.vae.steps
local total = vae_steps + cfg.train.steps
local vae_params = parts.vae:parameters()
local vae_opt = vae_steps > 0 and optim.AdamW(vae_params, { lr = cfg.vae.lr, weight_decay = 0, flat = true })
local train_params = parts.unet:requires_grad(true):parameters()
if cfg.train.train_text_encoder then
  for _, p in ipairs(parts.text_encoder:requires_grad(true):parameters()) do train_params[#train_params + 1] = p end
end
local opt = optim.AdamW(train_params, { lr = cfg.train.lr, weight_decay = cfg.train.weight_decay, flat = true })
local lr_at = optim.schedules.cosine(cfg.train.lr, cfg.train.steps, cfg.train.warmup, cfg.train.min_lr)
local gen = dr.Generator(cfg.run.seed + 1000003)
local offset, step = 0, 0

-- ---- checkpoints ------------------------------------------------------------------------
local MODELS = { 'unet', 'vae', 'text_encoder' }

local function save_checkpoint()
  local tensors = {}
  for _, name in ipairs(MODELS) do
    for _, p in ipairs(parts[name]:named_parameters()) do tensors[name .. '.' .. p[1]] = p[2]:detach() end
  end
  for key, o in pairs { adam = opt, adam_vae = vae_opt or nil } do
    local s = o.state.flat
    if s then tensors[key .. '.exp_avg'], tensors[key .. '.exp_avg_sq'] = s.exp_avg, s.exp_avg_sq end
  end
  local s = gen:get_state()
  run:save_checkpoint(step, { tensors = tensors, lua = {
    step = step, offset = offset, gen = { seed = s.seed, offset = s.offset },
    adam_step = opt.step_count, adam_vae_step = vae_opt and vae_opt.step_count or 0,
    scaling_factor = parts.scaling_factor,
  } })
end

if args.resume then
  local at, path = run:latest_checkpoint()
  if not at then error(('pretrain_shapes: %s has no checkpoint to resume from'):format(run.dir), 0) end
  local st = rundir.load_checkpoint(path)
  dr.no_grad(function()
    for _, name in ipairs(MODELS) do
      for _, p in ipairs(parts[name]:named_parameters()) do
        local t = st.tensors[name .. '.' .. p[1]]
        if not t then error(('pretrain_shapes: %s has no %s.%s'):format(path, name, p[1]), 0) end
        p[2]:copy_(t)
      end
    end
  end)
  for key, o in pairs { adam = opt, adam_vae = vae_opt or nil } do
    if st.tensors[key .. '.exp_avg'] then
      o.state.flat = { exp_avg = st.tensors[key .. '.exp_avg']:to(parts.device):clone(),
                       exp_avg_sq = st.tensors[key .. '.exp_avg_sq']:to(parts.device):clone() }
    end
  end
  local lua = st.lua
  step, offset = lua.step, lua.offset
  gen:set_state(lua.gen)
  opt.step_count = lua.adam_step
  if vae_opt then vae_opt.step_count = lua.adam_vae_step end
  parts.scaling_factor = lua.scaling_factor
  parts.configs.vae.scaling_factor = lua.scaling_factor
  run:truncate_metrics(step)
  print(('pretrain_shapes: resumed %s at step %d of %d'):format(run.dir, step, total))
end

-- ---- grids -----------------------------------------------------------------------------
local function sample_grid()
  local prompts = {}
  for _ = 1, cfg.sample.seeds do
    for _, p in ipairs(cfg.sample.prompts) do prompts[#prompts + 1] = p end
  end
  local images = dr.no_grad(function()
    return (pretrain.pipeline(parts):sample {
      prompt = prompts, steps = cfg.sample.steps, cfg = cfg.sample.guidance, seed = cfg.run.seed,
      height = cfg.data.resolution, width = cfg.data.resolution,
    })
  end)
  return run:save_grid(step, images:cpu(), prompts, { nrow = #cfg.sample.prompts })
end

-- Phase 1's end: the latent scale, the VAE frozen, inputs over reconstructions.
local function finish_vae()
  local images, captions = data_batch(256, 2 ^ 41)
  local sf = pretrain.calibrate_scaling(parts, images)
  parts.vae:requires_grad(false)
  local x = images:narrow(1, 1, 8)
  local recon = pretrain.reconstruct(parts, x)
  local labels = {}
  for i = 1, 8 do labels[i], labels[i + 8] = captions[i], 'reconstruction of ' .. captions[i] end
  run:save_grid(step, dr.cat({ x, recon }, 1), labels, { nrow = 8 })
  print(('pretrain_shapes: VAE done, scaling_factor %.4f'):format(sf))
end

-- ---- training ----------------------------------------------------------------------------
print(('pretrain_shapes: %s, %d VAE + %d diffusion steps, batch %d, %d threads; unet %d, ' ..
       'text encoder %d, vae %d parameters'):format(run.dir, vae_steps, cfg.train.steps,
       cfg.train.batch_size, dr.get_num_threads(), parts.unet:num_parameters(),
       parts.text_encoder:num_parameters(), parts.vae:num_parameters()))
if step < vae_steps then parts.vae:requires_grad(true) else parts.vae:requires_grad(false) end
local bar = progress.bar { total = total, label = 'pretrain', initial = step }
local smooth
local clip = function(params)
  return optim.clip_grad_norm_(params, cfg.train.max_grad_norm > 0 and cfg.train.max_grad_norm or math.huge)
end
while step < total do
  step = step + 1
  local metrics = { step = step }
  if step <= vae_steps then
    local images = data_batch(cfg.vae.batch_size, offset)
    offset = offset + cfg.vae.batch_size
    local loss, st = pretrain.vae_loss(parts, images, gen, { kl_weight = cfg.vae.kl_weight })
    loss:backward()
    metrics.grad_norm = clip(vae_params)
    vae_opt:step()
    vae_opt:zero_grad()
    metrics.vae_loss, metrics.vae_mse, metrics.vae_kl = loss:item(), st.mse, st.kl
    smooth = smooth and 0.9 * smooth + 0.1 * st.mse or st.mse
    run:log(metrics)
    bar:update(step, ('vae mse %.4f'):format(smooth))
    if step == vae_steps then
      finish_vae()
      smooth = nil
    end
  else
    local k = step - vae_steps
    opt.lr = lr_at(k)
    local images, captions = data_batch(cfg.train.batch_size, offset)
    offset = offset + cfg.train.batch_size
    local loss = pretrain.diffusion_loss(parts, images, captions, gen,
                                         { caption_dropout = cfg.train.caption_dropout })
    loss:backward()
    metrics.grad_norm = clip(train_params)
    opt:step()
    opt:zero_grad()
    metrics.loss, metrics.lr = loss:item(), opt.lr
    smooth = smooth and 0.95 * smooth + 0.05 * metrics.loss or metrics.loss
    run:log(metrics)
    bar:update(step, ('loss %.4f'):format(smooth))
    if (cfg.sample.every > 0 and step % cfg.sample.every == 0) or step == total then sample_grid() end
  end
  if (cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0) or step == total then save_checkpoint() end
end
bar:finish()
run:close()
local out = pretrain.save(cfg.output or (run.dir .. '/model'), parts)
print(('pretrain_shapes: wrote %s (sample it: diffrl sample --model %s --prompt "a red circle" -o x.png)')
  :format(out, out))
return { run = run.dir, model = out, step = step }
