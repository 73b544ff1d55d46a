-- The registry of `diffrl` commands. A command is { summary, usage, run(args) ->
-- exit code }; add new ones (sample, launch, report, eval, ...) here, each in
-- its own module.
local M = {}

-- For commands that take no arguments: a usage error (exit code 2) if given any.
local function no_args(name, args)
  if args[1] == nil then return nil end
  io.stderr:write(("diffrl %s: unexpected argument '%s'\nTry 'diffrl %s --help'.\n")
    :format(name, args[1], name))
  return 2
end

M.order = { 'run', 'launch', 'sample', 'eval', 'report', 'convert', 'repl', 'test', 'version', 'help' }

M.launch = {
  summary = 'run a recipe on N ranks with mpirun (data-parallel; under Slurm: srun diffrl run)',
  usage = require('diffrl.cli.launch').usage,
  run = function(args) return require('diffrl.cli.launch').run(args) end,
}

M.run = {
  summary = 'run a recipe or Lua file',
  usage = [[
Usage: diffrl run FILE [ARGS...]
       diffrl run - [ARGS...]            (read the chunk from stdin)

Runs FILE with the global `arg` set as the lua binary does (arg[0] = FILE,
arg[1..] = ARGS, the diffrl command before them at negative indices); the chunk
also receives ARGS as `...`. A Lua error ends the run with exit code 1 and a
message naming file:line, then a traceback. Ctrl-C ends it with code 130.]],
  run = function(args) return require('diffrl.cli.run').file(args) end,
  run_options = function(argv) return require('diffrl.cli.run').options(argv) end,
}

M.sample = {
  summary = 'text-to-image from a diffusers Stable Diffusion folder (DDIM) to PNG',
  usage = require('diffrl.cli.sample').usage,
  run = function(args) return require('diffrl.cli.sample').run(args) end,
}

M.eval = {
  summary = 'held-out numbers of models or of a run\'s checkpoints: same seeds, CIs, win rates, eval.html',
  usage = require('diffrl.cli.eval').usage,
  run = function(args) return require('diffrl.cli.eval').run(args) end,
}

M.report = {
  summary = 'an HTML page of a run folder: reward curves, sample grids, config',
  usage = require('diffrl.cli.report').usage,
  run = function(args) return require('diffrl.cli.report').run(args) end,
}

M.convert = {
  summary = 'a PyTorch checkpoint (.pt, read safely) to safetensors',
  usage = require('diffrl.cli.convert').usage,
  run = function(args) return require('diffrl.cli.convert').run(args) end,
}

M.repl = {
  summary = 'interactive session (also: diffrl with no arguments on a terminal)',
  usage = [[
Usage: diffrl repl

An interactive Lua session with `dr = require 'diffrl'` loaded. Expressions
print their value (`= expr` works too; tensors print as PyTorch prints them);
unfinished statements continue on the next line; Tab completes names such as
dr.ze<Tab>; history is kept in ~/.diffrl_history (or $DIFFRL_HISTORY). Errors
print and the session goes on; Ctrl-C interrupts a running statement; Ctrl-D
exits.]],
  run = function(args) return no_args('repl', args) or require('diffrl.cli.repl').run() end,
}

M.test = {
  summary = 'run busted specs inside the host (default folder: spec/)',
  usage = [[
Usage: diffrl test [BUSTED OPTIONS] [PATHS...]

Runs busted (Debian package lua-busted) in this process, so specs use the
host's libdiffrl and Lua library. Options are busted's: e.g. --tags=gpu,
--exclude-tags=slow, -o TAP, --filter=PATTERN. Exit code: failures + errors.]],
  run = function(args)
    local ok = pcall(require, 'busted.runner')
    if not ok then
      io.stderr:write("diffrl test: busted is not installed (apt-get install lua-busted, " ..
                      "or run tools/install-deps)\n")
      return 2
    end
    -- Specs that spawn diffrl find this very binary (and the sources) by default.
    local ffi = require 'ffi'
    pcall(ffi.cdef, 'int setenv(const char *name, const char *value, int overwrite);')
    local host = require 'diffrl.host'
    if host.executable then ffi.C.setenv('DIFFRL_BIN', host.executable, 0) end
    ffi.C.setenv('DIFFRL_SOURCE_DIR', host.source_dir, 0)
    _G.arg = { [0] = 'busted', unpack(args) }
    -- busted ends the process itself; on failures under Lua 5.1 it does so by
    -- raising error() with no message, which we turn into exit code 1.
    local ok, err = pcall(require('busted.runner'), { standalone = false })
    if not ok and err ~= nil then io.stderr:write('diffrl test: ', tostring(err), '\n') end
    return ok and 0 or 1
  end,
}

M.version = {
  summary = 'print version and build facts',
  usage = 'Usage: diffrl --version\n\nVersion, git commit, build type, compiler, BLAS, CUDA/cuDNN/NCCL, MPI.',
  run = function(args)
    local bad = no_args('version', args)
    if bad then return bad end
    local dr = require 'diffrl'
    local b = dr.build_info()
    local threads = dr.get_num_threads()
    io.write(('diffrl %s (commit %s, %s build)\n'):format(b.version, b.git_commit, b.build_type))
    local rows = {
      { 'LuaJIT', b.luajit },
      { 'compiler', b.compiler },
      { 'BLAS', ('%s, %d threads'):format(b.blas, threads) },
      { 'CUDA', b.cuda },
      { 'cuDNN', b.cudnn },
      { 'NCCL', b.nccl },
      { 'MPI', b.mpi },
      { 'sanitize', b.sanitize },
      { 'Lua library', DIFFRL_LUA_DIRS or '?' },
    }
    if b.cuda ~= 'none' then
      rows[#rows + 1] = { 'CUDA devices', tostring(dr.cuda.device_count()) }
    end
    for _, r in ipairs(rows) do io.write(('  %-12s %s\n'):format(r[1] .. ':', r[2])) end
    return 0
  end,
}

M.help = {
  summary = 'help for diffrl or one command',
  usage = 'Usage: diffrl help [COMMAND]',
  run = function(args)
    local name = args[1]
    if not name then
      io.write(require('diffrl.cli').help_text())
      return 0
    end
    local cmd = M[name]
    if type(cmd) ~= 'table' or not cmd.usage then
      io.stderr:write(("diffrl: unknown command '%s'\nTry 'diffrl --help'.\n"):format(name))
      return 2
    end
    io.write(cmd.usage, '\n')
    return 0
  end,
}

return M
