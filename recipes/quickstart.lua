-- recipes/quickstart.lua — the embedded default, runnable on 2 CPU cores.
--
-- Until the shapes world and its tiny text-to-image model land (they will
-- replace this file), the quickstart shows the paper's update on the smallest
-- policy there is: a Gaussian "image generator" N(mu, sigma^2 I) whose samples
-- are scored by a reward, with the advantage normalized over the batch
-- (PAPER.md step 3) and the score-function policy gradient
--     grad_mu E[r] ~= 1/(B sigma) * sum_i A_i * eps_i,   a_i = mu + sigma * eps_i.
-- Reward: r(a) = -|a - target|^2 / dim (closer to a hidden target is better).
local dr = require 'diffrl'

-- Settings: configs/quickstart.lua, then key=value arguments.
local here = (arg and arg[0] or ''):match('^(.*)/recipes/[^/]*$') or '.'
local cfg = dofile(here .. '/configs/quickstart.lua')
for _, a in ipairs(arg or {}) do
  local k, v = a:match('^([%w_]+)=(.+)$')
  if not k or cfg[k] == nil then
    error(("quickstart: unknown setting '%s' (known: seed, iterations, batch, dim, sigma, lr, " ..
           "print_every)"):format(a), 0)
  end
  cfg[k] = tonumber(v) or error(("quickstart: %s must be a number, got '%s'"):format(k, v), 0)
end

local gen = dr.Generator(cfg.seed)
local target = dr.randn(cfg.dim, { generator = gen })
local mu = dr.zeros(cfg.dim)

local function rollout()
  local eps = dr.randn(cfg.batch, cfg.dim, { generator = gen })
  local actions = mu + eps * cfg.sigma            -- broadcast [dim] over [batch, dim]
  local diff = actions - target
  local reward = (diff * diff):sum(2) * (-1 / cfg.dim)   -- [batch]
  return eps, reward
end

print(('quickstart: Gaussian policy, dim %d, batch %d, %d iterations (seed %d, %d threads)')
  :format(cfg.dim, cfg.batch, cfg.iterations, cfg.seed, dr.get_num_threads()))
local start = os.clock()
local first, last
for it = 1, cfg.iterations do
  local eps, reward = rollout()
  local mean = reward:sum():item() / cfg.batch
  local centered = reward - mean
  local std = math.sqrt((centered * centered):sum():item() / cfg.batch)
  local adv = centered / (std + 1e-8)                  -- normalized advantages
  local grad = adv:matmul(eps) / (cfg.batch * cfg.sigma) -- [batch] @ [batch, dim] -> [dim]
  mu = mu + grad * cfg.lr
  first = first or mean
  last = mean
  if it == 1 or it % cfg.print_every == 0 or it == cfg.iterations then
    local dist = mu - target
    print(('  iter %3d   mean reward %8.4f   |mu - target|^2/dim %.4f'):format(
      it, mean, (dist * dist):sum():item() / cfg.dim))
  end
end
print(('quickstart: mean reward %.4f -> %.4f in %.2f s CPU (optimum: %.4f)'):format(
  first, last, os.clock() - start, -cfg.sigma ^ 2))
if not (last > first) then error('quickstart: the reward did not improve', 0) end
