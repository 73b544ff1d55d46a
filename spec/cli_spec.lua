-- The `diffrl` command line, run as a subprocess ($DIFFRL_BIN): running files
-- and chunks, exit codes and error reports, help and version, the REPL on piped
-- input, and the REPL's Tab completion (called in-process: host only).
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')

local diffrl = h.diffrl

local function assert_contains(text, part)
  assert.is_truthy(text:find(part, 1, true), ('expected to find %q in:\n%s'):format(part, text))
end

-- A temporary Lua file with `source`, removed after the spec.
local temp_files = {}
local function lua_file(source)
  local path = h.temp_file(source, '.lua')
  temp_files[#temp_files + 1] = path
  return path
end

describe('diffrl runs Lua #cli', function()
  after_each(function()
    for _, p in ipairs(temp_files) do os.remove(p) end
    temp_files = {}
  end)

  it('-e runs a chunk: the worked example prints 54', function()
    local r = diffrl { '-e', "local dr = require 'diffrl' " ..
                      'print(dr.tensor{{1,2},{3,4}}:matmul(dr.tensor{{1,2},{3,4}}):sum():item())' }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal('54\n', r.stdout)
  end)

  it('run FILE ARGS sets arg as lua does and passes ARGS as ...', function()
    local script = lua_file('print(arg[0], arg[1], arg[2], select("#", ...), ...)\n' ..
                            'print(arg[-2], arg[-1])\n')
    local r = diffrl { 'run', script, 'a', 'b' }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(script .. '\ta\tb\t2\ta\tb\ndiffrl\trun\n', r.stdout)
  end)

  it('a FILE.lua as the first argument is the same as run', function()
    local script = lua_file('print(arg[0], ...)\n')
    local r = diffrl { script, 'x' }
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(script .. '\tx\n', r.stdout)
  end)

  it('runs a script piped to it when given no arguments', function()
    local r = diffrl({}, "local dr = require 'diffrl'\nprint('piped', dr.ones(3):sum():item())\n")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal('piped\t3\n', r.stdout)
  end)

  it('a Lua error exits 1 with file:line and a traceback on stderr', function()
    local script = lua_file('local x = 1\nerror("bad thing")\n')
    local r = diffrl { 'run', script }
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, script .. ':2: bad thing')
    assert_contains(r.stderr, 'stack traceback')
  end)

  it("an error from the C core exits 1 naming the script's file:line and the shapes", function()
    local script = lua_file("local dr = require 'diffrl'\nlocal a = dr.ones(2, 3)\n" ..
                            'local b = a:matmul(a)\n')
    local r = diffrl { 'run', script }
    assert.are.equal(1, r.code)
    local first_line = r.stderr:match('^[^\n]*')
    assert_contains(first_line, script .. ':3: ')
    assert_contains(first_line, 'matmul')
    local _, shapes = first_line:gsub('%[2, 3%]', '')
    assert.are.equal(2, shapes, first_line)
  end)

  it('a syntax error exits 1 naming the file', function()
    local script = lua_file('local = 1\n')
    local r = diffrl { 'run', script }
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, script .. ':1:')
  end)

  it('a missing file exits 1 naming it', function()
    local missing = os.tmpname()
    os.remove(missing)
    missing = missing .. '_missing.lua'
    local r = diffrl { 'run', missing }
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, missing)
  end)

  it('an error in -e code exits 1', function()
    local r = diffrl { '-e', 'error("nope")' }
    assert.are.equal(1, r.code)
    assert_contains(r.stderr, 'nope')
  end)
end)

describe('bad arguments raise errors, never crash the process #cli', function()
  -- Each runs in its own process: memory corruption shows as a crash at exit.
  local function survives(code)
    local r = diffrl { '-e', "local dr = require 'diffrl' " ..
                             'local ok, err = pcall(function() ' .. code .. ' end) ' ..
                             'collectgarbage() collectgarbage() io.write(tostring(err))' }
    assert.are.equal(0, r.code, 'exit code ' .. tostring(r.code) .. ' for: ' .. code)
    return r.stdout
  end

  it('sum over a list of more than 8 dims', function()
    local dims = table.concat(h.list(16, function() return 1 end), ', ')
    assert_contains(survives('local s = dr.ones(2):sum { ' .. dims .. ' }'), 'sum')
  end)

  it('permute with more than 8 dims', function()
    assert_contains(survives('local p = dr.ones(2):permute(1, 1, 1, 1, 1, 1, 1, 1, 1)'),
                    'permute')
  end)

  it('a tensor with more than 8 dims', function()
    assert_contains(survives('local z = dr.zeros(1, 1, 1, 1, 1, 1, 1, 1, 1)'), 'zeros')
  end)
end)

