-- dtypes and devices: the names users write (torch's), the codes C uses.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local C = api.C

local M = {}

-- code -> canonical name, as in torch: dr.float32 == 'float32'
M.names = { [0] = 'float32', 'float16', 'bfloat16', 'int64', 'int32', 'uint8', 'bool' }

local codes = {}
for code = 0, #M.names do codes[M.names[code]] = code end
-- torch's aliases
codes.float, codes.half, codes.long, codes.int = codes.float32, codes.float16, codes.int64, codes.int32
codes.f32, codes.f16, codes.bf16, codes.i64, codes.i32, codes.u8 =
  codes.float32, codes.float16, codes.bfloat16, codes.int64, codes.int32, codes.uint8
M.codes = codes

function M.is_float(code) return code <= 2 end

-- A dtype name (or alias) -> code; errors name the bad value and the choices.
function M.code(name)
  if name == nil then return 0 end
  local c = codes[name]
  if c then return c end
  api.raise(('unknown dtype %s; expected one of float32, float16, bfloat16, int64, int32, ' ..
             'uint8, bool'):format(type(name) == 'string' and ("'" .. name .. "'") or tostring(name)))
end

-- Devices: 'cpu', 'cuda', 'cuda:N' -> dr_device
local device_t = ffi.typeof('dr_device')
local CPU = device_t(C.DR_CPU, 0)
function M.device(spec)
  if spec == nil or spec == 'cpu' then return CPU end
  if type(spec) == 'string' then
    if spec == 'cuda' then return device_t(C.DR_CUDA, 0) end
    local idx = spec:match('^cuda:(%d+)$')
    if idx then return device_t(C.DR_CUDA, tonumber(idx)) end
  end
  api.raise(("unknown device %s; expected 'cpu', 'cuda' or 'cuda:N'"):format(tostring(spec)))
end

function M.device_name(d)
  if d.type == C.DR_CPU then return 'cpu' end
  return 'cuda:' .. tonumber(d.index)
end

return M
