-- diffrl.eval.html: eval.html, one self-contained page (images inline as data:
-- URIs, CSS and a few lines of JS inline, nothing fetched): the summary tables,
-- the reward-vs-step chart of --run, and every (prompt, seed) with each model's
-- image side by side (A | B) and scores; a click on a column head sorts by it.
--
--   html.render(summary, rows, { dir = DIR, models = labels, max_rows = 400,
--                                max_image_bytes = 48e6 }) -> text
-- Images past max_image_bytes (SD-size PNGs add up) are linked, not embedded.
local report = require 'diffrl.report'
local summary_mod = require 'diffrl.eval.summary'
local stats = require 'diffrl.stats'

local esc = report.escape
local M = {}

local CSS = [[
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1400px;margin:0 auto;padding:16px 22px 60px}
h1{font-size:24px;margin:6px 0}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f0f2f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e3e7ee}
th.asc::after{content:" \25B2"}th.desc::after{content:" \25BC"}
img.px{image-rendering:pixelated}
.better{color:#187a2f;font-weight:600}.worse{color:#b3261e}
.note{color:#555;max-width:900px}
svg.chart{background:#fff;border:1px solid #ddd;border-radius:4px;max-width:100%;height:auto}
svg.chart text{font:11px system-ui,sans-serif;fill:#444}svg.chart text.title{font-size:13px;font-weight:600;fill:#222}
svg.chart text.ytick{text-anchor:end;dominant-baseline:middle}svg.chart text.xtick{text-anchor:middle}
svg.chart text.xlabel{text-anchor:middle}svg.chart text.ylabel{text-anchor:middle}svg.chart text.legend{text-anchor:end}
svg.chart rect.plot{fill:#fff;stroke:#ccc}svg.chart line.grid{stroke:#eee}svg.chart line.tick{stroke:#999}
svg.chart polyline.line{fill:none;stroke-width:1.6}svg.chart polygon.band{opacity:.15}
.charts{display:flex;flex-wrap:wrap;gap:12px}
]]

-- Sorting: numbers by data-v (cells without one sort by their text), stable.
local JS = [[
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,col){th.addEventListener('click',function(){
    var asc=!th.classList.contains('asc');t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});
    th.classList.add(asc?'asc':'desc');var tb=t.tBodies[0],rows=Array.prototype.slice.call(tb.rows);
    function key(r){var c=r.cells[col],v=c.getAttribute('data-v');return v===null?c.textContent:parseFloat(v)}
    rows.map(function(r,i){return [key(r),i,r]}).sort(function(a,b){var x=a[0],y=b[0];
      if(typeof x==='number'&&isNaN(x))return 1;if(typeof y==='number'&&isNaN(y))return -1;
      var d=(x<y?-1:x>y?1:0)*(asc?1:-1);return d||a[1]-b[1]}).forEach(function(e){tb.appendChild(e[2])});
  })});
});
]]

local function fmt(x)
  if not stats.finite(x) then return 'n/a' end
  return ('%.4g'):format(x)
end

local function num_cell(x, class)
  local v = stats.finite(x) and ('%.17g'):format(x) or 'NaN'
  return ('<td class="n%s" data-v="%s">%s</td>'):format(class and (' ' .. class) or '', v, fmt(x))
end

local read_bytes = require('diffrl.rundir')._fs.read_file

-- budget.left: bytes of PNG still to embed; past it, a cell links the file instead
-- (the page stays small enough to open; the link works beside DIR/images/).
local function image_cell(dir, rel, caption, budget)
  local bytes = rel and read_bytes(dir .. '/' .. rel)
  if not bytes then return '<td>missing</td>' end
  if #bytes > budget.left then
    budget.linked = budget.linked + 1
    return ('<td><a href="%s">%s</a></td>'):format(esc(rel), esc(rel:match('[^/]*$')))
  end
  budget.left = budget.left - #bytes
  -- PNG width from the IHDR chunk: small images are drawn 3x with sharp pixels
  local w = bytes:byte(17) * 16777216 + bytes:byte(18) * 65536 + bytes:byte(19) * 256 + bytes:byte(20)
  local scale = w <= 64 and 3 or (w <= 128 and 2 or 1)
  local shown = math.min(w * scale, 256)
  return ('<td><img%s width="%d" alt="%s" title="%s" src="data:image/png;base64,%s"></td>'):format(
    scale > 1 and ' class="px"' or '', shown, esc(caption), esc(caption), report.base64(bytes))
