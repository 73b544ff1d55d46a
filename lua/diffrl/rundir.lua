-- diffrl.rundir: the run folder of a training run, and its checkpoints.
--
--   local run = rundir.create(dir, { config_text = src, info = {...}, keep = 3 })
--   local run = rundir.open(dir[, { keep = 3 }])      -- resuming; run.config_text
--   run:log{ step = 1, loss = 0.5 }                   -- one line of metrics.jsonl
--   run:log({ step = 0, ... }, 'eval')                -- one line of eval.jsonl
--   run:read_log('eval')                              -- its lines as tables
--   run:save_grid(step, images, prompts)              -- samples/step_000010.png + .txt
--   run:save_heldout('before', images, prompts)       -- heldout/before.png + .txt
--   run:save_checkpoint(step, { tensors = {...}, lua = {...} })
--   local step, path = run:latest_checkpoint()
--   local state = rundir.load_checkpoint(path)        -- { tensors = ..., lua = ... }
--   run:truncate_metrics(step)                        -- on resume, before logging again
--   run.dir  run.path('samples')  run.info (run.json)  run:close()
--
-- A trainer logs step N's metrics before saving step N's checkpoint: then a run
-- killed at any moment and resumed from its latest checkpoint S (truncate_metrics(S),
-- continue at S + 1) writes the same metrics.jsonl as one never interrupted.
--
-- The folder:
--   run.json       build info, git commit, start time, argv, plus opts.info
--   config.lua     the resolved config, as Lua source
--   metrics.jsonl  one JSON object per line, keys sorted, numbers as %.17g; NaN and
--                  inf are written as null and their keys listed under "nonfinite"
--   eval.jsonl     the same, for held-out evaluations (step 0: before training)
--   heldout/       before.png / after.png (+ .txt): held-out samples, same noise
--   samples/       step_000010.png (a grid) and step_000010.txt (its prompts)
--   checkpoints/   step_000020/{tensors.safetensors, state.lua}, the last `keep`
--
-- A checkpoint is built in checkpoints/.tmp-step_000020-<pid>/, every file and the
-- folder fsync'ed, then renamed into place and checkpoints/ fsync'ed: a crash leaves
-- either the whole checkpoint or none of it (plus a .tmp- folder, removed at open).
-- Same metrics give the same bytes, so a resumed run's metrics.jsonl can equal an
-- uninterrupted run's.
local ffi = require 'ffi'
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'
local literal = require 'diffrl.config.literal'

local raise = api.raise
local M = {}

-- ---- POSIX, through the FFI ---------------------------------------------------
-- Each declaration on its own: another module may have declared one already.
for _, decl in ipairs {
  'int mkdir(const char *path, unsigned int mode);',
  'int rmdir(const char *path);',
  'int unlink(const char *path);',
  'int rename(const char *oldpath, const char *newpath);',
  'int open(const char *path, int flags, ...);',
  'int close(int fd);',
  'int fsync(int fd);',
  'long write(int fd, const void *buf, size_t count);',
  'int getpid(void);',
  'char *strerror(int errnum);',
  'int gethostname(char *name, size_t len);',
  'void *opendir(const char *name);',
  'void *readdir(void *dirp);',
  'int closedir(void *dirp);',
  -- glibc's struct dirent on 64-bit Linux
  'struct diffrl_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen;' ..
    ' unsigned char d_type; char d_name[256]; };',
} do
  pcall(ffi.cdef, decl)
end

local C = ffi.C
local O_RDONLY, O_WRONLY, O_CREAT, O_TRUNC = 0, 1, 64, 512
local EEXIST = 17
local dirent_ptr = ffi.typeof('struct diffrl_dirent *')

local function errno_text() return ffi.string(C.strerror(ffi.errno())) end

