-- diffrl.shapes.detect: a programmatic object detector for shapes-world images, the
-- stand-in for the paper's UniDet (PAPER.md "Rewards", Eq. 13).
--
-- 1. Colour. Pixels are compared in chroma space (rgb minus its grey mean), after
--    subtracting the background's chroma (the median of a 2-pixel border ring), so grey
--    textures of any brightness vanish. A pixel's colour is the palette colour of the
--    nearest hue (largest cosine); alpha is its projection on that colour's chroma
--    (1 = pure colour, 0.5 = half covered, 0 = background).
-- 2. Blobs. Pixels with alpha >= 0.4 form 4-connected components per colour; blobs
--    smaller than 0.4% of the frame are dropped. A blob's soft mask is the alpha of its
--    colour on its pixels and their 8 neighbours (blur moves mass there; background
--    noise further away is ignored); it gives the blob's area and centroid.
-- 3. Shape. Every kind's template (geometry.lua) is fitted to the blob's area and
--    centroid and compared by soft IoU = sum min(mask, template) / sum max(...), for
--    the sharp template and a 3x3 box-blurred one; the best IoU's kind wins.
-- 4. Confidence = colour confidence x shape confidence, both in [0, 1] and smooth:
--    colour: hue within 8 degrees of the palette colour -> 1, 25+ degrees -> 0, times
--      the blob's mean alpha (0.3 -> 0, 0.8+ -> 1: washed-out colour is doubtful);
--    shape: IoU 0.45 -> 0, 0.85+ -> 1, times how far the best kind leads the runner-up
--      (a blob as much square as circle is a doubtful circle), times 0.6-1 for
--      crispness (the sharp template fits as well as the blurred one: 1).
-- Clean renders give confidences near 1 (100% of the objects of 200 random 32x32
-- scenes found, about 1 ms an image); blurred, noisy, off-colour and malformed blobs
-- degrade smoothly (spec/shapes_spec.lua).
local ffi = require 'ffi'
local api = require 'diffrl.core.ffi'
local T = require 'diffrl.core.tensor'
local world = require 'diffrl.shapes.world'
local geometry = require 'diffrl.shapes.geometry'

local C, raise = api.C, api.raise
local sqrt, floor, ceil, max, min, abs = math.sqrt, math.floor, math.ceil, math.max, math.min, math.abs
local coverage = geometry.coverage

local M = {}

local NCOLORS = #world.COLORS
local NKINDS = #world.KINDS
-- palette chroma (rgb minus its mean), 0-based
local PR, PG, PB = ffi.new('double[?]', NCOLORS), ffi.new('double[?]', NCOLORS), ffi.new('double[?]', NCOLORS)
local PINV2, PNORM = ffi.new('double[?]', NCOLORS), ffi.new('double[?]', NCOLORS)
for i, c in ipairs(world.COLORS) do
  local r, g, b = c.rgb[1], c.rgb[2], c.rgb[3]
  local m = (r + g + b) / 3
  PR[i - 1], PG[i - 1], PB[i - 1] = r - m, g - m, b - m
  local n2 = (r - m) ^ 2 + (g - m) ^ 2 + (b - m) ^ 2
  PINV2[i - 1], PNORM[i - 1] = 1 / n2, sqrt(n2)
end

M.MASK_ALPHA = 0.4
M.MIN_AREA = 0.004
local SMALL_LARGE = sqrt(world.SIZE_SCALE.small * world.SIZE_SCALE.large)
local COS_GOOD, COS_BAD = math.cos(math.rad(8)), math.cos(math.rad(25))

local function clamp01(x) return x < 0 and 0 or x > 1 and 1 or x end

-- Work buffers for one image of n pixels, reused.
local bufs = { n = 0 }
local function buffers(n)
  if bufs.n < n then
    bufs = {
      n = n, qr = ffi.new('float[?]', n), qg = ffi.new('float[?]', n), qb = ffi.new('float[?]', n),
      label = ffi.new('int8_t[?]', n), comp = ffi.new('int32_t[?]', n),
      queue = ffi.new('int32_t[?]', n), near = ffi.new('uint8_t[?]', n),
      tpl = ffi.new('float[?]', n), mask = ffi.new('float[?]', n),
    }
  end
  return bufs
end

local function median(list)
  table.sort(list)
  local n = #list
  if n % 2 == 1 then return list[(n + 1) / 2] end
  return 0.5 * (list[n / 2] + list[n / 2 + 1])
end

