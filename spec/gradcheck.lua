-- gradcheck(f, inputs[, {h=, atol=, rtol=}]): the gradients the tape gives for
-- sum(f(inputs...) * R) (R random) match central finite differences, element by
-- element, in float32 (h = 1e-2 by default; tolerances sized for that). Raises
-- an assertion naming the input and element on a mismatch. Load with
--   local gradcheck = dofile((os.getenv('DIFFRL_SOURCE_DIR') or '.') .. '/spec/gradcheck.lua')
local dr = require 'diffrl'

local function gradcheck(f, inputs, opts)
  opts = opts or {}
  local h, atol, rtol = opts.h or 1e-2, opts.atol or 2e-2, opts.rtol or 2e-2
  for _, x in ipairs(inputs) do x:requires_grad_(); x.grad = nil end
  local out = f(unpack(inputs))
  local r = dr.randn(out.shape, { generator = dr.Generator(7) })
  local function loss() return (f(unpack(inputs)) * r):sum():item() end
  ;(out * r):sum():backward()
  for k, x in ipairs(inputs) do
    local analytic = x.grad:contiguous():view(-1):tolist()
    local flat = x:view(-1)
    for i = 1, x:numel() do
      local keep = flat[i]:item()
      local plus, minus
      dr.no_grad(function()
        flat[i] = keep + h; plus = loss()
        flat[i] = keep - h; minus = loss()
        flat[i] = keep
      end)
      local numeric = (plus - minus) / (2 * h)
      local err = math.abs(numeric - analytic[i])
      assert(err <= atol + rtol * math.abs(numeric),
        ('input %d element %d: analytic %.6g, numeric %.6g'):format(k, i, analytic[i], numeric))
    end
  end
end

return gradcheck
