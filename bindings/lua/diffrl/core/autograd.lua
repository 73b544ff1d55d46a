-- diffrl.core.autograd: the Lua face of the C tape (core/autograd).
--   x:requires_grad(true)   loss:backward()   x.grad   dr.no_grad(fn, ...)
-- Names follow torch: requires_grad_ / detach / is_leaf / grad_fn; t:requires_grad()
-- with no argument reads the flag.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local Tensor, getters, setters, take, out_box = T.Tensor, T.getters, T.setters, T.take, T.out_box

local M = {}

local check = api.check

function Tensor.requires_grad(t, flag)
  if flag == nil then return C.dr_tensor_requires_grad(t.ptr) ~= 0 end
  check(C.dr_tensor_set_requires_grad(t.ptr, flag and 1 or 0))
  return t
end

function Tensor.requires_grad_(t, flag)
  if flag == nil then flag = true end
  return t:requires_grad(flag)
end

function Tensor.detach(t) return take(C.dr_tensor_detach(t.ptr, out_box)) end

-- backward([gradient][, {retain_graph=true}])
function Tensor.backward(t, grad, opts)
  if opts == nil and type(grad) == 'table' then grad, opts = nil, grad end
  if grad ~= nil and not T.is_tensor(grad) then
    raise('backward: gradient must be a tensor, got ' .. type(grad))
  end
  local retain = opts and opts.retain_graph and 1 or 0
  check(C.dr_backward(t.ptr, grad and grad.ptr or nil, retain))
end
-- dr_backward may call back into Lua (checkpointed nodes): LuaJIT allows that
-- only when the calling FFI call is not part of a compiled trace.
jit.off(Tensor.backward)

function getters.grad(t)
  check(C.dr_tensor_get_grad(t.ptr, out_box))
  if out_box[0] == nil then return nil end
  return take(0)
end

function setters.grad(t, g)
  if g ~= nil and not T.is_tensor(g) then raise('grad: expected a tensor or nil, got ' .. type(g)) end
  check(C.dr_tensor_set_grad(t.ptr, g and g.ptr or nil))
end

function getters.is_leaf(t) return C.dr_tensor_is_leaf(t.ptr) ~= 0 end

-- torch prints grad_fn=<MulBackward0>; ours names the op: <MulBackward>
function getters.grad_fn(t)
  local name = C.dr_tensor_grad_fn_name(t.ptr)
  if name == nil then return nil end
  local s = ffi.string(name)
  return s:sub(1, 1):upper() .. s:sub(2):gsub('_(%l)', string.upper) .. 'Backward'
end

local function pack(...) return { n = select('#', ...), ... } end

-- ---- gradient checkpointing ------------------------------------------------------
-- dr.checkpoint(fn, ...): runs fn(...) without keeping its intermediate tensors;
-- backward runs fn again (with grad) on detached copies of the tensor arguments
-- and backpropagates through that. Parameters fn reads from upvalues receive
-- their gradients from the recomputation directly. fn must return one tensor and
-- compute the same thing twice: the default generator is replayed for it;
-- explicit generators are the caller's to replay.
local closures, next_id = {}, 0
local released = ffi.new('void *[64]')

local function collect_released()
  repeat
    local n = tonumber(C.dr_autograd_take_released(released, 64))
    for i = 0, n - 1 do closures[tonumber(ffi.cast('intptr_t', released[i]))] = nil end
  until n < 64
end

local backward_cb = ffi.cast('dr_custom_backward_fn', function(ctx, grad, grads)
  local run = closures[tonumber(ffi.cast('intptr_t', ctx))]
  local ok, err = pcall(run, grad, grads)
  if ok then return 0 end
  C.dr_set_error(tostring(err))
  return C.DR_ERR_ARG
end)

function M.checkpoint(fn, ...)
  if type(fn) ~= 'function' then raise('checkpoint: expected a function, got ' .. type(fn)) end
  collect_released()
  local args = pack(...)
  local slots = {} -- argument positions of tensors that require grad
  for i = 1, args.n do
    if T.is_tensor(args[i]) and args[i]:requires_grad() then slots[#slots + 1] = i end
  end
  if #slots == 0 or C.dr_is_grad_enabled() == 0 then return fn(...) end
  if #slots > 8 then raise('checkpoint: at most 8 tensor arguments may require grad') end
  local gen = C.dr_default_generator()
  local rng = { gen.seed, gen.offset }
  local out = M.no_grad(fn, ...)
  if not T.is_tensor(out) then raise('checkpoint: fn must return a tensor, got ' .. type(out)) end

  next_id = next_id + 1
  local id = next_id
  closures[id] = function(grad, grads)
    local replay = { gen.seed, gen.offset }
    gen.seed, gen.offset = rng[1], rng[2]
    local call, detached = {}, {}
    for i = 1, args.n do call[i] = args[i] end
    for k, i in ipairs(slots) do
      detached[k] = args[i]:detach():requires_grad_()
      call[i] = detached[k]
    end
    C.dr_tensor_retain(ffi.cast('dr_tensor *', grad))
    local g = T.ref_t(ffi.cast('dr_tensor *', grad))
    M.enable_grad(function() fn(unpack(call, 1, args.n)):backward(g) end)
    gen.seed, gen.offset = replay[1], replay[2]
    for k, d in ipairs(detached) do
      local dg = d.grad
      if dg then
        C.dr_tensor_retain(dg.ptr)
        grads[k - 1] = dg.ptr
      end
    end
  end
  local inputs = ffi.new('const dr_tensor *[?]', #slots)
  for k, i in ipairs(slots) do inputs[k - 1] = args[i].ptr end
  local status = C.dr_autograd_custom(out.ptr, 'checkpoint', inputs, #slots, backward_cb,
                                      ffi.cast('void *', id), C.dr_autograd_queue_release)
  if status ~= 0 then
    closures[id] = nil
    raise(ffi.string(C.dr_last_error()))
  end
  return out
end

-- Runs fn(...) with grad mode set to `enabled`, restoring it even on error.
local function with_grad_mode(enabled, fn, ...)
  if type(fn) ~= 'function' then raise('expected a function, got ' .. type(fn)) end
  local before = C.dr_is_grad_enabled()
  C.dr_set_grad_enabled(enabled)
  local r = pack(pcall(fn, ...))
  C.dr_set_grad_enabled(before)
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

-- dr.no_grad(fn, ...): fn's ops record no graph (sampling, optimizer updates).
function M.no_grad(fn, ...) return with_grad_mode(0, fn, ...) end
function M.enable_grad(fn, ...) return with_grad_mode(1, fn, ...) end
function M.is_grad_enabled() return C.dr_is_grad_enabled() ~= 0 end
function M.set_grad_enabled(on) C.dr_set_grad_enabled(on and 1 or 0) end

return M
