-- `diffrl report`: a run folder as one self-contained HTML page (diffrl.report).
local M = {}

M.usage = [[
Usage: diffrl report RUN_DIR [-o FILE]

Writes an HTML page about the run in RUN_DIR (a folder `diffrl run` made: run.json,
config.lua, metrics.jsonl, samples/): the recipe, start time, git commit and build;
reward curves per task with a +-std band and a baseline-vs-final table; loss,
clipfrac, approx_kl, grad_norm and images/s; the held-out before/after grids
(heldout/, when the run has them) and every sample grid with its prompts; and the
config. The page is one file that loads nothing: CSS inline, charts as inline SVG,
images embedded as data: URIs. It opens in any browser, offline.

Options:
  -o, --output FILE  the page to write (default RUN_DIR/report.html)

Prints the path written. Exit codes: 0 ok, 1 a folder that is not a run (the
message names the missing file) or a page that cannot be written, 2 a usage error.]]

local function usage_error(msg)
  io.stderr:write('diffrl report: ', msg, "\nTry 'diffrl report --help'.\n")
  return 2
end

function M.parse(args)
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local value = a:match('^%-%-output=(.*)$')
    if a == '-o' or a == '--output' then
      i = i + 1
      value = args[i]
      if value == nil then return nil, ("option %s needs a value"):format(a) end
    end
    if value then
      if value == '' then return nil, 'the output file name is empty' end
      o.output = value
    elseif a:sub(1, 1) == '-' and a ~= '-' then
      return nil, ("unknown option '%s'"):format(a)
    elseif o.dir then
      return nil, ("unexpected argument '%s' (one RUN_DIR only)"):format(a)
    else
      o.dir = a
    end
    i = i + 1
  end
  if not o.dir or o.dir == '' then return nil, 'missing RUN_DIR' end
  return o
end

function M.run(args)
  local o, err = M.parse(args)
  if not o then return usage_error(err) end
  local dr = require 'diffrl' -- also marks the library's frames, so errors carry no file:line
  local ok, result = pcall(dr.report.write, o.dir, o.output)
  if not ok then
    io.stderr:write('diffrl report: ', (tostring(result):gsub('^report: ', '')), '\n')
    return 1
  end
  io.write(result, '\n')
  return 0
end

return M
