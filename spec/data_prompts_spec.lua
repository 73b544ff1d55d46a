-- Prompt files at scale: .jsonl and .csv columns, streaming (prompts are read
-- back by offset), de-dup and the held-out split independent of the rank count,
-- disjoint ranks that together are the one-rank stream, exact resume per rank.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local prompts = dr.prompts
local fixtures = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/data/'

local function set_of(list)
  local s = {}
  for _, p in ipairs(list) do s[p] = true end
  return s
end

local function count(set)
  local n = 0
  for _ in pairs(set) do n = n + 1 end
  return n
end

-- 300 prompts, 50 of them twice.
local function numbered_file()
  local lines = {}
  for i = 1, 300 do lines[#lines + 1] = 'a picture of item ' .. i end
  for i = 1, 50 do lines[#lines + 1] = '  a picture of item ' .. (i * 3) .. ' ' end
  return h.temp_file(table.concat(lines, '\n') .. '\n', '.txt')
end

describe('prompts.file at scale #binding', function()
  it('reads a .csv column (RFC 4180: quotes, commas, doubled quotes, newlines in a field)', function()
    local src = prompts.file(fixtures .. 'prompts.csv', { shuffle = false })
    assert.are.same({ 'a red cat', 'a dog, sitting', 'a "quoted" word', 'two\nlines' }, src:next(4))
    assert.are.equal(1, src.stats.duplicates)
    assert.are.equal(1, src.stats.empty)
    assert.are.equal(8, src.stats.lines)
    assert.matches("no column 'text' %(columns: id, prompt, score%)",
      h.error_of(prompts.file, fixtures .. 'prompts.csv', { column = 'text' }))
    local path = h.temp_file('prompt,x\n"open quote,1\n', '.csv')
    assert.matches(h.escape_pattern(path) .. ':2: a quoted field is not closed', h.error_of(prompts.file, path))
    h.write_file(path, 'prompt,x\na,1\nb,2,3\n')
    assert.matches(h.escape_pattern(path) .. ':3: 3 fields, the header has 2', h.error_of(prompts.file, path))
    h.write_file(path, 'prompt,x\n"a"b,1\n')
    assert.matches(':2: text after the closing quote of field 1', h.error_of(prompts.file, path))
    os.remove(path)
  end)

  it('reads a .jsonl field; null and blank lines are empty', function()
    local src = prompts.file(fixtures .. 'prompts.jsonl', { shuffle = false })
    assert.are.same({ 'a red cat', 'café at night', 'a blue bird' }, src:next(3))
    assert.are.same({ lines = 6, empty = 2, duplicates = 1, too_short = 0, too_long = 0, banned = 0,
                      train = 3, test = 0 }, src.stats)
    local path = h.temp_file('{"prompt": "a"}\n{"text": "b"}\n', '.jsonl')
    assert.matches(h.escape_pattern(path) .. ":2: no field 'prompt' %(fields: text%)", h.error_of(prompts.file, path))
    h.write_file(path, '{"prompt": "a"}\n{"prompt": 3}\n')
    assert.matches(":2: field 'prompt' is a number", h.error_of(prompts.file, path))
    h.write_file(path, '{"prompt": "a"}\n{"prompt": "b"\n')
    assert.matches(h.escape_pattern(path) .. ':2: not JSON', h.error_of(prompts.file, path))
    assert.matches('column is for .jsonl and .csv', h.error_of(prompts.file, fixtures .. 'README.md', { column = 'x' }))
    os.remove(path)
  end)

  it('de-dups and splits the same way in every run and for every rank count', function()
    local path = numbered_file()
    local one = prompts.file(path, { holdout = 0.2, seed = 3 })
    local test = prompts.file(path, { holdout = 0.2, split = 'test' })
    assert.are.equal(50, one.stats.duplicates)
    assert.are.equal(300, one:size() + test:size())
    -- fixed values: the same de-dup and split on every machine and in every run
    assert.are.equal(66, test:size())
    assert.are.equal('d9b56bb28b6a75c9', test.fingerprint)
    assert.are.equal('4fbefe75825c0d7e', one.fingerprint)
    local all = set_of(one:all())
    for _, W in ipairs({ 2, 3, 7 }) do
      local union, per_rank = {}, nil
      for r = 0, W - 1 do
        local src = prompts.file(path, { holdout = 0.2, seed = 3, rank = r, world_size = W })
        assert.are.same(one.stats, src.stats) -- de-dup and split do not see the ranks
        per_rank = src:size()
        assert.are.equal(math.floor(one:size() / W), per_rank)
        for _, p in ipairs(src:next(per_rank)) do
          assert.is_nil(union[p], 'two ranks drew ' .. p)
          assert.is_true(all[p], p)
          union[p] = true
        end
      end
      assert.are.equal(per_rank * W, count(union))
    end
    os.remove(path)
  end)

  it('ranks together are the one-rank stream, epoch after epoch', function()
    local path = numbered_file()
    local one = prompts.file(path, { seed = 9 })
    local W = 4 -- 300 prompts: 75 a rank
    local ranks = {}
    for r = 0, W - 1 do ranks[r] = prompts.file(path, { seed = 9, rank = r, world_size = W }) end
    for _ = 1, 3 * 75 do
      local want = one:next(W)
      for r = 0, W - 1 do assert.are.equal(want[r + 1], ranks[r]:next(1)[1]) end
    end
    os.remove(path)
  end)

  it('resumes a rank exactly and refuses another rank\'s state', function()
    local path = numbered_file()
    local src = prompts.file(path, { seed = 2, rank = 1, world_size = 3 })
    src:next(130) -- into the second epoch (100 a rank)
    local st = src:state()
    local want = src:next(120)
    local again = prompts.file(path, { seed = 2, rank = 1, world_size = 3 })
    again:set_state(st)
    assert.are.same(want, again:next(120))
    assert.matches('the state is for rank 1 of 3, this source is rank 0 of 3', h.error_of(function()
      prompts.file(path, { seed = 2, rank = 0, world_size = 3 }):set_state(st)
    end))
    assert.matches('rank must be in %[0, world_size = 3%)', h.error_of(prompts.file, path, { rank = 3, world_size = 3 }))
    assert.matches('300 train prompts cannot be shared by 400 ranks',
      h.error_of(prompts.file, path, { world_size = 400 }))
    os.remove(path)
  end)

  it('reads prompts back from the file and notices when it changed underneath', function()
    local path = h.temp_file(('x'):rep(3000) .. '\nshort one\n' .. ('y'):rep(5000) .. '\n', '.txt')
    local src = prompts.file(path, { shuffle = false })
    assert.are.same({ ('x'):rep(3000), 'short one', ('y'):rep(5000) }, src:next(3))
    h.write_file(path, ('x'):rep(3000) .. '\nshort two\n' .. ('y'):rep(5000) .. '\n')
    assert.matches('the file changed since it was opened', h.error_of(function() src:next(3) end))
    os.remove(path)
  end)

  it('streams a file larger than its 1 MiB read chunks, lines across chunk ends', function()
    local lines = {}
    for i = 1, 40000 do lines[i] = ('prompt %d %s'):format(i, ('z'):rep(i % 37)) end
    local path = h.temp_file(table.concat(lines, '\r\n'), '.txt') -- ~1.5 MB, no final newline
    local src = prompts.file(path, { shuffle = false })
    assert.are.equal(40000, src:size())
    local got = src:all()
    for _, i in ipairs({ 1, 2, 17000, 25001, 39999, 40000 }) do assert.are.equal(lines[i], got[i]) end
    os.remove(path)
    -- CSV records with quoted newlines and quotes, some across the chunk ends
    local rows, want = { 'n,prompt' }, {}
    for i = 1, 30000 do
      want[i] = ('line one of %d\nline "two" x%s'):format(i, ('q'):rep(i % 41))
      rows[#rows + 1] = ('%d,"%s"'):format(i, want[i]:gsub('"', '""'))
    end
    path = h.temp_file(table.concat(rows, '\r\n') .. '\r\n', '.csv')
    src = prompts.file(path, { shuffle = false })
    assert.are.equal(30000, src:size())
    assert.are.equal(60001, src.stats.lines)
    got = src:all()
    for i = 1, 30000 do
      if got[i] ~= want[i] then assert.are.equal(want[i], got[i], 'record ' .. i) end
    end
    os.remove(path)
  end)
end)
