-- diffrl.report: a run folder (diffrl.rundir) as one self-contained HTML page.
--
--   local html = report.render(run_dir[, { title = '...' }])
--   local path = report.write(run_dir[, out_path])      -- default run_dir/report.html
--
-- The page: the run's facts (recipe, start time, git commit, build), reward curves
-- per task with a +-std band and a baseline-vs-final table, small charts of the
-- training statistics, the held-out before/after grids (heldout/, if the run has
-- one), every sample grid with its prompts, and config.lua. Charts are SVG drawn
-- here; images are the run's own PNGs as base64 data: URIs; CSS is inline. The file
-- loads nothing from anywhere, so it can be mailed or opened offline.
--
-- metrics.jsonl writes NaN/inf as null (listed under "nonfinite"): such points
-- break a curve rather than bend it. Everything read from files is HTML-escaped.
local ffi = require 'ffi'
local bit = require 'bit'
local api = require 'diffrl.core.ffi'
local fs = require('diffrl.rundir')._fs

local raise = api.raise
local M = {}

pcall(ffi.cdef, 'char *realpath(const char *path, char *resolved_path);')

-- ---- small helpers ----------------------------------------------------------------

local read_file = fs.read_file -- the text of a file, or nil

local ESCAPES = { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;', ["'"] = '&#39;' }

-- Text (from any file) as HTML text or attribute value; control bytes dropped.
local function esc(s)
  s = tostring(s):gsub('[%z\1-\8\11\12\14-\31\127]', '')
  return (s:gsub('[&<>"\']', ESCAPES))
end
M.escape = esc

local function is_finite(x)
  return type(x) == 'number' and x == x and x ~= math.huge and x ~= -math.huge
end

local function fmt(x)
  if not is_finite(x) then return 'n/a' end
  if x == math.floor(x) and math.abs(x) < 1e15 then return ('%d'):format(x) end
  return ('%.4g'):format(x)
end

local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local b64_digits = ffi.new('uint8_t[64]')
for i = 1, 64 do b64_digits[i - 1] = B64:byte(i) end
local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift

-- RFC 4648 base64 (with = padding) of a byte string.
function M.base64(s)
  local n = #s
  local src = ffi.cast('const uint8_t *', s)
  local out_len = 4 * math.ceil(n / 3)
  local out = ffi.new('uint8_t[?]', out_len + 1)
  local d = b64_digits
  local full = n - n % 3
  local j = 0
  for i = 0, full - 1, 3 do
    local v = bor(lshift(src[i], 16), lshift(src[i + 1], 8), src[i + 2])
    out[j] = d[rshift(v, 18)]
    out[j + 1] = d[band(rshift(v, 12), 63)]
    out[j + 2] = d[band(rshift(v, 6), 63)]
    out[j + 3] = d[band(v, 63)]
    j = j + 4
  end
  local rest = n - full
  if rest > 0 then
    local v = lshift(src[full], 16)
    if rest == 2 then v = bor(v, lshift(src[full + 1], 8)) end
    out[j] = d[rshift(v, 18)]
    out[j + 1] = d[band(rshift(v, 12), 63)]
    out[j + 2] = rest == 2 and d[band(rshift(v, 6), 63)] or 61 -- '='
    out[j + 3] = 61
  end
  return ffi.string(out, out_len)
end

-- width, height from a PNG's IHDR; nil if the bytes are not a PNG.
local function png_size(bytes)
  if #bytes < 24 or bytes:sub(1, 8) ~= '\137PNG\r\n\26\n' or bytes:sub(13, 16) ~= 'IHDR' then
    return nil
  end
  local function u32(i)
    local a, b, c, d = bytes:byte(i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
  return u32(17), u32(21)
end

local function absolute(path)
  local buf = ffi.new('char[4096]')
  local ok, r = pcall(function() return ffi.C.realpath(path, buf) end)
  if ok and r ~= nil then return ffi.string(buf) end
  return path
end

-- ---- reading the run folder --------------------------------------------------------

-- Rows of metrics.jsonl ordered by step (a step logged twice keeps its last line),
-- plus the number of lines that were not a JSON object with a numeric step.
local function read_metrics(path)
  local text = read_file(path)
  if not text then return nil end
  local cjson = require 'cjson.safe'
  local by_step, steps, unreadable = {}, {}, 0
  for line in text:gmatch('[^\n]+') do
    local m = cjson.decode(line)
    if type(m) == 'table' and is_finite(m.step) then
      if not by_step[m.step] then steps[#steps + 1] = m.step end
      by_step[m.step] = m
    elseif line:match('%S') then
      unreadable = unreadable + 1
    end
  end
  table.sort(steps)
  local rows = {}
  for i, s in ipairs(steps) do rows[i] = by_step[s] end
  return rows, unreadable
end

-- xs (steps) and ys (NaN where the row lacks a finite value) of one metric; nil if no
-- row has the key at all.
local function series(rows, key)
  local xs, ys, present = {}, {}, false
  for i, r in ipairs(rows) do
    local v = r[key]
    if v ~= nil then present = true end
    xs[i] = r.step
    ys[i] = is_finite(v) and v or 0 / 0
  end
  if not present then return nil end
  return xs, ys
end

local function first_last(xs, ys)
  local fi, li
  for i = 1, #ys do
    if is_finite(ys[i]) then
      fi = fi or i
      li = i
    end
  end
  if not fi then return nil end
  return { step = xs[fi], value = ys[fi] }, { step = xs[li], value = ys[li] }
end

-- ---- SVG charts ---------------------------------------------------------------------

local COLORS = { '#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2' }

-- Round steps of 1, 2 or 5 x 10^k covering [lo, hi] with about n intervals.
local function nice_ticks(lo, hi, n, integer)
  local raw = (hi - lo) / n
  local mag = 10 ^ math.floor(math.log10(raw))
  local step = 10 * mag
  for _, m in ipairs { 1, 2, 5 } do
    if m * mag >= raw then step = m * mag break end
  end
  if integer and step < 1 then step = 1 end
  local ticks = {}
  local first = math.ceil(lo / step - 1e-9)
  local last = math.floor(hi / step + 1e-9)
  for k = first, last do
    local v = k * step
    if math.abs(v) < step * 1e-9 then v = 0 end
    ticks[#ticks + 1] = v
  end
  return ticks, step
end

local function tick_label(v, step)
  if v == 0 then return '0' end
  if step >= 1e-3 and math.abs(v) < 1e6 then
    local digits = math.max(0, math.ceil(-math.log10(step) - 1e-9))
    return (('%%.%df'):format(digits)):format(v)
  end
  return ('%.3g'):format(v)
end

local function num(x) return ('%.1f'):format(x) end

-- An SVG line chart. opts: metric (the key, for data-metric), title, width, height,
-- xs (steps), series = { { name, ys, lo, hi (optional band) }, ... }, ylabel.
-- Each series is one polyline per run of finite points; a run of one point is a dot.
local function line_chart(opts)
  local W, H = opts.width, opts.height
  local ml, mr, mt, mb = 66, 14, 30, 42
  local pw, ph = W - ml - mr, H - mt - mb
  local xs = opts.xs
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(opts.series) do
    for i = 1, #xs do
      for _, v in ipairs { s.ys[i], s.lo and s.lo[i], s.hi and s.hi[i] } do
        if is_finite(v) then
          if v < ymin then ymin = v end
          if v > ymax then ymax = v end
          if xs[i] < xmin then xmin = xs[i] end
          if xs[i] > xmax then xmax = xs[i] end
        end
      end
    end
  end
  local out = {}
  local function add(...) for i = 1, select('#', ...) do out[#out + 1] = select(i, ...) end end
  add(('<svg class="chart" data-metric="%s" viewBox="0 0 %d %d" width="%d" height="%d" role="img" ' ..
       'aria-label="%s">'):format(esc(opts.metric), W, H, W, H, esc(opts.title)))
  add(('<text class="title" x="%d" y="18">%s</text>'):format(ml, esc(opts.title)))
  if ymin > ymax then
    add(('<rect class="plot" x="%d" y="%d" width="%d" height="%d"/>'):format(ml, mt, pw, ph))
    add(('<text class="empty" x="%s" y="%s">no finite values</text></svg>'):format(num(ml + pw / 2),
        num(mt + ph / 2)))
    return table.concat(out)
  end
  if xmin == xmax then xmin, xmax = xmin - 1, xmax + 1 end
  if ymin == ymax then
    local pad = math.abs(ymin) * 0.05
    if pad == 0 then pad = 1 end
    ymin, ymax = ymin - pad, ymax + pad
  end
  local _, ystep = nice_ticks(ymin, ymax, 5)
  ymin, ymax = math.floor(ymin / ystep + 1e-9) * ystep, math.ceil(ymax / ystep - 1e-9) * ystep
  local yticks = nice_ticks(ymin, ymax, 5)
  local xticks, xstep = nice_ticks(xmin, xmax, math.max(2, math.floor(pw / 70)), true)
  local function X(x) return ml + (x - xmin) / (xmax - xmin) * pw end
  local function Y(y) return mt + (ymax - y) / (ymax - ymin) * ph end

  add(('<rect class="plot" x="%d" y="%d" width="%d" height="%d"/>'):format(ml, mt, pw, ph))
  for _, v in ipairs(yticks) do
    local y = num(Y(v))
    add(('<line class="grid" x1="%d" x2="%d" y1="%s" y2="%s"/>'):format(ml, ml + pw, y, y))
    add(('<text class="ytick" x="%d" y="%s">%s</text>'):format(ml - 5, y, tick_label(v, ystep)))
  end
  for _, v in ipairs(xticks) do
    local x = num(X(v))
    add(('<line class="tick" x1="%s" x2="%s" y1="%d" y2="%d"/>'):format(x, x, mt + ph, mt + ph + 4))
    add(('<text class="xtick" x="%s" y="%d">%s</text>'):format(x, mt + ph + 16, tick_label(v, xstep)))
  end
  add(('<text class="xlabel" x="%s" y="%d">step</text>'):format(num(ml + pw / 2), H - 6))
  if opts.ylabel then
    add(('<text class="ylabel" transform="translate(13 %s) rotate(-90)">%s</text>'):format(
      num(mt + ph / 2), esc(opts.ylabel)))
  end

  local dots = #xs <= 60
  for si, s in ipairs(opts.series) do
    local color = s.color or COLORS[(si - 1) % #COLORS + 1]
    if s.lo and s.hi then -- the band, one polygon per run of finite points
      local upper, lower = {}, {}
      local function flush()
        if #upper > 1 then
          for i = #lower, 1, -1 do upper[#upper + 1] = lower[i] end
          add(('<polygon class="band" fill="%s" points="%s"/>'):format(color, table.concat(upper, ' ')))
        end
        upper, lower = {}, {}
      end
      for i = 1, #xs do
        if is_finite(s.ys[i]) and is_finite(s.lo[i]) and is_finite(s.hi[i]) then
          upper[#upper + 1] = num(X(xs[i])) .. ',' .. num(Y(s.hi[i]))
          lower[#lower + 1] = num(X(xs[i])) .. ',' .. num(Y(s.lo[i]))
        else
          flush()
        end
      end
      flush()
    end
    local pts, singles = {}, {}
    local function flush()
      if #pts > 1 then
        add(('<polyline class="line" data-series="%s" stroke="%s" points="%s"/>'):format(
          esc(s.name), color, table.concat(pts, ' ')))
      elseif #pts == 1 then
        singles[#singles + 1] = pts[1]
      end
      pts = {}
    end
    for i = 1, #xs do
      if is_finite(s.ys[i]) then pts[#pts + 1] = num(X(xs[i])) .. ',' .. num(Y(s.ys[i])) else flush() end
    end
    flush()
    for i = 1, #xs do
      local v = s.ys[i]
      if is_finite(v) then
        local p = num(X(xs[i])) .. ',' .. num(Y(v))
        local lone = false
        for _, q in ipairs(singles) do if q == p then lone = true end end
        if dots or lone then
          local cx, cy = p:match('([^,]+),(.+)')
          add(('<circle cx="%s" cy="%s" r="%s" fill="%s"><title>%s step %s: %s</title></circle>'):format(
            cx, cy, lone and '3.5' or '2.2', color, esc(s.name), fmt(xs[i]), fmt(v)))
        end
      end
    end
  end
  if #opts.series > 1 or (opts.series[1] and opts.series[1].lo) then
    local x = ml + pw - 4
    for si = #opts.series, 1, -1 do
      local s = opts.series[si]
      local color = s.color or COLORS[(si - 1) % #COLORS + 1]
      local label = #opts.series > 1 and s.name or 'mean'
      if s.lo then label = label .. ' ± std' end
      add(('<text class="legend" x="%d" y="18" fill="%s">%s</text>'):format(x, color, esc(label)))
      x = x - 8 * #label - 14
    end
  end
  add('</svg>')
  return table.concat(out)
end
M._line_chart = line_chart

-- ---- page sections ------------------------------------------------------------------

local CSS = [[
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:32px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:14px 0 6px}
.sub{color:#555;margin:0 0 12px}
table{border-collapse:collapse;background:#fff;font-size:14px}
td,th{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#187a2f}.down{color:#b3261e}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #ddd;border-radius:4px;max-width:100%;height:auto}
svg.chart text{font:11px system-ui,sans-serif;fill:#444}
svg.chart text.title{font-size:13px;font-weight:600;fill:#222}
svg.chart text.ytick{text-anchor:end;dominant-baseline:middle}
svg.chart text.xtick,svg.chart text.xlabel,svg.chart text.ylabel,svg.chart text.empty{text-anchor:middle}
svg.chart text.legend{text-anchor:end;font-weight:600}
svg.chart .plot{fill:#fff;stroke:#bbb}svg.chart .grid{stroke:#eee}svg.chart .tick{stroke:#999}
svg.chart .line{fill:none;stroke-width:1.8;stroke-linejoin:round}svg.chart .band{opacity:.16;stroke:none}
.pair{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:10px;max-width:100%;box-sizing:border-box}
figcaption{font-weight:600;margin-bottom:6px}
img.grid{display:block;max-width:100%;height:auto}img.px{image-rendering:pixelated}
ol.prompts{margin:8px 0 0;padding-left:28px;font-size:13px;color:#333;max-width:560px}
details{margin:14px 0}summary{cursor:pointer;font-weight:600}
pre{background:#fff;border:1px solid #ddd;padding:10px;overflow:auto;font-size:13px}
.note{color:#777;font-size:13px}
]]

-- The <figure> of one PNG with its prompts; nil if the file is missing or not a PNG.
local function figure(path, caption, prompts_path, show_prompts)
  local bytes = read_file(path)
  if not bytes then return nil end
  local w, h = png_size(bytes)
  if not w then
    return ('<figure><figcaption>%s</figcaption><p class="note">%s is not a PNG file</p></figure>')
      :format(esc(caption), esc(path))
  end
  -- Small grids (a 32x32 model) are shown enlarged, pixel for pixel.
  local scale = math.max(1, math.floor(320 / w))
  local out = {
    ('<figure><figcaption>%s</figcaption><img class="grid%s" width="%d" height="%d" alt="%s" ' ..
     'src="data:image/png;base64,%s">'):format(esc(caption), scale > 1 and ' px' or '', w * scale,
      h * scale, esc(caption), M.base64(bytes)),
  }
  local prompts = show_prompts ~= false and prompts_path and read_file(prompts_path)
  if prompts then
    out[#out + 1] = '<ol class="prompts">'
    for line in prompts:gmatch('[^\n]+') do out[#out + 1] = '<li>' .. esc(line) .. '</li>' end
    out[#out + 1] = '</ol>'
  end
  out[#out + 1] = '</figure>'
  return table.concat(out)
end

local function reward_table(rows)
  local out = { '<table class="baseline"><tr><th>reward</th><th>first (step)</th><th>last (step)</th>' ..
                '<th>change</th></tr>' }
  for _, r in ipairs(rows) do
    local a, b = r.first, r.last
    if a then
      local d = b.value - a.value
      local rel = a.value ~= 0 and (' (%+.1f%%)'):format(100 * d / math.abs(a.value)) or ''
      out[#out + 1] = ('<tr><td>%s</td><td class="n">%s (%s)</td><td class="n">%s (%s)</td>' ..
                       '<td class="n %s">%+.4g%s</td></tr>'):format(esc(r.name), fmt(a.value), fmt(a.step),
        fmt(b.value), fmt(b.step), d > 0 and 'up' or (d < 0 and 'down' or ''), d, rel)
    else
      out[#out + 1] = ('<tr><td>%s</td><td colspan="3" class="note">no finite values</td></tr>')
        :format(esc(r.name))
    end
  end
  out[#out + 1] = '</table>'
  return table.concat(out)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function scalar_text(v)
  if type(v) == 'table' then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = tostring(x) end
    return table.concat(parts, ' ')
  end
  return tostring(v)
end

-- train.iterations from config.lua, read in an empty environment; nil if it can't be.
local function configured_iterations(config_text)
  if not config_text then return nil end
  local chunk = loadstring(config_text, '=config.lua')
  if not chunk then return nil end
  setfenv(chunk, {})
  local ok, cfg = pcall(chunk)
  if ok and type(cfg) == 'table' and type(cfg.train) == 'table' and is_finite(cfg.train.iterations) then
    return cfg.train.iterations
  end
  return nil
end

-- The grids of a folder: { { path, stem, step } } of step_NNNNNN.png, by step.
local function sample_grids(dir)
  local grids = {}
  for _, name in ipairs(fs.list_dir(dir) or {}) do
    local s = name:match('^step_(%d+)%.png$')
    if s then
      grids[#grids + 1] = { path = dir .. '/' .. name, txt = dir .. '/' .. name:gsub('%.png$', '.txt'),
                            step = tonumber(s) }
    end
  end
  table.sort(grids, function(a, b) return a.step < b.step end)
  return grids
end

local function heldout_section(dir)
  local names = fs.list_dir(dir)
  if not names then return nil end
  local pngs = {}
  for _, name in ipairs(names) do
    if name:match('%.png$') then pngs[#pngs + 1] = name:gsub('%.png$', '') end
  end
  if #pngs == 0 then return nil end
  local rank = { before = 1, after = 2 }
  table.sort(pngs, function(a, b)
    local ra, rb = rank[a] or 3, rank[b] or 3
    if ra ~= rb then return ra < rb end
    return a < b
  end)
  -- the same prompts under every grid: list them once, below the row
  local texts, same = {}, true
  for i, stem in ipairs(pngs) do
    texts[i] = read_file(dir .. '/' .. stem .. '.txt')
    if texts[i] ~= texts[1] then same = false end
  end
  local out = { '<section id="heldout"><h2>Held-out prompts: before / after</h2><div class="pair">' }
  for _, stem in ipairs(pngs) do
    out[#out + 1] = figure(dir .. '/' .. stem .. '.png', stem, dir .. '/' .. stem .. '.txt', not same)
  end
  out[#out + 1] = '</div>'
  if same and texts[1] then
    out[#out + 1] = '<ol class="prompts">'
    for line in texts[1]:gmatch('[^\n]+') do out[#out + 1] = '<li>' .. esc(line) .. '</li>' end
    out[#out + 1] = '</ol>'
  end
  out[#out + 1] = '</section>'
  return table.concat(out)
end

-- eval.jsonl (the trainer's held-out evaluations, step 0 = before training): a
-- chart per task when there are 3 or more, and the before/after table.
local function heldout_rewards(evals)
  local tasks, seen = {}, {}
  for _, r in ipairs(evals) do
    for k in pairs(r) do
      local t = type(k) == 'string' and k:match('^heldout_reward/(.+)$')
      if t and not seen[t] then seen[t], tasks[#tasks + 1] = true, t end
    end
  end
  table.sort(tasks)
  if #tasks == 0 then return '' end
  local out, table_rows = { '<section id="heldout-rewards"><h2>Held-out rewards</h2>\n<div class="charts">' }, {}
  for _, task in ipairs(tasks) do
    local xs, ys = series(evals, 'heldout_reward/' .. task)
    local _, sd = series(evals, 'heldout_std/' .. task)
    if #evals >= 3 then
      local s = { name = task, ys = ys }
      if sd then
        s.lo, s.hi = {}, {}
        for i = 1, #ys do s.lo[i], s.hi[i] = ys[i] - sd[i], ys[i] + sd[i] end
      end
      out[#out + 1] = line_chart { metric = 'heldout_reward/' .. task, title = task .. ' (held out)', width = 560,
                                   height = 300, xs = xs, series = { s }, ylabel = 'reward' }
    end
    local a, b = first_last(xs, ys)
    table_rows[#table_rows + 1] = { name = task, first = a, last = b }
  end
  out[#out + 1] = '</div>\n<h3>Before vs after training (held-out prompts, the same noise)</h3>'
  out[#out + 1] = reward_table(table_rows)
  out[#out + 1] = '</section>\n'
  return table.concat(out)
end

local STAT_CHARTS = { 'loss', 'clipfrac', 'approx_kl', 'grad_norm', 'images_per_s' }

-- ---- the page -------------------------------------------------------------------------

local function check_folder(dir)
  if type(dir) ~= 'string' or dir == '' then
    raise('report: the run folder must be a path, got ' .. tostring(dir))
  end
  dir = dir == '/' and dir or dir:gsub('/+$', '')
  local names = fs.list_dir(dir)
  if not names then raise(('report: there is no run folder %s'):format(dir)) end
  if not fs.exists(dir .. '/run.json') then
    raise(('report: %s is not a run folder: %s/run.json is missing'):format(dir, dir))
  end
  if not fs.exists(dir .. '/metrics.jsonl') then
    raise(('report: %s/metrics.jsonl is missing (the run has not logged a step yet)'):format(dir))
  end
  return dir
end

function M.render(run_dir, opts)
  local dir = check_folder(run_dir)
  opts = api.check_options('report.render', opts, { title = true })
  local cjson = require 'cjson.safe'
  local info = cjson.decode(read_file(dir .. '/run.json') or '')
  if type(info) ~= 'table' then raise(('report: %s/run.json is not valid JSON'):format(dir)) end
  local rows, unreadable = read_metrics(dir .. '/metrics.jsonl')
  if not rows then raise(('report: cannot read %s/metrics.jsonl'):format(dir)) end
  local config_text = read_file(dir .. '/config.lua')
  local name = absolute(dir):match('([^/]+)$') or dir
  local title = opts.title or name

  local out = {}
  local function add(s) out[#out + 1] = s end
  add('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">')
  add('<meta name="viewport" content="width=device-width, initial-scale=1">')
  add(('<title>%s — diffrl report</title><style>%s</style></head><body><main>\n'):format(esc(title), CSS))

  -- the header: what ran, when, from which code
  local last_step = rows[#rows] and rows[#rows].step
  local planned = configured_iterations(config_text)
  local tasks = {}
  do
    local seen = {}
    for _, r in ipairs(rows) do
      for k in pairs(r) do
        local task = type(k) == 'string' and k:match('^reward_mean/(.+)$')
        if task and not seen[task] then seen[task] = true tasks[#tasks + 1] = task end
      end
    end
    table.sort(tasks)
  end
  add(('<h1>%s</h1>\n'):format(esc(title)))
  local iterations = last_step and fmt(last_step) or '0'
  if planned then iterations = iterations .. ' of ' .. fmt(planned) end
  add(('<p class="sub">recipe <b>%s</b> · %s iterations · %d task%s · started %s</p>\n'):format(
    esc(info.recipe or '?'), esc(iterations), #tasks, #tasks == 1 and '' or 's', esc(info.start_time or '?')))
  local facts = {
    { 'run folder', absolute(dir) },
    { 'recipe', info.recipe },
    { 'start time', info.start_time },
    { 'git commit', info.git_commit },
    { 'iterations', iterations .. (#rows ~= (last_step or 0) and (' (%d logged)'):format(#rows) or '') },
    { 'tasks', #tasks > 0 and table.concat(tasks, ', ') or nil },
    { 'host', info.hostname },
    { 'command', type(info.argv) == 'table' and scalar_text(info.argv) or nil },
  }
  local ckpts = {}
  for _, n in ipairs(fs.list_dir(dir .. '/checkpoints') or {}) do
    local s = n:match('^step_(%d+)$')
    if s then ckpts[#ckpts + 1] = tostring(tonumber(s)) end
  end
  if #ckpts > 0 then facts[#facts + 1] = { 'checkpoints', 'step ' .. table.concat(ckpts, ', ') } end
  local shown = { recipe = true, start_time = true, git_commit = true, hostname = true, argv = true,
                  build = true, tasks = true }
  for _, k in ipairs(sorted_keys(info)) do
    if not shown[k] and type(info[k]) ~= 'table' then facts[#facts + 1] = { k, scalar_text(info[k]) } end
  end
  add('<table class="facts">')
  for _, f in ipairs(facts) do
    if f[2] ~= nil then add(('<tr><th>%s</th><td>%s</td></tr>'):format(esc(f[1]), esc(f[2]))) end
  end
  add('</table>\n')
  if type(info.build) == 'table' then
    local b = info.build
    add(('<details><summary>build: diffrl %s, %s, %s</summary><table class="build">'):format(
      esc(b.version or '?'), esc(b.build_type or '?'), esc(b.compiler or '?')))
    for _, k in ipairs(sorted_keys(b)) do
      add(('<tr><th>%s</th><td>%s</td></tr>'):format(esc(k), esc(scalar_text(b[k]))))
    end
    add('</table></details>\n')
  end
  if unreadable > 0 then
    add(('<p class="note">%d line%s of metrics.jsonl could not be read and %s left out.</p>\n'):format(
      unreadable, unreadable == 1 and '' or 's', unreadable == 1 and 'is' or 'are'))
  end

  -- held-out before/after, if a run wrote it
  local held = heldout_section(dir .. '/heldout')
  if held then add(held .. '\n') end
  local evals = read_metrics(dir .. '/eval.jsonl')
  if evals and #evals > 0 then add(heldout_rewards(evals)) end

  -- reward curves
  add('<section id="rewards"><h2>Rewards</h2>\n')
  local reward_rows = {}
  local function reward_chart(key, label)
    local xs, ys = series(rows, key)
    if not xs then return false end
    local std_key = key:gsub('^reward_mean', 'reward_std')
    local _, sd = series(rows, std_key)
    local s = { name = label, ys = ys }
    if sd then
      s.lo, s.hi = {}, {}
      for i = 1, #ys do s.lo[i], s.hi[i] = ys[i] - sd[i], ys[i] + sd[i] end
    end
    add(line_chart { metric = key, title = label, width = 560, height = 300, xs = xs, series = { s },
                     ylabel = 'reward' })
    local a, b = first_last(xs, ys)
    reward_rows[#reward_rows + 1] = { name = label, first = a, last = b }
    return true
  end
  add('<div class="charts">')
  local overall_differs = #tasks ~= 1
  if #tasks == 1 then
    local _, all = series(rows, 'reward_mean')
    local _, one = series(rows, 'reward_mean/' .. tasks[1])
    for i = 1, all and #all or 0 do
      if all[i] ~= one[i] and (all[i] == all[i] or one[i] == one[i]) then overall_differs = true end
    end
  end
  local any = false
  if overall_differs then any = reward_chart('reward_mean', 'reward_mean (all tasks)') or any end
  for _, task in ipairs(tasks) do any = reward_chart('reward_mean/' .. task, task) or any end
  add('</div>\n')
  if any then
    add('<h3>Baseline vs final</h3>' .. reward_table(reward_rows) .. '\n')
  else
    add('<p class="note">metrics.jsonl holds no reward_mean.</p>\n')
  end
  add('</section>\n')

  -- training statistics
  local stats = {}
  for _, key in ipairs(STAT_CHARTS) do
    local xs, ys = series(rows, key)
    if xs then
      stats[#stats + 1] = line_chart { metric = key, title = key, width = 370, height = 210, xs = xs,
                                       series = { { name = key, ys = ys } } }
    end
  end
  if #stats > 0 then
    add('<section id="training"><h2>Training</h2><div class="charts">' .. table.concat(stats) ..
        '</div></section>\n')
  end

  -- sample grids
  local grids = sample_grids(dir .. '/samples')
  if #grids > 0 then
    add('<section id="samples"><h2>Sample grids</h2>\n')
    add('<p class="note">Prompts are listed left to right, top to bottom.</p><div class="pair">')
    local first, last = grids[1], grids[#grids]
    add(figure(first.path, ('before: step %d'):format(first.step), first.txt) or '')
    if #grids > 1 then add(figure(last.path, ('after: step %d'):format(last.step), last.txt) or '') end
    add('</div>\n')
    add(('<details><summary>All %d grid%s</summary><div class="pair">'):format(#grids,
        #grids == 1 and '' or 's'))
    for _, g in ipairs(grids) do add(figure(g.path, ('step %d'):format(g.step), g.txt) or '') end
    add('</div></details></section>\n')
  end

  add('<section id="config"><h2>Config</h2>\n')
  if config_text then
    add('<pre>' .. esc(config_text) .. '</pre>')
  else
    add(('<p class="note">%s/config.lua is missing.</p>'):format(esc(dir)))
  end
  add('</section>\n')
  add(('<p class="note">diffrl report · %s</p>\n'):format(esc(os.date('!%Y-%m-%d %H:%M:%SZ'))))
  add('</main></body></html>\n')
  return table.concat(out)
end

-- Writes the page (temp file, then rename) to out_path, default run_dir/report.html;
-- returns the path.
function M.write(run_dir, out_path, opts)
  local html = M.render(run_dir, opts)
  out_path = out_path or (run_dir:gsub('/+$', '') .. '/report.html')
  local tmp = out_path .. '.tmp'
  local f, err = io.open(tmp, 'wb')
  if not f then raise(('report: cannot write %s'):format(err or out_path)) end
  local ok, werr = f:write(html)
  f:close()
  if not ok or not os.rename(tmp, out_path) then
    os.remove(tmp)
    raise(('report: writing %s failed%s'):format(out_path, werr and (': ' .. tostring(werr)) or ''))
  end
  return out_path
end

return M