-- Background chroma from the median of a 2-pixel border ring.
local function border_median(p, w, h)
  local plane = w * h
  local rs, gs, bs = {}, {}, {}
  local ring = min(2, floor(min(w, h) / 4))
  for y = 0, h - 1 do
    for x = 0, w - 1 do
      if x < ring or y < ring or x >= w - ring or y >= h - ring then
        local k = y * w + x
        local r, g, b = p[k], p[plane + k], p[2 * plane + k]
        local m = (r + g + b) / 3
        local n = #rs + 1
        rs[n], gs[n], bs[n] = r - m, g - m, b - m
      end
    end
  end
  return median(rs), median(gs), median(bs)
end

-- Steps 1 and 2: per-pixel chroma, colour and alpha; connected components.
-- Returns the list of blobs { color =, pixels =, x0, x1, y0, y1 } (comp ids 1..).
local function find_blobs(p, w, h, buf)
  local n, plane = w * h, w * h
  local br, bg, bb = border_median(p, w, h)
  local qr, qg, qb, label, comp = buf.qr, buf.qg, buf.qb, buf.label, buf.comp
  for k = 0, n - 1 do
    local r, g, b = p[k], p[plane + k], p[2 * plane + k]
    local m = (r + g + b) / 3
    local dr, dg, db = r - m - br, g - m - bg, b - m - bb
    qr[k], qg[k], qb[k] = dr, dg, db
    local q = sqrt(dr * dr + dg * dg + db * db)
    local best, best_cos, best_dot = -1, -2, 0
    if q > 1e-6 then
      for c = 0, NCOLORS - 1 do
        local dot = dr * PR[c] + dg * PG[c] + db * PB[c]
        local cs = dot / (q * PNORM[c])
        if cs > best_cos then best, best_cos, best_dot = c, cs, dot end
      end
    end
    local a = best >= 0 and best_dot * PINV2[best] or 0
    label[k] = (a >= M.MASK_ALPHA) and best or -1
    comp[k] = 0
  end
  local queue, blobs, min_pixels = buf.queue, {}, max(3, M.MIN_AREA * n)
  local id = 0
  for start = 0, n - 1 do
    local c = label[start]
    if c >= 0 and comp[start] == 0 then
      id = id + 1
      comp[start] = id
      queue[0] = start
      local head, tail = 0, 1
      local x0, x1, y0, y1 = w, -1, h, -1
      while head < tail do
        local k = queue[head]
        head = head + 1
        local y = floor(k / w)
        local x = k - y * w
        if x < x0 then x0 = x end
        if x > x1 then x1 = x end
        if y < y0 then y0 = y end
        if y > y1 then y1 = y end
        if x > 0 and comp[k - 1] == 0 and label[k - 1] == c then
          comp[k - 1] = id; queue[tail] = k - 1; tail = tail + 1
        end
        if x < w - 1 and comp[k + 1] == 0 and label[k + 1] == c then
          comp[k + 1] = id; queue[tail] = k + 1; tail = tail + 1
        end
        if y > 0 and comp[k - w] == 0 and label[k - w] == c then
          comp[k - w] = id; queue[tail] = k - w; tail = tail + 1
        end
        if y < h - 1 and comp[k + w] == 0 and label[k + w] == c then
          comp[k + w] = id; queue[tail] = k + w; tail = tail + 1
        end
      end
      blobs[id] = { id = id, color = c, pixels = tail, x0 = x0, x1 = x1, y0 = y0, y1 = y1,
                    keep = tail >= min_pixels }
    end
  end
  return blobs
end

-- The blob's soft mask at pixel (x, y): alpha along its colour, clamped to [0, 1], on
-- the blob's pixels and their 8 neighbours (where blur puts its mass), 0 elsewhere
-- (so background noise far from the blob adds nothing) and on other blobs' pixels.
local function soft(buf, w, h, x, y, id, c)
  local comp = buf.comp
  local k = y * w + x
  local cid = comp[k]
  if cid ~= id then
    if cid ~= 0 then return 0 end
    local near = false
    for dy = max(0, y - 1), min(h - 1, y + 1) do
      for dx = max(0, x - 1), min(w - 1, x + 1) do
        if comp[dy * w + dx] == id then near = true end
      end
    end
    if not near then return 0 end
  end
  return clamp01((buf.qr[k] * PR[c] + buf.qg[k] * PG[c] + buf.qb[k] * PB[c]) * PINV2[c])
end

-- The shape confidence of a kind from its IoU, its lead over the best other kind's
-- IoU and the blob's crispness. Below 0 (a kind that is not the winner) the lead
-- factor decays from the winner's 0.3 at a tie, so a kind's confidence is
-- continuous across the decision boundary.
local function kind_conf(iou, lead, crisp)
  local lead_factor = lead >= 0 and clamp01(0.3 + lead / 0.1) or 0.3 * math.exp(lead / 0.03)
  return clamp01((iou - 0.45) / 0.4) * lead_factor * (0.6 + 0.4 * crisp)
