-- diffrl.eval: held-out evaluation of text-to-image models (`diffrl eval`,
-- recipes/eval_shapes.lua). See README.md beside this file.
--
--   local ev = require 'diffrl.eval'
--   ev.sources  ev.run  ev.stats  ev.summary  ev.html
--   ev.write(dir, summary, rows, labels[, { max_rows = 400 }]) -> the summary.md text
--     writes DIR/summary.json, DIR/summary.md and DIR/eval.html
local M = {}

M.sources = require 'diffrl.eval.sources'
M.run = require 'diffrl.eval.run'
M.stats = require 'diffrl.stats'
M.summary = require 'diffrl.eval.summary'
M.html = require 'diffrl.eval.html'

local function write_file(path, text)
  local f, err = io.open(path, 'wb')
  if not f then error(('eval: cannot write %s (%s)'):format(path, tostring(err)), 0) end
  f:write(text)
  f:close()
end

function M.write(dir, s, rows, labels, opts)
  local rundir = require 'diffrl.rundir'
  write_file(dir .. '/summary.json', rundir.json_encode(s, '  ') .. '\n')
  local md = M.summary.markdown(s)
  write_file(dir .. '/summary.md', md)
  write_file(dir .. '/eval.html', M.html.render(s, rows, { dir = dir, models = labels,
                                                           max_rows = opts and opts.max_rows }))
  return md
end

return M
