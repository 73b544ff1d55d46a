-- The embedded default: it runs, the reward rises, and a seed fixes the run.
local bin = os.getenv('DIFFRL_BIN') or 'build/diffrl'
local root = os.getenv('DIFFRL_SOURCE_DIR') or '.'

local function run(args)
  local p = io.popen(('cd %q && %q run recipes/quickstart.lua %s 2>&1; echo "EXIT=$?"')
    :format(root, bin, args or ''))
  local out = p:read('*a')
  p:close()
  return out
end

describe('recipes/quickstart.lua #cli', function()
  it('raises the mean reward to near the optimum', function()
    local out = run('iterations=40')
    assert.truthy(out:find('EXIT=0', 1, true), out)
    local first, last, optimum = out:match('mean reward (%-?[%d.]+) %-> (%-?[%d.]+) in .-optimum: (%-?[%d.]+)')
    assert.truthy(first, out)
    assert.is_true(tonumber(last) > tonumber(first) + 0.5)
    assert.is_true(math.abs(tonumber(last) - tonumber(optimum)) < 0.05)
  end)

  it('is reproducible from its seed and changes with it', function()
    local strip = function(s) return (s:gsub('in [%d.]+ s CPU', '')) end
    local a, b = run('iterations=5 seed=7'), run('iterations=5 seed=7')
    assert.are.equal(strip(a), strip(b))
    assert.are_not.equal(strip(a), strip(run('iterations=5 seed=8')))
  end)

  it('rejects an unknown setting by name', function()
    local out = run('iterashuns=5')
    assert.truthy(out:find("unknown setting 'iterashuns=5'", 1, true), out)
    assert.truthy(out:find('EXIT=1', 1, true), out)
  end)
end)
