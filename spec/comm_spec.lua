-- Collectives (core/comm, diffrl.core.comm): one process is a world of one rank
-- where every collective is the identity; under `mpirun -np 2` (#mpi) sums, means
-- and maxima on odd sizes and every reducible dtype, gathers in rank order,
-- broadcasts; a stuck rank ends the job with an error naming the collective, the
-- rank and the timeout, and a killed rank ends the job, both within the timeout.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local comm = require 'diffrl.core.comm'
local launch = require 'diffrl.cli.launch'

describe('#comm a single process', function()
  local world = comm.world()

  it('is one rank, and every collective gives back its input', function()
    assert.are.equal(0, world.rank)
    assert.are.equal(1, world.size)
    assert.are.equal('single', world.backend)
    local t = dr.tensor { 1.5, -2, 3 }
    assert.are.equal(t, world:all_reduce(t, 'mean'))
    assert.are.same({ 1.5, -2, 3 }, t:tolist())
    assert.are.same({ { 1, 2 }, { 3, 4 } }, world:all_gather(dr.tensor { { 1, 2 }, { 3, 4 } }):tolist())
    assert.are.same({ 7 }, world:all_gather(dr.tensor(7)):tolist())
    world:broadcast(t, 0)
    world:barrier()
    assert.are.same({ 0.1, 2 ^ 60 + 1 }, world:all_reduce_numbers({ 0.1, 2 ^ 60 + 1 }, 'sum'))
    assert.are.same({ 1, 2 }, world:all_gather_numbers { 1, 2 })
    assert.are.equal('runs/x', world:broadcast_string('runs/x', 0))
  end)

  it('names bad arguments', function()
    local t = dr.tensor { 1, 2 }
    assert.has_error(function() world:all_reduce(t, 'avg') end, "all_reduce: unknown reduce op 'avg' (sum, mean, max)")
    local ok, err = pcall(world.all_reduce, world, dr.tensor({ 1, 2 }, { dtype = 'int64' }), 'mean')
    assert.is_false(ok)
    assert.is_truthy(err:find('mean needs a floating point dtype', 1, true), err)
    ok, err = pcall(world.broadcast, world, t, 1)
    assert.is_truthy(err:find('root 1 is not a rank of this communicator (size 1)', 1, true), err)
    ok, err = pcall(world.all_gather_numbers, world, { 1, 'x' })
    assert.is_truthy(err:find('element 2 is a string', 1, true), err)
    ok, err = pcall(world.set_timeout, world, 0)
    assert.is_truthy(err:find('timeout must be in (0, 1e9]', 1, true), err)
    ok, err = pcall(world.enable_nccl, world, 0)
    assert.is_false(ok) -- no NCCL here, or no GPU: either way a message, not a crash
    assert.is_truthy(err:find('enable_nccl', 1, true), err)
  end)
end)

describe('#comm launchers', function()
  it('read the rank from Slurm, OpenMPI and torchrun variables, and 1 rank from none', function()
    local code = "local e = require('diffrl').dist.env(); io.write(e.rank, ' ', e.size, ' ', e.local_rank, ' ', " ..
                 "e.local_size, ' ', tostring(e.launcher))"
    local cases = {
      { {}, '0 1 0 1 nil' },
      { { 'SLURM_PROCID=5', 'SLURM_STEP_NUM_TASKS=8', 'SLURM_LOCALID=1', 'SLURM_STEP_TASKS_PER_NODE=4(x2)' },
        '5 8 1 4 srun' },
      { { 'OMPI_COMM_WORLD_RANK=1', 'OMPI_COMM_WORLD_SIZE=2', 'OMPI_COMM_WORLD_LOCAL_RANK=1',
          'OMPI_COMM_WORLD_LOCAL_SIZE=2', 'SLURM_PROCID=0', 'SLURM_STEP_NUM_TASKS=1' }, '1 2 1 2 mpirun' },
      { { 'RANK=3', 'WORLD_SIZE=4', 'LOCAL_RANK=3', 'LOCAL_WORLD_SIZE=4' }, '3 4 3 4 torchrun' },
    }
    for _, c in ipairs(cases) do
      local args = { '-u', 'OMPI_COMM_WORLD_SIZE', '-u', 'PMI_SIZE', '-u', 'SLURM_STEP_NUM_TASKS', '-u', 'WORLD_SIZE' }
      for _, v in ipairs(c[1]) do args[#args + 1] = v end
      for _, a in ipairs { h.bin(), '-e', code } do args[#args + 1] = a end
      local r = h.run_program('env', args)
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(c[2], r.stdout)
    end
    local r = h.run_program('env', { 'SLURM_PROCID=9', 'SLURM_STEP_NUM_TASKS=4', h.bin(), '-e', code })
    assert.are.equal(1, r.code)
    assert.is_truthy(r.stderr:find('SLURM_STEP_NUM_TASKS=4 but SLURM_PROCID is 9', 1, true), r.stderr)
  end)

  it('builds the mpirun command: root, oversubscription, hosts, threads', function()
    local o = assert(launch.parse { '-n', '4', '--mpi-arg', '--tag-output', 'r.lua', 'x=1' })
    local argv = launch.command(o, { root = true, cores = 2, executable = '/bin/diffrl' })
    local text = table.concat(argv, ' ')
    assert.are.equal('mpirun -np 4 --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=' ..
                     (os.getenv('OMP_NUM_THREADS') or '1') .. ' --tag-output /bin/diffrl run r.lua x=1', text)
    o = assert(launch.parse { '--np', '16', '--hosts', 'a:8,b:8', '--threads', '6', 'r.lua' })
    text = table.concat(launch.command(o, { root = false, cores = 2, executable = 'diffrl' }), ' ')
    assert.are.equal('mpirun -np 16 --host a:8,b:8 --bind-to none -x OMP_NUM_THREADS=6 diffrl run r.lua', text)
    local _, err = launch.parse { 'r.lua' }
    assert.are.equal('the number of ranks is required: -n N', err)
    _, err = launch.parse { '-n', 'two', 'r.lua' }
    assert.are.equal('-n needs a number of ranks >= 1, got two', err)
    _, err = launch.parse { '-n', '2', '--bogus', 'r.lua' }
    assert.are.equal("unknown option '--bogus'", err)
    local r = h.run_program('env', { 'PATH=/nonexistent', h.bin(), 'launch', '-n', '2', 'r.lua' })
    assert.are.equal(2, r.code)
    assert.is_truthy(r.stderr:find('mpirun was not found on PATH', 1, true) or
                     r.stderr:find('built without MPI', 1, true), r.stderr)
  end)
end)

-- ---- two ranks ------------------------------------------------------------------------

local mpi_missing, sanitizer_args = h.mpi_missing, h.mpi_sanitizer_args

-- Runs a Lua file on n ranks; { code, stdout, stderr, seconds }.
local function on_ranks(n, file, args)
  local argv = launch.command({ n = n, file = file, rest = args or {}, mpi_args = sanitizer_args(), threads = 1 },
                             { executable = h.bin() })
  local program = table.remove(argv, 1)
  local t0 = os.time()
  local r = h.run_program(program, argv)
  r.seconds = os.time() - t0
  return r
end

local RANK_SCRIPT = [[
local dr = require 'diffrl'
local world = require('diffrl.core.comm').world { timeout = 60 }
local R, N = world.rank, world.size
local checks = 0
local function near(a, b, tol, what)
  checks = checks + 1
  if math.abs(a - b) > tol then error(('rank %d: %s: got %.9g, expected %.9g'):format(R, what, a, b)) end
end
for _, dtype in ipairs { 'float32', 'float16', 'bfloat16', 'int64', 'int32' } do
  local int = dtype:match('^int') ~= nil
  for _, n in ipairs { 1, 7, 1001 } do
    for _, op in ipairs { 'sum', 'mean', 'max' } do
      if not (int and op == 'mean') then
        local xs = {}
        for i = 1, n do xs[i] = (R + 1) * (i % 13 + 1) end
        local t = world:all_reduce(dr.tensor(xs, { dtype = dtype }), op)
        for _, i in ipairs { 1, math.ceil(n / 2), n } do
          local unit = i % 13 + 1
          local want = op == 'sum' and unit * N * (N + 1) / 2 or op == 'mean' and unit * (N + 1) / 2 or unit * N
          near(t[i]:item(), want, want / 100, ('%s %s n=%d [%d]'):format(dtype, op, n, i))
        end
      end
    end
  end
  local g = world:all_gather(dr.full({ 3, 5 }, R + 2, { dtype = dtype }))
  near(g:size(1), 3 * N, 0, 'gathered rows')
  for r = 0, N - 1 do near(g[3 * r + 2][4]:item(), r + 2, 0, dtype .. ' gather') end
end
local b = world:broadcast(dr.full({ 11 }, R + 0.5), N - 1)
near(b[11]:item(), N - 0.5, 0, 'broadcast')
local all = world:all_gather_numbers { R + 0.1, 1 / 3 }
near(all[2 * N - 1], N - 1 + 0.1, 0, 'numbers')
near(#world:broadcast_string(R == 0 and ('x'):rep(1000) or nil, 0), 1000, 0, 'string')
world:barrier()
print(('rank %d of %d: %d checks passed'):format(R, N, checks))
]]

local STUCK_SCRIPT = [[
local ffi = require 'ffi'
ffi.cdef 'int poll(void *fds, unsigned long n, int timeout);'
local dr = require 'diffrl'
local world = require('diffrl.core.comm').world { timeout = 2 }
if world.rank == 1 then ffi.C.poll(nil, 0, 60000) end -- stuck for a minute
world:all_reduce(dr.ones(5), 'sum')
print('rank ' .. world.rank .. ' was not stopped')
]]

local KILLED_SCRIPT = [[
local ffi = require 'ffi'
ffi.cdef 'int getpid(void); int kill(int pid, int sig);'
local dr = require 'diffrl'
local world = require('diffrl.core.comm').world { timeout = 120 }
world:barrier()
if world.rank == 1 then ffi.C.kill(ffi.C.getpid(), 9) end
world:all_reduce(dr.ones(5), 'sum')
print('rank ' .. world.rank .. ' was not stopped')
]]

describe('#mpi collectives on two ranks', function()
  local why = mpi_missing()
  if why then
    pending('#mpi specs skipped: ' .. why)
    return
  end

  it('reduce, gather and broadcast odd sizes of every dtype', function()
    local f = h.temp_file(RANK_SCRIPT, '.lua')
    local r = on_ranks(2, f)
    os.remove(f)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.is_truthy(r.stdout:find('rank 0 of 2: %d+ checks passed'), r.stdout)
    assert.is_truthy(r.stdout:find('rank 1 of 2: %d+ checks passed'), r.stdout)
  end)

  it('end every rank with an error naming the collective, rank and timeout when one is stuck', function()
    local f = h.temp_file(STUCK_SCRIPT, '.lua')
    local r = on_ranks(2, f)
    os.remove(f)
    assert.are_not.equal(0, r.code)
    assert.is_true(r.seconds < 30, ('took %d s'):format(r.seconds))
    assert.is_truthy(r.stderr:find('all_reduce: rank 0 of 2 timed out after 2 s', 1, true), r.stderr)
    assert.is_falsy(r.stdout:find('was not stopped', 1, true), r.stdout)
  end)

  it('end the job, well within the timeout, when a rank is killed', function()
    local f = h.temp_file(KILLED_SCRIPT, '.lua')
    local r = on_ranks(2, f)
    os.remove(f)
    assert.are_not.equal(0, r.code)
    assert.is_true(r.seconds < 60, ('took %d s'):format(r.seconds))
    assert.is_falsy(r.stdout:find('was not stopped', 1, true), r.stdout)
  end)
end)
