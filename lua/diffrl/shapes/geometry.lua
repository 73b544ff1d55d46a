-- diffrl.shapes.geometry: the four shapes as point-in-shape tests, and pixel coverage
-- by supersampling. The renderer draws with these and the detector fits them as
-- templates, so a clean render matches its template almost exactly.
--
-- Unit coordinates (u, v): relative to the object's position, v pointing down, in units
-- of the object's scale h (its half-extent, pixels). Every shape's bounding box is
-- centred on the position; its half-extents are world.EXTENT.
--   circle    radius 1
--   square    half-side 0.9
--   triangle  equilateral, pointing up, circumradius 1.2 (v from -0.9 to 0.9)
--   star      five points, pointing up, outer radius 1.2, inner radius 0.6
local M = {}

local sqrt, floor, atan2 = math.sqrt, math.floor, math.atan2
local pi = math.pi

M.CIRCLE, M.SQUARE, M.TRIANGLE, M.STAR = 1, 2, 3, 4

local TAN30 = math.tan(pi / 6)
local STAR_OUTER, STAR_INNER = 1.2, 0.6
local STAR_SHIFT = STAR_OUTER * (1 - math.cos(pi / 5)) / 2 -- centres the bounding box
local SECTOR = 2 * pi / 5
-- the star's edge in a half-sector, from the outer point (STAR_OUTER, 0) to the inner
-- vertex at 36 degrees
local EDGE_X = STAR_INNER * math.cos(pi / 5) - STAR_OUTER
local EDGE_Y = STAR_INNER * math.sin(pi / 5)

-- Area and centroid offset (v) of each kind in unit coordinates, by the formulas for
-- each polygon; the detector fits scale and position from these.
M.AREA = {
  pi,
  4 * 0.9 * 0.9,
  0.5 * (2 * 1.8 * TAN30) * 1.8,
  10 * 0.5 * STAR_OUTER * STAR_INNER * math.sin(pi / 5),
}
M.CENTROID_V = { 0, 0, 0.3, STAR_SHIFT }
-- Radius of a circle around the position that holds the whole shape.
M.BOUND = { 1.0, 0.9 * sqrt(2), sqrt(1.04 ^ 2 + 0.9 ^ 2), STAR_OUTER + STAR_SHIFT }
-- Radius of a circle around the position inside the shape (triangle: 0.9 sin 30;
-- star: the distance from its centre to an edge, less the shift).
M.INNER = { 1.0, 0.9, 0.45, 0.53 - STAR_SHIFT }

local function inside(kind, u, v)
  if kind == 1 then
    return u * u + v * v <= 1
  elseif kind == 2 then
    return u <= 0.9 and u >= -0.9 and v <= 0.9 and v >= -0.9
  elseif kind == 3 then
    if v > 0.9 or v < -0.9 then return false end
    local half = (v + 0.9) * TAN30
    return u <= half and u >= -half
  else
    local dv = v - STAR_SHIFT
    local r2 = u * u + dv * dv
    if r2 > STAR_OUTER * STAR_OUTER then return false end
    local phi = atan2(u, -dv) -- 0 at the top point, clockwise
    phi = phi - floor(phi / SECTOR) * SECTOR
    if phi > SECTOR / 2 then phi = SECTOR - phi end
    local r = sqrt(r2)
    local qx, qy = r * math.cos(phi), r * math.sin(phi)
    return EDGE_X * qy - EDGE_Y * (qx - STAR_OUTER) >= 0
  end
end
M.inside = inside

-- Fraction of pixel (px, py) (its square [px, px+1) x [py, py+1)) inside shape `kind`
-- centred at (cx, cy) with scale h (all in pixels), by n x n samples.
local function coverage(kind, cx, cy, h, px, py, n)
  local inv = 1 / h
  local du, dv = (px + 0.5 - cx) * inv, (py + 0.5 - cy) * inv
  local reach = M.BOUND[kind] + 0.71 * inv
  local d2 = du * du + dv * dv
  if d2 > reach * reach then return 0 end
  local core = M.INNER[kind] - 0.71 * inv
  if core > 0 and d2 < core * core then return 1 end
  local hits, step = 0, inv / n
  local u0, v0 = (px - cx) * inv + 0.5 * step, (py - cy) * inv + 0.5 * step
  -- one loop per kind, so each compiles to its own trace without the kind's branch
  if kind == 1 then
    for a = 0, n - 1 do
      local v = v0 + a * step
      for b = 0, n - 1 do
        local u = u0 + b * step
        if u * u + v * v <= 1 then hits = hits + 1 end
      end
    end
  elseif kind == 2 then
    for a = 0, n - 1 do
      local v = v0 + a * step
      if v <= 0.9 and v >= -0.9 then
        for b = 0, n - 1 do
          local u = u0 + b * step
          if u <= 0.9 and u >= -0.9 then hits = hits + 1 end
        end
      end
    end
  elseif kind == 3 then
    for a = 0, n - 1 do
      local v = v0 + a * step
      if v <= 0.9 and v >= -0.9 then
        local half = (v + 0.9) * TAN30
        for b = 0, n - 1 do
          local u = u0 + b * step
          if u <= half and u >= -half then hits = hits + 1 end
        end
      end
    end
  else
    for a = 0, n - 1 do
      local v = v0 + a * step
      for b = 0, n - 1 do
        if inside(4, u0 + b * step, v) then hits = hits + 1 end
      end
    end
  end
  return hits / (n * n)
end
M.coverage = coverage

return M
