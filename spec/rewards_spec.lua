-- Rewards: JPEG sizes equal PIL's to the byte (goldens from
-- tools/fixtures/make_jpeg_golden.py), DDPO's jpeg_(in)compressibility, the checks
-- rewards.call makes on what a reward returns, the registry, mixing and group-level
-- rewards; and dr.decode_jpeg reading files PIL wrote as PIL reads them.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local rewards = dr.rewards

local FIXTURES = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/jpeg/'
local PIL_SIZES = dofile(FIXTURES .. 'sizes.lua')

local function fixture(name)
  return dr.load_image(FIXTURES .. name .. '.png', { channels = name == 'gray' and 1 or 3 })
end

describe('dr.jpeg_encode and dr.jpeg_size #binding #golden', function()
  for _, name in ipairs { 'gradient', 'noise', 'shapes', 'gray' } do
    it(name .. ': sizes equal PIL Image.save(format="JPEG", quality=q) at q = 95, 75, 50, 10, 100', function()
      local img = fixture(name)
      for q, size in pairs(PIL_SIZES[name]) do
        assert.are.equal(size, dr.jpeg_size(img, q), ('quality %d'):format(q))
      end
      assert.are.equal(PIL_SIZES[name][95], #dr.jpeg_encode(img))  -- quality 95 by default
    end)
  end

  it('float and uint8 images of the same bytes encode identically; views need no copy by the caller', function()
    local img = fixture('shapes')
    local bytes = dr.load_image(FIXTURES .. 'shapes.png', { dtype = 'uint8' })
    assert.are.equal(dr.jpeg_encode(img, { quality = 80 }), dr.jpeg_encode(bytes, { quality = 80 }))
    local hwc = img:permute(2, 3, 1):contiguous()
    assert.are.equal(dr.jpeg_encode(img), dr.jpeg_encode(hwc:permute(3, 1, 2)))
  end)

  it('refuses what it cannot encode, naming the problem', function()
    assert.matches('C = 1 or 3, got %[4, 8, 8%]', h.error_of(dr.jpeg_size, dr.zeros(4, 8, 8)))
    assert.matches('quality must be an integer in %[1, 100%], got 0', h.error_of(dr.jpeg_size, dr.zeros(3, 8, 8), 0))
    assert.matches("unknown option 'qualty'", h.error_of(dr.jpeg_encode, dr.zeros(3, 8, 8), { qualty = 9 }))
    assert.matches('expected a tensor', h.error_of(dr.jpeg_encode, 'pixels'))
  end)
end)

describe('dr.decode_jpeg and dr.load_jpeg #binding #golden', function()
  local expected = dr.load(FIXTURES .. 'decoded.safetensors')
  for _, kind in ipairs { 'baseline', 'progressive', 'grayscale', 'cmyk' } do
    it(kind .. '.jpg reads to the bytes PIL reads (RGB and L)', function()
      local path = FIXTURES .. kind .. '.jpg'
      assert.are.same(expected[kind .. '.rgb']:tolist(), dr.load_jpeg(path, { dtype = 'uint8' }):tolist())
      assert.are.same(expected[kind .. '.l']:tolist(),
        dr.load_jpeg(path, { dtype = 'uint8', channels = 1 }):tolist())
      h.assert_close(dr.decode_jpeg(h.read_file(path)):tolist(),
        (expected[kind .. '.rgb']:to('float32') / 255):tolist(), 1e-7)
    end)
  end

  it('truncated and corrupt data are errors naming the input, never crashes', function()
    local good = h.read_file(FIXTURES .. 'baseline.jpg')
    assert.matches('not a JPEG file', h.error_of(dr.decode_jpeg, 'GIF89a', nil, 'x.gif'))
    for _, n in ipairs { 0, 2, 3, 20, 200, #good - 2, #good - 1 } do
      assert.matches('jpeg: read cut%.jpg: ', h.error_of(dr.decode_jpeg, good:sub(1, n), nil, 'cut.jpg'))
    end
    for i = 3, #good, 5 do
      local bytes = good:sub(1, i - 1) .. string.char(255 - good:byte(i)) .. good:sub(i + 1)
      local ok, err = pcall(dr.decode_jpeg, bytes, nil, 'mutant.jpg')
      assert(ok or tostring(err):find('jpeg: read mutant.jpg: ', 1, true), tostring(err))
    end
    local missing = os.tmpname() .. '.missing.jpg'
    assert.matches('jpeg: read ' .. h.escape_pattern(missing) .. ': cannot open', h.error_of(dr.load_jpeg, missing))
  end)
end)

describe('rewards.jpeg_compressibility #binding', function()
  local function crop(img) return img:narrow(2, 1, 16):narrow(3, 1, 16) end
  local batch = dr.stack { crop(fixture('gradient')), crop(fixture('noise')), crop(fixture('shapes')) }

  it("is DDPO's: -(PIL JPEG size at quality 95) / 1000 per image", function()
    local b = dr.stack { fixture('shapes'), fixture('shapes') }
    local scores, info = rewards.call(rewards.jpeg_compressibility(), b, { 'a', 'b' }, {})
    assert.are.same({ -PIL_SIZES.shapes[95] / 1000, -PIL_SIZES.shapes[95] / 1000 }, scores)
    assert.are.equal(0, info.nonfinite)
    local up = rewards.call(rewards.get('jpeg_incompressibility'), b, { 'a', 'b' }, {})
    assert.are.same({ PIL_SIZES.shapes[95] / 1000, PIL_SIZES.shapes[95] / 1000 }, up)
  end)

  it('prefers the flatter image: compressibility ranks flat above noisy, incompressibility the reverse', function()
    local flat, noisy = dr.full({ 3, 32, 32 }, 0.5), dr.rand({ 3, 32, 32 }, { generator = dr.Generator(3) })
    local b = dr.stack { flat, noisy }
    local c = rewards.call(rewards.jpeg_compressibility(), b, { 'p', 'p' })
    local i = rewards.call(rewards.jpeg_incompressibility { quality = 80 }, b, { 'p', 'p' })
    assert.is_true(c[1] > c[2] and c[1] < 0)
    assert.is_true(i[2] > i[1] and i[1] > 0)
    assert.are.equal(-c[1], dr.jpeg_size(flat, 95) / 1000)
  end)

  it('scores every image of a batch with its own size', function()
    local s = rewards.call(rewards.jpeg_compressibility(), batch, { 'a', 'b', 'c' })
    for k = 1, 3 do assert.are.equal(-dr.jpeg_size(batch[k], 95) / 1000, s[k]) end
  end)

  it('checks its options', function()
    assert.matches("jpeg_compressibility: unknown option 'q'", h.error_of(rewards.jpeg_compressibility, { q = 1 }))
    assert.matches('quality must be an integer in %[1, 100%], got 101',
      h.error_of(rewards.get, 'jpeg_incompressibility', { quality = 101 }))
  end)
end)

describe('rewards.call #binding', function()
  local images = dr.zeros(2, 3, 4, 4)

  it('accepts a list or a tensor [B] and returns a list of B numbers with info', function()
    local s, info = rewards.call(function() return { 1, 2 }, { extra = 7 } end, images, { 'a', 'b' })
    assert.are.same({ 1, 2 }, s)
    assert.are.same({ extra = 7, nonfinite = 0 }, info)
    s = rewards.call(function() return dr.tensor { 0.5, -1 } end, images, { 'a', 'b' })
    assert.are.same({ 0.5, -1 }, s)
  end)

  it('passes prompts and meta through', function()
    local seen
    rewards.call(function(imgs, prompts, meta) seen = { imgs:size(1), prompts[2], meta.step }; return { 0, 0 } end,
      images, { 'a', 'b' }, { step = 12 })
    assert.are.same({ 2, 'b', 12 }, seen)
  end)

  it('lets NaN and inf through and counts them in info.nonfinite', function()
    local s, info = rewards.call(function() return { 0 / 0, math.huge } end, images, { 'a', 'b' })
    assert.is_true(s[1] ~= s[1])
    assert.are.equal(math.huge, s[2])
    assert.are.equal(2, info.nonfinite)
  end)

  it('names the reward and what was wrong', function()
    local three = rewards.named('three', function() return { 1, 2, 3 } end)
    assert.matches('three: returned 3 scores for 2 images', h.error_of(rewards.call, three, images, { 'a', 'b' }))
    local text = rewards.named('texty', function() return { 1, 'high' } end)
    assert.matches('texty: score 2 is a string %(high%), not a number', h.error_of(rewards.call, text, images, { 'a', 'b' }))
    local holes = rewards.named('holes', function() return { 1, nil, 3 } end)
    assert.matches('holes: the scores have holes %(2 entries, the last at 3', h.error_of(rewards.call, holes, images, { 'a', 'b' }))
    local shape = rewards.named('shaped', function() return dr.zeros(2, 1) end)
    assert.matches('shaped: returned a tensor %[2, 1%], expected 2 scores %[2%]',
      h.error_of(rewards.call, shape, images, { 'a', 'b' }))
    assert.matches('nothing: must return a list of 2 numbers',
      h.error_of(rewards.call, rewards.named('nothing', function() end), images, { 'a', 'b' }))
    assert.matches('bad_info: info must be a table',
      h.error_of(rewards.call, rewards.named('bad_info', function() return { 1, 2 }, 5 end), images, { 'a', 'b' }))
    -- an anonymous function is named by where it is defined
    assert.matches('reward function at .*rewards_spec%.lua:%d+: returned 1 scores',
      h.error_of(rewards.call, function() return { 1 } end, images, { 'a', 'b' }))
  end)

  it('checks its inputs', function()
    local ok = function() return { 0, 0 } end
    assert.matches('images must be %[B, 3, H, W%], got', h.error_of(rewards.call, ok, dr.zeros(2, 4, 4), { 'a', 'b' }))
    assert.matches('1 prompts for 2 images', h.error_of(rewards.call, ok, images, { 'a' }))
    assert.matches('prompt 2 must be a string', h.error_of(rewards.call, ok, images, { 'a', 3 }))
    assert.matches('meta.groups must be a list of 2 group ids', h.error_of(rewards.call, ok, images, { 'a', 'b' }, { groups = { 1 } }))
  end)
end)

describe('the reward registry #binding', function()
  it('builds the built-in rewards by name', function()
    assert.are.equal('jpeg_compressibility', rewards.name_of(rewards.get('jpeg_compressibility')))
    assert.is_function(rewards.registry.jpeg_incompressibility)
  end)

  it('says what ImageReward needs (spec/imagereward_spec.lua runs it)', function()
    assert.matches("imagereward: tokenizer is required: the path of bert%-base%-uncased's vocab.txt",
      h.error_of(rewards.get, 'imagereward'))
    assert.matches('imagereward: path %(the ImageReward folder or weights file%) is required',
      h.error_of(rewards.get, 'imagereward', { tokenizer = function() end }))
  end)

  it('takes new rewards by register and refuses unknown names and duplicates', function()
    local name = 'spec_brightness_' .. tostring(os.time())
    rewards.register(name, function(opts)
      local scale = (opts and opts.scale) or 1
      return function(images) return images:mean({ 2, 3, 4 }) * scale end
    end)
    local s = rewards.call(rewards.get(name, { scale = 2 }), dr.full({ 2, 3, 2, 2 }, 0.25), { 'a', 'b' })
    assert.are.same({ 0.5, 0.5 }, s)
    assert.matches("'" .. name .. "' is already registered", h.error_of(rewards.register, name, function() end))
    assert.matches("unknown reward 'nope' %(registered: .*jpeg_compressibility", h.error_of(rewards.get, 'nope'))
    assert.matches('constructor must be a function', h.error_of(rewards.register, 'x_y', 5))
  end)
end)

describe('rewards.weighted and rewards.group_level #binding', function()
  local images = dr.zeros(4, 3, 2, 2)
  local prompts = { 'a', 'b', 'a', 'b' }

  it('weighted sums the weighted scores and reports each part', function()
    local one = rewards.named('one', function() return { 1, 1, 1, 1 }, { seen = 4 } end)
    local idx = rewards.named('idx', function() return { 1, 2, 3, 4 } end)
    local mix = rewards.weighted { { one, 2 }, { reward = idx, weight = -0.5 } }
    local s, info = rewards.call(mix, images, prompts)
    assert.are.same({ 1.5, 1, 0.5, 0 }, s)
    assert.are.equal(1, info.one)
    assert.are.equal(2.5, info.idx)
    assert.are.equal(4, info['one/seen'])
    assert.matches('weighted%(2 %* one %+ %-0%.5 %* idx%)', rewards.name_of(mix))
    assert.matches('entry 1: weight must be a finite number', h.error_of(rewards.weighted, { { one } }))
    -- registered names work as parts
    local named = rewards.weighted { { 'jpeg_compressibility', 1 } }
    assert.are.equal(4, #rewards.call(named, images, prompts))
  end)

  it('group_level hands each group its images and spreads a group score to them', function()
    local calls = {}
    local parity = rewards.group_level(function(imgs, ps, meta)
      calls[#calls + 1] = { n = imgs:size(1), prompt = ps[1], group = meta.group, indices = meta.indices }
      return -#ps
    end)
    local s, info = rewards.call(parity, images, prompts, { groups = { 7, 7, 7, 9 }, step = 1 })
    assert.are.same({ -3, -3, -3, -1 }, s)
    assert.are.same({ n = 3, prompt = 'a', group = 7, indices = { 1, 2, 3 } }, calls[1])
    assert.are.same({ n = 1, prompt = 'b', group = 9, indices = { 4 } }, calls[2])
    assert.are.equal(2, info.groups)
    -- without meta.groups the images of one prompt form a group
    s = rewards.call(parity, images, prompts)
    assert.are.same({ -2, -2, -2, -2 }, s)
  end)

  it('group_level takes per-image lists too, and checks their length', function()
    local rank = rewards.group_level(function(imgs)
      local out = {}
      for i = 1, imgs:size(1) do out[i] = i end
      return out
    end, 'rank')
    assert.are.same({ 1, 1, 2, 2 }, (rewards.call(rank, images, prompts)))
    local short = rewards.group_level(function() return { 1 } end, 'short')
    assert.matches('short %(group a%): returned 1 scores for 2 images', h.error_of(rewards.call, short, images, prompts))
  end)
end)
