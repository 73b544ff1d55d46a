-- diffrl.config: recipe settings as Lua tables checked against a schema, layered
-- (schema defaults < recipe defaults < --config FILE < --set overrides), read from
-- the command line, and written back as Lua (run_dir/config.lua).
--
--   local schema = config.schema(config.merge(config.common(), {
--     train = { lr = { type = 'number', default = 1e-4, min = 0, doc = 'AdamW step size' } },
--   }))
--   local cfg, args = config.from_cli(schema, arg, { sample = { batch_size = 8 } })
--
-- A spec is a nested table whose leaves are fields
--   { type = 'number'|'integer'|'string'|'boolean'|'list'|'table'|'function'|'any',
--     default =, min =, max =, choices = {...}, of = TYPE (lists), doc =, optional = true }
-- and whose other tables are sections. A field without default that is not optional is
-- required. Every error is raised as "config: ..." without a position (error(msg, 0)).
-- Pure Lua: no diffrl.core, so it also runs under plain luajit.
local M = {}
local literal = require 'diffrl.config.literal'
local sorted_keys, is_list, number_text = literal.sorted_keys, literal.is_list, literal.number_text
local describe, scalar = literal.describe, literal.scalar

local function fail(fmt, ...)
  error('config: ' .. (select('#', ...) > 0 and fmt:format(...) or fmt), 0)
end

local TYPES = { number = true, integer = true, string = true, boolean = true, list = true,
                table = true, ['function'] = true, any = true }
local ATTRIBUTES = { type = true, default = true, min = true, max = true, choices = true,
                     of = true, doc = true, optional = true }

local function is_field(t)
  return type(t) == 'table' and type(t.type) == 'string'
end

-- Plain tables are copied; objects (tables with a metatable) are shared.
local function deep_copy(v, seen)
  if type(v) ~= 'table' or getmetatable(v) ~= nil then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local out = {}
  seen[v] = out
  for k, x in pairs(v) do out[deep_copy(k, seen)] = deep_copy(x, seen) end
  return out
end
M.copy = deep_copy

