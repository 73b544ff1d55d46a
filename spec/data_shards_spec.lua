-- Image-text shards: webdataset .tar read by libdiffrl, images resized as Pillow
-- and centre-cropped, shards spread over ranks, resume mid-shard exact, damage
-- skipped by name, prefetch on threads giving the synchronous bytes.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local shards = require 'diffrl.data.shards'
local folder = require 'diffrl.data.folder'
local dir = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/data/'

local GOOD = { dir .. 'shard-000.tar', dir .. 'shard-001.tar', dir .. 'shard-002.tar' }

local function quiet() local log = {} return log, function(m) log[#log + 1] = m end end

local function same_tensor(a, b)
  assert.are.same(a:shape(), b:shape())
  assert.are.equal(0, (a - b):abs():max():item())
end

describe('tar shards #binding', function()
  it('indexes ustar, GNU (long names) and pax shards into webdataset samples', function()
    local t = dr.tar_index(dir .. 'shard-001.tar')
    assert.are.equal(6, t:count())
    assert.is_nil(t.problem)
    local s = t:sample(0)
    assert.are.equal('000005', s.key)
    assert.are.same({ '000005.jpg', '000005.txt', '000005.json' }, { s.members[1].name, s.members[2].name, s.members[3].name })
    assert.are.equal('deep/' .. ('x'):rep(110) .. '/000010', t:sample(5).key)
    assert.are.equal('png', t:sample(5).members[1].ext)
    assert.are.equal(5, dr.tar_index(dir .. 'shard-002.tar'):count())
    local m = dr.tar_index(dir .. 'shard-000.tar'):sample(1).members[2]
    local f = assert(io.open(dir .. 'shard-000.tar', 'rb'))
    f:seek('set', m.offset)
    assert.are.equal(' caption number 1 \n', f:read(m.size))
    f:close()
    assert.matches('tar: cannot open /nonexistent.tar', h.error_of(dr.tar_index, '/nonexistent.tar'))
  end)

  it('reports a member cut short by the end of the file, and keeps what came before', function()
    local t = dr.tar_index(dir .. 'damaged.tar')
    assert.are.equal(5, t:count())
    assert.matches('damaged.tar: member bad004.jpg is cut short %(300 of %d+ bytes%)', t.problem)
    assert.are.equal(300, t:sample(4).members[1].present)
    assert.is_nil(t:sample(3).members[1].present)
  end)
end)

describe('data.shards #binding', function()
  it('gives resized, centre-cropped images with their trimmed captions', function()
    local src = shards.open(GOOD, { resolution = 16, shuffle = false, threads = 0 })
    local images, captions = src:next(4)
    assert.are.same({ 4, 3, 16, 16 }, images:shape())
    assert.are.same({ 'caption number 0', 'caption number 1', 'caption number 2', 'caption number 3' }, captions)
    assert.is_true(images:min():item() >= 0 and images:max():item() <= 1)
    -- sample 0 is a PNG (lossless): the same as decoding it and resizing alone
    local t = dr.tar_index(dir .. 'shard-000.tar')
    local m = t:sample(0).members[1]
    local f = assert(io.open(dir .. 'shard-000.tar', 'rb'))
    f:seek('set', m.offset)
    local png = f:read(m.size)
    f:close()
    local tmp = h.temp_file(png, '.png')
    local want = dr.image_resize_crop(dr.load_image(tmp, { dtype = 'uint8' }), 16, { filter = 'bilinear' })
    os.remove(tmp)
    same_tensor(want, images:select(1, 1))
  end)

  it('resumes mid-shard with exactly the same next samples', function()
    local opts = { resolution = 12, seed = 7, threads = 2 }
    local src = shards.open(GOOD, opts)
    src:next(3)
    src:next(4) -- 7 of 16 samples (shards of 5, 6, 5): inside the second shard
    local st = src:state()
    assert.are.equal(1, st.shard)
    assert.is_true(st.offset > 0)
    local want_i, want_c = src:next(5)
    local want_i2, want_c2 = src:next(5) -- past the epoch's end
    local again = shards.open(GOOD, opts)
    again:set_state(st)
    local got_i, got_c = again:next(5)
    local got_i2, got_c2 = again:next(5)
    assert.are.same(want_c, got_c)
    assert.are.same(want_c2, got_c2)
    same_tensor(want_i, got_i)
    same_tensor(want_i2, got_i2)
    -- every sample once per epoch, a new order in the next
    local all = shards.open(GOOD, opts)
    local seen = {}
    for _, c in ipairs(select(2, all:next(16))) do seen[c] = (seen[c] or 0) + 1 end
    for i = 0, 15 do assert.are.equal(1, seen['caption number ' .. i], i) end
    all:next(1)
    assert.are.equal(1, all:state().epoch)
  end)

  it('is the same stream on every machine, interpreted or JIT-compiled (fixed values)', function()
    local want = '6,5,9,10,8,7,3,4,0,1,2,11,12,15,14,13,9,7,5,6,8,10,2,4,0,1,3,14,12,15,13,11,15,13,14,11,12,0,2,3'
    for _, mode in ipairs({ 'off', 'on' }) do
      jit[mode]()
      local src = shards.open(GOOD, { resolution = 8, seed = 7, threads = 0 })
      local got = {}
      for k = 1, 40 do got[k] = (select(2, src:next(1))[1]):gsub('caption number ', '') end
      assert.are.equal(want, table.concat(got, ','), 'jit ' .. mode)
    end
  end)

  it('prefetches on threads and gives the synchronous bytes', function()
    local sync = shards.open(GOOD, { resolution = 10, seed = 3, threads = 0 })
    local async = shards.open(GOOD, { resolution = 10, seed = 3, threads = 3 })
    for _, n in ipairs({ 3, 3, 5, 2, 2, 7 }) do -- changing n drops the prefetched batch
      local a, ca = sync:next(n)
      local b, cb = async:next(n)
      assert.are.same(ca, cb)
      same_tensor(a, b)
      assert.are.same(sync:state(), async:state())
    end
  end)

  it('skips a corrupt JPEG, a sample without caption and a truncated member, by name', function()
    local log, sink = quiet()
    local src = shards.open({ dir .. 'damaged.tar', dir .. 'shard-000.tar' },
      { resolution = 8, shuffle = false, log = sink })
    local _, captions = src:next(4)
    assert.are.same({ 'fine before the damage', 'fine too', 'caption number 0', 'caption number 1' }, captions)
    local text = table.concat(log, '\n')
    assert.matches('damaged.tar: member bad004.jpg is cut short', text)
    assert.matches('damaged.tar:bad001.jpg: [^\n]*: skipped', text)
    assert.matches('damaged.tar:bad002 has no caption %(.txt%): skipped', text)
    assert.matches('damaged.tar:bad004.jpg is cut short %(300 of %d+ bytes%): skipped', text)
    assert.are.same({ samples = 4, skipped = 3, corrupt = 1, truncated = 1, missing = 1, shards = 2,
                      damaged_shards = 1 }, src.stats)
    -- the skips are part of the position: a resumed source skips the same samples
    local st = src:state()
    local again = shards.open({ dir .. 'damaged.tar', dir .. 'shard-000.tar' },
      { resolution = 8, shuffle = false, log = sink })
    again:set_state(st)
    assert.are.same(select(2, src:next(5)), select(2, again:next(5)))
  end)

  it('gives each rank whole, disjoint shards', function()
    local paths = {}
    for i = 1, 6 do paths[i] = GOOD[(i - 1) % 3 + 1] end -- six shards (three files twice)
    local r0 = shards.open(paths, { resolution = 8, seed = 1, rank = 0, world_size = 2, threads = 0 })
    local r1 = shards.open(paths, { resolution = 8, seed = 1, rank = 1, world_size = 2, threads = 0 })
    local taken = {}
    for _, src in ipairs({ r0, r1 }) do
      for k = 0, 2 do
        local _, id = src:_shard_path(0, k)
        assert.is_nil(taken[id], 'shard ' .. id .. ' read by two ranks')
        taken[id] = true
      end
    end
    assert.are.equal(6, (function() local n = 0 for _ in pairs(taken) do n = n + 1 end return n end)())
    assert.matches('3 shards cannot be shared by 4 ranks', h.error_of(shards.open, GOOD, { resolution = 8, world_size = 4 }))
    assert.matches('the state has rank = 0, this source has 1', h.error_of(function() r1:set_state(r0:state()) end))
  end)

  it('finds shards by brace range, glob or folder; names what is wrong', function()
    assert.are.same(GOOD, shards.resolve(dir .. 'shard-{000..002}.tar'))
    assert.are.same(GOOD, shards.resolve(dir .. 'shard-*.tar'))
    assert.are.same({ dir .. 'a01.tar', dir .. 'a02.tar' }, shards.resolve(dir .. 'a{01..02}.tar'))
    local folder_shards = shards.resolve(dir:sub(1, -2))
    assert.are.equal(4, #folder_shards) -- the three good ones and damaged.tar
    assert.matches('matches no files', h.error_of(shards.resolve, dir .. 'none-*.tar'))
    assert.matches("resolution %(the model's image side%) must be a positive integer",
      h.error_of(shards.open, GOOD, {}))
    assert.matches("unknown option 'batch'", h.error_of(shards.open, GOOD, { resolution = 8, batch = 2 }))
    assert.matches('another shard list', h.error_of(function()
      shards.open({ GOOD[1] }, { resolution = 8 }):set_state(shards.open(GOOD, { resolution = 8 }):state())
    end))
  end)
end)

describe('data.folder with resizing #binding', function()
  local function make_folder()
    local d = os.tmpname()
    os.remove(d)
    assert(os.execute('mkdir -p ' .. h.shell_quote(d)))
    local t = dr.tar_index(dir .. 'shard-000.tar')
    local f = assert(io.open(dir .. 'shard-000.tar', 'rb'))
    for i = 0, 4 do
      for _, m in ipairs(t:sample(i).members) do
        f:seek('set', m.offset)
        h.write_file(d .. '/' .. m.name, f:read(m.size))
      end
    end
    f:close()
    h.write_file(d .. '/broken.jpg', '\255\216\255 not really')
    h.write_file(d .. '/broken.txt', 'a broken image')
    return d
  end

  it('resizes, skips what does not decode, shares by rank; shards.open falls back to it', function()
    local d = make_folder()
    local log, sink = quiet()
    local src = shards.open(d, { resolution = 16, seed = 4, log = sink })
    assert.are.equal('folder:' .. d, src.name)
    local images, captions = src:next(6) -- all six pairs but one broken: into the second epoch
    assert.are.same({ 6, 3, 16, 16 }, images:shape())
    for _, c in ipairs(captions) do assert.matches('^caption number %d$', c) end
    assert.are.equal(1, src.stats.skipped)
    assert.matches('broken.jpg', log[1])
    local st = src:state()
    local want = select(2, src:next(4))
    local again = folder.open(d, { resolution = 16, seed = 4, log = sink })
    again:set_state(st)
    assert.are.same(want, select(2, again:next(4)))
    local a = folder.open(d, { resolution = 16, seed = 4, rank = 0, world_size = 2, log = sink })
    local b = folder.open(d, { resolution = 16, seed = 4, rank = 1, world_size = 2, log = sink })
    assert.are.equal(3, a:size())
    local seen = {}
    for _, src2 in ipairs({ a, b }) do
      for _, pos in ipairs({ 0, 1, 2 }) do
        src2.perm = nil
        local it = src2:_advance()
        assert.is_nil(seen[it.image], it.image)
        seen[it.image] = true
        assert.are.equal(pos + 1, src2.pos)
      end
    end
    os.execute('rm -rf ' .. h.shell_quote(d))
  end)
end)
