-- diffrl.data.records: the records of a prompt file, streamed in 1 MiB chunks so
-- a 10M-line file is never held whole, and a record re-read on demand by its byte
-- range. Formats:
--   'txt'   one prompt per line
--   'jsonl' one JSON object per line; the prompt is the string field `column`
--   'csv'   RFC 4180: a header row names the columns, fields separated by commas,
--           quoted fields may hold commas, newlines and "" (a quote); CRLF or LF
-- A UTF-8 byte order mark at the start of the file is skipped.
--
--   records.each(f, csv, fn, fail)       -- fn(offset, length, lineno, raw) per record;
--                                        -- returns the number of lines
--   records.reader(format, column, fail) -- { prompt = function(raw, lineno) -> text or nil }
--
-- `raw` is a record without its line end; `offset`/`length` are its byte range, so
-- reading those bytes again gives `raw` back. lineno is the record's first line.
-- Errors (raised as Lua errors by the caller's `fail`) name the file and the line.
local cjson = require 'cjson.safe'

local M = {}

local CHUNK = 1048576
local BOM = '\239\187\191'

-- Calls fn(offset, length, lineno, raw) for every record of the file open in `f`.
-- csv: a record runs on over newlines while a quoted field is open (an odd number
-- of quotes so far). fail(lineno, message) is called for a quote left open at the end.
function M.each(f, csv, fn, fail)
  local buf, base, pos, lineno = '', 0, 1, 0 -- base: file offset of buf's first byte
  local scan, quotes, lines, eof, first = 1, 0, 0, false, true
  while true do
    local nl = buf:find('\n', scan, true)
    if nl and csv then
      local q = scan
      while true do
        q = buf:find('"', q, true)
        if not q or q > nl then break end
        quotes, q = quotes + 1, q + 1
      end
      lines = lines + 1
      if quotes % 2 == 1 then
        scan = nl + 1
        goto continue
      end
    end
    if nl then
      lineno = lineno + 1
      fn(base + pos - 1, nl - pos, lineno, buf:sub(pos, nl - 1))
      lineno = lineno + (csv and lines - 1 or 0)
      pos, scan, quotes, lines = nl + 1, nl + 1, 0, 0
    elseif eof then
      if pos <= #buf then
        if csv then
          local _, q = buf:sub(scan):gsub('"', '')
          if (quotes + q) % 2 == 1 then fail(lineno + 1, 'a quoted field is not closed before the end of the file') end
        end
        lineno = lineno + 1
        fn(base + pos - 1, #buf - pos + 1, lineno, buf:sub(pos))
        lineno = lineno + lines
      end
      return lineno
    else
      local chunk = f:read(CHUNK)
      if not chunk then
        eof = true
      else
        base, scan = base + pos - 1, scan - pos + 1
        buf, pos = buf:sub(pos) .. chunk, 1
        if first then
          first = false
          if buf:sub(1, 3) == BOM then base, buf = base + 3, buf:sub(4) end
        end
      end
    end
    ::continue::
  end
end

-- ---- CSV fields -----------------------------------------------------------------------

-- The fields of one CSV record (RFC 4180), or nil and a message.
function M.csv_fields(raw)
  if raw:sub(-1) == '\r' then raw = raw:sub(1, -2) end
  local out, pos, n = {}, 1, #raw
  while true do
    if raw:sub(pos, pos) == '"' then
      local parts, i = {}, pos + 1
      while true do
        local q = raw:find('"', i, true)
        if not q then return nil, 'a quoted field is not closed' end
        parts[#parts + 1] = raw:sub(i, q - 1)
        if raw:sub(q + 1, q + 1) == '"' then
          parts[#parts + 1] = '"'
          i = q + 2
        else
          pos = q + 1
          break
        end
      end
      out[#out + 1] = table.concat(parts)
      local c = raw:sub(pos, pos)
      if c == ',' then
        pos = pos + 1
      elseif pos > n then
        return out
      else
        return nil, ('text after the closing quote of field %d'):format(#out)
      end
    else
      local comma = raw:find(',', pos, true)
      out[#out + 1] = raw:sub(pos, (comma or n + 1) - 1)
      if not comma then return out end
      pos = comma + 1
    end
  end
end

-- ---- prompt extraction ------------------------------------------------------------------

-- A reader turns a raw record into its prompt (untrimmed), or nil for a record
-- that holds none (the CSV header, which must be the first record read: the
-- reader remembers the column's index for later records). fail(lineno, message)
-- raises.
function M.reader(format, column, fail)
  if format == 'txt' then
    return { prompt = function(raw) return raw end }
  elseif format == 'jsonl' then
    return {
      prompt = function(raw, lineno)
        if not raw:find('%S') then return '' end
        local obj, err = cjson.decode(raw)
        if obj == nil then fail(lineno, 'not JSON: ' .. tostring(err)) end
        if type(obj) ~= 'table' then fail(lineno, 'expected a JSON object, got ' .. raw:sub(1, 40)) end
        local v = obj[column]
        if v == nil then
          local names = {}
          for k in pairs(obj) do names[#names + 1] = tostring(k) end
          table.sort(names)
          fail(lineno, ("no field '%s' (fields: %s)"):format(column, table.concat(names, ', ')))
        end
        if v == cjson.null then return '' end
        if type(v) ~= 'string' then fail(lineno, ("field '%s' is a %s, not a string"):format(column, type(v))) end
        return v
      end,
    }
  elseif format == 'csv' then
    local index, ncols
    return {
      prompt = function(raw, lineno)
        local fields, err = M.csv_fields(raw)
        if not fields then fail(lineno, err) end
        if not index then
          for i, name in ipairs(fields) do
            if name == column then index = i break end
          end
          if not index then
            fail(lineno, ("the header has no column '%s' (columns: %s)"):format(column, table.concat(fields, ', ')))
          end
          ncols = #fields
          return nil
        end
        if #fields == 1 and fields[1] == '' then return '' end
        if #fields ~= ncols then
          fail(lineno, ('%d fields, the header has %d'):format(#fields, ncols))
        end
        return fields[index]
      end,
    }
  end
  error('records.reader: unknown format ' .. tostring(format))
end

-- The format of a path from its extension: .jsonl / .ndjson, .csv, else txt.
function M.format_of(path)
  local ext = path:match('%.([%w]+)$')
  ext = ext and ext:lower()
  if ext == 'jsonl' or ext == 'ndjson' then return 'jsonl' end
  if ext == 'csv' then return 'csv' end
  return 'txt'
end

return M
