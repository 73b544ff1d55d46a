-- tools/pg_probe.lua, small: it builds recipes/quickstart.lua's trainer, so a change of
-- the quickstart's defaults can silently change what the probe measures (twice so far:
-- the composition task's own batch_size and eval.seeds; then shapes.heldout). Its batches must be
-- sample.batch_size images, its held-out scoring images_per_prompt images a prompt per
-- seed of `seeds`, and every number it prints finite.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')

local SRC = os.getenv('DIFFRL_SOURCE_DIR') or '.'

describe('tools/pg_probe.lua #cli', function()
  it("keeps its own batch size and held-out scoring under the quickstart's defaults", function()
    local r = h.diffrl { 'run', SRC .. '/tools/pg_probe.lua', SRC .. '/models/shapes-sharp', 'task=composition',
                         'batches=2', 'alphas=1e-3', 'seeds=7,8', 'only=all,attn', 'sample.batch_size=4',
                         'sample.steps=2' }
    assert.are.equal(0, r.code, r.stderr)
    local cos = r.stdout:match('cos%(first half, second half%) = (%S+) %(2 batches of 4 images%)')
    assert.is_truthy(cos, r.stdout)
    assert.is_true(math.abs(tonumber(cos)) <= 1)
    -- its own 16 held-out prompts (not the quickstart's shapes.heldout) x images_per_prompt 4 x 2 seeds
    local mean = r.stdout:match('held%-out composition: (%S+) over 128 images')
    assert.is_truthy(mean, r.stdout)
    assert.is_true(tonumber(mean) >= 0 and tonumber(mean) <= 1)
    local all = tonumber(r.stdout:match('parameters all: (%d+)'))
    local attn = tonumber(r.stdout:match('parameters attn: (%d+)'))
    assert.is_true(all and attn and attn > 0 and attn < all, r.stdout)
    local steps = 0
    for kind, change, win in r.stdout:gmatch('(%a+)%s+alpha 0%.001%s+change (%S+)%s+win rate (%S+)') do
      assert.is_true(kind == 'RL' or kind == 'anti')
      assert.is_true(math.abs(tonumber(change)) <= 1 and tonumber(win) >= 0 and tonumber(win) <= 1, r.stdout)
      steps = steps + 1
    end
    assert.are.equal(4, steps) -- RL and anti for each of `only`
  end)

  it('refuses an odd number of batches', function()
    local r = h.diffrl { 'run', SRC .. '/tools/pg_probe.lua', SRC .. '/models/shapes-sharp', 'batches=3' }
    assert.are_not.equal(0, r.code)
    assert.is_truthy(r.stderr:find('batches must be an even number >= 2, got 3', 1, true), r.stderr)
  end)
end)
