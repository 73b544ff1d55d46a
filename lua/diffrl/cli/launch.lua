-- `diffrl launch -n N [--hosts H1,H2] FILE [ARGS...]`: N ranks of `diffrl run FILE
-- ARGS...` started by mpirun (issue 9, docs/scaling.md). Under Slurm use srun
-- instead: `srun diffrl run FILE ...` finds its rank in the environment.
local M = {}

M.usage = [[
Usage: diffrl launch -n N [OPTIONS] FILE [ARGS...]

Starts N ranks of `diffrl run FILE ARGS...` with mpirun (OpenMPI); a recipe then
trains data-parallel: each rank samples its share of the batch, gradients are
averaged, rank 0 writes the run folder (docs/scaling.md, docs/batching.md).

Options:
  -n, --np N           ranks to start (required)
  --hosts H1,H2,...    hosts to run on (mpirun --host; H:SLOTS gives slots)
  --hostfile FILE      an mpirun hostfile
  --threads T          OpenMP threads per rank (default: $OMP_NUM_THREADS, else
                       this machine's cores / N, at least 1)
  --mpirun PATH        the mpirun to use (default: mpirun on PATH)
  --mpi-arg ARG        pass ARG to mpirun (repeatable)
  --dry-run            print the mpirun command instead of running it

As root, --allow-run-as-root is added; with more ranks than cores on one machine,
--oversubscribe. Under Slurm, skip this command: `srun diffrl run FILE ...`.]]

local function shell_quote(s)
  if s:match('^[%w%._/=:,@%-%+]+$') then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function command_output(cmd)
  local p = io.popen(cmd .. ' 2>/dev/null')
  if not p then return nil end
  local out = p:read('*a')
  p:close()
  return out
end

local function cores()
  return tonumber((command_output('nproc') or ''):match('%d+')) or 1
end

local function is_root()
  return (command_output('id -u') or ''):match('^%s*(%d+)') == '0'
end

-- Parses the command line: options table, or nil and a message.
function M.parse(args)
  local o = { mpi_args = {} }
  local i = 1
  local function value(name)
    local v = args[i + 1]
    if v == nil then error(('option %s needs a value'):format(name), 0) end
    i = i + 1
    return v
  end
  local ok, err = pcall(function()
    while i <= #args do
      local a = args[i]
      if a == '-n' or a == '--np' then
        o.n = tonumber(value(a))
        if not o.n or o.n < 1 or o.n % 1 ~= 0 then
          error(('%s needs a number of ranks >= 1, got %s'):format(a, tostring(args[i])), 0)
        end
      elseif a == '--hosts' then o.hosts = value(a)
      elseif a == '--hostfile' then o.hostfile = value(a)
      elseif a == '--threads' then
        o.threads = tonumber(value(a))
        if not o.threads or o.threads < 1 or o.threads % 1 ~= 0 then
          error(('--threads needs an integer >= 1, got %s'):format(tostring(args[i])), 0)
        end
      elseif a == '--mpirun' then o.mpirun = value(a)
      elseif a == '--mpi-arg' then o.mpi_args[#o.mpi_args + 1] = value(a)
      elseif a == '--dry-run' then o.dry_run = true
      elseif a == '-h' or a == '--help' then o.help = true
      elseif a == '--' then i = i + 1; break
      elseif a:sub(1, 1) == '-' then error(("unknown option '%s'"):format(a), 0)
      else break end
      i = i + 1
    end
  end)
  if not ok then return nil, err end
  if o.help then return o end
  if not o.n then return nil, 'the number of ranks is required: -n N' end
  if not args[i] then return nil, 'no FILE to run' end
  o.file = args[i]
  o.rest = {}
  for j = i + 1, #args do o.rest[#o.rest + 1] = args[j] end
  return o
end

-- Finds mpirun: the path given, else the first on PATH; nil and why.
local function find_mpirun(given)
  local name = given or 'mpirun'
  local found = command_output('command -v ' .. shell_quote(name))
  found = found and found:match('^%s*(.-)%s*$')
  if found and found ~= '' then return found end
  if given then return nil, ('mpirun %s was not found or is not executable'):format(given) end
  return nil, 'mpirun was not found on PATH: install OpenMPI (Debian: apt-get install openmpi-bin ' ..
              'libopenmpi-dev, or tools/install-deps), or under Slurm run `srun diffrl run FILE ...`'
end

-- The argv of the mpirun command for options o (also used by the specs).
function M.command(o, env)
  env = env or {}
  local mpirun = o.mpirun_path or o.mpirun or 'mpirun'
  local argv = { mpirun, '-np', tostring(o.n) }
  local root = env.root
  if root == nil then root = is_root() end
  if root then argv[#argv + 1] = '--allow-run-as-root' end
  local ncores = env.cores or cores()
  if not o.hosts and not o.hostfile and o.n > ncores then argv[#argv + 1] = '--oversubscribe' end
  if o.hosts then argv[#argv + 1] = '--host'; argv[#argv + 1] = o.hosts end
  if o.hostfile then argv[#argv + 1] = '--hostfile'; argv[#argv + 1] = o.hostfile end
  -- OpenMP threads do the work inside a rank: do not pin a rank to one core
  argv[#argv + 1] = '--bind-to'
  argv[#argv + 1] = 'none'
  local threads = o.threads or tonumber(os.getenv('OMP_NUM_THREADS') or '')
                  or math.max(1, math.floor(ncores / o.n))
  argv[#argv + 1] = '-x'
  argv[#argv + 1] = 'OMP_NUM_THREADS=' .. threads
  for _, a in ipairs(o.mpi_args) do argv[#argv + 1] = a end
  argv[#argv + 1] = env.executable or require('diffrl.host').executable or 'diffrl'
  argv[#argv + 1] = 'run'
  argv[#argv + 1] = o.file
  for _, a in ipairs(o.rest) do argv[#argv + 1] = a end
  return argv
end

function M.run(args)
  local o, err = M.parse(args)
  if not o then
    io.stderr:write('diffrl launch: ', err, "\nTry 'diffrl launch --help'.\n")
    return 2
  end
  if o.help then
    io.write(M.usage, '\n')
    return 0
  end
  local mpi = require('diffrl.core').build_info().mpi
  if mpi == 'none' then
    io.stderr:write('diffrl launch: this diffrl was built without MPI: configure with -DDIFFRL_MPI=ON ',
                    '(cmake -S . -B build -DDIFFRL_MPI=ON) and rebuild\n')
    return 2
  end
  local path, why = find_mpirun(o.mpirun)
  if not path then
    io.stderr:write('diffrl launch: ', why, '\n')
    return 2
  end
  o.mpirun_path = path
  local words = {}
  for i, a in ipairs(M.command(o)) do words[i] = shell_quote(a) end
  local cmd = table.concat(words, ' ')
  if o.dry_run then
    io.write(cmd, '\n')
    return 0
  end
  io.stdout:flush()
  local status = os.execute(cmd)
  if type(status) ~= 'number' then return status and 0 or 1 end
  if status > 255 then status = math.floor(status / 256) end -- a wait status
  return status
end

return M