-- The entry names of a folder (without . and ..), sorted; nil, message if unreadable.
local function list_dir(path)
  local d = C.opendir(path)
  if d == nil then return nil, errno_text() end
  local names = {}
  while true do
    local e = C.readdir(d)
    if e == nil then break end
    local name = ffi.string(ffi.cast(dirent_ptr, e).d_name)
    if name ~= '.' and name ~= '..' then names[#names + 1] = name end
  end
  C.closedir(d)
  table.sort(names)
  return names
end

local function is_dir(path)
  local d = C.opendir(path)
  if d == nil then return false end
  C.closedir(d)
  return true
end

local function exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() return true end
  return is_dir(path)
end

-- mkdir -p; nil, message on failure.
local function make_dirs(path)
  local prefix = path:sub(1, 1) == '/' and '/' or ''
  for part in path:gmatch('[^/]+') do
    prefix = prefix .. part
    if C.mkdir(prefix, 511) ~= 0 and ffi.errno() ~= EEXIST then
      return nil, ('%s: %s'):format(prefix, errno_text())
    end
    if not is_dir(prefix) then return nil, prefix .. ': exists and is not a folder' end
    prefix = prefix .. '/'
  end
  return true
end

-- rm -r of a path, never following symbolic links.
local function remove_tree(path)
  if C.unlink(path) == 0 then return end
  local names = list_dir(path)
  if not names then return end -- already gone
  for _, name in ipairs(names) do remove_tree(path .. '/' .. name) end
  C.rmdir(path)
end

-- Flushes a file or folder to disk. Folders: best effort (some file systems refuse).
local function fsync_path(path, must)
  local fd = C.open(path, O_RDONLY)
  if fd < 0 then
    if must then raise(('rundir: cannot open %s to sync it: %s'):format(path, errno_text())) end
    return
  end
  local ok = C.fsync(fd) == 0
  local err = not ok and errno_text()
  C.close(fd)
  if must and not ok then raise(('rundir: fsync %s failed: %s'):format(path, err)) end
end

-- Writes `text` to `path` (created or truncated) and fsyncs it.
local function write_synced(path, text)
  local fd = C.open(path, O_WRONLY + O_CREAT + O_TRUNC, ffi.new('int', 438))
  if fd < 0 then raise(('rundir: cannot write %s: %s'):format(path, errno_text())) end
  local buf, done = ffi.cast('const char *', text), 0
  while done < #text do
    local n = tonumber(C.write(fd, buf + done, #text - done))
    if n < 0 then
      local err = errno_text()
      C.close(fd)
      raise(('rundir: writing %s failed: %s'):format(path, err))
    end
    done = done + n
  end
  local ok = C.fsync(fd) == 0
  local err = not ok and errno_text()
  C.close(fd)
  if not ok then raise(('rundir: fsync %s failed: %s'):format(path, err)) end
end

local function dirname(path)
  return path:match('^(.*)/[^/]*$') or '.'
end

local function rename(from, to)
  if C.rename(from, to) ~= 0 then
    raise(('rundir: cannot rename %s to %s: %s'):format(from, to, errno_text()))
  end
end

-- The file appears whole or not at all: temp file beside it, fsync, rename.
local function write_atomic(path, text)
  local tmp = ('%s.tmp.%d'):format(path, C.getpid())
  local ok, err = pcall(function()
    write_synced(tmp, text)
    rename(tmp, path)
  end)
  if not ok then
    C.unlink(tmp)
    error(err, 0)
  end
  fsync_path(dirname(path))
end

local function read_file(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local text = f:read('*a')
  f:close()
  return text
end

M._fs = { list_dir = list_dir, remove_tree = remove_tree, exists = exists, read_file = read_file }

-- ---- JSON, byte-deterministic ------------------------------------------------------

local function format_number(x) return ('%.17g'):format(x) end

local json_escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                       ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return json_escapes[c] or (c == '\127' and c) or ('\\u%04x'):format(c:byte())
  end) .. '"'
end

-- 1..n with nothing else: a JSON array.
local function array_length(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do if t[i] == nil then return nil end end
  return n > 0 and n or nil
end

local function sorted_string_keys(t, what)
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= 'string' then
      raise(('%s: keys must be strings, got the %s key %s'):format(what, type(k), tostring(k)))
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

-- JSON text of `v`; non-finite numbers become null and their paths are added to
-- `nonfinite`. `indent` (a string) pretty-prints; nil gives one line.
local function json_encode(v, what, nonfinite, path, indent, depth, seen)
  local tv = type(v)
  if tv == 'nil' then return 'null' end
  if tv == 'boolean' then return tostring(v) end
  if tv == 'string' then return json_string(v) end
  if tv == 'number' then
    if v ~= v or v == math.huge or v == -math.huge then
      if nonfinite then nonfinite[#nonfinite + 1] = path end
      return 'null'
    end
    return format_number(v)
  end
  if tv == 'cdata' and (ffi.istype('int64_t', v) or ffi.istype('uint64_t', v)) then
    return (tostring(v):gsub('U?LL$', ''))
  end
  if tv ~= 'table' or getmetatable(v) ~= nil then
    raise(('%s: %s is a %s, which JSON cannot hold'):format(what, path, type(v)))
  end
  seen = seen or {}
  if seen[v] then raise(('%s: %s contains itself'):format(what, path)) end
  seen[v] = true
  depth = depth or 0
  local nl, pad, sep = '', '', ':'
  if indent then
    nl, pad, sep = '\n' .. indent:rep(depth + 1), '\n' .. indent:rep(depth), ': '
  end
  local parts = {}
  local n = array_length(v)
  if n then
    for i = 1, n do
      parts[i] = json_encode(v[i], what, nonfinite, ('%s[%d]'):format(path, i), indent, depth + 1, seen)
    end
    seen[v] = nil
    return '[' .. nl .. table.concat(parts, ',' .. nl) .. pad .. ']'
  end
  local keys = sorted_string_keys(v, what)
  if #keys == 0 then seen[v] = nil return '{}' end
  for i, k in ipairs(keys) do
    local value = v[k]
    local sub = path == '' and k or (path .. '.' .. k)
    parts[i] = json_string(k) .. sep .. json_encode(value, what, nonfinite, sub, indent, depth + 1, seen)
  end
  seen[v] = nil
  return '{' .. nl .. table.concat(parts, ',' .. nl) .. pad .. '}'
end

-- One metrics line (without the newline): keys sorted, NaN/inf as null and named
-- under "nonfinite".
function M.metrics_line(metrics)
  if type(metrics) ~= 'table' then raise('log: expected a table of metrics, got ' .. type(metrics)) end
  if metrics.nonfinite ~= nil then raise("log: 'nonfinite' is reserved (it lists NaN/inf metrics)") end
  local nonfinite, text = {}, {}
  local keys = sorted_string_keys(metrics, 'log')
  for _, k in ipairs(keys) do text[k] = json_encode(metrics[k], 'log', nonfinite, k) end
  if #nonfinite > 0 then
    table.sort(nonfinite)
    text.nonfinite = json_encode(nonfinite, 'log', nil, 'nonfinite')
    keys[#keys + 1] = 'nonfinite'
    table.sort(keys)
  end
  for i, k in ipairs(keys) do keys[i] = json_string(k) .. ':' .. text[k] end
  return '{' .. table.concat(keys, ',') .. '}'
end

M.json_encode = function(v, indent) return json_encode(v, 'json', nil, '', indent) end

-- ---- Lua values as Lua source (state.lua) ------------------------------------------

-- 64-bit integer cdata as LuaJIT reads them back (123LL, 123ULL); a tensor is refused
local function state_value(v, path)
  if type(v) == 'cdata' and (ffi.istype('int64_t', v) or ffi.istype('uint64_t', v)) then return tostring(v) end
  if core.is_tensor(v) then
    raise(('save_checkpoint: %s is a tensor; put tensors in state.tensors'):format(path))
  end
end

local function refuse_state(path, problem)
  raise(('save_checkpoint: %s: %s (state.lua holds numbers, strings, booleans, 64-bit integers and '
         .. 'tables of them)'):format(path, problem))
end

-- Lua source `return <value>` that reads back as an equal value (numbers exactly):
-- diffrl.config.literal's writer, with 64-bit integers, and tables with a metatable
-- written as plain tables.
function M.serialize(value, name)
  return literal.serialize(value, { root = name or 'state', value = state_value, metatables = true,
                                    refuse = refuse_state })
end

-- Reads back what serialize wrote, in an empty environment; nil, message if it can't.
function M.deserialize(text, name)
  local chunk, err = loadstring(text, '=' .. name)
  if not chunk then return nil, err end
  setfenv(chunk, {})
  local ok, value = pcall(chunk)
  if not ok then return nil, tostring(value) end
  return value
end

-- ---- the run folder ------------------------------------------------------------------

local Run = {}
Run.__index = Run

local function step_name(step) return ('step_%06d'):format(step) end

local function check_step(op, step)
  if type(step) ~= 'number' or step % 1 ~= 0 or step < 0 then
    raise(('%s: step must be an integer >= 0, got %s'):format(op, tostring(step)))
  end
end

local check_options = api.check_options

local function keep_option(op, opts)
  local keep = opts.keep == nil and 3 or opts.keep
  if type(keep) ~= 'number' or keep % 1 ~= 0 or keep < 1 then
    raise(('%s: keep must be an integer >= 1, got %s'):format(op, tostring(keep)))
  end
  return keep
end

local function check_dir(op, dir)
  if type(dir) ~= 'string' or dir == '' then
    raise(('%s: the run folder must be a path, got %s'):format(op, tostring(dir)))
  end
  return dir == '/' and dir or (dir:gsub('/+$', ''))
end

local function new_run(dir, keep)
  local run = setmetatable({ dir = dir, keep = keep }, Run)
  -- run.path('x') and run:path('x') both work
  run.path = function(a, b)
    local name = b
    if type(a) ~= 'table' then name = a end
    return dir .. '/' .. name
  end
  return run
end

local function command_line()
  local a = rawget(_G, 'arg')
  if type(a) ~= 'table' then return {} end
  local lo = 0
  while a[lo - 1] ~= nil do lo = lo - 1 end
  local out = {}
  for i = lo, #a do out[#out + 1] = tostring(a[i]) end
  return out
end

local function hostname()
  local buf = ffi.new('char[256]')
  if C.gethostname(buf, 255) ~= 0 then return nil end
  return ffi.string(buf)
end

function M.create(dir, opts)
  dir = check_dir('rundir.create', dir)
  opts = check_options('rundir.create', opts, { config_text = true, info = true, keep = true })
  local keep = keep_option('rundir.create', opts)
  if type(opts.config_text) ~= 'string' then
    raise('rundir.create: config_text (the resolved config as Lua source) must be a string, got '
          .. type(opts.config_text))
  end
  if opts.info ~= nil and type(opts.info) ~= 'table' then
    raise('rundir.create: info must be a table, got ' .. type(opts.info))
  end
  if exists(dir .. '/run.json') then
    raise(('rundir.create: %s already holds a run (run.json exists); resume it with ' ..
           '--resume %s, or choose another run.dir'):format(dir, dir))
  end
  local ok, err = make_dirs(dir)
  if not ok then raise(('rundir.create: cannot create the run folder %s (%s)'):format(dir, err)) end
  for _, sub in ipairs { 'samples', 'checkpoints' } do
    ok, err = make_dirs(dir .. '/' .. sub)
    if not ok then raise(('rundir.create: cannot create %s/%s (%s)'):format(dir, sub, err)) end
  end
  local build = core.build_info()
  local info = {
    argv = command_line(), build = build, git_commit = build.git_commit,
    start_time = os.date('!%Y-%m-%dT%H:%M:%SZ'), hostname = hostname(), pid = C.getpid(),
  }
  for k, v in pairs(opts.info or {}) do info[k] = v end
  write_atomic(dir .. '/config.lua', opts.config_text)
  -- run.json last: it marks a folder whose creation finished
  write_atomic(dir .. '/run.json', json_encode(info, 'rundir.create: info', nil, '', '  ') .. '\n')
  local run = new_run(dir, keep)
  run.config_text, run.info = opts.config_text, info
  return run
end

function M.open(dir, opts)
  dir = check_dir('rundir.open', dir)
  opts = check_options('rundir.open', opts, { keep = true })
  local keep = keep_option('rundir.open', opts)
  if not is_dir(dir) then raise(('rundir.open: there is no run folder %s to resume'):format(dir)) end
  local info_text = read_file(dir .. '/run.json')
  if not info_text then
    raise(('rundir.open: %s is not a run folder: %s/run.json is missing'):format(dir, dir))
  end
  local config_text = read_file(dir .. '/config.lua')
  if not config_text then
    raise(('rundir.open: %s/config.lua is missing (the run cannot be resumed without its config)')
      :format(dir))
  end
  local info = require('cjson.safe').decode(info_text)
  if type(info) ~= 'table' then raise(('rundir.open: %s/run.json is not valid JSON'):format(dir)) end
  for _, sub in ipairs { 'samples', 'checkpoints' } do
    local ok, err = make_dirs(dir .. '/' .. sub)
    if not ok then raise(('rundir.open: cannot create %s/%s (%s)'):format(dir, sub, err)) end
  end
  -- what a crash left half-written
  local ckpt = dir .. '/checkpoints'
  for _, name in ipairs(list_dir(ckpt) or {}) do
    if name:match('^%.tmp%-') then remove_tree(ckpt .. '/' .. name) end
  end
  local run = new_run(dir, keep)
  run.config_text, run.info = config_text, info
  return run
end

-- ---- metrics ------------------------------------------------------------------------

-- run:log(metrics[, stream]): one line of <stream>.jsonl, 'metrics' by default;
-- 'eval' holds the held-out evaluations (step 0 = before training).
local STREAMS = { 'metrics', 'eval' }
local STREAM_OK = { metrics = true, eval = true }

function Run:log(metrics, stream)
  stream = stream or 'metrics'
  if not STREAM_OK[stream] then
    raise(("log: unknown stream '%s' (streams: %s)"):format(tostring(stream), table.concat(STREAMS, ', ')))
  end
  if type(metrics) ~= 'table' or type(metrics.step) ~= 'number' then
    raise('log: metrics must be a table with a numeric step, got ' ..
          (type(metrics) == 'table' and ('step = ' .. tostring(metrics.step)) or type(metrics)))
  end
  local line = M.metrics_line(metrics) .. '\n'
  self._files = self._files or {}
  local f = self._files[stream]
  if not f then
    local path = ('%s/%s.jsonl'):format(self.dir, stream)
    local err
    f, err = io.open(path, 'ab')
    if not f then raise(('log: cannot open %s: %s'):format(path, err)) end
    self._files[stream] = f
  end
  local ok, err = f:write(line)
  if ok then ok, err = f:flush() end
  if not ok then raise(('log: writing %s/%s.jsonl failed: %s'):format(self.dir, stream, tostring(err))) end
end

-- Keeps the lines with step <= `step` (and drops a line a crash cut short) of
-- metrics.jsonl and eval.jsonl, so that a resumed run appends to exactly what an
-- uninterrupted run had written. Returns the number of metrics lines kept.
function Run:truncate_metrics(step)
  if type(step) ~= 'number' then raise('truncate_metrics: step must be a number, got ' .. type(step)) end
  self:close()
  local cjson = require 'cjson.safe'
  local kept_metrics = 0
  for _, stream in ipairs(STREAMS) do
    local path = ('%s/%s.jsonl'):format(self.dir, stream)
    local text = read_file(path)
    if text then
      local kept = {}
      for line in text:gmatch('([^\n]*)\n') do -- only complete lines
        local m = cjson.decode(line)
        if type(m) == 'table' and type(m.step) == 'number' and m.step <= step then
          kept[#kept + 1] = line .. '\n'
        end
      end
      write_atomic(path, table.concat(kept))
      if stream == 'metrics' then kept_metrics = #kept end
    end
  end
  return kept_metrics
end

function Run:close()
  for stream, f in pairs(self._files or {}) do
    f:close()
    self._files[stream] = nil
  end
end

-- The lines of <stream>.jsonl as tables (those that parse), in order.
function Run:read_log(stream)
  stream = stream or 'metrics'
  if not STREAM_OK[stream] then raise(("read_log: unknown stream '%s'"):format(tostring(stream))) end
  local text = read_file(('%s/%s.jsonl'):format(self.dir, stream))
  local rows, cjson = {}, require 'cjson.safe'
  for line in (text or ''):gmatch('([^\n]*)\n') do
    local m = cjson.decode(line)
    if type(m) == 'table' then rows[#rows + 1] = m end
  end
  return rows
end

-- ---- sample grids --------------------------------------------------------------------

-- A grid PNG and its prompts (one per line) at <stem>.png / <stem>.txt.
local function save_images(op, stem, images, prompts, opts)
  if not core.is_tensor(images) then raise(op .. ': images must be a tensor, got ' .. type(images)) end
  if type(prompts) ~= 'table' then raise(op .. ': prompts must be a list of strings, got ' .. type(prompts)) end
  local count = images.ndim == 4 and images:size(1) or 1
  if #prompts ~= count then
    raise(('%s: %d images but %d prompts'):format(op, count, #prompts))
  end
  local lines = {}
  for i, p in ipairs(prompts) do
    if type(p) ~= 'string' then raise(('%s: prompts[%d] is a %s, not a string'):format(op, i, type(p))) end
    lines[i] = p:gsub('[\r\n]+', ' ') .. '\n' -- one prompt per line, always
  end
  core.save_image(stem .. '.png', images, opts)
  write_atomic(stem .. '.txt', table.concat(lines))
  return stem .. '.png', stem .. '.txt'
end

function Run:save_grid(step, images, prompts, opts)
  check_step('save_grid', step)
  return save_images('save_grid', self.dir .. '/samples/' .. step_name(step), images, prompts, opts)
end

-- run:save_heldout('before' | 'after', images, prompts): heldout/<name>.png + .txt,
-- the held-out samples diffrl report shows side by side.
function Run:save_heldout(name, images, prompts, opts)
  if name ~= 'before' and name ~= 'after' then
    raise(("save_heldout: name must be 'before' or 'after', got %s"):format(tostring(name)))
  end
  local ok, err = make_dirs(self.dir .. '/heldout')
  if not ok then raise(('save_heldout: cannot create %s/heldout (%s)'):format(self.dir, err)) end
  return save_images('save_heldout', self.dir .. '/heldout/' .. name, images, prompts, opts)
end

-- ---- checkpoints ------------------------------------------------------------------------

-- Steps of the complete checkpoints, ascending.
local function checkpoint_steps(ckpt)
  local steps = {}
  for _, name in ipairs(list_dir(ckpt) or {}) do
    local s = name:match('^step_(%d+)$')
    if s then steps[#steps + 1] = tonumber(s) end
  end
  table.sort(steps)
  return steps
end

function Run:save_checkpoint(step, state)
  check_step('save_checkpoint', step)
  if type(state) ~= 'table' then raise('save_checkpoint: state must be a table {tensors=, lua=}') end
  for k in pairs(state) do
    if k ~= 'tensors' and k ~= 'lua' then
      raise(("save_checkpoint: unknown state field '%s' (fields: lua, tensors)"):format(tostring(k)))
    end
  end
  local tensors = state.tensors or {}
  if type(tensors) ~= 'table' then raise('save_checkpoint: state.tensors must be a table of name = tensor') end
  local source = M.serialize(state.lua or {}, 'state.lua') -- fails before anything is written

  local ckpt = self.dir .. '/checkpoints'
  local final = ckpt .. '/' .. step_name(step)
  local tmp = ('%s/.tmp-%s-%d'):format(ckpt, step_name(step), C.getpid())
  remove_tree(tmp)
  local ok, err = make_dirs(tmp)
  if not ok then raise(('save_checkpoint: cannot create %s (%s)'):format(tmp, err)) end
  ok, err = pcall(function()
    core.save(tmp .. '/tensors.safetensors', tensors,
              { metadata = { format = 'diffrl-checkpoint', step = tostring(step) } })
    write_synced(tmp .. '/state.lua', source)
    fsync_path(tmp, true)
    if exists(final) then -- the same step again: move the old one out of the way first
      local old = ('%s/.tmp-%s-%d-old'):format(ckpt, step_name(step), C.getpid())
      remove_tree(old)
      rename(final, old)
      rename(tmp, final)
      remove_tree(old)
    else
      rename(tmp, final)
    end
  end)
  if not ok then
    remove_tree(tmp)
    error(err, 0)
  end
  fsync_path(ckpt)
  local steps = checkpoint_steps(ckpt)
  for i = 1, #steps - self.keep do
    -- out of sight in one rename first: a crash while deleting leaves no half checkpoint
    local name = step_name(steps[i])
    local doomed = ('%s/.tmp-delete-%s-%d'):format(ckpt, name, C.getpid())
    if C.rename(ckpt .. '/' .. name, doomed) == 0 then remove_tree(doomed) end
  end
  return final
end

-- step, path of the newest complete checkpoint; nil if there is none.
function Run:latest_checkpoint()
  local ckpt = self.dir .. '/checkpoints'
  local steps = checkpoint_steps(ckpt)
  local step = steps[#steps]
  if not step then return nil end
  return step, ckpt .. '/' .. step_name(step)
end

-- { tensors = { name = tensor }, lua = table } from a checkpoint folder. Tensors map
-- the file (copy-on-write), as dr.load.
function M.load_checkpoint(path)
  if type(path) ~= 'string' then raise('load_checkpoint: path must be a string, got ' .. type(path)) end
  path = path:gsub('/+$', '')
  if not is_dir(path) then raise(('load_checkpoint: no checkpoint folder %s'):format(path)) end
  local state_path = path .. '/state.lua'
  local text = read_file(state_path)
  if not text then raise(('load_checkpoint: %s is missing'):format(state_path)) end
  local lua, err = M.deserialize(text, state_path)
  if type(lua) ~= 'table' then
    raise(('load_checkpoint: %s is corrupt: %s'):format(state_path, err or 'not a table'))
  end
  local tensor_path = path .. '/tensors.safetensors'
  if not exists(tensor_path) then raise(('load_checkpoint: %s is missing'):format(tensor_path)) end
  local ok, tensors = pcall(core.load, tensor_path)
  if not ok then
    local msg = tostring(tensors):gsub('^[^:\n]*:%d+: ', '') -- raise adds our caller's position
    if not msg:find(tensor_path, 1, true) then msg = tensor_path .. ': ' .. msg end
    raise('load_checkpoint: ' .. msg)
  end
  return { tensors = tensors, lua = lua }
end

return M
