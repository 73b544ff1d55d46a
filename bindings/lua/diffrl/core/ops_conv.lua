-- diffrl.core.ops_conv: convolution and resampling, as torch.nn.functional
-- spells them (conv2d, interpolate, avg_pool2d), plus their explicit backward
-- functions. Sizes are scalars or {h, w} pairs; 3-D inputs [C, H, W] are one
-- unbatched image, as in torch.
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'

local C, raise = api.C, api.raise
local take, out_box, is_tensor = T.take, T.out_box, T.is_tensor

local M = {}

local bufs = {} -- one int64_t[2] per argument slot, reused across calls
for _, k in ipairs { 'stride', 'padding', 'dilation', 'kernel_size', 'scale_factor' } do
  bufs[k] = ffi.new('int64_t[2]')
end
local grads_box = ffi.new('dr_tensor*[3]')

local function is_int(x)
  return type(x) == 'number' and x % 1 == 0 and math.abs(x) < 2 ^ 53
end

local function describe(v)
  if type(v) == 'string' then return ("'%s'"):format(v) end
  if type(v) ~= 'table' then return tostring(v) end
  local parts = {}
  for i = 1, #v do parts[i] = describe(v[i]) end
  if #parts == 0 and next(v) ~= nil then return 'a table with no list part' end
  return '{' .. table.concat(parts, ', ') .. '}'
end

local function shape_str(t) return '[' .. table.concat(t:size(), ', ') .. ']' end

local function tensor_arg(op, name, t)
  if not is_tensor(t) then raise(('%s: %s must be a tensor, got %s'):format(op, name, type(t))) end
  return t
end

-- A torch int-or-pair argument (2 or {2, 3}) in the int64_t[2] for `name`.
local function pair(op, name, v)
  local buf = bufs[name]
  if is_int(v) then
    buf[0], buf[1] = v, v
  elseif type(v) == 'table' and #v == 2 and is_int(v[1]) and is_int(v[2]) then
    buf[0], buf[1] = v[1], v[2]
  else
    raise(('%s: %s must be an integer or a pair {h, w} of integers, got %s')
      :format(op, name, describe(v)))
  end
  return buf
end

