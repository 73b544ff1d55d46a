-- Prompt sources: lists cycle through seeded permutations, files are trimmed,
-- de-duplicated, filtered and split into train / test by a hash that does not move
-- when lines are added, templates expand slots, and every source resumes exactly
-- from state().
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local prompts = dr.prompts

local function sorted(list)
  local c = { unpack(list) }
  table.sort(c)
  return c
end

local function set_of(list)
  local s = {}
  for _, p in ipairs(list) do s[p] = true end
  return s
end

local function lines(n, prefix)
  local out = {}
  for i = 1, n do out[i] = (prefix or 'prompt ') .. i end
  return out
end

local function temp_prompts(text)
  return h.temp_file(text, '.txt')
end

describe('prompts.list #binding', function()
  it('gives every prompt once per epoch, in a new seeded order each epoch', function()
    local items = lines(10)
    local src = prompts.list(items)
    local e1, e2 = src:next(10), src:next(10)
    assert.are.same(sorted(items), sorted(e1))
    assert.are.same(sorted(items), sorted(e2))
    assert.are_not.same(e1, e2)
    assert.are.equal(10, src:size())
    assert.are.equal('list', src.name)
  end)

  it('is the same stream for the same seed (fixed values: same on every machine)', function()
    local a = prompts.list { 'a', 'b', 'c', 'd', 'e', seed = 7 }
    local b = prompts.list { 'a', 'b', 'c', 'd', 'e', seed = 7 }
    local c = prompts.list { 'a', 'b', 'c', 'd', 'e', seed = 8 }
    local sa = a:next(15)
    assert.are.same(sa, b:next(15))
    assert.are_not.same(sa, c:next(15))
    assert.are.same({ 'b', 'c', 'a', 'd' },
      prompts.list { 'a', 'b', 'c', 'd', seed = 1 }:next(4)) -- pins SplitMix64 + Fisher-Yates
  end)

  it('keeps the order without shuffle, across epoch boundaries', function()
    local src = prompts.list { 'x', 'y', 'z', shuffle = false, name = 'xyz' }
    assert.are.same({ 'x', 'y', 'z', 'x', 'y' }, src:next(5))
    assert.are.same({ 'z' }, src:next(1))
    assert.are.same({}, src:next(0))
    assert.are.equal('xyz', src.name)
  end)

  it('resumes exactly from state(), also in a fresh source and mid-epoch', function()
    local items = lines(7)
    local src = prompts.list(items)
    src:next(9)
    local st = src:state()
    local want = src:next(20)
    local fresh = prompts.list(items)
    fresh:set_state(st)
    assert.are.same(want, fresh:next(20))
    src:set_state(st)
    assert.are.same(want, src:next(20))
    for k, v in pairs(st) do assert(type(v) ~= 'table' and type(v) ~= 'userdata' and type(v) ~= 'cdata', k) end
  end)

  it('refuses a state from other prompts or settings, and bad input', function()
    local st = prompts.list { 'a', 'b' }:state()
    assert.matches('the prompts changed since it was saved', h.error_of(function()
      prompts.list { 'a', 'c' }:set_state(st)
    end))
    assert.matches('the state has seed = 0, this source has 3', h.error_of(function()
      prompts.list { 'a', 'b', seed = 3 }:set_state(st)
    end))
    assert.matches('prompt 2 must be a string', h.error_of(prompts.list, { 'a', 5 }))
    assert.matches('the list has no prompts', h.error_of(prompts.list, {}))
    assert.matches("unknown option 'shufle'", h.error_of(prompts.list, { 'a', shufle = true }))
    assert.matches('next%(n%) needs an integer n >= 0, got %-1', h.error_of(function() prompts.list { 'a' }:next(-1) end))
  end)
end)

