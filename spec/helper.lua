-- Shared helpers for the specs: running the `diffrl` binary as a subprocess,
-- temporary files, comparing nested lists of numbers.
--
-- Load with
--   local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
-- It loads nothing from diffrl (the MPI helpers require it when called), so it works
-- inside the host and under plain luajit.
local M = {}

-- ---- files ---------------------------------------------------------------------

function M.write_file(path, text)
  local f = assert(io.open(path, 'wb'))
  f:write(text)
  f:close()
  return path
end

function M.read_file(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local text = f:read('*a')
  f:close()
  return text
end

-- A fresh temporary file holding `text`; the caller removes it (os.remove).
-- `suffix` (e.g. '.lua') is appended to the name.
function M.temp_file(text, suffix)
  local path = os.tmpname()
  if suffix then
    os.remove(path)
    path = path .. suffix
  end
  return M.write_file(path, text or '')
end

-- ---- subprocesses ---------------------------------------------------------------

-- 'it''s' -> a single-quoted shell word.
function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- The diffrl binary under test: $DIFFRL_BIN (ctest sets it).
function M.bin()
  local b = os.getenv('DIFFRL_BIN')
  if not b or b == '' then
    error('DIFFRL_BIN is not set: run the specs through ctest, or set ' ..
          'DIFFRL_BIN=/path/to/diffrl', 2)
  end
  return b
end

-- Runs `program` with `args` (a list of strings), `stdin` (a string; empty
-- input if nil) fed to it, and returns { code =, stdout =, stderr = }.
-- stdout and stderr go to temporary files so neither can block the other.
function M.run_program(program, args, stdin)
  local input = M.temp_file(stdin or '')
  local out, err = os.tmpname(), os.tmpname()
  local words = { M.shell_quote(program) }
  for i, a in ipairs(args or {}) do words[i + 1] = M.shell_quote(a) end
  local cmd = ('%s <%s >%s 2>%s; echo $?'):format(table.concat(words, ' '), M.shell_quote(input),
                                                  M.shell_quote(out), M.shell_quote(err))
  local p = assert(io.popen(cmd, 'r'))
  local status = p:read('*a')
  p:close()
  local result = {
    code = tonumber(status:match('(%d+)%s*$')),
    stdout = M.read_file(out) or '',
    stderr = M.read_file(err) or '',
  }
  os.remove(input)
  os.remove(out)
  os.remove(err)
  return result
end

-- M.diffrl({ 'run', 'x.lua' }, stdin): the diffrl binary under test.
function M.diffrl(args, stdin)
  return M.run_program(M.bin(), args, stdin)
end

-- ---- source positions -------------------------------------------------------------

-- The line this is called from; write it on the same line as the call whose
-- position an error should report: `local line, ok, err = h.line(), pcall(f)`.
function M.line()
  return debug.getinfo(2, 'l').currentline
end

-- The spec file the caller lives in, as Lua's short_src shows it in errors.
function M.short_src()
  return debug.getinfo(2, 'S').short_src
end

-- The message of the error f(...) raises; fails the spec if it raises none.
function M.error_of(f, ...)
  local ok, err = pcall(f, ...)
  require('luassert').is_false(ok, 'expected an error, but the call succeeded')
  return tostring(err)
end

-- Escapes Lua pattern magic characters, for building patterns from text.
function M.escape_pattern(s)
  return (s:gsub('[%^%$%(%)%%%.%[%]%*%+%-%?]', '%%%0'))
end

-- ---- numbers ------------------------------------------------------------------------

-- nil if `actual` and `expected` (numbers, booleans, or nested lists of them)
-- agree within `tol` (absolute plus relative to |expected|); otherwise a message
-- naming the first place they differ, e.g. "at [2][1]: expected 1.5, got 1.75".
function M.difference(actual, expected, tol, path)
  tol = tol or 1e-6
  path = path or ''
  local where = path == '' and '' or ('at ' .. path .. ': ')
  if type(expected) == 'table' then
    if type(actual) ~= 'table' then
      return ('%sexpected a list of %d, got %s'):format(where, #expected, tostring(actual))
    end
    if #actual ~= #expected then
      return ('%sexpected %d elements, got %d'):format(where, #expected, #actual)
    end
    for i = 1, #expected do
      local d = M.difference(actual[i], expected[i], tol, path .. '[' .. i .. ']')
      if d then return d end
    end
    return nil
  end
  if type(expected) == 'number' and type(actual) == 'number' then
    local ok = actual == expected or math.abs(actual - expected) <= tol * (1 + math.abs(expected))
               or (actual ~= actual and expected ~= expected)
    if ok then return nil end
  elseif actual == expected then
    return nil
  end
  return ('%sexpected %s, got %s'):format(where, tostring(expected), tostring(actual))
end

-- Raises (as a failed assertion, at the caller) unless the two agree.
function M.assert_close(actual, expected, tol)
  local d = M.difference(actual, expected, tol)
  if d then error(d, 2) end
end

-- A list of n values of f(i), i = 1..n.
function M.list(n, f)
  local out = {}
  for i = 1, n do out[i] = f(i) end
  return out
end

-- Why a two-rank spec cannot run here (nil when it can): no MPI in this build, or
-- no mpirun on PATH.
function M.mpi_missing()
  local dr = require 'diffrl'
  if dr.build_info().mpi == 'none' then return 'this diffrl is built without MPI (-DDIFFRL_MPI=ON)' end
  if not io.popen('command -v mpirun'):read('*l') then return 'mpirun is not on PATH' end
end

-- mpirun arguments for sanitizer builds: OpenMPI keeps allocations until exit in
-- plugins it unloads, which LeakSanitizer cannot name; the ranks of the #mpi specs
-- skip the leak check (ASan's other checks stay on). ctest's c_test_comm_mpi2
-- checks core/comm for leaks with OpenMPI's suppressed by name instead.
function M.mpi_sanitizer_args()
  local dr = require 'diffrl'
  if not dr.build_info().sanitize:find('address', 1, true) then return {} end
  return { '-x', 'ASAN_OPTIONS=detect_leaks=0' }
end

return M
