-- diffrl.core.models: Stable Diffusion's networks (core/models) from Lua.
--
--   local unet = dr.load_model('sd/unet')                 -- config.json + safetensors
--   local eps  = unet:forward(latents, t, text_embeddings)
--   local vae  = dr.load_model('sd/vae');  local img = vae:decode(z)
--   local mean, logvar = vae:encode(img)
--   local te   = dr.load_model('sd/text_encoder');  local h, pooled = te:forward(ids)
--   local m    = dr.Model('unet', config_json_text, { seed = 0 })   -- random init
--                (init = false: zeros, for loading a checkpoint right after)
--   m:named_parameters()  m:parameters()  m:param(name)  m:load(files, opts)
--   m:add_lora{ rank = 4, alpha = 4, targets = { 'to_q', 'to_k', 'to_v', 'to_out.0' } }
--   m:set_checkpointing(true)      m:requires_grad(false)      m:num_parameters()
--   m:save_lora(path)  m:load_lora(path)      -- diffusers' pytorch_lora_weights.safetensors
--   m:to('cuda')  m:cuda()  m:cpu()           -- moves every parameter (before the optimizer)
--
-- Parameter names are the checkpoint keys of the diffusers / transformers folder.
-- Parameters are leaves with requires_grad off until a recipe turns them on.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local take, out_box = T.take, T.out_box

local M = {}

local Model = {}
Model.__index = Model

local KINDS = { unet = true, vae = true, clip_text = true,
                imagereward = true, -- reward_models.lua (issue 10)
                clip = true, aesthetic = true } -- clip_models.lua (issue 10)
-- _class_name (diffusers) or architectures[1] (transformers) -> kind
local CLASSES = {
  UNet2DConditionModel = 'unet', AutoencoderKL = 'vae',
  CLIPTextModel = 'clip_text', CLIPModel = 'clip',
}

local check = api.check

local function read_file(path, what)
  local f, err = io.open(path, 'rb')
  if not f then raise(('%s: cannot read %s'):format(what, err or path)) end
  local text = f:read('*a')
  f:close()
  return text
end

local function handle(m, op)
  if getmetatable(m) ~= Model then raise(op .. ': expected a model (use m:' .. op .. ')') end
  if m._h == nil then raise(op .. ': the model was freed') end
  return m._h
end

local model_box = ffi.new('dr_model*[1]')

