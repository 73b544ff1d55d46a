-- The shapes-world rewards: composition is the mean detector confidence over the
-- objects a prompt names (PAPER.md Eq. 13), diversity is -SP of the colours of a
-- group (Eq. 12), preference is a fixed aesthetic rule that ranks clean renders above
-- blurred ones above noise.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local shapes, rewards = dr.shapes, dr.rewards

local function plain(objects)
  return { background = { kind = 'plain', rgb = { 0.5, 0.5, 0.5 } }, objects = objects }
end

local function obj(kind, color, x, y, size)
  return { kind = kind, color = color, size = size or 'large', x = x or 0.5, y = y or 0.5 }
end

local function mean(list)
  local s = 0
  for _, v in ipairs(list) do s = s + v end
  return s / #list
end

local function blur(images)
  return dr.avg_pool2d(images, 3, 1, 1) / dr.avg_pool2d(dr.ones(images.shape), 3, 1, 1)
end

local function repeat_prompt(p, n)
  local out = {}
  for i = 1, n do out[i] = p end
  return out
end

describe('shapes rewards in the registry #binding', function()
  it('registers shapes_composition, shapes_diversity and shapes_preference', function()
    for _, name in ipairs { 'shapes_composition', 'shapes_diversity', 'shapes_preference' } do
      assert.is_not_nil(rewards.registry[name], name)
      assert.are.equal(name, rewards.name_of(rewards.get(name)))
    end
    assert.matches("shapes_composition: unknown option 'relations'",
      h.error_of(rewards.get, 'shapes_composition', { relations = true }))
    assert.matches('min_confidence must be a number in %[0, 1%], got 2',
      h.error_of(rewards.get, 'shapes_diversity', { min_confidence = 2 }))
    assert.matches("weights: unknown part 'sharp'", h.error_of(rewards.get, 'shapes_preference', { weights = { sharp = 1 } }))
  end)
end)

