-- The HTTP/JSON reward-server client (diffrl.rewards.server, registered as
-- 'reward_server') against a local server on 127.0.0.1 that answers, fails, hangs
-- and returns garbage (spec/fixtures/reward_server/fake_server.lua, Lua over POSIX
-- sockets, run by the diffrl binary): scores come back per image in request order,
-- batches keep groups whole, a failing request is retried with backoff and then its
-- images get NaN scores and are counted — the call returns, the run goes on.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dr = require 'diffrl'
local rewards = require 'diffrl.rewards'
local server = require 'diffrl.rewards.server'

local SCRIPT = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/reward_server/fake_server.lua'

local function now()
  local ffi = require 'ffi'
  pcall(ffi.cdef, 'struct diffrl_timespec { long tv_sec; long tv_nsec; };')
  pcall(ffi.cdef, 'int clock_gettime(int clk_id, struct diffrl_timespec *tp);')
  local ts = ffi.new('struct diffrl_timespec')
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function is_nan(x) return x ~= x end

describe('reward_server #cli', function()
  local proc, base
  local images = dr.rand(5, 3, 8, 8, { generator = dr.Generator(1) })
  local prompts = { 'a', 'bb', 'ccc', 'dddd', 'eeeee' }

  setup(function()
    proc = assert(io.popen(h.shell_quote(h.bin()) .. ' run ' .. h.shell_quote(SCRIPT), 'r'))
    local port = proc:read('*l')
    assert(tonumber(port), 'the fake server did not print its port: ' .. tostring(port))
    base = 'http://127.0.0.1:' .. port
  end)

  teardown(function()
    if base then server.http_get(base .. '/quit', 5, false) end
    if proc then proc:close() end
  end)

  local function client(mode, opts)
    local o = { url = base .. '/' .. mode, batch_size = 2, retries = 2, backoff = 0.01,
                timeout = 5, proxy = false, log = false }
    for k, v in pairs(opts or {}) do o[k] = v end
    return rewards.get('reward_server', o)
  end

  it('scores a batch in requests of batch_size, in order, with the server info', function()
    local r = client('ok')
    local scores, info = rewards.call(r, images, prompts, { step = 3 })
    assert.are.same({ 1, 2, 3, 4, 5 }, scores)
    assert.are.equal(3, info.requests)
    assert.are.equal(0, info.retries)
    assert.are.equal(0, info.skipped)
    assert.are.equal(0, info.nonfinite)
    assert.are.equal(1, info.healthy)
    assert.are.equal(5 / 3, info.images) -- 2, 2, 1 images: averaged over requests
    r.close()
  end)

  it('keeps the images of one group in one request', function()
    local r = client('ok')
    local scores, info = r(images, prompts, { groups = { 1, 2, 1, 2, 1 } })
    assert.are.same({ 1, 2, 3, 4, 5 }, scores)
    assert.are.equal(2, info.requests) -- group 1 (3 images) alone, then group 2
    assert.are.equal(2.5, info.groups)
    r.close()
  end)

  it('retries a failing request with backoff, then succeeds', function()
    local r = client('flaky', { batch_size = 0 })
    local scores, info = r(images, prompts, {})
    assert.are.same({ 1, 2, 3, 4, 5 }, scores)
    assert.are.equal(1, info.retries)
    assert.are.equal(0, info.skipped)
    r.close()
  end)

  it('skips and counts the images of a request that keeps failing (HTTP 500)', function()
    local r = client('error', { health = false })
    local scores, info = rewards.call(r, images, prompts, {})
    for i = 1, 5 do assert.is_true(is_nan(scores[i])) end
    assert.are.equal(9, info.requests) -- 3 requests x (1 + 2 retries)
    assert.are.equal(6, info.retries)
    assert.are.equal(3, info.failed)
    assert.are.equal(5, info.skipped)
    assert.are.equal(5, info.nonfinite)
    local _, again = r(images, prompts, {})
    assert.are.equal(10, again.skipped_total)
    r.close()
  end)

  it('gives up on a server that hangs after the timeout, retries included', function()
    local r = client('hang', { timeout = 0.3, retries = 1, batch_size = 0, health = false })
    local t0 = now()
    local scores, info = r(images, prompts, {})
    local took = now() - t0
    assert.is_true(is_nan(scores[1]) and is_nan(scores[5]))
    assert.are.equal(2, info.requests)
    assert.are.equal(5, info.skipped)
    assert.is_true(took >= 0.55 and took < 3, 'took ' .. took .. ' s')
    r.close()
  end)

  it('treats garbage and a wrong number of scores as failures', function()
    for _, mode in ipairs { 'garbage', 'wrongcount' } do
      local r = client(mode, { retries = 1, batch_size = 0 })
      local scores, info = r(images, prompts, {})
      assert.is_true(is_nan(scores[2]), mode)
      assert.are.equal(5, info.skipped, mode)
      assert.are.equal(1, info.retries, mode)
      r.close()
    end
  end)

  it('turns a null score into NaN for that image only', function()
    local r = client('nulls', { batch_size = 0 })
    local scores, info = rewards.call(r, images, prompts, {})
    assert.is_true(is_nan(scores[1]))
    assert.are.same({ 2, 3, 4, 5 }, { scores[2], scores[3], scores[4], scores[5] })
    assert.are.equal(0, info.skipped)
    assert.are.equal(1, info.nonfinite)
    r.close()
  end)

  it('skips a whole call at once when the health check fails, and asks again next call', function()
    local r = client('sick')
    local t0 = now()
    local scores, info = r(images, prompts, {})
    assert.is_true(now() - t0 < 2)
    assert.is_true(is_nan(scores[3]))
    assert.are.same({ 0, 5, 0 }, { info.requests, info.skipped, info.healthy })
    local ok, why = r.health()
    assert.is_false(ok)
    assert.is_truthy(why:find('HTTP 503', 1, true), why)
    r.close()
  end)

  it('survives a dead server (connection refused) quickly', function()
    local dead = server.new { url = 'http://127.0.0.1:9', timeout = 1, connect_timeout = 1,
                              retries = 3, backoff = 0.01, proxy = false, log = false }
    local t0 = now()
    local scores, info = dead(images, prompts, {})
    assert.is_true(now() - t0 < 3)
    assert.is_true(is_nan(scores[4]))
    assert.are.equal(5, info.skipped)
    assert.are.equal(0, info.healthy)
    dead.close()
  end)

  it('names bad options', function()
    assert.is_truthy(h.error_of(server.new, { url = 'ftp://x' }):find('url must be an http', 1, true))
    assert.is_truthy(h.error_of(server.new, { url = 'http://x', retry = 2 }):find("unknown option 'retry'", 1, true))
    assert.is_truthy(h.error_of(server.new, { url = 'http://x', timeout = 0 }):find('timeout must be > 0', 1, true))
  end)

  it('encodes base64 as RFC 4648', function()
    assert.are.same({ '', 'Zg==', 'Zm8=', 'Zm9v', 'Zm9vYmFy', 'AP8=' },
      { server.base64(''), server.base64('f'), server.base64('fo'), server.base64('foo'),
        server.base64('foobar'), server.base64('\0\255') })
  end)
end)