-- dr.Model(kind, config, opts): config is the text of a config.json.
function M.Model(kind, config, opts)
  opts = opts or {}
  if not KINDS[kind] then
    raise(('Model: unknown kind %s (expected unet, vae, clip_text, imagereward, clip or aesthetic)'):format(tostring(kind)))
  end
  if type(config) ~= 'string' then raise('Model: config must be the JSON text of a config.json') end
  local seed = opts.seed or 0
  if opts.init == false then seed = ffi.cast('uint64_t', -1) end
  check(C.dr_model_create(kind, config, #config, opts.context or 'config', seed, model_box))
  local h = ffi.gc(model_box[0], C.dr_model_free)
  model_box[0] = nil
  return setmetatable({ _h = h, kind = kind, path = opts.context }, Model)
end

local function file_exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() end
  return f ~= nil
end

-- for the other model bindings (reward_models.lua)
M._read_file, M._file_exists = read_file, file_exists

-- The weight files of a model folder: [variant] safetensors, single or sharded.
local function weight_files(dir, variant)
  local bases = { 'diffusion_pytorch_model', 'model' }
  local v = variant and ('.' .. variant) or ''
  for _, base in ipairs(bases) do
    local single = ('%s/%s%s.safetensors'):format(dir, base, v)
    if file_exists(single) then return { single } end
    local index = ('%s/%s.safetensors.index%s.json'):format(dir, base, v)
    if not file_exists(index) then index = ('%s/%s%s.safetensors.index.json'):format(dir, base, v) end
    if file_exists(index) then
      local files, seen = {}, {}
      for name in read_file(index, 'load_model'):gmatch('"[^"]+"%s*:%s*"([^"]+%.safetensors)"') do
        if not seen[name] then
          seen[name] = true
          files[#files + 1] = dir .. '/' .. name
        end
      end
      table.sort(files)
      if #files == 0 then raise(('load_model: %s lists no safetensors files'):format(index)) end
      return files
    end
  end
  for _, base in ipairs(bases) do
    local bin = ('%s/%s%s.bin'):format(dir, base == 'model' and 'pytorch_model' or base, v)
    if file_exists(bin) then
      raise(('load_model: %s has only PyTorch pickle weights (%s), which diffrl does not '
        .. 'unpickle; convert the folder once with\n  python3 tools/convert_to_safetensors.py %s\n'
        .. '(or in diffusers: DiffusionPipeline.from_pretrained(...).save_pretrained(dir, '
        .. 'safe_serialization=True))'):format(dir, bin, dir))
    end
  end
  if variant then
    raise(('load_model: %s has no %s weights (%s); leave out the variant to load the default files')
      :format(dir, variant, ('diffusion_pytorch_model.%s.safetensors'):format(variant)))
  end
  raise(('load_model: no weights in %s (expected diffusion_pytorch_model.safetensors or '
    .. 'model.safetensors)'):format(dir))
end
M.weight_files = weight_files

-- dr.load_model(dir, opts): a diffusers / transformers model folder.
-- opts: kind (else from config.json's _class_name), variant ('fp16').
function M.load_model(dir, opts)
  opts = opts or {}
  if type(dir) ~= 'string' then raise('load_model: expected a folder path, got ' .. type(dir)) end
  dir = dir:gsub('/+$', '')
  local cfg_path = dir .. '/config.json'
  if not file_exists(cfg_path) then
    raise(('load_model: %s not found (is %s a diffusers model folder such as unet/?)'):format(cfg_path, dir))
  end
  local config = read_file(cfg_path, 'load_model')
  local kind = opts.kind
  if not kind then
    local class = config:match('"_class_name"%s*:%s*"([%w_]+)"')
      or config:match('"architectures"%s*:%s*%[%s*"([%w_]+)"')
    kind = CLASSES[class or '']
    if not kind then
      raise(('load_model: %s: model class %s is not supported (UNet2DConditionModel, '
        .. 'AutoencoderKL, CLIPTextModel)'):format(cfg_path, tostring(class)))
    end
  end
  local files = weight_files(dir, opts.variant)
  local m = M.Model(kind, config, { init = false, context = cfg_path })
  m:load(files)
  m.path = dir
  return m
end

-- m:load(files[, opts]): opts.prefix, opts.allow_missing, opts.allow_unexpected.
function Model.load(m, files, opts)
  local h = handle(m, 'load')
  opts = opts or {}
  if type(files) == 'string' then files = { files } end
  local paths = ffi.new('const char *[?]', #files)
  for i, f in ipairs(files) do paths[i - 1] = f end
  local flags = (opts.allow_missing and C.DR_LOAD_ALLOW_MISSING or 0)
    + (opts.allow_unexpected and C.DR_LOAD_ALLOW_UNEXPECTED or 0)
  local n = ffi.new('int64_t[1]')
  check(C.dr_model_load_safetensors(h, paths, #files, opts.prefix, flags, n))
  return tonumber(n[0])
end

local function wrap_param(p)
  C.dr_tensor_retain(p)
  return T.ref_t(p)
end

-- { {name, tensor}, ... } in module order; opts.adapters_only for the LoRA ones.
function Model.named_parameters(m, opts)
  local h = handle(m, 'named_parameters')
  local out = {}
  for i = 0, tonumber(C.dr_model_param_count(h)) - 1 do
    if not (opts and opts.adapters_only) or C.dr_model_param_is_adapter(h, i) ~= 0 then
      out[#out + 1] = { ffi.string(C.dr_model_param_name(h, i)), wrap_param(C.dr_model_param(h, i)) }
    end
  end
  return out
end

function Model.parameters(m, opts)
  local out = {}
  for i, p in ipairs(m:named_parameters(opts)) do out[i] = p[2] end
  return out
end

-- name -> tensor table
function Model.state_dict(m, opts)
  local out = {}
  for _, p in ipairs(m:named_parameters(opts)) do out[p[1]] = p[2] end
  return out
end

function Model.param(m, name)
  local h = handle(m, 'param')
  local i = C.dr_model_find_param(h, tostring(name))
  if i < 0 then raise(('param: %s has no parameter %s'):format(m.kind, tostring(name))) end
  return wrap_param(C.dr_model_param(h, i))
end

function Model.num_parameters(m)
  local h = handle(m, 'num_parameters')
  local n = 0
  for i = 0, tonumber(C.dr_model_param_count(h)) - 1 do
    n = n + tonumber(C.dr_tensor_numel(C.dr_model_param(h, i)))
  end
  return n
end

-- Turns requires_grad on or off for every parameter (or only the adapters).
function Model.requires_grad(m, flag, opts)
  local h = handle(m, 'requires_grad')
  for i = 0, tonumber(C.dr_model_param_count(h)) - 1 do
    if not (opts and opts.adapters_only) or C.dr_model_param_is_adapter(h, i) ~= 0 then
      check(C.dr_tensor_set_requires_grad(C.dr_model_param(h, i), flag and 1 or 0))
    end
  end
  return m
end

function Model.set_checkpointing(m, on)
  C.dr_model_set_checkpointing(handle(m, 'set_checkpointing'), on and 1 or 0)
  return m
end

-- m:to(device): every parameter moves to 'cpu', 'cuda' or 'cuda:N' in place (the
-- tensors from m:parameters() follow; their gradients are cleared). Returns m.
function Model.to(m, device)
  api.check(C.dr_model_to_device(handle(m, 'to'), require('diffrl.core.dtype').device(device)))
  return m
end
function Model.cuda(m, index) return m:to(index and ('cuda:' .. index) or 'cuda') end
function Model.cpu(m) return m:to('cpu') end

-- m:add_lora{rank, alpha (default rank), targets, seed}: returns the number of
-- adapted modules. The adapters require grad; nothing else changes.
function Model.add_lora(m, opts)
  local h = handle(m, 'add_lora')
  opts = opts or {}
  local rank = opts.rank or 4
  local alpha = opts.alpha or rank
  local targets = opts.targets
    or (m.kind == 'clip_text' and { 'q_proj', 'k_proj', 'v_proj', 'out_proj' }
        or { 'to_q', 'to_k', 'to_v', 'to_out.0' })
  local ct = ffi.new('const char *[?]', #targets)
  for i, t in ipairs(targets) do ct[i - 1] = t end
  local n = ffi.new('int64_t[1]')
  check(C.dr_model_add_lora(h, rank, alpha, ct, #targets, opts.seed or 0, n))
  m.lora = { rank = rank, alpha = alpha, targets = targets }
  m:requires_grad(true, { adapters_only = true })
  return tonumber(n[0])
end

-- ---- LoRA files in the format diffusers' save_lora_weights writes -----------------
-- Keys "<prefix><module>.lora_A.weight" / ".lora_B.weight" (peft's names, prefix
-- "unet." or "text_encoder."). diffusers loads such a file with alpha = rank
-- unless adapter metadata says otherwise, so the scale alpha / rank is folded
-- into lora_B on saving: the file computes exactly what the model computes.

-- m:save_lora(path[, { prefix = 'unet.', metadata = {...} }])
function Model.save_lora(m, path, opts)
  handle(m, 'save_lora')
  opts = opts or {}
  local prefix = opts.prefix or (m.kind == 'clip_text' and 'text_encoder.' or 'unet.')
  local io_ = require 'diffrl.core.io'
  local out = m:lora_state_dict(prefix)
  if next(out) == nil then raise('save_lora: the model has no LoRA adapters (m:add_lora first)') end
  local meta = { format = 'pt' }
  for k, v in pairs(opts.metadata or {}) do meta[k] = tostring(v) end
  if m.lora then
    meta.diffrl_lora_rank, meta.diffrl_lora_alpha = tostring(m.lora.rank), tostring(m.lora.alpha)
  end
  io_.save(path, out, { metadata = meta })
end

-- The adapters as diffusers keys -> tensors (lora_B scaled by alpha / rank).
function Model.lora_state_dict(m, prefix)
  local out = {}
  local scale = m.lora and (m.lora.alpha / m.lora.rank) or 1
  for _, p in ipairs(m:named_parameters { adapters_only = true }) do
    local name, t = p[1], p[2]
    if name:find('%.lora_B%.weight$') and scale ~= 1 then t = t:detach() * scale else t = t:detach() end
    out[(prefix or '') .. name] = t
  end
  return out
end

-- m:load_lora(path[, { prefix = 'unet.' }]): adds adapters for the modules the
-- file names (rank from the shapes, alpha = rank) and loads them. Also reads
-- the older "<module>.lora.down.weight" / ".lora.up.weight" names.
function Model.load_lora(m, path, opts)
  handle(m, 'load_lora')
  opts = opts or {}
  local prefix = opts.prefix or (m.kind == 'clip_text' and 'text_encoder.' or 'unet.')
  local io_ = require 'diffrl.core.io'
  local tensors = io_.load(path)
  local modules, rank, renamed = {}, nil, {}
  for key, t in pairs(tensors) do
    if key:sub(1, #prefix) == prefix then
      local name = key:sub(#prefix + 1)
      local module, which = name:match('^(.*)%.lora_([AB])%.weight$')
      if not module then
        module, which = name:match('^(.*)%.lora%.(%a+)%.weight$')
        which = which == 'down' and 'A' or which == 'up' and 'B' or nil
      end
      if not module then raise(('load_lora: %s: key %s is not a LoRA weight'):format(path, key)) end
      if which == 'A' then
        local r = t:size(1)
        if rank and r ~= rank then
          raise(('load_lora: %s: mixed ranks (%d and %d) are not supported'):format(path, rank, r))
        end
        rank = r
        modules[#modules + 1] = module
      end
      renamed[module .. '.lora_' .. which .. '.weight'] = t
    end
  end
  if #modules == 0 then raise(('load_lora: %s has no %s LoRA weights'):format(path, prefix)) end
  table.sort(modules)
  m:add_lora { rank = rank, alpha = rank, targets = modules }
  local autograd = require 'diffrl.core.autograd'
  autograd.no_grad(function()
    for name, t in pairs(renamed) do
      local i = C.dr_model_find_param(m._h, name)
      if i < 0 then raise(('load_lora: %s: the model has no module for %s'):format(path, name)) end
      check(C.dr_tensor_copy_(C.dr_model_param(m._h, i), t.ptr))
    end
  end)
  return #modules
end

local function tensor_arg(x, op, what)
  if not T.is_tensor(x) then raise(('%s: %s must be a tensor, got %s'):format(op, what, type(x))) end
  return x.ptr
end

local scalar_box = ffi.new('double[1]')

-- unet:forward(sample, timestep, encoder_hidden_states) -> noise prediction.
-- timestep: a number, a 0-d or [B] tensor.
function Model.forward(m, a, b, c)
  local h = handle(m, 'forward')
  if m.kind == 'unet' then
    local t = b
    if type(t) == 'number' then
      scalar_box[0] = t
      t = take(C.dr_tensor_from_f64(scalar_box, nil, 0, C.DR_F32, tensor_arg(a, 'unet', 'sample').device, out_box))
    end
    return take(C.dr_unet_forward(h, tensor_arg(a, 'unet', 'sample'), tensor_arg(t, 'unet', 'timestep'),
      tensor_arg(c, 'unet', 'encoder_hidden_states'), out_box))
  elseif m.kind == 'clip_text' then
    return m:encode_text(a, b)
  end
  raise(('forward: a %s model has encode/decode, not forward'):format(m.kind))
end

local hidden_box, pooled_box = ffi.new('dr_tensor*[1]'), ffi.new('dr_tensor*[1]')

-- text_encoder:forward(input_ids[, { skip = k }]) -> hidden [B, L, D], pooled [B, D]
function Model.encode_text(m, ids, opts)
  local h = handle(m, 'encode_text')
  if m.kind ~= 'clip_text' then raise('encode_text: needs a clip_text model, got ' .. m.kind) end
  local skip = opts and opts.skip or 0
  check(C.dr_clip_text_forward(h, tensor_arg(ids, 'clip_text', 'input_ids'), skip, hidden_box, pooled_box))
  local hid, pooled = T.ref_t(hidden_box[0]), T.ref_t(pooled_box[0])
  hidden_box[0], pooled_box[0] = nil, nil
  return hid, pooled
end

-- vae:encode(x) -> posterior mean, logvar
function Model.encode(m, x)
  local h = handle(m, 'encode')
  if m.kind ~= 'vae' then raise('encode: needs a vae model, got ' .. m.kind) end
  check(C.dr_vae_encode(h, tensor_arg(x, 'vae', 'x'), hidden_box, pooled_box))
  local mean, logvar = T.ref_t(hidden_box[0]), T.ref_t(pooled_box[0])
  hidden_box[0], pooled_box[0] = nil, nil
  return mean, logvar
end

function Model.decode(m, z)
  local h = handle(m, 'decode')
  if m.kind ~= 'vae' then raise('decode: needs a vae model, got ' .. m.kind) end
  return take(C.dr_vae_decode(h, tensor_arg(z, 'vae', 'z'), out_box))
end

-- Frees the parameters now (tensors handed out earlier stay valid).
function Model.free(m)
  if m._h ~= nil then
    C.dr_model_free(ffi.gc(m._h, nil))
    m._h = nil
  end
end

Model.__tostring = function(m)
  if m._h == nil then return ('Model(%s, freed)'):format(m.kind) end
  return ('Model(%s, %d tensors, %d parameters%s)'):format(m.kind,
    tonumber(C.dr_model_param_count(m._h)), m:num_parameters(), m.path and (', ' .. m.path) or '')
end

M.is_model = function(x) return getmetatable(x) == Model end
M.ModelClass = Model
return M
