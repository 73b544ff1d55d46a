-- diffrl.rl: RL fine-tuning of diffusion models (PAPER.md).
--
--   rl.core      the algorithm's pure pieces (advantages, PPO loss, step choice, ...)
--   rl.schema    the config schema every RL recipe shares (configs/imagereward.lua)
--   rl.trainer   the loop: sample, score, normalise, policy-gradient steps, checkpoints
--   rl.main{}    what a recipe calls: command line (--config, --set, --resume,
--                --help) -> resolved config -> trainer
--
-- A recipe:
--   local rl = require('diffrl').rl
--   return rl.main {
--     name = 'compressibility',
--     defaults = { sample = { batch_size = 8 } },            -- the recipe's layer
--     tasks = function(cfg) return { { name = 'jpeg', prompts = ..., reward = ... } } end,
--   }
local M = {}

M.core = require 'diffrl.rl.core'
M.schema = require 'diffrl.rl.schema'

-- Trainer (and what it needs) on first use: the core is usable without them.
setmetatable(M, { __index = function(t, k)
  if k == 'trainer' then
    local v = require 'diffrl.rl.trainer'
    rawset(t, k, v)
    return v
  end
end })

-- s as one shell word: as it is when it needs no quoting, else in single quotes
local function shell_word(s)
  s = tostring(s)
  if s:match('^[%w%._/%-+=:,@]+$') then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function usage(name, schema, defaults)
  local config = require 'diffrl.config'
  return ([[
Usage: diffrl run %s [--config FILE] [--set key=value ...] [key=value ...]
       diffrl run %s --resume RUN_DIR [--set train.iterations=N]

Settings (the schema's defaults, then the recipe's as shown, then --config FILE, then --set):
%s]]):format(name, name, config.help(schema, { defaults = defaults }))
end

-- rl.main(spec): spec.name, spec.defaults (a config layer), spec.tasks(cfg) ->
-- task list, spec.schema (default rl.schema), spec.argv (default the global arg),
-- spec.pretrain_data(cfg) -> a source of image-text pairs for the pretraining
-- loss (used when pretrain.weight > 0; else pretrain.data, a folder).
-- Returns the last iteration's metrics and the trainer (nil for --help).
function M.main(spec)
  local config = require 'diffrl.config'
  local schema = spec.schema or M.schema
  local argv = spec.argv or {}
  if not spec.argv and type(arg) == 'table' then
    for i = 1, #arg do argv[i] = arg[i] end
  end
  local args = config.parse_args(argv)
  if args.help then
    io.write(usage(spec.name or 'RECIPE', schema, spec.defaults), '\n')
    return nil
  end
  local layers = { spec.defaults or {} }
  local config_text
  if args.resume then
    -- the run's own resolved config, then only the --set overrides
    local run_cfg = config.load_file(args.resume .. '/config.lua')
    layers = { run_cfg }
  elseif args.config_file then
    layers[#layers + 1] = config.load_file(args.config_file)
  end
  layers[#layers + 1] = args.sets
  local cfg = config.resolve(schema, unpack(layers))
  if not cfg.run.dir then
    cfg.run.dir = ('runs/%s-%s'):format(spec.name or 'run', os.date('%Y%m%d-%H%M%S'))
  end
  config_text = config.serialize(cfg)
  local tasks = spec.tasks(cfg)
  local pretrain_data = spec.pretrain_data and cfg.pretrain.weight > 0 and spec.pretrain_data(cfg) or nil
  local trainer = M.trainer.new(cfg, { tasks = tasks, resume = args.resume, config_text = config_text,
                                       recipe = spec.name, pretrain_data = pretrain_data })
  if trainer.writer then io.write(M.start_line(spec, cfg, args.resume and trainer.step), '\n') end
  local last = trainer:train()
  if trainer.writer then
    io.write(('run folder: %s (`diffrl report %s` writes its report.html)\n'):format(cfg.run.dir,
                                                                                    shell_word(cfg.run.dir)))
  end
  return last, trainer
end

-- What a run says first: where it writes and how to go on after Ctrl-C, or where a
-- resumed run goes on from. resumed_step: nil for a new run.
function M.start_line(spec, cfg, resumed_step)
  local script = spec.script or (type(arg) == 'table' and arg[0]) or spec.name or 'RECIPE'
  local dir = cfg.run.dir
  if resumed_step then
    return ('%s: resuming %s after iteration %d of %d'):format(spec.name or 'run', dir, resumed_step,
                                                               cfg.train.iterations)
  end
  return ('%s: run folder %s; after Ctrl-C `diffrl run %s --resume %s` goes on from its last checkpoint '
          .. '(one every %d iterations)'):format(spec.name or 'run', dir, shell_word(script), shell_word(dir),
                                                 cfg.checkpoint.every)
end

return M
