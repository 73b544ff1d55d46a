-- diffrl.config.literal: Lua literals as text, read and written without running
-- anything: parse (a table/number/string/boolean literal, for --set values and
-- `diffrl eval`'s reward options), serialize (a table as `return { ... }` with sorted
-- keys, numbers exact: run_dir/config.lua, and checkpoints' state.lua through
-- diffrl.rundir's hooks), and the shortest exact text of a number
-- and of a value in messages. Errors are raised as "config: ..." (error(msg, 0)).
-- Pure Lua, as diffrl.config.
local M = {}

local function fail(fmt, ...)
  error('config: ' .. (select('#', ...) > 0 and fmt:format(...) or fmt), 0)
end

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
           repeat return then true until while]]):gmatch('%a+') do KEYWORDS[w] = true end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  local rank = { number = 1, string = 2, boolean = 3 }
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return (rank[ta] or 4) < (rank[tb] or 4) end
    if ta == 'boolean' then return (not a) and b end
    if ta == 'number' or ta == 'string' then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end

-- The length of t's run of values from 1 (no holes, unlike #t).
local function array_length(t)
  local n = 0
  while t[n + 1] ~= nil do n = n + 1 end
  return n
end

local function is_list(t)
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == array_length(t)
end

-- The shortest of %.15g/%.16g/%.17g that reads back as exactly v.
local function number_text(v)
  if v ~= v then return 'nan' end
  if v == math.huge then return 'inf' elseif v == -math.huge then return '-inf' end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    if v == 0 and 1 / v < 0 then return '-0.0' end
    return ('%d'):format(v)
  end
  for digits = 15, 16 do
    local s = ('%.' .. digits .. 'g'):format(v)
    if tonumber(s) == v then return s end
  end
  return ('%.17g'):format(v)
end

local function describe(v)
  local t = type(v)
  if t == 'number' then return number_text(v) end
  if t == 'string' then return ("'%s' (a string)"):format(v) end
  if t == 'boolean' then return tostring(v) end
  if t == 'nil' then return 'nothing' end
  return 'a ' .. t
end

-- ---- reading ----------------------------------------------------------------------------------

local function literal_error(text, why) fail("cannot read %s as a Lua literal: %s", ("%q"):format(text), why) end