describe('shapes_composition #binding', function()
  local reward = rewards.get('shapes_composition')

  it('is high when the image shows what the prompt names and low otherwise', function()
    local images, captions = shapes.sample(64, { seed = 3 })
    local good = rewards.call(reward, images, captions)
    local shifted = {}
    for i = 1, 64 do shifted[i] = captions[i % 64 + 1] end
    local bad = rewards.call(reward, images, shifted)
    print(('\n    composition: matching pairs %.3f, mismatched pairs %.3f'):format(mean(good), mean(bad)))
    assert.is_true(mean(good) > 0.95)
    assert.is_true(mean(bad) < 0.25)
    for _, s in ipairs(good) do assert.is_true(s >= 0 and s <= 1) end
  end)

  it('scores each named object: half found is half the score, a count of two needs two', function()
    local images = shapes.render {
      plain { obj('circle', 'red', 0.3, 0.5, 'small'), obj('square', 'blue', 0.7, 0.5, 'small') },
      plain { obj('star', 'yellow') },
      plain { obj('star', 'yellow', 0.3, 0.3, 'small'), obj('star', 'yellow', 0.7, 0.7, 'small') },
      plain { obj('circle', 'green') },
    }
    local s, info = rewards.call(reward, images, {
      'a red circle left of a green square', 'two yellow stars', 'two yellow stars', 'a circle' })
    assert.is_true(math.abs(s[1] - 0.5) < 0.05, s[1])
    assert.is_true(math.abs(s[2] - 0.5) < 0.05, s[2])
    assert.is_true(s[3] > 0.95, s[3])
    assert.is_true(s[4] > 0.95, 'an open colour matches any colour: ' .. s[4])
    assert.is_true(math.abs(info.found - 5 / 7) < 1e-9, info.found) -- 5 of the 7 named objects
    assert.is_true(rewards.call(reward, images:narrow(1, 4, 1), { 'a red circle' })[1] < 0.05)
  end)

  it('with extra = w, counts the objects the prompt does not name against the score', function()
    local images = shapes.render {
      plain { obj('circle', 'red', 0.3, 0.5, 'small'), obj('circle', 'red', 0.7, 0.5, 'small') },
      plain { obj('circle', 'red', 0.3, 0.5, 'small'), obj('square', 'blue', 0.7, 0.5, 'small') },
      plain { obj('circle', 'red', 0.3, 0.5, 'small'), obj('square', 'blue', 0.7, 0.5, 'small') },
    }
    local prompts = { 'a red circle', 'a red circle', 'a red circle and a blue square' }
    local paper = rewards.call(reward, images, prompts)
    local full = rewards.call(rewards.get('shapes_composition', { extra = 1 }), images, prompts)
    local half = rewards.call(rewards.get('shapes_composition', { extra = 0.5 }), images, prompts)
    for i = 1, 3 do assert.is_true(paper[i] > 0.95, 'Eq. 13 ignores extra objects: ' .. paper[i]) end
    -- one named object and one more of ~full confidence: the mean is over ~2 objects
    assert.is_true(math.abs(full[1] - 0.5) < 0.05, full[1])
    assert.is_true(math.abs(full[2] - 0.5) < 0.05, 'an extra object of any colour or kind counts: ' .. full[2])
    assert.is_true(math.abs(half[1] - 1 / 1.5) < 0.05, half[1])
    assert.is_true(full[3] > 0.95, 'nothing unnamed, nothing lost: ' .. full[3])
    assert.matches('extra must be a number in %[0, 1%], got 2',
      h.error_of(rewards.get, 'shapes_composition', { extra = 2 }))
  end)

  it('counts a wrong size half, and checks relations when asked', function()
    local images = shapes.render { plain { obj('circle', 'red', 0.3, 0.5, 'small'), obj('square', 'blue', 0.7, 0.5, 'small') } }
    local s = rewards.call(reward, images, { 'a large red circle' })[1]
    assert.is_true(math.abs(s - 0.5) < 0.05, s)
    local strict = rewards.get('shapes_composition', { relation = true })
    local left = rewards.call(strict, images, { 'a red circle left of a blue square' })[1]
    local right = rewards.call(strict, images, { 'a red circle right of a blue square' })[1]
    assert.is_true(left > 0.95 and math.abs(right - left / 2) < 1e-9)
    assert.is_true(rewards.call(reward, images, { 'a red circle right of a blue square' })[1] > 0.95)
  end)

  it('skips (NaN) prompts that name no shape it knows', function()
    local images = shapes.sample(2, { seed = 1 })
    local s, info = rewards.call(reward, images, { 'a photo of a cat', 'a red circle' })
    assert.is_true(s[1] ~= s[1])
    assert.are.equal(1, info.nonfinite)
    assert.are.equal(1, info.unparsed)
  end)
end)

