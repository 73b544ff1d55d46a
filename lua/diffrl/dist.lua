-- diffrl.dist: data-parallel runs over ranks (issue 9; docs/scaling.md).
--
--   dist.env()            { rank, size, local_rank, local_size, launcher } read from the
--                         launcher's environment (mpirun: OMPI_*, MPICH/Intel: PMI_*,
--                         srun: SLURM_*, torchrun: RANK/WORLD_SIZE), without MPI
--   dist.world(cfg)       the communicator (diffrl.core.comm) with cfg.dist's timeout
--                         and backend; one rank when not launched
--   dist.shard(n, r, R)   first index and count of rank r's (0-based) share of n items
--   dist.slice(list, r, R) rank r's contiguous share of a list
--   dist.all_reduce_grads(world, flat, op, bucket_mb)   a flat gradient in buckets
--   dist.wait(world, seconds, why)   a barrier with its own timeout (rank 0 busy)
--   dist.agree(world, ok, err)       raise on every rank when any rank failed a step
--   dist.guard(world, f, ...)        an error on one rank ends every rank at its exit
--   dist.zero_adamw(world, opt)      ZeRO-1: AdamW's moments sharded over the ranks
--
-- The rule every helper keeps: each rank computes what one process with the global
-- batch would, for its own rows, so R ranks x batch B equal 1 rank x batch R*B.
local comm = require 'diffrl.core.comm'
local api = require 'diffrl.core.ffi'

local raise = api.raise
local M = {}

local function int_env(name)
  local v = os.getenv(name)
  if v == nil or v == '' then return nil end
  local n = tonumber(v)
  if not n or n % 1 ~= 0 or n < 0 then
    raise(('dist: environment variable %s=%s is not a non-negative integer'):format(name, v))
  end
  return n
end

