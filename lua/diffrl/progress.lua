-- diffrl.progress: progress bars, redrawn in place on a terminal, plain lines otherwise.
--
--   local bar = progress.bar { total = n, label = 'iteration' }
--   for i = 1, n do ...; bar:update(i, ('reward %.3f'):format(r)) end
--   bar:finish()
--
--   pipe:sample { ..., progress = progress.callback('sampling') }   -- fn(i, n)
--
-- On a TTY:  "iteration [#########.....................]  3/10  0:12<0:28  4.00 s/it  extra"
-- (elapsed<ETA, then the rate), redrawn at most every `redraw_interval` seconds (0.1)
-- and always at the end. Elsewhere (logs, pipes):
--   "iteration 3/10 (30%) 0:12<0:28 4.00 s/it  extra"
-- when another tenth is done or `min_interval` seconds (60) have passed since the
-- last line. opts.initial (0): the count a resumed run starts from; the rate and ETA
-- count only what came after it. opts.clock (seconds, a function) makes the text
-- deterministic for tests; the default is the monotonic clock.
local ffi = require 'ffi'

local M = {}

pcall(ffi.cdef, 'struct diffrl_timespec { long tv_sec; long tv_nsec; };')
pcall(ffi.cdef, 'int clock_gettime(int clk_id, struct diffrl_timespec *tp);')

local CLOCK_MONOTONIC = 1
local monotonic
do
  local ts = ffi.new('struct diffrl_timespec')
  local ok = pcall(function() return ffi.C.clock_gettime(CLOCK_MONOTONIC, ts) end)
  if ok then
    monotonic = function()
      ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
      return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    end
  else
    monotonic = os.time
  end
end
M.clock = monotonic

-- 75 -> "1:15", 3725 -> "1:02:05"
function M.format_duration(s)
  if s ~= s or s == math.huge or s < 0 then return '?' end
  s = math.floor(s + 0.5)
  local h, m, sec = math.floor(s / 3600), math.floor(s / 60) % 60, s % 60
  if h > 0 then return ('%d:%02d:%02d'):format(h, m, sec) end
  return ('%d:%02d'):format(m, sec)
end

-- "2.50 it/s", or "4.00 s/it" when slower than one per second
local function format_rate(done, elapsed, unit)
  if done <= 0 or elapsed <= 0 then return '? ' .. unit .. '/s' end
  local rate = done / elapsed
  if rate >= 1 then return ('%.2f %s/s'):format(rate, unit) end
  return ('%.2f s/%s'):format(1 / rate, unit)
end

local function detect_tty(out)
  local fd = (out == io.stderr and 2) or (out == io.stdout and 1) or nil
  if not fd then return false end
  local ok, host = pcall(require, 'diffrl.host')
  if not ok or type(host) ~= 'table' or not host.isatty then return false end
  return host.isatty(fd) and true or false
end

local Bar = {}
Bar.__index = Bar

local KNOWN = { total = true, label = true, out = true, tty = true, clock = true, width = true,
                min_interval = true, redraw_interval = true, unit = true, initial = true }

function M.bar(opts)
  opts = opts or {}
  for k in pairs(opts) do
    if not KNOWN[k] then error(("progress.bar: unknown option '%s'"):format(tostring(k)), 2) end
  end
  local total = opts.total
  if type(total) ~= 'number' or total < 1 or total % 1 ~= 0 then
    error(('progress.bar: total must be a positive integer, got %s'):format(tostring(total)), 2)
  end
  local out = opts.out or io.stderr
  local tty = opts.tty
  if tty == nil then tty = detect_tty(out) end
  local clock = opts.clock or monotonic
  return setmetatable({
    total = total, label = opts.label or 'progress', out = out, tty = tty, clock = clock,
    width = opts.width or 30, unit = opts.unit or 'it',
    min_interval = opts.min_interval or 60, redraw_interval = opts.redraw_interval or 0.1,
    initial = opts.initial or 0, start = clock(), last_time = nil, last_tenth = -1, drawn = false, done = false, i = 0,
  }, Bar)
end

-- The text of the bar at i (without "\r" or newline).
function Bar:text(i, extra, now)
  local n = self.total
  local elapsed = now - self.start
  local done = i - self.initial
  local eta = (done > 0 and elapsed > 0) and elapsed * (n - i) / done or 0 / 0
  if i >= n then eta = 0 end
  local times = ('%s<%s'):format(M.format_duration(elapsed), M.format_duration(eta))
  local rate = format_rate(done, elapsed, self.unit)
  local tail = (extra and extra ~= '') and ('  ' .. extra) or ''
  local digits = #tostring(n)
  if self.tty then
    local fill = math.max(0, math.min(self.width, math.floor(self.width * i / n)))
    return ('%s [%s%s] %' .. digits .. 'd/%d  %s  %s%s'):format(self.label, ('#'):rep(fill),
      ('.'):rep(self.width - fill), i, n, times, rate, tail)
  end
  return ('%s %d/%d (%d%%) %s %s%s'):format(self.label, i, n, math.floor(100 * i / n), times,
                                           rate, tail)
end

function Bar:update(i, extra)
  if self.done then return end
  self.i = i
  local now = self.clock()
  if self.tty then
    if i < self.total and self.last_time and now - self.last_time < self.redraw_interval then return end
    self.out:write('\r', self:text(i, extra, now), '\27[K')
    self.drawn = true
    if i >= self.total then
      self.out:write('\n')
      self.drawn, self.done = false, true
    end
  else
    local tenth = math.floor(10 * i / self.total)
    local due = tenth ~= self.last_tenth or
                (self.last_time ~= nil and now - self.last_time >= self.min_interval)
    if not due then return end
    self.last_tenth = tenth
    self.out:write(self:text(i, extra, now), '\n')
    if i >= self.total then self.done = true end
  end
  self.last_time = now
  self.out:flush()
end

-- Ends the bar's line on a terminal (after an early stop too); idempotent.
function Bar:finish()
  if self.done then return end
  self.done = true
  if self.tty and self.drawn then
    self.out:write('\n')
    self.out:flush()
  end
end

-- A function(i, n) for callers that report progress after each step (dr.pipeline's
-- `progress` option): a bar over n, timed from the first call (so the rate and ETA
-- count the steps after it).
function M.callback(label, opts)
  local bar
  return function(i, n)
    if not bar or bar.total ~= n or bar.done then
      local o = { label = label, total = n, initial = i }
      for k, v in pairs(opts or {}) do o[k] = v end
      bar = M.bar(o)
    end
    bar:update(i)
    if i >= n then bar:finish() end
  end
end

return M