end

-- Soft IoUs of the blob with template `kind` fitted at (cx, cy, scale), sharp and
-- box-blurred (3x3, as a soft generator or a resize blurs), over the union of the
-- blob's and the template's boxes.
local function template_iou(buf, w, h, blob, kind, cx, cy, scale, rx0, rx1, ry0, ry1)
  local reach = geometry.BOUND[kind] * scale + 2
  local x0, x1 = max(0, min(rx0, floor(cx - reach))), min(w - 1, max(rx1, ceil(cx + reach)))
  local y0, y1 = max(0, min(ry0, floor(cy - reach))), min(h - 1, max(ry1, ceil(cy + reach)))
  local rw, rh = x1 - x0 + 1, y1 - y0 + 1
  local tpl, mask = buf.tpl, buf.mask
  local id, c = blob.id, blob.color
  for y = y0, y1 do
    for x = x0, x1 do
      local j = (y - y0) * rw + (x - x0)
      tpl[j] = coverage(kind, cx, cy, scale, x, y, 4)
      mask[j] = soft(buf, w, h, x, y, id, c)
    end
  end
  local inter, union, binter, bunion = 0, 0, 0, 0
  for y = 0, rh - 1 do
    for x = 0, rw - 1 do
      local j = y * rw + x
      local m, t = mask[j], tpl[j]
      if m < t then inter, union = inter + m, union + t else inter, union = inter + t, union + m end
      local s = 0
      for dy = max(0, y - 1), min(rh - 1, y + 1) do
        for dx = max(0, x - 1), min(rw - 1, x + 1) do s = s + tpl[dy * rw + dx] end
      end
      t = s / 9
      if m < t then binter, bunion = binter + m, bunion + t else binter, bunion = binter + t, bunion + m end
    end
  end
  return union > 0 and inter / union or 0, bunion > 0 and binter / bunion or 0
end

-- Steps 3 and 4 for one blob.
local function classify(buf, w, h, blob)
  local id, c = blob.id, blob.color
  local pad = 2
  local rx0, rx1 = max(0, blob.x0 - pad), min(w - 1, blob.x1 + pad)
  local ry0, ry1 = max(0, blob.y0 - pad), min(h - 1, blob.y1 + pad)
  local area, sx, sy = 0, 0, 0
  local sr, sg, sb, nh = 0, 0, 0, 0
  for y = ry0, ry1 do
    for x = rx0, rx1 do
      local k = y * w + x
      local m = soft(buf, w, h, x, y, id, c)
      area, sx, sy = area + m, sx + m * (x + 0.5), sy + m * (y + 0.5)
      if buf.comp[k] == id then
        sr, sg, sb, nh = sr + buf.qr[k], sg + buf.qg[k], sb + buf.qb[k], nh + 1
      end
    end
  end
  if area <= 0 then return nil end
  local mx, my = sx / area, sy / area
  local ious, best, best_iou, second, best_fit, best_sharp = {}, 0, -1, -1, nil, 0
  for kind = 1, NKINDS do
    local scale = sqrt(area / geometry.AREA[kind])
    local cx, cy = mx, my - geometry.CENTROID_V[kind] * scale
    local sharp, blurred = template_iou(buf, w, h, blob, kind, cx, cy, scale, rx0, rx1, ry0, ry1)
    local iou = max(sharp, blurred)
    ious[world.KINDS[kind]] = iou
    if iou > best_iou then
      best, best_iou, second, best_fit, best_sharp = kind, iou, best_iou, { cx, cy, scale }, sharp
    elseif iou > second then
      second = iou
    end
  end
  local lead = best_iou - second
  -- crisp: 1 when the sharp template fits as well as the blurred one
  local crisp = clamp01((best_sharp / best_iou - 0.7) / 0.25)
  local shape_conf = kind_conf(best_iou, lead, crisp)
  -- colour: the blob's mean chroma against its palette colour
  sr, sg, sb = sr / nh, sg / nh, sb / nh
  local qn = sqrt(sr * sr + sg * sg + sb * sb)
  local dot = sr * PR[c] + sg * PG[c] + sb * PB[c]
  local cosine = qn > 0 and dot / (qn * PNORM[c]) or 0
  local saturation = dot * PINV2[c]
  local color_conf = clamp01((cosine - COS_BAD) / (COS_GOOD - COS_BAD)) * clamp01((saturation - 0.3) / 0.5)
  -- the confidence for each kind, as a detector's per-class scores: the same formula
  -- with that kind's IoU and its lead over the best other kind (negative but for
  -- the winner: a lead factor of 0.11 at 0.03 behind, 0.04 at 0.06)
  local kinds = {}
  for kind = 1, NKINDS do
    local name, other = world.KINDS[kind], kind == best and second or best_iou
    kinds[name] = color_conf * kind_conf(ious[name], ious[name] - other, crisp)
  end
  local side = sqrt(w * h)
  local scale = best_fit[3] / side
  return {
    kind = world.KINDS[best], color = world.COLORS[c + 1].name,
    confidence = color_conf * shape_conf,
    x = best_fit[1] / w, y = best_fit[2] / h, area = area / (w * h),
    size = scale < SMALL_LARGE and 'small' or 'large', scale = scale,
    iou = best_iou, ious = ious, crisp = crisp, shape_confidence = shape_conf, color_confidence = color_conf,
    kind_confidence = kinds,
    saturation = saturation,
  }
