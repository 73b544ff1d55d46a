-- diffrl.stats: the statistics of `diffrl eval` and the trainer's end table, in pure Lua.
--
--   stats.mean(xs)                                -- over the finite values (NaN when none)
--   stats.quantile(sorted, q)                     -- linear interpolation (R's type 7, numpy's default)
--   stats.bootstrap_ci(values, { resamples = 1000, seed = 0, level = 0.95 })
--     -> { mean, lo, hi, n }: the percentile bootstrap CI of the mean of `values`
--   stats.cluster_means(xs, units)                -- per-unit means, units in first-seen order
--   stats.win_rate(a, b, units, opts)
--     -> { rate, lo, hi, wins, ties, losses, n, units }
--   stats.paired_change(a, b, units, opts)        -- mean of a[i] - b[i]: { mean, lo, hi, n, units }
--
-- What is resampled: the units (prompts), never single images. The images of one
-- prompt share its difficulty, so they are not independent draws; resampling whole
-- prompts (a cluster bootstrap) gives a CI for "another set of prompts like these".
-- Each unit enters with the mean of its finite values; units with none are left out.
-- The resampling stream is a Park-Miller generator seeded by opts.seed, so the same
-- numbers give the same interval on every machine.
local M = {}

local function finite(x) return type(x) == 'number' and x == x and x ~= math.huge and x ~= -math.huge end
M.finite = finite

function M.mean(xs)
  local s, n = 0, 0
  for _, x in ipairs(xs) do if finite(x) then s, n = s + x, n + 1 end end
  return n > 0 and s / n or 0 / 0, n
end

-- Park-Miller "minimal standard" (multiplier 48271, modulus 2^31 - 1): exact in doubles.
function M.rng(seed)
  local x = (math.floor(seed or 0) % 2147483646) + 1
  return function(n) -- an integer in [1, n]
    x = (x * 48271) % 2147483647
    return math.floor((x - 1) / 2147483646 * n) + 1
  end
end

function M.quantile(sorted, q)
  local n = #sorted
  if n == 0 then return 0 / 0 end
  local h = (n - 1) * q + 1
  local lo = math.floor(h)
  if lo >= n then return sorted[n] end
  return sorted[lo] + (h - lo) * (sorted[lo + 1] - sorted[lo])
end

-- values: one number per unit (non-finite ones are dropped).
function M.bootstrap_ci(values, opts)
  opts = opts or {}
  local xs = {}
  for _, v in ipairs(values) do if finite(v) then xs[#xs + 1] = v end end
  local n = #xs
  local m = M.mean(xs)
  if n == 0 then return { mean = 0 / 0, lo = 0 / 0, hi = 0 / 0, n = 0 } end
  local B, level = opts.resamples or 1000, opts.level or 0.95
  local draw = M.rng(opts.seed or 0)
  local means = {}
  for b = 1, B do
    local s = 0
    for _ = 1, n do s = s + xs[draw(n)] end
    means[b] = s / n
  end
  table.sort(means)
  local alpha = (1 - level) / 2
  return { mean = m, lo = M.quantile(means, alpha), hi = M.quantile(means, 1 - alpha), n = n }
end

-- The mean of xs per unit (units[i] is the unit of xs[i]), over finite values;
-- returns the list of means and the units in first-seen order.
function M.cluster_means(xs, units)
  local order, sum, cnt = {}, {}, {}
  for i, x in ipairs(xs) do
    local u = units and units[i] or i
    if sum[u] == nil then order[#order + 1], sum[u], cnt[u] = u, 0, 0 end
    if finite(x) then sum[u], cnt[u] = sum[u] + x, cnt[u] + 1 end
  end
  local means = {}
  for j, u in ipairs(order) do means[j] = cnt[u] > 0 and sum[u] / cnt[u] or 0 / 0 end
  return means, order
end

-- Paired win rate of a over b: each pair (a[i], b[i]) counts 1 when a[i] > b[i],
-- 1/2 when they are equal (a tie is half a win: A == B gives exactly 0.5), 0
-- otherwise; pairs with a non-finite side are left out. The rate is the mean over
-- units of each unit's mean (equal to the mean over pairs when every unit has as
-- many pairs), its CI the bootstrap over units.
function M.win_rate(a, b, units, opts)
  if #a ~= #b then error(('win_rate: %d scores of A but %d of B'):format(#a, #b), 2) end
  local outcome, kept_units = {}, {}
  local wins, ties, losses = 0, 0, 0
  for i = 1, #a do
    local x, y = a[i], b[i]
    if finite(x) and finite(y) then
      local o = x > y and 1 or x == y and 0.5 or 0
      if o == 1 then wins = wins + 1 elseif o == 0.5 then ties = ties + 1 else losses = losses + 1 end
      outcome[#outcome + 1], kept_units[#kept_units + 1] = o, units and units[i] or i
    end
  end
  local per_unit = M.cluster_means(outcome, kept_units)
  local ci = M.bootstrap_ci(per_unit, opts)
  return { rate = ci.mean, lo = ci.lo, hi = ci.hi, wins = wins, ties = ties, losses = losses,
           n = #outcome, units = ci.n }
end

-- Paired mean change of a over b: the mean over units of each unit's mean of
-- a[i] - b[i], with the same cluster bootstrap. What the win rate leaves out: by how
-- much. A model that turns a few failures (0) into successes (1) and costs the rest
-- a little has a win rate below 1/2 and a positive change.
function M.paired_change(a, b, units, opts)
  if #a ~= #b then error(('paired_change: %d scores of A but %d of B'):format(#a, #b), 2) end
  local d, kept_units = {}, {}
  for i = 1, #a do
    if finite(a[i]) and finite(b[i]) then
      d[#d + 1], kept_units[#kept_units + 1] = a[i] - b[i], units and units[i] or i
    end
  end
  local ci = M.bootstrap_ci(M.cluster_means(d, kept_units), opts)
  return { mean = ci.mean, lo = ci.lo, hi = ci.hi, n = #d, units = ci.n }
end

return M
