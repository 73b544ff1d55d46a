-- PNG files: dr.save_image / dr.load_image round-trip bytes exactly, lay batches out
-- as torchvision's make_grid, read PIL-written files (spec/fixtures/png, made by
-- tools/fixtures/make_png_fixtures.py) to the values PIL reads, and refuse corrupt
-- or truncated files with an error naming the file.
local dr = require 'diffrl'
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')

local FIXTURES = (os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/fixtures/png/'

local function temp_png()
  local p = os.tmpname()
  os.remove(p)
  return p .. '.png'
end

describe('dr.save_image and dr.load_image #binding', function()
  it('round-trip every u8-representable value exactly (RGB, RGBA, gray; float and uint8)', function()
    local path = temp_png()
    local vals = dr.arange(0, 256):reshape(1, 16, 16):to('float32') / 255
    for _, c in ipairs { 1, 3, 4 } do
      local img = vals:expand(c, 16, 16):contiguous()
      dr.save_image(path, img)
      local back = dr.load_image(path, { channels = c })
      h.assert_close(back:tolist(), img:tolist(), 1e-7)
      assert.are.same((img * 255):tolist(), (back * 255):tolist())
      local bytes = dr.load_image(path, { channels = c, dtype = 'uint8' })
      dr.save_image(path, bytes)
      assert.are.same(bytes:tolist(), dr.load_image(path, { channels = c, dtype = 'uint8' }):tolist())
    end
    os.remove(path)
  end)

  it('clamps to [0, 1] and rounds x * 255 half to even, as diffusers numpy_to_pil', function()
    local path = temp_png()
    dr.save_image(path, dr.tensor { { { -0.5, 0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 1, 7 } } })
    assert.are.same({ { { 0, 0, 0, 2, 2, 255, 255 } } },
      dr.load_image(path, { channels = 1, dtype = 'uint8' }):tolist())
    os.remove(path)
  end)

  it('lays a batch out as torchvision make_grid (nrow, padding 2, pad_value)', function()
    local batch = dr.zeros(5, 3, 2, 3)
    for k = 1, 5 do batch[k]:fill_(k / 10) end
    local grid = dr.make_grid(batch, { nrow = 2, pad_value = 1 })
    -- 2 columns of (3 + 2), 3 rows of (2 + 2), plus the outer padding 2
    assert.are.same({ 3, 3 * 4 + 2, 2 * 5 + 2 }, { grid:size(1), grid:size(2), grid:size(3) })
    local g = grid:select(1, 1):tolist()
    local function at(y, x) return g[y][x] end
    assert.are.equal(1, at(1, 1))
    h.assert_close(at(3, 3), 0.1)                -- image 1 at row 3, col 3
    h.assert_close(at(3, 3 + 5), 0.2)            -- image 2: one cell (3 + 2) to the right
    h.assert_close(at(3 + 4, 3), 0.3)            -- image 3: next row
    h.assert_close(at(3 + 8, 3), 0.5)            -- image 5: third row, first column
    assert.are.equal(1, at(3 + 8, 3 + 5))        -- the empty cell is padding
    assert.are.equal(1, at(5, 3))                -- padding between rows
    local path = temp_png()
    dr.save_image(path, batch, { nrow = 2, pad_value = 1 })
    assert.are.same({ 3, 14, 12 }, { dr.load_image(path):size(1), dr.load_image(path):size(2),
                                     dr.load_image(path):size(3) })
    dr.save_image(path, batch:narrow(1, 1, 1))   -- a batch of one: no padding
    assert.are.same({ 3, 2, 3 }, { dr.load_image(path):size(1), dr.load_image(path):size(2),
                                   dr.load_image(path):size(3) })
    os.remove(path)
  end)

  it('refuses shapes and options it cannot write', function()
    assert.matches('expected an image %[C, H, W%] with C = 1, 3 or 4, got %[2, 4, 4%]',
      h.error_of(dr.save_image, temp_png(), dr.zeros(2, 4, 4)))
    assert.matches("unknown option 'rows'", h.error_of(dr.save_image, temp_png(), dr.zeros(3, 4, 4), { rows = 2 }))
    assert.matches('channels must be 1, 3 or 4', h.error_of(dr.load_image, FIXTURES .. 'rgb.png', { channels = 2 }))
  end)
end)

describe('PNG files PIL wrote #binding #golden', function()
  local expected = dr.load(FIXTURES .. 'expected.safetensors')
  for _, name in ipairs { 'rgb', 'rgba', 'gray', 'bits1', 'palette', 'palette_trns', 'gray16', 'rgb16' } do
    it(name .. '.png reads to the values PIL reads', function()
      local path = FIXTURES .. name .. '.png'
      assert.are.same(expected[name .. '.rgb']:tolist(), dr.load_image(path, { dtype = 'uint8' }):tolist())
      if expected[name .. '.rgba'] then
        assert.are.same(expected[name .. '.rgba']:tolist(),
          dr.load_image(path, { dtype = 'uint8', channels = 4 }):tolist())
        assert.are.same(expected[name .. '.l']:tolist(),
          dr.load_image(path, { dtype = 'uint8', channels = 1 }):tolist())
        h.assert_close(dr.load_image(path):tolist(), (expected[name .. '.rgb']:to('float32') / 255):tolist(), 1e-7)
      end
      if expected[name .. '.f32'] then -- 16-bit files: full precision as float
        h.assert_close(dr.load_image(path):tolist(), expected[name .. '.f32']:tolist(), 1e-7)
      end
    end)
  end
end)

describe('corrupt PNG files #binding', function()
  local good = h.read_file(FIXTURES .. 'rgb.png')

  local function error_for(bytes)
    local path = h.temp_file(bytes, '.png')
    local err = h.error_of(dr.load_image, path)
    os.remove(path)
    return err, path
  end

  it('a truncated file is an error naming the file', function()
    for _, n in ipairs { 0, 7, 8, 20, 33, 50, #good - 12, #good - 1 } do
      local path = h.temp_file(good:sub(1, n), '.png')
      local err = h.error_of(dr.load_image, path)
      assert.matches('png: read ' .. h.escape_pattern(path) .. ': ', err)
      os.remove(path)
    end
  end)

  it('bad signatures, CRCs and data are errors, never crashes', function()
    assert.matches('not a PNG file', (error_for('GIF89a not a png at all')))
    local flipped = good:sub(1, 40) .. string.char((good:byte(41) + 1) % 256) .. good:sub(42)
    assert.matches('png: read .*%.png: ', (error_for(flipped)))
    for i = 9, #good, 7 do -- every 7th byte flipped: an error or an image, never a crash
      local bytes = good:sub(1, i - 1) .. string.char(255 - good:byte(i)) .. good:sub(i + 1)
      local ok, err = pcall(dr.decode_image, bytes, nil, 'mutant.png')
      assert(ok or tostring(err):find('png: read mutant.png: ', 1, true), tostring(err))
    end
  end)

  it('a missing file says so', function()
    assert.matches('png: read /nonexistent/x%.png: cannot open', h.error_of(dr.load_image, '/nonexistent/x.png'))
  end)
end)