end

-- Background statistics for the preference rule: the spread of luminance and chroma
-- over pixels at least 2 pixels away from every blob's box.
local function background_stats(p, w, h, buf, blobs)
  local n, plane = w * h, w * h
  local near = buf.near
  for k = 0, n - 1 do near[k] = 0 end
  local covered = 0
  for _, b in ipairs(blobs) do
    if b.keep then
      for y = max(0, b.y0 - 2), min(h - 1, b.y1 + 2) do
        for x = max(0, b.x0 - 2), min(w - 1, b.x1 + 2) do near[y * w + x] = 1 end
      end
    end
  end
  local s, s2, cn, count = 0, 0, 0, 0
  for k = 0, n - 1 do
    if near[k] == 0 then
      local l = (p[k] + p[plane + k] + p[2 * plane + k]) / 3
      s, s2, count = s + l, s2 + l * l, count + 1
      cn = cn + sqrt(buf.qr[k] ^ 2 + buf.qg[k] ^ 2 + buf.qb[k] ^ 2)
    else
      covered = covered + 1
    end
  end
  if count == 0 then return { luminance = 0, spread = 1, chroma = 1, fraction = 0 } end
  local mean = s / count
  return { luminance = mean, spread = sqrt(max(0, s2 / count - mean * mean)),
           chroma = cn / count, fraction = count / n }
end

local function detect_one(p, w, h, with_stats)
  local buf = buffers(w * h)
  local blobs = find_blobs(p, w, h, buf)
  local out = {}
  for _, b in ipairs(blobs) do
    if b.keep then
      local d = classify(buf, w, h, b)
      if d then out[#out + 1] = d end
    end
  end
  table.sort(out, function(a, b)
    if a.confidence ~= b.confidence then return a.confidence > b.confidence end
    return a.area > b.area
  end)
  return out, with_stats and background_stats(p, w, h, buf, blobs) or nil
end

-- A contiguous float32 CPU tensor of the images, [B, 3, H, W].
local function as_batch(op, images)
  if not T.is_tensor(images) then raise(op .. ': expected an image tensor [3, H, W] or [B, 3, H, W], got ' .. type(images)) end
  local single = images.ndim == 3
  if (single and images:size(1) ~= 3) or (not single and (images.ndim ~= 4 or images:size(2) ~= 3)) then
    raise(('%s: expected images [3, H, W] or [B, 3, H, W], got [%s]'):format(op, table.concat(images.shape, ', ')))
  end
  if single then images = images:unsqueeze(1) end
  local x = images:detach()
  if x.is_cuda then x = x:to { device = 'cpu' } end
  if x.dtype ~= 'float32' then x = x:to('float32') end
  if not x:is_contiguous() then x = x:contiguous() end
  return x, single
end

-- detect(images[, { stats = true }]): for [3, H, W] a list of detections, for
-- [B, 3, H, W] a list of B lists; each detection { kind, color, confidence, x, y,
-- area, size, scale, iou, ious, shape_confidence, color_confidence, saturation,
-- kind_confidence = { circle = .., ... } (the confidence were it that kind) },
-- most confident first. With stats, a second result: the background statistics
-- (per image, or a list) that the preference rule uses.
function M.detect(images, opts)
  local op = 'shapes.detect'
  opts = api.check_options(op, opts, { stats = true })
  local x, single = as_batch(op, images)
  local b, h, w = x:size(1), x:size(3), x:size(4)
  local base = ffi.cast('float *', C.dr_tensor_data(x.ptr))
  local all, stats = {}, {}
  for i = 1, b do
    all[i], stats[i] = detect_one(base + (i - 1) * 3 * h * w, w, h, opts.stats)
  end
  if single then return all[1], stats[1] end
  return all, opts.stats and stats or nil
end

return M
