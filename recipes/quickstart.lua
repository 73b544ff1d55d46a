-- recipes/quickstart.lua — the embedded default: the paper's joint training
-- (PAPER.md "joint training") on the shapes world, on 2 CPU cores in minutes.
--
-- The model is models/shapes-open, a tiny Stable-Diffusion-shaped text-to-image
-- model pretrained on the shapes world (recipes/pretrain_shapes.lua; models/README.md),
-- biased towards red for prompts that leave the colour open. Three tasks
-- share one UNet, as the paper's three rewards do:
--   composition  shapes_composition: the detector finds the objects the prompt
--                names (Eq. 13): 'a red circle left of a blue square'
--   diversity    shapes_diversity: prompts that leave the colour open ('a circle'),
--                4 images each, rewarded by statistical parity of colour (Eq. 12);
--                held out: stars, a kind its prompts never name, and two or three
--                of a kind, counts they never name (11 prompts)
--   preference   shapes_preference: a fixed aesthetic rule standing in for ImageReward
-- plus one step of the pretraining loss on shapes-world image-caption pairs per
-- iteration (PAPER.md step 5). Held-out prompts of each task (a caption split the
-- training stream never draws) are scored before training and at the end with
-- the same noise; the table at the end (with each task's paired win rate after /
-- before and its CI) and `diffrl report RUN_DIR` show both.
--
-- Status (issue 7): on the paired held-out evaluation (docs/results.md: 32 prompts x
-- 8 seeds) the default run raises composition (win rate 0.66 [0.59, 0.74] over the
-- base), preference (0.71 [0.66, 0.76]) and diversity (statistical parity 0.493 ->
-- 0.432, 0.73 [0.55, 0.91]; with 32 seeds a prompt -0.075 [-0.121, -0.029]);
-- spec/quickstart_proof_spec.lua checks it. Other seeds vary: diversity's SP fell in
-- seeds 1 and 2 too (CIs touching 0), composition and preference rose clearly in seed 1,
-- not in seed 2; other kernels' bits draw other trajectories, which fail as often
-- (docs/results.md, "How often the default passes its proof").
-- What made the difference (configs/quickstart.lua): a base that draws recognisable
-- shapes and is biased, not blind, on colour-less prompts (shapes-open; on shapes-base
-- composition never rose, on shapes-sharp diversity had no colour to reinforce);
-- training only the attention layers (a task's 16-image policy gradient is ~99%
-- noise, which costs more than it gains when it moves every weight:
-- tools/pg_probe.lua); 48 composition images an iteration and 70 iterations;
-- leave-one-out credit for diversity's group reward (shapes.credit); one
-- optimizer step per task on the mean loss of the first 5 (noisiest) denoising steps;
-- a new prompt stream every iteration; advantages normalised within each prompt's 4
-- images.
--
--   diffrl run recipes/quickstart.lua                          # ~9 minutes on 2 cores
--   diffrl run recipes/quickstart.lua train.iterations=10      # a shorter look
--   diffrl run recipes/quickstart.lua model.path=models/shapes-sharp  # the colour-blind base
--   diffrl run recipes/quickstart.lua --resume runs/quickstart-...   # after Ctrl-C
--   diffrl report runs/quickstart-...                          # report.html
local dr = require 'diffrl'
local shapes_tasks = require 'diffrl.rewards.shapes_tasks'

local root = debug.getinfo(1, 'S').source:match('^@(.*)/recipes/[^/]*$') or '.'
local defaults = dofile(root .. '/configs/quickstart.lua')
defaults.model = defaults.model or { path = root .. '/models/shapes-open' }

-- one optional setting per task (shapes.batch_size.<task>, shapes.weight.<task>)
local function per_task(type_, min, doc)
  local t = {}
  for _, name in ipairs(shapes_tasks.NAMES) do
    t[name] = { type = type_, min = min, optional = true, doc = doc:format(name) }
  end
  return t
end

-- the recipe's own settings, on top of the RL schema
local schema = dr.config.schema(dr.config.merge(dr.rl.schema.spec, {
  shapes = {
    tasks = { type = 'list', of = 'string', default = { 'composition', 'diversity', 'preference' },
              doc = "the tasks trained jointly (composition, diversity, preference); one task: a "
                    .. "single-reward model, as the rows of the paper's Table 5" },
    max_objects = { type = 'integer', default = 2, min = 1, max = 3,
                    doc = 'at most this many objects per prompt of the composition and preference tasks' },
    advantage = { type = 'string', default = 'batch', choices = { 'batch', 'group', 'group_mean' },
                  doc = "reward normalisation of the composition and preference tasks: over the batch "
                        .. "(the paper), within each prompt's images (GRPO) or minus each prompt's mean over "
                        .. "the batch's std (group_mean, Dr. GRPO); diversity always uses the batch" },
    credit = { type = 'string', default = 'group', choices = { 'group', 'leave_one_out' },
               doc = "the diversity task's per-image reward: its group's -SP (the paper's Eq. 12) or "
                     .. "leave_one_out: -SP of the group minus -SP of the group without the image" },
    prompts = { type = 'integer', default = 0, min = 0,
                doc = 'distinct training prompts per task, drawn once from the shapes stream and cycled '
                      .. '(the paper trains on fixed prompt sets); 0: an endless stream of new captions' },
    heldout = { type = 'integer', default = 8, min = 1,
                doc = 'held-out prompts of the composition and preference tasks (eval.seeds images each, else '
                      .. "images_per_prompt); diversity's are 11 fixed ones" },
    batch_size = per_task('integer', 1, 'images of the %s task per iteration; unset: sample.batch_size'),
    weight = per_task('number', 0, "the %s task's loss weight in joint training; unset: 1"),
  },
}))

-- the tasks, their rewards and held-out prompts: diffrl.rewards.shapes_tasks (shared
-- with `diffrl eval` and recipes/eval_shapes.lua)
local function make_tasks(cfg)
  local ok, tasks = pcall(shapes_tasks.make, { names = cfg.shapes.tasks, seed = cfg.run.seed,
                                               max_objects = cfg.shapes.max_objects, prompts = cfg.shapes.prompts,
                                               advantage = cfg.shapes.advantage, heldout = cfg.shapes.heldout,
                                               batch_sizes = cfg.shapes.batch_size, weights = cfg.shapes.weight,
                                               credit = cfg.shapes.credit })
  if not ok then error('quickstart: shapes.tasks: ' .. tostring(tasks):gsub('^shapes tasks: ', ''), 0) end
  return tasks
end

return dr.rl.main {
  name = 'quickstart',
  schema = schema,
  defaults = defaults,
  tasks = make_tasks,
  pretrain_data = function(cfg)
    return require('diffrl.data.shapes').open { seed = cfg.run.seed, resolution = cfg.sample.resolution }
  end,
}