-- Options table or nil; any key outside `known` is an error naming it.
local function options(op, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= 'table' then
    raise(('%s: options must be a table, got %s'):format(op, type(opts)))
  end
  for k in pairs(opts) do
    if not known[k] then raise(("%s: unknown option '%s'"):format(op, tostring(k))) end
  end
  return opts
end

-- An options table has no list part; a pair like {2, 2} is a positional size.
local function is_options(v) return type(v) == 'table' and v[1] == nil end

-- Runs f(batched input) on a 3-D input as a batch of one, dropping that dim again.
local function unbatched(op, input, f)
  local nd = input:dim()
  if nd == 4 then return f(input) end
  if nd ~= 3 then
    raise(('%s: expected a 3-D [C, H, W] or 4-D [N, C, H, W] input, got %s')
      :format(op, shape_str(input)))
  end
  local s = input:size()
  local r = f(input:reshape(1, s[1], s[2], s[3]))
  local rs = r:size()
  return r:reshape(rs[2], rs[3], rs[4])
end

-- ---- conv2d -----------------------------------------------------------------------

local CONV_KEYS = { stride = true, padding = true, dilation = true, groups = true }

-- conv2d's keyword arguments from a table or torch's positional order.
local function conv_options(op, a, ...)
  if is_options(a) and select('#', ...) == 0 then return options(op, a, CONV_KEYS) end
  local padding, dilation, groups = ...
  return { stride = a, padding = padding, dilation = dilation, groups = groups }
end

-- padding='valid'|'same' (torch), or an int or pair.
local function conv_padding(op, o, weight)
  local p = o.padding == nil and 0 or o.padding
  if p == 'valid' then return pair(op, 'padding', 0) end
  if p ~= 'same' then return pair(op, 'padding', p) end
  local s = o.stride == nil and 1 or o.stride
  if not (s == 1 or (type(s) == 'table' and s[1] == 1 and s[2] == 1)) then
    raise(("%s: padding='same' is not supported for strided convolutions"):format(op))
  end
  local d = pair(op, 'dilation', o.dilation == nil and 1 or o.dilation)
  local buf = bufs.padding
  for i = 0, 1 do
    local k = weight.ptr.ndim == 4 and tonumber(weight.ptr.sizes[2 + i]) or 1
    local total = tonumber(d[i]) * (k - 1)
    if total % 2 ~= 0 then
      raise(("%s: padding='same' with kernel %s and dilation %s needs uneven padding, which "
        .. "is not supported; pass padding explicitly"):format(op, describe(weight:size()),
        describe(o.dilation == nil and 1 or o.dilation)))
    end
    buf[i] = total / 2
  end
  return buf
end

local function conv_groups(op, o)
  local groups = o.groups == nil and 1 or o.groups
  if not is_int(groups) then
    raise(('%s: groups must be an integer, got %s'):format(op, describe(groups)))
  end
  return groups
end

-- dr.conv2d(input, weight[, bias][, {stride=, padding=, dilation=, groups=}])
-- or torch's positional conv2d(input, weight, bias, stride, padding, dilation, groups).
function M.conv2d(input, weight, bias, ...)
  if is_options(bias) and select('#', ...) == 0 then -- conv2d(x, w, {stride=2})
    return M.conv2d(input, weight, nil, bias)
  end
  local op = 'conv2d'
  tensor_arg(op, 'input', input)
  tensor_arg(op, 'weight', weight)
  if bias ~= nil then tensor_arg(op, 'bias', bias) end
  local o = conv_options(op, ...)
  local padding = conv_padding(op, o, weight)
  local stride = pair(op, 'stride', o.stride == nil and 1 or o.stride)
  local dilation = pair(op, 'dilation', o.dilation == nil and 1 or o.dilation)
  local groups = conv_groups(op, o)
  return unbatched(op, input, function(x)
    return take(C.dr_conv2d(x.ptr, weight.ptr, bias and bias.ptr or nil, stride, padding,
                            dilation, groups, out_box))
  end)
end

local function take_grads(status, n)
  if status ~= 0 then raise(ffi.string(C.dr_last_error())) end
  local r = {}
  for i = 1, n do
    out_box[0] = grads_box[i - 1]
    r[i] = take(0)
  end
  return unpack(r, 1, n)
end

-- grad_input, grad_weight, grad_bias = dr.conv2d_backward(grad_out, input, weight[, opts])
-- with conv2d's options; 4-D tensors.
function M.conv2d_backward(grad_out, input, weight, ...)
  local op = 'conv2d_backward'
  tensor_arg(op, 'grad_out', grad_out)
  tensor_arg(op, 'input', input)
  tensor_arg(op, 'weight', weight)
  local o = conv_options(op, ...)
  local padding = conv_padding(op, o, weight)
  local stride = pair(op, 'stride', o.stride == nil and 1 or o.stride)
  local dilation = pair(op, 'dilation', o.dilation == nil and 1 or o.dilation)
  local groups = conv_groups(op, o)
  return take_grads(C.dr_conv2d_backward(grad_out.ptr, input.ptr, weight.ptr, stride, padding,
                                         dilation, groups, grads_box, grads_box + 1,
                                         grads_box + 2), 3)
end

-- ---- interpolate (nearest, integer scale factors) ----------------------------------

local INTERP_KEYS = { size = true, scale_factor = true, mode = true, align_corners = true,
                      recompute_scale_factor = true, antialias = true }

-- The integer scale pair of interpolate's size or scale_factor option.
local function interp_scales(o, input)
  local op = 'interpolate'
  if (o.size == nil) == (o.scale_factor == nil) then
    raise('interpolate: give exactly one of size and scale_factor')
  end
  local sizes = input:size()
  local h, w = sizes[#sizes - 1], sizes[#sizes]
  if o.scale_factor ~= nil then
    local f = o.scale_factor
    local fh, fw = f, f
    if type(f) == 'table' and #f == 2 then fh, fw = f[1], f[2] end
    if not (is_int(fh) and is_int(fw) and fh >= 1 and fw >= 1) then
      raise(("interpolate: scale_factor %s is not supported: only positive integer scale "
        .. "factors (mode='nearest')"):format(describe(f)))
    end
    return fh, fw
  end
  local s = o.size
  local sh, sw = s, s
  if type(s) == 'table' and #s == 2 then sh, sw = s[1], s[2] end
  if not (is_int(sh) and is_int(sw) and sh >= h and sw >= w and sh % math.max(h, 1) == 0
          and sw % math.max(w, 1) == 0 and h > 0 and w > 0) then
    raise(("%s: size %s is not a whole multiple of the input's %dx%d; only integer scale "
      .. "factors are supported (mode='nearest')"):format(op, describe(s), h, w))
  end
  return sh / h, sw / w
end

-- dr.interpolate(input, {size= | scale_factor=, mode='nearest'}) or torch's positional
-- interpolate(input, size, scale_factor, mode).
function M.interpolate(input, a, ...)
  local op = 'interpolate'
  tensor_arg(op, 'input', input)
  local o
  if is_options(a) and select('#', ...) == 0 then
    o = options(op, a, INTERP_KEYS)
  else
    local scale_factor, mode, align_corners, recompute, antialias = ...
    o = { size = a, scale_factor = scale_factor, mode = mode, align_corners = align_corners,
          recompute_scale_factor = recompute, antialias = antialias }
  end
  local mode = o.mode == nil and 'nearest' or o.mode
  if mode ~= 'nearest' then
    raise(("interpolate: mode %s is not supported; only mode='nearest' with an integer "
      .. "scale_factor"):format(describe(mode)))
  end
  if o.align_corners ~= nil then
    raise("interpolate: align_corners can only be set with the linear modes, not mode='nearest'")
  end
  if o.antialias then raise("interpolate: antialias=true is not supported for mode='nearest'") end
  if input:dim() ~= 4 then
    raise(('interpolate: only 4-D input [N, C, H, W] is supported (2-D nearest), got %s')
      :format(shape_str(input)))
  end
  local sh, sw = interp_scales(o, input)
  return take(C.dr_upsample_nearest2d(input.ptr, sh, sw, out_box))
end

-- dr.upsample_nearest2d_backward(grad_out, scale_factor): sums each block.
function M.upsample_nearest2d_backward(grad_out, scale_factor)
  local op = 'upsample_nearest2d_backward'
  tensor_arg(op, 'grad_out', grad_out)
  local s = pair(op, 'scale_factor', scale_factor)
  return take(C.dr_upsample_nearest2d_backward(grad_out.ptr, s[0], s[1], out_box))
end

-- ---- avg_pool2d -------------------------------------------------------------------------

local POOL_KEYS = { stride = true, padding = true, ceil_mode = true, count_include_pad = true,
                    divisor_override = true }

local function pool_options(op, a, ...)
  if is_options(a) and select('#', ...) == 0 then return options(op, a, POOL_KEYS) end
  local padding, ceil_mode, count_include_pad, divisor_override = ...
  return { stride = a, padding = padding, ceil_mode = ceil_mode,
           count_include_pad = count_include_pad, divisor_override = divisor_override }
end

-- The kernel, stride and padding buffers of avg_pool2d's arguments.
local function pool_args(op, kernel_size, o)
  if o.ceil_mode then raise(op .. ': ceil_mode=true is not supported') end
  if o.count_include_pad == false then
    raise(op .. ': count_include_pad=false is not supported')
  end
  if o.divisor_override ~= nil then raise(op .. ': divisor_override is not supported') end
  local stride = o.stride
  if stride == nil or (type(stride) == 'table' and next(stride) == nil) then -- torch: None or []
    stride = kernel_size
  end
  return pair(op, 'kernel_size', kernel_size), pair(op, 'stride', stride),
         pair(op, 'padding', o.padding == nil and 0 or o.padding)
end

-- dr.avg_pool2d(input, kernel_size[, stride[, padding]]) or
-- dr.avg_pool2d(input, kernel_size, {stride=, padding=}); stride defaults to kernel_size.
function M.avg_pool2d(input, kernel_size, ...)
  local op = 'avg_pool2d'
  tensor_arg(op, 'input', input)
  local k, s, p = pool_args(op, kernel_size, pool_options(op, ...))
  return unbatched(op, input, function(x)
    return take(C.dr_avg_pool2d(x.ptr, k, s, p, out_box))
  end)
end

-- dr.avg_pool2d_backward(grad_out, input, kernel_size[, stride[, padding]]); 4-D tensors.
function M.avg_pool2d_backward(grad_out, input, kernel_size, ...)
  local op = 'avg_pool2d_backward'
  tensor_arg(op, 'grad_out', grad_out)
  tensor_arg(op, 'input', input)
  local k, s, p = pool_args(op, kernel_size, pool_options(op, ...))
  return take(C.dr_avg_pool2d_backward(grad_out.ptr, input.ptr, k, s, p, out_box))
end

return M
