-- bench/harness.lua: what every Lua benchmark here needs — a median timer that
-- collects garbage between runs, running the PyTorch twin script and reading its
-- JSON, and the side-by-side table.
--   local H = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/harness.lua')
--   local secs = H.timed(repeats, fn)
--   local torch = H.run_torch('bench/x_torch.py', threads, repeats)   -- name -> secs
--   H.print_table(rows, torch)   -- rows = { {name, secs[, flops]}, ... }
local here = debug.getinfo(1, 'S').source:match('^@(.*)/[^/]*$') or '.'
local now = dofile(here .. '/clock.lua')

local M = { now = now }

-- The command line every bench takes, `[threads] [repeats] [n]`: sets the thread
-- count (default: all) and returns threads, repeats (default_repeats), n (default_n).
function M.args(dr, default_repeats, default_n)
  local threads = tonumber(arg[1]) or dr.get_num_threads()
  dr.set_num_threads(threads)
  return threads, tonumber(arg[2]) or default_repeats, tonumber(arg[3]) or default_n
end

function M.timed(repeats, f)
  f()
  local walls = {}
  for i = 1, repeats do
    collectgarbage()
    local t0 = now()
    f()
    walls[i] = now() - t0
  end
  table.sort(walls)
  return walls[math.floor((#walls + 1) / 2)], walls[1]
end

-- Runs `python3 script threads repeats` and decodes the JSON object it prints
-- last (name -> seconds); {} with a message when PyTorch is unavailable.
function M.run_torch(script, threads, repeats, extra)
  local pipe = io.popen(('python3 %s %d %d %s 2>&1'):format(script, threads, repeats, extra or ''))
  local text = pipe:read('*a')
  pipe:close()
  local ok, cjson = pcall(require, 'cjson')
  local decoded_ok, torch = pcall(function() return cjson.decode(text:match('{.*}')) end)
  if not (ok and decoded_ok and type(torch) == 'table') then
    print('PyTorch comparison unavailable: ' .. text:sub(1, 300))
    return {}
  end
  return torch
end

-- rows: { {name, seconds, flops (optional)}, ... }; ratio = torch / diffrl.
function M.print_table(rows, torch, peak_gflops)
  print(('| %-40s | %10s | %10s | %7s | %10s |'):format('case', 'diffrl ms', 'torch ms', 'ratio', 'GF/s'))
  print('|' .. ('-'):rep(42) .. '|' .. ('-'):rep(12) .. '|' .. ('-'):rep(12) .. '|' .. ('-'):rep(9) .. '|' .. ('-'):rep(12) .. '|')
  for _, r in ipairs(rows) do
    local name, d, flops = r[1], r[2], r[3]
    local t = torch[name]
    local gf = flops and flops / d / 1e9
    print(('| %-40s | %10.2f | %10s | %7s | %10s |'):format(name, d * 1e3,
      t and ('%.2f'):format(t * 1e3) or '-', t and ('%.2f'):format(t / d) or '-',
      gf and (peak_gflops and ('%.1f (%d%%)'):format(gf, math.floor(100 * gf / peak_gflops + 0.5))
              or ('%.1f'):format(gf)) or ''))
  end
end

return M
