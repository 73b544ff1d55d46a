-- `diffrl convert`: a PyTorch checkpoint (torch.save zip) to a safetensors file,
-- through the restricted unpickler (nothing in the checkpoint is executed).
local M = {}

M.usage = [[
Usage: diffrl convert IN.pt OUT.safetensors [--key NAME | --all]

Reads a PyTorch checkpoint written by torch.save (torch >= 1.6 zip format) with
diffrl's restricted unpickler, which builds only tensors and plain containers (a
checkpoint that pickles any other class is refused, naming it), and writes its
tensors to a safetensors file (atomically). Nested keys are joined with '.', as
state_dict keys are; strided and shared tensors are written contiguous; float64
becomes float32 and int16 / int8 int32. Non-tensor values (epoch, lr, ...) are
left out and listed.

Options:
  --key NAME   convert only the sub-dict NAME ('model', 'state_dict', ...), its
               prefix stripped. Default: a checkpoint whose tensors all live under
               'state_dict' gives that state dict, anything else is written whole.
  --all        the whole checkpoint, even when it has a 'state_dict'.]]

local function usage_error(msg)
  io.stderr:write('diffrl convert: ', msg, "\nTry 'diffrl convert --help'.\n")
  return 2
end

function M.parse(args)
  local o, files = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == '--key' then
      i = i + 1
      if args[i] == nil or args[i] == '' then return nil, 'option --key needs a value' end
      o.key = args[i]
    elseif a:match('^%-%-key=') then
      o.key = a:sub(7)
      if o.key == '' then return nil, 'option --key needs a value' end
    elseif a == '--all' then
      o.all = true
    elseif a:sub(1, 1) == '-' and a ~= '-' then
      return nil, ("unknown option '%s'"):format(a)
    else
      files[#files + 1] = a
    end
    i = i + 1
  end
  if #files ~= 2 then
    return nil, ('expected IN.pt and OUT.safetensors, got %d file argument%s'):format(#files,
      #files == 1 and '' or 's')
  end
  if o.key and o.all then return nil, '--key and --all exclude each other' end
  o.input, o.output = files[1], files[2]
  return o
end

function M.run(args)
  local o, err = M.parse(args)
  if not o then return usage_error(err) end
  local dr = require 'diffrl'
  local key = o.key
  if o.all then key = false end
  local ok, tensors, values = pcall(dr.torch_load, o.input, { key = key })
  if not ok then
    io.stderr:write('diffrl convert: ', tostring(tensors), '\n')
    return 1
  end
  local n, numel = 0, 0
  for _, t in pairs(tensors) do
    n, numel = n + 1, numel + t:numel()
  end
  if n == 0 then
    io.stderr:write(('diffrl convert: %s holds no tensors\n'):format(o.input))
    return 1
  end
  local skipped = {}
  for k in pairs(values) do skipped[#skipped + 1] = k end
  table.sort(skipped)
  local saved, serr = pcall(dr.save, o.output, tensors, { metadata = { format = 'pt' } })
  if not saved then
    io.stderr:write('diffrl convert: ', tostring(serr), '\n')
    return 1
  end
  io.write(('%s: %d tensors, %d elements -> %s\n'):format(o.input, n, numel, o.output))
  if #skipped > 0 then
    io.write(('left out %d non-tensor value%s: %s\n'):format(#skipped, #skipped == 1 and '' or 's',
      table.concat(skipped, ', ', 1, math.min(#skipped, 20)) .. (#skipped > 20 and ', ...' or '')))
  end
  return 0
end

return M
