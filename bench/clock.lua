-- bench/clock.lua: a monotonic wall clock for the Lua benchmarks, in seconds.
--   local now = dofile((arg[0]:match('^(.*)/[^/]*$') or '.') .. '/clock.lua')
local ffi = require 'ffi'

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } dr_bench_timespec;
int clock_gettime(int clk_id, dr_bench_timespec *tp);
]])
local ts = ffi.new('dr_bench_timespec')
-- diffrl.progress may have declared clock_gettime first, with its own struct
if not pcall(ffi.C.clock_gettime, 1, ts) then ts = ffi.new('struct diffrl_timespec') end

return function()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
