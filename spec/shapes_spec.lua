-- The shapes world: scenes, pixels and captions are functions of (seed, index); the
-- captions follow templates that parse() inverts; the detector finds the objects of
-- clean renders and grows less confident, not wrong, as images blur or get noisy;
-- prompt sources resume from state() and never yield held-out captions.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local shapes = dr.shapes

local function plain(objects, grey)
  local g = grey or 0.5
  return { background = { kind = 'plain', rgb = { g, g, g } }, objects = objects }
end

local function obj(kind, color, size, x, y, say_size)
  return { kind = kind, color = color, size = size or 'large', x = x or 0.5, y = y or 0.5, say_size = say_size }
end

-- A 3x3 box blur that keeps the borders' brightness.
local function blur(images)
  return dr.avg_pool2d(images, 3, 1, 1) / dr.avg_pool2d(dr.ones(images.shape), 3, 1, 1)
end

local function with_noise(images, sigma, seed)
  return images + dr.randn(images.shape, { generator = dr.Generator(seed or 1) }) * sigma
end

-- How many scene objects a detection of the right kind and colour finds (within 0.1
-- of the object's position), and the mean confidence of those detections.
local function score_detections(scenes, detections)
  local total, found, conf = 0, 0, 0
  for i, s in ipairs(scenes) do
    local used = {}
    for _, o in ipairs(s.objects) do
      total = total + 1
      for j, d in ipairs(detections[i]) do
        if not used[j] and d.kind == o.kind and d.color == o.color and math.abs(d.x - o.x) < 0.1
            and math.abs(d.y - o.y) < 0.1 then
          used[j], found, conf = true, found + 1, conf + d.confidence
          break
        end
      end
    end
  end
  return found / total, conf / math.max(found, 1)
end

local function mean_confidence(detections)
  local s, n = 0, 0
  for _, list in ipairs(detections) do
    for _, d in ipairs(list) do s, n = s + d.confidence, n + 1 end
  end
  return s / math.max(n, 1)
end

describe('shapes vocabulary #binding', function()
  it('names well-separated colours, four kinds and two sizes', function()
    assert.is_true(#shapes.COLORS >= 6 and #shapes.COLORS <= 8)
    for i, c in ipairs(shapes.COLORS) do
      assert.are.equal('string', type(c.name))
      assert.are.equal(3, #c.rgb)
      for j = 1, i - 1 do
        local d = 0
        for k = 1, 3 do d = d + (c.rgb[k] - shapes.COLORS[j].rgb[k]) ^ 2 end
        assert.is_true(math.sqrt(d) > 0.35, c.name .. ' is too close to ' .. shapes.COLORS[j].name)
      end
    end
    assert.are.same({ 'circle', 'square', 'triangle', 'star' }, shapes.KINDS)
    assert.are.same({ 'small', 'large' }, shapes.SIZES)
  end)

  it('draws each kind with the area and inner radius the detector assumes', function()
    local geometry = require 'diffrl.shapes.geometry'
    for kind = 1, 4 do
      local inside, n = 0, 400
      for a = 0, n - 1 do
        for b = 0, n - 1 do
          if geometry.inside(kind, -1.3 + 2.6 * (b + 0.5) / n, -1.3 + 2.6 * (a + 0.5) / n) then inside = inside + 1 end
        end
      end
      assert.is_true(math.abs(inside * (2.6 / n) ^ 2 - geometry.AREA[kind]) < 0.01 * geometry.AREA[kind], shapes.KINDS[kind])
      for k = 0, 359 do
        local t = math.rad(k)
        local r = geometry.INNER[kind] * 0.999
        assert.is_true(geometry.inside(kind, r * math.cos(t), r * math.sin(t)), shapes.KINDS[kind])
        r = geometry.BOUND[kind] * 1.001
        assert.is_false(geometry.inside(kind, r * math.cos(t), r * math.sin(t)), shapes.KINDS[kind])
      end
    end
  end)
end)

describe('shapes.scene #binding', function()
  it('is a function of (seed, index): the same scene every time, others elsewhere', function()
    assert.are.same(shapes.scene(5, 17), shapes.scene(5, 17))
    assert.are_not.same(shapes.scene(5, 17).objects, shapes.scene(5, 18).objects)
    assert.are_not.same(shapes.scene(5, 17).objects, shapes.scene(6, 17).objects)
  end)

  it('holds 1 to max_objects objects inside the frame, apart, in the relation it names', function()
    local counts, relations = {}, {}
    for i = 0, 299 do
      local s = shapes.scene(1, i, { max_objects = 3 })
      local n = #s.objects
      counts[n] = (counts[n] or 0) + 1
      for j, o in ipairs(s.objects) do
        local e, sc = require('diffrl.shapes.world').EXTENT[o.kind], shapes.SIZE_SCALE[o.size]
        assert.is_true(o.x - e[1] * sc > 0 and o.x + e[1] * sc < 1 and o.y - e[2] * sc > 0 and o.y + e[2] * sc < 1)
        for k = 1, j - 1 do
          local p = s.objects[k]
          local ep, sp = require('diffrl.shapes.world').EXTENT[p.kind], shapes.SIZE_SCALE[p.size]
          assert.is_true(math.abs(o.x - p.x) > e[1] * sc + ep[1] * sp or math.abs(o.y - p.y) > e[2] * sc + ep[2] * sp,
            'objects overlap in scene ' .. i)
        end
      end
      if s.relation then
        relations[s.relation] = true
        assert.are.equal(2, n)
        assert.is_true(shapes.holds(s.relation, s.objects[1], s.objects[2]), s.relation)
      end
      assert.is_true(({ plain = true, noise = true, stripes = true })[s.background.kind])
    end
    assert.is_true(counts[1] > 50 and counts[2] > 50 and counts[3] > 50)
    for _, r in ipairs { 'left of', 'right of', 'above', 'below', 'next to' } do assert.is_true(relations[r], r) end
    for i = 0, 50 do assert.is_true(#shapes.scene(2, i, { max_objects = 1 }).objects == 1) end
  end)

  it('draws only the kinds and colours asked for', function()
    for i = 0, 50 do
      for _, o in ipairs(shapes.scene(0, i, { kinds = { 'star' }, colors = { 'red', 'blue' } }).objects) do
        assert.are.equal('star', o.kind)
        assert.is_true(o.color == 'red' or o.color == 'blue')
      end
    end
    assert.matches("unknown kind 'hexagon'", h.error_of(shapes.scene, 0, 0, { kinds = { 'hexagon' } }))
    assert.matches("unknown option 'max_object'", h.error_of(shapes.scene, 0, 0, { max_object = 2 }))
    assert.matches('max_objects must be 1, 2 or 3, got 4', h.error_of(shapes.scene, 0, 0, { max_objects = 4 }))
  end)
end)

describe('shapes.render #binding', function()
  it('gives float images [B, 3, R, R] in [0, 1], the same pixels every time', function()
    local scenes = { shapes.scene(0, 1), shapes.scene(0, 2) }
    local a, b = shapes.render(scenes), shapes.render(scenes)
    assert.are.same({ 2, 3, 32, 32 }, a.shape)
    assert.are.equal('float32', a.dtype)
    assert.are.same(a:tolist(), b:tolist())
    assert.is_true(a:min():item() >= 0 and a:max():item() <= 1)
    assert.are.same({ 1, 3, 64, 64 }, shapes.render(scenes[1], { resolution = 64 }).shape)
  end)

  it('fills a shape with its colour and anti-aliases its edge', function()
    local img = shapes.render(plain { obj('circle', 'blue', 'large') })[1]
    local rgb = shapes.COLORS[5].rgb
    assert.are.equal('blue', shapes.COLORS[5].name)
    h.assert_close({ img[1][16][16]:item(), img[2][16][16]:item(), img[3][16][16]:item() }, rgb, 1e-6)
    h.assert_close({ img[1][1][1]:item(), img[2][1][1]:item(), img[3][1][1]:item() }, { 0.5, 0.5, 0.5 }, 1e-6)
    local partial = 0
    for _, v in ipairs(img[3]:reshape(32 * 32):tolist()) do
      if v > 0.52 and v < rgb[3] - 0.02 then partial = partial + 1 end
    end
    assert.is_true(partial >= 8, 'edge pixels between background and colour: ' .. partial)
  end)
end)

describe('shapes.sample #binding', function()
  it('returns images, captions and scenes; offset tiles the stream', function()
    local images, captions, scenes = shapes.sample(8, { seed = 4 })
    assert.are.same({ 8, 3, 32, 32 }, images.shape)
    assert.are.equal(8, #captions)
    for i = 1, 8 do assert.are.equal(shapes.caption(scenes[i]), captions[i]) end
    local tail_images, tail_captions = shapes.sample(3, { seed = 4, offset = 5 })
    assert.are.same({ captions[6], captions[7], captions[8] }, tail_captions)
    assert.are.same(images:narrow(1, 6, 3):tolist(), tail_images:tolist())
    local again = shapes.sample(8, { seed = 4 })
    assert.are.same(images:tolist(), again:tolist())
  end)

  it('leaves colours open in a fraction open_color of the captions', function()
    local _, captions = shapes.sample(200, { seed = 1, open_color = 0.5 })
    local open = 0
    for _, c in ipairs(captions) do
      local named = shapes.parse(c)
      assert.is_true(#named > 0, c)
      if named[1].color == nil then open = open + 1 end
    end
    assert.is_true(open > 60 and open < 140, 'open captions: ' .. open)
  end)

  it('draws the objects of colour-less captions from open_color_mix, the others as before', function()
    local mix = { 6, 2, 1, 1, 0, 0 } -- red, orange, yellow, green, blue, purple
    local _, captions, scenes = shapes.sample(600, { seed = 2, open_color = 0.5, open_color_mix = mix })
    local _, plain_captions, plain_scenes = shapes.sample(600, { seed = 2, open_color = 0.5 })
    local count, n, same = {}, 0, 0
    for i, s in ipairs(scenes) do
      -- the caption is the recoloured scene's (two squares of one new colour are 'two squares')
      assert.are.equal(shapes.caption(s, { open_color = shapes.parse(captions[i])[1].color == nil }), captions[i])
      if shapes.parse(captions[i])[1].color == nil then
        for _, o in ipairs(s.objects) do count[o.color], n = (count[o.color] or 0) + 1, n + 1 end
      else
        assert.are.same({ plain_captions[i], plain_scenes[i].objects }, { captions[i], s.objects })
        same = same + 1
      end
    end
    assert.is_true(same > 200 and n > 300, same .. ' ' .. n)
    assert.is_nil(count.blue)
    assert.is_nil(count.purple)
    assert.is_true(math.abs(count.red / n - 0.6) < 0.07 and math.abs(count.orange / n - 0.2) < 0.06,
                   ('red %d, orange %d of %d'):format(count.red, count.orange or 0, n))
    assert.is_true((count.yellow or 0) > 0 and (count.green or 0) > 0)
    -- objects of one colour and kind stay alike ('two stars' are two stars of one colour)
    local _, caps, sc = shapes.sample(300, { seed = 3, open_color = 1, open_color_mix = { 1, 1, 1, 1, 1, 1 } })
    for i, c in ipairs(caps) do
      if c:match('^two ') and #sc[i].objects == 2 then assert.are.equal(sc[i].objects[1].color, sc[i].objects[2].color) end
    end
    assert.matches('open_color_mix must be 6 weights >= 0 %(red, orange, yellow, green, blue, purple%), not all 0',
                   h.error_of(shapes.sample, 1, { open_color_mix = { 1, 2 } }))
    assert.matches('open_color_mix must be 6 weights',
                   h.error_of(shapes.sample, 1, { open_color_mix = { 0, 0, 0, 0, 0, 0 } }))
  end)
end)

describe('shapes.caption and shapes.parse #binding', function()
  local cases = {
    { plain { obj('circle', 'red') }, 'a red circle' },
    { plain { obj('square', 'blue', 'small', 0.5, 0.5, true) }, 'a small blue square' },
    { plain { obj('star', 'orange') }, 'an orange star' },
    { plain { obj('star', 'orange', 'large', 0.5, 0.5, true) }, 'a large orange star' },
    { plain { obj('star', 'yellow', 'small', 0.3, 0.3), obj('star', 'yellow', 'small', 0.7, 0.7) }, 'two yellow stars' },
    { plain { obj('circle', 'red', 'small', 0.2, 0.2), obj('circle', 'red', 'small', 0.5, 0.5), obj('circle', 'red', 'small', 0.8, 0.8) },
      'three red circles' },
    { plain { obj('circle', 'red', 'small', 0.2, 0.2), obj('square', 'blue', 'small', 0.5, 0.5), obj('circle', 'red', 'small', 0.8, 0.8) },
      'two red circles and a blue square' },
    { plain { obj('circle', 'red', 'small', 0.2, 0.2), obj('square', 'blue', 'small', 0.5, 0.5), obj('star', 'green', 'small', 0.8, 0.8) },
      'a red circle, a blue square and a green star' },
  }
  local rel = plain { obj('square', 'blue', 'small', 0.25, 0.5), obj('triangle', 'green', 'small', 0.75, 0.5) }
  rel.relation = 'left of'
  cases[#cases + 1] = { rel, 'a blue square left of a green triangle' }

  it('writes captions by the templates', function()
    for _, c in ipairs(cases) do assert.are.equal(c[2], shapes.caption(c[1])) end
    assert.are.equal('a circle', shapes.caption(cases[1][1], { open_color = true }))
    assert.are.equal('two stars', shapes.caption(cases[5][1], { open_color = true }))
    assert.are.equal('a small square', shapes.caption(cases[2][1], { open_color = true }))
  end)

  it('parses every template back to the objects it names', function()
    assert.are.same({ { kind = 'circle', color = 'red', count = 1 } }, shapes.parse('a red circle'))
    assert.are.same({ { kind = 'star', color = 'yellow', count = 2 } }, shapes.parse('two yellow stars'))
    assert.are.same({ { kind = 'square', count = 1, size = 'small' } }, shapes.parse('a small square'))
    local p = shapes.parse('a blue square left of a green triangle')
    assert.are.equal('left of', p.relation)
    assert.are.same({ kind = 'triangle', color = 'green', count = 1 }, p[2])
    assert.are.equal('left of', shapes.parse('A blue square to the left of a green triangle.').relation)
    assert.are.equal(3, #shapes.parse('two red circles, a blue square and an orange star'))
  end)

  it('round-trips: parse(caption(scene)) gives the scene objects, counted, for 2000 scenes', function()
    for i = 0, 1999 do
      local s = shapes.scene(9, i)
      for _, open in ipairs { false, true } do
        local text = shapes.caption(s, { open_color = open })
        local parsed = shapes.parse(text)
        local want, at = {}, {}
        for _, o in ipairs(s.objects) do
          local key = o.kind .. o.color
          if at[key] then
            at[key].count = at[key].count + 1
            at[key].size = nil
          else
            at[key] = { kind = o.kind, color = (not open) and o.color or nil, count = 1,
                        size = o.say_size and o.size or nil }
            want[#want + 1] = at[key]
          end
        end
        if s.relation and #want == 2 and s.relation ~= 'and' then want.relation = s.relation end
        assert.are.same(want, parsed, text)
      end
    end
  end)

  it('gives an empty list for words it does not know, never an error', function()
    for _, text in ipairs { 'a photo of a cat', 'a red hexagon', 'red', '', 'a red circle on the moon',
                            'a red circle left of', 'two', ',' } do
      assert.are.same({}, shapes.parse(text), text)
    end
    assert.are.same({}, shapes.parse(nil))
    assert.are.same({}, shapes.parse(42))
  end)
end)

describe('shapes.detect #binding', function()
  it('finds >= 95% of the objects of 200 random 32x32 scenes with the right kind and colour', function()
    local images, _, scenes = shapes.sample(200, { seed = 7, split = 'all' })
    local t0 = os.clock()
    local detections = shapes.detect(images)
    local ms = (os.clock() - t0) * 1000 / 200
    local found, conf = score_detections(scenes, detections)
    print(('\n    detector on 200 clean 32x32 scenes: %.1f%% found, mean confidence %.3f, %.2f ms/image')
      :format(100 * found, conf, ms))
    assert.is_true(found >= 0.95, 'found ' .. found)
    assert.is_true(conf >= 0.9, 'confidence ' .. conf)
  end)

  it('finds the objects of 64x64 renders too', function()
    local images, _, scenes = shapes.sample(60, { seed = 8, resolution = 64, split = 'all' })
    local found = score_detections(scenes, shapes.detect(images))
    assert.is_true(found >= 0.95, 'found ' .. found)
  end)

  it('reports kind, colour, confidence, position, area and size', function()
    local img = shapes.render(plain { obj('triangle', 'green', 'small', 0.3, 0.6) })
    local d = shapes.detect(img[1])
    assert.are.equal(1, #d)
    assert.are.equal('triangle', d[1].kind)
    assert.are.equal('green', d[1].color)
    assert.are.equal('small', d[1].size)
    assert.is_true(d[1].confidence > 0.9 and d[1].confidence <= 1)
    assert.is_true(math.abs(d[1].x - 0.3) < 0.03 and math.abs(d[1].y - 0.6) < 0.03)
    assert.is_true(d[1].area > 0.01 and d[1].area < 0.05)
    assert.are.same({}, shapes.detect(dr.full({ 3, 32, 32 }, 0.3)))
    assert.are.equal(2, #shapes.detect(shapes.render { plain { obj('star', 'red') }, plain { obj('square', 'blue') } }))
  end)

  it('degrades gracefully on blurred images: still found, less confident', function()
    local images, _, scenes = shapes.sample(100, { seed = 7, split = 'all' })
    local found_clean, conf_clean = score_detections(scenes, shapes.detect(images))
    local found, conf = score_detections(scenes, shapes.detect(blur(images)))
    print(('\n    3x3 box blur: %.1f%% found, mean confidence %.3f (clean %.3f)'):format(100 * found, conf, conf_clean))
    assert.is_true(found >= 0.85, 'found ' .. found)
    assert.is_true(conf < conf_clean - 0.1 and conf > 0.3, 'confidence ' .. conf)
  end)

  it('degrades gracefully on noise: confidence falls as the noise grows', function()
    local images, _, scenes = shapes.sample(100, { seed = 7, split = 'all' })
    local last = 2
    for _, sigma in ipairs { 0, 0.05, 0.1, 0.2 } do
      local found, conf = score_detections(scenes, shapes.detect(with_noise(images, sigma)))
      if sigma == 0.1 then
        print(('\n    gaussian noise 0.1: %.1f%% found, mean confidence %.3f'):format(100 * found, conf))
        assert.is_true(found >= 0.85, 'found ' .. found)
      end
      assert.is_true(conf < last, ('sigma %g: confidence %.3f'):format(sigma, conf))
      last = conf
    end
    assert.is_true(mean_confidence(shapes.detect(dr.rand({ 20, 3, 32, 32 }, { generator = dr.Generator(3) }))) < 0.3)
  end)

  it('gives a confidence per kind: the winner\'s is its confidence, a close runner-up keeps some', function()
    local d = shapes.detect(shapes.render(plain { obj('square', 'blue') })[1])[1]
    assert.are.equal(d.confidence, d.kind_confidence.square)
    for k, c in pairs(d.kind_confidence) do
      if k ~= 'square' then assert.is_true(c < 0.05, k .. ' ' .. c) end
    end
    local images = shapes.sample(100, { seed = 7, split = 'all' })
    local doubtful = 0
    for _, dets in ipairs(shapes.detect(blur(images))) do
      for _, e in ipairs(dets) do
        for k, c in pairs(e.kind_confidence) do
          if k ~= e.kind then
            assert.is_true(c <= e.confidence, ('%s %.3f above the winner %s %.3f'):format(k, c, e.kind, e.confidence))
            if c > 0.02 then doubtful = doubtful + 1 end
          end
        end
      end
    end
    print(('\n    3x3 box blur: %d runner-up kinds above 0.02'):format(doubtful))
    assert.is_true(doubtful > 0)
  end)

  it('is less sure of a colour between two palette colours and of a malformed blob', function()
    local pixels = shapes.render(plain { obj('circle', 'red') }):tolist()
    -- between red (0.9, 0.1, 0.1) and orange (1.0, 0.55, 0.05): green channel 0.32
    for y = 1, 32 do
      for x = 1, 32 do
        if pixels[1][1][y][x] > 0.6 then pixels[1][2][y][x] = 0.32 end
      end
    end
    local d = shapes.detect(dr.tensor(pixels))[1][1]
    assert.are.equal('circle', d.kind)
    assert.is_true(d.color_confidence < 0.8 and d.color_confidence > 0, 'colour confidence ' .. d.color_confidence)
    -- an L-shaped blob is none of the four kinds
    local grid = {}
    for c = 1, 3 do
      grid[c] = {}
      for y = 1, 32 do
        grid[c][y] = {}
        for x = 1, 32 do
          local on = (x >= 6 and x <= 10 and y >= 6 and y <= 25) or (y >= 21 and y <= 25 and x >= 6 and x <= 25)
          grid[c][y][x] = on and (c == 1 and 0.9 or 0.1) or 0.5
        end
      end
    end
    local l = dr.tensor(grid)
    local ld = shapes.detect(l)
    assert.are.equal(1, #ld)
    assert.are.equal('red', ld[1].color)
    assert.is_true(ld[1].confidence < 0.5, 'L-shape confidence ' .. ld[1].confidence)
  end)

  it('takes views and batches, and refuses what is not an image', function()
    local images = shapes.sample(2, { seed = 3 })
    local view = images:permute(1, 3, 4, 2):contiguous():permute(1, 4, 2, 3)
    assert.are.same(shapes.detect(images), shapes.detect(view))
    assert.matches('expected images %[3, H, W%] or %[B, 3, H, W%], got %[2, 32, 32%]',
      h.error_of(shapes.detect, dr.zeros(2, 32, 32)))
    assert.matches('expected an image tensor', h.error_of(shapes.detect, 'x'))
  end)
end)

describe('shapes.prompts #binding', function()
  it('is an infinite, deterministic prompt source of captions', function()
    local src = shapes.prompts { seed = 3 }
    local a = src:next(20)
    assert.are.equal(20, #a)
    assert.is_nil(src:size())
    assert.are.equal('shapes', src.name)
    assert.are.same(a, shapes.prompts({ seed = 3 }):next(20))
    assert.are_not.same(a, shapes.prompts({ seed = 4 }):next(20))
    for _, p in ipairs(a) do
      local named = shapes.parse(p)
      local n = 0
      for _, o in ipairs(named) do n = n + o.count end
      assert.is_true(n >= 1 and n <= 2, p)
    end
  end)

  it('resumes exactly from state()', function()
    local src = shapes.prompts { seed = 1, max_objects = 3 }
    src:next(7)
    local st = src:state()
    local rest = src:next(9)
    local again = shapes.prompts { seed = 1, max_objects = 3 }
    again:set_state(st)
    assert.are.same(rest, again:next(9))
    assert.matches('the state is for other options', h.error_of(function()
      shapes.prompts({ seed = 1, max_objects = 2 }):set_state(st)
    end))
    assert.matches('seed = 1, this source has 2', h.error_of(function()
      shapes.prompts({ seed = 2, max_objects = 3 }):set_state(st)
    end))
  end)

  it('with open_color leaves the colour open, one kind per prompt', function()
    local src = shapes.prompts { open_color = true, kinds = { 'circle', 'square' } }
    assert.are.equal('shapes_open', src.name)
    for _, p in ipairs(src:next(50)) do
      local named = shapes.parse(p)
      assert.are.equal(1, #named, p)
      assert.is_nil(named[1].color)
      assert.is_true(named[1].kind == 'circle' or named[1].kind == 'square')
    end
  end)

  it('never yields a held-out caption; heldout_prompts gives only those', function()
    local held = shapes.heldout_prompts(20, 0)
    assert.are.equal(20, #held)
    assert.are.same(held, shapes.heldout_prompts(20, 0))
    local is_held = {}
    for _, p in ipairs(held) do
      is_held[p] = true
      assert.are.equal('test', shapes.split_of(p))
    end
    for _, p in ipairs(shapes.prompts({ seed = 0 }):next(2000)) do
      assert.is_nil(is_held[p], p)
      assert.are.equal('train', shapes.split_of(p))
    end
    local _, captions = shapes.sample(300, { seed = 0, max_objects = 2 })
    for _, c in ipairs(captions) do assert.are.equal('train', shapes.split_of(c)) end
  end)
end)