-- Launchers and the variables each sets: { launcher, rank, size, local rank, local size }.
local LAUNCHERS = {
  { 'mpirun', 'OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_RANK',
    'OMPI_COMM_WORLD_LOCAL_SIZE' },
  { 'pmi', 'PMI_RANK', 'PMI_SIZE', 'MPI_LOCALRANKID', 'MPI_LOCALNRANKS' },
  { 'srun', 'SLURM_PROCID', 'SLURM_STEP_NUM_TASKS', 'SLURM_LOCALID', nil },
  { 'torchrun', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE' },
}

-- Where this process sits in its job, from the environment alone (before, or
-- without, MPI). launcher is nil for a plain single process.
function M.env()
  for _, l in ipairs(LAUNCHERS) do
    local size = int_env(l[3])
    if size and size >= 1 then
      local rank = int_env(l[2])
      if not rank or rank >= size then
        raise(('dist: %s=%d but %s is %s'):format(l[3], size, l[2], tostring(os.getenv(l[2]))))
      end
      local local_size = l[5] and int_env(l[5])
      if l[1] == 'srun' then -- SLURM_TASKS_PER_NODE is "2(x3),1": the first count
        local per_node = (os.getenv('SLURM_STEP_TASKS_PER_NODE') or os.getenv('SLURM_TASKS_PER_NODE') or '')
        local_size = tonumber(per_node:match('^(%d+)'))
      end
      return { rank = rank, size = size, local_rank = int_env(l[4]) or 0, local_size = local_size or 1,
               launcher = l[1] }
    end
  end
  return { rank = 0, size = 1, local_rank = 0, local_size = 1 }
end

-- The world for a run: cfg.dist.timeout_s on every collective; with
-- cfg.dist.backend = 'nccl', NCCL on CUDA device local_rank (CUDA builds).
function M.world(cfg)
  local d = cfg and cfg.dist or {}
  local env = M.env()
  local ok, world = pcall(comm.world, { timeout = d.timeout_s or 300 })
  if not ok then
    raise(('dist: rank %d of %d (%s): %s'):format(env.rank, env.size, env.launcher or 'no launcher',
                                                  tostring(world):gsub('^[^\n]-:%d+: ', '')))
  end
  if env.size > 1 and world.size ~= env.size then
    raise(('dist: the launcher (%s) started %d ranks but the communicator has %d: is this diffrl ' ..
           'built with the MPI that launched it (diffrl --version)?'):format(env.launcher, env.size, world.size))
  end
  if d.backend == 'mpi' and world.backend == 'single' then
    raise("dist: dist.backend = 'mpi' but this process was not started by an MPI launcher " ..
          "(diffrl launch, mpirun, srun); use 'auto' to run alone")
  end
  if d.backend == 'nccl' then world:enable_nccl(world.local_rank) end
  return world
end

-- Rank r's (0-based) contiguous share of n items over R ranks: first index
-- (1-based) and count. n must split evenly (every rank runs the same shapes).
function M.shard(n, rank, size, what)
  if n % size ~= 0 then
    raise(('dist: %s = %d does not split evenly over %d ranks'):format(what or 'the batch', n, size))
  end
  local per = n / size
  return rank * per + 1, per
end

function M.slice(list, rank, size, what)
  local first, count = M.shard(#list, rank, size, what)
  local out = {}
  for i = 1, count do out[i] = list[first + i - 1] end
  return out
end

-- All-reduces a flat gradient buffer (optim's flat = true) in buckets of
-- bucket_mb megabytes: bounded staging memory and message sizes MPI moves well.
-- op: 'mean' when the loss is a mean over the batch (each rank's gradient is the
-- mean over its rows), 'sum' when the loss sums over it.
function M.all_reduce_grads(world, flat, op, bucket_mb)
  if world.size == 1 then return end
  local n = flat:numel()
  local per = math.max(1, math.floor((bucket_mb or 25) * 2 ^ 20 / 4))
  for first = 1, n, per do
    world:all_reduce(flat:narrow(1, first, math.min(per, n - first + 1)), op)
  end
end

-- A barrier that may wait `seconds` (rank 0 writing a checkpoint or evaluating
-- while the others wait), then the usual timeout again.
function M.wait(world, seconds, why)
  if world.size == 1 then return end
  local usual = world:timeout()
  world:set_timeout(math.max(seconds, usual))
  local ok, err = pcall(world.barrier, world)
  world:set_timeout(usual)
  if not ok then raise(('%s (waiting for %s)'):format(tostring(err):gsub('^[^\n]-:%d+: ', ''), why)) end
end

-- After a step only some ranks may fail (rank 0 creating the run folder): every
-- rank learns whether any failed, and all raise together instead of some waiting.
function M.agree(world, ok, err, what)
  if world.size == 1 then
    if not ok then error(err, 0) end
    return
  end
  local failed = world:all_reduce_numbers({ ok and 0 or (world.rank + 1) }, 'max')[1]
  if not ok then error(err, 0) end
  if failed > 0 then
    raise(('%s failed on rank %d (its error is in its output)'):format(what, failed - 1))
  end
end

-- ---- ZeRO-1: optimizer state sharded over the ranks ------------------------------
-- Wraps a flat AdamW (optim.AdamW with flat = true) so that rank r keeps Adam's two
-- moments only for its slice r of the flat parameters (1/R of the memory), updates
-- that slice with the all-reduced gradient, and all-gathers the updated slices.
-- AdamW is elementwise, so the parameters equal the unsharded run's bit for bit.
-- Traffic per step: the gradient all-reduce plus one parameter all-gather.
-- The interface the trainer uses: lr, step_count, flat, state.flat (the full
-- moments, after gather_state() or to load on resume), step(), zero_grad().
local Zero = {}
Zero.__index = Zero

function M.zero_adamw(world, opt)
  if not opt.flat then raise('dist.zero_adamw: the optimizer must be AdamW with flat = true') end
  local n = opt.flat.params:numel()
  local per = math.ceil(n / world.size)
  local first = world.rank * per + 1
  local count = math.max(0, math.min(per, n - first + 1))
  return setmetatable({ inner = opt, world = world, n = n, per = per, first = first, count = count,
                        lr = opt.lr, step_count = opt.step_count, flat = opt.flat, params = opt.params,
                        state = {}, shard = nil }, Zero)
end

function Zero:zero_grad() self.inner.zero_grad(self.inner) end

-- This rank's slice of a full-length vector (moments loaded from a checkpoint).
function Zero:slice_of(full)
  if self.count == 0 then return require('diffrl.core').zeros(1) end
  return full:narrow(1, self.first, self.count):clone()
end

function Zero:step()
  self.step_count = self.step_count + 1
  local full = self.state.flat
  if full then -- a checkpoint's or gather_state's moments: keep only this rank's slice
    self.shard = { exp_avg = self:slice_of(full.exp_avg), exp_avg_sq = self:slice_of(full.exp_avg_sq) }
    self.state.flat = nil
  end
  local core, o, flat = require 'diffrl.core', self.inner, self.flat
  if not self.shard then
    local m = math.max(self.count, 1)
    local on = { device = flat.params.device }
    self.shard = { exp_avg = core.zeros(m, on), exp_avg_sq = core.zeros(m, on) }
  end
  local send = core.zeros(self.per, { device = flat.params.device })
  core.no_grad(function()
    if self.count > 0 then
      local p = flat.params:narrow(1, self.first, self.count)
      core.adamw_step_(p, flat.grads:narrow(1, self.first, self.count), self.shard.exp_avg, self.shard.exp_avg_sq,
                       self.lr, o.beta1, o.beta2, o.eps, o.weight_decay, self.step_count)
      send:narrow(1, 1, self.count):copy_(p)
    end
    flat.params:copy_(self.world:all_gather(send):narrow(1, 1, self.n))
  end)
end

-- Every rank: the full moments in state.flat (for rank 0's checkpoint).
function Zero:gather_state()
  local core = require 'diffrl.core'
  local full = {}
  for _, key in ipairs { 'exp_avg', 'exp_avg_sq' } do
    local send = core.zeros(self.per, { device = self.flat.params.device })
    if self.shard and self.count > 0 then send:narrow(1, 1, self.count):copy_(self.shard[key]:narrow(1, 1, self.count)) end
    full[key] = self.world:all_gather(send):narrow(1, 1, self.n):contiguous()
  end
  if self.shard or self.state.flat then self.state.flat = self.state.flat or full end
end

-- Runs f(...) and, when it raises on a rank of several, marks that rank failed so
-- its exit ends every rank (MPI_Abort) instead of leaving them waiting.
function M.guard(world, f, ...)
  if world.size == 1 then return f(...) end
  local res = { xpcall(f, function(e)
    world:mark_failed()
    if type(e) == 'string' and not e:find('^rank %d') then e = ('rank %d: %s'):format(world.rank, e) end
    return e
  end, ...) }
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2)
end

return M
