-- Running chunks: `diffrl run FILE`, `diffrl -e CODE`, stdin. Errors end the
-- process with code 1 and "diffrl: file:line: message" plus a traceback (a config
-- error: "diffrl: config: ..." alone).
local host = require 'diffrl.host'

local M = {}

local function fail(msg)
  io.stderr:write('diffrl: ', msg, '\n')
  return 1
end

-- Drops the host's own frames (the CLI and the protected call) from a traceback:
-- everything below the outermost "in main chunk" of the user's code.
function M.trim_traceback(msg)
  local out, last_main = {}, nil
  for line in (msg .. '\n'):gmatch('([^\n]*)\n') do
    if line:match('diffrl/cli/') or line:match("in function 'xpcall'") then break end
    out[#out + 1] = line
    if line:match('in main chunk$') then last_main = #out end
  end
  for i = #out, (last_main or #out) + 1, -1 do out[i] = nil end
  if out[#out] == 'stack traceback:' then out[#out] = nil end
  return table.concat(out, '\n')
end

-- Calls chunk(...) with Ctrl-C turned into an "interrupted" error.
local function call(chunk, ...)
  local ok, err = host.xpcall(chunk, ...)
  io.stdout:flush()
  if ok then return 0 end
  err = M.trim_traceback(tostring(err))
  -- a bad setting (diffrl.config names the key or file) is the user's input, not a
  -- bug: its message alone, without the frames of the config code
  if err:match('^config: ') then err = err:gsub('\nstack traceback:.*$', '') end
  io.stderr:write('diffrl: ', err, '\n')
  if err:match('^[^\n]*interrupted$') or err:match('^[^\n]*interrupted\n') then return 130 end
  return 1
end
M.call = call

-- The global `arg`, as the lua binary sets it.
local function set_arg(before, script, args)
  local a = { [0] = script }
  for i, v in ipairs(before) do a[i - #before - 1] = v end
  for i, v in ipairs(args) do a[i] = v end
  _G.arg = a
end

local function load_script(name)
  if name == '-' then
    local src = io.stdin:read('*a') or ''
    return loadstring(src:gsub('^#![^\n]*', ''), '=stdin')
  end
  local f = io.open(name, 'r')
  if not f then return nil, ('cannot open %s'):format(name) end
  f:close()
  return loadfile(name)
end

-- args = { FILE, ARGS... }
function M.file(args)
  local script = args[1]
  if not script then
    io.stderr:write("diffrl run: missing FILE\nTry 'diffrl run --help'.\n")
    return 2
  end
  if script:sub(1, 1) == '-' and script ~= '-' then
    io.stderr:write(("diffrl run: unknown option '%s'\nTry 'diffrl run --help'.\n"):format(script))
    return 2
  end
  local chunk, err = load_script(script)
  if not chunk then return fail(err) end
  local rest = { unpack(args, 2) }
  set_arg({ 'diffrl', 'run' }, script, rest)
  return call(chunk, unpack(rest))
end

-- diffrl [-e CODE]... [-i] [ARGS...]
function M.options(argv)
  local chunks, interactive, i = {}, false, 1
  while i <= #argv do
    local a = argv[i]
    if a == '-e' then
      if not argv[i + 1] then
        io.stderr:write("diffrl: -e needs a chunk of code\nTry 'diffrl --help'.\n")
        return 2
      end
      chunks[#chunks + 1] = argv[i + 1]
      i = i + 2
    elseif a == '-i' then
      interactive = true
      i = i + 1
    elseif a == '--' then
      i = i + 1
      break
    else
      break
    end
  end
  local rest = { unpack(argv, i) }
  set_arg({ 'diffrl' }, 'diffrl', rest)
  for _, code in ipairs(chunks) do
    local chunk, err = loadstring(code, '=(command line)')
    if not chunk then return fail(err) end
    local rc = call(chunk, unpack(rest))
    if rc ~= 0 then return rc end
  end
  if interactive then return require('diffrl.cli.repl').run() end
  return 0
end

return M
