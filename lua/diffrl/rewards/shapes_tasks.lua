-- diffrl.rewards.shapes_tasks: the shapes world's three paper tasks as the trainer
-- takes them (prompts, reward, held-out prompts), shared by recipes/quickstart.lua
-- (training) and `diffrl eval` / recipes/eval_shapes.lua (the same held-out sets
-- and reward weights).
--
--   composition  shapes_composition (Eq. 13): the detector finds the objects the
--                prompt names: 'a red circle left of a blue square'
--   diversity    shapes_diversity (Eq. 12): prompts that leave the colour open
--                ('a circle'), trained on one circle, square or triangle; held out
--                on stars, a kind its prompts never name (as the paper's unseen
--                occupations), and on two or three of a kind, counts they never
--                name; one score per group, so normalised over the batch
--   preference   shapes_preference with PREFERENCE's weights: a fixed aesthetic rule
--                standing in for ImageReward
--
--   local st = require 'diffrl.rewards.shapes_tasks'
--   st.make { names = { 'composition', ... }, seed = 0, max_objects = 2, prompts = 4,
--             advantage = 'batch', heldout = 8 }      -> a list of trainer tasks
--   st.heldout { seed = 0, n = 8, max_objects = 2 }   -> { composition = {...}, diversity = {...},
--                                                          preference = {...} }
local prompts = require 'diffrl.prompts'
local shapes = require 'diffrl.shapes'
local rewards = require 'diffrl.rewards'

local M = {}

M.NAMES = { 'composition', 'diversity', 'preference' }
M.REWARDS = { composition = 'shapes_composition', diversity = 'shapes_diversity', preference = 'shapes_preference' }

-- The preference rule's weights: mostly what a viewer sees first (a clean
-- background, the subject centred and of a good size, as many objects as asked),
-- less the fine form of each shape, which a 32x32 model this small draws poorly.
M.PREFERENCE = { clean = 0.30, centred = 0.20, fill = 0.15, count = 0.15, crisp = 0.10, form = 0.05,
                 colour = 0.05 }

local DIVERSITY_TRAIN_KINDS = { 'circle', 'square', 'triangle' }
-- held out: every prompt of a kind the training prompts never name (stars), and two or
-- three of each kind, counts they never name (max_objects = 1): 11 prompts, as SP is one
-- number per prompt (4 prompts left every CI across 0.5 unless all 4 improved)
local DIVERSITY_HELDOUT = { 'a star', 'a small star', 'a large star', 'two stars', 'three stars', 'two circles',
                            'two squares', 'two triangles', 'three circles', 'three squares', 'three triangles' }

-- The reward function of a task, as it is trained.
function M.reward(name)
  if name == 'preference' then return rewards.get('shapes_preference', { weights = M.PREFERENCE }) end
  return rewards.get(M.REWARDS[name])
end

-- Each task's held-out prompts: captions of the shapes world's test split, which
-- the training streams never draw (seed for composition, seed + 2 for preference).
function M.heldout(opts)
  local seed, n, mo = opts.seed or 0, opts.n or 8, opts.max_objects or 2
  return {
    composition = shapes.heldout_prompts(n, seed, { max_objects = mo }),
    diversity = DIVERSITY_HELDOUT,
    preference = shapes.heldout_prompts(n, seed + 2, { max_objects = mo }),
  }
end

-- A task's training prompts: the shapes stream itself, or its first n distinct
-- captions as a fixed, shuffled list (the paper trains on fixed prompt sets).
local function training_prompts(n, opts)
  local src = shapes.prompts(opts)
  if n == 0 then return src end
  local list, seen = { shuffle = true, seed = opts.seed, name = opts.name }, {}
  for _ = 1, 1000 * n do
    local p = src:next(1)[1]
    if not seen[p] then
      seen[p] = true
      list[#list + 1] = p
      if #list == n then break end
    end
  end
  return prompts.list(list)
end

-- opts: names (the tasks, in order), seed, max_objects (of the composition and
-- preference prompts), prompts (distinct training prompts per task, 0 = an endless
-- stream), advantage ('batch', 'group' or 'group_mean' for composition and
-- preference), heldout (held-out prompts of composition and preference), batch_sizes
-- ({ [task name] = images per iteration }; unset: the trainer's sample.batch_size),
-- weights ({ [task name] = the loss weight in joint training, the trainer's task.weight }),
-- credit (of the diversity task's group reward: 'group' or 'leave_one_out', the trainer's
-- task.credit).
function M.make(opts)
  local seed, mo = opts.seed or 0, opts.max_objects or 2
  local n, adv = opts.prompts or 0, opts.advantage or 'batch'
  local held = M.heldout { seed = seed, n = opts.heldout or 8, max_objects = mo }
  local build = {
    composition = function()
      return { prompts = training_prompts(n, { seed = seed, max_objects = mo, name = 'composition' }),
               advantage = adv }
    end,
    diversity = function()
      return { prompts = shapes.prompts { seed = seed + 1, max_objects = 1, open_color = true, name = 'diversity',
                                          kinds = DIVERSITY_TRAIN_KINDS },
               advantage = 'batch', credit = opts.credit }
    end,
    preference = function()
      return { prompts = training_prompts(n, { seed = seed + 2, max_objects = mo, name = 'preference' }),
               advantage = adv }
    end,
  }
  local tasks, seen = {}, {}
  for _, name in ipairs(opts.names or M.NAMES) do
    if not build[name] then
      error(("shapes tasks: unknown task '%s' (tasks: %s)"):format(tostring(name), table.concat(M.NAMES, ', ')), 0)
    end
    if seen[name] then error(("shapes tasks: '%s' is named twice"):format(name), 0) end
    seen[name] = true
    local t = build[name]()
    t.name, t.reward, t.heldout = name, M.reward(name), held[name]
    t.batch_size = opts.batch_sizes and opts.batch_sizes[name] or nil
    t.weight = opts.weights and opts.weights[name] or nil
    tasks[#tasks + 1] = t
  end
  if #tasks == 0 then error('shapes tasks: no task named', 0) end
  return tasks
end

return M
