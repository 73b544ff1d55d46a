-- diffrl.core.comm: the collectives of core/comm (diffrl.h "Collectives") on
-- tensors and on Lua numbers. One world per process:
--
--   local comm = require 'diffrl.core.comm'
--   local world = comm.world { timeout = 300 }   -- MPI under mpirun/srun, else 1 rank
--   world.rank, world.size, world.local_rank, world.backend
--   world:all_reduce(grads, 'mean')              -- in place; 'sum' | 'mean' | 'max'
--   local all = world:all_gather(t)              -- ranks' t along dim 1, rank order
--   world:broadcast(t, 0); world:barrier()
--   world:all_gather_numbers { r1, r2 }          -- Lua doubles, exact
--   world:all_reduce_numbers({ loss, n }, 'sum'); world:broadcast_string(s, 0)
--
-- A collective that waits longer than the timeout raises an error naming the
-- collective, the rank and the timeout; the world is then broken and every rank
-- ends (MPI_Abort) when this process exits.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local M = {}

local OPS = { sum = 0, mean = 1, max = 2 }

local check = api.check

local function op_code(what, op)
  local code = OPS[op or 'sum']
  if not code then
    raise(("%s: unknown reduce op '%s' (sum, mean, max)"):format(what, tostring(op)))
  end
  return code
end

local function tensor_arg(what, t)
  if not T.is_tensor(t) then raise(('%s: expected a tensor, got %s'):format(what, type(t))) end
  return t.ptr
end

local function numbers_arg(what, xs)
  if type(xs) ~= 'table' then raise(('%s: expected a list of numbers, got %s'):format(what, type(xs))) end
  local n = #xs
  local buf = ffi.new('double[?]', math.max(n, 1))
  for i = 1, n do
    local x = xs[i]
    if type(x) ~= 'number' then
      raise(('%s: element %d is a %s, not a number'):format(what, i, type(x)))
    end
    buf[i - 1] = x
  end
  return buf, n
end

local World = {}
World.__index = World

function World:all_reduce(t, op)
  check(C.dr_comm_all_reduce(self.c, tensor_arg('all_reduce', t), op_code('all_reduce', op)))
  return t
end

function World:all_gather(t)
  return T.take(C.dr_comm_all_gather(self.c, tensor_arg('all_gather', t), T.out_box))
end

local function root_arg(what, self, root)
  root = root or 0
  if type(root) ~= 'number' or root % 1 ~= 0 then
    raise(('%s: root must be a rank (an integer), got %s'):format(what, tostring(root)))
  end
  return root
end

function World:broadcast(t, root)
  check(C.dr_comm_broadcast(self.c, tensor_arg('broadcast', t), root_arg('broadcast', self, root)))
  return t
end

function World:barrier()
  check(C.dr_comm_barrier(self.c))
end

-- The ranks' lists joined in rank order (every rank passes the same length).
function World:all_gather_numbers(xs)
  local buf, n = numbers_arg('all_gather_numbers', xs)
  local out = ffi.new('double[?]', math.max(n * self.size, 1))
  check(C.dr_comm_all_gather_f64(self.c, buf, n, out))
  local res = {}
  for i = 1, n * self.size do res[i] = out[i - 1] end
  return res
end

-- A new list: element i reduced over the ranks.
function World:all_reduce_numbers(xs, op)
  local buf, n = numbers_arg('all_reduce_numbers', xs)
  check(C.dr_comm_all_reduce_f64(self.c, buf, n, op_code('all_reduce_numbers', op)))
  local res = {}
  for i = 1, n do res[i] = buf[i - 1] end
  return res
end

-- root's string on every rank (others pass anything, e.g. nil).
function World:broadcast_string(s, root)
  root = root_arg('broadcast_string', self, root)
  local is_root = self.rank == root
  if is_root and type(s) ~= 'string' then
    raise(('broadcast_string: rank %d (the root) must pass a string, got %s'):format(root, type(s)))
  end
  local len = ffi.new('int64_t[1]')
  -- the length first, so receivers make room for any size
  local lbuf = ffi.new('double[1]', is_root and #s or 0)
  check(C.dr_comm_all_reduce_f64(self.c, lbuf, 1, OPS.max))
  local room = lbuf[0]
  local buf = ffi.new('char[?]', math.max(room, 1))
  if is_root then ffi.copy(buf, s, #s) end
  len[0] = room
  check(C.dr_comm_broadcast_bytes(self.c, buf, len, root))
  return ffi.string(buf, tonumber(len[0]))
end

function World:set_timeout(seconds)
  if type(seconds) ~= 'number' then raise('set_timeout: seconds must be a number, got ' .. type(seconds)) end
  check(C.dr_comm_set_timeout(self.c, seconds))
end
function World:timeout() return C.dr_comm_timeout(self.c) end

-- This rank failed: at exit, end every rank (MPI_Abort) instead of waiting for them.
function World:mark_failed() C.dr_comm_mark_failed(self.c) end
-- Ends every rank now.
function World:abort(code) C.dr_comm_abort(self.c, code or 1) end

-- CUDA tensors over NCCL on CUDA device `device` (CUDA builds).
function World:enable_nccl(device)
  check(C.dr_comm_enable_nccl(self.c, device or 0))
  self.backend = ffi.string(C.dr_comm_backend(self.c))
  return self
end

local world

-- The process's world (opened on the first call). opts.timeout: seconds every
-- collective may wait (default 300; a later call with a timeout changes it).
function M.world(opts)
  opts = api.check_options('comm.world', opts, { timeout = true })
  local timeout = opts.timeout or 0
  if type(timeout) ~= 'number' or timeout < 0 then
    raise('comm.world: timeout must be a number of seconds > 0, got ' .. tostring(opts.timeout))
  end
  if not world then
    local box = ffi.new('dr_comm*[1]')
    check(C.dr_comm_world(timeout, box))
    local c = box[0]
    world = setmetatable({ c = c, rank = C.dr_comm_rank(c), size = C.dr_comm_size(c),
                           local_rank = C.dr_comm_local_rank(c), local_size = C.dr_comm_local_size(c),
                           backend = ffi.string(C.dr_comm_backend(c)) }, World)
  elseif timeout > 0 then
    world:set_timeout(timeout)
  end
  return world
end

return M
