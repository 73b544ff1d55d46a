-- diffrl.rewards.server: a reward that lives in another process, over HTTP/JSON
-- (docs/reward-server.md has the protocol; tools/reward_server/ a reference server).
--
--   local reward = rewards.get('reward_server', { url = 'http://127.0.0.1:8000' })
--   local scores, info = reward(images, prompts, meta)
--
-- Each call splits the batch into requests of at most batch_size images (whole
-- groups of meta.groups stay together, for batch-level rewards such as fairness),
-- POSTs {images: [base64 PNG], prompts, metadata} to <url>/score and reads
-- {scores: [...], info: {...}}. A request that fails — no connection, a timeout, an
-- HTTP error, a body that is not the expected JSON — is retried `retries` times with
-- exponential backoff; then its images get NaN scores (the trainer skips them) and
-- the skip is counted: the run goes on. Before the first request, and after a call
-- that failed entirely, GET <url>/health is asked once: a server that does not answer
-- skips the whole call at once instead of waiting out every retry.
--
-- info (numbers, logged with the step): requests, retries, failed (requests given up
-- this call), skipped (images with NaN scores this call), skipped_total (since the
-- start), healthy (1 / 0), plus the server's numeric info averaged over requests.
--
-- Options: url (required; http:// or https://), batch_size (16; 0 = one request),
-- timeout (seconds per request, 60), connect_timeout (5), retries (2), backoff
-- (seconds before the first retry, doubling, 0.5), max_backoff (8), health (true),
-- metadata (a table sent with every request), proxy (true: libcurl's proxy
-- environment; false: never a proxy), log (true: a line on stderr per call with
-- skips, naming the last error).
-- HTTP goes through libcurl (libcurl.so.4, Debian's libcurl4) by LuaJIT's FFI.
local ffi = require 'ffi'
local cjson = require 'cjson'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local image = require 'diffrl.core.image'

local raise = api.raise
local M = {}

pcall(ffi.cdef, [[
typedef void CURL;
struct curl_slist;
CURL *curl_easy_init(void);
int curl_easy_setopt(CURL *curl, int option, ...);
int curl_easy_perform(CURL *curl);
int curl_easy_getinfo(CURL *curl, int info, ...);
void curl_easy_cleanup(CURL *curl);
const char *curl_easy_strerror(int code);
struct curl_slist *curl_slist_append(struct curl_slist *list, const char *s);
void curl_slist_free_all(struct curl_slist *list);
int curl_global_init(long flags);
int poll(void *fds, unsigned long nfds, int timeout);
]])

-- libcurl's option and info numbers (curl/curl.h: CURLOPTTYPE_* + n).
local OPT = {
  WRITEDATA = 10001, URL = 10002, ERRORBUFFER = 10010, POSTFIELDS = 10015,
  HTTPHEADER = 10023, POST = 47, HTTPGET = 80, NOSIGNAL = 99, TIMEOUT_MS = 155,
  CONNECTTIMEOUT_MS = 156, NOPROXY = 10177, WRITEFUNCTION = 20011,
  POSTFIELDSIZE_LARGE = 30120,
}
local INFO_RESPONSE_CODE = 0x200002

local curl
local function libcurl()
  if curl then return curl end
  local tried = {}
  for _, name in ipairs { 'curl', 'libcurl.so.4', 'libcurl-gnutls.so.4' } do
    local ok, lib = pcall(ffi.load, name)
    if ok then
      lib.curl_global_init(3) -- CURL_GLOBAL_ALL
      curl = lib
      return lib
    end
    tried[#tried + 1] = name
  end
  raise('reward_server: libcurl not found (tried ' .. table.concat(tried, ', ') ..
        '); install it: apt-get install libcurl4')
end

local function sleep(seconds)
  if seconds > 0 then ffi.C.poll(nil, 0, math.floor(seconds * 1000 + 0.5)) end
end

-- ---- base64 -----------------------------------------------------------------

local B64 = ffi.new('uint8_t[64]',
  'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')

function M.base64(s)
  local n = #s
  local src = ffi.cast('const uint8_t *', s)
  local out = ffi.new('uint8_t[?]', 4 * math.ceil(n / 3) + 1)
  local o = 0
  for i = 0, n - 1, 3 do
    local a, b, c = src[i], i + 1 < n and src[i + 1] or 0, i + 2 < n and src[i + 2] or 0
    out[o] = B64[bit.rshift(a, 2)]
    out[o + 1] = B64[bit.bor(bit.lshift(bit.band(a, 3), 4), bit.rshift(b, 4))]
    out[o + 2] = i + 1 < n and B64[bit.bor(bit.lshift(bit.band(b, 15), 2), bit.rshift(c, 6))] or 61
    out[o + 3] = i + 2 < n and B64[bit.band(c, 63)] or 61
    o = o + 4
  end
  return ffi.string(out, o)
end

-- ---- one HTTP exchange ----------------------------------------------------------

local Client = {}
Client.__index = Client

-- Performs a request; returns status, body or nil, a message.
function Client.request(c, method, path, body, timeout)
  local lib = c.lib
  local h = c.handle
  local chunks = {}
  c.sink = chunks
  lib.curl_easy_setopt(h, OPT.URL, c.url .. path)
  if method == 'POST' then
    lib.curl_easy_setopt(h, OPT.POST, ffi.cast('long', 1))
    lib.curl_easy_setopt(h, OPT.POSTFIELDSIZE_LARGE, ffi.cast('int64_t', #body))
    lib.curl_easy_setopt(h, OPT.POSTFIELDS, ffi.cast('const char *', body))
  else
    lib.curl_easy_setopt(h, OPT.HTTPGET, ffi.cast('long', 1))
  end
  lib.curl_easy_setopt(h, OPT.TIMEOUT_MS, ffi.cast('long', math.floor(timeout * 1000)))
  c.errbuf[0] = 0
  local code = lib.curl_easy_perform(h)
  c.sink = nil
  if code ~= 0 then
    local detail = ffi.string(c.errbuf)
    if detail == '' then detail = ffi.string(lib.curl_easy_strerror(code)) end
    return nil, ('%s %s%s: %s'):format(method, c.url, path, detail)
  end
  local status = ffi.new('long[1]')
  lib.curl_easy_getinfo(h, INFO_RESPONSE_CODE, status)
  return tonumber(status[0]), table.concat(chunks)
end

local function new_client(opts)
  local lib = libcurl()
  local handle = lib.curl_easy_init()
  if handle == nil then raise('reward_server: curl_easy_init failed') end
  local c = setmetatable({ lib = lib, url = opts.url:gsub('/+$', ''),
                           errbuf = ffi.new('char[256]') }, Client)
  c.handle = ffi.gc(handle, lib.curl_easy_cleanup)
  c.write_cb = ffi.cast('size_t (*)(char *, size_t, size_t, void *)', function(p, size, n)
    local sink = c.sink
    if sink then sink[#sink + 1] = ffi.string(p, size * n) end
    return size * n
  end)
  -- no "Expect: 100-continue" round trip before large bodies
  c.headers = lib.curl_slist_append(nil, 'Content-Type: application/json')
  c.headers = lib.curl_slist_append(c.headers, 'Expect:')
  lib.curl_easy_setopt(handle, OPT.HTTPHEADER, c.headers)
  lib.curl_easy_setopt(handle, OPT.WRITEFUNCTION, c.write_cb)
  lib.curl_easy_setopt(handle, OPT.ERRORBUFFER, c.errbuf)
  lib.curl_easy_setopt(handle, OPT.NOSIGNAL, ffi.cast('long', 1))
  lib.curl_easy_setopt(handle, OPT.CONNECTTIMEOUT_MS,
    ffi.cast('long', math.floor(opts.connect_timeout * 1000)))
  if opts.proxy == false then lib.curl_easy_setopt(handle, OPT.NOPROXY, '*') end
  return c
end

function Client.close(c)
  if c.handle == nil then return end
  ffi.gc(c.handle, nil)
  c.lib.curl_easy_cleanup(c.handle)
  c.handle = nil
  c.lib.curl_slist_free_all(c.headers)
  c.write_cb:free()
end

-- GET url: status and body, or nil and a message (what a health probe needs).
function M.http_get(url, timeout, proxy)
  local c = new_client { url = url, connect_timeout = timeout or 5, proxy = proxy }
  local status, body = c:request('GET', '', nil, timeout or 5)
  c:close()
  return status, body
end

-- ---- the reward -------------------------------------------------------------------

local DEFAULTS = { batch_size = 16, timeout = 60, connect_timeout = 5, retries = 2,
                   backoff = 0.5, max_backoff = 8, health = true, proxy = true, log = true }

local function check_opts(opts)
  if type(opts) ~= 'table' then raise('reward_server: options must be a table with url, got ' .. type(opts)) end
  local o = {}
  for k, v in pairs(opts) do
    if DEFAULTS[k] == nil and k ~= 'url' and k ~= 'metadata' and k ~= 'name' then
      raise(("reward_server: unknown option '%s' (options: url, batch_size, timeout, connect_timeout, "
        .. "retries, backoff, max_backoff, health, metadata, proxy, name)"):format(tostring(k)))
    end
    o[k] = v
  end
  for k, v in pairs(DEFAULTS) do if o[k] == nil then o[k] = v end end
  if type(o.url) ~= 'string' or not o.url:match('^https?://[^/]') then
    raise('reward_server: url must be an http:// or https:// address, got ' .. tostring(o.url))
  end
  for _, k in ipairs { 'timeout', 'connect_timeout', 'backoff', 'max_backoff' } do
    if type(o[k]) ~= 'number' or o[k] < 0 or o[k] ~= o[k] then
      raise(('reward_server: %s must be a number of seconds >= 0, got %s'):format(k, tostring(o[k])))
    end
  end
  for _, k in ipairs { 'batch_size', 'retries' } do
    if type(o[k]) ~= 'number' or o[k] < 0 or o[k] % 1 ~= 0 then
      raise(('reward_server: %s must be an integer >= 0, got %s'):format(k, tostring(o[k])))
    end
  end
  if o.timeout <= 0 then raise('reward_server: timeout must be > 0') end
  for _, k in ipairs { 'health', 'proxy', 'log' } do
    if type(o[k]) ~= 'boolean' then raise(('reward_server: %s must be a boolean'):format(k)) end
  end
  if o.metadata ~= nil and type(o.metadata) ~= 'table' then
    raise('reward_server: metadata must be a table, got ' .. type(o.metadata))
  end
  return o
end

-- Requests of whole groups (in first-seen order), each at most batch_size images
-- unless one group alone is larger.
local function plan(b, groups, batch_size)
  local order, members = {}, {}
  for i = 1, b do
    local g = groups and groups[i] or i
    if not members[g] then members[g] = {} order[#order + 1] = g end
    local m = members[g]
    m[#m + 1] = i
  end
  local batches, cur = {}, {}
  for _, g in ipairs(order) do
    local m = members[g]
    if #cur > 0 and batch_size > 0 and #cur + #m > batch_size then
      batches[#batches + 1] = cur
      cur = {}
    end
    for _, i in ipairs(m) do cur[#cur + 1] = i end
  end
  if #cur > 0 then batches[#batches + 1] = cur end
  return batches
end

-- The scores of a response body, or nil and what is wrong with it.
local function parse_scores(body, n)
  local ok, doc = pcall(cjson.decode, body)
  if not ok or type(doc) ~= 'table' then
    return nil, ('the body is not a JSON object: %q'):format(body:sub(1, 80))
  end
  local scores = doc.scores
  if type(scores) ~= 'table' then return nil, 'the response has no "scores" list' end
  if #scores ~= n then return nil, ('%d scores for %d images'):format(#scores, n) end
  local out = {}
  for i = 1, n do
    local s = scores[i]
    if s == cjson.null then s = 0 / 0 end
    if type(s) ~= 'number' then return nil, ('score %d is a %s'):format(i, type(s)) end
    out[i] = s
  end
  return out, type(doc.info) == 'table' and doc.info or {}
end

function M.new(opts)
  local o = check_opts(opts)
  local client = new_client(o)
  local png_path = os.tmpname()
  local state = { skipped_total = 0, healthy = nil }

  local function health()
    local status, body = client:request('GET', '/health', nil, math.min(o.timeout, 10))
    local ok = status == 200
    if not ok then
      state.last_error = status and ('GET /health: HTTP %d %s'):format(status, body:sub(1, 80)) or body
    end
    return ok
  end

  local function encode_images(images, idx)
    local list = {}
    for k, i in ipairs(idx) do
      image.save_image(png_path, images:select(1, i))
      local f = assert(io.open(png_path, 'rb'))
      list[k] = M.base64(f:read('*a'))
      f:close()
    end
    return list
  end

  local function send(images, prompts, meta, idx, info)
    local p, groups = {}, {}
    for k, i in ipairs(idx) do
      p[k] = prompts[i]
      if meta.groups then groups[k] = meta.groups[i] end
    end
    local metadata = {}
    for k, v in pairs(o.metadata or {}) do metadata[k] = v end
    if meta.groups then metadata.groups = groups end
    if type(meta.step) == 'number' then metadata.step = meta.step end
    local body = cjson.encode { images = encode_images(images, idx), prompts = p, metadata = metadata }
    for attempt = 0, o.retries do
      if attempt > 0 then
        info.retries = info.retries + 1
        sleep(math.min(o.backoff * 2 ^ (attempt - 1), o.max_backoff))
      end
      info.requests = info.requests + 1
      local status, resp = client:request('POST', '/score', body, o.timeout)
      local scores, extra
      if not status then
        state.last_error = resp
      elseif status ~= 200 then
        state.last_error = ('POST /score: HTTP %d %s'):format(status, resp:sub(1, 80))
      else
        scores, extra = parse_scores(resp, #idx)
        if not scores then state.last_error = 'POST /score: ' .. extra end
      end
      if scores then return scores, extra end
    end
    return nil
  end

  local reward = function(images, prompts, meta)
    if not T.is_tensor(images) then raise('reward_server: images must be a tensor [B, 3, H, W]') end
    if images.is_cuda then images = images:to { device = 'cpu' } end
    meta = meta or {}
    local b = images:size(1)
    local scores = {}
    for i = 1, b do scores[i] = 0 / 0 end
    local info = { requests = 0, retries = 0, failed = 0, skipped = 0 }
    local sums, counts = {}, {}
    if o.health and state.healthy ~= true then state.healthy = health() end
    if state.healthy == false then
      info.skipped, info.failed = b, 1
    else
      for _, idx in ipairs(plan(b, meta.groups, o.batch_size)) do
        local got, extra = send(images, prompts, meta, idx, info)
        if got then
          for k, i in ipairs(idx) do scores[i] = got[k] end
          for k, v in pairs(extra) do
            if type(v) == 'number' then sums[k], counts[k] = (sums[k] or 0) + v, (counts[k] or 0) + 1 end
          end
        else
          info.failed, info.skipped = info.failed + 1, info.skipped + #idx
        end
      end
      if info.skipped == b and b > 0 and o.health then state.healthy = nil end -- ask again next time
    end
    state.skipped_total = state.skipped_total + info.skipped
    if info.skipped > 0 and o.log then
      io.stderr:write(('reward_server %s: skipped %d of %d images (%s)\n'):format(o.url, info.skipped, b,
        tostring(state.last_error)))
    end
    for k, v in pairs(sums) do
      if info[k] == nil then info[k] = v / counts[k] end
    end
    info.skipped_total = state.skipped_total
    info.healthy = state.healthy == false and 0 or 1
    return scores, info
  end

  local obj = setmetatable({
    name = o.name or ('reward_server(' .. o.url .. ')'),
    url = o.url,
    state = state,
    health = function() return health(), state.last_error end,
    close = function()
      client:close()
      os.remove(png_path)
    end,
  }, { __call = function(_, ...) return reward(...) end })
  return obj
end

return M