local function split_path(path)
  if type(path) ~= 'string' or path == '' then fail('a key must be a non-empty string, got %s', tostring(path)) end
  local parts = {}
  for part in (path .. '.'):gmatch('([^.]*)%.') do
    if part == '' then fail("malformed key '%s'", path) end
    parts[#parts + 1] = part
  end
  return parts
end

-- ---- values in messages ---------------------------------------------------------------

local function type_name(field)
  local t = field.type
  if t == 'integer' then return 'an integer' end
  if t == 'any' then return 'a value' end
  if t == 'list' and field.of then return ('a list of %ss'):format(field.of == 'any' and 'value' or field.of) end
  return 'a ' .. t
end

local function choices_text(choices)
  local out = {}
  for i, c in ipairs(choices) do
    out[i] = type(c) == 'string' and ("'%s'"):format(c) or describe(c)
  end
  return table.concat(out, ', ')
end

-- ---- checking one value against its field ---------------------------------------------

local function has_type(t, v)
  if t == 'any' then return v ~= nil end
  if t == 'number' then return type(v) == 'number' and v == v end
  if t == 'integer' then
    return type(v) == 'number' and v == math.floor(v) and v > -math.huge and v < math.huge
  end
  if t == 'list' then return type(v) == 'table' and is_list(v) end
  return type(v) == t
end

local function check_scalar(field, path, v)
  if field.choices then
    for _, c in ipairs(field.choices) do if c == v then return end end
    fail('%s: expected one of %s, got %s', path, choices_text(field.choices), choices_text { v })
  end
  if type(v) == 'number' then
    if field.min and v < field.min then
      fail('%s: must be >= %s, got %s', path, number_text(field.min), number_text(v))
    end
    if field.max and v > field.max then
      fail('%s: must be <= %s, got %s', path, number_text(field.max), number_text(v))
    end
  end
end

local function check_value(field, path, v)
  if not has_type(field.type, v) then fail('%s: expected %s, got %s', path, type_name(field), describe(v)) end
  if field.type == 'list' then
    local of = field.of and { type = field.of }
    for i, x in ipairs(v) do
      local where = ('%s[%d]'):format(path, i)
      if of and not has_type(of.type, x) then fail('%s: expected %s, got %s', where, type_name(of), describe(x)) end
      check_scalar(field, where, x)
    end
  else
    check_scalar(field, path, v)
  end
end

-- ---- schema ----------------------------------------------------------------------------

local Schema = {}
Schema.__index = Schema

local function add_fields(schema, node, prefix)
  for _, k in ipairs(sorted_keys(node)) do
    local v = node[k]
    if type(k) ~= 'string' or not k:match('^[%a_][%w_]*$') then
      fail("schema: '%s%s' is not a valid key name", prefix, tostring(k))
    end
    local path = prefix .. k
    if is_field(v) then
      for a in pairs(v) do
        if not ATTRIBUTES[a] then fail("schema: %s: unknown attribute '%s'", path, tostring(a)) end
      end
      if not TYPES[v.type] then fail("schema: %s: unknown type '%s'", path, v.type) end
      if v.of ~= nil and (v.type ~= 'list' or not TYPES[v.of] or v.of == 'list') then
        fail("schema: %s: 'of' must be an element type of a list field", path)
      end
      if v.choices ~= nil and (type(v.choices) ~= 'table' or #v.choices == 0) then
        fail("schema: %s: 'choices' must be a non-empty list", path)
      end
      for _, bound in ipairs { 'min', 'max' } do
        if v[bound] ~= nil and type(v[bound]) ~= 'number' then
          fail("schema: %s: '%s' must be a number", path, bound)
        end
      end
      if v.doc ~= nil and type(v.doc) ~= 'string' then fail("schema: %s: 'doc' must be a string", path) end
      if v.default ~= nil then
        local ok, err = pcall(check_value, v, path, v.default)
        if not ok then fail('schema: default of %s', err:sub(#'config: ' + 1)) end
      end
      schema.fields[path] = v
      schema.paths[#schema.paths + 1] = path
    elseif type(v) == 'table' then
      schema.sections[path] = true
      add_fields(schema, v, path .. '.')
    else
      fail("schema: %s: expected a field ({ type = ... }) or a section (a table), got %s", path, describe(v))
    end
  end
end

-- spec -> schema: checks the spec (known types and attributes, defaults that pass
-- their own field) and indexes its fields by dotted path.
function M.schema(spec)
  if getmetatable(spec) == Schema then return spec end
  if type(spec) ~= 'table' then fail('schema: expected a table, got %s', describe(spec)) end
  local self = setmetatable({ spec = deep_copy(spec), fields = {}, paths = {}, sections = {} }, Schema)
  add_fields(self, self.spec, '')
  return self
end

function M.is_schema(x) return getmetatable(x) == Schema end

-- Deep merge of two spec tables (neither is changed); b wins. A field in b replaces
-- a field or section of a; a table without `type` in b over a field of a changes
-- only the attributes it names: merge(common, { train = { iterations = { default = 50 } } }).
function M.merge(a, b)
  local out = deep_copy(a or {})
  for k, v in pairs(b or {}) do
    local old = out[k]
    if type(v) == 'table' and not is_field(v) and is_field(old) then
      for attr, x in pairs(v) do old[attr] = deep_copy(x) end
    elseif type(v) == 'table' and not is_field(v) and type(old) == 'table' then
      out[k] = M.merge(old, v)
    else
      out[k] = deep_copy(v)
    end
  end
  return out
end

-- The keys every recipe accepts, with these names (issue 6).
function M.common()
  return {
    run = {
      dir = { type = 'string', optional = true,
              doc = 'run folder (config.lua, metrics.jsonl, samples, checkpoints); ' ..
                    'unset: the trainer picks runs/<recipe>-<time>' },
      seed = { type = 'integer', default = 0, doc = 'Philox seed: the same seed and config give the same run' },
      device = { type = 'string', default = 'cpu',
                 doc = "where the models run: 'cpu', 'cuda' or 'cuda:N' (a CUDA build); rewards get "
                       .. 'their images on the cpu' },
    },
    model = {
      path = { type = 'string',
               doc = 'diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)' },
    },
    train = {
      iterations = { type = 'integer', default = 1000, min = 1,
                     doc = 'RL iterations (sample, score, policy-gradient steps)' },
    },
    sample = {
      batch_size = { type = 'integer', min = 1, doc = 'images sampled per iteration on each rank' },
      steps = { type = 'integer', min = 1, doc = 'denoising steps per image' },
    },
    checkpoint = {
      every = { type = 'integer', min = 1, doc = 'write a checkpoint every N iterations' },
      keep = { type = 'integer', default = 3, min = 1, doc = 'checkpoints kept (the oldest are removed)' },
    },
  }
end

-- ---- paths ------------------------------------------------------------------------------

function M.get(tbl, path)
  local v = tbl
  for _, part in ipairs(split_path(path)) do
    if type(v) ~= 'table' then return nil end
    v = v[part]
  end
  return v
end

function M.set(tbl, path, value)
  local parts = split_path(path)
  local node = tbl
  for i = 1, #parts - 1 do
    local next_node = node[parts[i]]
    if next_node == nil then
      next_node = {}
      node[parts[i]] = next_node
    elseif type(next_node) ~= 'table' then
      fail("cannot set '%s': '%s' is %s, not a table", path, table.concat(parts, '.', 1, i), describe(next_node))
    end
    node = next_node
  end
  node[parts[#parts]] = value
  return tbl
end

-- ---- suggestions --------------------------------------------------------------------------

local function levenshtein(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    local ca = a:byte(i)
    for j = 1, #b do
      local cost = ca == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end
M.levenshtein = levenshtein

-- The valid path nearest to `key` (fields and sections): within Levenshtein distance
-- max(2, #key/3); failing that, the one field whose last name equals key's last name
-- ('train.batch_size' -> 'sample.batch_size').
function M.suggest(schema, key)
  schema = M.schema(schema)
  local candidates = {}
  for _, p in ipairs(schema.paths) do candidates[#candidates + 1] = p end
  for p in pairs(schema.sections) do candidates[#candidates + 1] = p end
  table.sort(candidates)
  local best, best_d = nil, math.max(2, math.floor(#key / 3)) + 1
  for _, p in ipairs(candidates) do
    local d = levenshtein(key, p)
    if d < best_d then best, best_d = p, d end
  end
  if best then return best end
  local last, found = key:match('([^.]*)$'), nil
  for _, p in ipairs(schema.paths) do
    if p:match('([^.]*)$') == last then
      if found then return nil end
      found = p
    end
  end
  return found
end

local function unknown(schema, key)
  local s = M.suggest(schema, key)
  if s then fail("unknown key '%s' (did you mean '%s'?)", key, s) end
  fail("unknown key '%s'", key)
end

-- Lua literals: parsed and written without running them (diffrl.config.literal)
M.parse_literal, M.serialize = literal.parse, literal.serialize

-- ---- --set values ---------------------------------------------------------------------------

local BOOLEANS = { ['true'] = true, yes = true, ['1'] = true, on = true,
                   ['false'] = false, no = false, ['0'] = false, off = false }

local function trim(s) return (s:gsub('^%s+', ''):gsub('%s+$', '')) end

-- text -> a value of the field's type (or the text itself when it does not parse;
-- check_value then reports it).
local function from_text(field, text, path, source)
  local t = field.type
  local function bad()
    fail("%s: expected %s, got '%s' (from '%s')", path, type_name(field), text, source)
  end
  if t == 'string' then return text end
  if t == 'number' or t == 'integer' then
    local v = tonumber(trim(text))
    if not v or not has_type(t, v) then bad() end
    return v
  end
  if t == 'boolean' then
    local v = BOOLEANS[trim(text):lower()]
    if v == nil then bad() end
    return v
  end
  if t == 'function' then fail("%s is a function; it cannot be set from the command line (from '%s')", path, source) end
  if t == 'list' then
    if trim(text):sub(1, 1) == '{' then return M.parse_literal(text) end
    local out = {}
    if trim(text) == '' then return out end
    for item in (text .. ','):gmatch('([^,]*),') do
      item = trim(item)
      local of = field.of
      if of == 'number' or of == 'integer' or ((of == nil or of == 'any') and tonumber(item)) then
        out[#out + 1] = from_text({ type = of or 'number' }, item, ('%s[%d]'):format(path, #out + 1), source)
      elseif of == 'boolean' then
        out[#out + 1] = from_text({ type = of }, item, ('%s[%d]'):format(path, #out + 1), source)
      else
        out[#out + 1] = item
      end
    end
    return out
  end
  if t == 'table' then return M.parse_literal(text) end
  -- any: a literal when it reads as one, else the text
  local ok, v = pcall(M.parse_literal, text)
  if ok then return v end
  return text
end

local Overrides = {}

-- A resolve layer of command-line overrides: a list of 'a.b=v' strings or of
-- { key =, value = [, text =] } (value a string, parsed by the field's type).
function M.overrides(list)
  local out = setmetatable({}, Overrides)
  for i, s in ipairs(list or {}) do
    if type(s) == 'string' then
      local key, value = s:match('^([^=]+)=(.*)$')
      if not key then fail("expected KEY=VALUE, got '%s'", s) end
      out[i] = { key = key, value = value, text = s }
    else
      out[i] = { key = s.key, value = s.value, text = s.text or (s.key .. '=' .. tostring(s.value)) }
    end
  end
  return out
end

-- One override { key =, value = (text) } -> the layer { [key] = parsed value },
-- parsed by the type of the schema's field.
function M.layer_from_set(schema, s)
  schema = M.schema(schema)
  local field = schema.fields[s.key]
  if not field then unknown(schema, s.key) end
  local text = s.text or (s.key .. '=' .. tostring(s.value))
  return { [s.key] = from_text(field, s.value, s.key, text) }
end

-- ---- resolve --------------------------------------------------------------------------------

-- The field owning `path` when a prefix of it is a free-form ('table'/'any') field.
local function free_form_owner(schema, path)
  local parts = split_path(path)
  for i = #parts - 1, 1, -1 do
    local f = schema.fields[table.concat(parts, '.', 1, i)]
    if f then return (f.type == 'table' or f.type == 'any') and f or nil end
  end
end

local function apply_overrides(schema, result, layer)
  for _, s in ipairs(layer) do
    local field = schema.fields[s.key]
    if field then
      M.set(result, s.key, from_text(field, s.value, s.key, s.text))
    elseif free_form_owner(schema, s.key) then
      M.set(result, s.key, from_text({ type = 'any' }, s.value, s.key, s.text))
    else
      unknown(schema, s.key)
    end
  end
end

local function apply_table(schema, result, layer, prefix)
  for _, k in ipairs(sorted_keys(layer)) do
    local v = layer[k]
    if type(k) ~= 'string' then unknown(schema, prefix .. tostring(k)) end
    local path = prefix .. k
    if schema.fields[path] then
      M.set(result, path, deep_copy(v))
    elseif schema.sections[path] then
      if type(v) ~= 'table' then fail("'%s' is a section: expected a table, got %s", path, describe(v)) end
      apply_table(schema, result, v, path .. '.')
    elseif k:find('.', 1, true) and (schema.fields[path] or free_form_owner(schema, path)) then
      M.set(result, path, deep_copy(v))
    else
      unknown(schema, path)
    end
  end
end

-- schema, layers... -> a plain table holding every field (defaults filled in, each
-- section a table), checked against the schema. Layers apply in order, later wins:
-- nested tables ({ train = { lr = 1 } } or { ['train.lr'] = 1 }) or overrides
-- (config.overrides / parse_args().sets). nil layers are skipped.
function M.resolve(schema, ...)
  schema = M.schema(schema)
  local result = {}
  for path in pairs(schema.sections) do
    if M.get(result, path) == nil then M.set(result, path, {}) end
  end
  for _, path in ipairs(schema.paths) do
    local d = schema.fields[path].default
    if d ~= nil then M.set(result, path, deep_copy(d)) end
  end
  for i = 1, select('#', ...) do
    local layer = select(i, ...)
    if getmetatable(layer) == Overrides then
      apply_overrides(schema, result, layer)
    elseif type(layer) == 'table' then
      apply_table(schema, result, layer, '')
    elseif layer ~= nil then
      fail('resolve: layer %d is %s, not a table', i, describe(layer))
    end
  end
  for _, path in ipairs(schema.paths) do
    local field, v = schema.fields[path], M.get(result, path)
    if v == nil then
      if not field.optional then
        fail("missing required key '%s'%s", path, field.doc and (': ' .. field.doc) or '')
      end
    else
      check_value(field, path, v)
    end
  end
  return result
end

function Schema:resolve(...) return M.resolve(self, ...) end

-- ---- command line -----------------------------------------------------------------------------

local USAGE = "expected --config FILE, --resume DIR, --set KEY=VALUE, KEY=VALUE, --help or --"

-- argv -> { config_file =, resume =, sets = (an overrides layer), help =, rest = }
function M.parse_args(argv)
  local args = { sets = setmetatable({}, Overrides), help = false, rest = {} }
  local function add_set(text, what)
    local key, value = text:match('^([%a_][%w_%.]*)=(.*)$')
    if not key then fail("%s needs KEY=VALUE, got '%s'", what, text) end
    args.sets[#args.sets + 1] = { key = key, value = value, text = text }
  end
  local function once(name, value)
    if args[name] ~= nil then fail('%s given twice', name == 'config_file' and '--config' or '--' .. name) end
    args[name] = value
  end
  local i, n = 1, #(argv or {})
  while i <= n do
    local a = argv[i]
    local opt, inline = a:match('^(%-%-[%w-]+)=(.*)$')
    opt = opt or a
    local function value()
      if inline then return inline end
      i = i + 1
      if argv[i] == nil then fail('%s needs a value', opt) end
      return argv[i]
    end
    if a == '--' then
      for j = i + 1, n do args.rest[#args.rest + 1] = argv[j] end
      break
    elseif a == '-h' or a == '--help' then
      args.help = true
    elseif opt == '--config' then
      once('config_file', value())
    elseif opt == '--resume' then
      once('resume', value())
    elseif opt == '--set' then
      add_set(value(), '--set')
    elseif a:match('^[%a_][%w_%.]*=') then
      add_set(a, 'a setting')
    else
      fail("unknown argument '%s' (%s)", a, USAGE)
    end
    i = i + 1
  end
  return args
end

-- ---- config files -------------------------------------------------------------------------------

local function sandbox()
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
    rawequal = rawequal, rawget = rawget, rawset = rawset, setmetatable = setmetatable,
  }
  for _, lib in ipairs { 'math', 'string', 'table' } do
    env[lib] = {}
    for k, f in pairs(_G[lib]) do env[lib][k] = f end
  end
  env.string.dump = nil
  env._G = env
  return env
end

-- A Lua file returning a table, run with only safe functions (no io, os, require,
-- load*, debug). Errors name the file and line.
function M.load_file(path)
  local f, err = io.open(path, 'rb')
  if not f then fail('cannot open %s', err or path) end
  local text = f:read('*a')
  f:close()
  if text:byte(1) == 27 then fail('%s: precompiled chunks are not accepted', path) end
  local chunk, perr = loadstring((text:gsub('^#![^\n]*', '')), '@' .. path)
  if not chunk then fail('%s', perr) end
  setfenv(chunk, sandbox())
  local ok, v = pcall(chunk)
  if not ok then fail('%s', tostring(v)) end
  if type(v) ~= 'table' then fail('%s: expected the file to return a table, got %s', path, describe(v)) end
  return v
end

-- ---- help -------------------------------------------------------------------------------------

local function show(v)
  if type(v) == 'table' then return (M.serialize(v):gsub('^return ', ''):gsub('\n$', ''):gsub('%s+', ' ')) end
  return scalar(v) or ('<' .. type(v) .. '>')
end

-- Every key with its type, default, bounds and doc, section by section, after the
-- command-line options (opts.options = false leaves those out). opts.defaults: a
-- recipe's layer; a key it sets shows that value, then the schema's default.
function M.help(schema, opts)
  schema = M.schema(schema)
  local lines = {}
  if not (opts and opts.options == false) then
    lines = {
      'Options:',
      '  --config FILE      a Lua file returning settings (layered over the defaults)',
      '  --resume DIR       continue the run in DIR',
      '  --set KEY=VALUE    change one setting (also plain KEY=VALUE); repeatable',
      '  -h, --help         this text',
      '',
      'Settings (KEY  TYPE  = DEFAULT):',
    }
  end
  local section, width = nil, 0
  for _, path in ipairs(schema.paths) do width = math.max(width, #path) end
  for _, path in ipairs(schema.paths) do
    local f = schema.fields[path]
    local top = path:match('^[^.]*')
    if section and top ~= section then lines[#lines + 1] = '' end
    section = top
    local kind = f.type .. (f.of and (' of ' .. f.of) or '')
    local parts = { '  ' .. path .. (' '):rep(width - #path), kind .. (' '):rep(8 - #kind) }
    local own = opts and opts.defaults and M.get(opts.defaults, path)
    if own ~= nil and type(own) ~= 'table' or type(own) == 'table' and f.type == 'list' then
      -- the recipe's value, which is what a run gets unless it is set
      local schema_default = f.default ~= nil and show(f.default) or nil
      parts[#parts + 1] = '= ' .. show(own) .. ((schema_default and schema_default ~= show(own))
                                                 and ('  (schema: ' .. schema_default .. ')') or '')
    elseif f.default ~= nil then parts[#parts + 1] = '= ' .. show(f.default)
    elseif f.optional then parts[#parts + 1] = '(optional)'
    else parts[#parts + 1] = '(required)' end
    if f.min then parts[#parts + 1] = '>= ' .. number_text(f.min) end
    if f.max then parts[#parts + 1] = '<= ' .. number_text(f.max) end
    if f.choices then parts[#parts + 1] = 'one of ' .. choices_text(f.choices) end
    lines[#lines + 1] = table.concat(parts, '  ')
    if f.doc then lines[#lines + 1] = '      ' .. f.doc end
  end
  return table.concat(lines, '\n') .. '\n'
end

function Schema:help() return M.help(self) end

-- ---- all together -------------------------------------------------------------------------------

-- parse_args + load_file(--config) + resolve(schema, recipe_defaults, file, sets).
-- Returns cfg, args; with --help, returns nil, args (print config.help(schema)).
-- --resume is only reported (args.resume): the caller decides what resuming reads.
function M.from_cli(schema, argv, recipe_defaults)
  schema = M.schema(schema)
  local args = M.parse_args(argv or {})
  if args.help then return nil, args end
  local file = args.config_file and M.load_file(args.config_file)
  return M.resolve(schema, recipe_defaults, file, args.sets), args
end

return M