describe('prompts.file #binding', function()
  it('trims, skips empty lines, de-duplicates (first occurrence wins) and counts', function()
    local path = temp_prompts('\239\187\191  a cat  \r\n\n\ta dog\n   \na cat\nthe sea\r\na dog\n')
    local src = prompts.file(path, { shuffle = false })
    assert.are.same({ 'a cat', 'a dog', 'the sea' }, src:next(3))
    assert.are.equal(3, src:size())
    assert.are.same({ lines = 7, empty = 2, duplicates = 2, too_short = 0, too_long = 0, banned = 0,
                      train = 3, test = 0 }, src.stats)
    assert.are.equal(5, prompts.file(path, { dedupe = false }):size())
    os.remove(path)
  end)

  it('splits train / test by a seeded hash of the text: disjoint, complete, stable when lines are added', function()
    local items = lines(400, 'a photo of thing ')
    local path = temp_prompts(table.concat(items, '\n'))
    local train = prompts.file(path, { holdout = 0.25 })
    local test = prompts.file(path, { holdout = 0.25, split = 'test' })
    local tr, te = set_of(train:next(train:size())), set_of(test:next(test:size()))
    for p in pairs(te) do assert.is_nil(tr[p], p) end
    assert.are.equal(400, train:size() + test:size())
    assert.is_true(test:size() > 60 and test:size() < 140, 'about a quarter held out: ' .. test:size())

    -- more lines, another order, another shuffle seed: the old prompts keep their side
    local more = lines(200, 'a drawing of item ')
    for i = #items, 1, -1 do more[#more + 1] = items[i] end
    local path2 = temp_prompts(table.concat(more, '\n'))
    local te2 = set_of(prompts.file(path2, { holdout = 0.25, split = 'test', seed = 99 }):next(1000))
    for _, p in ipairs(items) do assert.are.equal(te[p] or false, te2[p] or false, p) end
    -- another split_seed is another split
    local te3 = set_of(prompts.file(path, { holdout = 0.25, split = 'test', split_seed = 1 }):next(1000))
    local same = 0
    for p in pairs(te3) do if te[p] then same = same + 1 end end
    assert.is_true(same < test:size())
    os.remove(path)
    os.remove(path2)
  end)

  it('filters by length in characters and by banned words (whole words, any case)', function()
    local path = temp_prompts('ok\na fine prompt\nnaïve café\nA NSFW picture\nnsfwish is fine\nway too long a prompt here\n')
    local src = prompts.file(path, { min_length = 3, max_length = 15, banned = { 'nsfw' }, shuffle = false })
    assert.are.same({ 'a fine prompt', 'naïve café', 'nsfwish is fine' }, src:next(3))
    assert.are.same({ lines = 6, empty = 0, duplicates = 0, too_short = 1, too_long = 1, banned = 1,
                      train = 3, test = 0 }, src.stats)
    os.remove(path)
  end)

  it('resumes exactly and is named after the file', function()
    local path = temp_prompts(table.concat(lines(13), '\n') .. '\n')
    local src = prompts.file(path, { seed = 5 })
    src:next(17)
    local st = src:state()
    local want = src:next(30)
    local again = prompts.file(path, { seed = 5 })
    again:set_state(st)
    assert.are.same(want, again:next(30))
    assert.are.equal(path:match('([^/]*)%.txt$'), src.name)
    -- a changed file cannot resume silently
    h.write_file(path, table.concat(lines(14), '\n'))
    assert.matches('the prompts changed since it was saved', h.error_of(function()
      prompts.file(path, { seed = 5 }):set_state(st)
    end))
    os.remove(path)
  end)

  it('errors name the file and the line', function()
    local missing = os.tmpname() .. '.none'
    assert.matches('prompts.file: cannot open ' .. h.escape_pattern(missing), h.error_of(prompts.file, missing))
    local path = temp_prompts('fine\nalso fine\nbad \255\254 bytes\n')
    assert.matches(h.escape_pattern(path) .. ':3: invalid UTF%-8 at byte 5', h.error_of(prompts.file, path))
    h.write_file(path, 'one\ntw\0o\n')
    assert.matches(h.escape_pattern(path) .. ':2: a NUL byte', h.error_of(prompts.file, path))
    h.write_file(path, '\n  \n')
    assert.matches(h.escape_pattern(path) .. ': no train prompts left %(2 lines: 2 empty', h.error_of(prompts.file, path))
    h.write_file(path, 'a\nb\n')
    assert.matches('no test prompts left', h.error_of(prompts.file, path, { split = 'test' }))
    assert.matches('holdout must be a fraction in %[0, 1%)', h.error_of(prompts.file, path, { holdout = 1 }))
    assert.matches("split must be 'train' or 'test'", h.error_of(prompts.file, path, { split = 'val' }))
    assert.matches("unknown option 'dedup'", h.error_of(prompts.file, path, { dedup = true }))
    os.remove(path)
  end)
end)

