-- Resizing as Pillow does (Image.resize, reducing_gap None): antialiased when
-- shrinking, bit for bit on 8-bit images; Resize + CenterCrop as torchvision on a
-- PIL image. Goldens: spec/fixtures/data (tools/fixtures/make_data_fixtures.py).
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local dir = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/data/'

local function load(name) return dr.load_image(dir .. name, { dtype = 'uint8' }) end

local function max_diff(a, b) return (a:float() - b:float()):abs():max():item() end

describe('image resize #binding', function()
  local src = load('resize_src.png') -- 37 x 23

  it('equals Pillow byte for byte: bilinear, bicubic, lanczos, shrinking and growing', function()
    for _, f in ipairs({ 'bilinear', 'bicubic', 'lanczos' }) do
      for _, s in ipairs({ { 16, 9 }, { 80, 50 }, { 37, 11 } }) do
        local want = load(('resize_%s_%dx%d.png'):format(f, s[1], s[2]))
        local got = dr.image_resize(src, s[1], s[2], f)
        assert.are.same({ 3, s[2], s[1] }, got:shape())
        assert.are.equal(0, max_diff(want, got), ('%s %dx%d'):format(f, s[1], s[2]))
      end
    end
  end)

  it('resizes the shorter side and crops the centre as torchvision, bytes or floats', function()
    for _, f in ipairs({ 'bilinear', 'bicubic', 'lanczos' }) do
      local want = load(('resize_crop_%s_16.png'):format(f))
      assert.are.equal(0, max_diff(want, dr.image_resize_crop(src, 16, { filter = f, dtype = 'uint8' })), f)
      local floats = dr.image_resize_crop(src, 16, { filter = f })
      assert.are.equal('float32', floats.dtype)
      assert.is_true(max_diff(want:float() / 255, floats) < 1e-7, f)
    end
    -- the same size: an exact copy
    assert.are.equal(0, max_diff(src, dr.image_resize(src, 37, 23, 'bicubic')))
  end)

  it('names what is wrong', function()
    assert.matches('image must be uint8', h.error_of(dr.image_resize, src:float(), 4, 4))
    assert.matches("filter must be 'bilinear', 'bicubic'", h.error_of(dr.image_resize, src, 4, 4, 'nearest'))
    assert.matches('width must be a positive integer', h.error_of(dr.image_resize, src, 0, 4))
    assert.matches('image must be %[C, H, W%]', h.error_of(dr.image_resize_crop, src:select(1, 1), 4))
  end)
end)
