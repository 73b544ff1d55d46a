-- Recipe configs: a schema checks every key, layers apply in order, the command line
-- overrides by type, config files run sandboxed, and a resolved config written as Lua
-- reads back equal. Pure Lua: runs under plain luajit too.
local h = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/helper.lua')
local config = require 'diffrl.config'

local ROOT = os.getenv('DIFFRL_SOURCE_DIR') or '.'

local function spec()
  return config.merge(config.common(), {
    train = {
      lr = { type = 'number', default = 1e-4, min = 0, max = 1, doc = 'AdamW step size' },
      loss_reduction = { type = 'string', default = 'mean', choices = { 'mean', 'sum' }, doc = 'over the batch' },
      ema = { type = 'boolean', default = false, doc = 'EMA of the weights' },
    },
    sample = {
      prompts = { type = 'list', of = 'string', default = { 'a cat' }, doc = 'prompts' },
      sizes = { type = 'list', of = 'integer', optional = true, doc = 'sizes' },
      name = { type = 'string', optional = true, doc = 'a name' },
      extra = { type = 'table', optional = true, doc = 'free-form options' },
      anything = { type = 'any', optional = true, doc = 'whatever' },
      hook = { type = 'function', optional = true, doc = 'a callback' },
    },
  })
end

local schema = config.schema(spec())
-- The keys without defaults in config.common(): a complete config needs them.
local required = { model = { path = 'models/tiny' }, sample = { batch_size = 2, steps = 4 },
                   checkpoint = { every = 10 } }

local function resolve(...) return config.resolve(schema, required, ...) end
local function err(...) return h.error_of(...) end
local function sets(...) return config.parse_args({ ... }).sets end