describe('prompts.templates #binding', function()
  local words = { object = { 'cat', 'dog', 'cow', 'owl' }, relation = { 'next to', 'near', 'on side of' } }

  it('expands every slot from its word list, forever', function()
    local src = prompts.templates { template = 'a {object} {relation} a {object#2}', words = words }
    assert.is_nil(src:size())
    assert.are.equal('templates', src.name)
    local objects, relations = set_of(words.object), set_of(words.relation)
    local seen_same = false
    for _, p in ipairs(src:next(200)) do
      local a, rel, b = p:match('^a (%a+) (.-) a (%a+)$')
      assert(a and objects[a] and relations[rel] and objects[b], p)
      if a == b then seen_same = true end
    end
    assert.is_true(seen_same, '{object#2} is an independent draw')
  end)

  it('reuses one draw for a repeated slot; distinct draws differ when asked', function()
    local same = prompts.templates { template = '{object} and {object}', words = { object = words.object } }
    for _, p in ipairs(same:next(20)) do
      local a, b = p:match('^(%a+) and (%a+)$')
      assert.are.equal(a, b)
    end
    local distinct = prompts.templates { template = '{object} {object#2} {object#3}',
                                         words = { object = words.object }, distinct = true }
    for _, p in ipairs(distinct:next(50)) do
      local a, b, c = p:match('^(%a+) (%a+) (%a+)$')
      assert(a ~= b and b ~= c and a ~= c, p)
    end
    -- more draws than words: distinct gives way instead of looping forever
    local tiny = prompts.templates { template = '{x}{x#2}{x#3}', words = { x = { 'a', 'a', 'b' } }, distinct = true }
    assert.are.equal(3, #tiny:next(1)[1])
  end)

  it('draws one of several templates, and resumes exactly', function()
    local src = prompts.templates { template = { 'a {object}', 'two {object}s' }, words = { object = words.object },
                                    seed = 3, name = 'pets' }
    local batch = src:next(40)
    local kinds = {}
    for _, p in ipairs(batch) do kinds[p:match('^two') and 'two' or 'a'] = true end
    assert.is_true(kinds.a and kinds.two)
    local st = src:state()
    local want = src:next(10)
    local again = prompts.templates { template = { 'a {object}', 'two {object}s' }, words = { object = words.object },
                                      seed = 3, name = 'pets' }
    again:set_state(st)
    assert.are.same(want, again:next(10))
    assert.are.equal('pets', again.name)
    local other = prompts.templates { template = 'a {object}', words = { object = { 'cat' } }, seed = 3 }
    assert.matches('the state is for other templates or words', h.error_of(function() other:set_state(st) end))
  end)

  it('names what is wrong with a template', function()
    assert.matches("no word list 'animal' in words", h.error_of(prompts.templates,
      { template = 'a {animal}', words = words }))
    assert.matches("unmatched '{' at character 3", h.error_of(prompts.templates,
      { template = 'a {object', words = { object = { 'x' } } }))
    assert.matches('bad slot {object#}', h.error_of(prompts.templates,
      { template = 'a {object#}', words = { object = { 'x' } } }))
    assert.matches('words.relation is used by no template', h.error_of(prompts.templates,
      { template = 'a {object}', words = words }))
    assert.matches('words.object must be a non%-empty list', h.error_of(prompts.templates,
      { template = 'a {object}', words = { object = {} } }))
  end)
end)
