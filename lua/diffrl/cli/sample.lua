-- `diffrl sample`: text-to-image from a diffusers Stable Diffusion folder (DDIM),
-- writing PNGs, with a progress bar on a terminal.
local M = {}

M.usage = [[
Usage: diffrl sample --model DIR --prompt TEXT [options] [-o out.png]

Samples images from a diffusers Stable Diffusion folder (model_index.json, unet/,
vae/, text_encoder/, tokenizer/, scheduler/) with DDIM and classifier-free
guidance, as diffusers' StableDiffusionPipeline does, and writes a PNG.

Options:
  --model DIR        the pipeline folder (required)
  --prompt TEXT      the prompt (required)
  --negative TEXT    negative prompt (default: empty)
  --steps N          denoising steps (default 50)
  --cfg S            guidance scale; 1 or less turns guidance off (default 7.5)
  --eta E            DDIM eta: 0 deterministic, 1 as DDPM (default 0)
  --seed N           seed of the initial noise and of eta's noise (default 0)
  --height H         image height in pixels (default: the model's sample size)
  --width W          image width in pixels (default: the model's sample size)
  --batch N          images per prompt (default 1); several are written as a grid
  --separate         with --batch, write out-1.png, out-2.png, ... instead of a grid
  --variant NAME     load NAME weights, e.g. fp16 (converted to float32)
  --device D         cpu (default), cuda or cuda:N (a CUDA build)
  --threads N        CPU threads (default: all)
  -o, --output FILE  the PNG to write (default sample.png)

The same seed gives the same image in diffrl every time (Philox noise); it is not
the image PyTorch's generator would give for that seed.]]

local options = require 'diffrl.cli.options'

local NUMERIC = { steps = 'int', cfg = 'num', eta = 'num', seed = 'int', height = 'int',
                  width = 'int', batch = 'int', threads = 'int' }
local STRING = { model = true, prompt = true, negative = true, variant = true, output = true,
                 device = true }

local function usage_error(msg)
  io.stderr:write('diffrl sample: ', msg, "\nTry 'diffrl sample --help'.\n")
  return 2
end

function M.parse(args)
  local o, err = options.parse(args, { numeric = NUMERIC, string = STRING, flag = { separate = true },
                                       short = { o = 'output' } }, { separate = false })
  if not o then return nil, err end
  if not o.model then return nil, 'missing --model DIR' end
  if not o.prompt then return nil, 'missing --prompt TEXT' end
  for _, k in ipairs { 'steps', 'batch', 'threads', 'height', 'width' } do
    if o[k] and o[k] < 1 then return nil, ('--%s must be positive, got %d'):format(k, o[k]) end
  end
  if o.seed and o.seed < 0 then return nil, '--seed must be >= 0' end
  return o
end

function M.run(args)
  local o, err = M.parse(args)
  if not o then return usage_error(err) end
  local dr = require 'diffrl'
  if o.threads then dr.set_num_threads(o.threads) end
  local ok, result = pcall(function()
    local pipe = dr.pipeline.load(o.model, { variant = o.variant, device = o.device })
    local images = pipe:sample {
      prompt = o.prompt, negative = o.negative, steps = o.steps, cfg = o.cfg, eta = o.eta,
      seed = o.seed, height = o.height, width = o.width, batch = o.batch,
      progress = require('diffrl.progress').callback('sampling'),
    }
    images = images:cpu()
    local out = o.output or 'sample.png'
    local written = {}
    if o.separate and images:size(1) > 1 then
      local stem = out:gsub('%.png$', '')
      for b = 1, images:size(1) do
        local path = ('%s-%d.png'):format(stem, b)
        dr.save_image(path, images[b])
        written[#written + 1] = path
      end
    else
      dr.save_image(out, images)
      written[1] = out
    end
    return written
  end)
  if not ok then
    io.stderr:write('diffrl sample: ', tostring(result), '\n')
    return 1
  end
  for _, path in ipairs(result) do io.write(path, '\n') end
  return 0
end

return M
