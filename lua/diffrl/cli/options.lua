-- diffrl.cli.options: the `--key value` / `--key=value` command-line parser shared by
-- `diffrl sample` and `diffrl eval`.
--
--   local o, err = options.parse(args, {
--     numeric = { steps = 'int', cfg = 'num' },  -- converted; 'int' must be whole
--     string = { model = true },                -- kept as given
--     list = { prompts = true },                -- repeatable: o.prompts = { ... }
--     flag = { quiet = true },                  -- no value: o.quiet = true
--     short = { o = 'output', h = 'help' },     -- -o FILE is --output FILE
--   }, o0)                                      -- o0: the table to fill (defaults)
-- Returns the filled table, or nil and a message naming the argument.
local M = {}

function M.parse(args, spec, o)
  o = o or {}
  local numeric, string, list, flag, short = spec.numeric or {}, spec.string or {}, spec.list or {},
                                             spec.flag or {}, spec.short or {}
  for k in pairs(list) do o[k] = o[k] or {} end
  local i = 1
  while i <= #args do
    local a = args[i]
    local key, value = a:match('^%-%-([%w_-]+)=(.*)$')
    if not key then key = a:match('^%-%-([%w_-]+)$') end
    local s = a:match('^%-(%w)$')
    if s and short[s] then key = short[s] end
    if not key then return nil, ("unexpected argument '%s'"):format(a) end
    if flag[key] then
      if value ~= nil then return nil, ('--%s takes no value'):format(key) end
      o[key] = true
    elseif numeric[key] or string[key] or list[key] then
      if value == nil then
        i = i + 1
        value = args[i]
        if value == nil then return nil, ('option --%s needs a value'):format(key) end
      end
      if numeric[key] then
        local n = tonumber(value)
        if not n or (numeric[key] == 'int' and n % 1 ~= 0) then
          return nil, ("--%s expects %s, got '%s'"):format(key,
            numeric[key] == 'int' and 'an integer' or 'a number', value)
        end
        value = n
      end
      if list[key] then table.insert(o[key], value) else o[key] = value end
    else
      return nil, ("unknown option '%s'"):format(a)
    end
    i = i + 1
  end
  return o
end

return M