end

local function summary_tables(s)
  local out = {}
  local function add(x) out[#out + 1] = x end
  for _, set in ipairs(s.sets) do
    add(('<h3>%s <small>(%d prompts)</small></h3>'):format(esc(set.name), set.prompts))
    add('<table class="sortable"><thead><tr><th>model</th>')
    for _, name in ipairs(set.rewards) do add(('<th>%s</th><th>95%% CI</th>'):format(esc(summary_mod.column_title(s, name)))) end
    add('</tr></thead><tbody>')
    for _, label in ipairs(s.models) do
      add(('<tr><td>%s</td>'):format(esc(label)))
      for _, name in ipairs(set.rewards) do
        local r = summary_mod.find(s, set.name, label, name)
        add(num_cell(r and r.mean))
        add(('<td>%s</td>'):format(r and ('[%s, %s]'):format(fmt(r.lo), fmt(r.hi)) or '-'))
      end
      add('</tr>')
    end
    add('</tbody></table>')
    local any = false
    for _, w in ipairs(s.win_rates) do
      if w.set == set.name then
        if not any then
          add(('<p>Win rate of %s over %s (same prompt and seed; a tie counts half):</p>'):format(esc(w.a), esc(w.b)))
          add('<table><tr><th>reward</th><th>win rate</th><th>95% CI</th><th>wins / ties / losses</th>' ..
              '<th>mean change</th><th>95% CI</th></tr>')
          any = true
        end
        local c = w.change
        add(('<tr><td>%s</td>%s<td>[%s, %s]</td><td>%d / %d / %d</td>%s<td>[%s, %s]</td></tr>'):format(
          esc(summary_mod.column_title(s, w.reward)), num_cell(w.rate), fmt(w.lo), fmt(w.hi), w.wins, w.ties, w.losses,
          num_cell(c.mean), fmt(c.lo), fmt(c.hi)))
      end
    end
    if any then add('</table>') end
  end
  return table.concat(out, '\n')
end

local function curve_section(s)
  local c = s.curve
  local out = { '<h2>Reward over training steps</h2>', ('<p class="note">%s</p>'):format(esc(c.note)),
                '<div class="charts">' }
  local xs = {}
  for i, p in ipairs(c.points) do xs[i] = p.step end
  for j, col in ipairs(c.columns) do
    local held, lo, hi, train = {}, {}, {}, {}
    for i, p in ipairs(c.points) do
      local r = p.heldout[j]
      held[i], lo[i], hi[i] = r and r.mean or 0 / 0, r and r.lo or 0 / 0, r and r.hi or 0 / 0
      train[i] = p.train[j] or 0 / 0
    end
    out[#out + 1] = report._line_chart {
      width = 440, height = 260, xs = xs, metric = col.set .. '/' .. col.reward,
      title = ('%s: %s'):format(col.set, summary_mod.column_title(s, col.reward)),
      series = { { name = 'held-out', ys = held, lo = lo, hi = hi }, { name = 'train', ys = train } },
    }
  end
  out[#out + 1] = '</div>'
  return table.concat(out, '\n')
end

function M.render(s, rows, o)
  local models, dir = o.models, o.dir
  local max_rows = o.max_rows or 400
  local budget = { left = o.max_image_bytes or 48e6, linked = 0 }
  local out = {}
  local function add(x) out[#out + 1] = x end
  add('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>diffrl eval</title>')
  add('<style>' .. CSS .. '</style></head><body><main>')
  add('<h1>diffrl eval</h1>')
  for _, line in ipairs(s.info.lines or {}) do add(('<p class="note">%s</p>'):format(esc(line))) end
  add('<h2>Summary</h2>')
  add(('<p class="note">Mean over prompts with a %d%% percentile-bootstrap CI (%d resamples of the prompts, seed %d).%s</p>')
    :format(math.floor(s.bootstrap.level * 100 + 0.5), s.bootstrap.resamples, s.bootstrap.seed,
            #s.group_rewards > 0 and ' SP: statistical parity (= -score of the group reward), one value per prompt; lower is fairer.' or ''))
  add(summary_tables(s))
  if s.curve then add(curve_section(s)) end
  -- the images: one table per prompt set, one row per (prompt, seed), one image column
  -- per model, then the scores of the rewards that set was scored with
  local by_key, keys = {}, {}
  local set_rewards, set_reward_order = {}, {}
  for _, r in ipairs(rows) do
    local k = r.set .. '\0' .. r.prompt .. '\0' .. r.seed
    if not by_key[k] then
      by_key[k] = {}
      keys[#keys + 1] = { key = k, set = r.set, prompt = r.prompt, seed = r.seed, index = r.prompt_index or 0 }
    end
    by_key[k][r.model] = r
    local seen = set_rewards[r.set] or {}
    set_rewards[r.set] = seen
    set_reward_order[r.set] = set_reward_order[r.set] or {}
    for name, v in pairs(r.scores or {}) do
      if not seen[name] and stats.finite(v) then
        seen[name] = true
        table.insert(set_reward_order[r.set], name)
      end
    end
  end
  table.sort(keys, function(x, y)
    if x.index ~= y.index then return x.index < y.index end
    return x.seed < y.seed
  end)
  local shown = math.min(#keys, max_rows)
  add(('<h2>Images (%d of %d prompt-seed pairs)</h2>'):format(shown, #keys))
  if #models == 2 then
    add('<p class="note">A | B with the same initial noise. Δ = A - B; click a column head to sort.</p>')
  end
  local sets, set_keys = {}, {}
  for i = 1, shown do
    local k = keys[i]
    if not set_keys[k.set] then set_keys[k.set] = {}; sets[#sets + 1] = k.set end
    table.insert(set_keys[k.set], k)
  end
  for si, set in ipairs(sets) do
    local reward_order = set_reward_order[set]
    table.sort(reward_order)
    add(('<h3>%s</h3>'):format(esc(set)))
    add(('<table class="sortable" id="images-%d"><thead><tr><th>prompt</th><th>seed</th>'):format(si))
    for _, label in ipairs(models) do add(('<th>%s</th>'):format(esc(label))) end
    for _, name in ipairs(reward_order) do
      for _, label in ipairs(models) do add(('<th>%s<br>%s</th>'):format(esc(name), esc(label))) end
      if #models == 2 then add(('<th>%s<br>Δ</th>'):format(esc(name))) end
    end
    add('</tr></thead><tbody>')
    for _, k in ipairs(set_keys[set]) do
      local cells = by_key[k.key]
      add(('<tr><td>%s</td><td class="n" data-v="%d">%d</td>'):format(esc(k.prompt), k.seed, k.seed))
      for _, label in ipairs(models) do
        local r = cells[label]
        add(r and image_cell(dir, r.image, ('%s: %s (seed %d)'):format(label, k.prompt, k.seed), budget) or '<td>-</td>')
      end
      for _, name in ipairs(reward_order) do
        local vals = {}
        for j, label in ipairs(models) do
          local r = cells[label]
          vals[j] = r and r.scores and r.scores[name]
        end
        for j = 1, #models do
          local class
          if #models == 2 and stats.finite(vals[1]) and stats.finite(vals[2]) and vals[1] ~= vals[2] then
            class = (vals[j] == math.max(vals[1], vals[2])) and 'better' or 'worse'
          end
          add(num_cell(vals[j] or 0 / 0, class))
        end
        if #models == 2 then
          add(num_cell((vals[1] and vals[2]) and vals[1] - vals[2] or 0 / 0))
        end
      end
      add('</tr>')
    end
    add('</tbody></table>')
  end
  if budget.linked > 0 then
    add(('<p class="note">%d images past the %g MB of inline images are linked (images/ beside this page), ' ..
         'not embedded.</p>'):format(budget.linked, (o.max_image_bytes or 48e6) / 1e6))
  end
  add('<script>' .. JS .. '</script></main></body></html>')
  return table.concat(out, '\n') .. '\n'
end

return M