-- Reads a table/number/string/boolean literal; nothing in `text` is executed.
function M.parse(text)
  local pos = 1
  local function skip()
    while true do
      local s, e = text:find('^%s+', pos)
      if s then pos = e + 1 end
      if text:sub(pos, pos + 1) == '--' then
        local long = text:match('^%-%-%[(=*)%[', pos)
        if long then
          local _, close = text:find(']' .. long .. ']', pos, true)
          if not close then literal_error(text, 'unfinished comment') end
          pos = close + 1
        else
          pos = (text:find('\n', pos, true) or #text) + 1
        end
      elseif not s then
        return
      end
    end
  end
  local function string_token()
    local q = text:sub(pos, pos)
    local finish
    if q == '"' or q == "'" then
      local i = pos + 1
      while true do
        local c = text:sub(i, i)
        if c == '' or c == '\n' then literal_error(text, 'unfinished string') end
        if c == '\\' then i = i + 2 elseif c == q then break else i = i + 1 end
      end
      finish = i
    else
      local eq = text:match('^%[(=*)%[', pos)
      local _, close = text:find(']' .. eq .. ']', pos, true)
      if not close then literal_error(text, 'unfinished string') end
      finish = close
    end
    -- A lone string token cannot execute anything; let Lua decode its escapes.
    local chunk, err = loadstring('return ' .. text:sub(pos, finish), '=literal')
    if not chunk then literal_error(text, err) end
    pos = finish + 1
    return setfenv(chunk, {})()
  end
  local value
  function value()
    skip()
    local c = text:sub(pos, pos)
    if c == '{' then
      pos = pos + 1
      local out, n = {}, 0
      while true do
        skip()
        if text:sub(pos, pos) == '}' then pos = pos + 1; return out end
        local key
        if text:sub(pos, pos) == '[' and not text:match('^%[=*%[', pos) then
          pos = pos + 1
          key = value()
          skip()
          if text:sub(pos, pos) ~= ']' then literal_error(text, "expected ']'") end
          pos = pos + 1
          skip()
          if text:sub(pos, pos) ~= '=' then literal_error(text, "expected '='") end
          pos = pos + 1
        else
          local name, after = text:match('^([%a_][%w_]*)%s*=()', pos)
          if name and not KEYWORDS[name] and text:sub(after, after) ~= '=' then
            key, pos = name, after
          end
        end
        local v = value()
        if key == nil then n = n + 1; key = n end
        if key ~= key then literal_error(text, 'nan is not a valid key') end
        out[key] = v
        skip()
        local sep = text:sub(pos, pos)
        if sep == ',' or sep == ';' then pos = pos + 1
        elseif sep ~= '}' then literal_error(text, ("unexpected '%s' at position %d"):format(sep, pos)) end
      end
    elseif c == '"' or c == "'" or text:match('^%[=*%[', pos) then
      return string_token()
    end
    local word = text:match('^[%a_][%w_]*', pos)
    if word == 'true' or word == 'false' then
      pos = pos + #word
      return word == 'true'
    end
    local num = text:match('^%-?%s*0[xX][%x%.]+[pP]?[%+%-]?%d*', pos) or
                text:match('^%-?%s*%.?%d[%d%.]*[eE][%+%-]?%d+', pos) or text:match('^%-?%s*%.?%d[%d%.]*', pos)
    if num and num:match('%d') then
      local neg, digits = num:match('^(%-?)%s*(.*)$')
      local v = tonumber(digits)
      if not v then literal_error(text, ("bad number '%s'"):format(num)) end
      pos = pos + #num
      return neg == '-' and -v or v
    end
    if c == '' then literal_error(text, 'unexpected end') end
    literal_error(text, ("only tables, numbers, strings and booleans are allowed, found '%s'")
      :format(text:match('^[^%s,;}]*', pos)))
  end
  local v = value()
  skip()
  if pos <= #text then literal_error(text, ("unexpected '%s' at position %d"):format(text:sub(pos, pos), pos)) end
  return v
end

-- ---- writing ----------------------------------------------------------------------------------

local function literal_number(v)
  if v ~= v then return '0/0' end
  if v == math.huge then return '1/0' elseif v == -math.huge then return '-1/0' end
  return number_text(v)
end

local function literal_string(s)
  return (('%q'):format(s):gsub('\\\n', '\\n'))
end

local function scalar(v)
  local t = type(v)
  if t == 'number' then return literal_number(v) end
  if t == 'string' then return literal_string(v) end
  if t == 'boolean' then return tostring(v) end
end

-- k as a key of the table at path
local function key_text(k, path, refuse)
  if type(k) == 'string' and k:match('^[%a_][%w_]*$') and not KEYWORDS[k] then return k end
  local s = scalar(k)
  if not s then refuse(path == '' and 'the table' or path, ('cannot write a %s key'):format(type(k))) end
  return '[' .. s .. ']'
end

-- tbl -> Lua source 'return { ... }' with sorted keys that load_file reads back to an
-- equal table (numbers exactly). opts:
--   header          comment lines on top
--   skip_functions  functions are written as comments instead of refused
--   root            the table's name in messages (default none: paths start at its keys)
--   value(v, path)  the text of a value that is neither a number, string, boolean nor a
--                   table without a metatable (cdata, a table with a metatable), or nil:
--                   then a table with a metatable is written as a plain table when
--                   opts.metatables is set, and anything else refused
--   refuse(path, problem)  raises for what cannot be written (default: "config:
--                   serialize: PATH: PROBLEM")
function M.serialize(tbl, opts)
  opts = opts or {}
  local refuse = opts.refuse or function(path, problem)
    fail('serialize: %s%s', path == '' and '' or path .. ': ', problem)
  end
  local root = opts.root or ''
  if type(tbl) ~= 'table' then refuse(root, ('expected a table, got %s'):format(describe(tbl))) end
  local out, active = {}, {}
  if opts.header then
    for line in (opts.header .. '\n'):gmatch('([^\n]*)\n') do out[#out + 1] = '-- ' .. line .. '\n' end
  end
  local function write(v, indent, path)
    local s = scalar(v)
    if s then out[#out + 1] = s; return end
    local t = type(v)
    if t ~= 'table' or getmetatable(v) ~= nil then
      s = opts.value and opts.value(v, path)
      if s then out[#out + 1] = s; return end
      if t ~= 'table' then refuse(path, ('cannot write a %s'):format(t)) end
      if not opts.metatables then refuse(path, 'cannot write a table with a metatable') end
    end
    if active[v] then refuse(path, 'the table contains itself') end
    if next(v) == nil then out[#out + 1] = '{}'; return end
    active[v] = true
    local n = array_length(v)
    local inline = is_list(v) and n <= 16
    for i = 1, n do inline = inline and scalar(v[i]) ~= nil and #scalar(v[i]) <= 24 end
    if inline then
      local items = {}
      for i = 1, n do items[i] = scalar(v[i]) end
      out[#out + 1] = '{ ' .. table.concat(items, ', ') .. ' }'
    else
      local inner = indent .. '  '
      out[#out + 1] = '{\n'
      for i = 1, n do
        out[#out + 1] = inner
        write(v[i], inner, ('%s[%d]'):format(path, i))
        out[#out + 1] = ',\n'
      end
      for _, k in ipairs(sorted_keys(v)) do
        local in_array = type(k) == 'number' and k >= 1 and k <= n and k == math.floor(k)
        if not in_array then
          local sub = path == '' and tostring(k) or path .. '.' .. tostring(k)
          if type(v[k]) == 'function' and opts.skip_functions then
            out[#out + 1] = inner .. '-- ' .. key_text(k, path, refuse) .. ' = <function, not saved>\n'
          else
            out[#out + 1] = inner .. key_text(k, path, refuse) .. ' = '
            write(v[k], inner, sub)
            out[#out + 1] = ',\n'
          end
        end
      end
      out[#out + 1] = indent .. '}'
    end
    active[v] = nil
  end
  out[#out + 1] = 'return '
  write(tbl, '', root)
  out[#out + 1] = '\n'
  return table.concat(out)
end

M.sorted_keys, M.is_list, M.number_text, M.describe, M.scalar = sorted_keys, is_list, number_text, describe, scalar
return M