describe('diffrl.config #binding', function()
  describe('schema', function()
    it('indexes fields by dotted path and keeps the common keys', function()
      for _, p in ipairs { 'run.dir', 'run.seed', 'model.path', 'train.iterations', 'sample.batch_size',
                           'sample.steps', 'checkpoint.every', 'checkpoint.keep', 'train.lr' } do
        assert.is_table(schema.fields[p], p)
      end
      assert.is_true(schema.sections.train)
      assert.is_true(config.is_schema(schema))
      assert.are.equal(schema, config.schema(schema))
    end)

    it('rejects unknown types and attributes, and defaults that fail their own field', function()
      assert.are.equal("config: schema: a.b: unknown type 'float'",
                       err(config.schema, { a = { b = { type = 'float' } } }))
      assert.are.equal("config: schema: a.b: unknown attribute 'defualt'",
                       err(config.schema, { a = { b = { type = 'number', defualt = 1 } } }))
      assert.are.equal('config: schema: default of a.b: must be >= 1, got 0',
                       err(config.schema, { a = { b = { type = 'integer', default = 0, min = 1 } } }))
      assert.are.equal("config: schema: default of a.b: expected a number, got 'x' (a string)",
                       err(config.schema, { a = { b = { type = 'number', default = 'x' } } }))
    end)

    it('merges spec tables: b wins, a field of b may change only some attributes', function()
      local a = { train = { iterations = { type = 'integer', default = 5, min = 1, doc = 'n' } }, x = { y = { type = 'any' } } }
      local b = { train = { iterations = { default = 50 }, lr = { type = 'number' } }, x = { type = 'string' } }
      local m = config.merge(a, b)
      assert.are.same({ type = 'integer', default = 50, min = 1, doc = 'n' }, m.train.iterations)
      assert.are.same({ type = 'number' }, m.train.lr)
      assert.are.same({ type = 'string' }, m.x)
      assert.are.equal(5, a.train.iterations.default) -- inputs untouched
      assert.is_nil(a.train.lr)
    end)

    it('gives every recipe the same common keys', function()
      local c = config.common()
      assert.are.equal('integer', c.run.seed.type)
      assert.are.equal(0, c.run.seed.default)
      assert.is_true(c.run.dir.optional)
      assert.are.equal(3, c.checkpoint.keep.default)
      assert.are.equal(1, c.train.iterations.min)
      assert.are_not.equal(config.common(), c) -- a fresh table each time
    end)
  end)

  describe('resolve', function()
    it('fills defaults, creates every section and checks nothing is missing', function()
      local cfg = resolve()
      assert.are.equal(0, cfg.run.seed)
      assert.are.equal(1e-4, cfg.train.lr)
      assert.are.equal('mean', cfg.train.loss_reduction)
      assert.are.same({ 'a cat' }, cfg.sample.prompts)
      assert.is_nil(cfg.run.dir)
      cfg.sample.prompts[1] = 'changed'
      assert.are.same({ 'a cat' }, resolve().sample.prompts) -- defaults are copied, not shared
    end)

    it('applies layers in order: defaults < recipe < config file < --set', function()
      local recipe = { train = { lr = 0.1, iterations = 7 }, run = { seed = 1 } }
      local file = { train = { lr = 0.2 }, sample = { steps = 9 } }
      local cfg = resolve(recipe, file, sets('train.lr=0.3'))
      assert.are.equal(0.3, cfg.train.lr)
      assert.are.equal(7, cfg.train.iterations)
      assert.are.equal(9, cfg.sample.steps)
      assert.are.equal(1, cfg.run.seed)
      assert.are.equal(0.2, resolve(recipe, file).train.lr)
      assert.are.equal(0.1, resolve(file, recipe).train.lr)
      assert.are.equal(0.1, resolve(nil, recipe, nil).train.lr) -- nil layers are skipped
    end)

    it('accepts dotted keys in a layer table and does not change the layers', function()
      local layer = { ['train.lr'] = 0.5, sample = { ['prompts'] = { 'x', 'y' } } }
      local cfg = resolve(layer)
      assert.are.equal(0.5, cfg.train.lr)
      cfg.sample.prompts[1] = 'z'
      assert.are.same({ 'x', 'y' }, layer.sample.prompts)
    end)

    it('checks only the final value: a later layer may repair an earlier one', function()
      assert.are.equal(0.5, resolve({ train = { lr = -1 } }, { train = { lr = 0.5 } }).train.lr)
    end)

    it('names an unknown key and suggests the nearest valid one', function()
      assert.are.equal("config: unknown key 'train.iteratons' (did you mean 'train.iterations'?)",
                       err(resolve, { train = { iteratons = 5 } }))
      assert.are.equal("config: unknown key 'train.iteratons' (did you mean 'train.iterations'?)",
                       err(resolve, sets('train.iteratons=5')))
      assert.are.equal("config: unknown key 'wibble'", err(resolve, { wibble = { wobble = 1 } }))
      assert.are.equal("config: unknown key 'train.wobble'", err(resolve, { train = { wobble = 1 } }))
    end)

    it('suggests well: typos, a misspelt section, a key under the wrong section', function()
      local cases = {
        ['trian.lr'] = 'train.lr', ['train.lrr'] = 'train.lr', ['sample.batchsize'] = 'sample.batch_size',
        ['sampel.steps'] = 'sample.steps', ['chekpoint.every'] = 'checkpoint.every',
        ['model.pth'] = 'model.path', ['run.sed'] = 'run.seed', trian = 'train',
        ['train.loss_reductoin'] = 'train.loss_reduction',
        ['train.batch_size'] = 'sample.batch_size', seed = 'run.seed', -- same last name
      }
      for typo, want in pairs(cases) do assert.are.equal(want, config.suggest(schema, typo), typo) end
      -- too far away (distance > max(2, #key/3)) and no field of that name: no guess
      assert.is_nil(config.suggest(schema, 'train.momentum'))
      assert.is_nil(config.suggest(schema, 'zz'))
      assert.are.equal(3, config.levenshtein('kitten', 'sitting'))
    end)

    it('names the key, the expected type and the value given', function()
      assert.are.equal('config: train.iterations: expected an integer, got 1.5',
                       err(resolve, { train = { iterations = 1.5 } }))
      assert.are.equal("config: train.lr: expected a number, got '0.1' (a string)",
                       err(resolve, { train = { lr = '0.1' } }))
      assert.are.equal("config: train.ema: expected a boolean, got 'yes' (a string)",
                       err(resolve, { train = { ema = 'yes' } }))
      assert.are.equal('config: sample.prompts: expected a list of strings, got a table',
                       err(resolve, { sample = { prompts = { a = 1 } } }))
      assert.are.equal('config: sample.prompts[2]: expected a string, got 5',
                       err(resolve, { sample = { prompts = { 'a', 5 } } }))
      assert.are.equal('config: sample.hook: expected a function, got true',
                       err(resolve, { sample = { hook = true } }))
      assert.are.equal("config: 'train' is a section: expected a table, got 5", err(resolve, { train = 5 }))
    end)

    it('names the key, the bound and the value out of range', function()
      assert.are.equal('config: train.lr: must be >= 0, got -0.5', err(resolve, { train = { lr = -0.5 } }))
      assert.are.equal('config: train.lr: must be <= 1, got 2', err(resolve, { train = { lr = 2 } }))
      assert.are.equal('config: sample.batch_size: must be >= 1, got 0',
                       err(resolve, { sample = { batch_size = 0 } }))
    end)

    it('lists the choices', function()
      assert.are.equal("config: train.loss_reduction: expected one of 'mean', 'sum', got 'avg'",
                       err(resolve, { train = { loss_reduction = 'avg' } }))
    end)

    it('names a missing required key and says what it is', function()
      assert.are.equal("config: missing required key 'model.path': diffusers model folder " ..
                       '(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)',
                       err(config.resolve, schema, { sample = { batch_size = 1, steps = 1 },
                                                     checkpoint = { every = 1 } }))
    end)

    it('keeps objects and functions as given, copies plain tables', function()
      local obj = setmetatable({}, {})
      local fn = function() end
      local cfg = resolve { sample = { anything = obj, hook = fn, extra = { a = { 1 } } } }
      assert.are.equal(obj, cfg.sample.anything)
      assert.are.equal(fn, cfg.sample.hook)
      assert.are.same({ a = { 1 } }, cfg.sample.extra)
    end)
  end)

  describe('command line', function()
    it('parses every form of --config, --resume and --set', function()
      local a = config.parse_args { '--config', 'c.lua', '--resume=runs/x', '--set', 'train.lr=0.1',
                                    '--set=run.seed=3', 'sample.name=a=b', '--', '--set', 'x' }
      assert.are.equal('c.lua', a.config_file)
      assert.are.equal('runs/x', a.resume)
      assert.is_false(a.help)
      assert.are.same({ { key = 'train.lr', value = '0.1', text = 'train.lr=0.1' },
                        { key = 'run.seed', value = '3', text = 'run.seed=3' },
                        { key = 'sample.name', value = 'a=b', text = 'sample.name=a=b' } }, a.sets)
      assert.are.same({ '--set', 'x' }, a.rest)
      local b = config.parse_args { '--config=d.lua', '--resume', 'r', '-h' }
      assert.are.equal('d.lua', b.config_file)
      assert.are.equal('r', b.resume)
      assert.is_true(b.help)
      assert.is_true(config.parse_args({ '--help' }).help)
      assert.are.same({}, config.parse_args({}).sets)
    end)

    it('rejects anything else by name', function()
      assert.truthy(err(config.parse_args, { '--frobnicate' }):find("config: unknown argument '--frobnicate'", 1, true))
      assert.truthy(err(config.parse_args, { 'recipe.lua' }):find("config: unknown argument 'recipe.lua'", 1, true))
      assert.are.equal('config: --config needs a value', err(config.parse_args, { '--config' }))
      assert.are.equal("config: --set needs KEY=VALUE, got 'train.lr'", err(config.parse_args, { '--set', 'train.lr' }))
      assert.are.equal('config: --config given twice', err(config.parse_args, { '--config=a', '--config=b' }))
      assert.are.equal('config: --resume given twice', err(config.parse_args, { '--resume=a', '--resume=b' }))
    end)

    it('parses integers and numbers by the field type', function()
      local cfg = resolve(sets('train.iterations=12', 'run.seed=-3', 'train.lr=1e-4', 'sample.steps=1e2'))
      assert.are.equal(12, cfg.train.iterations)
      assert.are.equal(-3, cfg.run.seed)
      assert.are.equal(1e-4, cfg.train.lr)
      assert.are.equal(100, cfg.sample.steps)
      assert.are.equal("config: train.iterations: expected an integer, got '1.5' (from 'train.iterations=1.5')",
                       err(resolve, sets('train.iterations=1.5')))
      assert.are.equal("config: train.lr: expected a number, got 'fast' (from 'train.lr=fast')",
                       err(resolve, sets('train.lr=fast')))
      assert.are.equal("config: train.lr: expected a number, got '' (from 'train.lr=')", err(resolve, sets('train.lr=')))
      assert.are.equal('config: train.lr: must be <= 1, got 3', err(resolve, sets('train.lr=3')))
    end)

    it('parses booleans as true/false/1/0/yes/no', function()
      for text, want in pairs { ['true'] = true, ['false'] = false, ['1'] = true, ['0'] = false,
                                yes = true, no = false, YES = true } do
        assert.are.equal(want, resolve(sets('train.ema=' .. text)).train.ema, text)
      end
      assert.are.equal("config: train.ema: expected a boolean, got 'maybe' (from 'train.ema=maybe')",
                       err(resolve, sets('train.ema=maybe')))
    end)

    it('takes strings as they are', function()
      assert.are.equal(' a "cat", = 1 ', resolve(sets('sample.name= a "cat", = 1 ')).sample.name)
      assert.are.equal('', resolve(sets('sample.name=')).sample.name)
      assert.are.equal('mean', resolve(sets('train.loss_reduction=mean')).train.loss_reduction)
    end)

    it('parses lists as comma-separated words or a Lua literal', function()
      assert.are.same({ 'a cat', 'a dog' }, resolve(sets('sample.prompts=a cat, a dog')).sample.prompts)
      assert.are.same({}, resolve(sets('sample.prompts=')).sample.prompts)
      assert.are.same({ 'x, y', 'z' }, resolve(sets('sample.prompts={ "x, y", [[z]] }')).sample.prompts)
      assert.are.same({ 64, 128 }, resolve(sets('sample.sizes=64,128')).sample.sizes)
      assert.are.same({ 64, -1 }, resolve(sets('sample.sizes={64, -1}')).sample.sizes)
      assert.are.equal("config: sample.sizes[2]: expected an integer, got '1.5' (from 'sample.sizes=1,1.5')",
                       err(resolve, sets('sample.sizes=1,1.5')))
      assert.are.equal('config: sample.prompts[1]: expected a string, got 1',
                       err(resolve, sets('sample.prompts={1}')))
    end)

    it('parses tables and any-values as Lua literals', function()
      assert.are.same({ a = 1, b = { 'x', true }, ['c d'] = -2.5 },
                      resolve(sets('sample.extra={ a = 1, b = { "x", true }, ["c d"] = -2.5 }')).sample.extra)
      assert.are.equal(0.5, resolve(sets('sample.anything=0.5')).sample.anything)
      assert.are.same({ 1 }, resolve(sets('sample.anything={1}')).sample.anything)
      assert.are.equal('hello world', resolve(sets('sample.anything=hello world')).sample.anything)
      -- a key inside a free-form table
      assert.are.same({ depth = 3 }, resolve(sets('sample.extra.depth=3')).sample.extra)
      assert.are.equal("config: sample.hook is a function; it cannot be set from the command line " ..
                       "(from 'sample.hook=print')", err(resolve, sets('sample.hook=print')))
    end)

    it('never runs a literal: calls, names and expressions are refused', function()
      local before = rawget(_G, 'PWNED')
      for _, text in ipairs { '{ os.execute("touch /tmp/pwned") }', '(function() PWNED = 1 end)()',
                              '("x"):rep(1e9)', '{ a = print }', '{ 1 + 1 }', '{ x = nil }',
                              'os.exit(1)', '{ [f()] = 1 }', '{ 1, 2' } do
        local msg = err(config.parse_literal, text)
        assert.truthy(msg:find('config: cannot read ', 1, true), msg)
      end
      assert.are.equal(before, rawget(_G, 'PWNED'))
      assert.truthy(err(resolve, sets('sample.extra={ f = io.open }')):find('found \'io.open\'', 1, true))
      assert.are.same({ 1, 0x10, -3e2, 'a\n"b"', { k = false } },
                      config.parse_literal(' { 1, 0x10; -3e2, "a\\n\\"b\\"", -- note\n { k = false }, } '))
    end)

    it('turns one override into a layer (layer_from_set)', function()
      local s = config.parse_args({ 'train.iterations=9' }).sets[1]
      assert.are.same({ ['train.iterations'] = 9 }, config.layer_from_set(schema, s))
      assert.are.equal(9, resolve(config.layer_from_set(schema, s)).train.iterations)
      assert.are.equal(4, resolve(config.overrides { 'train.iterations=4' }).train.iterations)
    end)

    it('from_cli: defaults < recipe < --config file < --set, and --resume passed through', function()
      local path = h.temp_file('return { train = { lr = 0.25, iterations = 3 } }', '.lua')
      local cfg, args = config.from_cli(schema, { '--config', path, 'train.iterations=4', '--resume', 'runs/a' },
                                        { model = { path = 'm' }, sample = { batch_size = 1, steps = 2 },
                                          checkpoint = { every = 5 }, train = { lr = 0.5 } })
      os.remove(path)
      assert.are.equal(0.25, cfg.train.lr)
      assert.are.equal(4, cfg.train.iterations)
      assert.are.equal('m', cfg.model.path)
      assert.are.equal('runs/a', args.resume)
      local none, help = config.from_cli(schema, { '--help' })
      assert.is_nil(none)
      assert.is_true(help.help)
    end)
  end)

  describe('config files', function()
    local function with_file(text, f)
      local path = h.temp_file(text, '.lua')
      local ok, e = pcall(f, path)
      os.remove(path)
      if not ok then error(e, 0) end
    end

    it('reads a Lua file returning a table, with math/string/table at hand', function()
      with_file('local n = 4\nreturn { train = { iterations = n * 2, lr = math.sqrt(4) / 10 }, ' ..
                'name = ("%d"):format(3) .. string.upper("x") }', function(path)
        assert.are.same({ train = { iterations = 8, lr = 0.2 }, name = '3X' }, config.load_file(path))
      end)
    end)

    it('runs sandboxed: no os, io, require or load', function()
      with_file('local x = 1\nos.execute("touch /tmp/diffrl-config-pwned")\nreturn {}', function(path)
        assert.are.equal(('config: %s:2: attempt to index global \'os\' (a nil value)'):format(path),
                         err(config.load_file, path))
      end)
      for _, body in ipairs { 'io.open("/etc/passwd")', 'require("os")', 'loadstring("return 1")()',
                              'dofile("/dev/null")', 'debug.getinfo(1)', 'getmetatable("")' } do
        with_file('return ' .. body, function(path)
          assert.truthy(err(config.load_file, path):find(h.escape_pattern(path) .. ':1: attempt to'), body)
        end)
      end
    end)

    it('names the file and line of syntax and runtime errors', function()
      with_file('return {\n  a = 1,\n  b = = 2,\n}', function(path)
        assert.truthy(err(config.load_file, path):find('^config: ' .. h.escape_pattern(path) .. ':3: '))
      end)
      with_file('\n\nerror("no model here")', function(path)
        assert.are.equal(('config: %s:3: no model here'):format(path), err(config.load_file, path))
      end)
      with_file('return 5', function(path)
        assert.are.equal(('config: %s: expected the file to return a table, got 5'):format(path),
                         err(config.load_file, path))
      end)
      assert.truthy(err(config.load_file, '/nonexistent/x.lua'):find('^config: cannot open /nonexistent/x.lua'))
    end)
  end)

  describe('serialize', function()
    local function round_trip(t)
      local path = h.temp_file(config.serialize(t), '.lua')
      local ok, back = pcall(config.load_file, path)
      os.remove(path)
      assert(ok, back)
      return back
    end

    it('writes sorted keys and reads back an equal table', function()
      local t = {
        train = { lr = 2e-6, iterations = 1000, betas = { 0.9, 0.999 } },
        sample = { prompts = { 'a "cat"', "it's\nmultiline\\\n", 'tab\there', 'nul\0byte', '' } },
        numbers = { -7, 0.1, 1 / 3, -2.5e-300, 2 ^ 53, 2 ^ 53 + 2, -2 ^ 60, 1e300, 123456789012345, math.huge,
                    -math.huge, 5e-324 },
        flags = { on = true, off = false },
        ['not an identifier'] = 1, ['end'] = 'keyword', [7] = 'sparse', [-1] = 'negative', [1.5] = 'float key',
        nested = { a = { b = { c = { d = {} } } } },
        mixed = { 'one', 'two', x = 'y' },
        many = h.list(20, function(i) return i * 0.5 end),
      }
      local back = round_trip(t)
      assert.are.same(t, back)
      for i, v in ipairs(t.numbers) do assert.are.equal(v, back.numbers[i], i) end -- exact, not close
      assert.are.equal(config.serialize(t), config.serialize(back))
      local text = config.serialize { b = 1, a = 2, c = { z = 1, y = 2 } }
      assert.are.equal('return {\n  a = 2,\n  b = 1,\n  c = {\n    y = 2,\n    z = 1,\n  },\n}\n', text)
    end)

    it('keeps -0, NaN and integers beyond 2^53 exactly', function()
      local back = round_trip { z = -0.0, n = 0 / 0, big = 2 ^ 63, odd = 2 ^ 53 - 1 }
      assert.are.equal(-math.huge, 1 / back.z)
      assert.is_true(back.n ~= back.n)
      assert.are.equal(2 ^ 63, back.big)
      assert.are.equal(2 ^ 53 - 1, back.odd)
      assert.truthy(config.serialize({ x = 2 ^ 53 - 1 }):find('x = 9007199254740991,', 1, true))
    end)

    it('round-trips a resolved config, and writes a header', function()
      local cfg = resolve { run = { dir = 'runs/x' }, train = { lr = 3e-5 } }
      assert.are.same(cfg, round_trip(cfg))
      local text = config.serialize(cfg, { header = 'diffrl run\ngit abc123' })
      assert.truthy(text:find('^%-%- diffrl run\n%-%- git abc123\nreturn {'))
    end)

    it('refuses what it cannot write back', function()
      assert.are.equal('config: serialize: sample.hook: cannot write a function',
                       err(config.serialize, { sample = { hook = print } }))
      local loop = {}
      loop.self = loop
      assert.are.equal('config: serialize: self: the table contains itself', err(config.serialize, loop))
      local text = config.serialize({ a = 1, hook = print }, { skip_functions = true })
      assert.truthy(text:find('-- hook = <function, not saved>', 1, true))
      assert.are.same({ a = 1 }, round_trip({ a = 1 }))
    end)
  end)

  describe('helpers', function()
    it('gets and sets dotted paths', function()
      local t = {}
      config.set(t, 'a.b.c', 5)
      assert.are.same({ a = { b = { c = 5 } } }, t)
      assert.are.equal(5, config.get(t, 'a.b.c'))
      assert.is_nil(config.get(t, 'a.x.c'))
      assert.is_nil(config.get(t, 'a.b.c.d'))
      assert.are.equal("config: cannot set 'a.b.c.d': 'a.b.c' is 5, not a table", err(config.set, t, 'a.b.c.d', 1))
      assert.are.equal("config: malformed key 'a..b'", err(config.get, t, 'a..b'))
    end)

    it('lists every key with its type, default and doc', function()
      local text = config.help(schema)
      for _, path in ipairs(schema.paths) do assert.truthy(text:find('  ' .. path .. ' ', 1, true), path) end
      assert.truthy(text:find('train%.lr +number +%= 0%.0001  >= 0  <= 1\n +AdamW step size'), text)
      assert.truthy(text:find('model%.path +string +%(required%)'), text)
      assert.truthy(text:find("one of 'mean', 'sum'", 1, true))
      assert.truthy(text:find('--set KEY=VALUE', 1, true))
      local bare = config.help(schema, { options = false })
      assert.truthy(bare:find('^  checkpoint%.every'), bare)
    end)
  end)

  describe('the RL schema and configs/imagereward.lua', function()
    local rl_schema = require 'diffrl.rl.schema'

    it('resolves the paper settings without error', function()
      local cfg = config.resolve(rl_schema, config.load_file(ROOT .. '/configs/imagereward.lua'))
      assert.are.equal(2e-6, cfg.train.lr)
      assert.are.same({ 0.9, 0.999, 1e-8, 1e-2 },
                      { cfg.train.adam_beta1, cfg.train.adam_beta2, cfg.train.adam_eps, cfg.train.weight_decay })
      assert.are.same({ 50, 1.0, 7.0, 512, 16 },
                      { cfg.sample.steps, cfg.sample.eta, cfg.sample.guidance, cfg.sample.resolution, cfg.sample.batch_size })
      assert.are.same({ 5, 1e-4, 10 }, { cfg.train.timestep_count, cfg.train.clip_range, cfg.train.adv_clip_max })
      assert.are.equal(200, cfg.checkpoint.every)
      assert.are.equal(0, cfg.lora.rank)
      assert.is_false(cfg.train.use_ema)
      assert.is_true(cfg.train.gradient_checkpointing)
      assert.are.equal('constant', cfg.train.lr_schedule)
    end)

    it('documents each key with the official YAML key it maps to', function()
      for _, key in ipairs { 'max_iterations', 'learning_rate', 'n_train_steps', 'n_inference_steps',
                             'guidance_scale', 'ADV_CLIP_MAX', 'clip_range', 'save_interval', 'use_ema' } do
        assert.truthy(config.help(rl_schema):find('YAML: ' .. key, 1, true), key)
      end
      for _, path in ipairs(rl_schema.paths) do assert.is_string(rl_schema.fields[path].doc, path) end
    end)
  end)
end)
