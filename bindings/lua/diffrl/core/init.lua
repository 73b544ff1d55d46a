-- diffrl.core: the Lua face of libdiffrl (tensors, ops, random, build info).
-- The bindings layer: it may use the C library and LuaJIT, nothing above it.
local api = require 'diffrl.core.ffi'
local dtypes = require 'diffrl.core.dtype'
local T = require 'diffrl.core.tensor'
local F = require 'diffrl.core.factory'
local ffi = require 'ffi'

local C = api.C
local M = {}

M.Tensor, M.Size, M.is_tensor = T.Tensor, T.Size, T.is_tensor
for _, k in ipairs { 'tensor', 'empty', 'zeros', 'ones', 'full', 'randn', 'rand',
                     'Generator', 'manual_seed', 'default_generator', 'row_generators' } do
  M[k] = F[k]
end
for k, v in pairs(require 'diffrl.core.ops_shape') do M[k] = v end
for k, v in pairs(require 'diffrl.core.ops_attention') do M[k] = v end
for k, v in pairs(require 'diffrl.core.ops_conv') do M[k] = v end
for k, v in pairs(require 'diffrl.core.ops_nn') do M[k] = v end
for k, v in pairs(require 'diffrl.core.autograd') do M[k] = v end
for k, v in pairs(require 'diffrl.core.inplace') do M[k] = v end
for k, v in pairs(require 'diffrl.core.ops_compose') do M[k] = v end
for k, v in pairs(require 'diffrl.core.io') do M[k] = v end
for k, v in pairs(require 'diffrl.core.tokenizer') do M[k] = v end
for k, v in pairs(require 'diffrl.core.image') do M[k] = v end
for k, v in pairs(require 'diffrl.core.jpeg') do M[k] = v end
for k, v in pairs(require 'diffrl.core.data') do M[k] = v end -- data (issue 11)
for k, v in pairs(require 'diffrl.core.torch_load') do M[k] = v end
for k, v in pairs(require 'diffrl.core.wordpiece') do M[k] = v end
for _, k in ipairs { 'Model', 'load_model', 'is_model' } do M[k] = require('diffrl.core.models')[k] end
M.load_imagereward = require('diffrl.core.reward_models').load_imagereward -- issue 10
M.load_clip = require('diffrl.core.clip_models').load_clip
M.load_aesthetic = require('diffrl.core.clip_models').load_aesthetic

-- dtypes as torch spells them: dr.float32 == 'float32'
for code = 0, #dtypes.names do M[dtypes.names[code]] = dtypes.names[code] end
M.float, M.half, M.long, M.int = 'float32', 'float16', 'int64', 'int32'

-- Functional forms: dr.add(a, b) == a:add(b)
for _, k in ipairs { 'add', 'sub', 'mul', 'div', 'neg', 'matmul', 'sum', 'reshape', 'view',
                     'permute', 'transpose', 'narrow', 'select', 'clone', 'contiguous' } do
  local method = T.Tensor[k]
  M[k] = function(t, ...)
    if not T.is_tensor(t) then api.raise(k .. ': expected a tensor, got ' .. type(t)) end
    return method(t, ...)
  end
end

function M.get_num_threads() return C.dr_get_num_threads() end
function M.set_num_threads(n)
  if type(n) ~= 'number' or n < 1 or n % 1 ~= 0 then
    api.raise('set_num_threads: expected a positive integer, got ' .. tostring(n))
  end
  C.dr_set_num_threads(n)
end

-- Bytes of live tensor storage on 'cpu' or 'cuda' (torch.cuda.memory_allocated).
function M.memory_allocated(device)
  return tonumber(C.dr_memory_allocated(dtypes.device(device or 'cpu').type))
end
-- Frees cached blocks (tensors already released but kept for reuse).
function M.empty_cache() C.dr_empty_cache() end

M.cuda = {}
function M.cuda.device_count() return C.dr_cuda_device_count() end
function M.cuda.is_available() return C.dr_cuda_device_count() > 0 end
local function cuda_index(device)
  if device == nil then return 0 end
  if type(device) == 'number' then return device end
  local d = dtypes.device(device)
  if d.type ~= C.DR_CUDA then api.raise(('cuda: expected a cuda device, got %s'):format(device)) end
  return d.index
end
-- The caching allocator's counters (bytes and counts) for one device (default 0):
-- allocated, reserved, peak_allocated, peak_reserved, alloc_count, cache_hits,
-- cuda_malloc_count, oom_count.
function M.cuda.memory_stats(device)
  local s = ffi.new('dr_cuda_memory_stats')
  api.check(C.dr_cuda_get_memory_stats(cuda_index(device), s))
  local out = {}
  for _, k in ipairs { 'allocated', 'reserved', 'peak_allocated', 'peak_reserved', 'alloc_count',
                       'cache_hits', 'cuda_malloc_count', 'oom_count' } do
    out[k] = tonumber(s[k])
  end
  return out
end
-- Waits for the device's queued work; errors from earlier kernels surface here.
function M.cuda.synchronize(device) api.check(C.dr_cuda_synchronize(cuda_index(device))) end
-- Returns the cached free blocks of every device (and the CPU's) to the system.
function M.cuda.empty_cache() C.dr_empty_cache() end

-- Build facts as a table of strings (see `diffrl --version`).
function M.build_info()
  local b = C.dr_get_build_info()
  local out = {}
  for _, k in ipairs { 'version', 'git_commit', 'build_type', 'compiler', 'blas', 'cuda',
                       'cudnn', 'nccl', 'mpi', 'sanitize' } do
    out[k] = ffi.string(b[k])
  end
  out.luajit = require('jit').version
  out.library = api.library
  return out
end

M.version = ffi.string(C.dr_get_build_info().version)

return M
