-- diffrl.cli: the `diffrl` command line. The C host (bindings/host) builds the
-- interpreter and calls main(argv); commands live in diffrl.cli.commands.
local commands = require 'diffrl.cli.commands'

local M = {}

local function usage_error(msg)
  io.stderr:write('diffrl: ', msg, '\n', "Try 'diffrl --help'.\n")
  return 2
end

M.HELP = [[
diffrl — reinforcement learning for text-to-image diffusion models

Usage:
  diffrl                        REPL on a terminal; otherwise run Lua from stdin
  diffrl run FILE [ARGS...]     run a recipe or any Lua file (arg = {[0]=FILE, ...})
  diffrl FILE.lua [ARGS...]     same as run
  diffrl -e CODE [-i] [ARGS...] run a chunk (then a REPL with -i)
  diffrl -i                     REPL, even when stdin is not a terminal
  diffrl COMMAND --help         help for one command
  diffrl --version              version, commit, BLAS, CUDA/cuDNN/NCCL, MPI
  diffrl --help                 this text

Commands:
%s
Inside Lua: local dr = require 'diffrl'   (the REPL has `dr` loaded already)
Exit codes: 0 ok, 1 a Lua error (message with file:line and a traceback; a bad
setting: "config: ..." naming the key, alone), 2 a usage error, 130 interrupted.
]]

function M.help_text()
  local lines = {}
  for _, name in ipairs(commands.order) do
    lines[#lines + 1] = ('  %-10s %s'):format(name, commands[name].summary)
  end
  return M.HELP:format(table.concat(lines, '\n'))
end

-- argv[0] is the program; returns the process exit code.
function M.main(argv)
  local host = require 'diffrl.host'
  local n = #argv
  if n == 0 then
    if host.isatty(0) then return commands.repl.run({}) end
    return commands.run.run({ '-' })
  end
  local first = argv[1]
  if first == '-h' or first == '--help' then
    io.write(M.help_text())
    return 0
  end
  if first == '-v' or first == '--version' then return commands.version.run({}) end
  if first == '-e' or first == '-i' then return commands.run.run_options(argv) end
  if first == '-' then return commands.run.run({ '-', unpack(argv, 2) }) end
  if first:sub(1, 1) == '-' then return usage_error(("unknown option '%s'"):format(first)) end
  local cmd = commands[first]
  if cmd then
    local rest = { unpack(argv, 2) }
    if rest[1] == '-h' or rest[1] == '--help' then
      io.write(cmd.usage, '\n')
      return 0
    end
    return cmd.run(rest)
  end
  if first:match('%.lua$') then return commands.run.run({ unpack(argv, 1) }) end
  return usage_error(("unknown command '%s'"):format(first))
end

return M