describe('diffrl usage #cli', function()
  it('an unknown command exits 2 and points to --help', function()
    local r = diffrl { 'frobnicate' }
    assert.are.equal(2, r.code)
    assert_contains(r.stderr, "unknown command 'frobnicate'")
    assert_contains(r.stderr, '--help')
  end)

  it('an unknown option exits 2 and points to --help', function()
    local r = diffrl { '--frobnicate' }
    assert.are.equal(2, r.code)
    assert_contains(r.stderr, "unknown option '--frobnicate'")
    assert_contains(r.stderr, '--help')
  end)

  it('--help prints the usage and the commands', function()
    local r = diffrl { '--help' }
    assert.are.equal(0, r.code)
    assert_contains(r.stdout, 'Usage:')
    assert_contains(r.stdout, 'diffrl run FILE')
    assert_contains(r.stdout, 'Commands:')
  end)

  it('help run and run --help print the usage of run', function()
    for _, args in ipairs { { 'help', 'run' }, { 'run', '--help' } } do
      local r = diffrl(args)
      assert.are.equal(0, r.code, table.concat(args, ' '))
      assert_contains(r.stdout, 'Usage: diffrl run FILE')
    end
  end)

  it('--version names the version, LuaJIT, BLAS, CUDA, cuDNN, NCCL and MPI', function()
    local version = require('diffrl').version
    assert.matches('^%d+%.%d+%.%d+', version)
    local r = diffrl { '--version' }
    assert.are.equal(0, r.code)
    assert.matches('^diffrl ' .. h.escape_pattern(version) .. ' ', r.stdout)
    for _, name in ipairs { 'LuaJIT', 'BLAS', 'CUDA', 'cuDNN', 'NCCL', 'MPI' } do
      assert.matches('\n%s+' .. name .. ':', r.stdout)
    end
  end)

  it('the version is 0.1.0', function()
    assert_contains(diffrl({ '--version' }).stdout, 'diffrl 0.1.0')
  end)
end)

describe('the REPL on piped input #cli', function()
  -- Prompts go to stdout when stdin is not a terminal; drop them to see values.
  local function without_prompts(out)
    local lines = {}
    for line in out:gmatch('([^\n]*)\n') do lines[#lines + 1] = line:gsub('^[> ]*>+ ', '') end
    local tail = out:match('[^\n]*$'):gsub('^[> ]*>+ ?', '')
    if tail ~= '' then lines[#lines + 1] = tail end
    return lines
  end

  it('prints values, runs statements, and goes on after an error', function()
    local r = diffrl({ '-i' }, "1+1\n= 2*3\nx = 5\nx\nfor i=1,2 do\nprint(i)\nend\n" ..
                                "error('boom')\nprint('still here')\n")
    assert.are.equal(0, r.code, r.stderr)
    local lines = without_prompts(r.stdout)
    assert.are.same({ '2', '6', '5', '1', '2' }, { unpack(lines, 1, 5) })
    assert_contains(lines[6], 'boom')
    assert.are.equal('still here', lines[7])
    assert.are.equal(7, #lines, r.stdout)
  end)

  it('has dr loaded and prints tensors as PyTorch does', function()
    local r = diffrl({ '-i' }, 'dr.tensor{{1,2},{3,4}}\n')
    assert.are.equal(0, r.code, r.stderr)
    assert_contains(r.stdout, 'tensor([[1., 2.],\n        [3., 4.]])')
  end)

  it('reports a syntax error and goes on', function()
    local r = diffrl({ '-i' }, "x = = 1\nprint('after')\n")
    assert.are.equal(0, r.code, r.stderr)
    assert_contains(r.stdout, "unexpected symbol near '='")
    assert_contains(r.stdout, 'after')
  end)

  it('-e then -i runs the chunk, then the REPL', function()
    local r = diffrl({ '-e', 'y = 40', '-i' }, 'y + 2\n')
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ '42' }, without_prompts(r.stdout))
  end)
end)

describe('REPL Tab completion #cli', function()
  local repl, saved_dr, saved_t

  -- before_each, not setup: busted runs a block's setup even where tags filter
  -- out all its tests, and diffrl.host exists only inside the host.
  before_each(function()
    repl = require 'diffrl.cli.repl'
    saved_dr, saved_t = rawget(_G, 'dr'), rawget(_G, 't')
    _G.dr = require 'diffrl'
    _G.t = _G.dr.zeros(2, 3)
  end)
  after_each(function()
    _G.dr, _G.t = saved_dr, saved_t
  end)

  local function contains(list, item)
    for _, v in ipairs(list) do if v == item then return true end end
    return false
  end

  it('completes a field of a table', function()
    assert.are.same({ 'dr.zeros' }, repl.complete('dr.ze'))
  end)

  it('completes through nested tables', function()
    assert.are.same({ 'dr.cuda.is_available' }, repl.complete('dr.cuda.is'))
  end)

  it("completes a tensor's methods after ':'", function()
    local methods = repl.complete('t:su')
    assert.is_true(contains(methods, 't:sum'), table.concat(methods, ' '))
    assert.is_true(contains(methods, 't:sub'), table.concat(methods, ' '))
    assert.is_false(contains(methods, 't:shape'), 'properties are not methods')
  end)

  it("lists a tensor's properties after '.'", function()
    assert.is_true(contains(repl.complete('t.sh'), 't.shape'))
  end)

  it('completes globals and keywords', function()
    assert.is_true(contains(repl.complete('pri'), 'print'))
    assert.is_true(contains(repl.complete('fun'), 'function'))
  end)

  it('gives nothing for an unknown prefix', function()
    assert.are.same({}, repl.complete('no_such_table.x'))
  end)
end)
