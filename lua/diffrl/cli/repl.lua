-- The interactive session: line editing and history from the host (libedit),
-- expressions printed (tensors as PyTorch prints them), multi-line statements,
-- Tab completion of names, errors printed without ending the session.
local host = require 'diffrl.host'

local M = {}

local KEYWORDS = { 'and', 'break', 'do', 'else', 'elseif', 'end', 'false', 'for', 'function',
                   'if', 'in', 'local', 'nil', 'not', 'or', 'repeat', 'return', 'then',
                   'true', 'until', 'while' }

-- ---- showing values ----------------------------------------------------------

local function is_identifier(k)
  return type(k) == 'string' and k:match('^[%a_][%w_]*$') ~= nil
end

-- A compact, bounded rendering: tensors and other values by tostring, tables
-- inline to a small depth.
local function show(v, depth)
  depth = depth or 0
  if type(v) == 'string' then return depth == 0 and v or ('%q'):format(v) end
  if type(v) ~= 'table' or getmetatable(v) and getmetatable(v).__tostring then
    return tostring(v)
  end
  if depth >= 2 then return '{...}' end
  local parts, n = {}, #v
  for i = 1, math.min(n, 20) do parts[#parts + 1] = show(v[i], depth + 1) end
  if n > 20 then parts[#parts + 1] = ('... (%d items)'):format(n) end
  local keys = {}
  for k in pairs(v) do
    if not (type(k) == 'number' and k >= 1 and k <= n and k % 1 == 0) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for i, k in ipairs(keys) do
    if i > 20 then parts[#parts + 1] = '...'; break end
    local key = is_identifier(k) and k or ('[' .. show(k, 2) .. ']')
    parts[#parts + 1] = key .. ' = ' .. show(v[k], depth + 1)
  end
  return '{' .. table.concat(parts, ', ') .. '}'
end
M.show = show

-- ---- completion -------------------------------------------------------------------

-- Names visible on a value: table keys, its __index table, tensor methods.
local function names_of(v)
  local out, seen = {}, {}
  local function add(k)
    if is_identifier(k) and not seen[k] then seen[k] = true; out[#out + 1] = k end
  end
  local function add_table(t, depth)
    if type(t) ~= 'table' or depth > 3 then return end
    for k in pairs(t) do add(k) end
    local mt = getmetatable(t)
    if mt and type(mt.__index) == 'table' then add_table(mt.__index, depth + 1) end
  end
  if type(v) == 'table' then
    add_table(v, 0)
  elseif type(v) == 'cdata' then
    local dr = package.loaded['diffrl']
    if dr and dr.is_tensor(v) then
      add_table(dr.Tensor, 0)
      for _, k in ipairs { 'shape', 'dtype', 'device', 'ndim', 'is_cuda' } do add(k) end
    end
  elseif type(v) == 'string' then
    add_table(string, 0)
  end
  return out
end

-- Candidates for `word` ("dr.ze", "t:si", "pri"): full replacement strings.
function M.complete(word)
  local prefix, sep, partial = word:match('^(.*)([%.:])([%w_]*)$')
  local candidates, base = {}, ''
  if prefix then
    local v = _G
    for part in prefix:gmatch('[^%.:]+') do
      if not is_identifier(part) then return {} end
      local ok, nv = pcall(function() return v[part] end)
      if not ok or nv == nil then return {} end
      v = nv
    end
    base = prefix .. sep
    for _, k in ipairs(names_of(v)) do
      if k:sub(1, #partial) == partial then
        local ok, val = pcall(function() return v[k] end)
        if sep == '.' or (ok and type(val) == 'function') then candidates[#candidates + 1] = k end
      end
    end
  else
    partial = word
    for _, k in ipairs(names_of(_G)) do
      if k:sub(1, #partial) == partial then candidates[#candidates + 1] = k end
    end
    for _, k in ipairs(KEYWORDS) do
      if k:sub(1, #partial) == partial then candidates[#candidates + 1] = k end
    end
  end
  table.sort(candidates)
  for i, k in ipairs(candidates) do candidates[i] = base .. k end
  return candidates
end

-- ---- reading and evaluating -----------------------------------------------------


local function incomplete(err)
  return type(err) == 'string' and err:match("'<eof>'$") ~= nil
end

-- Compiles `src` as an expression first ("1+1" prints 2), then as statements.
-- An expression chunk returns pack(<src>): evaluating <src> as an argument (not
-- a tail call) keeps the chunk's frame, so errors report "stdin:1:". It is
-- called with pack as its `...`.
local EXPR = 'local __repl_pack = ...; return __repl_pack(%s\n)'
-- Returns chunk, true for an expression | chunk, nil for statements |
-- nil, the compiler's message.
local function compile(src)
  local expr = src:match('^%s*=(.*)$')
  if expr then
    local chunk, err = loadstring(EXPR:format(expr), '=stdin')
    return chunk, chunk and true or err
  end
  local chunk = loadstring(EXPR:format(src), '=stdin')
  if chunk then return chunk, true end
  local _, err = loadstring('return ' .. src, '=stdin')
  if incomplete(err) then return nil, err end -- an expression still being typed
  return loadstring(src, '=stdin')
end

local function pack(...) return { n = select('#', ...), ... } end

-- Runs a compiled line: true, packed results | false, message with traceback.
local function evaluate(chunk, is_expression)
  if is_expression then return host.xpcall(chunk, pack) end
  local r = pack(host.xpcall(chunk))
  if not r[1] then return false, r[2] end
  return true, pack(unpack(r, 2, r.n))
end

-- An error as the REPL shows it: the message, then only the traceback frames of
-- code typed here or loaded by the user (not diffrl's own plumbing).
local function repl_error(msg)
  msg = require('diffrl.cli.run').trim_traceback(msg)
  local out = {}
  for line in (msg .. '\n'):gmatch('([^\n]*)\n') do
    local plumbing = line:match('/diffrl/core/') or line:match("%[C%]: in function 'error'") or
                     line:match('^%s*%[builtin#')
    if not plumbing then out[#out + 1] = line end
  end
  -- a traceback of the typed line alone ("stdin:1: in main chunk") says nothing new
  if out[#out - 1] == 'stack traceback:' and out[#out]:match('^%s*stdin:%d+: in main chunk$') then
    out[#out] = nil
  end
  if out[#out] == 'stack traceback:' then out[#out] = nil end
  return table.concat(out, '\n')
end

local function history_path()
  local p = os.getenv('DIFFRL_HISTORY')
  if p and p ~= '' then return p end
  local home = os.getenv('HOME')
  return home and (home .. '/.diffrl_history') or nil
end

function M.run()
  local dr = require 'diffrl'
  _G.dr = dr
  local tty = host.isatty(0)
  local read
  local hist = tty and history_path()
  if tty then
    host.set_completer(function(word) return M.complete(word) end)
    if hist then host.read_history(hist) end
    read = host.readline
  else
    read = function(prompt)
      io.write(prompt)
      io.flush()
      return io.read('*l')
    end
  end
  if tty then
    io.write(('diffrl %s (%s) -- dr = require "diffrl" is loaded; Ctrl-D exits\n'):format(
      dr.version, require('jit').version))
  end
  while true do
    local line = read('> ')
    if line == nil then break end
    local src = line
    local chunk, info = compile(src)
    while not chunk and incomplete(info) do
      local more = read('>> ')
      if more == nil then break end
      src = src .. '\n' .. more
      chunk, info = compile(src)
    end
    if src:match('%S') and tty then host.add_history(src) end
    if chunk then
      local ok, results = evaluate(chunk, info == true)
      if ok then
        local shown = {}
        for i = 1, results.n do shown[#shown + 1] = show(results[i]) end
        if #shown > 0 then io.write(table.concat(shown, '\t'), '\n') end
      else
        io.write(repl_error(tostring(results)), '\n')
      end
    elseif src:match('%S') then
      io.write(tostring(info), '\n')
    end
    io.flush()
  end
  if tty then io.write('\n') end
  if hist then host.write_history(hist, 1000) end
  return 0
end

return M