describe('shapes_diversity #binding', function()
  local reward = rewards.get('shapes_diversity')
  local K = #shapes.COLORS

  local function circles(colors)
    local scenes = {}
    for i, c in ipairs(colors) do
      scenes[i] = c and plain { obj('circle', c) } or plain {}
    end
    return shapes.render(scenes)
  end

  it('gives every image of a group -SP, SP = sum_a (freq_a - 1/K)^2', function()
    local all_red = {}
    for i = 1, 12 do all_red[i] = 'red' end
    local s = rewards.call(reward, circles(all_red), repeat_prompt('a circle', 12))
    local sp_red = (1 - 1 / K) ^ 2 + (K - 1) / K ^ 2
    for i = 1, 12 do assert.is_true(math.abs(s[i] + sp_red) < 1e-9, s[i]) end

    local even = {}
    for i = 1, 2 * K do even[i] = shapes.COLORS[(i - 1) % K + 1].name end
    s = rewards.call(reward, circles(even), repeat_prompt('a circle', 2 * K))
    for i = 1, 2 * K do assert.is_true(math.abs(s[i]) < 1e-9, s[i]) end

    local three = { 'red', 'red', 'blue', 'blue', 'green', 'green' }
    s = rewards.call(reward, circles(three), repeat_prompt('a circle', 6))
    local sp3 = 3 * (1 / 3 - 1 / K) ^ 2 + (K - 3) / K ^ 2
    assert.is_true(math.abs(s[1] + sp3) < 1e-9)
    assert.is_true(-sp_red < s[1] and s[1] < 0)
  end)

  it("penalises images with no object as a 'none' outcome, worse than all one colour", function()
    local s, info = rewards.call(reward, circles { false, false, false, false }, repeat_prompt('a circle', 4))
    assert.is_true(math.abs(s[1] + 1 + 1 / K) < 1e-9, s[1])
    assert.are.equal(1, info.none)
    local half = rewards.call(reward, circles { 'red', 'blue', false, false }, repeat_prompt('a circle', 4))
    local sp = 2 * (0.25 - 1 / K) ^ 2 + (K - 2) / K ^ 2 + 0.25
    assert.is_true(math.abs(half[1] + sp) < 1e-9)
  end)

  it('judges each group on its own: meta.groups, else the prompt text', function()
    local images = circles { 'red', 'red', 'red', 'blue', 'green', 'yellow' }
    local prompts = { 'a circle', 'a circle', 'a circle', 'a star', 'a star', 'a star' }
    local s, info = rewards.call(reward, images, prompts)
    local sp_red = (1 - 1 / K) ^ 2 + (K - 1) / K ^ 2
    local sp_mixed = 3 * (1 / 3 - 1 / K) ^ 2 + (K - 3) / K ^ 2
    assert.is_true(math.abs(s[1] + sp_red) < 1e-9 and math.abs(s[6] + sp_mixed) < 1e-9)
    assert.are.equal(2, info.groups)
    s = rewards.call(reward, images, prompts, { groups = { 1, 2, 1, 2, 1, 2 } })
    assert.is_true(math.abs(s[1] - s[3]) < 1e-12 and math.abs(s[2] - s[4]) < 1e-12)
    assert.is_true(s[1] > -sp_red)
    -- match_kind: a square does not count for 'a circle'
    local strict = rewards.get('shapes_diversity', { match_kind = true })
    local sq = shapes.render { plain { obj('square', 'red') }, plain { obj('circle', 'blue') } }
    local _, si = rewards.call(strict, sq, { 'a circle', 'a circle' })
    assert.are.equal(0.5, si.none)
  end)
end)

describe('shapes_preference #binding', function()
  local reward = rewards.get('shapes_preference')

  it('ranks clean renders above blurred ones above noise, in [0, 1]', function()
    local images, captions = shapes.sample(48, { seed = 5 })
    local clean = rewards.call(reward, images, captions)
    local blurred = rewards.call(reward, blur(images), captions)
    local noisy = rewards.call(reward, images + dr.randn(images.shape, { generator = dr.Generator(2) }) * 0.1, captions)
    local noise = rewards.call(reward, dr.rand(images.shape, { generator = dr.Generator(3) }), captions)
    print(('\n    preference: clean %.3f, blurred %.3f, noisy %.3f, pure noise %.3f'):format(mean(clean),
      mean(blurred), mean(noisy), mean(noise)))
    assert.is_true(mean(clean) > mean(blurred) + 0.1)
    assert.is_true(mean(blurred) > mean(noise) + 0.2)
    assert.is_true(mean(clean) > mean(noisy) + 0.1)
    local wins = 0
    for i = 1, 48 do
      if clean[i] > blurred[i] then wins = wins + 1 end
      for _, list in ipairs { clean, blurred, noisy, noise } do assert.is_true(list[i] >= 0 and list[i] <= 1) end
    end
    assert.is_true(wins >= 44, 'clean beats its blurred copy in ' .. wins .. ' of 48')
  end)

  it('prefers a centred object of a good size on a plain background', function()
    local images = shapes.render {
      plain { obj('circle', 'red', 0.5, 0.5, 'large') },
      plain { obj('circle', 'red', 0.15, 0.15, 'small') },
      { background = { kind = 'noise', rgb = { 0.5, 0.5, 0.5 }, amplitude = 0.08, noise_seed = 1 },
        objects = { obj('circle', 'red', 0.5, 0.5, 'large') } },
    }
    local s = rewards.call(reward, images, { 'a red circle', 'a red circle', 'a red circle' })
    assert.is_true(s[1] > s[2] + 0.1 and s[1] > s[3] + 0.05, table.concat(s, ', '))
    assert.is_true(s[1] > 0.95)
    -- the prompt says how many objects to expect
    local two = rewards.call(reward, images:narrow(1, 1, 1), { 'two red circles' })[1]
    assert.is_true(two < s[1] - 0.2)
  end)
end)
